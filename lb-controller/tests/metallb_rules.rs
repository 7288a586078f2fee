//! `validate` and the planner against MetalLB's own rules (`internal/config`, the controller's
//! dual-stack handling), one test per rule where xdplb used to differ, each named for the
//! MetalLB rule it mirrors. The inputs are what a MetalLB user writes, from MetalLB's
//! documentation where it has an example.
use std::{collections::BTreeMap, path::Path};

use lb_controller::{
    config::{
        manifest::{self, Loaded, Strictness},
        validate,
    },
    plan,
};

fn load(yaml: &str) -> Loaded {
    let mut loaded = Loaded::default();
    manifest::add_text(
        Path::new("test.yaml"),
        yaml,
        Strictness::Strict,
        &mut loaded,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    loaded
}

/// Errors and warnings, reading and rules together, as `validate` prints them.
fn check(yaml: &str) -> (Vec<String>, Vec<String>) {
    let loaded = load(yaml);
    let report = validate::validate(&loaded.objects);
    let errors = loaded.errors.iter().chain(&report.errors);
    let warnings = loaded.warnings.iter().chain(&report.warnings);
    (
        errors.map(ToString::to_string).collect(),
        warnings.map(ToString::to_string).collect(),
    )
}

fn errors(yaml: &str) -> Vec<String> {
    check(yaml).0
}

fn pool(name: &str, addresses: &str) -> String {
    format!(
        "---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: {name}, namespace: metallb-system}}\nspec:\n  addresses: {addresses}\n"
    )
}

fn bgp_ad(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {{name: {name}, namespace: metallb-system}}\nspec:\n{spec}"
    )
}

fn peer(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {{name: {name}, namespace: metallb-system}}\nspec:\n{spec}"
    )
}

fn has(list: &[String], prefix: &str) -> bool {
    list.iter().any(|e| e.starts_with(prefix))
}

/// MetalLB's "Advanced BGP configuration" page: one pool, two advertisements told apart by
/// `serviceSelectors`, with different local preferences. MetalLB skips its local-preference
/// check for an advertisement with service selectors (it cannot know which Services meet).
#[test]
fn bgp_local_pref_check_is_skipped_for_advertisements_with_service_selectors() {
    let docs_example = pool("bgp-pool", "[192.168.10.0/24]")
        + &bgp_ad(
            "local-pref-a",
            "  ipAddressPools: [bgp-pool]\n  localPref: 50\n  serviceSelectors:\n  - matchLabels: {app: a}\n",
        )
        + &bgp_ad(
            "local-pref-b",
            "  ipAddressPools: [bgp-pool]\n  localPref: 100\n  serviceSelectors:\n  - matchLabels: {app: b}\n",
        );
    assert_eq!(errors(&docs_example), Vec::<String>::new());
    // One side with selectors is enough to skip the pair, as in MetalLB.
    let one_sided = pool("bgp-pool", "[192.168.10.0/24]")
        + &bgp_ad("plain", "  ipAddressPools: [bgp-pool]\n  localPref: 50\n")
        + &bgp_ad(
            "selected",
            "  ipAddressPools: [bgp-pool]\n  localPref: 100\n  serviceSelectors:\n  - matchLabels: {app: b}\n",
        );
    assert_eq!(errors(&one_sided), Vec::<String>::new());
    // Without selectors the two conflict.
    let plain = pool("bgp-pool", "[192.168.10.0/24]")
        + &bgp_ad("a", "  ipAddressPools: [bgp-pool]\n  localPref: 50\n")
        + &bgp_ad("b", "  ipAddressPools: [bgp-pool]\n  localPref: 100\n");
    assert_eq!(
        errors(&plain),
        vec![
            "BGPAdvertisement/b: spec.localPref: differs from BGPAdvertisement/a for IPAddressPool/bgp-pool and the same peers and nodes"
        ]
    );
}

