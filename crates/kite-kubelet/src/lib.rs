//! kite's kubelet: registers the node, heartbeats its Lease, keeps its status, and runs
//! the pods bound to it on containerd (see `pods`). It is an API client like every other
//! component, so the same code runs inside `kite server` and, later, `kite agent`.

pub mod cgroups;
pub mod cni;
pub mod containerd;
pub mod containers;
pub mod eviction;
mod exec;
pub mod image_volumes;
pub mod images;
pub mod logs;
pub mod network;
mod pods;
pub mod probes;
pub mod pull;
pub mod registries;
pub mod resize;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod service_env;
pub mod spec;
pub mod static_pods;
pub mod stats;
pub mod users;
pub mod volumes;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kite_runtime::{Change, Informers};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::Api;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const VERSION: &str = "v1.36.0+kite";

#[derive(Debug, Clone)]
pub struct Options {
    pub node_name: String,
    pub node_ip: IpAddr,
    /// A second, IPv6 InternalIP (`--node-ip v4,v6`).
    pub node_ip6: Option<std::net::Ipv6Addr>,
    pub external_ip: Option<IpAddr>,
    /// Taints the node registers with (later changes are the user's, as upstream).
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
    pub data_dir: PathBuf,
    pub cluster_cidr: ipnet::Ipv4Net,
    /// The pods' IPv6 range of a dual-stack cluster.
    pub cluster_cidr_v6: Option<ipnet::Ipv6Net>,
    pub cluster_dns: IpAddr,
    pub cluster_domain: String,
    /// Extra node labels (a server node is labelled control-plane, as K3s does).
    pub labels: BTreeMap<String, String>,
    /// An existing containerd socket; `None` starts kite's own.
    pub containerd_socket: Option<PathBuf>,
    /// Mirrors and credentials for pulls (`--private-registry`).
    pub registries: registries::Registries,
    /// CNI configurations (`--cni-conf-dir`); none there: the built-in network.
    pub cni_conf_dir: PathBuf,
    /// CNI plugins (`--cni-bin-dir`).
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Where container logs go (`/var/log/pods`); their links go to the `containers`
    /// directory beside it (`/var/log/containers`).
    pub pod_logs_dir: PathBuf,
    /// Container log rotation (`--container-log-max-size`, `--container-log-max-files`).
    pub log_rotation: logs::Rotation,
    /// Node-pressure eviction's thresholds (`--eviction-hard`).
    pub eviction: eviction::Settings,
    /// The port of the kubelet's HTTPS server (`--kubelet-port`), in the node's
    /// `daemonEndpoints`.
    pub port: u16,
    /// The kubelet server's certificates; `None` serves nothing (a simulated node).
    pub tls: Option<server::Tls>,
    /// Where an API server in this process reaches the kubelet server without TLS (see
    /// [`kite_pki::tls::LocalDial`]); served as the API server's kubelet client.
    pub local: kite_pki::tls::LocalDial,
    /// Notified once, when the node's status first goes out Ready (`kite server` tells
    /// systemd it is ready then).
    pub ready: Arc<tokio::sync::Notify>,
    /// The cgroup the node's pods go under (`--cgroup-root`; `kite`).
    pub cgroup_root: String,
    /// What the pod network's tunnel between nodes costs a packet
    /// (`kite_network::Backend::overhead`): pods get the node link's MTU less this.
    pub tunnel_overhead: u32,
}

impl Options {
    /// The directory of links to container logs, as log shippers expect
    /// (`/var/log/containers` beside `/var/log/pods`).
    pub fn container_links_dir(&self) -> PathBuf {
        self.pod_logs_dir.parent().map_or_else(
            || PathBuf::from("/var/log/containers"),
            |p| p.join("containers"),
        )
    }
}

