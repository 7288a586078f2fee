//! Crafted frames for the fixtures, built with etherparse: an implementation independent of
//! both responders, so an expected reply here is not our own code agreeing with itself.
use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, Icmpv6Type, PacketBuilder, VlanId,
    icmpv6::NeighborAdvertisementHeader,
};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0x1e, 0x00, 0x00, 0x01];
pub const OWNER_MAC: [u8; 6] = [0x02, 0x0e, 0x4e, 0x00, 0x00, 0x01];
pub const OTHER_MAC: [u8; 6] = [0x02, 0x0e, 0x4e, 0x00, 0x00, 0x99];
pub const BROADCAST: [u8; 6] = [0xff; 6];
pub const CLIENT_IP4: [u8; 4] = [10, 1, 0, 1];
pub const VIP4: [u8; 4] = [10, 1, 0, 100];
pub const OTHER_IP4: [u8; 4] = [10, 1, 0, 55];
pub const CLIENT_IP6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const VIP6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
pub const OTHER_IP6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x55];
pub const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const UNSPECIFIED: [u8; 16] = [0; 16];
pub const VLAN: u16 = 100;

/// Solicited-node multicast address of `addr` (RFC 4291 §2.7.1).
pub fn solicited_node(addr: &[u8; 16]) -> [u8; 16] {
    lb_agent::l2::groups::solicited_node(std::net::Ipv6Addr::from(*addr)).octets()
}

/// Ethernet multicast address for an IPv6 multicast group (RFC 2464 §7).
pub fn multicast_mac(group: &[u8; 16]) -> [u8; 6] {
    [0x33, 0x33, group[12], group[13], group[14], group[15]]
}

fn vlan_id() -> VlanId {
    VlanId::try_new(VLAN).expect("valid VLAN id")
}

/// An Ethernet + ARP frame, optionally with one 802.1Q tag.
#[allow(
    clippy::too_many_arguments,
    reason = "one argument per ARP field is the clearest form"
)]
pub fn arp(
    vlan: bool,
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    op: ArpOperation,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
) -> Vec<u8> {
    let packet = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        op,
        &sha,
        &spa,
        &tha,
        &tpa,
    )
    .expect("valid ARP");
    let mut out = Vec::new();
    let eth = PacketBuilder::ethernet2(eth_src, eth_dst);
    if vlan {
        eth.single_vlan(vlan_id())
            .arp(packet)
            .write(&mut out)
            .expect("write ARP");
    } else {
        eth.arp(packet).write(&mut out).expect("write ARP");
    }
    out
}

/// A who-has request from the client for `tpa`.
pub fn arp_request(eth_dst: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    arp_request_from(eth_dst, CLIENT_IP4, tpa)
}

/// A who-has for `tpa` from the client's MAC with sender address `spa` (0.0.0.0: an ARP
/// probe).
pub fn arp_request_from(eth_dst: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    arp(
        false,
        CLIENT_MAC,
        eth_dst,
        ArpOperation::REQUEST,
        CLIENT_MAC,
        spa,
        [0; 6],
        tpa,
    )
}

/// The reply the owner must send to a request from (`sha`, `spa`).
pub fn arp_reply(vlan: bool, sha: [u8; 6], spa: [u8; 4]) -> Vec<u8> {
    arp(
        vlan,
        OWNER_MAC,
        sha,
        ArpOperation::REPLY,
        OWNER_MAC,
        VIP4,
        sha,
        spa,
    )
}

#[allow(
    clippy::too_many_arguments,
    reason = "one argument per header field is the clearest form"
)]
fn icmpv6(
    vlan: bool,
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    hop_limit: u8,
    kind: Icmpv6Type,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let eth = PacketBuilder::ethernet2(eth_src, eth_dst);
    if vlan {
        eth.single_vlan(vlan_id())
            .ipv6(src, dst, hop_limit)
            .icmpv6(kind)
            .write(&mut out, payload)
            .expect("write ICMPv6");
    } else {
        eth.ipv6(src, dst, hop_limit)
            .icmpv6(kind)
            .write(&mut out, payload)
            .expect("write ICMPv6");
    }
    out
}

/// Source link-layer address option (type 1) for `mac`.
pub fn slla(mac: [u8; 6]) -> [u8; 8] {
    [1, 1, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]]
}

/// A neighbour solicitation for `target` with `options` appended after the target.
#[allow(
    clippy::too_many_arguments,
    reason = "one argument per header field is the clearest form"
)]
pub fn ns(
    vlan: bool,
    eth_dst: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    hop_limit: u8,
    target: [u8; 16],
    options: &[u8],
) -> Vec<u8> {
    let mut payload = target.to_vec();
    payload.extend_from_slice(options);
    icmpv6(
        vlan,
        CLIENT_MAC,
        eth_dst,
        src,
        dst,
        hop_limit,
        Icmpv6Type::NeighborSolicitation,
        &payload,
    )
}

/// The usual solicitation: to the solicited-node group of `target`, with the client's SLLA.
pub fn ns_multicast(target: [u8; 16]) -> Vec<u8> {
    let group = solicited_node(&target);
    ns(
        false,
        multicast_mac(&group),
        CLIENT_IP6,
        group,
        255,
        target,
        &slla(CLIENT_MAC),
    )
}

/// The advertisement the owner must send to (`dst_mac`, `dst`).
pub fn na(vlan: bool, dst_mac: [u8; 6], dst: [u8; 16], solicited: bool) -> Vec<u8> {
    na_flags(vlan, dst_mac, dst, solicited, true)
}

/// [`na`] with the Override flag as given.
pub fn na_flags(
    vlan: bool,
    dst_mac: [u8; 6],
    dst: [u8; 16],
    solicited: bool,
    r#override: bool,
) -> Vec<u8> {
    let mut payload = VIP6.to_vec();
    payload.extend_from_slice(&[2, 1]);
    payload.extend_from_slice(&OWNER_MAC);
    icmpv6(
        vlan,
        OWNER_MAC,
        dst_mac,
        VIP6,
        dst,
        255,
        Icmpv6Type::NeighborAdvertisement(NeighborAdvertisementHeader {
            router: false,
            solicited,
            r#override,
        }),
        &payload,
    )
}

/// An ICMPv6 echo request from the client to `dst`.
pub fn echo6(dst: [u8; 16]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, OWNER_MAC)
        .ipv6(CLIENT_IP6, dst, 64)
        .icmpv6_echo_request(1, 1)
        .write(&mut out, b"ping")
        .expect("write echo");
    out
}

/// A TCP SYN from the client to `dst`.
pub fn tcp4(dst: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, OWNER_MAC)
        .ipv4(CLIENT_IP4, dst, 64)
        .tcp(40000, 80, 1, 1024)
        .syn()
        .write(&mut out, &[])
        .expect("write tcp");
    out
}
