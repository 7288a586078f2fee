//! The BGP speaker's I/O: one task per peer drives its [`Session`] with TCP connections,
//! timers and the plan's routes; a listener on port 179 hands the peers' own connections to
//! their tasks. A new plan changes only what changed: routes go out as UPDATEs on the running
//! session, and only a peer whose session parameters changed is reset.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::message::{self, Message};
use super::policy::{PeerPlan, Plan};
use super::rib_out::Routes;
use super::session::{Action, ConnId, Direction, Event, Local, Session, Stop};
use super::socket;
use crate::bfd::packet::State as BfdState;
use crate::bfd::service::{Bfd, BfdMetrics};
use crate::metrics::family::PeerLabel;

/// MetalLB's BGP metrics (label `peer`, `address:port`), and each session's state for the
/// BGPSessionState objects.
#[derive(Clone, Default)]
pub struct BgpMetrics {
    pub session_up: Family<PeerLabel, Gauge>,
    pub updates: Family<PeerLabel, Counter>,
    pub announced: Family<PeerLabel, Gauge>,
    pub pending: Family<PeerLabel, Gauge>,
    pub sessions: SessionStates,
}

/// One session as FRR-K8s' BGPSessionState shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionState {
    /// `Idle`, `Connect`, `OpenSent`, `OpenConfirm`, `Established`.
    pub bgp: &'static str,
    /// `Up`, `Down`, or `N/A` without BFD.
    pub bfd: &'static str,
}

/// Every configured session's state, by peer (its address, or its interface when unnumbered).
#[derive(Clone)]
pub struct SessionStates(Arc<watch::Sender<BTreeMap<String, SessionState>>>);

impl Default for SessionStates {
    fn default() -> Self {
        Self(Arc::new(watch::channel(BTreeMap::new()).0))
    }
}

impl SessionStates {
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<String, SessionState>> {
        self.0.subscribe()
    }

    fn set(&self, peer: &str, state: SessionState) {
        self.0.send_if_modified(|m| {
            if m.get(peer) == Some(&state) {
                return false;
            }
            m.insert(peer.to_owned(), state);
            true
        });
    }

    fn remove(&self, peer: &str) {
        self.0.send_if_modified(|m| m.remove(peer).is_some());
    }
}

impl BgpMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "metallb_bgp_session_up",
            "BGP session state (1 is up, 0 is down)",
            self.session_up.clone(),
        );
        // prometheus-client appends `_total`: MetalLB's `metallb_bgp_updates_total`.
        registry.register(
            "metallb_bgp_updates",
            "Number of BGP UPDATE messages sent",
            self.updates.clone(),
        );
        registry.register(
            "metallb_bgp_announced_prefixes_total",
            "Number of prefixes currently being advertised on the BGP session",
            self.announced.clone(),
        );
        registry.register(
            "metallb_bgp_pending_prefixes_total",
            "Number of prefixes that should be advertised on the BGP session",
            self.pending.clone(),
        );
    }

    /// Drops a peer's series; with `peer`, its session state too (a task ending after its
    /// replacement started must not remove the replacement's).
    fn forget(&self, label: &PeerLabel, peer: Option<&str>) {
        if let Some(peer) = peer {
            self.sessions.remove(peer);
        }
        self.session_up.remove(label);
        self.updates.remove(label);
        self.announced.remove(label);
        self.pending.remove(label);
    }
}

/// How long a connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Decoded messages a connection's reader may queue ahead of the session: beyond it the reader
/// stops reading, the socket's receive window closes, and TCP slows the peer down.
const EVENTS_QUEUED: usize = 64;
/// At most one log line per peer and this interval about treat-as-withdraw UPDATEs.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// The pause after a failed accept.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Bytes a connection may have queued for a peer that does not read: twice a full table of
/// 10,000 routes (about 50 KB each way, IPv4 and IPv6) and then some. A connection past it
/// is closed with Cease "Out of Resources" (the stated memory bound per peer).
const SEND_QUEUE_BYTES: usize = 4 << 20;
/// How long a stopping session may take to send its last words.
const FLUSH: Duration = Duration::from_millis(500);
/// Accepted connections are numbered from here, apart from the session's own.
const INBOUND_IDS: u64 = 1 << 32;

