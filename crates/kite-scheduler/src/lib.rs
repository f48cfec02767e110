//! The scheduler: an API client that watches pods, nodes and priority classes, picks a
//! node for each pending pod of `schedulerName: default-scheduler` with upstream's
//! filters and scores, and binds it through `pods/binding`. Pods that fit nowhere get a
//! FailedScheduling event and wait in the queue; a higher-priority pod may preempt
//! lower-priority ones.

pub mod cache;
pub mod plugins;
pub mod queue;

use anyhow::Result;
use cache::{Cache, PodInfo};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kite_runtime::events::{Recorder, NORMAL, WARNING};
use kite_runtime::informer::key_of;
use kite_runtime::{Change, Informer, Informers, Key};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use queue::{ClusterEvent, Retry, SchedulingQueue};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Bindings in flight at once.
const BIND_CONCURRENCY: usize = 64;

struct Scheduler {
    client: kube::Client,
    pods: Arc<Informer<Pod>>,
    priority_classes: Arc<Informer<PriorityClass>>,
    cache: Arc<Mutex<Cache>>,
    queue: SchedulingQueue,
    recorder: Recorder,
    binds: Arc<tokio::sync::Semaphore>,
    /// The last node the previous search looked at: the next one starts after it, so
    /// successive pods look at different nodes (upstream's nextStartNodeIndex).
    last_checked: Mutex<String>,
    /// Pods that preempted others, by uid, and the node they wait for (upstream's
    /// nominatedNodeName, known here before the status patch comes back).
    nominated: Mutex<HashMap<String, (String, Arc<PodInfo>)>>,
}

fn is_ours(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .is_none_or(|n| n == SCHEDULER_NAME)
}

fn bound_node(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// A pod's priority: spec.priority (set by admission), else its class, else the global
/// default class, else 0.
fn priority_of(p: &Pod, classes: &Informer<PriorityClass>) -> i32 {
    let spec = p.spec.as_ref();
    if let Some(pr) = spec.and_then(|s| s.priority) {
        return pr;
    }
    if let Some(name) = spec.and_then(|s| s.priority_class_name.as_deref()) {
        if let Some(c) = classes.get("", name) {
            return c.value.unwrap_or(0);
        }
    }
    classes
        .list()
        .iter()
        .find(|c| c.global_default == Some(true))
        .and_then(|c| c.value)
        .unwrap_or(0)
}

/// Runs the scheduler (after winning the `kube-scheduler` lease) until the process ends.
pub async fn run(client: kube::Client, identity: &str) -> Result<()> {
    let _lost = kite_runtime::leader::acquire(client.clone(), "kube-scheduler", identity).await;
    let informers = Informers::new(client.clone());
    let s = Arc::new(Scheduler {
        client: client.clone(),
        pods: informers.get::<Pod>(),
        priority_classes: informers.get::<PriorityClass>(),
        cache: Arc::default(),
        queue: SchedulingQueue::default(),
        recorder: Recorder::new(client.clone(), SCHEDULER_NAME, ""),
        binds: Arc::new(tokio::sync::Semaphore::new(BIND_CONCURRENCY)),
        last_checked: Mutex::default(),
        nominated: Mutex::default(),
    });
    let nodes = informers.get::<Node>();
    {
        let s2 = s.clone();
        nodes.add_handler(move |c: &Change<Node>| {
            {
                let mut cache = s2.cache.lock().unwrap();
                match c {
                    Change::Deleted(n) => {
                        cache.remove_node(n.metadata.name.as_deref().unwrap_or_default())
                    }
                    _ => cache.upsert_node(c.object().clone()),
                }
            }
            let relevant = match c {
                Change::Added(_) => true,
                Change::Updated { old, new } => plugins::node_scheduling_changed(old, new),
                Change::Deleted(_) => false,
            };
            if relevant {
                s2.queue.move_to_active(ClusterEvent::Node);
            }
        });
    }
    // As upstream's WaitForCacheSync: with half the bound pods loaded, a node would look
    // emptier than it is.
    s.priority_classes.wait_synced().await;
    nodes.wait_synced().await;
    s.pods.wait_synced().await;
    {
        let s2 = s.clone();
        s.pods.add_handler(move |c: &Change<Pod>| s2.on_pod(c));
    }
    // Parked pods are retried now and then even without a cluster change.
    let q = s.queue.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_secs(30));
        loop {
            t.tick().await;
            q.move_to_active(ClusterEvent::Periodic);
        }
    });
    tracing::info!("scheduler started");
    loop {
        let key = s.queue.pop().await;
        s.clone().schedule_one(key).await;
    }
}

