//! Types shared by the XDP program (`lb-ebpf`) and userspace (`lb-agent`, `bpf-tests`).
//!
//! Everything that crosses the kernel/user boundary is defined once here: the layout of the
//! pinned maps, the counter slots and the names under which programs, maps and links are pinned.
//! The `user` feature adds `aya::Pod` so userspace can open the maps as typed handles; a size
//! mismatch with the loaded object then fails at startup instead of corrupting entries.
#![no_std]

/// Name of the XDP program that answers ARP and NDP for the VIPs.
pub const PROG_XDP_L2: &str = "xdp_l2";
/// Name of a program that passes every frame. Native XDP on a veth drops `XDP_TX` frames unless the
/// peer end runs an XDP program, so labs attach this one there; it is also the benchmark floor.
pub const PROG_XDP_PASS: &str = "xdp_pass";

/// IPv4 VIP map: [`Vip4Key`] -> [`VipValue`].
pub const MAP_VIP4: &str = "vip4";
/// IPv6 VIP map: [`Vip6Key`] -> [`VipValue`].
pub const MAP_VIP6: &str = "vip6";
/// Per-CPU array with one [`CounterBlock`] (slot 0): one map lookup per frame counts everything.
pub const MAP_COUNTERS: &str = "counters";
/// One-slot array holding the data-path lease deadline (`bpf_ktime_get_ns` clock) for VIPs
/// flagged [`VIP_FLAG_LEASED`].
pub const MAP_LEASE: &str = "lease";

/// Per-CPU hash of [`VipStatsKey`] -> [`VipStats`]: requests and replies per VIP address
/// (MetalLB's `metallb_layer2_*` metrics are per IP). The agent creates and removes the entries
/// with the VIPs; the program only counts into entries that exist, so the map stays bounded.
pub const MAP_VIP_STATS: &str = "vip_stats";

/// Default bpffs directory for the pins.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/xdplb";
/// Pinned link per interface: `link_<ifname>`.
pub const LINK_PIN_PREFIX: &str = "link_";

/// Capacity of each VIP map.
pub const MAX_VIPS: u32 = 65_536;

/// The VIP is answered only while the lease in [`MAP_LEASE`] has not expired: the dead man's
/// switch that stops a node whose agent crashed from answering for VIPs the others took over.
pub const VIP_FLAG_LEASED: u16 = 1;

/// Key of [`MAP_VIP4`]. The interface is part of the key because one VIP may be announced on
/// several interfaces of a node, each with its own MAC.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Vip4Key {
    /// IPv4 address in network byte order.
    pub addr: [u8; 4],
    /// Interface index the request must arrive on.
    pub ifindex: u32,
}

/// Key of [`MAP_VIP6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Vip6Key {
    /// IPv6 address in network byte order.
    pub addr: [u8; 16],
    /// Interface index the solicitation must arrive on.
    pub ifindex: u32,
}

/// Value of both VIP maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VipValue {
    /// MAC address put in replies (the announcing interface's MAC).
    pub mac: [u8; 6],
    /// `VIP_FLAG_*` bits.
    pub flags: u16,
}

/// Key of [`MAP_VIP_STATS`]: the address, IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`), so one
/// map serves both families and one VIP on several interfaces counts once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VipStatsKey {
    pub addr: [u8; 16],
}

impl VipStatsKey {
    pub const fn v4(addr: [u8; 4]) -> Self {
        let [a, b, c, d] = addr;
        Self {
            addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d],
        }
    }
}

/// Value of [`MAP_VIP_STATS`] (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    /// Requests for this VIP that reached the program (answered or not).
    pub requests: u64,
    /// Replies sent for this VIP.
    pub responses: u64,
}

/// Slots of [`MAP_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Well-formed ARP requests seen, whatever their target.
    ArpRequests = 0,
    /// ARP replies sent for a VIP.
    ArpReplies = 1,
    /// Well-formed neighbour solicitations seen, whatever their target.
    NdpSolicitations = 2,
    /// Neighbour advertisements sent for a VIP.
    NdpAdvertisements = 3,
    /// Frames handed to the kernel unchanged.
    Passed = 4,
    /// ARP or NDP frames that were truncated or inconsistent (also passed to the kernel).
    Malformed = 5,
    /// Requests for a leased VIP that were not answered because the lease had expired.
    LeaseExpired = 6,
}

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; COUNTER_SLOTS as usize] = [
        Counter::ArpRequests,
        Counter::ArpReplies,
        Counter::NdpSolicitations,
        Counter::NdpAdvertisements,
        Counter::Passed,
        Counter::Malformed,
        Counter::LeaseExpired,
    ];

    /// Stable snake-case name used in `lb-agent maps` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::ArpRequests => "arp_requests",
            Counter::ArpReplies => "arp_replies",
            Counter::NdpSolicitations => "ndp_solicitations",
            Counter::NdpAdvertisements => "ndp_advertisements",
            Counter::Passed => "passed",
            Counter::Malformed => "malformed",
            Counter::LeaseExpired => "lease_expired",
        }
    }
}

/// Number of counters in a [`CounterBlock`].
pub const COUNTER_SLOTS: u32 = 7;

/// The value of [`MAP_COUNTERS`]: every counter of one CPU, indexed by [`Counter`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterBlock(pub [u64; COUNTER_SLOTS as usize]);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` structs of integers and byte arrays with no padding (checked by the
    // size assertions below), so every bit pattern is valid.
    unsafe impl aya::Pod for super::Vip4Key {}
    unsafe impl aya::Pod for super::Vip6Key {}
    unsafe impl aya::Pod for super::VipValue {}
    unsafe impl aya::Pod for super::CounterBlock {}
    unsafe impl aya::Pod for super::VipStatsKey {}
    unsafe impl aya::Pod for super::VipStats {}
}

const _: () = assert!(core::mem::size_of::<Vip4Key>() == 8);
const _: () = assert!(core::mem::size_of::<Vip6Key>() == 20);
const _: () = assert!(core::mem::size_of::<VipValue>() == 8);
const _: () = assert!(core::mem::size_of::<VipStatsKey>() == 16);
const _: () = assert!(core::mem::size_of::<VipStats>() == 16);
