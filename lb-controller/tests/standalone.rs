//! `lb-controller run --config-dir DIR` as a keepalived-replacement host runs it: edits to the
//! directory are picked up, a bad edit keeps the last good allocations, and allocations survive
//! a restart even when the Service that held a lower address is gone.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

struct Controller {
    child: Child,
    log: PathBuf,
}

impl Controller {
    fn start(dir: &Path) -> Self {
        let log = dir.with_extension("log");
        let child = Command::new(env!("CARGO_BIN_EXE_lb-controller"))
            .args(["run", "--metrics-addr", "127.0.0.1:0", "--config-dir"])
            .arg(dir)
            .stderr(std::fs::File::create(&log).expect("log file"))
            .stdout(Stdio::null())
            .spawn()
            .expect("start lb-controller");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /metrics` from the controller (its address is in its log).
    fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let log = self.log();
        let addr = log
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .and_then(|l| l.split("addr=").nth(1))
            .map(|a| a.trim().to_owned())
            .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect to /metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
            .expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        response
    }

    /// The value of one metric line (`name{labels}` exactly as exported).
    fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits until `f` holds for the allocations file; panics with the log after 10 s.
    fn wait(&self, dir: &Path, what: &str, f: impl Fn(&str) -> bool) {
        let path = dir.join("status/allocations.yaml");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if f(&text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: allocations.yaml is\n{text}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const POOL: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p}\nspec:\n  addresses: [10.0.0.0/29]\n";

fn service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{type: LoadBalancer, ports: [{{port: 80}}]}}\n"
    )
}

#[test]
fn edits_apply_bad_edits_keep_the_last_good_plan_and_restarts_keep_addresses() {
    let dir = std::env::temp_dir().join(format!("xdplb-standalone-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("pool.yaml"), POOL).expect("write");
    std::fs::write(dir.join("a.yaml"), service("a")).expect("write");

    let c = Controller::start(&dir);
    c.wait(&dir, "first plan", |t| {
        t.contains("service: default/a") && t.contains("10.0.0.0")
    });

    std::fs::write(dir.join("b.yaml"), service("b")).expect("write");
    c.wait(&dir, "a new Service", |t| {
        t.contains("service: default/b") && t.contains("10.0.0.1")
    });
    assert_eq!(
        c.metric("metallb_allocator_addresses_total{pool=\"p\"}"),
        Some(8.0)
    );
    assert_eq!(
        c.metric("metallb_allocator_addresses_in_use_total{pool=\"p\"}"),
        Some(2.0)
    );
    assert_eq!(
        c.metric("metallb_allocator_ipv4_addresses_in_use_total{pool=\"p\"}"),
        Some(2.0)
    );
    assert_eq!(
        c.metric("metallb_allocator_ipv6_addresses_total{pool=\"p\"}"),
        Some(0.0)
    );
    assert_eq!(c.metric("metallb_k8s_client_config_loaded_bool"), Some(1.0));
    assert_eq!(c.metric("metallb_k8s_client_config_stale_bool"), Some(0.0));

    // A bad edit: the pool no longer parses. The file keeps the last good plan.
    let before = std::fs::read_to_string(dir.join("status/allocations.yaml")).expect("read");
    std::fs::write(
        dir.join("pool.yaml"),
        POOL.replace("10.0.0.0/29", "10.0.0.0/33"),
    )
    .expect("write");
    std::fs::write(dir.join("c.yaml"), service("c")).expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.log().contains("10.0.0.0/33 is not a CIDR or range") {
        assert!(
            Instant::now() < deadline,
            "the bad edit was not reported:\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = std::fs::read_to_string(dir.join("status/allocations.yaml")).expect("read");
    assert_eq!(before, after, "a bad edit changed the allocations");
    assert_eq!(c.metric("metallb_k8s_client_config_stale_bool"), Some(1.0));
    assert!(
        c.metric("metallb_k8s_client_update_errors_total")
            .unwrap_or(0.0)
            >= 1.0
    );

    // Fixed again: the pending edit (Service c) applies.
    std::fs::write(dir.join("pool.yaml"), POOL).expect("write");
    c.wait(&dir, "the fix", |t| {
        t.contains("service: default/c") && t.contains("10.0.0.2")
    });
    assert_eq!(c.metric("metallb_k8s_client_config_stale_bool"), Some(0.0));
    drop(c);

    // Restart without Service a: b keeps 10.0.0.1 rather than taking the freed 10.0.0.0.
    std::fs::remove_file(dir.join("a.yaml")).expect("remove");
    let c = Controller::start(&dir);
    c.wait(&dir, "after restart", |t| {
        !t.contains("default/a") && t.contains("default/b") && t.contains("10.0.0.1")
    });
    let text = std::fs::read_to_string(dir.join("status/allocations.yaml")).expect("read");
    let b = text.split("service: default/b").nth(1).unwrap_or("");
    assert!(
        b.split("service:")
            .next()
            .unwrap_or("")
            .contains("10.0.0.1"),
        "b moved:\n{text}"
    );
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(dir.with_extension("log"));
}
