//! Layer 2 on nodes with several NICs (issue 15 §2–§4): interfaces followed as they come and
//! go, the election kept to nodes on the VIP's subnet, and a VIP link that loses carrier
//! failing over while the node's heartbeats go on.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use bpf_tests::{
    PinDir,
    harness::{
        agent::{Agent, METRICS},
        group::{Group, allocate, config_dir, config_yaml, expected},
        lab::{Host, Lab},
        netns::mac_str,
        prober::{Prober, takeover},
    },
    privileged,
};

/// The lab's configuration with the pool moved to `range`.
fn with_pool(lab: &Lab, range: &str) -> String {
    config_yaml(lab, "{}").replace("10.210.0.100-10.210.0.150", range)
}

/// The node (of `macs`) that answers one ARP request for `vip` from `host`, if one does.
fn answerer(host: &Host, vip: &str, macs: &BTreeMap<String, usize>) -> Option<usize> {
    host.arping_within(vip, 1, "0.2")
        .first()
        .map(|m| macs.get(m).copied().unwrap_or(usize::MAX))
}

/// §2: a NIC that appears on a running node is answered on within a second, and released
/// cleanly (XDP and its pin gone) when it goes away, while the first NIC keeps answering.
#[test]
fn an_interface_added_later_is_answered_within_a_second() {
    if !privileged("an_interface_added_later_is_answered_within_a_second") {
        return;
    }
    let lab = Lab::new("nic", 1);
    let client2 = lab.second_segment("nicc2");
    let dir = config_dir(&config_yaml(&lab, "{}"));
    allocate(&dir);
    let vip = bpf_tests::harness::group::vip_of(&dir, "default/s0");
    let pins = PinDir::new("nic");
    let ns = &lab.nodes[0].ns;
    let mut agent = Agent::start(
        ns,
        &[
            "run",
            "--node-name",
            "node-1",
            "--config-dir",
            dir.to_str().expect("utf-8"),
            "--bpffs",
            pins.path().to_str().expect("utf-8"),
            "--metrics-addr",
            METRICS,
        ],
    );
    agent.wait_for_log("taking over", Duration::from_secs(20));
    let eth0 = mac_str(&lab.node_mac(0));
    assert_eq!(
        lab.arping(&vip, 1),
        vec![eth0.clone()],
        "{}",
        agent.log_text()
    );
    assert!(client2.arping_within(&vip, 1, "0.3").is_empty());

    lab.plug(0);
    let plugged = Instant::now();
    let eth1 = mac_str(&lab.mac_of(0, "eth1"));
    let mut answered = None;
    while plugged.elapsed() < Duration::from_secs(3) {
        if client2.arping_within(&vip, 1, "0.1") == vec![eth1.clone()] {
            answered = Some(plugged.elapsed());
            break;
        }
    }
    let took = answered.unwrap_or_else(|| {
        panic!(
            "the new NIC was not answered on within 3 s\n{}",
            agent.log_text()
        )
    });
    println!("new NIC answered on after {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "answered on after {took:?}\n{}",
        agent.log_text()
    );

    ns.ip(&["link", "del", "eth1"]);
    agent.wait_for_log(
        "interface gone or no longer chosen; released iface=eth1",
        Duration::from_secs(3),
    );
    let pin = pins
        .path()
        .join(format!("{}eth1", lb_common::LINK_PIN_PREFIX));
    let deadline = Instant::now() + Duration::from_secs(2);
    while pin.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pin.exists(), "{} left behind", pin.display());
    assert_eq!(lab.arping(&vip, 1), vec![eth0], "{}", agent.log_text());
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// §3: three nodes, the third without an address in the pool's subnet: it is never elected,
/// the other two share the VIPs as MetalLB would between them. A pool in no node's subnet
/// falls back to MetalLB's choice among all three.
#[test]
fn a_node_without_the_vips_subnet_is_never_elected() {
    if !privileged("a_node_without_the_vips_subnet_is_never_elected") {
        return;
    }
    let lab = Lab::new("sub", 3);
    let _client2 = lab.second_segment("subc2");
    lab.plug(0);
    lab.plug(1);
    // The agents choose their interfaces: eth0 and eth1 where it is plugged.
    let g = Group::start_on(lab, "sub", &["--exclude-interface", "^eth9$"], |lab| {
        with_pool(lab, "10.212.0.100-10.212.0.150")
    });
    let owners = expected(&g.dir, &["node-1", "node-2"]);
    assert_eq!(owners.len(), 6);
    g.converge(&owners, Duration::from_secs(10), "on the subnet");
    let all = expected(&g.dir, &g.names);
    assert!(
        all.values().any(|n| n == "node-3"),
        "MetalLB's rule alone would have elected node-3 for some VIP: {all:?}"
    );
    for (vip, _) in all.iter().filter(|(_, n)| *n == "node-3") {
        let who = g.answerers(vip, "0.3");
        assert!(!who.contains("node-3"), "{vip}: {who:?}\n{}", g.logs());
    }

    g.write_config(&with_pool(&g.lab, "10.213.0.100-10.213.0.150"));
    g.allocate();
    let routed = expected(&g.dir, &g.names);
    assert!(
        routed.keys().all(|v| v.starts_with("10.213.")),
        "{routed:?}"
    );
    g.converge(&routed, Duration::from_secs(10), "in no node's subnet");
}

