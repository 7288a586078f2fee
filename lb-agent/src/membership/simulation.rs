//! A group of [`Verdicts`] on simulated time and a simulated network (latency, loss,
//! partitions), for the protocol's tests and the bench's thousand-node row: no sockets, no
//! clocks, the same code the agents run.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use super::{
    ring::Ring,
    verdicts::{Message, Outgoing, Verdicts},
};

enum Payload {
    Heartbeat { run: u64, seq: u64, digest: u64 },
    Message(Message),
}

/// One simulated node.
pub struct Node {
    pub name: String,
    pub verdicts: Verdicts,
    pub up: bool,
    run: u64,
    seq: u64,
    /// Where in the interval this node's heartbeats go out.
    offset: Duration,
    /// Datagrams sent: heartbeats, and everything else.
    pub heartbeats_sent: u64,
    pub messages_sent: u64,
    pub received: u64,
    /// What the node is to say of itself at its next step.
    to_say: Option<Vec<u8>>,
}

/// The simulated group.
pub struct Sim {
    pub nodes: Vec<Node>,
    ring: Ring,
    t0: Instant,
    now: Instant,
    step: Duration,
    pub interval: Duration,
    pub timeout: Duration,
    latency: Duration,
    queue: BTreeMap<(Instant, u64), (usize, usize, Payload)>,
    sent: u64,
    rng: u64,
    /// The probability that a datagram is lost.
    pub loss: f64,
    /// The side of each node while the network is cut in two (datagrams across are lost).
    pub sides: Option<Vec<bool>>,
    runs: u64,
}

impl Sim {
    /// `n` nodes (`node-0000`, ...) started together at time zero, heartbeats every
    /// `interval`, dead after `timeout`; `seed` makes losses and phases reproducible.
    pub fn new(n: usize, interval: Duration, timeout: Duration, seed: u64) -> Self {
        let names: Vec<String> = (0..n).map(|i| format!("node-{i:04}")).collect();
        let ring = Ring::new(names.clone());
        let t0 = Instant::now();
        let mut sim = Self {
            nodes: Vec::with_capacity(n),
            ring: ring.clone(),
            t0,
            now: t0,
            step: Duration::from_millis(1),
            interval,
            timeout,
            latency: Duration::from_micros(200),
            queue: BTreeMap::new(),
            sent: 0,
            rng: seed | 1,
            loss: 0.0,
            sides: None,
            runs: 0,
        };
        for name in names {
            let node = sim.fresh(&name);
            sim.nodes.push(node);
        }
        sim
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: reproducible, and enough for losses and phases.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fresh(&mut self, name: &str) -> Node {
        self.runs += 1;
        let run = self.runs.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let step_ns = u64::try_from(self.interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let offset = Duration::from_nanos(self.random() % step_ns);
        Node {
            name: name.to_owned(),
            verdicts: Verdicts::new(name, run, self.ring.clone(), self.timeout, self.now, false),
            up: true,
            run,
            seq: 0,
            offset,
            heartbeats_sent: 0,
            messages_sent: 0,
            received: 0,
            to_say: Some(format!("{name} starts in run {run}").into_bytes()),
        }
    }

    /// Node `i` says `body` of itself (its links or claims changed).
    pub fn say(&mut self, i: usize, body: &str) {
        self.nodes[i].to_say = Some(body.as_bytes().to_vec());
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now.duration_since(self.t0)
    }

    /// The nodes stand in name order, as on the ring.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes
            .binary_search_by(|n| n.name.as_str().cmp(name))
            .ok()
    }

    /// Stops node `i` at once (a crash: nothing more from it).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].up = false;
    }

    /// Starts node `i` again, in a new run that knows nothing.
    pub fn restart(&mut self, i: usize) {
        let name = self.nodes[i].name.clone();
        self.nodes[i] = self.fresh(&name);
    }

