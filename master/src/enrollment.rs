//! Join tokens and node credentials.
//!
//! An agent joins with a join token (created on first start; more with `bramble token
//! create`) and receives its own node token, which from then on is its MQTT password (with
//! its node name as user name) and its API credential. Both lists live in small files in
//! the data dir (mode 0600), rewritten atomically on change: joins are rare, and the
//! broker's authentication checks them from memory.
//!
//! Neither holds a token: a join token is kept as its ID and the SHA-256 of its text, a
//! node's credential as the SHA-256 of its token and the wire secret derived from it
//! ([`NodeSecret`]), so a copy of the data dir lets no one join, connect as a node or read
//! its blobs. The first join token is also written, whole, to `join-token` (0600): the
//! operator's copy, as k3s's `node-token`, which may be moved away.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use bramble_support::wire_auth::NodeSecret;

use crate::credentials::{CredentialError, new_token, sha256, sha256_hex, write_private};

/// File of join tokens.
pub const JOIN_TOKENS_FILE: &str = "join-tokens.json";
/// The first join token, whole (pinned to the CA): the operator's copy.
pub const FIRST_JOIN_TOKEN_FILE: &str = "join-token";
/// Directory of node credentials, one file (mode 0600) per node: a join writes one small
/// file, however many nodes there are.
pub const NODE_CREDENTIALS_DIR: &str = "node-credentials";

/// One join token, as the master keeps it: no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinToken {
    /// What lists and deletes name it by: the part of its secret before the dot.
    #[serde(default)]
    pub id: String,
    /// SHA-256 of the secret, hex (kept on disk, never sent by the API).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    /// The secret of a token written before tokens were kept hashed; made into `hash` at
    /// load and never written again.
    #[serde(default, skip_serializing)]
    token: Option<String>,
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

/// A new join token and its secret, which is shown once.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub token: JoinToken,
    /// `ID.SECRET`.
    pub secret: String,
}

/// A node's credential as the master keeps it.
#[derive(Clone)]
struct NodeCredential {
    /// SHA-256 of the node's token: what CONNECT and blob reads are checked against.
    hash: [u8; 32],
    /// What its wire messages are tagged and encrypted with.
    secret: NodeSecret,
}

impl NodeCredential {
    fn of(token: &str) -> NodeCredential {
        NodeCredential {
            hash: sha256(token),
            secret: NodeSecret::from_token(token),
        }
    }

    /// The file's text: `v3 HASH SECRET`.
    fn render(&self) -> String {
        format!(
            "v3 {} {}\n",
            bramble_support::wire_auth::hex(&self.hash),
            self.secret.to_hex()
        )
    }

    /// A credential file's text; a bare token (files written before credentials were kept
    /// hashed) is hashed here.
    fn parse(text: &str) -> Option<(NodeCredential, bool)> {
        let text = text.trim();
        let mut words = text.split(' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("v3"), Some(h), Some(s), None) => {
                let hash = bramble_support::wire_auth::unhex(h)?.try_into().ok()?;
                let secret = NodeSecret::from_hex(s)?;
                Some((NodeCredential { hash, secret }, false))
            }
            (Some(t), None, None, None) if !t.is_empty() => Some((NodeCredential::of(t), true)),
            _ => None,
        }
    }
}

