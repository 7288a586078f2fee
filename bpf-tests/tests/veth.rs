//! The real agent in a node namespace, answering real `arping` and `ndisc6` from a client
//! namespace over a veth pair: native XDP, generic XDP and the AF_PACKET fallback; the VIP
//! serving TCP through `xdplb0`; a SIGKILL + restart under load; and `bpftool` on the pins.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use bpf_tests::{
    PinDir,
    harness::agent::Agent,
    harness::netns::{Link, mac_str},
    privileged,
};
use lb_agent::l2::maps::VipMaps;
use lb_common::Counter;

const VIP4: &str = "10.200.0.100";
const VIP6: &str = "fd00:200::100";
const NOT_VIP4: &str = "10.200.0.55";
const NOT_VIP6: &str = "fd00:200::55";

const VIPS: &str = "10.200.0.100,fd00:200::100";

/// The client resolves both VIPs to the node's MAC and nothing answers for the non-VIPs.
fn assert_answers(link: &Link, agent: &Agent) {
    let mac = mac_str(&link.node_mac());
    let replies = link.arping(VIP4, 3);
    assert_eq!(
        replies,
        vec![mac.clone(); 3],
        "arping {VIP4}\n{}",
        agent.log_text()
    );
    assert_eq!(
        link.ndisc6(VIP6),
        Some(mac),
        "ndisc6 {VIP6}\n{}",
        agent.log_text()
    );
    assert!(
        link.arping(NOT_VIP4, 1).is_empty(),
        "someone answered for {NOT_VIP4}"
    );
    assert_eq!(
        link.ndisc6(NOT_VIP6),
        None,
        "someone answered for {NOT_VIP6}"
    );
}

/// A TCP connection from the client to the VIP reaches a listener in the node namespace: the
/// VIP is local there (on `xdplb0`) although no interface facing the client carries it.
fn assert_vip_serves_tcp(link: &Link, vip: &'static str) {
    let listener = link
        .node
        .within(move || TcpListener::bind((vip, 18080)).expect("bind the VIP on the node"));
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.write_all(b"served by the owner").expect("write");
    });
    let got = link.client.within(move || {
        let addr = (vip, 18080u16);
        let mut stream = TcpStream::connect(addr).expect("connect to the VIP");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = String::new();
        stream.read_to_string(&mut buf).expect("read");
        buf
    });
    server.join().expect("server thread");
    assert_eq!(got, "served by the owner");
}

fn xdp_replies(pins: &PinDir) -> (u64, u64) {
    let c = VipMaps::open_pinned(pins.path())
        .expect("open pinned maps")
        .counters()
        .expect("counters");
    (
        c.get(Counter::ArpReplies),
        c.get(Counter::NdpAdvertisements),
    )
}

#[test]
fn native_xdp_answers_arping_and_ndisc6_for_vips_only_and_withdraws_on_sigterm() {
    if !privileged("native_xdp_answers_arping_and_ndisc6_for_vips_only") {
        return;
    }
    let link = Link::new("nat");
    let (pins, pass_pins) = (PinDir::new("nat"), PinDir::new("natpass"));
    link.pass_on_client(&pass_pins);
    let agent = Agent::announce(
        &link.node,
        &link.node_if,
        VIPS,
        pins.path(),
        &["--mode", "xdp-native"],
    );
    assert!(
        agent.log_text().contains("mode=xdp native"),
        "{}",
        agent.log_text()
    );

    assert_answers(&link, &agent);
    let (arp, na) = xdp_replies(&pins);
    assert!(
        arp >= 3 && na >= 1,
        "replies came from XDP: arp={arp} na={na}"
    );
    assert_vip_serves_tcp(&link, VIP4);
    assert_vip_serves_tcp(&link, VIP6);

    agent.stop();
    assert!(
        link.arping(VIP4, 1).is_empty(),
        "still answered after withdrawal"
    );
    assert!(
        std::fs::read_dir(pins.path())
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "pins left after a clean withdrawal"
    );
    let out = link
        .node
        .exec("ip")
        .args(["link", "show", "xdplb0"])
        .output()
        .expect("ip");
    assert!(!out.status.success(), "xdplb0 left behind after withdrawal");
}

