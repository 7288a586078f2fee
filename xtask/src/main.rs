//! `cargo xtask <task>`: what cargo alone cannot express.
//!
//! - `setup`: installs what builds and tests need, idempotently (rustup components, bpf-linker,
//!   Debian packages, the bpf filesystem).
//! - `build-ebpf`: builds the XDP object alone (lb-agent's build script does the same for
//!   every `cargo build`); prints where it is.
//! - `build`: the release binaries.
//! - `test`: setup, fmt check, clippy with warnings denied, build, every test.
//! - `bench`: the benchmark table.
//! - `demo`: the product tour.
//! - `lab up|status|down`: the demo's lab, left running to explore by hand.
//! - `crds`: regenerate `deploy/crds` from the controller's types.
//! - `image`: OCI images of the controller and the agent (see [`image`]).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod image;

/// The offline validator of the manifests (PyPI), and where setup puts it.
const KUBERNETES_VALIDATE: &str = "1.37.0";
const VALIDATE_VENV: &str = "target/tools/validate";
/// Helm's Go SDK as a Python library (PyPI): renders and lints the chart without a helm binary.
const HELM_SDK: &str = "0.2.2";
const HELM_VENV: &str = "target/tools/helm";

/// A platform the images are built for.
struct Arch {
    /// The OCI name (`platform.architecture`).
    oci: &'static str,
    target: &'static str,
    /// The cross linker (Debian's), none for the host.
    linker: Option<&'static str>,
    /// What runs its binaries on this (x86-64) machine, none for the host.
    emulator: Option<&'static str>,
}

/// amd64 is the host; arm64 is cross-compiled with Debian's cross gcc (the linker, and the C
/// of `ring`) and run here under qemu-user.
const ARCHES: &[Arch] = &[
    Arch {
        oci: "amd64",
        target: "x86_64-unknown-linux-gnu",
        linker: None,
        emulator: None,
    },
    Arch {
        oci: "arm64",
        target: "aarch64-unknown-linux-gnu",
        linker: Some("aarch64-linux-gnu-gcc"),
        emulator: Some("qemu-aarch64-static"),
    },
];
const ARM64: &Arch = &ARCHES[1];

/// bpf-linker 0.10.0 is the last release that uses rustc's own LLVM; newer ones need a system
/// LLVM 21+ that Debian 12 does not ship (research/toolchain.md).
const BPF_LINKER_VERSION: &str = "0.10.0";
/// The nightly toolchain the eBPF crate builds with (the one rustup provides here).
const NIGHTLY: &str = "nightly";
/// Debian packages the tests, bench and demo run: `arping` (Thomas Habets'), `ndisc6`,
/// `bpftool`, `ip`/`nsenter`/`ethtool`, `ping` (the lab's reachability check), `keepalived`
/// (the failover baseline in the bench), FRR, GoBGP and BIRD (the BGP peers of the interop
/// tests), Prometheus (`promtool` checks and unit-tests the alerting rules), the arm64 cross
/// compiler and libc, qemu-user to run the arm64 binaries, and `stress-ng` and `iperf3` (the
/// bench's saturated CPUs and loaded segment).
const APT_PACKAGES: &[&str] = &[
    "arping",
    "bird2",
    "frr",
    "gobgpd",
    "iputils-ping",
    "keepalived",
    "ndisc6",
    "bpftool",
    "iproute2",
    "util-linux",
    "ethtool",
    "tcpdump",
    "procps",
    "faketime",
    "prometheus",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user-static",
    "stress-ng",
    "iperf3",
];

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Build the XDP object (lb-ebpf) on its own.
    BuildEbpf,
    /// Build the release binaries.
    Build,
    /// Setup, format check, clippy (warnings denied), build, and run every test.
    Test,
    /// Run the benchmarks and print the table.
    Bench,
    /// Run every fuzz target (the decoders of BGP, BFD and heartbeats, the AF_PACKET
    /// responder's frame parser, the configuration model) for many more inputs than the tests
    /// do, optimised.
    Fuzz {
        /// Inputs per target.
        #[arg(long, default_value_t = 100_000)]
        cases: u32,
    },
    /// The product tour: announce VIPs from XDP in a small lab and show the answers.
    Demo,
    /// Regenerate deploy/crds from lb-controller's types.
    Crds,
    /// OCI images of lb-controller and lb-agent (static binaries, FROM scratch) in
    /// target/images/, checked: digests, one file per image, and the binary runs alone.
    Image,
    /// The demo's lab, left running to explore: `lab up`, `lab status`, `lab down`.
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
}

#[derive(Subcommand)]
enum LabAction {
    /// Three nodes, a client and a bridge in network namespaces, the standalone controller and
    /// one agent per node, from deploy/examples/standalone.
    Up,
    /// Show what runs and how to reach it.
    Status,
    /// Stop the processes and delete the namespaces, pins and files `up` created.
    Down,
}

