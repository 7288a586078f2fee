//! The validating webhook against the in-process API server, called as the API server calls
//! it: HTTPS to the Service's DNS name, trusting only the `caBundle` the controller wrote into
//! deploy/webhook.yaml's ValidatingWebhookConfiguration. Allowed, denied with the reason,
//! warnings, DELETE; the certificate issued, kept across a restart, renewed before expiry;
//! two replicas serving one certificate; the `lb-controller run` binary serving it.
use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use bpf_tests::{
    apiserver::{ApiServer, admission},
    harness::agent::{Controller, workspace_bin},
    unique,
};
use lb_controller::{tls::certs, webhook};
use serde_json::{Value, json};

const NS: &str = "metallb-system";
const SECRET: &str = "xdplb-webhook-cert";
const CONFIG: &str = "xdplb-validating-webhook";
const DNS: &str = "xdplb-webhook.metallb-system.svc";

fn setup() -> ApiServer {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("lb_controller=debug"))
        .with_test_writer()
        .try_init();
    let api = ApiServer::start();
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}));
    // The configuration as deployed, caBundle empty: the controller fills it.
    let docs = bpf_tests::deploy_docs("webhook.yaml");
    let config = docs
        .into_iter()
        .find(|d| d["kind"] == "ValidatingWebhookConfiguration")
        .expect("deploy/webhook.yaml has the configuration");
    api.apply(config);
    api.apply(pool("a", "10.0.0.0/24"));
    api.apply(json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
                     "metadata": {"name": "l2", "namespace": NS}, "spec": {"ipAddressPools": ["a"]}}));
    api
}

fn pool(name: &str, cidr: &str) -> Value {
    json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
           "metadata": {"name": name, "namespace": NS}, "spec": {"addresses": [cidr]}})
}

fn options() -> webhook::Options {
    webhook::Options {
        namespace: NS.into(),
        addr: "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
        service: "xdplb-webhook".into(),
        secret: SECRET.into(),
        configuration: CONFIG.into(),
        check_every: Duration::from_millis(300),
    }
}

/// One in-process replica of the webhook, on a port of its own.
async fn replica(api: &ApiServer) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let client = api.client();
    let task = tokio::spawn(async move {
        if let Err(e) = webhook::run_on(client, listener, options()).await {
            panic!("webhook stopped: {e:#}");
        }
    });
    (addr, task)
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn secret_field(api: &ApiServer, key: &str) -> Option<Vec<u8>> {
    let s = api.get("v1", "Secret", Some(NS), SECRET)?;
    let b64 = s["data"][key].as_str()?;
    decode(b64)
}

fn decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn ca_bundle(api: &ApiServer) -> Option<Vec<u8>> {
    let c = api.get(
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
        None,
        CONFIG,
    )?;
    decode(c["webhooks"][0]["clientConfig"]["caBundle"].as_str()?)
}

/// The CA the API server would trust, once the controller has published it and it matches
/// the Secret.
async fn published_ca(api: &ApiServer) -> Vec<u8> {
    eventually("the CA in the Secret and the caBundle", async || {
        let bundle = ca_bundle(api)?;
        (secret_field(api, "ca.crt")? == bundle).then_some(bundle)
    })
    .await
}

async fn call(addr: SocketAddr, ca: &[u8], review: &Value) -> admission::Answer {
    admission::call(addr, DNS, "/validate", ca, review)
        .await
        .unwrap_or_else(|e| panic!("webhook call: {e}"))
}

