//! Service ClusterIP and nodePort allocation. The allocations are the Services themselves:
//! what other Services hold is in use, so a deleted Service releases its IP and ports with no
//! separate bookkeeping to go stale. Callers hold the Service write lock.

use kite_api::validation::FieldError;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// The Service IP ranges of the cluster: IPv4, and IPv6 on a dual-stack cluster. IPv4 is
/// the primary family (the `kubernetes` Service's, and the default of single-stack Services).
#[derive(Debug, Clone, Copy)]
pub struct Ranges {
    pub v4: ipnet::Ipv4Net,
    pub v6: Option<ipnet::Ipv6Net>,
}

impl Ranges {
    fn has(&self, family: &str) -> bool {
        family == IPV4 || (family == IPV6 && self.v6.is_some())
    }

    fn dual(&self) -> bool {
        self.v6.is_some()
    }
}

const IPV4: &str = "IPv4";
const IPV6: &str = "IPv6";
const NONE: &str = "None";

fn family_of(ip: &str) -> Option<&'static str> {
    match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(_) => Some(IPV4),
        IpAddr::V6(_) => Some(IPV6),
    }
}

fn used_ips(others: &[Value]) -> BTreeSet<IpAddr> {
    others
        .iter()
        .flat_map(|o| {
            let spec = &o["spec"];
            let plural = strings(&spec["clusterIPs"]);
            let ips = if plural.is_empty() {
                spec["clusterIP"]
                    .as_str()
                    .map(String::from)
                    .into_iter()
                    .collect()
            } else {
                plural
            };
            ips.into_iter().filter_map(|ip| ip.parse().ok())
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn needs_cluster_ip(spec: &Value) -> bool {
    spec["type"].as_str().unwrap_or("ClusterIP") != "ExternalName"
}

fn headless(ips: &[String]) -> bool {
    ips.len() == 1 && ips[0] == NONE
}

/// Ties `clusterIP` and `clusterIPs` together as upstream's `normalizeClusterIPs` and
/// `patchAllocatedValues` do: an old client writes only the singular, and an update that
/// leaves both out keeps what the Service has.
fn normalize_cluster_ips(spec: &mut Value, old: Option<&Value>) {
    let ip = spec["clusterIP"].as_str().unwrap_or_default().to_string();
    let ips = strings(&spec["clusterIPs"]);
    let Some(old) = old.map(|o| &o["spec"]) else {
        if !ip.is_empty() && ips.is_empty() {
            spec["clusterIPs"] = json!([ip]);
        }
        return;
    };
    let old_ip = old["clusterIP"].as_str().unwrap_or_default();
    let old_ips = strings(&old["clusterIPs"]);
    let mut ips_now = ips.clone();
    if !old_ips.is_empty() && ips.is_empty() && old_ip == ip {
        ips_now = old_ips.clone();
    }
    if old_ip != ip {
        if !old_ip.is_empty() && ip.is_empty() {
            if ips == old_ips {
                ips_now.clear();
            }
        } else if ips == old_ips {
            ips_now = vec![ip.clone()];
        }
    }
    let mut ip_now = ip;
    if needs_cluster_ip(old) && needs_cluster_ip(spec) {
        if ip_now.is_empty() {
            ip_now = old_ip.to_string();
        }
        if ips_now.is_empty() {
            ips_now = old_ips;
        }
    }
    set_ips(spec, &ip_now, &ips_now);
}

fn set_ips(spec: &mut Value, ip: &str, ips: &[String]) {
    let Some(m) = spec.as_object_mut() else {
        return;
    };
    if ip.is_empty() {
        m.remove("clusterIP");
    } else {
        m.insert("clusterIP".into(), json!(ip));
    }
    if ips.is_empty() {
        m.remove("clusterIPs");
    } else {
        m.insert("clusterIPs".into(), json!(ips));
    }
}

/// Upstream's `ValidateServiceClusterIPsRelatedFields`: the three fields on their own.
fn validate_ip_fields(spec: &Value, errs: &mut Vec<FieldError>) {
    let ip = spec["clusterIP"].as_str().unwrap_or_default();
    let ips = strings(&spec["clusterIPs"]);
    let ips_json = json!(ips);
    if !ip.is_empty() {
        if ips.is_empty() {
            errs.push(FieldError::required("spec.clusterIPs"));
        } else if ips[0] != ip {
            errs.push(FieldError::invalid(
                "spec.clusterIPs",
                &ips_json,
                "first value must match `clusterIP`",
            ));
        }
    } else if !ips.is_empty() {
        errs.push(FieldError::invalid(
            "spec.clusterIPs",
            &ips_json,
            "must be empty when `clusterIP` is not specified",
        ));
    }
    let families = strings(&spec["ipFamilies"]);
    for (i, f) in families.iter().enumerate() {
        if f != IPV4 && f != IPV6 {
            errs.push(FieldError::not_supported(
                format!("spec.ipFamilies[{i}]"),
                &json!(f),
                &[IPV4, IPV6],
            ));
        }
        if families[..i].contains(f) {
            errs.push(FieldError::duplicate(
                format!("spec.ipFamilies[{i}]"),
                &json!(f),
            ));
        }
    }
    if let Some(p) = spec.get("ipFamilyPolicy").filter(|p| !p.is_null()) {
        if !matches!(
            p.as_str(),
            Some("SingleStack" | "PreferDualStack" | "RequireDualStack")
        ) {
            errs.push(FieldError::not_supported(
                "spec.ipFamilyPolicy",
                p,
                &["PreferDualStack", "RequireDualStack", "SingleStack"],
            ));
        }
    }
    let mut bad_ips = false;
    for (i, a) in ips.iter().enumerate() {
        if i == 0 && a == NONE {
            if ips.len() > 1 {
                bad_ips = true;
                errs.push(FieldError::invalid(
                    "spec.clusterIPs",
                    &ips_json,
                    "'None' must be the first and only value",
                ));
            }
            continue;
        }
        if a.parse::<IpAddr>().is_err() {
            bad_ips = true;
            errs.push(FieldError::invalid(
                format!("spec.clusterIPs[{i}]"),
                &json!(a),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    if ips.len() > 2 {
        errs.push(FieldError::invalid(
            "spec.clusterIPs",
            &ips_json,
            "may only hold up to 2 values",
        ));
    }
    if bad_ips {
        return;
    }
    if ips.len() == 2 && family_of(&ips[0]) == family_of(&ips[1]) {
        errs.push(FieldError::invalid(
            "spec.clusterIPs",
            &ips_json,
            "may specify no more than one IP for each IP family",
        ));
    }
    if !headless(&ips) {
        for (i, (a, f)) in ips.iter().zip(&families).enumerate() {
            let v6 = family_of(a) == Some(IPV6);
            if f == IPV4 && v6 || f == IPV6 && !v6 {
                errs.push(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &json!(a),
                    &format!("expected an {f} value as indicated by `ipFamilies[{i}]`"),
                ));
            }
        }
    }
}

/// On an update, the primary cluster IP and family stay (upstream's
/// `validateUpgradeDowngradeClusterIPs` and `...IPFamilies`).
fn validate_upgrade_downgrade(spec: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    if !needs_cluster_ip(spec) || !needs_cluster_ip(old) {
        return;
    }
    let (ips, old_ips) = (strings(&spec["clusterIPs"]), strings(&old["clusterIPs"]));
    let (was_headless, is_headless) = (headless(&old_ips), headless(&ips));
    let single = spec["ipFamilyPolicy"] == "SingleStack";
    if !(was_headless && is_headless) {
        let shown = json!(ips);
        if ips.len() == old_ips.len() {
            for (i, (a, b)) in old_ips.iter().zip(&ips).enumerate() {
                if a != b {
                    errs.push(FieldError::invalid(
                        format!("spec.clusterIPs[{i}]"),
                        &shown,
                        "may not change once set",
                    ));
                }
            }
        } else if !old_ips.is_empty() && ips.first() != old_ips.first() {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                &shown,
                if ips.is_empty() {
                    "primary clusterIP can not be unset"
                } else {
                    "may not change once set"
                },
            ));
        } else if ips.len() == 1 && old_ips.len() == 2 && !single {
            errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                &spec["ipFamilyPolicy"],
                "must be set to 'SingleStack' when releasing the secondary clusterIP",
            ));
        }
    }
    if was_headless || is_headless {
        return;
    }
    let (fams, old_fams) = (strings(&spec["ipFamilies"]), strings(&old["ipFamilies"]));
    if !fams.is_empty() && !old_fams.is_empty() && fams[0] != old_fams[0] {
        errs.push(FieldError::invalid(
            "spec.ipFamilies[0]",
            &json!(fams),
            "may not change once set",
        ));
    } else if fams.len() == old_fams.len() && fams != old_fams {
        errs.push(FieldError::invalid(
            "spec.ipFamilies[1]",
            &json!(fams),
            "may not change once set",
        ));
    } else if fams.len() == 1 && old_fams.len() == 2 && !single {
        errs.push(FieldError::invalid(
            "spec.ipFamilyPolicy",
            &spec["ipFamilyPolicy"],
            "must be set to 'SingleStack' when releasing the secondary ipFamily",
        ));
    }
}

/// Upstream's `isMatchingPreferDualStackClusterIPFields`: a PreferDualStack Service whose
/// IPs and families an update leaves alone is neither upgraded nor downgraded.
fn unchanged_prefer_dual_stack(spec: &Value, old: Option<&Value>) -> bool {
    let Some(old) = old.map(|o| &o["spec"]) else {
        return false;
    };
    spec["type"] == old["type"]
        && needs_cluster_ip(spec)
        && spec["ipFamilyPolicy"] == "PreferDualStack"
        && (old["ipFamilyPolicy"].is_null() || old["ipFamilyPolicy"] == "PreferDualStack")
        && strings(&spec["clusterIPs"]) == strings(&old["clusterIPs"])
        && strings(&spec["ipFamilies"]) == strings(&old["ipFamilies"])
}

/// Upstream's `initIPFamilyFields`: fills in `ipFamilyPolicy` and `ipFamilies` from what the
/// Service asks, what it had, and the families this cluster has.
fn init_families(spec: &mut Value, old: Option<&Value>, ranges: &Ranges) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if unchanged_prefer_dual_stack(spec, old) {
        return errs;
    }
    let old_spec = old.map(|o| &o["spec"]);
    let selectorless = spec["selector"].as_object().is_none_or(|m| m.is_empty());
    if spec["ipFamilyPolicy"].is_null() {
        let inherited = old_spec
            .map(|o| o["ipFamilyPolicy"].clone())
            .filter(|p| !p.is_null());
        spec["ipFamilyPolicy"] = match inherited {
            Some(p) => p,
            None if spec["clusterIP"] == NONE && selectorless => json!("RequireDualStack"),
            None => json!("SingleStack"),
        };
    }
    validate_ip_fields(spec, &mut errs);
    if !errs.is_empty() {
        return errs;
    }
    let policy = spec["ipFamilyPolicy"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let single = policy == "SingleStack";
    let mut ips = strings(&spec["clusterIPs"]);
    let mut families = strings(&spec["ipFamilies"]);
    if let Some(o) = old_spec {
        if single {
            // Asking for SingleStack with the IPs and families unchanged releases the second.
            if ips == strings(&o["clusterIPs"]) && ips.len() > 1 {
                ips.truncate(1);
            }
            if families == strings(&o["ipFamilies"]) && families.len() > 1 {
                families.truncate(1);
            }
        } else {
            // Left out is not reduced (the IPs come back from the old object, the
            // families from the IPs).
            if !ips.is_empty() && ips.len() < strings(&o["clusterIPs"]).len() {
                errs.push(FieldError::invalid(
                    "spec.ipFamilyPolicy",
                    &json!(policy),
                    "must be 'SingleStack' to release the secondary cluster IP",
                ));
            }
            if !families.is_empty() && families.len() < strings(&o["ipFamilies"]).len() {
                errs.push(FieldError::invalid(
                    "spec.ipFamilyPolicy",
                    &json!(policy),
                    "must be 'SingleStack' to release the secondary IP family",
                ));
            }
        }
    }
    if single {
        if ips.len() == 2 {
            errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                &json!(policy),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
            ));
        }
        if families.len() == 2 {
            errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                &json!(policy),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
            ));
        }
    }
    for (i, a) in ips.iter().enumerate() {
        if a == NONE {
            break;
        }
        let f = family_of(a).unwrap_or(IPV4);
        if i >= families.len() {
            if ranges.has(f) {
                families.push(f.to_string());
            } else {
                errs.push(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &json!(ips),
                    &format!("{f} is not configured on this cluster"),
                ));
            }
        }
    }
    if !errs.is_empty() {
        return errs;
    }
    let other = |f: &str| if f == IPV4 { IPV6 } else { IPV4 };
    if spec["clusterIP"] == NONE && selectorless {
        // Headless and selectorless: any families, even ones the cluster lacks.
        if families.is_empty() {
            families.push(IPV4.into());
        }
        if families.len() < 2 && !single {
            families.push(other(&families[0]).into());
        }
    } else {
        if policy == "RequireDualStack" && !ranges.dual() {
            errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                &json!(policy),
                "this cluster is not configured for dual-stack services",
            ));
        }
        for (i, f) in families.iter().enumerate() {
            if !ranges.has(f) {
                errs.push(FieldError::invalid(
                    format!("spec.ipFamilies[{i}]"),
                    &json!(f),
                    "not configured on this cluster",
                ));
            }
        }
        if !errs.is_empty() {
            return errs;
        }
        if families.is_empty() {
            families.push(IPV4.into());
        }
        if !single && families.len() == 1 && ranges.dual() {
            families.push(other(&families[0]).into());
        }
    }
    let ip = spec["clusterIP"].as_str().unwrap_or_default().to_string();
    set_ips(spec, &ip, &ips);
    spec["ipFamilies"] = json!(families);
    errs
}

