//! `kite check-config`: whether this host can run a kite node. Each check reads what the
//! kernel exposes (`/proc`, `/sys`, `/lib/modules`), looks for the tools the node runs
//! (containerd, runc, nft) on `PATH`, tries the ports it will listen on and the disk it
//! will write to, and says pass, warn or fail, with the fix for anything that is not a
//! pass. The paths are read under a root folder so that tests can fake a host.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How a finding weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    /// What was checked, e.g. `cgroup controllers`.
    pub what: String,
    /// What was found.
    pub detail: String,
    /// How to fix it (for a warning or a failure).
    pub fix: Option<String>,
}

impl Finding {
    fn pass(what: &str, detail: impl Into<String>) -> Self {
        Finding {
            level: Level::Pass,
            what: what.into(),
            detail: detail.into(),
            fix: None,
        }
    }
    fn warn(what: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            level: Level::Warn,
            what: what.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(what: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            level: Level::Fail,
            what: what.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where `/proc`, `/sys` and `/lib/modules` are read from (`/` on a real host).
    pub root: PathBuf,
    /// The `PATH` the tools are looked up in.
    pub path: Option<OsString>,
    /// kite's data directory (its free space is checked; it need not exist yet).
    pub data_dir: PathBuf,
    /// Ports the server will listen on, with the flag that moves each.
    pub ports: Vec<(u16, &'static str)>,
    /// Whether a node runs here (without one, only the ports and the disk matter).
    pub node: bool,
    /// Whether kite runs as root (the node needs it).
    pub root_user: bool,
}

/// Runs every check, in the order of the report.
pub fn check(o: &Options) -> Vec<Finding> {
    let mut out = Vec::new();
    let release = read(&o.root, "proc/sys/kernel/osrelease").unwrap_or_default();
    if o.node {
        out.push(if o.root_user {
            Finding::pass("user", "root")
        } else {
            Finding::fail(
                "user",
                "not root: the node creates namespaces, mounts and interfaces",
                "run as root (sudo), or pass --disable-agent for a control plane without a node",
            )
        });
        out.push(kernel(&release));
        out.push(namespaces(&o.root));
        out.extend(cgroups(&o.root));
        for (name, symbol, what, for_what) in MODULES {
            out.push(module(&o.root, &release, name, symbol, what, for_what));
        }
        out.push(br_netfilter(&o.root, &release));
        out.push(ip_forward(&o.root));
        out.push(swap(&o.root));
        for tool in &TOOLS {
            out.push(self::tool(o.path.as_deref(), tool));
        }
    }
    for (port, flag) in &o.ports {
        out.push(self::port(*port, flag));
    }
    out.push(disk(&o.data_dir));
    out
}

/// The report as printed: one line a finding, fixes indented below, and a summary.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let tag = match f.level {
            Level::Pass => "pass",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        let _ = writeln!(s, "{tag}  {}: {}", f.what, f.detail);
        if let Some(fix) = &f.fix {
            let _ = writeln!(s, "        fix: {fix}");
        }
    }
    let count = |l| findings.iter().filter(|f| f.level == l).count();
    let _ = writeln!(
        s,
        "{} passed, {} warnings, {} failed",
        count(Level::Pass),
        count(Level::Warn),
        count(Level::Fail)
    );
    s
}

fn read(root: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(root.join(rel))
        .ok()
        .map(|s| s.trim().to_string())
}

fn kernel(release: &str) -> Finding {
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    if release.is_empty() {
        Finding::warn(
            "kernel",
            "version unknown (/proc/sys/kernel/osrelease unreadable)",
            "mount /proc",
        )
    } else if (major, minor) < (4, 15) {
        Finding::fail(
            "kernel",
            format!("{release} is older than 4.15"),
            "upgrade the kernel to 4.15 or newer (5.x or 6.x recommended)",
        )
    } else {
        Finding::pass("kernel", release)
    }
}

fn namespaces(root: &Path) -> Finding {
    let missing: Vec<&str> = ["mnt", "uts", "ipc", "pid", "net", "cgroup"]
        .into_iter()
        .filter(|n| !root.join("proc/self/ns").join(n).exists())
        .collect();
    if missing.is_empty() {
        Finding::pass("namespaces", "mnt uts ipc pid net cgroup")
    } else {
        Finding::fail(
            "namespaces",
            format!("missing: {}", missing.join(" ")),
            "use a kernel built with CONFIG_NAMESPACES and these namespaces (most distribution kernels are)",
        )
    }
}

/// Kernel features the node uses: module, config symbol, name in the report, what for.
const MODULES: [(&str, &str, &str, &str); 4] = [
    (
        "overlay",
        "CONFIG_OVERLAY_FS",
        "overlayfs",
        "container filesystems",
    ),
    ("bridge", "CONFIG_BRIDGE", "bridge", "the pods' bridge"),
    ("veth", "CONFIG_VETH", "veth", "pod interfaces"),
    (
        "nf_tables",
        "CONFIG_NF_TABLES",
        "nftables (kernel)",
        "Services and NetworkPolicy",
    ),
];

/// The controllers pods' limits and accounting rest on.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

fn cgroups(root: &Path) -> Vec<Finding> {
    let v2 = read(root, "sys/fs/cgroup/cgroup.controllers");
    let (mode, available): (&str, Vec<String>) = match &v2 {
        Some(list) => (
            "v2 (unified)",
            list.split_whitespace().map(String::from).collect(),
        ),
        None => {
            // /proc/cgroups: subsys_name hierarchy num_cgroups enabled.
            let table = read(root, "proc/cgroups").unwrap_or_default();
            let enabled = table
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    (cols.len() >= 4 && cols[3] == "1").then(|| cols[0].to_string())
                })
                .collect();
            ("v1", enabled)
        }
    };
    if v2.is_none() && !root.join("sys/fs/cgroup").exists() {
        return vec![Finding::fail(
            "cgroups",
            "/sys/fs/cgroup is not mounted",
            "mount cgroup2 on /sys/fs/cgroup (mount -t cgroup2 none /sys/fs/cgroup)",
        )];
    }
    let missing: Vec<&str> = CONTROLLERS
        .into_iter()
        .filter(|c| !available.iter().any(|a| a == c))
        .collect();
    let mut out = vec![Finding::pass("cgroups", mode)];
    out.push(if missing.is_empty() {
        Finding::pass("cgroup controllers", CONTROLLERS.join(" "))
    } else {
        Finding::fail(
            "cgroup controllers",
            format!("missing or disabled: {}", missing.join(" ")),
            "enable them on the kernel command line (cgroup_enable=memory cgroup_memory=1; on a Raspberry Pi add them to /boot/firmware/cmdline.txt) and reboot",
        )
    });
    out
}

