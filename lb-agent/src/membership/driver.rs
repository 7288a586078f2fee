//! The UDP edge of membership: this agent's heartbeats out, the peers' in. Every datagram is
//! decoded and checked (secret, sender, freshness) before it reaches the [`Detector`]; a
//! refused one is counted, and logged at most once per reason and ten seconds, so a flood of
//! forged datagrams is seen in the metrics without flooding the log.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use std::net::UdpSocket;
use tracing::{info, warn};

use super::{
    Rejected,
    claims::Claims,
    detector::{Changes, Detector, Heard, View},
    heartbeat::{Heartbeat, HeartbeatError, Phase},
    links::Links,
    messages::{self, MessageError, Saying},
    ring::{MESH_UP_TO, Ring},
    verdicts::{Outgoing, Verdicts},
};
use crate::metrics::AgentMetrics;

/// The shortest usable membership secret: the HMAC must not be trivially guessed.
const MIN_SECRET: usize = 16;
/// Peers remembered as speaking version 2 only: far more than any group; a flood of forged
/// names cannot grow it further (it takes authentic heartbeats anyway).
const MAX_PLAIN: usize = 4096;
/// Datagrams larger than this are not heartbeats.
const MAX_DATAGRAM: usize = 1500;

/// The placeholder of `deploy/examples/standalone/secret`: published with xdplb, so anyone
/// could sign heartbeats with it.
pub const EXAMPLE_SECRET: &[u8] = b"demo-only-secret-replace-me-with-random-bytes";

/// A usable membership secret, normalised the same way wherever it comes from (a file, a
/// Secret's data): surrounding ASCII whitespace (a file's trailing newline) is not part of it.
/// At least 16 bytes, and not the example's placeholder.
pub fn check_secret(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let bytes = bytes.trim_ascii();
    if bytes.len() < MIN_SECRET {
        return Err(format!(
            "the membership secret must be at least {MIN_SECRET} bytes (it has {})",
            bytes.len()
        ));
    }
    if bytes == EXAMPLE_SECRET {
        return Err(
            "the membership secret is the example's placeholder, published with xdplb; make one: head -c 32 /dev/urandom | base64 > secret"
                .into(),
        );
    }
    Ok(bytes.to_vec())
}

/// How long the previous secret is still accepted after the cluster's Secret changes (and
/// still used to sign): long enough for every agent to see the new one.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(120);

/// The membership keys: the current one, and during a rotation the previous one.
///
/// Agents see a new Secret seconds apart. Were each to switch at once, every node would
/// refuse the others' heartbeats during that window and, counting them dead, announce every
/// VIP. Instead each keeps signing with the previous key for [`ROTATION_OVERLAP`] while it
/// accepts both, so that all have the new one before any signs with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keys {
    current: Option<Vec<u8>>,
    previous: Option<(Vec<u8>, Instant)>,
}

impl Keys {
    pub fn new(current: Option<Vec<u8>>) -> Self {
        Self {
            current,
            previous: None,
        }
    }

    /// Takes `key` as the current one at `now`; a different one starts a rotation.
    pub fn rotate(&mut self, key: Vec<u8>, now: Instant) {
        match self.current.replace(key) {
            Some(old) if Some(&old) != self.current.as_ref() => {
                self.previous = Some((old, now + ROTATION_OVERLAP));
            }
            _ => {}
        }
    }

    fn overlap(&self, now: Instant) -> Option<&[u8]> {
        self.previous
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(k, _)| k.as_slice())
    }

    /// The key to sign with at `now`.
    pub fn signing(&self, now: Instant) -> Option<&[u8]> {
        self.overlap(now).or(self.current.as_deref())
    }

    /// The keys a heartbeat may be signed with at `now`, the current one first.
    pub fn verifying(&self, now: Instant) -> impl Iterator<Item = &[u8]> {
        self.current.as_deref().into_iter().chain(self.overlap(now))
    }

    /// `decode` under each key that may have signed at `now` until one does not refuse it
    /// as `unauthentic` (which it is when there is no key at all).
    fn open<T, E: PartialEq>(
        &self,
        now: Instant,
        decode: impl Fn(&[u8]) -> Result<T, E>,
        unauthentic: E,
    ) -> Result<T, E> {
        let mut decoded = None;
        for key in self.verifying(now) {
            let d = decode(key);
            let refused = d.as_ref().err() == Some(&unauthentic);
            decoded = Some(d);
            if !refused {
                break;
            }
        }
        decoded.unwrap_or(Err(unauthentic))
    }
}

