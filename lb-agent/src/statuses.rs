//! MetalLB's status objects in a cluster, one per Service and announcing node:
//! ServiceL2Status (which node announces it at Layer 2, on which interfaces) and
//! ServiceBGPStatus (which BGPPeers this node advertises it to), visible with
//! `kubectl get servicel2statuses,servicebgpstatuses -n metallb-system`; and FRR-K8s'
//! BGPSessionState, one per node and BGP peer (`kubectl get bgpsessionstates`). Each agent keeps
//! exactly one object per Service it announces (labelled with its node) and deletes its
//! others; the objects of other nodes are theirs. A task follows the latest wanted set, so the
//! agent's loop never waits for the API server.
//!
//! Given its Pod, the agent makes it the objects' owner, as MetalLB's speaker does: deleting
//! the Pod deletes them (Kubernetes' garbage collector), and the next Pod on the node takes
//! over the ones still there.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use lb_controller::config::types::{
    BGPSessionState, BGPSessionStateStatus, InterfaceInfo, MetalLBServiceBGPStatus,
    MetalLBServiceL2Status, ServiceBGPStatus, ServiceL2Status,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tokio::sync::watch;
use tracing::warn;

use crate::{bgp::speaker::SessionState, election::Announcement, l2::iface::Interface};

pub const LABEL_NODE: &str = "metallb.io/node";
pub const LABEL_SERVICE_NAME: &str = "metallb.io/service-name";
pub const LABEL_SERVICE_NAMESPACE: &str = "metallb.io/service-namespace";

/// `namespace/name` → the interfaces (Layer 2) or BGPPeers (BGP) this node announces the
/// Service on.
pub type Wanted = BTreeMap<String, BTreeSet<String>>;

/// One of the status kinds an agent keeps, one object per subject (a Service, a BGP session)
/// and node.
pub trait StatusKind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    type Status: PartialEq + Serialize + Send + Sync;
    /// What one object says about its subject.
    type Want: Clone + Debug + PartialEq + Send + Sync + 'static;
    const KIND: &'static str;
    const API_VERSION: &'static str;
    const NODE_LABEL: &'static str;
    /// The generated names' prefix (`l2-`, `bgp-`, `NODE-`).
    fn prefix(node: &str) -> String;
    /// A subject as the objects' labels name it (the wanted set's keys may be spelt otherwise).
    fn key(subject: &str) -> String {
        subject.to_owned()
    }
    /// The labels that name the subject `key`, beside the node's.
    fn subject_labels(key: &str) -> BTreeMap<&'static str, String>;
    /// The subject an object's labels name.
    fn key_of(labels: &BTreeMap<String, String>) -> String;
    fn status(node: &str, key: &str, want: &Self::Want) -> Self::Status;
    fn current(&self) -> Option<&Self::Status>;
}

fn service_labels(key: &str) -> BTreeMap<&'static str, String> {
    let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
    BTreeMap::from([
        (LABEL_SERVICE_NAME, name.to_owned()),
        (LABEL_SERVICE_NAMESPACE, namespace.to_owned()),
    ])
}

fn service_of(labels: &BTreeMap<String, String>) -> String {
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    format!(
        "{}/{}",
        get(LABEL_SERVICE_NAMESPACE),
        get(LABEL_SERVICE_NAME)
    )
}

impl StatusKind for ServiceL2Status {
    type Status = MetalLBServiceL2Status;
    type Want = BTreeSet<String>;
    const KIND: &'static str = "ServiceL2Status";
    const API_VERSION: &'static str = "metallb.io/v1beta1";
    const NODE_LABEL: &'static str = LABEL_NODE;

    fn prefix(_: &str) -> String {
        "l2-".into()
    }

