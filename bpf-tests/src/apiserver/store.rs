//! The API server's state: objects with resourceVersions from one counter, the change history
//! watches replay from, and the rules writes follow (optimistic concurrency, status
//! subresource, no-op writes that change nothing, compaction that makes old versions "Gone").
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::Arc,
};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::resources::{RESOURCES, Resource};

/// How many changes the history keeps before the oldest become too old to watch from.
const HISTORY: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    group: &'static str,
    plural: &'static str,
    namespace: String,
    name: String,
}

/// One entry of the history: what a watch sends.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub group: &'static str,
    pub plural: &'static str,
    pub namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    pub object: Value,
}

/// A request the API server refuses, with the HTTP code and reason the real one uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    NotFound(String),
    AlreadyExists(String),
    Conflict(String),
    Invalid(String),
    Gone(String),
    UnsupportedMediaType(String),
    /// An admission webhook denied the request.
    Forbidden(String),
    /// An admission webhook could not be called under `failurePolicy: Fail`.
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound(_) => 404,
            ApiError::AlreadyExists(_) | ApiError::Conflict(_) => 409,
            ApiError::Invalid(_) => 422,
            ApiError::Gone(_) => 410,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Forbidden(_) => 403,
            ApiError::Internal(_) => 500,
        }
    }

    /// The `Status` object the API server sends.
    pub fn status(&self) -> Value {
        let (reason, message) = match self {
            ApiError::NotFound(m) => ("NotFound", m),
            ApiError::AlreadyExists(m) => ("AlreadyExists", m),
            ApiError::Conflict(m) => ("Conflict", m),
            ApiError::Invalid(m) => ("Invalid", m),
            ApiError::Gone(m) => ("Expired", m),
            ApiError::UnsupportedMediaType(m) => ("UnsupportedMediaType", m),
            ApiError::Forbidden(m) => ("Forbidden", m),
            ApiError::Internal(m) => ("InternalError", m),
        };
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": self.code(),
        })
    }
}

/// How a PATCH body is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json` (and strategic merge, which is the same for the fields
    /// these tests write).
    Merge,
    /// `application/json-patch+json`.
    Json,
}

/// `labelSelector` and `fieldSelector` terms (equality, inequality and existence).
#[derive(Clone, Debug, Default)]
pub struct Selector {
    labels: Vec<(String, Option<(bool, String)>)>,
    fields: Vec<(String, bool, String)>,
}

impl Selector {
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, ApiError> {
        let terms = |s: Option<&str>| -> Vec<String> {
            s.unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let split = |t: &str| -> Option<(String, bool, String)> {
            if let Some((k, v)) = t.split_once("!=") {
                return Some((k.to_owned(), false, v.to_owned()));
            }
            let (k, v) = t.split_once("==").or_else(|| t.split_once('='))?;
            Some((k.to_owned(), true, v.to_owned()))
        };
        let mut sel = Selector::default();
        for t in terms(labels) {
            match split(&t) {
                Some((k, eq, v)) => sel.labels.push((k, Some((eq, v)))),
                None => sel.labels.push((t, None)),
            }
        }
        for t in terms(fields) {
            let (k, eq, v) =
                split(&t).ok_or_else(|| ApiError::Invalid(format!("bad field selector {t:?}")))?;
            if !matches!(k.as_str(), "metadata.name" | "metadata.namespace") {
                return Err(ApiError::Invalid(format!("field label not supported: {k}")));
            }
            sel.fields.push((k, eq, v));
        }
        Ok(sel)
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let labels_ok = self.labels.iter().all(|(k, want)| {
            let have = labels.get(k).and_then(Value::as_str);
            match want {
                None => have.is_some(),
                Some((true, v)) => have == Some(v.as_str()),
                Some((false, v)) => have != Some(v.as_str()),
            }
        });
        let fields_ok = self.fields.iter().all(|(k, eq, v)| {
            let field = k.trim_start_matches("metadata.");
            let have = obj["metadata"][field].as_str().unwrap_or("");
            (have == v) == *eq
        });
        labels_ok && fields_ok
    }
}

pub struct Store {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    /// Watching from a resourceVersion below this is answered with 410 Gone.
    oldest: u64,
    tx: broadcast::Sender<Arc<Change>>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            rv: 1,
            uid: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            oldest: 0,
            tx: broadcast::channel(HISTORY).0,
        }
    }
}

fn key(res: &Resource, namespace: Option<&str>, name: &str) -> Key {
    Key {
        group: res.group,
        plural: res.plural,
        namespace: namespace.unwrap_or("").to_owned(),
        name: name.to_owned(),
    }
}

