//! `kubectl xdplb` (the `kubectl-xdplb` binary, as a user runs it with a kubeconfig) against
//! the in-process API server: one test per broken link of the chain, each setting up exactly
//! that fault and checking the words; `status` in every output; a standalone directory.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use bpf_tests::{apiserver::ApiServer, harness::agent::workspace_bin, unique};
use serde_json::{Value, json};

const NS: &str = "metallb-system";

struct Cluster {
    api: ApiServer,
    kubeconfig: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn node(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
           "status": {"conditions": [{"type": "Ready", "status": "True"}],
                      "addresses": [{"type": "InternalIP", "address": "10.1.0.1"}]}})
}

fn agent_pod(node: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("xdplb-agent-{node}"), "namespace": NS,
                        "labels": {"app.kubernetes.io/name": "xdplb", "app.kubernetes.io/component": "agent"}},
           "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "x"}]},
           "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

fn service(extra_spec: Value, ip: Option<&str>) -> Value {
    let mut spec = json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                          "clusterIPs": ["10.96.0.10"], "ports": [{"port": 80}]});
    if let (Some(o), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        o.extend(extra.clone());
    }
    let mut svc = json!({"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
                         "spec": spec});
    if let Some(ip) = ip {
        svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
    }
    svc
}

fn l2_status(node: &str) -> Value {
    json!({"apiVersion": "metallb.io/v1beta1", "kind": "ServiceL2Status",
           "metadata": {"name": format!("l2-{node}"), "namespace": NS,
                        "labels": {"metallb.io/node": node}},
           "spec": {},
           "status": {"node": node, "serviceName": "web", "serviceNamespace": "default",
                      "interfaces": [{"name": "eth0"}]}})
}

fn l2_ad(spec: Value) -> Value {
    json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
           "metadata": {"name": "l2", "namespace": NS}, "spec": spec})
}

/// Two Ready nodes with ready agents, a pool, an L2Advertisement for every pool, and `web`
/// holding the pool's first address, announced by node-1.
fn healthy() -> Cluster {
    let api = ApiServer::start();
    for ns in [NS, "default"] {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    api.apply(node("node-1", json!({"rack": "a"})));
    api.apply(node("node-2", json!({"rack": "b"})));
    api.apply(agent_pod("node-1", true));
    api.apply(agent_pod("node-2", true));
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                     "metadata": {"name": "p", "namespace": NS},
                     "spec": {"addresses": ["10.80.0.0/30"]}}),
    );
    api.apply(l2_ad(json!({})));
    api.apply(service(json!({}), Some("10.80.0.0")));
    api.apply(l2_status("node-1"));
    let kubeconfig = std::env::temp_dir().join(unique("kubeconfig-plugin"));
    api.kubeconfig(&kubeconfig);
    Cluster { api, kubeconfig }
}

