//! kite's service proxy, on every node: Services and their EndpointSlices, watched
//! through the API like every other component, programmed into the kernel's nftables
//! (table `kite-proxy`) as kube-proxy's nftables mode does: verdict maps keyed by
//! address, protocol and port, a chain per Service port and per endpoint, each change
//! one atomic transaction. No traffic is copied in user space.
//!
//! `model` picks each Service port's endpoints, `rules` lays out the table and the
//! transaction from one ruleset to the next, `state` keeps what each Service contributed
//! so that a change recomputes and rewrites only the Services it touched, `nft` applies
//! it, and this module runs the loop: a change wakes it, changes that come together are
//! applied together, and a failed transaction makes the next one rebuild the table whole.

pub mod conntrack;
pub mod model;
pub mod nft;
pub mod rules;
pub mod state;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kite_runtime::Informers;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How the proxy runs on a node.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name: its endpoints are the local ones.
    pub node_name: String,
    /// One table per family: IPv4, and IPv6 on a dual-stack node.
    pub settings: Vec<rules::Settings>,
    /// Where `/healthz` and `/livez` are served (kube-proxy's :10256); `None`: nowhere.
    pub healthz: Option<SocketAddr>,
}

/// How long changes that come together are gathered into one transaction.
const BATCH: Duration = Duration::from_millis(20);
/// How long after a failed transaction the proxy tries again.
const RETRY: Duration = Duration::from_secs(1);
/// How often it looks again for a missing `nft`.
const RETRY_MISSING: Duration = Duration::from_secs(30);

/// Runs the proxy until the process ends: one loop per family, over the same watches.
pub async fn run(client: kube::Client, opts: Options) -> anyhow::Result<()> {
    let informers = Informers::new(client);
    let services = informers.get::<Service>();
    let slices = informers.get::<EndpointSlice>();
    let wakes: Vec<Arc<tokio::sync::Notify>> = (opts.settings.iter())
        .map(|_| Arc::new(tokio::sync::Notify::new()))
        .collect();
    for wake in &wakes {
        services.wake_on_change(wake);
        slices.wake_on_change(wake);
    }
    informers.synced().await;
    let synced = Arc::new(AtomicI64::new(0));
    if let Some(addr) = opts.healthz {
        if let Err(e) = health::spawn(addr, synced.clone()).await {
            tracing::warn!(error = %format!("{e:#}"), "the proxy's health endpoint is not served");
        }
    }
    prepare_host(opts.settings.len() > 1);
    let mut loops = Vec::new();
    for (settings, wake) in opts.settings.iter().zip(wakes) {
        let span = tracing::info_span!("proxy", family = settings.family().api());
        loops.push(tokio::spawn(tracing::Instrument::instrument(
            sync_loop(
                services.clone(),
                slices.clone(),
                opts.node_name.clone(),
                settings.clone(),
                wake,
                synced.clone(),
            ),
            span,
        )));
    }
    for l in loops {
        l.await?;
    }
    Ok(())
}

