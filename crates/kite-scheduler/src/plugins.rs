//! Filter and score plugins, named and behaving as upstream's default profile:
//! filters NodeUnschedulable, NodeAffinity (nodeSelector and required affinity),
//! TaintToleration, NodeResourcesFit, NodePorts, InterPodAffinity and PodTopologySpread;
//! scores LeastAllocated, BalancedAllocation, NodeAffinity, InterPodAffinity,
//! TaintToleration and PodTopologySpread, each normalised to 0..=100 and weighted as
//! upstream weighs them.

use crate::cache::{Cache, NodeInfo, PodInfo};
use k8s_openapi::api::core::v1::{
    Node, PodAffinityTerm, Taint, Toleration, TopologySpreadConstraint,
};
use kite_runtime::labels::{self, Labels};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Why a node was rejected; `resolvable` says whether removing pods could help
/// (preemption only considers nodes where it could), `pod_added_helps` whether a pod
/// arriving could (pod affinity, topology spread).
#[derive(Debug, Clone)]
pub struct Rejection {
    pub reasons: Vec<String>,
    pub resolvable: bool,
    pub pod_added_helps: bool,
}

impl Rejection {
    /// Only a change to the node can help.
    fn hard(r: impl Into<String>) -> Self {
        Rejection {
            reasons: vec![r.into()],
            resolvable: false,
            pod_added_helps: false,
        }
    }

    /// Removing pods from the node could help.
    fn resolvable(reasons: Vec<String>) -> Self {
        Rejection {
            reasons,
            resolvable: true,
            pod_added_helps: false,
        }
    }
}

/// Whether any of `tols` tolerates `taint`.
pub fn tolerates(tols: &[Toleration], taint: &Taint) -> bool {
    tols.iter().any(|t| labels::tolerates(t, taint))
}

