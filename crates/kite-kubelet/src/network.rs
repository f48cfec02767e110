//! kite's built-in pod network: the `kite0` bridge holding the first address of the
//! node's podCIDR, one veth pair per pod (host end `kitev<hash>` on the bridge, pod end
//! `eth0` in the pod's network namespace), host-local style IPAM persisted under
//! `<data-dir>/agent/ipam/`, loopback up, and masquerade (nftables table `kite-nat`) for
//! traffic leaving the cluster CIDR. hostPort mappings are DNAT rules in the nftables
//! table `kite-hostports`, rebuilt whole from `<data-dir>/agent/hostports/<pod uid>` (so a
//! restarted kite puts back what its pods had).
//!
//! On a dual-stack cluster the node's IPv6 podCIDR works the same way beside it: the
//! bridge's second address is the range's first, each pod's `eth0` gets an IPv6 address
//! (no duplicate address detection: IPAM makes them unique) and a default route via the
//! bridge, its own IPAM directory, and the `ip6 kite-nat` table masquerades what leaves
//! the IPv6 cluster range. hostPorts stay IPv4.
//!
//! With a CNI configuration in place (`crate::cni`), the plugins plumb pods instead of
//! the bridge and IPAM here; hostPorts stay here unless the plugins take them
//! (the `portMappings` capability).

use anyhow::{anyhow, bail, Context, Result};
use futures::TryStreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use kite_network::netlink::{index_of, with_handle};
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const BRIDGE: &str = "kite0";
/// The pod end of its veth, inside the pod's network namespace.
const POD_IF: &str = "eth0";

/// The IPAM file that remembers the last address given out (host-local's name for it).
const LAST_RESERVED: &str = "last_reserved_ip.0";

pub struct Network {
    pub pod_cidr: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
    ipam_dir: PathBuf,
    hostports_dir: PathBuf,
    /// One rebuild of the hostport table at a time.
    hostports_lock: tokio::sync::Mutex<()>,
    /// The user's CNI plugins, when they replace the built-in network.
    cni: Option<crate::cni::Cni>,
    /// The IPAM files as a map (pod uid → address), read from disk once: every pod
    /// sync asks for its address, and the files stay the record of truth.
    held: std::sync::Mutex<Option<std::collections::HashMap<String, Ipv4Addr>>>,
    /// Pods whose CNI attachment this process has checked (CHECK once, on adoption).
    checked: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The MTU of pods' interfaces (both ends of their veths): the node link's less the
    /// tunnel between nodes. None: the kernel's default.
    mtu: Option<u32>,
    /// The IPv6 half of a dual-stack node's pod network.
    v6: Option<V6>,
}

/// A dual-stack node's IPv6 pod range and its IPAM (the same file scheme as IPv4's, in a
/// directory of its own).
pub struct V6 {
    pub pod_cidr: Ipv6Net,
    pub cluster_cidr: Ipv6Net,
    ipam_dir: PathBuf,
    held: std::sync::Mutex<Option<std::collections::HashMap<String, Ipv6Addr>>>,
}

/// How many addresses of an IPv6 range IPAM hands out (a /64 holds far more pods than a
/// node runs; the bound keeps a search short).
const V6_POOL: u128 = 1 << 16;

/// Every `<dir>/<ip>` file: its holder and address.
fn read_held<A: std::str::FromStr>(dir: &Path) -> std::collections::HashMap<String, A> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Default::default();
    };
    rd.flatten()
        .filter_map(|e| {
            let ip = e.file_name().to_string_lossy().parse().ok()?;
            Some((std::fs::read_to_string(e.path()).ok()?, ip))
        })
        .collect()
}

