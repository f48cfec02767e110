//! The kubelet's own cgroups, as upstream's QoS and pod cgroup managers keep them: the
//! BestEffort and Burstable tiers under `kite/kubepods`, and each pod's cgroup with the
//! pod's CPU shares, CPU quota and memory limit. runc makes the containers' cgroups
//! under the pod's. Also a pod's QoS class and cgroup path, each container's OOM score
//! adjustment by QoS class, and whether the OOM killer struck. cgroup v1 (the cpu and
//! memory hierarchies) and v2 (the unified hierarchy). `spec.rs` builds on this, not the
//! other way round.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Container, Pod};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Upstream's QoS class of a pod, which names its cgroup parent: the one the API server
/// wrote to its status, else (a static pod, or a pod made before the API server kept it)
/// computed from its spec by the same rules.
pub fn qos_class(pod: &Pod) -> &'static str {
    const CLASSES: [&str; 3] = ["Guaranteed", "Burstable", "BestEffort"];
    if let Some(q) = pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        if let Some(c) = CLASSES.iter().find(|c| **c == q) {
            return c;
        }
    }
    let Some(spec) = pod.spec.as_ref() else {
        return "BestEffort";
    };
    let pairs =
        |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
            m.into_iter()
                .flatten()
                .map(|(k, q)| (k.clone(), q.0.clone()))
                .collect()
        };
    kite_api::qos::qos_class(
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .map(|c| {
                let r = c.resources.as_ref();
                // Limits stand in for missing requests, as the API server defaults them.
                let limits: Vec<(String, String)> = pairs(r.and_then(|r| r.limits.as_ref()));
                let mut requests: Vec<(String, String)> =
                    pairs(r.and_then(|r| r.requests.as_ref()));
                for (k, v) in &limits {
                    if !requests.iter().any(|(n, _)| n == k) {
                        requests.push((k.clone(), v.clone()));
                    }
                }
                kite_api::qos::Resources { requests, limits }
            }),
    )
}

/// The cgroup under which this process's kubelet keeps its pods (`--cgroup-root`,
/// `kite` unless set): several nodes on one host keep apart.
static ROOT_NAME: OnceLock<String> = OnceLock::new();

/// Sets the kubelet's cgroup root once, before any pod starts (later calls are ignored).
pub fn set_root(name: &str) {
    let _ = ROOT_NAME.set(name.trim_matches('/').to_string());
}

fn root_name() -> &'static str {
    ROOT_NAME.get().map(String::as_str).unwrap_or("kite")
}

/// The cgroup parent of a pod's containers.
pub fn pod_cgroup(pod: &Pod) -> String {
    let uid = pod
        .metadata
        .uid
        .clone()
        .unwrap_or_default()
        .replace('-', "_");
    match qos_class(pod) {
        "Guaranteed" => format!("/{}/kubepods/pod{uid}", root_name()),
        q => format!("/{}/kubepods/{}/pod{uid}", root_name(), q.to_lowercase()),
    }
}

/// Whether the kernel's OOM killer killed a process of the container (its cgroup
/// survives the exit until the container is removed). cgroup v1 and v2.
pub fn oom_killed(pod: &Pod, container_id: &str) -> bool {
    let rel = format!("{}/{container_id}", pod_cgroup(pod));
    let count = |path: String, key: &str| {
        std::fs::read_to_string(path).ok().and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        })
    };
    [
        count(
            format!("/sys/fs/cgroup/memory{rel}/memory.oom_control"),
            "oom_kill ",
        ),
        count(format!("/sys/fs/cgroup{rel}/memory.events"), "oom_kill "),
        count(
            format!("/sys/fs/cgroup/unified{rel}/memory.events"),
            "oom_kill ",
        ),
    ]
    .into_iter()
    .flatten()
    .any(|n| n > 0)
}

const ROOT: &str = "/sys/fs/cgroup";
/// Upstream's MinShares and MaxShares, and the CFS period it uses.
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262144;
const PERIOD_US: i64 = 100_000;

/// What one cgroup is given.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Limits {
    pub shares: u64,
    /// CFS quota per [`PERIOD_US`]; None for no quota.
    pub quota_us: Option<i64>,
    /// Memory limit in bytes; None for none.
    pub memory: Option<i64>,
}

