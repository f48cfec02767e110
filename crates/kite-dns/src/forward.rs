//! Names that are not the cluster's go to the host's resolvers, as CoreDNS's
//! `forward . /etc/resolv.conf` with `cache 30` in K3s's Corefile: answers are cached
//! for their TTL, at most 30 s, negative answers for their SOA's minimum, at most 30 s.
//!
//! kite's DNS runs in the host's network namespace, so a loopback resolver such as
//! systemd-resolved's 127.0.0.53 is reachable from it; when `/etc/resolv.conf` names
//! only loopback resolvers and systemd-resolved's own upstream list exists, that list is
//! used instead, as K3s does.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest any forwarded answer is kept.
const MAX_TTL: u32 = 30;
/// Entries kept at most; when full, expired ones go, then everything.
const CAPACITY: usize = 10_000;
/// How long one upstream gets to answer.
const TIMEOUT: Duration = Duration::from_secs(2);
const SYSTEMD_RESOLV: &str = "/run/systemd/resolve/resolv.conf";

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolver (none in {0})")]
    NoUpstream(String),
    #[error("no upstream resolver answered")]
    NoAnswer,
}

/// The nameservers of a resolv.conf.
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next())?
        })
        .filter_map(|a| a.split('%').next()?.parse().ok())
        .collect()
}

