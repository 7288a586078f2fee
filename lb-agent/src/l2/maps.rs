//! Typed handles over the pinned maps, and the desired-state apply that keeps them current.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use lb_common::{
    COUNTER_SLOTS, ClientKey, ClientValue, Counter, CounterBlock, MAP_CLIENTS, MAP_COUNTERS,
    MAP_LEASE, MAP_SLOTS, MAP_VIP_STATS, MAP_VIP4, MAP_VIP6, SlotBits, Vip4Key, Vip6Key, VipStats,
    VipStatsKey, VipValue,
};

use super::L2Error;

/// One VIP as announced on one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipEntry {
    pub addr: IpAddr,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub flags: u16,
}

impl VipEntry {
    fn key(&self) -> (IpAddr, u32) {
        (self.addr, self.ifindex)
    }
}

/// What an [`VipMaps::apply`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    /// Entries left out because their family's map is full ([`lb_common::MAX_VIPS`] each):
    /// the last ones in (address, interface) order, so every run leaves out the same ones.
    pub left_out: Vec<VipEntry>,
}

/// Counter totals over all CPUs, indexed like [`Counter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; COUNTER_SLOTS as usize]);

impl Counters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }
}

/// The VIP maps, lease and counters of one pin directory.
pub struct VipMaps {
    vip4: HashMap<MapData, Vip4Key, VipValue>,
    vip6: HashMap<MapData, Vip6Key, VipValue>,
    counters: PerCpuArray<MapData, CounterBlock>,
    lease: Array<MapData, u64>,
    stats: PerCpuHashMap<MapData, VipStatsKey, VipStats>,
    slots: HashMap<MapData, VipStatsKey, SlotBits>,
    clients: HashMap<MapData, ClientKey, ClientValue>,
}

/// An address as the maps keyed by address hold it: IPv4 as IPv4-mapped IPv6.
pub fn addr_key(addr: IpAddr) -> VipStatsKey {
    match addr {
        IpAddr::V4(a) => VipStatsKey::v4(a.octets()),
        IpAddr::V6(a) => VipStatsKey { addr: a.octets() },
    }
}

/// The address an [`addr_key`] stands for.
pub fn key_addr(key: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*key);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// A requester of an active-active VIP, as the XDP program recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Client {
    pub vip: IpAddr,
    pub addr: IpAddr,
    pub mac: [u8; 6],
    pub ifindex: u32,
}

impl Client {
    /// The slot of the VIP's table this client falls in.
    pub fn slot(&self) -> u32 {
        lb_common::requester_slot(&addr_key(self.vip).addr, &addr_key(self.addr).addr)
    }
}

/// Requests and replies for one VIP address, summed over CPUs and interfaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipTotals {
    pub requests: u64,
    pub responses: u64,
}

fn open(bpffs: &Path, name: &'static str) -> Result<Map, L2Error> {
    let path = bpffs.join(name);
    if !path.exists() {
        return Err(L2Error::MissingMap { name });
    }
    let data = MapData::from_pin(&path).map_err(|source| L2Error::Map { name, source })?;
    Map::from_map_data(data).map_err(|source| L2Error::Map { name, source })
}

impl VipMaps {
    /// Opens the maps pinned under `bpffs`; sizes are checked against the `lb-common` types.
    pub fn open_pinned(bpffs: &Path) -> Result<Self, L2Error> {
        let err = |name| move |source| L2Error::Map { name, source };
        Ok(Self {
            vip4: open(bpffs, MAP_VIP4)?.try_into().map_err(err(MAP_VIP4))?,
            vip6: open(bpffs, MAP_VIP6)?.try_into().map_err(err(MAP_VIP6))?,
            counters: open(bpffs, MAP_COUNTERS)?
                .try_into()
                .map_err(err(MAP_COUNTERS))?,
            lease: open(bpffs, MAP_LEASE)?.try_into().map_err(err(MAP_LEASE))?,
            stats: open(bpffs, MAP_VIP_STATS)?
                .try_into()
                .map_err(err(MAP_VIP_STATS))?,
            slots: open(bpffs, MAP_SLOTS)?.try_into().map_err(err(MAP_SLOTS))?,
            clients: open(bpffs, MAP_CLIENTS)?
                .try_into()
                .map_err(err(MAP_CLIENTS))?,
        })
    }

