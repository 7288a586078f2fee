//! One admission review (AdmissionReview v1), decided without I/O: the metallb.io objects as
//! they are, the request, and what `validate` says about the objects as they would be.
//!
//! A request is denied only for errors it brings: a configuration that is already wrong
//! elsewhere never blocks an unrelated change (MetalLB's webhook denies every change while
//! anything is wrong, the failure mode this avoids). References to objects not there yet (a
//! BFD profile, a password Secret, a community alias) are warnings, as in MetalLB, since one
//! `kubectl apply` may create the referring object first. A DELETE is never denied: what it
//! leaves dangling comes back as warnings.
use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::config::{
    Problem, Report,
    manifest::{self, Loaded, Objects, Strictness},
    validate,
};

/// What the webhook answers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Why not, when not allowed: `Kind/name: field: reason`, one per problem, `; `-joined.
    pub message: Option<String>,
    pub warnings: Vec<String>,
}

/// Why a request body is not an AdmissionReview we can answer (HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadReview {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not an admission.k8s.io/v1 AdmissionReview with a request")]
    NotReview,
    #[error("request.{0} is missing")]
    Missing(&'static str),
}

/// The request fields the decision uses.
#[derive(Debug)]
pub struct Request {
    pub uid: String,
    pub operation: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub object: Option<Value>,
}

/// Reads an AdmissionReview body.
pub fn parse(body: &[u8]) -> Result<Request, BadReview> {
    let review: Value = serde_json::from_slice(body).map_err(|e| BadReview::Json(e.to_string()))?;
    if review["apiVersion"] != "admission.k8s.io/v1" || !review["request"].is_object() {
        return Err(BadReview::NotReview);
    }
    let r = &review["request"];
    let text = |field: &'static str, v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .ok_or(BadReview::Missing(field))
    };
    let object = match &r["object"] {
        Value::Object(_) => Some(r["object"].clone()),
        _ => None,
    };
    Ok(Request {
        uid: text("uid", &r["uid"])?,
        operation: text("operation", &r["operation"])?,
        kind: text("kind.kind", &r["kind"]["kind"])?,
        namespace: r["namespace"].as_str().unwrap_or_default().to_owned(),
        // CREATE with generateName has no name yet; the object's own name then, if any.
        name: r["name"]
            .as_str()
            .or_else(|| object.as_ref().and_then(|o| o["metadata"]["name"].as_str()))
            .unwrap_or_default()
            .to_owned(),
        object,
    })
}

