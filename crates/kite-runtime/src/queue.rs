//! A work queue with client-go's guarantees: a key queued many times is processed once,
//! a key is never processed by two workers at once (a change arriving meanwhile queues
//! it again after), and retries come back after a per-key exponential back-off. Workers
//! survive a panicking reconcile (the key is retried, as after an error), and a key that
//! keeps failing is reported at warning level, at most once a minute.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

struct Inner<T> {
    queue: VecDeque<T>,
    dirty: HashSet<T>,
    processing: HashSet<T>,
    failures: HashMap<T, u32>,
    /// When a key's repeated failures were last reported at warning level.
    warned: HashMap<T, std::time::Instant>,
}

/// A cloneable handle to one queue.
pub struct WorkQueue<T> {
    inner: Arc<Mutex<Inner<T>>>,
    notify: Arc<Notify>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        WorkQueue {
            inner: self.inner.clone(),
            notify: self.notify.clone(),
        }
    }
}

impl<T: Hash + Eq + Clone + Send + 'static> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Hash + Eq + Clone + Send + 'static> WorkQueue<T> {
    pub fn new() -> Self {
        WorkQueue {
            inner: Arc::new(Mutex::new(Inner {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
                warned: HashMap::new(),
            })),
            notify: Arc::new(Notify::new()),
        }
    }

    /// Queues `key` unless it is already waiting.
    pub fn add(&self, key: T) {
        let mut g = self.inner.lock().unwrap();
        if !g.dirty.insert(key.clone()) {
            return;
        }
        if g.processing.contains(&key) {
            // `done` will queue it once the current pass ends.
            return;
        }
        g.queue.push_back(key);
        drop(g);
        self.notify.notify_one();
    }

