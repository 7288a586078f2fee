//! Gratuitous ARP / unsolicited NA after taking a VIP: a quick burst so one lost frame does not
//! matter, then repeats for a few seconds (MetalLB repeats for 5 s too) so switches and clients
//! that missed the burst still move.
//!
//! An active-active VIP is never announced to everyone, which would pull every client to one
//! node: a node that takes over slots sends [`Notice`]s, unicast, to the clients recorded in
//! them, on the same schedule.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use lb_common::SlotBits;

use super::{
    afpacket::PacketSocket,
    maps::{Client, VipEntry},
    responder,
};

/// Offsets from the takeover at which announcements go out.
pub const SCHEDULE: [Duration; 8] = [
    Duration::from_millis(0),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(3),
    Duration::from_secs(4),
    Duration::from_secs(5),
];

/// The announcement frame for one VIP entry.
pub fn frame(entry: &VipEntry) -> Vec<u8> {
    match entry.addr {
        IpAddr::V4(a) => responder::gratuitous_arp(a, entry.mac),
        IpAddr::V6(a) => responder::unsolicited_na(a, entry.mac),
    }
}

/// Sends one round of announcements for `entries` through `sockets` (matched by ifindex),
/// calling `on_sent` for each frame that went out; returns how many did.
pub fn send_round(
    sockets: &[(u32, PacketSocket)],
    entries: &[VipEntry],
    on_sent: impl FnMut(&VipEntry),
) -> usize {
    send_each(sockets, entries, |e| (e.ifindex, e.addr, frame(e)), on_sent)
}

/// Sends the frame `what` gives for each item (interface, VIP for the log, frame) through the
/// socket of its interface, calling `on_sent` for each that went out; returns how many did.
fn send_each<T>(
    sockets: &[(u32, PacketSocket)],
    items: &[T],
    what: impl Fn(&T) -> (u32, IpAddr, Vec<u8>),
    mut on_sent: impl FnMut(&T),
) -> usize {
    let mut sent = 0;
    for item in items {
        let (ifindex, vip, frame) = what(item);
        let Some((_, socket)) = sockets.iter().find(|(i, _)| *i == ifindex) else {
            continue;
        };
        match socket.send(&frame) {
            Ok(()) => {
                sent += 1;
                on_sent(item);
            }
            Err(e) => tracing::warn!(%vip, error = %e, "announcement not sent"),
        }
    }
    sent
}

/// A unicast announcement to one recorded client of an active-active VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub vip: IpAddr,
    /// The client's slot of the VIP's table.
    pub slot: u32,
    pub ifindex: u32,
    pub frame: Vec<u8>,
}

/// What this node holds now: the VIPs it answers whole, and its slots of the shared ones.
/// Announcements still scheduled go out only for what is in here.
#[derive(Clone, Debug, Default)]
pub struct Held {
    pub whole: BTreeSet<IpAddr>,
    pub slots: BTreeMap<IpAddr, SlotBits>,
}

impl Held {
    /// Holding `vips`, of which those with a table in `slots` only for those slots.
    pub fn new(vips: impl IntoIterator<Item = IpAddr>, slots: BTreeMap<IpAddr, SlotBits>) -> Self {
        let whole = vips
            .into_iter()
            .filter(|v| !slots.contains_key(v))
            .collect();
        Self { whole, slots }
    }

    /// Whether the notice's slot is still this node's.
    pub fn holds(&self, n: &Notice) -> bool {
        self.slots.get(&n.vip).is_some_and(|b| b.contains(n.slot))
    }
}

/// The notice telling `client` that its VIP is at `mac` (the interface's MAC it was heard on);
/// none for a client of the other family (which the XDP program never records).
pub fn notice(client: &Client, mac: [u8; 6]) -> Option<Notice> {
    let frame = match (client.vip, client.addr) {
        (IpAddr::V4(vip), IpAddr::V4(addr)) => responder::arp_reply_to(vip, mac, addr, client.mac),
        (IpAddr::V6(vip), IpAddr::V6(addr)) => responder::na_to(vip, mac, addr, client.mac),
        _ => return None,
    };
    Some(Notice {
        vip: client.vip,
        slot: client.slot(),
        ifindex: client.ifindex,
        frame,
    })
}

/// Notices to one destination MAC per takeover at most: the `clients` map is written by
/// whoever sends ARP on the link, so a host that recorded thousands of addresses with one
/// victim's MAC must not turn a takeover into a flood at that victim.
pub const NOTICES_PER_MAC: usize = 4;

