//! One BGP session as a state machine (RFC 4271 §8), with time passed in: events in, actions
//! out. The TCP connections are the edge's; here they are numbered. A session may have two at
//! once (ours and the peer's) until collision resolution (§6.8) keeps one.
//!
//! The session also holds its Adj-RIB-Out, so that Established sends the routes and the
//! End-of-RIB markers (RFC 4724), and a route change sends only the difference.
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::message::{
    AS_TRANS, Capability, Family, GracefulFamily, IPV4_VIA_IPV6, Message, Notification, Open,
};
use super::notification::{cease, code, fsm_error, open_error};
use super::rib_out::{self, Context, Routes};
use super::update::{self, Codec, Received};

/// The hold time while waiting for the peer's OPEN (RFC 4271 §8.2.2 suggests 4 minutes).
const LARGE_HOLD: Duration = Duration::from_secs(240);
/// The first reconnect waits this long; each failure doubles it up to `connect_time`.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Inbound connections of one peer that may be opening at once.
const MAX_INBOUND_OPENING: usize = 2;
/// A session that went down sooner than this after Established flapped: the wait before the
/// next attempt doubles from [`FIRST_RETRY`] up to [`MAX_DAMPED`] (RFC 4271 §8.1.1,
/// DampPeerOscillations), instead of re-announcing everything every second.
const STABLE: Duration = Duration::from_secs(60);
const MAX_DAMPED: Duration = Duration::from_secs(120);
/// A peer's ROUTE-REFRESH for a family is served at most this often; one arriving sooner is
/// served when the time comes (coalesced with any others meanwhile).
const REFRESH_GAP: Duration = Duration::from_secs(1);

/// The peer AS we accept (BGPPeer peerASN or dynamicASN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerAs {
    Fixed(u32),
    /// Any AS equal to ours.
    Internal,
    /// Any AS other than ours.
    External,
}

/// The session's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Settings {
    pub local_as: u32,
    pub peer_as: PeerAs,
    pub router_id: Ipv4Addr,
    /// Proposed hold time in seconds; 0 turns keepalives and the hold timer off.
    pub hold_time: u16,
    /// Keepalive interval in seconds; default a third of the negotiated hold time.
    pub keepalive: Option<u16>,
    /// The longest wait between connection attempts.
    pub connect_time: Duration,
    /// Only accept the peer's connections, never open one.
    pub passive: bool,
    pub ipv4: bool,
    pub ipv6: bool,
    /// Offer graceful restart (RFC 4724) with this restart time in seconds.
    pub graceful_restart: Option<u16>,
    /// Offer IPv4 routes with IPv6 next hops (RFC 8950): unnumbered sessions, where this node
    /// has no IPv4 address the peer can reach.
    pub extended_next_hop: bool,
}

impl Settings {
    fn open(&self) -> Open {
        let mut capabilities = Vec::new();
        if self.ipv4 {
            capabilities.push(Capability::Multiprotocol(Family::IPV4_UNICAST));
        }
        if self.ipv6 {
            capabilities.push(Capability::Multiprotocol(Family::IPV6_UNICAST));
        }
        capabilities.push(Capability::RouteRefresh);
        capabilities.push(Capability::FourOctetAs(self.local_as));
        if self.extended_next_hop && self.ipv4 {
            capabilities.push(Capability::ExtendedNextHop(vec![IPV4_VIA_IPV6]));
        }
        if let Some(time) = self.graceful_restart {
            capabilities.push(Capability::GracefulRestart {
                restarting: false,
                time: time.min(0x0fff),
                // Forwarding survives an agent restart: the kernel and the Services do not
                // depend on the agent, so the router may keep using our routes.
                families: self
                    .families()
                    .into_iter()
                    .map(|family| GracefulFamily {
                        family,
                        forwarding: true,
                    })
                    .collect(),
            });
        }
        Open {
            my_as: u16::try_from(self.local_as).unwrap_or(AS_TRANS),
            hold_time: self.hold_time,
            router_id: u32::from(self.router_id),
            capabilities,
        }
    }

    fn families(&self) -> Vec<Family> {
        let mut f = Vec::new();
        if self.ipv4 {
            f.push(Family::IPV4_UNICAST);
        }
        if self.ipv6 {
            f.push(Family::IPV6_UNICAST);
        }
        f
    }
}

/// What both OPENs agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_as: u32,
    pub peer_id: Ipv4Addr,
    pub hold_time: u16,
    pub keepalive: u16,
    pub four_octet_as: bool,
    pub ipv4: bool,
    pub ipv6: bool,
    pub route_refresh: bool,
    /// The peer keeps our routes across our restarts (it sent the capability).
    pub peer_graceful_restart: bool,
    /// IPv4 routes go with IPv6 next hops (both sides offered it, RFC 8950).
    pub ipv4_via_ipv6: bool,
}

/// A TCP connection, numbered by the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// We connected to the peer.
    Outbound,
    /// The peer connected to us.
    Inbound,
}

/// Our addresses on a connection, for next hops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Local {
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Global, and link-local when known.
    pub next_hop_v6: Option<(Ipv6Addr, Option<Ipv6Addr>)>,
}

/// Why the session is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The BGPPeer no longer applies to this node.
    Deconfigured,
    /// The agent stops for good.
    Shutdown,
    /// The agent restarts: close without a NOTIFICATION where graceful restart was agreed,
    /// so the peer keeps forwarding to us meanwhile.
    Restart,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An outbound connection came up, or the peer's was accepted (RFC 4271 events 16/17,
    /// `Tcp_CR_Acked`/`TcpConnectionConfirmed`).
    Connected(ConnId, Direction, Local),
    /// An outbound connection could not be opened (event 18, `TcpConnectionFails`).
    ConnectFailed(ConnId),
    /// The peer closed or reset the connection (event 18 too).
    Closed(ConnId),
    /// A whole message arrived and decoded (events 19-28: OPEN, KEEPALIVE, UPDATE,
    /// NOTIFICATION, ROUTE-REFRESH).
    Received(ConnId, Message),
    /// The bytes did not decode: this NOTIFICATION goes back (events 21/22/28).
    Malformed(ConnId, Notification),
    /// BFD declared the path down (RFC 5882): the session goes down at once.
    BfdDown,
    /// The peer does not read what is sent to it: the connection's send queue reached its
    /// bound. Cease "Out of Resources" (RFC 4486), instead of growing without end.
    Backlogged(ConnId),
}

/// Why an Established session went down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Down {
    /// This side stopped it.
    Stopped(Stop),
    /// The connection closed or was reset.
    Closed,
    /// This side sent the NOTIFICATION (an error found here, the hold timer, BFD).
    Sent(Notification),
    /// The peer sent the NOTIFICATION.
    Received(Notification),
    /// The peer came back with graceful restart on a new connection: the old one is dead.
    PeerRestarted,
    /// Another connection to the peer took this one's place.
    Superseded,
}

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Down::Stopped(why) => write!(f, "stopped ({why:?})"),
            Down::Closed => f.write_str("the connection closed"),
            Down::Sent(n) => write!(f, "{n}"),
            Down::Received(n) => write!(f, "the peer sent {n}"),
            Down::PeerRestarted => f.write_str("the peer restarted"),
            Down::Superseded => f.write_str("superseded"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a connection to the peer under this number.
    Connect(ConnId),
    /// Write this message on the connection, after what was written before.
    Send(ConnId, Message),
    /// Close after what was sent before it.
    Close(ConnId),
    /// The session is Established with what both sides agreed on: routes may flow.
    Up(Negotiated),
    /// The session left Established: what it advertised is gone from the peer.
    Down(Down),
    /// Worth a log line: a refused OPEN, a NOTIFICATION.
    Note(String),
    /// An UPDATE from the peer was treated as withdraw (RFC 7606), for this reason: worth a
    /// log line too, but a peer can send thousands a second.
    TreatedAsWithdraw(String),
}