/// Host-local's IPAM for one range: the next free address after the last one given out
/// (offsets `2 .. 2 + usable` from the network address `net`, round the range), claimed by
/// creating `<dir>/<ip>` exclusively so two pods never share one; `None` when all are
/// taken. As host-local's, a freed address is not handed out again until the range wraps:
/// the host and other pods may still have the old pod's MAC for it in their neighbour
/// caches, and the new pod would be unreachable until that entry went stale.
fn claim<A>(
    dir: &Path,
    uid: &str,
    held: &mut std::collections::HashMap<String, A>,
    (net, usable): (u128, u128),
    addr: impl Fn(u128) -> A,
    number: impl Fn(A) -> u128,
) -> Result<Option<A>>
where
    A: Copy + Eq + std::hash::Hash + std::fmt::Display + std::str::FromStr,
{
    std::fs::create_dir_all(dir)?;
    if let Some(ip) = held.get(uid) {
        return Ok(Some(*ip));
    }
    let taken: std::collections::HashSet<A> = held.values().copied().collect();
    let last_file = dir.join(LAST_RESERVED);
    let last = std::fs::read_to_string(&last_file)
        .ok()
        .and_then(|t| t.trim().parse::<A>().ok())
        .map(&number)
        .filter(|l| (net + 2..net + 2 + usable).contains(l))
        .map_or(0, |l| l - net - 2 + 1);
    for i in 0..usable {
        let ip = addr(net + 2 + (last + i) % usable);
        if taken.contains(&ip) {
            continue;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(ip.to_string()))
        {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(uid.as_bytes())?;
                held.insert(uid.to_string(), ip);
                // Where the next search starts; losing it only means starting over.
                let _ = std::fs::write(&last_file, ip.to_string());
                return Ok(Some(ip));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

impl V6 {
    fn gateway(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.pod_cidr.network()) + 1)
    }

    fn held_by(&self, uid: &str) -> Option<Ipv6Addr> {
        let mut guard = self.held.lock().unwrap();
        guard
            .get_or_insert_with(|| read_held(&self.ipam_dir))
            .get(uid)
            .copied()
    }

    /// As [`Network::allocate`]: the held address, or the next free one after the last
    /// given out, claimed by creating its file exclusively.
    fn allocate(&self, uid: &str) -> Result<Ipv6Addr> {
        let mut guard = self.held.lock().unwrap();
        let held = guard.get_or_insert_with(|| read_held(&self.ipam_dir));
        let net = u128::from(self.pod_cidr.network());
        let size = 1u128
            .checked_shl(128 - u32::from(self.pod_cidr.prefix_len()))
            .unwrap_or(u128::MAX);
        // Not the network address or the gateway.
        let usable = size.saturating_sub(2).min(V6_POOL);
        claim(
            &self.ipam_dir,
            uid,
            held,
            (net, usable),
            Ipv6Addr::from,
            u128::from,
        )?
        .ok_or_else(|| anyhow!("no free address left in {}", self.pod_cidr))
    }

    fn release(&self, uid: &str) {
        let mut guard = self.held.lock().unwrap();
        let held = guard.get_or_insert_with(|| read_held(&self.ipam_dir));
        if let Some(ip) = held.remove(uid) {
            let _ = std::fs::remove_file(self.ipam_dir.join(ip.to_string()));
        }
    }
}

/// Adds `ip/prefix` to link `idx` unless it has it; IPv6 without duplicate address
/// detection (the address is usable at once, and IPAM keeps it unique).
async fn ensure_address(h: &rtnetlink::Handle, idx: u32, ip: IpAddr, prefix: u8) -> Result<()> {
    use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
    let mut addrs = h.address().get().set_link_index_filter(idx).execute();
    while let Some(a) = addrs.try_next().await? {
        for attr in a.attributes {
            if matches!(attr, AddressAttribute::Address(have) if have == ip) {
                return Ok(());
            }
        }
    }
    let mut req = h.address().add(idx, ip, prefix);
    if ip.is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute().await?;
    Ok(())
}

/// One hostPort of a pod: traffic to the node's `host_port` (on `host_ip`, or any local
/// address) goes to `pod_ip:container_port`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HostPort {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub pod_ip: Ipv4Addr,
    pub container_port: u16,
}

