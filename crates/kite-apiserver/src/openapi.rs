//! OpenAPI v2 and v3 documents, generated from the k8s-openapi types' JSON schemas (schemars),
//! never written by hand. kubectl needs them: `explain` walks the schemas, `apply` and
//! `create` check that PATCH accepts `fieldValidation` (then leave validation to the server)
//! and read the `x-kubernetes-patch-*` extensions to build strategic merge patches.
//!
//! Documents are built on first request per group/version and cached.

use kite_api::registry::{Registry, ResourceInfo, Verbs};
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// (definition, property) → (patch strategy, merge key), as upstream's Go struct tags say.
const PATCH_META: &[(&str, &str, &str, &str)] = &[
    ("io.k8s.api.core.v1.PodSpec", "containers", "merge", "name"),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        "merge",
        "name",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        "merge",
        "name",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        "merge,retainKeys",
        "name",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        "merge",
        "name",
    ),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", "merge", "ip"),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        "merge",
        "topologyKey",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        "merge,retainKeys",
        "name",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        "merge",
        "name",
    ),
    ("io.k8s.api.core.v1.Container", "env", "merge", "name"),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        "merge",
        "containerPort",
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        "merge",
        "mountPath",
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        "merge",
        "devicePath",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        "merge",
        "name",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        "merge",
        "containerPort",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        "merge",
        "mountPath",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        "merge",
        "devicePath",
    ),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", "merge", "port"),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        "merge",
        "type",
    ),
    (
        "io.k8s.api.core.v1.ServiceAccount",
        "secrets",
        "merge",
        "name",
    ),
    (
        "io.k8s.api.apps.v1.DeploymentSpec",
        "strategy",
        "retainKeys",
        "",
    ),
    (
        "io.k8s.api.apps.v1.DaemonSetSpec",
        "updateStrategy",
        "retainKeys",
        "",
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        "merge",
        "uid",
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        "merge",
        "",
    ),
];

fn gvk(ri: &ResourceInfo) -> Value {
    json!({"group": ri.group, "version": ri.version, "kind": ri.kind})
}

/// Adds GVK and patch extensions to generated definitions.
fn annotate(defs: &mut Map<String, Value>, resources: &[&ResourceInfo]) {
    for ri in resources {
        if let Some(d) = defs.get_mut(&ri.definition) {
            d["x-kubernetes-group-version-kind"] = json!([gvk(ri)]);
        }
    }
    for (name, def) in defs.iter_mut() {
        let Some(props) = def.get_mut("properties").and_then(Value::as_object_mut) else {
            continue;
        };
        for (prop, schema) in props.iter_mut() {
            if prop == "conditions" && schema["type"] == "array" {
                schema["x-kubernetes-patch-strategy"] = json!("merge");
                schema["x-kubernetes-patch-merge-key"] = json!("type");
            }
            for (d, p, strategy, key) in PATCH_META {
                if d == name && p == prop {
                    schema["x-kubernetes-patch-strategy"] = json!(strategy);
                    if !key.is_empty() {
                        schema["x-kubernetes-patch-merge-key"] = json!(key);
                    }
                }
            }
        }
    }
}

fn param(name: &str, location: &str, v3: bool) -> Value {
    if v3 {
        json!({"name": name, "in": location, "required": location == "path", "schema": {"type": "string", "uniqueItems": true}})
    } else {
        json!({"name": name, "in": location, "required": location == "path", "type": "string", "uniqueItems": true})
    }
}

fn operation(
    ri: &ResourceInfo,
    action: &str,
    params: &[&str],
    namespaced_path: bool,
    named: bool,
    v3: bool,
    schema_ref: &str,
) -> Value {
    let mut ps: Vec<Value> = params.iter().map(|p| param(p, "query", v3)).collect();
    if named {
        ps.push(param("name", "path", v3));
    }
    if namespaced_path {
        ps.push(param("namespace", "path", v3));
    }
    let response = if v3 {
        json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}})
    } else {
        json!({"description": "OK", "schema": {"$ref": schema_ref}})
    };
    let mut op = json!({
        "operationId": format!("{action}{}", ri.kind),
        "parameters": ps,
        "responses": {"200": response},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(ri),
    });
    if v3 && action == "patch" {
        let body = json!({"schema": {"type": "object"}});
        op["requestBody"] = json!({"content": {
            "application/json-patch+json": body,
            "application/merge-patch+json": body,
            "application/strategic-merge-patch+json": body,
            "application/apply-patch+yaml": body,
        }, "required": true});
    }
    op
}

