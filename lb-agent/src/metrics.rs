//! The agent's metrics, served on `/metrics` beside `/healthz` and `/readyz`.
//!
//! MetalLB's speaker names where MetalLB has the metric, so existing dashboards keep working:
//! `metallb_layer2_requests_received`, `metallb_layer2_responses_sent` and
//! `metallb_layer2_gratuitous_sent` (label `ip`), exposed without a `_total` suffix as MetalLB's
//! Go client does. The first two are read from the XDP program's per-CPU `vip_stats` map
//! (on a thread of their own, at most every 250 ms however often scraped), so they count what
//! the kernel answered, not what userspace thinks it did. The
//! rest (membership, failover, the data path) carry the `xdplb_` prefix.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use lb_controller::{metrics::ConfigMetrics, metrics_server::Exporter};
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnnouncedLabel {
    pub ip: String,
    pub node: String,
    pub protocol: &'static str,
    pub service: String,
}

/// `(service, address)` pairs a protocol announces.
pub type Announced = BTreeSet<(String, IpAddr)>;

/// Every metric the agent exports.
pub struct AgentMetrics {
    registry: Registry,
    ready: AtomicBool,
    pub gratuitous: PerIp,
    pub takeovers: Counter,
    pub detection: Histogram,
    pub peers_alive: Gauge,
    /// 1 while the membership thread runs SCHED_FIFO.
    pub membership_realtime: Gauge,
    pub heartbeats_received: Counter,
    pub heartbeats_rejected: Family<ReasonLabel, Counter>,
    pub announced: Gauge,
    pub services_outside_pools: Gauge,
    pub vips_not_announced: Gauge,
    pub datapath: Family<ModeLabel, Gauge>,
    /// MetalLB's `metallb_speaker_announced`: 1 per Service, address and protocol this node
    /// announces (the desired state, as MetalLB's).
    speaker_announced: Family<AnnouncedLabel, Gauge>,
    announced_by: Mutex<BTreeMap<&'static str, Announced>>,
    pub config: ConfigMetrics,
    pub bgp: BgpMetrics,
    pub bfd: BfdMetrics,
}

/// One shared-VIP gauge from the VIP's slots and its (recorded, answered here) clients.
type ValueOf = fn(&lb_common::SlotBits, (i64, i64)) -> i64;

/// What the data path's maps held at one moment.
#[derive(Debug, Default)]
struct Snapshot {
    totals: BTreeMap<IpAddr, crate::l2::maps::VipTotals>,
    tables: BTreeMap<IpAddr, lb_common::SlotBits>,
    /// Per shared VIP: clients recorded, and those whose slot is this node's.
    clients: BTreeMap<IpAddr, (i64, i64)>,
    counters: Option<crate::l2::maps::Counters>,
}

impl Snapshot {
    /// Dumps the pinned maps (nothing when they are not pinned yet, or gone at shutdown).
    fn read(bpffs: &std::path::Path) -> Self {
        let Ok(maps) = VipMaps::open_pinned(bpffs) else {
            return Self::default();
        };
        let tables = maps.slot_tables();
        let mut clients: BTreeMap<IpAddr, (i64, i64)> = BTreeMap::new();
        if !tables.is_empty() {
            for c in &maps.clients() {
                let Some(bits) = tables.get(&c.vip) else {
                    continue;
                };
                let (seen, here) = clients.entry(c.vip).or_default();
                *seen += 1;
                *here += i64::from(bits.contains(c.slot()));
            }
        }
        Self {
            totals: maps.vip_totals(),
            tables,
            clients,
            counters: maps.counters().ok(),
        }
    }
}

/// A scrape's request for a snapshot: where to send it.
type Ask = std::sync::mpsc::SyncSender<Arc<Snapshot>>;

/// Reads the pinned maps for the scrapes, on a thread of its own: a dump of a large map costs
/// tens to hundreds of milliseconds of bpf() calls, which must never hold up the runtime that
/// sends heartbeats. Scrapes arriving within [`SNAPSHOT_REUSE`] of a dump share it, so a
/// flood of scrapes costs at most a few dumps a second, on this one thread.
#[derive(Debug)]
struct Datapath {
    ask: std::sync::mpsc::SyncSender<Ask>,
}

