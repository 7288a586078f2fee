//! Three real agents of a cluster in the lab's node namespaces: `lb-agent run` without
//! `--config-dir` and without `--interface`, `$KUBECONFIG` pointing at an API server; and who
//! answers a VIP. What the kube lab tests share.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use crate::{
    PinDir, apiserver::ApiServer, harness::agent::Agent, harness::lab::Lab, harness::netns::mac_str,
};

/// The nodes' names, in the lab's order.
pub const NAMES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// What the cluster tests start from: namespace `namespace`, an IPAddressPool `lab` of
/// `addresses`, an L2Advertisement `l2` for every pool, and the agents' memberlist Secret
/// (`secret_b64`: the key, base64-encoded as Secret data is).
pub fn apply_baseline(api: &ApiServer, namespace: &str, addresses: &[&str], secret_b64: &str) {
    use serde_json::json;
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}));
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
        "metadata": {"name": "lab", "namespace": namespace},
        "spec": {"addresses": addresses}}),
    );
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
        "metadata": {"name": "l2", "namespace": namespace}, "spec": {}}),
    );
    api.apply(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "memberlist", "namespace": namespace},
        "data": {"secretkey": secret_b64}}));
}

/// The node and the Service (`namespace/name`) of a ServiceL2Status or ServiceBGPStatus
/// object's `status`.
pub fn status_of(status: &serde_json::Value) -> (String, String) {
    (
        status["node"].as_str().unwrap_or("").to_owned(),
        format!(
            "{}/{}",
            status["serviceNamespace"].as_str().unwrap_or(""),
            status["serviceName"].as_str().unwrap_or("")
        ),
    )
}

/// The lab's nodes as Node objects (name and InternalIP), as the kubelet registers them.
pub fn apply_nodes(api: &ApiServer, lab: &Lab) {
    for (name, host) in NAMES.iter().zip(&lab.nodes) {
        api.apply(serde_json::json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": host.ipv4}]}}));
    }
}

pub struct ClusterAgents<'a> {
    lab: &'a Lab,
    kubeconfig: String,
    namespace: String,
    pins: Vec<PinDir>,
    /// MAC → node name.
    pub macs: BTreeMap<String, &'static str>,
    /// Node i's agent, while it runs.
    pub agents: Vec<Option<Agent>>,
    /// The Pod (name, UID) node i's next agent runs as, if any (`--pod-name`, `--pod-uid`).
    pub pods: Vec<Option<(String, String)>>,
    /// More flags for every agent started from now on.
    pub extra: Vec<String>,
}

impl<'a> ClusterAgents<'a> {
    /// Starts an agent on every node of `lab`, reading `namespace` through `kubeconfig`.
    pub fn start(lab: &'a Lab, tag: &str, kubeconfig: &str, namespace: &str) -> Self {
        let mut group = Self::new(lab, tag, kubeconfig, namespace);
        for i in 0..3 {
            group.start_agent(i);
        }
        group
    }

    /// The group with no agent started yet.
    pub fn new(lab: &'a Lab, tag: &str, kubeconfig: &str, namespace: &str) -> Self {
        Self {
            lab,
            kubeconfig: kubeconfig.to_owned(),
            namespace: namespace.to_owned(),
            pins: (0..3).map(|i| PinDir::new(&format!("{tag}{i}"))).collect(),
            macs: (0..3)
                .map(|i| (mac_str(&lab.node_mac(i)), NAMES[i]))
                .collect(),
            agents: (0..3).map(|_| None).collect(),
            pods: vec![None; 3],
            extra: Vec::new(),
        }
    }

    /// Starts node `i`'s agent (none must run) and waits until it runs.
    pub fn start_agent(&mut self, i: usize) {
        assert!(self.agents[i].is_none(), "{}'s agent still runs", NAMES[i]);
        let pin = self.pins[i].path().to_str().expect("utf-8").to_owned();
        let mut args = vec![
            "run",
            "--node-name",
            NAMES[i],
            "--bpffs",
            &pin,
            "--mode",
            "xdp-native",
            "--namespace",
            &self.namespace,
            "--metrics-addr",
            "127.0.0.1:7472",
        ];
        if let Some((name, uid)) = &self.pods[i] {
            args.extend(["--pod-name", name, "--pod-uid", uid]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        let mut a = Agent::start_env(
            &self.lab.nodes[i].ns,
            &args,
            &[("KUBECONFIG", &self.kubeconfig)],
        );
        a.wait_for_log("running;", Duration::from_secs(20));
        self.agents[i] = Some(a);
    }

    /// Node `i`'s agent, which must run.
    pub fn agent(&self, i: usize) -> &Agent {
        self.agents[i].as_ref().expect("the agent runs")
    }

    /// Kills node `node`'s agent (SIGKILL: no goodbye); returns its index.
    pub fn kill(&mut self, node: &str) -> usize {
        let i = Self::index(node);
        if let Some(mut a) = self.agents[i].take() {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
        i
    }

    /// The index of node `node`.
    pub fn index(node: &str) -> usize {
        NAMES.iter().position(|n| *n == node).expect("a lab node")
    }

    pub fn logs(&self) -> String {
        Agent::logs(self.agents.iter().flatten())
    }

    /// The nodes that answer one ARP request (one neighbour solicitation for an IPv6 `vip`)
    /// from the client.
    pub fn answerers(&self, vip: &str) -> BTreeSet<String> {
        self.lab.answerers(vip, "0.2")
    }

    /// The node that answers `vip`, alone, three probes in a row (agents joining one by one
    /// move a VIP until the group is complete), other than `not`; fails with `what` after
    /// `within`.
    pub fn single(&self, vip: &str, what: &str, not: Option<&str>, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut streak: (String, usize) = (String::new(), 0);
        loop {
            let who = self.answerers(vip);
            if who.len() == 1 {
                let one = who.into_iter().next().unwrap_or_default();
                if Some(one.as_str()) != not {
                    streak = if streak.0 == one {
                        (one, streak.1 + 1)
                    } else {
                        (one, 1)
                    };
                    if streak.1 >= 3 {
                        return streak.0;
                    }
                    std::thread::sleep(Duration::from_millis(150));
                    continue;
                }
            }
            streak = (String::new(), 0);
            assert!(
                Instant::now() < deadline,
                "{what}: {vip} not answered by one node\n{}",
                self.logs()
            );
        }
    }

    /// Stops every running agent with SIGTERM.
    pub fn stop(self) {
        for a in self.agents.into_iter().flatten() {
            a.stop();
        }
    }
}
