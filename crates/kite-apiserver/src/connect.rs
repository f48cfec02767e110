//! Connect subresources, one table row per resource and subresource as upstream's REST
//! storage registers them (`pods/log`, `pods/exec`…): what discovery lists, which methods
//! they take, and where the request goes: the pod's kubelet (logs, exec, attach, port
//! forwarding), a node's kubelet (`nodes/proxy`), the pod itself (`pods/proxy`), or the
//! token issuer (`serviceaccounts/token`).
//! Streaming requests are relayed byte for byte once both sides have switched protocols;
//! the protocols themselves are spoken by the kubelet.

use crate::error::{ApiError, ApiResult};
use crate::proxy::{self, Backend};
use crate::AppState;
use axum::extract::Request;
use axum::response::Response;
use http::{Method, StatusCode};
use kite_api::registry::ResourceInfo;
use serde_json::Value;
use std::sync::Arc;

/// What serves a subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    PodLog,
    PodExec,
    PodAttach,
    PodPortForward,
    PodProxy,
    ServiceProxy,
    NodeProxy,
    TokenRequest,
}

/// One connect subresource.
#[derive(Debug)]
pub struct Connect {
    pub group: &'static str,
    pub kind: &'static str,
    pub sub: &'static str,
    /// The verbs discovery lists.
    pub verbs: &'static [&'static str],
    /// What discovery names as its response kind: (group, version, kind).
    pub response: (&'static str, &'static str, &'static str),
    pub handler: Handler,
}

const STREAM: &[&str] = &["create", "get"];
const PROXY: &[&str] = &["create", "delete", "get", "patch", "update"];

pub const TABLE: &[Connect] = &[
    Connect {
        group: "",
        kind: "Pod",
        sub: "log",
        verbs: &["get"],
        response: ("", "v1", "Pod"),
        handler: Handler::PodLog,
    },
    Connect {
        group: "",
        kind: "Pod",
        sub: "exec",
        verbs: STREAM,
        response: ("", "v1", "PodExecOptions"),
        handler: Handler::PodExec,
    },
    Connect {
        group: "",
        kind: "Pod",
        sub: "attach",
        verbs: STREAM,
        response: ("", "v1", "PodAttachOptions"),
        handler: Handler::PodAttach,
    },
    Connect {
        group: "",
        kind: "Pod",
        sub: "portforward",
        verbs: STREAM,
        response: ("", "v1", "PodPortForwardOptions"),
        handler: Handler::PodPortForward,
    },
    Connect {
        group: "",
        kind: "Pod",
        sub: "proxy",
        verbs: PROXY,
        response: ("", "v1", "PodProxyOptions"),
        handler: Handler::PodProxy,
    },
    Connect {
        group: "",
        kind: "Service",
        sub: "proxy",
        verbs: PROXY,
        response: ("", "v1", "ServiceProxyOptions"),
        handler: Handler::ServiceProxy,
    },
    Connect {
        group: "",
        kind: "ServiceAccount",
        sub: "token",
        verbs: &["create"],
        response: ("authentication.k8s.io", "v1", "TokenRequest"),
        handler: Handler::TokenRequest,
    },
    Connect {
        group: "",
        kind: "Node",
        sub: "proxy",
        verbs: PROXY,
        response: ("", "v1", "NodeProxyOptions"),
        handler: Handler::NodeProxy,
    },
];

/// The connect subresources of a resource.
pub fn of(ri: &ResourceInfo) -> impl Iterator<Item = &'static Connect> + '_ {
    TABLE.iter().filter(|c| ri.is(c.group, c.kind))
}

pub fn find(ri: &ResourceInfo, sub: Option<&str>) -> Option<&'static Connect> {
    let sub = sub?;
    of(ri).find(|c| c.sub == sub)
}

/// The query as pairs, repeated names kept (`command=sh&command=-c`).
fn pairs(req: &Request) -> Vec<(String, String)> {
    serde_urlencoded::from_str(req.uri().query().unwrap_or_default()).unwrap_or_default()
}

/// Go's `strconv.ParseBool`, as query parameters are decoded.
fn parse_bool(name: &str, v: &str) -> ApiResult<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" | "" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "{name}: invalid value {v:?}: strconv.ParseBool: parsing {v:?}: invalid syntax"
        ))),
    }
}

