//! BFD's I/O: UDP on ports 3784 (single hop, RFC 5881) and 4784 (multihop, RFC 5883), one
//! task that owns every [`Session`], demultiplexes received packets (by Your Discriminator,
//! else by the peer's address), checks their TTL (255 for single hop: only a neighbour on the
//! link can send that; at least `minimumTtl` for multihop), and reports each session's state
//! on a watch channel.
use crate::ttl::{recv_with_ttl, setsockopt_int};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Instant;

use prometheus_client::metrics::{family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch};

use super::Request;
use super::packet::{Control, State};
use super::session::{Output, Session};
use crate::metrics::family::{Counts, PeerLabel};

pub const SINGLE_HOP_PORT: u16 = 3784;
pub const MULTIHOP_PORT: u16 = 4784;
/// RFC 5881 §4: source ports from this range.
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// MetalLB's BFD metrics (its FRR mode's names; label `peer`).
#[derive(Clone, Default)]
pub struct BfdMetrics {
    pub session_up: Family<PeerLabel, Gauge>,
    pub packets_in: Counts<PeerLabel>,
    pub packets_out: Counts<PeerLabel>,
    pub up_events: Counts<PeerLabel>,
    pub down_events: Counts<PeerLabel>,
}

impl BfdMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "metallb_bfd_session_up",
            "BFD session state (1 is up, 0 is down)",
            self.session_up.clone(),
        );
        registry.register(
            "metallb_bfd_control_packet_input",
            "Number of received BFD control packets",
            self.packets_in.clone(),
        );
        registry.register(
            "metallb_bfd_control_packet_output",
            "Number of sent BFD control packets",
            self.packets_out.clone(),
        );
        registry.register(
            "metallb_bfd_session_up_events",
            "Number of BFD session up events",
            self.up_events.clone(),
        );
        registry.register(
            "metallb_bfd_session_down_events",
            "Number of BFD session down events",
            self.down_events.clone(),
        );
    }
}

enum Cmd {
    Add(Request, oneshot::Sender<watch::Receiver<State>>),
    Remove(Request),
}

/// The handle the BGP peers use; cheap to clone.
#[derive(Clone)]
pub struct Bfd {
    cmds: mpsc::UnboundedSender<Cmd>,
}

/// A session held for a BGP peer; dropping it takes the session administratively down.
pub struct Lease {
    request: Request,
    cmds: mpsc::UnboundedSender<Cmd>,
    pub state: watch::Receiver<State>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Remove(self.request));
    }
}

impl Bfd {
    pub fn spawn(metrics: BfdMetrics) -> Bfd {
        let (cmds, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, metrics));
        Bfd { cmds }
    }

    /// Starts (or joins) the session `request` describes.
    pub async fn lease(&self, request: Request) -> Option<Lease> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Add(request, tx)).ok()?;
        let state = rx.await.ok()?;
        Some(Lease {
            request,
            cmds: self.cmds.clone(),
            state,
        })
    }
}

struct Entry {
    session: Session,
    request: Request,
    sock: UdpSocket,
    to: SocketAddr,
    state: watch::Sender<State>,
    label: PeerLabel,
    users: usize,
}

