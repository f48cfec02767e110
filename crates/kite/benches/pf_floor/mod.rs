//! A kite-free endpoint for `kubectl port-forward`: the floor of the streams bench's
//! port-forward part, as `tests/bench/exec_floor.py` is of its exec part.
//!
//! It answers what `kubectl port-forward pod/web LOCAL:80` asks of an API server and no
//! more: discovery of the core group, the pod (a canned Running pod), and the WebSocket
//! upgrade (`SPDY/3.1+portforward.k8s.io`, kubectl's default), over TLS with client
//! certificates as kite's API server. Each forwarded connection is relayed to a fixed
//! address (the pod's IP and port, from the node), and the bytes from it go to the client
//! the cheapest way a server can send them: read from the socket straight after the room
//! left for the SPDY header, and handed to the WebSocket as one message, with no other copy.
//! No API, no kubelet, no namespace entered, no routing: what a port-forward costs beyond
//! this is the server's. kubectl's CPU, which on two cores competes with both, is in both.
//!
//! Control frames from the client (SYN_STREAM, PING) are read with `kite_stream::spdy`:
//! they carry zlib-compressed headers, and they are not in the data path.

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use kite_stream::spdy;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

/// How much of the pod's output one DATA frame carries at most (kite reads 128 KiB).
const CHUNK: usize = 128 * 1024;
const PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// The running endpoint; it stops when dropped.
pub struct PfFloor {
    pub kubeconfig: PathBuf,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for PfFloor {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl PfFloor {
    /// Serves on a free loopback port, writing certificates and `kubeconfig` in `dir`;
    /// every forwarded connection goes to `target`.
    pub async fn start(dir: &Path, target: SocketAddr) -> PfFloor {
        let pki = kite_pki::Pki::load_or_create(&dir.join("pki"), &["127.0.0.1".to_string()])
            .expect("the floor's certificates");
        let client = pki
            .client_cert("floor-admin", "admin", &["system:masters"])
            .expect("the floor's client certificate");
        let mut tls = (*kite_pki::tls::server_config(
            &pki.serving.cert_pem,
            &pki.serving.key_pem,
            &pki.client_ca.cert_pem,
        )
        .expect("the floor's TLS config"))
        .clone();
        // kubectl's WebSocket dialer speaks HTTP/1.1 only; so does this endpoint.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kite_pki::kubeconfig(&url, &pki.server_ca.cert_pem, &client),
        )
        .unwrap();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let Ok(conn) = tls.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| answer(req, target));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        PfFloor { kubeconfig, accept }
    }
}

/// Discovery, the pod, and the upgrade.
async fn answer(
    req: Request<hyper::body::Incoming>,
    target: SocketAddr,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    if path.ends_with("/portforward") {
        return Ok(upgrade(req, target));
    }
    let body = match path.as_str() {
        "/api" => serde_json::json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        "/apis" => serde_json::json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
        "/api/v1" => {
            serde_json::json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "shortNames": ["po"],
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
            {"name": "pods/portforward", "singularName": "", "namespaced": true,
             "kind": "PodPortForwardOptions", "verbs": ["create", "get"]}]})
        }
        "/api/v1/namespaces/default/pods/web" => serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default",
                         "uid": "00000000-0000-0000-0000-000000000001", "resourceVersion": "1"},
            "spec": {"containers": [{"name": "web", "image": "kite.test/shell:1"}], "nodeName": "floor"},
            "status": {"phase": "Running"}}),
        _ => {
            return Ok(Response::builder()
                .status(StatusCode::NOT_FOUND)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}"#,
                )))
                .unwrap())
        }
    };
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap())
}

fn upgrade(mut req: Request<hyper::body::Incoming>, target: SocketAddr) -> Response<Full<Bytes>> {
    let h = req.headers();
    let offered = h
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim() == PROTOCOL));
    let Some(key) = h.get("sec-websocket-key").filter(|_| offered) else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(Full::new(Bytes::from_static(
                b"the floor speaks only WebSocket",
            )))
            .unwrap();
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(io) = on.await {
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(io),
                Role::Server,
                None,
            )
            .await;
            session(ws, target).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .header("sec-websocket-protocol", PROTOCOL)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// One stream the client opened, waiting for its pair.
#[derive(Default)]
struct Pair {
    data: Option<u32>,
    error: Option<u32>,
}

