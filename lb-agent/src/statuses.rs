//! MetalLB's status objects in a cluster, one per Service and announcing node:
//! ServiceL2Status (which node announces it at Layer 2, on which interfaces) and
//! ServiceBGPStatus (which BGPPeers this node advertises it to), visible with
//! `kubectl get servicel2statuses,servicebgpstatuses -n metallb-system`. Each agent keeps
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
    InterfaceInfo, MetalLBServiceBGPStatus, MetalLBServiceL2Status, ServiceBGPStatus,
    ServiceL2Status,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tokio::sync::watch;
use tracing::warn;

pub const LABEL_NODE: &str = "metallb.io/node";
pub const LABEL_SERVICE_NAME: &str = "metallb.io/service-name";
pub const LABEL_SERVICE_NAMESPACE: &str = "metallb.io/service-namespace";

/// `namespace/name` → the interfaces (Layer 2) or BGPPeers (BGP) this node announces the
/// Service on.
pub type Wanted = BTreeMap<String, BTreeSet<String>>;

/// One of MetalLB's per-Service status kinds.
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
    const KIND: &'static str;
    /// The generated names' prefix (`l2-`, `bgp-`).
    const PREFIX: &'static str;
    fn status(node: &str, namespace: &str, name: &str, what: &BTreeSet<String>) -> Self::Status;
    fn current(&self) -> Option<&Self::Status>;
}

impl StatusKind for ServiceL2Status {
    type Status = MetalLBServiceL2Status;
    const KIND: &'static str = "ServiceL2Status";
    const PREFIX: &'static str = "l2-";

    fn status(node: &str, namespace: &str, name: &str, what: &BTreeSet<String>) -> Self::Status {
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
    const KIND: &'static str = "ServiceBGPStatus";
    const PREFIX: &'static str = "bgp-";

    fn status(node: &str, namespace: &str, name: &str, what: &BTreeSet<String>) -> Self::Status {
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

/// Makes this node's objects of kind `K` match `wanted`, owned by `pod` if given.
pub async fn sync<K: StatusKind>(
    api: &Api<K>,
    node: &str,
    pod: Option<&Pod>,
    wanted: &Wanted,
) -> kube::Result<()> {
    let owners = pod.map(|p| vec![p.owner()]);
    let mine = api
        .list(&ListParams::default().labels(&format!("{LABEL_NODE}={node}")))
        .await?;
    let mut have: BTreeMap<String, K> = BTreeMap::new();
    for obj in mine.items {
        let labels = obj.labels();
        let key = format!(
            "{}/{}",
            labels
                .get(LABEL_SERVICE_NAMESPACE)
                .cloned()
                .unwrap_or_default(),
            labels.get(LABEL_SERVICE_NAME).cloned().unwrap_or_default()
        );
        // A second object for the same Service (a crash between create and delete): drop it.
        if have.contains_key(&key) || !wanted.contains_key(&key) {
            api.delete(&obj.name_any(), &DeleteParams::default())
                .await?;
            continue;
        }
        have.insert(key, obj);
    }
    for (service, what) in wanted {
        let (namespace, svc) = service.split_once('/').unwrap_or(("default", service));
        let want = K::status(node, namespace, svc, what);
        let name = match have.get(service) {
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
                let mut fresh: K = serde_json::from_value(json!({
                    "apiVersion": "metallb.io/v1beta1",
                    "kind": K::KIND,
                    "metadata": {
                        "generateName": K::PREFIX,
                        "labels": {
                            LABEL_NODE: node,
                            LABEL_SERVICE_NAME: svc,
                            LABEL_SERVICE_NAMESPACE: namespace,
                        },
                    },
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
    mut wanted: watch::Receiver<Wanted>,
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
