//! A pod's QoS class (Guaranteed, Burstable, BestEffort) by upstream's rules: the API
//! server writes it to `status.qosClass` when the pod is made, and the kubelet places the
//! pod's cgroup by it.

use crate::quantity::parse_milli;
use std::collections::BTreeMap;

/// One container's requests and limits, as (resource name, quantity) pairs.
#[derive(Debug, Default, Clone)]
pub struct Resources {
    pub requests: Vec<(String, String)>,
    pub limits: Vec<(String, String)>,
}

impl Resources {
    /// From a container's JSON (`resources.requests` / `resources.limits`; a quantity
    /// may be a JSON number).
    pub fn of_json(c: &serde_json::Value) -> Resources {
        let pairs = |m: &serde_json::Value| -> Vec<(String, String)> {
            m.as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), crate::quantity::text_of(v)))
                .collect()
        };
        Resources {
            requests: pairs(&c["resources"]["requests"]),
            limits: pairs(&c["resources"]["limits"]),
        }
    }
}

/// The class of a pod with these containers (init containers included), as upstream's
/// ComputePodQOS: only cpu and memory count, and only quantities above zero; the pod is
/// Guaranteed when every container limits both and the pod's summed requests equal its
/// summed limits, BestEffort when nothing is requested or limited, else Burstable.
pub fn qos_class(containers: impl IntoIterator<Item = Resources>) -> &'static str {
    let counted = |name: &str| name == "cpu" || name == "memory";
    let mut requests: BTreeMap<String, i128> = BTreeMap::new();
    let mut limits: BTreeMap<String, i128> = BTreeMap::new();
    let mut guaranteed = true;
    for c in containers {
        for (name, q) in c.requests.iter().filter(|(n, _)| counted(n)) {
            if let Some(v) = parse_milli(q).filter(|v| *v > 0) {
                *requests.entry(name.clone()).or_default() += v;
            }
        }
        let mut limited = Vec::new();
        for (name, q) in c.limits.iter().filter(|(n, _)| counted(n)) {
            if let Some(v) = parse_milli(q).filter(|v| *v > 0) {
                *limits.entry(name.clone()).or_default() += v;
                limited.push(name.as_str());
            }
        }
        if !(limited.contains(&"cpu") && limited.contains(&"memory")) {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed
        && requests.len() == limits.len()
        && requests.iter().all(|(n, r)| limits.get(n) == Some(r))
    {
        return "Guaranteed";
    }
    "Burstable"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(req: &[(&str, &str)], lim: &[(&str, &str)]) -> Resources {
        let own = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        Resources {
            requests: own(req),
            limits: own(lim),
        }
    }

    #[test]
    fn classes_as_upstream() {
        assert_eq!(qos_class([c(&[], &[])]), "BestEffort");
        // Only cpu and memory count, and zero counts as unset.
        assert_eq!(
            qos_class([c(&[("ephemeral-storage", "1Gi"), ("cpu", "0")], &[])]),
            "BestEffort"
        );
        let both = [("cpu", "1"), ("memory", "1Gi")];
        assert_eq!(qos_class([c(&both, &both)]), "Guaranteed");
        assert_eq!(
            qos_class([c(&[("cpu", "1000m"), ("memory", "1024Mi")], &both)]),
            "Guaranteed"
        );
        assert_eq!(qos_class([c(&both, &both), c(&[], &[])]), "Burstable");
        assert_eq!(qos_class([c(&[("cpu", "500m")], &both)]), "Burstable");
        assert_eq!(
            qos_class([c(&[("cpu", "1")], &[("cpu", "1")])]),
            "Burstable"
        );
    }
}
