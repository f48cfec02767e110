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
    proxy::relay(backend, &path, req).await
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
    proxy::relay(backend, &path, req).await
}

#[cfg(test)]
mod tests {
    use super::*;

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
