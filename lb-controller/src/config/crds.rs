//! The CustomResourceDefinitions, rendered from the types in [`super::types`]: what
//! `cargo xtask crds` writes to `deploy/crds/`, and what a test compares the committed files
//! with, so the manifests never drift from the code.
//!
//! A MetalLB user's objects must apply unchanged and be checked the same way, so the schemas
//! must be MetalLB's: the derived ones are brought in line by [`conform`], which adds what the
//! Rust types cannot say (bounds, defaults, CEL rules, list and map semantics, the status
//! subresource) and drops what they say that MetalLB does not (`spec` required, `nullable`).
//! `lb-controller/tests/metallb_crds.rs` compares the result with MetalLB's published CRDs.
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResourceExt, core::crd::merge_crds};
use serde_json::{Value, json};

use super::types::{
    BFDProfile, BGPAdvertisement, BGPSessionState, Community, ConfigurationState, IPAddressPool,
    L2Advertisement, ServiceBGPStatus, ServiceL2Status, v1beta1, v1beta2,
};

/// A detail of MetalLB's schema for one field: `merge` is merged into the derived schema at
/// `path` (`.spec.peerPort`; `[]` steps into array items), a `null` value removing the key.
struct Detail {
    kind: &'static str,
    /// `None`: every version of the kind.
    version: Option<&'static str>,
    path: &'static str,
    merge: fn() -> Value,
}

const fn detail(
    kind: &'static str,
    version: Option<&'static str>,
    path: &'static str,
    merge: fn() -> Value,
) -> Detail {
    Detail {
        kind,
        version,
        path,
        merge,
    }
}

fn interval() -> Value {
    json!({"format": "int32", "minimum": 10, "maximum": 60000})
}

fn asn() -> Value {
    json!({"format": "int64", "maximum": 4294967295u32})
}

