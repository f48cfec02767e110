//! Reaching kubelets and pods: `pods/log` (checked as upstream's `LogLocation`: the pod,
//! its container, its node; the kubelet's answer streamed back) and [`relay`], which
//! forwards any request (protocol upgrades included) to a kubelet or a pod and its answer
//! back.

use crate::error::{ApiError, ApiResult};
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http_body_util::BodyExt;
use kite_api::validation::FieldError;
use kite_pki::tls::LocalDial;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How the API server reaches kubelets: its client certificate, and the CA their serving
/// certificates come from.
pub type KubeletClient = Arc<rustls::ClientConfig>;

/// The names of a pod's containers, init and ephemeral ones included, in upstream's order
/// (`VisitContainers`).
fn container_names(pod: &Value) -> Vec<String> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

/// Upstream's `validateContainer`: the container named, or the only one.
pub(crate) fn pick_container(pod: &Value, asked: Option<&str>) -> ApiResult<String> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if container_names(pod).iter().any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None => {
            let main = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
            match main {
                1 => Ok(pod["spec"]["containers"][0]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()),
                0 => Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}"
                ))),
                _ => Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    container_names(pod).join(" ")
                ))),
            }
        }
    }
}

/// Upstream's `ValidatePodLogOptions` (without stream selection, which is alpha).
fn validate_log_options(name: &str, q: &HashMap<String, String>) -> ApiResult<()> {
    let num = |k: &str| -> ApiResult<Option<i64>> {
        q.get(k)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "{k}: Invalid value: \"{v}\": strconv.ParseInt: parsing {v:?}: invalid syntax"
                    ))
                })
            })
            .transpose()
    };
    let mut errs = Vec::new();
    if let Some(n) = num("tailLines")?.filter(|n| *n < 0) {
        errs.push(FieldError::invalid(
            "tailLines",
            &n.into(),
            "must be greater than or equal to 0",
        ));
    }
    if let Some(n) = num("limitBytes")?.filter(|n| *n < 1) {
        errs.push(FieldError::invalid(
            "limitBytes",
            &n.into(),
            "must be greater than 0",
        ));
    }
    let since_time = q.get("sinceTime").filter(|v| !v.is_empty());
    match (num("sinceSeconds")?, since_time) {
        (Some(_), Some(_)) => errs.push(FieldError::forbidden(
            "",
            "at most one of `sinceTime` or `sinceSeconds` may be specified",
        )),
        (Some(n), None) if n < 1 => errs.push(FieldError::invalid(
            "sinceSeconds",
            &n.into(),
            "must be greater than 0",
        )),
        _ => {}
    }
    if let Some(t) = since_time {
        if t.parse::<jiff::Timestamp>().is_err() {
            return Err(ApiError::bad_request(format!(
                "sinceTime: Invalid value: {t:?}: not an RFC 3339 time"
            )));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid_kind("", "PodLogOptions", name, &errs))
    }
}

/// Where a node's kubelet answers: its InternalIP (else ExternalIP, else Hostname) and the
/// port in its `daemonEndpoints`.
fn kubelet_address(node: &Value) -> Option<(String, u16)> {
    let addrs = node["status"]["addresses"].as_array()?;
    let of = |t: &str| {
        addrs
            .iter()
            .find(|a| a["type"] == t)
            .and_then(|a| a["address"].as_str())
    };
    let host = of("InternalIP")
        .or_else(|| of("ExternalIP"))
        .or_else(|| of("Hostname"))?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or(10250);
    Some((host.to_string(), port))
}

