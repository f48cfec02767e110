//! The node's side of volumes: hostPath type checks, tmpfs mounts (made once, found again
//! after a restart by their mount ids, or `/proc/self/mountinfo` where the kernel has none),
//! ownership, and subPaths that must stay inside their volume.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Upstream's hostPath `type` checks (and creations).
pub fn check_host_path(path: &str, ty: &str) -> Result<(), String> {
    let p = Path::new(path);
    let meta = std::fs::metadata(p);
    let failed = |what: &str| format!("hostPath type check failed: {path} is not a {what}");
    match ty {
        "" => {
            // As containerd's CRI: a missing source is made a directory.
            if meta.is_err() {
                std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        "DirectoryOrCreate" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(failed("directory")),
            Err(_) => {
                std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| e.to_string())
            }
        },
        "Directory" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(failed("directory")),
            Err(_) => Err(format!(
                "hostPath type check failed: {path} is not a directory"
            )),
        },
        "FileOrCreate" => match meta {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(failed("file")),
            Err(_) => {
                if let Some(d) = p.parent() {
                    std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(p)
                    .map(|_| ())
                    .map_err(|e| e.to_string())?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))
                    .map_err(|e| e.to_string())
            }
        },
        "File" => match meta {
            Ok(m) if m.is_file() => Ok(()),
            _ => Err(failed("file")),
        },
        "Socket" => match meta {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            _ => Err(failed("socket file")),
        },
        "CharDevice" => match meta {
            Ok(m) if m.file_type().is_char_device() => Ok(()),
            _ => Err(failed("character device")),
        },
        "BlockDevice" => match meta {
            Ok(m) if m.file_type().is_block_device() => Ok(()),
            _ => Err(failed("block device")),
        },
        other => Err(format!("invalid HostPathType {other:?}")),
    }
}

/// Mount points under `dir` (itself included), deepest first; a point with mounts
/// stacked on it appears once per mount, so that unmounting each entry clears it.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort();
    out.reverse();
    out
}

/// Whether something is mounted at `dir` itself. By mount ids, not device numbers: a bind
/// mount from the same filesystem keeps its parent's device, but is a mount of its own.
/// Asked on every sync of every pod with a secret, token or image volume, so not by reading
/// the mount table (its length grows with the pods: at 100 pods reading it was an eighth of
/// kite's CPU while they started), except where the kernel (before 5.8) has no mount ids.
pub fn is_mount_point(dir: &Path) -> bool {
    let parent = dir.parent().map(mount_id);
    match (mount_id(dir), parent) {
        (Ok(Some(here)), Some(Ok(Some(parent)))) => here != parent,
        // A path that is not there is no mount point.
        (Ok(None), _) | (_, Some(Ok(None))) => false,
        _ => mounts_under(dir).iter().any(|m| m == dir),
    }
}

/// The id of the mount `path` is on (statx's `STATX_MNT_ID`, Linux 5.8); `Ok(None)` if there
/// is no such path, `Err` if the kernel cannot tell.
fn mount_id(path: &Path) -> Result<Option<u64>, ()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| ())?;
    // SAFETY: statx writes only into `buf`, a zeroed statx of the kernel's layout, and reads
    // only the NUL-terminated path.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::syscall(
            libc::SYS_statx,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            libc::STATX_MNT_ID,
            &mut buf as *mut libc::statx,
        )
    };
    if rc != 0 {
        return match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => Ok(None),
            _ => Err(()),
        };
    }
    if buf.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(());
    }
    Ok(Some(buf.stx_mnt_id))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(n) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or(""), 8)
            {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A tmpfs on `dir`, unless one is there already.
pub fn ensure_tmpfs(dir: &Path, size: Option<i64>) -> Result<(), String> {
    if is_mount_point(dir) {
        return Ok(());
    }
    let mut opts = "mode=0755".to_string();
    if let Some(s) = size {
        opts.push_str(&format!(",size={s}"));
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| format!("mounting a tmpfs on {}: {e}", dir.display()))
}

/// Unmounts everything under `dir`.
pub fn unmount_under(dir: &Path) {
    for m in mounts_under(dir) {
        if let Err(e) = umount2(&m, MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %m.display(), error = %e, "unmounting a volume");
        }
    }
}

pub fn chmod(p: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}

pub fn chgrp(p: &Path, gid: u32) -> Result<(), String> {
    nix::unistd::chown(p, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| e.to_string())
}

/// `root/sub`, which must stay inside `root` once symlinks are followed (a volume's
/// content may not point a mount elsewhere on the node); a missing directory is made, as
/// upstream's kubelet does.
pub fn sub_path(root: &Path, sub: &str) -> Result<PathBuf, String> {
    if Path::new(sub).is_absolute()
        || Path::new(sub)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "subPath {sub:?} must be a relative path without '..'"
        ));
    }
    let p = root.join(sub);
    if std::fs::symlink_metadata(&p).is_err() {
        std::fs::create_dir_all(&p).map_err(|e| format!("making subPath {sub:?}: {e}"))?;
        let _ = chmod(&p, 0o777);
    }
    let real = p
        .canonicalize()
        .map_err(|e| format!("subPath {sub:?}: {e}"))?;
    let real_root = root.canonicalize().map_err(|e| e.to_string())?;
    if !real.starts_with(&real_root) {
        return Err(format!(
            "subpath {:?} not within volume path {:?}",
            real.display().to_string(),
            real_root.display().to_string()
        ));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_path_types_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let fs = f.to_str().unwrap();
        assert!(check_host_path(fs, "File").is_ok());
        assert_eq!(
            check_host_path(fs, "Directory").unwrap_err(),
            format!("hostPath type check failed: {fs} is not a directory")
        );
        let made = d.path().join("a/b");
        assert!(check_host_path(made.to_str().unwrap(), "DirectoryOrCreate").is_ok());
        assert!(made.is_dir());
        let nf = d.path().join("c/new");
        assert!(check_host_path(nf.to_str().unwrap(), "FileOrCreate").is_ok());
        assert!(nf.is_file());
        assert!(check_host_path(fs, "Socket").is_err());
    }

    #[test]
    fn sub_paths_stay_inside_their_volume() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("vol");
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("escape")).unwrap();
        assert!(sub_path(&root, "escape").is_err());
        assert!(sub_path(&root, "../x").is_err());
        let made = sub_path(&root, "new/dir").unwrap();
        assert!(made.is_dir() && made.starts_with(root.canonicalize().unwrap()));
    }

    #[test]
    fn mount_points_by_mount_id() {
        assert!(is_mount_point(Path::new("/proc")));
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(d.path()));
        assert!(!is_mount_point(&d.path().join("missing")));
        // A bind mount of a directory onto itself keeps its device; it is a mount all the same.
        if nix::unistd::geteuid().is_root() {
            let m = d.path().join("m");
            std::fs::create_dir(&m).unwrap();
            mount(Some(&m), &m, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
            let bound = is_mount_point(&m);
            umount2(&m, MntFlags::MNT_DETACH).unwrap();
            assert!(bound);
            assert!(!is_mount_point(&m));
        }
    }

    #[test]
    fn mountinfo_paths_unescape() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
