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
    /// RFC 3339; None: never (the token made on first start, or `--ttl 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Joins left; None: any number. A token whose last use is spent is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses_left: Option<u32>,
    /// The node names it may join: one name, or a prefix ending in `*` (`rack1-*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<String>,
}

/// Whether `node` is one of the names `pattern` allows (a name, or a prefix ending in `*`).
pub fn node_matches(pattern: &str, node: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => node.starts_with(prefix),
        None => node == pattern,
    }
}

/// How long a join token made with `bramble token create` lasts unless told otherwise.
pub const DEFAULT_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// What a new join token allows.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    /// None: never expires.
    pub ttl: Option<std::time::Duration>,
    /// None: any number of joins.
    pub uses: Option<u32>,
    pub description: String,
    /// None: any node name.
    pub nodes: Option<String>,
}

/// Why a join token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the join token is not valid (deleted, used up, or not made by this master)")]
    Unknown,
    #[error("the join token expired at {0}; make a new one with `bramble token create`")]
    Expired(String),
    #[error("the join token is bound to node names {0:?}; this node's name is not one of them")]
    WrongNode(String),
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

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens.
        f.debug_struct("Enrollment")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
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
            // The first token does not expire, as k3s's server token does not: it is how
            // the first boards join, whenever that is.
            e.create_token(TokenSpec {
                description: "created on first start".into(),
                ..TokenSpec::default()
            })?;
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
    pub fn create_token(&self, spec: TokenSpec) -> Result<JoinToken, CredentialError> {
        let now = now();
        let t = JoinToken {
            token: new_token()?,
            created: bramble_api::time::format_rfc3339(now),
            description: spec.description,
            expires: spec.ttl.map(|ttl| {
                let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
                bramble_api::time::format_rfc3339(now.saturating_add(secs))
            }),
            uses_left: spec.uses,
            nodes: spec.nodes,
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

    /// Whether `token` would be accepted now (nothing is spent).
    pub fn check_token(&self, token: &str, node: &str, now: i64) -> Result<(), TokenRefusal> {
        let files = self.read();
        let t = files
            .tokens
            .iter()
            .find(|t| ct_eq(&t.token, token))
            .ok_or(TokenRefusal::Unknown)?;
        usable(t, node, now)
    }

    /// Checks `token` and spends one of its uses (deleting it when that was the last).
    pub fn spend_token(
        &self,
        token: &str,
        node: &str,
        now: i64,
    ) -> Result<Result<(), TokenRefusal>, CredentialError> {
        // Checked and spent under one write lock: two joins cannot both spend a last use.
        let mut files = self.write();
        let Some(i) = files.tokens.iter().position(|t| ct_eq(&t.token, token)) else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        if let Err(r) = usable(&files.tokens[i], node, now) {
            return Ok(Err(r));
        }
        match files.tokens[i].uses_left {
            None => return Ok(Ok(())),
            Some(n) if n <= 1 => {
                files.tokens.remove(i);
            }
            Some(n) => files.tokens[i].uses_left = Some(n - 1),
        }
        self.save_tokens(&files)?;
        Ok(Ok(()))
    }

    /// Deletes a join token; returns whether there was one.
    pub fn delete_token(&self, token: &str) -> Result<bool, CredentialError> {
        let mut files = self.write();
        let before = files.tokens.len();
        files.tokens.retain(|t| !ct_eq(&t.token, token));
        if files.tokens.len() == before {
            return Ok(false);
        }
        self.save_tokens(&files)?;
        Ok(true)
    }

    /// Whether `node` holds a credential (it has joined and was not deleted).
    pub fn has_node(&self, node: &str) -> bool {
        self.read().nodes.contains_key(node)
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

    /// `node`'s credential, if it holds one.
    pub fn token(&self, node: &str) -> Option<String> {
        self.read().nodes.get(node).cloned()
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

/// Whether a token is within its time (its uses are counted by [`Enrollment::spend_token`]).
fn usable(t: &JoinToken, node: &str, now: i64) -> Result<(), TokenRefusal> {
    if let Some(e) = &t.expires
        && bramble_api::time::parse_rfc3339(e).is_none_or(|at| at <= now)
    {
        return Err(TokenRefusal::Expired(e.clone()));
    }
    match &t.nodes {
        Some(p) if !node_matches(p, node) => Err(TokenRefusal::WrongNode(p.clone())),
        _ => Ok(()),
    }
}

fn ct_eq(a: &str, b: &str) -> bool {
    crate::credentials::constant_time_eq(a.as_bytes(), b.as_bytes())
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
    fn tokens_bound_to_node_names() {
        let dir = tempfile::tempdir().unwrap();
        let e = Enrollment::load(dir.path()).unwrap();
        let rack = e
            .create_token(TokenSpec {
                nodes: Some("rack1-*".into()),
                ..TokenSpec::default()
            })
            .unwrap();
        let one = e
            .create_token(TokenSpec {
                nodes: Some("pi7".into()),
                ..TokenSpec::default()
            })
            .unwrap();
        assert_eq!(e.check_token(&rack.token, "rack1-a", now()), Ok(()));
        assert_eq!(
            e.check_token(&rack.token, "rack2-a", now()),
            Err(TokenRefusal::WrongNode("rack1-*".into()))
        );
        assert_eq!(e.check_token(&one.token, "pi7", now()), Ok(()));
        assert!(e.check_token(&one.token, "pi70", now()).is_err());
        assert!(e.spend_token(&one.token, "pi8", now()).unwrap().is_err());
    }

    #[test]
    fn tokens_expire_and_run_out_of_uses() {
        let dir = tempfile::tempdir().unwrap();
        let e = Enrollment::load(dir.path()).unwrap();
        let t0 = now();
        let day = e
            .create_token(TokenSpec {
                ttl: Some(DEFAULT_TOKEN_TTL),
                ..TokenSpec::default()
            })
            .unwrap();
        assert_eq!(e.check_token(&day.token, "n", t0), Ok(()));
        let expiry = day.expires.clone().unwrap();
        assert_eq!(
            e.check_token(&day.token, "n", t0 + 24 * 3600 + 1),
            Err(TokenRefusal::Expired(expiry.clone()))
        );
        assert!(
            TokenRefusal::Expired(expiry.clone())
                .to_string()
                .contains(&expiry)
        );
        let twice = e
            .create_token(TokenSpec {
                uses: Some(2),
                ..TokenSpec::default()
            })
            .unwrap();
        assert_eq!(e.spend_token(&twice.token, "n", t0).unwrap(), Ok(()));
        // Persisted: a restart does not give the use back.
        let e = Enrollment::load(dir.path()).unwrap();
        assert_eq!(e.spend_token(&twice.token, "n", t0).unwrap(), Ok(()));
        assert_eq!(
            e.spend_token(&twice.token, "n", t0).unwrap(),
            Err(TokenRefusal::Unknown),
            "a used-up token is gone"
        );
        assert!(e.delete_token(&day.token).unwrap());
        assert_eq!(
            e.check_token(&day.token, "n", t0),
            Err(TokenRefusal::Unknown)
        );
        assert!(!e.delete_token(&day.token).unwrap());
    }

    #[test]
    fn first_start_creates_a_token_and_enrollment_persists() {
        let dir = tempfile::tempdir().unwrap();
        let e = Enrollment::load(dir.path()).unwrap();
        let first = e.tokens();
        assert_eq!(first.len(), 1);
        assert_eq!(e.check_token(&first[0].token, "n", now()), Ok(()));
        assert_eq!(
            e.check_token("nope", "n", now()),
            Err(TokenRefusal::Unknown)
        );
        assert_eq!(first[0].expires, None, "the first token does not expire");
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
