//! Install and start-up benchmarks (issue 18), against the real `kite` binary as root.
//!
//! `cargo bench -p kite --bench install` (as root; needs containerd, runc, nftables).
//! - install to Ready: `INSTALL_KITE_SKIP_DOWNLOAD=true install.sh` with the binary already
//!   in its bin dir and the OS packages present, timed until install.sh returns (it waits
//!   for the node to be Ready through kubectl), then kite-uninstall.sh. KITE_BENCH_RUNS
//!   times (default 3).
//! - start to Ready on an existing data dir: `kite server` timed from spawn to its READY=1
//!   on a $NOTIFY_SOCKET of the benchmark's (sent once the API serves and the node is
//!   Ready), warm (containerd and the pods' shims left running by the previous kite, as
//!   after an upgrade or `systemctl restart`) and cold (kite-killall.sh between, as after
//!   a reboot); and, as the floor under the cold start, containerd alone from spawn to its
//!   socket answering.
//! - size: the binary's bytes, stripped (dist/kite-amd64 when packaging/release.sh made
//!   one, else this build).
//!
//! Figures and the command are recorded in docs/benchmarks.md.

#[allow(dead_code)]
mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn killall(data: &Path) {
    let _ = Command::new("sh")
        .arg(root().join("packaging/kite-killall.sh"))
        .env("KITE_DATA_DIR", data)
        .env("KITE_KILLALL_NODE_ONLY", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// install.sh with the binary present, to node Ready; then uninstalled.
fn install_to_ready(work: &Path, run: usize) -> f64 {
    let bin = work.join(format!("bin{run}"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_kite"), bin.join("kite")).unwrap();
    let data = work.join(format!("install-data{run}"));
    let kc = work.join(format!("install{run}.yaml"));
    let port = common::free_port().to_string();
    let kubelet_port = common::free_port().to_string();
    let t = Instant::now();
    let out = Command::new("sh")
        .arg(root().join("install.sh"))
        .args(["--data-dir", data.to_str().unwrap()])
        .args(["--write-kubeconfig", kc.to_str().unwrap()])
        .args([
            "--https-listen-port",
            &port,
            "--kubelet-port",
            &kubelet_port,
        ])
        .args(["--proxy-healthz-port", "0", "--node-name", "bench"])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--advertise-address",
            "127.0.0.1",
        ])
        .args([
            "--eviction-hard",
            "nodefs.available<1%,imagefs.available<1%",
        ])
        .env("INSTALL_KITE_SKIP_DOWNLOAD", "true")
        .env("INSTALL_KITE_BIN_DIR", &bin)
        .env("INSTALL_KITE_NAME", "bench")
        .env("INSTALL_KITE_SYSTEMD_DIR", work.join("conf"))
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("kite is ready"),
        "install.sh failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = Command::new(bin.join("kite-bench-uninstall.sh"))
        .stdout(Stdio::null())
        .status();
    secs
}

/// `kite server` from spawn to READY=1.
fn start_to_ready(work: &Path, data: &Path, kc: &Path, port: u16) -> (f64, std::process::Child) {
    let sock_path = work.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let t = Instant::now();
    let child = common::kite_server(data, port, kc)
        .args(["--kubelet-port", &common::free_port().to_string()])
        .args(["--proxy-healthz-port", "0"])
        .args([
            "--eviction-hard",
            "nodefs.available<1%,imagefs.available<1%",
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("kite said READY=1 within 60 s");
    assert!(buf[..n].starts_with(b"READY=1"));
    (t.elapsed().as_secs_f64(), child)
}

fn stop(mut child: std::process::Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// containerd alone, with kite's config, from spawn to its socket accepting.
fn containerd_floor(data: &Path) -> f64 {
    let config = data.join("agent/etc/containerd/config.toml");
    let socket = data.join("agent/run/containerd.sock");
    let _ = std::fs::remove_file(&socket);
    let t = Instant::now();
    let mut child = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "containerd did not start"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    secs
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the install benchmark needs root");
        return;
    }
    let runs: usize = std::env::var("KITE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let work = tempfile::tempdir().unwrap();
    let work = work.path();

    let install: Vec<f64> = (0..runs).map(|i| install_to_ready(work, i)).collect();
    println!(
        "install.sh (binary and packages present) to node Ready: median {:.2} s over {runs} ({:?})",
        median(install.clone()),
        install
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
    );

    let data = work.join("data");
    let kc = work.join("kc.yaml");
    let port = common::free_port();
    // The first start makes the data dir (certificates, datastore, containerd's state).
    let (first, child) = start_to_ready(work, &data, &kc, port);
    stop(child);
    println!("first start (new data dir) to Ready: {first:.2} s");
    let mut warm = Vec::new();
    let mut cold = Vec::new();
    let mut floor = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        let (s, child) = start_to_ready(work, &data, &kc, port);
        warm.push(s);
        rss.push(common::rss_kib(child.id()) as f64 / 1024.0);
        stop(child);
        killall(&data);
        floor.push(containerd_floor(&data));
        let (s, child) = start_to_ready(work, &data, &kc, port);
        cold.push(s);
        stop(child);
        killall(&data);
    }
    println!(
        "start on an existing data dir to Ready: warm (containerd running) median {:.2} s, cold (after kite-killall.sh) median {:.2} s; containerd alone to its socket: median {:.2} s",
        median(warm),
        median(cold.clone()),
        median(floor.clone())
    );
    println!(
        "kite's RSS at Ready (server and node, no pods): median {:.0} MiB",
        median(rss)
    );

    let dist = root().join("dist/kite-amd64");
    let (what, path) = if dist.exists() {
        ("dist/kite-amd64", dist)
    } else {
        (
            "this build (run packaging/release.sh for the shipped one)",
            PathBuf::from(env!("CARGO_BIN_EXE_kite")),
        )
    };
    let stripped = work.join("kite.stripped");
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&path)
        .status()
        .is_ok_and(|s| s.success());
    let size = std::fs::metadata(if ok { &stripped } else { &path })
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "binary size, stripped: {:.1} MiB ({what})",
        size as f64 / (1 << 20) as f64
    );
}
