//! Agent benchmarks (issue 19): `cargo bench -p kite --bench agents` (as root; needs
//! containerd, runc, nftables, iproute2 and busybox). Runs `tests/bench/agents.sh` with this
//! build of kite: agent start to Ready (first join, and restart with kept credentials),
//! pod-to-pod TCP throughput across nodes as a ratio to host-to-host over the same link
//! (host-gw and vxlan, same run), and agent RSS idle and with 50 pods. The machines are
//! network namespaces the script makes and removes. Figures go to docs/benchmarks.md.
//!
//! `KITE_BENCH_BIN=dist/kite-amd64` runs another binary instead: the release that
//! `packaging/release.sh` makes and install.sh installs (static, whole-program LTO), whose
//! code pages, and so the agent's RSS, are smaller than this bench build's.

use std::path::Path;
use std::process::Command;

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the agent benchmarks need root: skipped");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = std::env::var("KITE_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kite").into());
    eprintln!("agents bench: {bin}");
    let status = Command::new("bash")
        .arg(root.join("tests/bench/agents.sh"))
        .env("KITE_BIN", bin)
        .env(
            "KUBECTL",
            std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into()),
        )
        .status()
        .expect("running tests/bench/agents.sh");
    if !status.success() {
        eprintln!("tests/bench/agents.sh failed ({status})");
        std::process::exit(1);
    }
}
