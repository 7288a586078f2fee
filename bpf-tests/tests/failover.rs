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

#[test]
fn the_elected_node_answers_and_a_killed_owner_is_replaced_within_the_detection_time() {
    if !privileged(
        "the_elected_node_answers_and_a_killed_owner_is_replaced_within_the_detection_time",
    ) {
        return;
    }
    let lab = Lab::new("fo", 3);
    let dir = config_dir(&lab);
    allocate(&dir);
    let names = ["node-1", "node-2", "node-3"];
    let macs: BTreeMap<String, String> = (0..3)
        .map(|i| (mac_str(&lab.node_mac(i)), names[i].to_owned()))
        .collect();
    let pins: Vec<PinDir> = (0..3).map(|i| PinDir::new(&format!("fo{i}"))).collect();
    let dir_s = dir.to_str().expect("utf-8").to_owned();
    let mut agents: Vec<Option<Agent>> = (0..3)
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

    let owners = expected(&dir, &names);
    assert_eq!(owners.len(), SERVICES);
    let logs = |agents: &[Option<Agent>]| -> String {
        agents
            .iter()
            .flatten()
            .map(Agent::log_text)
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    // Every VIP is answered by its elected owner, and only by it.
    let deadline = Instant::now() + Duration::from_secs(5);
    for (vip, owner) in &owners {
        loop {
            let replies = lab.arping(vip, 1);
            let who: Vec<&str> = replies
                .iter()
                .filter_map(|m| macs.get(m).map(String::as_str))
                .collect();
            if who == [owner.as_str()] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{vip}: answered by {who:?}, expected {owner}\n{}",
                logs(&agents)
            );
        }
    }

    // Kill the owner of the first VIP (SIGKILL: no goodbye, its pinned XDP program stays).
    let (victim_vip, victim) = owners
        .iter()
        .next()
        .map(|(v, o)| (v.clone(), o.clone()))
        .expect("a VIP");
    let index = names
        .iter()
        .position(|n| *n == victim)
        .expect("victim index");
    let survivors: Vec<&str> = names.iter().copied().filter(|n| *n != victim).collect();
    let after = expected(&dir, &survivors);
    let killed_at = Instant::now();
    if let Some(mut a) = agents[index].take() {
        let _ = a.child.kill();
        let _ = a.child.wait();
    }
    let new_owner = after[&victim_vip].clone();
    let mut took = None;
    while killed_at.elapsed() < Duration::from_secs(5) {
        let replies = lab.arping_within(&victim_vip, 1, "0.05");
        let who: Vec<&str> = replies
            .iter()
            .filter_map(|m| macs.get(m).map(String::as_str))
            .collect();
        if who == [new_owner.as_str()] {
            took = Some(killed_at.elapsed());
            break;
        }
    }
    let took = took
        .unwrap_or_else(|| panic!("{victim_vip} never moved to {new_owner}\n{}", logs(&agents)));
    eprintln!("{victim_vip}: {victim} killed, {new_owner} answers after {took:?}");
    // The dead node's own program no longer answers (its lease lapsed): only one MAC replies.
    let replies = lab.arping(&victim_vip, 3);
    let who: BTreeSet<&str> = replies
        .iter()
        .filter_map(|m| macs.get(m).map(String::as_str))
        .collect();
    assert_eq!(
        who,
        BTreeSet::from([new_owner.as_str()]),
        "after the takeover"
    );
    // VIPs owned by survivors did not move.
    for (vip, owner) in &owners {
        if *owner != victim {
            assert_eq!(&after[vip], owner, "{vip} moved needlessly");
            let replies = lab.arping(vip, 1);
            assert_eq!(
                replies
                    .iter()
                    .filter_map(|m| macs.get(m))
                    .collect::<Vec<_>>(),
                [owner]
            );
        }
    }
    for a in agents.into_iter().flatten() {
        a.stop();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
