//! In-place resize, as the pod worker runs it (the rules are `crate::resize`'s): which
//! running containers need new resources, whether the node holds them, and the order of
//! the cgroup changes (the pod's widened first, narrowed last).

use super::{Kubelet, NORMAL, WARNING};
use crate::containers::{self, Info};
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kite_runtime::informer::Key;
use std::time::Duration;

impl Kubelet {
    /// In-place resize (see `resize`): gives each running container the CPU and memory
    /// its spec asks now, in place or by a restart as its `resizePolicy` says, when the
    /// node holds the pod's new requests; else the pod's PodResizePending condition says
    /// why. The pod's cgroup is widened before its containers move and narrowed after.
    /// Returns whether it acted, and when to look again (a deferred or failed resize).
    pub(super) async fn resize(
        &self,
        pod: &Pod,
        key: &Key,
        have: &[Info],
    ) -> (bool, Option<Duration>) {
        use crate::resize::{self, Step};
        let spec = pod.spec.clone().unwrap_or_default();
        let mut plan = Vec::new();
        let mut applied_pod = pod.clone();
        let all = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten());
        for c in all {
            let Some(i) = containers::running_instance(have, &c.name) else {
                continue;
            };
            let Some(applied) = &i.resources else {
                continue;
            };
            if let Some(s) = applied_pod.spec.as_mut() {
                let list = s
                    .containers
                    .iter_mut()
                    .chain(s.init_containers.iter_mut().flatten());
                for a in list.filter(|a| a.name == c.name) {
                    a.resources = Some(applied.clone());
                }
            }
            match resize::step(c, applied) {
                Step::Keep => {}
                step => plan.push((c, i, step)),
            }
        }
        if plan.is_empty() {
            self.set_resize(key, None);
            return (false, None);
        }
        let node = self.node();
        let allocatable = |name: &str, milli: bool| {
            let q = node
                .as_ref()?
                .status
                .as_ref()?
                .allocatable
                .as_ref()?
                .get(name)?
                .0
                .clone();
            if milli {
                kite_runtime::quantity::parse_milli(&q)
            } else {
                kite_runtime::quantity::parse(&q)
            }
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut used = (0, 0);
        for p in self.pods.list() {
            let s = p.spec.as_ref();
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            if p.metadata.uid.as_deref() == Some(uid.as_str())
                || s.and_then(|s| s.node_name.as_deref()) != Some(self.opts.node_name.as_str())
                || matches!(phase, Some("Succeeded" | "Failed"))
            {
                continue;
            }
            let (cpu, mem) = crate::cgroups::pod_requests(&p);
            used = (used.0 + cpu, used.1 + mem);
        }
        let cap = (
            allocatable("cpu", true).unwrap_or(i128::MAX / 4),
            allocatable("memory", false).unwrap_or(i128::MAX / 4),
        );
        if let Some((reason, msg)) = resize::fits(crate::cgroups::pod_requests(pod), used, cap) {
            let prefix = format!("Pod resize {reason}");
            let event = resize::message(&prefix, pod, &msg);
            if self.set_resize(key, Some(("PodResizePending", reason, msg))) {
                let why = if reason == "Infeasible" {
                    "ResizeInfeasible"
                } else {
                    "ResizeDeferred"
                };
                self.recorder.event(pod, WARNING, why, event);
            }
            return (false, Some(Duration::from_secs(15)));
        }
        self.recorder.event(
            pod,
            NORMAL,
            "ResizeStarted",
            resize::message("Pod resize started", pod, ""),
        );
        let before = crate::cgroups::pod_limits(&applied_pod);
        let after = crate::cgroups::pod_limits(pod);
        let grace =
            Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64);
        let outcome: Result<()> = async {
            memory_decrease_check(pod, &plan, &before, &after)?;
            crate::cgroups::apply_pod(pod, &before.widest(&after))?;
            for (c, i, step) in &plan {
                match step {
                    Step::Restart => {
                        self.resize_restarts.lock().unwrap().insert(i.id.clone());
                        self.rt.stop(&i.id, i.stop_signal, grace).await?;
                    }
                    _ => resize::update(&self.cd, &i.id, c)
                        .await
                        .with_context(|| format!("resizing container {}", c.name))?,
                }
            }
            crate::cgroups::apply_pod(pod, &after)
        }
        .await;
        if let Err(e) = outcome {
            let msg = format!("{e:#}");
            tracing::warn!(namespace = %key.0, pod = %key.1, error = %msg, "in-place resize");
            let event = resize::message("Pod resize error", pod, &msg);
            if self.set_resize(key, Some(("PodResizeInProgress", "Error", msg))) {
                self.recorder.event(pod, WARNING, "ResizeError", event);
            }
            return (true, Some(Duration::from_secs(5)));
        }
        self.update_qos_cgroups();
        self.set_resize(key, None);
        self.recorder.event(
            pod,
            NORMAL,
            "ResizeCompleted",
            resize::message("Pod resize completed", pod, ""),
        );
        (true, None)
    }

    /// Records why the pod's resize waits (or that it does not); whether that changed.
    pub(super) fn set_resize(
        &self,
        key: &Key,
        to: Option<(&'static str, &'static str, String)>,
    ) -> bool {
        let mut st = self.state.lock().unwrap();
        match st.get_mut(key) {
            Some(s) if s.resize == to => false,
            Some(s) => {
                s.resize = to;
                true
            }
            None if to.is_none() => false,
            None => {
                st.entry(key.clone()).or_default().resize = to;
                true
            }
        }
    }
}

/// Upstream's check before lowering memory limits: none may go below what is in use now
/// (the kernel would reclaim, or kill, to get there); the resize then stays in progress
/// with the error, and is tried again.
fn memory_decrease_check(
    pod: &Pod,
    plan: &[(
        &k8s_openapi::api::core::v1::Container,
        &Info,
        crate::resize::Step,
    )],
    before: &crate::cgroups::Limits,
    after: &crate::cgroups::Limits,
) -> Result<()> {
    use crate::resize::{CpuMem, Step};
    let rel = crate::cgroups::pod_cgroup(pod);
    let usage = |rel: &str| crate::stats::memory(rel).map(|m| m.usage as i128);
    let lower = |new: Option<i128>, old: Option<i128>| match (new, old) {
        (Some(n), Some(o)) => (n < o).then_some(n),
        (Some(n), None) => Some(n),
        _ => None,
    };
    let mut errs = Vec::new();
    if let Some(new) = lower(after.memory.map(i128::from), before.memory.map(i128::from)) {
        // An unknown usage (no memory controller there) is not refused for want of a figure.
        if let Some(u) = usage(&rel).filter(|u| *u >= new) {
            errs.push(format!(
                "attempting to set pod memory limit ({new}) below current usage ({u})"
            ));
        }
    }
    for (c, i, step) in plan {
        if *step != Step::Update {
            continue;
        }
        let new = CpuMem::of(c.resources.as_ref()).mem_lim;
        let old = CpuMem::of(i.resources.as_ref()).mem_lim;
        let Some(new) = lower(new, old) else { continue };
        if let Some(u) = usage(&format!("{rel}/{}", i.id)).filter(|u| *u >= new) {
            errs.push(format!(
                "attempting to set container {:?} memory limit ({new}) below current usage ({u})",
                c.name
            ));
        }
    }
    match errs.len() {
        0 => Ok(()),
        // Go's aggregate error: one as it is, several in brackets.
        1 => anyhow::bail!("cannot decrease memory limits: {}", errs[0]),
        _ => anyhow::bail!("cannot decrease memory limits: [{}]", errs.join(", ")),
    }
}
