//! The allocator over all pools: which addresses each Service gets (research/metallb.md §2).
//!
//! Pure and deterministic: the same pools and the same requests in the same order give the
//! same allocations. Order of preference for a request:
//! 1. the addresses it holds already (from its status after a restart), while still valid;
//! 2. the addresses it asks for (`metallb.io/loadBalancerIPs`, `spec.loadBalancerIP`);
//! 3. the pool it names (`metallb.io/address-pool`), even if that pool is not auto-assigned;
//! 4. pools whose `serviceAllocation` selects it, by priority (set before unset, then name);
//! 5. the other auto-assigned pools, by name (MetalLB leaves this to Go map order; we do not).
//!
//! A request for both families takes them from the same pool.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::space::Space;
use crate::config::address::AddrRange;

/// `namespace/name` of a Service.
pub type ServiceKey = String;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// The families a Service wants, from `ipFamilyPolicy` / `ipFamilies` (or its clusterIPs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Families {
    Single(Family),
    /// Both families if one pool has both, else the primary one.
    PreferDual {
        primary: Family,
    },
    /// Both families from one pool, or nothing.
    RequireDual {
        primary: Family,
    },
}

impl Families {
    fn wanted(&self) -> Vec<Family> {
        let both = |p: Family| {
            let other = if p == Family::V4 {
                Family::V6
            } else {
                Family::V4
            };
            vec![p, other]
        };
        match self {
            Families::Single(f) => vec![*f],
            Families::PreferDual { primary } | Families::RequireDual { primary } => both(*primary),
        }
    }
}

/// What a Service with `allow-shared-ip` brings to the sharing rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharing {
    pub key: String,
    /// `(protocol, port)` pairs; two sharers may not have one in common.
    pub ports: BTreeSet<(String, u16)>,
    /// The pod selector for `externalTrafficPolicy: Local`, empty for `Cluster`: sharers must
    /// agree, so Local and Cluster Services never share.
    pub backend: String,
}

/// What the allocator needs to know about one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub key: ServiceKey,
    pub namespace: String,
    pub namespace_labels: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub families: Families,
    /// Addresses asked for by annotation or `spec.loadBalancerIP`.
    pub requested: Vec<IpAddr>,
    /// The pool asked for by annotation.
    pub pool: Option<String>,
    pub sharing: Option<Sharing>,
    /// Addresses in the Service's status (what it had before a restart).
    pub current: Vec<IpAddr>,
}

impl Request {
    /// Service `namespace/name` without labels, asking for one IPv4 address from any pool: the
    /// plainest request, which tests and benches start from.
    pub fn ipv4(namespace: &str, name: &str) -> Self {
        Self {
            key: format!("{namespace}/{name}"),
            namespace: namespace.into(),
            namespace_labels: BTreeMap::new(),
            labels: BTreeMap::new(),
            families: Families::Single(Family::V4),
            requested: Vec::new(),
            pool: None,
            sharing: None,
            current: Vec::new(),
        }
    }
}

/// Which Services a pool is restricted to (`serviceAllocation`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Restriction {
    pub priority: Option<i32>,
    pub namespaces: BTreeSet<String>,
    pub namespace_selectors: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    pub service_selectors: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

impl Restriction {
    /// MetalLB: every kind of restriction that is set must match.
    fn admits(&self, req: &Request) -> bool {
        use crate::config::selector::admits;
        let ns = self.namespaces.is_empty() || self.namespaces.contains(&req.namespace);
        ns && admits(&self.namespace_selectors, &req.namespace_labels)
            && admits(&self.service_selectors, &req.labels)
    }
}

/// A pool as the allocator sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolDef {
    pub name: String,
    pub ranges: Vec<AddrRange>,
    pub auto_assign: bool,
    pub avoid_buggy_ips: bool,
    pub restriction: Option<Restriction>,
}

/// Addresses given to one Service, and the pool they come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub pool: String,
    /// IPv4 first.
    pub ips: Vec<IpAddr>,
}

/// How full a pool is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    pub capacity: u128,
    pub in_use: u128,
    pub ipv4_capacity: u128,
    pub ipv4_in_use: u128,
    pub ipv6_capacity: u128,
    pub ipv6_in_use: u128,
    pub services: usize,
}