fn tolerations(p: &PodInfo) -> &[Toleration] {
    p.pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

fn node_taints(n: &NodeInfo) -> &[Taint] {
    n.node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

/// nodeSelector and required node affinity.
pub fn node_affinity_matches(p: &PodInfo, labels_: &Labels, node_name: &str) -> bool {
    let spec = p.pod.spec.as_ref();
    if let Some(sel) = spec.and_then(|s| s.node_selector.as_ref()) {
        if !labels::matches_map(sel, labels_) {
            return false;
        }
    }
    let req = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match req {
        Some(r) => r
            .node_selector_terms
            .iter()
            .any(|t| labels::term_matches(t, labels_, node_name)),
        None => true,
    }
}

/// State computed once per scheduling attempt for the pod being scheduled.
pub struct PreFilter<'a> {
    pod: &'a PodInfo,
    /// Required affinity terms and, per term, topology values holding a matching pod.
    affinity: Vec<(&'a PodAffinityTerm, HashSet<String>)>,
    /// Whether any pod in the cluster matches each affinity term (first-pod exception).
    affinity_any: bool,
    anti_affinity: Vec<(&'a PodAffinityTerm, HashSet<String>)>,
    /// Per topologyKey, the values where an existing pod's anti-affinity rejects this pod.
    existing_anti: HashMap<String, HashSet<String>>,
    spread: Vec<Spread<'a>>,
}

struct Spread<'a> {
    c: &'a TopologySpreadConstraint,
    counts: HashMap<String, i64>,
    min: i64,
    self_match: bool,
}

fn term_namespaces(t: &PodAffinityTerm, own_ns: &str) -> Option<HashSet<String>> {
    // A namespaceSelector (even empty: all namespaces) widens the set; we treat a present
    // selector as "all namespaces" when empty and ignore it otherwise for now.
    if let Some(sel) = &t.namespace_selector {
        if labels::is_empty(sel) {
            return None;
        }
    }
    let mut s: HashSet<String> = t.namespaces.iter().flatten().cloned().collect();
    if s.is_empty() {
        s.insert(own_ns.to_string());
    }
    Some(s)
}

fn term_selects(t: &PodAffinityTerm, owner_ns: &str, other: &PodInfo) -> bool {
    if let Some(ns) = term_namespaces(t, owner_ns) {
        if !ns.contains(&other.namespace) {
            return false;
        }
    }
    match &t.label_selector {
        Some(sel) => labels::matches(sel, other.labels()),
        None => false,
    }
}

fn required_terms(p: &PodInfo, anti: bool) -> &[PodAffinityTerm] {
    let a = p.pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    if anti {
        a.and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default()
    } else {
        a.and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default()
    }
}

impl<'a> PreFilter<'a> {
    pub fn new(pod: &'a PodInfo, cache: &Cache) -> Self {
        let mut pf = PreFilter {
            pod,
            affinity: required_terms(pod, false)
                .iter()
                .map(|t| (t, HashSet::new()))
                .collect(),
            affinity_any: false,
            anti_affinity: required_terms(pod, true)
                .iter()
                .map(|t| (t, HashSet::new()))
                .collect(),
            existing_anti: HashMap::new(),
            spread: Vec::new(),
        };
        // Only a pod with affinity terms of its own needs a scan of every placed pod.
        if !pf.affinity.is_empty() || !pf.anti_affinity.is_empty() {
            for ni in cache.nodes.values() {
                let nl = ni.labels();
                for other in ni.pods.values() {
                    for (t, vals) in pf.affinity.iter_mut().chain(pf.anti_affinity.iter_mut()) {
                        if term_selects(t, &pod.namespace, other) {
                            if let Some(v) = nl.get(&t.topology_key) {
                                vals.insert(v.clone());
                            }
                        }
                    }
                }
            }
        }
        for other in cache.anti_affinity.values() {
            let Some(ni) = cache.node_of(&other.uid).and_then(|n| cache.nodes.get(n)) else {
                continue;
            };
            for t in required_terms(other, true) {
                if term_selects(t, &other.namespace, pod) {
                    if let Some(v) = ni.labels().get(&t.topology_key) {
                        pf.existing_anti
                            .entry(t.topology_key.clone())
                            .or_default()
                            .insert(v.clone());
                    }
                }
            }
        }
        pf.affinity_any = pf.affinity.iter().all(|(_, v)| !v.is_empty());
        pf.spread = spread_state(pod, cache, "DoNotSchedule");
        pf
    }

    /// Every filter for one node.
    pub fn filter(&self, ni: &NodeInfo) -> Result<(), Rejection> {
        let p = self.pod;
        let node = &ni.node;
        let nl = ni.labels();
        let tols = tolerations(p);
        if node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
        {
            let t = Taint {
                key: "node.kubernetes.io/unschedulable".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            };
            if !tolerates(tols, &t) {
                return Err(Rejection::hard("node(s) were unschedulable"));
            }
        }
        for t in node_taints(ni) {
            if (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerates(tols, t) {
                return Err(Rejection::hard(format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    t.key,
                    t.value.as_deref().unwrap_or("")
                )));
            }
        }
        if !node_affinity_matches(p, nl, ni.name()) {
            return Err(Rejection::hard(
                "node(s) didn't match Pod's node affinity/selector",
            ));
        }
        let mut fit = Vec::new();
        let (a, r, want) = (&ni.allocatable, &ni.requested, &p.requests);
        if r.pods + 1 > a.pods {
            fit.push("Too many pods".to_string());
        }
        if want.cpu > 0 && r.cpu + want.cpu > a.cpu {
            fit.push("Insufficient cpu".into());
        }
        if want.memory > 0 && r.memory + want.memory > a.memory {
            fit.push("Insufficient memory".into());
        }
        if want.ephemeral > 0 && r.ephemeral + want.ephemeral > a.ephemeral {
            fit.push("Insufficient ephemeral-storage".into());
        }
        for (k, v) in &want.scalar {
            if *v > 0
                && r.scalar.get(k).copied().unwrap_or(0) + v > a.scalar.get(k).copied().unwrap_or(0)
            {
                fit.push(format!("Insufficient {k}"));
            }
        }
        for (proto, ip, port) in &p.host_ports {
            let clash = ni.pods.values().any(|o| {
                o.host_ports.iter().any(|(op, oip, oport)| {
                    oport == port
                        && op == proto
                        && (oip == ip || oip == "0.0.0.0" || ip == "0.0.0.0")
                })
            });
            if clash {
                fit.push("node(s) didn't have free ports for the requested pod ports".into());
                break;
            }
        }
        if !fit.is_empty() {
            return Err(Rejection::resolvable(fit));
        }
        // Inter-pod affinity. The first pod of a set may land anywhere its own labels
        // satisfy its terms (upstream's special case).
        for (t, vals) in &self.affinity {
            let ok = match nl.get(&t.topology_key) {
                Some(v) => vals.contains(v),
                None => false,
            };
            let self_ok = !self.affinity_any
                && nl.contains_key(&t.topology_key)
                && term_selects(t, &p.namespace, p);
            if !ok && !self_ok {
                return Err(Rejection {
                    pod_added_helps: true,
                    ..Rejection::hard("node(s) didn't match pod affinity rules")
                });
            }
        }
        for (t, vals) in &self.anti_affinity {
            if nl.get(&t.topology_key).is_some_and(|v| vals.contains(v)) {
                return Err(Rejection::resolvable(vec![
                    "node(s) didn't match pod anti-affinity rules".into(),
                ]));
            }
        }
        // Looked up by the few keys existing pods name, not by every label of the node.
        if self
            .existing_anti
            .iter()
            .any(|(k, vals)| nl.get(k).is_some_and(|v| vals.contains(v)))
        {
            return Err(Rejection::resolvable(vec![
                "node(s) didn't satisfy existing pods anti-affinity rules".into(),
            ]));
        }
        for s in &self.spread {
            let Some(v) = nl.get(&s.c.topology_key) else {
                return Err(Rejection::hard(
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                ));
            };
            let count = s.counts.get(v).copied().unwrap_or(0) + i64::from(s.self_match);
            if count - s.min > i64::from(s.c.max_skew) {
                return Err(Rejection {
                    pod_added_helps: true,
                    ..Rejection::resolvable(vec![
                        "node(s) didn't match pod topology spread constraints".into(),
                    ])
                });
            }
        }
        Ok(())
    }
}

fn constraints<'a>(p: &'a PodInfo, when: &str) -> Vec<&'a TopologySpreadConstraint> {
    p.pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|c| c.when_unsatisfiable == when)
        .collect()
}

