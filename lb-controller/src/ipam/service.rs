//! A Kubernetes Service, as the allocator sees it: which Services are ours, and what each asks for
//! (research/metallb.md §2).
use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use kube::ResourceExt;

use super::allocator::{Families, Family, Request, Sharing};

/// Service annotations, MetalLB's current form; the legacy `metallb.universe.tf/` form is read
/// too, and loses when both are set.
pub const ANNOTATION_IPS: &str = "metallb.io/loadBalancerIPs";
pub const ANNOTATION_POOL: &str = "metallb.io/address-pool";
pub const ANNOTATION_SHARED: &str = "metallb.io/allow-shared-ip";
const LEGACY_PREFIX: &str = "metallb.universe.tf/";

/// Why a Service we serve cannot be turned into a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("spec.loadBalancerIP and {ANNOTATION_IPS} are both set")]
    BothRequests,
    #[error("{annotation}: {value:?} is not an IP address")]
    BadIp { annotation: String, value: String },
    #[error(
        "ipFamilyPolicy RequireDualStack, but the cluster IPs ({0}) are of one family: the Service gets no address until it has one of each"
    )]
    NotDualStack(String),
}

/// Whether the controller serves this Service: `type: LoadBalancer`, and the load-balancer class
/// matches (`lb_class` `None`: only Services without a class, as MetalLB by default).
pub fn is_ours(svc: &Service, lb_class: Option<&str>) -> bool {
    let Some(spec) = &svc.spec else {
        return false;
    };
    spec.type_.as_deref() == Some("LoadBalancer") && spec.load_balancer_class.as_deref() == lb_class
}

/// The addresses in `status.loadBalancer.ingress`.
pub fn status_ips(svc: &Service) -> Vec<std::net::IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| {
            ingress
                .iter()
                .filter_map(|i| i.ip.as_ref()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The value of an annotation, preferring the current name over the legacy one.
fn annotation<'a>(svc: &'a Service, name: &str) -> Option<&'a str> {
    let legacy = name.replacen("metallb.io/", LEGACY_PREFIX, 1);
    let a = svc.annotations();
    a.get(name).or_else(|| a.get(&legacy)).map(String::as_str)
}

/// Legacy annotations the Service uses (MetalLB raises a `deprecatedAnnotation` event for each).
pub fn legacy_annotations(svc: &Service) -> Vec<String> {
    svc.annotations()
        .keys()
        .filter(|k| k.starts_with(LEGACY_PREFIX))
        .cloned()
        .collect()
}

fn family_named(name: &str) -> Option<Family> {
    match name {
        "IPv4" => Some(Family::V4),
        "IPv6" => Some(Family::V6),
        _ => None,
    }
}

/// The families the Service needs. With clusterIPs present they rule, as in MetalLB; without
/// (standalone mode) `ipFamilies` / `ipFamilyPolicy` do, IPv4 single-stack by default.
fn families(svc: &Service) -> Result<Families, RequestError> {
    let no_spec = ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&no_spec);
    let cluster: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let primary = spec
        .ip_families
        .as_ref()
        .and_then(|f| f.first())
        .and_then(|f| family_named(f))
        .or_else(|| cluster.first().map(|ip| Family::of(*ip)))
        .unwrap_or(Family::V4);
    let cluster_families = {
        let mut f: Vec<Family> = cluster.iter().map(|ip| Family::of(*ip)).collect();
        f.dedup();
        f.len()
    };
    // MetalLB refuses a dual-stack requirement that the cluster IPs do not meet; without
    // cluster IPs (standalone mode) the policy alone decides.
    Ok(match spec.ip_family_policy.as_deref() {
        Some("RequireDualStack") if cluster_families == 1 => {
            let ips: Vec<String> = cluster.iter().map(ToString::to_string).collect();
            return Err(RequestError::NotDualStack(ips.join(", ")));
        }
        Some("RequireDualStack") => Families::RequireDual { primary },
        Some("PreferDualStack") if cluster_families == 1 => Families::Single(primary),
        Some("PreferDualStack") => Families::PreferDual { primary },
        _ => Families::Single(primary),
    })
}