/// MetalLB attaches an advertisement that names and selects no pool to every pool, and runs
/// each per-pool rule there: local preference, aggregation length, BFD echo with IPv6.
#[test]
fn an_advertisement_without_pool_selection_selects_every_pool_in_every_rule() {
    let local_pref = pool("p", "[10.0.0.0/24]")
        + &bgp_ad("named", "  ipAddressPools: [p]\n  localPref: 50\n")
        + &bgp_ad("all", "  localPref: 100\n");
    assert!(
        has(
            &errors(&local_pref),
            "BGPAdvertisement/all: spec.localPref: differs from BGPAdvertisement/named for IPAddressPool/p"
        ),
        "{:?}",
        errors(&local_pref)
    );
    let by_label = "---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p, labels: {tier: edge}}\nspec: {addresses: [10.0.0.0/24]}\n".to_owned()
        + &bgp_ad("labelled", "  ipAddressPoolSelectors:\n  - matchLabels: {tier: edge}\n  localPref: 50\n")
        + &bgp_ad("all", "  localPref: 100\n");
    assert!(
        has(&errors(&by_label), "BGPAdvertisement/all: spec.localPref"),
        "{:?}",
        errors(&by_label)
    );
    let aggregation = pool("small", "[10.0.0.0/28]") + &bgp_ad("all", "  aggregationLength: 24\n");
    assert_eq!(
        errors(&aggregation),
        vec![
            "BGPAdvertisement/all: spec.aggregationLength: 24 is shorter than 10.0.0.0/28, a prefix of IPAddressPool/small: the announcement would cover addresses outside the pool"
        ]
    );
    let echo = pool("v6", "[\"fd00::/120\"]")
        + &peer(
            "tor",
            "  myASN: 64512\n  peerASN: 65000\n  peerAddress: 10.9.0.1\n  bfdProfile: echo\n",
        )
        + "---\napiVersion: metallb.io/v1beta1\nkind: BFDProfile\nmetadata: {name: echo}\nspec: {echoMode: true}\n"
        + &bgp_ad("all", "  localPref: 100\n");
    assert!(
        has(
            &errors(&echo),
            "BGPAdvertisement/all: spec.ipAddressPools: advertises IPv6 (IPAddressPool/v6) to BGPPeer/tor"
        ),
        "{:?}",
        errors(&echo)
    );
}

/// MetalLB's `validateBGPAdvPerPool`: each address entry of the pool on its own, its widest
/// piece bounding the aggregation length; the most specific entry decides.
#[test]
fn bgp_aggregation_length_is_checked_entry_by_entry() {
    let yaml = |len: u8| {
        pool("mixed", "[10.0.0.0/24, 10.1.0.0/28]")
            + &bgp_ad(
                "agg",
                &format!("  ipAddressPools: [mixed]\n  aggregationLength: {len}\n"),
            )
    };
    assert_eq!(
        errors(&yaml(26)),
        vec![
            "BGPAdvertisement/agg: spec.aggregationLength: 26 is shorter than 10.1.0.0/28, a prefix of IPAddressPool/mixed: the announcement would cover addresses outside the pool"
        ]
    );
    assert_eq!(errors(&yaml(28)), Vec::<String>::new());
    // MetalLB's own example: a range whose widest piece is a /26.
    let range = |len: u8| {
        pool("range", "[3.3.3.2-3.3.3.254]")
            + &bgp_ad(
                "agg",
                &format!("  ipAddressPools: [range]\n  aggregationLength: {len}\n"),
            )
    };
    assert_eq!(errors(&range(26)), Vec::<String>::new());
    assert!(has(
        &errors(&range(24)),
        "BGPAdvertisement/agg: spec.aggregationLength: 24"
    ));
}

/// MetalLB's `isAggrLengthDifferent`: different aggregation lengths make the routes different
/// only in the families the pool holds; a dual-stack pool needs both lengths to differ.
#[test]
fn bgp_local_pref_aggregation_exemption_counts_only_the_pools_families() {
    let ads = |v4: u8, v6: u8| {
        bgp_ad("a", "  ipAddressPools: [p]\n  localPref: 50\n")
            + &bgp_ad(
                "b",
                &format!(
                    "  ipAddressPools: [p]\n  localPref: 100\n  aggregationLength: {v4}\n  aggregationLengthV6: {v6}\n"
                ),
            )
    };
    let v4_only = pool("p", "[10.0.0.0/24]");
    let dual = pool("p", "[10.0.0.0/24, \"fd00::/120\"]");
    // A v4 pool: a different v6 length changes nothing, a different v4 length does.
    assert!(has(
        &errors(&(v4_only.clone() + &ads(32, 124))),
        "BGPAdvertisement/b: spec.localPref"
    ));
    assert_eq!(errors(&(v4_only + &ads(30, 128))), Vec::<String>::new());
    // A dual-stack pool: one family differing is not enough.
    assert!(has(
        &errors(&(dual.clone() + &ads(30, 128))),
        "BGPAdvertisement/b: spec.localPref"
    ));
    assert_eq!(errors(&(dual + &ads(30, 124))), Vec::<String>::new());
}