fn verb_allowed(c: &Connect, m: &Method) -> bool {
    let verb = match *m {
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        Method::OPTIONS => return c.verbs == PROXY,
        _ => return false,
    };
    c.verbs.contains(&verb)
}

pub async fn serve(
    st: &Arc<AppState>,
    c: &'static Connect,
    ns: &str,
    name: &str,
    rest: &str,
    req: Request,
) -> ApiResult<Response> {
    if !verb_allowed(c, req.method()) {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({}/{} {name})",
                match c.kind {
                    "Pod" => "pods",
                    "ServiceAccount" => "serviceaccounts",
                    "Service" => "services",
                    _ => "nodes",
                },
                c.sub
            ),
        ));
    }
    let q = pairs(&req);
    match c.handler {
        Handler::PodLog => {
            let map = q.iter().cloned().collect();
            let websocket = req
                .headers()
                .get(http::header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            if websocket {
                return log_websocket(proxy::pod_log(st, ns, name, &map).await?, req).await;
            }
            proxy::pod_log(st, ns, name, &map).await
        }
        Handler::PodExec | Handler::PodAttach => stream(st, c, ns, name, &q, req).await,
        Handler::PodPortForward => port_forward(st, ns, name, &q, req).await,
        Handler::NodeProxy => node_proxy(st, name, rest, req).await,
        Handler::PodProxy => pod_proxy(st, ns, name, rest, req).await,
        Handler::ServiceProxy => service_proxy(st, ns, name, rest, req).await,
        Handler::TokenRequest => {
            let (h, body) = crate::http::read_body(req).await?;
            let obj = crate::http::decode_body(&h, &body)?;
            let out = crate::tokens::request(st, ns, name, obj).await?;
            Ok(crate::http::json_response(StatusCode::CREATED, &out, &[]))
        }
    }
}

/// A log streamed over a WebSocket, as upstream's `wsstream.Reader`: each chunk one
/// message, raw for `binary.k8s.io` (or no protocol), base64 text for
/// `base64.binary.k8s.io`; the connection closes when the log ends.
async fn log_websocket(log: Response, req: Request) -> ApiResult<Response> {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use axum::extract::FromRequestParts;
    use base64::Engine;
    use futures::{SinkExt, StreamExt};
    let requested: Vec<String> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let base64 = match requested.first().map(String::as_str) {
        None | Some("binary.k8s.io") => false,
        Some("base64.binary.k8s.io") => true,
        Some(_) => requested.iter().all(|p| p != "binary.k8s.io"),
    };
    let proto = if base64 {
        "base64.binary.k8s.io"
    } else {
        "binary.k8s.io"
    };
    let (mut parts, _) = req.into_parts();
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let ws = if requested.is_empty() {
        ws
    } else {
        ws.protocols([proto])
    };
    let mut body = log.into_body().into_data_stream();
    Ok(ws.on_upgrade(move |socket| async move {
        let (mut tx, _rx) = socket.split();
        while let Some(Ok(chunk)) = body.next().await {
            let m = if base64 {
                Message::Text(
                    base64::engine::general_purpose::STANDARD
                        .encode(&chunk)
                        .into(),
                )
            } else {
                Message::Binary(chunk)
            };
            if tx.send(m).await.is_err() {
                return;
            }
        }
        let _ = tx
            .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    }))
}

/// The pod and the kubelet of its node; upstream's errors when there is none.
async fn pod_and_kubelet(st: &AppState, ns: &str, name: &str) -> ApiResult<(Value, Backend)> {
    let reg = st.objects.registry;
    let pods = reg.lookup("", "v1", "pods").expect("pods are served");
    let (pod, _) = st.objects.get(pods, Some(ns), name).await?;
    let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let node = node.to_string();
    let backend = proxy::kubelet_of(st, &node).await?;
    Ok((pod, backend))
}

