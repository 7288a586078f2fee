//! Agent membership: who is alive, from UDP heartbeats between agents.
//!
//! Layout:
//! - [`detector`]: the pure failure detector (time passed in).
//! - [`heartbeat`]: the wire format, authenticated with HMAC-SHA256.
//!
//! The UDP driver is the agent loop in [`crate::run`].

pub mod detector;
pub mod heartbeat;
