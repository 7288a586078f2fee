//! The BGP speaker (DESIGN.md §7), ours from the wire up: sans-IO codec and state machines,
//! tokio at the edge.
//!
//! Layout:
//! - [`message`]: the header, OPEN and its capabilities, KEEPALIVE, NOTIFICATION,
//!   ROUTE-REFRESH; malformed input becomes the NOTIFICATION RFC 4271 prescribes.
//!
//! Still to come (issue 6): UPDATE attributes (RFC 7606 handling), the session FSM, the
//! policy from BGPPeer/BGPAdvertisement, BFD, and the TCP edge.

pub mod message;
