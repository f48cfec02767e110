//! The nftables table `inet kite-netpol` for the local pods' policies, replaced whole in
//! one transaction each sync (inet: a dual-stack pod's IPv6 traffic is judged too).
//!
//! Verdict maps keyed by pod address (one per family and direction) jump to a chain per
//! policed pod address and direction (`in-10-42-0-5`, `eg-fd42--5`); each chain
//! `return`s what a rule allows and rejects the rest (TCP with a reset, other protocols
//! with ICMP admin-prohibited, so a client learns at once). A rule's addresses and
//! blocks match their own family (`ip`/`ip6`), so a pod's IPv4 peers never let IPv6
//! traffic in, nor the reverse. Established and related traffic is accepted before any of it: only
//! new connections are judged. Hooks: `forward` (pod to pod, bridged pods included
//! through br_netfilter, and traffic from outside after the service proxy's DNAT) for
//! both directions, `input` for pods' egress to the node itself (its DNS).

use crate::model::{Allow, Peer, PodPolicy, PortMatch};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;

pub const TABLE: &str = "kite-netpol";

fn chain(prefix: &str, ip: &IpAddr) -> String {
    format!("{prefix}-{}", ip.to_string().replace(['.', ':'], "-"))
}

/// nftables' match keyword for an address or CIDR: `ip` or `ip6`.
fn kw(addr: &str) -> &'static str {
    if addr.contains(':') {
        "ip6"
    } else {
        "ip"
    }
}

fn set<T: std::fmt::Display>(items: &[T]) -> String {
    let v: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    format!("{{ {} }}", v.join(", "))
}

fn port_expr(p: &PortMatch) -> String {
    match p.range {
        None => format!("meta l4proto {}", p.proto),
        Some((a, b)) if a == b => format!("meta l4proto {} th dport {a}", p.proto),
        Some((a, b)) => format!("meta l4proto {} th dport {a}-{b}", p.proto),
    }
}

/// The rules of one chain: each line allows (`return`s) what one allow-rule allows.
fn allow_lines(allows: &[Allow], dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    for a in allows {
        let mut peers: Vec<String> = Vec::new();
        for p in &a.peers {
            match p {
                Peer::Any => peers.push(String::new()),
                Peer::Addrs(ips) if ips.is_empty() => {}
                Peer::Addrs(ips) => {
                    for (k, v6) in [("ip", false), ("ip6", true)] {
                        let of: Vec<&IpAddr> = ips.iter().filter(|i| i.is_ipv6() == v6).collect();
                        if !of.is_empty() {
                            peers.push(format!("{k} {dir} {} ", set(&of)));
                        }
                    }
                }
                Peer::Block { cidr, except } => {
                    let k = kw(cidr);
                    let mut s = format!("{k} {dir} {cidr} ");
                    // Exceptions of the other family cannot be inside the block.
                    let except: Vec<&String> = except.iter().filter(|e| kw(e) == k).collect();
                    if !except.is_empty() {
                        let _ = write!(s, "{k} {dir} != {} ", set(&except));
                    }
                    peers.push(s);
                }
            }
        }
        match &a.ports {
            None => {
                for p in &peers {
                    out.push(format!("{p}return"));
                }
            }
            Some(ports) => {
                for p in &peers {
                    for port in ports {
                        out.push(format!("{p}{} return", port_expr(port)));
                    }
                }
            }
        }
        for (ip, proto, port) in &a.to_named {
            out.push(format!(
                "{} daddr {ip} meta l4proto {proto} th dport {port} return",
                kw(&ip.to_string())
            ));
        }
    }
    out
}

/// The whole table's transaction for these pods' policies: the old table goes and the
/// new one comes in the same transaction.
pub fn script(pods: &BTreeMap<IpAddr, PodPolicy>) -> String {
    let mut s = teardown();
    let _ = writeln!(s, "table inet {TABLE} {{");
    // Verdict maps by family: (ingress, egress) of IPv4, then of IPv6.
    let mut maps: [(Vec<String>, Vec<String>); 2] = Default::default();
    let mut chains = String::new();
    for (ip, p) in pods {
        let (ingress, egress) = &mut maps[usize::from(ip.is_ipv6())];
        for (dir, allows, list, prefix, field) in [
            ("in", &p.ingress, ingress, "in", "saddr"),
            ("eg", &p.egress, egress, "eg", "daddr"),
        ] {
            let Some(allows) = allows else { continue };
            let name = chain(prefix, ip);
            list.push(format!("{ip} : jump {name}"));
            let _ = writeln!(chains, "  chain {name} {{");
            let _ = writeln!(chains, "    # {dir}: {} rules", allows.len());
            for l in allow_lines(allows, field) {
                let _ = writeln!(chains, "    {l}");
            }
            let _ = writeln!(chains, "    meta l4proto tcp reject with tcp reset");
            let _ = writeln!(chains, "    reject with icmpx type admin-prohibited");
            let _ = writeln!(chains, "  }}");
        }
    }
    let [(in4, eg4), (in6, eg6)] = &maps;
    for (name, ty, elems) in [
        ("ingress", "ipv4_addr", in4),
        ("egress", "ipv4_addr", eg4),
        ("ingress6", "ipv6_addr", in6),
        ("egress6", "ipv6_addr", eg6),
    ] {
        let _ = writeln!(s, "  map {name} {{");
        let _ = writeln!(s, "    type {ty} : verdict");
        if !elems.is_empty() {
            let _ = writeln!(s, "    elements = {{ {} }}", elems.join(", "));
        }
        let _ = writeln!(s, "  }}");
    }
    s.push_str(&chains);
    s.push_str(
        "  chain forward {
    type filter hook forward priority filter - 5; policy accept;
    ct state established,related accept
    ip saddr vmap @egress
    ip daddr vmap @ingress
    ip6 saddr vmap @egress6
    ip6 daddr vmap @ingress6
  }
  chain input {
    type filter hook input priority filter - 5; policy accept;
    ct state established,related accept
    ip saddr vmap @egress
    ip6 saddr vmap @egress6
  }
}
",
    );
    s
}

