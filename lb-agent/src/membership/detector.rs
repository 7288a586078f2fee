//! The failure detector: a peer is alive while its heartbeats keep arriving within `timeout`.
//!
//! Pure: every method takes `now`; nothing here reads a clock, so tests drive it with made-up
//! instants. A heartbeat carries `(epoch, seq)`: `epoch` is fixed per agent run (its start time)
//! and `seq` counts up within it, so a replayed heartbeat (not newer than the last accepted
//! one) is refused even across the sender's restarts.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

pub use super::heartbeat::Phase;

/// Default silence after which a peer is dead: with heartbeats every 50 ms, three missed ones
/// and some jitter, detection stays well under the 200 ms p99 failover target (DESIGN.md §6).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(180);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Peer {
    last_heard: Instant,
    last: (u64, u64),
    /// A graceful restart's "hold until": alive until then even when silent.
    hold_until: Option<Instant>,
    /// Only an active peer is a candidate; a leaving one is dead until it speaks again.
    phase: Phase,
}

/// What [`Detector::heard`] made of a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// The set of alive peers changed (one joined, or said it is leaving): worth acting on now.
    Changed,
    /// Accepted; the alive set is what it was.
    Unchanged,
    /// Not newer than the last heartbeat accepted from that peer: ignored.
    Replayed,
}

/// Liveness of every peer this agent hears from.
#[derive(Clone, Debug)]
pub struct Detector {
    timeout: Duration,
    peers: BTreeMap<String, Peer>,
}

impl Detector {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            peers: BTreeMap::new(),
        }
    }

    fn is_alive(&self, peer: &Peer, now: Instant) -> bool {
        peer.phase == Phase::Active
            && (now.saturating_duration_since(peer.last_heard) < self.timeout
                || peer.hold_until.is_some_and(|t| now < t))
    }

    /// A heartbeat from `node` with `(epoch, seq)` in `phase`, optionally asking to be held
    /// alive until `hold_until` (a graceful restart). A replayed one (not newer than the last
    /// accepted) changes nothing, so a recorded goodbye cannot kill a peer that came back.
    pub fn heard(
        &mut self,
        node: &str,
        epoch: u64,
        seq: u64,
        phase: Phase,
        hold_until: Option<Instant>,
        now: Instant,
    ) -> Heard {
        let was_alive = self.peers.get(node).is_some_and(|p| self.is_alive(p, now));
        if let Some(p) = self.peers.get(node)
            && (epoch, seq) <= p.last
        {
            return Heard::Replayed;
        }
        let peer = Peer {
            last_heard: now,
            last: (epoch, seq),
            hold_until: hold_until.filter(|_| phase == Phase::Active),
            phase,
        };
        let alive = self.is_alive(&peer, now);
        self.peers.insert(node.to_owned(), peer);
        if alive == was_alive {
            Heard::Unchanged
        } else {
            Heard::Changed
        }
    }

    /// The run (epoch) of the last accepted heartbeat from `node`: the same after a silence
    /// means the peer lived through it (a partition), a newer one that it restarted.
    pub fn epoch(&self, node: &str) -> Option<u64> {
        self.peers.get(node).map(|p| p.last.0)
    }

    /// When the last accepted heartbeat from `node` arrived.
    pub fn last_heard(&self, node: &str) -> Option<Instant> {
        self.peers.get(node).map(|p| p.last_heard)
    }

    /// The peers alive at `now`.
    pub fn alive(&self, now: Instant) -> BTreeSet<String> {
        self.peers
            .iter()
            .filter(|(_, p)| self.is_alive(p, now))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The next instant at which an alive peer would be declared dead if nothing more arrives:
    /// the one timer the driver needs.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.peers
            .values()
            .filter(|p| self.is_alive(p, now))
            .map(|p| {
                let silent = p.last_heard + self.timeout;
                p.hold_until.map_or(silent, |h| silent.max(h))
            })
            .min()
    }
}

impl Default for Detector {
    fn default() -> Self {
        Self::new(DEFAULT_TIMEOUT)
    }
}

/// What changed in the alive set since the last look ([`Changes::look`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// The alive peers and this node.
    pub alive: BTreeSet<String>,
    /// Whether `alive` differs from the last look.
    pub changed: bool,
    /// A peer came back in the same run (epoch) it was lost in: it lived through a partition,
    /// and believing this node dead it may have told this node's clients to go to it. A peer
    /// that restarted told no one anything.
    pub rejoined: bool,
    /// For each peer that died silently (not a goodbye) since the last look, how long the
    /// silence lasted until now: the detection time.
    pub detected: Vec<Duration>,
}

/// Follows the alive set from look to look.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    last_alive: BTreeSet<String>,
    /// The run (epoch) each lost peer was in when it was lost.
    lost_in: BTreeMap<String, u64>,
}

