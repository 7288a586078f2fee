//! The agent's in-cluster configuration source against an API server that speaks the real
//! list/watch protocol: what the agent computes from (the controller's status on Services,
//! Nodes, EndpointSlices, MetalLB's membership Secret, the BGP passwords the controller hands
//! over), kept current through watch events,
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
    // "a secret of sixteen+" in base64.
    bpf_tests::harness::cluster_agents::apply_baseline(
        api,
        NS,
        &["10.30.0.0/28"],
        "YSBzZWNyZXQgb2Ygc2l4dGVlbis=",
    );
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
    let mut peers: Vec<String> = first
        .peers
        .iter()
        .map(|(node, addr)| format!("{node} {addr}"))
        .collect();
    peers.sort();
    assert_eq!(peers, ["node-2 10.1.0.2:7946", "node-3 10.1.0.3:7946"]);
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

    // Watches break and history is compacted: the reflectors relist and keep up (held, so
    // that the change can only be seen by listing again).
    api.hold_watches();
    api.break_watches();
    api.apply(slice("web", "node-3"));
    api.compact();
    api.release_watches();
    next_until(&mut rx, "the endpoint on node-3 after a relist", |r| {
        r.as_ref()
            .is_ok_and(|c| owner_candidates(c, "default/web") == Some(vec!["node-3".into()]))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // A bad pool is reported, naming the object and the field; the last good configuration
    // stays, and Services are still followed.
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                     "metadata": {"name": "broken", "namespace": NS},
                     "spec": {"addresses": ["10.40.0.0/33"]}}),
    );
    let bad = next_until(&mut rx, "the rejection", |r| {
        r.as_ref().is_ok_and(|c| c.refused.is_some())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let problem = bad.refused.clone().unwrap_or_default();
    assert!(
        problem.contains("IPAddressPool/broken") && problem.contains("spec.addresses"),
        "{problem}"
    );
    assert_eq!(
        owner_candidates(&bad, "default/web"),
        Some(vec!["node-3".into()])
    );
    api.apply(service("late", "Cluster", Some("10.30.0.5")));
    let late = next_until(&mut rx, "the new Service despite the bad pool", |r| {
        r.as_ref()
            .is_ok_and(|c| c.allocations.iter().any(|a| a.service == "default/late"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(late.refused.is_some());
    // Fixing it brings a good reading back, with everything still there.
    api.delete("metallb.io/v1beta1", "IPAddressPool", Some(NS), "broken");
    let fixed = next_until(&mut rx, "a good reading again", |r| {
        r.as_ref().is_ok_and(|c| c.refused.is_none())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fixed.allocations.len(), 2);
}

/// In a cluster the BGP side is read like the rest: a BGPPeer with its password in a Secret
/// and a BGPAdvertisement give this node a session and, per Service, the peers it goes to
/// (what its ServiceBGPStatus objects say).
/// The agent reads two Secrets by name (its Role names exactly those), never the namespace's
/// Secrets: a BGPPeer's password reaches it through the copy the controller keeps, and
/// follows a change of the peer's Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_passwords_reach_the_agent_only_through_the_controllers_copy() {
    let api = ApiServer::start();
    setup(&api);
    let secret = |name: &str, password: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
               "metadata": {"name": name, "namespace": NS},
               "stringData": {"password": password}})
    };
    api.apply(secret("tor-md5", "s3cret"));
    api.apply(secret("someone-elses", "not for agents"));
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
                     "metadata": {"name": "tor", "namespace": NS},
                     "spec": {"myASN": 64512, "peerASN": 65000, "peerAddress": "10.1.0.254",
                              "passwordSecret": {"name": "tor-md5"}}}),
    );
    let mut rx = cluster::watch(api.client(), options());
    let first = next_until(&mut rx, "a first reading", |_| true).await;
    // Before the controller runs, every request is the agent's.
    let secret_requests: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.contains("/secrets"))
        .collect();
    assert!(!secret_requests.is_empty(), "{:?}", api.requests());
    for r in &secret_requests {
        assert!(
            r.contains("fieldSelector=metadata.name%3Dmemberlist")
                || r.contains("fieldSelector=metadata.name%3Dxdplb-bgp-passwords"),
            "the agent asked for Secrets its Role does not name: {r}"
        );
    }
    assert!(
        first.as_ref().map_or(true, |c| c.bgp.is_empty()),
        "a password the agent cannot have read yet"
    );

    let controller = {
        let client = api.client();
        let opts = lb_controller::cluster::Options {
            lb_class: None,
            namespace: NS.into(),
            identity: "one".into(),
            timing: lb_controller::cluster::Timing {
                duration: Duration::from_secs(2),
                renew_deadline: Duration::from_millis(1500),
                retry: Duration::from_millis(200),
            },
        };
        let addr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            if let Err(e) = lb_controller::cluster::run(client, opts, addr, None).await {
                panic!("controller stopped: {e:#}");
            }
        })
    };
    let password = |r: &Result<Arc<Config>, String>| -> Option<String> {
        r.as_ref()
            .ok()?
            .bgp
            .get("metallb-system/tor")?
            .password
            .clone()
    };
    next_until(&mut rx, "the password from the controller's copy", |r| {
        password(r).as_deref() == Some("s3cret")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let copy = api
        .get("v1", "Secret", Some(NS), "xdplb-bgp-passwords")
        .unwrap_or_else(|| panic!("no copy"));
    let keys: Vec<&String> = copy["data"]
        .as_object()
        .map(|d| d.keys().collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        ["metallb-system.tor-md5"],
        "only what a BGPPeer refers to"
    );

    api.apply(secret("tor-md5", "n3w"));
    next_until(&mut rx, "the changed password", |r| {
        password(r).as_deref() == Some("n3w")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    controller.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_source_plans_bgp_and_status_objects_follow_it() {
    use std::collections::{BTreeMap, BTreeSet};

    use lb_agent::statuses;
    use lb_controller::config::types::ServiceBGPStatus;

    let api = ApiServer::start();
    setup(&api);
    // The password as the controller hands it over (the next test runs the controller).
    api.apply(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                     "metadata": {"name": "xdplb-bgp-passwords", "namespace": NS},
                     "data": {"metallb-system.tor-md5": "czNjcmV0"}}),
    );
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
                     "metadata": {"name": "tor", "namespace": NS},
                     "spec": {"myASN": 64512, "peerASN": 65000, "peerAddress": "10.1.0.254",
                              "passwordSecret": {"name": "tor-md5"}}}),
    );
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "BGPAdvertisement",
                     "metadata": {"name": "bgp", "namespace": NS}, "spec": {}}),
    );
    let mut rx = cluster::watch(api.client(), options());
    let c = next_until(&mut rx, "a reading with the BGPPeer", |r| {
        r.as_ref().is_ok_and(|c| !c.bgp.is_empty())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let tor = &c.bgp["metallb-system/tor"];
    assert_eq!(tor.password.as_deref(), Some("s3cret"), "from the Secret");
    assert_eq!(
        tor.routes
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["10.30.0.3/32"]
    );
    let want: statuses::Wanted =
        BTreeMap::from([("default/web".to_owned(), BTreeSet::from(["tor".to_owned()]))]);
    assert_eq!(c.bgp_services, want);

    // The objects: one per Service and node, the status saying the peers.
    let objects: kube::Api<ServiceBGPStatus> = kube::Api::namespaced(api.client(), NS);
    let view = || -> Vec<(String, String, Vec<String>)> {
        let mut v: Vec<_> = api
            .list("metallb.io/v1beta1", "ServiceBGPStatus")
            .iter()
            .map(|o| {
                let s = &o["status"];
                assert_eq!(
                    o["metadata"]["labels"]["metallb.io/service-name"],
                    s["serviceName"]
                );
                assert!(
                    o["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("bgp-"))
                );
                let peers = s["peers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let (node, service) = bpf_tests::harness::cluster_agents::status_of(s);
                (node, service, peers)
            })
            .collect();
        v.sort();
        v
    };
    for node in ["node-1", "node-2"] {
        statuses::sync(&objects, node, None, &c.bgp_services)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let tor_only = vec!["tor".to_owned()];
    assert_eq!(
        view(),
        vec![
            ("node-1".into(), "default/web".into(), tor_only.clone()),
            ("node-2".into(), "default/web".into(), tor_only.clone()),
        ]
    );
    // A second peer: node-1's object is updated in place.
    let mut two = c.bgp_services.clone();
    two.entry("default/web".into())
        .or_default()
        .insert("spine".into());
    statuses::sync(&objects, "node-1", None, &two)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(api.list("metallb.io/v1beta1", "ServiceBGPStatus").len(), 2);
    assert_eq!(view()[0].2, vec!["spine".to_owned(), "tor".to_owned()]);
    // node-1 advertises nothing any more: its object goes, node-2's stays.
    statuses::sync(&objects, "node-1", None, &statuses::Wanted::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        view(),
        vec![("node-2".into(), "default/web".into(), tor_only.clone())]
    );

    // Owned by the agent's Pod; the next Pod on the node adopts the object, kept as it is.
    let owners = || -> Vec<(String, Value)> {
        api.list("metallb.io/v1beta1", "ServiceBGPStatus")
            .iter()
            .map(|o| {
                (
                    o["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                    o["metadata"]["ownerReferences"].clone(),
                )
            })
            .collect()
    };
    let before = owners();
    for uid in ["uid-1", "uid-2"] {
        let pod = statuses::Pod {
            name: format!("xdplb-agent-{uid}"),
            uid: uid.into(),
        };
        statuses::sync(&objects, "node-2", Some(&pod), &c.bgp_services)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let now = owners();
        assert_eq!(now.len(), 1);
        assert_eq!(
            now[0].0, before[0].0,
            "the object was replaced, not adopted"
        );
        assert_eq!(
            now[0].1,
            json!([{"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": uid}])
        );
    }
    assert_eq!(
        view(),
        vec![("node-2".into(), "default/web".into(), tor_only)]
    );
}
