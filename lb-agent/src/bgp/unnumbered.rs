//! Unnumbered peering (BGPPeer `interface`, as MetalLB's FRR mode offers it): the session runs
//! between the two ends' IPv6 link-local addresses on a point-to-point link, and each end
//! learns the other's from its router advertisements, as FRR does. So on every such interface
//! the agent sends a router advertisement now and then (router lifetime 0: it offers itself
//! to no host as a default router) and listens for the peer's; [`resolve`] then puts the
//! address found into the plan. IPv4 routes go with IPv6 next hops (RFC 8950).
//!
//! The RA codec and [`resolve`] are pure; [`Discovery`] is the socket edge.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::policy::Plan;

const ROUTER_ADVERTISEMENT: u8 = 134;
/// How often we advertise ourselves (FRR's default for unnumbered interfaces is 10 s).
const INTERVAL: Duration = Duration::from_secs(10);
/// The first few go faster, so a peer that starts with us finds us at once.
const FIRST: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// How long the router found on an interface is kept while another one advertises: three of
/// its advertisement intervals without a word from it.
const STALE: Duration = Duration::from_secs(30);

/// The router an interface peers with: the first link-local source of a router advertisement
/// that arrived with hop limit 255 (RFC 4861 §6.1.2: sent on this link, not routed here), kept
/// while it keeps advertising and replaced only once it has been silent for [`STALE`]. On a
/// point-to-point link there is one; on anything else (a second router, radvd on a host, a
/// hostile one) the session must not move to whoever advertised last.
#[derive(Debug, Default)]
pub struct Router {
    current: Option<(Ipv6Addr, Instant)>,
    /// Other sources heard while `current` holds (each reported once).
    others: BTreeSet<Ipv6Addr>,
}

/// What [`Router::heard`] made of an advertisement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// Not from this link (hop limit below 255, or a source that is not link-local).
    Refused,
    /// The first router: peer with it.
    Found,
    /// The router peered with, still there.
    Kept,
    /// Another source while the router peered with is alive; `first` the first time.
    Ignored { first: bool },
    /// The router peered with fell silent; this one takes its place.
    Replaced(Ipv6Addr),
}

impl Router {
    pub fn heard(&mut self, from: Ipv6Addr, hop_limit: Option<u8>, now: Instant) -> Heard {
        if hop_limit != Some(255) || !from.is_unicast_link_local() {
            return Heard::Refused;
        }
        match self.current {
            None => {
                self.current = Some((from, now));
                Heard::Found
            }
            Some((addr, _)) if addr == from => {
                self.current = Some((from, now));
                Heard::Kept
            }
            Some((old, last)) if now.saturating_duration_since(last) >= STALE => {
                self.current = Some((from, now));
                self.others.clear();
                Heard::Replaced(old)
            }
            Some(_) => Heard::Ignored {
                first: self.others.insert(from),
            },
        }
    }
}

/// The peer found on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbor {
    pub address: Ipv6Addr,
    pub ifindex: u32,
}

/// Interface name → the peer found there.
pub type Found = BTreeMap<String, Neighbor>;

/// The plan with each unnumbered peer's address filled in from `found`; a peer not found yet
/// is left out (no session until there is someone to talk to).
pub fn resolve(plan: &Plan, found: &Found) -> Plan {
    plan.iter()
        .filter_map(|(key, p)| {
            let Some(iface) = &p.interface else {
                return Some((key.clone(), p.clone()));
            };
            let n = found.get(iface)?;
            let mut p = p.clone();
            p.address = IpAddr::V6(n.address);
            p.scope = n.ifindex;
            if let Some(bfd) = p.bfd.as_mut() {
                bfd.peer = p.address;
                bfd.scope = n.ifindex;
            }
            Some((key.clone(), p))
        })
        .collect()
}

/// The interfaces of the plan's unnumbered peers.
pub fn interfaces(plan: &Plan) -> BTreeSet<String> {
    plan.values().filter_map(|p| p.interface.clone()).collect()
}

/// A router advertisement that offers nothing (RFC 4861 §4.2): no default router, no
/// prefixes; only its source address matters to the peer. The kernel fills the checksum.
pub fn advertisement() -> [u8; 16] {
    let mut ra = [0u8; 16];
    ra[0] = ROUTER_ADVERTISEMENT;
    ra
}

/// Whether an ICMPv6 message is a router advertisement (type 134, code 0, long enough).
pub fn is_advertisement(msg: &[u8]) -> bool {
    msg.len() >= 16 && msg[0] == ROUTER_ADVERTISEMENT && msg[1] == 0
}

