//! The Ethernet, ARP and ICMPv6 numbers both responders use: the XDP program (`lb-ebpf`) and
//! its userspace twin (`lb-agent`'s `l2::responder`), which must make the same decisions on
//! the same bytes.

/// Ethernet header.
pub const ETH_LEN: usize = 14;
/// One 802.1Q tag.
pub const VLAN_LEN: usize = 4;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
/// The VLAN ID bits of an 802.1Q tag's TCI (the rest are priority and DEI).
pub const VLAN_VID_MASK: u16 = 0x0fff;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// ARP hardware type Ethernet.
pub const ARPHRD_ETHER: u16 = 1;
pub const ARPOP_REQUEST: u16 = 1;
pub const ARPOP_REPLY: u16 = 2;

/// IPv6 header.
pub const IPV6_LEN: usize = 40;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const ICMPV6_NS: u8 = 135;
pub const ICMPV6_NA: u8 = 136;
/// A neighbour solicitation without options.
pub const NS_LEN: usize = 24;
/// A neighbour advertisement with the Target Link-Layer Address option.
pub const NA_LEN: usize = 32;
/// NDP option types (RFC 4861 §4.6).
pub const OPT_SOURCE_LLA: u8 = 1;
pub const OPT_TARGET_LLA: u8 = 2;
/// NA flags: Solicited | Override. Router is never set: a VIP is not a router.
pub const NA_SOLICITED_OVERRIDE: u8 = 0x60;
/// NA flags for an answer to DAD, and for unsolicited NAs: Override only (RFC 4861 §7.2.4).
pub const NA_OVERRIDE: u8 = 0x20;
/// The NA flags of the answer to a DAD probe for an active-active VIP: neither solicited nor
/// override, so that the prober learns the address is taken while every host that has the
/// VIP cached keeps its entry (RFC 4861 §7.2.5). With Override, one probe would move every
/// client on the link to the one node answering it.
pub const NA_DAD_ACTIVE_ACTIVE: u8 = 0;
pub const ALL_NODES: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
/// `ff02::1:ff00:0/104`: a solicited-node group is this and the low 24 bits of the address.
pub const SOLICITED_NODE_PREFIX: [u8; 13] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff];
pub const UNSPECIFIED: [u8; 16] = [0; 16];
