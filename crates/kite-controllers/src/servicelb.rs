//! ServiceLB, as K3s's: a LoadBalancer Service gets the addresses of the nodes as its
//! `status.loadBalancer.ingress` (a node's ExternalIP, else its InternalIP), and the
//! service proxy on every node opens its ports on them; there are no extra pods.
//!
//! Which nodes: the Ready ones; if any node is labelled
//! `svccontroller.kite.io/enablelb=true` (or K3s's `svccontroller.k3s.cattle.io/…`),
//! only those; a node labelled `false` never. A Service labelled `…/lbpool=P` uses only
//! the nodes of pool `P`. A port (and protocol) belongs to the oldest LoadBalancer
//! Service that asks for it, as K3s's hostPort does: a younger one stays Pending (no
//! ingress) with a `SyncLoadBalancerFailed` event until the port is free. A Service
//! with a `loadBalancerClass` is left to the controller of that class.

use crate::Ctx;
use k8s_openapi::api::core::v1::{Node, Service};
use kite_runtime::queue::run_workers_after;
use kite_runtime::{Action, Change, WorkQueue};
use kube::api::{Patch, PatchParams};
use kube::Api;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

const PREFIXES: [&str; 2] = ["svccontroller.kite.io/", "svccontroller.k3s.cattle.io/"];
const COMPONENT: &str = "service-lb-controller";

fn label<'a>(labels: Option<&'a BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    let l = labels?;
    PREFIXES
        .iter()
        .find_map(|p| l.get(&format!("{p}{key}")))
        .map(String::as_str)
}

/// Whether this controller owns the Service's load balancer.
pub fn is_ours(s: &Service) -> bool {
    s.spec.as_ref().is_some_and(|sp| {
        sp.type_.as_deref() == Some("LoadBalancer") && sp.load_balancer_class.is_none()
    }) && s.metadata.deletion_timestamp.is_none()
}

/// What a Service gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Ingress(Vec<String>),
    /// Its `port/PROTO` belongs to the named Service.
    PortTaken(String, String),
}

fn key(s: &Service) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default()
    )
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn node_address(n: &Node) -> Option<String> {
    let addrs = n.status.as_ref()?.addresses.as_ref()?;
    ["ExternalIP", "InternalIP"]
        .iter()
        .find_map(|t| addrs.iter().find(|a| a.type_ == *t))
        .map(|a| a.address.clone())
}

/// The decision for every LoadBalancer Service this controller owns, oldest first.
pub fn decide(services: &[&Service], nodes: &[&Node]) -> BTreeMap<String, Decision> {
    let mut ours: Vec<&Service> = services.iter().copied().filter(|s| is_ours(s)).collect();
    ours.sort_by_key(|s| (crate::util::created(&s.metadata), key(s)));
    let enabled: Vec<&Node> = nodes
        .iter()
        .copied()
        .filter(|n| node_ready(n) && label(n.metadata.labels.as_ref(), "enablelb") != Some("false"))
        .collect();
    let any_labelled = enabled
        .iter()
        .any(|n| label(n.metadata.labels.as_ref(), "enablelb") == Some("true"));
    let eligible: Vec<&Node> = enabled
        .into_iter()
        .filter(|n| !any_labelled || label(n.metadata.labels.as_ref(), "enablelb") == Some("true"))
        .collect();
    let mut owners: HashMap<(i32, String), String> = HashMap::new();
    let mut out = BTreeMap::new();
    for s in ours {
        let k = key(s);
        let ports: Vec<(i32, String)> = s
            .spec
            .as_ref()
            .and_then(|sp| sp.ports.as_ref())
            .into_iter()
            .flatten()
            .map(|p| (p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into())))
            .collect();
        if let Some(((port, proto), owner)) = ports
            .iter()
            .find_map(|p| owners.get(p).map(|o| (p.clone(), o.clone())))
        {
            out.insert(k, Decision::PortTaken(format!("{port}/{proto}"), owner));
            continue;
        }
        for p in ports {
            owners.insert(p, k.clone());
        }
        let pool = label(s.metadata.labels.as_ref(), "lbpool");
        let mut ips: Vec<String> = eligible
            .iter()
            .filter(|n| pool.is_none() || label(n.metadata.labels.as_ref(), "lbpool") == pool)
            .filter_map(|n| node_address(n))
            .collect();
        ips.sort();
        ips.dedup();
        out.insert(k, Decision::Ingress(ips));
    }
    out
}

