//! The `wireguard-native` backend (K3s's `--flannel-backend wireguard-native`): pod
//! traffic between nodes goes encrypted through a `kite-wg` WireGuard device.
//!
//! - The device is the kernel's (`ip link add … type wireguard`, made over rtnetlink).
//!   Where the kernel has no WireGuard, kite starts `wireguard-go kite-wg`, the userspace
//!   implementation, as `wg-quick` does; a kernel with neither gets one clear error.
//! - Keys and peers are set with WireGuard's own tool, `wg` (wireguard-tools), which
//!   speaks to either kind of device: the private key is made once with `wg genkey` and
//!   kept in `<data-dir>/agent/wireguard/private.key` (0600), so a restarted node keeps
//!   its public key; each node announces that key in its annotations.
//! - Per other node one peer (its public key, endpoint `<node IP>:51820`, allowed IPs its
//!   podCIDR, a keepalive of 25 s as flannel's) and one route to its podCIDR on
//!   `kite-wg`, carrying kite's protocol number; peers and routes of nodes that went are
//!   removed. `wg syncconf` changes only what differs, so a sync does not break live
//!   sessions.
//! - MTU: the node link's less 80 (an IPv6 outer header, as wg-quick assumes).
//!
//! With the userspace device its control socket is `/run/wireguard/kite-wg.sock`: nodes
//! that share a host (tests) need a mount namespace each for it.

use crate::netlink::{link, link_of, up_with_address, with_handle};
use crate::{Peer, RTPROT_KITE};
use anyhow::{anyhow, bail, Context, Result};
use ipnet::Ipv4Net;
use rtnetlink::packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{LinkWireguard, RouteMessageBuilder};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::process::Command;

pub const DEVICE: &str = "kite-wg";
pub const PORT: u16 = 51820;
/// WireGuard's cost per packet with an IPv6 outer header (wg-quick's figure).
pub const OVERHEAD: u32 = 80;
/// flannel's keepalive, so that peers behind NAT stay reachable.
pub const KEEPALIVE: u32 = 25;

/// Where the node's WireGuard key lives, under its data dir.
pub fn key_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent/wireguard")
}

/// Runs `wg ARGS` and returns its output; a missing `wg` gets the package to install.
async fn wg(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("wg");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!("`wg` is not installed: the wireguard-native backend needs wireguard-tools (apt-get install wireguard-tools)")
        } else {
            anyhow!("running wg: {e}")
        }
    })?;
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut i = child.stdin.take().expect("piped");
        i.write_all(input.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "wg {}: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The node's key pair: the private key's file (made on first use) and the public key.
pub async fn ensure_key(dir: &Path) -> Result<(PathBuf, String)> {
    let file = dir.join("private.key");
    if !file.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let key = wg(&["genkey"], None).await?;
        // Written whole under another name, then renamed: never a half-written key.
        let tmp = dir.join("private.key.new");
        write_private(&tmp, format!("{key}\n").as_bytes())?;
        std::fs::rename(&tmp, &file)?;
    }
    let private =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let public = wg(&["pubkey"], Some(&private))
        .await
        .with_context(|| format!("{} holds no WireGuard key", file.display()))?;
    Ok((file, public))
}

/// Makes `kite-wg` (the kernel's, else wireguard-go's) if missing, with the node's key and
/// port, up, with its link's MTU less [`OVERHEAD`] and this node's podCIDR network
/// address. A `kite-wg` that nothing answers for (its wireguard-go gone) is made again.
pub async fn ensure_device(node_ip: Ipv4Addr, own: Ipv4Net, key: &Path) -> Result<()> {
    let key = key.to_string_lossy();
    let port = PORT.to_string();
    let set = ["set", DEVICE, "private-key", &key, "listen-port", &port];
    let existed = make_device().await?;
    if let Err(e) = wg(&set, None).await {
        if !existed {
            return Err(e);
        }
        tracing::warn!(error = %format!("{e:#}"), "kite-wg is there but no WireGuard answers for it: making it again");
        remove_device().await?;
        make_device().await?;
        wg(&set, None).await?;
    }
    with_handle(|h| async move {
        let (_, mtu) = link_of(&h, node_ip).await?;
        up_with_address(&h, DEVICE, mtu.saturating_sub(OVERHEAD), own).await?;
        Ok(())
    })
    .await
}

/// Makes `kite-wg` unless it is there; says whether it was.
async fn make_device() -> Result<bool> {
    let kernel = with_handle(|h| async move {
        if link(&h, DEVICE).await?.is_some() {
            return Ok(None);
        }
        match h
            .link()
            .add(LinkWireguard::new(DEVICE).build())
            .execute()
            .await
        {
            Ok(()) => Ok(Some(true)),
            // No WireGuard in this kernel (EOPNOTSUPP, as `ip link` reports "Unknown
            // device type").
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code() == -(nix::errno::Errno::EOPNOTSUPP as i32) =>
            {
                Ok(Some(false))
            }
            Err(e) => Err(anyhow::Error::new(e).context("creating kite-wg")),
        }
    })
    .await?;
    match kernel {
        None => Ok(true),
        Some(true) => Ok(false),
        Some(false) => userspace_device().await.map(|()| false),
    }
}

