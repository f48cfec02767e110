//! Node IPAM: gives each node a `spec.podCIDR(s)` carved from `--cluster-cidr` (a /24 each
//! by default; on a dual-stack cluster also an IPv6 /64 from its IPv6 range, upstream's
//! default mask). A range is free again once no node holds it, so deleting a node releases
//! it. One worker, so two nodes can never be handed the same range. A node that has its
//! podCIDRs keeps them: upstream's validation forbids changing them, so a cluster made
//! dual-stack later gives IPv6 ranges only to nodes that register after.
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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

const COMPONENT: &str = "node-ipam-controller";

pub fn start(ctx: Arc<Ctx>) {
    let mut families = vec![Ranges::new(
        ctx.opts.cluster_cidr.into(),
        ctx.opts.node_cidr_mask,
    )];
    if let Some(v6) = ctx.opts.cluster_cidr_v6 {
        families.push(Ranges::new(v6.into(), NODE_MASK_V6.max(v6.prefix_len())));
    }
    let ranges = match families.into_iter().collect::<Result<Vec<_>>>() {
        Ok(r) => Arc::new(Mutex::new(Families(r))),
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
        match n.spec.as_ref().filter(|s| s.pod_cidr.is_some()) {
            Some(spec) => r2.lock().unwrap().hold(&name, &node_cidrs(spec)),
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
                let cidrs = match next {
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
                    "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
                });
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                ranges.lock().unwrap().hold(&name, &cidrs);
                ctx.recorder(COMPONENT).event(
                    &*node,
                    NORMAL,
                    "CIDRAssignmentSucceeded",
                    format!("Node {name} got CIDR {}", cidrs.join(",")),
                );
                Ok(Action::AwaitChange)
            }
        },
    );
}

/// Each node's IPv6 range on a dual-stack cluster (upstream's `--node-cidr-mask-size-ipv6`
/// default).
const NODE_MASK_V6: u8 = 64;

/// A node's podCIDRs as its spec lists them.
fn node_cidrs(spec: &k8s_openapi::api::core::v1::NodeSpec) -> Vec<String> {
    match &spec.pod_cidrs {
        Some(l) if !l.is_empty() => l.clone(),
        _ => spec.pod_cidr.iter().cloned().collect(),
    }
}

/// The ranges of each family the cluster has (IPv4 first), handed out together.
#[derive(Debug)]
pub struct Families(Vec<Ranges>);

impl Families {
    fn hold(&mut self, node: &str, cidrs: &[String]) {
        for r in &mut self.0 {
            if let Some(c) = cidrs.iter().find(|c| r.index(c).is_some()) {
                r.hold(node, c);
            }
        }
    }

    fn release(&mut self, node: &str) {
        self.0.iter_mut().for_each(|r| r.release(node));
    }

    fn holder_of(&self, node: &str) -> Option<String> {
        self.0.iter().find_map(|r| r.holder_of(node))
    }

    /// One free range of each family.
    fn next_free(&self) -> Result<Vec<String>> {
        self.0.iter().map(Ranges::next_free).collect()
    }
}

/// The node ranges of one cluster CIDR and which node holds each, by index: range `i` is
/// the `i`-th `/mask` subnet of the cluster CIDR.
#[derive(Debug)]
pub struct Ranges {
    cluster: ipnet::IpNet,
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
    pub fn new(cluster: ipnet::IpNet, mask: u8) -> Result<Self> {
        if mask < cluster.prefix_len() || mask > cluster.max_prefix_len() {
            bail!("cluster CIDR {cluster} cannot hold /{mask} node ranges");
        }
        Ok(Ranges {
            cluster,
            mask,
            // Indices are u32: an IPv6 range of more than 2^32 node ranges uses its first 2^32.
            count: 1u64 << (mask - cluster.prefix_len()).min(32),
            taken: BTreeMap::new(),
            by_node: HashMap::new(),
            low: 0,
        })
    }

    fn shift(&self) -> u32 {
        u32::from(self.cluster.max_prefix_len() - self.mask)
    }

    fn number(addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// The index of `cidr` if it is one of our ranges.
    fn index(&self, cidr: &str) -> Option<u32> {
        let net: ipnet::IpNet = cidr.parse().ok()?;
        if net.prefix_len() != self.mask || !self.cluster.contains(&net) {
            return None;
        }
        let off = Self::number(net.network()) - Self::number(self.cluster.network());
        u32::try_from(off.checked_shr(self.shift()).unwrap_or(0)).ok()
    }

    fn cidr(&self, i: u32) -> String {
        let off = u128::from(i).checked_shl(self.shift()).unwrap_or(0);
        let n = Self::number(self.cluster.network()) + off;
        let addr: IpAddr = match self.cluster {
            ipnet::IpNet::V4(_) => Ipv4Addr::from(n as u32).into(),
            ipnet::IpNet::V6(_) => Ipv6Addr::from(n).into(),
        };
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
    fn dual_stack_nodes_get_a_range_of_each_family() {
        let mut f = Families(vec![
            ranges("10.42.0.0/16", 24),
            ranges("fd42::/56", NODE_MASK_V6),
        ]);
        assert_eq!(f.next_free().unwrap(), ["10.42.0.0/24", "fd42::/64"]);
        f.hold("a", &["10.42.0.0/24".into(), "fd42::/64".into()]);
        assert_eq!(f.next_free().unwrap(), ["10.42.1.0/24", "fd42:0:0:1::/64"]);
        // A node from before the cluster was dual-stack holds only its IPv4 range.
        f.hold("b", &["10.42.1.0/24".into()]);
        assert_eq!(f.next_free().unwrap(), ["10.42.2.0/24", "fd42:0:0:1::/64"]);
        f.release("a");
        assert_eq!(f.next_free().unwrap(), ["10.42.0.0/24", "fd42::/64"]);
        assert_eq!(f.holder_of("b").as_deref(), Some("10.42.1.0/24"));
        let mut full = Families(vec![ranges("10.42.0.0/16", 24), ranges("fd42::/64", 64)]);
        full.hold("a", &["fd42::/64".into()]);
        assert!(full.next_free().is_err());
        // A whole /0 of IPv6 ranges: indices stay in u32.
        let r = ranges("::/0", 64);
        assert_eq!(r.next_free().unwrap(), "::/64");
    }

    #[test]
    fn a_full_cluster_cidr_is_an_error() {
        let mut r = ranges("10.42.0.0/23", 24);
        r.hold("a", "10.42.0.0/24");
        r.hold("b", "10.42.1.0/24");
        let e = r.next_free().unwrap_err().to_string();
        assert_eq!(e, "no /24 range left in cluster CIDR 10.42.0.0/23");
        assert!(Ranges::new("10.42.0.0/24".parse().unwrap(), 16).is_err());
        assert!(Ranges::new("fd42::/56".parse().unwrap(), 129).is_err());
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
