//! ServiceAccount tokens, as upstream's bound tokens: the TokenRequest API
//! (`serviceaccounts/NAME/token`) signs a JWT (ES256, the key kite-pki keeps) naming the
//! account, the object it is bound to (a pod, with its node; a secret; a node), its
//! audiences and expiry; bearer tokens are authenticated back to
//! `system:serviceaccount:<ns>:<name>` while the account and the bound object still exist
//! with the same UIDs; `/openid/v1/jwks` publishes the public key so anyone can verify one.

use crate::auth::UserInfo;
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use base64::Engine;
use http::StatusCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The issuer and default audience, as K3s sets them.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// What the kubelet asks for the token of `kube-api-access-*` volumes: upstream then
/// issues a token valid for a year that warns after this (`--service-account-extend-token-
/// expiration`, on by default).
const WARN_ONLY_SECONDS: i64 = 3607;
const EXTENDED_SECONDS: i64 = 365 * 24 * 3600;

/// The signing key and what it publishes.
pub struct Tokens {
    enc: EncodingKey,
    dec: DecodingKey,
    kid: String,
    jwk: Value,
    pub issuer: String,
    pub audiences: Vec<String>,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Tokens {
    /// From an ECDSA P-256 key in PKCS#8 DER (`Pki::service_account_key`).
    pub fn new(pkcs8: &[u8]) -> Result<Tokens, String> {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| format!("the service-account key: {e}"))?;
        let public = pair.public_key().as_ref();
        if public.len() != 65 || public[0] != 4 {
            return Err("the service-account key is not an uncompressed P-256 key".into());
        }
        let (x, y) = (b64(&public[1..33]), b64(&public[33..]));
        let kid = b64(ring::digest::digest(&ring::digest::SHA256, public).as_ref());
        let dec = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
        Ok(Tokens {
            enc: EncodingKey::from_ec_der(pkcs8),
            dec,
            jwk: json!({"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": x, "y": y}),
            kid,
            issuer: ISSUER.into(),
            audiences: vec![ISSUER.into()],
        })
    }

    /// `/openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    /// `/.well-known/openid-configuration`.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/openid/v1/jwks", self.issuer),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    fn sign(&self, claims: &Value) -> Result<String, String> {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.enc).map_err(|e| e.to_string())
    }

    /// The claims of a token this key signed, for these audiences, not expired.
    fn verify(&self, token: &str, audiences: &[String]) -> Result<Value, String> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(audiences);
        v.validate_nbf = true;
        v.leeway = 60;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Value>(token, &self.dec, &v)
            .map(|d| d.claims)
            .map_err(|e| e.to_string())
    }
}

fn invalid(name: &str, field: &str, value: &Value, msg: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!("TokenRequest.authentication.k8s.io \"{name}\" is invalid: {field}: Invalid value: {value}: {msg}"),
    )
}

/// `POST serviceaccounts/NAME/token`: upstream's TokenREST.
pub async fn request(st: &AppState, ns: &str, sa_name: &str, req: Value) -> ApiResult<Value> {
    let tokens = st.tokens.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "this API server issues no tokens",
        )
    })?;
    if !req.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a TokenRequest",
        ));
    }
    let reg = st.objects.registry;
    let sas = reg
        .lookup("", "v1", "serviceaccounts")
        .expect("serviceaccounts are served");
    let (sa, _) = st.objects.get(sas, Some(ns), sa_name).await?;
    let spec = &req["spec"];
    let exp_secs = spec["expirationSeconds"].as_i64().unwrap_or(3600);
    if exp_secs < 600 {
        return Err(invalid(
            sa_name,
            "spec.expirationSeconds",
            &json!(exp_secs),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if exp_secs > 1 << 32 {
        return Err(invalid(
            sa_name,
            "spec.expirationSeconds",
            &json!(exp_secs),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let audiences: Vec<String> = match spec["audiences"].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => tokens.audiences.clone(),
    };
    let now = jiff::Timestamp::now().as_second();
    let mut k8s = json!({
        "namespace": ns,
        "serviceaccount": {"name": sa_name, "uid": sa["metadata"]["uid"]},
    });
    let mut exp = now + exp_secs;
    let bound = &spec["boundObjectRef"];
    if bound.is_object() {
        let kind = bound["kind"].as_str().unwrap_or_default();
        let name = bound["name"].as_str().unwrap_or_default();
        let (plural, key, namespaced) = match kind {
            "Pod" => ("pods", "pod", true),
            "Secret" => ("secrets", "secret", true),
            "Node" => ("nodes", "node", false),
            other => {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount \"{sa_name}\" to object of type {other}"
                )))
            }
        };
        let ri = reg.lookup("", "v1", plural).expect("served");
        let (obj, _) = st.objects.get(ri, namespaced.then_some(ns), name).await?;
        let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
        if let Some(want) = bound["uid"].as_str().filter(|u| !u.is_empty()) {
            if want != uid {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"),
                ));
            }
        }
        k8s[key] = json!({"name": name, "uid": uid});
        if kind == "Pod" {
            if let Some(node) = obj["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                let nodes = reg.lookup("", "v1", "nodes").expect("served");
                if let Ok((n, _)) = st.objects.get(nodes, None, node).await {
                    k8s["node"] = json!({"name": node, "uid": n["metadata"]["uid"]});
                }
            }
            if exp_secs == WARN_ONLY_SECONDS {
                k8s["warnafter"] = json!(now + exp_secs);
                exp = now + EXTENDED_SECONDS;
            }
        }
    }
    let claims = json!({
        "aud": audiences,
        "exp": exp,
        "iat": now,
        "iss": tokens.issuer,
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": k8s,
        "nbf": now,
        "sub": format!("system:serviceaccount:{ns}:{sa_name}"),
    });
    let token = tokens.sign(&claims).map_err(ApiError::internal)?;
    let expires = jiff::Timestamp::from_second(now + exp_secs)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let mut out_spec = spec.clone();
    if !out_spec.is_object() {
        out_spec = json!({});
    }
    out_spec["audiences"] = json!(audiences);
    out_spec["expirationSeconds"] = json!(exp_secs);
    if !bound.is_object() {
        out_spec["boundObjectRef"] = Value::Null;
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": null},
        "spec": out_spec,
        "status": {"token": token, "expirationTimestamp": expires},
    }))
}

