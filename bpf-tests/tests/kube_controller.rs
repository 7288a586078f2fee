//! The in-cluster controller against an API server that speaks the real protocol: status
//! through the subresource, MetalLB's Events and annotation, addresses kept across restarts,
//! watches that break or expire (410 Gone → relist), a bad configuration that changes nothing,
//! and two replicas racing for the leader Lease.
use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bpf_tests::{apiserver::ApiServer, harness::agent::workspace_bin, unique};
use lb_controller::cluster::{self, Options, Timing};
use serde_json::{Value, json};

const NS: &str = "metallb-system";

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn pool(name: &str, addresses: &[&str]) -> Value {
    json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
           "metadata": {"name": name, "namespace": NS},
           "spec": {"addresses": addresses}})
}

fn service(name: &str, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default", "annotations": annotations},
           "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                    "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                    "ports": [{"port": 80, "protocol": "TCP"}]}})
}

fn base(api: &ApiServer) {
    api.apply(namespace(NS));
    api.apply(namespace("default"));
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
                     "metadata": {"name": "l2", "namespace": NS}, "spec": {}}),
    );
}

fn ingress(api: &ApiServer, name: &str) -> Vec<String> {
    api.get("v1", "Service", Some("default"), name)
        .and_then(|s| {
            s["status"]["loadBalancer"]["ingress"].as_array().map(|a| {
                a.iter()
                    .filter_map(|i| i["ip"].as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Polls `f` until it returns `Some`, or fails the test with `what`.
async fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn events(api: &ApiServer, object: &str) -> Vec<(String, String, String)> {
    api.list("events.k8s.io/v1", "Event")
        .into_iter()
        .filter(|e| e["regarding"]["name"] == object)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or("").to_owned(),
                e["note"].as_str().unwrap_or("").to_owned(),
                e["reportingInstance"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn options(identity: &str) -> Options {
    Options {
        lb_class: None,
        namespace: NS.into(),
        identity: identity.into(),
        timing: Timing {
            duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry: Duration::from_millis(200),
        },
    }
}

fn start_in_process(api: &ApiServer, identity: &str) -> tokio::task::JoinHandle<()> {
    let client = api.client();
    let opts = options(identity);
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        if let Err(e) = cluster::run(client, opts, addr, None).await {
            panic!("controller stopped: {e:#}");
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocates_writes_status_annotation_and_events() {
    let api = ApiServer::start();
    base(&api);
    api.apply(pool("small", &["10.20.0.1-10.20.0.2"]));
    api.apply(service("a", json!({})));
    api.apply(service(
        "wanted",
        json!({"metallb.io/loadBalancerIPs": "10.20.0.2"}),
    ));
    // Another client changes `a` just before the controller writes its status: the write
    // carries a stale resourceVersion, gets 409, and the controller tries again.
    api.interfere_with_next_status_write("default", "a");
    let controller = start_in_process(&api, "one");
    let a = eventually("a's address", Duration::from_secs(10), || {
        Some(ingress(&api, "a")).filter(|i| !i.is_empty())
    })
    .await;
    assert_eq!(a, ["10.20.0.1"]);
    // No memberlist Secret was there: the controller made one the agents can use.
    let secret = eventually("the memberlist Secret", Duration::from_secs(5), || {
        api.get("v1", "Secret", Some(NS), "memberlist")
    })
    .await;
    let key = secret["data"]["secretkey"].as_str().unwrap_or("");
    assert!(
        key.len() >= 24,
        "a key of at least 16 bytes (base64): {secret}"
    );
    let log = api.requests();
    let status_a = "PATCH /api/v1/namespaces/default/services/a/status";
    // The refusal is logged before the controller hears of it, so before its retry.
    let refused = log
        .iter()
        .position(|l| l.trim() == format!("-> 409 {status_a}"));
    let retried = log
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with(status_a))
        .nth(1)
        .map(|(i, _)| i);
    let conflict = matches!((refused, retried), (Some(r), Some(t)) if r < t);
    assert!(
        conflict,
        "the first status write to a did not conflict: {log:#?}"
    );
    eventually("wanted's address", Duration::from_secs(5), || {
        (ingress(&api, "wanted") == ["10.20.0.2"]).then_some(())
    })
    .await;
    // The annotation is a write of its own after the status (Kubernetes has no way to make
    // the two one): seeing a's address does not mean its annotation is there yet.
    eventually("a's pool annotation", Duration::from_secs(5), || {
        let svc = api.get("v1", "Service", Some("default"), "a")?;
        (svc["metadata"]["annotations"]["metallb.io/ip-allocated-from-pool"] == "small")
            .then_some(())
    })
    .await;
    // The pool is full: a third Service is pending, with MetalLB's Warning.
    api.apply(service("c", json!({})));
    let failed = eventually("AllocationFailed on c", Duration::from_secs(5), || {
        events(&api, "c")
            .into_iter()
            .find(|(reason, ..)| reason == "AllocationFailed")
    })
    .await;
    assert!(failed.1.contains("default/c"), "{failed:?}");
    assert!(ingress(&api, "c").is_empty());
    let allocated: Vec<_> = events(&api, "a");
    assert!(
        allocated
            .iter()
            .any(|(r, n, _)| r == "IPAllocated" && n == "Assigned IP [\"10.20.0.1\"]"),
        "{allocated:?}"
    );
    // a stops being a LoadBalancer: its address is released and goes to the pending c.
    let mut cluster_ip = service("a", json!({}));
    cluster_ip["spec"]["type"] = json!("ClusterIP");
    api.apply(cluster_ip);
    eventually("c gets a's old address", Duration::from_secs(5), || {
        (ingress(&api, "c") == ["10.20.0.1"]).then_some(())
    })
    .await;
    eventually("a released", Duration::from_secs(5), || {
        let a = api.get("v1", "Service", Some("default"), "a")?;
        (ingress(&api, "a").is_empty()
            && a["metadata"]["annotations"]
                .get("metallb.io/ip-allocated-from-pool")
                .is_none())
        .then_some(())
    })
    .await;
    // Deleting c frees the address for a Service created later.
    api.delete("v1", "Service", Some("default"), "c");
    api.apply(service("d", json!({})));
    eventually("d gets the freed address", Duration::from_secs(5), || {
        (ingress(&api, "d") == ["10.20.0.1"]).then_some(())
    })
    .await;
    controller.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_survive_restarts_broken_watches_and_expired_history() {
    let api = ApiServer::with_bookmarks(Duration::from_millis(200));
    base(&api);
    api.apply(pool("p", &["10.30.0.0/29"]));
    // Left by an earlier controller: not the first free address, and it stays.
    let mut kept = service("kept", json!({}));
    kept["status"] = json!({"loadBalancer": {"ingress": [{"ip": "10.30.0.5"}]}});
    api.apply(kept);
    api.apply(service("new", json!({})));
    // A MetalLB installation's key: kept as it is.
    let theirs = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "memberlist", "namespace": NS},
        "data": {"secretkey": "bWV0YWxsYi1pbnN0YWxsYXRpb24ta2V5"}});
    api.apply(theirs);
    let controller = start_in_process(&api, "one");
    eventually("new's address", Duration::from_secs(10), || {
        (ingress(&api, "new") == ["10.30.0.0"]).then_some(())
    })
    .await;
    assert_eq!(ingress(&api, "kept"), ["10.30.0.5"]);
    assert_eq!(
        api.get("v1", "Secret", Some(NS), "memberlist")
            .map(|s| s["data"]["secretkey"].clone()),
        Some(json!("bWV0YWxsYi1pbnN0YWxsYXRpb24ta2V5")),
        "an existing memberlist Secret must not be replaced"
    );
    assert!(
        events(&api, "kept").is_empty(),
        "nothing happened to kept: {:?}",
        events(&api, "kept")
    );

    // A network blip: every watch ends; the controller resumes and sees what follows.
    api.break_watches();
    api.apply(service("after-blip", json!({})));
    eventually("after-blip's address", Duration::from_secs(10), || {
        (ingress(&api, "after-blip") == ["10.30.0.1"]).then_some(())
    })
    .await;

    // The history is compacted while the watches are down: resuming gets 410 Gone, and the
    // controller must list again to see the Service created meanwhile. Held, so that no
    // watch resumes (or delivers a last event) between the break and the compaction.
    api.hold_watches();
    api.break_watches();
    api.apply(service("after-gone", json!({})));
    api.compact();
    api.release_watches();
    eventually("after-gone's address", Duration::from_secs(15), || {
        (ingress(&api, "after-gone") == ["10.30.0.2"]).then_some(())
    })
    .await;
    let log = api.requests();
    assert!(
        log.iter().any(|l| l.contains("watch ERROR 410")),
        "no watch was answered 410: {log:#?}"
    );
    let relists = log
        .iter()
        .filter(|l| l.starts_with("GET /api/v1/services?") && !l.contains("watch=true"))
        .count();
    assert!(relists >= 2, "the Services were not listed again: {log:#?}");

    // A restarted controller rebuilds its state from status and moves nothing.
    controller.abort();
    let _ = controller.await;
    let before: Vec<Vec<String>> = ["kept", "new", "after-blip", "after-gone"]
        .iter()
        .map(|s| ingress(&api, s))
        .collect();
    api.apply(service("after-restart", json!({})));
    let controller = start_in_process(&api, "two");
    eventually("after-restart's address", Duration::from_secs(10), || {
        (ingress(&api, "after-restart") == ["10.30.0.3"]).then_some(())
    })
    .await;
    let after: Vec<Vec<String>> = ["kept", "new", "after-blip", "after-gone"]
        .iter()
        .map(|s| ingress(&api, s))
        .collect();
    assert_eq!(before, after);
    controller.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_changes_nothing_and_is_raised_on_the_object() {
    let api = ApiServer::start();
    base(&api);
    api.apply(pool("good", &["10.40.0.0/30"]));
    api.apply(service("a", json!({})));
    let controller = start_in_process(&api, "one");
    eventually("a's address", Duration::from_secs(10), || {
        (ingress(&api, "a") == ["10.40.0.0"]).then_some(())
    })
    .await;
    // An edit that breaks the pool, and a second pool that overlaps it.
    api.apply(pool("good", &["10.40.0.0/33"]));
    api.apply(pool("overlap", &["10.40.0.0/29"]));
    let raised = eventually(
        "the InvalidConfiguration event",
        Duration::from_secs(5),
        || {
            events(&api, "good")
                .into_iter()
                .find(|(r, ..)| r == "InvalidConfiguration")
        },
    )
    .await;
    assert!(raised.1.contains("spec.addresses[0]"), "{raised:?}");
    // The controller's ConfigurationState says so, as MetalLB's does.
    let state = || {
        api.get(
            "metallb.io/v1beta1",
            "ConfigurationState",
            Some(NS),
            "controller",
        )
        .map(|o| {
            (
                o["status"]["result"].as_str().unwrap_or("").to_owned(),
                o["status"]["errorSummary"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                o["metadata"]["labels"]["metallb.io/component-type"].clone(),
            )
        })
    };
    let invalid = eventually(
        "an Invalid ConfigurationState",
        Duration::from_secs(5),
        || state().filter(|s| s.0 == "Invalid"),
    )
    .await;
    assert!(
        invalid.1.contains("IPAddressPool/good") && invalid.1.contains("spec.addresses[0]"),
        "{invalid:?}"
    );
    assert_eq!(invalid.2, json!("controller"));
    // The last good configuration keeps allocating: a new Service gets an address from it.
    api.apply(service("b", json!({})));
    eventually(
        "b's address from the last good config",
        Duration::from_secs(5),
        || (ingress(&api, "b") == ["10.40.0.1"]).then_some(()),
    )
    .await;
    assert_eq!(ingress(&api, "a"), ["10.40.0.0"]);
    // Fixed: the overlap is removed, the pool repaired; new allocations follow the new config.
    api.delete("metallb.io/v1beta1", "IPAddressPool", Some(NS), "overlap");
    api.apply(pool("good", &["10.40.0.0/30", "10.41.0.0/32"]));
    api.apply(service(
        "c",
        json!({"metallb.io/loadBalancerIPs": "10.41.0.0"}),
    ));
    eventually(
        "c's address from the repaired pool",
        Duration::from_secs(5),
        || (ingress(&api, "c") == ["10.41.0.0"]).then_some(()),
    )
    .await;
    eventually("a Valid ConfigurationState", Duration::from_secs(5), || {
        state().filter(|s| s.0 == "Valid" && s.1.is_empty())
    })
    .await;
    controller.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_starting_with_an_invalid_object_allocates_from_the_rest() {
    let api = ApiServer::start();
    base(&api);
    api.apply(pool("good", &["10.40.0.0/30"]));
    // Valid once, broken by an edit while no controller ran: its Service keeps its address.
    api.apply(pool("edited", &["10.60.0.0/30", "10.60.0.9/33"]));
    let mut held = service("held", json!({}));
    held["status"] = json!({"loadBalancer": {"ingress": [{"ip": "10.60.0.1"}]}});
    api.apply(held);
    api.apply(pool("broken", &["10.50.0.0/33"]));
    api.apply(service("a", json!({})));
    api.apply(service("b", json!({"metallb.io/address-pool": "broken"})));
    let controller = start_in_process(&api, "one");
    eventually("a's address", Duration::from_secs(10), || {
        (ingress(&api, "a") == ["10.40.0.0"]).then_some(())
    })
    .await;
    eventually(
        "the InvalidConfiguration event",
        Duration::from_secs(5),
        || {
            events(&api, "broken")
                .into_iter()
                .find(|(r, ..)| r == "InvalidConfiguration")
        },
    )
    .await;
    assert!(ingress(&api, "b").is_empty(), "b's pool is left out");
    assert_eq!(ingress(&api, "held"), ["10.60.0.1"], "held was renumbered");
    assert!(
        events(&api, "held").is_empty(),
        "nothing happened to held: {:?}",
        events(&api, "held")
    );
    controller.abort();
}

fn pool_status(api: &ApiServer, name: &str) -> Option<(i64, i64, i64, i64)> {
    let s = api.get("metallb.io/v1beta1", "IPAddressPool", Some(NS), name)?["status"].clone();
    Some((
        s["assignedIPv4"].as_i64()?,
        s["availableIPv4"].as_i64()?,
        s["assignedIPv6"].as_i64()?,
        s["availableIPv6"].as_i64()?,
    ))
}

/// MetalLB's pool status (≥ 0.15): the counters follow allocation, release and pool edits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_status_follows_allocation_release_and_pool_edits() {
    let api = ApiServer::start();
    base(&api);
    api.apply(pool("p", &["10.60.0.0/30", "fd60::/126"]));
    let controller = start_in_process(&api, "one");
    let status = |want| {
        let api = &api;
        async move {
            eventually(
                &format!("pool status {want:?}"),
                Duration::from_secs(10),
                || (pool_status(api, "p") == Some(want)).then_some(()),
            )
            .await
        }
    };
    status((0, 4, 0, 4)).await;
    api.apply(service("a", json!({})));
    api.apply(service("b", json!({})));
    status((2, 2, 0, 4)).await;
    // Released: the Service is no LoadBalancer any more.
    let mut b = api.get("v1", "Service", Some("default"), "b").expect("b");
    b["spec"]["type"] = json!("ClusterIP");
    api.apply(b);
    status((1, 3, 0, 4)).await;
    // The pool grows by a /30.
    api.apply(pool("p", &["10.60.0.0/30", "10.60.0.4/30", "fd60::/126"]));
    status((1, 7, 0, 4)).await;
    controller.abort();
}

/// An allocated address no advertisement covers gets a Warning Event on its Service (once,
/// not once per pass); covered, nothing more is said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_no_advertisement_covers_is_reported_on_the_service() {
    let api = ApiServer::start();
    api.apply(namespace(NS));
    api.apply(namespace("default"));
    api.apply(pool("lonely", &["10.70.0.0/30"]));
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
                     "metadata": {"name": "other", "namespace": NS},
                     "spec": {"ipAddressPools": ["elsewhere"]}}),
    );
    api.apply(service("a", json!({})));
    let controller = start_in_process(&api, "one");
    let reported = || {
        events(&api, "a")
            .into_iter()
            .filter(|(reason, _, _)| reason == "NoAdvertisement")
            .collect::<Vec<_>>()
    };
    let found = eventually("a NoAdvertisement event", Duration::from_secs(10), || {
        let r = reported();
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert!(
        found[0].1.starts_with("10.70.0.0 from IPAddressPool/lonely is covered by no L2Advertisement or BGPAdvertisement"),
        "{found:?}"
    );
    // More passes (another Service) say nothing more about `a`.
    api.apply(service("b", json!({})));
    eventually("b allocated", Duration::from_secs(10), || {
        (!ingress(&api, "b").is_empty()).then_some(())
    })
    .await;
    api.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
                     "metadata": {"name": "other", "namespace": NS},
                     "spec": {"ipAddressPools": ["lonely"]}}),
    );
    api.apply(service("c", json!({})));
    eventually("c allocated", Duration::from_secs(10), || {
        (!ingress(&api, "c").is_empty()).then_some(())
    })
    .await;
    assert_eq!(reported().len(), 1, "{:?}", reported());
    // Raised once: the recorder would fold repeats into a series on the same Event.
    let series: Vec<Value> = api
        .list("events.k8s.io/v1", "Event")
        .into_iter()
        .filter(|e| e["regarding"]["name"] == "a" && e["reason"] == "NoAdvertisement")
        .map(|e| e["series"].clone())
        .collect();
    assert_eq!(series, vec![Value::Null], "{series:?}");
    assert!(
        events(&api, "c")
            .iter()
            .all(|(reason, _, _)| reason != "NoAdvertisement"),
        "c is covered: {:?}",
        events(&api, "c")
    );
    controller.abort();
}

struct Replica {
    child: Child,
    identity: String,
}

impl Replica {
    fn start(kubeconfig: &std::path::Path, identity: &str) -> Self {
        let child = Command::new(workspace_bin("lb-controller"))
            .args([
                "run",
                "--namespace",
                NS,
                "--identity",
                identity,
                "--metrics-addr",
                "127.0.0.1:0",
                "--lease-duration",
                "2s",
                "--renew-deadline",
                "1500ms",
                "--retry-period",
                "200ms",
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start lb-controller: {e}"));
        Self {
            child,
            identity: identity.into(),
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn holder(api: &ApiServer) -> Option<String> {
    api.get(
        "coordination.k8s.io/v1",
        "Lease",
        Some(NS),
        cluster::LEASE_NAME,
    )?["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_and_the_standby_takes_over() {
    let api = ApiServer::start();
    base(&api);
    api.apply(pool("p", &["10.50.0.0/28"]));
    for i in 0..5 {
        api.apply(service(&format!("s{i}"), json!({})));
    }
    let dir = std::env::temp_dir().join(unique("kubeconfig"));
    api.kubeconfig(&dir);
    let mut replicas = vec![
        Replica::start(&dir, "replica-a"),
        Replica::start(&dir, "replica-b"),
    ];
    let leader = eventually("a leader", Duration::from_secs(10), || holder(&api)).await;
    for i in 0..5 {
        eventually("every Service allocated", Duration::from_secs(10), || {
            (!ingress(&api, &format!("s{i}")).is_empty()).then_some(())
        })
        .await;
    }
    // Every address distinct, every Event from the leader alone.
    let mut all: Vec<String> = (0..5)
        .flat_map(|i| ingress(&api, &format!("s{i}")))
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 5, "{all:?}");
    let reporters: Vec<String> = api
        .list("events.k8s.io/v1", "Event")
        .iter()
        .filter_map(|e| e["reportingInstance"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !reporters.is_empty() && reporters.iter().all(|r| *r == leader),
        "events from {reporters:?}, leader {leader}"
    );

    // The leader dies without releasing: the standby takes over once the Lease expires.
    let index = replicas
        .iter()
        .position(|r| r.identity == leader)
        .unwrap_or_else(|| panic!("leader {leader} is not one of ours"));
    let dead = replicas.remove(index);
    let killed_at = Instant::now();
    drop(dead);
    let standby = replicas[0].identity.clone();
    eventually("the standby leads", Duration::from_secs(10), || {
        (holder(&api).as_deref() == Some(standby.as_str())).then_some(())
    })
    .await;
    let took = killed_at.elapsed();
    api.apply(service("after-failover", json!({})));
    let ip = eventually("after-failover's address", Duration::from_secs(10), || {
        Some(ingress(&api, "after-failover")).filter(|i| !i.is_empty())
    })
    .await;
    assert!(!all.contains(&ip[0]), "{ip:?} was already given out");
    assert!(
        took >= Duration::from_millis(1500),
        "took over after {took:?}, before the Lease could expire"
    );
    let lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            Some(NS),
            cluster::LEASE_NAME,
        )
        .unwrap_or_else(|| panic!("no lease"));
    assert!(
        lease["spec"]["leaseTransitions"].as_i64() >= Some(1),
        "{lease}"
    );
    let _ = std::fs::remove_file(&dir);
}
