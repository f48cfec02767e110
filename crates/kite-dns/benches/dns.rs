//! Cluster DNS throughput and latency with `dnsperf` (Debian package) on loopback.
//!
//! `cargo bench -p kite-dns --bench dns`
//!
//! kite-dns's server (the same `server::serve` a node runs, with a view of 1,000
//! ClusterIP Services and 100 headless ones of 10 endpoints) is asked:
//! - cluster names (`svc-N.bench.svc.cluster.local`, A);
//! - forwarded names (`host-N.example.test`, from a resolver the bench serves itself,
//!   so after the first query of each they come from the cache, as in a cluster).
//!
//! For each: the highest rate dnsperf reaches (4 clients, 200 queries in flight, 5 s),
//! then the latency at a fixed 50,000 queries/s (dnsperf -v: each answer's time; p50 and
//! p99). The floor: the same UDP threads answering every query with its own header
//! flipped (no parsing, no lookup), the most any server could do on these threads.
//! Target (issue 17): ≥ 50,000 QPS with p99 < 5 ms.

use kite_dns::forward::Forwarder;
use kite_dns::server::{serve, Shared};
use kite_dns::view::{Endpoint, Kind, Port, Svc, View};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::{Arc, RwLock};

fn view() -> View {
    let mut v = View::empty("cluster.local", "10.43.0.10".parse().unwrap(), 5);
    v.namespaces.insert("bench".into());
    let http = Port {
        name: "http".into(),
        proto: "tcp".into(),
        port: 80,
    };
    for i in 0..1000u32 {
        let ip = IpAddr::from([10, 43, (i / 250 + 1) as u8, (i % 250 + 1) as u8]);
        v.services.insert(
            ("bench".into(), format!("svc-{i}")),
            Svc {
                kind: Kind::ClusterIp(vec![ip]),
                ports: vec![http.clone()],
                endpoints: vec![],
            },
        );
    }
    for i in 0..100u32 {
        let endpoints = (0..10u32)
            .map(|j| {
                let ip = IpAddr::from([10, 42, i as u8, (j + 2) as u8]);
                Endpoint {
                    ip,
                    label: kite_dns::view::dashed(&ip),
                    ports: vec![http.clone()],
                }
            })
            .collect();
        v.services.insert(
            ("bench".into(), format!("headless-{i}")),
            Svc {
                kind: Kind::Headless,
                ports: vec![http.clone()],
                endpoints,
            },
        );
    }
    v
}

/// A resolver for `*.example.test`: A 192.0.2.7, TTL 300.
fn upstream() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let mut out = buf[..n].to_vec();
            out[2] |= 0x80; // QR
            out[3] = 0x80; // RA, NOERROR
            out[6..8].copy_from_slice(&1u16.to_be_bytes()); // one answer
            out[8..12].fill(0);
            let qend = 12 + out[12..].iter().position(|b| *b == 0).unwrap() + 5;
            out.truncate(qend);
            out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 192, 0, 2, 7]);
            let _ = sock.send_to(&out, peer);
        }
    });
    addr
}

/// The floor: answers every query with its header flipped, on as many threads.
fn floor() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    for _ in 0..threads {
        let sock = sock.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                buf[2] |= 0x80;
                let _ = sock.send_to(&buf[..n], peer);
            }
        });
    }
    addr
}

struct Run {
    qps: f64,
    lost: u64,
}

fn dnsperf(addr: SocketAddr, file: &std::path::Path, extra: &[&str]) -> (Run, String) {
    let out = Command::new("dnsperf")
        .args(["-s", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .arg("-d")
        .arg(file)
        .args(["-l", "5", "-c", "4"])
        .args(extra)
        .output()
        .expect("dnsperf is missing: apt-get install dnsperf");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |key: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        Run {
            qps: field("Queries per second"),
            lost: field("Queries lost") as u64,
        },
        text,
    )
}

/// p50 and p99 (ms) of the per-answer latencies dnsperf -v prints (`> NOERROR … 0.000123`).
fn percentiles(text: &str) -> (f64, f64, usize) {
    let mut l: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with('>'))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    l.sort_by(f64::total_cmp);
    if l.is_empty() {
        return (0.0, 0.0, 0);
    }
    let at = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)] * 1000.0;
    (at(0.50), at(0.99), l.len())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let shared = Arc::new(Shared {
        view: RwLock::new(Arc::new(view())),
        forwarder: Forwarder::with_upstreams(vec![upstream()]),
    });
    let kite = serve("127.0.0.1:0".parse().unwrap(), shared, rt.handle().clone()).unwrap();
    let floor = floor();
    let dir = std::env::temp_dir().join(format!("kite-dns-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = dir.join("cluster.txt");
    let forwarded = dir.join("forwarded.txt");
    std::fs::write(
        &cluster,
        (0..1000)
            .map(|i| format!("svc-{i}.bench.svc.cluster.local A\n"))
            .collect::<String>(),
    )
    .unwrap();
    std::fs::write(
        &forwarded,
        (0..100)
            .map(|i| format!("host-{i}.example.test A\n"))
            .collect::<String>(),
    )
    .unwrap();
    // Warm the cache with the forwarded names.
    let _ = dnsperf(kite, &forwarded, &["-n", "1"]);
    println!(
        "dns bench on 127.0.0.1 ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let (f, _) = dnsperf(floor, &cluster, &["-q", "200"]);
    println!("floor (header flip):   {:>9.0} QPS", f.qps);
    for (what, file) in [("cluster names", &cluster), ("forwarded names", &forwarded)] {
        let (r, _) = dnsperf(kite, file, &["-q", "200"]);
        let (at, text) = dnsperf(kite, file, &["-Q", "50000", "-v"]);
        let (p50, p99, n) = percentiles(&text);
        println!(
            "{what:<16} max {:>9.0} QPS ({:.2} of floor, {} lost); at 50k/s: {:.0} QPS, p50 {p50:.3} ms, p99 {p99:.3} ms ({n} answers, {} lost)",
            r.qps,
            r.qps / f.qps.max(1.0),
            r.lost,
            at.qps,
            at.lost
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
