//! The validating admission webhook: `validate`'s rules on the metallb.io objects as a request
//! would leave them, answered before the API server stores anything.
//!
//! Built so that it cannot take an installation down: every replica serves (not only the
//! leader), the configuration that registers it says `failurePolicy: Ignore` (an unreachable
//! webhook lets everything through, and the controller still reports problems afterwards), it
//! manages its own CA and serving certificate ([`crate::tls::certs`], [`keeper`]), it answers "allowed,
//! with a warning" while its caches are still filling, and it denies only what a request
//! breaks ([`review`]).
//!
//! - [`review`]: one AdmissionReview decided, no I/O.
//! - [`keeper`]: the Secret and the `caBundle` kept current.
//! - here: the HTTPS server and the loop that drives the keeper.
pub mod keeper;
pub mod review;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, body::Bytes, service::service_fn};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;

use crate::sources::{SecretScope, Sources};
use crate::tls::ServingKey;
use keeper::Names;

/// The API server sends objects of at most 1.5 MiB (etcd's limit), wrapped in the review.
const MAX_BODY: usize = 3 << 20;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 256;

#[derive(Clone, Debug)]
pub struct Options {
    /// Where the metallb.io objects live, and the Secret and Service with them.
    pub namespace: String,
    pub addr: SocketAddr,
    /// The Service in front of the replicas (its DNS names go into the certificate).
    pub service: String,
    pub secret: String,
    /// The ValidatingWebhookConfiguration whose `caBundle` the controller writes.
    pub configuration: String,
    /// How often the certificate and the `caBundle` are checked without a Secret change.
    pub check_every: Duration,
}

/// Serves on `opts.addr` until the listener fails; the keeper runs beside it.
pub async fn run(client: Client, opts: Options) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the webhook's {}: {e}", opts.addr))?;
    run_on(client, listener, opts).await
}

/// [`run`] on a bound listener (`opts.addr` unused).
pub async fn run_on(
    client: Client,
    listener: tokio::net::TcpListener,
    opts: Options,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "serving the validating webhook");
    let changed = Arc::new(Notify::new());
    let (sources, tasks) =
        Sources::start(&client, &opts.namespace, SecretScope::All, changed.clone());
    for t in tasks {
        tokio::spawn(t);
    }
    let sources = Arc::new(sources);
    let ready = Arc::new(AtomicBool::new(false));
    let serving = Arc::new(ServingKey::default());
    let names = Names {
        namespace: opts.namespace.clone(),
        secret: opts.secret.clone(),
        configuration: opts.configuration.clone(),
        dns: Names::dns_of(&opts.service, &opts.namespace),
    };
    tokio::spawn(keep(
        client,
        names,
        sources.clone(),
        ready.clone(),
        changed,
        serving.clone(),
        opts.check_every,
    ));
    let state = Arc::new(State {
        sources,
        ready,
        namespace: opts.namespace,
    });
    serve(listener, serving, state).await
}

/// Waits for the caches (then reviews are decided, not waved through), and runs a keeper round
/// when the Secret changes and every `every` (the `caBundle`, expiry).
async fn keep(
    client: Client,
    names: Names,
    sources: Arc<Sources>,
    ready: Arc<AtomicBool>,
    changed: Arc<Notify>,
    serving: Arc<ServingKey>,
    every: Duration,
) {
    sources.wait_ready().await;
    ready.store(true, Ordering::Relaxed);
    let mut seen: Option<String> = None;
    let mut next = tokio::time::Instant::now();
    loop {
        let secret = sources
            .objects()
            .secrets
            .into_iter()
            .find(|s| s.name_any() == names.secret);
        let version = secret.as_ref().and_then(|s| s.resource_version());
        let due = tokio::time::Instant::now() >= next;
        if due || version != seen || !serving.is_set() {
            match keeper::round(&client, &names, secret.as_ref(), &serving).await {
                Ok(()) => {
                    seen = version;
                    next = tokio::time::Instant::now() + every;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook certificate");
                    // Soon again, but not in a tight loop against a failing API.
                    next = tokio::time::Instant::now() + Duration::from_secs(1);
                    seen = None;
                }
            }
        }
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep_until(next) => {}
        }
    }
}

struct State {
    sources: Arc<Sources>,
    ready: Arc<AtomicBool>,
    namespace: String,
}

async fn serve(
    listener: tokio::net::TcpListener,
    serving: Arc<ServingKey>,
    state: Arc<State>,
) -> anyhow::Result<()> {
    let acceptor = crate::tls::acceptor(serving)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = slots.clone().acquire_owned().await?;
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "webhook accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "webhook TLS handshake");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |req| answer(req, state.clone()));
            let io = hyper_util::rt::TokioIo::new(tls);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: u16, kind: &str, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header("content-type", kind)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/healthz") => return Ok(reply(200, "text/plain", b"ok\n".to_vec())),
        ("POST", "/validate") => {}
        _ => return Ok(reply(404, "text/plain", b"not found\n".to_vec())),
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(reply(
                413,
                "text/plain",
                format!("cannot read the review: {e}\n").into_bytes(),
            ));
        }
    };
    let request = match review::parse(&body) {
        Ok(r) => r,
        Err(e) => return Ok(reply(400, "text/plain", format!("{e}\n").into_bytes())),
    };
    let uid = request.uid.clone();
    let verdict = if state.ready.load(Ordering::Relaxed) {
        let objects = state.sources.objects();
        let namespace = state.namespace.clone();
        // Off the runtime's thread: the leader's passes share it.
        let decided = tokio::task::spawn_blocking(move || {
            let verdict = review::decide(&request, &objects, &namespace);
            log(&request, &verdict);
            verdict
        })
        .await;
        decided.unwrap_or_else(|_| review::Verdict {
            allowed: true,
            message: None,
            warnings: vec!["xdplb: validation failed unexpectedly; not checked".into()],
        })
    } else {
        review::Verdict {
            allowed: true,
            message: None,
            warnings: vec![
                "xdplb: the webhook has not read the configuration yet; not checked (the controller reports problems once it has)".into(),
            ],
        }
    };
    Ok(reply(
        200,
        "application/json",
        review::response(&uid, &verdict).to_string().into_bytes(),
    ))
}

fn log(request: &review::Request, verdict: &review::Verdict) {
    if verdict.allowed {
        tracing::debug!(operation = %request.operation, kind = %request.kind, name = %request.name, warnings = verdict.warnings.len(), "admitted");
    } else {
        tracing::info!(operation = %request.operation, kind = %request.kind, name = %request.name, reason = verdict.message.as_deref().unwrap_or(""), "denied");
    }
}