/// The nftables script for a set of mappings (every pod's), replacing the table whole.
pub fn hostport_rules(all: &[HostPort], cluster_cidr: Ipv4Net) -> String {
    let mut s = String::from("table ip kite-hostports\ndelete table ip kite-hostports\n");
    if all.is_empty() {
        return s;
    }
    let mut dnat = String::new();
    for m in all {
        let dst = match m.host_ip {
            Some(ip) if !ip.is_unspecified() => format!("ip daddr {ip}"),
            _ => "fib daddr type local".to_string(),
        };
        dnat.push_str(&format!(
            "    {dst} {} dport {} dnat to {}:{}\n",
            m.protocol, m.host_port, m.pod_ip, m.container_port
        ));
    }
    s.push_str(&format!(
        "table ip kite-hostports {{\n  \
         chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{dnat}  }}\n  \
         chain output {{\n    type nat hook output priority -100; policy accept;\n{dnat}  }}\n  \
         chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         ip saddr 127.0.0.0/8 ip daddr {cluster_cidr} masquerade\n  }}\n}}\n"
    ));
    s
}

/// Runs an nftables script (one transaction, the service proxy's runner); `Ok(false)`
/// when nft is not installed.
async fn run_nft(script: &str) -> Result<bool> {
    match kite_proxy::nft::apply(script).await {
        Ok(()) => Ok(true),
        Err(kite_proxy::nft::NftError::Missing) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The host end's name for a pod: `kitev` + 8 hex digits of its uid hash (15 chars max).
pub fn host_veth(uid: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, uid.as_bytes());
    let h = d.as_ref();
    format!("kitev{:02x}{:02x}{:02x}{:02x}", h[0], h[1], h[2], h[3])
}

impl Network {
    pub fn new(data_dir: &Path, pod_cidr: Ipv4Net, cluster_cidr: Ipv4Net) -> Self {
        Network {
            pod_cidr,
            cluster_cidr,
            ipam_dir: data_dir
                .join("agent")
                .join("ipam")
                .join(pod_cidr.to_string().replace('/', "-")),
            hostports_dir: data_dir.join("agent").join("hostports"),
            hostports_lock: Default::default(),
            cni: None,
            held: Default::default(),
            checked: Default::default(),
            mtu: None,
            v6: None,
        }
    }

    /// The node's IPv6 podCIDR too (a dual-stack cluster): pods get an address of each.
    pub fn with_v6(mut self, data_dir: &Path, pod_cidr: Ipv6Net, cluster_cidr: Ipv6Net) -> Self {
        self.v6 = Some(V6 {
            pod_cidr,
            cluster_cidr,
            ipam_dir: data_dir
                .join("agent")
                .join("ipam")
                .join(pod_cidr.to_string().replace([':', '/'], "-")),
            held: Default::default(),
        });
        self
    }

    /// The pod's IPv6 address on a dual-stack node (the built-in network; CNI plugins'
    /// pods report their first address only).
    pub fn pod_ip_v6(&self, uid: &str) -> Option<Ipv6Addr> {
        match (&self.cni, &self.v6) {
            (None, Some(v6)) => v6.held_by(uid),
            _ => None,
        }
    }

    /// Pods' interfaces get this MTU.
    pub fn with_mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Pods get their network from these CNI plugins instead of the built-in bridge.
    pub fn with_cni(mut self, cni: crate::cni::Cni) -> Self {
        self.cni = Some(cni);
        self
    }

    pub fn uses_cni(&self) -> bool {
        self.cni.is_some()
    }

    /// The pod's address, if it has been plumbed.
    pub fn pod_ip(&self, uid: &str) -> Option<Ipv4Addr> {
        match &self.cni {
            Some(c) => c.pod_ip(uid),
            None => self.held_by(uid),
        }
    }

    /// Whether the CNI plugins, not kite, map this pod's hostPorts.
    pub fn plugin_maps_ports(&self, uid: &str) -> bool {
        self.cni.as_ref().is_some_and(|c| c.maps_ports(uid))
    }

    /// Gives the pod's network namespace an address: the built-in veth and IPAM, or
    /// CNI ADD. Nothing is left behind on failure.
    pub async fn plumb(
        &self,
        pod: &crate::cni::PodRef<'_>,
        netns: &Path,
        ports: &[crate::cni::PortMapping],
    ) -> Result<Ipv4Addr> {
        if let Some(cni) = &self.cni {
            let conf = cni
                .config()?
                .ok_or_else(|| anyhow!("network plugin not ready: cni config uninitialized"))?;
            let ip = cni.add(&conf, pod, netns, ports).await?;
            self.checked.lock().unwrap().insert(pod.uid.to_string());
            return Ok(ip);
        }
        let ip = self.allocate(pod.uid)?;
        let ip6 = match self.v6.as_ref().map(|v6| v6.allocate(pod.uid)).transpose() {
            Ok(a) => a,
            Err(e) => {
                self.release(pod.uid);
                return Err(e);
            }
        };
        if let Err(e) = self.attach(pod.uid, netns, ip, ip6).await {
            self.release(pod.uid);
            return Err(e);
        }
        Ok(ip)
    }

    /// A restarted kite adopting a sandbox: CHECK its CNI attachment once (the built-in
    /// network has nothing to check). An error means the network is not as ADD made it.
    pub async fn check(&self, uid: &str) -> Result<()> {
        let Some(cni) = &self.cni else {
            return Ok(());
        };
        if self.checked.lock().unwrap().contains(uid) {
            return Ok(());
        }
        cni.check(uid).await?;
        tracing::info!(pod_uid = uid, "adopted the pod's CNI network: CHECK passed");
        self.checked.lock().unwrap().insert(uid.to_string());
        Ok(())
    }

    /// Takes the pod's address back: the veth and IPAM entry, or CNI DEL.
    pub async fn unplumb(&self, uid: &str) -> Result<()> {
        self.checked.lock().unwrap().remove(uid);
        if let Some(cni) = &self.cni {
            return Ok(cni.del(uid).await?);
        }
        self.detach(uid).await;
        self.release(uid);
        Ok(())
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.pod_cidr.network()) + 1)
    }

    /// The bridge, its address, forwarding, and masquerade: idempotent.
    pub async fn ensure_host(&self) -> Result<()> {
        if self.cni.is_some() {
            // The plugins own the pod network; kite keeps only its hostPort table.
            return self.sync_hostports().await;
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling ip_forward")?;
        let gw = self.gateway();
        let prefix = self.pod_cidr.prefix_len();
        let v6 = self
            .v6
            .as_ref()
            .map(|v| (v.gateway(), v.pod_cidr.prefix_len()));
        if v6.is_some() {
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
                .context("enabling IPv6 forwarding")?;
        }
        with_handle(|h| async move {
            let idx = match index_of(&h, BRIDGE).await? {
                Some(i) => i,
                None => {
                    h.link()
                        .add(LinkBridge::new(BRIDGE).build())
                        .execute()
                        .await
                        .context("creating the kite0 bridge")?;
                    index_of(&h, BRIDGE)
                        .await?
                        .ok_or_else(|| anyhow!("kite0 vanished"))?
                }
            };
            ensure_address(&h, idx, IpAddr::V4(gw), prefix)
                .await
                .context("addressing kite0")?;
            if let Some((gw6, prefix6)) = v6 {
                ensure_address(&h, idx, IpAddr::V6(gw6), prefix6)
                    .await
                    .context("giving kite0 its IPv6 address")?;
            }
            h.link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await?;
            Ok(())
        })
        .await?;
        self.ensure_masquerade().await
    }

    async fn ensure_masquerade(&self) -> Result<()> {
        let c = self.cluster_cidr;
        let mut rules = format!(
            "table ip kite-nat\ndelete table ip kite-nat\n\
             table ip kite-nat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
             ip saddr {c} ip daddr != {c} masquerade\n  }}\n}}\n"
        );
        if let Some(v6) = &self.v6 {
            let c = v6.cluster_cidr;
            let _ = write!(
                rules,
                "table ip6 kite-nat\ndelete table ip6 kite-nat\n\
                 table ip6 kite-nat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
                 ip6 saddr {c} ip6 daddr != {c} masquerade\n  }}\n}}\n"
            );
        }
        match run_nft(&rules).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "nft is missing (apt-get install nftables): pods cannot reach beyond the cluster CIDR"
            ),
            Err(e) => tracing::warn!(error = %e, "setting up masquerade"),
        }
        // DNAT of 127.0.0.1:<hostPort> to a pod needs loopback sources routed out of kite0.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet"),
            "1",
        );
        self.sync_hostports().await
    }

    /// Records the pod's hostPorts (none: forgets them) and rebuilds the table if they
    /// changed.
    pub async fn set_hostports(&self, uid: &str, ports: &[HostPort]) -> Result<()> {
        let path = self.hostports_dir.join(uid);
        let had: Vec<HostPort> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if had == ports {
            return Ok(());
        }
        if ports.is_empty() {
            let _ = std::fs::remove_file(&path);
        } else {
            std::fs::create_dir_all(&self.hostports_dir)?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(ports)?)?;
            std::fs::rename(&tmp, &path)?;
        }
        self.sync_hostports().await
    }

    /// Rebuilds `kite-hostports` from every pod's record.
    pub async fn sync_hostports(&self) -> Result<()> {
        let _one = self.hostports_lock.lock().await;
        let mut all = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.hostports_dir) {
            for e in rd.flatten() {
                if e.path().extension().is_some() {
                    continue;
                }
                if let Ok(v) = std::fs::read(e.path())
                    .map_err(anyhow::Error::from)
                    .and_then(|b| Ok(serde_json::from_slice::<Vec<HostPort>>(&b)?))
                {
                    all.extend(v);
                }
            }
        }
        all.sort_by_key(|m| (m.host_port, m.protocol.clone()));
        match run_nft(&hostport_rules(&all, self.cluster_cidr)).await {
            Ok(true) => Ok(()),
            Ok(false) if all.is_empty() => Ok(()),
            Ok(false) => bail!("hostPort needs nft (apt-get install nftables)"),
            Err(e) => Err(e.context("setting up hostPort rules")),
        }
    }

    /// The address already held by `uid`, or the next free one (see [`claim`]).
    pub fn allocate(&self, uid: &str) -> Result<Ipv4Addr> {
        let mut guard = self.held.lock().unwrap();
        let held = guard.get_or_insert_with(|| read_held(&self.ipam_dir));
        let net = u128::from(u32::from(self.pod_cidr.network()));
        let size = 1u128 << (32 - self.pod_cidr.prefix_len());
        // Usable offsets: 2 ..= size - 2 (not the network, the gateway or broadcast).
        let usable = size.saturating_sub(3);
        let v4 = |n: u128| Ipv4Addr::from(n as u32);
        let num = |a: Ipv4Addr| u128::from(u32::from(a));
        claim(&self.ipam_dir, uid, held, (net, usable), v4, num)?
            .ok_or_else(|| anyhow!("no free address left in {}", self.pod_cidr))
    }

    pub fn held_by(&self, uid: &str) -> Option<Ipv4Addr> {
        let mut guard = self.held.lock().unwrap();
        guard
            .get_or_insert_with(|| read_held(&self.ipam_dir))
            .get(uid)
            .copied()
    }

    /// Frees the pod's addresses (both families on a dual-stack node).
    pub fn release(&self, uid: &str) {
        let mut guard = self.held.lock().unwrap();
        let held = guard.get_or_insert_with(|| read_held(&self.ipam_dir));
        if let Some(ip) = held.remove(uid) {
            let _ = std::fs::remove_file(self.ipam_dir.join(ip.to_string()));
        }
        drop(guard);
        if let Some(v6) = &self.v6 {
            v6.release(uid);
        }
    }

    /// Plumbs the pod's network namespace: veth into the bridge, `eth0` with `ip`, a
    /// default route via the bridge, loopback up.
    ///
    /// The veth is created with its pod end (`eth0`) already in the pod's namespace.
    /// Moving an existing link between namespaces waits for an RCU grace period while
    /// holding the kernel's RTNL lock (about 27 ms on the bench machine), which would
    /// serialize every pod start on the node.
    pub async fn attach(
        &self,
        uid: &str,
        netns: &Path,
        ip: Ipv4Addr,
        ip6: Option<Ipv6Addr>,
    ) -> Result<()> {
        let host = host_veth(uid);
        let mtu = self.mtu;
        let ns =
            std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
        with_handle(|h| async move {
            if let Some(i) = index_of(&h, &host).await? {
                // Left over from an earlier attempt (its pod end goes with it).
                h.link().del(i).execute().await.ok();
            }
            let br = index_of(&h, BRIDGE)
                .await?
                .ok_or_else(|| anyhow!("kite0 is missing"))?;
            let mut pod_end = LinkMessageBuilder::<LinkUnspec>::new()
                .name(POD_IF)
                .setns_by_fd(ns.as_raw_fd());
            let mut veth = LinkVeth::new(&host, POD_IF);
            if let Some(m) = mtu {
                pod_end = pod_end.mtu(m);
                veth = veth.mtu(m);
            }
            h.link()
                .add(
                    veth.set_info_data(InfoData::Veth(InfoVeth::Peer(pod_end.build())))
                        .controller(br)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .with_context(|| format!("creating veth {host} into the pod"))?;
            Ok(())
        })
        .await?;
        // Hairpin: a pod reaching itself through a Service gets its own packet back out
        // of the bridge port it came in by (br_netfilter bridges a DNATed packet whose
        // new destination is on the bridge), as upstream's hairpin-veth mode and the
        // bridge CNI plugin's hairpinMode allow.
        let hairpin = format!("/sys/class/net/{}/brport/hairpin_mode", host_veth(uid));
        std::fs::write(&hairpin, "1").with_context(|| format!("setting {hairpin}"))?;
        let gw = self.gateway();
        let prefix = self.pod_cidr.prefix_len();
        let v6 = self
            .v6
            .as_ref()
            .zip(ip6)
            .map(|(v, ip6)| (ip6, v.gateway(), v.pod_cidr.prefix_len()));
        in_netns(netns, move || async move {
            with_handle(|h| async move {
                let lo = index_of(&h, "lo").await?.ok_or_else(|| anyhow!("no lo"))?;
                h.link()
                    .set(LinkUnspec::new_with_index(lo).up().build())
                    .execute()
                    .await?;
                let i = index_of(&h, POD_IF)
                    .await?
                    .ok_or_else(|| anyhow!("{POD_IF} is not in the pod"))?;
                h.address()
                    .add(i, IpAddr::V4(ip), prefix)
                    .execute()
                    .await
                    .context("addressing eth0")?;
                h.link()
                    .set(LinkUnspec::new_with_index(i).up().build())
                    .execute()
                    .await?;
                h.route()
                    .add(RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build())
                    .execute()
                    .await
                    .context("adding the default route")?;
                if let Some((ip6, gw6, prefix6)) = v6 {
                    ensure_address(&h, i, IpAddr::V6(ip6), prefix6)
                        .await
                        .context("giving eth0 its IPv6 address")?;
                    h.route()
                        .add(RouteMessageBuilder::<Ipv6Addr>::new().gateway(gw6).build())
                        .execute()
                        .await
                        .context("adding the IPv6 default route")?;
                }
                Ok(())
            })
            .await
        })
        .await
    }

    /// Removes the host end of the pod's veth (the pod end goes with it).
    pub async fn detach(&self, uid: &str) {
        let host = host_veth(uid);
        let _ = with_handle(|h| async move {
            if let Some(i) = index_of(&h, &host).await? {
                h.link().del(i).execute().await?;
            }
            Ok(())
        })
        .await;
    }
}

