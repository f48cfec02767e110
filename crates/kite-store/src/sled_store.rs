//! The embedded backend: one sled tree holding key records (`k` + key), the history log
//! (`l` + revision) and the compaction point (`m/compacted`), made durable by a write-ahead
//! log ([`crate::wal`]). The store's revision is that of the last history record, or the
//! compaction point when compaction removed them all.
//!
//! Every write runs under one mutex, which assigns the next revision, applies the key record
//! and then the log record to sled (in that order, as plain inserts: see
//! [`apply_event`] for why not a batch), and queues the WAL record. The
//! writer then waits for durability through a group commit: the first waiter writes and syncs
//! the WAL for everyone who wrote before it began. Only then are events published to watchers,
//! so a watcher never sees a write that a crash could lose. A maintenance thread flushes sled
//! every few seconds and retires the WAL segment that flush made redundant; opening the store
//! replays whatever WAL records sled had not persisted.

use crate::codec::{decode_event, decode_kv, encode_event, encode_kv};
use crate::wal::{self, Wal};
use crate::{Event, EventKind, KeyValue, RangeResult, Result, Revision, Store, StoreError, Watch};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Where versions before 0.1 kept the last revision; still read, never written.
const LEGACY_META_REV: &[u8] = b"m/rev";
const META_COMPACTED: &[u8] = b"m/compacted";
const BROADCAST_CAPACITY: usize = 4096;
const WATCH_CHANNEL: usize = 1024;
/// How often sled is flushed and the WAL segment before it retired.
const SLED_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// WAL records of applied writes not yet written to the log.
    wal_buf: Vec<u8>,
    /// Revision last persisted by a sled flush.
    sled_flushed: Revision,
}

struct Inner {
    db: sled::Db,
    write: Mutex<WriteState>,
    durable: AtomicI64,
    compacted: AtomicI64,
    flush_lock: tokio::sync::Mutex<()>,
    wal: Mutex<Wal>,
    events: broadcast::Sender<Arc<Event>>,
}

