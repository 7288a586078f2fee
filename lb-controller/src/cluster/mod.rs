//! In-cluster mode: the same validation and IPAM as standalone mode, fed by reflectors and
//! writing Service status through the status subresource, with MetalLB's Events, behind a
//! leader Lease so two replicas are safe.
//!
//! # Guarantees
//! - Only the replica holding the Lease writes. A replica that cannot renew for the renew
//!   deadline stops and exits, so a fresh start rejoins the election.
//! - A rejected configuration never replaces a good one: the last good configuration keeps
//!   allocating for current Services, and each problem is logged, counted and raised once as a
//!   Warning Event on the offending object, and in the `controller` ConfigurationState. A
//!   replica that starts (or takes the Lease) while the configuration is invalid has no last
//!   good one: it allocates from the valid part.
//! - Status writes carry the resourceVersion they were computed from; a 409 means the Service
//!   changed meanwhile, and the watch brings the change that triggers the next pass.
//! - Allocations are rebuilt from Service status on every start, so restarts move nothing.
//! - Each IPAddressPool's status (MetalLB's assigned/available counters) follows the pass
//!   that wrote the Services' addresses; only a status that differs is written.
pub mod coverage;
mod leader;
pub mod lease;
pub mod memberlist;
pub mod passwords;
pub mod pool_status;
pub mod status;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::ObjectReference, core::v1::Service};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;
use tokio::sync::{Notify, watch};

pub use leader::{LEASE_NAME, Timing};

use crate::{
    config::{
        Problem,
        manifest::Objects,
        settle::{LastGood, OnRefusal, Settled},
        types::IPAddressPool,
        validate,
    },
    configstate,
    metrics::Metrics,
    metrics_server, plan, sources,
};

/// How long changes are gathered before a pass.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// When a write failed, the next pass comes at the latest after this.
const RETRY: Duration = Duration::from_secs(1);

pub struct Options {
    pub lb_class: Option<String>,
    /// Where the metallb.io objects, Secrets and the Lease live.
    pub namespace: String,
    /// This replica's name in the Lease.
    pub identity: String,
    pub timing: Timing,
}

/// The state one replica keeps between passes.
struct Reconciler {
    client: Client,
    opts: Options,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    /// The configuration part of the last valid snapshot.
    last_good: LastGood,
    /// The pending reason last raised per Service.
    reported: BTreeMap<String, String>,
    /// The configuration problems last raised.
    problems: BTreeSet<String>,
    /// The Services last reported as covered by no advertisement, with the note.
    uncovered: BTreeMap<String, String>,
    /// What the `controller` ConfigurationState says.
    config_state: watch::Sender<Option<Vec<String>>>,
}

/// When a replica allocates from the valid part of the configuration (it has no last good
/// one), a Service holding an address outside the valid part's pools (from a pool left out)
/// is left alone, not renumbered.
fn leave_out_renumbered(part: &mut Objects) {
    let ranges: Vec<_> = plan::pool_defs(&part.pools)
        .into_iter()
        .flat_map(|p| p.ranges)
        .collect();
    part.services.retain(|svc| {
        crate::ipam::service::status_ips(svc)
            .iter()
            .all(|ip| ranges.iter().any(|r| r.contains(*ip)))
    });
}

fn reference_of(problem: &Problem, namespace: &str) -> ObjectReference {
    let api_version = if problem.kind == "BGPPeer" {
        "metallb.io/v1beta2"
    } else {
        "metallb.io/v1beta1"
    };
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(problem.kind.clone()),
        name: Some(problem.name.clone()),
        namespace: Some(namespace.into()),
        ..Default::default()
    }
}

