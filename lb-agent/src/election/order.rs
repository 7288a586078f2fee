//! Which node announces a VIP in Layer 2 mode: MetalLB's rule, so a mixed or migrating cluster
//! agrees on the owner (research/metallb.md §4). Pure: no clock, no I/O; every agent computes
//! the same answer from the same inputs, so there is nothing to coordinate.
//!
//! Candidates are ordered by their preferred-node-selector score (higher first), then by the
//! bytes of `sha256(node + "#" + ip)`, where `ip` is the Service's first load-balancer address;
//! the first candidate announces. Hashing per VIP spreads VIPs over nodes, and a node leaving
//! moves only the VIPs it owned.
use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// A node that may announce the VIP (alive, selected, not excluded, with a ready endpoint where
/// `externalTrafficPolicy: Local` asks for one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub node: String,
    /// Sum of the weights of the L2Advertisement `preferredNodeSelectors` the node matches.
    pub preference: u32,
}

fn rank(node: &str, ip: IpAddr) -> [u8; 32] {
    Sha256::digest(format!("{node}#{ip}").as_bytes()).into()
}

/// The candidates in election order: the owner first, then who takes over if it goes.
pub fn order(ip: IpAddr, candidates: &[Candidate]) -> Vec<String> {
    let mut ranked: Vec<(std::cmp::Reverse<u32>, [u8; 32], &str)> = candidates
        .iter()
        .map(|c| {
            (
                std::cmp::Reverse(c.preference),
                rank(&c.node, ip),
                c.node.as_str(),
            )
        })
        .collect();
    ranked.sort();
    ranked.into_iter().map(|(_, _, n)| n.to_owned()).collect()
}

/// The node that announces `ip`, if any candidate is left.
pub fn owner(ip: IpAddr, candidates: &[Candidate]) -> Option<String> {
    order(ip, candidates).into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<Candidate> {
        names
            .iter()
            .map(|n| Candidate {
                node: (*n).to_owned(),
                preference: 0,
            })
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    /// Orders computed with coreutils' sha256sum (`printf 'node-a#10.0.0.1' | sha256sum`):
    /// node-b 2acae885.., node-a dd41591f.., node-c f949561f..; for fd00::1:
    /// node-c 42a5d2fb.., node-b b319cdaf.., node-a f6360562...
    #[test]
    fn order_matches_sha256_of_node_and_ip_from_an_independent_tool() {
        let all = nodes(&["node-a", "node-b", "node-c"]);
        assert_eq!(
            order(ip("10.0.0.1"), &all),
            vec!["node-b", "node-a", "node-c"]
        );
        assert_eq!(
            order(ip("fd00::1"), &all),
            vec!["node-c", "node-b", "node-a"]
        );
    }

    #[test]
    fn the_input_order_does_not_matter() {
        let a = nodes(&["node-a", "node-b", "node-c"]);
        let b = nodes(&["node-c", "node-a", "node-b"]);
        assert_eq!(owner(ip("10.0.0.1"), &a), owner(ip("10.0.0.1"), &b));
    }

    #[test]
    fn preferred_nodes_win_before_the_hash() {
        let mut all = nodes(&["node-a", "node-b", "node-c"]);
        all[2].preference = 10;
        assert_eq!(owner(ip("10.0.0.1"), &all).as_deref(), Some("node-c"));
    }

    #[test]
    fn a_node_leaving_moves_only_the_vips_it_owned() {
        let all = nodes(&["n1", "n2", "n3", "n4", "n5"]);
        let without_n3 = nodes(&["n1", "n2", "n4", "n5"]);
        let vips: Vec<IpAddr> = (0..500u32)
            .map(|i| IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8]))
            .collect();
        let mut moved = 0;
        for vip in &vips {
            let before = owner(*vip, &all);
            let after = owner(*vip, &without_n3);
            if before.as_deref() == Some("n3") {
                moved += 1;
                assert_ne!(after.as_deref(), Some("n3"));
            } else {
                assert_eq!(before, after, "{vip} moved although n3 did not own it");
            }
        }
        // Spread: each of 5 nodes owns about a fifth of 500 VIPs.
        assert!((60..=140).contains(&moved), "n3 owned {moved} of 500");
    }

    #[test]
    fn no_candidates_no_owner() {
        assert_eq!(owner(ip("10.0.0.1"), &[]), None);
    }
}
