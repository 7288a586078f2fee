//! Membership in the lab at several group sizes: `n` real agents (`lb-agent run`, each in its
//! own namespace on one bridge) heartbeating each other, the heartbeats each receives per
//! second at rest, and how long the others take to count a SIGKILLed one dead (their own
//! `xdplb_membership_detection_seconds`).
use std::time::{Duration, Instant};

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
    /// Detection, from the histogram the survivors filled: the mean, and the bucket holding
    /// the 99th percentile (an upper bound).
    pub detection_mean: Duration,
    pub detection_p99_at_most: f64,
}

fn metrics(lab: &Lab, i: usize) -> Result<String, String> {
    let addr = METRICS.parse().map_err(|e| format!("{e}"))?;
    match scrape::get(&lab.nodes[i].ns, addr, "/metrics")? {
        (200, body) => Ok(body),
        (status, body) => Err(format!("node {i}: {status} {body}")),
    }
}

/// A detection histogram read off an agent: sum, count, and cumulative counts per bucket.
type Histogram = (f64, f64, Vec<(f64, f64)>);

/// The cumulative count of `xdplb_membership_detection_seconds_bucket` per `le`.
fn buckets(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("xdplb_membership_detection_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (le, value) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.trim().parse().ok()?))
        })
        .collect()
}

/// `n` agents heartbeating every `interval`, dead after `timeout`.
pub fn measure(n: usize, interval: Duration, timeout: Duration) -> Result<GroupFigures, String> {
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
        let mut a = Agent::run_node(
            &node.ns,
            name,
            &dir,
            pin.path(),
            &[
                "--mode",
                "xdp-native",
                "--heartbeat-interval",
                &every,
                "--failure-timeout",
                &dead_after,
            ],
        );
        a.wait_for_log("running;", Duration::from_secs(30));
        agents.push(Some(a));
    }
    let alive_peers = |i: usize| -> Option<f64> {
        sample(&metrics(&lab, i).ok()?, "xdplb_membership_peers_alive", &[])
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(0..n).all(|i| alive_peers(i) == Some((n - 1) as f64)) {
        if Instant::now() > deadline {
            let heard: Vec<String> = (0..n)
                .map(|i| alive_peers(i).map_or("?".to_owned(), |v| v.to_string()))
                .collect();
            return Err(format!(
                "{n} agents: not all hear each other within 60 s (peers each hears: {})",
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
    let before: Vec<f64> = (0..n).map(received).collect::<Result<_, _>>()?;
    let start = Instant::now();
    std::thread::sleep(window);
    let after: Vec<f64> = (0..n).map(received).collect::<Result<_, _>>()?;
    let secs = start.elapsed().as_secs_f64();
    let rate = after.iter().zip(&before).map(|(a, b)| a - b).sum::<f64>() / n as f64 / secs;

    let histograms = |i: usize| -> Result<Histogram, String> {
        let text = metrics(&lab, i)?;
        Ok((
            sample(&text, "xdplb_membership_detection_seconds_sum", &[]).unwrap_or(0.0),
            sample(&text, "xdplb_membership_detection_seconds_count", &[]).unwrap_or(0.0),
            buckets(&text),
        ))
    };
    let survivors = 1..n;
    let before: Vec<_> = survivors
        .clone()
        .map(histograms)
        .collect::<Result<_, _>>()?;
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
    let after: Vec<_> = survivors
        .clone()
        .map(histograms)
        .collect::<Result<_, _>>()?;
    let (mut sum, mut count) = (0.0, 0.0);
    let mut cumulative: Vec<(f64, f64)> = Vec::new();
    for ((s0, c0, b0), (s1, c1, b1)) in before.iter().zip(&after) {
        sum += s1 - s0;
        count += c1 - c0;
        for ((le, v0), (_, v1)) in b0.iter().zip(b1) {
            match cumulative.iter_mut().find(|(l, _)| l == le) {
                Some((_, v)) => *v += v1 - v0,
                None => cumulative.push((*le, v1 - v0)),
            }
        }
    }
    if count < 1.0 {
        return Err(format!("{n} agents: no detection recorded"));
    }
    let p99 = cumulative
        .iter()
        .find(|(_, v)| *v >= 0.99 * count)
        .map_or(f64::INFINITY, |(le, _)| *le);
    drop(agents);
    Ok(GroupFigures {
        nodes: n,
        interval,
        received: rate,
        detection_mean: Duration::from_secs_f64(sum / count),
        detection_p99_at_most: p99,
    })
}
