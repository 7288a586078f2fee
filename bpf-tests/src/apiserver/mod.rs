//! An in-process Kubernetes API server for tests: the real HTTP protocol (list with
//! resourceVersion, watch streams with ADDED/MODIFIED/DELETED/BOOKMARK, 410 Gone → relist,
//! 409 Conflict on stale writes, the status subresource) over an in-memory store, so the
//! controller and the agents talk to it through kube-rs exactly as to a cluster.
//!
//! It runs on a runtime of its own, so plain `#[test]`s, async tests and spawned binaries
//! (through [`ApiServer::kubeconfig`]) can all use it. Tests act on it as an administrator
//! would with `kubectl`: [`ApiServer::apply`], [`ApiServer::delete`], and they can break every
//! watch or compact the history to force the error paths.
pub mod admission;
mod http;
pub mod resources;
pub mod reviews;
pub mod store;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde_json::Value;
use tokio::sync::watch;

use resources::Resource;
use store::{ApiError, Selector, Store};

pub struct Shared {
    store: Mutex<Store>,
    /// Bumped to end every open watch.
    kill: watch::Sender<u64>,
    /// While true, watches (new or resumed) wait before they open.
    hold: watch::Sender<bool>,
    log: Mutex<Vec<String>>,
    bookmark_every: Duration,
    /// `namespace/name` of Services whose next status write meets a concurrent writer.
    interfere: Mutex<Vec<String>>,
    /// Where each webhook Service's endpoints are (`namespace/name`), as a test routes them.
    routes: Mutex<std::collections::BTreeMap<String, Vec<SocketAddr>>>,
    /// Bearer tokens a test issued, and whom each stands for.
    tokens: Mutex<std::collections::HashMap<String, reviews::User>>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Plays the concurrent writer if a test asked for one on this status write.
    fn maybe_interfere(&self, res: &Resource, namespace: Option<&str>, name: &str) {
        let key = format!("{}/{name}", namespace.unwrap_or(""));
        let mut pending = self.interfere.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = pending.iter().position(|k| *k == key) else {
            return;
        };
        pending.remove(i);
        let patch = serde_json::json!({"metadata": {"labels": {"test/interfered": "yes"}}});
        let _ = self.store().patch(
            res,
            "v1",
            namespace,
            name,
            (store::PatchKind::Merge, patch),
            false,
        );
    }

    fn log(&self, line: String) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }
}

pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `(apiVersion, kind, namespace, name)` of an object given as JSON.
fn identity(obj: &Value) -> Result<(&'static Resource, String, Option<String>, String), String> {
    let api_version = obj["apiVersion"].as_str().ok_or("no apiVersion")?;
    let kind = obj["kind"].as_str().ok_or("no kind")?;
    let res = Resource::of(api_version, kind)
        .ok_or_else(|| format!("{api_version} {kind} is not served"))?;
    let version = api_version.rsplit('/').next().unwrap_or(api_version);
    let name = obj["metadata"]["name"]
        .as_str()
        .ok_or("no metadata.name")?
        .to_owned();
    let ns = res.namespaced.then(|| {
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned()
    });
    Ok((res, version.to_owned(), ns, name))
}

impl ApiServer {
    pub fn start() -> Self {
        Self::with_bookmarks(Duration::from_secs(1))
    }

    /// A server that sends a BOOKMARK on every watch that asks for them every `every`.
    pub fn with_bookmarks(every: Duration) -> Self {
        Self::serve(every, None, "127.0.0.1:0")
    }

    /// A server listening on `bind` inside the network namespace `netns` (a lab's client, say),
    /// so agents in the lab's node namespaces reach it over the segment.
    pub fn start_in(netns: &str, bind: &str) -> Self {
        Self::serve(
            Duration::from_secs(1),
            Some(format!("/run/netns/{netns}")),
            bind,
        )
    }

