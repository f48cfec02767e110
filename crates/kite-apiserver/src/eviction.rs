//! The `pods/eviction` subresource (a policy/v1 Eviction POSTed to a pod), as upstream's
//! EvictionREST: the pod is deleted unless the one PodDisruptionBudget that selects it
//! allows no more disruptions (429, upstream's message and cause). An allowed eviction
//! takes one disruption from the budget's status and records the pod in
//! `disruptedPods` (compare-and-swap on the budget, retried) before the pod is deleted;
//! the disruption controller gives it back if the pod does not go.

use crate::error::{ApiError, ApiResult};
use crate::objects::{DeleteOpts, ListOpts, Part, WriteOpts};
use crate::AppState;
use axum::http::StatusCode;
use serde_json::{json, Value};

const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

fn too_many(cause: String) -> ApiError {
    let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", VIOLATION);
    e.details = Some(json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]}));
    e
}

/// Upstream's canIgnorePDB: a pod that is terminal, pending or already being deleted is
/// deleted without asking its budget.
fn ignores_budget(pod: &Value) -> bool {
    !pod["metadata"]["deletionTimestamp"].is_null()
        || matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed" | "Pending") | None
        )
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

pub async fn evict(st: &AppState, ns: &str, name: &str, eviction: Value) -> ApiResult<Value> {
    let reg = st.objects.registry;
    let pods = reg.lookup("", "v1", "pods").expect("pods are registered");
    let pdbs = reg
        .lookup("policy", "v1", "poddisruptionbudgets")
        .expect("poddisruptionbudgets are registered");
    if eviction["metadata"]["name"]
        .as_str()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let d = &eviction["deleteOptions"];
    let opts = DeleteOpts {
        grace_period: d["gracePeriodSeconds"].as_i64(),
        propagation: d["propagationPolicy"].as_str().map(String::from),
        precondition_uid: d["preconditions"]["uid"].as_str().map(String::from),
        precondition_rv: d["preconditions"]["resourceVersion"]
            .as_str()
            .map(String::from),
        dry_run: d["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == "All")),
    };
    let done = || json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    for _ in 0..8 {
        let (pod, _) = st.objects.get(pods, Some(ns), name).await?;
        if ignores_budget(&pod) {
            st.objects.delete(pods, Some(ns), name, &opts).await?;
            return Ok(done());
        }
        let (all, _, _) = st
            .objects
            .list(pdbs, Some(ns), &ListOpts::default())
            .await?;
        let matching: Vec<Value> = all
            .into_iter()
            .filter(|b| {
                let sel = &b["spec"]["selector"];
                !sel.is_null()
                    && kite_api::selector::LabelSelector::from_object(sel)
                        .is_ok_and(|s| s.matches_object(&pod))
            })
            .collect();
        let mut pdb = match matching.len() {
            0 => {
                st.objects.delete(pods, Some(ns), name, &opts).await?;
                return Ok(done());
            }
            1 => matching.into_iter().next().expect("one"),
            _ => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ))
            }
        };
        let pdb_name = pdb["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let s = &pdb["status"];
        let healthy = s["currentHealthy"].as_i64().unwrap_or(0);
        let desired = s["desiredHealthy"].as_i64().unwrap_or(0);
        // An unready pod may go while the budget is met (IfHealthyBudget, the default):
        // its going takes nothing healthy away.
        let policy = pdb["spec"]["unhealthyPodEvictionPolicy"].as_str();
        if !is_ready(&pod) && (policy == Some("AlwaysAllow") || healthy >= desired) {
            st.objects.delete(pods, Some(ns), name, &opts).await?;
            return Ok(done());
        }
        if s["observedGeneration"].as_i64() < pdb["metadata"]["generation"].as_i64() {
            return Err(too_many(format!(
                "The disruption budget {pdb_name} is still being processed by the server."
            )));
        }
        let allowed = s["disruptionsAllowed"].as_i64().unwrap_or(0);
        if allowed <= 0 {
            return Err(too_many(format!(
                "The disruption budget {pdb_name} needs {desired} healthy pods and has {healthy} currently"
            )));
        }
        pdb["status"]["disruptionsAllowed"] = json!(allowed - 1);
        if !pdb["status"]["disruptedPods"].is_object() {
            pdb["status"]["disruptedPods"] = json!({});
        }
        pdb["status"]["disruptedPods"][name] = json!(jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default());
        if !opts.dry_run {
            match st
                .objects
                .update(
                    pdbs,
                    Some(ns),
                    &pdb_name,
                    pdb,
                    Part::Status,
                    &WriteOpts::default(),
                )
                .await
            {
                Ok(_) => {}
                // Another eviction took a disruption first: look again.
                Err(e) if e.code == StatusCode::CONFLICT => continue,
                Err(e) => return Err(e),
            }
        }
        st.objects.delete(pods, Some(ns), name, &opts).await?;
        return Ok(done());
    }
    Err(ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        "too many concurrent evictions; try again",
    ))
}
