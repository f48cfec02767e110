//! NetworkPolicy on every node, as K3s's embedded policy controller (kube-router's)
//! enforces it: networking.k8s.io/v1 policies, pods and namespaces are watched through
//! the API; the policies of the pods on this node become the table `inet kite-netpol`,
//! replaced in one nft transaction whenever any of them changes.
//!
//! `model` is the semantics (which traffic each local pod allows), `rules` the table.

pub mod model;
pub mod rules;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kite_proxy::nft;
use kite_runtime::Informers;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long changes that come together are gathered into one transaction.
const BATCH: Duration = Duration::from_millis(50);

/// Runs the policy enforcer for `node` until the process ends.
pub async fn run(client: kube::Client, node: String) -> anyhow::Result<()> {
    let informers = Informers::new(client);
    let policies = informers.get::<NetworkPolicy>();
    let pods = informers.get::<Pod>();
    let namespaces = informers.get::<Namespace>();
    let slices = informers.get::<EndpointSlice>();
    let wake = Arc::new(tokio::sync::Notify::new());
    policies.wake_on_change(&wake);
    pods.wake_on_change(&wake);
    namespaces.wake_on_change(&wake);
    let w = wake.clone();
    slices.add_handler(move |c| {
        if c.object().metadata.namespace.as_deref() == Some("kube-system") {
            w.notify_one()
        }
    });
    informers.synced().await;
    let mut applied: Option<String> = None;
    loop {
        let pols = policies.list();
        let script = if pols.is_empty() {
            rules::teardown()
        } else {
            let mut infos = model::pods(
                &pods.list().iter().map(|p| p.as_ref()).collect::<Vec<_>>(),
                &node,
            );
            infos.extend(model::dns_pods(&dns_addresses(&slices.list())));
            let nss = namespaces.list();
            let policed = model::compute(
                &pols.iter().map(|p| p.as_ref()).collect::<Vec<_>>(),
                &nss.iter().map(|n| n.as_ref()).collect::<Vec<_>>(),
                &infos,
            );
            rules::script(&policed)
        };
        if applied.as_deref() != Some(script.as_str()) {
            match nft::apply(&script).await {
                Ok(()) => {
                    tracing::debug!(policies = pols.len(), "network policies programmed");
                    applied = Some(script);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "programming network policies failed; trying again");
                    applied = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => tokio::time::sleep(BATCH).await,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}

/// The nodes' DNS addresses: the endpoints of kube-system/kube-dns.
fn dns_addresses(slices: &[Arc<EndpointSlice>]) -> Vec<IpAddr> {
    slices
        .iter()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some("kube-system")
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .map(String::as_str)
                    == Some("kube-dns")
        })
        .flat_map(|s| s.endpoints.iter().flatten())
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse().ok())
        .collect()
}
