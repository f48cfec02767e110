//! Joining a node to a cluster, both sides: join tokens ([`token`]), the messages
//! ([`proto`]), the server's endpoint that hands out node certificates ([`server`]), the
//! agent's half ([`agent`]) and the agent's client-side load balancer over the servers
//! ([`lb`]).

pub mod agent;
pub mod client;
pub mod lb;
pub mod proto;
pub mod server;
pub mod token;
