//! Node lifecycle: a node whose heartbeat (its Lease in kube-node-lease, or its Ready
//! condition's lastHeartbeatTime) is older than `--node-monitor-grace-period` gets
//! Ready=Unknown and the `node.kubernetes.io/unreachable` taints (a node reporting
//! Ready=False gets `not-ready`); its pods are marked not Ready. Pressure conditions and
//! `spec.unschedulable` bring upstream's NoSchedule taints (TaintNodesByCondition). Pods on a node with
//! NoExecute taints they do not tolerate are evicted at once, or after their
//! tolerationSeconds (the taint manager).

use crate::Ctx;
use anyhow::Result;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kite_runtime::events::NORMAL;
use kite_runtime::queue::run_workers_after;
use kite_runtime::{Action, Change, Informer, WorkQueue};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";
const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// The NoSchedule taint each condition brings while True (upstream's TaintNodesByCondition).
const BY_CONDITION: &[(&str, &str)] = &[
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "node.kubernetes.io/network-unavailable",
    ),
];
/// How often every node is checked, as upstream's --node-monitor-period.
const MONITOR_PERIOD: Duration = Duration::from_secs(5);

struct Controller {
    ctx: Arc<Ctx>,
    nodes: Arc<Informer<Node>>,
    leases: Arc<Informer<Lease>>,
    pods: Arc<Informer<Pod>>,
    queue: WorkQueue<String>,
}

pub fn start(ctx: Arc<Ctx>) {
    let c = Arc::new(Controller {
        nodes: ctx.informers.get::<Node>(),
        leases: ctx.informers.get::<Lease>(),
        pods: ctx.informers.get::<Pod>(),
        queue: WorkQueue::new(),
        ctx,
    });
    let q = c.queue.clone();
    c.nodes.add_handler(move |ch: &Change<Node>| {
        if !matches!(ch, Change::Deleted(_)) {
            q.add(ch.object().metadata.name.clone().unwrap_or_default());
        }
    });
    // A pod arriving on a tainted node is checked too.
    let c2 = c.clone();
    c.pods.add_handler(move |ch: &Change<Pod>| {
        if matches!(ch, Change::Deleted(_)) {
            return;
        }
        if let Some(n) = ch
            .object()
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
        {
            let tainted = c2.nodes.get("", n).is_some_and(|node| {
                node.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.effect == "NoExecute"))
            });
            if tainted {
                c2.queue.add(n.to_string());
            }
        }
    });
    // The periodic health check of every node.
    let c3 = c.clone();
    tokio::spawn(async move {
        c3.nodes.wait_synced().await;
        c3.leases.wait_synced().await;
        let mut t = tokio::time::interval(MONITOR_PERIOD);
        loop {
            t.tick().await;
            // Only nodes whose heartbeat just went stale need work; every other change
            // reaches the queue through the node handler.
            let now = jiff::Timestamp::now();
            for n in c3.nodes.list() {
                let (status, stale) = c3.health(&n, now);
                if stale && status != "Unknown" {
                    c3.queue.add(n.metadata.name.clone().unwrap_or_default());
                }
            }
        }
    });
    let c4 = c.clone();
    run_workers_after(
        futures::future::join3(
            c.nodes.synced_future(),
            c.leases.synced_future(),
            c.pods.synced_future(),
        ),
        "node-lifecycle-controller",
        c.queue.clone(),
        4,
        move |n| {
            let c = c4.clone();
            async move { c.reconcile(n).await }
        },
    );
}

fn ready_condition(n: &Node) -> Option<(String, Option<jiff::Timestamp>)> {
    let c = n
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((
        c.status.clone(),
        c.last_heartbeat_time.as_ref().map(|t| t.0),
    ))
}

impl Controller {
    /// The node's Ready status and whether its last heartbeat (Lease renewal or Ready
    /// condition) is older than the grace period.
    fn health(&self, node: &Node, now: jiff::Timestamp) -> (String, bool) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let (status, heartbeat) = ready_condition(node).unwrap_or(("Unknown".into(), None));
        let lease = self
            .leases
            .get("kube-node-lease", &name)
            .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
        let created = node
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(now);
        let last = [heartbeat, lease, Some(created)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(now);
        let grace = self.ctx.opts.node_monitor_grace_period;
        let stale = now.as_millisecond() - last.as_millisecond() > grace.as_millis() as i64;
        (status, stale)
    }

