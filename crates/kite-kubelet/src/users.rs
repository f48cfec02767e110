//! Who a container runs as. Upstream's kubelet and containerd's CRI together decide the
//! uid, gid and supplementary groups from `runAsUser` / `runAsGroup`, the image's USER
//! and the image's own `/etc/passwd` and `/etc/group`; this module does the same, so an
//! image with `USER nobody` runs as nobody, not as root.
//!
//! The image's account files are read straight from its unpacked layers (a read-only
//! view of its snapshot; nothing is mounted), once per image, and kept in [`Cache`].

use crate::containerd::{Containerd, SNAPSHOTTER};
use anyhow::{Context, Result};
use containerd_client::services::v1::snapshots::{RemoveSnapshotRequest, ViewSnapshotRequest};
use k8s_openapi::api::core::v1::{Container, Pod};
use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq)]
struct Passwd {
    name: String,
    uid: i64,
    gid: i64,
}

#[derive(Debug, Clone, PartialEq)]
struct Group {
    name: String,
    gid: i64,
    members: Vec<String>,
}

/// An image's `/etc/passwd` and `/etc/group`, parsed (empty where the image has none).
#[derive(Debug, Default, Clone)]
pub struct Accounts {
    passwd: Vec<Passwd>,
    groups: Vec<Group>,
}

impl Accounts {
    /// Parses the two files' text; lines that are not well-formed entries are skipped,
    /// as libc's getpwent does.
    pub fn parse(passwd: &str, group: &str) -> Accounts {
        let passwd = fields(passwd, 4)
            .filter_map(|f| {
                Some(Passwd {
                    name: f[0].to_string(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                })
            })
            .collect();
        let groups = fields(group, 3)
            .filter_map(|f| {
                Some(Group {
                    name: f[0].to_string(),
                    gid: f[2].parse().ok()?,
                    members: f.get(3).map_or(Vec::new(), |m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    }),
                })
            })
            .collect();
        Accounts { passwd, groups }
    }

    /// Reads the files from an image's layers, the top layer first.
    pub fn read(layers: &[PathBuf]) -> Accounts {
        let text = |p: &str| {
            read_layered(layers, p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Accounts::parse(&text("etc/passwd"), &text("etc/group"))
    }
}

/// The `:`-separated fields of each line of a passwd or group file that has a name and
/// at least `min` fields.
fn fields(text: &str, min: usize) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(move |f| f.len() >= min && !f[0].is_empty())
}

/// The identity a container's process gets: the spec's `user` and the status's
/// `user.linux`.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub uid: i64,
    pub gid: i64,
    /// Sorted, without repeats; the primary gid is one of them, as containerd makes it.
    pub groups: Vec<i64>,
}

impl Identity {
    /// `uid:gid:g1,g2,…`, as a container label keeps it.
    pub fn label(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(i64::to_string).collect();
        format!("{}:{}:{}", self.uid, self.gid, groups.join(","))
    }

    pub fn from_label(l: &str) -> Option<Identity> {
        let mut f = l.splitn(3, ':');
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        let groups = f
            .next()?
            .split(',')
            .filter(|g| !g.is_empty())
            .map(|g| g.parse().ok())
            .collect::<Option<Vec<i64>>>()?;
        Some(Identity { uid, gid, groups })
    }
}

