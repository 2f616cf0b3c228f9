//! The writer thread: takes a group of write requests, decides each against the current
//! state plus the group's earlier decisions, commits them in one durable redb transaction,
//! then publishes them to the in-memory state and to watchers, and answers the callers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bramble_api::Kind;
use bramble_api::meta::ObjectMeta;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::ops::{self, View};
use super::sealed::{self, SecretsKey};
use super::state::{Change, Key, LabelSets, State};
use super::{Entry, Outcome, Request, Shared, StoreError, Write};

/// Objects by `plural/namespace/name`, as JSON.
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// `revision`: the global revision of the last committed write.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// redb's page cache; the store keeps its own copy of every object, so a small one suffices.
const CACHE_BYTES: usize = 4 << 20;

pub(crate) fn key_string(key: &Key) -> String {
    format!("{}/{}/{}", key.0.plural(), key.1, key.2)
}

fn parse_key(s: &str) -> Option<Key> {
    let mut it = s.splitn(3, '/');
    let plural = it.next()?;
    let ns = it.next()?;
    let name = it.next()?;
    let kind = Kind::ALL.into_iter().find(|k| k.plural() == plural)?;
    Some((kind, ns.to_string(), name.to_string()))
}

#[derive(Deserialize)]
struct MetaOnly {
    #[serde(default)]
    metadata: ObjectMeta,
}

/// Builds the served entry of a stored object.
pub(crate) fn entry_from_json(
    key: &Key,
    json: Vec<u8>,
    labels: &mut LabelSets,
) -> Result<Entry, serde_json::Error> {
    let m: MetaOnly = serde_json::from_slice(&json)?;
    Ok(Entry {
        kind: key.0,
        namespace: key.1.clone(),
        name: key.2.clone(),
        revision: m.metadata.revision(),
        labels: labels.intern(m.metadata.labels),
        json: super::exact(json),
    })
}

/// Opens the database and loads every object.
pub(crate) fn open(
    path: &Path,
    log_limit: usize,
    secrets: Option<&SecretsKey>,
) -> Result<(Database, State), StoreError> {
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| StoreError::storage(format!("cannot open {}", path.display()), e))?;
    let txn = db.begin_write().map_err(redb::Error::from)?;
    {
        // Create the tables on first start so that reads below find them.
        txn.open_table(OBJECTS).map_err(redb::Error::from)?;
        txn.open_table(META).map_err(redb::Error::from)?;
    }
    txn.commit().map_err(redb::Error::from)?;
    let read = db.begin_read().map_err(redb::Error::from)?;
    let revision = read
        .open_table(META)
        .map_err(redb::Error::from)?
        .get("revision")
        .map_err(redb::Error::from)?
        .map(|g| g.value())
        .unwrap_or(0);
    let mut objects = BTreeMap::new();
    let mut label_sets = LabelSets::default();
    // Secrets stored in clear (before sealing existed) or under an older key.
    let mut reseal: Vec<Key> = Vec::new();
    let table = read.open_table(OBJECTS).map_err(redb::Error::from)?;
    for row in table.iter().map_err(redb::Error::from)? {
        let (k, v) = row.map_err(redb::Error::from)?;
        let Some(key) = parse_key(k.value()) else {
            tracing::warn!(
                key = k.value(),
                "skipping a stored object with a malformed key"
            );
            continue;
        };
        let mut value = v.value().to_vec();
        if key.0 == Kind::Secret {
            match (sealed::is_sealed(&value), secrets) {
                (true, Some(s)) => match s.open(k.value(), &value) {
                    Ok((plain, id)) => {
                        if id != s.current() {
                            reseal.push(key.clone());
                        }
                        value = plain;
                    }
                    Err(why) => {
                        tracing::error!(
                            key = k.value(),
                            why,
                            "skipping a Secret that cannot be opened with {}",
                            sealed::KEY_FILE
                        );
                        continue;
                    }
                },
                (true, None) => {
                    tracing::error!(key = k.value(), "skipping a sealed Secret: no secrets key");
                    continue;
                }
                (false, Some(_)) => reseal.push(key.clone()),
                (false, None) => {}
            }
        }
        match entry_from_json(&key, value, &mut label_sets) {
            Ok(e) => {
                objects.insert(key, Arc::new(e));
            }
            Err(err) => {
                tracing::warn!(key = k.value(), %err, "skipping a stored object that is not valid JSON")
            }
        }
    }
    drop(table);
    drop(read);
    if let Some(s) = secrets
        && !reseal.is_empty()
    {
        let entries: Vec<&Arc<Entry>> = reseal.iter().filter_map(|k| objects.get(k)).collect();
        write_sealed(&db, s, &entries)?;
        tracing::info!(
            secrets = entries.len(),
            "sealed Secrets stored in clear or under an older key"
        );
    }
    tracing::info!(objects = objects.len(), revision, path = %path.display(), "store opened");
    Ok((db, State::new(objects, label_sets, revision, log_limit)))
}

pub(crate) struct Writer {
    pub db: Database,
    pub shared: Arc<Shared>,
    pub rx: mpsc::Receiver<Request>,
    pub max_batch: usize,
    pub ranges: super::alloc::ServiceRanges,
    pub secrets: Option<Arc<SecretsKey>>,
}

