//! `/metrics` over HTTPS for those the API server says may read it.
//!
//! The certificate is the Pod's serving certificate (files mounted from a Secret, re-read when
//! they change, as cert-manager renews them) or, without one, a self-signed certificate made at
//! start, as controller-runtime's secure metrics do: Prometheus then scrapes with
//! `insecureSkipVerify`, and the token still decides who reads.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};

use super::{
    Exporter, HEADER_TIMEOUT, accept_loop,
    access::{Verdict, Verdicts, bearer},
    connection,
};
use crate::tls::{ServingKey, certs};

/// How often the certificate files are compared with what is served.
const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// The flags of both binaries.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Args {
    /// Also serve /metrics over HTTPS here (MetalLB 0.16's port is 9120), to bearer tokens the
    /// API server authenticates (TokenReview) and authorizes for `get` on the non-resource URL
    /// /metrics (SubjectAccessReview). /healthz and /readyz answer there without a token.
    /// Cluster mode only.
    #[arg(long)]
    pub secure_metrics_addr: Option<SocketAddr>,
    /// The PEM serving certificate (chain) of the secure metrics, re-read when it changes;
    /// without it and its key, a self-signed certificate made at start.
    #[arg(long, requires = "metrics_tls_key")]
    pub metrics_tls_cert: Option<PathBuf>,
    /// The PEM private key of --metrics-tls-cert.
    #[arg(long, requires = "metrics_tls_cert")]
    pub metrics_tls_key: Option<PathBuf>,
}

impl Args {
    /// What to serve, if anything; `names` go into a self-signed certificate.
    pub fn options(&self, names: Vec<String>) -> Option<Options> {
        Some(Options {
            addr: self.secure_metrics_addr?,
            cert_file: self.metrics_tls_cert.clone(),
            key_file: self.metrics_tls_key.clone(),
            names,
        })
    }
}

/// The names of this host, for a self-signed certificate.
pub fn host_names() -> Vec<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    [host, "localhost".to_owned()]
        .into_iter()
        .filter(|h| !h.is_empty())
        .collect()
}

#[derive(Clone, Debug)]
pub struct Options {
    pub addr: SocketAddr,
    /// PEM certificate chain and key; both or neither (then a self-signed one).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The names a self-signed certificate carries.
    pub names: Vec<String>,
}

/// Checks the bearer token of each `/metrics` request against the API server.
pub struct Gate {
    client: Client,
    verdicts: Mutex<Verdicts>,
}

impl Gate {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            verdicts: Mutex::new(Verdicts::default()),
        }
    }

    /// `Ok` when the request with this `Authorization` header may read the metrics, else the
    /// status and body to answer.
    pub async fn check(&self, authorization: Option<&str>) -> Result<(), (u16, String)> {
        let Some(token) = bearer(authorization) else {
            return Err(Verdict::Unauthenticated
                .refusal()
                .unwrap_or((401, String::new())));
        };
        let remembered = self
            .verdicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token, Instant::now());
        let verdict = match remembered {
            Some(v) => v,
            None => {
                let asked = self.ask(token).await.map_err(|e| {
                    tracing::warn!(error = %e, "checking a metrics scraper's token");
                    (
                        503,
                        "cannot check the token with the API server now\n".to_owned(),
                    )
                })?;
                self.verdicts.lock().unwrap_or_else(|e| e.into_inner()).put(
                    token,
                    asked,
                    Instant::now(),
                );
                asked
            }
        };
        match verdict.refusal() {
            None => Ok(()),
            Some(refusal) => Err(refusal),
        }
    }

    /// TokenReview, then SubjectAccessReview for `get` on `/metrics` as that user.
    async fn ask(&self, token: &str) -> Result<Verdict, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            return Ok(Verdict::Unauthenticated);
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some("/metrics".to_owned()),
                    verb: Some("get".to_owned()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let decided = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await?;
        Ok(if decided.status.is_some_and(|s| s.allowed) {
            Verdict::Allowed
        } else {
            Verdict::Forbidden
        })
    }
}

