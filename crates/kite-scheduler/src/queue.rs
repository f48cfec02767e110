//! The scheduling queue: pending pods by priority (then arrival), a back-off for pods that
//! did not fit (1 s doubling to 10 s, as upstream), and a set of unschedulable pods that
//! cluster changes move back to the active queue once their back-off has passed. As
//! upstream's queueing hints, a change to pods only moves the parked pods that it could help
//! ([`Retry`]): a pod that no node's labels or taints admit is not retried, and its back-off
//! not lengthened, each time some pod elsewhere comes or goes.

use kite_runtime::Key;
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Which pod changes could let a parked pod fit. Node changes, and the periodic flush,
/// move every parked pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retry {
    /// A pod leaving a node (resources, host ports, anti-affinity, topology spread).
    pub on_pod_removed: bool,
    /// A pod arriving on a node or changing labels there (pod affinity, topology spread).
    pub on_pod_added: bool,
}

impl Retry {
    pub const ANY_CHANGE: Retry = Retry {
        on_pod_removed: true,
        on_pod_added: true,
    };
}

/// A change in the cluster that may let parked pods fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A node was added, or changed in a way that matters to scheduling.
    Node,
    /// A pod left a node.
    PodRemoved,
    /// A pod was bound to a node, or its labels changed there.
    PodAdded,
    /// A pod on a node began terminating: what it holds is freed soon, and a preemptor
    /// waiting for its victims learns that it waits (upstream's "not eligible").
    PodTerminating,
    /// The periodic retry of everything parked.
    Periodic,
}

impl ClusterEvent {
    const ALL: [ClusterEvent; 5] = [
        ClusterEvent::Node,
        ClusterEvent::PodRemoved,
        ClusterEvent::PodAdded,
        ClusterEvent::PodTerminating,
        ClusterEvent::Periodic,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn helps(self, r: Retry) -> bool {
        match self {
            ClusterEvent::Node | ClusterEvent::Periodic => true,
            ClusterEvent::PodRemoved | ClusterEvent::PodTerminating => r.on_pod_removed,
            ClusterEvent::PodAdded => r.on_pod_added,
        }
    }
}

#[derive(Default)]
struct Inner {
    seq: u64,
    active: BTreeSet<(Reverse<i32>, u64, Key)>,
    in_active: HashMap<Key, (i32, u64)>,
    /// Unschedulable pods: when their back-off ends, their priority, and what may help.
    parked: HashMap<Key, (Instant, i32, Retry)>,
    attempts: HashMap<Key, u32>,
    /// How many changes of each kind ([`ClusterEvent::index`]) there have been.
    changes: [u64; 5],
    /// Pods popped and being tried, with `changes` when they were popped: a change that
    /// came during a failed attempt retries the pod after its back-off, as upstream's
    /// in-flight events do, instead of being missed.
    in_flight: HashMap<Key, [u64; 5]>,
}

#[derive(Clone, Default)]
pub struct SchedulingQueue {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
}

impl SchedulingQueue {
    /// Adds (or re-prioritises) a pending pod.
    pub fn add(&self, key: Key, priority: i32) {
        let mut g = self.inner.lock().unwrap();
        if g.in_active.contains_key(&key) {
            return;
        }
        if let Some((until, _, _)) = g.parked.get(&key) {
            // A parked pod changed: retry, but not before its back-off ends.
            let wait = until.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                drop(g);
                self.add_after(key, priority, wait);
                return;
            }
            g.parked.remove(&key);
        }
        g.seq += 1;
        let seq = g.seq;
        g.active.insert((Reverse(priority), seq, key.clone()));
        g.in_active.insert(key, (priority, seq));
        drop(g);
        self.notify.notify_one();
    }