#[test]
fn generic_xdp_answers_without_a_program_on_the_peer() {
    if !privileged("generic_xdp_answers_without_a_program_on_the_peer") {
        return;
    }
    let link = Link::new("gen");
    let pins = PinDir::new("gen");
    let agent = Agent::announce(
        &link.node,
        &link.node_if,
        VIPS,
        pins.path(),
        &["--mode", "xdp-generic"],
    );
    assert!(
        agent.log_text().contains("mode=xdp generic"),
        "{}",
        agent.log_text()
    );
    assert_answers(&link, &agent);
    let (arp, na) = xdp_replies(&pins);
    assert!(
        arp >= 3 && na >= 1,
        "replies came from XDP: arp={arp} na={na}"
    );
    agent.stop();
}

#[test]
fn afpacket_fallback_answers_the_same() {
    if !privileged("afpacket_fallback_answers_the_same") {
        return;
    }
    let link = Link::new("afp");
    let pins = PinDir::new("afp");
    let agent = Agent::announce(
        &link.node,
        &link.node_if,
        VIPS,
        pins.path(),
        &["--mode", "afpacket"],
    );
    assert!(agent.log_text().contains("AF_PACKET responder running"));
    assert_answers(&link, &agent);
    assert!(
        !pins.path().join("vip4").exists(),
        "afpacket mode must not load XDP"
    );
    assert_vip_serves_tcp(&link, VIP4);
    agent.stop();
}

