//! `DIR/status/allocations.yaml`: what the standalone controller decided, for the agents and
//! the tools to read (DESIGN.md §4). Written whole and atomically (write beside, then rename),
//! so a reader sees the old file or the new one, never half of one; fsynced, so that after a
//! power cut it is still one of the two.
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

/// A file that is there but cannot be read as allocations: the readers keep what they had
/// (an agent its last reading, the controller its last pass), since "no allocations" would
/// withdraw every address and re-plan the Services from nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Load(#[from] manifest::LoadError),
    #[error("{path}: empty (the controller always writes a header and a list)")]
    Empty { path: PathBuf },
    #[error("{path}: not allocations: {reason}")]
    Invalid { path: PathBuf, reason: String },
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

/// The allocations last written in `dir`: none when the file does not exist (nothing was
/// allocated yet), an error when it exists but is not what the controller writes.
pub fn read(dir: &Path) -> Result<AllocationsFile, ReadError> {
    let path = path(dir);
    let text = match manifest::read_text(&path) {
        Err(manifest::LoadError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(AllocationsFile::default());
        }
        other => other?,
    };
    if text.trim().is_empty() {
        return Err(ReadError::Empty { path });
    }
    serde_saphyr::from_str_with_options(&text, manifest::yaml_options()).map_err(|e| {
        ReadError::Invalid {
            path,
            reason: manifest::first_line(&e.to_string()),
        }
    })
}

/// Replaces the allocations of `dir` with `file`.
///
/// The temporary file has a fresh name and is created exclusively without following
/// symlinks: one planted in `status/` can neither redirect the write nor become the file.
pub fn write(dir: &Path, file: &AllocationsFile) -> Result<(), WriteError> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let yaml = serde_saphyr::to_string(file).map_err(|e| WriteError::Render(e.to_string()))?;
    let target = path(dir);
    let err = |source| WriteError::Io {
        path: target.clone(),
        source,
    };
    let status = dir.join(STATUS_DIR);
    std::fs::create_dir_all(&status).map_err(err)?;
    let tmp = status.join(format!(
        ".{ALLOCATIONS_FILE}.{}.{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(HEADER.as_bytes())?;
        f.write_all(yaml.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        // The rename itself is durable only once the directory is.
        std::fs::File::open(&status)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xdplb-alloc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(STATUS_DIR)).expect("dir");
        dir
    }

    fn one() -> AllocationsFile {
        AllocationsFile {
            allocations: vec![PlanEntry {
                service: "default/web".into(),
                ips: vec!["10.0.0.1".parse().expect("ip")],
                pool: Some("p".into()),
                pending: None,
            }],
        }
    }

    #[test]
    fn absent_is_none_but_empty_or_broken_is_an_error() {
        let dir = scratch("read");
        assert_eq!(read(&dir).expect("absent"), AllocationsFile::default());
        std::fs::write(path(&dir), "").expect("write");
        assert!(matches!(read(&dir), Err(ReadError::Empty { .. })));
        std::fs::write(path(&dir), "allocations: [{service: 7, ips: oops").expect("write");
        let e = read(&dir).expect_err("broken");
        assert!(e.to_string().contains("not allocations"), "{e}");
        write(&dir, &one()).expect("write");
        assert_eq!(read(&dir).expect("written"), one());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn symlinks_planted_in_the_status_directory_redirect_nothing() {
        let dir = scratch("links");
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").expect("write");
        let status = dir.join(STATUS_DIR);
        // The fixed temporary name once used, and the file itself.
        std::os::unix::fs::symlink(&victim, status.join(".allocations.yaml.tmp")).expect("link");
        std::os::unix::fs::symlink(&victim, path(&dir)).expect("link");
        write(&dir, &one()).expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious");
        let meta = std::fs::symlink_metadata(path(&dir)).expect("meta");
        assert!(
            meta.file_type().is_file(),
            "the link was replaced by a file"
        );
        assert_eq!(read(&dir).expect("read"), one());
        let left: Vec<_> = std::fs::read_dir(&status)
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".allocations.yaml.") && n != ".allocations.yaml.tmp")
            .collect();
        assert!(left.is_empty(), "no temporary file left: {left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
