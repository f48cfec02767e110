//! A pod's containers in containerd: created from an image snapshot and a runtime spec,
//! labelled with the pod and container they belong to (so a restarted kite adopts them),
//! started, inspected, stopped gracefully and removed.

use crate::containerd::{Containerd, SNAPSHOTTER};
use anyhow::{Context, Result};
use containerd_client::services::v1::{
    container::Runtime,
    snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest},
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest, GetContainerRequest, GetRequest,
    KillRequest, ListContainersRequest, StartRequest, WaitRequest,
};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

pub const L_POD_UID: &str = "io.kubernetes.pod.uid";
pub const L_POD_NAME: &str = "io.kubernetes.pod.name";
pub const L_POD_NS: &str = "io.kubernetes.pod.namespace";
pub const L_NAME: &str = "io.kubernetes.container.name";
pub const L_ATTEMPT: &str = "io.kubernetes.container.attempt";
pub const L_STOP_SIGNAL: &str = "kite.io/stop-signal";
/// The image's repository digest when the container was made: its status's imageID.
pub const L_IMAGE_ID: &str = "kite.io/image-id";
/// Who its process runs as ([`crate::users::Identity::label`]): its status's user.
pub const L_USER: &str = "kite.io/user";

/// One container of a pod, as containerd has it.
#[derive(Debug, Clone)]
pub struct Info {
    pub id: String,
    pub name: String,
    pub attempt: u32,
    pub created: Option<jiff::Timestamp>,
    /// The signal that asks it to stop (the image's StopSignal).
    pub stop_signal: u32,
    /// The image it was made from, by its full name (`docker.io/library/busybox:latest`).
    pub image: String,
    /// The imageID its status shows (empty for a container made before kite kept it).
    pub image_id: String,
    /// Its [`L_USER`] label (empty for a container made before kite kept it).
    pub user: String,
    /// What it was made or last resized with (see `resize`); None for a container made
    /// before kite kept it.
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    pub state: State,
}

/// The latest instance of container `name` in `have`, when it is running.
pub fn running_instance<'a>(have: &'a [Info], name: &str) -> Option<&'a Info> {
    have.iter()
        .filter(|i| i.name == name)
        .max_by_key(|i| i.attempt)
        .filter(|i| matches!(i.state, State::Running { .. }))
}

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Created but never started (or its task is gone without an exit).
    Created,
    Running {
        pid: u32,
    },
    Exited {
        code: i32,
        at: Option<jiff::Timestamp>,
    },
}

fn ts(t: &Option<prost_types::Timestamp>) -> Option<jiff::Timestamp> {
    t.as_ref()
        .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
        .filter(|t| t.as_second() > 0)
}

/// Every container of the pod with `uid`, oldest attempt first.
pub async fn list(cd: &Containerd, uid: &str) -> Result<Vec<Info>> {
    list_filtered(cd, &format!("labels.\"{L_POD_UID}\"=={uid}")).await
}

/// The ids of every container kite made, by pod uid, for orphan clean-up and the
/// runtime's index. Only containerd's metadata is read (no task is asked), so a stuck
/// shim cannot hold this up.
pub async fn ids_by_pod(
    cd: &Containerd,
) -> Result<HashMap<String, std::collections::BTreeSet<String>>> {
    let mut out: HashMap<String, std::collections::BTreeSet<String>> = HashMap::new();
    for c in kites(cd).await? {
        if let Some(uid) = c.labels.get(L_POD_UID) {
            out.entry(uid.clone()).or_default().insert(c.id);
        }
    }
    Ok(out)
}

/// Every container kite made on this node with its pod's namespace and name, by pod
/// then attempt: what `kite ps` shows when the API is down.
pub async fn list_all(cd: &Containerd) -> Result<Vec<(String, String, Info)>> {
    let mut out = Vec::new();
    for c in kites(cd).await? {
        let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
        let (ns, pod) = (label(L_POD_NS), label(L_POD_NAME));
        out.push((ns, pod, info(cd, c).await?));
    }
    out.sort_by(|a, b| {
        (&a.0, &a.1, &a.2.name, a.2.attempt).cmp(&(&b.0, &b.1, &b.2.name, b.2.attempt))
    });
    Ok(out)
}

