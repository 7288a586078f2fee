//! The Adj-RIB-Out of one session: what the peer should hold from us, what it holds now, and
//! the UPDATE bodies that take it from one to the other, packed many prefixes to a message.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use bytes::BytesMut;
use ipnet::IpNet;

use super::message::{Family, HEADER_LEN, MAX_LEN};
use super::update::{self, AsSegment, Attributes, Codec, MpReach, Origin, Update};

/// What one advertisement attaches to a prefix (BGPAdvertisement localPref, communities).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteAttrs {
    /// Sent to iBGP peers only (RFC 4271 §5.1.5).
    pub local_pref: Option<u32>,
    /// Sorted, without repeats.
    pub communities: BTreeSet<u32>,
    pub large_communities: BTreeSet<[u32; 3]>,
}

impl RouteAttrs {
    /// Two advertisements covering the same prefix: the communities add up and the higher
    /// LOCAL_PREF wins, as MetalLB merges them.
    pub fn merge(&mut self, other: &RouteAttrs) {
        self.local_pref = self.local_pref.max(other.local_pref);
        self.communities.extend(other.communities.iter().copied());
        self.large_communities
            .extend(other.large_communities.iter().copied());
    }
}

pub type Routes = BTreeMap<IpNet, RouteAttrs>;

/// What the session negotiated and knows about itself that shapes the UPDATEs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub local_as: u32,
    pub ibgp: bool,
    pub codec: Codec,
    pub ipv4: bool,
    pub ipv6: bool,
    /// Our address for IPv4 routes (the session's own when it runs over IPv4).
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Our global IPv6 address for IPv6 routes, and the link-local one when known.
    pub next_hop_v6: Option<(Ipv6Addr, Option<Ipv6Addr>)>,
    /// IPv4 routes go in MP_REACH_NLRI with the IPv6 next hop (RFC 8950).
    pub ipv4_via_ipv6: bool,
}

/// The next hop of IPv4 routes: the NEXT_HOP attribute, or (RFC 8950) IPv6 next hops in
/// MP_REACH_NLRI.
enum V4NextHop {
    Attribute(Ipv4Addr),
    ViaIpv6(Vec<IpAddr>),
}

impl Context {
    /// Whether this session can carry `net` now: the family was negotiated and we have a next
    /// hop of that family. Others wait ("pending" in the metrics).
    pub fn carries(&self, net: &IpNet) -> bool {
        match net {
            IpNet::V4(_) => self.ipv4 && self.v4_next_hops().is_some(),
            IpNet::V6(_) => self.ipv6 && self.next_hop_v6.is_some(),
        }
    }

    /// How IPv4 routes go now, if they can.
    fn v4_next_hops(&self) -> Option<V4NextHop> {
        match (self.next_hop_v4, self.next_hop_v6) {
            (Some(v4), _) if !self.ipv4_via_ipv6 => Some(V4NextHop::Attribute(v4)),
            (_, Some(v6)) if self.ipv4_via_ipv6 => Some(V4NextHop::ViaIpv6(v6_hops(v6))),
            _ => None,
        }
    }

    /// Whether a route with `r` fits in one UPDATE in every form it may take here (the
    /// largest: MP_REACH with a global and a link-local next hop, and a /128).
    pub fn fits(&self, r: &RouteAttrs) -> bool {
        let mut a = self.attributes(r);
        a.next_hop = Some(Ipv4Addr::UNSPECIFIED);
        a.mp_reach = Some(MpReach {
            family: Family::IPV6_UNICAST,
            next_hops: vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED); 2],
            nlri: vec![IpNet::V6(ipnet::Ipv6Net::default())],
        });
        let u = Update {
            attributes: a,
            ..Update::default()
        };
        let mut out = BytesMut::new();
        update::encode(&u, self.codec, &mut out).is_ok() && out.len() <= BODY_ROOM
    }

    fn attributes(&self, r: &RouteAttrs) -> Attributes {
        Attributes {
            origin: Some(Origin::Igp),
            // We originate: eBGP peers see our AS, iBGP peers an empty path (RFC 4271 §5.1.2).
            as_path: if self.ibgp {
                Vec::new()
            } else {
                vec![AsSegment::Sequence(vec![self.local_as])]
            },
            local_pref: if self.ibgp { r.local_pref } else { None },
            communities: r.communities.iter().copied().collect(),
            large_communities: r.large_communities.iter().copied().collect(),
            ..Attributes::default()
        }
    }
}