/// The session's timers (RFC 4271 §10), each armed at an instant or not: the whole list of
/// what [`Session::tick`] acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The session's: when to open the next connection (with back-off).
    ConnectRetry,
    /// A connection's: when the peer's silence ends it (hold time, or 4 minutes before its
    /// OPEN arrives).
    Hold,
    /// A connection's: when our next KEEPALIVE is due.
    Keepalive,
    /// The session's: when the ROUTE-REFRESHes held back by [`REFRESH_GAP`] are served.
    Refresh,
}

/// One deadline per [`Timer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Timers([Option<Instant>; 4]);

impl Timers {
    fn get(&self, timer: Timer) -> Option<Instant> {
        self.0[timer as usize]
    }

    fn set(&mut self, timer: Timer, at: Option<Instant>) {
        self.0[timer as usize] = at;
    }

    fn due(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|t| t <= now)
    }

    fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Connecting,
    OpenSent,
    OpenConfirm,
    Established,
}

#[derive(Clone, Debug)]
struct Conn {
    id: ConnId,
    direction: Direction,
    state: State,
    local: Local,
    /// [`Timer::Hold`] and [`Timer::Keepalive`].
    timers: Timers,
    negotiated: Option<Negotiated>,
}

/// A BGP session to one peer.
///
/// RFC 4271's six states are kept per connection (`Connecting` stands for Connect/Active,
/// then OpenSent, OpenConfirm, Established) with a session-level `running` flag for Idle:
/// during collision resolution (§6.8) one session holds two connections in different states,
/// which a single session state cannot express. A driver calls [`Session::handle`] for each
/// [`Event`], [`Session::tick`] at [`Session::next_deadline`], and carries out the returned
/// [`Action`]s in order.
#[derive(Debug)]
pub struct Session {
    settings: Settings,
    running: bool,
    conns: Vec<Conn>,
    next_id: u64,
    /// [`Timer::ConnectRetry`].
    timers: Timers,
    backoff: Duration,
    /// Sessions in a row that went down before [`STABLE`].
    flaps: u32,
    established_at: Option<Instant>,
    /// When each family's table was last sent again for a ROUTE-REFRESH, and whether one is
    /// waiting for [`REFRESH_GAP`] to pass ([IPv4, IPv6]).
    refreshed: [Option<Instant>; 2],
    refresh_pending: [bool; 2],
    /// Routes the session carries but cannot send: their attributes overflow a message.
    oversized: usize,
    desired: Arc<Routes>,
    sent: Arc<Routes>,
}

impl Session {
    pub fn new(settings: Settings) -> Self {
        Session {
            settings,
            running: false,
            conns: Vec::new(),
            next_id: 0,
            timers: Timers::default(),
            backoff: FIRST_RETRY,
            flaps: 0,
            established_at: None,
            refreshed: [None; 2],
            refresh_pending: [false; 2],
            oversized: 0,
            desired: Arc::default(),
            sent: Arc::default(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What the session negotiated, while it is Established.
    /// The session's state in RFC 4271's (and FRR's) words, for status objects: the most
    /// advanced of its connections', `Idle` without one.
    pub fn state_name(&self) -> &'static str {
        let best = self.conns.iter().map(|c| c.state).max_by_key(|s| match s {
            State::Connecting => 0,
            State::OpenSent => 1,
            State::OpenConfirm => 2,
            State::Established => 3,
        });
        match best {
            None => "Idle",
            Some(State::Connecting) => "Connect",
            Some(State::OpenSent) => "OpenSent",
            Some(State::OpenConfirm) => "OpenConfirm",
            Some(State::Established) => "Established",
        }
    }

    pub fn established(&self) -> Option<&Negotiated> {
        self.conns
            .iter()
            .find(|c| c.state == State::Established)
            .and_then(|c| c.negotiated.as_ref())
    }

    /// The routes the peer holds from us now.
    pub fn advertised(&self) -> &Routes {
        &self.sent
    }

    pub fn desired(&self) -> &Routes {
        &self.desired
    }

    /// Whether the session accepts a connection from the peer now.
    pub fn accepts(&self) -> bool {
        self.running
    }

    /// The next instant [`Session::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let conns = self.conns.iter().filter_map(|c| c.timers.next());
        conns.chain(self.timers.next()).min()
    }

    fn new_conn(&mut self, direction: Direction, state: State) -> ConnId {
        self.next_id += 1;
        let id = ConnId(self.next_id);
        self.conns.push(Conn {
            id,
            direction,
            state,
            local: Local::default(),
            timers: Timers::default(),
            negotiated: None,
        });
        id
    }

    /// Starts connecting (or, passive, waiting for the peer).
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.running = true;
        self.backoff = FIRST_RETRY;
        let retry = (!self.settings.passive).then_some(now);
        self.timers.set(Timer::ConnectRetry, retry);
        self.tick(now)
    }

    pub fn stop(&mut self, why: Stop) -> Vec<Action> {
        self.running = false;
        self.timers.set(Timer::ConnectRetry, None);
        let mut out = Vec::new();
        let graceful = why == Stop::Restart
            && self.settings.graceful_restart.is_some()
            && self.established().is_some_and(|n| n.peer_graceful_restart);
        let subcode = match why {
            Stop::Deconfigured => cease::PEER_DECONFIGURED,
            Stop::Shutdown | Stop::Restart => cease::ADMINISTRATIVE_SHUTDOWN,
        };
        for c in std::mem::take(&mut self.conns) {
            if c.state != State::Connecting && !graceful {
                out.push(Action::Send(
                    c.id,
                    Message::Notification(Notification::new(code::CEASE, subcode, [])),
                ));
            }
            out.push(Action::Close(c.id));
            if c.state == State::Established {
                out.push(Action::Down(Down::Stopped(why)));
            }
        }
        self.sent = Arc::default();
        out
    }

    /// Replaces the routes to advertise; sends the difference when Established.
    pub fn set_routes(&mut self, routes: Arc<Routes>) -> Vec<Action> {
        self.desired = routes;
        self.sync_routes()
    }

    fn context(&self, c: &Conn) -> Option<Context> {
        let n = c.negotiated.as_ref()?;
        Some(Context {
            local_as: self.settings.local_as,
            ibgp: n.peer_as == self.settings.local_as,
            codec: Codec {
                four_octet_as: n.four_octet_as,
            },
            ipv4: n.ipv4,
            ipv6: n.ipv6,
            next_hop_v4: c.local.next_hop_v4,
            next_hop_v6: c.local.next_hop_v6,
            ipv4_via_ipv6: n.ipv4_via_ipv6,
        })
    }

