//! Pool address entries: CIDRs (`10.0.0.0/24`, host bits masked off) and inclusive ranges
//! (`10.0.0.10-10.0.0.20`, spaces around `-` allowed), IPv4 or IPv6, as MetalLB accepts them.
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};

/// An inclusive range of addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

impl AddrRange {
    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &AddrRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.start <= addr && addr <= self.end
    }

    /// The fewest CIDRs that cover exactly this range.
    pub fn cidrs(&self) -> Vec<IpNet> {
        match (self.start, self.end) {
            (IpAddr::V4(s), IpAddr::V4(e)) => Ipv4Subnets::new(s, e, 0).map(IpNet::V4).collect(),
            (IpAddr::V6(s), IpAddr::V6(e)) => Ipv6Subnets::new(s, e, 0).map(IpNet::V6).collect(),
            _ => Vec::new(),
        }
    }
}

impl std::fmt::Display for AddrRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cidrs().as_slice() {
            [one] => write!(f, "{one}"),
            _ => write!(f, "{}-{}", self.start, self.end),
        }
    }
}

/// Why an address entry was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{0} is not a CIDR or range")]
    Syntax(String),
    #[error("{0}: start and end are of different IP families")]
    MixedFamilies(String),
    #[error("{0}: the start IP is after the end IP")]
    Reversed(String),
}

/// Parses one `addresses` entry.
pub fn parse(entry: &str) -> Result<AddrRange, AddressError> {
    let text = entry.trim();
    if let Some((start, end)) = text.split_once('-') {
        let (Ok(start), Ok(end)) = (start.trim().parse::<IpAddr>(), end.trim().parse::<IpAddr>())
        else {
            return Err(AddressError::Syntax(entry.to_owned()));
        };
        if start.is_ipv4() != end.is_ipv4() {
            return Err(AddressError::MixedFamilies(entry.to_owned()));
        }
        if start > end {
            return Err(AddressError::Reversed(entry.to_owned()));
        }
        return Ok(AddrRange { start, end });
    }
    let net: IpNet = text
        .parse()
        .map_err(|_| AddressError::Syntax(entry.to_owned()))?;
    let net = net.trunc();
    Ok(AddrRange {
        start: net.network(),
        end: net.broadcast(),
    })
}

/// Pairs of overlapping ranges among `ranges` (each tagged with its owner), found by sorting:
/// O(n log n), so thousands of pool entries cost nothing.
pub fn overlaps<T: Clone>(ranges: &[(AddrRange, T)]) -> Vec<((AddrRange, T), (AddrRange, T))> {
    let mut sorted: Vec<&(AddrRange, T)> = ranges.iter().collect();
    sorted.sort_by_key(|(r, _)| (r.start, r.end));
    let mut found = Vec::new();
    // The range reaching furthest so far: any later range starting before its end overlaps it.
    let mut reach: Option<&(AddrRange, T)> = None;
    for item in sorted {
        if let Some(prev) = reach {
            if prev.0.overlaps(&item.0) {
                found.push((prev.clone(), item.clone()));
            }
            if item.0.end > prev.0.end {
                reach = Some(item);
            }
        } else {
            reach = Some(item);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(entry: &str) -> AddrRange {
        parse(entry).unwrap_or_else(|e| panic!("{entry}: {e}"))
    }

    #[test]
    fn cidrs_are_masked_and_ranges_are_inclusive() {
        assert_eq!(r("10.0.0.7/24"), r("10.0.0.0-10.0.0.255"));
        assert_eq!(r(" 10.0.0.5 - 10.0.0.5 ").cidrs().len(), 1);
        assert_eq!(r("fd00::/127"), r("fd00::-fd00::1"));
    }

    #[test]
    fn bad_entries_are_named() {
        assert_eq!(
            parse("10.0.0.0/33"),
            Err(AddressError::Syntax("10.0.0.0/33".into()))
        );
        assert_eq!(
            parse("10.0.0.9-10.0.0.1"),
            Err(AddressError::Reversed("10.0.0.9-10.0.0.1".into()))
        );
        assert_eq!(
            parse("10.0.0.1-fd00::1"),
            Err(AddressError::MixedFamilies("10.0.0.1-fd00::1".into()))
        );
        assert!(matches!(parse("pool"), Err(AddressError::Syntax(_))));
    }

    #[test]
    fn a_range_decomposes_into_the_fewest_cidrs() {
        // research/metallb.md §3: this range allows aggregation to /26 but not /24.
        let widest = r("3.3.3.2-3.3.3.254")
            .cidrs()
            .iter()
            .map(|n| n.prefix_len())
            .min();
        assert_eq!(widest, Some(26));
    }

    #[test]
    fn overlaps_are_found_across_owners_and_only_there() {
        let ranges = vec![
            (r("10.0.0.0/24"), "a"),
            (r("10.0.1.0/24"), "b"),
            (r("10.0.0.200-10.0.1.5"), "c"),
            (r("fd00::/64"), "d"),
            (r("10.0.2.0/24"), "e"),
        ];
        let found: Vec<(&str, &str)> = overlaps(&ranges)
            .into_iter()
            .map(|((_, x), (_, y))| (x, y))
            .collect();
        assert_eq!(found, vec![("a", "c"), ("c", "b")]);
    }
}
