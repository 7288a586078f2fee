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
