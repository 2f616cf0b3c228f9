//! Secrets at rest: every Secret row of the store file is sealed with ChaCha20-Poly1305 under
//! a key from `DATA_DIR/secrets.key` (0600, made on first start, as k3s'
//! `--secrets-encryption`). The row's key is the associated data, so a sealed value cannot be
//! moved to another Secret's row. The key file keeps older keys so that rows sealed before a
//! rotation still open; a rotation re-seals every Secret under the new key and then drops
//! the keys no row uses.
//!
//! A stored value is `MAGIC || key id (4 bytes, big endian) || nonce (12) || ciphertext+tag`.
//! The in-memory copy (what the API serves to admins) stays plain, as the API server's cache.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// The file name of the key file in the data directory.
pub const KEY_FILE: &str = "secrets.key";

const MAGIC: &[u8] = b"bramble-sealed-1:";

#[derive(Clone, Serialize, Deserialize)]
struct KeyEntry {
    id: u32,
    /// 32 bytes, hex.
    key: String,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct KeyFile {
    /// The key new rows are sealed with.
    current: u32,
    keys: Vec<KeyEntry>,
}

/// The keys Secrets are sealed with.
pub struct SecretsKey {
    path: PathBuf,
    file: RwLock<KeyFile>,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

fn invalid(path: &Path, why: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}: {why}", path.display()),
    )
}

fn new_key() -> std::io::Result<String> {
    let mut k = [0u8; 32];
    SystemRandom::new()
        .fill(&mut k)
        .map_err(|_| std::io::Error::other("no randomness for a secrets key"))?;
    Ok(bramble_support::wire_auth::hex(&k))
}

fn cipher(hex: &str) -> Option<LessSafeKey> {
    let bytes = bramble_support::wire_auth::unhex(hex)?;
    UnboundKey::new(&CHACHA20_POLY1305, &bytes)
        .ok()
        .map(LessSafeKey::new)
}

/// Whether a stored value is sealed.
pub fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(MAGIC)
}

impl SecretsKey {
    /// Loads the key file, creating it (one key) when there is none.
    pub fn load_or_create(path: &Path) -> std::io::Result<SecretsKey> {
        let file = match std::fs::read(path) {
            Ok(b) => {
                let f: KeyFile = serde_json::from_slice(&b).map_err(|e| invalid(path, e))?;
                if !f.keys.iter().any(|k| k.id == f.current) {
                    return Err(invalid(path, "the current key is not in the file"));
                }
                if f.keys.iter().any(|k| cipher(&k.key).is_none()) {
                    return Err(invalid(path, "a key is not 32 bytes of hex"));
                }
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let f = KeyFile {
                    current: 1,
                    keys: vec![KeyEntry {
                        id: 1,
                        key: new_key()?,
                    }],
                };
                write(path, &f)?;
                f
            }
            Err(e) => return Err(e),
        };
        Ok(SecretsKey {
            path: path.to_path_buf(),
            file: RwLock::new(file),
        })
    }

    /// The id of the key new rows are sealed with.
    pub fn current(&self) -> u32 {
        self.file.read().unwrap_or_else(|p| p.into_inner()).current
    }

    /// Seals `plain` for the row `row`.
    pub fn seal(&self, row: &str, plain: &[u8]) -> Result<Vec<u8>, String> {
        let f = self.file.read().unwrap_or_else(|p| p.into_inner());
        let entry = f
            .keys
            .iter()
            .find(|k| k.id == f.current)
            .ok_or("no current secrets key")?;
        let key = cipher(&entry.key).ok_or("the secrets key is unreadable")?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| "no randomness for a nonce")?;
        let mut body = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(row.as_bytes()),
            &mut body,
        )
        .map_err(|_| "cannot seal a Secret")?;
        let mut out = Vec::with_capacity(MAGIC.len() + 4 + NONCE_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&entry.id.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a sealed value of row `row`; returns the key id it was sealed with.
    pub fn open(&self, row: &str, sealed: &[u8]) -> Result<(Vec<u8>, u32), String> {
        let rest = sealed.strip_prefix(MAGIC).ok_or("not a sealed value")?;
        if rest.len() < 4 + NONCE_LEN {
            return Err("a sealed value is truncated".into());
        }
        let (id, rest) = rest.split_at(4);
        let id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let f = self.file.read().unwrap_or_else(|p| p.into_inner());
        let entry = f
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| format!("sealed with key {id}, which {} does not hold", KEY_FILE))?;
        let key = cipher(&entry.key).ok_or("the secrets key is unreadable")?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce")?;
        let mut body = body.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(row.as_bytes()), &mut body)
            .map_err(|_| format!("cannot open: wrong key or altered bytes (key {id})"))?;
        Ok((plain.to_vec(), id))
    }

    /// Adds a new key and makes it current (written before any row uses it); returns its id.
    pub fn rotate(&self) -> std::io::Result<u32> {
        let mut f = self.file.write().unwrap_or_else(|p| p.into_inner());
        let mut next = f.clone();
        let id = next.keys.iter().map(|k| k.id).max().unwrap_or(0) + 1;
        next.keys.push(KeyEntry {
            id,
            key: new_key()?,
        });
        next.current = id;
        write(&self.path, &next)?;
        *f = next;
        Ok(id)
    }

    /// Drops every key but the current one (after every row was re-sealed with it).
    pub fn prune(&self) -> std::io::Result<()> {
        let mut f = self.file.write().unwrap_or_else(|p| p.into_inner());
        let mut next = f.clone();
        let current = next.current;
        next.keys.retain(|k| k.id == current);
        write(&self.path, &next)?;
        *f = next;
        Ok(())
    }
}

fn write(path: &Path, f: &KeyFile) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(f).map_err(|e| invalid(path, e))?;
    bramble_support::fs::write_atomic(path, &text, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_rows_open_only_in_their_own_row_and_survive_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let k = SecretsKey::load_or_create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let sealed = k.seal("secrets/default/db", b"hunter2").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            k.open("secrets/default/db", &sealed).unwrap(),
            (b"hunter2".to_vec(), 1)
        );
        assert!(k.open("secrets/default/other", &sealed).is_err());
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(k.open("secrets/default/db", &altered).is_err());
        // A rotation keeps the old key until pruned; the file is re-read the same.
        assert_eq!(k.rotate().unwrap(), 2);
        let k2 = SecretsKey::load_or_create(&path).unwrap();
        assert_eq!(k2.current(), 2);
        assert_eq!(k2.open("secrets/default/db", &sealed).unwrap().1, 1);
        k2.prune().unwrap();
        assert!(k2.open("secrets/default/db", &sealed).is_err());
    }
}
