//! Helpers for privileged tests, the bench and the demo: network namespaces and veth pairs that
//! clean up after themselves, pin directories, `BPF_PROG_TEST_RUN`, crafted frames, and running
//! the real `lb-agent` binary inside a namespace.
//!
//! Layout:
//! - [`netns`]: `NetNs` and `Veth` guards, running commands and closures inside a namespace.
//! - [`testrun`]: `BPF_PROG_TEST_RUN` through the `bpf(2)` syscall (aya does not expose it).
//! - [`frames`]: request frames and independently built expected replies (etherparse).
//! - [`agent`]: the agent binary as a child process in a namespace.
//! - [`lab`], [`group`], [`fleet`]: the bridge segment, three agents on it, many clients;
//!   [`cluster_agents`]: three agents reading an API server instead of a directory.

pub mod agent;
pub mod agent_bench;
pub mod apiserver;
pub mod bgp_bench;
pub mod bird;
pub mod cluster_agents;
pub mod controller_bench;
pub mod failover_bench;
pub mod fleet;
pub mod frames;
pub mod frr;
pub mod gobgp;
pub mod group;
pub mod ipam_bench;
pub mod lab;
pub mod netns;
pub mod prober;
pub mod scrape;
pub mod spread_bench;
pub mod testrun;
pub mod xdp_bench;

use std::path::{Path, PathBuf};

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
