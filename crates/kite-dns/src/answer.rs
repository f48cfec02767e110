//! Answers a query from a [`View`] with the records of CoreDNS's kubernetes plugin
//! (`pods insecure`, `fallthrough in-addr.arpa ip6.arpa`), or says it is not the
//! cluster's to answer and goes to the forwarder.
//!
//! Names under the cluster domain:
//! - `<svc>.<ns>.svc` — A/AAAA: the cluster IPs; headless: the ready endpoints;
//!   ExternalName: a CNAME. SRV: one per port, targets in the additional section.
//! - `<endpoint>.<svc>.<ns>.svc` — a headless Service's endpoint, by the pod's hostname
//!   or its dashed address.
//! - `_<port>._<proto>.<svc>.<ns>.svc` — SRV for one named port.
//! - `<a-b-c-d>.<ns>.pod` — A for the address the name spells.
//! - `dns-version` (TXT `1.1.0`), `ns.dns` (the cluster DNS address), the SOA and NS of
//!   the zone.
//!
//! A name that exists without records of the asked type answers NOERROR with no
//! answers (NODATA), one that does not exist NXDOMAIN; both carry the zone's SOA. PTR
//! for a Service's or an endpoint's address; other reverse names are forwarded.

use crate::view::{Kind, Port, View};
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::net::IpAddr;

/// The schema version of the Kubernetes DNS specification these records follow.
const SCHEMA_VERSION: &str = "1.1.0";

/// What a query needs.
pub enum Outcome {
    /// The cluster's answer.
    Answer(Message),
    /// Not a cluster name: ask the host's resolvers.
    Forward,
}