/// The kernel's build configuration (`/proc/config.gz`, else `/boot/config-<release>`),
/// when the host exposes it.
fn kernel_config(root: &Path, release: &str) -> Option<String> {
    if let Ok(f) = std::fs::File::open(root.join("proc/config.gz")) {
        let mut text = String::new();
        if std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(f), &mut text).is_ok() {
            return Some(text);
        }
    }
    std::fs::read_to_string(root.join("boot").join(format!("config-{release}"))).ok()
}

/// Whether a kernel feature is loaded, built in, or at least installed as a module (the
/// kernel loads it when first used); `Err` says why not, `Ok(None)` that the host does
/// not tell.
fn module_state(
    root: &Path,
    release: &str,
    name: &str,
    symbol: &str,
) -> Result<Option<&'static str>, String> {
    if root.join("sys/module").join(name).exists() {
        return Ok(Some("loaded"));
    }
    let dir = root.join("lib/modules").join(release);
    let file = format!("/{name}.ko");
    let listed = |list: &str| {
        std::fs::read_to_string(dir.join(list)).is_ok_and(|text| {
            text.lines()
                .any(|l| l.split(':').next().unwrap_or("").contains(&file))
        })
    };
    if let Some(config) = kernel_config(root, release) {
        let value = config
            .lines()
            .find_map(|l| l.strip_prefix(symbol)?.strip_prefix('='))
            .unwrap_or("");
        return match value {
            "y" => Ok(Some("built in")),
            "m" if listed("modules.dep") => Ok(Some("available as a module")),
            "m" => Err(format!(
                "{symbol}=m, but module {name} is not installed in /lib/modules/{release}"
            )),
            _ => Err(format!("the kernel is built without {symbol}")),
        };
    }
    if listed("modules.builtin") {
        return Ok(Some("built in"));
    }
    if listed("modules.dep") {
        return Ok(Some("available as a module"));
    }
    if dir.exists() {
        return Err(format!("module {name} not found in /lib/modules/{release}"));
    }
    Ok(None)
}