/// Starts `wireguard-go kite-wg` (it makes the TUN device and stays in the background
/// until the device is removed).
async fn userspace_device() -> Result<()> {
    // (Bounded: the daemon it leaves must not hold its output open, but if a version did,
    // the node would wait here for ever.)
    let run = Command::new("wireguard-go")
        .arg(DEVICE)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let Ok(out) = tokio::time::timeout(std::time::Duration::from_secs(10), run).await else {
        bail!("wireguard-go did not start kite-wg within 10 s");
    };
    match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "this kernel has no WireGuard: load its module (modprobe wireguard), install wireguard-go for a userspace one, or use --network-backend vxlan"
        ),
        Err(e) => bail!("running wireguard-go: {e}"),
        Ok(o) if !o.status.success() => bail!(
            "wireguard-go could not make kite-wg: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(_) => {
            tracing::info!("this kernel has no WireGuard: kite-wg is wireguard-go's (userspace)");
            Ok(())
        }
    }
}

/// Removes `kite-wg` (another backend was chosen); wireguard-go ends with its device.
pub async fn remove_device() -> Result<()> {
    crate::netlink::remove_link(DEVICE).await
}

/// Writes `bytes` to `path` for root alone (0600), synced.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// The peers' part of the device's configuration, as `wg syncconf` reads it (pure:
/// unit-tested). Peers without a key yet are left out.
pub fn config(private_key: &str, peers: &[&Peer], own: &crate::Own) -> String {
    let mut s = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {PORT}\n",
        private_key.trim()
    );
    for p in peers {
        let Some(k) = &p.wg_key else { continue };
        let allowed = match own.peer_v6(p) {
            Some(v6) => format!("{}, {v6}", p.pod_cidr),
            None => p.pod_cidr.to_string(),
        };
        let _ = write!(
            s,
            "\n[Peer]\nPublicKey = {k}\nEndpoint = {}:{PORT}\nAllowedIPs = {allowed}\nPersistentKeepalive = {KEEPALIVE}\n",
            p.ip
        );
    }
    s
}

/// Per peer a WireGuard peer and a route to its podCIDR on `kite-wg`; the peers and routes
/// of nodes that went are removed.
pub async fn sync(peers: &[Peer], cluster: Ipv4Net, ranges: &crate::Own, key: &Path) -> Result<()> {
    let own = ranges.v4;
    let peers: Vec<&Peer> = peers
        .iter()
        .filter(|p| p.pod_cidr != own && cluster.contains(&p.pod_cidr) && p.wg_key.is_some())
        .collect();
    let private =
        std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    // The configuration holds the private key: written for root alone, removed after.
    let conf = key.with_file_name("kite-wg.conf");
    write_private(&conf, config(&private, &peers, ranges).as_bytes())?;
    let r = wg(&["syncconf", DEVICE, &conf.to_string_lossy()], None).await;
    let _ = std::fs::remove_file(&conf);
    r?;
    let keep: HashSet<Ipv4Net> = peers.iter().map(|p| p.pod_cidr).collect();
    let keep6: HashSet<ipnet::Ipv6Net> = peers.iter().filter_map(|p| ranges.peer_v6(p)).collect();
    with_handle(|h| async move {
        let (idx, _) = link(&h, DEVICE)
            .await?
            .ok_or_else(|| anyhow!("kite-wg is missing"))?;
        crate::netlink::prune_routes(&h, &keep).await?;
        for net in &keep {
            let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .output_interface(idx)
                .scope(RouteScope::Link)
                .pref_source(own.network())
                .protocol(RouteProtocol::Other(RTPROT_KITE))
                .build();
            crate::netlink::replace_route(&h, msg)
                .await
                .with_context(|| format!("route to {net} on kite-wg"))?;
        }
        crate::netlink::prune_routes6(&h, &keep6).await?;
        for net in &keep6 {
            let msg = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .output_interface(idx)
                .protocol(RouteProtocol::Other(RTPROT_KITE))
                .build();
            crate::netlink::replace_route(&h, msg)
                .await
                .with_context(|| format!("route to {net} on kite-wg"))?;
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, cidr: &str, ip: &str, key: Option<&str>) -> Peer {
        Peer {
            name: name.into(),
            pod_cidr: cidr.parse().unwrap(),
            ip: ip.parse().unwrap(),
            pod_cidr_v6: None,
            ip6: None,
            mac: None,
            wg_key: key.map(String::from),
        }
    }

    #[test]
    fn config_has_a_peer_per_node_with_a_key() {
        let a = peer("a", "10.42.1.0/24", "10.0.0.2", Some("AAAA="));
        let b = peer("b", "10.42.2.0/24", "10.0.0.3", None);
        let own = crate::Own {
            v4: "10.42.0.0/24".parse().unwrap(),
            v6: None,
            cluster_v6: None,
        };
        let c = config("PRIV=\n", &[&a, &b], &own);
        assert_eq!(
            c,
            "[Interface]\nPrivateKey = PRIV=\nListenPort = 51820\n\n[Peer]\nPublicKey = AAAA=\nEndpoint = 10.0.0.2:51820\nAllowedIPs = 10.42.1.0/24\nPersistentKeepalive = 25\n"
        );
        // Dual-stack: the peer's IPv6 range rides the same tunnel.
        let mut a6 = a.clone();
        a6.pod_cidr_v6 = Some("fd42:0:0:1::/64".parse().unwrap());
        let dual = crate::Own {
            cluster_v6: Some("fd42::/56".parse().unwrap()),
            v6: Some("fd42::/64".parse().unwrap()),
            ..own
        };
        assert!(
            config("PRIV=", &[&a6], &dual).contains("AllowedIPs = 10.42.1.0/24, fd42:0:0:1::/64\n")
        );
    }
}
