//! Stale UDP flows. conntrack keeps a UDP flow's NAT choice for as long as packets keep
//! coming, so a client that keeps sending from one port (a resolver, a metrics agent) to
//! a Service whose endpoint went away keeps reaching the gone pod, whatever the rules say
//! now. As kube-proxy does, the proxy deletes those entries when an endpoint leaves a UDP
//! Service port: by the Service's addresses and port, and by its node port, whose replies
//! came from that endpoint (`conntrack -D`, from the conntrack package). TCP needs none of
//! this: a gone endpoint resets the connection.

use crate::model::{Protocol, ServicePort};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The entries to delete: UDP flows to `dst` (any address when `None`, for node ports)
/// on port `port`, answered by `endpoint`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stale {
    pub dst: Option<IpAddr>,
    pub port: u16,
    pub endpoint: IpAddr,
}

impl Stale {
    /// conntrack's arguments for it.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["-D".to_string(), "-p".into(), "udp".into()];
        if self.endpoint.is_ipv6() {
            // conntrack looks at IPv4 flows unless told otherwise.
            a.extend(["-f".into(), "ipv6".into()]);
        }
        if let Some(dst) = self.dst {
            a.extend(["--orig-dst".into(), dst.to_string()]);
        }
        a.extend([
            "--orig-port-dst".into(),
            self.port.to_string(),
            "--reply-src".into(),
            self.endpoint.to_string(),
        ]);
        a
    }
}

/// What to delete going from the ports programmed before (`old`) to those programmed now:
/// for each UDP Service port, every endpoint that served it and serves it no more (a
/// Service or port that is gone counts as having none).
pub fn stale(old: &[ServicePort], new: &[ServicePort]) -> Vec<Stale> {
    let served = |ports: &[ServicePort]| -> BTreeMap<String, BTreeSet<IpAddr>> {
        ports
            .iter()
            .filter(|p| p.protocol == Protocol::Udp)
            .map(|p| (p.id(), p.all_endpoints.iter().map(|e| e.ip).collect()))
            .collect()
    };
    let now = served(new);
    let mut out = BTreeSet::new();
    for p in old.iter().filter(|p| p.protocol == Protocol::Udp) {
        let keep = now.get(&p.id());
        for ep in &p.all_endpoints {
            if keep.is_some_and(|k| k.contains(&ep.ip)) {
                continue;
            }
            for dst in p.cluster_ip.iter().chain(&p.external_ips) {
                out.insert(Stale {
                    dst: Some(*dst),
                    port: p.port,
                    endpoint: ep.ip,
                });
            }
            if p.node_port != 0 {
                out.insert(Stale {
                    dst: None,
                    port: p.node_port,
                    endpoint: ep.ip,
                });
            }
        }
    }
    out.into_iter().collect()
}

/// Deletes the entries; `Err` when the conntrack tool is missing (said once by the caller).
pub async fn delete(stale: &[Stale]) -> Result<(), std::io::Error> {
    for s in stale {
        let out = tokio::process::Command::new("conntrack")
            .args(s.args())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .await?;
        // conntrack exits 1 when nothing matched: not an error here.
        if !out.status.success() && out.status.code() != Some(1) {
            tracing::warn!(
                args = %s.args().join(" "),
                error = %String::from_utf8_lossy(&out.stderr).trim(),
                "deleting stale UDP flows"
            );
        } else {
            tracing::debug!(args = %s.args().join(" "), "deleted stale UDP flows");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Endpoint;
    use std::net::Ipv4Addr;

    fn port(proto: Protocol, eps: &[[u8; 4]], node_port: u16) -> ServicePort {
        let eps: Vec<Endpoint> = eps
            .iter()
            .map(|ip| Endpoint {
                ip: Ipv4Addr::from(*ip).into(),
                port: 5353,
                local: true,
            })
            .collect();
        ServicePort {
            namespace: "default".into(),
            name: "dns".into(),
            port_name: String::new(),
            protocol: proto,
            cluster_ip: Some(Ipv4Addr::new(10, 43, 0, 20).into()),
            port: 53,
            node_port,
            external_ips: vec![],
            lb_ips: vec![],
            source_ranges: vec![],
            affinity_seconds: None,
            external_local: false,
            internal_local: false,
            cluster_endpoints: eps.clone(),
            local_endpoints: eps.clone(),
            all_endpoints: eps,
        }
    }

    #[test]
    fn a_removed_udp_endpoint_is_flushed_by_cluster_ip_and_node_port() {
        let old = [port(
            Protocol::Udp,
            &[[10, 42, 0, 5], [10, 42, 0, 6]],
            30053,
        )];
        let new = [port(
            Protocol::Udp,
            &[[10, 42, 0, 6], [10, 42, 0, 7]],
            30053,
        )];
        let s = stale(&old, &new);
        assert_eq!(
            s,
            vec![
                Stale {
                    dst: None,
                    port: 30053,
                    endpoint: Ipv4Addr::new(10, 42, 0, 5).into()
                },
                Stale {
                    dst: Some(Ipv4Addr::new(10, 43, 0, 20).into()),
                    port: 53,
                    endpoint: Ipv4Addr::new(10, 42, 0, 5).into()
                },
            ]
        );
        assert_eq!(
            s[1].args().join(" "),
            "-D -p udp --orig-dst 10.43.0.20 --orig-port-dst 53 --reply-src 10.42.0.5"
        );
    }

    #[test]
    fn tcp_and_unchanged_ports_need_nothing_and_a_gone_service_flushes_all() {
        let tcp = [port(Protocol::Tcp, &[[10, 42, 0, 5]], 0)];
        assert!(stale(&tcp, &[]).is_empty());
        let udp = [port(Protocol::Udp, &[[10, 42, 0, 5]], 0)];
        assert!(stale(&udp, &udp).is_empty());
        assert_eq!(stale(&udp, &[]).len(), 1);
    }
}