/// How long a snapshot answers scrapes before the maps are read again.
const SNAPSHOT_REUSE: std::time::Duration = std::time::Duration::from_millis(250);
/// How long a scrape waits for a snapshot before it goes without the data path's metrics.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Datapath {
    fn spawn(bpffs: PathBuf) -> Self {
        let (ask, asks) = std::sync::mpsc::sync_channel::<Ask>(64);
        let _ = std::thread::Builder::new()
            .name("datapath-metrics".into())
            .spawn(move || {
                // The lowest CPU class: on a saturated host the dumps wait (a scrape then goes
                // without these metrics) rather than take time from the heartbeats.
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: sets the calling thread's policy (pid 0) from a valid sched_param.
                unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
                let mut last: Option<(std::time::Instant, Arc<Snapshot>)> = None;
                // Ends when the metrics (and their sender) are dropped.
                while let Ok(reply) = asks.recv() {
                    let snapshot = match &last {
                        Some((at, snap)) if at.elapsed() < SNAPSHOT_REUSE => snap.clone(),
                        _ => {
                            let snap = Arc::new(Snapshot::read(&bpffs));
                            last = Some((std::time::Instant::now(), snap.clone()));
                            snap
                        }
                    };
                    let _ = reply.send(snapshot);
                }
            });
        Self { ask }
    }

    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.ask.try_send(reply).ok()?;
        answer.recv_timeout(SNAPSHOT_WAIT).ok()
    }
}

impl prometheus_client::collector::Collector for Datapath {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(snap) = self.snapshot() else {
            return Ok(());
        };
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
            for (ip, t) in &snap.totals {
                let label = IpLabel { ip: ip.to_string() };
                let value = i64::try_from(pick(t)).unwrap_or(i64::MAX);
                ConstGauge::new(value).encode(family.encode_family(&label)?)?;
            }
        }
        if !snap.tables.is_empty() {
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
                for (ip, bits) in &snap.tables {
                    let counts = snap.clients.get(ip).copied().unwrap_or_default();
                    let label = IpLabel { ip: ip.to_string() };
                    ConstGauge::new(value(bits, counts)).encode(family.encode_family(&label)?)?;
                }
            }
        }
        if let Some(c) = &snap.counters {
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
/// Fine around the default 30 ms timeout, and up to the slowest timers anyone sets.
const DETECTION_BUCKETS: [f64; 15] = [
    0.01, 0.02, 0.025, 0.03, 0.035, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 5.0,
];

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
            membership_realtime: Gauge::default(),
            heartbeats_received: Counter::default(),
            heartbeats_rejected: Family::default(),
            announced: Gauge::default(),
            services_outside_pools: Gauge::default(),
            vips_not_announced: Gauge::default(),
            datapath: Family::default(),
            speaker_announced: Family::default(),
            announced_by: Mutex::default(),
            config: ConfigMetrics::default(),
            bgp: BgpMetrics::default(),
            bfd: BfdMetrics::default(),
        };
        registry.register_collector(Box::new(Datapath::spawn(bpffs)));
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
            "xdplb_membership_realtime",
            "1 when the membership thread (heartbeats, failure detection, lease) runs with real-time scheduling, 0 when the agent may not (no CAP_SYS_NICE) or --membership-priority is 0",
            m.membership_realtime.clone(),
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
            "xdplb_layer2_vips_not_announced",
            "VIP addresses this node should announce but its data path's maps have no room for",
            m.vips_not_announced.clone(),
        );
        registry.register(
            "xdplb_agent_datapath_info",
            "1 for the responder answering on each interface: xdp-native, xdp-generic or afpacket",
            m.datapath.clone(),
        );
        registry.register(
            "metallb_speaker_announced",
            "Services being announced from this node. This is desired state, it does not guarantee that the routing protocols have converged.",
            m.speaker_announced.clone(),
        );
        m.config.register(&mut registry);
        m.bgp.register(&mut registry);
        m.bfd.register(&mut registry);
        AgentMetrics { registry, ..m }
    }

    /// What `protocol` (`layer2`, `bgp`) announces from `node` now.
    pub fn set_announced(&self, node: &str, protocol: &'static str, now: Announced) {
        let mut by = self.announced_by.lock().unwrap_or_else(|e| e.into_inner());
        if by.get(protocol) == Some(&now) {
            return;
        }
        by.insert(protocol, now);
        self.speaker_announced.clear();
        for (protocol, set) in by.iter() {
            for (service, ip) in set {
                self.speaker_announced
                    .get_or_create(&AnnouncedLabel {
                        ip: ip.to_string(),
                        node: node.to_owned(),
                        protocol,
                        service: service.clone(),
                    })
                    .set(1);
            }
        }
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
