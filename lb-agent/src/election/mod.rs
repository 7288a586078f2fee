//! Who announces a VIP at Layer 2, and which VIPs this node announces, from the configuration,
//! the controller's allocations and who is alive. Pure, and the same on every node: each agent
//! computes every owner and keeps the VIPs it owns (DESIGN.md §6).
//!
//! Layout:
//! - this module: the candidates of each Service and the [`Election`] among them;
//!   [`layer2`], what this node answers.
//! - [`order`]: MetalLB's hash order of the candidates (single owner).
//! - [`slots`]: the active-active table (which node answers which requesters).
//! - [`handover`]: when the maps follow a new election (make before break, linger, slots
//!   gained), time passed in.
//!
//! For a Service's addresses, the candidates are the nodes that are alive, not labelled
//! `node.kubernetes.io/exclude-from-external-load-balancers`, and selected (`nodeSelectors`) by
//! an L2Advertisement that selects the Service's pool (`ipAddressPools`,
//! `ipAddressPoolSelectors`, or neither: every pool) and the Service (`serviceSelectors`),
//! narrowed to those that can reach the addresses ([`reach`]). The owner is MetalLB's choice
//! over the Service's first address, so all of a Service's addresses live on one node.
//! Services that share their first address (`allow-shared-ip`) are elected as one, so they are
//! never announced from two nodes. The interfaces are the union of the selecting advertisements'
//! `interfaces` (none listed: every interface the agent runs on).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use lb_controller::{
    config::{
        l2mode::{self, L2Mode},
        preempt,
        selector::{self, Advertisement},
        types::L2Advertisement,
    },
    plan::PlanEntry,
};

use crate::{
    inputs::{EXCLUDE_LABEL, Inputs, Labels},
    membership::Members,
};

pub mod handover;
pub mod order;
pub mod reach;
pub mod slots;

use order::Candidate;
use reach::Reach;

/// One VIP this node announces.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Announcement {
    pub vip: IpAddr,
    /// `namespace/name`.
    pub service: String,
    /// Interfaces to announce on; empty: all of the agent's.
    pub interfaces: BTreeSet<String>,
}

fn preference(ad: &L2Advertisement, labels: &BTreeMap<String, String>) -> u32 {
    ad.spec
        .preferred_node_selectors
        .iter()
        .filter(|p| selector::matches(&p.preference, labels))
        .map(|p| u32::try_from(p.weight).unwrap_or(0))
        .sum()
}

/// The interfaces a set of advertisements announce on: the union of their `interfaces`, or
/// every one (empty) as soon as one of them lists none.
fn interfaces<'a>(lists: impl IntoIterator<Item = &'a Vec<String>>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for list in lists {
        if list.is_empty() {
            return BTreeSet::new();
        }
        out.extend(list.iter().cloned());
    }
    out
}

/// Who answers for a Service's addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Election {
    /// One node answers every requester (MetalLB's Layer 2).
    Owner(String),
    /// Active-active: these nodes (sorted) share the requesters through a
    /// [`slots::SlotTable`]. Only the candidates of the highest preference take part,
    /// as only they could own the VIP in single-owner mode.
    ActiveActive(Arc<[String]>),
}

