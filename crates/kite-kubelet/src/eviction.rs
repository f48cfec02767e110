//! Node-pressure eviction, as upstream's eviction manager with its hard thresholds: the
//! node's signals measured (memory.available from the root cgroup's working set,
//! nodefs/imagefs available bytes and free inodes from statvfs, pid.available), the
//! thresholds they cross (`--eviction-hard`, upstream's defaults), the node conditions
//! that follow (MemoryPressure, DiskPressure, PIDPressure, held for
//! `--eviction-pressure-transition-period` after the signal clears), which pod goes first
//! (upstream's ranking: usage above requests, then priority, then usage), and
//! upstream's messages. Also local storage: an emptyDir past its `sizeLimit` evicts its
//! pod whatever the node's state. The pod worker does the evicting (`Kubelet::evict`).

use std::path::Path;
use std::time::{Duration, Instant};

/// One signal of upstream's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    MemoryAvailable,
    NodefsAvailable,
    NodefsInodesFree,
    ImagefsAvailable,
    ImagefsInodesFree,
    PidAvailable,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodefsAvailable => "nodefs.available",
            Signal::NodefsInodesFree => "nodefs.inodesFree",
            Signal::ImagefsAvailable => "imagefs.available",
            Signal::ImagefsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    fn parse(s: &str) -> Option<Signal> {
        [
            Signal::MemoryAvailable,
            Signal::NodefsAvailable,
            Signal::NodefsInodesFree,
            Signal::ImagefsAvailable,
            Signal::ImagefsInodesFree,
            Signal::PidAvailable,
        ]
        .into_iter()
        .find(|x| x.name() == s)
    }

    /// The node condition it drives.
    pub fn condition(self) -> Pressure {
        match self {
            Signal::MemoryAvailable => Pressure::Memory,
            Signal::PidAvailable => Pressure::Pid,
            _ => Pressure::Disk,
        }
    }

    /// The resource named in upstream's eviction message.
    pub fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodefsInodesFree | Signal::ImagefsInodesFree => "inodes",
            Signal::PidAvailable => "pids",
            _ => "ephemeral-storage",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pressure {
    Memory,
    Disk,
    Pid,
}

/// A threshold: below this much available, the signal is crossed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    Quantity(i128),
    /// Of the signal's capacity.
    Percent(f64),
}

impl Amount {
    fn of(self, capacity: i128) -> i128 {
        match self {
            Amount::Quantity(q) => q,
            Amount::Percent(p) => (capacity as f64 * p / 100.0) as i128,
        }
    }
}

/// A count of bytes as a Kubernetes quantity prints it: the largest binary suffix that
/// divides it.
fn bytes_text(v: i128) -> String {
    for (suffix, unit) in [
        ("Ti", 1i128 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if v != 0 && v % unit == 0 {
            return format!("{}{suffix}", v / unit);
        }
    }
    v.to_string()
}

/// `--eviction-hard` and `--eviction-pressure-transition-period`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub hard: Vec<(Signal, Amount)>,
    pub transition: Duration,
}

/// Upstream's default hard thresholds (Linux).
pub const DEFAULT_HARD: &str =
    "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%,imagefs.inodesFree<5%";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hard: parse(DEFAULT_HARD).expect("the defaults parse"),
            transition: Duration::from_secs(300),
        }
    }
}

/// Parses upstream's `SIGNAL<AMOUNT,…` form (an amount is a quantity or a percentage).
pub fn parse(spec: &str) -> Result<Vec<(Signal, Amount)>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, amount) = part.split_once('<').ok_or_else(|| {
            format!("{part:?}: expected SIGNAL<AMOUNT (e.g. memory.available<100Mi)")
        })?;
        let signal = Signal::parse(name.trim())
            .ok_or_else(|| format!("{part:?}: unknown signal {name:?}"))?;
        let amount = amount.trim();
        let a = match amount.strip_suffix('%') {
            Some(p) => {
                let v: f64 = p
                    .parse()
                    .map_err(|_| format!("{part:?}: {amount:?} is not a percentage"))?;
                if !(0.0..=100.0).contains(&v) {
                    return Err(format!("{part:?}: a percentage is between 0% and 100%"));
                }
                Amount::Percent(v)
            }
            None => Amount::Quantity(
                kite_runtime::quantity::parse(amount)
                    .filter(|v| *v >= 0)
                    .ok_or_else(|| format!("{part:?}: {amount:?} is not a quantity"))?,
            ),
        };
        out.retain(|(s, _)| *s != signal);
        out.push((signal, a));
    }
    Ok(out)
}

