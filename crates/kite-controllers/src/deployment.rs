//! The Deployment controller: one ReplicaSet per pod template (named by its
//! pod-template-hash), revisions in `deployment.kubernetes.io/revision`, RollingUpdate
//! within maxSurge/maxUnavailable or Recreate, proportional scaling while a rollout is in
//! progress, pause, history trimmed to revisionHistoryLimit, and the Available and
//! Progressing conditions (ProgressDeadlineExceeded after progressDeadlineSeconds).

use crate::util;
use crate::Ctx;
use anyhow::Result;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kite_runtime::events::NORMAL;
use kite_runtime::informer::key_of;
use kite_runtime::labels;
use kite_runtime::queue::run_workers_after;
use kite_runtime::{Action, Change, Informer, Key, WorkQueue};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::Api;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "deployment-controller";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const HASH: &str = "pod-template-hash";
/// Deployment annotations not copied to its ReplicaSets, as upstream.
const SKIP_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

struct Controller {
    ctx: Arc<Ctx>,
    deployments: Arc<Informer<Deployment>>,
    replicasets: Arc<Informer<ReplicaSet>>,
    pods: Arc<Informer<Pod>>,
    queue: WorkQueue<Key>,
    /// The resourceVersion of this controller's last write to each ReplicaSet (by uid):
    /// a sync waits until the cache has caught up with it, so that it never sizes
    /// ReplicaSets from a copy older than its own last scale (the Deployment and
    /// ReplicaSet watches are separate streams, and a scale can overtake an RS update).
    written: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

pub fn start(ctx: Arc<Ctx>) {
    let c = Arc::new(Controller {
        deployments: ctx.informers.get::<Deployment>(),
        replicasets: ctx.informers.get::<ReplicaSet>(),
        pods: ctx.informers.get::<Pod>(),
        queue: WorkQueue::new(),
        written: Default::default(),
        ctx,
    });
    let q = c.queue.clone();
    c.deployments
        .add_handler(move |ch: &Change<Deployment>| q.add(key_of(&**ch.object())));
    let c2 = c.clone();
    c.replicasets.add_handler(move |ch: &Change<ReplicaSet>| {
        let rs = ch.object();
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        match util::controller_ref(&rs.metadata) {
            Some(r) if r.kind == "Deployment" => c2.queue.add((ns, r.name.clone())),
            Some(_) => {}
            None => {
                for d in c2.deployments.list_ns(&ns) {
                    if let Some(sel) = d.spec.as_ref().map(|s| &s.selector) {
                        if !labels::is_empty(sel)
                            && labels::matches(
                                sel,
                                rs.metadata.labels.as_ref().unwrap_or(&Default::default()),
                            )
                        {
                            c2.queue.add(key_of(&*d));
                        }
                    }
                }
            }
        }
    });
    // Recreate waits for old pods to be gone.
    let c3 = c.clone();
    c.pods.add_handler(move |ch: &Change<Pod>| {
        if !matches!(ch, Change::Deleted(_)) {
            return;
        }
        let p = ch.object();
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        if let Some(r) = util::controller_ref(&p.metadata) {
            if let Some(rs) = c3.replicasets.get(&ns, &r.name) {
                if let Some(d) = util::controller_ref(&rs.metadata) {
                    c3.queue.add((ns, d.name.clone()));
                }
            }
        }
    });
    let c4 = c.clone();
    run_workers_after(
        futures::future::join3(
            c.deployments.synced_future(),
            c.replicasets.synced_future(),
            c.pods.synced_future(),
        ),
        COMPONENT,
        c.queue.clone(),
        4,
        move |k| {
            let c = c4.clone();
            async move { c.reconcile(k).await }
        },
    );
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status
        .as_ref()
        .map(|s| {
            (
                s.replicas,
                s.ready_replicas.unwrap_or(0),
                s.available_replicas.unwrap_or(0),
            )
        })
        .unwrap_or_default()
}

pub fn revision(m: &ObjectMeta) -> i64 {
    m.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// An int-or-percent of `total`, rounded up or down.
pub fn scaled(v: Option<&IntOrString>, total: i32, round_up: bool, default: &str) -> i32 {
    let s = match v {
        Some(IntOrString::Int(i)) => return *i,
        Some(IntOrString::String(s)) => s.as_str(),
        None => default,
    };
    let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
    let x = pct * i64::from(total);
    (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
}

/// (maxSurge, maxUnavailable) resolved as upstream's ResolveFenceposts.
pub fn fenceposts(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.as_ref();
    let want = spec.and_then(|s| s.replicas).unwrap_or(1);
    let strategy = spec.and_then(|s| s.strategy.as_ref());
    if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return (0, 0);
    }
    let ru = strategy.and_then(|s| s.rolling_update.as_ref());
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), want, true, "25%");
    let mut unavailable = scaled(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        want,
        false,
        "25%",
    );
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

/// FNV-1a over the template's JSON, encoded with upstream's safe alphabet.
pub fn template_hash(t: &PodTemplateSpec, collisions: Option<i32>) -> String {
    let mut h: u32 = 0x811c9dc5;
    let mut feed = |b: &[u8]| {
        for x in b {
            h ^= u32::from(*x);
            h = h.wrapping_mul(0x01000193);
        }
    };
    feed(&serde_json::to_vec(t).unwrap_or_default());
    if let Some(c) = collisions {
        feed(c.to_string().as_bytes());
    }
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|d| ALPHA[(d - b'0') as usize * 2 % ALPHA.len()] as char)
        .collect()
}

