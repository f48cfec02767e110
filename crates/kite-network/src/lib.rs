//! The pod network between nodes, the part flannel plays in K3s: every node reaches the
//! other nodes' podCIDRs with no NAT, following the Node objects (a node that joins gets
//! routes everywhere within a second; one that is deleted loses them).
//!
//! Backends (`--network-backend`, K3s's `--flannel-backend`):
//! - `host-gw`: a route to each other node's podCIDR via its node IP (nodes on one L2
//!   segment).
//! - `vxlan`: a `kite.1` VXLAN device (VNI 1, UDP 8472 as flannel) whose MTU is its
//!   link's less 50; per other node a forwarding entry (its VTEP MAC → its node IP), a
//!   permanent neighbour (its podCIDR's network address → that MAC) and a route to its
//!   podCIDR via that address, on-link on `kite.1`.
//! - `wireguard-native`: a `kite-wg` WireGuard device, a peer and a route per other node
//!   (see [`wireguard`]).
//! - `none`: nothing (a CNI of the user's own connects the nodes).
//!
//! On a dual-stack cluster each node's IPv6 podCIDR is routed beside its IPv4 one: vxlan
//! and wireguard-native carry IPv6 pod traffic through the same tunnel over the nodes'
//! IPv4 addresses (a neighbour for the peer's IPv6 range on `kite.1`, or the range in the
//! peer's allowed IPs); host-gw routes it via the peer's IPv6 InternalIP, so its nodes
//! need one (`--node-ip v4,v6`), and a peer without one gets no IPv6 route.
//!
//! Pods' interfaces get the node link's MTU less the backend's tunnel
//! ([`Backend::overhead`]; the kubelet sets it on their veths), as flannel's do.
//!
//! Each node publishes what the others need in its annotations (`network.kite.io/*`:
//! backend, public IP, VTEP MAC, WireGuard public key), as flannel does in `flannel.alpha.coreos.com/*`, and
//! reports `NetworkUnavailable=False` once its routes are in place. Routes kite adds carry
//! their own protocol number ([`RTPROT_KITE`]) so that they are told from everyone
//! else's and removed when their node goes.

pub mod netlink;
pub mod wireguard;

use anyhow::{Context, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use kite_runtime::informer::Informers;
use kube::api::{Api, Patch, PatchParams};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

pub const ANN_BACKEND: &str = "network.kite.io/backend-type";
pub const ANN_PUBLIC_IP: &str = "network.kite.io/public-ip";
/// Set by the user to route to the node at another address (flannel's
/// `public-ip-overwrite`, for nodes behind NAT or with several interfaces).
pub const ANN_PUBLIC_IP_OVERWRITE: &str = "network.kite.io/public-ip-overwrite";
pub const ANN_VTEP_MAC: &str = "network.kite.io/vtep-mac";
pub const ANN_WG_KEY: &str = "network.kite.io/wireguard-public-key";
/// The protocol number of kite's routes (`ip route show proto 107`).
pub const RTPROT_KITE: u8 = 107;
pub const VXLAN_DEVICE: &str = "kite.1";
pub const VXLAN_VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;
/// VXLAN over IPv4 costs 50 bytes of each packet.
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    HostGw,
    Vxlan,
    WireguardNative,
    None,
}

