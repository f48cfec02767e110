//! Static pods: Pod manifests in `<data-dir>/agent/pod-manifests/` that the kubelet runs
//! itself, without the API. Each gets upstream's name (`<name>-<node>`), a uid hashed from
//! its manifest and node, and the `kubernetes.io/config.*` annotations; its mirror pod in
//! the API (`kubernetes.io/config.mirror`) only shows it.

use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::path::Path;

pub const SOURCE: &str = "kubernetes.io/config.source";
pub const HASH: &str = "kubernetes.io/config.hash";
pub const MIRROR: &str = "kubernetes.io/config.mirror";

/// Whether an API pod is a mirror of a static pod.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR))
}

/// Whether a pod is a static pod (its manifest's, or its mirror in the API): critical to
/// upstream's eviction manager, so never refused or evicted for node pressure.
pub fn is_static(pod: &Pod) -> bool {
    is_mirror(pod)
        || pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE))
            .is_some_and(|s| s != "api")
}

/// Reads every manifest (`.yaml`, `.yml`, `.json`); a file that does not parse as a Pod is
/// skipped with a warning, as upstream.
pub fn load(dir: &Path, node: &str) -> Vec<Pod> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or_default();
        if !["yaml", "yml", "json"].contains(&ext) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        match parse(&text, node) {
            Ok(p) => out.push(p),
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %e, "skipping a static pod manifest")
            }
        }
    }
    out
}

fn parse(text: &str, node: &str) -> Result<Pod, String> {
    let v: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    if v["kind"] != "Pod" {
        return Err(format!("kind is {}, not Pod", v["kind"]));
    }
    let mut pod: Pod = serde_json::from_value(v).map_err(|e| e.to_string())?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name is missing")?;
    let d = ring::digest::digest(&ring::digest::SHA256, format!("{node}\n{text}").as_bytes());
    let hash: String = d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let m = &mut pod.metadata;
    m.name = Some(format!("{name}-{node}"));
    m.namespace = Some(m.namespace.clone().unwrap_or_else(|| "default".into()));
    m.uid = Some(hash.clone());
    let ann: &mut BTreeMap<String, String> = m.annotations.get_or_insert_with(Default::default);
    ann.insert(SOURCE.into(), "file".into());
    ann.insert(HASH.into(), hash);
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node.to_string());
    Ok(pod)
}

/// The mirror pod to create in the API for a static pod.
pub fn mirror(pod: &Pod, node_uid: Option<String>) -> Pod {
    let mut m = pod.clone();
    m.metadata.uid = None;
    m.metadata.resource_version = None;
    let hash = pod.metadata.uid.clone().unwrap_or_default();
    m.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(MIRROR.into(), hash);
    if let Some(uid) = node_uid {
        m.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                uid,
                controller: Some(true),
                ..Default::default()
            },
        ]);
    }
    m.status = None;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hashes_like_upstream() {
        let y = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: kube-system}\nspec:\n  containers: [{name: c, image: x}]\n";
        let p = parse(y, "n1").unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        let again = parse(y, "n1").unwrap();
        assert_eq!(p.metadata.uid, again.metadata.uid);
        assert_ne!(p.metadata.uid, parse(y, "n2").unwrap().metadata.uid);
        assert!(parse("kind: Service\nmetadata: {name: a}", "n").is_err());
        let m = mirror(&p, Some("u".into()));
        assert!(is_mirror(&m));
        assert!(m.metadata.uid.is_none());
    }
}