enum Cmd {
    Routes(Arc<Routes>),
    Inbound(TcpStream),
    Stop(Stop),
}

struct PeerTask {
    plan: PeerPlan,
    cmds: mpsc::UnboundedSender<Cmd>,
    task: JoinHandle<()>,
}

/// The running speaker; dropping it aborts the sessions without a word, [`Speaker::stop`]
/// ends them properly.
pub struct Speaker {
    plans: watch::Sender<Plan>,
    stop: Option<tokio::sync::oneshot::Sender<Stop>>,
    task: JoinHandle<()>,
}

impl Speaker {
    /// Starts with no peers; listens on `listen` (normally port 179) once there are some.
    pub fn spawn(metrics: BgpMetrics, bfd: BfdMetrics, listen: SocketAddr) -> Speaker {
        let (plans, rx) = watch::channel(Plan::new());
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let bfd = Bfd::spawn(bfd);
        let task = tokio::spawn(manage(rx, stop_rx, metrics, bfd, listen));
        Speaker {
            plans,
            stop: Some(stop),
            task,
        }
    }

    pub fn apply(&self, plan: Plan) {
        self.plans.send_if_modified(|old| {
            let changed = *old != plan;
            *old = plan;
            changed
        });
    }

    /// Ends every session (`Restart`: silently where graceful restart was agreed) and waits.
    pub async fn stop(mut self, why: Stop) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(why);
        }
        let _ = (&mut self.task).await;
    }
}

fn label(plan: &PeerPlan) -> PeerLabel {
    PeerLabel {
        // An unnumbered peer is known by its interface (its address may change).
        peer: match &plan.interface {
            Some(iface) => iface.clone(),
            None => SocketAddr::new(plan.address, plan.port).to_string(),
        },
    }
}

/// The peer as FRR-K8s names it in a BGPSessionState: its interface when unnumbered, else
/// its address.
pub fn session_peer(plan: &PeerPlan) -> String {
    match &plan.interface {
        Some(iface) => iface.clone(),
        None => plan.address.to_string(),
    }
}

fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // One listener for both families.
        sock.set_only_v6(false)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(64)?;
    TcpListener::from_std(sock.into())
}

async fn manage(
    mut plans: watch::Receiver<Plan>,
    mut stop: tokio::sync::oneshot::Receiver<Stop>,
    metrics: BgpMetrics,
    bfd: Bfd,
    listen: SocketAddr,
) {
    let mut peers: BTreeMap<String, PeerTask> = BTreeMap::new();
    let mut listening: Option<TcpListener> = None;
    let mut keys: HashMap<IpAddr, String> = HashMap::new();
    loop {
        tokio::select! {
            changed = plans.changed() => {
                if changed.is_err() {
                    break;
                }
                let plan = plans.borrow_and_update().clone();
                if listening.is_none() && !plan.is_empty() {
                    match listener(listen) {
                        Ok(l) => listening = Some(l),
                        // Sessions still come up from our side.
                        Err(e) => tracing::warn!(%listen, error = %e, "BGP: cannot listen; connecting out only"),
                    }
                }
                if let Some(l) = &listening {
                    sync_keys(l, &plan, &mut keys);
                }
                reconcile(&mut peers, plan, &metrics, &bfd);
            }
            accepted = async { listening.as_ref()?.accept().await.ok() }, if listening.is_some() => {
                let Some((stream, from)) = accepted else {
                    // EMFILE and the like leave the listener readable: without a pause this
                    // loop would spin at full speed until a descriptor frees up.
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                };
                let from_ip = canonical(from.ip());
                // A link-local address names a peer only together with its interface: two
                // unnumbered peers may both be fe80::1.
                let scope = crate::ttl::link_scope(&from);
                let ours = |p: &&PeerTask| {
                    p.plan.address == from_ip
                        && (scope == 0 || p.plan.scope == 0 || p.plan.scope == scope)
                };
                match peers.values().find(ours) {
                    Some(p) => { let _ = p.cmds.send(Cmd::Inbound(stream)); }
                    None => tracing::debug!(%from, "BGP: connection refused: not a configured peer"),
                }
            }
            why = &mut stop => {
                let why = why.unwrap_or(Stop::Shutdown);
                for (_, p) in std::mem::take(&mut peers) {
                    let _ = p.cmds.send(Cmd::Stop(why));
                    let _ = tokio::time::timeout(FLUSH * 2, p.task).await;
                    metrics.forget(&label(&p.plan), Some(&session_peer(&p.plan)));
                }
                return;
            }
        }
    }
}

