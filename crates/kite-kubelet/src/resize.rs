//! In-place resize of a running pod's containers (upstream's InPlacePodVerticalScaling):
//! what each container instance was given (its [`L_RESOURCES`] label, set when it was
//! made) against what its spec asks now; the plan for each ([`Step`]: nothing, a live
//! update, or a restart by its `resizePolicy`); whether the node holds the new requests
//! ([`fits`]: else the resize is Deferred or Infeasible); the live update of a container's
//! cgroup through containerd's Tasks.Update; and upstream's event messages. The pod
//! worker sequences these (`Kubelet::resize`); the pod's own cgroup is `cgroups`'.

use crate::containerd::Containerd;
use anyhow::{Context, Result};
use containerd_client::services::v1::{
    Container as CdContainer, UpdateContainerRequest, UpdateTaskRequest,
};
use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use serde_json::{json, Value};

/// The label holding a container instance's resources (JSON `ResourceRequirements`) as
/// it was made or last resized: its status's `resources` and `allocatedResources`.
pub const L_RESOURCES: &str = "kite.io/resources";

/// CPU (millicores) and memory (bytes) requests and limits: what a resize compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuMem {
    pub cpu_req: Option<i128>,
    pub cpu_lim: Option<i128>,
    pub mem_req: Option<i128>,
    pub mem_lim: Option<i128>,
}

impl CpuMem {
    pub fn of(r: Option<&ResourceRequirements>) -> CpuMem {
        let get = |limits: bool, name: &str, milli: bool| {
            let r = r?;
            let m = if limits { &r.limits } else { &r.requests };
            let q = m.as_ref()?.get(name)?;
            if milli {
                kite_runtime::quantity::parse_milli(&q.0)
            } else {
                kite_runtime::quantity::parse(&q.0)
            }
        };
        CpuMem {
            cpu_req: get(false, "cpu", true),
            cpu_lim: get(true, "cpu", true),
            mem_req: get(false, "memory", false),
            mem_lim: get(true, "memory", false),
        }
    }
}

/// What a running container needs for its spec's resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Keep,
    /// Its cgroup is updated in place.
    Update,
    /// A changed resource's `resizePolicy` is `RestartContainer`.
    Restart,
}

/// The step for container `c` whose running instance was given `applied`.
pub fn step(c: &Container, applied: &ResourceRequirements) -> Step {
    let want = CpuMem::of(c.resources.as_ref());
    let have = CpuMem::of(Some(applied));
    if want == have {
        return Step::Keep;
    }
    let cpu = want.cpu_req != have.cpu_req || want.cpu_lim != have.cpu_lim;
    let memory = want.mem_req != have.mem_req || want.mem_lim != have.mem_lim;
    let restarts = |name: &str| {
        c.resize_policy
            .iter()
            .flatten()
            .any(|p| p.resource_name == name && p.restart_policy == "RestartContainer")
    };
    if (cpu && restarts("cpu")) || (memory && restarts("memory")) {
        Step::Restart
    } else {
        Step::Update
    }
}

/// The resources a container instance was made or last resized with (None for one made
/// before kite kept them: it is left as it is).
pub fn applied(labels: &std::collections::HashMap<String, String>) -> Option<ResourceRequirements> {
    serde_json::from_str(labels.get(L_RESOURCES)?).ok()
}

/// The label value for `c`'s resources as its spec has them now.
pub fn label(c: &Container) -> String {
    serde_json::to_string(&c.resources.clone().unwrap_or_default()).unwrap_or_default()
}

/// Upstream's resize admission: `None` when the node's allocatable holds `wanted` (the
/// pod's requests after the resize: CPU in millicores, memory in bytes) besides `used`
/// (the other pods' requests); else the PodResizePending reason and message: Infeasible
/// when the node could never hold it, Deferred when it could once others shrink or go.
pub fn fits(
    wanted: (i128, i128),
    used: (i128, i128),
    allocatable: (i128, i128),
) -> Option<(&'static str, String)> {
    let each = [
        ("cpu", wanted.0, used.0, allocatable.0),
        ("memory", wanted.1, used.1, allocatable.1),
    ];
    for (name, want, _, cap) in each {
        if want > cap {
            return Some((
                "Infeasible",
                format!(
                    "Node didn't have enough capacity: {name}, requested: {want}, capacity: {cap}"
                ),
            ));
        }
    }
    for (name, want, used, cap) in each {
        if want + used > cap {
            return Some((
                "Deferred",
                format!(
                    "Node didn't have enough resource: {name}, requested: {want}, used: {used}, capacity: {cap}"
                ),
            ));
        }
    }
    None
}

