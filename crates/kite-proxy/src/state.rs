//! What the kernel holds, Service by Service, so that a sync recomputes and rewrites only
//! the Services whose objects changed: at 10,000 Services an endpoint change costs the
//! ports and rules of one Service, not of all of them (kube-proxy's partial syncs).
//!
//! A Service's fingerprint is its resourceVersion and those of its EndpointSlices: the
//! informers hand out each new version of an object with a new resourceVersion, so an
//! equal fingerprint means equal objects (an object without one is always recomputed).
//! Map and set elements may be shared by Services (a pod behind two Services is one
//! `hairpin` pair), so they are counted: an element is added when its first user comes
//! and deleted when its last one goes.

use crate::model::{self, ServicePort};
use crate::rules::{Ruleset, Settings};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::HashMap;

/// The resourceVersions a Service's ports and rules were computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    service: String,
    slices: Vec<(String, String)>,
}

impl Fingerprint {
    /// Whether `svc` and `slices` are the versions this was taken from (no allocation:
    /// it runs for every Service on every sync).
    fn matches(&self, svc: &Service, slices: &[&EndpointSlice]) -> bool {
        if svc.metadata.resource_version.as_deref() != Some(self.service.as_str())
            || slices.len() != self.slices.len()
        {
            return false;
        }
        slices.iter().all(|s| {
            let (Some(name), Some(rv)) = (&s.metadata.name, &s.metadata.resource_version) else {
                return false;
            };
            (self
                .slices
                .binary_search_by(|(n, _)| n.as_str().cmp(name.as_str())))
            .is_ok_and(|i| self.slices[i].1 == *rv)
        })
    }
}

fn fingerprint(svc: &Service, slices: &[&EndpointSlice]) -> Option<Fingerprint> {
    let mut out = Fingerprint {
        service: svc.metadata.resource_version.clone()?,
        slices: Vec::with_capacity(slices.len()),
    };
    for s in slices {
        out.slices.push((
            s.metadata.name.clone()?,
            s.metadata.resource_version.clone()?,
        ));
    }
    out.slices.sort();
    Some(out)
}

/// A Service's key: `namespace/name`.
type ServiceKey = String;

/// The Services' slots in the shared endpoint maps (see `rules::Ruleset::build_in`).
#[derive(Debug, Clone, Default)]
struct Slots {
    next: u32,
    free: Vec<u16>,
}

impl Slots {
    /// A free slot; none once all 65,536 are taken (such a Service's rules use maps of
    /// their own).
    fn take(&mut self) -> Option<u16> {
        if let Some(s) = self.free.pop() {
            return Some(s);
        }
        let s = u16::try_from(self.next).ok()?;
        self.next += 1;
        Some(s)
    }
}

/// One Service as programmed.
#[derive(Debug, Clone)]
struct Entry {
    slot: Option<u16>,
    fingerprint: Option<Fingerprint>,
    ports: Vec<ServicePort>,
    rules: Ruleset,
}

type Element = (&'static str, String);

fn elements(r: &Ruleset) -> impl Iterator<Item = Element> + '_ {
    (r.elements.iter()).flat_map(|(m, es)| es.iter().map(move |e| (*m, e.clone())))
}

/// The Services the kernel has, with the rules each contributed.
#[derive(Debug, Default)]
pub struct Programmed {
    entries: HashMap<ServiceKey, Entry>,
    /// How many Services hold each element.
    users: HashMap<Element, u32>,
    slots: Slots,
    /// Whether the kernel's table is the one `entries` describe; when not (first sync, a
    /// failed transaction), the next plan makes the table whole.
    in_kernel: bool,
}

/// What one sync does: the transactions, and what changed.
#[derive(Debug)]
pub struct Plan {
    /// `nft -f` transactions, in order: one for a change; the whole table is written in
    /// several, since one transaction with thousands of Services costs the kernel time
    /// that grows with the square of its size.
    pub scripts: Vec<String>,
    /// The ports of the Services that changed, before and after (for stale UDP flows).
    pub old_ports: Vec<ServicePort>,
    pub new_ports: Vec<ServicePort>,
    /// Services that changed: their new entry, or `None` when gone.
    changed: Vec<(ServiceKey, Option<Entry>)>,
    /// The slots once the new Services have theirs.
    slots: Slots,
}

/// Lines per transaction when the whole table is written.
const LINES_PER_TRANSACTION: usize = 2000;

