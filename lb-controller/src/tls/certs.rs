//! A certificate authority and serving certificate of xdplb's own (the webhook's, kept in a
//! Secret; the secure metrics' when no certificate is mounted): whether what a Secret holds
//! can still serve (time passed in), and issuing what replaces it. No I/O; the webhook's
//! keeper reads and writes the Secret.
//!
//! The CA lives ten years and signs a serving certificate for the webhook Service's DNS names
//! that lives one year; either is replaced 30 days before it expires, or at once when it does
//! not parse, does not match its key, lacks a name, or (the serving one) is not signed by the
//! CA. A new serving certificate keeps the CA, so the API server's `caBundle` stays valid.
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::ByteString;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::rustls::{crypto::ring, sign::CertifiedKey};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, pem::Pem};

pub const CA_CRT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Replaced this long before expiry: every replica re-reads the Secret far more often.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Issued this far in the past, for clocks slightly behind the issuer's.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The four PEM texts of the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub ca_crt: String,
    pub ca_key: String,
    pub tls_crt: String,
    pub tls_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("issuing a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("{0} is not a PEM {1}")]
    Pem(&'static str, &'static str),
    #[error("the serving key: {0}")]
    Key(#[from] tokio_rustls::rustls::Error),
}

/// What to do with the Secret's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// A new serving certificate, same CA; the reason.
    NewLeaf(String),
    /// A new CA and serving certificate; the reason.
    NewAll(String),
}

impl Bundle {
    /// The bundle in a Secret's `data`; `None` when a key is missing or not UTF-8.
    pub fn from_data(data: &BTreeMap<String, ByteString>) -> Option<Self> {
        let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
        Some(Self {
            ca_crt: text(CA_CRT)?,
            ca_key: text(CA_KEY)?,
            tls_crt: text(TLS_CRT)?,
            tls_key: text(TLS_KEY)?,
        })
    }

    /// The Secret's `data`.
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        [
            (CA_CRT, &self.ca_crt),
            (CA_KEY, &self.ca_key),
            (TLS_CRT, &self.tls_crt),
            (TLS_KEY, &self.tls_key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect()
    }
}

fn seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Why `cert` cannot serve until `now + RENEW_BEFORE`, if it cannot.
fn expiring(cert: &X509Certificate<'_>, now: SystemTime, what: &str) -> Option<String> {
    let v = cert.validity();
    let soon = seconds(now + RENEW_BEFORE);
    if v.not_before.timestamp() > seconds(now) {
        Some(format!("the {what} is not valid yet (clock moved back?)"))
    } else if v.not_after.timestamp() < soon {
        Some(format!(
            "the {what} expires within {} days",
            RENEW_BEFORE.as_secs() / 86_400
        ))
    } else {
        None
    }
}

/// Whether `key` is the private key of `cert` (and a key rustls can sign with).
fn key_matches(cert_pem: &str, key_pem: &str) -> bool {
    serving_key(cert_pem, key_pem).is_ok()
}

/// Whether the Secret's contents can go on serving the Service named `names`.
pub fn assess(bundle: Option<&Bundle>, names: &[String], now: SystemTime) -> Verdict {
    let Some(b) = bundle else {
        return Verdict::NewAll("no certificate yet".into());
    };
    let ca_pem = Pem::iter_from_buffer(b.ca_crt.as_bytes()).next();
    let Some(Ok(ca_pem)) = ca_pem else {
        return Verdict::NewAll("ca.crt is not a PEM certificate".into());
    };
    let Ok(ca) = ca_pem.parse_x509() else {
        return Verdict::NewAll("ca.crt does not parse".into());
    };
    if !ca.is_ca() || KeyPair::from_pem(&b.ca_key).is_err() {
        return Verdict::NewAll("ca.crt is not a CA, or ca.key is not its key".into());
    }
    if let Some(why) = expiring(&ca, now, "CA") {
        return Verdict::NewAll(why);
    }
    let leaf_pem = Pem::iter_from_buffer(b.tls_crt.as_bytes()).next();
    let Some(Ok(leaf_pem)) = leaf_pem else {
        return Verdict::NewLeaf("tls.crt is not a PEM certificate".into());
    };
    let Ok(leaf) = leaf_pem.parse_x509() else {
        return Verdict::NewLeaf("tls.crt does not parse".into());
    };
    if leaf.verify_signature(Some(ca.public_key())).is_err() {
        return Verdict::NewLeaf("tls.crt is not signed by ca.crt".into());
    }
    if !key_matches(&b.tls_crt, &b.tls_key) {
        return Verdict::NewLeaf("tls.key is not the key of tls.crt".into());
    }
    if let Some(why) = expiring(&leaf, now, "serving certificate") {
        return Verdict::NewLeaf(why);
    }
    let dns: Vec<&str> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(*d),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    match names.iter().find(|n| !dns.contains(&n.as_str())) {
        Some(missing) => Verdict::NewLeaf(format!("tls.crt does not name {missing}")),
        None => Verdict::Keep,
    }
}

fn validity(params: &mut CertificateParams, now: SystemTime, lifetime: Duration) {
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + lifetime).into();
}

