//! The three patch types the API accepts: JSON patch (RFC 6902), JSON merge patch
//! (RFC 7386) and strategic merge patch, which merges lists of built-in types by their merge
//! keys and honours the directives kubectl's three-way merge emits (`$patch`, `$retainKeys`,
//! `$setElementOrder/<field>`, `$deleteFromPrimitiveList/<field>`).
//!
//! k8s-openapi does not carry the `patchMergeKey`/`patchStrategy` tags, so the list strategies
//! of the built-in types are in [`list_strategy`], keyed by field name and the kind of object
//! that holds the list.

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatchError {
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    /// Server-side apply (not supported yet; answered 415 by the API server).
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Applies a patch of type `ty` to `doc`. `kind` is the object's kind (for strategic merge).
pub fn apply(doc: &Value, patch: &Value, ty: PatchType, kind: &str) -> Result<Value, PatchError> {
    match ty {
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| PatchError::Invalid(format!("invalid JSON patch: {e}")))?;
            let mut out = doc.clone();
            json_patch::patch(&mut out, &p).map_err(|e| PatchError::Invalid(e.to_string()))?;
            Ok(out)
        }
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(PatchError::Invalid(
                    "merge patch must be a JSON object".into(),
                ));
            }
            let mut out = doc.clone();
            json_patch::merge(&mut out, patch);
            Ok(out)
        }
        PatchType::Strategic => {
            let p = patch.as_object().ok_or_else(|| {
                PatchError::Invalid("strategic merge patch must be a JSON object".into())
            })?;
            let mut out = doc.clone();
            if !out.is_object() {
                out = Value::Object(Map::new());
            }
            merge_map(out.as_object_mut().unwrap(), p, &Ctx::root(kind))?;
            Ok(out)
        }
        PatchType::Apply => Err(PatchError::Invalid(
            "server-side apply is not supported yet".into(),
        )),
    }
}

/// Where in an object a map sits, enough to find list strategies.
#[derive(Clone)]
struct Ctx<'a> {
    kind: &'a str,
    /// Field names from the root to here (list items add no entry).
    path: Vec<String>,
}

impl<'a> Ctx<'a> {
    fn root(kind: &'a str) -> Self {
        Ctx {
            kind,
            path: Vec::new(),
        }
    }
    fn child(&self, field: &str) -> Self {
        let mut c = self.clone();
        c.path.push(field.to_string());
        c
    }
}

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the whole list.
    Replace,
    /// Items merge by the named key.
    MergeKey(&'static str),
    /// A list of scalars merged as a set.
    MergePrimitive,
}

