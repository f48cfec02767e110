//! Watch: streams `{"type": ..., "object": ...}` lines for a collection, from the
//! resourceVersion semantics upstream defines (unset or "0": the current state as ADDED events,
//! then changes; an exact version: every change after it; a compacted one: an ERROR event with
//! 410 Expired). Selectors apply to both the old and new object, so an object that stops
//! matching is reported DELETED. Bookmarks and timeoutSeconds as upstream.

use crate::error::{ApiError, ApiResult};
use crate::objects::{decode, ListOpts, Objects};
use crate::AppState;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{header, StatusCode};
use kite_api::registry::ResourceInfo;
use kite_api::strategy;
use kite_api::table::{self, IncludeObject};
use kite_store::{EventKind, Revision};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// How often a bookmark is sent to watchers that allow them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(15);
/// Upstream's default watch timeout is 30-60 minutes, chosen at random.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

fn matches(opts: &ListOpts, o: &Value) -> bool {
    opts.labels.matches_object(o) && opts.fields.matches(&|f| strategy::field_value(o, f))
}

struct Encoder {
    ri: &'static ResourceInfo,
    table: Option<IncludeObject>,
    first: bool,
}

impl Encoder {
    fn line(&mut self, ty: &str, obj: &Value) -> Bytes {
        let object = match (self.table, ty) {
            (Some(include), "ADDED" | "MODIFIED" | "DELETED") => {
                let rv = obj["metadata"]["resourceVersion"].clone();
                let t = table::table(
                    self.ri,
                    std::slice::from_ref(obj),
                    json!({"resourceVersion": rv}),
                    include,
                    !self.first,
                );
                self.first = false;
                t
            }
            _ => obj.clone(),
        };
        let mut b = serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
        b.push(b'\n');
        Bytes::from(b)
    }

    fn bookmark(&self, rev: Revision) -> Bytes {
        let obj = json!({
            "kind": self.ri.kind,
            "apiVersion": self.ri.api_version(),
            "metadata": {"resourceVersion": rev.to_string(), "creationTimestamp": null},
        });
        let mut b =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
        b.push(b'\n');
        Bytes::from(b)
    }
}

/// A watch event line from the stored bytes, with `resourceVersion` spliced in.
fn raw_line(ty: &str, kv: &kite_store::KeyValue) -> Option<Bytes> {
    let obj = crate::objects::raw_with_rv(kv).ok()?;
    let mut b = Vec::with_capacity(obj.len() + 32);
    b.extend_from_slice(b"{\"type\":\"");
    b.extend_from_slice(ty.as_bytes());
    b.extend_from_slice(b"\",\"object\":");
    b.extend_from_slice(&obj);
    b.extend_from_slice(b"}\n");
    Some(Bytes::from(b))
}

fn error_line(e: &ApiError) -> Bytes {
    let mut b =
        serde_json::to_vec(&json!({"type": "ERROR", "object": e.status()})).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

pub async fn serve(
    st: Arc<AppState>,
    ri: &'static ResourceInfo,
    ns: Option<&str>,
    opts: ListOpts,
    q: &HashMap<String, String>,
    table: Option<IncludeObject>,
) -> ApiResult<Response> {
    let objects: Arc<Objects> = st.objects.clone();
    let rv = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout =
        match q.get("timeoutSeconds") {
            Some(t) => Duration::from_secs(t.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("timeoutSeconds: invalid value {t:?}"))
            })?),
            None => DEFAULT_TIMEOUT,
        };
    let mut enc = Encoder {
        ri,
        table,
        first: true,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    // Initial state: for an unset or "0" resourceVersion, the current objects as ADDED.
    let mut initial = Vec::new();
    let start: Revision = if rv.is_empty() || rv == "0" {
        let list_opts = ListOpts {
            limit: 0,
            continue_token: None,
            ..opts.clone()
        };
        let (items, rev, _) = objects.list(ri, ns, &list_opts).await?;
        initial = items;
        rev
    } else {
        rv.parse::<Revision>().map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion: Invalid value: {rv:?}: must be an integer"
            ))
        })?
    };
    let prefix = Objects::collection_prefix(ri, ns);
    let store_watch = objects.store.watch(&prefix, start);
    let metrics = st.metrics.clone();
    tokio::spawn(async move {
        let mut w = match store_watch {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(error_line(&ApiError::from(e))).await;
                return;
            }
        };
        let plain = enc.table.is_none() && opts.labels.is_empty() && opts.fields.is_empty();
        metrics.watch_opened();
        let _guard = scopeguard(metrics.clone());
        for o in &initial {
            let line = enc.line("ADDED", o);
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        let mut last = start;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    if tx.send(enc.bookmark(last)).await.is_err() { return; }
                }
                _ = tx.closed() => return,
                ev = w.rx.recv() => {
                    let ev = match ev {
                        Some(Ok(ev)) => ev,
                        Some(Err(e)) => { let _ = tx.send(error_line(&ApiError::from(e))).await; return; }
                        None => return,
                    };
                    last = ev.revision;
                    let line = match ev.kind {
                        // Without selectors or a table, every change goes out as stored:
                        // the bytes are spliced, not parsed and encoded again.
                        EventKind::Put if plain => {
                            let ty = if ev.prev.is_some() { "MODIFIED" } else { "ADDED" };
                            match raw_line(ty, &ev.kv) { Some(l) => l, None => continue }
                        }
                        EventKind::Delete if plain => {
                            match raw_line("DELETED", &ev.kv) { Some(l) => l, None => continue }
                        }
                        EventKind::Put => {
                            let Ok(new) = decode(&ev.kv) else { continue };
                            let was = ev.prev.as_ref().and_then(|p| decode(p).ok()).is_some_and(|p| matches(&opts, &p));
                            match (was, matches(&opts, &new)) {
                                (false, true) => enc.line("ADDED", &new),
                                (true, true) => enc.line("MODIFIED", &new),
                                (true, false) => enc.line("DELETED", &new),
                                (false, false) => continue,
                            }
                        }
                        EventKind::Delete => {
                            let Ok(old) = decode(&ev.kv) else { continue };
                            if !matches(&opts, &old) { continue; }
                            enc.line("DELETED", &old)
                        }
                    };
                    if tx.send(line).await.is_err() { return; }
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .expect("static response parts are valid"))
}

/// Counts a watch closed when the watch task ends, however it ends.
struct WatchGuard(Arc<crate::metrics::Metrics>);

fn scopeguard(m: Arc<crate::metrics::Metrics>) -> WatchGuard {
    WatchGuard(m)
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watch_closed();
    }
}
