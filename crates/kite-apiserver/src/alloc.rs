//! Service ClusterIP and nodePort allocation. The allocations are the Services themselves:
//! what other Services hold is in use, so a deleted Service releases its IP and ports with no
//! separate bookkeeping to go stale. Callers hold the Service write lock.

use kite_api::validation::FieldError;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

fn used_ips(others: &[Value]) -> BTreeSet<Ipv4Addr> {
    others
        .iter()
        .filter_map(|o| o["spec"]["clusterIP"].as_str()?.parse().ok())
        .collect()
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

/// Fills in `spec.clusterIP(s)` and `nodePort`s of `svc`, keeping what `old` had.
pub fn allocate(
    svc: &mut Value,
    old: Option<&Value>,
    others: &[Value],
    cidr: ipnet::Ipv4Net,
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
            m.remove("clusterIP");
            m.remove("clusterIPs");
        }
    } else {
        let old_ip = old
            .and_then(|o| o["spec"]["clusterIP"].as_str())
            .filter(|s| !s.is_empty())
            .map(String::from);
        let asked = spec["clusterIP"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from);
        let ip = match (asked, old_ip) {
            (None, Some(o)) => Some(o),
            (Some(a), Some(o)) if a == o => Some(o),
            (Some(a), _) if a == "None" => Some(a),
            (Some(a), _) => match a.parse::<Ipv4Addr>() {
                Ok(ip) if !cidr.contains(&ip) => {
                    errs.push(FieldError::invalid(
                        "spec.clusterIPs",
                        &json!([a]),
                        &format!("failed to allocate IP {a}: the provided IP ({a}) is not in the valid range. The range of valid IPs is {cidr}"),
                    ));
                    None
                }
                Ok(ip) if used_ips(others).contains(&ip) => {
                    errs.push(FieldError::invalid(
                        "spec.clusterIPs",
                        &json!([a]),
                        &format!("failed to allocate IP {a}: provided IP is already allocated"),
                    ));
                    None
                }
                Ok(_) => Some(a),
                Err(_) => {
                    errs.push(FieldError::invalid(
                        "spec.clusterIPs[0]",
                        &json!(a),
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    ));
                    None
                }
            },
            (None, None) => {
                let used = used_ips(others);
                // The first address is the network, the second the `kubernetes` Service's.
                let found = cidr
                    .hosts()
                    .skip(1)
                    .find(|ip| !used.contains(ip))
                    .map(|ip| ip.to_string());
                if found.is_none() {
                    errs.push(FieldError::invalid(
                        "spec.clusterIPs",
                        &Value::Null,
                        &format!("failed to allocate a serviceIP: range is full ({cidr})"),
                    ));
                }
                found
            }
        };
        if let Some(ip) = ip {
            spec["clusterIP"] = json!(ip);
            spec["clusterIPs"] = json!([ip]);
        }
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

    #[test]
    fn allocates_skipping_used_and_rejects_conflicts() {
        let cidr: ipnet::Ipv4Net = "10.43.0.0/16".parse().unwrap();
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
