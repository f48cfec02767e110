//! Namespace lifecycle: a Terminating namespace has every namespaced object deleted
//! (objects with finalizers are waited for), its status conditions say what is left, and
//! once it is empty the `kubernetes` finalizer is removed through `namespaces/finalize`,
//! which lets the API server delete it.

use crate::Ctx;
use anyhow::Result;
use k8s_openapi::api::core::v1::Namespace;
use kite_runtime::queue::run_workers_after;
use kite_runtime::{Action, Change, WorkQueue};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{verbs, ApiCapabilities, ApiResource, Discovery, Scope};
use kube::Api;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

type Resources = Vec<(ApiResource, ApiCapabilities)>;

struct Controller {
    ctx: Arc<Ctx>,
    namespaces: Arc<kite_runtime::Informer<Namespace>>,
    discovered: Mutex<Option<(Instant, Arc<Resources>)>>,
}

pub fn start(ctx: Arc<Ctx>) {
    let c = Arc::new(Controller {
        namespaces: ctx.informers.get::<Namespace>(),
        ctx,
        discovered: Mutex::new(None),
    });
    let q: WorkQueue<String> = WorkQueue::new();
    let q2 = q.clone();
    c.namespaces.add_handler(move |ch: &Change<Namespace>| {
        let n = ch.object();
        if n.metadata.deletion_timestamp.is_some() && !matches!(ch, Change::Deleted(_)) {
            q2.add(n.metadata.name.clone().unwrap_or_default());
        }
    });
    run_workers_after(
        c.namespaces.synced_future(),
        "namespace-controller",
        q,
        2,
        move |name: String| {
            let c = c.clone();
            async move { c.reconcile(name).await }
        },
    );
}

/// What a sweep of a namespace left behind.
#[derive(Default)]
struct Leftovers {
    /// Objects left, per `plural[.group]`.
    remaining: BTreeMap<String, usize>,
    /// Objects left, per finalizer they carry.
    finalizers: BTreeMap<String, usize>,
    /// Resources that could not be deleted or listed, with why.
    failures: Vec<String>,
}

