//! A pod's volumes on the node: each kind made ready under the pod's directory
//! (`<pod>/volumes/kubernetes.io~<kind>/<name>`, upstream's layout) before its containers
//! start, kept current while it runs (configMap, secret, downwardAPI and projected volumes
//! are rewritten atomically when their sources change), and unmounted when it goes. The
//! containers' mounts (subPath, read-only, propagation) come from [`Ready::mounts`].
//!
//! - emptyDir: a directory, or a tmpfs with `medium: Memory`;
//! - hostPath: the node's path, after upstream's `type` checks;
//! - configMap, downwardAPI: files on disk; secret and projected (which carries the
//!   ServiceAccount token): files on a tmpfs, never on disk.
//!
//! Mounts are found again after a kite restart (`/proc/self/mountinfo`), never made twice.

pub mod atomic;
mod host;
pub use host::is_mount_point;
pub mod sources;

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use sources::{Objects, Tokens};

/// Why a volume could not be set up: the volume and upstream's reason.
#[derive(Debug, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume \"{volume}\" : {reason}")]
pub struct SetupError {
    pub volume: String,
    pub reason: String,
}

/// A pod's volumes, set up: where each one is on the node.
#[derive(Debug, Default, Clone)]
pub struct Ready {
    paths: HashMap<String, PathBuf>,
    /// Volumes every container gets read-only (the API-backed kinds, as upstream).
    read_only: std::collections::HashSet<String>,
}

/// Upstream's plugin directory names.
fn plugin(v: &Volume) -> Option<&'static str> {
    Some(if v.empty_dir.is_some() {
        "kubernetes.io~empty-dir"
    } else if v.config_map.is_some() {
        "kubernetes.io~configmap"
    } else if v.secret.is_some() {
        "kubernetes.io~secret"
    } else if v.downward_api.is_some() {
        "kubernetes.io~downward-api"
    } else if v.projected.is_some() {
        "kubernetes.io~projected"
    } else {
        return None;
    })
}

/// The pod's fsGroup, which its writable volumes' files belong to.
fn fs_group(pod: &Pod) -> Option<u32> {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok())
}

/// Sets up every volume of `pod` under `pod_dir` (again: files are rewritten only when
/// they change, mounts made only when missing).
pub async fn setup(ctx: &sources::Ctx<'_>, pod_dir: &Path) -> Result<Ready, SetupError> {
    let spec = ctx.pod.spec.clone().unwrap_or_default();
    let mut ready = Ready::default();
    let gid = fs_group(ctx.pod);
    for v in spec.volumes.iter().flatten() {
        let fail = |reason: String| SetupError {
            volume: v.name.clone(),
            reason,
        };
        if let Some(h) = &v.host_path {
            host::check_host_path(&h.path, h.type_.as_deref().unwrap_or_default()).map_err(fail)?;
            ready.paths.insert(v.name.clone(), PathBuf::from(&h.path));
            continue;
        }
        if v.image.is_some() {
            let dir = ctx
                .images
                .get(&v.name)
                .ok_or_else(|| fail("the image volume is not mounted yet".into()))?;
            ready.paths.insert(v.name.clone(), dir.clone());
            ready.read_only.insert(v.name.clone());
            continue;
        }
        let Some(kind) = plugin(v) else {
            return Err(fail(
                "this kind of volume is not supported by kite yet (emptyDir, hostPath, configMap, secret, downwardAPI, projected and image are)".into(),
            ));
        };
        let dir = pod_dir.join("volumes").join(kind).join(&v.name);
        std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
        if let Some(e) = &v.empty_dir {
            if e.medium.as_deref() == Some("Memory") {
                let size = e.size_limit.as_ref().and_then(|q| {
                    kite_runtime::quantity::parse_milli(&q.0)
                        .map(|m| i64::try_from((m / 1000).max(4096)).unwrap_or(i64::MAX))
                });
                host::ensure_tmpfs(&dir, size).map_err(fail)?;
            }
            // Writable by every user, as upstream's (with the fsGroup's group, setgid).
            host::chmod(&dir, 0o777).map_err(fail)?;
            if let Some(g) = gid {
                host::chgrp(&dir, g).map_err(fail)?;
                host::chmod(&dir, 0o2777).map_err(fail)?;
            }
            ready.paths.insert(v.name.clone(), dir);
            continue;
        }
        if v.secret.is_some() || v.projected.is_some() {
            host::ensure_tmpfs(&dir, None).map_err(fail)?;
        }
        let mut payload = atomic::Payload::new();
        if let Some(c) = &v.config_map {
            sources::config_map(
                ctx,
                &c.name,
                c.items.as_ref(),
                c.default_mode,
                c.optional == Some(true),
                &mut payload,
            )
            .await
            .map_err(fail)?;
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            sources::secret(
                ctx,
                &name,
                s.items.as_ref(),
                s.default_mode,
                s.optional == Some(true),
                &mut payload,
            )
            .await
            .map_err(fail)?;
        } else if let Some(d) = &v.downward_api {
            sources::downward(
                ctx,
                d.items.as_deref().unwrap_or_default(),
                d.default_mode,
                &mut payload,
            )
            .map_err(fail)?;
        } else if let Some(p) = &v.projected {
            sources::projected(ctx, p, &mut payload)
                .await
                .map_err(fail)?;
        }
        if gid.is_some() {
            // Group-readable for the fsGroup, as upstream's SetVolumeOwnership.
            for f in payload.values_mut() {
                f.mode |= 0o040;
            }
        }
        atomic::write(&dir, &payload, gid).map_err(|e| fail(e.to_string()))?;
        ready.paths.insert(v.name.clone(), dir);
        ready.read_only.insert(v.name.clone());
    }
    Ok(ready)
}

