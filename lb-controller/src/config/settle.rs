//! One rule for a configuration that fails validation, used by the agent's two sources and
//! the cluster controller: keep the last good configuration, else act on the valid part.
//!
//! "The configuration" is the metallb.io objects ([`config_part`]): IPAddressPools,
//! advertisements, BGPPeers, BFDProfiles and Communities. Services, Nodes, Namespaces, Secrets
//! and EndpointSlices are facts about the cluster, not configuration: they are followed even
//! while the configuration is refused.
use std::collections::BTreeSet;

use super::{Problem, manifest::Objects, validate};

/// How [`LastGood::settle`] made a reading something to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The reading passed validation and is the last good one now.
    Valid,
    /// The reading was refused (why): the last good configuration objects stand in for its own.
    LastGood(String),
    /// The reading was refused (why) and no last good configuration fits it: its valid part is
    /// what is left, the objects named by errors (and what depends on them) left out.
    ValidPart(String),
}

impl Settled {
    /// Why the reading was refused, unless it was not.
    pub fn refused(&self) -> Option<&str> {
        match self {
            Settled::Valid => None,
            Settled::LastGood(why) | Settled::ValidPart(why) => Some(why),
        }
    }

    pub fn into_refused(self) -> Option<String> {
        match self {
            Settled::Valid => None,
            Settled::LastGood(why) | Settled::ValidPart(why) => Some(why),
        }
    }
}

/// What stays when a reading is refused after a good one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnRefusal {
    /// Everything: the reading is dropped (`Err`), the caller keeps what it has.
    LastReading,
    /// The configuration objects: the rest of the reading is followed.
    LastConfigObjects,
}

/// The configuration objects of the last reading that passed validation.
pub struct LastGood {
    on_refusal: OnRefusal,
    objects: Option<Objects>,
}

impl LastGood {
    pub fn new(on_refusal: OnRefusal) -> Self {
        Self {
            on_refusal,
            objects: None,
        }
    }

    /// Makes `objects` something to act on. A valid reading stays as it is and becomes the
    /// last good one. A refused one after a good one is dropped (`Err`) or, with
    /// [`OnRefusal::LastConfigObjects`], gets the last good configuration objects in place of
    /// its own. Without a good one yet, or if those no longer pass, the valid part of what
    /// there is is used. `Err` too when nothing valid is left to act on.
    pub fn settle(
        &mut self,
        objects: &mut Objects,
        load_errors: &[Problem],
    ) -> Result<Settled, String> {
        let report = validate::validate(objects);
        let first = load_errors.iter().chain(&report.errors).next();
        self.settle_checked(objects, first)
    }

    /// [`LastGood::settle`] for a caller that has validated `objects` already: `first` is the
    /// first problem it found, `None` when they passed.
    pub fn settle_checked(
        &mut self,
        objects: &mut Objects,
        first: Option<&Problem>,
    ) -> Result<Settled, String> {
        let Some(why) = first else {
            self.objects = Some(config_part(objects));
            return Ok(Settled::Valid);
        };
        let why = why.to_string();
        if let Some(good) = &self.objects {
            if self.on_refusal == OnRefusal::LastReading {
                return Err(why);
            }
            // Only the configuration objects are swapped: the Services, Nodes and
            // EndpointSlices (most of a large reading) are not copied.
            let own = config_part(objects);
            put_config(objects, good);
            if validate::validate(objects).errors.is_empty() {
                return Ok(Settled::LastGood(why));
            }
            put_config(objects, &own);
        }
        let (part, left_out) = validate::valid_part(objects).ok_or_else(|| why.clone())?;
        *objects = part;
        let left: Vec<String> = left_out
            .iter()
            .map(|p| format!("{}/{}", p.kind, p.name))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if left.is_empty() {
            return Ok(Settled::ValidPart(why));
        }
        Ok(Settled::ValidPart(format!(
            "{why} (left out until fixed: {})",
            left.join(", ")
        )))
    }
}

/// The configuration objects of `o`, nothing else.
pub fn config_part(o: &Objects) -> Objects {
    let mut part = Objects::default();
    put_config(&mut part, o);
    part
}