/// An IPv4 peer connecting to the dual-stack listener shows up as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The listener must know each peer's MD5 key, or the kernel drops the peer's SYNs.
fn sync_keys(l: &TcpListener, plan: &Plan, keys: &mut HashMap<IpAddr, String>) {
    let want: HashMap<IpAddr, String> = plan
        .values()
        .filter_map(|p| Some((p.address, p.password.clone()?)))
        .collect();
    for (ip, _) in keys.iter().filter(|(ip, _)| !want.contains_key(ip)) {
        let _ = socket::set_md5(l, listen_form(*ip), b"");
    }
    for (ip, key) in &want {
        if keys.get(ip) != Some(key)
            && let Err(e) = socket::set_md5(l, listen_form(*ip), key.as_bytes())
        {
            tracing::warn!(peer = %ip, error = %e, "BGP: cannot set the TCP MD5 password on the listener");
        }
    }
    *keys = want;
}

/// The address form the dual-stack listener sees an IPv4 peer under.
fn listen_form(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    }
}

fn reconcile(peers: &mut BTreeMap<String, PeerTask>, plan: Plan, metrics: &BgpMetrics, bfd: &Bfd) {
    let gone: Vec<String> = peers
        .keys()
        .filter(|k| !plan.get(*k).is_some_and(|p| peers[*k].plan.same_session(p)))
        .cloned()
        .collect();
    for k in gone {
        if let Some(p) = peers.remove(&k) {
            if plan.contains_key(&k) {
                tracing::info!(peer = %k, "BGP: session parameters changed, resetting");
            } else {
                tracing::info!(peer = %k, "BGP: peer removed");
            }
            let _ = p.cmds.send(Cmd::Stop(Stop::Deconfigured));
            metrics.forget(&label(&p.plan), Some(&session_peer(&p.plan)));
        }
    }
    for (k, p) in plan {
        match peers.get_mut(&k) {
            Some(running) => {
                if !Arc::ptr_eq(&running.plan.routes, &p.routes) && running.plan.routes != p.routes
                {
                    let _ = running.cmds.send(Cmd::Routes(p.routes.clone()));
                }
                running.plan = p;
            }
            None => {
                let (cmds, rx) = mpsc::unbounded_channel();
                let task = tokio::spawn(peer_task(
                    k.clone(),
                    p.clone(),
                    rx,
                    metrics.clone(),
                    bfd.clone(),
                ));
                peers.insert(
                    k,
                    PeerTask {
                        plan: p,
                        cmds,
                        task,
                    },
                );
            }
        }
    }
}

enum ConnEvent {
    Opened(ConnId, TcpStream),
    Failed(ConnId, String),
    Message(ConnId, Message),
    Malformed(ConnId, message::Notification),
    Closed(ConnId),
}

struct Conn {
    writer: mpsc::UnboundedSender<BytesMut>,
    /// Bytes handed to the writer and not written yet.
    queued: Arc<AtomicUsize>,
    reader: JoinHandle<()>,
    written: JoinHandle<()>,
}

struct Peer {
    key: String,
    plan: PeerPlan,
    session: Session,
    conns: HashMap<ConnId, Conn>,
    /// Writers of closed connections still sending their last messages.
    closing: Vec<JoinHandle<()>>,
    events: mpsc::Sender<ConnEvent>,
    metrics: BgpMetrics,
    label: PeerLabel,
    /// Treat-as-withdraw UPDATEs since the last line about them, and when that was.
    withdrawn_seen: u64,
    withdrawn_logged: Option<Instant>,
    /// Whether BFD says the path is up (`None`: no BFD for this peer).
    bfd_up: Option<bool>,
    /// Told to stop: its session state is no longer published.
    stopping: bool,
}