/// Per constraint: matching pods per topology value over the nodes the pod could use.
fn spread_state<'a>(p: &'a PodInfo, cache: &Cache, when: &str) -> Vec<Spread<'a>> {
    constraints(p, when)
        .into_iter()
        .map(|c| {
            let mut counts: HashMap<String, i64> = HashMap::new();
            for ni in cache.nodes.values() {
                let nl = ni.labels();
                let Some(v) = nl.get(&c.topology_key) else {
                    continue;
                };
                // nodeAffinityPolicy (Honor by default) and nodeTaintsPolicy (Ignore by
                // default): which nodes count, as upstream's NodeInclusionPolicy.
                if c.node_affinity_policy.as_deref() != Some("Ignore")
                    && !node_affinity_matches(p, nl, ni.name())
                {
                    continue;
                }
                if c.node_taints_policy.as_deref() == Some("Honor")
                    && node_taints(ni).iter().any(|t| {
                        matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
                            && !tolerates(tolerations(p), t)
                    })
                {
                    continue;
                }
                let n = ni
                    .pods
                    .values()
                    .filter(|o| {
                        o.namespace == p.namespace
                            && o.pod.metadata.deletion_timestamp.is_none()
                            && c.label_selector
                                .as_ref()
                                .is_some_and(|s| labels::matches(s, o.labels()))
                    })
                    .count() as i64;
                *counts.entry(v.clone()).or_insert(0) += n;
            }
            let min = counts.values().copied().min().unwrap_or(0);
            let self_match = c
                .label_selector
                .as_ref()
                .is_some_and(|s| labels::matches(s, p.labels()));
            Spread {
                c,
                counts,
                min,
                self_match,
            }
        })
        .collect()
}

