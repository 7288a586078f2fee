//! What one ARP or NDP reply costs in the XDP program, and what a flood of requests costs the
//! node: the rows `xdplb-bench cost` and `xdplb-bench flood` print.
//!
//! 1. Cost per reply (ARP, NDP) vs the trivial `xdp_pass` program: each frame run through
//!    `BPF_PROG_TEST_RUN` one at a time (so every run sees the original request; with `repeat`
//!    the buffer is reused and later runs would see the reply), timed two ways: the `duration`
//!    the kernel reports for the run, and the kernel's per-program statistics
//!    (`BPF_ENABLE_STATS`), which count the program alone.
//! 2. An ARP request flood on a veth pair for a fixed time, answered by XDP (native) and then by
//!    the AF_PACKET fallback: replies the client received per second, and replies per CPU-second
//!    of the responder (agent process CPU time plus the XDP program's own run time).
use std::{
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use lb_agent::l2::{
    afpacket::PacketSocket,
    datapath::Datapath,
    iface::Interface,
    maps::{VipEntry, VipMaps},
};
use lb_common::{PROG_XDP_L2, PROG_XDP_PASS};

use crate::{
    PinDir, datapath::frames, datapath::testrun, harness::agent::Agent, harness::netns::Link,
};

pub const RUNS: u32 = 200_000;
const BATCHES: u32 = 20;
pub const FLOOD: Duration = Duration::from_secs(3);

/// The program-cost rows: single runs, and live frames really transmitted.
pub struct CostFigures {
    cost: Cost,
    live: (f64, f64),
}

/// Measures the program cost, with the kernel's run-time statistics on meanwhile.
pub fn cost() -> Result<CostFigures, String> {
    let measured = || -> Result<CostFigures> {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("BPF_ENABLE_STATS (run-time statistics)")?;
        Ok(CostFigures {
            cost: program_cost()?,
            live: live_cost()?,
        })
    };
    measured().map_err(|e| format!("{e:#}"))
}

impl CostFigures {
    pub fn print(&self) {
        print_cost(&self.cost, self.live);
    }
}

/// The flood rows: XDP, then the AF_PACKET responder.
pub struct FloodFigures {
    xdp: Flood,
    afp: Flood,
}

/// Floods a veth pair with ARP requests, answered by XDP and then by AF_PACKET, with the
/// kernel's run-time statistics on (the XDP program's CPU time is the responder's).
pub fn floods() -> Result<FloodFigures, String> {
    let measured = || -> Result<FloodFigures> {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("BPF_ENABLE_STATS (run-time statistics)")?;
        Ok(FloodFigures {
            xdp: flood("xdp-native")?,
            afp: flood("afpacket")?,
        })
    };
    measured().map_err(|e| format!("{e:#}"))
}

impl FloodFigures {
    pub fn print(&self) {
        let (xdp, afp) = (&self.xdp, &self.afp);
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
        println!(
            "| ARP flood on veth, replies/s | XDP {:.0} | AF_PACKET {:.0} | {:.1}× | — |",
            xdp.replies_per_s(),
            afp.replies_per_s(),
            ratio(xdp.replies_per_s(), afp.replies_per_s())
        );
        println!(
            "| ARP flood, share of requests answered | XDP {:.1}% | AF_PACKET {:.1}% | — | — |",
            xdp.answered_pct(),
            afp.answered_pct()
        );
        println!(
            "| ARP flood, replies per responder CPU-second | XDP {:.0} | AF_PACKET {:.0} | {:.1}× | ≥ 10× |",
            xdp.per_cpu_s(),
            afp.per_cpu_s(),
            ratio(xdp.per_cpu_s(), afp.per_cpu_s())
        );
        println!(
            "| ARP flood, agent process CPU (s over {:?}) | XDP {:.3} | AF_PACKET {:.3} | — | — |",
            FLOOD, xdp.agent_cpu_s, afp.agent_cpu_s
        );
        println!(
            "| ARP flood, requests sent | XDP run {} | AF_PACKET run {} | — | — |",
            xdp.sent, afp.sent
        );
    }
}

/// The program-cost rows of the table.
fn print_cost(cost: &Cost, (live_single, live_shared): (f64, f64)) {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
    for (what, ns, target) in [("ARP", cost.arp, "≤ 2×"), ("NDP", cost.ndp, "—")] {
        println!(
            "| {what} reply, ns per frame, BPF_PROG_TEST_RUN duration | {:.1} | xdp_pass {:.1} | {:.2}× | {target} |",
            ns.test_run,
            cost.pass.test_run,
            ratio(ns.test_run, cost.pass.test_run)
        );
        println!(
            "| {what} reply, ns per frame, program alone (bpf_stats) | {:.1} | xdp_pass {:.1} | {:.2}× | — |",
            ns.program,
            cost.pass.program,
            ratio(ns.program, cost.pass.program)
        );
    }
    println!(
        "| ARP reply for an active-active VIP (slot lookup + requester record), ns per frame, program alone | {:.1} | single-owner ARP {:.1} | {:.2}× | — |",
        cost.shared_arp.program,
        cost.arp.program,
        ratio(cost.shared_arp.program, cost.arp.program)
    );
    println!(
        "| ARP request → reply transmitted on a veth, live frames (one per run, the run's setup included), ns: active-active VIP | {live_shared:.0} | single-owner VIP {live_single:.0} | {:.2}× | — |",
        ratio(live_shared, live_single)
    );
}

/// Nanoseconds per frame, two ways.
#[derive(Clone, Copy)]
struct Ns {
    /// The program alone: the kernel's per-program run-time statistics.
    program: f64,
    /// One `BPF_PROG_TEST_RUN` as the kernel times it (the `duration` it reports, as
    /// `bpftool prog run` prints): the program plus the harness's own work for one run.
    test_run: f64,
}

struct Cost {
    arp: Ns,
    ndp: Ns,
    pass: Ns,
    /// ARP answered for an active-active VIP: slot lookup and requester record on top.
    shared_arp: Ns,
}

/// The active-active VIP of the cost bench.
const SHARED_VIP4: [u8; 4] = [10, 1, 0, 103];
/// Repetitions per live-frames run.
const LIVE_RUNS: u32 = 20_000;

/// The slots of the cost bench's shared VIP: just the bench client's, so it is answered.
fn shared_slots() -> std::collections::BTreeMap<std::net::IpAddr, lb_common::SlotBits> {
    let mut bits = lb_common::SlotBits::EMPTY;
    bits.insert(lb_common::requester_slot(
        &lb_common::VipStatsKey::v4(SHARED_VIP4).addr,
        &lb_common::VipStatsKey::v4(frames::CLIENT_IP4).addr,
    ));
    std::collections::BTreeMap::from([(SHARED_VIP4.into(), bits)])
}

/// ns per request → reply with `BPF_F_TEST_XDP_LIVE_FRAMES`: the reply is really transmitted
/// (`XDP_TX` on a veth whose peer runs `xdp_pass`), for a single-owner VIP and for a shared
/// one; the kernel's duration of single runs, medians of interleaved batches.
fn live_cost() -> Result<(f64, f64)> {
    let link = Link::new("live");
    let pass_pins = PinDir::new("livepass");
    link.pass_on_client(&pass_pins);
    let pins = PinDir::new("live");
    let dir = pins.path().to_owned();
    let node_if = link.node_if.clone();
    let measured = link.node.within(move || -> Result<(f64, f64), String> {
        let ifindex = Interface::lookup(&node_if)
            .map_err(|e| e.to_string())?
            .index;
        let mut dp = Datapath::load(&dir, 0).map_err(|e| e.to_string())?;
        let mut maps = VipMaps::open_pinned(&dir).map_err(|e| e.to_string())?;
        let entry = |addr: [u8; 4], flags| VipEntry {
            addr: addr.into(),
            ifindex,
            mac: frames::OWNER_MAC,
            flags,
        };
        maps.apply(
            &[
                entry(frames::VIP4, 0),
                entry(SHARED_VIP4, lb_common::VIP_FLAG_ACTIVE_ACTIVE),
            ],
            &shared_slots(),
        )
        .map_err(|e| e.to_string())?;
        let fd = dp
            .program(PROG_XDP_L2)
            .map_err(|e| e.to_string())?
            .fd()
            .map_err(|e| e.to_string())?
            .as_fd()
            .as_raw_fd();
        let replies = |maps: &VipMaps| {
            maps.counters()
                .map(|c| c.get(lb_common::Counter::ArpReplies))
                .map_err(|e| e.to_string())
        };
        let run = |frame: &[u8]| -> Result<f64, String> {
            let before = replies(&maps)?;
            let ctx = testrun::XdpMd {
                data_end: frame.len() as u32,
                ingress_ifindex: ifindex,
                ..Default::default()
            };
            // One repetition per call: in live mode the kernel initialises a frame's data only
            // when its page is new, so later repetitions of one call would see the reply.
            let mut total = 0u64;
            for _ in 0..LIVE_RUNS {
                let r = testrun::run(fd, frame, 1, testrun::BPF_F_TEST_XDP_LIVE_FRAMES, Some(ctx))
                    .map_err(|e| format!("live-frames run: {e}"))?;
                total += u64::from(r.duration_ns);
            }
            // Every repetition must have been answered, or this times another path.
            let answered = replies(&maps)? - before;
            if answered != u64::from(LIVE_RUNS) {
                return Err(format!(
                    "live frames: {answered} of {LIVE_RUNS} requests answered"
                ));
            }
            Ok(total as f64 / f64::from(LIVE_RUNS))
        };
        let single = frames::arp_request(frames::BROADCAST, frames::VIP4);
        let shared = frames::arp_request(frames::BROADCAST, SHARED_VIP4);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            a.push(run(&single)?);
            b.push(run(&shared)?);
        }
        let mid = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        Ok((mid(a), mid(b)))
    });
    measured.map_err(anyhow::Error::msg)
}

