//! Arbitrary configurations for the fuzz tests: documents of every kind a configuration is made
//! of, with field values taken from the edges of each field's domain (zero, the largest value
//! that fits, one more, wrong types, durations of millennia, `::/0`) and combined at random.
//!
//! Values are mostly of the field's type, so that most documents pass the schema and reach the
//! rules, the planner and the agents' planners behind it; a wrong type now and then keeps the
//! schema errors exercised too. [`configuration`] gives the YAML text of a whole directory.
use proptest::{collection::vec, option, prelude::*, sample::select};
use serde_json::{Map, Value, json};

const NAMES: &[&str] = &["a", "b", "p", "web", "default", "metallb-system", "", "x.y"];

fn name() -> impl Strategy<Value = Value> {
    select(NAMES).prop_map(Value::from)
}

fn int() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => select(vec![
            json!(0), json!(1), json!(-1), json!(2), json!(3), json!(10), json!(24), json!(32),
            json!(33), json!(64), json!(128), json!(129), json!(255), json!(256), json!(300),
            json!(65_535), json!(65_536), json!(i32::MAX), json!(i64::from(i32::MAX) + 1),
            json!(u32::MAX), json!(u64::from(u32::MAX) + 1), json!(i64::MAX), json!(u64::MAX),
            json!(i64::MIN),
        ]),
        2 => any::<i64>().prop_map(Value::from),
        1 => Just(json!("7")),
        1 => Just(json!(1.5)),
    ]
}

fn boolean() -> impl Strategy<Value = Value> {
    prop_oneof![4 => any::<bool>().prop_map(Value::from), 1 => Just(json!("yes"))]
}

fn duration() -> impl Strategy<Value = Value> {
    select(vec![
        json!("0s"),
        json!("1s"),
        json!("2s"),
        json!("3s"),
        json!("9s"),
        json!("90s"),
        json!("1ms"),
        json!("500ms"),
        json!("1.5s"),
        json!("1m30s"),
        json!("65535s"),
        json!("65536s"),
        json!("21846s"),
        json!("300000000000y"),
        json!("2562047788015215h"),
        json!("18446744073709551615s"),
        json!("-1s"),
        json!(""),
        json!("soon"),
        json!(5),
    ])
}

fn address() -> impl Strategy<Value = Value> {
    select(vec![
        "10.0.0.1",
        "10.0.0.5",
        "10.0.0.0",
        "10.0.0.255",
        "10.0.1.1",
        "192.168.1.1",
        "0.0.0.0",
        "255.255.255.255",
        "fd00::1",
        "fd00::ffff",
        "::",
        "::1",
        "fe80::1",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "::ffff:10.0.0.1",
        "1.2.3",
        "garbage",
        "",
    ])
    .prop_map(Value::from)
}

fn range() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => select(vec![
            "10.0.0.0/24", "10.0.0.0/30", "10.0.0.0/32", "10.0.0.0/33", "10.0.0.0/8",
            "0.0.0.0/0", "::/0", "::/1", "8000::/1", "fd00::/120", "fd00::/64", "fd00::/129",
            "10.0.0.255-10.0.1.0", "10.0.0.9-10.0.0.1", "10.0.0.1-fd00::1",
            "fd00::1-fd00::ffff", "255.255.255.255/32", "10.0.0.1/24", " 10.0.0.1", "-", "/",
        ])
        .prop_map(Value::from),
        1 => address(),
    ]
}

fn community() -> impl Strategy<Value = Value> {
    select(vec![
        "65535:65282",
        "64512:7",
        "0:0",
        "65536:1",
        "1:65536",
        "large:1:2:3",
        "large:4294967295:4294967295:4294967295",
        "large:4294967296:1:1",
        "large:1:2",
        "no-advertise",
        "alias",
        "x",
        "",
        ":",
    ])
    .prop_map(Value::from)
}

fn labels() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map(
        select(vec![
            "tier",
            "rack",
            "role",
            "kubernetes.io/hostname",
            "bad key!",
        ]),
        select(vec!["gold", "1", "2", "edge", "", "x".repeat(70).leak()]),
        0..3,
    )
    .prop_map(|m| json!(m))
}