/// Upstream's MilliCPUToShares.
pub fn shares(milli: i128) -> u64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    ((milli * 1024 / 1000) as u64).clamp(MIN_SHARES, MAX_SHARES)
}

/// Upstream's MilliCPUToQuota (1 ms at least).
pub fn quota(milli: i128) -> i64 {
    ((milli * PERIOD_US as i128 / 1000) as i64).max(1000)
}

/// A container's request (or limit) of `name`, above zero; a missing request is its
/// limit, as the API server defaults it (a static pod is not defaulted there).
fn amount(c: &Container, limits: bool, name: &str, milli: bool) -> Option<i128> {
    let r = c.resources.as_ref()?;
    let get = |m: &Option<std::collections::BTreeMap<String, _>>| m.as_ref()?.get(name).cloned();
    let q: k8s_openapi::apimachinery::pkg::api::resource::Quantity = if limits {
        get(&r.limits)?
    } else {
        get(&r.requests).or_else(|| get(&r.limits))?
    };
    if milli {
        kite_runtime::quantity::parse_milli(&q.0)
    } else {
        kite_runtime::quantity::parse(&q.0)
    }
    .filter(|v| *v > 0)
}

/// The pod's total of one resource as upstream's PodRequests / PodLimits count it: the
/// app containers and sidecars together, or the largest other init container if that
/// is more; and whether every container sets it (else the pod is not bounded by it).
fn pod_total(pod: &Pod, limits: bool, name: &str, milli: bool) -> (i128, bool) {
    let (containers, inits) = match pod.spec.as_ref() {
        Some(s) => (
            &s.containers[..],
            s.init_containers.as_deref().unwrap_or_default(),
        ),
        None => (&[][..], &[][..]),
    };
    let sidecar = |c: &Container| c.restart_policy.as_deref() == Some("Always");
    let mut all_set = true;
    let mut running = 0;
    for c in containers.iter().chain(inits.iter().filter(|c| sidecar(c))) {
        match amount(c, limits, name, milli) {
            Some(v) => running += v,
            None => all_set = false,
        }
    }
    let mut largest_init = 0;
    for c in inits.iter().filter(|c| !sidecar(c)) {
        match amount(c, limits, name, milli) {
            Some(v) => largest_init = largest_init.max(v),
            None => all_set = false,
        }
    }
    (running.max(largest_init), all_set)
}

/// The pod cgroup's settings, as upstream's ResourceConfigForPod: shares from the
/// requests; for Guaranteed pods, and Burstable pods whose every container sets it,
/// the CPU quota and memory limit from the limits; BestEffort pods get the least shares.
pub fn pod_limits(pod: &Pod) -> Limits {
    let class = qos_class(pod);
    if class == "BestEffort" {
        return Limits {
            shares: MIN_SHARES,
            ..Default::default()
        };
    }
    let (cpu_req, _) = pod_total(pod, false, "cpu", true);
    let (cpu_lim, cpu_all) = pod_total(pod, true, "cpu", true);
    let (mem_lim, mem_all) = pod_total(pod, true, "memory", false);
    let guaranteed = class == "Guaranteed";
    Limits {
        shares: shares(cpu_req),
        quota_us: (guaranteed || cpu_all).then(|| quota(cpu_lim)),
        memory: (guaranteed || mem_all).then_some(mem_lim as i64),
    }
}

/// The OOM score adjustment of a container, as upstream's GetContainerOOMScoreAdjust:
/// -997 for Guaranteed (and system-node-critical) pods, 1000 for BestEffort, and for
/// Burstable 1000 less the container's share of the node's memory, within 3..=999.
///
/// Without CAP_SYS_RESOURCE (kite in a container, or a restricted VM) no process may go
/// below its parent's score, so the score is kept at kite's own at least, as
/// containerd's `restrict_oom_score_adj` does; else runc could not start the container.
pub fn oom_score_adj(pod: &Pod, c: &Container) -> i64 {
    restricted(wanted_oom_score_adj(pod, c))
}

