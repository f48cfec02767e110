//! Recording core/v1 Events, as client-go's recorder does: one Event per (object, type,
//! reason, message), its `count` and `lastTimestamp` bumped when it repeats. Recording
//! never blocks the caller; when the API is slow, events are dropped, not queued forever.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource};
use std::collections::HashMap;
use tokio::sync::mpsc;

pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

struct Record {
    object: ObjectReference,
    type_: &'static str,
    reason: String,
    message: String,
}

/// A cheap, cloneable handle that records Events as one component.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Record>,
}

impl Recorder {
    /// Starts the recorder task for `component` (e.g. `deployment-controller`).
    pub fn new(client: kube::Client, component: &str, host: &str) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(client, component.to_string(), host.to_string(), rx));
        Recorder { tx }
    }

    pub fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: &'static str,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.event_ref(reference(obj), type_, reason, message)
    }

    pub fn event_ref(
        &self,
        object: ObjectReference,
        type_: &'static str,
        reason: &str,
        message: impl Into<String>,
    ) {
        let _ = self.tx.try_send(Record {
            object,
            type_,
            reason: reason.to_string(),
            message: message.into(),
        });
    }
}

/// An ObjectReference to `obj`, as events and bindings name it.
pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let m = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        field_path: None,
    }
}

/// (object uid or name, type, reason, message).
type SeenKey = (String, &'static str, String, String);

async fn run(
    client: kube::Client,
    component: String,
    host: String,
    mut rx: mpsc::Receiver<Record>,
) {
    // (uid or name, type, reason, message) -> (namespace, event name, count)
    let mut seen: HashMap<SeenKey, (String, String, i32)> = HashMap::new();
    while let Some(r) = rx.recv().await {
        let now = jiff::Timestamp::now();
        let ns = r
            .object
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let id = r
            .object
            .uid
            .clone()
            .or_else(|| r.object.name.clone())
            .unwrap_or_default();
        let key = (id, r.type_, r.reason.clone(), r.message.clone());
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        if let Some((ens, name, count)) = seen.get_mut(&key) {
            *count += 1;
            let patch = serde_json::json!({
                "count": *count,
                "lastTimestamp": Time(now),
            });
            let api: Api<Event> = Api::namespaced(client.clone(), ens);
            if api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                continue;
            }
        }
        let obj_name = r.object.name.clone().unwrap_or_else(|| "unknown".into());
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!("{obj_name}.{:x}", now.as_nanosecond() as u64)),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: r.object,
            reason: Some(r.reason.clone()),
            message: Some(r.message.clone()),
            type_: Some(r.type_.to_string()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            source: Some(EventSource {
                component: Some(component.clone()),
                host: Some(host.clone()).filter(|h| !h.is_empty()),
            }),
            reporting_component: Some(component.clone()),
            reporting_instance: Some(if host.is_empty() {
                component.clone()
            } else {
                format!("{component}-{host}")
            }),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &ev).await {
            Ok(created) => {
                if seen.len() > 4096 {
                    seen.clear();
                }
                seen.insert(key, (ns, created.metadata.name.unwrap_or_default(), 1));
            }
            Err(e) => tracing::debug!(error = %e, "recording an event failed"),
        }
    }
}
