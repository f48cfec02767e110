//! The container verbs the pod worker uses, behind one trait: containerd in kite (through
//! `containers`), an in-memory fake in tests (`fake`), so the pod worker's decisions are
//! tested without a runtime. Images, exec and logs stay on containerd's own handle.

use crate::containerd::Containerd;
use crate::containers::{self, Info, New};
use anyhow::Result;
use futures::future::BoxFuture;
use std::collections::HashSet;
use std::time::Duration;

#[cfg(test)]
pub(crate) mod fake;

/// What runs a pod's containers.
pub trait Runtime: Send + Sync {
    /// Every container of the pod with `uid`.
    fn list<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Vec<Info>>>;
    /// The containers with these ids that still exist, oldest attempt first.
    fn get<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Info>>>;
    /// The pod uids of every container kite made.
    fn pod_uids(&self) -> BoxFuture<'_, Result<HashSet<String>>>;
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
/// filtered List by reading every container record it has (spec included), so listing
/// each pod's containers on every sync costs O(pods) each, O(pods²) for a node. A pod is
/// listed in full once (its first sync, and after a restart of kite); from then on its
/// containers are looked up by id. Every container of a pod is made and removed through
/// here, so the set stays whole; one removed behind kite's back is simply not found.
pub struct Indexed<R> {
    inner: R,
    /// Pod uid to its containers' ids.
    known: std::sync::Mutex<std::collections::HashMap<String, std::collections::BTreeSet<String>>>,
}

impl<R: Runtime> Indexed<R> {
    pub fn new(inner: R) -> Self {
        Indexed {
            inner,
            known: Default::default(),
        }
    }
}

impl<R: Runtime> Runtime for Indexed<R> {
    fn list<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Vec<Info>>> {
        Box::pin(async move {
            let ids: Option<Vec<String>> = self
                .known
                .lock()
                .unwrap()
                .get(uid)
                .map(|s| s.iter().cloned().collect());
            match ids {
                Some(ids) => self.inner.get(&ids).await,
                None => {
                    let all = self.inner.list(uid).await?;
                    self.known
                        .lock()
                        .unwrap()
                        .entry(uid.to_string())
                        .or_default()
                        .extend(all.iter().map(|i| i.id.clone()));
                    Ok(all)
                }
            }
        })
    }
    fn get<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Info>>> {
        self.inner.get(ids)
    }
    fn pod_uids(&self) -> BoxFuture<'_, Result<HashSet<String>>> {
        Box::pin(async move {
            let uids = self.inner.pod_uids().await?;
            // Pods with no container left (or none yet) are forgotten now and then (the
            // orphan sweep asks every 10 s), with the ids of any removed behind kite's
            // back: forgetting costs only a full list next time.
            self.known
                .lock()
                .unwrap()
                .retain(|uid, ids| !ids.is_empty() && uids.contains(uid));
            Ok(uids)
        })
    }
    fn create_and_start<'a>(&'a self, n: New<'a>) -> BoxFuture<'a, Result<()>> {
        // Known before it is made: a creation that fails half-way leaves a container the
        // next list must show.
        if let Some(uid) = n.labels.get(containers::L_POD_UID) {
            if let Some(ids) = self.known.lock().unwrap().get_mut(uid) {
                ids.insert(n.id.to_string());
            }
        }
        self.inner.create_and_start(n)
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
            let mut known = self.known.lock().unwrap();
            for ids in known.values_mut() {
                ids.remove(id);
            }
            known.retain(|_, ids| !ids.is_empty());
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
    fn pod_uids(&self) -> BoxFuture<'_, Result<HashSet<String>>> {
        Box::pin(containers::pod_uids(self))
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
    async fn a_pod_is_listed_in_full_once_then_by_id() {
        let rt = Indexed::new(FakeRuntime::default());
        // Another pod's container, and one of this pod's made before (a kite restart).
        make(&rt, "other", "c", 0).await;
        make(&rt, "p", "old", 0).await;
        assert_eq!(ids(rt.list("p").await.unwrap()), ["p-old-0"]);
        assert_eq!(rt.inner.lists(), 1);
        make(&rt, "p", "c", 0).await;
        make(&rt, "p", "c", 1).await;
        let now = ids(rt.list("p").await.unwrap());
        assert_eq!(now, ["p-old-0", "p-c-0", "p-c-1"]);
        assert_eq!(rt.inner.lists(), 1, "no second full list");
        // Removed through kite, or behind its back: gone either way.
        rt.remove("p-c-0").await.unwrap();
        rt.inner.forget("p-old-0");
        assert_eq!(ids(rt.list("p").await.unwrap()), ["p-c-1"]);
        assert_eq!(rt.inner.lists(), 1);
        // Its last container removed: the pod is forgotten (here by the orphan sweep, as
        // one id was removed behind kite's back), and listed in full if it comes back.
        rt.remove("p-c-1").await.unwrap();
        assert!(rt.list("p").await.unwrap().is_empty());
        rt.pod_uids().await.unwrap();
        assert!(rt.list("p").await.unwrap().is_empty());
        assert_eq!(rt.inner.lists(), 2);
        // Removed through kite alone, the last removal forgets it at once.
        make(&rt, "r", "c", 0).await;
        assert_eq!(ids(rt.list("r").await.unwrap()), ["r-c-0"]);
        rt.remove("r-c-0").await.unwrap();
        assert!(rt.list("r").await.unwrap().is_empty());
        assert_eq!(rt.inner.lists(), 4);
    }

    #[tokio::test]
    async fn a_pod_listed_before_its_first_container_sees_it() {
        let rt = Indexed::new(FakeRuntime::default());
        assert!(rt.list("p").await.unwrap().is_empty());
        make(&rt, "p", "c", 0).await;
        assert_eq!(ids(rt.list("p").await.unwrap()), ["p-c-0"]);
        assert_eq!(rt.inner.lists(), 1);
        // The orphan sweep forgets pods with nothing known; one that was listed empty
        // and then made a container is listed in full again, and still seen.
        assert!(rt.list("q").await.unwrap().is_empty());
        rt.pod_uids().await.unwrap();
        make(&rt, "q", "c", 0).await;
        assert_eq!(ids(rt.list("q").await.unwrap()), ["q-c-0"]);
        assert_eq!(rt.inner.lists(), 3);
    }
}