    async fn reconcile(&self, name: String) -> Result<Action> {
        let Some(node) = self.nodes.get("", &name) else {
            return Ok(Action::AwaitChange);
        };
        let now = jiff::Timestamp::now();
        let (mut status, stale) = self.health(&node, now);
        let api: Api<Node> = Api::all(self.ctx.client.clone());
        if stale && status != "Unknown" {
            let t = Time(now);
            let mut conds: Vec<serde_json::Value> = Vec::new();
            for c in node
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default()
            {
                conds.push(json!({
                    "type": c.type_, "status": "Unknown", "reason": "NodeStatusUnknown",
                    "message": "Kubelet stopped posting node status.",
                    "lastHeartbeatTime": c.last_heartbeat_time, "lastTransitionTime": t,
                }));
            }
            if conds.is_empty() {
                conds.push(json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated", "message": "Kubelet never posted node status.", "lastTransitionTime": t}));
            }
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(&json!({"status": {"conditions": conds}})),
            )
            .await?;
            self.ctx.recorder("node-controller").event(
                &*node,
                NORMAL,
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady"),
            );
            status = "Unknown".into();
            self.mark_pods_not_ready(&name).await;
        }
        // Taints follow the Ready condition, and (upstream's TaintNodesByCondition) the
        // pressure conditions and spec.unschedulable keep new pods away.
        let mut want: Vec<(&str, &str)> = match status.as_str() {
            "True" => vec![],
            "False" => vec![(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")],
            _ => vec![(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")],
        };
        let conditions = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        for (cond, key) in BY_CONDITION {
            if conditions
                .iter()
                .any(|c| c.type_ == *cond && c.status == "True")
            {
                want.push((key, "NoSchedule"));
            }
        }
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            want.push((UNSCHEDULABLE, "NoSchedule"));
        }
        let taints: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let ours = |t: &Taint| {
            t.key == UNREACHABLE
                || t.key == NOT_READY
                || t.key == UNSCHEDULABLE
                || BY_CONDITION.iter().any(|(_, k)| t.key == *k)
        };
        let mut next: Vec<Taint> = taints
            .iter()
            .filter(|t| !ours(t) || want.contains(&(t.key.as_str(), t.effect.as_str())))
            .cloned()
            .collect();
        for (k, e) in &want {
            if !next.iter().any(|t| t.key == *k && t.effect == *e) {
                next.push(Taint {
                    key: k.to_string(),
                    effect: e.to_string(),
                    value: None,
                    time_added: (*e == "NoExecute").then_some(Time(now)),
                });
            }
        }
        if next != taints {
            let patch = json!({"spec": {"taints": if next.is_empty() { json!(null) } else { json!(next) }}, "metadata": {"resourceVersion": node.metadata.resource_version}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(Action::AwaitChange);
        }
        self.evict(&node, &next, now).await
    }

    async fn mark_pods_not_ready(&self, node: &str) {
        for p in self.pods.list() {
            if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node)
                || !crate::util::is_ready(&p)
            {
                continue;
            }
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
            let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": Time(jiff::Timestamp::now())}]}});
            let _ = api
                .patch_status(
                    p.metadata.name.as_deref().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await;
        }
    }

    /// The taint manager for one node.
    async fn evict(&self, node: &Node, taints: &[Taint], now: jiff::Timestamp) -> Result<Action> {
        let no_exec: Vec<&Taint> = taints.iter().filter(|t| t.effect == "NoExecute").collect();
        if no_exec.is_empty() {
            return Ok(Action::AwaitChange);
        }
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut soonest: Option<i64> = None;
        for p in self.pods.list() {
            if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(name.as_str())
                || p.metadata.deletion_timestamp.is_some()
                || crate::util::is_terminal(&p)
            {
                continue;
            }
            let tols = p
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            // The earliest moment any untolerated-for-ever taint or expiring toleration hits.
            let mut deadline: Option<i64> = None;
            let mut now_evict = false;
            for t in &no_exec {
                let matching: Vec<_> = tols
                    .iter()
                    .filter(|tol| kite_runtime::labels::tolerates(tol, t))
                    .collect();
                if matching.is_empty() {
                    now_evict = true;
                    break;
                }
                if matching.iter().any(|tol| tol.toleration_seconds.is_none()) {
                    continue;
                }
                let secs = matching
                    .iter()
                    .filter_map(|tol| tol.toleration_seconds)
                    .min()
                    .unwrap_or(0)
                    .max(0);
                let added = t
                    .time_added
                    .as_ref()
                    .map(|x| x.0.as_second())
                    .unwrap_or(now.as_second());
                let at = added + secs;
                deadline = Some(deadline.map_or(at, |d: i64| d.min(at)));
            }
            let due = now_evict || deadline.is_some_and(|d| d <= now.as_second());
            if due {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let pname = p.metadata.name.clone().unwrap_or_default();
                self.ctx.recorder("taint-eviction-controller").event(
                    &*p,
                    NORMAL,
                    "TaintManagerEviction",
                    format!("Marking for deletion Pod {ns}/{pname}"),
                );
                let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: p.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&pname, &dp).await {
                    Ok(_) => {}
                    Err(e)
                        if crate::util::is_status(&e, 404) || crate::util::is_status(&e, 409) => {}
                    Err(e) => return Err(e.into()),
                }
            } else if let Some(d) = deadline {
                soonest = Some(soonest.map_or(d, |s: i64| s.min(d)));
            }
        }
        Ok(match soonest {
            Some(s) => {
                Action::Requeue(Duration::from_secs((s - now.as_second()).max(0) as u64 + 1))
            }
            None => Action::AwaitChange,
        })
    }
}