/// Decides the identity as upstream does:
/// - the uid is `runAsUser`, else the image USER's user part (a number, or a name looked
///   up in the image's passwd: an unknown name is an error), else 0;
/// - the gid is `runAsGroup`, else the passwd entry's group for that user, else 0 (the
///   group part of the image's USER is not used, as upstream's kubelet drops it);
/// - the groups are the gid, the image's groups that list the user (unless the pod's
///   `supplementalGroupsPolicy` is Strict), `fsGroup` and `supplementalGroups`.
pub fn resolve(
    pod: &Pod,
    c: &Container,
    image_user: Option<&str>,
    acc: &Accounts,
) -> Result<Identity, String> {
    let default_psc = Default::default();
    let psc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .unwrap_or(&default_psc);
    let default_sc = Default::default();
    let sc = c.security_context.as_ref().unwrap_or(&default_sc);
    let run_as_group = sc.run_as_group.or(psc.run_as_group);
    let entry = |by: &dyn Fn(&Passwd) -> bool| acc.passwd.iter().find(|p| by(p));
    let (uid, gid, name) = match sc.run_as_user.or(psc.run_as_user) {
        Some(uid) => {
            let e = entry(&|p| p.uid == uid);
            (uid, e.map(|e| e.gid), e.map(|e| e.name.clone()))
        }
        None => {
            let user = image_user
                .and_then(|u| u.split(':').next())
                .filter(|u| !u.is_empty())
                .unwrap_or("0");
            match user.parse::<i64>() {
                Ok(uid) => {
                    let e = entry(&|p| p.uid == uid);
                    (uid, e.map(|e| e.gid), e.map(|e| e.name.clone()))
                }
                Err(_) => {
                    let e = entry(&|p| p.name == user).ok_or_else(|| {
                        format!("unable to find user {user}: no matching entries in passwd file")
                    })?;
                    (e.uid, Some(e.gid), Some(e.name.clone()))
                }
            }
        }
    };
    let gid = run_as_group.or(gid).unwrap_or(0);
    let mut groups = BTreeSet::from([gid]);
    let strict = psc.supplemental_groups_policy.as_deref() == Some("Strict");
    if let (false, Some(name)) = (strict, &name) {
        groups.extend(
            acc.groups
                .iter()
                .filter(|g| &g.name != name && g.members.contains(name))
                .map(|g| g.gid),
        );
    }
    groups.extend(psc.fs_group);
    groups.extend(psc.supplemental_groups.iter().flatten().copied());
    Ok(Identity {
        uid,
        gid,
        groups: groups.into_iter().collect(),
    })
}

/// `rel` (no leading slash) as the merged layers show it: the topmost layer that has it
/// wins; a whiteout, or an opaque directory above it, hides the layers below. A symlink
/// is followed inside the layers (a few hops at most).
fn read_layered(layers: &[PathBuf], rel: &str) -> Option<Vec<u8>> {
    let mut rel = rel.to_string();
    'hop: for _ in 0..8 {
        for dir in layers {
            match lookup(dir, &rel) {
                Found::Missing => continue,
                Found::Hidden => return None,
                Found::File(p) => return std::fs::read(p).ok(),
                Found::Link(target) => {
                    rel = if let Some(abs) = target.strip_prefix('/') {
                        abs.to_string()
                    } else {
                        let parent = Path::new(&rel).parent().unwrap_or(Path::new(""));
                        parent.join(target).to_string_lossy().into_owned()
                    };
                    continue 'hop;
                }
            }
        }
        return None;
    }
    None
}

enum Found {
    Missing,
    Hidden,
    File(PathBuf),
    Link(String),
}

fn lookup(dir: &Path, rel: &str) -> Found {
    let parts: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    let mut p = dir.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        p.push(part);
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            return Found::Missing;
        };
        let last = i + 1 == parts.len();
        if m.file_type().is_char_device() && m.rdev() == 0 {
            return Found::Hidden;
        }
        if last {
            return if m.is_file() {
                Found::File(p)
            } else if m.file_type().is_symlink() {
                match std::fs::read_link(&p) {
                    Ok(t) => Found::Link(t.to_string_lossy().into_owned()),
                    Err(_) => Found::Hidden,
                }
            } else {
                Found::Hidden
            };
        }
        if !m.is_dir() {
            // A directory replaced by a file or link in this layer: rare in /etc, and
            // not followed.
            return Found::Hidden;
        }
        if is_opaque(&p) {
            // Nothing below this layer shows through this directory.
            let mut rest = p.clone();
            for q in &parts[i + 1..] {
                rest.push(q);
            }
            return match std::fs::symlink_metadata(&rest) {
                Ok(m) if m.is_file() => Found::File(rest),
                _ => Found::Hidden,
            };
        }
    }
    Found::Missing
}

