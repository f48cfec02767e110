//! Developer tasks.
//!
//! `cargo run -p xtask -- gen-proto <k8s-pb-src-dir>` regenerates
//! `crates/kite-api/src/proto/fields.json`: for every Kubernetes protobuf message, its field
//! tags, JSON names and types. The tags and types come from the prost code of the `k8s-pb`
//! crate (kube-rs's bindings generated from upstream's `generated.proto` files); the JSON names
//! come from k8s-openapi's schemas (prost's snake_case loses names such as `podIPs`). Get the
//! source with `cargo info k8s-pb@0.9.0` (it lands under `$CARGO_HOME/registry/src`).

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, src] if cmd == "gen-proto" => gen_proto(Path::new(src)),
        _ => bail!("usage: cargo run -p xtask -- gen-proto <path to k8s-pb's src/>"),
    }
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            rs_files(&p, out)?;
        } else if p.file_name().is_some_and(|n| n == "mod.rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// Resolves a prost type path relative to the module it appears in.
fn resolve(module: &[String], ty: &str) -> String {
    let mut m: Vec<String> = module.to_vec();
    let mut rest = ty;
    while let Some(r) = rest.strip_prefix("super::") {
        m.pop();
        rest = r;
    }
    for part in rest.split("::") {
        m.push(part.to_string());
    }
    m.join(".")
}

/// The innermost type name in `Option<Vec<Box<x::Y>>>` and friends.
fn inner_type(decl: &str) -> String {
    let mut t = decl.trim().trim_end_matches(',').to_string();
    for wrapper in [
        "::core::option::Option<",
        "::prost::alloc::vec::Vec<",
        "::prost::alloc::boxed::Box<",
    ] {
        while let Some(s) = t.strip_prefix(wrapper) {
            t = s.strip_suffix('>').unwrap_or(s).to_string();
        }
    }
    t
}

fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn lower_camel(snake: &str) -> String {
    let snake = snake.trim_start_matches("r#");
    let mut out = String::new();
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Upstream's OpenAPI definition name for a proto message path like `api.core.v1.PodSpec`.
fn definition_of(msg: &str) -> String {
    let msg = msg
        .replacen("apiextensions_apiserver.", "apiextensions-apiserver.", 1)
        .replacen("kube_aggregator.", "kube-aggregator.", 1);
    format!("io.k8s.{msg}")
}

fn gen_proto(src: &Path) -> Result<()> {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    for ri in &kite_api::Registry::get().resources {
        (ri.schema)(&mut generator);
    }
    let defs = generator.take_definitions(true);
    let mut files = Vec::new();
    rs_files(src, &mut files)?;
    files.sort();
    let mut messages: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src)?.parent().unwrap_or(Path::new(""));
        let module: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().to_string())
            .collect();
        let text = std::fs::read_to_string(&f)?;
        let mut current: Option<String> = None;
        let mut pending: Option<String> = None;
        // Joins declarations that span lines (`BTreeMap<\n K,\n V,\n>`) into one.
        let mut joined: Vec<String> = Vec::new();
        let mut acc = String::new();
        for line in text.lines() {
            if acc.is_empty() && !line.trim().starts_with("pub ") {
                joined.push(line.to_string());
                continue;
            }
            acc.push_str(if acc.is_empty() { line } else { line.trim() });
            let balanced = acc.matches('<').count() == acc.matches('>').count();
            if balanced && acc.ends_with([',', '{', '}', ';']) {
                joined.push(std::mem::take(&mut acc));
            } else if !acc.ends_with('<') {
                acc.push(' ');
            }
        }
        for line in joined.iter().map(String::as_str) {
            let l = line.trim();
            if let Some(rest) = l.strip_prefix("pub struct ") {
                let name = rest.split_whitespace().next().unwrap_or_default();
                let full = format!("{}.{}", module.join("."), name);
                messages.entry(full.clone()).or_default();
                current = Some(full);
            } else if l == "}" && !line.starts_with(' ') {
                current = None;
            } else if l.starts_with("#[prost(") {
                pending = Some(l.to_string());
            } else if let (Some(attr), Some(msg), Some(decl)) =
                (pending.take(), current.as_ref(), l.strip_prefix("pub "))
            {
                let (fname, ty) = decl.split_once(':').context("field declaration")?;
                let ty = ty.replace(", >", ">").replace(",>", ">");
                let ty = ty.as_str();
                let tag: u64 = attr
                    .split("tag = \"")
                    .nth(1)
                    .and_then(|t| t.split('"').next())
                    .and_then(|t| t.parse().ok())
                    .with_context(|| format!("tag in {attr}"))?;
                let repeated = attr.contains(", repeated");
                let kind = if let Some(m) = attr.split("btree_map = \"").nth(1) {
                    let kv = m.split('"').next().unwrap_or_default();
                    let (k, v) = kv.split_once(", ").context("map types")?;
                    let v = if v == "message" {
                        let decl_ty = ty.trim().trim_end_matches(',');
                        let inner = decl_ty
                            .rsplit_once(", ")
                            .map(|(_, v)| v.trim_end_matches('>'))
                            .with_context(|| {
                                format!("map value type in {decl_ty:?} from {decl:?}")
                            })?;
                        format!("m:{}", resolve(&module, inner))
                    } else {
                        v.to_string()
                    };
                    format!("map:{k},{v}")
                } else if attr.starts_with("#[prost(message") {
                    format!("m:{}", resolve(&module, &inner_type(ty)))
                } else {
                    let scalar = attr
                        .trim_start_matches("#[prost(")
                        .split([',', ' ', '='])
                        .next()
                        .unwrap_or_default();
                    scalar.to_string()
                };
                let def = defs.get(&definition_of(msg));
                let json_name = def
                    .and_then(|d| d["properties"].as_object())
                    .and_then(|props| {
                        props
                            .keys()
                            .find(|k| normalize(k) == normalize(fname.trim_start_matches("r#")))
                            .cloned()
                    })
                    .unwrap_or_else(|| lower_camel(fname));
                messages.get_mut(msg).unwrap().push(json!([
                    tag,
                    json_name,
                    if repeated { "R" } else { "O" },
                    kind
                ]));
            }
        }
    }
    let mut out = Map::new();
    for (k, v) in messages {
        if !v.is_empty() {
            out.insert(k, Value::Array(v));
        }
    }
    let dest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kite-api/src/proto/fields.json");
    std::fs::create_dir_all(dest.parent().unwrap())?;
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
