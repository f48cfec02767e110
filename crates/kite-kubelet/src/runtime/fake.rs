//! An in-memory runtime for unit tests: containers are records whose state the test sets
//! (`exit`), and every start and stop is recorded (as youki's test `Syscall` records).

use super::Runtime;
use crate::containers::{self, Info, New, State};
use anyhow::{bail, Result};
use futures::future::BoxFuture;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// A container as the fake holds it.
struct Record {
    uid: String,
    info: Info,
}

#[derive(Default)]
struct Inner {
    containers: Vec<Record>,
    /// `name#attempt` of each start, in order.
    started: Vec<String>,
    /// `name#attempt` of each stop of a running container, in order.
    stopped: Vec<String>,
    exit_waiters: Vec<(String, Box<dyn FnOnce() + Send>)>,
    /// How many times a full listing (`list` or `ids_by_pod`) ran.
    lists: usize,
}

#[derive(Default)]
pub(crate) struct FakeRuntime {
    inner: Mutex<Inner>,
}

/// A container record as `list` gives it.
pub(crate) fn info(uid: &str, name: &str, attempt: u32, state: State) -> Info {
    Info {
        id: format!("{uid}-{name}-{attempt}"),
        name: name.into(),
        attempt,
        created: Some(jiff::Timestamp::UNIX_EPOCH),
        stop_signal: 15,
        image: String::new(),
        image_id: String::new(),
        user: String::new(),
        resources: None,
        state,
    }
}

impl FakeRuntime {
    /// The fake's clock: a fixed instant, so tests compute times from it.
    pub fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000).expect("in range")
    }

    /// Starts attempt `attempt` of container `name` of pod `uid` (what `create_and_start`
    /// does with kite's labels).
    pub fn start(&self, uid: &str, name: &str, attempt: u32) {
        let mut i = info(uid, name, attempt, State::Running { pid: 1 });
        i.created = Some(self.now());
        let mut inner = self.inner.lock().unwrap();
        inner.started.push(format!("{name}#{attempt}"));
        inner.containers.push(Record {
            uid: uid.into(),
            info: i,
        });
    }

    /// The latest attempt of `name` exits with `code` at `at`.
    pub fn exit(&self, uid: &str, name: &str, code: i32, at: jiff::Timestamp) {
        let id = (self.inner.lock().unwrap().containers.iter())
            .filter(|r| r.uid == uid && r.info.name == name)
            .max_by_key(|r| r.info.attempt)
            .map(|r| r.info.id.clone())
            .expect("the container exists");
        self.exit_id(&id, code, at);
    }

    /// Container `id` exits with `code` at `at`; whoever waits on it hears.
    fn exit_id(&self, id: &str, code: i32, at: jiff::Timestamp) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(r) = inner.containers.iter_mut().find(|r| r.info.id == id) {
            r.info.created = r.info.created.map(|c| c.min(at));
            r.info.state = State::Exited { code, at: Some(at) };
        }
        let (done, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut inner.exit_waiters)
            .into_iter()
            .partition(|(w, _)| w == id);
        inner.exit_waiters = rest;
        drop(inner);
        for (_, f) in done {
            f();
        }
    }

    pub fn started(&self) -> Vec<String> {
        self.inner.lock().unwrap().started.clone()
    }

    pub fn stopped(&self) -> Vec<String> {
        self.inner.lock().unwrap().stopped.clone()
    }

    pub fn lists(&self) -> usize {
        self.inner.lock().unwrap().lists
    }

    /// Container `id` goes, as if removed behind kite's back.
    pub fn forget(&self, id: &str) {
        self.inner
            .lock()
            .unwrap()
            .containers
            .retain(|r| r.info.id != id);
    }
}

impl Runtime for FakeRuntime {
    fn list<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Vec<Info>>> {
        let mut inner = self.inner.lock().unwrap();
        inner.lists += 1;
        let mut out: Vec<Info> = (inner.containers.iter())
            .filter(|r| r.uid == uid)
            .map(|r| r.info.clone())
            .collect();
        out.sort_by_key(|i| i.attempt);
        Box::pin(async move { Ok(out) })
    }

    fn get<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Info>>> {
        let mut out: Vec<Info> = (self.inner.lock().unwrap().containers.iter())
            .filter(|r| ids.contains(&r.info.id))
            .map(|r| r.info.clone())
            .collect();
        out.sort_by_key(|i| i.attempt);
        Box::pin(async move { Ok(out) })
    }

    fn ids_by_pod(&self) -> BoxFuture<'_, Result<HashMap<String, BTreeSet<String>>>> {
        let mut inner = self.inner.lock().unwrap();
        inner.lists += 1;
        let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
        for r in &inner.containers {
            out.entry(r.uid.clone())
                .or_default()
                .insert(r.info.id.clone());
        }
        Box::pin(async move { Ok(out) })
    }

    fn create_and_start<'a>(&'a self, n: New<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let label = |k: &str| n.labels.get(k).cloned().unwrap_or_default();
            let attempt = label(containers::L_ATTEMPT).parse().unwrap_or(0);
            if self
                .inner
                .lock()
                .unwrap()
                .containers
                .iter()
                .any(|r| r.info.id == n.id)
            {
                bail!("container {} already exists", n.id);
            }
            self.start(
                &label(containers::L_POD_UID),
                &label(containers::L_NAME),
                attempt,
            );
            Ok(())
        })
    }

    fn is_running<'a>(&'a self, id: &'a str) -> BoxFuture<'a, bool> {
        let running = (self.inner.lock().unwrap().containers.iter())
            .any(|r| r.info.id == id && matches!(r.info.state, State::Running { .. }));
        Box::pin(async move { running })
    }

    fn stop<'a>(&'a self, id: &'a str, signal: u32, _grace: Duration) -> BoxFuture<'a, Result<()>> {
        let mut inner = self.inner.lock().unwrap();
        let Some(r) = inner.containers.iter_mut().find(|r| r.info.id == id) else {
            return Box::pin(async { Ok(()) });
        };
        if !matches!(r.info.state, State::Running { .. }) {
            return Box::pin(async { Ok(()) });
        }
        let tag = format!("{}#{}", r.info.name, r.info.attempt);
        inner.stopped.push(tag);
        drop(inner);
        self.exit_id(id, 128 + signal as i32, self.now());
        Box::pin(async { Ok(()) })
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        self.inner
            .lock()
            .unwrap()
            .containers
            .retain(|r| r.info.id != id);
        Box::pin(async { Ok(()) })
    }

    fn on_exit(&self, id: &str, done: Box<dyn FnOnce() + Send + 'static>) {
        self.inner
            .lock()
            .unwrap()
            .exit_waiters
            .push((id.to_string(), done));
    }
}