    fn serve(every: Duration, netns: Option<String>, bind: &str) -> Self {
        let bind = bind.to_owned();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            kill: watch::channel(0).0,
            hold: watch::channel(false).0,
            log: Mutex::new(Vec::new()),
            bookmark_every: every,
            interfere: Mutex::new(Vec::new()),
            routes: Mutex::new(std::collections::BTreeMap::new()),
            tokens: Mutex::new(std::collections::HashMap::new()),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = shared.clone();
        let thread = std::thread::spawn(move || {
            if let Some(path) = &netns {
                use std::os::fd::AsRawFd;
                let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns on a valid namespace fd; it affects this thread and the runtime
                // threads it creates below, which serve nothing but this server.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}");
            }
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => panic!("api server runtime: {e}"),
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(bind.as_str()).await {
                    Ok(l) => l,
                    Err(e) => panic!("api server bind: {e}"),
                };
                let _ = addr_tx.send(listener.local_addr().ok());
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let shared = serving.clone();
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                http::handle(shared.clone(), req)
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        });
        let addr = addr_rx
            .recv()
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("the API server did not start"));
        Self {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// A bearer token of the service account `namespace/name` (as `kubectl create token`):
    /// TokenReview authenticates it from now on.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static ISSUED: AtomicU64 = AtomicU64::new(0);
        let n = ISSUED.fetch_add(1, Ordering::Relaxed);
        let token = format!("test-token-{namespace}-{name}-{}-{n}", std::process::id());
        self.shared
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                token.clone(),
                reviews::User::service_account(namespace, name),
            );
        token
    }

    /// Applies the ClusterRoles of deploy/secure-metrics/rbac.yaml, binds
    /// `xdplb-metrics-reader` to the service account `namespace/name` (as a user does for
    /// Prometheus), and returns a token of that account.
    pub fn bind_metrics_reader(&self, namespace: &str, name: &str) -> String {
        let roles = crate::deploy_docs("secure-metrics/rbac.yaml");
        assert!(
            roles
                .iter()
                .any(|d| d["metadata"]["name"] == "xdplb-metrics-reader"),
            "deploy/secure-metrics/rbac.yaml has xdplb-metrics-reader"
        );
        for role in roles.into_iter().filter(|d| d["kind"] == "ClusterRole") {
            self.apply(role);
        }
        self.apply(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("{name}-reads-xdplb")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "xdplb-metrics-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        }));
        self.service_account_token(namespace, name)
    }

    /// Routes the Service `namespace/name` (a webhook's `clientConfig.service`) to these
    /// endpoints; none routed: calling it fails, as with a Service without ready endpoints.
    pub fn route_service(&self, namespace: &str, name: &str, endpoints: &[SocketAddr]) {
        self.shared
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(format!("{namespace}/{name}"), endpoints.to_vec());
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube-rs client for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(
            self.url()
                .parse()
                .unwrap_or_else(|e| panic!("server url: {e}")),
        );
        kube::Client::try_from(config).unwrap_or_else(|e| panic!("kube client: {e}"))
    }

    /// Writes a kubeconfig that points at this server (for spawned binaries: `KUBECONFIG`).
    pub fn kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    \
             namespace: default\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write kubeconfig: {e}"));
    }

    /// Creates or replaces an object, status included (what a test fixture needs: a Service
    /// "left" with an address by an earlier controller, a Node that is Ready, ...).
    pub fn apply(&self, obj: Value) -> Value {
        let (res, version, ns, name) = identity(&obj).unwrap_or_else(|e| panic!("apply: {e}"));
        let mut store = self.shared.store();
        let mut body = obj.clone();
        if let Some(m) = body["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let written = match store.create(res, &version, ns.as_deref(), body.clone()) {
            Err(ApiError::AlreadyExists(_)) => store
                .replace(res, &version, ns.as_deref(), &name, body.clone(), false)
                .unwrap_or_else(|e| panic!("apply {name}: {e:?}")),
            other => other.unwrap_or_else(|e| panic!("apply {name}: {e:?}")),
        };
        if res.status && obj.get("status").is_some() {
            return store
                .replace(res, &version, ns.as_deref(), &name, body, true)
                .unwrap_or_else(|e| panic!("apply {name} status: {e:?}"));
        }
        written
    }

    pub fn delete(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) {
        let res = Resource::of(api_version, kind).unwrap_or_else(|| panic!("{kind} not served"));
        let version = api_version.rsplit('/').next().unwrap_or(api_version);
        let _ = self.shared.store().delete(res, version, namespace, name);
    }

    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let res = Resource::of(api_version, kind)?;
        let version = api_version.rsplit('/').next().unwrap_or(api_version);
        self.shared.store().get(res, version, namespace, name).ok()
    }

    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let Some(res) = Resource::of(api_version, kind) else {
            return Vec::new();
        };
        let version = api_version.rsplit('/').next().unwrap_or(api_version);
        self.shared
            .store()
            .list(res, version, None, &Selector::default())
            .0
    }

    /// The next status write to Service `namespace/name` finds that another client has just
    /// changed it (a label is added first), so a write that carries the resourceVersion it
    /// read gets 409 Conflict.
    pub fn interfere_with_next_status_write(&self, namespace: &str, name: &str) {
        self.shared
            .interfere
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{namespace}/{name}"));
    }

    /// Ends every open watch (a network blip, an API server restart).
    pub fn break_watches(&self) {
        self.shared.kill.send_modify(|n| *n += 1);
    }

    /// Watches wait before they open (and resume) until [`ApiServer::release_watches`]: with
    /// [`ApiServer::break_watches`], what a test changes meanwhile is certainly not seen live.
    pub fn hold_watches(&self) {
        self.shared.hold.send_replace(true);
    }

    pub fn release_watches(&self) {
        self.shared.hold.send_replace(false);
    }

    /// Forgets the change history: watches resumed from an older resourceVersion get 410 Gone.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// The requests served so far (`METHOD path?query`, and `  -> code METHOD path` when one is
    /// refused).
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.break_watches();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
