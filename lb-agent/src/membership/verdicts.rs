//! Failure verdicts past the full mesh ([`super::ring`]): a node is judged by its monitors
//! alone, and the group learns their verdicts, so each node sends and receives O(k)
//! heartbeats per interval however large the group, and still every node holds the same view.
//!
//! - A monitor that has not heard a subject for the failure timeout **suspects** it and tells
//!   the subject's other monitors. It **confirms** the failure when another monitor suspects it
//!   too, or when no other monitor is left alive: one monitor's lost datagrams, or its own
//!   trouble, move nothing. Monitors hear the same heartbeats, so they suspect within a
//!   datagram's flight of each other, and detection stays within the failure timeout plus two
//!   one-way delays.
//! - A confirmed failure is a **verdict** sent to every member (and again at the next two
//!   ticks: UDP may drop one). So is a return: a monitor that hears a subject it holds dead,
//!   or in a new run, says so.
//! - Verdicts are ordered per subject by its run and heartbeat number: a run's verdict is
//!   superseded by a later heartbeat number of the same run; a node alive in another run has
//!   restarted, and the run known before is closed for good (a node never goes back to a run
//!   it left); a failure of another run than the one known is an old one. So late or repeated
//!   verdicts change nothing.
//! - A member no verdict speaks of is alive. A node just started knows nothing: it heartbeats
//!   every member until a monitor that heard it sends it everything it knows (a **sync**).
//! - Heartbeats carry a digest of what the sender holds; a receiver that holds something else
//!   sends it a sync (at most once per [`SYNC_EVERY`] and peer). A node that learns it is held
//!   dead **refutes** it with a verdict of its own current heartbeat, which supersedes any
//!   verdict about its run. Nodes also heartbeat their nearest successors whether alive or
//!   not, so after a partition the two sides hear each other again, exchange syncs, and
//!   converge.
//!
//! - What a node **says** of itself (its phase, links and claims: opaque bytes here) is
//!   numbered within its run and sent by the node to every member when it changes (and again
//!   at the next two ticks), and travels in syncs; the digest covers it, so a member that
//!   missed a change is synced like one that missed a verdict. A saying of another run than
//!   the one held waits until a verdict or a sync makes that run the subject's.
//!
//! Pure: time is passed in, messages go out as values; the UDP edge signs and carries them.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use super::ring::Ring;

/// Broadcasts of a verdict: the first and two repeats, one tick apart.
const SENDS: u8 = 3;
/// Closed runs remembered per subject; older ones are forgotten.
const CLOSED_KEPT: usize = 8;
/// The least time between two syncs sent to one peer that holds something else.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);

/// What is held true of a node: its run, the last heartbeat number vouched for, and whether
/// it has been silent since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub run: u64,
    pub seq: u64,
    pub dead: bool,
}

/// What a node says of itself, the `version`th time in its run `run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Said {
    pub run: u64,
    pub version: u64,
    pub body: Vec<u8>,
}

/// What monitors tell each other and the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The sender, a monitor of `subject`, has not heard it since `status.seq`.
    Suspect { subject: String, status: Status },
    /// A confirmed failure or a return, for every member.
    Verdict { subject: String, status: Status },
    /// What `subject` says of itself, from `subject` or relayed in a sync.
    Says { subject: String, said: Said },
    /// Everything the sender knows, for a node that just started or holds something else.
    Sync {
        statuses: Vec<(String, Status)>,
        said: Vec<(String, Said)>,
    },
}

/// A message and its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub to: String,
    pub message: Message,
}

#[derive(Clone, Debug)]
struct Heard {
    at: Instant,
    run: u64,
    seq: u64,
}