impl Programmed {
    /// Services programmed (or to be, after a failed sync).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The sync that takes the kernel from what it has to what `services` and `slices`
    /// ask for.
    pub fn plan(
        &self,
        services: &[&Service],
        slices: &[&EndpointSlice],
        node: &str,
        s: &Settings,
    ) -> Plan {
        let by_service = model::slices_by_service(slices, s.family());
        let mut changed = Vec::new();
        let mut key = String::new();
        let mut kept = 0;
        let mut slots = self.slots.clone();
        for svc in services {
            let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
            let name = svc.metadata.name.as_deref().unwrap_or_default();
            let svc_slices = by_service.get(&(ns, name)).map_or(&[][..], |v| &v[..]);
            key.clear();
            key.push_str(ns);
            key.push('/');
            key.push_str(name);
            let old = self.entries.get(key.as_str());
            if let Some(old) = old {
                kept += 1;
                if (old.fingerprint.as_ref()).is_some_and(|f| f.matches(svc, svc_slices)) {
                    continue;
                }
            }
            let slot = old.map_or_else(|| slots.take(), |o| o.slot);
            let fp = fingerprint(svc, svc_slices);
            let ports = model::ports_of(svc, svc_slices, node, s.family());
            let rules = Ruleset::build_in(&ports, s, slot);
            changed.push((
                key.clone(),
                Some(Entry {
                    slot,
                    fingerprint: fp,
                    ports,
                    rules,
                }),
            ));
        }
        if kept < self.entries.len() {
            // Some Services are gone: find them.
            let now: std::collections::HashSet<(&str, &str)> = (services.iter())
                .map(|s| {
                    let m = &s.metadata;
                    (
                        m.namespace.as_deref().unwrap_or_default(),
                        m.name.as_deref().unwrap_or_default(),
                    )
                })
                .collect();
            for key in self.entries.keys() {
                let (ns, name) = key.split_once('/').unwrap_or_default();
                if !now.contains(&(ns, name)) {
                    changed.push((key.clone(), None));
                }
            }
        }
        let mut old_ports = Vec::new();
        let mut new_ports = Vec::new();
        for (key, new) in &changed {
            if let Some(o) = self.entries.get(key) {
                old_ports.extend(o.ports.iter().cloned());
            }
            if let Some(n) = new {
                new_ports.extend(n.ports.iter().cloned());
            }
        }
        let scripts = if self.in_kernel {
            let script = self.delta(&changed, s);
            if script.is_empty() {
                vec![]
            } else {
                vec![script]
            }
        } else {
            crate::nft::chunks(&self.whole(&changed).script(None, s), LINES_PER_TRANSACTION)
        };
        Plan {
            scripts,
            old_ports,
            new_ports,
            changed,
            slots,
        }
    }

    /// The transaction for the changed Services alone: their old rules to their new
    /// ones, with elements added and deleted only as their first user comes and their
    /// last one goes.
    fn delta(&self, changed: &[(ServiceKey, Option<Entry>)], s: &Settings) -> String {
        let mut old = Ruleset::default();
        let mut new = Ruleset::default();
        let mut users_delta: HashMap<Element, i64> = HashMap::new();
        for (key, entry) in changed {
            if let Some(o) = self.entries.get(key) {
                old.merge(&o.rules);
                for e in elements(&o.rules) {
                    *users_delta.entry(e).or_default() -= 1;
                }
            }
            if let Some(n) = entry {
                new.merge(&n.rules);
                for e in elements(&n.rules) {
                    *users_delta.entry(e).or_default() += 1;
                }
            }
        }
        let before = |e: &Element| i64::from(self.users.get(e).copied().unwrap_or(0));
        let after = |e: &Element| before(e) + users_delta.get(e).copied().unwrap_or(0);
        // Kept by another Service: not deleted. Already there: not added again.
        for (map, es) in old.elements.iter_mut() {
            es.retain(|e| after(&(*map, e.clone())) == 0);
        }
        for (map, es) in new.elements.iter_mut() {
            es.retain(|e| before(&(*map, e.clone())) == 0);
        }
        new.script(Some(&old), s)
    }

    /// Every Service's rules, the changes applied.
    fn whole(&self, changed: &[(ServiceKey, Option<Entry>)]) -> Ruleset {
        let touched: std::collections::HashSet<&ServiceKey> =
            changed.iter().map(|(k, _)| k).collect();
        let mut all = Ruleset::default();
        for (key, e) in &self.entries {
            if !touched.contains(key) {
                all.merge(&e.rules);
            }
        }
        for e in changed.iter().filter_map(|(_, e)| e.as_ref()) {
            all.merge(&e.rules);
        }
        all
    }

    /// The plan's transactions were applied: the kernel has what it described.
    pub fn commit(&mut self, plan: Plan) {
        self.slots = plan.slots;
        for (key, entry) in plan.changed {
            if let Some(o) = self.entries.remove(&key) {
                if entry.is_none() {
                    self.slots.free.extend(o.slot);
                }
                for e in elements(&o.rules) {
                    if let Some(n) = self.users.get_mut(&e) {
                        *n -= 1;
                        if *n == 0 {
                            self.users.remove(&e);
                        }
                    }
                }
            }
            if let Some(n) = entry {
                for e in elements(&n.rules) {
                    *self.users.entry(e).or_default() += 1;
                }
                self.entries.insert(key, n);
            }
        }
        self.in_kernel = true;
    }