fn selector() -> impl Strategy<Value = Value> {
    let expression = (
        select(vec!["tier", "rack", "", "bad key!"]),
        select(vec!["In", "NotIn", "Exists", "DoesNotExist", "Gt", "in"]),
        vec(select(vec!["gold", "1", ""]), 0..3),
    )
        .prop_map(
            |(key, operator, values)| json!({"key": key, "operator": operator, "values": values}),
        );
    (option::of(labels()), option::of(vec(expression, 0..3))).prop_map(|(labels, exprs)| {
        let mut m = Map::new();
        if let Some(l) = labels {
            m.insert("matchLabels".into(), l);
        }
        if let Some(e) = exprs {
            m.insert("matchExpressions".into(), json!(e));
        }
        Value::Object(m)
    })
}

fn selectors() -> impl Strategy<Value = Value> {
    vec(selector(), 0..3).prop_map(Value::from)
}

fn names() -> impl Strategy<Value = Value> {
    vec(name(), 0..3).prop_map(Value::from)
}

/// An object of `fields`, each present or not.
fn object(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    let keys: Vec<&'static str> = fields.iter().map(|(k, _)| *k).collect();
    let values: Vec<BoxedStrategy<Option<Value>>> = fields
        .into_iter()
        .map(|(_, s)| option::weighted(0.6, s).boxed())
        .collect();
    values
        .prop_map(move |vals| {
            let mut m = Map::new();
            for (k, v) in keys.iter().zip(vals) {
                if let Some(v) = v {
                    m.insert((*k).to_owned(), v);
                }
            }
            Value::Object(m)
        })
        .boxed()
}

fn metadata(namespaced: bool) -> BoxedStrategy<Value> {
    let annotations = proptest::collection::btree_map(
        select(vec![
            "metallb.io/loadBalancerIPs",
            "metallb.universe.tf/loadBalancerIPs",
            "metallb.io/address-pool",
            "metallb.io/allow-shared-ip",
            "xdplb.io/l2-mode",
        ]),
        select(vec![
            "10.0.0.5",
            "10.0.0.5,fd00::5",
            "10.0.0.5,10.0.0.6,10.0.0.7",
            "192.168.1.1",
            "p",
            "a",
            "key",
            "active-active",
            "single-owner",
            "",
            "garbage",
        ]),
        0..3,
    );
    let namespace = if namespaced {
        option::of(select(vec!["default", "metallb-system", "other"])).boxed()
    } else {
        Just(None).boxed()
    };
    (name(), namespace, labels(), annotations)
        .prop_map(|(name, ns, labels, annotations)| {
            let mut m = json!({"name": name, "labels": labels, "annotations": annotations});
            if let (Some(ns), Some(obj)) = (ns, m.as_object_mut()) {
                obj.insert("namespace".into(), json!(ns));
            }
            m
        })
        .boxed()
}

fn document(
    api_version: &'static str,
    kind: &'static str,
    spec: BoxedStrategy<Value>,
) -> BoxedStrategy<Value> {
    (metadata(true), spec)
        .prop_map(move |(metadata, spec)| {
            json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec})
        })
        .boxed()
}

fn pool() -> BoxedStrategy<Value> {
    let allocation = object(vec![
        ("priority", int().boxed()),
        ("namespaces", names().boxed()),
        ("namespaceSelectors", selectors().boxed()),
        ("serviceSelectors", selectors().boxed()),
    ]);
    document(
        "metallb.io/v1beta1",
        "IPAddressPool",
        object(vec![
            (
                "addresses",
                vec(range(), 0..4).prop_map(Value::from).boxed(),
            ),
            ("autoAssign", boolean().boxed()),
            ("avoidBuggyIPs", boolean().boxed()),
            ("serviceAllocation", allocation),
        ]),
    )
}

fn l2_advertisement() -> BoxedStrategy<Value> {
    let preferred = vec(
        (int(), selector())
            .prop_map(|(weight, preference)| json!({"weight": weight, "preference": preference})),
        0..3,
    )
    .prop_map(Value::from);
    document(
        "metallb.io/v1beta1",
        "L2Advertisement",
        object(vec![
            ("ipAddressPools", names().boxed()),
            ("ipAddressPoolSelectors", selectors().boxed()),
            ("nodeSelectors", selectors().boxed()),
            (
                "interfaces",
                vec(select(vec!["eth0", "eth1", "", "lo"]), 0..3)
                    .prop_map(|v| json!(v))
                    .boxed(),
            ),
            ("serviceSelectors", selectors().boxed()),
            ("preferredNodeSelectors", preferred.boxed()),
        ]),
    )
}

