//! Per-kind strategies, as upstream's registry has them: defaulting, validation on create and
//! update (including immutable fields), which fields a field selector may use, and whether a
//! change bumps `metadata.generation`. Kinds without special rules get the generic behaviour.

use crate::registry::ResourceInfo;
use crate::validation::{self as v, FieldError};
use serde_json::{json, Map, Value};

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.get(key).is_some_and(Value::is_object) {
        v[key] = json!({});
    }
    v[key].as_object_mut().unwrap()
}

/// Sets `key` unless it has a value; like Go's defaulting, an empty string counts as unset.
fn set_default(m: &mut Map<String, Value>, key: &str, val: Value) {
    if m.get(key).is_none_or(|v| v.is_null() || v == "") {
        m.insert(key.to_string(), val);
    }
}

/// The image pull policy upstream defaults from the tag: Always for `:latest` or no tag.
pub fn default_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    let no_digest = !image.contains('@');
    match last.split_once(':') {
        _ if !no_digest => "IfNotPresent",
        Some((_, "latest")) | None => "Always",
        _ => "IfNotPresent",
    }
}

fn default_container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or_default().to_string();
    let m = match c.as_object_mut() {
        Some(m) => m,
        None => return,
    };
    set_default(m, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(m, "terminationMessagePolicy", json!("File"));
    set_default(m, "imagePullPolicy", json!(default_pull_policy(&image)));
    set_default(m, "resources", json!({}));
    if let Some(ports) = m.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    // SetDefaults_Probe and SetDefaults_HTTPGetAction.
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = m.get_mut(key).and_then(Value::as_object_mut) {
            for (f, d) in [
                ("timeoutSeconds", 1),
                ("periodSeconds", 10),
                ("successThreshold", 1),
                ("failureThreshold", 3),
            ] {
                if p.get(f).and_then(Value::as_i64).unwrap_or(0) == 0 {
                    p.insert(f.into(), json!(d));
                }
            }
            default_http_get(p);
        }
    }
    if let Some(l) = m.get_mut("lifecycle").and_then(Value::as_object_mut) {
        for key in ["postStart", "preStop"] {
            if let Some(h) = l.get_mut(key).and_then(Value::as_object_mut) {
                default_http_get(h);
            }
        }
    }
}

/// An httpGet handler's path and scheme, as upstream's SetDefaults_HTTPGetAction.
fn default_http_get(handler: &mut Map<String, Value>) {
    if let Some(g) = handler.get_mut("httpGet").and_then(Value::as_object_mut) {
        if g.get("path")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .is_empty()
        {
            g.insert("path".into(), json!("/"));
        }
        set_default(g, "scheme", json!("HTTP"));
    }
}

/// Defaults a PodSpec as upstream's SetDefaults_PodSpec and friends do.
pub fn default_pod_spec(spec: &mut Value, restart_default: Option<&str>) {
    let m = match spec.as_object_mut() {
        Some(m) => m,
        None => return,
    };
    if let Some(r) = restart_default {
        set_default(m, "restartPolicy", json!(r));
    }
    set_default(m, "dnsPolicy", json!("ClusterFirst"));
    set_default(m, "terminationGracePeriodSeconds", json!(30));
    set_default(m, "securityContext", json!({}));
    set_default(m, "schedulerName", json!("default-scheduler"));
    // An image volume's pull policy, as a container image's.
    if let Some(vols) = m.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in vols.iter_mut() {
            if let Some(img) = v.get_mut("image").and_then(Value::as_object_mut) {
                let reference = img
                    .get("reference")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                set_default(img, "pullPolicy", json!(default_pull_policy(&reference)));
            }
        }
    }
    deprecated_service_account(m);
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        if let Some(cs) = m.get_mut(key).and_then(Value::as_array_mut) {
            cs.iter_mut().for_each(default_container);
        }
    }
}

/// The deprecated `serviceAccount` mirrors `serviceAccountName`, as upstream's v1 conversion
/// writes it for every PodSpec (and reads it when only it is set).
fn deprecated_service_account(spec: &mut Map<String, Value>) {
    let named = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    match (
        named(spec.get("serviceAccountName")),
        named(spec.get("serviceAccount")),
    ) {
        (Some(n), _) => {
            spec.insert("serviceAccount".into(), json!(n));
        }
        (None, Some(old)) => {
            spec.insert("serviceAccountName".into(), json!(old));
        }
        (None, None) => {}
    }
}

/// A container that limits a resource but does not request it requests its limit, as
/// upstream's SetDefaults_Pod (for pods only: templates keep what was written).
fn default_requests_from_limits(spec: &mut Value) {
    for key in ["containers", "initContainers"] {
        for c in spec[key].as_array_mut().into_iter().flatten() {
            let Some(limits) = c["resources"]["limits"].as_object().cloned() else {
                continue;
            };
            if !c["resources"]["requests"].is_object() {
                c["resources"]["requests"] = json!({});
            }
            let requests = c["resources"]["requests"].as_object_mut().unwrap();
            for (k, v) in limits {
                requests.entry(k).or_insert(v);
            }
        }
    }
}

/// The pod's QoS class from its (defaulted) spec.
pub(crate) fn pod_qos(spec: &Value) -> &'static str {
    let all = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .map(crate::qos::Resources::of_json);
    crate::qos::qos_class(all)
}

fn default_template(obj: &mut Value, ptr: &str, restart_default: Option<&str>) {
    if let Some(spec) = obj.pointer_mut(ptr) {
        default_pod_spec(spec, restart_default);
    }
}

