//! Endpoints and EndpointSlices for every Service with a selector: the selected pods
//! with an IP, ready or not-ready by their Ready condition (all ready with
//! publishNotReadyAddresses), named target ports resolved per pod, nodeName and the
//! node's zone. Services without a selector are left to their users. A dual-stack
//! Service gets slices of each of its `ipFamilies` (the pods' addresses of that family);
//! its Endpoints hold its primary family's, as upstream's controllers do.

use crate::util;
use crate::Ctx;
use anyhow::Result;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Node, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kite_runtime::informer::key_of;
use kite_runtime::labels;
use kite_runtime::queue::run_workers_after;
use kite_runtime::{Action, Change, Informer, Key, WorkQueue};
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use std::collections::BTreeMap;
use std::sync::Arc;

const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
const SERVICE_NAME: &str = "kubernetes.io/service-name";
const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
const MAX_PER_SLICE: usize = 100;

/// (name, port, protocol) of each service port, resolved for one pod.
/// A pod's ports for a Service: name, number, protocol and appProtocol of each.
type PortSet = Vec<(Option<String>, i32, String, Option<String>)>;
/// Ready and not-ready addresses.
type Addresses = (Vec<EndpointAddress>, Vec<EndpointAddress>);

struct Controller {
    ctx: Arc<Ctx>,
    services: Arc<Informer<Service>>,
    pods: Arc<Informer<Pod>>,
    nodes: Arc<Informer<Node>>,
    endpoints: Arc<Informer<Endpoints>>,
    slices: Arc<Informer<EndpointSlice>>,
    queue: WorkQueue<Key>,
}

fn selector(s: &Service) -> Option<&BTreeMap<String, String>> {
    s.spec.as_ref()?.selector.as_ref().filter(|m| !m.is_empty())
}

pub fn start(ctx: Arc<Ctx>) {
    let c = Arc::new(Controller {
        services: ctx.informers.get::<Service>(),
        pods: ctx.informers.get::<Pod>(),
        nodes: ctx.informers.get::<Node>(),
        endpoints: ctx.informers.get::<Endpoints>(),
        slices: ctx.informers.get::<EndpointSlice>(),
        queue: WorkQueue::new(),
        ctx,
    });
    let q = c.queue.clone();
    c.services
        .add_handler(move |ch: &Change<Service>| q.add(key_of(&**ch.object())));
    let c2 = c.clone();
    c.pods.add_handler(move |ch: &Change<Pod>| {
        let p = ch.object();
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let empty = BTreeMap::new();
        let new_l = p.metadata.labels.as_ref().unwrap_or(&empty);
        let old_l = ch.old().and_then(|o| o.metadata.labels.clone());
        for s in c2.services.list_ns(&ns) {
            if let Some(sel) = selector(&s) {
                let hit = labels::matches_map(sel, new_l)
                    || old_l.as_ref().is_some_and(|l| labels::matches_map(sel, l));
                if hit {
                    c2.queue.add(key_of(&*s));
                }
            }
        }
    });
    // Edits to what we manage are put back.
    let q3 = c.queue.clone();
    c.endpoints.add_handler(move |ch: &Change<Endpoints>| {
        if let Change::Updated { .. } | Change::Deleted(_) = ch {
            q3.add(key_of(&**ch.object()));
        }
    });
    let q4 = c.queue.clone();
    c.slices.add_handler(move |ch: &Change<EndpointSlice>| {
        let s = ch.object();
        let l = s.metadata.labels.clone().unwrap_or_default();
        if l.get(MANAGED_BY).map(String::as_str) == Some(SLICE_CONTROLLER) {
            if let Some(svc) = l.get(SERVICE_NAME) {
                q4.add((
                    s.metadata.namespace.clone().unwrap_or_default(),
                    svc.clone(),
                ));
            }
        }
    });
    let c3 = c.clone();
    run_workers_after(
        futures::future::join(
            futures::future::join3(
                c.services.synced_future(),
                c.pods.synced_future(),
                c.nodes.synced_future(),
            ),
            futures::future::join(c.endpoints.synced_future(), c.slices.synced_future()),
        ),
        "endpoint-controller",
        c.queue.clone(),
        4,
        move |k| {
            let c = c3.clone();
            async move { c.reconcile(k).await }
        },
    );
}

/// One pod's endpoint for the service.
struct PodEndpoint {
    ip: String,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: Option<String>,
    zone: Option<String>,
    target: ObjectReference,
    /// The pod's `hostname`, when its `subdomain` is this Service (DNS names
    /// `<hostname>.<service>.<namespace>.svc`, as upstream's controllers publish them).
    hostname: Option<String>,
    /// (name, port, protocol) per service port.
    ports: PortSet,
}

