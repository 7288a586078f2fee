//! Failover, measured as a client sees it: the client sends a who-has for the VIP every 10 ms;
//! the owner's process is killed with SIGKILL; the figure is the time from the kill to the
//! first reply from another MAC. Once for xdplb (three `lb-agent run`, default settings) and
//! once for keepalived (VRRPv3, three routers, the given advert interval), on the same kind of
//! lab, in the same run.
use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    harness::group::{Group, expected},
    harness::lab::{Host, Lab},
    harness::netns::mac_str,
    harness::prober::{Prober, takeover},
};

pub const PROBE: Duration = Duration::from_millis(10);

fn octets(ip: &str) -> Result<[u8; 4], String> {
    ip.parse::<std::net::Ipv4Addr>()
        .map(|a| a.octets())
        .map_err(|e| format!("{ip}: {e}"))
}

/// Probes from the lab's client for `within`; the MAC that sent every reply of the last
/// 250 ms, if only one did.
fn settled(lab: &Lab, vip: [u8; 4], within: Duration) -> Option<[u8; 6]> {
    settled_on(&lab.client, vip, within)
}

/// Windows [`settled_on`] tries before a run gives up: a restarted owner takes its VIP back
/// make-before-break after it joins, and during the hand-over both nodes answer, so one
/// window can fall on it.
const SETTLE_TRIES: usize = 5;

/// The same from `host`, trying up to [`SETTLE_TRIES`] windows of `within`.
fn settled_on(host: &Host, vip: [u8; 4], within: Duration) -> Option<[u8; 6]> {
    (0..SETTLE_TRIES).find_map(|_| settled_once(host, vip, within))
}

/// One window of `within`.
fn settled_once(host: &Host, vip: [u8; 4], within: Duration) -> Option<[u8; 6]> {
    let prober = Prober::start(&host.ns, "eth0", octets(&host.ipv4).ok()?, vip, PROBE);
    let start = Instant::now();
    std::thread::sleep(within);
    let replies = prober.finish();
    let recent: Vec<[u8; 6]> = replies
        .iter()
        .filter(|(at, _)| at.duration_since(start) + Duration::from_millis(250) >= within)
        .map(|(_, m)| *m)
        .collect();
    let first = *recent.first()?;
    recent.iter().all(|m| *m == first).then_some(first)
}

/// The name and index of the group's node whose MAC is `mac`.
fn node_of(g: &Group, mac: [u8; 6]) -> Result<(String, usize), String> {
    let owner = g
        .macs
        .get(&mac_str(&mac))
        .cloned()
        .ok_or("reply from an unknown MAC")?;
    let index = g
        .names
        .iter()
        .position(|n| *n == owner)
        .ok_or("owner index")?;
    Ok((owner, index))
}

/// Failover times of a series of runs, and the runs that needed their second try or could not
/// be measured at all: a transient (a VIP that does not settle) is reported, not fatal.
#[derive(Debug, Default)]
pub struct Samples {
    pub times: Vec<Duration>,
    /// Runs measured at their second try, each with why the first failed.
    pub retried: Vec<String>,
    /// Runs that failed twice, each with why.
    pub lost: Vec<String>,
}

impl Samples {
    /// `runs` runs of `one`, each tried at most twice.
    fn collect(runs: usize, mut one: impl FnMut() -> Result<Duration, String>) -> Self {
        let mut s = Self::default();
        for run in 0..runs {
            match one() {
                Ok(t) => s.times.push(t),
                Err(first) => match one() {
                    Ok(t) => {
                        s.times.push(t);
                        s.retried.push(format!("run {run}: {first}"));
                    }
                    Err(second) => s.lost.push(format!("run {run}: {first}; then {second}")),
                },
            }
        }
        s
    }

    /// What to say beside the figures: the runs measured, retried and lost.
    pub fn runs(&self) -> String {
        let mut out = format!("{} runs", self.times.len());
        if !self.retried.is_empty() {
            out += &format!(", {} at a second try", self.retried.len());
        }
        if !self.lost.is_empty() {
            out += &format!(
                ", {} not measured: {}",
                self.lost.len(),
                self.lost.join("; ")
            );
        }
        out
    }
}

