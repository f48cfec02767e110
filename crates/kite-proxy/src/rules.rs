//! The nftables ruleset for a set of Service ports, modelled on kube-proxy's nftables mode
//! (table `ip kite-proxy`, and `ip6 kite-proxy` for a dual-stack node's IPv6 Services): fixed base chains that jump to `services` (DNAT through the
//! `service-ips` and `service-nodeports` verdict maps), a chain per Service port
//! (`service-…`: one DNAT to a random endpoint, the endpoints in one of 64 shared maps),
//! per external entry point
//! (`external-…`: node ports, external and load-balancer IPs, with their traffic policy)
//! and, only for session affinity, per endpoint (`endpoint-…`). Where kube-proxy marks a
//! pod reaching itself for masquerade in each endpoint's chain, kite keeps the node's
//! endpoints in one set (`hairpin`, pairs `ip . ip`) that postrouting matches against
//! source and destination: fewer chains, and the kernel's check of every jump at each
//! commit stays small at 10,000 Services. Service ports without endpoints are rejected at
//! once (`no-endpoint-*` maps) and unknown ports of a cluster IP refused.
//! [`Ruleset::script`] turns the difference between two rulesets into one `nft -f`
//! transaction, so a change rewrites only the chains it touches.

use crate::model::{Endpoint, Family, ServicePort};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// The table's name (everything kite makes on a host is named `kite*`).
pub const TABLE: &str = "kite-proxy";

/// The packet mark bit that asks `masquerading` to SNAT (kube-proxy's 0x4000).
const MASQ: &str = "0x4000";

/// What the ruleset depends on besides the Service ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Pods' addresses: traffic from elsewhere to a cluster IP is masqueraded. Its family
    /// is the table's.
    pub cluster_cidr: ipnet::IpNet,
    /// Cluster IPs: what no Service holds is dropped.
    pub service_cidr: ipnet::IpNet,
}

impl Settings {
    /// The family this table serves.
    pub fn family(&self) -> Family {
        Family::of(self.cluster_cidr.addr())
    }
}

#[cfg(test)]
impl Settings {
    /// K3s's default ranges, for tests.
    pub(crate) fn for_tests() -> Settings {
        Settings {
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
            service_cidr: "10.43.0.0/16".parse().unwrap(),
        }
    }
}

/// The parts of the table that change with the Services.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Regular chains by name, with their rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Dynamic sets (session affinity) by name, with their declaration.
    pub sets: BTreeMap<String, String>,
    /// Elements of the fixed maps and sets, by map.
    pub elements: BTreeMap<&'static str, BTreeSet<String>>,
}