fn without_hash(t: &PodTemplateSpec) -> serde_json::Value {
    let mut t = t.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(HASH);
    }
    let mut v = serde_json::to_value(&t).unwrap_or_default();
    drop_zero_values(&mut v);
    v
}

/// Removes fields holding a zero value (false, 0, "", null, {} or []). Templates are
/// compared after the API server's defaulting, where an absent field and its zero value
/// mean the same; a template decoded from protobuf carries explicit zeros that the same
/// template sent as JSON (by `kubectl rollout undo`) does not.
fn drop_zero_values(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !drop_zero_values(x));
            m.is_empty()
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                drop_zero_values(x);
            }
            a.is_empty()
        }
        Value::Bool(b) => !*b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Null => true,
    }
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

struct Plan {
    new_rs: Option<ReplicaSet>,
    created: bool,
}

impl Controller {
    fn api(&self, ns: &str) -> Api<ReplicaSet> {
        Api::namespaced(self.ctx.client.clone(), ns)
    }

    async fn reconcile(&self, key: Key) -> Result<Action> {
        let Some(d) = self.deployments.get_key(&key) else {
            return Ok(Action::AwaitChange);
        };
        let d = (*d).clone();
        // A Deployment being deleted adopts nothing (as upstream's canAdopt): with
        // --cascade=orphan the garbage collector is releasing its ReplicaSets.
        if d.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        let sel = spec.selector.clone();
        // Claim ReplicaSets: owned ones, and orphans the selector matches.
        let mut rss: Vec<ReplicaSet> = Vec::new();
        for rs in self.replicasets.list_ns(&key.0) {
            let matches = !labels::is_empty(&sel)
                && labels::matches(
                    &sel,
                    rs.metadata.labels.as_ref().unwrap_or(&Default::default()),
                );
            match util::controller_ref(&rs.metadata) {
                Some(r) if r.uid == uid && matches => rss.push((*rs).clone()),
                Some(_) => {}
                None if matches
                    && d.metadata.deletion_timestamp.is_none()
                    && rs.metadata.deletion_timestamp.is_none() =>
                {
                    let patch = json!({"metadata": {"ownerReferences": [util::owner_ref(&d)]}});
                    let name = rs.metadata.name.clone().unwrap_or_default();
                    if let Ok(adopted) = self
                        .api(&key.0)
                        .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                        .await
                    {
                        rss.push(adopted);
                    }
                }
                _ => {}
            }
        }
        if d.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        if self.cache_behind(&rss) {
            return Ok(Action::Requeue(Duration::from_millis(20)));
        }
        let paused = spec.paused.unwrap_or(false);
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let plan = if paused || self.is_scaling_event(&d, &rss) {
            let mut plan = self.find_new(&d, &mut rss, false).await?;
            self.scale(&d, &mut rss, plan.new_rs.as_ref()).await?;
            if let Some(n) = &plan.new_rs {
                plan.new_rs = rss
                    .iter()
                    .find(|r| r.metadata.name == n.metadata.name)
                    .cloned();
            }
            plan
        } else if recreate {
            self.recreate(&d, &mut rss).await?
        } else {
            self.rolling(&d, &mut rss).await?
        };
        self.cleanup(&d, &rss, plan.new_rs.as_ref()).await;
        self.sync_status(&d, &rss, &plan).await
    }

