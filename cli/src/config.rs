//! Finding the master and the token: flags, then environment (handled by clap), then the
//! client config file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bramble_api::client_config::ClientConfig;

use crate::args::Connection;

/// A resolved connection.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub server: String,
    pub token: String,
    /// How the server's certificate is verified (https only).
    pub trust: Trust,
}

/// How an HTTPS server is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Against this CA (PEM).
    Ca(String),
    /// Not at all (`--insecure-skip-tls-verify`).
    Nothing,
    /// Plain HTTP: nothing to verify.
    Plain,
}

fn default_paths() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        v.push(Path::new(&home).join(".bramble/config"));
    }
    v.push(PathBuf::from("/var/lib/bramble/master/client.yaml"));
    v
}

fn read(path: &Path) -> Result<ClientConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading client config {}", path.display()))?;
    ClientConfig::parse(&text).with_context(|| format!("client config {}", path.display()))
}

/// Resolves server and token; a flag or variable wins over the file.
pub fn resolve(conn: &Connection) -> Result<Resolved> {
    let file = match &conn.config {
        Some(p) => Some((p.clone(), read(p)?)),
        None if conn.server.is_some() && conn.token.is_some() => None,
        None => match default_paths().into_iter().find(|p| p.exists()) {
            Some(p) => {
                let c = read(&p)?;
                Some((p, c))
            }
            None => None,
        },
    };
    let (fs, ft, fca) = match &file {
        Some((_, c)) => (
            c.server.clone(),
            c.token.clone(),
            c.certificate_authority_data.clone(),
        ),
        None => (None, None, None),
    };
    let Some(server) = conn.server.clone().or(fs) else {
        bail!(
            "no server: pass --server URL, set BRAMBLE_SERVER, or point --config at the master's client.yaml \
             (looked in ~/.bramble/config and /var/lib/bramble/master/client.yaml)"
        );
    };
    let Some(token) = conn.token.clone().or(ft) else {
        bail!(
            "no token: pass --token, set BRAMBLE_TOKEN, or use the master's client.yaml (--config)"
        );
    };
    let server = server.trim_end_matches('/').to_string();
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        bail!("server {server:?} must be a URL such as https://127.0.0.1:6443");
    }
    let ca = match &conn.certificate_authority {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("--certificate-authority {}", p.display()))?,
        ),
        None => fca,
    };
    let trust = if server.starts_with("http://") {
        Trust::Plain
    } else if conn.insecure_skip_tls_verify {
        Trust::Nothing
    } else if let Some(ca) = ca {
        Trust::Ca(ca)
    } else {
        bail!(
            "no CA to verify {server} with: pass --certificate-authority FILE (the master's ca.crt), \
             or use the master's client.yaml (--config), which carries it"
        );
    };
    Ok(Resolved {
        server,
        token,
        trust,
    })
}
