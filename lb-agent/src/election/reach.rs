//! Which of a Service's candidates can serve its addresses at Layer 2, from what each node says
//! of its announcing links in its heartbeats ([`crate::membership::links`]).
//!
//! MetalLB elects among every node an L2Advertisement selects, so a node whose VIP link has
//! lost carrier, or that has no address in the VIP's subnet, can win and leave the VIP
//! unanswered. Here, among the nodes MetalLB would consider:
//! 1. those with an announcing interface (of the advertisements' `interfaces`, or any) that has
//!    carrier and a network containing one of the Service's addresses are preferred;
//! 2. else those with such an interface that has carrier at all;
//! 3. else all of them, as MetalLB does: a pool outside every node's subnets keeps working, and
//!    a segment whose every link is down is not made worse.
//!
//! A node that says nothing of its links (an agent from before link awareness) ranks first.
//! The preference weights and the hash order then choose within the best rank, so where every
//! node ranks alike (one flat segment) the owner is exactly MetalLB's.
use std::{collections::BTreeSet, net::IpAddr};

use crate::membership::links::Links;

/// How well a node can serve a Service's addresses, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// No announcing interface with carrier.
    Down,
    /// An interface with carrier, none in the addresses' subnets.
    Link,
    /// An interface with carrier in a subnet of one of the addresses (or unknown).
    Subnet,
}

/// How a node whose announcing links are `links` (`None`: it does not say) reaches `ips` on
/// `interfaces` (empty: any of its announcing interfaces).
pub fn reach(links: Option<&Links>, interfaces: &BTreeSet<String>, ips: &[IpAddr]) -> Reach {
    let Some(links) = links else {
        return Reach::Subnet;
    };
    let mut usable = links
        .iter()
        .filter(|l| interfaces.is_empty() || interfaces.contains(&l.name))
        .peekable();
    if usable.peek().is_none() {
        return Reach::Down;
    }
    if usable.any(|l| l.nets.iter().any(|n| ips.iter().any(|ip| n.contains(ip)))) {
        Reach::Subnet
    } else {
        Reach::Link
    }
}

/// The candidates of the best reach among them.
pub fn best<T>(candidates: Vec<(T, Reach)>) -> Vec<T> {
    let top = candidates.iter().map(|(_, r)| *r).max();
    candidates
        .into_iter()
        .filter(|(_, r)| Some(*r) == top)
        .map(|(c, _)| c)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::links::Link;

    fn links(ifaces: &[(&str, &[&str])]) -> Links {
        Links::new(ifaces.iter().map(|(name, nets)| {
            Link {
                name: (*name).to_owned(),
                nets: nets
                    .iter()
                    .map(|n| n.parse().unwrap_or_else(|e| panic!("{e}")))
                    .collect(),
            }
        }))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn subnet_then_carrier_then_anything() {
        let any = BTreeSet::new();
        let vip = [ip("10.0.1.50")];
        let on = links(&[("eth1", &["10.0.1.0/24"])]);
        let off = links(&[("eth0", &["192.168.0.0/24"])]);
        assert_eq!(reach(Some(&on), &any, &vip), Reach::Subnet);
        assert_eq!(reach(Some(&off), &any, &vip), Reach::Link);
        assert_eq!(reach(Some(&Links::default()), &any, &vip), Reach::Down);
        assert_eq!(reach(None, &any, &vip), Reach::Subnet, "an older agent");
        // A dual-stack Service: either family's subnet will do.
        let v6 = links(&[("eth1", &["fd00:1::/64"])]);
        assert_eq!(
            reach(Some(&v6), &any, &[ip("10.9.9.9"), ip("fd00:1::50")]),
            Reach::Subnet
        );
    }

    #[test]
    fn only_the_advertisements_interfaces_count() {
        let vip = [ip("10.0.1.50")];
        let l = links(&[("eth0", &["10.0.1.0/24"]), ("eth1", &["10.0.2.0/24"])]);
        let eth1 = BTreeSet::from(["eth1".to_owned()]);
        assert_eq!(reach(Some(&l), &eth1, &vip), Reach::Link);
        let bond = BTreeSet::from(["bond0".to_owned()]);
        assert_eq!(reach(Some(&l), &bond, &vip), Reach::Down);
    }

    #[test]
    fn the_best_rank_present_wins_and_nothing_is_left_without_a_candidate() {
        use Reach::*;
        assert_eq!(best(vec![("a", Link), ("b", Subnet), ("c", Down)]), ["b"]);
        assert_eq!(
            best(vec![("a", Link), ("c", Down), ("d", Link)]),
            ["a", "d"]
        );
        assert_eq!(best(vec![("a", Down), ("c", Down)]), ["a", "c"]);
        assert!(best::<&str>(vec![]).is_empty());
    }
}
