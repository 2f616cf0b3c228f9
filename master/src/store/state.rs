//! The in-memory copy of the store, written only by the writer thread.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bramble_api::Kind;
use bytes::Bytes;

use super::{Entry, Labels};

/// `(kind, namespace, name)`; the namespace is empty for cluster-scoped kinds.
pub(crate) type Key = (Kind, String, String);

/// The type of a watch event, as Kubernetes names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change, as sent to watchers.
#[derive(Debug)]
pub struct Change {
    pub revision: u64,
    pub type_: EventType,
    pub entry: Arc<Entry>,
}

impl Change {
    pub fn new(type_: EventType, entry: Arc<Entry>) -> Self {
        Change {
            revision: entry.revision,
            type_,
            entry,
        }
    }

    /// The watch line `{"type":"ADDED","object":{...}}\n` in three pieces: the object's
    /// JSON is the stored one, shared rather than copied (the change log holds 4,096 changes;
    /// a copy in each took 4.8 MB of a master holding 10,000 pods).
    pub fn line(&self) -> [Bytes; 3] {
        let head: &'static [u8] = match self.type_ {
            EventType::Added => b"{\"type\":\"ADDED\",\"object\":",
            EventType::Modified => b"{\"type\":\"MODIFIED\",\"object\":",
            EventType::Deleted => b"{\"type\":\"DELETED\",\"object\":",
        };
        [
            Bytes::from_static(head),
            self.entry.json.clone(),
            Bytes::from_static(b"}\n"),
        ]
    }
}

/// Label sets shared between the objects that carry the same ones (the pods of a
/// ReplicaSet): one map per distinct set instead of one per object (a one-label map is a
/// 544-byte B-tree node; 6.2 MB of a master holding 10,000 pods).
#[derive(Default)]
pub(crate) struct LabelSets {
    sets: HashSet<Labels>,
    /// The count after the last sweep.
    swept: usize,
}

impl LabelSets {
    /// The shared copy of `labels`, if one is held.
    pub fn get(&self, labels: &BTreeMap<String, String>) -> Option<Labels> {
        self.sets.get(labels).cloned()
    }

    /// The shared copy of `labels`, made if none is held.
    pub fn intern(&mut self, labels: BTreeMap<String, String>) -> Labels {
        if let Some(l) = self.sets.get(&labels) {
            return l.clone();
        }
        let l = Arc::new(labels);
        self.sets.insert(l.clone());
        l
    }

    /// Holds a set made elsewhere (by a write's view), for the objects that come next.
    pub fn keep(&mut self, labels: &Labels) {
        if !self.sets.contains(labels) {
            self.sets.insert(labels.clone());
        }
    }

    /// Drops the sets no object uses any more, once the table has doubled since the last
    /// sweep (amortized: each sweep is paid for by as many new sets).
    pub fn sweep(&mut self) {
        if self.sets.len() > 2 * self.swept + 64 {
            self.sets.retain(|l| Arc::strong_count(l) > 1);
            self.swept = self.sets.len();
        }
    }
}

pub(crate) struct State {
    pub objects: BTreeMap<Key, Arc<Entry>>,
    pub labels: LabelSets,
    pub revision: u64,
    /// Recent changes, oldest first, for watch resume.
    pub log: VecDeque<Arc<Change>>,
    /// Every change at or below this revision has left the log.
    pub compacted: u64,
    pub log_limit: usize,
}

impl State {
    pub fn new(
        objects: BTreeMap<Key, Arc<Entry>>,
        labels: LabelSets,
        revision: u64,
        log_limit: usize,
    ) -> Self {
        State {
            objects,
            labels,
            revision,
            log: VecDeque::new(),
            compacted: revision,
            log_limit: log_limit.max(1),
        }
    }

    /// The entries of one kind, optionally in one namespace, in name order.
    pub fn range<'a>(
        &'a self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> impl Iterator<Item = &'a Arc<Entry>> + 'a {
        let (lo, hi) = match namespace.filter(|_| kind.namespaced()) {
            Some(ns) => (
                Bound::Included((kind, ns.to_string(), String::new())),
                Bound::Excluded((kind, format!("{ns}\0"), String::new())),
            ),
            None => (
                Bound::Included((kind, String::new(), String::new())),
                next_kind(kind),
            ),
        };
        self.objects.range((lo, hi)).map(|(_, v)| v)
    }

    /// Applies committed changes: the map, the revision and the log.
    pub fn apply(&mut self, changes: &[Arc<Change>], revision: u64) {
        for c in changes {
            let e = &c.entry;
            let key = (e.kind, e.namespace.clone(), e.name.clone());
            match c.type_ {
                EventType::Deleted => {
                    self.objects.remove(&key);
                }
                _ => {
                    self.labels.keep(&e.labels);
                    self.objects.insert(key, e.clone());
                }
            }
            self.log.push_back(c.clone());
        }
        self.labels.sweep();
        while self.log.len() > self.log_limit {
            if let Some(old) = self.log.pop_front() {
                self.compacted = old.revision;
            }
        }
        self.revision = revision;
    }
}

fn next_kind(kind: Kind) -> Bound<Key> {
    let pos = Kind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
    match Kind::ALL.get(pos + 1) {
        // Kind::ALL is in the enum's declaration order, which is its Ord.
        Some(&next) => Bound::Excluded((next, String::new(), String::new())),
        None => Bound::Unbounded,
    }
}
