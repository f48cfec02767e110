//! Liveness, readiness and startup probes, as upstream's prober: one task per probe of a
//! running container instance, each probing every `periodSeconds` after
//! `initialDelaySeconds` with `httpGet`, `tcpSocket` or `exec`, and flipping its result
//! after `successThreshold` successes or `failureThreshold` failures. Results are kept by
//! container id; the pod worker reads them into the pod's status (`ready`, `started`) and
//! stops a container whose liveness or startup probe failed.

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        }
    }

    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            Kind::Liveness => c.liveness_probe.as_ref(),
            Kind::Readiness => c.readiness_probe.as_ref(),
            Kind::Startup => c.startup_probe.as_ref(),
        }
    }
}

/// What one probe says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not probed yet (or waiting for the startup probe).
    Unknown,
    Success,
    Failure,
}

/// Probe results by (container id, kind).
#[derive(Default)]
pub struct Results {
    map: Mutex<HashMap<(String, Kind), Verdict>>,
}

impl Results {
    pub fn get(&self, id: &str, kind: Kind) -> Option<Verdict> {
        self.map
            .lock()
            .unwrap()
            .get(&(id.to_string(), kind))
            .copied()
    }

    /// Sets a result; true when it changed.
    pub fn set(&self, id: &str, kind: Kind, v: Verdict) -> bool {
        self.map.lock().unwrap().insert((id.to_string(), kind), v) != Some(v)
    }

    /// Whether probes of this container were started.
    pub fn has(&self, id: &str) -> bool {
        self.map.lock().unwrap().keys().any(|(i, _)| i == id)
    }

    /// Forgets a container that stopped.
    pub fn forget(&self, id: &str) {
        self.map.lock().unwrap().retain(|(i, _), _| i != id);
    }
}

/// One series of upstream's `prober_probe_total`: a probe of a container of a pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Series {
    pub probe_type: &'static str,
    pub container: String,
    pub pod: String,
    pub namespace: String,
    pub pod_uid: String,
}

/// How many probes ran, by series and result (`/metrics/probes`).
#[derive(Default)]
pub struct Counts {
    map: Mutex<std::collections::BTreeMap<Series, [u64; 2]>>,
}

impl Counts {
    /// Counts one probe of `series`: successful or failed.
    pub fn count(&self, series: &Series, ok: bool) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let n = match map.get_mut(series) {
            Some(n) => n,
            None => map.entry(series.clone()).or_default(),
        };
        n[usize::from(!ok)] += 1;
    }

    /// Forgets a pod's series once it is gone (as upstream drops a worker's).
    pub fn forget_pod(&self, uid: &str) {
        (self.map.lock().unwrap_or_else(|p| p.into_inner())).retain(|s, _| s.pod_uid != uid);
    }

    /// Every series with its successful and failed counts.
    pub fn snapshot(&self) -> Vec<(Series, [u64; 2])> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(s, n)| (s.clone(), *n)).collect()
    }
}

/// A probe's timing, with upstream's defaults.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe, kind: Kind) -> Timing {
        let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
        Timing {
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            // Liveness and startup probes must have 1 (validation enforces it upstream).
            success_threshold: if kind == Kind::Readiness {
                p.success_threshold.unwrap_or(1).max(1) as u32
            } else {
                1
            },
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// Counts consecutive outcomes and decides when the verdict flips.
#[derive(Debug)]
pub struct Threshold {
    timing: Timing,
    successes: u32,
    failures: u32,
}

impl Threshold {
    pub fn new(timing: Timing) -> Self {
        Threshold {
            timing,
            successes: 0,
            failures: 0,
        }
    }

    /// The verdict after one more outcome, if it is decided.
    pub fn observe(&mut self, ok: bool) -> Option<Verdict> {
        if ok {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= self.timing.success_threshold).then_some(Verdict::Success)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures >= self.timing.failure_threshold).then_some(Verdict::Failure)
        }
    }
}

/// A container port by number or by the name one of its ports has.
fn port_of(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| format!("couldn't find port {name:?} in the container's ports"))
        }
    }
}

