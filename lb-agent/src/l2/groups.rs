//! Membership of the solicited-node multicast group of every IPv6 VIP this node answers.
//!
//! A neighbour solicitation for a VIP goes to the VIP's solicited-node group
//! (`ff02::1:ffXX:XXXX`, RFC 4291 §2.7.1). The kernel joins that group for the node's own
//! addresses, but nothing joins it for a VIP held only in a BPF map: a switch that snoops MLD
//! and does not flood unregistered multicast never forwards the solicitation, and a real NIC's
//! multicast filter drops it, so IPv6 VIPs go unanswered while IPv4 works. Joining from a socket
//! makes the kernel send MLD reports and program the NIC's filter, as it does for its own
//! addresses.
//!
//! [`wanted`] is the pure part (which groups on which interfaces); [`Groups`] holds the
//! memberships on sockets and moves from one set to the next: joins first (before the map says
//! to answer), leaves after.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr, UdpSocket},
};

use super::maps::VipEntry;

/// A group on an interface (by index).
pub type Membership = (u32, Ipv6Addr);

/// The solicited-node multicast address of `addr`: `ff02::1:ff` and its last 24 bits.
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
    ])
}

/// The memberships `entries` need: the solicited-node group of each IPv6 VIP on each interface
/// it is answered on (VIPs that share their last 24 bits share a group).
pub fn wanted(entries: &[VipEntry]) -> BTreeSet<Membership> {
    entries
        .iter()
        .filter_map(|e| match e.addr {
            IpAddr::V6(v6) => Some((e.ifindex, solicited_node(v6))),
            IpAddr::V4(_) => None,
        })
        .collect()
}

/// Memberships per socket: the kernel charges each to the socket's option memory
/// (`net.core.optmem_max`), so a node with thousands of IPv6 VIPs spreads them over sockets.
const PER_SOCKET: usize = 128;

/// One socket and how many memberships it holds.
#[derive(Debug)]
struct Holder {
    socket: UdpSocket,
    held: usize,
}

/// The memberships this agent holds; dropped, the sockets close and the kernel leaves the
/// groups (with MLD done messages).
#[derive(Debug, Default)]
pub struct Groups {
    holders: Vec<Holder>,
    joined: BTreeMap<Membership, usize>,
}

/// A membership that could not be taken or given up.
#[derive(Debug)]
pub struct Failed {
    pub membership: Membership,
    pub error: std::io::Error,
}

impl Groups {
    pub fn new() -> Self {
        Self::default()
    }

    /// What is held now.
    pub fn joined(&self) -> BTreeSet<Membership> {
        self.joined.keys().copied().collect()
    }

    /// Joins every group of `want` not held yet. Failures are returned, not fatal: the VIP is
    /// still answered where multicast reaches the node anyway.
    pub fn join(&mut self, want: &BTreeSet<Membership>) -> Vec<Failed> {
        let mut failed = Vec::new();
        for m in want {
            if self.joined.contains_key(m) {
                continue;
            }
            match self.take(*m) {
                Ok(i) => {
                    self.joined.insert(*m, i);
                }
                Err(error) => failed.push(Failed {
                    membership: *m,
                    error,
                }),
            }
        }
        failed
    }

    /// Leaves every held group not in `keep`.
    pub fn leave_except(&mut self, keep: &BTreeSet<Membership>) -> Vec<Failed> {
        let gone: Vec<Membership> = self
            .joined
            .keys()
            .filter(|m| !keep.contains(m))
            .copied()
            .collect();
        let mut failed = Vec::new();
        for m in gone {
            let Some(i) = self.joined.remove(&m) else {
                continue;
            };
            let Some(h) = self.holders.get_mut(i) else {
                continue;
            };
            h.held = h.held.saturating_sub(1);
            if let Err(error) = h.socket.leave_multicast_v6(&m.1, m.0) {
                failed.push(Failed {
                    membership: m,
                    error,
                });
            }
        }
        failed
    }

    /// Joins `m` on a socket with room, opening one when none has; the socket's index.
    fn take(&mut self, m: Membership) -> std::io::Result<usize> {
        let i = match self.holders.iter().position(|h| h.held < PER_SOCKET) {
            Some(i) => i,
            None => {
                let socket = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?;
                self.holders.push(Holder { socket, held: 0 });
                self.holders.len() - 1
            }
        };
        let h = &mut self.holders[i];
        h.socket.join_multicast_v6(&m.1, m.0)?;
        h.held += 1;
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: &str, ifindex: u32) -> VipEntry {
        VipEntry {
            addr: addr.parse().unwrap_or_else(|e| panic!("{e}")),
            ifindex,
            mac: [2, 0, 0, 0, 0, 1],
            flags: 0,
        }
    }

    #[test]
    fn each_ipv6_vip_needs_its_solicited_node_group_on_each_of_its_interfaces() {
        let entries = [
            entry("2001:db8::1:abcd:ef12", 3),
            entry("2001:db8::1:abcd:ef12", 4),
            entry("fd00::77cd:ef12", 3), // another VIP with the same last 24 bits
            entry("fd00::99:ef12", 3),
            entry("192.0.2.10", 3),
        ];
        let want: Vec<String> = wanted(&entries)
            .iter()
            .map(|(i, g)| format!("{i} {g}"))
            .collect();
        assert_eq!(
            want,
            [
                "3 ff02::1:ff99:ef12",
                "3 ff02::1:ffcd:ef12",
                "4 ff02::1:ffcd:ef12"
            ]
        );
    }

    /// On loopback (which takes multicast memberships): join, the same set again is a no-op,
    /// leave what is no longer wanted, and more groups than one socket holds.
    #[test]
    fn memberships_follow_the_wanted_set_over_several_sockets() {
        let lo = 1;
        let set = |n: u16| -> BTreeSet<Membership> {
            (0..n)
                .map(|i| {
                    (
                        lo,
                        solicited_node(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 7, i)),
                    )
                })
                .collect()
        };
        let mut g = Groups::new();
        let all = set(300);
        let failed = g.join(&all);
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(g.joined(), all);
        assert_eq!(g.holders.len(), 3);
        assert!(g.join(&all).is_empty());
        let few = set(10);
        assert!(g.leave_except(&few).is_empty());
        assert_eq!(g.joined(), few);
        assert!(g.holders.iter().map(|h| h.held).sum::<usize>() == 10);
        assert!(g.leave_except(&BTreeSet::new()).is_empty());
        assert!(g.joined().is_empty());
    }
}
