//! What admission reads on every create, kept in memory: whether each namespace is
//! terminating, and every PriorityClass's value and policy. It follows the store's own watch,
//! as upstream's admission plugins read informer caches rather than storage. A name the
//! cache does not know (just created, or the cache still loading) is read from the store
//! instead, so a miss is never a wrong answer; like upstream's caches, a change reaches the
//! cache a moment after its write is acknowledged.

use kite_store::{DynStore, EventKind, Revision, StoreError};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A PriorityClass as admission uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Class {
    pub value: i64,
    pub preemption_policy: Option<String>,
    pub global_default: bool,
}

/// Whether a namespace object is terminating: deleted, or in phase Terminating.
fn namespace_terminating(ns: &Value) -> bool {
    ns["status"]["phase"] == "Terminating" || ns["metadata"]["deletionTimestamp"].is_string()
}

/// What admission needs of a PriorityClass object.
fn class_of(pc: &Value) -> Class {
    Class {
        value: pc["value"].as_i64().unwrap_or(0),
        preemption_policy: pc["preemptionPolicy"].as_str().map(String::from),
        global_default: pc["globalDefault"] == Value::Bool(true),
    }
}

/// One store prefix, by object name, reduced to what admission needs of each object.
struct Followed<V> {
    map: RwLock<BTreeMap<String, V>>,
    /// Every object under the prefix has been loaded (so a missing name is an answer).
    synced: AtomicBool,
    store: DynStore,
    prefix: String,
    reduce: fn(&Value) -> V,
}

fn decode(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice(bytes).ok()
}

