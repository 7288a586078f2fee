//! Reading manifests: YAML files (several documents each) or directories of them, into typed
//! objects. A document that does not fit its kind's schema becomes a [`Problem`] naming the
//! object and the field; input that is not YAML at all is a [`LoadError`].
use std::path::{Path, PathBuf};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Secret, Service},
    discovery::v1::EndpointSlice,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    Problem,
    types::{
        BFDProfile, BGPAdvertisement, Community, IPAddressPool, L2Advertisement, v1beta1, v1beta2,
    },
};

/// Input that cannot be read as manifests at all (`validate` exits 2).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not YAML: {reason}")]
    Yaml { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
}

/// The largest manifest file read: ten times a dump of 100,000 Services. A bigger one is a
/// mistake (or a symlink to `/proc/kcore`) that would otherwise exhaust memory.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Unknown fields dropped from one document in lenient mode before it counts as an error:
/// each costs a new deserialisation of the document, so this keeps the cost linear.
pub const MAX_UNKNOWN_FIELDS: usize = 32;

/// The text of one configuration file, refusing what cannot be one: symlinks are followed
/// (Kubernetes mounts ConfigMaps through them) but the target must be a regular file of at
/// most [`MAX_FILE_BYTES`] (devices, FIFOs and `/proc` files are not).
pub fn read_text(path: &Path) -> Result<String, LoadError> {
    use std::io::Read;
    let refused = |reason: String| LoadError::Refused {
        path: path.to_owned(),
        reason,
    };
    let read_err = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(refused("not a regular file".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(refused(format!(
            "{} bytes is more than the {MAX_FILE_BYTES} a configuration file may have",
            meta.len()
        )));
    }
    let mut text = String::new();
    // The size can change between the check and the read: the reader is bounded too.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(refused(format!(
            "more than the {MAX_FILE_BYTES} bytes a configuration file may have"
        )));
    }
    Ok(text)
}

/// Everything the configuration is made of, in input order.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub pools: Vec<IPAddressPool>,
    pub l2_advertisements: Vec<L2Advertisement>,
    pub bgp_advertisements: Vec<BGPAdvertisement>,
    pub peers: Vec<v1beta2::BGPPeer>,
    pub bfd_profiles: Vec<BFDProfile>,
    pub communities: Vec<Community>,
    pub namespaces: Vec<Namespace>,
    pub nodes: Vec<Node>,
    pub secrets: Vec<Secret>,
    pub services: Vec<Service>,
    /// Read for `externalTrafficPolicy: Local` (which nodes hold a ready endpoint); the
    /// controller does not use them.
    pub endpoint_slices: Vec<EndpointSlice>,
}

impl Objects {
    /// Removes the metallb.io object of kind `kind` named `name` (in `namespace`, or in any
    /// when `None`); other kinds are left alone.
    pub fn remove(&mut self, kind: &str, namespace: Option<&str>, name: &str) {
        fn drop<T: kube::ResourceExt>(list: &mut Vec<T>, namespace: Option<&str>, name: &str) {
            list.retain(|o| {
                o.name_any() != name
                    || namespace.is_some_and(|ns| o.namespace().as_deref().unwrap_or("") != ns)
            });
        }
        match kind {
            "IPAddressPool" => drop(&mut self.pools, namespace, name),
            "L2Advertisement" => drop(&mut self.l2_advertisements, namespace, name),
            "BGPAdvertisement" => drop(&mut self.bgp_advertisements, namespace, name),
            "BGPPeer" => drop(&mut self.peers, namespace, name),
            "BFDProfile" => drop(&mut self.bfd_profiles, namespace, name),
            "Community" => drop(&mut self.communities, namespace, name),
            _ => {}
        }
    }
}

/// Adds one object given as JSON (an admission request's), as a document of a file would be.
pub fn add_object(doc: Value, strictness: Strictness, loaded: &mut Loaded) {
    sort(doc, Path::new("(request)"), strictness, loaded);
}

/// The YAML files named by `paths`: files as given, directories' `*.yaml` / `*.yml` entries in
/// name order (subdirectories, such as a standalone `status/`, are not entered).
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for path in paths {
        let read_err = |source| LoadError::Read {
            path: path.clone(),
            source,
        };
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(read_err)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                })
                .collect();
            entries.sort();
            out.extend(entries);
        } else {
            std::fs::metadata(path).map_err(read_err)?;
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// How configuration YAML is parsed.
///
/// serde-saphyr's default budget (1,024 documents, 250,000 nodes) guards against hostile input,
/// but a dump of a cluster's Services is neither hostile nor that small: the limits are raised
/// to what 100,000 Services need, and the alias limits that stop "billion laughs" stay.
pub fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 1_000_000,
            max_nodes: 50_000_000,
            max_events: 200_000_000,
        },
    }
}

