//! `/attach/{namespace}/{pod}/{container}?input=1&output=1&error=1`: connects the client
//! to a running container's own process: what it writes from now on (as the log copier
//! reads it), and its stdin when the container has one (`stdin: true`). A terminal is the
//! container's (`tty` in its spec), not the request's, as upstream's kubelet decides. The
//! session ends when the container's output does or the client leaves; with `stdinOnce`
//! the container's stdin ends with the first session.

use super::remote::{self, Options, Remote};
use super::upgrade;
use crate::exec::Control;
use crate::pods::Kubelet;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

pub(super) async fn attach(
    State(k): State<Arc<Kubelet>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    let q = upgrade::query_pairs(&req);
    let mut opts = match Options::from_query(&q) {
        Ok(o) => o,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let id = match k.running_container(&ns, &pod, &container) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let (tty, stdin_once) = k.container_stdio(&ns, &pod, &container);
    opts.tty = tty;
    if opts.tty {
        opts.stderr = false;
    }
    let session = move |r: Remote| async move {
        let span =
            tracing::debug_span!("attach", namespace = %ns, pod = %pod, container = %container);
        tracing::Instrument::instrument(run(k, r, id, stdin_once), span).await
    };
    remote::accept(req, opts, session).await
}

async fn run(k: Arc<Kubelet>, mut remote: Remote, id: String, stdin_once: bool) {
    let Some(mut output) = crate::logs::tap(&id) else {
        let msg = format!("container {id} has no output to attach to");
        remote.finish(&kite_stream::status::internal(&msg)).await;
        return;
    };
    let ctl = Control::of_container(k.runtime(), &id);
    let mut side: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let had_stdin = remote.stdin.is_some();
    if let Some(mut rx) = remote.stdin.take() {
        // Where the container's FIFOs are (a container kite started before its FIFOs
        // moved to /dev/shm has them on disk).
        let path = k
            .io_dirs()
            .iter()
            .map(|d| crate::logs::stdin_path(d, &id))
            .find(|p| p.exists())
            .unwrap_or_else(|| crate::logs::stdin_path(&k.io_dir(), &id));
        match tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&path)
        {
            Ok(mut fifo) => {
                let ctl = ctl.clone();
                side.push(tokio::spawn(async move {
                    while let Some(b) = rx.recv().await {
                        if fifo.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    // The shim keeps its FIFO open: the container's stdin ends by CloseIO,
                    // as containerd's CRI ends it for stdinOnce.
                    if stdin_once {
                        drop(fifo);
                        ctl.close_stdin().await;
                    }
                }))
            }
            // No stdin (`stdin: false`): what the client types goes nowhere, as upstream.
            Err(_) => side.push(tokio::spawn(
                async move { while rx.recv().await.is_some() {} },
            )),
        }
    }
    if let Some(rx) = remote.resize.take() {
        let ctl = ctl.clone();
        let mut sizes = remote::resize_events(rx);
        side.push(tokio::spawn(async move {
            while let Some((w, h)) = sizes.recv().await {
                ctl.resize(w, h).await;
            }
        }));
    }
    let (stdout, stderr) = (remote.stdout.clone(), remote.stderr.clone());
    let mut gone = remote.gone.clone();
    let copy = async {
        loop {
            match output.recv().await {
                Ok((stream, data)) => {
                    let to = if stream == "stderr" { &stderr } else { &stdout };
                    if let Some(w) = to {
                        if w.write(&data).await.is_err() {
                            return;
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    };
    tokio::select! {
        _ = copy => {}
        _ = async { let _ = gone.wait_for(|g| *g).await; } => {}
    }
    for t in side {
        t.abort();
    }
    if stdin_once && had_stdin {
        // The first session is over: so is the container's stdin.
        ctl.close_stdin().await;
    }
    remote.finish(&kite_stream::status::success()).await;
}
