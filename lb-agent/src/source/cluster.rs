//! The in-cluster configuration source: the same [`Config`] as the standalone one, from the API
//! server. kube-rs reflectors follow the metallb.io kinds and two Secrets by name in the agent's
//! namespace (the membership key, and the BGP passwords the controller hands over: see
//! [`passwords`]) and Services, Namespaces, Nodes and EndpointSlices cluster-wide (relisting by
//! themselves after a broken watch or a 410 Gone); any change wakes a rebuild, changes within a
//! few milliseconds taken together.
//!
//! [`build`] is pure: the controller's validation, each Service's addresses from its
//! `status.loadBalancer.ingress` (what the controller wrote) with the pool that holds them, the
//! election inputs, the peers' InternalIPs, and MetalLB's membership secret (Secret
//! `memberlist`, key `secretkey`).
use crate::bgp::policy::{BgpInputs, advertised_ips, plan, service_peers};
use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{Api, Client, ResourceExt};
use lb_controller::{
    config::{
        manifest::Objects,
        passwords,
        settle::{LastGood, OnRefusal},
    },
    ipam::service::{is_ours, status_ips},
    plan::{PlanEntry, announceable},
    sources::{SecretScope, Sources, watch as reflect},
};
use tokio::sync::{Notify, mpsc};

use super::{Config, peers};
use crate::heap::{relocate, trim_heap};
use crate::inputs::Inputs;

/// MetalLB's membership Secret and its key.
pub use lb_controller::config::memberlist::{KEY as MEMBERLIST_KEY, SECRET as MEMBERLIST_SECRET};

/// Changes within this window are read together.
const SETTLE: Duration = Duration::from_millis(20);

/// Who this agent is in the cluster.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the metallb.io objects and the membership Secret live.
    pub namespace: String,
    pub node: String,
    /// The heartbeat port on every node.
    pub port: u16,
    /// Serve Services of this `spec.loadBalancerClass` (`None`: those without one).
    pub lb_class: Option<String>,
}

/// A Service's addresses as its status has them; [`announceable`] then finds their pool.
fn allocation(svc: &Service) -> Option<PlanEntry> {
    let ips = status_ips(svc);
    if ips.is_empty() {
        return None;
    }
    let ns = svc.namespace().unwrap_or_else(|| "default".into());
    Some(PlanEntry {
        service: format!("{ns}/{}", svc.name_any()),
        ips,
        pool: None,
        pending: None,
    })
}

/// The agent's configuration from a snapshot of the cluster, valid as a
/// [`LastGood`] settled it.
pub fn build(objects: &Objects, opts: &Options) -> Config {
    let inputs = Inputs::new(objects);
    let (allocations, outside_pools) = announceable(
        objects
            .services
            .iter()
            .filter(|s| is_ours(s, opts.lb_class.as_deref()))
            .filter_map(allocation)
            .collect(),
        &inputs.spaces,
    );
    let peers = peers(&objects.nodes, &inputs, &opts.node, opts.port);
    let secret = objects
        .secrets
        .iter()
        .find(|s| s.name_any() == MEMBERLIST_SECRET)
        .and_then(|s| s.data.as_ref()?.get(MEMBERLIST_KEY))
        .map(|b| b.0.clone());
    let bgp = plan(&opts.node, &BgpInputs::new(objects), &inputs, &allocations);
    Config {
        bgp_ips: advertised_ips(&bgp, &allocations),
        bgp_services: service_peers(&bgp, &allocations),
        inputs,
        allocations,
        peers,
        secret,
        bgp,
        refused: None,
        outside_pools,
    }
}

/// Starts the reflectors: the receiver gets a reading once every cache holds its first list,
/// and one more after every change.
pub fn watch(client: Client, opts: Options) -> mpsc::Receiver<Result<Arc<Config>, String>> {
    let changed = Arc::new(Notify::new());
    let (sources, mut tasks) = Sources::start(
        &client,
        &opts.namespace,
        SecretScope::Named(&[MEMBERLIST_SECRET, passwords::SECRET]),
        changed.clone(),
    );
    let slices = reflect(
        Api::<EndpointSlice>::all(client),
        changed.clone(),
        &mut tasks,
    );
    for task in tasks {
        tokio::spawn(task);
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        sources.wait_ready().await;
        let _ = slices.wait_until_ready().await;
        let mut good = LastGood::new(OnRefusal::LastConfigObjects);
        loop {
            let mut objects = sources.objects();
            objects.secrets = passwords::unbundle(std::mem::take(&mut objects.secrets));
            objects.endpoint_slices = slices.state().iter().map(|s| (**s).clone()).collect();
            let result = good
                .settle(&mut objects, &[])
                .map(|settled| Config {
                    refused: settled.into_refused(),
                    ..build(&objects, &opts)
                })
                .map(relocate);
            drop(objects);
            trim_heap();
            if tx.send(result.map(Arc::new)).await.is_err() {
                return;
            }
            changed.notified().await;
            tokio::time::sleep(SETTLE).await;
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn service(name: &str, ingress: &[&str]) -> Service {
        let ingress: Vec<_> = ingress.iter().map(|ip| json!({"ip": ip})).collect();
        parse(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": ingress}},
        }))
    }

    #[test]
    fn a_status_naming_an_address_outside_the_pools_is_not_announced() {
        let objects = Objects {
            pools: vec![parse(
                json!({"metadata": {"name": "p"}, "spec": {"addresses": ["10.0.0.0/24"]}}),
            )],
            l2_advertisements: vec![parse(json!({"metadata": {"name": "l2"}, "spec": {}}))],
            nodes: vec![
                parse(json!({"metadata": {"name": "a"}})),
                parse(json!({"metadata": {"name": "b"}})),
            ],
            services: vec![
                service("gateway", &["10.0.0.5", "192.168.1.1"]),
                service("web", &["10.0.0.6"]),
            ],
            ..Objects::default()
        };
        let opts = Options {
            namespace: "metallb-system".into(),
            node: "a".into(),
            port: 7946,
            lb_class: None,
        };
        let c = build(&objects, &opts);
        let entries: Vec<String> = c.allocations.iter().map(ToString::to_string).collect();
        assert_eq!(entries, vec!["default/web: 10.0.0.6 (pool p)"]);
        assert_eq!(
            c.outside_pools,
            vec!["Service default/gateway: 192.168.1.1 in no IPAddressPool; not announced"]
        );
        let alive: crate::membership::Members =
            std::collections::BTreeSet::from(["a".to_owned(), "b".to_owned()]).into();
        let announced: Vec<String> = ["a", "b"]
            .iter()
            .flat_map(|n| {
                crate::election::layer2(n, &c.inputs, &c.allocations, &alive).announcements
            })
            .map(|a| a.vip.to_string())
            .collect();
        assert_eq!(announced, vec!["10.0.0.6"]);
    }
}
