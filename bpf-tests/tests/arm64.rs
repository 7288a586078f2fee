//! The arm64 build, run here under qemu-user: the static aarch64 binaries that `cargo xtask
//! test` cross-compiles answer `--help`, validate the examples and plan them exactly as the
//! host's binaries do (allocation order, the Layer 2 owner hash and the output formats are the
//! same on both architectures).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use bpf_tests::{harness::agent::workspace_bin, required};

const TARGET: &str = "aarch64-unknown-linux-gnu";
const EMULATOR: &str = "qemu-aarch64-static";
/// ELF `e_machine` of AArch64.
const EM_AARCH64: u16 = 183;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The arm64 build of `name` (checked to be an AArch64 ELF), or None to skip.
fn arm64_bin(name: &str) -> Option<PathBuf> {
    let path = root().join("target").join(TARGET).join("debug").join(name);
    let Ok(bytes) = std::fs::read(&path) else {
        assert!(
            !required(),
            "{} missing: cargo xtask test cross-builds it",
            path.display()
        );
        eprintln!("skipped: no {}", path.display());
        return None;
    };
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not an ELF", path.display());
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    assert_eq!(machine, EM_AARCH64, "{} is not AArch64", path.display());
    Some(path)
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(program: &Path, emulated: bool, args: &[&str]) -> Ran {
    let mut cmd = if emulated {
        let mut cmd = Command::new(EMULATOR);
        cmd.arg(program);
        cmd
    } else {
        Command::new(program)
    };
    let out = cmd
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {} ({e}; cargo xtask setup installs qemu-user-static)",
                program.display()
            )
        });
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `args` with the arm64 and the host build of `name`; asserts both exit `code` with the
/// same output, and returns the arm64 stdout.
fn same_on_both(name: &str, args: &[&str], code: i32) -> Option<String> {
    let arm = arm64_bin(name)?;
    let arm = run(&arm, true, args);
    let host = run(&workspace_bin(name), false, args);
    assert_eq!(
        arm.code,
        Some(code),
        "arm64 {name} {args:?}: {}{}",
        arm.stdout,
        arm.stderr
    );
    assert_eq!(arm.stdout, host.stdout, "arm64 and host {name} {args:?}");
    assert_eq!(arm.stderr, host.stderr, "arm64 and host {name} {args:?}");
    Some(arm.stdout)
}

#[test]
fn every_arm64_binary_answers_help() {
    for (name, says) in [
        ("lb-controller", "xdplb controller"),
        ("lb-agent", "Usage: lb-agent"),
        ("kubectl-xdplb", "Usage: kubectl-xdplb"),
    ] {
        let Some(out) = same_on_both(name, &["--help"], 0) else {
            return;
        };
        assert!(out.contains(says), "{name} --help: {out}");
    }
}

#[test]
fn arm64_controller_validates_the_examples_and_refuses_a_bad_one() {
    for dir in ["deploy/examples/standalone", "deploy/examples/cluster"] {
        let Some(out) = same_on_both("lb-controller", &["validate", dir], 0) else {
            return;
        };
        assert_eq!(out.trim(), "valid", "{dir}");
    }
    let bad = std::env::temp_dir().join(format!("xdplb-arm64-bad-{}.yaml", std::process::id()));
    std::fs::write(
        &bad,
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p, namespace: metallb-system}\nspec:\n  addresses: [\"10.0.0.9-10.0.0.1\"]\n",
    )
    .expect("write the bad manifest");
    let out = same_on_both(
        "lb-controller",
        &["validate", bad.to_str().expect("utf-8")],
        1,
    );
    let _ = std::fs::remove_file(&bad);
    let out = out.expect("the arm64 binary ran above");
    assert!(out.contains("IPAddressPool/p: spec.addresses"), "{out}");
}

#[test]
fn arm64_plans_and_diagnoses_the_examples_as_the_host_does() {
    let dir = "deploy/examples/standalone";
    let Some(text) = same_on_both("lb-controller", &["plan", dir], 0) else {
        return;
    };
    assert!(
        text.contains("default/web: 10.210.0.100,fd00:210::100 (pool demo)"),
        "{text}"
    );
    let json = same_on_both("lb-controller", &["plan", dir, "--output", "json"], 0)
        .expect("the arm64 binary ran above");
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("plan --output json");
    assert!(parsed.as_array().is_some_and(|a| !a.is_empty()), "{json}");
    // The expected Layer 2 owner comes from MetalLB's hash of node and address.
    let status = same_on_both("kubectl-xdplb", &["status", "--config-dir", dir], 0)
        .expect("the arm64 binary ran above");
    assert!(status.contains("(expected)"), "{status}");
}