fn plugin(kubeconfig: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(workspace_bin("kubectl-xdplb"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("run kubectl-xdplb");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.is_empty() || out.status.code() == Some(1),
        "stderr: {stderr}"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn why(c: &Cluster) -> (i32, String) {
    plugin(&c.kubeconfig, &["why", "default/web"])
}

#[test]
fn an_announced_service_names_its_node_and_interface() {
    let c = healthy();
    assert_eq!(
        why(&c),
        (
            0,
            "default/web: 10.80.0.0 is answered at Layer 2 by node-1 on eth0\n".into()
        )
    );
    let (code, json) = plugin(&c.kubeconfig, &["why", "web", "-o", "json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(v["link"], "announced");
    assert_eq!(v["service"], "default/web");
}

#[test]
fn a_missing_or_non_load_balancer_service_is_named() {
    let c = healthy();
    let (code, out) = plugin(&c.kubeconfig, &["why", "default/nope"]);
    assert_eq!(
        (code, out.as_str()),
        (1, "there is no Service default/nope\n")
    );
    c.api.apply(service(json!({"type": "ClusterIP"}), None));
    assert_eq!(
        why(&c),
        (1, "default/web is of type ClusterIP, not LoadBalancer: nothing gives it an external address\n".into())
    );
}

#[test]
fn a_service_of_another_class_is_not_ours() {
    let c = healthy();
    c.api.apply(service(
        json!({"loadBalancerClass": "example.com/other"}),
        None,
    ));
    let (code, out) = why(&c);
    assert_eq!(code, 1);
    assert!(
        out.starts_with("default/web has loadBalancerClass example.com/other; xdplb serves (none"),
        "{out}"
    );
}

#[test]
fn a_pending_service_gives_the_allocators_reason() {
    let c = healthy();
    let mut svc = service(json!({}), None);
    svc["metadata"]["annotations"] = json!({"metallb.io/loadBalancerIPs": "10.99.0.1"});
    c.api.apply(svc);
    let (code, out) = why(&c);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "default/web has no address: 10.99.0.1 is not in any IPAddressPool\n"
    );
}

#[test]
fn an_address_not_written_points_at_the_controller() {
    let c = healthy();
    c.api.apply(service(json!({}), None));
    // The fixture's status stays; a Service without one:
    let mut svc = c
        .api
        .get("v1", "Service", Some("default"), "web")
        .expect("web");
    svc["status"] = json!({});
    c.api.delete("v1", "Service", Some("default"), "web");
    svc["metadata"]
        .as_object_mut()
        .map(|m| m.remove("resourceVersion"));
    c.api.apply(svc);
    let (code, out) = why(&c);
    assert_eq!(code, 1);
    assert!(
        out.starts_with(
            "default/web would get 10.80.0.0 from IPAddressPool/p, but no controller has written it"
        ),
        "{out}"
    );
}

#[test]
fn an_address_no_advertisement_covers_is_named() {
    let c = healthy();
    c.api.apply(l2_ad(json!({"ipAddressPools": ["elsewhere"]})));
    let (code, out) = why(&c);
    assert_eq!(code, 1);
    assert!(
        out.starts_with("default/web: 10.80.0.0 from IPAddressPool/p is covered by no L2Advertisement or BGPAdvertisement"),
        "{out}"
    );
}

#[test]
fn no_eligible_node_says_why_for_each_node() {
    let c = healthy();
    c.api.delete(
        "metallb.io/v1beta1",
        "ServiceL2Status",
        Some(NS),
        "l2-node-1",
    );
    // node-1 excluded by label, node-2's agent not ready, node-3 not selected.
    c.api.apply(node(
        "node-1",
        json!({"rack": "a", "node.kubernetes.io/exclude-from-external-load-balancers": ""}),
    ));
    c.api.apply(agent_pod("node-2", false));
    c.api.apply(node("node-3", json!({"rack": "c"})));
    c.api.apply(agent_pod("node-3", true));
    c.api.apply(l2_ad(json!({"nodeSelectors": [{"matchExpressions": [{"key": "rack", "operator": "In", "values": ["a", "b"]}]}]})));
    let (code, out) = why(&c);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "default/web has 10.80.0.0 but no node may announce it at Layer 2\n  \
         node node-1: labelled node.kubernetes.io/exclude-from-external-load-balancers\n  \
         node node-2: its agent is not running or not ready\n  \
         node node-3: not selected by the nodeSelectors of L2Advertisement l2\n"
    );
    // externalTrafficPolicy Local without a ready endpoint on the one remaining candidate.
    c.api.apply(l2_ad(json!({})));
    c.api.apply(node("node-1", json!({"rack": "a"})));
    c.api.apply(agent_pod("node-2", true));
    c.api.delete("v1", "Node", None, "node-3");
    let mut svc = c
        .api
        .get("v1", "Service", Some("default"), "web")
        .expect("web");
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    c.api.apply(svc);
    let (_, out) = why(&c);
    assert!(
        out.contains("node node-1: externalTrafficPolicy is Local and it holds no ready endpoint"),
        "{out}"
    );
}

#[test]
fn candidates_without_an_announcer_or_with_a_failure_are_told_apart() {
    let c = healthy();
    c.api.delete(
        "metallb.io/v1beta1",
        "ServiceL2Status",
        Some(NS),
        "l2-node-1",
    );
    let (code, out) = why(&c);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "default/web: nodes node-1, node-2 may announce 10.80.0.0, but no agent says it does (no ServiceL2Status): are the agents running?\n"
    );
    // The elected node says it cannot (a recent announceFailed Event).
    c.api.apply(l2_status("node-1"));
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    c.api
        .apply(json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "web.1", "namespace": "default"},
        "eventTime": now, "reason": "announceFailed", "type": "Warning", "action": "Announce",
        "reportingController": "xdplb-agent", "reportingInstance": "node-1",
        "regarding": {"kind": "Service", "namespace": "default", "name": "web"},
        "note": "node \"node-1\" cannot announce it: no interface to answer on"}));
    let (code, out) = why(&c);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "default/web: the node elected for 10.80.0.0 cannot announce it\n  \
         node \"node-1\" cannot announce it: no interface to answer on\n"
    );
}

/// The announcing node's agent is not ready (hung, crash-looping): its data path stops
/// answering when the lease lapses, and `why` says so although the status object remains.
#[test]
fn an_announcer_whose_agent_is_not_ready_is_named() {
    let c = healthy();
    c.api.apply(agent_pod("node-1", false));
    assert_eq!(
        why(&c),
        (1, "default/web: 10.80.0.0 is announced by node-1, whose agent is not ready: its data path stops answering once its lease lapses, until another node takes over\n".into())
    );
}