/// The table's fixed part: maps, sets and base chains. NodePorts answer on every local
/// address, 127.0.0.1 included (the bridge then needs `route_localnet`, see `lib.rs`);
/// as kube-proxy since CVE-2020-8558, packets for 127.0.0.0/8 that come from elsewhere
/// and were not DNATed are dropped, so pods cannot reach the host's loopback services.
fn skeleton(s: &Settings) -> String {
    let (pods, services) = (s.cluster_cidr, s.service_cidr);
    let (ip, a) = (s.family().nft(), s.family().addr_type());
    // IPv6 has no route_localnet: kube-proxy serves no node port on ::1 either; the rule
    // only keeps others off the host's loopback services.
    let lo = match s.family() {
        Family::V4 => "127.0.0.0/8",
        Family::V6 => "::1",
    };
    let endpoint_maps: String = (ENDPOINT_MAPS.iter())
        .map(|m| format!("  map {m} {{ typeof numgen random mod 2 : {ip} daddr . tcp dport; }}\n"))
        .collect();
    format!(
        "table {ip} {TABLE} {{
  map service-ips {{ type {a} . inet_proto . inet_service : verdict; }}
  map service-nodeports {{ type inet_proto . inet_service : verdict; }}
  map no-endpoint-services {{ type {a} . inet_proto . inet_service : verdict; }}
  map no-endpoint-nodeports {{ type inet_proto . inet_service : verdict; }}
  map firewall-ips {{ type {a} . inet_proto . inet_service : verdict; }}
  set cluster-ips {{ type {a}; }}
  set hairpin {{ type {a} . {a}; }}
{endpoint_maps}  chain reject-chain {{ reject; }}
  chain services {{
    {ip} daddr @cluster-ips {ip} saddr != {pods} meta mark set meta mark | {MASQ}
    {ip} daddr . meta l4proto . th dport vmap @service-ips
    fib daddr type local meta l4proto . th dport vmap @service-nodeports
  }}
  chain masquerading {{
    ct status dnat {ip} saddr . {ip} daddr @hairpin masquerade fully-random
    meta mark & {MASQ} != 0 meta mark set meta mark ^ {MASQ} masquerade fully-random
  }}
  chain service-endpoints-check {{ {ip} daddr . meta l4proto . th dport vmap @no-endpoint-services; }}
  chain nodeport-endpoints-check {{ fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports; }}
  chain cluster-ips-check {{ {ip} daddr @cluster-ips reject; {ip} daddr {services} drop; }}
  chain filter-input {{
    type filter hook input priority 0;
    {ip} daddr {lo} {ip} saddr != {lo} ct status & dnat != dnat drop
    ct state new jump nodeport-endpoints-check
    ct state new jump service-endpoints-check
  }}
  chain firewall-check {{ {ip} daddr . meta l4proto . th dport vmap @firewall-ips; }}
  chain filter-prerouting-pre-dnat {{ type filter hook prerouting priority -110; ct state new jump firewall-check; }}
  chain filter-output-pre-dnat {{ type filter hook output priority -110; ct state new jump firewall-check; }}
  chain filter-forward {{ type filter hook forward priority 0; ct state new jump service-endpoints-check; ct state new jump cluster-ips-check; }}
  chain filter-output {{ type filter hook output priority 0; ct state new jump service-endpoints-check; ct state new jump cluster-ips-check; }}
  chain nat-prerouting {{ type nat hook prerouting priority -100; jump services; }}
  chain nat-output {{ type nat hook output priority -100; jump services; }}
  chain nat-postrouting {{ type nat hook postrouting priority 100; jump masquerading; }}
}}
"
    )
}

/// `<ns>/<name>/<proto>/<port name or number>`: the part of a Service port's chain names
/// that says whose they are.
fn base(p: &ServicePort) -> String {
    let port = if p.port_name.is_empty() {
        p.port.to_string()
    } else {
        p.port_name.clone()
    };
    format!("{}/{}/{}/{port}", p.namespace, p.name, p.protocol.nft())
}

/// An address as chain and set names hold it (nft names take no `:`).
fn name_of(ip: &std::net::IpAddr) -> String {
    ip.to_string().replace(':', ".")
}

/// `ip:port`, or `[ip]:port` for IPv6, as a DNAT target.
fn target(e: &Endpoint) -> String {
    std::net::SocketAddr::new(e.ip, e.port).to_string()
}

fn endpoint_chain(base: &str, e: &Endpoint) -> String {
    format!("endpoint-{base}__{}/{}", name_of(&e.ip), e.port)
}

fn affinity_set(base: &str, e: &Endpoint) -> String {
    format!("affinity-{base}__{}/{}", name_of(&e.ip), e.port)
}

/// Endpoint lists in shared maps: a Service given slot `s` keeps its lists in map
/// `endpoints-<s % SHARDS>`, keyed `s << 16 | list << 12 | index`, so it has up to 16
/// lists of up to 4,096 endpoints there; longer lists, further ones, or a Service without
/// a slot use a map of their own in the rule. The maps are sharded because the kernel
/// checks each element added to a map against every rule that uses it, and each rule that
/// starts using a map against every element: one map for 10,000 Services made writing the
/// table quadratic (two minutes).
pub const SHARDS: u16 = 64;
struct Lists {
    slot: Option<u16>,
    used: u32,
}

const LIST_BITS: u32 = 12;

/// The shared maps' names, `endpoints-0` … (static, as element maps are named).
static ENDPOINT_MAPS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    (0..SHARDS)
        .map(|i| &*Box::leak(format!("endpoints-{i}").into_boxed_str()))
        .collect()
});
const MAX_LISTS: u32 = 1 << (16 - LIST_BITS);