/// One tunnelled SPDY connection: the client's frames read from its messages; each frame
/// sent is one binary message.
async fn session<S>(ws: tokio_tungstenite::WebSocketStream<S>, target: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (out, mut rx) = mpsc::channel::<Bytes>(64);
    // The writer: messages in order, flushed when the queue runs dry.
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if sink.feed(Message::Binary(b)).await.is_err() {
                return;
            }
            while let Ok(b) = rx.try_recv() {
                if sink.feed(Message::Binary(b)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let mut inflater = spdy::Inflater::default();
    let mut deflater = spdy::Deflater::default();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // The pod-bound side of each forwarded connection, by its data stream's id.
    let mut uploads: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut buf = BytesMut::new();
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Binary(b) => buf.extend_from_slice(&b),
            Message::Close(_) => break,
            _ => continue,
        }
        // Every whole frame buffered.
        while buf.len() >= 8 {
            let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
            if buf.len() < 8 + len {
                break;
            }
            let frame = buf.split_to(8 + len).freeze();
            if frame[0] & 0x80 == 0 {
                // DATA from the client: on to the pod; FIN half-closes.
                let id = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
                if let Some(up) = uploads.get(&id) {
                    if len > 0 {
                        let _ = up.send(frame.slice(8..)).await;
                    }
                    if frame[4] & 1 != 0 {
                        uploads.remove(&id);
                    }
                }
                continue;
            }
            let Ok(Some(f)) = spdy::read_frame(&mut &frame[..], &mut inflater).await else {
                return;
            };
            match f {
                spdy::Frame::SynStream { id, headers, .. } => {
                    let reply = spdy::Frame::SynReply {
                        id,
                        fin: false,
                        headers: spdy::Headers::default(),
                    };
                    let Ok(b) = spdy::encode(&reply, &mut deflater) else {
                        return;
                    };
                    let _ = out.send(Bytes::from(b)).await;
                    let rid = headers.get("requestid").unwrap_or_default().to_string();
                    let pair = pairs.entry(rid.clone()).or_default();
                    match headers.get("streamtype") {
                        Some("data") => pair.data = Some(id),
                        _ => pair.error = Some(id),
                    }
                    if let (Some(data), Some(error)) = (pair.data, pair.error) {
                        pairs.remove(&rid);
                        let (tx, up) = mpsc::channel(16);
                        uploads.insert(data, tx);
                        tokio::spawn(relay(target, data, error, up, out.clone()));
                    }
                }
                spdy::Frame::Ping(id) => {
                    if let Ok(b) = spdy::encode(&spdy::Frame::Ping(id), &mut deflater) {
                        let _ = out.send(Bytes::from(b)).await;
                    }
                }
                spdy::Frame::GoAway { .. } => break,
                _ => {}
            }
        }
    }
    drop(uploads);
    drop(out);
    let _ = writer.await;
}

/// A DATA frame's header, written into the first 8 bytes of `b`.
fn data_header(b: &mut [u8], id: u32, fin: bool, len: usize) {
    b[..4].copy_from_slice(&id.to_be_bytes());
    b[4..8].copy_from_slice(&(len as u32).to_be_bytes());
    b[4] = u8::from(fin);
}

/// One forwarded connection: to `target`, and its bytes back as DATA frames read straight
/// after their header's room; the end is FIN on both streams.
async fn relay(
    target: SocketAddr,
    data: u32,
    error: u32,
    mut up: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Bytes>,
) {
    let fin = |id: u32| {
        let mut b = [0u8; 8];
        data_header(&mut b, id, true, 0);
        Bytes::copy_from_slice(&b)
    };
    let Ok(tcp) = tokio::net::TcpStream::connect(target).await else {
        let _ = out.send(fin(data)).await;
        let _ = out.send(fin(error)).await;
        return;
    };
    let (mut r, mut w) = tcp.into_split();
    let upload = tokio::spawn(async move {
        while let Some(b) = up.recv().await {
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    loop {
        let mut b = BytesMut::with_capacity(8 + CHUNK);
        b.extend_from_slice(&[0u8; 8]);
        match r.read_buf(&mut b).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                data_header(&mut b, data, false, n);
                if out.send(b.freeze()).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = out.send(fin(data)).await;
    let _ = out.send(fin(error)).await;
    upload.abort();
}