fn module(
    root: &Path,
    release: &str,
    name: &str,
    symbol: &str,
    what: &str,
    for_what: &str,
) -> Finding {
    // overlayfs shows in /proc/filesystems once loaded, whatever /sys/module says.
    if name == "overlay"
        && read(root, "proc/filesystems")
            .is_some_and(|f| f.split_whitespace().any(|w| w == "overlay"))
    {
        return Finding::pass(what, "loaded");
    }
    match module_state(root, release, name, symbol) {
        Ok(Some(state)) => Finding::pass(what, state),
        Ok(None) => Finding::warn(
            what,
            format!("cannot tell whether the kernel has {name} (no /proc/config.gz, /boot/config-{release} or /lib/modules/{release}); needed for {for_what}"),
            format!("if pods fail, check the kernel for {symbol}"),
        ),
        Err(why) => Finding::fail(
            what,
            format!("{why} (needed for {for_what})"),
            format!("install your kernel's extra modules (e.g. apt-get install linux-modules-extra-$(uname -r)) or use a kernel with {symbol}"),
        ),
    }
}

fn br_netfilter(root: &Path, release: &str) -> Finding {
    const WHY: &str = "a pod reaching a Service backed by a pod on the same node gets no reply";
    if root
        .join("proc/sys/net/bridge/bridge-nf-call-iptables")
        .exists()
    {
        return Finding::pass("br_netfilter", "loaded");
    }
    match module_state(root, release, "br_netfilter", "CONFIG_BRIDGE_NETFILTER") {
        Ok(Some(_)) | Ok(None) => Finding::warn(
            "br_netfilter",
            format!("not loaded: {WHY}"),
            "modprobe br_netfilter; echo br_netfilter > /etc/modules-load.d/kite.conf",
        ),
        Err(why) => Finding::warn(
            "br_netfilter",
            format!("{why}: {WHY}"),
            "install your kernel's extra modules, or use a kernel with CONFIG_BRIDGE_NETFILTER",
        ),
    }
}

fn ip_forward(root: &Path) -> Finding {
    match read(root, "proc/sys/net/ipv4/ip_forward").as_deref() {
        Some("1") => Finding::pass("ip_forward", "on"),
        Some(_) => Finding::pass(
            "ip_forward",
            "off now; kite turns it on when the node starts",
        ),
        None => Finding::warn(
            "ip_forward",
            "/proc/sys/net/ipv4/ip_forward unreadable",
            "mount /proc read-write",
        ),
    }
}

fn swap(root: &Path) -> Finding {
    let text = read(root, "proc/swaps").unwrap_or_default();
    let kib: u64 = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum();
    if kib == 0 {
        Finding::pass("swap", "off")
    } else {
        Finding::warn(
            "swap",
            format!("{} MiB on: pods' memory limits do not count swap, so a node can page heavily before it evicts", kib / 1024),
            "swapoff -a, and remove the swap entries from /etc/fstab",
        )
    }
}

/// A tool the node runs, the oldest version that works and the packages that bring it.
struct Tool {
    name: &'static str,
    /// Whether the node cannot work without it (else a warning).
    required: bool,
    version_args: &'static [&'static str],
    min: (u32, u32),
    packages: &'static str,
    for_what: &'static str,
}

