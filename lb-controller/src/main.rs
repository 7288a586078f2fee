//! lb-controller: MetalLB-compatible configuration, IPAM and Service status.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_controller::{
    config::{l2mode, manifest, validate},
    plan,
};

#[derive(Parser)]
#[command(
    name = "lb-controller",
    version,
    about = "xdplb controller: MetalLB configuration, IPAM, Service status"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Yaml,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check manifests (files or directories of YAML) against MetalLB's rules.
    ///
    /// Exit 0 and print `valid`, exit 1 with one line per problem (`Kind/name: field: reason`),
    /// or exit 2 when the input cannot be read. Warnings go to stderr.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Allocate addresses as the running controller would and print them.
    ///
    /// Services are taken in input order; one keeps the addresses in its status while they are
    /// still valid. Prints `namespace/name: IPs (pool P)` or `namespace/name: pending: reason`.
    /// Exit 0 when the configuration is valid (pending Services included), 1 when not.
    Plan {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Serve only Services with this spec.loadBalancerClass (default: those with none).
        #[arg(long)]
        lb_class: Option<String>,
    },
    /// Run the controller. With --config-dir: standalone mode (watch the directory, write
    /// DIR/status/allocations.yaml); without: in-cluster (KUBECONFIG or the service account),
    /// writing Service status behind a leader Lease.
    Run {
        #[arg(long)]
        config_dir: Option<PathBuf>,
        /// In-cluster: the namespace of the metallb.io objects, their Secrets and the Lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "metallb-system")]
        namespace: String,
        /// In-cluster: this replica's name in the leader Lease (default: host name and PID).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// In-cluster: how long a leader's Lease holds without renewal.
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        lease_duration: std::time::Duration,
        /// In-cluster: a leader that cannot renew for this long stops leading.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        renew_deadline: std::time::Duration,
        /// In-cluster: how often the Lease is read and renewed.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        retry_period: std::time::Duration,
        /// Where to serve /metrics, /healthz and /readyz (MetalLB's port by default).
        #[arg(long, default_value = "0.0.0.0:7472")]
        metrics_addr: std::net::SocketAddr,
        /// Serve only Services with this spec.loadBalancerClass (default: those with none).
        #[arg(long)]
        lb_class: Option<String>,
        #[command(flatten)]
        secure_metrics: Box<lb_controller::metrics_server::secure::Args>,
        #[command(flatten)]
        webhook: Box<WebhookArgs>,
    },
}

/// The validating webhook (cluster mode; every replica serves it).
#[derive(clap::Args)]
struct WebhookArgs {
    /// Serve no webhook (delete the ValidatingWebhookConfiguration too, or the API server
    /// keeps calling; with failurePolicy Ignore that only costs a timeout per write).
    #[arg(long)]
    disable_webhook: bool,
    #[arg(long, default_value = "0.0.0.0:9443")]
    webhook_addr: std::net::SocketAddr,
    /// The Service in front of the replicas; its DNS names go into the serving certificate.
    #[arg(long, default_value = "xdplb-webhook")]
    webhook_service: String,
    /// The Secret holding the webhook's CA and serving certificate.
    #[arg(long, default_value = "xdplb-webhook-cert")]
    webhook_secret: String,
    /// The ValidatingWebhookConfiguration whose caBundle the controller keeps.
    #[arg(long, default_value = "xdplb-validating-webhook")]
    webhook_configuration: String,
    /// How often the certificate and the caBundle are checked (a Secret change is seen at once).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    webhook_check_every: std::time::Duration,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { paths } => validate_command(&paths),
        Command::Plan {
            paths,
            output,
            lb_class,
        } => plan_command(&paths, output, lb_class.as_deref()),
        Command::Run {
            config_dir: Some(_),
            secure_metrics,
            ..
        } if secure_metrics.secure_metrics_addr.is_some() => {
            eprintln!(
                "lb-controller: --secure-metrics-addr needs the cluster mode (the API server checks the tokens)"
            );
            ExitCode::from(2)
        }
        Command::Run {
            config_dir: Some(dir),
            lb_class,
            metrics_addr,
            ..
        } => run_async(lb_controller::standalone::run(dir, lb_class, metrics_addr)),
        Command::Run {
            config_dir: None,
            lb_class,
            metrics_addr,
            namespace,
            identity,
            lease_duration,
            renew_deadline,
            retry_period,
            secure_metrics,
            webhook,
        } => {
            if renew_deadline >= lease_duration || retry_period >= renew_deadline {
                eprintln!(
                    "lb-controller: need --retry-period < --renew-deadline < --lease-duration"
                );
                return ExitCode::from(2);
            }
            let identity = identity.unwrap_or_else(default_identity);
            let opts = lb_controller::cluster::Options {
                lb_class,
                namespace,
                identity,
                timing: lb_controller::cluster::Timing {
                    duration: lease_duration,
                    renew_deadline,
                    retry: retry_period,
                },
            };
            let webhook = (!webhook.disable_webhook).then(|| lb_controller::webhook::Options {
                namespace: opts.namespace.clone(),
                addr: webhook.webhook_addr,
                service: webhook.webhook_service,
                secret: webhook.webhook_secret,
                configuration: webhook.webhook_configuration,
                check_every: webhook.webhook_check_every,
            });
            run_async(async move {
                let client = kube::Client::try_default().await?;
                if let Some(webhook) = webhook {
                    // Beside the election: standby replicas serve it too. Its failure leaves
                    // the controller running (failurePolicy Ignore lets writes through).
                    let client = client.clone();
                    tokio::spawn(async move {
                        if let Err(e) = lb_controller::webhook::run(client, webhook).await {
                            tracing::error!(error = %e, "the validating webhook stopped");
                        }
                    });
                }
                let secure =
                    secure_metrics.options(lb_controller::metrics_server::secure::host_names());
                lb_controller::cluster::run(client, opts, metrics_addr, secure).await
            })
        }
    }
}

