//! Helpers for privileged tests, the bench and the demo: everything that needs the real kernel,
//! real peers or a real API server to test xdplb the way a user runs it.
//!
//! Layout, in four wings and the API server (each uses only the ones listed before it):
//! - [`apiserver`]: an in-process Kubernetes API server (list/watch, 410, 409, the status
//!   subresource, garbage collection) the kube tests run against.
//! - [`datapath`]: crafted frames and independently built replies ([`datapath::frames`]),
//!   `BPF_PROG_TEST_RUN` through the `bpf(2)` syscall ([`datapath::testrun`]).
//! - [`harness`]: network namespaces and veth pairs that clean up after themselves
//!   ([`harness::netns`]); the bridge segment with a client and nodes, and who answers a VIP
//!   ([`harness::lab`]); the real binaries as children ([`harness::agent`]: `Agent`,
//!   `Controller`); three agents on a directory ([`harness::group`]) or on an API server
//!   ([`harness::cluster_agents`]); many clients ([`harness::fleet`]); an ARP prober for
//!   failover times ([`harness::prober`]); `/metrics` scrapes ([`harness::scrape`]).
//! - [`peers`]: FRR, BIRD and GoBGP as BGP peers in a namespace.
//! - [`bench`]: the sections of `cargo xtask bench`, each measuring and printing its rows.
//!
//! The binaries: `xdplb-bench`, `xdplb-demo`, `xdplb-lab`.

pub mod apiserver;
pub mod bench;
pub mod datapath;
pub mod harness;
pub mod peers;

use std::path::{Path, PathBuf};

/// Whether `cargo xtask test` runs this (it installs every tool the tests need): then a missing
/// tool or build is a failure, not a skip.
pub fn required() -> bool {
    std::env::var("XDPLB_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// A TCP port free on loopback now, for a child to bind.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    l.local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The documents of `deploy/FILE`, as users apply them.
pub fn deploy_docs(file: &str) -> Vec<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    lb_controller::config::manifest::documents(&path, &text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether this process may run privileged tests (root with a bpf filesystem). When it may not,
/// prints why and returns false so the test can skip; with `XDPLB_REQUIRE_PRIVILEGED=1` (set by
/// `cargo xtask test`) it panics instead, so CI never skips silently.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let reason = if !root {
        Some("needs root (CAP_BPF, CAP_NET_ADMIN)".to_owned())
    } else if lb_agent::l2::datapath::prepare_pin_dir(Path::new("/sys/fs/bpf/xdplb-tests")).is_err()
    {
        Some("no bpf filesystem at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)".to_owned())
    } else {
        None
    };
    match reason {
        None => true,
        Some(reason) => {
            assert!(
                std::env::var_os("XDPLB_REQUIRE_PRIVILEGED").is_none(),
                "{test}: {reason}, and XDPLB_REQUIRE_PRIVILEGED is set"
            );
            eprintln!("SKIP {test}: {reason}");
            false
        }
    }
}

/// A name unique to this process and call, for namespaces, interfaces and pin directories.
/// Writes a membership secret file as an agent accepts one: readable by its owner only.
pub fn write_secret(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// A fresh membership secret: 32 random bytes, hex-encoded. The example directory's `secret`
/// is a published placeholder that agents refuse; the demo and the lab write one of these.
pub fn random_secret() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
}

pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// VmRSS of `pid`, in kB.
pub fn rss_kb(pid: u32) -> Result<u64, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

/// A pin directory under /sys/fs/bpf removed (with everything pinned in it) on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(name: &str) -> Self {
        let path = Path::new("/sys/fs/bpf/xdplb-tests").join(unique(name));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
