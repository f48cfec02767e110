//! Helpers the benches share: a free loopback port and a process's resident memory and CPU time.

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// VmRSS of process `pid`, in KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds process `pid` has used so far (utime + stime; 0 if it cannot be read).
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / clk_tck()
}

/// The kernel's clock ticks per second, the unit of `/proc`'s CPU times.
pub fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// `kite server` on 127.0.0.1:`port` with its data in `data` and its kubeconfig at `kc`,
/// output discarded; callers add their own flags (`--disable-agent`, …) and spawn it.
pub fn kite_server(
    data: &std::path::Path,
    port: u16,
    kc: &std::path::Path,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kite"));
    cmd.args(["server", "--bind-address", "127.0.0.1"])
        .args(["--advertise-address", "127.0.0.1", "--node-name", "bench"])
        .arg("--data-dir")
        .arg(data)
        .arg("--https-listen-port")
        .arg(port.to_string())
        .arg("--write-kubeconfig")
        .arg(kc)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd
}
