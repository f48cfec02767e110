//! The kubelet's HTTPS server (`--kubelet-port`, 10250): what the API server proxies to a
//! node, on upstream's paths and queries: container logs, exec and port forwarding (the
//! streaming protocols themselves are `kite_stream`'s), `/stats/summary` and the
//! Prometheus endpoints (`metrics`). Clients authenticate with a certificate from the cluster's client CA;
//! only the API server's kubelet client and cluster admins (`system:masters`) get in: no
//! certificate is a 401, anyone else a 403.

mod attach;
mod exec;
mod logs;
mod metrics;
mod portforward;
mod remote;
mod upgrade;

pub use portforward::Target;

use crate::pods::Kubelet;
use anyhow::{Context, Result};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;

/// The user the API server's client certificate for kubelets names.
pub const APISERVER_CLIENT: &str = "kube-apiserver-kubelet-client";

/// The kubelet server's certificate (replaceable: an agent renews it while serving) and
/// the CA its clients' certificates must come from.
#[derive(Clone)]
pub struct Tls {
    pub serving: kite_pki::tls::Rotating,
    /// Client certificates are verified against this CA.
    pub client_ca_pem: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

/// Why a log cannot be served, as upstream's kubelet says it.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for LogError {
    fn into_response(self) -> Response {
        let code = match self {
            LogError::NotFound(_) => StatusCode::NOT_FOUND,
            LogError::Bad(_) => StatusCode::BAD_REQUEST,
            LogError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (code, self.to_string()).into_response()
    }
}

/// Who a connection's client certificate names.
#[derive(Clone)]
struct Caller {
    user: String,
    groups: Vec<String>,
}

/// The kubelet server while it runs: dropping it closes the port and ends in-process
/// serving, so a kubelet restarted by its supervisor can bind and serve again.
pub struct Running {
    listener: tokio::task::JoinHandle<()>,
    local: kite_pki::tls::LocalDial,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.listener.abort();
        self.local.stop();
    }
}

/// The kubelet port, bound before the node registers: a client that reads the node's
/// `daemonEndpoints` (the API server's proxy, right after a restart) waits in the accept
/// backlog until [`Bound::serve`] rather than being refused.
pub struct Bound {
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
}

/// Binds `addr`; nothing is served until [`Bound::serve`].
pub async fn bind(addr: SocketAddr) -> Result<Bound> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the kubelet port {addr} (--kubelet-port)"))?;
    Ok(Bound { addr, listener })
}

impl Bound {
    /// Serves on a background task; and in-process through `local`.
    pub fn serve(
        self,
        tls: Tls,
        kubelet: Arc<Kubelet>,
        local: &kite_pki::tls::LocalDial,
    ) -> Result<Running> {
        let Bound { addr, listener } = self;
        let cfg = kite_pki::tls::rotating_server_config(tls.serving.clone(), &tls.client_ca_pem)
            .context("the kubelet's TLS configuration")?;
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/containerLogs/{ns}/{pod}/{container}",
                get(logs::container_logs),
            )
            .route("/exec/{ns}/{pod}/{container}", any(exec::exec))
            .route("/attach/{ns}/{pod}/{container}", any(attach::attach))
            .route("/portForward/{ns}/{pod}", any(portforward::port_forward))
            .route(
                "/stats/summary",
                get(
                    |axum::extract::State(k): axum::extract::State<Arc<Kubelet>>| async move {
                        axum::Json(k.summary().await)
                    },
                ),
            )
            .route("/metrics", get(metrics::own))
            .route("/metrics/resource", get(metrics::resource))
            .route("/metrics/cadvisor", get(metrics::cadvisor))
            .route("/metrics/probes", get(metrics::probes))
            .layer(axum::middleware::from_fn(authorize))
            .with_state(kubelet);
        tracing::info!(%addr, "kubelet server listening");
        local.serve(
            app.clone(),
            Caller {
                user: APISERVER_CLIENT.into(),
                groups: vec![],
            },
        );
        let listener = tokio::spawn(kite_pki::tls::serve(listener, cfg, app, |chain| {
            let id = kite_pki::identity_from_der(chain.first()?)?;
            Some(Caller {
                user: id.user,
                groups: id.groups,
            })
        }));
        Ok(Running {
            listener,
            local: local.clone(),
        })
    }
}

async fn authorize(req: Request, next: Next) -> Response {
    let caller = req.extensions().get::<Caller>().cloned();
    match caller {
        None => (StatusCode::UNAUTHORIZED, "Unauthorized").into_response(),
        Some(c) if c.user == APISERVER_CLIENT || c.groups.iter().any(|g| g == "system:masters") => {
            next.run(req).await
        }
        Some(c) => (
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden (user={}, verb=get, resource=nodes, subresource(s)=[proxy])",
                c.user
            ),
        )
            .into_response(),
    }
}