/// One node's verdicts.
#[derive(Clone, Debug)]
pub struct Verdicts {
    me: String,
    ring: Ring,
    timeout: Duration,
    started: Instant,
    known: BTreeMap<String, Status>,
    /// The members `known` holds dead (kept beside it: every tick asks).
    dead: BTreeSet<String>,
    closed: BTreeMap<String, Vec<u64>>,
    /// First-hand: the last heartbeat of each member heard.
    heard: BTreeMap<String, Heard>,
    /// Since when this node watches each subject it watches: a new charge gets one timeout
    /// before its silence counts.
    watching: BTreeMap<String, Instant>,
    /// Subjects this node suspects, and the other monitors that said they do.
    suspects: BTreeMap<String, BTreeSet<String>>,
    /// The monitors told of each suspicion: a monitor that replaces a dead one is told too.
    suspect_sent: BTreeMap<String, BTreeSet<String>>,
    /// Suspicions heard from other monitors of subjects this node does not (yet) suspect.
    told: BTreeMap<String, BTreeSet<String>>,
    /// The latest heartbeat of each suspect any monitor vouched for: a confirmation says that
    /// one, or a monitor that heard more would refuse it (a new monitor has heard little).
    last_vouched: BTreeMap<String, Status>,
    /// Verdicts to send again, and how many sends are left.
    repeat: Vec<(String, Status, u8)>,
    /// Whether this node has learnt what the group knows (or started it).
    synced: bool,
    /// This node's own run and last heartbeat number, to refute a verdict of its death.
    run: u64,
    seq: u64,
    /// When a sync last went to each peer whose digest differed.
    synced_to: BTreeMap<String, Instant>,
    /// Whether this node learnt it is held dead, and says otherwise at the next tick.
    refute: bool,
    /// What each member (this one included) last said of itself, in the run held for it.
    said: BTreeMap<String, Said>,
    /// A saying of a run not (yet) held for its subject, the latest of each.
    early: BTreeMap<String, Said>,
    /// Sends of this node's latest saying left.
    say_repeat: u8,
    /// How many times a member alive here came to be held dead.
    failures: u64,
    /// [`Self::digest`] as last computed; emptied by every change to `known` or `said`
    /// (every datagram asks for it, and it reads every member).
    digest: std::cell::Cell<Option<u64>>,
}

impl Verdicts {
    /// The verdicts of `me` among `members` (`me` included), started at `now`. `alone`: this
    /// node does not wait for a sync (the first of its group, or a test).
    pub fn new(
        me: &str,
        run: u64,
        members: Ring,
        timeout: Duration,
        now: Instant,
        alone: bool,
    ) -> Self {
        Self {
            me: me.to_owned(),
            ring: members,
            timeout,
            started: now,
            known: BTreeMap::new(),
            dead: BTreeSet::new(),
            closed: BTreeMap::new(),
            heard: BTreeMap::new(),
            watching: BTreeMap::new(),
            suspects: BTreeMap::new(),
            suspect_sent: BTreeMap::new(),
            told: BTreeMap::new(),
            last_vouched: BTreeMap::new(),
            repeat: Vec::new(),
            synced: alone,
            run,
            seq: 0,
            synced_to: BTreeMap::new(),
            refute: false,
            failures: 0,
            said: BTreeMap::new(),
            early: BTreeMap::new(),
            say_repeat: 0,
            digest: std::cell::Cell::new(None),
        }
    }

    /// This node says `body` of itself from now on: sent to every member now and at the next
    /// two ticks, and in syncs.
    pub fn say(&mut self, body: Vec<u8>) -> Vec<Outgoing> {
        let version = self.said.get(&self.me).map_or(1, |s| s.version + 1);
        let said = Said {
            run: self.run,
            version,
            body,
        };
        self.said.insert(self.me.clone(), said.clone());
        self.digest.set(None);
        self.say_repeat = SENDS - 1;
        self.broadcast_said(said)
    }

    fn broadcast_said(&self, said: Said) -> Vec<Outgoing> {
        self.others()
            .map(|to| Outgoing {
                to: to.to_owned(),
                message: Message::Says {
                    subject: self.me.clone(),
                    said: said.clone(),
                },
            })
            .collect()
    }

    /// What each member last said of itself (in the run held for it); a member with nothing
    /// here has said nothing this node heard yet.
    pub fn said(&self) -> &BTreeMap<String, Said> {
        &self.said
    }

