//! The whole product in a cluster: the real `lb-controller run` and three real `lb-agent run`
//! processes, without `--config-dir`, against the in-process API server (listening in the lab's
//! client namespace, reached through `$KUBECONFIG`). MetalLB's objects and a Service go in; the
//! controller creates the agents' memberlist Secret and writes the Service's address; the
//! elected node answers ARP for it (and NDP for an IPv6 Service's); both record their Events, and the owner's agent its
//! ServiceL2Status, owned by its Pod. The owner's Pod is deleted (its agent stops, its status
//! goes with it) and another node answers and writes its own. The pool is changed and the Service moves to an address of the new
//! range, answered by one node while the old one is answered by none; an invalid pool is
//! refused with an Event on it, and nothing that works stops, not even for the node's next
//! Pod, which starts while the bad pool is there. BGP too: a BGPPeer for FRR in the
//! client namespace, and a routed Service whose address the router learns from every node
//! (three paths, two while a node's agent is gone).
use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use bpf_tests::{
    apiserver::ApiServer,
    harness::agent::{Controller, workspace_bin},
    harness::cluster_agents::ClusterAgents,
    harness::lab::Lab,
    peers::frr::Frr,
    privileged, unique,
};
use serde_json::{Value, json};

const NS: &str = "metallb-system";

fn pool(addresses: &[&str]) -> Value {
    json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
           "metadata": {"name": "lab", "namespace": NS},
           "spec": {"addresses": addresses}})
}

/// A Pod for node `i`'s agent, as the DaemonSet would create it: (name, UID).
fn agent_pod(api: &ApiServer, i: usize, generation: u32) -> (String, String) {
    let node = bpf_tests::harness::cluster_agents::NAMES[i];
    let pod = api.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("xdplb-agent-{node}-{generation}"), "namespace": NS},
        "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "xdplb/lb-agent"}]}}));
    (
        pod["metadata"]["name"].as_str().unwrap_or("").to_owned(),
        pod["metadata"]["uid"].as_str().unwrap_or("").to_owned(),
    )
}

/// web's ServiceL2Status objects: (node, owner Pod's UID).
fn l2_statuses(api: &ApiServer) -> Vec<(String, String)> {
    api.list("metallb.io/v1beta1", "ServiceL2Status")
        .iter()
        .filter(|o| o["status"]["serviceName"] == "web")
        .map(|o| {
            (
                o["status"]["node"].as_str().unwrap_or("").to_owned(),
                o["metadata"]["ownerReferences"][0]["uid"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect()
}

/// Every ConfigurationState: name → (result, errorSummary).
fn config_states(api: &ApiServer) -> std::collections::BTreeMap<String, (String, String)> {
    api.list("metallb.io/v1beta1", "ConfigurationState")
        .iter()
        .map(|o| {
            let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
            (
                text(&o["metadata"]["name"]),
                (
                    text(&o["status"]["result"]),
                    text(&o["status"]["errorSummary"]),
                ),
            )
        })
        .collect()
}

/// Whether the controller and every node report a valid configuration, with no summary left.
fn all_valid(api: &ApiServer) -> bool {
    let states = config_states(api);
    [
        "controller",
        "speaker-node-1",
        "speaker-node-2",
        "speaker-node-3",
    ]
    .iter()
    .all(|n| {
        states
            .get(*n)
            .is_some_and(|(r, summary)| r == "Valid" && summary.is_empty())
    })
}

fn setup(api: &ApiServer, lab: &Lab) {
    for ns in [NS, "default"] {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    api.apply(pool(&["10.210.0.100-10.210.0.104"]));
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
               "metadata": {"name": "lab6", "namespace": NS},
               "spec": {"addresses": ["fd00:210::100-fd00:210::104"]}}),
    );
    // As MetalLB's docs write it: no spec.
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
                     "metadata": {"name": "l2", "namespace": NS}}),
    );
    bpf_tests::harness::cluster_agents::apply_nodes(api, lab);
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": "web", "namespace": "default"},
                     "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                              "clusterIPs": ["10.96.0.10"], "ipFamilies": ["IPv4"],
                              "ipFamilyPolicy": "SingleStack", "ports": [{"port": 80}]}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": "web6", "namespace": "default"},
                     "spec": {"type": "LoadBalancer", "clusterIP": "fd96::10",
                              "clusterIPs": ["fd96::10"], "ipFamilies": ["IPv6"],
                              "ipFamilyPolicy": "SingleStack", "ports": [{"port": 80}]}}));
}

fn ingress(api: &ApiServer) -> Option<String> {
    ingress_of(api, "web")
}