impl Lists {
    /// The map and first key of a new list of `n` endpoints, if it fits in the slot.
    fn next(&mut self, n: usize) -> Option<(&'static str, u32)> {
        let slot = self.slot?;
        if n > 1 << LIST_BITS || self.used >= MAX_LISTS {
            return None;
        }
        let first = (u32::from(slot) << 16) | (self.used << LIST_BITS);
        self.used += 1;
        Some((ENDPOINT_MAPS[usize::from(slot % SHARDS)], first))
    }
}

impl Ruleset {
    /// The ruleset that serves `ports`, its endpoint lists in maps of their own.
    pub fn build(ports: &[ServicePort], s: &Settings) -> Ruleset {
        Self::build_in(ports, s, None)
    }

    /// The ruleset that serves `ports`, one Service's, its endpoint lists in the shared
    /// endpoint maps at `slot` (unique to the Service) when given. A rule that names
    /// a map of its own makes the kernel create an anonymous set, and the kernel names each
    /// new one by trying every set of the table: at 10,000 Services that made writing the
    /// whole table quadratic.
    pub fn build_in(ports: &[ServicePort], s: &Settings, slot: Option<u16>) -> Ruleset {
        let mut r = Ruleset::default();
        let mut lists = Lists { slot, used: 0 };
        for p in ports {
            r.add_port(p, s, &mut lists);
        }
        r
    }

    /// Adds `other`'s chains, sets and elements (another Service's: names do not meet).
    pub fn merge(&mut self, other: &Ruleset) {
        self.chains
            .extend(other.chains.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.sets
            .extend(other.sets.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (map, es) in &other.elements {
            self.elements
                .entry(map)
                .or_default()
                .extend(es.iter().cloned());
        }
    }

    fn element(&mut self, map: &'static str, e: String) {
        self.elements.entry(map).or_default().insert(e);
    }

    /// Rules that pick one of `eps` at random and DNAT to it. Without session affinity
    /// that is one rule, a DNAT through a map from a random number to an endpoint, so a
    /// Service port is one chain and one rule however many endpoints it has (the kernel
    /// checks every jump of the table on each commit: endpoint chains would make each
    /// change cost in proportion to all endpoints of all Services). With affinity each
    /// endpoint keeps a chain of its own that records the client (added too), and the
    /// client's endpoint is tried first.
    fn dispatch(
        &mut self,
        base: &str,
        p: &ServicePort,
        eps: &[Endpoint],
        lists: &mut Lists,
        family: Family,
    ) -> Vec<String> {
        let proto = p.protocol.nft();
        let ip = family.nft();
        for e in eps.iter().filter(|e| e.local) {
            // A pod reaching itself through the Service: its reply must come back
            // through the host, so it is masqueraded (see `masquerading`).
            self.element("hairpin", format!("{} . {}", e.ip, e.ip));
        }
        let Some(t) = p.affinity_seconds else {
            return vec![match eps {
                [e] => format!("meta l4proto {proto} dnat {ip} to {}", target(e)),
                _ => match lists.next(eps.len()) {
                    Some((map, first)) => {
                        for (i, e) in (0u32..).zip(eps) {
                            let entry = format!("{} : {} . {}", first + i, e.ip, e.port);
                            self.element(map, entry);
                        }
                        format!(
                            "meta l4proto {proto} dnat {ip} addr . port to numgen random mod {} offset {first} map @{map}",
                            eps.len()
                        )
                    }
                    None => {
                        let arms: Vec<String> = (eps.iter().enumerate())
                            .map(|(i, e)| format!("{i} : {} . {}", e.ip, e.port))
                            .collect();
                        format!(
                        "meta l4proto {proto} dnat {ip} addr . port to numgen random mod {} map {{ {} }}",
                        eps.len(),
                        arms.join(", ")
                    )
                    }
                },
            }];
        };
        let mut rules = Vec::new();
        for e in eps {
            let chain = endpoint_chain(base, e);
            let set = affinity_set(base, e);
            if !self.chains.contains_key(&chain) {
                self.sets.insert(
                    set.clone(),
                    format!(
                        "{{ type {}; flags dynamic,timeout; timeout {t}s; }}",
                        family.addr_type()
                    ),
                );
                self.chains.insert(
                    chain.clone(),
                    vec![
                        format!("update @{set} {{ {ip} saddr }}"),
                        format!("meta l4proto {proto} dnat {ip} to {}", target(e)),
                    ],
                );
            }
            rules.push(format!("{ip} saddr @{set} goto {chain}"));
        }
        let arms: Vec<String> = (eps.iter().enumerate())
            .map(|(i, e)| format!("{i} : goto {}", endpoint_chain(base, e)))
            .collect();
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            eps.len(),
            arms.join(", ")
        ));
        rules
    }

