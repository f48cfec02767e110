//! The streaming protocols of `kubectl exec`, `attach`, `cp` and `port-forward`: SPDY/3.1
//! (also tunnelled through WebSocket messages, as kubectl ≥ 1.31 port-forwards) and the
//! WebSocket channel protocols up to `v5.channel.k8s.io`, with the status bodies their
//! error channels carry. Protocol only: what runs at the ends (a container's process, a
//! socket in a pod's network namespace) is the kubelet's.

pub mod channel;
mod dictionary;
pub mod spdy;
pub mod status;
