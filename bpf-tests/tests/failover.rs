//! Layer 2 failover in the lab: three real agents (`lb-agent run`) on one bridge, the real
//! standalone controller's allocations, real `arping` from the client. Every VIP is answered
//! by exactly the node the election names; when that node's agent is killed, its VIPs move to
//! the next node within a fraction of a second and every other VIP stays where it was.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bpf_tests::{
    PinDir,
    agent::{Agent, workspace_bin},
    lab::Lab,
    netns::mac_str,
    privileged, unique,
};
use lb_controller::config::manifest;

const SERVICES: usize = 6;

fn config_dir(lab: &Lab) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("xdplb-failover"));
    std::fs::create_dir_all(&dir).expect("config dir");
    let mut yaml = String::from(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lab, namespace: metallb-system}\n\
         spec:\n  addresses: [10.210.0.100-10.210.0.150]\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: lab, namespace: metallb-system}\nspec: {}\n",
    );
    for (i, node) in lab.nodes.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-{}}}\nstatus:\n  addresses: [{{type: InternalIP, address: \"{}\"}}]\n",
            i + 1,
            node.ipv4
        ));
    }
    for s in 0..SERVICES {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{s}, namespace: default}}\nspec: {{type: LoadBalancer, ports: [{{port: 80}}]}}\n"
        ));
    }
    std::fs::write(dir.join("config.yaml"), yaml).expect("write config");
    std::fs::write(dir.join("secret"), "lab-secret-0123456789abcdef\n").expect("write secret");
    dir
}