impl Backend {
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "host-gw" => Some(Backend::HostGw),
            "vxlan" => Some(Backend::Vxlan),
            "wireguard-native" => Some(Backend::WireguardNative),
            "none" => Some(Backend::None),
            _ => None,
        }
    }

    /// What the backend's tunnel costs each packet: pods' interfaces get the node link's
    /// MTU less this, as flannel gives them, so that nothing they send needs fragmenting
    /// or a path-MTU round trip.
    pub fn overhead(self) -> u32 {
        match self {
            Backend::Vxlan => VXLAN_OVERHEAD,
            Backend::WireguardNative => wireguard::OVERHEAD,
            Backend::HostGw | Backend::None => 0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
            Backend::WireguardNative => "wireguard-native",
            Backend::None => "none",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub node_name: String,
    /// The address other nodes reach this one at (its InternalIP).
    pub node_ip: Ipv4Addr,
    pub cluster_cidr: Ipv4Net,
    /// The pods' IPv6 range of a dual-stack cluster.
    pub cluster_cidr_v6: Option<Ipv6Net>,
    pub backend: Backend,
    /// Where the node keeps its WireGuard key (`<data-dir>/agent/wireguard`).
    pub key_dir: std::path::PathBuf,
}

/// What this node needs to reach one other node's pods.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub name: String,
    pub pod_cidr: Ipv4Net,
    pub ip: Ipv4Addr,
    /// Its IPv6 podCIDR (a dual-stack cluster).
    pub pod_cidr_v6: Option<Ipv6Net>,
    /// Its IPv6 InternalIP, if it has one (host-gw's next hop for IPv6).
    pub ip6: Option<Ipv6Addr>,
    /// The VXLAN device's MAC of that node (vxlan only).
    pub mac: Option<[u8; 6]>,
    /// That node's WireGuard public key (wireguard-native only).
    pub wg_key: Option<String>,
}

/// The other nodes' entries, from the Node objects (pure: unit-tested).
pub fn peers(
    me: &str,
    nodes: &[Arc<Node>],
    cluster: Ipv4Net,
    cluster_v6: Option<Ipv6Net>,
    backend: Backend,
) -> Vec<Peer> {
    let mut out = Vec::new();
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        if name == me || n.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(cidr) = n
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(|c| c.parse::<Ipv4Net>().ok())
        else {
            continue;
        };
        if !cluster.contains(&cidr) {
            continue;
        }
        let ann = n.metadata.annotations.clone().unwrap_or_default();
        let ip = ann
            .get(ANN_PUBLIC_IP_OVERWRITE)
            .and_then(|v| v.parse().ok())
            .or_else(|| ann.get(ANN_PUBLIC_IP).and_then(|v| v.parse().ok()))
            .or_else(|| internal_ip(n));
        let Some(ip) = ip else { continue };
        let mac = ann.get(ANN_VTEP_MAC).and_then(|m| parse_mac(m));
        let wg_key = ann.get(ANN_WG_KEY).filter(|k| valid_key(k)).cloned();
        // Not announced yet: its device is not up, traffic would go nowhere.
        if (backend == Backend::Vxlan && mac.is_none())
            || (backend == Backend::WireguardNative && wg_key.is_none())
        {
            continue;
        }
        let spec = n.spec.as_ref();
        let pod_cidr_v6 = cluster_v6.and_then(|c6| {
            spec?
                .pod_cidrs
                .iter()
                .flatten()
                .filter_map(|c| c.parse::<Ipv6Net>().ok())
                .find(|c| c6.contains(c))
        });
        out.push(Peer {
            name,
            pod_cidr: cidr,
            ip,
            pod_cidr_v6,
            ip6: internal_ip6(n),
            mac,
            wg_key,
        });
    }
    out.sort();
    out
}

/// A WireGuard key as `wg` prints it: 32 bytes in base64 (44 characters, one `=`). An
/// annotation is the node's to write, so nothing else reaches `wg`'s configuration.
fn valid_key(k: &str) -> bool {
    k.len() == 44
        && k.ends_with('=')
        && k[..43]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn internal_ip(n: &Node) -> Option<Ipv4Addr> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .and_then(|a| a.address.parse().ok())
}