/// containerd's records of every container kite made (those with a pod uid label).
async fn kites(cd: &Containerd) -> Result<Vec<Container>> {
    Ok(cd
        .containers()
        .list(cd.req(ListContainersRequest {
            filters: vec![format!("labels.\"{L_POD_UID}\"")],
        }))
        .await?
        .into_inner()
        .containers)
}

/// The containers with these ids that still exist, oldest attempt first: one record and
/// one task lookup each, where a [`list`] reads every container containerd has.
pub async fn get_each(cd: &Containerd, ids: &[String]) -> Result<Vec<Info>> {
    let mut out = Vec::new();
    for id in ids {
        match cd
            .containers()
            .get(cd.req(GetContainerRequest { id: id.clone() }))
            .await
        {
            Ok(r) => {
                if let Some(c) = r.into_inner().container {
                    out.push(info(cd, c).await?);
                }
            }
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s.into()),
        }
    }
    out.sort_by_key(|i| i.attempt);
    Ok(out)
}

async fn list_filtered(cd: &Containerd, filter: &str) -> Result<Vec<Info>> {
    let cs = cd
        .containers()
        .list(cd.req(ListContainersRequest {
            filters: vec![filter.to_string()],
        }))
        .await?
        .into_inner()
        .containers;
    let mut out = Vec::new();
    for c in cs {
        out.push(info(cd, c).await?);
    }
    out.sort_by_key(|i| i.attempt);
    Ok(out)
}

async fn info(cd: &Containerd, c: Container) -> Result<Info> {
    let state = match cd
        .tasks()
        .get(cd.req(GetRequest {
            container_id: c.id.clone(),
            exec_id: String::new(),
        }))
        .await
    {
        Ok(r) => {
            let p = r.into_inner().process.unwrap_or_default();
            // containerd.types.v1.Status: 1 created, 2 running, 3 stopped, 4/5 paused.
            match p.status {
                2 | 4 | 5 => State::Running { pid: p.pid },
                3 => State::Exited {
                    code: p.exit_status as i32,
                    at: ts(&p.exited_at),
                },
                _ => State::Created,
            }
        }
        Err(s) if s.code() == tonic::Code::NotFound => State::Created,
        Err(s) => return Err(s.into()),
    };
    Ok(Info {
        name: c.labels.get(L_NAME).cloned().unwrap_or_default(),
        attempt: c
            .labels
            .get(L_ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        created: ts(&c.created_at),
        stop_signal: c
            .labels
            .get(L_STOP_SIGNAL)
            .and_then(|s| s.parse().ok())
            .unwrap_or(15),
        image_id: c.labels.get(L_IMAGE_ID).cloned().unwrap_or_default(),
        user: c.labels.get(L_USER).cloned().unwrap_or_default(),
        resources: crate::resize::applied(&c.labels),
        image: c.image,
        id: c.id,
        state,
    })
}

pub struct New<'a> {
    pub id: &'a str,
    pub image: &'a crate::images::Resolved,
    pub spec: Vec<u8>,
    pub labels: HashMap<String, String>,
    /// Where the task's stdout and stderr go (FIFOs kite reads, see `logs`); empty: nowhere.
    pub stdout: &'a Path,
    pub stderr: &'a Path,
    /// The stdin FIFO of a container with `stdin: true`.
    pub stdin: Option<&'a Path>,
    /// A pseudo-terminal (`tty: true`): one output stream, on `stdout`.
    pub terminal: bool,
}