fn restricted(adj: i64) -> i64 {
    static FLOOR: OnceLock<Option<i64>> = OnceLock::new();
    let floor = FLOOR.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
        let caps = u64::from_str_radix(eff.trim(), 16).ok()?;
        const CAP_SYS_RESOURCE: u32 = 24;
        if caps & (1 << CAP_SYS_RESOURCE) != 0 {
            return None;
        }
        std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    floor.map_or(adj, |f| adj.max(f))
}

fn wanted_oom_score_adj(pod: &Pod, c: &Container) -> i64 {
    let critical = pod
        .spec
        .as_ref()
        .and_then(|s| s.priority_class_name.as_deref())
        == Some("system-node-critical");
    match qos_class(pod) {
        _ if critical => -997,
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let request = amount(c, false, "memory", false).unwrap_or(0);
            let adj = 1000 - (1000 * request / memory_capacity().max(1)) as i64;
            adj.clamp(3, 999)
        }
    }
}

/// The node's memory in bytes (MemTotal).
fn memory_capacity() -> i128 {
    static CAP: OnceLock<i128> = OnceLock::new();
    *CAP.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                let l = t.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kb: i128 = l.split_whitespace().nth(1)?.parse().ok()?;
                Some(kb * 1024)
            })
            .unwrap_or(0)
    })
}

fn unified() -> bool {
    static V2: OnceLock<bool> = OnceLock::new();
    *V2.get_or_init(|| Path::new(ROOT).join("cgroup.controllers").exists())
}

/// Writes `value` to `file` in `dir` when the controller offers that file (a cgroup v2
/// controller that is not enabled there has none).
fn set(dir: &Path, file: &str, value: &str) -> Result<()> {
    let p = dir.join(file);
    if !p.exists() {
        return Ok(());
    }
    std::fs::write(&p, value).with_context(|| format!("writing {value} to {}", p.display()))
}

/// Makes the cgroup at `rel` (e.g. `/kite/kubepods/burstable`) and gives it `l`.
fn apply(rel: &str, l: &Limits) -> Result<()> {
    let rel = rel.trim_start_matches('/');
    if unified() {
        let dir = PathBuf::from(ROOT).join(rel);
        // Each ancestor hands the cpu and memory controllers down to its children.
        let mut at = PathBuf::from(ROOT);
        for part in Path::new(rel).components() {
            let _ = std::fs::write(at.join("cgroup.subtree_control"), "+cpu +memory +pids");
            at.push(part);
            std::fs::create_dir_all(&at).with_context(|| format!("creating {}", at.display()))?;
        }
        let weight = 1 + ((l.shares - MIN_SHARES) * 9999) / (MAX_SHARES - MIN_SHARES);
        set(&dir, "cpu.weight", &weight.to_string())?;
        let q = l.quota_us.map_or("max".to_string(), |q| q.to_string());
        set(&dir, "cpu.max", &format!("{q} {PERIOD_US}"))?;
        let m = l.memory.map_or("max".to_string(), |m| m.to_string());
        set(&dir, "memory.max", &m)?;
        return Ok(());
    }
    let cpu = PathBuf::from(ROOT).join("cpu").join(rel);
    std::fs::create_dir_all(&cpu).with_context(|| format!("creating {}", cpu.display()))?;
    set(&cpu, "cpu.shares", &l.shares.to_string())?;
    set(&cpu, "cpu.cfs_period_us", &PERIOD_US.to_string())?;
    set(
        &cpu,
        "cpu.cfs_quota_us",
        &l.quota_us.unwrap_or(-1).to_string(),
    )?;
    let mem = PathBuf::from(ROOT).join("memory").join(rel);
    std::fs::create_dir_all(&mem).with_context(|| format!("creating {}", mem.display()))?;
    if let Some(m) = l.memory {
        set(&mem, "memory.limit_in_bytes", &m.to_string())?;
    }
    Ok(())
}

/// Makes the pod's cgroup with its settings, before its first container starts.
pub fn ensure_pod(pod: &Pod) -> Result<()> {
    apply(&pod_cgroup(pod), &pod_limits(pod))
}

/// Gives the pod's cgroup `l` (an in-place resize: see `resize`).
pub fn apply_pod(pod: &Pod, l: &Limits) -> Result<()> {
    apply(&pod_cgroup(pod), l)
}

