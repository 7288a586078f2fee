//! `lb-agent run` in standalone mode: the configuration directory (metallb.io objects, Nodes,
//! Services and the controller's `status/allocations.yaml`) and the peers' heartbeats in; the
//! VIPs this node owns into the XDP maps (and onto `xdplb0`), with gratuitous ARP / unsolicited
//! NA on takeover, out.
//!
//! One loop, ticking every heartbeat interval: send a heartbeat to every other Node, renew the
//! data-path lease, and recompute what this node announces when the alive set or the
//! configuration changed. Heartbeats are read as they arrive. The lease is as long as the
//! failure timeout: if this agent dies, its XDP program stops answering for its VIPs by the
//! time the peers have declared it dead and taken them over.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use lb_common::{SlotBits, VIP_FLAG_SPREAD};
use lb_controller::{
    config::types::{ServiceBGPStatus, ServiceL2Status},
    configstate,
};
use tokio::{net::UdpSocket, sync::watch};
use tracing::{info, warn};

use crate::{
    bgp,
    cli::Mode,
    desired::{self, Announcement},
    l2::{
        afpacket::PacketSocket,
        announce,
        iface::Interface,
        maps::{VipEntry, monotonic_ns},
        responders::Responders,
        vipdev,
    },
    membership::{
        detector::{Detector, Heard},
        heartbeat::{Heartbeat, HeartbeatError, Phase},
    },
    metrics::{AgentMetrics, ModeLabel, Rejected},
    slots::{self, SlotTable},
    source::{self, Config, trim_heap},
    statuses::{self, StatusKind},
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// This node's name, as in the Node objects.
    #[arg(long)]
    pub node_name: String,
    /// The standalone configuration directory (the controller writes status/ inside it).
    /// Without it the agent runs in a cluster (in-cluster credentials, or `$KUBECONFIG`).
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// In a cluster: where the metallb.io objects and the `memberlist` Secret live.
    #[arg(long, env = "POD_NAMESPACE", default_value = "metallb-system")]
    pub namespace: String,
    /// In a cluster: this agent's Pod name and UID (the downward API's `metadata.name` and
    /// `metadata.uid`): it owns the ServiceL2Status, ServiceBGPStatus and ConfigurationState
    /// objects the agent writes, so they go with the Pod.
    #[arg(long, env = "POD_NAME", requires = "pod_uid")]
    pub pod_name: Option<String>,
    #[arg(long, env = "POD_UID", requires = "pod_name")]
    pub pod_uid: Option<String>,
    /// In a cluster: serve only Services with this spec.loadBalancerClass (default: those with
    /// none, like MetalLB).
    #[arg(long)]
    pub lb_class: Option<String>,
    /// Interface to announce on (repeat for several). Default: every interface that is up,
    /// Ethernet, not loopback and has a global address, as MetalLB's speaker does.
    #[arg(long = "interface", short = 'i')]
    pub interfaces: Vec<String>,
    #[arg(long, default_value = lb_common::DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// How ARP/NDP is answered: XDP where it attaches and AF_PACKET elsewhere (`auto`), or
    /// only one of them.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// The shared membership secret (default: DIR/secret; in a cluster, the `memberlist`
    /// Secret's `secretkey`).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// UDP port of the membership heartbeats (MetalLB's memberlist port).
    #[arg(long, default_value_t = 7946)]
    pub port: u16,
    /// How often a heartbeat goes to every peer.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// Silence after which a peer is dead (and the data-path lease of this node's VIPs).
    #[arg(long, default_value = "180ms", value_parser = humantime::parse_duration)]
    pub failure_timeout: Duration,
    /// Where to serve /metrics, /healthz and /readyz (MetalLB's port by default).
    #[arg(long, default_value = "0.0.0.0:7472")]
    pub metrics_addr: SocketAddr,
    /// TCP port to accept BGP peers' connections on (sessions are also opened from here).
    #[arg(long, default_value_t = 179)]
    pub bgp_port: u16,
    /// Do not put owned VIPs on the local `xdplb0` device.
    #[arg(long)]
    pub no_local_vip: bool,
}

