//! The agent's metrics, served on `/metrics` beside `/healthz` and `/readyz`.
//!
//! MetalLB's speaker names where MetalLB has the metric, so existing dashboards keep working:
//! `metallb_layer2_requests_received`, `metallb_layer2_responses_sent` and
//! `metallb_layer2_gratuitous_sent` (label `ip`), exposed without a `_total` suffix as MetalLB's
//! Go client does. The first two are read from the XDP program's per-CPU `vip_stats` map at
//! scrape time, so they count what the kernel answered, not what userspace thinks it did. The
//! rest (membership, failover, the data path) carry the `xdplb_` prefix.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
};

use lb_controller::metrics::{ConfigMetrics, Exporter};
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        MetricType, counter::Counter, family::Family, gauge::ConstGauge, gauge::Gauge,
        histogram::Histogram,
    },
    registry::Registry,
};

pub mod family;

pub use family::{Counts, IpLabel, PeerLabel, PerIp};

use crate::bfd::service::BfdMetrics;
use crate::bgp::speaker::BgpMetrics;
use crate::l2::maps::VipMaps;
use crate::membership::Rejected;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CounterLabel {
    pub counter: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: String,
}

/// Every metric the agent exports.
pub struct AgentMetrics {
    registry: Registry,
    ready: AtomicBool,
    pub gratuitous: PerIp,
    pub takeovers: Counter,
    pub detection: Histogram,
    pub peers_alive: Gauge,
    pub heartbeats_received: Counter,
    pub heartbeats_rejected: Family<ReasonLabel, Counter>,
    pub announced: Gauge,
    pub services_outside_pools: Gauge,
    pub datapath: Family<ModeLabel, Gauge>,
    pub config: ConfigMetrics,
    pub bgp: BgpMetrics,
    pub bfd: BfdMetrics,
}

/// One shared-VIP gauge from the VIP's slots and its (recorded, answered here) clients.
type ValueOf = fn(&lb_common::SlotBits, (i64, i64)) -> i64;

/// Reads the pinned maps on every scrape.
#[derive(Debug)]
struct Datapath {
    bpffs: PathBuf,
}

impl prometheus_client::collector::Collector for Datapath {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Maps not pinned yet (or gone at shutdown): nothing to report this time.
        let Ok(maps) = VipMaps::open_pinned(&self.bpffs) else {
            return Ok(());
        };
        let totals = maps.vip_totals();
        for (name, help, pick) in [
            (
                "metallb_layer2_requests_received",
                "Number of layer2 requests received for owned IPs",
                (|t: &crate::l2::maps::VipTotals| t.requests) as fn(&_) -> u64,
            ),
            (
                "metallb_layer2_responses_sent",
                "Number of layer2 responses sent for owned IPs",
                |t| t.responses,
            ),
        ] {
            // Declared a counter, written without `_total` like MetalLB's Go client.
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (ip, t) in &totals {
                let label = IpLabel { ip: ip.to_string() };
                let value = i64::try_from(pick(t)).unwrap_or(i64::MAX);
                ConstGauge::new(value).encode(family.encode_family(&label)?)?;
            }
        }
        let tables = maps.slot_tables();
        if !tables.is_empty() {
            let clients = maps.clients();
            let mut per_vip: BTreeMap<IpAddr, (i64, i64)> = BTreeMap::new();
            for c in &clients {
                let Some(bits) = tables.get(&c.vip) else {
                    continue;
                };
                let (seen, here) = per_vip.entry(c.vip).or_default();
                *seen += 1;
                *here += i64::from(bits.contains(c.slot()));
            }
            let families: [(&str, &str, ValueOf); 3] = [
                (
                    "xdplb_layer2_shared_slots",
                    "Slots of a shared (active-active) VIP this node answers, of 4096",
                    |bits, _| i64::from(bits.count()),
                ),
                (
                    "xdplb_layer2_shared_clients",
                    "Requesters of a shared VIP this node has recorded (every node sees them all)",
                    |_, c| c.0,
                ),
                (
                    "xdplb_layer2_shared_clients_answered",
                    "Recorded requesters of a shared VIP whose slot is this node's",
                    |_, c| c.1,
                ),
            ];
            for (name, help, value) in families {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for (ip, bits) in &tables {
                    let counts = per_vip.get(ip).copied().unwrap_or_default();
                    let label = IpLabel { ip: ip.to_string() };
                    ConstGauge::new(value(bits, counts)).encode(family.encode_family(&label)?)?;
                }
            }
        }
        if let Ok(c) = maps.counters() {
            let mut family = encoder.encode_descriptor(
                "xdplb_xdp_frames",
                "Frames seen by the XDP responder, by counter (all CPUs)",
                None,
                MetricType::Counter,
            )?;
            for counter in lb_common::Counter::ALL {
                let label = CounterLabel {
                    counter: counter.name(),
                };
                let value = i64::try_from(c.get(counter)).unwrap_or(i64::MAX);
                ConstGauge::new(value).encode(family.encode_family(&label)?)?;
            }
        }
        Ok(())
    }
}

