//! What a simulated node and its pods look like: the Node object it registers, its
//! conditions, and the status a bound pod gets once it "runs".

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeSpec, NodeStatus, NodeSystemInfo, Pod, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// `kite sim` settings.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub nodes: usize,
    pub prefix: String,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub start_delay: Duration,
    /// How often each node's Lease is renewed.
    pub heartbeat_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid label {0:?}: expected KEY=VALUE")]
    Label(String),
    #[error("invalid taint {0:?}: expected KEY[=VALUE]:EFFECT with EFFECT NoSchedule, PreferNoSchedule or NoExecute")]
    Taint(String),
}

/// Parses `k=v,k2=v2`.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, SpecError> {
    let mut m = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| SpecError::Label(part.to_string()))?;
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

/// Parses `key=value:Effect,key2:Effect`, as `kubectl taint` writes them.
pub fn parse_taints(s: &str) -> Result<Vec<Taint>, SpecError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || SpecError::Taint(part.to_string());
        let (kv, effect) = part.rsplit_once(':').ok_or_else(bad)?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(bad());
        }
        let (k, v) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (kv, None),
        };
        if k.is_empty() {
            return Err(bad());
        }
        out.push(Taint {
            key: k.to_string(),
            value: v,
            effect: effect.to_string(),
            time_added: None,
        });
    }
    Ok(out)
}

pub fn node_conditions(now: jiff::Timestamp) -> Value {
    kite_runtime::node::conditions(now, None, Default::default())
}

/// The fake InternalIP of node `i`: loopback addresses, which nothing ever dials.
fn address(i: usize) -> String {
    format!("127.64.{}.{}", (i / 250) % 256, i % 250 + 1)
}

pub fn node_ip(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address.clone())
        .unwrap_or_default()
}

impl SimOptions {
    pub fn node_name(&self, i: usize) -> String {
        format!("{}{i}", self.prefix)
    }

    /// The Node object registered for node `i`.
    pub fn node(&self, i: usize) -> Node {
        let name = self.node_name(i);
        let mut labels: BTreeMap<String, String> = [
            ("kubernetes.io/hostname", name.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", std::env::consts::ARCH),
            ("beta.kubernetes.io/os", "linux"),
            ("beta.kubernetes.io/arch", std::env::consts::ARCH),
            ("node.kubernetes.io/instance-type", "kite-sim"),
            ("type", "kite-sim"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        labels.extend(self.labels.clone());
        let cap: BTreeMap<String, Quantity> = [
            ("cpu", self.cpu.clone()),
            ("memory", self.memory.clone()),
            ("pods", self.pods.to_string()),
            ("ephemeral-storage", "100Gi".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v)))
        .collect();
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        let status = json!({
            "capacity": cap,
            "allocatable": cap,
            "conditions": node_conditions(jiff::Timestamp::now()),
            "addresses": [
                NodeAddress { type_: "InternalIP".into(), address: address(i) },
                NodeAddress { type_: "Hostname".into(), address: name.clone() },
            ],
            "nodeInfo": NodeSystemInfo {
                architecture: arch.into(),
                boot_id: String::new(),
                container_runtime_version: "kite-sim://0.1.0".into(),
                kernel_version: "kite-sim".into(),
                kube_proxy_version: String::new(),
                kubelet_version: format!("v{}+kite", "1.36.0"),
                machine_id: String::new(),
                operating_system: "linux".into(),
                os_image: "kite simulated node".into(),
                system_uuid: String::new(),
                ..Default::default()
            },
        });
        Node {
            metadata: ObjectMeta {
                name: Some(name),
                labels: Some(labels),
                annotations: Some(
                    [("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string())].into(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(self.taints.clone()).filter(|t| !t.is_empty()),
                ..Default::default()
            }),
            status: Some(serde_json::from_value::<NodeStatus>(status).unwrap_or_default()),
        }
    }
}

/// The status of a pod whose containers all started at `now` and are ready.
pub fn running_status(pod: &Pod, host_ip: &str, ip: &str, now: jiff::Timestamp) -> Value {
    let spec = pod.spec.as_ref();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": Time(now)});
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    // Init containers have run to completion; app containers are running and ready.
    let status = |c: &k8s_openapi::api::core::v1::Container, init: bool| {
        let state = if init {
            json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": Time(now), "finishedAt": Time(now)}})
        } else {
            json!({"running": {"startedAt": Time(now)}})
        };
        json!({
            "name": c.name,
            "image": c.image.clone().unwrap_or_default(),
            "imageID": "",
            "containerID": format!("kite-sim://{uid}-{}", c.name),
            "ready": true,
            "started": !init,
            "restartCount": 0,
            "state": state,
        })
    };
    let containers: Vec<Value> = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| status(c, false))
        .collect();
    let inits: Vec<Value> = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|c| status(c, true))
        .collect();
    let mut st = json!({
        "phase": "Running",
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": Time(now),
        "containerStatuses": containers,
    });
    if !inits.is_empty() {
        st["initContainerStatuses"] = json!(inits);
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_taints_and_labels() {
        let t = parse_taints("a=b:NoSchedule,c:NoExecute").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].value.as_deref(), Some("b"));
        assert_eq!(t[1].effect, "NoExecute");
        assert!(parse_taints("a=b:Sometimes").is_err());
        assert!(parse_taints("nocolon").is_err());
        let l = parse_labels("zone=a, disk=ssd").unwrap();
        assert_eq!(l["disk"], "ssd");
        assert!(parse_labels("novalue").is_err());
    }
}
