//! The agent's side of joining: fetch the CA, check it against the token before anything
//! is sent, then ask for the node's certificates with the token, keeping the private keys
//! here. What it gets is kept in `<data-dir>/agent/` so that a restarted agent starts its
//! node without the server (its pods keep running while the server is away).

use crate::proto::{ClusterInfo, JoinRequest, JoinResponse, Status, CACERTS_PATH, JOIN_PATH};
use crate::token::{self, Token};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("invalid --server {0:?}: expected https://HOST:PORT")]
    BadUrl(String),
    #[error("cannot reach the server at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("the server at {server} serves a CA whose hash is {got}, not the token's {want}: it is not the cluster this token is for (or something is in the way); the token was not sent")]
    CaMismatch {
        server: String,
        want: String,
        got: String,
    },
    #[error("the server at {server} did not prove it holds the cluster CA it served ({reason}); the token was not sent")]
    Impostor { server: String, reason: String },
    #[error("the server refused the token: {0}")]
    Unauthorized(String),
    #[error("the server refused this node: {0}")]
    Forbidden(String),
    #[error("the server answered {code}: {message}")]
    Server { code: u16, message: String },
    #[error("{0}")]
    Local(String),
}

/// `https://HOST:PORT` split up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
}

impl ServerAddr {
    pub fn parse(url: &str) -> Result<ServerAddr, JoinError> {
        let bad = || JoinError::BadUrl(url.to_string());
        let rest = url.trim().strip_prefix("https://").ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, p) = r.split_once(']').ok_or_else(bad)?;
            (h.to_string(), p.strip_prefix(':').unwrap_or(""))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (rest.to_string(), ""),
            }
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad());
        }
        let port = if port.is_empty() {
            6443
        } else {
            port.parse().map_err(|_| bad())?
        };
        Ok(ServerAddr { host, port })
    }

    /// `host:port`, bracketing an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One HTTPS request with a fresh connection; the answer's status and body.
async fn request(
    server: &ServerAddr,
    tls: Arc<rustls::ClientConfig>,
    method: http::Method,
    path: &str,
    auth: Option<String>,
    body: Bytes,
) -> Result<(u16, Bytes), JoinError> {
    let unreachable = |reason: String| JoinError::Unreachable {
        server: server.authority(),
        reason,
    };
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((server.host.as_str(), server.port)),
    )
    .await
    .map_err(|_| unreachable("timed out connecting".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(server.host.clone())
        .map_err(|_| JoinError::BadUrl(server.authority()))?;
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .map_err(|_| unreachable("timed out in the TLS handshake".into()))?
    .map_err(|e| JoinError::Impostor {
        server: server.authority(),
        reason: e.to_string(),
    })?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, server.authority())
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(a) = auth {
        req = req.header(http::header::AUTHORIZATION, a);
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| JoinError::Local(e.to_string()))?;
    let resp = tokio::time::timeout(Duration::from_secs(15), send.send_request(req))
        .await
        .map_err(|_| unreachable("timed out waiting for an answer".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let code = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    Ok((code, body))
}

/// The cluster CA, checked against the token's hash. With a bare secret (no hash) the CA
/// is trusted as first served, with a warning.
pub async fn fetch_ca(server: &ServerAddr, token: &Token) -> Result<String, JoinError> {
    let (code, body) = request(
        server,
        kite_pki::tls::insecure_client_config(),
        http::Method::GET,
        CACERTS_PATH,
        None,
        Bytes::new(),
    )
    .await?;
    if code != 200 {
        return Err(JoinError::Server {
            code,
            message: format!("GET {CACERTS_PATH}: {}", String::from_utf8_lossy(&body)),
        });
    }
    let pem = String::from_utf8(body.to_vec())
        .map_err(|_| JoinError::Local("the CA bundle is not text".into()))?;
    let got = token::ca_hash(&pem);
    match &token.ca_hash {
        Some(want) if *want != got => Err(JoinError::CaMismatch {
            server: server.authority(),
            want: want.clone(),
            got,
        }),
        Some(_) => Ok(pem),
        None => {
            tracing::warn!(
                server = %server.authority(),
                ca_hash = %got,
                "the token has no CA hash: trusting the CA this server presents on first use (use the full K10… token from the server's node-token file to have it checked)"
            );
            Ok(pem)
        }
    }
}

/// What joining gives a node: its keys, certificates, both CAs and the cluster settings.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub client: kite_pki::CertKey,
    pub serving: kite_pki::CertKey,
    pub server_ca: String,
    pub client_ca: String,
    pub cluster: ClusterInfo,
}

/// Asks `server` (whose CA is `ca_pem`, verified) for this node's certificates.
pub async fn join(
    server: &ServerAddr,
    ca_pem: &str,
    token: &Token,
    node_name: &str,
    node_password: &str,
    addresses: &[std::net::IpAddr],
) -> Result<Credentials, JoinError> {
    use base64::Engine;
    let local = |e: kite_pki::PkiError| JoinError::Local(e.to_string());
    let (client_key, client_req) = kite_pki::new_request().map_err(local)?;
    let (serving_key, serving_req) = kite_pki::new_request().map_err(local)?;
    let req = JoinRequest {
        node_name: node_name.to_string(),
        node_password: node_password.to_string(),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        client_request: client_req,
        serving_request: serving_req,
    };
    let tls = kite_pki::tls::anonymous_client_config(ca_pem)
        .map_err(|e| JoinError::Local(format!("the cluster CA: {e}")))?;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("node:{}", token.secret))
    );
    let body = serde_json::to_vec(&req).map_err(|e| JoinError::Local(e.to_string()))?;
    let (code, body) = request(
        server,
        tls,
        http::Method::POST,
        JOIN_PATH,
        Some(auth),
        body.into(),
    )
    .await?;
    if code != 200 {
        let message = serde_json::from_slice::<Status>(&body)
            .map(|s| s.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(match code {
            401 => JoinError::Unauthorized(message),
            403 => JoinError::Forbidden(message),
            _ => JoinError::Server { code, message },
        });
    }
    let r: JoinResponse = serde_json::from_slice(&body)
        .map_err(|e| JoinError::Local(format!("the server's join answer: {e}")))?;
    Ok(Credentials {
        client: kite_pki::CertKey {
            cert_pem: r.client_cert,
            key_pem: client_key,
        },
        serving: kite_pki::CertKey {
            cert_pem: r.serving_cert,
            key_pem: serving_key,
        },
        server_ca: r.server_ca,
        client_ca: r.client_ca,
        cluster: r.cluster,
    })
}

