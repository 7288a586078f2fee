//! Active-active Layer 2 in the bench.
//!
//! 1. Distribution (pure, from the agents' own slot table and the XDP program's requester
//!    hash): 10,000 client addresses over 3 and 5 nodes, the largest and smallest share, and
//!    the fraction of clients that move when one node leaves beside that node's own share
//!    (the ideal). Single-owner mode puts every client on one node and moves all of them when
//!    that node leaves.
//! 2. Failover in the lab: three agents, a fleet of client namespaces resolving a shared VIP
//!    and a single-owner VIP; the single-owner VIP's node is killed, and each client's
//!    neighbour-table change is timed from `ip monitor` (the kernel's event, not a poll). Both
//!    modes lose the same node in the same kill.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant, SystemTime},
};

use lb_agent::{election::slots::SlotTable, l2::maps::addr_key};
use lb_common::requester_slot;

use crate::{
    harness::fleet::{self, Fleet},
    harness::group::{Group, nodes_yaml},
    harness::lab::Lab,
};

/// Synthetic clients for the distribution figures.
pub const CLIENTS: u32 = 10_000;
/// Client namespaces in the failover lab.
pub const FLEET: usize = 30;
/// Kills per failover run.
pub const ROUNDS: usize = 3;

const SHARED: &str = "10.210.0.200";
const SINGLE: &str = "10.210.0.201";

/// How clients spread over `nodes` nodes.
#[derive(Clone, Copy, Debug)]
pub struct Distribution {
    pub nodes: usize,
    pub max_share: f64,
    pub min_share: f64,
    /// Clients that changed node when the first node left.
    pub moved: f64,
    /// The share the leaving node held: what an ideal table moves.
    pub leaver_share: f64,
}

/// The spread of [`CLIENTS`] addresses over `n` nodes.
pub fn distribution(n: usize) -> Distribution {
    let names: Vec<String> = (1..=n).map(|i| format!("node-{i}")).collect();
    let all = SlotTable::new(&names);
    let without = SlotTable::new(&names[1..]);
    let vip = addr_key(IpAddr::from([192, 0, 2, 10])).addr;
    let mut per: BTreeMap<&str, u32> = BTreeMap::new();
    let (mut moved, mut leaver) = (0u32, 0u32);
    for i in 0..CLIENTS {
        let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i));
        let slot = requester_slot(&vip, &addr_key(client).addr);
        let (before, after) = (all.owner(slot), without.owner(slot));
        if let Some(b) = before {
            *per.entry(b).or_default() += 1;
        }
        moved += u32::from(before != after);
        leaver += u32::from(before == Some(names[0].as_str()));
    }
    let share = |x: u32| f64::from(x) / f64::from(CLIENTS);
    Distribution {
        nodes: n,
        max_share: share(per.values().copied().max().unwrap_or(0)),
        min_share: share(per.values().copied().min().unwrap_or(0)),
        moved: share(moved),
        leaver_share: share(leaver),
    }
}

/// Times from the kill until each moved client's neighbour entry held a survivor's MAC.
#[derive(Debug, Default)]
pub struct FailoverTimes {
    pub shared: Vec<Duration>,
    pub single: Vec<Duration>,
}

fn config(lab: &Lab) -> String {
    format!(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: bench, namespace: metallb-system}}\n\
         spec:\n  addresses: [10.210.0.200-10.210.0.201]\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {{name: l2, namespace: metallb-system}}\n---\n\
         apiVersion: v1\nkind: Service\n\
         metadata: {{name: shared, namespace: default, annotations: {{metallb.io/loadBalancerIPs: {SHARED}, xdplb.io/l2-mode: active-active}}}}\n\
         spec: {{type: LoadBalancer, ports: [{{port: 80}}]}}\n---\n\
         apiVersion: v1\nkind: Service\n\
         metadata: {{name: single, namespace: default, annotations: {{metallb.io/loadBalancerIPs: {SINGLE}}}}}\n\
         spec: {{type: LoadBalancer, ports: [{{port: 80}}]}}\n{}",
        nodes_yaml(lab)
    )
}

