//! Joining the cluster: trade the join token for this node's own credentials, once, and keep
//! them (mode 0600) for every later start.
//!
//! Over HTTPS the master is verified on first contact: the agent fetches the cluster CA
//! from `/cacerts` (the only unverified request it makes), checks its SHA-256 against the
//! hash the join token carries (`B10<hash>::<secret>`), and from then on trusts that CA and
//! nothing else, for the join, the blobs and the broker.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bramble_api::wire::NodeFacts;
use serde::{Deserialize, Serialize};

/// File name of the node credentials in the data dir.
pub const CREDENTIALS_FILE: &str = "credentials.json";

/// What the agent received at join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub server: String,
    pub node_name: String,
    pub node_token: String,
    /// Empty: the master's host.
    pub mqtt_host: String,
    pub mqtt_port: u16,
    /// The cluster CA (PEM), pinned at join; empty for a plaintext master.
    #[serde(default)]
    pub ca_pem: String,
    /// Whether the broker speaks TLS.
    #[serde(default)]
    pub mqtt_tls: bool,
    /// The CA (PEM) of an external broker's certificate; empty: the cluster CA.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mqtt_ca_pem: String,
    /// The master's wire key (Ed25519 public key, hex): only what it signs is acted on.
    #[serde(default)]
    pub wire_key: String,
}

impl Credentials {
    /// The broker host, defaulting to the master's host.
    pub fn broker_host(&self) -> String {
        if !self.mqtt_host.is_empty() {
            return self.mqtt_host.clone();
        }
        server_host(&self.server).0
    }
}

/// Host and port of a server URL.
pub fn server_host(server: &str) -> (String, u16) {
    let rest = server.split("://").nth(1).unwrap_or(server);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_matches(['[', ']']).to_string(),
            p.parse().unwrap_or(80),
        ),
        _ => (
            authority.trim_matches(['[', ']']).to_string(),
            if server.starts_with("https") { 443 } else { 80 },
        ),
    }
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "this node has not joined yet: pass --server URL and --token JOIN_TOKEN (see `bramble token list`)"
    )]
    NotJoined,
    #[error("cannot reach the master at {server}: {message}")]
    Unreachable { server: String, message: String },
    #[error("the master refused the join: {0}")]
    Refused(String),
    #[error(
        "the master at {server} presents a CA whose SHA-256 is {got}, but the join token pins {expected}: this is not the master the token was made for (or someone is in between)"
    )]
    CaMismatch {
        server: String,
        expected: String,
        got: String,
    },
    #[error("the join token: {0}")]
    BadToken(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The stored credentials, if this node has joined.
pub fn load(data_dir: &Path) -> Result<Option<Credentials>, JoinError> {
    let path = data_dir.join(CREDENTIALS_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| JoinError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(JoinError::Io { path, source }),
    }
}

/// Saves credentials atomically, readable by root only.
pub fn save(data_dir: &Path, c: &Credentials) -> Result<(), JoinError> {
    let path = data_dir.join(CREDENTIALS_FILE);
    let json = serde_json::to_vec_pretty(c).unwrap_or_default();
    bramble_support::fs::write_atomic(&path, &json, 0o600)
        .map_err(|source| JoinError::Io { path, source })
}

/// An HTTP client for the master: verifying it against `ca_pem` over HTTPS.
pub fn http_agent(ca_pem: &str, timeout: Duration) -> Result<ureq::Agent, String> {
    let mut b = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout));
    if !ca_pem.is_empty() {
        b = b.tls_config(bramble_support::tls::ureq_tls(ca_pem)?);
    }
    Ok(b.build().into())
}

