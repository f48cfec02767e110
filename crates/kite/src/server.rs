//! `kite server`: opens the store, loads the PKI, writes kubeconfigs, and starts the API
//! server. Later issues add the controllers, scheduler and the node here.

use crate::config::ServerConfig;
use anyhow::{Context, Result};
use kite_apiserver::auth::{MastersAndComponents, UserInfo};
use kite_apiserver::objects::{ApiConfig, Objects};
use kite_store::{DynStore, SledStore};
use std::sync::Arc;

/// The serving certificate's names, as K3s chooses them.
fn sans(cfg: &ServerConfig) -> Vec<String> {
    let mut s = vec![
        "localhost".to_string(),
        "127.0.0.1".into(),
        "::1".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{}", cfg.cluster_domain),
        crate::host::hostname(),
        cfg.node.node_name.clone(),
        cfg.advertise.clone(),
    ];
    if let Some(first) = cfg.service_cidr.hosts().next() {
        s.push(first.to_string());
    }
    s.extend(crate::host::node_ips().iter().map(|ip| ip.to_string()));
    s.extend(cfg.tls_sans.iter().cloned());
    s.sort();
    s.dedup();
    s
}

/// Logs to stderr at `level` (or $KITE_LOG): colours only on a terminal, so a log file or
/// the journal holds plain text; JSON lines on request.
pub fn init_logging(level: &str, json: bool) {
    use std::io::IsTerminal;
    // kube-client logs an error per failed request; kite's components say once what
    // failed and retry, so its own lines would only repeat them (hundreds a second while
    // a server restarts).
    let filter = tracing_subscriber::EnvFilter::try_from_env("KITE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},kube_client::client::builder=off"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

pub fn run(cfg: ServerConfig) -> Result<()> {
    init_logging(if cfg.debug { "debug" } else { "info" }, cfg.log_json);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: ServerConfig) -> Result<()> {
    let started = std::time::Instant::now();
    // Notified by this process's kubelet when it first posts the node Ready: a Ready
    // status left in the API from before a restart does not count.
    let node_ready = Arc::new(tokio::sync::Notify::new());
    let server_dir = cfg.data_dir.join("server");
    std::fs::create_dir_all(&server_dir)
        .with_context(|| format!("creating data dir {}", server_dir.display()))?;
    let metrics = Arc::new(kite_apiserver::metrics::Metrics::default());
    let store: DynStore = kite_apiserver::metered::MeteredStore::wrap(
        Arc::new(SledStore::open(&server_dir.join("db")).with_context(|| {
            format!(
                "opening the datastore in {}",
                server_dir.join("db").display()
            )
        })?),
        metrics.clone(),
    );
    tracing::info!(path = %server_dir.join("db").display(), "datastore opened");
    let tls_dir = server_dir.join("tls");
    let fresh = !tls_dir.exists();
    let pki =
        kite_pki::Pki::load_or_create(&tls_dir, &sans(&cfg)).context("loading the cluster PKI")?;
    tracing::info!(
        dir = %tls_dir.display(),
        "{}",
        if fresh { "certificates created" } else { "certificates loaded" }
    );
    let pki = Arc::new(pki);
    let node_ip = cfg.node.node_ip.unwrap_or_else(|| {
        cfg.advertise
            .parse()
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
    });
    let secrets = crate::token::server_tokens(
        &server_dir,
        &pki.server_ca.cert_pem,
        cfg.token.as_deref(),
        cfg.agent_token.as_deref(),
    )?;
    let cluster = crate::node::Cluster {
        cluster_cidr: cfg.cluster_cidr,
        cluster_cidr_v6: cfg.cluster_cidr_v6,
        service_cidr: cfg.service_cidr,
        service_cidr_v6: cfg.service_cidr_v6,
        cluster_dns: cfg.cluster_dns,
        cluster_domain: cfg.cluster_domain.clone(),
        network_backend: cfg.network_backend,
    };
    let join = Arc::new(kite_join::server::JoinServer {
        cert_validity: cfg.node_cert_validity,
        pki: pki.clone(),
        secrets,
        client: Default::default(),
        cluster: kite_join::proto::ClusterInfo {
            cluster_cidr: crate::config::show_dual_cidr(cfg.cluster_cidr, cfg.cluster_cidr_v6),
            service_cidr: crate::config::show_dual_cidr(cfg.service_cidr, cfg.service_cidr_v6),
            cluster_dns: cfg.cluster_dns.to_string(),
            cluster_domain: cfg.cluster_domain.clone(),
            network_backend: cfg.network_backend.name().to_string(),
            servers: vec![if cfg.advertise.contains(':') {
                format!("[{}]:{}", cfg.advertise, cfg.port)
            } else {
                format!("{}:{}", cfg.advertise, cfg.port)
            }],
            dns: !cfg.disable_dns,
        },
    });
    let admin = pki.client_cert("admin", "system:admin", &["system:masters"])?;
    let local_url = format!("https://127.0.0.1:{}", cfg.port);
    kite_pki::write_file_atomic(
        &cfg.kubeconfig,
        kite_pki::kubeconfig(&local_url, &pki.server_ca.cert_pem, &admin).as_bytes(),
        cfg.kubeconfig_mode,
    )
    .with_context(|| format!("writing kubeconfig {}", cfg.kubeconfig.display()))?;
    tracing::info!(path = %cfg.kubeconfig.display(), "admin kubeconfig written");
    // Component identities, as upstream names them, for the controllers, scheduler and node.
    let cred = server_dir.join("cred");
    for (file, cn, org) in [
        ("controller", "system:kube-controller-manager", None),
        ("scheduler", "system:kube-scheduler", None),
        (
            "node",
            &*format!("system:node:{}", cfg.node.node_name),
            Some("system:nodes"),
        ),
    ] {
        let orgs: Vec<&str> = org.into_iter().collect();
        let c = pki.client_cert(file, cn, &orgs)?;
        kite_pki::write_file_atomic(
            &cred.join(format!("{file}.kubeconfig")),
            kite_pki::kubeconfig(&local_url, &pki.server_ca.cert_pem, &c).as_bytes(),
            0o600,
        )?;
    }
    // The API server reaches kubelets with its own client certificate (kubeadm's name)
    // and checks their serving certificates against the server CA.
    let kubelet_client = pki.client_cert(
        "kube-apiserver-kubelet",
        kite_kubelet::server::APISERVER_CLIENT,
        &["system:masters"],
    )?;
    let kubelet_client = kite_pki::tls::client_config(&pki.server_ca.cert_pem, &kubelet_client)?;
    let tls = kite_apiserver::serve::tls_config(
        &pki.serving.cert_pem,
        &pki.serving.key_pem,
        &pki.client_ca.cert_pem,
    )?;
    let objects = Objects::new(
        store.clone(),
        ApiConfig {
            service_cidr: cfg.service_cidr,
            service_cidr_v6: cfg.service_cidr_v6,
            strategy: kite_api::strategy::Settings {
                node_port_range: cfg.node_port_range,
                not_ready_toleration_seconds: cfg.not_ready_toleration_seconds,
                unreachable_toleration_seconds: cfg.unreachable_toleration_seconds,
            },
        },
    );
    // The API server reaches this server's own kubelet in-process (no socket, no TLS:
    // logs, exec and port-forward bytes cross one hop less); other nodes' over HTTPS.
    let local_kubelet = kite_pki::tls::LocalDial::default();
    let running = kite_apiserver::start(
        objects,
        metrics,
        kite_apiserver::ServerOptions {
            listen: std::net::SocketAddr::new(cfg.bind, cfg.port),
            advertise: cfg.advertise.clone(),
            tls,
            authorizer: Arc::new(MastersAndComponents),
            kubelet_client: Some(kubelet_client),
            local_kubelet: (!cfg.disable_agent)
                .then(|| (cfg.node.node_name.clone(), local_kubelet.clone())),
            service_account_key: Some(pki.service_account_key()?),
            extra_routes: Some(kite_join::server::router(join.clone())),
        },
    )
    .await?;
    kite_apiserver::spawn_compactor(store, cfg.compact_retain, cfg.compact_interval);
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        cluster_cidr = %crate::config::show_dual_cidr(cfg.cluster_cidr, cfg.cluster_cidr_v6),
        service_cidr = %crate::config::show_dual_cidr(cfg.service_cidr, cfg.service_cidr_v6),
        cluster_dns = %cfg.cluster_dns,
        "API server serving at https://{}",
        running.addr
    );
    // The lease holder identity is the node name, stable across restarts, so a restarted
    // server takes its leases back at once instead of waiting for them to expire.
    let identity = cfg.node.node_name.clone();
    // In-process components reach the API through the router itself, with the identity
    // their client certificate carries: no TCP, TLS or HTTP framing, same authorization and
    // admission. The kubeconfigs in server/cred are for components elsewhere.
    let local_client = |user: &str| {
        let mut groups = vec!["system:authenticated".to_string()];
        if user.starts_with("system:node:") {
            groups.insert(0, "system:nodes".into());
        }
        let svc = running.local_service::<kube::client::Body>(UserInfo {
            username: user.to_string(),
            groups,
            ..Default::default()
        });
        kube::Client::new(svc, "default")
    };
    let _ = join
        .client
        .set(local_client_admin(&running, "system:kite-join"));
    if !cfg.disable_controller_manager {
        let client = local_client("system:kube-controller-manager");
        let opts = kite_controllers::Options {
            cluster_cidr: cfg.cluster_cidr,
            cluster_cidr_v6: cfg.cluster_cidr_v6,
            node_cidr_mask: 24,
            node_monitor_grace_period: cfg.node_monitor_grace_period,
            root_ca_pem: pki.server_ca.cert_pem.clone(),
            identity: identity.clone(),
            servicelb: !cfg.disable_servicelb,
        };
        tokio::spawn(async move {
            if let Err(e) = kite_controllers::run(client, opts).await {
                tracing::error!(error = %format!("{e:#}"), "controller manager stopped");
            }
        });
    }
    // Auto-deploying manifests, with the rights of an administrator (as K3s's).
    {
        let client = local_client_admin(&running, "system:kite-manifests");
        let opts = kite_manifests::Options {
            dir: server_dir.join("manifests"),
            interval: std::time::Duration::from_secs(1),
        };
        tokio::spawn(async move {
            if let Err(e) = kite_manifests::run(client, opts).await {
                tracing::error!(error = %format!("{e:#}"), "auto-deploying manifests stopped");
            }
        });
    }
    if !cfg.disable_scheduler {
        let client = local_client("system:kube-scheduler");
        let id = identity.clone();
        tokio::spawn(async move {
            if let Err(e) = kite_scheduler::run(client, &id).await {
                tracing::error!(error = %format!("{e:#}"), "scheduler stopped");
            }
        });
    }
    if !cfg.disable_agent {
        // The kubelet's serving certificate, for the node's names and addresses.
        let mut names = vec![
            cfg.node.node_name.clone(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            node_ip.to_string(),
        ];
        names.extend(cfg.node.node_external_ip.map(|ip| ip.to_string()));
        names.extend(
            crate::host::node_ip6(cfg.node.node_ip6, cfg.cluster_cidr_v6.is_some())
                .map(|ip| ip.to_string()),
        );
        let kubelet_serving = pki.serving_cert("kubelet", &cfg.node.node_name, &names)?;
        crate::node::start(
            crate::node::Node {
                cfg: cfg.node.clone(),
                node_ip,
                cluster: cluster.clone(),
                data_dir: cfg.data_dir.clone(),
                role_labels: vec![
                    ("node-role.kubernetes.io/control-plane", "true"),
                    ("node-role.kubernetes.io/master", "true"),
                ],
                tls: kite_kubelet::server::Tls {
                    serving: kite_pki::tls::Rotating::new(&kubelet_serving)?,
                    client_ca_pem: pki.client_ca.cert_pem.clone(),
                },
                local: local_kubelet.clone(),
                ready: node_ready.clone(),
                bind: cfg.bind,
                ensure_dns_service: true,
                dns: !cfg.disable_dns,
            },
            local_client,
        );
    }
    // Ready: the API serves and, with a node, the node is Ready. systemd (Type=notify)
    // hears it through $NOTIFY_SOCKET.
    let node_name = cfg.node.node_name.clone();
    let with_node = !cfg.disable_agent;
    tokio::spawn(async move {
        if with_node {
            node_ready.notified().await;
            tracing::info!(node = %node_name, "node is Ready");
        }
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "kite is ready"
        );
        if let Err(e) = crate::notify::ready() {
            tracing::warn!(error = %e, "cannot tell systemd that kite is ready");
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        r = running.task => { r.context("API server task")?; }
    }
    tracing::info!("shutting down");
    Ok(())
}

/// An in-process client with an administrator's rights (components kite itself runs
/// for the cluster: auto-deployed manifests, the join endpoint).
fn local_client_admin(running: &kite_apiserver::RunningServer, user: &str) -> kube::Client {
    let svc = running.local_service::<kube::client::Body>(UserInfo {
        username: user.into(),
        groups: vec!["system:masters".into(), "system:authenticated".into()],
        ..Default::default()
    });
    kube::Client::new(svc, "default")
}

/// Logging, TLS provider and runtime for the commands that are API clients.
pub fn client_runtime() -> Result<tokio::runtime::Runtime> {
    init_logging("info", false);
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .context("starting the async runtime")
}

/// `kite scheduler`: the scheduler alone, against the cluster in `kubeconfig`.
pub fn run_scheduler(kubeconfig: &std::path::Path) -> Result<()> {
    client_runtime()?.block_on(async {
        let client = kite_runtime::client::from_kubeconfig(kubeconfig).await?;
        let id = format!("{}_{}", crate::host::hostname(), std::process::id());
        tokio::select! {
            r = kite_scheduler::run(client, &id) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

/// `kite sim`: simulated nodes against the cluster in `kubeconfig`.
pub fn run_sim(kubeconfig: &std::path::Path, opts: kite_sim::SimOptions) -> Result<()> {
    client_runtime()?.block_on(async {
        let client = kite_runtime::client::from_kubeconfig(kubeconfig).await?;
        tokio::select! {
            r = kite_sim::run(client, opts) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

/// `kite images …`: talks to the node's containerd directly.
pub fn run_images(args: &crate::config::ImagesArgs) -> Result<()> {
    use crate::config::ImagesAction;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let socket = args.containerd.socket();
        let cd = kite_kubelet::containerd::Containerd::connect(&socket, std::time::Duration::from_secs(2))
            .await
            .map_err(|_| anyhow::anyhow!("containerd is not running at {} (start `kite server`, or pass --data-dir / --container-runtime-endpoint)", socket.display()))?;
        match &args.action {
            ImagesAction::Import { files } => {
                for f in files {
                    let names = kite_kubelet::images::import_file(&cd, f).await?;
                    for n in names {
                        println!("imported {n}");
                    }
                }
            }
            ImagesAction::Ls => {
                println!("{:<60} {:<20} {:>10}", "IMAGE", "DIGEST", "SIZE");
                for i in kite_kubelet::images::list(&cd).await? {
                    let short = i.digest.trim_start_matches("sha256:").chars().take(12).collect::<String>();
                    println!("{:<60} {:<20} {:>10}", i.name, short, human(i.size));
                }
            }
            ImagesAction::Rm { names } => {
                for n in names {
                    kite_kubelet::images::remove(&cd, n).await?;
                    println!("removed {}", kite_kubelet::images::normalize(n));
                }
            }
        }
        Ok(())
    })
}

fn human(b: i64) -> String {
    let b = b as f64;
    if b >= 1048576.0 {
        format!("{:.1}MiB", b / 1048576.0)
    } else if b >= 1024.0 {
        format!("{:.1}KiB", b / 1024.0)
    } else {
        format!("{b}B")
    }
}
