//! The resource registry: one table row per served resource, built from the k8s-openapi
//! types' own constants (group, version, kind, plural, scope), plus what those types do not
//! carry (short names, categories, verbs, subresources). Everything the API server does is
//! driven by looking a request up here; there is no handler per kind.

use crate::go_encoding;
use k8s_openapi::api as a;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as apireg;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// What a resource can be asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbs {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    Crud,
    /// Only create (reviews, bindings): computed answers, nothing is stored.
    CreateOnly,
    /// get and list (component statuses).
    ReadOnly,
}

impl Verbs {
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Verbs::Crud => &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
            Verbs::CreateOnly => &["create"],
            Verbs::ReadOnly => &["get", "list"],
        }
    }
}

/// Marks k8s-openapi's scope types as namespaced or not.
pub trait ScopeKind {
    const NAMESPACED: bool;
}
impl ScopeKind for k8s_openapi::NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl ScopeKind for k8s_openapi::ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// One served resource.
#[derive(Debug)]
pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub list_kind: String,
    pub plural: &'static str,
    pub singular: String,
    pub namespaced: bool,
    pub verbs: Verbs,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub status: bool,
    pub scale: bool,
    /// The OpenAPI definition name of the type, e.g. `io.k8s.api.core.v1.Pod`.
    pub definition: String,
    /// Decodes JSON into the typed object and back: checks types and required fields, and
    /// drops fields the type does not have, noting their paths in the `Vec`.
    pub roundtrip: fn(&Value, &mut Vec<String>) -> Result<Value, DecodeError>,
    /// As `roundtrip`, but encodes the typed object straight to JSON text (what is stored),
    /// skipping the intermediate value.
    pub roundtrip_json: fn(&Value, &mut Vec<String>) -> Result<Vec<u8>, DecodeError>,
    /// The JSON schema of the type (for OpenAPI).
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The group/version URL prefix, e.g. `/api/v1` or `/apis/apps/v1`.
    pub fn prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// The key prefix in the store. Versions of one resource would share it; kite serves
    /// one version per resource until it has version conversion.
    pub fn storage_prefix(&self) -> String {
        let g = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("/registry/{}/{}/", g, self.plural)
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{}/{}", self.storage_prefix(), ns, name),
            _ => format!("{}{}", self.storage_prefix(), name),
        }
    }

    pub fn is(&self, group: &str, kind: &str) -> bool {
        self.group == group && self.kind == kind
    }
}

/// Why JSON did not decode as the kind's type: the field path and serde's message.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub path: String,
    pub message: String,
}

impl DecodeError {
    /// The name of a required field that is missing, if that is the error.
    pub fn missing_field(&self) -> Option<&str> {
        self.message
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
    }
}

/// Decodes `v` as `T`, noting unknown fields. The plain decode is the common case; only a
/// failure pays for tracking the field path, by decoding again, to name the field.
fn decode_typed<T: serde::de::DeserializeOwned>(
    v: &Value,
    unknown: &mut Vec<String>,
) -> Result<T, DecodeError> {
    crate::decode::decode_noting_unknown::<T>(v, unknown).map_err(|plain| {
        match crate::decode::decode_with_path::<T>(v) {
            Err(e) => DecodeError {
                path: e.path().to_string(),
                message: e.inner().to_string(),
            },
            // Decoding is deterministic, so this does not happen; keep the first error.
            Ok(_) => DecodeError {
                path: String::new(),
                message: plain.to_string(),
            },
        }
    })
}

fn encode_error(e: serde_json::Error) -> DecodeError {
    DecodeError {
        path: String::new(),
        message: e.to_string(),
    }
}

/// The typed object as JSON, with the keys Go's encoding always writes ([`go_encoding`]).
fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema>(
    v: &Value,
    unknown: &mut Vec<String>,
) -> Result<Value, DecodeError> {
    let mut out = serde_json::to_value(decode_typed::<T>(v, unknown)?).map_err(encode_error)?;
    go_encoding::fill(&T::schema_name(), &mut out);
    Ok(out)
}

