//! The maps the agent pins and fills, and the helpers the handlers share: verdicts, the
//! per-frame [`Tally`] of counters, the data-path lease, the active-active decision
//! ([`answers`]) and per-VIP statistics. The handlers ([`crate::arp`], [`crate::ndp`]) and the
//! entry point depend on this module; it depends on none of them.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::XdpContext,
};
use lb_common::{
    COUNTER_SLOTS, ClientKey, ClientValue, Counter, CounterBlock, MAX_CLIENTS, MAX_VIPS, SlotBits,
    VIP_FLAG_LEASED, Vip4Key, Vip6Key, VipStats, VipStatsKey, VipValue, admit_client_record,
    requester_slot,
};

use crate::hdr;

// Hash maps without preallocation: elements are freed after an RCU grace period, so a value
// read here is never recycled under us while the agent replaces an entry.
#[map(name = "vip4")]
pub static VIP4: HashMap<Vip4Key, VipValue> = HashMap::pinned(MAX_VIPS, BPF_F_NO_PREALLOC);

#[map(name = "vip6")]
pub static VIP6: HashMap<Vip6Key, VipValue> = HashMap::pinned(MAX_VIPS, BPF_F_NO_PREALLOC);

#[map(name = "counters")]
static COUNTERS: PerCpuArray<CounterBlock> = PerCpuArray::pinned(1, 0);

#[map(name = "vip_stats")]
static VIP_STATS: PerCpuHashMap<VipStatsKey, VipStats> =
    PerCpuHashMap::pinned(2 * MAX_VIPS, BPF_F_NO_PREALLOC);

#[map(name = "lease")]
static LEASE: Array<u64> = Array::pinned(1, 0);

#[map(name = "slots")]
static SLOT_TABLES: HashMap<VipStatsKey, SlotBits> = HashMap::pinned(MAX_VIPS, BPF_F_NO_PREALLOC);

#[map(name = "clients")]
static CLIENTS: LruHashMap<ClientKey, ClientValue> = LruHashMap::pinned(MAX_CLIENTS, 0);

/// What a handler decided about a frame.
pub enum Verdict {
    /// Not ours: hand it to the kernel.
    Pass,
    /// An ARP or NDP frame that is truncated or inconsistent: hand it to the kernel, count it.
    Malformed,
    /// The frame was rewritten into a reply: transmit it back out of the same interface.
    Tx,
}

/// The counters one frame bumps, collected while it is parsed and added with a single map
/// lookup at the end (a lookup is a helper call; a frame bumps up to four counters).
#[derive(Clone, Copy, Default)]
pub struct Tally(u16);

impl Tally {
    #[inline(always)]
    pub fn add(&mut self, counter: Counter) {
        self.0 |= 1 << counter as u8;
    }
}

/// Adds a frame's tally to the counters.
#[inline(always)]
pub fn commit(tally: Tally) {
    if let Some(block) = COUNTERS.get_ptr_mut(0) {
        let mut i = 0;
        while i < COUNTER_SLOTS as usize {
            if tally.0 & (1 << i) != 0 {
                // SAFETY: per-CPU value, so no other program run writes it concurrently;
                // `i` is below COUNTER_SLOTS.
                unsafe { (*block).0[i] += 1 };
            }
            i += 1;
        }
    }
}

/// Whether a VIP may be answered now: unleased VIPs always, leased ones only while the agent
/// keeps renewing the lease (DESIGN.md §6, the dead man's switch).
#[inline(always)]
pub fn lease_valid(value: &VipValue, tally: &mut Tally) -> bool {
    if value.flags & VIP_FLAG_LEASED == 0 {
        return true;
    }
    let Some(deadline) = LEASE.get(0) else {
        return false;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now < *deadline {
        true
    } else {
        tally.add(Counter::LeaseExpired);
        false
    }
}

/// The request being decided for an active-active VIP, built in map memory: BPF-to-BPF
/// calls take five arguments at most and the stack is already mostly the solicitation's.
#[repr(C)]
pub struct Asker {
    pub key: ClientKey,
    pub value: ClientValue,
}

#[map]
static ASKER: PerCpuArray<Asker> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's budget for new client records (see [`lb_common::admit_client_record`]). Per
/// CPU so that admitting needs no atomics; the node's rate is this one times its CPUs.
#[map]
static RECORD_BUDGET: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Whether one more new or changed client record fits this CPU's rate, spending it if so.
#[inline(always)]
fn admit_record() -> bool {
    let Some(budget) = RECORD_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU value, written by no other run concurrently.
    match admit_client_record(unsafe { *budget }, now) {
        Some(next) => {
            // SAFETY: as above.
            unsafe { *budget = next };
            true
        }
        None => false,
    }
}

/// Where to build the request for [`answers`]; none only if the map lookup fails.
#[inline(always)]
pub fn asker() -> Option<*mut Asker> {
    ASKER.get_ptr_mut(0)
}

/// Whether this node answers the request in `asker` (a requester of an active-active
/// VIP, both addresses IPv4-mapped for IPv4): only when the requester's slot is in the
/// VIP's table. The requester is recorded, whoever answers, so that the node taking over
/// its slot can tell it at once; `record` is false for requesters without an address (ARP
/// probes, DAD). Refreshing a known record is free; a new or changed one spends the rate.
#[inline(never)]
pub fn answers(asker: *mut Asker, record: bool, tally: &mut Tally) -> bool {
    // SAFETY: `asker` is this CPU's element of ASKER, which nothing else touches during
    // this run; map elements are valid keys and values for map helpers.
    let (key, value) = unsafe { (&(*asker).key, &(*asker).value) };
    if record {
        // A lookup refreshes the entry's age as well; writing only on change keeps the
        // common case (a client asking again from where it asked before) cheap.
        let known = match CLIENTS.get_ptr(key) {
            // SAFETY: the element stays valid for this run (RCU).
            Some(v) => unsafe { hdr::eq(&(*v).mac, &value.mac) && (*v).ifindex == value.ifindex },
            None => false,
        };
        if !known {
            if admit_record() {
                let _ = CLIENTS.insert(key, value, 0);
            } else {
                tally.add(Counter::ClientsThrottled);
            }
        }
    }
    // SAFETY: VipStatsKey is the 16 address bytes that start ClientKey (both repr(C)).
    let table = unsafe { &*(&key.vip as *const [u8; 16]).cast::<VipStatsKey>() };
    let mine = match SLOT_TABLES.get_ptr(table) {
        // SAFETY: the map has no preallocation, so the element stays valid for this run.
        Some(bits) => unsafe { (*bits).contains(requester_slot(&key.vip, &key.client)) },
        None => false,
    };
    if !mine {
        tally.add(Counter::OtherSlot);
    }
    mine
}

/// Counts a request for a VIP in the map, and whether it was answered.
#[inline(always)]
pub fn count_vip(key: &VipStatsKey, answered: bool) {
    if let Some(stats) = VIP_STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, written by no other run concurrently; the map has no
        // preallocation, so the element stays valid for this run.
        unsafe {
            (*stats).requests += 1;
            if answered {
                (*stats).responses += 1;
            }
        }
    }
}

#[inline(always)]
pub fn ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: reading a field of the context the kernel handed us.
    unsafe { (*ctx.ctx).ingress_ifindex }
}
