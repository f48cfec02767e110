//! Label selectors (equality- and set-based, as in `-l`) and field selectors (as in
//! `--field-selector`), parsed from their query-string forms and matched against JSON objects.

use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Req>);

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

fn valid_label_value(v: &str) -> bool {
    v.len() <= 63
        && (v.is_empty()
            || (v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())))
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(SelectorError(format!("empty requirement in {s:?}")));
            }
            let set_op = |op: &str| -> Option<(String, Vec<String>)> {
                let idx = p.find(op)?;
                let key = p[..idx].trim();
                let rest = p[idx + op.len()..].trim();
                let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
                Some((
                    key.to_string(),
                    inner.split(',').map(|v| v.trim().to_string()).collect(),
                ))
            };
            let req = if let Some((k, vs)) = set_op(" notin ") {
                Req::NotIn(k, vs)
            } else if let Some((k, vs)) = set_op(" in ") {
                Req::In(k, vs)
            } else if let Some((k, v)) = p.split_once("!=") {
                Req::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once("==") {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once('=') {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = p.strip_prefix('!') {
                Req::NotExists(k.trim().into())
            } else {
                Req::Exists(p.into())
            };
            let (key, values): (&str, Vec<&String>) = match &req {
                Req::Eq(k, v) | Req::Ne(k, v) => (k, vec![v]),
                Req::In(k, v) | Req::NotIn(k, v) => (k, v.iter().collect()),
                Req::Exists(k) | Req::NotExists(k) => (k, vec![]),
            };
            if crate::validation::qualified_name(key).is_some() {
                return Err(SelectorError(format!("{p:?}: invalid label key {key:?}")));
            }
            if let Some(v) = values.iter().find(|v| !valid_label_value(v)) {
                return Err(SelectorError(format!("{p:?}: invalid label value {v:?}")));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Builds a selector from a metav1.LabelSelector object (matchLabels + matchExpressions).
    pub fn from_object(sel: &Value) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(Req::Eq(
                    k.clone(),
                    v.as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e["key"].as_str().unwrap_or_default().to_string();
                let vals: Vec<String> = e["values"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                reqs.push(
                    match operator(e["operator"].as_str().unwrap_or_default())? {
                        Op::In => Req::In(key, vals),
                        Op::NotIn => Req::NotIn(key, vals),
                        Op::Exists => Req::Exists(key),
                        _ => Req::NotExists(key),
                    },
                );
            }
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<&str, &str>) -> bool {
        let get = |k: &str| labels.get(k).copied();
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => holds(Op::Eq, get(k), std::slice::from_ref(v)),
            Req::Ne(k, v) => holds(Op::Ne, get(k), std::slice::from_ref(v)),
            Req::In(k, vs) => holds(Op::In, get(k), vs),
            Req::NotIn(k, vs) => holds(Op::NotIn, get(k), vs),
            Req::Exists(k) => holds::<&str>(Op::Exists, get(k), &[]),
            Req::NotExists(k) => holds::<&str>(Op::NotExists, get(k), &[]),
        })
    }

    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        self.matches(&labels_of(obj))
    }
}

/// A requirement's operator.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    In,
    NotIn,
    Exists,
    NotExists,
}

/// A `matchExpressions` operator; anything else is an error, as upstream's
/// `LabelSelectorAsSelector`.
fn operator(op: &str) -> Result<Op, SelectorError> {
    match op {
        "In" => Ok(Op::In),
        "NotIn" => Ok(Op::NotIn),
        "Exists" => Ok(Op::Exists),
        "DoesNotExist" => Ok(Op::NotExists),
        op => Err(SelectorError(format!(
            "{op:?} is not a valid label selector operator"
        ))),
    }
}

/// Whether one requirement holds for a label's value (`None`: the label is absent). The one
/// place a selector's meaning is decided, for parsed and typed selectors alike.
fn holds<S: AsRef<str>>(op: Op, have: Option<&str>, values: &[S]) -> bool {
    let listed = |h: &str| values.iter().any(|v| v.as_ref() == h);
    match op {
        Op::Eq | Op::In => have.is_some_and(listed),
        Op::Ne | Op::NotIn => have.is_none_or(|h| !listed(h)),
        Op::Exists => have.is_some(),
        Op::NotExists => have.is_none(),
    }
}

