//! Writes the CRDs into the directory given as the only argument (`cargo xtask crds` runs this
//! with `deploy/crds`).
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("usage: crds DIR"))?;
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in lb_controller::config::crds::render().map_err(anyhow::Error::msg)? {
        std::fs::write(dir.join(&file), yaml)?;
        eprintln!("wrote {}", dir.join(file).display());
    }
    Ok(())
}
