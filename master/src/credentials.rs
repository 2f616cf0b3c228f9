//! The admin token and the client config file the CLI reads.
//!
//! On first start the master creates `admin.token` (mode 0600) in its data dir; later starts
//! read it. After binding, it writes `client.yaml` (mode 0600) with the server URL and the
//! token, which `bramble` finds by default on the master's own board.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;

/// File name of the admin token in the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// A token that may only read the API (GET, list, watch): for `bramble-proxy` on hosts
/// without an agent, and for monitoring.
pub const READER_TOKEN_FILE: &str = "reader.token";
/// File name of the client config in the data dir.
pub const CLIENT_CONFIG_FILE: &str = "client.yaml";
/// The same connection for kubectl: `KUBECONFIG=DATA_DIR/kubeconfig.yaml kubectl get nodes`.
pub const KUBECONFIG_FILE: &str = "kubeconfig.yaml";

/// Errors reading or writing credential files.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: the token file is empty or not a token; delete it to have a new one created")]
    Malformed { path: String },
    #[error("cannot generate a random token: {0}")]
    Random(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialError + '_ {
    move |source| CredentialError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// SHA-256 of a token: what the master keeps instead of it.
pub fn sha256(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// [`sha256`] in lower-case hex.
pub fn sha256_hex(token: &str) -> String {
    bramble_support::wire_auth::hex(&sha256(token))
}

/// A new random token: 32 bytes, hex.
pub fn new_token() -> Result<String, CredentialError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| CredentialError::Random(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Reads the token in `path`, creating it (mode 0600) if it does not exist.
pub fn load_or_create_token(path: &Path) -> Result<String, CredentialError> {
    match fs::read_to_string(path) {
        Ok(s) => {
            let t = s.trim();
            if t.len() < 16 || !t.bytes().all(|c| c.is_ascii_alphanumeric()) {
                return Err(CredentialError::Malformed {
                    path: path.display().to_string(),
                });
            }
            Ok(t.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token()?;
            write_private(path, format!("{token}\n").as_bytes())?;
            Ok(token)
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes a file readable only by its owner, atomically and durably.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), CredentialError> {
    bramble_support::fs::write_atomic(path, data, 0o600).map_err(io_err(path))
}

/// The server URL a local client should use for a listen address.
pub fn client_url(addr: SocketAddr, tls: bool) -> String {
    let host = match addr {
        a if a.ip().is_unspecified() && a.is_ipv4() => "127.0.0.1".to_string(),
        a if a.ip().is_unspecified() => "[::1]".to_string(),
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}:{}", addr.port())
}

/// Writes `client.yaml` for the CLI and `kubeconfig.yaml` for kubectl.
pub fn write_client_config(
    path: &Path,
    server: &str,
    token: &str,
    ca_pem: Option<&str>,
) -> Result<(), CredentialError> {
    let config = bramble_api::client_config::ClientConfig {
        server: Some(server.to_string()),
        token: Some(token.to_string()),
        certificate_authority_data: ca_pem.map(str::to_string),
    };
    write_private(path, config.render("bramble-master").as_bytes())?;
    // And the kubeconfig beside it (0600 too: it holds the admin token).
    let kube = path.with_file_name(KUBECONFIG_FILE);
    write_private(
        &kube,
        config.kubeconfig("bramble", "admin", false).as_bytes(),
    )
}