fn is_opaque(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut v = [0u8; 1];
    // SAFETY: both pointers are valid for the lengths given, for the whole call.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    n == 1 && v[0] == b'y'
}

/// The layer directories of an image's root filesystem, from the mounts of a read-only
/// view of its top snapshot (overlay's lowerdir, or a bind of a single layer).
fn layers_of(mounts: &[containerd_client::types::Mount]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for m in mounts {
        if m.r#type == "bind" {
            out.push(PathBuf::from(&m.source));
        }
        for o in &m.options {
            if let Some(l) = o.strip_prefix("lowerdir=") {
                out.extend(l.split(':').map(PathBuf::from));
            }
        }
    }
    out
}

/// Every image's accounts, by its top snapshot (an image's content never changes). The
/// pods of a burst on a new image wait for one read rather than each making its own.
#[derive(Default)]
pub struct Cache(Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<Accounts>>>>>);

impl Cache {
    pub async fn get(&self, cd: &Containerd, top_snapshot: &str) -> Result<Arc<Accounts>> {
        let cell = self
            .0
            .lock()
            .unwrap()
            .entry(top_snapshot.to_string())
            .or_default()
            .clone();
        let acc = cell.get_or_try_init(|| load(cd, top_snapshot)).await?;
        Ok(acc.clone())
    }
}

