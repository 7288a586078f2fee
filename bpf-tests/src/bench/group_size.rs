//! Membership in the lab at several group sizes: `n` real agents (`lb-agent run`, each in its
//! own namespace on one bridge) heartbeating each other, the heartbeats each receives per
//! second at rest, and how long each of the others takes to count a SIGKILLed one dead: from
//! the kill to its own log line saying membership changed without it (past 16 nodes only
//! the victim's monitors hear it, the others learn of it from their verdict).
use std::time::{Duration, Instant, SystemTime};

use crate::{
    PinDir,
    harness::{
        agent::{Agent, METRICS},
        group::{allocate, config_dir, config_yaml},
        lab::Lab,
        scrape::{self, sample},
    },
};

/// One group size's figures.
#[derive(Debug)]
pub struct GroupFigures {
    pub nodes: usize,
    pub interval: Duration,
    /// Heartbeats each agent accepted per second at rest (mean over the agents).
    pub received: f64,
    /// The agent that accepted the most, and how many per second.
    pub busiest: Option<(String, f64)>,
    /// Detection by the survivors: the mean, and the 99th percentile.
    pub detection_mean: Duration,
    pub detection_p99: Duration,
    /// Whether the group ran as a ring (past a full mesh).
    pub ring: bool,
    /// Views changed, all agents together, while the group was at rest (over the window the
    /// heartbeats are counted in): anything but 0 is a flap.
    pub changes_at_rest: usize,
    /// Datagrams the agents' sockets dropped for a full receive buffer over that window, all
    /// agents together (the lab's CPUs not keeping up).
    pub drops_at_rest: u64,
    /// Why the first try did not give figures, when these are from a second.
    pub second_try: Option<String>,
}

fn metrics(lab: &Lab, i: usize) -> Result<String, String> {
    let addr = METRICS.parse().map_err(|e| format!("{e}"))?;
    match scrape::get(&lab.nodes[i].ns, addr, "/metrics")? {
        (200, body) => Ok(body),
        (status, body) => Err(format!("node {i}: {status} {body}")),
    }
}

