//! What the proxy programs, from the API's objects: one [`ServicePort`] per port of each
//! Service with a virtual IP, node port or external address, with the endpoints that
//! serve it, chosen as kube-proxy's `CategorizeEndpoints` chooses them (ready ones;
//! serving-and-terminating ones only when none is ready; the node's own for the `Local`
//! traffic policies). Pure, so every rule has a unit test. A proxy programs one
//! [`Family`]: on a dual-stack node one table per family, each with that family's cluster
//! IP, external addresses and EndpointSlices, as kube-proxy runs one proxier per family.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::HashMap;
use std::net::IpAddr;

/// An IP family: which addresses, slices and table a proxy deals with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// nftables' family (and address match keyword): `ip` or `ip6`.
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// nftables' address type.
    pub fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    /// The API's name (`ipFamilies`, an EndpointSlice's `addressType`).
    pub fn api(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn has(self, ip: &IpAddr) -> bool {
        Family::of(*ip) == self
    }
}

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A transport protocol a Service port may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// nftables' name for it.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One endpoint of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// On this node.
    pub local: bool,
}

/// One port of one Service, as the datapath needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name (empty for a single unnamed port).
    pub port_name: String,
    pub protocol: Protocol,
    /// The virtual IP (none for a headless Service or an ExternalName).
    pub cluster_ip: Option<IpAddr>,
    pub port: u16,
    /// 0: none.
    pub node_port: u16,
    /// `spec.externalIPs` and the load balancer's ingress IPs: reached like node ports.
    pub external_ips: Vec<IpAddr>,
    /// The load balancer's ingress IPs (also in `external_ips`): what
    /// `source_ranges` guards.
    pub lb_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`: only these clients reach `lb_ips` (empty: all).
    pub source_ranges: Vec<ipnet::IpNet>,
    /// sessionAffinity ClientIP: its timeout in seconds.
    pub affinity_seconds: Option<u32>,
    /// externalTrafficPolicy Local (node ports, external IPs).
    pub external_local: bool,
    /// internalTrafficPolicy Local (the cluster IP).
    pub internal_local: bool,
    /// Who serves the cluster IP: ready endpoints, else serving terminating ones; only
    /// the node's own with internalTrafficPolicy Local.
    pub cluster_endpoints: Vec<Endpoint>,
    /// Who serves external traffic under externalTrafficPolicy Local: the node's own.
    pub local_endpoints: Vec<Endpoint>,
    /// Every endpoint that serves, wherever it runs (external traffic under
    /// externalTrafficPolicy Cluster).
    pub all_endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// `namespace/name:port` (upstream's ServicePortName, for logs and comments).
    pub fn id(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }

    /// Whether anything reaches it besides the cluster IP.
    pub fn external(&self) -> bool {
        self.node_port != 0 || !self.external_ips.is_empty()
    }
}

/// The EndpointSlices of `family` of each Service, by the Service they name.
pub fn slices_by_service<'a>(
    slices: &[&'a EndpointSlice],
    family: Family,
) -> HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>> {
    let mut by_service: HashMap<_, Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        let ns = s.metadata.namespace.as_deref().unwrap_or_default();
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        if s.address_type != family.api() {
            continue;
        }
        by_service.entry((ns, svc.as_str())).or_default().push(*s);
    }
    by_service
}

/// Every Service port the proxy programs, from the Services and EndpointSlices.
/// `node` is this node's name (for the `Local` policies).
pub fn service_ports(
    services: &[&Service],
    slices: &[&EndpointSlice],
    node: &str,
    family: Family,
) -> Vec<ServicePort> {
    let by_service = slices_by_service(slices, family);
    let mut out = Vec::new();
    for svc in services {
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let svc_slices = by_service.get(&(ns, name)).map_or(&[][..], |v| &v[..]);
        out.extend(ports_of(svc, svc_slices, node, family));
    }
    out
}

/// The ports of one Service in `family`, served by its slices `svc_slices` (of that
/// family).
pub fn ports_of(
    svc: &Service,
    svc_slices: &[&EndpointSlice],
    node: &str,
    family: Family,
) -> Vec<ServicePort> {
    let mut out = Vec::new();
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let Some(spec) = svc.spec.as_ref() else {
        return out;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return out;
    }
    // The cluster IP of this family: from `clusterIPs` (a dual-stack Service has one of
    // each), or `clusterIP` as older writers leave it.
    let cluster_ip = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.as_ref())
        .filter(|ip| *ip != "None")
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .find(|ip| family.has(ip));
    let mut external_ips: Vec<IpAddr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .filter(|ip| family.has(ip))
        .collect();
    let mut lb_ips: Vec<IpAddr> = Vec::new();
    let mut source_ranges: Vec<ipnet::IpNet> = Vec::new();
    if spec.type_.as_deref() == Some("LoadBalancer") {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref());
        lb_ips.extend(
            ingress
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref()?.parse::<IpAddr>().ok())
                .filter(|ip| family.has(ip)),
        );
        lb_ips.sort();
        lb_ips.dedup();
        external_ips.extend(lb_ips.iter().copied());
        // CIDRs as the API validates them (surrounding spaces allowed), of this family.
        let ranges = spec.load_balancer_source_ranges.iter().flatten();
        source_ranges.extend(
            ranges
                .filter_map(|r| r.trim().parse::<ipnet::IpNet>().ok())
                .filter(|n| family.has(&n.addr())),
        );
        source_ranges.iter_mut().for_each(|n| *n = n.trunc());
        source_ranges.sort();
        source_ranges.dedup();
    }
    external_ips.sort();
    external_ips.dedup();
    let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .map_or(10800, |t| t.clamp(1, 86400) as u32)
    });
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    for p in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
            continue;
        };
        let (Ok(port), node_port) = (u16::try_from(p.port), p.node_port.unwrap_or(0)) else {
            continue;
        };
        let node_port = u16::try_from(node_port).unwrap_or(0);
        if cluster_ip.is_none() && node_port == 0 && external_ips.is_empty() {
            // Headless: DNS names the endpoints; nothing to program.
            continue;
        }
        let port_name = p.name.clone().unwrap_or_default();
        let all = endpoints_of(svc_slices, &port_name, protocol, node);
        let cluster = choose(&all, internal_local);
        let local = choose(&all, true);
        let anywhere = choose(&all, false);
        out.push(ServicePort {
            namespace: ns.to_string(),
            name: name.to_string(),
            port_name,
            protocol,
            cluster_ip,
            port,
            node_port,
            external_ips: external_ips.clone(),
            lb_ips: lb_ips.clone(),
            source_ranges: source_ranges.clone(),
            affinity_seconds,
            external_local,
            internal_local,
            cluster_endpoints: cluster,
            local_endpoints: local,
            all_endpoints: anywhere,
        });
    }
    out
}

/// An endpoint with its conditions, before the choice.
#[derive(Debug, Clone)]
struct Candidate {
    ep: Endpoint,
    ready: bool,
    serving: bool,
    terminating: bool,
}

/// The endpoints of the slices' port named `port_name` with `protocol`.
fn endpoints_of(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    node: &str,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for s in slices {
        let Some(port) = s.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == port_name
                && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
        }) else {
            continue;
        };
        let Some(port) = port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for e in s.endpoints.iter().flatten() {
            let c = e.conditions.as_ref();
            // As upstream: unset `ready` means ready; unset `serving` follows `ready`.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let local = e.node_name.as_deref() == Some(node);
            for a in &e.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    out.push(Candidate {
                        ep: Endpoint { ip, port, local },
                        ready,
                        serving,
                        terminating,
                    });
                }
            }
        }
    }
    out
}

/// kube-proxy's choice: the ready endpoints (the node's own only, when `local`); if there
/// are none, the serving and terminating ones, so connections drain while a rollout
/// replaces every pod.
fn choose(all: &[Candidate], local: bool) -> Vec<Endpoint> {
    let mine = || all.iter().filter(|c| !local || c.ep.local);
    let mut out: Vec<Endpoint> = mine().filter(|c| c.ready).map(|c| c.ep.clone()).collect();
    if out.is_empty() {
        out = mine()
            .filter(|c| c.serving && c.terminating)
            .map(|c| c.ep.clone())
            .collect();
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort as SvcPort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{
        Endpoint as SliceEndpoint, EndpointConditions, EndpointPort,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(name: &str, ip: &str, ports: &[(&str, i32, i32)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, port, node_port)| SvcPort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            port: *port,
                            node_port: (*node_port != 0).then_some(*node_port),
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A slice of `svc` for port `port_name`: (ip, ready, serving, terminating, node).
    fn slice(
        svc: &str,
        port_name: &str,
        port: i32,
        eps: &[(&str, bool, bool, bool, &str)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{svc}-abc")),
                namespace: Some("default".into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                eps.iter()
                    .map(|(ip, ready, serving, terminating, node)| SliceEndpoint {
                        addresses: vec![ip.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(*ready),
                            serving: Some(*serving),
                            terminating: Some(*terminating),
                        }),
                        node_name: Some(node.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![EndpointPort {
                name: (!port_name.is_empty()).then(|| port_name.to_string()),
                port: Some(port),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        }
    }

    fn ips(eps: &[Endpoint]) -> Vec<String> {
        eps.iter().map(|e| format!("{}:{}", e.ip, e.port)).collect()
    }

    #[test]
    fn ready_endpoints_serve_and_terminating_ones_only_when_none_is_ready() {
        let s = svc("web", "10.43.0.10", &[("", 80, 0)]);
        let sl = slice(
            "web",
            "",
            8080,
            &[
                ("10.42.0.2", true, true, false, "n1"),
                ("10.42.0.3", false, true, true, "n1"),
                ("10.42.0.4", false, false, false, "n1"),
            ],
        );
        let ports = service_ports(&[&s], &[&sl], "n1", Family::V4);
        assert_eq!(ports.len(), 1);
        assert_eq!(ips(&ports[0].cluster_endpoints), ["10.42.0.2:8080"]);
        let sl = slice(
            "web",
            "",
            8080,
            &[
                ("10.42.0.3", false, true, true, "n1"),
                ("10.42.0.4", false, false, false, "n1"),
            ],
        );
        let ports = service_ports(&[&s], &[&sl], "n1", Family::V4);
        assert_eq!(ips(&ports[0].cluster_endpoints), ["10.42.0.3:8080"]);
    }

    #[test]
    fn ports_match_slices_by_name_and_headless_services_are_skipped() {
        let s = svc(
            "web",
            "10.43.0.10",
            &[("http", 80, 30007), ("metrics", 9090, 0)],
        );
        let a = slice(
            "web",
            "http",
            8080,
            &[("10.42.0.2", true, true, false, "n1")],
        );
        let b = slice(
            "web",
            "metrics",
            9100,
            &[("10.42.0.2", true, true, false, "n1")],
        );
        let ports = service_ports(&[&s], &[&a, &b], "n1", Family::V4);
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].id(), "default/web:http");
        assert_eq!(ports[0].node_port, 30007);
        assert_eq!(ips(&ports[0].cluster_endpoints), ["10.42.0.2:8080"]);
        assert_eq!(ips(&ports[1].cluster_endpoints), ["10.42.0.2:9100"]);
        let headless = svc("db", "None", &[("", 5432, 0)]);
        assert!(service_ports(&[&headless], &[], "n1", Family::V4).is_empty());
    }

    #[test]
    fn local_policies_keep_the_nodes_own_endpoints() {
        let mut s = svc("web", "10.43.0.10", &[("", 80, 30007)]);
        let spec = s.spec.as_mut().unwrap();
        spec.external_traffic_policy = Some("Local".into());
        spec.internal_traffic_policy = Some("Local".into());
        spec.session_affinity = Some("ClientIP".into());
        let sl = slice(
            "web",
            "",
            80,
            &[
                ("10.42.0.2", true, true, false, "n1"),
                ("10.42.1.2", true, true, false, "n2"),
            ],
        );
        let p = &service_ports(&[&s], &[&sl], "n1", Family::V4)[0];
        assert!(p.external_local && p.internal_local);
        assert_eq!(ips(&p.cluster_endpoints), ["10.42.0.2:80"]);
        assert_eq!(ips(&p.local_endpoints), ["10.42.0.2:80"]);
        assert_eq!(
            p.affinity_seconds,
            Some(10800),
            "upstream's default timeout"
        );
        let p = &service_ports(&[&s], &[&sl], "n3", Family::V4)[0];
        assert!(p.local_endpoints.is_empty());
    }

    #[test]
    fn load_balancer_addresses_and_source_ranges() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "lb"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.20",
                     "externalIPs": ["192.0.2.1"],
                     "loadBalancerSourceRanges": [" 10.1.2.3/16 ", "2001:db8::/32", "bad"],
                     "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}
        }))
        .unwrap();
        let p = &service_ports(&[&svc], &[], "n1", Family::V4)[0];
        assert_eq!(
            p.external_ips,
            [
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "192.0.2.9".parse().unwrap()
            ]
        );
        assert_eq!(p.lb_ips, ["192.0.2.9".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            p.source_ranges,
            ["10.1.0.0/16".parse::<ipnet::IpNet>().unwrap()]
        );
    }
}
