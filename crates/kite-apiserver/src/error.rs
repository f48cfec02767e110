//! API errors and their rendering as upstream `metav1.Status` responses (code, reason,
//! message, details with causes), so kubectl prints its usual messages.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use kite_api::validation::FieldError;
use kite_api::ResourceInfo;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: Box<str>,
    pub details: Option<Value>,
    /// `metadata.continue` of the Status: where a list may go on (inconsistently) after its
    /// continue token expired.
    pub list_continue: Option<Box<String>>,
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The "resource.group" form upstream uses in messages (`deployments.apps`).
pub fn qualified(ri: &ResourceInfo) -> String {
    if ri.group.is_empty() {
        ri.plural.to_string()
    } else {
        format!("{}.{}", ri.plural, ri.group)
    }
}

fn details(ri: &ResourceInfo, name: &str) -> Value {
    json!({"name": name, "group": ri.group, "kind": ri.plural})
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: Into::<String>::into(message).into(),
            details: None,
            list_continue: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
    pub fn not_found(ri: &ResourceInfo, name: &str) -> Self {
        ApiError {
            details: Some(details(ri, name)),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{}\" not found", qualified(ri), name),
            )
        }
    }
    pub fn path_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
    }
    pub fn already_exists(ri: &ResourceInfo, name: &str) -> Self {
        ApiError {
            details: Some(details(ri, name)),
            ..Self::new(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} \"{}\" already exists", qualified(ri), name),
            )
        }
    }
    pub fn conflict(ri: &ResourceInfo, name: &str, why: &str) -> Self {
        ApiError {
            details: Some(details(ri, name)),
            ..Self::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": {}",
                    qualified(ri),
                    name,
                    why
                ),
            )
        }
    }
    pub fn stale(ri: &ResourceInfo, name: &str) -> Self {
        Self::conflict(
            ri,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }
    pub fn invalid(ri: &ResourceInfo, name: &str, errs: &[FieldError]) -> Self {
        Self::invalid_kind(ri.group, ri.kind, name, errs)
    }
    /// A 422 for bad list or watch parameters (`ListOptions.meta.k8s.io "" is invalid: ...`).
    pub fn invalid_options(errs: &[FieldError]) -> Self {
        Self::invalid_kind("meta.k8s.io", "ListOptions", "", errs)
    }
    /// Upstream's `NewInvalid(GroupKind, name, errs)`.
    pub fn invalid_kind(group: &str, kind: &str, name: &str, errs: &[FieldError]) -> Self {
        let list: Vec<String> = errs.iter().map(FieldError::text).collect();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let kind_group = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let causes: Vec<Value> = errs
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field}))
            .collect();
        ApiError {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message: format!("{kind_group} \"{name}\" is invalid: {joined}").into(),
            details: Some(json!({"name": name, "group": group, "kind": kind, "causes": causes})),
            list_continue: None,
        }
    }
    pub fn method_not_supported(ri: &ResourceInfo, verb: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "{verb} is not supported on resources of kind \"{}\"",
                qualified(ri)
            ),
        )
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }
    pub fn unsupported_media(ct: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"),
        )
    }

    /// A 504 for a watch or list that asks for a revision the store has not reached
    /// (upstream's `NewTooLargeResourceVersionError`).
    pub fn too_large_resource_version(wanted: i64, current: i64) -> Self {
        ApiError {
            details: Some(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            })),
            ..Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                format!("Timeout: Too large resource version: {wanted}, current: {current}"),
            )
        }
    }

    /// The `metav1.Status` body, with upstream's key order (Go's struct order) and its
    /// `omitempty` rules: `details` only when it has something, and in it no empty key.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
        });
        if let Some(c) = &self.list_continue {
            s["metadata"] = json!({"continue": c});
        }
        if !self.message.is_empty() {
            s["message"] = json!(self.message);
        }
        if !self.reason.is_empty() {
            s["reason"] = json!(self.reason);
        }
        if let Some(d) = self.details.as_ref().and_then(status_details) {
            s["details"] = d;
        }
        s["code"] = json!(self.code.as_u16());
        s
    }

    /// The Status body as upstream writes it: compact JSON and a closing newline.
    pub fn status_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec(&self.status()).unwrap_or_default();
        b.push(b'\n');
        b
    }
}

/// `StatusDetails` in Go's field order (name, group, kind, uid, causes, retryAfterSeconds),
/// each left out when empty; `None` when nothing is left. Causes keep `reason, message,
/// field`, likewise without empty ones.
fn status_details(d: &Value) -> Option<Value> {
    let mut out = serde_json::Map::new();
    let present = |v: &Value| match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Number(n) => n.as_i64() != Some(0),
        _ => true,
    };
    for key in ["name", "group", "kind", "uid"] {
        if present(&d[key]) {
            out.insert(key.into(), d[key].clone());
        }
    }
    if present(&d["causes"]) {
        let causes = d["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let mut m = serde_json::Map::new();
                for key in ["reason", "message", "field"] {
                    if present(&c[key]) {
                        m.insert(key.into(), c[key].clone());
                    }
                }
                Value::Object(m)
            })
            .collect();
        out.insert("causes".into(), Value::Array(causes));
    }
    if present(&d["retryAfterSeconds"]) {
        out.insert("retryAfterSeconds".into(), d["retryAfterSeconds"].clone());
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = if self.code == StatusCode::NOT_ACCEPTABLE {
            // Upstream writes a failed negotiation's Status with its fallback encoder,
            // which indents (two spaces, as Go's json.Indent).
            let mut b = serde_json::to_vec_pretty(&self.status()).unwrap_or_default();
            b.push(b'\n');
            b
        } else {
            self.status_bytes()
        };
        (
            self.code,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

impl From<kite_store::StoreError> for ApiError {
    fn from(e: kite_store::StoreError) -> Self {
        match e {
            kite_store::StoreError::Compacted {
                requested,
                compacted,
            } => ApiError::gone(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            other => ApiError::internal(other.to_string()),
        }
    }
}