/// The list strategy of `field` found at `path` in an object of `kind`.
pub fn list_strategy(kind: &str, path: &[String], field: &str) -> ListStrategy {
    use ListStrategy::*;
    let parent = path.last().map(String::as_str).unwrap_or("");
    let in_container = path
        .iter()
        .any(|p| p == "containers" || p == "initContainers" || p == "ephemeralContainers");
    match field {
        "containers" | "initContainers" | "ephemeralContainers" => MergeKey("name"),
        "env" | "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates" => {
            MergeKey("name")
        }
        "volumeMounts" => MergeKey("mountPath"),
        "volumeDevices" => MergeKey("devicePath"),
        "hostAliases" => MergeKey("ip"),
        "ports" if in_container => MergeKey("containerPort"),
        "ports" if kind == "Service" && parent == "spec" => MergeKey("port"),
        "conditions" => MergeKey("type"),
        "ownerReferences" => MergeKey("uid"),
        "finalizers" if parent == "metadata" => MergePrimitive,
        "topologySpreadConstraints" => MergeKey("topologyKey"),
        "taints" if kind == "Node" => MergeKey("key"),
        "addresses" if kind == "Node" => MergeKey("type"),
        "secrets" if kind == "ServiceAccount" => MergeKey("name"),
        _ => Replace,
    }
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const ORDER_PREFIX: &str = "$setElementOrder/";
const DELETE_PRIMITIVE_PREFIX: &str = "$deleteFromPrimitiveList/";

fn merge_map(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    ctx: &Ctx,
) -> Result<(), PatchError> {
    match patch.get(DIRECTIVE).and_then(Value::as_str) {
        Some("replace") => {
            let mut p = patch.clone();
            p.remove(DIRECTIVE);
            strip_directives_map(&mut p);
            *target = p;
            return Ok(());
        }
        Some("delete") => {
            target.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchError::Invalid(format!(
                "unknown patch type: {other:?} in map"
            )))
        }
    }
    if let Some(keys) = patch.get(RETAIN_KEYS) {
        let keys: Vec<&str> = keys
            .as_array()
            .ok_or_else(|| PatchError::Invalid("$retainKeys must be a list".into()))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        target.retain(|k, _| keys.contains(&k.as_str()));
    }
    for (k, pv) in patch {
        if k == DIRECTIVE || k == RETAIN_KEYS {
            continue;
        }
        if let Some(field) = k.strip_prefix(DELETE_PRIMITIVE_PREFIX) {
            if let (Some(list), Some(del)) = (
                target.get_mut(field).and_then(Value::as_array_mut),
                pv.as_array(),
            ) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with(ORDER_PREFIX) {
            continue;
        }
        if pv.is_null() {
            target.remove(k);
            continue;
        }
        let child = ctx.child(k);
        match pv {
            Value::Object(pm) => {
                let existing = target.entry(k.clone()).or_insert(Value::Null);
                if !existing.is_object() {
                    *existing = Value::Object(Map::new());
                }
                merge_map(existing.as_object_mut().unwrap(), pm, &child)?;
            }
            Value::Array(pl) => {
                let strategy = list_strategy(ctx.kind, &ctx.path, k);
                let existing = target.entry(k.clone()).or_insert(Value::Null);
                if !existing.is_array() {
                    *existing = Value::Array(Vec::new());
                }
                merge_list(existing.as_array_mut().unwrap(), pl, strategy, &child)?;
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
    // Element order last, once the lists hold their merged items.
    for (k, order) in patch {
        if let Some(field) = k.strip_prefix(ORDER_PREFIX) {
            let strategy = list_strategy(ctx.kind, &ctx.path, field);
            if let (Some(list), Some(order)) = (
                target.get_mut(field).and_then(Value::as_array_mut),
                order.as_array(),
            ) {
                set_order(list, order, strategy);
            }
        }
    }
    Ok(())
}

fn item_key(item: &Value, strategy: ListStrategy) -> Option<&Value> {
    match strategy {
        ListStrategy::MergeKey(k) => item.get(k),
        ListStrategy::MergePrimitive => Some(item),
        ListStrategy::Replace => None,
    }
}

fn merge_list(
    target: &mut Vec<Value>,
    patch: &[Value],
    strategy: ListStrategy,
    ctx: &Ctx,
) -> Result<(), PatchError> {
    // A `{"$patch": "replace"}` item means: the rest of the patch list is the whole list.
    let replace = patch
        .iter()
        .any(|i| i.get(DIRECTIVE).and_then(Value::as_str) == Some("replace"));
    if strategy == ListStrategy::Replace || replace {
        *target = patch
            .iter()
            .filter(|i| i.get(DIRECTIVE).is_none())
            .cloned()
            .map(|mut v| {
                strip_directives(&mut v);
                v
            })
            .collect();
        return Ok(());
    }
    let server_order: Vec<Value> = target
        .iter()
        .filter_map(|t| item_key(t, strategy).cloned())
        .collect();
    for pi in patch {
        let key = match item_key(pi, strategy) {
            Some(k) => k.clone(),
            None => {
                return Err(PatchError::Invalid(format!(
                    "map: {pi} does not contain declared merge key: {}",
                    match strategy {
                        ListStrategy::MergeKey(k) => k,
                        _ => "",
                    }
                )))
            }
        };
        let pos = target
            .iter()
            .position(|t| item_key(t, strategy) == Some(&key));
        let delete = pi.get(DIRECTIVE).and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                target.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                if let (Some(tm), Some(pm)) = (target[i].as_object_mut(), pi.as_object()) {
                    merge_map(tm, pm, ctx)?;
                }
            }
            (None, false) => {
                let mut v = pi.clone();
                strip_directives(&mut v);
                target.push(v);
            }
        }
    }
    normalize_order(target, patch, &server_order, strategy);
    Ok(())
}

/// Upstream's `normalizeElementOrder`: the items the patch names, in the patch's order, and
/// the server's other items, in the server's order, interleaved where the server's order
/// says so; a new item comes before a server-only one (so a container added by a patch is
/// the first).
fn normalize_order(
    list: &mut Vec<Value>,
    patch: &[Value],
    server_order: &[Value],
    strategy: ListStrategy,
) {
    let key_pos = |keys: &[Value], v: &Value| {
        let k = item_key(v, strategy)?;
        keys.iter().position(|x| x == k)
    };
    let patch_keys: Vec<Value> = patch
        .iter()
        .filter(|p| p.get(DIRECTIVE).is_none())
        .filter_map(|p| item_key(p, strategy).cloned())
        .collect();
    let (mut named, server_only): (Vec<Value>, Vec<Value>) = list
        .drain(..)
        .partition(|v| key_pos(&patch_keys, v).is_some());
    named.sort_by_key(|v| key_pos(&patch_keys, v));
    let (mut left, mut right) = (
        server_only.into_iter().peekable(),
        named.into_iter().peekable(),
    );
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => matches!(
                (key_pos(server_order, l), key_pos(server_order, r)),
                (Some(a), Some(b)) if a < b
            ),
        };
        let next = if take_left { left.next() } else { right.next() };
        list.extend(next);
    }
}