/// Runs `f` on a fresh thread that has entered the network namespace at `path`, with
/// its own single-threaded runtime (netlink sockets belong to the namespace they were
/// opened in).
async fn in_netns<F, Fut>(path: &Path, f: F) -> Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>>,
{
    let ns = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || -> Result<()> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(f())
        })
        .join()
        .map_err(|_| anyhow!("the netns thread panicked"))?
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostport_rules_dnat_local_and_given_addresses() {
        let cidr: Ipv4Net = "10.42.0.0/16".parse().unwrap();
        assert!(!hostport_rules(&[], cidr).contains("chain"));
        let m = |host_ip, port| HostPort {
            protocol: "tcp".into(),
            host_ip,
            host_port: port,
            pod_ip: Ipv4Addr::new(10, 42, 0, 5),
            container_port: 80,
        };
        let r = hostport_rules(
            &[m(None, 8080), m(Some(Ipv4Addr::new(192, 0, 2, 1)), 8081)],
            cidr,
        );
        assert!(r.contains("fib daddr type local tcp dport 8080 dnat to 10.42.0.5:80"));
        assert!(r.contains("ip daddr 192.0.2.1 tcp dport 8081 dnat to 10.42.0.5:80"));
        assert!(r.contains("ip saddr 127.0.0.0/8 ip daddr 10.42.0.0/16 masquerade"));
    }

    #[test]
    fn ipam_hands_out_addresses_round_the_range_and_survives_a_restart() {
        let d = std::env::temp_dir().join(format!("kite-ipam-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let cidr: Ipv4Net = "10.42.3.0/24".parse().unwrap();
        let all: Ipv4Net = "10.42.0.0/16".parse().unwrap();
        let n = Network::new(&d, cidr, all);
        assert_eq!(n.allocate("a").unwrap(), Ipv4Addr::new(10, 42, 3, 2));
        assert_eq!(n.allocate("b").unwrap(), Ipv4Addr::new(10, 42, 3, 3));
        assert_eq!(n.allocate("a").unwrap(), Ipv4Addr::new(10, 42, 3, 2));
        n.release("a");
        assert_eq!(n.held_by("a"), None);
        // A new process reads the files: b keeps its address, and the freed one is not
        // handed out again before the range wraps.
        let n2 = Network::new(&d, cidr, all);
        assert_eq!(n2.held_by("b"), Some(Ipv4Addr::new(10, 42, 3, 3)));
        assert_eq!(n2.allocate("c").unwrap(), Ipv4Addr::new(10, 42, 3, 4));
        for i in 5..=254 {
            assert_eq!(
                n2.allocate(&format!("p{i}")).unwrap(),
                Ipv4Addr::new(10, 42, 3, i)
            );
        }
        // The range is used up to .254 (.255 is broadcast): next is the freed .2, then full.
        assert_eq!(n2.allocate("wrap").unwrap(), Ipv4Addr::new(10, 42, 3, 2));
        assert!(n2.allocate("full").is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn ipv6_ipam_beside_ipv4() {
        let d = std::env::temp_dir().join(format!("kite-ipam6-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        // A node's network as a (re)started kite makes it.
        let dual = || {
            Network::new(
                &d,
                "10.42.3.0/24".parse().unwrap(),
                "10.42.0.0/16".parse().unwrap(),
            )
            .with_v6(
                &d,
                "fd42:0:0:3::/64".parse().unwrap(),
                "fd42::/56".parse().unwrap(),
            )
        };
        let n = dual();
        let v6 = n.v6.as_ref().unwrap();
        assert_eq!(v6.gateway(), "fd42:0:0:3::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            v6.allocate("a").unwrap(),
            "fd42:0:0:3::2".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            v6.allocate("b").unwrap(),
            "fd42:0:0:3::3".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(n.pod_ip_v6("a"), Some("fd42:0:0:3::2".parse().unwrap()));
        n.allocate("a").unwrap();
        n.release("a");
        assert_eq!(n.pod_ip_v6("a"), None);
        assert_eq!(n.held_by("a"), None);
        // A restarted kite reads b's address back, and goes on after the last one.
        let n2 = dual();
        assert_eq!(n2.pod_ip_v6("b"), Some("fd42:0:0:3::3".parse().unwrap()));
        assert_eq!(
            n2.v6.as_ref().unwrap().allocate("c").unwrap(),
            "fd42:0:0:3::4".parse::<Ipv6Addr>().unwrap()
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