    fn add_port(&mut self, p: &ServicePort, s: &Settings, lists: &mut Lists) {
        let fam = s.family();
        let nf = fam.nft();
        let base = base(p);
        let proto = p.protocol.nft();
        let service = format!("service-{base}");
        let has_cluster = !p.cluster_endpoints.is_empty();
        if has_cluster {
            let rules = self.dispatch(&base, p, &p.cluster_endpoints.clone(), lists, fam);
            self.chains.insert(service.clone(), rules);
        }
        if let Some(ip) = p.cluster_ip {
            self.element("cluster-ips", ip.to_string());
            let key = format!("{ip} . {proto} . {}", p.port);
            if has_cluster {
                self.element("service-ips", format!("{key} : goto {service}"));
            } else {
                self.element("no-endpoint-services", format!("{key} : goto reject-chain"));
            }
        }
        if !p.external() {
            return;
        }
        // External traffic: with externalTrafficPolicy Local, only the node's own
        // endpoints (and no masquerade, so they see the client's address), except for
        // traffic from pods and from the node itself, which goes as to the cluster IP.
        let external = format!("external-{base}");
        let mut rules = Vec::new();
        let reachable = if p.external_local {
            if has_cluster {
                rules.push(format!("{nf} saddr {} goto {service}", s.cluster_cidr));
                rules.push(format!(
                    "fib saddr type local meta mark set meta mark | {MASQ}"
                ));
                rules.push(format!("fib saddr type local goto {service}"));
            }
            if p.local_endpoints.is_empty() {
                rules.push("drop".into());
            } else {
                let eps = p.local_endpoints.clone();
                rules.extend(self.dispatch(&base, p, &eps, lists, fam));
            }
            has_cluster || !p.local_endpoints.is_empty()
        } else if has_cluster && !p.internal_local {
            rules.push(format!("meta mark set meta mark | {MASQ}"));
            rules.push(format!("goto {service}"));
            true
        } else {
            // internalTrafficPolicy Local narrows the cluster IP only: external traffic
            // still goes to any ready endpoint.
            rules.push(format!("meta mark set meta mark | {MASQ}"));
            let all = p.all_endpoints.clone();
            if !all.is_empty() {
                rules.extend(self.dispatch(&base, p, &all, lists, fam));
            }
            !all.is_empty()
        };
        let (to, verdict) = if reachable {
            self.chains.insert(external.clone(), rules);
            (true, format!("goto {external}"))
        } else if p.external_local && !p.all_endpoints.is_empty() {
            // Endpoints exist, none here: dropped, as upstream, so the client retries
            // another node instead of being refused.
            (false, "drop".to_string())
        } else {
            (false, "goto reject-chain".to_string())
        };
        let (services, nodeports) = if to {
            ("service-ips", "service-nodeports")
        } else {
            ("no-endpoint-services", "no-endpoint-nodeports")
        };
        for ip in &p.external_ips {
            self.element(services, format!("{ip} . {proto} . {} : {verdict}", p.port));
        }
        // loadBalancerSourceRanges guard the load balancer's addresses (not node ports
        // nor externalIPs, as upstream), before any DNAT.
        if !p.source_ranges.is_empty() && !p.lb_ips.is_empty() {
            let firewall = format!("firewall-{base}");
            let ranges: Vec<String> = p.source_ranges.iter().map(|r| r.to_string()).collect();
            let rule = format!("{nf} saddr != {{ {} }} drop", ranges.join(", "));
            self.chains.insert(firewall.clone(), vec![rule]);
            for ip in &p.lb_ips {
                let key = format!("{ip} . {proto} . {}", p.port);
                self.element("firewall-ips", format!("{key} : goto {firewall}"));
            }
        }
        if p.node_port != 0 {
            self.element(nodeports, format!("{proto} . {} : {verdict}", p.node_port));
        }
    }

