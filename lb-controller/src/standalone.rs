//! Standalone mode: the configuration is a directory of manifests (DESIGN.md §4); the
//! allocations go to `DIR/status/allocations.yaml` ([`crate::allocations`]).
//!
//! # Guarantees
//! - A bad edit (unreadable YAML, an invalid object) never replaces a good configuration: the
//!   allocations file keeps the last good plan, and the problem is logged and counted.
//! - A Service keeps its addresses across restarts and unrelated changes: the previous
//!   allocations file feeds the plan as each Service's current addresses.
//! - The file is rewritten only when its content changes.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::{
    allocations::{self, AllocationsFile, STATUS_DIR, WriteError},
    config::{manifest, validate},
    ipam::allocator::PoolUsage,
    metrics::Metrics,
    metrics_server, plan,
};

/// What one pass over the directory did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pass {
    /// The configuration was valid; the file was (re)written if `changed`.
    Applied {
        services: usize,
        pending: usize,
        changed: bool,
    },
    /// The configuration was rejected; the previous allocations stay. One line per problem.
    Rejected { problems: Vec<String> },
}

/// The controller over one configuration directory.
pub struct Standalone {
    dir: PathBuf,
    lb_class: Option<String>,
    metrics: Arc<Metrics>,
}

impl Standalone {
    pub fn new(dir: PathBuf, lb_class: Option<String>, metrics: Arc<Metrics>) -> Self {
        Self {
            dir,
            lb_class,
            metrics,
        }
    }

    /// Records a pass in the metrics: MetalLB's "config loaded" and "stale" flags, update
    /// counters, and per-pool usage after a plan.
    fn count(&self, pass: &Pass, usage: Option<&BTreeMap<String, PoolUsage>>) {
        match pass {
            Pass::Applied { .. } => self.metrics.config_applied(),
            Pass::Rejected { .. } => self.metrics.config_rejected(),
        }
        if let Some(usage) = usage {
            self.metrics.record_usage(usage);
        }
    }

    /// Reads the directory, validates, plans and writes the allocations when they change.
    pub fn reconcile(&self) -> Result<Pass, WriteError> {
        let loaded = match manifest::load_with(
            std::slice::from_ref(&self.dir),
            manifest::Strictness::Lenient,
        ) {
            Ok(l) => l,
            Err(e) => {
                let pass = Pass::Rejected {
                    problems: vec![e.to_string()],
                };
                self.count(&pass, None);
                return Ok(pass);
            }
        };
        let report = validate::validate(&loaded.objects);
        for w in loaded.warnings.iter().chain(&report.warnings) {
            tracing::warn!(problem = %w, "configuration warning");
        }
        let problems: Vec<String> = loaded
            .errors
            .iter()
            .chain(&report.errors)
            .map(ToString::to_string)
            .collect();
        if !problems.is_empty() {
            let pass = Pass::Rejected { problems };
            self.count(&pass, None);
            return Ok(pass);
        }
        let old = match allocations::read(&self.dir) {
            Ok(old) => old,
            Err(e) => {
                // Planned from nothing, Services would move to other addresses.
                let pass = Pass::Rejected {
                    problems: vec![format!(
                        "{e}; nothing is planned until it is repaired or removed"
                    )],
                };
                self.count(&pass, None);
                return Ok(pass);
            }
        };
        let previous: BTreeMap<String, Vec<IpAddr>> = old
            .allocations
            .iter()
            .map(|e| (e.service.clone(), e.ips.clone()))
            .collect();
        let (allocations, usage) =
            plan::plan_with_usage(&loaded.objects, self.lb_class.as_deref(), &previous);
        let pending = allocations.iter().filter(|e| e.pending.is_some()).count();
        let services = allocations.len();
        let new = AllocationsFile { allocations };
        let changed = new != old || !allocations::path(&self.dir).exists();
        let pass = Pass::Applied {
            services,
            pending,
            changed,
        };
        // Metrics first: whoever sees the new file finds them already in agreement.
        self.count(&pass, Some(&usage));
        if changed && let Err(e) = allocations::write(&self.dir, &new) {
            self.metrics.config.update_errors.inc();
            return Err(e);
        }
        Ok(pass)
    }
}

fn log_pass(pass: &Result<Pass, WriteError>) {
    match pass {
        Ok(Pass::Applied {
            services,
            pending,
            changed,
        }) => tracing::info!(services, pending, changed, "configuration applied"),
        Ok(Pass::Rejected { problems }) => {
            for p in problems {
                tracing::error!(problem = %p, "configuration rejected; the last good one stays");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot write the allocations"),
    }
}

/// Whether a change at `path` can affect the configuration (the status directory cannot).
fn relevant(dir: &Path, path: &Path) -> bool {
    !path.starts_with(dir.join(STATUS_DIR))
}

/// Runs until SIGTERM or SIGINT: a pass at start, then one after every change in the directory
/// (changes within 100 ms are taken together).
pub async fn run(
    dir: PathBuf,
    lb_class: Option<String>,
    metrics_addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    use notify::Watcher;
    use tokio::signal::unix::{SignalKind, signal};

    let metrics = Arc::new(Metrics::default());
    let (listener, bound) = metrics_server::bind(metrics_addr).await?;
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    tokio::spawn(metrics_server::serve(listener, metrics.clone()));
    let controller = Standalone::new(dir.clone(), lb_class, metrics);
    // Watching starts before the first pass reads anything: a file written between that read
    // and the watch would otherwise wait for the next change (seen as a test that wrote a
    // Service the moment the first allocations appeared, while the pass was still fsyncing).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(64);
    let watch_dir = dir.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let wake = match &event {
            // A lost event (queue overflow) or a failing watch: read everything again.
            Err(_) => true,
            Ok(e) if e.need_rescan() => true,
            Ok(e) => e.paths.iter().any(|p| relevant(&watch_dir, p)),
        };
        if wake {
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %dir.display(), "watching the configuration directory");
    log_pass(&controller.reconcile());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            Some(()) = rx.recv() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
                log_pass(&controller.reconcile());
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_allocations_file_is_kept_not_planned_over() {
        let dir = std::env::temp_dir().join(format!("xdplb-standalone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(allocations::STATUS_DIR)).expect("dir");
        std::fs::write(
            dir.join("config.yaml"),
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p}\nspec: {addresses: [10.0.0.0/24]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {type: LoadBalancer}\n",
        )
        .expect("write");
        let c = Standalone::new(dir.clone(), None, Arc::new(Metrics::default()));
        // A power cut left the file empty: planning from nothing would move every Service.
        std::fs::write(allocations::path(&dir), "").expect("write");
        let pass = c.reconcile().expect("pass");
        assert!(
            matches!(&pass, Pass::Rejected { problems } if problems[0].contains("empty")),
            "{pass:?}"
        );
        assert_eq!(std::fs::read(allocations::path(&dir)).expect("read"), b"");
        // Removed by the operator, it is planned again.
        std::fs::remove_file(allocations::path(&dir)).expect("rm");
        assert!(matches!(
            c.reconcile(),
            Ok(Pass::Applied { services: 1, .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