/// Applies the kind's defaults to a new or updated object.
pub fn default(ri: &ResourceInfo, obj: &mut Value) {
    match (ri.group, ri.kind) {
        ("", "Pod") => {
            default_pod_spec(&mut obj["spec"], Some("Always"));
            let spec = obj_mut(obj, "spec");
            // SetDefaults_Pod, not _PodSpec: templates do not get it.
            set_default(spec, "enableServiceLinks", json!(true));
            // The ServiceAccount admission's default (default_pod_spec has already taken
            // the deprecated field's name, if only that was given).
            if spec.get("serviceAccountName").is_none_or(|v| v == "") {
                spec.insert("serviceAccountName".into(), json!("default"));
            }
            deprecated_service_account(spec);
            set_default(spec, "priority", json!(0));
            set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
            default_requests_from_limits(&mut obj["spec"]);
            let qos = pod_qos(&obj["spec"]);
            let status = obj_mut(obj, "status");
            set_default(status, "phase", json!("Pending"));
            set_default(status, "qosClass", json!(qos));
        }
        ("apps", "Deployment") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            set_default(spec, "strategy", json!({"type": "RollingUpdate"}));
            if let Some(s) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
                set_default(s, "type", json!("RollingUpdate"));
                if s["type"] == "RollingUpdate" {
                    let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        set_default(ru, "maxSurge", json!("25%"));
                        set_default(ru, "maxUnavailable", json!("25%"));
                    }
                }
            }
            default_template(obj, "/spec/template/spec", Some("Always"));
        }
        ("apps", "ReplicaSet") => {
            set_default(obj_mut(obj, "spec"), "replicas", json!(1));
            default_template(obj, "/spec/template/spec", Some("Always"));
        }
        ("", "ReplicationController") => {
            // SetDefaults_ReplicationController: the template's labels stand in for a missing
            // selector and for the controller's own labels.
            let labels = obj["spec"]["template"]["metadata"]["labels"].clone();
            if labels.is_object() {
                let empty =
                    |v: Option<&Value>| v.and_then(Value::as_object).is_none_or(|m| m.is_empty());
                if empty(obj["spec"].get("selector")) {
                    obj_mut(obj, "spec").insert("selector".into(), labels.clone());
                }
                if empty(obj["metadata"].get("labels")) {
                    obj_mut(obj, "metadata").insert("labels".into(), labels);
                }
            }
            set_default(obj_mut(obj, "spec"), "replicas", json!(1));
            default_template(obj, "/spec/template/spec", Some("Always"));
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            let spec = obj_mut(obj, "spec");
            if spec
                .get("policyTypes")
                .and_then(Value::as_array)
                .is_none_or(|a| a.is_empty())
            {
                let egress = spec
                    .get("egress")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty());
                let types = if egress {
                    json!(["Ingress", "Egress"])
                } else {
                    json!(["Ingress"])
                };
                spec.insert("policyTypes".into(), types);
            }
        }
        ("autoscaling", "HorizontalPodAutoscaler") if ri.version == "v2" => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "minReplicas", json!(1));
            if spec
                .get("metrics")
                .and_then(Value::as_array)
                .is_none_or(|a| a.is_empty())
            {
                spec.insert(
                    "metrics".into(),
                    json!([{"type": "Resource", "resource": {"name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 80}}}]),
                );
            }
        }
        ("apps", "StatefulSet") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            set_default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            default_template(obj, "/spec/template/spec", Some("Always"));
        }
        ("apps", "DaemonSet") => {
            // The strategy's templateGeneration starts at 1; v1 shows it as an annotation.
            let meta = obj_mut(obj, "metadata");
            let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
            if let Some(a) = annotations.as_object_mut() {
                a.entry("deprecated.daemonset.template.generation")
                    .or_insert_with(|| json!("1"));
            }
            let spec = obj_mut(obj, "spec");
            set_default(spec, "revisionHistoryLimit", json!(10));
            // As upstream's SetDefaults_DaemonSet: RollingUpdate, and each of its two
            // limits defaulted on its own (maxUnavailable 1, maxSurge 0).
            set_default(spec, "updateStrategy", json!({}));
            if let Some(us) = spec["updateStrategy"].as_object_mut() {
                set_default(us, "type", json!("RollingUpdate"));
                if us["type"] == "RollingUpdate" {
                    set_default(us, "rollingUpdate", json!({}));
                    if let Some(ru) = us["rollingUpdate"].as_object_mut() {
                        set_default(ru, "maxUnavailable", json!(1));
                        set_default(ru, "maxSurge", json!(0));
                    }
                }
            }
            default_template(obj, "/spec/template/spec", Some("Always"));
        }
        ("batch", "Job") => {
            default_job_spec(obj_mut(obj, "spec"));
            if obj["spec"]["manualSelector"] != true {
                generate_job_selector(obj);
            }
            default_template(obj, "/spec/template/spec", None);
            // SetDefaults_Job: a Job without labels takes its template's.
            let labels = obj["spec"]["template"]["metadata"]["labels"].clone();
            let meta = obj_mut(obj, "metadata");
            if labels.as_object().is_some_and(|l| !l.is_empty())
                && meta
                    .get("labels")
                    .and_then(Value::as_object)
                    .is_none_or(|l| l.is_empty())
            {
                meta.insert("labels".into(), labels);
            }
        }
        ("batch", "CronJob") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            // The job template gets no Job defaults (SetDefaults_Job is for Jobs), only its
            // pod template's.
            default_template(obj, "/spec/jobTemplate/spec/template/spec", None);
        }
        ("", "Service") => default_service(obj),
        ("", "Secret") => {
            set_default(obj.as_object_mut().unwrap(), "type", json!("Opaque"));
        }
        ("", "Namespace") => {
            let name = obj
                .pointer("/metadata/name")
                .cloned()
                .unwrap_or(Value::Null);
            if let Some(n) = name.as_str() {
                let meta = obj_mut(obj, "metadata");
                let labels = meta.entry("labels").or_insert_with(|| json!({}));
                if !labels.is_object() {
                    *labels = json!({});
                }
                labels["kubernetes.io/metadata.name"] = json!(n);
            }
            set_default(obj_mut(obj, "spec"), "finalizers", json!(["kubernetes"]));
            set_default(obj_mut(obj, "status"), "phase", json!("Active"));
        }
        ("", "PersistentVolumeClaim") => {
            set_default(obj_mut(obj, "spec"), "volumeMode", json!("Filesystem"));
            set_default(obj_mut(obj, "status"), "phase", json!("Pending"));
        }
        ("", "PersistentVolume") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            set_default(spec, "volumeMode", json!("Filesystem"));
            set_default(obj_mut(obj, "status"), "phase", json!("Pending"));
        }
        _ => {}
    }
}

fn default_job_spec(spec: &mut Map<String, Value>) {
    let completions_set = spec.get("completions").is_some_and(|v| !v.is_null());
    let parallelism_set = spec.get("parallelism").is_some_and(|v| !v.is_null());
    if !completions_set && !parallelism_set {
        spec.insert("completions".into(), json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    let per_index = spec
        .get("backoffLimitPerIndex")
        .is_some_and(|v| !v.is_null());
    set_default(
        spec,
        "backoffLimit",
        json!(if per_index { i32::MAX } else { 6 }),
    );
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    let on_failure = spec.get("podFailurePolicy").is_some_and(|v| !v.is_null());
    set_default(
        spec,
        "podReplacementPolicy",
        json!(if on_failure {
            "Failed"
        } else {
            "TerminatingOrFailed"
        }),
    );
    set_default(spec, "manualSelector", json!(false));
}

/// Upstream's `generateSelector` (the Job strategy's PrepareForCreate): the template gets the
/// job-name and controller-uid labels, and the selector matches the controller uid.
fn generate_job_selector(obj: &mut Value) {
    let (Some(name), Some(uid)) = (
        obj["metadata"]["name"].as_str().map(String::from),
        obj["metadata"]["uid"].as_str().map(String::from),
    ) else {
        return;
    };
    let spec = &mut obj["spec"];
    let labels = obj_mut(
        obj_mut_value(obj_mut_value(spec, "template"), "metadata"),
        "labels",
    );
    for key in ["job-name", "batch.kubernetes.io/job-name"] {
        labels.entry(key).or_insert_with(|| json!(name));
    }
    for key in ["controller-uid", "batch.kubernetes.io/controller-uid"] {
        labels.entry(key).or_insert_with(|| json!(uid));
    }
    obj_mut(obj_mut_value(spec, "selector"), "matchLabels")
        .entry("batch.kubernetes.io/controller-uid")
        .or_insert_with(|| json!(uid));
}

/// `v[key]`, made an object if it is not one.
fn obj_mut_value<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    obj_mut(v, key);
    &mut v[key]
}

fn default_service(obj: &mut Value) {
    // A condition a Go client set without a time comes as `lastTransitionTime: null`
    // (its zero value); upstream keeps the null, which the typed object here cannot
    // hold: it gets the time of the write instead.
    if let Some(conds) = obj["status"]["conditions"].as_array_mut() {
        for c in conds
            .iter_mut()
            .filter(|c| c["lastTransitionTime"].is_null())
        {
            if let Some(m) = c.as_object_mut() {
                m.insert(
                    "lastTransitionTime".into(),
                    json!(jiff::Timestamp::now()
                        .strftime("%Y-%m-%dT%H:%M:%SZ")
                        .to_string()),
                );
            }
        }
    }
    let spec = obj_mut(obj, "spec");
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let ty = spec["type"].as_str().unwrap_or_default().to_string();
    if ty != "ExternalName" {
        // ipFamilies and ipFamilyPolicy depend on the cluster's families: the API server's
        // Service allocation fills them in, as upstream's REST storage does.
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                // Upstream's SetDefaults_Service: an unset, empty or zero targetPort is the
                // port (Go clients send the zero value `0` for one they did not set).
                if p.get("targetPort").is_some_and(|v| v == 0) {
                    p.remove("targetPort");
                }
                set_default(p, "targetPort", port);
            }
        }
    }
}

/// Validates metadata common to all kinds.
pub fn validate_meta(ri: &ResourceInfo, obj: &Value, errs: &mut Vec<FieldError>) {
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        errs.push(FieldError::required("metadata.name"));
    } else {
        let check = match (ri.group, ri.kind) {
            ("", "Namespace") => v::dns1123_label(name),
            ("", "Service") => v::dns1035_label(name),
            // An IPAddress is named by its address, in canonical form (upstream's
            // ValidateIPAddressName).
            ("networking.k8s.io", "IPAddress") => match name.parse::<std::net::IpAddr>() {
                Err(_) => {
                    Some("must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".into())
                }
                Ok(ip) if ip.to_string() != name => {
                    Some(format!("must be in canonical form (\"{ip}\")"))
                }
                Ok(_) => None,
            },
            _ => {
                if name.contains('/') || name.contains('%') || name == "." || name == ".." {
                    Some("may not contain '/' or '%' and may not be '.' or '..'".into())
                } else if ri.group == "rbac.authorization.k8s.io" {
                    // RBAC names are path segments only (e.g. "system:admin").
                    None
                } else {
                    v::dns1123_subdomain(name)
                }
            }
        };
        if let Some(e) = check {
            errs.push(FieldError::invalid("metadata.name", &meta["name"], &e));
        }
    }
    v::labels_and_annotations(meta, "metadata", errs);
}