impl Scheduler {
    fn on_pod(&self, c: &Change<Pod>) {
        let p = c.object();
        let key = key_of(&**p);
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let deleted = matches!(c, Change::Deleted(_));
        match bound_node(p) {
            Some(node) if !deleted && !terminal(p) => {
                let info = Arc::new(PodInfo::new(
                    p.clone(),
                    priority_of(p, &self.priority_classes),
                ));
                self.cache.lock().unwrap().add_pod(node, info);
                self.queue.remove(&key);
                // Newly bound (whether this scheduler assumed it or not), or relabelled.
                let arrived = match c {
                    Change::Updated { old, new } => {
                        bound_node(old).is_none() || old.metadata.labels != new.metadata.labels
                    }
                    _ => true,
                };
                if arrived {
                    // Pods waiting for affinity to it, or for topology spread, may fit now.
                    self.queue.move_to_active(ClusterEvent::PodAdded);
                }
                // Began terminating (a preemption's victim, say): its preemptor is tried
                // again and waits for it, rather than only at the periodic retry.
                if let Change::Updated { old, new } = c {
                    if old.metadata.deletion_timestamp.is_none()
                        && new.metadata.deletion_timestamp.is_some()
                    {
                        self.queue.move_to_active(ClusterEvent::PodTerminating);
                    }
                }
            }
            Some(_) => {
                let was = {
                    let mut cache = self.cache.lock().unwrap();
                    let was = cache.node_of(&uid).is_some();
                    cache.remove_pod(&uid);
                    was
                };
                if was {
                    // Resources were freed: parked pods may fit now.
                    self.queue.move_to_active(ClusterEvent::PodRemoved);
                }
            }
            None => {
                if deleted || p.metadata.deletion_timestamp.is_some() || !is_ours(p) {
                    self.queue.remove(&key);
                    // An assumed pod deleted before its binding was seen.
                    self.cache.lock().unwrap().remove_pod(&uid);
                    // It no longer waits for the room its preemption made.
                    self.nominated.lock().unwrap().remove(&uid);
                    return;
                }
                if self.cache.lock().unwrap().node_of(&uid).is_some() {
                    return; // assumed; its binding is in flight
                }
                self.queue.add(key, priority_of(p, &self.priority_classes));
            }
        }
    }

