//! The agent's in-cluster configuration source against an API server that speaks the real
//! list/watch protocol: what the agent computes from (the controller's status on Services,
//! Nodes, EndpointSlices, MetalLB's membership Secret), kept current through watch events,
//! broken watches and 410 Gone relists, and a bad configuration reported without losing the
//! good one.
use std::{sync::Arc, time::Duration};

use bpf_tests::apiserver::ApiServer;
use lb_agent::source::{
    Config,
    cluster::{self, Options},
};
use serde_json::{Value, json};
use tokio::sync::mpsc::Receiver;

const NS: &str = "metallb-system";

fn node(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

fn service(name: &str, policy: &str, ip: Option<&str>) -> Value {
    let status = match ip {
        Some(ip) => json!({"loadBalancer": {"ingress": [{"ip": ip}]}}),
        None => json!({}),
    };
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy,
                    "ports": [{"port": 80, "protocol": "TCP"}]},
           "status": status})
}

fn slice(service: &str, node: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-x"), "namespace": "default",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": node,
                          "conditions": {"ready": true}}]})
}

fn setup(api: &ApiServer) {
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}));
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                     "metadata": {"name": "lab", "namespace": NS},
                     "spec": {"addresses": ["10.30.0.0/28"]}}),
    );
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
                     "metadata": {"name": "l2", "namespace": NS}, "spec": {}}),
    );
    // "a secret of sixteen+" in base64.
    api.apply(json!({"apiVersion": "v1", "kind": "Secret",
                     "metadata": {"name": "memberlist", "namespace": NS},
                     "data": {"secretkey": "YSBzZWNyZXQgb2Ygc2l4dGVlbis="}}));
    for (i, n) in ["node-1", "node-2", "node-3"].iter().enumerate() {
        api.apply(node(n, &format!("10.1.0.{}", i + 1)));
    }
    api.apply(service("web", "Cluster", Some("10.30.0.3")));
    // Not served: no address yet, and another class.
    api.apply(service("pending", "Cluster", None));
    let mut other = service("other", "Cluster", Some("10.30.0.4"));
    other["spec"]["loadBalancerClass"] = json!("example.com/other");
    api.apply(other);
}

fn options() -> Options {
    Options {
        namespace: NS.into(),
        node: "node-1".into(),
        port: 7946,
        lb_class: None,
    }
}

/// The next reading that satisfies `ok`, within `timeout`.
async fn next_until(
    rx: &mut Receiver<Result<Arc<Config>, String>>,
    what: &str,
    ok: impl Fn(&Result<Arc<Config>, String>) -> bool,
) -> Result<Arc<Config>, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("the source stopped before {what}"));
        if ok(&got) {
            return got;
        }
    }
}

fn owner_candidates(c: &Config, service: &str) -> Option<Vec<String>> {
    c.inputs
        .services
        .get(service)
        .and_then(|s| s.local_nodes.clone())
        .map(|n| n.into_iter().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_source_reads_what_the_agent_needs_and_follows_changes() {
    let api = ApiServer::start();
    setup(&api);
    let mut rx = cluster::watch(api.client(), options());

    let first = next_until(&mut rx, "the first reading", |r| r.is_ok())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let services: Vec<(&str, String, Option<&str>)> = first
        .allocations
        .iter()
        .map(|e| {
            (
                e.service.as_str(),
                e.ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                e.pool.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        services,
        [("default/web", "10.30.0.3".to_owned(), Some("lab"))],
        "only served Services with an address, with the pool that holds it"
    );
    let mut peers: Vec<String> = first.peers.iter().map(ToString::to_string).collect();
    peers.sort();
    assert_eq!(peers, ["10.1.0.2:7946", "10.1.0.3:7946"]);
    assert_eq!(
        first.secret.as_deref(),
        Some(b"a secret of sixteen+".as_slice())
    );
    assert_eq!(first.inputs.nodes.len(), 3);
    assert_eq!(
        owner_candidates(&first, "default/web"),
        None,
        "Cluster policy"
    );

    // externalTrafficPolicy: Local with its endpoint on node-2: a watch event brings both.
    api.apply(service("web", "Local", Some("10.30.0.3")));
    api.apply(slice("web", "node-2"));
    let local = next_until(&mut rx, "web as Local on node-2", |r| {
        r.as_ref()
            .is_ok_and(|c| owner_candidates(c, "default/web") == Some(vec!["node-2".into()]))
    })
    .await;
    assert!(local.is_ok());

    // Watches break and history is compacted: the reflectors relist and keep up.
    api.break_watches();
    api.compact();
    api.apply(slice("web", "node-3"));
    next_until(&mut rx, "the endpoint on node-3 after a relist", |r| {
        r.as_ref()
            .is_ok_and(|c| owner_candidates(c, "default/web") == Some(vec!["node-3".into()]))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // A bad pool is reported, naming the object and the field.
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                     "metadata": {"name": "broken", "namespace": NS},
                     "spec": {"addresses": ["10.40.0.0/33"]}}),
    );
    let bad = next_until(&mut rx, "the rejection", |r| r.is_err()).await;
    let Err(problem) = bad else {
        unreachable!("filtered above")
    };
    assert!(
        problem.contains("IPAddressPool/broken") && problem.contains("spec.addresses"),
        "{problem}"
    );
    // Fixing it brings a good reading back, with everything still there.
    api.delete("metallb.io/v1beta1", "IPAddressPool", Some(NS), "broken");
    let fixed = next_until(&mut rx, "a good reading again", |r| r.is_ok())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fixed.allocations.len(), 1);
}
