//! `/portForward/{namespace}/{pod}`: connections to ports inside a pod, dialled from the
//! pod's own network namespace (so ports bound to its 127.0.0.1 are reachable), as
//! upstream's runtime does. SPDY (one data and one error stream per connection, paired by
//! `requestID`), the same tunnelled through WebSocket messages (kubectl ≥ 1.31), and the
//! plain WebSocket protocol with `?ports=` (one connection per port, channels 2n and 2n+1).

use super::upgrade::{self, Upgrade};
use crate::pods::Kubelet;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kite_stream::spdy::{self, Headers, Stream};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const PROTOCOLS: &[&str] = &["portforward.k8s.io"];

/// Where to dial: the pod's network namespace (none for a hostNetwork pod).
#[derive(Clone, Debug)]
pub struct Target {
    pub pod: String,
    pub uid: String,
    pub netns: Option<PathBuf>,
}

pub(super) async fn port_forward(
    State(k): State<Arc<Kubelet>>,
    Path((ns, pod)): Path<(String, String)>,
    req: Request,
) -> Response {
    let target = match k.pod_network(&ns, &pod) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let q = upgrade::query_pairs(&req);
    match upgrade::classify(req, PROTOCOLS).await {
        Err(resp) => resp,
        Ok(Upgrade::Spdy { protocol, on }) => {
            tokio::spawn(async move {
                if let Ok(io) = on.await {
                    serve_spdy(hyper_util::rt::TokioIo::new(io), target).await
                }
            });
            upgrade::switching_to_spdy(&protocol)
        }
        Ok(Upgrade::Tunnel { ws, protocol }) => ws
            .protocols([protocol])
            .on_upgrade(|socket| serve_tunnel(socket, target)),
        Ok(Upgrade::WebSocket { ws, proto }) => {
            let ports = match ports_of(&q) {
                Ok(p) => p,
                Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
            };
            ws.protocols([proto.name()])
                .on_upgrade(move |socket| async move {
                    serve_channels(socket, proto, ports, target).await
                })
        }
    }
}

/// Upstream's `NewV4Options`: `ports` repeated or comma-separated, each 1–65535.
fn ports_of(q: &[(String, String)]) -> Result<Vec<u16>, String> {
    let given: Vec<&String> = q
        .iter()
        .filter(|(n, _)| n == "port")
        .map(|(_, v)| v)
        .collect();
    if given.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    let mut out = Vec::new();
    for s in given {
        if s.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in s.split(',') {
            let n: u16 = p
                .parse()
                .map_err(|_| format!("unable to parse {s:?} as a port"))?;
            if n < 1 {
                return Err(format!("port {s:?} must be > 0"));
            }
            out.push(n);
        }
    }
    Ok(out)
}

/// SPDY in binary WebSocket messages: the client's messages read as one byte stream, and
/// each frame kite writes goes out as one message, handed over without a copy. The SPDY
/// session reads and writes the socket itself (no pipe and no relaying task between them:
/// every hop would cost each chunk a wake-up and a copy).
fn serve_tunnel(
    ws: axum::extract::ws::WebSocket,
    target: Target,
) -> impl std::future::Future<Output = ()> {
    use futures::StreamExt;
    let (sink, stream) = ws.split();
    let reader = TunnelReader {
        ws: stream,
        pending: Bytes::new(),
        closed: false,
    };
    serve_session(
        spdy::serve_parts(reader, TunnelSink(sink), Box::new(accept)),
        target,
    )
}

type WsMessage = axum::extract::ws::Message;

/// The client's side of a tunnel: the bytes of its binary messages, in order.
struct TunnelReader {
    ws: futures::stream::SplitStream<axum::extract::ws::WebSocket>,
    /// What is left of the last message read.
    pending: Bytes,
    closed: bool,
}

impl AsyncRead for TunnelReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use futures::Stream;
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(std::pin::Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(WsMessage::Binary(b))) => this.pending = b,
                Some(Ok(WsMessage::Close(_))) | None => this.closed = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

/// kite's side of a tunnel: one binary message per SPDY frame.
struct TunnelSink(futures::stream::SplitSink<axum::extract::ws::WebSocket, WsMessage>);