    /// The `nft -f` transaction that takes the table from `prev` to `self`: the whole
    /// table when there is no `prev` (first sync, or after a failed one), else only what
    /// changed.
    pub fn script(&self, prev: Option<&Ruleset>, s: &Settings) -> String {
        let mut out = String::new();
        let ip = s.family().nft();
        let empty = Ruleset::default();
        let prev = match prev {
            Some(p) => p,
            None => {
                // `add` then `delete` works whether or not the table exists.
                let _ = writeln!(out, "add table {ip} {TABLE}\ndelete table {ip} {TABLE}");
                out.push_str(&skeleton(s));
                &empty
            }
        };
        // Elements that go, first: they may point at chains that go.
        for (map, old) in &prev.elements {
            let new = self.elements.get(map);
            let gone = old.iter().filter(|e| !new.is_some_and(|n| n.contains(*e)));
            elements_lines(&mut out, ip, "delete", map, gone);
        }
        for (name, decl) in &self.sets {
            match prev.sets.get(name) {
                Some(d) if d == decl => {}
                Some(_) => {
                    let _ = writeln!(out, "delete set {ip} {TABLE} {name}");
                    let _ = writeln!(out, "add set {ip} {TABLE} {name} {decl}");
                }
                None => {
                    let _ = writeln!(out, "add set {ip} {TABLE} {name} {decl}");
                }
            }
        }
        for name in self.chains.keys() {
            if !prev.chains.contains_key(name) {
                let _ = writeln!(out, "add chain {ip} {TABLE} {name}");
            }
        }
        for (name, rules) in &self.chains {
            match prev.chains.get(name) {
                Some(old) if old == rules => continue,
                Some(_) => {
                    let _ = writeln!(out, "flush chain {ip} {TABLE} {name}");
                }
                None => {}
            }
            for r in rules {
                let _ = writeln!(out, "add rule {ip} {TABLE} {name} {r}");
            }
        }
        for (map, new) in &self.elements {
            let old = prev.elements.get(map);
            let added = new.iter().filter(|e| !old.is_some_and(|o| o.contains(*e)));
            elements_lines(&mut out, ip, "add", map, added);
        }
        // Chains that go, once nothing jumps to them: those that jumped were flushed
        // above, or go too (flushed first, as a chain still holding a jump cannot go).
        let gone: Vec<&String> = (prev.chains.keys())
            .filter(|n| !self.chains.contains_key(*n))
            .collect();
        for name in &gone {
            let _ = writeln!(out, "flush chain {ip} {TABLE} {name}");
        }
        for name in &gone {
            let _ = writeln!(out, "delete chain {ip} {TABLE} {name}");
        }
        for name in prev.sets.keys().filter(|n| !self.sets.contains_key(*n)) {
            let _ = writeln!(out, "delete set {ip} {TABLE} {name}");
        }
        out
    }
}