impl Credentials {
    fn paths(dir: &Path) -> [PathBuf; 7] {
        [
            "client-kubelet.crt",
            "client-kubelet.key",
            "serving-kubelet.crt",
            "serving-kubelet.key",
            "server-ca.crt",
            "client-ca.crt",
            "cluster.json",
        ]
        .map(|f| dir.join(f))
    }

    /// What an earlier join kept in `dir`, if all of it is there.
    pub fn load(dir: &Path) -> Option<Credentials> {
        let p = Self::paths(dir);
        let read = |i: usize| std::fs::read_to_string(&p[i]).ok();
        Some(Credentials {
            client: kite_pki::CertKey {
                cert_pem: read(0)?,
                key_pem: read(1)?,
            },
            serving: kite_pki::CertKey {
                cert_pem: read(2)?,
                key_pem: read(3)?,
            },
            server_ca: read(4)?,
            client_ca: read(5)?,
            cluster: serde_json::from_str(&read(6)?).ok()?,
        })
    }

    /// Keeps them in `dir` (keys 0600), each file replaced atomically.
    pub fn save(&self, dir: &Path) -> Result<(), kite_pki::PkiError> {
        let p = Self::paths(dir);
        let cluster = serde_json::to_string_pretty(&self.cluster).unwrap_or_default();
        let files: [(&str, u32); 7] = [
            (&self.client.cert_pem, 0o644),
            (&self.client.key_pem, 0o600),
            (&self.serving.cert_pem, 0o644),
            (&self.serving.key_pem, 0o600),
            (&self.server_ca, 0o644),
            (&self.client_ca, 0o644),
            (&cluster, 0o644),
        ];
        for (path, (data, mode)) in p.iter().zip(files) {
            kite_pki::write_file_atomic(path, data.as_bytes(), mode)?;
        }
        Ok(())
    }

    /// Whether a third or less of the client certificate's life is left: time to renew.
    pub fn due(&self) -> bool {
        let (from, to) = kite_pki::validity(&self.client.cert_pem).unwrap_or((0, 0));
        self.expires_in() <= (to - from) / 3
    }

    /// Seconds until renewal is due (0: now).
    pub fn due_in(&self) -> i64 {
        let (from, to) = kite_pki::validity(&self.client.cert_pem).unwrap_or((0, 0));
        (self.expires_in() - (to - from) / 3).max(0)
    }

    /// Seconds until the first of the two certificates expires (negative: expired).
    pub fn expires_in(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let c = kite_pki::not_after(&self.client.cert_pem).unwrap_or(0);
        let s = kite_pki::not_after(&self.serving.cert_pem).unwrap_or(0);
        c.min(s) - now
    }
}

/// The node password kept in `path` (made on first use), as K3s keeps
/// /etc/rancher/node/password.
pub fn node_password(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(p) if p.trim().len() >= 16 => Ok(p.trim().to_string()),
        _ => {
            let p = token::random(32);
            kite_pki::write_file_atomic(path, p.as_bytes(), 0o600)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(
            ServerAddr::parse("https://10.0.0.1:6443").unwrap(),
            ServerAddr {
                host: "10.0.0.1".into(),
                port: 6443
            }
        );
        assert_eq!(ServerAddr::parse("https://srv/").unwrap().port, 6443);
        let v6 = ServerAddr::parse("https://[fd00::1]:7443").unwrap();
        assert_eq!(v6.host, "fd00::1");
        assert_eq!(v6.authority(), "[fd00::1]:7443");
        assert!(ServerAddr::parse("http://srv:6443").is_err());
        assert!(ServerAddr::parse("https://:6443").is_err());
        assert!(ServerAddr::parse("https://srv:port").is_err());
    }
}
