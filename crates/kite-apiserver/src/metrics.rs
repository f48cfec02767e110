//! Prometheus metrics: API requests by verb, resource and code with latency histograms, and
//! open watches, rendered in the text exposition format at `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: &[f64] = &[0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; 10],
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
    store: Mutex<BTreeMap<&'static str, Histogram>>,
    watches: AtomicI64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, b) in BUCKETS.iter().enumerate() {
            out.push_str(&format!(
                "{name}_bucket{{{labels},le=\"{b}\"}} {}\n",
                self.counts[i]
            ));
        }
        out.push_str(&format!(
            "{name}_bucket{{{labels},le=\"+Inf\"}} {}\n",
            self.count
        ));
        out.push_str(&format!("{name}_sum{{{labels}}} {}\n", self.sum));
        out.push_str(&format!("{name}_count{{{labels}}} {}\n", self.count));
    }
}

impl Metrics {
    pub fn observe_request(&self, verb: &str, resource: &str, code: u16, took: Duration) {
        let verb = if verb.is_empty() { "unknown" } else { verb };
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((verb.to_string(), resource.to_string(), code))
            .or_default() += 1;
        if verb == "watch" {
            return;
        }
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((verb.to_string(), resource.to_string()))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// Records one store operation (get, list, create, update, delete, compact).
    pub fn observe_store(&self, op: &'static str, took: Duration) {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(op)
            .or_default()
            .observe(took.as_secs_f64());
    }

    pub fn watch_opened(&self) {
        self.watches.fetch_add(1, Ordering::Relaxed);
    }

    pub fn watch_closed(&self) {
        self.watches.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out by verb, resource and HTTP response code.\n# TYPE apiserver_request_total counter\n");
        for ((verb, res, code), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            out.push_str(&format!(
                "apiserver_request_total{{code=\"{code}\",resource=\"{res}\",verb=\"{}\"}} {n}\n",
                verb.to_uppercase()
            ));
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb and resource.\n# TYPE apiserver_request_duration_seconds histogram\n");
        for ((verb, res), h) in self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let labels = format!("resource=\"{res}\",verb=\"{}\"", verb.to_uppercase());
            h.render(&mut out, "apiserver_request_duration_seconds", &labels);
        }
        out.push_str("# HELP etcd_request_duration_seconds Store operation latency in seconds, by operation.\n# TYPE etcd_request_duration_seconds histogram\n");
        for (op, h) in self.store.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            h.render(
                &mut out,
                "etcd_request_duration_seconds",
                &format!("operation=\"{op}\""),
            );
        }
        out.push_str(&format!(
            "# HELP apiserver_registered_watchers Number of currently open watches.\n# TYPE apiserver_registered_watchers gauge\napiserver_registered_watchers {}\n",
            self.watches.load(Ordering::Relaxed)
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_histograms() {
        let m = Metrics::default();
        m.observe_request("list", "pods", 200, Duration::from_millis(3));
        m.watch_opened();
        m.observe_store("create", Duration::from_micros(700));
        let text = m.render();
        assert!(text.contains("etcd_request_duration_seconds_count{operation=\"create\"} 1"));
        assert!(text
            .contains("apiserver_request_total{code=\"200\",resource=\"pods\",verb=\"LIST\"} 1"));
        assert!(text.contains("le=\"0.005\"} 1"));
        assert!(text.contains("apiserver_registered_watchers 1"));
    }
}