impl<V: Clone + Send + Sync + 'static> Followed<V> {
    /// Starts following `prefix` in the background.
    fn start(store: DynStore, prefix: String, reduce: fn(&Value) -> V) -> Arc<Self> {
        let f = Arc::new(Followed {
            map: RwLock::default(),
            synced: AtomicBool::new(false),
            store,
            prefix,
            reduce,
        });
        let f2 = f.clone();
        tokio::spawn(async move { f2.follow().await });
        f
    }

    /// The named object if the cache has it.
    fn cached(&self, name: &str) -> Option<V> {
        self.map.read().unwrap().get(name).cloned()
    }

    /// The named object: from the cache, or else from the store.
    async fn get(&self, name: &str) -> Result<Option<V>, StoreError> {
        if let Some(v) = self.cached(name) {
            return Ok(Some(v));
        }
        let kv = self.store.get(&format!("{}{name}", self.prefix)).await?;
        Ok(kv
            .and_then(|kv| decode(&kv.value))
            .map(|v| (self.reduce)(&v)))
    }

    /// The first object by name that `pick` accepts: from the cache once it is loaded, or
    /// else from the store.
    async fn find(&self, pick: impl Fn(&V) -> bool) -> Result<Option<(String, V)>, StoreError> {
        if self.synced.load(Ordering::Acquire) {
            let m = self.map.read().unwrap();
            return Ok(m
                .iter()
                .find(|(_, v)| pick(v))
                .map(|(n, v)| (n.clone(), v.clone())));
        }
        let r = self.store.range(&self.prefix, None, 0).await?;
        Ok(r.items.iter().find_map(|kv| {
            let v = (self.reduce)(&decode(&kv.value)?);
            let name = kv.key.strip_prefix(&self.prefix)?;
            pick(&v).then(|| (name.to_string(), v))
        }))
    }

    /// Lists the prefix, then applies each watched change; after any error, lists again.
    async fn follow(&self) {
        let (store, prefix, reduce) = (&self.store, self.prefix.as_str(), self.reduce);
        let name_of = |key: &str| key.strip_prefix(prefix).map(String::from);
        loop {
            let rev: Result<Revision, String> = async {
                let r = store
                    .range(prefix, None, 0)
                    .await
                    .map_err(|e| e.to_string())?;
                let items = r
                    .items
                    .iter()
                    .filter_map(|kv| Some((name_of(&kv.key)?, reduce(&decode(&kv.value)?))))
                    .collect();
                *self.map.write().unwrap() = items;
                self.synced.store(true, Ordering::Release);
                Ok(r.revision)
            }
            .await;
            match rev.and_then(|rev| store.watch(prefix, rev).map_err(|e| e.to_string())) {
                Ok(mut w) => {
                    while let Some(Ok(ev)) = w.rx.recv().await {
                        let Some(n) = name_of(&ev.kv.key) else {
                            continue;
                        };
                        let mut m = self.map.write().unwrap();
                        match ev.kind {
                            EventKind::Put => {
                                if let Some(v) = decode(&ev.kv.value) {
                                    m.insert(n, reduce(&v));
                                }
                            }
                            EventKind::Delete => {
                                m.remove(&n);
                            }
                        }
                    }
                    tracing::debug!(prefix, "admission cache watch ended; reloading");
                }
                Err(e) => {
                    tracing::debug!(prefix, error = %e, "admission cache list or watch failed")
                }
            }
            self.synced.store(false, Ordering::Release);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub struct AdmissionCache {
    /// Namespace name → whether it is terminating.
    namespaces: Arc<Followed<bool>>,
    classes: Arc<Followed<Class>>,
}

impl AdmissionCache {
    /// Starts following `namespaces` and `priority_classes` (store prefixes) in the
    /// background; the cache fills within moments.
    pub fn start(store: DynStore, namespaces: String, priority_classes: String) -> Arc<Self> {
        Arc::new(AdmissionCache {
            namespaces: Followed::start(store.clone(), namespaces, namespace_terminating),
            classes: Followed::start(store, priority_classes, class_of),
        })
    }

    /// Whether the namespace is terminating; None if there is no such namespace.
    pub async fn namespace(&self, name: &str) -> Result<Option<bool>, StoreError> {
        self.namespaces.get(name).await
    }

    /// The named PriorityClass, if there is one.
    pub async fn class(&self, name: &str) -> Result<Option<Class>, StoreError> {
        self.classes.get(name).await
    }

    /// The globalDefault PriorityClass (the first by name if several), if any.
    pub async fn default_class(&self) -> Result<Option<(String, Class)>, StoreError> {
        self.classes.find(|c| c.global_default).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kite_store::sled_store::SledStore;
    use serde_json::json;

    async fn eventually(f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the cache did not catch up");
    }

    #[tokio::test]
    async fn follows_namespaces_and_priority_classes() {
        let dir = tempfile::tempdir().unwrap();
        let store: DynStore = Arc::new(SledStore::open(dir.path()).unwrap());
        let put = |v: Value| serde_json::to_vec(&v).unwrap();
        store
            .create("/ns/a", put(json!({"metadata": {"name": "a"}})))
            .await
            .unwrap();
        let c = AdmissionCache::start(store.clone(), "/ns/".into(), "/pc/".into());
        eventually(|| c.namespaces.cached("a") == Some(false)).await;
        eventually(|| c.classes.synced.load(Ordering::Acquire)).await;
        assert_eq!(c.default_class().await.unwrap(), None);

        let a = store.get("/ns/a").await.unwrap().unwrap();
        store
            .update(
                "/ns/a",
                put(json!({"metadata": {"name": "a"}, "status": {"phase": "Terminating"}})),
                a.mod_revision,
            )
            .await
            .unwrap();
        eventually(|| c.namespaces.cached("a") == Some(true)).await;
        store.delete("/ns/a", None).await.unwrap();
        eventually(|| c.namespaces.cached("a").is_none()).await;
        assert_eq!(c.namespace("a").await.unwrap(), None);

        store
            .create(
                "/pc/high",
                put(json!({"metadata": {"name": "high"}, "value": 1000, "globalDefault": true})),
            )
            .await
            .unwrap();
        // Read through to the store whether or not the cache has caught up.
        assert_eq!(c.class("high").await.unwrap().map(|c| c.value), Some(1000));
        eventually(|| c.classes.cached("high").is_some()).await;
        let default = c.default_class().await.unwrap();
        assert_eq!(default.map(|(n, _)| n).as_deref(), Some("high"));
        assert!(c.class("none").await.unwrap().is_none());
    }
}