/// Advertises on and listens to the interfaces it is given; publishes what it finds.
pub struct Discovery {
    wanted: watch::Sender<BTreeSet<String>>,
    found: watch::Receiver<Found>,
    task: JoinHandle<()>,
}

impl Discovery {
    pub fn spawn() -> Self {
        let (wanted, wanted_rx) = watch::channel(BTreeSet::new());
        let (found_tx, found) = watch::channel(Found::new());
        let task = tokio::spawn(run(wanted_rx, found_tx));
        Self {
            wanted,
            found,
            task,
        }
    }

    /// Follow exactly these interfaces.
    pub fn want(&self, interfaces: BTreeSet<String>) {
        self.wanted.send_if_modified(|w| {
            let changed = *w != interfaces;
            *w = interfaces;
            changed
        });
    }

    pub fn found(&self) -> watch::Receiver<Found> {
        self.found.clone()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(mut wanted: watch::Receiver<BTreeSet<String>>, found: watch::Sender<Found>) {
    let mut tasks: BTreeMap<String, JoinHandle<()>> = BTreeMap::new();
    loop {
        let want = wanted.borrow_and_update().clone();
        tasks.retain(|iface, t| {
            let keep = want.contains(iface) && !t.is_finished();
            if !keep {
                t.abort();
                found.send_if_modified(|f| f.remove(iface).is_some());
            }
            keep
        });
        for iface in want {
            if let std::collections::btree_map::Entry::Vacant(slot) = tasks.entry(iface) {
                let task = tokio::spawn(interface(slot.key().clone(), found.clone()));
                slot.insert(task);
            }
        }
        // A finished task (the interface went away) is retried on the next change or after
        // a while.
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
    for (_, t) in tasks {
        t.abort();
    }
}

fn socket(iface: &str) -> std::io::Result<(AsyncFd<Socket>, u32)> {
    let ifindex = crate::l2::iface::index_of(iface).map_err(std::io::Error::other)?;
    let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    sock.bind_device(Some(iface.as_bytes()))?;
    // Neighbour discovery messages must arrive with hop limit 255 (RFC 4861 §6.1.2).
    sock.set_multicast_hops_v6(255)?;
    sock.set_unicast_hops_v6(255)?;
    sock.set_multicast_loop_v6(false)?;
    // To check that advertisements were sent on the link (hop limit 255).
    sock.set_recv_hoplimit_v6(true)?;
    sock.set_nonblocking(true)?;
    // SAFETY: the socket owns its descriptor and keeps it open for as long as the AsyncFd
    // owns the socket.
    let fd = unsafe { AsyncFd::register(sock)? };
    Ok((fd, ifindex))
}

/// One interface: advertise, listen, publish the peer.
async fn interface(iface: String, found: watch::Sender<Found>) {
    let (sock, ifindex) = match socket(&iface) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%iface, error = %e, "BGP: unnumbered peer");
            return;
        }
    };
    let all_nodes = SockAddr::from(SocketAddrV6::new(
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        0,
        0,
        ifindex,
    ));
    let ra = advertisement();
    let mut schedule = FIRST.iter().copied().chain(std::iter::repeat(INTERVAL));
    let mut next = tokio::time::Instant::now();
    let mut buf = [0u8; 1500];
    let mut router = Router::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                if let Err(e) = sock.get_ref().send_to(&ra, &all_nodes) {
                    tracing::debug!(%iface, error = %e, "BGP: router advertisement");
                }
                next += schedule.next().unwrap_or(INTERVAL);
            }
            ready = sock.readable() => {
                let Ok(mut guard) = ready else { return };
                match guard.try_io(|s| crate::ttl::recv_with_ttl(s.get_ref().as_raw_fd(), &mut buf)) {
                    Ok(Ok((n, from, hop_limit))) => {
                        let (std::net::SocketAddr::V6(from), Some(msg)) = (from, buf.get(..n)) else {
                            continue;
                        };
                        if !is_advertisement(msg) {
                            continue;
                        }
                        let address = *from.ip();
                        match router.heard(address, hop_limit, Instant::now()) {
                            Heard::Found | Heard::Replaced(_) => {
                                let n = Neighbor { address, ifindex };
                                found.send_if_modified(|f| f.insert(iface.clone(), n) != Some(n));
                                tracing::info!(%iface, peer = %address, "BGP: unnumbered peer found");
                            }
                            Heard::Ignored { first: true } => tracing::warn!(
                                %iface,
                                other = %address,
                                "BGP: a second router advertises on an unnumbered interface; staying with the first while it advertises"
                            ),
                            Heard::Refused => tracing::debug!(%iface, from = %address, ?hop_limit, "BGP: router advertisement not from the link"),
                            Heard::Kept | Heard::Ignored { first: false } => {}
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(%iface, error = %e, "BGP: reading router advertisements"),
                    Err(_would_block) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn ll(last: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, last)
    }

    #[test]
    fn the_first_router_stays_until_it_falls_silent() {
        let t0 = Instant::now();
        let mut r = Router::default();
        // Not from the link: routed here (hop limit below 255), unknown, or not link-local.
        assert_eq!(r.heard(ll(1), Some(254), t0), Heard::Refused);
        assert_eq!(r.heard(ll(1), None, t0), Heard::Refused);
        assert_eq!(
            r.heard(
                "2001:db8::1".parse().unwrap_or(Ipv6Addr::LOCALHOST),
                Some(255),
                t0
            ),
            Heard::Refused
        );
        assert_eq!(r.heard(ll(1), Some(255), t0), Heard::Found);
        // A second router (or radvd, or a hostile host) does not take the session.
        assert_eq!(
            r.heard(ll(2), Some(255), t0 + INTERVAL),
            Heard::Ignored { first: true }
        );
        assert_eq!(r.heard(ll(1), Some(255), t0 + INTERVAL), Heard::Kept);
        assert_eq!(
            r.heard(ll(2), Some(255), t0 + INTERVAL * 2),
            Heard::Ignored { first: false }
        );
        // Once the first has been silent for three intervals, the other is the router.
        let later = t0 + INTERVAL + STALE;
        assert_eq!(r.heard(ll(2), Some(255), later), Heard::Replaced(ll(1)));
        assert_eq!(
            r.heard(ll(1), Some(255), later),
            Heard::Ignored { first: true }
        );
    }
    use crate::bgp::policy::PeerPlan;

    fn plan_with(interface: Option<&str>) -> PeerPlan {
        PeerPlan {
            address: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            interface: interface.map(str::to_owned),
            scope: 0,
            port: 179,
            source: None,
            password: None,
            multihop: false,
            ttl_security: None,
            settings: crate::bgp::session::Settings {
                peer_as: crate::bgp::session::PeerAs::External,
                router_id: std::net::Ipv4Addr::new(10, 0, 0, 1),
                graceful_restart: None,
                extended_next_hop: interface.is_some(),
                ..crate::bgp::session::Settings::for_tests()
            },
            node_v4: None,
            node_v6: None,
            bfd: None,
            routes: Arc::default(),
        }
    }

    #[test]
    fn unnumbered_peers_wait_for_their_neighbour_and_others_pass() {
        let mut plan = Plan::new();
        plan.insert("ns/tor".into(), plan_with(Some("eth1")));
        let mut numbered = plan_with(None);
        numbered.address = "10.0.0.1".parse().unwrap_or(numbered.address);
        plan.insert("ns/spine".into(), numbered.clone());
        assert_eq!(interfaces(&plan), BTreeSet::from(["eth1".to_owned()]));

        let none = resolve(&plan, &Found::new());
        assert_eq!(none.keys().collect::<Vec<_>>(), ["ns/spine"]);
        assert_eq!(none["ns/spine"], numbered);

        let ll: Ipv6Addr = "fe80::1".parse().unwrap_or(Ipv6Addr::LOCALHOST);
        let found = Found::from([(
            "eth1".to_owned(),
            Neighbor {
                address: ll,
                ifindex: 7,
            },
        )]);
        let both = resolve(&plan, &found);
        assert_eq!(both["ns/tor"].address, IpAddr::V6(ll));
        assert_eq!(both["ns/tor"].scope, 7);
        // Its BFD session goes to the same neighbour.
        let mut with_bfd = plan.clone();
        if let Some(p) = with_bfd.get_mut("ns/tor") {
            p.bfd = Some(crate::bfd::Request {
                peer: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                scope: 0,
                local: None,
                multihop: false,
                settings: crate::bfd::session::Settings {
                    desired_min_tx: Duration::from_millis(300),
                    required_min_rx: Duration::from_millis(300),
                    detect_mult: 3,
                    passive: false,
                },
                min_ttl: 254,
            });
        }
        let bfd = resolve(&with_bfd, &found)["ns/tor"].bfd;
        assert_eq!(bfd.map(|b| (b.peer, b.scope)), Some((IpAddr::V6(ll), 7)));
        assert_eq!(both["ns/spine"], numbered);
    }

    #[test]
    fn the_advertisement_offers_no_default_router() {
        let ra = advertisement();
        assert!(is_advertisement(&ra));
        // Router lifetime (bytes 6-7) zero: no host takes us for a default router.
        assert_eq!(&ra[6..8], &[0, 0]);
        assert!(!is_advertisement(&ra[..8]));
        let mut solicitation = ra;
        solicitation[0] = 133;
        assert!(!is_advertisement(&solicitation));
    }
}
