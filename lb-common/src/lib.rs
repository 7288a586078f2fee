//! Types shared by the XDP program (`lb-ebpf`) and userspace (`lb-agent`, `bpf-tests`).
//!
//! Everything that crosses the kernel/user boundary is defined once here: the layout of the
//! pinned maps, the counter slots and the names under which programs, maps and links are pinned;
//! and ([`wire`]) the protocol numbers the XDP program and its userspace twin both read frames by.
//! The `user` feature adds `aya::Pod` so userspace can open the maps as typed handles; a size
//! mismatch with the loaded object then fails at startup instead of corrupting entries.
#![no_std]

pub mod wire;

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

/// Per-VIP slot tables of active-active VIPs: [`VipStatsKey`] (the VIP) -> [`SlotBits`].
pub const MAP_SLOTS: &str = "slots";
/// LRU hash of the requesters seen per active-active VIP: [`ClientKey`] -> [`ClientValue`].
/// Every node that holds the VIP fills it from the broadcast/multicast requests it sees, so a
/// node taking over slots knows whom to tell.
pub const MAP_CLIENTS: &str = "clients";

/// Default bpffs directory for the pins.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/xdplb";
/// Pinned link per interface: `link_<ifname>`.
pub const LINK_PIN_PREFIX: &str = "link_";

/// Capacity of each VIP map.
pub const MAX_VIPS: u32 = 65_536;

/// The VIP is answered only while the lease in [`MAP_LEASE`] has not expired: the dead man's
/// switch that stops a node whose agent crashed from answering for VIPs the others took over.
pub const VIP_FLAG_LEASED: u16 = 1;

/// The VIP is answered by several nodes, each for the requesters whose [`requester_slot`] is
/// set in the VIP's [`SlotBits`] in [`MAP_SLOTS`] (active-active Layer 2). Without a table
/// the VIP is not answered: a half-written configuration must not make every node answer.
pub const VIP_FLAG_ACTIVE_ACTIVE: u16 = 2;

/// Slots of an active-active VIP's table. A power of two, so a slot is the low bits of a hash.
pub const SLOTS: u32 = 4096;
/// Words of a [`SlotBits`].
pub const SLOT_WORDS: usize = (SLOTS / 64) as usize;
/// Capacity of [`MAP_CLIENTS`].
pub const MAX_CLIENTS: u32 = 65_536;

/// New or changed records of [`MAP_CLIENTS`] admitted per second (per CPU in the XDP program).
/// Requests are unauthenticated, so without a bound a burst of random senders evicts every
/// real client within a second; at this rate a flood needs `MAX_CLIENTS / rate` = 256 s, and a
/// client asking again meanwhile (Linux re-resolves within a minute) refreshes its record for
/// free.
pub const CLIENT_RECORDS_PER_SEC: u64 = 256;
/// How many new records may come at once after a quiet spell.
pub const CLIENT_RECORDS_BURST: u64 = 256;
const CLIENT_RECORD_INTERVAL_NS: u64 = 1_000_000_000 / CLIENT_RECORDS_PER_SEC;

/// Whether one more client record may be written at `now` (ns, any monotonic clock), given the
/// budget `tat` the previous admission left (0 at first): the budget to keep when admitted,
/// none when over the rate. A token bucket kept as one number (the generic cell rate
/// algorithm's theoretical arrival time), so the XDP program's state is a single `u64` and the
/// AF_PACKET responder applies the same rule through the same function.
#[inline(always)]
pub const fn admit_client_record(tat: u64, now: u64) -> Option<u64> {
    let start = if tat > now { tat } else { now };
    if start - now > (CLIENT_RECORDS_BURST - 1) * CLIENT_RECORD_INTERVAL_NS {
        None
    } else {
        Some(start.saturating_add(CLIENT_RECORD_INTERVAL_NS))
    }
}

/// Value of [`MAP_SLOTS`]: bit `s` of word `s / 64` is set when this node answers the
/// requesters of slot `s`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotBits {
    pub words: [u64; SLOT_WORDS],
}

impl SlotBits {
    pub const EMPTY: SlotBits = SlotBits {
        words: [0; SLOT_WORDS],
    };
    pub const FULL: SlotBits = SlotBits {
        words: [u64::MAX; SLOT_WORDS],
    };

    /// Whether slot `slot` (below [`SLOTS`]) is set.
    #[inline(always)]
    pub fn contains(&self, slot: u32) -> bool {
        // The masks keep the index provably in bounds for the verifier.
        let word = self.words[((slot >> 6) as usize) & (SLOT_WORDS - 1)];
        word & (1 << (slot & 63)) != 0
    }

    pub fn insert(&mut self, slot: u32) {
        self.words[((slot >> 6) as usize) & (SLOT_WORDS - 1)] |= 1 << (slot & 63);
    }

    /// How many slots are set.
    pub fn count(&self) -> u32 {
        let mut n = 0;
        let mut i = 0;
        while i < SLOT_WORDS {
            n += self.words[i].count_ones();
            i += 1;
        }
        n
    }
}

/// Key of [`MAP_CLIENTS`]: a requester of a VIP (both IPv4-mapped for IPv4, as in
/// [`VipStatsKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub vip: [u8; 16],
    pub client: [u8; 16],
}

/// Value of [`MAP_CLIENTS`]: where the requester was last heard.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientValue {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    pub ifindex: u32,
}

