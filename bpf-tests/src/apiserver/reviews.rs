//! TokenReview and SubjectAccessReview, as the API server answers them for delegated
//! authentication and authorization (the secure metrics ask both).
//!
//! Tokens are those a test issued ([`super::ApiServer::service_account_token`], as `kubectl
//! create token` does); authorization is RBAC over the ClusterRoles and ClusterRoleBindings the
//! test applied, for non-resource URLs (the only kind the metrics ask about): a rule grants a
//! path when one of its `nonResourceURLs` is the path or a `PREFIX*` of it, and a verb when
//! its `verbs` hold it or `*`.
use serde_json::{Value, json};

use super::{Shared, resources::Resource, store::Selector};

pub const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
pub const ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// Who a token stands for.
#[derive(Clone, Debug)]
pub struct User {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl User {
    /// A service account's user, with the groups the API server gives it.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            uid: format!("uid-{namespace}-{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }
}

/// The answer to a POST on `path`, if it is one of the review endpoints.
pub fn answer(shared: &Shared, path: &str, body: &Value) -> Option<Value> {
    let mut out = body.clone();
    match path.trim_end_matches('/') {
        TOKEN_REVIEWS => {
            let token = body["spec"]["token"].as_str().unwrap_or_default();
            let user = shared
                .tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(token)
                .cloned();
            out["status"] = match user {
                Some(u) => json!({
                    "authenticated": true,
                    "user": {"username": u.username, "uid": u.uid, "groups": u.groups},
                }),
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            };
            Some(out)
        }
        ACCESS_REVIEWS => {
            out["status"] = decide(shared, &body["spec"]);
            Some(out)
        }
        _ => None,
    }
}

fn decide(shared: &Shared, spec: &Value) -> Value {
    let Some(attrs) = spec.get("nonResourceAttributes") else {
        return json!({"allowed": false, "reason": "only non-resource URLs are evaluated here"});
    };
    let (path, verb) = (
        attrs["path"].as_str().unwrap_or_default(),
        attrs["verb"].as_str().unwrap_or_default(),
    );
    let user = spec["user"].as_str().unwrap_or_default();
    let groups: Vec<&str> = spec["groups"]
        .as_array()
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let listed = |kind: &str| {
        let res = Resource::of("rbac.authorization.k8s.io/v1", kind).expect("RBAC is served");
        shared.store().list(res, "v1", None, &Selector::default()).0
    };
    let roles = listed("ClusterRole");
    for binding in listed("ClusterRoleBinding") {
        let bound = binding["subjects"].as_array().is_some_and(|subjects| {
            subjects.iter().any(|s| match s["kind"].as_str() {
                Some("User") => s["name"] == user,
                Some("Group") => s["name"].as_str().is_some_and(|g| groups.contains(&g)),
                Some("ServiceAccount") => {
                    format!(
                        "system:serviceaccount:{}:{}",
                        s["namespace"].as_str().unwrap_or_default(),
                        s["name"].as_str().unwrap_or_default()
                    ) == user
                }
                _ => false,
            })
        });
        if !bound || binding["roleRef"]["kind"] != "ClusterRole" {
            continue;
        }
        let role = roles
            .iter()
            .find(|r| r["metadata"]["name"] == binding["roleRef"]["name"]);
        let rules = role.and_then(|r| r["rules"].as_array());
        let grants = rules.into_iter().flatten().any(|rule| {
            let has = |field: &str, want: &dyn Fn(&str) -> bool| {
                rule[field]
                    .as_array()
                    .is_some_and(|v| v.iter().filter_map(Value::as_str).any(want))
            };
            has("verbs", &|v| v == verb || v == "*")
                && has("nonResourceURLs", &|u| {
                    u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
                })
        });
        if grants {
            return json!({
                "allowed": true,
                "reason": format!(
                    "RBAC: allowed by ClusterRoleBinding {:?}",
                    binding["metadata"]["name"].as_str().unwrap_or_default()
                ),
            });
        }
    }
    json!({"allowed": false})
}