fn immutable() -> Value {
    json!({"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "Value is immutable"}]})
}

/// Field by field, what MetalLB's schemas say beyond the Rust types.
const DETAILS: &[Detail] = &[
    detail(
        "IPAddressPool",
        None,
        ".spec.autoAssign",
        || json!({"default": true}),
    ),
    detail(
        "IPAddressPool",
        None,
        ".spec.avoidBuggyIPs",
        || json!({"default": false}),
    ),
    detail(
        "IPAddressPool",
        None,
        ".spec.serviceAllocation.priority",
        || json!({"format": null}),
    ),
    detail(
        "IPAddressPool",
        None,
        ".status",
        || json!({"required": ["assignedIPv4", "assignedIPv6", "availableIPv4", "availableIPv6"]}),
    ),
    detail(
        "IPAddressPool",
        None,
        ".status.assignedIPv4",
        || json!({"default": null}),
    ),
    detail(
        "IPAddressPool",
        None,
        ".status.assignedIPv6",
        || json!({"default": null}),
    ),
    detail(
        "IPAddressPool",
        None,
        ".status.availableIPv4",
        || json!({"default": null}),
    ),
    detail(
        "IPAddressPool",
        None,
        ".status.availableIPv6",
        || json!({"default": null}),
    ),
    detail(
        "L2Advertisement",
        None,
        ".spec.preferredNodeSelectors[].weight",
        || json!({"minimum": 1, "maximum": 100}),
    ),
    detail("BGPAdvertisement", None, ".spec", || {
        json!({"x-kubernetes-validations": [{
            "rule": "!has(self.serviceSelectors) || self.serviceSelectors.size() == 0 || \
                     ((!has(self.aggregationLength) || self.aggregationLength == 32) && \
                     (!has(self.aggregationLengthV6) || self.aggregationLengthV6 == 128))",
            "message": "serviceSelectors and aggregationLength are mutually exclusive, can only \
                        be used together with default aggregationLength (32) and \
                        aggregationLengthV6 (128)",
        }]})
    }),
    detail(
        "BGPAdvertisement",
        None,
        ".spec.aggregationLength",
        || json!({"minimum": 1, "default": 32}),
    ),
    detail(
        "BGPAdvertisement",
        None,
        ".spec.aggregationLengthV6",
        || json!({"default": 128}),
    ),
    detail(
        "BGPAdvertisement",
        None,
        ".spec.localPref",
        || json!({"format": "int32", "minimum": null}),
    ),
    detail("BFDProfile", None, ".spec.receiveInterval", interval),
    detail("BFDProfile", None, ".spec.transmitInterval", interval),
    detail("BFDProfile", None, ".spec.echoInterval", interval),
    detail(
        "BFDProfile",
        None,
        ".spec.detectMultiplier",
        || json!({"format": "int32", "minimum": 2, "maximum": 255}),
    ),
    detail(
        "BFDProfile",
        None,
        ".spec.minimumTtl",
        || json!({"format": "int32", "minimum": 1, "maximum": 254}),
    ),
    detail(
        "Community",
        None,
        ".spec.communities",
        || json!({"default": null}),
    ),
    detail(
        "Community",
        None,
        ".spec.communities[]",
        || json!({"required": null}),
    ),
    detail("BGPPeer", None, ".spec.myASN", asn),
    detail("BGPPeer", None, ".spec.peerASN", asn),
    detail(
        "BGPPeer",
        Some("v1beta1"),
        ".spec.peerPort",
        || json!({"format": null, "minimum": 0, "maximum": 16384}),
    ),
    // v1beta1 has MetalLB's own node selector type, where `values` is required.
    detail(
        "BGPPeer",
        Some("v1beta1"),
        ".spec.nodeSelectors[].matchExpressions[]",
        || json!({"required": ["key", "operator", "values"]}),
    ),
    detail(
        "BGPPeer",
        Some("v1beta1"),
        ".spec.nodeSelectors[].matchExpressions[].values",
        || json!({"minItems": 1}),
    ),
    detail(
        "BGPPeer",
        Some("v1beta2"),
        ".spec.localASN",
        || json!({"format": "int64", "minimum": 1, "maximum": 4294967295u32}),
    ),
    detail(
        "BGPPeer",
        Some("v1beta2"),
        ".spec.peerPort",
        || json!({"format": null, "minimum": 1, "maximum": 16384, "default": 179}),
    ),
    detail("BGPPeer", Some("v1beta2"), ".spec.connectTime", || {
        json!({"x-kubernetes-validations": [
            {"rule": "duration(self).getSeconds() >= 1 && duration(self).getSeconds() <= 65535",
             "message": "connect time should be between 1 seconds to 65535"},
            {"rule": "duration(self).getMilliseconds() % 1000 == 0",
             "message": "connect time should contain a whole number of seconds"},
        ]})
    }),
    detail(
        "BGPPeer",
        Some("v1beta2"),
        ".spec.enableGracefulRestart",
        || {
            json!({"x-kubernetes-validations": [{"rule": "self == oldSelf",
            "message": "EnableGracefulRestart cannot be changed after creation"}]})
        },
    ),
    detail(
        "BGPPeer",
        Some("v1beta2"),
        ".spec.disableMP",
        || json!({"default": false}),
    ),
    detail(
        "BGPPeer",
        Some("v1beta2"),
        ".spec.dualStackAddressFamily",
        || json!({"default": false}),
    ),
    detail(
        "BGPPeer",
        Some("v1beta2"),
        ".spec.passwordSecret",
        || json!({"x-kubernetes-map-type": "atomic"}),
    ),
    detail("ServiceL2Status", None, ".status.node", immutable),
    detail("ServiceL2Status", None, ".status.serviceName", immutable),
    detail(
        "ServiceL2Status",
        None,
        ".status.serviceNamespace",
        immutable,
    ),
    detail("ServiceBGPStatus", None, ".status.node", immutable),
    detail("ServiceBGPStatus", None, ".status.serviceName", immutable),
    detail(
        "ServiceBGPStatus",
        None,
        ".status.serviceNamespace",
        immutable,
    ),
    detail(
        "ConfigurationState",
        None,
        ".status.conditions",
        || json!({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
    ),
    detail(
        "ConfigurationState",
        None,
        ".status.conditions[].lastTransitionTime",
        || json!({"format": "date-time"}),
    ),
    detail(
        "ConfigurationState",
        None,
        ".status.conditions[].message",
        || json!({"maxLength": 32768}),
    ),
    detail(
        "ConfigurationState",
        None,
        ".status.conditions[].observedGeneration",
        || json!({"minimum": 0}),
    ),
    detail(
        "ConfigurationState",
        None,
        ".status.conditions[].reason",
        || {
            json!({"maxLength": 1024, "minLength": 1,
               "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"})
        },
    ),
    detail(
        "ConfigurationState",
        None,
        ".status.conditions[].status",
        || json!({"enum": ["True", "False", "Unknown"]}),
    ),
    detail(
        "ConfigurationState",
        None,
        ".status.conditions[].type",
        || {
            json!({"maxLength": 316, "pattern":
            "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?\
             (([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"})
        },
    ),
];

/// Kinds whose MetalLB schema has an (empty) status and the status subresource.
const EMPTY_STATUS: &[&str] = &[
    "L2Advertisement",
    "BGPAdvertisement",
    "BGPPeer",
    "BFDProfile",
    "Community",
];

fn merge_into(target: &mut Value, patch: Value) -> Result<(), String> {
    let (Some(target), Value::Object(patch)) = (target.as_object_mut(), patch) else {
        return Err("a schema detail must be an object merged into an object".into());
    };
    for (k, v) in patch {
        if v.is_null() {
            target.remove(&k);
        } else {
            target.insert(k, v);
        }
    }
    Ok(())
}

fn at<'a>(schema: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let mut here = schema;
    for step in path.split('.').filter(|s| !s.is_empty()) {
        let (name, items) = match step.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (step, false),
        };
        here = here.get_mut("properties")?.get_mut(name)?;
        if items {
            here = here.get_mut("items")?;
        }
    }
    Some(here)
}

/// Walks every schema under `schema`, calling `f` on each.
fn each_schema(schema: &mut Value, f: &mut impl FnMut(&mut Value)) {
    f(schema);
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for child in props.values_mut() {
            each_schema(child, f);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = schema.get_mut(key).filter(|c| c.is_object()) {
            each_schema(child, f);
        }
    }
}

/// Kubernetes label selectors are atomic in MetalLB's schemas (as in the core API's).
fn atomic_selectors(schema: &mut Value) {
    each_schema(schema, &mut |s| {
        let is_selector = s
            .get("properties")
            .is_some_and(|p| p.get("matchLabels").is_some() && p.get("matchExpressions").is_some());
        if !is_selector {
            return;
        }
        s["x-kubernetes-map-type"] = json!("atomic");
        if let Some(exprs) = at(s, ".matchExpressions") {
            exprs["x-kubernetes-list-type"] = json!("atomic");
        }
        if let Some(values) = at(s, ".matchExpressions[].values") {
            values["x-kubernetes-list-type"] = json!("atomic");
        }
    });
}

/// Brings a derived CRD in line with MetalLB's for the same kind.
fn conform(crd: CustomResourceDefinition) -> Result<CustomResourceDefinition, String> {
    let mut crd = serde_json::to_value(crd).map_err(|e| e.to_string())?;
    let kind = crd["spec"]["names"]["kind"]
        .as_str()
        .ok_or("a CRD without a kind")?
        .to_owned();
    crd["spec"]["names"]["listKind"] = json!(format!("{kind}List"));
    let versions = crd["spec"]["versions"]
        .as_array_mut()
        .ok_or_else(|| format!("{kind}: no versions"))?;
    for version in versions {
        let name = version["name"].as_str().unwrap_or_default().to_owned();
        let root = &mut version["schema"]["openAPIV3Schema"];
        // Of MetalLB's kinds only IPAddressPool requires spec (its docs apply advertisements
        // with metadata only).
        if kind != "IPAddressPool"
            && let Some(required) = root.get_mut("required").and_then(Value::as_array_mut)
        {
            required.retain(|r| r != "spec");
            if required.is_empty() {
                root.as_object_mut().map(|o| o.remove("required"));
            }
        }
        let props = root
            .get_mut("properties")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| format!("{kind} {name}: a schema without properties"))?;
        props.insert(
            "apiVersion".into(),
            json!({"type": "string", "description": "The versioned schema of this object."}),
        );
        props.insert(
            "kind".into(),
            json!({"type": "string", "description": "The REST resource this object represents."}),
        );
        props.insert("metadata".into(), json!({"type": "object"}));
        if kind == "ConfigurationState" {
            props.remove("spec");
        }
        if EMPTY_STATUS.contains(&kind.as_str()) {
            props.insert(
                "status".into(),
                json!({"type": "object", "description": format!("The observed state of a {kind} (kept empty).")}),
            );
            version["subresources"] = json!({"status": {}});
        }
        let root = &mut version["schema"]["openAPIV3Schema"];
        // Unset fields are left out, never null: the API server drops nulls as MetalLB's does.
        each_schema(root, &mut |s| {
            if let Some(o) = s.as_object_mut() {
                o.remove("nullable");
                if let Some(Value::Array(values)) = o.get_mut("enum") {
                    values.retain(|v| !v.is_null());
                }
            }
        });
        // MetalLB's v1beta1 BGPPeer has its own node selector type, without these markers.
        if !(kind == "BGPPeer" && name == "v1beta1") {
            atomic_selectors(root);
        }
        for d in DETAILS
            .iter()
            .filter(|d| d.kind == kind && d.version.is_none_or(|v| v == name))
        {
            let target = at(root, d.path)
                .ok_or_else(|| format!("{kind} {name}: no field {} to conform", d.path))?;
            merge_into(target, (d.merge)())
                .map_err(|e| format!("{kind} {name} {}: {e}", d.path))?;
        }
    }
    serde_json::from_value(crd).map_err(|e| format!("{kind}: {e}"))
}

/// Every CRD, conformed, in a fixed order.
pub fn definitions() -> Result<Vec<CustomResourceDefinition>, String> {
    let bgp_peer = merge_crds(
        vec![v1beta1::BGPPeer::crd(), v1beta2::BGPPeer::crd()],
        "v1beta2",
    )
    .map_err(|e| format!("merging the BGPPeer versions: {e}"))?;
    [
        IPAddressPool::crd(),
        L2Advertisement::crd(),
        BGPAdvertisement::crd(),
        bgp_peer,
        BFDProfile::crd(),
        Community::crd(),
        ServiceL2Status::crd(),
        ServiceBGPStatus::crd(),
        ConfigurationState::crd(),
        BGPSessionState::crd(),
    ]
    .into_iter()
    .map(conform)
    .collect()
}

/// `(file name, YAML)` for every CRD, in a fixed order.
pub fn render() -> Result<Vec<(String, String)>, String> {
    definitions()?
        .into_iter()
        .map(|crd| {
            let file = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            let yaml = serde_saphyr::to_string(&crd).map_err(|e| format!("{file}: {e}"))?;
            Ok((
                file,
                format!("# Generated by `cargo xtask crds` from lb-controller's types; do not edit.\n{yaml}"),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_detail_lands_on_a_field() {
        // conform fails naming the path when a detail points nowhere (a renamed field).
        let crds = definitions().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(crds.len(), 10);
    }

    #[test]
    fn a_detail_on_a_missing_field_is_an_error() {
        let mut crd = serde_json::to_value(Community::crd()).unwrap_or_default();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            .as_object_mut()
            .map(|o| o.remove("communities"));
        let crd: CustomResourceDefinition =
            serde_json::from_value(crd).unwrap_or_else(|e| panic!("{e}"));
        let err = conform(crd).err().unwrap_or_default();
        assert!(err.contains(".spec.communities"), "{err}");
    }
}
