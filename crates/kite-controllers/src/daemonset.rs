//! The DaemonSet controller: one pod of the template on every node that its node
//! selector, required node affinity and taints admit, as upstream's
//! `pkg/controller/daemon`. Pods are placed by the scheduler through a required
//! `metadata.name` node-affinity field, carry the DaemonSet tolerations upstream adds
//! (not-ready/unreachable NoExecute, pressure and unschedulable NoSchedule), and are
//! labelled with the `controller-revision-hash` of the ControllerRevision that holds
//! their template (what `kubectl rollout history/undo ds` read). Updates are
//! RollingUpdate (maxUnavailable, or maxSurge) or OnDelete; failed daemon pods are
//! killed and replaced; the status counts desired/current/misscheduled/ready/updated/
//! available pods.

use crate::deployment::{scaled, template_hash};
use crate::util::{self, Expectations};
use crate::Ctx;
use anyhow::Result;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, PodTemplateSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kite_runtime::events::{NORMAL, WARNING};
use kite_runtime::informer::key_of;
use kite_runtime::labels::{self, Labels};
use kite_runtime::queue::run_workers_after;
use kite_runtime::{Action, Change, Informer, Key, WorkQueue};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "daemonset-controller";
/// The label naming a pod's (and a revision's) template hash.
pub const HASH: &str = "controller-revision-hash";
/// The template generation a pod was made from (deprecated upstream, still set).
const TEMPLATE_GENERATION: &str = "pod-template-generation";
const TEMPLATE_GENERATION_ANNOTATION: &str = "deprecated.daemonset.template.generation";
/// Most pods created or deleted in one pass, as upstream's burstReplicas.
const BURST: usize = 250;

struct Controller {
    ctx: Arc<Ctx>,
    sets: Arc<Informer<DaemonSet>>,
    pods: Arc<Informer<Pod>>,
    nodes: Arc<Informer<Node>>,
    revisions: Arc<Informer<ControllerRevision>>,
    queue: WorkQueue<Key>,
    expectations: Expectations,
}

pub fn start(ctx: Arc<Ctx>) {
    let c = Arc::new(Controller {
        sets: ctx.informers.get::<DaemonSet>(),
        pods: ctx.informers.get::<Pod>(),
        nodes: ctx.informers.get::<Node>(),
        revisions: ctx.informers.get::<ControllerRevision>(),
        queue: WorkQueue::new(),
        expectations: Expectations::default(),
        ctx,
    });
    let q = c.queue.clone();
    c.sets
        .add_handler(move |ch: &Change<DaemonSet>| q.add(key_of(&**ch.object())));
    let c2 = c.clone();
    c.pods.add_handler(move |ch: &Change<Pod>| c2.on_pod(ch));
    let c3 = c.clone();
    c.nodes.add_handler(move |ch: &Change<Node>| {
        let relevant = match ch {
            Change::Updated { old, new } => node_placement_changed(old, new),
            _ => true,
        };
        if relevant {
            for ds in c3.sets.list() {
                c3.queue.add(key_of(&*ds));
            }
        }
    });
    let c4 = c.clone();
    c.revisions
        .add_handler(move |ch: &Change<ControllerRevision>| {
            let r = ch.object();
            if let Some(o) = util::controller_ref(&r.metadata).filter(|o| o.kind == "DaemonSet") {
                c4.queue
                    .add((r.namespace().unwrap_or_default(), o.name.clone()));
            }
        });
    let c5 = c.clone();
    run_workers_after(
        futures::future::join4(
            c.sets.synced_future(),
            c.pods.synced_future(),
            c.nodes.synced_future(),
            c.revisions.synced_future(),
        ),
        COMPONENT,
        c.queue.clone(),
        2,
        move |k| {
            let c = c5.clone();
            async move { c.reconcile(k).await }
        },
    );
}

/// Whether a node update can change where daemon pods run: its labels, taints, name
/// or unschedulable flag (not its heartbeats).
fn node_placement_changed(old: &Node, new: &Node) -> bool {
    old.metadata.labels != new.metadata.labels
        || old.spec.as_ref().map(|s| (&s.taints, s.unschedulable))
            != new.spec.as_ref().map(|s| (&s.taints, s.unschedulable))
}

/// The DaemonSet tolerations upstream adds to every daemon pod, so that a daemon keeps
/// running on a node that is not ready, unreachable, under pressure or cordoned.
fn daemon_tolerations(spec: &mut PodSpec) {
    let mut add = |key: &str, effect: &str| {
        let tols = spec.tolerations.get_or_insert_with(Vec::new);
        if !tols.iter().any(|t| {
            t.key.as_deref() == Some(key)
                && t.effect.as_deref() == Some(effect)
                && t.operator.as_deref() == Some("Exists")
        }) {
            tols.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Default::default()
            });
        }
    };
    add("node.kubernetes.io/not-ready", "NoExecute");
    add("node.kubernetes.io/unreachable", "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if spec.host_network == Some(true) {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
}

