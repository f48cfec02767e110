//! Helpers the benches share: a free loopback port, a process's resident memory and CPU time,
//! and a `perf record` of it.

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
    stat_cpu_secs(&format!("/proc/{pid}/stat"))
}

/// CPU seconds one thread (`tid`) of process `pid` has used so far, as [`cpu_secs`].
#[allow(dead_code)] // only the streams bench reads a thread's CPU
pub fn thread_cpu_secs(pid: u32, tid: u32) -> f64 {
    stat_cpu_secs(&format!("/proc/{pid}/task/{tid}/stat"))
}

fn stat_cpu_secs(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
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

/// With `KITE_BENCH_PERF=DIR`, `perf record -g` of `pid` into `DIR/NAME.data` until the
/// returned guard drops (for finding where a figure's CPU goes; off by default).
#[allow(dead_code)] // not every bench profiles
pub fn perf_record(pid: u32, name: &str) -> Option<PerfGuard> {
    let dir = std::env::var("KITE_BENCH_PERF").ok()?;
    // KITE_BENCH_PERF_CALLGRAPH=dwarf for whole call stacks (kite has no frame pointers;
    // heavier, so the figures of that run are not the ones to report).
    let graph = std::env::var("KITE_BENCH_PERF_CALLGRAPH").unwrap_or_else(|_| "fp".into());
    let child = std::process::Command::new("perf")
        .args([
            "record",
            "-F",
            "499",
            "--call-graph",
            &graph,
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(std::path::Path::new(&dir).join(format!("{name}.data")))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    Some(PerfGuard(child))
}

#[allow(dead_code)]
pub struct PerfGuard(std::process::Child);

impl Drop for PerfGuard {
    fn drop(&mut self) {
        // perf writes its file on SIGINT.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.0.wait();
    }
}
