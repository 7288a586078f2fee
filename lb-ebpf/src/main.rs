//! The xdplb XDP programs.
//!
//! Layout:
//! - `xdp_l2` (this file): the entry point; dispatches on the EtherType (one optional 802.1Q
//!   tag) to [`arp`] or [`ndp`].
//! - [`maps`]: the maps, counters and the helpers both handlers share.
//! - `xdp_pass`: passes everything; attached to veth peers (native `XDP_TX` on a veth needs an
//!   XDP program on the other end) and used as the benchmark floor.
//! - [`ptr`]: the one bounds-checked accessor every packet read goes through.
//! - [`csum`]: the ones'-complement sums for the ICMPv6 checksum.
//!
//! Every path that does not end in a reply returns `XDP_PASS`: a parsing bug must never
//! black-hole the node's traffic, so there is no `XDP_ABORTED` or `XDP_DROP` anywhere.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod arp;
#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod hdr;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod ndp;
#[cfg(target_arch = "bpf")]
mod ptr;

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use lb_common::Counter;

    use crate::{
        arp, hdr,
        maps::{Tally, Verdict, commit},
        ndp,
        ptr::ptr_at,
    };

    #[xdp]
    pub fn xdp_l2(ctx: XdpContext) -> u32 {
        let mut tally = Tally::default();
        let verdict = dispatch(&ctx, &mut tally).unwrap_or(Verdict::Malformed);
        let action = match verdict {
            Verdict::Tx => xdp_action::XDP_TX,
            Verdict::Malformed => {
                tally.add(Counter::Malformed);
                tally.add(Counter::Passed);
                xdp_action::XDP_PASS
            }
            Verdict::Pass => {
                tally.add(Counter::Passed);
                xdp_action::XDP_PASS
            }
        };
        commit(tally);
        action
    }

    #[inline(always)]
    fn dispatch(ctx: &XdpContext, tally: &mut Tally) -> Result<Verdict, ()> {
        let eth: *const hdr::Eth = ptr_at(ctx, 0)?;
        // SAFETY: `ptr_at` checked that the header lies within the frame.
        let ethertype = u16::from_be_bytes(unsafe { (*eth).ethertype });
        match ethertype {
            hdr::ETH_P_ARP => Ok(arp::handle::<{ hdr::ETH_LEN }>(ctx, tally)),
            hdr::ETH_P_IPV6 => Ok(ndp::handle::<{ hdr::ETH_LEN }>(ctx, tally)),
            hdr::ETH_P_8021Q => {
                let vlan: *const hdr::Vlan = ptr_at(ctx, hdr::ETH_LEN)?;
                // SAFETY: bounds checked by `ptr_at`.
                let (tci, inner) = unsafe { ((*vlan).tci, (*vlan).ethertype) };
                // A VIP is announced on an interface, which is one VLAN: the untagged one of
                // the device the program is attached to. A request tagged for a VLAN (on a
                // trunk's parent) is another network's: the kernel gets it. Priority-only
                // tags (VLAN ID 0) belong to the untagged network.
                if u16::from_be_bytes(tci) & hdr::VLAN_VID_MASK != 0 {
                    return Ok(Verdict::Pass);
                }
                let inner = u16::from_be_bytes(inner);
                match inner {
                    hdr::ETH_P_ARP => {
                        Ok(arp::handle::<{ hdr::ETH_LEN + hdr::VLAN_LEN }>(ctx, tally))
                    }
                    hdr::ETH_P_IPV6 => {
                        Ok(ndp::handle::<{ hdr::ETH_LEN + hdr::VLAN_LEN }>(ctx, tally))
                    }
                    _ => Ok(Verdict::Pass),
                }
            }
            _ => Ok(Verdict::Pass),
        }
    }

    #[xdp]
    pub fn xdp_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
