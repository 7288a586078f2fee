//! The alerting rules with a real Prometheus (Debian's), in the lab's client namespace,
//! scraping the real standalone controller and three real agents: a pool runs out and
//! `MetalLBAddressPoolExhausted` fires, an owner is killed and `XdplbFailover` fires, seen
//! through Prometheus' HTTP API. The rules are deploy/monitoring/rules.yaml with their `for:`
//! durations cut to zero (promtool's unit tests hold those), so the test takes seconds.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bpf_tests::{
    harness::{
        agent::{Controller, workspace_bin},
        group::{self, Group},
        scrape,
    },
    peers::frr::Frr,
    privileged, unique,
};
use serde_json::Value;

/// Where Prometheus and the controller listen, inside the client's namespace.
const PROMETHEUS: &str = "127.0.0.1:9099";
const CONTROLLER: &str = "127.0.0.1:7473";

/// Prometheus, stopped and reaped when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pool of four addresses for six Services: exhausted.
fn small_pool(lab: &bpf_tests::harness::lab::Lab) -> String {
    let mut yaml = String::from(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lab, namespace: metallb-system}\n\
         spec:\n  addresses: [10.210.0.100-10.210.0.103]\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: lab, namespace: metallb-system}\nspec: {}\n",
    );
    yaml.push_str(&group::nodes_yaml(lab));
    for s in 0..group::SERVICES {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{s}, namespace: default}}\nspec: {{type: LoadBalancer, ports: [{{port: 80}}]}}\n"
        ));
    }
    yaml
}

/// deploy/monitoring/rules.yaml with every `for:` at zero, as JSON (a YAML document).
fn rules_now(out: &Path) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring/rules.yaml");
    let text = std::fs::read_to_string(&path).expect("rules.yaml");
    let mut rules: Value = serde_saphyr::from_str(&text).expect("rules.yaml parses");
    for group in rules["groups"].as_array_mut().into_iter().flatten() {
        for rule in group["rules"].as_array_mut().into_iter().flatten() {
            if let Some(r) = rule.as_object_mut() {
                r.remove("for");
            }
        }
    }
    std::fs::write(out, rules.to_string()).expect("write rules");
}