/// MetalLB parses every label selector with Kubernetes' parser (label keys and values are
/// checked) and compares selectors with each requirement's values sorted.
#[test]
fn label_selectors_are_parsed_and_compared_as_metallb_does() {
    let yaml = r#"
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: l2}
spec:
  nodeSelectors:
  - {matchExpressions: [{key: zone, operator: In, values: [a, b]}]}
  - {matchExpressions: [{key: zone, operator: In, values: [b, a]}]}
  - {matchLabels: {"bad key": x}}
  - {matchLabels: {rack: "-x"}}
  - matchExpressions:
    - {key: rack, operator: Exists}
    - {key: rack, operator: Exists}
  - {matchExpressions: [{key: "example.com/zone", operator: In, values: ["a b"]}]}
"#;
    let (errors, _) = check(yaml);
    assert_eq!(errors.len(), 5, "{errors:?}");
    assert!(has(
        &errors,
        "L2Advertisement/l2: spec.nodeSelectors[1]: duplicate definition"
    ));
    assert!(has(
        &errors,
        "L2Advertisement/l2: spec.nodeSelectors[2].matchLabels: \"bad key\" is not a label key"
    ));
    assert!(has(
        &errors,
        "L2Advertisement/l2: spec.nodeSelectors[3].matchLabels: \"-x\" is not a label value"
    ));
    assert!(has(
        &errors,
        "L2Advertisement/l2: spec.nodeSelectors[4].matchExpressions[1]: the same requirement twice"
    ));
    assert!(has(
        &errors,
        "L2Advertisement/l2: spec.nodeSelectors[5].matchExpressions[0]: \"a b\" is not a label value"
    ));
    // A prefixed key is a key.
    let ok = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: l2}\nspec:\n  nodeSelectors:\n  - {matchLabels: {\"kubernetes.io/hostname\": node-1}}\n";
    assert_eq!(check(ok).0, Vec::<String>::new());
}

/// MetalLB does not check `interfaces` for repeats: a repeated name is harmless, a warning.
#[test]
fn l2_interfaces_listed_twice_are_accepted() {
    let yaml = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: l2}\nspec:\n  interfaces: [eth0, eth0]\n";
    let (errors, warnings) = check(yaml);
    assert_eq!(errors, Vec::<String>::new());
    assert_eq!(
        warnings,
        vec!["L2Advertisement/l2: spec.interfaces[1]: \"eth0\" is listed twice"]
    );
}

/// MetalLB's `peerFromCR`: ebgpMultiHop is refused when peerASN equals myASN, and only then.
#[test]
fn ebgp_multihop_is_refused_only_when_peer_asn_equals_my_asn() {
    let p = |spec: &str| {
        peer(
            "p",
            &format!("  peerAddress: 10.9.0.1\n  ebgpMultiHop: true\n{spec}"),
        )
    };
    assert_eq!(
        errors(&p("  myASN: 64512\n  peerASN: 64512\n")),
        vec!["BGPPeer/p: spec.ebgpMultiHop: multihop is for eBGP; this peer is iBGP"]
    );
    assert_eq!(
        errors(&p("  myASN: 64512\n  dynamicASN: internal\n")),
        Vec::<String>::new()
    );
    assert_eq!(
        errors(&p("  myASN: 64512\n  localASN: 65000\n  peerASN: 65000\n")),
        Vec::<String>::new()
    );
}

/// MetalLB's `parseTimers`: the hold time, given or derived from the keepalive (× 3), is cut
/// to whole seconds before the "0 or at least 3s" rule.
#[test]
fn bgp_hold_time_is_whole_seconds_zero_or_at_least_three() {
    let p = |timers: &str| {
        peer(
            "p",
            &format!("  myASN: 64512\n  peerASN: 65000\n  peerAddress: 10.9.0.1\n{timers}"),
        )
    };
    assert_eq!(errors(&p("  holdTime: 500ms\n")), Vec::<String>::new());
    assert_eq!(errors(&p("  holdTime: 3500ms\n")), Vec::<String>::new());
    assert_eq!(
        errors(&p("  holdTime: 2500ms\n")),
        vec!["BGPPeer/p: spec.holdTime: 2.5s is neither 0 nor at least 3s"]
    );
    assert_eq!(
        errors(&p("  keepaliveTime: 800ms\n")),
        vec![
            "BGPPeer/p: spec.keepaliveTime: 800ms makes the hold time 2.4s, neither 0 nor at least 3s"
        ]
    );
}

