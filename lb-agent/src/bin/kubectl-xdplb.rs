//! `kubectl xdplb`: which node announces each LoadBalancer Service, and why one is not
//! answered, from the API alone (a laptop with a kubeconfig is enough), or from a standalone
//! configuration directory. Copy the binary onto PATH and kubectl finds it.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use lb_agent::diagnose::{self, Facts, Link, Status, Why};

#[derive(Parser)]
#[command(
    name = "kubectl-xdplb",
    version,
    about = "Which node announces each LoadBalancer Service, and why one is not answered"
)]
struct Cli {
    /// Where the metallb.io objects and the agents' status objects are.
    #[arg(long, short = 'n', global = true, default_value = "metallb-system")]
    namespace: String,
    /// The load-balancer class xdplb serves (as its `--lb-class`); none: Services without one.
    #[arg(long, global = true)]
    lb_class: Option<String>,
    /// A standalone configuration directory instead of the cluster.
    #[arg(long, global = true)]
    config_dir: Option<PathBuf>,
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum Command {
    /// Pools and their usage, every LoadBalancer Service with its addresses, mode and the
    /// nodes announcing it, BGP sessions, agents that are not ready.
    Status,
    /// Walks the chain for one Service and names the first broken link (exit 1), or who
    /// answers for it (exit 0).
    Why {
        /// `NAMESPACE/NAME` (`NAME` alone: namespace `default`).
        service: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let facts = match gather(&cli) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kubectl-xdplb: {e:#}");
            return ExitCode::from(2);
        }
    };
    match &cli.command {
        Command::Status => {
            let s = diagnose::status(&facts);
            emit(cli.output, &s, status_text);
            ExitCode::SUCCESS
        }
        Command::Why { service } => {
            let key = if service.contains('/') {
                service.clone()
            } else {
                format!("default/{service}")
            };
            let w = diagnose::why(&facts, &key);
            emit(cli.output, &w, why_text);
            if w.link == Link::Announced {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn gather(cli: &Cli) -> anyhow::Result<Facts> {
    if let Some(dir) = &cli.config_dir {
        return Ok(diagnose::dir::gather(dir, cli.lb_class.clone())?);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = kube::Client::try_default().await?;
        Ok(diagnose::cluster::gather(&client, &cli.namespace, cli.lb_class.clone()).await?)
    })
}

fn emit<T: serde::Serialize>(output: Output, value: &T, text: fn(&T) -> String) {
    let rendered = match output {
        Output::Text => Ok(text(value)),
        Output::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        Output::Yaml => serde_saphyr::to_string(value).map_err(|e| e.to_string()),
    };
    match rendered {
        Ok(s) => print!("{s}"),
        Err(e) => eprintln!("kubectl-xdplb: cannot render: {e}"),
    }
}

fn why_text(w: &Why) -> String {
    let mut out = format!("{}\n", w.says);
    for d in &w.details {
        out.push_str(&format!("  {d}\n"));
    }
    out
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

fn status_text(s: &Status) -> String {
    let pools: Vec<Vec<String>> = s
        .pools
        .iter()
        .map(|p| {
            vec![
                p.pool.clone(),
                p.assigned.to_string(),
                p.available.to_string(),
            ]
        })
        .collect();
    let services: Vec<Vec<String>> = s
        .services
        .iter()
        .map(|r| {
            vec![
                r.service.clone(),
                r.ips.join(","),
                r.mode.clone(),
                if r.announced_by.is_empty() {
                    "-".into()
                } else {
                    r.announced_by.join("; ")
                },
                serde_json::to_value(r.link)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let sessions: Vec<Vec<String>> = s
        .sessions
        .iter()
        .map(|x| vec![x.node.clone(), x.peer.clone(), x.bgp.clone(), x.bfd.clone()])
        .collect();
    let mut out = table(&["POOL", "ASSIGNED", "AVAILABLE"], &pools);
    out.push('\n');
    out += &table(
        &["SERVICE", "ADDRESSES", "MODE", "ANNOUNCED BY", "STATE"],
        &services,
    );
    if !sessions.is_empty() {
        out.push('\n');
        out += &table(&["NODE", "PEER", "BGP", "BFD"], &sessions);
    }
    if let Some(unready) = &s.agents_not_ready
        && !unready.is_empty()
    {
        out += &format!("\nnodes without a ready agent: {}\n", unready.join(", "));
    }
    out
}