fn roundtrip_json<T: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema>(
    v: &Value,
    unknown: &mut Vec<String>,
) -> Result<Vec<u8>, DecodeError> {
    serde_json::to_vec(&roundtrip::<T>(v, unknown)?).map_err(encode_error)
}

struct Extra {
    short: &'static [&'static str],
    cats: &'static [&'static str],
    verbs: Verbs,
    status: bool,
    scale: bool,
}

const fn crud() -> Extra {
    Extra {
        short: &[],
        cats: &[],
        verbs: Verbs::Crud,
        status: false,
        scale: false,
    }
}

fn info<T>(x: Extra) -> ResourceInfo
where
    T: k8s_openapi::Resource
        + k8s_openapi::ListableResource
        + serde::de::DeserializeOwned
        + serde::Serialize
        + schemars::JsonSchema,
    T::Scope: ScopeKind,
{
    info_unlisted::<T>(x, T::LIST_KIND.to_string())
}

fn info_unlisted<T>(x: Extra, list_kind: String) -> ResourceInfo
where
    T: k8s_openapi::Resource
        + serde::de::DeserializeOwned
        + serde::Serialize
        + schemars::JsonSchema,
    T::Scope: ScopeKind,
{
    ResourceInfo {
        group: T::GROUP,
        version: T::VERSION,
        kind: T::KIND,
        list_kind,
        plural: T::URL_PATH_SEGMENT,
        singular: T::KIND.to_lowercase(),
        namespaced: <T::Scope as ScopeKind>::NAMESPACED,
        verbs: x.verbs,
        short_names: x.short,
        categories: x.cats,
        status: x.status,
        scale: x.scale,
        definition: T::schema_name().into_owned(),
        roundtrip: roundtrip::<T>,
        roundtrip_json: roundtrip_json::<T>,
        schema: |g| g.subschema_for::<T>(),
    }
}

fn create_only<T>() -> ResourceInfo
where
    T: k8s_openapi::Resource
        + serde::de::DeserializeOwned
        + serde::Serialize
        + schemars::JsonSchema,
    T::Scope: ScopeKind,
{
    info_unlisted::<T>(
        Extra {
            verbs: Verbs::CreateOnly,
            ..crud()
        },
        String::new(),
    )
}

const ALL: &[&str] = &["all"];

