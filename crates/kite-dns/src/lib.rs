//! kite's cluster DNS, on every node: the records of CoreDNS's kubernetes plugin,
//! answered from an in-memory [`view::View`] that watches of Services, EndpointSlices
//! and Namespaces keep current (no API call per query), and other names forwarded to the
//! host's resolvers with a cache.
//!
//! Where it listens: on the node's pod gateway (the first address of its pod CIDR, the
//! bridge's), port 53, UDP and TCP. Each node publishes that address as its own
//! EndpointSlice of the `kube-system/kube-dns` Service, whose cluster IP is the one the
//! kubelet writes into pods' resolv.conf (`--cluster-dns`), so the service proxy carries
//! pods' queries to a node's DNS as for any Service. The server creates that Service
//! ([`ensure_service`]) unless DNS is disabled.
//!
//! `view` builds the snapshot, `answer` answers from it, `forward` asks upstream, and
//! `server` owns the sockets.

pub mod answer;
pub mod forward;
pub mod server;
pub mod view;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kite_runtime::Informers;
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The Service pods reach the cluster DNS through.
pub const SERVICE: &str = "kube-dns";
pub const NAMESPACE: &str = "kube-system";
const MANAGED_BY: &str = "kite-dns";

/// How the DNS server runs on a node.
#[derive(Debug, Clone)]
pub struct Options {
    pub node_name: String,
    /// The cluster domain (`cluster.local`).
    pub zone: String,
    /// The kube-dns Service's cluster IP (`--cluster-dns`).
    pub cluster_dns: IpAddr,
    /// TTL of the cluster's records (CoreDNS's default, 5 s).
    pub ttl: u32,
    /// The resolv.conf whose nameservers get the other names; `None`: /etc/resolv.conf.
    pub resolv_conf: Option<PathBuf>,
    /// Where to listen instead of the node's pod gateway on port 53 (tests, benchmarks);
    /// the node then publishes no endpoint.
    pub listen: Option<SocketAddr>,
}

/// How long changes that come together are gathered into one new snapshot.
const BATCH: Duration = Duration::from_millis(20);

/// Runs the node's DNS server until the process ends.
pub async fn run(client: kube::Client, opts: Options) -> anyhow::Result<()> {
    let informers = Informers::new(client.clone());
    let services = informers.get::<Service>();
    let slices = informers.get::<EndpointSlice>();
    let namespaces = informers.get::<Namespace>();
    let wake = Arc::new(tokio::sync::Notify::new());
    services.wake_on_change(&wake);
    slices.wake_on_change(&wake);
    namespaces.wake_on_change(&wake);
    let base = view::View::empty(&opts.zone, opts.cluster_dns, opts.ttl);
    let (resolv, explicit) = match &opts.resolv_conf {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from("/etc/resolv.conf"), false),
    };
    let shared = Arc::new(server::Shared {
        view: RwLock::new(Arc::new(base.clone())),
        forwarder: forward::Forwarder::new(resolv, explicit),
    });
    informers.synced().await;

    let (addr, publish) = match opts.listen {
        Some(a) => (a, false),
        None => (
            SocketAddr::new(node_gateway(&client, &opts.node_name).await, 53),
            true,
        ),
    };
    let rt = tokio::runtime::Handle::current();
    let bound = loop {
        match server::serve(addr, shared.clone(), rt.clone()) {
            Ok(b) => break b,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot listen for DNS queries; trying again in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    tracing::info!(addr = %bound, zone = %opts.zone, "cluster DNS is serving");
    if publish {
        let (client, node) = (client.clone(), opts.node_name.clone());
        tokio::spawn(async move { publish_endpoint(client, node, bound.ip()).await });
    }
    let reload = shared.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            reload.forwarder.reload();
        }
    });
    loop {
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        let (svcs, sls, nss) = (services.list(), slices.list(), namespaces.list());
        let next = view::View::build(
            base.clone(),
            &svcs.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
            &sls.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
            &nss.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
            serial,
        );
        *shared.view.write().unwrap() = Arc::new(next);
        wake.notified().await;
        tokio::time::sleep(BATCH).await;
    }
}

