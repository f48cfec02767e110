//! API server benchmarks against the real `kite` binary (built by cargo in release), started in
//! a temporary data dir and driven over HTTPS/2 with the admin client certificate.
//!
//! `cargo bench -p kite --bench api` runs everything; `-- creates|list|watch|watchlist|rss`
//! picks one.
//! Sizes can be scaled down with KITE_BENCH_SCALE=0.1 for a quick look.
//! Figures and the command are recorded in docs/benchmarks.md.

mod common;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    port: u16,
    dir: Option<tempfile::TempDir>,
    tls: Arc<rustls::ClientConfig>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pem_from_kubeconfig(text: &str, key: &str) -> Vec<u8> {
    use base64::Engine;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(key))
        .expect(key);
    let b64 = line.split(':').nth(1).unwrap().trim();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn start() -> Server {
    start_in(tempfile::tempdir().unwrap()).0
}

/// Starts kite in `dir`; also returns the time from spawn to a TLS-answered `/readyz`.
fn start_in(dir: tempfile::TempDir) -> (Server, Duration) {
    let t0 = Instant::now();
    let port = common::free_port();
    let kc = dir.path().join("kc.yaml");
    let extra = std::env::var("KITE_BENCH_SERVER_ARGS").unwrap_or_default();
    let child = common::kite_server(&dir.path().join("data"), port, &kc)
        .arg("--disable-agent")
        .args(extra.split_whitespace())
        .spawn()
        .expect("kite starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !kc.exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "kite did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
    let text = std::fs::read_to_string(&kc).unwrap();
    use rustls::pki_types::pem::PemObject;
    let ca = pem_from_kubeconfig(&text, "certificate-authority-data");
    let cert = pem_from_kubeconfig(&text, "client-certificate-data");
    let key = pem_from_kubeconfig(&text, "client-key-data");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&cert)
        .map(|c| c.unwrap())
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key).unwrap();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let srv = Server {
        child,
        port,
        dir: Some(dir),
        tls: Arc::new(tls),
    };
    // Ready means a TLS handshake and an authenticated answer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        loop {
            let mut c = srv.conn().await;
            if request(&mut c, "GET", "/api/v1/namespaces", None).await.0 == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "kite did not serve");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    (srv, t0.elapsed())
}

impl Server {
    /// Kills kite (SIGKILL, as a crash) and keeps its data dir.
    fn crash_keep_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take().expect("the data dir is kept until drop")
    }

    async fn conn(&self) -> SendRequest<Full<Bytes>> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .max_concurrent_streams(2000)
            .handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    }

    fn rss_kib(&self) -> u64 {
        common::rss_kib(self.child.id())
    }

    fn cpu_secs(&self) -> f64 {
        common::cpu_secs(self.child.id())
    }
}