const TOOLS: [Tool; 4] = [
    Tool {
        name: "containerd",
        required: true,
        version_args: &["--version"],
        min: (1, 6),
        packages: "containerd",
        for_what: "runs the pods' containers",
    },
    Tool {
        name: "runc",
        required: true,
        version_args: &["--version"],
        min: (1, 1),
        packages: "runc",
        for_what: "containerd's container runtime",
    },
    Tool {
        name: "nft",
        required: true,
        version_args: &["--version"],
        min: (0, 9),
        packages: "nftables",
        for_what: "programs Services and NetworkPolicy",
    },
    Tool {
        name: "conntrack",
        required: false,
        version_args: &["--version"],
        min: (1, 0),
        packages: "conntrack",
        for_what: "deletes a removed endpoint's UDP flows, so UDP clients follow a Service to its new endpoints",
    },
];

/// The first `X.Y` in a version line ("containerd github.com/… 1.6.20~ds1 …" → (1, 6)).
fn version_of(text: &str) -> Option<(u32, u32)> {
    text.split(|c: char| c.is_whitespace() || c == 'v' || c == '-' || c == '~' || c == '+')
        .find_map(|w| {
            let mut it = w.split('.');
            let a = it.next()?.parse().ok()?;
            let b = it.next()?.parse().ok()?;
            Some((a, b))
        })
}

