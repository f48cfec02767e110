//! The kubelet's Prometheus endpoints, in the text exposition format, with upstream's
//! metric names: `/metrics/resource` (what metrics-server scrapes: CPU and working set of
//! the node, each pod and container), `/metrics/cadvisor` (cAdvisor's per-container
//! names, as far as the cgroups tell them) and `/metrics` (the kubelet's own). The figures
//! are `/stats/summary`'s, read once per scrape: one source for every endpoint.

use crate::pods::Kubelet;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::fmt::Write;
use std::sync::Arc;

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Metric families in the order they are declared, each with its samples.
#[derive(Default)]
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; `labels` as (name, value) pairs, escaped as the format asks.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64, ms: Option<i64>) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{k}=\"{v}\"");
            }
            self.text.push('}');
        }
        let _ = write!(self.text, " {value}");
        if let Some(ms) = ms {
            let _ = write!(self.text, " {ms}");
        }
        self.text.push('\n');
    }
}

fn respond(out: Out) -> Response {
    ([(header::CONTENT_TYPE, TEXT)], out.text).into_response()
}

/// A summary figure, if the cgroup had it.
fn num(v: &Value, ptr: &str) -> Option<f64> {
    v.pointer(ptr).and_then(Value::as_f64)
}

/// The milliseconds since the epoch of a summary timestamp (upstream stamps each sample).
fn stamp(v: &Value) -> Option<i64> {
    let t: jiff::Timestamp = v.as_str()?.parse().ok()?;
    Some(t.as_millisecond())
}

fn seconds(t: &Value) -> Option<f64> {
    let t: jiff::Timestamp = t.as_str()?.parse().ok()?;
    Some(t.as_second() as f64)
}

/// `/metrics/resource`.
pub(super) async fn resource(State(k): State<Arc<Kubelet>>) -> Response {
    respond(resource_text(&k.summary().await))
}