/// `pods/exec` and `pods/attach`: upstream's `streamLocation` and `streamParams`.
async fn stream(
    st: &Arc<AppState>,
    c: &Connect,
    ns: &str,
    name: &str,
    q: &[(String, String)],
    req: Request,
) -> ApiResult<Response> {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let (pod, backend) = {
        let reg = st.objects.registry;
        let pods = reg.lookup("", "v1", "pods").expect("pods are served");
        let (pod, _) = st.objects.get(pods, Some(ns), name).await?;
        let container = proxy::pick_container(&pod, get("container"))?;
        let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
            return Err(ApiError::bad_request(format!(
                "pod {name} does not have a host assigned"
            )));
        };
        let node = node.to_string();
        ((pod, container), proxy::kubelet_of(st, &node).await?)
    };
    let (_, container) = pod;
    let mut params: Vec<(String, String)> = Vec::new();
    for (flag, kubelet) in [
        ("stdin", "input"),
        ("stdout", "output"),
        ("stderr", "error"),
        ("tty", "tty"),
    ] {
        if parse_bool(flag, get(flag).unwrap_or_default())? {
            params.push((kubelet.into(), "1".into()));
        }
    }
    if c.handler == Handler::PodExec {
        let cmd: Vec<&String> = q
            .iter()
            .filter(|(n, _)| n == "command")
            .map(|(_, v)| v)
            .collect();
        params.extend(cmd.into_iter().map(|v| ("command".to_string(), v.clone())));
    }
    let path = format!(
        "/{}/{ns}/{name}/{container}?{}",
        c.sub,
        serde_urlencoded::to_string(&params).unwrap_or_default()
    );
    proxy::relay(backend, &path, req).await
}

/// `pods/portforward`: upstream's `PortForwardLocation`.
async fn port_forward(
    st: &Arc<AppState>,
    ns: &str,
    name: &str,
    q: &[(String, String)],
    req: Request,
) -> ApiResult<Response> {
    let (_, backend) = pod_and_kubelet(st, ns, name).await?;
    let ports: Vec<(String, String)> = q
        .iter()
        .filter(|(n, _)| n == "ports")
        .map(|(_, v)| ("port".to_string(), v.clone()))
        .collect();
    let path = format!(
        "/portForward/{ns}/{name}{}{}",
        if ports.is_empty() { "" } else { "?" },
        serde_urlencoded::to_string(&ports).unwrap_or_default()
    );
    proxy::relay(backend, &path, req).await
}

/// The path after `proxy`, with the request's trailing slash and query.
fn proxied_path(rest: &str, req: &Request) -> String {
    let mut p = format!("/{rest}");
    if req.uri().path().ends_with('/') && !p.ends_with('/') {
        p.push('/');
    }
    if let Some(q) = req.uri().query() {
        p.push('?');
        p.push_str(q);
    }
    p
}

/// `nodes/NAME/proxy/…`: the node's kubelet.
async fn node_proxy(
    st: &Arc<AppState>,
    name: &str,
    rest: &str,
    req: Request,
) -> ApiResult<Response> {
    let backend = proxy::kubelet_of(st, name).await?;
    let path = proxied_path(rest, &req);
    proxy::relay(backend, &path, req).await
}

/// Splits `[scheme:]name[:port]` as upstream's `SplitSchemeNamePort`.
fn split_scheme_name_port(id: &str) -> Option<(&str, &str, &str)> {
    let parts: Vec<&str> = id.split(':').collect();
    match parts.as_slice() {
        [n] if !n.is_empty() => Some(("", n, "")),
        [n, p] if !n.is_empty() => Some(("", n, p)),
        [s, n, p] if !n.is_empty() && matches!(*s, "" | "http" | "https") => Some((s, n, p)),
        _ => None,
    }
}