fn find_on_path(path: Option<&std::ffi::OsStr>, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn tool(path: Option<&std::ffi::OsStr>, t: &Tool) -> Finding {
    let install = format!(
        "install it: apt-get install {p} (Debian, Ubuntu), dnf install {p} (Fedora, RHEL), apk add {p} (Alpine)",
        p = t.packages
    );
    let Some(bin) = find_on_path(path, t.name) else {
        let detail = format!("not found on PATH ({})", t.for_what);
        return if t.required {
            Finding::fail(t.name, detail, install)
        } else {
            Finding::warn(t.name, detail, install)
        };
    };
    let out = Command::new(&bin).args(t.version_args).output();
    let text = match out {
        Ok(o) => {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        }
        Err(e) => {
            return Finding::fail(
                t.name,
                format!("{} does not run: {e}", bin.display()),
                install,
            )
        }
    };
    let first = text.lines().next().unwrap_or("").trim().to_string();
    match version_of(&first) {
        Some(v) if v < t.min => Finding::fail(
            t.name,
            format!("{first}: older than {}.{}", t.min.0, t.min.1),
            format!("upgrade it ({install})"),
        ),
        Some(_) => Finding::pass(t.name, format!("{} ({first})", bin.display())),
        None => Finding::warn(
            t.name,
            format!("{}: version unknown ({first:?})", bin.display()),
            install,
        ),
    }
}

fn port(port: u16, flag: &str) -> Finding {
    let what = format!("port {port}");
    match std::net::TcpListener::bind(("0.0.0.0", port)) {
        Ok(_) => Finding::pass(&what, "free"),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Finding::fail(
            &what,
            "in use (another kite, K3s or Kubernetes?)",
            format!("stop what listens there (ss -ltnp 'sport = :{port}'), or pick another port with {flag}"),
        ),
        Err(e) => Finding::warn(&what, format!("cannot try it: {e}"), "run as root"),
    }
}

/// Below this much free space the node's default eviction thresholds start to bite.
const DISK_WARN: u64 = 5 << 30;
const DISK_FAIL: u64 = 1 << 30;

fn disk(data_dir: &Path) -> Finding {
    let what = format!("disk ({})", data_dir.display());
    // The data dir may not exist yet: measure the filesystem it will be made on.
    let existing = data_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let st = match nix::sys::statvfs::statvfs(existing) {
        Ok(st) => st,
        Err(e) => return Finding::warn(&what, format!("cannot measure: {e}"), "check the path"),
    };
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    let total = st.blocks() as u64 * st.fragment_size() as u64;
    let detail = format!("{:.1} GiB free of {:.1} GiB", gib(free), gib(total));
    if free < DISK_FAIL {
        Finding::fail(
            &what,
            detail,
            "free at least 1 GiB, or pass --data-dir on a larger filesystem",
        )
    } else if free < DISK_WARN || free * 10 < total {
        Finding::warn(
            &what,
            detail + ": images and logs fill it quickly, and pods are evicted below 10%",
            "free more space, or pass --data-dir on a larger filesystem",
        )
    } else {
        Finding::pass(&what, detail)
    }
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    fn opts(root: &Path) -> Options {
        Options {
            root: root.to_path_buf(),
            path: Some(root.join("bin").into_os_string()),
            data_dir: root.join("data"),
            ports: vec![],
            node: true,
            root_user: true,
        }
    }

    fn find<'a>(f: &'a [Finding], what: &str) -> &'a Finding {
        f.iter()
            .find(|x| x.what == what)
            .unwrap_or_else(|| panic!("no {what} in {f:?}"))
    }

    const GOOD: &[(&str, &str)] = &[
        ("proc/sys/kernel/osrelease", "6.1.0-40-amd64\n"),
        ("proc/self/ns/mnt", ""),
        ("proc/self/ns/uts", ""),
        ("proc/self/ns/ipc", ""),
        ("proc/self/ns/pid", ""),
        ("proc/self/ns/net", ""),
        ("proc/self/ns/cgroup", ""),
        ("sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n"),
        ("proc/filesystems", "nodev\tsysfs\nnodev\toverlay\n"),
        ("sys/module/bridge/refcnt", "0"),
        ("lib/modules/6.1.0-40-amd64/modules.dep", "kernel/drivers/net/veth.ko:\nkernel/net/netfilter/nf_tables.ko: kernel/net/netfilter/nfnetlink.ko\n"),
        ("proc/sys/net/bridge/bridge-nf-call-iptables", "1"),
        ("proc/sys/net/ipv4/ip_forward", "0"),
        ("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n"),
    ];

    #[test]
    fn a_good_host_passes_but_for_missing_tools() {
        let d = host(GOOD);
        let f = check(&opts(d.path()));
        for what in [
            "kernel",
            "namespaces",
            "cgroups",
            "cgroup controllers",
            "overlayfs",
            "bridge",
            "veth",
            "nftables (kernel)",
            "br_netfilter",
            "ip_forward",
            "swap",
        ] {
            assert_eq!(find(&f, what).level, Level::Pass, "{what}: {f:?}");
        }
        assert_eq!(find(&f, "cgroups").detail, "v2 (unified)");
        assert_eq!(find(&f, "veth").detail, "available as a module");
        // No containerd in the fake PATH: a failure that says how to install it.
        let c = find(&f, "containerd");
        assert_eq!(c.level, Level::Fail);
        assert!(c
            .fix
            .as_deref()
            .unwrap()
            .contains("apt-get install containerd"));
        assert!(render(&f).contains("FAIL  containerd: not found on PATH"));
    }

    #[test]
    fn v1_controllers_come_from_proc_cgroups() {
        let mut files: Vec<(&str, &str)> = GOOD
            .iter()
            .copied()
            .filter(|(p, _)| !p.contains("cgroup.controllers"))
            .collect();
        files.push(("sys/fs/cgroup/memory/tasks", ""));
        files.push(("proc/cgroups", "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t3\t1\t1\nmemory\t0\t1\t0\npids\t4\t1\t1\n"));
        let d = host(&files);
        let f = check(&opts(d.path()));
        assert_eq!(find(&f, "cgroups").detail, "v1");
        let c = find(&f, "cgroup controllers");
        assert_eq!(c.level, Level::Fail);
        assert!(c.detail.contains("memory"), "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("cgroup_enable=memory"));
    }

    #[test]
    fn missing_modules_swap_and_old_kernels_are_reported() {
        let files: Vec<(&str, &str)> = GOOD
            .iter()
            .copied()
            .filter(|(p, _)| {
                !p.contains("bridge")
                    && !p.contains("modules.dep")
                    && !p.contains("osrelease")
                    && !p.contains("swaps")
            })
            .chain([
                (
                    "lib/modules/4.9.0/modules.dep",
                    "kernel/fs/overlayfs/overlay.ko:\n",
                ),
                ("proc/sys/kernel/osrelease", "4.9.0"),
                (
                    "proc/swaps",
                    "Filename\tType\tSize\tUsed\tPriority\n/swap\tfile\t2097148\t0\t-2\n",
                ),
            ])
            .collect();
        let d = host(&files);
        let f = check(&opts(d.path()));
        assert_eq!(find(&f, "kernel").level, Level::Fail);
        assert_eq!(find(&f, "bridge").level, Level::Fail);
        assert_eq!(find(&f, "veth").level, Level::Fail);
        assert_eq!(find(&f, "br_netfilter").level, Level::Warn);
        let s = find(&f, "swap");
        assert_eq!(s.level, Level::Warn);
        assert!(s.detail.starts_with("2047 MiB"), "{s:?}");
    }

    #[test]
    fn tools_are_found_and_versioned() {
        let d = host(GOOD);
        let bin = d.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (name, line) in [
            (
                "containerd",
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1",
            ),
            ("runc", "runc version 1.0.0~rc93"),
            ("nft", "nftables v1.0.6 (Lester Gooch #5)"),
        ] {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\necho '{line}'\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let f = check(&opts(d.path()));
        assert_eq!(find(&f, "containerd").level, Level::Pass, "{f:?}");
        // conntrack is missing from this PATH: a warning, not a failure.
        assert_eq!(find(&f, "conntrack").level, Level::Warn, "{f:?}");
        assert_eq!(find(&f, "nft").level, Level::Pass, "{f:?}");
        let r = find(&f, "runc");
        assert_eq!(r.level, Level::Fail, "{r:?}");
        assert!(r.detail.contains("older than 1.1"));
    }

    #[test]
    fn the_kernel_config_decides_when_present() {
        let files: Vec<(&str, &str)> = GOOD
            .iter()
            .copied()
            .filter(|(p, _)| !p.contains("modules.dep") && !p.contains("sys/module/bridge"))
            .chain([(
                "boot/config-6.1.0-40-amd64",
                "CONFIG_BRIDGE=y\nCONFIG_VETH=m\n# CONFIG_NF_TABLES is not set\n",
            )])
            .collect();
        let d = host(&files);
        let f = check(&opts(d.path()));
        assert_eq!(find(&f, "bridge").detail, "built in");
        let v = find(&f, "veth");
        assert_eq!(v.level, Level::Fail);
        assert!(
            v.detail
                .contains("CONFIG_VETH=m, but module veth is not installed"),
            "{v:?}"
        );
        let n = find(&f, "nftables (kernel)");
        assert!(n.detail.contains("built without CONFIG_NF_TABLES"), "{n:?}");
        // Without any source the answer is a warning, not a guess.
        let files: Vec<(&str, &str)> = GOOD
            .iter()
            .copied()
            .filter(|(p, _)| !p.contains("modules.dep"))
            .collect();
        let d = host(&files);
        assert_eq!(find(&check(&opts(d.path())), "veth").level, Level::Warn);
    }

    #[test]
    fn versions_parse() {
        assert_eq!(version_of("runc version 1.1.5+ds1"), Some((1, 1)));
        assert_eq!(
            version_of("nftables v1.0.6 (Lester Gooch #5)"),
            Some((1, 0))
        );
        assert_eq!(
            version_of("containerd containerd.io 1.7.27 05044ec"),
            Some((1, 7))
        );
        assert_eq!(version_of("no digits"), None);
    }

    #[test]
    fn a_port_in_use_fails_and_names_the_flag() {
        let l = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
        let p = l.local_addr().unwrap().port();
        let f = port(p, "--https-listen-port");
        assert_eq!(f.level, Level::Fail);
        assert!(f.fix.unwrap().contains("--https-listen-port"));
        drop(l);
        assert_eq!(port(p, "--https-listen-port").level, Level::Pass);
    }

    #[test]
    fn the_control_plane_alone_checks_only_ports_and_disk() {
        let d = host(&[]);
        let mut o = opts(d.path());
        o.node = false;
        o.root_user = false;
        let f = check(&o);
        assert_eq!(f.len(), 1);
        assert!(f[0].what.starts_with("disk"));
    }
}
