//! The generic REST store: create, get, list, update, patch and delete for any resource in
//! the registry, over the [`kite_store::Store`]. It applies the kind's strategy (defaulting,
//! validation, status handling), object semantics (uid, creationTimestamp, generation,
//! finalizers, deletionTimestamp, namespaces) and optimistic concurrency. It knows nothing of
//! HTTP; `http.rs` parses requests into these calls.

use crate::admission_cache::AdmissionCache;
use crate::alloc;
use crate::error::{qualified, ApiError, ApiResult};
use base64::Engine;
use http::StatusCode;
use kite_api::patch::{self, PatchType};
use kite_api::registry::{Registry, ResourceInfo};
use kite_api::selector::{FieldSelector, LabelSelector};
use kite_api::strategy::{self, Settings, StatusMeta};
use kite_api::validation::FieldError;
use kite_store::{DynStore, KeyValue, Revision, StoreError};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// How unknown fields are treated (the `fieldValidation` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Strict,
    #[default]
    Warn,
    Ignore,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> ApiResult<Self> {
        match s {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(o) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {o}"
            ))),
        }
    }
}

/// Options every write takes.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
    /// A pod's `ephemeralcontainers`: only `spec.ephemeralContainers` changes.
    EphemeralContainers,
    /// A pod's `resize`: only its containers' CPU and memory (`kite_api::resize`).
    Resize,
}

/// A written object and the warnings to send with it.
pub struct Written {
    pub object: WrittenObject,
    pub warnings: Vec<String>,
    /// True when the write created the object (201 rather than 200).
    pub created: bool,
}

/// What a write returns: the object as a value, or (after a create) the stored JSON with
/// its resourceVersion, sent as it is without being parsed again.
pub enum WrittenObject {
    Value(Value),
    Json(Vec<u8>),
}

impl WrittenObject {
    pub fn into_value(self) -> ApiResult<Value> {
        match self {
            WrittenObject::Value(v) => Ok(v),
            WrittenObject::Json(b) => {
                serde_json::from_slice(&b).map_err(|e| ApiError::internal(e.to_string()))
            }
        }
    }

    pub fn into_json(self) -> Vec<u8> {
        match self {
            WrittenObject::Value(v) => {
                serde_json::to_vec(&v).expect("JSON values always serialise")
            }
            WrittenObject::Json(b) => b,
        }
    }
}

/// Cluster settings the API needs.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub service_cidr: ipnet::Ipv4Net,
    /// The Services' IPv6 range of a dual-stack cluster.
    pub service_cidr_v6: Option<ipnet::Ipv6Net>,
    pub strategy: Settings,
}

/// The generic store plus what every request needs.
pub struct Objects {
    pub store: DynStore,
    pub registry: &'static Registry,
    pub cfg: ApiConfig,
    /// Serialises Service writes so ClusterIP and nodePort allocation cannot race.
    service_lock: tokio::sync::Mutex<()>,
    /// Namespaces and PriorityClasses as every create's admission needs them.
    admission: Arc<AdmissionCache>,
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta(obj: &Value) -> &Value {
    &obj["metadata"]
}

/// An admission plugin's refusal of a pod (upstream's `admission.NewForbidden`).
fn pod_forbidden(name: &str, msg: &str) -> ApiError {
    ApiError {
        details: Some(json!({"name": name, "kind": "pods"})),
        ..ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("pods \"{name}\" is forbidden: {msg}"),
        )
    }
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().unwrap()
}

/// Whether `new` equals `old` apart from `metadata.resourceVersion` (which an object on
/// its way to the store no longer carries), without copying either.
fn same_but_resource_version(new: &Value, old: &Value) -> bool {
    let (Some(n), Some(o)) = (new.as_object(), old.as_object()) else {
        return new == old;
    };
    strategy::same_except(n, o, &["metadata"])
        && match (n.get("metadata"), o.get("metadata")) {
            (Some(Value::Object(nm)), Some(Value::Object(om))) => {
                strategy::same_except(nm, om, &["resourceVersion"])
            }
            (nm, om) => nm == om,
        }
}

pub fn name_of(obj: &Value) -> &str {
    meta(obj)["name"].as_str().unwrap_or_default()
}

fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Decodes a stored value and stamps its resourceVersion.
pub fn decode(kv: &KeyValue) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt object at {}: {e}", kv.key)))?;
    meta_mut(&mut v).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    Ok(v)
}

/// Where the top-level `metadata` object's `{` is in compact JSON written by [`encode`].
fn metadata_brace(raw: &[u8]) -> Option<usize> {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    let mut key_start = 0;
    let mut last_key: &[u8] = b"";
    let mut after_metadata_colon = false;
    for (i, &c) in raw.iter().enumerate() {
        if in_str {
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                in_str = false;
                if depth == 1 {
                    last_key = &raw[key_start..i];
                }
            }
            continue;
        }
        match c {
            b'"' => {
                in_str = true;
                key_start = i + 1;
            }
            b':' if depth == 1 => after_metadata_colon = last_key == b"metadata",
            b'{' | b'[' => {
                if depth == 1 && c == b'{' && after_metadata_colon {
                    return Some(i);
                }
                depth += 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => after_metadata_colon = false,
            _ => {}
        }
    }
    None
}

/// The stored JSON with `metadata.resourceVersion` set, without parsing it.
pub fn raw_with_rv(kv: &KeyValue) -> ApiResult<Vec<u8>> {
    let rv = format!("\"resourceVersion\":\"{}\"", kv.mod_revision);
    match metadata_brace(&kv.value) {
        Some(b) => {
            let mut out = Vec::with_capacity(kv.value.len() + rv.len() + 1);
            out.extend_from_slice(&kv.value[..=b]);
            out.extend_from_slice(rv.as_bytes());
            if kv.value.get(b + 1) != Some(&b'}') {
                out.push(b',');
            }
            out.extend_from_slice(&kv.value[b + 1..]);
            Ok(out)
        }
        None => serde_json::to_vec(&decode(kv)?).map_err(|e| ApiError::internal(e.to_string())),
    }
}

/// Upstream's storage preconditions (delete options, bindings): a uid and a resourceVersion
/// the stored object must have, else 409.
fn check_preconditions(
    ri: &ResourceInfo,
    name: &str,
    obj: &Value,
    rev: Revision,
    uid: Option<&str>,
    rv: Option<&str>,
) -> ApiResult<()> {
    if let Some(uid) = uid {
        let have = meta(obj)["uid"].as_str().unwrap_or_default();
        if have != uid {
            return Err(ApiError::conflict(
                ri,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                ),
            ));
        }
    }
    if let Some(rv) = rv {
        if rv.parse::<Revision>().ok() != Some(rev) {
            return Err(ApiError::conflict(ri, name, &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {rev}"
            )));
        }
    }
    Ok(())
}

