//! The cluster's PKI: a CA made on first start (ECDSA P-256, 10 years) and the serving
//! certificate of the API and the broker (1 year), kept in the data dir and reused across
//! restarts. The serving certificate is issued again at start when fewer than 90 days
//! remain or when its names changed (a new address, another `--tls-san`).
//!
//! Files: `ca.crt` (0644: clients need it), `ca.key`, `serving.crt` (the leaf then the CA),
//! `serving.key` (0600) and `serving.json` (its names and expiry, so that a start need not
//! parse X.509).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::credentials::{CredentialError, write_private};

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SERVING_CERT_FILE: &str = "serving.crt";
pub const SERVING_KEY_FILE: &str = "serving.key";
const SERVING_META_FILE: &str = "serving.json";

const DAY: i64 = 24 * 60 * 60;
const CA_LIFETIME_DAYS: i64 = 3650;
const SERVING_LIFETIME_DAYS: i64 = 365;
/// A serving certificate with fewer days left than this is issued again at start.
const RENEW_BEFORE_DAYS: i64 = 90;

/// Why the PKI could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    File(#[from] CredentialError),
    #[error("{path}: {reason}")]
    Bad { path: String, reason: String },
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// What the master serves TLS with.
#[derive(Clone)]
pub struct Pki {
    /// The CA certificate, PEM (what clients trust; its SHA-256 pins joins).
    pub ca_pem: String,
    /// The CA certificate, DER.
    pub ca_der: CertificateDer<'static>,
    /// The rustls configuration of the API and the broker listeners.
    pub server: Arc<rustls::ServerConfig>,
    /// The serving certificate's names.
    pub names: Vec<String>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("names", &self.names).finish()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct ServingMeta {
    names: Vec<String>,
    /// Unix seconds.
    not_after: i64,
}

/// The serving certificate's names: `localhost`, 127.0.0.1, ::1, the host name, every
/// address of this host's interfaces, and the extra names given (`--tls-san`), sorted and
/// without duplicates.
pub fn serving_names(extra: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = hostname()
        && is_dns_name(&h)
    {
        names.push(h);
    }
    names.extend(host_addresses().into_iter().map(|a| a.to_string()));
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// Whether `name` can be a certificate's DNS name (labels of letters, digits and `-`, a
/// leading `*` label for a wildcard).
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').enumerate().all(|(i, l)| {
            (i == 0 && l == "*")
                || (!l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        })
}

fn hostname() -> std::io::Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    let h = h.trim().to_string();
    if h.is_empty() {
        return Err(std::io::Error::other("empty host name"));
    }
    Ok(h)
}

