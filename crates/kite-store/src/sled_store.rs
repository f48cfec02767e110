//! The embedded backend: one sled tree holding key records (`k` + key), the history log
//! (`l` + revision) and two counters (`m/rev`, `m/compacted`).
//!
//! Every write runs under one mutex, which assigns the next revision and applies the key
//! record, the log record and the counter as one atomic sled batch. The writer then waits for
//! durability through a group commit: the first waiter flushes for everyone who wrote before
//! the flush began. Only after a flush are events published to watchers, so a watcher never
//! sees a write that a crash could lose.

use crate::codec::{decode_event, decode_kv, encode_event, encode_kv};
use crate::{Event, EventKind, KeyValue, RangeResult, Result, Revision, Store, StoreError, Watch};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

const META_REV: &[u8] = b"m/rev";
const META_COMPACTED: &[u8] = b"m/compacted";
const BROADCAST_CAPACITY: usize = 4096;
const WATCH_CHANNEL: usize = 1024;

fn key_record(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(b'k');
    k.extend_from_slice(key.as_bytes());
    k
}

fn log_record(rev: Revision) -> [u8; 9] {
    let mut k = [b'l'; 9];
    k[1..].copy_from_slice(&(rev as u64).to_be_bytes());
    k
}

struct WriteState {
    /// Revision of the last applied (not necessarily durable) write.
    last: Revision,
    /// Applied events waiting for a flush before they are published.
    pending: VecDeque<Arc<Event>>,
}

struct Inner {
    db: sled::Db,
    write: Mutex<WriteState>,
    durable: AtomicI64,
    compacted: AtomicI64,
    flush_lock: tokio::sync::Mutex<()>,
    events: broadcast::Sender<Arc<Event>>,
}

