//! ARP requests for a VIP become replies, in place (RFC 826).
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::debug;
use lb_common::{Counter, VIP_FLAG_ACTIVE_ACTIVE, Vip4Key, VipStatsKey};

use crate::{
    hdr::{self, Arp, Eth},
    maps::{Tally, VIP4, Verdict, answers, asker, count_vip, ifindex, lease_valid},
    ptr::frame_start,
};

use lb_common::wire::{ARPHRD_ETHER, ARPOP_REPLY, ARPOP_REQUEST, BROADCAST};

/// Handles an ARP frame whose ARP header starts at `L3`.
///
/// Not inlined: its locals get a frame of their own instead of adding to the entry point's,
/// which every solicitation's frame stacks on (the verifier allows 512 bytes in all).
#[inline(never)]
pub fn handle<const L3: usize>(ctx: &XdpContext, tally: &mut Tally) -> Verdict {
    let Ok(start) = frame_start(ctx, L3 + size_of::<Arp>()) else {
        return Verdict::Malformed;
    };
    // SAFETY: the frame holds both headers (checked above); they do not overlap.
    let (eth, arp) = unsafe { (&mut *(start as *mut Eth), &mut *((start + L3) as *mut Arp)) };

    if u16::from_be_bytes(arp.htype) != ARPHRD_ETHER
        || u16::from_be_bytes(arp.ptype) != hdr::ETH_P_IPV4
        || arp.hlen != 6
        || arp.plen != 4
    {
        return Verdict::Malformed;
    }
    if u16::from_be_bytes(arp.op) != ARPOP_REQUEST {
        return Verdict::Pass;
    }
    if hdr::is_multicast_mac(&arp.sha) || hdr::is_zero_mac(&arp.sha) {
        return Verdict::Malformed;
    }
    tally.add(Counter::ArpRequests);
    // A gratuitous ARP announces the sender's own address; it asks nothing.
    if hdr::eq(&arp.spa, &arp.tpa) {
        return Verdict::Pass;
    }

    let key = Vip4Key {
        addr: arp.tpa,
        ifindex: ifindex(ctx),
    };
    let Some(value) = VIP4.get_ptr(&key) else {
        return Verdict::Pass;
    };
    // SAFETY: the map has no preallocation, so the element stays valid for this run.
    let value = unsafe { *value };
    // A unicast request addressed to another station was flooded to us by a switch: not ours.
    if !hdr::eq(&eth.dst, &BROADCAST) && !hdr::eq(&eth.dst, &value.mac) {
        return Verdict::Pass;
    }
    let stats = VipStatsKey::v4(key.addr);
    if value.flags & VIP_FLAG_ACTIVE_ACTIVE != 0 {
        let Some(asker) = asker() else {
            return Verdict::Pass;
        };
        // SAFETY: this CPU's scratch element (see `asker`).
        unsafe {
            (*asker).key.vip = stats.addr;
            (*asker).key.client = VipStatsKey::v4(arp.spa).addr;
            (*asker).value.mac = arp.sha;
            (*asker).value.ifindex = key.ifindex;
        }
        if !answers(asker, !hdr::eq(&arp.spa, &[0; 4]), tally) {
            count_vip(&stats, false);
            return Verdict::Pass;
        }
    }
    if !lease_valid(&value, tally) {
        count_vip(&stats, false);
        return Verdict::Pass;
    }
    count_vip(&stats, true);

    // The reply goes to the asker's hardware address, as Linux does (arp_send_dst with sha).
    let asker_mac = arp.sha;
    let asker_ip = arp.spa;
    eth.dst = asker_mac;
    eth.src = value.mac;
    arp.op = ARPOP_REPLY.to_be_bytes();
    arp.tha = asker_mac;
    arp.tpa = asker_ip;
    arp.sha = value.mac;
    arp.spa = key.addr;
    tally.add(Counter::ArpReplies);
    debug!(
        ctx,
        "arp reply {:i} on ifindex {}",
        u32::from_be_bytes(key.addr),
        key.ifindex
    );
    Verdict::Tx
}