/// [`ROUNDS`] kills of the single-owner VIP's node, the agent restarted after each.
pub fn failover() -> Result<FailoverTimes, String> {
    let mut g = Group::start_config("sb", &[], config);
    let fleet = Fleet::attach(&g.lab, "sb", FLEET);
    let mut times = FailoverTimes::default();
    for round in 0..ROUNDS {
        // Every client resolves both VIPs (after a restart, until the node answers again).
        let deadline = Instant::now() + Duration::from_secs(15);
        let expected = fleet.owners(SHARED, &g.names);
        let victim_name = crate::harness::group::expected(&g.dir, &g.names)
            .remove(SINGLE)
            .ok_or("the single-owner VIP has no owner")?;
        for (i, want) in expected.iter().enumerate() {
            loop {
                let shared = fleet
                    .resolve(i, SHARED)
                    .and_then(|m| g.macs.get(&m).cloned());
                let single = fleet
                    .resolve(i, SINGLE)
                    .and_then(|m| g.macs.get(&m).cloned());
                if shared.as_ref() == Some(want) && single.as_ref() == Some(&victim_name) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "round {round}: client {i} resolved {shared:?} / {single:?}, want {want} / {victim_name}\n{}",
                        g.logs()
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let victim = g
            .names
            .iter()
            .position(|n| *n == victim_name)
            .ok_or("unknown owner")?;
        let survivor_macs: Vec<String> = g
            .macs
            .iter()
            .filter(|(_, n)| **n != victim_name)
            .map(|(m, _)| m.clone())
            .collect();
        // Linux takes an unsolicited update only a `locktime` (1 s) after the last one.
        std::thread::sleep(Duration::from_millis(1100));
        let everyone: Vec<usize> = (0..FLEET).collect();
        let watch = fleet.watch(&everyone);
        let killed_at = SystemTime::now();
        let started = Instant::now();
        g.kill(victim);
        let moving: Vec<usize> = (0..FLEET).filter(|i| expected[*i] == victim_name).collect();
        while started.elapsed() < Duration::from_secs(5)
            && (0..FLEET).any(|i| {
                let moved = |vip| {
                    fleet
                        .neighbor(i, vip)
                        .is_some_and(|m| survivor_macs.contains(&m))
                };
                !moved(SINGLE) || (moving.contains(&i) && !moved(SHARED))
            })
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        for (i, lines) in watch.stop() {
            let first = |vip| {
                fleet::changes(&lines, vip, killed_at)
                    .into_iter()
                    .find(|(_, m)| survivor_macs.contains(m))
                    .map(|(t, _)| t)
            };
            match first(SINGLE) {
                Some(t) => times.single.push(t),
                None => {
                    return Err(format!(
                        "round {round}: client {i} never left {victim_name} for the single-owner VIP; survivors {survivor_macs:?}, its entry now {:?}; monitor: {lines:?}",
                        fleet.neighbor(i, SINGLE)
                    ));
                }
            }
            if moving.contains(&i) {
                match first(SHARED) {
                    Some(t) => times.shared.push(t),
                    None => {
                        return Err(format!(
                            "round {round}: client {i} never left {victim_name} for the shared VIP"
                        ));
                    }
                }
            }
        }
        // Past the clients' locktime again, so the returning node's notices are taken.
        std::thread::sleep(Duration::from_millis(1200));
        g.start_agent(victim, &[]);
    }
    Ok(times)
}

/// Everything the bench reports for active-active.
pub struct SpreadFigures {
    pub distributions: Vec<Distribution>,
    pub failover: FailoverTimes,
}

/// Measures the distributions for 3 and 5 nodes and the lab failover.
pub fn run() -> Result<SpreadFigures, String> {
    Ok(SpreadFigures {
        distributions: vec![distribution(3), distribution(5)],
        failover: failover()?,
    })
}

impl SpreadFigures {
    /// The bench table's rows.
    pub fn print(&mut self) {
        let pct = |x: f64| x * 100.0;
        for d in &self.distributions {
            println!(
                "| active-active: {} clients over {} nodes, largest / smallest share | {:.1}% / {:.1}% | single owner 100% / 0% | — | fair {:.1}% |",
                CLIENTS,
                d.nodes,
                pct(d.max_share),
                pct(d.min_share),
                100.0 / d.nodes as f64
            );
            println!(
                "| active-active: {} nodes, clients moved when one node leaves | {:.1}% | that node's share {:.1}% (ideal); single owner 100% | {:.2}× ideal | = ideal |",
                d.nodes,
                pct(d.moved),
                pct(d.leaver_share),
                if d.leaver_share > 0.0 {
                    d.moved / d.leaver_share
                } else {
                    0.0
                }
            );
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let f = &mut self.failover;
        let (n_shared, n_single) = (f.shared.len(), f.single.len());
        let (s50, s99) = (quantile(&mut f.shared, 0.5), quantile(&mut f.shared, 0.99));
        let (o50, o99) = (quantile(&mut f.single, 0.5), quantile(&mut f.single, 0.99));
        println!(
            "| active-active failover, moved clients' neighbour entries (ms, p50 / p99; {n_shared} moves over {ROUNDS} kills) | {:.0} / {:.0} | single owner, same kills ({n_single} moves) {:.0} / {:.0} | {:.2}× | p99 < 200 |",
            ms(s50),
            ms(s99),
            ms(o50),
            ms(o99),
            if o99 > Duration::ZERO {
                s99.as_secs_f64() / o99.as_secs_f64()
            } else {
                0.0
            }
        );
    }
}

/// The `q` quantile (0..=1) of `xs`, sorted in place.
pub fn quantile(xs: &mut [Duration], q: f64) -> Duration {
    xs.sort();
    if xs.is_empty() {
        return Duration::ZERO;
    }
    let i = ((xs.len() - 1) as f64 * q).round() as usize;
    xs[i.min(xs.len() - 1)]
}
