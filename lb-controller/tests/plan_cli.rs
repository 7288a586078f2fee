//! `lb-controller plan` through the binary: allocation in input order, kept status addresses,
//! namespace-selected pools, dual-stack, annotations, and the output formats.
use std::process::Command;

fn plan(args: &[&str]) -> (i32, String) {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO_BIN_EXE_lb-controller"))
        .arg("plan")
        .arg(format!("{dir}/tests/plan-pools.yaml"))
        .arg(format!("{dir}/tests/plan-services.yaml"))
        .args(args)
        .output()
        .expect("run lb-controller");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn plan_prints_each_served_service_with_its_addresses_or_why_not() {
    let (code, out) = plan(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![
            "default/web: 10.0.0.0 (pool pool-a)",
            "default/dual: 10.0.0.1,fd00::10 (pool pool-a) [layer2 active-active]",
            "team/api: 10.0.5.0 (pool gold)",
            "default/kept: 10.0.0.200 (pool pool-a)",
            "default/asks: pending: spec.loadBalancerIP and metallb.io/loadBalancerIPs are both set",
        ]
    );
}

#[test]
fn plan_speaks_json_and_yaml() {
    let (code, json) = plan(&["--output", "json"]);
    assert_eq!(code, 0);
    let value: serde_json::Value = serde_json::from_str(&json).expect("plan JSON parses");
    assert_eq!(value[2]["service"], "team/api");
    assert_eq!(value[2]["pool"], "gold");
    assert_eq!(value[1]["l2Mode"], "active-active");
    assert!(
        value[2].get("l2Mode").is_none(),
        "MetalLB's mode is not shown"
    );
    assert_eq!(
        value[4]["pending"],
        "spec.loadBalancerIP and metallb.io/loadBalancerIPs are both set"
    );
    let (code, yaml) = plan(&["--output", "yaml"]);
    assert_eq!(code, 0);
    assert!(yaml.contains("service: default/kept"), "{yaml}");
}

#[test]
fn another_load_balancer_class_is_served_only_when_asked_for() {
    let (_, out) = plan(&["--lb-class", "example.com/other"]);
    assert_eq!(out.trim(), "default/other-class: 10.0.0.0 (pool pool-a)");
}

#[test]
fn the_standalone_example_the_demo_runs_is_valid_and_plans_as_documented() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/standalone");
    let out = Command::new(env!("CARGO_BIN_EXE_lb-controller"))
        .args(["plan", example])
        .output()
        .expect("run lb-controller");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "default/api: 198.51.100.10 (pool routed)\n\
         default/web: 10.210.0.100,fd00:210::100 (pool demo)\n\
         default/dns: 10.210.0.105 (pool demo)\n\
         default/shop: 10.210.0.101,fd00:210::101 (pool demo) [layer2 active-active]\n"
    );
}