async fn peer_task(
    key: String,
    plan: PeerPlan,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    metrics: BgpMetrics,
    bfd: Bfd,
) {
    // Bounded: a reader that gets ahead of the session waits, so TCP makes the peer wait.
    let (events, mut ev_rx) = mpsc::channel(EVENTS_QUEUED);
    // The BFD session lives as long as this task; its going down takes the BGP session down.
    let mut lease = match plan.bfd {
        Some(r) => bfd.lease(r).await,
        None => None,
    };
    let mut bfd_up = false;
    let mut session = Session::new(plan.settings.clone());
    session.set_routes(plan.routes.clone());
    let mut p = Peer {
        label: label(&plan),
        key,
        plan,
        session,
        conns: HashMap::new(),
        closing: Vec::new(),
        events,
        metrics,
        withdrawn_seen: 0,
        withdrawn_logged: None,
        bfd_up: None,
        stopping: false,
    };
    let mut next_inbound = INBOUND_IDS;
    let actions = p.session.start(Instant::now());
    p.run(actions);
    loop {
        let deadline = p
            .session
            .next_deadline()
            .map(tokio::time::Instant::from_std);
        let actions = tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Routes(r)) => p.session.set_routes(r),
                Some(Cmd::Inbound(stream)) => {
                    next_inbound += 1;
                    let id = ConnId(next_inbound);
                    // The same TTL as our own connections: a single-hop eBGP peer's connection
                    // arriving across a router gets no answer.
                    let v6 = stream.local_addr().is_ok_and(|a| a.is_ipv6() && a.ip().to_canonical().is_ipv6());
                    let ttl_set = socket::set_ttl(&stream, v6, ttl(&p.plan));
                    // With TTL security the TTL of this connection's first segments was not
                    // checked (the listener serves every peer): only our own connections count.
                    if p.session.accepts() && ttl_set.is_ok() && p.plan.ttl_security.is_none() {
                        let local = p.attach(id, stream);
                        p.session.handle(Event::Connected(id, Direction::Inbound, local), Instant::now())
                    } else {
                        Vec::new()
                    }
                }
                Some(Cmd::Stop(why)) => {
                    // Deconfigured: its state is forgotten, and must not come back.
                    p.stopping = true;
                    let actions = p.session.stop(why);
                    p.run(actions);
                    p.flush().await;
                    return;
                }
                None => {
                    let actions = p.session.stop(Stop::Shutdown);
                    p.run(actions);
                    p.flush().await;
                    return;
                }
            },
            Some(ev) = ev_rx.recv() => {
                let now = Instant::now();
                match ev {
                    ConnEvent::Opened(id, stream) => {
                        let local = p.attach(id, stream);
                        p.session.handle(Event::Connected(id, Direction::Outbound, local), now)
                    }
                    ConnEvent::Failed(id, why) => {
                        tracing::debug!(peer = %p.key, error = %why, "BGP: connect failed");
                        p.session.handle(Event::ConnectFailed(id), now)
                    }
                    ConnEvent::Message(id, m) => p.session.handle(Event::Received(id, m), now),
                    ConnEvent::Malformed(id, n) => p.session.handle(Event::Malformed(id, n), now),
                    ConnEvent::Closed(id) => p.session.handle(Event::Closed(id), now),
                }
            }
            changed = async {
                match &mut lease {
                    Some(l) => l.state.changed().await.map(|_| *l.state.borrow_and_update()),
                    None => std::future::pending().await,
                }
            } => match changed {
                Ok(state) => {
                    let was_up = std::mem::replace(&mut bfd_up, state == BfdState::Up);
                    p.bfd_up = Some(bfd_up);
                    if was_up && !bfd_up {
                        tracing::warn!(peer = %p.key, "BGP: BFD down");
                        p.session.handle(Event::BfdDown, Instant::now())
                    } else {
                        Vec::new()
                    }
                }
                Err(_) => {
                    lease = None;
                    Vec::new()
                }
            },
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => p.session.tick(Instant::now()),
        };
        p.run(actions);
    }
}

