//! The lab: one L2 segment (a bridge in a namespace of its own, so the host's networking is
//! never touched), N node namespaces and a client namespace attached to it. Tests, the bench
//! and the demo build on it; everything is deleted on drop, also when a test panics.
//!
//! Addresses: the segment is 10.210.0.0/24 and fd00:210::/64; the client is .1 / ::1, node i
//! (from 1) is .(10 + i) / ::(10 + i) on `eth0`. Router namespaces (BGP) attach the same way.
use std::collections::BTreeSet;

use crate::{
    PinDir,
    harness::netns::{NetNs, ip},
};

/// One host on the segment.
pub struct Host {
    pub ns: NetNs,
    pub ipv4: String,
    pub ipv6: String,
}

/// Attaches the pass-through XDP program to the bridge `ports` in `segment`, pinned in `dir`.
fn pass_through(segment: &NetNs, dir: &std::path::Path, ports: Vec<String>) {
    let dir = dir.to_owned();
    segment.within(move || {
        let mut dp = lb_agent::l2::datapath::Datapath::load(&dir, 0)
            .unwrap_or_else(|e| panic!("load xdp_pass: {e}"));
        for port in &ports {
            dp.attach_pass(
                port,
                lb_agent::l2::datapath::XdpModes::NativeOnly,
                Some(&dir.join(format!("pass_{port}"))),
            )
            .unwrap_or_else(|e| panic!("xdp_pass on {port}: {e}"));
        }
    });
}

impl Host {
    /// `count` ARP requests for `target` from this host's `eth0`, waiting at most `deadline`
    /// seconds in all (arping's `-w`): the replying MACs, one per answer.
    pub fn arping_within(&self, target: &str, count: u32, deadline: &str) -> Vec<String> {
        let out = self
            .ns
            .exec("arping")
            .args([
                "-c",
                &count.to_string(),
                "-w",
                deadline,
                "-I",
                "eth0",
                target,
            ])
            .output()
            .expect("run arping");
        crate::harness::netns::arping_macs(&out.stdout)
    }
}

/// Makes the kernel's neighbour tables hold every host's neighbours on a segment of `hosts`.
///
/// The ARP and NDP tables are one for all namespaces, with a hard limit (`gc_thresh3`, 1,024
/// by default) over all their entries: a segment of 100 hosts, each resolving the others,
/// needs some 10,000. Past the limit the kernel logs "neighbor table overflow" and drops
/// what waits on resolution, which a group of agents sees as lost heartbeats. One host of a
/// real segment holds only its own 100. The limits are only ever raised (labs run side by
/// side), and a failure to raise them is no reason not to run.
fn room_for_neighbours(hosts: usize) {
    let entries = 2 * hosts * hosts;
    for family in ["ipv4", "ipv6"] {
        for (name, wanted) in [
            ("gc_thresh1", entries),
            ("gc_thresh2", 2 * entries),
            ("gc_thresh3", 4 * entries),
        ] {
            let path = format!("/proc/sys/net/{family}/neigh/default/{name}");
            let now: Option<usize> = std::fs::read_to_string(&path)
                .ok()
                .and_then(|v| v.trim().parse().ok());
            if now.is_some_and(|n| n < wanted) {
                let _ = std::fs::write(&path, wanted.to_string());
            }
        }
    }
}

/// A bridge segment with a client and `n` nodes.
pub struct Lab {
    /// Holds the bridge `br0` and the host-side end of every veth.
    pub segment: NetNs,
    pub client: Host,
    pub nodes: Vec<Host>,
    /// The nodes' names, as the Node objects and the agents' `--node-name` give them:
    /// `node-1`, `node-2`, ...
    pub names: Vec<String>,
    /// Pins of the `xdp_pass` programs on the bridge ports (native XDP_TX on a veth needs a
    /// program on the other end).
    _pass_pins: PinDir,
    /// The nodes' MACs, read once.
    macs: std::sync::OnceLock<Vec<[u8; 6]>>,
}