/// Creates the container (root filesystem snapshot + container record under one lease)
/// and its task, and starts it.
pub async fn create_and_start(cd: &Containerd, n: New<'_>) -> Result<()> {
    let id = n.id.to_string();
    let t0 = std::time::Instant::now();
    let mounts = cd
        .with_lease(|cd| {
            let id = id.clone();
            let image = n.image.clone();
            let spec = n.spec.clone();
            let labels = n.labels.clone();
            async move {
                let mounts = cd
                    .snapshots()
                    .prepare(cd.req(PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: id.clone(),
                        parent: image.top_snapshot.clone(),
                        labels: Default::default(),
                    }))
                    .await
                    .context("preparing the root filesystem")?
                    .into_inner()
                    .mounts;
                cd.containers()
                    .create(cd.req(CreateContainerRequest {
                        container: Some(Container {
                            id: id.clone(),
                            labels,
                            image: image.name.clone(),
                            runtime: Some(Runtime {
                                name: "io.containerd.runc.v2".into(),
                                options: None,
                            }),
                            spec: Some(prost_types::Any {
                                type_url:
                                    "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                                value: spec,
                            }),
                            snapshotter: SNAPSHOTTER.into(),
                            snapshot_key: id.clone(),
                            ..Default::default()
                        }),
                    }))
                    .await
                    .context("creating the container")?;
                Ok(mounts)
            }
        })
        .await?;
    let created = t0.elapsed();
    cd.tasks()
        .create(
            cd.req(CreateTaskRequest {
                container_id: id.clone(),
                rootfs: mounts,
                stdin: n
                    .stdin
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                stdout: n.stdout.to_string_lossy().into_owned(),
                stderr: if n.terminal {
                    String::new()
                } else {
                    n.stderr.to_string_lossy().into_owned()
                },
                terminal: n.terminal,
                ..Default::default()
            }),
        )
        .await
        .context("creating the task")?;
    let task = t0.elapsed();
    cd.tasks()
        .start(cd.req(StartRequest {
            container_id: id.clone(),
            exec_id: String::new(),
        }))
        .await
        .context("starting the task")?;
    // Where a start's time goes, step by step (`--debug`; the node bench's single pod).
    tracing::debug!(
        container = %id,
        snapshot_and_container_ms = ms(created),
        task_create_ms = ms(task - created),
        task_start_ms = ms(t0.elapsed() - task),
        "container started"
    );
    Ok(())
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Waits (in the background) for the container's task to exit, then calls `done`.
pub fn on_exit(cd: &Containerd, id: &str, done: impl FnOnce() + Send + 'static) {
    let cd = cd.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        let _ = cd
            .tasks()
            .wait(cd.req_unbounded(WaitRequest {
                container_id: id,
                exec_id: String::new(),
            }))
            .await;
        done();
    });
}

/// What an exec'd command did: its exit code (`None`: it did not end in time and was
/// killed) and its output (stdout and stderr, at most 10 KiB, as upstream's prober keeps).
#[derive(Debug)]
pub struct Exec {
    pub code: Option<u32>,
    pub output: String,
}

/// Runs `cmd` in a running container (its namespaces, cgroup, user, env and working
/// directory: the container's own process spec with other arguments), its output captured
/// through FIFOs in `io_dir`.
pub async fn exec_status(
    cd: &Containerd,
    io_dir: &Path,
    id: &str,
    cmd: &[String],
    timeout: Duration,
) -> Result<Exec> {
    let process = process_spec(cd, id).await?;
    exec_status_as(cd, io_dir, id, &process, cmd, timeout).await
}

/// The process part of a container's runtime spec: what an exec in it starts from. It
/// does not change while the container exists, so a prober reads it once.
pub async fn process_spec(cd: &Containerd, id: &str) -> Result<serde_json::Value> {
    let c = cd
        .containers()
        .get(cd.req(GetContainerRequest { id: id.to_string() }))
        .await
        .context("reading the container")?
        .into_inner()
        .container
        .context("no container")?;
    let mut spec: serde_json::Value = serde_json::from_slice(&c.spec.context("no spec")?.value)
        .context("reading the container's runtime spec")?;
    Ok(spec["process"].take())
}