/// Sets a pod condition's status, as upstream's UpdatePodCondition: a new condition, or a
/// changed status, gets lastTransitionTime now; an unchanged one keeps its time.
fn set_condition(pod: &mut Value, ty: &str, status: &str) {
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    if !pod["status"]["conditions"].is_array() {
        pod["status"]["conditions"] = json!([]);
    }
    let conds = pod["status"]["conditions"]
        .as_array_mut()
        .expect("made an array above");
    let now = json!(now_rfc3339());
    match conds.iter_mut().find(|c| c["type"] == ty) {
        Some(c) => {
            if c["status"] != status {
                c["lastTransitionTime"] = now;
            }
            c["status"] = json!(status);
            if let Some(m) = c.as_object_mut() {
                m.remove("reason");
                m.remove("message");
            }
        }
        None => conds.push(
            json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": now}),
        ),
    }
}

/// The stored form of an object: its JSON without `metadata.resourceVersion`, which is the
/// key's revision. Writers remove the field before calling; a copy is made only if they did not.
fn encode(obj: &Value) -> Vec<u8> {
    if obj["metadata"].get("resourceVersion").is_none() {
        return serde_json::to_vec(obj).expect("JSON values always serialise");
    }
    let mut o = obj.clone();
    meta_mut(&mut o).remove("resourceVersion");
    serde_json::to_vec(&o).expect("JSON values always serialise")
}

fn random_suffix() -> String {
    // Upstream's alphabet: no vowels, no ambiguous characters.
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHA[rand::random_range(0..ALPHA.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_ignores_only_the_resource_version() {
        let old = json!({"metadata": {"name": "a", "resourceVersion": "7"}, "data": {"k": "v"}});
        let same = json!({"metadata": {"name": "a"}, "data": {"k": "v"}});
        assert!(same_but_resource_version(&same, &old));
        let other = json!({"metadata": {"name": "a"}, "data": {"k": "w"}});
        assert!(!same_but_resource_version(&other, &old));
        let more = json!({"metadata": {"name": "a", "labels": {"x": "y"}}, "data": {"k": "v"}});
        assert!(!same_but_resource_version(&more, &old));
        let fewer = json!({"metadata": {"name": "a"}});
        assert!(!same_but_resource_version(&fewer, &old));
        let no_meta = json!({"metadata": {"resourceVersion": "7"}});
        assert!(same_but_resource_version(
            &json!({"metadata": {}}),
            &no_meta
        ));
    }

    #[test]
    fn resource_version_is_spliced_into_the_top_level_metadata() {
        let kv = |v: &str| KeyValue {
            key: "k".into(),
            value: v.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 42,
        };
        let cases = [
            r#"{"data":{"metadata":{"x":"y"}},"metadata":{"name":"a"}}"#,
            r#"{"kind":"X","metadata":{},"spec":{"template":{"metadata":{}}}}"#,
            r#"{"data":{"k":"\"metadata\":{"},"metadata":{"name":"b"}}"#,
        ];
        for c in cases {
            let spliced: Value = serde_json::from_slice(&raw_with_rv(&kv(c)).unwrap()).unwrap();
            let mut want: Value = serde_json::from_str(c).unwrap();
            want["metadata"]["resourceVersion"] = json!("42");
            assert_eq!(spliced, want, "{c}");
        }
    }

    /// A store whose reads under one prefix fail while `fail` names it.
    struct FailingReads {
        inner: DynStore,
        fail: std::sync::Mutex<Option<String>>,
    }

    impl FailingReads {
        /// `read`, or a backend error when `key` is under the failing prefix.
        fn guard<'a, T: Send + 'a>(
            &self,
            key: &str,
            read: futures::future::BoxFuture<'a, kite_store::Result<T>>,
        ) -> futures::future::BoxFuture<'a, kite_store::Result<T>> {
            match &*self.fail.lock().unwrap() {
                Some(p) if key.starts_with(p.as_str()) => {
                    Box::pin(async { Err(StoreError::Backend("the disk went away".into())) })
                }
                _ => read,
            }
        }
    }

    impl kite_store::Store for FailingReads {
        fn current_revision(&self) -> Revision {
            self.inner.current_revision()
        }
        fn compacted_revision(&self) -> Revision {
            self.inner.compacted_revision()
        }
        fn get<'a>(
            &'a self,
            key: &'a str,
        ) -> futures::future::BoxFuture<'a, kite_store::Result<Option<KeyValue>>> {
            self.guard(key, self.inner.get(key))
        }
        fn range<'a>(
            &'a self,
            prefix: &'a str,
            start_after: Option<&'a str>,
            limit: usize,
        ) -> futures::future::BoxFuture<'a, kite_store::Result<kite_store::RangeResult>> {
            self.guard(prefix, self.inner.range(prefix, start_after, limit))
        }
        fn range_at<'a>(
            &'a self,
            prefix: &'a str,
            start_after: Option<&'a str>,
            limit: usize,
            at: Revision,
        ) -> futures::future::BoxFuture<'a, kite_store::Result<kite_store::RangeResult>> {
            self.guard(prefix, self.inner.range_at(prefix, start_after, limit, at))
        }
        fn create<'a>(
            &'a self,
            key: &'a str,
            value: Vec<u8>,
        ) -> futures::future::BoxFuture<'a, kite_store::Result<KeyValue>> {
            self.inner.create(key, value)
        }
        fn update<'a>(
            &'a self,
            key: &'a str,
            value: Vec<u8>,
            expected: Revision,
        ) -> futures::future::BoxFuture<'a, kite_store::Result<KeyValue>> {
            self.inner.update(key, value, expected)
        }
        fn delete<'a>(
            &'a self,
            key: &'a str,
            expected: Option<Revision>,
        ) -> futures::future::BoxFuture<'a, kite_store::Result<KeyValue>> {
            self.inner.delete(key, expected)
        }
        fn watch(&self, prefix: &str, after: Revision) -> kite_store::Result<kite_store::Watch> {
            self.inner.watch(prefix, after)
        }
        fn compact(
            &self,
            revision: Revision,
        ) -> futures::future::BoxFuture<'_, kite_store::Result<()>> {
            self.inner.compact(revision)
        }
    }

    /// A store that cannot answer admission's question is a 500 that creates nothing, not
    /// a 404 for the namespace or a 403 for the PriorityClass.
    #[tokio::test]
    async fn admission_store_failures_are_internal_errors() {
        let dir = tempfile::tempdir().unwrap();
        let sled: DynStore = Arc::new(kite_store::SledStore::open(dir.path()).unwrap());
        let store = Arc::new(FailingReads {
            inner: sled,
            fail: Default::default(),
        });
        let objects = Objects::new(
            store.clone(),
            ApiConfig {
                service_cidr: "10.43.0.0/16".parse().unwrap(),
                service_cidr_v6: None,
                strategy: Settings::default(),
            },
        );
        let reg = Registry::get();
        let ns_ri = reg.lookup("", "v1", "namespaces").unwrap();
        let pods = reg.lookup("", "v1", "pods").unwrap();
        let opts = WriteOpts::default();
        objects
            .create(ns_ri, None, json!({"metadata": {"name": "app"}}), &opts)
            .await
            .unwrap();
        let pod = |ns: &str, class: Option<&str>| {
            let mut p = json!({"metadata": {"name": "p", "namespace": ns},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
            if let Some(c) = class {
                p["spec"]["priorityClassName"] = json!(c);
            }
            p
        };
        let code = |r: ApiResult<Written>| r.err().map(|e| e.code);

        // The store answers: a missing namespace is 404, a missing class 403.
        let r = objects
            .create(pods, Some("ghost"), pod("ghost", None), &opts)
            .await;
        assert_eq!(code(r), Some(StatusCode::NOT_FOUND));
        let r = objects
            .create(pods, Some("app"), pod("app", Some("nope")), &opts)
            .await;
        assert_eq!(code(r), Some(StatusCode::FORBIDDEN));

        // It cannot: 500, and no pod.
        *store.fail.lock().unwrap() = Some(ns_ri.storage_prefix());
        let r = objects
            .create(pods, Some("ghost"), pod("ghost", None), &opts)
            .await;
        assert_eq!(code(r), Some(StatusCode::INTERNAL_SERVER_ERROR));
        let pcs = reg
            .lookup("scheduling.k8s.io", "v1", "priorityclasses")
            .unwrap();
        *store.fail.lock().unwrap() = Some(pcs.storage_prefix());
        let r = objects
            .create(pods, Some("app"), pod("app", Some("nope")), &opts)
            .await;
        assert_eq!(code(r), Some(StatusCode::INTERNAL_SERVER_ERROR));
        *store.fail.lock().unwrap() = None;
        assert!(objects.get(pods, Some("app"), "p").await.is_err());
    }
}

/// Upstream's 410 for a continue token whose revision is compacted, with a token that goes
/// on from the same key at the latest revision (an inconsistent list, which the message
/// says).
fn expired_continue(start: Option<&str>) -> ApiError {
    let token = start.map(|start| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&ContinueToken {
                rv: -1,
                start: start.to_string(),
            })
            .unwrap_or_default(),
        )
    });
    ApiError {
        list_continue: token.map(Box::new),
        ..ApiError::gone(
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter, or use the continue token \
             in this response to retrieve the remainder of the results. Continuing with the \
             provided token results in an inconsistent list - objects that were created, \
             modified, or deleted between the time the first chunk was returned and now may \
             show up in the list.",
        )
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: Revision,
    start: String,
}