/// `pods/[scheme:]NAME[:port]/proxy/…`: the pod's IP, at the port named or the first
/// container port, as upstream's `ResourceLocation`.
async fn pod_proxy(
    st: &Arc<AppState>,
    ns: &str,
    id: &str,
    rest: &str,
    req: Request,
) -> ApiResult<Response> {
    if let Some(r) = root_redirect(rest, &req) {
        return Ok(r);
    }
    let (scheme, name, port) = split_scheme_name_port(id)
        .ok_or_else(|| ApiError::bad_request(format!("invalid request {id:?}")))?;
    let reg = st.objects.registry;
    let pods = reg.lookup("", "v1", "pods").expect("pods are served");
    let (pod, _) = st.objects.get(pods, Some(ns), name).await?;
    let mut port = port.to_string();
    if port.is_empty() {
        port = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|c| c["ports"][0]["containerPort"].as_i64())
            .map(|p| p.to_string())
            .unwrap_or_default();
    }
    let ip = pod["status"]["podIP"].as_str().unwrap_or_default();
    if ip.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("pod {name} has no IP address yet"),
        ));
    }
    let port: u16 = if port.is_empty() {
        80
    } else if let Ok(n) = port.parse() {
        n
    } else {
        // A named port of one of the containers.
        pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|p| p["name"] == port.as_str())
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| ApiError::bad_request(format!("no such port {port:?} on pod {name}")))?
    };
    let backend = Backend {
        host: ip.to_string(),
        port,
        tls: (scheme == "https").then(proxy::insecure_client),
        local: None,
        what: format!("pod {name}"),
    };
    let path = proxied_path(rest, &req);
    let prefix = proxy_prefix(req.uri().path(), id);
    rewrite_html(proxy::relay(backend, &path, req).await?, &prefix).await
}

/// `services/[scheme:]NAME[:port]/proxy/…`: one ready endpoint of the service, for the
/// port named or numbered (or its only port), as upstream's service `ResourceLocation`.
async fn service_proxy(
    st: &Arc<AppState>,
    ns: &str,
    id: &str,
    rest: &str,
    req: Request,
) -> ApiResult<Response> {
    if let Some(r) = root_redirect(rest, &req) {
        return Ok(r);
    }
    let (scheme, name, port) = split_scheme_name_port(id)
        .ok_or_else(|| ApiError::bad_request(format!("invalid service request {id:?}")))?;
    let reg = st.objects.registry;
    let services = reg
        .lookup("", "v1", "services")
        .expect("services are served");
    let (svc, _) = st.objects.get(services, Some(ns), name).await?;
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let svc_port = if port.is_empty() {
        if ports.len() == 1 {
            ports[0].clone()
        } else {
            Value::Null
        }
    } else {
        ports
            .iter()
            .find(|p| {
                p["name"] == port
                    || p["port"].as_i64().map(|n| n.to_string()).as_deref() == Some(port)
            })
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!("no endpoints available for service \"{id}\""),
                )
            })?
    };
    let port_name = svc_port["name"].as_str().unwrap_or_default().to_string();
    let slices = reg
        .lookup("discovery.k8s.io", "v1", "endpointslices")
        .expect("endpointslices are served");
    let opts = crate::objects::ListOpts {
        labels: kite_api::selector::LabelSelector::parse(&format!(
            "kubernetes.io/service-name={name}"
        ))
        .map_err(|e| ApiError::bad_request(e.0))?,
        ..Default::default()
    };
    let (items, _, _) = st.objects.list(slices, Some(ns), &opts).await?;
    let mut candidates = Vec::new();
    for s in &items {
        let Some(p) = s["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in s["endpoints"].as_array().into_iter().flatten() {
            if e["conditions"]["ready"] == Value::Bool(false) {
                continue;
            }
            if let Some(a) = e["addresses"][0].as_str() {
                candidates.push((a.to_string(), p));
            }
        }
    }
    if candidates.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("no endpoints available for service \"{name}\""),
        ));
    }
    let (host, port) = {
        use rand::seq::IndexedRandom;
        candidates
            .choose(&mut rand::rng())
            .cloned()
            .expect("not empty")
    };
    let backend = Backend {
        host,
        port,
        tls: (scheme == "https").then(proxy::insecure_client),
        local: None,
        what: format!("service {name}"),
    };
    let path = proxied_path(rest, &req);
    let prefix = proxy_prefix(req.uri().path(), id);
    rewrite_html(proxy::relay(backend, &path, req).await?, &prefix).await
}

