//! Calling a validating webhook as the API server does: HTTPS to the Service's DNS name,
//! trusting only the configuration's `caBundle`, an AdmissionReview v1 in the body.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