/// Why a Service has no addresses (yet).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Pending {
    #[error("no IPAddressPool named {0:?}")]
    NoSuchPool(String),
    #[error("{0} is not in any IPAddressPool")]
    NotInAnyPool(IpAddr),
    #[error("the requested addresses are not all in one pool")]
    SplitAcrossPools,
    #[error("{ip} is not in the requested pool {pool:?}")]
    NotInRequestedPool { ip: IpAddr, pool: String },
    #[error("IPAddressPool {0:?} does not serve this Service (serviceAllocation)")]
    NotAdmitted(String),
    #[error("{0} is in use by another Service that does not share it with this one")]
    InUse(IpAddr),
    #[error("the requested addresses do not match the Service's IP families")]
    WrongFamilies,
    #[error("no pool has a free address of every family the Service needs")]
    Exhausted,
}

struct Pool {
    def: PoolDef,
    space: Space,
}

#[derive(Clone, Debug)]
struct Holder {
    service: ServiceKey,
    sharing: Option<Sharing>,
}

/// The allocations of every Service over every pool.
pub struct Allocator {
    pools: BTreeMap<String, Pool>,
    holders: BTreeMap<IpAddr, Vec<Holder>>,
    /// Addresses held under each sharing key: where a sharer looks first.
    shared: BTreeMap<String, BTreeSet<IpAddr>>,
    allocations: BTreeMap<ServiceKey, Allocation>,
    /// Auto-assigned pools with a serviceAllocation, by name: the only ones whose eligibility
    /// depends on the Service (usually few, so a request does not test every pool).
    restricted: Vec<String>,
}

impl Allocator {
    pub fn new(pools: Vec<PoolDef>) -> Self {
        let pools: BTreeMap<String, Pool> = pools
            .into_iter()
            .map(|def| {
                let space = Space::new(def.ranges.clone(), def.avoid_buggy_ips);
                (def.name.clone(), Pool { def, space })
            })
            .collect();
        let restricted = pools
            .values()
            .filter(|p| p.def.auto_assign && p.def.restriction.is_some())
            .map(|p| p.def.name.clone())
            .collect();
        Self {
            restricted,
            pools,
            holders: BTreeMap::new(),
            shared: BTreeMap::new(),
            allocations: BTreeMap::new(),
        }
    }

    /// The current allocation of a Service.
    pub fn get(&self, key: &str) -> Option<&Allocation> {
        self.allocations.get(key)
    }

