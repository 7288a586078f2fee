//! Active-active Layer 2 in the lab: three real agents share one dual-stack VIP, 36 clients
//! (a namespace each, the kernel resolving the VIP) are spread over the nodes exactly as the
//! slot table says; when one node's agent is killed, its clients are told the new node's MAC
//! within a fraction of a second and no client of a surviving node changes MAC.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

use bpf_tests::{
    harness::agent::workspace_bin,
    harness::fleet::{self, Fleet},
    harness::group::{Group, nodes_yaml},
    harness::lab::Lab,
    harness::scrape,
    privileged,
};

const CLIENTS: usize = 36;
const VIP4: &str = "10.210.0.200";
const VIP6: &str = "fd00:210::200";

fn config(lab: &Lab) -> String {
    format!(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: shared, namespace: metallb-system}}\n\
         spec:\n  addresses: [10.210.0.200/32, \"fd00:210::200/128\"]\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\n\
         metadata: {{name: spread, namespace: metallb-system, annotations: {{xdplb.io/l2-mode: active-active}}}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec: {{type: LoadBalancer, ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv4, IPv6], ports: [{{port: 80}}]}}\n{}",
        nodes_yaml(lab)
    )
}

/// Waits until every agent hears the two others (until then the first ones share the VIP
/// among fewer nodes than the table the clients are checked against) and a client gets an
/// answer.
fn first_answer(fleet: &Fleet, g: &Group) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let complete = || {
        (0..3).all(|i| {
            scrape::sample(&g.metrics(i), "xdplb_membership_peers_alive", &[]) == Some(2.0)
        })
    };
    while !complete() || fleet.resolve(0, VIP4).is_none() {
        assert!(
            Instant::now() < deadline,
            "the group did not form or nobody answers {VIP4}\n{}",
            g.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until client i resolves `vip` to the node `want[i]`, each: a node still joining has
/// no slots yet, so a client may meet the group a moment early.
fn each_client_resolves(fleet: &Fleet, g: &Group, vip: &str, want: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    for (i, node) in want.iter().enumerate() {
        loop {
            let seen = fleet.resolve(i, vip).and_then(|m| g.macs.get(&m).cloned());
            if seen.as_ref() == Some(node) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "client {i} resolved {vip} to {seen:?}, not {node}\n{}",
                g.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Every node but `victim`.
fn others(g: &Group, victim: usize) -> Vec<&'static str> {
    g.names
        .iter()
        .copied()
        .filter(|n| *n != g.names[victim])
        .collect()
}

#[test]
fn clients_spread_over_three_nodes_and_only_a_dead_nodes_clients_move() {
    if !privileged("clients_spread_over_three_nodes_and_only_a_dead_nodes_clients_move") {
        return;
    }
    let mut g = Group::start_config("aa", &[], config);
    let fleet = Fleet::attach(&g.lab, "aa", CLIENTS);
    let macs = g.macs.clone();
    let name_of = |mac: &Option<String>| {
        mac.as_ref().map(|m| {
            macs.get(m)
                .cloned()
                .unwrap_or_else(|| format!("unknown {m}"))
        })
    };
    // The agents decide one failure timeout after they start: wait for a first answer.
    first_answer(&fleet, &g);
    // Every node answers the shared IPv6 VIP, so every node joins its solicited-node group.
    let group = lb_agent::l2::groups::solicited_node(VIP6.parse().expect("VIP6")).to_string();
    for i in 0..3 {
        assert!(
            g.lab.solicited_groups(i).contains(&group),
            "{} did not join {group}",
            g.names[i]
        );
    }

    let mut before: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for vip in [VIP4, VIP6] {
        let got = fleet.owners(vip, &g.names);
        each_client_resolves(&fleet, &g, vip, &got, Duration::from_secs(5));
        for n in g.names {
            let share = got.iter().filter(|o| *o == n).count() as f64 / CLIENTS as f64;
            eprintln!("{vip}: {n} serves {:.0}% of the clients", share * 100.0);
            assert!(
                (0.20..=0.47).contains(&share),
                "{vip}: {n} serves {share:.2} of the clients"
            );
        }
        before.insert(vip, got);
    }

    // Every node recorded every client; the slots, and the clients answered, add up.
    for vip in [VIP4, VIP6] {
        let sum = |name: &str| -> f64 {
            (0..3)
                .map(|i| {
                    scrape::sample(&g.metrics(i), name, &[("ip", vip)])
                        .unwrap_or_else(|| panic!("{}: no {name} for {vip}", g.names[i]))
                })
                .sum()
        };
        assert_eq!(sum("xdplb_layer2_shared_slots"), 4096.0, "{vip}");
        assert_eq!(
            sum("xdplb_layer2_shared_clients"),
            3.0 * CLIENTS as f64,
            "{vip}"
        );
        assert_eq!(
            sum("xdplb_layer2_shared_clients_answered"),
            CLIENTS as f64,
            "{vip}"
        );
    }
    let maps = g.lab.nodes[0]
        .ns
        .enter(workspace_bin("lb-agent").to_str().expect("path"))
        .args(["maps", "--bpffs"])
        .arg(g.pins(0))
        .output()
        .expect("lb-agent maps");
    let maps = String::from_utf8_lossy(&maps.stdout);
    assert!(maps.contains("leased,shared"), "{maps}");
    let held = before[VIP4].iter().filter(|n| *n == g.names[0]).count();
    assert!(
        maps.contains(&format!("{held} of the {CLIENTS} clients recorded")),
        "{maps}"
    );

    // Linux takes an unsolicited reply only a `locktime` (1 s) after the entry's last update.
    std::thread::sleep(Duration::from_millis(1100));
    let victim = 1;
    let survivors = others(&g, victim);
    let survivor_macs: Vec<String> = g
        .macs
        .iter()
        .filter(|(_, n)| survivors.contains(&n.as_str()))
        .map(|(m, _)| m.clone())
        .collect();
    let everyone: Vec<usize> = (0..CLIENTS).collect();
    let watch = fleet.watch(&everyone);
    let killed_at = SystemTime::now();
    let started = Instant::now();
    g.kill(victim);
    let moving: Vec<(usize, &str)> = [VIP4, VIP6]
        .iter()
        .flat_map(|vip| {
            before[vip]
                .iter()
                .enumerate()
                .filter(|(_, n)| *n == g.names[victim])
                .map(move |(i, _)| (i, *vip))
        })
        .collect();
    assert!(!moving.is_empty(), "the victim served nobody");
    while started.elapsed() < Duration::from_secs(5)
        && moving.iter().any(|(i, vip)| {
            !fleet
                .neighbor(*i, vip)
                .is_some_and(|m| survivor_macs.contains(&m))
        })
    {}
    std::thread::sleep(Duration::from_millis(300));
    let lines: BTreeMap<usize, Vec<String>> = watch.stop().into_iter().collect();

    let mut times = Vec::new();
    for vip in [VIP4, VIP6] {
        let after = fleet.owners(vip, &survivors);
        for i in 0..CLIENTS {
            let now = name_of(&fleet.neighbor(i, vip));
            let history = fleet::changes(&lines[&i], vip, killed_at);
            if before[vip][i] == g.names[victim] {
                assert_eq!(
                    now.as_deref(),
                    Some(after[i].as_str()),
                    "client {i}: {vip} should have moved to {}\n{}",
                    after[i],
                    g.logs()
                );
                let moved = history
                    .iter()
                    .find(|(_, m)| survivor_macs.contains(m))
                    .map(|(t, _)| *t)
                    .unwrap_or_else(|| {
                        panic!("client {i}: no move of {vip} recorded: {history:?}")
                    });
                times.push(moved);
            } else {
                assert_eq!(
                    now.as_deref(),
                    Some(before[vip][i].as_str()),
                    "client {i}: {vip} moved off a surviving node"
                );
                let own = g
                    .macs
                    .iter()
                    .find(|(_, n)| **n == before[vip][i])
                    .map(|(m, _)| m.clone());
                assert!(
                    history.iter().all(|(_, m)| Some(m) == own.as_ref()),
                    "client {i}: {vip} changed MAC although its node lives: {history:?}"
                );
            }
        }
    }
    times.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    eprintln!(
        "{} client entries moved off {}: p50 {p50:?}, max {max:?}",
        times.len(),
        g.names[victim]
    );
    // Detection (180 ms by default) plus one round of notices; generous for a loaded CI box.
    assert!(max < Duration::from_millis(1000), "slowest move {max:?}");

    // The node comes back (its agent restarted, its pinned records kept): it takes its slots
    // back and tells their clients, and the survivors' notices still scheduled for those slots
    // (they repeat for 5 s) are not sent any more: the clients stay with it.
    std::thread::sleep(Duration::from_millis(1100));
    g.start_agent(victim, &[]);
    let back = Instant::now();
    let home =
        |i: usize, vip: &str| name_of(&fleet.neighbor(i, vip)) == Some(before[vip][i].clone());
    while back.elapsed() < Duration::from_secs(5) && !moving.iter().all(|(i, vip)| home(*i, vip)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent_by_survivors = || -> f64 {
        (0..3)
            .filter(|i| *i != victim)
            .flat_map(|i| {
                let text = g.metrics(i);
                [VIP4, VIP6].map(|vip| {
                    scrape::sample(&text, "metallb_layer2_gratuitous_sent", &[("ip", vip)])
                        .unwrap_or(0.0)
                })
            })
            .sum()
    };
    let sent = sent_by_survivors();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        sent_by_survivors(),
        sent,
        "survivors kept telling clients about slots they had handed back"
    );
    for (i, vip) in &moving {
        assert_eq!(
            name_of(&fleet.neighbor(*i, vip)).as_deref(),
            Some(before[*vip][*i].as_str()),
            "client {i}: {vip} did not stay with {} after it came back\n{}",
            g.names[victim],
            g.logs()
        );
    }
}

/// A node cut off (its link down) is dead to the others, which take its slots and tell its
/// clients; it believes itself alone meanwhile, so when the link comes back it has gained
/// nothing by its own count. It must still call its clients back: the others told them to go.
#[test]
fn a_node_cut_off_and_back_calls_its_clients_back() {
    if !privileged("a_node_cut_off_and_back_calls_its_clients_back") {
        return;
    }
    let g = Group::start_config("ab", &[], config);
    let fleet = Fleet::attach(&g.lab, "ab", 24);
    let name_of = |mac: Option<String>| mac.and_then(|m| g.macs.get(&m).cloned());
    let want = fleet.owners(VIP4, &g.names);
    each_client_resolves(&fleet, &g, VIP4, &want, Duration::from_secs(10));
    let cut = 1;
    let theirs: Vec<usize> = (0..want.len())
        .filter(|i| want[*i] == g.names[cut])
        .collect();
    assert!(!theirs.is_empty(), "{} serves nobody", g.names[cut]);
    let wait_for = |what: &str, ok: &dyn Fn(usize) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !theirs.iter().all(|i| ok(*i)) {
            assert!(Instant::now() < deadline, "{what}\n{}", g.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    std::thread::sleep(Duration::from_millis(1100));
    let port = format!("p{}", cut + 1);
    g.lab.segment.ip(&["link", "set", &port, "down"]);
    wait_for("the cut node's clients were not moved", &|i| {
        name_of(fleet.neighbor(i, VIP4)).is_some_and(|n| n != g.names[cut])
    });
    std::thread::sleep(Duration::from_millis(1100));
    g.lab.segment.ip(&["link", "set", &port, "up"]);
    wait_for("the node came back but its clients did not", &|i| {
        name_of(fleet.neighbor(i, VIP4)).as_deref() == Some(g.names[cut])
    });
}

/// Without XDP (the AF_PACKET responder) a VIP is spread by the same table and its requesters
/// are recorded alike: when a node dies, its clients are told the new node's MAC at once.
#[test]
fn with_afpacket_a_dead_nodes_clients_are_told_too() {
    if !privileged("with_afpacket_a_dead_nodes_clients_are_told_too") {
        return;
    }
    const FEW: usize = 12;
    let mut g = Group::start_config(
        "aaf",
        &[
            "--mode",
            "afpacket",
            "--heartbeat-interval",
            "50ms",
            "--failure-timeout",
            "180ms",
        ],
        config,
    );
    let fleet = Fleet::attach(&g.lab, "aaf", FEW);
    first_answer(&fleet, &g);
    let owners = fleet.owners(VIP4, &g.names);
    each_client_resolves(&fleet, &g, VIP4, &owners, Duration::from_secs(10));
    let victim = busiest(&g, &owners);
    kill_and_check_told(&mut g, &fleet, &owners, victim);
}

/// The node that serves the most clients.
fn busiest(g: &Group, owners: &[String]) -> usize {
    (0..3)
        .max_by_key(|n| owners.iter().filter(|o| **o == g.names[*n]).count())
        .unwrap_or(0)
}

/// Kills `victim`'s agent and checks that each of its clients is told its new node's MAC
/// within 3 s, without asking (a client that is not told keeps the dead MAC until its
/// neighbour entry goes stale: tens of seconds).
fn kill_and_check_told(g: &mut Group, fleet: &Fleet, owners: &[String], victim: usize) {
    let macs = g.macs.clone();
    let name_of = |mac: &Option<String>| mac.as_ref().and_then(|m| macs.get(m).cloned());
    let survivors = others(g, victim);
    let after = fleet.owners(VIP4, &survivors);
    std::thread::sleep(Duration::from_millis(1100));
    g.kill(victim);
    let moving: Vec<usize> = (0..owners.len())
        .filter(|i| owners[*i] == g.names[victim])
        .collect();
    assert!(!moving.is_empty(), "{} serves nobody", g.names[victim]);
    let started = Instant::now();
    let told =
        |i: &usize| name_of(&fleet.neighbor(*i, VIP4)).as_deref() == Some(after[*i].as_str());
    while started.elapsed() < Duration::from_secs(3) && !moving.iter().all(told) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in &moving {
        assert!(
            told(i),
            "client {i} was not told {VIP4} moved to {} (it has {:?})\n{}",
            after[*i],
            name_of(&fleet.neighbor(*i, VIP4)),
            g.logs()
        );
    }
    eprintln!(
        "{} clients of {} told within {:?}",
        moving.len(),
        g.names[victim],
        started.elapsed()
    );
}

/// Review finding 9: requests are unauthenticated, and 65,536 of them from made-up senders
/// once pushed every real client out of the nodes' records, so a node taking over told
/// nobody. Twice that many now leave the real clients recorded, and they are told.
#[test]
fn a_flood_of_forged_requesters_leaves_a_dead_nodes_clients_their_notice() {
    if !privileged("a_flood_of_forged_requesters_leaves_a_dead_nodes_clients_their_notice") {
        return;
    }
    const FEW: usize = 12;
    let mut g = Group::start_config("afl", &[], config);
    let fleet = Fleet::attach(&g.lab, "afl", FEW);
    first_answer(&fleet, &g);
    let owners = fleet.owners(VIP4, &g.names);
    each_client_resolves(&fleet, &g, VIP4, &owners, Duration::from_secs(10));
    let sent = g
        .lab
        .client
        .ns
        .within(|| forge_requesters(2 * lb_common::MAX_CLIENTS));
    let throttled: f64 = (0..3)
        .filter_map(|i| {
            scrape::sample(
                &g.metrics(i),
                "xdplb_xdp_frames",
                &[("counter", "clients_throttled")],
            )
        })
        .sum();
    assert!(
        throttled > f64::from(lb_common::MAX_CLIENTS),
        "{sent} forged requests sent, only {throttled} throttled\n{}",
        g.logs()
    );
    let victim = busiest(&g, &owners);
    kill_and_check_told(&mut g, &fleet, &owners, victim);
}

/// Sends `n` ARP requests for the shared VIP, each from another made-up sender address and
/// MAC (the frames' source is the client's own MAC, so the bridge learns nothing new), at
/// about 100,000 a second so that the segment still carries the heartbeats.
fn forge_requesters(n: u32) -> u32 {
    use lb_agent::l2::{afpacket::PacketSocket, iface::Interface};
    let iface = Interface::lookup("eth0").unwrap_or_else(|e| panic!("{e}"));
    let socket = PacketSocket::open(&iface, false).unwrap_or_else(|e| panic!("{e}"));
    let vip: std::net::Ipv4Addr = VIP4.parse().expect("VIP4");
    let mut sent = 0;
    for i in 0..n {
        let [a, b, c, d] = i.to_be_bytes();
        let frame = bpf_tests::datapath::frames::arp(
            false,
            iface.mac,
            bpf_tests::datapath::frames::BROADCAST,
            etherparse::ArpOperation::REQUEST,
            [2, 0xee, a, b, c, d],
            [11, b, c, d],
            [0; 6],
            vip.octets(),
        );
        if socket.send(&frame).is_ok() {
            sent += 1;
        }
        if i % 1_000 == 999 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    sent
}
