//! TLS for the HTTPS servers (the webhook, the secure metrics): the serving key they hand out,
//! swapped in place when its certificate is renewed, and the acceptor built over it.
//!
//! - [`certs`]: xdplb's own CA and serving certificates, no I/O.
pub mod certs;

use std::sync::{Arc, RwLock};

use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        crypto::ring,
        server::{ClientHello, ResolvesServerCert},
        sign::CertifiedKey,
    },
};

/// The serving key a TLS server hands out; `None` until the first one is loaded (handshakes
/// fail until then).
#[derive(Debug, Default)]
pub struct ServingKey(RwLock<Option<Arc<CertifiedKey>>>);

impl ServingKey {
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }

    pub fn is_set(&self) -> bool {
        self.get().is_some()
    }

    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for ServingKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

/// An HTTP/1.1 acceptor serving whatever `key` holds at each handshake.
pub fn acceptor(key: Arc<ServingKey>) -> Result<TlsAcceptor, tokio_rustls::rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(key);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