/// The AdmissionReview answering `uid`.
pub fn response(uid: &str, verdict: &Verdict) -> Value {
    let mut response = json!({"uid": uid, "allowed": verdict.allowed});
    if let Some(message) = &verdict.message {
        response["status"] = json!({"code": 403, "reason": "Forbidden", "message": message});
    }
    if !verdict.warnings.is_empty() {
        response["warnings"] = json!(verdict.warnings);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

/// Decides `request` against `current`, the metallb.io objects (and Secrets, Nodes) of
/// `namespace`, where xdplb reads its configuration.
pub fn decide(request: &Request, current: &Objects, namespace: &str) -> Verdict {
    let here = request.namespace == namespace;
    match request.operation.as_str() {
        "CREATE" if !here => {
            return deny(vec![format!(
                "{}/{}: metadata.namespace: xdplb reads metallb.io objects in namespace {namespace:?} only",
                request.kind, request.name
            )]);
        }
        "CREATE" | "UPDATE" | "DELETE" if here => {}
        _ => {
            return Verdict {
                allowed: true,
                ..Verdict::default()
            };
        }
    }
    let mut after = current.clone();
    after.remove(&request.kind, Some(namespace), &request.name);
    let mut loaded = Loaded {
        objects: after,
        ..Loaded::default()
    };
    if request.operation != "DELETE" {
        let Some(object) = request.object.clone() else {
            return deny(vec![format!(
                "{}/{}: the request carries no object",
                request.kind, request.name
            )]);
        };
        // Lenient: a field newer than this xdplb is dropped with a warning, never a denial.
        manifest::add_object(object, Strictness::Lenient, &mut loaded);
    }
    let before = validate::validate(current);
    let after = validate::validate(&loaded.objects);
    let Verdict {
        allowed,
        message,
        mut warnings,
    } = compare(
        &before,
        &after,
        &loaded.errors,
        request.operation == "DELETE",
    );
    warnings.extend(loaded.warnings.iter().map(ToString::to_string));
    Verdict {
        allowed,
        message,
        warnings,
    }
}

/// Denies for what `after` has that `before` had not, and for `reading` (the request's object
/// itself unreadable); warns for new warnings and unresolved references.
fn compare(before: &Report, after: &Report, reading: &[Problem], deleting: bool) -> Verdict {
    let had: BTreeSet<&Problem> = before.errors.iter().chain(&before.warnings).collect();
    let unresolved: BTreeSet<&Problem> = after.unresolved.iter().collect();
    let new = |list: &[Problem]| -> Vec<String> {
        list.iter()
            .filter(|p| !had.contains(p))
            .map(ToString::to_string)
            .collect()
    };
    let mut denied: Vec<String> = reading.iter().map(ToString::to_string).collect();
    let mut warnings = new(&after.warnings);
    for p in after.errors.iter().filter(|p| !had.contains(p)) {
        if deleting || unresolved.contains(p) {
            warnings.push(p.to_string());
        } else {
            denied.push(p.to_string());
        }
    }
    if denied.is_empty() {
        Verdict {
            allowed: true,
            message: None,
            warnings,
        }
    } else {
        Verdict {
            warnings,
            ..deny(denied)
        }
    }
}

fn deny(problems: Vec<String>) -> Verdict {
    Verdict {
        allowed: false,
        message: Some(problems.join("; ")),
        warnings: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const NS: &str = "metallb-system";

    fn objects(yaml: &str) -> Objects {
        let mut loaded = Loaded::default();
        manifest::add_text(Path::new("t.yaml"), yaml, Strictness::Strict, &mut loaded)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.objects
    }

    fn request(operation: &str, kind: &str, name: &str, object: Option<Value>) -> Request {
        Request {
            uid: "u".into(),
            operation: operation.into(),
            kind: kind.into(),
            namespace: NS.into(),
            name: name.into(),
            object,
        }
    }

    fn pool(name: &str, cidr: &str) -> Value {
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
               "metadata": {"name": name, "namespace": NS}, "spec": {"addresses": [cidr]}})
    }

    const CURRENT: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: a, namespace: metallb-system}\nspec: {addresses: [10.0.0.0/24]}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: l2, namespace: metallb-system}\nspec: {ipAddressPools: [a]}\n";

    #[test]
    fn an_overlap_is_denied_naming_object_field_and_reason() {
        let v = decide(
            &request(
                "CREATE",
                "IPAddressPool",
                "b",
                Some(pool("b", "10.0.0.128/25")),
            ),
            &objects(CURRENT),
            NS,
        );
        assert!(!v.allowed);
        assert_eq!(
            v.message.as_deref(),
            Some(
                "IPAddressPool/b: spec.addresses[0]: 10.0.0.128/25 overlaps with 10.0.0.0/24 (IPAddressPool/a spec.addresses[0])"
            )
        );
        let ok = decide(
            &request(
                "CREATE",
                "IPAddressPool",
                "b",
                Some(pool("b", "10.0.1.0/24")),
            ),
            &objects(CURRENT),
            NS,
        );
        assert_eq!(
            ok,
            Verdict {
                allowed: true,
                message: None,
                warnings: vec![]
            }
        );
    }

    #[test]
    fn an_error_already_there_blocks_nothing_else() {
        let broken = CURRENT.to_owned()
            + "---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: c, namespace: metallb-system}\nspec: {addresses: [10.0.0.0/28]}\n";
        let v = decide(
            &request(
                "CREATE",
                "IPAddressPool",
                "d",
                Some(pool("d", "10.9.0.0/24")),
            ),
            &objects(&broken),
            NS,
        );
        assert!(v.allowed, "{v:?}");
    }

    #[test]
    fn a_delete_is_allowed_and_warns_about_what_it_leaves() {
        let v = decide(
            &request("DELETE", "IPAddressPool", "a", None),
            &objects(CURRENT),
            NS,
        );
        assert!(v.allowed);
        assert_eq!(
            v.warnings,
            vec!["L2Advertisement/l2: spec.ipAddressPools[0]: no IPAddressPool named \"a\""]
        );
    }

    #[test]
    fn a_reference_to_an_object_not_there_yet_is_a_warning() {
        let peer = json!({"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
            "metadata": {"name": "tor", "namespace": NS},
            "spec": {"myASN": 64512, "peerASN": 65000, "peerAddress": "10.9.0.1", "bfdProfile": "fast"}});
        let v = decide(
            &request("CREATE", "BGPPeer", "tor", Some(peer)),
            &objects(CURRENT),
            NS,
        );
        assert!(v.allowed, "{v:?}");
        assert_eq!(
            v.warnings,
            vec!["BGPPeer/tor: spec.bfdProfile: no BFDProfile named \"fast\""]
        );
    }

    #[test]
    fn an_unreadable_object_or_another_namespace_is_denied() {
        let mut bad = pool("b", "10.0.1.0/24");
        bad["spec"]["addresses"] = json!("10.0.1.0/24");
        let v = decide(
            &request("CREATE", "IPAddressPool", "b", Some(bad)),
            &objects(CURRENT),
            NS,
        );
        assert!(!v.allowed);
        assert!(
            v.message
                .as_deref()
                .is_some_and(|m| m.starts_with("IPAddressPool/b: spec.addresses:")),
            "{v:?}"
        );
        let mut elsewhere = request(
            "CREATE",
            "IPAddressPool",
            "b",
            Some(pool("b", "10.0.1.0/24")),
        );
        elsewhere.namespace = "default".into();
        let v = decide(&elsewhere, &objects(CURRENT), NS);
        assert!(!v.allowed);
        assert!(
            v.message
                .as_deref()
                .is_some_and(|m| m.contains("namespace \"metallb-system\" only"))
        );
    }

    #[test]
    fn malformed_reviews_are_errors_not_panics() {
        assert!(matches!(parse(b"{"), Err(BadReview::Json(_))));
        assert_eq!(parse(b"{}").err(), Some(BadReview::NotReview));
        assert_eq!(
            parse(br#"{"apiVersion":"admission.k8s.io/v1","request":{"uid":"x"}}"#).err(),
            Some(BadReview::Missing("operation"))
        );
        let ok = parse(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","operation":"DELETE","kind":{"group":"metallb.io","version":"v1beta1","kind":"IPAddressPool"},"namespace":"metallb-system","name":"a"}}"#);
        let r = ok.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.uid.as_str(), r.name.as_str()), ("x", "a"));
        let answer = response(&r.uid, &decide(&r, &objects(CURRENT), NS));
        assert_eq!(answer["response"]["uid"], "x");
        assert_eq!(answer["response"]["allowed"], true);
    }
}
