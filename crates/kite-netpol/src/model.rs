//! NetworkPolicy semantics, pure: for each pod on this node, which traffic its policies
//! allow in and out, as allow-rules over addresses, protocols and ports.
//!
//! As upstream defines it: a pod selected by no policy of a direction allows everything
//! in that direction; selected by some, it allows what any of their rules allows (a
//! rule with no peers allows every peer, with no ports every port). Peers are pods by
//! `podSelector` (in the policy's namespace), by `namespaceSelector`, by both, or
//! `ipBlock`s with exceptions; a named port is the container port of that name on the
//! pod that receives the traffic. `policyTypes` defaults to Ingress, plus Egress when
//! the policy has egress rules.
//!
//! A dual-stack pod is one [`PodInfo`] per address: its policies then hold for both, and
//! a selector that picks it picks both; an `ipBlock` holds for its own family only.
//!
//! kite's DNS answers on each node rather than in pods: each node's DNS address counts
//! as a pod of `kube-system` labelled `k8s-app=kube-dns`, so the usual "allow DNS to
//! kube-dns" egress rule works as it does on K3s.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A pod as the policies see it.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ip: IpAddr,
    /// (name, protocol, port) of its containers' ports.
    pub ports: Vec<(String, String, u16)>,
    /// Whether it runs on this node (its traffic is judged here).
    pub local: bool,
}

/// Who a rule lets through: addresses, or a CIDR minus exceptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Any,
    Addrs(Vec<IpAddr>),
    Block { cidr: String, except: Vec<String> },
}

/// Which traffic: a protocol (lowercase) and optionally a port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMatch {
    pub proto: String,
    pub range: Option<(u16, u16)>,
}

/// One allow rule: any of `peers` (an empty list allows none) on any of `ports` (`None`:
/// every port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub peers: Vec<Peer>,
    pub ports: Option<Vec<PortMatch>>,
    /// Egress to named ports: (address, protocol, port) of the pods that have them.
    pub to_named: Vec<(IpAddr, String, u16)>,
}

/// What a local pod's policies allow; `None` in a direction: no policy selects it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodPolicy {
    pub ingress: Option<Vec<Allow>>,
    pub egress: Option<Vec<Allow>>,
}

/// The pods as the policies see them, from the API's: running pods with an IP, not on
/// the host's network.
pub fn pods(pods: &[&Pod], node: &str) -> Vec<PodInfo> {
    pods.iter()
        .flat_map(|p| {
            let info = info(p, node);
            let st = p.status.as_ref();
            let mut ips: Vec<IpAddr> = st
                .and_then(|s| s.pod_ips.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.parse().ok())
                .collect();
            if ips.is_empty() {
                ips.extend(st.and_then(|s| s.pod_ip.as_deref()?.parse::<IpAddr>().ok()));
            }
            info.into_iter().flat_map(move |i| {
                ips.clone()
                    .into_iter()
                    .map(move |ip| PodInfo { ip, ..i.clone() })
            })
        })
        .collect()
}

/// A pod's policy-relevant facts (its address: the primary one).
fn info(p: &Pod, node: &str) -> Option<PodInfo> {
    Some(p).and_then(|p| {
        let spec = p.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = p.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
        let ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|cp| {
                Some((
                    cp.name.clone()?,
                    cp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    u16::try_from(cp.container_port).ok()?,
                ))
            })
            .collect();
        Some(PodInfo {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            labels: p.metadata.labels.clone().unwrap_or_default(),
            ip,
            ports,
            local: spec.node_name.as_deref() == Some(node),
        })
    })
}

/// kite's DNS on each node, as the pods a "to kube-dns" rule means.
pub fn dns_pods(addrs: &[IpAddr]) -> Vec<PodInfo> {
    addrs
        .iter()
        .map(|ip| PodInfo {
            namespace: "kube-system".into(),
            labels: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
            ip: *ip,
            ports: vec![
                ("dns".into(), "UDP".into(), 53),
                ("dns-tcp".into(), "TCP".into(), 53),
            ],
            local: false,
        })
        .collect()
}

fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    kite_runtime::labels::matches(sel, labels)
}

fn types(p: &NetworkPolicy) -> (bool, bool) {
    let spec = p.spec.clone().unwrap_or_default();
    match &spec.policy_types {
        Some(t) if !t.is_empty() => (
            t.iter().any(|x| x == "Ingress"),
            t.iter().any(|x| x == "Egress"),
        ),
        _ => (true, spec.egress.is_some_and(|e| !e.is_empty())),
    }
}

