//! Who is asking (authentication from the TLS client certificate) and whether they may
//! (authorization through one [`Authorizer`] interface; the RBAC authorizer plugs in here).

use serde::Serialize;

/// An authenticated user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The identity of requests kite makes to itself while bootstrapping.
    pub fn system() -> Self {
        UserInfo {
            username: "system:apiserver".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            ..Default::default()
        }
    }
}

/// What a request wants to do, in upstream's authorizer attributes.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// For non-resource requests (`/healthz`, `/metrics`).
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

pub trait Authorizer: Send + Sync + 'static {
    fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Decision;
}

/// Members of `system:masters` may do everything; everyone else nothing (until RBAC).
pub struct MastersOnly;

impl Authorizer for MastersOnly {
    fn authorize(&self, user: &UserInfo, _attrs: &Attributes) -> Decision {
        if user.groups.iter().any(|g| g == "system:masters") {
            Decision::Allow
        } else {
            Decision::Deny(String::new())
        }
    }
}

/// Until the RBAC authorizer lands: `system:masters` and kite's own components (the
/// controller manager, the scheduler and nodes, which upstream's bootstrap roles give
/// broad access) may do everything; everyone else nothing.
pub struct MastersAndComponents;

impl Authorizer for MastersAndComponents {
    fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Decision {
        let component = matches!(
            user.username.as_str(),
            "system:kube-controller-manager"
                | "system:kube-scheduler"
                | "system:kube-proxy"
                | "system:kube-dns"
        ) || user.groups.iter().any(|g| g == "system:nodes");
        if component || basic_user(user, attrs) {
            Decision::Allow
        } else {
            MastersOnly.authorize(user, attrs)
        }
    }
}

/// What upstream's bootstrap roles let every authenticated user do (`system:basic-user`,
/// `system:discovery`, `system:public-info-viewer`, and `system:service-account-issuer-
/// discovery` for service accounts): ask who they are and what they may do, and read
/// discovery, version, health and the token issuer's keys.
fn basic_user(user: &UserInfo, a: &Attributes) -> bool {
    if !user.groups.iter().any(|g| g == "system:authenticated") {
        return false;
    }
    if let Some(p) = &a.path {
        let p = p.trim_end_matches('/');
        return a.verb == "get"
            && (matches!(
                p,
                "/api"
                    | "/apis"
                    | "/version"
                    | "/healthz"
                    | "/livez"
                    | "/readyz"
                    | "/openapi/v2"
                    | "/openapi/v3"
                    | "/.well-known/openid-configuration"
                    | "/openid/v1/jwks"
            ) || p.starts_with("/api/")
                || p.starts_with("/apis/")
                || p.starts_with("/openapi/v3/"));
    }
    a.verb == "create"
        && matches!(
            (a.api_group.as_str(), a.resource.as_str()),
            (
                "authorization.k8s.io",
                "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
            ) | ("authentication.k8s.io", "selfsubjectreviews")
        )
}

/// Upstream's Forbidden message for a denied resource request.
pub fn forbidden_message(user: &UserInfo, a: &Attributes) -> String {
    if let Some(p) = &a.path {
        return format!(
            "forbidden: User \"{}\" cannot {} path \"{}\"",
            user.username,
            a.verb.to_lowercase(),
            p
        );
    }
    let res = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let what = if a.api_group.is_empty() {
        res.clone()
    } else {
        format!("{}.{}", a.resource, a.api_group)
    };
    let named = if a.name.is_empty() {
        what
    } else {
        format!("{what} \"{}\"", a.name)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    format!(
        "{named} is forbidden: User \"{}\" cannot {} resource \"{res}\" in API group \"{}\" {scope}",
        user.username, a.verb, a.api_group
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_only() {
        let admin = UserInfo {
            username: "system:admin".into(),
            groups: vec!["system:masters".into()],
            ..Default::default()
        };
        let node = UserInfo {
            username: "system:node:a".into(),
            groups: vec!["system:nodes".into()],
            ..Default::default()
        };
        let a = Attributes {
            verb: "list".into(),
            resource: "pods".into(),
            namespace: "default".into(),
            ..Default::default()
        };
        assert_eq!(MastersOnly.authorize(&admin, &a), Decision::Allow);
        assert!(matches!(
            MastersOnly.authorize(&node, &a),
            Decision::Deny(_)
        ));
        assert_eq!(
            forbidden_message(&node, &a),
            "pods is forbidden: User \"system:node:a\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
    }
}
