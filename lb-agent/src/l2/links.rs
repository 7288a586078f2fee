//! The announcing interfaces as they come and go, and whether their links have carrier.
//!
//! [`watch`] follows netlink's link and address events (and reads everything again every few
//! seconds, in case the kernel dropped events for a full socket buffer): a NIC added or
//! brought up is announced on, a removed one released, and a link that loses carrier stops
//! counting for the election at once. [`Carrier`] is the pure part: which of the interfaces
//! count as up, with a hold-down so that a link that returns must stay up a moment before its
//! node takes VIPs back (a flapping cable moves nothing twice).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt, TryStreamExt};
use ipnet::IpNet;
use rtnetlink::{
    Handle,
    constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK},
    packet_route::{
        address::{AddressAttribute, AddressScope},
        link::{LinkAttribute, LinkFlags, LinkLayerType},
    },
};
use tokio::sync::watch;

use super::{L2Error, exclude::Exclusions, iface::Interface, vipdev::VIP_DEVICE};
use crate::membership::links::{Link, Links};

/// How long a link must have had carrier again before it counts: long enough for a flapping
/// link to show it, short enough that a repaired one is used soon.
pub const UP_DELAY: Duration = Duration::from_millis(500);

/// Everything is read again this often, whatever the events said.
const RESYNC: Duration = Duration::from_secs(5);

/// An announcing interface as netlink last showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub iface: Interface,
    /// Administratively up and the lower layer up (`IFF_LOWER_UP`).
    pub carrier: bool,
    /// The networks of its global addresses.
    pub nets: Vec<IpNet>,
}

/// Which interfaces the agent announces on.
#[derive(Clone, Debug)]
pub enum Selection {
    /// `--interface`: these, whenever they exist.
    Named(Vec<String>),
    /// The ones that are up, Ethernet, not loopback, with a global address and not excluded,
    /// as MetalLB's speaker chooses them.
    Found(Exclusions),
}

fn nl(e: rtnetlink::Error) -> L2Error {
    L2Error::Netlink(e.to_string())
}

/// The announcing interfaces now, sorted by name.
pub async fn read(handle: &Handle, selection: &Selection) -> Result<Vec<LinkState>, L2Error> {
    let mut nets: BTreeMap<u32, Vec<IpNet>> = BTreeMap::new();
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.map_err(nl)? {
        if msg.header.scope != AddressScope::Universe {
            continue;
        }
        // On a point-to-point IPv4 link `Address` is the peer's; `Local` is ours.
        let ours = |local: bool| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) if local => Some(*ip),
                AddressAttribute::Address(ip) if !local => Some(*ip),
                _ => None,
            })
        };
        let addr: Option<IpAddr> = ours(true).or_else(|| ours(false));
        if let Some(net) = addr.and_then(|a| IpNet::new(a, msg.header.prefix_len).ok()) {
            nets.entry(msg.header.index).or_default().push(net.trunc());
        }
    }
    let mut out = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await.map_err(nl)? {
        let h = &link.header;
        let mut name = None;
        let mut mac = None;
        for a in &link.attributes {
            match a {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => {}
            }
        }
        let (Some(name), Some(mac)) = (name, mac) else {
            continue;
        };
        let up = h.flags.contains(LinkFlags::Up);
        let chosen = match selection {
            Selection::Named(names) => names.contains(&name),
            Selection::Found(excluded) => {
                up && !h.flags.contains(LinkFlags::Loopback)
                    && h.link_layer_type == LinkLayerType::Ether
                    && nets.contains_key(&h.index)
                    && name != VIP_DEVICE
                    && !excluded.excludes(&name)
            }
        };
        if chosen {
            out.push(LinkState {
                carrier: up && h.flags.contains(LinkFlags::LowerUp),
                nets: nets.remove(&h.index).unwrap_or_default(),
                iface: Interface {
                    name,
                    index: h.index,
                    mac,
                },
            });
        }
    }
    out.sort_by(|a, b| a.iface.name.cmp(&b.iface.name));
    Ok(out)
}