    /// Takes what `subject` says if it is newer than what is held; `true` when it was.
    fn learn_said(&mut self, subject: &str, said: Said) -> bool {
        if subject == self.me || !self.ring.contains(subject) {
            return false;
        }
        if self
            .closed
            .get(subject)
            .is_some_and(|c| c.contains(&said.run))
        {
            return false;
        }
        let held_run = self
            .known
            .get(subject)
            .map(|s| s.run)
            .or_else(|| self.said.get(subject).map(|s| s.run));
        if held_run.is_some_and(|r| r != said.run) {
            // Another run: it may be the subject's next one (its return is on the way) or an
            // old one reported late; it waits for a verdict to tell.
            if self
                .early
                .get(subject)
                .is_none_or(|e| e.run != said.run || said.version > e.version)
            {
                self.early.insert(subject.to_owned(), said);
            }
            return false;
        }
        if self
            .said
            .get(subject)
            .is_some_and(|cur| cur.version >= said.version)
        {
            return false;
        }
        self.said.insert(subject.to_owned(), said);
        self.digest.set(None);
        true
    }

    /// The subject is held in `run` now: what it said in another run waits aside (a sync may
    /// bring an older run before the verdict of the newer one), and what it said early in
    /// this one counts.
    fn run_changed(&mut self, subject: &str, run: u64) {
        if self.said.get(subject).is_some_and(|s| s.run != run)
            && let Some(other) = self.said.remove(subject)
        {
            self.digest.set(None);
            if !self.early.contains_key(subject) {
                self.early.insert(subject.to_owned(), other);
            }
        }
        if let Some(early) = self.early.remove(subject) {
            if early.run == run {
                self.learn_said(subject, early);
            } else {
                self.early.insert(subject.to_owned(), early);
            }
        }
    }

    /// This node's heartbeat number `seq` goes out now.
    pub fn beat(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// A digest of what this node holds (the failures, and who said what), for its
    /// heartbeats: equal digests, equal views.
    pub fn digest(&self) -> u64 {
        if let Some(d) = self.digest.get() {
            return d;
        }
        let h = self.digest_of_all();
        self.digest.set(Some(h));
        h
    }

    /// The digest read afresh from every member held.
    pub(super) fn digest_of_all(&self) -> u64 {
        // FNV-1a over the statuses in name order: stable across processes and versions.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for (n, s) in self.known.iter().filter(|(_, s)| s.dead) {
            eat(n.as_bytes());
            eat(&[0]);
            eat(&s.run.to_le_bytes());
            eat(&s.seq.to_le_bytes());
        }
        eat(&[1]);
        for (n, s) in &self.said {
            eat(n.as_bytes());
            eat(&[0]);
            eat(&s.run.to_le_bytes());
            eat(&s.version.to_le_bytes());
        }
        h
    }

    /// The members held dead.
    pub fn dead(&self) -> &BTreeSet<String> {
        &self.dead
    }

    /// The members held alive (this node included).
    pub fn alive(&self) -> BTreeSet<String> {
        self.ring
            .nodes()
            .filter(|n| !self.dead.contains(*n))
            .map(str::to_owned)
            .collect()
    }

    /// How many times a member held alive here came to be held dead (each one moves VIPs).
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Whether this node has what the group knows.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Whom to heartbeat now: this node's monitors, its nearest successors alive or not (so
    /// a healed partition is heard), and the members it monitors (a heartbeat proves life
    /// only when it echoes the receiver's run, [`super::detector`], so monitor and subject
    /// hear each other); or every member until it is synced (it does not know which of its
    /// successors are alive to hear it).
    pub fn targets(&self) -> Vec<String> {
        if !self.synced && !self.ring.mesh() {
            return self.others().map(str::to_owned).collect();
        }
        let mut out: BTreeSet<&str> = self
            .ring
            .monitors_of(&self.me, &self.dead)
            .into_iter()
            .collect();
        out.extend(self.ring.monitors_of(&self.me, &BTreeSet::new()));
        out.extend(self.ring.watched_by(&self.me, &self.dead));
        out.into_iter().map(str::to_owned).collect()
    }