/// Nanoseconds per run of program `name` over `runs` single runs on `frame`.
fn per_run(
    dp: &mut Datapath,
    name: &'static str,
    frame: &[u8],
    expect: u32,
    runs: u32,
) -> Result<Ns> {
    let prog = dp.program(name)?;
    let fd = prog.fd()?.as_fd().as_raw_fd();
    let before = prog.info()?;
    let mut reported = 0u64;
    for _ in 0..runs {
        let r = testrun::run(fd, frame, 1, 0, None)?;
        reported += u64::from(r.duration_ns);
        if r.retval != expect {
            bail!(
                "{name} returned {} on the bench frame, expected {expect}",
                r.retval
            );
        }
    }
    let after = dp.program(name)?.info()?;
    let count = after.run_count() - before.run_count();
    let time = after.run_time() - before.run_time();
    Ok(Ns {
        program: time.as_nanos() as f64 / count.max(1) as f64,
        test_run: reported as f64 / f64::from(runs.max(1)),
    })
}

fn median(xs: &[Ns]) -> Ns {
    let mid = |f: fn(&Ns) -> f64| {
        let mut v: Vec<f64> = xs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ns {
        program: mid(|n| n.program),
        test_run: mid(|n| n.test_run),
    }
}

/// Batches of the three measurements interleaved, medians reported: the VM's clock and
/// neighbours drift by tens of percent between seconds, and interleaving makes that drift hit
/// the program and its floor alike.
fn program_cost() -> Result<Cost> {
    let pins = PinDir::new("bench");
    let mut dp = Datapath::load(pins.path(), 0)?;
    let mut maps = VipMaps::open_pinned(pins.path())?;
    // Test runs arrive on the loopback device (ifindex 1).
    maps.apply(
        &[
            VipEntry {
                addr: frames::VIP4.into(),
                ifindex: 1,
                mac: frames::OWNER_MAC,
                flags: 0,
            },
            VipEntry {
                addr: frames::VIP6.into(),
                ifindex: 1,
                mac: frames::OWNER_MAC,
                flags: 0,
            },
            VipEntry {
                addr: SHARED_VIP4.into(),
                ifindex: 1,
                mac: frames::OWNER_MAC,
                flags: lb_common::VIP_FLAG_ACTIVE_ACTIVE,
            },
        ],
        // This node holds the client's slot, so the shared request is answered too.
        &shared_slots(),
    )?;
    let arp = frames::arp_request(frames::BROADCAST, frames::VIP4);
    let shared = frames::arp_request(frames::BROADCAST, SHARED_VIP4);
    let ns = frames::ns_multicast(frames::VIP6);
    let (mut a, mut n, mut p, mut sh) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..BATCHES {
        let runs = RUNS / BATCHES;
        a.push(per_run(&mut dp, PROG_XDP_L2, &arp, testrun::XDP_TX, runs)?);
        sh.push(per_run(
            &mut dp,
            PROG_XDP_L2,
            &shared,
            testrun::XDP_TX,
            runs,
        )?);
        n.push(per_run(&mut dp, PROG_XDP_L2, &ns, testrun::XDP_TX, runs)?);
        p.push(per_run(
            &mut dp,
            PROG_XDP_PASS,
            &arp,
            testrun::XDP_PASS,
            runs,
        )?);
    }
    Ok(Cost {
        arp: median(&a),
        ndp: median(&n),
        pass: median(&p),
        shared_arp: median(&sh),
    })
}

struct Flood {
    sent: u64,
    replies: u64,
    elapsed: Duration,
    agent_cpu_s: f64,
    xdp_cpu_s: f64,
}

impl Flood {
    fn replies_per_s(&self) -> f64 {
        self.replies as f64 / self.elapsed.as_secs_f64()
    }
    fn answered_pct(&self) -> f64 {
        100.0 * self.replies as f64 / (self.sent.max(1)) as f64
    }
    fn per_cpu_s(&self) -> f64 {
        self.replies as f64 / (self.agent_cpu_s + self.xdp_cpu_s).max(1e-9)
    }
}

fn process_cpu_s(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn rx_packets(link: &Link) -> Result<u64> {
    let out = link
        .client
        .exec("cat")
        .arg(format!(
            "/sys/class/net/{}/statistics/rx_packets",
            link.client_if
        ))
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn xdp_run_time(pins: &PinDir) -> Duration {
    aya::programs::ProgramInfo::from_pin(pins.path().join(PROG_XDP_L2))
        .map(|i| i.run_time())
        .unwrap_or_default()
}

fn flood(mode: &str) -> Result<Flood> {
    let link = Link::new("fl");
    let (pins, pass_pins) = (PinDir::new("fl"), PinDir::new("flpass"));
    // Native XDP_TX on a veth needs a program on the peer; attach it in both runs alike.
    link.pass_on_client(&pass_pins);
    let agent = Agent::announce(
        &link.node,
        &link.node_if,
        "10.200.0.100",
        pins.path(),
        &["--mode", mode, "--no-local-vip"],
    );
    std::thread::sleep(Duration::from_millis(300));

    let client_if = link.client_if.clone();
    let rx_before = rx_packets(&link)?;
    let agent_before = process_cpu_s(agent.child.id())?;
    let xdp_before = xdp_run_time(&pins);
    let start = Instant::now();
    let sent = link.client.within(move || -> Result<u64> {
        let iface = Interface::lookup(&client_if)?;
        let frame = frames::arp(
            false,
            iface.mac,
            frames::BROADCAST,
            etherparse::ArpOperation::REQUEST,
            iface.mac,
            [10, 200, 0, 1],
            [0; 6],
            [10, 200, 0, 100],
        );
        let socket = PacketSocket::open(&iface, false)?;
        let deadline = Instant::now() + FLOOD;
        let mut sent = 0u64;
        while Instant::now() < deadline {
            for _ in 0..64 {
                if socket.send(&frame).is_ok() {
                    sent += 1;
                }
            }
        }
        Ok(sent)
    })?;
    // Let replies in flight arrive before reading the counters.
    std::thread::sleep(Duration::from_millis(200));
    let elapsed = start.elapsed() - Duration::from_millis(200);
    let replies = rx_packets(&link)? - rx_before;
    let agent_cpu_s = process_cpu_s(agent.child.id())? - agent_before;
    let xdp_cpu_s = (xdp_run_time(&pins) - xdp_before).as_secs_f64();
    agent.stop();
    Ok(Flood {
        sent,
        replies,
        elapsed,
        agent_cpu_s,
        xdp_cpu_s,
    })
}
