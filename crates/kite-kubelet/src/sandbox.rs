//! Pod sandboxes without a pause container: the pod's network, IPC and UTS namespaces are
//! created by kite (unshare in a short-lived thread) and pinned as bind-mounted files under
//! `<data-dir>/agent/pods/<uid>/ns/`, and every container of the pod joins them by path.

use anyhow::{Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use std::path::{Path, PathBuf};

pub const KINDS: [(&str, CloneFlags); 3] = [
    ("net", CloneFlags::CLONE_NEWNET),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
];

/// The pinned namespace files of one pod.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub dir: PathBuf,
}

impl Sandbox {
    pub fn new(pod_dir: &Path) -> Self {
        Sandbox {
            dir: pod_dir.join("ns"),
        }
    }

    pub fn path(&self, kind: &str) -> PathBuf {
        self.dir.join(kind)
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

fn is_nsfs(p: &Path) -> bool {
    // NSFS_MAGIC
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type().0 == 0x6e73_6673)
        .unwrap_or(false)
}
