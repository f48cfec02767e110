//! Node benchmarks (issue 4), against the real `kite` binary as root: `kite server` with
//! its node, the offline test images, pods of `kite.test/shell:1` running `sleep`.
//!
//! `cargo bench -p kite --bench node` (as root; needs containerd, runc, busybox-static).
//! - start latency: N pods created at once (N = 1, 10, 100; KITE_BENCH_BATCHES overrides,
//!   e.g. "1,10"), each timed from just before its POST to the watch event that shows it
//!   Ready; p50 and p99 per batch. The pods are deleted, and gone, between batches.
//! - memory: RSS of kite and of its containerd with 0 pods (3 s after start, and again in
//!   the first round once the smaller batches are gone) and with the largest batch
//!   running, and the runc shims' count and summed PSS.
//! - runtime floor: the same batches as containers made straight through kite's
//!   containerd, with no kite in the path (no API, scheduler, kubelet, namespaces or
//!   veths of kite's): each timed from the batch's start to its task's Start returning.
//!   The containers copy the runtime spec kite made for a real pod, with fresh network,
//!   IPC and UTS namespaces, share shims as kite's pods do (`spec::shim_group`), and go
//!   through the kubelet's own containerd calls. No kubelet on containerd and runc can
//!   start a batch faster than this, so it tells how much of a pod's start is kite's.
//! - rounds: kite's batches and the floor's alternate, `KITE_BENCH_ROUNDS` times (4 unless
//!   set), kite first in odd rounds and the floor first in even ones; each round gives the
//!   ratio of kite's largest-batch p50 to the floor's four-at-a-time p50, and the bench
//!   ends with their median. (One pair per run, as before session 29, moved by 1.1–1.5x
//!   from run to run of one build: the VM slows under sustained load.) Every timed batch,
//!   kite's or the floor's, starts once the machine is nearly idle, after the teardown of
//!   the one before.
//!
//! Figures and the command are recorded in docs/benchmarks.md.

mod common;
mod nodes;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

/// The `/proc/<pid>` directories of processes whose command line (arguments joined by
/// spaces, with a trailing one) passes `pick`.
fn processes(pick: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| pick(&String::from_utf8_lossy(&c).replace('\0', " ")))
        })
        .map(|e| e.path())
        .collect()
}

fn containerd_pid(data: &Path) -> Option<u32> {
    let want = format!(
        "--config {} ",
        data.join("agent/etc/containerd/config.toml").display()
    );
    processes(|cmd| cmd.starts_with("containerd ") && cmd.contains(&want))
        .first()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}

/// The runc shims of this data dir's containerd (found by its socket, as kite-killall.sh
/// finds them): how many, and their proportional set size summed (RSS would count the
/// pages they share once per shim).
fn shims_pss_kib(data: &Path) -> (usize, u64) {
    let want = format!(
        "-address {} ",
        kite_kubelet::containerd::Paths::new(data).socket.display()
    );
    let pss: Vec<u64> = processes(|cmd| cmd.contains("containerd-shim") && cmd.contains(&want))
        .iter()
        .filter_map(|p| {
            let roll = std::fs::read_to_string(p.join("smaps_rollup")).ok()?;
            roll.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .collect();
    (pss.len(), pss.iter().sum())
}

/// A pod of the test shell image running `sleep`, as every pod of the bench is; `timed`
/// ones carry [`BATCH_LABEL`].
fn sleep_pod(name: &str, timed: bool) -> Pod {
    let labels = if timed {
        serde_json::json!({ BATCH_LABEL: "true" })
    } else {
        serde_json::json!({})
    };
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
            "name": "c", "image": "kite.test/shell:1", "command": ["sleep", "3600"]}]}
    }))
    .expect("a valid pod")
}

/// CPU seconds the whole machine has been busy (all but idle and iowait).
fn machine_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let first = stat.lines().next().unwrap_or_default();
    let v: Vec<f64> = first
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    busy / common::clk_tck()
}

