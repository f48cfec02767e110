//! The Service environment variables the kubelet gives every container, as upstream's
//! `getServiceEnvVarMap` and `envvars.FromServices`: `<NAME>_SERVICE_HOST`,
//! `<NAME>_SERVICE_PORT` (and one per named port) and Docker-link-style `<NAME>_PORT…`,
//! for each Service with a cluster IP in the pod's namespace (unless
//! `enableServiceLinks: false`) and, always, for `default/kubernetes`.

use k8s_openapi::api::core::v1::Service;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The Services of the default namespace every pod gets variables for.
const MASTER_SERVICES: &[&str] = &["kubernetes"];

/// `my-svc` → `MY_SVC`.
fn var_name(s: &str) -> String {
    s.replace('-', "_").to_uppercase()
}

/// The variables for a pod in `ns`, sorted by name.
pub fn vars(ns: &str, links: bool, services: &[Arc<Service>]) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<&str, &Service> = BTreeMap::new();
    for s in services {
        let Some(spec) = s.spec.as_ref() else {
            continue;
        };
        let ip = spec.cluster_ip.as_deref().unwrap_or_default();
        if ip.is_empty() || ip == "None" || spec.ports.as_ref().is_none_or(Vec::is_empty) {
            continue;
        }
        let name = s.metadata.name.as_deref().unwrap_or_default();
        let sns = s.metadata.namespace.as_deref().unwrap_or_default();
        if sns == "default" && MASTER_SERVICES.contains(&name) {
            chosen.entry(name).or_insert(s);
        } else if sns == ns && links {
            chosen.insert(name, s);
        }
    }
    let mut out = BTreeMap::new();
    for (name, s) in chosen {
        let spec = s.spec.as_ref().expect("checked");
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let ports = spec.ports.as_deref().unwrap_or_default();
        let prefix = var_name(name);
        let service_port = format!("{prefix}_SERVICE_PORT");
        out.insert(format!("{prefix}_SERVICE_HOST"), ip.clone());
        out.insert(service_port.clone(), ports[0].port.to_string());
        for p in ports {
            if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.insert(
                    format!("{service_port}_{}", var_name(n)),
                    p.port.to_string(),
                );
            }
        }
        // Docker's link variables; host and port joined as Go's JoinHostPort does.
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.clone()
        };
        for (i, p) in ports.iter().enumerate() {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let url = format!("{}://{host}:{}", proto.to_lowercase(), p.port);
            if i == 0 {
                out.insert(format!("{prefix}_PORT"), url.clone());
            }
            let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.insert(format!("{pp}_PROTO"), proto.to_lowercase());
            out.insert(format!("{pp}_PORT"), p.port.to_string());
            out.insert(format!("{pp}_ADDR"), ip.clone());
            out.insert(pp, url);
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(ns: &str, name: &str, ip: &str, ports: &[(&str, i32, &str)]) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| ServicePort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            port: *p,
                            protocol: Some(proto.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn get<'a>(v: &'a [(String, String)], k: &str) -> Option<&'a str> {
        v.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn services_become_upstreams_variables() {
        let all = [
            svc(
                "default",
                "kubernetes",
                "10.43.0.1",
                &[("https", 443, "TCP")],
            ),
            svc(
                "shop",
                "redis-primary",
                "10.43.0.7",
                &[("", 6379, "TCP"), ("metrics", 9121, "TCP")],
            ),
            svc("shop", "headless", "None", &[("", 80, "TCP")]),
            svc("other", "elsewhere", "10.43.0.9", &[("", 80, "TCP")]),
        ];
        let v = vars("shop", true, &all);
        assert_eq!(get(&v, "KUBERNETES_SERVICE_HOST"), Some("10.43.0.1"));
        assert_eq!(get(&v, "KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(get(&v, "KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get(&v, "KUBERNETES_PORT"), Some("tcp://10.43.0.1:443"));
        assert_eq!(get(&v, "KUBERNETES_PORT_443_TCP_ADDR"), Some("10.43.0.1"));
        assert_eq!(get(&v, "REDIS_PRIMARY_SERVICE_HOST"), Some("10.43.0.7"));
        assert_eq!(get(&v, "REDIS_PRIMARY_SERVICE_PORT"), Some("6379"));
        assert_eq!(get(&v, "REDIS_PRIMARY_SERVICE_PORT_METRICS"), Some("9121"));
        assert_eq!(
            get(&v, "REDIS_PRIMARY_PORT_9121_TCP"),
            Some("tcp://10.43.0.7:9121")
        );
        assert_eq!(get(&v, "REDIS_PRIMARY_PORT_6379_TCP_PROTO"), Some("tcp"));
        assert_eq!(get(&v, "REDIS_PRIMARY_PORT_6379_TCP_PORT"), Some("6379"));
        assert!(
            get(&v, "HEADLESS_SERVICE_HOST").is_none(),
            "no cluster IP, no variables"
        );
        assert!(
            get(&v, "ELSEWHERE_SERVICE_HOST").is_none(),
            "another namespace's"
        );
    }

    #[test]
    fn without_service_links_only_the_api_servers_remain() {
        let all = [
            svc(
                "default",
                "kubernetes",
                "10.43.0.1",
                &[("https", 443, "TCP")],
            ),
            svc("shop", "redis", "10.43.0.7", &[("", 6379, "TCP")]),
        ];
        let v = vars("shop", false, &all);
        assert_eq!(get(&v, "KUBERNETES_SERVICE_HOST"), Some("10.43.0.1"));
        assert!(get(&v, "REDIS_SERVICE_HOST").is_none());
        // A UDP port says so.
        let dns = [svc("shop", "dns", "10.43.0.10", &[("dns", 53, "UDP")])];
        let v = vars("shop", true, &dns);
        assert_eq!(get(&v, "DNS_PORT"), Some("udp://10.43.0.10:53"));
        assert_eq!(get(&v, "DNS_PORT_53_UDP_PROTO"), Some("udp"));
    }
}