    /// The members are `ring` from now on (the configuration changed): what is held of those
    /// still members stays; the others are forgotten.
    pub fn set_ring(&mut self, ring: Ring) {
        if ring == self.ring {
            return;
        }
        let keep = |n: &String| ring.contains(n);
        self.known.retain(|n, _| keep(n));
        self.dead.retain(|n| keep(n));
        self.closed.retain(|n, _| keep(n));
        self.heard.retain(|n, _| keep(n));
        self.watching.retain(|n, _| keep(n));
        self.suspects.retain(|n, _| keep(n));
        self.suspect_sent.retain(|n, _| keep(n));
        self.told.retain(|n, _| keep(n));
        self.last_vouched.retain(|n, _| keep(n));
        self.repeat.retain(|(n, _, _)| keep(n));
        self.synced_to.retain(|n, _| keep(n));
        self.said.retain(|n, _| keep(n));
        self.early.retain(|n, _| keep(n));
        self.ring = ring;
        self.digest.set(None);
    }

    /// The members.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The run held for `node` (by a verdict, a sync or a heartbeat), if any.
    pub fn run_of(&self, node: &str) -> Option<u64> {
        self.known.get(node).map(|s| s.run)
    }

    fn watches(&self, subject: &str) -> bool {
        self.ring
            .monitors_of(subject, &self.dead)
            .contains(&self.me.as_str())
    }

    fn others(&self) -> impl Iterator<Item = &str> {
        self.ring.nodes().filter(|n| *n != self.me)
    }

    /// Takes `status` of `subject` if it supersedes what is known; `true` when it did.
    fn learn(&mut self, subject: &str, status: Status) -> bool {
        if subject == self.me {
            if status.dead && status.run == self.run {
                self.refute = true;
            }
            return false;
        }
        if !self.ring.contains(subject) {
            return false;
        }
        let closed = self.closed.entry(subject.to_owned()).or_default();
        if closed.contains(&status.run) {
            return false;
        }
        let newer = match self.known.get(subject) {
            None => true,
            Some(cur) if cur.run == status.run => {
                status.seq > cur.seq || (status.seq == cur.seq && status.dead && !cur.dead)
            }
            // Runs are not ordered. A failure of another run than the one known says nothing
            // of it (most likely an earlier run, reported late); a node alive in another run
            // has restarted since, and the known one is over.
            Some(_) if status.dead => false,
            Some(cur) => {
                closed.push(cur.run);
                if closed.len() > CLOSED_KEPT {
                    closed.remove(0);
                }
                true
            }
        };
        if newer {
            let was_dead = self.known.get(subject).is_some_and(|s| s.dead);
            let run_before = self.known.get(subject).map(|s| s.run);
            if status.dead && !was_dead {
                self.failures += 1;
            }
            self.known.insert(subject.to_owned(), status);
            if status.dead || was_dead {
                // The digest covers failures only, not every heartbeat of the living.
                self.digest.set(None);
            }
            if status.dead {
                self.dead.insert(subject.to_owned());
            } else {
                self.dead.remove(subject);
            }
            self.suspects.remove(subject);
            self.suspect_sent.remove(subject);
            self.told.remove(subject);
            self.last_vouched.remove(subject);
            if run_before != Some(status.run) {
                self.run_changed(subject, status.run);
            }
        }
        newer
    }

    /// A verdict for every member, sent now and repeated at the next ticks.
    fn announce(&mut self, subject: &str, status: Status) -> Vec<Outgoing> {
        self.repeat.retain(|(s, _, _)| s != subject);
        self.repeat.push((subject.to_owned(), status, SENDS - 1));
        self.broadcast(subject, status)
    }

    fn broadcast(&self, subject: &str, status: Status) -> Vec<Outgoing> {
        self.others()
            .map(|to| Outgoing {
                to: to.to_owned(),
                message: Message::Verdict {
                    subject: subject.to_owned(),
                    status,
                },
            })
            .collect()
    }

