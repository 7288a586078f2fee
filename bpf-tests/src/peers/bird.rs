//! A real BIRD 2 (`bird -f`, in the foreground so its PID is the child's) running in a
//! namespace as the BGP peer of a test; `birdc` on its control socket reads its protocols and
//! routes. Killed by PID on drop.
use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::{harness::netns::NetNs, unique};

pub struct Bird {
    child: Child,
    ns: String,
    dir: PathBuf,
}

impl Bird {
    /// Starts BIRD with `config` (bird.conf text) in `ns` and waits until it answers.
    pub fn start(ns: &NetNs, config: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("bird"));
        std::fs::create_dir_all(&dir).expect("bird dir");
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config).expect("write bird.conf");
        let log = std::fs::File::create(dir.join("bird.log")).expect("bird log");
        let child = ns
            .exec("bird")
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(dir.join("bird.ctl"))
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bird");
        let me = Bird {
            child,
            ns: ns.name.clone(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !me.cli(&["show", "status"]).contains("Daemon is up") {
            assert!(
                Instant::now() < deadline,
                "BIRD did not come up: {}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        me
    }

    /// `birdc ARGS` against this daemon.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "birdc", "-s"])
            .arg(self.dir.join("bird.ctl"))
            .args(args)
            .output()
            .expect("run birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether protocol `name` has its BGP session Established.
    pub fn established(&self, name: &str) -> bool {
        self.cli(&["show", "protocols", name])
            .lines()
            .any(|l| l.starts_with(name) && l.contains("Established"))
    }

    /// `show route for PREFIX all`: every route BIRD holds for it, with attributes.
    pub fn routes(&self, prefix: &str) -> String {
        self.cli(&["show", "route", "for", prefix, "all"])
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