/// The resolvers to forward to: those of `path`; for the default file, when it names
/// only loopback ones, systemd-resolved's upstreams if it has a list.
pub fn upstreams(path: &Path, explicit: bool) -> Vec<SocketAddr> {
    let read = |p: &Path| nameservers(&std::fs::read_to_string(p).unwrap_or_default());
    let mut ips = read(path);
    if !explicit && !ips.is_empty() && ips.iter().all(|i| i.is_loopback()) {
        let resolved = read(Path::new(SYSTEMD_RESOLV));
        if !resolved.is_empty() {
            ips = resolved;
        }
    }
    ips.into_iter().map(|ip| SocketAddr::new(ip, 53)).collect()
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct Key {
    name: Name,
    qtype: RecordType,
    dnssec_ok: bool,
}

struct Entry {
    msg: Message,
    stored: Instant,
    ttl: u32,
}

/// The forwarder: upstreams and the cache.
pub struct Forwarder {
    source: (PathBuf, bool),
    upstreams: Mutex<Vec<SocketAddr>>,
    cache: Mutex<HashMap<Key, Entry>>,
}

fn key(req: &Message) -> Option<Key> {
    let q = req.queries.first()?;
    Some(Key {
        name: q.name().to_lowercase(),
        qtype: q.query_type(),
        dnssec_ok: req.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
    })
}

impl Forwarder {
    /// Forwards to the resolvers of `resolv_conf`; `explicit` when the user named it.
    pub fn new(resolv_conf: PathBuf, explicit: bool) -> Forwarder {
        let ups = upstreams(&resolv_conf, explicit);
        if ups.is_empty() {
            tracing::warn!(path = %resolv_conf.display(), "no nameserver to forward names outside the cluster to; they will fail (pass --resolv-conf)");
        }
        Forwarder {
            source: (resolv_conf, explicit),
            upstreams: Mutex::new(ups),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Forwards to these resolvers, whatever the resolv.conf says (tests, benchmarks:
    /// a resolver on a port other than 53).
    pub fn with_upstreams(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder {
            source: (PathBuf::from("/dev/null"), true),
            upstreams: Mutex::new(upstreams),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the resolv.conf again (it may have changed: DHCP, VPNs).
    pub fn reload(&self) {
        let ups = upstreams(&self.source.0, self.source.1);
        let mut cur = self.upstreams.lock().unwrap();
        if *cur != ups {
            tracing::info!(upstreams = ?ups, "forwarding to new resolvers");
            *cur = ups;
        }
    }

    /// The cached answer to `req`, with its ID and the TTLs aged, if there is one.
    pub fn cached(&self, req: &Message) -> Option<Message> {
        let k = key(req)?;
        let mut cache = self.cache.lock().unwrap();
        let e = cache.get(&k)?;
        let age = e.stored.elapsed().as_secs() as u32;
        let ttl = e.ttl;
        if age >= ttl {
            cache.remove(&k);
            return None;
        }
        let mut m = e.msg.clone();
        drop(cache);
        m.metadata.id = req.metadata.id;
        m.metadata.recursion_desired = req.metadata.recursion_desired;
        m.queries = req.queries.clone();
        for r in m
            .answers
            .iter_mut()
            .chain(m.authorities.iter_mut())
            .chain(m.additionals.iter_mut())
        {
            r.ttl = r.ttl.min(ttl).saturating_sub(age);
        }
        Some(m)
    }

    /// Asks the upstreams, in order; the answer is cached.
    pub async fn forward(&self, req: &Message) -> Result<Message, ForwardError> {
        let ups = self.upstreams.lock().unwrap().clone();
        if ups.is_empty() {
            return Err(ForwardError::NoUpstream(
                self.source.0.display().to_string(),
            ));
        }
        let Ok(bytes) = req.to_vec() else {
            return Err(ForwardError::NoAnswer);
        };
        for up in ups {
            match exchange(up, &bytes, req.metadata.id).await {
                Ok(mut m) => {
                    for r in m
                        .answers
                        .iter_mut()
                        .chain(m.authorities.iter_mut())
                        .chain(m.additionals.iter_mut())
                    {
                        r.ttl = r.ttl.min(MAX_TTL);
                    }
                    self.store(req, &m);
                    return Ok(m);
                }
                Err(e) => tracing::debug!(upstream = %up, error = %e, "upstream did not answer"),
            }
        }
        Err(ForwardError::NoAnswer)
    }

    fn store(&self, req: &Message, m: &Message) {
        let ttl = match m.metadata.response_code {
            ResponseCode::NoError if !m.answers.is_empty() => {
                m.answers.iter().map(|r| r.ttl).min().unwrap_or(0)
            }
            ResponseCode::NoError | ResponseCode::NXDomain => m
                .authorities
                .iter()
                .find_map(|r| match &r.data {
                    RData::SOA(s) => Some(s.minimum.min(r.ttl)),
                    _ => None,
                })
                .unwrap_or(0),
            _ => 0,
        }
        .min(MAX_TTL);
        if ttl == 0 || m.metadata.truncation {
            return;
        }
        let Some(k) = key(req) else { return };
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CAPACITY {
            cache.retain(|_, e| e.stored.elapsed().as_secs() < e.ttl as u64);
            if cache.len() >= CAPACITY {
                cache.clear();
            }
        }
        cache.insert(
            k,
            Entry {
                msg: m.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }
}

#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("malformed answer")]
    Malformed,
}

/// One question to one upstream: over UDP, again over TCP if the answer was truncated.
async fn exchange(up: SocketAddr, query: &[u8], id: u16) -> Result<Message, ExchangeError> {
    let local: SocketAddr = if up.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = tokio::net::UdpSocket::bind(local).await?;
    sock.connect(up).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let m = loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| ExchangeError::Timeout)??;
        // The connected socket only hears this upstream; a stray ID is ignored.
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.metadata.id == id => break m,
            _ => continue,
        }
    };
    if !m.metadata.truncation {
        return Ok(m);
    }
    let tcp = async {
        let mut s = tokio::net::TcpStream::connect(up).await?;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        s.write_all(&framed).await?;
        let len = s.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        Message::from_vec(&buf).map_err(|_| ExchangeError::Malformed)
    };
    tokio::time::timeout(TIMEOUT, tcp)
        .await
        .map_err(|_| ExchangeError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let t = "# c\nsearch x\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:2\n";
        assert_eq!(
            nameservers(t),
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }
}
