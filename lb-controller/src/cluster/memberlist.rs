//! The agents' membership key. MetalLB's controller creates the `memberlist` Secret when it is
//! missing, so a fresh installation needs no manual step; this one does the same, and never
//! touches an existing Secret (a MetalLB installation's key keeps working).
use std::{collections::BTreeMap, io::Read};

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, Client, ResourceExt, api::PostParams};

pub use crate::config::memberlist::{KEY, SECRET};
/// Bytes of key material, as many as MetalLB generates.
const KEY_BYTES: usize = 128;

/// What [`ensure`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Present,
    Created,
}

/// Creates the Secret in `namespace` unless `existing` (the namespace's Secrets) holds it.
/// Another replica creating it first is not an error.
pub async fn ensure(
    client: &Client,
    namespace: &str,
    existing: &[Secret],
) -> anyhow::Result<Outcome> {
    if existing.iter().any(|s| s.name_any() == SECRET) {
        return Ok(Outcome::Present);
    }
    let mut key = vec![0u8; KEY_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| anyhow::anyhow!("reading /dev/urandom for the memberlist key: {e}"))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(KEY.to_owned(), ByteString(key))])),
        ..Secret::default()
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Outcome::Created),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Outcome::Present),
        Err(e) => Err(anyhow::anyhow!("creating Secret {namespace}/{SECRET}: {e}")),
    }
}
