//! The ARP/NDP responder in userspace: the same decisions as the XDP program, over a byte
//! slice, without I/O. The AF_PACKET fallback drives it; `bpf-tests` runs the same fixtures
//! through both to prove the two agree byte for byte.
//!
//! Also builds the unsolicited announcements (gratuitous ARP, unsolicited NA).
use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::checksum::Sum16BitWords;
use lb_common::{
    ClientKey, ClientValue, Counter, SlotBits, VIP_FLAG_ACTIVE_ACTIVE, VIP_FLAG_LEASED,
    VipStatsKey, VipValue, requester_slot,
};

use lb_common::wire::{
    ALL_NODES, ALL_NODES_MAC, ARPHRD_ETHER, ARPOP_REPLY, ARPOP_REQUEST, BROADCAST, ETH_LEN,
    ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, ICMPV6_NA, ICMPV6_NS, IPPROTO_ICMPV6, IPV6_LEN,
    NA_DAD_ACTIVE_ACTIVE, NA_LEN, NA_OVERRIDE, NA_SOLICITED_OVERRIDE, NS_LEN, OPT_SOURCE_LLA,
    OPT_TARGET_LLA, SOLICITED_NODE_PREFIX, VLAN_LEN, VLAN_VID_MASK,
};

/// The largest NS payload the XDP program answers; longer option lists go to the kernel.
const NS_MAX_LEN: usize = 64;

/// Where the responder looks VIPs up.
pub trait VipLookup {
    fn lookup4(&self, addr: [u8; 4], ifindex: u32) -> Option<VipValue>;
    fn lookup6(&self, addr: [u8; 16], ifindex: u32) -> Option<VipValue>;
    /// Whether the data-path lease is valid now (only asked for VIPs flagged as leased).
    fn lease_valid(&self) -> bool;
    /// The slots this node answers of an active-active VIP (IPv4-mapped for IPv4).
    fn slots(&self, _vip: &[u8; 16]) -> Option<&SlotBits> {
        None
    }
}

/// The responder's decision about one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not ours: the kernel handles it.
    Pass,
    /// A truncated or inconsistent ARP/NDP frame: the kernel handles it, and it is counted.
    Malformed,
    /// Send this frame back out of the interface it came in on.
    Reply(Vec<u8>),
}

/// A decision plus the counters it bumps, in the XDP program's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub counted: Vec<Counter>,
    /// A requester of an active-active VIP, to record whoever answers (as the XDP program
    /// records it in its `clients` map): the node taking over its slot tells it at once.
    pub asker: Option<(ClientKey, ClientValue)>,
}

struct Ctx {
    counted: Vec<Counter>,
    asker: Option<(ClientKey, ClientValue)>,
}