fn put_config(into: &mut Objects, from: &Objects) {
    into.pools.clone_from(&from.pools);
    into.l2_advertisements.clone_from(&from.l2_advertisements);
    into.bgp_advertisements.clone_from(&from.bgp_advertisements);
    into.peers.clone_from(&from.peers);
    into.bfd_profiles.clone_from(&from.bfd_profiles);
    into.communities.clone_from(&from.communities);
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;
    use kube::ResourceExt;

    use super::*;
    use crate::config::types::{IPAddressPool, IPAddressPoolSpec, L2Advertisement};

    fn pool(name: &str, cidr: &str) -> IPAddressPool {
        IPAddressPool::new(
            name,
            IPAddressPoolSpec {
                addresses: vec![cidr.into()],
                ..IPAddressPoolSpec::default()
            },
        )
    }

    fn service(name: &str) -> Service {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap_or_default()
    }

    fn names<T: ResourceExt>(v: &[T]) -> Vec<String> {
        v.iter().map(|o| o.name_any()).collect()
    }

    #[test]
    fn a_refused_configuration_keeps_the_last_good_objects_and_follows_the_rest() {
        let mut good = LastGood::new(OnRefusal::LastConfigObjects);
        let mut first = Objects {
            pools: vec![pool("lab", "10.0.0.0/24")],
            l2_advertisements: vec![L2Advertisement::new("l2", Default::default())],
            services: vec![service("web")],
            ..Objects::default()
        };
        assert_eq!(good.settle(&mut first, &[]), Ok(Settled::Valid));

        // The pool is edited into something invalid while a Service is added.
        let mut second = Objects {
            pools: vec![pool("lab", "10.0.0.0/33")],
            services: vec![service("web"), service("api")],
            ..first.clone()
        };
        let why = good
            .settle(&mut second, &[])
            .ok()
            .and_then(Settled::into_refused)
            .unwrap_or_default();
        assert!(
            why.contains("IPAddressPool/lab") && why.contains("spec.addresses"),
            "{why}"
        );
        assert_eq!(second.pools[0].spec.addresses, ["10.0.0.0/24"]);
        assert_eq!(names(&second.services), ["web", "api"]);

        // Fixed: the reading is taken as it is again.
        let mut third = Objects {
            pools: vec![pool("lab", "10.0.1.0/24")],
            ..second.clone()
        };
        assert_eq!(good.settle(&mut third, &[]), Ok(Settled::Valid));
        assert_eq!(third.pools[0].spec.addresses, ["10.0.1.0/24"]);
    }

    #[test]
    fn with_nothing_good_yet_the_valid_part_is_used() {
        let mut good = LastGood::new(OnRefusal::LastConfigObjects);
        let mut objects = Objects {
            pools: vec![pool("lab", "10.0.0.0/24"), pool("bad", "10.0.0.0/33")],
            services: vec![service("web")],
            ..Objects::default()
        };
        let why = good
            .settle(&mut objects, &[])
            .ok()
            .and_then(Settled::into_refused)
            .unwrap_or_default();
        assert!(
            why.contains("left out until fixed: IPAddressPool/bad"),
            "{why}"
        );
        assert_eq!(names(&objects.pools), ["lab"]);
        // What was settled this way is not remembered as good: a later invalid reading
        // still starts from its own valid part.
        let mut again = Objects {
            pools: vec![pool("other", "10.9.0.0/24"), pool("bad", "10.0.0.0/33")],
            ..Objects::default()
        };
        assert!(
            good.settle(&mut again, &[])
                .is_ok_and(|w| w.refused().is_some())
        );
        assert_eq!(names(&again.pools), ["other"]);
    }

    #[test]
    fn standalone_a_refused_reading_is_dropped_whole_once_one_was_good() {
        let mut good = LastGood::new(OnRefusal::LastReading);
        let mut bad = Objects {
            pools: vec![pool("lab", "10.0.0.0/24"), pool("bad", "10.0.0.0/33")],
            ..Objects::default()
        };
        assert!(
            good.settle(&mut bad, &[])
                .is_ok_and(|w| w.refused().is_some())
        );
        let mut fine = Objects {
            pools: vec![pool("lab", "10.0.0.0/24")],
            ..Objects::default()
        };
        assert_eq!(good.settle(&mut fine, &[]), Ok(Settled::Valid));
        let mut broken = Objects {
            pools: vec![pool("lab", "10.0.0.0/33")],
            ..Objects::default()
        };
        let err = good.settle(&mut broken, &[]).err().unwrap_or_default();
        assert!(err.contains("IPAddressPool/lab"), "{err}");
    }

    #[test]
    fn a_load_error_refuses_the_reading() {
        let mut good = LastGood::new(OnRefusal::LastConfigObjects);
        let mut first = Objects {
            pools: vec![pool("lab", "10.0.0.0/24")],
            ..Objects::default()
        };
        assert_eq!(good.settle(&mut first, &[]), Ok(Settled::Valid));
        let broken = Problem::new("", "pools.yaml", "", "not YAML");
        let mut second = Objects::default();
        let why = good
            .settle(&mut second, &[broken])
            .ok()
            .and_then(Settled::into_refused)
            .unwrap_or_default();
        assert!(why.contains("not YAML"), "{why}");
        assert_eq!(names(&second.pools), ["lab"]);
    }

    #[test]
    fn when_the_last_good_objects_no_longer_pass_the_readings_own_valid_part_is_used() {
        use crate::config::types::v1beta2::BGPPeer;
        let peer: BGPPeer = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "router"},
            "spec": {"myASN": 64512, "peerASN": 64513, "peerAddress": "10.0.0.1",
                     "passwordSecret": {"name": "bgp-auth"}}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let secret: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "bgp-auth"},
                "type": "kubernetes.io/basic-auth",
                "stringData": {"password": "s3cret"}
            }))
            .unwrap_or_default();
        let mut good = LastGood::new(OnRefusal::LastConfigObjects);
        let mut first = Objects {
            pools: vec![pool("old", "10.0.0.0/24")],
            peers: vec![peer],
            secrets: vec![secret],
            ..Objects::default()
        };
        assert_eq!(good.settle(&mut first, &[]), Ok(Settled::Valid));

        // The Secret goes (so the last good BGPPeer no longer passes) while the pools are
        // edited, one of them badly: the reading's own valid part is what is left.
        let mut second = Objects {
            pools: vec![pool("new", "10.1.0.0/24"), pool("bad", "10.1.0.0/33")],
            secrets: Vec::new(),
            ..first.clone()
        };
        let settled = good.settle(&mut second, &[]);
        assert!(matches!(settled, Ok(Settled::ValidPart(_))), "{settled:?}");
        assert_eq!(names(&second.pools), ["new"]);
        assert!(second.peers.is_empty());
    }
}
