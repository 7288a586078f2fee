//! BFD (RFC 5880, single hop RFC 5881, multihop RFC 5883) for the BGP sessions: a BFD
//! session per peer with a `bfdProfile`; when it goes down, so does the BGP session, at once.
//!
//! - [`packet`]: the Control packet.
//! - [`session`]: one session's state machine, time passed in.
//! - [`service`]: the UDP sockets and the task that runs every session.

pub mod packet;
pub mod service;
pub mod session;
