//! MetalLB's configuration rules (research/metallb.md §3), over the objects as read.
//!
//! Every problem names `Kind/name`, the field and the reason. Errors make the configuration
//! invalid; warnings (references to pools or peers that do not exist, which MetalLB accepts)
//! do not.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::IpNet;
use kube::ResourceExt;

use super::{
    Problem, Report,
    address::{self, AddrRange},
    community::Community,
    manifest::Objects,
    rules,
    selector::Advertisement,
    types::{BGPAdvertisement, IPAddressPool, v1beta2::BGPPeer},
};

/// The configuration without the objects that make it invalid, and the problems that left
/// them out: what an agent starting with no last good configuration can still act on. An
/// object is left out when an error names it; what then refers to it may be left out in turn.
/// `None` when an error names no object that can be left out.
pub fn valid_part(objects: &Objects) -> Option<(Objects, Vec<Problem>)> {
    let mut part = objects.clone();
    let mut left_out = Vec::new();
    loop {
        let report = validate(&part);
        if report.errors.is_empty() {
            return Some((part, left_out));
        }
        let before = config_count(&part);
        for p in &report.errors {
            part.remove(&p.kind, None, &p.name);
        }
        if config_count(&part) == before {
            return None;
        }
        left_out.extend(report.errors);
    }
}

fn config_count(o: &Objects) -> usize {
    o.pools.len()
        + o.l2_advertisements.len()
        + o.bgp_advertisements.len()
        + o.peers.len()
        + o.bfd_profiles.len()
        + o.communities.len()
}

/// Checks the whole configuration at once, as MetalLB's parser does.
///
/// A bug in a rule must not take down the process that asked (the controller would crash-loop
/// on the same objects, an agent would stop taking configuration): a panic becomes an error
/// that refuses the configuration, and the last good one stays.
pub fn validate(objects: &Objects) -> Report {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| checks(objects))).unwrap_or_else(
        |panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let mut report = Report::default();
            report.error(
                "configuration",
                "",
                "",
                format!("validation failed unexpectedly ({why}); please report this input"),
            );
            report
        },
    )
}

/// The rules themselves; fuzzed directly so that the guard in [`validate`] hides nothing.
pub(crate) fn checks(objects: &Objects) -> Report {
    let mut report = Report::default();
    duplicates(objects, &mut report);
    let pool_ranges = pools(&objects.pools, &mut report);
    bfd_profiles(objects, &mut report);
    let aliases = communities(objects, &mut report);
    bgp_advertisements(objects, &pool_ranges, &aliases, &mut report);
    l2_advertisements(objects, &mut report);
    peers(objects, &mut report);
    list_rules(objects, &mut report);
    rules::peers_per_node(objects, &mut report);
    let families: BTreeMap<String, rules::Families> = pool_ranges
        .iter()
        .map(|(name, ranges)| {
            let f = rules::Families {
                v4: ranges.iter().any(|r| r.start.is_ipv4()),
                v6: ranges.iter().any(|r| r.start.is_ipv6()),
            };
            (name.clone(), f)
        })
        .collect();
    rules::ipv6_and_echo(objects, &families, &mut report);
    rules::local_pref_conflicts(objects, &families, &mut report);
    report
}

/// Selector syntax and duplicate list entries, field by field.
fn list_rules(objects: &Objects, report: &mut Report) {
    for p in &objects.pools {
        let name = p.name_any();
        if let Some(a) = &p.spec.service_allocation {
            rules::selectors(
                "IPAddressPool",
                &name,
                "spec.serviceAllocation.namespaceSelectors",
                &a.namespace_selectors,
                report,
            );
            rules::selectors(
                "IPAddressPool",
                &name,
                "spec.serviceAllocation.serviceSelectors",
                &a.service_selectors,
                report,
            );
        }
    }
    for ad in &objects.l2_advertisements {
        let (name, s) = (ad.name_any(), &ad.spec);
        const K: &str = "L2Advertisement";
        rules::advertisement_lists(K, &name, s, report);
        // MetalLB accepts an interface listed twice; it changes nothing.
        for (i, item) in rules::repeats(&s.interfaces) {
            report.warning(
                K,
                &name,
                format!("spec.interfaces[{i}]"),
                format!("{item:?} is listed twice"),
            );
        }
    }
    for ad in &objects.bgp_advertisements {
        let (name, s) = (ad.name_any(), &ad.spec);
        const K: &str = "BGPAdvertisement";
        rules::advertisement_lists(K, &name, s, report);
        rules::unique(K, &name, "spec.peers", &s.peers, report);
        rules::unique(K, &name, "spec.communities", &s.communities, report);
    }
    for peer in &objects.peers {
        let (name, s) = (peer.name_any(), &peer.spec);
        rules::selectors(
            "BGPPeer",
            &name,
            "spec.nodeSelectors",
            &s.node_selectors,
            report,
        );
        rules::timers(
            &name,
            s.hold_time.as_deref(),
            s.keepalive_time.as_deref(),
            s.connect_time.as_deref(),
            report,
        );
    }
}

