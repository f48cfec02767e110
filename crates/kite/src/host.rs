//! Facts about the host kite runs on: its IP addresses and hostname.

use std::net::IpAddr;

/// The host's non-loopback, non-link-local addresses, IPv4 first.
pub fn node_ips() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            // Interfaces kite creates for pods are not the node's address.
            if a.interface_name.starts_with("kite") || a.interface_name.starts_with("veth") {
                continue;
            }
            let Some(sa) = a.address else { continue };
            let ip: Option<IpAddr> = if let Some(v4) = sa.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            };
            let Some(ip) = ip else { continue };
            let skip = match ip {
                IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
                IpAddr::V6(v6) => {
                    v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
                }
            };
            if !skip && !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out.sort_by_key(|ip| ip.is_ipv6());
    out
}

/// The node's IPv6 InternalIP on a dual-stack cluster when `--node-ip` names none: the
/// host's first global IPv6 address, as K3s detects one of each family.
pub fn node_ip6(explicit: Option<std::net::Ipv6Addr>, dual: bool) -> Option<std::net::Ipv6Addr> {
    explicit.or_else(|| {
        dual.then(|| {
            node_ips().into_iter().find_map(|ip| match ip {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => None,
            })
        })?
    })
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
        .to_lowercase()
}