/// The firing alerts: name → their label sets.
fn firing(g: &Group) -> BTreeMap<String, Vec<Value>> {
    let addr: SocketAddr = PROMETHEUS.parse().expect("address");
    let Ok((200, body)) = scrape::get(&g.lab.client.ns, addr, "/api/v1/alerts") else {
        return BTreeMap::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for a in v["data"]["alerts"].as_array().into_iter().flatten() {
        if a["state"] == "firing" {
            let name = a["labels"]["alertname"].as_str().unwrap_or("").to_owned();
            out.entry(name).or_default().push(a["labels"].clone());
        }
    }
    out
}

/// Each scrape target's health and last error, for a failure's message.
fn targets(g: &Group) -> String {
    let addr: SocketAddr = PROMETHEUS.parse().expect("address");
    match scrape::get(&g.lab.client.ns, addr, "/api/v1/targets") {
        Ok((200, body)) => {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            v["data"]["activeTargets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| format!("{} {} {}", t["scrapeUrl"], t["health"], t["lastError"]))
                .collect::<Vec<_>>()
                .join("; ")
        }
        other => format!("Prometheus did not answer: {other:?}"),
    }
}

fn wait_for(g: &Group, what: &str, check: impl Fn(&BTreeMap<String, Vec<Value>>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = firing(g);
        if check(&now) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: firing {now:?}\ntargets: {}\n{}",
            targets(g),
            g.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Prometheus in the client's namespace, its files under `work`, scraping the controller at
/// [`CONTROLLER`] and the group's agents every second, with the rules of [`rules_now`].
fn start_prometheus(g: &Group, work: &Path) -> Prometheus {
    std::fs::create_dir_all(work).expect("prometheus dir");
    rules_now(&work.join("rules.json"));
    let agents: Vec<String> = g
        .lab
        .nodes
        .iter()
        .map(|n| format!("'{}:7472'", n.ipv4))
        .collect();
    std::fs::write(
        work.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [rules.json]\n\
             scrape_configs:\n\
             - job_name: xdplb-controller\n  static_configs: [{{targets: ['{CONTROLLER}']}}]\n\
             - job_name: xdplb-agent\n  static_configs: [{{targets: [{}]}}]\n",
            agents.join(", ")
        ),
    )
    .expect("prometheus.yml");
    Prometheus(
        Command::new("ip")
            .args(["netns", "exec", &g.lab.client.ns.name, "prometheus"])
            .arg(format!(
                "--config.file={}",
                work.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus"),
    )
}

/// The standalone controller on `g`'s configuration, serving metrics at [`CONTROLLER`] in the
/// client's namespace.
fn start_controller(g: &Group) -> Controller {
    Controller(
        Command::new("ip")
            .args(["netns", "exec", &g.lab.client.ns.name])
            .arg(workspace_bin("lb-controller"))
            .args(["run", "--metrics-addr", CONTROLLER, "--config-dir"])
            .arg(&g.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("lb-controller"),
    )
}

/// Whether Debian's Prometheus is here; under `cargo xtask test` it must be.
fn have_prometheus() -> bool {
    if Command::new("prometheus").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("XDPLB_REQUIRE_PRIVILEGED").is_err(),
        "no prometheus: cargo xtask setup installs Debian's"
    );
    eprintln!("skipped: no prometheus");
    false
}

/// Prometheus' answer to the instant query `expr`: the result vector.
fn query(g: &Group, expr: &str) -> Result<Vec<Value>, String> {
    let addr: SocketAddr = PROMETHEUS.parse().expect("address");
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", expr)
        .finish();
    let (status, body) = scrape::get(&g.lab.client.ns, addr, &format!("/api/v1/query?{q}"))?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if status != 200 || v["status"] != "success" {
        return Err(format!("{status}: {body}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

#[test]
fn a_real_prometheus_fires_pool_exhausted_and_failover_from_the_lab() {
    if !privileged("a_real_prometheus_fires_pool_exhausted_and_failover_from_the_lab") {
        return;
    }
    if !have_prometheus() {
        return;
    }
    let mut g = Group::start_config("pm", &[], small_pool);
    let _controller = start_controller(&g);
    let work = std::env::temp_dir().join(unique("prometheus"));
    let _prometheus = start_prometheus(&g, &work);

    // Four addresses, six Services.
    wait_for(&g, "MetalLBAddressPoolExhausted for pool lab", |f| {
        f.get("MetalLBAddressPoolExhausted").is_some_and(|a| {
            a.iter()
                .any(|l| l["pool"] == "lab" && l["job"] == "xdplb-controller")
        })
    });
    // Nothing failed over yet.
    assert!(
        !firing(&g).contains_key("XdplbFailover"),
        "{:?}",
        firing(&g)
    );

    // The owner of s0's address dies: another node takes over, and says so.
    let owners = group::expected(&g.dir, &["node-1", "node-2", "node-3"]);
    let (_, owner) = owners.iter().next().expect("an owner");
    let i = g
        .names
        .iter()
        .position(|n| n == owner)
        .expect("owner's index");
    g.kill(i);
    wait_for(&g, "XdplbFailover from a surviving node", |f| {
        f.get("XdplbFailover").is_some_and(|a| {
            a.iter().any(|l| {
                l["job"] == "xdplb-agent"
                    && l["instance"] != format!("{}:7472", g.lab.nodes[i].ipv4)
            })
        })
    });
    drop(_prometheus);
    let _ = std::fs::remove_dir_all(&work);
}

/// deploy/examples/standalone (Layer 2, shared and BGP pools, a BGPPeer with BFD) on the lab.
fn examples(_lab: &bpf_tests::harness::lab::Lab) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/standalone");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("example"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Every query of every panel of deploy/monitoring/dashboard.json, with Grafana's
/// `$__rate_interval` as Prometheus would get it.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring/dashboard.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard.json"))
            .expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL target");
            out.push((
                format!("{} / {}", panel["title"], target["refId"]),
                expr.replace("$__rate_interval", "1m"),
            ));
        }
    }
    out
}

/// The dashboard against the lab: FRR peering with BFD, a failover, a forged heartbeat, and
/// every panel's every query returns data from the real Prometheus.
#[test]
fn every_dashboard_query_returns_data_from_the_lab() {
    if !privileged("every_dashboard_query_returns_data_from_the_lab") || !have_prometheus() {
        return;
    }
    let mut g = Group::start_config("pd", &[], examples);
    let router = Frr::start(
        &g.lab.client.ns,
        &bpf_tests::peers::frr::lab_router_conf(&g.lab),
        true,
    );
    let _controller = start_controller(&g);
    let work = std::env::temp_dir().join(unique("prometheus"));
    let _prometheus = start_prometheus(&g, &work);
    let bfd_up = |f: &Frr| -> usize {
        f.json("show bfd peers json")
            .as_array()
            .map_or(0, |a| a.iter().filter(|p| p["status"] == "up").count())
    };
    router.wait(Duration::from_secs(20), "3 BFD sessions up", |f| {
        (bfd_up(f) == 3).then_some(())
    });
    // Something for the ARP panels, and a heartbeat no agent can accept.
    let vip = group::vip_of(&g.dir, "default/web");
    g.lab.arping(&vip, 2);
    let nodes: Vec<String> = g.lab.nodes.iter().map(|n| n.ipv4.clone()).collect();
    g.lab.client.ns.within(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
        for node in nodes {
            s.send_to(b"not a heartbeat", format!("{node}:7946"))
                .expect("send");
        }
    });
    // A failover: web's owner dies.
    let owners = group::expected(&g.dir, &["node-1", "node-2", "node-3"]);
    let owner = &owners[&vip];
    let i = g.names.iter().position(|n| n == owner).expect("owner");
    g.kill(i);

    let queries = dashboard_queries();
    assert!(queries.len() >= 25, "{queries:?}");
    let value = |expr: &str| -> Option<f64> {
        query(&g, expr)
            .ok()
            .and_then(|r| r.first()?["value"][1].as_str()?.parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let mut missing: Vec<String> = queries
            .iter()
            .filter_map(|(panel, expr)| match query(&g, expr) {
                Ok(result) if !result.is_empty() => None,
                Ok(_) => Some(format!("{panel}: no data: {expr}")),
                Err(e) => Some(format!("{panel}: {e}: {expr}")),
            })
            .collect();
        // The failover and the forged heartbeat are in the figures, not only present.
        if !value("sum(increase(xdplb_layer2_takeovers_total[5m]))").is_some_and(|v| v > 0.0) {
            missing.push("no takeover counted".into());
        }
        if !value("sum(xdplb_membership_heartbeats_rejected_total{reason=\"malformed\"})")
            .is_some_and(|v| v >= 1.0)
        {
            missing.push("the forged heartbeat is not counted".into());
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}\ntargets: {}\n{}",
            missing.join("\n"),
            targets(&g),
            g.logs()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(_prometheus);
    drop(router);
    let _ = std::fs::remove_dir_all(&work);
}
