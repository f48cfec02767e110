//! The agent's API client: kube's client over a TLS connection whose client certificate
//! can be replaced ([`kite_pki::tls::Rotating`]), so renewed node certificates are used by
//! the next connection without rebuilding the components that hold the client.

use kite_pki::tls::Rotating;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the cluster CA: {0}")]
    Ca(#[from] kite_pki::tls::TlsError),
    #[error("the server URL {0:?}: {1}")]
    Url(String, String),
}

/// A client of the API at `url` (`https://127.0.0.1:6444`), trusting `ca_pem`, presenting
/// whatever certificate `cert` holds at each handshake.
pub fn client(url: &str, ca_pem: &str, cert: Rotating) -> Result<kube::Client, ClientError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| ClientError::Url(url.into(), e.to_string()))?;
    let mut tls = (*kite_pki::tls::anonymous_client_config(ca_pem)?).clone();
    tls.client_auth_cert_resolver = Arc::new(cert);
    // hyper-rustls sets ALPN itself (HTTP/1.1 here).
    tls.alpn_protocols.clear();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, kube::client::Body>(https);
    let svc = tower::ServiceBuilder::new()
        .layer(kube::client::middleware::BaseUriLayer::new(uri))
        .service(hyper);
    Ok(kube::Client::new(svc, "default"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn builds_a_client_and_swaps_its_certificate() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let pki = kite_pki::Pki::load_or_create(dir.path(), &["localhost".to_string()]).unwrap();
        let a = pki
            .client_cert("a", "system:node:a", &["system:nodes"])
            .unwrap();
        let b = pki
            .client_cert("b", "system:node:b", &["system:nodes"])
            .unwrap();
        let cert = Rotating::new(&a).unwrap();
        client(
            "https://127.0.0.1:6444",
            &pki.server_ca.cert_pem,
            cert.clone(),
        )
        .unwrap();
        cert.set(&b).unwrap();
        assert!(cert
            .set(&kite_pki::CertKey {
                cert_pem: "x".into(),
                key_pem: "y".into()
            })
            .is_err());
        assert!(matches!(
            client("not a url", &pki.server_ca.cert_pem, cert),
            Err(ClientError::Url(..))
        ));
    }
}