/// Parses arping's summary: (transmitted, received).
fn arping_summary(stdout: &str) -> (u32, u32) {
    let line = stdout
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no arping summary in:\n{stdout}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn sigkill_and_restart_loses_no_reply() {
    if !privileged("sigkill_and_restart_loses_no_reply") {
        return;
    }
    let link = Link::new("rst");
    let (pins, pass_pins) = (PinDir::new("rst"), PinDir::new("rstpass"));
    link.pass_on_client(&pass_pins);
    let announce = || {
        Agent::announce(
            &link.node,
            &link.node_if,
            VIPS,
            pins.path(),
            &["--mode", "xdp-native"],
        )
    };
    let mut agent = announce();

    // 150 requests, one every 40 ms (6 s), while the agent is killed and started again. Each
    // request waits 40 ms for its reply: XDP answers in microseconds, and the margin keeps a
    // busy CI machine from turning a late read into a "lost" reply.
    let arping = link
        .client
        .exec("arping")
        .args(["-c", "150", "-W", "0.04", "-I", &link.client_if, VIP4])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("arping");
    std::thread::sleep(Duration::from_millis(500));
    agent.signal(libc::SIGKILL);
    let _ = agent.child.wait();
    let restarted = announce();
    assert!(
        restarted.log_text().contains("adopted pinned XDP link"),
        "the restarted agent must take over the pinned link:\n{}",
        restarted.log_text()
    );
    let out = arping.wait_with_output().expect("arping finished");
    let (sent, received) = arping_summary(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(sent, 150);
    assert_eq!(received, sent, "replies lost across SIGKILL + restart");
    restarted.stop();
}

#[test]
fn bpftool_and_lb_agent_maps_show_the_announced_vips() {
    if !privileged("bpftool_and_lb_agent_maps_show_the_announced_vips") {
        return;
    }
    let link = Link::new("bpt");
    let pins = PinDir::new("bpt");
    let agent = Agent::announce(
        &link.node,
        &link.node_if,
        VIPS,
        pins.path(),
        &["--mode", "xdp-generic"],
    );
    let mac = link.node_mac();
    let hex = |bytes: &[u8]| {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };

    let dump = |map: &str| {
        let out = Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(pins.path().join(map))
            .output()
            .expect("bpftool");
        assert!(
            out.status.success(),
            "bpftool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let v4 = dump("vip4");
    assert!(v4.contains(&hex(&[10, 200, 0, 100])), "vip4 dump:\n{v4}");
    assert!(
        v4.contains(&hex(&mac)),
        "vip4 dump lacks the owner MAC:\n{v4}"
    );
    let v6 = dump("vip6");
    let vip6: std::net::Ipv6Addr = VIP6.parse().expect("ipv6");
    assert!(v6.contains(&hex(&vip6.octets()[..8])), "vip6 dump:\n{v6}");

    let prog = Command::new("bpftool")
        .args(["prog", "show", "pinned"])
        .arg(pins.path().join("xdp_l2"))
        .output()
        .expect("bpftool prog show");
    assert!(String::from_utf8_lossy(&prog.stdout).contains("xdp_l2"));

    // Two requests for VIP4: the per-VIP counters must show them.
    assert_eq!(link.arping(VIP4, 2).len(), 2, "VIP4 unanswered");
    let maps = link
        .node
        .enter(
            bpf_tests::harness::agent::agent_bin()
                .to_str()
                .expect("utf-8"),
        )
        .args(["maps", "--bpffs"])
        .arg(pins.path())
        .output()
        .expect("lb-agent maps");
    let text = String::from_utf8_lossy(&maps.stdout);
    assert!(
        maps.status.success(),
        "lb-agent maps failed: {}",
        String::from_utf8_lossy(&maps.stderr)
    );
    for needle in [VIP4, VIP6, &link.node_if, &mac_str(&mac), "links: veth-n"] {
        assert!(
            text.contains(needle),
            "lb-agent maps lacks {needle:?}:\n{text}"
        );
    }
    let row: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("per VIP"))
        .find(|l| l.split_whitespace().next() == Some(VIP4))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let count = |i: usize| row.get(i).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    assert!(
        count(1) >= 2 && count(2) >= 2,
        "per-VIP requests/replies for {VIP4}: {row:?}\n{text}"
    );
    agent.stop();
}

#[test]
fn auto_mode_falls_back_to_generic_where_native_xdp_is_refused() {
    if !privileged("auto_mode_falls_back_to_generic_where_native_xdp_is_refused") {
        return;
    }
    // macvlan has no native XDP support: the driver-mode attach fails and auto mode must
    // settle on generic XDP, which still answers real traffic.
    let link = Link::new("mvl");
    link.node.ip(&[
        "link",
        "add",
        "mv0",
        "link",
        &link.node_if,
        "type",
        "macvlan",
        "mode",
        "bridge",
    ]);
    link.node.ip(&["link", "set", "mv0", "up"]);
    let mac = link.node.within(|| {
        lb_agent::l2::iface::Interface::lookup("mv0")
            .unwrap_or_else(|e| panic!("{e}"))
            .mac
    });
    let pins = PinDir::new("mvl");
    let agent = Agent::announce(&link.node, "mv0", VIP4, pins.path(), &[]);
    assert!(
        agent.log_text().contains("mode=xdp generic"),
        "{}",
        agent.log_text()
    );
    assert_eq!(
        link.arping(VIP4, 2),
        vec![mac_str(&mac); 2],
        "{}",
        agent.log_text()
    );
    agent.stop();
}

#[test]
fn auto_mode_falls_back_to_afpacket_when_xdp_cannot_load() {
    if !privileged("auto_mode_falls_back_to_afpacket_when_xdp_cannot_load") {
        return;
    }
    // A pin directory outside any bpf filesystem: XDP cannot be set up, so auto mode must
    // answer from the AF_PACKET responder and say so.
    let link = Link::new("nob");
    let not_bpffs = std::env::temp_dir().join(bpf_tests::unique("not-bpffs"));
    let agent = Agent::announce(&link.node, &link.node_if, VIPS, &not_bpffs, &[]);
    let log = agent.log_text();
    assert!(log.contains("not on a bpf filesystem"), "{log}");
    assert!(log.contains("AF_PACKET responder running"), "{log}");
    assert_answers(&link, &agent);
    agent.stop();
    let _ = std::fs::remove_dir_all(&not_bpffs);
}

#[test]
fn explicit_xdp_mode_fails_loudly_instead_of_falling_back() {
    if !privileged("explicit_xdp_mode_fails_loudly_instead_of_falling_back") {
        return;
    }
    let link = Link::new("xfl");
    let not_bpffs = std::env::temp_dir().join(bpf_tests::unique("not-bpffs"));
    let out = link
        .node
        .enter(
            bpf_tests::harness::agent::agent_bin()
                .to_str()
                .expect("utf-8"),
        )
        .args([
            "announce",
            "--interface",
            &link.node_if,
            "--vip",
            VIP4,
            "--mode",
            "xdp",
            "--bpffs",
        ])
        .arg(&not_bpffs)
        .output()
        .expect("run lb-agent");
    let _ = std::fs::remove_dir_all(&not_bpffs);
    assert!(!out.status.success(), "--mode xdp must not fall back");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not on a bpf filesystem"), "{err}");
}