/// Answers `req`: the response is complete but for EDNS and size, which the server sets.
pub fn answer(view: &View, req: &Message) -> Outcome {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.checking_disabled = req.metadata.checking_disabled;
    resp.metadata.recursion_available = true;
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return Outcome::Answer(resp);
    }
    let Some(q) = req.queries.first() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return Outcome::Answer(resp);
    };
    resp.add_query(q.clone());
    if q.query_class() != DNSClass::IN {
        return Outcome::Forward;
    }
    let qname = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let qtype = q.query_type();
    let ttl = view.ttl;
    let owner = q.name().clone();
    let rec = |name: &Name, data: RData| Record::from_rdata(name.clone(), ttl, data);

    if let Some(ip) = reverse_ip(&qname) {
        let Some(target) = view.reverse.get(&ip) else {
            return Outcome::Forward;
        };
        resp.metadata.authoritative = true;
        if matches!(qtype, RecordType::PTR | RecordType::ANY) {
            resp.add_answer(rec(&owner, RData::PTR(PTR(fqdn(target)))));
        } else {
            resp.add_authority(soa(view));
        }
        return Outcome::Answer(resp);
    }

    let zone = view.zone.as_str();
    let rest = if qname == zone {
        Some("")
    } else {
        qname
            .strip_suffix(zone)
            .and_then(|r| r.strip_suffix('.'))
            .filter(|r| !r.is_empty())
    };
    let Some(rest) = rest else {
        return Outcome::Forward;
    };
    resp.metadata.authoritative = true;
    // Labels from the zone outward: `web.default.svc` → [svc, default, web].
    let labels: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.rsplit('.').collect()
    };

    let mut answers: Vec<Record> = Vec::new();
    let mut additionals: Vec<Record> = Vec::new();
    let exists = match labels.as_slice() {
        [] => {
            match qtype {
                RecordType::SOA => answers.push(soa(view)),
                RecordType::NS => {
                    let ns = ns_name(view);
                    answers.push(rec(&owner, RData::NS(NS(ns.clone()))));
                    additionals.push(address(&ns, view.dns_ip, ttl));
                }
                _ => {}
            }
            true
        }
        ["dns-version"] => {
            if matches!(qtype, RecordType::TXT | RecordType::ANY) {
                answers.push(rec(
                    &owner,
                    RData::TXT(TXT::new(vec![SCHEMA_VERSION.into()])),
                ));
            }
            true
        }
        ["dns"] | ["svc"] | ["pod"] => true,
        ["dns", "ns"] => {
            if wants(qtype, &view.dns_ip) {
                answers.push(address(&owner, view.dns_ip, ttl));
            }
            true
        }
        ["svc", ns] | ["pod", ns] => view.namespaces.contains(*ns),
        ["pod", _ns, ip] => match pod_ip(ip) {
            Some(ip) => {
                if wants(qtype, &ip) {
                    answers.push(address(&owner, ip, ttl));
                }
                true
            }
            None => false,
        },
        ["svc", ns, name] => match view.services.get(&(ns.to_string(), name.to_string())) {
            Some(svc) => {
                let base = format!("{name}.{ns}.svc.{zone}");
                match &svc.kind {
                    Kind::ExternalName(target) => {
                        answers.push(rec(&owner, RData::CNAME(CNAME(fqdn(target)))));
                    }
                    Kind::ClusterIp(ips) => match qtype {
                        RecordType::SRV => {
                            let target = fqdn(&base);
                            srv(&mut answers, &owner, ttl, &svc.ports, None, &target);
                            if !answers.is_empty() {
                                for ip in ips {
                                    additionals.push(address(&target, *ip, ttl));
                                }
                            }
                        }
                        _ => {
                            for ip in ips.iter().filter(|ip| wants(qtype, ip)) {
                                answers.push(address(&owner, *ip, ttl));
                            }
                        }
                    },
                    Kind::Headless => match qtype {
                        RecordType::SRV => {
                            let w = weight(svc.endpoints.len());
                            for e in &svc.endpoints {
                                let target = fqdn(&format!("{}.{base}", e.label));
                                let before = answers.len();
                                srv(&mut answers, &owner, ttl, &e.ports, Some(w), &target);
                                if answers.len() > before {
                                    additionals.push(address(&target, e.ip, ttl));
                                }
                            }
                        }
                        _ => {
                            for e in svc.endpoints.iter().filter(|e| wants(qtype, &e.ip)) {
                                answers.push(address(&owner, e.ip, ttl));
                            }
                        }
                    },
                }
                true
            }
            None => false,
        },
        ["svc", ns, name, ep] => {
            let svc = view.services.get(&(ns.to_string(), name.to_string()));
            let eps: Vec<_> = svc
                .filter(|s| s.kind == Kind::Headless)
                .map(|s| s.endpoints.iter().filter(|e| e.label == *ep).collect())
                .unwrap_or_default();
            for e in eps.iter().filter(|e| wants(qtype, &e.ip)) {
                answers.push(address(&owner, e.ip, ttl));
            }
            !eps.is_empty()
        }
        ["svc", ns, name, proto, port] if proto.starts_with('_') && port.starts_with('_') => {
            match view.services.get(&(ns.to_string(), name.to_string())) {
                Some(svc) => {
                    let want = Some((&port[1..], &proto[1..]));
                    let base = format!("{name}.{ns}.svc.{zone}");
                    match &svc.kind {
                        Kind::ClusterIp(ips) => {
                            let target = fqdn(&base);
                            let ports = filter_ports(&svc.ports, want);
                            if qtype == RecordType::SRV {
                                srv(&mut answers, &owner, ttl, &ports, None, &target);
                                if !answers.is_empty() {
                                    for ip in ips {
                                        additionals.push(address(&target, *ip, ttl));
                                    }
                                }
                            }
                            !ports.is_empty()
                        }
                        Kind::Headless => {
                            let w = weight(svc.endpoints.len());
                            let mut any = false;
                            for e in &svc.endpoints {
                                let ports = filter_ports(&e.ports, want);
                                any |= !ports.is_empty();
                                if qtype == RecordType::SRV && !ports.is_empty() {
                                    let target = fqdn(&format!("{}.{base}", e.label));
                                    srv(&mut answers, &owner, ttl, &ports, Some(w), &target);
                                    additionals.push(address(&target, e.ip, ttl));
                                }
                            }
                            any
                        }
                        Kind::ExternalName(_) => false,
                    }
                }
                None => false,
            }
        }
        _ => false,
    };
    if !exists {
        resp.metadata.response_code = ResponseCode::NXDomain;
    }
    if answers.is_empty() {
        resp.add_authority(soa(view));
    }
    resp.add_answers(answers);
    resp.add_additionals(additionals);
    Outcome::Answer(resp)
}

/// Whether an address answers a query of this type.
fn wants(qtype: RecordType, ip: &IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

fn address(name: &Name, ip: IpAddr, ttl: u32) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, data)
}

/// CoreDNS splits the weight of a set of SRV records evenly over them.
fn weight(n: usize) -> u16 {
    (100 / n.max(1)).max(1) as u16
}