/// Upstream's resize event message: `PREFIX: {"containers":[{"name":…,"resources":…}],
/// "generation":N}` from the pod's spec.
pub fn message(prefix: &str, pod: &Pod, error: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let list = |cs: &[Container]| -> Vec<Value> {
        cs.iter()
            .map(|c| {
                let mut v = json!({"name": c.name});
                let r = serde_json::to_value(c.resources.clone().unwrap_or_default())
                    .unwrap_or_default();
                if r.as_object().is_some_and(|m| !m.is_empty()) {
                    v["resources"] = r;
                }
                v
            })
            .collect()
    };
    let mut summary = json!({});
    let inits = list(spec.init_containers.as_deref().unwrap_or_default());
    if !inits.is_empty() {
        summary["initContainers"] = json!(inits);
    }
    summary["containers"] = json!(list(&spec.containers));
    summary["generation"] = json!(pod.metadata.generation.unwrap_or(0));
    if !error.is_empty() {
        summary["error"] = json!(error);
    }
    format!("{prefix}: {summary}")
}

/// Gives the running container `id` the cgroup settings of `c`'s resources now (runc
/// update through the shim), then records them on it ([`L_RESOURCES`]).
pub async fn update(cd: &Containerd, id: &str, c: &Container) -> Result<()> {
    let res = crate::spec::linux_resources(&c.resources.clone().unwrap_or_default());
    cd.tasks()
        .update(cd.req(UpdateTaskRequest {
            container_id: id.to_string(),
            resources: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: serde_json::to_vec(&res)?,
            }),
            ..Default::default()
        }))
        .await
        .context("updating the container's resources")?;
    cd.containers()
        .update(cd.req(UpdateContainerRequest {
            container: Some(CdContainer {
                id: id.to_string(),
                labels: [(L_RESOURCES.to_string(), label(c))].into_iter().collect(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!("labels.{L_RESOURCES}")],
            }),
        }))
        .await
        .context("recording the container's resources")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(yaml: &str) -> Container {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn resources(yaml: &str) -> ResourceRequirements {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn steps_follow_the_resize_policy() {
        let was =
            resources("{requests: {cpu: 20m, memory: 35Mi}, limits: {cpu: 20m, memory: 35Mi}}");
        // Equal amounts written differently are no change.
        let c = container("{name: c, resources: {requests: {cpu: '0.02', memory: 36700160}, limits: {cpu: 20m, memory: 35Mi}}}");
        assert_eq!(step(&c, &was), Step::Keep);
        let c = container("{name: c, resources: {requests: {cpu: 25m, memory: 35Mi}, limits: {cpu: 25m, memory: 35Mi}}}");
        assert_eq!(step(&c, &was), Step::Update);
        let c = container("{name: c, resizePolicy: [{resourceName: memory, restartPolicy: RestartContainer}], resources: {requests: {cpu: 25m, memory: 35Mi}, limits: {cpu: 25m, memory: 35Mi}}}");
        assert_eq!(step(&c, &was), Step::Update, "memory did not change");
        let c = container("{name: c, resizePolicy: [{resourceName: memory, restartPolicy: RestartContainer}], resources: {requests: {cpu: 20m, memory: 40Mi}, limits: {cpu: 20m, memory: 40Mi}}}");
        assert_eq!(step(&c, &was), Step::Restart);
        // A limit added is a change.
        let c = container("{name: c, resources: {requests: {cpu: 20m, memory: 35Mi}, limits: {cpu: 20m, memory: 35Mi, }}}");
        let only_req = resources("{requests: {cpu: 20m, memory: 35Mi}}");
        assert_eq!(step(&c, &only_req), Step::Update);
    }

    #[test]
    fn admission_says_why_as_upstream() {
        assert_eq!(fits((500, 1 << 20), (1000, 0), (2000, 1 << 30)), None);
        let (r, m) = fits((3000, 0), (0, 0), (2000, 1 << 30)).unwrap();
        assert_eq!(r, "Infeasible");
        assert_eq!(
            m,
            "Node didn't have enough capacity: cpu, requested: 3000, capacity: 2000"
        );
        let (r, m) = fits((1500, 0), (1000, 0), (2000, 1 << 30)).unwrap();
        assert_eq!(r, "Deferred");
        assert_eq!(
            m,
            "Node didn't have enough resource: cpu, requested: 1500, used: 1000, capacity: 2000"
        );
    }

    #[test]
    fn event_messages_summarise_the_spec() {
        let pod: Pod = serde_saphyr::from_str(
            "metadata: {generation: 2}\nspec:\n  containers:\n  - {name: c, resources: {requests: {cpu: 25m}}}\n",
        )
        .unwrap();
        assert_eq!(
            message("Pod resize completed", &pod, ""),
            r#"Pod resize completed: {"containers":[{"name":"c","resources":{"requests":{"cpu":"25m"}}}],"generation":2}"#
        );
    }
}