fn bgp_advertisement() -> BoxedStrategy<Value> {
    document(
        "metallb.io/v1beta1",
        "BGPAdvertisement",
        object(vec![
            ("aggregationLength", int().boxed()),
            ("aggregationLengthV6", int().boxed()),
            ("localPref", int().boxed()),
            (
                "communities",
                vec(community(), 0..4).prop_map(Value::from).boxed(),
            ),
            ("ipAddressPools", names().boxed()),
            ("ipAddressPoolSelectors", selectors().boxed()),
            ("nodeSelectors", selectors().boxed()),
            ("peers", names().boxed()),
            ("serviceSelectors", selectors().boxed()),
        ]),
    )
}

fn bfd_profile() -> BoxedStrategy<Value> {
    document(
        "metallb.io/v1beta1",
        "BFDProfile",
        object(vec![
            ("receiveInterval", int().boxed()),
            ("transmitInterval", int().boxed()),
            ("detectMultiplier", int().boxed()),
            ("echoInterval", int().boxed()),
            ("echoMode", boolean().boxed()),
            ("passiveMode", boolean().boxed()),
            ("minimumTtl", int().boxed()),
        ]),
    )
}

fn community_object() -> BoxedStrategy<Value> {
    let alias = (select(vec!["alias", "no-advertise", "", "x"]), community())
        .prop_map(|(name, value)| json!({"name": name, "value": value}));
    document(
        "metallb.io/v1beta1",
        "Community",
        object(vec![(
            "communities",
            vec(alias, 0..3).prop_map(Value::from).boxed(),
        )]),
    )
}

fn peer() -> BoxedStrategy<Value> {
    let secret = object(vec![
        ("name", name().boxed()),
        ("namespace", name().boxed()),
    ]);
    let fields = object(vec![
        ("myASN", int().boxed()),
        ("peerASN", int().boxed()),
        (
            "dynamicASN",
            select(vec!["internal", "external", "bad"])
                .prop_map(Value::from)
                .boxed(),
        ),
        ("localASN", int().boxed()),
        ("peerAddress", address().boxed()),
        (
            "interface",
            select(vec!["eth0", "", "lo"]).prop_map(Value::from).boxed(),
        ),
        ("sourceAddress", address().boxed()),
        ("peerPort", int().boxed()),
        ("holdTime", duration().boxed()),
        ("keepaliveTime", duration().boxed()),
        ("connectTime", duration().boxed()),
        ("routerID", address().boxed()),
        ("nodeSelectors", selectors().boxed()),
        (
            "password",
            select(vec!["", "s3cret", "x".repeat(81).leak()])
                .prop_map(Value::from)
                .boxed(),
        ),
        ("passwordSecret", secret),
        ("bfdProfile", name().boxed()),
        ("enableGracefulRestart", boolean().boxed()),
        ("ebgpMultiHop", boolean().boxed()),
        ("vrf", select(vec!["", "red"]).prop_map(Value::from).boxed()),
        ("disableMP", boolean().boxed()),
        ("dualStackAddressFamily", boolean().boxed()),
    ]);
    let version = select(vec!["metallb.io/v1beta2", "metallb.io/v1beta1"]);
    (version, metadata(true), fields)
        .prop_map(|(api_version, metadata, spec)| {
            json!({"apiVersion": api_version, "kind": "BGPPeer", "metadata": metadata, "spec": spec})
        })
        .boxed()
}

fn node() -> BoxedStrategy<Value> {
    let addresses = vec(
        (
            select(vec!["InternalIP", "ExternalIP", "Hostname"]),
            address(),
        )
            .prop_map(|(t, a)| json!({"type": t, "address": a})),
        0..3,
    );
    let conditions = vec(
        (
            select(vec!["Ready", "NetworkUnavailable"]),
            select(vec!["True", "False", "Unknown"]),
        )
            .prop_map(|(t, s)| json!({"type": t, "status": s})),
        0..3,
    );
    (metadata(false), addresses, conditions)
        .prop_map(|(metadata, addresses, conditions)| {
            json!({"apiVersion": "v1", "kind": "Node", "metadata": metadata,
                "status": {"addresses": addresses, "conditions": conditions}})
        })
        .boxed()
}

