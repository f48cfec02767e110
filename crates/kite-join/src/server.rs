//! The server's join endpoint (routes merged into the API server's listener): the CA
//! bundle for anyone, and node certificates for a valid token and node password.
//!
//! Accepted secrets: the server token's and the agent token's (`--token`,
//! `--agent-token`), and unexpired bootstrap tokens (`kite token create`: kube-system
//! Secrets `bootstrap-token-<id>`, upstream's format). A node's password is kept hashed in
//! the kube-system Secret `<node>.node-password.kite` when it first joins; another
//! password for that name is refused, so one machine cannot take over another's node.

use crate::proto::{ClusterInfo, JoinRequest, JoinResponse, Status, CACERTS_PATH, JOIN_PATH};
use crate::token::{self, Token};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use std::sync::Arc;

/// How long node certificates are valid by default; agents renew them when a third of
/// that is left.
pub const CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 86400);

pub struct JoinServer {
    pub pki: Arc<kite_pki::Pki>,
    /// Plain secrets that admit a node.
    pub secrets: Vec<String>,
    /// A client with the rights to read and write kube-system Secrets (set once the API
    /// server it calls is up; joins wait for it).
    pub client: std::sync::OnceLock<kube::Client>,
    pub cluster: ClusterInfo,
    /// How long the certificates it issues are valid.
    pub cert_validity: std::time::Duration,
}

pub fn router(j: Arc<JoinServer>) -> axum::Router {
    axum::Router::new()
        .route(CACERTS_PATH, axum::routing::get(cacerts))
        .route(JOIN_PATH, axum::routing::post(join))
        .with_state(j)
}

async fn cacerts(State(j): State<Arc<JoinServer>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain")],
        j.pki.server_ca.cert_pem.clone(),
    )
        .into_response()
}

fn fail(code: StatusCode, reason: &str, msg: impl Into<String>) -> Response {
    let s = Status::failure(code.as_u16(), reason, msg);
    (code, Json(s)).into_response()
}

/// The password of `Authorization: Basic <user:password>`.
fn basic_password(h: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b = v.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    Some(text.split_once(':')?.1.to_string())
}

fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl JoinServer {
    fn client(&self) -> Result<kube::Client, kube::Error> {
        self.client.get().cloned().ok_or_else(|| {
            kube::Error::Api(
                kube::core::Status::failure("the API server is starting", "ServiceUnavailable")
                    .with_code(503)
                    .boxed(),
            )
        })
    }

    /// Whether `secret` admits a node (never says which part was wrong).
    async fn admits(&self, secret: &str) -> Result<bool, kube::Error> {
        if self.secrets.iter().any(|s| token::same_secret(s, secret)) {
            return Ok(true);
        }
        let Some((id, s)) = Token::bootstrap_parts(secret) else {
            return Ok(false);
        };
        let api: Api<Secret> = Api::namespaced(self.client()?, "kube-system");
        let Some(sec) = api.get_opt(&format!("bootstrap-token-{id}")).await? else {
            return Ok(false);
        };
        Ok(bootstrap_admits(&sec, s, jiff::Timestamp::now()))
    }

    /// Checks the node password against the one kept for the name, keeping it if new.
    async fn check_password(&self, node: &str, password: &str) -> Result<bool, kube::Error> {
        let api: Api<Secret> = Api::namespaced(self.client()?, "kube-system");
        let name = format!("{node}.node-password.kite");
        if let Some(s) = api.get_opt(&name).await? {
            let stored = s
                .data
                .as_ref()
                .and_then(|d| d.get("hash"))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default();
            return Ok(token::check_password(&stored, password));
        }
        let s = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name),
                namespace: Some("kube-system".into()),
                labels: Some([("kite.io/node-password".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            type_: Some("kite.io/node-password".into()),
            data: Some(
                [(
                    "hash".to_string(),
                    ByteString(token::hash_password(password).into_bytes()),
                )]
                .into(),
            ),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &s).await {
            Ok(_) => Ok(true),
            // Another join of this name raced us: check against what it kept.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                Box::pin(self.check_password(node, password)).await
            }
            Err(e) => Err(e),
        }
    }
}

