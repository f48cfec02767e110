//! Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for, with
//! upstream's columns for the common kinds (priority 1 columns appear with `-o wide`), and
//! upstream's default (Name, Created At) for the rest.

use crate::registry::ResourceInfo;
use jiff::Timestamp;
use serde_json::{json, Value};

/// A column: name, type, format, priority.
type Col = (&'static str, &'static str, &'static str, u8);

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

fn or_none(v: String) -> Value {
    if v.is_empty() {
        json!("<none>")
    } else {
        json!(v)
    }
}

/// Upstream's duration.HumanDuration.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let r = secs % 60;
        if r == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{r}s")
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        let r = m % 60;
        if r == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{r}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        let r = h % 24;
        if r == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{r}h")
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let r = d % 365;
        if r == 0 {
            format!("{}y", d / 365)
        } else {
            format!("{}y{r}d", d / 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn age(obj: &Value, now: Timestamp) -> Value {
    match obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<Timestamp>().ok())
    {
        Some(t) => json!(human_duration(now.duration_since(t).as_secs())),
        None => json!("<unknown>"),
    }
}

fn ports_text(ports: &Value, node_ports: bool) -> String {
    let items: Vec<String> = ports
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(np) if node_ports => format!("{}:{}/{}", s(&p["port"]), np, proto),
                        _ => format!("{}/{}", s(&p["port"]), proto),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    items.join(",")
}

fn selector_text(sel: &Value) -> String {
    let mut parts: Vec<String> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
        .unwrap_or_default();
    if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let vals: Vec<String> = e["values"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            parts.push(match e["operator"].as_str().unwrap_or_default() {
                "In" => format!("{} in ({})", s(&e["key"]), vals.join(",")),
                "NotIn" => format!("{} notin ({})", s(&e["key"]), vals.join(",")),
                "Exists" => s(&e["key"]),
                _ => format!("!{}", s(&e["key"])),
            });
        }
    }
    parts.join(",")
}

fn map_selector_text(sel: &Value) -> String {
    sel.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", s(v)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn containers_and_images(spec: &Value) -> (String, String) {
    let cs = spec["containers"].as_array().cloned().unwrap_or_default();
    let names: Vec<String> = cs.iter().map(|c| s(&c["name"])).collect();
    let images: Vec<String> = cs.iter().map(|c| s(&c["image"])).collect();
    (names.join(","), images.join(","))
}

/// The STATUS column, as upstream's printPod derives it: phase or reason, then the
/// first unfinished init container (`Init:Error`, `Init:1/2`), else the app containers'
/// waiting or terminated reasons, and Terminating last.
/// Whether the pod's init container `name` is a sidecar (restartPolicy Always).
fn is_sidecar(pod: &Value, name: &Value) -> bool {
    pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| &c["name"] == name && c["restartPolicy"] == "Always")
}

