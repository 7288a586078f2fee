//! Agent membership: who is alive, from UDP heartbeats between agents.
//!
//! Layout:
//! - [`detector`]: the pure failure detector (time passed in).
//!
//! Still to come (issue 5): the heartbeat wire format with HMAC-SHA256, and the UDP driver.

pub mod detector;
