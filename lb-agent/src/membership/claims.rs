//! The non-revertive VIPs a node holds, as it tells its peers: with `xdplb.io/l2-preempt:
//! "false"` a VIP stays with the node that holds it while that node can, so every agent must
//! know who holds what ([`crate::election`] reads it).
//!
//! Heartbeats stay small: each carries only the digest of the sender's claims and the digest
//! of the receiver's claims the sender holds (its acknowledgement); the list itself goes to a
//! peer only while that peer has not acknowledged the current digest, that is once after a
//! change, and to a peer that just started.
//!
//! On the wire: `count (2) | per VIP: family (1: 4 or 6) | address (4 or 16)`, sorted.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use sha2::{Digest, Sha256};

/// VIPs one heartbeat can claim beside the rest of it within one 1500-byte datagram; a node
/// holding more non-revertive VIPs claims the lowest ones, and the others are preempted as
/// MetalLB's would be (logged).
pub const MAX_CLAIMS: usize = 48;

/// A node's claims, sorted, at most [`MAX_CLAIMS`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Claims(BTreeSet<IpAddr>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    #[error("the claims field is truncated or has bytes left over")]
    Length,
    #[error("more than {MAX_CLAIMS} claims, or an unknown address family")]
    Value,
}

impl Claims {
    /// The claims of `vips`; `Err` with the full count when there are more than fit, in which
    /// case the lowest [`MAX_CLAIMS`] are kept.
    pub fn new(vips: impl IntoIterator<Item = IpAddr>) -> Result<Self, (Self, usize)> {
        let all: BTreeSet<IpAddr> = vips.into_iter().collect();
        let count = all.len();
        if count <= MAX_CLAIMS {
            return Ok(Self(all));
        }
        Err((Self(all.into_iter().take(MAX_CLAIMS).collect()), count))
    }

    pub fn contains(&self, vip: &IpAddr) -> bool {
        self.0.contains(vip)
    }

    pub fn iter(&self) -> impl Iterator<Item = &IpAddr> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What heartbeats say instead of the list: 0 for none.
    pub fn digest(&self) -> u64 {
        if self.0.is_empty() {
            return 0;
        }
        let mut wire = Vec::new();
        self.encode(&mut wire);
        let hash = Sha256::digest(&wire);
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash[..8]);
        u64::from_be_bytes(first).max(1)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.0.len() as u16).to_be_bytes());
        for vip in &self.0 {
            match vip {
                IpAddr::V4(a) => {
                    out.push(4);
                    out.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    out.push(6);
                    out.extend_from_slice(&a.octets());
                }
            }
        }
    }

    pub fn decode(mut data: &[u8]) -> Result<Self, ClaimsError> {
        let mut take = |n: usize| -> Result<&[u8], ClaimsError> {
            let (head, rest) = data.split_at_checked(n).ok_or(ClaimsError::Length)?;
            data = rest;
            Ok(head)
        };
        let head = take(2)?;
        let count = usize::from(u16::from_be_bytes([head[0], head[1]]));
        if count > MAX_CLAIMS {
            return Err(ClaimsError::Value);
        }
        let mut out = BTreeSet::new();
        for _ in 0..count {
            let vip: IpAddr = match take(1)?[0] {
                4 => {
                    let b: [u8; 4] = take(4)?.try_into().map_err(|_| ClaimsError::Length)?;
                    Ipv4Addr::from(b).into()
                }
                6 => {
                    let b: [u8; 16] = take(16)?.try_into().map_err(|_| ClaimsError::Length)?;
                    Ipv6Addr::from(b).into()
                }
                _ => return Err(ClaimsError::Value),
            };
            out.insert(vip);
        }
        if !data.is_empty() {
            return Err(ClaimsError::Length);
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(vips: &[&str]) -> Claims {
        Claims::new(
            vips.iter()
                .map(|v| v.parse().unwrap_or_else(|e| panic!("{e}"))),
        )
        .unwrap_or_else(|(c, _)| c)
    }

    #[test]
    fn round_trips_and_the_digest_follows_the_set() {
        let c = claims(&["10.0.0.7", "fd00::7", "10.0.0.1"]);
        let mut wire = Vec::new();
        c.encode(&mut wire);
        assert_eq!(Claims::decode(&wire), Ok(c.clone()));
        assert_eq!(Claims::default().digest(), 0);
        assert_ne!(c.digest(), 0);
        assert_eq!(
            c.digest(),
            claims(&["10.0.0.1", "fd00::7", "10.0.0.7"]).digest()
        );
        assert_ne!(c.digest(), claims(&["10.0.0.1", "fd00::7"]).digest());
        for len in 0..wire.len() {
            assert!(
                Claims::decode(&wire[..len]).is_err(),
                "{len} bytes accepted"
            );
        }
    }

    #[test]
    fn more_than_fit_keep_the_lowest_and_say_how_many_there_were() {
        let many = (0..100u8).map(|i| IpAddr::from([10, 0, 1, i]));
        let Err((kept, count)) = Claims::new(many) else {
            panic!("100 claims fit");
        };
        assert_eq!(count, 100);
        assert_eq!(kept.iter().count(), MAX_CLAIMS);
        assert!(kept.contains(&IpAddr::from([10, 0, 1, 0])));
        assert_eq!(Claims::decode(&[0, 200]), Err(ClaimsError::Value));
    }
}