/// The API objects volumes are made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    ConfigMap,
    Secret,
}

/// Whether one of the pod's volumes is made from this ConfigMap or Secret.
pub fn references(pod: &Pod, kind: Source, name: &str) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| match kind {
            Source::ConfigMap => {
                v.config_map.as_ref().is_some_and(|c| c.name == name)
                    || v.projected
                        .iter()
                        .flat_map(|p| p.sources.iter().flatten())
                        .any(|s| s.config_map.as_ref().is_some_and(|c| c.name == name))
            }
            Source::Secret => {
                v.secret
                    .as_ref()
                    .is_some_and(|s| s.secret_name.as_deref() == Some(name))
                    || v.projected
                        .iter()
                        .flat_map(|p| p.sources.iter().flatten())
                        .any(|s| s.secret.as_ref().is_some_and(|c| c.name == name))
            }
        })
}

/// Whether the pod has volumes whose content follows API objects (rewritten on resync).
pub fn follows_api(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| {
            v.config_map.is_some()
                || v.secret.is_some()
                || v.downward_api.is_some()
                || v.projected.is_some()
        })
}

/// Unmounts whatever was mounted under the pod's directory (before it is removed).
pub fn teardown(pod_dir: &Path) {
    host::unmount_under(&pod_dir.join("volumes"));
}

impl Ready {
    /// The OCI mounts of a container's volumeMounts; `env` expands `subPathExpr`.
    pub fn mounts(
        &self,
        c: &Container,
        env: &BTreeMap<String, String>,
    ) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let root = self
                .paths
                .get(&m.name)
                .ok_or_else(|| format!("volume {:?} is not among the pod's volumes", m.name))?;
            let sub = match (&m.sub_path, &m.sub_path_expr) {
                (Some(s), _) if !s.is_empty() => Some(s.clone()),
                (_, Some(e)) if !e.is_empty() => Some(crate::spec::expand(e, env)),
                _ => None,
            };
            let source = match sub {
                None => root.clone(),
                Some(s) => host::sub_path(root, &s)?,
            };
            let ro = m.read_only == Some(true) || self.read_only.contains(&m.name);
            let propagation = match m.mount_propagation.as_deref() {
                Some("HostToContainer") => "rslave",
                Some("Bidirectional") => "rshared",
                _ => "rprivate",
            };
            out.push(json!({
                "destination": m.mount_path,
                "type": "bind",
                "source": source,
                "options": ["rbind", propagation, if ro { "ro" } else { "rw" }],
            }));
        }
        Ok(out)
    }

    /// Whether a container mounts something at `path` (kite then leaves its own file there
    /// alone, e.g. `/etc/hosts`).
    pub fn mounts_at(c: &Container, path: &str) -> bool {
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path.trim_end_matches('/') == path)
    }
}
