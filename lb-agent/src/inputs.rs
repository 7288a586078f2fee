//! The projection of a configuration snapshot that this node's planners read: the Layer 2
//! election ([`crate::election`]) and the BGP planner ([`crate::bgp::policy`]). A small part of
//! the objects (labels, advertisements, what each Service asks for), which an agent keeps for
//! as long as it runs: 10,000 full Service objects would be most of its memory. Both sources
//! ([`crate::source`]) build it.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{core::v1::Node, discovery::v1::EndpointSlice};
use kube::ResourceExt;
use lb_controller::{
    config::{
        l2mode::{self, L2Mode},
        manifest::Objects,
        preempt,
        types::L2Advertisement,
    },
    ipam::pool_for::Pools,
    plan::{PlanEntry, pool_defs},
};

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The label that keeps a node out of every election.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

pub use lb_controller::config::selector::Labels;

/// What the planners read of the configuration: the pools' and nodes' labels, the
/// L2Advertisements and what each Service asks for.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Pool name → labels.
    pub pools: BTreeMap<String, Labels>,
    /// The pools' addresses, to check what is announced against.
    pub spaces: Pools,
    pub l2_advertisements: Vec<L2Advertisement>,
    /// Node name → labels.
    pub nodes: BTreeMap<String, Labels>,
    /// Nodes whose `NetworkUnavailable` condition is true (as in MetalLB) or whose `Ready`
    /// condition is not: never candidates.
    pub unavailable: BTreeSet<String>,
    /// `namespace/name` → what the election needs of the Service.
    pub services: BTreeMap<String, ServiceFacts>,
    /// Services whose annotations could not be read, one line each naming the Service and the
    /// annotation: they keep the default (the agent logs these).
    pub problems: Vec<String>,
}

/// What the election needs of a Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceFacts {
    pub labels: Labels,
    /// The Layer 2 mode its `xdplb.io/l2-mode` annotation asks for, when valid.
    pub l2_mode: Option<L2Mode>,
    /// Whether its `xdplb.io/l2-preempt` annotation asks for MetalLB's revertive rule
    /// (`true`) or not, when valid.
    pub preempt: Option<bool>,
    /// `externalTrafficPolicy: Local`: the nodes that hold a ready endpoint (ready, or serving
    /// and not terminating, as MetalLB counts them). `None`: `Cluster`, any node may announce.
    pub local_nodes: Option<BTreeSet<String>>,
}

/// The nodes holding a usable endpoint of each Service (`namespace/name`), from its
/// EndpointSlices (label `kubernetes.io/service-name`).
fn endpoint_nodes(slices: &[EndpointSlice]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for slice in slices {
        let Some(service) = slice.labels().get(SERVICE_NAME_LABEL) else {
            continue;
        };
        let ns = slice.namespace().unwrap_or_else(|| "default".into());
        let nodes = out.entry(format!("{ns}/{service}")).or_default();
        for ep in slice.endpoints.iter().flatten() {
            let c = ep.conditions.as_ref();
            // The API says an unknown readiness is to be taken as ready.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(false);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            if let (true, Some(node)) = (ready || (serving && !terminating), &ep.node_name) {
                nodes.insert(node.clone());
            }
        }
    }
    out
}

/// A node that cannot carry traffic: its network is unavailable (MetalLB's rule), or it
/// reports a `Ready` condition that is not true (the kubelet stopped, say). A node without
/// conditions (a standalone host) is usable.
fn unusable(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                (c.type_ == "NetworkUnavailable" && c.status == "True")
                    || (c.type_ == "Ready" && c.status != "True")
            })
        })
}

impl Inputs {
    /// The labels of the pool that holds all of `entry`'s addresses, if it is the pool the
    /// entry names. The sources already left out any other entry; the planners ask again,
    /// so that no path to an announcement skips the check.
    pub fn pool_of(&self, entry: &PlanEntry) -> Option<(&str, &Labels)> {
        let pool = self.spaces.pool_for(&entry.ips)?;
        if entry.pool.as_deref() != Some(pool) {
            return None;
        }
        Some((pool, self.pools.get(pool)?))
    }

    pub fn new(objects: &Objects) -> Self {
        let mut inputs = Self {
            pools: objects
                .pools
                .iter()
                .map(|p| (p.name_any(), p.labels().clone()))
                .collect(),
            spaces: Pools::new(&pool_defs(&objects.pools)),
            l2_advertisements: objects.l2_advertisements.clone(),
            nodes: objects
                .nodes
                .iter()
                .map(|n| (n.name_any(), n.labels().clone()))
                .collect(),
            unavailable: objects
                .nodes
                .iter()
                .filter(|n| unusable(n))
                .map(ResourceExt::name_any)
                .collect(),
            services: BTreeMap::new(),
            problems: Vec::new(),
        };
        let mut endpoints = endpoint_nodes(&objects.endpoint_slices);
        for s in &objects.services {
            let ns = s.namespace().unwrap_or_else(|| "default".into());
            let key = format!("{ns}/{}", s.name_any());
            let local = s
                .spec
                .as_ref()
                .and_then(|spec| spec.external_traffic_policy.as_deref())
                == Some("Local");
            let l2_mode = match l2mode::annotated(s.annotations()) {
                None => None,
                Some(Ok(mode)) => Some(mode),
                Some(Err(e)) => {
                    inputs.problems.push(format!(
                        "Service {key}: metadata.annotations[{}]: {e}; using the advertisements' mode",
                        l2mode::ANNOTATION
                    ));
                    None
                }
            };
            let preempt = match preempt::annotated(s.annotations()) {
                None => None,
                Some(Ok(p)) => Some(p),
                Some(Err(e)) => {
                    inputs.problems.push(format!(
                        "Service {key}: metadata.annotations[{}]: {e}; using the advertisements' setting",
                        preempt::ANNOTATION
                    ));
                    None
                }
            };
            let facts = ServiceFacts {
                labels: s.labels().clone(),
                l2_mode,
                preempt,
                local_nodes: local.then(|| endpoints.remove(&key).unwrap_or_default()),
            };
            inputs.services.insert(key, facts);
        }
        inputs
    }
}
