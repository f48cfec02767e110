//! The API's model of resources, independent of HTTP and storage: the registry of served
//! resources ([`registry`]), typed decoding that notes unknown fields ([`decode`]), per-kind strategies for defaulting and validation
//! ([`strategy`], [`validation`], and [`resize`] for a pod's `resize` subresource), selectors ([`selector`], and [`sparse`] decoding of what they read), patching ([`patch`]) and
//! server-side printing ([`table`]).

pub mod decode;
pub mod go_encoding;
pub mod patch;
pub mod proto;
pub mod qos;
pub mod quantity;
pub mod registry;
pub mod resize;
pub mod selector;
pub mod sparse;
pub mod strategy;
pub mod table;
pub mod validation;

pub use registry::{Registry, ResourceInfo, Verbs};

/// The Kubernetes version kite serves.
pub const KUBERNETES_VERSION: &str = "v1.36.0";
