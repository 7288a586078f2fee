//! The free space of one pool.
//!
//! Used addresses are kept as merged runs (`start -> end`, inclusive) in a `BTreeMap`, so the
//! first free address is found by jumping over whole runs: O(log n) per run crossed, whatever
//! the pool's size. Walking address by address from the start of the pool, as MetalLB does,
//! would make a /8 or a /64 pool cost millions of steps once it fills up.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::config::address::AddrRange;

/// The address after `addr`, if any (no wrap-around).
pub fn next(addr: IpAddr) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(a) => u32::from(a)
            .checked_add(1)
            .map(|n| Ipv4Addr::from(n).into()),
        IpAddr::V6(a) => u128::from(a)
            .checked_add(1)
            .map(|n| Ipv6Addr::from(n).into()),
    }
}

fn prev(addr: IpAddr) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(a) => u32::from(a)
            .checked_sub(1)
            .map(|n| Ipv4Addr::from(n).into()),
        IpAddr::V6(a) => u128::from(a)
            .checked_sub(1)
            .map(|n| Ipv6Addr::from(n).into()),
    }
}

/// MetalLB's "buggy" addresses: IPv4 ending in .0 or .255, which some old client stacks
/// mistake for network or broadcast addresses.
pub fn is_buggy(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V4(a) if matches!(a.octets()[3], 0 | 255))
}

/// One pool's ranges and which of their addresses are in use.
#[derive(Clone, Debug, Default)]
pub struct Space {
    ranges: Vec<AddrRange>,
    avoid_buggy: bool,
    used: BTreeMap<IpAddr, IpAddr>,
    /// Usable addresses and addresses in use, [IPv4, IPv6]: a full pool is skipped at once
    /// instead of walked (a Service may try every pool before the one with room).
    capacity: [u128; 2],
    taken: [u128; 2],
}

fn slot(addr: IpAddr) -> usize {
    usize::from(!addr.is_ipv4())
}

impl Space {
    /// A pool of `ranges` (in the order they are listed, which is the order they fill in).
    pub fn new(ranges: Vec<AddrRange>, avoid_buggy: bool) -> Self {
        let mut space = Self {
            ranges,
            avoid_buggy,
            used: BTreeMap::new(),
            capacity: [0; 2],
            taken: [0; 2],
        };
        space.capacity = [space.count_capacity(true), space.count_capacity(false)];
        space
    }

    pub fn ranges(&self) -> &[AddrRange] {
        &self.ranges
    }

    /// Whether `addr` belongs to the pool (and is not a buggy address the pool avoids).
    pub fn contains(&self, addr: IpAddr) -> bool {
        !(self.avoid_buggy && is_buggy(addr)) && self.ranges.iter().any(|r| r.contains(addr))
    }

    /// The run of used addresses containing `addr`, if any.
    fn run_at(&self, addr: IpAddr) -> Option<(IpAddr, IpAddr)> {
        self.used
            .range(..=addr)
            .next_back()
            .filter(|(_, end)| **end >= addr)
            .map(|(s, e)| (*s, *e))
    }

    pub fn is_used(&self, addr: IpAddr) -> bool {
        self.run_at(addr).is_some()
    }

    /// Marks `addr` used, merging it with the runs on either side.
    pub fn take(&mut self, addr: IpAddr) {
        if self.is_used(addr) {
            return;
        }
        if self.contains(addr) {
            self.taken[slot(addr)] = self.taken[slot(addr)].saturating_add(1);
        }
        let mut start = addr;
        let mut end = addr;
        if let Some(before) = prev(addr).and_then(|p| self.run_at(p)) {
            start = before.0;
            self.used.remove(&before.0);
        }
        if let Some(after) = next(addr)
            && let Some(run_end) = self.used.remove(&after)
        {
            end = run_end;
        }
        self.used.insert(start, end);
    }

    /// Marks `addr` free, splitting its run.
    pub fn release(&mut self, addr: IpAddr) {
        let Some((start, end)) = self.run_at(addr) else {
            return;
        };
        if self.contains(addr) {
            self.taken[slot(addr)] = self.taken[slot(addr)].saturating_sub(1);
        }
        self.used.remove(&start);
        if start < addr
            && let Some(p) = prev(addr)
        {
            self.used.insert(start, p);
        }
        if addr < end
            && let Some(n) = next(addr)
        {
            self.used.insert(n, end);
        }
    }

