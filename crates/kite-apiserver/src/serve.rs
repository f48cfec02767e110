//! The API server's HTTPS listener: kite-pki's TLS serving, with the user a client
//! certificate names attached to every request of its connection.

use crate::auth::UserInfo;
pub use kite_pki::tls::{server_config as tls_config, TlsError};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Accepts connections until the listener fails; each connection is served on its own task.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, app: axum::Router) {
    kite_pki::tls::serve(listener, tls, app, |chain| {
        let id = kite_pki::identity_from_der(chain.first()?)?;
        let mut groups = id.groups;
        groups.push("system:authenticated".into());
        Some(UserInfo {
            username: id.user,
            groups,
            ..Default::default()
        })
    })
    .await
}
