//! `/containerLogs/{namespace}/{pod}/{container}`: a container's log file, read as
//! `kubectl logs` asks (tail, since, timestamps, limit) and followed while it runs.

use super::LogError;
use crate::logs::{ReadOptions, Reader};
use crate::pods::Kubelet;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// `kubectl logs`' options from the query, as upstream's kubelet reads them.
fn read_options(q: &HashMap<String, String>) -> Result<(ReadOptions, bool), LogError> {
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let num = |k: &str| -> Result<Option<i64>, LogError> {
        q.get(k)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| LogError::Bad(format!("{k}: invalid value {v:?}")))
            })
            .transpose()
    };
    let since = match (q.get("sinceTime"), num("sinceSeconds")?) {
        (Some(t), _) if !t.is_empty() => Some(
            t.parse::<jiff::Timestamp>()
                .map_err(|_| LogError::Bad(format!("sinceTime: invalid value {t:?}")))?,
        ),
        (_, Some(s)) => Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s.max(0))),
        _ => None,
    };
    let tail_lines = num("tailLines")?.filter(|n| *n >= 0).map(|n| n as usize);
    let limit_bytes = num("limitBytes")?.filter(|n| *n > 0).map(|n| n as usize);
    Ok((
        ReadOptions {
            follow: flag("follow"),
            tail_lines,
            since,
            timestamps: flag("timestamps"),
            limit_bytes,
        },
        flag("previous"),
    ))
}

pub(super) async fn container_logs(
    State(k): State<Arc<Kubelet>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, LogError> {
    let (opts, previous) = read_options(&q)?;
    let (path, id) = k.container_log(&ns, &pod, &container, previous).await?;
    let follow = opts.follow && !previous;
    let reader = Reader::open(&path, opts).map_err(|e| {
        LogError::Bad(format!(
            "failed to open log file for container {container:?} in pod {pod:?}: {e}"
        ))
    })?;
    // Streamed: what is there now, then, when following, what comes while the container
    // runs (polled; a rotated file is followed into the new one).
    let stream = futures::stream::unfold(
        (reader, k, id, false),
        move |(mut reader, k, id, ended)| async move {
            if ended || reader.done() {
                return None;
            }
            let mut idle = 0u32;
            loop {
                let chunk = match reader.next_chunk() {
                    Ok(c) => c,
                    Err(e) => return Some((Err(e), (reader, k, id, true))),
                };
                if !chunk.is_empty() {
                    let done = !follow;
                    return Some((Ok(bytes::Bytes::from(chunk)), (reader, k, id, done)));
                }
                if !follow {
                    return None;
                }
                // Nothing new: a stopped container's log is complete (checked once a second).
                if idle % 5 == 4 && !k.container_running(&id).await {
                    let last = reader.next_chunk().unwrap_or_default();
                    return Some((Ok(bytes::Bytes::from(last)), (reader, k, id, true)));
                }
                idle += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    );
    Ok((
        [(axum::http::header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response())
}