fn attach_host(segment: &NetNs, tag: &str, index: usize, addr: u8) -> Host {
    let ns = NetNs::new(&crate::unique(tag));
    let port = format!("p{index}");
    ip(&[
        "link",
        "add",
        "eth0",
        "netns",
        &ns.name,
        "type",
        "veth",
        "peer",
        "name",
        &port,
        "netns",
        &segment.name,
    ]);
    segment.ip(&["link", "set", &port, "master", "br0"]);
    segment.ip(&["link", "set", &port, "up"]);
    let (ipv4, ipv6) = (format!("10.210.0.{addr}"), format!("fd00:210::{addr:x}"));
    ns.ip(&["addr", "add", &format!("{ipv4}/24"), "dev", "eth0"]);
    ns.ip(&["addr", "add", &format!("{ipv6}/64"), "dev", "eth0", "nodad"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    Host { ns, ipv4, ipv6 }
}

impl Lab {
    /// Builds the segment; `tag` keeps names unique between labs that run at once.
    pub fn new(tag: &str, nodes: usize) -> Self {
        room_for_neighbours(nodes + 1);
        let segment = NetNs::new(&crate::unique(&format!("{tag}s")));
        segment.ip(&["link", "add", "br0", "type", "bridge"]);
        segment.ip(&["link", "set", "br0", "up"]);
        let pass_pins = PinDir::new(&format!("{tag}pass"));
        let attach = |name: &str, index: usize, addr: u8| -> Host {
            attach_host(&segment, &format!("{tag}{name}"), index, addr)
        };
        let client = attach("c", 0, 1);
        let nodes: Vec<Host> = (1..=nodes)
            .map(|i| attach(&format!("n{i}"), i, 10 + i as u8))
            .collect();
        // Every bridge port runs xdp_pass, so native XDP_TX from any host arrives.
        pass_through(
            &segment,
            pass_pins.path(),
            (0..=nodes.len()).map(|i| format!("p{i}")).collect(),
        );
        Self {
            segment,
            client,
            names: (1..=nodes.len()).map(|i| format!("node-{i}")).collect(),
            nodes,
            _pass_pins: pass_pins,
            macs: std::sync::OnceLock::new(),
        }
    }

    /// A host attached to the segment later (clients beyond the first, say): namespace
    /// `tag`, bridge port `p{port}` (unique per lab), addresses 10.210.0.`addr` and
    /// fd00:210::`addr` (hex).
    pub fn attach(&self, tag: &str, port: usize, addr: u8) -> Host {
        attach_host(&self.segment, tag, port, addr)
    }

    /// Makes the segment's bridge a switch that snoops MLD (and IGMP) and forwards multicast
    /// only to the ports whose hosts reported the group, as managed switches do: it is its own
    /// querier (answers within 1 s) and floods unregistered multicast to no port. Call it
    /// before the agents start, so that their reports are what the bridge learns from.
    pub fn snoop_multicast(&self) {
        self.segment.ip(&[
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "1",
            "mcast_querier",
            "1",
            "mcast_query_response_interval",
            "100",
        ]);
        for port in 0..=self.nodes.len() {
            let out = self
                .segment
                .exec("bridge")
                .args([
                    "link",
                    "set",
                    "dev",
                    &format!("p{port}"),
                    "mcast_flood",
                    "off",
                ])
                .output()
                .expect("run bridge");
            assert!(
                out.status.success(),
                "bridge link set p{port} mcast_flood off: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// The bridge ports (`p0` the client, `p1`... the nodes) the bridge forwards `group` to,
    /// from its multicast database.
    pub fn group_ports(&self, group: &str) -> BTreeSet<String> {
        let out = self
            .segment
            .exec("bridge")
            .args(["mdb", "show", "dev", "br0"])
            .output()
            .expect("run bridge mdb");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == group))
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "port")?;
                words.next().map(str::to_owned)
            })
            .collect()
    }

    /// The solicited-node groups node `i` (from 0) has joined on its `eth0`.
    pub fn solicited_groups(&self, i: usize) -> BTreeSet<String> {
        let out = self.nodes[i]
            .ns
            .exec("ip")
            .args(["-6", "maddr", "show", "dev", "eth0"])
            .output()
            .expect("ip maddr");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|g| g.starts_with("ff02::1:ff"))
            .map(str::to_owned)
            .collect()
    }

    /// Where the bridge ports' pass-through programs are pinned.
    pub fn pass_pins(&self) -> &std::path::Path {
        self._pass_pins.path()
    }

    /// `arping` from the client on the segment: the replying MACs, one per answered request.
    pub fn arping(&self, target: &str, count: u32) -> Vec<String> {
        self.arping_within(target, count, "3")
    }

    /// One ARP request, waiting at most `deadline` seconds (arping's `-w`): a probe fine enough
    /// to time a failover.
    pub fn arping_within(&self, target: &str, count: u32, deadline: &str) -> Vec<String> {
        self.client.arping_within(target, count, deadline)
    }

    /// One neighbour solicitation for `target` from the client, waiting `wait_ms` for every
    /// advertisement (ndisc6 `-m`): the advertised MACs, one per answer.
    pub fn ndisc6_all(&self, target: &str, wait_ms: u32) -> Vec<String> {
        let out = self
            .client
            .ns
            .exec("ndisc6")
            .args([
                "-m",
                "-n",
                "-r",
                "1",
                "-w",
                &wait_ms.to_string(),
                target,
                "eth0",
            ])
            .output()
            .expect("run ndisc6");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("Target link-layer address: ")
                    .map(|m| m.trim().to_lowercase())
            })
            .collect()
    }

    /// A host one routed hop beyond the client, which forwards for it: 10.211.0.2 and
    /// fd00:211::2 behind the client's 10.211.0.1 / fd00:211::1, and the nodes reach it
    /// through the client. With BGP the client is the router and this host a client out in
    /// the network.
    pub fn routed_host(&self, tag: &str) -> Host {
        let ns = NetNs::new(&crate::unique(tag));
        ip(&[
            "link",
            "add",
            "eth1",
            "netns",
            &self.client.ns.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        let c = &self.client.ns;
        c.ip(&["addr", "add", "10.211.0.1/24", "dev", "eth1"]);
        c.ip(&["addr", "add", "fd00:211::1/64", "dev", "eth1", "nodad"]);
        c.ip(&["link", "set", "eth1", "up"]);
        ns.ip(&["addr", "add", "10.211.0.2/24", "dev", "eth0"]);
        ns.ip(&["addr", "add", "fd00:211::2/64", "dev", "eth0", "nodad"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", "10.211.0.1"]);
        ns.ip(&["-6", "route", "add", "default", "via", "fd00:211::1"]);
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            let out = c
                .exec("sysctl")
                .args(["-qw", key])
                .output()
                .expect("run sysctl");
            assert!(out.status.success(), "{key} in the client namespace");
        }
        for n in &self.nodes {
            n.ns.ip(&["route", "add", "10.211.0.0/24", "via", "10.210.0.1"]);
            n.ns.ip(&["-6", "route", "add", "fd00:211::/64", "via", "fd00:210::1"]);
        }
        Host {
            ns,
            ipv4: "10.211.0.2".into(),
            ipv6: "fd00:211::2".into(),
        }
    }

    /// A second segment beside the first, as nodes with two NICs have: a bridge `br1` (in the
    /// segment's namespace) with a client of its own (10.212.0.1, fd00:212::1). Nodes are
    /// plugged into it with [`Self::plug`]; node i (from 0) gets `eth1` with 10.212.0.(11 + i)
    /// and fd00:212::(11 + i), on bridge port `q{i}`.
    pub fn second_segment(&self, tag: &str) -> Host {
        self.segment.ip(&["link", "add", "br1", "type", "bridge"]);
        self.segment.ip(&["link", "set", "br1", "up"]);
        let ns = NetNs::new(&crate::unique(tag));
        ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            &ns.name,
            "type",
            "veth",
            "peer",
            "name",
            "qc",
            "netns",
            &self.segment.name,
        ]);
        self.segment.ip(&["link", "set", "qc", "master", "br1"]);
        self.segment.ip(&["link", "set", "qc", "up"]);
        ns.ip(&["addr", "add", "10.212.0.1/24", "dev", "eth0"]);
        ns.ip(&["addr", "add", "fd00:212::1/64", "dev", "eth0", "nodad"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        Host {
            ns,
            ipv4: "10.212.0.1".into(),
            ipv6: "fd00:212::1".into(),
        }
    }

    /// Gives node `i` (from 0) its second NIC, `eth1` on the second segment
    /// ([`Self::second_segment`]), up and addressed: a NIC added to a running node.
    pub fn plug(&self, i: usize) {
        let ns = &self.nodes[i].ns;
        let port = format!("q{i}");
        ip(&[
            "link",
            "add",
            "eth1",
            "netns",
            &ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.segment.name,
        ]);
        self.segment.ip(&["link", "set", &port, "master", "br1"]);
        self.segment.ip(&["link", "set", &port, "up"]);
        // Native XDP_TX from the node's eth1 arrives only where the other end runs XDP.
        pass_through(&self.segment, self.pass_pins(), vec![port.clone()]);
        let addr = 11 + i;
        ns.ip(&["addr", "add", &format!("10.212.0.{addr}/24"), "dev", "eth1"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("fd00:212::{addr:x}/64"),
            "dev",
            "eth1",
            "nodad",
        ]);
        ns.ip(&["link", "set", "eth1", "up"]);
    }

    /// Takes node `i`'s second NIC's link down (`up`: back up) at the switch: the node sees
    /// its `eth1` lose carrier while its first NIC, and its heartbeats, go on.
    pub fn set_second_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        self.segment.ip(&["link", "set", &format!("q{i}"), state]);
    }

    /// The MAC of node `i`'s `dev` (i from 0).
    pub fn mac_of(&self, i: usize, dev: &str) -> [u8; 6] {
        let dev = dev.to_owned();
        self.nodes[i].ns.within(move || {
            lb_agent::l2::iface::Interface::lookup(&dev)
                .unwrap_or_else(|e| panic!("{e}"))
                .mac
        })
    }

    /// The MAC of node `i`'s `eth0` (i from 0).
    pub fn node_mac(&self, i: usize) -> [u8; 6] {
        self.node_macs()[i]
    }

    fn node_macs(&self) -> &[[u8; 6]] {
        self.macs.get_or_init(|| {
            self.nodes
                .iter()
                .map(|n| {
                    n.ns.within(|| {
                        lb_agent::l2::iface::Interface::lookup("eth0")
                            .unwrap_or_else(|e| panic!("{e}"))
                            .mac
                    })
                })
                .collect()
        })
    }

    /// The name of the node a MAC belongs to; `unknown MAC` for another.
    pub fn node_of(&self, mac: &str) -> String {
        self.node_macs()
            .iter()
            .zip(&self.names)
            .find(|(m, _)| crate::harness::netns::mac_str(m) == mac)
            .map_or_else(|| format!("unknown {mac}"), |(_, n)| n.clone())
    }

    /// Who answers one request for `vip` from the client (ARP, or NDP for an IPv6 address,
    /// every answer counted), waiting at most `deadline` seconds: the nodes' names.
    pub fn answerers(&self, vip: &str, deadline: &str) -> BTreeSet<String> {
        let macs = if vip.contains(':') {
            let ms = (deadline.parse::<f64>().unwrap_or(0.2) * 1e3) as u32;
            self.ndisc6_all(vip, ms)
        } else {
            self.arping_within(vip, 1, deadline)
        };
        macs.iter().map(|m| self.node_of(m)).collect()
    }
}