fn filter_ports(ports: &[Port], want: Option<(&str, &str)>) -> Vec<Port> {
    ports
        .iter()
        .filter(|p| match want {
            Some((name, proto)) => p.name == name && p.proto == proto,
            None => true,
        })
        .cloned()
        .collect()
}

fn srv(
    out: &mut Vec<Record>,
    owner: &Name,
    ttl: u32,
    ports: &[Port],
    weight_each: Option<u16>,
    target: &Name,
) {
    let w = weight_each.unwrap_or_else(|| weight(ports.len()));
    for p in ports {
        out.push(Record::from_rdata(
            owner.clone(),
            ttl,
            RData::SRV(SRV::new(0, w, p.port, target.clone())),
        ));
    }
}

/// A name as a fully qualified DNS name (the names here come from the API, validated
/// as DNS labels there; an invalid one becomes the root rather than a panic).
fn fqdn(s: &str) -> Name {
    Name::from_ascii(format!("{}.", s.trim_end_matches('.'))).unwrap_or_else(|_| Name::root())
}

fn ns_name(view: &View) -> Name {
    fqdn(&format!("ns.dns.{}", view.zone))
}

/// The zone's SOA, as CoreDNS gives it: refresh 2 h, retry 30 min, expire 1 day, and the
/// negative TTL the records' TTL.
pub fn soa(view: &View) -> Record {
    Record::from_rdata(
        fqdn(&view.zone),
        view.ttl,
        RData::SOA(SOA::new(
            ns_name(view),
            fqdn(&format!("hostmaster.{}", view.zone)),
            view.serial,
            7200,
            1800,
            86400,
            view.ttl,
        )),
    )
}

