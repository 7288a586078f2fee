//! Gratuitous ARP / unsolicited NA after taking a VIP: a quick burst so one lost frame does not
//! matter, then repeats for a few seconds (MetalLB repeats for 5 s too) so switches and clients
//! that missed the burst still move.
use std::{net::IpAddr, time::Duration};

use super::{afpacket::PacketSocket, maps::VipEntry, responder};

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
    mut on_sent: impl FnMut(&VipEntry),
) -> usize {
    let mut sent = 0;
    for entry in entries {
        let Some((_, socket)) = sockets.iter().find(|(i, _)| *i == entry.ifindex) else {
            continue;
        };
        match socket.send(&frame(entry)) {
            Ok(()) => {
                sent += 1;
                on_sent(entry);
            }
            Err(e) => tracing::warn!(vip = %entry.addr, error = %e, "announcement not sent"),
        }
    }
    sent
}