    /// A transaction failed, or the table is gone: the kernel's table is not known, and
    /// the next plan writes it whole.
    pub fn forget(&mut self) {
        self.in_kernel = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::for_tests()
    }

    fn service(name: &str, ip: &str, rv: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": name, "resourceVersion": rv},
            "spec": {"clusterIP": ip, "ports": [{"port": 80, "protocol": "TCP"}]}
        }))
        .unwrap()
    }

    fn slice(svc: &str, ips: &[&str], rv: &str) -> EndpointSlice {
        let eps: Vec<_> = (ips.iter())
            .map(|ip| serde_json::json!({"addresses": [ip], "nodeName": "n1"}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": format!("{svc}-x"), "resourceVersion": rv,
                         "labels": {model::SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4",
            "ports": [{"port": 8080, "protocol": "TCP"}],
            "endpoints": eps
        }))
        .unwrap()
    }

    fn plan(p: &Programmed, svcs: &[Service], slices: &[EndpointSlice]) -> Plan {
        let svcs: Vec<&Service> = svcs.iter().collect();
        let slices: Vec<&EndpointSlice> = slices.iter().collect();
        p.plan(&svcs, &slices, "n1", &settings())
    }

    #[test]
    fn only_changed_services_are_rewritten_and_shared_elements_are_counted() {
        let mut p = Programmed::default();
        // One pod (10.42.0.5) behind two Services.
        let svcs = [
            service("a", "10.43.0.10", "1"),
            service("b", "10.43.0.11", "1"),
        ];
        let slices = [
            slice("a", &["10.42.0.5"], "1"),
            slice("b", &["10.42.0.5", "10.42.0.6"], "1"),
        ];
        let first = plan(&p, &svcs, &slices);
        assert!(first.scripts[0].starts_with("add table ip kite-proxy\ndelete table"));
        // Each Service its own slot in the shared endpoints map (b has two endpoints).
        let whole = first.scripts.concat();
        assert!(
            whole.contains("numgen random mod 2 offset 65536 map @endpoints-1"),
            "{whole}"
        );
        assert!(
            whole.contains("65536 : 10.42.0.5 . 8080, 65537 : 10.42.0.6 . 8080"),
            "{whole}"
        );
        p.commit(first);
        assert_eq!(p.len(), 2);
        let again = plan(&p, &svcs, &slices);
        assert!(again.scripts.is_empty(), "{:?}", again.scripts);
        p.commit(again);

        // a's pod goes from a: b still has it, so its hairpin pair stays.
        let slices = [
            slice("a", &["10.42.0.7"], "2"),
            slice("b", &["10.42.0.5", "10.42.0.6"], "1"),
        ];
        let change = plan(&p, &svcs, &slices);
        let script = change.scripts.join("");
        assert!(!script.contains("/b/"), "b is untouched: {script}");
        assert!(
            !script.contains("delete element ip kite-proxy hairpin"),
            "{script}"
        );
        assert!(script.contains("add element ip kite-proxy hairpin { 10.42.0.7 . 10.42.0.7 }"));
        assert_eq!(change.old_ports.len(), 1);
        p.commit(change);

        // b goes: its pods' pairs go too, but not a's.
        let change = plan(&p, &svcs[..1], &slices[..1]);
        let script = change.scripts.join("");
        assert!(script.contains("delete element ip kite-proxy hairpin { 10.42.0.5 . 10.42.0.5, 10.42.0.6 . 10.42.0.6 }"), "{script}");
        assert!(!script.contains("10.42.0.7"), "{script}");
        p.commit(change);
        assert_eq!(p.len(), 1);

        // After a failure the table is written whole again.
        p.forget();
        let whole = plan(&p, &svcs[..1], &slices[..1]);
        assert!(whole.scripts[0].contains("delete table ip kite-proxy"));
        assert!(whole.scripts.join("").contains("10.42.0.7 . 10.42.0.7"));
    }

    #[test]
    fn objects_without_resource_versions_are_always_recomputed() {
        let mut p = Programmed::default();
        let svcs = [service("a", "10.43.0.10", "1")];
        let mut slices = [slice("a", &["10.42.0.5"], "1")];
        slices[0].metadata.resource_version = None;
        let first = plan(&p, &svcs, &slices);
        p.commit(first);
        let again = plan(&p, &svcs, &slices);
        assert_eq!(again.changed.len(), 1);
        assert!(again.scripts.is_empty(), "recomputed, but nothing to write");
    }
}
