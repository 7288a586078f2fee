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

fn wait_for(g: &Group, what: &str, check: impl Fn(&BTreeMap<String, Vec<Value>>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = firing(g);
        if check(&now) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: firing {now:?}\n{}",
            g.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_real_prometheus_fires_pool_exhausted_and_failover_from_the_lab() {
    if !privileged("a_real_prometheus_fires_pool_exhausted_and_failover_from_the_lab") {
        return;
    }
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("XDPLB_REQUIRE_PRIVILEGED").is_err(),
            "no prometheus: cargo xtask setup installs Debian's"
        );
        eprintln!("skipped: no prometheus");
        return;
    }
    let mut g = Group::start_config("pm", &[], small_pool);
    let client = g.lab.client.ns.name.clone();
    let dir: PathBuf = g.dir.clone();
    let _controller = Controller(
        Command::new("ip")
            .args(["netns", "exec", &client])
            .arg(workspace_bin("lb-controller"))
            .args(["run", "--metrics-addr", CONTROLLER, "--config-dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("lb-controller"),
    );
    let work = std::env::temp_dir().join(unique("prometheus"));
    std::fs::create_dir_all(&work).expect("prometheus dir");
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
    let _prometheus = Prometheus(
        Command::new("ip")
            .args(["netns", "exec", &client, "prometheus"])
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
    );

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
