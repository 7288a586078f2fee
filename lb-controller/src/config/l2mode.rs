//! Which L2Advertisements apply to a Service, and whether its addresses are answered by one
//! node (MetalLB's Layer 2) or by every eligible node, each for a share of the requesters
//! (active-active, this project's extension).
//!
//! Active-active is opt-in through the annotation [`ANNOTATION`] (`xdplb.io/l2-mode`), so
//! MetalLB's objects mean what they meant: on an L2Advertisement it applies to every Service
//! the advertisement selects; on a Service it decides for that Service alone, either way.
use std::{collections::BTreeMap, str::FromStr};

use kube::ResourceExt;

use super::{manifest::Objects, selector::Advertisement, types::L2Advertisement};

/// The annotation that chooses the Layer 2 mode.
pub const ANNOTATION: &str = "xdplb.io/l2-mode";

/// How a Service's addresses are answered at Layer 2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L2Mode {
    /// One elected node answers every requester (MetalLB's behaviour).
    #[default]
    SingleOwner,
    /// Every eligible node answers, each for its slots of the requesters.
    ActiveActive,
}

impl L2Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            L2Mode::SingleOwner => "single-owner",
            L2Mode::ActiveActive => "active-active",
        }
    }
}

impl std::fmt::Display for L2Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for L2Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "single-owner" => Ok(L2Mode::SingleOwner),
            "active-active" => Ok(L2Mode::ActiveActive),
            other => Err(format!(
                "{other:?} is not a Layer 2 mode (active-active or single-owner)"
            )),
        }
    }
}

/// The mode an object's annotation asks for: `None` without the annotation.
pub fn annotated(annotations: &BTreeMap<String, String>) -> Option<Result<L2Mode, String>> {
    annotations.get(ANNOTATION).map(|v| v.parse())
}

/// The mode of a Service whose own annotation asks for `service` (`None`: no valid
/// annotation) and which the advertisements `ads` cover: the Service's choice when it made
/// one, else active-active when any of the advertisements asks for it. Invalid annotations
/// count as absent (`validate` reports them on advertisements; the agent logs them on
/// Services).
pub fn effective<'a>(
    service: Option<L2Mode>,
    ads: impl IntoIterator<Item = &'a L2Advertisement>,
) -> L2Mode {
    if let Some(mode) = service {
        return mode;
    }
    let spread = ads
        .into_iter()
        .any(|ad| matches!(annotated(ad.annotations()), Some(Ok(L2Mode::ActiveActive))));
    if spread {
        L2Mode::ActiveActive
    } else {
        L2Mode::SingleOwner
    }
}

/// The Layer 2 mode of Service `service` (`namespace/name`) with addresses from `pool`, as
/// the agents will apply it; `None` when no L2Advertisement covers it.
pub fn of_service(objects: &Objects, service: &str, pool: &str) -> Option<L2Mode> {
    let no_labels = BTreeMap::new();
    let pool_labels = objects
        .pools
        .iter()
        .find(|p| p.name_any() == pool)
        .map_or(&no_labels, |p| p.labels());
    let svc = objects.services.iter().find(|s| {
        format!(
            "{}/{}",
            s.namespace().as_deref().unwrap_or("default"),
            s.name_any()
        ) == service
    });
    let ads: Vec<&L2Advertisement> = objects
        .l2_advertisements
        .iter()
        .filter(|ad| {
            ad.spec.selects_pool(pool, pool_labels)
                && ad.spec.selects_service(svc.map(|s| s.labels()))
        })
        .collect();
    if ads.is_empty() {
        return None;
    }
    let own = svc
        .and_then(|s| annotated(s.annotations()))
        .and_then(Result::ok);
    Some(effective(own, ads))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ad(annotation: Option<&str>) -> L2Advertisement {
        let mut meta = json!({"name": "l2"});
        if let Some(a) = annotation {
            meta["annotations"] = json!({ ANNOTATION: a });
        }
        serde_json::from_value(json!({"metadata": meta, "spec": {}}))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_service_decides_first_then_any_advertisement_then_metallb() {
        let single = ad(None);
        let spread = ad(Some("active-active"));
        let typo = ad(Some("active"));
        let svc = |v: &str| annotated(&labels(&[(ANNOTATION, v)])).and_then(Result::ok);
        let cases: [(Option<L2Mode>, Vec<&L2Advertisement>, L2Mode); 7] = [
            (None, vec![&single], L2Mode::SingleOwner),
            (None, vec![&single, &spread], L2Mode::ActiveActive),
            (None, vec![&typo], L2Mode::SingleOwner),
            (svc("single-owner"), vec![&spread], L2Mode::SingleOwner),
            (svc("active-active"), vec![&single], L2Mode::ActiveActive),
            (svc("both"), vec![&spread], L2Mode::ActiveActive),
            (None, vec![], L2Mode::SingleOwner),
        ];
        for (i, (svc, ads, want)) in cases.into_iter().enumerate() {
            assert_eq!(effective(svc, ads), want, "case {i}");
        }
    }

    #[test]
    fn unknown_values_are_named() {
        let err = "Active-Active"
            .parse::<L2Mode>()
            .expect_err("case matters, as in Kubernetes enums");
        assert!(err.contains("\"Active-Active\""), "{err}");
        assert!(err.contains("active-active or single-owner"), "{err}");
    }
}
