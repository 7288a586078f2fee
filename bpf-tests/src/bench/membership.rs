//! Membership at scale on simulated time: the agents' own verdicts code
//! (`lb_agent::membership::verdicts`) for groups of 30, 100 and 1,000 nodes on a simulated
//! network, beside the full mesh, where every node heartbeats every other.
use std::time::Duration;

use lb_agent::membership::simulation::Sim;

use crate::harness::prober::percentile;

/// The group sizes measured.
pub const SIZES: [usize; 3] = [30, 100, 1000];
const INTERVAL: Duration = Duration::from_millis(10);
const TIMEOUT: Duration = Duration::from_millis(30);

/// One group size's figures.
#[derive(Debug)]
pub struct Scale {
    pub nodes: usize,
    /// Heartbeats each node sends per second once the group has settled.
    pub heartbeats: f64,
    /// Every other datagram (suspicions, verdicts, syncs) sent per failure, over the group.
    pub per_failure: f64,
    /// Crash → every running node holds the node dead: p50, p99.
    pub detection: (Duration, Duration),
    pub failures: usize,
    /// What the full mesh sends per node per second at the same interval.
    pub mesh: f64,
}

/// Measures one group: a settled second, then `kills` crashes one at a time (each restarted
/// after it was seen, then left to settle).
pub fn measure(nodes: usize, kills: usize, seed: u64) -> Result<Scale, String> {
    let mut sim = Sim::new(nodes, INTERVAL, TIMEOUT, seed);
    sim.run_for(Duration::from_millis(500));
    if !sim.converged() {
        return Err(format!(
            "{nodes} nodes: no single view after the cold start"
        ));
    }
    sim.reset_counts();
    sim.run_for(Duration::from_secs(1));
    let heartbeats = sim.heartbeat_rate();
    let mut times = Vec::with_capacity(kills);
    let before: u64 = sim.nodes.iter().map(|n| n.messages_sent).sum();
    for k in 0..kills {
        // Spread over the ring, whatever its size.
        let victim = (k * 7919 + 13) % nodes;
        let name = sim.nodes[victim].name.clone();
        sim.kill(victim);
        let took = sim
            .until_all_see_dead(&name, Duration::from_secs(2))
            .ok_or_else(|| format!("{nodes} nodes: {name} not seen dead within 2 s"))?;
        times.push(took);
        sim.restart(victim);
        sim.run_for(Duration::from_millis(200));
        if !sim.converged() {
            return Err(format!(
                "{nodes} nodes: no single view after {name} came back"
            ));
        }
    }
    let after: u64 = sim.nodes.iter().map(|n| n.messages_sent).sum();
    let p = |q| percentile(&times, q).unwrap_or_default();
    Ok(Scale {
        nodes,
        heartbeats,
        per_failure: (after - before) as f64 / kills.max(1) as f64,
        detection: (p(50), p(99)),
        failures: kills,
        mesh: (nodes - 1) as f64 / INTERVAL.as_secs_f64(),
    })
}

/// Every size in [`SIZES`].
pub fn run() -> Vec<Result<Scale, String>> {
    SIZES
        .iter()
        .map(|&n| measure(n, if n >= 1000 { 10 } else { 20 }, 7))
        .collect()
}
