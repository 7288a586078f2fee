//! `lb-agent run`: the driver. It wires the pieces (interfaces and responders, membership,
//! the configuration source, the BGP speaker, the reporter) and moves events between them in
//! one `select!` whose arms each call one handler:
//! - a tick, every heartbeat interval ([`Agent::tick`]): the election and the hand-over when
//!   membership or configuration changed;
//! - a membership [`View`] from the membership thread ([`crate::membership::thread`], which
//!   sends and receives the heartbeats, detects failures and renews the data-path lease on a
//!   real-time thread of its own): a change of the alive set acts at once;
//! - a configuration ([`Agent::configure`]), from a directory or the API server;
//! - unnumbered BGP neighbours found ([`Agent::neighbours`]);
//! - the announcing interfaces or their carrier changed ([`Agent::relink`]): an interface added
//!   is answered on, a removed one released, and this node's links as its heartbeats say them
//!   (the election prefers nodes whose VIP link is up and in the VIP's subnet) go out at once;
//! - SIGTERM or SIGINT ([`Agent::shutdown`]): a goodbye, then withdraw.
//!
//! The decisions are not here: who is alive is [`crate::membership::detector`]'s, who
//! announces and when the maps follow is [`crate::election`]'s, what goes over BGP is
//! [`crate::bgp::policy`]'s. The data-path lease is as long as the failure timeout: if this
//! agent dies, its XDP program stops answering for its VIPs by the time the peers have
//! declared it dead and taken them over.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{info, warn};

use crate::{
    bgp::{self, speaker::Speaker, unnumbered::Discovery},
    election::{
        self,
        handover::{Handover, Step},
    },
    heap::trim_heap,
    l2::{
        afpacket::PacketSocket,
        announce,
        iface::Interface,
        links::{Carrier, LinkState},
        maps::monotonic_ns,
        responders::{Responders, entries, without_interface},
        vipdev,
    },
    membership::{
        Members,
        claims::Claims,
        detector::View,
        driver::{Membership, check_secret},
        links::Links,
        realtime::Wanted,
        thread::{self, Handle},
    },
    metrics::{AgentMetrics, IpLabel, ModeLabel},
    source::{self, Config},
    statuses::{self, Reporter},
};

mod args;

pub use args::RunArgs;

/// A configuration reading, or why it was refused.
type Reading = Result<Arc<Config>, String>;

