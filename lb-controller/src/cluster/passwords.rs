//! Keeps the agents' copy of the BGP passwords ([`crate::config::passwords`]) in step with
//! the BGPPeers and their Secrets: created when first needed, replaced when it differs, never
//! written when it is already right (so a quiet cluster sees no writes).
use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, Client, ResourceExt, api::PostParams};

pub use crate::config::passwords::SECRET;

/// Writes `want` into the Secret unless `current` (the namespace's copy, as read) holds it.
/// True when a write was made.
pub async fn sync(
    client: &Client,
    namespace: &str,
    current: Option<&Secret>,
    want: BTreeMap<String, ByteString>,
) -> Result<bool, kube::Error> {
    let have = current.and_then(|s| s.data.clone()).unwrap_or_default();
    // Nothing to hand over and nothing handed: an installation without BGP passwords gets no
    // Secret it does not need.
    if have == want && (current.is_some() || want.is_empty()) {
        return Ok(false);
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.into()),
            namespace: Some(namespace.into()),
            resource_version: current.and_then(|s| s.resource_version()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(want),
        ..Secret::default()
    };
    match current {
        None => match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {}
            // Created a moment ago, by this pass's predecessor or the other replica: the
            // watch brings it, and the next pass compares with it.
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(false),
            Err(e) => return Err(e),
        },
        Some(_) => {
            api.replace(SECRET, &PostParams::default(), &secret).await?;
        }
    }
    Ok(true)
}
