//! `gen-go-fields`: which fields Go's `encoding/json` writes even when a client left them out,
//! read from upstream's API type declarations (`staging/src/k8s.io/{api,apimachinery,
//! apiextensions-apiserver,kube-aggregator}`), so kite's responses carry the same keys.
//!
//! Go always encodes a non-pointer struct field (`omitempty` does not apply to structs): a
//! new Service has `status: {loadBalancer: {}}`, a pod template `metadata: {creationTimestamp:
//! null}`. A non-pointer scalar without `omitempty` is written as its zero value. The output
//! maps each OpenAPI definition name to rules `[json name, rule, definition or zero value]`:
//! `o` a struct always written (as `{}` at least) and filled in turn; `t` a `metav1.Time` or
//! `MicroTime`, written `null` when unset; `z` a scalar written as its zero; `e` a non-pointer
//! scalar with `omitempty`, which Go leaves out when it is zero (a protobuf client sends
//! `hostPort: 0`, `stdin: false` explicitly); `n` a slice or map
//! without `omitempty`, written `null` when unset; `i` an inline
//! struct, filled into the same object; `p`, `r`, `m` a pointer, slice or map of structs,
//! filled where present.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The type packages kite serves, under `staging/src/k8s.io`.
const ROOTS: &[&str] = &[
    "api",
    "apimachinery/pkg/apis/meta/v1",
    "apiextensions-apiserver/pkg/apis/apiextensions/v1",
    "kube-aggregator/pkg/apis/apiregistration/v1",
];

/// Structs whose JSON form is their own (custom marshallers): never filled.
const OPAQUE: &[&str] = &[
    "io.k8s.apimachinery.pkg.api.resource.Quantity",
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
    "io.k8s.apimachinery.pkg.runtime.RawExtension",
    "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1",
    "io.k8s.apimachinery.pkg.apis.meta.v1.Duration",
    "io.k8s.apimachinery.pkg.apis.meta.v1.TypeMeta",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray",
];
const TIMES: &[&str] = &[
    "io.k8s.apimachinery.pkg.apis.meta.v1.Time",
    "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime",
];

struct GoField {
    json: String,
    /// The field's name in upstream's protobuf message (its `protobuf:"...,name=X"` tag).
    proto: Option<String>,
    omitempty: bool,
    /// Go 1.24's `omitzero`: a zero struct is left out too.
    omitzero: bool,
    inline: bool,
    ty: String,
}

/// One Go package: its definition prefix, import aliases, structs and named scalar types.
struct Package {
    prefix: String,
    imports: HashMap<String, String>,
    structs: BTreeMap<String, Vec<GoField>>,
    scalars: HashMap<String, String>,
}

/// `k8s.io/api/core/v1` → `io.k8s.api.core.v1`.
fn prefix_of(import_path: &str) -> Option<String> {
    Some(format!(
        "io.k8s.{}",
        import_path.strip_prefix("k8s.io/")?.replace('/', ".")
    ))
}

