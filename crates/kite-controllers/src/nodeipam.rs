//! Node IPAM: gives each node a `spec.podCIDR(s)` carved from `--cluster-cidr` (a /24 each
//! by default). A range is free again once no node holds it, so deleting a node releases
//! it. One worker, so two nodes can never be handed the same range.

use crate::Ctx;
use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::Node;
use kite_runtime::events::{NORMAL, WARNING};
use kite_runtime::queue::run_workers_after;
use kite_runtime::{Action, Change, WorkQueue};
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

const COMPONENT: &str = "node-ipam-controller";

pub fn start(ctx: Arc<Ctx>) {
    let nodes = ctx.informers.get::<Node>();
    let q: WorkQueue<String> = WorkQueue::new();
    let q2 = q.clone();
    nodes.add_handler(move |c: &Change<Node>| {
        let n = c.object();
        let has = n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some();
        if !has && !matches!(c, Change::Deleted(_)) {
            q2.add(n.metadata.name.clone().unwrap_or_default());
        }
    });
    // Ranges handed out, by node, whose node update the cache has not shown yet.
    let pending: Arc<Mutex<std::collections::HashMap<String, String>>> = Arc::default();
    run_workers_after(
        nodes.synced_future(),
        COMPONENT,
        q,
        1,
        move |name: String| {
            let (ctx, nodes, pending) = (ctx.clone(), nodes.clone(), pending.clone());
            async move {
                let Some(node) = nodes.get("", &name) else {
                    return Ok(Action::AwaitChange);
                };
                if node
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidr.as_ref())
                    .is_some()
                {
                    return Ok(Action::AwaitChange);
                }
                let mut used: HashSet<String> = nodes
                    .list()
                    .iter()
                    .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
                    .collect();
                {
                    let mut p = pending.lock().unwrap();
                    p.retain(|_, c| !used.contains(c));
                    if p.contains_key(&name) {
                        // Assigned already; the cache has not caught up with it yet.
                        return Ok(Action::AwaitChange);
                    }
                    used.extend(p.values().cloned());
                }
                let cidr = match next_free(ctx.opts.cluster_cidr, ctx.opts.node_cidr_mask, &used) {
                    Ok(c) => c,
                    Err(e) => {
                        ctx.recorder(COMPONENT).event(
                            &*node,
                            WARNING,
                            "CIDRNotAvailable",
                            format!("Node {name} status is now: CIDRNotAvailable"),
                        );
                        return Err(e);
                    }
                };
                let api: Api<Node> = Api::all(ctx.client.clone());
                // Conditioned on the version seen without a podCIDR: a range is given once.
                let patch = json!({
                    "metadata": {"resourceVersion": node.metadata.resource_version},
                    "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
                });
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                pending.lock().unwrap().insert(name.clone(), cidr.clone());
                ctx.recorder(COMPONENT).event(
                    &*node,
                    NORMAL,
                    "CIDRAssignmentSucceeded",
                    format!("Node {name} got CIDR {cidr}"),
                );
                Ok(Action::AwaitChange)
            }
        },
    );
}

/// The first `/mask` range of `cluster` not in `used`.
pub fn next_free(cluster: ipnet::Ipv4Net, mask: u8, used: &HashSet<String>) -> Result<String> {
    let Ok(subnets) = cluster.subnets(mask) else {
        bail!("cluster CIDR {cluster} cannot hold /{mask} node ranges");
    };
    for s in subnets {
        let s = s.to_string();
        if !used.contains(&s) {
            return Ok(s);
        }
    }
    bail!("no /{mask} range left in cluster CIDR {cluster}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_free_ranges_in_order() {
        let c: ipnet::Ipv4Net = "10.42.0.0/16".parse().unwrap();
        let mut used = HashSet::new();
        assert_eq!(next_free(c, 24, &used).unwrap(), "10.42.0.0/24");
        used.insert("10.42.0.0/24".to_string());
        assert_eq!(next_free(c, 24, &used).unwrap(), "10.42.1.0/24");
        let small: ipnet::Ipv4Net = "10.42.0.0/24".parse().unwrap();
        let full: HashSet<String> = ["10.42.0.0/24".to_string()].into();
        assert!(next_free(small, 24, &full).is_err());
    }
}
