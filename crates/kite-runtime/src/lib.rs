//! Shared machinery for kite's API clients (controllers, scheduler, simulated nodes,
//! kubelet): a client built from a component kubeconfig, shared informers (one watch
//! and one cache per kind, fanned out to every controller that needs it), a work queue
//! with per-key exclusion and delayed retries, an event recorder and leader election.
//!
//! Everything here speaks to the API server through `kube`; nothing touches the store.

pub mod client;
pub mod events;
pub mod informer;
pub mod labels;
pub mod leader;
pub mod node;
/// Resource quantities live with the API types; re-exported for the components.
pub use kite_api::quantity;
pub mod queue;

pub use informer::{Change, Informer, Informers, Key};
pub use queue::WorkQueue;

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next change.
    AwaitChange,
    /// Look again after this long (time-based conditions, pending expectations).
    Requeue(std::time::Duration),
}