/// Follows the announcing interfaces: the receiver holds the latest reading (the first one
/// already), changed whenever the interfaces, their carrier or their networks change.
pub async fn watch(selection: Selection) -> Result<watch::Receiver<Vec<LinkState>>, L2Error> {
    use rtnetlink::sys::AsyncSocket;
    // Events on a connection of their own: the kernel stamps a notification with the port and
    // sequence number of the request that caused it, and a connection that also sends
    // requests takes such a notification for a stray answer and fails its own dump.
    let (mut conn, subscribed, mut events) =
        rtnetlink::new_connection().map_err(|e| L2Error::Netlink(e.to_string()))?;
    let groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
    conn.socket_mut()
        .socket_mut()
        .bind(&rtnetlink::sys::SocketAddr::new(0, groups))
        .map_err(|e| L2Error::Netlink(format!("subscribing to link events: {e}")))?;
    tokio::spawn(conn);
    let handle = super::vipdev::connect()?;
    let first = read(&handle, &selection).await?;
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        // The connection lives as long as a handle to it does.
        let _subscribed = subscribed;
        let mut resync = tokio::time::interval(RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                event = events.next() => if event.is_none() { return },
                _ = resync.tick() => {}
                () = tx.closed() => return,
            }
            // A burst (an interface and its addresses) is read once.
            while let Some(Some(_)) = events.next().now_or_never() {}
            match read(&handle, &selection).await {
                Ok(now) => {
                    failing = false;
                    tx.send_if_modified(|last| {
                        let changed = *last != now;
                        *last = now;
                        changed
                    });
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot read the interfaces; keeping the last reading");
                    }
                    failing = true;
                }
            }
        }
    });
    Ok(rx)
}

/// Which announcing interfaces count as up, from readings over time. Carrier lost counts at
/// once; carrier back counts after [`UP_DELAY`] without a loss. Interfaces up at the first
/// reading count at once.
#[derive(Clone, Debug, Default)]
pub struct Carrier {
    /// Interfaces with carrier, and since when (`None`: since the first reading).
    up_since: BTreeMap<String, Option<Instant>>,
    /// The latest reading's networks per interface with carrier.
    nets: BTreeMap<String, Vec<IpNet>>,
    started: bool,
}

impl Carrier {
    /// Takes a reading made at `now`.
    pub fn observe(&mut self, states: &[LinkState], now: Instant) {
        let first = !self.started;
        self.started = true;
        let up: BTreeSet<&str> = states
            .iter()
            .filter(|s| s.carrier)
            .map(|s| s.iface.name.as_str())
            .collect();
        self.up_since.retain(|name, _| up.contains(name.as_str()));
        for name in up {
            self.up_since
                .entry(name.to_owned())
                .or_insert(if first { None } else { Some(now) });
        }
        self.nets = states
            .iter()
            .filter(|s| s.carrier)
            .map(|s| (s.iface.name.clone(), s.nets.clone()))
            .collect();
    }

    /// The interfaces that count as up at `now`, with their networks: what the heartbeats say.
    pub fn links(&self, now: Instant) -> Links {
        Links::new(
            self.up_since
                .iter()
                .filter(|(_, since)| {
                    since.is_none_or(|t| now.saturating_duration_since(t) >= UP_DELAY)
                })
                .map(|(name, _)| Link {
                    name: name.clone(),
                    nets: self.nets.get(name).cloned().unwrap_or_default(),
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, carrier: bool) -> LinkState {
        LinkState {
            iface: Interface {
                name: name.into(),
                index: 1,
                mac: [2, 0, 0, 0, 0, 1],
            },
            carrier,
            nets: vec!["10.0.1.0/24".parse().expect("net")],
        }
    }

    fn names(l: &Links) -> Vec<String> {
        l.iter().map(|l| l.name.clone()).collect()
    }

    #[test]
    fn a_lost_carrier_counts_at_once_and_a_returned_one_after_the_delay() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut c = Carrier::default();
        c.observe(&[state("eth0", true), state("eth1", true)], t0);
        assert_eq!(
            names(&c.links(t0)),
            ["eth0", "eth1"],
            "up at start: at once"
        );
        c.observe(&[state("eth0", true), state("eth1", false)], t0 + ms);
        assert_eq!(names(&c.links(t0 + ms)), ["eth0"]);
        c.observe(&[state("eth0", true), state("eth1", true)], t0 + 10 * ms);
        assert_eq!(names(&c.links(t0 + 10 * ms + UP_DELAY - ms)), ["eth0"]);
        assert_eq!(names(&c.links(t0 + 10 * ms + UP_DELAY)), ["eth0", "eth1"]);
    }

    #[test]
    fn a_flapping_link_does_not_count_until_it_stays_up() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut c = Carrier::default();
        c.observe(&[state("eth1", true)], t0);
        for i in 0..10u32 {
            let at = t0 + 100 * ms * (i + 1);
            c.observe(&[state("eth1", i % 2 == 1)], at);
            assert!(c.links(at + 99 * ms).is_empty(), "flap {i}");
        }
        let last = t0 + 100 * ms * 10;
        assert_eq!(names(&c.links(last + UP_DELAY)), ["eth1"]);
    }

    #[test]
    fn an_interface_that_goes_away_no_longer_counts() {
        let t0 = Instant::now();
        let mut c = Carrier::default();
        c.observe(&[state("eth0", true), state("eth1", true)], t0);
        c.observe(&[state("eth0", true)], t0);
        assert_eq!(names(&c.links(t0)), ["eth0"]);
    }
}
