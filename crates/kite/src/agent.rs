//! `kite agent`: joins a server with a token and runs a node — kubelet, service proxy,
//! NetworkPolicy, DNS and the pod network between nodes — with no store, API server or
//! controllers. Its parts reach the API through the client-side load balancer on
//! loopback (`--lb-server-port`), which follows the servers' addresses.

use crate::config::AgentConfig;
use anyhow::{Context, Result};
use kite_join::agent::{self, Credentials, JoinError};
use std::sync::Arc;
use std::time::Duration;

pub fn run(cfg: AgentConfig) -> Result<()> {
    crate::server::init_logging(if cfg.debug { "debug" } else { "info" }, cfg.log_json);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = serve(cfg) => r,
            _ = tokio::signal::ctrl_c() => { tracing::info!("shutting down"); Ok(()) }
            _ = term.recv() => { tracing::info!("shutting down"); Ok(()) }
        }
    })
}

/// The local address this host reaches `server` from (no packet is sent).
fn source_address(server: &agent::ServerAddr) -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect((server.host.as_str(), server.port)).ok()?;
    Some(s.local_addr().ok()?.ip())
}

/// Whether credentials kept from an earlier join still serve: for this node name, from
/// the token's CA, and not within a third of their life of expiring (then they are renewed
/// by joining again).
fn still_good(c: &Credentials, node: &str, token: &kite_join::token::Token) -> bool {
    use rustls::pki_types::pem::PemObject;
    let named = rustls::pki_types::CertificateDer::from_pem_slice(c.client.cert_pem.as_bytes())
        .ok()
        .and_then(|d| kite_pki::identity_from_der(&d))
        .is_some_and(|id| id.user == format!("system:node:{node}"));
    let same_ca = token
        .ca_hash
        .as_ref()
        .is_none_or(|h| *h == kite_join::token::ca_hash(&c.server_ca));
    named && same_ca && !c.due()
}

/// One join: the CA, checked against the token, then the node's certificates.
async fn join_once(
    cfg: &AgentConfig,
    password: &str,
    addresses: &[std::net::IpAddr],
) -> Result<Credentials, JoinError> {
    let ca = agent::fetch_ca(&cfg.server, &cfg.token).await?;
    agent::join(
        &cfg.server,
        &ca,
        &cfg.token,
        &cfg.node.node_name,
        password,
        addresses,
    )
    .await
}

