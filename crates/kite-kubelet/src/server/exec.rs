//! `/exec/{namespace}/{pod}/{container}?command=…&input=1&output=1&error=1&tty=1`: runs a
//! command in a running container and connects its standard streams to the client's
//! session, then reports how it ended on the error channel, as upstream's kubelet does.

use super::remote::{self, Options, Remote, Writer};
use super::upgrade;
use crate::exec::{self as runtime, Spec};
use crate::pods::Kubelet;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(super) async fn exec(
    State(k): State<Arc<Kubelet>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    let q = upgrade::query_pairs(&req);
    let opts = match Options::from_query(&q) {
        Ok(o) => o,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let cmd: Vec<String> = q
        .iter()
        .filter(|(n, _)| n == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if cmd.is_empty() {
        return (StatusCode::BAD_REQUEST, "command is required").into_response();
    }
    let id = match k.running_container(&ns, &pod, &container) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let session = move |remote: Remote| async move {
        let span =
            tracing::debug_span!("exec", namespace = %ns, pod = %pod, container = %container);
        let _ = tracing::Instrument::instrument(run(k, remote, id, cmd, opts), span).await;
    };
    remote::accept(req, opts, session).await
}

/// Copies a FIFO to the client until the process closes its end.
async fn pump_out(mut from: tokio::net::unix::pipe::Receiver, to: Writer) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn run(k: Arc<Kubelet>, mut remote: Remote, id: String, cmd: Vec<String>, opts: Options) {
    let started = match k.process_spec(&id).await {
        Ok(process) => {
            let spec = Spec {
                container: &id,
                process: &process,
                cmd: &cmd,
                stdin: opts.stdin,
                tty: opts.tty,
            };
            runtime::start(k.runtime(), &k.exec_io_dir(), spec).await
        }
        Err(e) => Err(e),
    };
    let mut p = match started {
        Ok(p) => {
            tracing::debug!(?cmd, "exec process started");
            p
        }
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "exec failed to start");
            let msg = format!("error executing command in container: {e:#}");
            remote.finish(&kite_stream::status::internal(&msg)).await;
            return;
        }
    };
    let mut outputs = Vec::new();
    for (from, to) in [
        (p.stdout.take(), remote.stdout.clone()),
        (p.stderr.take(), remote.stderr.clone()),
    ] {
        if let (Some(f), Some(t)) = (from, to) {
            outputs.push(tokio::spawn(pump_out(f, t)));
        }
    }
    let mut side = Vec::new();
    match (p.stdin.take(), remote.stdin.take()) {
        (Some(mut fifo), Some(mut rx)) => {
            let ctl = p.ctl.clone();
            side.push(tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if fifo.write_all(&b).await.is_err() {
                        break;
                    }
                }
                drop(fifo);
                ctl.close_stdin().await;
            }));
        }
        // The protocol has no stdin for it (SPDY v1): it ends at once.
        (Some(fifo), None) => {
            drop(fifo);
            p.ctl.close_stdin().await;
        }
        _ => {}
    }
    if let Some(rx) = remote.resize.take() {
        let ctl = p.ctl.clone();
        let mut sizes = remote::resize_events(rx);
        side.push(tokio::spawn(async move {
            while let Some((w, h)) = sizes.recv().await {
                ctl.resize(w, h).await;
            }
        }));
    }
    let waiter = p.ctl.waiter();
    tokio::pin!(waiter);
    let mut gone = remote.gone.clone();
    let code = tokio::select! {
        c = &mut waiter => c,
        _ = async { let _ = gone.wait_for(|g| *g).await; } => {
            // The client went away: so does the process, as upstream's runtime does.
            p.ctl.kill().await;
            waiter.await
        }
    };
    // What the process wrote before it exited still goes out (bounded: a child that
    // inherited its output may keep it open).
    for t in outputs {
        let abort = t.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    tracing::debug!("exec output drained");
    for t in side {
        t.abort();
    }
    tracing::debug!(?code, "exec process ended");
    let status = match code {
        Ok(0) => kite_stream::status::success(),
        Ok(c) => kite_stream::status::exit_code(&cmd, c.into()),
        Err(e) => {
            kite_stream::status::internal(&format!("error executing command in container: {e:#}"))
        }
    };
    // The client hears how it ended first; containerd forgets the process after (its
    // Delete is not the client's wait).
    remote.finish(&status).await;
    tracing::debug!("exec status sent");
    p.ctl.delete().await;
    tracing::debug!("exec session over");
}