    fn sync_routes(&mut self) -> Vec<Action> {
        let Some(c) = self.conns.iter().find(|c| c.state == State::Established) else {
            return Vec::new();
        };
        let Some(ctx) = self.context(c) else {
            return Vec::new();
        };
        let id = c.id;
        let (bodies, sent) = rib_out::updates(&self.sent, &self.desired, &ctx);
        self.sent = sent;
        let mut out: Vec<Action> = bodies
            .into_iter()
            .map(|b| Action::Send(id, Message::Update(b)))
            .collect();
        let oversized = self
            .desired
            .keys()
            .filter(|n| ctx.carries(n) && !self.sent.contains_key(n))
            .count();
        if oversized != self.oversized {
            self.oversized = oversized;
            if oversized > 0 {
                out.push(Action::Note(format!(
                    "{oversized} prefixes not advertised: their communities do not fit in one UPDATE (counted as pending)"
                )));
            }
        }
        out
    }

    /// How many of the routes to advertise the peer does not hold (yet, or at all: a family
    /// or next hop the session does not have).
    pub fn pending(&self) -> usize {
        self.desired.len() - self.sent.len().min(self.desired.len())
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Connected(id, direction, local) => {
                self.connected(id, direction, local, now, &mut out)
            }
            Event::ConnectFailed(id) | Event::Closed(id) => {
                self.drop_conn(id, Down::Closed, &mut out);
                self.schedule_retry(now);
            }
            Event::Malformed(id, n) => {
                out.push(Action::Note(format!("malformed message: sending {n}")));
                self.fail(id, n, &mut out);
                self.schedule_retry(now);
            }
            Event::Received(id, msg) => {
                self.received(id, msg, now, &mut out);
                self.schedule_retry(now);
            }
            Event::Backlogged(id) => {
                out.push(Action::Note(
                    "the peer reads too slowly: the send queue is full".into(),
                ));
                let n = Notification::new(code::CEASE, cease::OUT_OF_RESOURCES, []);
                self.fail(id, n, &mut out);
                self.schedule_retry(now);
            }
            Event::BfdDown => {
                let ids: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|c| c.state != State::Connecting)
                    .map(|c| c.id)
                    .collect();
                for id in ids {
                    let n = Notification::new(code::CEASE, cease::BFD_DOWN, []);
                    self.fail(id, n, &mut out);
                }
                self.schedule_retry(now);
            }
        }
        out
    }

    /// Runs the timers due at `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.timers.due(Timer::Refresh, now) {
            self.timers.set(Timer::Refresh, None);
            if let Some(id) = self
                .conns
                .iter()
                .find(|c| c.state == State::Established)
                .map(|c| c.id)
            {
                self.serve_refreshes(id, now, &mut out);
            }
        }
        if self.running && self.conns.is_empty() && self.timers.due(Timer::ConnectRetry, now) {
            self.timers.set(Timer::ConnectRetry, None);
            let id = self.new_conn(Direction::Outbound, State::Connecting);
            out.push(Action::Connect(id));
        }
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|c| c.timers.due(Timer::Hold, now))
            .map(|c| c.id)
            .collect();
        for id in expired {
            let n = Notification::new(code::HOLD_TIMER_EXPIRED, 0, []);
            self.fail(id, n, &mut out);
        }
        for c in &mut self.conns {
            let Some(at) = c.timers.get(Timer::Keepalive).filter(|t| *t <= now) else {
                continue;
            };
            out.push(Action::Send(c.id, Message::Keepalive));
            let every = Duration::from_secs(u64::from(
                c.negotiated.as_ref().map_or(1, |n| n.keepalive.max(1)),
            ));
            // Skip missed ticks rather than sending a burst after a stall.
            let mut next = at + every;
            while next <= now {
                next += every;
            }
            c.timers.set(Timer::Keepalive, Some(next));
        }
        self.schedule_retry(now);
        out
    }

    fn schedule_retry(&mut self, now: Instant) {
        if self.established().is_none() {
            self.ended(now);
        }
        if self.running
            && !self.settings.passive
            && self.conns.is_empty()
            && self.timers.get(Timer::ConnectRetry).is_none()
        {
            let damped = FIRST_RETRY
                .saturating_mul(1 << self.flaps.saturating_sub(1).min(8))
                .min(MAX_DAMPED);
            let wait = if self.flaps > 0 { damped } else { self.backoff };
            self.timers.set(Timer::ConnectRetry, Some(now + wait));
            self.backoff = (self.backoff * 2).min(self.settings.connect_time.max(FIRST_RETRY));
        }
    }

    fn connected(
        &mut self,
        id: ConnId,
        direction: Direction,
        local: Local,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if !self.running {
            out.push(Action::Close(id));
            return;
        }
        let known = self.conns.iter().any(|c| c.id == id);
        let opening = self
            .conns
            .iter()
            .filter(|c| c.direction == Direction::Inbound && c.state != State::Established)
            .count();
        if direction == Direction::Inbound && !known && opening >= MAX_INBOUND_OPENING {
            // Each would get an OPEN and wait minutes for the peer's: a flood of connections
            // from a spoofed or buggy peer must not pile up.
            out.push(Action::Close(id));
            return;
        }
        if direction == Direction::Inbound && !known {
            // The edge numbers accepted connections from a range of its own.
            self.conns.push(Conn {
                id,
                direction,
                state: State::Connecting,
                local,
                timers: Timers::default(),
                negotiated: None,
            });
        }
        let open = self.settings.open();
        let Some(c) = self.conns.iter_mut().find(|c| c.id == id) else {
            // A connection we gave up on (stopped, or replaced) came up late.
            out.push(Action::Close(id));
            return;
        };
        c.state = State::OpenSent;
        c.local = local;
        c.timers.set(Timer::Hold, Some(now + LARGE_HOLD));
        out.push(Action::Send(id, Message::Open(open)));
    }

    /// Sends `n` on `id`, closes it, and reports the session down if it was up.
    fn fail(&mut self, id: ConnId, n: Notification, out: &mut Vec<Action>) {
        out.push(Action::Send(id, Message::Notification(n.clone())));
        self.drop_conn(id, Down::Sent(n), out);
    }

    fn drop_conn(&mut self, id: ConnId, why: Down, out: &mut Vec<Action>) {
        let Some(at) = self.conns.iter().position(|c| c.id == id) else {
            return;
        };
        let c = self.conns.remove(at);
        out.push(Action::Close(id));
        if c.state == State::Established {
            self.sent = Arc::default();
            out.push(Action::Down(why));
        }
    }

    /// Counts a session that ended at `now`: a short one is a flap.
    fn ended(&mut self, now: Instant) {
        if let Some(at) = self.established_at.take() {
            if now.saturating_duration_since(at) < STABLE {
                self.flaps = self.flaps.saturating_add(1);
            } else {
                self.flaps = 0;
            }
        }
    }

    fn received(&mut self, id: ConnId, msg: Message, now: Instant, out: &mut Vec<Action>) {
        let Some(state) = self.conns.iter().find(|c| c.id == id).map(|c| c.state) else {
            return;
        };
        if let Message::Notification(n) = &msg {
            out.push(Action::Note(format!("the peer sent {n}")));
            self.drop_conn(id, Down::Received(n.clone()), out);
            return;
        }
        let unexpected = |sub| Notification::new(code::FSM, sub, []);
        match (state, msg) {
            (State::OpenSent, Message::Open(open)) => self.open_received(id, open, now, out),
            (State::OpenSent, _) => self.fail(id, unexpected(fsm_error::IN_OPEN_SENT), out),
            (State::OpenConfirm, Message::Keepalive) => {
                self.refresh_hold(id, now);
                self.establish(id, now, out);
            }
            (State::OpenConfirm, _) => self.fail(id, unexpected(fsm_error::IN_OPEN_CONFIRM), out),
            (State::Established, Message::Keepalive) => self.refresh_hold(id, now),
            (State::Established, Message::Update(body)) => {
                self.refresh_hold(id, now);
                let codec = self.established().map_or(
                    Codec {
                        four_octet_as: false,
                    },
                    |n| Codec {
                        four_octet_as: n.four_octet_as,
                    },
                );
                match update::decode(&body, codec) {
                    // We only originate routes; what the peer sends is checked, not kept.
                    Ok(Received::Update(_)) => {}
                    Ok(Received::TreatAsWithdraw { why, .. }) => {
                        out.push(Action::TreatedAsWithdraw(why.to_string()));
                    }
                    Err(n) => self.fail(id, n, out),
                }
            }
            (State::Established, Message::RouteRefresh { family, subtype }) => {
                self.refresh_hold(id, now);
                // Subtype 0 is a request; 1 and 2 (BoRR/EoRR) mark the peer's own refresh,
                // meaningful only with Enhanced Route Refresh, which we never advertise;
                // others MUST be ignored (RFC 7313 §5). A family the session did not
                // negotiate is ignored too (RFC 2918 §4).
                let negotiated = self.established().is_some_and(|n| {
                    (family == Family::IPV4_UNICAST && n.ipv4)
                        || (family == Family::IPV6_UNICAST && n.ipv6)
                });
                if subtype == 0 && negotiated {
                    let f = usize::from(family == Family::IPV6_UNICAST);
                    self.refresh_pending[f] = true;
                    self.serve_refreshes(id, now, out);
                }
            }
            (State::Established, _) => self.fail(id, unexpected(fsm_error::IN_ESTABLISHED), out),
            (State::Connecting, _) => {}
        }
    }

    /// Sends the tables asked for by pending ROUTE-REFRESHes whose family was not refreshed
    /// within [`REFRESH_GAP`]; arms [`Timer::Refresh`] for the others.
    fn serve_refreshes(&mut self, id: ConnId, now: Instant, out: &mut Vec<Action>) {
        let mut next: Option<Instant> = None;
        for (f, family) in [Family::IPV4_UNICAST, Family::IPV6_UNICAST]
            .into_iter()
            .enumerate()
        {
            if !self.refresh_pending[f] {
                continue;
            }
            let due = self.refreshed[f].map_or(now, |t| t + REFRESH_GAP);
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            self.refresh_pending[f] = false;
            self.refreshed[f] = Some(now);
            Arc::make_mut(&mut self.sent).retain(|net, _| match net {
                ipnet::IpNet::V4(_) => f != 0,
                ipnet::IpNet::V6(_) => f != 1,
            });
            out.extend(self.sync_routes());
            self.end_of_rib(id, &[family], out);
        }
        self.timers.set(Timer::Refresh, next);
    }

    fn refresh_hold(&mut self, id: ConnId, now: Instant) {
        if let Some(c) = self.conns.iter_mut().find(|c| c.id == id) {
            let hold = c.negotiated.as_ref().map_or(0, |n| n.hold_time);
            let at = (hold > 0).then(|| now + Duration::from_secs(u64::from(hold)));
            c.timers.set(Timer::Hold, at);
        }
    }

    fn open_received(&mut self, id: ConnId, open: Open, now: Instant, out: &mut Vec<Action>) {
        let s = &self.settings;
        let peer_as = open.asn();
        // AS 0 is never a peer's (RFC 7607), whatever was configured.
        let as_ok = peer_as != 0
            && match s.peer_as {
                PeerAs::Fixed(want) => peer_as == want,
                PeerAs::Internal => peer_as == s.local_as,
                PeerAs::External => peer_as != s.local_as,
            };
        if !as_ok {
            out.push(Action::Note(format!(
                "the peer's OPEN says AS {peer_as}, expected {:?}",
                s.peer_as
            )));
            let n = Notification::new(
                code::OPEN_MESSAGE,
                open_error::BAD_PEER_AS,
                open.my_as.to_be_bytes(),
            );
            self.fail(id, n, out);
            return;
        }
        // RFC 6286: on iBGP the identifiers must differ.
        if peer_as == s.local_as && open.router_id == u32::from(s.router_id) {
            let n = Notification::new(
                code::OPEN_MESSAGE,
                open_error::BAD_BGP_IDENTIFIER,
                open.router_id.to_be_bytes(),
            );
            self.fail(id, n, out);
            return;
        }
        let n = negotiate(s, &open);
        if !self.resolve_collision(id, &open, n.peer_id, out) {
            return;
        }
        let Some(c) = self.conns.iter_mut().find(|c| c.id == id) else {
            return;
        };
        c.state = State::OpenConfirm;
        let armed =
            |secs: u16| (n.hold_time > 0).then(|| now + Duration::from_secs(u64::from(secs)));
        c.timers.set(Timer::Hold, armed(n.hold_time));
        c.timers.set(Timer::Keepalive, armed(n.keepalive));
        c.negotiated = Some(n);
        out.push(Action::Send(id, Message::Keepalive));
    }

    /// RFC 4271 §6.8: with two connections to the same peer, keep the one opened by the side
    /// with the higher BGP Identifier. Returns whether `id` survives.
    fn resolve_collision(
        &mut self,
        id: ConnId,
        open: &Open,
        peer_id: Ipv4Addr,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(direction) = self.conns.iter().find(|c| c.id == id).map(|c| c.direction) else {
            return false;
        };
        let collision = || Notification::new(code::CEASE, cease::CONNECTION_COLLISION, []);
        let others: Vec<(ConnId, State, bool)> = self
            .conns
            .iter()
            .filter(|c| c.id != id)
            .map(|c| {
                let gr = c
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.peer_graceful_restart)
                    && self.settings.graceful_restart.is_some();
                (c.id, c.state, gr)
            })
            .collect();
        for (other, state, gr_agreed) in others {
            match state {
                State::Established => {
                    // A peer that agreed graceful restart on the session it had and comes
                    // back with it has restarted: the old connection is dead (RFC 4724
                    // §4.2). Otherwise the new one yields: one spoofed OPEN must not tear a
                    // healthy session down.
                    let restarted = gr_agreed
                        && open
                            .capabilities
                            .iter()
                            .any(|c| matches!(c, Capability::GracefulRestart { .. }));
                    if restarted {
                        self.drop_conn(other, Down::PeerRestarted, out);
                    } else {
                        self.fail(id, collision(), out);
                        return false;
                    }
                }
                State::OpenConfirm => {
                    // Equal identifiers (possible on eBGP) are told apart by AS (RFC 6286
                    // §2.3), so that both sides keep the same connection.
                    let ours = (u32::from(self.settings.router_id), self.settings.local_as);
                    let keep = if ours > (u32::from(peer_id), open.asn()) {
                        Direction::Outbound
                    } else {
                        Direction::Inbound
                    };
                    if direction == keep {
                        self.fail(other, collision(), out);
                    } else {
                        self.fail(id, collision(), out);
                        return false;
                    }
                }
                // Our own attempt still connecting: no longer needed.
                State::Connecting => self.drop_conn(other, Down::Superseded, out),
                // Resolved when that one's OPEN arrives.
                State::OpenSent => {}
            }
        }
        true
    }

    fn establish(&mut self, id: ConnId, now: Instant, out: &mut Vec<Action>) {
        let Some(c) = self.conns.iter_mut().find(|c| c.id == id) else {
            return;
        };
        c.state = State::Established;
        let Some(n) = c.negotiated.clone() else {
            return;
        };
        self.backoff = FIRST_RETRY;
        self.established_at = Some(now);
        self.refreshed = [None; 2];
        self.refresh_pending = [false; 2];
        self.sent = Arc::default();
        out.push(Action::Up(n.clone()));
        out.extend(self.sync_routes());
        let mut families = Vec::new();
        if n.ipv4 {
            families.push(Family::IPV4_UNICAST);
        }
        if n.ipv6 {
            families.push(Family::IPV6_UNICAST);
        }
        self.end_of_rib(id, &families, out);
    }

    fn end_of_rib(&self, id: ConnId, families: &[Family], out: &mut Vec<Action>) {
        let codec = self.established().map_or(
            Codec {
                four_octet_as: false,
            },
            |n| Codec {
                four_octet_as: n.four_octet_as,
            },
        );
        for f in families {
            out.push(Action::Send(
                id,
                Message::Update(rib_out::end_of_rib(*f, codec)),
            ));
        }
    }
}