/// murmur3's 64-bit finaliser: every input bit reaches every output bit.
#[inline(always)]
pub const fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[inline(always)]
const fn le64(b: &[u8; 16], at: usize) -> u64 {
    u64::from_le_bytes([
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
        b[at + 4],
        b[at + 5],
        b[at + 6],
        b[at + 7],
    ])
}

/// The slot of a requester of an active-active VIP (both addresses as in [`ClientKey`]). The
/// XDP program and the agent compute it with this one function, so the agent knows which
/// recorded clients a slot it takes over holds. The VIP is mixed in so that a client of several
/// VIPs is not sent to the same node for all of them.
#[inline(always)]
pub const fn requester_slot(vip: &[u8; 16], requester: &[u8; 16]) -> u32 {
    let mut h = 0x7864_706c_625f_6161; // "xdplb_aa"
    h = fmix64(h ^ le64(requester, 0));
    h = fmix64(h ^ le64(requester, 8));
    h = fmix64(h ^ le64(vip, 0));
    h = fmix64(h ^ le64(vip, 8));
    (h as u32) & (SLOTS - 1)
}

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
    /// Requests for an active-active VIP whose requester's slot is another node's.
    OtherSlot = 7,
    /// Requesters of an active-active VIP not recorded because new records came faster than
    /// [`CLIENT_RECORDS_PER_SEC`].
    ClientsThrottled = 8,
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
        Counter::OtherSlot,
        Counter::ClientsThrottled,
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
            Counter::OtherSlot => "other_slot",
            Counter::ClientsThrottled => "clients_throttled",
        }
    }
}

/// Number of counters in a [`CounterBlock`].
pub const COUNTER_SLOTS: u32 = 9;

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
    unsafe impl aya::Pod for super::SlotBits {}
    unsafe impl aya::Pod for super::ClientKey {}
    unsafe impl aya::Pod for super::ClientValue {}
}

const _: () = assert!(core::mem::size_of::<Vip4Key>() == 8);
const _: () = assert!(core::mem::size_of::<Vip6Key>() == 20);
const _: () = assert!(core::mem::size_of::<VipValue>() == 8);
const _: () = assert!(core::mem::size_of::<VipStatsKey>() == 16);
const _: () = assert!(core::mem::size_of::<VipStats>() == 16);
const _: () = assert!(core::mem::size_of::<SlotBits>() == 512);
const _: () = assert!(core::mem::size_of::<ClientKey>() == 32);
const _: () = assert!(core::mem::size_of::<ClientValue>() == 12);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn client_records_are_admitted_at_the_rate_after_a_burst() {
        let second = 1_000_000_000;
        let mut tat = 0;
        let mut admitted = 0;
        // A flood of 10,000 in one instant: the burst passes, nothing more.
        for _ in 0..10_000 {
            if let Some(t) = admit_client_record(tat, 5 * second) {
                tat = t;
                admitted += 1;
            }
        }
        assert_eq!(admitted, CLIENT_RECORDS_BURST);
        // Spread over the next two seconds: the rate, give or take one.
        let mut later = 0;
        for i in 0..20_000u64 {
            if let Some(t) = admit_client_record(tat, 5 * second + i * (2 * second / 20_000)) {
                tat = t;
                later += 1;
            }
        }
        assert!(
            (2 * CLIENT_RECORDS_PER_SEC - 1..=2 * CLIENT_RECORDS_PER_SEC + 1).contains(&later),
            "{later}"
        );
        // After a quiet spell the whole burst is available again, and no more.
        let quiet = 60 * second;
        let mut again = 0;
        for _ in 0..1_000 {
            if let Some(t) = admit_client_record(tat, quiet) {
                tat = t;
                again += 1;
            }
        }
        assert_eq!(again, CLIENT_RECORDS_BURST);
        assert_eq!(admit_client_record(u64::MAX, u64::MAX), Some(u64::MAX));
    }

    #[test]
    fn slot_bits_set_count_and_test_every_slot() {
        let mut bits = SlotBits::EMPTY;
        for s in (0..SLOTS).filter(|s| s % 3 == 0) {
            bits.insert(s);
        }
        assert_eq!(bits.count(), SLOTS.div_ceil(3));
        assert!((0..SLOTS).all(|s| bits.contains(s) == (s % 3 == 0)));
    }

    /// 40,000 requesters over 4096 slots: 9.8 per slot on average; a hash that ignored some
    /// input bytes would pile them into a few slots.
    #[test]
    fn requesters_spread_over_the_slots_and_the_vip_reshuffles_them() {
        let vip = VipStatsKey::v4([192, 0, 2, 10]).addr;
        let other = VipStatsKey::v4([192, 0, 2, 11]).addr;
        let mut per_slot = std::vec![0u32; SLOTS as usize];
        let mut same = 0;
        for i in 0..40_000u32 {
            let b = i.to_be_bytes();
            let client = VipStatsKey::v4([10, b[1], b[2], b[3]]).addr;
            let slot = requester_slot(&vip, &client);
            per_slot[slot as usize] += 1;
            same += u32::from(slot == requester_slot(&other, &client));
        }
        let max = per_slot.iter().copied().max().unwrap_or(0);
        let empty = per_slot.iter().filter(|n| **n == 0).count();
        assert!(max < 30, "a slot holds {max} requesters");
        assert!(empty < 20, "{empty} slots empty");
        assert!(
            same < 100,
            "{same} requesters keep their slot on another VIP"
        );
    }
}
