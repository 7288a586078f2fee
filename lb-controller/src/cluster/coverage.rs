//! Services whose addresses no advertisement covers: allocated, and announced by nobody.
//! MetalLB logs this at debug level only, and users find out from silence; the controller
//! says it with a Warning Event on the Service instead.
use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::{
    config::{manifest::Objects, selector::Advertisement},
    plan::PlanEntry,
};

/// The Event reason.
pub const REASON: &str = "NoAdvertisement";

/// `namespace/name → note` for each Service with addresses from a pool that no
/// L2Advertisement or BGPAdvertisement covers (by pool name, pool selector, or naming none;
/// and by `serviceSelectors`, when it has them).
pub fn uncovered(objects: &Objects, plan: &[PlanEntry]) -> BTreeMap<String, String> {
    let no_labels = BTreeMap::new();
    let services: BTreeMap<String, &BTreeMap<String, String>> = objects
        .services
        .iter()
        .map(|s| {
            let ns = s.namespace().unwrap_or_else(|| "default".into());
            (format!("{ns}/{}", s.name_any()), s.labels())
        })
        .collect();
    plan.iter()
        .filter(|e| !e.ips.is_empty())
        .filter_map(|e| {
            let pool_name = e.pool.as_deref()?;
            let pool_labels = objects
                .pools
                .iter()
                .find(|p| p.name_any() == pool_name)
                .map_or(&no_labels, |p| p.labels());
            let svc_labels = services.get(&e.service).copied();
            let covers = |ad: &dyn Advertisement| {
                ad.selects_pool(pool_name, pool_labels) && ad.selects_service(svc_labels)
            };
            let covered = objects.l2_advertisements.iter().any(|a| covers(&a.spec))
                || objects.bgp_advertisements.iter().any(|a| covers(&a.spec));
            let ips: Vec<String> = e.ips.iter().map(ToString::to_string).collect();
            (!covered).then(|| {
                (
                    e.service.clone(),
                    format!(
                        "{} from IPAddressPool/{pool_name} is covered by no L2Advertisement or BGPAdvertisement (their ipAddressPools, ipAddressPoolSelectors and serviceSelectors): no node announces it",
                        ips.join(", ")
                    ),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::manifest::{self, Loaded, Strictness};

    fn objects(yaml: &str) -> Objects {
        let mut loaded = Loaded::default();
        manifest::add_text(Path::new("t.yaml"), yaml, Strictness::Strict, &mut loaded)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.objects
    }

    fn entry(service: &str, pool: &str, ip: &str) -> PlanEntry {
        PlanEntry {
            service: service.into(),
            ips: vec![ip.parse().unwrap_or_else(|e| panic!("{e}"))],
            pool: Some(pool.into()),
            pending: None,
        }
    }

    const BASE: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: a}\nspec: {addresses: [10.0.0.0/24]}\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: b, labels: {tier: edge}}\nspec: {addresses: [10.0.1.0/24]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default, labels: {app: web}}\nspec: {type: LoadBalancer}\n";

    #[test]
    fn a_pool_no_advertisement_selects_is_reported_per_service() {
        let plan = [
            entry("default/web", "a", "10.0.0.1"),
            entry("default/other", "b", "10.0.1.1"),
        ];
        let only_b = BASE.to_owned()
            + "---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: l2}\nspec: {ipAddressPoolSelectors: [{matchLabels: {tier: edge}}]}\n";
        let found = uncovered(&objects(&only_b), &plan);
        assert_eq!(found.keys().collect::<Vec<_>>(), vec!["default/web"]);
        assert!(
            found["default/web"].starts_with("10.0.0.1 from IPAddressPool/a"),
            "{found:?}"
        );
        // An advertisement naming no pool covers every pool.
        let all = BASE.to_owned()
            + "---\napiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: all}\nspec: {}\n";
        assert!(uncovered(&objects(&all), &plan).is_empty());
        // serviceSelectors that do not match the Service leave it uncovered.
        let selected = BASE.to_owned()
            + "---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: l2}\nspec: {serviceSelectors: [{matchLabels: {app: db}}]}\n";
        assert_eq!(uncovered(&objects(&selected), &plan).len(), 2);
    }
}
