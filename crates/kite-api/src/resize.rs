//! What a write to a pod's `resize` subresource may change, as upstream's
//! `podResizeStrategy` and `ValidatePodResize`: the containers' (and init containers')
//! CPU and memory requests and limits, nothing else, without adding or removing a
//! request or limit and without changing the pod's QoS class.

use crate::validation::FieldError;
use serde_json::{json, Value};

const KINDS: [&str; 2] = ["containers", "initContainers"];

/// Upstream's `dropNonResizeUpdates`: the stored pod `old` with each container's
/// `resources` and `resizePolicy` taken from `new`. When the containers do not line up
/// (added, removed, renamed or reordered), `new`'s spec is kept for [`validate`] to refuse.
pub fn merge(new: &Value, old: &Value) -> Value {
    let mut out = old.clone();
    for kind in KINDS {
        let n = new["spec"][kind].as_array().cloned().unwrap_or_default();
        let o = old["spec"][kind].as_array().cloned().unwrap_or_default();
        let aligned = n.len() == o.len() && n.iter().zip(&o).all(|(a, b)| a["name"] == b["name"]);
        if !aligned {
            out["spec"][kind] = new["spec"][kind].clone();
            continue;
        }
        for (i, c) in n.iter().enumerate() {
            for f in ["resources", "resizePolicy"] {
                match c.get(f) {
                    Some(v) if !v.is_null() => out["spec"][kind][i][f] = v.clone(),
                    _ => {
                        if let Some(m) = out["spec"][kind][i].as_object_mut() {
                            m.remove(f);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Upstream's `ValidatePodResize` for `new` (made by [`merge`] and defaulted) against the
/// stored `old`.
pub fn validate(new: &Value, old: &Value) -> Vec<FieldError> {
    if old["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string() {
        return vec![FieldError::forbidden("", "static pods cannot be resized")];
    }
    if old["spec"]["os"]["name"] == "windows" {
        return vec![FieldError::forbidden("", "windows pods cannot be resized")];
    }
    let mut errs = Vec::new();
    let old_qos = old["status"]["qosClass"]
        .as_str()
        .unwrap_or_else(|| qos(&old["spec"]));
    let new_qos = qos(&new["spec"]);
    if old_qos != new_qos {
        errs.push(FieldError::invalid(
            "spec",
            &json!(new_qos),
            "Pod QOS Class may not change as a result of resizing",
        ));
    }
    if old["spec"]["resources"].as_object().is_some_and(|r| {
        r.values()
            .any(|v| v.as_object().is_some_and(|m| !m.is_empty()))
    }) || new["spec"]["resources"].as_object().is_some_and(|r| {
        r.values()
            .any(|v| v.as_object().is_some_and(|m| !m.is_empty()))
    }) {
        errs.push(FieldError::forbidden(
            "",
            "resize of pods with pod-level resources is forbidden when InPlacePodLevelResourcesVerticalScalingEnabled feature gate is disabled",
        ));
        return errs;
    }
    // The rest assumes the containers line up.
    let mut order = Vec::new();
    for (kind, what) in [
        ("containers", "containers"),
        ("initContainers", "initContainers"),
    ] {
        let n = new["spec"][kind].as_array().cloned().unwrap_or_default();
        let o = old["spec"][kind].as_array().cloned().unwrap_or_default();
        if n.len() != o.len() {
            order.push(FieldError::forbidden(
                format!("spec.{kind}"),
                &format!("{what} may not be added or removed on resize"),
            ));
            continue;
        }
        for (i, (a, b)) in n.iter().zip(&o).enumerate() {
            if a["name"] != b["name"] {
                order.push(FieldError::forbidden(
                    format!("spec.{kind}[{i}].name"),
                    &format!("{what} may not be renamed or reordered on resize"),
                ));
            }
        }
    }
    if !order.is_empty() {
        errs.extend(order);
        return errs;
    }
    for kind in KINDS {
        let n = new["spec"][kind].as_array().cloned().unwrap_or_default();
        let o = old["spec"][kind].as_array().cloned().unwrap_or_default();
        for (i, (c, was)) in n.iter().zip(&o).enumerate() {
            let at = format!("spec.{kind}[{i}].resources");
            for (part, what) in [
                ("requests", "resource requests"),
                ("limits", "resource limits"),
            ] {
                let removed = was["resources"][part]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .any(|(k, _)| c["resources"][part].get(k).is_none());
                if removed {
                    errs.push(FieldError::forbidden(
                        format!("{at}.{part}"),
                        &format!("{what} cannot be removed"),
                    ));
                }
            }
            let changed = comparable(c) != comparable(was);
            let only_cpu_memory = comparable(&without_cpu_memory(c, was)) == comparable(was);
            if kind == "containers" {
                if !only_cpu_memory {
                    errs.push(FieldError::forbidden(
                        "spec",
                        "only cpu and memory resources are mutable",
                    ));
                }
                continue;
            }
            if !only_cpu_memory {
                errs.push(FieldError::forbidden(
                    format!("spec.initContainers[{i}]"),
                    "only cpu and memory resources for init or sidecar containers are mutable",
                ));
            }
            let sidecar = c["restartPolicy"] == "Always";
            let restarts = c["resizePolicy"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["restartPolicy"] == "RestartContainer");
            if changed && !sidecar && restarts {
                errs.push(FieldError::forbidden(
                    format!("spec.initContainers[{i}]"),
                    "non-sidecar init containers with a resize policy of RestartContainer cannot be resized",
                ));
            }
        }
    }
    errs
}

/// Upstream's `dropCPUMemoryResourcesFromContainer`: `c` with the CPU and memory of its
/// requests and limits as `was` has them.
fn without_cpu_memory(c: &Value, was: &Value) -> Value {
    let mut out = c.clone();
    for part in ["requests", "limits"] {
        let mut list = c["resources"][part]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for r in ["cpu", "memory"] {
            match was["resources"][part].get(r) {
                Some(v) => list.insert(r.into(), v.clone()),
                None => list.remove(r),
            };
        }
        out["resources"][part] = Value::Object(list);
    }
    out
}

/// A container as Go's types compare it: absent and empty members alike.
fn comparable(c: &Value) -> Value {
    crate::strategy::without_empty(c)
}

fn qos(spec: &Value) -> &'static str {
    let mut s = spec.clone();
    crate::strategy::default_pod_spec(&mut s, None);
    crate::strategy::pod_qos(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": containers},
               "status": {"qosClass": "Burstable"}})
    }

    fn messages(errs: &[FieldError]) -> Vec<String> {
        errs.iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn merge_takes_only_resources_and_resize_policy() {
        let policy = json!([{"resourceName": "cpu", "restartPolicy": "NotRequired"}]);
        let old = pod(
            json!([{"name": "c", "image": "a", "resources": {"requests": {"cpu": "20m"}},
            "resizePolicy": policy}]),
        );
        let new = pod(
            json!([{"name": "c", "image": "b", "resources": {"requests": {"cpu": "25m"}},
            "resizePolicy": policy}]),
        );
        let m = merge(&new, &old);
        assert_eq!(m["spec"]["containers"][0]["image"], "a");
        assert_eq!(
            m["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "25m"
        );
        assert_eq!(
            m["spec"]["containers"][0]["resizePolicy"][0]["resourceName"],
            "cpu"
        );
        assert!(
            validate(&m, &old).is_empty(),
            "{:?}",
            messages(&validate(&m, &old))
        );
        // The resize policy itself may not change (upstream compares the whole container).
        let mut other = new.clone();
        other["spec"]["containers"][0]["resizePolicy"][0]["restartPolicy"] =
            json!("RestartContainer");
        assert_eq!(
            messages(&validate(&merge(&other, &old), &old)),
            ["spec: Forbidden: only cpu and memory resources are mutable"]
        );
    }

    #[test]
    fn refusals_match_upstream() {
        let old = pod(json!([{"name": "c", "image": "a",
            "resources": {"requests": {"cpu": "20m", "memory": "35Mi"}, "limits": {"cpu": "30m"}}}]));
        // A limit removed.
        let new = pod(json!([{"name": "c", "image": "a",
            "resources": {"requests": {"cpu": "20m", "memory": "35Mi"}}}]));
        assert_eq!(
            messages(&validate(&merge(&new, &old), &old)),
            ["spec.containers[0].resources.limits: Forbidden: resource limits cannot be removed"]
        );
        // Another resource than CPU and memory.
        let new = pod(json!([{"name": "c", "image": "a",
            "resources": {"requests": {"cpu": "20m", "memory": "35Mi", "ephemeral-storage": "1Gi"}, "limits": {"cpu": "30m"}}}]));
        assert_eq!(
            messages(&validate(&merge(&new, &old), &old)),
            ["spec: Forbidden: only cpu and memory resources are mutable"]
        );
        // A container renamed.
        let new = pod(json!([{"name": "d", "image": "a",
            "resources": {"requests": {"cpu": "20m", "memory": "35Mi"}, "limits": {"cpu": "30m"}}}]));
        assert_eq!(
            messages(&validate(&merge(&new, &old), &old)),
            ["spec.containers[0].name: Forbidden: containers may not be renamed or reordered on resize"]
        );
        // The QoS class would change (Burstable to Guaranteed).
        let new = pod(json!([{"name": "c", "image": "a",
            "resources": {"requests": {"cpu": "30m", "memory": "35Mi"}, "limits": {"cpu": "30m", "memory": "35Mi"}}}]));
        let errs = messages(&validate(&merge(&new, &old), &old));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("Pod QOS Class may not change as a result of resizing"),
            "{errs:?}"
        );
        // A static pod.
        let mut st = old.clone();
        st["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "x"});
        assert_eq!(
            messages(&validate(&st, &st)),
            [": Forbidden: static pods cannot be resized"]
        );
    }
}