/// Detection latencies: from a few heartbeat intervals up to seconds.
const DETECTION_BUCKETS: [f64; 10] = [0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0];

impl AgentMetrics {
    /// The metrics of an agent whose maps are pinned under `bpffs`.
    pub fn new(bpffs: PathBuf) -> Self {
        let mut registry = Registry::default();
        let m = AgentMetrics {
            registry: Registry::default(),
            ready: AtomicBool::new(false),
            gratuitous: PerIp::default(),
            takeovers: Counter::default(),
            detection: Histogram::new(DETECTION_BUCKETS),
            peers_alive: Gauge::default(),
            heartbeats_received: Counter::default(),
            heartbeats_rejected: Family::default(),
            announced: Gauge::default(),
            services_outside_pools: Gauge::default(),
            datapath: Family::default(),
            config: ConfigMetrics::default(),
            bgp: BgpMetrics::default(),
            bfd: BfdMetrics::default(),
        };
        registry.register_collector(Box::new(Datapath { bpffs }));
        registry.register(
            "metallb_layer2_gratuitous_sent",
            "Number of gratuitous layer2 packets sent for owned IPs as a result of failovers",
            m.gratuitous.clone(),
        );
        // prometheus-client appends `_total` to the counters below itself.
        registry.register(
            "xdplb_layer2_takeovers",
            "VIPs this node started announcing after it was ready (failovers and moves)",
            m.takeovers.clone(),
        );
        registry.register(
            "xdplb_membership_detection_seconds",
            "Time from a peer's last heartbeat until this agent counted it dead",
            m.detection.clone(),
        );
        registry.register(
            "xdplb_membership_peers_alive",
            "Peers this agent hears (itself not included)",
            m.peers_alive.clone(),
        );
        registry.register(
            "xdplb_membership_heartbeats_received",
            "Heartbeats accepted from peers",
            m.heartbeats_received.clone(),
        );
        registry.register(
            "xdplb_membership_heartbeats_rejected",
            "Heartbeats refused, by reason (malformed, auth, replay)",
            m.heartbeats_rejected.clone(),
        );
        registry.register(
            "xdplb_layer2_announced_vips",
            "VIP addresses this node announces",
            m.announced.clone(),
        );
        registry.register(
            "xdplb_agent_services_outside_pools",
            "Services not announced because no one IPAddressPool holds all their addresses",
            m.services_outside_pools.clone(),
        );
        registry.register(
            "xdplb_agent_datapath_info",
            "1 for the responder answering on each interface: xdp-native, xdp-generic or afpacket",
            m.datapath.clone(),
        );
        m.config.register(&mut registry);
        m.bgp.register(&mut registry);
        m.bfd.register(&mut registry);
        AgentMetrics { registry, ..m }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn rejected(&self, why: Rejected) {
        self.heartbeats_rejected
            .get_or_create(&ReasonLabel {
                reason: why.label(),
            })
            .inc();
    }
}

impl Exporter for AgentMetrics {
    fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
