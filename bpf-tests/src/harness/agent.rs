//! The real `lb-agent` binary as a child process inside a namespace.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::harness::netns::NetNs;

/// Path of the built `lb-agent` (next to this test binary's `deps/` directory), or
/// `$XDPLB_AGENT_BIN`.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XDPLB_AGENT_BIN") {
        return PathBuf::from(p);
    }
    workspace_bin("lb-agent")
}

/// A binary of this workspace from the same build as the running test.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} missing: build it first (cargo build --workspace, or cargo xtask test)",
        bin.display()
    );
    bin
}

/// Where [`Agent::run_node`] serves metrics, inside the node's namespace.
pub const METRICS: &str = "127.0.0.1:7472";
/// Where the agents bind it: every address of their node, so a Prometheus elsewhere on the
/// lab segment scrapes them too (the lab's segment is the only network they have).
const METRICS_BIND: &str = "0.0.0.0:7472";

/// A running agent; killed (SIGKILL) on drop if still running.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    /// Starts `lb-agent run` for `node` in `ns` on `eth0`, from the standalone configuration
    /// `dir`, pinning under `pins`, metrics on [`METRICS`] inside the namespace, with
    /// `extra` arguments after those.
    pub fn run_node(ns: &NetNs, node: &str, dir: &Path, pins: &Path, extra: &[&str]) -> Self {
        Self::run_node_env(ns, node, dir, pins, extra, &[])
    }

    /// [`Agent::run_node`] with `env` added to the agent's environment.
    pub fn run_node_env(
        ns: &NetNs,
        node: &str,
        dir: &Path,
        pins: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::run_node_under(ns, &[], node, dir, pins, extra, env)
    }

    /// [`Agent::run_node_env`] run by `wrapper` (a command and its arguments that execute the
    /// rest: `setpriv` to drop capabilities, say).
    pub fn run_node_under(
        ns: &NetNs,
        wrapper: &[&str],
        node: &str,
        dir: &Path,
        pins: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let dir = dir.to_str().expect("utf-8 config path");
        let pins = pins.to_str().expect("utf-8 pin path");
        let mut args = vec!["run", "--node-name", node, "--config-dir", dir];
        // `eth0` unless `extra` says which interfaces, or how to choose them.
        if !extra
            .iter()
            .any(|a| *a == "--interface" || *a == "--exclude-interface")
        {
            args.extend_from_slice(&["--interface", "eth0"]);
        }
        args.extend_from_slice(&["--bpffs", pins, "--metrics-addr", METRICS_BIND]);
        args.extend_from_slice(extra);
        Self::start_under(ns, wrapper, &args, env)
    }

    /// Starts `lb-agent ARGS` in `ns` (network namespace only, so pins land in the host bpffs).
    pub fn start(ns: &NetNs, args: &[&str]) -> Self {
        Self::start_env(ns, args, &[])
    }

    /// The same, with `env` added to the agent's environment.
    pub fn start_env(ns: &NetNs, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_under(ns, &[], args, env)
    }

    fn start_under(ns: &NetNs, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique("agent")));
        let file = std::fs::File::create(&log).expect("agent log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .args(wrapper)
            .arg(agent_bin())
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn lb-agent");
        Self { child, log }
    }

    /// Starts `lb-agent announce --interface IFACE --vip VIPS --bpffs PINS EXTRA...` in `ns` and
    /// waits until it says it is announcing.
    pub fn announce(ns: &NetNs, iface: &str, vips: &str, pins: &Path, extra: &[&str]) -> Self {
        let pins = pins.to_str().expect("utf-8 pin path");
        let mut args = vec![
            "announce",
            "--interface",
            iface,
            "--vip",
            vips,
            "--bpffs",
            pins,
        ];
        args.extend_from_slice(extra);
        let mut agent = Self::start(ns, &args);
        agent.wait_for_log("announcing;", Duration::from_secs(20));
        agent
    }

    /// Waits until the agent's log contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        if let Err(e) = self.try_wait_for_log(needle, timeout) {
            panic!("{e}");
        }
    }

    /// Waits until the agent's log contains `needle`; after `timeout`, or when the agent
    /// exits first, says so with the log.
    pub fn try_wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let text = self.log_text();
            if text.contains(needle) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "agent exited ({status}) before logging {needle:?}:\n{text}"
                ));
            }
            if start.elapsed() >= timeout {
                return Err(format!(
                    "agent did not log {needle:?} within {timeout:?}:\n{text}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The logs of several agents, one after the other, for a failure message.
    pub fn logs<'a>(agents: impl IntoIterator<Item = &'a Agent>) -> String {
        agents
            .into_iter()
            .map(Agent::log_text)
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// Sends `signal` to the agent.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGTERM, then waits for a clean exit; panics with the log otherwise.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "agent exited with {status}:\n{}",
                    self.log_text()
                );
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "agent did not stop on SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A running `lb-controller` child: killed and reaped when dropped, so a failing test or demo
/// leaves no controller behind.
pub struct Controller(pub std::process::Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
