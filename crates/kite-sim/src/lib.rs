//! `kite sim`: registers simulated nodes and plays their kubelet, as kwok does upstream.
//! It heartbeats each node's Lease, reports bound pods Running and Ready with an IP from
//! the node's podCIDR after a start delay, and completes graceful deletion. No
//! containers run. Annotating a node `sim.kite.io/heartbeat=false` stops its heartbeats.

pub mod spec;

use anyhow::Result;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kite_runtime::{queue::run_workers, Action, Change, Informers, WorkQueue};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use spec::SimOptions;

/// The annotation that pauses (`false`) and resumes (`true`) a node's heartbeats.
pub const HEARTBEAT_ANNOTATION: &str = "sim.kite.io/heartbeat";

struct Sim {
    client: kube::Client,
    opts: SimOptions,
    names: HashSet<String>,
    informers: Informers,
    /// Per node: next host index handed out in its podCIDR.
    next_ip: Mutex<HashMap<String, u32>>,
    /// Pod uid -> its IP, so a pod keeps its address.
    ips: Mutex<HashMap<String, String>>,
    /// When each pod was first seen bound, for the start delay.
    first_seen: Mutex<HashMap<String, Instant>>,
}

/// Registers the nodes and runs until the process ends.
pub async fn run(client: kube::Client, opts: SimOptions) -> Result<()> {
    let names: HashSet<String> = (0..opts.nodes).map(|i| opts.node_name(i)).collect();
    let informers = Informers::new(client.clone());
    let sim = Arc::new(Sim {
        client: client.clone(),
        opts,
        names,
        informers,
        next_ip: Mutex::default(),
        ips: Mutex::default(),
        first_seen: Mutex::default(),
    });
    sim.register().await?;
    tracing::info!(nodes = sim.opts.nodes, "simulated nodes registered");
    let nodes = sim.informers.get::<Node>();
    let pods = sim.informers.get::<Pod>();

    // Pods bound to our nodes.
    let pod_q: WorkQueue<(String, String)> = WorkQueue::new();
    {
        let (q, s) = (pod_q.clone(), sim.clone());
        pods.add_handler(move |c: &Change<Pod>| {
            if let Change::Deleted(_) = c {
                return;
            }
            let p = c.object();
            let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            if node.is_some_and(|n| s.names.contains(n)) {
                q.add(kite_runtime::informer::key_of(&**p));
            }
        });
    }
    // Node readiness restored when heartbeats resume.
    let node_q: WorkQueue<String> = WorkQueue::new();
    {
        let (q, s) = (node_q.clone(), sim.clone());
        nodes.add_handler(move |c: &Change<Node>| {
            if matches!(c, Change::Deleted(_)) || !s.names.contains(&c.object().name_any()) {
                return;
            }
            q.add(c.object().name_any());
        });
    }
    let s = sim.clone();
    run_workers("sim-pods", pod_q, 32, move |k| {
        let s = s.clone();
        async move { s.sync_pod(k).await }
    });
    let s = sim.clone();
    run_workers("sim-nodes", node_q, 4, move |k| {
        let s = s.clone();
        async move { s.sync_node(k).await }
    });
    sim.heartbeat_forever().await
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

impl Sim {
    fn heartbeating(&self, node: &Node) -> bool {
        node.annotations()
            .get(HEARTBEAT_ANNOTATION)
            .is_none_or(|v| v != "false")
    }

    async fn register(&self) -> Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let nodes: Vec<Node> = (0..self.opts.nodes).map(|i| self.opts.node(i)).collect();
        let results = futures::stream::iter(nodes.into_iter().map(|n| {
            let api = api.clone();
            async move {
                match api.create(&PostParams::default(), &n).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(anyhow::anyhow!("registering node {}: {e}", n.name_any())),
                }
            }
        }));
        use futures::StreamExt;
        let errs: Vec<anyhow::Error> = results
            .buffer_unordered(32)
            .filter_map(|r| async move { r.err() })
            .collect()
            .await;
        if let Some(e) = errs.into_iter().next() {
            return Err(e);
        }
        Ok(())
    }

    /// Renews every node's Lease once per heartbeat interval, spread over it.
    async fn heartbeat_forever(self: Arc<Self>) -> Result<()> {
        let mut names: Vec<String> = self.names.iter().cloned().collect();
        names.sort();
        let nodes = self.informers.get::<Node>();
        let api: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let slots = 10usize;
        let mut tick = tokio::time::interval(self.opts.heartbeat_interval / slots as u32);
        let mut slot = 0usize;
        loop {
            tick.tick().await;
            let batch: Vec<String> = names
                .iter()
                .enumerate()
                .filter(|(i, _)| i % slots == slot)
                .map(|(_, n)| n.clone())
                .collect();
            slot = (slot + 1) % slots;
            let work = batch.into_iter().filter_map(|name| {
                let node = nodes.get("", &name);
                if node.as_ref().is_some_and(|n| !self.heartbeating(n)) {
                    return None;
                }
                let uid = node.and_then(|n| n.metadata.uid.clone());
                let api = api.clone();
                Some(async move {
                    if let Err(e) = kite_runtime::node::renew_lease(&api, &name, uid).await {
                        tracing::debug!(node = %name, error = %e, "lease renewal failed");
                    }
                })
            });
            use futures::StreamExt;
            futures::stream::iter(work)
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
        }
    }

    /// A heartbeating node whose Ready condition is not True gets it back.
    async fn sync_node(&self, name: String) -> Result<Action> {
        let Some(node) = self.informers.get::<Node>().get("", &name) else {
            return Ok(Action::AwaitChange);
        };
        if !self.heartbeating(&node) {
            return Ok(Action::AwaitChange);
        }
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if ready {
            return Ok(Action::AwaitChange);
        }
        let api: Api<Node> = Api::all(self.client.clone());
        let status = json!({"status": {"conditions": spec::node_conditions(now())}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
            .await?;
        Ok(Action::AwaitChange)
    }

    async fn sync_pod(&self, key: (String, String)) -> Result<Action> {
        let Some(pod) = self.informers.get::<Pod>().get_key(&key) else {
            return Ok(Action::AwaitChange);
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        // A node without heartbeats is "down": its kubelet acts on nothing.
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let node = self.informers.get::<Node>().get("", &node_name);
        if node.as_ref().is_some_and(|n| !self.heartbeating(n)) {
            return Ok(Action::Requeue(Duration::from_secs(2)));
        }
        if pod.metadata.deletion_timestamp.is_some() {
            // The containers "stopped": finish the graceful deletion, as a kubelet does.
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&key.1, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            self.ips.lock().unwrap().remove(&uid);
            self.first_seen.lock().unwrap().remove(&uid);
            return Ok(Action::AwaitChange);
        }
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        if phase != "Pending" {
            return Ok(Action::AwaitChange);
        }
        let first = *self
            .first_seen
            .lock()
            .unwrap()
            .entry(uid.clone())
            .or_insert_with(Instant::now);
        let waited = first.elapsed();
        if waited < self.opts.start_delay {
            return Ok(Action::Requeue(self.opts.start_delay - waited));
        }
        let Some(node) = node else {
            return Ok(Action::Requeue(Duration::from_millis(200)));
        };
        let host_ip = spec::node_ip(&node);
        let Some(ip) = self.pod_ip(&node, &uid) else {
            // No podCIDR yet: node IPAM will assign one.
            return Ok(Action::Requeue(Duration::from_millis(200)));
        };
        let patch = json!({"status": spec::running_status(&pod, &host_ip, &ip, now())});
        api.patch_status(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.first_seen.lock().unwrap().remove(&uid);
        Ok(Action::AwaitChange)
    }

    fn pod_ip(&self, node: &Node, uid: &str) -> Option<String> {
        if let Some(ip) = self.ips.lock().unwrap().get(uid) {
            return Some(ip.clone());
        }
        let cidr: ipnet::Ipv4Net = node.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok()?;
        let hosts = (1u32 << (32 - cidr.prefix_len() as u32))
            .saturating_sub(3)
            .max(1);
        let mut next = self.next_ip.lock().unwrap();
        let n = next.entry(node.name_any()).or_insert(0);
        // .1 is the gateway; hand out .2 upwards, wrapping round.
        let ip = std::net::Ipv4Addr::from(u32::from(cidr.network()) + 2 + (*n % hosts));
        *n += 1;
        let ip = ip.to_string();
        self.ips.lock().unwrap().insert(uid.to_string(), ip.clone());
        Some(ip)
    }
}