/// This agent's heartbeats: one epoch per run, numbered within it.
struct Beats {
    node: String,
    epoch: u64,
    seq: u64,
}

impl Beats {
    fn next(&mut self, phase: Phase) -> Heartbeat {
        self.seq += 1;
        Heartbeat {
            node: self.node.clone(),
            epoch: self.epoch,
            seq: self.seq,
            echo: 0,
            hold_ms: 0,
            phase,
            links: None,
            claims_digest: 0,
            claims: None,
            claims_ack: 0,
            ring_digest: None,
        }
    }
}

/// Past the full mesh ([`super::ring`]): who is alive is what the ring's verdicts hold, and
/// what each node says of itself travels as a saying instead of in every heartbeat.
struct RingMode {
    verdicts: Verdicts,
    /// Peers whose heartbeats carry no ring digest (an agent from before the ring): they
    /// judge by their own heartbeats, so they get one every interval, and no ring message.
    legacy: BTreeSet<String>,
    /// The digest as of the last look: another one means the view may have changed.
    looked: Option<u64>,
    /// What this node says of itself (phase, links, claims) changed since it last said it.
    unsaid: bool,
    /// Each member's saying as last read, by (run, version): a look reads only new ones.
    read: BTreeMap<String, ((u64, u64), Option<Saying>)>,
}

/// A run's epoch: random, so that no clock (which may go back between runs) is involved, and
/// never 0, which a heartbeat echoes for "not heard yet".
fn random_epoch() -> u64 {
    crate::random::random_u64().max(1)
}

/// Logs a refused heartbeat at most once per reason and interval.
#[derive(Default)]
struct RejectLog {
    last: [Option<Instant>; 4],
}

impl RejectLog {
    fn should_log(&mut self, why: Rejected, now: Instant) -> bool {
        let slot = &mut self.last[why as usize];
        if slot.is_some_and(|t| now.duration_since(t) < Duration::from_secs(10)) {
            return false;
        }
        *slot = Some(now);
        true
    }
}

fn rejected_by(e: &HeartbeatError) -> Rejected {
    match e {
        HeartbeatError::Auth | HeartbeatError::Key => Rejected::Auth,
        _ => Rejected::Malformed,
    }
}

/// DSCP CS6 (network control) in the ToS / traffic class byte: switches and hosts that
/// prioritise queue heartbeats with routing protocols' traffic, ahead of bulk data.
pub const HEARTBEAT_TOS: u32 = 48 << 2;

/// The socket priority of heartbeats: TC_PRIO_INTERACTIVE, which the host's own default qdisc
/// (pfifo_fast) and `prio` put in their first band, ahead of bulk traffic leaving the node. (7,
/// TC_PRIO_CONTROL, lands in the same band but needs CAP_NET_ADMIN.)
pub const HEARTBEAT_PRIORITY: u32 = 6;

/// A socket that sends heartbeats to one peer: marked like the listening one, on a port of
/// its own. One per peer, because the kernel charges datagrams waiting for a peer's ARP or ND
/// answer to the socket that sent them: a peer whose address nobody answers (powered off)
/// would fill a shared socket's buffer and silence every heartbeat to the others.
fn sender_for(peer: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = match peer {
        SocketAddr::V4(_) => socket2::Domain::IPV4,
        SocketAddr::V6(_) => socket2::Domain::IPV6,
    };
    let s = bind_marked(domain, 0)?;
    s.connect(peer)?;
    Ok(s)
}

/// The sending socket for `peer`, opened at its first use.
fn sender(
    senders: &mut BTreeMap<SocketAddr, UdpSocket>,
    peer: SocketAddr,
) -> std::io::Result<&UdpSocket> {
    Ok(match senders.entry(peer) {
        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::btree_map::Entry::Vacant(v) => v.insert(sender_for(peer)?),
    })
}

/// The heartbeat socket on `port` of every address of `domain` (IPv6 dual-stack), its
/// datagrams marked [`HEARTBEAT_TOS`] for both families and queued at [`HEARTBEAT_PRIORITY`].
fn bind_marked(domain: socket2::Domain, port: u16) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Protocol, SockAddr, Socket, Type};
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    let addr: SocketAddr = if domain == socket2::Domain::IPV6 {
        s.set_only_v6(false)?;
        // IPv4 peers reached through a mapped address go out with the IPv4 ToS.
        s.set_tclass_v6(HEARTBEAT_TOS)?;
        (std::net::Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, port).into()
    };
    s.set_tos_v4(HEARTBEAT_TOS)?;
    // After the ToS, which resets the priority to the ToS's own.
    s.set_priority(HEARTBEAT_PRIORITY)?;
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(addr))?;
    Ok(s.into())
}

