//! Standalone mode: the configuration is a directory of manifests (DESIGN.md §4); the
//! allocations go to `DIR/status/allocations.yaml`, written atomically (write, then rename).
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

use serde::{Deserialize, Serialize};

use crate::{
    config::{manifest, validate},
    ipam::allocator::PoolUsage,
    metrics::{self, Metrics},
    plan::{self, PlanEntry},
};

pub const STATUS_DIR: &str = "status";
pub const ALLOCATIONS_FILE: &str = "allocations.yaml";
const HEADER: &str = "# Written by lb-controller (standalone mode); agents read it. Do not edit.\n";

/// The content of `status/allocations.yaml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationsFile {
    pub allocations: Vec<PlanEntry>,
}

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

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot render the allocations: {0}")]
    Render(String),
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

    pub fn allocations_path(&self) -> PathBuf {
        self.dir.join(STATUS_DIR).join(ALLOCATIONS_FILE)
    }

    /// The allocations last written, if any (an unreadable file counts as none).
    pub fn read_allocations(&self) -> AllocationsFile {
        std::fs::read_to_string(self.allocations_path())
            .ok()
            .and_then(|text| {
                serde_saphyr::from_str_with_options(&text, manifest::yaml_options()).ok()
            })
            .unwrap_or_default()
    }

    /// Reads the directory, validates, plans and writes the allocations when they change.
    pub fn reconcile(&self) -> Result<Pass, StandaloneError> {
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
        let old = self.read_allocations();
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
        let changed = new != old || !self.allocations_path().exists();
        let pass = Pass::Applied {
            services,
            pending,
            changed,
        };
        // Metrics first: whoever sees the new file finds them already in agreement.
        self.count(&pass, Some(&usage));
        if changed && let Err(e) = self.write(&new) {
            self.metrics.config.update_errors.inc();
            return Err(e);
        }
        Ok(pass)
    }

    fn write(&self, file: &AllocationsFile) -> Result<(), StandaloneError> {
        let yaml =
            serde_saphyr::to_string(file).map_err(|e| StandaloneError::Render(e.to_string()))?;
        let path = self.allocations_path();
        let err = |source| StandaloneError::Write {
            path: path.clone(),
            source,
        };
        let status = self.dir.join(STATUS_DIR);
        std::fs::create_dir_all(&status).map_err(err)?;
        // Write beside the target and rename over it: readers see the old or the new file,
        // never half of one.
        let tmp = status.join(format!(".{ALLOCATIONS_FILE}.tmp"));
        std::fs::write(&tmp, format!("{HEADER}{yaml}")).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }
}

fn log_pass(pass: &Result<Pass, StandaloneError>) {
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
    let (listener, bound) = metrics::bind(metrics_addr).await?;
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    tokio::spawn(metrics::serve(listener, metrics.clone()));
    let controller = Standalone::new(dir.clone(), lb_class, metrics);
    log_pass(&controller.reconcile());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(64);
    let watch_dir = dir.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event.paths.iter().any(|p| relevant(&watch_dir, p))
        {
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %dir.display(), "watching the configuration directory");
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