/// The session parameters both OPENs allow (RFC 4271 §4.2, RFC 4760 §8, RFC 6793).
fn negotiate(s: &Settings, open: &Open) -> Negotiated {
    let peer_mp: Vec<Family> = open
        .capabilities
        .iter()
        .filter_map(|c| match c {
            Capability::Multiprotocol(f) => Some(*f),
            _ => None,
        })
        .collect();
    // A peer that sends no multiprotocol capability speaks IPv4 unicast only.
    let peer_has = |f: Family| {
        if peer_mp.is_empty() {
            f == Family::IPV4_UNICAST
        } else {
            peer_mp.contains(&f)
        }
    };
    let has = |want: fn(&Capability) -> bool| open.capabilities.iter().any(want);
    let hold_time = s.hold_time.min(open.hold_time);
    let keepalive = if hold_time == 0 {
        0
    } else {
        s.keepalive
            .unwrap_or(hold_time / 3)
            .min(hold_time / 3)
            .max(1)
    };
    Negotiated {
        peer_as: open.asn(),
        peer_id: Ipv4Addr::from(open.router_id),
        hold_time,
        keepalive,
        four_octet_as: has(|c| matches!(c, Capability::FourOctetAs(_))),
        ipv4: s.ipv4 && peer_has(Family::IPV4_UNICAST),
        ipv6: s.ipv6 && peer_has(Family::IPV6_UNICAST),
        route_refresh: has(|c| matches!(c, Capability::RouteRefresh)),
        peer_graceful_restart: has(|c| matches!(c, Capability::GracefulRestart { .. })),
        ipv4_via_ipv6: s.extended_next_hop
            && open.capabilities.iter().any(
                |c| matches!(c, Capability::ExtendedNextHop(fs) if fs.contains(&IPV4_VIA_IPV6)),
            ),
    }
}

