//! The kernel side of [`crate`]: the `kite.1` VXLAN device, kite's routes (protocol
//! [`RTPROT_KITE`]), forwarding-database and neighbour entries, through rtnetlink.

use crate::{Own, Peer, RTPROT_KITE, VXLAN_DEVICE, VXLAN_OVERHEAD, VXLAN_PORT, VXLAN_VNI};
use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Runs `f` with a fresh rtnetlink connection (closed after): every netlink user on a
/// node goes through here (the kubelet's pod network too).
pub async fn with_handle<T, F, Fut>(f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let (conn, handle, _) = rtnetlink::new_connection().context("opening netlink")?;
    let task = tokio::spawn(conn);
    let out = f(handle).await;
    task.abort();
    out
}

/// The index of the link named `name`, if there is one.
pub async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>> {
    Ok(link(h, name).await?.map(|(i, _)| i))
}

/// The link's index and attributes, by name.
pub(crate) async fn link(h: &Handle, name: &str) -> Result<Option<(u32, Vec<LinkAttribute>)>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some((l.header.index, l.attributes))),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code() == -(nix::errno::Errno::ENODEV as i32) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The index and MTU of the link that holds `ip`.
pub(crate) async fn link_of(h: &Handle, ip: Ipv4Addr) -> Result<(u32, u32)> {
    let mut addrs = h.address().get().execute();
    let mut index = None;
    while let Some(a) = addrs.try_next().await? {
        if a.attributes
            .iter()
            .any(|at| matches!(at, AddressAttribute::Address(IpAddr::V4(x)) if *x == ip))
        {
            index = Some(a.header.index);
            break;
        }
    }
    let index = index.ok_or_else(|| anyhow!("no interface holds the node IP {ip}"))?;
    let mut links = h.link().get().match_index(index).execute();
    let l = links
        .try_next()
        .await?
        .ok_or_else(|| anyhow!("the interface of {ip} vanished"))?;
    let mtu = l
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500);
    Ok((index, mtu))
}

/// The MTU of the link that holds `ip` (the node IP's).
pub async fn mtu_of(ip: Ipv4Addr) -> Result<u32> {
    with_handle(|h| async move { Ok(link_of(&h, ip).await?.1) }).await
}

/// Makes `kite.1` (if missing), addressed with this node's podCIDR network address, up;
/// returns its MAC.
pub async fn ensure_vxlan(node_ip: Ipv4Addr, own: &Own) -> Result<[u8; 6]> {
    let (own, own6) = (own.v4, own.v6);
    with_handle(|h| async move {
        let (under, mtu) = link_of(&h, node_ip).await?;
        if link(&h, VXLAN_DEVICE).await?.is_none() {
            h.link()
                .add(
                    LinkVxlan::new(VXLAN_DEVICE, VXLAN_VNI)
                        .dev(under)
                        .local(node_ip)
                        .port(VXLAN_PORT)
                        .learning(false)
                        .build(),
                )
                .execute()
                .await
                .context("creating kite.1 (is the vxlan kernel module there?)")?;
        }
        let attrs =
            up_with_address(&h, VXLAN_DEVICE, mtu.saturating_sub(VXLAN_OVERHEAD), own).await?;
        if let Some(n6) = own6 {
            // Its IPv6 range's network address too: the other nodes' neighbour for it.
            let idx = index_of(&h, VXLAN_DEVICE)
                .await?
                .ok_or_else(|| anyhow!("kite.1 vanished"))?;
            ensure_address6(&h, idx, n6.network()).await?;
        }
        let mac = attrs
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(m) if m.len() == 6 => {
                    let mut out = [0u8; 6];
                    out.copy_from_slice(m);
                    Some(out)
                }
                _ => None,
            })
            .ok_or_else(|| anyhow!("kite.1 has no MAC address"))?;
        Ok(mac)
    })
    .await
}

/// Brings the tunnel device `name` up with `mtu`, addressed with `own`'s network address
/// (/32); returns its attributes.
pub(crate) async fn up_with_address(
    h: &Handle,
    name: &str,
    mtu: u32,
    own: Ipv4Net,
) -> Result<Vec<LinkAttribute>> {
    let (idx, attrs) = link(h, name)
        .await?
        .ok_or_else(|| anyhow!("{name} vanished"))?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).mtu(mtu).up().build())
        .execute()
        .await
        .with_context(|| format!("bringing {name} up"))?;
    let gw = own.network();
    let mut have = false;
    let mut addrs = h.address().get().set_link_index_filter(idx).execute();
    while let Some(a) = addrs.try_next().await? {
        have |= a
            .attributes
            .iter()
            .any(|at| matches!(at, AddressAttribute::Address(IpAddr::V4(x)) if *x == gw));
    }
    if !have {
        h.address()
            .add(idx, IpAddr::V4(gw), 32)
            .execute()
            .await
            .with_context(|| format!("addressing {name}"))?;
    }
    Ok(attrs)
}