/// [`exec_status`] with the container's [`process_spec`] already read.
pub async fn exec_status_as(
    cd: &Containerd,
    io_dir: &Path,
    id: &str,
    process: &serde_json::Value,
    cmd: &[String],
    timeout: Duration,
) -> Result<Exec> {
    let mut process = process.clone();
    process["args"] = serde_json::json!(cmd);
    process["terminal"] = serde_json::json!(false);
    let exec_id = format!("kite-{}", uuid::Uuid::new_v4().simple());
    let mut io = crate::logs::Capture::new(io_dir, &exec_id, 10 * 1024)
        .context("making the exec process's output FIFOs")?;
    let created = cd
        .tasks()
        .exec(cd.req(ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.clone(),
            stdout: io.fifos.stdout.to_string_lossy().into_owned(),
            stderr: io.fifos.stderr.to_string_lossy().into_owned(),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: serde_json::to_vec(&process)?,
            }),
            ..Default::default()
        }))
        .await;
    if created.is_err() {
        io.started();
    }
    created.context("creating the exec process")?;
    // The shim opens the process's FIFOs when it starts it.
    let started = cd
        .tasks()
        .start(cd.req(StartRequest {
            container_id: id.to_string(),
            exec_id: exec_id.clone(),
        }))
        .await;
    io.started();
    if let Err(e) = started {
        let _ = cd
            .tasks()
            .delete_process(cd.req(DeleteProcessRequest {
                container_id: id.to_string(),
                exec_id,
            }))
            .await;
        return Err(anyhow::Error::from(e).context("starting the exec process"));
    }
    let run = async {
        let r = cd
            .tasks()
            .wait(cd.req_unbounded(WaitRequest {
                container_id: id.to_string(),
                exec_id: exec_id.clone(),
            }))
            .await
            .context("waiting for the exec process")?;
        anyhow::Ok(r.into_inner().exit_status)
    };
    let out = match tokio::time::timeout(timeout, run).await {
        Ok(r) => Some(r?),
        Err(_) => {
            let _ = cd
                .tasks()
                .kill(cd.req(KillRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.clone(),
                    signal: 9,
                    all: false,
                }))
                .await;
            None
        }
    };
    let _ = cd
        .tasks()
        .delete_process(cd.req(DeleteProcessRequest {
            container_id: id.to_string(),
            exec_id,
        }))
        .await;
    let output = io.output(Duration::from_secs(2)).await;
    Ok(Exec {
        code: out,
        output: String::from_utf8_lossy(&output).into_owned(),
    })
}

/// Whether the container's task is running (or created, paused, pausing).
pub async fn is_running(cd: &Containerd, id: &str) -> bool {
    matches!(
        cd.tasks()
            .get(cd.req(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new()
            }))
            .await
            .map(|r| r.into_inner().process.unwrap_or_default().status),
        Ok(1 | 2 | 4 | 5)
    )
}

/// SIGTERM (or `signal`), up to `grace` for the process to exit, then SIGKILL.
pub async fn stop(cd: &Containerd, id: &str, signal: u32, grace: Duration) -> Result<()> {
    let running = |cd: Containerd, id: String| async move { is_running(&cd, &id).await };
    if !running(cd.clone(), id.to_string()).await {
        return Ok(());
    }
    let kill = |sig: u32| {
        let cd = cd.clone();
        let id = id.to_string();
        async move {
            cd.tasks()
                .kill(cd.req(KillRequest {
                    container_id: id,
                    exec_id: String::new(),
                    signal: sig,
                    all: true,
                }))
                .await
        }
    };
    let _ = kill(signal).await;
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if !running(cd.clone(), id.to_string()).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = kill(9).await;
    for _ in 0..50 {
        if !running(cd.clone(), id.to_string()).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("container {id} did not stop after SIGKILL")
}

/// Removes the task, the container and its snapshot; what is already gone is fine.
pub async fn remove(cd: &Containerd, id: &str) -> Result<()> {
    let nf = |s: &tonic::Status| s.code() == tonic::Code::NotFound;
    if let Err(s) = cd
        .tasks()
        .delete(cd.req(DeleteTaskRequest {
            container_id: id.to_string(),
        }))
        .await
    {
        if !nf(&s) {
            return Err(anyhow::Error::from(s).context("deleting the task"));
        }
    }
    if let Err(s) = cd
        .containers()
        .delete(cd.req(DeleteContainerRequest { id: id.to_string() }))
        .await
    {
        if !nf(&s) {
            return Err(anyhow::Error::from(s).context("deleting the container"));
        }
    }
    let _ = cd
        .snapshots()
        .remove(cd.req(RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.to_string(),
        }))
        .await;
    Ok(())
}
