//! A real FRR (zebra + bgpd, optionally bfdd) running in a namespace as the BGP router of a
//! test, in a pathspace of its own (`-N`), so several coexist and none touches the host's.
//! Stopped by the PIDs in its pid files on drop.
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::{harness::netns::NetNs, unique};

pub struct Frr {
    /// The pathspace: sockets and pid files in /var/run/frr/NAME.
    pub name: String,
    run_dir: PathBuf,
    conf_dir: PathBuf,
}

impl Frr {
    /// Starts zebra and bgpd (and bfdd with `bfd`) in `ns` with `config` (frr.conf text).
    pub fn start(ns: &NetNs, config: &str, bfd: bool) -> Self {
        let mut daemons: Vec<(&str, &[&str])> = vec![("zebra", &[]), ("bgpd", &[])];
        if bfd {
            daemons.push(("bfdd", &[]));
        }
        Self::launch(ns, config, &daemons)
    }

    /// bgpd alone (`-Z`: no zebra, nothing installed in the kernel), listening on `listen`
    /// only, so several can share a namespace: the lightest BGP peer that reports what it
    /// received.
    pub fn bgpd_only(ns: &NetNs, config: &str, listen: &str) -> Self {
        Self::launch(ns, config, &[("bgpd", &["-Z", "-l", listen])])
    }

    fn launch(ns: &NetNs, config: &str, daemons: &[(&str, &[&str])]) -> Self {
        let name = unique("frr");
        let run_dir = PathBuf::from("/var/run/frr").join(&name);
        std::fs::create_dir_all(&run_dir).expect("frr run dir");
        crate::harness::netns::run(Command::new("chown").args(["frr:frr"]).arg(&run_dir));
        let conf_dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&conf_dir).expect("frr conf dir");
        let conf = conf_dir.join("frr.conf");
        std::fs::write(&conf, config).expect("write frr.conf");
        // bgpd runs as user frr and must read it.
        crate::harness::netns::run(Command::new("chmod").arg("755").arg(&conf_dir));
        crate::harness::netns::run(Command::new("chmod").arg("644").arg(&conf));
        let me = Frr {
            name,
            run_dir,
            conf_dir,
        };
        for (d, extra) in daemons {
            let out = ns
                .exec(&format!("/usr/lib/frr/{d}"))
                .args(["-N", &me.name, "-d", "-f"])
                .arg(&conf)
                .args(*extra)
                .output()
                .expect("start an FRR daemon");
            assert!(
                out.status.success(),
                "{d}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        me
    }

    /// `vtysh -c CMD` against this instance.
    pub fn vtysh(&self, cmd: &str) -> String {
        let out = Command::new("vtysh")
            .args(["-N", &self.name, "-c", cmd])
            .output()
            .expect("run vtysh");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `lines` in configuration mode (`configure terminal` first).
    pub fn configure(&self, lines: &[&str]) {
        let mut cmd = Command::new("vtysh");
        cmd.args(["-N", &self.name, "-c", "configure terminal"]);
        for l in lines {
            cmd.args(["-c", l]);
        }
        let out = cmd.output().expect("run vtysh");
        assert!(
            out.status.success(),
            "vtysh {lines:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The paths FRR holds for `prefix` (`10.0.0.1/32`) of `family` (`ipv4`, `ipv6`).
    pub fn paths(&self, family: &str, prefix: &str) -> Vec<serde_json::Value> {
        self.json(&format!("show bgp {family} unicast {prefix} json"))["paths"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A `... json` command's output, parsed (`Null` when it is not JSON).
    pub fn json(&self, cmd: &str) -> serde_json::Value {
        serde_json::from_str(&self.vtysh(cmd)).unwrap_or(serde_json::Value::Null)
    }

    /// The state of the session with `neighbor` ("Established", "Active", ...).
    pub fn peer_state(&self, neighbor: &str) -> String {
        let v = self.json(&format!("show bgp neighbors {neighbor} json"));
        v[neighbor]["bgpState"].as_str().unwrap_or("").to_owned()
    }

    /// Waits until `check` returns `Some`, at most `within`; panics with `what` and the
    /// router's view otherwise.
    pub fn wait<T>(
        &self,
        within: Duration,
        what: &str,
        mut check: impl FnMut(&Frr) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "FRR: {what} not within {within:?}\n{}\n{}",
                    self.vtysh("show bgp summary"),
                    self.vtysh("show bgp ipv4 unicast")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pids(&self) -> Vec<i32> {
        self.daemons().into_iter().map(|(_, pid)| pid).collect()
    }

    /// Each running daemon (`zebra`, `bgpd`, `bfdd`) and its PID, from its pid file.
    pub fn daemons(&self) -> Vec<(String, i32)> {
        std::fs::read_dir(&self.run_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
            .filter_map(|e| {
                let daemon = e.path().file_stem()?.to_str()?.to_owned();
                let pid = std::fs::read_to_string(e.path())
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some((daemon, pid))
            })
            .collect()
    }

    /// Leaves the daemons running (for `cargo xtask lab up`): returns the directories to
    /// delete once they are stopped, the configuration's first.
    pub fn leave_running(self) -> [PathBuf; 2] {
        let dirs = [self.conf_dir.clone(), self.run_dir.clone()];
        std::mem::forget(self);
        dirs
    }
}

/// The lab's router: FRR in the client's namespace (10.210.0.1), AS 65000, every node a
/// neighbour in AS 64512 with BFD (profile `fast`, 100 ms × 3), ECMP over up to 8 paths: the
/// other side of `deploy/examples/standalone/bgp.yaml`.
pub fn lab_router_conf(lab: &crate::harness::lab::Lab) -> String {
    let mut c = String::from(
        "frr defaults datacenter\nhostname router\n!\nrouter bgp 65000\n bgp router-id 10.210.0.1\n \
         no bgp ebgp-requires-policy\n neighbor NODES peer-group\n neighbor NODES remote-as 64512\n \
         neighbor NODES timers connect 1\n neighbor NODES bfd profile fast\n",
    );
    for n in &lab.nodes {
        c.push_str(&format!(" neighbor {} peer-group NODES\n", n.ipv4));
    }
    // bgpd stops reading at the bfd block's closing `exit`: it comes last.
    c.push_str(
        " address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n!\n\
         bfd\n profile fast\n  transmit-interval 100\n  receive-interval 100\n !\n!\n",
    );
    c
}

impl Drop for Frr {
    fn drop(&mut self) {
        let pids = self.pids();
        for pid in &pids {
            // SAFETY: plain kill(2) on a PID this instance wrote.
            unsafe { libc::kill(*pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        // SAFETY: signal 0 only checks that the process exists.
        while pids.iter().any(|p| unsafe { libc::kill(*p, 0) } == 0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in &pids {
            // SAFETY: as above.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_dir_all(&self.conf_dir);
    }
}