fn internal_ip6(n: &Node) -> Option<Ipv6Addr> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// A node's IPv6 podCIDR inside the cluster's IPv6 range.
fn own_v6(node: &Node, cluster_v6: Option<Ipv6Net>) -> Option<Ipv6Net> {
    let c6 = cluster_v6?;
    node.spec
        .as_ref()?
        .pod_cidrs
        .iter()
        .flatten()
        .filter_map(|c| c.parse::<Ipv6Net>().ok())
        .find(|c| c6.contains(c))
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// This node's own ranges, and the cluster's IPv6 one: what routing leaves out.
#[derive(Debug, Clone, Copy)]
pub struct Own {
    pub v4: Ipv4Net,
    pub v6: Option<Ipv6Net>,
    pub cluster_v6: Option<Ipv6Net>,
}

impl Own {
    /// The peer's IPv6 range, if this cluster routes one to it.
    pub fn peer_v6(&self, p: &Peer) -> Option<Ipv6Net> {
        let c6 = self.cluster_v6?;
        p.pod_cidr_v6
            .filter(|n| Some(*n) != self.v6 && c6.contains(n))
    }
}

/// Runs the node's side of the pod network until an error.
pub async fn run(client: kube::Client, opts: Options) -> Result<()> {
    if opts.backend == Backend::None {
        tracing::info!("pod network between nodes: none (left to the user's CNI)");
        return std::future::pending().await;
    }
    let nodes_api: Api<Node> = Api::all(client.clone());
    // This node's podCIDR (given by the node IPAM controller after it registers).
    let (own_cidr, own_cidr_v6) = loop {
        let me = nodes_api.get_opt(&opts.node_name).await?;
        if let Some(c) = me
            .as_ref()
            .and_then(|n| n.spec.as_ref()?.pod_cidr.as_deref())
            .and_then(|c| c.parse::<Ipv4Net>().ok())
        {
            let v6 = me.as_ref().and_then(|n| own_v6(n, opts.cluster_cidr_v6));
            break (c, v6);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let own = Own {
        v4: own_cidr,
        v6: own_cidr_v6,
        cluster_v6: opts.cluster_cidr_v6,
    };
    let mac = match opts.backend {
        Backend::Vxlan => Some(
            netlink::ensure_vxlan(opts.node_ip, &own)
                .await
                .context("setting up the kite.1 VXLAN device")?,
        ),
        _ => {
            netlink::remove_vxlan().await?;
            None
        }
    };
    let wg = match opts.backend {
        Backend::WireguardNative => {
            let (key, public) = wireguard::ensure_key(&opts.key_dir).await?;
            wireguard::ensure_device(opts.node_ip, own_cidr, &key)
                .await
                .context("setting up the kite-wg WireGuard device")?;
            Some((key, public))
        }
        _ => {
            wireguard::remove_device().await?;
            None
        }
    };
    let mut ann = BTreeMap::new();
    ann.insert(ANN_BACKEND.to_string(), opts.backend.name().to_string());
    ann.insert(ANN_PUBLIC_IP.to_string(), opts.node_ip.to_string());
    if let Some(m) = &mac {
        ann.insert(ANN_VTEP_MAC.to_string(), format_mac(m));
    }
    if let Some((_, public)) = &wg {
        ann.insert(ANN_WG_KEY.to_string(), public.clone());
    }
    let patch = serde_json::json!({"metadata": {"annotations": ann}});
    nodes_api
        .patch(
            &opts.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .context("announcing this node's network")?;
    tracing::info!(
        backend = opts.backend.name(),
        pod_cidr = %own_cidr,
        "pod network between nodes is up"
    );
    let informers = Informers::new(client);
    let nodes = informers.get::<Node>();
    let wake = Arc::new(tokio::sync::Notify::new());
    nodes.wake_on_change(&wake);
    informers.synced().await;
    let mut applied: Option<Vec<Peer>> = None;
    let mut last_report = None;
    loop {
        let want = peers(
            &opts.node_name,
            &nodes.list(),
            opts.cluster_cidr,
            opts.cluster_cidr_v6,
            opts.backend,
        );
        if applied.as_ref() != Some(&want) {
            let r = match opts.backend {
                Backend::HostGw => netlink::sync_host_gw(&want, opts.cluster_cidr, &own).await,
                Backend::Vxlan => netlink::sync_vxlan(&want, opts.cluster_cidr, &own).await,
                Backend::WireguardNative => {
                    let key = &wg.as_ref().expect("made above").0;
                    wireguard::sync(&want, opts.cluster_cidr, &own, key).await
                }
                Backend::None => Ok(()),
            };
            match r {
                Ok(()) => {
                    tracing::info!(peers = want.len(), "routes to other nodes' pods in place");
                    applied = Some(want);
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "routing to other nodes' pods");
                    applied = None;
                }
            }
        }
        // Reported again whenever the node's condition says otherwise (a node object made
        // again, or a status written whole by someone else).
        let shown = reported_shown(&nodes, &opts.node_name);
        // (At most every 2 s: a status written in between may hide ours for a moment.)
        if applied.is_some()
            && !shown
            && last_report.is_none_or(|t: std::time::Instant| t.elapsed() > Duration::from_secs(2))
        {
            report_up(&nodes_api, &opts).await;
            last_report = Some(std::time::Instant::now());
        }
        // A change wakes at once; the timer re-checks what someone else may have
        // removed (a route deleted by hand comes back).
        tokio::select! {
            _ = wake.notified() => {
                // Coalesce a burst of node updates (heartbeats of many nodes).
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ = tokio::time::sleep(Duration::from_secs(30)) => { applied = None; }
            // Until the condition shows, look again soon.
            _ = tokio::time::sleep(Duration::from_secs(2)), if last_report.is_some() && !reported_shown(&nodes, &opts.node_name) => {}
        }
    }
}

fn reported_shown(nodes: &kite_runtime::informer::Informer<Node>, name: &str) -> bool {
    nodes
        .get("", name)
        .and_then(|n| n.status.clone())
        .and_then(|st| st.conditions)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "NetworkUnavailable" && c.status == "False")
        })
}

/// Sets the node's NetworkUnavailable condition to False, as flannel does.
async fn report_up(api: &Api<Node>, opts: &Options) -> bool {
    let now = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": "NetworkUnavailable",
        "status": "False",
        "reason": "KiteIsUp",
        "message": format!("kite's {} network is running on this node", opts.backend.name()),
        "lastTransitionTime": now,
        "lastHeartbeatTime": now,
    }]}});
    match api
        .patch_status(
            &opts.node_name,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(error = %e, "reporting NetworkUnavailable=False");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(name: &str, cidr: Option<&str>, ip: &str, mac: Option<&str>) -> Arc<Node> {
        let mut ann = BTreeMap::new();
        if let Some(m) = mac {
            ann.insert(ANN_VTEP_MAC.to_string(), m.to_string());
        }
        Arc::new(Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                annotations: Some(ann),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(String::from),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.into(),
                }]),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn peers_are_the_other_nodes_with_a_range_and_an_address() {
        let cluster: Ipv4Net = "10.42.0.0/16".parse().unwrap();
        let nodes = vec![
            node(
                "me",
                Some("10.42.0.0/24"),
                "10.0.0.1",
                Some("aa:bb:cc:dd:ee:01"),
            ),
            node(
                "b",
                Some("10.42.1.0/24"),
                "10.0.0.2",
                Some("aa:bb:cc:dd:ee:02"),
            ),
            node("c", None, "10.0.0.3", None),
            node("d", Some("10.99.0.0/24"), "10.0.0.4", None),
            node("e", Some("10.42.2.0/24"), "10.0.0.5", None),
        ];
        let hg = peers("me", &nodes, cluster, None, Backend::HostGw);
        assert_eq!(
            hg.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            vec!["b", "e"]
        );
        assert_eq!(hg[0].ip, Ipv4Addr::new(10, 0, 0, 2));
        // The overwrite annotation wins over what the node announces.
        let mut b = (*nodes[1]).clone();
        b.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANN_PUBLIC_IP_OVERWRITE.into(), "192.0.2.9".into());
        let over = peers("me", &[Arc::new(b)], cluster, None, Backend::HostGw);
        assert_eq!(over[0].ip, Ipv4Addr::new(192, 0, 2, 9));
        // vxlan needs the peer's device MAC.
        let vx = peers("me", &nodes, cluster, None, Backend::Vxlan);
        assert_eq!(vx.len(), 1);
        assert_eq!(vx[0].mac, Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x02]));
    }

    #[test]
    fn wireguard_peers_need_a_well_formed_key() {
        let cluster: Ipv4Net = "10.42.0.0/16".parse().unwrap();
        let with_key = |k: &str| {
            let mut n = (*node("b", Some("10.42.1.0/24"), "10.0.0.2", None)).clone();
            n.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(ANN_WG_KEY.into(), k.into());
            Arc::new(n)
        };
        let good = "NqUdqqJAIP7P8E0tdcSymFzhrBzaR2bK2xh75bhHlBs=";
        let ps = peers(
            "me",
            &[with_key(good)],
            cluster,
            None,
            Backend::WireguardNative,
        );
        assert_eq!(ps[0].wg_key.as_deref(), Some(good));
        // A value that would smuggle lines into wg's configuration is no key.
        let bad = "NqUdqqJAIP7P8E0tdcSymFzhrBzaR2bK2xh75bh\nAl=";
        assert!(peers(
            "me",
            &[with_key(bad)],
            cluster,
            None,
            Backend::WireguardNative
        )
        .is_empty());
        assert!(peers(
            "me",
            &[node("b", Some("10.42.1.0/24"), "10.0.0.2", None)],
            cluster,
            None,
            Backend::WireguardNative
        )
        .is_empty());
    }

    #[test]
    fn dual_stack_peers_carry_their_ipv6_range_and_address() {
        let cluster: Ipv4Net = "10.42.0.0/16".parse().unwrap();
        let c6: Ipv6Net = "fd42::/56".parse().unwrap();
        let mut b = (*node("b", Some("10.42.1.0/24"), "10.0.0.2", None)).clone();
        b.spec.as_mut().unwrap().pod_cidrs =
            Some(vec!["10.42.1.0/24".into(), "fd42:0:0:1::/64".into()]);
        b.status
            .as_mut()
            .unwrap()
            .addresses
            .as_mut()
            .unwrap()
            .push(NodeAddress {
                type_: "InternalIP".into(),
                address: "fd99::2".into(),
            });
        let mut far = (*node("far", Some("10.42.2.0/24"), "10.0.0.3", None)).clone();
        far.spec.as_mut().unwrap().pod_cidrs =
            Some(vec!["10.42.2.0/24".into(), "fd77::/64".into()]);
        let ps = peers(
            "me",
            &[Arc::new(b), Arc::new(far)],
            cluster,
            Some(c6),
            Backend::HostGw,
        );
        assert_eq!(ps[0].pod_cidr_v6, Some("fd42:0:0:1::/64".parse().unwrap()));
        assert_eq!(ps[0].ip6, Some("fd99::2".parse().unwrap()));
        // A range outside the cluster's IPv6 one is none of ours.
        assert_eq!(ps[1].pod_cidr_v6, None);
        let own = Own {
            v4: "10.42.0.0/24".parse().unwrap(),
            v6: Some("fd42::/64".parse().unwrap()),
            cluster_v6: Some(c6),
        };
        assert_eq!(own.peer_v6(&ps[0]), ps[0].pod_cidr_v6);
        let single = Own {
            cluster_v6: None,
            ..own
        };
        assert_eq!(single.peer_v6(&ps[0]), None);
        // Without the cluster's IPv6 range, peers have none either.
        let ps = peers("me", &nodes_of(&ps), cluster, None, Backend::HostGw);
        assert!(ps.iter().all(|p| p.pod_cidr_v6.is_none()));
    }

    fn nodes_of(ps: &[Peer]) -> Vec<Arc<Node>> {
        ps.iter()
            .map(|p| {
                node(
                    &p.name,
                    Some(&p.pod_cidr.to_string()),
                    &p.ip.to_string(),
                    None,
                )
            })
            .collect()
    }

    #[test]
    fn macs_round_trip() {
        let m = parse_mac("0a:1b:2c:3d:4e:5f").unwrap();
        assert_eq!(format_mac(&m), "0a:1b:2c:3d:4e:5f");
        assert!(parse_mac("0a:1b").is_none());
        assert!(parse_mac("zz:1b:2c:3d:4e:5f").is_none());
    }
}