impl Reconciler {
    async fn event(&self, reference: &ObjectReference, warning: bool, reason: &str, note: String) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(error = %e, reason, "cannot record an event");
        }
    }

    /// One pass; `false` when a write failed and another pass is needed.
    async fn pass(&mut self, snapshot: Objects) -> bool {
        let report = validate::validate(&snapshot);
        let handed = snapshot
            .secrets
            .iter()
            .find(|s| s.name_any() == passwords::SECRET)
            .cloned();
        let problems: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
        configstate::say(&self.config_state, problems.clone());
        if report.errors.is_empty() {
            self.metrics.config_applied();
            self.problems.clear();
            for w in &report.warnings {
                tracing::debug!(problem = %w, "configuration warning");
            }
        } else {
            self.metrics.config_rejected();
            let now: BTreeSet<String> = problems.into_iter().collect();
            for p in &report.errors {
                let text = p.to_string();
                if self.problems.contains(&text) {
                    continue;
                }
                tracing::error!(problem = %text, "configuration rejected; the last good one stays");
                let note = format!(
                    "{}: {}; the last valid configuration stays in force",
                    p.field, p.reason
                );
                self.event(
                    &reference_of(p, &self.opts.namespace),
                    true,
                    "InvalidConfiguration",
                    note,
                )
                .await;
            }
            self.problems = now;
        }
        // The old configuration objects with today's Services, or, for a replica that started
        // (or took the lease) while the configuration is invalid, the valid part.
        let live_pools = snapshot.pools.clone();
        let mut objects = snapshot;
        match self
            .last_good
            .settle_checked(&mut objects, report.errors.first())
        {
            Ok(Settled::ValidPart(_)) => leave_out_renumbered(&mut objects),
            Ok(Settled::Valid | Settled::LastGood(_)) => {}
            Err(_) => return true,
        }
        // The agents' passwords follow the configuration in force, as the addresses do.
        let mut ok = true;
        let want = crate::config::passwords::bundle(&objects);
        match passwords::sync(&self.client, &self.opts.namespace, handed.as_ref(), want).await {
            Ok(true) => tracing::info!(
                secret = passwords::SECRET,
                "handed the BGP passwords to the agents"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(secret = passwords::SECRET, error = %e, "cannot hand the BGP passwords to the agents");
                ok = false;
            }
        }
        let (entries, usage) =
            plan::plan_with_usage(&objects, self.opts.lb_class.as_deref(), &BTreeMap::new());
        self.metrics.record_usage(&usage);
        let ranges: Vec<_> = plan::pool_defs(&objects.pools)
            .into_iter()
            .flat_map(|p| p.ranges)
            .collect();
        let updates = status::updates(
            &objects.services,
            &entries,
            self.opts.lb_class.as_deref(),
            &|ip| ranges.iter().any(|r| r.contains(*ip)),
            &mut self.reported,
        );
        let by_key: BTreeMap<String, &Service> = objects
            .services
            .iter()
            .map(|s| {
                (
                    format!(
                        "{}/{}",
                        s.namespace().unwrap_or_else(|| "default".into()),
                        s.name_any()
                    ),
                    s,
                )
            })
            .collect();
        for update in updates {
            let Some(svc) = by_key.get(&update.key) else {
                continue;
            };
            if !self.write(svc, &update).await {
                ok = false;
                continue;
            }
            let reference = svc.object_ref(&());
            for e in &update.events {
                self.event(&reference, e.warning, e.reason, e.note.clone())
                    .await;
            }
        }
        // Once per Service and reason, as AllocationFailed; again if it recurs.
        let uncovered = coverage::uncovered(&objects, &entries);
        for (key, note) in &uncovered {
            if self.uncovered.get(key) == Some(note) {
                continue;
            }
            if let Some(svc) = by_key.get(key) {
                tracing::warn!(service = %key, "{note}");
                self.event(&svc.object_ref(&()), true, coverage::REASON, note.clone())
                    .await;
            }
        }
        self.uncovered = uncovered;
        let pools: Api<IPAddressPool> = Api::namespaced(self.client.clone(), &self.opts.namespace);
        for (name, status) in pool_status::updates(&live_pools, &usage) {
            let patch = json!({"status": status});
            match pools
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::debug!(pool = %name, ?status, "pool status written"),
                Err(e) => {
                    tracing::warn!(pool = %name, error = %e, "cannot write the pool's status");
                    ok = false;
                }
            }
        }
        ok
    }

    /// Writes one Service's status and annotation; `false` when it must be tried again.
    async fn write(&self, svc: &Service, update: &status::Update) -> bool {
        let ns = svc.namespace().unwrap_or_else(|| "default".into());
        let api: Api<Service> = Api::namespaced(self.client.clone(), &ns);
        let name = svc.name_any();
        let params = PatchParams::default();
        let failed = |what: &str, e: kube::Error| {
            match &e {
                kube::Error::Api(s) if s.code == 409 => {
                    tracing::debug!(service = %update.key, "changed meanwhile; next pass")
                }
                _ => {
                    tracing::warn!(service = %update.key, error = %e, "cannot write the {what}")
                }
            }
            false
        };
        if let Some(ips) = &update.ingress {
            let ingress = if ips.is_empty() {
                serde_json::Value::Null
            } else {
                json!(
                    ips.iter()
                        .map(|ip| json!({"ip": ip.to_string()}))
                        .collect::<Vec<_>>()
                )
            };
            let patch = json!({
                "metadata": {"resourceVersion": svc.resource_version()},
                "status": {"loadBalancer": {"ingress": ingress}},
            });
            if let Err(e) = api
                .patch_status(&name, &params, &Patch::Merge(&patch))
                .await
            {
                return failed("status", e);
            }
            tracing::info!(service = %update.key, ips = ?ips, "status written");
        }
        if let Some(pool) = &update.pool {
            let patch = json!({"metadata": {"annotations": {status::POOL_ANNOTATION: pool}}});
            if let Err(e) = api.patch(&name, &params, &Patch::Merge(&patch)).await {
                return failed("pool annotation", e);
            }
        }
        true
    }
}