    /// An authentic, fresh heartbeat from `from` (its run and number, and the digest of what
    /// it holds), at `now`.
    pub fn heartbeat(
        &mut self,
        from: &str,
        run: u64,
        seq: u64,
        digest: u64,
        now: Instant,
    ) -> Vec<Outgoing> {
        if from == self.me || !self.ring.contains(from) {
            return Vec::new();
        }
        let mut out = Vec::new();
        if self.synced
            && digest != self.digest()
            && self
                .synced_to
                .get(from)
                .is_none_or(|t| now.saturating_duration_since(*t) >= SYNC_EVERY)
        {
            self.synced_to.insert(from.to_owned(), now);
            out.push(self.sync(from));
        }
        let newer = self
            .heard
            .get(from)
            .is_none_or(|h| h.run != run || seq > h.seq);
        if !newer {
            return out;
        }
        let first = self.heard.get(from).is_none_or(|h| h.run != run);
        self.heard
            .insert(from.to_owned(), Heard { at: now, run, seq });
        self.suspects.remove(from);
        self.suspect_sent.remove(from);
        self.told.remove(from);
        if !self.watches(from) {
            // Not this node's to judge (a node not yet synced heartbeats everyone).
            return out;
        }
        let status = Status {
            run,
            seq,
            dead: false,
        };
        let returned = match self.known.get(from) {
            None => false,
            Some(s) => s.dead || s.run != run,
        };
        if returned && self.learn(from, status) {
            out.extend(self.announce(from, status));
        } else if self.known.get(from).is_none_or(|s| s.run == run) {
            self.learn(from, status);
        }
        if first
            && !out
                .iter()
                .any(|o| matches!(o.message, Message::Sync { .. }))
        {
            // A node heard in a new run starts with nothing: tell it everything.
            out.push(self.sync(from));
        }
        out
    }

    fn sync(&self, to: &str) -> Outgoing {
        Outgoing {
            to: to.to_owned(),
            message: Message::Sync {
                statuses: self.known.iter().map(|(n, s)| (n.clone(), *s)).collect(),
                said: self
                    .said
                    .iter()
                    .map(|(n, s)| (n.clone(), s.clone()))
                    .collect(),
            },
        }
    }

    /// A message from `from`.
    pub fn receive(&mut self, from: &str, message: Message) -> Vec<Outgoing> {
        match message {
            Message::Verdict { subject, status } => {
                if self.learn(&subject, status) || !status.dead {
                    return Vec::new();
                }
                // A failure verdict older than what this node heard: if it is silent here too,
                // that is agreement, and the confirmation says the later heartbeat.
                match self.suspects.get_mut(&subject) {
                    Some(agree) => {
                        agree.insert(from.to_owned());
                        self.confirm(&subject)
                    }
                    None => Vec::new(),
                }
            }
            Message::Sync { statuses, said } => {
                for (subject, status) in statuses {
                    self.learn(&subject, status);
                }
                for (subject, said) in said {
                    self.learn_said(&subject, said);
                }
                self.synced = true;
                Vec::new()
            }
            Message::Says { subject, said } => {
                self.learn_said(&subject, said);
                Vec::new()
            }
            Message::Suspect { subject, status } => {
                let current = self
                    .known
                    .get(&subject)
                    .is_none_or(|s| !s.dead && (s.run != status.run || s.seq <= status.seq));
                let monitor = self.ring.monitors_of(&subject, &self.dead).contains(&from);
                if !current || !monitor {
                    return Vec::new();
                }
                self.vouched(&subject, status);
                match self.suspects.get_mut(&subject) {
                    Some(others) => {
                        others.insert(from.to_owned());
                    }
                    None => {
                        self.told
                            .entry(subject.clone())
                            .or_default()
                            .insert(from.to_owned());
                    }
                }
                self.confirm(&subject)
            }
        }
    }