/// Pins a pod to one node by a required `metadata.name` field term, replacing any other
/// required node affinity as upstream's ReplaceDaemonSetPodNodeNameNodeAffinity does
/// (the controller has already checked the template's own affinity against the node).
fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        match_expressions: None,
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
}

/// The node a daemon pod is for: its nodeName, or the node its affinity pins it to.
pub fn target_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields.iter().flatten().find_map(|r| {
            (r.key == "metadata.name" && r.operator == "In")
                .then(|| r.values.as_ref()?.first().cloned())
                .flatten()
        })
    })
}

/// Upstream's NodeShouldRunDaemonPod: (should run a new pod, should keep a running one).
/// A node the template's nodeName, nodeSelector or required affinity exclude gets
/// neither; an untolerated NoSchedule taint stops new pods; an untolerated NoExecute
/// taint stops both.
pub fn should_run(template: &PodTemplateSpec, node: &Node) -> (bool, bool) {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let mut spec = template.spec.clone().unwrap_or_default();
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return (false, false);
    }
    let empty = Labels::new();
    let node_labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    if let Some(sel) = &spec.node_selector {
        if !labels::matches_map(sel, node_labels) {
            return (false, false);
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(req) = required {
        if !req
            .node_selector_terms
            .iter()
            .any(|t| labels::term_matches(t, node_labels, name))
        {
            return (false, false);
        }
    }
    daemon_tolerations(&mut spec);
    let tols = spec.tolerations.unwrap_or_default();
    let untolerated = |t: &&Taint| !tols.iter().any(|tol| labels::tolerates(tol, t));
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone());
    let taints = taints.unwrap_or_default();
    let no_execute = taints
        .iter()
        .filter(|t| t.effect == "NoExecute")
        .any(|t| untolerated(&t));
    let no_schedule = taints
        .iter()
        .filter(|t| t.effect == "NoSchedule")
        .any(|t| untolerated(&t));
    (!no_execute && !no_schedule, !no_execute)
}

/// The pod a DaemonSet runs on `node`, from its template at revision `hash`.
fn new_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let tmpl = template(ds).cloned().unwrap_or_default();
    let tm = tmpl.metadata.unwrap_or_default();
    let mut labels = tm.labels.unwrap_or_default();
    labels.insert(HASH.into(), hash.into());
    labels.insert(
        TEMPLATE_GENERATION.into(),
        template_generation(ds).to_string(),
    );
    let mut spec = tmpl.spec.unwrap_or_default();
    daemon_tolerations(&mut spec);
    pin_to_node(&mut spec, node);
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.name_any())),
            namespace: ds.namespace(),
            labels: Some(labels),
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![util::owner_ref(ds)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn template(ds: &DaemonSet) -> Option<&PodTemplateSpec> {
    ds.spec.as_ref().map(|s| &s.template)
}

fn template_generation(ds: &DaemonSet) -> i64 {
    ds.annotations()
        .get(TEMPLATE_GENERATION_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// What a ControllerRevision of a DaemonSet holds: a strategic merge patch that puts
/// the template back whole (what `kubectl rollout undo` applies), as upstream's getPatch.
fn revision_data(ds: &DaemonSet) -> serde_json::Value {
    let mut t = serde_json::to_value(template(ds).cloned().unwrap_or_default())
        .unwrap_or_else(|_| json!({}));
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    sorted(json!({"spec": {"template": t}}))
}

/// The value with every object's keys in byte order, as Go's encoding/json writes a map:
/// clients (`kubectl`, the e2e suite's `daemon.Match`) compare a revision's data byte for
/// byte with the patch they compute from the DaemonSet.
fn sorted(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        v => v,
    }
}

/// Whether a pod has been Ready for the DaemonSet's minReadySeconds.
fn available(p: &Pod, min_ready: i32, now: jiff::Timestamp) -> bool {
    util::is_available(p, min_ready, now)
}

fn pod_hash(p: &Pod) -> Option<&str> {
    p.metadata.labels.as_ref()?.get(HASH).map(String::as_str)
}

fn is_failed(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

/// The counts the DaemonSet's status reports.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Counts {
    desired: i32,
    current: i32,
    misscheduled: i32,
    ready: i32,
    updated: i32,
    available: i32,
}

/// What one pass decides: pods to create (per node) and pods to delete.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Vec<String>,
    pub delete: Vec<String>,
    /// Failed pods among `delete`, reported with a warning.
    pub failed: Vec<(String, String)>,
}

/// A node's daemon pods as the plan sees them.
#[derive(Debug, Clone)]
pub struct NodePods<'a> {
    pub should_run: bool,
    pub should_continue: bool,
    /// Active pods (not failed, not being deleted), oldest first.
    pub pods: Vec<&'a Pod>,
    pub failed: Vec<&'a Pod>,
}

