//! The failure detector: a peer is alive while its heartbeats keep arriving within `timeout`.
//!
//! Pure: every method takes `now`; nothing here reads a clock, so tests drive it with made-up
//! instants.
//!
//! Freshness without clocks. Each run of an agent draws a random `epoch`; its heartbeats
//! carry `(epoch, seq)` and `echo`, the receiver's epoch as the sender last heard it. A
//! heartbeat proves the sender alive only when
//! - its `echo` is this run's epoch: it was made after this receiver started, so a recording
//!   from before (another run of this receiver, or before it joined) proves nothing;
//! - its `seq` is above every one this run accepted from that sender's run: a recording made
//!   during this run is refused datagram by datagram.
//!
//! So a dead node cannot be kept alive by replaying it, and no wall clock is involved: a node
//! whose clock went back is as welcome as any. A heartbeat that is authentic but not fresh
//! teaches this receiver the sender's epoch (to echo it back) while the sender is not alive
//! here, which is how two nodes that just started find each other within one interval.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

pub use super::heartbeat::Phase;
use super::{Members, claims::Claims, links::Links};

/// Runs of one sender whose highest sequence number is remembered: more than any sender
/// restarts within a receiver's run in practice; past it the oldest is forgotten.
const RUNS_REMEMBERED: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Peer {
    /// When the last fresh heartbeat arrived.
    last_heard: Instant,
    /// The run of the last fresh heartbeat.
    epoch: u64,
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
    /// Not newer than the last heartbeat accepted from that peer's run: ignored.
    Replayed,
    /// Authentic and new, but not made during this receiver's run (it echoes another epoch):
    /// no proof of life. The normal first heartbeat after either side starts.
    Unconfirmed,
}

/// One sender's runs, each with the highest sequence number seen, most recent last.
#[derive(Clone, Debug, Default)]
struct Runs(Vec<(u64, u64)>);

impl Runs {
    fn close(&mut self, epoch: u64) {
        if let Some(run) = self.0.iter_mut().find(|(e, _)| *e == epoch) {
            run.1 = u64::MAX;
        }
    }

    /// Records `(epoch, seq)`; false when `seq` is not above the run's highest.
    fn advance(&mut self, epoch: u64, seq: u64) -> bool {
        match self.0.iter().position(|(e, _)| *e == epoch) {
            Some(i) => {
                let (_, last) = self.0.remove(i);
                self.0.push((epoch, last.max(seq)));
                seq > last
            }
            None => {
                if self.0.len() == RUNS_REMEMBERED {
                    self.0.remove(0);
                }
                self.0.push((epoch, seq));
                true
            }
        }
    }
}

/// Liveness of every peer this agent hears from.
#[derive(Clone, Debug)]
pub struct Detector {
    timeout: Duration,
    /// This receiver's run: what fresh heartbeats echo.
    epoch: u64,
    peers: BTreeMap<String, Peer>,
    runs: BTreeMap<String, Runs>,
    /// Each sender's epoch as last learned, to echo back to it.
    learned: BTreeMap<String, u64>,
}

impl Detector {
    /// A detector for the run `epoch` of this agent (random, never 0).
    pub fn new(timeout: Duration, epoch: u64) -> Self {
        Self {
            timeout,
            epoch,
            peers: BTreeMap::new(),
            runs: BTreeMap::new(),
            learned: BTreeMap::new(),
        }
    }

    /// This receiver's run.
    pub fn own_epoch(&self) -> u64 {
        self.epoch
    }

    /// What to echo to `node`: its run as last learned (0 before anything was heard).
    pub fn echo_for(&self, node: &str) -> u64 {
        self.learned.get(node).copied().unwrap_or(0)
    }

    fn alive_peer(&self, peer: &Peer, now: Instant) -> bool {
        peer.phase == Phase::Active
            && (now.saturating_duration_since(peer.last_heard) < self.timeout
                || peer.hold_until.is_some_and(|t| now < t))
    }

