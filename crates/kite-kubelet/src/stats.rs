//! The node's and its pods' resource usage, as upstream's kubelet summarises it
//! (`/stats/summary`, the `statsapi.Summary` shape that metrics-server and `kubectl top`
//! read), from cgroups (v2 and v1) and the filesystems. CPU rates need two samples: a
//! sampler takes one of every cgroup every 10 s (cadvisor's housekeeping interval) and
//! keeps the rate over the last interval.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";
/// How often the sampler reads every cgroup.
pub const INTERVAL: Duration = Duration::from_secs(10);

fn unified() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// CPU time a cgroup has used, in nanoseconds; `rel` as `/kite/kubepods/...`, or `/` for
/// the node (from /proc/stat).
pub fn cpu_usage_ns(rel: &str) -> Option<u64> {
    if rel == "/" {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system (idle iowait excluded) irq softirq steal
        let busy: u64 = [0, 1, 2, 5, 6, 7]
            .iter()
            .filter_map(|i| ticks.get(*i))
            .sum();
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as u64;
        return Some(busy * 1_000_000_000 / hz.max(1));
    }
    let rel = rel.trim_start_matches('/');
    if unified() {
        let text = std::fs::read_to_string(PathBuf::from(ROOT).join(rel).join("cpu.stat")).ok()?;
        return kv(&text, "usage_usec").map(|us| us * 1000);
    }
    std::fs::read_to_string(
        PathBuf::from(ROOT)
            .join("cpuacct")
            .join(rel)
            .join("cpuacct.usage"),
    )
    .ok()?
    .trim()
    .parse()
    .ok()
}

fn kv(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A cgroup's memory: usage, working set (usage less inactive file pages, as cadvisor),
/// RSS and page faults.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Memory {
    pub usage: u64,
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// The limit, for availableBytes; None without one.
    pub limit: Option<u64>,
}

pub fn memory(rel: &str) -> Option<Memory> {
    if rel == "/" {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kb = |k: &str| {
            info.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map(|v| v * 1024)
        };
        let total = kb("MemTotal:")?;
        let available = kb("MemAvailable:").unwrap_or(0);
        let used = total.saturating_sub(kb("MemFree:").unwrap_or(0));
        let working = total.saturating_sub(available);
        return Some(Memory {
            usage: used,
            working_set: working,
            rss: kb("AnonPages:").unwrap_or(0),
            page_faults: 0,
            major_page_faults: 0,
            limit: Some(total),
        });
    }
    let rel = rel.trim_start_matches('/');
    let (dir, usage_f, stat_f, limit_f, rss_k, inactive_k, pf_k, mpf_k) = if unified() {
        (
            PathBuf::from(ROOT).join(rel),
            "memory.current",
            "memory.stat",
            "memory.max",
            "anon",
            "inactive_file",
            "pgfault",
            "pgmajfault",
        )
    } else {
        (
            PathBuf::from(ROOT).join("memory").join(rel),
            "memory.usage_in_bytes",
            "memory.stat",
            "memory.limit_in_bytes",
            "total_rss",
            "total_inactive_file",
            "total_pgfault",
            "total_pgmajfault",
        )
    };
    let usage: u64 = std::fs::read_to_string(dir.join(usage_f))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(dir.join(stat_f)).unwrap_or_default();
    let inactive = kv(&stat, inactive_k).unwrap_or(0);
    let limit = std::fs::read_to_string(dir.join(limit_f))
        .ok()
        .and_then(|l| l.trim().parse::<u64>().ok())
        .filter(|l| *l < (1 << 62));
    Some(Memory {
        usage,
        working_set: usage.saturating_sub(inactive),
        rss: kv(&stat, rss_k).unwrap_or(0),
        page_faults: kv(&stat, pf_k).unwrap_or(0),
        major_page_faults: kv(&stat, mpf_k).unwrap_or(0),
        limit,
    })
}

