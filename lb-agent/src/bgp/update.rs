//! UPDATE messages (RFC 4271 §4.3): withdrawn routes, path attributes and NLRI, with IPv6 in
//! MP_REACH_NLRI / MP_UNREACH_NLRI (RFC 4760), 4-octet AS paths (RFC 6793), communities
//! (RFC 1997) and large communities (RFC 8092).
//!
//! Errors follow RFC 7606: what cannot be located (the message's own lengths, the NLRI, the
//! multiprotocol attributes) resets the session with a NOTIFICATION; a malformed attribute
//! whose routes can still be found makes the UPDATE "treat-as-withdraw" (its routes are
//! withdrawn, the session stays); a malformed attribute that does not affect route selection
//! is discarded.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};
use ipnet::{IpNet, Ipv4Net};

use super::message::{Family, MAX_LEN, Notification, be16};
use super::notification::{code, update_error};

const ORIGIN: u8 = 1;
const AS_PATH: u8 = 2;
const NEXT_HOP: u8 = 3;
const MED: u8 = 4;
const LOCAL_PREF: u8 = 5;
const ATOMIC_AGGREGATE: u8 = 6;
const AGGREGATOR: u8 = 7;
const COMMUNITIES: u8 = 8;
const MP_REACH: u8 = 14;
const MP_UNREACH: u8 = 15;
const AS4_PATH: u8 = 17;
const LARGE_COMMUNITIES: u8 = 32;

const OPTIONAL: u8 = 0x80;
const TRANSITIVE: u8 = 0x40;
const EXTENDED: u8 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Igp,
    Egp,
    Incomplete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AsSegment {
    Set(Vec<u32>),
    Sequence(Vec<u32>),
}

/// Routes of one address family with their next hop(s), as MP_REACH_NLRI carries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpReach {
    pub family: Family,
    /// One global next hop, optionally followed by a link-local one (IPv6, RFC 2545).
    pub next_hops: Vec<IpAddr>,
    pub nlri: Vec<IpNet>,
}

/// The path attributes this speaker reads and writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    pub origin: Option<Origin>,
    pub as_path: Vec<AsSegment>,
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub communities: Vec<u32>,
    pub large_communities: Vec<[u32; 3]>,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<(Family, Vec<IpNet>)>,
}

/// One UPDATE.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    pub withdrawn: Vec<Ipv4Net>,
    pub attributes: Attributes,
    pub nlri: Vec<Ipv4Net>,
}

/// What a received UPDATE means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    Update(Update),
    /// RFC 7606 treat-as-withdraw: every route the UPDATE carried is withdrawn.
    TreatAsWithdraw {
        withdrawn: Vec<IpNet>,
        why: String,
    },
}

/// What the session negotiated that changes the encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    /// AS numbers in AS_PATH take 4 octets (both sides sent the capability).
    pub four_octet_as: bool,
}

fn reset(subcode: u8) -> Notification {
    Notification::new(code::UPDATE_MESSAGE, subcode, [])
}

/// Prefixes in the RFC 4271 encoding (length in bits, then just the bytes it needs).
fn decode_prefixes(mut b: &[u8], v6: bool) -> Option<Vec<IpNet>> {
    let max = if v6 { 128 } else { 32 };
    let mut out = Vec::new();
    while let Some(&bits) = b.first() {
        if bits > max {
            return None;
        }
        let n = usize::from(bits).div_ceil(8);
        let bytes = b.get(1..1 + n)?;
        let net = if v6 {
            let mut a = [0u8; 16];
            a[..n].copy_from_slice(bytes);
            IpNet::new(IpAddr::V6(Ipv6Addr::from(a)), bits).ok()?
        } else {
            let mut a = [0u8; 4];
            a[..n].copy_from_slice(bytes);
            IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), bits).ok()?
        };
        out.push(net.trunc());
        b = b.get(1 + n..)?;
    }
    Some(out)
}

fn v4_only(nets: Vec<IpNet>) -> Vec<Ipv4Net> {
    nets.into_iter()
        .filter_map(|n| match n {
            IpNet::V4(v4) => Some(v4),
            IpNet::V6(_) => None,
        })
        .collect()
}