/// The sled-backed [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, replaying the WAL into sled if needed.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("creating {}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(32 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()?;
        let read_i64 = |k: &[u8]| -> Result<i64> {
            Ok(match db.get(k)? {
                Some(v) if v.len() == 8 => i64::from_be_bytes(v.as_ref().try_into().unwrap()),
                Some(_) => return Err(StoreError::Corrupt("counter".into())),
                None => 0,
            })
        };
        let compacted = read_i64(META_COMPACTED)?;
        let mut last = last_logged(&db)?
            .max(compacted)
            .max(read_i64(LEGACY_META_REV)?);
        // Replay what the WAL has beyond sled's persisted state, in order, without gaps.
        let mut replayed = 0;
        for path in [Wal::old_path(dir), Wal::log_path(dir)] {
            for (rev, bytes) in wal::read_records(&path)? {
                if rev <= last {
                    continue;
                }
                if rev != last + 1 {
                    tracing::error!(
                        expected = last + 1,
                        found = rev,
                        "gap in the WAL; replay stops"
                    );
                    break;
                }
                let event = decode_event(rev, &bytes)?;
                apply_event(&db, &event, &bytes)?;
                last = rev;
                replayed += 1;
            }
        }
        let mut wal = Wal::open(dir)?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                revision = last,
                "replayed the write-ahead log"
            );
        }
        db.flush()?;
        wal.rotate()?;
        wal.drop_old()?;
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let store = SledStore {
            inner: Arc::new(Inner {
                db,
                write: Mutex::new(WriteState {
                    last,
                    pending: VecDeque::new(),
                    wal_buf: Vec::new(),
                    sled_flushed: last,
                }),
                durable: AtomicI64::new(last),
                compacted: AtomicI64::new(compacted),
                flush_lock: tokio::sync::Mutex::new(()),
                wal: Mutex::new(wal),
                events,
            }),
        };
        store.spawn_maintenance();
        Ok(store)
    }

    /// Flushes sled now and then and retires the WAL segment it made redundant. Ends when the
    /// store is dropped.
    fn spawn_maintenance(&self) {
        let weak = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("kite-store-flush".into())
            .spawn(move || loop {
                std::thread::sleep(SLED_FLUSH_EVERY);
                let Some(inner) = weak.upgrade() else { return };
                let store = SledStore { inner };
                if let Err(e) = store.checkpoint() {
                    tracing::warn!(error = %e, "store checkpoint failed; will retry");
                }
            })
            .expect("spawning the store maintenance thread");
    }

    /// Persists sled's state and drops the WAL records it now holds.
    pub fn checkpoint(&self) -> Result<()> {
        let durable = self.inner.durable.load(Ordering::Acquire);
        if self.lock().sled_flushed >= durable {
            return Ok(());
        }
        {
            // No commit is writing the WAL while it rotates.
            let _flush = self.inner.flush_lock.blocking_lock();
            self.inner
                .wal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .rotate()?;
        }
        // Every record in the rotated segment was applied to sled before this flush began.
        self.inner.db.flush()?;
        self.inner
            .wal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drop_old()?;
        self.lock().sled_flushed = durable;
        Ok(())
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
        let event = match value {
            Some(value) => {
                let create = current.as_ref().map_or(rev, |c| c.create_revision);
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
        let encoded = encode_event(&event);
        apply_event(&self.inner.db, &event, &encoded)?;
        wal::encode_record(rev, &encoded, &mut st.wal_buf);
        st.last = rev;
        let event = Arc::new(event);
        st.pending.push_back(event.clone());
        Ok((rev, event))
    }

    /// Group commit: returns once `rev` is durable, syncing the WAL if nobody else has.
    async fn commit(&self, rev: Revision) -> Result<()> {
        if self.inner.durable.load(Ordering::Acquire) >= rev {
            return Ok(());
        }
        let _flush = self.inner.flush_lock.lock().await;
        if self.inner.durable.load(Ordering::Acquire) >= rev {
            return Ok(());
        }
        let (target, buf) = {
            let mut st = self.lock();
            (st.last, std::mem::take(&mut st.wal_buf))
        };
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner
                .wal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .append_sync(&buf)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("WAL writer: {e}")))??;
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

/// Sends the logged events in `(from, upto]` under `prefix` to a watcher. False when the
/// watch is over (the watcher left, or the log could not be read and the error was sent).
async fn replay(
    store: &SledStore,
    prefix: &str,
    from: Revision,
    upto: Revision,
    tx: &tokio::sync::mpsc::Sender<Result<Event>>,
) -> bool {
    match store.read_log(from, upto) {
        Ok(events) => {
            for e in events.into_iter().filter(|e| e.kv.key.starts_with(prefix)) {
                if tx.send(Ok(e)).await.is_err() {
                    return false;
                }
            }
            true
        }
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            false
        }
    }
}

/// The revision of the last history record in sled, 0 if there is none.
fn last_logged(db: &sled::Db) -> Result<Revision> {
    match db
        .range(log_record(0)..=log_record(Revision::MAX))
        .next_back()
    {
        Some(item) => {
            let (k, _) = item?;
            let rev: [u8; 8] = k[1..]
                .try_into()
                .map_err(|_| StoreError::Corrupt("history record key".into()))?;
            Ok(u64::from_be_bytes(rev) as Revision)
        }
        None => Ok(0),
    }
}

