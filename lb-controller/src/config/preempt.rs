//! Whether a Layer 2 VIP goes back to the node MetalLB's rule prefers when that node returns
//! (MetalLB's behaviour, the default) or stays with the node that holds it while that node can
//! keep it (non-revertive, like VRRP without preemption).
//!
//! Opt-in through the annotation [`ANNOTATION`] (`xdplb.io/l2-preempt: "false"`): on an
//! L2Advertisement it applies to every Service the advertisement selects; on a Service it
//! decides for that Service alone, either way. A returning node then moves nothing: clients
//! change MAC once per failure instead of twice.
use std::collections::BTreeMap;

use kube::ResourceExt;

use super::types::L2Advertisement;

/// The annotation that turns preemption off (or on again for one Service).
pub const ANNOTATION: &str = "xdplb.io/l2-preempt";

/// What an object's annotation asks for: `Some(Ok(false))` for a non-revertive VIP, `None`
/// without the annotation.
pub fn annotated(annotations: &BTreeMap<String, String>) -> Option<Result<bool, String>> {
    annotations.get(ANNOTATION).map(|v| match v.as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!(
            "{other:?} is not a preemption setting (\"true\", MetalLB's revertive rule, or \"false\")"
        )),
    })
}

/// Whether a Service whose own annotation asks for `service` (`None`: no valid annotation)
/// and which the advertisements `ads` cover is preempted by a preferred node's return: the
/// Service's choice when it made one, else not when any of the advertisements turns it off.
/// Invalid annotations count as absent (`validate` reports them on advertisements; the agent
/// logs them on Services).
pub fn effective<'a>(
    service: Option<bool>,
    ads: impl IntoIterator<Item = &'a L2Advertisement>,
) -> bool {
    if let Some(preempt) = service {
        return preempt;
    }
    !ads.into_iter()
        .any(|ad| matches!(annotated(ad.annotations()), Some(Ok(false))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ad(annotations: serde_json::Value) -> L2Advertisement {
        serde_json::from_value(
            json!({"metadata": {"name": "l2", "annotations": annotations}, "spec": {}}),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn off_only_when_asked_and_the_service_decides_for_itself() {
        let plain = ad(json!({}));
        let off = ad(json!({ANNOTATION: "false"}));
        let bad = ad(json!({ANNOTATION: "no"}));
        assert!(effective(None, [&plain]), "MetalLB's rule by default");
        assert!(!effective(None, [&plain, &off]));
        assert!(
            effective(None, [&bad]),
            "an invalid annotation counts as absent"
        );
        assert!(effective(Some(true), [&off]));
        assert!(!effective(Some(false), [&plain]));
        let e = annotated(bad.annotations())
            .and_then(Result::err)
            .unwrap_or_default();
        assert!(e.contains("\"no\""), "{e}");
    }
}