/// One HTTP or TCP probe against the pod (exec probes run in `pods.rs`, which has the
/// runtime). `Ok` with the failure's message when the probe ran and failed.
pub async fn probe_network(
    p: &Probe,
    c: &Container,
    pod_ip: IpAddr,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(t) = &p.tcp_socket {
        let port = port_of(c, &t.port)?;
        let ip = t
            .host
            .as_deref()
            .and_then(|h| h.parse().ok())
            .unwrap_or(pod_ip);
        let addr = SocketAddr::new(ip, port);
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {e}")),
            Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
        };
    }
    if let Some(h) = &p.http_get {
        let port = port_of(c, &h.port)?;
        let host = h.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
        let path = h
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or("/".into());
        let host_port = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        let url = format!("{scheme}://{host_port}{path}");
        return match tokio::time::timeout(timeout, http_follow(&host, port, &host_port, &path, &scheme, h)).await {
            Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
            Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
            Ok(Err(e)) => Err(format!("Get {url:?}: {e}")),
            Err(_) => Err(format!(
                "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            )),
        };
    }
    if let Some(g) = &p.grpc {
        let port = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
        return match tokio::time::timeout(timeout, grpc_check(pod_ip, port, g.service.as_deref()))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(format!(
                "timeout: health rpc did not complete within {}s",
                timeout.as_secs()
            )),
        };
    }
    Err("the probe has no handler".into())
}

/// Upstream's prober follows redirects to the same host (at most 10); a redirect elsewhere
/// counts as a success, as it does upstream (with a warning there).
async fn http_follow(
    host: &str,
    port: u16,
    host_port: &str,
    path: &str,
    scheme: &str,
    h: &k8s_openapi::api::core::v1::HTTPGetAction,
) -> Result<u16, String> {
    let mut path = path.to_string();
    for _ in 0..10 {
        let (code, location) = http_get(host, port, host_port, &path, scheme, h).await?;
        let Some(loc) = location.filter(|_| (300..400).contains(&code)) else {
            return Ok(code);
        };
        let local = format!("{scheme}://{host_port}");
        path = if let Some(rest) = loc.strip_prefix(&local) {
            if rest.is_empty() {
                "/".into()
            } else {
                rest.to_string()
            }
        } else if loc.starts_with('/') {
            loc
        } else {
            return Ok(code);
        };
    }
    Err("stopped after 10 redirects".into())
}

