//! The rules that look at several objects' fields together: label selectors, duplicate list
//! entries, BGP timers, peers that can land on the same node, and advertisements of one pool
//! that disagree (research/metallb.md §3). [`super::validate`] calls these.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::{Report, manifest::Objects, selector};

/// Selector syntax: known operators, values where required and absent where not, no duplicate
/// values, and no selector listed twice.
pub fn selectors(kind: &str, name: &str, field: &str, list: &[LabelSelector], report: &mut Report) {
    let mut seen = Vec::new();
    for (i, sel) in list.iter().enumerate() {
        if seen.contains(&sel) {
            report.error(
                kind,
                name,
                format!("{field}[{i}]"),
                format!("duplicate definition of {field}"),
            );
        }
        seen.push(sel);
        for (j, e) in sel.match_expressions.iter().flatten().enumerate() {
            let at = format!("{field}[{i}].matchExpressions[{j}]");
            let values = e.values.as_deref().unwrap_or_default();
            let problem = match e.operator.as_str() {
                _ if e.key.is_empty() => Some("key is required".to_owned()),
                "In" | "NotIn" if values.is_empty() => Some(format!("{} needs values", e.operator)),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    Some(format!("{} takes no values", e.operator))
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {
                    let distinct: BTreeSet<&String> = values.iter().collect();
                    (distinct.len() != values.len()).then(|| "duplicate values".to_owned())
                }
                other => Some(format!("unknown operator {other:?}")),
            };
            if let Some(p) = problem {
                report.error(kind, name, at, p);
            }
        }
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
    let mut seen = BTreeSet::new();
    for (i, item) in list.iter().enumerate() {
        if !seen.insert(item) {
            report.error(
                kind,
                name,
                format!("{field}[{i}]"),
                format!("{item:?} is listed twice"),
            );
        }
    }
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
    if let Some(h) = hold_d
        && !h.is_zero()
        && h < Duration::from_secs(3)
    {
        report.error(
            KIND,
            name,
            "spec.holdTime",
            format!("{h:?} is neither 0 nor at least 3s"),
        );
    }
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
            if same_vrf && sa.peer_address.is_some() && sa.peer_address == sb.peer_address {
                report.error(
                    KIND,
                    &b.name_any(),
                    "spec.peerAddress",
                    format!("{other} already peers with this address on the same node"),
                );
            }
        }
    }
}

/// An IPv6 pool may not be advertised to a peer whose BFD profile uses echo mode.
pub fn ipv6_and_echo(objects: &Objects, pool_has_v6: &BTreeMap<String, bool>, report: &mut Report) {
    let echo: BTreeSet<String> = objects
        .bfd_profiles
        .iter()
        .filter(|p| p.spec.echo_mode == Some(true))
        .map(|p| p.name_any())
        .collect();
    for ad in &objects.bgp_advertisements {
        let v6 = ad
            .spec
            .ip_address_pools
            .iter()
            .any(|p| pool_has_v6.get(p).copied().unwrap_or(false));
        if !v6 {
            continue;
        }
        for peer in &objects.peers {
            let targeted = ad.spec.peers.is_empty() || ad.spec.peers.contains(&peer.name_any());
            if targeted
                && peer
                    .spec
                    .bfd_profile
                    .as_ref()
                    .is_some_and(|b| echo.contains(b))
            {
                report.error(
                    "BGPAdvertisement",
                    &ad.name_any(),
                    "spec.ipAddressPools",
                    format!(
                        "advertises IPv6 to BGPPeer/{}, whose BFD profile uses echo mode (not supported for IPv6)",
                        peer.name_any()
                    ),
                );
            }
        }
    }
}

/// Two advertisements of one pool with different localPref conflict, unless their aggregation
/// lengths differ, their peer lists are disjoint (both non-empty), or their nodes are disjoint.
pub fn local_pref_conflicts(objects: &Objects, report: &mut Report) {
    let ads = &objects.bgp_advertisements;
    for (i, a) in ads.iter().enumerate() {
        for b in ads.iter().skip(i + 1) {
            let (sa, sb) = (&a.spec, &b.spec);
            let shared_pool = sa
                .ip_address_pools
                .iter()
                .any(|p| sb.ip_address_pools.contains(p));
            if !shared_pool || sa.local_pref.unwrap_or(0) == sb.local_pref.unwrap_or(0) {
                continue;
            }
            let aggregation_differs = sa.aggregation_length.unwrap_or(32)
                != sb.aggregation_length.unwrap_or(32)
                || sa.aggregation_length_v6.unwrap_or(128)
                    != sb.aggregation_length_v6.unwrap_or(128);
            let peers_disjoint = !sa.peers.is_empty()
                && !sb.peers.is_empty()
                && sa.peers.iter().all(|p| !sb.peers.contains(p));
            let nodes_disjoint = !may_share_a_node(
                &nodes(objects, &sa.node_selectors),
                &nodes(objects, &sb.node_selectors),
            );
            if !(aggregation_differs || peers_disjoint || nodes_disjoint) {
                report.error(
                    "BGPAdvertisement",
                    &b.name_any(),
                    "spec.localPref",
                    format!(
                        "differs from BGPAdvertisement/{} for the same pool, peers and nodes",
                        a.name_any()
                    ),
                );
            }
        }
    }
}