impl Peer {
    fn run(&mut self, mut actions: Vec<Action>) {
        loop {
            let mut backlogged = Vec::new();
            self.run_once(actions, &mut backlogged);
            backlogged.dedup();
            let Some(id) = backlogged.pop() else {
                break;
            };
            tracing::warn!(
                peer = %self.key,
                bound_bytes = SEND_QUEUE_BYTES,
                "BGP: the peer does not read; closing the connection"
            );
            actions = self.session.handle(Event::Backlogged(id), Instant::now());
        }
        self.record();
    }

    fn run_once(&mut self, actions: Vec<Action>, backlogged: &mut Vec<ConnId>) {
        for a in actions {
            match a {
                Action::Connect(id) => {
                    let (plan, events) = (self.plan.clone(), self.events.clone());
                    tokio::spawn(async move {
                        let ev = match connect(&plan).await {
                            Ok(s) => ConnEvent::Opened(id, s),
                            Err(e) => ConnEvent::Failed(id, e.to_string()),
                        };
                        let _ = events.send(ev).await;
                    });
                }
                Action::Send(id, msg) => {
                    let mut buf = BytesMut::new();
                    if let Err(e) = message::encode(&msg, &mut buf) {
                        tracing::error!(peer = %self.key, error = %e, "BGP: cannot encode a message");
                        continue;
                    }
                    if matches!(msg, Message::Update(_)) {
                        self.metrics.updates.get_or_create(&self.label).inc();
                    }
                    if let Some(c) = self.conns.get(&id) {
                        let queued = c.queued.load(Ordering::Relaxed);
                        if queued + buf.len() > SEND_QUEUE_BYTES
                            && !matches!(msg, Message::Notification(_))
                        {
                            backlogged.push(id);
                            continue;
                        }
                        c.queued.fetch_add(buf.len(), Ordering::Relaxed);
                        let _ = c.writer.send(buf);
                    }
                }
                Action::Close(id) => {
                    if let Some(c) = self.conns.remove(&id) {
                        // The writer sends what is queued, then shuts the connection down.
                        c.reader.abort();
                        self.closing.push(c.written);
                    }
                }
                Action::Up(n) => tracing::info!(
                    peer = %self.key,
                    address = %self.label.peer,
                    asn = n.peer_as,
                    router_id = %n.peer_id,
                    hold_s = n.hold_time,
                    ipv4 = n.ipv4,
                    ipv6 = n.ipv6,
                    "BGP: session established"
                ),
                Action::Down(why) => tracing::warn!(
                    peer = %self.key,
                    address = %self.label.peer,
                    reason = %why,
                    "BGP: session down"
                ),
                Action::Note(what) => tracing::info!(peer = %self.key, "BGP: {what}"),
                Action::TreatedAsWithdraw(why) => {
                    self.withdrawn_seen += 1;
                    let now = Instant::now();
                    if self
                        .withdrawn_logged
                        .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
                    {
                        tracing::info!(
                            peer = %self.key,
                            reason = %why,
                            updates = self.withdrawn_seen,
                            "BGP: UPDATEs treated as withdraw (logged once per 10 s)"
                        );
                        self.withdrawn_logged = Some(now);
                        self.withdrawn_seen = 0;
                    }
                }
            }
        }
    }

    fn record(&mut self) {
        self.closing.retain(|w| !w.is_finished());
        let m = &self.metrics;
        let up = self.session.established().is_some();
        m.session_up.get_or_create(&self.label).set(i64::from(up));
        if !self.stopping {
            let bfd = match (self.plan.bfd.is_some(), self.bfd_up) {
                (false, _) => "N/A",
                (true, Some(true)) => "Up",
                (true, _) => "Down",
            };
            m.sessions.set(
                &session_peer(&self.plan),
                SessionState {
                    bgp: self.session.state_name(),
                    bfd,
                },
            );
        }
        let announced = self.session.advertised().len();
        m.announced
            .get_or_create(&self.label)
            .set(i64::try_from(announced).unwrap_or(i64::MAX));
        m.pending
            .get_or_create(&self.label)
            .set(i64::try_from(self.session.pending()).unwrap_or(i64::MAX));
    }