/// Starts containerd (unless given one), imports `<data-dir>/agent/images`, registers the
/// node and runs until the process ends.
pub async fn run(client: kube::Client, opts: Options) -> Result<()> {
    cgroups::set_root(&opts.cgroup_root);
    let cd = connect_runtime(&opts).await?;
    tracing::info!("containerd answers");
    import_image_dir(&cd, &opts.data_dir).await;
    let version = cd.version().await.unwrap_or_default();
    // The port is bound before the node (re)registers, so nobody who reads its
    // daemonEndpoints finds it closed; it serves once the kubelet is built below.
    let bound = match &opts.tls {
        Some(_) => {
            let ip: std::net::IpAddr = if opts.node_ip.is_ipv6() {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            };
            Some(server::bind(std::net::SocketAddr::new(ip, opts.port)).await?)
        }
        None => None,
    };
    register(&client, &opts, &version).await?;
    let informers = Informers::new(client.clone());
    let nodes = informers.get_selected::<Node>(
        watcher::Config::default().fields(&format!("metadata.name={}", opts.node_name)),
    );
    let pods = informers.get_selected::<Pod>(
        watcher::Config::default().fields(&format!("spec.nodeName={}", opts.node_name)),
    );
    // Every Service, for the environment variables each container gets.
    let services = informers.get::<k8s_openapi::api::core::v1::Service>();
    // ConfigMaps and Secrets by metadata only: a change reaches the volumes of the pods
    // that use it at once (the kubelet reads the object itself when it rewrites).
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let config_maps = informers.get_metadata::<ConfigMap>();
    let secrets = informers.get_metadata::<Secret>();
    let kubelet = pods::Kubelet::new(
        client.clone(),
        cd,
        opts.clone(),
        nodes.clone(),
        pods.clone(),
        services,
        volumes::Objects::new(Some(config_maps.clone()), Some(secrets.clone())),
    );
    {
        let k = kubelet.clone();
        nodes.add_handler(move |c: &Change<Node>| {
            if !matches!(c, Change::Deleted(_)) {
                k.node_changed();
            }
        });
    }
    {
        let k = kubelet.clone();
        config_maps.add_handler(
            move |c: &Change<kube::core::PartialObjectMeta<ConfigMap>>| {
                let m = &c.object().metadata;
                let (ns, name) = (
                    m.namespace.as_deref().unwrap_or_default(),
                    m.name.as_deref().unwrap_or_default(),
                );
                k.objects.config_maps.forget(ns, name);
                k.source_changed(volumes::Source::ConfigMap, ns, name);
            },
        );
        let k = kubelet.clone();
        secrets.add_handler(move |c: &Change<kube::core::PartialObjectMeta<Secret>>| {
            let m = &c.object().metadata;
            let (ns, name) = (
                m.namespace.as_deref().unwrap_or_default(),
                m.name.as_deref().unwrap_or_default(),
            );
            k.objects.secrets.forget(ns, name);
            k.source_changed(volumes::Source::Secret, ns, name);
        });
    }
    kubelet.start().await;
    // The server lives as long as this run of the kubelet (a restart binds it again).
    let _server = match (bound, opts.tls.clone()) {
        (Some(b), Some(tls)) => Some(b.serve(tls, kubelet.clone(), &opts.local)?),
        _ => None,
    };
    heartbeat(client, opts, kubelet).await
}

/// Connects to the given containerd, or starts and supervises kite's own.
pub async fn connect_runtime(opts: &Options) -> Result<containerd::Containerd> {
    let socket = match &opts.containerd_socket {
        Some(s) => s.clone(),
        None => {
            let missing = containerd::missing_packages();
            if !missing.is_empty() {
                bail!(
                    "{} not found: install it (apt-get install {}), or run with --disable-agent",
                    missing.join(" and "),
                    missing.join(" ")
                );
            }
            let paths = containerd::Paths::new(&opts.data_dir);
            containerd::supervise(paths.clone()).await?;
            paths.socket
        }
    };
    containerd::Containerd::connect(&socket, Duration::from_secs(20)).await
}

/// Imports every archive in `<data-dir>/agent/images/`, as K3s does at start. Archives
/// already imported (same name, size and mtime, recorded in `.imported` beside them) are
/// skipped while containerd still has their images, so a restart writes nothing to
/// containerd while it is still reloading its tasks.
async fn import_image_dir(cd: &containerd::Containerd, data_dir: &std::path::Path) {
    let dir = data_dir.join("agent").join("images");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    let record = dir.join(".imported");
    let done: BTreeMap<String, Vec<String>> = std::fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut now_done: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files {
        let n = f.to_string_lossy();
        if !(n.ends_with(".tar")
            || n.ends_with(".tar.gz")
            || n.ends_with(".tgz")
            || n.ends_with(".tar.zst"))
        {
            continue;
        }
        let stamp = std::fs::metadata(&f)
            .map(|m| format!("{}:{}:{:?}", n, m.len(), m.modified().ok()))
            .unwrap_or_default();
        if let Some(names) = done.get(&stamp) {
            let mut all_there = true;
            for name in names {
                all_there &= matches!(images::resolve(cd, name).await, Ok(Some(_)));
            }
            if all_there {
                now_done.insert(stamp, names.clone());
                continue;
            }
        }
        tracing::info!(file = %f.display(), "importing images");
        match images::import_file(cd, &f).await {
            Ok(names) => {
                tracing::info!(file = %f.display(), images = ?names, "imported images");
                now_done.insert(stamp, names);
            }
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %format!("{e:#}"), "importing images")
            }
        }
    }
    if let Ok(b) = serde_json::to_vec(&now_done) {
        let _ = std::fs::write(&record, b);
    }
}