fn normalise(raw: &[i64], reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    let min = raw.iter().copied().min().unwrap_or(0);
    raw.iter()
        .map(|v| {
            if max == min {
                if reverse {
                    100
                } else if max == 0 {
                    0
                } else {
                    100
                }
            } else if reverse {
                (max - v) * 100 / (max - min)
            } else {
                (v - min) * 100 / (max - min)
            }
        })
        .collect()
}

/// Weighted total score of each feasible node.
pub fn score(p: &PodInfo, nodes: &[&NodeInfo], cache: &Cache) -> Vec<i64> {
    let n = nodes.len();
    let mut total = vec![0i64; n];
    // NodeResourcesFit (LeastAllocated) and BalancedAllocation, weight 1 each.
    for (i, ni) in nodes.iter().enumerate() {
        let a = &ni.allocatable;
        let r = &ni.non_zero_requested;
        let frac = |req: i128, alloc: i128| -> f64 {
            if alloc <= 0 {
                1.0
            } else {
                (req as f64 / alloc as f64).min(1.0)
            }
        };
        let fc = frac(r.cpu + p.non_zero.cpu, a.cpu);
        let fm = frac(r.memory + p.non_zero.memory, a.memory);
        let least = ((1.0 - fc) * 100.0 + (1.0 - fm) * 100.0) / 2.0;
        let balanced = (1.0 - (fc - fm).abs() / 2.0) * 100.0;
        total[i] += least as i64 + balanced as i64;
    }
    let spec = p.pod.spec.as_ref();
    // NodeAffinity preferred terms, weight 2.
    if let Some(pref) = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
    {
        let raw: Vec<i64> = nodes
            .iter()
            .map(|ni| {
                pref.iter()
                    .filter(|t| labels::term_matches(&t.preference, ni.labels(), ni.name()))
                    .map(|t| i64::from(t.weight))
                    .sum()
            })
            .collect();
        for (t, s) in total.iter_mut().zip(normalise(&raw, false)) {
            *t += 2 * s;
        }
    }
    // TaintToleration: fewer untolerated PreferNoSchedule taints is better, weight 3.
    let tols = tolerations(p);
    let raw: Vec<i64> = nodes
        .iter()
        .map(|ni| {
            node_taints(ni)
                .iter()
                .filter(|t| t.effect == "PreferNoSchedule" && !tolerates(tols, t))
                .count() as i64
        })
        .collect();
    for (t, s) in total.iter_mut().zip(normalise(&raw, true)) {
        *t += 3 * s;
    }
    // InterPodAffinity preferred terms, weight 2.
    let aff = spec.and_then(|s| s.affinity.as_ref());
    let mut weighted: Vec<(&PodAffinityTerm, i64)> = Vec::new();
    if let Some(a) = aff.and_then(|a| a.pod_affinity.as_ref()) {
        for w in a
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
        {
            weighted.push((&w.pod_affinity_term, i64::from(w.weight)));
        }
    }
    if let Some(a) = aff.and_then(|a| a.pod_anti_affinity.as_ref()) {
        for w in a
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
        {
            weighted.push((&w.pod_affinity_term, -i64::from(w.weight)));
        }
    }
    if !weighted.is_empty() {
        let mut by_topology: HashMap<(String, String), i64> = HashMap::new();
        for ni in cache.nodes.values() {
            for other in ni.pods.values() {
                for (t, w) in &weighted {
                    if term_selects(t, &p.namespace, other) {
                        if let Some(v) = ni.labels().get(&t.topology_key) {
                            *by_topology
                                .entry((t.topology_key.clone(), v.clone()))
                                .or_default() += w;
                        }
                    }
                }
            }
        }
        let raw: Vec<i64> = nodes
            .iter()
            .map(|ni| {
                ni.labels()
                    .iter()
                    .map(|(k, v)| {
                        by_topology
                            .get(&(k.clone(), v.clone()))
                            .copied()
                            .unwrap_or(0)
                    })
                    .sum()
            })
            .collect();
        for (t, s) in total.iter_mut().zip(normalise(&raw, false)) {
            *t += 2 * s;
        }
    }
    // PodTopologySpread (ScheduleAnyway): fewer matching pods in the node's domains is
    // better, weight 2.
    let soft = spread_state(p, cache, "ScheduleAnyway");
    if !soft.is_empty() {
        let raw: Vec<i64> = nodes
            .iter()
            .map(|ni| {
                soft.iter()
                    .map(|s| {
                        ni.labels()
                            .get(&s.c.topology_key)
                            .and_then(|v| s.counts.get(v))
                            .copied()
                            .unwrap_or(0)
                    })
                    .sum()
            })
            .collect();
        for (t, s) in total.iter_mut().zip(normalise(&raw, true)) {
            *t += 2 * s;
        }
    }
    total
}