/// A join token's ID: the part of its secret before the dot (tokens made before IDs: the
/// first six characters, as kubeadm lists them).
fn token_id(secret: &str) -> String {
    match secret.split_once('.') {
        Some((id, _)) => id.to_string(),
        None => secret.chars().take(6).collect(),
    }
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

#[derive(Default)]
struct Files {
    tokens: Vec<JoinToken>,
    nodes: BTreeMap<String, NodeCredential>,
    /// Nodes an admin let a join token take over once (`bramble node approve`), until when
    /// (kept in memory: a restart withdraws them).
    approvals: BTreeMap<String, i64>,
}

/// How long `bramble node approve` lets a join take a node's name over.
pub const APPROVAL_TTL_SECS: i64 = 3600;

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
    /// Loads both files, creating a first join token if there is none (written whole, with
    /// `ca_hash` pinned when there is a CA, to [`FIRST_JOIN_TOKEN_FILE`]). Files written
    /// before tokens were kept hashed are hashed and rewritten.
    pub fn load(dir: &Path, ca_hash: Option<&str>) -> Result<Enrollment, CredentialError> {
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
        let mut tokens: Vec<JoinToken> = match read(JOIN_TOKENS_FILE)? {
            Some(s) => serde_json::from_str(&s).map_err(|_| malformed(JOIN_TOKENS_FILE))?,
            None => Vec::new(),
        };
        let mut rehash = false;
        for t in &mut tokens {
            if let Some(secret) = t.token.take() {
                t.id = token_id(&secret);
                t.hash = sha256_hex(&secret);
                rehash = true;
            }
            if t.hash.len() != 64 {
                return Err(malformed(JOIN_TOKENS_FILE));
            }
        }
        let mut nodes = BTreeMap::new();
        let mut old_nodes = Vec::new();
        let ndir = dir.join(NODE_CREDENTIALS_DIR);
        if let Ok(rd) = std::fs::read_dir(&ndir) {
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().to_string();
                if bramble_support::fs::is_temp(&name) {
                    continue;
                }
                let file = format!("{NODE_CREDENTIALS_DIR}/{name}");
                let text = read(&file)?.unwrap_or_default();
                let (cred, old) = NodeCredential::parse(&text).ok_or_else(|| malformed(&file))?;
                if old {
                    old_nodes.push(name.clone());
                }
                nodes.insert(name, cred);
            }
        }
        let e = Enrollment {
            dir: dir.to_path_buf(),
            state: RwLock::new(Files {
                tokens,
                nodes,
                approvals: BTreeMap::new(),
            }),
        };
        if rehash {
            e.save_tokens(&e.read())?;
        }
        for n in old_nodes {
            if let Some(c) = e.read().nodes.get(&n) {
                write_private(&ndir.join(&n), c.render().as_bytes())?;
            }
        }
        if e.read().tokens.is_empty() {
            // The first token does not expire, as k3s's server token does not: it is how
            // the first boards join, whenever that is.
            let first = e.create_token(TokenSpec {
                description: "created on first start".into(),
                ..TokenSpec::default()
            })?;
            let text = bramble_api::join::JoinToken {
                ca_hash: ca_hash.map(str::to_string),
                secret: first.secret,
            }
            .render();
            write_private(
                &dir.join(FIRST_JOIN_TOKEN_FILE),
                format!("{text}\n").as_bytes(),
            )?;
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

    /// Creates and persists a new join token; its secret is in the answer only.
    pub fn create_token(&self, spec: TokenSpec) -> Result<NewToken, CredentialError> {
        let now = now();
        let id = new_token()?.chars().take(8).collect::<String>();
        let secret = format!("{id}.{}", new_token()?);
        let t = JoinToken {
            id,
            hash: sha256_hex(&secret),
            token: None,
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
        Ok(NewToken { token: t, secret })
    }

    /// Every join token (without secrets).
    pub fn tokens(&self) -> Vec<JoinToken> {
        self.read().tokens.clone()
    }

    fn find(files: &Files, secret: &str) -> Option<usize> {
        let h = sha256_hex(secret);
        files.tokens.iter().position(|t| ct_eq(&t.hash, &h))
    }

    /// Whether `token` would be accepted now (nothing is spent).
    pub fn check_token(&self, token: &str, node: &str, now: i64) -> Result<(), TokenRefusal> {
        let files = self.read();
        let i = Self::find(&files, token).ok_or(TokenRefusal::Unknown)?;
        usable(&files.tokens[i], node, now)
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
        let Some(i) = Self::find(&files, token) else {
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

    /// Deletes a join token named by its secret or its ID; returns whether there was one.
    pub fn delete_token(&self, token: &str) -> Result<bool, CredentialError> {
        let mut files = self.write();
        let before = files.tokens.len();
        let h = sha256_hex(token);
        files
            .tokens
            .retain(|t| !(ct_eq(&t.hash, &h) || (t.id.len() >= 6 && t.id == token)));
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

    /// Issues (or re-issues) a node's credential and persists it (hashed); returns the token,
    /// which only the node keeps.
    pub fn enroll(&self, node: &str) -> Result<String, CredentialError> {
        let token = new_token()?;
        let cred = NodeCredential::of(&token);
        let ndir = self.dir.join(NODE_CREDENTIALS_DIR);
        std::fs::create_dir_all(&ndir).map_err(|source| CredentialError::Io {
            path: ndir.display().to_string(),
            source,
        })?;
        // Node names are DNS subdomains (checked by the join): safe as file names.
        write_private(&ndir.join(node), cred.render().as_bytes())?;
        self.write().nodes.insert(node.to_string(), cred);
        Ok(token)
    }

    /// Revokes `node`'s credential (its file too): the broker refuses it from now on.
    /// Returns whether it had one.
    pub fn revoke(&self, node: &str) -> Result<bool, CredentialError> {
        let mut files = self.write();
        files.approvals.remove(node);
        if files.nodes.remove(node).is_none() {
            return Ok(false);
        }
        drop(files);
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

    /// Lets one join take over `node`, which holds a credential, until `now` +
    /// [`APPROVAL_TTL_SECS`]; returns that time, or None when the node holds no credential
    /// (a join token joins it without approval).
    pub fn approve(&self, node: &str, now: i64) -> Option<i64> {
        let mut files = self.write();
        if !files.nodes.contains_key(node) {
            return None;
        }
        let until = now.saturating_add(APPROVAL_TTL_SECS);
        files.approvals.insert(node.to_string(), until);
        Some(until)
    }

    /// Whether an admin approved a join taking over `node` (nothing is spent).
    pub fn approved(&self, node: &str, now: i64) -> bool {
        self.read().approvals.get(node).is_some_and(|&t| t > now)
    }

    /// Spends `node`'s approval (the join it allowed happened).
    pub fn consume_approval(&self, node: &str) {
        self.write().approvals.remove(node);
    }

    /// `node`'s wire secret, if it holds a credential.
    pub fn secret(&self, node: &str) -> Option<NodeSecret> {
        self.read().nodes.get(node).map(|c| c.secret.clone())
    }

    /// The nodes that hold credentials.
    pub fn nodes(&self) -> Vec<String> {
        self.read().nodes.keys().cloned().collect()
    }

    /// Whether `token` is `node`'s credential.
    pub fn is_node(&self, node: &str, token: &str) -> bool {
        let h = sha256(token);
        self.read()
            .nodes
            .get(node)
            .is_some_and(|c| crate::credentials::constant_time_eq(&c.hash, &h))
    }

    /// The node whose credential `token` is, if any.
    pub fn node_of_token(&self, token: &str) -> Option<String> {
        let h = sha256(token);
        self.read()
            .nodes
            .iter()
            .find(|(_, c)| crate::credentials::constant_time_eq(&c.hash, &h))
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
        let e = Enrollment::load(dir.path(), None).unwrap();
        // Names with dots: the temporary of "pi.lab" once was "pi.tmp", and a node really
        // called "pi.tmp" was skipped as a temporary when the master started.
        let names = ["pi.tmp", "pi.lab", "pi"];
        let creds: Vec<String> = names.iter().map(|n| e.enroll(n).unwrap()).collect();
        let again = Enrollment::load(dir.path(), None).unwrap();
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
        let e = Enrollment::load(dir.path(), None).unwrap();
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
        assert_eq!(e.check_token(&rack.secret, "rack1-a", now()), Ok(()));
        assert_eq!(
            e.check_token(&rack.secret, "rack2-a", now()),
            Err(TokenRefusal::WrongNode("rack1-*".into()))
        );
        assert_eq!(e.check_token(&one.secret, "pi7", now()), Ok(()));
        assert!(e.check_token(&one.secret, "pi70", now()).is_err());
        assert!(e.spend_token(&one.secret, "pi8", now()).unwrap().is_err());
    }

    #[test]
    fn tokens_expire_and_run_out_of_uses() {
        let dir = tempfile::tempdir().unwrap();
        let e = Enrollment::load(dir.path(), None).unwrap();
        let t0 = now();
        let day = e
            .create_token(TokenSpec {
                ttl: Some(DEFAULT_TOKEN_TTL),
                ..TokenSpec::default()
            })
            .unwrap();
        assert_eq!(e.check_token(&day.secret, "n", t0), Ok(()));
        let expiry = day.token.expires.clone().unwrap();
        assert_eq!(
            e.check_token(&day.secret, "n", t0 + 24 * 3600 + 1),
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
        assert_eq!(e.spend_token(&twice.secret, "n", t0).unwrap(), Ok(()));
        // Persisted: a restart does not give the use back.
        let e = Enrollment::load(dir.path(), None).unwrap();
        assert_eq!(e.spend_token(&twice.secret, "n", t0).unwrap(), Ok(()));
        assert_eq!(
            e.spend_token(&twice.secret, "n", t0).unwrap(),
            Err(TokenRefusal::Unknown),
            "a used-up token is gone"
        );
        assert!(e.delete_token(&day.secret).unwrap());
        assert_eq!(
            e.check_token(&day.secret, "n", t0),
            Err(TokenRefusal::Unknown)
        );
        assert!(!e.delete_token(&day.secret).unwrap());
    }

    #[test]
    fn first_start_creates_a_token_and_enrollment_persists() {
        let dir = tempfile::tempdir().unwrap();
        let ca = "ab".repeat(32);
        let e = Enrollment::load(dir.path(), Some(&ca)).unwrap();
        let first = e.tokens();
        assert_eq!(first.len(), 1);
        // The operator's copy, pinned to the CA; the registry holds its hash only.
        let file = std::fs::read_to_string(dir.path().join(FIRST_JOIN_TOKEN_FILE)).unwrap();
        let parsed = bramble_api::join::JoinToken::parse(&file).unwrap();
        assert_eq!(parsed.ca_hash.as_deref(), Some(ca.as_str()));
        assert_eq!(e.check_token(&parsed.secret, "n", now()), Ok(()));
        assert!(parsed.secret.starts_with(&format!("{}.", first[0].id)));
        let registry = std::fs::read_to_string(dir.path().join(JOIN_TOKENS_FILE)).unwrap();
        assert!(!registry.contains(&parsed.secret), "{registry}");
        assert_eq!(
            e.check_token("nope", "n", now()),
            Err(TokenRefusal::Unknown)
        );
        assert_eq!(first[0].expires, None, "the first token does not expire");
        let cred = e.enroll("pi1").unwrap();
        assert!(e.is_node("pi1", &cred));
        assert!(!e.is_node("pi2", &cred));
        let on_disk =
            std::fs::read_to_string(dir.path().join(NODE_CREDENTIALS_DIR).join("pi1")).unwrap();
        assert!(
            !on_disk.contains(&cred),
            "the node's token is on disk: {on_disk}"
        );
        let again = Enrollment::load(dir.path(), Some(&ca)).unwrap();
        assert_eq!(again.tokens(), first);
        assert_eq!(again.node_of_token(&cred).as_deref(), Some("pi1"));
        assert_eq!(again.secret("pi1"), Some(NodeSecret::from_token(&cred)));
        // Re-joining replaces the old credential.
        let new = again.enroll("pi1").unwrap();
        assert!(!again.is_node("pi1", &cred) && again.is_node("pi1", &new));
        // Deleting by ID, as `bramble token list` shows it.
        assert!(again.delete_token(&first[0].id).unwrap());
        assert!(again.tokens().is_empty());
    }

    #[test]
    fn approvals_are_for_joined_nodes_expire_and_are_spent() {
        let dir = tempfile::tempdir().unwrap();
        let e = Enrollment::load(dir.path(), None).unwrap();
        let t0 = now();
        assert_eq!(e.approve("pi1", t0), None, "not joined: nothing to approve");
        e.enroll("pi1").unwrap();
        assert_eq!(e.approve("pi1", t0), Some(t0 + APPROVAL_TTL_SECS));
        assert!(e.approved("pi1", t0) && !e.approved("pi2", t0));
        assert!(!e.approved("pi1", t0 + APPROVAL_TTL_SECS), "expired");
        e.consume_approval("pi1");
        assert!(!e.approved("pi1", t0), "spent");
        e.approve("pi1", t0);
        e.revoke("pi1").unwrap();
        e.enroll("pi1").unwrap();
        assert!(!e.approved("pi1", t0), "a revocation withdraws it");
    }

    #[test]
    fn tokens_kept_in_clear_by_an_older_master_are_hashed_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let join = "0123456789abcdef0123456789abcdef";
        let node = "fedcba9876543210fedcba9876543210";
        std::fs::write(
            dir.path().join(JOIN_TOKENS_FILE),
            format!(r#"[{{"token":"{join}","created":"2026-01-01T00:00:00Z"}}]"#),
        )
        .unwrap();
        let ndir = dir.path().join(NODE_CREDENTIALS_DIR);
        std::fs::create_dir_all(&ndir).unwrap();
        std::fs::write(ndir.join("pi1"), format!("{node}\n")).unwrap();
        let e = Enrollment::load(dir.path(), None).unwrap();
        assert_eq!(e.check_token(join, "n", now()), Ok(()));
        assert_eq!(e.tokens()[0].id, "012345");
        assert!(e.is_node("pi1", node));
        assert!(!dir.path().join(FIRST_JOIN_TOKEN_FILE).exists());
        for f in [dir.path().join(JOIN_TOKENS_FILE), ndir.join("pi1")] {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(!text.contains(join) && !text.contains(node), "{text}");
        }
        let again = Enrollment::load(dir.path(), None).unwrap();
        assert!(again.is_node("pi1", node));
        assert_eq!(again.check_token(join, "n", now()), Ok(()));
        // A damaged file is an error that names it, not a silent loss.
        std::fs::write(ndir.join("pi1"), "v3 zz zz\n").unwrap();
        let err = Enrollment::load(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("pi1"), "{err}");
    }
}