/// The map entries for `announced` on `ifaces`; the VIPs in `spread` are flagged
/// active-active.
fn entries(
    announced: &BTreeSet<Announcement>,
    ifaces: &[Interface],
    spread: &BTreeMap<IpAddr, SlotBits>,
) -> Vec<VipEntry> {
    announced
        .iter()
        .flat_map(|a| {
            let flags = if spread.contains_key(&a.vip) {
                VIP_FLAG_SPREAD
            } else {
                0
            };
            ifaces
                .iter()
                .filter(|i| a.interfaces.is_empty() || a.interfaces.contains(&i.name))
                .map(move |i| VipEntry {
                    addr: a.vip,
                    ifindex: i.index,
                    mac: i.mac,
                    flags,
                })
        })
        .collect()
}

/// This node's slots of each shared VIP, one table per distinct set of nodes.
fn slot_bits(node: &str, spread: &BTreeMap<IpAddr, Arc<[String]>>) -> BTreeMap<IpAddr, SlotBits> {
    let mut tables: BTreeMap<&[String], SlotBits> = BTreeMap::new();
    spread
        .iter()
        .map(|(vip, nodes)| {
            let bits = *tables
                .entry(&nodes[..])
                .or_insert_with(|| SlotTable::new(nodes).bits(node));
            (*vip, bits)
        })
        .collect()
}

/// The slots of each shared VIP that this node answers now and did not before: `before`
/// holds the previous slots, and a VIP announced before without a table was answered for
/// every requester.
fn gained_slots(
    before: &BTreeMap<IpAddr, SlotBits>,
    announced_before: &BTreeSet<Announcement>,
    now: &BTreeMap<IpAddr, SlotBits>,
) -> BTreeMap<IpAddr, SlotBits> {
    let whole: BTreeSet<IpAddr> = announced_before.iter().map(|a| a.vip).collect();
    now.iter()
        .filter_map(|(vip, bits)| {
            let old = match before.get(vip) {
                Some(b) => *b,
                None if whole.contains(vip) => SlotBits::FULL,
                None => SlotBits::EMPTY,
            };
            let gained = slots::gained(&old, bits);
            (gained.count() > 0).then_some((*vip, gained))
        })
        .collect()
}

/// This agent's heartbeats: one epoch per run, numbered within it.
struct Beats {
    node: String,
    epoch: u64,
    seq: u64,
}

impl Beats {
    fn next(&mut self, phase: Phase) -> Heartbeat {
        self.seq += 1;
        Heartbeat {
            node: self.node.clone(),
            epoch: self.epoch,
            seq: self.seq,
            hold_ms: 0,
            phase,
        }
    }
}

/// Signs `hb` with `secret` (nothing is sent without one) and sends it to every peer; returns
/// the peers it could not be sent to.
async fn broadcast(
    udp: &UdpSocket,
    peers: &[SocketAddr],
    secret: Option<&[u8]>,
    hb: &Heartbeat,
) -> Vec<(SocketAddr, std::io::Error)> {
    let mut failed = Vec::new();
    let Some(Ok(datagram)) = secret.map(|k| hb.encode(k)) else {
        return failed;
    };
    for peer in peers {
        if let Err(e) = udp.send_to(&datagram, peer).await {
            failed.push((*peer, e));
        }
    }
    failed
}

/// MetalLB's `nodeAssigned` Event on each Service this node started announcing.
async fn node_assigned(
    recorder: kube::runtime::events::Recorder,
    services: BTreeSet<String>,
    node: String,
    protocol: &'static str,
) {
    use k8s_openapi::api::core::v1::ObjectReference;
    use kube::runtime::events::{Event, EventType};
    for service in services {
        let Some((namespace, name)) = service.split_once('/') else {
            continue;
        };
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Normal,
            reason: "nodeAssigned".into(),
            note: Some(format!(
                "announcing from node {node:?} with protocol {protocol:?}"
            )),
            action: "Announce".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            warn!(%service, error = %e, "cannot record the nodeAssigned Event");
        }
    }
}