fn resource_text(s: &Value) -> Out {
    let mut o = Out::default();
    let node = &s["node"];
    let pods = s["pods"].as_array().cloned().unwrap_or_default();
    let containers = || {
        pods.iter().flat_map(|p| {
            let (ns, pod) = (
                p["podRef"]["namespace"].as_str().unwrap_or_default(),
                p["podRef"]["name"].as_str().unwrap_or_default(),
            );
            p["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |c| (ns, pod, c))
        })
    };
    o.family(
        "container_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
    );
    for (ns, pod, c) in containers() {
        let name = c["name"].as_str().unwrap_or_default();
        if let Some(v) = num(c, "/cpu/usageCoreNanoSeconds") {
            let l = [("container", name), ("namespace", ns), ("pod", pod)];
            o.sample(
                "container_cpu_usage_seconds_total",
                &l,
                v / 1e9,
                stamp(&c["cpu"]["time"]),
            );
        }
    }
    o.family(
        "container_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the container in bytes",
    );
    for (ns, pod, c) in containers() {
        let name = c["name"].as_str().unwrap_or_default();
        if let Some(v) = num(c, "/memory/workingSetBytes") {
            let l = [("container", name), ("namespace", ns), ("pod", pod)];
            o.sample(
                "container_memory_working_set_bytes",
                &l,
                v,
                stamp(&c["memory"]["time"]),
            );
        }
    }
    o.family(
        "container_start_time_seconds",
        "gauge",
        "[STABLE] Start time of the container since unix epoch in seconds",
    );
    for (ns, pod, c) in containers() {
        let name = c["name"].as_str().unwrap_or_default();
        if let Some(v) = seconds(&c["startTime"]) {
            let l = [("container", name), ("namespace", ns), ("pod", pod)];
            o.sample("container_start_time_seconds", &l, v, None);
        }
    }
    o.family(
        "node_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
    );
    if let Some(v) = num(node, "/cpu/usageCoreNanoSeconds") {
        o.sample(
            "node_cpu_usage_seconds_total",
            &[],
            v / 1e9,
            stamp(&node["cpu"]["time"]),
        );
    }
    o.family(
        "node_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the node in bytes",
    );
    if let Some(v) = num(node, "/memory/workingSetBytes") {
        o.sample(
            "node_memory_working_set_bytes",
            &[],
            v,
            stamp(&node["memory"]["time"]),
        );
    }
    o.family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
    );
    let pod_labels = |p: &Value| {
        (
            p["podRef"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            p["podRef"]["name"].as_str().unwrap_or_default().to_string(),
        )
    };
    for p in &pods {
        let (ns, pod) = pod_labels(p);
        if let Some(v) = num(p, "/cpu/usageCoreNanoSeconds") {
            let l = [("namespace", ns.as_str()), ("pod", pod.as_str())];
            o.sample(
                "pod_cpu_usage_seconds_total",
                &l,
                v / 1e9,
                stamp(&p["cpu"]["time"]),
            );
        }
    }
    o.family(
        "pod_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the pod in bytes",
    );
    for p in &pods {
        let (ns, pod) = pod_labels(p);
        if let Some(v) = num(p, "/memory/workingSetBytes") {
            let l = [("namespace", ns.as_str()), ("pod", pod.as_str())];
            o.sample(
                "pod_memory_working_set_bytes",
                &l,
                v,
                stamp(&p["memory"]["time"]),
            );
        }
    }
    o.family(
        "resource_scrape_error",
        "gauge",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
    );
    o.sample("resource_scrape_error", &[], 0.0, None);
    o
}

/// `/metrics/cadvisor`: cAdvisor's container metrics, labelled as upstream's kubelet
/// serves them (`container`, `namespace`, `pod`, and the cgroup as `id`).
pub(super) async fn cadvisor(State(k): State<Arc<Kubelet>>) -> Response {
    respond(cadvisor_text(&k.summary().await))
}

fn cadvisor_text(s: &Value) -> Out {
    let mut o = Out::default();
    let pods = s["pods"].as_array().cloned().unwrap_or_default();
    let rows: Vec<(String, String, String, Value)> = pods
        .iter()
        .flat_map(|p| {
            let ns = p["podRef"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let pod = p["podRef"]["name"].as_str().unwrap_or_default().to_string();
            p["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |c| {
                    (
                        ns.clone(),
                        pod.clone(),
                        c["name"].as_str().unwrap_or_default().to_string(),
                        c,
                    )
                })
        })
        .collect();
    let families: [(&str, &str, &str, &str, f64); 4] = [
        (
            "container_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed in seconds.",
            "/cpu/usageCoreNanoSeconds",
            1e-9,
        ),
        (
            "container_memory_usage_bytes",
            "gauge",
            "Current memory usage in bytes, including all memory regardless of when it was accessed",
            "/memory/usageBytes",
            1.0,
        ),
        (
            "container_memory_working_set_bytes",
            "gauge",
            "Current working set in bytes.",
            "/memory/workingSetBytes",
            1.0,
        ),
        (
            "container_memory_rss",
            "gauge",
            "Size of RSS in bytes.",
            "/memory/rssBytes",
            1.0,
        ),
    ];
    for (name, kind, help, ptr, scale) in families {
        o.family(name, kind, help);
        for (ns, pod, c, v) in &rows {
            if let Some(x) = num(v, ptr) {
                let l = [
                    ("container", c.as_str()),
                    ("namespace", ns.as_str()),
                    ("pod", pod.as_str()),
                ];
                o.sample(name, &l, x * scale, None);
            }
        }
    }
    o.family("machine_cpu_cores", "gauge", "Number of logical CPU cores.");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    o.sample("machine_cpu_cores", &[], cores as f64, None);
    if let Some(m) = crate::stats::memory("/").and_then(|m| m.limit) {
        o.family(
            "machine_memory_bytes",
            "gauge",
            "Amount of memory installed on the machine.",
        );
        o.sample("machine_memory_bytes", &[], m as f64, None);
    }
    o
}

/// `/metrics/probes`: how many probes ran, by container and result.
pub(super) async fn probes(State(k): State<Arc<Kubelet>>) -> Response {
    respond(probes_text(&k.probe_counts.snapshot()))
}

fn probes_text(series: &[(crate::probes::Series, [u64; 2])]) -> Out {
    let mut o = Out::default();
    o.family(
        "prober_probe_total",
        "counter",
        "[BETA] Cumulative number of a liveness, readiness or startup probe for a container by result.",
    );
    for (s, counts) in series {
        for (result, n) in ["successful", "failed"].iter().zip(counts) {
            let labels = [
                ("container", s.container.as_str()),
                ("namespace", s.namespace.as_str()),
                ("pod", s.pod.as_str()),
                ("pod_uid", s.pod_uid.as_str()),
                ("probe_type", s.probe_type),
                ("result", result),
            ];
            o.sample("prober_probe_total", &labels, *n as f64, None);
        }
    }
    o
}

/// `/metrics`: the kubelet's own figures.
pub(super) async fn own(State(k): State<Arc<Kubelet>>) -> Response {
    let s = k.summary().await;
    let mut o = Out::default();
    o.family(
        "kubelet_node_name",
        "gauge",
        "[ALPHA] The node's name. The count is always 1.",
    );
    let node = s["node"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    o.sample("kubelet_node_name", &[("node", node.as_str())], 1.0, None);
    let pods = s["pods"].as_array().map_or(0, Vec::len);
    let containers: usize = s["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["containers"].as_array().map_or(0, Vec::len))
        .sum();
    o.family(
        "kubelet_running_pods",
        "gauge",
        "[ALPHA] Number of pods that have a running pod sandbox",
    );
    o.sample("kubelet_running_pods", &[], pods as f64, None);
    o.family(
        "kubelet_running_containers",
        "gauge",
        "[ALPHA] Number of containers currently running",
    );
    o.sample(
        "kubelet_running_containers",
        &[("container_state", "running")],
        containers as f64,
        None,
    );
    // The process's own, as every Go binary of upstream's exports them.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i)?.parse::<f64>().ok())
        .sum();
    o.family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
    );
    o.sample("process_cpu_seconds_total", &[], ticks / tck, None);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as f64;
    if let Some(rss) = f.get(21).and_then(|v| v.parse::<f64>().ok()) {
        o.family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        o.sample("process_resident_memory_bytes", &[], rss * page, None);
    }
    respond(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary() -> Value {
        json!({
            "node": {"nodeName": "n", "cpu": {"time": "2026-12-05T10:00:00Z", "usageCoreNanoSeconds": 2_500_000_000u64},
                     "memory": {"time": "2026-12-05T10:00:00Z", "workingSetBytes": 1024}},
            "pods": [{"podRef": {"name": "p", "namespace": "ns"},
                      "cpu": {"time": "2026-12-05T10:00:00Z", "usageCoreNanoSeconds": 1_000_000_000u64},
                      "memory": {"time": "2026-12-05T10:00:00Z", "workingSetBytes": 512},
                      "containers": [{"name": "c", "startTime": "2026-12-05T09:00:00Z",
                                      "cpu": {"time": "2026-12-05T10:00:00Z", "usageCoreNanoSeconds": 500_000_000u64},
                                      "memory": {"time": "2026-12-05T10:00:00Z", "workingSetBytes": 256, "usageBytes": 300, "rssBytes": 200}}]}]
        })
    }

    #[test]
    fn probe_counts_carry_upstreams_names_and_labels() {
        let s = crate::probes::Series {
            probe_type: "Liveness",
            container: "c".into(),
            pod: "web".into(),
            namespace: "default".into(),
            pod_uid: "u1".into(),
        };
        let counts = crate::probes::Counts::default();
        counts.count(&s, true);
        counts.count(&s, true);
        counts.count(&s, false);
        let text = probes_text(&counts.snapshot()).text;
        assert!(text.contains("# TYPE prober_probe_total counter"), "{text}");
        assert!(
            text.contains(r#"prober_probe_total{container="c",namespace="default",pod="web",pod_uid="u1",probe_type="Liveness",result="successful"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"result="failed"} 1"#), "{text}");
        counts.forget_pod("u1");
        assert!(!probes_text(&counts.snapshot()).text.contains("web"));
    }

    #[test]
    fn resource_metrics_carry_upstreams_names_and_labels() {
        let t = resource_text(&summary()).text;
        let at = jiff::Timestamp::from_second(1_796_464_800).unwrap();
        assert_eq!(
            "2026-12-05T10:00:00Z".parse::<jiff::Timestamp>().unwrap(),
            at
        );
        for line in [
            "# TYPE container_cpu_usage_seconds_total counter",
            "container_cpu_usage_seconds_total{container=\"c\",namespace=\"ns\",pod=\"p\"} 0.5 1796464800000",
            "container_memory_working_set_bytes{container=\"c\",namespace=\"ns\",pod=\"p\"} 256 1796464800000",
            "container_start_time_seconds{container=\"c\",namespace=\"ns\",pod=\"p\"} 1796461200",
            "node_cpu_usage_seconds_total 2.5 1796464800000",
            "pod_memory_working_set_bytes{namespace=\"ns\",pod=\"p\"} 512 1796464800000",
            "resource_scrape_error 0",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line:?} in\n{t}");
        }
        let c = cadvisor_text(&summary()).text;
        assert!(
            c.contains("container_memory_rss{container=\"c\",namespace=\"ns\",pod=\"p\"} 200\n"),
            "{c}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut o = Out::default();
        o.sample("m", &[("l", "a\"b\\c\nd")], 1.0, None);
        assert_eq!(o.text, "m{l=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