/// Gives link `idx` the /128 `ip` (no duplicate address detection) unless it has it.
pub(crate) async fn ensure_address6(h: &Handle, idx: u32, ip: Ipv6Addr) -> Result<()> {
    use rtnetlink::packet_route::address::AddressFlags;
    let mut addrs = h.address().get().set_link_index_filter(idx).execute();
    while let Some(a) = addrs.try_next().await? {
        if a.attributes
            .iter()
            .any(|at| matches!(at, AddressAttribute::Address(IpAddr::V6(x)) if *x == ip))
        {
            return Ok(());
        }
    }
    let mut req = h.address().add(idx, IpAddr::V6(ip), 128);
    req.message_mut()
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    req.execute()
        .await
        .with_context(|| format!("adding {ip} to a tunnel device"))
}

/// Removes `kite.1` (another backend was chosen).
pub async fn remove_vxlan() -> Result<()> {
    remove_link(VXLAN_DEVICE).await
}

/// Removes the link named `name`, if there is one.
pub(crate) async fn remove_link(name: &str) -> Result<()> {
    let name = name.to_string();
    with_handle(|h| async move {
        if let Some((idx, _)) = link(&h, &name).await? {
            h.link().del(idx).execute().await?;
        }
        Ok(())
    })
    .await
}

/// kite's routes of one family (IPv6 when `v6`) in the main table: (destination, the
/// whole message).
async fn kite_routes(
    h: &Handle,
    v6: bool,
) -> Result<Vec<(ipnet::IpNet, rtnetlink::packet_route::route::RouteMessage)>> {
    let mut out = Vec::new();
    let query = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    let mut routes = h.route().get(query).execute();
    while let Some(r) = routes.try_next().await? {
        if r.header.protocol != RouteProtocol::Other(RTPROT_KITE) {
            continue;
        }
        let dst = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
            _ => None,
        });
        if let Some(dst) = dst {
            if let Ok(net) = ipnet::IpNet::new(dst, r.header.destination_prefix_length) {
                out.push((net, r));
            }
        }
    }
    Ok(out)
}

/// Removes kite's routes of one family that `keep` does not want.
async fn prune(h: &Handle, v6: bool, keep: impl Fn(&ipnet::IpNet) -> bool) -> Result<()> {
    for (net, msg) in kite_routes(h, v6).await? {
        if !keep(&net) {
            tracing::info!(pod_cidr = %net, "route to a node's pods removed");
            if let Err(e) = h.route().del(msg).execute().await {
                tracing::warn!(pod_cidr = %net, error = %e, "removing a route");
            }
        }
    }
    Ok(())
}

/// Removes kite's IPv4 routes whose destination is not in `keep`.
pub(crate) async fn prune_routes(h: &Handle, keep: &HashSet<Ipv4Net>) -> Result<()> {
    prune(
        h,
        false,
        |n| matches!(n, ipnet::IpNet::V4(n) if keep.contains(n)),
    )
    .await
}

/// Removes kite's IPv6 routes whose destination is not in `keep`.
pub(crate) async fn prune_routes6(h: &Handle, keep: &HashSet<Ipv6Net>) -> Result<()> {
    prune(
        h,
        true,
        |n| matches!(n, ipnet::IpNet::V6(n) if keep.contains(n)),
    )
    .await
}

/// Adds the route, or replaces kite's route to the same destination.
pub(crate) async fn replace_route(
    h: &Handle,
    msg: rtnetlink::packet_route::route::RouteMessage,
) -> Result<()> {
    Ok(h.route().add(msg).replace().execute().await?)
}

/// host-gw: a route to each peer's podCIDR via its node IP; no others of kite's.
pub async fn sync_host_gw(peers: &[Peer], cluster: Ipv4Net, own_ranges: &Own) -> Result<()> {
    let peers = peers.to_vec();
    let (own, ranges) = (own_ranges.v4, *own_ranges);
    with_handle(|h| async move {
        // IPv6: via the peer's IPv6 InternalIP (none: no IPv6 route to it).
        let v6: Vec<(Ipv6Net, Ipv6Addr)> = peers
            .iter()
            .filter_map(|p| Some((ranges.peer_v6(p)?, p.ip6?)))
            .collect();
        prune_routes6(&h, &v6.iter().map(|(n, _)| *n).collect()).await?;
        for (net, via) in &v6 {
            let msg = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .gateway(*via)
                .protocol(RouteProtocol::Other(RTPROT_KITE))
                .build();
            replace_route(&h, msg)
                .await
                .with_context(|| format!("routing {net} via {via}"))?;
        }
        let keep: HashSet<Ipv4Net> = peers
            .iter()
            .map(|p| p.pod_cidr)
            .filter(|c| *c != own && cluster.contains(c))
            .collect();
        prune_routes(&h, &keep).await?;
        for p in peers.iter().filter(|p| keep.contains(&p.pod_cidr)) {
            let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(p.pod_cidr.network(), p.pod_cidr.prefix_len())
                .gateway(p.ip)
                .protocol(RouteProtocol::Other(RTPROT_KITE))
                .build();
            replace_route(&h, msg).await.with_context(|| {
                    format!(
                        "routing {} via {} (host-gw needs the nodes on one L2 segment; use --network-backend vxlan otherwise)",
                        p.pod_cidr, p.ip
                    )
                })?;
        }
        Ok(())
    })
    .await
}

