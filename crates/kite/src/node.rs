//! A node's parts, assembled once for both `kite server` and `kite agent`: the kubelet, the
//! service proxy, NetworkPolicy enforcement, the cluster DNS and the pod network between
//! nodes. Each runs under a supervisor that restarts it with back-off when it stops and
//! records a Warning event on the Node, so one failing part never ends the process.

use crate::config::NodeConfig;
use k8s_openapi::api::core::v1::ObjectReference;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Cluster-wide settings a node follows (a server's flags; an agent learns them on join).
#[derive(Debug, Clone)]
pub struct Cluster {
    pub cluster_cidr: ipnet::Ipv4Net,
    /// The pods' IPv6 range of a dual-stack cluster.
    pub cluster_cidr_v6: Option<ipnet::Ipv6Net>,
    pub service_cidr: ipnet::Ipv4Net,
    /// The Services' IPv6 range of a dual-stack cluster.
    pub service_cidr_v6: Option<ipnet::Ipv6Net>,
    pub cluster_dns: Ipv4Addr,
    pub cluster_domain: String,
    pub network_backend: kite_network::Backend,
}

/// Everything a node needs besides its API clients.
pub struct Node {
    pub cfg: NodeConfig,
    pub node_ip: IpAddr,
    pub cluster: Cluster,
    pub data_dir: PathBuf,
    /// Labels beyond the user's (a server's node is labelled control-plane).
    pub role_labels: Vec<(&'static str, &'static str)>,
    pub tls: kite_kubelet::server::Tls,
    pub local: kite_pki::tls::LocalDial,
    pub ready: Arc<tokio::sync::Notify>,
    /// Where the proxy's /healthz listens.
    pub bind: IpAddr,
    /// The server makes the cluster DNS Service; agents leave it to the server.
    pub ensure_dns_service: bool,
    /// Run the cluster DNS (not with `--disable dns`).
    pub dns: bool,
}

/// Starts the node's parts; `client_for(user)` gives each part its API client.
pub fn start(node: Node, client_for: impl Fn(&str) -> kube::Client) {
    let cfg = &node.cfg;
    let name = cfg.node_name.clone();
    let node_client = client_for(&format!("system:node:{name}"));
    let recorder = kite_runtime::events::Recorder::new(node_client.clone(), "kite", &name);
    let kubelet = kite_kubelet::Options {
        node_name: name.clone(),
        node_ip: node.node_ip,
        node_ip6: crate::host::node_ip6(cfg.node_ip6, node.cluster.cluster_cidr_v6.is_some()),
        external_ip: cfg.node_external_ip,
        taints: cfg.node_taints.clone(),
        data_dir: node.data_dir.clone(),
        cluster_cidr: node.cluster.cluster_cidr,
        cluster_cidr_v6: node.cluster.cluster_cidr_v6,
        cluster_dns: IpAddr::V4(node.cluster.cluster_dns),
        cluster_domain: node.cluster.cluster_domain.clone(),
        labels: node
            .role_labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(cfg.node_labels.clone())
            .collect(),
        containerd_socket: cfg.container_runtime_endpoint.clone(),
        registries: cfg.registries.clone(),
        cni_conf_dir: cfg.cni_conf_dir.clone(),
        cni_bin_dirs: cfg.cni_bin_dirs.clone(),
        pod_logs_dir: cfg.pod_logs_dir.clone(),
        log_rotation: cfg.log_rotation,
        eviction: cfg.eviction.clone(),
        port: cfg.kubelet_port,
        tls: Some(node.tls.clone()),
        local: node.local.clone(),
        ready: node.ready.clone(),
        cgroup_root: cfg.cgroup_root.clone(),
        tunnel_overhead: node.cluster.network_backend.overhead(),
    };
    if !cfg.disable_kube_proxy {
        let client = client_for("system:kube-proxy");
        let opts = kite_proxy::Options {
            node_name: name.clone(),
            settings: std::iter::once(kite_proxy::rules::Settings {
                cluster_cidr: node.cluster.cluster_cidr.into(),
                service_cidr: node.cluster.service_cidr.into(),
            })
            .chain(
                node.cluster
                    .cluster_cidr_v6
                    .zip(node.cluster.service_cidr_v6)
                    .map(|(c, s)| kite_proxy::rules::Settings {
                        cluster_cidr: c.into(),
                        service_cidr: s.into(),
                    }),
            )
            .collect(),
            healthz: (cfg.proxy_healthz_port != 0)
                .then(|| std::net::SocketAddr::new(node.bind, cfg.proxy_healthz_port)),
        };
        supervise("service proxy", &name, &recorder, move || {
            kite_proxy::run(client.clone(), opts.clone())
        });
    }
    if !cfg.disable_network_policy {
        let client = node_client.clone();
        let n = name.clone();
        supervise("network policy", &name, &recorder, move || {
            kite_netpol::run(client.clone(), n.clone())
        });
    }
    {
        let client = client_for("system:kube-dns");
        if node.ensure_dns_service {
            tokio::spawn(kite_dns::ensure_service(
                client.clone(),
                IpAddr::V4(node.cluster.cluster_dns),
            ));
        }
        let opts = kite_dns::Options {
            node_name: name.clone(),
            zone: node.cluster.cluster_domain.clone(),
            cluster_dns: IpAddr::V4(node.cluster.cluster_dns),
            ttl: 5,
            resolv_conf: cfg.resolv_conf.clone(),
            listen: None,
        };
        if node.dns {
            supervise("cluster DNS", &name, &recorder, move || {
                kite_dns::run(client.clone(), opts.clone())
            });
        }
    }
    if let IpAddr::V4(ip) = node.node_ip {
        let client = node_client.clone();
        let opts = kite_network::Options {
            node_name: name.clone(),
            node_ip: ip,
            cluster_cidr: node.cluster.cluster_cidr,
            cluster_cidr_v6: node.cluster.cluster_cidr_v6,
            backend: node.cluster.network_backend,
            key_dir: kite_network::wireguard::key_dir(&node.data_dir),
        };
        supervise("pod network", &name, &recorder, move || {
            kite_network::run(client.clone(), opts.clone())
        });
    }
    supervise("kubelet", &name, &recorder, move || {
        kite_kubelet::run(node_client.clone(), kubelet.clone())
    });
}

/// Runs `part` until it stops, then again after a back-off (1 s doubling to a minute,
/// back to 1 s after a minute of running), logging one line and recording a Warning
/// event `NodePartFailed` on the Node each time.
pub fn supervise<F, Fut>(
    part: &'static str,
    node: &str,
    recorder: &kite_runtime::events::Recorder,
    make: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let node = node.to_string();
    let recorder = recorder.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            let started = Instant::now();
            let why = match make().await {
                Ok(()) => "it stopped".to_string(),
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_secs(1);
            }
            tracing::error!(
                part,
                error = %why,
                retry_in_s = backoff.as_secs(),
                "a part of the node stopped; restarting it"
            );
            recorder.event_ref(
                ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(node.clone()),
                    uid: Some(node.clone()),
                    ..Default::default()
                },
                "Warning",
                "NodePartFailed",
                format!(
                    "{part} stopped: {why}; restarting in {}s",
                    backoff.as_secs()
                ),
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    });
}