    fn send(&mut self, from: usize, to: &str, payload: Payload) {
        let Some(to) = self.index(to) else {
            return;
        };
        match payload {
            Payload::Heartbeat { .. } => self.nodes[from].heartbeats_sent += 1,
            Payload::Message(_) => self.nodes[from].messages_sent += 1,
        }
        let lost = self.loss > 0.0 && (self.random() as f64 / u64::MAX as f64) < self.loss;
        let cut = self.sides.as_ref().is_some_and(|s| s[from] != s[to]);
        if lost || cut {
            return;
        }
        self.sent += 1;
        self.queue
            .insert((self.now + self.latency, self.sent), (from, to, payload));
    }

    fn send_all(&mut self, from: usize, out: Vec<Outgoing>) {
        for o in out {
            self.send(from, &o.to, Payload::Message(o.message));
        }
    }

    /// Runs the group for `span` of simulated time.
    pub fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        while self.now < end {
            self.now += self.step;
            self.deliver();
            for i in 0..self.nodes.len() {
                if !self.nodes[i].up {
                    continue;
                }
                if let Some(body) = self.nodes[i].to_say.take() {
                    let out = self.nodes[i].verdicts.say(body);
                    self.send_all(i, out);
                }
                let phase = (self.now.duration_since(self.t0) + self.nodes[i].offset).as_nanos()
                    % self.interval.as_nanos();
                if phase < self.step.as_nanos() {
                    let node = &mut self.nodes[i];
                    node.seq += 1;
                    node.verdicts.beat(node.seq);
                    let (run, seq, digest) = (node.run, node.seq, node.verdicts.digest());
                    for to in node.verdicts.targets() {
                        self.send(i, &to, Payload::Heartbeat { run, seq, digest });
                    }
                }
                let now = self.now;
                let out = self.nodes[i].verdicts.tick(now);
                self.send_all(i, out);
            }
        }
    }

    fn deliver(&mut self) {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (from, to, payload) = entry.remove();
            if !self.nodes[to].up {
                continue;
            }
            self.nodes[to].received += 1;
            let sender = self.nodes[from].name.clone();
            let now = self.now;
            let v = &mut self.nodes[to].verdicts;
            let out = match payload {
                Payload::Heartbeat { run, seq, digest } => {
                    v.heartbeat(&sender, run, seq, digest, now)
                }
                Payload::Message(m) => v.receive(&sender, m),
            };
            self.send_all(to, out);
        }
    }

    /// The members each running node holds dead, by node.
    pub fn views(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.nodes
            .iter()
            .filter(|n| n.up)
            .map(|n| (n.name.clone(), n.verdicts.dead().clone()))
            .collect()
    }

    /// The nodes not running.
    pub fn down(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .filter(|n| !n.up)
            .map(|n| n.name.clone())
            .collect()
    }

    /// Whether every running node holds exactly the stopped ones dead, and what each running
    /// node last said of itself (and the digest each would send is what it holds).
    pub fn converged(&self) -> bool {
        let down = self.down();
        self.views().values().all(|d| *d == down) && self.sayings_agree() && self.digests_fresh()
    }

    /// Whether each node's digest, as kept between changes, is the digest of what it holds.
    pub fn digests_fresh(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.verdicts.digest() == n.verdicts.digest_of_all())
    }

    /// Whether every running node holds what each running node last said of itself.
    pub fn sayings_agree(&self) -> bool {
        let up: Vec<&Node> = self.nodes.iter().filter(|n| n.up).collect();
        up.iter().all(|subject| {
            let own = subject.verdicts.said().get(&subject.name);
            own.is_some()
                && up
                    .iter()
                    .all(|n| n.verdicts.said().get(&subject.name) == own)
        })
    }

    /// Runs until every running node holds `victim` dead (or `limit` passes); how long that
    /// took.
    pub fn until_all_see_dead(&mut self, victim: &str, limit: Duration) -> Option<Duration> {
        let start = self.now;
        while self.now.duration_since(start) < limit {
            self.run_for(self.step);
            if self
                .nodes
                .iter()
                .filter(|n| n.up)
                .all(|n| n.verdicts.dead().contains(victim))
            {
                return Some(self.now.duration_since(start));
            }
        }
        None
    }

    /// Heartbeats sent per running node per second, over the whole run so far.
    pub fn heartbeat_rate(&self) -> f64 {
        let up: Vec<&Node> = self.nodes.iter().filter(|n| n.up).collect();
        let total: u64 = up.iter().map(|n| n.heartbeats_sent).sum();
        total as f64 / up.len().max(1) as f64 / self.elapsed().as_secs_f64().max(1e-9)
    }

    /// Resets the datagram counters (to measure a steady state).
    pub fn reset_counts(&mut self) {
        for n in &mut self.nodes {
            n.heartbeats_sent = 0;
            n.messages_sent = 0;
            n.received = 0;
        }
        self.t0 = self.now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(10);
    const TIMEOUT: Duration = Duration::from_millis(30);

    fn started(n: usize, seed: u64) -> Sim {
        let mut sim = Sim::new(n, INTERVAL, TIMEOUT, seed);
        sim.run_for(Duration::from_millis(300));
        assert!(sim.converged(), "cold start: {:?}", sim.views());
        sim
    }

    #[test]
    fn a_cold_start_settles_with_everyone_alive_and_heartbeats_to_a_few() {
        let mut sim = started(60, 1);
        sim.reset_counts();
        sim.run_for(Duration::from_secs(1));
        assert!(sim.converged());
        let rate = sim.heartbeat_rate();
        assert!(
            (550.0..=650.0).contains(&rate),
            "3 monitors and 3 subjects at 100 heartbeats/s each: {rate}"
        );
        let others: u64 = sim.nodes.iter().map(|n| n.messages_sent).sum();
        assert_eq!(others, 0, "nothing but heartbeats in a steady group");
    }

    #[test]
    fn a_cold_start_under_loss_ends_with_every_node_heartbeating_a_few() {
        // A node heartbeats everyone until a sync tells it what the group knows: one lost
        // sync must not leave it doing so for good.
        let mut sim = Sim::new(60, INTERVAL, TIMEOUT, 11);
        sim.loss = 0.3;
        sim.run_for(Duration::from_secs(1));
        sim.loss = 0.0;
        sim.run_for(Duration::from_millis(500));
        sim.reset_counts();
        sim.run_for(Duration::from_secs(1));
        let unsynced: Vec<&str> = sim
            .nodes
            .iter()
            .filter(|n| !n.verdicts.synced())
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(unsynced, Vec::<&str>::new(), "never synced");
        let rate = sim.heartbeat_rate();
        assert!((550.0..=650.0).contains(&rate), "{rate}");
        assert!(sim.converged(), "{:?}", sim.views());
    }

    #[test]
    fn a_crash_is_seen_by_every_node_within_the_timeout_and_a_few_flights() {
        let mut sim = started(60, 2);
        sim.kill(17);
        let took = sim
            .until_all_see_dead("node-0017", Duration::from_secs(1))
            .expect("detected");
        assert!(took <= TIMEOUT + Duration::from_millis(5), "{took:?}");
        sim.run_for(Duration::from_millis(200));
        assert!(sim.converged(), "{:?}", sim.views());
    }

    #[test]
    fn a_restarted_node_is_alive_again_everywhere() {
        let mut sim = started(40, 3);
        sim.kill(5);
        sim.run_for(Duration::from_millis(200));
        assert!(sim.converged());
        sim.restart(5);
        sim.run_for(Duration::from_millis(200));
        assert!(sim.converged(), "{:?}", sim.views());
        assert!(sim.views().values().all(BTreeSet::is_empty));
    }

    #[test]
    fn five_percent_loss_moves_nothing() {
        let mut sim = started(60, 4);
        let before: u64 = sim.nodes.iter().map(|n| n.verdicts.failures()).sum();
        sim.loss = 0.05;
        sim.run_for(Duration::from_secs(20));
        let after: u64 = sim.nodes.iter().map(|n| n.verdicts.failures()).sum();
        // Two heartbeats lost in a row make a monitor suspect (≈ 0.25 % of its windows):
        // hundreds of suspicions in this run, none confirmed.
        assert_eq!(after - before, 0, "false failures: {:?}", sim.views());
    }

    #[test]
    fn what_a_node_says_reaches_everyone_through_loss_and_restarts() {
        let mut sim = started(60, 8);
        sim.loss = 0.2;
        for (i, body) in [(3, "eth1 up"), (30, "eth1 down"), (59, "claims 10.0.0.7")] {
            sim.say(i, body);
        }
        // Sent three times to everyone: at 20 % loss some miss all three (0.8 %), and learn
        // it from a sync once their digest differs from a monitor's.
        sim.run_for(Duration::from_secs(2));
        assert!(sim.sayings_agree(), "after changes under loss");
        // A restarted node's first saying replaces its former run's everywhere.
        sim.loss = 0.05;
        sim.restart(30);
        sim.run_for(Duration::from_millis(1500));
        let said = sim.nodes[0].verdicts.said().get("node-0030").cloned();
        assert_eq!(
            said.map(|s| String::from_utf8_lossy(&s.body).into_owned()),
            Some(format!("node-0030 starts in run {}", sim.nodes[30].run))
        );
        assert!(sim.converged(), "{:?}", sim.views());
    }

    #[test]
    fn neighbours_failing_together_are_all_seen_and_views_agree() {
        let mut sim = started(60, 5);
        // Three consecutive nodes (one's monitors among them) and two elsewhere, at once.
        for i in [20, 21, 22, 40, 59] {
            sim.kill(i);
        }
        sim.run_for(Duration::from_millis(300));
        assert!(sim.converged(), "{:?}", sim.views());
        // With loss too: verdicts are repeated.
        sim.loss = 0.1;
        for i in [30, 31] {
            sim.kill(i);
        }
        sim.run_for(Duration::from_millis(500));
        assert!(sim.converged(), "{:?}", sim.views());
    }

    #[test]
    fn a_partition_heals_into_one_view() {
        let mut sim = started(60, 6);
        // Interleaved sides, as racks named apart from the ring's order.
        sim.sides = Some((0..60).map(|i: usize| i.is_multiple_of(3)).collect());
        sim.run_for(Duration::from_secs(1));
        // Each side holds at least some of the other dead, and none of its own.
        for (i, n) in sim.nodes.iter().enumerate() {
            let side = sim.sides.as_ref().expect("cut")[i];
            for dead in n.verdicts.dead() {
                let j = sim.index(dead).expect("member");
                assert_ne!(
                    sim.sides.as_ref().expect("cut")[j],
                    side,
                    "{} holds {dead} dead",
                    n.name
                );
            }
        }
        sim.sides = None;
        sim.run_for(Duration::from_secs(3));
        assert!(sim.converged(), "{:?}", sim.views());
        // And a crash after the heal is seen as before.
        sim.kill(7);
        sim.until_all_see_dead("node-0007", Duration::from_secs(1))
            .expect("detected after the heal");
    }

    /// Crashes of neighbours under loss, an interleaved partition and its heal, and restarts,
    /// over several seeds (phases and losses differ): every phase ends in one view.
    #[test]
    fn every_phase_ends_in_one_view_over_many_seeds() {
        let n = 40;
        for seed in 1..=6u64 {
            let mut sim = Sim::new(n, INTERVAL, TIMEOUT, seed);
            sim.run_for(Duration::from_millis(300));
            assert!(sim.converged(), "seed {seed}: cold start");
            sim.loss = 0.05;
            let a = (seed as usize * 7) % n;
            for k in [a, (a + 1) % n, (a + 2) % n, (a + 17) % n] {
                sim.kill(k);
            }
            sim.run_for(Duration::from_millis(500));
            assert!(sim.converged(), "seed {seed}: crashes {:?}", sim.views());
            sim.sides = Some(
                (0..n)
                    .map(|x| (x as u64 * seed).is_multiple_of(3))
                    .collect(),
            );
            sim.run_for(Duration::from_secs(1));
            sim.sides = None;
            sim.run_for(Duration::from_secs(4));
            assert!(sim.converged(), "seed {seed}: heal {:?}", sim.views());
            for k in [a, (a + 1) % n] {
                sim.restart(k);
            }
            sim.run_for(Duration::from_millis(500));
            assert!(sim.converged(), "seed {seed}: restarts {:?}", sim.views());
        }
    }
}