    fn add_after(&self, key: Key, priority: i32, wait: Duration) {
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let due = {
                let mut g = q.inner.lock().unwrap();
                match g.parked.get(&key) {
                    Some((until, _, _)) if *until <= Instant::now() => {
                        g.parked.remove(&key);
                        true
                    }
                    _ => false,
                }
            };
            if due {
                q.add(key, priority);
            }
        });
    }

    /// Forgets a pod that was bound or deleted.
    pub fn remove(&self, key: &Key) {
        let mut g = self.inner.lock().unwrap();
        g.in_flight.remove(key);
        if let Some((p, s)) = g.in_active.remove(key) {
            g.active.remove(&(Reverse(p), s, key.clone()));
        }
        g.parked.remove(key);
        g.attempts.remove(key);
    }

    /// Parks a pod that did not fit, with its next back-off and the changes that may help.
    pub fn unschedulable(&self, key: Key, priority: i32, retry: Retry) {
        let mut g = self.inner.lock().unwrap();
        let n = g.attempts.entry(key.clone()).or_insert(0);
        *n += 1;
        let backoff = (INITIAL_BACKOFF * 2u32.saturating_pow((*n - 1).min(8))).min(MAX_BACKOFF);
        let missed = g.in_flight.remove(&key).is_some_and(|then| {
            ClusterEvent::ALL
                .iter()
                .any(|e| g.changes[e.index()] > then[e.index()] && e.helps(retry))
        });
        g.parked
            .insert(key.clone(), (Instant::now() + backoff, priority, retry));
        drop(g);
        if missed {
            self.add_after(key, priority, backoff);
        }
    }

    /// A cluster change may let parked pods fit: each that it could help goes back once its
    /// back-off ends.
    pub fn move_to_active(&self, event: ClusterEvent) {
        let parked: Vec<(Key, Instant, i32)> = {
            let mut g = self.inner.lock().unwrap();
            g.changes[event.index()] += 1;
            g.parked
                .iter()
                .filter(|(_, (_, _, r))| event.helps(*r))
                .map(|(k, (t, p, _))| (k.clone(), *t, *p))
                .collect()
        };
        let now = Instant::now();
        for (k, until, prio) in parked {
            let wait = until.saturating_duration_since(now);
            if wait.is_zero() {
                self.inner.lock().unwrap().parked.remove(&k);
                self.add(k, prio);
            } else {
                self.add_after(k, prio, wait);
            }
        }
    }

    /// The next pod to schedule, highest priority first.
    pub async fn pop(&self) -> Key {
        loop {
            let notified = self.notify.notified();
            {
                let mut g = self.inner.lock().unwrap();
                if let Some(first) = g.active.pop_first() {
                    g.in_active.remove(&first.2);
                    let now = g.changes;
                    g.in_flight.insert(first.2.clone(), now);
                    return first.2;
                }
            }
            notified.await;
        }
    }

    pub fn pending(&self) -> (usize, usize) {
        let g = self.inner.lock().unwrap();
        (g.active.len(), g.parked.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: &str) -> Key {
        ("ns".into(), n.into())
    }

    /// What a pod waiting for room is helped by: a pod leaving.
    const RESOURCES: Retry = Retry {
        on_pod_removed: true,
        on_pod_added: false,
    };

    #[tokio::test]
    async fn pops_by_priority_then_arrival() {
        let q = SchedulingQueue::default();
        q.add(k("a"), 0);
        q.add(k("b"), 100);
        q.add(k("c"), 0);
        q.add(k("a"), 0);
        assert_eq!(q.pop().await, k("b"));
        assert_eq!(q.pop().await, k("a"));
        assert_eq!(q.pop().await, k("c"));
    }

    #[tokio::test]
    async fn parked_pods_wait_for_backoff() {
        let q = SchedulingQueue::default();
        q.unschedulable(k("a"), 0, Retry::ANY_CHANGE);
        q.move_to_active(ClusterEvent::PodRemoved);
        assert_eq!(q.pending(), (0, 1));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(q.pending(), (1, 0));
    }

    #[tokio::test]
    async fn a_change_during_a_failed_attempt_is_not_missed() {
        let q = SchedulingQueue::default();
        q.add(k("a"), 0);
        q.add(k("b"), 0);
        let resources = RESOURCES;
        let (a, b) = (q.pop().await, q.pop().await);
        // While both are tried, a pod leaves a node; then both turn out not to fit.
        q.move_to_active(ClusterEvent::PodRemoved);
        q.unschedulable(a, 0, resources);
        q.unschedulable(b, 0, Retry::default());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // "a" is retried after its back-off; "b", which a pod leaving cannot help, waits.
        assert_eq!(q.pending(), (1, 1));
        assert_eq!(q.pop().await, k("a"));
    }

    #[tokio::test]
    async fn pod_changes_move_only_the_pods_they_could_help() {
        let q = SchedulingQueue::default();
        let resources = RESOURCES;
        q.unschedulable(k("selector"), 0, Retry::default());
        q.unschedulable(k("resources"), 0, resources);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        q.move_to_active(ClusterEvent::PodAdded);
        assert_eq!(q.pending(), (0, 2));
        q.move_to_active(ClusterEvent::PodRemoved);
        assert_eq!(q.pop().await, k("resources"));
        assert_eq!(q.pending(), (0, 1));
        q.move_to_active(ClusterEvent::Node);
        assert_eq!(q.pop().await, k("selector"));
    }

    #[tokio::test]
    async fn a_pod_beginning_to_terminate_retries_those_waiting_for_room() {
        let q = SchedulingQueue::default();
        let resources = RESOURCES;
        q.unschedulable(k("preemptor"), 0, resources);
        q.unschedulable(k("selector"), 0, Retry::default());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        q.move_to_active(ClusterEvent::PodTerminating);
        assert_eq!(q.pop().await, k("preemptor"));
        assert_eq!(q.pending(), (0, 1));
    }
}
