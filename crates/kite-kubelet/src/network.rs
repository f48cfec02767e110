//! kite's built-in pod network: the `kite0` bridge holding the first address of the
//! node's podCIDR, one veth pair per pod (host end `kitev<hash>` on the bridge, pod end
//! `eth0` in the pod's network namespace), host-local style IPAM persisted under
//! `<data-dir>/agent/ipam/`, loopback up, and masquerade (nftables table `kite-nat`) for
//! traffic leaving the cluster CIDR.

use anyhow::{anyhow, bail, Context, Result};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const BRIDGE: &str = "kite0";

pub struct Network {
    pub pod_cidr: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
    ipam_dir: PathBuf,
}

/// The host end's name for a pod: `kitev` + 8 hex digits of its uid hash (15 chars max).
pub fn host_veth(uid: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, uid.as_bytes());
    let h = d.as_ref();
    format!("kitev{:02x}{:02x}{:02x}{:02x}", h[0], h[1], h[2], h[3])
}

async fn with_handle<T, F, Fut>(f: F) -> Result<T>
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

async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn libc_enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
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
        }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.pod_cidr.network()) + 1)
    }

    /// The bridge, its address, forwarding, and masquerade: idempotent.
    pub async fn ensure_host(&self) -> Result<()> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling ip_forward")?;
        let gw = self.gateway();
        let prefix = self.pod_cidr.prefix_len();
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
            let mut addrs = h.address().get().set_link_index_filter(idx).execute();
            let mut have = false;
            while let Some(a) = addrs.try_next().await? {
                for attr in a.attributes {
                    if let rtnetlink::packet_route::address::AddressAttribute::Address(
                        IpAddr::V4(ip),
                    ) = attr
                    {
                        have |= ip == gw;
                    }
                }
            }
            if !have {
                h.address()
                    .add(idx, IpAddr::V4(gw), prefix)
                    .execute()
                    .await
                    .context("addressing kite0")?;
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
        let rules = format!(
            "table ip kite-nat\ndelete table ip kite-nat\n\
             table ip kite-nat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
             ip saddr {c} ip daddr != {c} masquerade\n  }}\n}}\n"
        );
        let mut child = match tokio::process::Command::new("nft")
            .arg("-f")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!("nft is missing (apt-get install nftables): pods cannot reach beyond the cluster CIDR");
                return Ok(());
            }
            Err(e) => return Err(e).context("running nft"),
        };
        use tokio::io::AsyncWriteExt;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(rules.as_bytes()).await?;
        }
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            tracing::warn!(error = %String::from_utf8_lossy(&out.stderr).trim(), "setting up masquerade");
        }
        Ok(())
    }

    /// The address already held by `uid`, or the lowest free one (claimed by creating
    /// `<ipam-dir>/<ip>` exclusively, so two pods never share one).
    pub fn allocate(&self, uid: &str) -> Result<Ipv4Addr> {
        std::fs::create_dir_all(&self.ipam_dir)?;
        if let Some(ip) = self.held_by(uid) {
            return Ok(ip);
        }
        let net = u32::from(self.pod_cidr.network());
        let size = 1u32 << (32 - self.pod_cidr.prefix_len());
        for off in 2..size.saturating_sub(1) {
            let ip = Ipv4Addr::from(net + off);
            let p = self.ipam_dir.join(ip.to_string());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(uid.as_bytes())?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.into()),
            }
        }
        bail!("no free address left in {}", self.pod_cidr)
    }

    pub fn held_by(&self, uid: &str) -> Option<Ipv4Addr> {
        std::fs::read_dir(&self.ipam_dir)
            .ok()?
            .flatten()
            .find_map(|e| {
                let holder = std::fs::read_to_string(e.path()).ok()?;
                (holder == uid).then(|| e.file_name().to_string_lossy().parse().ok())?
            })
    }

    pub fn release(&self, uid: &str) {
        if let Ok(rd) = std::fs::read_dir(&self.ipam_dir) {
            for e in rd.flatten() {
                if std::fs::read_to_string(e.path()).is_ok_and(|h| h == uid) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Plumbs the pod's network namespace: veth into the bridge, `eth0` with `ip`, a
    /// default route via the bridge, loopback up.
    pub async fn attach(&self, uid: &str, netns: &Path, ip: Ipv4Addr) -> Result<()> {
        let host = host_veth(uid);
        let peer = format!("kitep{}", &host[5..]);
        let ns =
            std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
        let (h2, p2) = (host.clone(), peer.clone());
        with_handle(|h| async move {
            if let Some(i) = index_of(&h, &h2).await? {
                // Left over from an earlier attempt.
                h.link().del(i).execute().await.ok();
            }
            h.link()
                .add(LinkVeth::new(&h2, &p2).build())
                .execute()
                .await
                .with_context(|| format!("creating veth {h2}"))?;
            let hi = index_of(&h, &h2)
                .await?
                .ok_or_else(|| anyhow!("{h2} vanished"))?;
            let pi = index_of(&h, &p2)
                .await?
                .ok_or_else(|| anyhow!("{p2} vanished"))?;
            let br = index_of(&h, BRIDGE)
                .await?
                .ok_or_else(|| anyhow!("kite0 is missing"))?;
            h.link()
                .set(LinkUnspec::new_with_index(hi).controller(br).up().build())
                .execute()
                .await
                .context("attaching the veth to kite0")?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(pi)
                        .setns_by_fd(ns.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .context("moving the veth into the pod")?;
            Ok(())
        })
        .await?;
        let gw = self.gateway();
        let prefix = self.pod_cidr.prefix_len();
        in_netns(netns, move || async move {
            with_handle(|h| async move {
                let lo = index_of(&h, "lo").await?.ok_or_else(|| anyhow!("no lo"))?;
                h.link()
                    .set(LinkUnspec::new_with_index(lo).up().build())
                    .execute()
                    .await?;
                let i = index_of(&h, &peer)
                    .await?
                    .ok_or_else(|| anyhow!("{peer} is not in the pod"))?;
                h.link()
                    .set(LinkUnspec::new_with_index(i).name("eth0").build())
                    .execute()
                    .await
                    .context("renaming to eth0")?;
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