fn duplicates(objects: &Objects, report: &mut Report) {
    fn check(kind: &str, names: impl Iterator<Item = (String, String)>, report: &mut Report) {
        let mut seen = BTreeSet::new();
        for (ns, name) in names {
            if !seen.insert((ns.clone(), name.clone())) {
                report.error(
                    kind,
                    &name,
                    "metadata.name",
                    format!("defined twice in namespace {ns:?}"),
                );
            }
        }
    }
    fn ids<K: kube::Resource>(list: &[K]) -> impl Iterator<Item = (String, String)> + '_ {
        list.iter()
            .map(|o| (o.namespace().unwrap_or_default(), o.name_any()))
    }
    check("IPAddressPool", ids(&objects.pools), report);
    check("L2Advertisement", ids(&objects.l2_advertisements), report);
    check("BGPAdvertisement", ids(&objects.bgp_advertisements), report);
    check("BGPPeer", ids(&objects.peers), report);
    check("BFDProfile", ids(&objects.bfd_profiles), report);
    check("Community", ids(&objects.communities), report);
}

/// Pool rules; returns each pool's parsed ranges for the advertisement rules.
fn pools(pools: &[IPAddressPool], report: &mut Report) -> HashMap<String, Vec<AddrRange>> {
    const KIND: &str = "IPAddressPool";
    let mut all: Vec<(AddrRange, (String, usize))> = Vec::new();
    let mut by_pool = HashMap::new();
    for pool in pools {
        let name = pool.name_any();
        if pool.spec.addresses.is_empty() {
            report.error(KIND, &name, "spec.addresses", "the pool has no addresses");
        }
        let mut ranges = Vec::new();
        for (i, entry) in pool.spec.addresses.iter().enumerate() {
            match address::parse(entry) {
                Ok(range) => {
                    ranges.push(range);
                    all.push((range, (name.clone(), i)));
                }
                Err(e) => report.error(KIND, &name, format!("spec.addresses[{i}]"), e.to_string()),
            }
        }
        if let Some(alloc) = &pool.spec.service_allocation {
            let mut seen = BTreeSet::new();
            for (i, ns) in alloc.namespaces.iter().enumerate() {
                if !seen.insert(ns) {
                    report.error(
                        KIND,
                        &name,
                        format!("spec.serviceAllocation.namespaces[{i}]"),
                        format!("duplicate namespace {ns:?}"),
                    );
                }
            }
        }
        by_pool.insert(name, ranges);
    }
    for ((a, (pool_a, i)), (b, (pool_b, j))) in address::overlaps(&all) {
        report.error(
            KIND,
            &pool_b,
            format!("spec.addresses[{j}]"),
            format!("{b} overlaps with {a} (IPAddressPool/{pool_a} spec.addresses[{i}])"),
        );
    }
    by_pool
}

fn bfd_profiles(objects: &Objects, report: &mut Report) {
    const KIND: &str = "BFDProfile";
    for p in &objects.bfd_profiles {
        let name = p.name_any();
        let s = &p.spec;
        let ranges = [
            ("spec.receiveInterval", s.receive_interval, 10, 60_000),
            ("spec.transmitInterval", s.transmit_interval, 10, 60_000),
            ("spec.echoInterval", s.echo_interval, 10, 60_000),
            ("spec.detectMultiplier", s.detect_multiplier, 2, 255),
            ("spec.minimumTtl", s.minimum_ttl, 1, 254),
        ];
        for (field, value, min, max) in ranges {
            if let Some(v) = value
                && !(min..=max).contains(&v)
            {
                report.error(KIND, &name, field, format!("{v} is outside {min}..={max}"));
            }
        }
    }
}

