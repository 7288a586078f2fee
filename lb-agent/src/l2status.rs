//! MetalLB's ServiceL2Status objects in a cluster: which node announces each Service, visible
//! with `kubectl get servicel2statuses -n metallb-system`. Each agent keeps exactly one object
//! per Service it announces (labelled with its node) and deletes its others; the objects of
//! other nodes are theirs. A task follows the latest wanted set, so the agent's loop never
//! waits for the API server.
use std::collections::{BTreeMap, BTreeSet};

use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use lb_controller::config::types::{InterfaceInfo, MetalLBServiceL2Status, ServiceL2Status};
use serde_json::json;
use tokio::sync::watch;
use tracing::warn;

pub const LABEL_NODE: &str = "metallb.io/node";
pub const LABEL_SERVICE_NAME: &str = "metallb.io/service-name";
pub const LABEL_SERVICE_NAMESPACE: &str = "metallb.io/service-namespace";

/// `namespace/name` → the interfaces this node announces the Service on.
pub type Wanted = BTreeMap<String, BTreeSet<String>>;

fn status(node: &str, service: &str, interfaces: &BTreeSet<String>) -> MetalLBServiceL2Status {
    let (namespace, name) = service.split_once('/').unwrap_or(("default", service));
    MetalLBServiceL2Status {
        node: node.to_owned(),
        service_name: name.to_owned(),
        service_namespace: namespace.to_owned(),
        interfaces: interfaces
            .iter()
            .map(|i| InterfaceInfo { name: i.clone() })
            .collect(),
    }
}

/// Makes this node's objects match `wanted`.
pub async fn sync(api: &Api<ServiceL2Status>, node: &str, wanted: &Wanted) -> kube::Result<()> {
    let mine = api
        .list(&ListParams::default().labels(&format!("{LABEL_NODE}={node}")))
        .await?;
    let mut have: BTreeMap<String, ServiceL2Status> = BTreeMap::new();
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
    for (service, interfaces) in wanted {
        let want = status(node, service, interfaces);
        let name = match have.get(service) {
            Some(obj) if obj.status.as_ref() == Some(&want) => continue,
            Some(obj) => obj.name_any(),
            None => {
                let (namespace, svc) = service.split_once('/').unwrap_or(("default", service));
                let fresh: ServiceL2Status = serde_json::from_value(json!({
                    "apiVersion": "metallb.io/v1beta1",
                    "kind": "ServiceL2Status",
                    "metadata": {
                        "generateName": "l2-",
                        "labels": {
                            LABEL_NODE: node,
                            LABEL_SERVICE_NAME: svc,
                            LABEL_SERVICE_NAMESPACE: namespace,
                        },
                    },
                    "spec": {},
                }))
                .map_err(kube::Error::SerdeError)?;
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

/// Follows `wanted` until the sender is dropped; a failed sync is retried after a second.
pub fn spawn(client: Client, namespace: String, node: String, mut wanted: watch::Receiver<Wanted>) {
    let api: Api<ServiceL2Status> = Api::namespaced(client, &namespace);
    tokio::spawn(async move {
        while wanted.changed().await.is_ok() {
            loop {
                let current = wanted.borrow_and_update().clone();
                match sync(&api, &node, &current).await {
                    Ok(()) => break,
                    Err(e) => {
                        warn!(error = %e, "cannot update the ServiceL2Status objects; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        }
    });
}