#[test]
fn bgp_sessions_down_are_named_and_an_established_one_is_enough() {
    let c = healthy();
    c.api
        .delete("metallb.io/v1beta1", "L2Advertisement", Some(NS), "l2");
    c.api.delete(
        "metallb.io/v1beta1",
        "ServiceL2Status",
        Some(NS),
        "l2-node-1",
    );
    c.api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "BGPAdvertisement",
                       "metadata": {"name": "bgp", "namespace": NS}, "spec": {}}),
    );
    c.api.apply(
        json!({"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
                       "metadata": {"name": "tor", "namespace": NS},
                       "spec": {"myASN": 64512, "peerASN": 65000, "peerAddress": "10.9.0.1"}}),
    );
    c.api.apply(json!({"apiVersion": "metallb.io/v1beta1", "kind": "ServiceBGPStatus",
                       "metadata": {"name": "bgp-1", "namespace": NS, "labels": {"metallb.io/node": "node-1"}},
                       "spec": {},
                       "status": {"node": "node-1", "serviceName": "web", "serviceNamespace": "default", "peers": ["tor"]}}));
    let session = |state: &str| {
        json!({"apiVersion": "frrk8s.metallb.io/v1beta1", "kind": "BGPSessionState",
               "metadata": {"name": "node-1-a", "namespace": NS,
                            "labels": {"frrk8s.metallb.io/node": "node-1", "frrk8s.metallb.io/peer": "10.9.0.1", "frrk8s.metallb.io/vrf": ""}},
               "spec": {},
               "status": {"node": "node-1", "peer": "10.9.0.1", "vrf": "", "bgpStatus": state, "bfdStatus": "N/A"}})
    };
    c.api.apply(session("Connect"));
    assert_eq!(
        why(&c),
        (1, "default/web: 10.80.0.0 is advertised, but no BGP session that carries it is Established\n  node node-1 to BGPPeer tor: Connect\n".into())
    );
    c.api.apply(session("Established"));
    assert_eq!(
        why(&c),
        (0, "default/web: 10.80.0.0 is advertised over BGP\n  node node-1 to BGPPeer tor: Established\n".into())
    );
    let (code, status) = plugin(&c.kubeconfig, &["status"]);
    assert_eq!(code, 0);
    assert!(
        status.contains("node-1  10.9.0.1  Established  N/A"),
        "{status}"
    );
}

#[test]
fn status_shows_pools_services_and_agents_in_every_output() {
    let c = healthy();
    c.api.apply(agent_pod("node-2", false));
    let (code, text) = plugin(&c.kubeconfig, &["status"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("POOL  ASSIGNED  AVAILABLE\np     1         3\n"),
        "{text}"
    );
    assert!(
        text.contains("default/web  10.80.0.0  layer2  node-1 (eth0)  announced"),
        "{text}"
    );
    assert!(
        text.contains("nodes without a ready agent: node-2"),
        "{text}"
    );
    let (_, json) = plugin(&c.kubeconfig, &["status", "-o", "json"]);
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(v["services"][0]["announced_by"], json!(["node-1 (eth0)"]));
    let (_, yaml) = plugin(&c.kubeconfig, &["status", "-o", "yaml"]);
    assert!(yaml.contains("agents_not_ready:\n- node-2"), "{yaml}");
}

/// Standalone: the same code on a directory; who should answer is the election's answer.
#[test]
fn a_standalone_directory_gets_the_same_answers() {
    let dir = std::env::temp_dir().join(unique("plugin-dir"));
    std::fs::create_dir_all(dir.join("status")).expect("dir");
    std::fs::write(
        dir.join("config.yaml"),
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p, namespace: metallb-system}\nspec: {addresses: [10.80.0.0/30]}\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: l2, namespace: metallb-system}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-2}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {type: LoadBalancer}\n",
    )
    .expect("config");
    let config_dir = dir.to_str().expect("utf-8");
    let (code, out) = plugin(
        Path::new("/nonexistent"),
        &["why", "web", "--config-dir", config_dir],
    );
    assert_eq!(code, 1);
    assert!(out.starts_with("default/web would get 10.80.0.0"), "{out}");
    std::fs::write(
        dir.join("status/allocations.yaml"),
        "allocations:\n- service: default/web\n  ips: [10.80.0.0]\n  pool: p\n",
    )
    .expect("allocations");
    let (code, out) = plugin(
        Path::new("/nonexistent"),
        &["why", "web", "--config-dir", config_dir],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("default/web: 10.80.0.0 should be answered at Layer 2 by node-"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
