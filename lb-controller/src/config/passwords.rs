//! The BGP passwords the agents need, handed over by the controller so that the agents read
//! two Secrets by name instead of every Secret in the namespace (their RBAC names exactly
//! those two: this one and [`super::memberlist::SECRET`]).
//!
//! The controller, which validates BGPPeers against their `passwordSecret`s anyway, keeps the
//! Secret [`SECRET`] holding the `password` of each basic-auth Secret a BGPPeer refers to, one
//! data key per Secret (`namespace.name`: a namespace has no dots, so the first one splits).
//! An agent turns it back into those Secrets ([`unbundle`]) before validating, so its
//! configuration reads exactly as the controller's.
use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::ResourceExt;

use super::manifest::Objects;

/// The Secret the controller writes and the agents read.
pub const SECRET: &str = "xdplb-bgp-passwords";
/// The Secret type MetalLB requires of a `passwordSecret`, and its key.
pub const BASIC_AUTH: &str = "kubernetes.io/basic-auth";
pub const PASSWORD: &str = "password";

/// The data of [`SECRET`] for `objects`: the password of every usable Secret a BGPPeer refers
/// to, and nothing else (a Secret nobody refers to stays where it is).
pub fn bundle(objects: &Objects) -> BTreeMap<String, ByteString> {
    let mut out = BTreeMap::new();
    for peer in &objects.peers {
        let Some(r) = peer.spec.password_secret.as_ref() else {
            continue;
        };
        let Some(name) = r.name.as_deref() else {
            continue;
        };
        let ns = r
            .namespace
            .clone()
            .or_else(|| peer.namespace())
            .unwrap_or_else(|| "default".into());
        let found = objects.secrets.iter().find(|s| {
            s.name_any() == name && s.namespace().unwrap_or_else(|| "default".into()) == ns
        });
        if let Some(password) = found
            .filter(|s| s.type_.as_deref() == Some(BASIC_AUTH))
            .and_then(password_of)
        {
            out.insert(format!("{ns}.{name}"), ByteString(password));
        }
    }
    out
}

/// A Secret's `password`, from `data` or (as written in a manifest) `stringData`: the one
/// reading of it, for validation, the agents' policy and the copy handed to them.
pub fn password_of(s: &Secret) -> Option<Vec<u8>> {
    s.data
        .as_ref()
        .and_then(|d| d.get(PASSWORD))
        .map(|b| b.0.clone())
        .or_else(|| {
            s.string_data
                .as_ref()
                .and_then(|d| d.get(PASSWORD))
                .map(|v| v.clone().into_bytes())
        })
}

/// The Secrets an agent reads, with [`SECRET`] replaced by the basic-auth Secrets it carries.
pub fn unbundle(secrets: Vec<Secret>) -> Vec<Secret> {
    let mut out = Vec::with_capacity(secrets.len());
    for s in secrets {
        if s.name_any() != SECRET {
            out.push(s);
            continue;
        }
        for (key, password) in s.data.into_iter().flatten() {
            let Some((ns, name)) = key.split_once('.') else {
                continue;
            };
            out.push(Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(ns.to_owned()),
                    ..ObjectMeta::default()
                },
                type_: Some(BASIC_AUTH.into()),
                data: Some(BTreeMap::from([(PASSWORD.to_owned(), password)])),
                ..Secret::default()
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::manifest;

    const YAML: &str = r#"
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: tor, namespace: metallb-system}
spec: {myASN: 64512, peerASN: 65000, peerAddress: 10.0.0.1, passwordSecret: {name: tor.pw}}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: inline, namespace: metallb-system}
spec: {myASN: 64512, peerASN: 65000, peerAddress: 10.0.0.2, password: plain}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: wrong-type, namespace: metallb-system}
spec: {myASN: 64512, peerASN: 65000, peerAddress: 10.0.0.3, passwordSecret: {name: opaque}}
---
apiVersion: v1
kind: Secret
metadata: {name: tor.pw, namespace: metallb-system}
type: kubernetes.io/basic-auth
stringData: {password: s3cret}
---
apiVersion: v1
kind: Secret
metadata: {name: opaque, namespace: metallb-system}
type: Opaque
stringData: {password: nope}
---
apiVersion: v1
kind: Secret
metadata: {name: unrelated, namespace: metallb-system}
type: kubernetes.io/basic-auth
stringData: {password: not-for-agents}
"#;

    #[test]
    fn only_referenced_basic_auth_passwords_are_handed_over_and_come_back_as_secrets() {
        let mut loaded = manifest::Loaded::default();
        manifest::add_text(
            std::path::Path::new("p.yaml"),
            YAML,
            manifest::Strictness::Strict,
            &mut loaded,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let data = bundle(&loaded.objects);
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(keys, ["metallb-system.tor.pw"]);
        let handed = Secret {
            metadata: ObjectMeta {
                name: Some(SECRET.into()),
                namespace: Some("metallb-system".into()),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..Secret::default()
        };
        let memberlist = Secret {
            metadata: ObjectMeta {
                name: Some(super::super::memberlist::SECRET.into()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        let back = unbundle(vec![memberlist, handed]);
        let names: Vec<String> = back.iter().map(|s| s.name_any()).collect();
        assert_eq!(names, ["memberlist", "tor.pw"]);
        assert_eq!(back[1].namespace().as_deref(), Some("metallb-system"));
        assert_eq!(back[1].type_.as_deref(), Some(BASIC_AUTH));
        assert_eq!(password_of(&back[1]), Some(b"s3cret".to_vec()));
    }
}
