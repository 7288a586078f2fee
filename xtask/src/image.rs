//! `cargo xtask image`: multi-architecture OCI images of the controller and the agent, FROM
//! scratch.
//!
//! No base image can be downloaded here, and none is needed: the binaries are linked statically
//! (`-C target-feature=+crt-static`), so each platform's image is one layer holding one file.
//! The result is an OCI image layout per image under `target/images/` (a directory, and the same
//! as an `oci-archive` tarball) whose one tagged entry is an image index with a manifest per
//! architecture, as `docker buildx` and `podman manifest` make them: `skopeo copy --all
//! oci-archive:…` pushes every architecture under one tag. Layers are reproducible: fixed
//! timestamps, owners and gzip header, so the same binaries give the same digests.
use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use flate2::{Compression, GzBuilder};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// One image to build.
pub struct Spec<'a> {
    /// The binary's name, also its path in the image (`/NAME`) and the repository's last part.
    pub binary: &'a str,
    /// The statically linked binary of each platform: OCI architecture (`amd64`, `arm64`) and
    /// path.
    pub from: &'a [(&'a str, PathBuf)],
    /// `uid:gid` the container runs as unless the manifest says otherwise.
    pub user: &'a str,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `bytes` as a blob of the layout at `dir`; returns its descriptor fields.
fn blob(dir: &Path, media: &str, bytes: &[u8]) -> Result<Value> {
    let hex = sha256_hex(bytes);
    let path = dir.join("blobs/sha256").join(&hex);
    fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(json!({"mediaType": media, "digest": format!("sha256:{hex}"), "size": bytes.len()}))
}

/// The uncompressed layer: the binary at `/NAME`, mode 0755, owned by root, timestamp 0.
fn layer_tar(name: &str, binary: &[u8]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(binary.len() as u64);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, binary)
        .context("adding the binary to the layer")?;
    tar.into_inner().context("finishing the layer")
}

/// Writes one platform's layer, config and manifest; returns the manifest's descriptor.
fn platform_manifest(
    dir: &Path,
    spec: &Spec,
    architecture: &str,
    binary: &[u8],
    version: &str,
) -> Result<Value> {
    let tar = layer_tar(spec.binary, binary)?;
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    let mut gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::best());
    gz.write_all(&tar).context("compressing the layer")?;
    let layer = blob(
        dir,
        MEDIA_LAYER,
        &gz.finish().context("compressing the layer")?,
    )?;
    let config = json!({
        "architecture": architecture,
        "os": "linux",
        "config": {
            "Entrypoint": [format!("/{}", spec.binary)],
            "User": spec.user,
            "Labels": {
                "org.opencontainers.image.title": spec.binary,
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.description": "xdplb: a bare-metal LoadBalancer for Kubernetes, MetalLB-compatible",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "cargo xtask image (static binary, FROM scratch)"}],
    });
    let config = blob(dir, MEDIA_CONFIG, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config,
        "layers": [layer],
    });
    blob(dir, MEDIA_MANIFEST, &serde_json::to_vec(&manifest)?)
}

/// Builds the image of `spec` as an OCI layout in `out/NAME/` and an archive
/// `out/NAME-VERSION.oci.tar`, tagged `xdplb/NAME:VERSION`; returns the archive's path.
pub fn build(spec: &Spec, version: &str, out: &Path) -> Result<PathBuf> {
    let dir = out.join(spec.binary);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(dir.join("blobs/sha256"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut manifests = Vec::new();
    for (architecture, from) in spec.from {
        let binary = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        let mut desc = platform_manifest(&dir, spec, architecture, &binary, version)?;
        desc["platform"] = json!({"architecture": architecture, "os": "linux"});
        manifests.push(desc);
    }
    let reference = format!("xdplb/{}:{version}", spec.binary);
    let platforms = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": manifests,
    });
    let mut index_desc = blob(&dir, MEDIA_INDEX, &serde_json::to_vec(&platforms)?)?;
    index_desc["annotations"] = json!({"org.opencontainers.image.ref.name": reference});
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [index_desc],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
    fs::write(
        dir.join("oci-layout"),
        serde_json::to_vec(&json!({"imageLayoutVersion": "1.0.0"}))?,
    )?;

    // The archive is the layout's files in a tar, as `oci-archive:` expects.
    let archive = out.join(format!("{}-{version}.oci.tar", spec.binary));
    let mut tar = tar::Builder::new(
        fs::File::create(&archive).with_context(|| format!("creating {}", archive.display()))?,
    );
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_dir_all(".", &dir)
        .with_context(|| format!("archiving {}", dir.display()))?;
    tar.finish()?;
    Ok(archive)
}

/// One platform of a verified image.
#[derive(Debug)]
pub struct Platform {
    pub architecture: String,
    /// The layer's one file: the binary.
    pub binary: Vec<u8>,
}

