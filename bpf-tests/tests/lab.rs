//! The lab itself: every host reaches every other over the bridge, and an agent on one node
//! answers the client through it with native XDP.
use bpf_tests::{
    PinDir, harness::agent::Agent, harness::lab::Lab, harness::netns::mac_str, privileged,
};

#[test]
fn a_three_node_lab_is_one_l2_segment_and_xdp_answers_across_it() {
    if !privileged("a_three_node_lab_is_one_l2_segment_and_xdp_answers_across_it") {
        return;
    }
    let lab = Lab::new("lab", 3);
    for node in &lab.nodes {
        let out = lab
            .client
            .ns
            .exec("ping")
            .args(["-c", "1", "-W", "2", &node.ipv4])
            .output()
            .expect("ping");
        assert!(
            out.status.success(),
            "client cannot reach {}: {}{}",
            node.ipv4,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pins = PinDir::new("labagent");
    let agent = Agent::announce(
        &lab.nodes[1].ns,
        "eth0",
        "10.210.0.100",
        pins.path(),
        &["--mode", "xdp-native"],
    );
    assert_eq!(
        lab.arping("10.210.0.100", 2),
        vec![mac_str(&lab.node_mac(1)); 2],
        "{}",
        agent.log_text()
    );
    agent.stop();
}

/// Issue 15 §2: without `--interface` the agent chooses the interfaces that are up, Ethernet
/// and addressed, as MetalLB does, but not the CNI's bridges and tunnels (nor what
/// `--exclude-interface` adds): on a node with `cni0` and `flannel.1` beside its uplink, XDP
/// goes on the uplink and on a second NIC only.
#[test]
fn the_agent_leaves_cni_and_runtime_devices_alone() {
    use std::time::Duration;

    use bpf_tests::harness::{
        agent::METRICS,
        group::{allocate, config_dir, config_yaml},
    };
    if !privileged("the_agent_leaves_cni_and_runtime_devices_alone") {
        return;
    }
    let lab = Lab::new("ifx", 1);
    let ns = &lab.nodes[0].ns;
    ns.ip(&["link", "add", "cni0", "type", "bridge"]);
    ns.ip(&["addr", "add", "10.244.0.1/24", "dev", "cni0"]);
    ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "dev",
        "eth0",
        "dstport",
        "8472",
    ]);
    ns.ip(&["addr", "add", "10.244.0.0/32", "dev", "flannel.1"]);
    // A second NIC and one the user excludes: veth pairs whose other ends have no address.
    for (name, addr) in [("ens9", "192.0.2.9/24"), ("extra", "198.51.100.9/24")] {
        let peer = format!("{name}p");
        ns.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
        ns.ip(&["addr", "add", addr, "dev", name]);
        ns.ip(&["link", "set", &peer, "up"]);
    }
    for dev in ["cni0", "flannel.1", "ens9", "extra"] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    let dir = config_dir(&config_yaml(&lab, "{}"));
    allocate(&dir);
    let pins = PinDir::new("ifx");
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
            "--exclude-interface",
            "^extra$",
        ],
    );
    for iface in ["ens9", "eth0"] {
        agent.wait_for_log(
            &format!("XDP responder attached iface={iface}"),
            Duration::from_secs(20),
        );
    }
    let log = agent.log_text();
    assert!(
        log.contains(r#"interfaces=["ens9", "eth0"]"#),
        "interfaces chosen:\n{log}"
    );
    for dev in ["cni0", "flannel.1", "extra"] {
        let out = ns
            .exec("ip")
            .args(["-d", "link", "show", "dev", dev])
            .output()
            .expect("ip link");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("xdp"), "XDP on {dev}:\n{text}");
    }
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
