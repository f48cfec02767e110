//! The manifests folder: which files count (YAML and JSON, not disabled by a `.skip`
//! beside them), and the objects one file holds (multi-document YAML, `kind: List`).

use serde_json::Value;
use std::path::{Path, PathBuf};

/// Why a file's objects cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not valid YAML: {0}")]
    Yaml(String),
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("document {doc}: {why}")]
    Object { doc: usize, why: String },
}

/// The files to apply, by name: `*.yaml`, `*.yml`, `*.json`, not hidden, without a
/// `NAME.skip` beside them.
pub fn scan(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_manifest(p) && !skipped(p))
        .collect();
    out.sort();
    Ok(out)
}

pub fn is_manifest(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.')
        && p.extension()
            .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
        && p.is_file()
}

/// Whether `NAME.skip` turns `NAME` off.
pub fn skipped(p: &Path) -> bool {
    let mut s = p.as_os_str().to_owned();
    s.push(".skip");
    Path::new(&s).exists()
}

/// The objects of one file, in file order; `kind: List` (or any `…List` with items) is
/// opened; empty documents are ignored. Each object has apiVersion, kind and a name.
pub fn objects(name: &str, text: &str) -> Result<Vec<Value>, ParseError> {
    let docs: Vec<Value> = if name.ends_with(".json") {
        vec![serde_json::from_str(text).map_err(|e| ParseError::Json(e.to_string()))?]
    } else {
        serde_saphyr::from_multiple(text).map_err(|e| {
            let first = e.to_string();
            let first = first.lines().next().unwrap_or_default();
            ParseError::Yaml(first.trim_start_matches("error: ").to_string())
        })?
    };
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let doc_no = i + 1;
        match doc {
            Value::Null => continue,
            Value::Object(ref m)
                if m.get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List"))
                    && m.get("items").is_some_and(Value::is_array) =>
            {
                for item in m["items"].as_array().into_iter().flatten() {
                    out.push(check(doc_no, item.clone())?);
                }
            }
            other => out.push(check(doc_no, other)?),
        }
    }
    Ok(out)
}

fn check(doc: usize, v: Value) -> Result<Value, ParseError> {
    let bad = |why: &str| ParseError::Object {
        doc,
        why: why.to_string(),
    };
    if !v.is_object() {
        return Err(bad("not an object"));
    }
    let s = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    if s("apiVersion").is_none() {
        return Err(bad("apiVersion is missing"));
    }
    if s("kind").is_none() {
        return Err(bad("kind is missing"));
    }
    if v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(bad("metadata.name is missing"));
    }
    Ok(v)
}

/// The order objects are applied in: namespaces and CRDs before what lives in them.
pub fn apply_order(objects: &mut [Value]) {
    objects.sort_by_key(|o| match o.get("kind").and_then(Value::as_str) {
        Some("Namespace") => 0,
        Some("CustomResourceDefinition") => 1,
        _ => 2,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_lists_open_into_objects() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret, metadata: {name: b}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: c}}\n";
        let mut objs = objects("x.yaml", text).unwrap();
        let names: Vec<&str> = objs
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        apply_order(&mut objs);
        assert_eq!(objs[0]["kind"], "Namespace");
    }

    #[test]
    fn bad_documents_are_named() {
        assert!(matches!(
            objects("x.yaml", "a: [b\n"),
            Err(ParseError::Yaml(_))
        ));
        assert!(matches!(objects("x.json", "{"), Err(ParseError::Json(_))));
        let e = objects(
            "x.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: ConfigMap\n",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "document 2: apiVersion is missing");
        let e = objects("x.yaml", "apiVersion: v1\nkind: ConfigMap\n").unwrap_err();
        assert_eq!(e.to_string(), "document 1: metadata.name is missing");
        assert_eq!(
            objects("x.yaml", "- 1\n").unwrap_err().to_string(),
            "document 1: not an object"
        );
    }

    #[test]
    fn the_folder_lists_manifests_not_skipped_ones() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "b.yaml",
            "a.json",
            "c.yml",
            "notes.txt",
            ".hidden.yaml",
            "off.yaml",
            "off.yaml.skip",
        ] {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        let names: Vec<String> = scan(d.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.json", "b.yaml", "c.yml"]);
        assert!(scan(&d.path().join("none")).unwrap().is_empty());
    }
}
