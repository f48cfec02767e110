//! Node IPAM: gives each node a `spec.podCIDR(s)` carved from `--cluster-cidr` (a /24 each
//! by default). A range is free again once no node holds it, so deleting a node releases
//! it. One worker, so two nodes can never be handed the same range.
//!
//! The taken ranges live in [`Ranges`], kept current by the node informer's handler (and by
//! the worker for ranges it has just handed out), so an allocation costs a few map
//! operations, not a scan of every node: with thousands of nodes, and more nodes than the
//! cluster CIDR holds, each retry would otherwise rescan them all.

use crate::Ctx;
use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::Node;
use kite_runtime::events::{NORMAL, WARNING};
use kite_runtime::queue::run_workers_after;
use kite_runtime::{Action, Change, WorkQueue};
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

const COMPONENT: &str = "node-ipam-controller";

pub fn start(ctx: Arc<Ctx>) {
    let ranges = match Ranges::new(ctx.opts.cluster_cidr, ctx.opts.node_cidr_mask) {
        Ok(r) => Arc::new(Mutex::new(r)),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "node IPAM is off");
            return;
        }
    };
    let nodes = ctx.informers.get::<Node>();
    let q: WorkQueue<String> = WorkQueue::new();
    let (q2, r2) = (q.clone(), ranges.clone());
    // The handler first sees every cached node as added, then every change.
    nodes.add_handler(move |c: &Change<Node>| {
        let n = c.object();
        let name = n.metadata.name.clone().unwrap_or_default();
        if let Change::Deleted(_) = c {
            r2.lock().unwrap().release(&name);
            return;
        }
        match n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
            Some(cidr) => r2.lock().unwrap().hold(&name, cidr),
            None => q2.add(name),
        }
    });
    run_workers_after(
        nodes.synced_future(),
        COMPONENT,
        q,
        1,
        move |name: String| {
            let (ctx, nodes, ranges) = (ctx.clone(), nodes.clone(), ranges.clone());
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
                let next = {
                    let r = ranges.lock().unwrap();
                    if r.holder_of(&name).is_some() {
                        // Assigned already; the cache has not caught up with it yet.
                        return Ok(Action::AwaitChange);
                    }
                    r.next_free()
                };
                let cidr = match next {
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
                ranges.lock().unwrap().hold(&name, &cidr);
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

/// The node ranges of one cluster CIDR and which node holds each, by index: range `i` is
/// the `i`-th `/mask` subnet of the cluster CIDR.
#[derive(Debug)]
pub struct Ranges {
    cluster: ipnet::Ipv4Net,
    mask: u8,
    count: u64,
    /// Taken ranges, with how many nodes claim each (normally one; a user may set the same
    /// podCIDR on two nodes, and the range stays taken until both are gone).
    taken: BTreeMap<u32, u32>,
    by_node: HashMap<String, u32>,
    /// The lowest free index: every range below it is taken, so allocating costs no walk
    /// over the taken ranges (nodes mostly fill the cluster CIDR from its start).
    low: u32,
}

impl Ranges {
    pub fn new(cluster: ipnet::Ipv4Net, mask: u8) -> Result<Self> {
        if mask < cluster.prefix_len() || mask > 32 {
            bail!("cluster CIDR {cluster} cannot hold /{mask} node ranges");
        }
        Ok(Ranges {
            cluster,
            mask,
            count: 1u64 << (mask - cluster.prefix_len()),
            taken: BTreeMap::new(),
            by_node: HashMap::new(),
            low: 0,
        })
    }

    fn shift(&self) -> u32 {
        32 - u32::from(self.mask)
    }

    /// The index of `cidr` if it is one of our ranges.
    fn index(&self, cidr: &str) -> Option<u32> {
        let net: ipnet::Ipv4Net = cidr.parse().ok()?;
        if net.prefix_len() != self.mask || !self.cluster.contains(&net) {
            return None;
        }
        let off = u64::from(u32::from(net.network()) - u32::from(self.cluster.network()));
        Some((off >> self.shift()) as u32)
    }

    fn cidr(&self, i: u32) -> String {
        let off = (u64::from(i) << self.shift()) as u32;
        let addr = Ipv4Addr::from(u32::from(self.cluster.network()) + off);
        format!("{addr}/{}", self.mask)
    }

    /// Records that `node` holds `cidr` (ignored when it is not one of our ranges).
    pub fn hold(&mut self, node: &str, cidr: &str) {
        let Some(i) = self.index(cidr) else { return };
        if self.by_node.get(node) == Some(&i) {
            return;
        }
        self.release(node);
        self.by_node.insert(node.to_string(), i);
        *self.taken.entry(i).or_default() += 1;
        while self.taken.contains_key(&self.low) {
            self.low += 1;
        }
    }

    /// Frees the range `node` held, unless another node holds it too.
    pub fn release(&mut self, node: &str) {
        let Some(i) = self.by_node.remove(node) else {
            return;
        };
        if let Some(n) = self.taken.get_mut(&i) {
            *n -= 1;
            if *n == 0 {
                self.taken.remove(&i);
                self.low = self.low.min(i);
            }
        }
    }

    /// The range `node` holds, if any.
    pub fn holder_of(&self, node: &str) -> Option<String> {
        self.by_node.get(node).map(|&i| self.cidr(i))
    }

    /// The lowest free range.
    pub fn next_free(&self) -> Result<String> {
        // Taken holds distinct indices below `count`, so as many as `count` means full, known
        // without a walk (a full CIDR is retried for every node that still wants a range).
        if self.taken.len() as u64 >= self.count {
            bail!(
                "no /{} range left in cluster CIDR {}",
                self.mask,
                self.cluster
            );
        }
        Ok(self.cidr(self.low))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(cluster: &str, mask: u8) -> Ranges {
        Ranges::new(cluster.parse().unwrap(), mask).unwrap()
    }

    #[test]
    fn hands_out_free_ranges_in_order() {
        let mut r = ranges("10.42.0.0/16", 24);
        assert_eq!(r.next_free().unwrap(), "10.42.0.0/24");
        r.hold("a", "10.42.0.0/24");
        assert_eq!(r.next_free().unwrap(), "10.42.1.0/24");
        r.hold("c", "10.42.2.0/24");
        assert_eq!(r.next_free().unwrap(), "10.42.1.0/24");
        r.hold("b", "10.42.1.0/24");
        assert_eq!(r.next_free().unwrap(), "10.42.3.0/24");
        assert_eq!(r.holder_of("c").as_deref(), Some("10.42.2.0/24"));
    }

    #[test]
    fn a_deleted_node_releases_its_range() {
        let mut r = ranges("10.42.0.0/16", 24);
        r.hold("a", "10.42.0.0/24");
        r.hold("b", "10.42.1.0/24");
        r.release("a");
        assert_eq!(r.next_free().unwrap(), "10.42.0.0/24");
        assert_eq!(r.holder_of("a"), None);
        r.release("nobody");
        assert_eq!(r.next_free().unwrap(), "10.42.0.0/24");
    }

    #[test]
    fn a_range_two_nodes_claim_stays_taken_until_both_go() {
        let mut r = ranges("10.42.0.0/16", 24);
        r.hold("a", "10.42.0.0/24");
        r.hold("b", "10.42.0.0/24");
        r.release("a");
        assert_eq!(r.next_free().unwrap(), "10.42.1.0/24");
        r.release("b");
        assert_eq!(r.next_free().unwrap(), "10.42.0.0/24");
    }

    #[test]
    fn ranges_from_elsewhere_are_ignored() {
        let mut r = ranges("10.42.0.0/16", 24);
        r.hold("a", "10.99.0.0/24");
        r.hold("b", "10.42.0.0/25");
        r.hold("d", "not a cidr");
        assert_eq!(r.next_free().unwrap(), "10.42.0.0/24");
        // Host bits set: it still covers 10.42.0.0/24, which must not be handed out again.
        r.hold("c", "10.42.0.128/24");
        assert_eq!(r.next_free().unwrap(), "10.42.1.0/24");
    }

    #[test]
    fn a_full_cluster_cidr_is_an_error() {
        let mut r = ranges("10.42.0.0/23", 24);
        r.hold("a", "10.42.0.0/24");
        r.hold("b", "10.42.1.0/24");
        let e = r.next_free().unwrap_err().to_string();
        assert_eq!(e, "no /24 range left in cluster CIDR 10.42.0.0/23");
        assert!(Ranges::new("10.42.0.0/24".parse().unwrap(), 16).is_err());
    }

    #[test]
    fn whole_space_and_host_ranges() {
        let mut r = ranges("0.0.0.0/0", 1);
        assert_eq!(r.next_free().unwrap(), "0.0.0.0/1");
        r.hold("a", "0.0.0.0/1");
        assert_eq!(r.next_free().unwrap(), "128.0.0.0/1");
        let mut r = ranges("10.0.0.0/31", 32);
        r.hold("a", "10.0.0.0/32");
        assert_eq!(r.next_free().unwrap(), "10.0.0.1/32");
    }
}
