//! Layer 2 failover in the lab: three real agents (`lb-agent run`) on one bridge, the real
//! standalone controller's allocations, real `arping` from the client. Every VIP is answered
//! by exactly the node the election names; when that node's agent is killed, its VIPs move to
//! the next node within a fraction of a second and every other VIP stays where it was; also
//! behind a bridge that snoops MLD, for an IPv6 VIP.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use bpf_tests::{
    harness::group::{Group, SERVICES, expected, nodes_yaml, vip_of},
    harness::lab::Lab,
    privileged,
};

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
    g.kill(index);
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

/// Issue 15 §1: a switch that snoops MLD forwards a solicitation for an IPv6 VIP only to the
/// ports that reported the VIP's solicited-node group, and the kernel reports only the groups
/// of its own addresses: nothing joined the VIPs' groups, so IPv4 VIPs were answered and IPv6
/// ones were not. The owner joins its VIPs' groups (and only it), the next owner joins at
/// takeover, and a node the VIP leaves leaves the group.
#[test]
fn an_ipv6_vip_is_answered_through_a_bridge_that_snoops_mld() {
    if !privileged("an_ipv6_vip_is_answered_through_a_bridge_that_snoops_mld") {
        return;
    }
    let lab = Lab::new("mld", 3);
    lab.snoop_multicast();
    let mut g = Group::start_on(lab, "mld", &[], |lab| {
        format!(
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: v6, namespace: metallb-system}}\n\
             spec: {{addresses: [\"fd00:210::2:200/125\"]}}\n---\n\
             apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {{name: l2, namespace: metallb-system}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: web6, namespace: default}}\n\
             spec: {{type: LoadBalancer, ipFamilies: [IPv6], ipFamilyPolicy: SingleStack, ports: [{{port: 80}}]}}\n{}",
            nodes_yaml(lab)
        )
    });
    let vip = vip_of(&g.dir, "default/web6");
    let group = lb_agent::l2::groups::solicited_node(vip.parse().expect("an IPv6 VIP")).to_string();
    let index = |name: &str| g.names.iter().position(|n| *n == name).expect("a node");
    let answered_by = |g: &Group, want: &str, within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            let who: Vec<String> = g
                .lab
                .ndisc6_all(&vip, 200)
                .iter()
                .filter_map(|m| g.macs.get(m).cloned())
                .collect();
            if who == [want.to_owned()] {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{vip} answered by {who:?}, not {want}\n{}",
                g.logs()
            );
        }
    };
    let holders = |g: &Group| -> Vec<&str> {
        (0..3)
            .filter(|i| g.lab.solicited_groups(*i).contains(&group))
            .map(|i| g.names[i])
            .collect()
    };

    let owner = expected(&g.dir, &g.names)[&vip].clone();
    answered_by(&g, &owner, Duration::from_secs(10));
    assert_eq!(
        holders(&g),
        [owner.as_str()],
        "only the owner joins {group}"
    );
    assert_eq!(
        g.lab.group_ports(&group),
        BTreeSet::from([format!("p{}", index(&owner) + 1)]),
        "the bridge learnt the owner's report"
    );

    // The owner dies: the next one joins before it answers.
    let victim = index(&owner);
    g.kill(victim);
    let survivors: Vec<&str> = g.names.iter().copied().filter(|n| *n != owner).collect();
    let next = expected(&g.dir, &survivors)[&vip].clone();
    answered_by(&g, &next, Duration::from_secs(5));
    assert!(
        holders(&g).contains(&next.as_str()),
        "{next} did not join {group}"
    );

    // The owner returns and takes its VIP back: the interim owner leaves the group.
    g.restart(victim);
    answered_by(&g, &owner, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(3);
    while holders(&g) != [owner.as_str()] {
        assert!(
            Instant::now() < deadline,
            "{group} held by {:?} after the VIP went back to {owner}",
            holders(&g)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
