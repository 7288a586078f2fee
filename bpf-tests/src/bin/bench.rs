//! `cargo xtask bench`: one table, every figure beside a comparison measured in the same run.
//! `xdplb-bench SECTION...` measures and prints only those sections' rows.
//!
//! - `cost`, `flood`: the XDP program against `xdp_pass` and against the AF_PACKET responder
//!   (`bpf_tests::bench::xdp`).
//! - `ipam`: the allocator against MetalLB's linear search (`bpf_tests::bench::ipam`).
//! - `controller`: the controller at scale (`bpf_tests::bench::controller`).
//! - `failover`: SIGKILL of the owner, against keepalived (`bpf_tests::bench::failover`).
//! - `membership`: heartbeats per node and detection at 30, 100 and 1,000 nodes on simulated
//!   time, against the full mesh (`bpf_tests::bench::membership`).
//! - `groups`: real agents in the lab, 3, 30 and 100 of them: heartbeats received per agent
//!   per second and detection (`bpf_tests::bench::group_size`).
//! - `load`: ownership changes while every CPU is saturated and while the segment carries a
//!   bulk transfer, against the same timers without the real-time membership thread.
//! - `spread`: active-active Layer 2 against single-owner (`bpf_tests::bench::spread`).
//! - `agent`: the agent owning 10,000 VIPs against owning one (`bpf_tests::bench::agent`).
//! - `bgp`: FRR learning routes from xdplb and from GoBGP (`bpf_tests::bench::bgp`).
use std::{str::FromStr, time::Duration};

use anyhow::{Result, bail};

/// One section of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Cost,
    Flood,
    Ipam,
    Controller,
    Failover,
    Load,
    Membership,
    Groups,
    Spread,
    Agent,
    Bgp,
}

impl Section {
    /// In the order the table prints them.
    const ALL: [Section; 11] = [
        Section::Cost,
        Section::Flood,
        Section::Ipam,
        Section::Controller,
        Section::Failover,
        Section::Load,
        Section::Membership,
        Section::Groups,
        Section::Spread,
        Section::Agent,
        Section::Bgp,
    ];
}

impl FromStr for Section {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "cost" => Section::Cost,
            "flood" => Section::Flood,
            "ipam" => Section::Ipam,
            "controller" => Section::Controller,
            "failover" => Section::Failover,
            "load" => Section::Load,
            "membership" => Section::Membership,
            "groups" => Section::Groups,
            "spread" => Section::Spread,
            "agent" => Section::Agent,
            "bgp" => Section::Bgp,
            other => {
                return Err(format!(
                    "no section {other:?} (cost, flood, ipam, controller, failover, load, membership, groups, spread, agent, bgp)"
                ));
            }
        })
    }
}

/// What was measured, each section's figures if it ran.
#[derive(Default)]
struct Table {
    cost: Option<bpf_tests::bench::xdp::CostFigures>,
    flood: Option<bpf_tests::bench::xdp::FloodFigures>,
    ipam: Option<bpf_tests::bench::ipam::IpamTimes>,
    controller: Option<bpf_tests::bench::controller::ScaleFigures>,
    failover: Option<Failover>,
    load: Option<Steadiness>,
    membership: Option<Vec<Result<bpf_tests::bench::membership::Scale, String>>>,
    groups: Option<Vec<Result<bpf_tests::bench::group_size::GroupFigures, String>>>,
    spread: Option<bpf_tests::bench::spread::SpreadFigures>,
    agent: Option<AgentScale>,
    bgp: Option<bpf_tests::bench::bgp::BgpFigures>,
}