/// Room for an UPDATE body within one message, with one byte spare for an MP attribute that
/// grows to the extended length form.
const BODY_ROOM: usize = MAX_LEN - HEADER_LEN - 1;

fn prefix_len(net: &IpNet) -> usize {
    1 + usize::from(net.prefix_len()).div_ceil(8)
}

/// The encoded body; `None` if it does not fit in a message. [`Context::fits`] and the
/// chunking below keep that from happening; were it to, the message is not sent (an empty
/// UPDATE would reset the session).
fn body(u: &Update, codec: Codec) -> Option<Vec<u8>> {
    let mut out = BytesMut::new();
    update::encode(u, codec, &mut out).ok()?;
    Some(out.to_vec())
}

/// The IPv4 ones of `nets` (the runs below hold one family each).
fn ipv4(nets: &[IpNet]) -> Vec<ipnet::Ipv4Net> {
    nets.iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// Splits `nets` into runs whose encoded prefixes fit in `room` bytes each.
fn chunks(nets: &[IpNet], room: usize) -> Vec<&[IpNet]> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, n) in nets.iter().enumerate() {
        let l = prefix_len(n);
        if used + l > room && i > start {
            out.push(&nets[start..i]);
            start = i;
            used = 0;
        }
        used += l;
    }
    if start < nets.len() {
        out.push(&nets[start..]);
    }
    out
}

/// The UPDATE bodies that withdraw what `sent` has and `desired` lacks and announce what is
/// new or changed, then the new `sent`. Prefixes the session cannot carry are left out. When
/// the session carries them all, the new `sent` is `desired` itself, shared, not a copy:
/// with many peers and 10,000 routes, copies are most of an agent's memory.
///
/// A prefix whose attributes do not fit in one message is left out too, and stays pending:
/// sent, it would have been an empty UPDATE that every peer refuses.
pub fn updates(sent: &Routes, desired: &Arc<Routes>, ctx: &Context) -> (Vec<Vec<u8>>, Arc<Routes>) {
    let mut fit: BTreeMap<&RouteAttrs, bool> = BTreeMap::new();
    for a in desired.values() {
        fit.entry(a).or_insert_with(|| ctx.fits(a));
    }
    let ok = |n: &IpNet, a: &RouteAttrs| ctx.carries(n) && fit.get(a).copied().unwrap_or(false);
    let now: Arc<Routes> = if desired.iter().all(|(n, a)| ok(n, a)) {
        Arc::clone(desired)
    } else {
        Arc::new(
            desired
                .iter()
                .filter(|(n, a)| ok(n, a))
                .map(|(n, a)| (*n, a.clone()))
                .collect(),
        )
    };
    let gone: Vec<IpNet> = sent
        .keys()
        .filter(|n| !now.contains_key(n))
        .copied()
        .collect();
    let mut by_attrs: BTreeMap<&RouteAttrs, Vec<IpNet>> = BTreeMap::new();
    for (n, a) in now.iter() {
        if sent.get(n) != Some(a) {
            by_attrs.entry(a).or_default().push(*n);
        }
    }
    let mut out = withdrawals(&gone, ctx);
    for (attrs, nets) in by_attrs {
        out.extend(announcements(attrs, &nets, ctx));
    }
    (out, now)
}

fn withdrawals(gone: &[IpNet], ctx: &Context) -> Vec<Vec<u8>> {
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = gone.iter().partition(|n| matches!(n, IpNet::V4(_)));
    let mut out = Vec::new();
    for run in chunks(&v4, BODY_ROOM - 4) {
        let u = Update {
            withdrawn: ipv4(run),
            ..Update::default()
        };
        out.extend(body(&u, ctx.codec));
    }
    // MP_UNREACH: 4 bytes of attribute header, 3 of AFI/SAFI.
    for run in chunks(&v6, BODY_ROOM - 4 - 7) {
        let u = Update {
            attributes: Attributes {
                mp_unreach: Some((Family::IPV6_UNICAST, run.to_vec())),
                ..Attributes::default()
            },
            ..Update::default()
        };
        out.extend(body(&u, ctx.codec));
    }
    out
}