    /// Remembers that a monitor heard `subject` up to `status.seq`.
    fn vouched(&mut self, subject: &str, status: Status) {
        let later = self
            .last_vouched
            .get(subject)
            .is_none_or(|v| v.run != status.run || status.seq > v.seq);
        if later {
            self.last_vouched.insert(subject.to_owned(), status);
        }
    }

    /// Confirms the failure of `subject` if this node suspects it and another monitor does
    /// too, or no other monitor is alive.
    fn confirm(&mut self, subject: &str) -> Vec<Outgoing> {
        let Some(agree) = self.suspects.get(subject) else {
            return Vec::new();
        };
        let dead = self.dead.clone();
        let others = self
            .ring
            .monitors_of(subject, &dead)
            .into_iter()
            .filter(|m| *m != self.me)
            .count();
        if agree.is_empty() && others > 0 {
            return Vec::new();
        }
        let mut status = self.silent_since(subject);
        if let Some(v) = self.last_vouched.get(subject)
            && (v.run != status.run && status.seq == 0 || v.run == status.run && v.seq > status.seq)
        {
            status = Status { dead: true, ..*v };
        }
        if !self.learn(subject, status) {
            return Vec::new();
        }
        self.announce(subject, status)
    }

    /// What this node can say of `subject` gone silent: the last heartbeat it heard or
    /// learnt of, now dead.
    fn silent_since(&self, subject: &str) -> Status {
        let heard = self.heard.get(subject).map(|h| Status {
            run: h.run,
            seq: h.seq,
            dead: true,
        });
        let known = self.known.get(subject).map(|k| Status { dead: true, ..*k });
        match (heard, known) {
            (Some(h), Some(k)) if k.run == h.run && k.seq > h.seq => k,
            (Some(h), _) => h,
            (None, Some(k)) => k,
            (None, None) => Status {
                run: 0,
                seq: 0,
                dead: true,
            },
        }
    }

    /// Tells the monitors of `subject` not yet told that this node suspects it.
    fn tell_monitors(&mut self, subject: &str, dead: &BTreeSet<String>) -> Vec<Outgoing> {
        let status = self
            .last_vouched
            .get(subject)
            .copied()
            .unwrap_or_else(|| self.silent_since(subject));
        let told = self.suspect_sent.entry(subject.to_owned()).or_default();
        let mut out = Vec::new();
        for m in self.ring.monitors_of(subject, dead) {
            if m != self.me && told.insert(m.to_owned()) {
                out.push(Outgoing {
                    to: m.to_owned(),
                    message: Message::Suspect {
                        subject: subject.to_owned(),
                        status,
                    },
                });
            }
        }
        out
    }