/// Membership's socket, detector and secret.
pub struct Membership {
    udp: UdpSocket,
    /// One sending socket per peer address ([`sender_for`]).
    senders: BTreeMap<SocketAddr, UdpSocket>,
    node: String,
    beats: Beats,
    detector: Detector,
    changes: Changes,
    /// What each node (this one included) last said of its links.
    links: BTreeMap<String, Links>,
    /// Peers whose last authentic heartbeat was version 2: they would refuse one with fields.
    plain: BTreeSet<String>,
    /// What each node (this one included) last said it claims, and the digest of it.
    claims: BTreeMap<String, (Claims, u64)>,
    /// The digest of this node's claims each peer last said it holds.
    acked: BTreeMap<String, u64>,
    /// Nothing is sent or accepted without one.
    keys: Keys,
    /// Why the cluster's secret is not usable, as last logged.
    secret_problem: Option<String>,
    reject_log: RejectLog,
    metrics: Arc<AgentMetrics>,
    buf: Vec<u8>,
    failure_timeout: Duration,
    /// Set while the group is larger than a full mesh.
    ring: Option<RingMode>,
    /// Each peer's address, as the last heartbeat round had them.
    addrs: BTreeMap<String, SocketAddr>,
    /// This node's phase, as its heartbeats (and sayings) say.
    phase: Phase,
}

impl Membership {
    /// Binds the heartbeat port (IPv6 and IPv4, or IPv4 alone where there is no IPv6); the
    /// socket does not block.
    pub fn bind(
        port: u16,
        node: &str,
        failure_timeout: Duration,
        secret: Option<Vec<u8>>,
        metrics: Arc<AgentMetrics>,
    ) -> std::io::Result<Self> {
        let epoch = random_epoch();
        let udp = match bind_marked(socket2::Domain::IPV6, port) {
            Ok(s) => s,
            Err(_) => bind_marked(socket2::Domain::IPV4, port)?,
        };
        Ok(Self {
            udp,
            senders: BTreeMap::new(),
            node: node.to_owned(),
            beats: Beats {
                node: node.to_owned(),
                epoch,
                seq: 0,
            },
            detector: Detector::new(failure_timeout, epoch),
            changes: Changes::default(),
            links: BTreeMap::new(),
            plain: BTreeSet::new(),
            claims: BTreeMap::new(),
            acked: BTreeMap::new(),
            keys: Keys::new(secret),
            secret_problem: None,
            reject_log: RejectLog::default(),
            metrics,
            buf: vec![0u8; MAX_DATAGRAM],
            failure_timeout,
            ring: None,
            addrs: BTreeMap::new(),
            phase: Phase::Joining,
        })
    }

    /// Whether the group is larger than a full mesh (the ring's verdicts decide who is alive).
    pub fn ring_mode(&self) -> bool {
        self.ring.is_some()
    }

    /// Enters, follows or leaves ring mode for the members `peers` and this node.
    fn follow_members(&mut self, peers: &[(String, SocketAddr)], now: Instant) {
        self.addrs = peers.iter().cloned().collect();
        // The peers and this node: a mesh up to MESH_UP_TO members.
        if peers.len() < MESH_UP_TO {
            if self.ring.take().is_some() {
                info!(members = peers.len() + 1, "membership: a full mesh again");
            }
            return;
        }
        let ring = Ring::new(
            peers
                .iter()
                .map(|(n, _)| n.clone())
                .chain([self.node.clone()]),
        );
        match &mut self.ring {
            Some(r) => {
                r.legacy.retain(|n| ring.contains(n));
                r.verdicts.set_ring(ring);
            }
            None => {
                info!(
                    members = ring.len(),
                    "membership: past {MESH_UP_TO} members, each node heartbeats its ring neighbours and failures are confirmed by a second monitor"
                );
                self.ring = Some(RingMode {
                    verdicts: Verdicts::new(
                        &self.node,
                        self.beats.epoch,
                        ring,
                        self.failure_timeout,
                        now,
                        false,
                    ),
                    legacy: BTreeSet::new(),
                    looked: None,
                    unsaid: true,
                    read: BTreeMap::new(),
                });
            }
        }
    }

    /// Notes that what this node says of itself changed (said at the next heartbeat).
    fn unsaid(&mut self) {
        if let Some(r) = &mut self.ring {
            r.unsaid = true;
        }
    }