fn peer_addrs(
    peer: &NetworkPolicyPeer,
    policy_ns: &str,
    pods: &[PodInfo],
    ns_labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> Peer {
    if let Some(b) = &peer.ip_block {
        return Peer::Block {
            cidr: b.cidr.clone(),
            except: b.except.clone().unwrap_or_default(),
        };
    }
    let empty = BTreeMap::new();
    let mut ips: Vec<IpAddr> = pods
        .iter()
        .filter(|p| match &peer.namespace_selector {
            Some(ns) => selects(ns, ns_labels.get(&p.namespace).unwrap_or(&empty)),
            None => p.namespace == policy_ns,
        })
        .filter(|p| {
            peer.pod_selector
                .as_ref()
                .is_none_or(|s| selects(s, &p.labels))
        })
        .map(|p| p.ip)
        .collect();
    ips.sort();
    ips.dedup();
    Peer::Addrs(ips)
}

fn port_match(p: &NetworkPolicyPort, target: Option<&PodInfo>) -> Option<PortMatch> {
    let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
    let range = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => {
            let from = u16::try_from(*n).ok()?;
            let to = p
                .end_port
                .and_then(|e| u16::try_from(e).ok())
                .unwrap_or(from);
            Some((from, to.max(from)))
        }
        Some(IntOrString::String(name)) => {
            let port = target?
                .ports
                .iter()
                .find(|(n, pr, _)| n == name && *pr == proto)?
                .2;
            Some((port, port))
        }
    };
    Some(PortMatch {
        proto: proto.to_ascii_lowercase(),
        range,
    })
}

/// The policies of every local pod.
pub fn compute(
    policies: &[&NetworkPolicy],
    namespaces: &[&Namespace],
    pods: &[PodInfo],
) -> BTreeMap<IpAddr, PodPolicy> {
    let ns_labels: BTreeMap<String, BTreeMap<String, String>> = namespaces
        .iter()
        .map(|n| {
            let mut l = n.metadata.labels.clone().unwrap_or_default();
            let name = n.metadata.name.clone().unwrap_or_default();
            // Set by the API server on every namespace since 1.22.
            l.entry("kubernetes.io/metadata.name".into())
                .or_insert_with(|| name.clone());
            (name, l)
        })
        .collect();
    let mut out: BTreeMap<IpAddr, PodPolicy> = BTreeMap::new();
    for pod in pods.iter().filter(|p| p.local) {
        let mut pp = PodPolicy::default();
        for pol in policies {
            let pns = pol.metadata.namespace.as_deref().unwrap_or_default();
            if pns != pod.namespace {
                continue;
            }
            let spec = pol.spec.clone().unwrap_or_default();
            if !selects(&spec.pod_selector.clone().unwrap_or_default(), &pod.labels) {
                continue;
            }
            let (ing, eg) = types(pol);
            if ing {
                let allows = pp.ingress.get_or_insert_with(Vec::new);
                for r in spec.ingress.iter().flatten() {
                    let peers = match r.from.as_deref() {
                        None | Some([]) => vec![Peer::Any],
                        Some(from) => from
                            .iter()
                            .map(|f| peer_addrs(f, pns, pods, &ns_labels))
                            .collect(),
                    };
                    let ports = match r.ports.as_deref() {
                        None | Some([]) => None,
                        Some(ps) => {
                            Some(ps.iter().filter_map(|p| port_match(p, Some(pod))).collect())
                        }
                    };
                    allows.push(Allow {
                        peers,
                        ports,
                        to_named: vec![],
                    });
                }
            }
            if eg {
                let allows = pp.egress.get_or_insert_with(Vec::new);
                for r in spec.egress.iter().flatten() {
                    let peers = match r.to.as_deref() {
                        None | Some([]) => vec![Peer::Any],
                        Some(to) => to
                            .iter()
                            .map(|t| peer_addrs(t, pns, pods, &ns_labels))
                            .collect(),
                    };
                    let (ports, to_named) = match r.ports.as_deref() {
                        None | Some([]) => (None, vec![]),
                        Some(ps) => {
                            let mut numbered = Vec::new();
                            let mut named = Vec::new();
                            for p in ps {
                                match &p.port {
                                    Some(IntOrString::String(name)) => {
                                        let proto =
                                            p.protocol.clone().unwrap_or_else(|| "TCP".into());
                                        // The destination's port of that name, for each
                                        // destination pod the peers allow.
                                        for d in pods {
                                            if !peers.iter().any(|peer| peer_has(peer, d.ip)) {
                                                continue;
                                            }
                                            if let Some((_, _, port)) = d
                                                .ports
                                                .iter()
                                                .find(|(n, pr, _)| n == name && *pr == proto)
                                            {
                                                named.push((
                                                    d.ip,
                                                    proto.to_ascii_lowercase(),
                                                    *port,
                                                ));
                                            }
                                        }
                                    }
                                    _ => numbered.extend(port_match(p, None)),
                                }
                            }
                            (Some(numbered), named)
                        }
                    };
                    allows.push(Allow {
                        peers,
                        ports,
                        to_named,
                    });
                }
            }
        }
        if pp != PodPolicy::default() {
            out.insert(pod.ip, pp);
        }
    }
    out
}

