//! Properties of `plan` over random configurations: pools with IPv4 and IPv6 ranges, autoAssign
//! and avoidBuggyIPs; Services of every family policy asking for pools, addresses, sharing
//! keys and ports, some "left" with addresses in their status.
//!
//! - no address is held by two Services unless MetalLB's sharing rules allow it;
//! - every address is inside the pool the plan names, of the Service's family, not a buggy
//!   address where the pool avoids them, and from a pool the Service may use;
//! - the plan does not depend on the order of the pools in the input.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::core::v1::Service;
use lb_controller::{
    config::{address, manifest::Objects, types::IPAddressPool},
    plan::{PlanEntry, plan},
};
use proptest::prelude::*;
use serde_json::json;

#[derive(Clone, Debug)]
struct PoolSpec {
    /// Small ranges carved from distinct blocks, so pools never overlap.
    v4: Vec<u8>,
    v6: Vec<u8>,
    auto_assign: bool,
    avoid_buggy: bool,
}

#[derive(Clone, Debug)]
struct SvcSpec {
    policy: u8,
    v6_primary: bool,
    pool: Option<u8>,
    requested: Option<(u8, u8)>,
    sharing: Option<u8>,
    ports: Vec<(bool, u16)>,
    current: Option<(u8, u8)>,
}

/// Block `b` of pool `p`: 10.p.b.0/30 or fd00:p:b::/126 (4 addresses, .0 and .3 included so
/// avoidBuggyIPs matters for the first block).
fn v4_block(p: usize, b: u8) -> String {
    format!("10.{p}.{b}.0/30")
}

fn v6_block(p: usize, b: u8) -> String {
    format!("fd00:{p}:{b}::/126")
}

fn pool(i: usize, spec: &PoolSpec) -> IPAddressPool {
    let addresses: Vec<String> = spec
        .v4
        .iter()
        .map(|b| v4_block(i, *b))
        .chain(spec.v6.iter().map(|b| v6_block(i, *b)))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
        "metadata": {"name": format!("pool-{i}"), "namespace": "metallb-system"},
        "spec": {"addresses": addresses, "autoAssign": spec.auto_assign,
                 "avoidBuggyIPs": spec.avoid_buggy},
    }))
    .unwrap_or_else(|e| panic!("pool: {e}"))
}

/// An address somewhere in the blocks the pools use (or just outside, block 9).
fn some_ip(pool: u8, x: u8, v6: bool) -> String {
    if v6 {
        format!("fd00:{}:{}::{}", pool % 4, x % 3, x % 5)
    } else {
        format!("10.{}.{}.{}", pool % 4, x % 3, x % 5)
    }
}

fn service(i: usize, spec: &SvcSpec) -> Service {
    let (policy, families, cluster_ips) = match spec.policy % 3 {
        0 if spec.v6_primary => ("SingleStack", json!(["IPv6"]), json!(["fd99::1"])),
        0 => ("SingleStack", json!(["IPv4"]), json!(["10.96.0.1"])),
        1 if spec.v6_primary => (
            "RequireDualStack",
            json!(["IPv6", "IPv4"]),
            json!(["fd99::1", "10.96.0.1"]),
        ),
        1 => (
            "RequireDualStack",
            json!(["IPv4", "IPv6"]),
            json!(["10.96.0.1", "fd99::1"]),
        ),
        _ => (
            "PreferDualStack",
            json!(["IPv4", "IPv6"]),
            json!(["10.96.0.1", "fd99::1"]),
        ),
    };
    let mut annotations = serde_json::Map::new();
    if let Some(p) = spec.pool {
        annotations.insert("metallb.io/address-pool".into(), json!(format!("pool-{p}")));
    }
    if let Some((p, x)) = spec.requested {
        annotations.insert(
            "metallb.io/loadBalancerIPs".into(),
            json!(some_ip(
                p,
                x,
                spec.v6_primary && spec.policy.is_multiple_of(3)
            )),
        );
    }
    if let Some(k) = spec.sharing {
        annotations.insert(
            "metallb.io/allow-shared-ip".into(),
            json!(format!("key-{k}")),
        );
    }
    let ports: Vec<_> = spec
        .ports
        .iter()
        .map(|(udp, port)| json!({"port": port, "protocol": if *udp { "UDP" } else { "TCP" }}))
        .collect();
    let ingress: Vec<_> = spec
        .current
        .iter()
        .map(|(p, x)| json!({"ip": some_ip(*p, *x, spec.v6_primary && spec.policy.is_multiple_of(3))}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "default", "annotations": annotations},
        "spec": {"type": "LoadBalancer", "clusterIP": cluster_ips[0], "clusterIPs": cluster_ips,
                 "ipFamilies": families, "ipFamilyPolicy": policy, "ports": ports},
        "status": {"loadBalancer": {"ingress": ingress}},
    }))
    .unwrap_or_else(|e| panic!("service: {e}"))
}

fn pool_spec() -> impl Strategy<Value = PoolSpec> {
    (
        proptest::collection::btree_set(0u8..3, 0..3),
        proptest::collection::btree_set(0u8..3, 0..3),
        proptest::bool::weighted(0.8),
        any::<bool>(),
    )
        .prop_filter("a pool has addresses", |(v4, v6, ..)| {
            !(v4.is_empty() && v6.is_empty())
        })
        .prop_map(|(v4, v6, auto_assign, avoid_buggy)| PoolSpec {
            v4: v4.into_iter().collect(),
            v6: v6.into_iter().collect(),
            auto_assign,
            avoid_buggy,
        })
}