fn parse_ips(annotation: &str, value: &str) -> Result<Vec<IpAddr>, RequestError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().map_err(|_| RequestError::BadIp {
                annotation: annotation.to_owned(),
                value: s.to_owned(),
            })
        })
        .collect()
}

/// The allocator request for a Service we serve; `namespace_labels` are its Namespace's labels.
pub fn request(
    svc: &Service,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<Request, RequestError> {
    let no_spec = ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&no_spec);
    let namespace = svc.namespace().unwrap_or_else(|| "default".to_owned());
    let annotated = annotation(svc, ANNOTATION_IPS)
        .map(|v| parse_ips(ANNOTATION_IPS, v))
        .transpose()?;
    let legacy_field = spec
        .load_balancer_ip
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|v| parse_ips("spec.loadBalancerIP", v))
        .transpose()?;
    let requested = match (annotated, legacy_field) {
        (Some(_), Some(_)) => return Err(RequestError::BothRequests),
        (Some(ips), None) | (None, Some(ips)) => ips,
        (None, None) => Vec::new(),
    };
    let sharing = annotation(svc, ANNOTATION_SHARED)
        .filter(|k| !k.is_empty())
        .map(|key| Sharing {
            key: key.to_owned(),
            ports: spec
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    (
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        p.port as u16,
                    )
                })
                .collect(),
            backend: if spec.external_traffic_policy.as_deref() == Some("Local") {
                spec.selector
                    .iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            } else {
                String::new()
            },
        });
    let current = status_ips(svc);
    Ok(Request {
        key: format!("{namespace}/{}", svc.name_any()),
        namespace,
        namespace_labels: namespace_labels.clone(),
        labels: svc.labels().clone(),
        families: families(svc)?,
        requested,
        pool: annotation(svc, ANNOTATION_POOL).map(str::to_owned),
        sharing,
        current,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> Service {
        let value: serde_json::Value = serde_saphyr::from_str(yaml).expect("test yaml");
        serde_json::from_value(value).expect("a Service")
    }

    #[test]
    fn the_current_annotation_wins_over_the_legacy_one() {
        let s = svc(r#"
metadata:
  name: s
  annotations:
    metallb.io/address-pool: new
    metallb.universe.tf/address-pool: old
    metallb.universe.tf/allow-shared-ip: k
spec: {type: LoadBalancer, externalTrafficPolicy: Local, selector: {app: web}, ports: [{port: 53, protocol: UDP}]}
"#);
        let r = request(&s, &BTreeMap::new()).expect("request");
        assert_eq!(r.pool.as_deref(), Some("new"));
        let sharing = r.sharing.expect("legacy sharing key read");
        assert_eq!(sharing.key, "k");
        assert_eq!(sharing.backend, "app=web");
        assert!(sharing.ports.contains(&("UDP".to_owned(), 53)));
        assert_eq!(legacy_annotations(&s).len(), 2);
    }

    #[test]
    fn cluster_ips_decide_the_families() {
        let single = svc(
            "metadata: {name: s}\nspec: {type: LoadBalancer, ipFamilyPolicy: PreferDualStack, clusterIPs: [fd00::1]}",
        );
        assert_eq!(families(&single), Ok(Families::Single(Family::V6)));
        let dual = svc(
            "metadata: {name: s}\nspec: {type: LoadBalancer, ipFamilyPolicy: PreferDualStack, clusterIPs: [10.96.0.1, fd00::1]}",
        );
        assert_eq!(
            families(&dual),
            Ok(Families::PreferDual {
                primary: Family::V4
            })
        );
        let standalone = svc("metadata: {name: s}\nspec: {type: LoadBalancer}");
        assert_eq!(families(&standalone), Ok(Families::Single(Family::V4)));
    }

    #[test]
    fn a_bad_requested_address_is_named() {
        let s = svc(
            "metadata: {name: s, annotations: {metallb.io/loadBalancerIPs: \"10.0.0.1,nope\"}}\nspec: {type: LoadBalancer}",
        );
        assert_eq!(
            request(&s, &BTreeMap::new()),
            Err(RequestError::BadIp {
                annotation: ANNOTATION_IPS.into(),
                value: "nope".into()
            })
        );
    }
}