/// The rolling-update settings in force.
#[derive(Debug, Clone, Copy)]
pub struct Rollout {
    pub on_delete: bool,
    pub max_surge: i32,
    pub max_unavailable: i32,
    pub min_ready: i32,
}

/// Decides one pass over every node, as upstream's manage + rollingUpdate: create a pod
/// where one should run and none does, delete pods where none should, failed pods, and
/// duplicates, then replace outdated pods within maxUnavailable (or maxSurge).
pub fn plan(
    nodes: &BTreeMap<String, NodePods<'_>>,
    hash: &str,
    r: Rollout,
    now: jiff::Timestamp,
) -> Plan {
    let mut out = Plan::default();
    let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
    let is_new = |p: &Pod| pod_hash(p) == Some(hash);
    for (node, np) in nodes {
        for f in &np.failed {
            out.delete.push(name(f));
            out.failed.push((name(f), node.clone()));
        }
        if !np.should_continue {
            out.delete.extend(np.pods.iter().map(|p| name(p)));
            continue;
        }
        if np.pods.is_empty() {
            // A failed pod is replaced on the next pass, once its deletion is seen.
            if np.should_run && np.failed.is_empty() {
                out.create.push(node.clone());
            }
            continue;
        }
        // More than one daemon pod: keep the oldest (with surge, the newest new pod and
        // the oldest old one are left to the rollout below).
        if r.max_surge > 0 && !r.on_delete {
            let news: Vec<&&Pod> = np.pods.iter().filter(|p| is_new(p)).collect();
            let olds: Vec<&&Pod> = np.pods.iter().filter(|p| !is_new(p)).collect();
            out.delete.extend(news.iter().skip(1).map(|p| name(p)));
            out.delete.extend(olds.iter().skip(1).map(|p| name(p)));
        } else {
            out.delete.extend(np.pods.iter().skip(1).map(|p| name(p)));
        }
    }
    if r.on_delete || !out.create.is_empty() || !out.delete.is_empty() {
        return out;
    }
    // The rollout: nodes whose pod is outdated.
    let runnable = nodes
        .values()
        .filter(|n| n.should_continue && !n.pods.is_empty());
    if r.max_surge > 0 {
        let mut surging = 0;
        let mut candidates = Vec::new();
        for (node, np) in nodes.iter().filter(|(_, n)| n.should_continue) {
            let new = np.pods.iter().find(|p| is_new(p));
            let old = np.pods.iter().find(|p| !is_new(p));
            match (old, new) {
                (Some(o), Some(n)) => {
                    surging += 1;
                    // The new pod took over: the old one goes.
                    if available(n, r.min_ready, now) {
                        out.delete.push(name(o));
                    }
                }
                (Some(o), None) if !available(o, r.min_ready, now) => {
                    out.delete.push(name(o));
                }
                (Some(_), None) => candidates.push(node.clone()),
                _ => {}
            }
        }
        let room = (r.max_surge - surging).max(0) as usize;
        out.create.extend(candidates.into_iter().take(room));
        return out;
    }
    let unavailable = runnable
        .clone()
        .filter(|np| !np.pods.iter().any(|p| available(p, r.min_ready, now)))
        .count() as i32;
    let mut budget = (r.max_unavailable - unavailable).max(0);
    for np in nodes.values().filter(|n| n.should_continue) {
        let Some(old) = np.pods.iter().find(|p| !is_new(p)) else {
            continue;
        };
        if !available(old, r.min_ready, now) {
            out.delete.push(name(old));
        } else if budget > 0 {
            budget -= 1;
            out.delete.push(name(old));
        }
    }
    out
}

impl Controller {
    fn owner_of(&self, p: &Pod) -> Option<Key> {
        let r = util::controller_ref(&p.metadata)?;
        if r.kind != "DaemonSet" {
            return None;
        }
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let o = self.sets.get(&ns, &r.name)?;
        (o.meta().uid.as_deref() == Some(&r.uid)).then(|| key_of(&*o))
    }