fn main() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::BuildEbpf => build_ebpf(&root),
        Task::Build => {
            step(BUILDING);
            cargo(&root, &["build", "--workspace", "--release"])
        }
        Task::Test => test(&root),
        Task::Bench => run_release_bin(&root, "xdplb-bench", &[]),
        Task::Fuzz { cases } => fuzz(&root, cases),
        Task::Demo => run_release_bin(&root, "xdplb-demo", &[]),
        Task::Lab { action } => {
            let verb = match action {
                LabAction::Up => "up",
                LabAction::Status => "status",
                LabAction::Down => "down",
            };
            run_release_bin(&root, "xdplb-lab", &[verb])
        }
        Task::Image => images(&root),
        Task::Crds => {
            // The CRDs from the types, and the PrometheusRule from the rule file.
            for (example, dir) in [("crds", "deploy/crds"), ("monitoring", "deploy/monitoring")] {
                let dir = root.join(dir);
                let dir = dir.to_str().context("deploy/ path is not UTF-8")?;
                cargo(
                    &root,
                    &[
                        "run",
                        "-q",
                        "-p",
                        "lb-controller",
                        "--example",
                        example,
                        "--",
                        dir,
                    ],
                )?;
            }
            Ok(())
        }
    }
}

/// Sets up, builds the agent and the lab binaries in release mode, and runs `name` (from
/// `bpf-tests`: it drives the real `lb-agent` in network namespaces).
fn run_release_bin(root: &Path, name: &str, args: &[&str]) -> Result<()> {
    setup()?;
    step(BUILDING);
    cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "lb-agent",
            "-p",
            "lb-controller",
            "-p",
            "bpf-tests",
        ],
    )?;
    run(Command::new(root.join("target/release").join(name))
        .args(args)
        .current_dir(root))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(args).current_dir(root);
    run(&mut cmd)
}

/// The fuzz targets are the proptest properties named `*never_panic*`: in the tests they run
/// the default 256 cases each; here `cases`, in a release build (with overflow checks kept, so
/// an arithmetic overflow is still found).
fn fuzz(root: &Path, cases: u32) -> Result<()> {
    step(&format!(
        "fuzz targets, {cases} inputs each (cargo test --release -- never_panic)"
    ));
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "test",
        "--release",
        "-p",
        "lb-agent",
        "-p",
        "lb-controller",
        "--lib",
        "--",
        "never_panic",
        "--test-threads",
        "2",
    ])
    .env("PROPTEST_CASES", cases.to_string())
    .env("CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS", "true")
    .current_dir(root);
    run(&mut cmd)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Said before a build: the XDP program's own compilation prints nothing unless it has
/// something to say, and on a fresh checkout it takes a while.
const BUILDING: &str =
    "cargo build (lb-agent's build script compiles the XDP program with nightly and bpf-linker)";

fn step(what: &str) {
    eprintln!("==> {what}");
}

fn setup() -> Result<()> {
    step("rustup components");
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    let nightly_components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    if !nightly_components
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }
    let stable_components =
        output(Command::new("rustup").args(["component", "list", "--installed"]))
            .unwrap_or_default();
    for component in ["clippy", "rustfmt"] {
        if !stable_components.lines().any(|l| l.starts_with(component)) {
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    let targets =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    for arch in ARCHES {
        if !targets.lines().any(|l| l.trim() == arch.target) {
            run(Command::new("rustup").args(["target", "add", arch.target]))?;
        }
    }

    step(&format!("bpf-linker {BPF_LINKER_VERSION}"));
    let have = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !have.contains(BPF_LINKER_VERSION) {
        run(Command::new("cargo").env_remove("RUSTUP_TOOLCHAIN").args([
            &format!("+{NIGHTLY}"),
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ]))?;
    }

    step("Debian packages");
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!(
                "missing packages {missing:?}; run as root or: apt-get install {}",
                missing.join(" ")
            );
        }
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing))?;
    }

    step("manifest validation tools");
    validation_tools(&workspace_root())?;

    step("bpf filesystem");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        if is_root() {
            run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
        } else {
            eprintln!("    /sys/fs/bpf is not mounted (needs root: mount -t bpf bpf /sys/fs/bpf)");
        }
    }
    Ok(())
}

/// `kubernetes-validate` and `helm-python-sdk` from PyPI, pinned, in virtualenvs of the
/// workspace (`target/tools/validate`, `target/tools/helm`, where the manifest and chart tests
/// look for them), and a `kubectl` that renders kustomizations (Debian's `kubernetes-client`
/// when none is installed).
fn validation_tools(root: &Path) -> Result<()> {
    let venv = root.join(VALIDATE_VENV);
    let tool = venv.join("bin/kubernetes-validate");
    let have = output(Command::new(&tool).arg("--version")).unwrap_or_default();
    if !have.contains(KUBERNETES_VALIDATE) {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .arg(format!("kubernetes-validate=={KUBERNETES_VALIDATE}")))?;
    }
    let venv = root.join(HELM_VENV);
    let have = output(Command::new(venv.join("bin/python")).args([
        "-c",
        "import importlib.metadata as m; print(m.version('helm-python-sdk'))",
    ]))
    .unwrap_or_default();
    if have.trim() != HELM_SDK {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .arg(format!("helm-python-sdk=={HELM_SDK}")))?;
    }
    if output(Command::new("kubectl").args(["kustomize", "--help"])).is_none() {
        if !is_root() {
            bail!(
                "no kubectl to render deploy/; run as root or: apt-get install kubernetes-client"
            );
        }
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "kubernetes-client",
            ]))?;
    }
    Ok(())
}