/// `GET pods/{name}/log`.
pub async fn pod_log(
    st: &crate::AppState,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
) -> ApiResult<Response> {
    let reg = st.objects.registry;
    let pods = reg.lookup("", "v1", "pods").expect("pods are served");
    let nodes = reg.lookup("", "v1", "nodes").expect("nodes are served");
    let (pod, _) = st.objects.get(pods, Some(ns), name).await?;
    let container = pick_container(&pod, q.get("container").map(String::as_str))?;
    validate_log_options(name, q)?;
    let Some(node_name) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        // Not scheduled yet: no log, as upstream (an empty answer).
        return Ok((
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, "text/plain")],
            "",
        )
            .into_response());
    };
    let (node, _) = st.objects.get(nodes, None, node_name).await?;
    let backend = kubelet_backend(st, node_name, &node)?;
    let mut query: Vec<(String, String)> = [
        "follow",
        "previous",
        "sinceSeconds",
        "sinceTime",
        "timestamps",
        "tailLines",
        "limitBytes",
    ]
    .iter()
    .filter_map(|k| q.get(*k).map(|v| (k.to_string(), v.clone())))
    .collect();
    query.sort();
    let path = format!(
        "/containerLogs/{ns}/{name}/{container}?{}",
        serde_urlencoded::to_string(&query).unwrap_or_default()
    );
    let resp = get(&backend, &path).await.map_err(|e| {
        ApiError::internal(format!(
            "error trying to reach the kubelet of node {node_name:?}: {e}"
        ))
    })?;
    let code = resp.status();
    if code.is_success() {
        let (_, body) = resp.into_parts();
        return Ok((
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, "text/plain")],
            Body::new(body),
        )
            .into_response());
    }
    // Upstream's GenericHttpResponseChecker.
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Err(match code {
        StatusCode::BAD_REQUEST => ApiError::bad_request(text),
        StatusCode::INTERNAL_SERVER_ERROR => {
            ApiError::internal(format!("Internal error occurred: {text}"))
        }
        StatusCode::NOT_FOUND => ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ( pods/log {name})"),
        ),
        c => ApiError::internal(format!(
            "an error on the server ({text:?}) has prevented the request from succeeding ( pods/log {name}) (code {})",
            c.as_u16()
        )),
    })
}

/// Where a relayed request goes.
pub struct Backend {
    pub host: String,
    pub port: u16,
    /// TLS to use, if any.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Reached in-process instead, when it serves that way (this server's own node).
    pub local: Option<LocalDial>,
    /// What it is, for error messages ("node n1", "pod web").
    pub what: String,
}

/// The kubelet of a node.
pub async fn kubelet_of(st: &crate::AppState, node_name: &str) -> ApiResult<Backend> {
    let nodes = st
        .objects
        .registry
        .lookup("", "v1", "nodes")
        .expect("nodes are served");
    let (node, _) = st.objects.get(nodes, None, node_name).await?;
    kubelet_backend(st, node_name, &node)
}

/// The kubelet of `node`: its address and port from the node's status, TLS with this
/// server's kubelet client, or in-process for the node of this `kite server`.
fn kubelet_backend(st: &crate::AppState, node_name: &str, node: &Value) -> ApiResult<Backend> {
    let (host, port) = kubelet_address(node).ok_or_else(|| {
        ApiError::internal(format!(
            "node {node_name:?} has no address to reach its kubelet"
        ))
    })?;
    let tls = st.kubelet_client.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "this API server has no client for kubelets",
        )
    })?;
    let local = (st.local_kubelet.as_ref())
        .filter(|(name, _)| name == node_name)
        .map(|(_, dial)| dial.clone());
    Ok(Backend {
        host,
        port,
        tls: Some(tls),
        local,
        what: format!("node {node_name:?}"),
    })
}

/// A TLS client that takes any certificate (`https:` pod proxies, as upstream's
/// `InsecureSkipVerify` transport for them).
pub fn insecure_client() -> Arc<rustls::ClientConfig> {
    kite_pki::tls::insecure_client_config()
}

/// Headers that belong to one connection, not the request (RFC 9110 7.6.1), and the
/// client's credentials, which are not the backend's business.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "authorization",
    "host",
];

