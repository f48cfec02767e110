//! Interactive processes in running containers (`kubectl exec`, `cp`): a process started
//! through containerd's Tasks.Exec with the container's own process spec (namespaces,
//! cgroup, user, env, working directory) and other arguments, its stdin, stdout and stderr
//! through FIFOs under the io directory (one stdout FIFO with a terminal, as containerd
//! gives a pseudo-terminal one stream), its terminal resized on request, waited for, and
//! removed from containerd when done.

use crate::containerd::Containerd;
use anyhow::{Context, Result};
use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, KillRequest, ResizePtyRequest,
    StartRequest, WaitRequest,
};
use std::path::{Path, PathBuf};
use tokio::net::unix::pipe;

/// A started process: its standard streams, and a handle to control it.
pub struct Process {
    pub ctl: Control,
    /// Writes to the process's stdin (when asked for); dropped (then
    /// [`Control::close_stdin`]) to end it.
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

/// What identifies a started process to containerd.
#[derive(Clone)]
pub struct Control {
    cd: Containerd,
    container: String,
    exec_id: String,
    /// The FIFOs' names, removed when the process is deleted (the shim may open them late).
    paths: std::sync::Arc<Vec<PathBuf>>,
}

/// What to start.
pub struct Spec<'a> {
    pub container: &'a str,
    /// The container's process spec (`containers::process_spec`), which the exec starts
    /// from.
    pub process: &'a serde_json::Value,
    pub cmd: &'a [String],
    pub stdin: bool,
    pub tty: bool,
}

/// Starts `spec.cmd` in the container; its FIFOs live in `io_dir`.
pub async fn start(cd: &Containerd, io_dir: &Path, spec: Spec<'_>) -> Result<Process> {
    let mut process = spec.process.clone();
    process["args"] = serde_json::json!(spec.cmd);
    process["terminal"] = serde_json::json!(spec.tty);
    if spec.tty {
        // As containerd's CRI: a terminal session gets a terminal type.
        let env = process["env"].as_array_mut();
        match env {
            Some(e)
                if !e
                    .iter()
                    .any(|v| v.as_str().is_some_and(|s| s.starts_with("TERM="))) =>
            {
                e.push("TERM=xterm".into())
            }
            Some(_) => {}
            None => process["env"] = serde_json::json!(["TERM=xterm"]),
        }
    }
    let exec_id = format!("kite-exec-{}", uuid::Uuid::new_v4().simple());
    let (mut fifos, [out, err]) = crate::logs::Fifos::make(io_dir, &exec_id)
        .context("making the exec process's output FIFOs")?;
    let mut stdin_path = None;
    let mut stdin = None;
    if spec.stdin {
        let p = io_dir.join(format!("{exec_id}-stdin"));
        let _ = std::fs::remove_file(&p);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .context("making the exec process's stdin FIFO")?;
        // Read-write, so the open does not wait for the shim; the shim's reads end when
        // this, the only writer, is closed.
        stdin = Some(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(&p)
                .context("opening the stdin FIFO")?,
        );
        stdin_path = Some(p);
    }
    let path_of = |p: &Path| p.to_string_lossy().into_owned();
    let created = cd
        .tasks()
        .exec(cd.req(ExecProcessRequest {
            container_id: spec.container.to_string(),
            exec_id: exec_id.clone(),
            stdin: stdin_path.as_deref().map(path_of).unwrap_or_default(),
            stdout: path_of(&fifos.stdout),
            stderr: if spec.tty {
                String::new()
            } else {
                path_of(&fifos.stderr)
            },
            terminal: spec.tty,
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: serde_json::to_vec(&process)?,
            }),
        }))
        .await;
    let mut paths = vec![fifos.stdout.clone(), fifos.stderr.clone()];
    paths.extend(stdin_path.clone());
    let proc = Process {
        ctl: Control {
            cd: cd.clone(),
            container: spec.container.to_string(),
            exec_id: exec_id.clone(),
            paths: std::sync::Arc::new(paths),
        },
        stdin,
        stdout: Some(out),
        stderr: (!spec.tty).then_some(err),
    };
    if let Err(e) = created {
        fifos.started();
        proc.ctl.remove_fifos();
        return Err(anyhow::anyhow!("failed to create exec: {}", e.message()));
    }
    let started = cd
        .tasks()
        .start(cd.req(StartRequest {
            container_id: spec.container.to_string(),
            exec_id: exec_id.clone(),
        }))
        .await;
    // The shim has its ends of the FIFOs now (or never will): kite's spare write ends go,
    // so the readers end when the process's output closes.
    fifos.started();
    if let Err(e) = started {
        proc.ctl.delete().await;
        // The runtime's own words (runc's "executable file not found…"), as upstream's.
        return Err(anyhow::anyhow!("failed to start exec: {}", e.message()));
    }
    Ok(proc)
}

impl Control {
    /// The control of a container's own process (its task), for attach.
    pub fn of_container(cd: &Containerd, id: &str) -> Control {
        Control {
            cd: cd.clone(),
            container: id.to_string(),
            exec_id: String::new(),
            paths: Default::default(),
        }
    }

    /// Ends the process's stdin (once kite's writer is gone).
    pub async fn close_stdin(&self) {
        let _ = self
            .cd
            .tasks()
            .close_io(self.cd.req(CloseIoRequest {
                container_id: self.container.clone(),
                exec_id: self.exec_id.clone(),
                stdin: true,
            }))
            .await;
    }

    /// Sets the terminal's size.
    pub async fn resize(&self, width: u16, height: u16) {
        let r = self
            .cd
            .tasks()
            .resize_pty(self.cd.req(ResizePtyRequest {
                container_id: self.container.clone(),
                exec_id: self.exec_id.clone(),
                width: width.into(),
                height: height.into(),
            }))
            .await;
        if let Err(e) = r {
            tracing::debug!(exec = %self.exec_id, error = %e, "resizing a terminal");
        }
    }

    /// A handle that waits for the process to exit: its exit code.
    pub fn waiter(&self) -> impl std::future::Future<Output = Result<u32>> + Send + 'static {
        let (cd, container, exec_id) = (
            self.cd.clone(),
            self.container.clone(),
            self.exec_id.clone(),
        );
        async move {
            let r = cd
                .tasks()
                .wait(cd.req_unbounded(WaitRequest {
                    container_id: container,
                    exec_id,
                }))
                .await
                .context("waiting for the exec process")?;
            Ok(r.into_inner().exit_status)
        }
    }

    /// Kills the process (the client went away).
    pub async fn kill(&self) {
        let _ = self
            .cd
            .tasks()
            .kill(self.cd.req(KillRequest {
                container_id: self.container.clone(),
                exec_id: self.exec_id.clone(),
                signal: 9,
                all: false,
            }))
            .await;
    }

    /// Removes the exited process from containerd.
    pub async fn delete(&self) {
        let _ = self
            .cd
            .tasks()
            .delete_process(self.cd.req(DeleteProcessRequest {
                container_id: self.container.clone(),
                exec_id: self.exec_id.clone(),
            }))
            .await;
        self.remove_fifos();
    }

    fn remove_fifos(&self) {
        for p in self.paths.iter() {
            let _ = std::fs::remove_file(p);
        }
    }
}