    async fn schedule_one(self: Arc<Self>, key: Key) {
        let Some(pod) = self.pods.get_key(&key) else {
            self.queue.remove(&key);
            return;
        };
        if bound_node(&pod).is_some() || pod.metadata.deletion_timestamp.is_some() || !is_ours(&pod)
        {
            self.queue.remove(&key);
            return;
        }
        let prio = priority_of(&pod, &self.priority_classes);
        let info = Arc::new(PodInfo::new(pod.clone(), prio));
        let decision = {
            let cache = self.cache.lock().unwrap();
            self.decide(&info, &cache)
        };
        match decision {
            Ok(node) => {
                self.cache.lock().unwrap().add_pod(&node, info.clone());
                let permit = self.binds.clone().acquire_owned().await.expect("semaphore");
                let s = self.clone();
                tokio::spawn(async move {
                    s.bind(&info, &node, key, prio).await;
                    drop(permit);
                });
            }
            Err(Unfit {
                total,
                reasons,
                preempt,
                retry,
            }) => {
                let mut msg = plugins::summary(total, &reasons);
                match preempt {
                    Preemption::Plan(node, victims) => {
                        self.preempt(&info, &node, victims).await;
                    }
                    Preemption::NotHelpful => {
                        msg.push_str(&format!(
                            " preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling."
                        ));
                    }
                    Preemption::NotEligible(why) => {
                        msg.push_str(" preemption: ");
                        msg.push_str(why);
                    }
                }
                self.recorder
                    .event(&*pod, WARNING, "FailedScheduling", msg.clone());
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
                let patch = json!({"status": {"conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": msg, "lastProbeTime": null,
                    "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
                }]}});
                if let Err(e) = api
                    .patch_status(&key.1, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                {
                    tracing::debug!(pod = %format!("{}/{}", key.0, key.1), error = %e, "recording unschedulable status failed");
                }
                self.queue.unschedulable(key, prio, retry);
            }
        }
    }

    /// Filters and scores: the chosen node, or why none fits.
    fn decide(&self, p: &PodInfo, cache: &Cache) -> Result<String, Unfit> {
        let pf = plugins::PreFilter::new(p, cache);
        let n = cache.nodes.len();
        // Upstream's percentageOfNodesToScore: stop after enough feasible nodes.
        let pct = (50 - n as i64 / 125).max(5) as usize;
        let want = (n * pct / 100).max(100).min(n);
        let mut last = self.last_checked.lock().unwrap();
        // Every node once, in name order, starting after the last one looked at.
        let after = cache
            .nodes
            .range::<str, _>((Bound::Excluded(last.as_str()), Bound::Unbounded));
        let upto = cache
            .nodes
            .range::<str, _>((Bound::Unbounded, Bound::Included(last.as_str())));
        // Nodes with pods nominated to them of at least this pod's priority are judged as
        // if those pods ran there (upstream's addNominatedPods): the room a preemption made
        // is kept for the pod that made it.
        let views: HashMap<String, cache::NodeInfo> = {
            let mut by_node: HashMap<String, Vec<Arc<PodInfo>>> = HashMap::new();
            for (node, q) in self.nominated.lock().unwrap().values() {
                if q.uid != p.uid && q.priority >= p.priority {
                    by_node.entry(node.clone()).or_default().push(q.clone());
                }
            }
            by_node
                .into_iter()
                .filter_map(|(node, qs)| {
                    let ni = cache.nodes.get(&node)?;
                    // Nominated pods already bound there are counted already.
                    let qs: Vec<Arc<PodInfo>> = qs
                        .into_iter()
                        .filter(|q| !ni.pods.contains_key(&q.uid))
                        .collect();
                    Some((node, ni.with_nominated(&qs)))
                })
                .collect()
        };
        let mut feasible = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut resolvable = Vec::new();
        let mut retry = Retry::default();
        let mut stop = None;
        for (name, ni) in after.chain(upto) {
            stop = Some(name);
            let ni = views.get(name).unwrap_or(ni);
            match pf.filter(ni) {
                Ok(()) => {
                    feasible.push(ni);
                    if feasible.len() >= want {
                        break;
                    }
                }
                Err(r) => {
                    for reason in &r.reasons {
                        *reasons.entry(reason.clone()).or_default() += 1;
                    }
                    if r.resolvable {
                        resolvable.push(ni);
                    }
                    retry.on_pod_removed |= r.resolvable;
                    retry.on_pod_added |= r.pod_added_helps;
                }
            }
        }
        if let Some(name) = stop {
            name.clone_into(&mut last);
        }
        drop(last);
        if feasible.is_empty() {
            let nominated = self
                .nominated
                .lock()
                .unwrap()
                .get(&p.uid)
                .map(|(n, _)| n.clone())
                .or_else(|| {
                    p.pod
                        .status
                        .as_ref()
                        .and_then(|s| s.nominated_node_name.clone())
                });
            let preempt = match eligible_to_preempt(p, nominated.as_deref(), cache) {
                Ok(()) => preemption_plan(p, &resolvable)
                    .map_or(Preemption::NotHelpful, |(n, v)| Preemption::Plan(n, v)),
                Err(why) => Preemption::NotEligible(why),
            };
            return Err(Unfit {
                total: n,
                reasons,
                preempt,
                retry,
            });
        }
        let scores = plugins::score(p, &feasible, cache);
        let best = scores.iter().copied().max().unwrap_or(0);
        let ties: Vec<usize> = (0..feasible.len()).filter(|i| scores[*i] == best).collect();
        let pick = ties[rand::random_range(0..ties.len())];
        Ok(feasible[pick].name().to_string())
    }

    async fn bind(&self, info: &PodInfo, node: &str, key: Key, prio: i32) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": key.1, "namespace": key.0, "uid": info.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        match api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &key.1,
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => {
                self.nominated.lock().unwrap().remove(&info.uid);
                self.recorder.event(
                    &*info.pod,
                    NORMAL,
                    "Scheduled",
                    format!("Successfully assigned {}/{} to {node}", key.0, key.1),
                );
            }
            Err(e) => {
                tracing::debug!(pod = %format!("{}/{}", key.0, key.1), error = %e, "binding failed");
                self.cache.lock().unwrap().remove_pod(&info.uid);
                if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                    // Retried after its back-off, as are pods the assumed one kept out.
                    self.queue.unschedulable(key, prio, Retry::ANY_CHANGE);
                    self.queue.move_to_active(ClusterEvent::PodRemoved);
                }
            }
        }
    }

    async fn preempt(&self, p: &Arc<PodInfo>, node: &str, victims: Vec<Arc<PodInfo>>) {
        self.nominated
            .lock()
            .unwrap()
            .insert(p.uid.clone(), (node.to_string(), p.clone()));
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &p.namespace);
        let patch = json!({"status": {"nominatedNodeName": node}});
        let _ = api
            .patch_status(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        for v in victims {
            let vapi: Api<Pod> = Api::namespaced(self.client.clone(), &v.namespace);
            // As upstream: the victim learns why before it goes (DisruptionTarget), which also
            // marks it as terminating by preemption.
            let condition = json!({"status": {"conditions": [{
                "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                "message": format!("{SCHEDULER_NAME}: preempting to accommodate a higher priority pod"),
                "lastProbeTime": null,
                "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
            }]}});
            if let Err(e) = vapi
                .patch_status(
                    &v.name,
                    &PatchParams::default(),
                    &Patch::Strategic(&condition),
                )
                .await
            {
                tracing::debug!(victim = %v.name, error = %e, "marking a preemption victim failed");
            }
            self.recorder.event(
                &*v.pod,
                NORMAL,
                "Preempted",
                format!("Preempted by pod {} on node {node}", p.uid),
            );
            if let Err(e) = vapi.delete(&v.name, &DeleteParams::default()).await {
                tracing::debug!(victim = %v.name, error = %e, "deleting a preemption victim failed");
            }
        }
    }
}