fn parse_package(dir: &Path, import_path: &str) -> Result<Option<Package>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.ends_with(".go") && !n.ends_with("_test.go") && !n.starts_with("zz_generated")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Ok(None);
    }
    let mut pkg = Package {
        prefix: prefix_of(import_path).context("import path")?,
        imports: HashMap::new(),
        structs: BTreeMap::new(),
        scalars: HashMap::new(),
    };
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        let mut in_imports = false;
        let mut current: Option<String> = None;
        let mut depth = 0usize;
        for raw in text.lines() {
            let line = raw.split("//").next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if line == "import (" {
                in_imports = true;
                continue;
            }
            if in_imports {
                if line == ")" {
                    in_imports = false;
                } else {
                    let parts: Vec<&str> = line.split_whitespace().collect();
                    let (alias, path) = match parts.as_slice() {
                        [p] => (p.trim_matches('"').rsplit('/').next().unwrap_or(""), *p),
                        [a, p] => (*a, *p),
                        _ => continue,
                    };
                    pkg.imports
                        .insert(alias.to_string(), path.trim_matches('"').to_string());
                }
                continue;
            }
            if let Some(name) = current.clone() {
                if depth == 1 && line == "}" {
                    current = None;
                    depth = 0;
                    continue;
                }
                depth += line.matches('{').count();
                depth = depth.saturating_sub(line.matches('}').count());
                if depth != 1 || line.contains('{') {
                    continue;
                }
                // `Name Type `json:"..."`` or an embedded `Type `json:",inline"``.
                let Some((decl, tag)) = line.split_once('`') else {
                    continue;
                };
                let Some(j) = tag
                    .split("json:\"")
                    .nth(1)
                    .and_then(|t| t.split('"').next())
                else {
                    continue;
                };
                let mut opts = j.split(',');
                let json_name = opts.next().unwrap_or("").to_string();
                let rest: Vec<&str> = opts.collect();
                let words: Vec<&str> = decl.split_whitespace().collect();
                let ty = match words.as_slice() {
                    [ty] => ty.to_string(),
                    [_, ty] => ty.to_string(),
                    _ => continue,
                };
                // An embedded struct whose protobuf tag names no field is the proto field
                // named after its type (`EphemeralContainerCommon` → ephemeralContainerCommon).
                let embedded_proto = (words.len() == 1 && tag.contains("protobuf:\"")).then(|| {
                    let t = ty.trim_start_matches('*');
                    let t = t.rsplit('.').next().unwrap_or(t);
                    let mut c = t.chars();
                    c.next()
                        .map(|f| f.to_lowercase().chain(c).collect::<String>())
                        .unwrap_or_default()
                });
                if json_name == "-" {
                    continue;
                }
                let proto = tag
                    .split("protobuf:\"")
                    .nth(1)
                    .and_then(|t| t.split('"').next())
                    .and_then(|t| t.split(',').find_map(|kv| kv.strip_prefix("name=")))
                    .map(String::from)
                    .or(embedded_proto);
                pkg.structs.entry(name).or_default().push(GoField {
                    proto,
                    inline: rest.contains(&"inline") || json_name.is_empty(),
                    omitempty: rest.contains(&"omitempty") || rest.contains(&"omitzero"),
                    omitzero: rest.contains(&"omitzero"),
                    json: json_name,
                    ty,
                });
                continue;
            }
            if let Some(rest) = line.strip_prefix("type ") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                match words.as_slice() {
                    [name, "struct", "{"] => {
                        current = Some(name.to_string());
                        depth = 1;
                        pkg.structs.entry(name.to_string()).or_default();
                    }
                    [name, "struct{}"] => {
                        pkg.structs.entry(name.to_string()).or_default();
                    }
                    [name, base] if !base.contains('{') => {
                        pkg.scalars.insert(name.to_string(), base.to_string());
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(Some(pkg))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(std::path::PathBuf, String)>) -> Result<()> {
    let rel = dir.strip_prefix(root)?.to_string_lossy().to_string();
    out.push((dir.to_path_buf(), format!("k8s.io/{rel}")));
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if p.is_dir() && !name.starts_with('.') && name != "testdata" {
            walk(root, &p, out)?;
        }
    }
    Ok(())
}

const BUILTIN_ZERO: &[(&str, i64)] = &[
    ("int", 0),
    ("int32", 0),
    ("int64", 0),
    ("uint32", 0),
    ("uint64", 0),
    ("float64", 0),
];

fn packages(src: &Path) -> Result<HashMap<String, Package>> {
    let mut dirs = Vec::new();
    for r in ROOTS {
        walk(src, &src.join(r), &mut dirs)?;
    }
    let mut pkgs: HashMap<String, Package> = HashMap::new();
    for (dir, import_path) in dirs {
        if let Some(p) = parse_package(&dir, &import_path)? {
            pkgs.insert(p.prefix.clone(), p);
        }
    }
    Ok(pkgs)
}

/// The protobuf fields that JSON inlines into their parent (`IngressRule.ingressRuleValue`,
/// `Volume.volumeSource`, `Probe.handler`): `(proto message, proto field name)`, the message
/// named as in `fields.json` (`api.networking.v1.IngressRule`).
pub fn inline_proto_fields(src: &Path) -> Result<std::collections::HashSet<(String, String)>> {
    let mut out = std::collections::HashSet::new();
    for pkg in packages(src)?.values() {
        let msg_pkg = crate::message_of(&pkg.prefix);
        for (name, fields) in &pkg.structs {
            for f in fields.iter().filter(|f| f.inline) {
                if let Some(p) = &f.proto {
                    out.insert((format!("{msg_pkg}.{name}"), p.clone()));
                }
            }
        }
    }
    Ok(out)
}

pub fn generate(src: &Path) -> Result<()> {
    let pkgs = packages(src)?;
    // What a (possibly qualified) Go type is, seen from `pkg`: a definition name for
    // structs, or a scalar base type.
    enum Kind {
        Struct(String),
        Scalar(String),
        Other,
    }
    let resolve = |pkg: &Package, ty: &str| -> Kind {
        let (pfx, name) = match ty.split_once('.') {
            Some((alias, name)) => match pkg.imports.get(alias).and_then(|p| prefix_of(p)) {
                Some(pfx) => (pfx, name),
                None if alias == "types" => return Kind::Scalar("string".into()),
                None => return Kind::Other,
            },
            None => (pkg.prefix.clone(), ty),
        };
        let def = format!("{pfx}.{name}");
        if TIMES.contains(&def.as_str()) || OPAQUE.contains(&def.as_str()) {
            return Kind::Struct(def);
        }
        let Some(p) = pkgs.get(&pfx) else {
            return Kind::Other;
        };
        if p.structs.contains_key(name) {
            Kind::Struct(def)
        } else if let Some(base) = p.scalars.get(name) {
            Kind::Scalar(base.clone())
        } else if ["string", "bool"].contains(&name) || BUILTIN_ZERO.iter().any(|(b, _)| *b == name)
        {
            Kind::Scalar(name.to_string())
        } else {
            Kind::Other
        }
    };
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for pkg in pkgs.values() {
        for (name, fields) in &pkg.structs {
            let def = format!("{}.{name}", pkg.prefix);
            let mut rules = Vec::new();
            for f in fields {
                let (shape, base) = if let Some(t) = f.ty.strip_prefix("[]") {
                    if t == "byte" {
                        continue;
                    }
                    ("r", t.trim_start_matches('*'))
                } else if let Some(t) = f.ty.strip_prefix("map[") {
                    ("m", t.split_once(']').map(|(_, v)| v).unwrap_or(""))
                } else if let Some(t) = f.ty.strip_prefix('*') {
                    ("p", t)
                } else {
                    ("", f.ty.as_str())
                };
                let rule = match (shape, resolve(pkg, base)) {
                    (_, Kind::Struct(d)) if OPAQUE.contains(&d.as_str()) => continue,
                    ("", Kind::Struct(d)) if f.omitzero => json!([f.json, "p", d]),
                    ("", Kind::Struct(d)) if TIMES.contains(&d.as_str()) => {
                        json!([f.json, "t"])
                    }
                    ("", Kind::Struct(d)) if f.inline => json!([f.json, "i", d]),
                    ("", Kind::Struct(d)) => json!([f.json, "o", d]),
                    (_, Kind::Struct(d)) if TIMES.contains(&d.as_str()) => continue,
                    (s, Kind::Struct(d)) => {
                        // A nil slice or map without omitempty is written as null.
                        if s != "p" && !f.omitempty {
                            rules.push(json!([f.json, "n"]));
                        }
                        json!([f.json, s, d])
                    }
                    ("r" | "m", _) if !f.omitempty && !f.inline => json!([f.json, "n"]),
                    ("", Kind::Scalar(b)) if !f.inline => {
                        let zero = match b.as_str() {
                            "string" => json!(""),
                            "bool" => json!(false),
                            _ => json!(0),
                        };
                        json!([f.json, if f.omitempty { "e" } else { "z" }, zero])
                    }
                    _ => continue,
                };
                rules.push(rule);
            }
            if !rules.is_empty() {
                out.insert(def, rules);
            }
        }
    }
    // Keep only what can be reached from a definition with rules that matter (drop structs
    // whose only rules lead nowhere): a pass until nothing changes.
    loop {
        let keep: std::collections::HashSet<String> = out.keys().cloned().collect();
        let mut changed = false;
        for rules in out.values_mut() {
            let before = rules.len();
            rules.retain(|r| match r[1].as_str() {
                Some("p" | "r" | "m" | "i") => keep.contains(r[2].as_str().unwrap_or("")),
                _ => true,
            });
            changed |= rules.len() != before;
        }
        let before = out.len();
        out.retain(|_, r| !r.is_empty());
        if !changed && out.len() == before {
            break;
        }
    }
    let dest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kite-api/src/go_fields.json");
    let mut text = String::from("{\n");
    let n = out.len();
    for (i, (k, v)) in out.iter().enumerate() {
        text.push_str(&format!(
            "{}:{}{}\n",
            json!(k),
            Value::Array(v.clone()),
            if i + 1 < n { "," } else { "" }
        ));
    }
    text.push_str("}\n");
    std::fs::write(&dest, text)?;
    println!("wrote rules for {n} definitions to {}", dest.display());
    Ok(())
}