    /// Whether `replicas` changed while the ReplicaSets still carry the old desired count.
    fn is_scaling_event(&self, d: &Deployment, rss: &[ReplicaSet]) -> bool {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        rss.iter().filter(|r| replicas(r) > 0).any(|r| {
            r.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DESIRED))
                .and_then(|v| v.parse::<i32>().ok())
                .is_some_and(|v| v != want)
        })
    }

    /// Finds the ReplicaSet of the current template (bumping its revision if it was an
    /// old one, as `rollout undo` needs), or creates it when `create`.
    async fn find_new(
        &self,
        d: &Deployment,
        rss: &mut Vec<ReplicaSet>,
        create: bool,
    ) -> Result<Plan> {
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        let want_t = without_hash(&spec.template);
        let mut matching: Vec<usize> = (0..rss.len())
            .filter(|i| {
                rss[*i]
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| without_hash(t) == want_t)
            })
            .collect();
        matching.sort_by_key(|i| util::created(&rss[*i].metadata));
        let existing = matching.first().copied();
        let max_old = rss
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != existing)
            .map(|(_, r)| revision(&r.metadata))
            .max()
            .unwrap_or(0);
        let new_rev = max_old + 1;
        let mut annotations: BTreeMap<String, String> = d
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !SKIP_ANNOTATIONS.contains(&k.as_str()))
            .collect();
        if let Some(i) = existing {
            let rs = &rss[i];
            let cur = revision(&rs.metadata);
            let mut changed = false;
            let mut want_ann = annotations.clone();
            if cur < new_rev {
                want_ann.insert(REVISION.into(), new_rev.to_string());
                if cur > 0 {
                    let mut hist: Vec<String> = rs
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(REVISION_HISTORY))
                        .map(|h| h.split(',').map(String::from).collect())
                        .unwrap_or_default();
                    hist.push(cur.to_string());
                    want_ann.insert(REVISION_HISTORY.into(), hist.join(","));
                }
            }
            let have = rs.metadata.annotations.clone().unwrap_or_default();
            if want_ann.iter().any(|(k, v)| have.get(k) != Some(v)) {
                changed = true;
            }
            if changed {
                let patch = json!({"metadata": {"annotations": want_ann}});
                let name = rs.metadata.name.clone().unwrap_or_default();
                let updated = self
                    .api(&ns)
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                rss[i] = updated;
            }
            return Ok(Plan {
                new_rs: Some(rss[i].clone()),
                created: false,
            });
        }
        if !create {
            return Ok(Plan {
                new_rs: None,
                created: false,
            });
        }
        let collisions = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&spec.template, collisions);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(HASH.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH.into(), hash.clone());
        let want = spec.replicas.unwrap_or(1);
        let (surge, _) = fenceposts(d);
        annotations.insert(REVISION.into(), new_rev.to_string());
        annotations.insert(DESIRED.into(), want.to_string());
        annotations.insert(MAX_REPLICAS.into(), (want + surge).to_string());
        let name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or_default());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                annotations: Some(annotations),
                owner_references: Some(vec![util::owner_ref(d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        match self.api(&ns).create(&PostParams::default(), &rs).await {
            Ok(created) => {
                rss.push(created.clone());
                Ok(Plan {
                    new_rs: Some(created),
                    created: true,
                })
            }
            Err(e) if util::is_status(&e, 409) => {
                // The name is taken. If it is our own ReplicaSet for this very template
                // (a cache that has not caught up, e.g. just after a restart), use it, as
                // upstream does; only a different template is a hash collision.
                if let Ok(existing) = self.api(&ns).get(&name).await {
                    let same_owner = existing
                        .metadata
                        .owner_references
                        .as_ref()
                        .is_some_and(|o| {
                            o.iter().any(|r| {
                                Some(&r.uid) == d.metadata.uid.as_ref()
                                    && r.controller == Some(true)
                            })
                        });
                    let same_template = existing
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .is_some_and(|t| without_hash(t) == without_hash(&spec.template));
                    if same_owner && same_template {
                        rss.push(existing.clone());
                        return Ok(Plan {
                            new_rs: Some(existing),
                            created: false,
                        });
                    }
                }
                // A different template hashed to the same name: count the collision so
                // the next attempt picks another name.
                let dapi: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &ns);
                let patch = json!({"status": {"collisionCount": collisions.unwrap_or(0) + 1}});
                dapi.patch_status(
                    d.metadata.name.as_deref().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
                Err(anyhow::anyhow!("hash collision for ReplicaSet {name}"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sets one ReplicaSet's replicas (and its desired/max annotations), with the event.
    /// Whether the cache shows any of `rss` older than this controller last wrote it.
    /// Entries the cache has caught up with are dropped, so the map holds only writes
    /// in flight.
    fn cache_behind(&self, rss: &[ReplicaSet]) -> bool {
        let mut written = self.written.lock().unwrap();
        let mut behind = false;
        for r in rss {
            let uid = r.metadata.uid.as_deref().unwrap_or_default();
            let Some(w) = written.get(uid).copied() else {
                continue;
            };
            let seen = r
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok());
            match seen {
                Some(s) if s < w => behind = true,
                _ => {
                    written.remove(uid);
                }
            }
        }
        behind
    }

    fn wrote(&self, rs: &ReplicaSet) {
        if let (Some(uid), Some(rv)) = (
            rs.metadata.uid.clone(),
            rs.metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok()),
        ) {
            self.written.lock().unwrap().insert(uid, rv);
        }
    }

    async fn scale_rs(&self, d: &Deployment, rs: &mut ReplicaSet, to: i32) -> Result<bool> {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let (surge, _) = fenceposts(d);
        let from = replicas(rs);
        let ann = rs.metadata.annotations.clone().unwrap_or_default();
        let ann_ok = ann.get(DESIRED) == Some(&want.to_string())
            && ann.get(MAX_REPLICAS) == Some(&(want + surge).to_string());
        if from == to && ann_ok {
            return Ok(false);
        }
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        let name = rs.metadata.name.clone().unwrap_or_default();
        let patch = json!({
            "metadata": {"annotations": {DESIRED: want.to_string(), MAX_REPLICAS: (want + surge).to_string()}},
            "spec": {"replicas": to},
        });
        *rs = self
            .api(&ns)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.wrote(rs);
        if from != to {
            let dir = if to > from { "up" } else { "down" };
            self.ctx.recorder(COMPONENT).event(
                d,
                NORMAL,
                "ScalingReplicaSet",
                format!("Scaled {dir} replica set {name} from {from} to {to}"),
            );
        }
        Ok(from != to)
    }

    async fn rolling(&self, d: &Deployment, rss: &mut Vec<ReplicaSet>) -> Result<Plan> {
        let plan = self.find_new(d, rss, true).await?;
        let new_name = plan.new_rs.as_ref().and_then(|r| r.metadata.name.clone());
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let (surge, unavailable) = fenceposts(d);
        let Some(ni) = rss.iter().position(|r| r.metadata.name == new_name) else {
            return Ok(plan);
        };
        // Scale the new ReplicaSet up within maxSurge.
        let cur_new = replicas(&rss[ni]);
        let target = if cur_new > want {
            want
        } else {
            // Count pods a ReplicaSet still has beyond its (lowered) spec too: a scale-down
            // takes effect when its controller deletes the pods, and until then they run. So
            // the pods alive never exceed replicas + maxSurge, as the docs promise.
            let total: i32 = rss.iter().map(|r| replicas(r).max(status_of(r).0)).sum();
            let room = (want + surge - total).max(0);
            cur_new + room.min(want - cur_new)
        };
        let mut rs = rss[ni].clone();
        if self.scale_rs(d, &mut rs, target).await? {
            rss[ni] = rs;
            return Ok(Plan {
                new_rs: Some(rss[ni].clone()),
                ..plan
            });
        }
        rss[ni] = rs;
        // Scale old ReplicaSets down within maxUnavailable.
        let old_total: i32 = rss
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != ni)
            .map(|(_, r)| replicas(r))
            .sum();
        if old_total > 0 {
            let all: i32 = rss.iter().map(replicas).sum();
            let min_available = want - unavailable;
            let new_unavailable = replicas(&rss[ni]) - status_of(&rss[ni]).2;
            let mut budget = all - min_available - new_unavailable;
            if budget > 0 {
                let mut olds: Vec<usize> = (0..rss.len())
                    .filter(|i| *i != ni && replicas(&rss[*i]) > 0)
                    .collect();
                olds.sort_by_key(|i| util::created(&rss[*i].metadata));
                // First drop old replicas that are not available anyway.
                for &i in &olds {
                    if budget <= 0 {
                        break;
                    }
                    let unhealthy = replicas(&rss[i]) - status_of(&rss[i]).2;
                    let cut = unhealthy.min(budget).max(0);
                    if cut > 0 {
                        let mut rs = rss[i].clone();
                        self.scale_rs(d, &mut rs, replicas(&rss[i]) - cut).await?;
                        rss[i] = rs;
                        budget -= cut;
                    }
                }
                // Then available ones, while enough stay available.
                let available: i32 = rss.iter().map(|r| status_of(r).2).sum();
                let mut left = (available - min_available).min(budget);
                for &i in &olds {
                    if left <= 0 {
                        break;
                    }
                    let cut = replicas(&rss[i]).min(left);
                    if cut > 0 {
                        let mut rs = rss[i].clone();
                        self.scale_rs(d, &mut rs, replicas(&rss[i]) - cut).await?;
                        rss[i] = rs;
                        left -= cut;
                    }
                }
            }
        }
        let new_rs = Some(rss[ni].clone());
        Ok(Plan { new_rs, ..plan })
    }

    async fn recreate(&self, d: &Deployment, rss: &mut Vec<ReplicaSet>) -> Result<Plan> {
        let plan = self.find_new(d, rss, false).await?;
        let new_name = plan.new_rs.as_ref().and_then(|r| r.metadata.name.clone());
        let mut scaled_down = false;
        for rs in rss.iter_mut() {
            if rs.metadata.name != new_name && replicas(rs) > 0 {
                scaled_down |= self.scale_rs(d, rs, 0).await?;
            }
        }
        if scaled_down {
            return Ok(plan);
        }
        // Wait until every old pod is gone.
        let old_uids: Vec<String> = rss
            .iter()
            .filter(|r| r.metadata.name != new_name)
            .filter_map(|r| r.metadata.uid.clone())
            .collect();
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let old_running = self.pods.list_ns(&ns).iter().any(|p| {
            !util::is_terminal(p)
                && util::controller_ref(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid))
        });
        if old_running {
            return Ok(plan);
        }
        let plan = if plan.new_rs.is_none() {
            self.find_new(d, rss, true).await?
        } else {
            plan
        };
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let new_name = plan.new_rs.as_ref().and_then(|r| r.metadata.name.clone());
        if let Some(i) = rss.iter().position(|r| r.metadata.name == new_name) {
            let mut rs = rss[i].clone();
            self.scale_rs(d, &mut rs, want).await?;
            rss[i] = rs;
            return Ok(Plan {
                new_rs: Some(rss[i].clone()),
                ..plan
            });
        }
        Ok(plan)
    }

    /// A replicas change (or a paused Deployment): the new ReplicaSet alone takes it, or,
    /// mid-rollout, every active ReplicaSet in proportion to its size.
    async fn scale(
        &self,
        d: &Deployment,
        rss: &mut [ReplicaSet],
        new_rs: Option<&ReplicaSet>,
    ) -> Result<()> {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let (surge, _) = fenceposts(d);
        let active: Vec<usize> = (0..rss.len()).filter(|i| replicas(&rss[*i]) > 0).collect();
        let new_idx =
            new_rs.and_then(|n| rss.iter().position(|r| r.metadata.name == n.metadata.name));
        if active.len() <= 1 {
            let target = active.first().copied().or(new_idx);
            if let Some(i) = target {
                let mut rs = rss[i].clone();
                self.scale_rs(d, &mut rs, want).await?;
                rss[i] = rs;
            }
            return Ok(());
        }
        // Upstream's proportional scaling (deployment/sync.go `scale`, util `GetProportion`):
        // each ReplicaSet grows or shrinks by its share of the change, measured against the
        // Deployment size it was last scaled for (its max-replicas annotation), within what
        // is left to hand out; the largest takes the rounding leftover.
        let allowed = if want > 0 { want + surge } else { 0 };
        let current: i32 = active.iter().map(|i| replicas(&rss[*i])).sum();
        let to_add = allowed - current;
        let mut order = active.clone();
        // Larger first; among equals newer first when growing, older first when shrinking.
        order.sort_by(|a, b| {
            let (ra, rb) = (&rss[*a], &rss[*b]);
            replicas(rb).cmp(&replicas(ra)).then_with(|| {
                let by_age = util::created(&ra.metadata).cmp(&util::created(&rb.metadata));
                if to_add > 0 {
                    by_age.reverse()
                } else {
                    by_age
                }
            })
        });
        let status_replicas = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let mut targets: Vec<(usize, i32)> = Vec::new();
        let mut added = 0;
        for &i in &order {
            let r = replicas(&rss[i]);
            let share = if to_add == 0 || r == 0 || to_add == added {
                0
            } else {
                let fraction = if want == 0 {
                    -r
                } else {
                    let annotated = rss[i]
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(MAX_REPLICAS))
                        .and_then(|v| v.parse::<i32>().ok())
                        .unwrap_or(status_replicas);
                    if annotated > 0 {
                        let size = f64::from(r) * f64::from(want + surge) / f64::from(annotated);
                        size.round() as i32 - r
                    } else {
                        0
                    }
                };
                if to_add > 0 {
                    fraction.min(to_add - added)
                } else {
                    fraction.max(to_add - added)
                }
            };
            targets.push((i, r + share));
            added += share;
        }
        if let Some(first) = targets.first_mut() {
            first.1 += to_add - added;
        }
        for (i, t) in targets {
            let mut rs = rss[i].clone();
            self.scale_rs(d, &mut rs, t.max(0)).await?;
            rss[i] = rs;
        }
        Ok(())
    }

    /// Deletes the oldest empty ReplicaSets beyond revisionHistoryLimit.
    async fn cleanup(&self, d: &Deployment, rss: &[ReplicaSet], new_rs: Option<&ReplicaSet>) {
        let limit = d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let new_name = new_rs.and_then(|r| r.metadata.name.clone());
        let mut old: Vec<&ReplicaSet> = rss
            .iter()
            .filter(|r| r.metadata.name != new_name && r.metadata.deletion_timestamp.is_none())
            .filter(|r| replicas(r) == 0 && status_of(r).0 == 0)
            .collect();
        if old.len() <= limit {
            return;
        }
        old.sort_by_key(|r| revision(&r.metadata));
        let n = old.len() - limit;
        for rs in old.into_iter().take(n) {
            let ns = rs.metadata.namespace.clone().unwrap_or_default();
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: rs.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            let _ = self
                .api(&ns)
                .delete(rs.metadata.name.as_deref().unwrap_or_default(), &dp)
                .await;
        }
    }

    async fn sync_status(&self, d: &Deployment, rss: &[ReplicaSet], plan: &Plan) -> Result<Action> {
        let spec = d.spec.clone().unwrap_or_default();
        let want = spec.replicas.unwrap_or(1);
        let (_, max_unavailable) = fenceposts(d);
        let new_name = plan.new_rs.as_ref().and_then(|r| r.metadata.name.clone());
        let (mut total, mut ready, mut available) = (0, 0, 0);
        for r in rss {
            let (t, re, a) = status_of(r);
            total += t;
            ready += re;
            available += a;
        }
        let updated = rss
            .iter()
            .find(|r| r.metadata.name == new_name)
            .map(|r| status_of(r).0)
            .unwrap_or(0);
        let old_status = d.status.clone().unwrap_or_default();
        let mut conds: Vec<DeploymentCondition> = old_status.conditions.clone().unwrap_or_default();
        let t = Time(now());
        let set = |conds: &mut Vec<DeploymentCondition>,
                   type_: &str,
                   status: &str,
                   reason: &str,
                   msg: String| {
            let existing = conds.iter().position(|c| c.type_ == type_);
            let transition = match existing {
                Some(i) if conds[i].status == status => conds[i].last_transition_time.clone(),
                _ => Some(t.clone()),
            };
            if let Some(i) = existing {
                if conds[i].status == status
                    && conds[i].reason.as_deref() == Some(reason)
                    && conds[i].message.as_deref() == Some(msg.as_str())
                {
                    return;
                }
            }
            let c = DeploymentCondition {
                type_: type_.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(msg),
                last_update_time: Some(t.clone()),
                last_transition_time: transition,
            };
            match existing {
                Some(i) => conds[i] = c,
                None => conds.push(c),
            }
        };
        if available >= want - max_unavailable {
            set(
                &mut conds,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            );
        } else {
            set(
                &mut conds,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            );
        }
        let rs_name = new_name.clone().unwrap_or_default();
        let deadline = spec.progress_deadline_seconds;
        let paused = spec.paused.unwrap_or(false);
        let prog = conds.iter().find(|c| c.type_ == "Progressing").cloned();
        let prog_reason = prog
            .as_ref()
            .and_then(|c| c.reason.clone())
            .unwrap_or_default();
        let complete = updated == want && available == want && total == want && new_name.is_some();
        let mut requeue = None;
        if deadline.is_some() {
            if paused {
                set(
                    &mut conds,
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused".into(),
                );
            } else if prog_reason == "DeploymentPaused" {
                set(
                    &mut conds,
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed".into(),
                );
            } else if complete {
                set(
                    &mut conds,
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                );
            } else if plan.created {
                set(
                    &mut conds,
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    format!("Created new replica set \"{rs_name}\""),
                );
            } else {
                let old_rs_replicas =
                    old_status.replicas.unwrap_or(0) - old_status.updated_replicas.unwrap_or(0);
                let progressed = updated > old_status.updated_replicas.unwrap_or(0)
                    || (total - updated) < old_rs_replicas
                    || ready > old_status.ready_replicas.unwrap_or(0)
                    || available > old_status.available_replicas.unwrap_or(0);
                if progressed
                    || prog.is_none()
                    || prog_reason == "NewReplicaSetAvailable"
                    || prog_reason == "DeploymentResumed"
                {
                    // Progress resets the deadline.
                    let c = DeploymentCondition {
                        type_: "Progressing".into(),
                        status: "True".into(),
                        reason: Some("ReplicaSetUpdated".into()),
                        message: Some(format!("ReplicaSet \"{rs_name}\" is progressing.")),
                        last_update_time: Some(t.clone()),
                        last_transition_time: prog
                            .as_ref()
                            .filter(|c| c.status == "True")
                            .and_then(|c| c.last_transition_time.clone())
                            .or(Some(t.clone())),
                    };
                    conds.retain(|c| c.type_ != "Progressing");
                    conds.push(c);
                    requeue = deadline.map(|s| Duration::from_secs(s as u64 + 1));
                } else if prog_reason != "ProgressDeadlineExceeded" {
                    let since = prog
                        .as_ref()
                        .and_then(|c| c.last_update_time.as_ref())
                        .map(|t| t.0.as_second())
                        .unwrap_or(0);
                    let left = since + i64::from(deadline.unwrap_or(600)) - now().as_second();
                    if left < 0 {
                        set(
                            &mut conds,
                            "Progressing",
                            "False",
                            "ProgressDeadlineExceeded",
                            format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                        );
                        self.ctx.recorder(COMPONENT).event(
                            d,
                            kite_runtime::events::WARNING,
                            "ProgressDeadlineExceeded",
                            format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                        );
                    } else {
                        requeue = Some(Duration::from_secs(left as u64 + 1));
                    }
                }
            }
        }
        // Progressing first, as upstream lists them after a rollout.
        conds.sort_by_key(|c| if c.type_ == "Available" { 0 } else { 1 });
        let fresh = json!({
            "observedGeneration": d.metadata.generation.unwrap_or(0),
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": (want - available).max(0),
            "conditions": conds,
        });
        let old = serde_json::to_value(&old_status).unwrap_or_default();
        let changed = [
            "observedGeneration",
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "unavailableReplicas",
            "conditions",
        ]
        .iter()
        .any(|k| {
            let o = old.get(*k).cloned().unwrap_or(json!(null));
            let n = fresh[*k].clone();
            o != n && !(o.is_null() && n == json!(0))
        });
        // The Deployment's revision annotation follows its new ReplicaSet.
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let name = d.metadata.name.clone().unwrap_or_default();
        let dapi: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &ns);
        let mut rv = d.metadata.resource_version.clone();
        if let Some(n) = &plan.new_rs {
            let rev = revision(&n.metadata).to_string();
            let have = d
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION));
            if have != Some(&rev) {
                let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
                let stored = dapi
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                if stored.status != d.status {
                    // The status moved on since our cache: compute it again from the news.
                    return Ok(Action::AwaitChange);
                }
                rv = stored.metadata.resource_version;
            }
        }
        if changed {
            // Conditioned on the version this status was computed from, as upstream's
            // UpdateStatus: a stale cache must not restamp the Progressing deadline.
            dapi.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"resourceVersion": rv}, "status": fresh})),
            )
            .await?;
        }
        // ReplicaSets with pods waiting out minReadySeconds report via their own status.
        Ok(match requeue {
            Some(d) if !complete => Action::Requeue(d),
            _ => Action::AwaitChange,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_as_upstream() {
        let p = IntOrString::String("25%".into());
        assert_eq!(scaled(Some(&p), 10, true, "25%"), 3);
        assert_eq!(scaled(Some(&p), 10, false, "25%"), 2);
        assert_eq!(scaled(Some(&IntOrString::Int(2)), 10, false, "25%"), 2);
        assert_eq!(scaled(None, 4, false, "25%"), 1);
    }

    #[test]
    fn templates_compare_without_zero_values() {
        let a: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web", "pod-template-hash": "x"}, "generation": 0},
            "spec": {"containers": [{"name": "c", "image": "i", "stdin": false}], "hostIPC": false}
        }))
        .unwrap();
        let b: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        }))
        .unwrap();
        assert_eq!(without_hash(&a), without_hash(&b));
        let c: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "j"}]}
        }))
        .unwrap();
        assert_ne!(without_hash(&a), without_hash(&c));
    }

    #[test]
    fn hash_is_stable_and_safe() {
        let t = PodTemplateSpec::default();
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert_ne!(h, template_hash(&t, Some(1)));
        assert!(h
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
    }
}