/// Parsed list options.
/// Where a limited list stops: the token for the next page and, when no selector filtered
/// the list, how many objects follow (`metadata.remainingItemCount`).
#[derive(Debug, Clone, PartialEq)]
pub struct Continue {
    pub token: String,
    pub remaining: Option<u64>,
}

#[derive(Debug, Default, Clone)]
pub struct ListOpts {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: usize,
    pub continue_token: Option<String>,
}

/// Parsed delete options.
#[derive(Debug, Default, Clone)]
pub struct DeleteOpts {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

impl Objects {
    /// Needs a Tokio runtime: the admission cache follows the store in the background.
    pub fn new(store: DynStore, cfg: ApiConfig) -> Arc<Self> {
        let registry = Registry::get();
        let prefix = |g: &str, p: &str| {
            registry
                .lookup(g, "v1", p)
                .map(|ri| ri.storage_prefix())
                .expect("namespaces and priorityclasses are registered")
        };
        let admission = AdmissionCache::start(
            store.clone(),
            prefix("", "namespaces"),
            prefix("scheduling.k8s.io", "priorityclasses"),
        );
        Arc::new(Objects {
            store,
            registry,
            cfg,
            service_lock: tokio::sync::Mutex::new(()),
            admission,
        })
    }

    fn key(ri: &ResourceInfo, ns: Option<&str>, name: &str) -> String {
        ri.key(ns, name)
    }

    /// The store prefix for a collection: all namespaces, or one.
    pub fn collection_prefix(ri: &ResourceInfo, ns: Option<&str>) -> String {
        match ns {
            Some(ns) if ri.namespaced => format!("{}{}/", ri.storage_prefix(), ns),
            _ => ri.storage_prefix(),
        }
    }