/// Matches a typed `metav1.LabelSelector` against labels looked up by `get`, with no copy.
/// An unknown operator is an error (callers that only match treat it as "selects nothing").
pub fn matches_typed<'a>(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    get: impl Fn(&str) -> Option<&'a str>,
) -> Result<bool, SelectorError> {
    let mut ok = true;
    for (k, v) in sel.match_labels.iter().flatten() {
        ok &= holds(Op::Eq, get(k), std::slice::from_ref(v));
    }
    for e in sel.match_expressions.iter().flatten() {
        let op = operator(&e.operator)?;
        ok &= holds(op, get(&e.key), e.values.as_deref().unwrap_or_default());
    }
    Ok(ok)
}

pub fn labels_of(obj: &Value) -> BTreeMap<&str, &str> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
                .collect()
        })
        .unwrap_or_default()
}

/// A parsed field selector: `a=b`, `a==b`, `a!=b`, comma-separated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses and checks every field against what the kind supports.
    pub fn parse(s: &str, supported: &dyn Fn(&str) -> bool) -> Result<Self, SelectorError> {
        let mut out = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector(out));
        }
        for p in s.split(',') {
            let (k, eq, v) = if let Some((k, v)) = p.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = p.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = p.split_once('=') {
                (k, true, v)
            } else {
                return Err(SelectorError(format!(
                    "invalid selector: '{p}'; can't understand '{p}'"
                )));
            };
            let k = k.trim();
            if !supported(k) {
                return Err(SelectorError(format!("field label not supported: {k}")));
            }
            out.push((k.to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields it tests.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _, _)| k.as_str())
    }

    /// Matches using `value_of(field)` to read the object's field value.
    pub fn matches(&self, value_of: &dyn Fn(&str) -> String) -> bool {
        self.0.iter().all(|(k, eq, v)| (value_of(k) == *v) == *eq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "fe"}}});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches_object(&obj);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("app in (web, db)"));
        assert!(!m("tier notin (fe)"));
        assert!(m("!missing"));
        assert!(!m("missing"));
        assert!(m(""));
        assert!(LabelSelector::parse("app=we b").is_err());
        assert!(LabelSelector::parse("a,,b").is_err());
    }

    #[test]
    fn selector_objects() {
        let sel = LabelSelector::from_object(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]
        }))
        .unwrap();
        assert!(sel.matches_object(&json!({"metadata": {"labels": {"app": "web", "tier": "fe"}}})));
        assert!(!sel.matches_object(&json!({"metadata": {"labels": {"app": "web"}}})));
    }

    #[test]
    fn field_selectors() {
        let ok = |k: &str| k == "metadata.name" || k == "status.phase";
        let f = FieldSelector::parse("metadata.name=a,status.phase!=Running", &ok).unwrap();
        assert!(f.matches(&|k| if k == "metadata.name" {
            "a".into()
        } else {
            "Pending".into()
        }));
        assert!(FieldSelector::parse("spec.bogus=x", &ok).is_err());
    }

    #[test]
    fn typed_and_parsed_selectors_agree() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
            LabelSelector as Typed, LabelSelectorRequirement,
        };
        let labels: BTreeMap<&str, &str> = [("app", "web"), ("tier", "fe")].into();
        let get = |k: &str| labels.get(k).copied();
        let expr = |op: &str, vals: &[&str]| Typed {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: op.into(),
                values: Some(vals.iter().map(|v| v.to_string()).collect()),
            }]),
        };
        for (op, vals, text, want) in [
            ("In", vec!["fe", "be"], "app=web,tier in (fe,be)", true),
            ("NotIn", vec!["fe"], "app=web,tier notin (fe)", false),
            ("Exists", vec![], "app=web,tier", true),
            ("DoesNotExist", vec![], "app=web,!tier", false),
        ] {
            assert_eq!(matches_typed(&expr(op, &vals), get), Ok(want), "{op}");
            assert_eq!(
                LabelSelector::parse(text).unwrap().matches(&labels),
                want,
                "{text}"
            );
            let obj = serde_json::to_value(expr(op, &vals)).unwrap();
            assert_eq!(
                LabelSelector::from_object(&obj).unwrap().matches(&labels),
                want
            );
        }
        // An unknown operator is an error in both forms, never a silent verdict.
        let err = SelectorError("\"Near\" is not a valid label selector operator".into());
        assert_eq!(matches_typed(&expr("Near", &[]), get), Err(err.clone()));
        let obj = serde_json::to_value(expr("Near", &[])).unwrap();
        assert_eq!(LabelSelector::from_object(&obj), Err(err));
        assert!(LabelSelector::parse("tier ~ fe").is_err());
    }
}