/// Runs the real standalone controller until it has written the allocations.
fn allocate(dir: &Path) {
    let mut child: Child = Command::new(workspace_bin("lb-controller"))
        .args(["run", "--metrics-addr", "127.0.0.1:0", "--config-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lb-controller");
    let file = dir.join("status/allocations.yaml");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !file.exists() {
        assert!(Instant::now() < deadline, "no allocations written");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// VIP → owning node name, as every agent computes it, for the nodes in `alive`.
fn expected(dir: &Path, alive: &[&str]) -> BTreeMap<String, String> {
    let objects = manifest::load(&[dir.to_path_buf()])
        .expect("load config")
        .objects;
    let reader = lb_controller::standalone::Standalone::new(
        dir.to_path_buf(),
        None,
        std::sync::Arc::new(lb_controller::metrics::Metrics::default()),
    );
    let allocations = reader.read_allocations().allocations;
    let alive: BTreeSet<String> = alive.iter().map(|s| (*s).to_owned()).collect();
    let owners = lb_agent::desired::owners(&objects, &allocations, &alive);
    allocations
        .iter()
        .filter_map(|e| Some((e.ips.first()?.to_string(), owners.get(&e.service)?.clone())))
        .collect()
}

struct Group {
    lab: Lab,
    dir: PathBuf,
    names: [&'static str; 3],
    /// MAC → node name.
    macs: BTreeMap<String, String>,
    agents: Vec<Option<Agent>>,
    _pins: Vec<PinDir>,
}

impl Group {
    /// A lab of three nodes, the controller's allocations, and an agent on every node.
    fn start(tag: &str) -> Self {
        let lab = Lab::new(tag, 3);
        let dir = config_dir(&lab);
        allocate(&dir);
        let names = ["node-1", "node-2", "node-3"];
        let macs = (0..3)
            .map(|i| (mac_str(&lab.node_mac(i)), names[i].to_owned()))
            .collect();
        let pins: Vec<PinDir> = (0..3).map(|i| PinDir::new(&format!("{tag}{i}"))).collect();
        let dir_s = dir.to_str().expect("utf-8").to_owned();
        let agents = (0..3)
            .map(|i| {
                let pin = pins[i].path().to_str().expect("utf-8").to_owned();
                let mut a = Agent::start(
                    &lab.nodes[i].ns,
                    &[
                        "run",
                        "--node-name",
                        names[i],
                        "--config-dir",
                        &dir_s,
                        "--interface",
                        "eth0",
                        "--bpffs",
                        &pin,
                        "--mode",
                        "xdp-native",
                    ],
                );
                a.wait_for_log("running;", Duration::from_secs(20));
                Some(a)
            })
            .collect();
        Self {
            lab,
            dir,
            names,
            macs,
            agents,
            _pins: pins,
        }
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .flatten()
            .map(Agent::log_text)
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// The nodes that answer one ARP request for `vip`.
    fn answerers(&self, vip: &str, deadline: &str) -> BTreeSet<String> {
        self.lab
            .arping_within(vip, 1, deadline)
            .iter()
            .map(|m| {
                self.macs
                    .get(m)
                    .cloned()
                    .unwrap_or_else(|| format!("unknown {m}"))
            })
            .collect()
    }

    /// Waits until every VIP is answered by exactly its owner in `owners`.
    fn converge(&self, owners: &BTreeMap<String, String>, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        for (vip, owner) in owners {
            loop {
                let who = self.answerers(vip, "0.2");
                if who == BTreeSet::from([owner.clone()]) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: {vip} answered by {who:?}, expected {owner}\n{}",
                    self.logs()
                );
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for a in self.agents.drain(..).flatten() {
            a.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_elected_node_answers_and_a_killed_owner_is_replaced_within_the_detection_time() {
    if !privileged(
        "the_elected_node_answers_and_a_killed_owner_is_replaced_within_the_detection_time",
    ) {
        return;
    }
    let mut g = Group::start("fo");
    let owners = expected(&g.dir, &g.names);
    assert_eq!(owners.len(), SERVICES);
    g.converge(&owners, Duration::from_secs(5), "at start");

    // Kill the owner of the first VIP (SIGKILL: no goodbye, its pinned XDP program stays).
    let (victim_vip, victim) = owners
        .iter()
        .next()
        .map(|(v, o)| (v.clone(), o.clone()))
        .expect("a VIP");
    let index = g
        .names
        .iter()
        .position(|n| *n == victim)
        .expect("victim index");
    let survivors: Vec<&str> = g.names.iter().copied().filter(|n| *n != victim).collect();
    let after = expected(&g.dir, &survivors);
    let new_owner = after[&victim_vip].clone();
    let killed_at = Instant::now();
    if let Some(mut a) = g.agents[index].take() {
        let _ = a.child.kill();
        let _ = a.child.wait();
    }
    let mut took = None;
    while killed_at.elapsed() < Duration::from_secs(5) {
        if g.answerers(&victim_vip, "0.05") == BTreeSet::from([new_owner.clone()]) {
            took = Some(killed_at.elapsed());
            break;
        }
    }
    let took =
        took.unwrap_or_else(|| panic!("{victim_vip} never moved to {new_owner}\n{}", g.logs()));
    eprintln!("{victim_vip}: {victim} killed, {new_owner} answers after {took:?}");
    // The dead node's own program no longer answers (its lease lapsed): only one MAC replies,
    // and the VIPs owned by survivors did not move.
    for (vip, owner) in &owners {
        if *owner != victim {
            assert_eq!(&after[vip], owner, "{vip} moved needlessly");
        }
    }
    let replies = g.lab.arping(&victim_vip, 3);
    let who: BTreeSet<&str> = replies
        .iter()
        .filter_map(|m| g.macs.get(m).map(String::as_str))
        .collect();
    assert_eq!(
        who,
        BTreeSet::from([new_owner.as_str()]),
        "after the takeover"
    );
    g.converge(&after, Duration::from_secs(2), "after the takeover");

    // A planned stop (SIGTERM) of the new owner: it says goodbye and keeps answering until the
    // last node has taken over, so the probe never finds the VIP unanswered.
    let second = g.names.iter().position(|n| *n == new_owner).expect("index");
    let last: Vec<&str> = survivors
        .iter()
        .copied()
        .filter(|n| *n != new_owner)
        .collect();
    let last_owner = expected(&g.dir, &last)[&victim_vip].clone();
    let stopping = g.agents[second].take().expect("agent");

    let stopped_at = Instant::now();
    let stopper = std::thread::spawn(move || {
        let log = stopping.log.clone();
        stopping.signal(libc::SIGTERM);
        let mut child = stopping;
        let status = child.child.wait();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (status.map(|s| s.success()).unwrap_or(false), text)
    });
    let mut unanswered = 0;
    let mut moved = None;
    while stopped_at.elapsed() < Duration::from_secs(5) {
        let who = g.answerers(&victim_vip, "0.05");
        if who.is_empty() {
            unanswered += 1;
        }
        if who == BTreeSet::from([last_owner.clone()]) {
            moved = Some(stopped_at.elapsed());
            break;
        }
    }
    let (clean, stopped_log) = stopper.join().unwrap_or((false, String::new()));
    assert!(clean, "the stopped agent failed:\n{stopped_log}");
    let moved =
        moved.unwrap_or_else(|| panic!("{victim_vip} never moved to {last_owner}\n{}", g.logs()));
    eprintln!(
        "{victim_vip}: {new_owner} stopped, {last_owner} answers after {moved:?}, {unanswered} probes unanswered"
    );
    assert_eq!(
        unanswered,
        0,
        "a planned stop left {victim_vip} unanswered\nstopped agent:\n{}\nothers:\n{}",
        stopped_log,
        g.logs()
    );
}

#[test]
fn a_partition_lets_both_sides_announce_and_healing_leaves_only_the_owner() {
    if !privileged("a_partition_lets_both_sides_announce_and_healing_leaves_only_the_owner") {
        return;
    }
    let g = Group::start("pt");
    let owners = expected(&g.dir, &g.names);
    g.converge(&owners, Duration::from_secs(5), "at start");
    // Cut node-1 off from the others' heartbeats (both ways); the client still reaches everyone.
    let isolated = 0;
    let others = [1, 2];
    let block = |from: usize, to: usize, verb: &str| {
        g.lab.nodes[from].ns.ip(&[
            "route",
            verb,
            "blackhole",
            &format!("{}/32", g.lab.nodes[to].ipv4),
        ]);
    };
    for o in others {
        block(isolated, o, "add");
        block(o, isolated, "add");
    }
    // node-1 believes it is alone and announces every VIP; the others announce without it.
    let alone = expected(&g.dir, &["node-1"]);
    let rest = expected(&g.dir, &["node-2", "node-3"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    for (vip, owner) in &rest {
        let want: BTreeSet<String> = [owner.clone(), alone[vip].clone()].into();
        loop {
            let who = g.answerers(vip, "0.2");
            if who == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "partitioned: {vip} answered by {who:?}, expected {want:?}\n{}",
                g.logs()
            );
        }
    }
    // Heal: the deterministic owner keeps each VIP and the other side stops.
    for o in others {
        block(isolated, o, "del");
        block(o, isolated, "del");
    }
    g.converge(&owners, Duration::from_secs(3), "after healing");
}