/// The election of each allocated Service (`namespace/name`) that has a candidate.
/// The nodes that may announce some Layer 2 address: selected by an L2Advertisement and not
/// excluded from load balancers. Only they take part in membership: a node no advertisement
/// selects is never elected, so whether it is alive changes no owner.
pub fn l2_candidates(inputs: &Inputs) -> BTreeSet<String> {
    inputs
        .nodes
        .iter()
        .filter(|(_, labels)| !labels.contains_key(EXCLUDE_LABEL))
        .filter(|(_, labels)| {
            inputs
                .l2_advertisements
                .iter()
                .any(|ad| ad.spec.selects_node(labels))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

pub fn elections(
    inputs: &Inputs,
    allocations: &[PlanEntry],
    members: &Members,
) -> BTreeMap<String, Election> {
    elect(inputs, allocations, members).0
}

/// The elections, and the first addresses of the non-revertive Services among them (what
/// their owners claim).
fn elect(
    inputs: &Inputs,
    allocations: &[PlanEntry],
    members: &Members,
) -> (BTreeMap<String, Election>, BTreeSet<IpAddr>) {
    // Services that share an address (`allow-shared-ip`) are elected together, so one node
    // answers for it even when advertisements select only some of them (MetalLB's split,
    // metallb/metallb#3025): see [`Shared`].
    let mut groups: BTreeMap<IpAddr, Shared> = BTreeMap::new();
    for entry in allocations {
        let (Some((pool, labels)), Some(first)) = (inputs.pool_of(entry), entry.ips.first()) else {
            continue;
        };
        let svc = inputs.services.get(&entry.service);
        let ads: Vec<&L2Advertisement> = inputs
            .l2_advertisements
            .iter()
            .filter(|ad| {
                ad.spec.selects_pool(pool, labels)
                    && ad.spec.selects_service(svc.map(|s| &s.labels))
            })
            .collect();
        let local = svc.and_then(|s| s.local_nodes.as_ref());
        let candidates: Vec<(Candidate, Reach)> = inputs
            .nodes
            .iter()
            .filter(|(name, _)| {
                members.alive.contains(*name) && !inputs.unavailable.contains(*name)
            })
            .filter(|(name, _)| local.is_none_or(|nodes| nodes.contains(*name)))
            .filter(|(_, labels)| !labels.contains_key(EXCLUDE_LABEL))
            .filter_map(|(name, labels)| {
                let chosen: Vec<_> = ads
                    .iter()
                    .filter(|ad| ad.spec.selects_node(labels))
                    .collect();
                let candidate = Candidate {
                    node: name.clone(),
                    preference: chosen
                        .iter()
                        .map(|ad| preference(ad, labels))
                        .max()
                        .unwrap_or(0),
                };
                let on = interfaces(chosen.iter().map(|ad| &ad.spec.interfaces));
                let reach = reach::reach(members.links.get(name), &on, &entry.ips);
                (!chosen.is_empty()).then_some((candidate, reach))
            })
            .collect();
        let mode = l2mode::effective(svc.and_then(|s| s.l2_mode), ads.iter().copied());
        let preempt = preempt::effective(svc.and_then(|s| s.preempt), ads.iter().copied());
        groups
            .entry(*first)
            .or_default()
            .add(&entry.service, candidates, mode, preempt);
    }
    let mut out = BTreeMap::new();
    let mut sticky = BTreeSet::new();
    for (first, group) in groups {
        let (services, candidates, mode, preempt) = group.merged();
        let candidates = reach::best(candidates);
        let election = match mode {
            L2Mode::SingleOwner if !preempt => {
                sticky.insert(first);
                // The node that holds the address keeps it while it is a candidate; after a
                // partition more than one may claim it, and MetalLB's order decides.
                let claimers: Vec<Candidate> = candidates
                    .iter()
                    .filter(|c| {
                        members
                            .claims
                            .get(&c.node)
                            .is_some_and(|held| held.contains(&first))
                    })
                    .cloned()
                    .collect();
                order::owner(first, &claimers)
                    .or_else(|| order::owner(first, &candidates))
                    .map(Election::Owner)
            }
            L2Mode::SingleOwner => order::owner(first, &candidates).map(Election::Owner),
            L2Mode::ActiveActive => {
                let top = candidates.iter().map(|c| c.preference).max();
                let nodes: Arc<[String]> = candidates
                    .iter()
                    .filter(|c| Some(c.preference) == top)
                    .map(|c| c.node.clone())
                    .collect();
                (!nodes.is_empty()).then_some(Election::ActiveActive(nodes))
            }
        };
        if let Some(e) = election {
            for service in services {
                out.insert(service, e.clone());
            }
        }
    }
    (out, sticky)
}

/// The Services whose first address is one address, elected as one: the nodes that are
/// candidates for every one of them (the best preference and reach any of them gives a node),
/// or, when no node is, for any of them, so the address still has an owner. Active-active only
/// when every one of them asks for it, and non-revertive likewise.
#[derive(Default)]
struct Shared {
    services: Vec<String>,
    /// Per node: its candidacy as the best of the Services give it, and for how many.
    nodes: BTreeMap<String, (Candidate, Reach, usize)>,
    single: bool,
    preempt: bool,
}

impl Shared {
    /// A Service no node may announce (no advertisement selects it, or `Local` without a
    /// ready endpoint) takes no part: it neither narrows the others' candidates nor is said
    /// to be announced.
    fn add(
        &mut self,
        service: &str,
        candidates: Vec<(Candidate, Reach)>,
        mode: L2Mode,
        preempt: bool,
    ) {
        if candidates.is_empty() {
            return;
        }
        self.services.push(service.to_owned());
        self.single |= mode == L2Mode::SingleOwner;
        self.preempt |= preempt;
        for (c, r) in candidates {
            let e = self
                .nodes
                .entry(c.node.clone())
                .or_insert((c.clone(), r, 0));
            e.0.preference = e.0.preference.max(c.preference);
            e.1 = e.1.max(r);
            e.2 += 1;
        }
    }

    fn merged(self) -> (Vec<String>, Vec<(Candidate, Reach)>, L2Mode, bool) {
        let every = self.services.len();
        let all: Vec<(Candidate, Reach, usize)> = self.nodes.into_values().collect();
        let common = all.iter().any(|(_, _, n)| *n == every);
        let candidates = all
            .into_iter()
            .filter(|(_, _, n)| !common || *n == every)
            .map(|(c, r, _)| (c, r))
            .collect();
        let mode = match self.single {
            true => L2Mode::SingleOwner,
            false => L2Mode::ActiveActive,
        };
        (self.services, candidates, mode, self.preempt)
    }
}

/// The owner of each allocated single-owner Service (`namespace/name` → node), for every
/// Service that has one.
pub fn owners(
    inputs: &Inputs,
    allocations: &[PlanEntry],
    members: &Members,
) -> BTreeMap<String, String> {
    elections(inputs, allocations, members)
        .into_iter()
        .filter_map(|(svc, e)| match e {
            Election::Owner(node) => Some((svc, node)),
            Election::ActiveActive(_) => None,
        })
        .collect()
}

/// What this node answers for at Layer 2.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layer2 {
    pub announcements: BTreeSet<Announcement>,
    /// The active-active VIPs among them, with every node that shares each one (this one
    /// included).
    pub active_active: BTreeMap<IpAddr, Arc<[String]>>,
    /// The first addresses of the non-revertive Services this node owns: what it claims.
    pub claims: BTreeSet<IpAddr>,
}

/// What `node` announces, and which of it is shared with other nodes.
pub fn layer2(node: &str, inputs: &Inputs, allocations: &[PlanEntry], members: &Members) -> Layer2 {
    let (elections, sticky) = elect(inputs, allocations, members);
    let no_labels = Labels::new();
    let node_labels = inputs.nodes.get(node).unwrap_or(&no_labels);
    let mut out = Layer2::default();
    for entry in allocations {
        let sharing = match elections.get(&entry.service) {
            Some(Election::Owner(owner)) if owner == node => None,
            Some(Election::ActiveActive(nodes)) if nodes.iter().any(|n| n == node) => {
                Some(nodes.clone())
            }
            _ => continue,
        };
        if let Some(first) = entry.ips.first()
            && sharing.is_none()
            && sticky.contains(first)
        {
            out.claims.insert(*first);
        }
        let Some((pool, labels)) = inputs.pool_of(entry) else {
            continue;
        };
        let interfaces = interfaces(
            inputs
                .l2_advertisements
                .iter()
                .filter(|ad| {
                    ad.spec.selects_pool(pool, labels) && ad.spec.selects_node(node_labels)
                })
                .map(|ad| &ad.spec.interfaces),
        );
        for ip in &entry.ips {
            out.announcements.insert(Announcement {
                vip: *ip,
                service: entry.service.clone(),
                interfaces: interfaces.clone(),
            });
            if let Some(nodes) = &sharing {
                out.active_active.insert(*ip, nodes.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Node;
    use lb_controller::config::manifest::Objects;
    use serde_json::json;

    use super::*;
    use crate::inputs::ServiceFacts;

    fn objects(ads: serde_json::Value, nodes: &[(&str, serde_json::Value)]) -> Inputs {
        Inputs::new(&Objects {
            pools: vec![
                serde_json::from_value(
                    json!({"metadata": {"name": "p", "labels": {"tier": "gold"}},
                    "spec": {"addresses": ["10.0.0.0/24"]}}),
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ],
            l2_advertisements: serde_json::from_value(ads).unwrap_or_else(|e| panic!("{e}")),
            nodes: nodes
                .iter()
                .map(|(name, labels)| {
                    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                        .unwrap_or_else(|e| panic!("{e}"))
                })
                .collect(),
            ..Default::default()
        })
    }

    fn alloc(service: &str, ips: &[&str]) -> PlanEntry {
        PlanEntry {
            service: service.into(),
            ips: ips
                .iter()
                .map(|i| i.parse().unwrap_or_else(|e| panic!("{e}")))
                .collect(),
            pool: Some("p".into()),
            pending: None,
        }
    }

    fn alive(names: &[&str]) -> Members {
        names
            .iter()
            .map(|n| (*n).to_owned())
            .collect::<BTreeSet<String>>()
            .into()
    }

    #[test]
    fn addresses_outside_the_named_pool_are_never_announced() {
        // The gateway in a Service's status (patched by hand, or by another implementation)
        // must not be answered for, whatever the entry claims.
        let o = objects(
            json!([{"metadata": {"name": "l2"}, "spec": {}}]),
            &[("a", json!({})), ("b", json!({}))],
        );
        let mut unknown_pool = alloc("default/ghost", &["10.0.0.9"]);
        unknown_pool.pool = Some("nowhere".into());
        let allocs = [
            alloc("default/gateway", &["10.0.0.5", "192.168.1.1"]),
            alloc("default/outside", &["192.168.1.2"]),
            unknown_pool,
            alloc("default/web", &["10.0.0.6"]),
        ];
        let up = alive(&["a", "b"]);
        let announced: Vec<String> = ["a", "b"]
            .iter()
            .flat_map(|n| layer2(n, &o, &allocs, &up).announcements)
            .map(|a| a.vip.to_string())
            .collect();
        assert_eq!(announced, vec!["10.0.0.6"]);
    }

    #[test]
    fn every_node_agrees_and_exactly_one_announces() {
        let o = objects(
            json!([{"metadata": {"name": "l2"}, "spec": {}}]),
            &[("a", json!({})), ("b", json!({})), ("c", json!({}))],
        );
        let allocs: Vec<PlanEntry> = (0..20)
            .map(|i| alloc(&format!("default/s{i}"), &[&format!("10.0.0.{i}")]))
            .collect();
        let up = alive(&["a", "b", "c"]);
        let mut seen = BTreeMap::new();
        for node in ["a", "b", "c"] {
            for a in layer2(node, &o, &allocs, &up).announcements {
                assert!(seen.insert(a.vip, node).is_none(), "{} twice", a.vip);
            }
        }
        assert_eq!(seen.len(), 20);
        // Spread: with 20 VIPs every node gets some (sha256 ordering).
        let per: BTreeSet<&str> = seen.values().copied().collect();
        assert_eq!(per.len(), 3, "{seen:?}");
    }

    fn with_links(names: &[&str], links: &[(&str, &[(&str, &str)])]) -> Members {
        use crate::membership::links::{Link, Links};
        let mut m = alive(names);
        for (node, ifaces) in links {
            let l = Links::new(ifaces.iter().map(|(name, net)| Link {
                name: (*name).to_owned(),
                nets: vec![net.parse().unwrap_or_else(|e| panic!("{e}"))],
            }));
            m.links.insert((*node).to_owned(), l);
        }
        m
    }

    /// issue 15 §6, MetalLB's shared-IP guard (metallb/metallb#3025): Services sharing an
    /// address, each selected by another advertisement with other nodes, are announced from
    /// one node: one that both advertisements select if there is one, else one of either.
    #[test]
    fn services_sharing_an_address_are_announced_from_one_node() {
        let ads = json!([
            {"metadata": {"name": "primary"}, "spec": {
                "serviceSelectors": [{"matchLabels": {"app": "a"}}],
                "nodeSelectors": [{"matchLabels": {"primary": "yes"}}]}},
            {"metadata": {"name": "secondary"}, "spec": {
                "serviceSelectors": [{"matchLabels": {"app": "b"}}],
                "nodeSelectors": [{"matchLabels": {"secondary": "yes"}}]}}
        ]);
        let allocs: Vec<PlanEntry> = (0..16)
            .flat_map(|i| {
                let ip = format!("10.0.0.{i}");
                [
                    alloc(&format!("default/a{i}"), &[&ip]),
                    alloc(&format!("default/b{i}"), &[&ip]),
                ]
            })
            .collect();
        let mut o = objects(
            ads.clone(),
            &[
                ("p1", json!({"primary": "yes"})),
                ("p2", json!({"primary": "yes"})),
                ("s1", json!({"secondary": "yes"})),
                ("both", json!({"primary": "yes", "secondary": "yes"})),
            ],
        );
        for i in 0..16 {
            for (svc, app) in [
                (format!("default/a{i}"), "a"),
                (format!("default/b{i}"), "b"),
            ] {
                o.services.insert(
                    svc,
                    ServiceFacts {
                        labels: [("app".to_owned(), app.to_owned())].into(),
                        ..ServiceFacts::default()
                    },
                );
            }
        }
        let up = alive(&["p1", "p2", "s1", "both"]);
        let got = owners(&o, &allocs, &up);
        assert_eq!(got.len(), 32, "{got:?}");
        for i in 0..16 {
            let (a, b) = (
                &got[&format!("default/a{i}")],
                &got[&format!("default/b{i}")],
            );
            assert_eq!(a, b, "10.0.0.{i} split");
            assert_eq!(a, "both", "the one node both select");
        }
        // Without a node both select: still one node per address, of either side.
        let up = alive(&["p1", "p2", "s1"]);
        let got = owners(&o, &allocs, &up);
        for i in 0..16 {
            assert_eq!(
                got[&format!("default/a{i}")],
                got[&format!("default/b{i}")],
                "10.0.0.{i} split"
            );
        }
        let sides: BTreeSet<&String> = got.values().collect();
        assert!(sides.contains(&"s1".to_owned()), "{sides:?}");
        // Every node agrees: each address is answered by exactly one of them.
        let mut seen = BTreeMap::new();
        for n in ["p1", "p2", "s1"] {
            for a in layer2(n, &o, &allocs, &up).announcements {
                assert!(seen.insert((a.vip, a.service.clone()), n).is_none());
            }
        }
        let per_ip: BTreeMap<IpAddr, BTreeSet<&str>> =
            seen.iter().fold(BTreeMap::new(), |mut m, ((ip, _), n)| {
                m.entry(*ip).or_default().insert(*n);
                m
            });
        assert!(per_ip.values().all(|n| n.len() == 1), "{per_ip:?}");
    }

    #[test]
    fn only_nodes_an_advertisement_selects_take_part_in_membership() {
        let nodes = [
            ("a", json!({"zone": "east"})),
            ("b", json!({"zone": "west"})),
            (
                "c",
                json!({"zone": "east", "node.kubernetes.io/exclude-from-external-load-balancers": ""}),
            ),
        ];
        let east = objects(
            json!([{"metadata": {"name": "l2"}, "spec": {"nodeSelectors": [{"matchLabels": {"zone": "east"}}]}}]),
            &nodes,
        );
        assert_eq!(l2_candidates(&east), BTreeSet::from(["a".to_owned()]));
        let all = objects(json!([{"metadata": {"name": "l2"}, "spec": {}}]), &nodes);
        assert_eq!(
            l2_candidates(&all),
            BTreeSet::from(["a".to_owned(), "b".to_owned()])
        );
        // BGP only: nobody needs to know who is alive.
        assert!(l2_candidates(&objects(json!([]), &nodes)).is_empty());
    }

    fn claiming(mut m: Members, claims: &[(&str, &[&str])]) -> Members {
        use crate::membership::claims::Claims;
        for (node, vips) in claims {
            let c = Claims::new(
                vips.iter()
                    .map(|v| v.parse().unwrap_or_else(|e| panic!("{e}"))),
            )
            .unwrap_or_else(|(c, _)| c);
            m.claims.insert((*node).to_owned(), c);
        }
        m
    }

    /// issue 15 §5: with `xdplb.io/l2-preempt: "false"` the node that holds a VIP keeps it
    /// when MetalLB's preferred node returns; claims that conflict (after a partition) resolve
    /// in MetalLB's order; a claim from a node that is no candidate counts for nothing.
    #[test]
    fn a_non_revertive_vip_stays_with_the_node_that_holds_it() {
        let sticky = objects(
            json!([{"metadata": {"name": "l2", "annotations": {"xdplb.io/l2-preempt": "false"}},
                "spec": {}}]),
            &[
                ("a", json!({})),
                ("b", json!({})),
                (
                    "c",
                    json!({"node.kubernetes.io/exclude-from-external-load-balancers": ""}),
                ),
            ],
        );
        let allocs = [alloc("default/web", &["10.0.0.7"])];
        let all = ["a", "b", "c"];
        let preferred = owners(&sticky, &allocs, &alive(&all))["default/web"].clone();
        let other = if preferred == "a" { "b" } else { "a" };
        // The preferred node died; the other took the VIP over and claims it.
        let taken = owners(&sticky, &allocs, &alive(&[other, "c"]));
        assert_eq!(taken["default/web"], other);
        assert_eq!(
            layer2(other, &sticky, &allocs, &alive(&[other, "c"])).claims,
            BTreeSet::from(["10.0.0.7".parse().unwrap_or_else(|e| panic!("{e}"))])
        );
        // It returns: the VIP stays, on every node's view.
        let back = claiming(alive(&all), &[(other, &["10.0.0.7"])]);
        assert_eq!(owners(&sticky, &allocs, &back)["default/web"], other);
        assert!(
            layer2(&preferred, &sticky, &allocs, &back)
                .announcements
                .is_empty()
        );
        // MetalLB's rule (the default) takes it back.
        let revertive = objects(
            json!([{"metadata": {"name": "l2"}, "spec": {}}]),
            &[("a", json!({})), ("b", json!({}))],
        );
        assert_eq!(owners(&revertive, &allocs, &back)["default/web"], preferred);
        assert!(
            layer2(&preferred, &revertive, &allocs, &back)
                .claims
                .is_empty()
        );
        // Both claim (a healed partition): MetalLB's order among the claimers.
        let both = claiming(alive(&all), &[("a", &["10.0.0.7"]), ("b", &["10.0.0.7"])]);
        assert_eq!(owners(&sticky, &allocs, &both)["default/web"], preferred);
        // An excluded node's claim is no claim.
        let excluded = claiming(alive(&all), &[("c", &["10.0.0.7"])]);
        assert_eq!(
            owners(&sticky, &allocs, &excluded)["default/web"],
            preferred
        );
        // A Service can ask for MetalLB's rule against its advertisement.
        let mut own = sticky.clone();
        own.services.insert(
            "default/web".into(),
            ServiceFacts {
                preempt: Some(true),
                ..ServiceFacts::default()
            },
        );
        assert_eq!(owners(&own, &allocs, &back)["default/web"], preferred);
    }

    /// issue 15 §3: among the nodes MetalLB would consider, those on the VIP's subnet.
    #[test]
    fn a_node_without_the_vips_subnet_is_never_elected_unless_no_node_has_it() {
        let o = objects(
            json!([{"metadata": {"name": "l2"}, "spec": {}}]),
            &[("a", json!({})), ("b", json!({})), ("c", json!({}))],
        );
        let allocs: Vec<PlanEntry> = (0..30)
            .map(|i| alloc(&format!("default/s{i}"), &[&format!("10.0.0.{i}")]))
            .collect();
        let names = ["a", "b", "c"];
        // c's only announcing interface is on another subnet.
        let m = with_links(
            &names,
            &[
                ("a", &[("eth0", "10.0.0.1/24")]),
                ("b", &[("eth0", "10.0.0.2/24")]),
                ("c", &[("eth0", "192.168.7.3/24")]),
            ],
        );
        let got = owners(&o, &allocs, &m);
        assert_eq!(got.len(), 30);
        assert!(got.values().all(|n| n != "c"), "{got:?}");
        assert!(got.values().any(|n| n == "a") && got.values().any(|n| n == "b"));
        // Every node computes the same owners.
        let owned: usize = names
            .iter()
            .map(|n| layer2(n, &o, &allocs, &m).announcements.len())
            .sum();
        assert_eq!(owned, 30);
        // No node has the subnet (a routed pool): MetalLB's choice, c included.
        let routed = with_links(
            &names,
            &[
                ("a", &[("eth0", "172.16.0.1/24")]),
                ("b", &[("eth0", "172.16.0.2/24")]),
                ("c", &[("eth0", "192.168.7.3/24")]),
            ],
        );
        assert_eq!(
            owners(&o, &allocs, &routed),
            owners(&o, &allocs, &alive(&names))
        );
    }

    /// issue 15 §4: a node whose announcing link lost carrier gives its VIPs up; when every
    /// candidate's link is down, MetalLB's choice stands.
    #[test]
    fn a_node_whose_link_is_down_gives_its_vips_up() {
        let o = objects(
            json!([{"metadata": {"name": "l2"}, "spec": {"interfaces": ["eth1"]}}]),
            &[("a", json!({})), ("b", json!({}))],
        );
        let allocs: Vec<PlanEntry> = (0..10)
            .map(|i| alloc(&format!("default/s{i}"), &[&format!("10.0.0.{i}")]))
            .collect();
        let names = ["a", "b"];
        let before = owners(&o, &allocs, &alive(&names));
        assert!(before.values().any(|n| n == "a"));
        // a's eth1 lost carrier; its eth0 (heartbeats, not announced on) is up.
        let cut = with_links(
            &names,
            &[
                ("a", &[("eth0", "10.0.0.1/24")]),
                ("b", &[("eth0", "10.0.0.2/24"), ("eth1", "10.0.0.3/24")]),
            ],
        );
        assert!(owners(&o, &allocs, &cut).values().all(|n| n == "b"));
        let all_down = with_links(&names, &[("a", &[]), ("b", &[])]);
        assert_eq!(owners(&o, &allocs, &all_down), before);
    }

    #[test]
    fn active_active_puts_the_vip_on_every_candidate_of_the_top_preference() {
        let o = objects(
            json!([{"metadata": {"name": "l2", "annotations": {"xdplb.io/l2-mode": "active-active"}},
                "spec": {"nodeSelectors": [{"matchLabels": {"role": "edge"}}],
                    "preferredNodeSelectors": [{"weight": 10, "preference": {"matchLabels": {"fast": "yes"}}}]}}]),
            &[
                ("a", json!({"role": "edge", "fast": "yes"})),
                ("b", json!({"role": "edge", "fast": "yes"})),
                ("c", json!({"role": "edge"})),
                ("d", json!({})),
            ],
        );
        let allocs = [alloc("default/web", &["10.0.0.7", "10.0.0.8"])];
        let up = alive(&["a", "b", "c", "d"]);
        let sharing: Arc<[String]> = ["a".to_owned(), "b".to_owned()].into();
        for node in ["a", "b"] {
            let l2 = layer2(node, &o, &allocs, &up);
            assert_eq!(l2.announcements.len(), 2, "{node} announces both addresses");
            assert_eq!(l2.active_active.len(), 2);
            assert!(
                l2.active_active.values().all(|n| *n == sharing),
                "{node}: {l2:?}"
            );
        }
        for node in ["c", "d"] {
            assert_eq!(layer2(node, &o, &allocs, &up), Layer2::default(), "{node}");
        }
        // Without the preferred nodes, the next class shares it.
        let l2 = layer2("c", &o, &allocs, &alive(&["c", "d"]));
        assert_eq!(
            l2.active_active.values().next().map(|n| n.to_vec()),
            Some(vec!["c".to_owned()])
        );
        assert!(owners(&o, &allocs, &up).is_empty(), "no single owner");
    }

    #[test]
    fn the_service_annotation_overrides_the_advertisement() {
        let mut o = objects(
            json!([{"metadata": {"name": "l2", "annotations": {"xdplb.io/l2-mode": "active-active"}}, "spec": {}}]),
            &[("a", json!({})), ("b", json!({}))],
        );
        o.services.insert(
            "default/one".into(),
            ServiceFacts {
                l2_mode: Some(L2Mode::SingleOwner),
                ..ServiceFacts::default()
            },
        );
        let allocs = [
            alloc("default/one", &["10.0.0.1"]),
            alloc("default/many", &["10.0.0.2"]),
        ];
        let up = alive(&["a", "b"]);
        let e = elections(&o, &allocs, &up);
        assert!(
            matches!(e.get("default/one"), Some(Election::Owner(_))),
            "{e:?}"
        );
        assert!(
            matches!(e.get("default/many"), Some(Election::ActiveActive(n)) if n.len() == 2),
            "{e:?}"
        );
    }

    #[test]
    fn a_bad_service_annotation_is_named_and_ignored() {
        let inputs = Inputs::new(&Objects {
            services: vec![
                serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "shop",
                    "annotations": {"xdplb.io/l2-mode": "all"}}, "spec": {"type": "LoadBalancer"}}))
                .unwrap_or_else(|e| panic!("{e}")),
            ],
            ..Default::default()
        });
        assert_eq!(
            inputs.problems,
            vec![
                "Service shop/web: metadata.annotations[xdplb.io/l2-mode]: \"all\" is not a Layer 2 mode (active-active or single-owner); using the advertisements' mode"
            ]
        );
        assert_eq!(inputs.services["shop/web"].l2_mode, None);
        let inputs = Inputs::new(&Objects {
            services: vec![
                serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "shop",
                    "annotations": {"xdplb.io/l2-preempt": "never"}}, "spec": {"type": "LoadBalancer"}}))
                .unwrap_or_else(|e| panic!("{e}")),
            ],
            ..Default::default()
        });
        assert_eq!(
            inputs.problems,
            vec![
                "Service shop/web: metadata.annotations[xdplb.io/l2-preempt]: \"never\" is not a preemption setting (\"true\", MetalLB's revertive rule, or \"false\"); using the advertisements' setting"
            ]
        );
        assert_eq!(inputs.services["shop/web"].preempt, None);
    }

    #[test]
    fn a_dead_node_loses_only_its_own_vips() {
        let o = objects(
            json!([{"metadata": {"name": "l2"}, "spec": {}}]),
            &[("a", json!({})), ("b", json!({})), ("c", json!({}))],
        );
        let allocs: Vec<PlanEntry> = (0..30)
            .map(|i| alloc(&format!("default/s{i}"), &[&format!("10.0.0.{i}")]))
            .collect();
        let before = owners(&o, &allocs, &alive(&["a", "b", "c"]));
        let after = owners(&o, &allocs, &alive(&["a", "c"]));
        for (svc, owner) in &before {
            if owner != "b" {
                assert_eq!(after.get(svc), Some(owner), "{svc} moved needlessly");
            } else {
                assert_ne!(after.get(svc).map(String::as_str), Some("b"));
            }
        }
    }

    #[test]
    fn selectors_exclusion_and_interfaces_decide_eligibility() {
        let o = objects(
            json!([{"metadata": {"name": "l2"}, "spec": {
                "ipAddressPoolSelectors": [{"matchLabels": {"tier": "gold"}}],
                "nodeSelectors": [{"matchLabels": {"role": "edge"}}],
                "interfaces": ["eth1"]}}]),
            &[
                ("a", json!({"role": "edge", EXCLUDE_LABEL: ""})),
                ("b", json!({"role": "edge"})),
                ("c", json!({})),
            ],
        );
        let allocs = [alloc("default/web", &["10.0.0.7", "10.0.0.8"])];
        let up = alive(&["a", "b", "c"]);
        assert_eq!(
            owners(&o, &allocs, &up)
                .get("default/web")
                .map(String::as_str),
            Some("b")
        );
        let got = layer2("b", &o, &allocs, &up).announcements;
        assert_eq!(got.len(), 2, "both addresses on the owner");
        assert!(
            got.iter()
                .all(|a| a.interfaces == BTreeSet::from(["eth1".to_owned()]))
        );
        // Without b, nobody is eligible: a is excluded, c not selected.
        assert!(owners(&o, &allocs, &alive(&["a", "c"])).is_empty());
    }

    #[test]
    fn an_advertisement_for_another_pool_announces_nothing() {
        let o = objects(
            json!([{"metadata": {"name": "l2"}, "spec": {"ipAddressPools": ["other"]}}]),
            &[("a", json!({}))],
        );
        assert!(
            layer2(
                "a",
                &o,
                &[alloc("default/web", &["10.0.0.1"])],
                &alive(&["a"])
            )
            .announcements
            .is_empty()
        );
    }

    #[test]
    fn preferred_nodes_win_over_the_hash() {
        let o = objects(
            json!([{"metadata": {"name": "l2"}, "spec": {
                "preferredNodeSelectors": [{"weight": 50, "preference": {"matchLabels": {"fast": "yes"}}}]}}]),
            &[
                ("a", json!({})),
                ("b", json!({})),
                ("c", json!({"fast": "yes"})),
            ],
        );
        let allocs: Vec<PlanEntry> = (0..10)
            .map(|i| alloc(&format!("default/s{i}"), &[&format!("10.0.0.{i}")]))
            .collect();
        let owners = owners(&o, &allocs, &alive(&["a", "b", "c"]));
        assert!(owners.values().all(|n| n == "c"), "{owners:?}");
    }

    /// A Service with `externalTrafficPolicy: Local` and its EndpointSlices, read from YAML the
    /// way a user writes them.
    fn local_service(endpoints: serde_json::Value, unavailable: &[&str]) -> Inputs {
        let nodes: Vec<Node> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                let status = if unavailable.contains(n) {
                    json!({"conditions": [{"type": "NetworkUnavailable", "status": "True"}]})
                } else if n == &"c" {
                    json!({"conditions": [{"type": "Ready", "status": "Unknown"}]})
                } else {
                    json!({"conditions": [{"type": "NetworkUnavailable", "status": "False"}]})
                };
                serde_json::from_value(json!({"metadata": {"name": n}, "status": status}))
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        Inputs::new(&Objects {
            pools: vec![
                serde_json::from_value(json!({"metadata": {"name": "p"},
                    "spec": {"addresses": ["10.0.0.0/24"]}}))
                .unwrap_or_else(|e| panic!("{e}")),
            ],
            l2_advertisements: vec![
                serde_json::from_value(json!({"metadata": {"name": "l2"}, "spec": {}}))
                    .unwrap_or_else(|e| panic!("{e}")),
            ],
            nodes,
            services: vec![
                serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default"},
                    "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"}}))
                .unwrap_or_else(|e| panic!("{e}")),
            ],
            endpoint_slices: vec![
                serde_json::from_value(
                    json!({"metadata": {"name": "web-abc", "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "web"}},
                    "addressType": "IPv4", "endpoints": endpoints}),
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ],
            ..Default::default()
        })
    }

    /// Active-active with `externalTrafficPolicy: Local`: only the nodes with a ready endpoint
    /// share the VIP, so no client is sent to a node that would drop its traffic.
    #[test]
    fn etp_local_shares_only_among_nodes_with_endpoints() {
        let ep = |node: &str| json!({"addresses": ["192.168.0.1"], "nodeName": node, "conditions": {"ready": true}});
        let mut inputs = local_service(json!([ep("a"), ep("b")]), &[]);
        if let Some(svc) = inputs.services.get_mut("default/web") {
            svc.l2_mode = Some(L2Mode::ActiveActive);
        }
        let allocs = [alloc("default/web", &["10.0.0.7"])];
        let e = elections(&inputs, &allocs, &alive(&["a", "b", "c"]));
        let want: Arc<[String]> = ["a".to_owned(), "b".to_owned()].into();
        assert_eq!(e.get("default/web"), Some(&Election::ActiveActive(want)));
        // The endpoint on b goes: a alone answers every requester.
        let mut inputs = local_service(json!([ep("a")]), &[]);
        if let Some(svc) = inputs.services.get_mut("default/web") {
            svc.l2_mode = Some(L2Mode::ActiveActive);
        }
        let e = elections(&inputs, &allocs, &alive(&["a", "b", "c"]));
        assert_eq!(
            e.get("default/web"),
            Some(&Election::ActiveActive(["a".to_owned()].into()))
        );
    }

    /// Scenario table for `externalTrafficPolicy: Local` and node conditions: the endpoints,
    /// the nodes alive, the nodes whose network is unavailable (node c is never Ready), and who
    /// may own the VIP.
    #[test]
    fn etp_local_follows_the_ready_endpoints() {
        let ep = |node: &str, conditions: serde_json::Value| json!({"addresses": ["192.168.0.1"], "nodeName": node, "conditions": conditions});
        type Case = (
            &'static str,
            serde_json::Value,
            &'static [&'static str],
            &'static [&'static str],
            &'static [&'static str],
        );
        let cases: Vec<Case> = vec![
            (
                "only node with an endpoint",
                json!([ep("b", json!({"ready": true}))]),
                &["a", "b", "c"],
                &[],
                &["b"],
            ),
            (
                "endpoint moved",
                json!([ep("a", json!({"ready": true}))]),
                &["a", "b", "c"],
                &[],
                &["a"],
            ),
            // Node c reports Ready: Unknown in every case.
            (
                "the endpoint's node is not Ready",
                json!([ep("c", json!({"ready": true}))]),
                &["a", "b", "c"],
                &[],
                &[],
            ),
            (
                "readiness unknown counts as ready",
                json!([ep("a", json!({}))]),
                &["a", "b", "c"],
                &[],
                &["a"],
            ),
            (
                "not ready",
                json!([ep("a", json!({"ready": false}))]),
                &["a", "b", "c"],
                &[],
                &[],
            ),
            (
                "serving, not terminating",
                json!([ep(
                    "a",
                    json!({"ready": false, "serving": true, "terminating": false})
                )]),
                &["a", "b", "c"],
                &[],
                &["a"],
            ),
            (
                "serving but terminating",
                json!([ep(
                    "a",
                    json!({"ready": false, "serving": true, "terminating": true})
                )]),
                &["a", "b", "c"],
                &[],
                &[],
            ),
            (
                "no endpoint anywhere",
                json!([]),
                &["a", "b", "c"],
                &[],
                &[],
            ),
            (
                "the endpoint's node is dead",
                json!([ep("b", json!({"ready": true}))]),
                &["a", "c"],
                &[],
                &[],
            ),
            (
                "two endpoints, one node dead",
                json!([
                    ep("a", json!({"ready": true})),
                    ep("b", json!({"ready": true}))
                ]),
                &["a", "c"],
                &[],
                &["a"],
            ),
            (
                "network unavailable",
                json!([ep("b", json!({"ready": true}))]),
                &["a", "b", "c"],
                &["b"],
                &[],
            ),
        ];
        let allocs = vec![PlanEntry {
            service: "default/web".into(),
            ips: vec!["10.0.0.7".parse().unwrap_or_else(|e| panic!("{e}"))],
            pool: Some("p".into()),
            pending: None,
        }];
        for (what, endpoints, up, unavailable, may_own) in cases {
            let inputs = local_service(endpoints, unavailable);
            let owner = owners(&inputs, &allocs, &alive(up)).remove("default/web");
            match owner {
                None => assert!(
                    may_own.is_empty(),
                    "{what}: nobody owns, expected one of {may_own:?}"
                ),
                Some(o) => assert!(
                    may_own.contains(&o.as_str()),
                    "{what}: {o} owns, expected one of {may_own:?}"
                ),
            }
            if !may_own.is_empty() {
                assert!(
                    owners(&inputs, &allocs, &alive(up)).contains_key("default/web"),
                    "{what}: nobody owns"
                );
            }
        }
    }
}
