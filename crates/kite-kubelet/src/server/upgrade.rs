//! Which streaming protocol a request asks to switch to: a WebSocket (a channel protocol,
//! or SPDY tunnelled through it for port forwarding) or SPDY/3.1 itself, with upstream's
//! negotiation (`httpstream.Handshake`: the first of the client's protocols the server
//! speaks) and answers when nothing fits.

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kite_stream::channel::Protocol;

/// The protocol prefix of SPDY tunnelled through WebSocket messages.
pub const TUNNEL_PREFIX: &str = "SPDY/3.1+";

pub(super) enum Upgrade {
    /// A channel protocol.
    WebSocket {
        ws: WebSocketUpgrade,
        proto: Protocol,
    },
    /// SPDY in WebSocket messages (`SPDY/3.1+portforward.k8s.io`).
    Tunnel {
        ws: WebSocketUpgrade,
        protocol: String,
    },
    /// SPDY/3.1 on the connection.
    Spdy {
        protocol: String,
        on: hyper::upgrade::OnUpgrade,
    },
}

/// The query as pairs, repeated names kept (`command=sh&command=-c`).
pub(super) fn query_pairs(req: &Request) -> Vec<(String, String)> {
    serde_urlencoded::from_str(req.uri().query().unwrap_or_default()).unwrap_or_default()
}

fn header_list(req: &Request, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Classifies an upgrade request; SPDY protocols from `spdy` (best first). A request that
/// is no upgrade, or whose protocols cannot be met, gets its answer as the error.
pub(super) async fn classify(
    req: Request,
    spdy: &'static [&'static str],
) -> Result<Upgrade, Response> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if upgrade.eq_ignore_ascii_case("websocket") {
        let requested = header_list(&req, "sec-websocket-protocol");
        let (mut parts, _) = req.into_parts();
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(IntoResponse::into_response)?;
        if let Some(t) = requested.iter().find(|p| {
            p.starts_with(TUNNEL_PREFIX) && spdy.contains(&p.trim_start_matches(TUNNEL_PREFIX))
        }) {
            return Ok(Upgrade::Tunnel {
                ws,
                protocol: t.clone(),
            });
        }
        return match Protocol::negotiate(&requested) {
            Some(proto) => Ok(Upgrade::WebSocket { ws, proto }),
            None => Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "unable to upgrade: requested protocol(s) are not supported: {requested:?}"
                ),
            )
                .into_response()),
        };
    }
    if !upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        return Err((StatusCode::BAD_REQUEST, "Upgrade request required").into_response());
    }
    let client = header_list(&req, "x-stream-protocol-version");
    let protocol = if client.is_empty() {
        String::new()
    } else {
        match client.iter().find(|c| spdy.contains(&c.as_str())) {
            Some(p) => p.clone(),
            None => {
                let mut resp = (
                    StatusCode::FORBIDDEN,
                    format!(
                        "unable to upgrade: unable to negotiate protocol: client supports [{}], server supports [{}]",
                        client.join(" "),
                        spdy.join(" ")
                    ),
                )
                    .into_response();
                for p in spdy {
                    resp.headers_mut().append(
                        "x-accepted-stream-protocol-versions",
                        HeaderValue::from_static(p),
                    );
                }
                return Err(resp);
            }
        }
    };
    let mut req = req;
    let on = hyper::upgrade::on(&mut req);
    Ok(Upgrade::Spdy { protocol, on })
}

/// The 101 that starts a SPDY connection.
pub(super) fn switching_to_spdy(protocol: &str) -> Response {
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = HeaderValue::from_str(protocol) {
        if !protocol.is_empty() {
            h.insert("x-stream-protocol-version", v);
        }
    }
    resp
}
