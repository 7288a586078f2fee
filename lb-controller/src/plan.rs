//! `plan`: what the running controller would allocate for a set of manifests, Services taken in
//! input order, each keeping the addresses in its status while they stay valid.
use std::{collections::BTreeMap, net::IpAddr};

use kube::ResourceExt;
use serde::Serialize;

use crate::{
    config::{address, manifest::Objects, types::IPAddressPool},
    ipam::{
        allocator::{Allocator, PoolDef, PoolUsage, Request, Restriction},
        pool_for::Pools,
        service::{self, RequestError},
    },
};

/// One Service's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PlanEntry {
    /// `namespace/name`.
    pub service: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Why the Service has no addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

impl std::fmt::Display for PlanEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.pending, &self.pool) {
            (Some(why), _) => write!(f, "{}: pending: {why}", self.service),
            (None, pool) => {
                let ips: Vec<String> = self.ips.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{}: {} (pool {})",
                    self.service,
                    ips.join(","),
                    pool.as_deref().unwrap_or("?")
                )
            }
        }
    }
}

/// The entries an agent may announce, each with the pool that holds all its addresses, and one
/// line for each left out (a Service whose addresses lie in no pool, or in several): the
/// allocations come from a Service's status or a file that anything could have written.
pub fn announceable(entries: Vec<PlanEntry>, pools: &Pools) -> (Vec<PlanEntry>, Vec<String>) {
    let mut kept = Vec::with_capacity(entries.len());
    let mut left_out = Vec::new();
    for mut entry in entries {
        if entry.ips.is_empty() {
            kept.push(entry);
            continue;
        }
        match pools.pool_for(&entry.ips) {
            Some(pool) => {
                if entry.pool.as_deref() != Some(pool) {
                    entry.pool = Some(pool.to_owned());
                }
                kept.push(entry);
            }
            None => left_out.push(format!(
                "Service {}: {}; not announced",
                entry.service,
                pools.why_not(&entry.ips)
            )),
        }
    }
    (kept, left_out)
}

/// The allocator's view of the pools (the configuration is assumed valid: entries that do not
/// parse are left out).
pub fn pool_defs(pools: &[IPAddressPool]) -> Vec<PoolDef> {
    pools
        .iter()
        .map(|p| PoolDef {
            name: p.name_any(),
            ranges: p
                .spec
                .addresses
                .iter()
                .filter_map(|a| address::parse(a).ok())
                .collect(),
            auto_assign: p.spec.auto_assign.unwrap_or(true),
            avoid_buggy_ips: p.spec.avoid_buggy_ips.unwrap_or(false),
            restriction: p.spec.service_allocation.as_ref().map(|a| Restriction {
                priority: a.priority,
                namespaces: a.namespaces.iter().cloned().collect(),
                namespace_selectors: a.namespace_selectors.clone(),
                service_selectors: a.service_selectors.clone(),
            }),
        })
        .collect()
}

/// Allocates for every Service the controller serves (`lb_class` as its `--lb-class`).
/// `previous` holds addresses given earlier (standalone mode's allocations file): a Service
/// without addresses in its status keeps those while they stay valid.
pub fn plan(
    objects: &Objects,
    lb_class: Option<&str>,
    previous: &BTreeMap<String, Vec<IpAddr>>,
) -> Vec<PlanEntry> {
    plan_with_usage(objects, lb_class, previous).0
}

/// [`plan`], plus how full each pool ends up.
pub fn plan_with_usage(
    objects: &Objects,
    lb_class: Option<&str>,
    previous: &BTreeMap<String, Vec<IpAddr>>,
) -> (Vec<PlanEntry>, BTreeMap<String, PoolUsage>) {
    let namespace_labels: BTreeMap<String, BTreeMap<String, String>> = objects
        .namespaces
        .iter()
        .map(|ns| (ns.name_any(), ns.labels().clone()))
        .collect();
    let no_labels = BTreeMap::new();
    let requests: Vec<(String, Result<Request, RequestError>)> = objects
        .services
        .iter()
        .filter(|s| service::is_ours(s, lb_class))
        .map(|svc| {
            let ns = svc.namespace().unwrap_or_else(|| "default".to_owned());
            let labels = namespace_labels.get(&ns).unwrap_or(&no_labels);
            let key = format!("{ns}/{}", svc.name_any());
            let req = service::request(svc, labels).map(|mut r| {
                if r.current.is_empty()
                    && let Some(ips) = previous.get(&key)
                {
                    r.current = ips.clone();
                }
                r
            });
            (key, req)
        })
        .collect();
    let mut allocator = Allocator::new(pool_defs(&objects.pools));
    // Every Service re-takes what it holds before anyone gets a new address, so a Service that
    // must move never takes an address a later one still holds.
    let kept: Vec<bool> = requests
        .iter()
        .map(|(_, r)| r.as_ref().is_ok_and(|r| allocator.keep(r)))
        .collect();
    let entries = requests
        .into_iter()
        .zip(kept)
        .map(|((key, req), kept)| {
            // What was kept stands: nothing assigned since can take an address from it.
            let outcome = match allocator.get(&key) {
                Some(a) if kept => Ok(a.clone()),
                _ => req
                    .map_err(|e| e.to_string())
                    .and_then(|r| allocator.assign(&r).map_err(|e| e.to_string())),
            };
            match outcome {
                Ok(a) => PlanEntry {
                    service: key,
                    ips: a.ips,
                    pool: Some(a.pool),
                    pending: None,
                },
                Err(why) => PlanEntry {
                    service: key,
                    ips: Vec::new(),
                    pool: None,
                    pending: Some(why),
                },
            }
        })
        .collect();
    (entries, allocator.usage())
}