/// The non-empty documents of one YAML text.
pub fn documents(path: &Path, text: &str) -> Result<Vec<Value>, LoadError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple_with_options(text, yaml_options()).map_err(|e| {
            LoadError::Yaml {
                path: path.to_owned(),
                reason: first_line(&e.to_string()),
            }
        })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The parser's message without the excerpt of the input it quotes below it: the file may be
/// a Secret, and the line and column are enough to find the mistake.
pub fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// What [`load`] read: the objects, the documents that do not fit their kind's schema
/// (errors), and documents of kinds xdplb does not read (warnings: they are ignored).
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Objects,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

/// Reads and sorts every object under `paths`; unknown fields are errors.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, LoadError> {
    load_with(paths, Strictness::Strict)
}

/// [`load`], with the given treatment of unknown fields.
pub fn load_with(paths: &[PathBuf], strictness: Strictness) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    for file in files(paths)? {
        let text = read_text(&file)?;
        // An editor saving in place truncates first: read in between, the file would take all
        // its objects with it (a pool gone, every Service's address with it). Nobody means
        // zero bytes; a deliberate emptying is a removal.
        if text.is_empty() {
            return Err(LoadError::Refused {
                path: file,
                reason: "empty (still being written?); remove the file to remove its objects"
                    .into(),
            });
        }
        add_text(&file, &text, strictness, &mut loaded)?;
    }
    Ok(loaded)
}

/// Adds the objects of one file's `text` (read from `path`) to `loaded`.
pub fn add_text(
    path: &Path,
    text: &str,
    strictness: Strictness,
    loaded: &mut Loaded,
) -> Result<(), LoadError> {
    for doc in documents(path, text)? {
        sort(doc, path, strictness, loaded);
    }
    Ok(())
}

fn str_at<'a>(doc: &'a Value, pointer: &str) -> &'a str {
    doc.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Deserializes `doc` as `T`, turning a failure into a problem with the field's path.
/// How unknown fields are treated (DESIGN.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// `validate` and `plan`: an unknown field is an error.
    Strict,
    /// A running controller: an unknown field is dropped with a warning, so a newer field
    /// never stops a working configuration.
    Lenient,
}

fn field_name(path: &serde_path_to_error::Path) -> String {
    let field = path.to_string();
    if field == "." {
        "(object)".to_owned()
    } else {
        field
    }
}

/// Removes the value at `path` from `doc`; false when the path does not lead anywhere.
fn remove_at(doc: &mut Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = doc;
    for seg in parents {
        let next = match seg {
            Segment::Map { key } => at.get_mut(key.as_str()),
            Segment::Seq { index } => at.get_mut(*index),
            _ => None,
        };
        let Some(next) = next else { return false };
        at = next;
    }
    match (last, at) {
        (Segment::Map { key }, Value::Object(map)) => map.remove(key.as_str()).is_some(),
        _ => false,
    }
}

/// Deserializes `doc` as `T`, turning a failure into a problem with the field's path. Lenient
/// mode drops unknown fields (each one a warning) and tries again.
fn typed<T: DeserializeOwned>(
    mut doc: Value,
    kind: &str,
    name: &str,
    strictness: Strictness,
    warnings: &mut Vec<Problem>,
) -> Result<T, Problem> {
    // Each retry removes one field and deserialises again: the count is bounded so that a
    // document of thousands of unknown fields costs no more than a few dozen passes.
    let mut dropped = 0;
    loop {
        match serde_path_to_error::deserialize(doc.clone()) {
            Ok(t) => return Ok(t),
            Err(e) => {
                let reason = e.inner().to_string();
                if strictness == Strictness::Lenient
                    && reason.starts_with("unknown field")
                    && dropped < MAX_UNKNOWN_FIELDS
                    && remove_at(&mut doc, e.path())
                {
                    dropped += 1;
                    warnings.push(Problem::new(
                        kind,
                        name,
                        field_name(e.path()),
                        format!("{reason}; ignored"),
                    ));
                    continue;
                }
                let reason = if dropped == MAX_UNKNOWN_FIELDS {
                    format!("{reason}; more than {MAX_UNKNOWN_FIELDS} unknown fields")
                } else {
                    reason
                };
                return Err(Problem::new(kind, name, field_name(e.path()), reason));
            }
        }
    }
}