fn pod_status_reason(pod: &Value) -> String {
    let status = &pod["status"];
    let phase = status["phase"].as_str().unwrap_or("Pending");
    let mut reason = status["reason"].as_str().unwrap_or(phase).to_string();
    let n_init = pod["spec"]["initContainers"]
        .as_array()
        .map_or(0, |a| a.len());
    let terminated_reason = |t: &Value, prefix: &str| match t["reason"].as_str() {
        Some(r) if !r.is_empty() => format!("{prefix}{r}"),
        _ if t["signal"].as_i64().unwrap_or(0) != 0 => format!("{prefix}Signal:{}", t["signal"]),
        _ => format!("{prefix}ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
    };
    let mut initializing = false;
    for (i, c) in status["initContainerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let t = &c["state"]["terminated"];
        let w = c["state"]["waiting"]["reason"].as_str().unwrap_or("");
        if t.is_object() && t["exitCode"].as_i64() == Some(0) {
            continue;
        }
        if is_sidecar(pod, &c["name"]) && c["started"] == true {
            continue;
        }
        initializing = true;
        reason = if t.is_object() {
            terminated_reason(t, "Init:")
        } else if !w.is_empty() && w != "PodInitializing" {
            format!("Init:{w}")
        } else {
            format!("Init:{i}/{n_init}")
        };
        break;
    }
    let initialized = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Initialized" && c["status"] == "True");
    if !initializing || initialized {
        let mut has_running = false;
        for c in status["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .rev()
        {
            let st = &c["state"];
            match st["waiting"]["reason"].as_str() {
                Some(r) if !r.is_empty() => reason = r.to_string(),
                _ if st["terminated"].is_object() => {
                    reason = terminated_reason(&st["terminated"], "")
                }
                _ if c["ready"] == true && st["running"].is_object() => has_running = true,
                _ => {}
            }
        }
        if reason == "Completed" && has_running {
            let ready = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            reason = if ready { "Running" } else { "NotReady" }.into();
        }
    }
    let terminal = phase == "Succeeded" || phase == "Failed";
    if pod["metadata"]["deletionTimestamp"].is_string() {
        if status["reason"] == "NodeLost" {
            reason = "Unknown".into();
        } else if !terminal {
            reason = "Terminating".into();
        }
    }
    reason
}

/// Up to three items, then " + N more...", as upstream prints endpoints.
fn first_three(items: &[String]) -> String {
    match items.len() {
        0 => "<none>".into(),
        n if n <= 3 => items.join(","),
        n => format!("{} + {} more...", items[..3].join(","), n - 3),
    }
}

fn columns(ri: &ResourceInfo) -> &'static [Col] {
    const NAME: Col = ("Name", "string", "name", 0);
    const AGE: Col = ("Age", "string", "", 0);
    match (ri.group, ri.kind) {
        ("", "Pod") => &[
            NAME,
            ("Ready", "string", "", 0),
            ("Status", "string", "", 0),
            ("Restarts", "string", "", 0),
            AGE,
            ("IP", "string", "", 1),
            ("Node", "string", "", 1),
            ("Nominated Node", "string", "", 1),
            ("Readiness Gates", "string", "", 1),
        ],
        ("apps", "Deployment") => &[
            NAME,
            ("Ready", "string", "", 0),
            ("Up-to-date", "integer", "", 0),
            ("Available", "integer", "", 0),
            AGE,
            ("Containers", "string", "", 1),
            ("Images", "string", "", 1),
            ("Selector", "string", "", 1),
        ],
        ("policy", "PodDisruptionBudget") => &[
            NAME,
            ("Min Available", "string", "", 0),
            ("Max Unavailable", "string", "", 0),
            ("Allowed Disruptions", "integer", "", 0),
            AGE,
        ],
        ("apps", "ReplicaSet") | ("", "ReplicationController") => &[
            NAME,
            ("Desired", "integer", "", 0),
            ("Current", "integer", "", 0),
            ("Ready", "integer", "", 0),
            AGE,
            ("Containers", "string", "", 1),
            ("Images", "string", "", 1),
            ("Selector", "string", "", 1),
        ],
        ("apps", "StatefulSet") => &[
            NAME,
            ("Ready", "string", "", 0),
            AGE,
            ("Containers", "string", "", 1),
            ("Images", "string", "", 1),
        ],
        ("apps", "DaemonSet") => &[
            NAME,
            ("Desired", "integer", "", 0),
            ("Current", "integer", "", 0),
            ("Ready", "integer", "", 0),
            ("Up-to-date", "integer", "", 0),
            ("Available", "integer", "", 0),
            ("Node Selector", "string", "", 0),
            AGE,
            ("Containers", "string", "", 1),
            ("Images", "string", "", 1),
            ("Selector", "string", "", 1),
        ],
        ("", "Service") => &[
            NAME,
            ("Type", "string", "", 0),
            ("Cluster-IP", "string", "", 0),
            ("External-IP", "string", "", 0),
            ("Port(s)", "string", "", 0),
            AGE,
            ("Selector", "string", "", 1),
        ],
        ("", "Namespace") => &[NAME, ("Status", "string", "", 0), AGE],
        ("", "ConfigMap") => &[NAME, ("Data", "string", "", 0), AGE],
        ("", "Secret") => &[
            NAME,
            ("Type", "string", "", 0),
            ("Data", "string", "", 0),
            AGE,
        ],
        ("", "ServiceAccount") => &[NAME, ("Secrets", "string", "", 0), AGE],
        ("", "Node") => &[
            NAME,
            ("Status", "string", "", 0),
            ("Roles", "string", "", 0),
            AGE,
            ("Version", "string", "", 0),
            ("Internal-IP", "string", "", 1),
            ("External-IP", "string", "", 1),
            ("OS-Image", "string", "", 1),
            ("Kernel-Version", "string", "", 1),
            ("Container-Runtime", "string", "", 1),
        ],
        ("", "Endpoints") => &[NAME, ("Endpoints", "string", "", 0), AGE],
        ("discovery.k8s.io", "EndpointSlice") => &[
            NAME,
            ("AddressType", "string", "", 0),
            ("Ports", "string", "", 0),
            ("Endpoints", "string", "", 0),
            AGE,
        ],
        ("scheduling.k8s.io", "PriorityClass") => &[
            NAME,
            ("Value", "integer", "", 0),
            ("Global-Default", "boolean", "", 0),
            AGE,
            ("PreemptionPolicy", "string", "", 0),
        ],
        ("", "Event") => &[
            ("Last Seen", "string", "", 0),
            ("Type", "string", "", 0),
            ("Reason", "string", "", 0),
            ("Object", "string", "", 0),
            ("Message", "string", "", 0),
        ],
        ("", "PersistentVolumeClaim") => &[
            NAME,
            ("Status", "string", "", 0),
            ("Volume", "string", "", 0),
            ("Capacity", "string", "", 0),
            ("Access Modes", "string", "", 0),
            ("StorageClass", "string", "", 0),
            ("VolumeAttributesClass", "string", "", 0),
            AGE,
            ("VolumeMode", "string", "", 1),
        ],
        ("batch", "Job") => &[
            NAME,
            ("Status", "string", "", 0),
            ("Completions", "string", "", 0),
            ("Duration", "string", "", 0),
            AGE,
            ("Containers", "string", "", 1),
            ("Images", "string", "", 1),
            ("Selector", "string", "", 1),
        ],
        ("batch", "CronJob") => &[
            NAME,
            ("Schedule", "string", "", 0),
            ("Timezone", "string", "", 0),
            ("Suspend", "boolean", "", 0),
            ("Active", "integer", "", 0),
            ("Last Schedule", "string", "", 0),
            AGE,
            ("Containers", "string", "", 1),
            ("Images", "string", "", 1),
            ("Selector", "string", "", 1),
        ],
        ("networking.k8s.io", "Ingress") => &[
            NAME,
            ("Class", "string", "", 0),
            ("Hosts", "string", "", 0),
            ("Address", "string", "", 0),
            ("Ports", "string", "", 0),
            AGE,
        ],
        ("coordination.k8s.io", "Lease") => &[NAME, ("Holder", "string", "", 0), AGE],
        _ => &[NAME, ("Created At", "date", "", 0)],
    }
}

fn cells(ri: &ResourceInfo, o: &Value, now: Timestamp) -> Vec<Value> {
    let name = json!(s(&o["metadata"]["name"]));
    let spec = &o["spec"];
    let st = &o["status"];
    let int = |v: &Value| json!(v.as_i64().unwrap_or(0));
    match (ri.group, ri.kind) {
        ("", "Pod") => {
            // Sidecars (init containers with restartPolicy Always) count as containers,
            // as upstream's printPod counts them.
            let sidecars: Vec<Value> = st["initContainerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| is_sidecar(o, &c["name"]))
                .cloned()
                .collect();
            let cs = spec["containers"].as_array().map_or(0, Vec::len)
                + spec["initContainers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["restartPolicy"] == "Always")
                    .count();
            let statuses = st["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ready = statuses
                .iter()
                .chain(&sidecars)
                .filter(|c| c["ready"] == true)
                .count();
            let restarts: i64 = statuses
                .iter()
                .chain(&sidecars)
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum();
            vec![
                name,
                json!(format!("{ready}/{cs}")),
                json!(pod_status_reason(o)),
                json!(restarts.to_string()),
                age(o, now),
                or_none(s(&st["podIP"])),
                or_none(s(&spec["nodeName"])),
                or_none(s(&st["nominatedNodeName"])),
                json!("<none>"),
            ]
        }
        ("apps", "Deployment") => {
            let (c, i) = containers_and_images(&spec["template"]["spec"]);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    st["readyReplicas"].as_i64().unwrap_or(0),
                    spec["replicas"].as_i64().unwrap_or(0)
                )),
                int(&st["updatedReplicas"]),
                int(&st["availableReplicas"]),
                age(o, now),
                json!(c),
                json!(i),
                json!(selector_text(&spec["selector"])),
            ]
        }
        ("policy", "PodDisruptionBudget") => {
            // An int-or-string as upstream prints it; N/A when unset.
            let ios = |v: &Value| match v {
                Value::Number(n) => json!(n.to_string()),
                Value::String(t) => json!(t),
                _ => json!("N/A"),
            };
            vec![
                name,
                ios(&spec["minAvailable"]),
                ios(&spec["maxUnavailable"]),
                int(&st["disruptionsAllowed"]),
                age(o, now),
            ]
        }
        ("apps", "ReplicaSet") | ("", "ReplicationController") => {
            let (c, i) = containers_and_images(&spec["template"]["spec"]);
            let sel = if ri.kind == "ReplicaSet" {
                selector_text(&spec["selector"])
            } else {
                map_selector_text(&spec["selector"])
            };
            vec![
                name,
                int(&spec["replicas"]),
                int(&st["replicas"]),
                int(&st["readyReplicas"]),
                age(o, now),
                json!(c),
                json!(i),
                json!(sel),
            ]
        }
        ("apps", "StatefulSet") => {
            let (c, i) = containers_and_images(&spec["template"]["spec"]);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    st["readyReplicas"].as_i64().unwrap_or(0),
                    spec["replicas"].as_i64().unwrap_or(0)
                )),
                age(o, now),
                json!(c),
                json!(i),
            ]
        }
        ("apps", "DaemonSet") => {
            let (c, i) = containers_and_images(&spec["template"]["spec"]);
            vec![
                name,
                int(&st["desiredNumberScheduled"]),
                int(&st["currentNumberScheduled"]),
                int(&st["numberReady"]),
                int(&st["updatedNumberScheduled"]),
                int(&st["numberAvailable"]),
                or_none(map_selector_text(&spec["template"]["spec"]["nodeSelector"])),
                age(o, now),
                json!(c),
                json!(i),
                json!(selector_text(&spec["selector"])),
            ]
        }
        ("", "Service") => {
            let ty = s(&spec["type"]);
            let ext: Vec<String> = spec["externalIPs"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            let lb: Vec<String> = st["loadBalancer"]["ingress"]
                .as_array()
                .map(|a| a.iter().map(|i| s(&i["ip"])).collect())
                .unwrap_or_default();
            let external = match ty.as_str() {
                "ExternalName" => s(&spec["externalName"]),
                "LoadBalancer" if lb.is_empty() && ext.is_empty() => "<pending>".into(),
                _ => [lb, ext].concat().join(","),
            };
            vec![
                name,
                json!(ty),
                or_none(s(&spec["clusterIP"])),
                or_none(external),
                or_none(ports_text(&spec["ports"], true)),
                age(o, now),
                or_none(map_selector_text(&spec["selector"])),
            ]
        }
        ("", "Namespace") => vec![name, json!(s(&st["phase"])), age(o, now)],
        ("", "ConfigMap") => {
            let n = o["data"].as_object().map_or(0, |m| m.len())
                + o["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, json!(n.to_string()), age(o, now)]
        }
        ("", "Secret") => {
            let n = o["data"].as_object().map_or(0, |m| m.len());
            vec![
                name,
                json!(s(&o["type"])),
                json!(n.to_string()),
                age(o, now),
            ]
        }
        ("", "ServiceAccount") => {
            let n = o["secrets"].as_array().map_or(0, Vec::len);
            vec![name, json!(n.to_string()), age(o, now)]
        }
        ("", "Node") => {
            let ready = st["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map(|c| match c["status"].as_str() {
                    Some("True") => "Ready",
                    _ => "NotReady",
                })
                .unwrap_or("Unknown");
            let mut status = ready.to_string();
            if spec["unschedulable"] == true {
                status.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<String> = o["metadata"]["labels"]
                .as_object()
                .map(|m| {
                    m.keys()
                        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            roles.sort();
            let addr = |t: &str| {
                st["addresses"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["type"] == t))
                    .map(|x| s(&x["address"]))
                    .unwrap_or_default()
            };
            let info = &st["nodeInfo"];
            vec![
                name,
                json!(status),
                or_none(roles.join(",")),
                age(o, now),
                json!(s(&info["kubeletVersion"])),
                or_none(addr("InternalIP")),
                or_none(addr("ExternalIP")),
                json!(s(&info["osImage"])),
                json!(s(&info["kernelVersion"])),
                json!(s(&info["containerRuntimeVersion"])),
            ]
        }
        ("", "Endpoints") => {
            let mut eps = Vec::new();
            for sub in o["subsets"].as_array().cloned().unwrap_or_default() {
                for a in sub["addresses"].as_array().cloned().unwrap_or_default() {
                    for p in sub["ports"].as_array().cloned().unwrap_or_default() {
                        eps.push(format!("{}:{}", s(&a["ip"]), s(&p["port"])));
                    }
                }
            }
            vec![name, json!(first_three(&eps)), age(o, now)]
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| {
                            p["port"]
                                .as_i64()
                                .map_or("<unset>".into(), |n| n.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let addrs: Vec<String> = o["endpoints"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                        .map(|a| s(&a))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                name,
                json!(s(&o["addressType"])),
                json!(if ports.is_empty() {
                    "<unset>".to_string()
                } else {
                    ports.join(",")
                }),
                json!(first_three(&addrs)),
                age(o, now),
            ]
        }
        ("scheduling.k8s.io", "PriorityClass") => vec![
            name,
            json!(o["value"].as_i64().unwrap_or(0)),
            json!(o["globalDefault"] == true),
            age(o, now),
            json!(o["preemptionPolicy"]
                .as_str()
                .unwrap_or("PreemptLowerPriority")),
        ],
        ("", "Event") => {
            let last = o["lastTimestamp"]
                .as_str()
                .or(o["eventTime"].as_str())
                .or(o["metadata"]["creationTimestamp"].as_str())
                .and_then(|t| t.parse::<Timestamp>().ok())
                .map(|t| human_duration(now.duration_since(t).as_secs()))
                .unwrap_or_else(|| "<unknown>".into());
            let io = &o["involvedObject"];
            vec![
                json!(last),
                json!(s(&o["type"])),
                json!(s(&o["reason"])),
                json!(format!(
                    "{}/{}",
                    s(&io["kind"]).to_lowercase(),
                    s(&io["name"])
                )),
                json!(s(&o["message"])),
            ]
        }
        ("", "PersistentVolumeClaim") => {
            let modes: Vec<String> = spec["accessModes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|m| match m.as_str().unwrap_or_default() {
                            "ReadWriteOnce" => "RWO".to_string(),
                            "ReadOnlyMany" => "ROX".to_string(),
                            "ReadWriteMany" => "RWX".to_string(),
                            "ReadWriteOncePod" => "RWOP".to_string(),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            vec![
                name,
                json!(s(&st["phase"])),
                json!(s(&spec["volumeName"])),
                json!(s(&st["capacity"]["storage"])),
                json!(if st["capacity"].is_null() {
                    String::new()
                } else {
                    modes.join(",")
                }),
                json!(s(&spec["storageClassName"])),
                or_none(s(&spec["volumeAttributesClassName"])),
                age(o, now),
                json!(s(&spec["volumeMode"])),
            ]
        }
        ("batch", "Job") => {
            let (c, i) = containers_and_images(&spec["template"]["spec"]);
            let succeeded = st["succeeded"].as_i64().unwrap_or(0);
            let completions = spec["completions"].as_i64().map_or(
                format!(
                    "{succeeded}/1 of {}",
                    spec["parallelism"].as_i64().unwrap_or(1)
                ),
                |c| format!("{succeeded}/{c}"),
            );
            let cond = |t: &str| {
                st["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] == "True"))
            };
            let status = if cond("Complete") {
                "Complete"
            } else if cond("Failed") {
                "Failed"
            } else if cond("Suspended") {
                "Suspended"
            } else if cond("FailureTarget") {
                "FailureTarget"
            } else if cond("SuccessCriteriaMet") {
                "SuccessCriteriaMet"
            } else {
                "Running"
            };
            let duration = match (
                st["startTime"]
                    .as_str()
                    .and_then(|t| t.parse::<Timestamp>().ok()),
                st["completionTime"]
                    .as_str()
                    .and_then(|t| t.parse::<Timestamp>().ok()),
            ) {
                (Some(a), Some(b)) => human_duration(b.duration_since(a).as_secs()),
                (Some(a), None) => human_duration(now.duration_since(a).as_secs()),
                _ => String::new(),
            };
            vec![
                name,
                json!(status),
                json!(completions),
                json!(duration),
                age(o, now),
                json!(c),
                json!(i),
                json!(selector_text(&spec["selector"])),
            ]
        }
        ("batch", "CronJob") => {
            let (c, i) = containers_and_images(&spec["jobTemplate"]["spec"]["template"]["spec"]);
            let last = st["lastScheduleTime"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .map(|t| human_duration(now.duration_since(t).as_secs()))
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(s(&spec["schedule"])),
                or_none(s(&spec["timeZone"])),
                json!(spec["suspend"] == true),
                json!(st["active"].as_array().map_or(0, Vec::len)),
                json!(last),
                age(o, now),
                json!(c),
                json!(i),
                or_none(selector_text(&spec["jobTemplate"]["spec"]["selector"])),
            ]
        }
        ("networking.k8s.io", "Ingress") => {
            let hosts: Vec<String> = spec["rules"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r["host"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let addrs: Vec<String> = st["loadBalancer"]["ingress"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|i| {
                            i["ip"]
                                .as_str()
                                .or(i["hostname"].as_str())
                                .unwrap_or_default()
                                .to_string()
                        })
                        .collect()
                })
                .unwrap_or_default();
            let ports = if spec["tls"].as_array().is_some_and(|t| !t.is_empty()) {
                "80, 443"
            } else {
                "80"
            };
            vec![
                name,
                or_none(s(&spec["ingressClassName"])),
                json!(if hosts.is_empty() {
                    "*".to_string()
                } else {
                    hosts.join(",")
                }),
                json!(addrs.join(",")),
                json!(ports),
                age(o, now),
            ]
        }
        ("coordination.k8s.io", "Lease") => {
            vec![name, or_none(s(&spec["holderIdentity"])), age(o, now)]
        }
        _ => vec![name, json!(s(&o["metadata"]["creationTimestamp"]))],
    }
}

/// What each row carries besides its cells (the `includeObject` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

fn row(ri: &ResourceInfo, o: &Value, now: Timestamp, include: IncludeObject) -> Value {
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => o.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o["metadata"],
        }),
    };
    let mut r = json!({"cells": cells(ri, o, now)});
    if !object.is_null() {
        r["object"] = object;
    }
    r
}

/// Builds a Table of `items`; `no_headers` leaves out column definitions (as watch events
/// after the first do).
pub fn table(
    ri: &ResourceInfo,
    items: &[Value],
    list_meta: Value,
    include: IncludeObject,
    no_headers: bool,
) -> Value {
    let now = Timestamp::now();
    let defs: Vec<Value> = if no_headers {
        Vec::new()
    } else {
        columns(ri)
            .iter()
            .map(|(name, ty, format, priority)| {
                json!({
                    "name": name,
                    "type": ty,
                    "format": format,
                    "description": column_description(name),
                    "priority": priority,
                })
            })
            .collect()
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": items.iter().map(|o| row(ri, o, now, include)).collect::<Vec<_>>(),
    })
}

fn column_description(name: &str) -> &'static str {
    match name {
        "Name" => "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
        "Age" | "Created At" => "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn durations_match_upstream() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(100 * 86400), "100d");
    }

    #[test]
    fn service_row() {
        let r = Registry::get();
        let svc = r.lookup("", "v1", "services").unwrap();
        let o = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.5",
                     "ports": [{"port": 80, "nodePort": 30007, "protocol": "TCP"}],
                     "selector": {"app": "web"}}});
        let t = table(svc, &[o], json!({}), IncludeObject::Metadata, false);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "NodePort");
        assert_eq!(cells[3], "<none>");
        assert_eq!(cells[4], "80:30007/TCP");
        assert_eq!(t["columnDefinitions"][2]["name"], "Cluster-IP");
    }

    #[test]
    fn pod_row_counts_sidecars() {
        let r = Registry::get();
        let pods = r.lookup("", "v1", "pods").unwrap();
        let o = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"initContainers": [{"name": "side", "restartPolicy": "Always"}, {"name": "once"}],
                     "containers": [{"name": "app"}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
                "initContainerStatuses": [
                    {"name": "side", "ready": true, "started": true, "restartCount": 2, "state": {"running": {}}},
                    {"name": "once", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
                "containerStatuses": [{"name": "app", "ready": true, "restartCount": 1, "state": {"running": {}}}]}});
        let t = table(pods, &[o], json!({}), IncludeObject::Metadata, false);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "2/2");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "3");
    }
}

#[cfg(test)]
mod endpoint_column_tests {
    #[test]
    fn endpoints_show_three_then_a_count() {
        let v: Vec<String> = (1..=5).map(|i| format!("10.0.0.{i}")).collect();
        assert_eq!(super::first_three(&v[..2]), "10.0.0.1,10.0.0.2");
        assert_eq!(
            super::first_three(&v),
            "10.0.0.1,10.0.0.2,10.0.0.3 + 2 more..."
        );
        assert_eq!(super::first_three(&[]), "<none>");
    }
}