/// Every resource kite serves, in discovery order.
fn build() -> Vec<ResourceInfo> {
    let with = |short: &'static [&'static str], cats: &'static [&'static str]| Extra {
        short,
        cats,
        ..crud()
    };
    let st = |short: &'static [&'static str], cats: &'static [&'static str]| Extra {
        short,
        cats,
        status: true,
        ..crud()
    };
    let scaled = |short: &'static [&'static str], cats: &'static [&'static str]| Extra {
        short,
        cats,
        status: true,
        scale: true,
        ..crud()
    };
    use a::core::v1 as core;
    vec![
        // core/v1
        create_only::<core::Binding>(),
        info::<core::ComponentStatus>(Extra {
            short: &["cs"],
            verbs: Verbs::ReadOnly,
            ..crud()
        }),
        info::<core::ConfigMap>(with(&["cm"], &[])),
        info::<core::Endpoints>(with(&["ep"], &[])),
        info::<core::Event>(with(&["ev"], &[])),
        info::<core::LimitRange>(with(&["limits"], &[])),
        info::<core::Namespace>(st(&["ns"], &[])),
        info::<core::Node>(st(&["no"], &[])),
        info::<core::PersistentVolumeClaim>(st(&["pvc"], &[])),
        info::<core::PersistentVolume>(st(&["pv"], &[])),
        info::<core::Pod>(st(&["po"], ALL)),
        info::<core::PodTemplate>(crud()),
        info::<core::ReplicationController>(scaled(&["rc"], ALL)),
        info::<core::ResourceQuota>(st(&["quota"], &[])),
        info::<core::Secret>(crud()),
        info::<core::ServiceAccount>(with(&["sa"], &[])),
        info::<core::Service>(st(&["svc"], ALL)),
        // admissionregistration.k8s.io/v1
        info::<a::admissionregistration::v1::MutatingAdmissionPolicy>(crud()),
        info::<a::admissionregistration::v1::MutatingAdmissionPolicyBinding>(crud()),
        info::<a::admissionregistration::v1::MutatingWebhookConfiguration>(crud()),
        info::<a::admissionregistration::v1::ValidatingAdmissionPolicy>(st(&[], &[])),
        info::<a::admissionregistration::v1::ValidatingAdmissionPolicyBinding>(crud()),
        info::<a::admissionregistration::v1::ValidatingWebhookConfiguration>(crud()),
        // apiextensions.k8s.io/v1
        info::<apiext::CustomResourceDefinition>(st(&["crd", "crds"], &[])),
        // apiregistration.k8s.io/v1
        info::<apireg::APIService>(st(&[], &[])),
        // apps/v1
        info::<a::apps::v1::ControllerRevision>(crud()),
        info::<a::apps::v1::DaemonSet>(st(&["ds"], ALL)),
        info::<a::apps::v1::Deployment>(scaled(&["deploy"], ALL)),
        info::<a::apps::v1::ReplicaSet>(scaled(&["rs"], ALL)),
        info::<a::apps::v1::StatefulSet>(scaled(&["sts"], ALL)),
        // authentication.k8s.io/v1
        create_only::<a::authentication::v1::SelfSubjectReview>(),
        create_only::<a::authentication::v1::TokenReview>(),
        // authorization.k8s.io/v1
        create_only::<a::authorization::v1::LocalSubjectAccessReview>(),
        create_only::<a::authorization::v1::SelfSubjectAccessReview>(),
        create_only::<a::authorization::v1::SelfSubjectRulesReview>(),
        create_only::<a::authorization::v1::SubjectAccessReview>(),
        // autoscaling
        info::<a::autoscaling::v2::HorizontalPodAutoscaler>(st(&["hpa"], ALL)),
        // batch/v1
        info::<a::batch::v1::CronJob>(st(&["cj"], ALL)),
        info::<a::batch::v1::Job>(st(&[], ALL)),
        // certificates.k8s.io/v1
        info::<a::certificates::v1::CertificateSigningRequest>(st(&["csr"], &[])),
        // coordination.k8s.io/v1
        info::<a::coordination::v1::Lease>(crud()),
        // discovery.k8s.io/v1
        info::<a::discovery::v1::EndpointSlice>(crud()),
        // events.k8s.io/v1
        info::<a::events::v1::Event>(with(&["ev"], &[])),
        // flowcontrol.apiserver.k8s.io/v1
        info::<a::flowcontrol::v1::FlowSchema>(st(&[], &[])),
        info::<a::flowcontrol::v1::PriorityLevelConfiguration>(st(&[], &[])),
        // networking.k8s.io/v1
        info::<a::networking::v1::IngressClass>(crud()),
        info::<a::networking::v1::Ingress>(st(&["ing"], &[])),
        info::<a::networking::v1::IPAddress>(with(&["ip"], &[])),
        info::<a::networking::v1::NetworkPolicy>(with(&["netpol"], &[])),
        info::<a::networking::v1::ServiceCIDR>(st(&[], &[])),
        // node.k8s.io/v1
        info::<a::node::v1::RuntimeClass>(crud()),
        // policy/v1
        info::<a::policy::v1::PodDisruptionBudget>(st(&["pdb"], &[])),
        // rbac.authorization.k8s.io/v1
        info::<a::rbac::v1::ClusterRoleBinding>(crud()),
        info::<a::rbac::v1::ClusterRole>(crud()),
        info::<a::rbac::v1::RoleBinding>(crud()),
        info::<a::rbac::v1::Role>(crud()),
        // resource.k8s.io/v1
        info::<a::resource::v1::DeviceClass>(crud()),
        info::<a::resource::v1::ResourceClaimTemplate>(crud()),
        info::<a::resource::v1::ResourceClaim>(st(&[], &[])),
        info::<a::resource::v1::ResourceSlice>(crud()),
        // scheduling.k8s.io/v1
        info::<a::scheduling::v1::PriorityClass>(with(&["pc"], &[])),
        // storage.k8s.io/v1
        info::<a::storage::v1::CSIDriver>(crud()),
        info::<a::storage::v1::CSINode>(crud()),
        info::<a::storage::v1::CSIStorageCapacity>(crud()),
        info::<a::storage::v1::StorageClass>(with(&["sc"], &[])),
        info::<a::storage::v1::VolumeAttachment>(st(&[], &[])),
        info::<a::storage::v1::VolumeAttributesClass>(with(&["vac"], &[])),
    ]
}