/// A received packet: what, from whom, with which TTL, on which port.
struct Received {
    control: Control,
    from: IpAddr,
    /// The interface a link-local source is scoped to (0 otherwise).
    scope: u32,
    ttl: Option<u8>,
    multihop: bool,
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A receiving socket on `port` for one family, reporting each packet's TTL.
fn receiver(v6: bool, port: u16) -> io::Result<UdpSocket> {
    let domain = if v6 {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    s.set_reuse_address(true)?;
    let addr: SocketAddr = if v6 {
        s.set_only_v6(true)?;
        setsockopt_int(
            s.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVHOPLIMIT,
            1,
        )?;
        (Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        setsockopt_int(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_RECVTTL, 1)?;
        (Ipv4Addr::UNSPECIFIED, port).into()
    };
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A socket to send one session's packets from: a source port of RFC 5881's range, TTL 255.
fn sender(r: &Request) -> io::Result<UdpSocket> {
    let local = r.local.unwrap_or(if r.peer.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    });
    let mut last = io::Error::other("no free source port");
    // Spread the starting point so sessions do not race for the same ports.
    let start = (std::process::id() % 16384) as u16;
    for i in 0..SOURCE_PORTS.len() as u16 {
        let port = SOURCE_PORTS.start() + (start + i) % 16384;
        match UdpSocket::bind(SocketAddr::new(local, port)) {
            Ok(s) => {
                let fd = s.as_raw_fd();
                if r.peer.is_ipv4() {
                    setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_TTL, 255)?;
                } else {
                    setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 255)?;
                }
                s.set_nonblocking(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn listen(tx: mpsc::UnboundedSender<Received>) {
    for (port, multihop) in [(SINGLE_HOP_PORT, false), (MULTIHOP_PORT, true)] {
        for v6 in [false, true] {
            let sock = match receiver(v6, port).and_then(tokio::net::UdpSocket::from_std) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(port, ipv6 = v6, error = %e, "BFD: cannot listen");
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 128];
                loop {
                    if sock.readable().await.is_err() {
                        return;
                    }
                    let fd = sock.as_raw_fd();
                    let got = sock.try_io(tokio::io::Interest::READABLE, || {
                        recv_with_ttl(fd, &mut buf)
                    });
                    // Not readable after all (WouldBlock) or a transient error: wait again.
                    let Ok((n, from, ttl)) = got else { continue };
                    // Malformed packets are discarded (RFC 5880 §6.8.6).
                    let Ok(control) = Control::decode(&buf[..n]) else {
                        continue;
                    };
                    let scope = crate::ttl::link_scope(&from);
                    let r = Received {
                        control,
                        from: canonical(from.ip()),
                        scope,
                        ttl,
                        multihop,
                    };
                    if tx.send(r).is_err() {
                        return;
                    }
                }
            });
        }
    }
}

async fn run(mut cmds: mpsc::UnboundedReceiver<Cmd>, metrics: BfdMetrics) {
    let (rx_tx, mut received) = mpsc::unbounded_channel();
    let mut listening = false;
    let mut sessions: HashMap<u32, Entry> = HashMap::new();
    // Random (RFC 5880 §6.8.1 SHOULD): derived from the PID, every agent in a container (PID
    // 1) would start from the same one, after every restart.
    let mut next_discr: u32 = crate::random::random_u64() as u32 | 1;
    loop {
        let deadline = sessions
            .values()
            .filter_map(|e| e.session.next_deadline())
            .min()
            .map(tokio::time::Instant::from_std);
        let now_outputs: Vec<(u32, Vec<Output>)> = tokio::select! {
            cmd = cmds.recv() => match cmd {
                None => return,
                Some(Cmd::Add(request, reply)) => {
                    if !listening {
                        listen(rx_tx.clone());
                        listening = true;
                    }
                    if let Some(e) = sessions.values_mut().find(|e| e.request == request) {
                        e.users += 1;
                        let _ = reply.send(e.state.subscribe());
                        continue;
                    }
                    let sock = match sender(&request) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(peer = %request.peer, error = %e, "BFD: no socket");
                            continue;
                        }
                    };
                    next_discr = next_discr.wrapping_add(1).max(1);
                    while sessions.contains_key(&next_discr) {
                        next_discr = next_discr.wrapping_add(1).max(1);
                    }
                    let discr = next_discr;
                    let mut session = Session::new(request.settings, discr, u64::from(discr) << 17 | 5);
                    let (state, rx) = watch::channel(State::Down);
                    let _ = reply.send(rx);
                    let port = if request.multihop { MULTIHOP_PORT } else { SINGLE_HOP_PORT };
                    let out = session.start(Instant::now());
                    let label = PeerLabel { peer: request.peer.to_string() };
                    metrics.session_up.get_or_create(&label).set(0);
                    sessions.insert(discr, Entry {
                        session,
                        request,
                        sock,
                        to: match request.peer {
                            IpAddr::V6(v6) if request.scope != 0 => {
                                SocketAddr::V6(std::net::SocketAddrV6::new(v6, port, 0, request.scope))
                            }
                            ip => SocketAddr::new(ip, port),
                        },
                        state,
                        label,
                        users: 1,
                    });
                    vec![(discr, out)]
                }
                Some(Cmd::Remove(request)) => {
                    let Some((&discr, e)) = sessions.iter_mut().find(|(_, e)| e.request == request) else {
                        continue;
                    };
                    e.users -= 1;
                    if e.users > 0 {
                        continue;
                    }
                    let out = e.session.shutdown();
                    deliver(e, &out, &metrics);
                    metrics.session_up.remove(&e.label);
                    sessions.remove(&discr);
                    continue;
                }
            },
            Some(r) = received.recv() => {
                let now = Instant::now();
                // A link-local peer is the one on the interface the packet came in on (RFC
                // 5881 §3: single-hop sessions are per interface).
                let same_peer = |e: &Entry| {
                    e.request.peer == r.from
                        && (r.scope == 0 || e.request.scope == 0 || e.request.scope == r.scope)
                };
                let found = if r.control.your_discr != 0 {
                    sessions.get_mut(&r.control.your_discr).filter(|e| same_peer(e))
                } else {
                    sessions.values_mut().find(|e| same_peer(e) && e.request.multihop == r.multihop)
                };
                let Some(e) = found else { continue };
                let ttl_ok = match (r.multihop, r.ttl) {
                    (false, Some(ttl)) => ttl == 255,
                    (true, Some(ttl)) => ttl >= e.request.min_ttl,
                    (_, None) => false,
                };
                if !ttl_ok || e.request.multihop != r.multihop {
                    continue;
                }
                metrics.packets_in.add(&e.label, 1);
                let discr = e.session.local_discr();
                vec![(discr, e.session.receive(&r.control, now))]
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                sessions.iter_mut().map(|(d, e)| (*d, e.session.tick(now))).collect()
            }
        };
        for (discr, out) in now_outputs {
            if let Some(e) = sessions.get_mut(&discr) {
                deliver(e, &out, &metrics);
            }
        }
    }
}

fn deliver(e: &mut Entry, out: &[Output], metrics: &BfdMetrics) {
    for o in out {
        match o {
            Output::Send(c) => {
                if e.sock.send_to(&c.encode(), e.to).is_ok() {
                    metrics.packets_out.add(&e.label, 1);
                }
            }
            Output::Changed { from, to, diag } => {
                tracing::info!(
                    peer = %e.request.peer,
                    from = from.name(),
                    to = to.name(),
                    diagnostic = %diag,
                    "BFD: session state changed"
                );
                if *to == State::Up {
                    metrics.up_events.add(&e.label, 1);
                } else if *from == State::Up {
                    metrics.down_events.add(&e.label, 1);
                }
                metrics
                    .session_up
                    .get_or_create(&e.label)
                    .set(i64::from(*to == State::Up));
                let _ = e.state.send(*to);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bfd::session::Settings;
    use std::time::Duration;

    /// A session to 127.0.0.1 hears its own packets (TTL 255 on loopback): Down, then Init
    /// with its own discriminator echoed, then Up. Enough to prove the sockets, the TTL
    /// control messages and the demultiplexing.
    #[tokio::test]
    async fn a_loopback_session_comes_up_through_the_sockets() {
        let bfd = Bfd::spawn(BfdMetrics::default());
        let request = Request {
            peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
            scope: 0,
            local: None,
            multihop: false,
            settings: Settings {
                desired_min_tx: Duration::from_millis(20),
                required_min_rx: Duration::from_millis(20),
                detect_mult: 3,
                passive: false,
            },
            min_ttl: 254,
        };
        let Some(mut lease) = bfd.lease(request).await else {
            panic!("no BFD session");
        };
        let up = tokio::time::timeout(Duration::from_secs(5), async {
            while *lease.state.borrow_and_update() != State::Up {
                if lease.state.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await;
        assert_eq!(up, Ok(true));
    }
}