/// Why no node fits a pod.
struct Unfit {
    /// Nodes considered.
    total: usize,
    /// Rejection reasons, with how many nodes gave each.
    reasons: BTreeMap<String, usize>,
    /// Whether and where preemption helps.
    preempt: Preemption,
    /// Which pod changes could make a node fit.
    retry: Retry,
}

/// What preemption can do for a pod no node fits.
enum Preemption {
    /// Delete these victims on this node.
    Plan(String, Vec<Arc<PodInfo>>),
    /// No node would fit even without its lower-priority pods.
    NotHelpful,
    /// The pod may not preempt now (upstream's `PodEligibleToPreemptOthers`).
    NotEligible(&'static str),
}

/// Upstream's `PodEligibleToPreemptOthers`: not with preemptionPolicy Never, and not again
/// while lower-priority pods on its nominated node are still terminating (its earlier
/// victims): it waits for them rather than preempting more.
fn eligible_to_preempt(
    p: &PodInfo,
    nominated: Option<&str>,
    cache: &Cache,
) -> Result<(), &'static str> {
    let never = p
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref())
        == Some("Never");
    if never {
        return Err("not eligible due to preemptionPolicy=Never.");
    }
    let terminating_lower = nominated
        .and_then(|n| cache.nodes.get(n))
        .is_some_and(|ni| {
            ni.pods
                .values()
                .any(|o| o.priority < p.priority && o.pod.metadata.deletion_timestamp.is_some())
        });
    if terminating_lower {
        return Err("not eligible due to a terminating pod on the nominated node.");
    }
    Ok(())
}

/// Upstream's DefaultPreemption, simplified: on each node where removing pods could help,
/// remove every lower-priority pod, then give back as many as still fit, highest priority
/// first; choose the node whose victims have the lowest top priority, then the fewest.
fn preemption_plan(p: &PodInfo, nodes: &[&cache::NodeInfo]) -> Option<(String, Vec<Arc<PodInfo>>)> {
    let policy = p
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref())
        .unwrap_or("PreemptLowerPriority");
    if policy == "Never" {
        return None;
    }
    let fits = |req: &cache::Resources, alloc: &cache::Resources| {
        req.pods < alloc.pods
            && (p.requests.cpu == 0 || req.cpu + p.requests.cpu <= alloc.cpu)
            && (p.requests.memory == 0 || req.memory + p.requests.memory <= alloc.memory)
            && p.requests.scalar.iter().all(|(k, v)| {
                *v == 0
                    || req.scalar.get(k).copied().unwrap_or(0) + v
                        <= alloc.scalar.get(k).copied().unwrap_or(0)
            })
    };
    let mut best: Option<(i32, usize, String, Vec<Arc<PodInfo>>)> = None;
    for ni in nodes {
        let mut lower: Vec<Arc<PodInfo>> = ni
            .pods
            .values()
            .filter(|o| o.priority < p.priority && o.pod.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect();
        if lower.is_empty() {
            continue;
        }
        let mut req = ni.requested.clone();
        for v in &lower {
            req.sub(&v.requests);
        }
        if !fits(&req, &ni.allocatable) {
            continue;
        }
        lower.sort_by_key(|v| std::cmp::Reverse(v.priority));
        let mut victims = Vec::new();
        for v in lower {
            let mut with = req.clone();
            with.add(&v.requests);
            if fits(&with, &ni.allocatable) {
                req = with;
            } else {
                victims.push(v);
            }
        }
        if victims.is_empty() {
            continue;
        }
        let top = victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN);
        let better = best
            .as_ref()
            .is_none_or(|(bt, bn, _, _)| (top, victims.len()) < (*bt, *bn));
        if better {
            best = Some((top, victims.len(), ni.name().to_string(), victims));
        }
    }
    best.map(|(_, _, n, v)| (n, v))
}
