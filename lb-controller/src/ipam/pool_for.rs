//! MetalLB's `poolFor`: the one pool that holds every address of a Service. Whatever wrote
//! the addresses (this controller, an operator's `kubectl patch --subresource=status`, another
//! LoadBalancer implementation, a hand-edited allocations file), an address no pool holds is
//! never announced: answering ARP for the segment's gateway would take the segment down.
use std::net::IpAddr;

use super::{allocator::PoolDef, space::Space};

/// The pools' address spaces (`avoidBuggyIPs` included), by name.
#[derive(Clone, Debug, Default)]
pub struct Pools {
    spaces: Vec<(String, Space)>,
}

impl Pools {
    pub fn new(defs: &[PoolDef]) -> Self {
        Pools {
            spaces: defs
                .iter()
                .map(|d| {
                    (
                        d.name.clone(),
                        Space::new(d.ranges.clone(), d.avoid_buggy_ips),
                    )
                })
                .collect(),
        }
    }

    /// The pool holding every one of `ips`; `None` when they are empty, when one lies in no
    /// pool, or when they lie in different pools.
    pub fn pool_for(&self, ips: &[IpAddr]) -> Option<&str> {
        let first = *ips.first()?;
        let (name, space) = self.spaces.iter().find(|(_, s)| s.contains(first))?;
        ips.iter()
            .all(|ip| space.contains(*ip))
            .then_some(name.as_str())
    }

    /// Why `ips` have no pool, in words for a log line or a status condition.
    pub fn why_not(&self, ips: &[IpAddr]) -> String {
        let outside: Vec<String> = ips
            .iter()
            .filter(|ip| !self.spaces.iter().any(|(_, s)| s.contains(**ip)))
            .map(ToString::to_string)
            .collect();
        if outside.is_empty() {
            let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
            format!("{} are not in one IPAddressPool", list.join(", "))
        } else {
            format!("{} in no IPAddressPool", outside.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::address::parse;

    fn pools(list: &[(&str, &[&str], bool)]) -> Pools {
        let defs: Vec<PoolDef> = list
            .iter()
            .map(|(name, ranges, avoid)| PoolDef {
                name: (*name).to_owned(),
                ranges: ranges
                    .iter()
                    .map(|r| parse(r).expect("test range"))
                    .collect(),
                auto_assign: true,
                avoid_buggy_ips: *avoid,
                restriction: None,
            })
            .collect();
        Pools::new(&defs)
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("test ip")).collect()
    }

    #[test]
    fn every_address_must_lie_in_the_same_pool() {
        let p = pools(&[
            ("a", &["10.0.0.0/24", "fd00::/120"], false),
            ("b", &["10.0.1.0/24"], true),
        ]);
        assert_eq!(p.pool_for(&ips(&["10.0.0.5", "fd00::5"])), Some("a"));
        assert_eq!(p.pool_for(&ips(&["10.0.1.7"])), Some("b"));
        assert_eq!(p.pool_for(&ips(&["10.0.0.5", "192.168.1.1"])), None);
        assert_eq!(p.pool_for(&ips(&["10.0.0.5", "10.0.1.5"])), None);
        // avoidBuggyIPs: .0 and .255 of pool b are not in it.
        assert_eq!(p.pool_for(&ips(&["10.0.1.255"])), None);
        assert_eq!(p.pool_for(&[]), None);
        assert_eq!(
            p.why_not(&ips(&["10.0.0.5", "192.168.1.1"])),
            "192.168.1.1 in no IPAddressPool"
        );
        assert_eq!(
            p.why_not(&ips(&["10.0.0.5", "10.0.1.5"])),
            "10.0.0.5, 10.0.1.5 are not in one IPAddressPool"
        );
    }
}