/// MetalLB's `PeerIdentifier` (FRR mode): a peer is its address, or its interface when
/// unnumbered, within its VRF; two on one node are one too many.
#[test]
fn frr_peers_on_one_node_are_told_apart_by_address_or_interface_per_vrf() {
    let unnumbered = |name: &str, vrf: &str| {
        peer(
            name,
            &format!("  myASN: 64512\n  dynamicASN: external\n  interface: eth1\n{vrf}"),
        )
    };
    assert_eq!(
        errors(&(unnumbered("a", "") + &unnumbered("b", ""))),
        vec![
            "BGPPeer/b: spec.interface: BGPPeer/a already peers over this interface on the same node"
        ]
    );
    assert_eq!(
        errors(&(unnumbered("a", "") + &unnumbered("b", "  vrf: red\n"))),
        Vec::<String>::new()
    );
}

/// MetalLB's CRDs serve each kind in the versions it has (BGPPeer in v1beta1 and v1beta2, the
/// others in v1beta1 only); any other apiVersion is refused by the API server, and here.
#[test]
fn an_api_version_the_kind_does_not_have_is_an_error_naming_the_object() {
    let yaml = "apiVersion: metallb.io/v1beta2\nkind: IPAddressPool\nmetadata: {name: p}\nspec: {addresses: [10.0.0.0/24]}\n---\napiVersion: metallb.io/v1\nkind: BGPPeer\nmetadata: {name: q}\nspec: {myASN: 1, peerASN: 2, peerAddress: 10.0.0.1}\n";
    assert_eq!(
        errors(yaml),
        vec![
            "IPAddressPool/p: apiVersion: \"metallb.io/v1beta2\" has no IPAddressPool; it is served as metallb.io/v1beta1",
            "BGPPeer/q: apiVersion: \"metallb.io/v1\" has no BGPPeer; it is served as metallb.io/v1beta1 and metallb.io/v1beta2",
        ]
    );
}

/// A v1beta1 BGPPeer has v1beta1's fields only (dynamicASN is v1beta2's), and its peerASN 0
/// is MetalLB's "missing peer ASN".
#[test]
fn a_v1beta1_bgp_peer_is_read_with_v1beta1_fields() {
    let v1beta1 = |spec: &str| {
        format!(
            "apiVersion: metallb.io/v1beta1\nkind: BGPPeer\nmetadata: {{name: old}}\nspec: {{myASN: 64512, peerAddress: 10.9.0.1, {spec}}}\n"
        )
    };
    assert_eq!(errors(&v1beta1("peerASN: 65000")), Vec::<String>::new());
    let (e, _) = check(&v1beta1("peerASN: 65000, dynamicASN: external"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("BGPPeer/old: spec.dynamicASN: unknown field `dynamicASN`"),
        "{e:?}"
    );
    assert_eq!(
        errors(&v1beta1("peerASN: 0")),
        vec!["BGPPeer/old: spec.peerASN: one of peerASN or dynamicASN is required"]
    );
}

fn service(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: LoadBalancer\n{spec}"
    )
}

/// MetalLB's controller: RequireDualStack with cluster IPs of one family gets no address (the
/// "not enough clusterips" error); with one of each it gets both from one pool.
#[test]
fn require_dual_stack_with_single_family_cluster_ips_gets_no_address() {
    let yaml = pool("dual", "[10.0.0.0/24, \"fd00::/120\"]")
        + &service(
            "single",
            "  ipFamilyPolicy: RequireDualStack\n  clusterIPs: [10.96.0.1]\n",
        )
        + &service(
            "dual",
            "  ipFamilyPolicy: RequireDualStack\n  clusterIPs: [10.96.0.2, \"fd96::2\"]\n",
        );
    let loaded = load(&yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let entries = plan::plan(&loaded.objects, None, &BTreeMap::new());
    let by_name: BTreeMap<&str, &plan::PlanEntry> =
        entries.iter().map(|e| (e.service.as_str(), e)).collect();
    let single = by_name["default/single"];
    assert!(single.ips.is_empty(), "{single:?}");
    assert!(
        single
            .pending
            .as_deref()
            .is_some_and(|p| p.contains("RequireDualStack") && p.contains("10.96.0.1")),
        "{single:?}"
    );
    let dual = by_name["default/dual"];
    assert_eq!(dual.ips.len(), 2, "{dual:?}");
    assert_eq!(dual.pool.as_deref(), Some("dual"));
}

/// The schema node of a BGPPeer version's `spec`.
fn peer_spec_schema(version: &str) -> serde_json::Value {
    let crds = lb_controller::config::crds::definitions().unwrap_or_else(|e| panic!("{e}"));
    let peer = crds
        .into_iter()
        .find(|c| c.spec.names.kind == "BGPPeer")
        .expect("a BGPPeer CRD");
    let v = peer
        .spec
        .versions
        .into_iter()
        .find(|v| v.name == version)
        .unwrap_or_else(|| panic!("BGPPeer {version} served"));
    let schema = serde_json::to_value(v.schema).expect("schema as JSON");
    schema["openAPIV3Schema"]["properties"]["spec"].clone()
}

/// What the API server keeps of `value` under `schema` (pruning of unknown fields).
fn prune(value: &serde_json::Value, schema: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) if schema.get("properties").is_some() => Value::Object(
            map.iter()
                .filter_map(|(k, v)| {
                    let s = schema["properties"].get(k)?;
                    Some((k.clone(), prune(v, s)))
                })
                .collect(),
        ),
        Value::Array(items) if schema.get("items").is_some() => {
            Value::Array(items.iter().map(|v| prune(v, &schema["items"])).collect())
        }
        other => other.clone(),
    }
}

