//! The agent's client-side load balancer (K3s's agent has the same on 6444): a TCP
//! listener on loopback that every node component dials instead of a server, forwarding
//! each connection to the first server that answers, starting from the one that answered
//! last. TLS is end to end (the components verify the servers' certificates themselves).
//! The server list follows the addresses of the `default/kubernetes` endpoints, so that a
//! server added later is used without touching the agent.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
pub struct LoadBalancer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

struct Inner {
    /// `host:port` of each server; `first` is the one given on the command line.
    servers: Mutex<Vec<String>>,
    first: String,
    /// Index into `servers` of the one that answered last.
    preferred: Mutex<usize>,
}

impl LoadBalancer {
    /// Listens on `listen` and forwards to `server` until the list is learned.
    pub async fn start(listen: SocketAddr, server: String) -> std::io::Result<LoadBalancer> {
        let l = tokio::net::TcpListener::bind(listen).await?;
        let addr = l.local_addr()?;
        let inner = Arc::new(Inner {
            servers: Mutex::new(vec![server.clone()]),
            first: server,
            preferred: Mutex::new(0),
        });
        let lb = LoadBalancer { addr, inner };
        let me = lb.clone();
        tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((c, _)) => {
                        let me = me.clone();
                        tokio::spawn(async move { me.forward(c).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "load balancer: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(lb)
    }

    pub fn servers(&self) -> Vec<String> {
        self.inner.servers.lock().unwrap().clone()
    }

    /// Replaces the server list (the one from the command line is kept last, as a way
    /// back in if every learned address goes).
    pub fn set_servers(&self, mut list: Vec<String>) {
        list.sort();
        list.dedup();
        if !list.contains(&self.inner.first) {
            list.push(self.inner.first.clone());
        }
        let mut cur = self.inner.servers.lock().unwrap();
        if *cur != list {
            tracing::info!(servers = ?list, "load balancer: servers");
            let keep = cur
                .get(*self.inner.preferred.lock().unwrap())
                .and_then(|p| list.iter().position(|s| s == p))
                .unwrap_or(0);
            *self.inner.preferred.lock().unwrap() = keep;
            *cur = list;
        }
    }

    async fn forward(&self, mut c: tokio::net::TcpStream) {
        let servers = self.servers();
        let start = *self.inner.preferred.lock().unwrap();
        for i in 0..servers.len() {
            let idx = (start + i) % servers.len();
            let s = &servers[idx];
            let dial = tokio::time::timeout(
                Duration::from_secs(3),
                tokio::net::TcpStream::connect(s.as_str()),
            )
            .await;
            match dial {
                Ok(Ok(mut up)) => {
                    if idx != start {
                        tracing::info!(server = %s, "load balancer: switched server");
                        *self.inner.preferred.lock().unwrap() = idx;
                    }
                    let _ = up.set_nodelay(true);
                    let _ = c.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(server = %s, error = %e, "load balancer: dial failed")
                }
                Err(_) => tracing::debug!(server = %s, "load balancer: dial timed out"),
            }
        }
        tracing::debug!("load balancer: no server answered");
    }

    /// Keeps the server list equal to the `kubernetes` Service's endpoints.
    pub async fn follow_endpoints(self, client: kube::Client) {
        let api: Api<EndpointSlice> = Api::namespaced(client, "default");
        let lp = ListParams::default().labels("kubernetes.io/service-name=kubernetes");
        loop {
            if let Ok(list) = api.list(&lp).await {
                let mut servers = Vec::new();
                for s in &list.items {
                    let port = s
                        .ports
                        .iter()
                        .flatten()
                        .find_map(|p| p.port)
                        .unwrap_or(6443);
                    for e in s.endpoints.iter().flatten() {
                        if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                            continue;
                        }
                        for a in &e.addresses {
                            servers.push(if a.contains(':') {
                                format!("[{a}]:{port}")
                            } else {
                                format!("{a}:{port}")
                            });
                        }
                    }
                }
                if !servers.is_empty() {
                    self.set_servers(servers);
                }
            }
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn forwards_to_a_server_that_answers_and_skips_one_that_does_not() {
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut c, _) = up.accept().await.unwrap();
            c.write_all(b"hello").await.unwrap();
        });
        // A port nothing listens on: bind, note, drop.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap().to_string();
        drop(dead);
        let lb = LoadBalancer::start("127.0.0.1:0".parse().unwrap(), dead_addr.clone())
            .await
            .unwrap();
        lb.set_servers(vec![up_addr.clone()]);
        assert_eq!(lb.servers().len(), 2);
        let mut c = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"hello");
    }
}