fn current_ingress(s: &Service) -> Vec<String> {
    s.status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

pub fn start(ctx: Arc<Ctx>) {
    let services = ctx.informers.get::<Service>();
    let nodes = ctx.informers.get::<Node>();
    let q: WorkQueue<String> = WorkQueue::new();
    // Any change may move a port or a node: every LoadBalancer Service is looked at again.
    let all = {
        let (q, services) = (q.clone(), services.clone());
        move || {
            for s in services.list() {
                if is_ours(&s) {
                    q.add(key(&s));
                }
            }
        }
    };
    let a = all.clone();
    let q1 = q.clone();
    services.add_handler(move |c: &Change<Service>| {
        let s = c.object();
        let lb = s.spec.as_ref().and_then(|sp| sp.type_.as_deref()) == Some("LoadBalancer");
        if lb || matches!(c, Change::Deleted(_)) {
            a();
        }
        // A Service that stopped being a LoadBalancer loses its ingress.
        if !lb && !current_ingress(s).is_empty() {
            q1.add(key(s));
        }
    });
    nodes.add_handler(move |_: &Change<Node>| all());
    run_workers_after(
        futures::future::join(services.synced_future(), nodes.synced_future()),
        "service-lb-controller",
        q,
        1,
        move |k: String| {
            let (ctx, services, nodes) = (ctx.clone(), services.clone(), nodes.clone());
            async move {
                let (ns, name) = k.split_once('/').unwrap_or_default();
                let Some(svc) = services.get(ns, name) else {
                    return Ok(Action::AwaitChange);
                };
                let all = services.list();
                let ns_list = nodes.list();
                let decisions = decide(
                    &all.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
                    &ns_list.iter().map(|n| n.as_ref()).collect::<Vec<_>>(),
                );
                let is_lb =
                    svc.spec.as_ref().and_then(|sp| sp.type_.as_deref()) == Some("LoadBalancer");
                let want: Vec<String> = match decisions.get(&k) {
                    Some(Decision::Ingress(ips)) => ips.clone(),
                    Some(Decision::PortTaken(port, owner)) => {
                        ctx.recorder(COMPONENT).event(
                            svc.as_ref(),
                            "Warning",
                            "SyncLoadBalancerFailed",
                            format!("Error syncing load balancer: port {port} is already used by LoadBalancer Service {owner}"),
                        );
                        vec![]
                    }
                    // Another class's.
                    None if is_lb => return Ok(Action::AwaitChange),
                    // No longer a LoadBalancer: the ingress goes if it is ours (node
                    // addresses); a status someone else wrote stays.
                    None => {
                        let ours: Vec<String> =
                            ns_list.iter().filter_map(|n| node_address(n)).collect();
                        if !current_ingress(&svc).iter().all(|ip| ours.contains(ip)) {
                            return Ok(Action::AwaitChange);
                        }
                        vec![]
                    }
                };
                if current_ingress(&svc) == want {
                    return Ok(Action::AwaitChange);
                }
                if !want.is_empty() {
                    ctx.recorder(COMPONENT).event(
                        svc.as_ref(),
                        "Normal",
                        "EnsuringLoadBalancer",
                        "Ensuring load balancer",
                    );
                }
                let ingress: Vec<serde_json::Value> = want
                    .iter()
                    .map(|ip| serde_json::json!({"ip": ip, "ipMode": "VIP"}))
                    .collect();
                let api: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
                let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": if ingress.is_empty() { serde_json::Value::Null } else { serde_json::Value::Array(ingress) }}}});
                api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                if !want.is_empty() {
                    ctx.recorder(COMPONENT).event(
                        svc.as_ref(),
                        "Normal",
                        "EnsuredLoadBalancer",
                        "Ensured load balancer",
                    );
                }
                Ok(Action::AwaitChange)
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, created: &str, port: i32, extra: serde_json::Value) -> Service {
        let mut v = serde_json::json!({
            "metadata": {"namespace": "default", "name": name, "creationTimestamp": created},
            "spec": {"type": "LoadBalancer", "ports": [{"port": port, "protocol": "TCP"}]}
        });
        if let Some(o) = extra.as_object() {
            for (k, x) in o {
                v["spec"][k] = x.clone();
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn node(name: &str, ip: &str, ready: bool, labels: serde_json::Value) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "status": {
                "addresses": [{"type": "InternalIP", "address": ip}],
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_oldest_service_keeps_a_port_and_others_wait() {
        let a = svc("a", "2026-01-01T00:00:00Z", 80, serde_json::json!({}));
        let b = svc("b", "2026-01-02T00:00:00Z", 80, serde_json::json!({}));
        let c = svc("c", "2026-01-03T00:00:00Z", 81, serde_json::json!({}));
        let d = svc(
            "d",
            "2026-01-01T00:00:00Z",
            80,
            serde_json::json!({"loadBalancerClass": "example.com/metallb"}),
        );
        let n1 = node("n1", "10.0.0.2", true, serde_json::json!({}));
        let n2 = node("n2", "10.0.0.1", true, serde_json::json!({}));
        let n3 = node("n3", "10.0.0.3", false, serde_json::json!({}));
        let d = decide(&[&b, &a, &c, &d], &[&n1, &n2, &n3]);
        let both = Decision::Ingress(vec!["10.0.0.1".into(), "10.0.0.2".into()]);
        assert_eq!(d["default/a"], both);
        assert_eq!(
            d["default/b"],
            Decision::PortTaken("80/TCP".into(), "default/a".into())
        );
        assert_eq!(d["default/c"], both);
        assert!(
            !d.contains_key("default/d"),
            "another class's Service is left alone"
        );
    }

    #[test]
    fn enablelb_labels_choose_nodes() {
        let a = svc("a", "2026-01-01T00:00:00Z", 80, serde_json::json!({}));
        let n1 = node(
            "n1",
            "10.0.0.1",
            true,
            serde_json::json!({"svccontroller.kite.io/enablelb": "true"}),
        );
        let n2 = node("n2", "10.0.0.2", true, serde_json::json!({}));
        let d = decide(&[&a], &[&n1, &n2]);
        assert_eq!(d["default/a"], Decision::Ingress(vec!["10.0.0.1".into()]));
        let n1 = node(
            "n1",
            "10.0.0.1",
            true,
            serde_json::json!({"svccontroller.k3s.cattle.io/enablelb": "false"}),
        );
        let d = decide(&[&a], &[&n1, &n2]);
        assert_eq!(d["default/a"], Decision::Ingress(vec!["10.0.0.2".into()]));
    }
}