impl Ctx {
    fn finish(mut self, outcome: Outcome) -> Decision {
        match outcome {
            Outcome::Malformed => self.counted.extend([Counter::Malformed, Counter::Passed]),
            Outcome::Pass => self.counted.push(Counter::Passed),
            Outcome::Reply(_) => {}
        }
        Decision {
            outcome,
            counted: self.counted,
            asker: self.asker,
        }
    }
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

fn array<const N: usize>(frame: &[u8], at: usize) -> Option<[u8; N]> {
    frame.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Decides what to do with `frame`, received on interface `ifindex`.
pub fn respond(frame: &[u8], ifindex: u32, vips: &impl VipLookup) -> Decision {
    let mut ctx = Ctx {
        counted: Vec::new(),
        asker: None,
    };
    let outcome = dispatch(frame, ifindex, vips, &mut ctx);
    ctx.finish(outcome)
}

fn dispatch(frame: &[u8], ifindex: u32, vips: &impl VipLookup, ctx: &mut Ctx) -> Outcome {
    let Some(ethertype) = be16(frame, 12) else {
        return Outcome::Malformed;
    };
    let (l3, ethertype) = if ethertype == ETH_P_8021Q {
        let (Some(tci), Some(inner)) = (be16(frame, ETH_LEN), be16(frame, ETH_LEN + 2)) else {
            return Outcome::Malformed;
        };
        // Tagged for a VLAN: another network's request (see the XDP program's dispatch).
        if tci & VLAN_VID_MASK != 0 {
            return Outcome::Pass;
        }
        (ETH_LEN + VLAN_LEN, inner)
    } else {
        (ETH_LEN, ethertype)
    };
    match ethertype {
        ETH_P_ARP => arp(frame, l3, ifindex, vips, ctx),
        ETH_P_IPV6 => ndp(frame, l3, ifindex, vips, ctx),
        _ => Outcome::Pass,
    }
}

fn is_multicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

fn lease_ok(value: &VipValue, vips: &impl VipLookup, ctx: &mut Ctx) -> bool {
    if value.flags & VIP_FLAG_LEASED == 0 || vips.lease_valid() {
        return true;
    }
    ctx.counted.push(Counter::LeaseExpired);
    false
}

/// For an active-active VIP, whether the requester's slot is this node's (the XDP program's
/// `answers`); a requester with an address (not an ARP probe, not DAD) is noted for
/// recording, whoever answers.
fn slot_ok(
    value: &VipValue,
    asker: (ClientKey, ClientValue),
    record: bool,
    vips: &impl VipLookup,
    ctx: &mut Ctx,
) -> bool {
    let (vip, requester) = (&asker.0.vip, &asker.0.client);
    if value.flags & VIP_FLAG_ACTIVE_ACTIVE != 0 && record {
        ctx.asker = Some(asker);
    }
    if value.flags & VIP_FLAG_ACTIVE_ACTIVE == 0
        || vips
            .slots(vip)
            .is_some_and(|b| b.contains(requester_slot(vip, requester)))
    {
        return true;
    }
    ctx.counted.push(Counter::OtherSlot);
    false
}

fn arp(frame: &[u8], l3: usize, ifindex: u32, vips: &impl VipLookup, ctx: &mut Ctx) -> Outcome {
    let Some(arp) = frame.get(l3..l3 + 28) else {
        return Outcome::Malformed;
    };
    let (Some(htype), Some(ptype), Some(op)) = (be16(arp, 0), be16(arp, 2), be16(arp, 6)) else {
        return Outcome::Malformed;
    };
    if htype != ARPHRD_ETHER || ptype != ETH_P_IPV4 || arp[4] != 6 || arp[5] != 4 {
        return Outcome::Malformed;
    }
    if op != ARPOP_REQUEST {
        return Outcome::Pass;
    }
    let (Some(sha), Some(spa), Some(tpa), Some(eth_dst)) = (
        array::<6>(arp, 8),
        array::<4>(arp, 14),
        array::<4>(arp, 24),
        array::<6>(frame, 0),
    ) else {
        return Outcome::Malformed;
    };
    if is_multicast(&sha) || sha == [0; 6] {
        return Outcome::Malformed;
    }
    ctx.counted.push(Counter::ArpRequests);
    if spa == tpa {
        return Outcome::Pass;
    }
    let Some(value) = vips.lookup4(tpa, ifindex) else {
        return Outcome::Pass;
    };
    if eth_dst != BROADCAST && eth_dst != value.mac {
        return Outcome::Pass;
    }
    let asker = (
        ClientKey {
            vip: VipStatsKey::v4(tpa).addr,
            client: VipStatsKey::v4(spa).addr,
        },
        ClientValue {
            mac: sha,
            _pad: [0; 2],
            ifindex,
        },
    );
    if !slot_ok(&value, asker, spa != [0; 4], vips, ctx) {
        return Outcome::Pass;
    }
    if !lease_ok(&value, vips, ctx) {
        return Outcome::Pass;
    }
    // Rewrite a copy in place, as the XDP program does, so padding and VLAN tag are kept.
    let mut out = frame.to_vec();
    out[0..6].copy_from_slice(&sha);
    out[6..12].copy_from_slice(&value.mac);
    let a = l3;
    out[a + 6..a + 8].copy_from_slice(&ARPOP_REPLY.to_be_bytes());
    out[a + 8..a + 14].copy_from_slice(&value.mac);
    out[a + 14..a + 18].copy_from_slice(&tpa);
    out[a + 18..a + 24].copy_from_slice(&sha);
    out[a + 24..a + 28].copy_from_slice(&spa);
    ctx.counted.push(Counter::ArpReplies);
    Outcome::Reply(out)
}

fn icmpv6_sum(src: &[u8; 16], dst: &[u8; 16], payload: &[u8]) -> u16 {
    Sum16BitWords::new()
        .add_16bytes(*src)
        .add_16bytes(*dst)
        .add_4bytes((payload.len() as u32).to_be_bytes())
        .add_4bytes([0, 0, 0, IPPROTO_ICMPV6])
        .add_slice(payload)
        .ones_complement()
}

fn ndp(frame: &[u8], l3: usize, ifindex: u32, vips: &impl VipLookup, ctx: &mut Ctx) -> Outcome {
    let Some(ip6) = frame.get(l3..l3 + IPV6_LEN) else {
        return Outcome::Malformed;
    };
    if ip6[0] >> 4 != 6 {
        return Outcome::Malformed;
    }
    if ip6[6] != IPPROTO_ICMPV6 {
        return Outcome::Pass;
    }
    let Some(&icmp_type) = frame.get(l3 + IPV6_LEN) else {
        return Outcome::Malformed;
    };
    if icmp_type != ICMPV6_NS {
        return Outcome::Pass;
    }
    let plen = usize::from(u16::from_be_bytes([ip6[4], ip6[5]]));
    if plen < NS_LEN || plen % 8 != 0 {
        return Outcome::Malformed;
    }
    if plen > NS_MAX_LEN {
        return Outcome::Pass;
    }
    let start = l3 + IPV6_LEN;
    let (Some(ns), Some(src), Some(dst), Some(eth_dst), Some(eth_src)) = (
        frame.get(start..start + plen),
        array::<16>(ip6, 8),
        array::<16>(ip6, 24),
        array::<6>(frame, 0),
        array::<6>(frame, 6),
    ) else {
        return Outcome::Malformed;
    };
    if ns[1] != 0 || ip6[7] != 255 || icmpv6_sum(&src, &dst, ns) != 0 {
        return Outcome::Malformed;
    }
    let Some(target) = array::<16>(ns, 8) else {
        return Outcome::Malformed;
    };
    if target[0] == 0xff || is_multicast(&eth_src) {
        return Outcome::Malformed;
    }
    let dad = src == [0; 16];
    let to_multicast = dst[0] == 0xff;
    if to_multicast {
        let group_ok = dst[..13] == SOLICITED_NODE_PREFIX && dst[13..] == target[13..];
        let mac_ok = eth_dst == [0x33, 0x33, dst[12], dst[13], dst[14], dst[15]];
        if !(group_ok && mac_ok) {
            return Outcome::Malformed;
        }
    } else if dad {
        return Outcome::Malformed;
    }
    if !options_valid(ns, dad) {
        return Outcome::Malformed;
    }
    ctx.counted.push(Counter::NdpSolicitations);
    if !to_multicast && dst != target {
        return Outcome::Pass;
    }
    let Some(value) = vips.lookup6(target, ifindex) else {
        return Outcome::Pass;
    };
    if !to_multicast && eth_dst != value.mac {
        return Outcome::Pass;
    }
    let asker = (
        ClientKey {
            vip: target,
            client: src,
        },
        ClientValue {
            mac: eth_src,
            _pad: [0; 2],
            ifindex,
        },
    );
    if !slot_ok(&value, asker, !dad, vips, ctx) {
        return Outcome::Pass;
    }
    if !lease_ok(&value, vips, ctx) {
        return Outcome::Pass;
    }
    let (dst_ip, dst_mac, flags) = if dad && value.flags & VIP_FLAG_ACTIVE_ACTIVE != 0 {
        (ALL_NODES, ALL_NODES_MAC, NA_DAD_ACTIVE_ACTIVE)
    } else if dad {
        (ALL_NODES, ALL_NODES_MAC, NA_OVERRIDE)
    } else {
        (src, eth_src, NA_SOLICITED_OVERRIDE)
    };
    let mut out = frame[..l3].to_vec();
    out[0..6].copy_from_slice(&dst_mac);
    out[6..12].copy_from_slice(&value.mac);
    write_na(&mut out, &target, &value.mac, &dst_ip, flags);
    ctx.counted.push(Counter::NdpAdvertisements);
    Outcome::Reply(out)
}

fn options_valid(ns: &[u8], dad: bool) -> bool {
    let mut off = NS_LEN;
    while off < ns.len() {
        let (Some(&kind), Some(&len)) = (ns.get(off), ns.get(off + 1)) else {
            return false;
        };
        if len == 0 || (dad && kind == OPT_SOURCE_LLA) {
            return false;
        }
        off += usize::from(len) * 8;
    }
    off == ns.len()
}

/// Appends IPv6 header + NA with a Target Link-Layer Address option to `out`.
fn write_na(out: &mut Vec<u8>, target: &[u8; 16], mac: &[u8; 6], dst: &[u8; 16], flags: u8) {
    let mut na = [0u8; NA_LEN];
    na[0] = ICMPV6_NA;
    na[4] = flags;
    na[8..24].copy_from_slice(target);
    na[24] = OPT_TARGET_LLA;
    na[25] = 1;
    na[26..32].copy_from_slice(mac);
    // Sum16BitWords adds native-endian words, so its result is stored in native order.
    let sum = icmpv6_sum(target, dst, &na);
    na[2..4].copy_from_slice(&sum.to_ne_bytes());
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(NA_LEN as u16).to_be_bytes());
    out.extend_from_slice(&[IPPROTO_ICMPV6, 255]);
    out.extend_from_slice(target);
    out.extend_from_slice(dst);
    out.extend_from_slice(&na);
}

/// A gratuitous ARP in the RFC 5227 announcement form: a broadcast request whose sender and
/// target address are both the VIP. Neighbours that cache the VIP update it to `mac`.
pub fn gratuitous_arp(vip: Ipv4Addr, mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_LEN + 28);
    f.extend_from_slice(&BROADCAST);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&vip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&vip.octets());
    f
}

