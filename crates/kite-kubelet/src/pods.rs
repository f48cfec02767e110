//! Pod workers: one reconcile per pod key (through the work queue, so one at a time per
//! pod) that drives containerd toward the pod's spec and reports the pod's status.
//!
//! The containerd labels are the source of truth for what runs, so a restarted kite
//! adopts its containers instead of starting them again, and cleans up pods deleted
//! while it was down.

use crate::containerd::Containerd;
use crate::containers::{self, Info, State};
use crate::images::{self, Resolved};
use crate::logs;
use crate::network::Network;
use crate::probes;
use crate::runtime::Runtime;
use crate::sandbox::Sandbox;
use crate::static_pods;
use crate::Options;
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, Pod, Secret};
use kite_runtime::events::{Recorder, NORMAL, WARNING};
use kite_runtime::informer::{key_of, Informer, Key};
use kite_runtime::{queue::run_workers, Action, Change, WorkQueue};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod evict;
mod plan;
mod resize;
mod status;
mod summary;

use plan::is_sidecar;

const COMPONENT: &str = "kubelet";

/// Why a container is not running, shown as its `waiting` state.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Waiting {
    pub reason: String,
    pub message: String,
}

/// Why the kubelet failed a pod: its status's reason and message, and the grace period
/// its containers get (None: the pod's own).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Failure {
    pub reason: &'static str,
    pub message: String,
    pub grace: Option<Duration>,
}

/// When a failed pull may be tried again.
struct PullBackoff {
    until: std::time::Instant,
    next: Duration,
    last_error: String,
}

#[derive(Default)]
struct PodState {
    uid: String,
    waiting: HashMap<String, Waiting>,
    /// The pod's address, once its sandbox has one (for httpGet hooks).
    ip: Option<IpAddr>,
    /// The kubelet failed it (its activeDeadlineSeconds ran out, or it was evicted): its
    /// containers are stopped and its status says why.
    failed: Option<Failure>,
    /// Why an in-place resize waits or failed: the condition's type, reason and message.
    resize: Option<(&'static str, &'static str, String)>,
    /// The status this kubelet last posted, with the resourceVersion the API gave the pod
    /// for it: the worker reads its own last write even before the informer has it, and
    /// the watch event of that write (its echo) needs no sync.
    posted: Option<(u64, k8s_openapi::api::core::v1::PodStatus)>,
}

/// A resourceVersion as a number (kite's, like etcd's, are revisions), if it is one.
fn revision(pod: &Pod) -> Option<u64> {
    pod.metadata.resource_version.as_deref()?.parse().ok()
}

/// `pod` with the status this kubelet posted in place of its own, when that post is newer
/// than what the informer holds.
fn with_posted(
    pod: Arc<Pod>,
    posted: Option<&(u64, k8s_openapi::api::core::v1::PodStatus)>,
) -> Arc<Pod> {
    match newer_posted(&pod, posted) {
        Some(status) => {
            let mut p = (*pod).clone();
            p.status = Some(status.clone());
            Arc::new(p)
        }
        None => pod,
    }
}

/// The status this kubelet posted, if it is newer than `pod`'s.
fn newer_posted<'a>(
    pod: &Pod,
    posted: Option<&'a (u64, k8s_openapi::api::core::v1::PodStatus)>,
) -> Option<&'a k8s_openapi::api::core::v1::PodStatus> {
    match (posted, revision(pod)) {
        (Some((rv, status)), Some(cached)) if *rv > cached => Some(status),
        _ => None,
    }
}

/// Whether an update is the watch event of the kubelet's own status write: the very
/// version its patch made (a change by anyone else has another resourceVersion, and any
/// change before it came as an event of its own).
fn own_status_echo(
    new: &Pod,
    posted: Option<&(u64, k8s_openapi::api::core::v1::PodStatus)>,
) -> bool {
    matches!((posted, revision(new)), (Some((rv, _)), Some(n)) if *rv == n)
}

pub struct Kubelet {
    client: kube::Client,
    cd: Containerd,
    /// The pod worker's container verbs (containerd, behind [`Runtime`]).
    rt: Arc<dyn Runtime>,
    opts: Options,
    nodes: Arc<Informer<Node>>,
    pods: Arc<Informer<Pod>>,
    /// Every Service, for containers' Service environment variables.
    services: Arc<Informer<k8s_openapi::api::core::v1::Service>>,
    queue: WorkQueue<Key>,
    network: Mutex<Option<Arc<Network>>>,
    network_error: Mutex<Option<String>>,
    /// Set while the network is being set up, so it happens once.
    network_busy: std::sync::atomic::AtomicBool,
    /// Woken when the node's readiness may have changed (its network came up or failed),
    /// so the status goes out then, not at the next heartbeat.
    pub readiness: tokio::sync::Notify,
    state: Mutex<HashMap<Key, PodState>>,
    images: images::Cache,
    /// Images' /etc/passwd and /etc/group, for who a container runs as.
    accounts: crate::users::Cache,
    /// Pulls go one at a time, as upstream's serialized image pulls.
    pulls: tokio::sync::Mutex<()>,
    /// Failed pulls by (pod uid, image).
    pull_backoff: Mutex<HashMap<(String, String), PullBackoff>>,
    /// Static pods from the manifests dir, by their (mirror's) key.
    statics: Mutex<HashMap<Key, Arc<Pod>>>,
    /// Containers with a background Wait on their task.
    waiting_on: Arc<Mutex<HashSet<String>>>,
    /// Container starts in flight at once (see [`start_gate_size`]).
    start_gate: tokio::sync::Semaphore,
    /// Never-started pods between their sandbox and their start (see [`start_gate_size`]).
    pacing: Arc<tokio::sync::Semaphore>,
    recorder: Recorder,
    /// Probe results by container (see `probes`).
    probe_results: Arc<probes::Results>,
    /// Each running container's process spec, which execs and exec probes start from
    /// (it does not change while the container exists), by container id.
    process_specs: Mutex<HashMap<String, Arc<Value>>>,
    /// How many probes ran, for `/metrics/probes`.
    pub(crate) probe_counts: probes::Counts,
    /// ServiceAccount tokens of projected volumes.
    tokens: crate::volumes::Tokens,
    /// The ConfigMaps and Secrets volumes read, as last read.
    pub(crate) objects: crate::volumes::Objects,
    /// CPU samples of the node's and pods' cgroups, for `/stats/summary`.
    pub(crate) sampler: crate::stats::Sampler,
    /// Each pod's volumes once set up, by pod uid.
    volumes: Mutex<HashMap<String, crate::volumes::Ready>>,
    /// Containers stopped to be restarted with resized resources: started again at once,
    /// without a crash's back-off.
    resize_restarts: Mutex<HashSet<String>>,
    /// The node's pressure conditions (see `evict`), and their history.
    pressure: Mutex<Vec<crate::eviction::Pressure>>,
    pressure_conditions: Mutex<crate::eviction::Conditions>,
    /// See [`Kubelet::exec_io_dir`].
    exec_dir: std::sync::OnceLock<Option<PathBuf>>,
    /// See [`Kubelet::io_dir`].
    io_dir: std::sync::OnceLock<PathBuf>,
    /// See [`Kubelet::sandbox_dir`].
    sandboxes: std::sync::OnceLock<Option<PathBuf>>,
}

tokio::task_local! {
    /// A pod's place in the start pacing (see [`start_gate_size`]), held by its first sync
    /// from its sandbox until its container start is admitted (or it pulls an image).
    static PACING: std::cell::RefCell<Option<tokio::sync::OwnedSemaphorePermit>>;
}

/// Gives up this sync's place in the start pacing, if it holds one.
fn leave_pacing() {
    let _ = PACING.try_with(|p| p.borrow_mut().take());
}