fn rv_of(obj: &Value) -> Option<&str> {
    obj["metadata"]["resourceVersion"].as_str()
}

/// The object as it is shown for one version of its resource.
fn shown(mut obj: Value, res: &Resource, version: &str) -> Value {
    obj["apiVersion"] = json!(res.api_version(version));
    obj["kind"] = json!(res.kind);
    obj
}

/// Whether two objects differ in anything but their resourceVersion.
fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}

impl Store {
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn record(&mut self, res: &Resource, namespace: &str, kind: &'static str, object: Value) {
        let change = Arc::new(Change {
            rv: self.rv,
            group: res.group,
            plural: res.plural,
            namespace: namespace.to_owned(),
            kind,
            object,
        });
        self.history.push_back(change.clone());
        if self.history.len() > HISTORY
            && let Some(dropped) = self.history.pop_front()
        {
            self.oldest = dropped.rv + 1;
        }
        let _ = self.tx.send(change);
    }

    pub fn list(
        &self,
        res: &Resource,
        version: &str,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> (Vec<Value>, u64) {
        let items = self
            .objects
            .iter()
            .filter(|(k, _)| k.group == res.group && k.plural == res.plural)
            .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v)
            .filter(|v| selector.matches(v))
            .map(|v| shown(v.clone(), res, version))
            .collect();
        (items, self.rv)
    }

    pub fn get(
        &self,
        res: &Resource,
        version: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.objects
            .get(&key(res, namespace, name))
            .map(|v| shown(v.clone(), res, version))
            .ok_or_else(|| ApiError::NotFound(format!("{} \"{name}\" not found", res.plural)))
    }

