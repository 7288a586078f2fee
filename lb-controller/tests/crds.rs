//! The CRDs committed under deploy/crds are exactly what the types generate.
#[test]
fn committed_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    let rendered = lb_controller::config::crds::render().expect("render CRDs");
    let mut stale = Vec::new();
    for (file, yaml) in &rendered {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if &committed != yaml {
            stale.push(file.clone());
        }
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    on_disk.sort();
    let mut expected: Vec<String> = rendered.iter().map(|(f, _)| f.clone()).collect();
    expected.sort();
    assert!(
        stale.is_empty(),
        "stale CRDs {stale:?}: run `cargo xtask crds` and commit deploy/crds"
    );
    assert_eq!(
        on_disk, expected,
        "deploy/crds holds files the types do not generate"
    );
}

/// Objects MetalLB's docs write without `spec` must be accepted by the API server: their CRDs
/// do not require it (MetalLB's do not either); the others keep requiring it.
#[test]
fn advertisements_profiles_and_communities_do_not_require_spec() {
    for (file, yaml) in lb_controller::config::crds::render().expect("render CRDs") {
        let doc: serde_json::Value = serde_saphyr::from_str(&yaml).expect("CRD YAML");
        let requires_spec = doc["spec"]["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .any(|v| {
                v["schema"]["openAPIV3Schema"]["required"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x == "spec"))
            });
        let optional = [
            "l2advertisements.metallb.io.yaml",
            "bgpadvertisements.metallb.io.yaml",
            "bfdprofiles.metallb.io.yaml",
            "communities.metallb.io.yaml",
        ]
        .contains(&file.as_str());
        assert_eq!(requires_spec, !optional, "{file}");
    }
}