/// Orders `list` as `order` names its items; items not named keep their relative order after
/// the named ones that precede them in the original list.
fn set_order(list: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let pos_in_order = |v: &Value| {
        let k = item_key(v, strategy)?;
        order
            .iter()
            .position(|o| item_key(o, strategy).or(Some(o)) == Some(k))
    };
    let mut named: Vec<(usize, Value)> = Vec::new();
    let mut rest: Vec<Value> = Vec::new();
    for v in list.drain(..) {
        match pos_in_order(&v) {
            Some(p) => named.push((p, v)),
            None => rest.push(v),
        }
    }
    named.sort_by_key(|(p, _)| *p);
    list.extend(named.into_iter().map(|(_, v)| v));
    list.extend(rest);
}

fn strip_directives_map(m: &mut Map<String, Value>) {
    m.retain(|k, _| {
        k != DIRECTIVE
            && k != RETAIN_KEYS
            && !k.starts_with(ORDER_PREFIX)
            && !k.starts_with(DELETE_PRIMITIVE_PREFIX)
    });
    for v in m.values_mut() {
        strip_directives(v);
    }
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => strip_directives_map(m),
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(doc: Value, patch: Value, kind: &str) -> Value {
        apply(&doc, &patch, PatchType::Strategic, kind).unwrap()
    }

    #[test]
    fn containers_merge_by_name_and_fields_delete_by_null() {
        let doc = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "x:1", "args": ["1"]},
            {"name": "b", "image": "y:1"}
        ]}}}});
        let out = smp(
            doc,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "a", "image": "x:2", "args": null}
            ]}}}}),
            "Deployment",
        );
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().unwrap().len(), 2);
        assert_eq!(cs[0], json!({"name": "a", "image": "x:2"}));
    }

    #[test]
    fn list_order_as_upstream() {
        let doc = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}});
        let names = |v: &Value| {
            v["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        // A new item goes first; changed ones keep the server's order (kube-apiserver v1.36
        // answers "n a b" and, for [b, m] on "n a b", "n a b m").
        let out = smp(
            doc.clone(),
            json!({"spec": {"containers": [{"name": "n", "image": "2"}]}}),
            "Pod",
        );
        assert_eq!(names(&out), ["n", "a", "b"]);
        let out = smp(
            doc.clone(),
            json!({"spec": {"containers": [{"name": "b", "image": "2"}]}}),
            "Pod",
        );
        assert_eq!(names(&out), ["a", "b"]);
        let out = smp(
            doc,
            json!({"spec": {"containers": [{"name": "b", "image": "2"}, {"name": "n", "image": "2"}]}}),
            "Pod",
        );
        assert_eq!(names(&out), ["a", "b", "n"]);
    }

    #[test]
    fn directives() {
        let doc = json!({"metadata": {"finalizers": ["a", "b"]},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let out = smp(
            doc,
            json!({
                "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["z"]},
                "spec": {
                    "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                    "containers": [{"name": "b", "$patch": "delete"}],
                    "strategy": {"$retainKeys": ["type"], "type": "Recreate"}
                }
            }),
            "Deployment",
        );
        // As kube-apiserver v1.36 answers: the patch's new item before the server's.
        assert_eq!(out["metadata"]["finalizers"], json!(["z", "b"]));
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c"}, {"name": "a"}])
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn service_ports_merge_by_port_and_plain_lists_replace() {
        let doc = json!({"spec": {"ports": [{"port": 80, "nodePort": 30007}],
                                  "externalIPs": ["1.1.1.1"]}});
        let out = smp(
            doc,
            json!({"spec": {"ports": [{"port": 80, "name": "http"}], "externalIPs": ["2.2.2.2"]}}),
            "Service",
        );
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "nodePort": 30007, "name": "http"}])
        );
        assert_eq!(out["spec"]["externalIPs"], json!(["2.2.2.2"]));
    }

    #[test]
    fn json_and_merge_patch() {
        let doc = json!({"a": 1, "b": {"c": 2}});
        let out = apply(
            &doc,
            &json!([{"op": "replace", "path": "/a", "value": 5}]),
            PatchType::Json,
            "X",
        )
        .unwrap();
        assert_eq!(out["a"], 5);
        let out = apply(&doc, &json!({"b": {"c": null}}), PatchType::Merge, "X").unwrap();
        assert_eq!(out, json!({"a": 1, "b": {}}));
        assert!(apply(
            &doc,
            &json!([{"op": "test", "path": "/a", "value": 9}]),
            PatchType::Json,
            "X"
        )
        .is_err());
        assert!(apply(
            &doc,
            &json!({"spec": {"containers": [{"image": "x"}]}}),
            PatchType::Strategic,
            "Pod"
        )
        .is_err());
    }
}
