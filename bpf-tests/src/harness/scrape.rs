//! Reading an agent's `/metrics` from inside its network namespace, and picking samples out of
//! the Prometheus text format.
use std::{net::SocketAddr, time::Duration};

use http_body_util::{BodyExt, Empty};
use hyper::{Request, body::Bytes};

use crate::harness::netns::NetNs;

/// `GET path` on `addr` from inside `ns`: the status and the body.
pub fn get(ns: &NetNs, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    plain(Some(ns), addr, path)
}

/// `GET path` on `addr` from this process's own network namespace.
pub fn get_here(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    plain(None, addr, path)
}

fn plain(ns: Option<&NetNs>, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let path = path.to_owned();
    blocking(ns, format!("GET {addr}{path}"), async move {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        exchange(hyper_util::rt::TokioIo::new(stream), addr, &path, None).await
    })
}

/// Runs `request` on a runtime of its own (inside `ns` if given), within 5 s.
fn blocking<F>(ns: Option<&NetNs>, what: String, request: F) -> Result<(u16, String), String>
where
    F: std::future::Future<Output = Result<(u16, String), String>> + Send + 'static,
{
    let run = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(5), request)
                .await
                .map_err(|_| format!("{what}: timed out"))?
        })
    };
    match ns {
        Some(ns) => ns.within(run),
        None => run(),
    }
}

/// One HTTP/1.1 `GET path` over `io` (TCP or TLS), with `token` as the bearer.
async fn exchange<I>(
    io: I,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", addr.to_string());
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The value of the sample `name{labels}` where every `key="value"` in `labels` is present
/// (other labels may be too); `None` when there is no such sample.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            if !all {
                return None;
            }
            value.parse().ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let text =
            "# TYPE a counter\na_total{reason=\"auth\"} 3\na_total{reason=\"replay\"} 5\nb 7\n";
        assert_eq!(sample(text, "a_total", &[("reason", "replay")]), Some(5.0));
        assert_eq!(sample(text, "b", &[]), Some(7.0));
        assert_eq!(sample(text, "a_total", &[("reason", "malformed")]), None);
        assert_eq!(sample(text, "a", &[]), None);
    }
}

/// Whom an HTTPS scrape trusts.
pub enum Trust {
    /// Only certificates this CA (PEM) signed for `name`, as Prometheus with `ca_file`.
    Ca { pem: Vec<u8>, name: String },
    /// Any certificate, as Prometheus with `insecure_skip_verify` (a self-signed server).
    Any,
}

/// `GET path` over HTTPS on `addr` (from inside `ns` if given) with `token` as the bearer:
/// the status and the body.
pub fn get_https(
    ns: Option<&NetNs>,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    trust: Trust,
) -> Result<(u16, String), String> {
    let (path, token) = (path.to_owned(), token.map(str::to_owned));
    blocking(ns, format!("GET https://{addr}{path}"), async move {
        https(addr, &path, token.as_deref(), trust).await
    })
}

async fn https(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    trust: Trust,
) -> Result<(u16, String), String> {
    use std::sync::Arc;

    use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};

    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let (config, name) = match trust {
        Trust::Ca { pem, name } => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(cert.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
            (
                builder.with_root_certificates(roots).with_no_client_auth(),
                name,
            )
        }
        Trust::Any => (
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate))
                .with_no_client_auth(),
            "scraped".to_owned(),
        ),
    };
    let name = ServerName::try_from(name).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to {addr}: {e}"))?;
    exchange(hyper_util::rt::TokioIo::new(tls), addr, path, token).await
}

/// Prometheus' `insecure_skip_verify`: the handshake still proves the server holds the key of
/// the certificate it sent, but any certificate is taken.
#[derive(Debug)]
struct AnyCertificate;

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error>
    {
        Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &tokio_rustls::rustls::crypto::ring::default_provider()
                .signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &tokio_rustls::rustls::crypto::ring::default_provider()
                .signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        tokio_rustls::rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