/// Community alias rules; returns the aliases.
fn communities(objects: &Objects, report: &mut Report) -> BTreeMap<String, String> {
    const KIND: &str = "Community";
    let mut aliases = BTreeMap::new();
    for c in &objects.communities {
        let name = c.name_any();
        for (i, alias) in c.spec.communities.iter().enumerate() {
            if let Err(why) = Community::parse(&alias.value) {
                report.error(KIND, &name, format!("spec.communities[{i}].value"), why);
            }
            if aliases
                .insert(alias.name.clone(), alias.value.clone())
                .is_some()
            {
                report.error(
                    KIND,
                    &name,
                    format!("spec.communities[{i}].name"),
                    format!("alias {:?} is defined more than once", alias.name),
                );
            }
        }
    }
    aliases
}

fn pool_names(objects: &Objects) -> BTreeSet<String> {
    objects.pools.iter().map(|p| p.name_any()).collect()
}

/// Room for communities in one UPDATE: 4,096 bytes less the header, the other attributes of
/// the largest route (an MP_REACH with two IPv6 next hops, the AS path, LOCAL_PREF) and a
/// margin. The agent checks the merged set of each route again before sending.
const MAX_COMMUNITY_BYTES: usize = 3_800;

fn bgp_advertisements(
    objects: &Objects,
    ranges: &HashMap<String, Vec<AddrRange>>,
    aliases: &BTreeMap<String, String>,
    report: &mut Report,
) {
    const KIND: &str = "BGPAdvertisement";
    let pools = pool_names(objects);
    let peers: BTreeSet<String> = objects.peers.iter().map(|p| p.name_any()).collect();
    for ad in &objects.bgp_advertisements {
        let name = ad.name_any();
        let s = &ad.spec;
        let v4 = s.aggregation_length.unwrap_or(32);
        let v6 = s.aggregation_length_v6.unwrap_or(128);
        if !(1..=32).contains(&v4) {
            report.error(
                KIND,
                &name,
                "spec.aggregationLength",
                format!("{v4} is outside 1..=32"),
            );
        }
        if !(1..=128).contains(&v6) {
            report.error(
                KIND,
                &name,
                "spec.aggregationLengthV6",
                format!("{v6} is outside 1..=128"),
            );
        }
        if !s.service_selectors.is_empty() && (v4 != 32 || v6 != 128) {
            report.error(
                KIND,
                &name,
                "spec.serviceSelectors",
                "only allowed with the default aggregation lengths (32 and 128)",
            );
        }
        let mut bytes = 0usize;
        for (i, c) in s.communities.iter().enumerate() {
            match Community::resolve(c, aliases) {
                Ok(Community::Standard(_)) => bytes += 4,
                Ok(Community::Large(_)) => bytes += 12,
                // A bad alias value is reported on its Community object, not again here.
                Err(_) if !c.contains(':') && aliases.contains_key(c) => {}
                // No ':' makes it an alias, and no Community defines it (yet).
                Err(why) if !c.contains(':') => {
                    report.unresolved(KIND, &name, format!("spec.communities[{i}]"), why);
                }
                Err(why) => report.error(KIND, &name, format!("spec.communities[{i}]"), why),
            }
        }
        if bytes > MAX_COMMUNITY_BYTES {
            report.error(
                KIND,
                &name,
                "spec.communities",
                format!(
                    "{} communities take {bytes} bytes; one BGP UPDATE has room for {MAX_COMMUNITY_BYTES} (a standard community takes 4, a large one 12)",
                    s.communities.len()
                ),
            );
        }
        for (i, pool) in s.ip_address_pools.iter().enumerate() {
            if !pools.contains(pool) {
                report.warning(
                    KIND,
                    &name,
                    format!("spec.ipAddressPools[{i}]"),
                    format!("no IPAddressPool named {pool:?}"),
                );
            }
        }
        for (i, peer) in s.peers.iter().enumerate() {
            if !peers.contains(peer) {
                report.warning(
                    KIND,
                    &name,
                    format!("spec.peers[{i}]"),
                    format!("no BGPPeer named {peer:?}"),
                );
            }
        }
        aggregation_fits(ad, &objects.pools, ranges, v4, v6, report);
    }
}

