//! Discovery documents, all derived from the registry: `/api`, `/apis`, per-group and
//! per-group/version lists (legacy discovery), and aggregated discovery (apidiscovery.k8s.io/v2)
//! for clients that ask for it, so `kubectl api-resources` takes two requests.

use kite_api::registry::{Registry, ResourceInfo};
use serde_json::{json, Value};

/// The media type of aggregated discovery responses.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an Accept header asks for aggregated discovery v2.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let p: Vec<&str> = part.split(';').map(str::trim).collect();
        p.contains(&"g=apidiscovery.k8s.io")
            && p.contains(&"v=v2")
            && p.contains(&"as=APIGroupDiscoveryList")
    })
}

/// A subresource: its name, verbs, and the (group, version, kind) it answers with.
struct Sub {
    name: &'static str,
    verbs: &'static [&'static str],
    kind: (&'static str, &'static str, &'static str),
}

fn subresources(ri: &ResourceInfo) -> Vec<Sub> {
    const RW: &[&str] = &["get", "patch", "update"];
    let mut out = Vec::new();
    if ri.status {
        out.push(Sub {
            name: "status",
            verbs: RW,
            kind: (ri.group, ri.version, ri.kind),
        });
    }
    if ri.scale {
        out.push(Sub {
            name: "scale",
            verbs: RW,
            kind: ("autoscaling", "v1", "Scale"),
        });
    }
    if ri.is("", "Pod") {
        out.push(Sub {
            name: "binding",
            verbs: &["create"],
            kind: ("", "v1", "Binding"),
        });
        out.push(Sub {
            name: "eviction",
            verbs: &["create"],
            kind: ("policy", "v1", "Eviction"),
        });
        out.push(Sub {
            name: "ephemeralcontainers",
            verbs: RW,
            kind: ("", "v1", "Pod"),
        });
        out.push(Sub {
            name: "resize",
            verbs: RW,
            kind: ("", "v1", "Pod"),
        });
    }
    for c in crate::connect::of(ri) {
        out.push(Sub {
            name: c.sub,
            verbs: c.verbs,
            kind: c.response,
        });
    }
    if ri.is("", "Namespace") {
        out.push(Sub {
            name: "finalize",
            verbs: &["update"],
            kind: ("", "v1", "Namespace"),
        });
    }
    out
}

/// `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_doc(name: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs[0],
    })
}

/// `/apis`.
pub fn api_group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|g| !g.name.is_empty())
        .map(|g| group_doc(g.name, &g.versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    let g = reg
        .groups()
        .into_iter()
        .find(|g| g.name == group && !group.is_empty())?;
    let mut doc = group_doc(g.name, &g.versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub fn api_resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for ri in reg.in_group_version(group, version) {
        let mut r = json!({
            "name": ri.plural,
            "singularName": ri.singular,
            "namespaced": ri.namespaced,
            "kind": ri.kind,
            "verbs": ri.verbs.names(),
        });
        if !ri.short_names.is_empty() {
            r["shortNames"] = json!(ri.short_names);
        }
        if !ri.categories.is_empty() {
            r["categories"] = json!(ri.categories);
        }
        resources.push(r);
        for Sub {
            name: sub,
            verbs,
            kind: (g, v, k),
        } in subresources(ri)
        {
            let mut s = json!({
                "name": format!("{}/{}", ri.plural, sub),
                "singularName": "",
                "namespaced": ri.namespaced,
                "kind": k,
                "verbs": verbs,
            });
            if g != ri.group || v != ri.version {
                s["group"] = json!(g);
                s["version"] = json!(v);
            }
            resources.push(s);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

fn aggregated_group(reg: &Registry, name: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = reg
                .in_group_version(name, v)
                .map(|ri| {
                    let mut r = json!({
                        "resource": ri.plural,
                        "responseKind": {"group": ri.group, "version": ri.version, "kind": ri.kind},
                        "scope": if ri.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": ri.singular,
                        "verbs": ri.verbs.names(),
                    });
                    if !ri.short_names.is_empty() {
                        r["shortNames"] = json!(ri.short_names);
                    }
                    if !ri.categories.is_empty() {
                        r["categories"] = json!(ri.categories);
                    }
                    let subs: Vec<Value> = subresources(ri)
                        .into_iter()
                        .map(|Sub { name: s, verbs, kind: (g, v, k) }| {
                            json!({"subresource": s, "responseKind": {"group": g, "version": v, "kind": k}, "verbs": verbs})
                        })
                        .collect();
                    if !subs.is_empty() {
                        r["subresources"] = json!(subs);
                    }
                    r
                })
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    let mut g = json!({"metadata": {"creationTimestamp": null}, "versions": vs});
    if !name.is_empty() {
        g["metadata"]["name"] = json!(name);
    }
    g
}

/// Aggregated discovery for `/api` (core only) or `/apis` (every named group).
pub fn aggregated(reg: &Registry, core: bool) -> Value {
    let items: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|g| g.name.is_empty() == core)
        .map(|g| aggregated_group(reg, g.name, &g.versions))
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_resources_and_subresources() {
        let reg = Registry::get();
        let doc = api_resource_list(reg, "", "v1").unwrap();
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"pods") && names.contains(&"pods/status"));
        let agg = aggregated(reg, false);
        assert!(agg["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["metadata"]["name"] == "apps"));
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json"));
    }
}