fn paths(resources: &[&ResourceInfo], v3: bool, defs_prefix: &str) -> Map<String, Value> {
    const WRITE: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "pretty"];
    let mut out = Map::new();
    for ri in resources {
        let schema_ref = format!("{defs_prefix}{}", ri.definition);
        let base = if ri.namespaced {
            format!("{}/namespaces/{{namespace}}/{}", ri.prefix(), ri.plural)
        } else {
            format!("{}/{}", ri.prefix(), ri.plural)
        };
        let ns = ri.namespaced;
        let mut coll = Map::new();
        let mut item = Map::new();
        match ri.verbs {
            Verbs::CreateOnly => {
                coll.insert(
                    "post".into(),
                    operation(ri, "post", WRITE, ns, false, v3, &schema_ref),
                );
            }
            Verbs::ReadOnly => {
                coll.insert(
                    "get".into(),
                    operation(
                        ri,
                        "list",
                        &["labelSelector", "fieldSelector", "limit", "continue"],
                        ns,
                        false,
                        v3,
                        &schema_ref,
                    ),
                );
                item.insert(
                    "get".into(),
                    operation(ri, "get", &[], ns, true, v3, &schema_ref),
                );
            }
            Verbs::Crud => {
                coll.insert(
                    "get".into(),
                    operation(
                        ri,
                        "list",
                        &[
                            "labelSelector",
                            "fieldSelector",
                            "limit",
                            "continue",
                            "resourceVersion",
                            "watch",
                            "timeoutSeconds",
                        ],
                        ns,
                        false,
                        v3,
                        &schema_ref,
                    ),
                );
                coll.insert(
                    "post".into(),
                    operation(ri, "post", WRITE, ns, false, v3, &schema_ref),
                );
                coll.insert(
                    "delete".into(),
                    operation(
                        ri,
                        "deletecollection",
                        &[
                            "dryRun",
                            "gracePeriodSeconds",
                            "propagationPolicy",
                            "labelSelector",
                            "fieldSelector",
                        ],
                        ns,
                        false,
                        v3,
                        &schema_ref,
                    ),
                );
                item.insert(
                    "get".into(),
                    operation(ri, "get", &[], ns, true, v3, &schema_ref),
                );
                item.insert(
                    "put".into(),
                    operation(ri, "put", WRITE, ns, true, v3, &schema_ref),
                );
                item.insert(
                    "patch".into(),
                    operation(
                        ri,
                        "patch",
                        &[
                            "dryRun",
                            "fieldManager",
                            "fieldValidation",
                            "force",
                            "pretty",
                        ],
                        ns,
                        true,
                        v3,
                        &schema_ref,
                    ),
                );
                item.insert(
                    "delete".into(),
                    operation(
                        ri,
                        "delete",
                        &["dryRun", "gracePeriodSeconds", "propagationPolicy"],
                        ns,
                        true,
                        v3,
                        &schema_ref,
                    ),
                );
            }
        }
        if !coll.is_empty() {
            out.insert(base.clone(), Value::Object(coll));
        }
        if !item.is_empty() {
            out.insert(format!("{base}/{{name}}"), Value::Object(item));
        }
    }
    out
}

fn definitions(resources: &[&ResourceInfo], settings: SchemaSettings) -> Map<String, Value> {
    let mut generator = settings.into_generator();
    for ri in resources {
        (ri.schema)(&mut generator);
    }
    let mut defs = generator.take_definitions(true);
    annotate(&mut defs, resources);
    // k8s-openapi's objects always carry `metadata`, so their schemas require it; upstream's
    // never do (a TokenReview or SubjectAccessReview is posted without one).
    for d in defs.values_mut() {
        if let Some(req) = d.get_mut("required").and_then(Value::as_array_mut) {
            req.retain(|r| r != "metadata");
            if req.is_empty() {
                d.as_object_mut().map(|o| o.remove("required"));
            }
        }
    }
    defs
}