/// `hostname_pid`: unique among replicas, also several on one host.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "lb-controller".into());
    format!("{host}_{}", std::process::id())
}

fn run_async(job: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lb-controller: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(job) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads and validates; prints warnings to stderr and errors to stdout. `Err` is the exit code
/// to stop with (2 unreadable, 1 invalid).
fn load_valid(paths: &[PathBuf]) -> Result<manifest::Objects, ExitCode> {
    let loaded = manifest::load(paths).map_err(|e| {
        eprintln!("lb-controller: {e}");
        ExitCode::from(2)
    })?;
    let report = validate::validate(&loaded.objects);
    for w in loaded.warnings.iter().chain(&report.warnings) {
        eprintln!("warning: {w}");
    }
    let errors: Vec<_> = loaded.errors.iter().chain(&report.errors).collect();
    if errors.is_empty() {
        return Ok(loaded.objects);
    }
    for e in errors {
        println!("{e}");
    }
    Err(ExitCode::from(1))
}

fn validate_command(paths: &[PathBuf]) -> ExitCode {
    match load_valid(paths) {
        Ok(_) => {
            println!("valid");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// A plan entry as `plan` prints it.
#[derive(serde::Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    entry: &'a plan::PlanEntry,
    #[serde(rename = "l2Mode", skip_serializing_if = "Option::is_none")]
    l2_mode: Option<&'static str>,
}

fn plan_command(paths: &[PathBuf], output: Output, lb_class: Option<&str>) -> ExitCode {
    let objects = match load_valid(paths) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let entries = plan::plan(&objects, lb_class, &Default::default());
    // Only this project's extension is shown: MetalLB's single owner is the default.
    let shown: Vec<Shown> = entries
        .iter()
        .map(|entry| Shown {
            entry,
            l2_mode: entry
                .pool
                .as_deref()
                .and_then(|pool| l2mode::of_service(&objects, &entry.service, pool))
                .filter(|m| *m == l2mode::L2Mode::ActiveActive)
                .map(l2mode::L2Mode::as_str),
        })
        .collect();
    let rendered = match output {
        Output::Text => Ok(shown
            .iter()
            .map(|s| match s.l2_mode {
                Some(mode) => format!("{} [layer2 {mode}]\n", s.entry),
                None => format!("{}\n", s.entry),
            })
            .collect()),
        Output::Json => serde_json::to_string_pretty(&shown)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        Output::Yaml => serde_saphyr::to_string(&shown).map_err(|e| e.to_string()),
    };
    match rendered {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lb-controller: cannot render the plan: {e}");
            ExitCode::from(2)
        }
    }
}
