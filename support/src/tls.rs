//! TLS clients of the master (the agent, the standalone proxy): trust exactly the cluster's
//! CA, fetch that CA when joining and check it against the hash the join token carries.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

/// The SHA-256 of a certificate's DER, lower-case hex: what a join token pins.
pub fn cert_hash(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The certificates in a PEM text (at least one).
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM text".into());
    }
    Ok(certs)
}

/// The SHA-256 of the first certificate in a PEM text.
pub fn pem_hash(pem: &str) -> Result<String, String> {
    Ok(cert_hash(&certs_from_pem(pem)?[0]))
}

/// The ring crypto provider (no OpenSSL, no aws-lc: cross-compiles to every board).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration that trusts only the CA(s) in `ca_pem`.
pub fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_from_pem(ca_pem)? {
        roots
            .add(c)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// ureq's TLS settings trusting only the CA(s) in `ca_pem`.
pub fn ureq_tls(ca_pem: &str) -> Result<ureq::tls::TlsConfig, String> {
    let certs = certs_from_pem(ca_pem)?
        .into_iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect::<Vec<_>>();
    Ok(ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build())
}

/// ureq's TLS settings that verify nothing: only to fetch the CA whose hash is then
/// checked against the join token's.
pub fn ureq_unverified() -> ureq::tls::TlsConfig {
    ureq::tls::TlsConfig::builder()
        .disable_verification(true)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_ca() {
        assert!(certs_from_pem("").is_err());
        assert!(
            client_config("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert_eq!(cert_hash(b"").len(), 64);
    }
}