impl Controller {
    /// Deletes every object of one resource in namespace `ns` and notes what is left.
    async fn sweep(&self, ns: &str, ar: &ApiResource, caps: &ApiCapabilities, out: &mut Leftovers) {
        let api: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), ns, ar);
        let collection = caps.supports_operation(verbs::DELETE_COLLECTION);
        if collection {
            if let Err(e) = api
                .delete_collection(&DeleteParams::background(), &ListParams::default())
                .await
            {
                out.failures.push(format!("{}: {e}", ar.plural));
                return;
            }
        }
        let left = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                out.failures.push(format!("{}: {e}", ar.plural));
                return;
            }
        };
        for o in &left {
            if o.metadata.deletion_timestamp.is_none() && !collection {
                let n = o.metadata.name.clone().unwrap_or_default();
                let _ = api.delete(&n, &DeleteParams::background()).await;
            }
            for f in o.metadata.finalizers.iter().flatten() {
                *out.finalizers.entry(f.clone()).or_default() += 1;
            }
        }
        if !left.is_empty() {
            let res = if ar.group.is_empty() {
                ar.plural.clone()
            } else {
                format!("{}.{}", ar.plural, ar.group)
            };
            *out.remaining.entry(res).or_default() += left.len();
        }
    }

    /// Namespaced resources that can be listed and deleted, refreshed every 30 s.
    async fn resources(&self) -> Result<Arc<Resources>> {
        let mut g = self.discovered.lock().await;
        if let Some((at, r)) = g.as_ref() {
            if at.elapsed() < Duration::from_secs(30) {
                return Ok(r.clone());
            }
        }
        let d = Discovery::new(self.ctx.client.clone()).run().await?;
        let mut out = Vec::new();
        for group in d.groups() {
            for (ar, caps) in group.recommended_resources() {
                if caps.scope == Scope::Namespaced
                    && caps.supports_operation(verbs::LIST)
                    && caps.supports_operation(verbs::DELETE)
                {
                    out.push((ar, caps));
                }
            }
        }
        let r = Arc::new(out);
        *g = Some((Instant::now(), r.clone()));
        Ok(r)
    }

    async fn reconcile(&self, name: String) -> Result<Action> {
        let Some(ns) = self.namespaces.get("", &name) else {
            return Ok(Action::AwaitChange);
        };
        if ns.metadata.deletion_timestamp.is_none() {
            return Ok(Action::AwaitChange);
        }
        let fins: Vec<String> = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default();
        if !fins.iter().any(|f| f == "kubernetes") {
            return Ok(Action::AwaitChange);
        }
        let resources = self.resources().await?;
        let mut left = Leftovers::default();
        // Pods go first, and the rest waits until they are gone (upstream's
        // OrderedNamespaceDeletion): a pod's volumes and its ServiceAccount's Secret must
        // outlive it.
        let is_pods = |ar: &ApiResource| ar.group.is_empty() && ar.plural == "pods";
        for (ar, caps) in resources.iter().filter(|(ar, _)| is_pods(ar)) {
            self.sweep(&name, ar, caps, &mut left).await;
        }
        if left.remaining.is_empty() && left.failures.is_empty() {
            for (ar, caps) in resources.iter().filter(|(ar, _)| !is_pods(ar)) {
                self.sweep(&name, ar, caps, &mut left).await;
            }
        }
        let Leftovers {
            remaining,
            finalizers,
            failures,
        } = left;
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
        let cond = |t: &str, s: bool, reason: &str, msg: String| json!({"type": t, "status": if s { "True" } else { "False" }, "reason": reason, "message": msg, "lastTransitionTime": now});
        let content = if remaining.is_empty() {
            cond(
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".into(),
            )
        } else {
            let parts: Vec<String> = remaining
                .iter()
                .map(|(r, n)| format!("{r} has {n} resource instances"))
                .collect();
            cond(
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", parts.join(", ")),
            )
        };
        let fin = if finalizers.is_empty() {
            cond(
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
            )
        } else {
            let parts: Vec<String> = finalizers
                .iter()
                .map(|(f, n)| format!("{f} in {n} resource instances"))
                .collect();
            cond(
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    parts.join(", ")
                ),
            )
        };
        let del = if failures.is_empty() {
            cond(
                "NamespaceDeletionContentFailure",
                false,
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization".into(),
            )
        } else {
            cond(
                "NamespaceDeletionContentFailure",
                true,
                "ContentDeletionFailed",
                failures.join("; "),
            )
        };
        let conditions = json!([
            cond(
                "NamespaceDeletionDiscoveryFailure",
                false,
                "ResourcesDiscovered",
                "All resources successfully discovered".into()
            ),
            cond(
                "NamespaceDeletionGroupVersionParsingFailure",
                false,
                "ParsedGroupVersions",
                "All legacy kube types successfully parsed".into()
            ),
            del,
            content,
            fin,
        ]);
        let api: Api<Namespace> = Api::all(self.ctx.client.clone());
        let strip = |v: &serde_json::Value| {
            let mut v = v.clone();
            for c in v.as_array_mut().into_iter().flatten() {
                c.as_object_mut().map(|m| m.remove("lastTransitionTime"));
            }
            v
        };
        let have = serde_json::to_value(ns.status.as_ref().and_then(|s| s.conditions.clone()))
            .unwrap_or_default();
        if strip(&have) != strip(&conditions) {
            let _ = api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": {"conditions": conditions}})),
                )
                .await;
        }
        if !remaining.is_empty() || !failures.is_empty() {
            return Ok(Action::Requeue(Duration::from_millis(1000)));
        }
        let mut fresh = (*ns).clone();
        fresh.spec.get_or_insert_with(Default::default).finalizers =
            Some(fins.into_iter().filter(|f| f != "kubernetes").collect());
        match api
            .replace_subresource("finalize", &name, &PostParams::default(), &fresh)
            .await
        {
            Ok(_) => Ok(Action::AwaitChange),
            Err(e) if crate::util::is_status(&e, 404) => Ok(Action::AwaitChange),
            Err(e) => Err(e.into()),
        }
    }
}
