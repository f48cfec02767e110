//! HTTP: parses every request path into (group, version, namespace, resource, name,
//! subresource) against the registry, checks authentication and authorization, decodes bodies
//! and query parameters, and calls the generic store ([`crate::objects`]). One handler serves
//! every resource.

use crate::auth::{forbidden_message, Attributes, Decision, UserInfo};
use crate::error::{ApiError, ApiResult};
use crate::objects::{Continue, DeleteOpts, FieldValidation, ListOpts, Part, WriteOpts, Written};
use crate::{connect, discovery, openapi, reviews, watch, AppState};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use kite_api::patch::PatchType;
use kite_api::registry::{ResourceInfo, Verbs};
use kite_api::selector::{FieldSelector, LabelSelector};
use kite_api::strategy;
use kite_api::table::{self, IncludeObject};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Upstream's request body limit.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

type Query = HashMap<String, String>;

pub(crate) fn json_response(code: StatusCode, v: &Value, warnings: &[String]) -> Response {
    json_bytes_response(code, serde_json::to_vec(v).unwrap_or_default(), warnings)
}

fn json_bytes_response(code: StatusCode, body: Vec<u8>, warnings: &[String]) -> Response {
    let mut r = (code, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    for w in warnings {
        let text = format!("299 - {}", serde_json::to_string(w).unwrap_or_default());
        if let Ok(h) = text.parse() {
            r.headers_mut().append(header::WARNING, h);
        }
    }
    r
}

/// The part of a request path after `/api/v1` or `/apis/<g>/<v>`.
#[derive(Debug)]
struct Target {
    ri: &'static ResourceInfo,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    /// What follows a `proxy` subresource (`pods/NAME/proxy/<rest>`).
    rest: Option<String>,
}

fn parse_target(st: &AppState, group: &str, version: &str, segs: &[&str]) -> ApiResult<Target> {
    let reg = st.objects.registry;
    let lookup = |plural: &str| reg.lookup(group, version, plural);
    let s = |i: usize| segs.get(i).map(|s| s.to_string());
    // namespaces/<ns>/<plural>[/<name>[/<sub>]] when <plural> is a namespaced resource.
    if segs.len() >= 3 && segs[0] == "namespaces" {
        if let Some(ri) = lookup(segs[2]).filter(|r| r.namespaced) {
            let proxy = segs.get(4) == Some(&"proxy");
            if segs.len() > 5 && !proxy {
                return Err(ApiError::path_not_found());
            }
            return Ok(Target {
                ri,
                namespace: s(1),
                name: s(3),
                sub: s(4),
                rest: proxy.then(|| segs[5..].join("/")),
            });
        }
    }
    let ri = segs
        .first()
        .and_then(|p| lookup(p))
        .ok_or_else(ApiError::path_not_found)?;
    let proxy = segs.get(2) == Some(&"proxy") && !ri.namespaced;
    if (segs.len() > 3 && !proxy) || (ri.namespaced && segs.len() > 1) {
        return Err(ApiError::path_not_found());
    }
    Ok(Target {
        ri,
        namespace: None,
        name: s(1),
        sub: s(2),
        rest: proxy.then(|| segs[3..].join("/")),
    })
}

pub(crate) async fn read_body(req: Request) -> ApiResult<(HeaderMap, Bytes)> {
    let (parts, body) = req.into_parts();
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > MAX_BODY {
            return Err(ApiError::too_large(MAX_BODY));
        }
    }
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|_| ApiError::too_large(MAX_BODY))?
        .to_bytes();
    Ok((parts.headers, bytes))
}

fn content_type(h: &HeaderMap) -> String {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string()
}

