//! The disruption controller: keeps each PodDisruptionBudget's status (expected, healthy
//! and desired pods, how many disruptions are allowed, the pods being evicted), as
//! upstream's, so that the API server's eviction subresource can honour it. Level
//! triggered: a change to a budget, a pod or a workload recomputes every budget, and only
//! changed statuses are written.

use crate::Ctx;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// How long an eviction's entry in `disruptedPods` holds a disruption before the pod is
/// expected to be gone (upstream's DeletionTimeout).
const DELETION_TIMEOUT: i64 = 120;

pub fn start(ctx: Arc<Ctx>) {
    let pdbs = ctx.informers.get::<PodDisruptionBudget>();
    let pods = ctx.informers.get::<Pod>();
    let rss = ctx.informers.get::<ReplicaSet>();
    let sts = ctx.informers.get::<StatefulSet>();
    let wake = Arc::new(tokio::sync::Notify::new());
    pdbs.wake_on_change(&wake);
    pods.wake_on_change(&wake);
    rss.wake_on_change(&wake);
    sts.wake_on_change(&wake);
    tokio::spawn(async move {
        pdbs.wait_synced().await;
        pods.wait_synced().await;
        rss.wait_synced().await;
        sts.wait_synced().await;
        loop {
            let all_pods = pods.list();
            let now = jiff::Timestamp::now();
            for pdb in pdbs.list() {
                let ns = pdb.metadata.namespace.clone().unwrap_or_default();
                let in_ns: Vec<&Arc<Pod>> = all_pods
                    .iter()
                    .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
                    .collect();
                let scale = |kind: &str, name: &str| -> Option<i32> {
                    match kind {
                        "ReplicaSet" => rss.get(&ns, name)?.spec.as_ref()?.replicas,
                        "StatefulSet" => sts.get(&ns, name)?.spec.as_ref()?.replicas,
                        _ => None,
                    }
                };
                let want = status_of(&pdb, &in_ns, &scale, now);
                if pdb.status.as_ref().map(comparable) == Some(comparable(&want)) {
                    continue;
                }
                let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
                let patch = serde_json::json!({"status": want});
                if let Err(e) = api
                    .patch_status(
                        pdb.metadata.name.as_deref().unwrap_or_default(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    tracing::debug!(error = %e, "updating a PodDisruptionBudget's status");
                }
            }
            tokio::select! {
                _ = wake.notified() => tokio::time::sleep(Duration::from_millis(50)).await,
                // Entries of disruptedPods expire with time alone.
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
    });
}

/// The status without its timestamps, to tell whether a write is needed.
type Comparable = (
    Option<i32>,
    Option<i32>,
    Option<i32>,
    Option<i32>,
    Option<i64>,
    Vec<String>,
);

fn comparable(s: &PodDisruptionBudgetStatus) -> Comparable {
    (
        s.current_healthy,
        s.desired_healthy,
        s.disruptions_allowed,
        s.expected_pods,
        s.observed_generation,
        s.disrupted_pods
            .as_ref()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
    )
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `v` of `total` (a count, or a percentage rounded up, as upstream).
fn scaled(v: &IntOrString, total: i32) -> i32 {
    match v {
        IntOrString::Int(i) => *i,
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            ((pct * total as i64 + 99) / 100) as i32
        }
    }
}

/// A budget's status from its namespace's pods; `scale(kind, name)` is a workload's
/// `spec.replicas`.
pub fn status_of(
    pdb: &PodDisruptionBudget,
    pods: &[&Arc<Pod>],
    scale: &dyn Fn(&str, &str) -> Option<i32>,
    now: jiff::Timestamp,
) -> PodDisruptionBudgetStatus {
    let spec = pdb.spec.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    let matching: Vec<&Arc<Pod>> = match &spec.selector {
        // A null selector selects nothing (policy/v1).
        None => Vec::new(),
        Some(sel) => pods
            .iter()
            .copied()
            .filter(|p| {
                kite_runtime::labels::matches(sel, p.metadata.labels.as_ref().unwrap_or(&empty))
            })
            .collect(),
    };
    // What the pods' workloads want: each controller's scale once.
    let expected_by_controllers = || -> i32 {
        let mut seen = HashSet::new();
        let mut total = 0;
        for p in &matching {
            let owner = p
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true));
            match owner {
                Some(o) => {
                    if seen.insert((o.kind.clone(), o.name.clone())) {
                        total += scale(&o.kind, &o.name).unwrap_or(1);
                    }
                }
                None => total += 1,
            }
        }
        total
    };
    let (expected, desired) = match (&spec.max_unavailable, &spec.min_available) {
        (Some(mu), _) => {
            let e = expected_by_controllers();
            (e, (e - scaled(mu, e)).max(0))
        }
        (None, Some(IntOrString::Int(m))) => (matching.len() as i32, *m),
        (None, Some(pct)) => {
            let e = expected_by_controllers();
            (e, scaled(pct, e))
        }
        (None, None) => (matching.len() as i32, 0),
    };
    // Evictions still in flight count as disrupted until their pod goes (or times out).
    let names: HashSet<&str> = matching
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    let disrupted: BTreeMap<String, Time> = pdb
        .status
        .as_ref()
        .and_then(|s| s.disrupted_pods.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(n, t)| {
            names.contains(n.as_str()) && now.as_second() - t.0.as_second() < DELETION_TIMEOUT
        })
        .collect();
    let healthy = matching
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && is_ready(p)
                && !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or_default())
        })
        .count() as i32;
    let allowed = (healthy - desired).max(0);
    let generation = pdb.metadata.generation;
    let allowed_now = allowed > 0;
    let old = pdb
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionAllowed"));
    let since = old
        .filter(|c| (c.status == "True") == allowed_now)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodDisruptionBudgetStatus {
        current_healthy: Some(healthy),
        desired_healthy: Some(desired),
        disruptions_allowed: Some(allowed),
        expected_pods: Some(expected),
        observed_generation: generation,
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        conditions: Some(vec![Condition {
            type_: "DisruptionAllowed".into(),
            status: if allowed_now { "True" } else { "False" }.into(),
            reason: if allowed_now {
                "SufficientPods"
            } else {
                "InsufficientPods"
            }
            .into(),
            message: String::new(),
            observed_generation: generation,
            last_transition_time: since,
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};

    fn pod(name: &str, ready: bool, rs: &str) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                owner_references: Some(vec![OwnerReference {
                    kind: "ReplicaSet".into(),
                    name: rs.into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn pdb(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: kube::api::ObjectMeta {
                name: Some("b".into()),
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min,
                max_unavailable: max,
                selector: Some(LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn budgets_count_healthy_pods_against_what_is_desired() {
        let now = jiff::Timestamp::now();
        let ps = [
            pod("a", true, "rs"),
            pod("b", true, "rs"),
            pod("c", false, "rs"),
        ];
        let refs: Vec<&Arc<Pod>> = ps.iter().collect();
        let scale = |_: &str, _: &str| Some(4);
        let s = status_of(&pdb(Some(IntOrString::Int(2)), None), &refs, &scale, now);
        assert_eq!(
            (
                s.expected_pods,
                s.desired_healthy,
                s.current_healthy,
                s.disruptions_allowed
            ),
            (Some(3), Some(2), Some(2), Some(0))
        );
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.conditions.as_ref().unwrap()[0].reason, "InsufficientPods");
        let s = status_of(&pdb(Some(IntOrString::Int(1)), None), &refs, &scale, now);
        assert_eq!(s.disruptions_allowed, Some(1));
        // maxUnavailable counts against the workload's scale (4): 4 - 1 = 3 desired.
        let s = status_of(&pdb(None, Some(IntOrString::Int(1))), &refs, &scale, now);
        assert_eq!(
            (s.expected_pods, s.desired_healthy, s.disruptions_allowed),
            (Some(4), Some(3), Some(0))
        );
        // 50% of 4, rounded up.
        let s = status_of(
            &pdb(Some(IntOrString::String("50%".into())), None),
            &refs,
            &scale,
            now,
        );
        assert_eq!(
            (s.desired_healthy, s.disruptions_allowed),
            (Some(2), Some(0))
        );
    }

    #[test]
    fn an_eviction_in_flight_holds_a_disruption_until_it_times_out() {
        let now = jiff::Timestamp::now();
        let ps = [pod("a", true, "rs"), pod("b", true, "rs")];
        let refs: Vec<&Arc<Pod>> = ps.iter().collect();
        let mut b = pdb(Some(IntOrString::Int(1)), None);
        b.status = Some(PodDisruptionBudgetStatus {
            disrupted_pods: Some([("a".to_string(), Time(now))].into()),
            ..Default::default()
        });
        let s = status_of(&b, &refs, &|_, _| None, now);
        assert_eq!(
            (s.current_healthy, s.disruptions_allowed),
            (Some(1), Some(0))
        );
        let later = now
            .checked_add(jiff::SignedDuration::from_secs(DELETION_TIMEOUT + 1))
            .unwrap();
        let s = status_of(&b, &refs, &|_, _| None, later);
        assert_eq!(
            (s.current_healthy, s.disruptions_allowed),
            (Some(2), Some(1))
        );
        assert!(s.disrupted_pods.is_none());
    }
}
