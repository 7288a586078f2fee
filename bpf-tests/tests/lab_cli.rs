//! `cargo xtask lab up|status|down` (the `xdplb-lab` binary): up leaves a working lab behind
//! (Layer 2 answered, the router's ECMP route over the three nodes), down removes every
//! namespace and process it started.
use std::{path::Path, process::Command};

use bpf_tests::privileged;

fn lab(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xdplb-lab"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("run xdplb-lab");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lab_up_serves_the_example_vips_and_lab_down_leaves_nothing_behind() {
    if !privileged("lab_up_serves_the_example_vips_and_lab_down_leaves_nothing_behind") {
        return;
    }
    let dir = std::env::temp_dir().join(bpf_tests::unique("xdplb-lab-test"));
    let (ok, text) = lab(&dir, &["up"]);
    let state: serde_json::Value = std::fs::read_to_string(dir.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    let client = state["client"].as_str().unwrap_or_default().to_owned();
    let pids: Vec<u64> = state["processes"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["pid"].as_u64()).collect())
        .unwrap_or_default();
    // Whatever happens below, take the lab down.
    let answered = ok
        && Command::new("ip")
            .args([
                "netns", "exec", &client, "arping", "-c", "3", "-w", "3", "-I", "eth0",
            ])
            .arg("10.210.0.100")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("bytes from"))
            .unwrap_or(false);
    // The router (FRR in the client's namespace) learns the routed Service from all three.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let routed = loop {
        let route = Command::new("ip")
            .args([
                "netns",
                "exec",
                &client,
                "ip",
                "route",
                "show",
                "198.51.100.10",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if !ok || route.matches("nexthop via").count() == 3 {
            break route;
        }
        if std::time::Instant::now() > deadline {
            break route;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let (status_ok, status) = lab(&dir, &["status"]);
    let (down_ok, down) = lab(&dir, &["down"]);
    assert!(ok, "lab up failed:\n{text}");
    assert_eq!(
        pids.len(),
        7,
        "controller, three agents, FRR's zebra, bgpd and bfdd: {state}"
    );
    assert!(answered, "10.210.0.100 unanswered in the lab");
    assert_eq!(routed.matches("nexthop via").count(), 3, "{routed}");
    assert!(
        status_ok && status.matches("running").count() >= 7,
        "{status}"
    );
    assert!(down_ok, "lab down failed:\n{down}");
    let left = netns_list();
    for key in ["segment", "client"] {
        let ns = state[key].as_str().unwrap_or("?");
        assert!(!left.contains(ns), "{ns} left behind:\n{left}");
    }
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || !std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .map(|c| c.contains("lb-") || c.contains("/usr/lib/frr/"))
                    .unwrap_or(false),
            "pid {pid} still runs"
        );
    }
    assert!(!dir.join("state.json").exists());
    // Down again is harmless.
    assert!(lab(&dir, &["down"]).0);
}