/// Deletes this node's status objects of kind `K`, giving up after 2 s.
async fn clear_statuses<K: StatusKind>(client: &kube::Client, namespace: &str, node: &str) {
    let api: kube::Api<K> = kube::Api::namespaced(client.clone(), namespace);
    let cleared = tokio::time::timeout(
        Duration::from_secs(2),
        statuses::sync(&api, node, None, &statuses::Wanted::new()),
    )
    .await;
    if !matches!(cleared, Ok(Ok(()))) {
        warn!(
            kind = K::KIND,
            "could not delete this node's status objects"
        );
    }
}

/// A usable membership secret: at least 16 bytes, so the HMAC is not trivially guessed.
fn check_secret(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.len() < 16 {
        return Err(format!(
            "the membership secret must be at least 16 bytes (it has {})",
            bytes.len()
        ));
    }
    Ok(bytes.to_vec())
}

/// Logs a refused heartbeat at most once per reason and interval: a flood of forged datagrams
/// is counted in full but must not flood the log.
struct RejectLog {
    last: [Option<Instant>; 3],
}

impl RejectLog {
    fn should_log(&mut self, why: Rejected, now: Instant) -> bool {
        let slot = &mut self.last[why as usize];
        if slot.is_some_and(|t| now.duration_since(t) < Duration::from_secs(10)) {
            return false;
        }
        *slot = Some(now);
        true
    }
}

