//! Create-only resources whose answer is computed, not stored: access reviews (answered by
//! the authorizer, so `kubectl auth can-i` works), SelfSubjectReview (`kubectl auth whoami`),
//! TokenReview, and pod Bindings (what the scheduler posts).

use crate::auth::{Attributes, Decision, UserInfo};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use http::StatusCode;
use kite_api::registry::ResourceInfo;
use serde_json::{json, Value};

fn attrs_from(spec: &Value, ns_override: Option<&str>) -> Attributes {
    if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        Attributes {
            verb: s("verb"),
            api_group: s("group"),
            resource: s("resource"),
            subresource: s("subresource"),
            namespace: ns_override
                .map(String::from)
                .unwrap_or_else(|| s("namespace")),
            name: s("name"),
            path: None,
        }
    } else {
        let n = &spec["nonResourceAttributes"];
        Attributes {
            verb: n["verb"].as_str().unwrap_or_default().to_string(),
            path: Some(n["path"].as_str().unwrap_or_default().to_string()),
            ..Default::default()
        }
    }
}

fn decide(st: &AppState, user: &UserInfo, a: &Attributes) -> Value {
    match st.authorizer.authorize(user, a) {
        Decision::Allow => json!({"allowed": true}),
        Decision::Deny(reason) => json!({"allowed": false, "reason": reason}),
    }
}

/// Answers a create on a create-only resource.
pub async fn create(
    st: &AppState,
    user: &UserInfo,
    ri: &ResourceInfo,
    ns: Option<&str>,
    mut obj: Value,
) -> ApiResult<Value> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    obj["apiVersion"] = json!(ri.api_version());
    obj["kind"] = json!(ri.kind);
    let spec = obj["spec"].clone();
    let status = match (ri.group, ri.kind) {
        ("authorization.k8s.io", "SelfSubjectAccessReview") => {
            decide(st, user, &attrs_from(&spec, None))
        }
        ("authorization.k8s.io", "SubjectAccessReview" | "LocalSubjectAccessReview") => {
            let subject = UserInfo {
                username: spec["user"].as_str().unwrap_or_default().to_string(),
                groups: spec["groups"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|g| g.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
                ..Default::default()
            };
            if subject.username.is_empty() && subject.groups.is_empty() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("{}.authorization.k8s.io \"\" is invalid: spec.user: Invalid value: \"\": at least one of user or group must be specified", ri.kind),
                ));
            }
            let ns_override = if ri.kind == "LocalSubjectAccessReview" {
                ns
            } else {
                None
            };
            decide(st, &subject, &attrs_from(&spec, ns_override))
        }
        ("authorization.k8s.io", "SelfSubjectRulesReview") => {
            let all = Attributes {
                verb: "*".into(),
                api_group: "*".into(),
                resource: "*".into(),
                namespace: spec["namespace"].as_str().unwrap_or_default().to_string(),
                ..Default::default()
            };
            match st.authorizer.authorize(user, &all) {
                Decision::Allow => json!({
                    "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    "incomplete": false,
                }),
                Decision::Deny(_) => {
                    json!({"resourceRules": [], "nonResourceRules": [], "incomplete": false})
                }
            }
        }
        ("authentication.k8s.io", "SelfSubjectReview") => json!({"userInfo": user}),
        ("authentication.k8s.io", "TokenReview") => {
            let token = spec["token"].as_str().unwrap_or_default();
            let auds: Vec<String> = spec["audiences"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            match crate::tokens::authenticate(st, token, &auds).await {
                Ok(u) => {
                    let auds = if auds.is_empty() {
                        st.tokens
                            .as_ref()
                            .map(|t| t.audiences.clone())
                            .unwrap_or_default()
                    } else {
                        auds
                    };
                    json!({"authenticated": true, "user": u, "audiences": auds})
                }
                Err(e) => json!({"user": {}, "error": format!("[invalid bearer token, {e}]")}),
            }
        }
        ("", "Binding") => {
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            return bind(st, ns, &name, obj).await;
        }
        _ => return Err(ApiError::method_not_supported(ri, "create")),
    };
    obj["status"] = status;
    Ok(obj)
}

/// Binds a pod to a node (`pods/<name>/binding`): sets spec.nodeName once, with PodScheduled.
pub async fn bind(st: &AppState, ns: Option<&str>, pod: &str, binding: Value) -> ApiResult<Value> {
    let reg = st.objects.registry;
    let pods = reg.lookup("", "v1", "pods").expect("pods are registered");
    let node = binding["target"]["name"].as_str().unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("Binding \"{pod}\" is invalid: target.name: Required value"),
        ));
    }
    if binding["metadata"]["name"]
        .as_str()
        .is_some_and(|n| !n.is_empty() && n != pod)
    {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Binding object",
        ));
    }
    st.objects
        .bind(pods, ns, pod, node, &binding["metadata"])
        .await?;
    Ok(
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}
