//! Our CRDs against MetalLB's published ones (`config/crd/bases` in metallb/metallb): same
//! kinds, names, versions, printer columns, subresources, and for every field the same type,
//! format, bounds, defaults, enums, required fields, list/map semantics and CEL rules, so that
//! any object MetalLB's API server accepts is accepted here and checked alike.
//!
//! MetalLB's YAML is not copied into this repository; `tests/data/metallb-crds.txt` holds its
//! fingerprint (one line per version and per field, no descriptions), written by this test
//! from a MetalLB checkout, and `tests/data/frrk8s-crds.txt` FRR-K8s' BGPSessionState's:
//!
//! ```sh
//! METALLB_CRDS=/path/to/metallb/config/crd/bases METALLB_REF=<commit> \
//! FRRK8S_CRDS=/path/to/frr-k8s/config/crd/bases FRRK8S_REF=<commit> \
//!     cargo test -p lb-controller --test metallb_crds
//! ```
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn reference_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/metallb-crds.txt")
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        // Kubernetes' Go types read bounds as floats: 2 and 2.0 are the same bound.
        Value::Number(n)
            if n.as_f64()
                .is_some_and(|f| f.fract() == 0.0 && f.abs() < 1e15) =>
        {
            format!("{}", n.as_f64().unwrap_or_default() as i64)
        }
        other => other.to_string(),
    }
}

/// One line per schema node: its path and every constraint, descriptions left out.
fn fields(prefix: &str, path: &str, s: &Value, out: &mut BTreeSet<String>) {
    let mut line = format!("{prefix} {}", if path.is_empty() { "." } else { path });
    for key in [
        "type",
        "format",
        "enum",
        "default",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "pattern",
        "nullable",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
        "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-embedded-resource",
    ] {
        if let Some(v) = s.get(key) {
            line += &format!(" {key}={}", show(v));
        }
    }
    if let Some(Value::Array(required)) = s.get("required") {
        let mut r: Vec<String> = required.iter().map(show).collect();
        r.sort();
        line += &format!(" required={}", r.join(","));
    }
    if let Some(Value::Array(rules)) = s.get("x-kubernetes-validations") {
        for r in rules {
            line += &format!(" rule=[{}|{}]", show(&r["rule"]), show(&r["message"]));
        }
    }
    if s.get("additionalProperties").is_some_and(Value::is_object) {
        line += " map";
    }
    out.insert(line);
    if let Some(Value::Object(props)) = s.get("properties") {
        for (name, child) in props {
            fields(prefix, &format!("{path}.{name}"), child, out);
        }
    }
    if let Some(items) = s.get("items") {
        fields(prefix, &format!("{path}[]"), items, out);
    }
    if let Some(values) = s.get("additionalProperties").filter(|v| v.is_object()) {
        fields(prefix, &format!("{path}{{}}"), values, out);
    }
}

/// The fingerprint of one CRD.
fn fingerprint(crd: &Value, out: &mut BTreeSet<String>) {
    let spec = &crd["spec"];
    let kind = show(&spec["names"]["kind"]);
    let names = &spec["names"];
    out.insert(format!(
        "{kind} names group={} scope={} plural={} singular={} listKind={} shortNames={}",
        show(&spec["group"]),
        show(&spec["scope"]),
        show(&names["plural"]),
        show(&names["singular"]),
        show(&names["listKind"]),
        names.get("shortNames").map(show).unwrap_or_default(),
    ));
    for v in spec["versions"].as_array().into_iter().flatten() {
        let name = show(&v["name"]);
        let columns: Vec<String> = v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{}:{}:{}:{}",
                    show(&c["name"]),
                    show(&c["jsonPath"]),
                    show(&c["type"]),
                    c.get("priority").map(show).unwrap_or_default()
                )
            })
            .collect();
        out.insert(format!(
            "{kind} {name} version served={} storage={} deprecated={} warning={} subresources={} columns={}",
            show(&v["served"]),
            show(&v["storage"]),
            v.get("deprecated").map(show).unwrap_or_default(),
            v.get("deprecationWarning").map(show).unwrap_or_default(),
            v.get("subresources").map(show).unwrap_or_default(),
            columns.join(";"),
        ));
        fields(
            &format!("{kind} {name}"),
            "",
            &v["schema"]["openAPIV3Schema"],
            out,
        );
    }
}