fn resolve_port(p: &Pod, target: &IntOrString) -> Option<i32> {
    match target {
        IntOrString::Int(i) => Some(*i),
        IntOrString::String(name) => p
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .map(|cp| cp.container_port),
    }
}

impl Controller {
    fn pod_endpoints(
        &self,
        svc: &Service,
        sel: &BTreeMap<String, String>,
        family: &str,
    ) -> Vec<PodEndpoint> {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let spec = svc.spec.clone().unwrap_or_default();
        let publish = spec.publish_not_ready_addresses.unwrap_or(false);
        let mut out = Vec::new();
        for p in self.pods.list_ns(&ns) {
            if util::is_terminal(&p)
                || !labels::matches_map(
                    sel,
                    p.metadata.labels.as_ref().unwrap_or(&Default::default()),
                )
            {
                continue;
            }
            let Some(ip) = pod_ip_of(&p, family) else {
                continue;
            };
            let terminating = p.metadata.deletion_timestamp.is_some();
            if terminating && !publish {
                continue;
            }
            let serving = util::is_ready(&p);
            let mut ports = Vec::new();
            let mut complete = true;
            for sp in spec.ports.iter().flatten() {
                let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
                match resolve_port(&p, &target) {
                    Some(port) => ports.push((
                        sp.name.clone(),
                        port,
                        sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        // Copied from the Service port, as upstream's controllers do.
                        sp.app_protocol.clone(),
                    )),
                    None => complete = false,
                }
            }
            if !complete && ports.is_empty() {
                continue;
            }
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let zone = node
                .as_ref()
                .and_then(|n| self.nodes.get("", n))
                .and_then(|n| {
                    n.metadata
                        .labels
                        .as_ref()?
                        .get("topology.kubernetes.io/zone")
                        .cloned()
                });
            let pspec = p.spec.as_ref();
            let hostname = pspec
                .and_then(|s| s.hostname.clone())
                .filter(|h| !h.is_empty())
                .filter(|_| {
                    pspec.and_then(|s| s.subdomain.as_deref()) == svc.metadata.name.as_deref()
                });
            out.push(PodEndpoint {
                ip,
                hostname,
                ready: (serving && !terminating) || publish,
                serving: serving || publish,
                terminating,
                node,
                zone,
                target: ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(ns.clone()),
                    name: p.metadata.name.clone(),
                    uid: p.metadata.uid.clone(),
                    ..Default::default()
                },
                ports,
            });
        }
        out.sort_by(|a, b| a.ip.cmp(&b.ip));
        out
    }

    async fn reconcile(&self, key: Key) -> Result<Action> {
        let Some(svc) = self.services.get_key(&key) else {
            // The Service is gone: so are the Endpoints this controller wrote for it
            // (EndpointSlices go with their owner through garbage collection). Endpoints
            // someone wrote with no Service stay theirs.
            let ours = self.endpoints.get_key(&key).is_some_and(|e| {
                e.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SKIP_MIRROR))
                    .map(String::as_str)
                    == Some("true")
            });
            if !ours {
                return Ok(Action::AwaitChange);
            }
            let api: Api<Endpoints> = Api::namespaced(self.ctx.client.clone(), &key.0);
            match api.delete(&key.1, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if crate::util::is_status(&e, 404) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Action::AwaitChange);
        };
        let Some(sel) = selector(&svc).cloned() else {
            return Ok(Action::AwaitChange);
        };
        if svc.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let families = families(&svc);
        let per_family: Vec<(String, Vec<PodEndpoint>)> = families
            .iter()
            .map(|f| (f.clone(), self.pod_endpoints(&svc, &sel, f)))
            .collect();
        self.sync_endpoints(&svc, &per_family[0].1).await?;
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let ours: Vec<Arc<EndpointSlice>> = self
            .slices
            .list_ns(&ns)
            .into_iter()
            .filter(|s| {
                let l = s.metadata.labels.clone().unwrap_or_default();
                l.get(SERVICE_NAME) == Some(&name)
                    && l.get(MANAGED_BY).map(String::as_str) == Some(SLICE_CONTROLLER)
            })
            .collect();
        for (family, eps) in &per_family {
            let existing = ours
                .iter()
                .filter(|s| &s.address_type == family)
                .cloned()
                .collect();
            self.sync_slices(&svc, family, eps, existing).await?;
        }
        // Slices of a family the Service no longer has (a dual-stack Service made single).
        let api: Api<EndpointSlice> = Api::namespaced(self.ctx.client.clone(), &ns);
        for gone in ours.iter().filter(|s| !families.contains(&s.address_type)) {
            let _ = api
                .delete(
                    gone.metadata.name.as_deref().unwrap_or_default(),
                    &DeleteParams::default(),
                )
                .await;
        }
        Ok(Action::AwaitChange)
    }

    async fn sync_endpoints(&self, svc: &Service, eps: &[PodEndpoint]) -> Result<()> {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        // Group addresses by their port set, one subset each.
        let mut groups: BTreeMap<PortSet, Addresses> = BTreeMap::new();
        for e in eps.iter().filter(|e| !e.terminating) {
            let addr = EndpointAddress {
                ip: e.ip.clone(),
                node_name: e.node.clone(),
                target_ref: Some(e.target.clone()),
                hostname: e.hostname.clone(),
            };
            let g = groups.entry(e.ports.clone()).or_default();
            if e.ready {
                g.0.push(addr)
            } else {
                g.1.push(addr)
            }
        }
        let subsets: Vec<EndpointSubset> = groups
            .into_iter()
            .map(|(ports, (ready, not_ready))| EndpointSubset {
                addresses: Some(ready).filter(|v| !v.is_empty()),
                not_ready_addresses: Some(not_ready).filter(|v| !v.is_empty()),
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(n, p, proto, app)| EndpointPort {
                            name: n,
                            port: p,
                            protocol: Some(proto),
                            app_protocol: app,
                        })
                        .collect::<Vec<_>>(),
                )
                .filter(|v| !v.is_empty()),
            })
            .collect();
        let mut labels_ = svc.metadata.labels.clone().unwrap_or_default();
        // As upstream's controller marks the Endpoints it writes: not for mirroring (the
        // slices come from this controller), and ours to delete with the Service.
        labels_.insert(SKIP_MIRROR.into(), "true".into());
        if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
            labels_.insert("service.kubernetes.io/headless".into(), String::new());
        }
        let api: Api<Endpoints> = Api::namespaced(self.ctx.client.clone(), &ns);
        let existing = self.endpoints.get(&ns, &name);
        let want_subsets = Some(subsets).filter(|s| !s.is_empty());
        if let Some(e) = &existing {
            if e.subsets == want_subsets && e.metadata.labels.clone().unwrap_or_default() == labels_
            {
                return Ok(());
            }
        }
        let obj = Endpoints {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(labels_),
                resource_version: existing
                    .as_ref()
                    .and_then(|e| e.metadata.resource_version.clone()),
                annotations: existing
                    .as_ref()
                    .and_then(|e| e.metadata.annotations.clone()),
                ..Default::default()
            },
            subsets: want_subsets,
        };
        match existing {
            Some(_) => api
                .replace(&name, &PostParams::default(), &obj)
                .await
                .map(|_| ())?,
            None => match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                Err(e) if util::is_status(&e, 409) => {
                    anyhow::bail!("endpoints {ns}/{name} appeared meanwhile")
                }
                Err(e) => return Err(e.into()),
            },
        }
        Ok(())
    }

    async fn sync_slices(
        &self,
        svc: &Service,
        family: &str,
        eps: &[PodEndpoint],
        mut existing: Vec<Arc<EndpointSlice>>,
    ) -> Result<()> {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let api: Api<EndpointSlice> = Api::namespaced(self.ctx.client.clone(), &ns);
        // Desired slices: per port set, chunks of MAX_PER_SLICE.
        let mut by_ports: BTreeMap<PortSet, Vec<&PodEndpoint>> = BTreeMap::new();
        for e in eps {
            by_ports.entry(e.ports.clone()).or_default().push(e);
        }
        if by_ports.is_empty() {
            // An empty slice still says "this service has no endpoints", as upstream.
            let ports = svc
                .spec
                .as_ref()
                .and_then(|s| s.ports.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    (
                        p.name,
                        match p.target_port {
                            Some(IntOrString::Int(i)) => i,
                            _ => p.port,
                        },
                        p.protocol.unwrap_or_else(|| "TCP".into()),
                        p.app_protocol,
                    )
                })
                .collect();
            by_ports.insert(ports, Vec::new());
        }
        let mut desired: Vec<EndpointSlice> = Vec::new();
        for (ports, list) in by_ports {
            let chunks: Vec<&[&PodEndpoint]> = if list.is_empty() {
                vec![&[]]
            } else {
                list.chunks(MAX_PER_SLICE).collect()
            };
            for chunk in chunks {
                let mut l = svc.metadata.labels.clone().unwrap_or_default();
                l.insert(SERVICE_NAME.into(), name.clone());
                l.insert(MANAGED_BY.into(), SLICE_CONTROLLER.into());
                desired.push(EndpointSlice {
                    metadata: ObjectMeta {
                        generate_name: Some(format!("{name}-")),
                        namespace: Some(ns.clone()),
                        labels: Some(l),
                        owner_references: Some(vec![util::owner_ref(svc)]),
                        ..Default::default()
                    },
                    address_type: family.into(),
                    endpoints: Some(
                        chunk
                            .iter()
                            .map(|e| Endpoint {
                                addresses: vec![e.ip.clone()],
                                conditions: Some(EndpointConditions {
                                    ready: Some(e.ready),
                                    serving: Some(e.serving),
                                    terminating: Some(e.terminating),
                                }),
                                node_name: e.node.clone(),
                                zone: e.zone.clone(),
                                target_ref: Some(e.target.clone()),
                                hostname: e.hostname.clone(),
                                ..Default::default()
                            })
                            .collect::<Vec<_>>(),
                    )
                    .filter(|v| !v.is_empty()),
                    ports: Some(
                        ports
                            .iter()
                            .map(|(n, p, proto, app)| SlicePort {
                                // Always set, "" for an unnamed port, as upstream's
                                // controller does (kubectl describe dereferences it).
                                name: Some(n.clone().unwrap_or_default()),
                                port: Some(*p),
                                protocol: Some(proto.clone()),
                                app_protocol: app.clone(),
                            })
                            .collect(),
                    ),
                });
            }
        }
        existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for (i, want) in desired.into_iter().enumerate() {
            match existing.get(i) {
                Some(have) => {
                    let same = have.endpoints == want.endpoints
                        && have.ports == want.ports
                        && have.metadata.labels == want.metadata.labels;
                    if !same {
                        let mut upd = want.clone();
                        upd.metadata.name = have.metadata.name.clone();
                        upd.metadata.generate_name = None;
                        upd.metadata.resource_version = have.metadata.resource_version.clone();
                        api.replace(
                            have.metadata.name.as_deref().unwrap_or_default(),
                            &PostParams::default(),
                            &upd,
                        )
                        .await?;
                    }
                }
                None => {
                    api.create(&PostParams::default(), &want).await?;
                }
            }
        }
        for extra in existing.iter().skip(self_len(eps)) {
            let _ = api
                .delete(
                    extra.metadata.name.as_deref().unwrap_or_default(),
                    &DeleteParams::default(),
                )
                .await;
        }
        Ok(())
    }
}

