//! What the manifest tests share: where the workspace is, whether a missing tool is a skip or
//! a failure, `kubectl kustomize` of a user's kustomization, and `kubernetes-validate`.
#![allow(dead_code)] // each test crate uses its own share of it

use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether the tests run under `cargo xtask test`, which installs every tool they need: then a
/// missing tool is a failure, not a skip.
pub fn required() -> bool {
    std::env::var("XDPLB_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// `kubectl kustomize` of a user's kustomization at `target/NAME/` holding `resources` and
/// `components` (paths relative to the workspace root); `None` (a skip) when kubectl is
/// missing outside `cargo xtask test`.
pub fn kustomize(name: &str, resources: &[&str], components: &[&str]) -> Option<Vec<Value>> {
    let dir = root().join("target").join(name);
    std::fs::create_dir_all(&dir).expect("a kustomization directory");
    let up = |paths: &[&str]| {
        paths
            .iter()
            .map(|p| format!("../../{p}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "resources: [{}]\ncomponents: [{}]\n",
            up(resources),
            up(components)
        ),
    )
    .expect("write the kustomization");
    let out = match std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(!required(), "kubectl kustomize unavailable: {e}");
            eprintln!("skipped: kubectl kustomize unavailable: {e}");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(lb_controller::config::manifest::documents(&dir, &text).expect("rendered YAML"))
}

/// A tool `cargo xtask setup` pins under the workspace (`relative` to its root); `None` (a
/// skip) when it is missing outside `cargo xtask test`.
pub fn pinned_tool(relative: &str) -> Option<PathBuf> {
    let tool = root().join(relative);
    if tool.exists() {
        return Some(tool);
    }
    assert!(
        !required(),
        "{} is missing: cargo xtask setup",
        tool.display()
    );
    eprintln!(
        "skipped: no {} (cargo xtask setup installs it)",
        tool.display()
    );
    None
}

/// The pinned `kubernetes-validate`.
pub fn validator() -> Option<PathBuf> {
    pinned_tool("target/tools/validate/bin/kubernetes-validate")
}

/// Runs `kubernetes-validate --strict` over the YAML documents `yaml`, asserts that it passes,
/// and returns its report.
pub fn kubernetes_validate(validator: &Path, yaml: &[u8], tag: &str) -> String {
    let file = std::env::temp_dir().join(format!("xdplb-{tag}-{}.yaml", std::process::id()));
    std::fs::write(&file, yaml).expect("write the manifests to validate");
    let out = std::process::Command::new(validator)
        .arg("--strict")
        .arg(&file)
        .output()
        .expect("run kubernetes-validate");
    let _ = std::fs::remove_file(&file);
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{tag}: {report}");
    report
}
