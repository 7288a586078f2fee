//! A group of three real agents (`lb-agent run`) on the lab's bridge, with the real standalone
//! controller's allocations for a few Services: what the failover tests and the failover bench
//! start from.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_controller::config::manifest;

use crate::{
    PinDir,
    harness::agent::{Agent, workspace_bin},
    harness::lab::Lab,
    harness::netns::mac_str,
    unique,
};

pub const SERVICES: usize = 6;

pub const SECRET: &str = "lab-secret-0123456789abcdef";
/// Where every agent of the group serves its metrics, inside its node's namespace.
pub const METRICS: &str = crate::harness::agent::METRICS;

/// The group's configuration, with `l2_spec` as the L2Advertisement's spec (flow YAML).
pub fn config_yaml(lab: &Lab, l2_spec: &str) -> String {
    let mut yaml = format!(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: lab, namespace: metallb-system}}\n\
         spec:\n  addresses: [10.210.0.100-10.210.0.150]\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {{name: lab, namespace: metallb-system}}\nspec: {l2_spec}\n",
    );
    yaml.push_str(&nodes_yaml(lab));
    for s in 0..SERVICES {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{s}, namespace: default}}\nspec: {{type: LoadBalancer, ports: [{{port: 80}}]}}\n"
        ));
    }
    yaml
}

/// The Node objects of the lab's nodes (`node-1`, ...), as YAML documents.
pub fn nodes_yaml(lab: &Lab) -> String {
    let mut yaml = String::new();
    for (i, node) in lab.nodes.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-{n}, labels: {{kubernetes.io/hostname: node-{n}}}}}\nstatus:\n  addresses: [{{type: InternalIP, address: \"{ip}\"}}]\n",
            n = i + 1,
            ip = node.ipv4
        ));
    }
    yaml
}

/// A configuration directory holding `config` and the group's secret.
pub fn config_dir(config: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("xdplb-failover"));
    std::fs::create_dir_all(&dir).expect("config dir");
    std::fs::write(dir.join("config.yaml"), config).expect("write config");
    crate::write_secret(&dir.join("secret"), &format!("{SECRET}\n")).expect("write secret");
    dir
}

/// Runs the real standalone controller until it has written the allocations (again: it keeps
/// what was allocated and adds what is new).
pub fn allocate(dir: &Path) {
    let file = dir.join("status/allocations.yaml");
    let before = std::fs::read_to_string(&file).ok();
    let mut child: Child = Command::new(workspace_bin("lb-controller"))
        .args(["run", "--metrics-addr", "127.0.0.1:0", "--config-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lb-controller");
    let deadline = Instant::now() + Duration::from_secs(10);
    // The first time: until the file exists; later: until the controller rewrote it.
    while std::fs::read_to_string(&file).ok() == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        std::fs::read_to_string(&file).ok() != before,
        "the controller wrote no allocations within 10 s"
    );
}

/// VIP → owning node name, as every agent computes it, for the nodes in `alive`.
pub fn expected(dir: &Path, alive: &[&str]) -> BTreeMap<String, String> {
    let objects = manifest::load(&[dir.to_path_buf()])
        .expect("load config")
        .objects;
    let allocations = allocations(dir);
    let alive: BTreeSet<String> = alive.iter().map(|s| (*s).to_owned()).collect();
    let inputs = lb_agent::inputs::Inputs::new(&objects);
    let owners = lb_agent::election::owners(&inputs, &allocations, &alive.into());
    allocations
        .iter()
        .filter_map(|e| Some((e.ips.first()?.to_string(), owners.get(&e.service)?.clone())))
        .collect()
}

/// What the controller wrote to `dir/status/allocations.yaml`.
fn allocations(dir: &Path) -> Vec<lb_controller::plan::PlanEntry> {
    lb_controller::allocations::read(dir)
        .map(|f| f.allocations)
        .unwrap_or_default()
}

/// The first address allocated to `service` (`namespace/name`).
pub fn vip_of(dir: &Path, service: &str) -> String {
    allocations(dir)
        .iter()
        .find(|e| e.service == service)
        .and_then(|e| e.ips.first())
        .map(ToString::to_string)
        .unwrap_or_else(|| panic!("{service} has no address"))
}

pub struct Group {
    pub lab: Lab,
    pub dir: PathBuf,
    pub names: [&'static str; 3],
    /// MAC → node name.
    pub macs: BTreeMap<String, String>,
    pub agents: Vec<Option<Agent>>,
    /// Arguments every agent of the group gets on top of the defaults.
    extra: Vec<String>,
    _pins: Vec<PinDir>,
}

/// Starts the agent of node `i` (with `extra` arguments) and waits until it runs.
#[allow(clippy::too_many_arguments)]
fn spawn(
    lab: &Lab,
    dir: &Path,
    name: &str,
    i: usize,
    pins: &PinDir,
    extra: &[&str],
    env: &[(&str, &str)],
    wrapper: &[&str],
) -> Agent {
    let mut args = Vec::new();
    if !extra.contains(&"--mode") {
        args.extend_from_slice(&["--mode", "xdp-native"]);
    }
    args.extend_from_slice(extra);
    let mut a = Agent::run_node_under(
        &lab.nodes[i].ns,
        wrapper,
        name,
        dir,
        pins.path(),
        &args,
        env,
    );
    a.wait_for_log("running;", Duration::from_secs(20));
    a
}

impl Group {
    /// Kills node `i`'s agent with SIGKILL (a crash: no goodbye).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut a) = self.agents[i].take() {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
    }

