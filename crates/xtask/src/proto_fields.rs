//! `gen-proto`: the protobuf field table kite decodes request bodies with
//! (`crates/kite-api/src/proto/fields.json`), read from upstream's own `generated.proto` files
//! (`staging/src/k8s.io/{api,apimachinery,apiextensions-apiserver,kube-aggregator}`), so every
//! message of the Kubernetes version kite serves is there, nested and empty ones included.
//!
//! Each message maps to its fields `[tag, json name, "R" (repeated) or "O", type]`, the type
//! being a scalar name, `m:<message>` or `map:<key>,<value>`. A message field that JSON
//! inlines into its parent (Go's `json:",inline"`, read from upstream's types) has the empty
//! JSON name. Message names are the proto
//! package without `k8s.io.` plus the message (`api.core.v1.Pod`). JSON names come from
//! k8s-openapi's schemas where the type has one, else the proto field name (upstream names
//! proto fields after the JSON ones).

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const ROOTS: &[&str] = &[
    "api",
    "apimachinery",
    "apiextensions-apiserver/pkg/apis",
    "kube-aggregator/pkg/apis",
];

const SCALARS: &[&str] = &[
    "bool", "bytes", "double", "float", "int32", "int64", "uint32", "uint64", "string",
];

fn protos(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            protos(&p, out)?;
        } else if p.file_name().is_some_and(|n| n == "generated.proto") {
            out.push(p);
        }
    }
    Ok(())
}

/// A type as written in a field (`PodSpec`, `.k8s.io.api.core.v1.PodSpec`, `string`) as
/// the table writes it.
fn type_of(pkg: &str, ty: &str) -> String {
    if SCALARS.contains(&ty) {
        ty.to_string()
    } else if let Some(full) = ty.strip_prefix(".k8s.io.") {
        format!("m:{full}")
    } else {
        format!("m:{pkg}.{ty}")
    }
}

fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

pub fn generate(src: &Path, defs: &BTreeMap<String, Value>) -> Result<()> {
    let inline = crate::go_fields::inline_proto_fields(src)?;
    let mut files = Vec::new();
    for r in ROOTS {
        protos(&src.join(r), &mut files)?;
    }
    files.sort();
    let mut messages: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        let mut pkg = String::new();
        let mut current: Option<String> = None;
        for raw in text.lines() {
            let line = raw.split("//").next().unwrap_or("").trim();
            if let Some(p) = line.strip_prefix("package ") {
                pkg = p
                    .trim_end_matches(';')
                    .trim_start_matches("k8s.io.")
                    .to_string();
            } else if let Some(m) = line.strip_prefix("message ") {
                let name = m.trim_end_matches('{').trim();
                let full = format!("{pkg}.{name}");
                messages.entry(full.clone()).or_default();
                current = Some(full);
            } else if line == "}" {
                current = None;
            } else if let Some(msg) = current.as_ref() {
                // `optional T name = N;`, `repeated T name = N;`, `map<K, V> name = N;`
                let Some((decl, tag)) = line.trim_end_matches(';').split_once(" = ") else {
                    continue;
                };
                let tag: u64 = tag
                    .trim()
                    .parse()
                    .with_context(|| format!("tag in {line:?}"))?;
                let (label, ty, fname) = if let Some(rest) = decl.strip_prefix("map<") {
                    let (kv, fname) = rest.split_once("> ").context("map field")?;
                    let (k, v) = kv.split_once(", ").context("map types")?;
                    ("O", format!("map:{k},{}", type_of(&pkg, v)), fname.trim())
                } else {
                    let words: Vec<&str> = decl.split_whitespace().collect();
                    let [label, ty, fname] = words.as_slice() else {
                        continue;
                    };
                    let label = if *label == "repeated" { "R" } else { "O" };
                    (label, type_of(&pkg, ty), *fname)
                };
                let def = crate::definition_of(msg);
                let json_name = defs
                    .get(&def)
                    .and_then(|d| d["properties"].as_object())
                    .and_then(|props| {
                        props
                            .keys()
                            .find(|k| normalize(k) == normalize(fname))
                            .cloned()
                    })
                    .unwrap_or_else(|| lower_first(fname));
                // A field JSON inlines has the empty name: its keys go into the parent.
                let json_name = if inline.contains(&(msg.clone(), fname.to_string())) {
                    String::new()
                } else {
                    json_name
                };
                messages
                    .get_mut(msg)
                    .expect("current message")
                    .push(json!([tag, json_name, label, ty]));
            }
        }
    }
    let out: Map<String, Value> = messages
        .into_iter()
        .map(|(k, v)| (k, Value::Array(v)))
        .collect();
    let dest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kite-api/src/proto/fields.json");
    let mut text = String::from("{\n");
    let n = out.len();
    for (i, (k, v)) in out.iter().enumerate() {
        text.push_str(&format!(
            "{}:{}{}\n",
            json!(k),
            v,
            if i + 1 < n { "," } else { "" }
        ));
    }
    text.push_str("}\n");
    std::fs::write(&dest, text)?;
    println!("wrote {} messages to {}", n, dest.display());
    Ok(())
}

/// A few proto fields of types k8s-openapi does not serve are named after the Go field
/// (`Name`); their JSON names start in lower case.
fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}
