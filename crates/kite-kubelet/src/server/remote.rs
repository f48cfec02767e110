//! The client's end of an exec or attach session, whichever protocol it speaks: SPDY
//! (`X-Stream-Protocol-Version: v4.channel.k8s.io`…, one stream per standard stream) or a
//! WebSocket channel protocol (`v5.channel.k8s.io`…, one channel each). The handler gets
//! the same [`Remote`] either way: stdin and resize events to read, stdout, stderr and the
//! error channel to write, and a signal when the client goes.

use bytes::Bytes;
use kite_stream::channel::{self, Protocol};
use kite_stream::spdy;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Which standard streams the client asked for (`input`, `output`, `error`, `tty` = 1).
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Options {
    /// Upstream's `NewOptions`: stderr is dropped with a terminal; one stream at least.
    pub fn from_query(q: &[(String, String)]) -> Result<Options, String> {
        let on = |k: &str| q.iter().any(|(n, v)| n == k && v == "1");
        let tty = on("tty");
        let o = Options {
            stdin: on("input"),
            stdout: on("output"),
            stderr: on("error") && !tty,
            tty,
        };
        if !o.stdin && !o.stdout && !o.stderr {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        Ok(o)
    }
}

/// Where kite writes one of the client's channels.
#[derive(Clone)]
pub enum Writer {
    Spdy(spdy::StreamWriter),
    Ws {
        out: mpsc::Sender<channel::Message>,
        proto: Protocol,
        channel: u8,
    },
}

impl Writer {
    pub async fn write(&self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Spdy(w) => w.write(data).await,
            Writer::Ws {
                out,
                proto,
                channel,
            } => out
                .send(channel::encode(*proto, *channel, data))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "closed")),
        }
    }

    async fn close(&self) {
        if let Writer::Spdy(w) = self {
            w.close().await
        }
    }
}

/// How the connection is ended.
enum Closer {
    Spdy(spdy::Session),
    Ws(mpsc::Sender<channel::Message>),
}

/// An established session.
pub struct Remote {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<Writer>,
    pub stderr: Option<Writer>,
    pub resize: Option<mpsc::Receiver<Bytes>>,
    error: Writer,
    json_status: bool,
    /// Becomes true when the client's side of the connection has ended.
    pub gone: watch::Receiver<bool>,
    closer: Closer,
}

impl Remote {
    /// Writes the final status (see `kite_stream::status`) and ends the connection.
    pub async fn finish(self, status: &serde_json::Value) {
        let body = kite_stream::status::encode(status, self.json_status);
        if !body.is_empty() {
            let _ = self.error.write(&body).await;
        }
        for w in [&self.stdout, &self.stderr].into_iter().flatten() {
            w.close().await;
        }
        self.error.close().await;
        match self.closer {
            Closer::Spdy(s) => s.close().await,
            Closer::Ws(out) => drop(out),
        }
    }
}