fn validate_container(c: &Value, path: &str, names: &mut Vec<String>, errs: &mut Vec<FieldError>) {
    match c["name"].as_str() {
        None | Some("") => errs.push(FieldError::required(format!("{path}.name"))),
        Some(n) => {
            if let Some(e) = v::dns1123_label(n) {
                errs.push(FieldError::invalid(format!("{path}.name"), &c["name"], &e));
            }
            if names.iter().any(|x| x == n) {
                errs.push(FieldError::duplicate(format!("{path}.name"), &c["name"]));
            }
            names.push(n.to_string());
        }
    }
    if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
        errs.push(FieldError::required(format!("{path}.image")));
    }
    if let Some(p) = c["imagePullPolicy"].as_str() {
        if !["Always", "IfNotPresent", "Never"].contains(&p) {
            errs.push(FieldError::not_supported(
                format!("{path}.imagePullPolicy"),
                &c["imagePullPolicy"],
                &["Always", "IfNotPresent", "Never"],
            ));
        }
    }
    // Upstream's relaxed names (the default since 1.32): printable ASCII but '='.
    const ENV_NAME: &str =
        "a valid environment variable name must consist only of printable ASCII characters other than '='";
    let env_name_ok = |n: &str| n.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'=');
    for (i, e) in c["env"].as_array().into_iter().flatten().enumerate() {
        match e["name"].as_str() {
            None | Some("") => errs.push(FieldError::required(format!("{path}.env[{i}].name"))),
            Some(n) if !env_name_ok(n) => errs.push(FieldError::invalid(
                format!("{path}.env[{i}].name"),
                &e["name"],
                ENV_NAME,
            )),
            Some(_) => {}
        }
        // A value comes from one place: `value`, or one source under `valueFrom`.
        let sources = [
            "fieldRef",
            "resourceFieldRef",
            "configMapKeyRef",
            "secretKeyRef",
            "fileKeyRef",
        ]
        .iter()
        .filter(|k| e["valueFrom"][**k].is_object())
        .count();
        let has_value = e["value"].as_str().is_some_and(|v| !v.is_empty());
        let why = if sources > 0 && has_value {
            Some("may not be specified when `value` is not empty")
        } else if sources > 1 {
            Some("may not have more than one field specified at a time")
        } else {
            None
        };
        if let Some(why) = why {
            errs.push(FieldError::invalid(
                format!("{path}.env[{i}].valueFrom"),
                &json!(""),
                why,
            ));
        }
    }
    for (i, e) in c["envFrom"].as_array().into_iter().flatten().enumerate() {
        if e["prefix"].as_str().is_some_and(|p| !env_name_ok(p)) {
            errs.push(FieldError::invalid(
                format!("{path}.envFrom[{i}].prefix"),
                &e["prefix"],
                ENV_NAME,
            ));
        }
    }
    validate_resources(&c["resources"], &format!("{path}.resources"), errs);
    // Upstream's validateMountPropagation: a known mode; Bidirectional only when privileged.
    let privileged = c["securityContext"]["privileged"] == true;
    for (i, m) in c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(mode) = m.get("mountPropagation").filter(|v| !v.is_null()) else {
            continue;
        };
        let at = format!("{path}.volumeMounts[{i}].mountPropagation");
        const MODES: [&str; 3] = ["Bidirectional", "HostToContainer", "None"];
        if !MODES.iter().any(|x| mode == x) {
            errs.push(FieldError::not_supported(at.clone(), mode, &MODES));
        }
        if mode == "Bidirectional" && !privileged {
            errs.push(FieldError::forbidden(
                at,
                "Bidirectional mount propagation is available only to privileged containers",
            ));
        }
    }
    let sc = &c["securityContext"];
    for f in ["runAsUser", "runAsGroup"] {
        validate_id(&sc[f], &format!("{path}.securityContext.{f}"), errs);
    }
    if let Some(ports) = c["ports"].as_array() {
        for (i, p) in ports.iter().enumerate() {
            let cp = p["containerPort"].as_i64().unwrap_or(0);
            if !(1..=65535).contains(&cp) {
                errs.push(FieldError::invalid(
                    format!("{path}.ports[{i}].containerPort"),
                    &p["containerPort"],
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
    }
}

/// A container's requests and limits, as upstream's ValidateResourceRequirements: none
/// below zero, and no request above its limit.
fn validate_resources(r: &Value, path: &str, errs: &mut Vec<FieldError>) {
    use crate::quantity::{canonical, parse_milli};
    for which in ["limits", "requests"] {
        for (name, q) in r[which].as_object().into_iter().flatten() {
            let text = crate::quantity::text_of(q);
            if parse_milli(&text).is_some_and(|m| m < 0) {
                errs.push(FieldError::invalid(
                    format!("{path}.{which}[{name}]"),
                    &json!(canonical(&text)),
                    "must be greater than or equal to 0",
                ));
            }
        }
    }
    for (name, req) in r["requests"].as_object().into_iter().flatten() {
        let Some(lim) = r["limits"].get(name) else {
            continue;
        };
        let (req, lim) = (crate::quantity::text_of(req), crate::quantity::text_of(lim));
        if let (Some(rq), Some(lm)) = (parse_milli(&req), parse_milli(&lim)) {
            if rq > lm {
                errs.push(FieldError::invalid(
                    format!("{path}.requests[{name}]"),
                    &json!(canonical(&req)),
                    &format!(
                        "must be less than or equal to {name} limit of {}",
                        canonical(&lim)
                    ),
                ));
            }
        }
    }
}

/// A uid or gid: upstream's IsValidUserID / IsValidGroupID range.
fn validate_id(id: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if id.as_i64().is_some_and(|n| !(0..=2147483647).contains(&n)) {
        errs.push(FieldError::invalid(
            path,
            id,
            "must be between 0 and 2147483647, inclusive",
        ));
    }
}

/// Validates a PodSpec at `path`.
pub fn validate_pod_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let mut names = Vec::new();
    match spec["containers"].as_array() {
        Some(cs) if !cs.is_empty() => {
            for (i, c) in cs.iter().enumerate() {
                validate_container(c, &format!("{path}.containers[{i}]"), &mut names, errs);
            }
        }
        _ => errs.push(FieldError::required(format!("{path}.containers"))),
    }
    if let Some(cs) = spec["initContainers"].as_array() {
        for (i, c) in cs.iter().enumerate() {
            validate_container(c, &format!("{path}.initContainers[{i}]"), &mut names, errs);
        }
    }
    if let Some(r) = spec["restartPolicy"].as_str() {
        if !["Always", "OnFailure", "Never"].contains(&r) {
            errs.push(FieldError::not_supported(
                format!("{path}.restartPolicy"),
                &spec["restartPolicy"],
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    if let Some(d) = spec["dnsPolicy"].as_str() {
        let ok = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !ok.contains(&d) {
            errs.push(FieldError::not_supported(
                format!("{path}.dnsPolicy"),
                &spec["dnsPolicy"],
                &ok,
            ));
        }
    }
    // Pod-level security settings come after the containers, in upstream's order.
    let psc = &spec["securityContext"];
    for f in ["runAsUser", "runAsGroup", "fsGroup"] {
        validate_id(&psc[f], &format!("{path}.securityContext.{f}"), errs);
    }
    for (i, g) in psc["supplementalGroups"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        validate_id(
            g,
            &format!("{path}.securityContext.supplementalGroups[{i}]"),
            errs,
        );
    }
    if let Some(p) = psc["supplementalGroupsPolicy"].as_str() {
        if !["Merge", "Strict"].contains(&p) {
            errs.push(FieldError::not_supported(
                format!("{path}.securityContext.supplementalGroupsPolicy"),
                &psc["supplementalGroupsPolicy"],
                &["Merge", "Strict"],
            ));
        }
    }
    validate_sysctls(spec, &format!("{path}.securityContext.sysctls"), errs);
}

/// Upstream's `SysctlContainSlashFmt`, as Go prints the compiled regexp in its message.
const SYSCTL_REGEX: &str =
    r"^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[\./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$";

/// Upstream's `IsValidSysctlName`: at most 253 characters, segments of `[a-z0-9]` with
/// inner `-` and `_`, separated by `.` or `/`.
fn valid_sysctl_name(name: &str) -> bool {
    let segment = |s: &str| {
        let b = s.as_bytes();
        let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty()
            && edge(&b[0])
            && edge(&b[b.len() - 1])
            && b.iter().all(|c| edge(c) || *c == b'-' || *c == b'_')
    };
    name.len() <= 253 && name.split(['.', '/']).all(segment)
}

/// The namespace a sysctl belongs to (upstream's `sysctl.GetNamespace`): "Net", "IPC" or "".
fn sysctl_namespace(name: &str) -> &'static str {
    // `net/ipv4/conf/eno2.100/rp_filter` is `net.ipv4.conf.eno2/100.rp_filter`.
    let normal: String = match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect(),
        _ => name.to_string(),
    };
    let name = normal.split('*').next().unwrap_or_default();
    const IPC: &[&str] = &[
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
        "kernel.shm",
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.msg",
    ];
    if IPC.contains(&name) || name.starts_with("fs.mqueue.") {
        "IPC"
    } else if name.starts_with("net.") {
        "Net"
    } else {
        ""
    }
}

/// Upstream's `validateSysctls`: valid, unique names, and no namespaced sysctl of a
/// namespace the pod shares with the host.
fn validate_sysctls(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let mut seen = Vec::new();
    let sysctls = spec["securityContext"]["sysctls"].as_array();
    for (i, s) in sysctls.into_iter().flatten().enumerate() {
        let name = s["name"].as_str().unwrap_or_default();
        let field = format!("{path}[{i}].name");
        if name.is_empty() {
            errs.push(FieldError::required(&field));
        } else if !valid_sysctl_name(name) {
            errs.push(FieldError::invalid(
                &field,
                &s["name"],
                &format!("must have at most 253 characters and match regex {SYSCTL_REGEX}"),
            ));
        } else if seen.contains(&name) {
            errs.push(FieldError::duplicate(&field, &s["name"]));
        }
        match sysctl_namespace(name) {
            "Net" if spec["hostNetwork"] == true => errs.push(FieldError::invalid(
                &field,
                &s["name"],
                "may not be specified when 'hostNetwork' is true",
            )),
            "IPC" if spec["hostIPC"] == true => errs.push(FieldError::invalid(
                &field,
                &s["name"],
                "may not be specified when 'hostIPC' is true",
            )),
            _ => {}
        }
        seen.push(name);
    }
}

/// An int-or-percent's value (a percent's number), as upstream's getIntOrPercentValue.
fn int_or_percent(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.trim_end_matches('%').parse().unwrap_or(0),
        v => v.as_i64().unwrap_or(0),
    }
}

/// Upstream's ValidatePositiveIntOrPercent and IsNotMoreThan100Percent.
fn validate_int_or_percent(v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    match v {
        Value::Null => {}
        Value::String(s) => {
            let digits = s.strip_suffix('%').unwrap_or("");
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                errs.push(FieldError::invalid(
                    path,
                    v,
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                ));
            } else if int_or_percent(v) > 100 {
                errs.push(FieldError::invalid(
                    path,
                    v,
                    "must not be greater than 100%",
                ));
            }
        }
        v if v.as_i64().is_some_and(|i| i < 0) => {
            errs.push(FieldError::invalid(
                path,
                v,
                "must be greater than or equal to 0",
            ));
        }
        _ => {}
    }
}

/// Upstream's ValidateDaemonSetUpdateStrategy: RollingUpdate or OnDelete; a rolling update
/// moves by exactly one of maxUnavailable and maxSurge.
fn validate_daemonset_strategy(us: &Value, errs: &mut Vec<FieldError>) {
    const PATH: &str = "spec.updateStrategy";
    match us["type"].as_str() {
        Some("OnDelete") => {}
        Some("RollingUpdate") => {
            let ru = &us["rollingUpdate"];
            if !ru.is_object() {
                errs.push(FieldError::required(format!("{PATH}.rollingUpdate")));
                return;
            }
            let unavailable = format!("{PATH}.rollingUpdate.maxUnavailable");
            let surge = format!("{PATH}.rollingUpdate.maxSurge");
            validate_int_or_percent(&ru["maxUnavailable"], &unavailable, errs);
            validate_int_or_percent(&ru["maxSurge"], &surge, errs);
            let has_unavailable = int_or_percent(&ru["maxUnavailable"]) != 0;
            let has_surge = int_or_percent(&ru["maxSurge"]) != 0;
            if has_unavailable && has_surge {
                errs.push(FieldError::invalid(
                    surge,
                    &ru["maxSurge"],
                    "may not be set when maxUnavailable is non-zero",
                ));
            } else if !has_unavailable && !has_surge {
                errs.push(FieldError::required_because(
                    unavailable,
                    "cannot be 0 when maxSurge is 0",
                ));
            }
        }
        _ => errs.push(FieldError::not_supported(
            PATH,
            &us["type"],
            &["RollingUpdate", "OnDelete"],
        )),
    }
}

fn validate_workload(obj: &Value, errs: &mut Vec<FieldError>, restart_only_always: bool) {
    let spec = &obj["spec"];
    if let Some(r) = spec["replicas"].as_i64() {
        if r < 0 {
            errs.push(FieldError::invalid(
                "spec.replicas",
                &spec["replicas"],
                "must be greater than or equal to 0",
            ));
        }
    }
    let selector = &spec["selector"];
    let empty_sel = selector
        .get("matchLabels")
        .is_none_or(|m| m.as_object().is_none_or(|m| m.is_empty()))
        && selector
            .get("matchExpressions")
            .is_none_or(|m| m.as_array().is_none_or(|a| a.is_empty()));
    if selector.is_null() || empty_sel {
        errs.push(FieldError::required("spec.selector"));
    } else {
        match crate::selector::LabelSelector::from_object(selector) {
            Ok(sel) => {
                let tmpl = json!({"metadata": {"labels": spec["template"]["metadata"]["labels"]}});
                if !sel.matches_object(&tmpl) {
                    errs.push(FieldError::invalid(
                        "spec.template.metadata.labels",
                        &spec["template"]["metadata"]["labels"],
                        "`selector` does not match template `labels`",
                    ));
                }
            }
            Err(e) => errs.push(FieldError::invalid("spec.selector", selector, &e.0)),
        }
    }
    validate_pod_spec(&spec["template"]["spec"], "spec.template.spec", errs);
    if restart_only_always {
        if let Some(r) = spec["template"]["spec"]["restartPolicy"].as_str() {
            if r != "Always" {
                errs.push(FieldError::not_supported(
                    "spec.template.spec.restartPolicy",
                    &spec["template"]["spec"]["restartPolicy"],
                    &["Always"],
                ));
            }
        }
    }
}

fn validate_service(obj: &Value, errs: &mut Vec<FieldError>, range: (i64, i64)) {
    let spec = &obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !types.contains(&ty) {
        errs.push(FieldError::not_supported(
            "spec.type",
            &spec["type"],
            &types,
        ));
    }
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    let headless = spec["clusterIP"] == "None";
    if ports.is_empty() && ty != "ExternalName" && !headless {
        errs.push(FieldError::required("spec.ports"));
    }
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let port = p["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&port) {
            errs.push(FieldError::invalid(
                format!("{path}.port"),
                &p["port"],
                "must be between 1 and 65535, inclusive",
            ));
        }
        let name = p["name"].as_str().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(format!("{path}.name")));
        }
        if !name.is_empty() {
            if names.contains(&name) {
                errs.push(FieldError::duplicate(format!("{path}.name"), &p["name"]));
            }
            names.push(name);
        }
        if let Some(np) = p["nodePort"].as_i64() {
            if np != 0 && ty == "ClusterIP" {
                errs.push(FieldError::forbidden(
                    format!("{path}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else if np != 0 && (np < range.0 || np > range.1) {
                errs.push(FieldError::invalid(
                    format!("{path}.nodePort"),
                    &p["nodePort"],
                    &format!("provided port is not in the valid range. The range of valid ports is {}-{}", range.0, range.1),
                ));
            }
        }
        if let Some(proto) = p["protocol"].as_str() {
            if !["TCP", "UDP", "SCTP"].contains(&proto) {
                errs.push(FieldError::not_supported(
                    format!("{path}.protocol"),
                    &p["protocol"],
                    &["SCTP", "TCP", "UDP"],
                ));
            }
        }
    }
}

fn validate_data_keys(obj: &Value, errs: &mut Vec<FieldError>) {
    for field in ["data", "binaryData", "stringData"] {
        if let Some(m) = obj[field].as_object() {
            for k in m.keys() {
                let ok = !k.is_empty()
                    && k.len() <= 253
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                if !ok {
                    errs.push(FieldError::invalid(
                        format!("{field}[{k}]"),
                        &Value::String(k.clone()),
                        "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                    ));
                }
            }
        }
    }
}

/// Cluster settings validation needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_port_range: (i64, i64),
    /// DefaultTolerationSeconds admission: seconds a new pod tolerates a not-ready node.
    pub not_ready_toleration_seconds: i64,
    /// ... and an unreachable one.
    pub unreachable_toleration_seconds: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node_port_range: (30000, 32767),
            not_ready_toleration_seconds: 300,
            unreachable_toleration_seconds: 300,
        }
    }
}

/// Upstream's DefaultTolerationSeconds admission plugin: a new pod that does not already
/// tolerate `node.kubernetes.io/not-ready` / `unreachable` with NoExecute gets a
/// toleration for them with the configured seconds.
pub fn admit_default_tolerations(pod: &mut Value, settings: &Settings) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let tols = spec
        .entry("tolerations")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !tols.is_array() {
        return;
    }
    let list = tols.as_array_mut().unwrap();
    for (key, secs) in [
        (
            "node.kubernetes.io/not-ready",
            settings.not_ready_toleration_seconds,
        ),
        (
            "node.kubernetes.io/unreachable",
            settings.unreachable_toleration_seconds,
        ),
    ] {
        let tolerated = list.iter().any(|t| {
            let effect = t["effect"].as_str().unwrap_or("");
            let k = t["key"].as_str().unwrap_or("");
            let exists_all = k.is_empty() && t["operator"] == "Exists";
            (k == key || exists_all) && (effect.is_empty() || effect == "NoExecute")
        });
        if !tolerated {
            list.push(serde_json::json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": secs,
            }));
        }
    }
}

