//! The master's store: one redb file, an in-memory copy that serves get/list/watch, and one
//! writer thread that commits concurrent writes in groups.
//!
//! Invariants:
//! - Every successful write gets the next global revision; an object's `resourceVersion` is
//!   the revision of its last write. The revision is persisted with the objects, in the same
//!   transaction, so it never goes backwards across restarts.
//! - A write is acknowledged only after its redb transaction has committed durably
//!   (`Durability::Immediate`, one fsync for the whole group).
//! - Only the writer thread changes the in-memory state; it publishes each change to
//!   watchers while holding the state's write lock, so a watcher that subscribes under the
//!   read lock sees every change after its starting revision exactly once.
//! - The change log for watch resume lives in memory and is bounded; a watch that asks for a
//!   revision older than the log answers "gone" and the client re-lists. It is not persisted:
//!   that would double the bytes written per object write on an SD card, and after a master
//!   restart every watcher re-lists anyway.

mod alloc;
pub mod batch;
mod ops;
pub mod sealed;
mod state;
mod watch;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use bramble_api::{Invalid, Kind, Object, Selector};
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use alloc::ServiceRanges;
pub use state::{Change, EventType};
pub use watch::{Watch, WatchFilter};

use state::State;

/// A stored JSON body in a buffer of its exact size (`to_vec` doubles as it grows: a 427-byte
/// pod sat in 512 bytes, plus a 24-byte header `Bytes` adds to a buffer that is not full).
pub(crate) fn exact(mut json: Vec<u8>) -> Bytes {
    json.shrink_to_fit();
    Bytes::from(json)
}

/// An object's labels, one allocation per distinct set.
pub type Labels = Arc<BTreeMap<String, String>>;

/// One stored object as served: its identity, labels and serialized JSON.
#[derive(Debug)]
pub struct Entry {
    pub kind: Kind,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    pub revision: u64,
    /// Shared by every object with the same labels (see [`state::LabelSets`]).
    pub labels: Labels,
    /// The object as JSON, exactly as served by the API.
    pub json: Bytes,
}

impl Entry {
    /// Decodes the stored JSON back into a typed object (no validation: it was validated
    /// before it was stored).
    pub fn object(&self) -> Result<Object, StoreError> {
        Object::from_json(self.kind, &self.json).map_err(|e| {
            StoreError::storage(
                format!("stored {} {:?} is unreadable", self.kind, self.name),
                e,
            )
        })
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{} {name:?} not found", kind.plural())]
    NotFound { kind: Kind, name: String },
    #[error("{} {name:?} already exists", kind.plural())]
    AlreadyExists { kind: Kind, name: String },
    #[error("Operation cannot be fulfilled on {} {name:?}: {reason}", kind.plural())]
    Conflict {
        kind: Kind,
        name: String,
        reason: String,
    },
    #[error("namespaces {0:?} not found")]
    NamespaceNotFound(String),
    #[error("{0}")]
    Invalid(Invalid),
    #[error("{0}")]
    Forbidden(String),
    #[error("too old resource version: {requested} (oldest available: {oldest})")]
    Gone { requested: u64, oldest: u64 },
    /// The database (or the thread that writes it) failed; `source` is its error, kept.
    #[error("storage error: {}", storage_text(context, source.as_deref()))]
    Storage {
        context: String,
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    #[error("the store is shutting down")]
    Closed,
}

/// `context: source`, either part left out when empty.
fn storage_text(context: &str, source: Option<&(dyn std::error::Error + Send + Sync)>) -> String {
    match (context, source) {
        (c, None) => c.to_string(),
        ("", Some(e)) => e.to_string(),
        (c, Some(e)) => format!("{c}: {e}"),
    }
}

impl StoreError {
    /// A storage failure with what was being done and the error that caused it.
    pub fn storage(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Storage {
            context: context.into(),
            source: Some(Arc::new(source)),
        }
    }
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::storage("", e)
    }
}

/// What a write did.
#[derive(Debug, Clone)]
pub enum Outcome {
    Created(Arc<Entry>),
    Updated(Arc<Entry>),
    /// An apply that matched the stored object: nothing was written.
    Unchanged(Arc<Entry>),
    /// Removed from the store; the entry is the last state, at the deletion's revision.
    Deleted(Arc<Entry>),
    /// Marked for graceful deletion (deletionTimestamp set); removed later.
    Terminating(Arc<Entry>),
}

impl Outcome {
    /// The entry the outcome is about.
    pub fn entry(&self) -> &Arc<Entry> {
        match self {
            Outcome::Created(e)
            | Outcome::Updated(e)
            | Outcome::Unchanged(e)
            | Outcome::Deleted(e)
            | Outcome::Terminating(e) => e,
        }
    }
}

/// Which part of an object an update replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// Everything but the status.
    Main,
    /// Only the status.
    Status,
}

/// A write request to the writer thread.
#[derive(Debug)]
pub enum Op {
    Create(Object),
    /// Replace an object; a non-empty resourceVersion in it must match the stored one.
    Update(Object, Subresource),
    /// Create, or update the user-owned parts (labels, annotations, spec) of, an object.
    Apply(Object),
    Delete(DeleteRequest),
    /// Assign a pending pod to a node (Kubernetes' `pods/binding`): a conflict if the pod is
    /// already bound, being deleted, or was replaced (another uid).
    Bind(Binding),
}