/// Who a bearer token names, when it is one of ours for one of `audiences` (the API
/// server's when empty) and what it is bound to still exists; why not otherwise.
pub async fn authenticate(
    st: &AppState,
    token: &str,
    audiences: &[String],
) -> Result<UserInfo, String> {
    let tokens = st.tokens.as_ref().ok_or("no token authenticator")?;
    let auds = if audiences.is_empty() {
        tokens.audiences.clone()
    } else {
        audiences.to_vec()
    };
    let c = tokens.verify(token, &auds)?;
    let k = &c["kubernetes.io"];
    let ns = k["namespace"].as_str().unwrap_or_default();
    let sa = k["serviceaccount"]["name"].as_str().unwrap_or_default();
    let sa_uid = k["serviceaccount"]["uid"].as_str().unwrap_or_default();
    let reg = st.objects.registry;
    let lookup = |plural: &str| reg.lookup("", "v1", plural).expect("served");
    let (obj, _) = st
        .objects
        .get(lookup("serviceaccounts"), Some(ns), sa)
        .await
        .map_err(|_| format!("service account {ns}/{sa} has been deleted"))?;
    if obj["metadata"]["uid"] != sa_uid {
        return Err(format!(
            "service account UID ({}) does not match claim ({sa_uid})",
            obj["metadata"]["uid"].as_str().unwrap_or_default()
        ));
    }
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(jti) = c["jti"].as_str() {
        extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("JTI={jti}")],
        );
    }
    for (key, plural, namespaced) in [
        ("pod", "pods", true),
        ("secret", "secrets", true),
        ("node", "nodes", false),
    ] {
        let Some(name) = k[key]["name"].as_str() else {
            continue;
        };
        let (obj, _) = st
            .objects
            .get(lookup(plural), namespaced.then_some(ns), name)
            .await
            .map_err(|_| format!("{key} {name} has been deleted"))?;
        if obj["metadata"]["uid"] != k[key]["uid"] {
            return Err(format!("{key} {name} has been deleted and recreated"));
        }
        if key != "secret" {
            for (f, v) in [
                ("name", name),
                ("uid", k[key]["uid"].as_str().unwrap_or("")),
            ] {
                extra.insert(
                    format!("authentication.kubernetes.io/{key}-{f}"),
                    vec![v.to_string()],
                );
            }
        }
    }
    Ok(UserInfo {
        username: format!("system:serviceaccount:{ns}:{sa}"),
        uid: sa_uid.to_string(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_against_their_own_key_only() {
        let key = rcgen_key();
        let t = Tokens::new(&key).unwrap();
        let now = jiff::Timestamp::now().as_second();
        let claims = json!({"aud": [ISSUER], "exp": now + 600, "iat": now, "nbf": now, "iss": ISSUER, "sub": "system:serviceaccount:a:b"});
        let tok = t.sign(&claims).unwrap();
        assert_eq!(t.verify(&tok, &t.audiences).unwrap()["sub"], claims["sub"]);
        assert!(t.verify(&tok, &["other".to_string()]).is_err(), "audience");
        let other = Tokens::new(&rcgen_key()).unwrap();
        assert!(other.verify(&tok, &other.audiences).is_err(), "signature");
        let old = json!({"aud": [ISSUER], "exp": now - 3600, "iat": now - 7200, "iss": ISSUER, "sub": "x"});
        assert!(
            t.verify(&t.sign(&old).unwrap(), &t.audiences).is_err(),
            "expiry"
        );
        assert_eq!(t.jwks()["keys"][0]["kid"], json!(t.kid));
    }

    fn rcgen_key() -> Vec<u8> {
        // A fresh P-256 PKCS#8 key, as kite-pki makes them.
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap()
        .as_ref()
        .to_vec()
    }
}
