//! Rule programming at scale: `cargo bench -p kite-proxy --bench rules` (as root, with
//! nft; it programs the real table `ip kite-proxy`, so not on a host where a kite node
//! runs, and removes it at the end).
//!
//! For 1,000 and 10,000 Services of 10 endpoints each (Service and EndpointSlice
//! objects, as the informers hold them), it times what the proxy's sync loop does after
//! an EndpointSlice changes — finding the changed Service by resourceVersions, its ports
//! and rules, the transaction, and `nft -f` applying it — from the change to
//! the kernel having the new rules (traffic flows from there: nft returns once the
//! transaction is committed). The watch's delivery of the change to the informer is not
//! in it. 100 changes, each to a random slice (one endpoint replaced). Also: the first,
//! whole programming, and the process's RSS at that size (objects, model and ruleset).
//!
//! Target (issue 17): p99 < 200 ms at 10,000 Services.
//!
//! Also the data path at that size, the figure kube-proxy publishes for its nftables
//! mode (first-packet latency by cluster size): 2,000 TCP connects through a probe
//! Service's ClusterIP to a listener of the bench's, p50/p99, beside the same connects to
//! the listener directly, with no other Service and at each size.
//!
//! The bench runs in a network namespace of its own (it unshares one at start), so the
//! host's tables, routes and any kite node on the host are untouched.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kite_proxy::{nft, rules, state};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The probe Service: a ClusterIP outside the bench's ranges, one endpoint, the
/// listener on the bench namespace's bridge.
const PROBE_VIP: &str = "10.43.255.1";
const PROBE_EP: &str = "10.44.0.1";

fn probe_service() -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "bench", "name": "probe", "resourceVersion": "1"},
        "spec": {"clusterIP": PROBE_VIP, "clusterIPs": [PROBE_VIP],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    }))
    .unwrap()
}

fn probe_slice() -> EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "bench", "name": "probe-abcde", "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": "probe"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [PROBE_EP],
                       "conditions": {"ready": true, "serving": true, "terminating": false},
                       "nodeName": "bench"}]
    }))
    .unwrap()
}

/// Enters a new network namespace with `lo` up and a bridge `kite-bench0` holding
/// the probe's endpoint address and a route to the Service CIDR (so connects to a
/// ClusterIP reach the output hook). The runtime is current-thread: `nft` and `ip` are
/// forked from this thread and so run in the namespace too.
fn enter_namespace() -> bool {
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
        return false;
    }
    let ip = |args: &str| {
        std::process::Command::new("ip")
            .args(args.split_whitespace())
            .status()
            .is_ok_and(|s| s.success())
    };
    ip("link set lo up")
        && ip("link add kite-bench0 type bridge")
        && ip("link set kite-bench0 up")
        && ip(&format!("addr add {PROBE_EP}/32 dev kite-bench0"))
        && ip("route add 10.43.0.0/16 dev kite-bench0")
}

/// 2,000 connects to `addr` (each closed at once), p50 and p99 in microseconds.
fn connects(addr: SocketAddr) -> (f64, f64) {
    let mut v: Vec<Duration> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            let c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
            let d = t.elapsed();
            drop(c);
            d
        })
        .collect();
    v.sort();
    let us = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e6;
    (us(0.5), us(0.99))
}

fn latency_line(label: &str) {
    let direct = connects(format!("{PROBE_EP}:8080").parse().unwrap());
    let vip = connects(format!("{PROBE_VIP}:80").parse().unwrap());
    println!(
        "{label}: connect through the ClusterIP p50 {:.0} us, p99 {:.0} us; to the endpoint directly p50 {:.0} us, p99 {:.0} us",
        vip.0, vip.1, direct.0, direct.1
    );
}

fn service(i: usize) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "bench", "name": format!("svc-{i}"), "resourceVersion": "1"},
        "spec": {"clusterIP": format!("10.43.{}.{}", 1 + i / 250, 1 + i % 250),
                 "clusterIPs": [format!("10.43.{}.{}", 1 + i / 250, 1 + i % 250)],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    }))
    .unwrap()
}