fn build_ebpf(root: &Path) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.env_remove("RUSTUP_TOOLCHAIN").current_dir(root).args([
        &format!("+{NIGHTLY}"),
        "build",
        "-p",
        "lb-ebpf",
        "--bins",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ]);
    run(&mut cmd)?;
    eprintln!(
        "XDP object: {}",
        root.join("target/bpfel-unknown-none/release/lb-ebpf")
            .display()
    );
    Ok(())
}

fn test(root: &Path) -> Result<()> {
    setup()?;
    step("cargo fmt --check");
    cargo(root, &["fmt", "--all", "--check"])?;
    step("cargo clippy -D warnings");
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    step(BUILDING);
    cargo(root, &["build", "--workspace"])?;
    // The arm64 smoke test (bpf-tests/tests/arm64.rs) runs these under qemu-user.
    step("static arm64 binaries (debug)");
    static_build(root, ARM64, false)?;
    step("cargo test");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["test", "--workspace", "--exclude", "lb-ebpf"])
        .current_dir(root);
    if is_root() {
        // Privileged tests must run, not skip, wherever they can.
        cmd.env("XDPLB_REQUIRE_PRIVILEGED", "1");
    } else {
        eprintln!("    not root: privileged tests (bpf-tests) will skip");
    }
    run(&mut cmd)
}

/// `cargo build` of the agent and the controller for `arch`, statically linked.
fn static_build(root: &Path, arch: &Arch, release: bool) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--target", arch.target])
        .args(["-p", "lb-controller", "-p", "lb-agent"]);
    if release {
        cmd.arg("--release");
    }
    if let Some(linker) = arch.linker {
        let var = format!(
            "CARGO_TARGET_{}_LINKER",
            arch.target.to_uppercase().replace('-', "_")
        );
        cmd.env(var, linker);
    }
    run(&mut cmd).with_context(|| format!("the static {} build", arch.oci))
}

/// Builds the static binaries of every architecture and their multi-arch images, then checks
/// each image: the layout's digests, a layer of one file per platform, and that file running
/// alone in an empty root (so it needs no libc), arm64 under qemu-user.
fn images(root: &Path) -> Result<()> {
    setup()?;
    for arch in ARCHES {
        step(&format!("static {} binaries (release)", arch.oci));
        static_build(root, arch, true)?;
    }
    let version = env!("CARGO_PKG_VERSION");
    let out = root.join("target/images");
    std::fs::create_dir_all(&out).context("creating target/images")?;
    for (binary, user) in [("lb-controller", "65534:65534"), ("lb-agent", "0:0")] {
        let from: Vec<(&str, PathBuf)> = ARCHES
            .iter()
            .map(|a| {
                let path = root
                    .join("target")
                    .join(a.target)
                    .join("release")
                    .join(binary);
                (a.oci, path)
            })
            .collect();
        let archive = image::build(
            &image::Spec {
                binary,
                from: &from,
                user,
            },
            version,
            &out,
        )?;
        let (reference, platforms) = image::verify(&out.join(binary), binary)?;
        let mut ran_alone = Vec::new();
        for platform in &platforms {
            let arch = ARCHES
                .iter()
                .find(|a| a.oci == platform.architecture)
                .context("an image platform xtask does not build")?;
            let version = run_alone(&out, binary, &platform.binary, arch)?;
            ran_alone.push(format!("{}: {version}", arch.oci));
        }
        println!(
            "{reference}: {} ({}; runs alone: {})",
            archive.display(),
            out.join(binary).display(),
            ran_alone.join(", ")
        );
    }
    Ok(())
}

/// Runs `binary --version` in an empty root holding only it (and, for a foreign architecture,
/// the static emulator): a dynamically linked binary cannot even start there.
fn run_alone(out: &Path, binary: &str, bytes: &[u8], arch: &Arch) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let rootfs = out.join(format!("{binary}-{}.rootfs", arch.oci));
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs)?;
    }
    std::fs::create_dir_all(&rootfs)?;
    let inside = rootfs.join(binary);
    std::fs::write(&inside, bytes)?;
    std::fs::set_permissions(&inside, PermissionsExt::from_mode(0o755))?;
    let mut cmd = Command::new("chroot");
    cmd.arg(&rootfs);
    if let Some(emulator) = arch.emulator {
        let host = which(emulator).with_context(|| format!("no {emulator} (cargo xtask setup)"))?;
        std::fs::copy(&host, rootfs.join(emulator))?;
        cmd.arg(format!("/{emulator}"));
    }
    let ran = cmd
        .arg(format!("/{binary}"))
        .arg("--version")
        .output()
        .context("running chroot")?;
    std::fs::remove_dir_all(&rootfs)?;
    if !ran.status.success() {
        bail!(
            "{binary} ({}) does not run alone in its image: {}",
            arch.oci,
            String::from_utf8_lossy(&ran.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&ran.stdout).trim().to_owned())
}

/// The first `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}