/// The group/version path key used by `/openapi/v3`: `api/v1` or `apis/<group>/<version>`.
fn gv_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn hash(bytes: &[u8]) -> String {
    // FNV-1a, enough to tell clients their cached copy is stale.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

fn cache() -> &'static Mutex<HashMap<String, std::sync::Arc<Vec<u8>>>> {
    static C: OnceLock<Mutex<HashMap<String, std::sync::Arc<Vec<u8>>>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// The OpenAPI v3 document of one group/version (`api/v1`, `apis/apps/v1`), as JSON bytes.
pub fn v3_group_version(reg: &Registry, key: &str) -> Option<std::sync::Arc<Vec<u8>>> {
    if let Some(d) = cache().lock().unwrap_or_else(|p| p.into_inner()).get(key) {
        return Some(d.clone());
    }
    let (group, version) = match key.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => ("", v.to_string()),
        ["apis", g, v] => (*g, v.to_string()),
        _ => return None,
    };
    let resources: Vec<&ResourceInfo> = reg.in_group_version(group, &version).collect();
    if resources.is_empty() {
        return None;
    }
    let defs = definitions(&resources, SchemaSettings::openapi3());
    let doc = json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": kite_api::KUBERNETES_VERSION},
        "paths": paths(&resources, true, "#/components/schemas/"),
        "components": {"schemas": defs},
    });
    let bytes = std::sync::Arc::new(serde_json::to_vec(&doc).unwrap_or_default());
    cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.to_string(), bytes.clone());
    Some(bytes)
}