/// The first address of the node's pod CIDR, once the node has one.
async fn node_gateway(client: &kube::Client, node: &str) -> IpAddr {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut said = false;
    loop {
        if let Ok(n) = nodes.get(node).await {
            let cidr = n.spec.and_then(|s| s.pod_cidr);
            if let Some(net) = cidr.and_then(|c| c.parse::<ipnet::IpNet>().ok()) {
                if let Some(gw) = net.hosts().next() {
                    return gw;
                }
            }
        }
        if !said {
            tracing::info!(%node, "the cluster DNS waits for the node's pod CIDR");
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The kube-dns ports, as K3s's CoreDNS Service names them (`kubectl cluster-info` and
/// tools that look for `kube-dns:dns` find it).
fn ports() -> [(&'static str, &'static str); 2] {
    [("dns", "UDP"), ("dns-tcp", "TCP")]
}

/// Keeps this node's EndpointSlice of kube-dns (`kube-dns-<node>`, owned by the Node, so
/// it goes with it) saying where the node's DNS listens; checked again every minute.
async fn publish_endpoint(client: kube::Client, node: String, ip: IpAddr) {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let nodes: Api<Node> = Api::all(client);
    let name = format!("{SERVICE}-{node}");
    loop {
        let r: anyhow::Result<()> = async {
            let n = nodes.get(&node).await?;
            let desired = EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(NAMESPACE.into()),
                    labels: Some(BTreeMap::from([
                        ("kubernetes.io/service-name".into(), SERVICE.into()),
                        (
                            "endpointslice.kubernetes.io/managed-by".into(),
                            MANAGED_BY.into(),
                        ),
                    ])),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: node.clone(),
                        uid: n.metadata.uid.clone().unwrap_or_default(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                address_type: if ip.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
                endpoints: Some(vec![Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    node_name: Some(node.clone()),
                    ..Default::default()
                }]),
                ports: Some(
                    ports()
                        .into_iter()
                        .map(|(n, p)| EndpointPort {
                            name: Some(n.into()),
                            port: Some(53),
                            protocol: Some(p.into()),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            };
            match slices.get_opt(&name).await? {
                None => {
                    slices.create(&PostParams::default(), &desired).await?;
                }
                Some(cur)
                    if cur.endpoints != desired.endpoints
                        || cur.ports != desired.ports
                        || cur.metadata.owner_references != desired.metadata.owner_references =>
                {
                    let mut next = desired;
                    next.metadata.resource_version = cur.metadata.resource_version;
                    slices.replace(&name, &PostParams::default(), &next).await?;
                }
                Some(_) => {}
            }
            Ok(())
        }
        .await;
        let wait = match r {
            Ok(()) => 60,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "publishing the node's DNS endpoint failed; trying again");
                2
            }
        };
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

/// The `kube-system/kube-dns` Service at `cluster_dns`, with K3s's labels (so
/// `kubectl cluster-info` lists it and tools that select `k8s-app=kube-dns` find it), and
/// no selector: the nodes publish its endpoints. Created if missing; a user's edits stay.
pub async fn ensure_service(client: kube::Client, cluster_dns: IpAddr) {
    let api: Api<Service> = Api::namespaced(client, NAMESPACE);
    let svc = Service {
        metadata: ObjectMeta {
            name: Some(SERVICE.into()),
            namespace: Some(NAMESPACE.into()),
            labels: Some(BTreeMap::from([
                ("k8s-app".into(), "kube-dns".into()),
                ("kubernetes.io/cluster-service".into(), "true".into()),
                ("kubernetes.io/name".into(), "KubeDNS".into()),
            ])),
            annotations: Some(BTreeMap::from([
                ("prometheus.io/port".into(), "9153".into()),
                ("prometheus.io/scrape".into(), "true".into()),
            ])),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_dns.to_string()),
            cluster_ips: Some(vec![cluster_dns.to_string()]),
            ports: Some(
                ports()
                    .into_iter()
                    .map(|(n, p)| ServicePort {
                        name: Some(n.into()),
                        port: 53,
                        protocol: Some(p.into()),
                        target_port: Some(
                            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(53),
                        ),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    for attempt in 0u32.. {
        let r = async {
            if api.get_opt(SERVICE).await?.is_none() {
                api.create(&PostParams::default(), &svc).await?;
            }
            anyhow::Ok(())
        }
        .await
        .context("creating kube-system/kube-dns");
        match r {
            Ok(()) => return,
            Err(e) => {
                if attempt % 10 == 0 {
                    tracing::warn!(error = %format!("{e:#}"), "the cluster DNS Service is not there yet; trying again");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