    fn subject_labels(key: &str) -> BTreeMap<&'static str, String> {
        service_labels(key)
    }

    fn key_of(labels: &BTreeMap<String, String>) -> String {
        service_of(labels)
    }

    fn status(node: &str, key: &str, what: &BTreeSet<String>) -> Self::Status {
        let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
        MetalLBServiceL2Status {
            node: node.to_owned(),
            service_name: name.to_owned(),
            service_namespace: namespace.to_owned(),
            interfaces: what
                .iter()
                .map(|i| InterfaceInfo { name: i.clone() })
                .collect(),
        }
    }

    fn current(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

impl StatusKind for ServiceBGPStatus {
    type Status = MetalLBServiceBGPStatus;
    type Want = BTreeSet<String>;
    const KIND: &'static str = "ServiceBGPStatus";
    const API_VERSION: &'static str = "metallb.io/v1beta1";
    const NODE_LABEL: &'static str = LABEL_NODE;

    fn prefix(_: &str) -> String {
        "bgp-".into()
    }

    fn subject_labels(key: &str) -> BTreeMap<&'static str, String> {
        service_labels(key)
    }

    fn key_of(labels: &BTreeMap<String, String>) -> String {
        service_of(labels)
    }

    fn status(node: &str, key: &str, what: &BTreeSet<String>) -> Self::Status {
        let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
        MetalLBServiceBGPStatus {
            node: node.to_owned(),
            service_name: name.to_owned(),
            service_namespace: namespace.to_owned(),
            peers: what.iter().cloned().collect(),
        }
    }

    fn current(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

pub const LABEL_FRR_NODE: &str = "frrk8s.metallb.io/node";
pub const LABEL_FRR_PEER: &str = "frrk8s.metallb.io/peer";
pub const LABEL_FRR_VRF: &str = "frrk8s.metallb.io/vrf";

/// A peer as FRR-K8s writes it in labels and status: an IPv4 address as it is, an IPv6 one
/// fully expanded with `-` for `:` (a label value has no `:`), an interface name as it is.
pub fn peer_label(peer: &str) -> String {
    match peer.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:04x}"))
            .collect::<Vec<_>>()
            .join("-"),
        _ => peer.to_owned(),
    }
}

impl StatusKind for BGPSessionState {
    type Status = BGPSessionStateStatus;
    type Want = SessionState;
    const KIND: &'static str = "BGPSessionState";
    const API_VERSION: &'static str = "frrk8s.metallb.io/v1beta1";
    const NODE_LABEL: &'static str = LABEL_FRR_NODE;

    fn prefix(node: &str) -> String {
        format!("{node}-")
    }

    fn key(subject: &str) -> String {
        peer_label(subject)
    }

    fn subject_labels(key: &str) -> BTreeMap<&'static str, String> {
        // xdplb's sessions are all in the default VRF, which FRR-K8s writes as "".
        BTreeMap::from([
            (LABEL_FRR_PEER, key.to_owned()),
            (LABEL_FRR_VRF, String::new()),
        ])
    }

    fn key_of(labels: &BTreeMap<String, String>) -> String {
        labels.get(LABEL_FRR_PEER).cloned().unwrap_or_default()
    }

    fn status(node: &str, key: &str, want: &SessionState) -> Self::Status {
        BGPSessionStateStatus {
            bgp_status: want.bgp.to_owned(),
            bfd_status: want.bfd.to_owned(),
            node: node.to_owned(),
            peer: key.to_owned(),
            vrf: String::new(),
        }
    }

    fn current(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

/// The agent's Pod, from the downward API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub uid: String,
}

impl Pod {
    pub fn owner(&self) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            ..OwnerReference::default()
        }
    }
}

/// Makes this node's objects of kind `K` match `wanted` (subject → what its object says),
/// owned by `pod` if given.
pub async fn sync<K: StatusKind>(
    api: &Api<K>,
    node: &str,
    pod: Option<&Pod>,
    wanted: &BTreeMap<String, K::Want>,
) -> kube::Result<()> {
    let wanted: BTreeMap<String, &K::Want> = wanted.iter().map(|(k, w)| (K::key(k), w)).collect();
    let owners = pod.map(|p| vec![p.owner()]);
    let mine = api
        .list(&ListParams::default().labels(&format!("{}={node}", K::NODE_LABEL)))
        .await?;
    let mut have: BTreeMap<String, K> = BTreeMap::new();
    for obj in mine.items {
        let key = K::key_of(obj.labels());
        // A second object for the same subject (a crash between create and delete): drop it.
        if have.contains_key(&key) || !wanted.contains_key(&key) {
            api.delete(&obj.name_any(), &DeleteParams::default())
                .await?;
            continue;
        }
        have.insert(key, obj);
    }
    for (key, what) in wanted {
        let want = K::status(node, &key, what);
        let name = match have.get(&key) {
            Some(obj) => {
                // A restarted agent is a new Pod: it adopts what the old one left.
                if let Some(owners) = &owners
                    && obj.meta().owner_references.as_ref() != Some(owners)
                {
                    api.patch(
                        &obj.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"ownerReferences": owners}})),
                    )
                    .await?;
                }
                if obj.current() == Some(&want) {
                    continue;
                }
                obj.name_any()
            }
            None => {
                let mut labels = serde_json::Map::new();
                labels.insert(K::NODE_LABEL.into(), json!(node));
                for (k, v) in K::subject_labels(&key) {
                    labels.insert(k.into(), json!(v));
                }
                let mut fresh: K = serde_json::from_value(json!({
                    "apiVersion": K::API_VERSION,
                    "kind": K::KIND,
                    "metadata": {"generateName": K::prefix(node), "labels": labels},
                    "spec": {},
                }))
                .map_err(kube::Error::SerdeError)?;
                fresh.meta_mut().owner_references = owners.clone();
                api.create(&PostParams::default(), &fresh).await?.name_any()
            }
        };
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": want})),
        )
        .await?;
    }
    Ok(())
}

