//! The container verbs the pod worker uses, behind one trait: containerd in kite (through
//! `containers`), an in-memory fake in tests (`fake`), so the pod worker's decisions are
//! tested without a runtime. Images, exec and logs stay on containerd's own handle.

use crate::containerd::Containerd;
use crate::containers::{self, Info, New};
use anyhow::Result;
use futures::future::BoxFuture;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

#[cfg(test)]
pub(crate) mod fake;

/// What runs a pod's containers.
pub trait Runtime: Send + Sync {
    /// Every container of the pod with `uid`.
    fn list<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Vec<Info>>>;
    /// The containers with these ids that still exist, oldest attempt first.
    fn get<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Info>>>;
    /// The ids of every container kite made, by pod uid (containerd's records only).
    fn ids_by_pod(&self) -> BoxFuture<'_, Result<HashMap<String, BTreeSet<String>>>>;
    /// The pod uids of every container kite made.
    fn pod_uids(&self) -> BoxFuture<'_, Result<HashSet<String>>> {
        Box::pin(async move { Ok(self.ids_by_pod().await?.into_keys().collect()) })
    }
    /// Creates the container and starts it.
    fn create_and_start<'a>(&'a self, n: New<'a>) -> BoxFuture<'a, Result<()>>;
    /// Whether its process runs.
    fn is_running<'a>(&'a self, id: &'a str) -> BoxFuture<'a, bool>;
    /// `signal`, up to `grace` for it to exit, then SIGKILL.
    fn stop<'a>(&'a self, id: &'a str, signal: u32, grace: Duration) -> BoxFuture<'a, Result<()>>;
    /// Removes it and what it holds; what is already gone is fine.
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Calls `done` (in the background) once its process has exited.
    fn on_exit(&self, id: &str, done: Box<dyn FnOnce() + Send + 'static>);
}

/// containerd, with the ids of each pod's containers remembered: containerd answers a
/// filtered List by reading every container record it has (spec included), so listing a
/// pod's containers costs O(pods on the node), and a burst of new pods O(pods²). The
/// first list (or orphan sweep) reads the ids of every container kite made, once; from
/// then on the index is whole: every container is made and removed through here, so a
/// pod it does not name has none (a new pod's first sync asks containerd nothing), and
/// the rest are looked up by id. One removed behind kite's back is simply not found, and
/// dropped from the index then.
pub struct Indexed<R> {
    inner: R,
    index: std::sync::Mutex<Index>,
    /// Held while the index is first read, so pods syncing at once after a restart wait
    /// for one listing instead of each making its own.
    loading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Index {
    /// Pod uid to its containers' ids.
    by_pod: HashMap<String, BTreeSet<String>>,
    /// Whether every container containerd had at some listing is in `by_pod` (those made
    /// since are added as they are made).
    whole: bool,
    /// Ids whose creation is under way: not found yet, but not gone.
    creating: HashSet<String>,
}

impl Index {
    /// Adds what a listing found. Only adds: an id removed since the listing comes back,
    /// is not found by the next lookup, and is dropped then.
    fn merge(&mut self, listed: HashMap<String, BTreeSet<String>>) {
        for (uid, ids) in listed {
            self.by_pod.entry(uid).or_default().extend(ids);
        }
        self.whole = true;
    }
}

impl<R: Runtime> Indexed<R> {
    pub fn new(inner: R) -> Self {
        Indexed {
            inner,
            index: Default::default(),
            loading: Default::default(),
        }
    }