/// How many processes a cgroup has.
pub fn process_count(rel: &str) -> u64 {
    let rel = rel.trim_start_matches('/');
    let dir = if unified() {
        PathBuf::from(ROOT).join(rel)
    } else {
        PathBuf::from(ROOT).join("pids").join(rel)
    };
    std::fs::read_to_string(dir.join("pids.current"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A filesystem's size and use (statvfs).
// statvfs's fields are 32-bit on some targets (a Raspberry Pi's): the casts are not idle.
#[allow(clippy::unnecessary_cast)]
pub fn fs(path: &Path) -> Value {
    let Ok(s) = nix::sys::statvfs::statvfs(path) else {
        return json!({});
    };
    let bs = s.fragment_size() as u64;
    let cap = s.blocks() as u64 * bs;
    let free = s.blocks_available() as u64 * bs;
    let used = cap.saturating_sub(s.blocks_free() as u64 * bs);
    json!({
        "time": now(),
        "availableBytes": free,
        "capacityBytes": cap,
        "usedBytes": used,
        "inodesFree": s.files_available() as u64,
        "inodes": s.files() as u64,
        "inodesUsed": (s.files() as u64).saturating_sub(s.files_free() as u64),
    })
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The last two CPU samples of each cgroup, and the rate between them.
#[derive(Default)]
pub struct Sampler {
    samples: Mutex<HashMap<String, Sample>>,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    usage_ns: u64,
    /// Nanocores over the interval before `at`.
    rate: Option<u64>,
}

impl Sampler {
    /// Takes a sample of each cgroup in `rels` (forgetting the others).
    pub fn sample(&self, rels: &[String]) {
        let mut m = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|k, _| rels.contains(k));
        let now = Instant::now();
        for r in rels {
            let Some(u) = cpu_usage_ns(r) else { continue };
            let rate = m.get(r).and_then(|prev| {
                rate(u.saturating_sub(prev.usage_ns), now.duration_since(prev.at))
            });
            m.insert(
                r.clone(),
                Sample {
                    at: now,
                    usage_ns: u,
                    rate,
                },
            );
        }
    }

    /// The `cpu` stats of a cgroup: its total and its last rate.
    pub fn cpu(&self, rel: &str) -> Value {
        let usage = cpu_usage_ns(rel).unwrap_or(0);
        let rate = self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(rel)
            .and_then(|s| s.rate);
        let mut v = json!({"time": now(), "usageCoreNanoSeconds": usage});
        if let Some(r) = rate {
            v["usageNanoCores"] = json!(r);
        }
        v
    }
}

/// Nanocores: `used_ns` of CPU time over `dt` (in 128 bits: a busy node's 10 s of several
/// cores' nanoseconds times 10⁹ is past 64).
fn rate(used_ns: u64, dt: std::time::Duration) -> Option<u64> {
    let dt = dt.as_nanos();
    (dt > 0).then(|| u64::try_from(used_ns as u128 * 1_000_000_000 / dt).unwrap_or(u64::MAX))
}

/// The `memory` stats of a cgroup.
pub fn memory_json(rel: &str) -> Value {
    let Some(m) = memory(rel) else {
        return json!({"time": now()});
    };
    let mut v = json!({
        "time": now(),
        "usageBytes": m.usage,
        "workingSetBytes": m.working_set,
        "rssBytes": m.rss,
        "pageFaults": m.page_faults,
        "majorPageFaults": m.major_page_faults,
    });
    if let Some(l) = m.limit {
        v["availableBytes"] = json!(l.saturating_sub(m.working_set));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_has_cpu_and_memory_figures() {
        assert!(cpu_usage_ns("/").unwrap() > 0);
        let m = memory("/").unwrap();
        assert!(m.usage > 0 && m.working_set <= m.limit.unwrap());
        let s = Sampler::default();
        s.sample(&["/".to_string()]);
        std::thread::sleep(Duration::from_millis(50));
        s.sample(&["/".to_string()]);
        assert!(s.cpu("/")["usageNanoCores"].is_u64());
        assert!(fs(Path::new("/"))["capacityBytes"].as_u64().unwrap() > 0);
    }

    #[test]
    fn rates_of_busy_nodes_do_not_overflow() {
        // 2 cores busy for 10 s: 2e10 ns; times 1e9 is past u64.
        assert_eq!(
            rate(20_000_000_000, std::time::Duration::from_secs(10)),
            Some(2_000_000_000)
        );
        assert_eq!(rate(5, std::time::Duration::ZERO), None);
    }

    #[test]
    fn key_values_parse() {
        assert_eq!(kv("usage_usec 12\nuser_usec 3", "usage_usec"), Some(12));
        assert_eq!(kv("anon 5", "file"), None);
    }
}