/// Writes `entries` (Secrets) sealed under the current key, in one transaction.
fn write_sealed(
    db: &Database,
    key: &SecretsKey,
    entries: &[&Arc<Entry>],
) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(redb::Error::from)?;
    {
        let mut objects = txn.open_table(OBJECTS).map_err(redb::Error::from)?;
        for e in entries {
            let k = key_string(&(e.kind, e.namespace.clone(), e.name.clone()));
            let sealed = key.seal(&k, &e.json).map_err(|why| StoreError::Storage {
                context: why,
                source: None,
            })?;
            objects
                .insert(k.as_str(), &sealed[..])
                .map_err(redb::Error::from)?;
        }
    }
    txn.commit().map_err(redb::Error::from)?;
    Ok(())
}

impl Writer {
    pub fn run(mut self) {
        let mut next = self.rx.blocking_recv();
        while let Some(first) = next.take() {
            let mut batch: Vec<Write> = Vec::new();
            let mut pending = Some(first);
            while let Some(r) = pending.take() {
                match r {
                    Request::Write(w) => batch.push(w),
                    Request::RotateSecretsKey(reply) => {
                        // After the writes queued before it.
                        if !batch.is_empty() {
                            self.commit_batch(std::mem::take(&mut batch));
                        }
                        let _ = reply.send(self.rotate_secrets_key());
                        break;
                    }
                }
                if batch.len() < self.max_batch {
                    pending = self.rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_batch(batch);
            }
            next = self.rx.blocking_recv();
        }
        tracing::debug!("store writer stopped");
    }

    /// A new current key, every Secret sealed with it, then the old keys dropped (a crash
    /// before the end leaves rows under keys the file still holds).
    fn rotate_secrets_key(&self) -> Result<usize, StoreError> {
        let Some(key) = &self.secrets else {
            return Err(StoreError::Forbidden(
                "this store keeps no secrets key".into(),
            ));
        };
        let io = |e: std::io::Error| {
            StoreError::storage(format!("cannot write {}", sealed::KEY_FILE), e)
        };
        let id = key.rotate().map_err(io)?;
        let secrets: Vec<Arc<Entry>> = {
            let st = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
            st.range(Kind::Secret, None).cloned().collect()
        };
        let refs: Vec<&Arc<Entry>> = secrets.iter().collect();
        write_sealed(&self.db, key, &refs)?;
        key.prune().map_err(io)?;
        tracing::info!(key = id, secrets = secrets.len(), "rotated the secrets key");
        Ok(secrets.len())
    }

    fn commit_batch(&mut self, batch: Vec<Write>) {
        let now = bramble_api::time::now_secs();
        // Decide every request against the state plus the decisions before it.
        let (results, changes, revision) = {
            let state = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
            let mut view = View::new(&state, now, self.ranges);
            let mut results = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            for (op, reply) in batch {
                results.push(ops::decide(&mut view, op));
                replies.push(reply);
            }
            let (changes, revision) = view.finish();
            (
                results.into_iter().zip(replies).collect::<Vec<_>>(),
                changes,
                revision,
            )
        };
        let persisted = if changes.is_empty() {
            Ok(())
        } else {
            self.persist(&changes, revision)
        };
        match persisted {
            Ok(()) => {
                if !changes.is_empty() {
                    let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
                    state.apply(&changes, revision);
                    for c in &changes {
                        // No receivers is fine: nobody is watching.
                        let _ = self.shared.events.send(c.clone());
                    }
                }
                for (result, reply) in results {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed; the batch is rejected");
                for (result, reply) in results {
                    let _ = reply.send(match result {
                        Ok(Outcome::Unchanged(e)) => Ok(Outcome::Unchanged(e)),
                        Ok(_) => Err(e.clone()),
                        Err(other) => Err(other),
                    });
                }
            }
        }
    }

    fn persist(&self, changes: &[Arc<Change>], revision: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut objects = txn.open_table(OBJECTS).map_err(redb::Error::from)?;
            // Only the last change of each key in the batch needs writing.
            let mut last: BTreeMap<Key, &Change> = BTreeMap::new();
            for c in changes {
                let e = &c.entry;
                last.insert((e.kind, e.namespace.clone(), e.name.clone()), c);
            }
            for (key, c) in last {
                let k = key_string(&key);
                if c.type_ == super::EventType::Deleted {
                    objects.remove(k.as_str()).map_err(redb::Error::from)?;
                } else {
                    let sealed = match (&self.secrets, key.0) {
                        (Some(s), Kind::Secret) => Some(s.seal(&k, &c.entry.json).map_err(
                            |why| StoreError::Storage {
                                context: why,
                                source: None,
                            },
                        )?),
                        _ => None,
                    };
                    let value = sealed.as_deref().unwrap_or(&c.entry.json[..]);
                    objects
                        .insert(k.as_str(), value)
                        .map_err(redb::Error::from)?;
                }
            }
            let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
            meta.insert("revision", revision)
                .map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }
}