/// Forwards `req` to `path` on the backend and its answer back. An upgrade (WebSocket,
/// SPDY) is forwarded with its headers; once the backend switches protocols, bytes are
/// copied both ways until either side closes.
pub async fn relay(backend: Backend, path: &str, mut req: Request) -> ApiResult<Response> {
    let upgrade = req.headers().get(http::header::UPGRADE).cloned();
    let mut out = http::Request::builder()
        .method(req.method().clone())
        .uri(path)
        .header(
            http::header::HOST,
            format!("{}:{}", backend.host, backend.port),
        );
    for (k, v) in req.headers() {
        if !NOT_FORWARDED.contains(&k.as_str()) {
            out = out.header(k, v);
        }
    }
    if let Some(u) = &upgrade {
        out = out
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::UPGRADE, u);
    }
    // In-process, the backend takes the client's own connection with the request (no
    // relay); otherwise both connections are upgraded and bytes copied between them.
    let local = backend.local.as_ref().is_some_and(LocalDial::is_serving);
    let (client_side, handed_over) = match (&upgrade, local) {
        (None, _) => (None, None),
        (Some(_), false) => (Some(hyper::upgrade::on(&mut req)), None),
        (Some(_), true) => (
            None,
            req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>(),
        ),
    };
    let body = if upgrade.is_some() {
        Body::empty()
    } else {
        req.into_body()
    };
    let mut out = out
        .body(body)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(on) = handed_over {
        out.extensions_mut().insert(on);
    }
    let unreachable = |e: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("error trying to reach {}: {e}", backend.what),
        )
    };
    let mut resp = send(&backend, out).await.map_err(unreachable)?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if local {
            let (parts, _) = resp.into_parts();
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        let Some(client_side) = client_side else {
            return Err(ApiError::internal(format!(
                "{} switched protocols unasked",
                backend.what
            )));
        };
        let backend_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(a), Ok(b)) = tokio::join!(client_side, backend_side) else {
                return;
            };
            let mut a = hyper_util::rt::TokioIo::new(a);
            let mut b = hyper_util::rt::TokioIo::new(b);
            // Large buffers: a port-forward moves bulk data through here (8 KiB, the
            // default, costs a TLS record and a syscall per 8 KiB).
            let _ = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 256 << 10, 256 << 10)
                .await;
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = resp.into_parts();
    for h in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
        parts.headers.remove(h);
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

type Sender = hyper::client::conn::http1::SendRequest<Body>;

/// A new HTTP/1.1 connection (with TLS when the backend has it).
async fn connect(b: &Backend) -> Result<Sender, String> {
    let (host, port) = (&b.host, b.port);
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("dial tcp {host}:{port}: i/o timeout"))?
    .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match &b.tls {
        None => handshake(tcp).await,
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| format!("{host}: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
            handshake(stream).await
        }
    }
}

/// An HTTP/1.1 client connection over `io` (upgrades allowed).
async fn handshake<IO>(io: IO) -> Result<Sender, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(send)
}

/// `req` to `b`: in-process when it serves that way, else over a new connection; the
/// response body streams as it comes.
async fn send(b: &Backend, req: http::Request<Body>) -> Result<http::Response<Body>, String> {
    if let Some(local) = b.local.as_ref().filter(|l| l.is_serving()) {
        return local
            .call(req)
            .await
            .ok_or_else(|| "the in-process kubelet does not serve".to_string());
    }
    let mut sender = connect(b).await?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.map(Body::new))
}

/// One GET to `b`.
async fn get(b: &Backend, path: &str) -> Result<http::Response<Body>, String> {
    let req = http::Request::get(path)
        .header(http::header::HOST, format!("{}:{}", b.host, b.port))
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    send(b, req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_are_picked_as_upstream() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pick_container(&one, None).unwrap(), "a");
        assert_eq!(
            pick_container(&one, Some("x"))
                .unwrap_err()
                .message
                .as_ref(),
            "container x is not valid for pod p"
        );
        let two = json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "i"}], "containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(
            pick_container(&two, None).unwrap_err().message.as_ref(),
            "a container name must be specified for pod p, choose one of: [i a b]"
        );
        assert_eq!(pick_container(&two, Some("i")).unwrap(), "i");
    }

    #[test]
    fn log_options_are_validated_as_upstream() {
        let q = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert!(validate_log_options("p", &q(&[("tailLines", "3")])).is_ok());
        let e =
            validate_log_options("p", &q(&[("tailLines", "-1"), ("limitBytes", "0")])).unwrap_err();
        assert_eq!(e.code, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            e.message.contains("tailLines: Invalid value: -1"),
            "{}",
            e.message
        );
        let e = validate_log_options(
            "p",
            &q(&[("sinceSeconds", "5"), ("sinceTime", "2026-01-01T00:00:00Z")]),
        )
        .unwrap_err();
        assert!(e
            .message
            .contains("at most one of `sinceTime` or `sinceSeconds`"));
    }
}