/// Programs one family's table from the Services and slices, for ever.
async fn sync_loop(
    services: Arc<kite_runtime::Informer<Service>>,
    slices: Arc<kite_runtime::Informer<EndpointSlice>>,
    node_name: String,
    settings: rules::Settings,
    wake: Arc<tokio::sync::Notify>,
    synced: Arc<AtomicI64>,
) {
    let mut programmed = state::Programmed::default();
    let mut missing_said = false;
    let mut conntrack_said = false;
    'sync: loop {
        let started = std::time::Instant::now();
        let svcs = services.list();
        let sls = slices.list();
        let plan = programmed.plan(
            &svcs.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
            &sls.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
            &node_name,
            &settings,
        );
        if !plan.scripts.is_empty() {
            let span = tracing::debug_span!("sync", services = svcs.len());
            let _e = span.enter();
            for script in &plan.scripts {
                match nft::apply(script).await {
                    Ok(()) => {}
                    Err(e @ nft::NftError::Missing) => {
                        // Said once; nft may be installed later.
                        if !missing_said {
                            tracing::error!(error = %e, "Services are not programmed");
                            missing_said = true;
                        }
                        programmed.forget();
                        tokio::time::sleep(RETRY_MISSING).await;
                        continue 'sync;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "programming Services failed; rebuilding the table");
                        programmed.forget();
                        tokio::time::sleep(RETRY).await;
                        continue 'sync;
                    }
                }
            }
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                transactions = plan.scripts.len(),
                "programmed"
            );
        }
        // The UDP flows that a removed endpoint answered.
        let stale = conntrack::stale(&plan.old_ports, &plan.new_ports);
        programmed.commit(plan);
        if !stale.is_empty() {
            if let Err(e) = conntrack::delete(&stale).await {
                if !conntrack_said {
                    tracing::warn!(error = %e, "cannot delete stale UDP flows (install the conntrack package): UDP clients may keep reaching a removed endpoint");
                    conntrack_said = true;
                }
            }
        }
        route_localnet();
        synced.store(jiff::Timestamp::now().as_millisecond(), Ordering::Relaxed);
        // A change wakes the loop; so does a quiet half minute (the bridge may have
        // appeared since).
        tokio::select! {
            _ = wake.notified() => tokio::time::sleep(BATCH).await,
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

/// What the kernel needs for Services, as kube-proxy (and K3s) set it: bridged pod
/// traffic goes through the IP hooks (so a pod's reply to another pod through a Service
/// is un-DNATed), and routing forwards.
fn prepare_host(v6: bool) {
    let mut sysctls = vec![
        ("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"),
        ("/proc/sys/net/ipv4/ip_forward", "1"),
    ];
    if v6 {
        sysctls.push(("/proc/sys/net/bridge/bridge-nf-call-ip6tables", "1"));
        sysctls.push(("/proc/sys/net/ipv6/conf/all/forwarding", "1"));
    }
    for (path, value) in sysctls {
        match std::fs::read_to_string(path) {
            Ok(v) if v.trim() == value => {}
            Ok(_) => {
                if let Err(e) = std::fs::write(path, value) {
                    tracing::warn!(%path, error = %e, "cannot set a sysctl Services need");
                }
            }
            Err(e) => tracing::warn!(%path, error = %e, "missing sysctl (is br_netfilter loaded?)"),
        }
    }
}

/// The pods' bridge (kubelet's `kite0`, once it exists).
const BRIDGE: &str = "kite0";

/// Lets NodePort traffic to 127.0.0.1 leave through the pods' bridge once DNATed (the
/// kernel drops loopback-sourced packets on other interfaces otherwise), as kube-proxy's
/// `route_localnet`, but on kite's bridge only, not every interface of the host.
fn route_localnet() {
    let path = format!("/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
        if let Err(e) = std::fs::write(&path, "1") {
            tracing::warn!(%path, error = %e, "NodePorts on 127.0.0.1 will not answer");
        }
    }
}

mod health {
    //! `/healthz` and `/livez`, as kube-proxy answers them: 200 with the time of the last
    //! sync once the proxy has programmed its first ruleset, 503 before.

    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    pub async fn spawn(addr: std::net::SocketAddr, synced: Arc<AtomicI64>) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding the proxy's health port {addr}: {e}"))?;
        let answer = move || {
            let synced = synced.clone();
            async move {
                let ms = synced.load(Ordering::Relaxed);
                let now = jiff::Timestamp::now();
                let last = jiff::Timestamp::from_millisecond(ms).unwrap_or(now);
                let body = format!(
                    "{{\"lastUpdated\": \"{last}\",\"currentTime\": \"{now}\", \"nodeEligible\": true}}"
                );
                let code = if ms == 0 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                (code, [("content-type", "application/json")], body).into_response()
            }
        };
        let app = axum::Router::new()
            .route("/healthz", get(answer.clone()))
            .route("/livez", get(answer));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(())
    }
}