/// xdplb: `runs` kills of whichever node owns the first VIP, each followed by a restart; every
/// agent gets `timers` (for example `--heartbeat-interval 10ms`) on top of the defaults.
pub fn xdplb(runs: usize, timers: &[&str]) -> Result<Samples, String> {
    let mut g = Group::start_with("fb", timers);
    let owners = expected(&g.dir, &g.names);
    let (vip, _) = owners.iter().next().ok_or("no VIP allocated")?;
    let vip = octets(vip)?;
    let client = octets(&g.lab.client.ipv4)?;
    Ok(Samples::collect(runs, || {
        let owner_mac = settled(&g.lab, vip, Duration::from_secs(1))
            .ok_or("the VIP is not answered by one node")?;
        let (owner, index) = node_of(&g, owner_mac)?;
        let prober = Prober::start(&g.lab.client.ns, "eth0", client, vip, PROBE);
        std::thread::sleep(Duration::from_millis(100));
        let killed = Instant::now();
        g.kill(index);
        std::thread::sleep(Duration::from_millis(800));
        let replies = prober.finish();
        g.restart(index);
        takeover(&replies, killed, owner_mac)
            .ok_or_else(|| format!("nobody took over from {owner}"))
    }))
}

/// xdplb, link cut: nodes with two NICs (heartbeats on the first, the VIPs on the second, as
/// an L2Advertisement's `interfaces` says); `runs` times the owner's VIP link is taken down at
/// the switch while its heartbeats go on, then brought back once another node answers.
pub fn link_cut(runs: usize) -> Result<Samples, String> {
    let lab = Lab::new("fl", 3);
    let client = lab.second_segment("flc2");
    for i in 0..3 {
        lab.plug(i);
    }
    let macs: Vec<[u8; 6]> = (0..3).map(|i| lab.mac_of(i, "eth1")).collect();
    let g = Group::start_on(
        lab,
        "fl",
        &["--interface", "eth0", "--interface", "eth1"],
        |lab| {
            crate::harness::group::config_yaml(lab, "{interfaces: [eth1]}")
                .replace("10.210.0.100-10.210.0.150", "10.212.0.100-10.212.0.150")
        },
    );
    let owners = expected(&g.dir, &g.names);
    let (vip, _) = owners.iter().next().ok_or("no VIP allocated")?;
    let vip = octets(vip)?;
    let from = octets(&client.ipv4)?;
    Ok(Samples::collect(runs, || {
        // The owner of the last run takes the VIP back once its link has been up a while.
        let owner_mac = settled_on(&client, vip, Duration::from_secs(1))
            .ok_or("the VIP is not answered by one node")?;
        let index = macs
            .iter()
            .position(|m| *m == owner_mac)
            .ok_or("reply from an unknown MAC")?;
        let prober = Prober::start(&client.ns, "eth0", from, vip, PROBE);
        std::thread::sleep(Duration::from_millis(100));
        let cut = Instant::now();
        g.lab.set_second_link(index, false);
        std::thread::sleep(Duration::from_millis(800));
        let replies = prober.finish();
        g.lab.set_second_link(index, true);
        takeover(&replies, cut, owner_mac)
            .ok_or_else(|| format!("nobody took over from node {index}"))
    }))
}

/// The lab's configuration with `xdplb.io/l2-preempt: "false"` on its L2Advertisement.
pub fn non_revertive_config(lab: &Lab) -> String {
    crate::harness::group::config_yaml(lab, "{}").replace(
        "kind: L2Advertisement\nmetadata: {name: lab, namespace: metallb-system}",
        "kind: L2Advertisement\nmetadata: {name: lab, namespace: metallb-system, annotations: {xdplb.io/l2-preempt: \"false\"}}",
    )
}

