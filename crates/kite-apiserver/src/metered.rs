//! A [`Store`] wrapper that records how long each store operation takes, for `/metrics`.

use crate::metrics::Metrics;
use futures::future::BoxFuture;
use futures::FutureExt;
use kite_store::{DynStore, KeyValue, RangeResult, Result, Revision, Store, Watch};
use std::sync::Arc;
use std::time::Instant;

pub struct MeteredStore {
    inner: DynStore,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn wrap(inner: DynStore, metrics: Arc<Metrics>) -> DynStore {
        Arc::new(MeteredStore { inner, metrics })
    }

    fn timed<'a, T: Send + 'a>(
        &'a self,
        op: &'static str,
        f: BoxFuture<'a, Result<T>>,
    ) -> BoxFuture<'a, Result<T>> {
        async move {
            let start = Instant::now();
            let r = f.await;
            self.metrics.observe_store(op, start.elapsed());
            r
        }
        .boxed()
    }
}

impl Store for MeteredStore {
    fn current_revision(&self) -> Revision {
        self.inner.current_revision()
    }
    fn compacted_revision(&self) -> Revision {
        self.inner.compacted_revision()
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        self.timed("get", self.inner.get(key))
    }
    fn range<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<RangeResult>> {
        self.timed("list", self.inner.range(prefix, start_after, limit))
    }
    fn range_at<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
        at: Revision,
    ) -> BoxFuture<'a, Result<RangeResult>> {
        self.timed("list", self.inner.range_at(prefix, start_after, limit, at))
    }
    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<KeyValue>> {
        self.timed("create", self.inner.create(key, value))
    }
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: Revision,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        self.timed("update", self.inner.update(key, value, expected))
    }
    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        self.timed("delete", self.inner.delete(key, expected))
    }
    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch> {
        self.inner.watch(prefix, after)
    }
    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>> {
        self.timed("compact", self.inner.compact(revision))
    }
}
