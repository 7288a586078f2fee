//! Agent membership: who is alive, from UDP heartbeats between agents.
//!
//! Layout:
//! - [`detector`]: the pure failure detector (time passed in), and what changed between two
//!   looks at it.
//! - [`heartbeat`]: the wire format, authenticated with HMAC-SHA256.
//! - [`driver`]: the UDP edge: sends this agent's heartbeats, receives and checks the peers'.

pub mod detector;
pub mod driver;
pub mod heartbeat;

/// Why a heartbeat was not taken into account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Not a heartbeat, truncated, or of another version.
    Malformed,
    /// The HMAC does not verify: another secret, or altered in flight.
    Auth,
    /// Not newer than the last one accepted from that node's run.
    Replay,
    /// Authentic but not made during this agent's run (it echoes another): no proof of life.
    /// One per peer after either side starts; a steady count is a recording played back.
    Stale,
}

impl Rejected {
    pub fn label(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::Auth => "auth",
            Rejected::Replay => "replay",
            Rejected::Stale => "stale",
        }
    }
}