/// `/openapi/v3`: where each group/version's document is.
pub fn v3_root(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for g in reg.groups() {
        for v in &g.versions {
            let key = gv_key(g.name, v);
            // The documents are fixed for a build, so the build's versions identify them.
            let h = hash(
                format!(
                    "{}/{}/{key}",
                    env!("CARGO_PKG_VERSION"),
                    kite_api::KUBERNETES_VERSION
                )
                .as_bytes(),
            );
            paths.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={h}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v2`: one Swagger 2.0 document for everything.
pub fn v2(reg: &Registry) -> Value {
    let resources: Vec<&ResourceInfo> = reg.resources.iter().collect();
    let defs = definitions(&resources, SchemaSettings::draft07());
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": kite_api::KUBERNETES_VERSION},
        "paths": paths(&resources, false, "#/definitions/"),
        "definitions": defs,
    })
}

/// `/openapi/v2` as protobuf (gnostic's `openapi.v2.Document`), which kubectl asks for when
/// it validates on the client side (a `kind: List`, say). It carries the definitions (what
/// validation reads); paths are left out. Built once: the document is fixed for a build.
pub fn v2_protobuf(reg: &Registry) -> &'static [u8] {
    static DOC: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let doc = v2(reg);
        let mut out = Vec::new();
        pb::string(&mut out, 1, "2.0");
        let mut info = Vec::new();
        pb::string(&mut info, 1, "Kubernetes");
        pb::string(&mut info, 2, kite_api::KUBERNETES_VERSION);
        pb::message(&mut out, 2, &info);
        let mut defs = Vec::new();
        if let Some(m) = doc["definitions"].as_object() {
            for (name, schema) in m {
                pb::message(&mut defs, 1, &pb::named(name, &pb::schema(schema)));
            }
        }
        pb::message(&mut out, 9, &defs);
        out
    })
}

/// A minimal protobuf writer for the gnostic OpenAPI v2 messages.
mod pb {
    use serde_json::Value;

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, (u64::from(field) << 3) | u64::from(wire));
    }

    pub fn message(out: &mut Vec<u8>, field: u32, body: &[u8]) {
        key(out, field, 2);
        varint(out, body.len() as u64);
        out.extend_from_slice(body);
    }

    pub fn string(out: &mut Vec<u8>, field: u32, s: &str) {
        message(out, field, s.as_bytes());
    }

    fn boolean(out: &mut Vec<u8>, field: u32, b: bool) {
        if b {
            key(out, field, 0);
            varint(out, 1);
        }
    }

    fn int(out: &mut Vec<u8>, field: u32, v: &Value) {
        if let Some(i) = v.as_i64() {
            key(out, field, 0);
            varint(out, i as u64);
        }
    }

    fn double(out: &mut Vec<u8>, field: u32, v: &Value) {
        if let Some(f) = v.as_f64() {
            key(out, field, 1);
            out.extend_from_slice(&f.to_le_bytes());
        }
    }

    /// gnostic's `Any`: the value as YAML text (JSON is YAML).
    fn any(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        string(&mut out, 2, &v.to_string());
        out
    }

    /// A `Named*` pair: name = 1, value = 2.
    pub fn named(name: &str, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        string(&mut out, 1, name);
        message(&mut out, 2, value);
        out
    }

    /// A JSON Schema object as `openapi.v2.Schema`. A lone `allOf: [{$ref}]` becomes the
    /// `$ref` itself, as upstream's v2 document writes it; `oneOf`/`anyOf` have no place in
    /// Swagger 2.0 and are left out (the value is then of any type, as upstream's).
    pub fn schema(s: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        let Some(m) = s.as_object() else {
            return out;
        };
        let single_ref = m
            .get("allOf")
            .and_then(|a| a.as_array())
            .filter(|a| a.len() == 1 && !m.contains_key("$ref") && !m.contains_key("type"))
            .and_then(|a| a[0].get("$ref"))
            .and_then(|r| r.as_str());
        if let Some(r) = m.get("$ref").and_then(|r| r.as_str()).or(single_ref) {
            string(&mut out, 1, r);
        }
        for (k, f) in [
            ("format", 2),
            ("title", 3),
            ("description", 4),
            ("pattern", 13),
        ] {
            if let Some(v) = m.get(k).and_then(|v| v.as_str()) {
                string(&mut out, f, v);
            }
        }
        if let Some(v) = m.get("default") {
            message(&mut out, 5, &any(v));
        }
        for (k, f) in [("multipleOf", 6), ("maximum", 7), ("minimum", 9)] {
            if let Some(v) = m.get(k) {
                double(&mut out, f, v);
            }
        }
        for (k, f) in [
            ("exclusiveMaximum", 8),
            ("exclusiveMinimum", 10),
            ("uniqueItems", 16),
            ("readOnly", 27),
        ] {
            boolean(
                &mut out,
                f,
                m.get(k).and_then(|v| v.as_bool()).unwrap_or(false),
            );
        }
        for (k, f) in [
            ("maxLength", 11),
            ("minLength", 12),
            ("maxItems", 14),
            ("minItems", 15),
            ("maxProperties", 17),
            ("minProperties", 18),
        ] {
            if let Some(v) = m.get(k) {
                int(&mut out, f, v);
            }
        }
        for r in m
            .get("required")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(r) = r.as_str() {
                string(&mut out, 19, r);
            }
        }
        for e in m
            .get("enum")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            message(&mut out, 20, &any(e));
        }
        match m.get("additionalProperties") {
            Some(Value::Bool(b)) => {
                let mut ap = Vec::new();
                key(&mut ap, 2, 0);
                varint(&mut ap, u64::from(*b));
                message(&mut out, 21, &ap);
            }
            Some(v @ Value::Object(_)) => {
                let mut ap = Vec::new();
                message(&mut ap, 1, &schema(v));
                message(&mut out, 21, &ap);
            }
            _ => {}
        }
        let types: Vec<&str> = match m.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(|t| t.as_str()).collect(),
            _ => vec![],
        };
        if !types.is_empty() {
            let mut t = Vec::new();
            for x in types {
                string(&mut t, 1, x);
            }
            message(&mut out, 22, &t);
        }
        match m.get("items") {
            Some(v @ Value::Object(_)) => {
                let mut it = Vec::new();
                message(&mut it, 1, &schema(v));
                message(&mut out, 23, &it);
            }
            Some(Value::Array(a)) => {
                let mut it = Vec::new();
                for v in a {
                    message(&mut it, 1, &schema(v));
                }
                message(&mut out, 23, &it);
            }
            _ => {}
        }
        if single_ref.is_none() {
            for v in m
                .get("allOf")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                message(&mut out, 24, &schema(v));
            }
        }
        if let Some(props) = m.get("properties").and_then(|v| v.as_object()) {
            let mut p = Vec::new();
            for (name, v) in props {
                message(&mut p, 1, &named(name, &schema(v)));
            }
            message(&mut out, 25, &p);
        }
        if let Some(v) = m.get("discriminator").and_then(|v| v.as_str()) {
            string(&mut out, 26, v);
        }
        if let Some(v) = m.get("example") {
            message(&mut out, 30, &any(v));
        }
        for (k, v) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
            message(&mut out, 31, &named(k, &any(v)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_v1_has_gvk_patch_params_and_merge_keys() {
        let reg = Registry::get();
        let doc: Value =
            serde_json::from_slice(&v3_group_version(reg, "apis/apps/v1").unwrap()).unwrap();
        let d = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            d["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        let spec = &doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"];
        assert_eq!(
            spec["properties"]["containers"]["x-kubernetes-patch-merge-key"],
            "name"
        );
        let p = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert!(p["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "fieldValidation"));
        assert!(v3_root(reg)["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/api/v1?hash="));
    }
}
