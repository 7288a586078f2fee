//! The [`Facts`] of a cluster, read from the API alone (one list per kind): what
//! `kubectl xdplb` needs, with the read-only rights of `deploy/rbac/viewer.yaml`.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod, Service},
        discovery::v1::EndpointSlice,
        events::v1::Event,
    },
    jiff::Timestamp,
};
use kube::{Api, Client, ResourceExt, api::ListParams};
use lb_controller::config::{
    manifest::Objects,
    types::{
        BFDProfile, BGPAdvertisement, BGPSessionState, Community, ConfigurationResult,
        ConfigurationState, IPAddressPool, L2Advertisement, ServiceBGPStatus, ServiceL2Status,
        v1beta2::BGPPeer,
    },
};
use serde::de::DeserializeOwned;

use super::{Announcer, Facts, Session};

/// An `announceFailed` Event older than this no longer counts: the agents raise it again
/// while the problem lasts.
const RECENT_SECONDS: i64 = 600;

async fn all<K>(api: Api<K>) -> kube::Result<Vec<K>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(api.list(&ListParams::default()).await?.items)
}

/// The agents' selector, as deploy/agent.yaml labels their Pods.
const AGENT_PODS: &str = "app.kubernetes.io/name=xdplb,app.kubernetes.io/component=agent";

/// Reads everything `kubectl xdplb` looks at; the metallb.io objects and the agents' status
/// objects in `namespace`.
pub async fn gather(
    client: &Client,
    namespace: &str,
    lb_class: Option<String>,
) -> kube::Result<Facts> {
    let ns = |c: &Client| c.clone();
    let objects = Objects {
        pools: all(Api::<IPAddressPool>::namespaced(ns(client), namespace)).await?,
        l2_advertisements: all(Api::<L2Advertisement>::namespaced(ns(client), namespace)).await?,
        bgp_advertisements: all(Api::<BGPAdvertisement>::namespaced(ns(client), namespace)).await?,
        peers: all(Api::<BGPPeer>::namespaced(ns(client), namespace)).await?,
        bfd_profiles: all(Api::<BFDProfile>::namespaced(ns(client), namespace)).await?,
        communities: all(Api::<Community>::namespaced(ns(client), namespace)).await?,
        namespaces: all(Api::<Namespace>::all(ns(client))).await?,
        nodes: all(Api::<Node>::all(ns(client))).await?,
        secrets: Vec::new(),
        services: all(Api::<Service>::all(ns(client))).await?,
        endpoint_slices: all(Api::<EndpointSlice>::all(ns(client))).await?,
    };
    let announcers = |statuses: Vec<(String, String, Vec<String>)>| {
        let mut out: BTreeMap<String, Vec<Announcer>> = BTreeMap::new();
        for (service, node, on) in statuses {
            out.entry(service).or_default().push(Announcer { node, on });
        }
        out
    };
    let l2 = all(Api::<ServiceL2Status>::namespaced(ns(client), namespace))
        .await?
        .into_iter()
        .filter_map(|o| {
            let s = o.status?;
            Some((
                format!("{}/{}", s.service_namespace, s.service_name),
                s.node,
                s.interfaces.into_iter().map(|i| i.name).collect(),
            ))
        })
        .collect();
    let bgp = all(Api::<ServiceBGPStatus>::namespaced(ns(client), namespace))
        .await?
        .into_iter()
        .filter_map(|o| {
            let s = o.status?;
            Some((
                format!("{}/{}", s.service_namespace, s.service_name),
                s.node,
                s.peers,
            ))
        })
        .collect();
    let sessions = all(Api::<BGPSessionState>::namespaced(ns(client), namespace))
        .await?
        .into_iter()
        .filter_map(|o| {
            let s = o.status?;
            Some(Session {
                node: s.node,
                peer: s.peer,
                bgp: s.bgp_status,
                bfd: s.bfd_status,
            })
        })
        .collect();
    let pods = Api::<Pod>::namespaced(ns(client), namespace)
        .list(&ListParams::default().labels(AGENT_PODS))
        .await?
        .items;
    let ready: BTreeSet<String> = pods
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    // No agent Pods at all: agents run some other way (or not at all); say nothing of them.
    let ready_agents = (!pods.is_empty()).then_some(ready);
    let now = Timestamp::now().as_second();
    let mut announce_failed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in all(Api::<Event>::all(ns(client))).await? {
        let last = e
            .series
            .as_ref()
            .map(|s| s.last_observed_time.0.as_second())
            .or(e.event_time.as_ref().map(|t| t.0.as_second()))
            .unwrap_or(0);
        if e.reason.as_deref() != Some("announceFailed") || now - last > RECENT_SECONDS {
            continue;
        }
        let regarding = e.regarding.clone().unwrap_or_default();
        let key = format!(
            "{}/{}",
            regarding.namespace.unwrap_or_default(),
            regarding.name.unwrap_or_default()
        );
        announce_failed
            .entry(key)
            .or_default()
            .extend(e.note.clone());
    }
    let config_problems = Api::<ConfigurationState>::namespaced(ns(client), namespace)
        .get_opt("controller")
        .await?
        .and_then(|c| c.status)
        .filter(|s| s.result == Some(ConfigurationResult::Invalid))
        .map(|s| s.error_summary.lines().map(str::to_owned).collect())
        .unwrap_or_default();
    Ok(Facts {
        objects,
        lb_class,
        l2: Some(announcers(l2)),
        bgp: Some(announcers(bgp)),
        sessions,
        ready_agents,
        announce_failed,
        config_problems,
    })
}

/// The names of the agents' Pods that are not ready, with their nodes.
pub fn unready(facts: &Facts) -> Vec<String> {
    let ready = facts.ready_agents.clone().unwrap_or_default();
    facts
        .objects
        .nodes
        .iter()
        .map(|n| n.name_any())
        .filter(|n| !ready.contains(n))
        .collect()
}