/// Validates an object of the kind; `old` is the stored object on update.
pub fn validate(
    ri: &ResourceInfo,
    obj: &Value,
    old: Option<&Value>,
    settings: &Settings,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_meta(ri, obj, &mut errs);
    match (ri.group, ri.kind) {
        ("", "Pod") => validate_pod_spec(&obj["spec"], "spec", &mut errs),
        ("apps", "Deployment") => validate_workload(obj, &mut errs, true),
        ("apps", "ReplicaSet") => validate_workload(obj, &mut errs, true),
        ("apps", "DaemonSet") => {
            validate_workload(obj, &mut errs, true);
            validate_daemonset_strategy(&obj["spec"]["updateStrategy"], &mut errs);
        }
        ("apps", "StatefulSet") => validate_workload(obj, &mut errs, true),
        ("batch", "Job") => {
            let spec = &obj["spec"];
            validate_pod_spec(&spec["template"]["spec"], "spec.template.spec", &mut errs);
            match spec["template"]["spec"]["restartPolicy"].as_str() {
                Some("OnFailure") | Some("Never") => {}
                _ => errs.push(FieldError::not_supported(
                    "spec.template.spec.restartPolicy",
                    &spec["template"]["spec"]["restartPolicy"],
                    &["OnFailure", "Never"],
                )),
            }
        }
        ("batch", "CronJob") => {
            if obj["spec"]["schedule"].as_str().is_none_or(str::is_empty) {
                errs.push(FieldError::required("spec.schedule"));
            }
            let ts = &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"];
            validate_pod_spec(ts, "spec.jobTemplate.spec.template.spec", &mut errs);
        }
        ("", "Service") => validate_service(obj, &mut errs, settings.node_port_range),
        ("", "ConfigMap") | ("", "Secret") => validate_data_keys(obj, &mut errs),
        _ => {}
    }
    if let Some(old) = old {
        validate_update(ri, obj, old, &mut errs);
    }
    errs
}

