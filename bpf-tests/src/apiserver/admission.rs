//! Calling a validating webhook as the API server does: HTTPS to the Service's DNS name,
//! trusting only the configuration's `caBundle`, an AdmissionReview v1 in the body; and the
//! API server's side of it, [`admit`], run on every create, replace and delete it serves
//! over HTTP (not on status writes, not on PATCH, which the tests' metallb.io writes do not
//! use; fixtures applied with [`super::ApiServer::apply`] bypass admission, as writes to etcd
//! would).
use std::{net::SocketAddr, sync::Arc, time::Duration};

use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    Shared,
    resources::Resource,
    store::{ApiError, Selector},
};
use tokio_rustls::{
    TlsConnector,
    rustls::{ClientConfig, RootCertStore, crypto::ring},
};

/// What the webhook answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// The certificate it served.
    pub certificate: Vec<u8>,
}

/// An AdmissionReview request for `object` (`None` for a DELETE's missing object).
pub fn review(
    operation: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    object: Option<Value>,
) -> Value {
    let version = object
        .as_ref()
        .and_then(|o| o["apiVersion"].as_str())
        .and_then(|v| v.split('/').nth(1))
        .unwrap_or("v1beta1")
        .to_owned();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("{operation}-{kind}-{name}"),
            "kind": {"group": "metallb.io", "version": version, "kind": kind},
            "resource": {"group": "metallb.io", "version": version, "resource": format!("{}s", kind.to_lowercase())},
            "operation": operation,
            "namespace": namespace,
            "name": name,
            "object": object,
            "userInfo": {"username": "test"},
        }
    })
}

/// Posts `review` to `https://{server_name}{path}` at `addr`, trusting `ca_pem` only.
pub async fn call(
    addr: SocketAddr,
    server_name: &str,
    path: &str,
    ca_pem: &[u8],
    review: &Value,
) -> Result<Answer, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("caBundle: {e}"))?;
        roots.add(cert).map_err(|e| format!("caBundle: {e}"))?;
    }
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        let body = review.to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {server_name}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        // A server that closes without close_notify ends the read with an error; what came
        // before is the answer.
        let _ = tls.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no status")?;
        let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
        Ok(Answer {
            status,
            body,
            certificate,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| "timed out".to_owned())?
}

static NEXT_UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Whether a webhook's `rules` cover this request.
fn covers(hook: &Value, res: &Resource, version: &str, operation: &str) -> bool {
    let has = |list: &Value, want: &str| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|v| v == want || v == "*"))
    };
    hook["rules"].as_array().into_iter().flatten().any(|rule| {
        has(&rule["apiGroups"], res.group)
            && has(&rule["apiVersions"], version)
            && has(&rule["resources"], res.plural)
            && has(&rule["operations"], operation)
    })
}

/// Calls one webhook: its Service as routed, its `caBundle`, its timeout.
async fn call_hook(shared: &Shared, hook: &Value, review: &Value) -> Result<Answer, String> {
    use base64::Engine;
    let service = &hook["clientConfig"]["service"];
    let (ns, name) = (
        service["namespace"].as_str().unwrap_or_default(),
        service["name"].as_str().unwrap_or_default(),
    );
    let endpoint = shared
        .routes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&format!("{ns}/{name}"))
        .and_then(|e| e.first().copied())
        .ok_or_else(|| format!("service \"{name}\" has no endpoints"))?;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(
            hook["clientConfig"]["caBundle"]
                .as_str()
                .unwrap_or_default(),
        )
        .map_err(|e| format!("caBundle: {e}"))?;
    let path = service["path"].as_str().unwrap_or("/");
    let timeout = Duration::from_secs(hook["timeoutSeconds"].as_u64().unwrap_or(10));
    let answer = tokio::time::timeout(
        timeout,
        call(endpoint, &format!("{name}.{ns}.svc"), path, &ca, review),
    )
    .await
    .map_err(|_| "context deadline exceeded".to_owned())??;
    if answer.status == 200 {
        Ok(answer)
    } else {
        Err(format!("the server answered {}", answer.status))
    }
}

/// Runs the validating webhooks that cover a write, as the API server does before storing:
/// a denial is 403 with the webhook's message; a webhook that cannot be called is skipped
/// under `failurePolicy: Ignore` and fails the write (500) under `Fail`. Returns the warnings
/// to send back.
#[allow(clippy::too_many_arguments)]
pub(super) async fn admit(
    shared: &Shared,
    res: &Resource,
    version: &str,
    operation: &str,
    namespace: Option<&str>,
    name: &str,
    object: Option<&Value>,
    old: Option<Value>,
) -> Result<Vec<String>, ApiError> {
    let Some(vwc) = Resource::of(
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
    ) else {
        return Ok(Vec::new());
    };
    let (configs, _) = shared.store().list(vwc, "v1", None, &Selector::default());
    let hooks: Vec<Value> = configs
        .iter()
        .flat_map(|c| c["webhooks"].as_array().cloned().unwrap_or_default())
        .filter(|h| covers(h, res, version, operation))
        .collect();
    let mut warnings = Vec::new();
    for hook in hooks {
        let hook_name = hook["name"].as_str().unwrap_or_default().to_owned();
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": format!("{operation}-{name}-{}", NEXT_UID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
                "kind": {"group": res.group, "version": version, "kind": res.kind},
                "resource": {"group": res.group, "version": version, "resource": res.plural},
                "operation": operation,
                "namespace": namespace,
                "name": name,
                "object": object,
                "oldObject": old,
                "userInfo": {"username": "test"},
            }
        });
        match call_hook(shared, &hook, &review).await {
            Ok(answer) => {
                let r = &answer.body["response"];
                warnings.extend(
                    r["warnings"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|w| w.as_str().map(str::to_owned)),
                );
                if r["allowed"] != true {
                    return Err(ApiError::Forbidden(format!(
                        "admission webhook \"{hook_name}\" denied the request: {}",
                        r["status"]["message"].as_str().unwrap_or_default()
                    )));
                }
            }
            Err(e) if hook["failurePolicy"] == "Fail" => {
                return Err(ApiError::Internal(format!(
                    "Internal error occurred: failed calling webhook \"{hook_name}\": {e}"
                )));
            }
            Err(e) => shared.log(format!(
                "  webhook {hook_name} failed, ignored (failurePolicy Ignore): {e}"
            )),
        }
    }
    Ok(warnings)
}
