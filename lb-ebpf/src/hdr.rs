//! Wire headers as byte arrays, so no field needs alignment in packet memory.

pub use lb_common::wire::{
    ETH_LEN, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_ICMPV6, IPV6_LEN, VLAN_LEN,
    VLAN_VID_MASK,
};

#[repr(C)]
pub struct Eth {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: [u8; 2],
}

#[repr(C)]
pub struct Vlan {
    pub tci: [u8; 2],
    pub ethertype: [u8; 2],
}

/// ARP for Ethernet and IPv4 (RFC 826).
#[repr(C)]
pub struct Arp {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub op: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

#[repr(C)]
pub struct Ipv6 {
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// A neighbour advertisement with its one Target Link-Layer Address option (RFC 4861 §4.4).
#[repr(C)]
pub struct NaWithTlla {
    pub icmp_type: u8,
    pub code: u8,
    pub checksum: [u8; 2],
    pub flags: [u8; 4],
    pub target: [u8; 16],
    pub opt_type: u8,
    pub opt_len: u8,
    pub mac: [u8; 6],
}

#[inline(always)]
pub fn is_multicast_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

#[inline(always)]
pub fn is_zero_mac(mac: &[u8; 6]) -> bool {
    mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5] == 0
}

/// Byte-wise equality without a `bcmp` call (there is no libc to link on the BPF target).
#[inline(always)]
pub fn eq<const N: usize>(a: &[u8; N], b: &[u8; N]) -> bool {
    let mut diff = 0u8;
    let mut i = 0;
    while i < N {
        diff |= a[i] ^ b[i];
        i += 1;
    }
    diff == 0
}
