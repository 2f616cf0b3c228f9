//! The agent's own redb file: its desired pods (as last received from the master, with the
//! revision), the ConfigMaps they read (never Secrets: those stay in memory) and its pod
//! records (container instances, restart counts, states). With it the agent keeps its pods
//! running while the master is away and brings them back after a reboot before it reaches
//! the master.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};

const DESIRED: TableDefinition<&str, &[u8]> = TableDefinition::new("desired");
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Pod uid → the ConfigMaps it reads (postcard), written with the pod.
const CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("config");

/// A desired pod as stored: its JSON and the ConfigMaps it reads (postcard-encoded
/// `Vec<ConfigData>`; empty: none).
pub struct DesiredRow {
    pub uid: String,
    pub pod_json: Vec<u8>,
    pub config: Vec<u8>,
}

/// Errors of the local store.
#[derive(Debug, thiserror::Error)]
pub enum LocalStoreError {
    #[error("local store {path}: {message}")]
    Db { path: String, message: String },
}

/// The agent's local store.
pub struct LocalStore {
    db: Database,
    path: String,
}

fn db_err(path: &str) -> impl Fn(redb::Error) -> LocalStoreError + '_ {
    move |e| LocalStoreError::Db {
        path: path.to_string(),
        message: e.to_string(),
    }
}