/// A gRPC health check (`grpc.health.v1.Health/Check`, plain HTTP/2), as upstream's prober.
async fn grpc_check(ip: IpAddr, port: u16, service: Option<&str>) -> Result<(), String> {
    use http_body_util::BodyExt;
    let addr = SocketAddr::new(ip, port);
    let fail = |e: String| format!("timeout: failed to connect service \"{addr}\" within 1s: {e}");
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // HealthCheckRequest { service = 1 }, in gRPC's length-prefixed framing.
    let mut msg = Vec::new();
    if let Some(s) = service.filter(|s| !s.is_empty()) {
        msg.push(0x0a);
        let mut n = s.len();
        while n >= 0x80 {
            msg.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(s.as_bytes());
    }
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe/1.36")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let headers = resp.headers().clone();
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("rpc error: {e}"))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_string();
    if status != "0" {
        let desc = trailers
            .get("grpc-message")
            .or_else(|| headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        return Err(format!("rpc error: code = {status} desc = {desc}"));
    }
    let data = collected.to_bytes();
    // HealthCheckResponse { status = 1 }: SERVING is 1.
    let serving = data
        .get(5..)
        .map(|m| m.windows(2).any(|w| w == [0x08, 0x01]))
        == Some(true);
    if serving {
        Ok(())
    } else {
        let code = data.get(5..).and_then(|m| m.get(1)).copied().unwrap_or(0);
        let name = match code {
            2 => "NOT_SERVING",
            3 => "SERVICE_UNKNOWN",
            _ => "UNKNOWN",
        };
        Err(format!("service unhealthy (responded with \"{name}\")"))
    }
}

/// A GET as upstream's prober sends it (its User-Agent, the probe's headers); the status
/// and the Location header.
async fn http_get(
    host: &str,
    port: u16,
    host_port: &str,
    path: &str,
    scheme: &str,
    h: &k8s_openapi::api::core::v1::HTTPGetAction,
) -> Result<(u16, Option<String>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("dial tcp {host_port}: connect: {e}"))?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_port}\r\nUser-Agent: kube-probe/1.36\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for hd in h.http_headers.iter().flatten() {
        req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
    }
    req.push_str("\r\n");
    let mut head = Vec::new();
    if scheme == "https" {
        // As upstream: HTTPS probes do not verify the certificate.
        let cfg = kite_pki::tls::insecure_client_config();
        let name =
            rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let mut s = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        read_head(&mut s, &mut head).await?;
    } else {
        let mut s = tcp;
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        read_head(&mut s, &mut head).await?;
    }
    let text = String::from_utf8_lossy(&head);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| "malformed HTTP response".to_string())?;
    let location = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("location")
            .then(|| v.trim().to_string())
    });
    return Ok((code, location));

    async fn read_head(
        s: &mut (impl tokio::io::AsyncRead + Unpin),
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let mut buf = [0u8; 512];
        while !out.windows(4).any(|w| w == b"\r\n\r\n") && out.len() < 16384 {
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_flip_as_upstream() {
        let p = Probe {
            success_threshold: Some(2),
            failure_threshold: Some(3),
            ..Default::default()
        };
        let mut t = Threshold::new(Timing::of(&p, Kind::Readiness));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(Verdict::Success));
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a success resets the failures");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(Verdict::Failure));
        // Liveness: one success is enough, whatever the spec says.
        let mut l = Threshold::new(Timing::of(&p, Kind::Liveness));
        assert_eq!(l.observe(true), Some(Verdict::Success));
    }

    #[tokio::test]
    async fn grpc_health_probes() {
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        // A health server: SERVING for "", NOT_SERVING for "sick", UNIMPLEMENTED for "gone".
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            use http_body_util::BodyExt;
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let asked = String::from_utf8_lossy(body.get(7..).unwrap_or_default())
                                .to_string();
                            let (status, msg): (&str, Vec<u8>) = match asked.as_str() {
                                "sick" => ("0", vec![0x08, 0x02]),
                                "gone" => ("12", vec![]),
                                _ => ("0", vec![0x08, 0x01]),
                            };
                            let mut data = vec![0u8];
                            data.extend_from_slice(&(msg.len() as u32).to_be_bytes());
                            data.extend_from_slice(&msg);
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", status.parse().unwrap());
                            let frames: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
                                Ok(Frame::data(bytes::Bytes::from(data))),
                                Ok(Frame::trailers(trailers)),
                            ];
                            let body = StreamBody::new(futures::stream::iter(frames));
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                                    .unwrap(),
                            )
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
                });
            }
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(grpc_check(ip, port, None).await, Ok(()));
        assert_eq!(
            grpc_check(ip, port, Some("sick")).await,
            Err("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        assert_eq!(
            grpc_check(ip, port, Some("gone")).await,
            Err("rpc error: code = 12 desc = ".into())
        );
    }

    #[tokio::test]
    async fn tcp_and_http_probes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 1024];
                let n = s.read(&mut b).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&b[..n]).to_string();
                let (code, extra) = if req.starts_with("GET /bad") {
                    (503, "")
                } else if req.starts_with("GET /moved") {
                    (302, "Location: /bad\r\n")
                } else {
                    (200, "")
                };
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {code} X\r\n{extra}Content-Length: 0\r\n\r\n").as_bytes(),
                    )
                    .await;
            }
        });
        let c = Container {
            ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                name: Some("web".into()),
                container_port: port as i32,
                ..Default::default()
            }]),
            ..Default::default()
        };
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t = Duration::from_secs(1);
        let http = |path: &str| Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::String("web".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(probe_network(&http("/ok"), &c, ip, t).await, Ok(()));
        assert_eq!(
            probe_network(&http("/bad"), &c, ip, t).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
        // A local redirect is followed.
        assert_eq!(
            probe_network(&http("/moved"), &c, ip, t).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
        let tcp = |p: i32| Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: IntOrString::Int(p),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(probe_network(&tcp(port as i32), &c, ip, t).await, Ok(()));
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = probe_network(&tcp(closed as i32), &c, ip, t)
            .await
            .unwrap_err();
        assert!(e.contains("refused"), "{e}");
    }
}
