//! The kite API server: HTTPS ([`serve`]), authentication and authorization ([`auth`]), one
//! generic REST handler for every registered resource ([`http`], [`objects`]), watch
//! ([`watch`]), discovery and OpenAPI ([`discovery`], [`openapi`]), computed resources
//! ([`reviews`]), Service allocation ([`alloc`]), admission's in-memory view of namespaces
//! and PriorityClasses ([`admission_cache`]), first-start objects ([`bootstrap`]) and
//! metrics ([`metrics`]).

pub mod admission_cache;
pub mod alloc;
pub mod auth;
pub mod bootstrap;
pub mod connect;
pub mod discovery;
pub mod error;
pub mod eviction;
pub mod http;
pub mod metered;
pub mod metrics;
pub mod objects;
pub mod openapi;
pub mod proxy;
pub mod reviews;
pub mod serve;
pub mod tokens;
pub mod watch;

use auth::Authorizer;
use objects::Objects;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// What every request handler shares.
pub struct AppState {
    pub objects: Arc<Objects>,
    pub authorizer: Arc<dyn Authorizer>,
    pub metrics: Arc<metrics::Metrics>,
    /// `host:port` clients should use (for `/api`'s serverAddressByClientCIDRs).
    pub server_address: String,
    pub version: Value,
    /// How to reach kubelets (`pods/log`); `None` when the server has none.
    pub kubelet_client: Option<proxy::KubeletClient>,
    /// The kubelet in this process (`kite server`'s own node), by node name: reached
    /// without a socket or TLS.
    pub local_kubelet: Option<(String, kite_pki::tls::LocalDial)>,
    /// ServiceAccount tokens: issued, authenticated, published; `None`: none.
    pub tokens: Option<Arc<tokens::Tokens>>,
}

/// The `/version` document.
pub fn version_info() -> Value {
    let v = kite_api::KUBERNETES_VERSION.trim_start_matches('v');
    let mut parts = v.split('.');
    let major = parts.next().unwrap_or("1");
    let minor = parts.next().unwrap_or("0");
    json!({
        "major": major,
        "minor": minor,
        "emulationMajor": major,
        "emulationMinor": minor,
        "minCompatibilityMajor": major,
        "minCompatibilityMinor": minor,
        "gitVersion": format!("{}+kite", kite_api::KUBERNETES_VERSION),
        "gitCommit": option_env!("KITE_GIT_COMMIT").unwrap_or("unknown"),
        "gitTreeState": "clean",
        "buildDate": option_env!("KITE_BUILD_DATE").unwrap_or("1970-01-01T00:00:00Z"),
        "goVersion": "n/a (kite is written in Rust)",
        "compiler": "rustc",
        "platform": format!("linux/{}", match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

/// Everything needed to start serving.
pub struct ServerOptions {
    pub listen: SocketAddr,
    pub advertise: String,
    pub tls: Arc<rustls::ServerConfig>,
    pub authorizer: Arc<dyn Authorizer>,
    /// The client TLS config for kubelets (a client certificate, and the CA of their
    /// serving certificates).
    pub kubelet_client: Option<proxy::KubeletClient>,
    /// The kubelet in this process, if any: its node's name and how to reach it.
    pub local_kubelet: Option<(String, kite_pki::tls::LocalDial)>,
    /// The key ServiceAccount tokens are signed with (PKCS#8 DER, ECDSA P-256).
    pub service_account_key: Option<Vec<u8>>,
    /// Routes served beside the API on the same listener, before authentication (the
    /// join endpoint: it authenticates with join tokens of its own).
    pub extra_routes: Option<axum::Router>,
}

/// A running API server.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub task: tokio::task::JoinHandle<()>,
    /// The router, for in-process clients (see [`RunningServer::local_service`]).
    pub app: axum::Router,
}

impl RunningServer {
    /// A `tower::Service` that hands requests straight to the router as `user`, for
    /// components inside the server process (`kube::Client::new` takes it). Requests skip
    /// TCP, TLS and HTTP framing, but not authorization, admission or validation: the
    /// identity is the one the component's client certificate would carry.
    pub fn local_service<B>(
        &self,
        user: auth::UserInfo,
    ) -> impl tower::Service<
        ::http::Request<B>,
        Response = ::http::Response<axum::body::Body>,
        Error = std::convert::Infallible,
        Future = impl Send + 'static,
    > + Clone
           + Send
           + 'static
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        use tower::ServiceExt;
        self.app
            .clone()
            .map_request(move |mut req: ::http::Request<B>| {
                req.extensions_mut().insert(user.clone());
                req
            })
    }
}

/// Bootstraps system objects, binds, and serves in the background. `metrics` should be the
/// one the store was wrapped with ([`metered::MeteredStore`]).
pub async fn start(
    objects: Arc<Objects>,
    metrics: Arc<metrics::Metrics>,
    opts: ServerOptions,
) -> anyhow::Result<RunningServer> {
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.listen))?;
    let addr = listener.local_addr()?;
    bootstrap::run(&objects, &opts.advertise, addr.port())
        .await
        .map_err(|e| anyhow::anyhow!("bootstrapping system objects: {e}"))?;
    let state = Arc::new(AppState {
        objects,
        authorizer: opts.authorizer,
        metrics,
        server_address: format!("{}:{}", opts.advertise, addr.port()),
        version: version_info(),
        kubelet_client: opts.kubelet_client,
        local_kubelet: opts.local_kubelet,
        tokens: match opts.service_account_key {
            Some(k) => Some(Arc::new(
                tokens::Tokens::new(&k).map_err(anyhow::Error::msg)?,
            )),
            None => None,
        },
    });
    let mut app = http::router(state.clone());
    if let Some(extra) = opts.extra_routes {
        app = app.merge(extra);
    }
    let task = tokio::spawn(serve::serve(listener, opts.tls, app.clone()));
    Ok(RunningServer {
        addr,
        state,
        task,
        app,
    })
}

/// Compacts the store's history every `every`: what is older than one interval (upstream
/// kube-apiserver compacts to the revision it saw at its previous compaction, so a list's
/// continue token expires within two intervals) and what lies beyond the last `keep`
/// revisions (K3s's kine keeps 1000).
pub fn spawn_compactor(store: kite_store::DynStore, keep: i64, every: std::time::Duration) {
    tokio::spawn(async move {
        let mut t = tokio::time::interval(every);
        t.tick().await;
        let mut seen = store.current_revision();
        loop {
            t.tick().await;
            let now = store.current_revision();
            let target = (now - keep).max(seen);
            seen = now;
            if target > store.compacted_revision() {
                if let Err(e) = store.compact(target).await {
                    tracing::warn!(error = %e, "compaction failed");
                } else {
                    tracing::debug!(revision = target, "compacted");
                }
            }
        }
    });
}
