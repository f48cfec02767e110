//! containerd: starting and supervising kite's own containerd (as K3s does), and a small
//! typed handle over its gRPC API in the `k8s.io` namespace.

use anyhow::{bail, Context, Result};
use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    images_client::ImagesClient, leases_client::LeasesClient,
    snapshots::snapshots_client::SnapshotsClient, tasks_client::TasksClient,
    version_client::VersionClient,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;

/// The containerd namespace Kubernetes components use.
pub const NAMESPACE: &str = "k8s.io";
/// The snapshotter kite unpacks into and runs containers from.
pub const SNAPSHOTTER: &str = "overlayfs";

/// A connection to containerd. Cheap to clone.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    /// The lease requests carry, if any (keeps new content and snapshots from GC).
    lease: Option<String>,
}

impl Containerd {
    /// Connects to the socket, waiting up to `wait` for it to appear.
    pub async fn connect(socket: &Path, wait: Duration) -> Result<Self> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut last_note = tokio::time::Instant::now();
        loop {
            if socket.exists() {
                if let Ok(channel) = containerd_client::connect(socket).await {
                    let c = Containerd {
                        channel,
                        lease: None,
                    };
                    if c.version().await.is_ok() {
                        return Ok(c);
                    }
                }
            }
            if last_note.elapsed() >= Duration::from_secs(5) {
                tracing::info!(socket = %socket.display(), "waiting for containerd to answer");
                last_note = tokio::time::Instant::now();
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "containerd is not answering on {} (is it running?)",
                    socket.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A request in kite's namespace (and lease, if this handle holds one), with a
    /// 30 s deadline: a stuck shim or containerd fails the call instead of hanging the
    /// pod worker that made it.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = self.req_unbounded(msg);
        r.set_timeout(Duration::from_secs(30));
        r
    }

    /// A request without a deadline: Tasks.Wait, and streams of image content.
    pub fn req_unbounded<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("containerd-namespace", NAMESPACE.parse().expect("ascii"));
        if let Some(l) = &self.lease {
            if let Ok(v) = l.parse() {
                r.metadata_mut().insert("containerd-lease", v);
            }
        }
        r
    }

    pub async fn version(&self) -> Result<String> {
        let mut r = tonic::Request::new(());
        r.set_timeout(Duration::from_secs(2));
        let v = VersionClient::new(self.channel.clone())
            .version(r)
            .await?
            .into_inner();
        Ok(v.version)
    }

    /// Runs `f` under a fresh lease that expires on its own after an hour if kite dies
    /// mid-way, and is deleted when `f` ends.
    pub async fn with_lease<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Containerd) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        use containerd_client::services::v1::{CreateRequest, DeleteRequest};
        let expire = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
        let lease = LeasesClient::new(self.channel.clone())
            .create(self.req(CreateRequest {
                id: String::new(),
                labels: [("containerd.io/gc.expire".to_string(), expire)].into(),
            }))
            .await
            .context("creating a containerd lease")?
            .into_inner()
            .lease
            .map(|l| l.id)
            .unwrap_or_default();
        let leased = Containerd {
            channel: self.channel.clone(),
            lease: Some(lease.clone()),
        };
        let out = f(leased).await;
        let _ = LeasesClient::new(self.channel.clone())
            .delete(self.req(DeleteRequest {
                id: lease,
                sync: false,
            }))
            .await;
        out
    }

    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
}

/// Whether a gRPC error is containerd's "not found".
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<tonic::Status>()
        .is_some_and(|s| s.code() == tonic::Code::NotFound)
}

/// Where kite's own containerd keeps its state, config and socket.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
}

impl Paths {
    /// Under `<data-dir>/agent/containerd` (content, snapshots) and `<data-dir>/agent/run`
    /// (state and socket; short enough for a unix socket path).
    pub fn new(data_dir: &Path) -> Self {
        let agent = data_dir.join("agent");
        let state = agent.join("run");
        Paths {
            root: agent.join("containerd"),
            config: agent.join("etc").join("containerd").join("config.toml"),
            socket: state.join("containerd.sock"),
            state,
        }
    }

    fn config_text(&self) -> String {
        format!(
            r#"# Generated by kite at every start; edits are overwritten.
version = 2
root = "{root}"
state = "{state}"
# kite drives containerd through its own gRPC API, not CRI.
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
"#,
            root = self.root.display(),
            state = self.state.display(),
            socket = self.socket.display()
        )
    }
}

/// The OS packages kite needs on a node, and whether each is present.
pub fn missing_packages() -> Vec<&'static str> {
    let on_path = |b: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file()))
            .unwrap_or(false)
    };
    let mut out = Vec::new();
    if !on_path("containerd") || !on_path("containerd-shim-runc-v2") {
        out.push("containerd");
    }
    if !on_path("runc") {
        out.push("runc");
    }
    out
}

/// Starts containerd with a generated config and restarts it whenever it exits, until
/// kite ends. The child gets PR_SET_PDEATHSIG, which fires when the *thread* that forked
/// it ends: so it is forked from a dedicated thread that lives as long as kite, never
/// from a runtime worker (tokio may retire those).
pub async fn supervise(paths: Paths) -> Result<()> {
    for d in [&paths.root, &paths.state] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let cfg_dir = paths.config.parent().expect("config has a parent");
    std::fs::create_dir_all(cfg_dir)?;
    std::fs::write(&paths.config, paths.config_text())
        .with_context(|| format!("writing {}", paths.config.display()))?;
    let log_path = paths
        .root
        .parent()
        .expect("agent dir")
        .join("containerd.log");
    std::thread::Builder::new()
        .name("containerd-supervisor".into())
        .spawn(move || supervise_forever(&paths, &log_path))
        .context("starting the containerd supervisor thread")?;
    Ok(())
}

fn supervise_forever(paths: &Paths, log_path: &Path) {
    use std::os::unix::process::CommandExt;
    let mut backoff = Duration::from_millis(500);
    let mut first = true;
    loop {
        let mut cmd = std::process::Command::new("containerd");
        cmd.arg("--config").arg(&paths.config);
        if let Ok(l) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
        {
            if let Ok(l2) = l.try_clone() {
                cmd.stdout(l).stderr(l2);
            }
        }
        // SAFETY: prctl is async-signal-safe; this runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        match cmd.spawn() {
            Ok(mut child) => {
                if !first {
                    tracing::warn!("containerd restarted");
                }
                first = false;
                let started = std::time::Instant::now();
                let status = child.wait();
                tracing::warn!(?status, "containerd exited; restarting it");
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(500);
                }
            }
            Err(e) => tracing::error!(error = %e, "starting containerd"),
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