/// The sled-backed [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(32 * 1024 * 1024)
            .mode(sled::Mode::LowSpace)
            .open()?;
        let read_i64 = |k: &[u8]| -> Result<i64> {
            Ok(match db.get(k)? {
                Some(v) if v.len() == 8 => i64::from_be_bytes(v.as_ref().try_into().unwrap()),
                Some(_) => return Err(StoreError::Corrupt("counter".into())),
                None => 0,
            })
        };
        let last = read_i64(META_REV)?;
        let compacted = read_i64(META_COMPACTED)?;
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        Ok(SledStore {
            inner: Arc::new(Inner {
                db,
                write: Mutex::new(WriteState {
                    last,
                    pending: VecDeque::new(),
                }),
                durable: AtomicI64::new(last),
                compacted: AtomicI64::new(compacted),
                flush_lock: tokio::sync::Mutex::new(()),
                events,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriteState> {
        // A panic while holding the lock cannot leave a half-applied batch (sled batches are
        // atomic), so a poisoned lock is still consistent.
        self.inner.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_key(&self, key: &str) -> Result<Option<KeyValue>> {
        match self.inner.db.get(key_record(key))? {
            Some(raw) => Ok(Some(decode_kv(key, &raw)?)),
            None => Ok(None),
        }
    }

    /// Applies one write under the write lock. `check` sees the current value and decides.
    fn apply(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        check: impl FnOnce(Option<&KeyValue>) -> Result<()>,
    ) -> Result<(Revision, Arc<Event>)> {
        let mut st = self.lock();
        let current = self.read_key(key)?;
        check(current.as_ref())?;
        let rev = st.last + 1;
        let mut batch = sled::Batch::default();
        let event = match value {
            Some(value) => {
                let create = current.as_ref().map_or(rev, |c| c.create_revision);
                batch.insert(key_record(key), encode_kv(create, rev, &value));
                Event {
                    kind: EventKind::Put,
                    revision: rev,
                    kv: KeyValue {
                        key: key.to_string(),
                        value,
                        create_revision: create,
                        mod_revision: rev,
                    },
                    prev: current,
                }
            }
            None => {
                let prev = current.ok_or_else(|| StoreError::NotFound(key.to_string()))?;
                batch.remove(key_record(key));
                Event {
                    kind: EventKind::Delete,
                    revision: rev,
                    kv: KeyValue {
                        mod_revision: rev,
                        ..prev.clone()
                    },
                    prev: Some(prev),
                }
            }
        };
        batch.insert(&log_record(rev)[..], encode_event(&event));
        batch.insert(META_REV, &rev.to_be_bytes()[..]);
        self.inner.db.apply_batch(batch)?;
        st.last = rev;
        let event = Arc::new(event);
        st.pending.push_back(event.clone());
        Ok((rev, event))
    }

    /// Group commit: returns once `rev` is durable, flushing if nobody else has.
    async fn commit(&self, rev: Revision) -> Result<()> {
        if self.inner.durable.load(Ordering::Acquire) >= rev {
            return Ok(());
        }
        let _flush = self.inner.flush_lock.lock().await;
        if self.inner.durable.load(Ordering::Acquire) >= rev {
            return Ok(());
        }
        let target = self.lock().last;
        self.inner.db.flush_async().await?;
        let mut st = self.lock();
        while st.pending.front().is_some_and(|e| e.revision <= target) {
            let ev = st.pending.pop_front().unwrap();
            // No receivers is fine: nobody is watching.
            let _ = self.inner.events.send(ev);
        }
        self.inner.durable.store(target, Ordering::Release);
        Ok(())
    }

    async fn write(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        check: impl FnOnce(Option<&KeyValue>) -> Result<()>,
    ) -> Result<KeyValue> {
        let (rev, event) = self.apply(key, value, check)?;
        self.commit(rev).await?;
        Ok(event.kv.clone())
    }

    /// Reads history records with revisions in `(after, upto]`.
    fn read_log(&self, after: Revision, upto: Revision) -> Result<Vec<Event>> {
        if upto <= after {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for item in self
            .inner
            .db
            .range(log_record(after + 1)..=log_record(upto))
        {
            let (k, v) = item?;
            let rev = u64::from_be_bytes(k[1..9].try_into().unwrap()) as i64;
            out.push(decode_event(rev, &v)?);
        }
        Ok(out)
    }
}

fn conflict(key: &str, current: Option<&KeyValue>) -> StoreError {
    StoreError::Conflict {
        key: key.to_string(),
        current: current.cloned().map(Box::new),
    }
}

impl Store for SledStore {
    fn current_revision(&self) -> Revision {
        self.inner.durable.load(Ordering::Acquire)
    }

    fn compacted_revision(&self) -> Revision {
        self.inner.compacted.load(Ordering::Acquire)
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        async move { self.read_key(key) }.boxed()
    }

    fn range<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<RangeResult>> {
        async move {
            // The revision is read before the scan: the scan then sees at least everything up
            // to it, so a watch started from it misses nothing (it may repeat a newer write).
            let revision = self.lock().last;
            let pfx = key_record(prefix);
            let start = match start_after {
                Some(s) => std::ops::Bound::Excluded(key_record(s)),
                None => std::ops::Bound::Included(pfx.clone()),
            };
            let mut items = Vec::new();
            let mut more = false;
            for item in self
                .inner
                .db
                .range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
            {
                let (k, v) = item?;
                if !k.starts_with(&pfx) {
                    break;
                }
                if limit > 0 && items.len() == limit {
                    more = true;
                    break;
                }
                let key = std::str::from_utf8(&k[1..])
                    .map_err(|_| StoreError::Corrupt("non-utf8 key".into()))?;
                items.push(decode_kv(key, &v)?);
            }
            Ok(RangeResult {
                items,
                more,
                revision,
            })
        }
        .boxed()
    }

    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<KeyValue>> {
        self.write(key, Some(value), |cur| match cur {
            Some(_) => Err(StoreError::AlreadyExists(key.to_string())),
            None => Ok(()),
        })
        .boxed()
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: Revision,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        self.write(key, Some(value), move |cur| match cur {
            Some(c) if c.mod_revision == expected => Ok(()),
            Some(c) => Err(conflict(key, Some(c))),
            None => Err(StoreError::NotFound(key.to_string())),
        })
        .boxed()
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        async move {
            let deleted = self
                .write(key, None, move |cur| match (cur, expected) {
                    (None, _) => Err(StoreError::NotFound(key.to_string())),
                    (Some(c), Some(e)) if c.mod_revision != e => Err(conflict(key, Some(c))),
                    _ => Ok(()),
                })
                .await?;
            Ok(deleted)
        }
        .boxed()
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch> {
        let compacted = self.compacted_revision();
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        // Subscribe and read the durable point under the write lock, where publishing also
        // happens: every event after `durable` reaches the subscription.
        let (mut sub, durable) = {
            let _st = self.lock();
            (
                self.inner.events.subscribe(),
                self.inner.durable.load(Ordering::Acquire),
            )
        };
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_CHANNEL);
        let store = self.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let mut last = after;
            let send_range = |store: &SledStore, from: Revision, upto: Revision| {
                store.read_log(from, upto).map(|evs| {
                    evs.into_iter()
                        .filter(|e| e.kv.key.starts_with(prefix.as_str()))
                        .collect::<Vec<_>>()
                })
            };
            match send_range(&store, last, durable) {
                Ok(evs) => {
                    for e in evs {
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            last = last.max(durable);
            loop {
                match sub.recv().await {
                    Ok(ev) => {
                        if ev.revision <= last {
                            continue;
                        }
                        last = ev.revision;
                        if ev.kv.key.starts_with(prefix.as_str())
                            && tx.send(Ok((*ev).clone())).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow for the live feed: catch up from the log.
                        let upto = store.current_revision();
                        if last < store.compacted_revision() {
                            let _ = tx
                                .send(Err(StoreError::Compacted {
                                    requested: last,
                                    compacted: store.compacted_revision(),
                                }))
                                .await;
                            return;
                        }
                        match send_range(&store, last, upto) {
                            Ok(evs) => {
                                for e in evs {
                                    if tx.send(Ok(e)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                        last = last.max(upto);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Watch { rx })
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>> {
        async move {
            let current = self.current_revision();
            if revision > current {
                return Err(StoreError::FutureRevision {
                    requested: revision,
                    current,
                });
            }
            let old = self.compacted_revision();
            if revision <= old {
                return Ok(());
            }
            let mut batch = sled::Batch::default();
            for item in self
                .inner
                .db
                .range(log_record(old.max(0))..=log_record(revision))
            {
                let (k, _) = item?;
                batch.remove(k);
            }
            batch.insert(META_COMPACTED, &revision.to_be_bytes()[..]);
            self.inner.db.apply_batch(batch)?;
            self.inner.compacted.store(revision, Ordering::Release);
            self.inner.db.flush_async().await?;
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn create_update_delete_with_cas() {
        let (_d, s) = open();
        let a = s.create("/r/a", b"1".to_vec()).await.unwrap();
        assert_eq!(a.mod_revision, 1);
        assert!(matches!(
            s.create("/r/a", b"x".to_vec()).await,
            Err(StoreError::AlreadyExists(_))
        ));
        let b = s.update("/r/a", b"2".to_vec(), 1).await.unwrap();
        assert_eq!((b.create_revision, b.mod_revision), (1, 2));
        assert!(matches!(
            s.update("/r/a", b"3".to_vec(), 1).await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            s.delete("/r/a", Some(1)).await,
            Err(StoreError::Conflict { .. })
        ));
        let d = s.delete("/r/a", Some(2)).await.unwrap();
        assert_eq!(d.value, b"2");
        assert!(s.get("/r/a").await.unwrap().is_none());
        assert_eq!(s.current_revision(), 3);
    }

    #[tokio::test]
    async fn range_pages_by_prefix() {
        let (_d, s) = open();
        for k in ["/p/a", "/p/b", "/p/c", "/q/a"] {
            s.create(k, k.as_bytes().to_vec()).await.unwrap();
        }
        let p1 = s.range("/p/", None, 2).await.unwrap();
        assert_eq!(p1.items.len(), 2);
        assert!(p1.more);
        let p2 = s.range("/p/", Some("/p/b"), 2).await.unwrap();
        assert_eq!(p2.items.len(), 1);
        assert_eq!(p2.items[0].key, "/p/c");
        assert!(!p2.more);
    }

    #[tokio::test]
    async fn watch_replays_history_then_follows_live() {
        let (_d, s) = open();
        s.create("/w/a", b"1".to_vec()).await.unwrap();
        s.create("/x/a", b"1".to_vec()).await.unwrap();
        let mut w = s.watch("/w/", 0).unwrap();
        let e = w.rx.recv().await.unwrap().unwrap();
        assert_eq!((e.kind, e.revision), (EventKind::Put, 1));
        s.update("/w/a", b"2".to_vec(), 1).await.unwrap();
        s.delete("/w/a", None).await.unwrap();
        let e = w.rx.recv().await.unwrap().unwrap();
        assert_eq!((e.revision, e.prev.unwrap().value), (3, b"1".to_vec()));
        let e = w.rx.recv().await.unwrap().unwrap();
        assert_eq!(
            (e.kind, e.revision, e.kv.value),
            (EventKind::Delete, 4, b"2".to_vec())
        );
    }

    #[tokio::test]
    async fn compaction_makes_old_watches_fail() {
        let (_d, s) = open();
        for i in 0..5 {
            s.create(&format!("/c/{i}"), vec![]).await.unwrap();
        }
        s.compact(3).await.unwrap();
        assert!(matches!(
            s.watch("/c/", 2),
            Err(StoreError::Compacted { .. })
        ));
        let mut w = s.watch("/c/", 3).unwrap();
        assert_eq!(w.rx.recv().await.unwrap().unwrap().revision, 4);
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.create("/k", b"v".to_vec()).await.unwrap();
            s.update("/k", b"w".to_vec(), 1).await.unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.current_revision(), 2);
        let kv = s.get("/k").await.unwrap().unwrap();
        assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"w"[..], 2));
        assert_eq!(s.create("/k2", vec![]).await.unwrap().mod_revision, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_cas_has_one_winner_per_revision() {
        let (_d, s) = open();
        s.create("/n", b"0".to_vec()).await.unwrap();
        let mut handles = Vec::new();
        for i in 0..32 {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                s.update("/n", format!("{i}").into_bytes(), 1).await.is_ok()
            }));
        }
        let mut wins = 0;
        for h in handles {
            wins += h.await.unwrap() as usize;
        }
        assert_eq!(wins, 1);
    }
}