    fn on_pod(&self, ch: &Change<Pod>) {
        let p = ch.object();
        if let Some(owner) = self.owner_of(p) {
            let k = util::key_str(&owner.0, &owner.1);
            let pk = util::key_str(&key_of(&**p).0, &key_of(&**p).1);
            match ch {
                Change::Added(_) => self.expectations.created(&k),
                Change::Deleted(_) => self.expectations.deleted(&k, &pk),
                Change::Updated { old, new } => {
                    if old.metadata.deletion_timestamp.is_none()
                        && new.metadata.deletion_timestamp.is_some()
                    {
                        self.expectations.deleted(&k, &pk);
                    }
                }
            }
            self.queue.add(owner);
        }
        if let Some(old) = ch.old() {
            if let Some(o) = self.owner_of(old) {
                self.queue.add(o);
            }
        }
        if util::controller_ref(&p.metadata).is_none() && !matches!(ch, Change::Deleted(_)) {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            for ds in self.sets.list_ns(&ns) {
                if selects(&ds, p) {
                    self.queue.add(key_of(&*ds));
                }
            }
        }
    }

    async fn reconcile(&self, key: Key) -> Result<Action> {
        let skey = util::key_str(&key.0, &key.1);
        let Some(ds) = self.sets.get_key(&key) else {
            self.expectations.forget(&skey);
            return Ok(Action::AwaitChange);
        };
        if ds.meta().deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let hash = self.current_revision(&ds).await?;
        let pods = self.claim(&ds).await;
        let now = jiff::Timestamp::now();
        let spec = ds.spec.clone().unwrap_or_default();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        // Pods by the node they are for, oldest first.
        let mut by_node: HashMap<String, Vec<&Pod>> = HashMap::new();
        for p in &pods {
            if let Some(n) = target_node(p) {
                by_node.entry(n).or_default().push(p);
            }
        }
        let tmpl = spec.template.clone();
        let mut nodes: BTreeMap<String, NodePods> = BTreeMap::new();
        for node in self.nodes.list() {
            let name = node.name_any();
            let (should_run, should_continue) = should_run(&tmpl, &node);
            let mine = by_node.remove(&name).unwrap_or_default();
            nodes.insert(name, node_pods(should_run, should_continue, mine));
        }
        // Pods not yet scheduled to a node that no longer exists go; pods bound to a
        // deleted node are the pod GC's, as upstream (a node that registers again, as a
        // kubelet does, keeps its daemon).
        for (name, mine) in by_node {
            let unbound: Vec<&Pod> = mine
                .into_iter()
                .filter(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .is_none_or(str::is_empty)
                })
                .collect();
            if !unbound.is_empty() {
                nodes.insert(name, node_pods(false, false, unbound));
            }
        }
        let counts = count(&nodes, &hash, min_ready, now);
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        let on_delete = strategy.type_.as_deref() == Some("OnDelete");
        let ru = strategy.rolling_update.clone().unwrap_or_default();
        let rollout = Rollout {
            on_delete,
            max_surge: scaled(ru.max_surge.as_ref(), counts.desired, true, "0"),
            max_unavailable: scaled(ru.max_unavailable.as_ref(), counts.desired, true, "1"),
            min_ready,
        };
        let mut result = Ok(());
        if self.expectations.satisfied(&skey) {
            let mut p = plan(&nodes, &hash, rollout, now);
            p.create.truncate(BURST);
            p.delete.truncate(BURST);
            if !p.create.is_empty() || !p.delete.is_empty() {
                let dels = p.delete.iter().map(|n| util::key_str(&key.0, n));
                self.expectations
                    .expect(&skey, p.create.len() as i64, dels.collect::<Vec<_>>());
                for (pod, node) in &p.failed {
                    self.ctx.recorder(COMPONENT).event(
                        &*ds,
                        WARNING,
                        "FailedDaemonPod",
                        format!(
                            "Found failed daemon pod {}/{pod} on node {node}, will try to kill it",
                            key.0
                        ),
                    );
                }
                self.delete_pods(&ds, &skey, &p.delete).await;
                result = self.create_pods(&ds, &skey, &p.create, &hash).await;
            }
        }
        self.update_status(&ds, counts).await?;
        result?;
        let pending = nodes
            .values()
            .flat_map(|n| n.pods.iter())
            .filter_map(|p| util::until_available(p, min_ready, now))
            .min();
        Ok(match pending {
            Some(s) => Action::Requeue(Duration::from_secs(s as u64 + 1)),
            None => Action::AwaitChange,
        })
    }

    /// Adopts orphans the selector matches, releases owned pods it no longer matches,
    /// and returns the owned ones.
    async fn claim(&self, ds: &DaemonSet) -> Vec<Pod> {
        let ns = ds.namespace().unwrap_or_default();
        let uid = ds.uid().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let mut owned = Vec::new();
        for p in self.pods.list_ns(&ns) {
            let name = p.name_any();
            match util::controller_ref(&p.metadata) {
                Some(r) if r.uid == uid => {
                    if selects(ds, &p) {
                        owned.push((*p).clone());
                    } else {
                        let patch = json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": uid}]}});
                        let _ = api
                            .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                            .await;
                    }
                }
                None if selects(ds, &p) && p.metadata.deletion_timestamp.is_none() => {
                    let patch = json!({"metadata": {"ownerReferences": [util::owner_ref(ds)]}});
                    match api
                        .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                        .await
                    {
                        Ok(p) => owned.push(p),
                        Err(e) => tracing::debug!(error = %e, "adopting a pod failed"),
                    }
                }
                _ => {}
            }
        }
        owned.sort_by_key(|p| (util::created(&p.metadata), p.name_any()));
        owned
    }

    /// Makes sure a ControllerRevision holds the current template with the highest
    /// revision number, trims history to revisionHistoryLimit, and returns its hash.
    async fn current_revision(&self, ds: &DaemonSet) -> Result<String> {
        let ns = ds.namespace().unwrap_or_default();
        let uid = ds.uid().unwrap_or_default();
        let api: Api<ControllerRevision> = Api::namespaced(self.ctx.client.clone(), &ns);
        let data = revision_data(ds);
        let mut mine: Vec<Arc<ControllerRevision>> = self
            .revisions
            .list_ns(&ns)
            .into_iter()
            .filter(|r| util::controller_ref(&r.metadata).is_some_and(|o| o.uid == uid))
            .collect();
        mine.sort_by_key(|r| r.revision);
        let max = mine.last().map(|r| r.revision).unwrap_or(0);
        let same = |r: &ControllerRevision| r.data.as_ref().map(|d| &d.0) == Some(&data);
        let hash = if let Some(cur) = mine.iter().rev().find(|r| same(r)) {
            if cur.revision < max {
                // Rolled back to an older template: it becomes the newest revision.
                let patch = json!({"revision": max + 1});
                api.patch(
                    &cur.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            }
            cur.labels()
                .get(HASH)
                .cloned()
                .unwrap_or_else(|| self.hash(ds))
        } else {
            let hash = self.hash(ds);
            let mut labels = template(ds)
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(HASH.into(), hash.clone());
            let rev = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(format!("{}-{hash}", ds.name_any())),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    owner_references: Some(vec![util::owner_ref(ds)]),
                    ..Default::default()
                },
                data: Some(RawExtension(data.clone())),
                revision: max + 1,
            };
            match api.create(&PostParams::default(), &rev).await {
                Ok(_) => {}
                Err(e) if util::is_status(&e, 409) => {
                    let existing = api.get(&format!("{}-{hash}", ds.name_any())).await?;
                    let ours =
                        util::controller_ref(&existing.metadata).is_some_and(|o| o.uid == uid);
                    if !(ours && same(&existing)) {
                        // A hash collision: count it, so that the next hash differs.
                        let c = ds
                            .status
                            .as_ref()
                            .and_then(|s| s.collision_count)
                            .unwrap_or(0);
                        let patch = json!({"status": {"collisionCount": c + 1}});
                        Api::<DaemonSet>::namespaced(self.ctx.client.clone(), &ns)
                            .patch_status(
                                &ds.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(&patch),
                            )
                            .await?;
                        anyhow::bail!("revision name {}-{hash} is taken", ds.name_any());
                    }
                }
                Err(e) => return Err(e.into()),
            }
            hash
        };
        self.trim_history(ds, &mine, &hash).await;
        Ok(hash)
    }

    fn hash(&self, ds: &DaemonSet) -> String {
        let collisions = ds.status.as_ref().and_then(|s| s.collision_count);
        template_hash(&template(ds).cloned().unwrap_or_default(), collisions)
    }

    /// Deletes the oldest revisions beyond revisionHistoryLimit that no pod runs.
    async fn trim_history(&self, ds: &DaemonSet, mine: &[Arc<ControllerRevision>], hash: &str) {
        let limit = ds
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let ns = ds.namespace().unwrap_or_default();
        let uid = ds.uid().unwrap_or_default();
        let live: Vec<String> = self
            .pods
            .list_ns(&ns)
            .iter()
            .filter(|p| util::controller_ref(&p.metadata).is_some_and(|o| o.uid == uid))
            .filter_map(|p| pod_hash(p).map(str::to_string))
            .collect();
        let old: Vec<&Arc<ControllerRevision>> = mine
            .iter()
            .filter(|r| {
                let h = r.labels().get(HASH).map(String::as_str).unwrap_or_default();
                h != hash && !live.iter().any(|l| l == h)
            })
            .collect();
        if old.len() <= limit {
            return;
        }
        let api: Api<ControllerRevision> = Api::namespaced(self.ctx.client.clone(), &ns);
        for r in &old[..old.len() - limit] {
            if let Err(e) = api.delete(&r.name_any(), &DeleteParams::default()).await {
                tracing::debug!(error = %e, "trimming DaemonSet history failed");
            }
        }
    }

    async fn create_pods(
        &self,
        ds: &DaemonSet,
        skey: &str,
        nodes: &[String],
        hash: &str,
    ) -> Result<()> {
        let api: Api<Pod> =
            Api::namespaced(self.ctx.client.clone(), &ds.namespace().unwrap_or_default());
        // Slow start: batches of 1, 2, 4, … so a failing template fails fast.
        let mut rest = nodes;
        let mut batch = 1;
        while !rest.is_empty() {
            let (now, later) = rest.split_at(batch.min(rest.len()));
            rest = later;
            let pp = PostParams::default();
            let pods: Vec<Pod> = now.iter().map(|n| new_pod(ds, n, hash)).collect();
            let results = futures::future::join_all(pods.iter().map(|p| api.create(&pp, p))).await;
            let mut first_err = None;
            for r in results {
                match r {
                    Ok(p) => self.ctx.recorder(COMPONENT).event(
                        ds,
                        NORMAL,
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.name_any()),
                    ),
                    Err(e) => {
                        self.expectations.created(skey);
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_err {
                for _ in rest {
                    self.expectations.created(skey);
                }
                let msg = match &e {
                    kube::Error::Api(s) => s.message.clone(),
                    e => e.to_string(),
                };
                self.ctx.recorder(COMPONENT).event(
                    ds,
                    WARNING,
                    "FailedCreate",
                    format!("Error creating: {msg}"),
                );
                anyhow::bail!("{msg}");
            }
            batch *= 2;
        }
        Ok(())
    }

    async fn delete_pods(&self, ds: &DaemonSet, skey: &str, names: &[String]) {
        let ns = ds.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let futs = names.iter().map(|name| {
            let api = api.clone();
            let uid = self.pods.get(&ns, name).and_then(|p| p.uid());
            async move {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid,
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                (name, api.delete(name, &dp).await)
            }
        });
        for (name, r) in futures::future::join_all(futs).await {
            match r {
                Ok(_) => self.ctx.recorder(COMPONENT).event(
                    ds,
                    NORMAL,
                    "SuccessfulDelete",
                    format!("Deleted pod: {name}"),
                ),
                Err(e) => {
                    self.expectations.deleted(skey, &util::key_str(&ns, name));
                    if !util::is_status(&e, 404) {
                        self.ctx.recorder(COMPONENT).event(
                            ds,
                            WARNING,
                            "FailedDelete",
                            format!("Error deleting: {e}"),
                        );
                    }
                }
            }
        }
    }

    async fn update_status(&self, ds: &DaemonSet, c: Counts) -> Result<()> {
        let generation = ds.meta().generation.unwrap_or(0);
        let st = ds.status.clone().unwrap_or_default();
        let unavailable = (c.desired - c.available).max(0);
        let old = (
            st.desired_number_scheduled,
            st.current_number_scheduled,
            st.number_misscheduled,
            st.number_ready,
            st.updated_number_scheduled.unwrap_or(0),
            st.number_available.unwrap_or(0),
            st.number_unavailable.unwrap_or(0),
            st.observed_generation.unwrap_or(0),
        );
        let new = (
            c.desired,
            c.current,
            c.misscheduled,
            c.ready,
            c.updated,
            c.available,
            unavailable,
            generation,
        );
        if old == new {
            return Ok(());
        }
        let patch = json!({"status": {
            "desiredNumberScheduled": c.desired,
            "currentNumberScheduled": c.current,
            "numberMisscheduled": c.misscheduled,
            "numberReady": c.ready,
            "updatedNumberScheduled": c.updated,
            "numberAvailable": c.available,
            "numberUnavailable": unavailable,
            "observedGeneration": generation,
        }});
        Api::<DaemonSet>::namespaced(self.ctx.client.clone(), &ds.namespace().unwrap_or_default())
            .patch_status(
                &ds.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }
}

fn selects(ds: &DaemonSet, p: &Pod) -> bool {
    let Some(sel) = ds.spec.as_ref().map(|s| &s.selector) else {
        return false;
    };
    !labels::is_empty(sel)
        && labels::matches(sel, p.metadata.labels.as_ref().unwrap_or(&Labels::new()))
}

fn node_pods(should_run: bool, should_continue: bool, pods: Vec<&Pod>) -> NodePods<'_> {
    let (failed, rest): (Vec<&Pod>, Vec<&Pod>) = pods
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .partition(|p| is_failed(p));
    // Succeeded daemon pods (restartPolicy Always makes them rare) count as gone.
    let active = rest.into_iter().filter(|p| !util::is_terminal(p)).collect();
    NodePods {
        should_run,
        should_continue,
        pods: active,
        failed,
    }
}

/// The status counts, as upstream's updateDaemonSetStatus.
fn count(
    nodes: &BTreeMap<String, NodePods>,
    hash: &str,
    min_ready: i32,
    now: jiff::Timestamp,
) -> Counts {
    let mut c = Counts::default();
    for np in nodes.values() {
        if np.should_run {
            c.desired += 1;
            if let Some(p) = np.pods.first() {
                c.current += 1;
                if util::is_ready(p) {
                    c.ready += 1;
                    if available(p, min_ready, now) {
                        c.available += 1;
                    }
                }
                if np.pods.iter().any(|p| pod_hash(p) == Some(hash)) {
                    c.updated += 1;
                }
            }
        } else if !np.pods.is_empty() {
            c.misscheduled += 1;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|(k, e)| Taint {
                            key: k.to_string(),
                            effect: e.to_string(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn tmpl(spec: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(json!({"spec": spec})).unwrap()
    }

    #[test]
    fn placement_follows_selector_affinity_and_taints() {
        let plain = tmpl(json!({"containers": [{"name": "c"}]}));
        let n = node("a", &[("disk", "ssd")], &[]);
        assert_eq!(should_run(&plain, &n), (true, true));
        let sel = tmpl(json!({"containers": [], "nodeSelector": {"disk": "hdd"}}));
        assert_eq!(should_run(&sel, &n), (false, false));
        let aff = tmpl(json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]},
                {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}}}));
        assert_eq!(should_run(&aff, &n), (true, true));
        assert_eq!(should_run(&aff, &node("b", &[], &[])), (true, true));
        assert_eq!(should_run(&aff, &node("c", &[], &[])), (false, false));
        // Cordoned and not-ready nodes keep their daemons; other taints do not.
        let cordoned = node(
            "a",
            &[],
            &[("node.kubernetes.io/unschedulable", "NoSchedule")],
        );
        assert_eq!(should_run(&plain, &cordoned), (true, true));
        let not_ready = node("a", &[], &[("node.kubernetes.io/not-ready", "NoExecute")]);
        assert_eq!(should_run(&plain, &not_ready), (true, true));
        let master = node(
            "a",
            &[],
            &[("node-role.kubernetes.io/control-plane", "NoSchedule")],
        );
        assert_eq!(should_run(&plain, &master), (false, true));
        let evict = node("a", &[], &[("dedicated", "NoExecute")]);
        assert_eq!(should_run(&plain, &evict), (false, false));
        let tolerant = tmpl(json!({"containers": [], "tolerations": [{"operator": "Exists"}]}));
        assert_eq!(should_run(&tolerant, &evict), (true, true));
        assert_eq!(
            should_run(&plain, &node("a", &[], &[("x", "PreferNoSchedule")])),
            (true, true)
        );
    }

    #[test]
    fn daemon_pods_are_pinned_and_tolerate_node_conditions() {
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "fluent", "namespace": "kube-system", "uid": "u1",
                "annotations": {"deprecated.daemonset.template.generation": "3"}},
            "spec": {"selector": {"matchLabels": {"app": "f"}}, "template": {
                "metadata": {"labels": {"app": "f"}},
                "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "i"}],
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "Exists"}]}]}}}}}}
        }))
        .unwrap();
        let p = new_pod(&ds, "node-1", "abc");
        assert_eq!(target_node(&p).as_deref(), Some("node-1"));
        let l = p.metadata.labels.as_ref().unwrap();
        assert_eq!(l[HASH], "abc");
        assert_eq!(l[TEMPLATE_GENERATION], "3");
        assert_eq!(p.metadata.generate_name.as_deref(), Some("fluent-"));
        let tols = p.spec.as_ref().unwrap().tolerations.as_ref().unwrap();
        assert_eq!(tols.len(), 7, "{tols:?}");
        let terms = &p
            .spec
            .as_ref()
            .unwrap()
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        // The revision puts the whole template back.
        let d = revision_data(&ds);
        assert_eq!(d["spec"]["template"]["$patch"], "replace");
        assert_eq!(d["spec"]["template"]["spec"]["hostNetwork"], true);
        // Keys in Go's order, byte for byte what upstream's getPatch writes.
        let text = serde_json::to_string(&d).unwrap();
        assert!(
            text.starts_with(r#"{"spec":{"template":{"$patch":"replace","metadata":{"labels":{"app":"f"}},"spec":{"affinity""#),
            "{text}"
        );
    }

    fn pod(name: &str, hash: &str, ready: bool, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(HASH.to_string(), hash.to_string())].into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn rollout(surge: i32, unavailable: i32) -> Rollout {
        Rollout {
            on_delete: false,
            max_surge: surge,
            max_unavailable: unavailable,
            min_ready: 0,
        }
    }

    #[test]
    fn plan_creates_deletes_and_replaces_failed_pods() {
        let old_a = pod("a1", "old", true, "Running");
        let dup = pod("a2", "old", true, "Running");
        let failed = pod("b1", "new", false, "Failed");
        let gone = pod("c1", "new", true, "Running");
        let mut nodes = BTreeMap::new();
        nodes.insert("a".into(), node_pods(true, true, vec![&old_a, &dup]));
        nodes.insert("b".into(), node_pods(true, true, vec![&failed]));
        nodes.insert("c".into(), node_pods(false, false, vec![&gone]));
        nodes.insert("d".into(), node_pods(true, true, vec![]));
        nodes.insert("e".into(), node_pods(false, true, vec![]));
        let p = plan(&nodes, "new", rollout(0, 1), jiff::Timestamp::now());
        assert_eq!(p.create, vec!["d".to_string()]);
        assert_eq!(p.delete, vec!["a2", "b1", "c1"]);
        assert_eq!(p.failed, vec![("b1".to_string(), "b".to_string())]);
    }

    #[test]
    fn rolling_update_keeps_within_max_unavailable() {
        let pods: Vec<Pod> = (0..4)
            .map(|i| pod(&format!("p{i}"), "old", true, "Running"))
            .collect();
        let mut nodes = BTreeMap::new();
        for (i, p) in pods.iter().enumerate() {
            nodes.insert(format!("n{i}"), node_pods(true, true, vec![p]));
        }
        let now = jiff::Timestamp::now();
        assert_eq!(plan(&nodes, "new", rollout(0, 1), now).delete, vec!["p0"]);
        assert_eq!(
            plan(&nodes, "new", rollout(0, 2), now).delete,
            vec!["p0", "p1"]
        );
        // One node already without an available pod uses up the budget...
        let unready = pod("u", "new", false, "Running");
        nodes.insert("n0".into(), node_pods(true, true, vec![&unready]));
        assert!(plan(&nodes, "new", rollout(0, 1), now).delete.is_empty());
        // ...but an outdated pod that is not available is replaced at once.
        let old_unready = pod("ou", "old", false, "Running");
        nodes.insert("n0".into(), node_pods(true, true, vec![&old_unready]));
        assert_eq!(plan(&nodes, "new", rollout(0, 1), now).delete, vec!["ou"]);
        // OnDelete leaves outdated pods alone.
        let mut r = rollout(0, 1);
        r.on_delete = true;
        assert_eq!(plan(&nodes, "new", r, now), Plan::default());
    }

    #[test]
    fn surge_starts_new_pods_before_old_ones_go() {
        let o0 = pod("o0", "old", true, "Running");
        let o1 = pod("o1", "old", true, "Running");
        let n0 = pod("n0", "new", true, "Running");
        let n1 = pod("n1", "new", false, "Running");
        let now = jiff::Timestamp::now();
        let mut nodes = BTreeMap::new();
        nodes.insert("a".into(), node_pods(true, true, vec![&o0]));
        nodes.insert("b".into(), node_pods(true, true, vec![&o1]));
        let p = plan(&nodes, "new", rollout(1, 0), now);
        assert_eq!((p.create, p.delete), (vec!["a".to_string()], vec![]));
        // The new pod is available: the old one on its node goes.
        nodes.insert("a".into(), node_pods(true, true, vec![&o0, &n0]));
        let p = plan(&nodes, "new", rollout(1, 0), now);
        assert_eq!((p.create, p.delete), (vec![], vec!["o0".to_string()]));
        // Not yet available: wait, and the surge budget is used up.
        nodes.insert("a".into(), node_pods(true, true, vec![&o0, &n1]));
        assert_eq!(plan(&nodes, "new", rollout(1, 0), now), Plan::default());
    }

    #[test]
    fn status_counts_as_upstream() {
        let ready_new = pod("a", "new", true, "Running");
        let unready_old = pod("b", "old", false, "Running");
        let stray = pod("c", "new", true, "Running");
        let mut nodes = BTreeMap::new();
        nodes.insert("a".into(), node_pods(true, true, vec![&ready_new]));
        nodes.insert("b".into(), node_pods(true, true, vec![&unready_old]));
        nodes.insert("c".into(), node_pods(false, true, vec![&stray]));
        nodes.insert("d".into(), node_pods(true, true, vec![]));
        let c = count(&nodes, "new", 0, jiff::Timestamp::now());
        assert_eq!(
            c,
            Counts {
                desired: 3,
                current: 2,
                misscheduled: 1,
                ready: 1,
                updated: 1,
                available: 1
            }
        );
    }
}
