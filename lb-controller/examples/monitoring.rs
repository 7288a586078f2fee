//! Writes `DIR/prometheusrule.yaml` from `DIR/rules.yaml` (`cargo xtask crds` runs this with
//! `deploy/monitoring`).
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("usage: monitoring DIR"))?;
    let rules = std::fs::read_to_string(dir.join("rules.yaml"))?;
    let out = dir.join("prometheusrule.yaml");
    std::fs::write(
        &out,
        lb_controller::monitoring::prometheus_rule(&rules).map_err(anyhow::Error::msg)?,
    )?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
