//! Where the agent's configuration comes from, read off its main loop: a directory of
//! manifests ([`dir`]) or the API server ([`cluster`]). Both produce the same [`Config`].
//!
//! Reading a large configuration takes long (10,000 Services parse in a few hundred
//! milliseconds), longer than the failure timeout: done on the main loop it would silence the
//! heartbeats and get this node declared dead. So each source reads on a task of its own and
//! hands each result to the main loop.
//!
//! A reading whose configuration is invalid is settled by
//! [`lb_controller::config::settle`]: refused whole from a directory, as the standalone
//! controller refuses it (one operator edits the directory: a broken edit changes nothing);
//! in a cluster, as the controller there does, the last good configuration objects stay in
//! place of the reading's, and the rest (Services, Nodes, EndpointSlices) is followed. An
//! agent that starts while the configuration is invalid has no last good one: it acts on the
//! valid part.
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use lb_controller::plan::PlanEntry;

use crate::bgp::policy::Plan;
use crate::inputs::Inputs;

pub mod cluster;
pub mod dir;

pub use dir::watch;

/// A configuration that passed validation.
#[derive(Clone)]
pub struct Config {
    pub inputs: Inputs,
    pub allocations: Vec<PlanEntry>,
    /// Heartbeat targets: every other Node's name and InternalIP.
    pub peers: Vec<(String, SocketAddr)>,
    /// The membership secret, when the source carries it (in a cluster, MetalLB's Secret);
    /// standalone agents read theirs from a file.
    pub secret: Option<Vec<u8>>,
    /// This node's BGP sessions and what each advertises.
    pub bgp: Plan,
    /// The addresses among them this node must accept traffic for.
    pub bgp_ips: BTreeSet<IpAddr>,
    /// `namespace/name` of each Service this node advertises → the BGPPeers (the
    /// ServiceBGPStatus objects in a cluster, `metallb_speaker_announced` everywhere).
    pub bgp_services: crate::statuses::Wanted,
    /// Why the reading's own configuration objects were refused (the last good ones, or the
    /// valid part, stand in for them).
    pub refused: Option<String>,
    /// Services left out of `allocations` because no one pool holds their addresses, one
    /// line each.
    pub outside_pools: Vec<String>,
}

fn internal_ip(node: &Node) -> Option<IpAddr> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    addrs
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .and_then(|a| a.address.parse().ok())
}

/// Heartbeat targets: the InternalIP, at `port`, of every Node but `me` that may announce a
/// Layer 2 address ([`crate::election::l2_candidates`]); none when `me` may not (it has no
/// use for who is alive).
pub(crate) fn peers(
    nodes: &[Node],
    inputs: &Inputs,
    me: &str,
    port: u16,
) -> Vec<(String, SocketAddr)> {
    let members = crate::election::l2_candidates(inputs);
    if !members.contains(me) {
        return Vec::new();
    }
    nodes
        .iter()
        .filter(|n| n.name_any() != me && members.contains(&n.name_any()))
        .filter_map(|n| Some((n.name_any(), SocketAddr::new(internal_ip(n)?, port))))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use kube::ResourceExt;
    use lb_controller::config::{
        arbitrary::configuration,
        manifest::{self, Loaded, Strictness},
        settle::{LastGood, OnRefusal},
    };
    use proptest::prelude::*;

    use super::cluster::{Options, build};

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// What an agent makes of any configuration: settled as a cluster agent settles it,
        /// the addresses from the Services' status checked against the pools, the BGP plan,
        /// and the Layer 2 election of every node.
        #[test]
        fn any_configuration_never_panics_an_agent(text in configuration()) {
            let mut loaded = Loaded::default();
            if manifest::add_text(Path::new("fuzz.yaml"), &text, Strictness::Lenient, &mut loaded).is_ok() {
                let mut good = LastGood::new(OnRefusal::LastConfigObjects);
                let objects = &mut loaded.objects;
                if good.settle(objects, &[]).is_ok() {
                    let mut nodes: Vec<String> = objects.nodes.iter().map(|n| n.name_any()).collect();
                    nodes.push("a".into());
                    let alive: crate::membership::Members = nodes.iter().cloned().collect::<std::collections::BTreeSet<_>>().into();
                    for node in &nodes {
                        let opts = Options {
                            namespace: "metallb-system".into(),
                            node: node.clone(),
                            port: 7946,
                            lb_class: None,
                        };
                        let c = build(objects, &opts);
                        let _ = crate::election::layer2(node, &c.inputs, &c.allocations, &alive);
                    }
                }
            }
        }
    }
}