impl spdy::FrameSink for TunnelSink {
    async fn send(&mut self, frame: Bytes) -> std::io::Result<()> {
        use futures::SinkExt;
        self.0
            .feed(WsMessage::Binary(frame))
            .await
            .map_err(io_error)
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        use futures::SinkExt;
        self.0.flush().await.map_err(io_error)
    }
    async fn close(&mut self) -> std::io::Result<()> {
        use futures::SinkExt;
        // A close frame, as the pipe's relay sent.
        self.0.close().await.map_err(io_error)
    }
}

fn io_error(e: axum::Error) -> std::io::Error {
    std::io::Error::other(e)
}

/// Upstream's `httpStreamReceived`: a port and a stream type are required.
fn accept(h: &Headers) -> Result<(), String> {
    let port = h.get("port").ok_or("\"port\" header is required")?;
    let n: u16 = port
        .parse()
        .map_err(|_| format!("unable to parse {port:?} as a port"))?;
    if n < 1 {
        return Err(format!("port {port:?} must be > 0"));
    }
    match h.get("streamtype") {
        Some("data" | "error") => Ok(()),
        Some(t) => Err(format!("invalid stream type {t:?}")),
        None => Err("\"streamType\" header is required".into()),
    }
}

#[derive(Default)]
struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
}

async fn serve_spdy<IO>(io: IO, target: Target)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    serve_session(spdy::serve(io, Box::new(accept)), target).await
}

/// Pairs each connection's data and error streams and forwards the pair.
async fn serve_session(mut session: spdy::Session, target: Target) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    while let Some(s) = session.streams.recv().await {
        let kind = s.headers.get("streamtype").unwrap_or_default().to_string();
        // Clients before requestID: the error stream's id, or the data stream's less 2.
        let rid = s
            .headers
            .get("requestid")
            .map(String::from)
            .unwrap_or_else(|| {
                match kind.as_str() {
                    "data" => s.id.saturating_sub(2),
                    _ => s.id,
                }
                .to_string()
            });
        let pair = pairs.entry(rid.clone()).or_default();
        let slot = if kind == "data" {
            &mut pair.data
        } else {
            &mut pair.error
        };
        if slot.is_some() {
            let msg = format!(
                "error processing stream for request {rid}: {kind} stream already assigned"
            );
            if let Some(e) = &pair.error {
                let _ = e.tx.write(msg.as_bytes()).await;
            }
            s.tx.reset().await;
            continue;
        }
        *slot = Some(s);
        if pair.data.is_some() && pair.error.is_some() {
            let p = pairs.remove(&rid).unwrap_or_default();
            if let (Some(data), Some(error)) = (p.data, p.error) {
                tokio::spawn(forward(data, error, target.clone()));
            }
        }
    }
}

/// One forwarded connection.
async fn forward(data: Stream, error: Stream, target: Target) {
    let port: u16 = data
        .headers
        .get("port")
        .and_then(|p| p.parse().ok())
        .unwrap_or_default();
    let tcp = match dial(&target, port).await {
        Ok(t) => t,
        Err(e) => {
            let _ = error.tx.write(e.as_bytes()).await;
            error.tx.close().await;
            data.tx.reset().await;
            return;
        }
    };
    let Stream { rx, tx, .. } = data;
    let (r, w) = tcp.into_split();
    // Into the pod until the client half-closes (or resets) the data stream.
    let up = tokio::spawn(copy_in(rx, w));
    // Out of it until the pod's side closes; then the client hears the end on both streams.
    copy_out(r, spdy::DATA_HEADER, |b| {
        let tx = tx.clone();
        async move { tx.write_framed(b).await }
    })
    .await;
    tx.close().await;
    error.tx.close().await;
    let _ = up.await;
}