/// Checks the layout at `dir`: every blob's digest and size match what refers to it, each
/// platform's config names the architecture its index entry claims, and each layer holds
/// exactly `/NAME`. Returns the reference and the platforms.
pub fn verify(dir: &Path, name: &str) -> Result<(String, Vec<Platform>)> {
    let read = |desc: &Value| -> Result<Vec<u8>> {
        let digest = desc["digest"]
            .as_str()
            .context("descriptor without digest")?;
        let hex = digest
            .strip_prefix("sha256:")
            .context("digest is not sha256")?;
        let bytes = fs::read(dir.join("blobs/sha256").join(hex))
            .with_context(|| format!("blob {digest}"))?;
        anyhow::ensure!(
            sha256_hex(&bytes) == hex,
            "blob {digest} does not match its digest"
        );
        anyhow::ensure!(
            desc["size"].as_u64() == Some(bytes.len() as u64),
            "blob {digest} has the wrong size"
        );
        Ok(bytes)
    };
    let index: Value = serde_json::from_slice(&fs::read(dir.join("index.json"))?)?;
    let desc = &index["manifests"][0];
    anyhow::ensure!(
        desc["mediaType"] == MEDIA_INDEX,
        "the tagged entry is not an image index"
    );
    let reference = desc["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .context("no ref.name")?
        .to_owned();
    let platforms: Value = serde_json::from_slice(&read(desc)?)?;
    let mut out = Vec::new();
    for desc in platforms["manifests"].as_array().context("no manifests")? {
        let architecture = desc["platform"]["architecture"]
            .as_str()
            .context("a manifest without platform")?;
        let manifest: Value = serde_json::from_slice(&read(desc)?)?;
        let config: Value = serde_json::from_slice(&read(&manifest["config"])?)?;
        anyhow::ensure!(
            config["architecture"] == architecture,
            "the {architecture} manifest's config says {}",
            config["architecture"]
        );
        let layer = read(&manifest["layers"][0])?;
        let mut tar_bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&layer[..]),
            &mut tar_bytes,
        )?;
        anyhow::ensure!(
            config["rootfs"]["diff_ids"][0].as_str()
                == Some(&*format!("sha256:{}", sha256_hex(&tar_bytes))),
            "the config's diff_id is not the layer's"
        );
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut files = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes)?;
            files.push((path, bytes));
        }
        match files.as_slice() {
            [(path, bytes)] if path == name => out.push(Platform {
                architecture: architecture.to_owned(),
                binary: bytes.clone(),
            }),
            other => anyhow::bail!(
                "the {architecture} layer should hold only {name}, it holds {:?}",
                other.iter().map(|(p, _)| p).collect::<Vec<_>>()
            ),
        }
    }
    Ok((reference, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-image-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    fn build_one(dir: &Path, content: &[u8]) -> PathBuf {
        let amd64 = dir.join("tool-amd64");
        fs::write(&amd64, content).expect("write the binary");
        let arm64 = dir.join("tool-arm64");
        fs::write(&arm64, [content, b" arm"].concat()).expect("write the binary");
        let spec = Spec {
            binary: "tool",
            from: &[("amd64", amd64), ("arm64", arm64)],
            user: "65534:65534",
        };
        build(&spec, "1.2.3", &dir.join("out")).expect("build the image")
    }

    #[test]
    fn an_image_holds_its_one_file_under_its_tag_and_rebuilds_identically() {
        let dir = scratch("ok");
        let archive = build_one(&dir, b"\x7fELF not really");
        assert!(archive.exists());
        let layout = dir.join("out/tool");
        let (reference, platforms) = verify(&layout, "tool").expect("a valid layout");
        assert_eq!(reference, "xdplb/tool:1.2.3");
        let got: Vec<(&str, &[u8])> = platforms
            .iter()
            .map(|p| (p.architecture.as_str(), p.binary.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                ("amd64", &b"\x7fELF not really"[..]),
                ("arm64", &b"\x7fELF not really arm"[..])
            ]
        );
        let first = fs::read(layout.join("index.json")).expect("index");
        build_one(&dir, b"\x7fELF not really");
        assert_eq!(
            fs::read(layout.join("index.json")).expect("index"),
            first,
            "the same binary gives the same digests"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tampered_blob_is_refused() {
        let dir = scratch("bad");
        build_one(&dir, b"payload");
        let blobs = dir.join("out/tool/blobs/sha256");
        let mut largest = None;
        for entry in fs::read_dir(&blobs).expect("blobs") {
            let path = entry.expect("entry").path();
            let len = fs::metadata(&path).expect("metadata").len();
            if largest.as_ref().is_none_or(|(l, _)| len > *l) {
                largest = Some((len, path));
            }
        }
        let (_, layer) = largest.expect("a blob");
        let mut bytes = fs::read(&layer).expect("layer");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&layer, bytes).expect("tamper");
        let err = verify(&dir.join("out/tool"), "tool").expect_err("tampering is caught");
        assert!(err.to_string().contains("does not match"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }
}