fn immutable(obj: &Value, old: &Value, ptr: &str, field: &str, errs: &mut Vec<FieldError>) {
    let new_v = obj.pointer(ptr).unwrap_or(&Value::Null);
    let old_v = old.pointer(ptr).unwrap_or(&Value::Null);
    if new_v != old_v {
        errs.push(FieldError::invalid(field, new_v, "field is immutable"));
    }
}

fn validate_update(ri: &ResourceInfo, obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    match (ri.group, ri.kind) {
        ("apps", "Deployment")
        | ("apps", "ReplicaSet")
        | ("apps", "DaemonSet")
        | ("apps", "StatefulSet") => {
            immutable(obj, old, "/spec/selector", "spec.selector", errs);
        }
        ("batch", "Job") => {
            immutable(obj, old, "/spec/selector", "spec.selector", errs);
            immutable(obj, old, "/spec/completions", "spec.completions", errs);
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            if obj["value"] != old["value"] {
                errs.push(FieldError::forbidden(
                    "value",
                    "may not be changed in an update.",
                ));
            }
            immutable(obj, old, "/preemptionPolicy", "preemptionPolicy", errs);
        }
        ("", "Service") => {
            let old_ip = old.pointer("/spec/clusterIP");
            let new_ip = obj.pointer("/spec/clusterIP");
            if old_ip.is_some_and(|v| !v.is_null() && v != "")
                && new_ip.is_some_and(|v| !v.is_null() && v != "")
                && old_ip != new_ip
            {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    new_ip.unwrap(),
                    "may not change once set",
                ));
            }
        }
        ("", "ConfigMap") | ("", "Secret") => {
            if old["immutable"] == true {
                for f in ["data", "binaryData"] {
                    if obj[f] != old[f] {
                        errs.push(FieldError::forbidden(
                            f,
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
                if obj["immutable"] != true {
                    errs.push(FieldError::forbidden(
                        "immutable",
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
            if ri.kind == "Secret" {
                immutable(obj, old, "/type", "type", errs);
            }
        }
        ("", "Node") => {
            // As upstream: a node's pod ranges and provider ID may be set once, not changed.
            let set_once = |ptr: &str| {
                let was = old.pointer(ptr).unwrap_or(&Value::Null);
                let set =
                    !was.is_null() && was != "" && was.as_array().is_none_or(|a| !a.is_empty());
                set && obj.pointer(ptr).unwrap_or(&Value::Null) != was
            };
            if set_once("/spec/podCIDRs") || set_once("/spec/podCIDR") {
                errs.push(FieldError::forbidden(
                    "spec.podCIDRs",
                    "node updates may not change podCIDR except from \"\" to valid",
                ));
            }
            if set_once("/spec/providerID") {
                errs.push(FieldError::forbidden(
                    "spec.providerID",
                    "node updates may not change providerID except from \"\" to valid",
                ));
            }
        }
        ("", "Pod") => {
            // Only image, activeDeadlineSeconds and additions to tolerations may change.
            let mut a = obj["spec"].clone();
            let mut b = old["spec"].clone();
            for s in [&mut a, &mut b] {
                for key in ["containers", "initContainers"] {
                    if let Some(cs) = s.get_mut(key).and_then(Value::as_array_mut) {
                        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                            c.remove("image");
                        }
                    }
                }
                if let Some(m) = s.as_object_mut() {
                    m.remove("activeDeadlineSeconds");
                    m.remove("tolerations");
                    m.remove("nodeName");
                    // Checked by `validate_ephemeral_update`, through their subresource.
                    m.remove("ephemeralContainers");
                }
            }
            if a != b {
                errs.push(FieldError::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
        }
        _ => {}
    }
}

/// `v` without members that hold a zero value (null, `{}`, `[]`, `false`, `0`, `""`),
/// recursively: what Go's types make of an absent field and back.
pub(crate) fn without_empty(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), without_empty(v)))
                .filter(|(_, v)| {
                    !(v.is_null()
                        || v.as_object().is_some_and(|o| o.is_empty())
                        || v.as_array().is_some_and(|a| a.is_empty())
                        || *v == Value::Bool(false)
                        || v.as_i64() == Some(0)
                        || v.as_str() == Some(""))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_empty).collect()),
        other => other.clone(),
    }
}

/// Upstream's `ValidatePodEphemeralContainersUpdate`: `list` is the wanted
/// `spec.ephemeralContainers` of `old`. Existing ones may be neither removed nor changed;
/// new ones need a unique name and an image, may not have ports, probes, lifecycle hooks
/// or resources, and may target only a container of the pod.
pub fn validate_ephemeral_update(list: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let path = "spec.ephemeralContainers";
    let new: Vec<Value> = list.as_array().cloned().unwrap_or_default();
    let was: Vec<Value> = old["spec"]["ephemeralContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for w in &was {
        let name = w["name"].as_str().unwrap_or_default();
        match new.iter().position(|n| n["name"] == name) {
            None => errs.push(FieldError::forbidden(
                path,
                &format!("existing ephemeral containers \"{name}\" may not be removed"),
            )),
            // Compared as values: a client's typed round trip adds or drops empty fields.
            Some(i) if without_empty(&new[i]) != without_empty(w) => {
                errs.push(FieldError::forbidden(
                    format!("{path}[{i}]"),
                    &format!("existing ephemeral containers \"{name}\" may not be changed"),
                ))
            }
            _ => {}
        }
    }
    let spec = &old["spec"];
    let regular: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| spec[k].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    let mut seen: Vec<&str> = regular.clone();
    for (i, c) in new.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let name = c["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            errs.push(FieldError::required(format!("{at}.name")));
        } else if seen.contains(&name) {
            errs.push(FieldError::duplicate(format!("{at}.name"), &json!(name)));
        } else {
            seen.push(name);
        }
        if was.iter().any(|w| w["name"] == name) {
            continue;
        }
        if c["image"].as_str().is_none_or(str::is_empty) {
            errs.push(FieldError::required(format!("{at}.image")));
        }
        for f in [
            "ports",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "lifecycle",
            "resizePolicy",
        ] {
            let v = &c[f];
            if !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()) {
                errs.push(FieldError::forbidden(
                    format!("{at}.{f}"),
                    "cannot be set for an Ephemeral Container",
                ));
            }
        }
        if c["resources"].as_object().is_some_and(|r| !r.is_empty()) {
            errs.push(FieldError::forbidden(
                format!("{at}.resources"),
                "cannot be set for an Ephemeral Container",
            ));
        }
        if let Some(t) = c["targetContainerName"].as_str().filter(|t| !t.is_empty()) {
            if !regular.contains(&t) {
                errs.push(FieldError {
                    reason: "FieldValueNotFound",
                    field: format!("{at}.targetContainerName"),
                    message: format!("Not found: \"{t}\""),
                });
            }
        }
    }
    errs
}

/// Field selector support beyond metadata.name and metadata.namespace, as upstream.
pub fn field_supported(ri: &ResourceInfo, field: &str) -> bool {
    if field == "metadata.name" || field == "metadata.namespace" {
        return true;
    }
    let extra: &[&str] = match (ri.group, ri.kind) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        ("", "Secret") => &["type"],
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "Node") => &["spec.unschedulable"],
        ("", "Namespace") => &["status.phase"],
        ("", "ReplicationController") => &["status.replicas"],
        ("apps", "ReplicaSet") => &["status.replicas"],
        ("batch", "Job") => &["status.successful"],
        ("certificates.k8s.io", "CertificateSigningRequest") => &["spec.signerName"],
        _ => &[],
    };
    extra.contains(&field)
}

