//! Label selection, MetalLB's way: whether a selector admits a set of labels, and whether an
//! advertisement selects a pool, a node or a Service. Validation, the allocator, the Layer 2
//! election and the BGP planner all ask these questions; this is the one place that answers.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::types::{BGPAdvertisementSpec, L2AdvertisementSpec};

/// Object labels.
pub type Labels = BTreeMap<String, String>;

/// Whether `labels` satisfy the selector's `matchLabels` and `matchExpressions`.
pub fn matches(sel: &LabelSelector, labels: &Labels) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_exprs = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    by_labels && by_exprs
}

/// Whether a list of selectors admits `labels`: an empty list admits everything, otherwise
/// one selector must match (MetalLB ORs the entries of a selector list).
pub fn admits(selectors: &[LabelSelector], labels: &Labels) -> bool {
    selectors.is_empty() || selectors.iter().any(|s| matches(s, labels))
}

/// What L2Advertisements and BGPAdvertisements have in common: which pools, nodes and
/// Services they are about. Their CRD types stay apart; their selection rules are one.
pub trait Advertisement {
    /// `spec.ipAddressPools`.
    fn pools(&self) -> &[String];
    /// `spec.ipAddressPoolSelectors`.
    fn pool_selectors(&self) -> &[LabelSelector];
    /// `spec.nodeSelectors`.
    fn node_selectors(&self) -> &[LabelSelector];
    /// `spec.serviceSelectors`.
    fn service_selectors(&self) -> &[LabelSelector];

    /// Whether the advertisement covers pool `pool`, labelled `labels`: named, selected by
    /// label, or every pool when it names and selects none.
    fn selects_pool(&self, pool: &str, labels: &Labels) -> bool {
        (self.pools().is_empty() && self.pool_selectors().is_empty())
            || self.pools().iter().any(|p| p == pool)
            || self.pool_selectors().iter().any(|s| matches(s, labels))
    }

    /// Whether a node labelled `labels` may announce what the advertisement covers.
    fn selects_node(&self, labels: &Labels) -> bool {
        admits(self.node_selectors(), labels)
    }

    /// Whether the advertisement covers a Service labelled `labels` (`None`: a Service not
    /// known, which only an advertisement without `serviceSelectors` covers).
    fn selects_service(&self, labels: Option<&Labels>) -> bool {
        self.service_selectors().is_empty()
            || labels.is_some_and(|l| self.service_selectors().iter().any(|s| matches(s, l)))
    }
}

macro_rules! advertisement {
    ($spec:ty) => {
        impl Advertisement for $spec {
            fn pools(&self) -> &[String] {
                &self.ip_address_pools
            }
            fn pool_selectors(&self) -> &[LabelSelector] {
                &self.ip_address_pool_selectors
            }
            fn node_selectors(&self) -> &[LabelSelector] {
                &self.node_selectors
            }
            fn service_selectors(&self) -> &[LabelSelector] {
                &self.service_selectors
            }
        }
    };
}

advertisement!(L2AdvertisementSpec);
advertisement!(BGPAdvertisementSpec);

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| (*v).to_owned()).collect()),
            }]),
            match_labels: None,
        }
    }

    #[test]
    fn operators_behave_as_kubernetes_defines_them() {
        let l = labels(&[("zone", "a")]);
        assert!(matches(&expr("zone", "In", &["a", "b"]), &l));
        assert!(!matches(&expr("zone", "In", &["b"]), &l));
        assert!(matches(&expr("zone", "NotIn", &["b"]), &l));
        assert!(matches(&expr("rack", "NotIn", &["b"]), &l));
        assert!(matches(&expr("zone", "Exists", &[]), &l));
        assert!(!matches(&expr("rack", "Exists", &[]), &l));
        assert!(matches(&expr("rack", "DoesNotExist", &[]), &l));
        assert!(!matches(&expr("zone", "Bogus", &[]), &l));
    }

    #[test]
    fn an_empty_list_admits_everything_and_entries_are_ored() {
        let l = labels(&[("zone", "a")]);
        assert!(admits(&[], &l));
        assert!(admits(
            &[expr("zone", "In", &["b"]), expr("zone", "In", &["a"])],
            &l
        ));
        assert!(!admits(&[expr("zone", "In", &["b"])], &l));
    }

    #[test]
    fn an_advertisement_without_pools_selects_every_pool() {
        let mut ad = L2AdvertisementSpec::default();
        assert!(ad.selects_pool("any", &Labels::new()));
        ad.ip_address_pools = vec!["blue".into()];
        assert!(ad.selects_pool("blue", &Labels::new()));
        assert!(!ad.selects_pool("red", &Labels::new()));
        let mut bgp = BGPAdvertisementSpec {
            ip_address_pool_selectors: vec![expr("tier", "In", &["edge"])],
            ..BGPAdvertisementSpec::default()
        };
        assert!(bgp.selects_pool("red", &labels(&[("tier", "edge")])));
        assert!(!bgp.selects_pool("red", &Labels::new()));
        bgp.service_selectors = vec![expr("app", "Exists", &[])];
        assert!(!bgp.selects_service(None));
        assert!(bgp.selects_service(Some(&labels(&[("app", "x")]))));
    }
}