/// Whether a node update can change which pods fit on it: its labels, taints,
/// unschedulable flag, allocatable resources or the type/status of its conditions.
/// Heartbeats (only `lastHeartbeatTime` moves) cannot, so, as upstream's queueing
/// hints, they do not send parked pods back to the queue, where each retry would
/// double their back-off for nothing.
pub fn node_scheduling_changed(old: &Node, new: &Node) -> bool {
    let conditions = |n: &Node| -> Vec<(String, String)> {
        let mut c: Vec<_> = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|cs| {
                cs.iter()
                    .map(|c| (c.type_.clone(), c.status.clone()))
                    .collect()
            })
            .unwrap_or_default();
        c.sort();
        c
    };
    let (os, ns) = (old.spec.as_ref(), new.spec.as_ref());
    old.metadata.labels != new.metadata.labels
        || os.and_then(|s| s.taints.as_ref()) != ns.and_then(|s| s.taints.as_ref())
        || os.and_then(|s| s.unschedulable) != ns.and_then(|s| s.unschedulable)
        || old.status.as_ref().and_then(|s| s.allocatable.as_ref())
            != new.status.as_ref().and_then(|s| s.allocatable.as_ref())
        || conditions(old) != conditions(new)
}

/// Upstream's summary: "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had …."
pub fn summary(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerations_match_taints() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let eq = Toleration {
            key: Some("k".into()),
            value: Some("v".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        };
        assert!(tolerates(std::slice::from_ref(&eq), &taint));
        let wrong = Toleration {
            value: Some("x".into()),
            ..eq.clone()
        };
        assert!(!tolerates(&[wrong], &taint));
        let all = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&[all], &taint));
        let other_effect = Toleration {
            effect: Some("NoExecute".into()),
            ..eq
        };
        assert!(!tolerates(&[other_effect], &taint));
    }

    #[test]
    fn only_scheduling_changes_of_a_node_count() {
        let n = |v: serde_json::Value| -> Node { serde_json::from_value(v).unwrap() };
        let base = n(serde_json::json!({
            "metadata": {"name": "a", "labels": {"x": "1"}},
            "status": {"allocatable": {"cpu": "1"}, "conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}]}
        }));
        let heartbeat = n(serde_json::json!({
            "metadata": {"name": "a", "labels": {"x": "1"}},
            "status": {"allocatable": {"cpu": "1"}, "conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:10Z"}]}
        }));
        assert!(!node_scheduling_changed(&base, &heartbeat));
        let mut labelled = base.clone();
        labelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("disk".into(), "ssd".into());
        assert!(node_scheduling_changed(&base, &labelled));
        let mut tainted = base.clone();
        tainted.spec.get_or_insert_with(Default::default).taints = Some(vec![Taint {
            key: "k".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]);
        assert!(node_scheduling_changed(&base, &tainted));
        let mut cordoned = base.clone();
        cordoned
            .spec
            .get_or_insert_with(Default::default)
            .unschedulable = Some(true);
        assert!(node_scheduling_changed(&base, &cordoned));
        let mut not_ready = heartbeat.clone();
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "Unknown".into();
        assert!(node_scheduling_changed(&base, &not_ready));
        let mut bigger = base.clone();
        bigger.status.as_mut().unwrap().allocatable = Some(
            [(
                "cpu".to_string(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("2".into()),
            )]
            .into(),
        );
        assert!(node_scheduling_changed(&base, &bigger));
    }

    #[test]
    fn summary_reads_like_upstream() {
        let mut m = BTreeMap::new();
        m.insert("Insufficient cpu".to_string(), 1);
        m.insert("node(s) had untolerated taint {a: b}".to_string(), 2);
        assert_eq!(
            summary(3, &m),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {a: b}."
        );
    }
}