/// Decodes a JSON or YAML body.
pub(crate) fn decode_body(h: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let ct = content_type(h);
    if ct.starts_with("application/vnd.kubernetes.protobuf") {
        let reg = kite_api::Registry::get();
        return kite_api::proto::decode(body, |av, kind| {
            reg.by_kind(av, kind)
                .and_then(|ri| kite_api::proto::message_for_definition(&ri.definition))
                .or_else(|| kite_api::proto::message_for_kind(av, kind))
        })
        .map_err(|e| ApiError::bad_request(format!("error decoding protobuf body: {e}")));
    }
    if ct.starts_with("application/cbor") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {ct:?})"),
        ));
    }
    if ct.starts_with("application/yaml") || ct.starts_with("application/apply-patch+yaml") {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("the YAML body is not valid UTF-8"))?;
        return serde_saphyr::from_str::<Value>(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

fn write_opts(q: &Query) -> ApiResult<WriteOpts> {
    let dry_run = match q.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: {o:?}: supported values: \"All\""
            )))
        }
    };
    Ok(WriteOpts {
        dry_run,
        field_validation: FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?,
    })
}

fn list_opts(ri: &ResourceInfo, q: &Query) -> ApiResult<ListOpts> {
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), &|f| {
        strategy::field_supported(ri, f)
    })
    .map_err(|e| ApiError::bad_request(e.0))?;
    let limit = match q.get("limit").filter(|s| !s.is_empty()) {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("limit: invalid value {l:?}")))?
            .max(0) as usize,
        None => 0,
    };
    Ok(ListOpts {
        labels,
        fields,
        limit,
        continue_token: q.get("continue").filter(|s| !s.is_empty()).cloned(),
    })
}

/// What representation the client wants for reads.
fn wants_table(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',').any(|p| {
                let p: Vec<&str> = p.split(';').map(str::trim).collect();
                p.contains(&"as=Table") && p.contains(&"g=meta.k8s.io")
            })
        })
}

/// The media types a client may ask for of an endpoint that serves only plain objects.
const PLAIN_MEDIA_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
];

/// Content negotiation for endpoints that serve only their own plain type (discovery, the
/// review kinds): upstream answers 406 when no range of the Accept header can be met, e.g.
/// `as=Table` alone, which needs objects with metadata. `as` values in `also` are met (an
/// endpoint's own transformations, such as aggregated discovery).
fn accept_plain(h: &HeaderMap, also: &[&str]) -> ApiResult<()> {
    let Some(accept) = h.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    if accept.trim().is_empty() {
        return Ok(());
    }
    let met = accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let as_ = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim() == "as")
            .map(|(_, v)| v.trim());
        let media_ok = matches!(media.as_str(), "*/*" | "application/*")
            || PLAIN_MEDIA_TYPES.contains(&media.as_str());
        media_ok && as_.is_none_or(|a| also.contains(&a))
    });
    if met {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: {}",
                PLAIN_MEDIA_TYPES.join(", ")
            ),
        ))
    }
}

fn verb_for(method: &Method, t: &Target, q: &Query) -> &'static str {
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (method, t.name.is_some()) {
        (&Method::GET, false) if watching => "watch",
        (&Method::GET, true) if watching => "watch",
        (&Method::GET, false) => "list",
        (&Method::GET, true) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, false) => "deletecollection",
        (&Method::DELETE, true) => "delete",
        _ => "unknown",
    }
}

pub async fn handle(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut user = req.extensions().get::<UserInfo>().cloned();
    if user.is_none() {
        // A bearer token, when the connection has no client certificate.
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string());
        if let Some(t) = bearer {
            match crate::tokens::authenticate(&st, &t, &[]).await {
                Ok(u) => user = Some(u),
                Err(e) => tracing::debug!(error = %e, "bearer token refused"),
            }
        }
    }
    let (resp, verb, resource) = route(&st, user, req).await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            if e.code.is_server_error() {
                tracing::error!(%method, %path, error = %e, "request failed");
            }
            e.into_response()
        }
    };
    st.metrics
        .observe_request(verb, &resource, resp.status().as_u16(), started.elapsed());
    resp
}