/// Fetches the master's CA and checks it against the token's pin.
fn pinned_ca(server: &str, expected: &str) -> Result<String, JoinError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(15)))
        .tls_config(bramble_support::tls::ureq_unverified())
        .build()
        .into();
    let unreachable = |message: String| JoinError::Unreachable {
        server: server.into(),
        message,
    };
    let resp = agent
        .get(format!("{}/cacerts", server.trim_end_matches('/')))
        .call()
        .map_err(|e| unreachable(e.to_string()))?;
    if resp.status().as_u16() != 200 {
        return Err(JoinError::Refused(format!(
            "GET /cacerts answered HTTP {}",
            resp.status().as_u16()
        )));
    }
    let pem = resp
        .into_body()
        .with_config()
        .limit(64 << 10)
        .read_to_string()
        .map_err(|e| unreachable(e.to_string()))?;
    let got = bramble_support::tls::pem_hash(&pem)
        .map_err(|e| JoinError::Refused(format!("GET /cacerts: {e}")))?;
    if got != expected {
        return Err(JoinError::CaMismatch {
            server: server.into(),
            expected: expected.into(),
            got,
        });
    }
    Ok(pem)
}

/// Joins through the master's API (blocking).
pub fn join(
    server: &str,
    token: &str,
    node_name: &str,
    facts: &NodeFacts,
) -> Result<Credentials, JoinError> {
    let parsed = bramble_api::join::JoinToken::parse(token).map_err(JoinError::BadToken)?;
    let ca_pem = if server.starts_with("https://") {
        let Some(hash) = &parsed.ca_hash else {
            return Err(JoinError::BadToken(
                "it carries no CA hash, so the master cannot be verified: use the token as `bramble token list` prints it (B10<hash>::<secret>)".into(),
            ));
        };
        pinned_ca(server, hash)?
    } else {
        tracing::warn!(
            server,
            "joining over plain HTTP: the master is not verified and the token crosses the network in clear"
        );
        String::new()
    };
    let agent = http_agent(&ca_pem, Duration::from_secs(15)).map_err(JoinError::Refused)?;
    let body = serde_json::json!({"token": token, "nodeName": node_name, "facts": facts});
    let url = format!("{}/bramble/v1/join", server.trim_end_matches('/'));
    let resp = agent
        .post(&url)
        .header("Content-Type", "application/json")
        .send(serde_json::to_vec(&body).unwrap_or_default().as_slice())
        .map_err(|e| JoinError::Unreachable {
            server: server.into(),
            message: e.to_string(),
        })?;
    let code = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .read_to_vec()
        .map_err(|e| JoinError::Unreachable {
            server: server.into(),
            message: e.to_string(),
        })?;
    if code != 200 {
        let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("HTTP {code}"));
        return Err(JoinError::Refused(msg));
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Reply {
        node_name: String,
        node_token: String,
        mqtt_host: String,
        mqtt_port: u16,
        #[serde(default)]
        mqtt_tls: bool,
        #[serde(default)]
        mqtt_ca: Option<String>,
        wire_key: String,
    }
    let r: Reply = serde_json::from_slice(&bytes)
        .map_err(|e| JoinError::Refused(format!("unreadable answer: {e}")))?;
    Ok(Credentials {
        server: server.trim_end_matches('/').to_string(),
        node_name: r.node_name,
        node_token: r.node_token,
        mqtt_host: r.mqtt_host,
        mqtt_port: r.mqtt_port,
        ca_pem,
        mqtt_tls: r.mqtt_tls,
        mqtt_ca_pem: r.mqtt_ca.unwrap_or_default(),
        wire_key: r.wire_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_hosts() {
        assert_eq!(
            server_host("http://192.168.1.10:6443"),
            ("192.168.1.10".into(), 6443)
        );
        assert_eq!(server_host("http://master/"), ("master".into(), 80));
        assert_eq!(server_host("http://[::1]:6443"), ("::1".into(), 6443));
    }

    #[test]
    fn credentials_round_trip_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let c = Credentials {
            server: "http://m:6443".into(),
            node_name: "pi1".into(),
            node_token: "t".into(),
            mqtt_host: String::new(),
            mqtt_port: 1883,
            ca_pem: String::new(),
            mqtt_tls: false,
            mqtt_ca_pem: String::new(),
            wire_key: String::new(),
        };
        save(dir.path(), &c).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(c.clone()));
        let mode = std::fs::metadata(dir.path().join(CREDENTIALS_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(c.broker_host(), "m");
    }
}
