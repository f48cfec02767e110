//! The HTTPS listener: rustls with optional client certificates (verified against the client
//! CA), HTTP/1.1 and HTTP/2 by ALPN, and the authenticated user attached to every request of a
//! connection as a request extension.

use crate::auth::UserInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::sync::Arc;
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

/// Builds the server TLS config from PEM serving cert/key and the client CA.
pub fn tls_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile_certs(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| TlsError::Pem("serving key"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(client_ca_pem)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn rustls_pemfile_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem("certificate"))
}

/// Accepts connections until the listener fails; each connection is served on its own task.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, app: axum::Router) {
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
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| kite_pki::identity_from_der(c))
                .map(|id| {
                    let mut groups = id.groups;
                    groups.push("system:authenticated".into());
                    UserInfo {
                        username: id.user,
                        groups,
                    }
                });
            let svc = app.map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                if let Some(u) = &user {
                    req.extensions_mut().insert(u.clone());
                }
                req
            });
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // kube-apiserver's --http2-max-streams-per-connection default.
            builder.http2().max_concurrent_streams(1000);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
