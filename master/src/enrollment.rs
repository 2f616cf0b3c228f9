//! Join tokens and node credentials.
//!
//! An agent joins with a join token (created on first start; more with `bramble token
//! create`) and receives its own node token, which from then on is its MQTT password (with
//! its node name as user name) and its API credential. Both lists live in small JSON files
//! in the data dir (mode 0600), rewritten atomically on change: joins are rare, and the
//! broker's authentication checks them from memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::credentials::{CredentialError, new_token, write_private};

/// File of join tokens.
pub const JOIN_TOKENS_FILE: &str = "join-tokens.json";
/// Directory of node credentials, one file (mode 0600) per node: a join writes one small
/// file, however many nodes there are.
pub const NODE_CREDENTIALS_DIR: &str = "node-credentials";

/// One join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinToken {
    pub token: String,
    pub created: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Files {
    tokens: Vec<JoinToken>,
    nodes: BTreeMap<String, String>,
}

/// The registry of join tokens and node credentials.
pub struct Enrollment {
    dir: PathBuf,
    state: RwLock<Files>,
}

impl Enrollment {
    /// Loads both files, creating a first join token if there is none.
    pub fn load(dir: &Path) -> Result<Enrollment, CredentialError> {
        let read = |name: &str| -> Result<Option<String>, CredentialError> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(CredentialError::Io {
                    path: p.display().to_string(),
                    source,
                }),
            }
        };
        let malformed = |name: &str| CredentialError::Malformed {
            path: dir.join(name).display().to_string(),
        };
        let tokens: Vec<JoinToken> = match read(JOIN_TOKENS_FILE)? {
            Some(s) => serde_json::from_str(&s).map_err(|_| malformed(JOIN_TOKENS_FILE))?,
            None => Vec::new(),
        };
        let mut nodes: BTreeMap<String, String> = BTreeMap::new();
        let ndir = dir.join(NODE_CREDENTIALS_DIR);
        if let Ok(rd) = std::fs::read_dir(&ndir) {
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().to_string();
                if bramble_support::fs::is_temp(&name) {
                    continue;
                }
                let t = read(&format!("{NODE_CREDENTIALS_DIR}/{name}"))?.unwrap_or_default();
                let t = t.trim();
                if t.is_empty() {
                    return Err(malformed(&format!("{NODE_CREDENTIALS_DIR}/{name}")));
                }
                nodes.insert(name, t.to_string());
            }
        }
        let e = Enrollment {
            dir: dir.to_path_buf(),
            state: RwLock::new(Files { tokens, nodes }),
        };
        if e.read().tokens.is_empty() {
            e.create_token("created on first start")?;
        }
        Ok(e)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Files> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Files> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn save_tokens(&self, files: &Files) -> Result<(), CredentialError> {
        let tokens = serde_json::to_vec_pretty(&files.tokens).unwrap_or_default();
        write_private(&self.dir.join(JOIN_TOKENS_FILE), &tokens)
    }

    /// Creates and persists a new join token.
    pub fn create_token(&self, description: &str) -> Result<JoinToken, CredentialError> {
        let t = JoinToken {
            token: new_token()?,
            created: bramble_api::time::format_rfc3339(now()),
            description: description.to_string(),
        };
        let mut files = self.write();
        files.tokens.push(t.clone());
        self.save_tokens(&files)?;
        Ok(t)
    }

    /// Every join token.
    pub fn tokens(&self) -> Vec<JoinToken> {
        self.read().tokens.clone()
    }

    /// Whether `token` is a valid join token.
    pub fn is_join_token(&self, token: &str) -> bool {
        self.read().tokens.iter().any(|t| ct_eq(&t.token, token))
    }

    /// Issues (or re-issues) a node's credential and persists it.
    pub fn enroll(&self, node: &str) -> Result<String, CredentialError> {
        let token = new_token()?;
        let ndir = self.dir.join(NODE_CREDENTIALS_DIR);
        std::fs::create_dir_all(&ndir).map_err(|source| CredentialError::Io {
            path: ndir.display().to_string(),
            source,
        })?;
        // Node names are DNS subdomains (checked by the join): safe as file names.
        write_private(&ndir.join(node), format!("{token}\n").as_bytes())?;
        self.write().nodes.insert(node.to_string(), token.clone());
        Ok(token)
    }

    /// Revokes `node`'s credential (its file too): the broker refuses it from now on.
    /// Returns whether it had one.
    pub fn revoke(&self, node: &str) -> Result<bool, CredentialError> {
        if self.write().nodes.remove(node).is_none() {
            return Ok(false);
        }
        let ndir = self.dir.join(NODE_CREDENTIALS_DIR);
        let path = ndir.join(node);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CredentialError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        }
        // Durable: a revoked board must not come back after a power cut.
        bramble_support::fs::sync_dir(&ndir).map_err(|source| CredentialError::Io {
            path: ndir.display().to_string(),
            source,
        })?;
        Ok(true)
    }

    /// The nodes that hold credentials.
    pub fn nodes(&self) -> Vec<String> {
        self.read().nodes.keys().cloned().collect()
    }

    /// Whether `token` is `node`'s credential.
    pub fn is_node(&self, node: &str, token: &str) -> bool {
        self.read().nodes.get(node).is_some_and(|t| ct_eq(t, token))
    }

    /// The node whose credential `token` is, if any.
    pub fn node_of_token(&self, token: &str) -> Option<String> {
        self.read()
            .nodes
            .iter()
            .find(|(_, t)| ct_eq(t, token))
            .map(|(n, _)| n.clone())
    }
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn now() -> i64 {
    bramble_api::time::now_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_valid_node_name_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let e = Enrollment::load(dir.path()).unwrap();
        // Names with dots: the temporary of "pi.lab" once was "pi.tmp", and a node really
        // called "pi.tmp" was skipped as a temporary when the master started.
        let names = ["pi.tmp", "pi.lab", "pi"];
        let creds: Vec<String> = names.iter().map(|n| e.enroll(n).unwrap()).collect();
        let again = Enrollment::load(dir.path()).unwrap();
        for (n, c) in names.iter().zip(&creds) {
            assert!(again.is_node(n, c), "{n} lost its credential");
        }
        let files = std::fs::read_dir(dir.path().join(NODE_CREDENTIALS_DIR))
            .unwrap()
            .count();
        assert_eq!(files, names.len(), "no temporary left behind");
    }

    #[test]
    fn first_start_creates_a_token_and_enrollment_persists() {
        let dir = tempfile::tempdir().unwrap();
        let e = Enrollment::load(dir.path()).unwrap();
        let first = e.tokens();
        assert_eq!(first.len(), 1);
        assert!(e.is_join_token(&first[0].token));
        assert!(!e.is_join_token("nope"));
        let cred = e.enroll("pi1").unwrap();
        assert!(e.is_node("pi1", &cred));
        assert!(!e.is_node("pi2", &cred));
        let again = Enrollment::load(dir.path()).unwrap();
        assert_eq!(again.tokens(), first);
        assert_eq!(again.node_of_token(&cred).as_deref(), Some("pi1"));
        // Re-joining replaces the old credential.
        let new = again.enroll("pi1").unwrap();
        assert!(!again.is_node("pi1", &cred) && again.is_node("pi1", &new));
    }
}