    /// Says what this node says of itself if it changed since it last said it (ring mode).
    fn say_if_changed(&mut self) {
        let Some(r) = self.ring.as_mut().filter(|r| r.unsaid) else {
            return;
        };
        r.unsaid = false;
        let saying = Saying {
            phase: self.phase,
            links: self.links.get(&self.node).cloned().unwrap_or_default(),
            claims: self
                .claims
                .get(&self.node)
                .map(|(c, _)| c.clone())
                .unwrap_or_default(),
        };
        let out = r.verdicts.say(saying.encode());
        self.send_ring(out);
    }

    /// Sends the ring's messages (signed, a sync in as many datagrams as it takes) to the
    /// members that take them.
    fn send_ring(&mut self, out: Vec<Outgoing>) {
        let Some(r) = &self.ring else {
            return;
        };
        let Some(key) = self.keys.signing(Instant::now()) else {
            return;
        };
        for o in out {
            if r.legacy.contains(&o.to) {
                continue;
            }
            let Some(addr) = self.addrs.get(&o.to).copied() else {
                continue;
            };
            let datagrams = match messages::encode(&self.node, &o.message, key) {
                Ok(d) => d,
                Err(e) => {
                    if self
                        .reject_log
                        .should_log(Rejected::Malformed, Instant::now())
                    {
                        warn!(error = %e, "a ring message cannot be sent");
                    }
                    continue;
                }
            };
            let Ok(sender) = sender(&mut self.senders, addr) else {
                continue;
            };
            for d in datagrams {
                // Lost like any datagram: repeats and syncs make up for it.
                let _ = sender.send(&d);
            }
        }
    }

    /// Whether the ring's view may have changed since the last look.
    pub fn ring_moved(&self) -> bool {
        self.ring
            .as_ref()
            .is_some_and(|r| r.looked != Some(r.verdicts.digest()))
    }

    /// Checks and takes a ring message of `n` bytes in the buffer; whether the view may have
    /// changed.
    fn take_message(&mut self, n: usize, from: SocketAddr) -> bool {
        let now = Instant::now();
        let Some(datagram) = self.buf.get(..n) else {
            return false;
        };
        let decoded = self.keys.open(
            now,
            |key| messages::decode(datagram, key),
            MessageError::Auth,
        );
        let (sender, message) = match decoded {
            Ok(m) => m,
            Err(e) => {
                let why = match e {
                    MessageError::Auth | MessageError::Key => Rejected::Auth,
                    _ => Rejected::Malformed,
                };
                self.metrics.rejected(why);
                if self.reject_log.should_log(why, now) {
                    warn!(%from, error = %e, "ring message refused (counted in xdplb_membership_heartbeats_rejected_total; logged once per 10 s)");
                }
                return false;
            }
        };
        let Some(r) = &mut self.ring else {
            // A full mesh here (this node's configuration lists fewer nodes): nothing to do
            // with verdicts.
            return false;
        };
        if sender == self.node || !r.verdicts.ring().contains(&sender) {
            self.metrics.rejected(Rejected::Replay);
            return false;
        }
        let out = r.verdicts.receive(&sender, message);
        self.send_ring(out);
        self.ring_moved()
    }

    /// Takes the secret the cluster holds (`Err`: why there is none usable), logging each new
    /// problem once.
    pub fn follow_secret(&mut self, from_cluster: Result<Vec<u8>, String>) {
        match from_cluster {
            Ok(s) => {
                self.keys.rotate(s, Instant::now());
                self.secret_problem = None;
            }
            Err(e) => {
                if self.secret_problem.as_deref() != Some(&e) {
                    warn!(problem = %e, "no usable membership secret: heartbeats neither sent nor accepted");
                }
                self.secret_problem = Some(e);
            }
        }
    }

    /// This node's announcing links with carrier, as its heartbeats say from now on; `true`
    /// when they changed (a heartbeat is then worth sending at once).
    pub fn set_links(&mut self, links: Links) -> bool {
        let changed = self.links.insert(self.node.clone(), links.clone()) != Some(links);
        if changed {
            self.unsaid();
        }
        changed
    }

    /// The non-revertive VIPs this node holds, as its heartbeats say from now on; `true` when
    /// they changed.
    pub fn set_claims(&mut self, claims: Claims) -> bool {
        let digest = claims.digest();
        let entry = (claims, digest);
        let changed = self
            .claims
            .insert(self.node.clone(), entry.clone())
            .as_ref()
            != Some(&entry);
        if changed {
            self.unsaid();
        }
        changed
    }

    /// The socket, for the thread's poll.
    pub fn socket(&self) -> &UdpSocket {
        &self.udp
    }