/// The nodes a client sees answer for one VIP, in order (each change once), across a SIGKILL
/// of the VIP's owner and that owner's return; `non_revertive` puts `xdplb.io/l2-preempt: "false"` on
/// the L2Advertisement. MetalLB's rule gives three (owner, another, owner again), the
/// non-revertive one two.
pub fn kill_and_return(non_revertive: bool) -> Result<Vec<String>, String> {
    let tag = if non_revertive { "nr" } else { "rv" };
    let mut g = match non_revertive {
        true => Group::start_config(tag, &[], non_revertive_config),
        false => Group::start(tag),
    };
    let owners = expected(&g.dir, &g.names);
    let (vip, _) = owners.iter().next().ok_or("no VIP allocated")?;
    let vip = octets(vip)?;
    let owner_mac = settled(&g.lab, vip, Duration::from_secs(1))
        .ok_or("the VIP is not answered by one node")?;
    let (_, index) = node_of(&g, owner_mac)?;
    let client = octets(&g.lab.client.ipv4)?;
    let prober = Prober::start(&g.lab.client.ns, "eth0", client, vip, PROBE);
    std::thread::sleep(Duration::from_millis(100));
    g.kill(index);
    std::thread::sleep(Duration::from_millis(800));
    g.start_agent(index, &[]);
    // Its listening, joining, and a hand-back if there is one.
    std::thread::sleep(Duration::from_millis(2000));
    Ok(owners_seen(&prober.finish())
        .iter()
        .map(|m| {
            g.macs
                .get(&mac_str(m))
                .cloned()
                .unwrap_or_else(|| mac_str(m))
        })
        .collect())
}

/// The owners a client saw, in order: the MAC of every 50 ms in which one MAC alone replied,
/// each change once. A hand-over is make before break, so for a moment both nodes reply to
/// each probe; those moments are no owner of their own.
pub fn owners_seen(replies: &[crate::harness::prober::Reply]) -> Vec<[u8; 6]> {
    let Some((start, _)) = replies.first() else {
        return Vec::new();
    };
    let mut windows: std::collections::BTreeMap<u128, std::collections::BTreeSet<[u8; 6]>> =
        std::collections::BTreeMap::new();
    for (at, mac) in replies {
        windows
            .entry(at.duration_since(*start).as_millis() / 50)
            .or_default()
            .insert(*mac);
    }
    let mut out: Vec<[u8; 6]> = windows
        .into_values()
        .filter(|macs| macs.len() == 1)
        .filter_map(|macs| macs.into_iter().next())
        .collect();
    out.dedup();
    out
}

/// One keepalived per node, in its own process group so a kill takes all of its processes.
struct Keepalived {
    child: Child,
    files: Vec<PathBuf>,
}

impl Keepalived {
    fn start(ns: &str, priority: u32, vip: &str, advert: &str) -> Result<Self, String> {
        let base = std::env::temp_dir().join(crate::unique("keepalived"));
        let conf = base.with_extension("conf");
        let pid = base.with_extension("pid");
        let vrrp_pid = base.with_extension("vrrp.pid");
        let text = format!(
            "global_defs {{\n  vrrp_version 3\n  vrrp_garp_master_delay 0\n}}\n\
             vrrp_instance lab {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
             priority {priority}\n  advert_int {advert}\n  virtual_ipaddress {{\n    {vip}/24\n  }}\n}}\n"
        );
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "keepalived",
                "--dont-fork",
                "--vrrp",
                "--log-console",
            ])
            .arg(format!("--use-file={}", conf.display()))
            .arg(format!("--pid={}", pid.display()))
            .arg(format!("--vrrp_pid={}", vrrp_pid.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start keepalived (installed by cargo xtask setup): {e}"))?;
        Ok(Self {
            child,
            files: vec![conf, pid, vrrp_pid],
        })
    }

    fn kill(&mut self) {
        // SAFETY: kill(2) on the process group of our own child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.kill();
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// keepalived: `runs` kills of the master (highest priority, which preempts back after its
/// restart), with `advert` as advert_int.
pub fn keepalived(runs: usize, advert: &str) -> Result<Vec<Duration>, String> {
    let interval = advert
        .parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("advert interval {advert:?}"))?;
    let lab = Lab::new("kb", 3);
    let vip_s = "10.210.0.200";
    let vip = octets(vip_s)?;
    let client = octets(&lab.client.ipv4)?;
    let priorities = [150, 100, 50];
    let mut daemons: Vec<Keepalived> = lab
        .nodes
        .iter()
        .zip(priorities)
        .map(|(n, p)| Keepalived::start(&n.ns.name, p, vip_s, advert))
        .collect::<Result<_, _>>()?;
    let mut samples = Vec::with_capacity(runs);
    for run in 0..runs {
        let master_mac = settled(&lab, vip, (interval * 5).max(Duration::from_secs(2)))
            .ok_or_else(|| format!("keepalived run {run}: the VIP is not answered by one node"))?;
        let index = (0..3)
            .find(|i| mac_str(&lab.node_mac(*i)) == mac_str(&master_mac))
            .ok_or("keepalived master is not a lab node")?;
        let prober = Prober::start(&lab.client.ns, "eth0", client, vip, PROBE);
        std::thread::sleep(Duration::from_millis(100));
        let killed = Instant::now();
        daemons[index].kill();
        // A killed keepalived leaves the VIP on its interface, where the kernel keeps answering
        // ARP for it; that is keepalived's behaviour, measured as is.
        let wait = (interval * 6).max(Duration::from_millis(800));
        std::thread::sleep(wait);
        let replies = prober.finish();
        samples.push(
            takeover(&replies, killed, master_mac)
                .ok_or_else(|| format!("keepalived run {run}: nobody took over"))?,
        );
        // Back to the starting point: the old master's address removed, its daemon restarted.
        lab.nodes[index]
            .ns
            .ip(&["addr", "flush", "dev", "eth0", "to", &format!("{vip_s}/32")]);
        daemons[index] =
            Keepalived::start(&lab.nodes[index].ns.name, priorities[index], vip_s, advert)?;
    }
    Ok(samples)
}

/// What loads the lab while [`changes_under`] counts ownership changes.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// `stress-ng --cpu` with [`CPU_HOGS`] busy workers at normal priority.
    Cpu,
    /// A bulk TCP transfer (`iperf3`, as fast as the segment goes) from the client to the
    /// owner of the first VIP, through the bridge the heartbeats cross.
    Segment,
}