impl LocalStore {
    /// Opens or creates the file.
    pub fn open(path: &Path) -> Result<LocalStore, LocalStoreError> {
        let p = path.display().to_string();
        let db = Database::builder()
            .set_cache_size(1 << 20)
            .create(path)
            .map_err(|e| LocalStoreError::Db {
                path: p.clone(),
                message: e.to_string(),
            })?;
        let txn = db.begin_write().map_err(|e| db_err(&p)(e.into()))?;
        {
            txn.open_table(DESIRED).map_err(|e| db_err(&p)(e.into()))?;
            txn.open_table(RECORDS).map_err(|e| db_err(&p)(e.into()))?;
            txn.open_table(META).map_err(|e| db_err(&p)(e.into()))?;
            txn.open_table(CONFIG).map_err(|e| db_err(&p)(e.into()))?;
        }
        txn.commit().map_err(|e| db_err(&p)(e.into()))?;
        // Desired pods carry their env (and, later, what Secrets put there): owner only.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            LocalStoreError::Db {
                path: p.clone(),
                message: e.to_string(),
            }
        })?;
        Ok(LocalStore { db, path: p })
    }

    fn load<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<BTreeMap<String, T>, LocalStoreError> {
        let e = db_err(&self.path);
        let read = self.db.begin_read().map_err(|x| e(x.into()))?;
        let t = read.open_table(table).map_err(|x| e(x.into()))?;
        let mut out = BTreeMap::new();
        for row in t.iter().map_err(|x| e(x.into()))? {
            let (k, v) = row.map_err(|x| e(x.into()))?;
            match serde_json::from_slice(v.value()) {
                Ok(val) => {
                    out.insert(k.value().to_string(), val);
                }
                Err(err) => {
                    tracing::warn!(key = k.value(), %err, "skipping an unreadable local record")
                }
            }
        }
        Ok(out)
    }

    /// Every desired pod (uid → the pod's JSON) and the desired revision.
    pub fn desired(&self) -> Result<(BTreeMap<String, serde_json::Value>, u64), LocalStoreError> {
        let pods = self.load(DESIRED)?;
        let e = db_err(&self.path);
        let read = self.db.begin_read().map_err(|x| e(x.into()))?;
        let rev = read
            .open_table(META)
            .map_err(|x| e(x.into()))?
            .get("revision")
            .map_err(|x| e(x.into()))?
            .map(|g| g.value())
            .unwrap_or(0);
        Ok((pods, rev))
    }

    /// The ConfigMaps each desired pod reads, as written with it (uid → postcard bytes).
    pub fn config(&self) -> Result<BTreeMap<String, Vec<u8>>, LocalStoreError> {
        let e = db_err(&self.path);
        let read = self.db.begin_read().map_err(|x| e(x.into()))?;
        let t = read.open_table(CONFIG).map_err(|x| e(x.into()))?;
        let mut out = BTreeMap::new();
        for row in t.iter().map_err(|x| e(x.into()))? {
            let (k, v) = row.map_err(|x| e(x.into()))?;
            out.insert(k.value().to_string(), v.value().to_vec());
        }
        Ok(out)
    }

    /// Every pod record.
    pub fn records<T: DeserializeOwned>(&self) -> Result<BTreeMap<String, T>, LocalStoreError> {
        self.load(RECORDS)
    }

    /// Replaces or changes desired pods and the revision in one durable transaction.
    /// `replace_all` clears the table first (a snapshot).
    pub fn write_desired(
        &self,
        replace_all: bool,
        upserts: &[DesiredRow],
        removals: &[String],
        revision: u64,
    ) -> Result<(), LocalStoreError> {
        let e = db_err(&self.path);
        let txn = self.db.begin_write().map_err(|x| e(x.into()))?;
        {
            let mut t = txn.open_table(DESIRED).map_err(|x| e(x.into()))?;
            let mut c = txn.open_table(CONFIG).map_err(|x| e(x.into()))?;
            if replace_all {
                t.retain(|_, _| false).map_err(|x| e(x.into()))?;
                c.retain(|_, _| false).map_err(|x| e(x.into()))?;
            }
            for row in upserts {
                t.insert(row.uid.as_str(), row.pod_json.as_slice())
                    .map_err(|x| e(x.into()))?;
                if row.config.is_empty() {
                    c.remove(row.uid.as_str()).map_err(|x| e(x.into()))?;
                } else {
                    c.insert(row.uid.as_str(), row.config.as_slice())
                        .map_err(|x| e(x.into()))?;
                }
            }
            for k in removals {
                t.remove(k.as_str()).map_err(|x| e(x.into()))?;
                c.remove(k.as_str()).map_err(|x| e(x.into()))?;
            }
            let mut m = txn.open_table(META).map_err(|x| e(x.into()))?;
            m.insert("revision", revision).map_err(|x| e(x.into()))?;
        }
        txn.commit().map_err(|x| e(x.into()))
    }

    /// Writes changed records and deletes dropped ones in one transaction.
    pub fn write_records<T: Serialize>(
        &self,
        changed: &[(&str, &T)],
        dropped: &[String],
    ) -> Result<(), LocalStoreError> {
        if changed.is_empty() && dropped.is_empty() {
            return Ok(());
        }
        let e = db_err(&self.path);
        let txn = self.db.begin_write().map_err(|x| e(x.into()))?;
        {
            let mut t = txn.open_table(RECORDS).map_err(|x| e(x.into()))?;
            for (k, v) in changed {
                let bytes = serde_json::to_vec(v).unwrap_or_default();
                t.insert(*k, bytes.as_slice()).map_err(|x| e(x.into()))?;
            }
            for k in dropped {
                t.remove(k.as_str()).map_err(|x| e(x.into()))?;
            }
        }
        txn.commit().map_err(|x| e(x.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_and_records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.redb");
        {
            let s = LocalStore::open(&p).unwrap();
            let row = |uid: &str, json: &[u8], config: &[u8]| DesiredRow {
                uid: uid.into(),
                pod_json: json.to_vec(),
                config: config.to_vec(),
            };
            s.write_desired(
                true,
                &[row("u1", b"{\"a\":1}", b"cfg1"), row("u2", b"{}", b"cfg2")],
                &[],
                5,
            )
            .unwrap();
            s.write_desired(false, &[], &["u2".into()], 6).unwrap();
            s.write_records(&[("u1", &serde_json::json!({"x": 1}))], &[])
                .unwrap();
        }
        let s = LocalStore::open(&p).unwrap();
        let (d, rev) = s.desired().unwrap();
        assert_eq!(rev, 6);
        assert_eq!(d.keys().collect::<Vec<_>>(), vec!["u1"]);
        // A pod's ConfigMaps go and come with it.
        let c = s.config().unwrap();
        assert_eq!(c.keys().collect::<Vec<_>>(), vec!["u1"]);
        assert_eq!(c["u1"], b"cfg1");
        let r: BTreeMap<String, serde_json::Value> = s.records().unwrap();
        assert_eq!(r["u1"]["x"], 1);
        s.write_desired(true, &[], &[], 7).unwrap();
        assert!(s.desired().unwrap().0.is_empty());
        assert!(s.config().unwrap().is_empty());
    }
}