/// Waits (at most 15 s) until the machine is nearly idle: the teardown of the batch before
/// (the kernel frees network namespaces and veths asynchronously, well after their pods or
/// containers are gone) would otherwise land on whichever side runs next.
async fn settle() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let c0 = machine_cpu();
        tokio::time::sleep(Duration::from_millis(500)).await;
        if (machine_cpu() - c0) / 0.5 < 0.1 * cores {
            return;
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::main]
async fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the node benchmark runs pods and needs root");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let batches: Vec<usize> = std::env::var("KITE_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,10,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds: usize = std::env::var("KITE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
        .max(1);
    let largest = batches.iter().copied().max().unwrap_or(0);
    let server = nodes::Server::start(&[]).await;
    let (data, client) = (server.data.clone(), server.client.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kite_pid = server.child.id();
    let cd_pid = containerd_pid(&data);
    let mem = |label: &str| {
        let k = common::rss_kib(kite_pid) as f64 / 1024.0;
        let c = cd_pid
            .map(|p| common::rss_kib(p) as f64 / 1024.0)
            .unwrap_or(0.0);
        let (n, pss) = shims_pss_kib(&data);
        println!(
            "RSS with {label}: kite {k:.1} MiB, containerd {c:.1} MiB; {n} shims, PSS {:.1} MiB in all",
            pss as f64 / 1024.0
        );
        k
    };
    let k0 = mem("0 pods");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let floor = Floor::new(&pods, &data, kite_pid).await;
    // Rounds of kite's batches and the floor's, in turns (kite first in even rounds, the
    // floor first in odd ones): this VM's speed drifts within a run by more than what
    // separates the two, and the order of each pair alternates so a steady drift favours
    // neither. Each round gives one ratio of the largest batch's p50s.
    let mut ratios = Vec::new();
    for round in 0..rounds {
        println!("round {}:", round + 1);
        let (kite, base) = if round % 2 == 0 {
            let k = kite_batches(&pods, &batches, round, kite_pid, cd_pid, &mem, k0).await;
            (k, floor.run(round, &batches).await)
        } else {
            let f = floor.run(round, &batches).await;
            (
                kite_batches(&pods, &batches, round, kite_pid, cd_pid, &mem, k0).await,
                f,
            )
        };
        let r = kite.as_secs_f64() / base.as_secs_f64();
        println!(
            "  round {}: kite's {largest}-pod p50 {} ms, the floor's ({largest} containers, 4 at a time) p50 {} ms: {r:.2}x",
            round + 1,
            kite.as_millis(),
            base.as_millis()
        );
        ratios.push(r);
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    println!(
        "kite / floor, {largest}-pod p50, median of {rounds} rounds: {median:.2}x (rounds: {})",
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(server);
}

/// The label every timed pod carries (the floor's template pod does not).
const BATCH_LABEL: &str = "kite.bench/batch";

/// kite's batches of one round: each batch's pods created at once and timed to Ready,
/// then deleted and gone. Returns the largest batch's p50. The first round also profiles
/// the largest batch (`KITE_BENCH_PERF=DIR`) and reports kite's RSS with it running.
async fn kite_batches(
    pods: &Api<Pod>,
    batches: &[usize],
    round: usize,
    kite_pid: u32,
    cd_pid: Option<u32>,
    mem: &impl Fn(&str) -> f64,
    k0: f64,
) -> Duration {
    let largest = batches.iter().copied().max().unwrap_or(0);
    let mut p50 = Duration::ZERO;
    let mut k_warm = None;
    for &n in batches {
        settle().await;
        // The 0-pod reading taken 3 s after start moves by a third from run to run (what
        // kite has touched by then varies); once the smaller batches have come and gone,
        // kite is warm and holds no pod: the growth is taken from there too.
        if round == 0 && n == largest && batches.iter().any(|&b| b < largest) {
            k_warm = Some(mem("0 pods, after the smaller batches"));
        }
        // Watch first, then create, so no Ready is missed.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
        let w = pods.clone();
        let watch = tokio::spawn(async move {
            let mut s = watcher(w, watcher::Config::default().labels(BATCH_LABEL))
                .applied_objects()
                .boxed();
            while let Ok(Some(p)) = s.try_next().await {
                if ready(&p) {
                    let _ = tx.send((p.metadata.name.clone().unwrap_or_default(), Instant::now()));
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu0 = (
            machine_cpu(),
            common::cpu_secs(kite_pid),
            cd_pid.map(common::cpu_secs).unwrap_or(0.0),
            common::cpu_secs(std::process::id()),
        );
        let perf = (round == 0 && n == largest)
            .then(|| common::perf_record(kite_pid, &format!("pods-{n}")))
            .flatten();
        let t0 = Instant::now();
        let created: HashMap<String, Instant> = futures::stream::iter(0..n)
            .map(|i| {
                let pods = pods.clone();
                async move {
                    let name = format!("r{round}-b{n}-{i}");
                    let pod = sleep_pod(&name, true);
                    let t = Instant::now();
                    pods.create(&PostParams::default(), &pod).await.unwrap();
                    (name, t)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut lat: HashMap<String, Duration> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while lat.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some((name, at))) => {
                    if let Some(t) = created.get(&name) {
                        lat.entry(name).or_insert(at.duration_since(*t));
                    }
                }
                _ => panic!("only {} of {n} pods became Ready in 300 s", lat.len()),
            }
        }
        watch.abort();
        let wall = t0.elapsed().as_secs_f64();
        let (m, k, c, b) = (
            machine_cpu() - cpu0.0,
            common::cpu_secs(kite_pid) - cpu0.1,
            cd_pid.map(common::cpu_secs).unwrap_or(0.0) - cpu0.2,
            common::cpu_secs(std::process::id()) - cpu0.3,
        );
        println!(
            "  CPU while {n} pods started ({wall:.2} s): {m:.2} s in all; kite {k:.2}, \
             containerd {c:.2}, this benchmark {b:.2}, the rest (shims, runc, kernel) {:.2}",
            m - k - c - b
        );
        drop(perf);
        let mut v: Vec<Duration> = lat.into_values().collect();
        v.sort();
        println!(
            "  start latency, {n} pods: min {} ms, p50 {} ms, p99 {} ms, max {} ms",
            v[0].as_millis(),
            pct(&v, 0.5).as_millis(),
            pct(&v, 0.99).as_millis(),
            v.last().unwrap().as_millis()
        );
        if n == largest {
            p50 = pct(&v, 0.5);
            if round == 0 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let k = mem(&format!("{n} pods"));
                println!("  kite RSS growth, 0 to {n} pods: {:.1} MiB", k - k0);
                if let Some(w) = k_warm {
                    println!(
                        "  kite RSS growth, 0 (after the smaller batches) to {n} pods: {:.1} MiB",
                        k - w
                    );
                }
            }
        }
        let batch = ListParams::default().labels(BATCH_LABEL);
        pods.delete_collection(&DeleteParams::default(), &batch)
            .await
            .unwrap();
        let gone_by = Instant::now() + Duration::from_secs(120);
        while !pods.list(&batch).await.unwrap().items.is_empty() {
            assert!(Instant::now() < gone_by, "pods did not go");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    p50
}

/// The runtime floor (see the module's doc): containerd and runc alone, with the spec kite
/// gave a real pod (the template, which runs for the whole bench: its spec mounts files of
/// its pod directory).
struct Floor {
    cd: kite_kubelet::containerd::Containerd,
    base: serde_json::Value,
    image: kite_kubelet::images::Resolved,
    logs: PathBuf,
    kite_pid: u32,
    cd_pid: Option<u32>,
}

impl Floor {
    async fn new(pods: &Api<Pod>, data: &Path, kite_pid: u32) -> Floor {
        use kite_kubelet::containerd::{Containerd, Paths};
        use kite_kubelet::containers;
        let tmpl = sleep_pod("floor-template", false);
        pods.create(&PostParams::default(), &tmpl).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pods.get("floor-template").await.is_ok_and(|p| ready(&p)) {
            assert!(
                Instant::now() < deadline,
                "the template pod never became Ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cd = Containerd::connect(&Paths::new(data).socket, Duration::from_secs(5))
            .await
            .unwrap();
        let uid = pods
            .get("floor-template")
            .await
            .unwrap()
            .metadata
            .uid
            .unwrap();
        let id = containers::list(&cd, &uid).await.unwrap()[0].id.clone();
        let record = cd
            .containers()
            .get(cd.req(containerd_client::services::v1::GetContainerRequest { id }))
            .await
            .unwrap()
            .into_inner()
            .container
            .unwrap();
        let base: serde_json::Value = serde_json::from_slice(&record.spec.unwrap().value).unwrap();
        let image = kite_kubelet::images::Cache::default()
            .resolve(&cd, &record.image)
            .await
            .unwrap()
            .expect("the template's image");
        let logs = data.join("floor-logs");
        std::fs::create_dir_all(&logs).unwrap();
        Floor {
            cd,
            base,
            image,
            logs,
            kite_pid,
            cd_pid: containerd_pid(data),
        }
    }

    /// One round: every batch all at once, as the pods are; the largest also a few at a
    /// time, in order, which gives the lowest p50 a runtime of this cost per start could
    /// give. Returns that p50.
    async fn run(&self, round: usize, batches: &[usize]) -> Duration {
        use kite_kubelet::containers;
        let largest = batches.iter().copied().max().unwrap_or(0);
        let runs = batches.iter().map(|&n| (n, n)).chain([(largest, 4)]);
        let mut p50 = Duration::ZERO;
        for (run, (n, parallel)) in runs.enumerate() {
            settle().await;
            let tag = format!("{round}x{run}");
            let specs: Vec<(String, Vec<u8>)> = (0..n)
                .map(|i| {
                    let id = format!("floor-{tag}-{i}");
                    let mut s = self.base.clone();
                    s["annotations"]["io.containerd.runc.v2.group"] =
                        kite_kubelet::spec::shim_group(&id).into();
                    s["linux"]["cgroupsPath"] =
                        format!("/kite/kubepods/besteffort/podfloor{tag}_{i}/{id}").into();
                    for ns in s["linux"]["namespaces"].as_array_mut().unwrap() {
                        ns.as_object_mut().unwrap().remove("path");
                    }
                    (id, serde_json::to_vec(&s).unwrap())
                })
                .collect();
            let cpu0 = (
                machine_cpu(),
                common::cpu_secs(self.kite_pid),
                self.cd_pid.map(common::cpu_secs).unwrap_or(0.0),
            );
            let t0 = Instant::now();
            let mut lat: Vec<Duration> = futures::stream::iter(specs.iter().map(|(id, spec)| {
                // The shim writes the output to a file itself (`file://`): the floor has
                // no log copier, as kite's FIFOs would need.
                let log = PathBuf::from(format!(
                    "file://{}",
                    self.logs.join(format!("{id}.log")).display()
                ));
                let (cd, image) = (self.cd.clone(), &self.image);
                async move {
                    containers::create_and_start(
                        &cd,
                        containers::New {
                            id,
                            image,
                            spec: spec.clone(),
                            labels: HashMap::new(),
                            stdout: &log,
                            stderr: &log,
                            stdin: None,
                            terminal: false,
                        },
                    )
                    .await
                    .unwrap();
                    t0.elapsed()
                }
            }))
            .buffered(parallel)
            .collect()
            .await;
            let wall = t0.elapsed().as_secs_f64();
            let (m, k, c) = (
                machine_cpu() - cpu0.0,
                common::cpu_secs(self.kite_pid) - cpu0.1,
                self.cd_pid.map(common::cpu_secs).unwrap_or(0.0) - cpu0.2,
            );
            lat.sort();
            println!(
                "  runtime floor, {n} containers, {parallel} at a time: min {} ms, p50 {} ms, p99 {} ms, max {} ms; CPU ({wall:.2} s): \
                 {m:.2} s in all; containerd {c:.2}, kite (idle) {k:.2}, the rest {:.2}",
                lat[0].as_millis(),
                pct(&lat, 0.5).as_millis(),
                pct(&lat, 0.99).as_millis(),
                lat.last().unwrap().as_millis(),
                m - k - c
            );
            if n == largest && parallel == 4 {
                p50 = pct(&lat, 0.5);
            }
            futures::future::join_all(specs.iter().map(|(id, _)| {
                let cd = self.cd.clone();
                async move {
                    let _ = containers::stop(&cd, id, 9, Duration::ZERO).await;
                    let _ = containers::remove(&cd, id).await;
                }
            }))
            .await;
            for i in 0..n {
                kite_kubelet::cgroups::remove_pod(&format!("floor{tag}_{i}"));
            }
        }
        p50
    }
}