    /// The next instant a peer alive now is declared dead if nothing more arrives.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        match &self.ring {
            Some(r) => r.verdicts.next_deadline(),
            None => self.detector.next_deadline(now),
        }
    }

    /// Signs a heartbeat in `phase` and sends it to every peer; returns the peers it could not
    /// be sent to (a full send buffer included: the socket does not block). Nothing is sent
    /// without a secret.
    pub fn beat(
        &mut self,
        peers: &[(String, SocketAddr)],
        phase: Phase,
    ) -> Vec<(SocketAddr, std::io::Error)> {
        let now = Instant::now();
        self.follow_members(peers, now);
        if self.phase != phase {
            self.phase = phase;
            self.unsaid();
        }
        self.say_if_changed();
        let mut hb = self.beats.next(phase);
        let mut failed = Vec::new();
        let Some(key) = self.keys.signing(now) else {
            return failed;
        };
        self.senders
            .retain(|addr, _| peers.iter().any(|(_, a)| a == addr));
        let targets: Option<BTreeSet<String>> = self.ring.as_mut().map(|r| {
            r.verdicts.beat(hb.seq);
            hb.ring_digest = Some(r.verdicts.digest());
            let mut t: BTreeSet<String> = r.verdicts.targets().into_iter().collect();
            t.extend(r.legacy.iter().cloned());
            t
        });
        for (node, addr) in peers {
            if targets.as_ref().is_some_and(|t| !t.contains(node)) {
                continue;
            }
            // Signed for each peer: each gets its own run echoed.
            hb.echo = self.detector.echo_for(node);
            hb.links = match self.plain.contains(node) {
                true => None,
                false => self.links.get(&self.node).cloned(),
            };
            let (mine, digest) = self.claims.get(&self.node).cloned().unwrap_or_default();
            hb.claims_digest = digest;
            hb.claims_ack = self.claims.get(node).map_or(0, |(_, d)| *d);
            // The list only to a peer that has not got it: once after a change, and to one
            // that just started (it acknowledges nothing yet).
            hb.claims = (digest != 0 && self.acked.get(node) != Some(&digest)).then_some(mine);
            let Ok(datagram) = hb.encode(key) else {
                return failed;
            };
            let sent = sender(&mut self.senders, *addr).and_then(|s| s.send(&datagram));
            if let Err(e) = sent {
                failed.push((*addr, e));
            }
        }
        if let Some(r) = &mut self.ring {
            let out = r.verdicts.tick(now);
            self.send_ring(out);
        }
        failed
    }

    /// Takes one waiting datagram into account: `None` when none waits, else whether the
    /// alive set or a member's links or claims changed (worth acting on at once: take over
    /// from a leaving peer, hand back to a ready one).
    pub fn receive(&mut self) -> Option<bool> {
        let (n, from) = match self.udp.recv_from(&mut self.buf) {
            Ok(got) => got,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(_) => return Some(false),
        };
        Some(self.take(n, from))
    }

    /// Checks and takes the datagram of `n` bytes in the buffer, from `from`.
    fn take(&mut self, n: usize, from: SocketAddr) -> bool {
        let now = Instant::now();
        let Some(datagram) = self.buf.get(..n) else {
            return false;
        };
        if messages::is_message(datagram) {
            return self.take_message(n, from);
        }
        let decoded = self.keys.open(
            now,
            |key| Heartbeat::decode(datagram, key),
            HeartbeatError::Auth,
        );
        let hb = match decoded {
            Ok(hb) => hb,
            Err(e) => {
                let why = rejected_by(&e);
                self.metrics.rejected(why);
                if self.reject_log.should_log(why, now) {
                    warn!(%from, error = %e, "heartbeat refused (counted in xdplb_membership_heartbeats_rejected_total; logged once per 10 s)");
                }
                return false;
            }
        };
        if hb.node == self.node {
            // This agent never sends to itself: a valid heartbeat in its own name is a
            // recording played back.
            self.metrics.rejected(Rejected::Replay);
            return false;
        }
        let was_alive = self.detector.is_alive(&hb.node, now);
        let hold = (hb.hold_ms > 0).then(|| now + Duration::from_millis(u64::from(hb.hold_ms)));
        let heard = self
            .detector
            .heard(&hb.node, hb.epoch, hb.seq, hb.echo, hb.phase, hold, now);
        // Only a heartbeat that proved the sender alive may say what its links are: a
        // recording must not move VIPs either.
        let accepted = matches!(heard, Heard::Changed | Heard::Unchanged);
        // Which version to send back. A peer's run speaks one version; its first heartbeats
        // are unconfirmed (it has not heard this run yet), and an old agent never confirms
        // one it cannot read, so an unconfirmed version 2 heartbeat counts while the sender is
        // not alive here. While it is, only a fresh one does: an old recording must not turn
        // this node's links into "unknown" for one peer and not the others.
        match &hb.links {
            Some(_) => {
                self.plain.remove(&hb.node);
            }
            None if (accepted || (heard == Heard::Unconfirmed && !was_alive))
                && self.plain.len() < MAX_PLAIN =>
            {
                self.plain.insert(hb.node.clone());
            }
            None => {}
        }
        let mut links_changed = false;
        if accepted {
            links_changed = match &hb.links {
                Some(l) => self.links.insert(hb.node.clone(), l.clone()).as_ref() != Some(l),
                None => self.links.remove(&hb.node).is_some(),
            };
            if links_changed {
                let links = hb.links.as_ref().map(ToString::to_string);
                info!(peer = %hb.node, links = links.as_deref().unwrap_or("not said (an older agent)"), "peer's announcing links");
            }
            links_changed |= self.take_claims(&hb);
        }
        let mut ring_moved = false;
        if accepted && let Some(r) = &mut self.ring {
            let out = match hb.ring_digest {
                Some(digest) => {
                    r.legacy.remove(&hb.node);
                    r.verdicts
                        .heartbeat(&hb.node, hb.epoch, hb.seq, digest, now)
                }
                None => {
                    if r.verdicts.ring().contains(&hb.node) {
                        r.legacy.insert(hb.node.clone());
                    }
                    // Judged first-hand like a mesh peer's: its monitors hear it (it
                    // heartbeats everyone), and say its failure like any other.
                    r.verdicts.heartbeat(&hb.node, hb.epoch, hb.seq, 0, now)
                }
            };
            self.send_ring(out);
            ring_moved = self.ring_moved();
        }
        if self.ring.is_some() {
            // What the heartbeat said first-hand is not the ring's view: only verdicts and
            // sayings move it.
            return match heard {
                Heard::Changed | Heard::Unchanged => {
                    self.metrics.heartbeats_received.inc();
                    ring_moved
                }
                Heard::Unconfirmed => {
                    self.metrics.rejected(Rejected::Stale);
                    false
                }
                Heard::Replayed => {
                    self.metrics.rejected(Rejected::Replay);
                    false
                }
            };
        }
        match heard {
            Heard::Unconfirmed => {
                self.metrics.rejected(Rejected::Stale);
                false
            }
            Heard::Replayed => {
                self.metrics.rejected(Rejected::Replay);
                if self.reject_log.should_log(Rejected::Replay, now) {
                    warn!(%from, peer = %hb.node, "replayed heartbeat refused");
                }
                false
            }
            Heard::Changed => {
                self.metrics.heartbeats_received.inc();
                if hb.phase == Phase::Leaving {
                    info!(peer = %hb.node, "peer is leaving");
                }
                true
            }
            Heard::Unchanged => {
                self.metrics.heartbeats_received.inc();
                links_changed
            }
        }
    }

    /// Takes what an accepted heartbeat says of claims; `true` when the sender's changed.
    /// A list whose digest is not the one announced beside it is ignored (the previous claims
    /// stand until a consistent one arrives): claims only keep VIPs where they are, so a
    /// stale one delays a move by a heartbeat at worst.
    fn take_claims(&mut self, hb: &Heartbeat) -> bool {
        if hb.links.is_none() {
            // Version 2: it claims nothing.
            self.acked.remove(&hb.node);
            return self.claims.remove(&hb.node).is_some();
        }
        self.acked.insert(hb.node.clone(), hb.claims_ack);
        let next = match (&hb.claims, hb.claims_digest) {
            (_, 0) => (Claims::default(), 0),
            (Some(list), d) if list.digest() == d => (list.clone(), d),
            _ => return false,
        };
        let changed = self.claims.get(&hb.node) != Some(&next);
        if changed {
            info!(peer = %hb.node, vips = next.0.iter().count(), "peer's non-revertive claims");
            self.claims.insert(hb.node.clone(), next);
        }
        changed
    }

    /// Who is alive at `now` (this node included) and what changed since the last look,
    /// recorded in the metrics and the log.
    pub fn look(&mut self, now: Instant) -> View {
        let view = match self.ring.is_some() {
            true => self.look_ring(now),
            false => {
                let claims: BTreeMap<String, Claims> = self
                    .claims
                    .iter()
                    .map(|(n, (c, _))| (n.clone(), c.clone()))
                    .collect();
                self.changes
                    .look(&self.detector, &self.node, &self.links, &claims, now)
            }
        };
        self.metrics
            .peers_alive
            .set(view.members.alive.len().saturating_sub(1) as i64);
        for silence in &view.detected {
            self.metrics.detection.observe(silence.as_secs_f64());
        }
        if view.changed {
            info!(alive = ?view.members.alive, "membership changed");
        }
        view
    }

    /// The ring's view: the members no verdict holds dead that said they are active, with
    /// the links and claims they said; this node as it is.
    fn look_ring(&mut self, now: Instant) -> View {
        if let Some(r) = &mut self.ring {
            let out = r.verdicts.judge(now);
            self.send_ring(out);
        }
        let Some(r) = &mut self.ring else {
            return View::default();
        };
        r.looked = Some(r.verdicts.digest());
        let mut alive = BTreeSet::from([self.node.clone()]);
        let mut links = BTreeMap::new();
        let mut claims = BTreeMap::new();
        if let Some(l) = self.links.get(&self.node) {
            links.insert(self.node.clone(), l.clone());
        }
        if let Some((c, _)) = self.claims.get(&self.node) {
            claims.insert(self.node.clone(), c.clone());
        }
        let held_alive = r.verdicts.alive();
        let said = r.verdicts.said();
        r.read.retain(|n, _| said.contains_key(n));
        for (node, said) in said {
            if *node == self.node || !held_alive.contains(node) {
                continue;
            }
            let key = (said.run, said.version);
            let saying = match r.read.get(node) {
                Some((k, s)) if *k == key => s,
                _ => {
                    let s = Saying::decode(&said.body)
                        .inspect_err(|e| {
                            if self.reject_log.should_log(Rejected::Malformed, now) {
                                warn!(peer = %node, error = %e, "what a peer says of itself cannot be read: it is not counted alive");
                            }
                        })
                        .ok();
                    &r.read
                        .entry(node.clone())
                        .insert_entry((key, s))
                        .into_mut()
                        .1
                }
            };
            if let Some(s) = saying.as_ref().filter(|s| s.phase == Phase::Active) {
                alive.insert(node.clone());
                links.insert(node.clone(), s.links.clone());
                claims.insert(node.clone(), s.claims.clone());
            }
        }
        let (detector, verdicts) = (&self.detector, &r.verdicts);
        let run = |n: &str| verdicts.run_of(n).or_else(|| detector.epoch(n));
        let silence = |gone: &str| {
            let s = now.saturating_duration_since(detector.last_heard(gone)?);
            (s >= self.failure_timeout).then_some(s)
        };
        self.changes.take(alive, &links, &claims, &run, &silence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_socket_is_marked_and_queued_first() {
        let s = bind_marked(socket2::Domain::IPV4, 0).expect("bind");
        let s = socket2::Socket::from(s);
        assert_eq!(s.tos_v4().expect("tos"), HEARTBEAT_TOS);
        assert_eq!(s.priority().expect("priority"), HEARTBEAT_PRIORITY);
    }

    #[test]
    fn one_normalisation_and_no_published_secret() {
        let file = check_secret(b"a-secret-of-enough-bytes\n").expect("file");
        let data = check_secret(b"a-secret-of-enough-bytes").expect("Secret data");
        assert_eq!(file, data, "a file's newline is not part of the key");
        assert!(check_secret(b"short\n").is_err());
        let e = check_secret(b"demo-only-secret-replace-me-with-random-bytes\n")
            .expect_err("the example's placeholder");
        assert!(e.contains("placeholder"), "{e}");
    }

    #[test]
    fn a_rotation_accepts_both_keys_and_signs_with_the_old_one_until_all_have_the_new() {
        let t0 = Instant::now();
        let (old, new) = (
            b"old-key-0123456789".to_vec(),
            b"new-key-0123456789".to_vec(),
        );
        let mut keys = Keys::new(Some(old.clone()));
        assert_eq!(keys.signing(t0), Some(old.as_slice()));
        // The same key again is no rotation.
        keys.rotate(old.clone(), t0);
        assert_eq!(keys.verifying(t0).count(), 1);
        keys.rotate(new.clone(), t0);
        let during = t0 + ROTATION_OVERLAP - Duration::from_millis(1);
        assert_eq!(keys.signing(during), Some(old.as_slice()));
        let accepted: Vec<&[u8]> = keys.verifying(during).collect();
        assert_eq!(accepted, vec![new.as_slice(), old.as_slice()]);
        let after = t0 + ROTATION_OVERLAP;
        assert_eq!(keys.signing(after), Some(new.as_slice()));
        assert_eq!(
            keys.verifying(after).collect::<Vec<_>>(),
            vec![new.as_slice()]
        );
        // A heartbeat signed with either verifies while both are accepted.
        let hb = Heartbeat {
            node: "b".into(),
            epoch: 1,
            seq: 1,
            echo: 0,
            hold_ms: 0,
            phase: Phase::Active,
            links: None,
            claims_digest: 0,
            claims: None,
            claims_ack: 0,
            ring_digest: None,
        };
        for key in [&old, &new] {
            let wire = hb.encode(key).expect("encode");
            assert!(
                keys.verifying(during)
                    .any(|k| Heartbeat::decode(&wire, k).is_ok())
            );
        }
        let wire = hb.encode(&old).expect("encode");
        assert!(
            !keys
                .verifying(after)
                .any(|k| Heartbeat::decode(&wire, k).is_ok())
        );
    }
}

/// The claims exchange and the version choice over real sockets on loopback: this agent's
/// [`Membership`] against a peer played by hand.
#[cfg(test)]
mod exchange_tests {
    use std::net::{IpAddr, Ipv6Addr, UdpSocket as StdUdp};

    use super::*;

    const KEY: &[u8] = b"exchange-test-secret-0123456789";

    struct Peer {
        socket: StdUdp,
        seq: u64,
    }

    impl Peer {
        fn new() -> Self {
            let socket = StdUdp::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind");
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            Self { socket, seq: 0 }
        }

        fn addr(&self) -> SocketAddr {
            self.socket.local_addr().expect("addr")
        }

        fn send(&mut self, to: SocketAddr, echo: u64, v3: bool, claims_ack: u64) {
            self.seq += 1;
            let hb = Heartbeat {
                node: "peer".into(),
                epoch: 99,
                seq: self.seq,
                echo,
                hold_ms: 0,
                phase: Phase::Active,
                links: v3.then(Links::default),
                claims_digest: 0,
                claims: None,
                claims_ack,
                ring_digest: None,
            };
            self.socket
                .send_to(&hb.encode(KEY).expect("encode"), to)
                .expect("send");
        }

        fn receive(&self) -> Heartbeat {
            let mut buf = [0u8; 1500];
            let (n, _) = self.socket.recv_from(&mut buf).expect("a heartbeat");
            Heartbeat::decode(&buf[..n], KEY).expect("decode")
        }
    }

    /// Waits (up to 2 s) for the peer's datagram to reach `me`, and takes it.
    fn wait(me: &mut Membership) -> bool {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(changed) = me.receive() {
                return changed;
            }
            assert!(Instant::now() < until, "no datagram reached the agent");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn claims_go_until_acknowledged_and_a_version_2_peer_gets_version_2() {
        let metrics = Arc::new(AgentMetrics::new(std::env::temp_dir()));
        let mut me = Membership::bind(0, "me", Duration::from_secs(1), Some(KEY.to_vec()), metrics)
            .expect("bind");
        let port = me.udp.local_addr().expect("addr").port();
        let me_at = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        let mut peer = Peer::new();
        let peers = [("peer".to_owned(), peer.addr())];
        let vip: IpAddr = "10.0.0.7".parse().expect("ip");
        me.set_links(Links::default());
        me.set_claims(Claims::new([vip]).expect("fits"));

        // Nothing heard from the peer yet: the list goes with the digest.
        me.beat(&peers, Phase::Active);
        let first = peer.receive();
        let digest = first.claims_digest;
        assert_ne!(digest, 0);
        assert_eq!(first.claims.as_ref().map(|c| c.contains(&vip)), Some(true));

        // The peer, alive now, acknowledges: the next heartbeat carries the digest only.
        peer.send(me_at, first.epoch, true, digest);
        assert!(wait(&mut me), "the peer became alive");
        me.beat(&peers, Phase::Active);
        let second = peer.receive();
        assert_eq!(second.claims_digest, digest);
        assert!(second.claims.is_none(), "acknowledged: no list");
        assert!(second.links.is_some());

        // A change: the list again, until acknowledged.
        me.set_claims(Claims::default());
        me.beat(&peers, Phase::Active);
        let third = peer.receive();
        assert_eq!(third.claims_digest, 0);

        // A fresh version 2 heartbeat (the peer downgraded): version 2 back.
        peer.send(me_at, first.epoch, false, 0);
        wait(&mut me);
        me.beat(&peers, Phase::Active);
        let fourth = peer.receive();
        assert!(fourth.links.is_none(), "a version 2 peer gets version 2");
    }
}