/// `add`/`delete element` commands for `elements` of `map`, many to a line (nft parses
/// one command with 500 elements far faster than 500 commands).
fn elements_lines<'a>(
    out: &mut String,
    ip: &str,
    verb: &str,
    map: &str,
    elements: impl Iterator<Item = &'a String>,
) {
    let mut n = 0;
    for e in elements {
        if n == 0 {
            let _ = write!(out, "{verb} element {ip} {TABLE} {map} {{ {e}");
        } else {
            let _ = write!(out, ", {e}");
        }
        n += 1;
        if n == 500 {
            out.push_str(" }\n");
            n = 0;
        }
    }
    if n > 0 {
        out.push_str(" }\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use std::net::Ipv4Addr;

    fn settings() -> Settings {
        Settings::for_tests()
    }

    fn ep(ip: &str, local: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 8080,
            local,
        }
    }

    fn port(eps: &[Endpoint]) -> ServicePort {
        ServicePort {
            namespace: "default".into(),
            name: "web".into(),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            cluster_ip: Some(Ipv4Addr::new(10, 43, 0, 10).into()),
            port: 80,
            node_port: 30007,
            external_ips: vec![],
            lb_ips: vec![],
            source_ranges: vec![],
            affinity_seconds: None,
            external_local: false,
            internal_local: false,
            cluster_endpoints: eps.to_vec(),
            local_endpoints: eps.iter().filter(|e| e.local).cloned().collect(),
            all_endpoints: eps.to_vec(),
        }
    }

    fn elements(r: &Ruleset, map: &str) -> Vec<String> {
        r.elements
            .get(map)
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn an_ipv6_table_for_ipv6_services() {
        let s6 = Settings {
            cluster_cidr: "fd42::/56".parse().unwrap(),
            service_cidr: "fd43::/112".parse().unwrap(),
        };
        assert_eq!(s6.family(), Family::V6);
        let mut p = port(&[ep("fd42::5", true)]);
        p.cluster_ip = Some("fd43::a".parse().unwrap());
        p.affinity_seconds = Some(30);
        let r = Ruleset::build(&[p], &s6);
        assert_eq!(
            elements(&r, "service-ips"),
            ["fd43::a . tcp . 80 : goto service-default/web/tcp/http"]
        );
        assert_eq!(elements(&r, "hairpin"), ["fd42::5 . fd42::5"]);
        // Names take no colons; DNAT targets bracket the address.
        let chain = "endpoint-default/web/tcp/http__fd42..5/8080";
        assert_eq!(
            r.chains[chain],
            [
                "update @affinity-default/web/tcp/http__fd42..5/8080 { ip6 saddr }",
                "meta l4proto tcp dnat ip6 to [fd42::5]:8080"
            ]
        );
        let script = r.script(None, &s6);
        assert!(script.starts_with("add table ip6 kite-proxy\ndelete table ip6 kite-proxy\n"));
        assert!(script.contains("set cluster-ips { type ipv6_addr; }"));
        assert!(script.contains("ip6 daddr ::1 ip6 saddr != ::1"));
        assert!(script.contains("add element ip6 kite-proxy cluster-ips { fd43::a }"));
        assert!(
            !script.contains(" ip ") && !script.contains("ipv4_addr"),
            "{script}"
        );
    }

    #[test]
    fn a_service_port_gets_a_chain_that_spreads_over_its_endpoints() {
        let r = Ruleset::build(
            &[port(&[ep("10.42.0.5", true), ep("10.42.0.6", false)])],
            &settings(),
        );
        assert_eq!(
            r.chains["service-default/web/tcp/http"],
            ["meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.42.0.5 . 8080, 1 : 10.42.0.6 . 8080 }"]
        );
        assert_eq!(
            r.chains.len(),
            2,
            "no chain per endpoint: {:?}",
            r.chains.keys()
        );
        // The node's own endpoint may reach itself through the Service: masqueraded.
        assert_eq!(elements(&r, "hairpin"), ["10.42.0.5 . 10.42.0.5"]);
        assert_eq!(
            elements(&r, "service-ips"),
            ["10.43.0.10 . tcp . 80 : goto service-default/web/tcp/http"]
        );
        assert_eq!(
            elements(&r, "service-nodeports"),
            ["tcp . 30007 : goto external-default/web/tcp/http"]
        );
        assert_eq!(
            r.chains["external-default/web/tcp/http"],
            [
                "meta mark set meta mark | 0x4000",
                "goto service-default/web/tcp/http"
            ]
        );
        assert_eq!(elements(&r, "cluster-ips"), ["10.43.0.10"]);
    }

    #[test]
    fn a_service_with_a_slot_keeps_its_endpoints_in_the_shared_map() {
        let two = [ep("10.42.0.5", true), ep("10.42.0.6", false)];
        let mut p = port(&two);
        p.external_local = true;
        p.local_endpoints = two.to_vec();
        let r = Ruleset::build_in(&[p], &settings(), Some(3));
        assert_eq!(
            r.chains["service-default/web/tcp/http"],
            ["meta l4proto tcp dnat ip addr . port to numgen random mod 2 offset 196608 map @endpoints-3"]
        );
        // The external chain's list is the slot's second.
        assert!(r.chains["external-default/web/tcp/http"]
            .last()
            .unwrap()
            .ends_with("numgen random mod 2 offset 200704 map @endpoints-3"));
        assert_eq!(
            elements(&r, "endpoints-3"),
            [
                "196608 : 10.42.0.5 . 8080",
                "196609 : 10.42.0.6 . 8080",
                "200704 : 10.42.0.5 . 8080",
                "200705 : 10.42.0.6 . 8080"
            ]
        );
        // The kernel takes it.
        if let Some(r) = crate::nft::check(&r.script(None, &settings())) {
            assert!(r.is_ok(), "{r:?}");
        }
    }

    #[test]
    fn without_endpoints_the_ports_are_rejected() {
        let r = Ruleset::build(&[port(&[])], &settings());
        assert!(r.chains.is_empty());
        assert_eq!(
            elements(&r, "no-endpoint-services"),
            ["10.43.0.10 . tcp . 80 : goto reject-chain"]
        );
        assert_eq!(
            elements(&r, "no-endpoint-nodeports"),
            ["tcp . 30007 : goto reject-chain"]
        );
    }

    #[test]
    fn external_traffic_policy_local_keeps_to_the_nodes_endpoints() {
        let mut p = port(&[ep("10.42.0.5", true), ep("10.42.1.5", false)]);
        p.external_local = true;
        let r = Ruleset::build(std::slice::from_ref(&p), &settings());
        assert_eq!(
            r.chains["external-default/web/tcp/http"],
            [
                "ip saddr 10.42.0.0/16 goto service-default/web/tcp/http",
                "fib saddr type local meta mark set meta mark | 0x4000",
                "fib saddr type local goto service-default/web/tcp/http",
                "meta l4proto tcp dnat ip to 10.42.0.5:8080"
            ]
        );
        // No endpoint here: external traffic from elsewhere is dropped.
        p.local_endpoints.clear();
        let r = Ruleset::build(&[p], &settings());
        assert_eq!(
            r.chains["external-default/web/tcp/http"].last().unwrap(),
            "drop"
        );
    }

    #[test]
    fn load_balancer_source_ranges_guard_only_the_load_balancer_addresses() {
        let mut p = port(&[ep("10.42.0.5", true)]);
        p.external_ips = vec![
            Ipv4Addr::new(192, 0, 2, 1).into(),
            Ipv4Addr::new(192, 0, 2, 9).into(),
        ];
        p.lb_ips = vec![Ipv4Addr::new(192, 0, 2, 9).into()];
        p.source_ranges = vec![
            "10.1.0.0/16".parse().unwrap(),
            "192.0.2.64/26".parse().unwrap(),
        ];
        let r = Ruleset::build(&[p.clone()], &settings());
        assert_eq!(
            elements(&r, "firewall-ips"),
            ["192.0.2.9 . tcp . 80 : goto firewall-default/web/tcp/http"]
        );
        assert_eq!(
            r.chains["firewall-default/web/tcp/http"],
            ["ip saddr != { 10.1.0.0/16, 192.0.2.64/26 } drop"]
        );
        // No ranges: nothing guarded.
        p.source_ranges.clear();
        let r = Ruleset::build(&[p], &settings());
        assert!(elements(&r, "firewall-ips").is_empty());
        assert!(!r.chains.keys().any(|c| c.starts_with("firewall-")));
    }

    #[test]
    fn session_affinity_remembers_the_client_per_endpoint() {
        let mut p = port(&[ep("10.42.0.5", true)]);
        p.affinity_seconds = Some(30);
        let r = Ruleset::build(&[p], &settings());
        let set = "affinity-default/web/tcp/http__10.42.0.5/8080";
        assert_eq!(
            r.sets[set],
            "{ type ipv4_addr; flags dynamic,timeout; timeout 30s; }"
        );
        assert_eq!(
            r.chains["service-default/web/tcp/http"][0],
            format!("ip saddr @{set} goto endpoint-default/web/tcp/http__10.42.0.5/8080")
        );
        assert!(r.chains["endpoint-default/web/tcp/http__10.42.0.5/8080"]
            .contains(&format!("update @{set} {{ ip saddr }}")));
    }

    #[test]
    fn a_change_rewrites_only_what_it_touches() {
        let s = settings();
        let mut other = port(&[ep("10.42.0.9", true)]);
        other.name = "other".into();
        other.cluster_ip = Some(Ipv4Addr::new(10, 43, 0, 11).into());
        other.node_port = 0;
        let before = Ruleset::build(&[port(&[ep("10.42.0.5", true)]), other.clone()], &s);
        let after = Ruleset::build(&[port(&[ep("10.42.0.6", true)]), other], &s);
        let script = after.script(Some(&before), &s);
        assert!(!script.contains("other"), "{script}");
        assert!(!script.contains("delete table"), "{script}");
        assert!(script.contains("flush chain ip kite-proxy service-default/web/tcp/http\n"));
        assert!(script.contains("add rule ip kite-proxy service-default/web/tcp/http meta l4proto tcp dnat ip to 10.42.0.6:8080\n"));
        assert!(script.contains("delete element ip kite-proxy hairpin { 10.42.0.5 . 10.42.0.5 }\n"));
        assert!(script.contains("add element ip kite-proxy hairpin { 10.42.0.6 . 10.42.0.6 }\n"));
        // With affinity, endpoints have chains: the gone one's goes.
        let (mut a1, mut a2) = (
            port(&[ep("10.42.0.5", true)]),
            port(&[ep("10.42.0.6", true)]),
        );
        a1.affinity_seconds = Some(60);
        a2.affinity_seconds = Some(60);
        let script = Ruleset::build(&[a2], &s).script(Some(&Ruleset::build(&[a1], &s)), &s);
        assert!(script
            .contains("add chain ip kite-proxy endpoint-default/web/tcp/http__10.42.0.6/8080\n"));
        assert!(script.contains(
            "delete chain ip kite-proxy endpoint-default/web/tcp/http__10.42.0.5/8080\n"
        ));
        assert_eq!(
            after.script(Some(&after), &s),
            "",
            "nothing changed, nothing to do"
        );
        // Without a previous ruleset the table is made whole.
        assert!(after
            .script(None, &s)
            .starts_with("add table ip kite-proxy\ndelete table ip kite-proxy\n"));
    }

    /// The kernel accepts the scripts: a whole table, then a change to it, checked (not
    /// applied) by `nft --check` in one transaction. Needs root and nft; says so if not.
    #[test]
    fn the_kernel_accepts_the_scripts() {
        let s = settings();
        let mut a = port(&[ep("10.42.0.5", true), ep("10.42.0.6", false)]);
        a.affinity_seconds = Some(60);
        a.external_ips = vec![Ipv4Addr::new(192, 0, 2, 1).into()];
        a.lb_ips = vec![Ipv4Addr::new(192, 0, 2, 1).into()];
        a.source_ranges = vec!["10.1.0.0/16".parse().unwrap()];
        let mut b = port(&[]);
        b.name = "empty".into();
        b.cluster_ip = Some(Ipv4Addr::new(10, 43, 0, 12).into());
        b.node_port = 30008;
        let mut c = port(&[ep("10.42.1.7", false)]);
        c.name = "local".into();
        c.cluster_ip = Some(Ipv4Addr::new(10, 43, 0, 13).into());
        c.node_port = 30009;
        c.external_local = true;
        c.local_endpoints.clear();
        let before = Ruleset::build(&[a.clone(), b.clone(), c], &s);
        a.cluster_endpoints.pop();
        a.all_endpoints.pop();
        let after = Ruleset::build(&[a, b], &s);
        let script = format!(
            "{}{}",
            before.script(None, &s),
            after.script(Some(&before), &s)
        );
        match crate::nft::check(&script) {
            None => eprintln!("nft is missing or we are not root: the scripts were not checked"),
            Some(r) => assert!(r.is_ok(), "nft refused:\n{r:?}\n{script}"),
        }
    }
}
