//! "Why is my IP not answered?": the chain from a Service to the node that answers for its
//! addresses, walked over what the API (or a standalone directory) says, naming the first
//! broken link in plain words. Pure: [`cluster`] and [`dir`] gather the [`Facts`], the
//! `kubectl-xdplb` binary prints the answers.
//!
//! The rules are the ones the controller and the agents run, called here, not restated: the
//! allocator ([`lb_controller::plan`]), the advertisements' coverage
//! ([`lb_controller::cluster::coverage`]), and the Layer 2 candidates' filters
//! ([`crate::inputs`], [`crate::election`]).
pub mod cluster;
pub mod dir;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use lb_controller::{
    cluster::coverage,
    config::{
        l2mode::{self, L2Mode},
        manifest::Objects,
        selector::Advertisement,
        types::L2Advertisement,
    },
    ipam::{allocator::PoolUsage, service},
    plan::{self, PlanEntry},
};
use serde::Serialize;

use crate::{
    election,
    inputs::{EXCLUDE_LABEL, Inputs},
    membership::Members,
};

/// One node's announcement of a Service: the interfaces (Layer 2) or peers (BGP).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Announcer {
    pub node: String,
    pub on: Vec<String>,
}

/// One BGP session of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Session {
    pub node: String,
    pub peer: String,
    pub bgp: String,
    pub bfd: String,
}

/// What is known, from the API or a directory.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub objects: Objects,
    pub lb_class: Option<String>,
    /// `namespace/name` → who announces it at Layer 2 (ServiceL2Status); `None`: not known
    /// (standalone agents report to nobody).
    pub l2: Option<BTreeMap<String, Vec<Announcer>>>,
    /// `namespace/name` → who advertises it over BGP (ServiceBGPStatus).
    pub bgp: Option<BTreeMap<String, Vec<Announcer>>>,
    pub sessions: Vec<Session>,
    /// The nodes whose agent is running and ready; `None`: not known.
    pub ready_agents: Option<BTreeSet<String>>,
    /// `namespace/name` → the notes of its `announceFailed` Events.
    pub announce_failed: BTreeMap<String, Vec<String>>,
    /// What the controller's ConfigurationState says is wrong (empty: valid or not known).
    pub config_problems: Vec<String>,
}

/// The links of the chain, first to last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Link {
    NotFound,
    NotLoadBalancer,
    OtherClass,
    Pending,
    NotWritten,
    NoAdvertisement,
    NoEligibleNode,
    NotAnnounced,
    AnnounceFailed,
    BgpSessionsDown,
    /// Nothing broken: announced.
    Announced,
}

/// The answer for one Service.
#[derive(Clone, Debug, Serialize)]
pub struct Why {
    pub service: String,
    pub link: Link,
    /// The answer in one sentence.
    pub says: String,
    /// What backs it (each node's reason, the configuration's problems, ...).
    pub details: Vec<String>,
}

impl Why {
    fn new(service: &str, link: Link, says: impl Into<String>) -> Self {
        Self {
            service: service.to_owned(),
            link,
            says: says.into(),
            details: Vec::new(),
        }
    }

    fn with(mut self, details: Vec<String>) -> Self {
        self.details = details;
        self
    }
}

fn ips(list: &[std::net::IpAddr]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Walks the chain for the Service `key` (`namespace/name`).
pub fn why(facts: &Facts, key: &str) -> Why {
    Planned::new(facts).why(key)
}

/// What every answer reads, computed once however many Services are asked about: the
/// allocator's plan, the planners' inputs, the Services by key, the uncovered Services.
struct Planned<'a> {
    facts: &'a Facts,
    entries: Vec<PlanEntry>,
    usage: BTreeMap<String, PoolUsage>,
    /// `namespace/name` → index into `entries`.
    planned: BTreeMap<String, usize>,
    services: BTreeMap<String, &'a Service>,
    inputs: Inputs,
    uncovered: BTreeMap<String, String>,
}

