//! Network namespaces and veth pairs as guards: deleted on drop, also when a test panics.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
};

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ip` with the given arguments; panics on failure.
pub fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: &str) -> Self {
        ip(&["netns", "add", name]);
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ...`
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A command that runs inside the namespace (`ip netns exec`, new mount namespace too).
    pub fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// A command that enters only the network namespace, keeping the host's mounts (and so the
    /// host bpffs, where the agent pins): `nsenter --net=/run/netns/NAME`.
    pub fn enter(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg(program);
        cmd
    }

    /// Runs `f` on a thread that has joined this namespace, and returns its result.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A client and a node namespace joined by a veth pair, addressed on one IPv4 and one IPv6
/// subnet: the smallest L2 segment a test needs.
pub struct Link {
    pub client: NetNs,
    pub node: NetNs,
    /// Interface name in the client namespace.
    pub client_if: String,
    /// Interface name in the node namespace.
    pub node_if: String,
}

impl Link {
    /// `net` is the third octet of 10.200.NET.0/24 and the hextet of fd00:200:NET::/64, so tests
    /// running in parallel use distinct subnets (they are in distinct namespaces anyway).
    pub fn new(tag: &str) -> Self {
        let client = NetNs::new(&crate::unique(&format!("{tag}c")));
        let node = NetNs::new(&crate::unique(&format!("{tag}n")));
        let (client_if, node_if) = ("veth-c".to_owned(), "veth-n".to_owned());
        ip(&[
            "link",
            "add",
            &client_if,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &node_if,
            "netns",
            &node.name,
        ]);
        client.ip(&["addr", "add", "10.200.0.1/24", "dev", &client_if]);
        node.ip(&["addr", "add", "10.200.0.2/24", "dev", &node_if]);
        client.ip(&["addr", "add", "fd00:200::1/64", "dev", &client_if, "nodad"]);
        node.ip(&["addr", "add", "fd00:200::2/64", "dev", &node_if, "nodad"]);
        client.ip(&["link", "set", &client_if, "up"]);
        node.ip(&["link", "set", &node_if, "up"]);
        Self {
            client,
            node,
            client_if,
            node_if,
        }
    }

    /// Puts `xdp_pass` on the client end, pinned under `pins`. Native XDP on a veth drops
    /// `XDP_TX` frames unless the peer runs an XDP program (research/toolchain.md, gotcha 3);
    /// real NICs need nothing of the sort.
    pub fn pass_on_client(&self, pins: &crate::PinDir) {
        let dir = pins.path().to_owned();
        let ifname = self.client_if.clone();
        self.client.within(move || {
            let mut dp = lb_agent::l2::datapath::Datapath::load(&dir, 0)
                .unwrap_or_else(|e| panic!("load for xdp_pass: {e}"));
            dp.attach_pass(
                &ifname,
                lb_agent::l2::datapath::XdpModes::NativeOnly,
                Some(&dir.join("pass_link")),
            )
            .unwrap_or_else(|e| panic!("attach xdp_pass: {e}"));
        });
    }

    /// MAC address of the node's interface.
    pub fn node_mac(&self) -> [u8; 6] {
        let name = self.node_if.clone();
        self.node.within(move || {
            lb_agent::l2::iface::Interface::lookup(&name)
                .unwrap_or_else(|e| panic!("{e}"))
                .mac
        })
    }

    /// `arping` from the client: the replying MACs (lowercase), one per answered request.
    pub fn arping(&self, vip: &str, count: u32) -> Vec<String> {
        let out = self
            .client
            .exec("arping")
            .args([
                "-c",
                &count.to_string(),
                "-w",
                "3",
                "-I",
                &self.client_if,
                vip,
            ])
            .output()
            .expect("run arping");
        arping_macs(&out.stdout)
    }

    /// `ndisc6` from the client: the target link-layer address, if anyone answered.
    pub fn ndisc6(&self, vip: &str) -> Option<String> {
        let out = self
            .client
            .exec("ndisc6")
            .args(["-1", "-r", "3", "-w", "500", vip, &self.client_if])
            .output()
            .expect("run ndisc6");
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            l.strip_prefix("Target link-layer address: ")
                .map(|m| m.trim().to_lowercase())
        })
    }
}

/// The replying MACs (lowercase) in arping's output, one per answered request.
pub fn arping_macs(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| {
            let rest = l.split(" bytes from ").nth(1)?;
            Some(rest.split_whitespace().next()?.to_lowercase())
        })
        .collect()
}

/// Formats a MAC as arping and ndisc6 print it (lowercase).
pub fn mac_str(mac: &[u8; 6]) -> String {
    lb_agent::l2::iface::fmt_mac(mac)
}