    /// Reads every container's id once, unless the index is already whole.
    async fn load(&self) -> Result<()> {
        if self.index.lock().unwrap().whole {
            return Ok(());
        }
        let _one = self.loading.lock().await;
        if !self.index.lock().unwrap().whole {
            let listed = self.inner.ids_by_pod().await?;
            self.index.lock().unwrap().merge(listed);
        }
        Ok(())
    }
}

impl<R: Runtime> Runtime for Indexed<R> {
    fn list<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Vec<Info>>> {
        Box::pin(async move {
            self.load().await?;
            let (ids, creating): (Vec<String>, HashSet<String>) = {
                let index = self.index.lock().unwrap();
                let Some(ids) = index.by_pod.get(uid) else {
                    return Ok(Vec::new());
                };
                let creating = ids
                    .iter()
                    .filter(|i| index.creating.contains(*i))
                    .cloned()
                    .collect();
                (ids.iter().cloned().collect(), creating)
            };
            let found = self.inner.get(&ids).await?;
            if found.len() < ids.len() {
                // Gone behind kite's back (or listed before kite removed it): forgotten,
                // unless it was still being made when this lookup began.
                let mut index = self.index.lock().unwrap();
                if let Some(known) = index.by_pod.get_mut(uid) {
                    for id in &ids {
                        if !creating.contains(id) && !found.iter().any(|i| &i.id == id) {
                            known.remove(id);
                        }
                    }
                    if known.is_empty() {
                        index.by_pod.remove(uid);
                    }
                }
            }
            Ok(found)
        })
    }
    fn get<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Info>>> {
        self.inner.get(ids)
    }
    fn ids_by_pod(&self) -> BoxFuture<'_, Result<HashMap<String, BTreeSet<String>>>> {
        self.inner.ids_by_pod()
    }
    fn pod_uids(&self) -> BoxFuture<'_, Result<HashSet<String>>> {
        Box::pin(async move {
            // The orphan sweep's listing also fills the index (and makes it whole).
            let listed = self.inner.ids_by_pod().await?;
            let uids = listed.keys().cloned().collect();
            self.index.lock().unwrap().merge(listed);
            Ok(uids)
        })
    }
    fn create_and_start<'a>(&'a self, n: New<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // Known before it is made: a creation that fails half-way leaves a container
            // the next list must show.
            let id = n.id.to_string();
            if let Some(uid) = n.labels.get(containers::L_POD_UID) {
                let mut index = self.index.lock().unwrap();
                index
                    .by_pod
                    .entry(uid.clone())
                    .or_default()
                    .insert(id.clone());
                index.creating.insert(id.clone());
            }
            let r = self.inner.create_and_start(n).await;
            self.index.lock().unwrap().creating.remove(&id);
            r
        })
    }
    fn is_running<'a>(&'a self, id: &'a str) -> BoxFuture<'a, bool> {
        self.inner.is_running(id)
    }
    fn stop<'a>(&'a self, id: &'a str, signal: u32, grace: Duration) -> BoxFuture<'a, Result<()>> {
        self.inner.stop(id, signal, grace)
    }
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.inner.remove(id).await?;
            let mut index = self.index.lock().unwrap();
            for ids in index.by_pod.values_mut() {
                ids.remove(id);
            }
            index.by_pod.retain(|_, ids| !ids.is_empty());
            Ok(())
        })
    }
    fn on_exit(&self, id: &str, done: Box<dyn FnOnce() + Send + 'static>) {
        self.inner.on_exit(id, done)
    }
}