/// §4: nodes with two NICs, heartbeats on the first and the VIPs on the second. The owner's
/// VIP link loses carrier: another node answers; the link returns: the VIP comes back once
/// (MetalLB's revertive rule) after the hold-down, without flapping.
#[test]
fn a_vip_link_that_loses_carrier_fails_over_and_its_return_moves_it_back_once() {
    if !privileged("a_vip_link_that_loses_carrier_fails_over_and_its_return_moves_it_back_once") {
        return;
    }
    let lab = Lab::new("cut", 3);
    let client2 = lab.second_segment("cutc2");
    for i in 0..3 {
        lab.plug(i);
    }
    let macs: BTreeMap<String, usize> = (0..3)
        .map(|i| (mac_str(&lab.mac_of(i, "eth1")), i))
        .collect();
    // Both NICs are the agents', the VIPs announced on eth1 only (as MetalLB's
    // L2Advertisement `interfaces` says): with eth1 down the owner still has a link with
    // carrier, just not one the VIP may use.
    let g = Group::start_on(
        lab,
        "cut",
        &["--interface", "eth0", "--interface", "eth1"],
        |lab| {
            config_yaml(lab, "{interfaces: [eth1]}")
                .replace("10.210.0.100-10.210.0.150", "10.212.0.100-10.212.0.150")
        },
    );
    let owners = expected(&g.dir, &g.names);
    let (vip, owner) = owners.iter().next().expect("a VIP");
    let old = g.names.iter().position(|n| n == owner).expect("owner");
    let deadline = Instant::now() + Duration::from_secs(10);
    while answerer(&client2, vip, &macs) != Some(old) {
        assert!(
            Instant::now() < deadline,
            "{vip} never answered by {owner}\n{}",
            g.logs()
        );
    }
    let vip4: [u8; 4] = vip
        .parse::<std::net::Ipv4Addr>()
        .expect("an IPv4 VIP")
        .octets();
    let prober = Prober::start(
        &client2.ns,
        "eth0",
        [10, 212, 0, 1],
        vip4,
        Duration::from_millis(5),
    );
    std::thread::sleep(Duration::from_millis(200));
    let cut = Instant::now();
    g.lab.set_second_link(old, false);
    std::thread::sleep(Duration::from_millis(1500));
    let restored = Instant::now();
    g.lab.set_second_link(old, true);
    std::thread::sleep(Duration::from_millis(2000));
    let replies = prober.finish();

    let old_mac = g.lab.mac_of(old, "eth1");
    let took = takeover(&replies, cut, old_mac)
        .unwrap_or_else(|| panic!("no other node answered after the cut\n{}", g.logs()));
    println!("link cut → new owner after {took:?}");
    let during: BTreeSet<[u8; 6]> = replies
        .iter()
        .filter(|(at, _)| *at >= cut + took && *at < restored)
        .map(|(_, m)| *m)
        .collect();
    assert_eq!(
        during.len(),
        1,
        "one node answers while the link is down: {during:?}"
    );
    assert!(!during.contains(&old_mac));
    // After the return the old owner answers again once its link has stayed up for the
    // hold-down; the new one stops as the old one starts (make before break: both may answer
    // a probe or two), and nothing moves after that.
    let new_mac = *during.iter().next().expect("a new owner");
    let after: Vec<&(Instant, [u8; 6])> =
        replies.iter().filter(|(at, _)| *at >= restored).collect();
    assert!(
        after.iter().all(|(_, m)| *m == new_mac || *m == old_mac),
        "a third node answered after the return"
    );
    let back = after
        .iter()
        .find(|(_, m)| *m == old_mac)
        .map(|(at, _)| *at)
        .unwrap_or_else(|| panic!("the old owner never took its VIP back\n{}", g.logs()));
    assert!(
        back >= restored + lb_agent::l2::links::UP_DELAY - Duration::from_millis(50),
        "taken back {:?} after the link returned, before the hold-down",
        back - restored
    );
    let last_new = after
        .iter()
        .rev()
        .find(|(_, m)| *m == new_mac)
        .map(|(at, _)| *at);
    assert!(
        last_new.is_none_or(|t| t < back + Duration::from_millis(100)),
        "the new owner still answered {:?} after the old one was back: a flap\n{}",
        last_new.map(|t| t - back),
        g.logs()
    );
    assert_eq!(after.last().map(|(_, m)| *m), Some(old_mac));
}

/// §5: with `xdplb.io/l2-preempt: "false"` a client sees its VIP's MAC change once across a
/// failure and the owner's return (MetalLB's rule: twice, measured the same way).
#[test]
fn a_non_revertive_vip_stays_where_it_went_when_its_owner_returns() {
    if !privileged("a_non_revertive_vip_stays_where_it_went_when_its_owner_returns") {
        return;
    }
    use bpf_tests::bench::failover::kill_and_return;
    let sticky = kill_and_return(true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sticky.len(), 2, "MACs seen, non-revertive: {sticky:?}");
    let revertive = kill_and_return(false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        revertive.len(),
        3,
        "MACs seen, MetalLB's rule: {revertive:?}"
    );
    assert_eq!(revertive[0], revertive[2], "back to the owner");
}
