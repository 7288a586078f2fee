//! Agent membership: who is alive, from UDP heartbeats between agents.
//!
//! Layout:
//! - [`detector`]: the pure failure detector (time passed in), and what changed between two
//!   looks at it.
//! - [`heartbeat`]: the wire format, authenticated with HMAC-SHA256.
//! - [`links`]: what a node says of its announcing links (carrier, networks), in its heartbeats.
//! - [`claims`]: the non-revertive VIPs a node holds, told to its peers.
//! - [`driver`]: the UDP edge: sends this agent's heartbeats, receives and checks the peers'.
//! - [`thread`]: runs the driver on a thread of its own, on time, and hands the agent a
//!   [`detector::View`] when membership changed.
//! - [`realtime`]: that thread's SCHED_FIFO and locked memory.
//! - [`ring`], [`verdicts`]: past a full mesh, whom each node heartbeats and how failures are
//!   confirmed and spread; [`messages`] their wire format; [`simulation`] a group of them on
//!   simulated time.

use std::collections::{BTreeMap, BTreeSet};

pub mod claims;
pub mod detector;
pub mod driver;
pub mod heartbeat;
pub mod links;
pub mod messages;
pub mod realtime;
pub mod ring;
pub mod simulation;
pub mod thread;
pub mod verdicts;

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

/// Who takes part in the Layer 2 election: the nodes alive (this one included), and what each
/// said of its announcing links. A node with no entry in `links` (an agent from before link
/// awareness) is taken to reach every VIP, as every node was before.
///
/// `claims` holds the non-revertive VIPs each alive node says it holds ([`claims`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    pub alive: BTreeSet<String>,
    pub links: BTreeMap<String, links::Links>,
    pub claims: BTreeMap<String, claims::Claims>,
}

impl From<BTreeSet<String>> for Members {
    fn from(alive: BTreeSet<String>) -> Self {
        Self {
            alive,
            ..Self::default()
        }
    }
}