#[cfg(test)]
impl Settings {
    /// AS 64512 to AS 65001, router ID 10.0.0.5, MetalLB's timers, both families, graceful
    /// restart: the session the unit tests start from.
    pub(crate) fn for_tests() -> Self {
        Settings {
            local_as: 64512,
            peer_as: PeerAs::Fixed(65001),
            router_id: Ipv4Addr::new(10, 0, 0, 5),
            hold_time: 90,
            keepalive: None,
            connect_time: Duration::from_secs(30),
            passive: false,
            ipv4: true,
            ipv6: true,
            graceful_restart: Some(120),
            extended_next_hop: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;

    use crate::bgp::rib_out::RouteAttrs;

    const PEER_AS: u32 = 65001;

    fn settings() -> Settings {
        Settings::for_tests()
    }

    fn local() -> Local {
        Local {
            next_hop_v4: Some(Ipv4Addr::new(10, 0, 0, 5)),
            next_hop_v6: None,
        }
    }

    fn peer_open(asn: u32, id: [u8; 4], hold: u16, extra: Vec<Capability>) -> Message {
        let mut capabilities = vec![
            Capability::Multiprotocol(Family::IPV4_UNICAST),
            Capability::FourOctetAs(asn),
            Capability::RouteRefresh,
        ];
        capabilities.extend(extra);
        Message::Open(Open {
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time: hold,
            router_id: u32::from(Ipv4Addr::from(id)),
            capabilities,
        })
    }

    fn sent(actions: &[Action]) -> Vec<(ConnId, &Message)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(id, m) => Some((*id, m)),
                _ => None,
            })
            .collect()
    }

    fn notifications(actions: &[Action]) -> Vec<(ConnId, u8, u8)> {
        sent(actions)
            .into_iter()
            .filter_map(|(id, m)| match m {
                Message::Notification(n) => Some((id, n.code, n.subcode)),
                _ => None,
            })
            .collect()
    }

    fn is_down(actions: &[Action]) -> bool {
        actions.iter().any(|a| matches!(a, Action::Down(_)))
    }

    fn routes(n: u32) -> Routes {
        (0..n)
            .map(|i| {
                let ip = Ipv4Addr::from(0xc633_6400 + i);
                (IpNet::from(std::net::IpAddr::V4(ip)), RouteAttrs::default())
            })
            .collect()
    }

    /// Drives a session to Established over its first outbound connection.
    fn established(t0: Instant) -> (Session, ConnId) {
        established_with(t0, vec![])
    }

    /// Established with the peer's OPEN carrying `extra` capabilities.
    fn established_with(t0: Instant, extra: Vec<Capability>) -> (Session, ConnId) {
        let mut s = Session::new(settings());
        s.set_routes(Arc::new(routes(3)));
        let a = s.start(t0);
        assert_eq!(a, vec![Action::Connect(ConnId(1))]);
        let id = ConnId(1);
        let a = s.handle(Event::Connected(id, Direction::Outbound, local()), t0);
        assert!(matches!(sent(&a)[..], [(_, Message::Open(_))]), "{a:?}");
        let a = s.handle(
            Event::Received(id, peer_open(PEER_AS, [10, 0, 0, 1], 30, extra)),
            t0,
        );
        assert_eq!(sent(&a), vec![(id, &Message::Keepalive)]);
        let a = s.handle(Event::Received(id, Message::Keepalive), t0);
        assert!(matches!(a.first(), Some(Action::Up(n)) if n.hold_time == 30 && n.keepalive == 10));
        (s, id)
    }

    #[test]
    fn established_sends_routes_then_end_of_rib() {
        let t0 = Instant::now();
        let mut s = Session::new(settings());
        s.set_routes(Arc::new(routes(3)));
        s.start(t0);
        let id = ConnId(1);
        s.handle(Event::Connected(id, Direction::Outbound, local()), t0);
        s.handle(
            Event::Received(id, peer_open(PEER_AS, [10, 0, 0, 1], 30, vec![])),
            t0,
        );
        let a = s.handle(Event::Received(id, Message::Keepalive), t0);
        let updates: Vec<&Message> = sent(&a).into_iter().map(|(_, m)| m).collect();
        // One UPDATE with the three routes, then the IPv4 End-of-RIB (the peer offered no IPv6).
        assert_eq!(updates.len(), 2, "{a:?}");
        assert_eq!(updates[1], &Message::Update(vec![0, 0, 0, 0]));
        assert_eq!(s.advertised().len(), 3);
        assert_eq!(s.established().map(|n| n.ipv6), Some(false));
        // A change sends only the difference.
        let a = s.set_routes(Arc::new(routes(4)));
        assert_eq!(sent(&a).len(), 1);
        assert_eq!(s.advertised().len(), 4);
    }

    #[test]
    fn keepalives_follow_the_negotiated_interval_and_hold_expiry_resets() {
        let t0 = Instant::now();
        let (mut s, id) = established(t0);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(10)));
        let a = s.tick(t0 + Duration::from_secs(10));
        assert_eq!(sent(&a), vec![(id, &Message::Keepalive)]);
        // Something from the peer at 20 s pushes the hold timer to 50 s.
        s.handle(
            Event::Received(id, Message::Keepalive),
            t0 + Duration::from_secs(20),
        );
        let a = s.tick(t0 + Duration::from_secs(49));
        assert!(notifications(&a).is_empty());
        let a = s.tick(t0 + Duration::from_secs(50));
        assert_eq!(notifications(&a), vec![(id, code::HOLD_TIMER_EXPIRED, 0)]);
        assert!(is_down(&a));
        assert!(a.contains(&Action::Close(id)));
        assert!(s.advertised().is_empty());
        // And it reconnects after the first backoff.
        let a = s.tick(t0 + Duration::from_secs(51));
        assert_eq!(a, vec![Action::Connect(ConnId(2))]);
    }

    #[test]
    fn hold_time_zero_means_no_keepalives() {
        let t0 = Instant::now();
        let mut s = Session::new(settings());
        s.start(t0);
        s.handle(
            Event::Connected(ConnId(1), Direction::Outbound, local()),
            t0,
        );
        s.handle(
            Event::Received(ConnId(1), peer_open(PEER_AS, [1, 1, 1, 1], 0, vec![])),
            t0,
        );
        s.handle(Event::Received(ConnId(1), Message::Keepalive), t0);
        assert_eq!(s.established().map(|n| n.hold_time), Some(0));
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn reconnects_back_off_up_to_the_connect_time() {
        let t0 = Instant::now();
        let mut s = Session::new(Settings {
            connect_time: Duration::from_secs(5),
            ..settings()
        });
        let mut now = t0;
        let mut waits = Vec::new();
        let mut actions = s.start(now);
        for _ in 0..6 {
            let Some(Action::Connect(id)) = actions.first().cloned() else {
                panic!("{actions:?}");
            };
            s.handle(Event::ConnectFailed(id), now);
            let next = s.next_deadline().unwrap_or(now);
            waits.push((next - now).as_secs());
            now = next;
            actions = s.tick(now);
        }
        assert_eq!(waits, vec![1, 2, 4, 5, 5, 5]);
    }

    #[test]
    fn passive_sessions_wait_for_the_peer() {
        let t0 = Instant::now();
        let mut s = Session::new(Settings {
            passive: true,
            ..settings()
        });
        assert!(s.start(t0).is_empty());
        assert_eq!(s.next_deadline(), None);
        let id = ConnId(1 << 32);
        let a = s.handle(Event::Connected(id, Direction::Inbound, local()), t0);
        assert!(matches!(sent(&a)[..], [(i, Message::Open(_))] if i == id));
        s.handle(
            Event::Received(id, peer_open(PEER_AS, [1, 1, 1, 1], 90, vec![])),
            t0,
        );
        let a = s.handle(Event::Received(id, Message::Keepalive), t0);
        assert!(matches!(a.first(), Some(Action::Up(_))));
        let a = s.handle(Event::Closed(id), t0);
        assert!(is_down(&a));
        assert!(
            s.tick(t0 + Duration::from_secs(60)).is_empty(),
            "never connects"
        );
    }

    #[test]
    fn a_collision_between_equal_identifiers_keeps_the_higher_as_connection() {
        // eBGP allows equal identifiers (RFC 6286 §2.3): the AS decides, so that both sides
        // keep the same connection instead of each closing the other's.
        let t0 = Instant::now();
        let mut s = Session::new(Settings {
            peer_as: PeerAs::Fixed(64000),
            ..settings()
        });
        s.start(t0);
        let (ours, theirs) = (ConnId(1), ConnId(1 << 32));
        s.handle(Event::Connected(ours, Direction::Outbound, local()), t0);
        s.handle(Event::Connected(theirs, Direction::Inbound, local()), t0);
        let same_id = [10, 0, 0, 5];
        s.handle(
            Event::Received(ours, peer_open(64000, same_id, 90, vec![])),
            t0,
        );
        let a = s.handle(
            Event::Received(theirs, peer_open(64000, same_id, 90, vec![])),
            t0,
        );
        // Our AS 64512 is the higher: our connection stays.
        assert_eq!(
            notifications(&a),
            vec![(theirs, code::CEASE, cease::CONNECTION_COLLISION)]
        );
    }

    #[test]
    fn collision_keeps_the_connection_of_the_higher_identifier() {
        for (peer_id, keep) in [
            ([10, 0, 0, 1], Direction::Outbound),
            ([10, 0, 0, 9], Direction::Inbound),
        ] {
            let t0 = Instant::now();
            let mut s = Session::new(settings());
            s.start(t0);
            let (ours, theirs) = (ConnId(1), ConnId(1 << 32));
            s.handle(Event::Connected(ours, Direction::Outbound, local()), t0);
            s.handle(Event::Connected(theirs, Direction::Inbound, local()), t0);
            let a = s.handle(
                Event::Received(ours, peer_open(PEER_AS, peer_id, 90, vec![])),
                t0,
            );
            assert!(
                notifications(&a).is_empty(),
                "the other is still in OpenSent"
            );
            let a = s.handle(
                Event::Received(theirs, peer_open(PEER_AS, peer_id, 90, vec![])),
                t0,
            );
            let loser = if keep == Direction::Outbound {
                theirs
            } else {
                ours
            };
            let winner = if keep == Direction::Outbound {
                ours
            } else {
                theirs
            };
            assert_eq!(
                notifications(&a),
                vec![(loser, code::CEASE, cease::CONNECTION_COLLISION)],
                "peer id {peer_id:?}"
            );
            assert!(a.contains(&Action::Close(loser)));
            let a = s.handle(Event::Received(winner, Message::Keepalive), t0);
            assert!(matches!(a.first(), Some(Action::Up(_))), "{a:?}");
            // A late message on the closed connection changes nothing.
            assert!(
                s.handle(Event::Received(loser, Message::Keepalive), t0)
                    .is_empty()
            );
        }
    }

    #[test]
    fn a_second_connection_while_established_yields_unless_the_peer_restarted() {
        let t0 = Instant::now();
        let gr = || Capability::GracefulRestart {
            restarting: true,
            time: 120,
            families: vec![],
        };
        let (mut s, id) = established(t0);
        let late = ConnId(1 << 32);
        s.handle(Event::Connected(late, Direction::Inbound, local()), t0);
        let a = s.handle(
            Event::Received(late, peer_open(PEER_AS, [10, 0, 0, 1], 90, vec![])),
            t0,
        );
        assert_eq!(
            notifications(&a),
            vec![(late, code::CEASE, cease::CONNECTION_COLLISION)]
        );
        assert!(s.established().is_some());
        // Graceful restart never agreed on the session: an OPEN saying it proves nothing
        // (one spoofed connection must not tear a healthy session down).
        let spoofed = ConnId((1 << 32) + 7);
        s.handle(Event::Connected(spoofed, Direction::Inbound, local()), t0);
        let a = s.handle(
            Event::Received(spoofed, peer_open(PEER_AS, [10, 0, 0, 1], 90, vec![gr()])),
            t0,
        );
        assert!(!a.contains(&Action::Close(id)), "{a:?}");
        assert!(s.established().is_some());

        let (mut s, id) = established_with(t0, vec![gr()]);
        // With graceful restart the peer says it restarted: the old session is gone.
        let again = ConnId((1 << 32) + 1);
        s.handle(Event::Connected(again, Direction::Inbound, local()), t0);
        let a = s.handle(
            Event::Received(again, peer_open(PEER_AS, [10, 0, 0, 1], 90, vec![gr()])),
            t0,
        );
        assert!(a.contains(&Action::Close(id)));
        assert!(is_down(&a));
        let a = s.handle(Event::Received(again, Message::Keepalive), t0);
        assert!(matches!(a.first(), Some(Action::Up(_))));
        assert_eq!(
            s.advertised().len(),
            3,
            "routes sent again on the new connection"
        );
    }

    #[test]
    fn open_checks() {
        let t0 = Instant::now();
        type Case = (Settings, Message, Option<(u8, u8)>);
        let cases: Vec<Case> = vec![
            (
                settings(),
                peer_open(65002, [1, 1, 1, 1], 90, vec![]),
                Some((code::OPEN_MESSAGE, open_error::BAD_PEER_AS)),
            ),
            (
                Settings {
                    peer_as: PeerAs::Internal,
                    ..settings()
                },
                peer_open(64512, [10, 0, 0, 5], 90, vec![]),
                Some((code::OPEN_MESSAGE, open_error::BAD_BGP_IDENTIFIER)),
            ),
            (
                Settings {
                    peer_as: PeerAs::Internal,
                    ..settings()
                },
                peer_open(64512, [10, 0, 0, 6], 90, vec![]),
                None,
            ),
            (
                Settings {
                    peer_as: PeerAs::External,
                    ..settings()
                },
                peer_open(64512, [10, 0, 0, 6], 90, vec![]),
                Some((code::OPEN_MESSAGE, open_error::BAD_PEER_AS)),
            ),
            (
                Settings {
                    peer_as: PeerAs::External,
                    ..settings()
                },
                peer_open(4_200_000_000, [10, 0, 0, 6], 90, vec![]),
                None,
            ),
            // A capability we do not know is ignored (RFC 5492).
            (
                settings(),
                peer_open(
                    PEER_AS,
                    [1, 1, 1, 1],
                    90,
                    vec![Capability::Other {
                        code: 73,
                        value: b"fqdn".to_vec(),
                    }],
                ),
                None,
            ),
        ];
        for (settings, open, want) in cases {
            let mut s = Session::new(settings);
            s.start(t0);
            s.handle(
                Event::Connected(ConnId(1), Direction::Outbound, local()),
                t0,
            );
            let a = s.handle(Event::Received(ConnId(1), open.clone()), t0);
            let got = notifications(&a).first().map(|(_, c, s)| (*c, *s));
            assert_eq!(got, want, "{open:?}");
        }
    }

    #[test]
    fn unexpected_messages_get_the_fsm_error_of_the_state() {
        let t0 = Instant::now();
        let update = Message::Update(vec![0, 0, 0, 0]);
        let open = peer_open(PEER_AS, [10, 0, 0, 1], 90, vec![]);
        // OpenSent: anything but OPEN.
        for m in [Message::Keepalive, update.clone()] {
            let mut s = Session::new(settings());
            s.start(t0);
            s.handle(
                Event::Connected(ConnId(1), Direction::Outbound, local()),
                t0,
            );
            let a = s.handle(Event::Received(ConnId(1), m), t0);
            assert_eq!(
                notifications(&a),
                vec![(ConnId(1), code::FSM, fsm_error::IN_OPEN_SENT)]
            );
        }
        // OpenConfirm: anything but KEEPALIVE.
        for m in [open.clone(), update] {
            let mut s = Session::new(settings());
            s.start(t0);
            s.handle(
                Event::Connected(ConnId(1), Direction::Outbound, local()),
                t0,
            );
            s.handle(Event::Received(ConnId(1), open.clone()), t0);
            let a = s.handle(Event::Received(ConnId(1), m), t0);
            assert_eq!(
                notifications(&a),
                vec![(ConnId(1), code::FSM, fsm_error::IN_OPEN_CONFIRM)]
            );
        }
        // Established: a second OPEN.
        let (mut s, id) = established(t0);
        let a = s.handle(Event::Received(id, open), t0);
        assert_eq!(
            notifications(&a),
            vec![(id, code::FSM, fsm_error::IN_ESTABLISHED)]
        );
        assert!(is_down(&a));
    }

    #[test]
    fn a_notification_in_any_state_closes_without_reply() {
        let t0 = Instant::now();
        let n = Message::Notification(Notification::new(code::CEASE, 2, []));
        let open = peer_open(PEER_AS, [10, 0, 0, 1], 90, vec![]);
        for steps in 0..3 {
            let mut s = Session::new(settings());
            s.start(t0);
            s.handle(
                Event::Connected(ConnId(1), Direction::Outbound, local()),
                t0,
            );
            if steps >= 1 {
                s.handle(Event::Received(ConnId(1), open.clone()), t0);
            }
            if steps >= 2 {
                s.handle(Event::Received(ConnId(1), Message::Keepalive), t0);
            }
            let a = s.handle(Event::Received(ConnId(1), n.clone()), t0);
            assert!(notifications(&a).is_empty());
            assert!(a.contains(&Action::Close(ConnId(1))));
            assert_eq!(is_down(&a), steps == 2, "step {steps}: {a:?}");
            assert!(s.next_deadline().is_some(), "a retry is scheduled");
        }
    }

    #[test]
    fn malformed_updates_reset_with_their_notification() {
        let t0 = Instant::now();
        let (mut s, id) = established(t0);
        // Withdrawn-routes length running past the message.
        let a = s.handle(Event::Received(id, Message::Update(vec![0, 9, 0, 0])), t0);
        assert_eq!(notifications(&a), vec![(id, code::UPDATE_MESSAGE, 1)]);
        assert!(is_down(&a));
    }

    #[test]
    fn route_refresh_resends_the_family() {
        let t0 = Instant::now();
        let (mut s, id) = established(t0);
        let a = s.handle(
            Event::Received(
                id,
                Message::RouteRefresh {
                    family: Family::IPV4_UNICAST,
                    subtype: 0,
                },
            ),
            t0,
        );
        // The three routes in one UPDATE, and End-of-RIB.
        assert_eq!(sent(&a).len(), 2, "{a:?}");
    }

    #[test]
    fn route_refresh_is_one_table_per_family_and_second_and_only_what_rfc_7313_asks() {
        let t0 = Instant::now();
        let (mut s, id) = established(t0);
        let rr = |afi, safi, subtype| {
            Event::Received(
                id,
                Message::RouteRefresh {
                    family: Family { afi, safi },
                    subtype,
                },
            )
        };
        // BoRR, EoRR, an unknown subtype, a family never negotiated (EVPN; and IPv6, which
        // this session does not carry): nothing is sent, the session stays.
        for (afi, safi, subtype) in [(1, 1, 1), (1, 1, 2), (1, 1, 9), (25, 70, 0), (2, 1, 0)] {
            let a = s.handle(rr(afi, safi, subtype), t0);
            assert!(sent(&a).is_empty(), "{afi}/{safi} subtype {subtype}: {a:?}");
        }
        assert!(s.established().is_some());
        // A flood of requests costs one table per second, not one per request.
        let first = s.handle(rr(1, 1, 0), t0);
        assert_eq!(sent(&first).len(), 2, "the table and End-of-RIB");
        let mut more = 0;
        for i in 1..=500u32 {
            more += sent(&s.handle(rr(1, 1, 0), t0 + Duration::from_micros(u64::from(i)))).len();
        }
        assert_eq!(more, 0);
        assert_eq!(s.next_deadline(), Some(t0 + REFRESH_GAP));
        let later = s.tick(t0 + REFRESH_GAP);
        assert_eq!(sent(&later).len(), 2, "the held-back requests, served once");
        assert!(sent(&s.tick(t0 + REFRESH_GAP * 3)).is_empty());
    }

    #[test]
    fn a_session_that_keeps_failing_soon_after_established_waits_longer_each_time() {
        let t0 = Instant::now();
        let (mut s, mut id) = established(t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for round in 0..9u64 {
            // The peer resets 5 s after each Established (say, over an UPDATE it dislikes).
            now += Duration::from_secs(5);
            let n = Notification::new(code::UPDATE_MESSAGE, 1, []);
            s.handle(Event::Received(id, Message::Notification(n)), now);
            let retry = s.next_deadline().expect("a retry is armed");
            waits.push(retry.saturating_duration_since(now).as_secs());
            now = retry;
            let a = s.tick(now);
            id = ConnId(2 + round);
            assert_eq!(a, vec![Action::Connect(id)]);
            s.handle(Event::Connected(id, Direction::Outbound, local()), now);
            s.handle(
                Event::Received(id, peer_open(PEER_AS, [10, 0, 0, 1], 30, vec![])),
                now,
            );
            s.handle(Event::Received(id, Message::Keepalive), now);
            assert!(s.established().is_some());
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 64, 120, 120]);
        // A session that stays up past a minute is stable: the next wait is one second.
        now += STABLE;
        s.handle(Event::Closed(id), now);
        assert_eq!(s.next_deadline(), Some(now + FIRST_RETRY));
    }

    #[test]
    fn as_zero_is_a_bad_peer_as_even_for_a_dynamic_external_peer() {
        let t0 = Instant::now();
        let mut s = Session::new(Settings {
            peer_as: PeerAs::External,
            ..settings()
        });
        s.start(t0);
        s.handle(
            Event::Connected(ConnId(1), Direction::Outbound, local()),
            t0,
        );
        let a = s.handle(
            Event::Received(ConnId(1), peer_open(0, [10, 0, 0, 1], 30, vec![])),
            t0,
        );
        assert_eq!(
            notifications(&a),
            vec![(ConnId(1), code::OPEN_MESSAGE, open_error::BAD_PEER_AS)]
        );
    }

    #[test]
    fn connections_a_peer_opens_at_once_are_capped() {
        let t0 = Instant::now();
        let mut s = Session::new(settings());
        s.start(t0);
        let mut closed = 0;
        for i in 0..50u64 {
            let a = s.handle(
                Event::Connected(ConnId((1 << 32) + i), Direction::Inbound, local()),
                t0,
            );
            closed += usize::from(a == vec![Action::Close(ConnId((1 << 32) + i))]);
        }
        assert_eq!(closed, 50 - MAX_INBOUND_OPENING);
    }

    #[test]
    fn a_peer_that_does_not_read_is_told_out_of_resources() {
        let t0 = Instant::now();
        let (mut s, id) = established(t0);
        let a = s.handle(Event::Backlogged(id), t0);
        assert_eq!(
            notifications(&a),
            vec![(id, code::CEASE, cease::OUT_OF_RESOURCES)]
        );
        assert!(is_down(&a));
    }

    #[test]
    fn stopping_closes_gracefully_only_for_a_restart_with_graceful_restart() {
        let t0 = Instant::now();
        let gr = Capability::GracefulRestart {
            restarting: false,
            time: 120,
            families: vec![],
        };
        for (why, peer_gr, want) in [
            (Stop::Restart, true, vec![]),
            (
                Stop::Restart,
                false,
                vec![(ConnId(1), code::CEASE, cease::ADMINISTRATIVE_SHUTDOWN)],
            ),
            (
                Stop::Shutdown,
                true,
                vec![(ConnId(1), code::CEASE, cease::ADMINISTRATIVE_SHUTDOWN)],
            ),
            (
                Stop::Deconfigured,
                true,
                vec![(ConnId(1), code::CEASE, cease::PEER_DECONFIGURED)],
            ),
        ] {
            let mut s = Session::new(settings());
            s.start(t0);
            s.handle(
                Event::Connected(ConnId(1), Direction::Outbound, local()),
                t0,
            );
            let extra = if peer_gr { vec![gr.clone()] } else { vec![] };
            s.handle(
                Event::Received(ConnId(1), peer_open(PEER_AS, [1, 1, 1, 1], 90, extra)),
                t0,
            );
            s.handle(Event::Received(ConnId(1), Message::Keepalive), t0);
            let a = s.stop(why);
            assert_eq!(notifications(&a), want, "{why:?} peer gr {peer_gr}");
            assert!(a.contains(&Action::Close(ConnId(1))));
            assert!(is_down(&a));
            assert!(
                s.tick(t0 + Duration::from_secs(100)).is_empty(),
                "stays stopped"
            );
        }
    }

    #[test]
    fn bfd_down_takes_the_session_down_at_once() {
        let t0 = Instant::now();
        let (mut s, id) = established(t0);
        let a = s.handle(Event::BfdDown, t0);
        assert_eq!(notifications(&a), vec![(id, code::CEASE, cease::BFD_DOWN)]);
        assert!(is_down(&a));
    }

    #[test]
    fn ipv4_via_ipv6_needs_both_sides_to_offer_it() {
        let ours = Settings {
            extended_next_hop: true,
            ..settings()
        };
        assert!(
            ours.open()
                .capabilities
                .contains(&Capability::ExtendedNextHop(vec![IPV4_VIA_IPV6]))
        );
        assert!(
            !settings()
                .open()
                .capabilities
                .iter()
                .any(|c| matches!(c, Capability::ExtendedNextHop(_)))
        );
        let open = |extra: Vec<Capability>| match peer_open(PEER_AS, [10, 0, 0, 9], 90, extra) {
            Message::Open(o) => o,
            _ => unreachable!("an OPEN"),
        };
        let offered = open(vec![Capability::ExtendedNextHop(vec![IPV4_VIA_IPV6])]);
        assert!(negotiate(&ours, &offered).ipv4_via_ipv6);
        assert!(!negotiate(&settings(), &offered).ipv4_via_ipv6);
        assert!(!negotiate(&ours, &open(Vec::new())).ipv4_via_ipv6);
        // Another family's entry is not IPv4 with IPv6 next hops.
        let other = open(vec![Capability::ExtendedNextHop(vec![
            crate::bgp::message::NextHopFamily {
                family: Family::IPV6_UNICAST,
                next_hop_afi: 1,
            },
        ])]);
        assert!(!negotiate(&ours, &other).ipv4_via_ipv6);
    }

    #[test]
    fn our_open_offers_what_the_settings_say() {
        let o = settings().open();
        assert_eq!(o.asn(), 64512);
        assert!(
            o.capabilities
                .contains(&Capability::Multiprotocol(Family::IPV6_UNICAST))
        );
        let big = Settings {
            local_as: 4_200_000_000,
            graceful_restart: None,
            ..settings()
        };
        let o = big.open();
        assert_eq!(o.my_as, AS_TRANS);
        assert_eq!(o.asn(), 4_200_000_000);
        assert!(
            !o.capabilities
                .iter()
                .any(|c| matches!(c, Capability::GracefulRestart { .. }))
        );
    }
}