fn host_capacity(data_dir: &std::path::Path) -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.to_string()))
        })
        .unwrap_or_else(|| "0".into());
    let disk = nix::sys::statvfs::statvfs(data_dir)
        .map(|s| s.blocks() * s.fragment_size() / 1024)
        .unwrap_or(0);
    [
        ("cpu", cpus.to_string()),
        ("memory", format!("{mem_kib}Ki")),
        ("pods", "110".to_string()),
        ("ephemeral-storage", format!("{disk}Ki")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect()
}

/// The host's name, for hostNetwork pods' UTS namespace.
pub(crate) fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

fn addresses(opts: &Options) -> serde_json::Value {
    let mut a = vec![json!({"type": "InternalIP", "address": opts.node_ip.to_string()})];
    if let Some(ip6) = opts.node_ip6 {
        a.push(json!({"type": "InternalIP", "address": ip6.to_string()}));
    }
    if let Some(e) = opts.external_ip {
        a.push(json!({"type": "ExternalIP", "address": e.to_string()}));
    }
    a.push(json!({"type": "Hostname", "address": opts.node_name}));
    json!(a)
}

fn node_status(
    opts: &Options,
    runtime_version: &str,
    not_ready: Option<(&str, &str)>,
    pressure: kite_runtime::node::Pressure,
) -> serde_json::Value {
    let cap = host_capacity(&opts.data_dir);
    let uname = nix::sys::utsname::uname().ok();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    json!({
        "capacity": cap,
        "allocatable": cap,
        "conditions": kite_runtime::node::conditions(jiff::Timestamp::now(), not_ready, pressure),
        "addresses": addresses(opts),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": opts.port}},
        "nodeInfo": {
            "architecture": arch,
            "bootID": boot_id.trim(),
            "containerRuntimeVersion": format!("containerd://{runtime_version}"),
            "kernelVersion": uname.as_ref().map(|u| u.release().to_string_lossy().to_string()).unwrap_or_default(),
            "kubeProxyVersion": "",
            "kubeletVersion": VERSION,
            "machineID": machine_id.trim(),
            "operatingSystem": "linux",
            "osImage": os_image(),
            "systemUUID": machine_id.trim(),
        },
        // Containers' supplementary groups follow the pod's supplementalGroupsPolicy
        // (`users::resolve`), Strict included.
        "features": {"supplementalGroupsPolicy": true},
    })
}

/// The node's `status.images`, as upstream: one entry per image (its tags and its
/// `repo@digest`), largest first, at most 50.
fn node_images(list: Vec<images::Listed>) -> serde_json::Value {
    let mut by_target: BTreeMap<String, (Vec<String>, i64)> = BTreeMap::new();
    for i in list {
        let e = by_target.entry(i.digest.clone()).or_default();
        let by_digest = images::repo_digest(&i.name, &i.digest);
        for n in [by_digest, i.name] {
            if !e.0.contains(&n) {
                e.0.push(n);
            }
        }
        e.1 = e.1.max(i.size);
    }
    let mut v: Vec<(Vec<String>, i64)> = by_target.into_values().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(50);
    json!(v
        .into_iter()
        .map(|(mut names, size)| {
            names.sort();
            json!({"names": names, "sizeBytes": size})
        })
        .collect::<Vec<_>>())
}

async fn register(client: &kube::Client, opts: &Options, runtime_version: &str) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let mut labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", opts.node_name.as_str()),
        ("kubernetes.io/os", "linux"),
        (
            "kubernetes.io/arch",
            match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                a => a,
            },
        ),
        ("beta.kubernetes.io/os", "linux"),
        ("node.kubernetes.io/instance-type", "kite"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    labels.insert(
        "beta.kubernetes.io/arch".into(),
        labels["kubernetes.io/arch"].clone(),
    );
    labels.extend(opts.labels.clone());
    let status = node_status(
        opts,
        runtime_version,
        Some((
            "KubeletNotReady",
            "container runtime network not ready: the pod network is being set up",
        )),
        Default::default(),
    );
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": opts.node_name, "labels": labels,
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"taints": opts.taints},
        "status": status,
    }))?;
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            api.patch(
                &opts.node_name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"labels": labels}})),
            )
            .await
            .context("updating the node's labels")?;
        }
        Err(e) => return Err(e).context("registering the node"),
    }
    api.patch_status(
        &opts.node_name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .context("posting node status")?;
    tracing::info!(node = %opts.node_name, "node registered");
    Ok(())
}