#[cfg(test)]
mod placement_tests {
    use super::*;
    use crate::cache::{Cache, PodInfo};
    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::json;
    use std::sync::Arc;

    fn node(name: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"}}
            }))
            .unwrap(),
        )
    }

    fn pod(name: &str, app: &str, spec: serde_json::Value) -> Arc<PodInfo> {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "i"}]);
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": name, "labels": {"app": app}},
            "spec": spec
        }))
        .unwrap();
        Arc::new(PodInfo::new(Arc::new(p), 0))
    }

    fn term(app: &str) -> serde_json::Value {
        json!([{"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "kubernetes.io/hostname"}])
    }

    fn fits(cache: &Cache, p: &PodInfo) -> Vec<String> {
        let pf = PreFilter::new(p, cache);
        cache
            .nodes
            .values()
            .filter(|n| pf.filter(n).is_ok())
            .map(|n| n.name().to_string())
            .collect()
    }

    #[test]
    fn affinity_anti_affinity_and_spread() {
        let mut cache = Cache::default();
        cache.upsert_node(node("n1"));
        cache.upsert_node(node("n2"));
        let db = pod(
            "db",
            "db",
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term("web")}}}),
        );
        cache.add_pod("n1", db);
        // An existing pod's anti-affinity keeps web pods off its node.
        assert_eq!(fits(&cache, &pod("w1", "web", json!({}))), vec!["n2"]);
        // Required affinity to the db pod puts a cache pod on its node only.
        let near = pod(
            "c1",
            "cache",
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term("db")}}}),
        );
        assert_eq!(fits(&cache, &near), vec!["n1"]);
        // Own anti-affinity against db keeps it off n1.
        let away = pod(
            "x1",
            "x",
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term("db")}}}),
        );
        assert_eq!(fits(&cache, &away), vec!["n2"]);
        // Topology spread with maxSkew 1: two "s" pods on n1 leave only n2.
        cache.add_pod("n1", pod("s1", "s", json!({})));
        cache.add_pod("n1", pod("s2", "s", json!({})));
        let spread = pod(
            "s3",
            "s",
            json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "s"}}}]}),
        );
        assert_eq!(fits(&cache, &spread), vec!["n2"]);
        // Removing the db pod lifts its anti-affinity.
        cache.remove_pod("db");
        assert_eq!(fits(&cache, &pod("w2", "web", json!({}))), vec!["n1", "n2"]);
    }

    #[test]
    fn spread_counts_a_tainted_node_unless_the_constraint_honours_taints() {
        let mut cache = Cache::default();
        cache.upsert_node(node("n1"));
        cache.upsert_node(node("n2"));
        // A cordoned node: the unschedulable taint, no "t" pods.
        cache.upsert_node(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "n3", "labels": {"kubernetes.io/hostname": "n3"}},
                "spec": {"unschedulable": true, "taints": [
                    {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]},
                "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"}}
            }))
            .unwrap(),
        ));
        cache.add_pod("n1", pod("t1", "t", json!({})));
        cache.add_pod("n2", pod("t2", "t", json!({})));
        let spread = |policy: serde_json::Value| {
            let mut c = json!({"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "t"}}});
            if !policy.is_null() {
                c["nodeTaintsPolicy"] = policy;
            }
            pod("t3", "t", json!({"topologySpreadConstraints": [c]}))
        };
        // Ignore (the default): n3's zero pods hold the others to one; n3 itself is tainted.
        assert!(fits(&cache, &spread(serde_json::Value::Null)).is_empty());
        // Honor: a node whose taints the pod does not tolerate does not count.
        let mut honoured = fits(&cache, &spread(json!("Honor")));
        honoured.sort();
        assert_eq!(honoured, vec!["n1", "n2"]);
    }
}