    /// Starts the reader and writer of a connection; returns our next hops on it.
    fn attach(&mut self, id: ConnId, stream: TcpStream) -> Local {
        let _ = stream.set_nodelay(true);
        if let Err(e) = socket::set_keepalive(&stream) {
            tracing::debug!(peer = %self.key, error = %e, "BGP: no TCP keepalives on the connection");
        }
        let local_ip = stream.local_addr().map(|a| canonical(a.ip())).ok();
        let (mut rd, mut wr) = stream.into_split();
        // Unbounded as a channel, bounded in bytes by the sender (`queued`).
        let (writer, mut queue) = mpsc::unbounded_channel::<BytesMut>();
        let queued = Arc::new(AtomicUsize::new(0));
        let counted = queued.clone();
        let written = tokio::spawn(async move {
            while let Some(buf) = queue.recv().await {
                if wr.write_all(&buf).await.is_err() {
                    return;
                }
                counted.fetch_sub(buf.len(), Ordering::Relaxed);
            }
            let _ = wr.shutdown().await;
        });
        let events = self.events.clone();
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(message::MAX_LEN * 2);
            loop {
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = events.send(ConnEvent::Closed(id)).await;
                        return;
                    }
                    Ok(_) => {}
                }
                loop {
                    match message::decode(&buf) {
                        Ok(Some((m, n))) => {
                            let _ = buf.split_to(n);
                            if events.send(ConnEvent::Message(id, m)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(n) => {
                            let _ = events.send(ConnEvent::Malformed(id, n)).await;
                            return;
                        }
                    }
                }
            }
        });
        self.conns.insert(
            id,
            Conn {
                writer,
                queued,
                reader,
                written,
            },
        );
        let v6_global = |ip: Ipv6Addr| (!ip.is_unicast_link_local()).then_some((ip, None));
        if self.plan.interface.is_some() {
            // Unnumbered: our link-local address is the next hop for both families (IPv4
            // with the extended next hop capability), global or not.
            return Local {
                next_hop_v4: None,
                next_hop_v6: match local_ip {
                    Some(IpAddr::V6(v6)) => Some((v6, None)),
                    _ => None,
                },
            };
        }
        Local {
            next_hop_v4: match local_ip {
                Some(IpAddr::V4(v4)) => Some(v4),
                _ => self.plan.node_v4,
            },
            next_hop_v6: match local_ip {
                Some(IpAddr::V6(v6)) => v6_global(v6),
                _ => self.plan.node_v6.map(|v6| (v6, None)),
            },
        }
    }

    /// Lets the writers send the last messages (a NOTIFICATION) before the task ends.
    async fn flush(&mut self) {
        for (_, c) in self.conns.drain() {
            c.reader.abort();
            self.closing.push(c.written);
        }
        let writers = std::mem::take(&mut self.closing);
        let _ = tokio::time::timeout(FLUSH, futures::future::join_all(writers)).await;
        self.metrics.forget(&self.label, None);
    }
}

/// Directly connected eBGP sends with TTL 1, so a session cannot form across a router unless
/// `ebgpMultiHop` says so; multihop, iBGP and TTL security use 255.
fn ttl(plan: &PeerPlan) -> u8 {
    if plan.ttl_security.is_some() {
        return 255;
    }
    let ebgp = match plan.settings.peer_as {
        super::session::PeerAs::Fixed(asn) => asn != plan.settings.local_as,
        super::session::PeerAs::Internal => false,
        super::session::PeerAs::External => true,
    };
    if ebgp && !plan.multihop { 1 } else { 255 }
}

async fn connect(plan: &PeerPlan) -> std::io::Result<TcpStream> {
    let peer = match plan.address {
        // A link-local peer is reachable only through its interface.
        IpAddr::V6(v6) if plan.scope != 0 => {
            SocketAddr::V6(std::net::SocketAddrV6::new(v6, plan.port, 0, plan.scope))
        }
        ip => SocketAddr::new(ip, plan.port),
    };
    let sock = if peer.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(pw) = &plan.password {
        socket::set_md5(&sock, plan.address, pw.as_bytes())?;
    }
    socket::set_ttl(&sock, peer.is_ipv6(), ttl(plan))?;
    if let Some(hops) = plan.ttl_security {
        socket::set_min_ttl(&sock, peer.is_ipv6(), hops.min_ttl())?;
    }
    if let Some(src) = plan.source {
        sock.bind(SocketAddr::new(src, 0))?;
    }
    tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(peer))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}
