//! A real GoBGP (`gobgpd`) running in a namespace as the BGP peer of a test or the bench; its
//! CLI (`gobgp`, gRPC on the namespace's loopback) reads its RIB and neighbours. Killed by PID
//! on drop.
use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::{harness::netns::NetNs, unique};

pub struct GoBgp {
    child: Child,
    ns: String,
    dir: PathBuf,
}

/// `session_state` in gobgp's JSON (its API's enum).
pub const ESTABLISHED: u64 = 6;

impl GoBgp {
    /// Starts `gobgpd -f CONF` (TOML text) in `ns` and waits until its API answers.
    pub fn start(ns: &NetNs, toml: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("gobgp"));
        std::fs::create_dir_all(&dir).expect("gobgp dir");
        let conf = dir.join("gobgpd.toml");
        std::fs::write(&conf, toml).expect("write gobgpd.toml");
        let log = std::fs::File::create(dir.join("gobgpd.log")).expect("gobgpd log");
        // `ip netns exec` execs in place: the child is gobgpd itself.
        let child = ns
            .exec("gobgpd")
            .arg("-f")
            .arg(&conf)
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start gobgpd");
        let me = GoBgp {
            child,
            ns: ns.name.clone(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while me.cli(&["global", "-j"]).contains("error") || me.cli(&["global", "-j"]).is_empty() {
            assert!(Instant::now() < deadline, "gobgpd's API did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        me
    }

    /// `gobgp ARGS` against this daemon.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "gobgp"])
            .args(args)
            .output()
            .expect("run gobgp");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.cli(args)).unwrap_or(serde_json::Value::Null)
    }

    /// The neighbour's session state (see [`ESTABLISHED`]).
    pub fn state(&self, neighbor: &str) -> u64 {
        self.json(&["neighbor", neighbor, "-j"])["state"]["session_state"]
            .as_u64()
            .unwrap_or(0)
    }

    /// The global RIB of `family` (`ipv4`, `ipv6`): prefix → paths.
    pub fn rib(&self, family: &str) -> serde_json::Map<String, serde_json::Value> {
        match self.json(&["global", "rib", "-a", family, "-j"]) {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gobgpd.log")).unwrap_or_default()
    }
}

impl Drop for GoBgp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
