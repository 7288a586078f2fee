//! lb-controller: MetalLB-compatible configuration, IPAM and Service status.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_controller::config::{manifest, validate};

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
    /// Not built yet: allocate addresses as the running controller would.
    Plan {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Not built yet: run the controller.
    Run,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { paths } => validate_command(&paths),
        Command::Plan { .. } | Command::Run => {
            eprintln!(
                "lb-controller: not implemented yet (plan and run are coming; validate works)"
            );
            ExitCode::from(2)
        }
    }
}

fn validate_command(paths: &[PathBuf]) -> ExitCode {
    let loaded = match manifest::load(paths) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lb-controller: {e}");
            return ExitCode::from(2);
        }
    };
    let report = validate::validate(&loaded.objects);
    for w in loaded.warnings.iter().chain(&report.warnings) {
        eprintln!("warning: {w}");
    }
    let errors: Vec<_> = loaded.errors.iter().chain(&report.errors).collect();
    if errors.is_empty() {
        println!("valid");
        ExitCode::SUCCESS
    } else {
        for e in errors {
            println!("{e}");
        }
        ExitCode::from(1)
    }
}
