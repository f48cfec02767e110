//! The cluster's names, as one immutable snapshot built from the watched Services,
//! EndpointSlices and Namespaces: what every query is answered from, with no API call.
//! A change builds a new snapshot; queries in flight keep the one they started with.

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

/// A Service port, or an endpoint's port: what SRV records are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The port's name (`""` when unnamed).
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub proto: String,
    pub port: u16,
}

impl Port {
    /// From a Service's or an EndpointSlice's port (protocol TCP when unset); `None`
    /// for a port number out of range or missing.
    fn new(name: Option<&str>, proto: Option<&str>, port: Option<i32>) -> Option<Port> {
        Some(Port {
            name: name.unwrap_or_default().to_string(),
            proto: proto.unwrap_or("TCP").to_ascii_lowercase(),
            port: u16::try_from(port?).ok()?,
        })
    }
}

/// What a Service's name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Its cluster IPs.
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: its ready endpoints' addresses.
    Headless,
    /// `type: ExternalName`: a CNAME to this name.
    ExternalName(String),
}

/// A ready endpoint of a headless Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// Its label under the Service: the pod's hostname, or its address with dashes.
    pub label: String,
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svc {
    pub kind: Kind,
    pub ports: Vec<Port>,
    /// Ready endpoints (all of them, for reverse lookups; only headless Services answer
    /// with them).
    pub endpoints: Vec<Endpoint>,
}

/// One snapshot of the cluster's names.
#[derive(Debug, Clone)]
pub struct View {
    /// The cluster domain, lowercase, without the trailing dot.
    pub zone: String,
    /// The cluster DNS address (`ns.dns.<zone>`).
    pub dns_ip: IpAddr,
    /// SOA serial: when this snapshot was built (seconds since the epoch).
    pub serial: u32,
    /// TTL of every record and of negative answers.
    pub ttl: u32,
    pub namespaces: HashSet<String>,
    /// By (namespace, name).
    pub services: HashMap<(String, String), Svc>,
    /// Address → the name its PTR answers, without the trailing dot.
    pub reverse: HashMap<IpAddr, String>,
}

/// The label an address gets where no hostname is given (`10-42-0-5`).
pub fn dashed(ip: &IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

impl View {
    pub fn empty(zone: &str, dns_ip: IpAddr, ttl: u32) -> View {
        View {
            zone: zone.trim_end_matches('.').to_ascii_lowercase(),
            dns_ip,
            serial: 0,
            ttl,
            namespaces: HashSet::new(),
            services: HashMap::new(),
            reverse: HashMap::new(),
        }
    }

    /// Builds the snapshot from the informers' contents.
    pub fn build(
        mut base: View,
        services: &[&Service],
        slices: &[&EndpointSlice],
        namespaces: &[&Namespace],
        serial: u32,
    ) -> View {
        base.serial = serial;
        base.namespaces = namespaces
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
        for s in slices {
            let (Some(ns), Some(svc)) = (
                s.metadata.namespace.clone(),
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .cloned(),
            ) else {
                continue;
            };
            by_service.entry((ns, svc)).or_default().push(s);
        }
        for s in services {
            let (Some(ns), Some(name)) = (s.metadata.namespace.clone(), s.metadata.name.clone())
            else {
                continue;
            };
            let spec = s.spec.clone().unwrap_or_default();
            let kind = if spec.type_.as_deref() == Some("ExternalName") {
                match spec.external_name.filter(|n| !n.is_empty()) {
                    Some(n) => Kind::ExternalName(n.trim_end_matches('.').to_ascii_lowercase()),
                    None => continue,
                }
            } else if spec.cluster_ip.as_deref() == Some("None") {
                Kind::Headless
            } else {
                let ips: Vec<IpAddr> = spec
                    .cluster_ips
                    .clone()
                    .or_else(|| spec.cluster_ip.clone().map(|i| vec![i]))
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|i| i.parse().ok())
                    .collect();
                Kind::ClusterIp(ips)
            };
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| Port::new(p.name.as_deref(), p.protocol.as_deref(), Some(p.port)))
                .collect();
            let mut endpoints: Vec<Endpoint> = Vec::new();
            for sl in by_service
                .get(&(ns.clone(), name.clone()))
                .into_iter()
                .flatten()
            {
                let ports: Vec<Port> = sl
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| Port::new(p.name.as_deref(), p.protocol.as_deref(), p.port))
                    .collect();
                for e in sl.endpoints.iter().flatten() {
                    if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    for a in &e.addresses {
                        let Ok(ip) = a.parse::<IpAddr>() else {
                            continue;
                        };
                        if endpoints.iter().any(|x| x.ip == ip) {
                            continue;
                        }
                        let label = e
                            .hostname
                            .clone()
                            .filter(|h| !h.is_empty())
                            .map(|h| h.to_ascii_lowercase())
                            .unwrap_or_else(|| dashed(&ip));
                        endpoints.push(Endpoint {
                            ip,
                            label,
                            ports: ports.clone(),
                        });
                    }
                }
            }
            endpoints.sort_by_key(|e| e.ip);
            let fq = format!("{name}.{ns}.svc.{}", base.zone);
            for e in &endpoints {
                base.reverse
                    .entry(e.ip)
                    .or_insert_with(|| format!("{}.{fq}", e.label));
            }
            if let Kind::ClusterIp(ips) = &kind {
                for ip in ips {
                    // A Service's own address wins over an endpoint's.
                    base.reverse.insert(*ip, fq.clone());
                }
            }
            base.namespaces.insert(ns.clone());
            base.services.insert(
                (ns, name),
                Svc {
                    kind,
                    ports,
                    endpoints,
                },
            );
        }
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap()
    }

    #[test]
    fn headless_endpoints_take_hostnames_and_skip_unready() {
        let s = svc("default", "web", "None");
        let sl: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "hostname": "web-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.6"], "conditions": {}},
                {"addresses": ["10.42.0.7"], "conditions": {"ready": false}}
            ]
        }))
        .unwrap();
        let v = View::build(
            View::empty("cluster.local.", "10.43.0.10".parse().unwrap(), 5),
            &[&s],
            &[&sl],
            &[],
            1,
        );
        let w = &v.services[&("default".into(), "web".into())];
        assert_eq!(w.kind, Kind::Headless);
        let labels: Vec<&str> = w.endpoints.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["web-0", "10-42-0-6"]);
        assert_eq!(w.endpoints[0].ports[0].port, 8080);
        assert_eq!(
            v.reverse[&"10.42.0.5".parse().unwrap()],
            "web-0.web.default.svc.cluster.local"
        );
        assert!(v.namespaces.contains("default"));
    }
}
