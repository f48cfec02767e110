//! Image volumes (`volumes[].image`, upstream's ImageVolume): an image's root filesystem,
//! read-only, as a volume. The pod worker pulls the image as it would a container's (pull
//! policy, back-off, events); this makes a view snapshot of it, labelled with the pod
//! (a gc root, so containerd keeps it while the pod lives), and mounts it read-only at the
//! volume's directory; containers bind-mount that like any volume. The volumes' teardown
//! unmounts it; [`remove`] then drops the pod's snapshots.

use crate::containerd::{Containerd, SNAPSHOTTER};
use anyhow::{Context, Result};
use containerd_client::services::v1::snapshots::{
    ListSnapshotsRequest, MountsRequest, RemoveSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::types::Mount;
use futures::StreamExt;
use nix::mount::MsFlags;
use std::path::Path;

const L_POD: &str = "kite.io/image-volume-pod";

fn key(pod_uid: &str, volume: &str) -> String {
    format!("kite-image-volume-{pod_uid}-{volume}")
}

/// Mounts the image whose unpacked filesystem is the snapshot `top` at `dir`, read-only
/// (once: a mounted `dir` is left as it is).
pub async fn mount(
    cd: &Containerd,
    pod_uid: &str,
    volume: &str,
    top: &str,
    dir: &Path,
) -> Result<()> {
    if crate::volumes::is_mount_point(dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let k = key(pod_uid, volume);
    let made = cd
        .snapshots()
        .view(
            cd.req(ViewSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: k.clone(),
                parent: top.to_string(),
                labels: [
                    (L_POD.to_string(), pod_uid.to_string()),
                    (
                        "containerd.io/gc.root".to_string(),
                        jiff::Timestamp::now().to_string(),
                    ),
                ]
                .into_iter()
                .collect(),
            }),
        )
        .await;
    let mounts = match made {
        Ok(r) => r.into_inner().mounts,
        // Made before (a kite restart): its mounts again.
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            cd.snapshots()
                .mounts(cd.req(MountsRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: k,
                }))
                .await
                .context("reading the image volume's mounts")?
                .into_inner()
                .mounts
        }
        Err(s) => return Err(anyhow::Error::from(s).context("making the image volume's snapshot")),
    };
    for m in &mounts {
        mount_one(m, dir)?;
    }
    Ok(())
}

/// One of containerd's mounts at `target`, read-only whatever it says.
fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let mut flags = MsFlags::MS_RDONLY;
    let mut data = Vec::new();
    let mut bind = m.r#type == "bind";
    for o in &m.options {
        match o.as_str() {
            "ro" | "rw" => {}
            "bind" => bind = true,
            "rbind" => {
                bind = true;
                flags |= MsFlags::MS_REC;
            }
            other => data.push(other),
        }
    }
    let data = data.join(",");
    let fstype = (!bind).then_some(m.r#type.as_str());
    if bind {
        flags |= MsFlags::MS_BIND;
    }
    nix::mount::mount(
        Some(m.source.as_str()),
        target,
        fstype,
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .with_context(|| format!("mounting the image volume at {}", target.display()))?;
    if bind {
        // A bind mount takes the read-only flag only on a remount.
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .with_context(|| format!("making {} read-only", target.display()))?;
    }
    Ok(())
}

/// Removes the pod's image-volume snapshots (after their mounts are gone).
pub async fn remove(cd: &Containerd, pod_uid: &str) {
    let Ok(r) = cd
        .snapshots()
        .list(cd.req(ListSnapshotsRequest {
            snapshotter: SNAPSHOTTER.into(),
            filters: vec![format!("labels.\"{L_POD}\"=={pod_uid}")],
        }))
        .await
    else {
        return;
    };
    let mut stream = r.into_inner();
    let mut keys = Vec::new();
    while let Some(Ok(page)) = stream.next().await {
        keys.extend(page.info.into_iter().map(|i| i.name));
    }
    for k in keys {
        if let Err(e) = cd
            .snapshots()
            .remove(cd.req(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: k.clone(),
            }))
            .await
        {
            tracing::warn!(snapshot = %k, error = %e, "removing an image volume's snapshot");
        }
    }
}
