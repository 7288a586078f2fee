//! What a node tells its peers about its announcing links: each interface that has carrier,
//! with the networks of its addresses. The election needs it from every node alike (a node
//! whose VIP link is down, or that has no address in a VIP's subnet, cannot serve the VIP at
//! Layer 2: [`crate::election::reach`]), so it travels in the heartbeat, where every agent
//! reads the same thing; its size depends on the node's interfaces, never on the VIPs.
//!
//! On the wire (inside the heartbeat's authenticated body):
//! ```text
//! count (1) | per interface: name length (1) | name | networks (1)
//!           | per network: family (1: 4 or 6) | prefix length (1) | address (4 or 16)
//! ```
//! Decoding checks every length and value before use and never panics.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Interfaces a heartbeat can carry: more than any node announces on.
pub const MAX_LINKS: usize = 32;
/// Networks per interface a heartbeat carries; further ones are left out.
pub const MAX_NETS: usize = 16;
/// Longest interface name (Linux's `IFNAMSIZ` less the NUL).
const MAX_IFNAME: usize = 15;

/// One announcing interface with carrier.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Link {
    pub name: String,
    /// Sorted, without duplicates, at most [`MAX_NETS`].
    pub nets: Vec<IpNet>,
}

/// A node's announcing interfaces that have carrier, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Links(Vec<Link>);

/// `eth1 10.0.1.0/24 fd00:1::/64, eth2` (`none` when empty), for logs.
impl std::fmt::Display for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, link) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(&link.name)?;
            for net in &link.nets {
                write!(f, " {net}")?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinksError {
    #[error("the links field is truncated or has bytes left over")]
    Length,
    #[error("an interface name is empty, too long or not UTF-8")]
    Name,
    #[error("a network has an unknown family or an impossible prefix length")]
    Network,
    #[error("more than {MAX_LINKS} interfaces")]
    TooMany,
}

impl Links {
    /// The links in canonical form (sorted, networks truncated to their prefix and
    /// deduplicated, at most [`MAX_NETS`] each, names that cannot be carried left out), so
    /// that equal states compare equal.
    pub fn new(links: impl IntoIterator<Item = Link>) -> Self {
        let mut out: Vec<Link> = links
            .into_iter()
            .filter(|l| !l.name.is_empty() && l.name.len() <= MAX_IFNAME)
            .map(|mut l| {
                l.nets = l.nets.iter().map(IpNet::trunc).collect();
                l.nets.sort();
                l.nets.dedup();
                l.nets.truncate(MAX_NETS);
                l
            })
            .collect();
        out.sort();
        out.dedup_by(|a, b| a.name == b.name);
        out.truncate(MAX_LINKS);
        Self(out)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Link> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.0.len() as u8);
        for link in &self.0 {
            out.push(link.name.len() as u8);
            out.extend_from_slice(link.name.as_bytes());
            out.push(link.nets.len() as u8);
            for net in &link.nets {
                match net.addr() {
                    IpAddr::V4(a) => {
                        out.extend_from_slice(&[4, net.prefix_len()]);
                        out.extend_from_slice(&a.octets());
                    }
                    IpAddr::V6(a) => {
                        out.extend_from_slice(&[6, net.prefix_len()]);
                        out.extend_from_slice(&a.octets());
                    }
                }
            }
        }
    }

    pub fn decode(mut data: &[u8]) -> Result<Self, LinksError> {
        let mut take = |n: usize| -> Result<&[u8], LinksError> {
            let (head, rest) = data.split_at_checked(n).ok_or(LinksError::Length)?;
            data = rest;
            Ok(head)
        };
        let count = usize::from(take(1)?[0]);
        if count > MAX_LINKS {
            return Err(LinksError::TooMany);
        }
        let mut links = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(take(1)?[0]);
            if len == 0 || len > MAX_IFNAME {
                return Err(LinksError::Name);
            }
            let name = std::str::from_utf8(take(len)?).map_err(|_| LinksError::Name)?;
            let nets = usize::from(take(1)?[0]);
            if nets > MAX_NETS {
                return Err(LinksError::Network);
            }
            let mut link = Link {
                name: name.to_owned(),
                nets: Vec::with_capacity(nets),
            };
            for _ in 0..nets {
                let head = take(2)?;
                let (family, prefix) = (head[0], head[1]);
                let addr: IpAddr = match family {
                    4 => {
                        let b: [u8; 4] = take(4)?.try_into().map_err(|_| LinksError::Length)?;
                        Ipv4Addr::from(b).into()
                    }
                    6 => {
                        let b: [u8; 16] = take(16)?.try_into().map_err(|_| LinksError::Length)?;
                        Ipv6Addr::from(b).into()
                    }
                    _ => return Err(LinksError::Network),
                };
                link.nets
                    .push(IpNet::new(addr, prefix).map_err(|_| LinksError::Network)?);
            }
            links.push(link);
        }
        if !data.is_empty() {
            return Err(LinksError::Length);
        }
        Ok(Self::new(links))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Links {
        Links::new([
            Link {
                name: "eth1".into(),
                nets: vec![
                    "10.0.1.7/24".parse().expect("net"),
                    "fd00:1::7/64".parse().expect("net"),
                ],
            },
            Link {
                name: "bond0".into(),
                nets: vec![],
            },
        ])
    }

    #[test]
    fn round_trips_in_canonical_form() {
        let l = links();
        assert_eq!(l.0[0].name, "bond0", "sorted by name");
        assert_eq!(
            l.0[1].nets[0],
            "10.0.1.0/24".parse::<IpNet>().expect("net"),
            "networks, not host addresses"
        );
        let mut wire = Vec::new();
        l.encode(&mut wire);
        assert_eq!(Links::decode(&wire), Ok(l));
    }

    #[test]
    fn every_truncation_and_every_extra_byte_is_an_error() {
        let mut wire = Vec::new();
        links().encode(&mut wire);
        for len in 0..wire.len() {
            assert!(Links::decode(&wire[..len]).is_err(), "{len} bytes accepted");
        }
        wire.push(0);
        assert_eq!(Links::decode(&wire), Err(LinksError::Length));
    }

    #[test]
    fn impossible_values_are_refused() {
        // One interface "e" with one network of family 5.
        assert_eq!(
            Links::decode(&[1, 1, b'e', 1, 5, 8, 10, 0, 0, 0]),
            Err(LinksError::Network)
        );
        // A /33 IPv4 network.
        assert_eq!(
            Links::decode(&[1, 1, b'e', 1, 4, 33, 10, 0, 0, 0]),
            Err(LinksError::Network)
        );
        assert_eq!(Links::decode(&[1, 0, 0]), Err(LinksError::Name));
        assert_eq!(Links::decode(&[33]), Err(LinksError::TooMany));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = Links::decode(&data);
        }
    }
}