impl Limits {
    /// The larger of each setting (no quota or limit being the largest): what a pod's
    /// cgroup holds while its containers move from `self` to `other`.
    pub fn widest(&self, other: &Limits) -> Limits {
        let max = |a: Option<i64>, b: Option<i64>| Some(a?.max(b?));
        Limits {
            shares: self.shares.max(other.shares),
            quota_us: max(self.quota_us, other.quota_us),
            memory: max(self.memory, other.memory),
        }
    }
}

/// The pod's CPU (millicores) and memory (bytes) requests, as upstream's PodRequests
/// counts them (a missing request is its limit): what it takes of its node.
pub fn pod_requests(pod: &Pod) -> (i128, i128) {
    (
        pod_total(pod, false, "cpu", true).0,
        pod_total(pod, false, "memory", false).0,
    )
}

/// Removes the (empty) cgroup directories of a pod in every hierarchy, whatever its QoS
/// class was: runc removes the containers' own, not their parent.
pub fn remove_pod(uid: &str) {
    let uid = uid.replace('-', "_");
    let mut roots: Vec<PathBuf> = vec![ROOT.into()];
    if let Ok(rd) = std::fs::read_dir(ROOT) {
        roots.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for root in roots {
        for sub in ["", "burstable/", "besteffort/"] {
            let _ =
                std::fs::remove_dir(root.join(format!("{}/kubepods/{sub}pod{uid}", root_name())));
        }
    }
}

/// Sets the QoS tiers from the node's pods, as upstream's QoS manager: BestEffort gets
/// the least CPU shares, Burstable the sum of its pods' CPU requests.
pub fn update_qos<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Result<()> {
    let burstable: i128 = pods
        .into_iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded") | Some("Failed")) && qos_class(p) == "Burstable"
        })
        .map(|p| pod_total(p, false, "cpu", true).0)
        .sum();
    let tier = |shares| Limits {
        shares,
        ..Default::default()
    };
    let r = root_name();
    apply(&format!("/{r}/kubepods/besteffort"), &tier(MIN_SHARES))?;
    apply(
        &format!("/{r}/kubepods/burstable"),
        &tier(self::shares(burstable)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn pod_cgroups_follow_upstream() {
        let g = pod("spec:\n  containers:\n  - {name: a, resources: {limits: {cpu: 500m, memory: 64Mi}}}\n  - {name: b, resources: {limits: {cpu: '1', memory: 64Mi}}}\n");
        assert_eq!(
            pod_limits(&g),
            Limits {
                shares: 1536,
                quota_us: Some(150_000),
                memory: Some(128 << 20)
            }
        );
        assert_eq!(
            wanted_oom_score_adj(&g, &g.spec.as_ref().unwrap().containers[0]),
            -997
        );
        // Burstable: a quota only when every container has a CPU limit.
        let b = pod("spec:\n  containers:\n  - {name: a, resources: {requests: {cpu: 100m, memory: 16Mi}, limits: {memory: 64Mi}}}\n");
        assert_eq!(
            pod_limits(&b),
            Limits {
                shares: 102,
                quota_us: None,
                memory: Some(64 << 20)
            }
        );
        let adj = wanted_oom_score_adj(&b, &b.spec.as_ref().unwrap().containers[0]);
        assert!((3..=999).contains(&adj), "{adj}");
        let be = pod("spec:\n  containers:\n  - {name: a}\n");
        assert_eq!(pod_limits(&be).shares, 2);
        assert_eq!(
            wanted_oom_score_adj(&be, &be.spec.as_ref().unwrap().containers[0]),
            1000
        );
        // An init container larger than the app counts instead of it.
        let i = pod("spec:\n  initContainers:\n  - {name: i, resources: {limits: {cpu: '2', memory: 1Gi}}}\n  containers:\n  - {name: a, resources: {limits: {cpu: 500m, memory: 64Mi}}}\n");
        assert_eq!(pod_limits(&i).quota_us, Some(200_000));
        assert_eq!(pod_limits(&i).memory, Some(1 << 30));
    }

    #[test]
    fn shares_and_quota_bounds() {
        assert_eq!(shares(0), 2);
        assert_eq!(shares(1), 2);
        assert_eq!(shares(1000), 1024);
        assert_eq!(shares(10_000_000), 262144);
        assert_eq!(quota(1), 1000);
        assert_eq!(quota(500), 50_000);
    }
}