    /// Capacity, addresses in use and Services served, per pool (for the metrics).
    pub fn usage(&self) -> BTreeMap<String, PoolUsage> {
        let mut usage: BTreeMap<String, PoolUsage> = self
            .pools
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    PoolUsage {
                        capacity: p.space.capacity(),
                        in_use: p.space.in_use(),
                        ipv4_capacity: p.space.capacity_of(true),
                        ipv4_in_use: p.space.in_use_of(true),
                        ipv6_capacity: p.space.capacity_of(false),
                        ipv6_in_use: p.space.in_use_of(false),
                        services: 0,
                    },
                )
            })
            .collect();
        for alloc in self.allocations.values() {
            if let Some(u) = usage.get_mut(&alloc.pool) {
                u.services += 1;
            }
        }
        usage
    }

    /// Addresses in use in `pool`.
    pub fn in_use(&self, pool: &str) -> u128 {
        self.pools.get(pool).map_or(0, |p| p.space.in_use())
    }

    /// Re-takes the addresses in the Service's status if they are still valid, and nothing else.
    ///
    /// Rebuilding the state (after a restart or a pool change) calls this for every Service
    /// before any [`Allocator::assign`]: otherwise a Service that must move could take, as the
    /// lowest free address, one that a later Service still holds, and the moves would cascade.
    pub fn keep(&mut self, req: &Request) -> bool {
        if req.current.is_empty()
            || !(req.requested.is_empty() || sorted(&req.requested) == sorted(&req.current))
        {
            return false;
        }
        self.release(&req.key);
        match self.check_specific(req, &req.current) {
            Ok(pool) => {
                self.hold(req, pool, req.current.clone());
                true
            }
            Err(_) => false,
        }
    }

    /// Gives the Service its addresses (keeping what it holds while still valid).
    pub fn assign(&mut self, req: &Request) -> Result<Allocation, Pending> {
        let held = self
            .allocations
            .get(&req.key)
            .map(|a| a.ips.clone())
            .unwrap_or_else(|| req.current.clone());
        self.release(&req.key);
        if !held.is_empty()
            && (req.requested.is_empty() || sorted(&req.requested) == sorted(&held))
            && let Ok(pool) = self.check_specific(req, &held)
        {
            return Ok(self.hold(req, pool, held));
        }
        if !req.requested.is_empty() {
            let pool = self.check_specific(req, &req.requested)?;
            return Ok(self.hold(req, pool, req.requested.clone()));
        }
        // The first pool with room, found without cloning a name per pool tried: a Service
        // may walk past every full pool before it (200 pools × 10,000 Services in the bench).
        let named = match &req.pool {
            Some(name) => {
                let pool = self
                    .pools
                    .get(name)
                    .ok_or_else(|| Pending::NoSuchPool(name.clone()))?;
                if let Some(r) = &pool.def.restriction
                    && !r.admits(req)
                {
                    return Err(Pending::NotAdmitted(name.clone()));
                }
                Some(pool)
            }
            None => None,
        };
        let first = |families: &[Family]| {
            let mut candidates: Box<dyn Iterator<Item = &Pool>> = match named {
                Some(pool) => Box::new(std::iter::once(pool)),
                None => Box::new(self.auto_pools(req)),
            };
            candidates.find_map(|pool| {
                self.free_in(pool, families, req)
                    .map(|ips| (pool.def.name.clone(), ips))
            })
        };
        let found = first(&req.families.wanted()).or_else(|| match req.families {
            Families::PreferDual { primary } => first(&[primary]),
            _ => None,
        });
        if let Some((pool, ips)) = found {
            return Ok(self.hold(req, pool, ips));
        }
        Err(Pending::Exhausted)
    }

    /// Releases the Service's addresses (an address stays in use while another sharer holds it).
    pub fn release(&mut self, key: &str) {
        let Some(alloc) = self.allocations.remove(key) else {
            return;
        };
        for ip in alloc.ips {
            let Some(holders) = self.holders.get_mut(&ip) else {
                continue;
            };
            let my_key = holders
                .iter()
                .find(|h| h.service == key)
                .and_then(|h| h.sharing.as_ref().map(|s| s.key.clone()));
            holders.retain(|h| h.service != key);
            if let Some(k) = my_key
                && !holders
                    .iter()
                    .any(|h| h.sharing.as_ref().is_some_and(|s| s.key == k))
                && let Some(ips) = self.shared.get_mut(&k)
            {
                ips.remove(&ip);
                if ips.is_empty() {
                    self.shared.remove(&k);
                }
            }
            if holders.is_empty() {
                self.holders.remove(&ip);
                if let Some(pool) = self.pools.get_mut(&alloc.pool) {
                    pool.space.release(ip);
                }
            }
        }
    }

    /// Pools tried for a request that names none: restricted pools that admit it by priority,
    /// then unrestricted ones by name; auto-assigned pools only.
    fn auto_pools<'a>(&'a self, req: &Request) -> impl Iterator<Item = &'a Pool> + 'a {
        let mut restricted: Vec<(&Pool, Option<i32>)> = self
            .restricted
            .iter()
            .filter_map(|name| self.pools.get(name))
            .filter_map(|p| {
                let r = p.def.restriction.as_ref()?;
                r.admits(req).then_some((p, r.priority))
            })
            .collect();
        // Set priorities first, lower first; ties and unset by name (the map is name-ordered).
        restricted.sort_by_key(|(_, prio)| (prio.is_none(), prio.unwrap_or(0)));
        let plain = self
            .pools
            .values()
            .filter(|p| p.def.auto_assign && p.def.restriction.is_none());
        restricted.into_iter().map(|(p, _)| p).chain(plain)
    }

    /// One address of each family in `wanted` from pool `name`, sharing where the request may.
    fn free_in(&self, pool: &Pool, wanted: &[Family], req: &Request) -> Option<Vec<IpAddr>> {
        let mut ips = Vec::new();
        for family in wanted {
            let shared = req.sharing.as_ref().and_then(|sharing| {
                self.shared
                    .get(&sharing.key)?
                    .iter()
                    .find(|ip| {
                        Family::of(**ip) == *family
                            && pool.space.contains(**ip)
                            && self.can_hold(**ip, req)
                    })
                    .copied()
            });
            let ip = shared.or_else(|| pool.space.first_free(*family == Family::V4))?;
            ips.push(ip);
        }
        Some(ips)
    }

    /// Whether the request may hold `ip` next to its current holders.
    fn can_hold(&self, ip: IpAddr, req: &Request) -> bool {
        let Some(holders) = self.holders.get(&ip) else {
            return true;
        };
        let Some(mine) = &req.sharing else {
            return false;
        };
        holders.iter().all(|h| {
            h.sharing.as_ref().is_some_and(|theirs| {
                theirs.key == mine.key
                    && theirs.backend == mine.backend
                    && theirs.ports.is_disjoint(&mine.ports)
            })
        })
    }

    /// Checks that specific addresses can go to the request; returns their pool.
    fn check_specific(&self, req: &Request, ips: &[IpAddr]) -> Result<String, Pending> {
        let families: BTreeSet<Family> = ips.iter().map(|ip| Family::of(*ip)).collect();
        let wanted: BTreeSet<Family> = req.families.wanted().into_iter().collect();
        let fits = match req.families {
            Families::PreferDual { .. } => {
                families.is_subset(&wanted) && families.len() == ips.len()
            }
            _ => families == wanted && families.len() == ips.len(),
        };
        if !fits {
            return Err(Pending::WrongFamilies);
        }
        let mut pool_name: Option<String> = None;
        for ip in ips {
            let pool = self
                .pools
                .values()
                .find(|p| p.space.contains(*ip))
                .ok_or(Pending::NotInAnyPool(*ip))?;
            if let Some(wanted) = &req.pool
                && wanted != &pool.def.name
            {
                return Err(Pending::NotInRequestedPool {
                    ip: *ip,
                    pool: wanted.clone(),
                });
            }
            if let Some(r) = &pool.def.restriction
                && !r.admits(req)
            {
                return Err(Pending::NotAdmitted(pool.def.name.clone()));
            }
            if pool_name.as_ref().is_some_and(|n| n != &pool.def.name) {
                return Err(Pending::SplitAcrossPools);
            }
            pool_name = Some(pool.def.name.clone());
            if !self.can_hold(*ip, req) {
                return Err(Pending::InUse(*ip));
            }
        }
        pool_name.ok_or(Pending::WrongFamilies)
    }

    fn hold(&mut self, req: &Request, pool: String, mut ips: Vec<IpAddr>) -> Allocation {
        ips.sort_by_key(|ip| (Family::of(*ip), *ip));
        if let Some(p) = self.pools.get_mut(&pool) {
            for ip in &ips {
                p.space.take(*ip);
            }
        }
        for ip in &ips {
            self.holders.entry(*ip).or_default().push(Holder {
                service: req.key.clone(),
                sharing: req.sharing.clone(),
            });
            if let Some(sharing) = &req.sharing {
                self.shared
                    .entry(sharing.key.clone())
                    .or_default()
                    .insert(*ip);
            }
        }
        let alloc = Allocation { pool, ips };
        self.allocations.insert(req.key.clone(), alloc.clone());
        alloc
    }
}