/// Whether a bootstrap token Secret admits `secret` at `now` (upstream's fields).
pub fn bootstrap_admits(sec: &Secret, secret: &str, now: jiff::Timestamp) -> bool {
    let get = |k: &str| {
        sec.data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    if sec.type_.as_deref() != Some("bootstrap.kubernetes.io/token")
        || get("usage-bootstrap-authentication").as_deref() != Some("true")
    {
        return false;
    }
    if let Some(exp) = get("expiration") {
        match exp.parse::<jiff::Timestamp>() {
            Ok(t) if t > now => {}
            _ => return false,
        }
    }
    get("token-secret").is_some_and(|s| token::same_secret(&s, secret))
}

async fn join(
    State(j): State<Arc<JoinServer>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(secret) = basic_password(&headers) else {
        return fail(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a join needs the cluster token (Authorization: Basic node:<secret>)",
        );
    };
    match j.admits(&secret).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!("a node offered a token that is not valid");
            return fail(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "the token is not valid for this cluster (see <data-dir>/server/node-token on a server)",
            );
        }
        Err(e) => {
            return fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("checking the token: {e}"),
            )
        }
    }
    let req: JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("invalid join request: {e}"),
            )
        }
    };
    if !valid_node_name(&req.node_name) {
        return fail(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "invalid node name {:?}: must be a lowercase RFC 1123 subdomain",
                req.node_name
            ),
        );
    }
    if req.node_password.len() < 16 {
        return fail(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the node password must be at least 16 characters",
        );
    }
    let mut sans = vec![
        req.node_name.clone(),
        "localhost".into(),
        "127.0.0.1".into(),
    ];
    for a in &req.addresses {
        if a.parse::<std::net::IpAddr>().is_err() {
            return fail(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("invalid node address {a:?}"),
            );
        }
        sans.push(a.clone());
    }
    sans.sort();
    sans.dedup();
    match j.check_password(&req.node_name, &req.node_password).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(node = %req.node_name, "refused a join: the node password does not match");
            return fail(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "node password rejected: another machine has joined as {:?} (give this one another --node-name or --with-node-id, or delete the Secret kube-system/{}.node-password.kite to let it take the name over)",
                    req.node_name, req.node_name
                ),
            );
        }
        Err(e) => {
            return fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("checking the node password: {e}"),
            )
        }
    }
    let user = format!("system:node:{}", req.node_name);
    let client = j.pki.sign_request(
        &req.client_request,
        kite_pki::NodeCert::Client {
            cn: &user,
            orgs: &["system:nodes"],
        },
        j.cert_validity.as_secs() as i64,
    );
    let serving = j.pki.sign_request(
        &req.serving_request,
        kite_pki::NodeCert::Serving {
            cn: &req.node_name,
            sans: &sans,
        },
        j.cert_validity.as_secs() as i64,
    );
    let (client_cert, serving_cert) = match (client, serving) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("invalid certificate request: {e}"),
            )
        }
    };
    tracing::info!(node = %req.node_name, "node joined: certificates issued");
    Json(JoinResponse {
        client_cert,
        serving_cert,
        server_ca: j.pki.server_ca.cert_pem.clone(),
        client_ca: j.pki.client_ca.cert_pem.clone(),
        cluster: j.cluster.clone(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(data: &[(&str, &str)], type_: &str) -> Secret {
        Secret {
            type_: Some(type_.into()),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn bootstrap_tokens_follow_upstreams_fields() {
        let now: jiff::Timestamp = "2026-12-06T12:00:00Z".parse().unwrap();
        let t = "bootstrap.kubernetes.io/token";
        let good = secret(
            &[
                ("token-secret", "0123456789abcdef"),
                ("usage-bootstrap-authentication", "true"),
                ("expiration", "2026-12-07T12:00:00Z"),
            ],
            t,
        );
        assert!(bootstrap_admits(&good, "0123456789abcdef", now));
        assert!(!bootstrap_admits(&good, "0123456789abcdee", now));
        let later: jiff::Timestamp = "2026-12-08T00:00:00Z".parse().unwrap();
        assert!(!bootstrap_admits(&good, "0123456789abcdef", later));
        let no_usage = secret(&[("token-secret", "0123456789abcdef")], t);
        assert!(!bootstrap_admits(&no_usage, "0123456789abcdef", now));
        let opaque = secret(
            &[
                ("token-secret", "0123456789abcdef"),
                ("usage-bootstrap-authentication", "true"),
            ],
            "Opaque",
        );
        assert!(!bootstrap_admits(&opaque, "0123456789abcdef", now));
    }

    #[test]
    fn node_names_are_dns_subdomains() {
        assert!(valid_node_name("agent-1.example"));
        assert!(!valid_node_name("Agent"));
        assert!(!valid_node_name("-a"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name("a..b"));
    }
}