/// GET or HEAD of a proxy root without its trailing slash is redirected (301) to it with
/// the slash, as upstream's proxy handler does, so relative links in the page resolve
/// under the proxy.
fn root_redirect(rest: &str, req: &Request) -> Option<Response> {
    let path = req.uri().path();
    if !rest.is_empty()
        || path.ends_with('/')
        || !matches!(*req.method(), http::Method::GET | http::Method::HEAD)
    {
        return None;
    }
    let mut to = format!("{path}/");
    if let Some(q) = req.uri().query() {
        to.push('?');
        to.push_str(q);
    }
    Response::builder()
        .status(StatusCode::MOVED_PERMANENTLY)
        .header(http::header::LOCATION, to)
        .body(axum::body::Body::empty())
        .ok()
}

/// The request path up to its `…/ID/proxy`: where links in proxied pages must point.
fn proxy_prefix(path: &str, id: &str) -> String {
    let marker = format!("/{id}/proxy");
    match path.find(&marker) {
        Some(i) => path[..i + marker.len()].to_string(),
        None => String::new(),
    }
}

/// HTML pages through the pod and service proxies get their absolute links (`href`,
/// `src`, `action` starting with one `/`) prefixed with the proxy path, as upstream's
/// proxy transport rewrites them, so a page's links keep going through the proxy.
/// Other content, and compressed pages, pass through as they are.
async fn rewrite_html(resp: Response, prefix: &str) -> ApiResult<Response> {
    let html = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    let encoded = resp
        .headers()
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| v != "identity");
    if !html || encoded || prefix.is_empty() {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    let limited = http_body_util::Limited::new(body, 16 << 20);
    let bytes = http_body_util::BodyExt::collect(limited)
        .await
        .map_err(|e| ApiError::internal(format!("reading the proxied page: {e}")))?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    let out = rewrite_links(&text, prefix);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts
        .headers
        .insert(http::header::CONTENT_LENGTH, out.len().into());
    Ok(Response::from_parts(parts, axum::body::Body::from(out)))
}

/// `href="/x"` → `href="PREFIX/x"` (and `src`, `action`; either quote or none).
fn rewrite_links(html: &str, prefix: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len() + 64);
    let mut last = 0;
    let bytes = html.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let attr = ["href=", "src=", "action="]
            .into_iter()
            .find(|a| lower[i..].starts_with(a) && i > 0 && bytes[i - 1].is_ascii_whitespace());
        let Some(a) = attr else {
            i += 1;
            continue;
        };
        let mut v = i + a.len();
        if v < bytes.len() && (bytes[v] == b'"' || bytes[v] == b'\'') {
            v += 1;
        }
        if html[v..].starts_with('/') && !html[v..].starts_with("//") {
            out.push_str(&html[last..v]);
            out.push_str(prefix);
            last = v;
        }
        i = v;
    }
    out.push_str(&html[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxied_pages_keep_their_links_in_the_proxy() {
        let p = proxy_prefix("/api/v1/namespaces/a/pods/web:80/proxy/x/", "web:80");
        assert_eq!(p, "/api/v1/namespaces/a/pods/web:80/proxy");
        assert_eq!(
            rewrite_links(
                "<a href=\"/rewriteme\">test</a> <img SRC='/i.png'> <a href=\"rel\"> <a href=\"//cdn/x\">",
                &p
            ),
            "<a href=\"/api/v1/namespaces/a/pods/web:80/proxy/rewriteme\">test</a> <img SRC='/api/v1/namespaces/a/pods/web:80/proxy/i.png'> <a href=\"rel\"> <a href=\"//cdn/x\">"
        );
    }

    #[test]
    fn names_split_as_upstream() {
        assert_eq!(split_scheme_name_port("web"), Some(("", "web", "")));
        assert_eq!(
            split_scheme_name_port("web:8080"),
            Some(("", "web", "8080"))
        );
        assert_eq!(
            split_scheme_name_port("https:web:443"),
            Some(("https", "web", "443"))
        );
        assert_eq!(split_scheme_name_port("ftp:web:21"), None);
        assert_eq!(split_scheme_name_port(":80"), None);
    }

    #[test]
    fn booleans_parse_as_go() {
        assert!(parse_bool("stdin", "true").unwrap());
        assert!(parse_bool("stdin", "1").unwrap());
        assert!(!parse_bool("stdin", "").unwrap());
        assert!(parse_bool("stdin", "yes").is_err());
    }
}