fn sorted(ips: &[IpAddr]) -> Vec<IpAddr> {
    let mut v = ips.to_vec();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::address::parse;

    fn pool(name: &str, ranges: &[&str]) -> PoolDef {
        PoolDef {
            name: name.into(),
            ranges: ranges
                .iter()
                .map(|r| parse(r).expect("test range"))
                .collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            restriction: None,
        }
    }

    fn req(key: &str) -> Request {
        Request::ipv4("default", key)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn ips(a: &Allocation) -> Vec<String> {
        a.ips.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn plain_pools_fill_in_name_order_and_skip_manual_ones() {
        let mut manual = pool("a-manual", &["10.0.9.0/30"]);
        manual.auto_assign = false;
        let mut al = Allocator::new(vec![
            pool("c", &["10.0.3.0/31"]),
            pool("b", &["10.0.2.0/31"]),
            manual,
        ]);
        let got: Vec<String> = (0..5)
            .map(|i| match al.assign(&req(&format!("s{i}"))) {
                Ok(a) => format!("{}:{}", a.pool, ips(&a).join(",")),
                Err(e) => e.to_string(),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                "b:10.0.2.0",
                "b:10.0.2.1",
                "c:10.0.3.0",
                "c:10.0.3.1",
                "no pool has a free address of every family the Service needs",
            ]
        );
    }

    #[test]
    fn removing_a_pool_moves_only_the_services_it_held() {
        let defs = |with_first: bool| {
            let mut v = vec![pool("b", &["10.0.2.0/30"]), pool("c", &["10.0.3.0/30"])];
            if with_first {
                v.insert(0, pool("a", &["10.0.1.0/31"]));
            }
            v
        };
        let mut al = Allocator::new(defs(true));
        let before: Vec<Vec<IpAddr>> = (0..5)
            .map(|i| al.assign(&req(&format!("s{i}"))).expect("room").ips)
            .collect();
        // Rebuild after pool "a" is gone: keep first, then assign.
        let mut al = Allocator::new(defs(false));
        let reqs: Vec<Request> = (0..5)
            .map(|i| {
                let mut r = req(&format!("s{i}"));
                r.current = before[i].clone();
                r
            })
            .collect();
        for r in &reqs {
            al.keep(r);
        }
        let after: Vec<Vec<IpAddr>> = reqs
            .iter()
            .map(|r| al.assign(r).expect("room").ips)
            .collect();
        let moved: Vec<usize> = (0..5).filter(|i| before[*i] != after[*i]).collect();
        assert_eq!(
            moved,
            vec![0, 1],
            "only the two Services of pool a move: {after:?}"
        );
    }

    #[test]
    fn the_pool_annotation_reaches_a_manual_pool() {
        let mut manual = pool("manual", &["10.0.9.0/30"]);
        manual.auto_assign = false;
        let mut al = Allocator::new(vec![pool("auto", &["10.0.1.0/30"]), manual]);
        let mut r = req("s");
        r.pool = Some("manual".into());
        assert_eq!(
            al.assign(&r).map(|a| ips(&a)),
            Ok(vec!["10.0.9.0".to_owned()])
        );
        r.pool = Some("nope".into());
        assert_eq!(al.assign(&r), Err(Pending::NoSuchPool("nope".into())));
    }

    #[test]
    fn an_allocation_is_kept_across_restarts_and_released_on_delete() {
        let defs = vec![pool("p", &["10.0.0.0/29"])];
        let mut al = Allocator::new(defs.clone());
        let mut r = req("s");
        r.current = vec![ip("10.0.0.5")];
        assert_eq!(
            al.assign(&r).map(|a| ips(&a)),
            Ok(vec!["10.0.0.5".to_owned()])
        );
        // Assigning again (any reconcile) keeps it although lower addresses are free.
        r.current.clear();
        assert_eq!(
            al.assign(&r).map(|a| ips(&a)),
            Ok(vec!["10.0.0.5".to_owned()])
        );
        al.release(&r.key);
        assert_eq!(al.in_use("p"), 0);
        // A status address outside every pool is replaced.
        let mut al = Allocator::new(defs);
        r.current = vec![ip("192.0.2.1")];
        assert_eq!(
            al.assign(&r).map(|a| ips(&a)),
            Ok(vec!["10.0.0.0".to_owned()])
        );
    }

    #[test]
    fn requested_addresses_must_be_in_a_pool_and_free() {
        let mut al = Allocator::new(vec![pool("p", &["10.0.0.0/29"])]);
        let mut a = req("a");
        a.requested = vec![ip("10.0.0.3")];
        assert_eq!(
            al.assign(&a).map(|x| ips(&x)),
            Ok(vec!["10.0.0.3".to_owned()])
        );
        let mut b = req("b");
        b.requested = vec![ip("10.0.0.3")];
        assert_eq!(al.assign(&b), Err(Pending::InUse(ip("10.0.0.3"))));
        b.requested = vec![ip("10.9.9.9")];
        assert_eq!(al.assign(&b), Err(Pending::NotInAnyPool(ip("10.9.9.9"))));
        b.requested = vec![ip("fd00::1")];
        assert_eq!(al.assign(&b), Err(Pending::WrongFamilies));
    }

    fn sharing(key: &str, ports: &[(&str, u16)], backend: &str) -> Option<Sharing> {
        Some(Sharing {
            key: key.into(),
            ports: ports.iter().map(|(p, n)| ((*p).to_owned(), *n)).collect(),
            backend: backend.into(),
        })
    }

    #[test]
    fn sharing_follows_key_ports_and_backend() {
        let mut al = Allocator::new(vec![pool("p", &["10.0.0.0/29"])]);
        let mut dns_tcp = req("dns-tcp");
        dns_tcp.sharing = sharing("dns", &[("TCP", 53)], "");
        let mut dns_udp = req("dns-udp");
        dns_udp.sharing = sharing("dns", &[("UDP", 53)], "");
        let mut clash = req("clash");
        clash.sharing = sharing("dns", &[("TCP", 53)], "");
        let mut local = req("local");
        local.sharing = sharing("dns", &[("TCP", 80)], "app=web");
        let got = |al: &mut Allocator, r: &Request| al.assign(r).map(|a| ips(&a).join(","));
        assert_eq!(got(&mut al, &dns_tcp), Ok("10.0.0.0".into()));
        assert_eq!(
            got(&mut al, &dns_udp),
            Ok("10.0.0.0".into()),
            "TCP/53 and UDP/53 share"
        );
        assert_eq!(
            got(&mut al, &clash),
            Ok("10.0.0.1".into()),
            "same port: a new address"
        );
        assert_eq!(
            got(&mut al, &local),
            Ok("10.0.0.2".into()),
            "other backend: a new address"
        );
        // The address stays in use until its last sharer goes.
        al.release(&dns_tcp.key);
        assert_eq!(al.in_use("p"), 3);
        al.release(&dns_udp.key);
        assert_eq!(al.in_use("p"), 2);
    }

    #[test]
    fn restricted_pools_serve_their_services_first_by_priority() {
        let restricted = |name: &str, ns: &str, priority: Option<i32>| {
            let mut p = pool(name, &[]);
            p.ranges = vec![parse(&format!("10.{}.0.0/30", name.len())).expect("range")];
            p.restriction = Some(Restriction {
                priority,
                namespaces: [ns.to_owned()].into(),
                ..Restriction::default()
            });
            p
        };
        let mut al = Allocator::new(vec![
            pool("plain", &["10.9.0.0/30"]),
            restricted("team", "team-ns", None),
            restricted("teamprio", "team-ns", Some(1)),
        ]);
        let mut t = req("svc");
        t.namespace = "team-ns".into();
        t.key = "team-ns/svc".into();
        assert_eq!(al.assign(&t).map(|a| a.pool), Ok("teamprio".into()));
        assert_eq!(al.assign(&req("other")).map(|a| a.pool), Ok("plain".into()));
        let mut wrong = req("x");
        wrong.pool = Some("team".into());
        assert_eq!(al.assign(&wrong), Err(Pending::NotAdmitted("team".into())));
    }

    #[test]
    fn dual_stack_comes_from_one_pool_or_falls_back_when_preferred() {
        let mut al = Allocator::new(vec![
            pool("a-v4only", &["10.0.0.0/30"]),
            pool("b-dual", &["10.1.0.0/30", "fd00::/126"]),
        ]);
        let mut require = req("r");
        require.families = Families::RequireDual {
            primary: Family::V6,
        };
        let a = al.assign(&require).expect("dual-stack");
        assert_eq!(
            (a.pool.as_str(), ips(&a)),
            ("b-dual", vec!["10.1.0.0".into(), "fd00::".into()])
        );
        let mut prefer = req("p");
        prefer.families = Families::PreferDual {
            primary: Family::V4,
        };
        let mut al = Allocator::new(vec![pool("a-v4only", &["10.0.0.0/30"])]);
        assert_eq!(
            al.assign(&prefer).map(|a| ips(&a)),
            Ok(vec!["10.0.0.0".to_owned()])
        );
        require.key = "default/r2".into();
        assert_eq!(al.assign(&require), Err(Pending::Exhausted));
    }
}
