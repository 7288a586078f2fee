//! The rules that look at several objects' fields together: label selectors, duplicate list
//! entries, BGP timers, peers that can land on the same node, and advertisements of one pool
//! that disagree (research/metallb.md §3). [`super::validate`] calls these.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::{
    Report,
    manifest::Objects,
    selector::{self, Advertisement},
    types::{BGPAdvertisement, IPAddressPool, v1beta2::BGPPeerSpec},
};

/// Selector syntax as Kubernetes parses it (label keys and values, known operators, values
/// where required and absent where not, no duplicate values), and MetalLB's duplicate rules: no
/// selector listed twice and no requirement twice in one selector, the order of values aside.
pub fn selectors(kind: &str, name: &str, field: &str, list: &[LabelSelector], report: &mut Report) {
    let mut seen: Vec<LabelSelector> = Vec::new();
    for (i, sel) in list.iter().enumerate() {
        let canonical = canonical(sel);
        if seen.contains(&canonical) {
            report.error(
                kind,
                name,
                format!("{field}[{i}]"),
                format!("duplicate definition of {field}"),
            );
        }
        for (key, value) in sel.match_labels.iter().flatten() {
            let at = format!("{field}[{i}].matchLabels");
            if let Err(why) = label_key(key).and_then(|()| label_value(value)) {
                report.error(kind, name, at, why);
            }
        }
        let exprs = canonical.match_expressions.as_deref().unwrap_or_default();
        for (j, e) in sel.match_expressions.iter().flatten().enumerate() {
            let at = format!("{field}[{i}].matchExpressions[{j}]");
            let values = e.values.as_deref().unwrap_or_default();
            let problem = match e.operator.as_str() {
                _ if e.key.is_empty() => Some("key is required".to_owned()),
                _ if label_key(&e.key).is_err() => label_key(&e.key).err(),
                "In" | "NotIn" if values.is_empty() => Some(format!("{} needs values", e.operator)),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    Some(format!("{} takes no values", e.operator))
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {
                    let distinct: BTreeSet<&String> = values.iter().collect();
                    if distinct.len() != values.len() {
                        Some("duplicate values".to_owned())
                    } else if exprs[..j].contains(&exprs[j]) {
                        Some("the same requirement twice in one selector".to_owned())
                    } else {
                        values.iter().find_map(|v| label_value(v).err())
                    }
                }
                other => Some(format!("unknown operator {other:?}")),
            };
            if let Some(p) = problem {
                report.error(kind, name, at, p);
            }
        }
        seen.push(canonical);
    }
}

/// The selector with each requirement's values sorted: MetalLB compares selectors this way.
fn canonical(sel: &LabelSelector) -> LabelSelector {
    let mut sel = sel.clone();
    for e in sel.match_expressions.iter_mut().flatten() {
        if let Some(v) = e.values.as_mut() {
            v.sort();
        }
    }
    sel
}

/// A label's name part, or a value: at most 63 characters, alphanumerics at both ends, `-`,
/// `_` and `.` between.
fn label_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    let edge = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    bytes.len() <= 63
        && edge(bytes.first())
        && edge(bytes.last())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A label key: a name, optionally after a DNS subdomain prefix and `/`.
fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let subdomain = |p: &str| {
        p.len() <= 253
            && p.split('.').all(|part| {
                let b = part.as_bytes();
                !b.is_empty()
                    && b.len() <= 63
                    && b.first()
                        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && b.last()
                        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            })
    };
    if label_name(name) && prefix.is_none_or(subdomain) {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a label key (an optional DNS subdomain and '/', then at most 63 alphanumerics, '-', '_' or '.', alphanumeric at both ends)"
        ))
    }
}

/// A label value: empty, or a label name.
fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a label value (at most 63 alphanumerics, '-', '_' or '.', alphanumeric at both ends)"
        ))
    }
}

/// The selector lists and the pool list every advertisement has, in the order `validate`
/// reports them.
pub fn advertisement_lists(
    kind: &str,
    name: &str,
    ad: &impl selector::Advertisement,
    report: &mut Report,
) {
    selectors(
        kind,
        name,
        "spec.ipAddressPoolSelectors",
        ad.pool_selectors(),
        report,
    );
    selectors(
        kind,
        name,
        "spec.nodeSelectors",
        ad.node_selectors(),
        report,
    );
    selectors(
        kind,
        name,
        "spec.serviceSelectors",
        ad.service_selectors(),
        report,
    );
    unique(kind, name, "spec.ipAddressPools", ad.pools(), report);
}

/// No entry listed twice.
pub fn unique(kind: &str, name: &str, field: &str, list: &[String], report: &mut Report) {
    for (i, item) in repeats(list) {
        report.error(
            kind,
            name,
            format!("{field}[{i}]"),
            format!("{item:?} is listed twice"),
        );
    }
}

