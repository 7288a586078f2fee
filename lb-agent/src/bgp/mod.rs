//! The BGP speaker (DESIGN.md §7), ours from the wire up: sans-IO codec and state machines,
//! tokio at the edge.
//!
//! Layout:
//! - [`message`]: the header, OPEN and its capabilities, KEEPALIVE, NOTIFICATION,
//!   ROUTE-REFRESH; malformed input becomes the NOTIFICATION RFC 4271 prescribes.
//! - [`update`]: UPDATE bodies: routes, path attributes, MP-BGP, with RFC 7606 error handling.
//!
//! Still to come (issue 6): the session FSM, the
//! policy from BGPPeer/BGPAdvertisement, BFD, and the TCP edge.

pub mod message;
pub mod update;
