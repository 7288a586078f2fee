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
