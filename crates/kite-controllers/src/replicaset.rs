//! The ReplicaSet (and ReplicationController) controller: keeps `spec.replicas` pods of
//! the template, adopting matching orphans and releasing pods that no longer match,
//! and reports replicas, fullyLabeledReplicas, readyReplicas and availableReplicas
//! (Ready for minReadySeconds) in status.

use crate::util::{self, Expectations};
use crate::Ctx;
use anyhow::Result;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kite_runtime::events::{NORMAL, WARNING};
use kite_runtime::informer::{key_of, Kind};
use kite_runtime::labels;
use kite_runtime::queue::run_workers_after;
use kite_runtime::{Action, Change, Informer, Key, WorkQueue};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::Api;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Most pods created or deleted in one pass, as upstream's burstReplicas.
const BURST: usize = 500;

/// What the controller needs from a ReplicaSet or a ReplicationController.
pub trait Replicated: Kind + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope> {
    const COMPONENT: &'static str;
    fn replicas(&self) -> i32;
    fn min_ready_seconds(&self) -> i32;
    fn selector(&self) -> LabelSelector;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn observed(&self) -> Option<(i32, i32, i32, i32, i64)>;
}

/// The accessors ReplicaSet and ReplicationController share: their spec and status
/// fields have the same names.
macro_rules! common_accessors {
    () => {
        fn replicas(&self) -> i32 {
            self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
        }
        fn min_ready_seconds(&self) -> i32 {
            self.spec
                .as_ref()
                .and_then(|s| s.min_ready_seconds)
                .unwrap_or(0)
        }
        fn template(&self) -> Option<&PodTemplateSpec> {
            self.spec.as_ref().and_then(|s| s.template.as_ref())
        }
        fn observed(&self) -> Option<(i32, i32, i32, i32, i64)> {
            self.status.as_ref().map(|s| {
                (
                    s.replicas,
                    s.fully_labeled_replicas.unwrap_or(0),
                    s.ready_replicas.unwrap_or(0),
                    s.available_replicas.unwrap_or(0),
                    s.observed_generation.unwrap_or(0),
                )
            })
        }
    };
}

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    common_accessors!();
    fn selector(&self) -> LabelSelector {
        self.spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default()
    }
}

impl Replicated for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    common_accessors!();
    fn selector(&self) -> LabelSelector {
        // An RC without a selector selects its template's labels (defaulted upstream).
        let sel = self
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .or_else(|| {
                self.template()
                    .and_then(|t| t.metadata.as_ref()?.labels.clone())
            });
        LabelSelector {
            match_labels: sel,
            match_expressions: None,
        }
    }
}

pub struct ReplicaController<K: Replicated> {
    ctx: Arc<Ctx>,
    owners: Arc<Informer<K>>,
    pods: Arc<Informer<Pod>>,
    queue: WorkQueue<Key>,
    expectations: Expectations,
}

fn selector_matches(sel: &LabelSelector, p: &Pod) -> bool {
    // An empty selector selects nothing for a controller (validation forbids it anyway).
    !labels::is_empty(sel)
        && labels::matches(
            sel,
            p.metadata.labels.as_ref().unwrap_or(&Default::default()),
        )
}

pub fn start<K: Replicated>(ctx: Arc<Ctx>) {
    let c = Arc::new(ReplicaController::<K> {
        owners: ctx.informers.get::<K>(),
        pods: ctx.informers.get::<Pod>(),
        queue: WorkQueue::new(),
        expectations: Expectations::default(),
        ctx,
    });
    let q = c.queue.clone();
    c.owners
        .add_handler(move |ch: &Change<K>| q.add(key_of(&**ch.object())));
    let c2 = c.clone();
    c.pods.add_handler(move |ch: &Change<Pod>| c2.on_pod(ch));
    let c3 = c.clone();
    run_workers_after(
        futures::future::join(c.owners.synced_future(), c.pods.synced_future()),
        K::COMPONENT,
        c.queue.clone(),
        4,
        move |k| {
            let c = c3.clone();
            async move { c.reconcile(k).await }
        },
    );
}