/// Every field's path and type, for comparing two versions' shapes.
fn shape(path: &str, schema: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    out.insert(
        path.to_owned(),
        schema["type"].as_str().unwrap_or("").to_owned(),
    );
    for (k, s) in schema["properties"].as_object().into_iter().flatten() {
        shape(&format!("{path}.{k}"), s, out);
    }
    if let Some(items) = schema.get("items") {
        shape(&format!("{path}[]"), items, out);
    }
    if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object()) {
        shape(&format!("{path}{{}}"), s, out);
    }
}

/// Both BGPPeer versions are served with the API server's plain conversion (the apiVersion
/// changes, unknown fields are pruned). So every v1beta1 field must be a v1beta2 field of the
/// same shape, a v1beta1 peer must survive the trip to v1beta2 and back untouched, and what
/// only v1beta2 can say must be listed in the README for users of v1beta1 clients.
#[test]
fn bgp_peer_v1beta1_and_v1beta2_round_trip_without_loss() {
    let (old, new) = (peer_spec_schema("v1beta1"), peer_spec_schema("v1beta2"));
    let (mut old_shape, mut new_shape) = (BTreeMap::new(), BTreeMap::new());
    shape("spec", &old, &mut old_shape);
    shape("spec", &new, &mut new_shape);
    for (path, ty) in &old_shape {
        assert_eq!(new_shape.get(path), Some(ty), "v1beta1 {path} in v1beta2");
    }
    let full: serde_json::Value = serde_json::json!({
        "myASN": 64512, "peerASN": 65000, "peerAddress": "10.9.0.1", "sourceAddress": "10.9.0.2",
        "peerPort": 1179, "holdTime": "9s", "keepaliveTime": "3s", "routerID": "10.9.0.2",
        "nodeSelectors": [{"matchLabels": {"rack": "a"},
                           "matchExpressions": [{"key": "zone", "operator": "In", "values": ["x"]}]}],
        "password": "s3cret", "bfdProfile": "fast", "ebgpMultiHop": true,
    });
    // The test object sets every v1beta1 field.
    let set: Vec<&String> = full
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    let declared: Vec<&String> = old["properties"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(set.len(), declared.len(), "{set:?} vs {declared:?}");
    let there = prune(&full, &new);
    assert_eq!(there, full, "v1beta1 to v1beta2");
    assert_eq!(prune(&there, &old), full, "and back");
    // The reader's conversion (lb-controller reads v1beta1 files) agrees with the API server's.
    let doc = format!(
        "apiVersion: metallb.io/v1beta1\nkind: BGPPeer\nmetadata: {{name: old}}\nspec: {full}\n"
    );
    let loaded = load(&doc);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let read = serde_json::to_value(&loaded.objects.peers[0].spec).expect("spec as JSON");
    assert_eq!(read, full);
    // What v1beta1 cannot say, and a v1beta1 client drops when it writes a peer back.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let section = readme
        .split("v1beta2 only:")
        .nth(1)
        .and_then(|s| s.split(". ").next())
        .unwrap_or_default();
    let only_new: Vec<&String> = new["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
        .filter(|k| old["properties"].get(k.as_str()).is_none())
        .collect();
    assert!(!only_new.is_empty());
    for field in only_new {
        assert!(
            section.contains(&format!("`{field}`")),
            "README's \"v1beta2 only:\" line lacks `{field}`: {section}"
        );
    }
}
