//! The heartbeat on the wire (UDP, port 7946): one small message per node and interval, the same
//! size whatever the number of VIPs, authenticated with HMAC-SHA256 over a shared secret.
//!
//! ```text
//! "XLB1" | version (2 or 3) | flags (1) | reserved (2) | epoch (8) | seq (8) | echo (8)
//!        | hold_ms (4) | name length (1) | name (1..=253, UTF-8)
//!        | version 3 only: fields, each type (1) | length (2) | value
//!        | HMAC-SHA256 of all the above (32)
//! ```
//! Version 3 adds typed fields; a receiver skips the types it does not know. Type 1 is the
//! sender's [`Links`]; types 2 to 4 its non-revertive claims ([`super::claims`]): the digest of
//! its claims (always), the list (only while the receiver has not acknowledged that digest),
//! and the digest of the receiver's claims it holds (the acknowledgement); type 5 the digest of
//! what the sender holds of the ring ([`super::verdicts`]), in ring mode only. A version 3 agent sends version 2 (no fields) to a peer whose last
//! heartbeat was version 2, so a rolling upgrade never has old agents refusing new ones' heartbeats
//! and counting them dead.
//! Integers are big-endian. `epoch` is the sender's run, a random number drawn at start (not a
//! clock); `seq` counts the run's heartbeats; `echo` is the receiver's own run as the sender
//! last heard it (0: not heard yet), so a receiver knows a heartbeat was made during its own
//! run and not recorded before it ([`super::detector`]). `hold_ms` > 0 asks peers to hold this node alive that long (a
//! graceful restart). The flags carry the sender's [`Phase`]: bit 0 says it is leaving (a shutdown:
//! peers take over at once instead of waiting for the silence to last the failure timeout), bit 1
//! that it is joining (listening before it announces anything: peers keep its VIPs until it is
//! ready, so a restart moves them back make-before-break). Decoding checks the length before
//! every read and the tag before trusting any field, and never panics.
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{
    claims::{Claims, ClaimsError},
    links::{Links, LinksError},
};

const MAGIC: &[u8; 4] = b"XLB1";
/// Without fields: what agents before link awareness send and accept.
const VERSION_PLAIN: u8 = 2;
/// With typed fields after the name.
const VERSION_FIELDS: u8 = 3;
const FIELD_LINKS: u8 = 1;
const FIELD_CLAIMS_DIGEST: u8 = 2;
const FIELD_CLAIMS: u8 = 3;
const FIELD_CLAIMS_ACK: u8 = 4;
const FIELD_RING_DIGEST: u8 = 5;
const TAG_LEN: usize = 32;
const FIXED: usize = 4 + 1 + 1 + 2 + 8 + 8 + 8 + 4 + 1;
/// Longest node name (a DNS name).
pub const MAX_NAME: usize = 253;

/// One heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub node: String,
    pub epoch: u64,
    pub seq: u64,
    /// The receiver's epoch as the sender knows it (0: unknown).
    pub echo: u64,
    /// Milliseconds peers should hold this node alive regardless of silence (0: none).
    pub hold_ms: u32,
    pub phase: Phase,
    /// The sender's announcing links (version 3); `None`: a version 2 heartbeat, which says
    /// nothing of them.
    pub links: Option<Links>,
    /// The digest of the sender's claims (version 3; 0: none).
    pub claims_digest: u64,
    /// The sender's claims, when the receiver is to learn them.
    pub claims: Option<Claims>,
    /// The digest of the receiver's claims as the sender holds them (0: none).
    pub claims_ack: u64,
    /// The digest of what the sender holds of the ring's verdicts and sayings (type 5): said
    /// only by a sender in ring mode, which also takes ring messages ([`super::messages`]).
    pub ring_digest: Option<u64>,
}

/// Where the sender is in its life, as far as the election is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Starting: alive, but announcing nothing yet. Not a candidate until it is active.
    Joining,
    /// A candidate for the VIPs it is eligible for.
    #[default]
    Active,
    /// Shutting down: count it dead now.
    Leaving,
}