fn new_ca(now: SystemTime) -> Result<(String, String, CertificateParams, KeyPair), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "xdplb webhook CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, now, CA_LIFETIME);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem(), params, key))
}

/// What replaces `bundle` under `verdict` (for [`Verdict::Keep`], `bundle` itself).
pub fn issue(
    bundle: Option<&Bundle>,
    verdict: &Verdict,
    names: &[String],
    now: SystemTime,
) -> Result<Bundle, CertError> {
    let (ca_crt, ca_key, issuer) = match (verdict, bundle) {
        (Verdict::Keep, Some(b)) => return Ok(b.clone()),
        (Verdict::NewLeaf(_), Some(b)) => {
            let key = KeyPair::from_pem(&b.ca_key)?;
            let issuer = Issuer::from_ca_cert_pem(&b.ca_crt, key)?;
            (b.ca_crt.clone(), b.ca_key.clone(), issuer)
        }
        _ => {
            let (crt, key_pem, params, key) = new_ca(now)?;
            (crt, key_pem, Issuer::new(params, key))
        }
    };
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    validity(&mut params, now, LEAF_LIFETIME);
    let leaf = params.signed_by(&key, &issuer)?;
    Ok(Bundle {
        ca_crt,
        ca_key,
        tls_crt: leaf.pem(),
        tls_key: key.serialize_pem(),
    })
}

/// The serving certificate and key as rustls serves them.
pub fn serving_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| CertError::Pem(TLS_CRT, "certificate"))?;
    if chain.is_empty() {
        return Err(CertError::Pem(TLS_CRT, "certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| CertError::Pem(TLS_KEY, "private key"))?;
    let provider = ring::default_provider();
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["xdplb-webhook.metallb-system.svc".into()]
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_fresh_bundle_serves_until_thirty_days_before_expiry() {
        let now = SystemTime::now();
        let b = issue(None, &Verdict::NewAll("test".into()), &names(), now)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(assess(Some(&b), &names(), now), Verdict::Keep);
        assert!(serving_key(&b.tls_crt, &b.tls_key).is_ok());
        // The serving certificate first: 335 days on, renewal, and the CA is kept.
        let later = now + 336 * DAY;
        let v = assess(Some(&b), &names(), later);
        assert!(
            matches!(v, Verdict::NewLeaf(ref why) if why.contains("expires")),
            "{v:?}"
        );
        let renewed = issue(Some(&b), &v, &names(), later).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(renewed.ca_crt, b.ca_crt);
        assert_ne!(renewed.tls_crt, b.tls_crt);
        assert_eq!(assess(Some(&renewed), &names(), later), Verdict::Keep);
        // The CA near its end replaces everything.
        let v = assess(Some(&renewed), &names(), now + 3630 * DAY);
        assert!(matches!(v, Verdict::NewAll(_)), "{v:?}");
    }

    #[test]
    fn a_broken_or_foreign_bundle_is_replaced() {
        let now = SystemTime::now();
        let a = issue(None, &Verdict::NewAll("t".into()), &names(), now)
            .unwrap_or_else(|e| panic!("{e}"));
        let b = issue(None, &Verdict::NewAll("t".into()), &names(), now)
            .unwrap_or_else(|e| panic!("{e}"));
        let foreign_leaf = Bundle {
            tls_crt: b.tls_crt.clone(),
            tls_key: b.tls_key.clone(),
            ..a.clone()
        };
        assert!(
            matches!(assess(Some(&foreign_leaf), &names(), now), Verdict::NewLeaf(ref w) if w.contains("not signed")),
        );
        let wrong_key = Bundle {
            tls_key: b.tls_key.clone(),
            ..a.clone()
        };
        assert!(
            matches!(assess(Some(&wrong_key), &names(), now), Verdict::NewLeaf(ref w) if w.contains("tls.key")),
        );
        let garbage = Bundle {
            ca_crt: "garbage".into(),
            ..a.clone()
        };
        assert!(matches!(
            assess(Some(&garbage), &names(), now),
            Verdict::NewAll(_)
        ));
        let renamed = vec!["xdplb-webhook.other.svc".to_owned()];
        assert!(
            matches!(assess(Some(&a), &renamed, now), Verdict::NewLeaf(ref w) if w.contains("other")),
        );
        assert!(matches!(assess(None, &names(), now), Verdict::NewAll(_)));
    }
}