fn main() -> Result<()> {
    if !bpf_tests::privileged("xdplb-bench") {
        bail!("the bench needs root and a bpf filesystem");
    }
    let asked: Vec<Section> = std::env::args()
        .skip(1)
        .map(|a| a.parse().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    let whole = asked.is_empty();
    let sections: Vec<Section> = if whole { Section::ALL.to_vec() } else { asked };
    let mut t = measure(&sections)?;
    if whole {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        println!();
        println!(
            "xdplb bench — kernel {}, {} CPUs",
            kernel.trim(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!();
        println!("| measure | xdplb | comparison (same run) | ratio | target |");
        println!("|---|---|---|---|---|");
    }
    for section in Section::ALL {
        match section {
            Section::Cost => t.cost.iter().for_each(|f| f.print()),
            Section::Flood => t.flood.iter().for_each(|f| f.print()),
            Section::Ipam => t.ipam.iter().for_each(print_ipam),
            Section::Controller => t.controller.iter().for_each(print_scale),
            Section::Failover => t.failover.iter().for_each(Failover::print),
            Section::Load => t.load.iter().for_each(Steadiness::print),
            Section::Membership => t.membership.iter().for_each(|m| print_membership(m)),
            Section::Groups => t.groups.iter().for_each(|g| print_groups(g)),
            Section::Spread => t.spread.iter_mut().for_each(|f| f.print()),
            Section::Agent => t.agent.iter().for_each(AgentScale::print),
            Section::Bgp => t.bgp.iter().for_each(|f| f.print()),
        }
    }
    if whole {
        println!();
        println!(
            "BPF_PROG_TEST_RUN duration is what the kernel reports for one run (bpftool prog run \
             prints the same); bpf_stats counts the program alone, whose floor is mostly the clock \
             reads around it. The IPAM linear walk is MetalLB's search (every address from the start \
             of each pool against the set in use), on the same requests, checked to give the same \
             plan. Responder CPU = agent process CPU time + the XDP program's run time (bpf_stats). \
             The flood comes from one AF_PACKET sender thread in the client namespace, so replies/s is \
             capped by the sender; the share answered and the CPU per reply are the comparison."
        );
    }
    Ok(())
}

/// Runs the sections asked for, and only those, in the order the whole bench always measured
/// them (the slow lab sections first, the program cost and the flood on a quiet machine last).
fn measure(sections: &[Section]) -> Result<Table> {
    let on = |s| sections.contains(&s);
    let msg = anyhow::Error::msg;
    let mut t = Table::default();
    if on(Section::Spread) {
        eprintln!(
            "active-active: {} clients over 3 and 5 nodes; {} kills with {} client namespaces...",
            bpf_tests::bench::spread::CLIENTS,
            bpf_tests::bench::spread::ROUNDS,
            bpf_tests::bench::spread::FLEET
        );
        t.spread = Some(bpf_tests::bench::spread::run().map_err(msg)?);
    }
    if on(Section::Bgp) {
        eprintln!(
            "BGP: FRR learning {} routes, from xdplb then from gobgpd...",
            bpf_tests::bench::bgp::ROUTES
        );
        t.bgp = Some(bpf_tests::bench::bgp::run().map_err(msg)?);
    }
    if on(Section::Agent) {
        eprintln!(
            "the agent at scale: {} VIPs owned, then 1...",
            bpf_tests::bench::agent::VIPS
        );
        t.agent = Some(AgentScale::measure()?);
    }
    if on(Section::Controller) {
        eprintln!(
            "the controller at scale: {} Services over {} pools...",
            bpf_tests::bench::controller::SERVICES,
            bpf_tests::bench::controller::POOLS
        );
        t.controller = Some(bpf_tests::bench::controller::run().map_err(msg)?);
    }
    if on(Section::Failover) {
        eprintln!(
            "failover: {FAILOVER_RUNS} SIGKILLs of the owner each, xdplb then keepalived (advert 10 ms and 1 s)..."
        );
        t.failover = Some(Failover::measure()?);
    }
    if on(Section::Membership) {
        eprintln!(
            "membership: {:?} nodes on simulated time, crashes one at a time...",
            bpf_tests::bench::membership::SIZES
        );
        t.membership = Some(bpf_tests::bench::membership::run());
    }
    if on(Section::Groups) {
        eprintln!("groups: 3, 30 and 100 real agents in the lab, each a kill...");
        t.groups = Some(
            GROUPS
                .iter()
                .map(|&(n, i, f)| bpf_tests::bench::group_size::measure(n, i, f, &[]))
                .collect(),
        );
    }
    if on(Section::Load) {
        eprintln!(
            "load: ownership changes during {} s of saturated CPUs, then of a loaded segment, twice each...",
            LOAD_SPAN.as_secs()
        );
        t.load = Some(Steadiness::measure());
    }
    if on(Section::Cost) {
        eprintln!(
            "measuring program cost ({} runs per frame)...",
            bpf_tests::bench::xdp::RUNS
        );
        t.cost = Some(bpf_tests::bench::xdp::cost().map_err(msg)?);
    }
    if on(Section::Ipam) {
        eprintln!(
            "planning {} Services, ours and MetalLB's linear walk...",
            bpf_tests::bench::ipam::SERVICES
        );
        t.ipam = Some(bpf_tests::bench::ipam::run().map_err(msg)?);
    }
    if on(Section::Flood) {
        eprintln!(
            "flooding with ARP requests, XDP then AF_PACKET ({:?} each)...",
            bpf_tests::bench::xdp::FLOOD
        );
        t.flood = Some(bpf_tests::bench::xdp::floods().map_err(msg)?);
    }
    Ok(t)
}

/// The IPAM rows.
fn print_ipam(ipam: &bpf_tests::bench::ipam::IpamTimes) {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| IPAM: plan {} Services over {} pools (ms) | {:.1} | linear walk {:.1} | {:.0}× faster | — |",
        bpf_tests::bench::ipam::SERVICES,
        bpf_tests::bench::ipam::POOLS,
        ms(ipam.plan.0),
        ms(ipam.plan.1),
        ratio(ms(ipam.plan.1), ms(ipam.plan.0))
    );
    println!(
        "| IPAM: re-plan after the first pool is removed (ms; {} Services move) | {:.1} | linear walk {:.1} | {:.0}× faster | — |",
        ipam.moved,
        ms(ipam.replan.0),
        ms(ipam.replan.1),
        ratio(ms(ipam.replan.1), ms(ipam.replan.0))
    );
}

/// The agent owning 10,000 VIPs beside the same agent owning one.
struct AgentScale {
    many: bpf_tests::bench::agent::AgentFigures,
    one: bpf_tests::bench::agent::AgentFigures,
}

impl AgentScale {
    fn measure() -> Result<Self> {
        use bpf_tests::bench::agent::{VIPS, measure};
        Ok(Self {
            many: measure(VIPS).map_err(anyhow::Error::msg)?,
            one: measure(1).map_err(anyhow::Error::msg)?,
        })
    }

    fn print(&self) {
        let (m, o) = (&self.many, &self.one);
        let mib = |kb: u64| kb as f64 / 1024.0;
        println!(
            "| agent: {} VIPs owned, start → all in the XDP map (ms) | {:.0} | {} VIP {:.0} | — | — |",
            m.vips,
            m.ready.as_secs_f64() * 1e3,
            o.vips,
            o.ready.as_secs_f64() * 1e3
        );
        println!(
            "| agent: {} VIPs owned, RSS (MiB) | {:.1} | {} VIP {:.1} | {:.1}× | < 30 MiB |",
            m.vips,
            mib(m.rss_kb),
            o.vips,
            mib(o.rss_kb),
            m.rss_kb as f64 / o.rss_kb.max(1) as f64
        );
        println!(
            "| agent: {} VIPs owned, CPU at rest (% of one CPU over {:?}) | {:.2} | {} VIP {:.2} | — | — |",
            m.vips,
            bpf_tests::bench::agent::WINDOW,
            m.cpu_share * 100.0,
            o.vips,
            o.cpu_share * 100.0
        );
    }
}

const FAILOVER_RUNS: usize = 20;

use bpf_tests::bench::failover::Samples;

/// Failover samples: xdplb with default settings, keepalived at its fastest and its default
/// advert interval.
struct Failover {
    xdplb: Samples,
    /// At the defaults before the membership thread: heartbeats every 50 ms, dead after 180 ms.
    xdplb_old: Samples,
    /// The owner's VIP link cut at the switch while its heartbeats go on.
    link_cut: Samples,
    /// MAC changes a client sees across the owner's death and return: non-revertive, and
    /// MetalLB's rule.
    mac_changes: Result<(usize, usize), String>,
    keepalived_fast: Result<Vec<Duration>, String>,
    keepalived_default: Result<Vec<Duration>, String>,
}

impl Failover {
    fn measure() -> Result<Self> {
        use bpf_tests::bench::failover::{keepalived, kill_and_return, link_cut, xdplb};
        let changes = |sticky| kill_and_return(sticky).map(|owners| owners.len().saturating_sub(1));
        Ok(Self {
            xdplb: xdplb(FAILOVER_RUNS, &[]).map_err(anyhow::Error::msg)?,
            xdplb_old: xdplb(
                FAILOVER_RUNS,
                &["--heartbeat-interval", "50ms", "--failure-timeout", "180ms"],
            )
            .map_err(anyhow::Error::msg)?,
            link_cut: link_cut(FAILOVER_RUNS).map_err(anyhow::Error::msg)?,
            mac_changes: changes(true).and_then(|n| Ok((n, changes(false)?))),
            keepalived_fast: keepalived(FAILOVER_RUNS, "0.01"),
            keepalived_default: keepalived(5, "1"),
        })
    }

    fn print(&self) {
        use bpf_tests::harness::prober::percentile;
        let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        let p = |s: &[Duration], q| ms(percentile(s, q));
        let (new, old, cut) = (
            &self.xdplb.times,
            &self.xdplb_old.times,
            &self.link_cut.times,
        );
        let other = |r: &Result<Vec<Duration>, String>, label: &str| match r {
            Ok(s) => format!(
                "keepalived {label}: p50 {:.0}, p99 {:.0} ({} runs)",
                p(s, 50),
                p(s, 99),
                s.len()
            ),
            Err(e) => format!("keepalived {label}: not measured ({e})"),
        };
        println!(
            "| L2 failover, SIGKILL of the owner → first reply from the new owner, client probing every 10 ms (ms) | p50 {:.0}, p99 {:.0} ({}; defaults: 10 ms heartbeats, 30 ms timeout) | {} | — | p99 < 50 ms, no slower than keepalived |",
            p(new, 50),
            p(new, 99),
            self.xdplb.runs(),
            other(&self.keepalived_fast, "VRRPv3 advert 10 ms (its fastest)")
        );
        println!(
            "| L2 failover, the same at the former defaults (ms) | p50 {:.0}, p99 {:.0} ({}; 50 ms heartbeats, 180 ms timeout) | defaults, above: p50 {:.0}, p99 {:.0} | — | — |",
            p(old, 50),
            p(old, 99),
            self.xdplb_old.runs(),
            p(new, 50),
            p(new, 99),
        );
        println!(
            "| L2 failover, the owner's VIP link cut at the switch while its heartbeats go on → first reply from the new owner (ms) | p50 {:.0}, p99 {:.0} ({}; defaults) | SIGKILL of the owner, above: p50 {:.0}, p99 {:.0} | — | p99 ≤ 300 ms |",
            p(cut, 50),
            p(cut, 99),
            self.link_cut.runs(),
            p(new, 50),
            p(new, 99),
        );
        match &self.mac_changes {
            Ok((sticky, revertive)) => println!(
                "| L2: MAC changes a client sees across the owner's SIGKILL and return | {sticky} (xdplb.io/l2-preempt: \"false\") | MetalLB's revertive rule, same run: {revertive} | — | 1 |"
            ),
            Err(e) => println!(
                "| L2: MAC changes a client sees across the owner's SIGKILL and return | not measured ({e}) | — | — | 1 |"
            ),
        }
        println!(
            "| L2 failover, the same, keepalived at its default | — | {} | — | — |",
            other(&self.keepalived_default, "advert 1 s")
        );
    }
}

/// How long each load runs.
const LOAD_SPAN: Duration = Duration::from_secs(60);

/// Ownership changes counted during one load, or why not.
type Changes = Result<u64, String>;

/// Ownership changes under load: every one is a false failover (nobody died).
struct Steadiness {
    /// (load, at the defaults, at the defaults without SCHED_FIFO).
    rows: Vec<(&'static str, Changes, Changes)>,
}

impl Steadiness {
    fn measure() -> Self {
        use bpf_tests::bench::failover::{Load, changes_under};
        let rows = [
            (
                Load::Cpu,
                "every CPU saturated (stress-ng, 8 workers per CPU)",
            ),
            (
                Load::Segment,
                "the segment loaded (iperf3 bulk TCP from the client to the owner)",
            ),
        ]
        .into_iter()
        .map(|(load, label)| {
            (
                label,
                changes_under(load, LOAD_SPAN, &[]),
                changes_under(load, LOAD_SPAN, &["--membership-priority", "0"]),
            )
        })
        .collect();
        Self { rows }
    }

    fn print(&self) {
        let show = |r: &Changes| match r {
            Ok(n) => n.to_string(),
            Err(e) => format!("not measured ({e})"),
        };
        for (label, defaults, plain) in &self.rows {
            println!(
                "| L2: ownership changes during {} s with {label} (none died: each is a false failover) | {} (defaults: 10 ms heartbeats, 30 ms timeout, membership thread SCHED_FIFO) | the same without SCHED_FIFO (--membership-priority 0): {} | — | 0 |",
                LOAD_SPAN.as_secs(),
                show(defaults),
                show(plain)
            );
        }
    }
}

/// Group sizes in the lab and their timers. Past 16 agents a ring (each hears its 3 monitors
/// and the 3 it monitors); a full mesh of 100 agents at 10 ms would be a million datagrams a
/// second. 100 agents run at 50 ms / 150 ms: every agent's traffic crosses one bridge on the
/// lab's 2 CPUs, and at 20 ms (30,000 heartbeats a second sent and as many received, each
/// signed and checked, plus 100 real-time threads) the 95th agent's main thread was starved
/// before it could start. One host of a real segment carries only its own 6 per interval.
const GROUPS: [(usize, Duration, Duration); 3] = [
    (3, Duration::from_millis(10), Duration::from_millis(30)),
    (30, Duration::from_millis(10), Duration::from_millis(30)),
    (100, Duration::from_millis(50), Duration::from_millis(150)),
];

fn print_groups(rows: &[Result<bpf_tests::bench::group_size::GroupFigures, String>]) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for row in rows {
        match row {
            Ok(g) => {
                let per_interval = 1.0 / g.interval.as_secs_f64();
                println!(
                    "| L2 membership in the lab, {} real agents ({}, heartbeats every {} ms): heartbeats received per agent per second; kill → each survivor drops it, mean / p99 (ms); views changed at rest (5 s, all agents) | {:.0}/s (the busiest, {}: {:.0}/s); {:.1} / {:.1} ms; {} at rest ({} datagrams dropped by full receive buffers){} | full mesh: (n − 1) × {:.0} = {:.0}/s | {:.2}× | flat in the group's size |",
                    g.nodes,
                    if g.ring { "ring" } else { "full mesh" },
                    g.interval.as_millis(),
                    g.received,
                    g.busiest.as_ref().map_or("none", |(n, _)| n.as_str()),
                    g.busiest.as_ref().map_or(0.0, |(_, r)| *r),
                    ms(g.detection_mean),
                    ms(g.detection_p99),
                    g.changes_at_rest,
                    g.drops_at_rest,
                    g.second_try
                        .as_ref()
                        .map(|e| format!(" (at a second try; the first: {e})"))
                        .unwrap_or_default(),
                    per_interval,
                    (g.nodes - 1) as f64 * per_interval,
                    g.received / ((g.nodes - 1) as f64 * per_interval)
                );
            }
            Err(e) => println!("| L2 membership in the lab | not measured ({e}) | — | — | — |"),
        }
    }
}

fn print_membership(rows: &[Result<bpf_tests::bench::membership::Scale, String>]) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for row in rows {
        match row {
            Ok(s) => println!(
                "| L2 membership, {} nodes on simulated time (10 ms heartbeats, 30 ms timeout): heartbeats sent per node per second; crash → every node holds it dead, p50 / p99 (ms) | {:.0}/s; {:.1} / {:.1} ms ({} crashes; {:.0} other datagrams per crash and return, group-wide) | full mesh: {:.0}/s per node, detection ≤ 30 ms | {:.3}× | flat in the group's size |",
                s.nodes,
                s.heartbeats,
                ms(s.detection.0),
                ms(s.detection.1),
                s.failures,
                s.per_failure,
                s.mesh,
                s.heartbeats / s.mesh
            ),
            Err(e) => {
                println!("| L2 membership on simulated time | not measured ({e}) | — | — | — |")
            }
        }
    }
}

/// The controller rows (also printed alone by `xdplb-bench controller`).
fn print_scale(f: &bpf_tests::bench::controller::ScaleFigures) {
    use bpf_tests::bench::controller::{POOLS, SERVICES};
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
    println!(
        "| controller: plan {SERVICES} Services over {POOLS} pools, v4/v6/dual (ms; {} pending) | {:.1} | parsing the YAML {:.1} | {:.2}× | < 200 ms |",
        f.pending,
        ms(f.plan),
        ms(f.parse),
        ratio(ms(f.plan), ms(f.parse))
    );
    println!(
        "| controller: validate the {POOLS} pools (ms) | {:.1} | parsing the YAML {:.1} | {:.2}× | — |",
        ms(f.validate),
        ms(f.parse),
        ratio(ms(f.validate), ms(f.parse))
    );
    println!(
        "| controller: one Service added, on the allocator holding the plan (ms) | {:.3} | the whole pass a controller runs for it today (validate + plan) {:.1} | — | < 1 ms |",
        ms(f.add_one),
        ms(f.add_one_full)
    );
    println!(
        "| controller: one pool edited, validate + re-plan (ms; {} Services move) | {:.1} | first plan {:.1} | {:.2}× | < 50 ms |",
        f.moved,
        ms(f.pool_edit),
        ms(f.plan),
        ratio(ms(f.pool_edit), ms(f.plan))
    );
    match f.rss_kb {
        Some((full, none)) => println!(
            "| controller RSS, `run --config-dir` with {SERVICES} Services (MiB) | {:.1} | same pools, no Services {:.1} | +{:.1} MiB | — |",
            full as f64 / 1024.0,
            none as f64 / 1024.0,
            full.saturating_sub(none) as f64 / 1024.0
        ),
        None => println!("| controller RSS | not measured | — | — | — |"),
    }
}
