//! Which VIPs this node announces at Layer 2, from the configuration, the controller's
//! allocations and who is alive. Pure, and the same on every node: each agent computes every
//! owner and keeps the VIPs it owns (DESIGN.md §6).
//!
//! For a Service's addresses, the candidates are the nodes that are alive, not labelled
//! `node.kubernetes.io/exclude-from-external-load-balancers`, and selected (`nodeSelectors`) by
//! an L2Advertisement that selects the Service's pool (`ipAddressPools`,
//! `ipAddressPoolSelectors`, or neither: every pool) and the Service (`serviceSelectors`). The
//! owner is MetalLB's choice over the Service's first address, so all of a Service's
//! addresses live on one node. The interfaces are the union of the selecting advertisements'
//! `interfaces` (none listed: every interface the agent runs on).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use kube::ResourceExt;
use lb_controller::{
    config::{manifest::Objects, types::L2Advertisement, validate::selector_matches},
    plan::PlanEntry,
};

use crate::election::{self, Candidate};

/// The label that keeps a node out of every election.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// One VIP this node announces.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Announcement {
    pub vip: IpAddr,
    /// `namespace/name`.
    pub service: String,
    /// Interfaces to announce on; empty: all of the agent's.
    pub interfaces: BTreeSet<String>,
}

type Labels = BTreeMap<String, String>;

/// What the election reads of the configuration: the pools' and nodes' labels, the
/// L2Advertisements and the Services' labels. A small part of the objects, which an agent
/// keeps for as long as it runs (10,000 full Service objects would be most of its memory).
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Pool name → labels.
    pub pools: BTreeMap<String, Labels>,
    pub l2_advertisements: Vec<L2Advertisement>,
    /// Node name → labels.
    pub nodes: BTreeMap<String, Labels>,
    /// `namespace/name` → labels.
    pub services: BTreeMap<String, Labels>,
}

impl Inputs {
    pub fn new(objects: &Objects) -> Self {
        Self {
            pools: objects
                .pools
                .iter()
                .map(|p| (p.name_any(), p.labels().clone()))
                .collect(),
            l2_advertisements: objects.l2_advertisements.clone(),
            nodes: objects
                .nodes
                .iter()
                .map(|n| (n.name_any(), n.labels().clone()))
                .collect(),
            services: objects
                .services
                .iter()
                .map(|s| {
                    let ns = s.namespace().unwrap_or_else(|| "default".into());
                    (format!("{ns}/{}", s.name_any()), s.labels().clone())
                })
                .collect(),
        }
    }
}

fn selects_pool(ad: &L2Advertisement, pool: &str, pool_labels: &BTreeMap<String, String>) -> bool {
    let spec = &ad.spec;
    (spec.ip_address_pools.is_empty() && spec.ip_address_pool_selectors.is_empty())
        || spec.ip_address_pools.iter().any(|p| p == pool)
        || spec
            .ip_address_pool_selectors
            .iter()
            .any(|s| selector_matches(s, pool_labels))
}

fn selects_service(ad: &L2Advertisement, labels: Option<&Labels>) -> bool {
    ad.spec.service_selectors.is_empty()
        || labels.is_some_and(|l| {
            ad.spec
                .service_selectors
                .iter()
                .any(|sel| selector_matches(sel, l))
        })
}

fn selects_node(ad: &L2Advertisement, labels: &BTreeMap<String, String>) -> bool {
    ad.spec.node_selectors.is_empty()
        || ad
            .spec
            .node_selectors
            .iter()
            .any(|s| selector_matches(s, labels))
}

fn preference(ad: &L2Advertisement, labels: &BTreeMap<String, String>) -> u32 {
    ad.spec
        .preferred_node_selectors
        .iter()
        .filter(|p| selector_matches(&p.preference, labels))
        .map(|p| u32::try_from(p.weight).unwrap_or(0))
        .sum()
}

/// The owner of each allocated Service (`namespace/name` → node), for every Service that has
/// one.
pub fn owners(
    inputs: &Inputs,
    allocations: &[PlanEntry],
    alive: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let no_labels = Labels::new();
    let mut out = BTreeMap::new();
    for entry in allocations {
        let (Some(pool), Some(first)) = (&entry.pool, entry.ips.first()) else {
            continue;
        };
        let labels = inputs.pools.get(pool).unwrap_or(&no_labels);
        let svc = inputs.services.get(&entry.service);
        let ads: Vec<&L2Advertisement> = inputs
            .l2_advertisements
            .iter()
            .filter(|ad| selects_pool(ad, pool, labels) && selects_service(ad, svc))
            .collect();
        let candidates: Vec<Candidate> = inputs
            .nodes
            .iter()
            .filter(|(name, _)| alive.contains(*name))
            .filter(|(_, labels)| !labels.contains_key(EXCLUDE_LABEL))
            .filter_map(|(name, labels)| {
                let chosen: Vec<_> = ads.iter().filter(|ad| selects_node(ad, labels)).collect();
                (!chosen.is_empty()).then(|| Candidate {
                    node: name.clone(),
                    preference: chosen
                        .iter()
                        .map(|ad| preference(ad, labels))
                        .max()
                        .unwrap_or(0),
                })
            })
            .collect();
        if let Some(owner) = election::owner(*first, &candidates) {
            out.insert(entry.service.clone(), owner);
        }
    }
    out
}

/// What `node` announces.
pub fn announcements(
    node: &str,
    inputs: &Inputs,
    allocations: &[PlanEntry],
    alive: &BTreeSet<String>,
) -> BTreeSet<Announcement> {
    let owners = owners(inputs, allocations, alive);
    let no_labels = Labels::new();
    let node_labels = inputs.nodes.get(node).unwrap_or(&no_labels);
    let mut out = BTreeSet::new();
    for entry in allocations {
        if owners.get(&entry.service).map(String::as_str) != Some(node) {
            continue;
        }
        let pool = entry.pool.as_deref().unwrap_or("");
        let labels = inputs.pools.get(pool).unwrap_or(&no_labels);
        let mut interfaces = BTreeSet::new();
        let mut all = false;
        for ad in inputs
            .l2_advertisements
            .iter()
            .filter(|ad| selects_pool(ad, pool, labels) && selects_node(ad, node_labels))
        {
            if ad.spec.interfaces.is_empty() {
                all = true;
            }
            interfaces.extend(ad.spec.interfaces.iter().cloned());
        }
        if all {
            interfaces.clear();
        }
        for ip in &entry.ips {
            out.insert(Announcement {
                vip: *ip,
                service: entry.service.clone(),
                interfaces: interfaces.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    fn alive(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
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
            for a in announcements(node, &o, &allocs, &up) {
                assert!(seen.insert(a.vip, node).is_none(), "{} twice", a.vip);
            }
        }
        assert_eq!(seen.len(), 20);
        // Spread: with 20 VIPs every node gets some (sha256 ordering).
        let per: BTreeSet<&str> = seen.values().copied().collect();
        assert_eq!(per.len(), 3, "{seen:?}");
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
        let got = announcements("b", &o, &allocs, &up);
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
            announcements(
                "a",
                &o,
                &[alloc("default/web", &["10.0.0.1"])],
                &alive(&["a"])
            )
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
}
