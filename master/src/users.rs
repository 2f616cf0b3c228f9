//! Named API tokens for people and programs, each with a role: `admin` (everything) or
//! `reader` (GET, list, watch, metrics). Only the SHA-256 of a token is kept
//! (`DATA_DIR/user-tokens.json`, 0600): the token itself is shown once, when it is made.
//! A presented token is hashed and looked up, then its expiry checked; the last use is kept
//! in memory (shown by `bramble token list`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::credentials::{CredentialError, constant_time_eq, new_token, sha256_hex, write_private};

/// File of user tokens (hashes only).
pub const USER_TOKENS_FILE: &str = "user-tokens.json";
/// What a user token starts with, so that it is recognisable in a leak scan.
pub const PREFIX: &str = "bramble_";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Reader,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }
}

/// One user's token, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserToken {
    pub user: String,
    pub role: Role,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// What `bramble token list` shows of a user (never the hash).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    pub user: String,
    pub role: Role,
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// RFC 3339, since the master started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    tokens: Vec<UserToken>,
    /// sha256 → last use (unix seconds).
    last_used: BTreeMap<String, i64>,
}

/// The registry of user tokens.
#[derive(Debug)]
pub struct Users {
    path: PathBuf,
    state: RwLock<State>,
}

impl Users {
    /// Loads the file (none: no users).
    pub fn load(dir: &Path) -> Result<Users, CredentialError> {
        let path = dir.join(USER_TOKENS_FILE);
        let tokens = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|_| CredentialError::Malformed {
                path: path.display().to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(CredentialError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        Ok(Users {
            path,
            state: RwLock::new(State {
                tokens,
                last_used: BTreeMap::new(),
            }),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, s: &State) -> Result<(), CredentialError> {
        let json = serde_json::to_vec_pretty(&s.tokens).unwrap_or_default();
        write_private(&self.path, &json)
    }

    /// Makes a token for `user` (replacing the user's previous one) and returns it: the
    /// only time it is seen.
    pub fn create(
        &self,
        user: &str,
        role: Role,
        expires: Option<i64>,
        now: i64,
    ) -> Result<String, CredentialError> {
        let token = format!("{PREFIX}{}", new_token()?);
        let entry = UserToken {
            user: user.to_string(),
            role,
            sha256: sha256_hex(&token),
            created: bramble_api::time::format_rfc3339(now),
            expires: expires.map(bramble_api::time::format_rfc3339),
        };
        let mut s = self.write();
        s.tokens.retain(|t| t.user != user);
        s.tokens.push(entry);
        self.save(&s)?;
        Ok(token)
    }

    /// Revokes `user`'s token; returns whether there was one.
    pub fn delete(&self, user: &str) -> Result<bool, CredentialError> {
        let mut s = self.write();
        let before = s.tokens.len();
        s.tokens.retain(|t| t.user != user);
        if s.tokens.len() == before {
            return Ok(false);
        }
        self.save(&s)?;
        Ok(true)
    }

    /// The role of a presented token, if it is a live user token; records the use.
    pub fn authenticate(&self, token: &str, now: i64) -> Option<(String, Role)> {
        if !token.starts_with(PREFIX) {
            return None;
        }
        let hash = sha256_hex(token);
        let found = {
            let s = self.read();
            s.tokens
                .iter()
                .find(|t| constant_time_eq(t.sha256.as_bytes(), hash.as_bytes()))
                .filter(|t| {
                    t.expires
                        .as_deref()
                        .and_then(bramble_api::time::parse_rfc3339)
                        .is_none_or(|at| now < at)
                })
                .map(|t| (t.user.clone(), t.role))
        };
        if found.is_some() {
            self.write().last_used.insert(hash, now);
        }
        found
    }

    /// Every user, without hashes.
    pub fn list(&self) -> Vec<UserInfo> {
        let s = self.read();
        s.tokens
            .iter()
            .map(|t| UserInfo {
                user: t.user.clone(),
                role: t.role,
                created: t.created.clone(),
                expires: t.expires.clone(),
                last_used: s
                    .last_used
                    .get(&t.sha256)
                    .map(|at| bramble_api::time::format_rfc3339(*at)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_kept_hashed_expire_and_are_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let u = Users::load(dir.path()).unwrap();
        let now = 1_000_000;
        let ci = u.create("ci", Role::Reader, Some(now + 60), now).unwrap();
        let ops = u.create("ops", Role::Admin, None, now).unwrap();
        let file = std::fs::read_to_string(dir.path().join(USER_TOKENS_FILE)).unwrap();
        assert!(
            !file.contains(&ci) && !file.contains(&ops),
            "a token in clear: {file}"
        );
        // Kept across a restart.
        let u = Users::load(dir.path()).unwrap();
        assert_eq!(u.authenticate(&ci, now), Some(("ci".into(), Role::Reader)));
        assert_eq!(u.authenticate(&ops, now), Some(("ops".into(), Role::Admin)));
        assert_eq!(u.authenticate(&ci, now + 60), None, "expired");
        assert_eq!(u.authenticate("bramble_guess", now), None);
        assert_eq!(u.authenticate("", now), None);
        let listed = u.list();
        assert!(listed.iter().all(|i| i.last_used.is_some()));
        // A new token for a user replaces the old one; deleting revokes.
        let ci2 = u.create("ci", Role::Reader, None, now).unwrap();
        assert_eq!(u.authenticate(&ci, now), None);
        assert!(u.authenticate(&ci2, now).is_some());
        assert!(u.delete("ci").unwrap());
        assert_eq!(u.authenticate(&ci2, now), None);
        assert!(!u.delete("ci").unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(USER_TOKENS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