fn sort(doc: Value, file: &Path, strictness: Strictness, loaded: &mut Loaded) {
    let (objects, problems, warnings) = (
        &mut loaded.objects,
        &mut loaded.errors,
        &mut loaded.warnings,
    );
    let api_version = str_at(&doc, "/apiVersion").to_owned();
    let kind = str_at(&doc, "/kind").to_owned();
    let name = str_at(&doc, "/metadata/name").to_owned();
    if kind.is_empty() {
        problems.push(Problem::new(
            "(unknown)",
            file.display().to_string(),
            "kind",
            "a document without a kind",
        ));
        return;
    }
    if name.is_empty() {
        problems.push(Problem::new(
            &kind,
            "(unnamed)",
            "metadata.name",
            "required",
        ));
        return;
    }
    let (group, version) = api_version
        .split_once('/')
        .unwrap_or(("", api_version.as_str()));
    if let Some(served) = versions(group, &kind)
        && !served.contains(&version)
    {
        let prefix = if group.is_empty() {
            String::new()
        } else {
            format!("{group}/")
        };
        let served: Vec<String> = served.iter().map(|v| format!("{prefix}{v}")).collect();
        problems.push(Problem::new(
            &kind,
            &name,
            "apiVersion",
            format!(
                "{api_version:?} has no {kind}; it is served as {}",
                served.join(" and ")
            ),
        ));
        return;
    }
    macro_rules! put {
        ($list:expr) => {
            match typed(doc, &kind, &name, strictness, warnings) {
                Ok(obj) => $list.push(obj),
                Err(p) => problems.push(p),
            }
        };
    }
    if (group, version, kind.as_str()) == ("metallb.io", "v1beta1", "BGPPeer") {
        match typed::<v1beta1::BGPPeer>(doc, &kind, &name, strictness, warnings) {
            Ok(old) => objects.peers.push(old.into()),
            Err(p) => problems.push(p),
        }
        return;
    }
    match (group, kind.as_str()) {
        ("metallb.io", "IPAddressPool") => put!(objects.pools),
        ("metallb.io", "L2Advertisement") => put!(objects.l2_advertisements),
        ("metallb.io", "BGPAdvertisement") => put!(objects.bgp_advertisements),
        ("metallb.io", "BGPPeer") => put!(objects.peers),
        ("metallb.io", "BFDProfile") => put!(objects.bfd_profiles),
        ("metallb.io", "Community") => put!(objects.communities),
        ("", "Namespace") => put!(objects.namespaces),
        ("", "Node") => put!(objects.nodes),
        ("", "Secret") => put!(objects.secrets),
        ("", "Service") => put!(objects.services),
        ("discovery.k8s.io", "EndpointSlice") => put!(objects.endpoint_slices),
        _ => warnings.push(Problem::new(
            &kind,
            &name,
            "apiVersion",
            format!("{api_version} {kind} is not a kind xdplb reads; ignored"),
        )),
    }
}