const FLAG_LEAVING: u8 = 0x01;
const FLAG_JOINING: u8 = 0x02;

impl Phase {
    fn flags(self) -> u8 {
        match self {
            Phase::Joining => FLAG_JOINING,
            Phase::Active => 0,
            Phase::Leaving => FLAG_LEAVING,
        }
    }

    /// Leaving wins over joining: a node that says both is going away.
    fn from_flags(flags: u8) -> Self {
        if flags & FLAG_LEAVING != 0 {
            Phase::Leaving
        } else if flags & FLAG_JOINING != 0 {
            Phase::Joining
        } else {
            Phase::Active
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error("{0} bytes is too short for a heartbeat")]
    Truncated(usize),
    #[error("not a heartbeat (bad magic)")]
    Magic,
    #[error("heartbeat version {0} is not supported")]
    Version(u8),
    #[error("the length field does not match the datagram")]
    Length,
    #[error("authentication failed (wrong secret or altered message)")]
    Auth,
    #[error("the node name is empty, too long or not UTF-8")]
    Name,
    #[error("the secret cannot be used as an HMAC key")]
    Key,
    #[error("a field is truncated or runs past the message")]
    Field,
    #[error("the links field: {0}")]
    Links(#[from] LinksError),
    #[error("the claims field: {0}")]
    Claims(#[from] ClaimsError),
}

type HmacSha256 = Hmac<Sha256>;

/// The HMAC keyed with the membership secret, for heartbeats and the ring's messages alike.
pub(super) fn mac(secret: &[u8]) -> Result<HmacSha256, HeartbeatError> {
    <HmacSha256 as KeyInit>::new_from_slice(secret).map_err(|_| HeartbeatError::Key)
}

impl Heartbeat {
    /// The datagram for this heartbeat, signed with `secret`.
    pub fn encode(&self, secret: &[u8]) -> Result<Vec<u8>, HeartbeatError> {
        let name = self.node.as_bytes();
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(HeartbeatError::Name);
        }
        let mut out = Vec::with_capacity(FIXED + name.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.push(match self.links {
            Some(_) => VERSION_FIELDS,
            None => VERSION_PLAIN,
        });
        out.push(self.phase.flags());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.echo.to_be_bytes());
        out.extend_from_slice(&self.hold_ms.to_be_bytes());
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        if let Some(links) = &self.links {
            let mut value = Vec::new();
            links.encode(&mut value);
            field(&mut out, FIELD_LINKS, &value)?;
            field(
                &mut out,
                FIELD_CLAIMS_DIGEST,
                &self.claims_digest.to_be_bytes(),
            )?;
            field(&mut out, FIELD_CLAIMS_ACK, &self.claims_ack.to_be_bytes())?;
            if let Some(claims) = &self.claims {
                let mut value = Vec::new();
                claims.encode(&mut value);
                field(&mut out, FIELD_CLAIMS, &value)?;
            }
            if let Some(d) = self.ring_digest {
                field(&mut out, FIELD_RING_DIGEST, &d.to_be_bytes())?;
            }
        }
        let mut m = mac(secret)?;
        m.update(&out);
        out.extend_from_slice(&m.finalize().into_bytes());
        Ok(out)
    }

    /// Checks and reads a datagram.
    pub fn decode(datagram: &[u8], secret: &[u8]) -> Result<Self, HeartbeatError> {
        if datagram.len() < FIXED + 1 + TAG_LEN {
            return Err(HeartbeatError::Truncated(datagram.len()));
        }
        if datagram.get(..4) != Some(MAGIC.as_slice()) {
            return Err(HeartbeatError::Magic);
        }
        let version = datagram.get(4).copied().unwrap_or(0);
        if version != VERSION_PLAIN && version != VERSION_FIELDS {
            return Err(HeartbeatError::Version(version));
        }
        let name_len = usize::from(datagram.get(FIXED - 1).copied().unwrap_or(0));
        let exact = FIXED + name_len + TAG_LEN;
        if datagram.len() < exact || (version == VERSION_PLAIN && datagram.len() != exact) {
            return Err(HeartbeatError::Length);
        }
        let (body, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        let mut m = mac(secret)?;
        m.update(body);
        m.verify_slice(tag).map_err(|_| HeartbeatError::Auth)?;
        let be64 = |at: usize| -> Result<u64, HeartbeatError> {
            let bytes: [u8; 8] = body
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .ok_or(HeartbeatError::Length)?;
            Ok(u64::from_be_bytes(bytes))
        };
        let hold: [u8; 4] = body
            .get(32..36)
            .and_then(|b| b.try_into().ok())
            .ok_or(HeartbeatError::Length)?;
        let name = body
            .get(FIXED..FIXED + name_len)
            .ok_or(HeartbeatError::Length)?;
        let node = std::str::from_utf8(name).map_err(|_| HeartbeatError::Name)?;
        if node.is_empty() {
            return Err(HeartbeatError::Name);
        }
        let mut links = None;
        let (mut claims_digest, mut claims, mut claims_ack) = (0, None, 0);
        let mut ring_digest = None;
        let field64 = |v: &[u8]| -> Result<u64, HeartbeatError> {
            Ok(u64::from_be_bytes(
                v.try_into().map_err(|_| HeartbeatError::Field)?,
            ))
        };
        if version == VERSION_FIELDS {
            let mut fields = body.get(FIXED + name_len..).ok_or(HeartbeatError::Length)?;
            links = Some(Links::default());
            while !fields.is_empty() {
                let (head, rest) = fields.split_at_checked(3).ok_or(HeartbeatError::Field)?;
                let len = usize::from(u16::from_be_bytes([head[1], head[2]]));
                let (value, rest) = rest.split_at_checked(len).ok_or(HeartbeatError::Field)?;
                match head[0] {
                    FIELD_LINKS => links = Some(Links::decode(value)?),
                    FIELD_CLAIMS_DIGEST => claims_digest = field64(value)?,
                    FIELD_CLAIMS => claims = Some(Claims::decode(value)?),
                    FIELD_CLAIMS_ACK => claims_ack = field64(value)?,
                    FIELD_RING_DIGEST => ring_digest = Some(field64(value)?),
                    _ => {}
                }
                fields = rest;
            }
        }
        Ok(Self {
            node: node.to_owned(),
            epoch: be64(8)?,
            seq: be64(16)?,
            echo: be64(24)?,
            hold_ms: u32::from_be_bytes(hold),
            phase: Phase::from_flags(body.get(5).copied().unwrap_or(0)),
            links,
            claims_digest,
            claims,
            claims_ack,
            ring_digest,
        })
    }
}

/// Appends one typed field.
fn field(out: &mut Vec<u8>, kind: u8, value: &[u8]) -> Result<(), HeartbeatError> {
    let len = u16::try_from(value.len()).map_err(|_| HeartbeatError::Field)?;
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a shared secret from DIR/secret";

    fn beat() -> Heartbeat {
        Heartbeat {
            node: "node-a".into(),
            epoch: 0x9e37_79b9_7f4a_7c15,
            seq: 42,
            echo: 7,
            hold_ms: 0,
            phase: Phase::Active,
            links: None,
            claims_digest: 0,
            claims: None,
            claims_ack: 0,
            ring_digest: None,
        }
    }

    fn with_links() -> Heartbeat {
        let claims = Claims::new(["10.0.1.7".parse().expect("ip")]).unwrap_or_else(|(c, _)| c);
        Heartbeat {
            links: Some(Links::new([super::super::links::Link {
                name: "eth1".into(),
                nets: vec!["10.0.1.0/24".parse().expect("net")],
            }])),
            claims_digest: claims.digest(),
            claims: Some(claims),
            claims_ack: 0x1234,
            ring_digest: Some(0xfeed_beef),
            ..beat()
        }
    }

    #[test]
    fn round_trips_and_stays_small() {
        let wire = beat().encode(SECRET).expect("encode");
        assert_eq!(wire.len(), FIXED + 6 + TAG_LEN);
        assert_eq!(Heartbeat::decode(&wire, SECRET), Ok(beat()));
    }

    #[test]
    fn links_travel_in_version_3_and_unknown_fields_are_skipped() {
        let b = with_links();
        let wire = b.encode(SECRET).expect("encode");
        assert_eq!(wire[4], VERSION_FIELDS);
        assert_eq!(Heartbeat::decode(&wire, SECRET), Ok(b.clone()));
        // No links known is not the same as a version 2 heartbeat.
        let none = Heartbeat {
            links: Some(Links::default()),
            ..beat()
        };
        let wire = none.encode(SECRET).expect("encode");
        assert_eq!(Heartbeat::decode(&wire, SECRET), Ok(none));
        // A field of a later version (type 9) before the links: skipped.
        let mut body = b.encode(SECRET).expect("encode");
        body.truncate(body.len() - TAG_LEN);
        body.splice(FIXED + 6..FIXED + 6, [9, 0, 2, 0xaa, 0xbb]);
        let mut m = mac(SECRET).expect("key");
        m.update(&body);
        body.extend_from_slice(&m.finalize().into_bytes());
        assert_eq!(Heartbeat::decode(&body, SECRET), Ok(b));
    }

    #[test]
    fn a_field_running_past_the_message_is_refused() {
        let mut body = beat().encode(SECRET).expect("encode");
        body.truncate(body.len() - TAG_LEN);
        body[4] = VERSION_FIELDS;
        body.extend_from_slice(&[FIELD_LINKS, 0, 40, 0]);
        let mut m = mac(SECRET).expect("key");
        m.update(&body);
        body.extend_from_slice(&m.finalize().into_bytes());
        assert_eq!(Heartbeat::decode(&body, SECRET), Err(HeartbeatError::Field));
    }

    #[test]
    fn any_altered_byte_or_another_secret_fails_authentication_or_framing() {
        for b in [beat(), with_links()] {
            altered_bytes_fail(&b);
        }
    }

    fn altered_bytes_fail(b: &Heartbeat) {
        let wire = b.encode(SECRET).expect("encode");
        assert_eq!(
            Heartbeat::decode(&wire, b"another secret"),
            Err(HeartbeatError::Auth)
        );
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x01;
            assert!(
                Heartbeat::decode(&bad, SECRET).is_err(),
                "byte {i} altered, still accepted"
            );
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for wire in [beat(), with_links()].map(|b| b.encode(SECRET).expect("encode")) {
            for len in 0..wire.len() {
                assert!(
                    Heartbeat::decode(&wire[..len], SECRET).is_err(),
                    "{len} bytes accepted"
                );
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Half of them start like a real heartbeat, to get past the first checks.
        #[test]
        fn random_datagrams_never_panic(
            mut data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..340),
            like_one in proptest::prelude::any::<bool>(),
        ) {
            let valid = beat().encode(SECRET).expect("encode");
            if like_one && data.len() >= 40 {
                data[..40].copy_from_slice(&valid[..40]);
            }
            let _ = Heartbeat::decode(&data, SECRET);
        }
    }

    #[test]
    fn names_must_fit() {
        let mut b = beat();
        b.node = String::new();
        assert_eq!(b.encode(SECRET), Err(HeartbeatError::Name));
        b.node = "x".repeat(MAX_NAME + 1);
        assert_eq!(b.encode(SECRET), Err(HeartbeatError::Name));
    }

    #[test]
    fn every_phase_round_trips_and_is_covered_by_the_tag() {
        for phase in [Phase::Joining, Phase::Active, Phase::Leaving] {
            let b = Heartbeat { phase, ..beat() };
            let mut wire = b.encode(SECRET).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(Heartbeat::decode(&wire, SECRET), Ok(b));
            // Changing the phase in flight is tampering.
            wire[5] ^= FLAG_LEAVING | FLAG_JOINING;
            assert_eq!(Heartbeat::decode(&wire, SECRET), Err(HeartbeatError::Auth));
        }
    }
}