async fn route(
    st: &Arc<AppState>,
    user: Option<UserInfo>,
    req: Request,
) -> (ApiResult<Response>, &'static str, String) {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let q: Query = serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
    // Unauthenticated endpoints.
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" => {
            return (
                Ok((StatusCode::OK, "ok").into_response()),
                "get",
                String::new(),
            )
        }
        "/version" => {
            return (
                Ok(json_response(StatusCode::OK, &st.version, &[])),
                "get",
                String::new(),
            )
        }
        p if p.starts_with("/healthz/")
            || p.starts_with("/livez/")
            || p.starts_with("/readyz/") =>
        {
            return (
                Ok((StatusCode::OK, "ok").into_response()),
                "get",
                String::new(),
            )
        }
        _ => {}
    }
    let Some(user) = user else {
        return (Err(ApiError::unauthorized()), "", String::new());
    };
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string())
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            let r = non_resource(st, &user, &req, &path, &segs);
            return (r, "get", String::new());
        }
    };
    // Legacy `/watch/` paths.
    let (rest, force_watch) = match rest {
        ["watch", more @ ..] => (more, true),
        r => (r, false),
    };
    if rest.is_empty() {
        let r = authorize_path(st, &user, &path, "get").and_then(|_| {
            accept_plain(req.headers(), &[])?;
            discovery::api_resource_list(st.objects.registry, group, version)
                .map(|d| json_response(StatusCode::OK, &d, &[]))
                .ok_or_else(ApiError::path_not_found)
        });
        return (r, "get", String::new());
    }
    let target = match parse_target(st, group, version, rest) {
        Ok(t) => t,
        Err(e) => return (Err(e), "", String::new()),
    };
    let mut q = q;
    if force_watch {
        q.insert("watch".into(), "true".into());
    }
    let verb = verb_for(req.method(), &target, &q);
    let resource = target.ri.plural.to_string();
    let attrs = Attributes {
        verb: verb.to_string(),
        api_group: group.to_string(),
        resource: resource.clone(),
        subresource: target.sub.clone().unwrap_or_default(),
        namespace: target.namespace.clone().unwrap_or_default(),
        name: target.name.clone().unwrap_or_default(),
        path: None,
    };
    if let Decision::Deny(_) = st.authorizer.authorize(&user, &attrs) {
        let e = ApiError {
            details: Some(json!({"name": attrs.name, "group": group, "kind": resource})),
            ..ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                forbidden_message(&user, &attrs),
            )
        };
        return (Err(e), verb, resource);
    }
    let r = serve_resource(st, &user, target, verb, q, req).await;
    (r, verb, resource)
}

fn authorize_path(st: &AppState, user: &UserInfo, path: &str, verb: &str) -> ApiResult<()> {
    let attrs = Attributes {
        verb: verb.into(),
        path: Some(path.into()),
        ..Default::default()
    };
    match st.authorizer.authorize(user, &attrs) {
        Decision::Allow => Ok(()),
        Decision::Deny(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            forbidden_message(user, &attrs),
        )),
    }
}

fn non_resource(
    st: &AppState,
    user: &UserInfo,
    req: &Request,
    path: &str,
    segs: &[&str],
) -> ApiResult<Response> {
    authorize_path(st, user, path, "get")?;
    if req.method() != Method::GET {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ));
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let reg = st.objects.registry;
    if matches!(segs, ["api"] | ["apis"] | ["apis", _]) {
        accept_plain(req.headers(), &["APIGroupDiscoveryList"])?;
    }
    match segs {
        ["api"] if discovery::wants_aggregated(accept) => Ok(aggregated(reg, true)),
        ["api"] => Ok(json_response(
            StatusCode::OK,
            &discovery::api_versions(&st.server_address),
            &[],
        )),
        ["apis"] if discovery::wants_aggregated(accept) => Ok(aggregated(reg, false)),
        ["apis"] => Ok(json_response(
            StatusCode::OK,
            &discovery::api_group_list(reg),
            &[],
        )),
        ["apis", g] => discovery::api_group(reg, g)
            .map(|d| json_response(StatusCode::OK, &d, &[]))
            .ok_or_else(ApiError::path_not_found),
        [".well-known", "openid-configuration"] | ["openid", "v1", "jwks"] => {
            let t = st.tokens.as_ref().ok_or_else(ApiError::path_not_found)?;
            let (doc, ct) = if segs[0] == "openid" {
                (t.jwks(), "application/jwk-set+json")
            } else {
                (t.openid_configuration(), "application/json")
            };
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, ct)],
                serde_json::to_vec(&doc).unwrap_or_default(),
            )
                .into_response())
        }
        ["metrics"] => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            st.metrics.render(),
        )
            .into_response()),
        ["openapi", "v2"] if accept.contains("protobuf") => Ok((
            StatusCode::OK,
            // As kube-openapi: the proto media type has an '@' that Go's mime parser refuses.
            [(header::CONTENT_TYPE, "application/octet-stream")],
            openapi::v2_protobuf(reg),
        )
            .into_response()),
        ["openapi", "v2"] => Ok(json_response(StatusCode::OK, &openapi::v2(reg), &[])),
        ["openapi", "v3"] => Ok(json_response(StatusCode::OK, &openapi::v3_root(reg), &[])),
        ["openapi", "v3", rest @ ..] => {
            let gv = rest.join("/");
            openapi::v3_group_version(reg, &gv)
                .map(|d| {
                    (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "application/json")],
                        d.as_ref().clone(),
                    )
                        .into_response()
                })
                .ok_or_else(ApiError::path_not_found)
        }
        _ => Err(ApiError::path_not_found()),
    }
}