/// The registry: lookups by group/version/plural and by group/kind.
pub struct Registry {
    pub resources: Vec<ResourceInfo>,
    by_path: BTreeMap<(String, String, String), usize>,
}

/// A served group with its versions, the preferred one first.
pub struct GroupInfo {
    pub name: &'static str,
    pub versions: Vec<&'static str>,
}

impl Registry {
    pub fn get() -> &'static Registry {
        static R: OnceLock<Registry> = OnceLock::new();
        R.get_or_init(|| {
            let resources = build();
            let by_path = resources
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    (
                        (
                            r.group.to_string(),
                            r.version.to_string(),
                            r.plural.to_string(),
                        ),
                        i,
                    )
                })
                .collect();
            Registry { resources, by_path }
        })
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceInfo> {
        self.by_path
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .map(|&i| &self.resources[i])
    }

    /// The resource for an apiVersion + kind, as written in a manifest.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceInfo> {
        let (g, v) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.resources
            .iter()
            .find(|r| r.group == g && r.version == v && r.kind == kind)
    }

    /// The served groups (core first), each with versions in preference order.
    pub fn groups(&self) -> Vec<GroupInfo> {
        let mut out: Vec<GroupInfo> = Vec::new();
        for r in &self.resources {
            match out.iter_mut().find(|g| g.name == r.group) {
                Some(g) => {
                    if !g.versions.contains(&r.version) {
                        g.versions.push(r.version);
                    }
                }
                None => out.push(GroupInfo {
                    name: r.group,
                    versions: vec![r.version],
                }),
            }
        }
        out
    }

    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a ResourceInfo> + 'a {
        self.resources
            .iter()
            .filter(move |r| r.group == group && r.version == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_the_common_kinds_with_right_scope() {
        let r = Registry::get();
        let pods = r.lookup("", "v1", "pods").unwrap();
        assert!(pods.namespaced && pods.status && pods.short_names == ["po"]);
        assert_eq!(pods.storage_prefix(), "/registry/core/pods/");
        assert_eq!(pods.definition, "io.k8s.api.core.v1.Pod");
        let ns = r.lookup("", "v1", "namespaces").unwrap();
        assert!(!ns.namespaced);
        let d = r.lookup("apps", "v1", "deployments").unwrap();
        assert!(d.scale && d.categories == ["all"]);
        assert_eq!(d.list_kind, "DeploymentList");
        let g = r.groups();
        assert_eq!(g[0].name, "");
        assert!(g
            .iter()
            .any(|g| g.name == "autoscaling" && g.versions == ["v2"]));
        assert_eq!(
            r.by_kind("apiextensions.k8s.io/v1", "CustomResourceDefinition")
                .unwrap()
                .definition,
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition"
        );
    }
}
