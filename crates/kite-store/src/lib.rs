//! The key-value store behind the API server.
//!
//! This crate owns the one contract the API server has with persistence: the [`Store`] trait,
//! which has the semantics Kubernetes needs from etcd v3:
//!
//! - one cluster-wide, monotonically increasing [`Revision`] that every write bumps by one and
//!   that becomes an object's `resourceVersion`;
//! - create-if-absent, and update/delete guarded by the revision a caller last saw
//!   (compare-and-swap);
//! - range reads over a key prefix with a limit and a continuation key;
//! - watches from any revision that is not compacted, delivering every change after it, in
//!   order, with no gaps;
//! - compaction of old revisions; reading history from before it answers [`StoreError::Compacted`].
//!
//! A write is acknowledged only once it is durable, and a watcher only ever sees durable
//! writes. [`sled_store::SledStore`] is the embedded default; an etcd backend can implement the
//! same trait without touching any caller.

pub mod codec;
pub mod sled_store;
pub mod wal;

use futures::future::BoxFuture;
use std::sync::Arc;

pub use sled_store::SledStore;

/// The store's logical clock: the revision of the last write. Starts at 1 on an empty store.
pub type Revision = i64;

/// One key as it is at some revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision that created the key (stays the same across updates).
    pub create_revision: Revision,
    /// The revision of the last write to the key.
    pub mod_revision: Revision,
}

/// What a write did, as a watcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, delivered to watchers in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// The revision of this change.
    pub revision: Revision,
    /// For a put, the new value; for a delete, the value the key had before it was deleted
    /// (with `mod_revision` set to the delete's revision).
    pub kv: KeyValue,
    /// The value before this change, if the key existed (needed to tell a watcher with a
    /// selector that an object stopped matching).
    pub prev: Option<KeyValue>,
}

/// One page of a range read.
#[derive(Debug, Clone, Default)]
pub struct RangeResult {
    pub items: Vec<KeyValue>,
    /// Another page follows; continue after the last item's key.
    pub more: bool,
    /// The store's revision when the page was read.
    pub revision: Revision,
    /// How many keys under the prefix follow the page (0 unless `more`): etcd's count less
    /// the page, what upstream reports as a list's `remainingItemCount`.
    pub remaining: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0:?} already exists")]
    AlreadyExists(String),
    #[error("key {0:?} not found")]
    NotFound(String),
    /// The key's current revision is not the one the caller expected; `current` is what is
    /// there now (None if the key is gone).
    #[error("revision conflict on key {key:?}")]
    Conflict {
        key: String,
        current: Option<Box<KeyValue>>,
    },
    #[error("revision {requested} has been compacted (oldest available is {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("revision {requested} is in the future (current is {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("corrupt record in store: {0}")]
    Corrupt(String),
    #[error("store backend: {0}")]
    Backend(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A stream of events for one watch. Dropping it ends the watch.
pub struct Watch {
    pub rx: tokio::sync::mpsc::Receiver<Result<Event>>,
}

/// Storage with etcd's semantics. Every method is cheap to call concurrently.
pub trait Store: Send + Sync + 'static {
    /// The revision of the last durable write.
    fn current_revision(&self) -> Revision;
    /// The oldest revision history is kept from (watches must start at or after it).
    fn compacted_revision(&self) -> Revision;
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>>;
    /// Keys starting with `prefix`, in key order, strictly after `start_after` if given,
    /// at most `limit` of them (0 = no limit).
    fn range<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<RangeResult>>;
    /// As `range`, but the keys and values as they were at revision `at` (etcd's range with
    /// a revision): `Compacted` if history before `at` is gone, `FutureRevision` if `at` is
    /// newer than the store. The result's `revision` is `at`.
    fn range_at<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
        at: Revision,
    ) -> BoxFuture<'a, Result<RangeResult>>;
    /// Creates `key`; fails with AlreadyExists if it is there.
    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<KeyValue>>;
    /// Replaces `key` if its mod_revision is `expected`.
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: Revision,
    ) -> BoxFuture<'a, Result<KeyValue>>;
    /// Deletes `key` if its mod_revision is `expected` (or unconditionally when None);
    /// returns the deleted value.
    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<KeyValue>>;
    /// Every change to keys under `prefix` with a revision greater than `after`.
    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch>;
    /// Forgets history up to and including `revision`.
    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>>;
}

pub type DynStore = Arc<dyn Store>;