fn aggregated(reg: &kite_api::Registry, core: bool) -> Response {
    let doc = discovery::aggregated(reg, core);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, discovery::AGGREGATED_V2)],
        serde_json::to_vec(&doc).unwrap_or_default(),
    )
        .into_response()
}

fn written(w: Written) -> Response {
    let code = if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json_bytes_response(code, w.object.into_json(), &w.warnings)
}

/// A list's ListMeta: resourceVersion, and where it continues with how much follows.
fn list_meta(rv: i64, cont: Option<Continue>) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c.token);
        if let Some(n) = c.remaining {
            meta["remainingItemCount"] = json!(n);
        }
    }
    meta
}

/// A list as a Table (what `kubectl get` asks for).
fn table_list_response(
    ri: &ResourceInfo,
    items: Vec<Value>,
    rv: i64,
    cont: Option<Continue>,
    q: &Query,
) -> Response {
    let meta = list_meta(rv, cont);
    let include = IncludeObject::parse(q.get("includeObject").map(String::as_str));
    json_response(
        StatusCode::OK,
        &table::table(ri, &items, meta, include, false),
        &[],
    )
}

/// A List written from stored JSON without parsing the items.
fn raw_list_response(
    ri: &ResourceInfo,
    items: &[Vec<u8>],
    rv: i64,
    cont: Option<Continue>,
) -> Response {
    let meta = list_meta(rv, cont);
    let head = json!({"kind": ri.list_kind, "apiVersion": ri.api_version(), "metadata": meta});
    let mut out = serde_json::to_vec(&head).unwrap_or_default();
    out.pop(); // the closing brace
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"]}");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        out,
    )
        .into_response()
}