    /// The first free address of the given family, in range order then address order.
    pub fn first_free(&self, ipv4: bool) -> Option<IpAddr> {
        let family = usize::from(!ipv4);
        if self.taken[family] >= self.capacity[family] {
            return None;
        }
        for range in self.ranges.iter().filter(|r| r.start.is_ipv4() == ipv4) {
            let mut candidate = Some(range.start);
            while let Some(c) = candidate.filter(|c| *c <= range.end) {
                if let Some((_, run_end)) = self.run_at(c) {
                    candidate = next(run_end);
                } else if self.avoid_buggy && is_buggy(c) {
                    candidate = next(c);
                } else {
                    return Some(c);
                }
            }
        }
        None
    }

    /// How many addresses the pool can give out (buggy ones excluded when avoided).
    pub fn capacity(&self) -> u128 {
        // Sums saturate: `::/0` alone is 2^128 addresses, one more than u128 holds.
        self.capacity_of(true)
            .saturating_add(self.capacity_of(false))
    }

    /// How many addresses are in use.
    pub fn in_use(&self) -> u128 {
        self.in_use_of(true).saturating_add(self.in_use_of(false))
    }

    /// [`Space::capacity`] for one family.
    pub fn capacity_of(&self, ipv4: bool) -> u128 {
        self.capacity[usize::from(!ipv4)]
    }

    fn count_capacity(&self, ipv4: bool) -> u128 {
        self.ranges
            .iter()
            .filter(|r| r.start.is_ipv4() == ipv4)
            .map(|r| {
                let all = width(r.start, r.end);
                if self.avoid_buggy {
                    all.saturating_sub(buggy_in(r))
                } else {
                    all
                }
            })
            .fold(0, u128::saturating_add)
    }

    /// [`Space::in_use`] for one family (a run never spans both).
    pub fn in_use_of(&self, ipv4: bool) -> u128 {
        self.used
            .iter()
            .filter(|(s, _)| s.is_ipv4() == ipv4)
            .map(|(s, e)| width(*s, *e))
            .fold(0, u128::saturating_add)
    }
}

/// IPv4 addresses ending in .0 or .255 within `r`.
fn buggy_in(r: &AddrRange) -> u128 {
    let (IpAddr::V4(s), IpAddr::V4(e)) = (r.start, r.end) else {
        return 0;
    };
    let (s, e) = (u128::from(u32::from(s)), u128::from(u32::from(e)));
    // Addresses x <= n with x % 256 == k.
    let upto = |n: u128, k: u128| if n < k { 0 } else { (n - k) / 256 + 1 };
    let between = |k: u128| upto(e, k) - if s == 0 { 0 } else { upto(s - 1, k) };
    between(0) + between(255)
}

