//! The DNS server's sockets: UDP read by blocking threads (one per core; a cluster
//! answer or a cached one is sent from the thread that read the query, with no task
//! switch), TCP served by tokio, and forwarded misses run as tokio tasks. Sockets are
//! bound with `IP_FREEBIND`, so the node's address may appear after kite binds it (the
//! pods' bridge comes up with the first pod).

use crate::answer::{answer, Outcome};
use crate::forward::Forwarder;
use crate::view::View;
use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest UDP answer kite sends to a client that offers more (RFC 9715's 1232).
const EDNS_PAYLOAD: u16 = 1232;

/// What every query is answered from.
pub struct Shared {
    pub view: RwLock<Arc<View>>,
    pub forwarder: Forwarder,
}

impl Shared {
    pub fn snapshot(&self) -> Arc<View> {
        self.view.read().unwrap().clone()
    }

    /// The answer, if the view or the cache has it; `None`: forward.
    fn respond(&self, req: &Message) -> Option<Message> {
        match answer(&self.snapshot(), req) {
            Outcome::Answer(m) => Some(m),
            Outcome::Forward => self.forwarder.cached(req),
        }
    }

    async fn forwarded(&self, req: &Message) -> Message {
        match self.forwarder.forward(req).await {
            Ok(mut m) => {
                m.metadata.id = req.metadata.id;
                m
            }
            Err(e) => {
                tracing::debug!(error = %e, "forwarding failed");
                let mut m = Message::error_msg(
                    req.metadata.id,
                    req.metadata.op_code,
                    ResponseCode::ServFail,
                );
                m.queries = req.queries.clone();
                m.metadata.recursion_desired = req.metadata.recursion_desired;
                m.metadata.recursion_available = true;
                m
            }
        }
    }
}

/// The wire form of `resp`, with EDNS when the query had it, truncated (TC set) when it
/// does not fit what a UDP client accepts.
pub fn finish(req: &Message, mut resp: Message, udp: bool) -> Option<Vec<u8>> {
    let mut limit = if udp { 512 } else { usize::from(u16::MAX) };
    if let Some(e) = &req.edns {
        let mut o = Edns::new();
        o.set_max_payload(EDNS_PAYLOAD);
        o.set_dnssec_ok(e.flags().dnssec_ok);
        resp.set_edns(o);
        if udp {
            limit = usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD));
        }
    }
    let bytes = resp.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    resp.answers.clear();
    resp.authorities.clear();
    resp.additionals.clear();
    resp.metadata.truncation = true;
    resp.to_vec().ok()
}

fn parse(buf: &[u8]) -> Option<Message> {
    Message::from_vec(buf)
        .ok()
        .filter(|m| m.metadata.message_type == MessageType::Query)
}

/// A socket bound to `addr` whether or not the address is the host's yet.
fn bind(addr: SocketAddr, ty: SockType) -> std::io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, ty, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv4() {
        socket::setsockopt(&fd, sockopt::IpFreebind, &true)?;
    }
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    if ty == SockType::Stream {
        socket::listen(
            &fd,
            socket::Backlog::new(128).unwrap_or(socket::Backlog::MAXCONN),
        )?;
    }
    Ok(fd)
}

/// Binds UDP and TCP on `addr` and serves them until the process ends. Returns the bound
/// address (with the port the kernel chose when `addr`'s was 0).
pub fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
) -> std::io::Result<SocketAddr> {
    let udp: UdpSocket = bind(addr, SockType::Datagram)?.into();
    let bound = udp.local_addr()?;
    let tcp: std::net::TcpListener = bind(bound, SockType::Stream)?.into();
    tcp.set_nonblocking(true)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    for i in 0..threads {
        let sock = udp.try_clone()?;
        let shared = shared.clone();
        let rt = rt.clone();
        std::thread::Builder::new()
            .name(format!("kite-dns-udp{i}"))
            .spawn(move || udp_loop(sock, shared, rt))?;
    }
    let _enter = rt.enter();
    let listener = tokio::net::TcpListener::from_std(tcp)?;
    rt.spawn(tcp_loop(listener, shared));
    Ok(bound)
}

fn udp_loop(sock: UdpSocket, shared: Arc<Shared>, rt: tokio::runtime::Handle) {
    let sock = Arc::new(sock);
    let mut buf = [0u8; 4096];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reading a DNS query failed");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let Some(req) = parse(&buf[..n]) else {
            continue;
        };
        match shared.respond(&req) {
            Some(resp) => {
                if let Some(b) = finish(&req, resp, true) {
                    let _ = sock.send_to(&b, peer);
                }
            }
            None => {
                let (sock, shared) = (sock.clone(), shared.clone());
                rt.spawn(async move {
                    let resp = shared.forwarded(&req).await;
                    if let Some(b) = finish(&req, resp, true) {
                        let _ = sock.send_to(&b, peer);
                    }
                });
            }
        }
    }
}

async fn tcp_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tcp_conn(conn, shared).await;
        });
    }
}

/// One TCP connection: length-prefixed queries until the client closes it or is idle
/// for 10 s (CoreDNS's read timeout).
async fn tcp_conn(mut conn: tokio::net::TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let idle = std::time::Duration::from_secs(10);
    loop {
        let Ok(len) = tokio::time::timeout(idle, conn.read_u16()).await else {
            return Ok(());
        };
        let mut buf = vec![0u8; usize::from(len?)];
        tokio::time::timeout(idle, conn.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let Some(req) = parse(&buf) else {
            return Ok(());
        };
        let resp = match shared.respond(&req) {
            Some(r) => r,
            None => shared.forwarded(&req).await,
        };
        if let Some(b) = finish(&req, resp, false) {
            let mut out = (b.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&b);
            conn.write_all(&out).await?;
        }
    }
}