async fn serve_resource(
    st: &Arc<AppState>,
    user: &UserInfo,
    t: Target,
    verb: &'static str,
    q: Query,
    req: Request,
) -> ApiResult<Response> {
    let ri = t.ri;
    let ns = t.namespace.as_deref();
    let objs = &st.objects;
    if ri.verbs == Verbs::CreateOnly {
        if verb != "create" || t.name.is_some() {
            return Err(ApiError::method_not_supported(ri, verb));
        }
        accept_plain(req.headers(), &["PartialObjectMetadata"])?;
        let (h, body) = read_body(req).await?;
        let obj = decode_body(&h, &body)?;
        let out = reviews::create(st, user, ri, ns, obj).await?;
        return Ok(json_response(StatusCode::CREATED, &out, &[]));
    }
    if let (Some(c), Some(n)) = (connect::find(ri, t.sub.as_deref()), t.name.as_deref()) {
        let rest = t.rest.clone().unwrap_or_default();
        return connect::serve(st, c, ns.unwrap_or_default(), n, &rest, req).await;
    }
    if !ri.verbs.names().contains(&verb) {
        return Err(ApiError::method_not_supported(ri, verb));
    }
    let name = t.name.as_deref();
    match (verb, name, t.sub.as_deref()) {
        ("list", None, None) => {
            watch::validate_list(&q)?;
            let opts = list_opts(ri, &q)?;
            if wants_table(req.headers()) {
                let (items, rv, cont) = objs.list(ri, ns, &opts).await?;
                return Ok(table_list_response(ri, items, rv, cont, &q));
            }
            let (items, rv, cont) = objs.list_raw(ri, ns, &opts).await?;
            Ok(raw_list_response(ri, &items, rv, cont))
        }
        ("watch", _, None) => {
            let mut opts = list_opts(ri, &q)?;
            if let Some(n) = name {
                opts.fields = FieldSelector::parse(&format!("metadata.name={n}"), &|_| true)
                    .map_err(|e| ApiError::bad_request(e.0))?;
            }
            let table = wants_table(req.headers())
                .then(|| IncludeObject::parse(q.get("includeObject").map(String::as_str)));
            watch::serve(st.clone(), ri, ns, opts, &q, table).await
        }
        ("get", Some(n), sub) if part_of(ri, sub).is_some() => {
            let (o, _) = objs.get(ri, ns, n).await?;
            if wants_table(req.headers()) {
                let include = IncludeObject::parse(q.get("includeObject").map(String::as_str));
                let rv = o["metadata"]["resourceVersion"].clone();
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(ri, &[o], json!({"resourceVersion": rv}), include, false),
                    &[],
                ));
            }
            Ok(json_response(StatusCode::OK, &o, &[]))
        }
        ("get", Some(n), Some("scale")) if ri.scale => {
            let (o, _) = objs.get(ri, ns, n).await?;
            Ok(json_response(StatusCode::OK, &scale_of(ri, &o), &[]))
        }
        ("create", None, None) => {
            let opts = write_opts(&q)?;
            let (h, body) = read_body(req).await?;
            let obj = decode_body(&h, &body)?;
            Ok(written(objs.create(ri, ns, obj, &opts).await?))
        }
        ("create", Some(n), Some("eviction")) if ri.is("", "Pod") => {
            let (h, body) = read_body(req).await?;
            let obj = decode_body(&h, &body)?;
            let out = crate::eviction::evict(st, ns.unwrap_or_default(), n, obj).await?;
            Ok(json_response(StatusCode::CREATED, &out, &[]))
        }
        ("create", Some(n), Some("binding")) if ri.is("", "Pod") => {
            let (h, body) = read_body(req).await?;
            let obj = decode_body(&h, &body)?;
            let out = reviews::bind(st, ns, n, obj).await?;
            Ok(json_response(StatusCode::CREATED, &out, &[]))
        }
        ("update", Some(n), sub) if part_of(ri, sub).is_some() => {
            let part = part_of(ri, sub).unwrap_or(Part::Main);
            let opts = write_opts(&q)?;
            let (h, body) = read_body(req).await?;
            let obj = decode_body(&h, &body)?;
            Ok(written(objs.update(ri, ns, n, obj, part, &opts).await?))
        }
        ("update", Some(n), Some("finalize")) if ri.is("", "Namespace") => {
            let opts = write_opts(&q)?;
            let (h, body) = read_body(req).await?;
            let obj = decode_body(&h, &body)?;
            let patch = json!({"spec": {"finalizers": obj["spec"]["finalizers"].clone()}});
            Ok(written(
                objs.patch(ri, ns, n, &patch, PatchType::Merge, Part::Main, &opts)
                    .await?,
            ))
        }
        ("update" | "patch", Some(n), Some("scale")) if ri.scale => {
            let opts = write_opts(&q)?;
            let (h, body) = read_body(req).await?;
            let (o, _) = objs.get(ri, ns, n).await?;
            let current = scale_of(ri, &o);
            let wanted = if verb == "patch" {
                let ty = PatchType::from_content_type(&content_type(&h))
                    .ok_or_else(|| ApiError::unsupported_media(&content_type(&h)))?;
                let p = decode_body(&h, &body)?;
                kite_api::patch::apply(&current, &p, ty, "Scale").map_err(|e| {
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string())
                })?
            } else {
                decode_body(&h, &body)?
            };
            let replicas = wanted["spec"]["replicas"].as_i64().unwrap_or(0);
            if replicas < 0 {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("Scale.autoscaling \"{n}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"),
                ));
            }
            let mut patch = json!({"spec": {"replicas": replicas}});
            if let Some(rv) = wanted["metadata"]["resourceVersion"]
                .as_str()
                .filter(|s| !s.is_empty())
            {
                patch["metadata"] = json!({"resourceVersion": rv});
            }
            let w = objs
                .patch(ri, ns, n, &patch, PatchType::Merge, Part::Main, &opts)
                .await?;
            Ok(json_response(
                StatusCode::OK,
                &scale_of(ri, &w.object.into_value()?),
                &w.warnings,
            ))
        }
        ("patch", Some(n), sub) if part_of(ri, sub).is_some() => {
            let part = part_of(ri, sub).unwrap_or(Part::Main);
            let opts = write_opts(&q)?;
            let (h, body) = read_body(req).await?;
            let ct = content_type(&h);
            let ty = PatchType::from_content_type(&ct)
                .ok_or_else(|| ApiError::unsupported_media(&ct))?;
            let p: Value = if ty == PatchType::Apply {
                Value::Null
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
            };
            Ok(written(objs.patch(ri, ns, n, &p, ty, part, &opts).await?))
        }
        ("delete", Some(n), None) => {
            let (h, body) = read_body(req).await?;
            let opts = delete_opts(&h, &body, &q)?;
            let o = objs.delete(ri, ns, n, &opts).await?;
            Ok(json_response(StatusCode::OK, &o, &[]))
        }
        ("deletecollection", None, None) => {
            let lopts = list_opts(ri, &q)?;
            let (h, body) = read_body(req).await?;
            let dopts = delete_opts(&h, &body, &q)?;
            let (items, rv, _) = objs.list(ri, ns, &lopts).await?;
            let mut deleted = Vec::new();
            for o in items {
                let name = o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let ons = o["metadata"]["namespace"].as_str().map(String::from);
                match objs.delete(ri, ons.as_deref(), &name, &dopts).await {
                    Ok(d) => deleted.push(d),
                    Err(e) if e.code == StatusCode::NOT_FOUND => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": ri.list_kind, "apiVersion": ri.api_version(),
                        "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
                &[],
            ))
        }
        _ => Err(ApiError::method_not_supported(ri, verb)),
    }
}

