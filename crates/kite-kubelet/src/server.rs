//! The kubelet's HTTPS server (`--kubelet-port`, 10250): what the API server proxies to a
//! node, container logs today (`/containerLogs/{namespace}/{pod}/{container}`, upstream's
//! path and query). Clients authenticate with a certificate from the cluster's client CA;
//! only the API server's kubelet client and cluster admins (`system:masters`) get in: no
//! certificate is a 401, anyone else a 403.

use crate::logs::{ReadOptions, Reader};
use crate::pods::Kubelet;
use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The user the API server's client certificate for kubelets names.
pub const APISERVER_CLIENT: &str = "kube-apiserver-kubelet-client";

/// The kubelet server's certificates (PEM).
#[derive(Clone)]
pub struct Tls {
    pub cert_pem: String,
    pub key_pem: String,
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

/// Binds `addr` and serves on a background task.
pub async fn spawn(addr: SocketAddr, tls: Tls, kubelet: Arc<Kubelet>) -> Result<()> {
    let cfg = kite_pki::tls::server_config(&tls.cert_pem, &tls.key_pem, &tls.client_ca_pem)
        .context("the kubelet's TLS configuration")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the kubelet port {addr} (--kubelet-port)"))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .layer(axum::middleware::from_fn(authorize))
        .with_state(kubelet);
    tracing::info!(%addr, "kubelet server listening");
    tokio::spawn(kite_pki::tls::serve(listener, cfg, app, |chain| {
        let id = kite_pki::identity_from_der(chain.first()?)?;
        Some(Caller {
            user: id.user,
            groups: id.groups,
        })
    }));
    Ok(())
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

/// `kubectl logs`' options from the query, as upstream's kubelet reads them.
fn read_options(q: &HashMap<String, String>) -> Result<(ReadOptions, bool), LogError> {
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let num = |k: &str| -> Result<Option<i64>, LogError> {
        q.get(k)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| LogError::Bad(format!("{k}: invalid value {v:?}")))
            })
            .transpose()
    };
    let since = match (q.get("sinceTime"), num("sinceSeconds")?) {
        (Some(t), _) if !t.is_empty() => Some(
            t.parse::<jiff::Timestamp>()
                .map_err(|_| LogError::Bad(format!("sinceTime: invalid value {t:?}")))?,
        ),
        (_, Some(s)) => Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s.max(0))),
        _ => None,
    };
    let tail_lines = num("tailLines")?.filter(|n| *n >= 0).map(|n| n as usize);
    let limit_bytes = num("limitBytes")?.filter(|n| *n > 0).map(|n| n as usize);
    Ok((
        ReadOptions {
            follow: flag("follow"),
            tail_lines,
            since,
            timestamps: flag("timestamps"),
            limit_bytes,
        },
        flag("previous"),
    ))
}

async fn container_logs(
    State(k): State<Arc<Kubelet>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, LogError> {
    let (opts, previous) = read_options(&q)?;
    let (path, id) = k.container_log(&ns, &pod, &container, previous).await?;
    let follow = opts.follow && !previous;
    let reader = Reader::open(&path, opts).map_err(|e| {
        LogError::Bad(format!(
            "failed to open log file for container {container:?} in pod {pod:?}: {e}"
        ))
    })?;
    // Streamed: what is there now, then, when following, what comes while the container
    // runs (polled; a rotated file is followed into the new one).
    let stream = futures::stream::unfold(
        (reader, k, id, false),
        move |(mut reader, k, id, ended)| async move {
            if ended || reader.done() {
                return None;
            }
            let mut idle = 0u32;
            loop {
                let chunk = match reader.next_chunk() {
                    Ok(c) => c,
                    Err(e) => return Some((Err(e), (reader, k, id, true))),
                };
                if !chunk.is_empty() {
                    let done = !follow;
                    return Some((Ok(bytes::Bytes::from(chunk)), (reader, k, id, done)));
                }
                if !follow {
                    return None;
                }
                // Nothing new: a stopped container's log is complete (checked once a second).
                if idle % 5 == 4 && !k.container_running(&id).await {
                    let last = reader.next_chunk().unwrap_or_default();
                    return Some((Ok(bytes::Bytes::from(last)), (reader, k, id, true)));
                }
                idle += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    );
    Ok((
        [(axum::http::header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response())
}