/// Binds `opts.addr`, loads the certificate and serves until the task is dropped; the error is
/// for start-up (the address, the files).
pub async fn start<E: Exporter>(
    opts: &Options,
    metrics: Arc<E>,
    client: Client,
) -> anyhow::Result<SocketAddr> {
    let key = Arc::new(ServingKey::default());
    let files = match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => anyhow::bail!("give both the metrics certificate and its key, or neither"),
    };
    let loaded = match &files {
        Some((cert, key_file)) => Some(load(cert, key_file)?),
        None => None,
    };
    match &loaded {
        Some((_, served)) => key.set(served.clone()),
        None => {
            let bundle = certs::issue(
                None,
                &certs::Verdict::NewAll("no certificate mounted".into()),
                &opts.names,
                SystemTime::now(),
            )?;
            key.set(certs::serving_key(&bundle.tls_crt, &bundle.tls_key)?);
        }
    }
    let (listener, bound) = super::bind(opts.addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the secure metrics' {}: {e}", opts.addr))?;
    if let (Some((cert, key_file)), Some((text, _))) = (files, loaded) {
        tokio::spawn(reload(cert, key_file, text, key.clone(), RELOAD_EVERY));
    }
    tokio::spawn(serve(listener, key, metrics, Arc::new(Gate::new(client))));
    Ok(bound)
}

/// Serves HTTPS on `listener` with the key `key` holds; `/metrics` through `gate`.
pub async fn serve<E: Exporter>(
    listener: tokio::net::TcpListener,
    key: Arc<ServingKey>,
    metrics: Arc<E>,
    gate: Arc<Gate>,
) {
    let acceptor = match crate::tls::acceptor(key) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "the secure metrics' TLS configuration");
            return;
        }
    };
    accept_loop(listener, move |stream| {
        let (acceptor, metrics, gate) = (acceptor.clone(), metrics.clone(), gate.clone());
        async move {
            let Ok(Ok(tls)) = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await
            else {
                return;
            };
            connection(hyper_util::rt::TokioIo::new(tls), metrics, Some(gate)).await;
        }
    })
    .await;
}

type Loaded = (
    (String, String),
    Arc<tokio_rustls::rustls::sign::CertifiedKey>,
);

fn load(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<Loaded> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))
    };
    let text = (read(cert)?, read(key)?);
    let served = certs::serving_key(&text.0, &text.1).map_err(|e| {
        anyhow::anyhow!(
            "{} and {}: not a certificate and its key: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok((text, served))
}

/// Serves the files' new certificate once they change; a pair that does not load (half
/// written, mismatched) leaves the old one serving.
async fn reload(
    cert: PathBuf,
    key_file: PathBuf,
    mut served: (String, String),
    key: Arc<ServingKey>,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let now = (
            std::fs::read_to_string(&cert).unwrap_or_default(),
            std::fs::read_to_string(&key_file).unwrap_or_default(),
        );
        if now == served {
            continue;
        }
        match load(&cert, &key_file) {
            Ok((text, new)) => {
                key.set(new);
                served = text;
                tracing::info!(cert = %cert.display(), "serving the renewed metrics certificate");
            }
            Err(e) => {
                tracing::warn!(error = %e, "the metrics certificate changed but does not load; keeping the old one")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(name: &str) -> (String, String) {
        let b = certs::issue(
            None,
            &certs::Verdict::NewAll("test".into()),
            &[name.to_owned()],
            SystemTime::now(),
        )
        .expect("issue");
        (b.tls_crt, b.tls_key)
    }

    fn served(key: &ServingKey) -> Vec<u8> {
        key.get().expect("a key").cert[0].as_ref().to_vec()
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_renewed_certificate_is_served_and_a_broken_one_is_not() {
        let dir = std::env::temp_dir().join(format!("xdplb-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
        let write = |pair: &(String, String)| {
            std::fs::write(&cert, &pair.0).expect("write");
            std::fs::write(&key_file, &pair.1).expect("write");
        };
        let first = issue("first");
        write(&first);
        let (text, loaded) = load(&cert, &key_file).expect("load");
        let key = Arc::new(ServingKey::default());
        key.set(loaded);
        let original = served(&key);
        let task = tokio::spawn(reload(
            cert.clone(),
            key_file.clone(),
            text,
            key.clone(),
            Duration::from_millis(20),
        ));
        let second = issue("second");
        write(&second);
        until("the renewed certificate is served", || {
            served(&key) != original
        })
        .await;
        let renewed = served(&key);
        // Half written (a certificate without its key) and garbage: the renewed one stays.
        std::fs::write(&key_file, &first.1).expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(served(&key), renewed, "a mismatched pair was served");
        std::fs::write(&cert, "garbage").expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(served(&key), renewed, "garbage was served");
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
