//! TTL security for a BGPPeer (GTSM, RFC 5082), this project's extension: MetalLB's BGPPeer
//! has no field for it, so it is asked for with the annotation [`ANNOTATION`]
//! (`xdplb.io/ttl-security-hops: "1"` for a directly connected router), which MetalLB ignores.
//!
//! With it the session's packets leave with TTL 255 and the kernel drops every segment from the
//! peer that arrives with a TTL below `256 - hops`, so a sender further away than `hops` cannot
//! reach the session even with the right addresses. The router must be configured alike (FRR:
//! `neighbor X ttl-security hops N`).
use std::collections::BTreeMap;

/// The annotation on a BGPPeer that turns TTL security on.
pub const ANNOTATION: &str = "xdplb.io/ttl-security-hops";

/// How far away the peer may be: 1 (directly connected) to 254.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hops(u8);

impl Hops {
    /// The lowest TTL (hop limit) a segment from the peer may arrive with.
    pub const fn min_ttl(self) -> u8 {
        255 - (self.0 - 1)
    }

    pub const fn get(self) -> u8 {
        self.0
    }
}

/// The hops an object's annotation asks for: `None` without the annotation.
pub fn hops(annotations: &BTreeMap<String, String>) -> Option<Result<Hops, String>> {
    let value = annotations.get(ANNOTATION)?;
    Some(match value.trim().parse::<u8>() {
        Ok(n @ 1..=254) => Ok(Hops(n)),
        _ => Err(format!(
            "{value:?} is not a hop count (1 for a directly connected router, up to 254)"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(v: &str) -> Option<Result<Hops, String>> {
        hops(&BTreeMap::from([(ANNOTATION.to_owned(), v.to_owned())]))
    }

    #[test]
    fn hop_counts_give_the_lowest_ttl_accepted() {
        assert_eq!(hops(&BTreeMap::new()), None);
        assert_eq!(with("1").and_then(Result::ok).map(Hops::min_ttl), Some(255));
        assert_eq!(
            with(" 3 ").and_then(Result::ok).map(Hops::min_ttl),
            Some(253)
        );
        assert_eq!(with("254").and_then(Result::ok).map(Hops::min_ttl), Some(2));
        for bad in ["0", "255", "-1", "yes", ""] {
            assert!(matches!(with(bad), Some(Err(_))), "{bad:?} was accepted");
        }
    }
}
