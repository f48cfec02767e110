//! The commands that hand over to another program or look at the node without the API:
//! `kite kubectl`, `kite ctr`, `kite ps`, and the packaging files install.sh writes.

use anyhow::{Context, Result};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The files install.sh installs, carried in the binary so a piped install needs nothing
/// else: name → text.
pub const PACKAGING: [(&str, &str); 5] = [
    (
        "kite.service",
        include_str!("../../../packaging/kite.service"),
    ),
    (
        "kite.openrc",
        include_str!("../../../packaging/kite.openrc"),
    ),
    (
        "kite-killall.sh",
        include_str!("../../../packaging/kite-killall.sh"),
    ),
    (
        "kite-uninstall.sh",
        include_str!("../../../packaging/kite-uninstall.sh"),
    ),
    ("install.sh", include_str!("../../../install.sh")),
];

pub fn packaging(file: &str) -> Result<()> {
    let (_, text) = PACKAGING
        .iter()
        .find(|(n, _)| *n == file)
        .with_context(|| {
            let names: Vec<&str> = PACKAGING.iter().map(|(n, _)| *n).collect();
            format!(
                "no packaging file {file:?} (there are: {})",
                names.join(", ")
            )
        })?;
    print!("{text}");
    Ok(())
}

/// `name` on `PATH`, skipping this binary itself (install.sh links `kubectl` to kite where
/// no kubectl exists, and that link must not find itself).
fn find_other(name: &str) -> Option<PathBuf> {
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok());
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            let exe = std::fs::metadata(p)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            exe && p.canonicalize().ok() != me
        })
}

/// `kite kubectl ARGS`: the system's kubectl with kite's kubeconfig (unless $KUBECONFIG
/// says otherwise). Returns only on failure.
pub fn kubectl(args: &[OsString]) -> Result<()> {
    let Some(bin) = find_other("kubectl") else {
        anyhow::bail!(
            "kubectl is not installed: kite uses the system's kubectl; install it (the Kubernetes apt or dnf repository, or a binary from dl.k8s.io), then run `kite kubectl` again"
        );
    };
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(args);
    if std::env::var_os("KUBECONFIG").is_none() {
        let kc = crate::config::default_kubeconfig();
        if kc.exists() {
            cmd.env("KUBECONFIG", kc);
        } else {
            eprintln!(
                "kite: no kubeconfig at {} (start `kite server` first, or set KUBECONFIG)",
                kc.display()
            );
        }
    }
    Err(cmd.exec()).with_context(|| format!("running {}", bin.display()))
}

/// `kite ctr ARGS`: containerd's ctr against kite's containerd, in the pods' namespace.
pub fn ctr(args: &[OsString]) -> Result<()> {
    let Some(bin) = find_other("ctr") else {
        anyhow::bail!("ctr is not installed: it comes with containerd (apt-get install containerd, dnf install containerd, apk add containerd)");
    };
    let socket =
        crate::config::socket_of(&None, &std::env::var_os("KITE_DATA_DIR").map(PathBuf::from));
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(args);
    if std::env::var_os("CONTAINERD_ADDRESS").is_none() {
        cmd.env("CONTAINERD_ADDRESS", &socket);
    }
    if std::env::var_os("CONTAINERD_NAMESPACE").is_none() {
        cmd.env("CONTAINERD_NAMESPACE", kite_kubelet::containerd::NAMESPACE);
    }
    Err(cmd.exec()).with_context(|| format!("running {}", bin.display()))
}

/// `kite ps`: the node's containers, from containerd.
pub fn ps(socket: &Path, all: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let cd = kite_kubelet::containerd::Containerd::connect(socket, std::time::Duration::from_secs(2))
            .await
            .map_err(|_| anyhow::anyhow!("containerd is not running at {} (is kite running? pass --data-dir or --container-runtime-endpoint)", socket.display()))?;
        let now = jiff::Timestamp::now();
        println!(
            "{:<14} {:<10} {:<24} {:>7} {:<40} {:<8} IMAGE",
            "CONTAINER", "STATE", "NAME", "ATTEMPT", "POD", "CREATED"
        );
        for (ns, pod, c) in kite_kubelet::containers::list_all(&cd).await? {
            use kite_kubelet::containers::State;
            let state = match &c.state {
                State::Running { .. } => "Running".to_string(),
                State::Exited { code, .. } => format!("Exited({code})"),
                State::Created => "Created".to_string(),
            };
            if !all && !matches!(c.state, State::Running { .. }) {
                continue;
            }
            let age = c
                .created
                .map(|t| age(now.as_second() - t.as_second()))
                .unwrap_or_default();
            println!(
                "{:<14} {:<10} {:<24} {:>7} {:<40} {:<8} {}",
                c.id.chars().take(13).collect::<String>(),
                state,
                c.name,
                c.attempt,
                format!("{ns}/{pod}"),
                age,
                c.image
            );
        }
        Ok(())
    })
}

/// kubectl's short ages: 45s, 3m, 2h, 4d.
fn age(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_read_as_kubectl_prints_them() {
        assert_eq!(super::age(45), "45s");
        assert_eq!(super::age(600), "10m");
        assert_eq!(super::age(10800), "3h");
        assert_eq!(super::age(864000), "10d");
    }

    #[test]
    fn every_packaging_file_is_there() {
        for (name, text) in super::PACKAGING {
            assert!(!text.is_empty(), "{name}");
        }
    }
}
