//! `DIR/status/allocations.yaml`: what the standalone controller decided, for the agents and
//! the tools to read (DESIGN.md §4). Written whole and atomically (write beside, then rename),
//! so a reader sees the old file or the new one, never half of one.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{config::manifest, plan::PlanEntry};

/// The directory inside the configuration directory that the controller writes.
pub const STATUS_DIR: &str = "status";
pub const ALLOCATIONS_FILE: &str = "allocations.yaml";
const HEADER: &str = "# Written by lb-controller (standalone mode); agents read it. Do not edit.\n";

/// The content of `status/allocations.yaml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationsFile {
    pub allocations: Vec<PlanEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot render the allocations: {0}")]
    Render(String),
}

/// Where the allocations of configuration directory `dir` are.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(STATUS_DIR).join(ALLOCATIONS_FILE)
}

/// The allocations last written in `dir`, if any (an unreadable file counts as none: the
/// controller writes it again at its next pass).
pub fn read(dir: &Path) -> AllocationsFile {
    std::fs::read_to_string(path(dir))
        .ok()
        .and_then(|text| serde_saphyr::from_str_with_options(&text, manifest::yaml_options()).ok())
        .unwrap_or_default()
}

/// Replaces the allocations of `dir` with `file`.
pub fn write(dir: &Path, file: &AllocationsFile) -> Result<(), WriteError> {
    let yaml = serde_saphyr::to_string(file).map_err(|e| WriteError::Render(e.to_string()))?;
    let target = path(dir);
    let err = |source| WriteError::Io {
        path: target.clone(),
        source,
    };
    let status = dir.join(STATUS_DIR);
    std::fs::create_dir_all(&status).map_err(err)?;
    let tmp = status.join(format!(".{ALLOCATIONS_FILE}.tmp"));
    std::fs::write(&tmp, format!("{HEADER}{yaml}")).map_err(err)?;
    std::fs::rename(&tmp, &target).map_err(err)
}