fn ingress_of(api: &ApiServer, name: &str) -> Option<String> {
    api.get("v1", "Service", Some("default"), name)
        .and_then(|s| {
            s["status"]["loadBalancer"]["ingress"][0]["ip"]
                .as_str()
                .map(str::to_owned)
        })
}

/// (reason, note) of the Events regarding object `name`.
fn events(api: &ApiServer, name: &str) -> Vec<(String, String)> {
    api.list("events.k8s.io/v1", "Event")
        .into_iter()
        .filter(|e| e["regarding"]["name"] == name)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or("").to_owned(),
                e["note"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn wait<T>(
    what: &str,
    within: Duration,
    logs: &dyn Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}\n{}", logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The router: FRR in the client's namespace, AS 65000, every node a neighbour, ECMP.
fn router_conf(lab: &Lab) -> String {
    let mut c = String::from(
        "frr defaults datacenter\nhostname router\n!\nrouter bgp 65000\n bgp router-id 10.210.0.1\n \
         no bgp ebgp-requires-policy\n neighbor NODES peer-group\n neighbor NODES remote-as 64512\n \
         neighbor NODES timers connect 1\n",
    );
    for n in &lab.nodes {
        c.push_str(&format!(" neighbor {} peer-group NODES\n", n.ipv4));
    }
    c.push_str(" address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n!\n");
    c
}

/// The BGP side of the cluster: a routed pool (not auto-assigned), the router as BGPPeer, an
/// advertisement, and a Service that asks for the pool.
fn bgp_objects(api: &ApiServer) {
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                     "metadata": {"name": "routed", "namespace": NS},
                     "spec": {"addresses": ["198.51.100.10-198.51.100.19"], "autoAssign": false}}),
    );
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
                     "metadata": {"name": "router", "namespace": NS},
                     "spec": {"myASN": 64512, "peerASN": 65000, "peerAddress": "10.210.0.1"}}),
    );
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "BGPAdvertisement",
                     "metadata": {"name": "routed", "namespace": NS},
                     "spec": {"ipAddressPools": ["routed"]}}),
    );
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": "api", "namespace": "default",
                                  "annotations": {"metallb.io/address-pool": "routed"}},
                     "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.11",
                              "clusterIPs": ["10.96.0.11"], "ipFamilies": ["IPv4"],
                              "ipFamilyPolicy": "SingleStack", "ports": [{"port": 80}]}}));
}

/// `(node, peer, BGP state, BFD state, owner Pod uid)` of every BGPSessionState, sorted.
fn sessions(api: &ApiServer) -> Vec<(String, String, String, String, String)> {
    let mut v: Vec<_> = api
        .list("frrk8s.metallb.io/v1beta1", "BGPSessionState")
        .iter()
        .map(|o| {
            let s = &o["status"];
            let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
            assert_eq!(o["metadata"]["labels"]["frrk8s.metallb.io/node"], s["node"]);
            assert_eq!(o["metadata"]["labels"]["frrk8s.metallb.io/peer"], s["peer"]);
            (
                text(&s["node"]),
                text(&s["peer"]),
                text(&s["bgpStatus"]),
                text(&s["bfdStatus"]),
                text(&o["metadata"]["ownerReferences"][0]["uid"]),
            )
        })
        .collect();
    v.sort();
    v
}

/// The sessions `sessions` should show: each live node's, to the router, in `state`.
fn sessions_of(
    group: &ClusterAgents,
    state: &str,
) -> Vec<(String, String, String, String, String)> {
    let mut v: Vec<_> = (0..3)
        .filter(|i| group.agents[*i].is_some())
        .map(|i| {
            (
                bpf_tests::harness::cluster_agents::NAMES[i].to_owned(),
                "10.210.0.1".to_owned(),
                state.to_owned(),
                "N/A".to_owned(),
                group.pods[i].clone().unwrap_or_default().1,
            )
        })
        .collect();
    v.sort();
    v
}

/// How many paths FRR has for `vip`/32.
fn paths(frr: &Frr, vip: &str) -> usize {
    frr.paths("ipv4", &format!("{vip}/32")).len()
}

