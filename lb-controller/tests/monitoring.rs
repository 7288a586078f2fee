//! The alerting rules (deploy/monitoring/): the real `promtool` checks them and runs their
//! unit tests (an input series for every alert, when it must and must not fire), and the
//! committed PrometheusRule holds exactly the rule file's groups.
use std::{path::Path, process::Command};

mod common;
use common::required;

fn monitoring() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

fn promtool(args: &[&str]) -> Option<(bool, String)> {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring())
        .output();
    match out {
        Ok(o) => Some((
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )),
        Err(e) => {
            assert!(!required(), "promtool: {e} (cargo xtask setup installs it)");
            eprintln!("skipped: no promtool ({e})");
            None
        }
    }
}

#[test]
fn promtool_checks_the_rules_and_every_alert_fires_as_tested() {
    let Some((ok, out)) = promtool(&["check", "rules", "rules.yaml"]) else {
        return;
    };
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 14 rules found"), "{out}");
    let Some((ok, out)) = promtool(&["test", "rules", "rules.test.yaml"]) else {
        return;
    };
    assert!(ok, "{out}");
    // Every alert has a test that expects it to fire.
    let rules = std::fs::read_to_string(monitoring().join("rules.yaml")).expect("rules.yaml");
    let tests = std::fs::read_to_string(monitoring().join("rules.test.yaml")).expect("tests");
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n    exp_alerts:\n    - exp_labels"
            )),
            "no test sees {alert} fire"
        );
    }
}

#[test]
fn the_prometheus_rule_holds_the_rule_files_groups() {
    let rules = std::fs::read_to_string(monitoring().join("rules.yaml")).expect("rules.yaml");
    let committed =
        std::fs::read_to_string(monitoring().join("prometheusrule.yaml")).unwrap_or_default();
    let rendered = lb_controller::monitoring::prometheus_rule(&rules).expect("render");
    assert!(
        committed == rendered,
        "deploy/monitoring/prometheusrule.yaml is stale: run `cargo xtask crds` and commit it"
    );
}