/// What a signal measured: available and capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reading {
    pub available: i128,
    pub capacity: i128,
}

/// Every signal's reading now.
pub fn observe(nodefs: &Path, imagefs: &Path) -> Vec<(Signal, Reading)> {
    let mut out = Vec::new();
    if let Some(m) = crate::stats::memory("/") {
        if let Some(cap) = m.limit {
            out.push((
                Signal::MemoryAvailable,
                Reading {
                    available: cap as i128 - m.working_set as i128,
                    capacity: cap as i128,
                },
            ));
        }
    }
    for (path, bytes, inodes) in [
        (nodefs, Signal::NodefsAvailable, Signal::NodefsInodesFree),
        (imagefs, Signal::ImagefsAvailable, Signal::ImagefsInodesFree),
    ] {
        if let Ok(s) = nix::sys::statvfs::statvfs(path) {
            let frag = s.fragment_size() as i128;
            out.push((
                bytes,
                Reading {
                    available: s.blocks_available() as i128 * frag,
                    capacity: s.blocks() as i128 * frag,
                },
            ));
            if s.files() > 0 {
                out.push((
                    inodes,
                    Reading {
                        available: s.files_available() as i128,
                        capacity: s.files() as i128,
                    },
                ));
            }
        }
    }
    let max: Option<i128> = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|v| v.trim().parse().ok());
    let running: Option<i128> = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok());
    if let (Some(max), Some(n)) = (max, running) {
        out.push((
            Signal::PidAvailable,
            Reading {
                available: max - n,
                capacity: max,
            },
        ));
    }
    out
}

/// The signals below their thresholds, with the threshold's amount.
pub fn crossed(
    hard: &[(Signal, Amount)],
    readings: &[(Signal, Reading)],
) -> Vec<(Signal, Amount, Reading)> {
    hard.iter()
        .filter_map(|(s, a)| {
            let r = readings.iter().find(|(x, _)| x == s)?.1;
            (r.available < a.of(r.capacity)).then_some((*s, *a, r))
        })
        .collect()
}

/// The node's pressure conditions over time: each holds while its signals are crossed and
/// for the transition period after.
#[derive(Default)]
pub struct Conditions {
    last_crossed: std::collections::HashMap<Pressure, Instant>,
}

impl Conditions {
    /// Records what is crossed now; returns the conditions that hold.
    pub fn update(
        &mut self,
        now: Instant,
        crossed: &[(Signal, Amount, Reading)],
        transition: Duration,
    ) -> Vec<Pressure> {
        for (s, ..) in crossed {
            self.last_crossed.insert(s.condition(), now);
        }
        self.last_crossed.retain(|_, at| {
            now.duration_since(*at) < transition || transition.is_zero() && *at == now
        });
        let mut out: Vec<Pressure> = self.last_crossed.keys().copied().collect();
        out.sort_by_key(|p| *p as u8);
        out
    }
}

/// A candidate for eviction: a pod's usage of the starved resource and its requests.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub key: (String, String),
    pub priority: i32,
    pub usage: i128,
    pub request: i128,
    /// The container using the most, its usage and request (for the message).
    pub top: Option<(String, i128, i128)>,
}

/// Upstream's ranking for memory and disk pressure: pods using more than they requested
/// first, then lower priority, then more usage above the request.
pub fn rank(mut pods: Vec<Candidate>) -> Vec<Candidate> {
    pods.sort_by(|a, b| {
        let over = |c: &Candidate| c.usage > c.request;
        over(b)
            .cmp(&over(a))
            .then(a.priority.cmp(&b.priority))
            .then((b.usage - b.request).cmp(&(a.usage - a.request)))
    });
    pods
}

