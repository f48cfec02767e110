//! Watch: streams `{"type": ..., "object": ...}` lines for a collection, from the
//! resourceVersion semantics upstream defines (unset or "0": the current state as ADDED events,
//! then changes; an exact version: every change after it; a compacted one: an ERROR event with
//! 410 Expired). Selectors apply to both the old and new object, so an object that stops
//! matching is reported DELETED. Bookmarks and timeoutSeconds as upstream.
//!
//! Watch-list (`sendInitialEvents=true&resourceVersionMatch=NotOlderThan`, what client-go's
//! informers send since 1.35): the initial ADDED events come from one consistent snapshot, then a
//! BOOKMARK whose object carries `k8s.io/initial-events-end: "true"` and the snapshot's
//! resourceVersion, then live events. [`Start::from_query`] holds upstream's defaulting and
//! validation of those parameters.

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
use kite_api::validation::FieldError;
use kite_store::{EventKind, Revision};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// How often a bookmark is sent to watchers that allow them (upstream's cacher: about once a
/// minute, and once more 2 s before the watch times out).
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);
/// How long before the deadline the last bookmark goes out.
const BOOKMARK_BEFORE_END: Duration = Duration::from_secs(2);
/// The annotation that marks the bookmark ending a watch-list's initial events.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";
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

    /// A BOOKMARK: an empty object of the kind carrying only a resourceVersion (and, at the
    /// end of a watch-list's initial events, upstream's annotation).
    fn bookmark(&self, rev: Revision, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string(), "creationTimestamp": null});
        if initial_end {
            meta["annotations"] = json!({INITIAL_EVENTS_END: "true"});
        }
        let obj = json!({
            "kind": self.ri.kind,
            "apiVersion": self.ri.api_version(),
            "metadata": meta,
        });
        let mut b =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
        b.push(b'\n');
        Bytes::from(b)
    }
}

/// Where a watch starts and what it sends first, after upstream's `SetListOptionsDefaults` and
/// `ValidateListOptions` (the WatchList feature is on, as in 1.36).
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    /// Send the current objects as ADDED events first.
    pub initial_events: bool,
    /// The revision the watch asks for; `None`: the current one.
    pub revision: Option<Revision>,
    /// The client accepts BOOKMARK events.
    pub bookmarks: bool,
}

/// A boolean query parameter as Go's `strconv.ParseBool` reads it.
fn parse_bool(name: &str, v: &str) -> ApiResult<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "strconv.ParseBool: parsing {v:?}: invalid syntax ({name})"
        ))),
    }
}

impl Start {
    pub fn from_query(q: &HashMap<String, String>) -> ApiResult<Start> {
        let rv = q.get("resourceVersion").map(String::as_str).unwrap_or("");
        let rv_match = q
            .get("resourceVersionMatch")
            .map(String::as_str)
            .unwrap_or("");
        let send = q
            .get("sendInitialEvents")
            .map(|v| parse_bool("sendInitialEvents", v))
            .transpose()?;
        let bookmarks = q
            .get("allowWatchBookmarks")
            .map(|v| parse_bool("allowWatchBookmarks", v))
            .transpose()?
            .unwrap_or(false);
        let errs = validate_watch(
            send,
            rv_match,
            q.get("continue").is_some_and(|c| !c.is_empty()),
        );
        if !errs.is_empty() {
            return Err(ApiError::invalid_options(&errs));
        }
        let legacy = rv.is_empty() || rv == "0";
        // SetListOptionsDefaults: a watch from "now" or "any" gets its initial events.
        let send = send.unwrap_or(legacy);
        let revision = if legacy {
            None
        } else {
            Some(rv.parse::<Revision>().map_err(|_| {
                ApiError::bad_request(format!(
                    "resourceVersion: Invalid value: {rv:?}: must be an integer"
                ))
            })?)
        };
        Ok(Start {
            initial_events: send,
            revision,
            bookmarks,
        })
    }
}

