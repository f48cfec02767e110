//! Helpers shared by the controllers: controller references, pod readiness and
//! availability, adoption patches, and creation/deletion expectations.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The owner reference with `controller: true`, if any.
pub fn controller_ref(m: &ObjectMeta) -> Option<&OwnerReference> {
    m.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// A controller reference to `owner`, as controllers set on what they create.
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub fn is_terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// Not finished and not being deleted: counts towards replicas.
pub fn is_active(p: &Pod) -> bool {
    !is_terminal(p) && p.metadata.deletion_timestamp.is_none()
}

/// The Ready condition's status and when it last changed.
pub fn ready_since(p: &Pod) -> Option<jiff::Timestamp> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    if c.status != "True" {
        return None;
    }
    Some(
        c.last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    )
}

pub fn is_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// Ready for at least `min_ready` seconds at `now`.
pub fn is_available(p: &Pod, min_ready: i32, now: jiff::Timestamp) -> bool {
    match ready_since(p) {
        None => false,
        Some(_) if min_ready <= 0 => true,
        Some(t) => now.as_second() - t.as_second() >= i64::from(min_ready),
    }
}

/// Seconds until a Ready pod becomes available, if it is not yet.
pub fn until_available(p: &Pod, min_ready: i32, now: jiff::Timestamp) -> Option<i64> {
    let t = ready_since(p)?;
    let left = i64::from(min_ready) - (now.as_second() - t.as_second());
    (left > 0).then_some(left)
}

/// What a controller expects to see from its own writes before acting again on a key,
/// so that a lagging cache cannot make it create or delete twice (client-go's
/// ControllerExpectations). Expectations expire after five minutes, as upstream.
#[derive(Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Expect>>,
}

struct Expect {
    adds: i64,
    dels: HashSet<String>,
    at: Instant,
}

const EXPECTATION_TTL: Duration = Duration::from_secs(300);

impl Expectations {
    pub fn expect(&self, key: &str, adds: i64, dels: impl IntoIterator<Item = String>) {
        self.inner.lock().unwrap().insert(
            key.to_string(),
            Expect {
                adds,
                dels: dels.into_iter().collect(),
                at: Instant::now(),
            },
        );
    }

    /// One expected creation was seen (or failed).
    pub fn created(&self, key: &str) {
        if let Some(e) = self.inner.lock().unwrap().get_mut(key) {
            e.adds -= 1;
        }
    }

    /// One expected deletion was seen (or failed).
    pub fn deleted(&self, key: &str, pod: &str) {
        if let Some(e) = self.inner.lock().unwrap().get_mut(key) {
            e.dels.remove(pod);
        }
    }

    pub fn satisfied(&self, key: &str) -> bool {
        match self.inner.lock().unwrap().get(key) {
            None => true,
            Some(e) => (e.adds <= 0 && e.dels.is_empty()) || e.at.elapsed() > EXPECTATION_TTL,
        }
    }

    pub fn forget(&self, key: &str) {
        self.inner.lock().unwrap().remove(key);
    }
}

/// An object's creationTimestamp in seconds (0 if unset), for oldest-first ordering.
pub fn created(m: &ObjectMeta) -> i64 {
    m.creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0)
}

/// `ns/name`.
pub fn key_str(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// Whether `e` is a Kubernetes API error with this code.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}
