//! The join protocol's messages, between `kite agent` and the server's join endpoint.
//!
//! 1. `GET /cacerts` (no credentials, no verification): the cluster's server CA bundle.
//!    The agent checks its SHA-256 against the token's before it trusts it.
//! 2. `POST /v1-kite/join` over TLS verified with that CA, `Authorization: Basic` with
//!    user `node` and the token's secret, a [`JoinRequest`] body: the agent's node name,
//!    node password and two certificate requests (it keeps its keys). The answer is a
//!    [`JoinResponse`]: the node's client and kubelet serving certificates, both CAs and
//!    the cluster settings a node needs.

use serde::{Deserialize, Serialize};

pub const CACERTS_PATH: &str = "/cacerts";
pub const JOIN_PATH: &str = "/v1-kite/join";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub node_name: String,
    /// Proves this is the machine that first registered `node_name`.
    pub node_password: String,
    /// The node's addresses, for its serving certificate.
    pub addresses: Vec<String>,
    /// PKCS#10 request (PEM) for the node's client certificate.
    pub client_request: String,
    /// PKCS#10 request (PEM) for the kubelet's serving certificate.
    pub serving_request: String,
}

/// Cluster-wide settings every node follows (the server's flags).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: String,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: String,
    pub cluster_domain: String,
    /// `host-gw`, `vxlan` or `none`.
    pub network_backend: String,
    /// The servers' API addresses (`host:port`).
    pub servers: Vec<String>,
    /// Whether nodes run the cluster DNS (not with the server's `--disable dns`).
    pub dns: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    pub client_cert: String,
    pub serving_cert: String,
    /// Verifies the API server's and kubelets' serving certificates.
    #[serde(rename = "serverCA")]
    pub server_ca: String,
    /// Verifies client certificates (the API server's, when it calls the kubelet).
    #[serde(rename = "clientCA")]
    pub client_ca: String,
    pub cluster: ClusterInfo,
}

/// An error answer, shaped as the API's Status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub kind: String,
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub status: String,
    pub message: String,
    pub reason: String,
    pub code: u16,
}

impl Status {
    pub fn failure(code: u16, reason: &str, message: impl Into<String>) -> Status {
        Status {
            kind: "Status".into(),
            api_version: "v1".into(),
            status: "Failure".into(),
            message: message.into(),
            reason: reason.into(),
            code,
        }
    }
}