/// The Service's IP families, primary first (IPv4 for one written before it had any).
fn families(svc: &Service) -> Vec<String> {
    let f = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.clone())
        .unwrap_or_default();
    if f.is_empty() {
        vec!["IPv4".into()]
    } else {
        f
    }
}

/// The pod's address of `family` (`IPv4` or `IPv6`), from `podIPs` (or `podIP`).
fn pod_ip_of(p: &Pod, family: &str) -> Option<String> {
    let st = p.status.as_ref()?;
    let listed = st.pod_ips.iter().flatten().map(|i| i.ip.clone());
    listed
        .chain(st.pod_ip.clone())
        .filter(|i| !i.is_empty())
        .find(|i| {
            let v6 = i.contains(':');
            (family == "IPv6") == v6
        })
}

/// How many slices the endpoints need (at least one).
fn self_len(eps: &[PodEndpoint]) -> usize {
    let mut sets: BTreeMap<&PortSet, usize> = BTreeMap::new();
    for e in eps {
        *sets.entry(&e.ports).or_default() += 1;
    }
    sets.values()
        .map(|n| n.div_ceil(MAX_PER_SLICE))
        .sum::<usize>()
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_address_of_each_family() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "status": {"podIP": "10.42.0.5",
                       "podIPs": [{"ip": "10.42.0.5"}, {"ip": "fd42::5"}]}
        }))
        .unwrap();
        assert_eq!(pod_ip_of(&p, "IPv4").as_deref(), Some("10.42.0.5"));
        assert_eq!(pod_ip_of(&p, "IPv6").as_deref(), Some("fd42::5"));
        let v4only: Pod =
            serde_json::from_value(serde_json::json!({"status": {"podIP": "10.42.0.6"}})).unwrap();
        assert_eq!(pod_ip_of(&v4only, "IPv6"), None);
        let svc: Service =
            serde_json::from_value(serde_json::json!({"spec": {"ipFamilies": ["IPv6", "IPv4"]}}))
                .unwrap();
        assert_eq!(families(&svc), ["IPv6", "IPv4"]);
        assert_eq!(families(&Service::default()), ["IPv4"]);
    }
}
