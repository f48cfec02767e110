//! What admission reads on every create, kept in memory: whether each namespace is
//! terminating, and every PriorityClass's value and policy. It follows the store's own watch,
//! as upstream's admission plugins read informer caches rather than storage. A name the
//! cache does not know (just created, or the cache still loading) is read from the store by
//! the caller, so a miss is never an error; like upstream's caches, a change reaches it a
//! moment after its write is acknowledged.

use kite_store::{DynStore, EventKind, Revision};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
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

#[derive(Default)]
pub struct AdmissionCache {
    /// Namespace name → whether it is terminating.
    namespaces: RwLock<HashMap<String, bool>>,
    classes: RwLock<BTreeMap<String, Class>>,
    /// Every PriorityClass in the store has been loaded (so "no default" is an answer).
    classes_synced: AtomicBool,
}

/// Whether a namespace object is terminating: deleted, or in phase Terminating.
pub fn namespace_terminating(ns: &Value) -> bool {
    ns["status"]["phase"] == "Terminating" || ns["metadata"]["deletionTimestamp"].is_string()
}

fn class_of(pc: &Value) -> Class {
    Class {
        value: pc["value"].as_i64().unwrap_or(0),
        preemption_policy: pc["preemptionPolicy"].as_str().map(String::from),
        global_default: pc["globalDefault"] == Value::Bool(true),
    }
}

impl AdmissionCache {
    /// Starts following `namespaces` and `priority_classes` (store prefixes) in the
    /// background; the cache fills within moments.
    pub fn start(store: DynStore, namespaces: String, priority_classes: String) -> Arc<Self> {
        let cache = Arc::new(AdmissionCache::default());
        let c = cache.clone();
        let s = store.clone();
        tokio::spawn(async move {
            follow(
                &s,
                &namespaces,
                |name, obj| {
                    let mut m = c.namespaces.write().unwrap();
                    match obj {
                        Some(o) => m.insert(name.to_string(), namespace_terminating(o)),
                        None => m.remove(name),
                    };
                },
                |items| {
                    *c.namespaces.write().unwrap() = items
                        .iter()
                        .map(|(n, o)| (n.clone(), namespace_terminating(o)))
                        .collect();
                },
                || {},
            )
            .await
        });
        let c = cache.clone();
        tokio::spawn(async move {
            follow(
                &store,
                &priority_classes,
                |name, obj| {
                    let mut m = c.classes.write().unwrap();
                    match obj {
                        Some(o) => m.insert(name.to_string(), class_of(o)),
                        None => m.remove(name),
                    };
                },
                |items| {
                    *c.classes.write().unwrap() = items
                        .iter()
                        .map(|(n, o)| (n.clone(), class_of(o)))
                        .collect();
                    c.classes_synced.store(true, Ordering::Release);
                },
                || c.classes_synced.store(false, Ordering::Release),
            )
            .await
        });
        cache
    }

    /// Whether the namespace is terminating; None if the cache does not know it.
    pub fn namespace(&self, name: &str) -> Option<bool> {
        self.namespaces.read().unwrap().get(name).copied()
    }

    /// The named PriorityClass; None if the cache does not know it.
    pub fn class(&self, name: &str) -> Option<Class> {
        self.classes.read().unwrap().get(name).cloned()
    }

    /// The globalDefault PriorityClass (the first by name if several), or Some(None) when
    /// there is none; None while the cache is not loaded.
    pub fn default_class(&self) -> Option<Option<(String, Class)>> {
        if !self.classes_synced.load(Ordering::Acquire) {
            return None;
        }
        let m = self.classes.read().unwrap();
        Some(
            m.iter()
                .find(|(_, c)| c.global_default)
                .map(|(n, c)| (n.clone(), c.clone())),
        )
    }
}

/// Lists `prefix`, hands the objects to `reset`, then applies each watched change with
/// `apply` (None for a deletion); after any error it calls `lost` and starts again.
async fn follow(
    store: &DynStore,
    prefix: &str,
    apply: impl Fn(&str, Option<&Value>),
    reset: impl Fn(&[(String, Value)]),
    lost: impl Fn(),
) {
    let name_of = |key: &str| key.strip_prefix(prefix).map(String::from);
    loop {
        let listed: Result<(Vec<(String, Value)>, Revision), String> = async {
            let r = store
                .range(prefix, None, 0)
                .await
                .map_err(|e| e.to_string())?;
            let mut items = Vec::new();
            for kv in &r.items {
                if let (Some(n), Ok(v)) = (name_of(&kv.key), serde_json::from_slice(&kv.value)) {
                    items.push((n, v));
                }
            }
            Ok((items, r.revision))
        }
        .await;
        match listed {
            Ok((items, rev)) => {
                reset(&items);
                match store.watch(prefix, rev) {
                    Ok(mut w) => {
                        while let Some(Ok(ev)) = w.rx.recv().await {
                            let Some(n) = name_of(&ev.kv.key) else {
                                continue;
                            };
                            match ev.kind {
                                EventKind::Put => {
                                    if let Ok(v) = serde_json::from_slice::<Value>(&ev.kv.value) {
                                        apply(&n, Some(&v));
                                    }
                                }
                                EventKind::Delete => apply(&n, None),
                            }
                        }
                        tracing::debug!(prefix, "admission cache watch ended; reloading");
                    }
                    Err(e) => tracing::debug!(prefix, error = %e, "admission cache watch failed"),
                }
            }
            Err(e) => tracing::debug!(prefix, error = %e, "admission cache list failed"),
        }
        lost();
        tokio::time::sleep(Duration::from_millis(200)).await;
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
        eventually(|| c.namespace("a") == Some(false)).await;
        eventually(|| c.default_class() == Some(None)).await;

        let a = store.get("/ns/a").await.unwrap().unwrap();
        store
            .update(
                "/ns/a",
                put(json!({"metadata": {"name": "a"}, "status": {"phase": "Terminating"}})),
                a.mod_revision,
            )
            .await
            .unwrap();
        eventually(|| c.namespace("a") == Some(true)).await;
        store.delete("/ns/a", None).await.unwrap();
        eventually(|| c.namespace("a").is_none()).await;

        store
            .create(
                "/pc/high",
                put(json!({"metadata": {"name": "high"}, "value": 1000, "globalDefault": true})),
            )
            .await
            .unwrap();
        eventually(|| {
            c.default_class()
                .flatten()
                .is_some_and(|(n, _)| n == "high")
        })
        .await;
        assert_eq!(c.class("high").map(|c| c.value), Some(1000));
        assert!(c.class("none").is_none());
    }
}