/// Gives each of the Service's families its cluster IP: the one asked for, checked against
/// the family's range and the other Services, or the lowest free one.
fn allocate_ips(spec: &mut Value, others: &[Value], ranges: &Ranges, errs: &mut Vec<FieldError>) {
    let mut ips = strings(&spec["clusterIPs"]);
    if headless(&ips) {
        return;
    }
    let families = strings(&spec["ipFamilies"]);
    let used = used_ips(others);
    for (i, family) in families.iter().enumerate() {
        if i >= ips.len() {
            ips.push(String::new());
        }
        let asked = ips[i].clone();
        let range = match family.as_str() {
            IPV6 => ranges.v6.map(ipnet::IpNet::V6),
            _ => Some(ipnet::IpNet::V4(ranges.v4)),
        };
        let Some(range) = range else { continue };
        if asked.is_empty() {
            // IPv4: `hosts()` leaves the network address out, and the first host is the
            // `kubernetes` Service's. IPv6: `hosts()` starts at the network (subnet-router
            // anycast) address, which upstream keeps out too.
            let found = range.hosts().skip(1).find(|ip| !used.contains(ip));
            match found {
                Some(ip) => ips[i] = ip.to_string(),
                None => errs.push(FieldError::invalid(
                    "spec.clusterIPs",
                    &Value::Null,
                    &format!("failed to allocate a serviceIP: range is full ({range})"),
                )),
            }
            continue;
        }
        let Ok(ip) = asked.parse::<IpAddr>() else {
            continue;
        };
        if !range.contains(&ip) {
            errs.push(FieldError::invalid(
                "spec.clusterIPs",
                &json!(ips),
                &format!("failed to allocate IP {asked}: the provided IP ({asked}) is not in the valid range. The range of valid IPs is {range}"),
            ));
        } else if used.contains(&ip) {
            errs.push(FieldError::invalid(
                "spec.clusterIPs",
                &json!(ips),
                &format!("failed to allocate IP {asked}: provided IP is already allocated"),
            ));
        }
    }
    if errs.is_empty() {
        let first = ips.first().cloned().unwrap_or_default();
        set_ips(spec, &first, &ips);
    }
}