/// An aggregation length may not be shorter than the widest CIDR of any entry of a selected
/// pool (MetalLB's rule, entry by entry: a /28 cannot be announced as a /26; the range
/// 3.3.3.2-3.3.3.254, whose widest piece is a /26, can be announced as a /26 but not as a /24;
/// a pool of a /24 and a /28 needs at least 28).
fn aggregation_fits(
    ad: &BGPAdvertisement,
    pools: &[IPAddressPool],
    ranges: &HashMap<String, Vec<AddrRange>>,
    v4: i32,
    v6: i32,
    report: &mut Report,
) {
    let name = ad.name_any();
    let selected = pools
        .iter()
        .filter(|p| ad.spec.selects_pool(&p.name_any(), p.labels()));
    for pool in selected {
        let pool_name = pool.name_any();
        // Each entry's widest piece; the most specific of those bounds the length.
        let widest: Vec<IpNet> = ranges
            .get(&pool_name)
            .into_iter()
            .flatten()
            .filter_map(|r| r.cidrs().into_iter().min_by_key(IpNet::prefix_len))
            .collect();
        for (v4_family, field, len) in [
            (true, "spec.aggregationLength", v4),
            (false, "spec.aggregationLengthV6", v6),
        ] {
            let bound = widest
                .iter()
                .filter(|n| matches!(n, IpNet::V4(_)) == v4_family)
                .max_by_key(|n| n.prefix_len());
            if let Some(net) = bound
                && len < i32::from(net.prefix_len())
            {
                report.error(
                    "BGPAdvertisement",
                    &name,
                    field,
                    format!(
                        "{len} is shorter than {net}, a prefix of IPAddressPool/{pool_name}: the announcement would cover addresses outside the pool"
                    ),
                );
            }
        }
    }
}

fn l2_advertisements(objects: &Objects, report: &mut Report) {
    let pools = pool_names(objects);
    for ad in &objects.l2_advertisements {
        let name = ad.name_any();
        for (i, pool) in ad.spec.ip_address_pools.iter().enumerate() {
            if !pools.contains(pool) {
                report.warning(
                    "L2Advertisement",
                    &name,
                    format!("spec.ipAddressPools[{i}]"),
                    format!("no IPAddressPool named {pool:?}"),
                );
            }
        }
        if let Some(Err(e)) = super::l2mode::annotated(ad.annotations()) {
            report.error(
                "L2Advertisement",
                &name,
                format!("metadata.annotations[{}]", super::l2mode::ANNOTATION),
                e,
            );
        }
        if let Some(Err(e)) = super::preempt::annotated(ad.annotations()) {
            report.error(
                "L2Advertisement",
                &name,
                format!("metadata.annotations[{}]", super::preempt::ANNOTATION),
                e,
            );
        }
        for (i, p) in ad.spec.preferred_node_selectors.iter().enumerate() {
            if !(1..=100).contains(&p.weight) {
                report.error(
                    "L2Advertisement",
                    &name,
                    format!("spec.preferredNodeSelectors[{i}].weight"),
                    format!("{} is outside 1..=100", p.weight),
                );
            }
        }
    }
}

