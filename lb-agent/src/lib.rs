//! The xdplb node agent.
//!
//! Layout:
//! - [`l2`]: the Layer 2 data path: loading and pinning the XDP responder ([`l2::datapath`]),
//!   the VIP maps ([`l2::maps`]), the userspace responder with the same semantics
//!   ([`l2::responder`], driven over AF_PACKET by [`l2::afpacket`]), gratuitous ARP and
//!   unsolicited NA ([`l2::announce`]), and the `xdplb0` interface that makes a VIP local on
//!   plain hosts ([`l2::vipdev`]).
//! - [`election`]: which node announces a VIP (MetalLB's rule), pure; [`slots`]: which node
//!   answers which requesters of an active-active VIP, pure.
//! - [`membership`]: which agents are alive, from heartbeats; the failure detector is pure.
//! - [`desired`]: what this node announces, from the configuration, the allocations and the
//!   alive set, pure.
//! - [`run`]: `lb-agent run`, the standalone agent loop; [`source`] reads its configuration
//!   directory off that loop; [`metrics`] is what it exports.
//! - [`statuses`]: MetalLB's ServiceL2Status and ServiceBGPStatus objects, in a cluster.
//! - [`bgp`]: the BGP speaker, from its wire codec up; [`bfd`] guards its sessions.
//! - [`cli`]: the subcommands of the `lb-agent` binary.

pub mod bfd;
pub mod bgp;
pub mod cli;
pub mod desired;
pub mod election;
pub mod l2;
pub mod membership;
pub mod metrics;
pub mod run;
pub mod slots;
pub mod source;
pub mod statuses;

/// The compiled `lb-ebpf` object, embedded at build time.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"))
}