fn service() -> BoxedStrategy<Value> {
    let ports = vec(
        (int(), select(vec!["TCP", "UDP", "SCTP"]))
            .prop_map(|(port, protocol)| json!({"port": port, "protocol": protocol})),
        0..3,
    );
    let spec = object(vec![
        (
            "type",
            select(vec!["LoadBalancer", "ClusterIP"])
                .prop_map(Value::from)
                .boxed(),
        ),
        (
            "loadBalancerClass",
            select(vec!["xdplb.io/lb", "other"])
                .prop_map(Value::from)
                .boxed(),
        ),
        ("loadBalancerIP", address().boxed()),
        (
            "ipFamilies",
            vec(select(vec!["IPv4", "IPv6", "IPv5"]), 0..3)
                .prop_map(|v| json!(v))
                .boxed(),
        ),
        (
            "ipFamilyPolicy",
            select(vec![
                "SingleStack",
                "PreferDualStack",
                "RequireDualStack",
                "Any",
            ])
            .prop_map(Value::from)
            .boxed(),
        ),
        ("ports", ports.prop_map(Value::from).boxed()),
        (
            "externalTrafficPolicy",
            select(vec!["Local", "Cluster"])
                .prop_map(Value::from)
                .boxed(),
        ),
        ("selector", labels().boxed()),
    ]);
    let ingress = vec(address().prop_map(|ip| json!({"ip": ip})), 0..3);
    (metadata(true), spec, ingress)
        .prop_map(|(metadata, spec, ingress)| {
            json!({"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec,
                "status": {"loadBalancer": {"ingress": ingress}}})
        })
        .boxed()
}

fn others() -> BoxedStrategy<Value> {
    let secret = (
        metadata(true),
        select(vec!["", "c2hvcnQ=", "bm90LWJhc2U2NA", "!!"]),
    )
        .prop_map(|(metadata, key)| {
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": metadata,
                "data": {"secretkey": key, "password": key}})
        });
    let namespace = metadata(false).prop_map(
        |metadata| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}),
    );
    let slice = (
        metadata(true),
        name(),
        vec((address(), name(), boolean()), 0..3),
    )
        .prop_map(|(metadata, service, endpoints)| {
            let endpoints: Vec<Value> = endpoints
                .into_iter()
                .map(|(a, node, ready)| {
                    json!({"addresses": [a], "nodeName": node, "conditions": {"ready": ready}})
                })
                .collect();
            let mut metadata = metadata;
            if let Some(m) = metadata.as_object_mut() {
                m.insert(
                    "labels".into(),
                    json!({"kubernetes.io/service-name": service}),
                );
            }
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": metadata, "addressType": "IPv4", "endpoints": endpoints})
        });
    prop_oneof![
        secret,
        namespace,
        slice,
        Just(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})),
        Just(json!({"kind": "IPAddressPool"})),
        Just(json!([1, 2, 3])),
        Just(json!("text")),
    ]
    .boxed()
}

/// One document of any kind.
pub fn any_document() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => pool(),
        2 => l2_advertisement(),
        2 => bgp_advertisement(),
        1 => bfd_profile(),
        1 => community_object(),
        3 => peer(),
        2 => node(),
        3 => service(),
        1 => others(),
    ]
    .boxed()
}

/// The YAML text of a configuration directory's files: JSON documents (JSON is YAML) joined
/// as a multi-document stream.
pub fn configuration() -> impl Strategy<Value = String> {
    vec(any_document(), 1..12).prop_map(|docs| {
        docs.iter()
            .map(|d| format!("---\n{d}\n"))
            .collect::<String>()
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::Path};

    use super::*;
    use crate::config::{
        manifest::{self, Loaded, Strictness},
        settle::{LastGood, OnRefusal},
        validate,
    };
    use crate::plan;

    proptest! {
        // PROPTEST_CASES sets the number of cases (`cargo xtask fuzz` runs many more).
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Everything a configuration goes through in the controller: reading, the rules
        /// (called directly: `validate` turns a panic into an error, which would hide it),
        /// the valid part, settling against a last good one, and planning twice (the second
        /// time keeping the first plan's addresses, as a restarted controller does).
        #[test]
        fn any_configuration_never_panics(first in configuration(), second in configuration()) {
            for strictness in [Strictness::Strict, Strictness::Lenient] {
                let mut good = LastGood::new(OnRefusal::LastConfigObjects);
                for text in [&first, &second] {
                    let mut loaded = Loaded::default();
                    if manifest::add_text(Path::new("fuzz.yaml"), text, strictness, &mut loaded).is_err() {
                        continue;
                    }
                    let _ = validate::checks(&loaded.objects);
                    let _ = validate::valid_part(&loaded.objects);
                    let (plan, _usage) = plan::plan_with_usage(&loaded.objects, None, &BTreeMap::new());
                    let previous = plan
                        .iter()
                        .map(|e| (e.service.clone(), e.ips.clone()))
                        .collect();
                    let _ = plan::plan_with_usage(&loaded.objects, Some("xdplb.io/lb"), &previous);
                    let _ = good.settle(&mut loaded.objects, &loaded.errors);
                }
            }
        }
    }
}