impl Changes {
    /// The alive set at `now` (with `me`, always alive to itself), and how it changed.
    pub fn look(&mut self, detector: &Detector, me: &str, now: Instant) -> View {
        let mut alive = detector.alive(now);
        alive.insert(me.to_owned());
        let mut view = View {
            changed: alive != self.last_alive,
            ..View::default()
        };
        if view.changed {
            for back in alive.difference(&self.last_alive) {
                if let (Some(lost), Some(current)) =
                    (self.lost_in.remove(back), detector.epoch(back))
                {
                    view.rejoined |= lost == current;
                }
            }
            for gone in self.last_alive.difference(&alive) {
                if let Some(epoch) = detector.epoch(gone) {
                    self.lost_in.insert(gone.clone(), epoch);
                }
                if let Some(heard) = detector.last_heard(gone) {
                    let silence = now.saturating_duration_since(heard);
                    if silence >= detector.timeout {
                        view.detected.push(silence);
                    }
                }
            }
            self.last_alive.clone_from(&alive);
        }
        view.alive = alive;
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_silent_peer_dies_after_the_timeout_and_not_before() {
        let t0 = Instant::now();
        let mut d = Detector::new(100 * MS);
        assert_eq!(d.heard("n1", 1, 1, Phase::Active, None, t0), Heard::Changed);
        assert_eq!(
            d.heard("n1", 1, 2, Phase::Active, None, t0 + 50 * MS),
            Heard::Unchanged
        );
        assert!(d.alive(t0 + 149 * MS).contains("n1"));
        assert_eq!(d.next_deadline(t0 + 60 * MS), Some(t0 + 150 * MS));
        assert!(!d.alive(t0 + 150 * MS).contains("n1"));
        assert_eq!(d.next_deadline(t0 + 150 * MS), None);
        assert_eq!(
            d.heard("n1", 1, 3, Phase::Active, None, t0 + 200 * MS),
            Heard::Changed
        );
    }

    #[test]
    fn replayed_heartbeats_are_refused_even_across_restarts() {
        let t0 = Instant::now();
        let mut d = Detector::new(100 * MS);
        d.heard("n1", 5, 10, Phase::Active, None, t0);
        assert_eq!(
            d.heard("n1", 5, 10, Phase::Active, None, t0 + MS),
            Heard::Replayed
        );
        assert_eq!(
            d.heard("n1", 5, 9, Phase::Active, None, t0 + MS),
            Heard::Replayed
        );
        // The sender restarted: a newer epoch starts its sequence again.
        assert_eq!(
            d.heard("n1", 6, 1, Phase::Active, None, t0 + 2 * MS),
            Heard::Unchanged
        );
        // A heartbeat recorded before that restart cannot bring anything back.
        assert_eq!(
            d.heard("n1", 5, 11, Phase::Active, None, t0 + 3 * MS),
            Heard::Replayed
        );
        // A replay does not refresh: the peer still dies on time.
        assert!(!d.alive(t0 + 102 * MS).contains("n1"));
    }

    #[test]
    fn a_graceful_restart_holds_the_peer_alive_until_the_stated_time() {
        let t0 = Instant::now();
        let mut d = Detector::new(100 * MS);
        d.heard("n1", 1, 1, Phase::Active, Some(t0 + 5_000 * MS), t0);
        assert!(d.alive(t0 + 4_000 * MS).contains("n1"));
        assert_eq!(d.next_deadline(t0), Some(t0 + 5_000 * MS));
        assert!(!d.alive(t0 + 5_000 * MS).contains("n1"));
    }

    #[test]
    fn peers_are_independent() {
        let t0 = Instant::now();
        let mut d = Detector::new(100 * MS);
        d.heard("n1", 1, 1, Phase::Active, None, t0);
        d.heard("n2", 1, 1, Phase::Active, None, t0 + 80 * MS);
        let alive = d.alive(t0 + 120 * MS);
        assert!(!alive.contains("n1") && alive.contains("n2"));
        assert_eq!(d.next_deadline(t0 + 10 * MS), Some(t0 + 100 * MS));
    }

    #[test]
    fn a_leaving_peer_is_dead_at_once_and_a_replayed_goodbye_changes_nothing() {
        let t0 = Instant::now();
        let mut d = Detector::new(Duration::from_millis(180));
        d.heard("b", 1, 1, Phase::Active, None, t0);
        assert!(d.alive(t0).contains("b"));
        assert_eq!(d.heard("b", 1, 2, Phase::Leaving, None, t0), Heard::Changed);
        assert!(!d.alive(t0).contains("b"));
        // The same goodbye replayed after b came back must not kill it again.
        d.heard("b", 2, 1, Phase::Active, None, t0);
        assert_eq!(
            d.heard("b", 1, 2, Phase::Leaving, None, t0),
            Heard::Replayed
        );
        assert!(d.alive(t0).contains("b"));
    }

    /// Scenario table: each step is (at ms, peer, epoch, seq, phase) followed by the alive set
    /// expected right after it. Covers joins, flaps, restarts and goodbyes in one timeline.
    #[test]
    fn membership_timeline() {
        use Phase::*;
        type Step = (u64, &'static str, u64, u64, Phase, &'static [&'static str]);
        let steps: &[Step] = &[
            // a and b come up: joining is not yet a candidate.
            (0, "a", 1, 1, Joining, &[]),
            (0, "b", 1, 1, Joining, &[]),
            (50, "a", 1, 2, Active, &["a"]),
            (60, "b", 1, 2, Active, &["a", "b"]),
            // b flaps: silent past the timeout (checked below at 250), then back.
            (200, "a", 1, 3, Active, &["a"]),
            (260, "b", 1, 3, Active, &["a", "b"]),
            // a crashes and restarts (new epoch): joining takes it out until it is ready.
            (300, "a", 2, 1, Joining, &["b"]),
            (350, "a", 2, 2, Active, &["a", "b"]),
            // a forged-looking replay from a's old life changes nothing.
            (360, "a", 1, 99, Leaving, &["a", "b"]),
            // b shuts down.
            (380, "b", 1, 4, Leaving, &["a"]),
        ];
        let t0 = Instant::now();
        let mut d = Detector::new(Duration::from_millis(120));
        for (i, &(at, peer, epoch, seq, phase, want)) in steps.iter().enumerate() {
            let now = t0 + Duration::from_millis(at);
            d.heard(peer, epoch, seq, phase, None, now);
            let got: Vec<String> = d.alive(now).into_iter().collect();
            assert_eq!(got, want, "step {i}: {peer} {phase:?} at {at} ms");
        }
        // Between the steps: at 250 ms b had been silent 190 ms > 120 ms.
        let mut flap = Detector::new(Duration::from_millis(120));
        flap.heard("b", 1, 2, Active, None, t0 + Duration::from_millis(60));
        assert!(!flap.alive(t0 + Duration::from_millis(250)).contains("b"));
    }

    #[test]
    fn a_hold_only_counts_for_an_active_peer() {
        let t0 = Instant::now();
        let mut d = Detector::new(100 * MS);
        d.heard("n1", 1, 1, Phase::Joining, Some(t0 + 5_000 * MS), t0);
        assert!(d.alive(t0 + MS).is_empty());
        assert_eq!(d.next_deadline(t0), None);
    }

    #[test]
    fn a_peer_back_in_the_run_it_was_lost_in_rejoined_and_a_restarted_one_did_not() {
        let t0 = Instant::now();
        let mut d = Detector::new(100 * MS);
        let mut c = Changes::default();
        d.heard("b", 1, 1, Phase::Active, None, t0);
        d.heard("c", 1, 1, Phase::Active, None, t0);
        let first = c.look(&d, "a", t0);
        assert!(first.changed && !first.rejoined);
        assert_eq!(first.alive.len(), 3);
        assert!(!c.look(&d, "a", t0 + 10 * MS).changed);

        // Both fall silent; the loss is seen 150 ms after the last heartbeat.
        let lost = c.look(&d, "a", t0 + 150 * MS);
        assert!(lost.changed);
        assert_eq!(lost.alive, BTreeSet::from(["a".to_owned()]));
        assert_eq!(lost.detected, vec![150 * MS, 150 * MS]);

        // b comes back in the same run (a partition healed); c restarted (a new epoch).
        d.heard("c", 2, 1, Phase::Active, None, t0 + 200 * MS);
        let restarted = c.look(&d, "a", t0 + 200 * MS);
        assert!(restarted.changed && !restarted.rejoined);
        d.heard("b", 1, 2, Phase::Active, None, t0 + 210 * MS);
        let healed = c.look(&d, "a", t0 + 210 * MS);
        assert!(healed.changed && healed.rejoined);
        assert!(healed.detected.is_empty());
    }

    #[test]
    fn a_goodbye_is_not_a_detection() {
        let t0 = Instant::now();
        let mut d = Detector::new(100 * MS);
        let mut c = Changes::default();
        d.heard("b", 1, 1, Phase::Active, None, t0);
        c.look(&d, "a", t0);
        d.heard("b", 1, 2, Phase::Leaving, None, t0 + 20 * MS);
        let view = c.look(&d, "a", t0 + 20 * MS);
        assert!(view.changed && view.detected.is_empty());
    }
}
