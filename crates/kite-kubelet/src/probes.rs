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
        return match tokio::time::timeout(timeout, http_get(&host, port, &host_port, &path, &scheme, h)).await {
            Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
            Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
            Ok(Err(e)) => Err(format!("Get {url:?}: {e}")),
            Err(_) => Err(format!(
                "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            )),
        };
    }
    if p.grpc.is_some() {
        return Err("gRPC probes are not supported by kite yet".into());
    }
    Err("the probe has no handler".into())
}

/// A GET as upstream's prober sends it (its User-Agent, the probe's headers); the status.
async fn http_get(
    host: &str,
    port: u16,
    host_port: &str,
    path: &str,
    scheme: &str,
    h: &k8s_openapi::api::core::v1::HTTPGetAction,
) -> Result<u16, String> {
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
        let cfg = rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(NoVerify))
            .with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
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
    let line = String::from_utf8_lossy(&head);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| "malformed HTTP response".to_string())?;
    return Ok(code);

    async fn read_head(
        s: &mut (impl tokio::io::AsyncRead + Unpin),
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let mut buf = [0u8; 512];
        while !out.windows(2).any(|w| w == b"\r\n") && out.len() < 8192 {
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok(())
    }
}

#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
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
                let code = if req.starts_with("GET /bad") {
                    503
                } else {
                    200
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
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