fn used_ports(others: &[Value]) -> BTreeSet<i64> {
    others
        .iter()
        .flat_map(|o| {
            o["spec"]["ports"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| p["nodePort"].as_i64())
        })
        .collect()
}

/// Fills in `spec.clusterIP(s)`, `ipFamilies`, `ipFamilyPolicy` and `nodePort`s of `svc`,
/// keeping what `old` had, as upstream's Service REST storage does before it validates.
pub fn allocate(
    svc: &mut Value,
    old: Option<&Value>,
    others: &[Value],
    ranges: &Ranges,
    range: (i64, i64),
) -> Result<(), Vec<FieldError>> {
    let mut errs = Vec::new();
    let ty = svc["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    let spec = &mut svc["spec"];
    if ty == "ExternalName" {
        if let Some(m) = spec.as_object_mut() {
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                m.remove(f);
            }
        }
    } else {
        normalize_cluster_ips(spec, old);
        errs = init_families(spec, old, ranges);
        if let Some(o) = old {
            validate_upgrade_downgrade(spec, &o["spec"], &mut errs);
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        allocate_ips(spec, others, ranges, &mut errs);
    }
    let wants_node_ports = ty == "NodePort" || ty == "LoadBalancer";
    let mut used = used_ports(others);
    let old_ports: Vec<Value> = old
        .and_then(|o| o["spec"]["ports"].as_array().cloned())
        .unwrap_or_default();
    if let Some(ports) = spec["ports"].as_array_mut() {
        // Pass 1: ports asked for (or kept) explicitly.
        for (i, p) in ports.iter_mut().enumerate() {
            if !wants_node_ports {
                if let Some(m) = p.as_object_mut() {
                    m.remove("nodePort");
                }
                continue;
            }
            let asked = p["nodePort"].as_i64().filter(|n| *n != 0);
            let kept = old_ports
                .iter()
                .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                .and_then(|o| o["nodePort"].as_i64());
            match asked {
                Some(n) => {
                    if used.contains(&n) {
                        errs.push(FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            &json!(n),
                            "provided port is already allocated",
                        ));
                    } else {
                        used.insert(n);
                    }
                }
                None => {
                    if let Some(k) = kept.filter(|k| !used.contains(k)) {
                        p["nodePort"] = json!(k);
                        used.insert(k);
                    }
                }
            }
        }
        // Pass 2: allocate the rest.
        if wants_node_ports {
            for (i, p) in ports.iter_mut().enumerate() {
                if p["nodePort"].as_i64().is_some_and(|n| n != 0) {
                    continue;
                }
                let span = (range.1 - range.0 + 1).max(1);
                let offset = rand::random_range(0..span);
                let found = (0..span)
                    .map(|k| range.0 + (offset + k) % span)
                    .find(|n| !used.contains(n));
                match found {
                    Some(n) => {
                        p["nodePort"] = json!(n);
                        used.insert(n);
                    }
                    None => errs.push(FieldError::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        &Value::Null,
                        "range is full",
                    )),
                }
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINGLE: Ranges = Ranges {
        v4: ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(10, 43, 0, 0), 16),
        v6: None,
    };
    const DUAL: Ranges = Ranges {
        v4: SINGLE.v4,
        v6: Some(ipnet::Ipv6Net::new_assert(
            std::net::Ipv6Addr::new(0xfd43, 0, 0, 0, 0, 0, 0, 0),
            112,
        )),
    };

    fn svc(spec: Value) -> Value {
        let mut s = json!({"spec": {"selector": {"app": "a"}, "ports": [{"port": 80}]}});
        for (k, v) in spec.as_object().unwrap() {
            s["spec"][k] = v.clone();
        }
        s
    }

    fn fields(r: Result<(), Vec<FieldError>>) -> Vec<String> {
        r.unwrap_err()
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn families_default_to_the_clusters_primary() {
        for ranges in [SINGLE, DUAL] {
            let mut s = svc(json!({}));
            allocate(&mut s, None, &[], &ranges, (30000, 32767)).unwrap();
            assert_eq!(s["spec"]["ipFamilyPolicy"], "SingleStack");
            assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4"]));
            assert_eq!(s["spec"]["clusterIPs"], json!(["10.43.0.2"]));
        }
    }

    #[test]
    fn dual_stack_policies() {
        let mut s = svc(json!({"ipFamilyPolicy": "PreferDualStack"}));
        allocate(&mut s, None, &[], &SINGLE, (30000, 32767)).unwrap();
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4"]));
        let e = fields(allocate(
            &mut svc(json!({"ipFamilyPolicy": "RequireDualStack"})),
            None,
            &[],
            &SINGLE,
            (30000, 32767),
        ));
        assert_eq!(
            e,
            ["spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"]
        );
        let e = fields(allocate(
            &mut svc(json!({"ipFamilies": ["IPv6"]})),
            None,
            &[],
            &SINGLE,
            (30000, 32767),
        ));
        assert_eq!(
            e,
            ["spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster"]
        );

        let mut s = svc(json!({"ipFamilyPolicy": "RequireDualStack"}));
        allocate(&mut s, None, &[], &DUAL, (30000, 32767)).unwrap();
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(s["spec"]["clusterIPs"], json!(["10.43.0.2", "fd43::1"]));
        assert_eq!(s["spec"]["clusterIP"], "10.43.0.2");

        // IPv6 first, and an IPv6 address asked for: the family follows it.
        let mut s = svc(json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6"]}));
        allocate(&mut s, None, &[], &DUAL, (30000, 32767)).unwrap();
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv6", "IPv4"]));
        assert_eq!(s["spec"]["clusterIPs"], json!(["fd43::1", "10.43.0.2"]));
        let mut s = svc(json!({"clusterIP": "fd43::9"}));
        allocate(&mut s, None, &[], &DUAL, (30000, 32767)).unwrap();
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv6"]));
        assert_eq!(s["spec"]["clusterIPs"], json!(["fd43::9"]));
        let e = fields(allocate(
            &mut svc(json!({"clusterIP": "fd44::9"})),
            None,
            &[],
            &DUAL,
            (30000, 32767),
        ));
        assert!(
            e[0].contains("The range of valid IPs is fd43::/112"),
            "{e:?}"
        );
        let e = fields(allocate(
            &mut svc(json!({"ipFamilies": ["IPv4", "IPv4"], "ipFamilyPolicy": "Sometimes"})),
            None,
            &[],
            &DUAL,
            (30000, 32767),
        ));
        assert_eq!(
            e,
            [
                "spec.ipFamilies[1]: Duplicate value: \"IPv4\"",
                "spec.ipFamilyPolicy: Unsupported value: \"Sometimes\": supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\"",
            ]
        );
    }

    #[test]
    fn upgrade_and_downgrade() {
        let mut old = svc(json!({}));
        allocate(&mut old, None, &[], &DUAL, (30000, 32767)).unwrap();
        // A PUT that changes only the policy gets the second family and IP.
        let mut up = old.clone();
        up["spec"]["ipFamilyPolicy"] = json!("PreferDualStack");
        allocate(&mut up, Some(&old), &[], &DUAL, (30000, 32767)).unwrap();
        assert_eq!(up["spec"]["clusterIPs"], json!(["10.43.0.2", "fd43::1"]));
        // Releasing the second IP needs SingleStack.
        let mut bad = up.clone();
        bad["spec"]["clusterIPs"] = json!(["10.43.0.2"]);
        bad["spec"]["ipFamilies"] = json!(["IPv4"]);
        let e = fields(allocate(&mut bad, Some(&up), &[], &DUAL, (30000, 32767)));
        assert!(
            e.iter()
                .any(|m| m.contains("must be 'SingleStack' to release the secondary cluster IP")),
            "{e:?}"
        );
        let mut down = up.clone();
        down["spec"]["ipFamilyPolicy"] = json!("SingleStack");
        allocate(&mut down, Some(&up), &[], &DUAL, (30000, 32767)).unwrap();
        assert_eq!(down["spec"]["clusterIPs"], json!(["10.43.0.2"]));
        assert_eq!(down["spec"]["ipFamilies"], json!(["IPv4"]));
        // A patch that leaves the IP fields out keeps them.
        let mut patched = up.clone();
        for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            patched["spec"].as_object_mut().unwrap().remove(f);
        }
        allocate(&mut patched, Some(&up), &[], &DUAL, (30000, 32767)).unwrap();
        assert_eq!(patched["spec"], up["spec"]);
        // The primary family stays.
        let mut flip = up.clone();
        flip["spec"]["ipFamilies"] = json!(["IPv6", "IPv4"]);
        assert!(allocate(&mut flip, Some(&up), &[], &DUAL, (30000, 32767)).is_err());
    }

    #[test]
    fn headless_services() {
        // Selectorless: RequireDualStack by default, both families even on one-family clusters.
        let mut s = json!({"spec": {"clusterIP": "None", "ports": [{"port": 80}]}});
        allocate(&mut s, None, &[], &SINGLE, (30000, 32767)).unwrap();
        assert_eq!(s["spec"]["ipFamilyPolicy"], "RequireDualStack");
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(s["spec"]["clusterIPs"], json!(["None"]));
        let mut s = svc(json!({"clusterIP": "None", "ipFamilyPolicy": "PreferDualStack"}));
        allocate(&mut s, None, &[], &DUAL, (30000, 32767)).unwrap();
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(s["spec"]["clusterIPs"], json!(["None"]));
    }

    #[test]
    fn allocates_skipping_used_and_rejects_conflicts() {
        let cidr = &SINGLE;
        let others = vec![json!({"spec": {"clusterIP": "10.43.0.2",
            "ports": [{"port": 80, "nodePort": 30007}]}})];
        let mut svc =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
        allocate(&mut svc, None, &others, cidr, (30000, 32767)).unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.43.0.3");
        let np = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&np) && np != 30007);
        let mut dup =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30007}]}});
        let errs = allocate(&mut dup, None, &others, cidr, (30000, 32767)).unwrap_err();
        assert_eq!(errs[0].field, "spec.ports[0].nodePort");
        let mut taken = json!({"spec": {"clusterIP": "10.43.0.2", "ports": [{"port": 80}]}});
        assert!(allocate(&mut taken, None, &others, cidr, (30000, 32767)).is_err());
    }
}