    pub async fn get(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<(Value, Revision)> {
        let kv = self
            .store
            .get(&Self::key(ri, ns, name))
            .await?
            .ok_or_else(|| ApiError::not_found(ri, name))?;
        Ok((decode(&kv)?, kv.mod_revision))
    }

    async fn check_namespace(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<()> {
        if !ri.namespaced {
            return Ok(());
        }
        let ns = ns.ok_or_else(|| ApiError::bad_request("a namespace is required"))?;
        let nsri = self.registry.lookup("", "v1", "namespaces").unwrap();
        // A store that cannot answer is the server's fault (500), not a missing namespace.
        let terminating = match self.admission.namespace(ns).await? {
            Some(t) => t,
            None => return Err(ApiError::not_found(nsri, ns)),
        };
        if terminating {
            return Err(ApiError {
                details: Some(json!({"name": ns, "kind": "namespaces", "causes": [{
                    "reason": "NamespaceTerminating",
                    "message": format!("namespace {ns} is being terminated"),
                    "field": "metadata.namespace"}]})),
                ..ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!(
                        "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        qualified(ri),
                        name
                    ),
                )
            });
        }
        Ok(())
    }

    /// Checks the body's apiVersion/kind and namespace against the request; fills them in.
    fn check_identity(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        obj: &mut Value,
    ) -> ApiResult<()> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(format!(
                "Object '{}' is not a JSON object",
                ri.kind
            )));
        }
        let want_av = ri.api_version();
        if let Some(av) = obj["apiVersion"].as_str() {
            if av != want_av {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({want_av})"
                )));
            }
        }
        if let Some(k) = obj["kind"].as_str() {
            if k != ri.kind {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    ri.kind
                )));
            }
        }
        obj["apiVersion"] = json!(want_av);
        obj["kind"] = json!(ri.kind);
        let m = meta_mut(obj);
        if ri.namespaced {
            let ns = ns.unwrap_or_default();
            match m.get("namespace").and_then(Value::as_str) {
                Some(b) if !b.is_empty() && b != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => {
                    m.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            m.remove("namespace");
        }
        Ok(())
    }

    /// Upstream's Priority admission plugin: a new pod's `priority` and
    /// `preemptionPolicy` come from its PriorityClass (or the global default class).
    /// Upstream's RuntimeClass admission, for a new pod: its RuntimeClass must exist; the
    /// class's overhead becomes the pod's, and its scheduling constraints join the pod's
    /// node selector and tolerations.
    async fn admit_runtime_class(&self, pod: &mut Value) -> ApiResult<()> {
        let Some(class_name) = pod["spec"]["runtimeClassName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from)
        else {
            return Ok(());
        };
        let pod_name = name_of(pod).to_string();
        let forbidden = |msg: String| pod_forbidden(&pod_name, &format!("pod rejected: {msg}"));
        let ri = self
            .registry
            .lookup("node.k8s.io", "v1", "runtimeclasses")
            .expect("runtimeclasses are registered");
        let class = match self.get(ri, None, &class_name).await {
            Ok((c, _)) => c,
            Err(e) if e.code == StatusCode::NOT_FOUND => {
                return Err(forbidden(format!(
                    "RuntimeClass \"{class_name}\" not found"
                )))
            }
            Err(e) => return Err(e),
        };
        if !pod["spec"].is_object() {
            return Err(ApiError::bad_request("a pod needs a spec"));
        }
        let spec = pod["spec"].as_object_mut().expect("checked above");
        if let Some(fixed) = class["overhead"]["podFixed"].as_object() {
            match spec.get("overhead") {
                Some(o) if !o.is_null() && o.as_object() != Some(fixed) => {
                    return Err(forbidden(
                        "Pod's Overhead doesn't match RuntimeClass's defined Overhead".into(),
                    ))
                }
                _ => {
                    spec.insert("overhead".into(), json!(fixed));
                }
            }
        }
        let scheduling = &class["scheduling"];
        if let Some(sel) = scheduling["nodeSelector"].as_object() {
            let ns = spec.entry("nodeSelector").or_insert_with(|| json!({}));
            for (k, v) in sel {
                match ns.get(k) {
                    Some(have) if have != v => {
                        return Err(forbidden(format!("conflict: runtimeClass.scheduling.nodeSelector[{k}] = {v}; pod.spec.nodeSelector[{k}] = {have}")))
                    }
                    _ => {
                        ns[k] = v.clone();
                    }
                }
            }
        }
        if let Some(tols) = scheduling["tolerations"].as_array() {
            let list = spec.entry("tolerations").or_insert_with(|| json!([]));
            if let Some(list) = list.as_array_mut() {
                for t in tols {
                    if !list.contains(t) {
                        list.push(t.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// Upstream's ServiceAccount admission, for a new pod: its account (`default` unless
    /// named) must exist; unless the pod or the account opts out of automounting, a
    /// projected `kube-api-access-<random>` volume (a bound token, the cluster CA, the
    /// namespace) is added and mounted read-only in every container at
    /// `/var/run/secrets/kubernetes.io/serviceaccount`; the account's image pull secrets
    /// become the pod's when it has none. Mirror pods are left alone.
    async fn admit_service_account(&self, ns: &str, pod: &mut Value) -> ApiResult<()> {
        const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
        if pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string() {
            return Ok(());
        }
        // Namespace lifecycle comes first: a missing namespace is its 404, not a 403 here.
        if !pod["spec"].is_object() || self.admission.namespace(ns).await?.is_none() {
            return Ok(());
        }
        let pod_name = name_of(pod).to_string();
        let sa_name = pod["spec"]["serviceAccountName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string();
        pod["spec"]["serviceAccountName"] = json!(sa_name);
        let ri = self
            .registry
            .lookup("", "v1", "serviceaccounts")
            .expect("serviceaccounts are registered");
        let sa = match self.get(ri, Some(ns), &sa_name).await {
            Ok((sa, _)) => sa,
            Err(e) if e.code == StatusCode::NOT_FOUND => {
                return Err(pod_forbidden(
                    &pod_name,
                    &format!("error looking up service account {ns}/{sa_name}: serviceaccount \"{sa_name}\" not found"),
                ))
            }
            Err(e) => return Err(e),
        };
        let spec = pod["spec"].as_object_mut().expect("checked above");
        if spec
            .get("imagePullSecrets")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            if let Some(s) = sa["imagePullSecrets"].as_array().filter(|a| !a.is_empty()) {
                spec.insert("imagePullSecrets".into(), json!(s));
            }
        }
        let automount = spec
            .get("automountServiceAccountToken")
            .and_then(Value::as_bool)
            .or_else(|| sa["automountServiceAccountToken"].as_bool())
            .unwrap_or(true);
        if !automount {
            return Ok(());
        }
        let lists = ["initContainers", "containers"];
        let mounted = |c: &Value| {
            c["volumeMounts"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["mountPath"] == MOUNT))
        };
        let all_mounted = lists.iter().all(|l| {
            spec.get(*l)
                .and_then(Value::as_array)
                .is_none_or(|cs| cs.iter().all(mounted))
        });
        if all_mounted {
            return Ok(());
        }
        let taken: Vec<String> = spec
            .get("volumes")
            .and_then(Value::as_array)
            .map(|v| {
                v.iter()
                    .filter_map(|v| v["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let name = loop {
            use rand::Rng;
            // utilrand.String's alphabet: no vowels, no confusable digits.
            const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
            let mut r = rand::rng();
            let suffix: String = (0..5)
                .map(|_| ALPHABET[r.random_range(0..ALPHABET.len())] as char)
                .collect();
            let n = format!("kube-api-access-{suffix}");
            if !taken.contains(&n) {
                break n;
            }
        };
        let volume = json!({
            "name": name,
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ],
                "defaultMode": 420,
            },
        });
        let vols = spec.entry("volumes").or_insert_with(|| json!([]));
        if !vols.is_array() {
            *vols = json!([]);
        }
        vols.as_array_mut().expect("made an array").push(volume);
        for l in lists {
            let Some(cs) = spec.get_mut(l).and_then(Value::as_array_mut) else {
                continue;
            };
            for c in cs {
                if mounted(c) || !c.is_object() {
                    continue;
                }
                let m = c
                    .as_object_mut()
                    .expect("checked")
                    .entry("volumeMounts")
                    .or_insert_with(|| json!([]));
                if !m.is_array() {
                    *m = json!([]);
                }
                m.as_array_mut()
                    .expect("made an array")
                    .push(json!({"name": name, "readOnly": true, "mountPath": MOUNT}));
            }
        }
        Ok(())
    }

    async fn admit_priority(&self, pod: &mut Value) -> ApiResult<()> {
        let pod_name = name_of(pod).to_string();
        let forbidden = |msg: String| pod_forbidden(&pod_name, &msg);
        let class_name = pod["spec"]["priorityClassName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from);
        let (class, value, policy) = match class_name.as_deref() {
            Some("system-node-critical") => (class_name.clone(), 2_000_001_000, None),
            Some("system-cluster-critical") => (class_name.clone(), 2_000_000_000, None),
            Some(n) => match self.admission.class(n).await? {
                Some(c) => (class_name.clone(), c.value, c.preemption_policy),
                None => {
                    return Err(forbidden(format!(
                        "no PriorityClass with name {n} was found"
                    )))
                }
            },
            None => match self.admission.default_class().await? {
                Some((n, c)) => (Some(n), c.value, c.preemption_policy),
                None => (None, 0, None),
            },
        };
        let spec = pod
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::bad_request("a pod needs a spec"))?;
        if let Some(given) = spec.get("priority").and_then(Value::as_i64) {
            if given != value {
                return Err(forbidden(format!("the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name")));
            }
        }
        spec.insert("priority".into(), json!(value));
        if let Some(c) = class {
            spec.insert("priorityClassName".into(), json!(c));
        }
        spec.insert(
            "preemptionPolicy".into(),
            json!(policy.unwrap_or_else(|| "PreemptLowerPriority".into())),
        );
        Ok(())
    }

    /// Defaults, validates and decodes as the typed object; returns warnings. The typed
    /// object replaces `obj`, or, with `as_json`, comes back as the JSON text to store
    /// (no intermediate value; `obj` is then left defaulted but not normalised).
    fn admit(
        &self,
        ri: &ResourceInfo,
        obj: &mut Value,
        old: Option<&Value>,
        fv: FieldValidation,
        as_json: bool,
    ) -> ApiResult<(Vec<String>, Option<Vec<u8>>)> {
        strategy::default(ri, obj);
        let name = name_of(obj).to_string();
        // As upstream: a value of the wrong type fails decoding (400) before validation; a
        // missing required field is reported with the validation errors (422).
        let mut unknown = Vec::new();
        let decoded = if as_json {
            (ri.roundtrip_json)(obj, &mut unknown).map(Some)
        } else {
            (ri.roundtrip)(obj, &mut unknown).map(|normalised| {
                *obj = normalised;
                None
            })
        };
        let missing = match &decoded {
            Err(e) => match e.missing_field() {
                Some(f) if e.path.is_empty() || e.path == "." => Some(f.to_string()),
                Some(f) => Some(format!("{}.{f}", e.path)),
                None => {
                    return Err(ApiError::bad_request(format!(
                        "{} in version \"{}\" cannot be handled as a {}: {}: {}",
                        ri.kind, ri.version, ri.kind, e.path, e.message
                    )))
                }
            },
            Ok(_) => None,
        };
        let mut errs = strategy::validate(ri, obj, old, &self.cfg.strategy);
        if let Some(field) = missing {
            if !errs.iter().any(|e| e.field == field) {
                errs.push(FieldError::required(field));
            }
        }
        if !errs.is_empty() {
            return Err(ApiError::invalid(ri, &name, &errs));
        }
        // A decoding error has returned by now: a type error at once, a missing field
        // through `errs`.
        let json = decoded.unwrap_or_default();
        let mut warnings = Vec::new();
        match fv {
            FieldValidation::Strict if !unknown.is_empty() => {
                let list: Vec<String> = unknown
                    .iter()
                    .map(|u| format!("unknown field \"{u}\""))
                    .collect();
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                    ri.kind,
                    ri.version,
                    ri.kind,
                    list.join(", ")
                )));
            }
            FieldValidation::Warn => {
                warnings.extend(unknown.iter().map(|u| format!("unknown field \"{u}\"")));
            }
            _ => {}
        }
        Ok((warnings, json))
    }

    pub async fn create(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Written> {
        self.check_identity(ri, ns, &mut obj)?;
        {
            let m = meta_mut(&mut obj);
            let has_name = m
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            if !has_name {
                if let Some(g) = m.get("generateName").and_then(Value::as_str) {
                    let g = g.to_string();
                    m.insert("name".into(), json!(format!("{g}{}", random_suffix())));
                }
            }
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("selfLink");
            m.remove("managedFields");
        }
        if strategy::tracks_generation(ri) {
            meta_mut(&mut obj).insert("generation".into(), json!(1));
        } else {
            meta_mut(&mut obj).remove("generation");
        }
        if ri.status && !ri.is("", "Pod") && !ri.is("", "Node") && !ri.is("", "PersistentVolume") {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        if ri.is("", "Pod") {
            strategy::admit_default_tolerations(&mut obj, &self.cfg.strategy);
            self.admit_priority(&mut obj).await?;
            self.admit_runtime_class(&mut obj).await?;
            self.admit_service_account(ns.unwrap_or_default(), &mut obj)
                .await?;
        }
        // A Service is still changed after admission (its IPs and ports are allocated), so
        // it stays a value; everything else is encoded once, straight from the typed object.
        let is_service = ri.is("", "Service");
        let (warnings, json) =
            self.admit(ri, &mut obj, None, opts.field_validation, !is_service)?;
        let name = name_of(&obj).to_string();
        self.check_namespace(ri, ns, &name).await?;
        let key = Self::key(ri, ns, &name);
        let _svc = if is_service {
            let g = self.service_lock.lock().await;
            self.allocate_service(ri, &mut obj, None).await?;
            Some(g)
        } else {
            None
        };
        if opts.dry_run {
            if self.store.get(&key).await?.is_some() {
                return Err(ApiError::already_exists(ri, &name));
            }
            return Ok(Written {
                object: match json {
                    Some(j) => WrittenObject::Json(j),
                    None => WrittenObject::Value(obj),
                },
                warnings,
                created: true,
            });
        }
        let bytes = json.unwrap_or_else(|| encode(&obj));
        let kv = match self.store.create(&key, bytes).await {
            Ok(kv) => kv,
            Err(StoreError::AlreadyExists(_)) => return Err(ApiError::already_exists(ri, &name)),
            Err(e) => return Err(e.into()),
        };
        tracing::debug!(
            kind = ri.kind,
            namespace = ns,
            name,
            rv = kv.mod_revision,
            "created"
        );
        Ok(Written {
            object: WrittenObject::Json(raw_with_rv(&kv)?),
            warnings,
            created: true,
        })
    }

    async fn allocate_service(
        &self,
        ri: &ResourceInfo,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> ApiResult<()> {
        let prefix = ri.storage_prefix();
        let me = old.and_then(|o| meta(o)["uid"].as_str()).map(String::from);
        let all = self.store.range(&prefix, None, 0).await?;
        let mut others = Vec::new();
        for kv in &all.items {
            let o = decode(kv)?;
            if me.is_some() && meta(&o)["uid"].as_str() == me.as_deref() {
                continue;
            }
            others.push(o);
        }
        alloc::allocate(
            obj,
            old,
            &others,
            &alloc::Ranges {
                v4: self.cfg.service_cidr,
                v6: self.cfg.service_cidr_v6,
            },
            self.cfg.strategy.node_port_range,
        )
        .map_err(|errs| ApiError::invalid(ri, name_of(obj), &errs))
    }

    /// Lists objects, parsed (each stored object is decoded once).
    pub async fn list(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        opts: &ListOpts,
    ) -> ApiResult<(Vec<Value>, Revision, Option<Continue>)> {
        self.scan(ri, ns, opts, |kv, parsed| match parsed {
            Some(v) => Ok(v),
            None => decode(kv),
        })
        .await
    }

    /// Lists objects as JSON bytes with their resourceVersion; parses only to apply selectors.
    pub async fn list_raw(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        opts: &ListOpts,
    ) -> ApiResult<(Vec<Vec<u8>>, Revision, Option<Continue>)> {
        self.scan(ri, ns, opts, |kv, _| raw_with_rv(kv)).await
    }

    /// The paging, selector and continuation logic of a list. `make` turns a matching key into
    /// an item; it gets the decoded object when selectors already needed it.
    async fn scan<T>(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        opts: &ListOpts,
        make: impl Fn(&KeyValue, Option<Value>) -> ApiResult<T>,
    ) -> ApiResult<(Vec<T>, Revision, Option<Continue>)> {
        let prefix = Self::collection_prefix(ri, ns);
        let (mut start, mut token_rv) = (None, None);
        if let Some(tok) = &opts.continue_token {
            let bad = || {
                ApiError::bad_request(
                    "continue key is not valid: the continue token could not be decoded",
                )
            };
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(tok)
                .map_err(|_| bad())?;
            let t: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
            if !t.start.starts_with(&prefix) {
                return Err(bad());
            }
            start = Some(t.start);
            // A token's revision is the first page's: the next pages are read at it, as one
            // consistent list; -1 (given out when that revision is compacted) reads the latest.
            token_rv = Some(t.rv).filter(|rv| *rv > 0);
        }
        let filtering = !opts.labels.is_empty() || !opts.fields.is_empty();
        let mut items = Vec::new();
        let mut revision = None;
        let mut next = None;
        let mut remaining = None;
        loop {
            let want = if opts.limit == 0 {
                0
            } else if filtering {
                opts.limit.max(256)
            } else {
                opts.limit - items.len()
            };
            let page = match token_rv {
                Some(at) => self
                    .store
                    .range_at(&prefix, start.as_deref(), want, at)
                    .await
                    .map_err(|e| match e {
                        StoreError::Compacted { .. } => expired_continue(start.as_deref()),
                        e => e.into(),
                    })?,
                None => self.store.range(&prefix, start.as_deref(), want).await?,
            };
            revision.get_or_insert(page.revision);
            let mut last_key = None;
            for kv in &page.items {
                last_key = Some(kv.key.clone());
                let parsed = if filtering {
                    let o = decode(kv)?;
                    let keep = opts.labels.matches_object(&o)
                        && opts.fields.matches(&|f| strategy::field_value(&o, f));
                    if !keep {
                        continue;
                    }
                    Some(o)
                } else {
                    None
                };
                items.push(make(kv, parsed)?);
                if opts.limit > 0 && items.len() == opts.limit {
                    break;
                }
            }
            let full = opts.limit > 0 && items.len() == opts.limit;
            let consumed_all = last_key.as_ref() == page.items.last().map(|k| &k.key);
            if full {
                let more = page.more || !consumed_all;
                if more {
                    next = last_key;
                    // Unfiltered, the page ended where the list did: the rest is the store's
                    // count. A selector would need every remaining object read: upstream
                    // leaves the count out then, and so does kite.
                    remaining = (!filtering && consumed_all).then_some(page.remaining);
                }
                break;
            }
            if !page.more {
                break;
            }
            start = last_key;
        }
        let rev = token_rv.unwrap_or(revision.unwrap_or(0));
        let cont = next.map(|start| Continue {
            token: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&ContinueToken { rv: rev, start }).unwrap()),
            remaining,
        });
        Ok((items, rev, cont))
    }

    /// Replaces an object (PUT), or its status.
    pub async fn update(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        part: Part,
        opts: &WriteOpts,
    ) -> ApiResult<Written> {
        self.check_identity(ri, ns, &mut obj)?;
        let body_name = name_of(&obj);
        if body_name.is_empty() {
            meta_mut(&mut obj).insert("name".into(), json!(name));
        } else if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let (old, old_rev) = self.get(ri, ns, name).await?;
        let precondition = meta(&obj)["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from);
        if let Some(p) = &precondition {
            if p.parse::<Revision>().ok() != Some(old_rev) {
                return Err(ApiError::stale(ri, name));
            }
        }
        self.write_update(ri, ns, name, obj, old, old_rev, part, opts)
            .await
    }

    /// The common tail of update and patch: `obj` is the wanted object, `old` what is stored.
    #[allow(clippy::too_many_arguments)]
    async fn write_update(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        old: Value,
        old_rev: Revision,
        part: Part,
        opts: &WriteOpts,
    ) -> ApiResult<Written> {
        if part == Part::Resize {
            // Upstream's podResizeStrategy: the stored pod with the new resources, checked
            // as a resize, then as a pod (not as an ordinary update, which refuses them).
            let mut next = kite_api::resize::merge(&obj, &old);
            strategy::default(ri, &mut next);
            let errs = kite_api::resize::validate(&next, &old);
            if !errs.is_empty() {
                return Err(ApiError::invalid(ri, name, &errs));
            }
            obj = next;
        } else if part == Part::EphemeralContainers {
            // Upstream's podEphemeralContainersStrategy: the stored pod with the new list.
            let list = obj["spec"]["ephemeralContainers"].clone();
            let errs = strategy::validate_ephemeral_update(&list, &old);
            if !errs.is_empty() {
                return Err(ApiError::invalid(ri, name, &errs));
            }
            let mut next = old.clone();
            if list.is_null() {
                next["spec"]
                    .as_object_mut()
                    .map(|s| s.remove("ephemeralContainers"));
            } else {
                next["spec"]["ephemeralContainers"] = list;
            }
            obj = next;
        } else if part == Part::Status {
            // A status write changes the status and, as upstream's status strategies allow,
            // the metadata (what of it per kind: `strategy::status_meta`); never the spec.
            let status = obj
                .get_mut("status")
                .map(Value::take)
                .unwrap_or(Value::Null);
            let mut new_meta = obj.get_mut("metadata").map(Value::take);
            let om = meta(&old);
            match strategy::status_meta(ri) {
                StatusMeta::Stored => new_meta = None,
                StatusMeta::Reset(keys) => {
                    if let Some(m) = new_meta.as_mut().and_then(Value::as_object_mut) {
                        for k in keys {
                            match om.get(*k) {
                                Some(v) => m.insert((*k).into(), v.clone()),
                                None => m.remove(*k),
                            };
                        }
                    }
                }
            }
            // The stored object with the new status (and metadata), in the stored key
            // order; the old status is not copied only to be replaced.
            let mut base = Map::new();
            for (k, v) in old.as_object().into_iter().flatten() {
                let v = match k.as_str() {
                    "status" => Value::Null,
                    "metadata" if new_meta.is_some() => Value::Null,
                    _ => v.clone(),
                };
                base.insert(k.clone(), v);
            }
            obj = Value::Object(base);
            if let Some(m) = new_meta.filter(Value::is_object) {
                obj["metadata"] = m;
            } else if obj["metadata"].is_null() {
                obj["metadata"] = old["metadata"].clone();
            }
            obj["status"] = status;
        } else if ri.status {
            if ri.is("", "Pod") {
                // Ephemeral containers change only through their subresource.
                match old["spec"].get("ephemeralContainers") {
                    Some(e) => obj["spec"]["ephemeralContainers"] = e.clone(),
                    None => {
                        obj["spec"]
                            .as_object_mut()
                            .map(|s| s.remove("ephemeralContainers"));
                    }
                }
            }
            match old.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        {
            let om = meta(&old);
            let m = meta_mut(&mut obj);
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
            ] {
                match om.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            m.insert("name".into(), json!(name));
            m.remove("resourceVersion");
            m.remove("managedFields");
            m.remove("selfLink");
        }
        // A resize was checked against the stored pod above; here it is checked as a pod.
        let checked_against = (part != Part::Resize).then_some(&old);
        let (warnings, _) =
            self.admit(ri, &mut obj, checked_against, opts.field_validation, false)?;
        if meta(&old)["deletionTimestamp"].is_string() {
            // Finalizers may only be removed from an object being deleted.
            let newf = finalizers(&obj);
            let oldf = finalizers(&old);
            if newf.iter().any(|f| !oldf.contains(f)) {
                return Err(ApiError::invalid(
                    ri,
                    name,
                    &[FieldError::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        if part == Part::Main {
            strategy::prepare_for_update(ri, &mut obj, &old);
        }
        if strategy::bumps_generation(ri, &obj, &old) {
            let g = meta(&old)["generation"].as_i64().unwrap_or(0) + 1;
            meta_mut(&mut obj).insert("generation".into(), json!(g));
        }
        let _svc = if ri.is("", "Service") && part == Part::Main {
            let g = self.service_lock.lock().await;
            self.allocate_service(ri, &mut obj, Some(&old)).await?;
            Some(g)
        } else {
            None
        };
        if same_but_resource_version(&obj, &old) {
            // Nothing changed: no write, the resourceVersion stays.
            return Ok(Written {
                object: WrittenObject::Value(old),
                warnings,
                created: false,
            });
        }
        let key = Self::key(ri, ns, name);
        if opts.dry_run {
            meta_mut(&mut obj).insert("resourceVersion".into(), json!(old_rev.to_string()));
            return Ok(Written {
                object: WrittenObject::Value(obj),
                warnings,
                created: false,
            });
        }
        // An object being deleted goes when this write removed its last finalizer and its
        // grace period is over (upstream's shouldDeleteDuringUpdate): a pod in graceful
        // deletion stays, whatever is written to it, until its kubelet deletes it.
        // A namespace goes once neither kind of finalizer is left (namespaces/finalize).
        let deleting = meta(&obj)["deletionTimestamp"].is_string();
        let goes = if ri.is("", "Namespace") {
            deleting && finalizers(&obj).is_empty() && !self.namespace_finalizers_pending(ri, &obj)
        } else {
            deleting
                && finalizers(&obj).is_empty()
                && !finalizers(&old).is_empty()
                && meta(&obj)["deletionGracePeriodSeconds"]
                    .as_i64()
                    .unwrap_or(0)
                    == 0
        };
        if goes {
            return match self.store.delete(&key, Some(old_rev)).await {
                Ok(_) => Ok(Written {
                    object: WrittenObject::Value(obj),
                    warnings,
                    created: false,
                }),
                Err(StoreError::Conflict { .. }) => Err(ApiError::stale(ri, name)),
                Err(StoreError::NotFound(_)) => Err(ApiError::not_found(ri, name)),
                Err(e) => Err(e.into()),
            };
        }
        match self.store.update(&key, encode(&obj), old_rev).await {
            Ok(kv) => {
                meta_mut(&mut obj)
                    .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                Ok(Written {
                    object: WrittenObject::Value(obj),
                    warnings,
                    created: false,
                })
            }
            Err(StoreError::Conflict { .. }) => Err(ApiError::stale(ri, name)),
            Err(StoreError::NotFound(_)) => Err(ApiError::not_found(ri, name)),
            Err(e) => Err(e.into()),
        }
    }

    fn namespace_finalizers_pending(&self, ri: &ResourceInfo, obj: &Value) -> bool {
        ri.is("", "Namespace")
            && obj["spec"]["finalizers"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        patch_body: &Value,
        ty: PatchType,
        part: Part,
        opts: &WriteOpts,
    ) -> ApiResult<Written> {
        if ty == PatchType::Apply {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "server-side apply is not supported by kite yet; use client-side `kubectl apply` (without --server-side)",
            ));
        }
        // Retry on a concurrent write, as upstream's GuaranteedUpdate does, unless the patch
        // itself names a resourceVersion (then a conflict is the caller's to see).
        for _ in 0..8 {
            let (old, old_rev) = self.get(ri, ns, name).await?;
            let patched = patch::apply(&old, patch_body, ty, ri.kind).map_err(|e| {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string())
            })?;
            let explicit_rv =
                patched["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"];
            if explicit_rv {
                let want = patched["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                if want.parse::<Revision>().ok() != Some(old_rev) {
                    return Err(ApiError::stale(ri, name));
                }
            }
            if patched["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n != name)
            {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    patched["metadata"]["name"].as_str().unwrap_or_default()
                )));
            }
            let mut patched = patched;
            self.check_identity(ri, ns, &mut patched)?;
            match self
                .write_update(ri, ns, name, patched, old, old_rev, part, opts)
                .await
            {
                Err(e) if e.reason == "Conflict" && !explicit_rv => continue,
                other => return other,
            }
        }
        Err(ApiError::stale(ri, name))
    }

    /// `pods/binding`, as upstream's BindingREST: in one compare-and-swap write, sets
    /// `spec.nodeName`, merges the binding's labels and annotations into the pod's and sets
    /// the `PodScheduled` condition to True. The binding's uid and resourceVersion, when
    /// given, are preconditions; without a resourceVersion a concurrent write is retried.
    pub async fn bind(
        &self,
        pods: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        node: &str,
        binding_meta: &Value,
    ) -> ApiResult<()> {
        let want_uid = binding_meta["uid"].as_str().filter(|s| !s.is_empty());
        let want_rv = binding_meta["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty());
        for _ in 0..8 {
            let (mut pod, rev) = self.get(pods, ns, name).await?;
            check_preconditions(pods, name, &pod, rev, want_uid, want_rv)?;
            if meta(&pod)["deletionTimestamp"].is_string() {
                return Err(ApiError::conflict(
                    pods,
                    name,
                    &format!("pod {name} is being deleted, cannot be assigned to a host"),
                ));
            }
            if let Some(on) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                return Err(ApiError::conflict(
                    pods,
                    name,
                    &format!("pod {name} is already assigned to node \"{on}\""),
                ));
            }
            pod["spec"]["nodeName"] = json!(node);
            for field in ["labels", "annotations"] {
                if let Some(add) = binding_meta[field].as_object() {
                    let m = meta_mut(&mut pod);
                    let into = m.entry(field).or_insert_with(|| json!({}));
                    if !into.is_object() {
                        *into = json!({});
                    }
                    let into = into.as_object_mut().expect("made an object above");
                    for (k, v) in add {
                        into.insert(k.clone(), v.clone());
                    }
                }
            }
            set_condition(&mut pod, "PodScheduled", "True");
            meta_mut(&mut pod).remove("resourceVersion");
            match self
                .store
                .update(&Self::key(pods, ns, name), encode(&pod), rev)
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) if want_rv.is_none() => continue,
                Err(StoreError::Conflict { .. }) => return Err(ApiError::stale(pods, name)),
                Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(pods, name)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::stale(pods, name))
    }

    pub async fn delete(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOpts,
    ) -> ApiResult<Value> {
        for _ in 0..8 {
            let (old, old_rev) = self.get(ri, ns, name).await?;
            check_preconditions(
                ri,
                name,
                &old,
                old_rev,
                opts.precondition_uid.as_deref(),
                opts.precondition_rv.as_deref(),
            )?;
            if ri.is("", "Namespace") && ["default", "kube-system", "kube-public"].contains(&name) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!(
                        "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
                    ),
                ));
            }
            let mut obj = old.clone();
            let mut fins = finalizers(&obj);
            match opts.propagation.as_deref() {
                Some("Orphan") if !fins.contains(&"orphan".to_string()) => {
                    fins.push("orphan".into())
                }
                Some("Foreground") if !fins.contains(&"foregroundDeletion".to_string()) => {
                    fins.push("foregroundDeletion".into())
                }
                None | Some("Orphan") | Some("Foreground") | Some("Background") => {}
                Some(other) => {
                    return Err(ApiError::invalid(
                        ri,
                        name,
                        &[FieldError::not_supported(
                            "propagationPolicy",
                            &json!(other),
                            &["Foreground", "Background", "Orphan"],
                        )],
                    ))
                }
            }
            // Pods on a node end gracefully: the kubelet stops them, then removes the object.
            let grace = if ri.is("", "Pod") && obj["spec"]["nodeName"].is_string() {
                opts.grace_period
                    .or(obj["spec"]["terminationGracePeriodSeconds"].as_i64())
                    .unwrap_or(30)
            } else {
                0
            };
            let ns_pending = self.namespace_finalizers_pending(ri, &obj);
            let key = Self::key(ri, ns, name);
            if fins.is_empty() && grace == 0 && !ns_pending {
                if opts.dry_run {
                    return Ok(old);
                }
                match self.store.delete(&key, Some(old_rev)).await {
                    Ok(_) => return Ok(old),
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(ri, name)),
                    Err(e) => return Err(e.into()),
                }
            }
            let already = meta(&obj)["deletionTimestamp"].is_string();
            {
                let m = meta_mut(&mut obj);
                m.insert("finalizers".into(), json!(fins));
                if fins_empty_after(&m["finalizers"]) {
                    m.remove("finalizers");
                }
                let current_grace = m.get("deletionGracePeriodSeconds").and_then(Value::as_i64);
                if !already || current_grace.is_some_and(|g| grace < g) {
                    let when = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
                    m.insert(
                        "deletionTimestamp".into(),
                        json!(when
                            .round(jiff::Unit::Second)
                            .unwrap_or(when)
                            .strftime("%Y-%m-%dT%H:%M:%SZ")
                            .to_string()),
                    );
                    m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                    // A pod's graceful deletion is a change its kubelet acts on: its
                    // generation moves, as upstream's pod strategy makes it.
                    if ri.is("", "Pod") {
                        let g = m.get("generation").and_then(Value::as_i64).unwrap_or(0);
                        m.insert("generation".into(), json!(g + 1));
                    }
                }
                m.remove("resourceVersion");
            }
            if ri.is("", "Namespace") {
                obj["status"]["phase"] = json!("Terminating");
            }
            if opts.dry_run {
                return Ok(obj);
            }
            match self.store.update(&key, encode(&obj), old_rev).await {
                Ok(kv) => return decode(&kv),
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(ri, name)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::stale(ri, name))
    }
}

fn fins_empty_after(v: &Value) -> bool {
    v.as_array().is_some_and(|a| a.is_empty())
}