/// SPDY protocol versions the kubelet speaks for exec and attach, best first.
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// Waits for the streams a SPDY client opens (upstream's `waitForStreams`: error, one per
/// standard stream asked for, and resize with a terminal from v3 on) for up to 30 s.
pub async fn spdy(io: hyper::upgrade::Upgraded, protocol: &str, opts: Options) -> Option<Remote> {
    let io = hyper_util::rt::TokioIo::new(io);
    let mut session = spdy::serve(
        io,
        Box::new(|h: &spdy::Headers| match h.get("streamtype") {
            Some("error" | "stdin" | "stdout" | "stderr" | "resize") => Ok(()),
            other => Err(format!("unexpected stream type: {other:?}")),
        }),
    );
    let resizing = opts.tty && matches!(protocol, "v4.channel.k8s.io" | "v3.channel.k8s.io");
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(resizing);
    let (mut stdin, mut stdout, mut stderr, mut resize, mut error) = (None, None, None, None, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut got = 0;
    while got < expected {
        let s = match tokio::time::timeout_at(deadline, session.streams.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(_) => {
                tracing::debug!("timed out waiting for client to create streams");
                session.close().await;
                return None;
            }
        };
        got += 1;
        match s.headers.get("streamtype") {
            Some("error") => error = Some(Writer::Spdy(s.tx)),
            Some("stdin") => stdin = Some(s.rx),
            Some("stdout") => stdout = Some(Writer::Spdy(s.tx)),
            Some("stderr") => stderr = Some(Writer::Spdy(s.tx)),
            Some("resize") => resize = Some(s.rx),
            _ => got -= 1,
        }
    }
    let error = error?;
    // The client is gone when the session has no more streams to give (its reader ended).
    let (gone_tx, gone) = watch::channel(false);
    let mut streams = std::mem::replace(&mut session.streams, mpsc::channel(1).1);
    tokio::spawn(async move {
        while streams.recv().await.is_some() {}
        let _ = gone_tx.send(true);
    });
    if protocol == "channel.k8s.io" {
        // v1 clients do not write stdin over the same connection's life as later ones;
        // upstream closes it at once.
        stdin = None;
    }
    Some(Remote {
        stdin,
        stdout,
        stderr,
        resize,
        error,
        json_status: protocol == "v4.channel.k8s.io",
        gone,
        closer: Closer::Spdy(session),
    })
}

/// A task that sends channel messages on a WebSocket, in order, and closes it normally
/// (1000) once every sender is gone; the task ends early if the client does.
pub fn ws_writer(
    mut sink: futures::stream::SplitSink<axum::extract::ws::WebSocket, axum::extract::ws::Message>,
) -> (mpsc::Sender<channel::Message>, tokio::task::JoinHandle<()>) {
    use axum::extract::ws::Message as Ws;
    use futures::SinkExt;
    let (out_tx, mut out_rx) = mpsc::channel::<channel::Message>(64);
    let task = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let m = match m {
                channel::Message::Binary(b) => Ws::Binary(b.into()),
                channel::Message::Text(t) => Ws::Text(t.into()),
            };
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink
            .send(Ws::Close(Some(axum::extract::ws::CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
        let _ = sink.close().await;
    });
    (out_tx, task)
}

/// Answers an exec or attach upgrade request: switches to the protocol it asks for and
/// runs `session` on the established [`Remote`].
pub async fn accept<F, Fut>(
    req: axum::extract::Request,
    opts: Options,
    session: F,
) -> axum::response::Response
where
    F: FnOnce(Remote) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use super::upgrade::{self, Upgrade};
    use axum::response::IntoResponse;
    match upgrade::classify(req, SPDY_PROTOCOLS).await {
        Err(resp) => resp,
        Ok(Upgrade::Spdy { protocol, on }) => {
            let p = protocol.clone();
            tokio::spawn(async move {
                let Ok(io) = on.await else {
                    tracing::debug!("the client's connection was not upgraded");
                    return;
                };
                tracing::debug!(protocol = %p, "SPDY session upgraded");
                if let Some(r) = spdy(io, &p, opts).await {
                    session(r).await
                }
            });
            upgrade::switching_to_spdy(&protocol)
        }
        Ok(Upgrade::WebSocket { ws, proto }) => ws
            .protocols([proto.name()])
            .on_failed_upgrade(
                |e| tracing::debug!(error = %e, "the client's connection was not upgraded"),
            )
            .on_upgrade(move |socket| async move {
                tracing::debug!(protocol = proto.name(), "WebSocket session upgraded");
                let r = websocket(socket, proto, opts);
                ready(&r).await;
                session(r).await
            }),
        Ok(Upgrade::Tunnel { .. }) => (
            axum::http::StatusCode::BAD_REQUEST,
            "SPDY tunnelling is for port forwarding",
        )
            .into_response(),
    }
}

/// Runs the channel protocol on an upgraded WebSocket.
pub fn websocket(ws: axum::extract::ws::WebSocket, proto: Protocol, opts: Options) -> Remote {
    use axum::extract::ws::Message as Ws;
    use futures::StreamExt;
    let (sink, mut source) = ws.split();
    let (out_tx, _) = ws_writer(sink);
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(64);
    let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(8);
    let (gone_tx, gone) = watch::channel(false);
    tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        while let Some(Ok(m)) = source.next().await {
            let data: Bytes = match m {
                Ws::Binary(b) => b,
                Ws::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
                Ws::Close(_) => break,
                _ => continue,
            };
            match channel::decode(proto, &data) {
                Ok(channel::Incoming::Data(channel::STDIN, d)) => {
                    if let Some(tx) = &stdin_tx {
                        let _ = tx.send(Bytes::from(d)).await;
                    }
                }
                Ok(channel::Incoming::Data(channel::RESIZE, d)) => {
                    let _ = resize_tx.send(Bytes::from(d)).await;
                }
                Ok(channel::Incoming::Close(channel::STDIN)) => stdin_tx = None,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket protocol error");
                    break;
                }
            }
        }
        let _ = gone_tx.send(true);
    });
    let writer = |channel: u8| Writer::Ws {
        out: out_tx.clone(),
        proto,
        channel,
    };
    Remote {
        stdin: opts.stdin.then_some(stdin_rx),
        stdout: opts.stdout.then(|| writer(channel::STDOUT)),
        stderr: opts.stderr.then(|| writer(channel::STDERR)),
        resize: opts.tty.then_some(resize_rx),
        error: writer(channel::ERROR),
        json_status: proto.json_status(),
        gone,
        closer: Closer::Ws(out_tx),
    }
}

/// After a WebSocket upgrade, upstream tells the client its streams are ready with an
/// empty message on the first of stdout, stderr or error that it writes.
pub async fn ready(r: &Remote) {
    let w = r.stdout.as_ref().or(r.stderr.as_ref()).unwrap_or(&r.error);
    if let Writer::Ws { .. } = w {
        let _ = w.write(&[]).await;
    }
}

/// Terminal sizes from the resize channel: JSON objects `{"Width":…,"Height":…}` back to
/// back, split across messages anyhow.
pub fn resize_events(mut rx: mpsc::Receiver<Bytes>) -> mpsc::Receiver<(u16, u16)> {
    let (tx, out) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(b) = rx.recv().await {
            buf.extend_from_slice(&b);
            let mut it =
                serde_json::Deserializer::from_slice(&buf).into_iter::<serde_json::Value>();
            let mut used = 0;
            while let Some(Ok(v)) = it.next() {
                used = it.byte_offset();
                let dim = |k: &str| v[k].as_u64().map(|n| n.min(u16::MAX as u64) as u16);
                if let (Some(w), Some(h)) = (dim("Width"), dim("Height")) {
                    if tx.send((w, h)).await.is_err() {
                        return;
                    }
                }
            }
            buf.drain(..used);
        }
    });
    out
}