impl<'a> Planned<'a> {
    fn new(facts: &'a Facts) -> Self {
        let o = &facts.objects;
        let (entries, usage) =
            plan::plan_with_usage(o, facts.lb_class.as_deref(), &BTreeMap::new());
        let planned = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.service.clone(), i))
            .collect();
        let services = o
            .services
            .iter()
            .map(|s| {
                let ns = s.namespace().unwrap_or_else(|| "default".into());
                (format!("{ns}/{}", s.name_any()), s)
            })
            .collect();
        Self {
            facts,
            uncovered: coverage::uncovered(o, &entries),
            entries,
            usage,
            planned,
            services,
            inputs: Inputs::new(o),
        }
    }

    /// The L2Advertisements that cover `entry`'s pool and Service.
    fn l2_advertisements(&self, entry: &PlanEntry) -> Vec<&L2Advertisement> {
        let Some((pool, labels)) = self.inputs.pool_of(entry) else {
            return Vec::new();
        };
        let svc = self.inputs.services.get(&entry.service);
        self.inputs
            .l2_advertisements
            .iter()
            .filter(|ad| {
                ad.spec.selects_pool(pool, labels)
                    && ad.spec.selects_service(svc.map(|s| &s.labels))
            })
            .collect()
    }

    /// Whether a BGPAdvertisement covers `entry`'s pool and Service.
    fn over_bgp(&self, entry: &PlanEntry) -> bool {
        let Some((pool, labels)) = self.inputs.pool_of(entry) else {
            return false;
        };
        let svc = self.inputs.services.get(&entry.service);
        self.facts.objects.bgp_advertisements.iter().any(|ad| {
            ad.spec.selects_pool(pool, labels) && ad.spec.selects_service(svc.map(|s| &s.labels))
        })
    }

    fn why(&self, key: &str) -> Why {
        let facts = self.facts;
        let Some(svc) = self.services.get(key).copied() else {
            return Why::new(key, Link::NotFound, format!("there is no Service {key}"));
        };
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() != Some("LoadBalancer") {
            return Why::new(
                key,
                Link::NotLoadBalancer,
                format!(
                    "{key} is of type {}, not LoadBalancer: nothing gives it an external address",
                    spec.type_.as_deref().unwrap_or("ClusterIP")
                ),
            );
        }
        if !service::is_ours(svc, facts.lb_class.as_deref()) {
            let theirs = spec.load_balancer_class.as_deref().unwrap_or("(none)");
            let ours = facts
                .lb_class
                .as_deref()
                .unwrap_or("(none: Services without a class)");
            return Why::new(
                key,
                Link::OtherClass,
                format!(
                    "{key} has loadBalancerClass {theirs}; xdplb serves {ours}: another load balancer is meant to serve it"
                ),
            );
        }
        let Some(entry) = self.planned.get(key).map(|i| &self.entries[*i]) else {
            return Why::new(key, Link::Pending, format!("{key} is not planned"));
        };
        if let Some(reason) = &entry.pending {
            let mut w = Why::new(
                key,
                Link::Pending,
                format!("{key} has no address: {reason}"),
            );
            if !facts.config_problems.is_empty() {
                w.details
                    .push("the configuration is refused (the last valid one is in force):".into());
                w.details.extend(facts.config_problems.iter().cloned());
            }
            return w;
        }
        let written = service::status_ips(svc);
        if written.is_empty() {
            return Why::new(
                key,
                Link::NotWritten,
                format!(
                    "{key} would get {} from IPAddressPool/{}, but no controller has written it to the Service's status: is lb-controller running and leading?",
                    ips(&entry.ips),
                    entry.pool.as_deref().unwrap_or("?")
                ),
            );
        }
        if let Some(note) = self.uncovered.get(key) {
            return Why::new(key, Link::NoAdvertisement, format!("{key}: {note}"));
        }
        let mut answers = Vec::new();
        if !self.l2_advertisements(entry).is_empty() {
            answers.push(self.layer2(key, entry));
        }
        if self.over_bgp(entry) {
            answers.push(over_bgp(facts, key, entry));
        }
        // One protocol that works is an answer; else the first broken link of the first.
        answers
            .iter()
            .find(|w| w.link == Link::Announced)
            .or(answers.first())
            .cloned()
            .unwrap_or_else(|| {
                Why::new(
                    key,
                    Link::NoAdvertisement,
                    format!("{key}: no advertisement covers it"),
                )
            })
    }

    /// Why each node is not a Layer 2 candidate for the Service (none: it is one).
    fn l2_reasons(&self, key: &str, entry: &PlanEntry) -> BTreeMap<String, Option<String>> {
        let (facts, inputs) = (self.facts, &self.inputs);
        let svc = inputs.services.get(key);
        let ads = self.l2_advertisements(entry);
        let local = svc.and_then(|s| s.local_nodes.as_ref());
        inputs
            .nodes
            .iter()
            .map(|(name, labels)| {
                let reason = if !ads.iter().any(|ad| ad.spec.selects_node(labels)) {
                    let names: Vec<String> = ads.iter().map(|a| a.name_any()).collect();
                    Some(format!(
                        "not selected by the nodeSelectors of L2Advertisement {}",
                        names.join(", ")
                    ))
                } else if labels.contains_key(EXCLUDE_LABEL) {
                    Some(format!("labelled {EXCLUDE_LABEL}"))
                } else if inputs.unavailable.contains(name) {
                    Some("not Ready, or its network is unavailable".into())
                } else if local.is_some_and(|nodes| !nodes.contains(name)) {
                    Some("externalTrafficPolicy is Local and it holds no ready endpoint".into())
                } else if facts
                    .ready_agents
                    .as_ref()
                    .is_some_and(|ready| !ready.contains(name))
                {
                    Some("its agent is not running or not ready".into())
                } else {
                    None
                };
                (name.clone(), reason)
            })
            .collect()
    }

    fn layer2(&self, key: &str, entry: &PlanEntry) -> Why {
        let facts = self.facts;
        let failed = facts.announce_failed.get(key).cloned().unwrap_or_default();
        // The elected node's own word (its announceFailed Events), announcing or not.
        let cannot_announce = |failed| {
            Why::new(
                key,
                Link::AnnounceFailed,
                format!(
                    "{key}: the node elected for {} cannot announce it",
                    ips(&entry.ips)
                ),
            )
            .with(failed)
        };
        // What the agents say comes first: an announcing node is the answer.
        if let Some(announcers) = facts
            .l2
            .as_ref()
            .and_then(|k| k.get(key))
            .filter(|a| !a.is_empty())
        {
            if !failed.is_empty() {
                return cannot_announce(failed);
            }
            // An announcer whose agent is not ready (hung, crash-looping) stops renewing its
            // data path's lease: the VIP goes quiet until another node takes over.
            let unready: Vec<&Announcer> = announcers
                .iter()
                .filter(|a| {
                    facts
                        .ready_agents
                        .as_ref()
                        .is_some_and(|ready| !ready.contains(&a.node))
                })
                .collect();
            if unready.len() == announcers.len() {
                let nodes: Vec<&str> = unready.iter().map(|a| a.node.as_str()).collect();
                return Why::new(
                    key,
                    Link::AnnounceFailed,
                    format!(
                        "{key}: {} is announced by {}, whose agent is not ready: its data path stops answering once its lease lapses, until another node takes over",
                        ips(&entry.ips),
                        nodes.join(", ")
                    ),
                );
            }
            let who: Vec<String> = announcers
                .iter()
                .map(|a| format!("{} on {}", a.node, a.on.join(", ")))
                .collect();
            return Why::new(
                key,
                Link::Announced,
                format!(
                    "{key}: {} is answered at Layer 2 by {}",
                    ips(&entry.ips),
                    who.join("; ")
                ),
            );
        }
        let reasons = self.l2_reasons(key, entry);
        let candidates: BTreeSet<String> = reasons
            .iter()
            .filter(|(_, r)| r.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        let details: Vec<String> = reasons
            .iter()
            .filter_map(|(n, r)| r.as_ref().map(|r| format!("node {n}: {r}")))
            .collect();
        if candidates.is_empty() {
            return Why::new(
                key,
                Link::NoEligibleNode,
                format!(
                    "{key} has {} but no node may announce it at Layer 2",
                    ips(&entry.ips)
                ),
            )
            .with(details);
        }
        if facts.l2.is_none() {
            // Standalone: nobody reports; say who should, as the agents elect.
            let members = Members::from(candidates.clone());
            let owner = election::owners(&self.inputs, std::slice::from_ref(entry), &members)
                .remove(key)
                .unwrap_or_else(|| candidates.iter().cloned().collect::<Vec<_>>().join(", "));
            return Why::new(
                key,
                Link::Announced,
                format!(
                    "{key}: {} should be answered at Layer 2 by {owner} (when every candidate's agent runs; `lb-agent maps` on it shows what it answers)",
                    ips(&entry.ips)
                ),
            )
            .with(details);
        }
        if !failed.is_empty() {
            return cannot_announce(failed);
        }
        Why::new(
            key,
            Link::NotAnnounced,
            format!(
                "{key}: nodes {} may announce {}, but no agent says it does (no ServiceL2Status): are the agents running?",
                candidates.iter().cloned().collect::<Vec<_>>().join(", "),
                ips(&entry.ips)
            ),
        )
        .with(details)
    }
}

