//! Which interfaces the agent leaves alone when it chooses them itself. On a Kubernetes node
//! the interfaces that are up, Ethernet and addressed include the container runtime's and the
//! CNI's own bridges and tunnels: answering ARP there for a VIP hands pods or tunnel peers a
//! MAC they must not use, and attaching XDP to them is a needless risk. Names the user gives
//! with `--interface` are taken as given.
use regex::Regex;

/// Names of the devices that container runtimes, CNI plugins and kube-proxy create, anchored
/// at the start. `--exclude-interface` adds to these.
pub const DEFAULT: &[&str] = &[
    r"^docker\d",        // Docker's default bridge
    r"^cni\d",           // the bridge CNI plugin (flannel's cni0 among others)
    r"^cbr\d",           // kubenet
    r"^flannel[.-]",     // flannel's VXLAN and WireGuard devices
    r"^cali",            // Calico's pod veths
    r"^vxlan[.-]calico", // Calico's VXLAN (IPv4: vxlan.calico, IPv6: vxlan-v6.calico)
    r"^vxlan-v6\.calico",
    r"^tunl\d",        // Calico's IP-in-IP
    r"^cilium_",       // Cilium's host, net and vxlan devices
    r"^lxc",           // Cilium's pod veths
    r"^kube-ipvs\d",   // kube-proxy in IPVS mode holds every Service IP here
    r"^kube-bridge$",  // kube-router
    r"^weave$",        // Weave Net
    r"^nodelocaldns$", // NodeLocal DNSCache
    r"^genev_sys_",    // OVN-Kubernetes' Geneve tunnel
    r"^veth",          // pod ends of veth pairs
    r"^virbr\d",       // libvirt
    r"^lxcbr\d",       // LXC
];

/// The exclusion rules in force: [`DEFAULT`] and the user's.
#[derive(Clone, Debug)]
pub struct Exclusions(Vec<Regex>);

impl Exclusions {
    /// [`DEFAULT`] and `extra` (regular expressions, unanchored as written); an invalid
    /// expression is an error naming it.
    pub fn new(extra: &[String]) -> Result<Self, String> {
        DEFAULT
            .iter()
            .map(|s| (*s).to_owned())
            .chain(extra.iter().cloned())
            .map(|s| Regex::new(&s).map_err(|e| format!("--exclude-interface {s:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether the interface `name` is left alone.
    pub fn excludes(&self, name: &str) -> bool {
        self.0.iter().any(|r| r.is_match(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_and_cni_devices_are_left_out_and_uplinks_kept() {
        let x = Exclusions::new(&["^eth1$".to_owned()]).unwrap_or_else(|e| panic!("{e}"));
        for name in [
            "docker0",
            "cni0",
            "cbr0",
            "flannel.1",
            "flannel-wg",
            "cali1a2b3c",
            "vxlan.calico",
            "vxlan-v6.calico",
            "tunl0",
            "cilium_host",
            "cilium_vxlan",
            "lxc12ab",
            "kube-ipvs0",
            "kube-bridge",
            "weave",
            "nodelocaldns",
            "genev_sys_6081",
            "veth9f8e7d",
            "virbr0",
            "lxcbr0",
            "eth1",
        ] {
            assert!(x.excludes(name), "{name} kept");
        }
        for name in [
            "eth0",
            "ens3",
            "enp1s0f0",
            "bond0",
            "bond0.100",
            "br0",
            "eth10",
            "weave0x",
        ] {
            assert!(!x.excludes(name), "{name} left out");
        }
        assert!(
            Exclusions::new(&["(".to_owned()])
                .err()
                .is_some_and(|e| e.starts_with("--exclude-interface \"(\""))
        );
    }
}
