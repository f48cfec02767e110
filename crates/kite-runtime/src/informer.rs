//! Shared informers: for each kind, one watch of the API server and one in-memory cache,
//! shared by every component in the process that asks for that kind. Each starts with a
//! watch-list (`sendInitialEvents=true`), as client-go's informers do since 1.35: the
//! initial objects stream on the watch itself, and the cache counts as synced at the bookmark
//! that ends them. Handlers registered
//! on an informer see each change once, in order, with the old and new object; they must
//! be cheap (typically: put a key on a work queue).

use futures::stream::BoxStream;
use futures::StreamExt;
use kube::core::PartialObjectMeta;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, RwLock};

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub type Key = (String, String);

/// The key of an object.
pub fn key_of<K: Resource>(o: &K) -> Key {
    (
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

/// One change seen by an informer.
#[derive(Debug)]
pub enum Change<K> {
    Added(Arc<K>),
    Updated { old: Arc<K>, new: Arc<K> },
    Deleted(Arc<K>),
}

impl<K> Change<K> {
    /// The object as it is now (or was last, for a deletion).
    pub fn object(&self) -> &Arc<K> {
        match self {
            Change::Added(o) | Change::Deleted(o) => o,
            Change::Updated { new, .. } => new,
        }
    }
    pub fn old(&self) -> Option<&Arc<K>> {
        match self {
            Change::Updated { old, .. } => Some(old),
            _ => None,
        }
    }
}

type Handler<K> = Arc<dyn Fn(&Change<K>) + Send + Sync>;

/// The cache and watch of one kind.
pub struct Informer<K> {
    cache: RwLock<BTreeMap<Key, Arc<K>>>,
    handlers: RwLock<Vec<Handler<K>>>,
    /// Serialises cache changes with their delivery, and handler registration.
    emit: Mutex<()>,
    synced: tokio::sync::watch::Sender<bool>,
}

pub trait Kind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}
impl<K> Kind for K where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K: Kind> Informer<K> {
    fn new() -> Self {
        Informer {
            cache: RwLock::new(BTreeMap::new()),
            handlers: RwLock::new(Vec::new()),
            emit: Mutex::new(()),
            synced: tokio::sync::watch::channel(false).0,
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.cache
            .read()
            .unwrap()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn get_key(&self, key: &Key) -> Option<Arc<K>> {
        self.cache.read().unwrap().get(key).cloned()
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.cache.read().unwrap().values().cloned().collect()
    }

    /// The cached objects of one namespace.
    pub fn list_ns(&self, namespace: &str) -> Vec<Arc<K>> {
        let g = self.cache.read().unwrap();
        let start = (namespace.to_string(), String::new());
        g.range(start..)
            .take_while(|((ns, _), _)| ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.cache.read().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers `f`; it first sees every cached object as `Added`.
    pub fn add_handler(&self, f: impl Fn(&Change<K>) + Send + Sync + 'static) {
        let _g = self.emit.lock().unwrap();
        let f: Handler<K> = Arc::new(f);
        for o in self.list() {
            f(&Change::Added(o));
        }
        self.handlers.write().unwrap().push(f);
    }

    /// Wakes `n` on every change: for components that recompute from the whole cache
    /// (the service proxy, DNS, policies) rather than per key.
    pub fn wake_on_change(&self, n: &Arc<tokio::sync::Notify>) {
        let n = n.clone();
        self.add_handler(move |_| n.notify_one());
    }

    /// Waits until the first full list has been loaded.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// A future, independent of `self`'s lifetime, ready once the first list is loaded.
    pub fn synced_future(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.synced.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    pub fn has_synced(&self) -> bool {
        *self.synced.borrow()
    }

    fn deliver(&self, c: Change<K>) {
        let hs = self.handlers.read().unwrap().clone();
        for h in hs {
            h(&c);
        }
    }

    fn apply(&self, o: K) {
        let _g = self.emit.lock().unwrap();
        let new = Arc::new(o);
        let old = self
            .cache
            .write()
            .unwrap()
            .insert(key_of(&*new), new.clone());
        self.deliver(match old {
            Some(old) => Change::Updated { old, new },
            None => Change::Added(new),
        });
    }

    fn delete(&self, o: K) {
        let _g = self.emit.lock().unwrap();
        let old = self.cache.write().unwrap().remove(&key_of(&o));
        self.deliver(Change::Deleted(old.unwrap_or_else(|| Arc::new(o))));
    }

    /// Replaces the cache with a fresh list, delivering the differences.
    fn replace(&self, fresh: BTreeMap<Key, K>) {
        let _g = self.emit.lock().unwrap();
        let mut changes = Vec::new();
        {
            let mut cache = self.cache.write().unwrap();
            let gone: Vec<Key> = cache
                .keys()
                .filter(|k| !fresh.contains_key(*k))
                .cloned()
                .collect();
            for k in gone {
                if let Some(o) = cache.remove(&k) {
                    changes.push(Change::Deleted(o));
                }
            }
            for (k, o) in fresh {
                let same = cache
                    .get(&k)
                    .is_some_and(|c| c.meta().resource_version == o.meta().resource_version);
                if same {
                    continue;
                }
                let new = Arc::new(o);
                changes.push(match cache.insert(k, new.clone()) {
                    Some(old) => Change::Updated { old, new },
                    None => Change::Added(new),
                });
            }
        }
        for c in changes {
            self.deliver(c);
        }
        self.synced.send_replace(true);
    }

    async fn run(self: Arc<Self>, stream: BoxStream<'static, watcher::Result<watcher::Event<K>>>) {
        let mut stream = stream;
        let mut buffer: Option<BTreeMap<Key, K>> = None;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init) => buffer = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(o)) => {
                    buffer
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key_of(&o), o);
                }
                Ok(watcher::Event::InitDone) => self.replace(buffer.take().unwrap_or_default()),
                Ok(watcher::Event::Apply(o)) => self.apply(o),
                Ok(watcher::Event::Delete(o)) => self.delete(o),
                Err(e) => {
                    tracing::debug!(kind = %K::kind(&()), error = %e, "watch failed; retrying")
                }
            }
        }
    }
}

/// The informers of one process, one per kind, created (and started) on first use.
#[derive(Clone)]
pub struct Informers {
    client: kube::Client,
    map: Arc<Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>>,
    /// The synced flags of every shared informer made so far.
    synced: Arc<Mutex<Vec<tokio::sync::watch::Receiver<bool>>>>,
}

impl Informers {
    pub fn new(client: kube::Client) -> Self {
        Informers {
            client,
            map: Arc::default(),
            synced: Arc::default(),
        }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The shared informer for `K`, watching every namespace.
    pub fn get<K: Kind>(&self) -> Arc<Informer<K>> {
        let mut m = self.map.lock().unwrap();
        if let Some(i) = m.get(&TypeId::of::<K>()) {
            return i.clone().downcast::<Informer<K>>().expect("informer type");
        }
        let inf = Arc::new(Informer::<K>::new());
        m.insert(TypeId::of::<K>(), inf.clone());
        self.synced.lock().unwrap().push(inf.synced.subscribe());
        let api = Api::<K>::all(self.client.clone());
        let stream = watcher(api, watcher::Config::default().streaming_lists())
            .default_backoff()
            .boxed();
        tokio::spawn(inf.clone().run(stream));
        inf
    }

    /// A future that is ready once every shared informer made so far has loaded its
    /// first full list. Controllers start their workers after it, as upstream's
    /// WaitForCacheSync: a reconcile on a half-loaded cache would see ReplicaSets or pods
    /// missing and create them again.
    pub fn synced(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let rxs = self.synced.lock().unwrap().clone();
        async move {
            for mut rx in rxs {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    }

    /// A private informer of `K` with its own selectors (a kubelet's pods, by
    /// `spec.nodeName`): not shared, since other users want other selections.
    pub fn get_selected<K: Kind>(&self, config: watcher::Config) -> Arc<Informer<K>> {
        let inf = Arc::new(Informer::<K>::new());
        let api = Api::<K>::all(self.client.clone());
        let stream = watcher(api, config.streaming_lists())
            .default_backoff()
            .boxed();
        tokio::spawn(inf.clone().run(stream));
        inf
    }

    /// A shared informer of `K`'s metadata only (`PartialObjectMetadata`), for
    /// controllers that never look past `metadata` (the garbage collector): it caches
    /// and decodes far less than a full one.
    pub fn get_metadata<K: Kind>(&self) -> Arc<Informer<PartialObjectMeta<K>>>
    where
        PartialObjectMeta<K>: Kind,
    {
        // kube sends metadata-only requests for `Api<PartialObjectMeta<K>>`.
        self.get::<PartialObjectMeta<K>>()
    }
}

/// `namespace/name` of an object, for logs.
pub fn display<K: Resource>(o: &K) -> String {
    match o.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", o.name_any()),
        None => o.name_any(),
    }
}