/// How many container starts (containerd task create and start: the shim, `runc create`,
/// `runc init`, `runc start`) the node runs at once: twice its cores. Each start is
/// CPU-bound, so more at once only share the cores, and every pod of a burst is Ready
/// late; first come, first started lets the early ones be Ready early. Pod workers still
/// sync, pull, plumb and stop pods in parallel; only this step queues. A pod that never
/// started also waits for a place in the pacing (as many places) before its sandbox is
/// made, and leaves it when its start is admitted: a burst's sandboxes (namespaces, veths,
/// volumes) are made just ahead of their starts, not all at once beside the first starts.
fn start_gate_size() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `/dev/shm/kite-<what>-<dev>-<inode of the data dir>`, made (mode 0700; emptied first if
/// `fresh`), when /dev/shm is a tmpfs.
fn shm_dir(data_dir: &std::path::Path, what: &str, fresh: bool) -> Option<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmpfs = nix::sys::statfs::statfs("/dev/shm")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if !tmpfs {
        return None;
    }
    let id = std::fs::metadata(data_dir).ok()?;
    let dir = PathBuf::from(format!("/dev/shm/kite-{what}-{}-{}", id.dev(), id.ino()));
    if fresh {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
        .ok()?;
    Some(dir)
}

/// The pod's hostPort mappings (hostNetwork pods have none: they bind the node's ports).
/// The runtimeConfig `portMappings` of CNI plugins with that capability.
fn cni_ports(ports: &[crate::network::HostPort]) -> Vec<crate::cni::PortMapping> {
    ports
        .iter()
        .map(|p| crate::cni::PortMapping {
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: p.protocol.clone(),
            host_ip: p.host_ip.map(|i| i.to_string()),
        })
        .collect()
}

fn host_ports(pod: &Pod, pod_ip: std::net::Ipv4Addr) -> Vec<crate::network::HostPort> {
    let spec = pod.spec.clone().unwrap_or_default();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let hp = u16::try_from(p.host_port?).ok().filter(|h| *h > 0)?;
            Some(crate::network::HostPort {
                protocol: p.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
                host_ip: p.host_ip.as_deref().and_then(|h| h.parse().ok()),
                host_port: hp,
                pod_ip,
                container_port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect()
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

impl Kubelet {
    pub fn new(
        client: kube::Client,
        cd: Containerd,
        opts: Options,
        nodes: Arc<Informer<Node>>,
        pods: Arc<Informer<Pod>>,
        services: Arc<Informer<k8s_openapi::api::core::v1::Service>>,
        objects: crate::volumes::Objects,
    ) -> Arc<Self> {
        let recorder = Recorder::new(client.clone(), COMPONENT, &opts.node_name);
        Arc::new(Kubelet {
            client,
            rt: Arc::new(crate::runtime::Indexed::new(cd.clone())),
            cd,
            opts,
            nodes,
            pods,
            services,
            queue: WorkQueue::new(),
            network: Mutex::new(None),
            network_error: Mutex::new(None),
            network_busy: Default::default(),
            readiness: tokio::sync::Notify::new(),
            state: Mutex::default(),
            waiting_on: Arc::default(),
            start_gate: tokio::sync::Semaphore::new(start_gate_size()),
            pacing: Arc::new(tokio::sync::Semaphore::new(start_gate_size())),
            statics: Mutex::default(),
            images: Default::default(),
            accounts: Default::default(),
            pulls: Default::default(),
            pull_backoff: Mutex::default(),
            recorder,
            probe_results: Arc::default(),
            probe_counts: Default::default(),
            process_specs: Mutex::default(),
            tokens: Default::default(),
            objects,
            sampler: Default::default(),
            volumes: Mutex::default(),
            resize_restarts: Mutex::default(),
            pressure: Mutex::default(),
            pressure_conditions: Mutex::default(),
            exec_dir: Default::default(),
            io_dir: Default::default(),
            sandboxes: Default::default(),
        })
    }

    pub fn node(&self) -> Option<Arc<Node>> {
        self.nodes.get("", &self.opts.node_name)
    }

    pub fn runtime(&self) -> &Containerd {
        &self.cd
    }

    pub async fn runtime_version(&self) -> String {
        self.cd.version().await.unwrap_or_default()
    }

    /// `Some((reason, message))` while the node cannot run pods.
    pub fn not_ready_reason(&self) -> Option<(String, String)> {
        if self.network.lock().unwrap().is_some() {
            return None;
        }
        let msg = self
            .network_error
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| "the node has no podCIDR yet".into());
        Some((
            "KubeletNotReady".into(),
            format!("container runtime network not ready: {msg}"),
        ))
    }

    /// The node changed (its podCIDR arrived): set up the network once, then requeue
    /// every pod that was waiting on it.
    pub fn node_changed(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.network.lock().unwrap().is_some() || self.network_busy.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let k = self.clone();
        tokio::spawn(async move {
            let _done = Defer(|| k.network_busy.store(false, Ordering::SeqCst));
            let Some(cidr) = k
                .node()
                .and_then(|n| n.spec.as_ref()?.pod_cidr.clone())
                .and_then(|c| c.parse::<ipnet::Ipv4Net>().ok())
            else {
                return;
            };
            let mut net = Network::new(&k.opts.data_dir, cidr, k.opts.cluster_cidr);
            // A dual-stack node: its IPv6 podCIDR, when the cluster has an IPv6 range.
            let v6 = k.node().and_then(|n| {
                n.spec
                    .as_ref()?
                    .pod_cidrs
                    .as_ref()?
                    .iter()
                    .find_map(|c| c.parse::<ipnet::Ipv6Net>().ok())
            });
            if let Some((v6, all)) = v6.zip(k.opts.cluster_cidr_v6) {
                net = net.with_v6(&k.opts.data_dir, v6, all);
            }
            if let IpAddr::V4(ip) = k.opts.node_ip {
                match kite_network::netlink::mtu_of(ip).await {
                    Ok(m) => net = net.with_mtu(m.saturating_sub(k.opts.tunnel_overhead)),
                    // (Pods keep the kernel's default; path-MTU discovery then applies.)
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "the node IP's link MTU"),
                }
            }
            let cni =
                crate::cni::Cni::new(&k.opts.cni_conf_dir, &k.opts.cni_bin_dirs, &k.opts.data_dir);
            match cni.config() {
                Ok(Some(conf)) => {
                    tracing::info!(network = %conf.name, file = %conf.file.display(), "pods get their network from CNI plugins");
                    net = net.with_cni(cni);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "the CNI config is unreadable");
                    *k.network_error.lock().unwrap() = Some(e.to_string());
                    return;
                }
            }
            match net.ensure_host().await {
                Ok(()) => {
                    tracing::info!(pod_cidr = %cidr, "pod network ready");
                    *k.network.lock().unwrap() = Some(Arc::new(net));
                    *k.network_error.lock().unwrap() = None;
                    k.readiness.notify_one();
                    for p in k.pods.list() {
                        k.queue.add(key_of(&*p));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "setting up the pod network");
                    *k.network_error.lock().unwrap() = Some(format!("{e:#}"));
                    k.readiness.notify_one();
                }
            }
        });
    }

    pub async fn start(self: &Arc<Self>) {
        // Empties the exec FIFOs' directory of what a previous run left.
        self.exec_io_dir();
        {
            let q = self.queue.clone();
            let k = self.clone();
            self.pods.add_handler(move |c: &Change<Pod>| {
                let p = c.object();
                let key = key_of(&**p);
                // Upstream's pod config passes on only what changed; the kubelet's own
                // status coming back changes nothing it has not acted on.
                if let Change::Updated { new, .. } = c {
                    let state = k.state.lock().unwrap();
                    if own_status_echo(new, state.get(&key).and_then(|s| s.posted.as_ref())) {
                        return;
                    }
                }
                if let Change::Deleted(_) = c {
                    // Remember the uid: the worker cleans up by it.
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    k.state.lock().unwrap().entry(key.clone()).or_default().uid = uid;
                }
                q.add(key);
            });
        }
        self.pods.wait_synced().await;
        self.nodes.wait_synced().await;
        self.reattach_logs().await;
        self.node_changed();
        // Containers of pods that no longer exist (deleted while kite was down), now and
        // every 10 s after, so a failed clean-up is tried again.
        self.refresh_statics();
        let k = self.clone();
        tokio::spawn(async move {
            // Orphans are looked for at once and every 10 s (a failed or stuck clean-up
            // is tried again); manifests are read every 2 s.
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            let mut n = 0u32;
            loop {
                tick.tick().await;
                if n > 0 {
                    k.refresh_statics();
                }
                // Volumes that follow API objects (a changed ConfigMap, a token due) are
                // synced again every minute, as upstream's kubelet resyncs pods.
                if n > 0 && n.is_multiple_of(30) {
                    for p in k.pods.list() {
                        if crate::volumes::follows_api(&p) {
                            k.queue.add(key_of(&*p));
                        }
                    }
                }
                if n.is_multiple_of(5) {
                    let round = tokio::time::timeout(Duration::from_secs(60), k.remove_orphans());
                    if round.await.is_err() {
                        tracing::warn!(
                            "looking for orphaned containers took over 60 s; trying again"
                        );
                    }
                }
                n += 1;
            }
        });
        let k = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::stats::INTERVAL);
            loop {
                tick.tick().await;
                k.sample_stats().await;
            }
        });
        let k = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(evict::INTERVAL);
            loop {
                tick.tick().await;
                k.eviction_round().await;
            }
        });
        let k = self.clone();
        run_workers("kubelet-pods", self.queue.clone(), 32, move |key| {
            let k = k.clone();
            PACING.scope(
                std::cell::RefCell::new(None),
                async move { k.sync(key).await },
            )
        });
    }

    async fn remove_orphans(&self) {
        // What the node holds is listed before the pods are: a pod whose containers or
        // sandbox are being made now was in the informer before they were.
        let mut held = match self.rt.pod_uids().await {
            Ok(uids) => uids,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "listing containers");
                return;
            }
        };
        // And sandboxes of pods with no container left (a pod deleted while kite was down
        // before its first container was made).
        let sandboxes = self
            .sandboxes_root()
            .and_then(|r| std::fs::read_dir(r).ok());
        held.extend(
            sandboxes
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        );
        let mut known: HashSet<String> = self
            .pods
            .list()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        known.extend(
            self.statics
                .lock()
                .unwrap()
                .values()
                .filter_map(|p| p.metadata.uid.clone()),
        );
        let orphans = held.into_iter().filter(|u| !known.contains(u));
        for uid in orphans {
            tracing::info!(%uid, "removing the containers of a pod that no longer exists");
            if let Err(e) = self.teardown(&uid, Duration::from_secs(2)).await {
                tracing::warn!(%uid, error = %format!("{e:#}"), "removing an orphaned pod's containers");
            }
        }
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.opts.data_dir.join("agent").join("pods").join(uid)
    }

    /// Where a pod's sandbox is (its pinned namespaces and its hosts, hostname and
    /// resolv.conf; see `sandbox`): `<uid>` in this data dir's directory on the host's
    /// /dev/shm when that is a tmpfs (`kite-pods-<dev>-<inode>`, which kite-killall.sh
    /// finds the same way), else the pod's dir. A sandbox lives no longer than the host's
    /// boot, and its seven files and dirs, made and removed per pod on a disk filesystem,
    /// cost a tenth of kite's CPU in a burst of pod starts on a filesystem without a
    /// journal, where each new inode is searched for past those recently deleted. A sandbox a kite before this
    /// one pinned in the pod's dir stays there while it lives.
    fn sandbox_dir(&self, uid: &str) -> PathBuf {
        let root = self.sandboxes_root();
        crate::sandbox::choose(
            root.as_deref(),
            uid,
            &self.pod_dir(uid),
            crate::sandbox::live,
        )
    }

    fn sandboxes_root(&self) -> Option<PathBuf> {
        self.sandboxes
            .get_or_init(|| shm_dir(&self.opts.data_dir, "pods", false))
            .clone()
    }

    /// The log file of a pod's container for `kubectl logs` (`previous`: the instance
    /// before the current one) and the container's id, or upstream's kubelet's error
    /// (`validateContainerLogStatus`), judged from the pod's reported status.
    pub(crate) async fn container_log(
        &self,
        ns: &str,
        name: &str,
        container: &str,
        previous: bool,
    ) -> Result<(PathBuf, String), crate::server::LogError> {
        use crate::server::LogError;
        let pod = self
            .pods
            .get_key(&(ns.to_string(), name.to_string()))
            .ok_or_else(|| LogError::NotFound(format!("pod {ns}/{name} not found")))?;
        let status = pod.status.clone().unwrap_or_default();
        let cs = [
            status.container_statuses.as_deref(),
            status.init_container_statuses.as_deref(),
            status.ephemeral_container_statuses.as_deref(),
        ]
        .into_iter()
        .flatten()
        .flatten()
        .find(|c| c.name == container)
        .ok_or_else(|| {
            LogError::Bad(format!(
                "container {container:?} in pod {name:?} is not available"
            ))
        })?;
        let last = cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.container_id.clone())
            .filter(|id| !id.is_empty());
        let state = cs.state.clone().unwrap_or_default();
        let terminated_msg = || format!("container {container:?} in pod {name:?} is terminated");
        let id = if previous {
            last.ok_or_else(|| {
                LogError::Bad(format!(
                    "previous terminated container {container:?} in pod {name:?} not found"
                ))
            })?
        } else if state.running.is_some() {
            cs.container_id.clone().unwrap_or_default()
        } else if let Some(t) = &state.terminated {
            match t.container_id.clone().filter(|id| !id.is_empty()) {
                Some(id) => id,
                None => last.ok_or_else(|| LogError::Bad(terminated_msg()))?,
            }
        } else if cs
            .last_state
            .as_ref()
            .is_some_and(|s| s.terminated.is_some())
        {
            last.ok_or_else(|| LogError::Bad(terminated_msg()))?
        } else if let Some(w) = &state.waiting {
            let why = match w.reason.as_deref().unwrap_or_default() {
                "ErrImagePull" => "image can't be pulled".to_string(),
                "ImagePullBackOff" => "trying and failing to pull image".to_string(),
                r => r.to_string(),
            };
            return Err(LogError::Bad(format!(
                "container {container:?} in pod {name:?} is waiting to start: {why}"
            )));
        } else {
            return Err(LogError::Bad(format!(
                "container {container:?} in pod {name:?} is waiting to start - no logs yet"
            )));
        };
        let id = id.trim_start_matches("containerd://").to_string();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let infos = self
            .rt
            .list(&uid)
            .await
            .map_err(|e| LogError::Internal(format!("{e:#}")))?;
        let info = infos.iter().find(|i| i.id == id).ok_or_else(|| {
            LogError::Bad(format!(
                "container {container:?} in pod {name:?} is not available"
            ))
        })?;
        Ok((self.log_path(&pod, container, info.attempt), id))
    }

    /// The containerd id of a pod's running container, for exec and attach; upstream's
    /// kubelet's errors otherwise.
    pub(crate) fn running_container(
        &self,
        ns: &str,
        name: &str,
        container: &str,
    ) -> Result<String, crate::server::LogError> {
        use crate::server::LogError;
        let pod = self
            .pods
            .get_key(&(ns.to_string(), name.to_string()))
            .ok_or_else(|| LogError::NotFound("pod does not exist".into()))?;
        let status = pod.status.clone().unwrap_or_default();
        let id = [
            status.container_statuses.as_deref(),
            status.init_container_statuses.as_deref(),
            status.ephemeral_container_statuses.as_deref(),
        ]
        .into_iter()
        .flatten()
        .flatten()
        .find(|c| c.name == container && c.state.as_ref().is_some_and(|s| s.running.is_some()))
        .and_then(|c| c.container_id.clone())
        .map(|id| id.trim_start_matches("containerd://").to_string())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| LogError::NotFound(format!("container not found ({container:?})")));
        id
    }

    /// What a container's spec says of its terminal and stdin: `(tty, stdinOnce)`; attach
    /// follows them.
    pub(crate) fn container_stdio(&self, ns: &str, name: &str, container: &str) -> (bool, bool) {
        let Some(spec) = self
            .pods
            .get_key(&(ns.to_string(), name.to_string()))
            .and_then(|p| p.spec.clone())
        else {
            return (false, false);
        };
        let of = |tty: Option<bool>, once: Option<bool>| (tty == Some(true), once == Some(true));
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == container)
            .map(|c| of(c.tty, c.stdin_once))
            .or_else(|| {
                spec.ephemeral_containers
                    .iter()
                    .flatten()
                    .find(|c| c.name == container)
                    .map(|c| of(c.tty, c.stdin_once))
            })
            .unwrap_or_default()
    }

    /// A ConfigMap or Secret changed: the pods whose volumes are made from it sync again.
    pub fn source_changed(&self, kind: crate::volumes::Source, ns: &str, name: &str) {
        for p in self.pods.list_ns(ns) {
            if crate::volumes::references(&p, kind, name) {
                self.queue.add(key_of(&*p));
            }
        }
    }

    /// Where to dial a pod's ports from: its network namespace, or the node's for a
    /// hostNetwork pod.
    pub(crate) fn pod_network(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<crate::server::Target, crate::server::LogError> {
        use crate::server::LogError;
        let pod = self
            .pods
            .get_key(&(ns.to_string(), name.to_string()))
            .ok_or_else(|| LogError::NotFound("pod does not exist".into()))?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let host = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
        let netns = Sandbox::new(&self.sandbox_dir(&uid)).path("net");
        if !host && !netns.exists() {
            return Err(LogError::NotFound(format!(
                "pod {ns}/{name} has no network namespace on this node yet"
            )));
        }
        Ok(crate::server::Target {
            pod: name.to_string(),
            uid,
            netns: (!host).then_some(netns),
        })
    }

    /// Whether a container's task runs (a followed log goes on while it does).
    pub(crate) async fn container_running(&self, id: &str) -> bool {
        self.rt.is_running(id).await
    }

    /// Where containers' stdout, stderr and stdin FIFOs are (see `logs::Fifos`): this data
    /// dir's directory on the host's /dev/shm when that is a tmpfs
    /// (`kite-io-<dev>-<inode>`, found by kite-killall.sh the same way), else
    /// [`Self::disk_io_dir`]. Making and removing two FIFOs per container on a disk
    /// filesystem was a twentieth of kite's CPU in a burst of pod starts. Unlike
    /// [`Self::exec_io_dir`] it is kept when the kubelet starts: the FIFOs of containers
    /// that still run are read again.
    pub(crate) fn io_dir(&self) -> PathBuf {
        self.io_dir
            .get_or_init(|| {
                shm_dir(&self.opts.data_dir, "io", false).unwrap_or_else(|| self.disk_io_dir())
            })
            .clone()
    }

    /// The FIFOs' directory under the data dir, where kite put them all before it used
    /// /dev/shm (containers started then still write there).
    fn disk_io_dir(&self) -> PathBuf {
        self.opts.data_dir.join("agent").join("run").join("io")
    }

    /// Where a container's FIFOs may be: [`Self::io_dir`], then the disk one.
    pub(crate) fn io_dirs(&self) -> Vec<PathBuf> {
        let mut v = vec![self.io_dir()];
        let disk = self.disk_io_dir();
        if !v.contains(&disk) {
            v.push(disk);
        }
        v
    }

    /// Where the FIFOs of exec'd processes (probes, hooks, `kubectl exec`) are: a
    /// directory on the host's /dev/shm when that is a tmpfs (making and removing a FIFO on
    /// a disk filesystem was an eighth of exec probes' cost), else [`Self::io_dir`]. They
    /// live as long as their process. The directory is this data dir's own
    /// (`kite-exec-<dev>-<inode>` of the data dir, which kite-killall.sh finds the same
    /// way), emptied when the kubelet starts: what a killed kite left there is stale.
    pub(crate) fn exec_io_dir(&self) -> PathBuf {
        self.exec_dir
            .get_or_init(|| shm_dir(&self.opts.data_dir, "exec", true))
            .clone()
            .unwrap_or_else(|| self.io_dir())
    }

    /// After a restart: copies the output of the containers that still run again, and
    /// removes the FIFOs of those that are gone.
    async fn reattach_logs(&self) {
        // Each container's FIFOs by its id, in the directory they are in.
        let mut ids: HashMap<String, PathBuf> = HashMap::new();
        for dir in self.io_dirs() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = n.strip_suffix("-stdout") {
                    ids.entry(id.to_string()).or_insert_with(|| dir.clone());
                }
            }
        }
        if ids.is_empty() {
            return;
        }
        for pod in self.pods.list() {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let Ok(infos) = self.rt.list(&uid).await else {
                continue;
            };
            for i in infos {
                let Some(dir) = ids.remove(&i.id) else {
                    continue;
                };
                let log = self.log_path(&pod, &i.name, i.attempt);
                match logs::Fifos::reattach(&dir, &i.id, &log, self.opts.log_rotation) {
                    Ok(_) => tracing::debug!(container = %i.id, "copying its output again"),
                    Err(e) => {
                        tracing::warn!(container = %i.id, error = %e, "reopening a container's output")
                    }
                }
            }
        }
        for (id, dir) in ids {
            logs::Fifos::remove(&dir, &id);
        }
    }

    /// A pod's log directory, `<pod-logs-dir>/<namespace>_<name>_<uid>`, as upstream.
    fn pod_log_dir(&self, pod: &Pod) -> PathBuf {
        self.opts.pod_logs_dir.join(format!(
            "{}_{}_{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.name_any(),
            pod.metadata.uid.as_deref().unwrap_or_default()
        ))
    }

    /// The log of one instance of a container: `<pod log dir>/<container>/<attempt>.log`.
    pub(crate) fn log_path(&self, pod: &Pod, container: &str, attempt: u32) -> PathBuf {
        self.pod_log_dir(pod)
            .join(container)
            .join(format!("{attempt}.log"))
    }

    /// `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`, the link log shippers
    /// read.
    fn link_log(&self, pod: &Pod, container: &str, id: &str, log: &std::path::Path) {
        let dir = self.opts.container_links_dir();
        let link = dir.join(format!(
            "{}_{}_{container}-{id}.log",
            pod.name_any(),
            pod.metadata.namespace.as_deref().unwrap_or_default()
        ));
        let r = std::fs::create_dir_all(&dir).and_then(|_| std::os::unix::fs::symlink(log, &link));
        if let Err(e) = r {
            tracing::debug!(link = %link.display(), error = %e, "linking a container log");
        }
    }

    /// Removes the logs of pod `uid` and the links to them.
    fn remove_logs(&self, uid: &str) {
        let suffix = format!("_{uid}");
        let dirs: Vec<PathBuf> = std::fs::read_dir(&self.opts.pod_logs_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
            .map(|e| e.path())
            .collect();
        if dirs.is_empty() {
            return;
        }
        for e in std::fs::read_dir(self.opts.container_links_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let to = std::fs::read_link(e.path()).unwrap_or_default();
            if dirs.iter().any(|d| to.starts_with(d)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[tracing::instrument(skip(self), fields(pod = %format!("{}/{}", key.0, key.1)))]
    async fn sync(self: Arc<Self>, key: Key) -> Result<Action> {
        let static_pod = self.statics.lock().unwrap().get(&key).cloned();
        let api_pod = self.pods.get_key(&key);
        let pod = match (static_pod, api_pod) {
            (Some(sp), mirror) => {
                // A static pod runs from its manifest; its mirror shows it (and holds its
                // status). A mirror being deleted is replaced.
                let mirror = mirror.filter(|m| static_pods::is_mirror(m));
                let mut p = (*sp).clone();
                p.status = mirror.as_ref().and_then(|m| m.status.clone());
                self.ensure_mirror(&key, &sp, mirror.as_deref()).await?;
                Arc::new(p)
            }
            (None, Some(p)) if static_pods::is_mirror(&p) => {
                // Its manifest is gone: so go its containers and its mirror.
                let uid = self.state.lock().unwrap().remove(&key).map(|s| s.uid);
                if let Some(uid) = uid.filter(|u| !u.is_empty()) {
                    self.teardown(&uid, Duration::from_secs(0)).await?;
                }
                self.delete_api_pod(&p).await?;
                return Ok(Action::AwaitChange);
            }
            (None, Some(p)) => p,
            (None, None) => {
                let uid = self.state.lock().unwrap().remove(&key).map(|s| s.uid);
                if let Some(uid) = uid.filter(|u| !u.is_empty()) {
                    self.teardown(&uid, Duration::from_secs(0)).await?;
                }
                return Ok(Action::AwaitChange);
            }
        };

        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let pod = {
            let mut st = self.state.lock().unwrap();
            let s = st.entry(key.clone()).or_default();
            if s.uid != uid {
                *s = PodState {
                    uid: uid.clone(),
                    ..Default::default()
                };
            }
            with_posted(pod, s.posted.as_ref())
        };
        if pod.metadata.deletion_timestamp.is_some() {
            return self.terminate(&pod).await;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return Ok(Action::AwaitChange);
        }
        let Some(net) = self.network.lock().unwrap().clone() else {
            return Ok(Action::AwaitChange);
        };
        // A pod that never started is admitted first (see `evict`): under node pressure
        // it may be refused, as upstream's eviction manager refuses it. Then it waits for
        // its place in the start pacing.
        if pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .is_none()
        {
            if let Some(msg) = self.admission_refusal(&pod) {
                self.reject(&pod, "Evicted", msg).await?;
                return Ok(Action::AwaitChange);
            }
            if let Ok(place) = self.pacing.clone().acquire_owned().await {
                let _ = PACING.try_with(|p| *p.borrow_mut() = Some(place));
            }
        }
        let t0 = std::time::Instant::now();
        let ip = match self.ensure_sandbox(&pod, &net).await {
            Ok(ip) => {
                self.state
                    .lock()
                    .unwrap()
                    .entry(key.clone())
                    .or_default()
                    .ip = Some(ip);
                ip
            }
            Err(e) => {
                self.recorder.event(
                    &*pod,
                    WARNING,
                    "FailedCreatePodSandBox",
                    format!("Failed to create pod sandbox: {e:#}"),
                );
                return Err(e);
            }
        };
        let images = match self.image_volumes(&pod, &key, &uid).await? {
            Ok(m) => m,
            Err(wait) => {
                let running = self.rt.list(&uid).await?;
                self.report(&pod, &key, &running, ip).await?;
                return Ok(Action::Requeue(wait));
            }
        };
        let ctx = crate::volumes::sources::Ctx {
            client: &self.client,
            pod: &pod,
            tokens: &self.tokens,
            objects: &self.objects,
            node_ip: self.opts.node_ip.to_string(),
            images: &images,
        };
        let sandbox_ms = t0.elapsed().as_secs_f64() * 1000.0;
        match crate::volumes::setup(&ctx, &self.pod_dir(&uid)).await {
            Ok(ready) => {
                self.volumes.lock().unwrap().insert(uid.clone(), ready);
                tracing::debug!(
                    sandbox_ms,
                    volumes_ms = t0.elapsed().as_secs_f64() * 1000.0 - sandbox_ms,
                    "pod sandbox and volumes ready"
                );
            }
            Err(e) => {
                // As upstream: the pod waits in ContainerCreating and says why.
                self.recorder
                    .event(&*pod, WARNING, "FailedMount", e.to_string());
                let running = self.rt.list(&uid).await?;
                self.report(&pod, &key, &running, ip).await?;
                return Ok(Action::Requeue(Duration::from_secs(4)));
            }
        }
        // activeDeadlineSeconds, from the pod's start, as upstream's activeDeadlineHandler:
        // past it, the containers stop and the pod fails with DeadlineExceeded.
        // A pod without a startTime gets one from this sync's status, a moment from now:
        // the timer is set now, not by a later sync that may never come.
        let mut deadline_in = None;
        if let Some(secs) = pod.spec.as_ref().and_then(|s| s.active_deadline_seconds) {
            let start = pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map_or_else(now, |t| t.0);
            let end = start + jiff::SignedDuration::from_secs(secs.max(0));
            let left = end.duration_since(now());
            if left.is_positive() {
                deadline_in =
                    Some(Duration::from_secs_f64(left.as_secs_f64()) + Duration::from_millis(100));
            } else {
                self.fail(
                    &pod,
                    &key,
                    Failure {
                        reason: "DeadlineExceeded",
                        message: "Pod was active on the node longer than the specified deadline"
                            .into(),
                        grace: None,
                    },
                );
            }
        }
        let failed = self
            .state
            .lock()
            .unwrap()
            .get(&key)
            .and_then(|s| s.failed.clone());
        if let Some(f) = failed {
            let have = self.rt.list(&uid).await?;
            let grace = f.grace.unwrap_or_else(|| {
                Duration::from_secs(
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                        .unwrap_or(30)
                        .max(0) as u64,
                )
            });
            for c in have
                .iter()
                .filter(|c| matches!(c.state, State::Running { .. }))
            {
                self.rt.stop(&c.id, c.stop_signal, grace).await?;
            }
            let have = self.rt.list(&uid).await?;
            self.report(&pod, &key, &have, ip).await?;
            return Ok(Action::AwaitChange);
        }
        let running = self.rt.list(&uid).await?;
        let (resized, resize_in) = self.resize(&pod, &key, &running).await;
        let running = if resized {
            // A container may have been stopped for a restart.
            self.rt.list(&uid).await?
        } else {
            running
        };
        let requeue = self.drive(&pod, &key, &running).await?;
        let requeue = match (requeue, resize_in) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let requeue = match (requeue, deadline_in) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let running = self.rt.list(&uid).await?;
        for c in &running {
            if matches!(c.state, State::Running { .. }) {
                self.watch_exit(&c.id, key.clone());
            }
        }
        self.ensure_probes(&pod, &key, &running, ip);
        self.report(&pod, &key, &running, ip).await?;
        Ok(match requeue {
            Some(d) => Action::Requeue(d),
            None => Action::AwaitChange,
        })
    }

    /// Starts the probes of each running container instance that has probes and none
    /// started yet (see `probes`).
    fn ensure_probes(self: &Arc<Self>, pod: &Arc<Pod>, key: &Key, have: &[Info], ip: IpAddr) {
        let spec = pod.spec.clone().unwrap_or_default();
        let probed = spec.containers.iter().chain(
            spec.init_containers
                .iter()
                .flatten()
                .filter(|c| is_sidecar(c)),
        );
        for c in probed {
            let Some(i) = containers::running_instance(have, &c.name) else {
                continue;
            };
            if self.probe_results.has(&i.id) {
                continue;
            }
            for kind in [
                probes::Kind::Startup,
                probes::Kind::Liveness,
                probes::Kind::Readiness,
            ] {
                if kind.of(c).is_none() {
                    continue;
                }
                self.probe_results
                    .set(&i.id, kind, probes::Verdict::Unknown);
                let k = self.clone();
                let (pod, key, c, id) = (pod.clone(), key.clone(), c.clone(), i.id.clone());
                let signal = i.stop_signal;
                tokio::spawn(async move {
                    k.run_probe(&pod, &key, &c, &id, signal, kind, ip).await;
                    // A startup probe ends when it succeeds; the results go with the
                    // container.
                    if !k.rt.is_running(&id).await {
                        k.probe_results.forget(&id);
                    }
                });
            }
        }
    }

    /// One probe of one container instance, until the container stops (or this probe
    /// stops it).
    #[allow(clippy::too_many_arguments)]
    async fn run_probe(
        &self,
        pod: &Pod,
        key: &Key,
        c: &Container,
        id: &str,
        stop_signal: u32,
        kind: probes::Kind,
        ip: IpAddr,
    ) {
        use probes::{Kind, Verdict};
        let Some(p) = kind.of(c).cloned() else { return };
        let timing = probes::Timing::of(&p, kind);
        let mut threshold = probes::Threshold::new(timing);
        tokio::time::sleep(timing.initial_delay).await;
        // Whether the container still runs is asked of containerd when a probe fails (and
        // every 10 s besides, for a port another container of the pod answers): not
        // before every probe, which would double an HTTP probe's cost.
        const RECHECK: Duration = Duration::from_secs(10);
        let mut checked = tokio::time::Instant::now();
        if !self.rt.is_running(id).await {
            return;
        }
        // An exec probe's process spec, read once per container instance.
        let mut process: Option<Arc<Value>> = None;
        let series = probes::Series {
            probe_type: kind.name(),
            container: c.name.clone(),
            pod: key.1.clone(),
            namespace: key.0.clone(),
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        };
        loop {
            if checked.elapsed() >= RECHECK {
                if !self.rt.is_running(id).await {
                    return;
                }
                checked = tokio::time::Instant::now();
            }
            let waits_for_startup = kind != Kind::Startup
                && c.startup_probe.is_some()
                && self.probe_results.get(id, Kind::Startup) != Some(Verdict::Success);
            if waits_for_startup {
                // Probed as soon as the startup probe succeeds, not a period later (as
                // upstream's manager triggers the worker).
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            {
                let outcome = match &p.exec {
                    Some(e) => {
                        let cmd = e.command.clone().unwrap_or_default();
                        let io = self.exec_io_dir();
                        if process.is_none() {
                            process = self.process_spec(id).await.ok();
                        }
                        let r = match &process {
                            Some(p) => {
                                containers::exec_status_as(
                                    &self.cd,
                                    &io,
                                    id,
                                    p,
                                    &cmd,
                                    timing.timeout,
                                )
                                .await
                            }
                            None => Err(anyhow::anyhow!("the container is gone")),
                        };
                        match r {
                            // As upstream: the failure's message is the command's output.
                            Ok(x) if x.code == Some(0) => Ok(()),
                            Ok(x) if x.code.is_some() => {
                                let out = x.output.trim_end();
                                Err(if out.is_empty() {
                                    format!(
                                        "command {cmd:?} exited with {}",
                                        x.code.unwrap_or_default()
                                    )
                                } else {
                                    out.to_string()
                                })
                            }
                            Ok(_) => Err(format!(
                                "command timed out: {:?} timed out after {}s",
                                cmd.join(" "),
                                timing.timeout.as_secs()
                            )),
                            Err(e) => Err(format!("{e:#}")),
                        }
                    }
                    None => probes::probe_network(&p, c, ip, timing.timeout).await,
                };
                if outcome.is_err() && !self.rt.is_running(id).await {
                    // It stopped: not the probe's failure to report.
                    return;
                }
                self.probe_counts.count(&series, outcome.is_ok());
                if let Err(msg) = &outcome {
                    self.recorder.event(
                        pod,
                        WARNING,
                        "Unhealthy",
                        format!("{} probe failed: {msg}", kind.name()),
                    );
                }
                if let Some(v) = threshold.observe(outcome.is_ok()) {
                    if self.probe_results.set(id, kind, v) {
                        self.queue.add(key.clone());
                    }
                    if v == Verdict::Failure && kind != Kind::Readiness {
                        self.recorder.event(
                            pod,
                            NORMAL,
                            "Killing",
                            format!(
                                "Container {} failed {} probe, will be restarted",
                                c.name,
                                kind.name().to_lowercase()
                            ),
                        );
                        let grace = p
                            .termination_grace_period_seconds
                            .or_else(|| pod.spec.as_ref()?.termination_grace_period_seconds)
                            .unwrap_or(30)
                            .max(0) as u64;
                        let stop = self.rt.stop(id, stop_signal, Duration::from_secs(grace));
                        if let Err(e) = stop.await {
                            tracing::warn!(container = %id, error = %format!("{e:#}"), "stopping an unhealthy container");
                        }
                        return;
                    }
                    if v == Verdict::Success && kind == Kind::Startup {
                        // Started: the startup probe's work is done.
                        return;
                    }
                }
            }
            tokio::time::sleep(timing.period).await;
        }
    }

    /// Container `id`'s process spec, read from containerd once.
    pub(crate) async fn process_spec(&self, id: &str) -> Result<Arc<Value>> {
        if let Some(p) = self.process_specs.lock().unwrap().get(id) {
            return Ok(p.clone());
        }
        let p = Arc::new(containers::process_spec(&self.cd, id).await?);
        self.process_specs
            .lock()
            .unwrap()
            .insert(id.to_string(), p.clone());
        Ok(p)
    }

    /// Removes a container, and what the kubelet keeps about it.
    async fn remove_container(&self, id: &str) -> Result<()> {
        self.process_specs.lock().unwrap().remove(id);
        self.waiting_on.lock().unwrap().remove(id);
        self.rt.remove(id).await
    }

    /// Fails the pod (once): its containers stop at its next sync and its status says
    /// why; the event carries the reason.
    pub(crate) fn fail(&self, pod: &Pod, key: &Key, f: Failure) {
        let first = {
            let mut st = self.state.lock().unwrap();
            let s = st.entry(key.clone()).or_default();
            if s.failed.is_some() {
                false
            } else {
                s.failed = Some(f.clone());
                true
            }
        };
        if first {
            self.recorder.event(pod, WARNING, f.reason, f.message);
            self.queue.add(key.clone());
        }
    }

    fn watch_exit(&self, id: &str, key: Key) {
        if !self.waiting_on.lock().unwrap().insert(id.to_string()) {
            return;
        }
        let q = self.queue.clone();
        let waiting = self.waiting_on.clone();
        let id2 = id.to_string();
        // Wait also ends when containerd goes away (a restart): forget the watch so the
        // next sync, once containerd answers again, watches the container anew.
        self.rt.on_exit(
            id,
            Box::new(move || {
                waiting.lock().unwrap().remove(&id2);
                q.add(key)
            }),
        );
    }

    /// The pod's namespaces, address and files; returns its IP (the node's own for
    /// hostNetwork pods, which get no veth).
    async fn ensure_sandbox(&self, pod: &Pod, net: &Network) -> Result<IpAddr> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = self.sandbox_dir(&uid);
        let sb = Sandbox::new(&dir);
        if !sb.exists() {
            crate::cgroups::ensure_pod(pod).context("creating the pod's cgroup")?;
            self.update_qos_cgroups();
        }
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            if !sb.exists() {
                std::fs::create_dir_all(&dir)?;
                sb.create(&crate::host_name())?;
            }
            self.write_pod_files(pod, &dir, self.opts.node_ip)?;
            return Ok(self.opts.node_ip);
        }
        let name = pod.name_any();
        let ns = pod.namespace().unwrap_or_default();
        let who = crate::cni::PodRef {
            uid: &uid,
            namespace: &ns,
            name: &name,
        };
        let ports = host_ports(pod, std::net::Ipv4Addr::UNSPECIFIED);
        if let Some(ip) = net.pod_ip(&uid).filter(|_| sb.exists()) {
            // A pod keeps its address for its lifetime, as upstream: a failed CHECK is
            // reported, not repaired by plumbing a new address under running containers.
            // (The bridge plugin's CHECK, for one, fails whenever the bridge's MAC moved
            // because a port with a lower MAC joined.)
            if let Err(e) = net.check(&uid).await {
                tracing::warn!(
                    pod = %format!("{ns}/{name}"),
                    error = %format!("{e:#}"),
                    "the pod network failed CNI CHECK; keeping its address"
                );
            }
            self.set_hostports(net, &uid, pod, ip).await?;
            return Ok(IpAddr::V4(ip));
        }
        std::fs::create_dir_all(&dir)?;
        sb.create(&pod_hostname(pod))?;
        let ip = match net.plumb(&who, &sb.path("net"), &cni_ports(&ports)).await {
            Ok(ip) => ip,
            Err(e) => {
                sb.destroy();
                return Err(e);
            }
        };
        self.write_pod_files(pod, &dir, IpAddr::V4(ip))?;
        self.set_hostports(net, &uid, pod, ip).await?;
        Ok(IpAddr::V4(ip))
    }

    /// kite's DNAT for the pod's hostPorts, unless its CNI plugins map them.
    async fn set_hostports(
        &self,
        net: &Network,
        uid: &str,
        pod: &Pod,
        ip: std::net::Ipv4Addr,
    ) -> Result<()> {
        if net.plugin_maps_ports(uid) {
            return net.set_hostports(uid, &[]).await;
        }
        net.set_hostports(uid, &host_ports(pod, ip)).await
    }

    fn write_pod_files(&self, pod: &Pod, dir: &std::path::Path, ip: IpAddr) -> Result<()> {
        let ns = pod.namespace().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let hostname = if spec.host_network == Some(true) {
            crate::host_name()
        } else {
            pod_hostname(pod)
        };
        // A hostNetwork pod sees the node's own hosts file (and its host aliases), not one
        // the kubelet manages, as upstream's `nodeHostsFileContent`.
        let mut hosts = if spec.host_network == Some(true) {
            let mut h = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
            if !h.is_empty() && !h.ends_with('\n') {
                h.push('\n');
            }
            if spec.host_aliases.as_ref().is_some_and(|a| !a.is_empty()) {
                h.push_str("\n# Entries added by HostAliases.\n");
            }
            h
        } else {
            let mut h = String::from("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
            // With a subdomain, the pod's FQDN first, as upstream's kubelet writes it.
            match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => h.push_str(&format!(
                    "{ip}\t{hostname}.{sub}.{ns}.svc.{}\t{hostname}\n",
                    self.opts.cluster_domain
                )),
                None => h.push_str(&format!("{ip}\t{hostname}\n")),
            }
            if spec.host_aliases.as_ref().is_some_and(|a| !a.is_empty()) {
                h.push_str("\n# Entries added by HostAliases.\n");
            }
            h
        };
        for ha in spec.host_aliases.iter().flatten() {
            hosts.push_str(&format!(
                "{}\t{}\n",
                ha.ip,
                ha.hostnames.clone().unwrap_or_default().join("\t")
            ));
        }
        std::fs::write(dir.join("hosts"), hosts)?;
        std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
        let policy = spec
            .dns_policy
            .clone()
            .unwrap_or_else(|| "ClusterFirst".into());
        let host_net = spec.host_network == Some(true);
        // Name servers, searches and options before dnsConfig is merged in, as upstream.
        let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
            if policy == "None" {
                (vec![], vec![], vec![])
            } else if policy == "Default" || (policy == "ClusterFirst" && host_net) {
                let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                let mut out = (vec![], vec![], vec![]);
                for l in host.lines() {
                    let mut w = l.split_whitespace();
                    match w.next() {
                        Some("nameserver") => out.0.extend(w.map(String::from)),
                        Some("search") | Some("domain") => out.1.extend(w.map(String::from)),
                        Some("options") => out.2.extend(w.map(String::from)),
                        _ => {}
                    }
                }
                out
            } else {
                let d = &self.opts.cluster_domain;
                (
                    vec![self.opts.cluster_dns.to_string()],
                    vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()],
                    vec!["ndots:5".into()],
                )
            };
        if let Some(dc) = &spec.dns_config {
            for n in dc.nameservers.iter().flatten() {
                if !servers.contains(n) {
                    servers.push(n.clone());
                }
            }
            for sd in dc.searches.iter().flatten() {
                if !searches.contains(sd) {
                    searches.push(sd.clone());
                }
            }
            for o in dc.options.iter().flatten() {
                let opt = match &o.value {
                    Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                    None => o.name.clone().unwrap_or_default(),
                };
                let name = opt.split(':').next().unwrap_or_default().to_string();
                options.retain(|x| x.split(':').next() != Some(name.as_str()));
                options.push(opt);
            }
        }
        let mut resolv = String::new();
        if !searches.is_empty() {
            resolv.push_str(&format!("search {}\n", searches.join(" ")));
        }
        for n in servers.iter().take(3) {
            resolv.push_str(&format!("nameserver {n}\n"));
        }
        if !options.is_empty() {
            resolv.push_str(&format!("options {}\n", options.join(" ")));
        }
        std::fs::write(dir.join("resolv.conf"), resolv)?;
        Ok(())
    }

    /// Starts what should run: init containers in order, then the app containers.
    /// Returns when to look again (a back-off ending), if any.
    async fn drive(&self, pod: &Pod, key: &Key, have: &[Info]) -> Result<Option<Duration>> {
        let spec = pod.spec.clone().unwrap_or_default();
        let worker = Worker {
            k: self,
            pod,
            key,
            have,
        };
        plan::run(plan::plan(&spec, have), &worker).await
    }

    /// Starts a new attempt of `c`, unless its restart back-off has not run out.
    async fn start_or_backoff(
        &self,
        pod: &Pod,
        key: &Key,
        c: &Container,
        have: &[Info],
        init: bool,
    ) -> Result<Option<Duration>> {
        let spec_of_pod = pod.spec.clone().unwrap_or_default();
        let prev: Vec<&Info> = have.iter().filter(|i| i.name == c.name).collect();
        let last = prev.iter().max_by_key(|i| i.attempt).copied();
        let resized = last.is_some_and(|l| self.resize_restarts.lock().unwrap().remove(&l.id));
        if let Some(b) = last
            .filter(|_| !resized)
            .and_then(|l| plan::backoff(l, now()))
        {
            let msg = format!(
                "back-off {}s restarting failed container={} pod={}_{}({})",
                b.total.as_secs(),
                c.name,
                pod.name_any(),
                key.0,
                pod.metadata.uid.clone().unwrap_or_default()
            );
            if self.set_waiting(key, &c.name, "CrashLoopBackOff", &msg) {
                self.recorder.event(
                    pod,
                    WARNING,
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {} in pod {}_{}({})",
                        c.name,
                        pod.name_any(),
                        key.0,
                        pod.metadata.uid.clone().unwrap_or_default()
                    ),
                );
            }
            return Ok(Some(b.left));
        }
        let attempt = last.map(|l| l.attempt + 1).unwrap_or(0);
        // Keep only the attempt before this one, for lastState.
        for old in prev
            .iter()
            .filter(|i| last.is_some_and(|l| i.attempt < l.attempt))
        {
            self.remove_container(&old.id).await.ok();
        }
        let image_ref = c.image.clone().unwrap_or_default();
        let image = match self.ensure_image(pod, key, c, &image_ref).await? {
            Ok(i) => i,
            Err(delay) => return Ok(Some(delay)),
        };
        if let Err(msg) = crate::spec::check_non_root(pod, c, &image.config) {
            return Ok(Some(self.create_failed(
                pod,
                key,
                c,
                "CreateContainerConfigError",
                &msg,
            )));
        }
        let accounts = self.accounts.get(&self.cd, &image.top_snapshot).await?;
        let identity = match crate::users::resolve(
            pod,
            c,
            image
                .config
                .config()
                .as_ref()
                .and_then(|x| x.user().as_deref()),
            &accounts,
        ) {
            Ok(i) => i,
            Err(msg) => {
                return Ok(Some(self.create_failed(
                    pod,
                    key,
                    c,
                    "CreateContainerError",
                    &msg,
                )));
            }
        };
        let env = match self.resolve_env(pod, c, &image).await {
            Ok(e) => e,
            Err(e) => {
                let msg = format!("{e:#}");
                return Ok(Some(self.create_failed(
                    pod,
                    key,
                    c,
                    "CreateContainerConfigError",
                    &msg,
                )));
            }
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = self.pod_dir(&uid);
        let id = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let sandbox = Sandbox::new(&self.sandbox_dir(&uid));
        let ready = self
            .volumes
            .lock()
            .unwrap()
            .get(&uid)
            .cloned()
            .unwrap_or_default();
        let env_map: BTreeMap<String, String> = env.iter().cloned().collect();
        let volume_mounts = match ready.mounts(c, &env_map) {
            Ok(m) => m,
            Err(msg) => {
                return Ok(Some(self.create_failed(
                    pod,
                    key,
                    c,
                    "CreateContainerConfigError",
                    &msg,
                )));
            }
        };
        // An ephemeral container with a target shares its target's processes.
        let pid_ns = spec_of_pod
            .ephemeral_containers
            .iter()
            .flatten()
            .find(|e| e.name == c.name)
            .and_then(|e| e.target_container_name.as_deref())
            .and_then(|t| {
                plan::latest(have, t).and_then(|i| match i.state {
                    State::Running { pid } => Some(PathBuf::from(format!("/proc/{pid}/ns/pid"))),
                    _ => None,
                })
            });
        let spec = crate::spec::build(&crate::spec::Inputs {
            volume_mounts,
            pid_ns,
            pod,
            container: c,
            image: &image.config,
            env,
            pod_dir: &dir,
            sandbox: &sandbox,
            container_id: &id,
            identity: &identity,
        });
        let spec = match spec {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("{e:#}");
                return Ok(Some(self.create_failed(
                    pod,
                    key,
                    c,
                    "CreateContainerError",
                    &msg,
                )));
            }
        };
        let labels: HashMap<String, String> = [
            (containers::L_POD_UID, uid.clone()),
            (containers::L_POD_NAME, pod.name_any()),
            (containers::L_POD_NS, key.0.clone()),
            (containers::L_NAME, c.name.clone()),
            (containers::L_ATTEMPT, attempt.to_string()),
            ("kite.io/init", init.to_string()),
            (
                containers::L_STOP_SIGNAL,
                crate::spec::stop_signal(&image.config).to_string(),
            ),
            (
                containers::L_IMAGE_ID,
                crate::images::repo_digest(&image.name, &image.target),
            ),
            (containers::L_USER, identity.label()),
            (crate::resize::L_RESOURCES, crate::resize::label(c)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let log = self.log_path(pod, &c.name, attempt);
        let mut fifos = match logs::Fifos::create(&self.io_dir(), &id, &log, self.opts.log_rotation)
        {
            Ok(f) => f,
            Err(e) => {
                let msg = format!("setting up the container's log {}: {e}", log.display());
                return Ok(Some(self.create_failed(
                    pod,
                    key,
                    c,
                    "CreateContainerError",
                    &msg,
                )));
            }
        };
        let stdin = match c.stdin {
            Some(true) => match logs::make_stdin(&self.io_dir(), &id, c.stdin_once == Some(true)) {
                Ok(p) => Some(p),
                Err(e) => {
                    let msg = format!("setting up the container's stdin: {e}");
                    return Ok(Some(self.create_failed(
                        pod,
                        key,
                        c,
                        "CreateContainerError",
                        &msg,
                    )));
                }
            },
            _ => None,
        };
        let permit = self.start_gate.acquire().await;
        leave_pacing();
        let r = self
            .rt
            .create_and_start(containers::New {
                id: &id,
                image: &image,
                spec,
                labels,
                stdout: &fifos.stdout,
                stderr: &fifos.stderr,
                stdin: stdin.as_deref(),
                terminal: c.tty == Some(true),
            })
            .await;
        // The shim has its ends of the FIFOs now (or, if the create failed, never will).
        fifos.started();
        if r.is_ok() {
            self.link_log(pod, &c.name, &id, &log);
        }
        drop(permit);
        if let Err(e) = r {
            let msg = format!("{e:#}");
            self.remove_container(&id).await.ok();
            self.set_waiting(key, &c.name, "RunContainerError", &msg);
            self.recorder
                .event(pod, WARNING, "Failed", format!("Error: {msg}"));
            return Err(e);
        }
        self.clear_waiting(key, &c.name);
        self.recorder.event(
            pod,
            NORMAL,
            "Created",
            format!("Created container: {}", c.name),
        );
        self.recorder.event(
            pod,
            NORMAL,
            "Started",
            format!("Started container {}", c.name),
        );
        if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            // As upstream: the hook runs before the container counts as started; if it
            // fails, the container is killed (and restarted per the policy).
            if let Err(e) = self.run_hook(pod, key, &id, h).await {
                tracing::info!(container = %c.name, error = %e, "postStart hook failed");
                self.recorder
                    .event(pod, WARNING, "FailedPostStartHook", "PostStartHook failed");
                self.recorder
                    .event(pod, NORMAL, "Killing", "FailedPostStartHook");
                let grace = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .unwrap_or(30)
                    .max(0) as u64;
                let signal = crate::spec::stop_signal(&image.config);
                self.rt
                    .stop(&id, signal, Duration::from_secs(grace))
                    .await?;
            }
        }
        self.watch_exit(&id, key.clone());
        Ok(None)
    }

    /// Runs a lifecycle hook (postStart, preStop) of container `id`: exec in it, an HTTP
    /// GET to the pod, or a sleep.
    async fn run_hook(
        &self,
        pod: &Pod,
        key: &Key,
        id: &str,
        h: &k8s_openapi::api::core::v1::LifecycleHandler,
    ) -> std::result::Result<(), String> {
        if let Some(e) = &h.exec {
            let cmd = e.command.clone().unwrap_or_default();
            // Hooks have no timeout of their own upstream (preStop is bounded by the grace
            // period by its caller); a day is a bound that never matters.
            let io = self.exec_io_dir();
            let r = containers::exec_status(&self.cd, &io, id, &cmd, Duration::from_secs(86400));
            return match r.await {
                Ok(x) if x.code == Some(0) => Ok(()),
                Ok(x) => Err(format!(
                    "command {cmd:?} exited with {:?}: {}",
                    x.code,
                    x.output.trim_end()
                )),
                Err(e) => Err(format!("{e:#}")),
            };
        }
        if let Some(g) = &h.http_get {
            let ip = self
                .state
                .lock()
                .unwrap()
                .get(key)
                .and_then(|s| s.ip)
                .or_else(|| pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok())
                .ok_or_else(|| "the pod has no IP yet".to_string())?;
            let probe = k8s_openapi::api::core::v1::Probe {
                http_get: Some(g.clone()),
                ..Default::default()
            };
            let c = k8s_openapi::api::core::v1::Container::default();
            return probes::probe_network(&probe, &c, ip, Duration::from_secs(10)).await;
        }
        if let Some(s) = &h.sleep {
            tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
            return Ok(());
        }
        Err("the hook has no handler kite supports".into())
    }

    /// Runs the preStop hooks of the pod's running containers, at most `grace` long in
    /// all; returns the grace left for the stop signal (at least 2 s, as upstream).
    async fn run_pre_stop(&self, pod: &Pod, have: &[Info], grace: Duration) -> Duration {
        let key = key_of(pod);
        let spec = pod.spec.clone().unwrap_or_default();
        let all: Vec<&Container> = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .collect();
        let hooks = have
            .iter()
            .filter(|i| matches!(i.state, State::Running { .. }))
            .filter_map(|i| {
                let c = all.iter().find(|c| c.name == i.name)?;
                let h = c.lifecycle.as_ref()?.pre_stop.as_ref()?;
                Some((i.id.clone(), h.clone()))
            })
            .collect::<Vec<_>>();
        if hooks.is_empty() {
            return grace;
        }
        let started = std::time::Instant::now();
        let key = &key;
        let runs = hooks.iter().map(|(id, h)| async move {
            if let Err(e) = self.run_hook(pod, key, id, h).await {
                tracing::info!(container = %id, error = %e, "preStop hook failed");
                // As upstream: the message may hold secrets, so the event does not.
                self.recorder
                    .event(pod, WARNING, "FailedPreStopHook", "PreStopHook failed");
            }
        });
        let _ = tokio::time::timeout(grace, futures::future::join_all(runs)).await;
        grace
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(2))
    }

    /// The pod's image volumes, pulled (as a container's image, by the volume's pull
    /// policy) and mounted read-only (see `image_volumes`); `Err(delay)` while one is not
    /// there yet (a pull in back-off, or a failed mount, with its event).
    async fn image_volumes(
        &self,
        pod: &Pod,
        key: &Key,
        uid: &str,
    ) -> Result<std::result::Result<HashMap<String, PathBuf>, Duration>> {
        let mut out = HashMap::new();
        let spec = pod.spec.clone().unwrap_or_default();
        for v in spec.volumes.iter().flatten() {
            let Some(src) = &v.image else { continue };
            let dir = self
                .pod_dir(uid)
                .join("volumes/kubernetes.io~image")
                .join(&v.name);
            if crate::volumes::is_mount_point(&dir) {
                out.insert(v.name.clone(), dir);
                continue;
            }
            let reference = src.reference.clone().unwrap_or_default();
            let policy = src
                .pull_policy
                .clone()
                .unwrap_or_else(|| kite_api::strategy::default_pull_policy(&reference).into());
            let as_container = Container {
                name: v.name.clone(),
                image: Some(reference.clone()),
                image_pull_policy: Some(policy),
                ..Default::default()
            };
            let img = match self
                .ensure_image(pod, key, &as_container, &reference)
                .await?
            {
                Ok(img) => img,
                Err(wait) => return Ok(Err(wait)),
            };
            let mounted =
                crate::image_volumes::mount(&self.cd, uid, &v.name, &img.top_snapshot, &dir).await;
            if let Err(e) = mounted {
                self.recorder.event(
                    pod,
                    WARNING,
                    "FailedMount",
                    format!("MountVolume.SetUp failed for volume \"{}\" : {e:#}", v.name),
                );
                return Ok(Err(Duration::from_secs(4)));
            }
            out.insert(v.name.clone(), dir);
        }
        Ok(Ok(out))
    }

    /// The image, present locally; `None` (with the container waiting and an event)
    /// when it cannot be had.
    /// The container's image, pulled per its imagePullPolicy; `Err(delay)` while it is not
    /// there (the waiting state and events say why), to try again after `delay`.
    async fn ensure_image(
        &self,
        pod: &Pod,
        key: &Key,
        c: &Container,
        image_ref: &str,
    ) -> Result<std::result::Result<Resolved, Duration>> {
        let name = images::normalize(image_ref);
        let policy = c.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
        let present = self.images.resolve(&self.cd, &name).await?;
        if policy != "Always" {
            if let Some(img) = present {
                self.recorder.event(
                    pod,
                    NORMAL,
                    "Pulled",
                    format!("Container image \"{image_ref}\" already present on machine"),
                );
                return Ok(Ok(img));
            }
        }
        if policy == "Never" {
            let msg =
                format!("Container image \"{image_ref}\" is not present with pull policy of Never");
            if self.set_waiting(key, &c.name, "ErrImageNeverPull", &msg) {
                self.recorder
                    .event(pod, WARNING, "ErrImageNeverPull", msg.clone());
                self.recorder.event(
                    pod,
                    WARNING,
                    "Failed",
                    "Error: ErrImageNeverPull".to_string(),
                );
            }
            return Ok(Err(Duration::from_secs(10)));
        }
        // Upstream's image back-off: per pod and image, 10 s doubling to 5 min.
        let bkey = (pod.metadata.uid.clone().unwrap_or_default(), name.clone());
        let wait = self.pull_backoff.lock().unwrap().get(&bkey).and_then(|b| {
            b.until
                .checked_duration_since(std::time::Instant::now())
                .map(|d| (d, b.last_error.clone()))
        });
        if let Some((left, last)) = wait {
            let msg = format!("Back-off pulling image \"{image_ref}\": ErrImagePull: {last}");
            if self.set_waiting(key, &c.name, "ImagePullBackOff", &msg) {
                self.recorder.event(
                    pod,
                    NORMAL,
                    "BackOff",
                    format!("Back-off pulling image \"{image_ref}\""),
                );
                self.recorder.event(
                    pod,
                    WARNING,
                    "Failed",
                    "Error: ImagePullBackOff".to_string(),
                );
            }
            return Ok(Err(left));
        }
        // A pull takes as long as it takes: not in the place of a pod that could start.
        leave_pacing();
        let creds = self.pull_credentials(pod).await;
        self.recorder.event(
            pod,
            NORMAL,
            "Pulling",
            format!("Pulling image \"{image_ref}\""),
        );
        let asked = std::time::Instant::now();
        let _one_at_a_time = self.pulls.lock().await;
        let started = std::time::Instant::now();
        let r = crate::pull::pull(&self.cd, &self.opts.registries, &name, &creds).await;
        drop(_one_at_a_time);
        let resolved = match r {
            Ok(p) => {
                self.pull_backoff.lock().unwrap().remove(&bkey);
                self.recorder.event(
                    pod,
                    NORMAL,
                    "Pulled",
                    format!(
                        "Successfully pulled image \"{image_ref}\" in {:.3}s ({:.3}s including waiting). Image size: {} bytes.",
                        started.elapsed().as_secs_f64(),
                        asked.elapsed().as_secs_f64(),
                        p.size
                    ),
                );
                self.images.resolve(&self.cd, &name).await
            }
            Err(e) => Err(anyhow::anyhow!(e)),
        };
        match resolved {
            Ok(Some(img)) => Ok(Ok(img)),
            other => {
                let why = match other {
                    Err(e) => format!("{e:#}"),
                    _ => format!("{name}: the pulled image is not in containerd"),
                };
                let mut bo = self.pull_backoff.lock().unwrap();
                let next = bo
                    .get(&bkey)
                    .map(|b| (b.next * 2).min(plan::MAX_BACKOFF))
                    .unwrap_or(Duration::from_secs(10));
                bo.insert(
                    bkey,
                    PullBackoff {
                        until: std::time::Instant::now() + next,
                        next,
                        last_error: why.clone(),
                    },
                );
                drop(bo);
                let msg = format!("Failed to pull image \"{image_ref}\": {why}");
                self.set_waiting(key, &c.name, "ErrImagePull", &why);
                self.recorder.event(pod, WARNING, "Failed", msg);
                self.recorder
                    .event(pod, WARNING, "Failed", "Error: ErrImagePull".to_string());
                // The pod now waits out its back-off: the next sync, a second from now,
                // says so (ImagePullBackOff, as upstream's next sync does). Nothing else
                // would sync it before the back-off ends: its own status write does not.
                Ok(Err(Duration::from_secs(1).min(next)))
            }
        }
    }

    /// Credentials from the pod's imagePullSecrets; a missing secret is a warning, as upstream.
    async fn pull_credentials(&self, pod: &Pod) -> Vec<(String, (String, String))> {
        let ns = pod.namespace().unwrap_or_default();
        let names: Vec<String> = pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name)
            .filter(|n| !n.is_empty())
            .collect();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for n in names {
            match api.get_opt(&n).await {
                Ok(Some(s)) => {
                    let data: BTreeMap<String, Vec<u8>> = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    out.extend(crate::registries::pull_secret_auths(&data));
                }
                _ => missing.push(format!("\"{n}\"")),
            }
        }
        if !missing.is_empty() {
            self.recorder.event(
                pod,
                WARNING,
                "FailedToRetrieveImagePullSecret",
                format!(
                    "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                    missing.join(", ")
                ),
            );
        }
        out
    }

    /// Sets the QoS tiers' CPU shares from the node's pods (a failure is logged: the
    /// pods still run, with less fair CPU sharing between tiers).
    fn update_qos_cgroups(&self) {
        let pods = self.pods.list();
        if let Err(e) = crate::cgroups::update_qos(pods.iter().map(|p| p.as_ref())) {
            tracing::warn!(error = %format!("{e:#}"), "setting the QoS cgroups");
        }
    }

    /// A container that cannot be made from its spec (`reason`, upstream's
    /// CreateContainerConfigError or CreateContainerError): it waits with the message,
    /// one Failed event says why, and the pod is tried again in 10 s.
    fn create_failed(
        &self,
        pod: &Pod,
        key: &Key,
        c: &Container,
        reason: &str,
        msg: &str,
    ) -> Duration {
        if self.set_waiting(key, &c.name, reason, msg) {
            self.recorder
                .event(pod, WARNING, "Failed", format!("Error: {msg}"));
        }
        Duration::from_secs(10)
    }

    /// Records why a container waits; true if that is news.
    fn set_waiting(&self, key: &Key, name: &str, reason: &str, message: &str) -> bool {
        let w = Waiting {
            reason: reason.into(),
            message: message.into(),
        };
        let mut st = self.state.lock().unwrap();
        let s = st.entry(key.clone()).or_default();
        s.waiting.insert(name.to_string(), w.clone()) != Some(w)
    }

    fn clear_waiting(&self, key: &Key, name: &str) {
        if let Some(s) = self.state.lock().unwrap().get_mut(key) {
            s.waiting.remove(name);
        }
    }

    /// The container's environment: containerd's default `PATH`, then the image env, then
    /// `envFrom`, then `env` (with `$(VAR)` expansion against what came before), as upstream.
    async fn resolve_env(
        &self,
        pod: &Pod,
        c: &Container,
        image: &Resolved,
    ) -> Result<Vec<(String, String)>> {
        let ns = pod.namespace().unwrap_or_default();
        // containerd's default spec (and Docker) give a process this PATH; an image's own
        // `Env` replaces it, and an image without one (built `FROM scratch`) keeps it.
        let mut out: Vec<(String, String)> =
            vec![("PATH".into(), crate::spec::DEFAULT_PATH.into())];
        let set = |out: &mut Vec<(String, String)>, k: String, v: String| {
            if let Some(e) = out.iter_mut().find(|(n, _)| *n == k) {
                e.1 = v;
            } else {
                out.push((k, v));
            }
        };
        for e in image
            .config
            .config()
            .clone()
            .unwrap_or_default()
            .env()
            .clone()
            .unwrap_or_default()
        {
            if let Some((k, v)) = e.split_once('=') {
                set(&mut out, k.into(), v.into());
            }
        }
        set(&mut out, "HOSTNAME".into(), pod_hostname(pod));
        // Service variables come before the container's own, which may use or override
        // them; as upstream, none at all until the Services have been read once.
        if !self.services.has_synced() {
            anyhow::bail!(
                "services have not yet been read at least once, cannot construct envvars"
            );
        }
        let links = pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false);
        for (k, v) in crate::service_env::vars(&ns, links, &self.services.list()) {
            set(&mut out, k, v);
        }
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        for src in c.env_from.iter().flatten() {
            let prefix = src.prefix.clone().unwrap_or_default();
            if let Some(r) = &src.config_map_ref {
                match cms.get_opt(&r.name).await? {
                    Some(cm) => {
                        for (k, v) in cm.data.unwrap_or_default() {
                            set(&mut out, format!("{prefix}{k}"), v);
                        }
                    }
                    None if r.optional == Some(true) => {}
                    None => anyhow::bail!("configmap \"{}\" not found", r.name),
                }
            }
            if let Some(r) = &src.secret_ref {
                match secrets.get_opt(&r.name).await? {
                    Some(s) => {
                        for (k, v) in s.data.unwrap_or_default() {
                            set(
                                &mut out,
                                format!("{prefix}{k}"),
                                String::from_utf8_lossy(&v.0).into(),
                            );
                        }
                    }
                    None if r.optional == Some(true) => {}
                    None => anyhow::bail!("secret \"{}\" not found", r.name),
                }
            }
        }
        for e in c.env.iter().flatten() {
            let value = if let Some(v) = &e.value {
                let so_far: BTreeMap<String, String> = out.iter().cloned().collect();
                Some(crate::spec::expand(v, &so_far))
            } else if let Some(vf) = &e.value_from {
                if let Some(r) = &vf.config_map_key_ref {
                    match cms.get_opt(&r.name).await? {
                        Some(cm) => match cm.data.unwrap_or_default().get(&r.key) {
                            Some(v) => Some(v.clone()),
                            None if r.optional == Some(true) => None,
                            None => anyhow::bail!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                r.key,
                                ns,
                                r.name
                            ),
                        },
                        None if r.optional == Some(true) => None,
                        None => anyhow::bail!("configmap \"{}\" not found", r.name),
                    }
                } else if let Some(r) = &vf.secret_key_ref {
                    match secrets.get_opt(&r.name).await? {
                        Some(s) => match s.data.unwrap_or_default().get(&r.key) {
                            Some(v) => Some(String::from_utf8_lossy(&v.0).into_owned()),
                            None if r.optional == Some(true) => None,
                            None => anyhow::bail!(
                                "couldn't find key {} in Secret {}/{}",
                                r.key,
                                ns,
                                r.name
                            ),
                        },
                        None if r.optional == Some(true) => None,
                        None => anyhow::bail!("secret \"{}\" not found", r.name),
                    }
                } else if let Some(f) = &vf.field_ref {
                    Some(self.field(pod, &f.field_path)?)
                } else {
                    vf.resource_field_ref.as_ref().map(|r| {
                        resource_field(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()))
                    })
                }
            } else {
                Some(String::new())
            };
            if let Some(v) = value {
                set(&mut out, e.name.clone(), v);
            }
        }
        Ok(out)
    }

    /// The pod's IPv6 address on a dual-stack node (a hostNetwork pod's: the node's).
    fn pod_ip_v6(&self, pod: &Pod) -> Option<IpAddr> {
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            return self.opts.node_ip6.map(IpAddr::V6);
        }
        let uid = pod.metadata.uid.as_deref()?;
        let ip = self.network.lock().unwrap().as_ref()?.pod_ip_v6(uid)?;
        Some(IpAddr::V6(ip))
    }

    fn field(&self, pod: &Pod, path: &str) -> Result<String> {
        let m = &pod.metadata;
        let spec = pod.spec.clone().unwrap_or_default();
        // A hostNetwork pod's address is the node's, as upstream reports it.
        let ip = if spec.host_network == Some(true) {
            self.opts.node_ip.to_string()
        } else {
            self.network
                .lock()
                .unwrap()
                .as_ref()
                .and_then(|n| n.pod_ip(m.uid.as_deref().unwrap_or_default()))
                .map(|i| i.to_string())
                .unwrap_or_default()
        };
        // status.podIPs: every address, comma-separated, as upstream's downward API.
        let ips = match self.pod_ip_v6(pod) {
            Some(v6) if !ip.is_empty() => format!("{ip},{v6}"),
            _ => ip.clone(),
        };
        Ok(match path {
            "metadata.name" => m.name.clone().unwrap_or_default(),
            "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
            "metadata.uid" => m.uid.clone().unwrap_or_default(),
            "spec.nodeName" => spec.node_name.unwrap_or_default(),
            "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
            "status.hostIP" => self.opts.node_ip.to_string(),
            "status.hostIPs" => match self.opts.node_ip6 {
                Some(v6) => format!("{},{v6}", self.opts.node_ip),
                None => self.opts.node_ip.to_string(),
            },
            "status.podIP" => ip,
            "status.podIPs" => ips,
            p => {
                let lookup = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
                    p.strip_prefix(prefix)
                        .map(|k| k.trim_start_matches("['").trim_end_matches("']"))
                        .map(|k| {
                            map.as_ref()
                                .and_then(|m| m.get(k))
                                .cloned()
                                .unwrap_or_default()
                        })
                };
                if let Some(v) = lookup("metadata.labels", &m.labels) {
                    v
                } else if let Some(v) = lookup("metadata.annotations", &m.annotations) {
                    v
                } else {
                    anyhow::bail!("unsupported fieldRef {p}")
                }
            }
        })
    }

    async fn terminate(&self, pod: &Pod) -> Result<Action> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or(pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0) as u64;
        let have = self.rt.list(&uid).await?;
        for c in &have {
            if matches!(c.state, State::Running { .. }) {
                self.recorder.event(
                    pod,
                    NORMAL,
                    "Killing",
                    format!("Stopping container {}", c.name),
                );
            }
        }
        let grace = self
            .run_pre_stop(pod, &have, Duration::from_secs(grace))
            .await;
        // While the containers stop, the pod's status keeps following them and their
        // probes (a readiness probe failing during shutdown makes the pod not Ready, as
        // upstream); then everything is removed.
        let key = key_of(pod);
        let ip = self.state.lock().unwrap().get(&key).and_then(|s| s.ip);
        let stops = futures::future::join_all(
            have.iter()
                .filter(|c| matches!(c.state, State::Running { .. }))
                .map(|c| self.rt.stop(&c.id, c.stop_signal, grace)),
        );
        tokio::pin!(stops);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                results = &mut stops => {
                    for r in results {
                        r?;
                    }
                    break;
                }
                _ = tick.tick() => {
                    if let (Some(ip), Ok(now)) = (ip, self.rt.list(&uid).await) {
                        if let Err(e) = self.report(pod, &key, &now, ip).await {
                            tracing::debug!(error = %format!("{e:#}"), "reporting a terminating pod");
                        }
                    }
                }
            }
        }
        self.teardown(&uid, Duration::ZERO).await?;
        self.delete_api_pod(pod).await?;
        Ok(Action::AwaitChange)
    }

    /// Deletes the pod object now (its containers are gone), if it is still this pod.
    async fn delete_api_pod(&self, pod: &Pod) -> Result<()> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the static pod's mirror if it has none (or its mirror is being deleted,
    /// or mirrors another version of the manifest).
    async fn ensure_mirror(&self, key: &Key, sp: &Pod, mirror: Option<&Pod>) -> Result<()> {
        let hash = sp.metadata.uid.clone().unwrap_or_default();
        if let Some(m) = mirror {
            let same = m
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(static_pods::MIRROR))
                .is_some_and(|h| *h == hash);
            if same && m.metadata.deletion_timestamp.is_none() {
                return Ok(());
            }
            self.delete_api_pod(m).await?;
        }
        let node_uid = self.node().and_then(|n| n.metadata.uid.clone());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        match api
            .create(&Default::default(), &static_pods::mirror(sp, node_uid))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(anyhow::Error::from(e).context("creating the mirror pod")),
        }
    }

    /// Reads the manifests dir; queues what appeared, changed or went.
    fn refresh_statics(&self) {
        let dir = self.opts.data_dir.join("agent").join("pod-manifests");
        let fresh: HashMap<Key, Arc<Pod>> = static_pods::load(&dir, &self.opts.node_name)
            .into_iter()
            .map(|p| (key_of(&p), Arc::new(p)))
            .collect();
        let mut cur = self.statics.lock().unwrap();
        let mut changed: Vec<Key> = Vec::new();
        for (k, p) in &fresh {
            if cur.get(k).map(|o| &o.metadata.uid) != Some(&p.metadata.uid) {
                changed.push(k.clone());
            }
        }
        changed.extend(cur.keys().filter(|k| !fresh.contains_key(*k)).cloned());
        *cur = fresh;
        drop(cur);
        for k in changed {
            self.queue.add(k);
        }
    }

    /// Stops every container of the pod (SIGTERM, `grace`, SIGKILL), removes them, its
    /// sandbox, address and files.
    async fn teardown(&self, uid: &str, grace: Duration) -> Result<()> {
        self.pull_backoff
            .lock()
            .unwrap()
            .retain(|(u, _), _| u != uid);
        let cs = self.rt.list(uid).await?;
        let stops = cs
            .iter()
            .filter(|c| matches!(c.state, State::Running { .. }))
            .map(|c| self.rt.stop(&c.id, c.stop_signal, grace));
        for r in futures::future::join_all(stops).await {
            r?;
        }
        for c in &cs {
            self.remove_container(&c.id).await?;
        }
        let dir = self.pod_dir(uid);
        // The network goes first, while the namespace is still there for CNI DEL.
        let net = self.network.lock().unwrap().clone();
        if let Some(net) = net {
            net.set_hostports(uid, &[]).await?;
            net.unplumb(uid).await?;
        }
        Sandbox::new(&dir).destroy();
        if let Some(root) = self.sandboxes_root() {
            let tmp = root.join(uid);
            Sandbox::new(&tmp).destroy();
            let _ = std::fs::remove_dir_all(&tmp);
        }
        crate::volumes::teardown(&dir);
        crate::image_volumes::remove(&self.cd, uid).await;
        self.tokens.forget(uid);
        self.probe_counts.forget_pod(uid);
        self.volumes.lock().unwrap().remove(uid);
        crate::cgroups::remove_pod(uid);
        self.update_qos_cgroups();
        let _ = std::fs::remove_dir_all(&dir);
        self.remove_logs(uid);
        Ok(())
    }

    /// A terminated container's message: its `terminationMessagePath` file (4 KiB at
    /// most), or with FallbackToLogsOnError and a failure, the end of its log.
    fn termination_message(&self, pod: &Pod, c: &Container, i: &Info, code: i32) -> Option<String> {
        let dir = self.pod_dir(pod.metadata.uid.as_deref().unwrap_or_default());
        let read_tail = |p: PathBuf, max: usize| {
            let b = std::fs::read(p).ok()?;
            let start = b.len().saturating_sub(max);
            Some(String::from_utf8_lossy(&b[start..]).into_owned())
        };
        let msg = read_tail(crate::spec::termination_log(&dir, &c.name, &i.id), 4096)
            .filter(|m| !m.is_empty());
        if msg.is_some() {
            return msg;
        }
        if code != 0 && c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError") {
            // Upstream: the last 80 lines of the log, at most 2 KiB.
            let log = self.log_path(pod, &c.name, i.attempt);
            let opts = crate::logs::ReadOptions {
                tail_lines: Some(80),
                ..Default::default()
            };
            let text = crate::logs::Reader::open(&log, opts)
                .and_then(|mut r| r.next_chunk())
                .ok()?;
            let start = text.len().saturating_sub(2048);
            let tail = String::from_utf8_lossy(&text[start..]);
            return Some(tail.trim_end_matches('\n').to_string()).filter(|m| !m.is_empty());
        }
        None
    }

    /// Posts the pod's status when it differs from what the API has.
    async fn report(&self, pod: &Pod, key: &Key, have: &[Info], ip: IpAddr) -> Result<()> {
        // An exited container's status (a FallbackToLogsOnError message, `kubectl logs`
        // right after) waits for its output to be in its log, at most 2 s.
        for i in have {
            if matches!(i.state, State::Exited { .. }) {
                logs::drained(&i.id, Duration::from_secs(2)).await;
            }
        }
        let (waiting, failed, resize, posted) = {
            let state = self.state.lock().unwrap();
            let s = state
                .get(key)
                .filter(|s| Some(&s.uid) == pod.metadata.uid.as_ref());
            (
                s.map(|s| s.waiting.clone()).unwrap_or_default(),
                s.and_then(|s| s.failed.clone()),
                s.and_then(|s| s.resize.clone()),
                s.and_then(|s| s.posted.clone()),
            )
        };
        // Against the newest status there is: the informer's, or this kubelet's last post
        // (the pod copied only then).
        let newer = newer_posted(pod, posted.as_ref()).map(|st| Pod {
            status: Some(st.clone()),
            ..pod.clone()
        });
        let pod = newer.as_ref().unwrap_or(pod);
        let status = status::compute(
            &status::Inputs {
                pod,
                have,
                waiting: &waiting,
                failed: failed.as_ref(),
                resize: resize.as_ref(),
                host_ip: self.opts.node_ip,
                host_ip6: self.opts.node_ip6.map(IpAddr::V6),
                pod_ip: ip,
                pod_ip_v6: self.pod_ip_v6(pod),
                now: now(),
            },
            &Observed { k: self, pod },
        )?;
        let old = pod.status.clone().unwrap_or_default();
        // Compare with what the API has, through the same typed round trip.
        let fresh: k8s_openapi::api::core::v1::PodStatus =
            serde_json::from_value(status.clone()).context("building pod status")?;
        let mut was = old.clone();
        was.message = None;
        was.reason = None;
        was.nominated_node_name = None;
        was.resize = None;
        if serde_json::to_value(&fresh)? == serde_json::to_value(&was)? {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        let done = api
            .patch_status(
                &key.1,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
            .context("posting pod status")?;
        if let (Some(rv), Some(st)) = (revision(&done), done.status) {
            let mut state = self.state.lock().unwrap();
            if let Some(s) = state
                .get_mut(key)
                .filter(|s| done.metadata.uid == Some(s.uid.clone()))
            {
                if s.posted.as_ref().is_none_or(|(had, _)| rv > *had) {
                    s.posted = Some((rv, st));
                }
            }
        }
        Ok(())
    }
}

/// What the kubelet observed of one pod's containers, for [`status::compute`].
struct Observed<'a> {
    k: &'a Kubelet,
    pod: &'a Pod,
}