fn peers(objects: &Objects, report: &mut Report) {
    const KIND: &str = "BGPPeer";
    let profiles: BTreeSet<String> = objects.bfd_profiles.iter().map(|p| p.name_any()).collect();
    for peer in &objects.peers {
        peer_rules(peer, &profiles, objects, report);
    }
    fn peer_rules(
        peer: &BGPPeer,
        profiles: &BTreeSet<String>,
        objects: &Objects,
        report: &mut Report,
    ) {
        let name = peer.name_any();
        let s = &peer.spec;
        if s.my_asn == 0 {
            report.error(KIND, &name, "spec.myASN", "required (non-zero)");
        }
        // peerASN 0 is no AS, as MetalLB reads it (a v1beta1 peer converts to it).
        match (s.peer_asn.filter(|a| *a != 0), s.dynamic_asn) {
            (Some(_), Some(_)) => report.error(
                KIND,
                &name,
                "spec.dynamicASN",
                "set peerASN or dynamicASN, not both",
            ),
            (None, None) => report.error(
                KIND,
                &name,
                "spec.peerASN",
                "one of peerASN or dynamicASN is required",
            ),
            _ => {}
        }
        // MetalLB's rule, as narrow as MetalLB has it (peerASN equal to myASN): with dynamicASN
        // or localASN the flag is accepted, and the speaker treats an iBGP session as iBGP.
        if s.ebgp_multi_hop == Some(true) && s.peer_asn == Some(s.my_asn) {
            report.error(
                KIND,
                &name,
                "spec.ebgpMultiHop",
                "multihop is for eBGP; this peer is iBGP",
            );
        }
        match (&s.peer_address, &s.interface) {
            (Some(_), Some(_)) => report.error(
                KIND,
                &name,
                "spec.interface",
                "set peerAddress or interface, not both",
            ),
            (None, None) => report.error(
                KIND,
                &name,
                "spec.peerAddress",
                "one of peerAddress or interface is required",
            ),
            _ => {}
        }
        for (field, value) in [
            ("spec.peerAddress", &s.peer_address),
            ("spec.sourceAddress", &s.source_address),
            ("spec.routerID", &s.router_id),
        ] {
            if let Some(v) = value
                && v.parse::<std::net::IpAddr>().is_err()
            {
                report.error(KIND, &name, field, format!("{v:?} is not an IP address"));
            }
        }
        if let Some(port) = s.peer_port
            && !(1..=16384).contains(&port)
        {
            report.error(
                KIND,
                &name,
                "spec.peerPort",
                format!("{port} is outside 1..=16384"),
            );
        }
        if let Some(Err(e)) = super::gtsm::hops(peer.annotations()) {
            report.error(
                KIND,
                &name,
                format!("metadata.annotations[{}]", super::gtsm::ANNOTATION),
                e,
            );
        }
        if s.password.is_some() && s.password_secret.is_some() {
            report.error(
                KIND,
                &name,
                "spec.passwordSecret",
                "set password or passwordSecret, not both",
            );
        }
        if let Some(secret) = s.password_secret.as_ref().and_then(|r| r.name.as_ref()) {
            let found = objects.secrets.iter().find(|x| &x.name_any() == secret);
            match found {
                None => report.unresolved(
                    KIND,
                    &name,
                    "spec.passwordSecret",
                    format!("no Secret named {secret:?}"),
                ),
                Some(x) => {
                    use super::passwords::{BASIC_AUTH, PASSWORD, password_of};
                    if x.type_.as_deref() != Some(BASIC_AUTH) {
                        report.error(
                            KIND,
                            &name,
                            "spec.passwordSecret",
                            format!("Secret {secret:?} must be of type {BASIC_AUTH}"),
                        );
                    }
                    if password_of(x).is_none() {
                        report.error(
                            KIND,
                            &name,
                            "spec.passwordSecret",
                            format!("Secret {secret:?} has no key {PASSWORD:?}"),
                        );
                    }
                }
            }
        }
        if let Some(profile) = &s.bfd_profile
            && !profiles.contains(profile)
        {
            report.unresolved(
                KIND,
                &name,
                "spec.bfdProfile",
                format!("no BFDProfile named {profile:?}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::manifest;

    /// Validates YAML text; returns the error and warning lines.
    fn load(yaml: &str) -> manifest::Loaded {
        manifest::documents(Path::new("test.yaml"), yaml).expect("test YAML parses");
        let dir = std::env::temp_dir().join(format!("xdplb-validate-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join(format!("{}-{:x}.yaml", yaml.len(), fmix(yaml)));
        std::fs::write(&file, yaml).expect("write");
        let loaded = manifest::load(std::slice::from_ref(&file)).expect("load");
        let _ = std::fs::remove_file(&file);
        loaded
    }

    fn fmix(s: &str) -> u64 {
        s.bytes().fold(0xcbf29ce484222325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        })
    }

    fn check(yaml: &str) -> (Vec<String>, Vec<String>) {
        let loaded = load(yaml);
        let report = validate(&loaded.objects);
        let lines = |v: Vec<Problem>| v.into_iter().map(|p| p.to_string()).collect();
        let mut errors: Vec<Problem> = loaded.errors;
        errors.extend(report.errors);
        (lines(errors), lines(report.warnings))
    }

    fn pool(name: &str, addresses: &str) -> String {
        format!(
            "---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: {name}}}\nspec:\n  addresses: {addresses}\n"
        )
    }

    #[test]
    fn the_valid_part_leaves_out_what_errors_name_and_what_then_refers_to_it() {
        let yaml = pool("good", "[10.0.0.0/24]")
            + &pool("bad", "[10.0.0.0/33]")
            + "---\napiVersion: metallb.io/v1beta1\nkind: BFDProfile\nmetadata: {name: fast}\nspec: {receiveInterval: 5}\n"
            + "---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {myASN: 64512, peerASN: 65000, peerAddress: 10.9.0.1, bfdProfile: fast}\n"
            + "---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: spine}\nspec: {myASN: 64512, peerASN: 65001, peerAddress: 10.9.0.2}\n"
            + "---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: l2}\n";
        let loaded = load(&yaml);
        let (part, left_out) = valid_part(&loaded.objects).expect("a valid part");
        let names = |v: Vec<String>| v.join(",");
        assert_eq!(
            names(part.pools.iter().map(|o| o.name_any()).collect()),
            "good"
        );
        assert!(part.bfd_profiles.is_empty());
        assert_eq!(
            names(part.peers.iter().map(|o| o.name_any()).collect()),
            "spine"
        );
        assert_eq!(part.l2_advertisements.len(), 1);
        let left: BTreeSet<String> = left_out
            .iter()
            .map(|p| format!("{}/{}", p.kind, p.name))
            .collect();
        assert_eq!(
            left,
            ["BFDProfile/fast", "BGPPeer/tor", "IPAddressPool/bad"]
                .map(str::to_owned)
                .into()
        );
        assert!(validate(&part).errors.is_empty());
        // A valid configuration is its own valid part.
        let (same, none) = valid_part(&part).expect("valid");
        assert!(none.is_empty());
        assert_eq!(same.peers.len(), 1);
    }

    #[test]
    fn overlapping_pools_are_reported_with_both_entries() {
        let (errors, _) =
            check(&(pool("a", "[10.0.0.0/24]") + &pool("b", "[10.0.1.0/24, 10.0.0.200-10.0.1.5]")));
        assert_eq!(
            errors,
            vec![
                "IPAddressPool/b: spec.addresses[1]: 10.0.0.200-10.0.1.5 overlaps with 10.0.0.0/24 (IPAddressPool/a spec.addresses[0])",
                "IPAddressPool/b: spec.addresses[0]: 10.0.1.0/24 overlaps with 10.0.0.200-10.0.1.5 (IPAddressPool/b spec.addresses[1])",
            ]
        );
    }

    #[test]
    fn empty_and_duplicate_pools_are_errors() {
        let (errors, _) =
            check(&(pool("a", "[]") + &pool("c", "[10.1.0.0/24]") + &pool("c", "[10.2.0.0/24]")));
        assert!(
            errors
                .contains(&"IPAddressPool/a: spec.addresses: the pool has no addresses".to_owned()),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("IPAddressPool/c: metadata.name: defined twice")),
            "{errors:?}"
        );
    }

    #[test]
    fn aggregation_length_may_not_reach_outside_a_pool() {
        let ad = |len: u8| {
            format!(
                "---\napiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {{name: ad}}\nspec:\n  aggregationLength: {len}\n  ipAddressPools: [p]\n"
            )
        };
        // research/metallb.md §3: this range allows /26 but not /24.
        let p = pool("p", "[3.3.3.2-3.3.3.254]");
        assert_eq!(check(&(p.clone() + &ad(26))).0, Vec::<String>::new());
        let (errors, _) = check(&(p + &ad(24)));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .starts_with("BGPAdvertisement/ad: spec.aggregationLength: 24 is shorter than")
        );
    }

    #[test]
    fn communities_must_be_values_or_defined_aliases() {
        assert!(Community::parse("65000:100").is_ok());
        assert!(Community::parse("large:4200000000:1:2").is_ok());
        assert!(Community::parse("65536:1").is_err());
        assert!(Community::parse("large:1:2").is_err());
        let yaml = r#"
apiVersion: metallb.io/v1beta1
kind: Community
metadata: {name: aliases}
spec:
  communities: [{name: no-export, value: "65535:65281"}, {name: bad, value: "1:2:3"}]
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: ad}
spec:
  communities: [no-export, missing, "65000:1"]
"#;
        let (errors, _) = check(yaml);
        assert_eq!(
            errors,
            vec![
                "Community/aliases: spec.communities[1].value: \"1:2:3\" is not a community (A:B, each 0..=65535)",
                "BGPAdvertisement/ad: spec.communities[1]: \"missing\" is neither a community value nor a Community alias",
            ]
        );
    }

    #[test]
    fn communities_that_cannot_fit_in_one_update_are_an_error() {
        let list = |n: usize, large: bool| -> String {
            (0..n)
                .map(|i| {
                    if large {
                        format!("\"large:1:2:{i}\"")
                    } else {
                        format!("\"1:{i}\"")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let ad = |name: &str, communities: String| {
            format!(
                "---\napiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {{name: {name}}}\nspec:\n  communities: [{communities}]\n"
            )
        };
        let (errors, _) = check(
            &(ad("fits", list(950, false))
                + &ad("standard", list(951, false))
                + &ad("large", list(317, true))),
        );
        assert_eq!(
            errors,
            vec![
                "BGPAdvertisement/standard: spec.communities: 951 communities take 3804 bytes; one BGP UPDATE has room for 3800 (a standard community takes 4, a large one 12)",
                "BGPAdvertisement/large: spec.communities: 317 communities take 3804 bytes; one BGP UPDATE has room for 3800 (a standard community takes 4, a large one 12)",
            ]
        );
    }

    #[test]
    fn peer_rules_name_the_field() {
        let yaml = r#"
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: p, annotations: {xdplb.io/ttl-security-hops: "0"}}
spec:
  myASN: 64500
  peerASN: 64501
  dynamicASN: external
  peerPort: 20000
  password: x
  passwordSecret: {name: s}
---
apiVersion: v1
kind: Secret
metadata: {name: s}
type: Opaque
stringData: {user: u}
"#;
        let (errors, _) = check(yaml);
        assert_eq!(
            errors,
            vec![
                "BGPPeer/p: spec.dynamicASN: set peerASN or dynamicASN, not both",
                "BGPPeer/p: spec.peerAddress: one of peerAddress or interface is required",
                "BGPPeer/p: spec.peerPort: 20000 is outside 1..=16384",
                "BGPPeer/p: metadata.annotations[xdplb.io/ttl-security-hops]: \"0\" is not a hop count (1 for a directly connected router, up to 254)",
                "BGPPeer/p: spec.passwordSecret: set password or passwordSecret, not both",
                "BGPPeer/p: spec.passwordSecret: Secret \"s\" must be of type kubernetes.io/basic-auth",
                "BGPPeer/p: spec.passwordSecret: Secret \"s\" has no key \"password\"",
            ]
        );
    }

    #[test]
    fn the_layer2_mode_annotation_must_name_a_mode() {
        let ad = |name: &str, mode: &str| {
            format!(
                "---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {{name: {name}, annotations: {{xdplb.io/l2-mode: {mode}}}}}\n"
            )
        };
        let yaml = ad("spread", "active-active")
            + &ad("one", "single-owner")
            + &ad("typo", "activeactive");
        assert_eq!(
            check(&yaml).0,
            vec![
                "L2Advertisement/typo: metadata.annotations[xdplb.io/l2-mode]: \"activeactive\" is not a Layer 2 mode (active-active or single-owner)"
            ]
        );
    }

    #[test]
    fn the_preemption_annotation_must_be_true_or_false() {
        let ad = |name: &str, value: &str| {
            format!(
                "---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {{name: {name}, annotations: {{xdplb.io/l2-preempt: {value}}}}}\n"
            )
        };
        let yaml = ad("sticky", "\"false\"") + &ad("default", "\"true\"") + &ad("typo", "nope");
        assert_eq!(
            check(&yaml).0,
            vec![
                "L2Advertisement/typo: metadata.annotations[xdplb.io/l2-preempt]: \"nope\" is not a preemption setting (\"true\", MetalLB's revertive rule, or \"false\")"
            ]
        );
    }

    #[test]
    fn selectors_must_be_well_formed_and_not_repeated() {
        let yaml = r#"
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: l2}
spec:
  nodeSelectors:
  - {matchLabels: {a: b}}
  - {matchLabels: {a: b}}
  - {matchExpressions: [{key: zone, operator: Near, values: [x]}]}
  - {matchExpressions: [{key: zone, operator: In}]}
  - {matchExpressions: [{key: zone, operator: Exists, values: [x]}]}
  interfaces: [eth0, eth0]
"#;
        let (errors, warnings) = check(yaml);
        assert_eq!(
            errors,
            vec![
                "L2Advertisement/l2: spec.nodeSelectors[1]: duplicate definition of spec.nodeSelectors",
                "L2Advertisement/l2: spec.nodeSelectors[2].matchExpressions[0]: unknown operator \"Near\"",
                "L2Advertisement/l2: spec.nodeSelectors[3].matchExpressions[0]: In needs values",
                "L2Advertisement/l2: spec.nodeSelectors[4].matchExpressions[0]: Exists takes no values",
            ]
        );
        assert_eq!(
            warnings,
            vec!["L2Advertisement/l2: spec.interfaces[1]: \"eth0\" is listed twice"]
        );
    }

    fn peer_as(name: &str, my_asn: u32, extra: &str) -> String {
        format!(
            "---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {{name: {name}}}\nspec:\n  myASN: {my_asn}\n  peerASN: 64501\n  peerAddress: 10.9.0.{}\n{extra}",
            name.len()
        )
    }

    fn peer(name: &str, extra: &str) -> String {
        peer_as(name, 64500, extra)
    }

    #[test]
    fn bgp_timers_follow_metallb() {
        let (errors, _) = check(
            &(peer("a", "  holdTime: 2s\n")
                + &peer("bb", "  holdTime: 9s\n  keepaliveTime: 10s\n")
                + &peer("ccc", "  connectTime: 1500ms\n")
                + &peer("dddd", "  holdTime: soon\n")
                + &peer("eeeee", "  holdTime: 1m30s\n  connectTime: 10s\n")),
        );
        assert_eq!(
            errors,
            vec![
                "BGPPeer/a: spec.holdTime: 2s is neither 0 nor at least 3s",
                "BGPPeer/bb: spec.keepaliveTime: 10s is longer than the hold time 9s",
                "BGPPeer/ccc: spec.connectTime: 1.5s is not whole seconds in 1..=65535",
                "BGPPeer/dddd: spec.holdTime: \"soon\" is not a duration: expected number at 0",
            ]
        );
    }

    #[test]
    fn timers_beyond_the_wire_limit_are_errors_not_overflows() {
        // A keepalive alone once made validation multiply it by three and panic.
        let (errors, _) = check(
            &(peer(
                "a",
                "  keepaliveTime: 300000000000y
",
            ) + &peer(
                "bb",
                "  holdTime: 2562047788015215h
",
            ) + &peer(
                "ccc",
                "  keepaliveTime: 21846s
",
            ) + &peer(
                "dddd",
                "  holdTime: 65535s
  keepaliveTime: 65535s
",
            )),
        );
        assert_eq!(
            errors,
            vec![
                "BGPPeer/a: spec.keepaliveTime: \"300000000000y\" is longer than 65535s",
                "BGPPeer/bb: spec.holdTime: \"2562047788015215h\" is longer than 65535s",
            ]
        );
    }

    #[test]
    fn peers_that_can_share_a_node_must_agree() {
        // Without Nodes every pair of peers can meet on some node.
        let two = peer("a", "  routerID: 1.1.1.1\n") + &peer_as("bb", 64999, "");
        let (errors, _) = check(&two);
        assert_eq!(
            errors,
            vec![
                "BGPPeer/bb: spec.routerID: differs from BGPPeer/a, which can run on the same node",
                "BGPPeer/bb: spec.myASN: differs from BGPPeer/a in the same VRF on the same node",
            ]
        );
        // Nodes known and selectors disjoint: no conflict.
        let apart = peer(
            "a",
            "  routerID: 1.1.1.1\n  nodeSelectors: [{matchLabels: {rack: r1}}]\n",
        ) + &peer("bb", "  nodeSelectors: [{matchLabels: {rack: r2}}]\n")
            + "---\napiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {rack: r1}}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n2, labels: {rack: r2}}\n";
        assert_eq!(check(&apart).0, Vec::<String>::new());
    }

    #[test]
    fn ipv6_to_an_echo_mode_bfd_peer_and_conflicting_local_prefs_are_rejected() {
        let yaml = pool("v6", "[fd00::/120]")
            + &peer("p", "  bfdProfile: echo\n")
            + "---\napiVersion: metallb.io/v1beta1\nkind: BFDProfile\nmetadata: {name: echo}\nspec: {echoMode: true}\n"
            + "---\napiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: one}\nspec: {ipAddressPools: [v6], localPref: 100}\n"
            + "---\napiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: two}\nspec: {ipAddressPools: [v6], localPref: 200}\n"
            + "---\napiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: three}\nspec: {ipAddressPools: [v6], localPref: 300, aggregationLengthV6: 124}\n";
        let (errors, _) = check(&yaml);
        assert!(errors.contains(&"BGPAdvertisement/two: spec.localPref: differs from BGPAdvertisement/one for IPAddressPool/v6 and the same peers and nodes".to_owned()), "{errors:?}");
        assert!(
            !errors
                .iter()
                .any(|e| e.starts_with("BGPAdvertisement/three: spec.localPref")),
            "another aggregation length may differ: {errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with(
                "BGPAdvertisement/one: spec.ipAddressPools: advertises IPv6 (IPAddressPool/v6) to BGPPeer/p"
            )),
            "{errors:?}"
        );
    }

    #[test]
    fn bfd_ranges_are_checked() {
        let yaml = r#"
apiVersion: metallb.io/v1beta1
kind: BFDProfile
metadata: {name: fast}
spec: {receiveInterval: 5, detectMultiplier: 3, minimumTtl: 255}
"#;
        assert_eq!(
            check(yaml).0,
            vec![
                "BFDProfile/fast: spec.receiveInterval: 5 is outside 10..=60000",
                "BFDProfile/fast: spec.minimumTtl: 255 is outside 1..=254",
            ]
        );
    }
}
