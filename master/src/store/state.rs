//! The in-memory copy of the store, written only by the writer thread.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bramble_api::Kind;
use bytes::Bytes;

use super::Entry;

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
    /// The watch line `{"type":"ADDED","object":{...}}\n`, serialized once for every watcher.
    pub line: Bytes,
}

impl Change {
    /// Builds a change and its watch line.
    pub fn new(type_: EventType, entry: Arc<Entry>) -> Self {
        let mut line = Vec::with_capacity(entry.json.len() + 32);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(type_.as_str().as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(&entry.json);
        line.extend_from_slice(b"}\n");
        Change {
            revision: entry.revision,
            type_,
            entry,
            line: line.into(),
        }
    }
}

pub(crate) struct State {
    pub objects: BTreeMap<Key, Arc<Entry>>,
    pub revision: u64,
    /// Recent changes, oldest first, for watch resume.
    pub log: VecDeque<Arc<Change>>,
    /// Every change at or below this revision has left the log.
    pub compacted: u64,
    pub log_limit: usize,
}

impl State {
    pub fn new(objects: BTreeMap<Key, Arc<Entry>>, revision: u64, log_limit: usize) -> Self {
        State {
            objects,
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
                    self.objects.insert(key, e.clone());
                }
            }
            self.log.push_back(c.clone());
        }
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