/// stress-ng's CPU workers: eight per CPU, as a host running more work than it has cores (one
/// per CPU leaves the agent a core's worth of turns).
pub static CPU_HOGS: std::sync::LazyLock<usize> =
    std::sync::LazyLock::new(|| 8 * std::thread::available_parallelism().map_or(1, |n| n.get()));

/// A load process, killed (by PID) on drop.
struct Loader(Vec<Child>);

impl Drop for Loader {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(cmd: &mut Command) -> Result<Child, String> {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))
}

/// Ownership changes across the group: the takeovers counted by all three agents.
fn takeovers(g: &Group) -> Result<f64, String> {
    (0..3).try_fold(0.0, |sum, i| {
        let text = g.metrics(i);
        crate::harness::scrape::sample(&text, "xdplb_layer2_takeovers_total", &[])
            .map(|n| sum + n)
            .ok_or_else(|| format!("node {i}: no xdplb_layer2_takeovers_total"))
    })
}

/// The ownership changes (takeovers, summed over the three agents) while `load` runs for
/// `span` on a settled group whose agents all get `extra` (timers, say). None is the answer:
/// every one is a false failover.
pub fn changes_under(load: Load, span: Duration, extra: &[&str]) -> Result<u64, String> {
    let g = Group::start_with("fz", extra);
    let owners = expected(&g.dir, &g.names);
    let (vip, _) = owners.iter().next().ok_or("no VIP allocated")?;
    let owner_mac = settled(&g.lab, octets(vip)?, Duration::from_secs(1))
        .ok_or("the VIP is not answered by one node")?;
    let (_, owner) = node_of(&g, owner_mac)?;
    let before = takeovers(&g)?;
    let secs = format!("{}", span.as_secs().max(1));
    let loader = match load {
        Load::Cpu => Loader(vec![spawn(Command::new("stress-ng").args([
            "--cpu",
            &CPU_HOGS.to_string(),
            "--timeout",
            &format!("{secs}s"),
            "--quiet",
        ]))?]),
        Load::Segment => {
            let server = spawn(g.lab.nodes[owner].ns.exec("iperf3").args(["-s", "-1"]))?;
            let mut loader = Loader(vec![server]);
            // The server needs a moment to listen.
            std::thread::sleep(Duration::from_millis(300));
            loader.0.push(spawn(g.lab.client.ns.exec("iperf3").args([
                "-c",
                &g.lab.nodes[owner].ipv4,
                "-t",
                &secs,
            ]))?);
            loader
        }
    };
    std::thread::sleep(span);
    drop(loader);
    let after = takeovers(&g)?;
    Ok((after - before).max(0.0) as u64)
}
