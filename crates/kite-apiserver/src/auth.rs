//! Who is asking (authentication from the TLS client certificate) and whether they may
//! (authorization through one [`Authorizer`] interface; the RBAC authorizer plugs in here).

use serde::Serialize;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub username: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// The identity of requests kite makes to itself while bootstrapping.
    pub fn system() -> Self {
        UserInfo {
            username: "system:apiserver".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
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
            "system:kube-controller-manager" | "system:kube-scheduler"
        ) || user.groups.iter().any(|g| g == "system:nodes");
        if component {
            Decision::Allow
        } else {
            MastersOnly.authorize(user, attrs)
        }
    }
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
        };
        let node = UserInfo {
            username: "system:node:a".into(),
            groups: vec!["system:nodes".into()],
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
