//! kite's service proxy, on every node: Services and their EndpointSlices, watched
//! through the API like every other component, programmed into the kernel's nftables
//! (table `kite-proxy`) as kube-proxy's nftables mode does: verdict maps keyed by
//! address, protocol and port, a chain per Service port and per endpoint, each change
//! one atomic transaction. No traffic is copied in user space.

pub mod model;
pub mod rules;
