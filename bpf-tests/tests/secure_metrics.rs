//! The secure metrics (`--secure-metrics-addr`) of the `lb-controller run` binary against the
//! in-process API server, which answers TokenReview and SubjectAccessReview from the tokens it
//! issued and the RBAC objects applied to it: no token or a bad one gets 401, a valid token
//! without `xdplb-metrics-reader` 403, one bound to it the metrics; the probes need no token;
//! the mounted certificate is the one served; plain HTTP stays on its own address.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use bpf_tests::{
    apiserver::ApiServer,
    free_port,
    harness::{
        agent::{Controller, workspace_bin},
        scrape::{self, Trust},
    },
    unique,
};
use lb_controller::tls::certs;
use serde_json::json;

const NS: &str = "metallb-system";
const NAME: &str = "xdplb-controller-0.metrics.test";

struct Answer {
    status: u16,
    body: String,
}

/// `GET path` over HTTPS to `addr`, trusting `ca_pem` only, with `token` as the bearer.
async fn get(addr: SocketAddr, ca_pem: &[u8], path: &str, token: Option<&str>) -> Answer {
    let (path, token) = (path.to_owned(), token.map(str::to_owned));
    let trust = Trust::Ca {
        pem: ca_pem.to_vec(),
        name: NAME.to_owned(),
    };
    let got = tokio::task::spawn_blocking(move || {
        scrape::get_https(None, addr, &path, token.as_deref(), trust)
    })
    .await
    .expect("the scrape thread");
    let (status, body) = got.unwrap_or_else(|e| panic!("{e}"));
    Answer { status, body }
}

/// The mounted serving certificate: a CA of the test's and a leaf for [`NAME`], as files.
fn certificate(dir: &Path) -> (PathBuf, PathBuf, String) {
    let bundle = certs::issue(
        None,
        &certs::Verdict::NewAll("test".into()),
        &[NAME.to_owned()],
        SystemTime::now(),
    )
    .expect("issue");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &bundle.tls_crt).expect("write tls.crt");
    std::fs::write(&key, &bundle.tls_key).expect("write tls.key");
    (cert, key, bundle.ca_crt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tokens_allowed_to_get_metrics_read_them_over_https() {
    let api = ApiServer::start();
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}));
    let prometheus = api.bind_metrics_reader("monitoring", "prometheus");
    let nosy = api.service_account_token("default", "nosy");

    let dir = std::env::temp_dir().join(unique("secure-metrics"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let (cert, key, ca) = certificate(&dir);
    let (secure, plain) = (free_port(), free_port());
    let child = Command::new(workspace_bin("lb-controller"))
        .args([
            "run",
            "--namespace",
            NS,
            "--identity",
            "secure",
            "--disable-webhook",
        ])
        .arg(format!("--metrics-addr=127.0.0.1:{plain}"))
        .arg(format!("--secure-metrics-addr=127.0.0.1:{secure}"))
        .arg("--metrics-tls-cert")
        .arg(&cert)
        .arg("--metrics-tls-key")
        .arg(&key)
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start lb-controller: {e}"));
    let _controller = Controller(child);
    let addr: SocketAddr = format!("127.0.0.1:{secure}").parse().expect("addr");
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the secure metrics never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca = ca.as_bytes();

    let anonymous = get(addr, ca, "/metrics", None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let forged = get(addr, ca, "/metrics", Some("not-a-token")).await;
    assert_eq!(forged.status, 401, "{}", forged.body);
    let refused = get(addr, ca, "/metrics", Some(&nosy)).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(!refused.body.contains("metallb_"), "{}", refused.body);
    let allowed = get(addr, ca, "/metrics", Some(&prometheus)).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert!(
        allowed
            .body
            .contains("metallb_k8s_client_config_loaded_bool"),
        "{}",
        allowed.body
    );
    // Remembered verdicts give the same answers.
    assert_eq!(get(addr, ca, "/metrics", Some(&nosy)).await.status, 403);
    assert_eq!(
        get(addr, ca, "/metrics", Some(&prometheus)).await.status,
        200
    );
    // Both reviews were asked of the API server, the reader's once for its two scrapes.
    let asked = |what: &str| {
        api.requests()
            .iter()
            .filter(|r| r.starts_with("POST") && r.contains(what))
            .count()
    };
    assert_eq!(asked("tokenreviews"), 3, "{:?}", api.requests());
    assert_eq!(asked("subjectaccessreviews"), 2, "{:?}", api.requests());
    // Probes need no token.
    let health = get(addr, ca, "/healthz", None).await;
    assert_eq!(health.status, 200, "{}", health.body);
    // Plain HTTP stays where --metrics-addr put it.
    let at: SocketAddr = format!("127.0.0.1:{plain}").parse().expect("addr");
    let (_, plain) = tokio::task::spawn_blocking(move || scrape::get_here(at, "/metrics"))
        .await
        .expect("the scrape thread")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        plain.contains("metallb_k8s_client_config_loaded_bool"),
        "{plain}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn secure_metrics_need_the_cluster_and_both_halves_of_the_certificate() {
    let run = |args: &[&str]| {
        let out = Command::new(workspace_bin("lb-controller"))
            .args(args)
            .output()
            .expect("run lb-controller");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[
        "run",
        "--config-dir",
        "/nonexistent",
        "--secure-metrics-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("needs the cluster mode"), "{err}");
    let (code, err) = run(&[
        "run",
        "--secure-metrics-addr",
        "127.0.0.1:0",
        "--metrics-tls-cert",
        "/tmp/x.crt",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--metrics-tls-key"), "{err}");
}