/// The addresses of this host's interfaces (IPv4 from /proc/net/fib_trie's local routes,
/// IPv6 from /proc/net/if_inet6), loopback left out.
fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last: Option<std::net::Ipv4Addr> = None;
        for line in trie.lines() {
            let t = line.trim_start();
            if let Some(rest) = t.strip_prefix("|-- ") {
                last = rest.trim().parse().ok();
            } else if t.starts_with("/32 host LOCAL")
                && let Some(a) = last
                && !a.is_loopback()
            {
                out.push(IpAddr::V4(a));
            }
        }
    }
    if let Ok(v6) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in v6.lines() {
            let Some(hex) = line.split_whitespace().next() else {
                continue;
            };
            let Ok(n) = u128::from_str_radix(hex, 16) else {
                continue;
            };
            let a = std::net::Ipv6Addr::from(n);
            // Link-local addresses need a scope, which a certificate cannot name.
            if !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80 {
                out.push(IpAddr::V6(a));
            }
        }
    }
    out
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> PkiError {
    PkiError::Bad {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The CA's parameters: always the same, so that an issuer rebuilt from them and the stored
/// key signs certificates that chain to the stored CA certificate.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "bramble-ca");
    dn.push(DnType::OrganizationName, "Bramble");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn validity(p: &mut CertificateParams, days: i64) -> i64 {
    let now = now_unix();
    // An hour back, for boards whose clocks lag the master's.
    let from = now - 3600;
    let until = now + days * DAY;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    p.not_before = epoch + std::time::Duration::from_secs(from.max(0) as u64);
    p.not_after = epoch + std::time::Duration::from_secs(until.max(0) as u64);
    until
}

fn random_serial(p: &mut CertificateParams) {
    let mut serial = [0u8; 16];
    // A serial is unique, not secret: on the impossible failure the zeros still make a
    // valid certificate.
    let _ = getrandom::fill(&mut serial);
    serial[0] &= 0x7f;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
}

/// Loads the PKI from `dir`, making what is missing: the CA on first start, the serving
/// certificate when missing, within 90 days of its end, or issued for other names.
pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Pki, PkiError> {
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let (ca_pem, ca_key) = if ca_key_path.exists() {
        let key_pem = read(&ca_key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&ca_key_path, e))?;
        (read(&ca_cert_path)?, key)
    } else {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params();
        validity(&mut params, CA_LIFETIME_DAYS);
        random_serial(&mut params);
        let cert = params.self_signed(&key)?;
        // The certificate first: a key without its certificate would be made again.
        bramble_support::fs::write_atomic(&ca_cert_path, cert.pem().as_bytes(), 0o644)
            .map_err(|e| bad(&ca_cert_path, e))?;
        write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
        tracing::info!(path = %ca_cert_path.display(), "made the cluster CA");
        (cert.pem(), key)
    };
    let ca_der =
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| bad(&ca_cert_path, e))?;

    let cert_path = dir.join(SERVING_CERT_FILE);
    let key_path = dir.join(SERVING_KEY_FILE);
    let meta_path = dir.join(SERVING_META_FILE);
    let current = std::fs::read(&meta_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<ServingMeta>(&b).ok());
    let fresh = current.as_ref().is_some_and(|m| {
        m.names == names
            && m.not_after - now_unix() > RENEW_BEFORE_DAYS * DAY
            && cert_path.exists()
            && key_path.exists()
    });
    if !fresh {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "bramble-master");
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let not_after = validity(&mut params, SERVING_LIFETIME_DAYS);
        random_serial(&mut params);
        let issuer = Issuer::new(ca_params(), &ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        let chain = format!("{}{}", cert.pem(), ca_pem);
        bramble_support::fs::write_atomic(&cert_path, chain.as_bytes(), 0o644)
            .map_err(|e| bad(&cert_path, e))?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        let meta = ServingMeta {
            names: names.to_vec(),
            not_after,
        };
        // A struct of strings and a number always serializes.
        let meta = serde_json::to_vec(&meta).unwrap_or_default();
        bramble_support::fs::write_atomic(&meta_path, &meta, 0o644)
            .map_err(|e| bad(&meta_path, e))?;
        tracing::info!(?names, "issued the serving certificate (1 year)");
    }
    let chain = CertificateDer::pem_slice_iter(read(&cert_path)?.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&cert_path, e))?;
    let key = PrivateKeyDer::from_pem_slice(read(&key_path)?.as_bytes())
        .map_err(|e| bad(&key_path, e))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Pki {
        ca_pem,
        ca_der,
        server: Arc::new(server),
        names: names.to_vec(),
    })
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| bad(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_kept_and_the_serving_certificate_follows_its_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let a = load_or_create(dir.path(), &names).unwrap();
        let serving = std::fs::read(dir.path().join(SERVING_CERT_FILE)).unwrap();
        // A restart with the same names reuses both.
        let b = load_or_create(dir.path(), &names).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(
            std::fs::read(dir.path().join(SERVING_CERT_FILE)).unwrap(),
            serving
        );
        // Another name: the CA stays, the serving certificate is issued again.
        let more = vec!["pi-master.local".to_string(), "localhost".to_string()];
        let c = load_or_create(dir.path(), &more).unwrap();
        assert_eq!(a.ca_pem, c.ca_pem);
        assert_ne!(
            std::fs::read(dir.path().join(SERVING_CERT_FILE)).unwrap(),
            serving
        );
        use std::os::unix::fs::PermissionsExt;
        for (f, mode) in [
            (CA_KEY_FILE, 0o600),
            (SERVING_KEY_FILE, 0o600),
            (CA_CERT_FILE, 0o644),
        ] {
            let m = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, mode, "{f}");
        }
    }

    #[test]
    fn a_serving_certificate_near_its_end_is_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        load_or_create(dir.path(), &names).unwrap();
        let serving = std::fs::read(dir.path().join(SERVING_CERT_FILE)).unwrap();
        let meta = ServingMeta {
            names: names.clone(),
            not_after: now_unix() + 89 * DAY,
        };
        std::fs::write(
            dir.path().join(SERVING_META_FILE),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        load_or_create(dir.path(), &names).unwrap();
        assert_ne!(
            std::fs::read(dir.path().join(SERVING_CERT_FILE)).unwrap(),
            serving
        );
        let meta: ServingMeta =
            serde_json::from_slice(&std::fs::read(dir.path().join(SERVING_META_FILE)).unwrap())
                .unwrap();
        assert!(meta.not_after - now_unix() > 364 * DAY);
    }
}