    /// An authentic heartbeat from `node`: run `epoch`, number `seq`, echoing `echo`, in
    /// `phase`, optionally asking to be held alive until `hold_until` (a graceful restart).
    /// A replayed one changes nothing, so a recorded goodbye cannot kill a peer that came
    /// back, and a recorded stream cannot keep a dead one alive.
    #[allow(clippy::too_many_arguments)]
    pub fn heard(
        &mut self,
        node: &str,
        epoch: u64,
        seq: u64,
        echo: u64,
        phase: Phase,
        hold_until: Option<Instant>,
        now: Instant,
    ) -> Heard {
        let was_alive = self
            .peers
            .get(node)
            .is_some_and(|p| self.alive_peer(p, now));
        if !self
            .runs
            .entry(node.to_owned())
            .or_default()
            .advance(epoch, seq)
        {
            return Heard::Replayed;
        }
        let fresh = echo == self.epoch;
        // While the sender is alive here only a fresh heartbeat may change the epoch echoed to
        // it: a replayed old one would otherwise make this node echo a dead run.
        if fresh || !was_alive {
            self.learned.insert(node.to_owned(), epoch);
        }
        if !fresh {
            return Heard::Unconfirmed;
        }
        // A sender never goes back to a run it left: whatever else of the old run arrives
        // from now on is a recording.
        if let (Some(old), Some(runs)) = (self.peers.get(node), self.runs.get_mut(node))
            && old.epoch != epoch
        {
            runs.close(old.epoch);
        }
        let peer = Peer {
            last_heard: now,
            epoch,
            hold_until: hold_until.filter(|_| phase == Phase::Active),
            phase,
        };
        let alive = self.alive_peer(&peer, now);
        self.peers.insert(node.to_owned(), peer);
        if alive == was_alive {
            Heard::Unchanged
        } else {
            Heard::Changed
        }
    }

    /// Whether `node` is alive at `now`.
    pub fn is_alive(&self, node: &str, now: Instant) -> bool {
        self.peers
            .get(node)
            .is_some_and(|p| self.alive_peer(p, now))
    }

    /// The run (epoch) of the last accepted heartbeat from `node`: the same after a silence
    /// means the peer lived through it (a partition), a newer one that it restarted.
    pub fn epoch(&self, node: &str) -> Option<u64> {
        self.peers.get(node).map(|p| p.epoch)
    }

    /// When the last accepted heartbeat from `node` arrived.
    pub fn last_heard(&self, node: &str) -> Option<Instant> {
        self.peers.get(node).map(|p| p.last_heard)
    }

    /// The peers alive at `now`.
    pub fn alive(&self, now: Instant) -> BTreeSet<String> {
        self.peers
            .iter()
            .filter(|(_, p)| self.alive_peer(p, now))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The next instant at which an alive peer would be declared dead if nothing more arrives:
    /// the one timer the driver needs.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.peers
            .values()
            .filter(|p| self.alive_peer(p, now))
            .map(|p| {
                let silent = p.last_heard + self.timeout;
                p.hold_until.map_or(silent, |h| silent.max(h))
            })
            .min()
    }
}

/// What changed in the alive set since the last look ([`Changes::look`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// The alive peers and this node, with their links.
    pub members: Members,
    /// Whether the members (who is alive, or an alive node's links) differ from the last look.
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
    last_links: BTreeMap<String, Links>,
    last_claims: BTreeMap<String, Claims>,
    /// The run (epoch) each lost peer was in when it was lost.
    lost_in: BTreeMap<String, u64>,
}

impl Changes {
    /// The alive set at `now` (with `me`, always alive to itself) with the `links` and
    /// `claims` each of them last said it has, and how that changed.
    pub fn look(
        &mut self,
        detector: &Detector,
        me: &str,
        links: &BTreeMap<String, Links>,
        claims: &BTreeMap<String, Claims>,
        now: Instant,
    ) -> View {
        let mut alive = detector.alive(now);
        alive.insert(me.to_owned());
        let silence = |gone: &str| {
            let silence = now.saturating_duration_since(detector.last_heard(gone)?);
            (silence >= detector.timeout).then_some(silence)
        };
        self.take(alive, links, claims, &|n| detector.epoch(n), &silence)
    }