    /// The slot tables of the active-active VIPs.
    pub fn slot_tables(&self) -> BTreeMap<IpAddr, SlotBits> {
        self.slots
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (key_addr(&k.addr), v))
            .collect()
    }

    /// Every requester recorded for the active-active VIPs, sorted.
    pub fn clients(&self) -> Vec<Client> {
        let mut out: Vec<Client> = self
            .clients
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| Client {
                vip: key_addr(&k.vip),
                addr: key_addr(&k.client),
                mac: v.mac,
                ifindex: v.ifindex,
            })
            .collect();
        out.sort();
        out
    }

    /// Makes the slot tables exactly `tables`; returns how many were written or removed.
    fn sync_slots(&mut self, tables: &BTreeMap<IpAddr, SlotBits>) -> Result<(), L2Error> {
        let err = |source| L2Error::Map {
            name: MAP_SLOTS,
            source,
        };
        let current = self.slot_tables();
        for (addr, bits) in tables {
            if current.get(addr) != Some(bits) {
                self.slots.insert(addr_key(*addr), bits, 0).map_err(err)?;
            }
        }
        for addr in current.keys().filter(|a| !tables.contains_key(*a)) {
            match self.slots.remove(&addr_key(*addr)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(())
    }

    /// Every VIP entry in the maps, sorted.
    pub fn entries(&self) -> Vec<VipEntry> {
        let mut out: Vec<VipEntry> = self
            .vip4
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| VipEntry {
                addr: IpAddr::V4(Ipv4Addr::from(k.addr)),
                ifindex: k.ifindex,
                mac: v.mac,
                flags: v.flags,
            })
            .chain(
                self.vip6
                    .iter()
                    .filter_map(Result::ok)
                    .map(|(k, v)| VipEntry {
                        addr: IpAddr::V6(Ipv6Addr::from(k.addr)),
                        ifindex: k.ifindex,
                        mac: v.mac,
                        flags: v.flags,
                    }),
            )
            .collect();
        out.sort();
        out
    }

    fn insert(&mut self, entry: &VipEntry) -> Result<(), L2Error> {
        let value = VipValue {
            mac: entry.mac,
            flags: entry.flags,
        };
        match entry.addr {
            IpAddr::V4(addr) => self.vip4.insert(
                Vip4Key {
                    addr: addr.octets(),
                    ifindex: entry.ifindex,
                },
                value,
                0,
            ),
            IpAddr::V6(addr) => self.vip6.insert(
                Vip6Key {
                    addr: addr.octets(),
                    ifindex: entry.ifindex,
                },
                value,
                0,
            ),
        }
        .map_err(|source| L2Error::Map {
            name: map_name(entry.addr),
            source,
        })
    }

    fn remove(&mut self, addr: IpAddr, ifindex: u32) -> Result<(), L2Error> {
        let result = match addr {
            IpAddr::V4(addr) => self.vip4.remove(&Vip4Key {
                addr: addr.octets(),
                ifindex,
            }),
            IpAddr::V6(addr) => self.vip6.remove(&Vip6Key {
                addr: addr.octets(),
                ifindex,
            }),
        };
        match result {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(L2Error::Map {
                name: map_name(addr),
                source,
            }),
        }
    }

    /// Makes the maps hold exactly `desired`, with `slots` as the tables of the active-active
    /// VIPs among them: new and changed entries are written before stale ones are removed, so
    /// a VIP that stays is never missing in between. Tables are written before the entries
    /// that use them and removed after. The recorded requesters stay (the LRU map bounds
    /// them): a restarted agent, which starts from nothing, still knows whom to tell when it
    /// takes its slots back.
    pub fn apply(
        &mut self,
        desired: &[VipEntry],
        slots: &BTreeMap<IpAddr, SlotBits>,
    ) -> Result<ApplyStats, L2Error> {
        let mut with_old = self.slot_tables();
        with_old.extend(slots.iter().map(|(a, b)| (*a, *b)));
        self.sync_slots(&with_old)?;
        let stats = self.apply_entries(desired)?;
        self.sync_slots(slots)?;
        Ok(stats)
    }

    /// Makes the maps hold `desired`, within their capacity: what does not fit is left out
    /// (and reported) rather than failing the whole update, which would stop the node
    /// answering for everything. New entries go in before old ones go (make before break)
    /// where there is room, and after, where there is not.
    fn apply_entries(&mut self, desired: &[VipEntry]) -> Result<ApplyStats, L2Error> {
        let current: BTreeMap<_, _> = self.entries().into_iter().map(|e| (e.key(), e)).collect();
        let mut wanted: BTreeMap<_, _> = desired.iter().map(|e| (e.key(), *e)).collect();
        let mut stats = ApplyStats::default();
        let capacity = lb_common::MAX_VIPS as usize;
        for v6 in [false, true] {
            let family: Vec<_> = wanted
                .keys()
                .filter(|k| k.0.is_ipv6() == v6)
                .skip(capacity)
                .copied()
                .collect();
            for key in family {
                stats.left_out.extend(wanted.remove(&key));
            }
        }
        let mut held = [0usize; 2];
        for k in current.keys() {
            held[usize::from(k.0.is_ipv6())] += 1;
        }
        let mut later = Vec::new();
        for (key, entry) in &wanted {
            match current.get(key) {
                Some(old) if old == entry => {}
                Some(_) => {
                    self.insert(entry)?;
                    stats.updated += 1;
                }
                None => {
                    let f = usize::from(key.0.is_ipv6());
                    if held[f] < capacity {
                        self.insert(entry)?;
                        held[f] += 1;
                        stats.added += 1;
                    } else {
                        later.push(*entry);
                    }
                }
            }
        }
        for key in current.keys().filter(|k| !wanted.contains_key(*k)) {
            self.remove(key.0, key.1)?;
            stats.removed += 1;
        }
        for entry in &later {
            self.insert(entry)?;
            stats.added += 1;
        }
        let kept: Vec<VipEntry> = wanted.into_values().collect();
        self.sync_stats(&kept)?;
        Ok(stats)
    }

    /// One zeroed statistics entry per announced address; entries of addresses no longer
    /// announced go. Existing entries keep counting.
    fn sync_stats(&mut self, desired: &[VipEntry]) -> Result<(), L2Error> {
        let err = |source| L2Error::Map {
            name: MAP_VIP_STATS,
            source,
        };
        let wanted: std::collections::BTreeSet<IpAddr> = desired.iter().map(|e| e.addr).collect();
        let present: Vec<VipStatsKey> = self.stats.keys().filter_map(Result::ok).collect();
        let have: std::collections::BTreeSet<IpAddr> =
            present.iter().map(|k| key_addr(&k.addr)).collect();
        if wanted.iter().any(|a| !have.contains(a)) {
            let cpus =
                aya::util::nr_cpus().map_err(|(what, source)| L2Error::Cpus { what, source })?;
            for addr in wanted.iter().filter(|a| !have.contains(a)) {
                let zero =
                    PerCpuValues::try_from(vec![VipStats::default(); cpus]).map_err(|source| {
                        L2Error::Cpus {
                            what: "per-CPU values",
                            source,
                        }
                    })?;
                // BPF_NOEXIST: never reset an entry the program is counting into.
                match self.stats.insert(addr_key(*addr), zero, 1) {
                    Ok(()) => {}
                    Err(aya::maps::MapError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(err(e)),
                }
            }
        }
        for key in present
            .iter()
            .filter(|k| !wanted.contains(&key_addr(&k.addr)))
        {
            match self.stats.remove(key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(())
    }

    /// Requests and replies per announced address, summed over CPUs.
    pub fn vip_totals(&self) -> BTreeMap<IpAddr, VipTotals> {
        self.stats
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| {
                let mut t = VipTotals::default();
                for s in per_cpu.iter() {
                    t.requests += s.requests;
                    t.responses += s.responses;
                }
                (key_addr(&key.addr), t)
            })
            .collect()
    }

    /// Removes the given entries (others stay).
    pub fn withdraw(&mut self, entries: &[VipEntry]) -> Result<(), L2Error> {
        for entry in entries {
            self.remove(entry.addr, entry.ifindex)?;
        }
        Ok(())
    }

    /// Counter totals over all CPUs.
    pub fn counters(&self) -> Result<Counters, L2Error> {
        let per_cpu = self.counters.get(&0, 0).map_err(|source| L2Error::Map {
            name: MAP_COUNTERS,
            source,
        })?;
        let mut totals = Counters::default();
        for block in per_cpu.iter() {
            for (total, n) in totals.0.iter_mut().zip(block.0) {
                *total += n;
            }
        }
        Ok(totals)
    }

    /// Sets the lease deadline (`CLOCK_MONOTONIC` nanoseconds).
    pub fn set_lease(&mut self, deadline_ns: u64) -> Result<(), L2Error> {
        set_lease(&mut self.lease, deadline_ns)
    }

    /// The lease deadline (`CLOCK_MONOTONIC` nanoseconds); 0 when never set.
    pub fn lease(&self) -> Result<u64, L2Error> {
        self.lease.get(&0, 0).map_err(|source| L2Error::Map {
            name: MAP_LEASE,
            source,
        })
    }
}

/// The data-path lease array pinned under `bpffs`, on its own: the membership thread renews it
/// while the agent's loop holds the other maps.
pub fn open_lease(bpffs: &Path) -> Result<Array<MapData, u64>, L2Error> {
    open(bpffs, MAP_LEASE)?
        .try_into()
        .map_err(|source| L2Error::Map {
            name: MAP_LEASE,
            source,
        })
}

/// Sets the lease deadline (`CLOCK_MONOTONIC` nanoseconds, the clock of `bpf_ktime_get_ns`).
pub fn set_lease(lease: &mut Array<MapData, u64>, deadline_ns: u64) -> Result<(), L2Error> {
    lease.set(0, deadline_ns, 0).map_err(|source| L2Error::Map {
        name: MAP_LEASE,
        source,
    })
}

fn map_name(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => MAP_VIP4,
        IpAddr::V6(_) => MAP_VIP6,
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock the XDP program compares leases against.
pub fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