/// An unsolicited neighbour advertisement to all nodes (RFC 4861 §7.2.6): Override set,
/// Solicited clear, with the Target Link-Layer Address option.
pub fn unsolicited_na(vip: Ipv6Addr, mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_LEN + IPV6_LEN + NA_LEN);
    f.extend_from_slice(&ALL_NODES_MAC);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    write_na(&mut f, &vip.octets(), &mac, &ALL_NODES, NA_OVERRIDE);
    f
}

/// An ARP reply to one client (`client_ip` at `client_mac`) that `vip` is at `mac`: what it
/// would have got had it asked. Linux takes an unsolicited reply to a known entry (after its
/// `locktime`), so the client moves without a broadcast that would move every client.
pub fn arp_reply_to(
    vip: Ipv4Addr,
    mac: [u8; 6],
    client_ip: Ipv4Addr,
    client_mac: [u8; 6],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_LEN + 28);
    f.extend_from_slice(&client_mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&vip.octets());
    f.extend_from_slice(&client_mac);
    f.extend_from_slice(&client_ip.octets());
    f
}

/// An unsolicited neighbour advertisement to one client: Override set, Solicited clear (it
/// answers no solicitation), with the Target Link-Layer Address option.
pub fn na_to(vip: Ipv6Addr, mac: [u8; 6], client_ip: Ipv6Addr, client_mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_LEN + IPV6_LEN + NA_LEN);
    f.extend_from_slice(&client_mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    write_na(
        &mut f,
        &vip.octets(),
        &mac,
        &client_ip.octets(),
        NA_OVERRIDE,
    );
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    struct One {
        v4: [u8; 4],
        v6: [u8; 16],
        value: VipValue,
    }

    impl VipLookup for One {
        fn lookup4(&self, addr: [u8; 4], ifindex: u32) -> Option<VipValue> {
            (addr == self.v4 && ifindex == 1).then_some(self.value)
        }
        fn lookup6(&self, addr: [u8; 16], ifindex: u32) -> Option<VipValue> {
            (addr == self.v6 && ifindex == 1).then_some(self.value)
        }
        fn lease_valid(&self) -> bool {
            false
        }
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn table() -> One {
        One {
            v4: [10, 0, 0, 100],
            v6: "fd00::100"
                .parse::<Ipv6Addr>()
                .map(|a| a.octets())
                .unwrap_or_default(),
            value: VipValue { mac: MAC, flags: 0 },
        }
    }

    #[test]
    fn gratuitous_arp_is_passed_not_answered() {
        let garp = gratuitous_arp(Ipv4Addr::new(10, 0, 0, 100), [2, 0, 0, 0, 0, 9]);
        let d = respond(&garp, 1, &table());
        assert_eq!(d.outcome, Outcome::Pass);
        assert_eq!(d.counted, vec![Counter::ArpRequests, Counter::Passed]);
    }

    #[test]
    fn unsolicited_na_matches_an_independently_built_frame() {
        use etherparse::{Icmpv6Type, PacketBuilder, icmpv6::NeighborAdvertisementHeader};
        let vip: Ipv6Addr = "fd00::100".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
        let mut payload = vip.octets().to_vec();
        payload.extend_from_slice(&[2, 1]);
        payload.extend_from_slice(&MAC);
        let mut want = Vec::new();
        PacketBuilder::ethernet2(MAC, ALL_NODES_MAC)
            .ipv6(vip.octets(), ALL_NODES, 255)
            .icmpv6(Icmpv6Type::NeighborAdvertisement(
                NeighborAdvertisementHeader {
                    router: false,
                    solicited: false,
                    r#override: true,
                },
            ))
            .write(&mut want, &payload)
            .expect("etherparse builds the NA");
        assert_eq!(unsolicited_na(vip, MAC), want);
    }

    #[test]
    fn leased_vip_is_not_answered_once_the_lease_lapsed() {
        let mut t = table();
        t.value.flags = VIP_FLAG_LEASED;
        let mut req = gratuitous_arp(Ipv4Addr::new(10, 0, 0, 1), [2, 0, 0, 0, 0, 9]);
        req[38..42].copy_from_slice(&[10, 0, 0, 100]);
        let d = respond(&req, 1, &t);
        assert_eq!(d.outcome, Outcome::Pass);
        assert!(d.counted.contains(&Counter::LeaseExpired));
        t.value.flags = 0;
        assert!(matches!(respond(&req, 1, &t).outcome, Outcome::Reply(_)));
    }

    /// Seed frames the mutations start from: a request the responder answers, of each kind.
    fn seeds() -> Vec<Vec<u8>> {
        let mut arp = gratuitous_arp(Ipv4Addr::new(10, 0, 0, 1), [2, 0, 0, 0, 0, 9]);
        arp[38..42].copy_from_slice(&[10, 0, 0, 100]);
        let vip: Ipv6Addr = "fd00::100".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
        let mut ns = Vec::new();
        let _ =
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [0x33, 0x33, 0xff, 0, 1, 0])
                .ipv6(
                    "fd00::9"
                        .parse::<Ipv6Addr>()
                        .map(|a| a.octets())
                        .unwrap_or_default(),
                    "ff02::1:ff00:100"
                        .parse::<Ipv6Addr>()
                        .map(|a| a.octets())
                        .unwrap_or_default(),
                    255,
                )
                .icmpv6(etherparse::Icmpv6Type::Unknown {
                    type_u8: 135,
                    code_u8: 0,
                    bytes5to8: [0; 4],
                })
                .write(
                    &mut ns,
                    &[vip.octets().as_slice(), &[1, 1, 2, 0, 0, 0, 0, 9]].concat(),
                );
        vec![arp, ns]
    }

    #[test]
    fn the_fuzz_seeds_are_answered() {
        for frame in seeds() {
            assert!(matches!(
                respond(&frame, 1, &table()).outcome,
                Outcome::Reply(_)
            ));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// The AF_PACKET responder's parser on whatever a segment can carry: random frames,
        /// and answered requests with bytes changed, cut short or extended.
        #[test]
        fn random_frames_never_panic(
            random in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            seed in 0usize..2,
            flips in proptest::collection::vec((0usize..120, proptest::prelude::any::<u8>()), 0..6),
            cut in 0usize..130,
            leased in proptest::prelude::any::<bool>(),
        ) {
            let mut t = table();
            if leased {
                t.value.flags = VIP_FLAG_LEASED;
            }
            let _ = respond(&random, 1, &t);
            let mut frame = seeds().swap_remove(seed);
            for (at, byte) in flips {
                if let Some(b) = frame.get_mut(at) {
                    *b ^= byte;
                }
            }
            frame.truncate(cut.max(1));
            let _ = respond(&frame, 1, &t);
        }
    }
}
