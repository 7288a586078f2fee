//! IPAM figures for the bench: planning many Services with lb-controller's allocator, beside
//! MetalLB's way of finding a free address (walk each pool from its first address, checking
//! every address against the set in use), run on the same pools and requests.
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use lb_controller::{
    config::address::AddrRange,
    ipam::allocator::{Allocator, PoolDef, Request},
};

pub const SERVICES: usize = 10_000;
pub const POOLS: u32 = 50;

/// `POOLS` pools of a /20 each (4096 addresses), named so they fill in order.
fn pools(skip_first: bool) -> Vec<PoolDef> {
    (u32::from(skip_first)..POOLS)
        .map(|i| {
            let base = u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i * 4096;
            PoolDef {
                name: format!("pool-{i:02}"),
                ranges: vec![AddrRange {
                    start: IpAddr::V4(Ipv4Addr::from(base)),
                    end: IpAddr::V4(Ipv4Addr::from(base + 4095)),
                }],
                auto_assign: true,
                avoid_buggy_ips: false,
                restriction: None,
            }
        })
        .collect()
}

fn request(i: usize, current: Vec<IpAddr>) -> Request {
    Request {
        current,
        ..Request::ipv4("default", &format!("svc-{i}"))
    }
}

/// Plans every Service; returns the time and each Service's addresses.
fn ours(pools: Vec<PoolDef>, current: &[Vec<IpAddr>]) -> (Duration, Vec<Vec<IpAddr>>) {
    let start = Instant::now();
    let mut allocator = Allocator::new(pools);
    let requests: Vec<Request> = (0..SERVICES)
        .map(|i| request(i, current.get(i).cloned().unwrap_or_default()))
        .collect();
    for r in &requests {
        allocator.keep(r);
    }
    let got = requests
        .iter()
        .map(|r| allocator.assign(r).map(|a| a.ips).unwrap_or_default())
        .collect();
    (start.elapsed(), got)
}

/// MetalLB's search: every Service first keeps its address if still in a pool, then the others
/// walk the pools in order from their first address until one is not in use.
fn linear(pools: &[PoolDef], current: &[Vec<IpAddr>]) -> (Duration, Vec<Vec<IpAddr>>) {
    let start = Instant::now();
    let mut used: HashSet<IpAddr> = HashSet::new();
    let in_pool = |ip: IpAddr| {
        pools
            .iter()
            .any(|p| p.ranges.iter().any(|r| r.contains(ip)))
    };
    let kept: Vec<Option<IpAddr>> = (0..SERVICES)
        .map(|i| {
            let ip = current.get(i).and_then(|c| c.first()).copied()?;
            (in_pool(ip) && used.insert(ip)).then_some(ip)
        })
        .collect();
    let mut got = Vec::with_capacity(SERVICES);
    for slot in kept {
        if let Some(ip) = slot {
            got.push(vec![ip]);
            continue;
        }
        let mut found = None;
        'pools: for pool in pools {
            for range in &pool.ranges {
                let (IpAddr::V4(s), IpAddr::V4(e)) = (range.start, range.end) else {
                    continue;
                };
                for n in u32::from(s)..=u32::from(e) {
                    let ip = IpAddr::V4(Ipv4Addr::from(n));
                    if !used.contains(&ip) {
                        found = Some(ip);
                        break 'pools;
                    }
                }
            }
        }
        if let Some(ip) = found {
            used.insert(ip);
        }
        got.push(found.into_iter().collect());
    }
    (start.elapsed(), got)
}

/// Times for (first plan, re-plan after the first pool is removed), ours and linear.
pub struct IpamTimes {
    pub plan: (Duration, Duration),
    pub replan: (Duration, Duration),
    pub moved: usize,
}

pub fn run() -> Result<IpamTimes, String> {
    let (ours_plan, first) = ours(pools(false), &[]);
    let (linear_plan, first_linear) = linear(&pools(false), &[]);
    if first != first_linear {
        return Err("the allocator and the linear walk disagree on the first plan".into());
    }
    let (ours_replan, second) = ours(pools(true), &first);
    let (linear_replan, second_linear) = linear(&pools(true), &first);
    if let Some(i) = (0..SERVICES).find(|i| second[*i] != second_linear[*i]) {
        return Err(format!(
            "the allocator and the linear walk disagree on the re-plan: Service {i} gets {:?} vs {:?}",
            second[i], second_linear[i]
        ));
    }
    let moved = first.iter().zip(&second).filter(|(a, b)| a != b).count();
    Ok(IpamTimes {
        plan: (ours_plan, linear_plan),
        replan: (ours_replan, linear_replan),
        moved,
    })
}