impl Runtime for Containerd {
    fn list<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Vec<Info>>> {
        Box::pin(containers::list(self, uid))
    }
    fn get<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Info>>> {
        Box::pin(containers::get_each(self, ids))
    }
    fn ids_by_pod(&self) -> BoxFuture<'_, Result<HashMap<String, BTreeSet<String>>>> {
        Box::pin(containers::ids_by_pod(self))
    }
    fn create_and_start<'a>(&'a self, n: New<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(containers::create_and_start(self, n))
    }
    fn is_running<'a>(&'a self, id: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(containers::is_running(self, id))
    }
    fn stop<'a>(&'a self, id: &'a str, signal: u32, grace: Duration) -> BoxFuture<'a, Result<()>> {
        Box::pin(containers::stop(self, id, signal, grace))
    }
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(containers::remove(self, id))
    }
    fn on_exit(&self, id: &str, done: Box<dyn FnOnce() + Send + 'static>) {
        containers::on_exit(self, id, done)
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeRuntime;
    use super::{Indexed, Runtime};
    use crate::containers::{self, New};

    fn image() -> crate::images::Resolved {
        crate::images::Resolved {
            name: "kite.test/shell:1".into(),
            id: String::new(),
            config: Default::default(),
            top_snapshot: String::new(),
            target: String::new(),
        }
    }

    async fn make(rt: &impl Runtime, uid: &str, name: &str, attempt: u32) {
        let img = image();
        let labels = [
            (containers::L_POD_UID, uid.to_string()),
            (containers::L_NAME, name.to_string()),
            (containers::L_ATTEMPT, attempt.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let id = format!("{uid}-{name}-{attempt}");
        rt.create_and_start(New {
            id: &id,
            image: &img,
            spec: Vec::new(),
            labels,
            stdout: std::path::Path::new(""),
            stderr: std::path::Path::new(""),
            stdin: None,
            terminal: false,
        })
        .await
        .unwrap();
    }

    fn ids(v: Vec<containers::Info>) -> Vec<String> {
        v.into_iter().map(|i| i.id).collect()
    }

    #[tokio::test]
    async fn containers_are_listed_in_full_once_then_by_id() {
        let inner = FakeRuntime::default();
        // Another pod's container, and one of this pod's made before (a kite restart).
        inner.start("other", "c", 0);
        inner.start("p", "old", 0);
        let rt = Indexed::new(inner);
        assert_eq!(ids(rt.list("p").await.unwrap()), ["p-old-0"]);
        assert_eq!(rt.inner.lists(), 1);
        make(&rt, "p", "c", 0).await;
        make(&rt, "p", "c", 1).await;
        let now = ids(rt.list("p").await.unwrap());
        assert_eq!(now, ["p-old-0", "p-c-0", "p-c-1"]);
        assert_eq!(ids(rt.list("other").await.unwrap()), ["other-c-0"]);
        // A pod the index does not name has no container: containerd is not asked.
        assert!(rt.list("new").await.unwrap().is_empty());
        make(&rt, "new", "c", 0).await;
        assert_eq!(ids(rt.list("new").await.unwrap()), ["new-c-0"]);
        assert_eq!(rt.inner.lists(), 1, "no second full list");
        // Removed through kite, or behind its back: gone either way.
        rt.remove("p-c-0").await.unwrap();
        rt.inner.forget("p-old-0");
        assert_eq!(ids(rt.list("p").await.unwrap()), ["p-c-1"]);
        rt.inner.forget("p-c-1");
        assert!(rt.list("p").await.unwrap().is_empty());
        assert!(!rt.index.lock().unwrap().by_pod.contains_key("p"));
        // The orphan sweep's listing names every pod with containers, and changes
        // nothing the index knows.
        let uids = rt.pod_uids().await.unwrap();
        assert_eq!(uids, ["other".to_string(), "new".to_string()].into());
        assert_eq!(ids(rt.list("new").await.unwrap()), ["new-c-0"]);
        assert_eq!(rt.inner.lists(), 2);
    }

    #[tokio::test]
    async fn the_orphan_sweep_makes_the_index_whole() {
        let inner = FakeRuntime::default();
        inner.start("old", "c", 0);
        let rt = Indexed::new(inner);
        assert_eq!(rt.pod_uids().await.unwrap(), ["old".to_string()].into());
        assert_eq!(ids(rt.list("old").await.unwrap()), ["old-c-0"]);
        assert!(rt.list("q").await.unwrap().is_empty());
        assert_eq!(rt.inner.lists(), 1);
    }

    #[tokio::test]
    async fn a_container_being_made_is_not_dropped_by_a_lookup() {
        let rt = Indexed::new(FakeRuntime::default());
        assert!(rt.list("p").await.unwrap().is_empty());
        // As create_and_start leaves the index while containerd is still at it.
        {
            let mut index = rt.index.lock().unwrap();
            index
                .by_pod
                .entry("p".into())
                .or_default()
                .insert("p-c-0".into());
            index.creating.insert("p-c-0".into());
        }
        assert!(rt.list("p").await.unwrap().is_empty());
        assert!(rt.index.lock().unwrap().by_pod["p"].contains("p-c-0"));
        rt.index.lock().unwrap().creating.clear();
        rt.inner.start("p", "c", 0);
        assert_eq!(ids(rt.list("p").await.unwrap()), ["p-c-0"]);
    }
}