/// The versions the API serves a kind in; `None` for a kind xdplb does not read.
fn versions(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (group, kind) {
        ("metallb.io", "BGPPeer") => Some(&["v1beta1", "v1beta2"]),
        (
            "metallb.io",
            "IPAddressPool" | "L2Advertisement" | "BGPAdvertisement" | "BFDProfile" | "Community",
        ) => Some(&["v1beta1"]),
        ("", "Namespace" | "Node" | "Secret" | "Service") => Some(&["v1"]),
        ("discovery.k8s.io", "EndpointSlice") => Some(&["v1"]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p}\nspec:\n  addresses: [10.0.0.0/30]\n  colour: blue\n  serviceAllocation: {priority: 1, flavour: x}\n";

    fn load_text(strictness: Strictness) -> Loaded {
        load_yaml(POOL, strictness, "pool")
    }

    fn load_yaml(text: &str, strictness: Strictness, tag: &str) -> Loaded {
        let dir = std::env::temp_dir().join(format!(
            "xdplb-manifest-{}-{strictness:?}-{tag}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("objects.yaml"), text).expect("write");
        let loaded = load_with(std::slice::from_ref(&dir), strictness).expect("load");
        let _ = std::fs::remove_dir_all(&dir);
        loaded
    }

    #[test]
    fn a_file_of_thousands_of_objects_is_not_refused_as_hostile() {
        // serde-saphyr's default budget stops at 1,024 documents: a dump of a cluster's
        // Services is bigger than that.
        let text: String = (0..3000)
            .map(|i| format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{i}}}\n"))
            .collect();
        let docs = documents(Path::new("big.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(docs.len(), 3000);
    }

    #[test]
    fn unknown_fields_are_errors_when_strict_and_warnings_when_lenient() {
        let strict = load_text(Strictness::Strict);
        assert!(strict.objects.pools.is_empty());
        assert_eq!(strict.errors.len(), 1, "{:?}", strict.errors);
        assert_eq!(strict.errors[0].field, "spec.colour");

        let lenient = load_text(Strictness::Lenient);
        assert!(lenient.errors.is_empty(), "{:?}", lenient.errors);
        assert_eq!(lenient.objects.pools.len(), 1);
        let pool = &lenient.objects.pools[0];
        assert_eq!(pool.spec.addresses, vec!["10.0.0.0/30".to_owned()]);
        assert_eq!(
            pool.spec
                .service_allocation
                .as_ref()
                .and_then(|a| a.priority),
            Some(1)
        );
        let fields: Vec<&str> = lenient.warnings.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["spec.colour", "spec.serviceAllocation.flavour"]
        );
    }

    #[test]
    fn a_document_of_thousands_of_unknown_fields_is_an_error_not_minutes_of_retries() {
        let fields: String = (0..4000).map(|i| format!("  x{i}: 1\n")).collect();
        let text = format!(
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: p}}\nspec:\n  addresses: [10.0.0.0/30]\n{fields}"
        );
        let lenient = load_yaml(&text, Strictness::Lenient, "many");
        assert!(lenient.objects.pools.is_empty());
        assert_eq!(lenient.warnings.len(), MAX_UNKNOWN_FIELDS);
        assert_eq!(lenient.errors.len(), 1);
        assert!(
            lenient.errors[0]
                .reason
                .ends_with("more than 32 unknown fields"),
            "{}",
            lenient.errors[0]
        );
    }

    #[test]
    fn files_that_cannot_be_configuration_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("xdplb-manifest-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        // A sparse file: the size is refused before anything is read.
        let big = dir.join("big.yaml");
        let f = std::fs::File::create(&big).expect("create");
        f.set_len(MAX_FILE_BYTES + 1).expect("set_len");
        let device = dir.join("zero.yaml");
        let _ = std::fs::remove_file(&device);
        std::os::unix::fs::symlink("/dev/zero", &device).expect("symlink");
        let mounted = dir.join("mounted.yaml");
        let _ = std::fs::remove_file(&mounted);
        std::fs::write(dir.join("real"), POOL).expect("write");
        std::os::unix::fs::symlink(dir.join("real"), &mounted).expect("symlink");
        let outcome = |p: &Path| match load(&[p.to_owned()]) {
            Ok(l) => format!("{} pools", l.objects.pools.len() + l.errors.len()),
            Err(e) => e.to_string(),
        };
        assert!(
            outcome(&big)
                .ends_with("bytes is more than the 67108864 a configuration file may have"),
            "{}",
            outcome(&big)
        );
        assert!(
            outcome(&device).ends_with("zero.yaml: not a regular file"),
            "{}",
            outcome(&device)
        );
        let empty = dir.join("empty.yaml");
        std::fs::write(&empty, "").expect("write");
        assert!(
            outcome(&empty).ends_with(
                "empty.yaml: empty (still being written?); remove the file to remove its objects"
            ),
            "{}",
            outcome(&empty)
        );
        std::fs::write(&empty, "# nothing yet\n").expect("write");
        assert_eq!(
            outcome(&empty),
            "0 pools",
            "a file of comments is a deliberate one"
        );
        assert_eq!(
            outcome(&mounted),
            "1 pools",
            "a ConfigMap's symlink is followed"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn yaml_errors_name_the_place_without_quoting_the_input() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  key: \"hunter2-not-for-logs\n  other: [\n";
        let e = documents(Path::new("s.yaml"), text).expect_err("not YAML");
        let message = e.to_string();
        assert!(!message.contains("hunter2"), "{message}");
        assert!(message.contains("line 5"), "{message}");
    }

    /// MetalLB's own documentation applies an L2Advertisement with metadata only.
    #[test]
    fn advertisements_profiles_and_communities_may_leave_out_spec() {
        let text = [
            "L2Advertisement",
            "BGPAdvertisement",
            "BFDProfile",
            "Community",
        ]
        .iter()
        .map(|k| {
            format!("---\napiVersion: metallb.io/v1beta1\nkind: {k}\nmetadata: {{name: bare}}\n")
        })
        .collect::<String>()
            + "---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: typo}\nspec: {interface: [eth0]}\n";
        let loaded = load_yaml(&text, Strictness::Strict, "bare");
        let o = &loaded.objects;
        assert_eq!(o.l2_advertisements.len(), 1);
        assert_eq!(o.l2_advertisements[0].spec, Default::default());
        assert_eq!(o.bgp_advertisements.len(), 1);
        assert_eq!(o.bfd_profiles.len(), 1);
        assert_eq!(o.communities.len(), 1);
        // A spec that is there is read as strictly as before.
        let problems: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            vec![
                "L2Advertisement/typo: spec.interface: unknown field `interface`, expected one of `ipAddressPools`, `ipAddressPoolSelectors`, `nodeSelectors`, `interfaces`, `serviceSelectors`, `preferredNodeSelectors`"
            ]
        );
    }
}
