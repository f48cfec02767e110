//! The node's figures as the kubelet reports them: `/stats/summary` (the node, each pod
//! and each running container, from their cgroups and filesystems), which the Prometheus
//! endpoints render too, and the CPU sampler's rounds (`stats` holds the measuring).

use super::Kubelet;
use crate::containers::State;
use k8s_openapi::api::core::v1::Pod;
use std::sync::Arc;

impl Kubelet {
    /// The cgroups `/stats/summary` reports on: the node (`/`), each pod's and each of its
    /// running containers'.
    pub(super) async fn stat_targets(
        &self,
    ) -> Vec<(
        Arc<Pod>,
        String,
        Vec<(String, String, Option<jiff::Timestamp>)>,
    )> {
        let mut out = Vec::new();
        for p in self.pods.list() {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let Ok(infos) = self.rt.list(&uid).await else {
                continue;
            };
            let running: Vec<_> = infos
                .iter()
                .filter_map(|i| match i.state {
                    State::Running { .. } => Some((i.name.clone(), i.id.clone(), i.created)),
                    _ => None,
                })
                .collect();
            if running.is_empty() {
                continue;
            }
            out.push((p.clone(), crate::cgroups::pod_cgroup(&p), running));
        }
        out
    }

    /// Samples every reported cgroup's CPU (see `stats::Sampler`).
    pub(crate) async fn sample_stats(&self) {
        let mut rels = vec!["/".to_string()];
        for (_, rel, cs) in self.stat_targets().await {
            rels.extend(cs.iter().map(|(_, id, _)| format!("{rel}/{id}")));
            rels.push(rel);
        }
        self.sampler.sample(&rels);
    }

    /// `/stats/summary`, upstream's `statsapi.Summary`.
    pub(crate) async fn summary(&self) -> serde_json::Value {
        use crate::stats;
        use serde_json::json;
        let ts =
            |t: Option<jiff::Timestamp>| t.map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        let data = &self.opts.data_dir;
        let mut pods = Vec::new();
        for (p, rel, cs) in self.stat_targets().await {
            let containers: Vec<_> = cs
                .iter()
                .map(|(name, id, started)| {
                    let crel = format!("{rel}/{id}");
                    json!({
                        "name": name,
                        "startTime": ts(*started),
                        "cpu": self.sampler.cpu(&crel),
                        "memory": stats::memory_json(&crel),
                        "rootfs": stats::fs(data),
                        "logs": stats::fs(&self.opts.pod_logs_dir),
                    })
                })
                .collect();
            pods.push(json!({
                "podRef": {
                    "name": p.metadata.name,
                    "namespace": p.metadata.namespace,
                    "uid": p.metadata.uid,
                },
                "startTime": p.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| ts(Some(t.0))),
                "containers": containers,
                "cpu": self.sampler.cpu(&rel),
                "memory": stats::memory_json(&rel),
                "volume": [],
                "ephemeral-storage": stats::fs(data),
                "process_stats": {"process_count": stats::process_count(&rel)},
            }));
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<i64>().ok())
        });
        json!({
            "node": {
                "nodeName": self.opts.node_name,
                "startTime": ts(boot.and_then(|b| jiff::Timestamp::from_second(b).ok())),
                "cpu": self.sampler.cpu("/"),
                "memory": stats::memory_json("/"),
                "fs": stats::fs(data),
                "runtime": {"imageFs": stats::fs(&data.join("agent").join("containerd"))},
                "rlimit": {
                    "time": ts(Some(jiff::Timestamp::now())),
                    "maxpid": std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|v| v.trim().parse::<u64>().ok()),
                    "curproc": std::fs::read_dir("/proc").map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit())).count()).unwrap_or(0),
                },
            },
            "pods": pods,
        })
    }
}
