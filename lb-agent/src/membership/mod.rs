//! Agent membership: who is alive, from UDP heartbeats between agents.
//!
//! Layout:
//! - [`detector`]: the pure failure detector (time passed in).
//!
//! - [`heartbeat`]: the wire format, authenticated with HMAC-SHA256.
//!
//! Still to come (issue 5): the UDP driver.

pub mod detector;
pub mod heartbeat;