/// Which part of the object a read or write of the resource or of the subresource `sub`
/// addresses; None for a subresource that is not an object's part (or not this kind's).
fn part_of(ri: &ResourceInfo, sub: Option<&str>) -> Option<Part> {
    match sub {
        None => Some(Part::Main),
        Some("status") => Some(Part::Status),
        Some("ephemeralcontainers") if ri.is("", "Pod") => Some(Part::EphemeralContainers),
        Some("resize") if ri.is("", "Pod") => Some(Part::Resize),
        _ => None,
    }
}

fn delete_opts(h: &HeaderMap, body: &[u8], q: &Query) -> ApiResult<DeleteOpts> {
    let b: Value = if body.is_empty() {
        json!({})
    } else {
        decode_body(h, body)?
    };
    let grace = match q.get("gracePeriodSeconds") {
        Some(g) => Some(g.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("gracePeriodSeconds: invalid value {g:?}"))
        })?),
        None => b["gracePeriodSeconds"].as_i64(),
    };
    let mut propagation = q
        .get("propagationPolicy")
        .cloned()
        .or_else(|| b["propagationPolicy"].as_str().map(String::from));
    if propagation.is_none()
        && (q.get("orphanDependents").map(String::as_str) == Some("true")
            || b["orphanDependents"] == true)
    {
        propagation = Some("Orphan".into());
    }
    let dry_run = match q.get("dryRun") {
        Some(d) => d == "All",
        None => b["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == "All")),
    };
    Ok(DeleteOpts {
        grace_period: grace,
        propagation,
        precondition_uid: b["preconditions"]["uid"].as_str().map(String::from),
        precondition_rv: b["preconditions"]["resourceVersion"]
            .as_str()
            .map(String::from),
        dry_run,
    })
}

/// The autoscaling/v1 Scale view of a scalable object.
fn scale_of(ri: &ResourceInfo, o: &Value) -> Value {
    let m = &o["metadata"];
    let selector = match &o["spec"]["selector"] {
        s if ri.kind == "ReplicationController" => s
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        s => {
            let mut parts: Vec<String> = s["matchLabels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            parts.sort();
            parts.join(",")
        }
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": o["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": o["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// Turns a handler into the service the TLS layer serves.
pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}
