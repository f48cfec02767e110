//! A `kite server` with its node, for the benches that run pods (node, streams): the
//! offline test images, the server on a free port, waited for until its node is Ready,
//! and everything it made removed when it is dropped (kite-killall.sh for its data dir).
// Each bench uses what it needs of this.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub data: PathBuf,
    pub kc: PathBuf,
    pub client: kube::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Containers first (while containerd answers), then kite, then what is left.
        let killall = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../packaging/kite-killall.sh"
        );
        let run_killall = |data: &Path| {
            let _ = Command::new("sh")
                .arg(killall)
                .env("KITE_DATA_DIR", data)
                .env("KITE_KILLALL_NODE_ONLY", "1")
                .stdout(Stdio::null())
                .status();
        };
        run_killall(&self.data);
        let _ = self.child.kill();
        let _ = self.child.wait();
        run_killall(&self.data);
    }
}

impl Server {
    /// Builds the images, starts the server (with `extra` flags) and waits for its node
    /// (named `bench`) to be Ready.
    pub async fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let images = data.join("agent/images");
        std::fs::create_dir_all(&images).unwrap();
        let build = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/images/build.py");
        assert!(Command::new("python3")
            .arg(build)
            .arg(&images)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success());
        let port = super::common::free_port();
        let kc = dir.path().join("kc.yaml");
        let child = super::common::kite_server(&data, port, &kc)
            // Upstream's default eviction thresholds evict every pod on a disk over 85%
            // full: a bench measures the node, not the host's disk.
            .args([
                "--eviction-hard",
                "nodefs.available<1%,imagefs.available<1%",
            ])
            .args(extra)
            .spawn()
            .expect("kite server starts");
        let started = Instant::now();
        while !kc.exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "kite did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let client = kite_runtime::client::from_kubeconfig(&kc).await.unwrap();
        let server = Server {
            child,
            data,
            kc,
            client: client.clone(),
            _dir: dir,
        };
        let nodes: Api<Node> = Api::all(client);
        loop {
            let ok = nodes
                .get_opt("bench")
                .await
                .ok()
                .flatten()
                .is_some_and(|n| {
                    n.status
                        .and_then(|s| s.conditions)
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                });
            if ok {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the node never became Ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "node Ready {:.2} s after start",
            started.elapsed().as_secs_f64()
        );
        server
    }
}
