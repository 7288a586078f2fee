//! IPv6 neighbour solicitations for a VIP become neighbour advertisements (RFC 4861).
use aya_ebpf::{
    helpers::{bpf_xdp_adjust_tail, bpf_xdp_get_buff_len},
    programs::XdpContext,
};
use lb_common::{Counter, VIP_FLAG_ACTIVE_ACTIVE, Vip6Key, VipStatsKey};

use crate::{
    csum,
    hdr::{self, Eth, IPV6_LEN, Ipv6, NaWithTlla},
    maps::{Tally, VIP6, Verdict, answers, asker, count_vip, ifindex, lease_valid},
    ptr::{frame_start, ptr_at},
};

use lb_common::wire::{
    ALL_NODES, ALL_NODES_MAC, ICMPV6_NA, ICMPV6_NS, NA_DAD_ACTIVE_ACTIVE, NA_OVERRIDE,
    NA_SOLICITED_OVERRIDE, NS_LEN, OPT_SOURCE_LLA, OPT_TARGET_LLA, SOLICITED_NODE_PREFIX,
    UNSPECIFIED,
};

/// The advertisement's length as the IPv6 payload length field holds it.
const NA_LEN: u16 = lb_common::wire::NA_LEN as u16;

/// Handles an IPv6 frame whose IPv6 header starts at `L3`.
#[inline(always)]
pub fn handle<const L3: usize>(ctx: &XdpContext, tally: &mut Tally) -> Verdict {
    let Ok(ip6) = ptr_at::<Ipv6>(ctx, L3) else {
        return Verdict::Malformed;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let ip6 = unsafe { &*ip6 };
    if ip6.vtc_flow[0] >> 4 != 6 {
        return Verdict::Malformed;
    }
    // Extension headers (hop-by-hop, fragments, ...) are the kernel's business.
    if ip6.next_header != hdr::IPPROTO_ICMPV6 {
        return Verdict::Pass;
    }
    let Ok(icmp_type) = ptr_at::<u8>(ctx, L3 + IPV6_LEN) else {
        return Verdict::Malformed;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    if unsafe { *icmp_type } != ICMPV6_NS {
        return Verdict::Pass;
    }
    // One instantiation per payload size keeps every access at a constant offset the verifier
    // can check. 24 is a bare NS, 32 carries a source link-layer address, more carry a nonce or
    // other options; longer option lists are left to the kernel.
    match u16::from_be_bytes(ip6.payload_len) {
        24 => solicitation::<L3, 24>(ctx, tally),
        32 => solicitation::<L3, 32>(ctx, tally),
        40 => solicitation::<L3, 40>(ctx, tally),
        48 => solicitation::<L3, 48>(ctx, tally),
        56 => solicitation::<L3, 56>(ctx, tally),
        64 => solicitation::<L3, 64>(ctx, tally),
        len if len < NS_LEN as u16 || len % 8 != 0 => Verdict::Malformed,
        _ => Verdict::Pass,
    }
}

/// Validates a solicitation with an ICMPv6 payload of exactly `N` bytes (RFC 4861 §7.1.1) and
/// answers it when its target is a VIP on this interface.
///
/// Not inlined: each instantiation gets its own BPF stack frame instead of twelve sharing one.
#[inline(never)]
fn solicitation<const L3: usize, const N: usize>(ctx: &XdpContext, tally: &mut Tally) -> Verdict {
    let Ok(start) = frame_start(ctx, L3 + IPV6_LEN + N) else {
        return Verdict::Malformed;
    };
    // SAFETY: the frame holds at least the three headers, checked just above.
    let (eth, ip6, ns) = unsafe {
        (
            &*(start as *const Eth),
            &*((start + L3) as *const Ipv6),
            &*((start + L3 + IPV6_LEN) as *const [u8; N]),
        )
    };

    if ns[1] != 0 || ip6.hop_limit != 255 {
        return Verdict::Malformed;
    }
    // Source and destination are adjacent in the IPv6 header: 32 bytes of pseudo-header.
    let (Some(addrs), Some(payload)) = (
        csum::packet_sum(ip6.src.as_ptr(), 32),
        csum::packet_sum(ns.as_ptr(), N as u32),
    ) else {
        return Verdict::Malformed;
    };
    if csum::fold(addrs + csum::pseudo_tail(N as u16) + payload) != 0xffff {
        return Verdict::Malformed;
    }
    let mut target = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        target[i] = ns[8 + i];
        i += 1;
    }
    if target[0] == 0xff || hdr::is_multicast_mac(&eth.src) {
        return Verdict::Malformed;
    }
    let dad = hdr::eq(&ip6.src, &UNSPECIFIED);
    let to_multicast = ip6.dst[0] == 0xff;
    if to_multicast {
        let mut prefix_diff = 0u8;
        let mut i = 0;
        while i < SOLICITED_NODE_PREFIX.len() {
            prefix_diff |= ip6.dst[i] ^ SOLICITED_NODE_PREFIX[i];
            i += 1;
        }
        let prefix_ok = prefix_diff == 0;
        let group_ok =
            ip6.dst[13] == target[13] && ip6.dst[14] == target[14] && ip6.dst[15] == target[15];
        let mac_ok = hdr::eq(
            &eth.dst,
            &[
                0x33,
                0x33,
                ip6.dst[12],
                ip6.dst[13],
                ip6.dst[14],
                ip6.dst[15],
            ],
        );
        if !(prefix_ok && group_ok && mac_ok) {
            return Verdict::Malformed;
        }
    } else if dad {
        // DAD probes go to the solicited-node group only.
        return Verdict::Malformed;
    }
    if !options_valid::<N>(ns, dad) {
        return Verdict::Malformed;
    }
    tally.add(Counter::NdpSolicitations);
    if !to_multicast && !hdr::eq(&ip6.dst, &target) {
        return Verdict::Pass;
    }

    let key = Vip6Key {
        addr: target,
        ifindex: ifindex(ctx),
    };
    let Some(value) = VIP6.get_ptr(&key) else {
        return Verdict::Pass;
    };
    // SAFETY: the map has no preallocation, so the element stays valid for this run.
    let value = unsafe { *value };
    if !to_multicast && !hdr::eq(&eth.dst, &value.mac) {
        return Verdict::Pass;
    }
    let stats = VipStatsKey { addr: target };
    if value.flags & VIP_FLAG_ACTIVE_ACTIVE != 0 {
        let Some(asker) = asker() else {
            return Verdict::Pass;
        };
        // SAFETY: this CPU's scratch element (see `asker`).
        unsafe {
            (*asker).key.vip = target;
            (*asker).key.client = ip6.src;
            (*asker).value.mac = eth.src;
            (*asker).value.ifindex = key.ifindex;
        }
        if !answers(asker, !dad, tally) {
            count_vip(&stats, false);
            return Verdict::Pass;
        }
    }
    if !lease_valid(&value, tally) {
        count_vip(&stats, false);
        return Verdict::Pass;
    }

    let (dst_ip, dst_mac, flags) = if dad && value.flags & VIP_FLAG_ACTIVE_ACTIVE != 0 {
        (ALL_NODES, ALL_NODES_MAC, NA_DAD_ACTIVE_ACTIVE)
    } else if dad {
        (ALL_NODES, ALL_NODES_MAC, NA_OVERRIDE)
    } else {
        (ip6.src, eth.src, NA_SOLICITED_OVERRIDE)
    };
    let verdict = reply::<L3>(ctx, tally, &target, &value.mac, &dst_ip, &dst_mac, flags);
    count_vip(&stats, matches!(verdict, Verdict::Tx));
    verdict
}

/// RFC 4861 §7.1.1: every option has a non-zero length, the options fill the message exactly,
/// and a DAD probe (unspecified source) carries no source link-layer address.
///
/// Options start on 8-byte boundaries, so the walk visits the fixed positions 24, 32, ... and
/// reads only at constant offsets; `next` says which of them starts an option. A walk with a
/// variable offset is correct too, but the verifier cannot bound it.
#[inline(always)]
fn options_valid<const N: usize>(ns: &[u8; N], dad: bool) -> bool {
    let mut next = NS_LEN;
    let mut pos = NS_LEN;
    while pos + 1 < N {
        if pos == next {
            let (kind, len) = (ns[pos], ns[pos + 1]);
            if len == 0 || (dad && kind == OPT_SOURCE_LLA) {
                return false;
            }
            next = pos + usize::from(len) * 8;
        }
        pos += 8;
    }
    next == N
}

/// Rewrites the frame into the advertisement: Ethernet (VLAN tag kept), IPv6, NA + TLLA option.
#[inline(always)]
fn reply<const L3: usize>(
    ctx: &XdpContext,
    tally: &mut Tally,
    target: &[u8; 16],
    mac: &[u8; 6],
    dst_ip: &[u8; 16],
    dst_mac: &[u8; 6],
    flags: u8,
) -> Verdict {
    let want = (L3 + IPV6_LEN + NA_LEN as usize) as i64;
    // The length comes from a helper, not from `data_end - data`: LLVM turns that difference's
    // truncation into shifts of the pointers themselves, which the verifier rejects.
    // SAFETY: the helper only reads the context.
    let have = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as i64;
    if want != have {
        // SAFETY: the helper takes the context pointer the kernel handed us.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, (want - have) as i32) } != 0 {
            return Verdict::Pass;
        }
    }
    // The tail moved: every earlier pointer is void, fetch them again.
    let Ok(start) = frame_start(ctx, L3 + IPV6_LEN + NA_LEN as usize) else {
        return Verdict::Pass;
    };
    // SAFETY: the frame holds the three headers (checked above); they do not overlap.
    let (eth, ip6, na) = unsafe {
        (
            &mut *(start as *mut Eth),
            &mut *((start + L3) as *mut Ipv6),
            &mut *((start + L3 + IPV6_LEN) as *mut NaWithTlla),
        )
    };

    eth.dst = *dst_mac;
    eth.src = *mac;
    ip6.vtc_flow = [0x60, 0, 0, 0];
    ip6.payload_len = NA_LEN.to_be_bytes();
    ip6.next_header = hdr::IPPROTO_ICMPV6;
    ip6.hop_limit = 255;
    ip6.src = *target;
    ip6.dst = *dst_ip;
    na.icmp_type = ICMPV6_NA;
    na.code = 0;
    na.checksum = [0, 0];
    na.flags = [flags, 0, 0, 0];
    na.target = *target;
    na.opt_type = OPT_TARGET_LLA;
    na.opt_len = 1;
    na.mac = *mac;

    let (Some(addrs), Some(payload)) = (
        csum::packet_sum(ip6.src.as_ptr(), 32),
        csum::packet_sum((na as *const NaWithTlla).cast(), u32::from(NA_LEN)),
    ) else {
        return Verdict::Pass;
    };
    let sum = addrs + csum::pseudo_tail(NA_LEN) + payload;
    na.checksum = (!csum::fold(sum)).to_be_bytes();
    tally.add(Counter::NdpAdvertisements);
    Verdict::Tx
}