fn svc_spec() -> impl Strategy<Value = SvcSpec> {
    (
        0u8..3,
        any::<bool>(),
        proptest::option::weighted(0.3, 0u8..5),
        proptest::option::weighted(0.2, (0u8..4, any::<u8>())),
        proptest::option::weighted(0.4, 0u8..2),
        proptest::collection::vec(
            (any::<bool>(), prop_oneof![Just(53u16), Just(80), Just(443)]),
            1..3,
        ),
        proptest::option::weighted(0.3, (0u8..4, any::<u8>())),
    )
        .prop_map(
            |(policy, v6_primary, pool, requested, sharing, ports, current)| SvcSpec {
                policy,
                v6_primary,
                pool,
                requested,
                sharing,
                ports,
                current,
            },
        )
}

fn objects(pools: &[PoolSpec], services: &[SvcSpec]) -> Objects {
    Objects {
        pools: pools.iter().enumerate().map(|(i, p)| pool(i, p)).collect(),
        services: services
            .iter()
            .enumerate()
            .map(|(i, s)| service(i, s))
            .collect(),
        ..Default::default()
    }
}

fn ports_of(svc: &Service) -> BTreeSet<(String, i32)> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port))
        .collect()
}

fn check(objects: &Objects, entries: &[PlanEntry]) -> Result<(), TestCaseError> {
    let services: BTreeMap<String, &Service> = objects
        .services
        .iter()
        .map(|s| {
            (
                format!("default/{}", s.metadata.name.as_deref().unwrap_or("")),
                s,
            )
        })
        .collect();
    let pools: BTreeMap<String, &IPAddressPool> = objects
        .pools
        .iter()
        .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
        .collect();
    let mut holders: BTreeMap<IpAddr, Vec<&str>> = BTreeMap::new();
    for e in entries {
        let svc = services[&e.service];
        let annotations = svc.metadata.annotations.clone().unwrap_or_default();
        if e.ips.is_empty() {
            continue;
        }
        let pool_name = e.pool.clone().unwrap_or_default();
        let pool = pools.get(&pool_name);
        prop_assert!(
            pool.is_some(),
            "{}: pool {pool_name:?} does not exist",
            e.service
        );
        let pool = pool.copied().unwrap_or_else(|| unreachable!());
        let ranges: Vec<_> = pool
            .spec
            .addresses
            .iter()
            .filter_map(|a| address::parse(a).ok())
            .collect();
        let asked_pool = annotations.get("metallb.io/address-pool");
        if let Some(asked) = asked_pool {
            prop_assert_eq!(asked, &pool_name, "{} asked for another pool", &e.service);
        }
        let asked_ips = annotations.contains_key("metallb.io/loadBalancerIPs");
        let had = !svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .is_none_or(|i| i.is_empty());
        if pool.spec.auto_assign == Some(false) {
            prop_assert!(
                asked_pool.is_some() || asked_ips || had,
                "{} got addresses from {pool_name}, which is not autoAssign",
                e.service
            );
        }
        let families = svc
            .spec
            .as_ref()
            .and_then(|s| s.ip_families.clone())
            .unwrap_or_default();
        let single = svc
            .spec
            .as_ref()
            .and_then(|s| s.ip_family_policy.as_deref())
            == Some("SingleStack");
        for ip in &e.ips {
            prop_assert!(
                ranges.iter().any(|r| r.contains(*ip)),
                "{}: {ip} is not in {pool_name}",
                e.service
            );
            if pool.spec.avoid_buggy_ips == Some(true)
                && let IpAddr::V4(v4) = ip
            {
                prop_assert!(
                    !matches!(v4.octets()[3], 0 | 255),
                    "{}: buggy {ip}",
                    e.service
                );
            }
            if single {
                let want = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
                prop_assert_eq!(&families[0], want, "{}: wrong family {}", &e.service, ip);
            }
            holders.entry(*ip).or_default().push(&e.service);
        }
        let mut fams: Vec<bool> = e.ips.iter().map(IpAddr::is_ipv4).collect();
        fams.dedup();
        prop_assert_eq!(
            fams.len(),
            e.ips.len(),
            "{}: two addresses of one family",
            &e.service
        );
    }
    for (ip, who) in holders {
        for (i, a) in who.iter().enumerate() {
            for b in &who[i + 1..] {
                let (sa, sb) = (services[*a], services[*b]);
                let key = |s: &Service| {
                    s.metadata
                        .annotations
                        .as_ref()
                        .and_then(|m| m.get("metallb.io/allow-shared-ip").cloned())
                };
                prop_assert!(
                    key(sa).is_some() && key(sa) == key(sb),
                    "{ip} given to {a} and {b} without a common sharing key"
                );
                prop_assert!(
                    ports_of(sa).is_disjoint(&ports_of(sb)),
                    "{ip} shared by {a} and {b} whose ports clash"
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn plans_keep_the_rules(
        pools in proptest::collection::vec(pool_spec(), 1..5),
        services in proptest::collection::vec(svc_spec(), 1..30),
    ) {
        let objects = objects(&pools, &services);
        let entries = plan(&objects, None, &BTreeMap::new());
        prop_assert_eq!(entries.len(), services.len());
        check(&objects, &entries)?;
    }

    #[test]
    fn the_order_of_pools_in_the_input_does_not_matter(
        pools in proptest::collection::vec(pool_spec(), 1..5),
        services in proptest::collection::vec(svc_spec(), 1..30),
        seed in any::<u64>(),
    ) {
        let objects = objects(&pools, &services);
        let mut shuffled = objects.clone();
        // A permutation from the seed: rotate, then reverse on odd seeds.
        let n = shuffled.pools.len();
        shuffled.pools.rotate_left((seed as usize) % n);
        if seed % 2 == 1 {
            shuffled.pools.reverse();
        }
        prop_assert_eq!(
            plan(&objects, None, &BTreeMap::new()),
            plan(&shuffled, None, &BTreeMap::new())
        );
    }
}
