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

impl Runtime for Containerd {
    fn list<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Vec<Info>>> {
        Box::pin(containers::list(self, uid))
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