    /// The passage of time to `now` (call at least every heartbeat interval): silences become
    /// suspicions, suspicions confirmations, and verdicts are repeated.
    pub fn tick(&mut self, now: Instant) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if std::mem::take(&mut self.refute) {
            let me = self.me.clone();
            let status = Status {
                run: self.run,
                seq: self.seq,
                dead: false,
            };
            out.extend(self.broadcast(&me, status));
        }
        if self.say_repeat > 0 {
            self.say_repeat -= 1;
            if let Some(said) = self.said.get(&self.me).cloned() {
                out.extend(self.broadcast_said(said));
            }
        }
        for (subject, status, left) in std::mem::take(&mut self.repeat) {
            out.extend(self.broadcast(&subject, status));
            if left > 1 {
                self.repeat.push((subject, status, left - 1));
            }
        }
        out.extend(self.judge(now));
        out
    }

    /// When the first subject this node watches goes past the timeout if nothing more is
    /// heard: [`Self::judge`] is due then (the ticks alone would judge up to an interval late).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.ring
            .watched_by(&self.me, &self.dead)
            .into_iter()
            .filter(|s| !self.dead.contains(*s) && !self.suspects.contains_key(*s))
            .map(|s| {
                let since = self.watching.get(s).copied().unwrap_or(self.started);
                self.heard
                    .get(s)
                    .map_or(self.started, |h| h.at)
                    .max(since)
                    .max(self.started)
                    + self.timeout
            })
            .min()
    }

    /// Silences that reached the timeout by `now` become suspicions, and suspicions
    /// confirmations.
    pub fn judge(&mut self, now: Instant) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let dead = self.dead.clone();
        let watched: Vec<String> = self
            .ring
            .watched_by(&self.me, &dead)
            .into_iter()
            .map(str::to_owned)
            .collect();
        self.watching.retain(|s, _| watched.contains(s));
        for subject in watched {
            let since = *self.watching.entry(subject.clone()).or_insert(now);
            if dead.contains(&subject) {
                continue;
            }
            if self.suspects.contains_key(&subject) {
                out.extend(self.tell_monitors(&subject, &dead));
                continue;
            }
            let last = self
                .heard
                .get(&subject)
                .map_or(self.started, |h| h.at)
                .max(since)
                .max(self.started);
            if now.saturating_duration_since(last) < self.timeout {
                continue;
            }
            let others = self.told.remove(&subject).unwrap_or_default();
            self.suspects.insert(subject.clone(), others);
            let status = self.silent_since(&subject);
            self.vouched(&subject, status);
            out.extend(self.tell_monitors(&subject, &dead));
            out.extend(self.confirm(&subject));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> Verdicts {
        let ring = Ring::new((0..20).map(|i| format!("n{i:02}")));
        Verdicts::new(
            "n00",
            1,
            ring,
            Duration::from_millis(30),
            Instant::now(),
            true,
        )
    }

    fn says(run: u64, version: u64, body: &str) -> Message {
        Message::Says {
            subject: "n07".into(),
            said: Said {
                run,
                version,
                body: body.into(),
            },
        }
    }

    fn held(v: &Verdicts) -> Option<(u64, u64)> {
        v.said().get("n07").map(|s| (s.run, s.version))
    }

    #[test]
    fn sayings_are_ordered_within_a_run_and_wait_for_their_run() {
        let mut v = group();
        v.receive("n07", says(5, 2, "b"));
        v.receive("n07", says(5, 1, "a"));
        assert_eq!(held(&v), Some((5, 2)), "an older version changes nothing");
        // Another run: it waits until a verdict says the subject is in it.
        v.receive("n07", says(6, 1, "c"));
        assert_eq!(held(&v), Some((5, 2)));
        let alive = |run| Message::Verdict {
            subject: "n07".into(),
            status: Status {
                run,
                seq: 1,
                dead: false,
            },
        };
        v.receive("n08", alive(5));
        v.receive("n08", alive(6));
        assert_eq!(held(&v), Some((6, 1)));
        // The run left is closed: its sayings are old news.
        v.receive("n07", says(5, 9, "late"));
        assert_eq!(held(&v), Some((6, 1)));
    }

    #[test]
    fn a_sync_of_an_older_run_does_not_lose_what_the_newer_one_said() {
        let mut v = group();
        // The restarted node's first saying comes first, then a sync still holding its
        // previous run dead, then the verdict of its return.
        v.receive("n07", says(6, 1, "joining"));
        v.receive(
            "n08",
            Message::Sync {
                statuses: vec![(
                    "n07".into(),
                    Status {
                        run: 5,
                        seq: 40,
                        dead: true,
                    },
                )],
                said: Vec::new(),
            },
        );
        v.receive(
            "n08",
            Message::Verdict {
                subject: "n07".into(),
                status: Status {
                    run: 6,
                    seq: 3,
                    dead: false,
                },
            },
        );
        assert_eq!(held(&v), Some((6, 1)));
    }

    #[test]
    fn what_this_node_says_goes_to_everyone_three_times_and_moves_the_digest() {
        let mut v = group();
        let before = v.digest();
        let out = v.say(b"eth0 up".to_vec());
        assert_eq!(out.len(), 19);
        assert_ne!(v.digest(), before);
        let now = Instant::now();
        let repeats: usize = (0..4)
            .map(|_| {
                v.tick(now)
                    .iter()
                    .filter(|o| matches!(o.message, Message::Says { .. }))
                    .count()
            })
            .sum();
        assert_eq!(repeats, 2 * 19);
    }
}
