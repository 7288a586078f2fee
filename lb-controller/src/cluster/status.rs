//! What the controller writes back to Services after a plan, as data: the ingress addresses,
//! MetalLB's `metallb.io/ip-allocated-from-pool` annotation, and the Events with MetalLB's
//! reasons. Pure, so every rule is tested without an API server.
use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use crate::{ipam::service, plan::PlanEntry};

/// MetalLB's annotation naming the pool a Service's addresses came from.
pub const POOL_ANNOTATION: &str = "metallb.io/ip-allocated-from-pool";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// The writes one Service needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// `namespace/name`.
    pub key: String,
    /// The new `status.loadBalancer.ingress` addresses, when they change.
    pub ingress: Option<Vec<IpAddr>>,
    /// The new pool annotation (`Some(None)`: remove it), when it changes.
    pub pool: Option<Option<String>>,
    pub events: Vec<EventSpec>,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        self.ingress.is_none() && self.pool.is_none() && self.events.is_empty()
    }
}

fn key(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.namespace().unwrap_or_else(|| "default".into()),
        svc.name_any()
    )
}

fn ip_list(ips: &[IpAddr]) -> String {
    let quoted: Vec<String> = ips
        .iter()
        .map(|ip| format!("{:?}", ip.to_string()))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// The updates that bring `services` in line with `plan`. `reported` holds the pending reason
/// last raised per Service, so a Service that stays pending for the same reason gets one
/// `AllocationFailed`, not one per pass; it is updated in place. `in_pools` says whether an
/// address is one of ours (to release it from a Service that is no longer a LoadBalancer).
pub fn updates(
    services: &[Service],
    plan: &[PlanEntry],
    lb_class: Option<&str>,
    in_pools: &dyn Fn(&IpAddr) -> bool,
    reported: &mut BTreeMap<String, String>,
) -> Vec<Update> {
    let planned: BTreeMap<&str, &PlanEntry> =
        plan.iter().map(|e| (e.service.as_str(), e)).collect();
    let mut out = Vec::new();
    for svc in services {
        let key = key(svc);
        let current = service::status_ips(svc);
        let annotated = svc.annotations().get(POOL_ANNOTATION).cloned();
        let mut update = Update {
            key: key.clone(),
            ingress: None,
            pool: None,
            events: Vec::new(),
        };
        match planned.get(key.as_str()) {
            Some(entry) => {
                if current != entry.ips {
                    if entry.ips.is_empty() {
                        update.events.push(EventSpec {
                            warning: false,
                            reason: "ClearAssignment",
                            note: format!(
                                "current IP(s) {} not allowed by config, clearing",
                                ip_list(&current)
                            ),
                        });
                    } else {
                        update.events.push(EventSpec {
                            warning: false,
                            reason: "IPAllocated",
                            note: format!("Assigned IP {}", ip_list(&entry.ips)),
                        });
                    }
                    update.ingress = Some(entry.ips.clone());
                }
                let pool = if entry.ips.is_empty() {
                    None
                } else {
                    entry.pool.clone()
                };
                if pool != annotated {
                    update.pool = Some(pool);
                }
                match &entry.pending {
                    Some(why) if reported.get(&key) != Some(why) => {
                        update.events.push(EventSpec {
                            warning: true,
                            reason: "AllocationFailed",
                            note: format!("Failed to allocate IP for {key:?}: {why}"),
                        });
                        reported.insert(key.clone(), why.clone());
                    }
                    Some(_) => {}
                    None => {
                        reported.remove(&key);
                    }
                }
                for legacy in service::legacy_annotations(svc) {
                    // Raised with the allocation, so it is not repeated every pass.
                    if update.ingress.is_some() {
                        update.events.push(EventSpec {
                            warning: true,
                            reason: "deprecatedAnnotation",
                            note: format!(
                                "annotation {legacy:?} is deprecated, use {:?}",
                                legacy.replacen("metallb.universe.tf/", "metallb.io/", 1)
                            ),
                        });
                    }
                }
            }
            None => {
                reported.remove(&key);
                // Not a LoadBalancer any more (or never): what we gave it goes back. Services
                // of another class belong to another implementation and are left alone.
                let other_class = svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.load_balancer_class.as_deref())
                    != lb_class;
                let ours = annotated.is_some() || current.iter().any(in_pools);
                if !other_class && !service::is_ours(svc, lb_class) && ours {
                    if !current.is_empty() {
                        update.ingress = Some(Vec::new());
                        update.events.push(EventSpec {
                            warning: false,
                            reason: "ClearAssignment",
                            note: format!(
                                "Service is no longer of type LoadBalancer, released {}",
                                ip_list(&current)
                            ),
                        });
                    }
                    if annotated.is_some() {
                        update.pool = Some(None);
                    }
                }
            }
        }
        if !update.is_empty() {
            out.push(update);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, ty: &str, ips: &[&str], pool: Option<&str>) -> Service {
        let ingress: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        let mut annotations = serde_json::Map::new();
        if let Some(p) = pool {
            annotations.insert(POOL_ANNOTATION.into(), json!(p));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "spec": {"type": ty, "clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": ingress}},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn entry(name: &str, ips: &[&str], pool: Option<&str>, pending: Option<&str>) -> PlanEntry {
        PlanEntry {
            service: format!("default/{name}"),
            ips: ips
                .iter()
                .map(|ip| ip.parse().unwrap_or_else(|e| panic!("{e}")))
                .collect(),
            pool: pool.map(Into::into),
            pending: pending.map(Into::into),
        }
    }

    #[test]
    fn a_new_allocation_writes_status_annotation_and_ip_allocated() {
        let mut reported = BTreeMap::new();
        let u = updates(
            &[svc("web", "LoadBalancer", &[], None)],
            &[entry("web", &["10.0.0.1"], Some("p"), None)],
            None,
            &|ip| ip.to_string().starts_with("10.0.0."),
            &mut reported,
        );
        assert_eq!(u.len(), 1);
        assert_eq!(
            u[0].ingress,
            Some(vec!["10.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"))])
        );
        assert_eq!(u[0].pool, Some(Some("p".into())));
        assert_eq!(u[0].events[0].reason, "IPAllocated");
        assert_eq!(u[0].events[0].note, "Assigned IP [\"10.0.0.1\"]");
    }

    #[test]
    fn an_allocation_already_in_place_writes_nothing() {
        let mut reported = BTreeMap::new();
        let u = updates(
            &[svc("web", "LoadBalancer", &["10.0.0.1"], Some("p"))],
            &[entry("web", &["10.0.0.1"], Some("p"), None)],
            None,
            &|ip| ip.to_string().starts_with("10.0.0."),
            &mut reported,
        );
        assert!(u.is_empty(), "{u:?}");
    }

    #[test]
    fn a_pending_service_is_reported_once_per_reason() {
        let mut reported = BTreeMap::new();
        let services = [svc("web", "LoadBalancer", &[], None)];
        let first = updates(
            &services,
            &[entry("web", &[], None, Some("no available IPs"))],
            None,
            &|ip| ip.to_string().starts_with("10.0.0."),
            &mut reported,
        );
        assert_eq!(first[0].events[0].reason, "AllocationFailed");
        assert!(first[0].events[0].warning);
        let again = updates(
            &services,
            &[entry("web", &[], None, Some("no available IPs"))],
            None,
            &|ip| ip.to_string().starts_with("10.0.0."),
            &mut reported,
        );
        assert!(again.is_empty(), "{again:?}");
        let other = updates(
            &services,
            &[entry(
                "web",
                &[],
                None,
                Some("no IPAddressPool named \"x\""),
            )],
            None,
            &|ip| ip.to_string().starts_with("10.0.0."),
            &mut reported,
        );
        assert_eq!(other[0].events[0].reason, "AllocationFailed");
    }

    #[test]
    fn losing_the_address_clears_it_with_clear_assignment() {
        let mut reported = BTreeMap::new();
        let u = updates(
            &[svc("web", "LoadBalancer", &["10.0.0.1"], Some("p"))],
            &[entry(
                "web",
                &[],
                None,
                Some("10.0.0.1 is not in any IPAddressPool"),
            )],
            None,
            &|ip| ip.to_string().starts_with("10.0.0."),
            &mut reported,
        );
        assert_eq!(u[0].ingress, Some(vec![]));
        assert_eq!(u[0].pool, Some(None));
        let reasons: Vec<_> = u[0].events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, ["ClearAssignment", "AllocationFailed"]);
    }

    #[test]
    fn a_service_that_stops_being_a_load_balancer_is_released() {
        let mut reported = BTreeMap::new();
        let u = updates(
            &[svc("web", "ClusterIP", &["10.0.0.1"], Some("p"))],
            &[],
            None,
            &|ip| ip.to_string().starts_with("10.0.0."),
            &mut reported,
        );
        assert_eq!(u[0].ingress, Some(vec![]));
        assert_eq!(u[0].pool, Some(None));
        // Without the annotation (replaced by a full update) the address still says it is ours.
        let replaced = updates(
            &[svc("web", "ClusterIP", &["10.0.0.1"], None)],
            &[],
            None,
            &|ip| ip.to_string().starts_with("10.0.0."),
            &mut reported,
        );
        assert_eq!(replaced[0].ingress, Some(vec![]));
        assert_eq!(replaced[0].pool, None);
        // Another implementation's address is not touched.
        let untouched = updates(
            &[svc("other", "ClusterIP", &["192.0.2.2"], None)],
            &[],
            None,
            &|ip| ip.to_string().starts_with("10.0.0."),
            &mut reported,
        );
        assert!(untouched.is_empty());
    }
}