/// The notices for a takeover of the slots `took` (per active-active VIP): to each recorded
/// client of those slots, through the interface it was heard on, at that interface's MAC.
/// A client whose address is not on that interface's networks (an address no host on the link
/// can have: recorded from a forged request) is not told; nor is a MAC past
/// [`NOTICES_PER_MAC`].
pub fn notices(
    clients: &[Client],
    took: &BTreeMap<IpAddr, SlotBits>,
    ifaces: &[(super::iface::Interface, Vec<ipnet::IpNet>)],
) -> Vec<Notice> {
    let mut per_mac: BTreeMap<[u8; 6], usize> = BTreeMap::new();
    clients
        .iter()
        .filter(|c| took.get(&c.vip).is_some_and(|g| g.contains(c.slot())))
        .filter_map(|c| {
            let (iface, nets) = ifaces.iter().find(|(i, _)| i.index == c.ifindex)?;
            let on_link = match c.addr {
                IpAddr::V6(a) if a.is_unicast_link_local() => true,
                a => nets.iter().any(|n| n.contains(&a)),
            };
            if !on_link {
                return None;
            }
            let sent = per_mac.entry(c.mac).or_default();
            if *sent >= NOTICES_PER_MAC {
                return None;
            }
            *sent += 1;
            notice(c, iface.mac)
        })
        .collect()
}

/// Sends every notice through the socket of its interface, calling `on_sent` for each that
/// went out; returns how many did.
pub fn send_notices(
    sockets: &[(u32, PacketSocket)],
    notices: &[Notice],
    on_sent: impl FnMut(&Notice),
) -> usize {
    send_each(
        sockets,
        notices,
        |n| (n.ifindex, n.vip, n.frame.clone()),
        on_sent,
    )
}

/// Sends `burst` (VIPs taken whole) and `notices` (clients of slots taken over) on the
/// [`SCHEDULE`], from a task of its own. Each round sends only what `held` still holds: a
/// repeat for a VIP (or slot) handed on since would pull its clients back. `on_sent` is called
/// with the VIP of each frame that went out.
///
/// The notices come from `notices`, run on a blocking thread first: it reads the whole
/// `clients` map, which costs up to a hundred milliseconds that must not be the loop's that
/// sends heartbeats.
pub fn spawn(
    sockets: std::sync::Arc<Vec<(u32, PacketSocket)>>,
    burst: Vec<VipEntry>,
    notices: Option<Box<dyn FnOnce() -> Vec<Notice> + Send>>,
    mut held: tokio::sync::watch::Receiver<Held>,
    on_sent: impl Fn(IpAddr) + Send + 'static,
) {
    if burst.is_empty() && notices.is_none() {
        return;
    }
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let notices = match notices {
            Some(job) => tokio::task::spawn_blocking(job).await.unwrap_or_default(),
            None => Vec::new(),
        };
        for at in SCHEDULE {
            tokio::time::sleep_until(start + at).await;
            let now = held.borrow_and_update().clone();
            let burst: Vec<VipEntry> = burst
                .iter()
                .filter(|e| now.whole.contains(&e.addr))
                .copied()
                .collect();
            let notices: Vec<Notice> = notices.iter().filter(|n| now.holds(n)).cloned().collect();
            send_round(&sockets, &burst, |e| on_sent(e.addr));
            send_notices(&sockets, &notices, |n| on_sent(n.vip));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l2::iface::Interface;

    fn client(addr: &str, mac: [u8; 6]) -> Client {
        Client {
            vip: "10.0.0.100".parse().expect("vip"),
            addr: addr.parse().expect("addr"),
            mac,
            ifindex: 3,
        }
    }

    /// Review finding 9: a takeover tells only clients that can be on the link, and no MAC
    /// more than a few times, whatever was recorded.
    #[test]
    fn notices_go_to_hosts_on_the_link_and_no_mac_gets_many() {
        let iface = Interface {
            name: "eth0".into(),
            index: 3,
            mac: [2, 0, 0, 0, 0, 1],
        };
        let nets = vec![(iface, vec!["10.0.0.0/24".parse().expect("net")])];
        let victim = [2, 0xee, 0, 0, 0, 1];
        let mut clients: Vec<Client> = (1..=200)
            .map(|i| client(&format!("10.0.0.{}", i % 250 + 1), victim))
            .collect();
        clients.push(client("10.0.0.7", [2, 0, 0, 0, 0, 7]));
        clients.push(client("192.168.1.1", [2, 0, 0, 0, 0, 8]));
        let took = BTreeMap::from([("10.0.0.100".parse().expect("vip"), SlotBits::FULL)]);
        let sent = notices(&clients, &took, &nets);
        let to = |mac: [u8; 6]| sent.iter().filter(|n| n.frame[0..6] == mac).count();
        assert_eq!(to(victim), NOTICES_PER_MAC);
        assert_eq!(to([2, 0, 0, 0, 0, 7]), 1);
        assert_eq!(
            to([2, 0, 0, 0, 0, 8]),
            0,
            "192.168.1.1 is not on eth0's network"
        );
        // Slots not taken over: nobody is told.
        let none = BTreeMap::from([("10.0.0.100".parse().expect("vip"), SlotBits::EMPTY)]);
        assert!(notices(&clients, &none, &nets).is_empty());
    }
}