fn slice(i: usize, gen: usize) -> EndpointSlice {
    let eps: Vec<serde_json::Value> = (0..10)
        .map(|j| {
            let n = (i * 10 + j + gen) % 60000;
            serde_json::json!({"addresses": [format!("10.42.{}.{}", n / 250, 2 + n % 250)],
                               "conditions": {"ready": true, "serving": true, "terminating": false},
                               "nodeName": "bench"})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "bench", "name": format!("svc-{i}-abcde"),
                     "resourceVersion": format!("{}", gen + 1),
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    }))
    .unwrap()
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn pct(v: &[Duration], p: f64) -> f64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the rules benchmark programs nftables and needs root");
        return;
    }
    let settings = rules::Settings {
        cluster_cidr: "10.42.0.0/16".parse().unwrap(),
        service_cidr: "10.43.0.0/16".parse().unwrap(),
    };
    if !enter_namespace() {
        eprintln!("cannot make the bench's network namespace (needs root and iproute2)");
        return;
    }
    let listener = TcpListener::bind(format!("{PROBE_EP}:8080")).unwrap();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    // The probe Service alone: the first-packet latency with nothing else programmed.
    {
        let mut programmed = state::Programmed::default();
        let (svc, sl) = (probe_service(), probe_slice());
        let p = programmed.plan(&[&svc], &[&sl], "bench", &settings);
        for script in &p.scripts {
            nft::apply(script).await.expect("nft refused the probe");
        }
        programmed.commit(p);
        latency_line("the probe Service alone");
        let _ = nft::remove_table().await;
    }
    let sizes: Vec<usize> = std::env::var("KITE_BENCH_SERVICES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 10000]);
    let rss0 = rss_mib();
    for n in sizes {
        let _ = nft::remove_table().await;
        let mut svcs: Vec<Service> = (0..n).map(service).collect();
        let mut slices: Vec<EndpointSlice> = (0..n).map(|i| slice(i, 0)).collect();
        svcs.push(probe_service());
        slices.push(probe_slice());
        let mut programmed = state::Programmed::default();
        let plan = |programmed: &state::Programmed, slices: &[EndpointSlice]| {
            programmed.plan(
                &svcs.iter().collect::<Vec<_>>(),
                &slices.iter().collect::<Vec<_>>(),
                "bench",
                &settings,
            )
        };
        let t = Instant::now();
        let first_plan = plan(&programmed, &slices);
        let computed = t.elapsed();
        let dump = std::env::var_os("KITE_BENCH_DUMP").map(std::path::PathBuf::from);
        if let Some(d) = &dump {
            let _ = std::fs::write(d.join(format!("full-{n}.nft")), first_plan.scripts.concat());
        }
        for script in &first_plan.scripts {
            nft::apply(script)
                .await
                .expect("nft refused the whole table");
        }
        programmed.commit(first_plan);
        let first = t.elapsed();
        let rss = rss_mib();
        let mut times = Vec::new();
        let mut compute = Vec::new();
        let mut seed = 12345u64;
        for gen in 1..=100 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (seed >> 33) as usize % n;
            let t = Instant::now();
            slices[i] = slice(i, gen * 7);
            let p = plan(&programmed, &slices);
            compute.push(t.elapsed());
            if let (Some(d), 1) = (&dump, gen) {
                let _ = std::fs::write(d.join(format!("change-{n}.nft")), p.scripts.concat());
            }
            for script in &p.scripts {
                nft::apply(script).await.expect("nft refused a change");
            }
            programmed.commit(p);
            times.push(t.elapsed());
        }
        times.sort();
        compute.sort();
        latency_line(&format!("with {n} Services"));
        println!(
            "{n} Services x 10 endpoints: first programming {:.0} ms (of it computing {:.0} ms); \
             a slice change to rules in the kernel: p50 {:.1} ms, p99 {:.1} ms (computing p50 {:.1} ms, p99 {:.1} ms); \
             RSS {:.0} MiB (+{:.0} MiB over the empty process)",
            first.as_secs_f64() * 1000.0,
            computed.as_secs_f64() * 1000.0,
            pct(&times, 0.5),
            pct(&times, 0.99),
            pct(&compute, 0.5),
            pct(&compute, 0.99),
            rss,
            rss - rss0
        );
    }
    let _ = nft::remove_table().await;
}