fn encode_prefix(net: &IpNet, out: &mut Vec<u8>) {
    let bits = net.prefix_len();
    out.push(bits);
    let n = usize::from(bits).div_ceil(8);
    match net.network() {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()[..n]),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()[..n]),
    }
}

/// Decodes an UPDATE body (after the 19-byte header).
pub fn decode(body: &[u8], codec: Codec) -> Result<Received, Notification> {
    // RFC 7606 §3 (a)/(j): lengths that cannot locate the parts reset the session.
    let wlen = usize::from(be16(body, 0).ok_or(reset(update_error::MALFORMED_ATTRIBUTE_LIST))?);
    let withdrawn_bytes = body
        .get(2..2 + wlen)
        .ok_or(reset(update_error::MALFORMED_ATTRIBUTE_LIST))?;
    let alen =
        usize::from(be16(body, 2 + wlen).ok_or(reset(update_error::MALFORMED_ATTRIBUTE_LIST))?);
    let attrs = body
        .get(4 + wlen..4 + wlen + alen)
        .ok_or(reset(update_error::MALFORMED_ATTRIBUTE_LIST))?;
    let nlri_bytes = body.get(4 + wlen + alen..).unwrap_or_default();
    let withdrawn = decode_prefixes(withdrawn_bytes, false)
        .ok_or(reset(update_error::INVALID_NETWORK_FIELD))?;
    let nlri =
        decode_prefixes(nlri_bytes, false).ok_or(reset(update_error::INVALID_NETWORK_FIELD))?;

    let mut a = Attributes::default();
    let mut as4: Option<Vec<AsSegment>> = None;
    let mut seen = [false; 256];
    let mut malformed: Option<String> = None;
    let mut rest = attrs;
    while !rest.is_empty() {
        let flags = rest.first().copied().unwrap_or(0);
        let kind = rest.get(1).copied().unwrap_or(0);
        let (len, head) = if flags & EXTENDED != 0 {
            (be16(rest, 2).map(usize::from), 4)
        } else {
            (rest.get(2).copied().map(usize::from), 3)
        };
        // §4: an attribute that overruns the attribute area: the NLRI is still located by the
        // total length, so the routes are withdrawn rather than the session reset.
        let Some(value) = len.and_then(|l| rest.get(head..head + l)) else {
            malformed.get_or_insert_with(|| format!("attribute {kind} overruns the attributes"));
            break;
        };
        rest = rest.get(head + value.len()..).unwrap_or_default();
        let first = !seen[usize::from(kind)];
        seen[usize::from(kind)] = true;
        if !first {
            // §3 (g): a repeated MP attribute cannot be resolved; others: keep the first.
            if kind == MP_REACH || kind == MP_UNREACH {
                return Err(reset(update_error::MALFORMED_ATTRIBUTE_LIST));
            }
            continue;
        }
        let well_known = matches!(
            kind,
            ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE
        );
        if well_known && flags & (OPTIONAL | TRANSITIVE) != TRANSITIVE {
            malformed.get_or_insert_with(|| format!("attribute {kind} has wrong flags"));
            continue;
        }
        match kind {
            ORIGIN => match value {
                [0] => a.origin = Some(Origin::Igp),
                [1] => a.origin = Some(Origin::Egp),
                [2] => a.origin = Some(Origin::Incomplete),
                _ => {
                    malformed.get_or_insert_with(|| "malformed ORIGIN".into());
                }
            },
            AS_PATH => match decode_as_path(value, codec.four_octet_as) {
                Some(p) => a.as_path = p,
                None => {
                    malformed.get_or_insert_with(|| "malformed AS_PATH".into());
                }
            },
            NEXT_HOP => match <[u8; 4]>::try_from(value) {
                Ok(b) => a.next_hop = Some(Ipv4Addr::from(b)),
                Err(_) => {
                    malformed.get_or_insert_with(|| "malformed NEXT_HOP".into());
                }
            },
            MED | LOCAL_PREF => match <[u8; 4]>::try_from(value) {
                Ok(b) if kind == MED => a.med = Some(u32::from_be_bytes(b)),
                Ok(b) => a.local_pref = Some(u32::from_be_bytes(b)),
                Err(_) => {
                    malformed.get_or_insert_with(|| format!("malformed attribute {kind}"));
                }
            },
            // §7.6, §7.7: they do not affect route selection: discard when malformed.
            ATOMIC_AGGREGATE | AGGREGATOR => {}
            // RFC 6793 §6: a malformed AS4_PATH is discarded; on a 4-octet session it has no
            // business being there and is ignored.
            AS4_PATH if !codec.four_octet_as => as4 = decode_as_path(value, true),
            COMMUNITIES => {
                if value.is_empty() || value.len() % 4 != 0 {
                    malformed.get_or_insert_with(|| "malformed COMMUNITIES".into());
                } else {
                    a.communities = value
                        .chunks_exact(4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                }
            }
            LARGE_COMMUNITIES => {
                if value.is_empty() || value.len() % 12 != 0 {
                    malformed.get_or_insert_with(|| "malformed LARGE_COMMUNITY".into());
                } else {
                    a.large_communities = value
                        .chunks_exact(12)
                        .map(|c| {
                            let w =
                                |i: usize| u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                            [w(0), w(4), w(8)]
                        })
                        .collect();
                }
            }
            // Families other than IPv4 and IPv6 unicast were never negotiated (labelled
            // unicast, VPN, EVPN, flowspec leaked by a route reflector): their routes would
            // be thrown away anyway, so their attributes are skipped, never a reset.
            MP_REACH | MP_UNREACH if !unicast_family(value) => {}
            // §5.3: the multiprotocol attributes locate routes: malformed ones reset.
            MP_REACH => a.mp_reach = Some(decode_mp_reach(value)?),
            MP_UNREACH => {
                let family = Family {
                    afi: be16(value, 0).ok_or(reset(update_error::OPTIONAL_ATTRIBUTE_ERROR))?,
                    safi: value
                        .get(2)
                        .copied()
                        .ok_or(reset(update_error::OPTIONAL_ATTRIBUTE_ERROR))?,
                };
                let nets = decode_prefixes(value.get(3..).unwrap_or_default(), family.afi == 2)
                    .ok_or(reset(update_error::OPTIONAL_ATTRIBUTE_ERROR))?;
                a.mp_unreach = Some((family, nets));
            }
            // Unknown attributes: this speaker does not pass routes on, so ignoring them is
            // all RFC 4271 asks of it.
            _ => {}
        }
    }
    if let Some(as4) = as4 {
        a.as_path = merge_as4(std::mem::take(&mut a.as_path), as4);
    }
    // §3 (d): mandatory attributes missing where routes are announced.
    let announces = !nlri.is_empty() || a.mp_reach.as_ref().is_some_and(|m| !m.nlri.is_empty());
    if malformed.is_none() && announces {
        let missing = [
            (a.origin.is_none(), "ORIGIN"),
            (!seen[usize::from(AS_PATH)], "AS_PATH"),
            (!nlri.is_empty() && a.next_hop.is_none(), "NEXT_HOP"),
        ];
        if let Some((_, name)) = missing.iter().find(|(m, _)| *m) {
            malformed = Some(format!("missing {name}"));
        }
    }
    match malformed {
        Some(why) => {
            let mut all: Vec<IpNet> = withdrawn.into_iter().chain(nlri).collect();
            if let Some(m) = a.mp_reach {
                all.extend(m.nlri);
            }
            if let Some((_, nets)) = a.mp_unreach {
                all.extend(nets);
            }
            Ok(Received::TreatAsWithdraw {
                withdrawn: all,
                why,
            })
        }
        None => Ok(Received::Update(Update {
            withdrawn: v4_only(withdrawn),
            attributes: a,
            nlri: v4_only(nlri),
        })),
    }
}

fn encode_as_path(path: &[AsSegment], four: bool) -> Vec<u8> {
    let mut v = Vec::new();
    for seg in path {
        let (kind, asns) = match seg {
            AsSegment::Set(s) => (1, s),
            AsSegment::Sequence(s) => (2, s),
        };
        // A segment holds at most 255 AS numbers; longer ones continue in the next.
        for chunk in asns.chunks(255) {
            v.push(kind);
            v.push(chunk.len() as u8);
            for asn in chunk {
                if four {
                    v.extend_from_slice(&asn.to_be_bytes());
                } else {
                    let two = u16::try_from(*asn).unwrap_or(super::message::AS_TRANS);
                    v.extend_from_slice(&two.to_be_bytes());
                }
            }
        }
    }
    v
}

/// The path length as RFC 4271 counts it: each AS of a sequence, each set as one.
fn path_len(path: &[AsSegment]) -> usize {
    path.iter()
        .map(|s| match s {
            AsSegment::Set(_) => 1,
            AsSegment::Sequence(v) => v.len(),
        })
        .sum()
}

/// RFC 6793 §4.2.3: the real path from a 2-octet session's AS_PATH and AS4_PATH: the
/// leading ASes of AS_PATH that AS4_PATH does not cover, then AS4_PATH. An AS4_PATH longer
/// than AS_PATH is ignored.
fn merge_as4(as_path: Vec<AsSegment>, as4: Vec<AsSegment>) -> Vec<AsSegment> {
    let (n, m) = (path_len(&as_path), path_len(&as4));
    if n < m {
        return as_path;
    }
    let mut keep = n - m;
    let mut out = Vec::new();
    for seg in as_path {
        if keep == 0 {
            break;
        }
        match seg {
            AsSegment::Set(v) => {
                out.push(AsSegment::Set(v));
                keep -= 1;
            }
            AsSegment::Sequence(v) => {
                let take = keep.min(v.len());
                out.push(AsSegment::Sequence(v[..take].to_vec()));
                keep -= take;
            }
        }
    }
    out.extend(as4);
    out
}

fn decode_as_path(mut b: &[u8], four: bool) -> Option<Vec<AsSegment>> {
    let width = if four { 4 } else { 2 };
    let mut out = Vec::new();
    while !b.is_empty() {
        let kind = *b.first()?;
        let count = usize::from(*b.get(1)?);
        if count == 0 {
            return None;
        }
        let asns: Vec<u32> = b
            .get(2..2 + count * width)?
            .chunks_exact(width)
            .map(|c| {
                if four {
                    u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                } else {
                    u32::from(u16::from_be_bytes([c[0], c[1]]))
                }
            })
            .collect();
        out.push(match kind {
            1 => AsSegment::Set(asns),
            2 => AsSegment::Sequence(asns),
            _ => return None,
        });
        b = b.get(2 + count * width..)?;
    }
    Some(out)
}

/// Whether an MP attribute's AFI/SAFI is one this speaker carries (a value too short to say
/// counts as one, so that it is checked and refused as malformed).
fn unicast_family(v: &[u8]) -> bool {
    match (be16(v, 0), v.get(2)) {
        (Some(afi), Some(safi)) => {
            let f = Family { afi, safi: *safi };
            f == Family::IPV4_UNICAST || f == Family::IPV6_UNICAST
        }
        _ => true,
    }
}

fn decode_mp_reach(v: &[u8]) -> Result<MpReach, Notification> {
    let bad = || reset(update_error::OPTIONAL_ATTRIBUTE_ERROR);
    let family = Family {
        afi: be16(v, 0).ok_or_else(bad)?,
        safi: v.get(2).copied().ok_or_else(bad)?,
    };
    let nh_len = usize::from(v.get(3).copied().ok_or_else(bad)?);
    let nh = v.get(4..4 + nh_len).ok_or_else(bad)?;
    let next_hops = match nh_len {
        4 => vec![IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(nh).map_err(|_| bad())?,
        ))],
        16 | 32 => nh
            .chunks_exact(16)
            .map(|c| {
                let mut a = [0u8; 16];
                a.copy_from_slice(c);
                IpAddr::V6(Ipv6Addr::from(a))
            })
            .collect(),
        _ => return Err(bad()),
    };
    // One reserved byte, then the NLRI.
    let nlri =
        decode_prefixes(v.get(5 + nh_len..).ok_or_else(bad)?, family.afi == 2).ok_or_else(bad)?;
    Ok(MpReach {
        family,
        next_hops,
        nlri,
    })
}