/// Upstream's `validateWatchOptions`.
fn validate_watch(send: Option<bool>, rv_match: &str, has_continue: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if send.is_some() && rv_match != "NotOlderThan" {
        errs.push(FieldError::forbidden(
            "resourceVersionMatch",
            "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ));
    }
    if !rv_match.is_empty() {
        if send.is_none() {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        if rv_match != "NotOlderThan" {
            errs.push(FieldError::not_supported(
                "resourceVersionMatch",
                &json!(rv_match),
                &["NotOlderThan"],
            ));
        }
        if has_continue {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
    }
    errs
}

/// Upstream's `ValidateListOptions` for a list (not a watch).
pub fn validate_list(q: &HashMap<String, String>) -> ApiResult<()> {
    let mut errs = Vec::new();
    let rv = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let rv_match = q
        .get("resourceVersionMatch")
        .map(String::as_str)
        .unwrap_or("");
    if !rv_match.is_empty() {
        if rv.is_empty() {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if q.get("continue").is_some_and(|c| !c.is_empty()) {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if rv_match != "Exact" && rv_match != "NotOlderThan" {
            errs.push(FieldError::not_supported(
                "resourceVersionMatch",
                &json!(rv_match),
                &["Exact", "NotOlderThan", ""],
            ));
        }
        if rv_match == "Exact" && rv == "0" {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    if let Some(v) = q.get("sendInitialEvents") {
        parse_bool("sendInitialEvents", v)?;
        errs.push(FieldError::forbidden(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for list",
        ));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid_options(&errs))
    }
}

/// A watch event line around an object already in JSON.
fn event_line(ty: &str, obj: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(obj.len() + 32);
    b.extend_from_slice(b"{\"type\":\"");
    b.extend_from_slice(ty.as_bytes());
    b.extend_from_slice(b"\",\"object\":");
    b.extend_from_slice(obj);
    b.extend_from_slice(b"}\n");
    Bytes::from(b)
}

/// A watch event line from the stored bytes, with `resourceVersion` spliced in.
fn raw_line(ty: &str, kv: &kite_store::KeyValue) -> Option<Bytes> {
    let obj = crate::objects::raw_with_rv(kv).ok()?;
    Some(event_line(ty, &obj))
}

/// What a watcher whose selectors `prev` matched and the change to `now` does not is sent
/// as DELETED: the object as it was, at the change's resourceVersion (upstream's watch
/// cache sends the same).
fn left(prev: &kite_store::KeyValue, now: &kite_store::KeyValue) -> kite_store::KeyValue {
    kite_store::KeyValue {
        mod_revision: now.mod_revision,
        ..prev.clone()
    }
}

/// The snapshot a watch starts with.
enum Initial {
    None,
    /// Decoded, for Table output.
    Objects(Vec<Value>),
    /// As stored, with resourceVersion spliced in.
    Raw(Vec<Vec<u8>>),
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
    let how = Start::from_query(q)?;
    let bookmarks = how.bookmarks;
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
    // The initial events: one consistent snapshot, the watch then starts at its revision.
    let mut initial = Initial::None;
    let start: Revision = if how.initial_events {
        let current = objects.store.current_revision();
        if let Some(wanted) = how.revision.filter(|w| *w > current) {
            // As upstream's watch cache: the watch is accepted, and its one event says why
            // it ends.
            let e = ApiError::too_large_resource_version(wanted, current);
            return Ok(stream_response(futures::stream::once(async move {
                Ok::<_, Infallible>(error_line(&e))
            })));
        }
        let list_opts = ListOpts {
            limit: 0,
            continue_token: None,
            ..opts.clone()
        };
        if enc.table.is_some() {
            let (items, rev, _) = objects.list(ri, ns, &list_opts).await?;
            initial = Initial::Objects(items);
            rev
        } else {
            let (items, rev, _) = objects.list_raw(ri, ns, &list_opts).await?;
            initial = Initial::Raw(items);
            rev
        }
    } else {
        how.revision
            .unwrap_or_else(|| objects.store.current_revision())
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
        // With selectors but no table, a change is tested on the parts the selectors read
        // (decoded alone) and goes out as stored, spliced as in the plain case.
        let sparse = (enc.table.is_none() && !plain).then(|| {
            let mut paths: Vec<&str> = opts.fields.fields().map(strategy::field_path).collect();
            if !opts.labels.is_empty() {
                paths.push("metadata.labels");
            }
            kite_api::sparse::Paths::new(paths)
        });
        metrics.watch_opened();
        let _guard = scopeguard(metrics.clone());
        let sent_initial = !matches!(initial, Initial::None);
        match initial {
            Initial::None => {}
            Initial::Objects(items) => {
                for o in &items {
                    if tx.send(enc.line("ADDED", o)).await.is_err() {
                        return;
                    }
                }
            }
            Initial::Raw(items) => {
                // Each item is dropped once sent: the snapshot's memory goes as it streams.
                for item in items {
                    if tx.send(event_line("ADDED", &item)).await.is_err() {
                        return;
                    }
                }
            }
        }
        if sent_initial && bookmarks && tx.send(enc.bookmark(start, true)).await.is_err() {
            return;
        }
        let ends_at = tokio::time::Instant::now() + timeout;
        let deadline = tokio::time::sleep_until(ends_at);
        tokio::pin!(deadline);
        let next_bookmark = |now: tokio::time::Instant| {
            let heartbeat = now + BOOKMARK_EVERY;
            let before_end = ends_at.checked_sub(BOOKMARK_BEFORE_END).unwrap_or(ends_at);
            if before_end > now && before_end < heartbeat {
                before_end
            } else {
                heartbeat
            }
        };
        let tick = tokio::time::sleep_until(next_bookmark(tokio::time::Instant::now()));
        tokio::pin!(tick);
        let mut last = start;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = &mut tick, if bookmarks => {
                    if tx.send(enc.bookmark(last, false)).await.is_err() { return; }
                    let now = tokio::time::Instant::now();
                    let mut next = next_bookmark(now);
                    if next <= now { next = ends_at + BOOKMARK_EVERY; }
                    tick.as_mut().reset(next);
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
                        EventKind::Put if sparse.is_some() => {
                            let Some(p) = &sparse else { continue };
                            let Ok(new) = p.decode(&ev.kv.value) else { continue };
                            let was = ev.prev.as_ref().and_then(|o| p.decode(&o.value).ok()).is_some_and(|o| matches(&opts, &o));
                            let line = match (was, matches(&opts, &new)) {
                                (false, true) => raw_line("ADDED", &ev.kv),
                                (true, true) => raw_line("MODIFIED", &ev.kv),
                                (true, false) => ev.prev.as_ref().and_then(|o| raw_line("DELETED", &left(o, &ev.kv))),
                                (false, false) => continue,
                            };
                            match line { Some(l) => l, None => continue }
                        }
                        EventKind::Delete if sparse.is_some() => {
                            let Some(p) = &sparse else { continue };
                            let Ok(old) = p.decode(&ev.kv.value) else { continue };
                            if !matches(&opts, &old) { continue; }
                            match raw_line("DELETED", &ev.kv) { Some(l) => l, None => continue }
                        }
                        EventKind::Put => {
                            let Ok(new) = decode(&ev.kv) else { continue };
                            let old = ev.prev.as_ref().and_then(|p| decode(&left(p, &ev.kv)).ok());
                            match (old.as_ref().is_some_and(|o| matches(&opts, o)), matches(&opts, &new)) {
                                (false, true) => enc.line("ADDED", &new),
                                (true, true) => enc.line("MODIFIED", &new),
                                (true, false) => match &old { Some(o) => enc.line("DELETED", o), None => continue },
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
    Ok(stream_response(stream))
}

/// A 200 whose body is the stream of event lines.
fn stream_response(
    lines: impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(lines))
        .expect("static response parts are valid")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn watch_list_parameters_default_and_validate_as_upstream() {
        let wl = [
            ("watch", "true"),
            ("sendInitialEvents", "true"),
            ("resourceVersionMatch", "NotOlderThan"),
            ("allowWatchBookmarks", "true"),
        ];
        for rv in ["", "0"] {
            let mut p = q(&wl);
            p.insert("resourceVersion".into(), rv.into());
            assert_eq!(
                Start::from_query(&p).unwrap(),
                Start {
                    initial_events: true,
                    revision: None,
                    bookmarks: true
                }
            );
        }
        let mut p = q(&wl);
        p.insert("resourceVersion".into(), "42".into());
        assert_eq!(Start::from_query(&p).unwrap().revision, Some(42));
        // A legacy watch from "now" gets initial events (SetListOptionsDefaults); one from a
        // revision does not.
        assert!(
            Start::from_query(&q(&[("watch", "1")]))
                .unwrap()
                .initial_events
        );
        let from_rv = Start::from_query(&q(&[("resourceVersion", "7")])).unwrap();
        assert!(!from_rv.initial_events);
        assert_eq!(from_rv.revision, Some(7));
        // sendInitialEvents=false starts at "now" with nothing first.
        let none = Start::from_query(&q(&[
            ("sendInitialEvents", "false"),
            ("resourceVersionMatch", "NotOlderThan"),
        ]))
        .unwrap();
        assert!(!none.initial_events && none.revision.is_none());

        let e = Start::from_query(&q(&[("sendInitialEvents", "true")])).unwrap_err();
        assert_eq!(e.code, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            &*e.message,
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
        );
        let e = Start::from_query(&q(&[("resourceVersionMatch", "Exact")])).unwrap_err();
        assert_eq!(
            &*e.message,
            "ListOptions.meta.k8s.io \"\" is invalid: [resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided, resourceVersionMatch: Unsupported value: \"Exact\": supported values: \"NotOlderThan\"]"
        );
        assert_eq!(
            Start::from_query(&q(&[("sendInitialEvents", "yes")]))
                .unwrap_err()
                .code,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn list_parameters_validate_as_upstream() {
        assert!(validate_list(&q(&[])).is_ok());
        assert!(validate_list(&q(&[
            ("resourceVersion", "5"),
            ("resourceVersionMatch", "Exact")
        ]))
        .is_ok());
        let e = validate_list(&q(&[("sendInitialEvents", "true")])).unwrap_err();
        assert_eq!(
            &*e.message,
            "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list"
        );
        let e = validate_list(&q(&[("resourceVersionMatch", "NotOlderThan")])).unwrap_err();
        assert!(e
            .message
            .contains("resourceVersionMatch is forbidden unless resourceVersion is provided"));
        let e = validate_list(&q(&[
            ("resourceVersion", "0"),
            ("resourceVersionMatch", "Exact"),
        ]))
        .unwrap_err();
        assert!(e
            .message
            .contains("resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""));
    }
}
