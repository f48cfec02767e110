//! HTTPS serving shared by the API server and the kubelet: a rustls config with optional
//! client certificates (verified against the client CA), HTTP/1.1 and HTTP/2 by ALPN, and
//! what a connection's client certificate identifies attached to each of its requests.

use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::sync::{Arc, RwLock};
use tokio::net::TcpListener;
use tower::ServiceExt;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("bad PEM in {0}")]
    Pem(&'static str),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// The server TLS config from PEM serving cert/key and the client CA. Clients without a
/// certificate are let in (unauthenticated); one that does not verify is refused.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs = certs(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| TlsError::Pem("serving key"))?;
    let verifier = client_verifier(client_ca_pem)?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client TLS config that trusts `ca_pem` and presents `client` (HTTP/1.1).
pub fn client_config(
    ca_pem: &str,
    client: &crate::CertKey,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())
        .map_err(|_| TlsError::Pem("client key"))?;
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certs(&client.cert_pem)?, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A certificate and key that can be replaced while a TLS config uses them: a node's
/// certificates are renewed without restarting what serves or presents them.
#[derive(Clone, Debug)]
pub struct Rotating(Arc<std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>>);

fn certified(ck: &crate::CertKey) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let key =
        PrivateKeyDer::from_pem_slice(ck.key_pem.as_bytes()).map_err(|_| TlsError::Pem("key"))?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let signing = provider.key_provider.load_private_key(key)?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        certs(&ck.cert_pem)?,
        signing,
    )))
}

impl Rotating {
    pub fn new(ck: &crate::CertKey) -> Result<Rotating, TlsError> {
        Ok(Rotating(Arc::new(std::sync::RwLock::new(certified(ck)?))))
    }

    /// Replaces the certificate: new handshakes present the new one.
    pub fn set(&self, ck: &crate::CertKey) -> Result<(), TlsError> {
        let c = certified(ck)?;
        *self.0.write().unwrap() = c;
        Ok(())
    }

    fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.0.read().unwrap().clone()
    }
}

impl rustls::client::ResolvesClientCert for Rotating {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for Rotating {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

/// Client certificates signed by `client_ca_pem` are verified; clients without one are
/// let through (anonymous, as upstream's servers allow).
fn client_verifier(
    client_ca_pem: &str,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder(Arc::new(roots(client_ca_pem)?))
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))
}

/// [`server_config`] with a certificate that can be replaced ([`Rotating`]).
pub fn rotating_server_config(
    cert: Rotating,
    client_ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier = client_verifier(client_ca_pem)?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(cert));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client TLS config that trusts `ca_pem` and presents no certificate (HTTP/1.1).
pub fn anonymous_client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client TLS config that accepts any server certificate (HTTP/1.1): what upstream uses
/// where it does not verify, HTTPS probes and `https:` pod proxies. Signatures are still
/// checked, so the handshake is sound; who the server is, is not.
pub fn insecure_client_config() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let mut cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    }
    Ok(roots)
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem("certificate"))
}

/// Accepts connections until the process ends, each served on its own task. `identify`
/// turns the client's verified certificate chain into the request extension every request
/// of the connection carries (none without a certificate).
pub async fn serve<T, F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    identify: F,
) where
    T: Clone + Send + Sync + 'static,
    F: Fn(&[CertificateDer<'_>]) -> Option<T> + Clone + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let identify = identify.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let who = stream.get_ref().1.peer_certificates().and_then(&identify);
            serve_connection(stream, app, who, &peer.to_string()).await;
        });
    }
}

/// Serves HTTP/1.1 and HTTP/2 (with upgrades) on one connection; every request carries
/// `who` as an extension, if any.
async fn serve_connection<IO, T>(io: IO, app: axum::Router, who: Option<T>, peer: &str)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    let svc = app.map_request(move |mut req: http::Request<hyper::body::Incoming>| {
        if let Some(u) = &who {
            req.extensions_mut().insert(u.clone());
        }
        req
    });
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // kube-apiserver's --http2-max-streams-per-connection default.
    builder.http2().max_concurrent_streams(1000);
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// A request handed to an in-process server, and its answer.
type Call = dyn Fn(
        http::Request<axum::body::Body>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = http::Response<axum::body::Body>> + Send>,
    > + Send
    + Sync;

/// A server in this process reached without a socket, TLS or HTTP: in `kite server`, the
/// API server hands requests for its own node's kubelet straight to the kubelet's router
/// (agents' kubelets keep TLS). An upgrade request carries the client's own connection
/// (hyper's `OnUpgrade`) with it, so a port-forward's or exec's bytes go from the kubelet
/// to the client's socket with no relay in between. Empty until the server side
/// [`LocalDial::serve`]s; a server that starts again (a supervised kubelet restarted)
/// takes the place of the one before. Cheap to clone, shared by both sides.
#[derive(Clone, Default)]
pub struct LocalDial {
    server: Arc<RwLock<Option<Arc<Call>>>>,
}

impl std::fmt::Debug for LocalDial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.is_serving() {
            "serving"
        } else {
            "empty"
        };
        write!(f, "LocalDial({state})")
    }
}

impl LocalDial {
    /// From now on each [`LocalDial::call`] is served by `app`, the request carrying `who`
    /// (the identity a client certificate would have given), in place of any server
    /// before it.
    pub fn serve<T>(&self, app: axum::Router, who: T)
    where
        T: Clone + Send + Sync + 'static,
    {
        let call: Arc<Call> = Arc::new(move |mut req| {
            req.extensions_mut().insert(who.clone());
            let app = app.clone();
            Box::pin(async move {
                match app.oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            })
        });
        *self.server.write().unwrap_or_else(|p| p.into_inner()) = Some(call);
    }

    /// Ends in-process serving (the server stopped); calls are `None` until it serves again.
    pub fn stop(&self) {
        *self.server.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn current(&self) -> Option<Arc<Call>> {
        self.server
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the server side serves.
    pub fn is_serving(&self) -> bool {
        self.current().is_some()
    }

    /// Serves `req` in-process, if the server side serves.
    pub async fn call(
        &self,
        req: http::Request<axum::body::Body>,
    ) -> Option<http::Response<axum::body::Body>> {
        let f = self.current()?;
        Some(f(req).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Who(&'static str);

    #[tokio::test]
    async fn local_calls_reach_the_router_with_the_identity_given() {
        let local = LocalDial::default();
        let req = || {
            http::Request::get("/who")
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert!(local.call(req()).await.is_none(), "nothing serves yet");
        let app = axum::Router::new().route(
            "/who",
            axum::routing::get(|axum::Extension(w): axum::Extension<Who>| async move { w.0 }),
        );
        local.serve(app, Who("kubelet-client"));
        assert!(local.is_serving());
        let resp = local.call(req()).await.expect("served");
        assert_eq!(resp.status(), http::StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"kubelet-client");
        // A server that starts again takes the place of the one before; a stopped one
        // serves nothing.
        let again = axum::Router::new().route("/who", axum::routing::get(|| async { "again" }));
        local.serve(again, Who("unused"));
        let resp = local.call(req()).await.expect("served");
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"again");
        local.stop();
        assert!(local.call(req()).await.is_none(), "stopped");
    }
}