/// Upstream's eviction message for a pod evicted under `signal`.
pub fn message(signal: Signal, threshold: Amount, r: Reading, c: &Candidate) -> String {
    let mut m = format!(
        "The node was low on resource: {}. Threshold quantity: {}, available: {}. ",
        signal.resource(),
        match signal.resource() {
            "memory" | "ephemeral-storage" => bytes_text(threshold.of(r.capacity)),
            _ => threshold.of(r.capacity).to_string(),
        },
        available_text(signal, r.available)
    );
    if let Some((name, usage, request)) = &c.top {
        m.push_str(&format!(
            "Container {name} was using {}, request is {}, has larger consumption than its request. ",
            available_text(signal, *usage),
            available_text(signal, *request)
        ));
    }
    m
}

/// Bytes as upstream prints a quantity (Ki for memory and storage).
fn available_text(signal: Signal, v: i128) -> String {
    match signal.resource() {
        "memory" | "ephemeral-storage" => format!("{}Ki", v / 1024),
        _ => v.to_string(),
    }
}

/// Upstream's message for an emptyDir past its sizeLimit.
pub fn empty_dir_message(volume: &str, limit: &str) -> String {
    format!("Usage of EmptyDir volume \"{volume}\" exceeds the limit \"{limit}\". ")
}

/// The bytes `dir` takes on disk (its files' blocks), not crossing into other mounts.
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let dev = root.dev();
    let mut total = root.blocks() * 512;
    let mut stack = vec![dir.to_path_buf()];
    // Bounded: a pathological tree costs at most this many entries per look.
    let mut budget = 1_000_000usize;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return total;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_as_upstream() {
        let d = Settings::default().hard;
        assert_eq!(d.len(), 5);
        assert_eq!(d[0], (Signal::MemoryAvailable, Amount::Quantity(100 << 20)));
        assert_eq!(d[1], (Signal::NodefsAvailable, Amount::Percent(10.0)));
        assert!(parse("memory.available>1Gi").is_err());
        assert!(parse("cpu.available<1")
            .unwrap_err()
            .contains("unknown signal"));
        assert!(parse("nodefs.available<120%").is_err());
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn crossed_signals_make_conditions_that_hold_for_the_transition_period() {
        let hard = parse("memory.available<100Mi,nodefs.available<10%").unwrap();
        let low_mem = Reading {
            available: 50 << 20,
            capacity: 1 << 30,
        };
        let disk = Reading {
            available: 50,
            capacity: 100,
        };
        let c = crossed(
            &hard,
            &[
                (Signal::MemoryAvailable, low_mem),
                (Signal::NodefsAvailable, disk),
            ],
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, Signal::MemoryAvailable);
        let mut conds = Conditions::default();
        let t0 = Instant::now();
        let period = Duration::from_secs(30);
        assert_eq!(conds.update(t0, &c, period), vec![Pressure::Memory]);
        assert_eq!(
            conds.update(t0 + Duration::from_secs(10), &[], period),
            vec![Pressure::Memory]
        );
        assert_eq!(
            conds.update(t0 + Duration::from_secs(31), &[], period),
            vec![]
        );
    }

    #[test]
    fn ranking_and_messages_follow_upstream() {
        let pod = |n: &str, priority, usage, request| Candidate {
            key: ("ns".into(), n.into()),
            priority,
            usage,
            request,
            top: Some(("c".into(), usage, request)),
        };
        let order: Vec<String> = rank(vec![
            pod("within", 0, 10, 100),
            pod("over-high-priority", 1000, 200, 100),
            pod("over-a-little", 0, 110, 100),
            pod("over-a-lot", 0, 500, 100),
        ])
        .into_iter()
        .map(|c| c.key.1)
        .collect();
        assert_eq!(
            order,
            [
                "over-a-lot",
                "over-a-little",
                "over-high-priority",
                "within"
            ]
        );
        let m = message(
            Signal::MemoryAvailable,
            Amount::Quantity(100 << 20),
            Reading {
                available: 50 << 20,
                capacity: 1 << 30,
            },
            &pod("p", 0, 120 << 20, 0),
        );
        assert_eq!(m, "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. Container c was using 122880Ki, request is 0Ki, has larger consumption than its request. ");
    }

    #[test]
    fn disk_usage_counts_blocks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), vec![1u8; 64 * 1024]).unwrap();
        assert!(disk_usage(d.path()) >= 128 * 1024);
    }
}