fn ours() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for crd in lb_controller::config::crds::definitions().unwrap_or_else(|e| panic!("{e}")) {
        let crd = serde_json::to_value(crd).unwrap_or_else(|e| panic!("{e}"));
        fingerprint(&crd, &mut out);
    }
    out
}

/// Writes a reference (`file`) from a checkout's `config/crd/bases` (`project` at `source`).
fn write_reference(dir: &Path, file: &Path, project: &str, source: &str) {
    let mut out = BTreeSet::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
        let crd: Value =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // Of FRR-K8s' kinds, xdplb serves BGPSessionState only.
        if project == "FRR-K8s" && crd["spec"]["names"]["kind"] != "BGPSessionState" {
            continue;
        }
        fingerprint(&crd, &mut out);
    }
    let mut text = format!(
        "# The fingerprint of {project}'s CRDs (config/crd/bases at {source}),\n\
         # written by lb-controller/tests/metallb_crds.rs: one line per version and per field.\n"
    );
    for line in out {
        text += &line;
        text.push('\n');
    }
    std::fs::write(file, text).unwrap_or_else(|e| panic!("{e}"));
}

fn frrk8s_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/frrk8s-crds.txt")
}

/// MetalLB's fingerprint and FRR-K8s' BGPSessionState's; `METALLB_CRDS` / `FRRK8S_CRDS`
/// (with `METALLB_REF` / `FRRK8S_REF`) rewrite them from checkouts.
fn reference() -> BTreeSet<String> {
    let source = |var: &str| std::env::var(var).unwrap_or_else(|_| "unknown".into());
    if let Some(dir) = std::env::var_os("METALLB_CRDS") {
        write_reference(
            Path::new(&dir),
            &reference_file(),
            "MetalLB",
            &source("METALLB_REF"),
        );
    }
    if let Some(dir) = std::env::var_os("FRRK8S_CRDS") {
        write_reference(
            Path::new(&dir),
            &frrk8s_file(),
            "FRR-K8s",
            &source("FRRK8S_REF"),
        );
    }
    [reference_file(), frrk8s_file()]
        .iter()
        .flat_map(|file| {
            std::fs::read_to_string(file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn our_crds_have_metallbs_schemas() {
    let (theirs, ours) = (reference(), ours());
    let missing: Vec<&String> = theirs.difference(&ours).collect();
    let extra: Vec<&String> = ours.difference(&theirs).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "MetalLB's CRDs and ours differ.\nonly MetalLB's:\n  {}\nonly ours:\n  {}",
        missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        extra
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
    );
}

#[test]
fn the_fingerprint_sees_what_matters() {
    // A changed bound, a lost default, a dropped rule and an extra field must all show.
    let crd = serde_json::json!({"spec": {"group": "metallb.io", "scope": "Namespaced",
        "names": {"kind": "K", "plural": "ks", "singular": "k", "listKind": "KList"},
        "versions": [{"name": "v1", "served": true, "storage": true, "schema": {
            "openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object",
                "properties": {"port": {"type": "integer", "minimum": 1, "default": 179,
                    "x-kubernetes-validations": [{"rule": "self > 0", "message": "m"}]}}}}}}}]}});
    let base = {
        let mut out = BTreeSet::new();
        fingerprint(&crd, &mut out);
        out
    };
    for change in [
        "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/port/minimum",
        "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/port/default",
        "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/port/x-kubernetes-validations",
    ] {
        let mut changed = crd.clone();
        let (parent, key) = change.rsplit_once('/').unwrap_or_default();
        changed
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .map(|o| o.remove(key));
        let mut out = BTreeSet::new();
        fingerprint(&changed, &mut out);
        assert_ne!(out, base, "removing {change} went unnoticed");
    }
    let mut extra = crd.clone();
    extra["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["vrf"] = serde_json::json!({"type": "string"});
    let mut out = BTreeSet::new();
    fingerprint(&extra, &mut out);
    assert_ne!(out, base, "an extra field went unnoticed");
}