/// UDP datagrams the node namespaces' sockets dropped for a full receive buffer, IPv4 and
/// IPv6 together, summed over the nodes.
fn receive_drops(lab: &Lab) -> u64 {
    let field = |text: &str, table: &str, name: &str| -> u64 {
        // /proc/net/snmp: a header line and a value line, both starting with "Udp:".
        let mut rows = text.lines().filter(|l| l.starts_with(table));
        let (Some(head), Some(values)) = (rows.next(), rows.next()) else {
            return 0;
        };
        head.split_whitespace()
            .zip(values.split_whitespace())
            .find(|(h, _)| *h == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    lab.nodes
        .iter()
        .map(|node| {
            let read = |path: &str| {
                node.ns
                    .exec("cat")
                    .arg(path)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            };
            let v6 = read("/proc/net/snmp6");
            let v6_drops = v6
                .lines()
                .find_map(|l| l.strip_prefix("Udp6RcvbufErrors"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            field(&read("/proc/net/snmp"), "Udp:", "RcvbufErrors") + v6_drops
        })
        .sum()
}

/// The first line of `text` and its last `n`: enough to tell why, not the whole log.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(n)..];
    match lines.first() {
        Some(first) if lines.len() > n => format!("{first} … {}", tail.join(" | ")),
        _ => tail.join(" | "),
    }
}

/// When the first line of `log` after `after` saying membership changed leaves `victim` out.
fn dropped_at(log: &str, victim: &str, after: SystemTime) -> Option<SystemTime> {
    let quoted = format!("\"{victim}\"");
    log.lines()
        .filter(|l| l.contains("membership changed"))
        .filter_map(|l| {
            let stamp = l.split_whitespace().next()?;
            let t: k8s_openapi::jiff::Timestamp = stamp.parse().ok()?;
            let t = SystemTime::from(t);
            (t >= after).then_some((t, l))
        })
        .find(|(_, l)| !l.contains(&quoted))
        .map(|(t, _)| t)
}

/// `n` agents heartbeating every `interval`, dead after `timeout`, each run with `extra`
/// arguments too; a group that cannot settle is tried once more, and both failures reported.
pub fn measure(
    n: usize,
    interval: Duration,
    timeout: Duration,
    extra: &[&str],
) -> Result<GroupFigures, String> {
    match once(n, interval, timeout, extra) {
        Ok(g) => Ok(g),
        Err(first) => {
            eprintln!("groups: {first}; trying once more");
            match once(n, interval, timeout, extra) {
                Ok(g) => Ok(GroupFigures {
                    second_try: Some(first),
                    ..g
                }),
                Err(second) => Err(format!("{first}; at a second try: {second}")),
            }
        }
    }
}

fn once(
    n: usize,
    interval: Duration,
    timeout: Duration,
    extra: &[&str],
) -> Result<GroupFigures, String> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let (every, dead_after) = (ms(interval), ms(timeout));
    let lab = Lab::new("gz", n);
    // Node addresses run from .11 up: the pool keeps clear of them.
    let config =
        config_yaml(&lab, "{}").replace("10.210.0.100-10.210.0.150", "10.210.0.200-10.210.0.250");
    let dir = config_dir(&config);
    allocate(&dir);
    let pins: Vec<PinDir> = (0..n).map(|i| PinDir::new(&format!("gz{i}"))).collect();
    let mut agents: Vec<Option<Agent>> = Vec::with_capacity(n);
    for ((node, name), pin) in lab.nodes.iter().zip(&lab.names).zip(&pins) {
        let mut args = vec![
            "--mode",
            "xdp-native",
            "--heartbeat-interval",
            &every,
            "--failure-timeout",
            &dead_after,
        ];
        args.extend_from_slice(extra);
        let mut a = Agent::run_node(&node.ns, name, &dir, pin.path(), &args);
        a.try_wait_for_log("running;", Duration::from_secs(30))
            .map_err(|e| format!("{n} agents: {name} did not start: {}", last_lines(&e, 5)))?;
        agents.push(Some(a));
    }
    let alive_peers = |i: usize| -> Option<f64> {
        sample(&metrics(&lab, i).ok()?, "xdplb_membership_peers_alive", &[])
    };
    let changes = |agents: &[Option<Agent>]| -> usize {
        agents
            .iter()
            .flatten()
            .map(|a| a.log_text().matches("membership changed").count())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(0..n).all(|i| alive_peers(i) == Some((n - 1) as f64)) {
        if Instant::now() > deadline {
            // Who each node that lacks someone last logged alive: which are missing.
            let heard: Vec<String> = (0..n)
                .map(|i| {
                    let log = agents[i].as_ref().map(Agent::log_text).unwrap_or_default();
                    let last = log.lines().rfind(|l| l.contains("membership changed"));
                    let missing: Vec<&str> = lab
                        .names
                        .iter()
                        .filter(|m| last.is_some_and(|l| !l.contains(&format!("\"{m}\""))))
                        .map(String::as_str)
                        .collect();
                    match missing.is_empty() {
                        true => "all".to_owned(),
                        false => format!("{}: no {}", lab.names[i], missing.join(",")),
                    }
                })
                .filter(|s| s != "all")
                .collect();
            let changes = changes(&agents);
            return Err(format!(
                "{n} agents: not all hear each other within 60 s ({changes} membership changes logged in all; as last logged: {})",
                heard.join(" ")
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let received = |i: usize| -> Result<f64, String> {
        sample(
            &metrics(&lab, i)?,
            "xdplb_membership_heartbeats_received_total",
            &[],
        )
        .ok_or_else(|| format!("node {i}: no heartbeats_received"))
    };
    let window = Duration::from_secs(5);
    let changes_before = changes(&agents);
    let drops_before = receive_drops(&lab);
    // Each agent's count over its own window, from its first scrape to its second: a pass
    // over 100 agents on a busy host takes seconds, and not always the same.
    let counted = |i: usize| received(i).map(|c| (c, Instant::now()));
    let before: Vec<(f64, Instant)> = (0..n).map(counted).collect::<Result<_, _>>()?;
    std::thread::sleep(window);
    let after: Vec<(f64, Instant)> = (0..n).map(counted).collect::<Result<_, _>>()?;
    let changes_at_rest = changes(&agents) - changes_before;
    let drops_at_rest = receive_drops(&lab).saturating_sub(drops_before);
    let rates: Vec<f64> = after
        .iter()
        .zip(&before)
        .map(|((a, at), (b, bt))| (a - b) / at.duration_since(*bt).as_secs_f64())
        .collect();
    let rate = rates.iter().sum::<f64>() / n as f64;
    let busiest = rates
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, r)| (lab.names[i].clone(), *r));

    let ring = agents.iter().flatten().any(|a| {
        a.log_text()
            .contains("each node heartbeats its ring neighbours")
    });
    let survivors = 1..n;
    let killed = SystemTime::now();
    if let Some(mut a) = agents[0].take() {
        let _ = a.child.kill();
        let _ = a.child.wait();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !survivors
        .clone()
        .all(|i| alive_peers(i) == Some((n - 2) as f64))
    {
        if Instant::now() > deadline {
            return Err(format!("{n} agents: the kill not seen by all within 30 s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let victim = &lab.names[0];
    let mut took: Vec<Duration> = Vec::new();
    for i in survivors {
        let log = agents[i].as_ref().map(Agent::log_text).unwrap_or_default();
        let at = dropped_at(&log, victim, killed)
            .ok_or_else(|| format!("{n} agents: node {i} logged no change without {victim}"))?;
        took.push(at.duration_since(killed).unwrap_or_default());
    }
    took.sort();
    let mean = took.iter().sum::<Duration>() / took.len().max(1) as u32;
    let p99 = took[((took.len() as f64 * 0.99).ceil() as usize).clamp(1, took.len()) - 1];
    drop(agents);
    Ok(GroupFigures {
        nodes: n,
        interval,
        received: rate,
        busiest,
        detection_mean: mean,
        detection_p99: p99,
        ring,
        changes_at_rest,
        drops_at_rest,
        second_try: None,
    })
}