/// The agent's state between events.
struct Agent {
    node: String,
    namespace: String,
    heartbeat_interval: Duration,
    failure_timeout: Duration,
    metrics: Arc<AgentMetrics>,
    ifaces: Vec<Interface>,
    /// The announcing interfaces as netlink shows them.
    links: watch::Receiver<Vec<LinkState>>,
    /// Which of them count as up for the election.
    carrier: Carrier,
    /// Interfaces added since the maps were last written: the VIPs already answered are
    /// announced on them, and the maps must be written even if the election did not change.
    added: Vec<Interface>,
    responders: Responders,
    /// One per interface, for gratuitous ARP / unsolicited NA and notices.
    sockets: Arc<Vec<(u32, PacketSocket)>>,
    lease_ns: u64,
    /// `xdplb0` (none with `--no-local-vip`).
    local: Option<vipdev::Local>,
    membership: Handle,
    /// Who is alive, as the membership thread last said.
    members: Members,
    /// Whether membership changed (or a peer rejoined) since the election last ran.
    membership_changed: bool,
    rejoined: bool,
    /// The links this node's heartbeats say.
    links_said: Links,
    /// Whether the membership secret comes with the configuration (a cluster's Secret) rather
    /// than from a file.
    secret_from_config: bool,
    handover: Handover,
    /// What the announcement tasks may still announce.
    held: watch::Sender<announce::Held>,
    reporter: Reporter,
    speaker: Speaker,
    discovery: Discovery,
    neighbors: watch::Receiver<bgp::unnumbered::Found>,
    /// The BGP sessions' states, for the BGPSessionState objects.
    sessions: watch::Receiver<BTreeMap<String, bgp::speaker::SessionState>>,
    config: Option<Arc<Config>>,
    config_error: Option<String>,
    input_problems: Vec<String>,
    /// The Services last left out for addresses outside the pools (logged when this changes).
    outside_pools: Vec<String>,
    /// Why some VIPs are not in the data path's maps (full), as last reported.
    capacity_problem: Option<String>,
    /// Services last reported as having no interface to be answered on.
    no_interface: BTreeSet<String>,
    /// Whether the configuration changed since the announcements were last computed.
    dirty: bool,
    /// Whether this node holds more non-revertive VIPs than it can claim (logged once).
    claims_truncated: bool,
    started: Instant,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(args.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (mut agent, mut configs) = Agent::start(args).await?;
    loop {
        tokio::select! {
            _ = ticker.tick() => agent.tick().await?,
            Ok(()) = agent.neighbors.changed() => agent.neighbours(),
            Ok(()) = agent.sessions.changed() => {
                agent.reporter.sessions(&agent.sessions.borrow_and_update());
            }
            Ok(()) = agent.links.changed() => {
                if agent.relink() {
                    // Tell the peers and elect now: a VIP link that lost carrier is a failover.
                    ticker.reset_immediately();
                }
            }
            Some(reading) = configs.recv() => {
                if agent.configure(reading) {
                    agent.tick().await?;
                }
            }
            Some(view) = agent.membership.views.recv() => {
                agent.take_view(view);
                // Act now (take over from a dead or leaving peer, hand back to a ready one)
                // rather than at the next tick.
                ticker.reset_immediately();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    agent.shutdown().await
}

impl Agent {
    async fn start(args: RunArgs) -> anyhow::Result<(Self, mpsc::Receiver<Reading>)> {
        let secret = args.file_secret()?;
        let metrics = Arc::new(AgentMetrics::new(args.bpffs.clone()));
        let (listener, metrics_at) = lb_controller::metrics_server::bind(args.metrics_addr)
            .await
            .with_context(|| format!("--metrics-addr {}", args.metrics_addr))?;
        tokio::spawn(lb_controller::metrics_server::serve(
            listener,
            metrics.clone(),
        ));
        let links = crate::l2::links::watch(args.selection()?).await?;
        let states = links.borrow().clone();
        args.check_interfaces(&states)?;
        let ifaces: Vec<Interface> = states.iter().map(|s| s.iface.clone()).collect();
        let mut carrier = Carrier::default();
        carrier.observe(&states, Instant::now());
        let mut responders = Responders::start(&args.bpffs, &ifaces, args.mode.into(), 0, true)?;
        for (_, mode) in &responders.modes {
            metrics
                .datapath
                .get_or_create(&ModeLabel { mode: mode.clone() })
                .set(1);
        }
        let lease_ns = u64::try_from(args.failure_timeout.as_nanos()).unwrap_or(u64::MAX);
        // Entries left by a previous agent whose lease still runs are being answered right
        // now: keep answering them (and say so to the peers) until this agent has decided.
        // Stale ones (the lease lapsed, so the peers have taken them over) must not come back.
        let adopted = responders.adopted_live()?;
        if adopted {
            info!("adopting the previous agent's VIPs until the peers are heard");
        } else {
            responders.apply(&[], &BTreeMap::new())?;
        }
        responders.renew(monotonic_ns().saturating_add(lease_ns))?;
        let sockets = ifaces
            .iter()
            .map(|i| Ok((i.index, PacketSocket::open(i, false)?)))
            .collect::<Result<Vec<_>, crate::l2::L2Error>>()?;
        let local = match args.no_local_vip {
            true => None,
            false => Some(vipdev::Local::start(&ifaces).await?),
        };
        if let Some(problem) = vipdev::strict_arp_problem(std::path::Path::new("/")) {
            warn!(%problem, "other nodes' kernels answer ARP for the VIPs");
        }
        let secret_from_config = secret.is_none();
        let mut membership = Membership::bind(
            args.port,
            &args.node_name,
            args.failure_timeout,
            secret,
            metrics.clone(),
        )
        .with_context(|| format!("binding UDP port {}", args.port))?;
        let up = carrier.links(Instant::now());
        info!(links = %up, "announcing links with carrier");
        membership.set_links(up.clone());
        let lease = responders.lease();
        let membership = Handle::spawn(
            membership,
            thread::Settings {
                interval: args.heartbeat_interval,
                realtime: Wanted {
                    priority: args.membership_priority,
                },
            },
            Box::new(move || {
                lease
                    .renew(monotonic_ns().saturating_add(lease_ns))
                    .map_err(|e| e.to_string())
            }),
            metrics.clone(),
        )
        .context("starting the membership thread")?;
        let client = match &args.config_dir {
            Some(_) => None,
            None => Some(kube::Client::try_default().await.context(
                "no --config-dir, and no Kubernetes credentials (in-cluster or $KUBECONFIG)",
            )?),
        };
        let names = vec![args.node_name.clone(), "localhost".to_owned()];
        if let Some(secure) = args.secure_metrics.options(names) {
            let Some(client) = &client else {
                anyhow::bail!(
                    "--secure-metrics-addr needs the cluster mode (the API server checks the tokens)"
                );
            };
            let bound = lb_controller::metrics_server::secure::start(
                &secure,
                metrics.clone(),
                client.clone(),
            )
            .await
            .context("--secure-metrics-addr")?;
            info!(addr = %bound, "serving /metrics over HTTPS to authorized tokens");
        }
        let pod = args
            .pod_name
            .clone()
            .zip(args.pod_uid.clone())
            .map(|(name, uid)| statuses::Pod { name, uid });
        let reporter = Reporter::start(client.as_ref(), &args.namespace, &args.node_name, pod);
        let configs = match (&args.config_dir, &client) {
            (Some(dir), _) => source::watch(dir.clone(), args.node_name.clone(), args.port)?,
            (None, Some(client)) => source::cluster::watch(client.clone(), args.cluster_source()),
            (None, None) => anyhow::bail!("neither --config-dir nor a Kubernetes client"),
        };
        let speaker = Speaker::spawn(
            metrics.bgp.clone(),
            metrics.bfd.clone(),
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, args.bgp_port)),
        );
        // Unnumbered BGPPeers' addresses, found by router advertisements on their interfaces.
        let discovery = Discovery::spawn();
        info!(
            node = %args.node_name,
            metrics = %metrics_at,
            "running; waiting one failure timeout to hear the peers"
        );
        let sessions = metrics.bgp.sessions.subscribe();
        let handover = Handover::new(args.node_name.clone(), args.failure_timeout, adopted);
        membership.phase(handover.phase());
        let agent = Agent {
            handover,
            node: args.node_name,
            namespace: args.namespace,
            heartbeat_interval: args.heartbeat_interval,
            failure_timeout: args.failure_timeout,
            metrics,
            ifaces,
            links,
            carrier,
            added: Vec::new(),
            responders,
            sockets: Arc::new(sockets),
            lease_ns,
            local,
            membership,
            members: Members::default(),
            membership_changed: false,
            rejoined: false,
            links_said: up,
            secret_from_config,
            held: watch::channel(announce::Held::default()).0,
            reporter,
            speaker,
            neighbors: discovery.found(),
            sessions,

            discovery,
            config: None,
            config_error: None,
            input_problems: Vec::new(),
            outside_pools: Vec::new(),
            capacity_problem: None,
            no_interface: BTreeSet::new(),
            dirty: true,
            claims_truncated: false,
            started: Instant::now(),
        };
        Ok((agent, configs))
    }

    /// Unnumbered peers found or lost: the speaker follows.
    fn neighbours(&mut self) {
        if let Some(c) = &self.config {
            let found = self.neighbors.borrow_and_update();
            self.speaker.apply(bgp::unnumbered::resolve(&c.bgp, &found));
        }
    }

    /// The announcing interfaces or their links changed. Interfaces gone are released and new
    /// ones answered on (their VIPs at the next step); returns whether anything changed that
    /// the election or the peers must hear about now.
    fn relink(&mut self) -> bool {
        let states = self.links.borrow_and_update().clone();
        let now = Instant::now();
        let wanted: Vec<Interface> = states.iter().map(|s| s.iface.clone()).collect();
        let mut changed = false;
        if wanted != self.ifaces {
            changed = true;
            for gone in self.ifaces.iter().filter(|i| !wanted.contains(i)) {
                info!(iface = %gone.name, "interface gone or no longer chosen; released");
                if let Err(e) = self.responders.remove(gone) {
                    warn!(iface = %gone.name, error = %e, "cannot detach from the interface");
                }
            }
            self.ifaces.retain(|i| wanted.contains(i));
            self.added.retain(|i| wanted.contains(i));
            let new: Vec<Interface> = wanted
                .iter()
                .filter(|i| !self.ifaces.contains(i))
                .cloned()
                .collect();
            for new in &new {
                match self.responders.add(new) {
                    Ok(()) => {
                        info!(iface = %new.name, "answering on a new interface");
                        if self.local.is_some()
                            && let Err(e) = vipdev::quiet_arp(&new.name)
                        {
                            warn!(iface = %new.name, error = %e, "cannot keep the kernel from answering ARP for VIPs");
                        }
                        self.ifaces.push(new.clone());
                        self.added.push(new.clone());
                    }
                    Err(e) => {
                        warn!(iface = %new.name, error = %e, "cannot answer on the interface; left out until it changes")
                    }
                }
            }
            self.ifaces.sort_by(|a, b| a.name.cmp(&b.name));
            self.sockets = Arc::new(
                self.ifaces
                    .iter()
                    .filter_map(|i| match PacketSocket::open(i, false) {
                        Ok(s) => Some((i.index, s)),
                        Err(e) => {
                            warn!(iface = %i.name, error = %e, "cannot send announcements on the interface");
                            None
                        }
                    })
                    .collect(),
            );
            self.dirty = true;
        }
        self.carrier.observe(&states, now);
        changed | self.follow_carrier(now)
    }

    /// Puts the links that count as up at `now` in the heartbeats; `true` when that changed.
    fn follow_carrier(&mut self, now: Instant) -> bool {
        let links = self.carrier.links(now);
        if links == self.links_said {
            return false;
        }
        info!(links = %links, "announcing links with carrier changed; telling the peers");
        self.membership.links(links.clone());
        self.links_said = links;
        true
    }

    /// Takes what the membership thread decided; the election follows at the next tick.
    fn take_view(&mut self, view: View) {
        self.members = view.members;
        self.membership_changed |= view.changed;
        self.rejoined |= view.rejoined;
    }

    /// Takes a configuration reading; `true` when it is one to act on now.
    fn configure(&mut self, reading: Reading) -> bool {
        let c = match reading {
            Ok(c) => c,
            Err(e) => {
                if self.config_error.as_deref() != Some(&e) {
                    warn!(problem = %e, "configuration rejected; the last good one stays");
                }
                self.reporter.configuration(vec![e.clone()]);
                self.config_error = Some(e);
                self.metrics.config.rejected();
                return false;
            }
        };
        if let Some(e) = &c.refused
            && self.config_error.as_ref() != Some(e)
        {
            warn!(problem = %e, "configuration rejected; the last good one stays");
        }
        self.config_error.clone_from(&c.refused);
        self.reporter
            .configuration(c.refused.iter().chain(&c.outside_pools).cloned().collect());
        if c.outside_pools != self.outside_pools {
            for p in c
                .outside_pools
                .iter()
                .filter(|p| !self.outside_pools.contains(p))
            {
                warn!(problem = %p, "addresses outside the pools are never announced");
            }
            self.outside_pools.clone_from(&c.outside_pools);
        }
        self.metrics
            .services_outside_pools
            .set(i64::try_from(c.outside_pools.len()).unwrap_or(i64::MAX));
        if self.secret_from_config {
            self.membership.secret(match &c.secret {
                Some(bytes) => check_secret(bytes),
                None => Err(format!(
                    "Secret {}/{} (key {}) is missing",
                    self.namespace,
                    source::cluster::MEMBERLIST_SECRET,
                    source::cluster::MEMBERLIST_KEY
                )),
            });
        }
        self.membership.peers(c.peers.clone());
        self.discovery.want(bgp::unnumbered::interfaces(&c.bgp));
        self.speaker
            .apply(bgp::unnumbered::resolve(&c.bgp, &self.neighbors.borrow()));
        self.reporter.bgp(&c.bgp_services);
        let bgp_announced = c
            .allocations
            .iter()
            .filter(|e| c.bgp_services.contains_key(&e.service))
            .flat_map(|e| {
                e.ips
                    .iter()
                    .filter(|ip| c.bgp_ips.contains(ip))
                    .map(|ip| (e.service.clone(), *ip))
            })
            .collect();
        self.metrics.set_announced(&self.node, "bgp", bgp_announced);
        if c.inputs.problems != self.input_problems {
            for p in &c.inputs.problems {
                warn!(problem = %p, "annotation ignored");
            }
            self.input_problems.clone_from(&c.inputs.problems);
        }
        if c.refused.is_some() {
            self.metrics.config.rejected();
        } else {
            self.metrics.config.applied();
        }
        self.config = Some(c);
        self.dirty = true;
        true
    }

    /// Once the peers have had one failure timeout to be heard, the election and the hand-over
    /// when something they depend on changed. (Heartbeats and the lease are the membership
    /// thread's: a slow election cannot delay them.)
    async fn tick(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        // A link back up counts once it has stayed up a moment.
        self.follow_carrier(now);
        let Some(c) = self.config.clone() else {
            return Ok(());
        };
        if now.duration_since(self.started) < self.failure_timeout {
            return Ok(());
        }
        // Recomputed only when something it depends on changed: with thousands of Services it
        // is not free.
        if self.handover.decided()
            && !self.dirty
            && !self.membership_changed
            && !self.handover.lingers()
        {
            return Ok(());
        }
        self.dirty = false;
        let (changed, rejoined) = (self.membership_changed, self.rejoined);
        (self.membership_changed, self.rejoined) = (false, false);
        let wanted = election::layer2(&self.node, &c.inputs, &c.allocations, &self.members);
        self.claim(&wanted.claims);
        let step = self.handover.step(wanted, changed, rejoined, now);
        self.membership.phase(self.handover.phase());
        self.metrics.set_ready();
        // xdplb0 holds what this node owns at Layer 2 and what it advertises over BGP.
        if let Some(local) = &self.local {
            let ips = step.announced.iter().map(|a| a.vip);
            local.hold(ips.chain(c.bgp_ips.iter().copied()).collect());
        }
        if step.changed || !self.added.is_empty() {
            self.apply(step)?;
            trim_heap();
        }
        Ok(())
    }

    /// Tells the peers which non-revertive VIPs this node holds (from the next heartbeat).
    fn claim(&mut self, vips: &BTreeSet<IpAddr>) {
        let claims = match Claims::new(vips.iter().copied()) {
            Ok(c) => c,
            Err((c, count)) => {
                if !self.claims_truncated {
                    warn!(
                        count,
                        kept = c.iter().count(),
                        "more non-revertive VIPs than a heartbeat can claim: the others are preempted as MetalLB's would be"
                    );
                }
                self.claims_truncated = true;
                c
            }
        };
        if claims.iter().count() == vips.len() {
            self.claims_truncated = false;
        }
        self.membership.claims(claims);
    }

    /// The ConfigurationState: the reading's problems, and the VIPs the maps cannot hold.
    fn report_problems(&self, c: &Config) {
        self.reporter.configuration(
            c.refused
                .iter()
                .chain(&c.outside_pools)
                .chain(&self.capacity_problem)
                .cloned()
                .collect(),
        );
    }

    /// Reports, once per Service until it recovers, what this node should announce and has no
    /// interface for: the advertisements' `interfaces` are not among its interfaces, or no
    /// responder could attach to them (MetalLB's `announceFailed`).
    fn report_no_interface(&mut self, step: &Step) {
        let stuck = without_interface(&step.announced, &self.ifaces);
        let services: BTreeSet<String> = stuck.iter().map(|a| a.service.clone()).collect();
        let new: BTreeSet<String> = services.difference(&self.no_interface).cloned().collect();
        if !new.is_empty() {
            let named: BTreeSet<&String> = stuck.iter().flat_map(|a| &a.interfaces).collect();
            let have: Vec<&str> = self.ifaces.iter().map(|i| i.name.as_str()).collect();
            let why = if named.is_empty() {
                format!("no interface could take a responder (this node has {have:?})")
            } else {
                format!(
                    "no interface to answer on: the L2Advertisements name {named:?}, this node answers on {have:?}"
                )
            };
            warn!(services = ?new, "{why}");
            self.reporter.announce_failed(new, &why);
        }
        self.no_interface = services;
    }

    /// Reports the VIPs the data path's maps had no room for (none: the problem is over).
    fn report_left_out(&mut self, left_out: &[crate::l2::maps::VipEntry], step: &Step) {
        let addrs: BTreeSet<IpAddr> = left_out.iter().map(|e| e.addr).collect();
        self.metrics
            .vips_not_announced
            .set(i64::try_from(addrs.len()).unwrap_or(i64::MAX));
        let problem = (!addrs.is_empty()).then(|| {
            format!(
                "the data path's maps are full ({} entries per family): {} addresses not announced, from {}",
                lb_common::MAX_VIPS,
                addrs.len(),
                addrs.iter().next().map(ToString::to_string).unwrap_or_default()
            )
        });
        if problem == self.capacity_problem {
            return;
        }
        if let Some(p) = &problem {
            warn!(problem = %p, "VIPs not announced");
            let services: BTreeSet<String> = step
                .announced
                .iter()
                .filter(|a| addrs.contains(&a.vip))
                .map(|a| a.service.clone())
                .collect();
            self.reporter.announce_failed(services, p);
        }
        self.capacity_problem = problem;
        if let Some(c) = self.config.clone() {
            self.report_problems(&c);
        }
    }

    /// Puts a hand-over step into the maps (make before break: they gain the new VIPs before
    /// losing the old ones), reports it, and announces what was taken over.
    fn apply(&mut self, step: Step) -> anyhow::Result<()> {
        for a in &step.gained {
            match step.bits.get(&a.vip) {
                Some(bits) => {
                    info!(vip = %a.vip, service = %a.service, slots = bits.count(), "sharing (active-active)")
                }
                None => info!(vip = %a.vip, service = %a.service, "taking over"),
            }
        }
        for a in &step.lost {
            info!(vip = %a.vip, service = %a.service, "releasing");
        }
        if !step.first {
            self.metrics.takeovers.inc_by(step.fresh.len() as u64);
        }
        let stats = self.responders.apply(
            &entries(&step.announced, &self.ifaces, &step.bits),
            &step.bits,
        )?;
        self.report_left_out(&stats.left_out, &step);
        self.report_no_interface(&step);
        self.metrics.announced.set(step.announced.len() as i64);
        self.metrics.set_announced(
            &self.node,
            "layer2",
            step.announced
                .iter()
                .map(|a| (a.service.clone(), a.vip))
                .collect(),
        );
        self.reporter
            .layer2(&step.announced, &step.gained, &self.ifaces);
        // Active-active VIPs are announced to no one but the clients of the slots taken over.
        let mut burst = entries(&step.fresh, &self.ifaces, &BTreeMap::new());
        let added = std::mem::take(&mut self.added);
        burst.extend(entries(
            step.announced
                .iter()
                .filter(|a| !step.fresh.contains(a) && !step.bits.contains_key(&a.vip)),
            &added,
            &BTreeMap::new(),
        ));
        let notices = (!step.took_slots.is_empty()).then(|| {
            let (source, took, ifaces) = (
                self.responders.clients_source(),
                step.took_slots.clone(),
                self.ifaces.clone(),
            );
            let log = !step.first;
            Box::new(move || {
                let nets: Vec<_> = ifaces
                    .iter()
                    .map(|i| (i.clone(), crate::l2::iface::networks(&i.name)))
                    .collect();
                let notices = announce::notices(&source.clients(), &took, &nets);
                if log {
                    info!(
                        vips = took.len(),
                        clients = notices.len(),
                        "took over slots of shared VIPs; telling their recorded clients"
                    );
                }
                notices
            }) as Box<dyn FnOnce() -> Vec<announce::Notice> + Send>
        });
        let vips = step.announced.iter().map(|a| a.vip);
        self.held.send_replace(announce::Held::new(vips, step.bits));
        let metrics = self.metrics.clone();
        announce::spawn(
            self.sockets.clone(),
            burst,
            notices,
            self.held.subscribe(),
            move |ip| metrics.gratuitous.add(&IpLabel { ip: ip.to_string() }, 1),
        );
        Ok(())
    }

    /// Says goodbye (three times: UDP may drop one) so the peers take over at once, and keeps
    /// answering until they have: make before break for a planned shutdown too. Then withdraws
    /// everything this node announced.
    async fn shutdown(mut self) -> anyhow::Result<()> {
        for (peer, e) in self.membership.leave().await {
            warn!(%peer, error = %e, "cannot say goodbye");
        }
        if self.config.is_some() && !self.handover.announced().is_empty() {
            self.responders
                .renew(monotonic_ns().saturating_add(self.lease_ns.saturating_mul(2)))?;
            tokio::time::sleep(self.heartbeat_interval * 2).await;
        }
        // Where graceful restart was agreed the routers keep our routes while we restart;
        // other sessions end with a Cease.
        self.speaker.stop(bgp::session::Stop::Restart).await;
        info!("withdrawing");
        self.reporter.clear().await;
        if let Some(local) = self.local {
            local.remove().await?;
        }
        self.responders.shutdown(&self.ifaces)?;
        Ok(())
    }
}