/// Removes the table (policies disabled, or none left to enforce).
/// (The `ip` table is an older kite's: an upgrade replaces it.)
pub fn teardown() -> String {
    format!(
        "add table ip {TABLE}\ndelete table ip {TABLE}\nadd table inet {TABLE}\ndelete table inet {TABLE}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policed_pod_gets_its_chains_and_the_nft_tool_accepts_them() {
        let mut pods = BTreeMap::new();
        pods.insert(
            "10.42.0.5".parse().unwrap(),
            PodPolicy {
                ingress: Some(vec![Allow {
                    peers: vec![
                        Peer::Addrs(vec!["10.42.0.6".parse().unwrap()]),
                        Peer::Block {
                            cidr: "192.0.2.0/24".into(),
                            except: vec!["192.0.2.128/25".into()],
                        },
                        Peer::Addrs(vec![]),
                    ],
                    ports: Some(vec![
                        PortMatch {
                            proto: "tcp".into(),
                            range: Some((80, 80)),
                        },
                        PortMatch {
                            proto: "udp".into(),
                            range: Some((9000, 9010)),
                        },
                    ]),
                    to_named: vec![],
                }]),
                egress: Some(vec![Allow {
                    peers: vec![Peer::Any],
                    ports: Some(vec![PortMatch {
                        proto: "udp".into(),
                        range: Some((53, 53)),
                    }]),
                    to_named: vec![("10.42.0.9".parse().unwrap(), "tcp".into(), 8080)],
                }]),
            },
        );
        pods.insert(
            "fd42::5".parse().unwrap(),
            PodPolicy {
                ingress: Some(vec![Allow {
                    peers: vec![
                        Peer::Addrs(vec![
                            "10.42.0.6".parse().unwrap(),
                            "fd42::6".parse().unwrap(),
                        ]),
                        Peer::Block {
                            cidr: "fd00::/8".into(),
                            except: vec!["fd42::/56".into(), "192.0.2.0/24".into()],
                        },
                    ],
                    ports: None,
                    to_named: vec![],
                }]),
                egress: None,
            },
        );
        pods.insert(
            "10.42.0.7".parse().unwrap(),
            PodPolicy {
                ingress: Some(vec![]),
                egress: None,
            },
        );
        let s = script(&pods);
        assert!(
            s.contains("10.42.0.5 : jump in-10-42-0-5, 10.42.0.7 : jump in-10-42-0-7"),
            "{s}"
        );
        assert!(
            s.contains("ip saddr { 10.42.0.6 } meta l4proto tcp th dport 80 return"),
            "{s}"
        );
        assert!(s.contains("ip saddr 192.0.2.0/24 ip saddr != { 192.0.2.128/25 } meta l4proto udp th dport 9000-9010 return"), "{s}");
        assert!(s.contains("    meta l4proto udp th dport 53 return"), "{s}");
        assert!(
            s.contains("ip daddr 10.42.0.9 meta l4proto tcp th dport 8080 return"),
            "{s}"
        );
        assert!(s.contains("table inet kite-netpol {"), "{s}");
        assert!(s.contains("fd42::5 : jump in-fd42--5"), "{s}");
        assert!(s.contains("ip6 saddr { fd42::6 } return"), "{s}");
        assert!(
            s.contains("ip6 saddr fd00::/8 ip6 saddr != { fd42::/56 } return"),
            "{s}"
        );
        assert!(s.contains("ip6 daddr vmap @ingress6"), "{s}");
        // Validated by the kernel without applying, where nft is installed and we are root.
        match kite_proxy::nft::check(&s) {
            None => eprintln!("nft is missing or we are not root: the script was not checked"),
            Some(r) => assert!(r.is_ok(), "nft refused:\n{s}\n{r:?}"),
        }
    }
}