async fn copy_in(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
    mut w: tokio::net::tcp::OwnedWriteHalf,
) {
    while let Some(b) = rx.recv().await {
        if w.write_all(&b).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Reads the pod's side in chunks, each into a buffer of its own that leaves `headroom`
/// bytes before the data (a frame header the sender writes in place), and sends it on.
async fn copy_out<F, Fut>(mut r: tokio::net::tcp::OwnedReadHalf, headroom: usize, send: F)
where
    F: Fn(bytes::BytesMut) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    loop {
        let mut buf = bytes::BytesMut::with_capacity(headroom + 128 * 1024);
        buf.resize(headroom, 0);
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if send(buf).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Connects to `port` on the pod's loopback (IPv4, then IPv6), from inside its network
/// namespace; the error reads as upstream's.
pub async fn dial(t: &Target, port: u16) -> Result<TcpStream, String> {
    let netns = t.netns.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own: entering a namespace changes the thread, which then ends.
    std::thread::spawn(move || {
        let _ = tx.send(connect_in(netns.as_deref(), port));
    });
    let r = rx
        .await
        .unwrap_or_else(|_| Err("the dialling thread failed".into()));
    r.and_then(|s| TcpStream::from_std(s).map_err(|e| e.to_string()))
        .map_err(|e| {
            format!(
                "error forwarding port {port} to pod {}, uid {}: failed to connect to localhost:{port} inside the pod's network namespace, {e}",
                t.pod, t.uid
            )
        })
}

fn connect_in(netns: Option<&std::path::Path>, port: u16) -> Result<std::net::TcpStream, String> {
    if let Some(ns) = netns {
        let f = std::fs::File::open(ns).map_err(|e| format!("opening {}: {e}", ns.display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("entering {}: {e}", ns.display()))?;
    }
    let timeout = std::time::Duration::from_secs(10);
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let e4 = match std::net::TcpStream::connect_timeout(&v4, timeout) {
        Ok(s) => return finish(s),
        Err(e) => e,
    };
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    match std::net::TcpStream::connect_timeout(&v6, timeout) {
        Ok(s) => finish(s),
        Err(e6) => Err(format!(
            "IPv4: dial tcp4 {v4}: connect: {} IPv6: dial tcp6 {v6}: connect: {}",
            plain(&e4),
            plain(&e6)
        )),
    }
}

fn finish(s: std::net::TcpStream) -> Result<std::net::TcpStream, String> {
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// An error as Go prints it ("connection refused"), without Rust's "(os error 111)".
fn plain(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_ascii_lowercase(),
        None => s,
    }
}

/// The plain WebSocket protocol: for each port, channel 2n carries data both ways and
/// 2n+1 errors; each starts with its port, little-endian.
async fn serve_channels(
    socket: axum::extract::ws::WebSocket,
    proto: kite_stream::channel::Protocol,
    ports: Vec<u16>,
    target: Target,
) {
    use axum::extract::ws::Message as Ws;
    use futures::StreamExt;
    use kite_stream::channel::{self, Incoming};
    let (sink, mut source) = socket.split();
    let (out_tx, writer) = super::remote::ws_writer(sink);
    let send = |ch: u8, data: &[u8]| {
        let out = out_tx.clone();
        let m = channel::encode(proto, ch, data);
        async move {
            out.send(m)
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
    };
    let mut inputs = Vec::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let _ = send(data_ch, &port.to_le_bytes()).await;
        let _ = send(err_ch, &port.to_le_bytes()).await;
        let (in_tx, in_rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        inputs.push(in_tx);
        let (target, port) = (target.clone(), *port);
        let out = out_tx.clone();
        tasks.push(tokio::spawn(async move {
            let enc = move |ch: u8, d: &[u8]| channel::encode(proto, ch, d);
            match dial(&target, port).await {
                Err(e) => {
                    let _ = out.send(enc(err_ch, e.as_bytes())).await;
                }
                Ok(tcp) => {
                    let (r, w) = tcp.into_split();
                    let up = tokio::spawn(copy_in(in_rx, w));
                    copy_out(r, 0, |b| {
                        let out = out.clone();
                        async move {
                            out.send(enc(data_ch, &b))
                                .await
                                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
                        }
                    })
                    .await;
                    up.abort();
                }
            }
        }));
    }
    drop(out_tx);
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = source.next().await {
            let data = match m {
                Ws::Binary(b) => b.to_vec(),
                Ws::Text(t) => t.as_bytes().to_vec(),
                Ws::Close(_) => break,
                _ => continue,
            };
            if let Ok(Incoming::Data(ch, d)) = channel::decode(proto, &data) {
                if ch % 2 == 0 {
                    if let Some(tx) = inputs.get((ch / 2) as usize) {
                        let _ = tx.send(Bytes::from(d)).await;
                    }
                }
            }
        }
    });
    for t in tasks {
        let _ = t.await;
    }
    reader.abort();
    let _ = writer.await;
}
