//! Pod garbage collection: pods bound to nodes that no longer exist are deleted (after
//! the node has been gone for a while, as upstream's quarantine), unscheduled pods being
//! deleted are removed at once, and terminated pods beyond a threshold go, oldest first.

use crate::Ctx;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Preconditions};
use kube::Api;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_secs(20);
const QUARANTINE: Duration = Duration::from_secs(40);
/// Upstream's --terminated-pod-gc-threshold default.
pub const TERMINATED_THRESHOLD: usize = 12500;

pub fn start(ctx: Arc<Ctx>) {
    let pods = ctx.informers.get::<Pod>();
    let nodes = ctx.informers.get::<Node>();
    tokio::spawn(async move {
        pods.wait_synced().await;
        nodes.wait_synced().await;
        let mut missing_since: HashMap<String, Instant> = HashMap::new();
        let mut t = tokio::time::interval(PERIOD);
        loop {
            t.tick().await;
            let all = pods.list();
            let mut doomed: Vec<Arc<Pod>> = Vec::new();
            let mut seen_missing = Vec::new();
            for p in &all {
                match p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .filter(|n| !n.is_empty())
                {
                    Some(n) if nodes.get("", n).is_none() => {
                        seen_missing.push(n.to_string());
                        let since = *missing_since
                            .entry(n.to_string())
                            .or_insert_with(Instant::now);
                        if since.elapsed() >= QUARANTINE {
                            doomed.push(p.clone());
                        }
                    }
                    None if p.metadata.deletion_timestamp.is_some() => doomed.push(p.clone()),
                    _ => {}
                }
            }
            missing_since.retain(|n, _| seen_missing.contains(n));
            let mut terminated: Vec<&Arc<Pod>> =
                all.iter().filter(|p| crate::util::is_terminal(p)).collect();
            if terminated.len() > TERMINATED_THRESHOLD {
                terminated.sort_by_key(|p| crate::util::created(&p.metadata));
                let n = terminated.len() - TERMINATED_THRESHOLD;
                doomed.extend(terminated.into_iter().take(n).cloned());
            }
            for p in doomed {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: p.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                if let Err(e) = api
                    .delete(p.metadata.name.as_deref().unwrap_or_default(), &dp)
                    .await
                {
                    tracing::debug!(error = %e, "pod garbage collection failed");
                }
            }
        }
    });
}