/// Renews the node Lease every 10 s, and posts the status when readiness changes (or
/// the node controller marked it Unknown) and at least every minute.
async fn heartbeat(client: kube::Client, opts: Options, kubelet: Arc<pods::Kubelet>) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client.clone());
    let mut last_status = std::time::Instant::now() - Duration::from_secs(3600);
    let mut last_ready: Option<bool> = None;
    let mut said_ready = false;
    let mut last_pressure: Option<kite_runtime::node::Pressure> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    let mut images_now = json!([]);
    let mut images_posted = json!(null);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = kubelet.readiness.notified() => {}
        }
        if n.is_multiple_of(10) {
            let uid = kubelet.node().and_then(|n| n.metadata.uid.clone());
            if let Err(e) = kite_runtime::node::renew_lease(&leases, &opts.node_name, uid).await {
                tracing::debug!(error = %e, "lease renewal failed");
            }
        }
        n += 1;
        if n % 10 == 1 {
            if let Ok(list) = images::list(kubelet.runtime()).await {
                images_now = node_images(list);
            }
        }
        let not_ready = kubelet.not_ready_reason();
        let ready = not_ready.is_none();
        let held = kubelet.pressure();
        let pressure = kite_runtime::node::Pressure {
            memory: held.contains(&eviction::Pressure::Memory),
            disk: held.contains(&eviction::Pressure::Disk),
            pid: held.contains(&eviction::Pressure::Pid),
        };
        let shown_ready = kubelet.node().is_some_and(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == if ready { "True" } else { "False" })
        });
        if last_ready != Some(ready)
            || last_pressure != Some(pressure)
            || !shown_ready
            || images_now != images_posted
            || last_status.elapsed() > Duration::from_secs(60)
        {
            let version = kubelet.runtime_version().await;
            let reason = not_ready.as_ref().map(|(r, m)| (r.as_str(), m.as_str()));
            let mut status = node_status(&opts, &version, reason, pressure);
            status["images"] = images_now.clone();
            // A condition that did not change keeps its lastTransitionTime.
            if let (Some(node), Some(conds)) = (kubelet.node(), status["conditions"].as_array_mut())
            {
                let old = node
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.clone())
                    .unwrap_or_default();
                for c in conds.iter_mut() {
                    if let Some(o) = old
                        .iter()
                        .find(|o| c["type"] == o.type_.as_str() && c["status"] == o.status.as_str())
                    {
                        if let Some(t) = &o.last_transition_time {
                            c["lastTransitionTime"] = json!(t);
                        }
                    }
                }
                // Conditions others own (NetworkUnavailable, from the pod network) stay:
                // this merge patch replaces the whole list.
                let mine: Vec<String> = conds
                    .iter()
                    .filter_map(|c| c["type"].as_str().map(String::from))
                    .collect();
                for o in old.iter().filter(|o| !mine.contains(&o.type_)) {
                    conds.push(json!(o));
                }
            }
            match nodes
                .patch_status(
                    &opts.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": status})),
                )
                .await
            {
                Ok(_) => {
                    if ready && !said_ready {
                        said_ready = true;
                        opts.ready.notify_one();
                    }
                    images_posted = images_now.clone();
                    last_ready = Some(ready);
                    last_pressure = Some(pressure);
                    last_status = std::time::Instant::now();
                }
                // The Node was deleted (`kubectl delete node`): register it again, as
                // upstream's kubelet does, and post its status at once.
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    let version = kubelet.runtime_version().await;
                    match register(&client, &opts, &version).await {
                        Ok(()) => {
                            tracing::info!(node = %opts.node_name, "the node was deleted: registered it again");
                            last_ready = None;
                        }
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "registering the node again")
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "posting node status failed"),
            }
        }
    }
}