fn rejected_by(e: &HeartbeatError) -> Rejected {
    match e {
        HeartbeatError::Auth | HeartbeatError::Key => Rejected::Auth,
        _ => Rejected::Malformed,
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    // A file (standalone, or --secret-file) is read now and must be right; in a cluster the
    // Secret arrives with the configuration.
    let secret_path = args
        .secret_file
        .clone()
        .or_else(|| args.config_dir.as_ref().map(|d| d.join("secret")));
    let mut secret: Option<Vec<u8>> = match &secret_path {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading the membership secret {}", path.display()))?;
            Some(
                check_secret(bytes.trim_ascii())
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            )
        }
        None => None,
    };
    let metrics = Arc::new(AgentMetrics::new(args.bpffs.clone()));
    let (listener, metrics_at) = lb_controller::metrics::bind(args.metrics_addr)
        .await
        .with_context(|| format!("--metrics-addr {}", args.metrics_addr))?;
    tokio::spawn(lb_controller::metrics::serve(listener, metrics.clone()));
    let names = if args.interfaces.is_empty() {
        let found = vipdev::discover(&vipdev::connect()?).await?;
        if found.is_empty() {
            anyhow::bail!(
                "no interface to announce on: none is up, Ethernet and addressed; name one with --interface"
            );
        }
        info!(interfaces = ?found, "announcing on the interfaces found (--interface to choose)");
        found
    } else {
        args.interfaces.clone()
    };
    let mut ifaces = Vec::new();
    for name in &names {
        ifaces.push(Interface::lookup(name)?);
    }
    let mut responders =
        Responders::start(&args.bpffs, &ifaces, crate::cli::choice(args.mode), 0, true)?;
    for (_, mode) in &responders.modes {
        metrics
            .datapath
            .get_or_create(&ModeLabel { mode: mode.clone() })
            .set(1);
    }
    let lease_ns = u64::try_from(args.failure_timeout.as_nanos()).unwrap_or(u64::MAX);
    // Entries left by a previous agent whose lease still runs are being answered right now:
    // keep answering them (and say so to the peers) until this agent has decided. Stale ones
    // (the lease lapsed, so the peers have taken them over) must not come back to life.
    let mut phase = if responders.adopted_live()? {
        info!("adopting the previous agent's VIPs until the peers are heard");
        Phase::Active
    } else {
        responders.apply(&[], &BTreeMap::new())?;
        Phase::Joining
    };
    responders.renew(monotonic_ns().saturating_add(lease_ns))?;
    let sockets = ifaces
        .iter()
        .map(|i| Ok((i.index, PacketSocket::open(i, false)?)))
        .collect::<Result<Vec<_>, crate::l2::L2Error>>()?;
    let sockets = Arc::new(sockets);
    let netlink = if args.no_local_vip {
        None
    } else {
        let handle = vipdev::connect()?;
        let index = vipdev::ensure(&handle).await?;
        for iface in &ifaces {
            vipdev::quiet_arp(&iface.name)?;
        }
        Some((handle, index))
    };
    // xdplb0 follows the announcements from a task of its own: with thousands of VIPs a sync
    // takes long enough to delay heartbeats. Only the latest wanted set matters.
    let local = netlink.clone().map(|(handle, index)| {
        let (tx, mut rx) = tokio::sync::watch::channel(BTreeSet::<IpAddr>::new());
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let vips = rx.borrow_and_update().clone();
                if let Err(e) = vipdev::sync(&handle, index, &vips).await {
                    warn!(error = %e, "cannot update xdplb0");
                }
                trim_heap();
            }
        });
        tx
    });

    let udp = UdpSocket::bind(("::", args.port))
        .await
        .or_else(|_| {
            std::net::UdpSocket::bind(("0.0.0.0", args.port)).and_then(|s| {
                s.set_nonblocking(true)?;
                UdpSocket::from_std(s)
            })
        })
        .with_context(|| format!("binding UDP port {}", args.port))?;
    let mut beats = Beats {
        node: args.node_name.clone(),
        epoch: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        seq: 0,
    };
    let mut detector = Detector::new(args.failure_timeout);
    let started = Instant::now();
    let mut ready = false;
    let mut config: Option<Arc<Config>> = None;
    let mut config_error: Option<String> = None;
    let mut announced: BTreeSet<Announcement> = BTreeSet::new();
    // This node's slots of each active-active VIP it announces.
    let mut spread_bits: BTreeMap<IpAddr, SlotBits> = BTreeMap::new();
    // What the announcement tasks may still announce.
    let (held, _) = watch::channel(announce::Held::default());
    let mut input_problems: Vec<String> = Vec::new();
    let mut last_alive: BTreeSet<String> = BTreeSet::new();
    // The run (epoch) each lost peer was in when it was lost.
    let mut lost_in: BTreeMap<String, u64> = BTreeMap::new();
    let mut reject_log = RejectLog { last: [None; 3] };
    let mut ticker = tokio::time::interval(args.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let client = match &args.config_dir {
        Some(_) => None,
        None => Some(kube::Client::try_default().await.context(
            "no --config-dir, and no Kubernetes credentials (in-cluster or $KUBECONFIG)",
        )?),
    };
    // In a cluster, MetalLB's Event on every Service this node starts announcing.
    let recorder = client.as_ref().map(|c| {
        kube::runtime::events::Recorder::new(
            c.clone(),
            kube::runtime::events::Reporter {
                controller: "xdplb-agent".into(),
                instance: Some(args.node_name.clone()),
            },
        )
    });
    // In a cluster, the ServiceL2Status and ServiceBGPStatus objects follow what this node
    // announces.
    let pod = args
        .pod_name
        .clone()
        .zip(args.pod_uid.clone())
        .map(|(name, uid)| statuses::Pod { name, uid });
    let status_task = |kind: fn(
        kube::Client,
        String,
        String,
        Option<statuses::Pod>,
        watch::Receiver<statuses::Wanted>,
    )| {
        client.as_ref().map(|c| {
            let (tx, rx) = watch::channel(statuses::Wanted::new());
            kind(
                c.clone(),
                args.namespace.clone(),
                args.node_name.clone(),
                pod.clone(),
                rx,
            );
            tx
        })
    };
    // And the node's ConfigurationState says whether its configuration is accepted.
    let config_state = client.as_ref().map(|c| {
        let (tx, rx) = watch::channel(None);
        configstate::spawn(
            c.clone(),
            configstate::Reporter::speaker(
                &args.namespace,
                &args.node_name,
                pod.as_ref().map(statuses::Pod::owner),
            ),
            rx,
        );
        tx
    });
    let say = |problems: Vec<String>| {
        if let Some(tx) = &config_state {
            configstate::say(tx, problems);
        }
    };
    let l2_status = status_task(statuses::spawn::<ServiceL2Status>);
    let bgp_status = status_task(statuses::spawn::<ServiceBGPStatus>);
    let mut bgp_assigned: BTreeSet<String> = BTreeSet::new();
    let mut configs = match (&args.config_dir, &client) {
        (Some(dir), _) => source::watch(dir.clone(), args.node_name.clone(), args.port)?,
        (None, None) => anyhow::bail!("neither --config-dir nor a Kubernetes client"),
        (None, Some(client)) => source::cluster::watch(
            client.clone(),
            source::cluster::Options {
                namespace: args.namespace.clone(),
                node: args.node_name.clone(),
                port: args.port,
                lb_class: args.lb_class.clone(),
            },
        ),
    };
    let mut secret_problem: Option<String> = None;
    // Whether the configuration changed since the announcements were last computed.
    let mut dirty = true;
    // VIPs lost to a configuration change, still answered until the deadline (see below).
    let mut lingering: BTreeMap<Announcement, Instant> = BTreeMap::new();
    let speaker = bgp::speaker::Speaker::spawn(
        metrics.bgp.clone(),
        metrics.bfd.clone(),
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, args.bgp_port)),
    );
    // Unnumbered BGPPeers' addresses, found by router advertisements on their interfaces.
    let discovery = bgp::unnumbered::Discovery::spawn();
    let mut neighbors = discovery.found();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut buf = vec![0u8; 1500];
    info!(
        node = %args.node_name,
        metrics = %metrics_at,
        "running; waiting one failure timeout to hear the peers"
    );
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Ok(()) = neighbors.changed() => {
                if let Some(c) = &config {
                    speaker.apply(bgp::unnumbered::resolve(&c.bgp, &neighbors.borrow_and_update()));
                }
                continue;
            }
            Some(update) = configs.recv() => {
                match update {
                    Ok(c) => {
                        match &c.refused {
                            Some(e) if config_error.as_ref() != Some(e) => {
                                warn!(problem = %e, "configuration rejected; the last good one stays");
                            }
                            _ => {}
                        }
                        config_error.clone_from(&c.refused);
                        say(c.refused.iter().cloned().collect());
                        if secret_path.is_none() {
                            let from_cluster = match &c.secret {
                                Some(bytes) => check_secret(bytes),
                                None => Err(format!(
                                    "Secret {}/{} (key {}) is missing",
                                    args.namespace,
                                    source::cluster::MEMBERLIST_SECRET,
                                    source::cluster::MEMBERLIST_KEY
                                )),
                            };
                            match from_cluster {
                                Ok(s) => {
                                    secret = Some(s);
                                    secret_problem = None;
                                }
                                Err(e) => {
                                    if secret_problem.as_deref() != Some(&e) {
                                        warn!(problem = %e, "no usable membership secret: heartbeats neither sent nor accepted");
                                    }
                                    secret_problem = Some(e);
                                }
                            }
                        }
                        discovery.want(bgp::unnumbered::interfaces(&c.bgp));
                        speaker.apply(bgp::unnumbered::resolve(&c.bgp, &neighbors.borrow()));
                        if let Some(tx) = &bgp_status {
                            tx.send_if_modified(|w| {
                                let changed = *w != c.bgp_services;
                                w.clone_from(&c.bgp_services);
                                changed
                            });
                        }
                        if let Some(recorder) = &recorder {
                            let now: BTreeSet<String> = c.bgp_services.keys().cloned().collect();
                            let fresh: BTreeSet<String> =
                                now.difference(&bgp_assigned).cloned().collect();
                            if !fresh.is_empty() {
                                tokio::spawn(node_assigned(
                                    recorder.clone(),
                                    fresh,
                                    args.node_name.clone(),
                                    "bgp",
                                ));
                            }
                            bgp_assigned = now;
                        }
                        if c.inputs.problems != input_problems {
                            for p in &c.inputs.problems {
                                warn!(problem = %p, "annotation ignored");
                            }
                            input_problems.clone_from(&c.inputs.problems);
                        }
                        if c.refused.is_some() {
                            metrics.config.rejected();
                        } else {
                            metrics.config.applied();
                        }
                        config = Some(c);
                        dirty = true;
                    }
                    Err(e) => {
                        if config_error.as_deref() != Some(&e) {
                            warn!(problem = %e, "configuration rejected; the last good one stays");
                        }
                        say(vec![e.clone()]);
                        config_error = Some(e);
                        metrics.config.rejected();
                        continue;
                    }
                }
            }
            got = udp.recv_from(&mut buf) => {
                let Ok((n, from)) = got else { continue };
                let now = Instant::now();
                let Some(key) = &secret else {
                    metrics.rejected(Rejected::Auth);
                    continue;
                };
                let hb = match Heartbeat::decode(&buf[..n], key) {
                    Ok(hb) => hb,
                    Err(e) => {
                        let why = rejected_by(&e);
                        metrics.rejected(why);
                        if reject_log.should_log(why, now) {
                            warn!(%from, error = %e, "heartbeat refused (counted in xdplb_membership_heartbeats_rejected_total; logged once per 10 s)");
                        }
                        continue;
                    }
                };
                if hb.node == args.node_name {
                    // This agent never sends to itself: a valid heartbeat in its own name is a
                    // recording played back.
                    metrics.rejected(Rejected::Replay);
                    continue;
                }
                let hold = (hb.hold_ms > 0)
                    .then(|| now + Duration::from_millis(u64::from(hb.hold_ms)));
                match detector.heard(&hb.node, hb.epoch, hb.seq, hb.phase, hold, now) {
                    Heard::Replayed => {
                        metrics.rejected(Rejected::Replay);
                        if reject_log.should_log(Rejected::Replay, now) {
                            warn!(%from, peer = %hb.node, "replayed heartbeat refused");
                        }
                    }
                    Heard::Changed => {
                        metrics.heartbeats_received.inc();
                        if hb.phase == Phase::Leaving {
                            info!(peer = %hb.node, "peer is leaving");
                        }
                        // Act now (take over from a leaving peer, hand back to a ready one)
                        // rather than at the next tick.
                        ticker.reset_immediately();
                    }
                    Heard::Unchanged => {
                        metrics.heartbeats_received.inc();
                    }
                }
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        let now = Instant::now();
        // Heartbeats and lease first: they are what keeps this node's claims valid. Until this
        // agent has applied its first decision it says it is joining, so the peers keep what
        // they announce; the heartbeat after that says it is active and they let go: make
        // before break.
        if let Some(c) = &config {
            // A lost datagram is what the failure timeout is for: nothing to report here.
            let _ = broadcast(&udp, &c.peers, secret.as_deref(), &beats.next(phase)).await;
        }
        responders.renew(monotonic_ns().saturating_add(lease_ns))?;
        let Some(c) = &config else {
            continue;
        };
        if now.duration_since(started) < args.failure_timeout {
            continue;
        }
        let mut alive = detector.alive(now);
        metrics.peers_alive.set(alive.len() as i64);
        alive.insert(args.node_name.clone());
        let membership_changed = alive != last_alive;
        // A peer heard again in the same run it was lost in lived through a partition, and
        // believing this node dead it may have told this node's clients to go to it: they are
        // told to come back below. A peer that restarted told no one anything.
        let mut rejoined = false;
        if membership_changed {
            for back in alive.difference(&last_alive) {
                if let (Some(lost), Some(current)) = (lost_in.remove(back), detector.epoch(back)) {
                    rejoined |= lost == current;
                }
            }
            for gone in last_alive.difference(&alive) {
                if let Some(epoch) = detector.epoch(gone) {
                    lost_in.insert(gone.clone(), epoch);
                }
                // A silent death (not a goodbye): how long the silence lasted until now.
                if let Some(heard) = detector.last_heard(gone) {
                    let silence = now.saturating_duration_since(heard);
                    if silence >= args.failure_timeout {
                        metrics.detection.observe(silence.as_secs_f64());
                    }
                }
            }
            info!(alive = ?alive, "membership changed");
            last_alive = alive.clone();
        }
        // Recomputed only when something it depends on changed: with thousands of Services it
        // is not free, and the loop must stay quick to keep the heartbeats on time.
        if ready && !dirty && !membership_changed && lingering.is_empty() {
            continue;
        }
        dirty = false;
        let desired::Layer2 {
            announcements: wanted,
            spread,
        } = desired::layer2(&args.node_name, &c.inputs, &c.allocations, &alive);
        // A VIP lost to a configuration change (the membership is the same) stays answered for
        // one failure timeout: the new owner may read the change a moment later than this agent,
        // and the VIP must not be left without an answer meanwhile. Losses to a peer becoming
        // ready are immediate: that peer announces already.
        let expired: BTreeSet<Announcement> = lingering
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(a, _)| a.clone())
            .collect();
        lingering.retain(|a, until| *until > now && !wanted.contains(a));
        if ready && !membership_changed {
            for a in announced.difference(&wanted) {
                if !expired.contains(a) {
                    lingering
                        .entry(a.clone())
                        .or_insert(now + args.failure_timeout);
                }
            }
        }
        let mut next = wanted;
        next.extend(lingering.keys().cloned());
        let mut next_bits = slot_bits(&args.node_name, &spread);
        for a in lingering.keys() {
            if let Some(bits) = spread_bits.get(&a.vip) {
                next_bits.entry(a.vip).or_insert(*bits);
            }
        }
        let first = !ready;
        ready = true;
        phase = Phase::Active;
        metrics.set_ready();
        // xdplb0 holds what this node owns at Layer 2 and what it advertises over BGP.
        let mut local_ips: BTreeSet<IpAddr> = next.iter().map(|a| a.vip).collect();
        local_ips.extend(c.bgp_ips.iter().copied());
        if let Some(local) = &local {
            local.send_if_modified(|current| {
                let changed = *current != local_ips;
                *current = std::mem::take(&mut local_ips);
                changed
            });
        }
        if next == announced && next_bits == spread_bits && !first {
            continue;
        }
        let gained: Vec<&Announcement> = next.difference(&announced).collect();
        let lost: Vec<&Announcement> = announced.difference(&next).collect();
        for a in &gained {
            match next_bits.get(&a.vip) {
                Some(bits) => {
                    info!(vip = %a.vip, service = %a.service, slots = bits.count(), "sharing (active-active)")
                }
                None => info!(vip = %a.vip, service = %a.service, "taking over"),
            }
        }
        for a in &lost {
            info!(vip = %a.vip, service = %a.service, "releasing");
        }
        if !first {
            let whole = gained.iter().filter(|a| !next_bits.contains_key(&a.vip));
            metrics.takeovers.inc_by(whole.count() as u64);
        }
        let took_slots = if rejoined {
            next_bits.clone()
        } else {
            gained_slots(&spread_bits, &announced, &next_bits)
        };
        if let Some(recorder) = &recorder {
            let services: BTreeSet<String> = gained.iter().map(|a| a.service.clone()).collect();
            tokio::spawn(node_assigned(
                recorder.clone(),
                services,
                args.node_name.clone(),
                "layer2",
            ));
        }
        // Make before break: the maps gain the new VIPs before losing the old ones.
        responders.apply(&entries(&next, &ifaces, &next_bits), &next_bits)?;
        metrics.announced.set(next.len() as i64);
        if let Some(l2) = &l2_status {
            let mut wanted = statuses::Wanted::new();
            for a in &next {
                let names = wanted.entry(a.service.clone()).or_default();
                if a.interfaces.is_empty() {
                    names.extend(ifaces.iter().map(|i| i.name.clone()));
                } else {
                    names.extend(a.interfaces.iter().cloned());
                }
            }
            l2.send_replace(wanted);
        }
        // Shared VIPs are announced to no one but the clients of the slots taken over.
        let fresh: BTreeSet<Announcement> = gained
            .into_iter()
            .filter(|a| !next_bits.contains_key(&a.vip))
            .cloned()
            .collect();
        let burst = entries(&fresh, &ifaces, &BTreeMap::new());
        let notices: Vec<announce::Notice> = if took_slots.is_empty() {
            Vec::new()
        } else {
            responders
                .clients()
                .iter()
                .filter(|c| took_slots.get(&c.vip).is_some_and(|g| g.contains(c.slot())))
                .filter_map(|c| {
                    let iface = ifaces.iter().find(|i| i.index == c.ifindex)?;
                    announce::notice(c, iface.mac)
                })
                .collect()
        };
        if !took_slots.is_empty() && !first {
            info!(
                vips = took_slots.len(),
                clients = notices.len(),
                "took over slots of shared VIPs; telling their recorded clients"
            );
        }
        held.send_replace(announce::Held {
            whole: next
                .iter()
                .map(|a| a.vip)
                .filter(|v| !next_bits.contains_key(v))
                .collect(),
            slots: next_bits.clone(),
        });
        if !burst.is_empty() || !notices.is_empty() {
            let sockets = sockets.clone();
            let metrics = metrics.clone();
            let mut held = held.subscribe();
            tokio::spawn(async move {
                let count = |ip: IpAddr| {
                    metrics
                        .gratuitous
                        .add(&crate::metrics::IpLabel { ip: ip.to_string() }, 1);
                };
                let start = tokio::time::Instant::now();
                for at in announce::SCHEDULE {
                    tokio::time::sleep_until(start + at).await;
                    // Only what this node still holds: a repeat for a VIP (or slot) handed
                    // on since would pull its clients back.
                    let now = held.borrow_and_update().clone();
                    let burst: Vec<VipEntry> = burst
                        .iter()
                        .filter(|e| now.whole.contains(&e.addr))
                        .copied()
                        .collect();
                    let notices: Vec<announce::Notice> =
                        notices.iter().filter(|n| now.holds(n)).cloned().collect();
                    announce::send_round(&sockets, &burst, |e| count(e.addr));
                    announce::send_notices(&sockets, &notices, |n| count(n.vip));
                }
            });
        }
        announced = next;
        spread_bits = next_bits;
        trim_heap();
    }
    // Say goodbye (three times: UDP may drop one) so the peers take over at once, and keep
    // answering until they have: make before break for a planned shutdown too.
    if let Some(c) = &config {
        for _ in 0..3 {
            let bye = beats.next(Phase::Leaving);
            for (peer, e) in broadcast(&udp, &c.peers, secret.as_deref(), &bye).await {
                warn!(%peer, error = %e, "cannot say goodbye");
            }
        }
        if !announced.is_empty() {
            responders.renew(monotonic_ns().saturating_add(lease_ns.saturating_mul(2)))?;
            tokio::time::sleep(args.heartbeat_interval * 2).await;
        }
    }
    // Where graceful restart was agreed the routers keep our routes while we restart; other
    // sessions end with a Cease.
    speaker.stop(bgp::session::Stop::Restart).await;
    info!("withdrawing");
    drop(local);
    if let Some(c) = &client {
        // This node announces nothing any more: its status objects go too.
        drop((l2_status, bgp_status));
        clear_statuses::<ServiceL2Status>(c, &args.namespace, &args.node_name).await;
        clear_statuses::<ServiceBGPStatus>(c, &args.namespace, &args.node_name).await;
    }

    if let Some((handle, index)) = &netlink {
        vipdev::sync(handle, *index, &BTreeSet::new()).await?;
        vipdev::remove_if_empty(handle).await?;
    }
    responders.shutdown(&ifaces)?;
    Ok(())
}