impl status::Observed for Observed<'_> {
    fn verdict(&self, id: &str, kind: probes::Kind) -> Option<probes::Verdict> {
        self.k.probe_results.get(id, kind)
    }
    fn oom_killed(&self, id: &str) -> bool {
        crate::cgroups::oom_killed(self.pod, id)
    }
    fn termination_message(&self, c: &Container, i: &Info, code: i32) -> Option<String> {
        self.k.termination_message(self.pod, c, i, code)
    }
}

/// The pod worker carrying out one sync's [`plan`] for one pod.
struct Worker<'a> {
    k: &'a Kubelet,
    pod: &'a Pod,
    key: &'a Key,
    have: &'a [Info],
}

impl plan::Worker for Worker<'_> {
    async fn start(&self, c: &Container, init: bool) -> Result<Option<Duration>> {
        (self.k)
            .start_or_backoff(self.pod, self.key, c, self.have, init)
            .await
    }

    async fn stop_sidecar(&self, i: &Info) -> Result<()> {
        let spec = self.pod.spec.as_ref();
        let grace = spec
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64;
        self.k.recorder.event(
            self.pod,
            NORMAL,
            "Killing",
            format!("Stopping container {}", i.name),
        );
        (self.k.rt)
            .stop(&i.id, i.stop_signal, Duration::from_secs(grace))
            .await
    }
}