async fn request(
    send: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> (u16, Bytes) {
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

fn pod(name: &str, i: usize) -> Vec<u8> {
    let tier = if i.is_multiple_of(100) {
        "selected"
    } else {
        "other"
    };
    format!(r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","labels":{{"app":"bench","tier":"{tier}"}}}},"spec":{{"containers":[{{"name":"c","image":"busybox:1.36","command":["sleep","3600"],"resources":{{"requests":{{"cpu":"10m","memory":"16Mi"}}}}}}]}}}}"#).into_bytes()
}

fn scale() -> f64 {
    std::env::var("KITE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn create_pods(srv: &Server, ns: &str, total: usize, clients: usize) -> f64 {
    let conns = std::env::var("KITE_BENCH_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(clients.div_ceil(16).max(1));
    let mut sends = Vec::new();
    for _ in 0..conns {
        sends.push(srv.conn().await);
    }
    let (_, _) = request(
        &mut sends[0],
        "POST",
        "/api/v1/namespaces",
        Some(format!(r#"{{"metadata":{{"name":"{ns}"}}}}"#).into_bytes()),
    )
    .await;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut send = sends[c % conns].clone();
        let next = next.clone();
        let ns = ns.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let (code, body) = request(
                    &mut send,
                    "POST",
                    &format!("/api/v1/namespaces/{ns}/pods"),
                    Some(pod(&format!("p{i}"), i)),
                )
                .await;
                assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

async fn bench_creates(srv: &Server) {
    let n = (5000.0 * scale()) as usize;
    let counts: Vec<usize> = std::env::var("KITE_BENCH_CLIENTS")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 64]);
    for clients in counts {
        let total = if clients == 1 { n / 5 } else { n };
        let cpu0 = srv.cpu_secs();
        let rate = create_pods(srv, &format!("creates-{clients}"), total, clients).await;
        // CPU per create varies far less than the rate on a shared 2-core machine, where the
        // bench's own clients compete with the server: compare changes with it.
        let us = (srv.cpu_secs() - cpu0) * 1e6 / total as f64;
        println!(
            "creates: {clients:>2} clients, {total} durable pod creates: {rate:.0}/s, server CPU {us:.0} µs/create"
        );
    }
}

async fn bench_list(srv: &Server) {
    let n = (10000.0 * scale()) as usize;
    create_pods(srv, "list", n, 64).await;
    let mut send = srv.conn().await;
    for (what, path) in [
        ("all", "/api/v1/namespaces/list/pods".to_string()),
        (
            "labelSelector tier=selected (1%)",
            "/api/v1/namespaces/list/pods?labelSelector=tier%3Dselected".to_string(),
        ),
    ] {
        let mut times = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let (code, body) = request(&mut send, "GET", &path, None).await;
            assert_eq!(code, 200);
            std::hint::black_box(body);
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "list {n} pods, {what}: p50 {:.1} ms, max {:.1} ms",
            pct(&times, 0.5),
            times[times.len() - 1]
        );
    }
    println!("rss after {n} pods: {} MiB", srv.rss_kib() / 1024);
}

async fn bench_watch(srv: &Server) {
    let watchers = (1000.0 * scale()).max(10.0) as usize;
    let events = 50;
    let mut send = srv.conn().await;
    request(
        &mut send,
        "POST",
        "/api/v1/namespaces",
        Some(br#"{"metadata":{"name":"watch"}}"#.to_vec()),
    )
    .await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let conns: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..watchers.div_ceil(200) {
            v.push(srv.conn().await);
        }
        v
    };
    let ready = Arc::new(tokio::sync::Barrier::new(watchers + 1));
    for w in 0..watchers {
        let mut send = conns[w % conns.len()].clone();
        let tx = tx.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let req = hyper::Request::builder()
                .uri("https://localhost/api/v1/namespaces/watch/configmaps?watch=1&resourceVersion=0")
                .body(Full::new(Bytes::new()))
                .unwrap();
            send.ready().await.unwrap();
            let resp = send.send_request(req).await.unwrap();
            ready.wait().await;
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return };
                if let Some(d) = frame.data_ref() {
                    buf.extend_from_slice(d);
                    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let text = String::from_utf8_lossy(&line);
                        if let Some(i) = text
                            .split("\"name\":\"e")
                            .nth(1)
                            .and_then(|r| r.split('"').next())
                            .and_then(|n| n.parse::<usize>().ok())
                        {
                            let _ = tx.send((i, Instant::now()));
                        }
                    }
                }
            }
        });
    }
    ready.wait().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sent = Vec::new();
    for i in 0..events {
        sent.push(Instant::now());
        let (code, _) = request(
            &mut send,
            "POST",
            "/api/v1/namespaces/watch/configmaps",
            Some(format!(r#"{{"metadata":{{"name":"e{i}"}}}}"#).into_bytes()),
        )
        .await;
        assert_eq!(code, 201);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lags = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lags.len() < watchers * events && Instant::now() < deadline {
        if let Ok(Some((i, at))) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            lags.push(at.duration_since(sent[i]).as_secs_f64() * 1000.0);
        }
    }
    lags.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "watch fan-out: {watchers} watchers x {events} events, delivered {} of {}: p50 {:.1} ms, p99 {:.1} ms (lag measured from the create request; includes its durable write)",
        lags.len(), watchers * events, pct(&lags, 0.5), pct(&lags, 0.99)
    );
}

/// Samples the server's RSS every 2 ms until dropped; `peak_kib` is the highest seen.
struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(common::rss_kib(pid));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak.max(common::rss_kib(pid))
        });
        RssSampler {
            stop,
            handle: Some(handle),
        }
    }

    fn peak_kib(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// A plain list of the namespace's pods, as a pre-1.35 informer starts; its time to the last
/// byte.
async fn list_once(send: &mut SendRequest<Full<Bytes>>, ns: &str) -> f64 {
    let t = Instant::now();
    let (code, body) = request(send, "GET", &format!("/api/v1/namespaces/{ns}/pods"), None).await;
    assert_eq!(code, 200);
    std::hint::black_box(body);
    t.elapsed().as_secs_f64() * 1000.0
}

/// A watch-list of the namespace's pods, read to the bookmark that ends its initial events;
/// the time to it. Checks that all `n` pods came first.
async fn watchlist_once(send: &mut SendRequest<Full<Bytes>>, ns: &str, n: usize) -> f64 {
    let t = Instant::now();
    let req = hyper::Request::builder()
        .uri(format!("https://localhost/api/v1/namespaces/{ns}/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=60"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    let (mut lines, mut tail) = (0usize, Vec::new());
    while let Some(frame) = body.frame().await {
        let Ok(d) = frame.unwrap().into_data() else {
            continue;
        };
        // One event a line: the pods' ADDED lines, then the bookmark's.
        lines += d.iter().filter(|b| **b == b'\n').count();
        // The bookmark may straddle two frames: keep a short tail of the last one.
        tail.extend_from_slice(&d);
        if tail.windows(25).any(|w| w == b"k8s.io/initial-events-end") {
            break;
        }
        let keep = tail.len().saturating_sub(64);
        tail.drain(..keep);
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(lines, n + 1, "every pod arrives before the bookmark");
    ms
}

/// Watch-list against a plain list of the same pods. Times: alternating on one server, p50
/// of 5 each. Memory: each on a fresh server holding the same pods (an allocator keeps
/// what a first request freed, so a second one on the same server would look free), the
/// server's RSS peak during the request above its level just before.
fn bench_watchlist(rt: &tokio::runtime::Runtime) {
    let n = (10000.0 * scale()) as usize;
    let srv = start();
    let (mut list_ms, mut wl_ms) = rt.block_on(async {
        create_pods(&srv, "wl", n, 64).await;
        let mut send = srv.conn().await;
        let (mut list_ms, mut wl_ms) = (vec![], vec![]);
        for _ in 0..5 {
            list_ms.push(list_once(&mut send, "wl").await);
            wl_ms.push(watchlist_once(&mut send, "wl", n).await);
        }
        (list_ms, wl_ms)
    });
    drop(srv);
    list_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    wl_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "watch-list of {n} pods: to the bookmark p50 {:.1} ms (max {:.1}); plain list p50 {:.1} ms (max {:.1}); ratio {:.2}",
        pct(&wl_ms, 0.5), wl_ms[wl_ms.len() - 1], pct(&list_ms, 0.5), list_ms[list_ms.len() - 1],
        pct(&wl_ms, 0.5) / pct(&list_ms, 0.5)
    );
    let mut peaks = Vec::new();
    for watch_list in [false, true] {
        let srv = start();
        let peak = rt.block_on(async {
            create_pods(&srv, "wl", n, 64).await;
            let mut send = srv.conn().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let base = srv.rss_kib();
            let sampler = RssSampler::start(srv.child.id());
            if watch_list {
                watchlist_once(&mut send, "wl", n).await;
            } else {
                list_once(&mut send, "wl").await;
            }
            sampler.peak_kib().saturating_sub(base)
        });
        peaks.push(peak);
    }
    println!(
        "server RSS peak above its level before the request (fresh server each): watch-list {} MiB, list {} MiB",
        peaks[1] / 1024,
        peaks[0] / 1024
    );
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |w: &str| which.is_empty() || which.iter().any(|x| x == w);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if want("rss") || want("startup") {
        let (srv, fresh) = start_in(tempfile::tempdir().unwrap());
        std::thread::sleep(Duration::from_secs(2));
        println!(
            "rss idle (fresh data dir, 2 s after start): {} MiB",
            srv.rss_kib() / 1024
        );
        rt.block_on(create_pods(&srv, "startup", 2000, 16));
        let (_srv, existing) = start_in(srv.crash_keep_dir());
        println!(
            "start-up to a served authenticated request: fresh data dir {} ms, existing data dir (2,000 pods, after kill -9) {} ms",
            fresh.as_millis(),
            existing.as_millis()
        );
    }
    if want("creates") {
        let srv = start();
        rt.block_on(bench_creates(&srv));
    }
    if want("list") {
        let srv = start();
        rt.block_on(bench_list(&srv));
    }
    if want("watch") {
        let srv = start();
        rt.block_on(bench_watch(&srv));
    }
    if want("watchlist") {
        bench_watchlist(&rt);
    }
}