fn announcements(attrs: &RouteAttrs, nets: &[IpNet], ctx: &Context) -> Vec<Vec<u8>> {
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = nets.iter().partition(|n| matches!(n, IpNet::V4(_)));
    let mut out = Vec::new();
    let base = ctx.attributes(attrs);
    match ctx.v4_next_hops().filter(|_| !v4.is_empty()) {
        Some(V4NextHop::Attribute(nh)) => {
            let mut a = base.clone();
            a.next_hop = Some(nh);
            packed(&a, &v4, ctx, &mut out);
        }
        Some(V4NextHop::ViaIpv6(next_hops)) => {
            let mut a = base.clone();
            a.mp_reach = Some(MpReach {
                family: Family::IPV4_UNICAST,
                next_hops,
                nlri: Vec::new(),
            });
            packed_mp(&a, &v4, ctx, &mut out);
        }
        None => {}
    }
    if let Some(hops) = ctx.next_hop_v6.map(v6_hops).filter(|_| !v6.is_empty()) {
        let mut a = base.clone();
        a.mp_reach = Some(MpReach {
            family: Family::IPV6_UNICAST,
            next_hops: hops,
            nlri: Vec::new(),
        });
        packed_mp(&a, &v6, ctx, &mut out);
    }
    out
}

/// One global next hop and the link-local one when known (RFC 2545).
fn v6_hops((global, local): (Ipv6Addr, Option<Ipv6Addr>)) -> Vec<IpAddr> {
    let mut hops = vec![IpAddr::V6(global)];
    hops.extend(local.map(IpAddr::V6));
    hops
}

/// `nets` in NLRI under attributes `a`, as few UPDATEs as fit.
fn packed(a: &Attributes, nets: &[IpNet], ctx: &Context, out: &mut Vec<Vec<u8>>) {
    let Some(empty) = body(
        &Update {
            attributes: a.clone(),
            ..Update::default()
        },
        ctx.codec,
    ) else {
        return;
    };
    for run in chunks(nets, BODY_ROOM.saturating_sub(empty.len())) {
        let u = Update {
            attributes: a.clone(),
            nlri: ipv4(run),
            ..Update::default()
        };
        out.extend(body(&u, ctx.codec));
    }
}

/// `nets` in the MP_REACH_NLRI of attributes `a`, as few UPDATEs as fit.
fn packed_mp(a: &Attributes, nets: &[IpNet], ctx: &Context, out: &mut Vec<Vec<u8>>) {
    let reach = |nlri: Vec<IpNet>| {
        let mut a = a.clone();
        if let Some(m) = a.mp_reach.as_mut() {
            m.nlri = nlri;
        }
        Update {
            attributes: a,
            ..Update::default()
        }
    };
    let Some(empty) = body(&reach(Vec::new()), ctx.codec) else {
        return;
    };
    for run in chunks(nets, BODY_ROOM.saturating_sub(empty.len())) {
        out.extend(body(&reach(run.to_vec()), ctx.codec));
    }
}

