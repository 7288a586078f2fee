//! lb-controller: MetalLB-compatible configuration, IPAM and Service status.
//!
//! Not built yet: the configuration model, validation, IPAM and the `validate` / `plan` / `run`
//! commands are the next piece of work (see the project's issues). Until then this binary says
//! so instead of pretending.
use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("lb-controller: not implemented yet (validate, plan and run are coming)");
    ExitCode::from(2)
}