/// How often the objects are checked even when nothing changed here: someone may have deleted
/// or edited them.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(300);

/// Follows `wanted` until the sender is dropped; a failed sync is retried after a second.
pub fn spawn<K: StatusKind>(
    client: Client,
    namespace: String,
    node: String,
    pod: Option<Pod>,
    mut wanted: watch::Receiver<BTreeMap<String, K::Want>>,
) {
    let api: Api<K> = Api::namespaced(client, &namespace);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = wanted.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(RESYNC) => {}
            }
            loop {
                let current = wanted.borrow_and_update().clone();
                match sync(&api, &node, pod.as_ref(), &current).await {
                    Ok(()) => break,
                    Err(e) => {
                        warn!(kind = K::KIND, error = %e, "cannot update the status objects; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        }
    });
}

/// Everything this agent tells the API server about itself, in a cluster: MetalLB's
/// `nodeAssigned` Events, the ServiceL2Status and ServiceBGPStatus objects and the node's
/// ConfigurationState. Standalone there is no client and every method does nothing. Writes
/// happen on tasks of their own: the agent's loop never waits for the API server.
pub struct Reporter {
    inner: Option<Cluster>,
}

struct Cluster {
    client: Client,
    namespace: String,
    node: String,
    recorder: kube::runtime::events::Recorder,
    l2: watch::Sender<Wanted>,
    bgp: watch::Sender<Wanted>,
    sessions: watch::Sender<BTreeMap<String, SessionState>>,
    config_state: watch::Sender<Option<Vec<String>>>,
    /// The Services advertised over BGP at the last report (Events go to the new ones).
    bgp_assigned: BTreeSet<String>,
}

impl Reporter {
    /// Starts the status tasks; `None` standalone.
    pub fn start(client: Option<&Client>, namespace: &str, node: &str, pod: Option<Pod>) -> Self {
        let inner = client.map(|c| {
            let task = |kind: fn(Client, String, String, Option<Pod>, watch::Receiver<Wanted>)| {
                let (tx, rx) = watch::channel(Wanted::new());
                kind(c.clone(), namespace.into(), node.into(), pod.clone(), rx);
                tx
            };
            let (sessions, rx) = watch::channel(BTreeMap::new());
            spawn::<BGPSessionState>(c.clone(), namespace.into(), node.into(), pod.clone(), rx);
            let (config_state, rx) = watch::channel(None);
            lb_controller::configstate::spawn(
                c.clone(),
                lb_controller::configstate::Reporter::speaker(
                    namespace,
                    node,
                    pod.as_ref().map(Pod::owner),
                ),
                rx,
            );
            Cluster {
                client: c.clone(),
                namespace: namespace.into(),
                node: node.into(),
                recorder: kube::runtime::events::Recorder::new(
                    c.clone(),
                    kube::runtime::events::Reporter {
                        controller: "xdplb-agent".into(),
                        instance: Some(node.into()),
                    },
                ),
                l2: task(spawn::<ServiceL2Status>),
                bgp: task(spawn::<ServiceBGPStatus>),
                sessions,
                config_state,
                bgp_assigned: BTreeSet::new(),
            }
        });
        Self { inner }
    }

    /// The node's ConfigurationState: valid without problems, else invalid with them.
    pub fn configuration(&self, problems: Vec<String>) {
        if let Some(c) = &self.inner {
            lb_controller::configstate::say(&c.config_state, problems);
        }
    }

    /// The Services this node advertises over BGP, each with its peers: the ServiceBGPStatus
    /// objects, and a `nodeAssigned` Event on each Service new in the set.
    pub fn bgp(&mut self, services: &Wanted) {
        let Some(c) = &mut self.inner else {
            return;
        };
        c.bgp.send_if_modified(|w| {
            let changed = w != services;
            w.clone_from(services);
            changed
        });
        let now: BTreeSet<String> = services.keys().cloned().collect();
        let fresh: BTreeSet<String> = now.difference(&c.bgp_assigned).cloned().collect();
        if !fresh.is_empty() {
            tokio::spawn(node_assigned(
                c.recorder.clone(),
                fresh,
                c.node.clone(),
                "bgp",
            ));
        }
        c.bgp_assigned = now;
    }

    /// This node's BGP sessions and their states (peer → state): the BGPSessionState objects.
    pub fn sessions(&self, states: &BTreeMap<String, SessionState>) {
        if let Some(c) = &self.inner {
            c.sessions.send_if_modified(|w| {
                let changed = w != states;
                w.clone_from(states);
                changed
            });
        }
    }

    /// The VIPs this node announces at Layer 2 on `ifaces` (the ServiceL2Status objects: each
    /// Service with its interfaces), and those it just started announcing (`gained`: a
    /// `nodeAssigned` Event on each of their Services).
    pub fn layer2(
        &self,
        announced: &BTreeSet<Announcement>,
        gained: &BTreeSet<Announcement>,
        ifaces: &[Interface],
    ) {
        let Some(c) = &self.inner else {
            return;
        };
        let mut services = Wanted::new();
        for a in announced {
            let names = services.entry(a.service.clone()).or_default();
            if a.interfaces.is_empty() {
                names.extend(ifaces.iter().map(|i| i.name.clone()));
            } else {
                names.extend(a.interfaces.iter().cloned());
            }
        }
        let gained: BTreeSet<String> = gained.iter().map(|a| a.service.clone()).collect();
        if !gained.is_empty() {
            tokio::spawn(node_assigned(
                c.recorder.clone(),
                gained,
                c.node.clone(),
                "layer2",
            ));
        }
        c.l2.send_replace(services);
    }

    /// An `announceFailed` Warning Event on each of `services` (the first few), which this
    /// node should announce and cannot, for the reason `why`.
    pub fn announce_failed(&self, services: BTreeSet<String>, why: &str) {
        let Some(c) = &self.inner else {
            return;
        };
        let services = services.into_iter().take(MAX_FAILED_EVENTS).collect();
        let note = format!("node {:?} cannot announce it: {why}", c.node);
        tokio::spawn(on_services(
            c.recorder.clone(),
            services,
            true,
            "announceFailed",
            note,
        ));
    }

    /// At shutdown: this node announces nothing any more, so its status objects go too.
    pub async fn clear(self) {
        let Some(c) = self.inner else {
            return;
        };
        drop((c.l2, c.bgp, c.sessions));
        clear::<ServiceL2Status>(&c.client, &c.namespace, &c.node).await;
        clear::<ServiceBGPStatus>(&c.client, &c.namespace, &c.node).await;
        clear::<BGPSessionState>(&c.client, &c.namespace, &c.node).await;
    }
}

/// MetalLB's `nodeAssigned` Event on each Service this node started announcing.
async fn node_assigned(
    recorder: kube::runtime::events::Recorder,
    services: BTreeSet<String>,
    node: String,
    protocol: &'static str,
) {
    let note = format!("announcing from node {node:?} with protocol {protocol:?}");
    on_services(recorder, services, false, "nodeAssigned", note).await;
}

/// Services whose addresses this node should announce and cannot, one Warning Event each
/// (MetalLB's reason `announceFailed`); at most [`MAX_FAILED_EVENTS`] per call.
const MAX_FAILED_EVENTS: usize = 20;

/// One Event of `reason` with `note` on each of `services` (`namespace/name`).
async fn on_services(
    recorder: kube::runtime::events::Recorder,
    services: BTreeSet<String>,
    warning: bool,
    reason: &'static str,
    note: String,
) {
    use k8s_openapi::api::core::v1::ObjectReference;
    use kube::runtime::events::{Event, EventType};
    for service in services {
        let Some((namespace, name)) = service.split_once('/') else {
            continue;
        };
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.clone()),
            action: "Announce".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            warn!(%service, error = %e, reason, "cannot record an Event");
        }
    }
}

/// Deletes this node's status objects of kind `K`, giving up after 2 s.
async fn clear<K: StatusKind>(client: &Client, namespace: &str, node: &str) {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let cleared = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        sync(&api, node, None, &BTreeMap::new()),
    )
    .await;
    if !matches!(cleared, Ok(Ok(()))) {
        warn!(
            kind = K::KIND,
            "could not delete this node's status objects"
        );
    }
}

#[cfg(test)]
mod peer_label_tests {
    use super::*;

    #[test]
    fn peers_are_written_as_frr_k8s_writes_them() {
        assert_eq!(peer_label("10.0.0.1"), "10.0.0.1");
        assert_eq!(
            peer_label("fd00::1"),
            "fd00-0000-0000-0000-0000-0000-0000-0001"
        );
        assert_eq!(peer_label("eth1"), "eth1");
    }
}