fn attribute(flags: u8, kind: u8, value: &[u8], out: &mut Vec<u8>) {
    if value.len() > 255 {
        out.push(flags | EXTENDED);
        out.push(kind);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        out.push(flags);
        out.push(kind);
        out.push(value.len() as u8);
    }
    out.extend_from_slice(value);
}

/// Appends the UPDATE body for `u` to `out` (the caller frames it with the header; the body
/// must leave room for it within [`MAX_LEN`]).
pub fn encode(
    u: &Update,
    codec: Codec,
    out: &mut BytesMut,
) -> Result<(), super::message::EncodeError> {
    let mut withdrawn = Vec::new();
    for n in &u.withdrawn {
        encode_prefix(&IpNet::V4(*n), &mut withdrawn);
    }
    let a = &u.attributes;
    let mut attrs = Vec::new();
    if let Some(o) = a.origin {
        let v = match o {
            Origin::Igp => 0,
            Origin::Egp => 1,
            Origin::Incomplete => 2,
        };
        attribute(TRANSITIVE, ORIGIN, &[v], &mut attrs);
    }
    if a.origin.is_some() || !a.as_path.is_empty() {
        attribute(
            TRANSITIVE,
            AS_PATH,
            &encode_as_path(&a.as_path, codec.four_octet_as),
            &mut attrs,
        );
        // RFC 6793 §4.2.2: a peer without 4-octet AS numbers sees AS_TRANS in AS_PATH and
        // the real path in AS4_PATH, which it passes on.
        let wide = |s: &AsSegment| match s {
            AsSegment::Set(v) | AsSegment::Sequence(v) => v.iter().any(|n| *n > 0xffff),
        };
        if !codec.four_octet_as && a.as_path.iter().any(wide) {
            attribute(
                OPTIONAL | TRANSITIVE,
                AS4_PATH,
                &encode_as_path(&a.as_path, true),
                &mut attrs,
            );
        }
    }
    if let Some(nh) = a.next_hop {
        attribute(TRANSITIVE, NEXT_HOP, &nh.octets(), &mut attrs);
    }
    if let Some(med) = a.med {
        attribute(OPTIONAL, MED, &med.to_be_bytes(), &mut attrs);
    }
    if let Some(lp) = a.local_pref {
        attribute(TRANSITIVE, LOCAL_PREF, &lp.to_be_bytes(), &mut attrs);
    }
    if !a.communities.is_empty() {
        let v: Vec<u8> = a.communities.iter().flat_map(|c| c.to_be_bytes()).collect();
        attribute(OPTIONAL | TRANSITIVE, COMMUNITIES, &v, &mut attrs);
    }
    if let Some(m) = &a.mp_reach {
        let mut v = Vec::new();
        v.extend_from_slice(&m.family.afi.to_be_bytes());
        v.push(m.family.safi);
        let nh: Vec<u8> = m
            .next_hops
            .iter()
            .flat_map(|h| match h {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            })
            .collect();
        v.push(nh.len() as u8);
        v.extend_from_slice(&nh);
        v.push(0);
        for n in &m.nlri {
            encode_prefix(n, &mut v);
        }
        attribute(OPTIONAL, MP_REACH, &v, &mut attrs);
    }
    if let Some((family, nets)) = &a.mp_unreach {
        let mut v = Vec::new();
        v.extend_from_slice(&family.afi.to_be_bytes());
        v.push(family.safi);
        for n in nets {
            encode_prefix(n, &mut v);
        }
        attribute(OPTIONAL, MP_UNREACH, &v, &mut attrs);
    }
    if !a.large_communities.is_empty() {
        let v: Vec<u8> = a
            .large_communities
            .iter()
            .flat_map(|c| c.iter().flat_map(|w| w.to_be_bytes()))
            .collect();
        attribute(OPTIONAL | TRANSITIVE, LARGE_COMMUNITIES, &v, &mut attrs);
    }
    let mut nlri = Vec::new();
    for n in &u.nlri {
        encode_prefix(&IpNet::V4(*n), &mut nlri);
    }
    let len = super::message::HEADER_LEN + 4 + withdrawn.len() + attrs.len() + nlri.len();
    if len > MAX_LEN {
        return Err(super::message::EncodeError::TooLong(len));
    }
    out.put_u16(withdrawn.len() as u16);
    out.put_slice(&withdrawn);
    out.put_u16(attrs.len() as u16);
    out.put_slice(&attrs);
    out.put_slice(&nlri);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FOUR: Codec = Codec {
        four_octet_as: true,
    };

    fn body(u: &Update, codec: Codec) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(u, codec, &mut out).unwrap_or_else(|e| panic!("{e}"));
        out.to_vec()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn v4(s: &str) -> Ipv4Net {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn announce() -> Update {
        Update {
            withdrawn: vec![v4("10.9.0.0/16")],
            attributes: Attributes {
                origin: Some(Origin::Igp),
                as_path: vec![AsSegment::Sequence(vec![4_200_000_001])],
                next_hop: Some(Ipv4Addr::new(10, 0, 0, 11)),
                med: None,
                local_pref: Some(150),
                communities: vec![0xfde8_0064],
                large_communities: vec![[64512, 1, 2]],
                mp_reach: Some(MpReach {
                    family: Family::IPV6_UNICAST,
                    next_hops: vec!["fd00::11".parse().unwrap_or_else(|e| panic!("{e}"))],
                    nlri: vec![net("fd00:210::100/128")],
                }),
                mp_unreach: None,
            },
            nlri: vec![v4("10.210.0.100/32"), v4("10.210.0.101/32")],
        }
    }

    #[test]
    fn an_announcement_round_trips() {
        let u = announce();
        assert_eq!(decode(&body(&u, FOUR), FOUR), Ok(Received::Update(u)));
    }

    #[test]
    fn families_never_negotiated_are_skipped_not_a_reset() {
        // MP_REACH for labelled unicast (AFI 1, SAFI 4): next hop 10.0.0.1, NLRI label + /32;
        // and an EVPN MP_UNREACH (AFI 25, SAFI 70) with a route type this speaker cannot parse.
        let labelled = vec![0, 1, 4, 4, 10, 0, 0, 1, 0, 56, 0, 0, 0x31, 10, 0, 0, 1];
        let evpn = vec![0, 25, 70, 2, 33, 0xff];
        let mut attrs = vec![0x40, 1, 1, 0, 0x40, 2, 0];
        attrs.extend([0x80, 14, labelled.len() as u8]);
        attrs.extend(&labelled);
        attrs.extend([0x80, 15, evpn.len() as u8]);
        attrs.extend(&evpn);
        let mut body = vec![0, 0];
        body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        body.extend_from_slice(&attrs);
        assert!(
            matches!(decode(&body, FOUR), Ok(Received::Update(u)) if u.attributes.mp_reach.is_none()),
            "{:?}",
            decode(&body, FOUR)
        );
        // The same damage in a family this speaker carries is still a reset.
        let mut broken = body.clone();
        let at = 4 + 7 + 3 + 2;
        broken[at] = 1; // SAFI 4 -> 1: IPv4 unicast with a labelled NLRI
        assert!(decode(&broken, FOUR).is_err());
    }

    #[test]
    fn two_octet_sessions_write_as_trans_for_large_as_numbers() {
        let two = Codec {
            four_octet_as: false,
        };
        let got = decode(&body(&announce(), two), two);
        let Ok(Received::Update(u)) = got else {
            panic!("{got:?}")
        };
        // AS4_PATH carries the real AS, and a 2-octet decoder puts it back.
        assert_eq!(
            u.attributes.as_path,
            vec![AsSegment::Sequence(vec![4_200_000_001])]
        );
        let raw = body(&announce(), two);
        assert!(
            raw.windows(2)
                .any(|w| w == [OPTIONAL | TRANSITIVE, AS4_PATH]),
            "AS4_PATH present"
        );
        // Without AS4_PATH the 2-octet path shows AS_TRANS.
        let mut small = announce();
        small.attributes.as_path = vec![AsSegment::Sequence(vec![65001])];
        let raw = body(&small, two);
        assert!(
            !raw.windows(2)
                .any(|w| w == [OPTIONAL | TRANSITIVE, AS4_PATH])
        );
    }

    #[test]
    fn as4_path_merges_as_rfc_6793_says() {
        use AsSegment::{Sequence, Set};
        let trans = u32::from(crate::bgp::message::AS_TRANS);
        // A 2-octet speaker prepended 65001 in front of a path from 4-octet land.
        let as_path = vec![Sequence(vec![65001, trans, trans]), Set(vec![trans])];
        let as4 = vec![
            Sequence(vec![4_200_000_001, 4_200_000_002]),
            Set(vec![4_200_000_003]),
        ];
        assert_eq!(
            merge_as4(as_path.clone(), as4),
            vec![
                Sequence(vec![65001]),
                Sequence(vec![4_200_000_001, 4_200_000_002]),
                Set(vec![4_200_000_003])
            ]
        );
        // Longer than AS_PATH: ignored.
        let long = vec![Sequence(vec![1, 2, 3, 4, 5])];
        assert_eq!(merge_as4(as_path.clone(), long), as_path);
    }

    type Check = Box<dyn Fn(&Result<Received, Notification>) -> bool>;

    /// RFC 7606 table: (what, how the body is damaged, expected outcome).
    #[test]
    fn malformed_updates_are_handled_as_rfc_7606_says() {
        let good = body(&announce(), FOUR);
        // Offsets in `good`: 2 bytes withdrawn length, 3 bytes of 10.9/16, 2 bytes attribute
        // length, then ORIGIN (flags, type, len, value) at 7.
        let damaged = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            b
        };
        let withdraws = |r: &Result<Received, Notification>| matches!(r, Ok(Received::TreatAsWithdraw { withdrawn, .. }) if withdrawn.len() == 4);
        let resets = |sub: u8| move |r: &Result<Received, Notification>| matches!(r, Err(n) if n.code == code::UPDATE_MESSAGE && n.subcode == sub);
        let cases: Vec<(&str, Vec<u8>, Check)> = vec![
            (
                "ORIGIN value 7",
                damaged(&|b| b[10] = 7),
                Box::new(withdraws),
            ),
            (
                "ORIGIN flagged optional",
                damaged(&|b| b[7] = 0xc0),
                Box::new(withdraws),
            ),
            (
                "withdrawn length past the end",
                damaged(&|b| b[0..2].copy_from_slice(&[0xff, 0x00])),
                Box::new(resets(update_error::MALFORMED_ATTRIBUTE_LIST)),
            ),
            (
                "NLRI prefix of 33 bits",
                damaged(&|b| {
                    let at = b.len() - 10;
                    b[at] = 33;
                }),
                Box::new(resets(update_error::INVALID_NETWORK_FIELD)),
            ),
        ];
        for (what, bytes, ok) in cases {
            let got = decode(&bytes, FOUR);
            assert!(ok(&got), "{what}: {got:?}");
        }
        // Mandatory attributes missing where routes are announced.
        let mut no_origin = announce();
        no_origin.attributes.origin = None;
        no_origin.attributes.as_path.clear();
        assert!(
            matches!(decode(&body(&no_origin, FOUR), FOUR), Ok(Received::TreatAsWithdraw { why, .. }) if why.contains("ORIGIN")),
        );
        // A withdrawal alone needs no attributes.
        let only = Update {
            withdrawn: vec![v4("10.210.0.100/32")],
            ..Update::default()
        };
        assert_eq!(decode(&body(&only, FOUR), FOUR), Ok(Received::Update(only)));
    }

    fn v4net() -> impl Strategy<Value = Ipv4Net> {
        (any::<u32>(), 0u8..=32).prop_map(|(a, l)| {
            Ipv4Net::new(Ipv4Addr::from(a), l)
                .map(|n| n.trunc())
                .unwrap_or_else(|e| panic!("{e}"))
        })
    }

    fn v6net() -> impl Strategy<Value = IpNet> {
        (any::<u128>(), 0u8..=128).prop_map(|(a, l)| {
            IpNet::new(IpAddr::V6(Ipv6Addr::from(a)), l)
                .map(|n| n.trunc())
                .unwrap_or_else(|e| panic!("{e}"))
        })
    }

    proptest! {
        #[test]
        fn every_update_round_trips(
            withdrawn in prop::collection::vec(v4net(), 0..20),
            nlri in prop::collection::vec(v4net(), 1..50),
            v6 in prop::collection::vec(v6net(), 0..20),
            path in prop::collection::vec(any::<u32>(), 1..8),
            communities in prop::collection::vec(any::<u32>(), 0..6),
            large in prop::collection::vec(any::<[u32; 3]>(), 0..4),
            local_pref in proptest::option::of(any::<u32>()),
        ) {
            let u = Update {
                withdrawn,
                attributes: Attributes {
                    origin: Some(Origin::Incomplete),
                    as_path: vec![AsSegment::Sequence(path)],
                    next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
                    local_pref,
                    communities,
                    large_communities: large,
                    mp_reach: (!v6.is_empty()).then(|| MpReach {
                        family: Family::IPV6_UNICAST,
                        next_hops: vec![IpAddr::V6(Ipv6Addr::LOCALHOST)],
                        nlri: v6,
                    }),
                    ..Attributes::default()
                },
                nlri,
            };
            prop_assert_eq!(decode(&body(&u, FOUR), FOUR), Ok(Received::Update(u)));
        }

        /// Bounded fuzzing: random bodies never panic; errors are UPDATE Message Errors.
        #[test]
        fn random_bodies_never_panic(b in prop::collection::vec(any::<u8>(), 0..300), four in any::<bool>()) {
            if let Err(n) = decode(&b, Codec { four_octet_as: four }) {
                prop_assert_eq!(n.code, code::UPDATE_MESSAGE);
            }
        }

        /// Deeper fuzzing: well-framed bodies of random attributes of the types we parse (and
        /// some we do not), random values, random NLRI. Never a panic, and what comes out is
        /// bounded by what came in: no more routes, AS numbers or communities than the body
        /// has bytes, so a message cannot make the decoder allocate beyond its own size.
        #[test]
        fn framed_random_attributes_decode_within_bounds(
            attrs in prop::collection::vec(
                (
                    prop::sample::select(vec![0x40u8, 0x80, 0xc0, 0x50, 0x90, 0xd0, 0x00]),
                    prop::sample::select(vec![1u8, 2, 3, 4, 5, 6, 7, 8, 14, 15, 17, 32, 99]),
                    prop::collection::vec(any::<u8>(), 0..64),
                ),
                0..8,
            ),
            nlri in prop::collection::vec(any::<u8>(), 0..40),
            four in any::<bool>(),
        ) {
            let mut a = Vec::new();
            for (flags, kind, value) in &attrs {
                if flags & EXTENDED != 0 {
                    a.extend_from_slice(&[*flags, *kind]);
                    a.extend_from_slice(&(value.len() as u16).to_be_bytes());
                } else {
                    a.extend_from_slice(&[*flags, *kind, value.len() as u8]);
                }
                a.extend_from_slice(value);
            }
            let mut b = vec![0, 0];
            b.extend_from_slice(&(a.len() as u16).to_be_bytes());
            b.extend_from_slice(&a);
            b.extend_from_slice(&nlri);
            match decode(&b, Codec { four_octet_as: four }) {
                Ok(Received::Update(u)) => {
                    let at = &u.attributes;
                    let asns: usize = at.as_path.iter().map(|s| match s {
                        AsSegment::Set(v) | AsSegment::Sequence(v) => v.len(),
                    }).sum();
                    let items = u.withdrawn.len() + u.nlri.len() + asns
                        + at.communities.len() + at.large_communities.len()
                        + at.mp_reach.as_ref().map_or(0, |m| m.nlri.len() + m.next_hops.len())
                        + at.mp_unreach.as_ref().map_or(0, |m| m.1.len());
                    prop_assert!(items <= b.len(), "{} items from {} bytes", items, b.len());
                }
                Ok(Received::TreatAsWithdraw { withdrawn, .. }) => {
                    prop_assert!(withdrawn.len() <= b.len());
                }
                Err(n) => prop_assert_eq!(n.code, code::UPDATE_MESSAGE),
            }
        }
    }
}
