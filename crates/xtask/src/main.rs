//! Developer tasks: regenerate the data files kite builds from upstream's sources. Both take
//! the `staging/src/k8s.io` folder of the Kubernetes tree kite serves (the conformance kit
//! extracts one to `/var/tmp/kite-conformance/src/kubernetes`).
//!
//! - `cargo run -p xtask -- gen-proto <kubernetes/staging/src/k8s.io>` regenerates
//!   `crates/kite-api/src/proto/fields.json` from upstream's `generated.proto` files (see
//!   `proto_fields.rs`).
//! - `cargo run -p xtask -- gen-go-fields <kubernetes/staging/src/k8s.io>` regenerates
//!   `crates/kite-api/src/go_fields.json` from upstream's Go API types (see `go_fields.rs`).

use anyhow::{bail, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

mod go_fields;
mod proto_fields;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, src] if cmd == "gen-proto" => proto_fields::generate(Path::new(src), &definitions()),
        [cmd, src] if cmd == "gen-go-fields" => go_fields::generate(Path::new(src)),
        _ => bail!(
            "usage: cargo run -p xtask -- gen-proto|gen-go-fields <kubernetes/staging/src/k8s.io>"
        ),
    }
}

/// The proto message name for an OpenAPI definition name (or prefix):
/// `io.k8s.apiextensions-apiserver.pkg…` → `apiextensions_apiserver.pkg…`.
fn message_of(definition: &str) -> String {
    definition
        .trim_start_matches("io.k8s.")
        .replacen("apiextensions-apiserver.", "apiextensions_apiserver.", 1)
        .replacen("kube-aggregator.", "kube_aggregator.", 1)
}

/// The OpenAPI definition name for a proto message name: the inverse of [`message_of`].
fn definition_of(message: &str) -> String {
    format!(
        "io.k8s.{}",
        message
            .replacen("apiextensions_apiserver.", "apiextensions-apiserver.", 1)
            .replacen("kube_aggregator.", "kube-aggregator.", 1)
    )
}

/// The OpenAPI definitions of every served kind (for JSON field names).
fn definitions() -> BTreeMap<String, Value> {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    for ri in &kite_api::Registry::get().resources {
        (ri.schema)(&mut generator);
    }
    generator.take_definitions(true).into_iter().collect()
}
