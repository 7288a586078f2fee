//! IPAddressPool status as MetalLB ≥ 0.15 writes it (`assignedIPv4`, `assignedIPv6`,
//! `availableIPv4`, `availableIPv6`): what to write, decided from a pass's pool usage and the
//! pools as the API has them now; the leader writes it through the status subresource.
use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::{
    config::types::{IPAddressPool, IPAddressPoolStatus},
    ipam::allocator::PoolUsage,
};

fn count(n: u128) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The status a pool with `usage` has. An IPv6 pool larger than 2⁶³ addresses reads as
/// `i64::MAX` available (the field is an int64, as in MetalLB).
pub fn of(usage: &PoolUsage) -> IPAddressPoolStatus {
    IPAddressPoolStatus {
        assigned_ipv4: count(usage.ipv4_in_use),
        assigned_ipv6: count(usage.ipv6_in_use),
        available_ipv4: count(usage.ipv4_capacity.saturating_sub(usage.ipv4_in_use)),
        available_ipv6: count(usage.ipv6_capacity.saturating_sub(usage.ipv6_in_use)),
    }
}

/// `(name, status)` for each pool in `live` (as the API has them) whose status differs from
/// what `usage` says. Pools the pass did not act on (left out of an invalid configuration)
/// keep theirs.
pub fn updates(
    live: &[IPAddressPool],
    usage: &BTreeMap<String, PoolUsage>,
) -> Vec<(String, IPAddressPoolStatus)> {
    live.iter()
        .filter_map(|pool| {
            let name = pool.name_any();
            let want = of(usage.get(&name)?);
            (pool.status.as_ref() != Some(&want)).then_some((name, want))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, status: Option<IPAddressPoolStatus>) -> IPAddressPool {
        let mut p = IPAddressPool::new(name, Default::default());
        p.status = status;
        p
    }

    #[test]
    fn only_pools_whose_status_differs_are_written() {
        let usage = BTreeMap::from([
            (
                "a".to_owned(),
                PoolUsage {
                    ipv4_capacity: 4,
                    ipv4_in_use: 1,
                    ipv6_capacity: u128::MAX,
                    ..PoolUsage::default()
                },
            ),
            ("b".to_owned(), PoolUsage::default()),
        ]);
        let a = IPAddressPoolStatus {
            assigned_ipv4: 1,
            available_ipv4: 3,
            available_ipv6: i64::MAX,
            ..Default::default()
        };
        let live = [
            pool("a", None),
            pool("b", Some(IPAddressPoolStatus::default())),
            pool("left-out", None),
        ];
        assert_eq!(updates(&live, &usage), vec![("a".to_owned(), a.clone())]);
        assert!(updates(&[pool("a", Some(a))], &usage).is_empty());
    }
}