/// A pod's assignment to a node.
#[derive(Debug, Clone)]
pub struct Binding {
    pub namespace: String,
    pub name: String,
    /// The pod the scheduler decided for; empty: any.
    pub uid: String,
    pub node: String,
}

/// A deletion; `grace_seconds: Some(0)` removes a pod at once instead of gracefully.
#[derive(Debug, Clone)]
pub struct DeleteRequest {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub grace_seconds: Option<i64>,
    /// When set, the stored resourceVersion must match.
    pub resource_version: Option<u64>,
    /// `propagationPolicy: Orphan`: the objects the deleted one owns lose that owner
    /// reference in the same transaction, so no controller collects or replaces them.
    pub orphan: bool,
}

/// Tuning of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Changes kept in memory for watch resume.
    pub change_log: usize,
    /// Most requests committed in one transaction (a burst such as a scheduler's bindings
    /// commits in few transactions; 2,048 gave 15% more bindings/s than 512).
    pub max_batch: usize,
    /// Pending write requests before callers wait.
    pub queue: usize,
    /// Watch events buffered per watcher before it must catch up from the change log.
    pub watch_buffer: usize,
    /// Where Services' ClusterIPs and NodePorts come from.
    pub services: ServiceRanges,
    /// The key Secrets are sealed with in the file; None: stored as they are (tests).
    pub secrets: Option<Arc<sealed::SecretsKey>>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            change_log: 4096,
            max_batch: 2048,
            queue: 1024,
            watch_buffer: 1024,
            services: ServiceRanges::default(),
            secrets: None,
        }
    }
}

pub(crate) struct Shared {
    state: RwLock<State>,
    events: broadcast::Sender<Arc<Change>>,
}

type Write = (Op, oneshot::Sender<Result<Outcome, StoreError>>);

/// What the writer thread is asked to do.
// Writes are the traffic (moved, not copied); a rotation is rare: boxing every write would
// add an allocation to each for nothing.
#[allow(clippy::large_enum_variant)]
enum Request {
    Write(Write),
    /// Seal every Secret under a new key (after the writes queued before it).
    RotateSecretsKey(oneshot::Sender<Result<usize, StoreError>>),
}

/// A cheap, cloneable handle to the store.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
}

/// Joins the writer thread once every [`Store`] handle is dropped.
pub struct WriterHandle(std::thread::JoinHandle<()>);

impl WriterHandle {
    /// Waits for the writer to finish its last batch (after all handles are dropped).
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("store writer thread panicked");
        }
    }
}

impl Store {
    /// Opens (or creates) the store file and loads every object into memory.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<(Store, WriterHandle), StoreError> {
        let (db, state) = writer::open(path, opts.change_log, opts.secrets.as_deref())?;
        let (events, _) = broadcast::channel(opts.watch_buffer.max(16));
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            events,
        });
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let w = writer::Writer {
            db,
            shared: shared.clone(),
            rx,
            max_batch: opts.max_batch.max(1),
            ranges: opts.services,
            secrets: opts.secrets,
        };
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || w.run())
            .map_err(|e| StoreError::storage("cannot start the writer thread", e))?;
        Ok((Store { shared, tx }, WriterHandle(handle)))
    }

    /// Sends one write and waits until it is durable.
    pub async fn write(&self, op: Op) -> Result<Outcome, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Write((op, tx)))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Makes a new secrets key current and seals every Secret with it, then forgets the old
    /// keys; returns how many Secrets were re-sealed. An error when the store has no key.
    pub async fn rotate_secrets_key(&self) -> Result<usize, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::RotateSecretsKey(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Creates an object.
    pub async fn create(&self, obj: Object) -> Result<Outcome, StoreError> {
        self.write(Op::Create(obj)).await
    }

    /// The current entry of one object.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Entry>> {
        let ns = if kind.namespaced() { namespace } else { "" };
        self.read()
            .objects
            .get(&(kind, ns.to_string(), name.to_string()))
            .cloned()
    }

    /// The objects of a kind (in one namespace, or all) that match the selector, and the
    /// revision the list is consistent with.
    pub fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> (u64, Vec<Arc<Entry>>) {
        let st = self.read();
        let items = st
            .range(kind, namespace)
            .filter(|e| selector.matches(&e.labels))
            .cloned()
            .collect();
        (st.revision, items)
    }

    /// Starts a watch: from `from` (exclusive) if given, else with the current objects as
    /// ADDED events followed by every later change.
    pub fn watch(&self, filter: WatchFilter, from: Option<u64>) -> Result<Watch, StoreError> {
        watch::start(self.shared.clone(), filter, from)
    }

    /// The current global revision.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// Object counts per kind, for metrics.
    pub fn counts(&self) -> Vec<(Kind, usize)> {
        let st = self.read();
        Kind::ALL
            .iter()
            .map(|&k| (k, st.range(k, None).count()))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A poisoned lock means the writer panicked mid-update; the data it guards is still
        // the last consistent state (the writer mutates only after commit), so keep serving.
        self.shared.state.read().unwrap_or_else(|p| p.into_inner())
    }
}