/// The End-of-RIB marker for `family` (RFC 4724 §2): an UPDATE with nothing in it for IPv4,
/// an empty MP_UNREACH_NLRI for the others.
pub fn end_of_rib(family: Family, codec: Codec) -> Vec<u8> {
    let u = if family == Family::IPV4_UNICAST {
        Update::default()
    } else {
        Update {
            attributes: Attributes {
                mp_unreach: Some((family, Vec::new())),
                ..Attributes::default()
            },
            ..Update::default()
        }
    };
    // Seven bytes at most: always fits.
    body(&u, codec).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::update::{Received, decode};

    const CODEC: Codec = Codec {
        four_octet_as: true,
    };

    fn ctx(ibgp: bool) -> Context {
        Context {
            local_as: 64512,
            ibgp,
            codec: CODEC,
            ipv4: true,
            ipv6: true,
            next_hop_v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
            next_hop_v6: Some(("2001:db8::1".parse().unwrap_or(Ipv6Addr::LOCALHOST), None)),
            ipv4_via_ipv6: false,
        }
    }

    fn attrs(lp: Option<u32>, communities: &[u32]) -> RouteAttrs {
        RouteAttrs {
            local_pref: lp,
            communities: communities.iter().copied().collect(),
            large_communities: BTreeSet::new(),
        }
    }

    fn routes(n: u32, a: &RouteAttrs) -> Routes {
        (0..n)
            .map(|i| {
                let ip = Ipv4Addr::from(0x0a00_0000 + i);
                (
                    IpNet::new(IpAddr::V4(ip), 32).unwrap_or_default(),
                    a.clone(),
                )
            })
            .collect()
    }

    fn decoded(bodies: &[Vec<u8>]) -> Vec<Update> {
        bodies
            .iter()
            .map(|b| match decode(b, CODEC) {
                Ok(Received::Update(u)) => u,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn attributes_too_large_for_a_message_stay_pending_instead_of_going_out_empty() {
        // 1,100 communities: 4.4 KB of attributes, more than a message holds. Once sent as
        // 19-byte UPDATEs that every peer answers with a NOTIFICATION.
        let huge = attrs(
            None,
            &(0..1100u32).map(|i| 0xfde8_0000 + i).collect::<Vec<_>>(),
        );
        let mut want = routes(3, &huge);
        want.extend(routes(5, &attrs(None, &[7])).into_iter().skip(3));
        let (bodies, sent) = updates(&Routes::new(), &Arc::new(want), &ctx(false));
        assert!(bodies.iter().all(|b| b.len() >= 4), "no empty body");
        assert_eq!(sent.len(), 2, "only the routes that fit count as sent");
        let nlri: usize = decoded(&bodies).iter().map(|u| u.nlri.len()).sum();
        assert_eq!(nlri, 2);
        // At the limit, it still fits (and is sent whole).
        let most = attrs(None, &(0..950u32).collect::<Vec<_>>());
        assert!(ctx(false).fits(&most));
        let (bodies, sent) = updates(&Routes::new(), &Arc::new(routes(1, &most)), &ctx(false));
        assert_eq!((bodies.len(), sent.len()), (1, 1));
    }

    #[test]
    fn ten_thousand_prefixes_pack_into_few_full_messages() {
        let want = routes(10_000, &attrs(None, &[65000 << 16 | 100]));
        let want = Arc::new(want);
        let (bodies, sent) = updates(&Routes::new(), &want, &ctx(false));
        assert_eq!(sent, want);
        assert!(Arc::ptr_eq(&sent, &want), "shared, not copied");
        // 5 bytes per /32: about 800 per message.
        assert!(bodies.len() <= 13, "{} messages", bodies.len());
        assert!(bodies.iter().all(|b| b.len() + HEADER_LEN <= MAX_LEN));
        let got: BTreeSet<IpNet> = decoded(&bodies)
            .iter()
            .flat_map(|u| u.nlri.iter().map(|n| IpNet::V4(*n)))
            .collect();
        assert_eq!(got.len(), 10_000);
        let again = updates(&sent, &want, &ctx(false));
        assert!(again.0.is_empty(), "nothing changed, nothing sent");
    }

    #[test]
    fn changes_send_only_the_difference() {
        let a = attrs(Some(200), &[1]);
        let before = routes(3, &a);
        let mut after = before.clone();
        let first = *before.keys().next().unwrap_or(&IpNet::default());
        after.remove(&first);
        let v6: IpNet = "2001:db8:1::5/128".parse().unwrap_or_default();
        after.insert(v6, a.clone());
        let after = Arc::new(after);
        let (bodies, sent) = updates(&before, &after, &ctx(true));
        assert_eq!(sent, after);
        let u = decoded(&bodies);
        assert_eq!(u.len(), 2, "{u:?}");
        assert_eq!(
            u[0].withdrawn,
            vec![first.to_string().parse().unwrap_or_default()]
        );
        let reach = u[1].attributes.mp_reach.as_ref().map(|m| m.nlri.clone());
        assert_eq!(reach, Some(vec![v6]));
        assert_eq!(
            u[1].attributes.local_pref,
            Some(200),
            "iBGP carries LOCAL_PREF"
        );
        assert!(u[1].attributes.as_path.is_empty(), "iBGP: empty AS_PATH");
    }

    #[test]
    fn ebgp_gets_our_as_and_no_local_pref() {
        let want = routes(1, &attrs(Some(300), &[]));
        let (bodies, _) = updates(&Routes::new(), &Arc::new(want), &ctx(false));
        let u = decoded(&bodies);
        assert_eq!(u[0].attributes.local_pref, None);
        assert_eq!(
            u[0].attributes.as_path,
            vec![AsSegment::Sequence(vec![64512])]
        );
        assert_eq!(u[0].attributes.next_hop, Some(Ipv4Addr::new(192, 0, 2, 1)));
    }

    #[test]
    fn with_extended_next_hops_ipv4_routes_go_in_mp_reach_with_the_ipv6_next_hop() {
        let ll: Ipv6Addr = "fe80::5".parse().unwrap_or(Ipv6Addr::LOCALHOST);
        let unnumbered = Context {
            next_hop_v4: None,
            next_hop_v6: Some((ll, None)),
            ipv4_via_ipv6: true,
            ..ctx(false)
        };
        let want = Arc::new(routes(2000, &attrs(None, &[])));
        let (bodies, sent) = updates(&Routes::new(), &want, &unnumbered);
        assert_eq!(sent, want);
        let u = decoded(&bodies);
        assert!(u.len() > 1, "packed over several messages: {}", u.len());
        let mut got = BTreeSet::new();
        for m in &u {
            assert!(m.nlri.is_empty() && m.attributes.next_hop.is_none());
            let reach = m.attributes.mp_reach.as_ref().expect("MP_REACH_NLRI");
            assert_eq!(reach.family, Family::IPV4_UNICAST);
            assert_eq!(reach.next_hops, vec![IpAddr::V6(ll)]);
            got.extend(reach.nlri.iter().copied());
        }
        assert_eq!(got.len(), 2000);
        assert!(bodies.iter().all(|b| b.len() + HEADER_LEN <= MAX_LEN));
        // Without the capability agreed, IPv4 routes wait for an IPv4 next hop.
        let plain = Context {
            ipv4_via_ipv6: false,
            ..unnumbered
        };
        let one: IpNet = "10.0.0.1/32".parse().unwrap_or_default();
        assert!(!plain.carries(&one));
        assert!(unnumbered.carries(&one));
    }

    #[test]
    fn prefixes_without_a_family_or_next_hop_wait() {
        let v6: IpNet = "2001:db8:1::5/128".parse().unwrap_or_default();
        let mut want = routes(1, &RouteAttrs::default());
        want.insert(v6, RouteAttrs::default());
        let want = Arc::new(want);
        let mut c = ctx(false);
        c.next_hop_v6 = None;
        let (_, sent) = updates(&Routes::new(), &want, &c);
        assert!(!sent.contains_key(&v6));
        c = ctx(false);
        c.ipv6 = false;
        assert!(!updates(&Routes::new(), &want, &c).1.contains_key(&v6));
    }

    #[test]
    fn many_ipv6_withdrawals_fit() {
        let a = RouteAttrs::default();
        let want: Routes = (0..2000u128)
            .map(|i| {
                let ip = Ipv6Addr::from(0x2001_0db8_u128 << 96 | i);
                (
                    IpNet::new(IpAddr::V6(ip), 128).unwrap_or_default(),
                    a.clone(),
                )
            })
            .collect();
        let (bodies, sent) = updates(&Routes::new(), &Arc::new(want), &ctx(false));
        assert!(bodies.iter().all(|b| b.len() + HEADER_LEN <= MAX_LEN));
        let (gone, empty) = updates(&sent, &Arc::default(), &ctx(false));
        assert!(empty.is_empty());
        assert!(gone.iter().all(|b| b.len() + HEADER_LEN <= MAX_LEN));
        let n: usize = decoded(&gone)
            .iter()
            .filter_map(|u| u.attributes.mp_unreach.as_ref().map(|m| m.1.len()))
            .sum();
        assert_eq!(n, 2000);
    }

    #[test]
    fn end_of_rib_markers() {
        assert_eq!(end_of_rib(Family::IPV4_UNICAST, CODEC), vec![0, 0, 0, 0]);
        let u = decoded(&[end_of_rib(Family::IPV6_UNICAST, CODEC)]);
        assert_eq!(
            u[0].attributes.mp_unreach,
            Some((Family::IPV6_UNICAST, Vec::new()))
        );
    }
}
