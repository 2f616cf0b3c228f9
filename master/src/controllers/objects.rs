//! What the workload controllers do alike with the store: list a namespace's objects of a
//! kind (typed), tell which an owner controls, find the children of owners that are gone,
//! and delete one (one already gone is not an error).

use std::collections::HashMap;

use bramble_api::meta::{ObjectMeta, OwnerReference};
use bramble_api::pod::Pod;
use bramble_api::{Kind, Object, Selector};

use crate::store::{DeleteRequest, Op, Store, StoreError};

/// The objects of `kind` in `ns` that `pick` keeps (typically: the ones of that variant).
pub fn list_in<T>(
    store: &Store,
    kind: Kind,
    ns: &str,
    pick: impl Fn(Object) -> Option<T>,
) -> Vec<T> {
    let (_, entries) = store.list(kind, Some(ns), &Selector::everything());
    entries
        .iter()
        .filter_map(|e| e.object().ok())
        .filter_map(pick)
        .collect()
}

/// Every pod of `ns`.
pub fn pods_in(store: &Store, ns: &str) -> Vec<Pod> {
    list_in(store, Kind::Pod, ns, |o| match o {
        Object::Pod(p) => Some(p),
        _ => None,
    })
}

/// The pods of `ns` that `owner` (by uid) controls, among those its selector matches: the
/// store filters by labels before anything is decoded, so a reconcile costs its own pods,
/// not the namespace's (a selector that cannot be read falls back to every pod).
pub fn pods_of(
    store: &Store,
    ns: &str,
    selector: &bramble_api::meta::LabelSelector,
    owner: &str,
) -> Vec<Pod> {
    let sel =
        Selector::from_label_selector(selector, "").unwrap_or_else(|_| Selector::everything());
    let (_, entries) = store.list(Kind::Pod, Some(ns), &sel);
    entries
        .iter()
        .filter_map(|e| match e.object() {
            Ok(Object::Pod(p)) if controlled_by(&p.metadata, owner) => Some(p),
            _ => None,
        })
        .collect()
}

/// The object's controlling owner.
pub fn controller_of(m: &ObjectMeta) -> Option<&OwnerReference> {
    m.owner_references
        .iter()
        .find(|o| o.controller == Some(true))
}

/// Whether the owner of `uid` controls the object.
pub fn controlled_by(m: &ObjectMeta, uid: &str) -> bool {
    controller_of(m).is_some_and(|o| o.uid == uid)
}

/// `(namespace, owner uid)` of every object of `child` whose owner of kind `owner` is not
/// among `known` (deleted while the master was down): for the controller's `Owned` keys.
pub fn orphaned(
    store: &Store,
    child: Kind,
    owner: &str,
    known: &HashMap<String, (String, String)>,
) -> Vec<(String, String)> {
    let (_, entries) = store.list(child, None, &Selector::everything());
    let mut out = Vec::new();
    for e in entries {
        let Ok(obj) = e.object() else { continue };
        let m = obj.meta();
        for o in &m.owner_references {
            if o.kind == owner && !known.contains_key(&o.uid) {
                out.push((m.namespace.clone(), o.uid.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Deletes an object (a pod gracefully); one already gone is not an error.
pub async fn delete(store: &Store, kind: Kind, ns: &str, name: &str) -> Result<(), StoreError> {
    let req = DeleteRequest {
        kind,
        namespace: ns.into(),
        name: name.into(),
        grace_seconds: None,
        resource_version: None,
        orphan: false,
    };
    match store.write(Op::Delete(req)).await {
        Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The key of a controller of owners (DaemonSets, Jobs, ReplicaSets, CronJobs): an owner to
/// reconcile, or the children of an owner that is gone, to collect.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum OwnerKey {
    Owner { namespace: String, name: String },
    Owned { namespace: String, uid: String },
}

/// The owners a controller knows, by uid, to route its children's changes to them.
#[derive(Debug, Default)]
pub struct Owners {
    by_uid: HashMap<String, (String, String)>,
}

impl Owners {
    /// After a (re)list of the `owner` kind: every owner, and the children of `child` kind
    /// whose owner is gone (deleted while the master was down).
    pub fn resync(&mut self, store: &Store, owner: Kind, child: Kind) -> Vec<OwnerKey> {
        self.by_uid.clear();
        let (_, list) = store.list(owner, None, &Selector::everything());
        for e in &list {
            if let Ok(obj) = e.object() {
                let m = obj.meta();
                self.by_uid
                    .insert(m.uid.clone(), (m.namespace.clone(), m.name.clone()));
            }
        }
        let mut keys = self.all();
        for (namespace, uid) in orphaned(store, child, owner.name(), &self.by_uid) {
            keys.push(OwnerKey::Owned { namespace, uid });
        }
        keys
    }

    /// Every owner's key.
    pub fn all(&self) -> Vec<OwnerKey> {
        self.by_uid
            .values()
            .map(|(namespace, name)| OwnerKey::Owner {
                namespace: namespace.clone(),
                name: name.clone(),
            })
            .collect()
    }

    /// An owner changed: its key; deleted, the key that collects its children.
    pub fn owner_changed(&mut self, m: &ObjectMeta, deleted: bool) -> OwnerKey {
        if deleted {
            self.by_uid.remove(&m.uid);
            OwnerKey::Owned {
                namespace: m.namespace.clone(),
                uid: m.uid.clone(),
            }
        } else {
            self.by_uid
                .insert(m.uid.clone(), (m.namespace.clone(), m.name.clone()));
            OwnerKey::Owner {
                namespace: m.namespace.clone(),
                name: m.name.clone(),
            }
        }
    }

    /// A child changed: the key of its controlling owner of kind `owner` (or, when that
    /// owner is unknown, the key that collects its children).
    pub fn child_changed(&self, m: &ObjectMeta, owner: Kind) -> Vec<OwnerKey> {
        m.owner_references
            .iter()
            .filter(|o| o.controller == Some(true) && o.kind == owner.name())
            .map(|o| match self.by_uid.get(&o.uid) {
                Some((namespace, name)) => OwnerKey::Owner {
                    namespace: namespace.clone(),
                    name: name.clone(),
                },
                None => OwnerKey::Owned {
                    namespace: m.namespace.clone(),
                    uid: o.uid.clone(),
                },
            })
            .collect()
    }

    /// Whether the owner of `uid` exists.
    pub fn knows(&self, uid: &str) -> bool {
        self.by_uid.contains_key(uid)
    }

    /// The children of a gone owner: the pods (or Jobs) it controlled, deleted.
    pub async fn collect(
        &self,
        store: &Store,
        child: Kind,
        namespace: &str,
        uid: &str,
    ) -> Result<(), StoreError> {
        if self.knows(uid) {
            return Ok(());
        }
        let children = list_in(store, child, namespace, |o| {
            let m = o.meta();
            (controlled_by(m, uid) && m.deletion_timestamp.is_none()).then(|| m.name.clone())
        });
        for name in children {
            delete(store, child, namespace, &name).await?;
        }
        Ok(())
    }
}