/// vxlan: per peer a forwarding entry, a neighbour and an on-link route on `kite.1`;
/// entries of nodes that went are removed.
pub async fn sync_vxlan(peers: &[Peer], cluster: Ipv4Net, own_ranges: &Own) -> Result<()> {
    let peers = peers.to_vec();
    let (own, ranges) = (own_ranges.v4, *own_ranges);
    with_handle(|h| async move {
        let (idx, _) = link(&h, VXLAN_DEVICE)
            .await?
            .ok_or_else(|| anyhow!("kite.1 is missing"))?;
        let peers: Vec<&Peer> = peers
            .iter()
            .filter(|p| p.pod_cidr != own && cluster.contains(&p.pod_cidr) && p.mac.is_some())
            .collect();
        let keep: HashSet<Ipv4Net> = peers.iter().map(|p| p.pod_cidr).collect();
        prune_routes(&h, &keep).await?;
        let macs: HashSet<[u8; 6]> = peers.iter().filter_map(|p| p.mac).collect();
        let gws: HashSet<Ipv4Addr> = peers.iter().map(|p| p.pod_cidr.network()).collect();
        let v6: HashSet<Ipv6Net> = peers.iter().filter_map(|p| ranges.peer_v6(p)).collect();
        let gws6: HashSet<Ipv6Addr> = v6.iter().map(|n| n.network()).collect();
        prune_routes6(&h, &v6).await?;
        // Neighbours and forwarding entries on kite.1 that no peer wants.
        let mut neigh = h.neighbours().get().execute();
        let mut stale = Vec::new();
        while let Some(n) = neigh.try_next().await? {
            if n.header.ifindex != idx {
                continue;
            }
            let wanted = match n.header.family {
                AddressFamily::Inet => n.attributes.iter().any(|a| {
                    matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) if gws.contains(ip))
                }),
                // Permanent IPv6 entries are kite's (the kernel's own come and go).
                AddressFamily::Inet6 if n.header.state == NeighbourState::Permanent => {
                    n.attributes.iter().any(|a| {
                        matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) if gws6.contains(ip))
                    })
                }
                _ => true,
            };
            if !wanted {
                stale.push(n);
            }
        }
        let mut fdb = h
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(n) = fdb.try_next().await? {
            if n.header.ifindex != idx {
                continue;
            }
            let mac = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => {
                    let mut out = [0u8; 6];
                    out.copy_from_slice(m);
                    Some(out)
                }
                _ => None,
            });
            // The all-zeros entry is the kernel's default destination, not ours.
            if let Some(m) = mac {
                if m != [0; 6] && !macs.contains(&m) {
                    stale.push(n);
                }
            }
        }
        for n in stale {
            let _ = h.neighbours().del(n).execute().await;
        }
        for p in peers {
            let mac = p.mac.expect("filtered above");
            h.neighbours()
                .add_bridge(idx, &mac)
                .destination(IpAddr::V4(p.ip))
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .with_context(|| format!("forwarding entry for {}", p.name))?;
            let net4 = ipnet::IpNet::V4(p.pod_cidr);
            via_peer(&h, idx, &mac, net4)
                .await
                .with_context(|| format!("neighbour and route to {}'s pods", p.name))?;
            // IPv6 pods through the same tunnel (over the nodes' IPv4 addresses).
            if let Some(net6) = ranges.peer_v6(p) {
                via_peer(&h, idx, &mac, ipnet::IpNet::V6(net6))
                    .await
                    .with_context(|| format!("IPv6 neighbour and route to {}'s pods", p.name))?;
            }
        }
        Ok(())
    })
    .await
}

/// vxlan, per peer and family: a permanent neighbour for the peer's range's network
/// address (its VTEP MAC) and an on-link route to the range via that address on `kite.1`.
async fn via_peer(h: &Handle, idx: u32, mac: &[u8; 6], net: ipnet::IpNet) -> Result<()> {
    let gw = net.network();
    h.neighbours()
        .add(idx, gw)
        .link_layer_address(mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await?;
    // rtnetlink's family-agnostic builder takes the family from the address.
    let msg = RouteMessageBuilder::<std::net::IpAddr>::new()
        .destination_prefix(gw, net.prefix_len())?
        .gateway(gw)?
        .output_interface(idx)
        .onlink()
        .protocol(RouteProtocol::Other(RTPROT_KITE))
        .build();
    replace_route(h, msg).await
}