    /// Starts node `i`'s agent again (it adopts its pinned objects).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.start_agent(i, &[]);
    }

    fn all_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        self.extra
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .collect()
    }

    /// Starts node `i`'s agent (none must be running) with `extra` arguments.
    pub fn start_agent(&mut self, i: usize, extra: &[&str]) {
        self.start_agent_env(i, extra, &[]);
    }

    /// [`Group::start_agent`] with `env` added to the agent's environment.
    pub fn start_agent_env(&mut self, i: usize, extra: &[&str], env: &[(&str, &str)]) {
        self.start_agent_under(i, &[], extra, env);
    }

    /// [`Group::start_agent_env`] run by `wrapper` (see [`Agent::run_node_under`]).
    pub fn start_agent_under(
        &mut self,
        i: usize,
        wrapper: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) {
        assert!(self.agents[i].is_none(), "node {i}'s agent still runs");
        let agent = spawn(
            &self.lab,
            &self.dir,
            self.names[i],
            i,
            &self._pins[i],
            &self.all_args(extra),
            env,
            wrapper,
        );
        self.agents[i] = Some(agent);
    }

    /// Stops node `i`'s agent with SIGTERM and waits for it; returns its log. Panics when it
    /// does not exit cleanly.
    pub fn stop_agent(&mut self, i: usize) -> String {
        let Some(mut a) = self.agents[i].take() else {
            return String::new();
        };
        a.signal(libc::SIGTERM);
        let status = a.child.wait().expect("wait for the agent");
        let log = a.log_text();
        assert!(
            status.success(),
            "{} exited with {status}:\n{log}",
            self.names[i]
        );
        log
    }

    /// The group's configuration with `l2_spec` as the L2Advertisement's spec, as text.
    pub fn config(&self, l2_spec: &str) -> String {
        config_yaml(&self.lab, l2_spec)
    }

    /// Runs the controller over the current configuration (new Services get addresses).
    pub fn allocate(&self) {
        allocate(&self.dir);
    }

    /// Replaces the L2Advertisement's spec (flow YAML); the agents pick it up on their next
    /// reload.
    pub fn set_l2_spec(&self, spec: &str) {
        self.write_config(&config_yaml(&self.lab, spec));
    }

    /// Replaces the configuration file with `text` (atomically, as an editor's save would).
    pub fn write_config(&self, text: &str) {
        let tmp = self.dir.join(".config.yaml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.dir.join("config.yaml")).expect("rename config");
    }

    /// Where node `i`'s agent pins its maps.
    pub fn pins(&self, i: usize) -> &Path {
        self._pins[i].path()
    }

    /// Node `i`'s agent's `/metrics`.
    pub fn metrics(&self, i: usize) -> String {
        let addr = METRICS.parse().expect("metrics address");
        match crate::harness::scrape::get(&self.lab.nodes[i].ns, addr, "/metrics") {
            Ok((200, body)) => body,
            other => panic!("{}: /metrics: {other:?}\n{}", self.names[i], self.logs()),
        }
    }

    /// A lab of three nodes, the controller's allocations, and an agent on every node.
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, &[])
    }

    /// The same, every agent started with `extra` arguments (timers, say).
    pub fn start_with(tag: &str, extra: &[&str]) -> Self {
        Self::start_config(tag, extra, |lab| config_yaml(lab, "{}"))
    }

    /// The same with the configuration `config` writes for the lab (pools, advertisements,
    /// Services; [`nodes_yaml`] gives the Nodes).
    pub fn start_config(tag: &str, extra: &[&str], config: impl FnOnce(&Lab) -> String) -> Self {
        Self::start_on(Lab::new(tag, 3), tag, extra, config)
    }

    /// The same on a lab of three nodes prepared beforehand (a snooping bridge, say).
    pub fn start_on(
        lab: Lab,
        tag: &str,
        extra: &[&str],
        config: impl FnOnce(&Lab) -> String,
    ) -> Self {
        let dir = config_dir(&config(&lab));
        allocate(&dir);
        let names = ["node-1", "node-2", "node-3"];
        let macs = (0..3)
            .map(|i| (mac_str(&lab.node_mac(i)), names[i].to_owned()))
            .collect();
        let pins: Vec<PinDir> = (0..3).map(|i| PinDir::new(&format!("{tag}{i}"))).collect();
        let agents = (0..3)
            .map(|i| Some(spawn(&lab, &dir, names[i], i, &pins[i], extra, &[], &[])))
            .collect();
        Self {
            lab,
            dir,
            names,
            macs,
            agents,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            _pins: pins,
        }
    }

    pub fn logs(&self) -> String {
        Agent::logs(self.agents.iter().flatten())
    }

    /// The nodes that answer one ARP request for `vip`.
    pub fn answerers(&self, vip: &str, deadline: &str) -> BTreeSet<String> {
        self.lab.answerers(vip, deadline)
    }

    /// Waits until every VIP is answered by exactly its owner in `owners`.
    pub fn converge(&self, owners: &BTreeMap<String, String>, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        for (vip, owner) in owners {
            loop {
                let who = self.answerers(vip, "0.2");
                if who == BTreeSet::from([owner.clone()]) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: {vip} answered by {who:?}, expected {owner}\n{}",
                    self.logs()
                );
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for a in self.agents.drain(..).flatten() {
            a.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
