//! The controller manager: every controller runs here as an API client of its own
//! identity (`system:kube-controller-manager`), sharing one informer per kind, after
//! winning the `kube-controller-manager` lease. Each controller lives in its own module
//! as a `reconcile(key)` over a work queue; errors are retried with back-off.

pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod gc;
pub mod mirroring;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod nodepassword;
pub mod podgc;
pub mod replicaset;
pub mod serviceaccount;
pub mod servicelb;
pub mod util;

use anyhow::Result;
use kite_runtime::events::Recorder;
use kite_runtime::Informers;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Controller manager settings, from `kite server`'s flags.
#[derive(Debug, Clone)]
pub struct Options {
    pub cluster_cidr: ipnet::Ipv4Net,
    /// The pods' IPv6 range of a dual-stack cluster (each node gets a /64 of it).
    pub cluster_cidr_v6: Option<ipnet::Ipv6Net>,
    /// Prefix length of each node's podCIDR.
    pub node_cidr_mask: u8,
    pub node_monitor_grace_period: Duration,
    /// The cluster CA published as `kube-root-ca.crt` in every namespace.
    pub root_ca_pem: String,
    /// Holder identity for leader election.
    pub identity: String,
    /// Run ServiceLB (K3s's load balancer on the nodes' addresses); off with
    /// `--disable servicelb`.
    pub servicelb: bool,
}

/// What every controller shares.
pub struct Ctx {
    pub client: kube::Client,
    pub informers: Informers,
    pub opts: Options,
    recorders: Mutex<HashMap<&'static str, Recorder>>,
}

impl Ctx {
    /// The event recorder of one controller (its `source.component`).
    pub fn recorder(&self, component: &'static str) -> Recorder {
        self.recorders
            .lock()
            .unwrap()
            .entry(component)
            .or_insert_with(|| Recorder::new(self.client.clone(), component, ""))
            .clone()
    }
}

/// Starts every controller once this process holds the lease, then returns.
pub async fn run(client: kube::Client, opts: Options) -> Result<()> {
    let _lost =
        kite_runtime::leader::acquire(client.clone(), "kube-controller-manager", &opts.identity)
            .await;
    let ctx = Arc::new(Ctx {
        informers: Informers::new(client.clone()),
        client,
        opts,
        recorders: Mutex::default(),
    });
    replicaset::start::<k8s_openapi::api::apps::v1::ReplicaSet>(ctx.clone());
    replicaset::start::<k8s_openapi::api::core::v1::ReplicationController>(ctx.clone());
    deployment::start(ctx.clone());
    daemonset::start(ctx.clone());
    gc::start(ctx.clone());
    namespace::start(ctx.clone());
    serviceaccount::start(ctx.clone());
    endpoints::start(ctx.clone());
    mirroring::start(ctx.clone());
    nodeipam::start(ctx.clone());
    nodelifecycle::start(ctx.clone());
    podgc::start(ctx.clone());
    disruption::start(ctx.clone());
    nodepassword::start(ctx.clone());
    if ctx.opts.servicelb {
        servicelb::start(ctx.clone());
    }
    tracing::info!("controller manager started");
    Ok(())
}