impl<K: Replicated> ReplicaController<K> {
    fn owner_of(&self, p: &Pod) -> Option<Key> {
        let r = util::controller_ref(&p.metadata)?;
        if r.kind != K::kind(&()) {
            return None;
        }
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let o = self.owners.get(&ns, &r.name)?;
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
        // Orphans (and pods whose labels changed) may be adopted by a matching owner.
        if util::controller_ref(&p.metadata).is_none() && !matches!(ch, Change::Deleted(_)) {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            for o in self.owners.list_ns(&ns) {
                if selector_matches(&o.selector(), p) {
                    self.queue.add(key_of(&*o));
                }
            }
        }
    }

    async fn reconcile(&self, key: Key) -> Result<Action> {
        let skey = util::key_str(&key.0, &key.1);
        let Some(rs) = self.owners.get_key(&key) else {
            self.expectations.forget(&skey);
            return Ok(Action::AwaitChange);
        };
        let uid = rs.meta().uid.clone().unwrap_or_default();
        let sel = rs.selector();
        let pods_api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &key.0);
        // Claim: adopt matching orphans, release owned pods that no longer match.
        let mut owned: Vec<Arc<Pod>> = Vec::new();
        for p in self.pods.list_ns(&key.0) {
            let cref = util::controller_ref(&p.metadata);
            let matches = selector_matches(&sel, &p);
            match cref {
                Some(r) if r.uid == uid => {
                    if matches {
                        owned.push(p);
                    } else if rs.meta().deletion_timestamp.is_none() {
                        let patch = json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": uid}] }});
                        let _ = pods_api
                            .patch(
                                &p.metadata.name.clone().unwrap_or_default(),
                                &PatchParams::default(),
                                &Patch::Strategic(&patch),
                            )
                            .await;
                    }
                }
                None if matches
                    && rs.meta().deletion_timestamp.is_none()
                    && p.metadata.deletion_timestamp.is_none() =>
                {
                    let oref = util::owner_ref(&*rs);
                    let patch = json!({"metadata": {"ownerReferences": [oref] }});
                    match pods_api
                        .patch(
                            &p.metadata.name.clone().unwrap_or_default(),
                            &PatchParams::default(),
                            &Patch::Strategic(&patch),
                        )
                        .await
                    {
                        Ok(adopted) => owned.push(Arc::new(adopted)),
                        Err(e) => tracing::debug!(error = %e, "adopting a pod failed"),
                    }
                }
                _ => {}
            }
        }
        let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| util::is_active(p)).collect();
        let want = rs.replicas().max(0) as usize;
        let mut create_error = None;
        if self.expectations.satisfied(&skey) && rs.meta().deletion_timestamp.is_none() {
            if active.len() < want {
                let n = (want - active.len()).min(BURST);
                self.expectations.expect(&skey, n as i64, []);
                if let Err(e) = self.create_pods(&rs, &skey, n).await {
                    create_error = Some(e);
                }
            } else if active.len() > want {
                let n = (active.len() - want).min(BURST);
                let victims = pick_victims(&active, n);
                let names: Vec<String> = victims
                    .iter()
                    .map(|p| util::key_str(&key.0, p.metadata.name.as_deref().unwrap_or_default()))
                    .collect();
                self.expectations.expect(&skey, 0, names);
                self.delete_pods(&rs, &skey, victims).await;
            }
        }
        // Status.
        let now = jiff::Timestamp::now();
        let min_ready = rs.min_ready_seconds();
        let template_labels = rs
            .template()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let replicas = active.len() as i32;
        let fully = active
            .iter()
            .filter(|p| {
                labels::matches_map(
                    &template_labels,
                    p.metadata.labels.as_ref().unwrap_or(&Default::default()),
                )
            })
            .count() as i32;
        let ready = active.iter().filter(|p| util::is_ready(p)).count() as i32;
        let available = active
            .iter()
            .filter(|p| util::is_available(p, min_ready, now))
            .count() as i32;
        let generation = rs.meta().generation.unwrap_or(0);
        let mut conditions = json!(null);
        if let Some(e) = &create_error {
            conditions = json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                "message": e.to_string(), "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)}]);
        }
        let fresh = (replicas, fully, ready, available, generation);
        if rs.observed() != Some(fresh) || create_error.is_some() {
            let api: Api<K> = Api::namespaced(self.ctx.client.clone(), &key.0);
            let patch = json!({"status": {
                "replicas": replicas, "fullyLabeledReplicas": fully, "readyReplicas": ready,
                "availableReplicas": available, "observedGeneration": generation,
                "conditions": conditions,
            }});
            api.patch_status(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        if let Some(e) = create_error {
            return Err(e);
        }
        // Pods that will become available later need another look then.
        let soonest = active
            .iter()
            .filter_map(|p| util::until_available(p, min_ready, now))
            .min();
        Ok(match soonest {
            Some(s) => Action::Requeue(Duration::from_secs(s as u64 + 1)),
            None => Action::AwaitChange,
        })
    }

    async fn create_pods(&self, rs: &K, skey: &str, n: usize) -> Result<()> {
        let ns = rs.meta().namespace.clone().unwrap_or_default();
        let name = rs.meta().name.clone().unwrap_or_default();
        let tmpl = rs.template().cloned().unwrap_or_default();
        let tm = tmpl.metadata.clone().unwrap_or_default();
        let pod = Pod {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}-")),
                namespace: Some(ns.clone()),
                labels: tm.labels.clone(),
                annotations: tm.annotations.clone(),
                finalizers: tm.finalizers.clone(),
                owner_references: Some(vec![util::owner_ref(rs)]),
                ..Default::default()
            },
            spec: tmpl.spec.clone(),
            status: None,
        };
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        // Slow start: batches of 1, 2, 4, … so a failing template fails fast.
        let mut left = n;
        let mut batch = 1;
        while left > 0 {
            let size = batch.min(left);
            let pp = PostParams::default();
            let results = futures::future::join_all((0..size).map(|_| api.create(&pp, &pod))).await;
            let mut first_err = None;
            for r in results {
                match r {
                    Ok(p) => self.ctx.recorder(K::COMPONENT).event(
                        rs,
                        NORMAL,
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.metadata.name.unwrap_or_default()),
                    ),
                    Err(e) => {
                        self.expectations.created(skey);
                        if first_err.is_none() {
                            first_err = Some(e);
                        }
                    }
                }
            }
            left -= size;
            if let Some(e) = first_err {
                // The pods not attempted are not expected either.
                for _ in 0..left {
                    self.expectations.created(skey);
                }
                let msg = match &e {
                    kube::Error::Api(s) => s.message.clone(),
                    e => e.to_string(),
                };
                self.ctx.recorder(K::COMPONENT).event(
                    rs,
                    WARNING,
                    "FailedCreate",
                    format!("Error creating: {msg}"),
                );
                return Err(anyhow::anyhow!("{msg}"));
            }
            batch *= 2;
        }
        Ok(())
    }

    async fn delete_pods(&self, rs: &K, skey: &str, victims: Vec<&Arc<Pod>>) {
        let ns = rs.meta().namespace.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let futs = victims.into_iter().map(|p| {
            let api = api.clone();
            let name = p.metadata.name.clone().unwrap_or_default();
            let uid = p.metadata.uid.clone();
            async move {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid,
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                (name.clone(), api.delete(&name, &dp).await)
            }
        });
        for (name, r) in futures::future::join_all(futs).await {
            match r {
                Ok(_) => self.ctx.recorder(K::COMPONENT).event(
                    rs,
                    NORMAL,
                    "SuccessfulDelete",
                    format!("Deleted pod: {name}"),
                ),
                Err(e) => {
                    self.expectations.deleted(skey, &util::key_str(&ns, &name));
                    if !util::is_status(&e, 404) {
                        self.ctx.recorder(K::COMPONENT).event(
                            rs,
                            WARNING,
                            "FailedDelete",
                            format!("Error deleting: {e}"),
                        );
                    }
                }
            }
        }
    }
}

/// Upstream's deletion ranking: unscheduled before scheduled, pending before running,
/// not ready before ready, more restarts first, newer before older.
pub fn pick_victims<'a>(pods: &[&'a Arc<Pod>], n: usize) -> Vec<&'a Arc<Pod>> {
    let mut v: Vec<&Arc<Pod>> = pods.to_vec();
    let rank = |p: &Pod| {
        let bound = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Pending") | None => 0,
            Some("Unknown") => 1,
            _ => 2,
        };
        let ready = util::is_ready(p);
        let restarts: i32 = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0);
        let created = util::created(&p.metadata);
        (
            bound,
            phase,
            ready,
            std::cmp::Reverse(restarts),
            std::cmp::Reverse(created),
        )
    };
    v.sort_by_key(|p| rank(p));
    v.truncate(n);
    v
}