/// Joins, retrying with back-off (1 s doubling to a minute) and one log line per try.
async fn join_until_done(
    cfg: &AgentConfig,
    password: &str,
    addresses: &[std::net::IpAddr],
) -> Credentials {
    let mut backoff = Duration::from_secs(1);
    loop {
        let r = join_once(cfg, password, addresses).await;
        match r {
            Ok(c) => return c,
            Err(e) => {
                let hint = match &e {
                    JoinError::Unreachable { .. } => "",
                    JoinError::CaMismatch { .. } | JoinError::Impostor { .. } => {
                        " (check --server, and that the token is this cluster's)"
                    }
                    JoinError::Unauthorized(_) => {
                        " (use the server's <data-dir>/server/node-token, or `kite token create`)"
                    }
                    _ => "",
                };
                tracing::error!(
                    server = %cfg.server.authority(),
                    retry_in_s = backoff.as_secs(),
                    "cannot join: {e}{hint}"
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// A kubeconfig of the node's identity, for admins and tools on the agent (kite's own
/// parts use the rotating client).
fn write_kubeconfig(path: &std::path::Path, url: &str, c: &Credentials) -> Result<()> {
    kite_pki::write_file_atomic(
        path,
        kite_pki::kubeconfig(url, &c.server_ca, &c.client).as_bytes(),
        0o600,
    )?;
    Ok(())
}

/// Where renewed certificates go.
struct Renewed {
    client: kite_pki::tls::Rotating,
    serving: kite_pki::tls::Rotating,
    dir: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
    lb_url: String,
}

/// Renews the node's certificates when a third of their life is left, by joining again
/// (same token, same keys' owner, new keys), and swaps them in without a restart.
async fn renew(
    cfg: AgentConfig,
    password: String,
    addresses: Vec<std::net::IpAddr>,
    mut creds: Credentials,
    to: Renewed,
) {
    loop {
        let wait = creds.due_in().clamp(1, 3600) as u64;
        tokio::time::sleep(Duration::from_secs(wait)).await;
        if !creds.due() {
            continue;
        }
        let r = join_once(&cfg, &password, &addresses).await;
        let fresh = match r {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("renewing the node's certificates: {e}; retrying in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
                continue;
            }
        };
        let applied = fresh
            .save(&to.dir)
            .map_err(anyhow::Error::from)
            .and_then(|_| write_kubeconfig(&to.kubeconfig, &to.lb_url, &fresh))
            .and_then(|_| Ok(to.client.set(&fresh.client)?))
            .and_then(|_| Ok(to.serving.set(&fresh.serving)?));
        match applied {
            Ok(()) => {
                tracing::info!(
                    valid_s = fresh.expires_in(),
                    "the node's certificates were renewed"
                );
                creds = fresh;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "keeping renewed certificates");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }
}

async fn serve(cfg: AgentConfig) -> Result<()> {
    let started = std::time::Instant::now();
    let dir = cfg.data_dir.join("agent");
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir)
        .with_context(|| format!("creating data dir {}", tls_dir.display()))?;
    let password =
        agent::node_password(&dir.join("node-password")).context("keeping the node password")?;
    let node_ip = match cfg.node.node_ip {
        Some(ip) => ip,
        None => source_address(&cfg.server).with_context(|| {
            format!(
                "no route to the server {}: pass --node-ip",
                cfg.server.authority()
            )
        })?,
    };
    let mut addresses = vec![node_ip];
    addresses.extend(cfg.node.node_external_ip);
    // (Its IPv6 InternalIP on a dual-stack cluster: the cluster is not known before the
    // join, so the host's detected one is in the certificate either way.)
    addresses.extend(crate::host::node_ip6(cfg.node.node_ip6, true).map(std::net::IpAddr::V6));
    let creds = match Credentials::load(&tls_dir) {
        Some(c) if still_good(&c, &cfg.node.node_name, &cfg.token) => {
            tracing::info!("using the certificates of an earlier join");
            c
        }
        _ => {
            let c = join_until_done(&cfg, &password, &addresses).await;
            c.save(&tls_dir)
                .context("keeping the node's certificates")?;
            tracing::info!(
                node = %cfg.node.node_name,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "joined the cluster"
            );
            c
        }
    };
    let (cluster_cidr, cluster_cidr_v6) =
        crate::config::parse_dual_cidr(&creds.cluster.cluster_cidr, 32, 128)
            .map_err(|why| anyhow::anyhow!("the server's cluster CIDR: {why}"))?;
    let (service_cidr, service_cidr_v6) =
        crate::config::parse_dual_cidr(&creds.cluster.service_cidr, 32, 128)
            .map_err(|why| anyhow::anyhow!("the server's service CIDR: {why}"))?;
    let cluster = crate::node::Cluster {
        cluster_cidr,
        cluster_cidr_v6,
        service_cidr,
        service_cidr_v6,
        cluster_dns: creds
            .cluster
            .cluster_dns
            .parse()
            .context("the server's cluster DNS")?,
        cluster_domain: creds.cluster.cluster_domain.clone(),
        network_backend: kite_network::Backend::parse(&creds.cluster.network_backend)
            .context("the server's network backend")?,
    };
    // The components reach the servers through the load balancer on loopback.
    let lb = kite_join::lb::LoadBalancer::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], cfg.lb_port)),
        cfg.server.authority(),
    )
    .await
    .with_context(|| format!("listening on 127.0.0.1:{} (--lb-server-port)", cfg.lb_port))?;
    lb.set_servers(creds.cluster.servers.clone());
    let lb_url = format!("https://127.0.0.1:{}", lb.addr.port());
    let kubeconfig = dir.join("kubelet.kubeconfig");
    write_kubeconfig(&kubeconfig, &lb_url, &creds)?;
    // The node's certificates are swapped in place when they are renewed.
    let client_cert = kite_pki::tls::Rotating::new(&creds.client)?;
    let serving_cert = kite_pki::tls::Rotating::new(&creds.serving)?;
    let client = kite_join::client::client(&lb_url, &creds.server_ca, client_cert.clone())?;
    tokio::spawn(renew(
        cfg.clone(),
        password.clone(),
        addresses.clone(),
        creds.clone(),
        Renewed {
            client: client_cert,
            serving: serving_cert.clone(),
            dir: tls_dir.clone(),
            kubeconfig: kubeconfig.clone(),
            lb_url: lb_url.clone(),
        },
    ));
    tokio::spawn(lb.clone().follow_endpoints(client.clone()));
    let ready = Arc::new(tokio::sync::Notify::new());
    crate::node::start(
        crate::node::Node {
            cfg: cfg.node.clone(),
            node_ip,
            cluster,
            data_dir: cfg.data_dir.clone(),
            role_labels: vec![],
            tls: kite_kubelet::server::Tls {
                serving: serving_cert,
                client_ca_pem: creds.client_ca.clone(),
            },
            local: kite_pki::tls::LocalDial::default(),
            ready: ready.clone(),
            bind: std::net::IpAddr::from([0, 0, 0, 0]),
            ensure_dns_service: false,
            dns: creds.cluster.dns,
        },
        |_| client.clone(),
    );
    ready.notified().await;
    tracing::info!(node = %cfg.node.node_name, "node is Ready");
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "kite is ready"
    );
    if let Err(e) = crate::notify::ready() {
        tracing::warn!(error = %e, "cannot tell systemd that kite is ready");
    }
    std::future::pending::<()>().await;
    Ok(())
}