/// Runs until SIGTERM or SIGINT (`Ok`), or until leadership is lost (`Err`: exit, restart,
/// rejoin).
pub async fn run(
    client: Client,
    opts: Options,
    metrics_addr: std::net::SocketAddr,
    secure_metrics: Option<metrics_server::secure::Options>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let metrics = Arc::new(Metrics::default());
    metrics.ready.store(false, Ordering::Relaxed);
    let (listener, bound) = metrics_server::bind(metrics_addr).await?;
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    tokio::spawn(metrics_server::serve(listener, metrics.clone()));
    if let Some(secure) = &secure_metrics {
        let bound = metrics_server::secure::start(secure, metrics.clone(), client.clone()).await?;
        tracing::info!(addr = %bound, "serving /metrics over HTTPS to authorized tokens");
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let (lead_tx, mut leading) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &opts.namespace);
    let holder = tokio::spawn(leader::hold(
        leases,
        lease::Elector::new(opts.identity.clone()),
        opts.timing,
        lead_tx,
        stop_rx,
    ));
    let stop = |holder: tokio::task::JoinHandle<()>| async move {
        let _ = stop_tx.send(true);
        let _ = holder.await;
    };
    tracing::info!(identity = %opts.identity, namespace = %opts.namespace, "waiting for the leader lease");
    // A standby replica is ready: it serves its purpose by waiting.
    metrics.ready.store(true, Ordering::Relaxed);
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            r = leading.changed() => if r.is_err() { anyhow::bail!("the lease holder stopped") },
            _ = term.recv() => { stop(holder).await; return Ok(()) }
            _ = int.recv() => { stop(holder).await; return Ok(()) }
        }
    }
    tracing::info!("leading: starting the watches");
    metrics.ready.store(false, Ordering::Relaxed);

    let changed = Arc::new(Notify::new());
    let (sources, tasks) = sources::Sources::start(
        &client,
        &opts.namespace,
        sources::SecretScope::All,
        changed.clone(),
    );
    let mut watches = tokio::task::JoinSet::new();
    for t in tasks {
        watches.spawn(t);
    }
    let lost = |leading: &watch::Receiver<bool>| !*leading.borrow();
    tokio::select! {
        () = sources.wait_ready() => {}
        _ = leading.changed() => {}
        _ = term.recv() => { stop(holder).await; return Ok(()) }
        _ = int.recv() => { stop(holder).await; return Ok(()) }
    }
    if lost(&leading) {
        anyhow::bail!("lost the leader lease; exiting so a fresh start rejoins the election");
    }
    metrics.ready.store(true, Ordering::Relaxed);
    tracing::info!("caches filled");
    // The agents cannot authenticate each other without it; the controller goes on either
    // way (addresses do not depend on it).
    match memberlist::ensure(&client, &opts.namespace, &sources.objects().secrets).await {
        Ok(memberlist::Outcome::Created) => tracing::info!(
            secret = memberlist::SECRET,
            "created the agents' membership key"
        ),
        Ok(memberlist::Outcome::Present) => {}
        Err(e) => tracing::warn!(error = %e, "no membership key for the agents"),
    }

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "xdplb-controller".into(),
            instance: Some(opts.identity.clone()),
        },
    );
    let (config_state, said) = watch::channel(None);
    configstate::spawn(
        client.clone(),
        configstate::Reporter::controller(&opts.namespace),
        said,
    );
    let mut reconciler = Reconciler {
        client,
        opts,
        metrics,
        recorder,
        last_good: LastGood::new(OnRefusal::LastConfigObjects),
        reported: BTreeMap::new(),
        problems: BTreeSet::new(),
        uncovered: BTreeMap::new(),
        config_state,
    };
    let mut retry_at: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    loop {
        let retry = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
            () = retry => {}
            _ = leading.changed() => {
                if lost(&leading) {
                    watches.abort_all();
                    anyhow::bail!("lost the leader lease; exiting so a fresh start rejoins the election");
                }
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        let ok = reconciler.pass(sources.objects()).await;
        retry_at = (!ok).then(|| tokio::time::Instant::now() + RETRY);
    }
    watches.abort_all();
    stop(holder).await;
    Ok(())
}
