//! Pod sandboxes without a pause container: the pod's network, IPC and UTS namespaces are
//! created by kite (unshare in a short-lived thread) and pinned as bind-mounted files under
//! `<sandbox dir>/ns/`, and every container of the pod joins them by path. The sandbox dir
//! also holds the files the containers see as /etc/hosts, /etc/hostname and
//! /etc/resolv.conf. Which dir that is (a tmpfs one, or the pod's dir on disk) is the
//! kubelet's choice (`Kubelet::sandbox_dir`).

use anyhow::{Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use std::path::{Path, PathBuf};

pub const KINDS: [(&str, CloneFlags); 3] = [
    ("net", CloneFlags::CLONE_NEWNET),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
];

/// The pinned namespace files of one pod, and its hosts, hostname and resolv.conf files.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The sandbox dir.
    pub base: PathBuf,
    /// `<base>/ns`, the pins.
    pub dir: PathBuf,
}

impl Sandbox {
    pub fn new(base: &Path) -> Self {
        Sandbox {
            base: base.to_path_buf(),
            dir: base.join("ns"),
        }
    }

    pub fn path(&self, kind: &str) -> PathBuf {
        self.dir.join(kind)
    }

    /// One of the pod's files (`hosts`, `hostname`, `resolv.conf`).
    pub fn file(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }

    /// Whether all three namespaces are pinned (a bind mount, not just the empty file).
    pub fn exists(&self) -> bool {
        KINDS.iter().all(|(k, _)| is_nsfs(&self.path(k)))
    }

    /// Creates and pins the namespaces; the UTS namespace gets `hostname`.
    pub fn create(&self, hostname: &str) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        // A half-made sandbox from an earlier attempt is undone first.
        self.destroy();
        std::fs::create_dir_all(&self.dir)?;
        let dir = self.dir.clone();
        let hostname = hostname.to_string();
        // unshare() changes only the calling thread; this thread ends right after.
        let r = std::thread::spawn(move || -> Result<()> {
            let flags = KINDS.iter().fold(CloneFlags::empty(), |a, (_, f)| a | *f);
            nix::sched::unshare(flags).context("unshare(net, ipc, uts)")?;
            nix::unistd::sethostname(&hostname).context("sethostname")?;
            let tid = nix::unistd::gettid();
            for (k, _) in KINDS {
                let target = dir.join(k);
                std::fs::File::create(&target)?;
                let src = format!("/proc/self/task/{tid}/ns/{k}");
                mount(
                    Some(src.as_str()),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .with_context(|| format!("pinning the {k} namespace at {}", target.display()))?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the sandbox thread panicked"))?;
        if r.is_err() {
            self.destroy();
        }
        r
    }

    /// Unpins the namespaces (they go when the last process in them exits) and removes
    /// the files. Never fails: what is already gone is fine.
    pub fn destroy(&self) {
        for (k, _) in KINDS {
            let p = self.path(k);
            let _ = umount2(&p, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&p);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Which dir a pod's sandbox is in: `<tmp root>/<uid>`, unless only the pod's dir on disk
/// holds a live sandbox (pinned by a kite that kept sandboxes there); the disk one when
/// there is no tmpfs root.
pub fn choose(
    tmp_root: Option<&Path>,
    uid: &str,
    disk: &Path,
    live: impl Fn(&Path) -> bool,
) -> PathBuf {
    let Some(root) = tmp_root else {
        return disk.to_path_buf();
    };
    let tmp = root.join(uid);
    if !live(&tmp) && live(disk) {
        return disk.to_path_buf();
    }
    tmp
}

/// Whether `base` holds a live sandbox (all three namespaces pinned).
pub fn live(base: &Path) -> bool {
    Sandbox::new(base).exists()
}

fn is_nsfs(p: &Path) -> bool {
    // NSFS_MAGIC
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type().0 == 0x6e73_6673)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_goes_on_tmpfs_unless_an_older_one_lives_on_disk() {
        let root = Path::new("/dev/shm/kite-pods-1-2");
        let disk = Path::new("/var/lib/kite/agent/pods/u1");
        let tmp = root.join("u1");
        // New pod: tmpfs.
        assert_eq!(choose(Some(root), "u1", disk, |_| false), tmp);
        // Its sandbox made: still there.
        assert_eq!(choose(Some(root), "u1", disk, |p| p == tmp), tmp);
        // A sandbox an older kite pinned in the pod's dir stays in use while it lives.
        assert_eq!(choose(Some(root), "u1", disk, |p| p == disk), disk);
        // Both (never made so by kite): the tmpfs one.
        assert_eq!(choose(Some(root), "u1", disk, |_| true), tmp);
        // No tmpfs: the pod's dir.
        assert_eq!(choose(None, "u1", disk, |_| false), disk);
    }

    #[test]
    fn files_and_pins_are_under_the_sandbox_dir() {
        let sb = Sandbox::new(Path::new("/x/u1"));
        assert_eq!(sb.path("net"), Path::new("/x/u1/ns/net"));
        assert_eq!(sb.file("hosts"), Path::new("/x/u1/hosts"));
        assert!(!live(Path::new("/nonexistent/kite-sandbox")));
    }
}