/// Reads a field's value for field selectors (a missing field reads as "").
pub fn field_value(obj: &Value, field: &str) -> String {
    // What this reads for each field is `field_path`'s.
    if field == "source" {
        return obj["source"]["component"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    if field == "status.podIPs" {
        return obj["status"]["podIP"].as_str().unwrap_or_default().into();
    }
    let mut cur = obj;
    for part in field.split('.') {
        cur = &cur[part];
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => match field {
            "spec.hostNetwork" | "spec.unschedulable" => "false".into(),
            _ => String::new(),
        },
        v => v.to_string(),
    }
}

/// Where in an object [`field_value`] reads `field` (for decoding only that part).
pub fn field_path(field: &str) -> &str {
    match field {
        "source" => "source.component",
        "status.podIPs" => "status.podIP",
        f => f,
    }
}

/// Whether the change from `old` to `new` bumps metadata.generation: any change outside
/// metadata and status, for kinds that track generation.
pub fn bumps_generation(ri: &ResourceInfo, new: &Value, old: &Value) -> bool {
    if !tracks_generation(ri) {
        return false;
    }
    // Everything but metadata and status, compared in place (no copies: every update of a
    // pod or a workload passes here).
    match (new.as_object(), old.as_object()) {
        (Some(n), Some(o)) => !same_except(n, o, &["metadata", "status"]),
        _ => new != old,
    }
}

/// A DaemonSet's template generation (kept in the `deprecated.daemonset.template.generation`
/// annotation by apps/v1) moves on by one when its pod template changes, and otherwise
/// stays what it was, as upstream's DaemonSet PrepareForUpdate.
pub fn prepare_for_update(ri: &ResourceInfo, new: &mut Value, old: &Value) {
    if !ri.is("apps", "DaemonSet") {
        return;
    }
    const KEY: &str = "deprecated.daemonset.template.generation";
    let was = old["metadata"]["annotations"][KEY]
        .as_str()
        .and_then(|g| g.parse::<i64>().ok())
        .unwrap_or(0);
    let now = if new["spec"]["template"] != old["spec"]["template"] {
        was + 1
    } else {
        was
    };
    if now == 0 {
        return;
    }
    let meta = obj_mut(new, "metadata");
    let a = meta.entry("annotations").or_insert_with(|| json!({}));
    if let Some(a) = a.as_object_mut() {
        a.insert(KEY.into(), json!(now.to_string()));
    }
}

/// Whether two JSON objects are equal once the keys in `skip` are left out of both, compared
/// in place.
pub fn same_except(a: &Map<String, Value>, b: &Map<String, Value>, skip: &[&str]) -> bool {
    let kept = |m: &'_ Map<String, Value>| m.keys().filter(|k| !skip.contains(&k.as_str())).count();
    kept(a) == kept(b)
        && a.iter()
            .filter(|(k, _)| !skip.contains(&k.as_str()))
            .all(|(k, v)| b.get(k) == Some(v))
}

/// The kinds whose strategy keeps `metadata.generation` upstream (those whose
/// `PrepareForCreate` sets it to 1): a Service, Node or Namespace has none.
const GENERATION_KINDS: &[(&str, &str)] = &[
    ("", "Pod"),
    ("", "PodTemplate"),
    ("", "ReplicationController"),
    ("apps", "Deployment"),
    ("apps", "ReplicaSet"),
    ("apps", "StatefulSet"),
    ("apps", "DaemonSet"),
    ("batch", "Job"),
    ("batch", "CronJob"),
    ("discovery.k8s.io", "EndpointSlice"),
    ("networking.k8s.io", "Ingress"),
    ("networking.k8s.io", "IngressClass"),
    ("networking.k8s.io", "NetworkPolicy"),
    ("policy", "PodDisruptionBudget"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "MutatingAdmissionPolicyBinding",
    ),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    ("resource.k8s.io", "DeviceClass"),
    ("resource.k8s.io", "DeviceTaintRule"),
    ("resource.k8s.io", "ResourceSlice"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
];

pub fn tracks_generation(ri: &ResourceInfo) -> bool {
    GENERATION_KINDS.contains(&(ri.group, ri.kind))
}

/// What of the metadata a write to `/status` may change, per kind, as upstream's status
/// strategies' `PrepareForUpdate`: most keep the request's metadata (a status patch may also
/// set a label or an annotation); some put back the stored values of a few keys, or all of
/// the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMeta {
    /// The request's metadata, with these keys as stored.
    Reset(&'static [&'static str]),
    /// All of the metadata as stored (FlowSchema, PriorityLevelConfiguration).
    Stored,
}

/// The keys `ResetObjectMetaForStatus` puts back (besides those no write changes).
const RESET_FOR_STATUS: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

/// The kinds whose status strategy calls `ResetObjectMetaForStatus` upstream.
const STATUS_RESETS_META: &[(&str, &str)] = &[
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    ("internal.apiserver.k8s.io", "StorageVersion"),
    ("certificates.k8s.io", "PodCertificateRequest"),
    ("networking.k8s.io", "ServiceCIDR"),
    ("resource.k8s.io", "DeviceTaintRule"),
    ("resource.k8s.io", "ResourceClaim"),
    ("resource.k8s.io", "ResourcePoolStatusRequest"),
    ("scheduling.k8s.io", "PodGroup"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("storagemigration.k8s.io", "StorageVersionMigration"),
];

pub fn status_meta(ri: &ResourceInfo) -> StatusMeta {
    match (ri.group, ri.kind) {
        // "old kubelets corrupt them in a way that breaks garbage collection"
        ("", "Pod") => StatusMeta::Reset(&["ownerReferences"]),
        ("apps", "Deployment") => StatusMeta::Reset(&["labels"]),
        ("flowcontrol.apiserver.k8s.io", "FlowSchema" | "PriorityLevelConfiguration") => {
            StatusMeta::Stored
        }
        k if STATUS_RESETS_META.contains(&k) => StatusMeta::Reset(RESET_FOR_STATUS),
        _ => StatusMeta::Reset(&[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn sysctl_names_and_namespaces_as_upstream() {
        for ok in [
            "kernel.shmmax",
            "safe-and-unsafe",
            "net.ipv4.conf.eno2/100.rp_filter",
            "a_b",
        ] {
            assert!(valid_sysctl_name(ok), "{ok}");
        }
        for bad in ["foo-", "bar..", "-a", "A.b", ".a", "a/", ""] {
            assert!(!valid_sysctl_name(bad), "{bad}");
        }
        assert!(!valid_sysctl_name(&"a".repeat(254)));
        assert_eq!(sysctl_namespace("net.core.somaxconn"), "Net");
        assert_eq!(sysctl_namespace("net/ipv4/ip_forward"), "Net");
        assert_eq!(sysctl_namespace("kernel.shmmax"), "IPC");
        assert_eq!(sysctl_namespace("fs.mqueue.msg_max"), "IPC");
        assert_eq!(sysctl_namespace("kernel.msg*"), "IPC");
        assert_eq!(sysctl_namespace("kernel.pid_max"), "");
        let spec = json!({"hostNetwork": true, "securityContext": {"sysctls": [
            {"name": "foo-", "value": "1"}, {"name": "kernel.shmmax", "value": "1"},
            {"name": "kernel.shmmax", "value": "2"}, {"name": "net.core.somaxconn", "value": "1"}]}});
        let mut errs = Vec::new();
        validate_sysctls(&spec, "spec.securityContext.sysctls", &mut errs);
        let texts: Vec<String> = errs.iter().map(FieldError::text).collect();
        assert_eq!(texts.len(), 3, "{texts:?}");
        assert!(
            texts[0].starts_with("spec.securityContext.sysctls[0].name: Invalid value: \"foo-\"")
        );
        assert!(texts[1].contains("sysctls[2].name: Duplicate value"));
        assert!(texts[2].contains("may not be specified when 'hostNetwork' is true"));
    }

    #[test]
    fn daemonset_update_strategy_is_defaulted_and_validated() {
        let ri = Registry::get().lookup("apps", "v1", "daemonsets").unwrap();
        let ds = |us: Value| {
            let mut o = json!({"metadata": {"name": "d"}, "spec": {
                "selector": {"matchLabels": {"a": "b"}}, "updateStrategy": us,
                "template": {"metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
            default(ri, &mut o);
            let errs: Vec<String> = validate(ri, &o, None, &Settings::default())
                .iter()
                .map(|e| e.text())
                .collect();
            (o["spec"]["updateStrategy"].clone(), errs)
        };
        let (us, errs) = ds(json!(null));
        assert_eq!(
            us,
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert!(errs.is_empty(), "{errs:?}");
        // maxSurge alone keeps maxUnavailable's default: both set, as upstream refuses.
        let (_, errs) = ds(json!({"rollingUpdate": {"maxSurge": 1}}));
        assert_eq!(errs, ["spec.updateStrategy.rollingUpdate.maxSurge: Invalid value: 1: may not be set when maxUnavailable is non-zero"]);
        let (_, errs) = ds(json!({"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}));
        assert!(errs.is_empty(), "{errs:?}");
        let (_, errs) = ds(json!({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}));
        assert_eq!(errs, ["spec.updateStrategy.rollingUpdate.maxUnavailable: Required value: cannot be 0 when maxSurge is 0"]);
        let (_, errs) = ds(json!({"rollingUpdate": {"maxUnavailable": "110%"}}));
        assert_eq!(errs, ["spec.updateStrategy.rollingUpdate.maxUnavailable: Invalid value: \"110%\": must not be greater than 100%"]);
        let (_, errs) = ds(json!({"rollingUpdate": {"maxUnavailable": -1}}));
        assert_eq!(errs[0], "spec.updateStrategy.rollingUpdate.maxUnavailable: Invalid value: -1: must be greater than or equal to 0");
        let (_, errs) = ds(json!({"type": "Sometimes"}));
        assert_eq!(errs, ["spec.updateStrategy: Unsupported value: \"Sometimes\": supported values: \"RollingUpdate\", \"OnDelete\""]);
        let (us, errs) = ds(json!({"type": "OnDelete"}));
        assert_eq!(us, json!({"type": "OnDelete"}));
        assert!(errs.is_empty());
    }

    #[test]
    fn daemonset_template_generation_follows_the_template() {
        let ri = Registry::get().lookup("apps", "v1", "daemonsets").unwrap();
        const KEY: &str = "deprecated.daemonset.template.generation";
        let old = json!({"metadata": {"annotations": {KEY: "2"}},
            "spec": {"template": {"spec": {"containers": [{"image": "a"}]}}}});
        let mut same = json!({"metadata": {}, "spec": old["spec"].clone()});
        prepare_for_update(ri, &mut same, &old);
        assert_eq!(same["metadata"]["annotations"][KEY], "2");
        let mut changed = json!({"metadata": {"annotations": {KEY: "2"}},
            "spec": {"template": {"spec": {"containers": [{"image": "b"}]}}}});
        prepare_for_update(ri, &mut changed, &old);
        assert_eq!(changed["metadata"]["annotations"][KEY], "3");
    }

    #[test]
    fn generation_follows_everything_but_metadata_and_status() {
        let r = Registry::get();
        let d = r.lookup("apps", "v1", "deployments").unwrap();
        let old = json!({"metadata": {"name": "a", "generation": 1}, "spec": {"replicas": 1}, "status": {"replicas": 1}});
        let meta_only =
            json!({"metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"replicas": 1}});
        assert!(!bumps_generation(d, &meta_only, &old));
        let scaled =
            json!({"metadata": {"name": "a"}, "spec": {"replicas": 2}, "status": {"replicas": 1}});
        assert!(bumps_generation(d, &scaled, &old));
        let extra = json!({"metadata": {"name": "a"}, "spec": {"replicas": 1}, "other": 1});
        assert!(bumps_generation(d, &extra, &old));
        let gone = json!({"metadata": {"name": "a"}});
        assert!(bumps_generation(d, &gone, &old));
        let cm = r.lookup("", "v1", "configmaps").unwrap();
        assert!(!bumps_generation(
            cm,
            &json!({"data": {"k": "w"}}),
            &json!({"data": {"k": "v"}})
        ));
    }

    #[test]
    fn deployment_defaults_and_validation() {
        let r = Registry::get();
        let d = r.lookup("apps", "v1", "deployments").unwrap();
        let mut obj = json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
        });
        default(d, &mut obj);
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let c = &obj["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(obj["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert!(validate(d, &obj, None, &Settings::default()).is_empty());
        obj["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        let errs = validate(d, &obj, None, &Settings::default());
        assert_eq!(errs[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn environment_variable_names() {
        let r = Registry::get();
        let p = r.lookup("", "v1", "pods").unwrap();
        let obj = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c",
            "image": "i",
            "env": [{"name": "OK_1"}, {"name": "1.also-ok"}, {"name": "KEY=1"}, {"value": "v"},
                    {"name": "tab\there"}],
            "envFrom": [{"prefix": "P_", "configMapRef": {"name": "a"}},
                        {"prefix": "P=", "configMapRef": {"name": "b"}}]}]}});
        let errs = validate(p, &obj, None, &Settings::default());
        let got: Vec<_> = errs.iter().map(|e| e.text()).collect();
        let why = "a valid environment variable name must consist only of printable ASCII characters other than '='";
        assert_eq!(
            got,
            vec![
                format!("spec.containers[0].env[2].name: Invalid value: \"KEY=1\": {why}"),
                "spec.containers[0].env[3].name: Required value".to_string(),
                format!("spec.containers[0].env[4].name: Invalid value: \"tab\\there\": {why}"),
                format!("spec.containers[0].envFrom[1].prefix: Invalid value: \"P=\": {why}"),
            ]
        );
        let from = |e: Value| {
            let obj = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c",
                "image": "i", "env": [e]}]}});
            let errs = validate(p, &obj, None, &Settings::default());
            errs.iter().map(|e| e.text()).collect::<Vec<_>>()
        };
        let cm = json!({"name": "a", "key": "k"});
        assert!(from(json!({"name": "A", "valueFrom": {"configMapKeyRef": cm}})).is_empty());
        assert!(
            from(json!({"name": "A", "value": "", "valueFrom": {"configMapKeyRef": cm}}))
                .is_empty()
        );
        assert_eq!(
            from(json!({"name": "A", "value": "v", "valueFrom": {"configMapKeyRef": cm}})),
            ["spec.containers[0].env[0].valueFrom: Invalid value: \"\": may not be specified when `value` is not empty"]
        );
        assert_eq!(
            from(json!({"name": "A", "valueFrom": {"configMapKeyRef": cm, "secretKeyRef": cm}})),
            ["spec.containers[0].env[0].valueFrom: Invalid value: \"\": may not have more than one field specified at a time"]
        );
    }

    #[test]
    fn pull_policy_by_tag() {
        assert_eq!(default_pull_policy("nginx:alpine"), "IfNotPresent");
        assert_eq!(default_pull_policy("nginx"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/x"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/x:1"), "IfNotPresent");
    }

    #[test]
    fn bad_names_and_required_fields() {
        let r = Registry::get();
        let p = r.lookup("", "v1", "pods").unwrap();
        let obj =
            json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "c"}]}});
        let errs = validate(p, &obj, None, &Settings::default());
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["metadata.name", "spec.containers[0].image"]);
    }

    #[test]
    fn node_pod_ranges_are_set_once() {
        let n = Registry::get().lookup("", "v1", "nodes").unwrap();
        let node = |cidr: Value| json!({"metadata": {"name": "n1"}, "spec": cidr});
        let fields = |new: &Value, old: &Value| -> Vec<String> {
            validate(n, new, Some(old), &Settings::default())
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        let empty = node(json!({}));
        let a = node(json!({"podCIDR": "10.42.0.0/24", "podCIDRs": ["10.42.0.0/24"]}));
        let b = node(json!({"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"]}));
        assert!(
            fields(&a, &empty).is_empty(),
            "from unset to a range is allowed"
        );
        assert!(fields(&a, &a).is_empty());
        assert_eq!(fields(&b, &a), vec!["spec.podCIDRs"]);
        assert_eq!(fields(&empty, &a), vec!["spec.podCIDRs"]);
        let p = |id: &str| node(json!({"providerID": id}));
        assert!(fields(&p("kite://n1"), &p("")).is_empty());
        assert_eq!(
            fields(&p("kite://n2"), &p("kite://n1")),
            vec!["spec.providerID"]
        );
    }

    #[test]
    fn defaults_match_upstream_for_jobs_and_templates() {
        let r = Registry::get();
        let job = r.lookup("batch", "v1", "jobs").unwrap();
        let mut j = json!({"metadata": {"name": "j", "uid": "u-1"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        default(job, &mut j);
        assert_eq!(j["spec"]["manualSelector"], false);
        assert_eq!(
            j["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        let labels = &j["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["job-name"], "j");
        assert_eq!(labels["batch.kubernetes.io/controller-uid"], "u-1");
        assert_eq!(&j["metadata"]["labels"], labels);
        // Templates get no enableServiceLinks (SetDefaults_Pod only); pods do.
        assert!(j["spec"]["template"]["spec"]
            .get("enableServiceLinks")
            .is_none());
        let pod = r.lookup("", "v1", "pods").unwrap();
        let mut p = json!({"spec": {"serviceAccount": "old", "containers": []}});
        default(pod, &mut p);
        assert_eq!(p["spec"]["enableServiceLinks"], true);
        assert_eq!(p["spec"]["serviceAccountName"], "old");
        let mut p = json!({"spec": {"containers": []}});
        default(pod, &mut p);
        assert_eq!(p["spec"]["serviceAccount"], "default");
        // Generation: workloads keep one, a Service does not.
        assert!(tracks_generation(
            r.lookup("apps", "v1", "deployments").unwrap()
        ));
        assert!(!tracks_generation(r.lookup("", "v1", "services").unwrap()));
    }
}

#[cfg(test)]
mod ephemeral_tests {
    use super::*;

    #[test]
    fn ephemeral_updates_are_validated_as_upstream() {
        let old = json!({"spec": {
            "containers": [{"name": "app", "image": "busybox"}],
            "ephemeralContainers": [{"name": "dbg", "image": "busybox", "resources": {}, "tty": false}]
        }});
        // The same container back through a typed round trip, plus a new one: fine.
        let ok = json!([
            {"name": "dbg", "image": "busybox", "stdin": false},
            {"name": "dbg2", "image": "busybox", "targetContainerName": "app"}
        ]);
        assert!(validate_ephemeral_update(&ok, &old).is_empty());
        // Removed, changed, duplicated, forbidden fields, unknown target.
        let msgs = |l: Value| {
            validate_ephemeral_update(&l, &old)
                .into_iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            msgs(json!([])),
            ["spec.ephemeralContainers: Forbidden: existing ephemeral containers \"dbg\" may not be removed"]
        );
        assert_eq!(
            msgs(json!([{"name": "dbg", "image": "other"}])),
            ["spec.ephemeralContainers[0]: Forbidden: existing ephemeral containers \"dbg\" may not be changed"]
        );
        let bad = msgs(json!([
            {"name": "dbg", "image": "busybox"},
            {"name": "app", "image": "x", "ports": [{"containerPort": 80}], "targetContainerName": "nope"}
        ]));
        assert!(
            bad.iter().any(|m| m.contains("name: Duplicate value")),
            "{bad:?}"
        );
        assert!(
            bad.iter()
                .any(|m| m.contains("ports: Forbidden: cannot be set for an Ephemeral Container")),
            "{bad:?}"
        );
        assert!(
            bad.iter()
                .any(|m| m.contains("targetContainerName: Not found")),
            "{bad:?}"
        );
    }
}

#[cfg(test)]
mod mount_tests {
    use super::*;

    #[test]
    fn bidirectional_propagation_needs_privilege() {
        let spec = |privileged: bool, mode: &str| {
            json!({"containers": [{"name": "c", "image": "i",
                "securityContext": {"privileged": privileged},
                "volumeMounts": [{"name": "v", "mountPath": "/v", "mountPropagation": mode}]}],
                "volumes": [{"name": "v", "emptyDir": {}}]})
        };
        let msgs = |s: Value| {
            let mut errs = Vec::new();
            validate_pod_spec(&s, "spec", &mut errs);
            errs.into_iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
        };
        assert!(msgs(spec(true, "Bidirectional")).is_empty());
        assert!(msgs(spec(false, "HostToContainer")).is_empty());
        assert_eq!(
            msgs(spec(false, "Bidirectional")),
            ["spec.containers[0].volumeMounts[0].mountPropagation: Forbidden: Bidirectional mount propagation is available only to privileged containers"]
        );
        assert!(msgs(spec(true, "Sideways"))[0].contains("Unsupported value"));
    }
}
