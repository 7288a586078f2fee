//! MetalLB's ConfigurationState objects: whether a component's configuration is valid, one
//! object per component in its namespace (`controller`, and `speaker-NODE` for each agent),
//! so `kubectl get configurationstates -n metallb-system` answers "is my configuration
//! accepted, and where not?" without reading logs. The controller and the agents write them
//! the way MetalLB does: result `Valid` or `Invalid`, the problems in `errorSummary`, and one
//! condition (`configReconcilerValid`).
//!
//! A task follows the latest state, so the caller never waits for the API server; it writes
//! only what changed, and looks again every few minutes in case the object was deleted.
use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::sync::watch;
use tracing::warn;

use crate::config::types::{ConfigurationResult, ConfigurationState, ConfigurationStateStatus};

/// The controller's object.
pub const CONTROLLER: &str = "controller";
pub const LABEL_COMPONENT: &str = "metallb.io/component-type";
pub const LABEL_NODE: &str = "metallb.io/node-name";
/// MetalLB's condition type, and its reasons.
pub const CONDITION: &str = "configReconcilerValid";
const REASON_OK: &str = "Reconciled";
const REASON_INVALID: &str = "ConfigurationError";
const RESYNC: Duration = Duration::from_secs(300);

/// An agent's object name.
pub fn speaker(node: &str) -> String {
    format!("speaker-{node}")
}

/// The status for a configuration with these problems (none: valid), as of `now`.
pub fn status(problems: &[String], now: Timestamp) -> ConfigurationStateStatus {
    let valid = problems.is_empty();
    let summary = problems.join("\n");
    ConfigurationStateStatus {
        result: Some(if valid {
            ConfigurationResult::Valid
        } else {
            ConfigurationResult::Invalid
        }),
        error_summary: summary.clone(),
        conditions: vec![Condition {
            type_: CONDITION.into(),
            status: if valid { "True" } else { "False" }.into(),
            reason: if valid { REASON_OK } else { REASON_INVALID }.into(),
            message: summary,
            last_transition_time: Time(now),
            observed_generation: None,
        }],
    }
}

/// Where and as what one component reports.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The component's Pod: the object goes with it.
    pub owner: Option<OwnerReference>,
}

impl Reporter {
    pub fn controller(namespace: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: CONTROLLER.into(),
            labels: [(LABEL_COMPONENT.to_owned(), "controller".to_owned())].into(),
            owner: None,
        }
    }

    pub fn speaker(namespace: &str, node: &str, owner: Option<OwnerReference>) -> Self {
        Self {
            namespace: namespace.into(),
            name: speaker(node),
            labels: [
                (LABEL_COMPONENT.to_owned(), "speaker".to_owned()),
                (LABEL_NODE.to_owned(), node.to_owned()),
            ]
            .into(),
            owner,
        }
    }
}

/// Makes the object say `problems` (creating it, and taking it over, as needed).
pub async fn write(
    api: &Api<ConfigurationState>,
    who: &Reporter,
    problems: &[String],
) -> kube::Result<()> {
    let owners = who.owner.clone().map(|o| vec![o]);
    match api.get_opt(&who.name).await? {
        None => {
            let mut fresh = ConfigurationState::new(&who.name, Default::default());
            fresh.metadata.labels = Some(who.labels.clone());
            fresh.metadata.owner_references = owners;
            api.create(&PostParams::default(), &fresh).await?;
        }
        Some(have) => {
            let labels_ok = who
                .labels
                .iter()
                .all(|(k, v)| have.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
            let owner_ok = owners.is_none() || have.metadata.owner_references == owners;
            if !labels_ok || !owner_ok {
                let mut meta = json!({"labels": who.labels});
                if let Some(owners) = &owners {
                    meta["ownerReferences"] = json!(owners);
                }
                api.patch(
                    &who.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": meta})),
                )
                .await?;
            }
            let current = have.status.as_ref();
            let same = current.is_some_and(|s| {
                s.error_summary == problems.join("\n")
                    && s.result
                        == Some(if problems.is_empty() {
                            ConfigurationResult::Valid
                        } else {
                            ConfigurationResult::Invalid
                        })
            });
            if same {
                return Ok(());
            }
        }
    }
    let mut status = json!(status(problems, Timestamp::now()));
    // A merge patch keeps what it does not mention: an empty summary must be removed.
    if problems.is_empty() {
        status["errorSummary"] = serde_json::Value::Null;
    }
    api.patch_status(
        &who.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

/// Sets what the object must say, waking the task only if that changed.
pub fn say(state: &watch::Sender<Option<Vec<String>>>, problems: Vec<String>) {
    state.send_if_modified(|said| {
        let changed = said.as_ref() != Some(&problems);
        if changed {
            *said = Some(problems);
        }
        changed
    });
}

/// Follows `state` (`None`: nothing read yet) until the sender is dropped; a failed write is
/// retried after a second.
pub fn spawn(client: Client, who: Reporter, mut state: watch::Receiver<Option<Vec<String>>>) {
    let api: Api<ConfigurationState> = Api::namespaced(client, &who.namespace);
    tokio::spawn(async move {
        loop {
            let problems = state.borrow_and_update().clone();
            if let Some(problems) = problems {
                while let Err(e) = write(&api, &who, &problems).await {
                    warn!(name = %who.name, error = %e, "cannot update the ConfigurationState; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if state.has_changed().unwrap_or(false) {
                        break;
                    }
                }
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_says_valid_or_lists_the_problems() {
        let now = Timestamp::UNIX_EPOCH;
        let ok = status(&[], now);
        assert_eq!(ok.result, Some(ConfigurationResult::Valid));
        assert_eq!(ok.error_summary, "");
        assert_eq!(ok.conditions[0].status, "True");
        assert_eq!(ok.conditions[0].reason, "Reconciled");
        let bad = status(&["IPAddressPool/a: x".into(), "BGPPeer/b: y".into()], now);
        assert_eq!(bad.result, Some(ConfigurationResult::Invalid));
        assert_eq!(bad.error_summary, "IPAddressPool/a: x\nBGPPeer/b: y");
        assert_eq!(bad.conditions[0].type_, "configReconcilerValid");
        assert_eq!(bad.conditions[0].status, "False");
        assert_eq!(bad.conditions[0].reason, "ConfigurationError");
        // The serialized form is MetalLB's.
        let v = serde_json::to_value(&bad).unwrap_or_default();
        assert_eq!(v["result"], "Invalid");
        assert_eq!(v["errorSummary"], "IPAddressPool/a: x\nBGPPeer/b: y");
        assert_eq!(
            v["conditions"][0]["lastTransitionTime"],
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn objects_without_spec_read_as_metallb_writes_them() {
        let obj: Result<ConfigurationState, _> = serde_json::from_value(json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "ConfigurationState",
            "metadata": {"name": "controller", "namespace": "metallb-system"},
            "status": {"result": "Valid", "conditions": [{"type": "configReconcilerValid",
                "status": "True", "reason": "Reconciled", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}));
        let obj = obj.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            obj.status.and_then(|s| s.result),
            Some(ConfigurationResult::Valid)
        );
    }
}
