//! The eviction loop (see `eviction` for the rules): every 10 s it measures the node's
//! signals, keeps the pressure conditions the heartbeat posts, and, while a threshold is
//! crossed, evicts one pod (upstream evicts at most one per round); it also evicts a pod
//! whose emptyDir has outgrown its `sizeLimit`.

use super::{Failure, Kubelet};
use crate::eviction::{self, Candidate, Pressure, Signal};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the signals are measured (upstream's housekeeping interval).
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Hard evictions give containers this long (upstream's immediate eviction grace).
const GRACE: Duration = Duration::from_secs(1);

impl Kubelet {
    /// The pressure conditions that hold now (see `eviction::Conditions`).
    pub fn pressure(&self) -> Vec<Pressure> {
        self.pressure.lock().unwrap().clone()
    }

    pub(crate) async fn eviction_round(self: &Arc<Self>) {
        let settings = self.opts.eviction.clone();
        let imagefs = self.opts.data_dir.join("agent").join("containerd");
        let imagefs = if imagefs.exists() {
            imagefs
        } else {
            self.opts.data_dir.clone()
        };
        let readings = eviction::observe(&self.opts.data_dir, &imagefs);
        let crossed = eviction::crossed(&settings.hard, &readings);
        let held = self.pressure_conditions.lock().unwrap().update(
            Instant::now(),
            &crossed,
            settings.transition,
        );
        let changed = {
            let mut p = self.pressure.lock().unwrap();
            std::mem::replace(&mut *p, held.clone()) != held
        };
        if changed {
            tracing::warn!(pressure = ?held, crossed = ?crossed.iter().map(|c| c.0.name()).collect::<Vec<_>>(), "node pressure changed");
        }
        self.evict_oversized_empty_dirs();
        if let Some((signal, threshold, reading)) = crossed.first().copied() {
            if let Some(victim) = self.candidates(signal).await.into_iter().next() {
                let msg = eviction::message(signal, threshold, reading, &victim);
                if let Some(pod) = self.pods.get_key(&victim.key) {
                    tracing::warn!(namespace = %victim.key.0, pod = %victim.key.1, signal = signal.name(), "evicting a pod");
                    self.fail(
                        &pod,
                        &victim.key,
                        Failure {
                            reason: "Evicted",
                            message: msg,
                            grace: Some(GRACE),
                        },
                    );
                }
            }
        }
    }

    /// Upstream's eviction admission: under pressure, a new pod is refused (its message)
    /// unless it is critical, or, under memory pressure alone, not BestEffort or tolerating
    /// the memory-pressure taint.
    pub(super) fn admission_refusal(
        &self,
        pod: &k8s_openapi::api::core::v1::Pod,
    ) -> Option<String> {
        let held = self.pressure();
        if held.is_empty() {
            return None;
        }
        let spec = pod.spec.as_ref()?;
        if matches!(
            spec.priority_class_name.as_deref(),
            Some("system-node-critical" | "system-cluster-critical")
        ) || crate::static_pods::is_static(pod)
        {
            return None;
        }
        if held == [Pressure::Memory] {
            let tolerates = spec.tolerations.iter().flatten().any(|t| {
                let key_ok = t.key.as_deref().is_none_or(|k| k.is_empty())
                    && t.operator.as_deref() == Some("Exists")
                    || t.key.as_deref() == Some("node.kubernetes.io/memory-pressure");
                let effect_ok = t
                    .effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "NoSchedule");
                key_ok && effect_ok
            });
            if crate::cgroups::qos_class(pod) != "BestEffort" || tolerates {
                return None;
            }
        }
        let names: Vec<&str> = held
            .iter()
            .map(|p| match p {
                Pressure::Memory => "MemoryPressure",
                Pressure::Disk => "DiskPressure",
                Pressure::Pid => "PIDPressure",
            })
            .collect();
        Some(format!("The node had condition: [{}]. ", names.join(" ")))
    }

    /// Refuses a pod that never started: Failed, with the reason and message, and an event.
    pub(super) async fn reject(
        &self,
        pod: &k8s_openapi::api::core::v1::Pod,
        reason: &str,
        message: String,
    ) -> anyhow::Result<()> {
        use kube::api::{Patch, PatchParams};
        self.recorder
            .event(pod, super::WARNING, reason, message.clone());
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(self.client.clone(), &ns);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = serde_json::json!({"status": {"phase": "Failed", "reason": reason, "message": message,
            "startTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }

    /// The node's running pods, ranked for eviction under `signal`; static and
    /// system-node-critical pods are never evicted, as upstream.
    async fn candidates(&self, signal: Signal) -> Vec<Candidate> {
        let mut out = Vec::new();
        for (pod, rel, cs) in self.stat_targets().await {
            let spec = pod.spec.clone().unwrap_or_default();
            let critical = spec.priority_class_name.as_deref() == Some("system-node-critical")
                || spec.priority_class_name.as_deref() == Some("system-cluster-critical")
                || crate::static_pods::is_static(&pod);
            let key = kite_runtime::informer::key_of(&*pod);
            let failed = self
                .state
                .lock()
                .unwrap()
                .get(&key)
                .is_some_and(|s| s.failed.is_some());
            if critical || failed {
                continue;
            }
            let (usage, request, top) = match signal.condition() {
                Pressure::Memory => {
                    let used =
                        |rel: &str| crate::stats::memory(rel).map_or(0, |m| m.working_set as i128);
                    let mut top: Option<(String, i128, i128)> = None;
                    for (name, id, _) in &cs {
                        let u = used(&format!("{rel}/{id}"));
                        let c = spec.containers.iter().find(|c| &c.name == name);
                        let r = c
                            .and_then(|c| {
                                c.resources
                                    .as_ref()?
                                    .requests
                                    .as_ref()?
                                    .get("memory")
                                    .cloned()
                            })
                            .and_then(|q| kite_runtime::quantity::parse(&q.0))
                            .unwrap_or(0);
                        if top.as_ref().is_none_or(|t| u - r > t.1 - t.2) {
                            top = Some((name.clone(), u, r));
                        }
                    }
                    (used(&rel), crate::cgroups::pod_requests(&pod).1, top)
                }
                _ => {
                    // Disk: what the pod's writable layers, logs and emptyDirs take.
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    let mut u = eviction::disk_usage(&self.pod_dir(&uid)) as i128;
                    for d in std::fs::read_dir(&self.opts.pod_logs_dir)
                        .into_iter()
                        .flatten()
                        .flatten()
                    {
                        if d.file_name().to_string_lossy().ends_with(&uid) {
                            u += eviction::disk_usage(&d.path()) as i128;
                        }
                    }
                    let r = spec
                        .containers
                        .iter()
                        .filter_map(|c| {
                            c.resources
                                .as_ref()?
                                .requests
                                .as_ref()?
                                .get("ephemeral-storage")
                                .cloned()
                        })
                        .filter_map(|q| kite_runtime::quantity::parse(&q.0))
                        .sum();
                    (u, r, None)
                }
            };
            out.push(Candidate {
                key,
                priority: spec.priority.unwrap_or(0),
                usage,
                request,
                top,
            });
        }
        eviction::rank(out)
    }

    /// Evicts each pod with a disk-backed emptyDir over its sizeLimit (a memory-backed one
    /// is a tmpfs of that size already).
    fn evict_oversized_empty_dirs(&self) {
        for pod in self.pods.list() {
            let spec = pod.spec.clone().unwrap_or_default();
            if spec.node_name.as_deref() != Some(self.opts.node_name.as_str()) {
                continue;
            }
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            for v in spec.volumes.iter().flatten() {
                let Some(ed) = &v.empty_dir else { continue };
                if ed.medium.as_deref() == Some("Memory") {
                    continue;
                }
                let Some(limit) = &ed.size_limit else {
                    continue;
                };
                let Some(bytes) = kite_runtime::quantity::parse(&limit.0) else {
                    continue;
                };
                let dir = self
                    .pod_dir(&uid)
                    .join("volumes/kubernetes.io~empty-dir")
                    .join(&v.name);
                if (eviction::disk_usage(&dir) as i128) > bytes {
                    let key = kite_runtime::informer::key_of(&*pod);
                    self.fail(
                        &pod,
                        &key,
                        Failure {
                            reason: "Evicted",
                            message: eviction::empty_dir_message(&v.name, &limit.0),
                            grace: Some(GRACE),
                        },
                    );
                }
            }
        }
    }
}
