//! BFD (RFC 5880, single hop RFC 5881, multihop RFC 5883) for the BGP sessions: a BFD
//! session per peer with a `bfdProfile`; when it goes down, so does the BGP session, at once.
//!
//! - [`packet`]: the Control packet.
//! - [`session`]: one session's state machine, time passed in.
//! - [`service`]: the UDP sockets and the task that runs every session.
//!
//! [`Request`], what a BGP peer asks of BFD, is here so the pure BGP planner needs nothing of
//! the UDP side.

pub mod packet;
pub mod service;
pub mod session;

use std::net::IpAddr;

use session::Settings;

/// What a BGP peer asks of BFD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    pub peer: IpAddr,
    /// The interface a link-local `peer` is on (unnumbered BGP sessions); 0 otherwise.
    pub scope: u32,
    /// The address to send from (the BGP session's source), if fixed.
    pub local: Option<IpAddr>,
    pub multihop: bool,
    pub settings: Settings,
    /// Multihop: the lowest TTL accepted (BFDProfile `minimumTtl`, default 254).
    pub min_ttl: u8,
}
