//! The BGP speaker (DESIGN.md §7), ours from the wire up: sans-IO codec and state machines,
//! tokio at the edge.
//!
//! Layout:
//! - [`message`]: the header, OPEN and its capabilities, KEEPALIVE, NOTIFICATION,
//!   ROUTE-REFRESH; malformed input becomes the NOTIFICATION RFC 4271 prescribes.
//! - [`update`]: UPDATE bodies: routes, path attributes, MP-BGP, with RFC 7606 error handling.
//! - [`notification`]: every NOTIFICATION code and subcode.
//!
//! - [`rib_out`]: what a peer should hold from us, and the packed UPDATEs that get it there.
//! - [`session`]: one session's state machine (RFC 4271 §8), time passed in.
//!
//! - [`policy`]: what this node advertises to whom, from the metallb.io objects (pure).
//! - [`speaker`]: the TCP edge: a task per peer, the listener, MD5 and TTL ([`socket`]).
//! - [`unnumbered`]: finding unnumbered peers (BGPPeer `interface`) by router advertisements.
//!
//! Not yet: VRFs.

pub mod message;
pub mod notification;
pub mod policy;
pub mod rib_out;
pub mod session;
pub mod socket;
pub mod speaker;
pub mod unnumbered;
pub mod update;
