//! Builds the XDP object from `lb-ebpf` (nightly, bpf-linker) and leaves it in `$OUT_DIR/lb-ebpf`
//! for `include_bytes_aligned!`. `cargo xtask setup` installs what this needs.
fn main() -> anyhow::Result<()> {
    // The build-dependency on lb-ebpf only covers its (empty) library target; the program lives
    // in its binary target and the shared types in lb-common, so watch those sources directly.
    for dir in [
        "../lb-ebpf/src",
        "../lb-ebpf/Cargo.toml",
        "../lb-common/src",
    ] {
        println!("cargo:rerun-if-changed={dir}");
    }
    // aya-build forwards every line the inner cargo prints as a cargo warning, so its progress
    // ("Compiling ...") would make a clean build look like one with forty warnings. Quiet, it
    // prints only what is worth reading: compiler warnings and errors, which still come through.
    // SAFETY: the build script is single-threaded here; nothing reads the environment meanwhile.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