    /// Queues `key` after `delay`.
    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// Queues `key` after its next back-off step (5 ms doubling to 30 s); returns how many
    /// times in a row it has failed.
    pub fn add_rate_limited(&self, key: T) -> u32 {
        let n = {
            let mut g = self.inner.lock().unwrap();
            let n = g.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let ms = 5u64.saturating_mul(1 << (n - 1).min(13)).min(30_000);
        self.add_after(key, Duration::from_millis(ms));
        n
    }

    /// Whether a failure of `key` should be reported at warning level now: after
    /// [`WARN_AFTER`] failures in a row, at most once a minute per key.
    fn should_warn(&self, key: &T, failures: u32) -> bool {
        if failures < WARN_AFTER {
            return false;
        }
        let mut g = self.inner.lock().unwrap();
        let now = std::time::Instant::now();
        match g.warned.get(key) {
            Some(t) if now.duration_since(*t) < Duration::from_secs(60) => false,
            _ => {
                g.warned.insert(key.clone(), now);
                true
            }
        }
    }

    /// Clears the back-off of `key` after a success.
    pub fn forget(&self, key: &T) {
        let mut g = self.inner.lock().unwrap();
        g.failures.remove(key);
        g.warned.remove(key);
    }

    /// Waits for the next key; the caller must call [`WorkQueue::done`] with it.
    pub async fn next(&self) -> T {
        loop {
            let notified = self.notify.notified();
            {
                let mut g = self.inner.lock().unwrap();
                if let Some(k) = g.queue.pop_front() {
                    g.dirty.remove(&k);
                    g.processing.insert(k.clone());
                    if !g.queue.is_empty() {
                        self.notify.notify_one();
                    }
                    return k;
                }
            }
            notified.await;
        }
    }

    /// Ends processing of `key`; if it changed meanwhile it is queued again.
    pub fn done(&self, key: &T) {
        let mut g = self.inner.lock().unwrap();
        g.processing.remove(key);
        if g.dirty.contains(key) {
            g.queue.push_back(key.clone());
            drop(g);
            self.notify.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Failures in a row after which a key's failures are logged as warnings.
pub const WARN_AFTER: u32 = 5;

/// Runs `workers` tasks that take keys from `queue` and call `reconcile`; an error is
/// logged and the key retried with back-off (the controller's error policy).
pub fn run_workers<T, F, Fut>(name: &'static str, queue: WorkQueue<T>, workers: usize, reconcile: F)
where
    T: Hash + Eq + Clone + Send + Sync + std::fmt::Debug + 'static,
    F: Fn(T) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<crate::Action>> + Send + 'static,
{
    run_workers_after(async {}, name, queue, workers, reconcile)
}

/// As [`run_workers`], but no key is taken before `ready` completes (the caches the
/// reconciler reads have synced); keys queued meanwhile wait, deduplicated.
pub fn run_workers_after<T, F, Fut, R>(
    ready: impl std::future::Future<Output = R> + Send + 'static,
    name: &'static str,
    queue: WorkQueue<T>,
    workers: usize,
    reconcile: F,
) where
    T: Hash + Eq + Clone + Send + Sync + std::fmt::Debug + 'static,
    F: Fn(T) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<crate::Action>> + Send + 'static,
    R: Clone + Send + Sync + 'static,
{
    let ready = futures::future::FutureExt::shared(Box::pin(ready));
    for _ in 0..workers {
        let q = queue.clone();
        let f = reconcile.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            ready.await;
            loop {
                let key = q.next().await;
                // A panic is a failure of this key, not of the worker.
                let run = std::panic::AssertUnwindSafe(f(key.clone()));
                let outcome = match futures::FutureExt::catch_unwind(run).await {
                    Ok(r) => r,
                    Err(p) => {
                        let what = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic".into());
                        tracing::error!(controller = name, ?key, panic = %what, "reconcile panicked; retrying");
                        Err(anyhow::anyhow!("panicked: {what}"))
                    }
                };
                match outcome {
                    Ok(action) => {
                        q.forget(&key);
                        if let crate::Action::Requeue(d) = action {
                            q.add_after(key.clone(), d);
                        }
                    }
                    Err(e) => {
                        let n = q.add_rate_limited(key.clone());
                        let e = format!("{e:#}");
                        if q.should_warn(&key, n) {
                            tracing::warn!(controller = name, ?key, failures = n, error = %e, "reconcile keeps failing; retrying");
                        } else {
                            tracing::debug!(controller = name, ?key, error = %e, "reconcile failed; retrying");
                        }
                    }
                }
                q.done(&key);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dedups_and_excludes() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let k = q.next().await;
        assert_eq!(k, "a");
        // Added while processing: not handed out until done.
        q.add("a");
        assert_eq!(q.next().await, "b");
        assert!(q.is_empty());
        q.done(&"a");
        assert_eq!(q.next().await, "a");
    }

    #[tokio::test]
    async fn a_panicking_reconcile_is_retried_and_the_worker_survives() {
        let q = WorkQueue::new();
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let c2 = calls.clone();
        // One worker: if the panic killed it, nothing after would run.
        run_workers("test", q.clone(), 1, move |k: &'static str| {
            let c = c2.clone();
            async move {
                let n = {
                    let mut g = c.lock().unwrap();
                    g.push(k);
                    g.iter().filter(|x| **x == k).count()
                };
                if k == "bad" && n < 3 {
                    panic!("boom {n}");
                }
                Ok(crate::Action::AwaitChange)
            }
        });
        q.add("bad");
        for _ in 0..200 {
            if calls
                .lock()
                .unwrap()
                .iter()
                .filter(|k| **k == "bad")
                .count()
                >= 3
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        q.add("good");
        for _ in 0..200 {
            if calls.lock().unwrap().contains(&"good") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seen = calls.lock().unwrap().clone();
        assert_eq!(seen.iter().filter(|k| **k == "bad").count(), 3, "{seen:?}");
        assert!(seen.contains(&"good"), "the worker survived: {seen:?}");
    }

    #[test]
    fn repeated_failures_warn_at_most_once_a_minute() {
        let q: WorkQueue<&str> = WorkQueue::new();
        assert!(!q.should_warn(&"k", WARN_AFTER - 1));
        assert!(q.should_warn(&"k", WARN_AFTER));
        assert!(!q.should_warn(&"k", WARN_AFTER + 1));
        assert!(q.should_warn(&"other", WARN_AFTER));
        q.forget(&"k");
        assert!(q.should_warn(&"k", WARN_AFTER));
    }

    #[tokio::test]
    async fn workers_wait_for_ready() {
        let q = WorkQueue::new();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let s2 = seen.clone();
        run_workers_after(
            async move {
                let _ = rx.await;
            },
            "test",
            q.clone(),
            2,
            move |k: &'static str| {
                let s = s2.clone();
                async move {
                    s.lock().unwrap().push(k);
                    Ok(crate::Action::AwaitChange)
                }
            },
        );
        q.add("a");
        q.add("a");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            seen.lock().unwrap().is_empty(),
            "a key was taken before ready"
        );
        tx.send(()).unwrap();
        for _ in 0..100 {
            if !seen.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*seen.lock().unwrap(), vec!["a"]);
    }
}