/// The answer once the webhook has read the configuration (before, it allows with a warning).
async fn decided(addr: SocketAddr, ca: &[u8], review: &Value) -> Value {
    eventually("an answer from the read configuration", async || {
        let a = call(addr, ca, review).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        let warnings = a.body["response"]["warnings"].to_string();
        (!warnings.contains("has not read the configuration yet")).then_some(a.body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_reviews_over_https_allow_deny_warn_and_delete() {
    let api = setup();
    let (addr, task) = replica(&api).await;
    let ca = published_ca(&api).await;

    let overlap = admission::review(
        "CREATE",
        "IPAddressPool",
        NS,
        "b",
        Some(pool("b", "10.0.0.128/25")),
    );
    let body = decided(addr, &ca, &overlap).await;
    let r = &body["response"];
    assert_eq!(r["uid"], "CREATE-IPAddressPool-b");
    assert_eq!(r["allowed"], false, "{body}");
    assert_eq!(r["status"]["code"], 403);
    assert_eq!(
        r["status"]["message"],
        "IPAddressPool/b: spec.addresses[0]: 10.0.0.128/25 overlaps with 10.0.0.0/24 (IPAddressPool/a spec.addresses[0])"
    );

    let fine = admission::review(
        "CREATE",
        "IPAddressPool",
        NS,
        "b",
        Some(pool("b", "10.0.1.0/24")),
    );
    let body = decided(addr, &ca, &fine).await;
    assert_eq!(body["response"]["allowed"], true, "{body}");
    assert!(body["response"].get("warnings").is_none(), "{body}");

    // A peer naming a BFD profile not created yet: allowed, with the reference as a warning.
    let peer = json!({"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
        "metadata": {"name": "tor", "namespace": NS},
        "spec": {"myASN": 64512, "peerASN": 65000, "peerAddress": "10.9.0.1", "bfdProfile": "fast"}});
    let body = decided(
        addr,
        &ca,
        &admission::review("CREATE", "BGPPeer", NS, "tor", Some(peer)),
    )
    .await;
    assert_eq!(body["response"]["allowed"], true, "{body}");
    assert_eq!(
        body["response"]["warnings"],
        json!(["BGPPeer/tor: spec.bfdProfile: no BFDProfile named \"fast\""])
    );

    // Deleting the pool the advertisement names: allowed, the dangling name a warning.
    let body = decided(
        addr,
        &ca,
        &admission::review("DELETE", "IPAddressPool", NS, "a", None),
    )
    .await;
    assert_eq!(body["response"]["allowed"], true, "{body}");
    assert_eq!(
        body["response"]["warnings"],
        json!(["L2Advertisement/l2: spec.ipAddressPools[0]: no IPAddressPool named \"a\""])
    );

    // The review reads the objects as they are now: once `a` is really gone, `b` may overlap
    // its old range.
    api.delete("metallb.io/v1beta1", "IPAddressPool", Some(NS), "a");
    eventually("the deletion seen", async || {
        let a = call(addr, &ca, &overlap).await;
        (a.body["response"]["allowed"] == true).then_some(())
    })
    .await;

    // Garbage is a 400, not a crash; the webhook answers afterwards.
    let a = admission::call(addr, DNS, "/validate", &ca, &json!({"not": "a review"}))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.status, 400);
    assert_eq!(call(addr, &ca, &fine).await.status, 200);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_survives_a_restart_and_is_renewed_before_it_expires() {
    let api = setup();
    let (addr, task) = replica(&api).await;
    let ca = published_ca(&api).await;
    let first = secret_field(&api, "tls.crt").expect("tls.crt");
    let served = call(
        addr,
        &ca,
        &admission::review("DELETE", "IPAddressPool", NS, "x", None),
    )
    .await;
    assert_eq!(Some(served.certificate.clone()), der(&first));
    task.abort();

    // A restart with the Secret present serves the same certificate; nothing is reissued.
    let (addr, task) = replica(&api).await;
    let served = eventually("the restarted replica answering", async || {
        admission::call(
            addr,
            DNS,
            "/validate",
            &ca,
            &admission::review("DELETE", "IPAddressPool", NS, "x", None),
        )
        .await
        .ok()
    })
    .await;
    assert_eq!(Some(served.certificate), der(&first));
    assert_eq!(secret_field(&api, "tls.crt"), Some(first.clone()));

    // A serving certificate issued 356 days ago (9 days left, inside the 30-day margin) is
    // replaced at once, under the same CA: the caBundle stays valid throughout.
    let pem = |k: &str| String::from_utf8(secret_field(&api, k).expect(k)).expect("PEM");
    let current = certs::Bundle {
        ca_crt: pem("ca.crt"),
        ca_key: pem("ca.key"),
        tls_crt: pem("tls.crt"),
        tls_key: pem("tls.key"),
    };
    let old_day = SystemTime::now() - Duration::from_secs(356 * 86_400);
    let aging = certs::issue(
        Some(&current),
        &certs::Verdict::NewLeaf("test".into()),
        &[DNS.to_owned()],
        old_day,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut secret = api
        .get("v1", "Secret", Some(NS), SECRET)
        .expect("the Secret");
    secret["data"]["tls.crt"] = json!(encode(aging.tls_crt.as_bytes()));
    secret["data"]["tls.key"] = json!(encode(aging.tls_key.as_bytes()));
    api.apply(secret);
    let renewed = eventually("a renewed certificate", async || {
        let now = secret_field(&api, "tls.crt")?;
        (now != first && now != aging.tls_crt.as_bytes()).then_some(now)
    })
    .await;
    assert_eq!(
        secret_field(&api, "ca.crt"),
        Some(ca.clone()),
        "the CA is kept"
    );
    eventually("the renewed certificate served", async || {
        let a = call(
            addr,
            &ca,
            &admission::review("DELETE", "IPAddressPool", NS, "x", None),
        )
        .await;
        (Some(a.certificate) == der(&renewed)).then_some(())
    })
    .await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_one_certificate_and_both_decide() {
    let api = setup();
    let dir = std::env::temp_dir().join(unique("kubeconfig"));
    api.kubeconfig(&dir);
    // One replica the binary as deployed (its flags), one in-process, racing for the Secret.
    let port = bpf_tests::free_port();
    let _binary = start_binary(&dir, port);
    let (addr, task) = replica(&api).await;
    let ca = published_ca(&api).await;
    let overlap = admission::review(
        "CREATE",
        "IPAddressPool",
        NS,
        "b",
        Some(pool("b", "10.0.0.0/28")),
    );
    let binary_addr: SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut served = Vec::new();
    for at in [addr, binary_addr] {
        let body = eventually("a replica answering", async || {
            let a = admission::call(at, DNS, "/validate", &ca, &overlap)
                .await
                .ok()?;
            let warnings = a.body["response"]["warnings"].to_string();
            (!warnings.contains("has not read")).then_some(a)
        })
        .await;
        assert_eq!(body.body["response"]["allowed"], false, "{:?}", body.body);
        served.push(body.certificate);
    }
    let tls = secret_field(&api, "tls.crt").expect("tls.crt");
    eventually("both serving the Secret's certificate", async || {
        let a = call(addr, &ca, &overlap).await.certificate;
        let b = call(binary_addr, &ca, &overlap).await.certificate;
        (Some(&a) == der(&tls).as_ref() && a == b).then_some(())
    })
    .await;
    task.abort();
    let _ = std::fs::remove_file(&dir);
}

/// Writes through the API, as `kubectl apply` makes them: the API server (the in-process one,
/// routing the webhook's Service to the replica) calls the webhook before storing. A denial
/// reaches the client as 403 with the reason; with the webhook gone, `failurePolicy: Ignore`
/// lets writes through, and `Fail` refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_api_are_admitted_by_the_webhook_and_fail_open() {
    use kube::api::{Api, DynamicObject, PostParams};
    let api = setup();
    let (addr, task) = replica(&api).await;
    api.route_service(NS, "xdplb-webhook", &[addr]);
    let ca = published_ca(&api).await;
    // Ready: it decides from the configuration it has read.
    decided(
        addr,
        &ca,
        &admission::review("DELETE", "IPAddressPool", NS, "x", None),
    )
    .await;
    let pools: Api<DynamicObject> = Api::namespaced_with(
        api.client(),
        NS,
        &kube::api::ApiResource {
            group: "metallb.io".into(),
            version: "v1beta1".into(),
            api_version: "metallb.io/v1beta1".into(),
            kind: "IPAddressPool".into(),
            plural: "ipaddresspools".into(),
        },
    );
    let object = |name: &str, cidr: &str| -> DynamicObject {
        serde_json::from_value(pool(name, cidr)).unwrap_or_else(|e| panic!("{e}"))
    };
    let denied = pools
        .create(&PostParams::default(), &object("b", "10.0.0.128/25"))
        .await;
    match denied {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{e:?}");
            assert_eq!(
                e.message,
                "admission webhook \"metallb-config.xdplb.io\" denied the request: IPAddressPool/b: spec.addresses[0]: 10.0.0.128/25 overlaps with 10.0.0.0/24 (IPAddressPool/a spec.addresses[0])"
            );
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    assert!(
        api.get("metallb.io/v1beta1", "IPAddressPool", Some(NS), "b")
            .is_none()
    );
    pools
        .create(&PostParams::default(), &object("b", "10.0.1.0/24"))
        .await
        .unwrap_or_else(|e| panic!("a valid pool is admitted: {e}"));

    // The webhook gone (no replica answers): Ignore lets the write through.
    task.abort();
    let _ = task.await;
    eventually("the webhook down", async || {
        admission::call(
            addr,
            DNS,
            "/validate",
            &ca,
            &admission::review("DELETE", "IPAddressPool", NS, "x", None),
        )
        .await
        .is_err()
        .then_some(())
    })
    .await;
    pools
        .create(&PostParams::default(), &object("c", "10.0.0.0/28"))
        .await
        .unwrap_or_else(|e| panic!("failurePolicy Ignore admits while the webhook is down: {e}"));
    // Made strict, the same outage refuses writes.
    let mut config = api
        .get(
            "admissionregistration.k8s.io/v1",
            "ValidatingWebhookConfiguration",
            None,
            CONFIG,
        )
        .expect("the configuration");
    config["webhooks"][0]["failurePolicy"] = json!("Fail");
    api.apply(config);
    match pools
        .create(&PostParams::default(), &object("d", "10.0.2.0/24"))
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 500, "{e:?}");
            assert!(
                e.message
                    .contains("failed calling webhook \"metallb-config.xdplb.io\""),
                "{e:?}"
            );
        }
        other => panic!("expected a refusal under failurePolicy Fail, got {other:?}"),
    }
}

/// The DER of the first certificate of a PEM text.
fn der(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(pem)
        .next()?
        .ok()
        .map(|c| c.as_ref().to_vec())
}

fn encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `lb-controller run` as deployed, against the API server of `kubeconfig`, serving the
/// webhook on `port`.
fn start_binary(kubeconfig: &std::path::Path, port: u16) -> Controller {
    let child = Command::new(workspace_bin("lb-controller"))
        .args([
            "run",
            "--namespace",
            NS,
            "--identity",
            "binary",
            "--metrics-addr",
            "127.0.0.1:0",
            "--webhook-addr",
            &format!("127.0.0.1:{port}"),
            "--webhook-check-every",
            "300ms",
        ])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start lb-controller: {e}"));
    Controller(child)
}