#[test]
fn controller_and_agents_in_a_cluster_allocate_announce_fail_over_and_follow_changes() {
    if !privileged(
        "controller_and_agents_in_a_cluster_allocate_announce_fail_over_and_follow_changes",
    ) {
        return;
    }
    let lab = Lab::new("ce", 3);
    let api = ApiServer::start_in(&lab.client.ns.name, "10.210.0.1:0");
    setup(&api, &lab);
    let kubeconfig = std::env::temp_dir().join(unique("xdplb-e2e-kubeconfig"));
    api.kubeconfig(&kubeconfig);
    let kc = kubeconfig.to_str().expect("utf-8 path").to_owned();

    let controller = Controller(
        lab.client
            .ns
            .enter(workspace_bin("lb-controller").to_str().expect("utf-8 path"))
            .args(["run", "--metrics-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", &kc)
            .env("POD_NAME", "controller-0")
            .env("POD_NAMESPACE", NS)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start lb-controller"),
    );
    let no_logs = || String::new();
    let vip = wait(
        "the controller writes web's address",
        Duration::from_secs(20),
        &no_logs,
        || ingress(&api),
    );
    assert_eq!(vip, "10.210.0.100");
    assert!(
        api.get("v1", "Secret", Some(NS), "memberlist").is_some(),
        "the controller creates the agents' memberlist Secret"
    );
    // The Event is recorded after the status is written: wait for it as for the others.
    wait(
        "an IPAllocated Event on web",
        Duration::from_secs(5),
        &no_logs,
        || {
            events(&api, "web")
                .iter()
                .any(|(r, _)| r == "IPAllocated")
                .then_some(())
        },
    );

    let mut group = ClusterAgents::new(&lab, "ce", &kc, NS);
    for i in 0..3 {
        group.pods[i] = Some(agent_pod(&api, i, 0));
        group.start_agent(i);
    }
    let within = Duration::from_secs(15);
    let owner = group.single(&vip, "one node answers web's address", None, within);
    // IPv6: the controller gives web6 an address of the IPv6 pool, one node answers NDP for it.
    let vip6 = wait(
        "web6's address",
        Duration::from_secs(5),
        &|| group.logs(),
        || ingress_of(&api, "web6"),
    );
    assert_eq!(vip6, "fd00:210::100");
    group.single(
        &vip6,
        "one node answers NDP for web6's address",
        None,
        within,
    );
    let owner_i = ClusterAgents::index(&owner);
    wait(
        "every component's ConfigurationState says Valid",
        Duration::from_secs(5),
        &|| format!("{:?}", config_states(&api)),
        || all_valid(&api).then_some(()),
    );
    let (owner_pod, owner_uid) = group.pods[owner_i].clone().unwrap_or_default();
    wait(
        "the owner's ServiceL2Status, owned by its Pod",
        Duration::from_secs(5),
        &|| group.logs(),
        || (l2_statuses(&api) == [(owner.clone(), owner_uid.clone())]).then_some(()),
    );
    wait(
        "a nodeAssigned Event from the owner",
        Duration::from_secs(5),
        &|| group.logs(),
        || {
            events(&api, "web")
                .iter()
                .any(|(r, n)| r == "nodeAssigned" && n.contains(&format!("{owner:?}")))
                .then_some(())
        },
    );

    // BGP: every node advertises the routed Service's address; the router has three paths.
    let router = Frr::start(&lab.client.ns, &router_conf(&lab), false);
    bgp_objects(&api);
    let routed = wait(
        "api's address",
        Duration::from_secs(15),
        &|| group.logs(),
        || ingress_of(&api, "api"),
    );
    assert_eq!(routed, "198.51.100.10");
    wait(
        "three paths at the router",
        Duration::from_secs(30),
        &|| group.logs(),
        || (paths(&router, &routed) == 3).then_some(()),
    );
    // FRR-K8s' BGPSessionState: one per node and peer, owned by the agent's Pod.
    wait(
        "an Established BGPSessionState per node",
        Duration::from_secs(5),
        &|| format!("{:?}", sessions(&api)),
        || (sessions(&api) == sessions_of(&group, "Established")).then_some(()),
    );

    // The owner's Pod is deleted: its agent stops (SIGKILL, no goodbye), the garbage collector
    // takes its ServiceL2Status, and another node answers and writes its own.
    api.delete("v1", "Pod", Some(NS), &owner_pod);
    group.kill(&owner);
    let next = group.single(
        &vip,
        "another node answers after the Pod's deletion",
        Some(&owner),
        within,
    );
    assert_ne!(next, owner);
    group.single(
        &vip6,
        "one live node answers NDP for web6's address",
        Some(&owner),
        within,
    );
    let next_uid = group.pods[ClusterAgents::index(&next)]
        .clone()
        .unwrap_or_default()
        .1;
    wait(
        "only the new owner's ServiceL2Status",
        Duration::from_secs(5),
        &|| group.logs(),
        || (l2_statuses(&api) == [(next.clone(), next_uid.clone())]).then_some(()),
    );
    // Its BGP session went with it (the kernel closed the connection): two paths left.
    wait(
        "two paths at the router after the kill",
        Duration::from_secs(10),
        &|| group.logs(),
        || (paths(&router, &routed) == 2).then_some(()),
    );
    // The deleted Pod's session object went with it.
    wait(
        "the live nodes' BGPSessionStates only",
        Duration::from_secs(5),
        &|| format!("{:?}", sessions(&api)),
        || (sessions(&api) == sessions_of(&group, "Established")).then_some(()),
    );

    // The pool moves: the Service gets an address of the new range, which one node answers,
    // and the old address is answered by none.
    api.apply(pool(&["10.210.0.110-10.210.0.114"]));
    let moved = wait(
        "web's new address",
        Duration::from_secs(15),
        &|| group.logs(),
        || ingress(&api).filter(|ip| *ip != vip),
    );
    assert_eq!(moved, "10.210.0.110");
    group.single(&moved, "one node answers the new address", None, within);
    wait(
        "the old address goes quiet",
        Duration::from_secs(5),
        &|| group.logs(),
        || group.answerers(&vip).is_empty().then_some(()),
    );

    // An invalid pool: refused with an Event on it; the Service and its answers stay.
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                     "metadata": {"name": "bad", "namespace": NS},
                     "spec": {"addresses": ["10.0.0.0/33"]}}),
    );
    wait(
        "an InvalidConfiguration Event on the bad pool",
        Duration::from_secs(10),
        &|| group.logs(),
        || {
            events(&api, "bad")
                .iter()
                .any(|(r, n)| r == "InvalidConfiguration" && n.contains("10.0.0.0/33"))
                .then_some(())
        },
    );
    assert_eq!(ingress(&api).as_deref(), Some(moved.as_str()));
    group.single(&moved, "the new address is still answered", None, within);
    wait(
        "every ConfigurationState names the bad pool",
        Duration::from_secs(5),
        &|| format!("{:?}", config_states(&api)),
        || {
            let states = config_states(&api);
            let running: Vec<String> = (0..3)
                .filter(|i| group.agents[*i].is_some())
                .map(|i| format!("speaker-{}", bpf_tests::harness::cluster_agents::NAMES[i]))
                .chain(["controller".to_owned()])
                .collect();
            running
                .iter()
                .all(|n| {
                    states.get(n).is_some_and(|(r, summary)| {
                        r == "Invalid" && summary.contains("IPAddressPool/bad")
                    })
                })
                .then_some(())
        },
    );

    // The DaemonSet's next Pod on the node: the agent starts while the bad pool is still there
    // (it has no last good configuration: it acts on the valid part), joins again, and the
    // router has three paths once more.
    group.pods[owner_i] = Some(agent_pod(&api, owner_i, 1));
    group.start_agent(owner_i);
    wait(
        "three paths again once the node's new Pod runs",
        Duration::from_secs(30),
        &|| group.logs(),
        || (paths(&router, &routed) == 3).then_some(()),
    );
    group.single(&moved, "one node answers with the node back", None, within);

    // The bad pool goes: every component says Valid again.
    api.delete("metallb.io/v1beta1", "IPAddressPool", Some(NS), "bad");
    wait(
        "every ConfigurationState says Valid again",
        Duration::from_secs(5),
        &|| format!("{:?}", config_states(&api)),
        || all_valid(&api).then_some(()),
    );
    let restarted = api
        .get(
            "metallb.io/v1beta1",
            "ConfigurationState",
            Some(NS),
            &format!("speaker-{owner}"),
        )
        .map(|o| o["metadata"]["ownerReferences"][0]["uid"].clone());
    assert_eq!(
        restarted,
        group.pods[owner_i].as_ref().map(|p| json!(p.1)),
        "the node's ConfigurationState belongs to its current Pod"
    );

    // The router goes away: every session object says so; the BGPPeer goes: so do they.
    drop(router);
    wait(
        "BGPSessionStates no longer Established",
        Duration::from_secs(10),
        &|| format!("{:?}", sessions(&api)),
        || {
            let s = sessions(&api);
            (s.len() == 3 && s.iter().all(|x| x.2 != "Established")).then_some(())
        },
    );
    api.delete("metallb.io/v1beta2", "BGPPeer", Some(NS), "router");
    wait(
        "no BGPSessionState once the BGPPeer is gone",
        Duration::from_secs(5),
        &|| format!("{:?}", sessions(&api)),
        || sessions(&api).is_empty().then_some(()),
    );

    drop(controller);
    group.stop();
    let _ = std::fs::remove_file(&kubeconfig);
}