fn width(start: IpAddr, end: IpAddr) -> u128 {
    match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => u128::from(u32::from(e).saturating_sub(u32::from(s))) + 1,
        (IpAddr::V6(s), IpAddr::V6(e)) => u128::from(e)
            .saturating_sub(u128::from(s))
            .saturating_add(1),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::address::parse;

    fn space(entries: &[&str], avoid_buggy: bool) -> Space {
        Space::new(
            entries
                .iter()
                .map(|e| parse(e).expect("test range"))
                .collect(),
            avoid_buggy,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn fills_ranges_in_listed_order_skipping_used_runs() {
        let mut s = space(&["10.0.1.0/30", "10.0.0.8-10.0.0.9"], false);
        for a in ["10.0.1.0", "10.0.1.1", "10.0.1.2", "10.0.1.3"] {
            assert_eq!(s.first_free(true), Some(ip(a)));
            s.take(ip(a));
        }
        assert_eq!(s.first_free(true), Some(ip("10.0.0.8")));
        s.release(ip("10.0.1.1"));
        assert_eq!(s.first_free(true), Some(ip("10.0.1.1")));
        assert_eq!(s.first_free(false), None, "no IPv6 range");
    }

    #[test]
    fn capacity_leaves_out_avoided_addresses() {
        assert_eq!(space(&["10.0.0.0/24", "fd00::/120"], false).capacity(), 512);
        let mut dual = space(&["10.0.0.0/24", "fd00::/126"], false);
        assert_eq!((dual.capacity_of(true), dual.capacity_of(false)), (256, 4));
        dual.take("fd00::1".parse().unwrap_or_else(|e| panic!("{e}")));
        dual.take("10.0.0.7".parse().unwrap_or_else(|e| panic!("{e}")));
        dual.take("10.0.0.8".parse().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!((dual.in_use_of(true), dual.in_use_of(false)), (2, 1));
        assert_eq!(space(&["10.0.0.0/23"], true).capacity(), 512 - 4);
        assert_eq!(space(&["10.0.0.1-10.0.0.254"], true).capacity(), 254);
    }

    #[test]
    fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
        let mut s = space(&["10.0.0.254-10.0.1.1"], true);
        assert_eq!(s.first_free(true), Some(ip("10.0.0.254")));
        s.take(ip("10.0.0.254"));
        assert_eq!(s.first_free(true), Some(ip("10.0.1.1")));
        assert!(!s.contains(ip("10.0.1.0")));
    }

    #[test]
    fn huge_pools_answer_from_runs_not_addresses() {
        // A /64 with 10,000 addresses taken from its start: one run, one jump.
        let mut s = space(&["fd00::/64"], false);
        let start = u128::from("fd00::".parse::<Ipv6Addr>().expect("v6"));
        for i in 0..10_000u128 {
            s.take(IpAddr::V6(Ipv6Addr::from(start + i)));
        }
        assert_eq!(s.used.len(), 1, "consecutive addresses merge into one run");
        assert_eq!(s.in_use(), 10_000);
        assert_eq!(
            s.first_free(false),
            Some(IpAddr::V6(Ipv6Addr::from(start + 10_000)))
        );
        let mut full = space(&["10.0.0.0/8"], false);
        full.take(ip("10.0.0.0"));
        assert_eq!(full.first_free(true), Some(ip("10.0.0.1")));
    }

    #[test]
    fn the_whole_ipv6_space_neither_overflows_nor_looks_full() {
        // Two halves make 2^128 addresses: summed plainly, that panicked in debug builds and
        // wrapped to an empty pool in release ones.
        let halves = space(&["::/1", "8000::/1"], false);
        assert_eq!(halves.capacity_of(false), u128::MAX);
        assert_eq!(halves.first_free(false), Some(ip("::")));
        let mut all = space(&["::/0", "10.0.0.0/24"], true);
        assert_eq!(all.capacity(), u128::MAX);
        all.take(ip("::"));
        all.take(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert_eq!(all.in_use_of(false), 2);
        assert_eq!(all.first_free(false), Some(ip("::1")));
    }

    /// Random takes and releases on small pools, checked against a naive model that walks
    /// every address.
    #[test]
    fn agrees_with_a_linear_scan_under_random_operations() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % u64::from(n)) as u32
        };
        for round in 0..200 {
            let avoid = round % 2 == 0;
            let mut s = space(&["10.9.0.250-10.9.1.10", "10.9.3.0/29"], avoid);
            let all: Vec<IpAddr> = s
                .ranges()
                .iter()
                .flat_map(|r| {
                    let (IpAddr::V4(a), IpAddr::V4(b)) = (r.start, r.end) else {
                        return Vec::new();
                    };
                    (u32::from(a)..=u32::from(b))
                        .map(|n| IpAddr::V4(Ipv4Addr::from(n)))
                        .collect()
                })
                .collect();
            let mut model = std::collections::BTreeSet::new();
            for _ in 0..60 {
                let a = all[rand(all.len() as u32) as usize];
                if rand(3) == 0 {
                    s.release(a);
                    model.remove(&a);
                } else {
                    s.take(a);
                    model.insert(a);
                }
                let naive = all
                    .iter()
                    .find(|a| !(model.contains(*a) || avoid && is_buggy(**a)))
                    .copied();
                assert_eq!(s.first_free(true), naive, "round {round}");
                assert_eq!(s.in_use(), model.len() as u128);
                for a in &all {
                    assert_eq!(s.is_used(*a), model.contains(a));
                }
            }
        }
    }
}
