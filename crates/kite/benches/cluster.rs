//! Control-plane benchmarks on simulated nodes (issue 3), against the real `kite` binary:
//! `kite server` in a temporary data dir plus `kite sim`, driven with kube-rs.
//!
//! `cargo bench -p kite --bench cluster` runs everything; `-- schedule|scale` picks one.
//! - schedule: N simulated nodes and P pending pods (created by 64 concurrent clients
//!   while no scheduler runs); then `kite scheduler` starts, and the scheduling rate is
//!   P over the time until the last binding. Also the server's RSS at the end. KITE_BENCH_NODES (default
//!   "1000,5000") and KITE_BENCH_PODS (default 10000) set the sizes.
//! - scale: 100 simulated nodes, a Deployment scaled from 1 to 1,000 replicas; reports the
//!   time until 1,000 are Ready.
//!
//! Figures and the command are recorded in docs/benchmarks.md.

mod common;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_mib(pid: u32) -> f64 {
    common::rss_kib(pid) as f64 / 1024.0
}

struct Cluster {
    server: Proc,
    _sim: Proc,
    client: kube::Client,
    kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn cluster(nodes: usize, scheduler: bool) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let kc = dir.path().join("kc.yaml");
    // Leases are renewed every 60 s in the benchmark; the grace period is set to match.
    // The default cluster CIDR (a /16, as K3s) holds 256 node ranges of /24; a cluster of
    // thousands of nodes needs a wider one, as it would upstream (here 16,384 ranges).
    let server = Proc(
        common::kite_server(&dir.path().join("data"), port, &kc)
            .args(["--disable-agent", "--node-monitor-grace-period", "5m"])
            .args(["--cluster-cidr", "10.64.0.0/10"])
            .args(if scheduler {
                &[][..]
            } else {
                &["--disable-scheduler"][..]
            })
            .spawn()
            .expect("kite server starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !kc.exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "kite did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let client = kite_runtime::client::from_kubeconfig(&kc).await.unwrap();
    let sim = Proc(
        Command::new(env!("CARGO_BIN_EXE_kite"))
            .args([
                "sim",
                "--nodes",
                &nodes.to_string(),
                "--cpu",
                "64",
                "--memory",
                "256Gi",
            ])
            .args(["--pods", "250", "--heartbeat-interval", "60s"])
            .arg("--kubeconfig")
            .arg(&kc)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kite sim starts"),
    );
    let t = Instant::now();
    let api: Api<Node> = Api::all(client.clone());
    loop {
        let n = api
            .list_metadata(&Default::default())
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        if n >= nodes {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "nodes did not register"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "  {nodes} simulated nodes registered in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Cluster {
        server,
        _sim: sim,
        client,
        kubeconfig: kc,
        _dir: dir,
    }
}

fn pod(i: usize) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("p{i}"), "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    }))
    .unwrap()
}

/// Pods are created while no scheduler runs; then `kite scheduler` starts and the time
/// until every pod is bound gives the scheduling rate.
async fn schedule(nodes: usize, pods: usize) {
    println!("schedule: {nodes} nodes, {pods} pending pods");
    let c = cluster(nodes, false).await;
    let api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let t0 = Instant::now();
    futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &pod(i)).await }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await
        .expect("pods are created");
    let created = t0.elapsed();
    println!(
        "  created {pods} pods in {:.1} s ({:.0}/s)",
        created.as_secs_f64(),
        pods as f64 / created.as_secs_f64()
    );
    // Count bindings through a watch.
    let watch_api = api.clone();
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let counter = tokio::spawn(async move {
        let mut bound = HashSet::new();
        let mut synced = Some(synced_tx);
        let stream = watcher(watch_api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = synced.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))
                    if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() =>
                {
                    bound.insert(p.metadata.name.clone().unwrap_or_default());
                    if bound.len() >= pods {
                        return Instant::now();
                    }
                }
                _ => {}
            }
        }
        Instant::now()
    });
    let _ = synced_rx.await;
    let t1 = Instant::now();
    let server_cpu0 = common::cpu_secs(c.server.0.id());
    let scheduler = Proc(
        Command::new(env!("CARGO_BIN_EXE_kite"))
            .arg("scheduler")
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kite scheduler starts"),
    );
    let done = tokio::time::timeout(Duration::from_secs(900), counter)
        .await
        .expect("every pod is bound in time")
        .unwrap();
    let total = done - t1;
    // Where the scheduling time went: the scheduler's own work, and the server's (watches
    // it serves, bindings it stores), per pod.
    let per_pod = |secs: f64| secs * 1e6 / pods as f64;
    let scheduler_cpu = per_pod(common::cpu_secs(scheduler.0.id()));
    let server_cpu = per_pod(common::cpu_secs(c.server.0.id()) - server_cpu0);
    println!(
        "  all {pods} bound {:.1} s after the scheduler started: {:.0} pods/s scheduled",
        total.as_secs_f64(),
        pods as f64 / total.as_secs_f64()
    );
    println!("  CPU per pod: scheduler {scheduler_cpu:.0} µs, server {server_cpu:.0} µs");
    println!(
        "  server RSS with {nodes} nodes and {pods} pods: {:.0} MiB",
        rss_mib(c.server.0.id())
    );
}

async fn scale() {
    println!("scale: 100 nodes, a Deployment from 1 to 1000 replicas");
    let c = cluster(100, true).await;
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "nginx:alpine"}]}}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
    let ready = |n: i32| {
        let api = api.clone();
        async move {
            let t = Instant::now();
            loop {
                let d = api.get("web").await.unwrap();
                if d.status.and_then(|s| s.ready_replicas).unwrap_or(0) >= n {
                    return;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(300),
                    "replicas did not become ready"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    ready(1).await;
    let t0 = Instant::now();
    api.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 1000}})),
    )
    .await
    .unwrap();
    ready(1000).await;
    println!(
        "  1000 replicas Ready {:.2} s after the scale",
        t0.elapsed().as_secs_f64()
    );
    println!("  server RSS: {:.0} MiB", rss_mib(c.server.0.id()));
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |p: &str| which.is_empty() || which.iter().any(|w| w == p);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pods: usize = std::env::var("KITE_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let nodes: Vec<usize> = std::env::var("KITE_BENCH_NODES")
        .unwrap_or_else(|_| "1000,5000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    rt.block_on(async {
        if want("schedule") {
            for n in &nodes {
                schedule(*n, pods).await;
            }
        }
        if want("scale") {
            scale().await;
        }
    });
}