/// Whether `peer` includes `ip` (for named egress ports, which resolve per destination).
fn peer_has(peer: &Peer, ip: IpAddr) -> bool {
    match peer {
        Peer::Any => true,
        Peer::Addrs(a) => a.contains(&ip),
        Peer::Block { cidr, except } => {
            let inside = |c: &String| c.parse::<ipnet::IpNet>().is_ok_and(|n| n.contains(&ip));
            inside(cidr) && !except.iter().any(inside)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, app: &str, ip: &str, local: bool) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            labels: BTreeMap::from([("app".into(), app.into())]),
            ip: ip.parse().unwrap(),
            ports: vec![("http".into(), "TCP".into(), 8080)],
            local,
        }
    }

    fn ns(name: &str, team: &str) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"team": team}}}))
            .unwrap()
    }

    fn pol(v: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn default_deny_and_namespace_selector() {
        let pods = vec![
            pod("a", "web", "10.42.0.5", true),
            pod("b", "client", "10.42.0.6", false),
            pod("c", "client", "10.42.0.7", false),
        ];
        let nss = [ns("a", "x"), ns("b", "friends"), ns("c", "others")];
        let deny = pol(json!({"metadata": {"namespace": "a", "name": "deny"},
            "spec": {"podSelector": {}}}));
        let r = compute(&[&deny], &nss.iter().collect::<Vec<_>>(), &pods);
        let web = &r[&"10.42.0.5".parse().unwrap()];
        assert_eq!(web.ingress, Some(vec![]), "selected, nothing allowed");
        assert_eq!(web.egress, None, "egress is not restricted");
        let allow = pol(json!({"metadata": {"namespace": "a", "name": "allow"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "friends"}}}],
                                  "ports": [{"port": "http"}, {"port": 9000, "endPort": 9010, "protocol": "UDP"}]}]}}));
        let r = compute(&[&deny, &allow], &nss.iter().collect::<Vec<_>>(), &pods);
        let ing = r[&"10.42.0.5".parse().unwrap()].ingress.clone().unwrap();
        assert_eq!(ing.len(), 1);
        assert_eq!(
            ing[0].peers,
            vec![Peer::Addrs(vec!["10.42.0.6".parse().unwrap()])]
        );
        assert_eq!(
            ing[0].ports,
            Some(vec![
                PortMatch {
                    proto: "tcp".into(),
                    range: Some((8080, 8080))
                },
                PortMatch {
                    proto: "udp".into(),
                    range: Some((9000, 9010))
                },
            ])
        );
        // Pods on other nodes are judged there.
        assert!(!r.contains_key(&"10.42.0.6".parse().unwrap()));
    }

    #[test]
    fn egress_to_dns_and_named_ports() {
        let mut pods = vec![
            pod("a", "client", "10.42.0.5", true),
            pod("a", "web", "10.42.0.9", false),
        ];
        pods.extend(dns_pods(&["10.42.0.1".parse().unwrap()]));
        let nss = [ns("a", "x"), ns("kube-system", "sys")];
        let p = pol(json!({"metadata": {"namespace": "a", "name": "eg"},
        "spec": {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                 "egress": [
                   {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                    "ports": [{"port": 53, "protocol": "UDP"}]},
                   {"to": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "http"}]},
                   {"to": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}]}
                 ]}}));
        let r = compute(&[&p], &nss.iter().collect::<Vec<_>>(), &pods);
        let c = &r[&"10.42.0.5".parse().unwrap()];
        assert_eq!(c.ingress, None);
        let eg = c.egress.clone().unwrap();
        assert_eq!(
            eg[0].peers,
            vec![Peer::Addrs(vec!["10.42.0.1".parse().unwrap()])]
        );
        assert_eq!(
            eg[1].to_named,
            vec![("10.42.0.9".parse().unwrap(), "tcp".into(), 8080)]
        );
        assert_eq!(eg[1].ports, Some(vec![]));
        assert_eq!(
            eg[2].peers,
            vec![Peer::Block {
                cidr: "192.0.2.0/24".into(),
                except: vec!["192.0.2.128/25".into()]
            }]
        );
        assert_eq!(eg[2].ports, None);
    }
}
