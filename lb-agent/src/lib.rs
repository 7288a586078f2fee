//! The xdplb node agent.
//!
//! Layout:
//! - [`l2`]: the Layer 2 data path: loading and pinning the XDP responder ([`l2::datapath`]),
//!   the VIP maps ([`l2::maps`]), the userspace responder with the same semantics
//!   ([`l2::responder`], driven over AF_PACKET by [`l2::afpacket`]), gratuitous ARP and
//!   unsolicited NA ([`l2::announce`]), and the `xdplb0` interface that makes a VIP local on
//!   plain hosts ([`l2::vipdev`]).
//! - [`inputs`]: the part of a configuration snapshot the planners read, built by [`source`]
//!   (a directory, or the API server) off the agent's loop.
//! - [`election`]: who announces a VIP at Layer 2 (MetalLB's rule, or active-active slots) and
//!   when the maps follow (the hand-over), pure.
//! - [`membership`]: which agents are alive, from heartbeats; the failure detector is pure,
//!   its UDP edge is [`membership::driver`].
//! - [`run`]: `lb-agent run`, the driver that wires the pieces and moves events between them;
//!   [`metrics`] is what it exports; [`statuses`] reports to the API server in a cluster
//!   (ServiceL2Status, ServiceBGPStatus, Events, ConfigurationState).
//! - [`bgp`]: the BGP speaker, from its wire codec up; [`bfd`] guards its sessions.
//! - [`diagnose`]: "why is my IP not answered?", the chain from a Service to the node that
//!   answers, over the API or a standalone directory (the `kubectl-xdplb` binary).
//! - [`cli`]: the subcommands of the `lb-agent` binary; [`ttl`]: datagrams with the TTL they
//!   arrived with (BFD, router advertisements).

pub mod bfd;
pub mod bgp;
pub mod cli;
pub mod diagnose;
pub mod election;
pub mod heap;
pub mod inputs;
pub mod l2;
pub mod membership;
pub mod metrics;
pub mod random;
pub mod run;
pub mod source;
pub mod statuses;
pub mod ttl;

/// The compiled `lb-ebpf` object, embedded at build time.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"))
}
