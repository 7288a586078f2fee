//! Real agents in a cluster: three `lb-agent run` processes without `--config-dir`, in the lab's
//! node namespaces, reading an API server (the in-process one, listening in the client
//! namespace) through `$KUBECONFIG`. The elected node answers ARP for the address the
//! controller wrote in the Service's status, records MetalLB's `nodeAssigned` Event, and a
//! killed owner is replaced, with a new Event from the new owner.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use bpf_tests::{
    apiserver::ApiServer, harness::cluster_agents::ClusterAgents, harness::lab::Lab, privileged,
    unique,
};
use serde_json::json;

const NS: &str = "metallb-system";
const VIP: &str = "10.210.0.120";

fn setup(api: &ApiServer, lab: &Lab) {
    // "kube-lab-secret-0123" in base64.
    bpf_tests::harness::cluster_agents::apply_baseline(
        api,
        NS,
        &["10.210.0.100-10.210.0.150"],
        "a3ViZS1sYWItc2VjcmV0LTAxMjM=",
    );
    bpf_tests::harness::cluster_agents::apply_nodes(api, lab);
    // As the controller leaves it: an address in the status.
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": "web", "namespace": "default"},
                     "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
                     "status": {"loadBalancer": {"ingress": [{"ip": VIP}]}}}));
}

/// Where the agents serve HTTPS metrics, in their nodes' namespaces.
const SECURE_METRICS: &str = "127.0.0.1:9120";

/// An agent's secure metrics: the API server (TokenReview, SubjectAccessReview over the RBAC
/// of deploy/secure-metrics/rbac.yaml) decides who reads them.
fn secure_metrics_answer_only_the_reader(api: &ApiServer, lab: &Lab) {
    let reader = api.bind_metrics_reader("monitoring", "prometheus");
    let other = api.service_account_token("monitoring", "grafana");
    let addr = SECURE_METRICS.parse().expect("addr");
    let scrape = |token: Option<&str>| {
        bpf_tests::harness::scrape::get_https(
            Some(&lab.nodes[1].ns),
            addr,
            "/metrics",
            token,
            bpf_tests::harness::scrape::Trust::Any,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(scrape(None).0, 401);
    assert_eq!(scrape(Some(&other)).0, 403);
    let (status, body) = scrape(Some(&reader));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("xdplb_layer2_takeovers_total"), "{body}");
}

/// (node, service, interfaces) of every ServiceL2Status.
fn l2_statuses(api: &ApiServer) -> BTreeSet<(String, String, String)> {
    api.list("metallb.io/v1beta1", "ServiceL2Status")
        .into_iter()
        .map(|o| {
            let s = &o["status"];
            let interfaces: Vec<&str> = s["interfaces"]
                .as_array()
                .map(|a| a.iter().filter_map(|i| i["name"].as_str()).collect())
                .unwrap_or_default();
            let (node, service) = bpf_tests::harness::cluster_agents::status_of(s);
            (node, service, interfaces.join(","))
        })
        .collect()
}

fn wait_for_statuses(api: &ApiServer, want: &[&str], what: &str) {
    let want: BTreeSet<(String, String, String)> = want
        .iter()
        .map(|n| ((*n).to_owned(), "default/web".to_owned(), "eth0".to_owned()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = l2_statuses(api);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: ServiceL2Status {got:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The nodes named in `nodeAssigned` Events on default/web.
fn assigned(api: &ApiServer) -> Vec<String> {
    api.list("events.k8s.io/v1", "Event")
        .into_iter()
        .filter(|e| e["regarding"]["name"] == "web" && e["reason"] == "nodeAssigned")
        .filter_map(|e| e["note"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn agents_in_a_cluster_announce_the_status_address_record_events_and_fail_over() {
    if !privileged("agents_in_a_cluster_announce_the_status_address_record_events_and_fail_over") {
        return;
    }
    let lab = Lab::new("ka", 3);
    let api = ApiServer::start_in(&lab.client.ns.name, "10.210.0.1:0");
    setup(&api, &lab);
    let kubeconfig = std::env::temp_dir().join(unique("xdplb-kubeconfig"));
    api.kubeconfig(&kubeconfig);
    let kc = kubeconfig.to_str().expect("utf-8 path").to_owned();
    // No --interface: each agent finds eth0 (up, Ethernet, addressed) as MetalLB's speaker would.
    // Secure metrics as deploy/secure-metrics serves them, self-signed.
    let mut group = ClusterAgents::new(&lab, "ka", &kc, NS);
    group.extra = vec!["--secure-metrics-addr".into(), SECURE_METRICS.into()];
    for i in 0..3 {
        group.start_agent(i);
    }
    for i in 0..3 {
        let log = group.agent(i).log_text();
        assert!(
            log.contains(r#"interfaces=["eth0"]"#),
            "interfaces not discovered:\n{log}"
        );
    }
    let within = Duration::from_secs(10);
    let owner = group.single(VIP, "at start", None, within);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !assigned(&api)
        .iter()
        .any(|n| n.contains(&format!("{owner:?}")))
    {
        assert!(
            Instant::now() < deadline,
            "no nodeAssigned Event naming {owner}: {:?}\n{}",
            assigned(&api),
            group.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    wait_for_statuses(&api, &[&owner], "at start");
    secure_metrics_answer_only_the_reader(&api, &lab);
    // `kubectl xdplb why`, from the API alone, names the node arping sees answer.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.client.ns.name])
        .arg(bpf_tests::harness::agent::workspace_bin("kubectl-xdplb"))
        .args(["why", "default/web"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("kubectl-xdplb");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said,
        format!("default/web: {VIP} is answered at Layer 2 by {owner} on eth0\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The owner dies: another node answers and says so.
    let i = group.kill(&owner);
    let next = group.single(VIP, "after the kill", Some(&owner), within);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !assigned(&api)
        .iter()
        .any(|n| n.contains(&format!("{next:?}")))
    {
        assert!(
            Instant::now() < deadline,
            "no nodeAssigned Event naming {next}: {:?}",
            assigned(&api)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The killed agent could not remove its ServiceL2Status; the new owner adds its own.
    wait_for_statuses(&api, &[&owner, &next], "after the kill");
    // Restarted, the dead node's agent clears what it no longer announces... or takes the
    // Service back (it is the elected owner): either way one object per announcing node.
    group.start_agent(i);
    let back = group.single(VIP, "after the restart", None, within);
    wait_for_statuses(&api, &[&back], "after the restart");
    // A planned stop removes the stopping node's objects.
    let j = ClusterAgents::index(&back);
    if let Some(a) = group.agents[j].take() {
        a.signal(libc::SIGTERM);
        let mut a = a;
        let _ = a.child.wait();
    }
    let last = group.single(VIP, "after the stop", Some(&back), within);
    wait_for_statuses(&api, &[&last], "after the stop");

    // The advertisement names an interface no node has: the elected node cannot announce,
    // and says so on the Service (MetalLB's announceFailed).
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
                     "metadata": {"name": "l2", "namespace": NS},
                     "spec": {"interfaces": ["eth9"]}}),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let failed: Vec<String> = api
            .list("events.k8s.io/v1", "Event")
            .into_iter()
            .filter(|e| e["regarding"]["name"] == "web" && e["reason"] == "announceFailed")
            .filter_map(|e| e["note"].as_str().map(str::to_owned))
            .collect();
        if failed
            .iter()
            .any(|n| n.contains("no interface to answer on") && n.contains("eth9"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no announceFailed naming eth9: {failed:?}\n{}",
            group.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    group.stop();
    let _ = std::fs::remove_file(&kubeconfig);
}