/// A pod's hostname, as upstream's GeneratePodHostNameAndDomain: `spec.hostname` or the
/// pod's name, cut to 63 characters (the kernel's limit is 64) without a trailing `-` or
/// `.`.
pub(crate) fn pod_hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod.name_any());
    if name.len() <= 63 {
        return name;
    }
    name[..63].trim_end_matches(['-', '.']).to_string()
}

/// Runs its closure when dropped.
struct Defer<F: FnMut()>(F);
impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// `resourceFieldRef`: a container's request or limit in units of `divisor`.
pub(crate) fn resource_field(c: &Container, resource: &str, divisor: Option<&str>) -> String {
    let (which, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let res = c.resources.clone().unwrap_or_default();
    let m = if which == "requests" {
        res.requests
    } else {
        res.limits
    };
    let q = m.and_then(|m| m.get(name).map(|q| q.0.clone()));
    let milli = q.and_then(|q| kite_runtime::quantity::parse_milli(&q));
    // Unset limits fall back to the node's allocatable, as upstream: cores or bytes.
    let milli = milli.or_else(|| match name {
        "cpu" => std::thread::available_parallelism()
            .ok()
            .map(|n| n.get() as i128 * 1000),
        "memory" => crate::stats::memory("/")
            .and_then(|m| m.limit)
            .map(|b| b as i128 * 1000),
        _ => None,
    });
    let Some(milli) = milli else {
        return "0".into();
    };
    let div = divisor
        .and_then(kite_runtime::quantity::parse_milli)
        .filter(|d| *d > 0)
        .unwrap_or(1000);
    ((milli + div - 1) / div).to_string()
}

#[cfg(test)]
mod hostname_tests {
    #[test]
    fn long_names_are_cut_as_upstream() {
        let pod = |n: &str| k8s_openapi::api::core::v1::Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(n.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let long = format!("termination-message-container{}", "a".repeat(36));
        assert_eq!(super::pod_hostname(&pod(&long)).len(), 63);
        let dashed = format!("{}-{}", "a".repeat(62), "b".repeat(5));
        assert_eq!(super::pod_hostname(&pod(&dashed)), "a".repeat(62));
        assert_eq!(super::pod_hostname(&pod("web")), "web");
    }
}

#[cfg(test)]
mod posted_tests {
    use super::{own_status_echo, with_posted};
    use k8s_openapi::api::core::v1::{Pod, PodStatus};
    use std::sync::Arc;

    fn pod(rv: &str, phase: &str) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("web".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    fn posted(rv: u64, phase: &str) -> (u64, PodStatus) {
        (rv, pod(&rv.to_string(), phase).status.unwrap())
    }

    #[test]
    fn the_worker_reads_its_own_newer_post() {
        let phase = |p: &Pod| p.status.as_ref().unwrap().phase.clone().unwrap();
        let cached = Arc::new(pod("7", "Pending"));
        // Posted after the informer's version: the post wins.
        assert_eq!(
            phase(&with_posted(cached.clone(), Some(&posted(9, "Running")))),
            "Running"
        );
        // The informer has caught up (or gone past, with another writer's change): it wins.
        assert_eq!(
            phase(&with_posted(cached.clone(), Some(&posted(7, "Running")))),
            "Pending"
        );
        assert_eq!(
            phase(&with_posted(cached.clone(), Some(&posted(5, "Running")))),
            "Pending"
        );
        assert_eq!(phase(&with_posted(cached.clone(), None)), "Pending");
        // A resourceVersion that is not a number: the informer's.
        let odd = Arc::new(pod("abc", "Pending"));
        assert_eq!(
            phase(&with_posted(odd, Some(&posted(9, "Running")))),
            "Pending"
        );
    }

    #[test]
    fn only_the_version_the_kubelet_wrote_is_its_echo() {
        let p = posted(12, "Running");
        assert!(own_status_echo(&pod("12", "Running"), Some(&p)));
        // Any later version is someone's change (a label, a readiness gate, a deletion).
        assert!(!own_status_echo(&pod("13", "Running"), Some(&p)));
        assert!(!own_status_echo(&pod("12", "Running"), None));
    }
}