/// The entries that repeat an earlier one, with their index.
pub fn repeats(list: &[String]) -> impl Iterator<Item = (usize, &String)> {
    let mut seen = BTreeSet::new();
    list.iter()
        .enumerate()
        .filter(move |(_, item)| !seen.insert(*item))
}

/// A Kubernetes duration (`90s`, `1m30s`, `500ms`).
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration: {e}"))
}

/// holdTime is 0 or at least 3 s; keepaliveTime at most holdTime (each defaulting from the
/// other: keepalive = hold / 3, hold = 3 × keepalive); connectTime whole seconds, 1 to 65535.
pub fn timers(
    name: &str,
    hold: Option<&str>,
    keepalive: Option<&str>,
    connect: Option<&str>,
    report: &mut Report,
) {
    const KIND: &str = "BGPPeer";
    // The OPEN message carries the hold time in 16 bits of seconds: a longer one is a typo, and
    // bounding every timer here keeps the arithmetic below (3 × keepalive) far from overflow.
    let mut parse = |field: &str, text: Option<&str>| -> Option<Duration> {
        let text = text?;
        match duration(text) {
            Ok(d) if d.as_secs() > u64::from(u16::MAX) => {
                report.error(KIND, name, field, format!("{text:?} is longer than 65535s"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                report.error(KIND, name, field, e);
                None
            }
        }
    };
    let hold_d = parse("spec.holdTime", hold);
    let keepalive_d = parse("spec.keepaliveTime", keepalive);
    let connect_d = parse("spec.connectTime", connect);
    if let Some(c) = connect_d
        && (c.subsec_nanos() != 0 || !(1..=65_535).contains(&c.as_secs()))
    {
        report.error(
            KIND,
            name,
            "spec.connectTime",
            format!("{c:?} is not whole seconds in 1..=65535"),
        );
    }
    let (h, k) = match (hold_d, keepalive_d) {
        (Some(h), Some(k)) => (h, k),
        (Some(h), None) => (h, h / 3),
        (None, Some(k)) => (k.saturating_mul(3), k),
        (None, None) => return,
    };
    // MetalLB truncates to whole seconds first (a BGP OPEN carries seconds): 500ms is 0, no
    // keepalives; 2500ms is 2, which BGP forbids. A keepalive alone sets the hold time too.
    if (1..3).contains(&h.as_secs()) {
        let (field, why) = match hold_d {
            Some(_) => (
                "spec.holdTime",
                format!("{h:?} is neither 0 nor at least 3s"),
            ),
            None => (
                "spec.keepaliveTime",
                format!("{k:?} makes the hold time {h:?}, neither 0 nor at least 3s"),
            ),
        };
        report.error(KIND, name, field, why);
    }
    if k > h {
        report.error(
            KIND,
            name,
            "spec.keepaliveTime",
            format!("{k:?} is longer than the hold time {h:?}"),
        );
    }
}

/// Names of the Nodes a selector list admits (empty list: all); `None` when no Nodes are known,
/// in which case every node is assumed possible, as MetalLB does.
fn nodes(objects: &Objects, selectors: &[LabelSelector]) -> Option<BTreeSet<String>> {
    if objects.nodes.is_empty() {
        return None;
    }
    Some(
        objects
            .nodes
            .iter()
            .filter(|n| selector::admits(selectors, n.labels()))
            .map(|n| n.name_any())
            .collect(),
    )
}

fn may_share_a_node(a: &Option<BTreeSet<String>>, b: &Option<BTreeSet<String>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => !a.is_disjoint(b),
        _ => true,
    }
}

/// Peers that can run on the same node must agree on routerID and, within one VRF, on myASN;
/// and one address (in one VRF) cannot be two peers there.
pub fn peers_per_node(objects: &Objects, report: &mut Report) {
    const KIND: &str = "BGPPeer";
    let placed: Vec<_> = objects
        .peers
        .iter()
        .map(|p| (p, nodes(objects, &p.spec.node_selectors)))
        .collect();
    for (i, (a, a_nodes)) in placed.iter().enumerate() {
        for (b, b_nodes) in placed.iter().skip(i + 1) {
            if !may_share_a_node(a_nodes, b_nodes) {
                continue;
            }
            let (sa, sb) = (&a.spec, &b.spec);
            let other = format!("BGPPeer/{}", a.name_any());
            if sa.router_id != sb.router_id {
                report.error(
                    KIND,
                    &b.name_any(),
                    "spec.routerID",
                    format!("differs from {other}, which can run on the same node"),
                );
            }
            let same_vrf = sa.vrf == sb.vrf;
            if same_vrf && sa.my_asn != sb.my_asn {
                report.error(
                    KIND,
                    &b.name_any(),
                    "spec.myASN",
                    format!("differs from {other} in the same VRF on the same node"),
                );
            }
            // MetalLB's peer identity: the address, else the interface (unnumbered), per VRF.
            let id = |s: &BGPPeerSpec| match (&s.peer_address, &s.interface) {
                (Some(a), _) => Some(("spec.peerAddress", "address", a.clone())),
                (None, Some(i)) => Some(("spec.interface", "interface", i.clone())),
                (None, None) => None,
            };
            if let (true, Some((field, what, x)), Some((_, _, y))) = (same_vrf, id(sb), id(sa))
                && x == y
            {
                report.error(
                    KIND,
                    &b.name_any(),
                    field,
                    format!("{other} already peers over this {what} on the same node"),
                );
            }
        }
    }
}

/// The address families a pool's valid entries hold.
#[derive(Clone, Copy, Debug, Default)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

/// Each pool with the BGPAdvertisements that cover it (by name, by label, or by naming and
/// selecting none), in the objects' order.
fn advertisements_per_pool(objects: &Objects) -> Vec<(&IPAddressPool, Vec<&BGPAdvertisement>)> {
    objects
        .pools
        .iter()
        .map(|pool| {
            let name = pool.name_any();
            let ads = objects
                .bgp_advertisements
                .iter()
                .filter(|ad| ad.spec.selects_pool(&name, pool.labels()))
                .collect();
            (pool, ads)
        })
        .collect()
}

/// An IPv6 pool may not be advertised to a peer whose BFD profile uses echo mode.
pub fn ipv6_and_echo(
    objects: &Objects,
    families: &BTreeMap<String, Families>,
    report: &mut Report,
) {
    let echo: BTreeSet<String> = objects
        .bfd_profiles
        .iter()
        .filter(|p| p.spec.echo_mode == Some(true))
        .map(|p| p.name_any())
        .collect();
    let mut reported = BTreeSet::new();
    for (pool, ads) in advertisements_per_pool(objects) {
        let pool_name = pool.name_any();
        if !families.get(&pool_name).is_some_and(|f| f.v6) {
            continue;
        }
        for ad in ads {
            for peer in &objects.peers {
                let targeted = ad.spec.peers.is_empty() || ad.spec.peers.contains(&peer.name_any());
                let echoes = peer
                    .spec
                    .bfd_profile
                    .as_ref()
                    .is_some_and(|b| echo.contains(b));
                if targeted && echoes && reported.insert((ad.name_any(), peer.name_any())) {
                    report.error(
                        "BGPAdvertisement",
                        &ad.name_any(),
                        "spec.ipAddressPools",
                        format!(
                            "advertises IPv6 (IPAddressPool/{pool_name}) to BGPPeer/{}, whose BFD profile uses echo mode (not supported for IPv6)",
                            peer.name_any()
                        ),
                    );
                }
            }
        }
    }
}

/// Two advertisements of one pool with different localPref conflict, unless one of them has
/// `serviceSelectors` (which Services meet is not known), their aggregation lengths differ for
/// every family the pool holds, their peer lists are disjoint (both non-empty), or their nodes
/// are disjoint.
pub fn local_pref_conflicts(
    objects: &Objects,
    families: &BTreeMap<String, Families>,
    report: &mut Report,
) {
    let mut reported = BTreeSet::new();
    for (pool, ads) in advertisements_per_pool(objects) {
        let pool_name = pool.name_any();
        let f = families.get(&pool_name).copied().unwrap_or_default();
        let ads: Vec<_> = ads
            .into_iter()
            .filter(|ad| ad.spec.service_selectors.is_empty())
            .collect();
        for (i, a) in ads.iter().enumerate() {
            for b in ads.iter().skip(i + 1) {
                let (sa, sb) = (&a.spec, &b.spec);
                if sa.local_pref.unwrap_or(0) == sb.local_pref.unwrap_or(0) {
                    continue;
                }
                let v4_differs =
                    sa.aggregation_length.unwrap_or(32) != sb.aggregation_length.unwrap_or(32);
                let v6_differs = sa.aggregation_length_v6.unwrap_or(128)
                    != sb.aggregation_length_v6.unwrap_or(128);
                // Different lengths are different routes, but only in a family the pool holds.
                let aggregation_differs = match (f.v4, f.v6) {
                    (false, false) => true,
                    (true, false) => v4_differs,
                    (false, true) => v6_differs,
                    (true, true) => v4_differs && v6_differs,
                };
                let peers_disjoint = !sa.peers.is_empty()
                    && !sb.peers.is_empty()
                    && sa.peers.iter().all(|p| !sb.peers.contains(p));
                let nodes_disjoint = !may_share_a_node(
                    &nodes(objects, &sa.node_selectors),
                    &nodes(objects, &sb.node_selectors),
                );
                if !(aggregation_differs || peers_disjoint || nodes_disjoint)
                    && reported.insert((a.name_any(), b.name_any()))
                {
                    report.error(
                        "BGPAdvertisement",
                        &b.name_any(),
                        "spec.localPref",
                        format!(
                            "differs from BGPAdvertisement/{} for IPAddressPool/{pool_name} and the same peers and nodes",
                            a.name_any()
                        ),
                    );
                }
            }
        }
    }
}