/// The address a pod name spells: `10-42-0-5` or `fd00--5`.
fn pod_ip(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 {
        if let Ok(ip) = label.replace('-', ".").parse::<std::net::Ipv4Addr>() {
            return Some(IpAddr::V4(ip));
        }
    }
    label
        .replace('-', ":")
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The address a reverse name stands for (`5.0.42.10.in-addr.arpa`, or the 32 nibbles of
/// `ip6.arpa`); `None` for anything else, including partial reverse names.
pub fn reverse_ip(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let parts: Vec<&str> = rest.split('.').collect();
        if parts.len() != 4 {
            return None;
        }
        let mut octets = [0u8; 4];
        for (i, p) in parts.iter().rev().enumerate() {
            octets[i] = p.parse().ok()?;
        }
        return Some(IpAddr::from(octets));
    }
    if let Some(rest) = name.strip_suffix(".ip6.arpa") {
        let nibbles: Vec<&str> = rest.split('.').collect();
        if nibbles.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, n) in nibbles.iter().rev().enumerate() {
            let v = u8::from_str_radix(n, 16).ok().filter(|_| n.len() == 1)?;
            bytes[i / 2] |= if i % 2 == 0 { v << 4 } else { v };
        }
        return Some(IpAddr::from(bytes));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{Endpoint, Svc};
    use hickory_proto::op::Query;
    use hickory_proto::rr::RecordType as T;

    fn view() -> View {
        let mut v = View::empty("cluster.local", "10.43.0.10".parse().unwrap(), 5);
        v.serial = 7;
        v.namespaces.insert("default".into());
        let http = Port {
            name: "http".into(),
            proto: "tcp".into(),
            port: 80,
        };
        v.services.insert(
            ("default".into(), "web".into()),
            Svc {
                kind: Kind::ClusterIp(vec!["10.43.0.20".parse().unwrap()]),
                ports: vec![http.clone()],
                endpoints: vec![],
            },
        );
        v.services.insert(
            ("default".into(), "db".into()),
            Svc {
                kind: Kind::Headless,
                ports: vec![],
                endpoints: vec![
                    Endpoint {
                        ip: "10.42.0.5".parse().unwrap(),
                        label: "db-0".into(),
                        ports: vec![Port {
                            port: 5432,
                            ..http.clone()
                        }],
                    },
                    Endpoint {
                        ip: "10.42.0.6".parse().unwrap(),
                        label: "10-42-0-6".into(),
                        ports: vec![Port { port: 5432, ..http }],
                    },
                ],
            },
        );
        v.services.insert(
            ("default".into(), "ext".into()),
            Svc {
                kind: Kind::ExternalName("example.org".into()),
                ports: vec![],
                endpoints: vec![],
            },
        );
        v.reverse.insert(
            "10.43.0.20".parse().unwrap(),
            "web.default.svc.cluster.local".into(),
        );
        v
    }

    fn ask(name: &str, t: RecordType) -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        match answer(&view(), &m) {
            Outcome::Answer(a) => a,
            Outcome::Forward => panic!("{name} forwarded"),
        }
    }

    fn data(m: &Message) -> Vec<String> {
        m.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn service_addresses_and_headless_endpoints() {
        let a = ask("web.default.svc.cluster.local.", T::A);
        assert_eq!(data(&a), ["10.43.0.20"]);
        assert!(a.metadata.authoritative);
        assert_eq!(a.answers[0].ttl, 5);
        let h = ask("DB.default.svc.cluster.local.", T::A);
        assert_eq!(data(&h), ["10.42.0.5", "10.42.0.6"]);
        assert_eq!(
            h.answers[0].name.to_ascii(),
            "DB.default.svc.cluster.local."
        );
        assert_eq!(
            data(&ask("db-0.db.default.svc.cluster.local.", T::A)),
            ["10.42.0.5"]
        );
        assert_eq!(
            data(&ask("10-42-0-6.db.default.svc.cluster.local.", T::A)),
            ["10.42.0.6"]
        );
        // Endpoint names only exist under headless Services.
        let n = ask("x.web.default.svc.cluster.local.", T::A);
        assert_eq!(n.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn nodata_and_nxdomain_carry_the_soa() {
        let nodata = ask("web.default.svc.cluster.local.", T::AAAA);
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities[0].record_type(), T::SOA);
        let nx = ask("nope.default.svc.cluster.local.", T::A);
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(nx.authorities[0].record_type(), T::SOA);
        assert!(nx.authorities[0]
            .data
            .to_string()
            .contains("ns.dns.cluster.local."));
        for empty in [
            "svc.cluster.local.",
            "default.svc.cluster.local.",
            "cluster.local.",
        ] {
            let m = ask(empty, T::A);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{empty}");
        }
        let m = ask("elsewhere.svc.cluster.local.", T::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn srv_cname_pod_ptr_and_the_zone() {
        let s = ask("_http._tcp.web.default.svc.cluster.local.", T::SRV);
        assert_eq!(data(&s), ["0 100 80 web.default.svc.cluster.local."]);
        assert_eq!(s.additionals.len(), 1);
        let hs = ask("_http._tcp.db.default.svc.cluster.local.", T::SRV);
        assert_eq!(
            data(&hs),
            [
                "0 50 5432 db-0.db.default.svc.cluster.local.",
                "0 50 5432 10-42-0-6.db.default.svc.cluster.local."
            ]
        );
        let none = ask("_x._udp.web.default.svc.cluster.local.", T::SRV);
        assert_eq!(none.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(
            data(&ask("ext.default.svc.cluster.local.", T::A)),
            ["example.org."]
        );
        assert_eq!(
            data(&ask("10-1-2-3.default.pod.cluster.local.", T::A)),
            ["10.1.2.3"]
        );
        assert_eq!(
            data(&ask("20.0.43.10.in-addr.arpa.", T::PTR)),
            ["web.default.svc.cluster.local."]
        );
        assert_eq!(data(&ask("dns-version.cluster.local.", T::TXT)), ["1.1.0"]);
        assert_eq!(data(&ask("ns.dns.cluster.local.", T::A)), ["10.43.0.10"]);
        assert_eq!(
            ask("cluster.local.", T::SOA).answers[0].record_type(),
            T::SOA
        );
    }

    #[test]
    fn other_names_are_forwarded() {
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("example.org.").unwrap(),
            T::A,
        ));
        assert!(matches!(answer(&view(), &m), Outcome::Forward));
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("9.9.9.10.in-addr.arpa.").unwrap(),
            T::PTR,
        ));
        assert!(matches!(answer(&view(), &m), Outcome::Forward));
        // A name that merely ends like the zone is not in it.
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("notcluster.local.").unwrap(),
            T::A,
        ));
        assert!(matches!(answer(&view(), &m), Outcome::Forward));
    }

    #[test]
    fn reverse_names_parse() {
        assert_eq!(
            reverse_ip("4.3.2.1.in-addr.arpa"),
            Some("1.2.3.4".parse().unwrap())
        );
        assert_eq!(reverse_ip("3.2.1.in-addr.arpa"), None);
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa";
        assert_eq!(reverse_ip(v6), Some("fd00::1".parse().unwrap()));
    }
}