fn over_bgp(facts: &Facts, key: &str, entry: &PlanEntry) -> Why {
    let Some(known) = &facts.bgp else {
        return Why::new(
            key,
            Link::Announced,
            format!(
                "{key}: {} is advertised over BGP by the nodes the BGPAdvertisements and BGPPeers select (standalone agents report to nobody: `lb-agent` logs and metallb_bgp_session_up say whether the sessions are up)",
                ips(&entry.ips)
            ),
        );
    };
    let Some(advertisers) = known.get(key).filter(|a| !a.is_empty()) else {
        return Why::new(
            key,
            Link::NotAnnounced,
            format!(
                "{key}: no node advertises {} over BGP (no ServiceBGPStatus): no BGPPeer selects a node that a BGPAdvertisement selects, or the agents are not running",
                ips(&entry.ips)
            ),
        );
    };
    let mut up = Vec::new();
    let mut down = Vec::new();
    for a in advertisers {
        for peer in &a.on {
            let session = facts.sessions.iter().find(|s| {
                s.node == a.node
                    && facts
                        .objects
                        .peers
                        .iter()
                        .find(|p| p.name_any() == *peer)
                        .is_some_and(|p| {
                            let addr = p
                                .spec
                                .peer_address
                                .clone()
                                .or_else(|| p.spec.interface.clone())
                                .unwrap_or_default();
                            crate::statuses::peer_label(&addr) == s.peer
                        })
            });
            let state = session.map_or("unknown", |s| s.bgp.as_str());
            let line = format!("node {} to BGPPeer {peer}: {state}", a.node);
            if state == "Established" {
                up.push(line);
            } else {
                down.push(line);
            }
        }
    }
    if up.is_empty() {
        Why::new(
            key,
            Link::BgpSessionsDown,
            format!(
                "{key}: {} is advertised, but no BGP session that carries it is Established",
                ips(&entry.ips)
            ),
        )
        .with(down)
    } else {
        Why::new(
            key,
            Link::Announced,
            format!("{key}: {} is advertised over BGP", ips(&entry.ips)),
        )
        .with(up.into_iter().chain(down).collect())
    }
}

