//! The controller's metrics, with MetalLB's names so existing dashboards keep working; served by
//! [`crate::metrics_server`] on `/metrics` beside `/healthz` and `/readyz` (MetalLB's port,
//! 7472, by default).
use std::sync::atomic::{AtomicBool, Ordering};

use crate::ipam::allocator::PoolUsage;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

/// MetalLB's `metallb_k8s_client_*` metrics: how configuration updates went. Both binaries
/// export them.
#[derive(Clone, Debug, Default)]
pub struct ConfigMetrics {
    pub loaded: Gauge,
    pub stale: Gauge,
    pub updates: Counter,
    pub update_errors: Counter,
}

impl ConfigMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "metallb_k8s_client_config_loaded_bool",
            "1 if a valid configuration has been loaded",
            self.loaded.clone(),
        );
        registry.register(
            "metallb_k8s_client_config_stale_bool",
            "1 if the latest configuration was rejected and an older one is in force",
            self.stale.clone(),
        );
        // prometheus-client appends `_total` to counters itself.
        registry.register(
            "metallb_k8s_client_updates",
            "Number of configuration updates processed",
            self.updates.clone(),
        );
        registry.register(
            "metallb_k8s_client_update_errors",
            "Number of configuration updates that failed (the last good configuration stays)",
            self.update_errors.clone(),
        );
    }

    /// A configuration was accepted.
    pub fn applied(&self) {
        self.updates.inc();
        self.loaded.set(1);
        self.stale.set(0);
    }

    /// A configuration was rejected: if one was loaded before, it is now stale.
    pub fn rejected(&self) {
        self.updates.inc();
        self.update_errors.inc();
        self.stale.set(self.loaded.get());
    }
}

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    /// What `/readyz` answers: the in-cluster controller is ready once its caches are filled.
    pub ready: AtomicBool,
    pub addresses_total: Family<PoolLabel, Gauge>,
    pub addresses_in_use: Family<PoolLabel, Gauge>,
    pub services_allocated: Family<PoolLabel, Gauge>,
    pub ipv4_addresses_total: Family<PoolLabel, Gauge>,
    pub ipv4_addresses_in_use: Family<PoolLabel, Gauge>,
    pub ipv6_addresses_total: Family<PoolLabel, Gauge>,
    pub ipv6_addresses_in_use: Family<PoolLabel, Gauge>,
    pub config: ConfigMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            addresses_total: Family::default(),
            addresses_in_use: Family::default(),
            services_allocated: Family::default(),
            ipv4_addresses_total: Family::default(),
            ipv4_addresses_in_use: Family::default(),
            ipv6_addresses_total: Family::default(),
            ipv6_addresses_in_use: Family::default(),
            config: ConfigMetrics::default(),
            registry: Registry::default(),
            ready: AtomicBool::new(true),
        };
        // prometheus-client appends `_total` to counters itself, so those are registered
        // without it; the gauges carry MetalLB's full names.
        registry.register(
            "metallb_allocator_addresses_total",
            "Number of usable IP addresses, per pool",
            m.addresses_total.clone(),
        );
        registry.register(
            "metallb_allocator_addresses_in_use_total",
            "Number of IP addresses in use, per pool",
            m.addresses_in_use.clone(),
        );
        for (name, help, family) in [
            (
                "metallb_allocator_ipv4_addresses_total",
                "Number of usable IPv4 addresses, per pool",
                &m.ipv4_addresses_total,
            ),
            (
                "metallb_allocator_ipv4_addresses_in_use_total",
                "Number of IPv4 addresses in use, per pool",
                &m.ipv4_addresses_in_use,
            ),
            (
                "metallb_allocator_ipv6_addresses_total",
                "Number of usable IPv6 addresses, per pool",
                &m.ipv6_addresses_total,
            ),
            (
                "metallb_allocator_ipv6_addresses_in_use_total",
                "Number of IPv6 addresses in use, per pool",
                &m.ipv6_addresses_in_use,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "metallb_allocator_services_allocated_total",
            "Number of Services with addresses, per pool",
            m.services_allocated.clone(),
        );
        m.config.register(&mut registry);
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// A configuration was accepted.
    pub fn config_applied(&self) {
        self.config.applied();
    }

    /// A configuration was rejected: if one was loaded before, it is now stale.
    pub fn config_rejected(&self) {
        self.config.rejected();
    }

    /// The per-pool gauges after a plan.
    pub fn record_usage(&self, usage: &std::collections::BTreeMap<String, PoolUsage>) {
        for family in [
            &self.addresses_total,
            &self.addresses_in_use,
            &self.services_allocated,
            &self.ipv4_addresses_total,
            &self.ipv4_addresses_in_use,
            &self.ipv6_addresses_total,
            &self.ipv6_addresses_in_use,
        ] {
            family.clear();
        }
        // MetalLB reports pools of 2^63 addresses and more as the largest gauge value.
        let gauge = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
        for (pool, u) in usage {
            let label = PoolLabel { pool: pool.clone() };
            self.addresses_total
                .get_or_create(&label)
                .set(gauge(u.capacity));
            self.addresses_in_use
                .get_or_create(&label)
                .set(gauge(u.in_use));
            self.services_allocated
                .get_or_create(&label)
                .set(gauge(u.services as u128));
            for (family, n) in [
                (&self.ipv4_addresses_total, u.ipv4_capacity),
                (&self.ipv4_addresses_in_use, u.ipv4_in_use),
                (&self.ipv6_addresses_total, u.ipv6_capacity),
                (&self.ipv6_addresses_in_use, u.ipv6_in_use),
            ] {
                family.get_or_create(&label).set(gauge(n));
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl crate::metrics_server::Exporter for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