/// Reads an image's accounts through a read-only view of its top snapshot.
async fn load(cd: &Containerd, top_snapshot: &str) -> Result<Arc<Accounts>> {
    let key = format!("kite-view-{}", uuid::Uuid::new_v4().simple());
    let mounts = cd
        .snapshots()
        .view(cd.req(ViewSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.clone(),
            parent: top_snapshot.to_string(),
            labels: Default::default(),
        }))
        .await
        .context("viewing the image's root filesystem")?
        .into_inner()
        .mounts;
    let layers = layers_of(&mounts);
    let acc = tokio::task::spawn_blocking(move || Accounts::read(&layers)).await;
    let _ = cd
        .snapshots()
        .remove(cd.req(RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key,
        }))
        .await;
    Ok(Arc::new(acc.context("reading the image's /etc/passwd")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSecurityContext, PodSpec, SecurityContext};

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        nobody:x:65534:65534:nobody:/:/bin/false\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        broken line\n";
    const GROUP: &str =
        "root:x:0:\nnogroup:x:65534:\napp:x:1000:app\nwheel:x:10:root,app\ndata:x:50000:app\n";

    fn pod(psc: PodSecurityContext, sc: Option<SecurityContext>) -> (Pod, Container) {
        let c = Container {
            name: "c".into(),
            security_context: sc,
            ..Default::default()
        };
        let p = Pod {
            spec: Some(PodSpec {
                security_context: Some(psc),
                containers: vec![c.clone()],
                ..Default::default()
            }),
            ..Default::default()
        };
        (p, c)
    }

    fn id(uid: i64, gid: i64, groups: &[i64]) -> Identity {
        Identity {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn a_named_image_user_is_looked_up() {
        let acc = Accounts::parse(PASSWD, GROUP);
        let (p, c) = pod(Default::default(), None);
        assert_eq!(
            resolve(&p, &c, Some("nobody"), &acc),
            Ok(id(65534, 65534, &[65534]))
        );
        // The group part of the image's USER is dropped, as upstream's kubelet does.
        assert_eq!(
            resolve(&p, &c, Some("app:root"), &acc),
            Ok(id(1000, 1000, &[10, 1000, 50000]))
        );
        assert_eq!(
            resolve(&p, &c, Some("ghost"), &acc),
            Err("unable to find user ghost: no matching entries in passwd file".into())
        );
        assert_eq!(resolve(&p, &c, None, &acc), Ok(id(0, 0, &[0, 10])));
    }

    #[test]
    fn run_as_user_and_group_win_and_groups_merge() {
        let acc = Accounts::parse(PASSWD, GROUP);
        let psc = PodSecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            supplemental_groups: Some(vec![4000]),
            fs_group: Some(2000),
            ..Default::default()
        };
        let (p, c) = pod(psc.clone(), None);
        assert_eq!(
            resolve(&p, &c, Some("nobody"), &acc),
            Ok(id(1000, 3000, &[10, 2000, 3000, 4000, 50000]))
        );
        let strict = PodSecurityContext {
            supplemental_groups_policy: Some("Strict".into()),
            ..psc
        };
        let (p, c) = pod(strict, None);
        assert_eq!(
            resolve(&p, &c, None, &acc),
            Ok(id(1000, 3000, &[2000, 3000, 4000]))
        );
        // A uid the image does not know: gid 0, no image groups.
        let sc = SecurityContext {
            run_as_user: Some(4242),
            ..Default::default()
        };
        let (p, c) = pod(Default::default(), Some(sc));
        assert_eq!(resolve(&p, &c, Some("app"), &acc), Ok(id(4242, 0, &[0])));
        // No account files at all: numbers only.
        let (p, c) = pod(Default::default(), None);
        assert_eq!(
            resolve(&p, &c, Some("1000:1000"), &Accounts::default()),
            Ok(id(1000, 0, &[0]))
        );
    }

    #[test]
    fn identity_round_trips_through_its_label() {
        let i = id(1000, 3000, &[10, 3000]);
        assert_eq!(i.label(), "1000:3000:10,3000");
        assert_eq!(Identity::from_label(&i.label()), Some(i));
        assert_eq!(Identity::from_label(""), None);
        assert_eq!(Identity::from_label("1:x:"), None);
    }

    #[test]
    fn layers_hide_and_show_like_overlayfs() {
        let t = tempfile::tempdir().unwrap();
        let (top, mid, low) = (
            t.path().join("top"),
            t.path().join("mid"),
            t.path().join("low"),
        );
        for d in [&top, &mid, &low] {
            std::fs::create_dir_all(d.join("etc")).unwrap();
        }
        std::fs::write(low.join("etc/passwd"), "low").unwrap();
        std::fs::write(mid.join("etc/passwd"), "mid").unwrap();
        std::fs::write(low.join("etc/group"), "lowgroup").unwrap();
        let layers = vec![top.clone(), mid.clone(), low.clone()];
        assert_eq!(read_layered(&layers, "etc/passwd").unwrap(), b"mid");
        assert_eq!(read_layered(&layers, "etc/group").unwrap(), b"lowgroup");
        assert!(read_layered(&layers, "etc/shadow").is_none());
        // A symlink is followed through the layers.
        std::os::unix::fs::symlink("/usr/lib/passwd", top.join("etc/passwd")).unwrap();
        std::fs::create_dir_all(low.join("usr/lib")).unwrap();
        std::fs::write(low.join("usr/lib/passwd"), "linked").unwrap();
        assert_eq!(read_layered(&layers, "etc/passwd").unwrap(), b"linked");
        // A whiteout (a 0:0 character device; making one needs root) hides the layers
        // below it.
        use nix::sys::stat::{mknod, Mode, SFlag};
        if mknod(&mid.join("etc/group"), SFlag::S_IFCHR, Mode::empty(), 0).is_ok() {
            assert!(read_layered(&layers, "etc/group").is_none());
        }
        let got = layers_of(&[containerd_client::types::Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            options: vec!["index=off".into(), "lowerdir=/a/fs:/b/fs".into()],
            ..Default::default()
        }]);
        assert_eq!(got, vec![PathBuf::from("/a/fs"), PathBuf::from("/b/fs")]);
    }
}