    pub fn create(
        &mut self,
        res: &Resource,
        version: &str,
        namespace: Option<&str>,
        mut body: Value,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::Invalid("the body is not an object".into()));
        }
        if body["metadata"]["name"].as_str().is_none()
            && let Some(prefix) = body["metadata"]["generateName"].as_str()
        {
            body["metadata"]["name"] = json!(format!("{prefix}{:05x}", self.uid + 1));
        }
        let name = body["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::Invalid("metadata.name: Required value".into()))?
            .to_owned();
        if let Some(ns) = namespace {
            match body["metadata"]["namespace"].as_str() {
                Some(given) if given != ns => {
                    return Err(ApiError::Invalid(format!(
                        "metadata.namespace: the namespace of the object ({given}) does not \
                         match the namespace on the request ({ns})"
                    )));
                }
                _ => body["metadata"]["namespace"] = json!(ns),
            }
        }
        let k = key(res, namespace, &name);
        if self.objects.contains_key(&k) {
            return Err(ApiError::AlreadyExists(format!(
                "{} \"{name}\" already exists",
                res.plural
            )));
        }
        self.rv += 1;
        self.uid += 1;
        let meta = &mut body["metadata"];
        meta["resourceVersion"] = json!(self.rv.to_string());
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uid));
        meta["creationTimestamp"] = json!(timestamp());
        if let Some(m) = meta.as_object_mut() {
            m.remove("managedFields");
        }
        // As on the real server, status is not set by a create where it is a subresource.
        if res.status
            && let Some(o) = body.as_object_mut()
        {
            o.remove("status");
        }
        let body = shown(body, res, version);
        self.objects.insert(k, body.clone());
        self.record(res, namespace.unwrap_or(""), "ADDED", body.clone());
        Ok(body)
    }

    /// PUT: `status_only` for the `/status` subresource.
    pub fn replace(
        &mut self,
        res: &Resource,
        version: &str,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let current = self.get(res, version, namespace, name)?;
        if let Some(given) = rv_of(&body)
            && Some(given) != rv_of(&current)
        {
            return Err(conflict(res, name));
        }
        if body["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::Invalid(
                "metadata.name: the name of the object does not match the URL".into(),
            ));
        }
        let next = merge_subresource(res, current.clone(), body, status_only);
        self.store_update(res, version, namespace, name, current, next)
    }

    pub fn patch(
        &mut self,
        res: &Resource,
        version: &str,
        namespace: Option<&str>,
        name: &str,
        (kind, patch): (PatchKind, Value),
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let current = self.get(res, version, namespace, name)?;
        let mut patched = current.clone();
        match kind {
            PatchKind::Merge => json_patch::merge(&mut patched, &patch),
            PatchKind::Json => {
                let ops: json_patch::Patch = serde_json::from_value(patch)
                    .map_err(|e| ApiError::Invalid(format!("bad JSON patch: {e}")))?;
                json_patch::patch(&mut patched, &ops)
                    .map_err(|e| ApiError::Invalid(format!("JSON patch failed: {e}")))?;
            }
        }
        // A resourceVersion in the patch is a precondition, as on the real server.
        if rv_of(&patched) != rv_of(&current) {
            return Err(conflict(res, name));
        }
        let next = merge_subresource(res, current.clone(), patched, status_only);
        self.store_update(res, version, namespace, name, current, next)
    }

    fn store_update(
        &mut self,
        res: &Resource,
        version: &str,
        namespace: Option<&str>,
        name: &str,
        current: Value,
        mut next: Value,
    ) -> Result<Value, ApiError> {
        // Identity fields are the server's.
        for field in ["uid", "creationTimestamp", "namespace", "name"] {
            next["metadata"][field] = current["metadata"][field].clone();
        }
        if let Some(m) = next["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        next = shown(next, res, version);
        if same_content(&current, &next) {
            return Ok(current);
        }
        self.rv += 1;
        next["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key(res, namespace, name), next.clone());
        self.record(res, namespace.unwrap_or(""), "MODIFIED", next.clone());
        Ok(next)
    }

    pub fn delete(
        &mut self,
        res: &Resource,
        version: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let mut gone = self
            .objects
            .remove(&key(res, namespace, name))
            .map(|v| shown(v, res, version))
            .ok_or_else(|| ApiError::NotFound(format!("{} \"{name}\" not found", res.plural)))?;
        self.rv += 1;
        gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(res, namespace.unwrap_or(""), "DELETED", gone.clone());
        if let Some(uid) = gone["metadata"]["uid"].as_str() {
            self.collect_dependents(uid);
        }
        Ok(gone)
    }

    /// What Kubernetes' garbage collector does after a (background) deletion: objects owned
    /// by `uid` whose owners are all gone are deleted in turn.
    fn collect_dependents(&mut self, uid: &str) {
        let live: BTreeSet<String> = self
            .objects
            .values()
            .filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_owned))
            .collect();
        let orphans: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                let owners: Vec<&str> = o["metadata"]["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["uid"].as_str())
                    .collect();
                owners.contains(&uid) && owners.iter().all(|u| !live.contains(*u))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in orphans {
            let Some(res) = RESOURCES
                .iter()
                .find(|r| r.group == k.group && r.plural == k.plural)
            else {
                continue;
            };
            let namespace = (!k.namespace.is_empty()).then_some(k.namespace.as_str());
            let _ = self.delete(res, res.versions[0], namespace, &k.name);
        }
    }

    /// What a watch from `from` sends first, and the feed of what follows. `None` means "any
    /// version": every current object as ADDED.
    #[allow(clippy::type_complexity)]
    pub fn watch(
        &self,
        res: &Resource,
        version: &str,
        namespace: Option<&str>,
        from: Option<u64>,
    ) -> Result<(Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>), ApiError> {
        let rx = self.tx.subscribe();
        let in_scope = |c: &Change| {
            c.group == res.group
                && c.plural == res.plural
                && namespace.is_none_or(|ns| c.namespace == ns)
        };
        let replay = match from {
            None => self
                .objects
                .iter()
                .filter(|(k, _)| k.group == res.group && k.plural == res.plural)
                .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
                .map(|(k, v)| {
                    Arc::new(Change {
                        rv: self.rv,
                        group: res.group,
                        plural: res.plural,
                        namespace: k.namespace.clone(),
                        kind: "ADDED",
                        object: shown(v.clone(), res, version),
                    })
                })
                .collect(),
            Some(from) if from < self.oldest => {
                return Err(ApiError::Gone(format!(
                    "too old resource version: {from} ({})",
                    self.oldest
                )));
            }
            Some(from) => self
                .history
                .iter()
                .filter(|c| c.rv > from && in_scope(c))
                .cloned()
                .collect(),
        };
        Ok((replay, rx))
    }

    /// Forgets the history: every watch from an older resourceVersion gets 410 Gone, so
    /// clients must list again (what etcd compaction does).
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest = self.rv + 1;
    }
}

fn conflict(res: &Resource, name: &str) -> ApiError {
    ApiError::Conflict(format!(
        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please \
         apply your changes to the latest version and try again",
        res.plural
    ))
}

/// With a status subresource, a write to the object keeps the stored status and a write to
/// `/status` keeps everything else.
fn merge_subresource(res: &Resource, current: Value, next: Value, status_only: bool) -> Value {
    if !res.status {
        return next;
    }
    if status_only {
        let mut out = current;
        out["status"] = next["status"].clone();
        out
    } else {
        let mut out = next;
        match current.get("status") {
            Some(s) => out["status"] = s.clone(),
            None => {
                if let Some(o) = out.as_object_mut() {
                    o.remove("status");
                }
            }
        }
        out
    }
}

fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> &'static Resource {
        Resource::find("", "v1", "services").unwrap_or_else(|| panic!("services"))
    }

    fn svc(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [{"ip": "1.1.1.1"}]}}})
    }

    #[test]
    fn create_drops_status_and_stale_writes_conflict() {
        let mut s = Store::default();
        let created = s
            .create(services(), "v1", Some("ns"), svc("a"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(created.get("status").is_none(), "{created}");
        let rv = created["metadata"]["resourceVersion"].clone();
        let mut update = created.clone();
        update["spec"]["type"] = json!("ClusterIP");
        s.replace(services(), "v1", Some("ns"), "a", update.clone(), false)
            .unwrap_or_else(|e| panic!("{e:?}"));
        // The same write again carries the old resourceVersion.
        let err = s
            .replace(services(), "v1", Some("ns"), "a", update, false)
            .err();
        assert_eq!(err.map(|e| e.code()), Some(409));
        let stale = json!({"metadata": {"resourceVersion": rv}, "status": {"x": 1}});
        let err = s
            .patch(
                services(),
                "v1",
                Some("ns"),
                "a",
                (PatchKind::Merge, stale),
                true,
            )
            .err();
        assert_eq!(err.map(|e| e.code()), Some(409));
    }

    #[test]
    fn the_status_subresource_and_the_object_do_not_write_each_other() {
        let mut s = Store::default();
        s.create(services(), "v1", Some("ns"), svc("a"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let both = json!({"spec": {"type": "ClusterIP"}, "status": {"loadBalancer": {}}});
        let after = s
            .patch(
                services(),
                "v1",
                Some("ns"),
                "a",
                (PatchKind::Merge, both.clone()),
                true,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(after["spec"]["type"], "LoadBalancer");
        assert_eq!(after["status"], json!({"loadBalancer": {}}));
        let after = s
            .patch(
                services(),
                "v1",
                Some("ns"),
                "a",
                (
                    PatchKind::Merge,
                    json!({"status": null, "spec": {"type": "ClusterIP"}}),
                ),
                false,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(after["spec"]["type"], "ClusterIP");
        assert_eq!(after["status"], json!({"loadBalancer": {}}));
    }

    #[test]
    fn a_write_that_changes_nothing_keeps_the_version_and_sends_no_event() {
        let mut s = Store::default();
        let created = s
            .create(services(), "v1", Some("ns"), svc("a"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let same = s
            .patch(
                services(),
                "v1",
                Some("ns"),
                "a",
                (PatchKind::Merge, json!({"spec": {"type": "LoadBalancer"}})),
                false,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            same["metadata"]["resourceVersion"],
            created["metadata"]["resourceVersion"]
        );
        let from: u64 = created["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("rv"));
        let (replay, _) = s
            .watch(services(), "v1", None, Some(from))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(replay.is_empty());
    }

    #[test]
    fn watches_replay_from_a_version_until_the_history_is_compacted() {
        let mut s = Store::default();
        let a = s
            .create(services(), "v1", Some("ns"), svc("a"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        s.create(services(), "v1", Some("other"), svc("b"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        s.delete(services(), "v1", Some("ns"), "a")
            .unwrap_or_else(|e| panic!("{e:?}"));
        let from: u64 = a["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("rv"));
        let (replay, _) = s
            .watch(services(), "v1", Some("ns"), Some(from - 1))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let kinds: Vec<_> = replay.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, ["ADDED", "DELETED"]);
        s.compact();
        let gone = s.watch(services(), "v1", None, Some(from)).err();
        assert_eq!(gone.map(|e| e.code()), Some(410));
        // "Any version" still works: the current objects as ADDED.
        let (now, _) = s
            .watch(services(), "v1", None, None)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(now.len(), 1);
    }

    #[test]
    fn selectors_filter_by_label_and_name() {
        let sel = Selector::parse(Some("app=web,tier"), Some("metadata.name=a"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let obj = json!({"metadata": {"name": "a", "labels": {"app": "web", "tier": "x"}}});
        assert!(sel.matches(&obj));
        let other = json!({"metadata": {"name": "b", "labels": {"app": "web", "tier": "x"}}});
        assert!(!sel.matches(&other));
        assert!(Selector::parse(None, Some("spec.nodeName=x")).is_err());
    }
}
