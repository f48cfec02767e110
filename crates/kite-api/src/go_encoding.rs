//! Go's JSON encoding of the API types, where it differs from "what the client sent": Go
//! always writes a non-pointer struct field (a new Service's `status: {loadBalancer: {}}`, a
//! container's `resources: {}`), a non-pointer scalar without `omitempty` as its zero value,
//! and a nil slice without `omitempty` as `null` (an HPA's `status.currentMetrics`). Clients read these keys (the
//! Python client's `resp.status`), so kite writes them too, on every object it stores. And Go
//! leaves out a non-pointer scalar with `omitempty` that holds its zero value, even when the
//! client sent it (protobuf clients send `hostPort: 0`, `stdin: false`): kite drops those, so
//! that an object reads back as upstream writes it (clients compare bytes: the e2e suite's
//! DaemonSet revision match).
//!
//! The rules come from upstream's Go type declarations, generated into `go_fields.json` by
//! `cargo run -p xtask -- gen-go-fields <kubernetes/staging/src/k8s.io>`.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

enum Rule {
    /// A struct always written, then filled by its own rules.
    Object(String),
    /// A `metav1.Time`, or a slice or map without `omitempty`: `null` when unset.
    Null,
    /// A scalar written as its zero value.
    Zero(Value),
    /// A non-pointer scalar with `omitempty`: left out when it holds its zero value.
    OmitZero(Value),
    /// An inline struct: its rules apply to the same object.
    Inline(String),
    /// A pointer to a struct: filled where present.
    Pointer(String),
    /// A slice of structs: each element filled.
    Slice(String),
    /// A map of structs: each value filled.
    Map(String),
}

type Rules = HashMap<String, Vec<(String, Rule)>>;

fn rules() -> &'static Rules {
    static R: OnceLock<Rules> = OnceLock::new();
    R.get_or_init(|| {
        let raw: Map<String, Value> =
            serde_json::from_str(include_str!("go_fields.json")).expect("go_fields.json is valid");
        raw.into_iter()
            .map(|(def, list)| {
                let rs = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| {
                        let name = r[0].as_str()?.to_string();
                        let target = || r[2].as_str().map(String::from);
                        let rule = match r[1].as_str()? {
                            "o" => Rule::Object(target()?),
                            "t" | "n" => Rule::Null,
                            "z" => Rule::Zero(r[2].clone()),
                            "e" => Rule::OmitZero(r[2].clone()),
                            "i" => Rule::Inline(target()?),
                            "p" => Rule::Pointer(target()?),
                            "r" => Rule::Slice(target()?),
                            "m" => Rule::Map(target()?),
                            _ => return None,
                        };
                        Some((name, rule))
                    })
                    .collect();
                (def, rs)
            })
            .collect()
    })
}

/// Adds to `obj`, an object of the OpenAPI definition `def` (`io.k8s.api.core.v1.Service`),
/// the keys Go would write that it lacks. Keys already there are left as they are.
pub fn fill(def: &str, obj: &mut Value) {
    if let Value::Object(m) = obj {
        fill_map(def, m, 0);
    }
}

fn fill_value(def: &str, v: &mut Value, depth: usize) {
    if let Value::Object(m) = v {
        fill_map(def, m, depth);
    }
}