/// One pool's usage.
#[derive(Clone, Debug, Serialize)]
pub struct PoolRow {
    pub pool: String,
    pub assigned: u128,
    pub available: u128,
}

/// One LoadBalancer Service we serve.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceRow {
    pub service: String,
    pub ips: Vec<String>,
    /// `layer2`, `active-active`, `bgp`, or several joined with `+`.
    pub mode: String,
    /// `node (interfaces)` / `node -> peers`.
    pub announced_by: Vec<String>,
    pub link: Link,
}

/// What `kubectl xdplb status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub pools: Vec<PoolRow>,
    pub services: Vec<ServiceRow>,
    pub sessions: Vec<Session>,
    /// Nodes without a ready agent (`None`: not known).
    pub agents_not_ready: Option<Vec<String>>,
}

/// The whole picture: pools, Services with who announces them, sessions, agents.
pub fn status(facts: &Facts) -> Status {
    let p = Planned::new(facts);
    let pools = p
        .usage
        .iter()
        .map(|(pool, u)| PoolRow {
            pool: pool.clone(),
            assigned: u.in_use,
            available: u.capacity.saturating_sub(u.in_use),
        })
        .collect();
    // Standalone, nobody reports: the owners the election picks when every agent runs.
    let expected = match &facts.l2 {
        Some(_) => BTreeMap::new(),
        None => election::owners(
            &p.inputs,
            &p.entries,
            &Members::from(p.inputs.nodes.keys().cloned().collect::<BTreeSet<_>>()),
        ),
    };
    let services = p
        .entries
        .iter()
        .map(|e| {
            let w = p.why(&e.service);
            let mut modes = Vec::new();
            let ads = p.l2_advertisements(e);
            if !ads.is_empty() {
                let svc = p.inputs.services.get(&e.service);
                let mode = l2mode::effective(svc.and_then(|s| s.l2_mode), ads.iter().copied());
                modes.push(match mode {
                    L2Mode::ActiveActive => "active-active",
                    L2Mode::SingleOwner => "layer2",
                });
            }
            if p.over_bgp(e) {
                modes.push("bgp");
            }
            let mut announced_by = Vec::new();
            for a in facts.l2.iter().filter_map(|m| m.get(&e.service)).flatten() {
                announced_by.push(format!("{} ({})", a.node, a.on.join(",")));
            }
            for a in facts.bgp.iter().filter_map(|m| m.get(&e.service)).flatten() {
                announced_by.push(format!("{} -> {}", a.node, a.on.join(",")));
            }
            if let Some(owner) = expected.get(&e.service) {
                announced_by.push(format!("{owner} (expected)"));
            }
            ServiceRow {
                service: e.service.clone(),
                ips: e.ips.iter().map(ToString::to_string).collect(),
                mode: if modes.is_empty() {
                    "-".into()
                } else {
                    modes.join("+")
                },
                announced_by,
                link: w.link,
            }
        })
        .collect();
    Status {
        pools,
        services,
        sessions: facts.sessions.clone(),
        agents_not_ready: facts.ready_agents.as_ref().map(|_| cluster::unready(facts)),
    }
}