    /// Takes `alive` (this node included) with what each said of its `links` and `claims`:
    /// `run` tells each node's run (the same after it was lost: it lived through a
    /// partition), `silence` how long a node that just died silently had been silent.
    pub fn take(
        &mut self,
        alive: BTreeSet<String>,
        links: &BTreeMap<String, Links>,
        claims: &BTreeMap<String, Claims>,
        run: &dyn Fn(&str) -> Option<u64>,
        silence: &dyn Fn(&str) -> Option<Duration>,
    ) -> View {
        let links: BTreeMap<String, Links> = links
            .iter()
            .filter(|(node, _)| alive.contains(*node))
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect();
        let claims: BTreeMap<String, Claims> = claims
            .iter()
            .filter(|(node, c)| alive.contains(*node) && !c.is_empty())
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect();
        let mut view = View {
            changed: alive != self.last_alive
                || links != self.last_links
                || claims != self.last_claims,
            ..View::default()
        };
        self.last_links.clone_from(&links);
        self.last_claims.clone_from(&claims);
        if alive != self.last_alive {
            for back in alive.difference(&self.last_alive) {
                if let (Some(lost), Some(current)) = (self.lost_in.remove(back), run(back)) {
                    view.rejoined |= lost == current;
                }
            }
            for gone in self.last_alive.difference(&alive) {
                if let Some(epoch) = run(gone) {
                    self.lost_in.insert(gone.clone(), epoch);
                }
                view.detected.extend(silence(gone));
            }
            self.last_alive.clone_from(&alive);
        }
        view.members = Members {
            alive,
            links,
            claims,
        };
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    /// The receiver's run in these tests; heartbeats echo it unless a test says otherwise.
    const ME: u64 = 0xfeed;

    #[test]
    fn a_silent_peer_dies_after_the_timeout_and_not_before() {
        let t0 = Instant::now();
        let mut d = Detector::new(100 * MS, ME);
        assert_eq!(
            d.heard("n1", 1, 1, ME, Phase::Active, None, t0),
            Heard::Changed
        );
        assert_eq!(
            d.heard("n1", 1, 2, ME, Phase::Active, None, t0 + 50 * MS),
            Heard::Unchanged
        );
        assert!(d.alive(t0 + 149 * MS).contains("n1"));
        assert_eq!(d.next_deadline(t0 + 60 * MS), Some(t0 + 150 * MS));
        assert!(!d.alive(t0 + 150 * MS).contains("n1"));
        assert_eq!(d.next_deadline(t0 + 150 * MS), None);
        assert_eq!(
            d.heard("n1", 1, 3, ME, Phase::Active, None, t0 + 200 * MS),
            Heard::Changed
        );
    }

    #[test]
    fn a_restart_with_any_clock_is_welcome() {
        // Epochs are random: a run that drew a "smaller" one than the last (or whose clock
        // went back, which no longer matters) is heard like any other.
        let t0 = Instant::now();
        let mut d = Detector::new(180 * MS, ME);
        d.heard("b", u64::MAX - 1, 1, ME, Phase::Active, None, t0);
        let later = t0 + Duration::from_secs(3600);
        assert!(!d.alive(later).contains("b"));
        assert_eq!(
            d.heard("b", 3, 1, ME, Phase::Active, None, later),
            Heard::Changed
        );
        for i in 2..100u64 {
            let at = later + Duration::from_millis(50 * i);
            assert_eq!(
                d.heard("b", 3, i, ME, Phase::Active, None, at),
                Heard::Unchanged
            );
        }
    }

    #[test]
    fn a_recording_from_before_this_run_proves_nothing() {
        // Recorded while this receiver ran as epoch 0xaaaa, played to it after a restart (or
        // to a node that just joined): the stream echoes another run, so "b" stays dead.
        let t0 = Instant::now();
        let mut d = Detector::new(180 * MS, ME);
        for seq in 1..=1000u64 {
            let at = t0 + Duration::from_millis(50 * seq);
            assert_eq!(
                d.heard("b", 7, seq, 0xaaaa, Phase::Active, None, at),
                Heard::Unconfirmed
            );
            assert!(!d.alive(at).contains("b"));
        }
        // What it taught is only what to echo: the real "b", once it echoes this run, counts.
        assert_eq!(d.echo_for("b"), 7);
        assert_eq!(
            d.heard(
                "b",
                9,
                1,
                ME,
                Phase::Active,
                None,
                t0 + Duration::from_secs(60)
            ),
            Heard::Changed
        );
        assert_eq!(d.echo_for("b"), 9);
        // While "b" is alive, a replay of the old run cannot change what is echoed to it.
        d.heard(
            "b",
            7,
            5000,
            0xaaaa,
            Phase::Active,
            None,
            t0 + Duration::from_secs(60),
        );
        assert_eq!(d.echo_for("b"), 9);
    }

    #[test]
    fn a_recording_from_this_run_cannot_outlive_the_sender() {
        // Every heartbeat of the recording was heard when it was sent: played back after the
        // sender died, each is a repeat, and the sender dies one timeout after its last one.
        let t0 = Instant::now();
        let mut d = Detector::new(180 * MS, ME);
        for seq in 1..=20u64 {
            d.heard(
                "b",
                7,
                seq,
                ME,
                Phase::Active,
                None,
                t0 + 50 * MS * seq as u32,
            );
        }
        let died = t0 + 50 * MS * 20;
        for seq in 1..=20u64 {
            let at = died + MS * seq as u32;
            assert_eq!(
                d.heard("b", 7, seq, ME, Phase::Active, None, at),
                Heard::Replayed
            );
        }
        assert!(!d.alive(died + 180 * MS).contains("b"));
    }

    #[test]
    fn replayed_heartbeats_are_refused_even_across_restarts() {
        let t0 = Instant::now();
        let mut d = Detector::new(100 * MS, ME);
        d.heard("n1", 5, 10, ME, Phase::Active, None, t0);
        assert_eq!(
            d.heard("n1", 5, 10, ME, Phase::Active, None, t0 + MS),
            Heard::Replayed
        );
        assert_eq!(
            d.heard("n1", 5, 9, ME, Phase::Active, None, t0 + MS),
            Heard::Replayed
        );
        // The sender restarted: a newer epoch starts its sequence again.
        assert_eq!(
            d.heard("n1", 6, 1, ME, Phase::Active, None, t0 + 2 * MS),
            Heard::Unchanged
        );
        // A heartbeat recorded before that restart cannot bring anything back.
        assert_eq!(
            d.heard("n1", 5, 11, ME, Phase::Active, None, t0 + 3 * MS),
            Heard::Replayed
        );
        // A replay does not refresh: the peer still dies on time.
        assert!(!d.alive(t0 + 102 * MS).contains("n1"));
    }

    #[test]
    fn a_graceful_restart_holds_the_peer_alive_until_the_stated_time() {
        let t0 = Instant::now();
        let mut d = Detector::new(100 * MS, ME);
        d.heard("n1", 1, 1, ME, Phase::Active, Some(t0 + 5_000 * MS), t0);
        assert!(d.alive(t0 + 4_000 * MS).contains("n1"));
        assert_eq!(d.next_deadline(t0), Some(t0 + 5_000 * MS));
        assert!(!d.alive(t0 + 5_000 * MS).contains("n1"));
    }

    #[test]
    fn peers_are_independent() {
        let t0 = Instant::now();
        let mut d = Detector::new(100 * MS, ME);
        d.heard("n1", 1, 1, ME, Phase::Active, None, t0);
        d.heard("n2", 1, 1, ME, Phase::Active, None, t0 + 80 * MS);
        let alive = d.alive(t0 + 120 * MS);
        assert!(!alive.contains("n1") && alive.contains("n2"));
        assert_eq!(d.next_deadline(t0 + 10 * MS), Some(t0 + 100 * MS));
    }

    #[test]
    fn a_leaving_peer_is_dead_at_once_and_a_replayed_goodbye_changes_nothing() {
        let t0 = Instant::now();
        let mut d = Detector::new(Duration::from_millis(180), ME);
        d.heard("b", 1, 1, ME, Phase::Active, None, t0);
        assert!(d.alive(t0).contains("b"));
        assert_eq!(
            d.heard("b", 1, 2, ME, Phase::Leaving, None, t0),
            Heard::Changed
        );
        assert!(!d.alive(t0).contains("b"));
        // The same goodbye replayed after b came back must not kill it again.
        d.heard("b", 2, 1, ME, Phase::Active, None, t0);
        assert_eq!(
            d.heard("b", 1, 2, ME, Phase::Leaving, None, t0),
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
        let mut d = Detector::new(Duration::from_millis(120), ME);
        for (i, &(at, peer, epoch, seq, phase, want)) in steps.iter().enumerate() {
            let now = t0 + Duration::from_millis(at);
            d.heard(peer, epoch, seq, ME, phase, None, now);
            let got: Vec<String> = d.alive(now).into_iter().collect();
            assert_eq!(got, want, "step {i}: {peer} {phase:?} at {at} ms");
        }
        // Between the steps: at 250 ms b had been silent 190 ms > 120 ms.
        let mut flap = Detector::new(Duration::from_millis(120), ME);
        flap.heard("b", 1, 2, ME, Active, None, t0 + Duration::from_millis(60));
        assert!(!flap.alive(t0 + Duration::from_millis(250)).contains("b"));
    }

    #[test]
    fn a_hold_only_counts_for_an_active_peer() {
        let t0 = Instant::now();
        let mut d = Detector::new(100 * MS, ME);
        d.heard("n1", 1, 1, ME, Phase::Joining, Some(t0 + 5_000 * MS), t0);
        assert!(d.alive(t0 + MS).is_empty());
        assert_eq!(d.next_deadline(t0), None);
    }

    #[test]
    fn a_peer_back_in_the_run_it_was_lost_in_rejoined_and_a_restarted_one_did_not() {
        let t0 = Instant::now();
        let mut d = Detector::new(100 * MS, ME);
        let mut c = Changes::default();
        d.heard("b", 1, 1, ME, Phase::Active, None, t0);
        d.heard("c", 1, 1, ME, Phase::Active, None, t0);
        let first = c.look(&d, "a", &BTreeMap::new(), &BTreeMap::new(), t0);
        assert!(first.changed && !first.rejoined);
        assert_eq!(first.members.alive.len(), 3);
        assert!(
            !c.look(&d, "a", &BTreeMap::new(), &BTreeMap::new(), t0 + 10 * MS)
                .changed
        );

        // Both fall silent; the loss is seen 150 ms after the last heartbeat.
        let lost = c.look(&d, "a", &BTreeMap::new(), &BTreeMap::new(), t0 + 150 * MS);
        assert!(lost.changed);
        assert_eq!(lost.members.alive, BTreeSet::from(["a".to_owned()]));
        assert_eq!(lost.detected, vec![150 * MS, 150 * MS]);

        // b comes back in the same run (a partition healed); c restarted (a new epoch).
        d.heard("c", 2, 1, ME, Phase::Active, None, t0 + 200 * MS);
        let restarted = c.look(&d, "a", &BTreeMap::new(), &BTreeMap::new(), t0 + 200 * MS);
        assert!(restarted.changed && !restarted.rejoined);
        d.heard("b", 1, 2, ME, Phase::Active, None, t0 + 210 * MS);
        let healed = c.look(&d, "a", &BTreeMap::new(), &BTreeMap::new(), t0 + 210 * MS);
        assert!(healed.changed && healed.rejoined);
        assert!(healed.detected.is_empty());
    }

    #[test]
    fn a_goodbye_is_not_a_detection() {
        let t0 = Instant::now();
        let mut d = Detector::new(100 * MS, ME);
        let mut c = Changes::default();
        d.heard("b", 1, 1, ME, Phase::Active, None, t0);
        c.look(&d, "a", &BTreeMap::new(), &BTreeMap::new(), t0);
        d.heard("b", 1, 2, ME, Phase::Leaving, None, t0 + 20 * MS);
        let view = c.look(&d, "a", &BTreeMap::new(), &BTreeMap::new(), t0 + 20 * MS);
        assert!(view.changed && view.detected.is_empty());
    }
}

#[cfg(test)]
mod links_tests {
    use super::*;
    use crate::membership::links::Link;

    #[test]
    fn an_alive_nodes_links_changing_is_a_change_and_a_dead_nodes_is_not() {
        let ms = Duration::from_millis(1);
        let t0 = Instant::now();
        let mut d = Detector::new(100 * ms, 7);
        let mut c = Changes::default();
        let up = Links::new([Link {
            name: "eth1".into(),
            nets: vec!["10.0.1.0/24".parse().expect("net")],
        }]);
        let mut links = BTreeMap::from([("a".to_owned(), up.clone()), ("b".to_owned(), up)]);
        d.heard("b", 1, 1, 7, Phase::Active, None, t0);
        let first = c.look(&d, "a", &links, &BTreeMap::new(), t0);
        assert!(first.changed);
        assert_eq!(first.members.links.len(), 2);
        assert!(!c.look(&d, "a", &links, &BTreeMap::new(), t0 + ms).changed);
        // b's VIP link loses carrier: it says so, and that is a change for the election.
        links.insert("b".into(), Links::default());
        let cut = c.look(&d, "a", &links, &BTreeMap::new(), t0 + 2 * ms);
        assert!(cut.changed);
        assert_eq!(cut.members.links.get("b"), Some(&Links::default()));
        // A dead node's links are not the election's business.
        let dead = c.look(&d, "a", &links, &BTreeMap::new(), t0 + 200 * ms);
        assert!(dead.changed && !dead.members.links.contains_key("b"));
        links.remove("b");
        assert!(
            !c.look(&d, "a", &links, &BTreeMap::new(), t0 + 201 * ms)
                .changed
        );
    }
}