fn fill_map(def: &str, m: &mut Map<String, Value>, depth: usize) {
    // Deeper than any API type nests: a guard against a recursive schema.
    if depth > 32 {
        return;
    }
    let Some(rs) = rules().get(def) else { return };
    for (name, rule) in rs {
        match rule {
            Rule::Object(d) => {
                let v = m
                    .entry(name.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if v.is_null() {
                    *v = Value::Object(Map::new());
                }
                fill_value(d, v, depth + 1);
            }
            Rule::Null => {
                m.entry(name.clone()).or_insert(Value::Null);
            }
            Rule::Zero(z) => {
                m.entry(name.clone()).or_insert_with(|| z.clone());
            }
            Rule::OmitZero(z) => {
                if m.get(name).is_some_and(|v| is_zero(v, z)) {
                    m.remove(name);
                }
            }
            Rule::Inline(d) => fill_map(d, m, depth + 1),
            Rule::Pointer(d) => {
                if let Some(v) = m.get_mut(name) {
                    fill_value(d, v, depth + 1);
                }
            }
            Rule::Slice(d) => {
                if let Some(Value::Array(a)) = m.get_mut(name) {
                    for v in a {
                        fill_value(d, v, depth + 1);
                    }
                }
            }
            Rule::Map(d) => {
                if let Some(Value::Object(vals)) = m.get_mut(name) {
                    for v in vals.values_mut() {
                        fill_value(d, v, depth + 1);
                    }
                }
            }
        }
    }
}

/// Whether `v` is the zero value `zero` stands for (`0` also as `0.0`).
fn is_zero(v: &Value, zero: &Value) -> bool {
    match (v, zero) {
        (Value::Number(n), Value::Number(_)) => n.as_f64() == Some(0.0),
        _ => v == zero,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fills_what_go_always_writes_and_keeps_what_is_there() {
        let mut svc = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}});
        fill("io.k8s.api.core.v1.Service", &mut svc);
        assert_eq!(svc["status"], json!({"loadBalancer": {}}));

        let mut pod = json!({"spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        fill("io.k8s.api.core.v1.Pod", &mut pod);
        assert_eq!(pod["spec"]["containers"][0]["resources"], json!({}));
        // Non-pointer Times are null; a nil slice without omitempty too.
        assert_eq!(pod["status"]["conditions"][0]["lastProbeTime"], Value::Null);
        assert!(pod["status"]["conditions"][0]
            .as_object()
            .unwrap()
            .contains_key("lastTransitionTime"));
        // metadata.creationTimestamp is `omitzero` in v1.36: a template has none.
        let mut d = json!({"spec": {"template": {"spec": {"containers": []}}}});
        fill("io.k8s.api.apps.v1.Deployment", &mut d);
        assert_eq!(d["spec"]["template"]["metadata"], json!({}));
        assert_eq!(d["status"], json!({}));

        let mut hpa = json!({"spec": {"maxReplicas": 2}});
        fill(
            "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler",
            &mut hpa,
        );
        assert_eq!(
            hpa["status"],
            json!({"desiredReplicas": 0, "currentMetrics": null})
        );

        // What a client sent stays as it is.
        let mut s2 = json!({"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}});
        fill("io.k8s.api.core.v1.Service", &mut s2);
        assert_eq!(s2["status"]["loadBalancer"]["ingress"][0]["ip"], "1.2.3.4");
        // An unknown definition changes nothing.
        let mut x = json!({"a": 1});
        fill("io.k8s.nothing.v1.X", &mut x);
        assert_eq!(x, json!({"a": 1}));
    }

    #[test]
    fn leaves_out_zero_scalars_go_omits() {
        // As a protobuf client sends a pod template: every non-pointer scalar written.
        let mut ds = json!({"metadata": {"name": "d", "generation": 0},
            "spec": {"template": {"metadata": {"generation": 0, "name": ""},
                "spec": {"hostNetwork": false, "terminationGracePeriodSeconds": 0,
                    "automountServiceAccountToken": false,
                    "containers": [{"name": "c", "stdin": false, "tty": true,
                        "ports": [{"containerPort": 80, "hostPort": 0}]}]}}}});
        fill("io.k8s.api.apps.v1.DaemonSet", &mut ds);
        let t = &ds["spec"]["template"];
        assert_eq!(t["metadata"], json!({}));
        assert_eq!(ds["metadata"], json!({"name": "d"}));
        // Pointers keep their zero (it means something); omitempty scalars lose it.
        assert_eq!(t["spec"]["terminationGracePeriodSeconds"], 0);
        assert_eq!(t["spec"]["automountServiceAccountToken"], false);
        assert!(t["spec"].get("hostNetwork").is_none());
        let c = &t["spec"]["containers"][0];
        assert!(c.get("stdin").is_none());
        assert_eq!(c["tty"], true);
        assert_eq!(c["ports"][0], json!({"containerPort": 80}));
    }
}
