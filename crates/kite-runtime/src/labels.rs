//! Matching label selectors (metav1.LabelSelector, equality maps) and node selector terms
//! against labels, as controllers and the scheduler need it.

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

/// Whether `sel` selects `labels`. An empty selector selects everything; `None` nothing
/// (upstream's convention for a missing selector in affinity terms is the caller's). A
/// selector with an unknown operator selects nothing, as upstream's controllers treat a
/// selector that does not convert. The meaning is kite-api's, shared with the API server.
pub fn matches(sel: &LabelSelector, labels: &Labels) -> bool {
    kite_api::selector::matches_typed(sel, |k| labels.get(k).map(String::as_str)).unwrap_or(false)
}

/// Whether the selector is empty (selects everything).
pub fn is_empty(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty())
}

/// Every `k=v` of `want` is in `labels`.
pub fn matches_map(want: &Labels, labels: &Labels) -> bool {
    want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn requirement(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether one node selector term matches a node (its labels and name). A term with no
/// requirements matches nothing, as upstream.
pub fn term_matches(t: &NodeSelectorTerm, labels: &Labels, node_name: &str) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let name = node_name.to_string();
    exprs.iter().all(|r| requirement(r, labels.get(&r.key)))
        && fields.iter().all(|r| {
            let v = (r.key == "metadata.name").then_some(&name);
            requirement(r, v)
        })
}

/// Whether a toleration tolerates a taint (upstream's `ToleratesTaint`): an empty key with
/// `Exists` tolerates every taint; an empty effect matches every effect.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = t.key.as_deref().unwrap_or("");
    let op = t.operator.as_deref().unwrap_or("Equal");
    if key.is_empty() {
        return op == "Exists" && effect_ok;
    }
    if key != taint.key || !effect_ok {
        return false;
    }
    match op {
        "Exists" => true,
        _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    }
}

/// Formats a selector as `kubectl` prints it (`app=web,tier in (a,b)`).
pub fn to_string(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let vals = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({vals})", e.key),
            "NotIn" => format!("{} notin ({vals})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selects_by_labels_and_expressions() {
        let l: Labels = [("app".to_string(), "web".to_string())].into();
        let mut s = LabelSelector {
            match_labels: Some(l.clone()),
            ..Default::default()
        };
        assert!(matches(&s, &l));
        s.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "DoesNotExist".into(),
            values: None,
        }]);
        assert!(matches(&s, &l));
        s.match_expressions.as_mut().unwrap()[0].operator = "Exists".into();
        assert!(!matches(&s, &l));
        assert!(matches(&LabelSelector::default(), &l));
    }
}