/// Applies one write to sled: the key record, then the history record, as two plain inserts.
/// They are deliberately not a sled batch: a batch makes sled write and `sync_file_range` its
/// log buffer before and after, one disk round trip per write, which was most of the store's
/// cost. Atomicity comes from the WAL instead: sled recovers a prefix of its inserts, the
/// history record goes last and names the store's revision ([`last_logged`]), and opening the
/// store replays every WAL record after it, each replay an idempotent put or remove.
fn apply_event(db: &sled::Db, event: &Event, encoded_event: &[u8]) -> Result<()> {
    match event.kind {
        EventKind::Put => {
            db.insert(
                key_record(&event.kv.key),
                encode_kv(event.kv.create_revision, event.revision, &event.kv.value),
            )?;
        }
        EventKind::Delete => {
            db.remove(key_record(&event.kv.key))?;
        }
    }
    db.insert(&log_record(event.revision)[..], encoded_event)?;
    Ok(())
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
            let mut remaining = 0u64;
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
                    // Past the page: only counted, as etcd's range count.
                    remaining += 1;
                    continue;
                }
                let key = std::str::from_utf8(&k[1..])
                    .map_err(|_| StoreError::Corrupt("non-utf8 key".into()))?;
                items.push(decode_kv(key, &v)?);
            }
            Ok(RangeResult {
                items,
                more: remaining > 0,
                revision,
                remaining,
            })
        }
        .boxed()
    }

    fn range_at<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
        at: Revision,
    ) -> BoxFuture<'a, Result<RangeResult>> {
        async move {
            let compacted = self.compacted_revision();
            if at < compacted {
                return Err(StoreError::Compacted {
                    requested: at,
                    compacted,
                });
            }
            let current = self.lock().last;
            if at > current {
                return Err(StoreError::FutureRevision {
                    requested: at,
                    current,
                });
            }
            // The current keys, then the history since `at`: a key written since has its
            // value at `at` in the `prev` of its first later event (none if it was created
            // after). The revision is read after the scan, under the write lock, so the log
            // read up to it covers every write the scan may have seen.
            let pfx = key_record(prefix);
            let start = match start_after {
                Some(s) => std::ops::Bound::Excluded(key_record(s)),
                None => std::ops::Bound::Included(pfx.clone()),
            };
            let scan: Vec<(sled::IVec, sled::IVec)> = self
                .inner
                .db
                .range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
                .take_while(|r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&pfx)))
                .collect::<std::result::Result<_, _>>()?;
            let upto = self.lock().last;
            let mut then: std::collections::BTreeMap<String, Option<KeyValue>> = Default::default();
            for ev in self.read_log(at, upto)? {
                let key = &ev.kv.key;
                if key.starts_with(prefix) && start_after.is_none_or(|s| key.as_str() > s) {
                    then.entry(key.clone()).or_insert(ev.prev);
                }
            }
            if self.compacted_revision() > at {
                // Compacted while the log was read: what was read may be incomplete.
                return Err(StoreError::Compacted {
                    requested: at,
                    compacted: self.compacted_revision(),
                });
            }
            // Merges the two sorted sequences; past the page, keys are only counted.
            let mut items = Vec::new();
            let mut remaining = 0u64;
            let full = |items: &Vec<KeyValue>| limit > 0 && items.len() == limit;
            let mut old = then.values().flatten().cloned().peekable();
            for (k, v) in &scan {
                let key = std::str::from_utf8(&k[1..])
                    .map_err(|_| StoreError::Corrupt("non-utf8 key".into()))?;
                while let Some(o) = old.next_if(|o| o.key.as_str() < key) {
                    if full(&items) {
                        remaining += 1;
                    } else {
                        items.push(o);
                    }
                }
                if then.contains_key(key) {
                    continue;
                }
                if full(&items) {
                    remaining += 1;
                } else {
                    items.push(decode_kv(key, v)?);
                }
            }
            for o in old {
                if full(&items) {
                    remaining += 1;
                } else {
                    items.push(o);
                }
            }
            Ok(RangeResult {
                items,
                more: remaining > 0,
                revision: at,
                remaining,
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
            if !replay(&store, &prefix, last, durable, &tx).await {
                return;
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
                        if !replay(&store, &prefix, last, upto, &tx).await {
                            return;
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
        assert_eq!(p1.remaining, 1);
        let p2 = s.range("/p/", Some("/p/b"), 2).await.unwrap();
        assert_eq!(p2.items.len(), 1);
        assert_eq!(p2.items[0].key, "/p/c");
        assert!(!p2.more);
    }

    #[tokio::test]
    async fn range_at_reads_the_past_page_by_page() {
        let (_d, s) = open();
        for k in ["/p/a", "/p/b", "/p/c", "/p/e", "/q/a"] {
            s.create(k, b"1".to_vec()).await.unwrap();
        }
        let at = s.current_revision();
        let b = s.get("/p/b").await.unwrap().unwrap();
        s.update("/p/b", b"2".to_vec(), b.mod_revision)
            .await
            .unwrap();
        s.delete("/p/c", None).await.unwrap();
        s.create("/p/d", b"1".to_vec()).await.unwrap();
        s.create("/p/0", b"1".to_vec()).await.unwrap();
        let keys = |r: &RangeResult| r.items.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>();
        let all = s.range_at("/p/", None, 0, at).await.unwrap();
        assert_eq!(keys(&all), ["/p/a", "/p/b", "/p/c", "/p/e"]);
        assert_eq!(all.items[1].value, b"1");
        assert_eq!(all.revision, at);
        let p1 = s.range_at("/p/", None, 2, at).await.unwrap();
        assert_eq!(
            (keys(&p1), p1.more, p1.remaining),
            (vec!["/p/a".to_string(), "/p/b".into()], true, 2)
        );
        let p2 = s.range_at("/p/", Some("/p/b"), 2, at).await.unwrap();
        assert_eq!(
            (keys(&p2), p2.more),
            (vec!["/p/c".to_string(), "/p/e".into()], false)
        );
        // Today's state, for comparison.
        let now = s.range("/p/", None, 0).await.unwrap();
        assert_eq!(keys(&now), ["/p/0", "/p/a", "/p/b", "/p/d", "/p/e"]);
        assert!(matches!(
            s.range_at("/p/", None, 0, s.current_revision() + 1).await,
            Err(StoreError::FutureRevision { .. })
        ));
        s.compact(at + 1).await.unwrap();
        assert!(matches!(
            s.range_at("/p/", None, 0, at).await,
            Err(StoreError::Compacted { .. })
        ));
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

    #[tokio::test]
    async fn revision_survives_reopen_after_all_history_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            for i in 0..4 {
                s.create(&format!("/c/{i}"), vec![]).await.unwrap();
            }
            s.compact(4).await.unwrap();
            let c = s.clone();
            tokio::task::spawn_blocking(move || c.checkpoint())
                .await
                .unwrap()
                .unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!((s.current_revision(), s.compacted_revision()), (4, 4));
        assert_eq!(s.create("/c/x", vec![]).await.unwrap().mod_revision, 5);
    }

    #[tokio::test]
    async fn acknowledged_writes_survive_without_a_sled_flush() {
        fn copy_dir(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                if e.path().is_dir() {
                    copy_dir(&e.path(), &to.join(e.file_name()));
                } else {
                    std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let crashed = tempfile::tempdir().unwrap();
        let s = SledStore::open(&dir.path().join("a")).unwrap();
        for i in 0..50 {
            s.create(&format!("/w/{i}"), vec![i as u8]).await.unwrap();
        }
        s.delete("/w/7", None).await.unwrap();
        // What is on disk right now, while sled has not flushed: as if the machine died.
        copy_dir(&dir.path().join("a"), crashed.path());
        drop(s);
        let s = SledStore::open(crashed.path()).unwrap();
        assert_eq!(s.current_revision(), 51);
        assert!(s.get("/w/7").await.unwrap().is_none());
        assert_eq!(s.get("/w/49").await.unwrap().unwrap().value, vec![49]);
        s.checkpoint().unwrap();
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
