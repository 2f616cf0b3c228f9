//! The ReplicaSet controller: `replicas` pods of the template, no more, no fewer. Extra pods
//! go in the order Kubernetes picks them (unscheduled, not ready, newest first). A
//! Deployment moves its ReplicaSets' counts; this controller moves the pods.
//!
//! [`plan`] is pure; [`ReplicaSets`] is the shell on the shared loop.

use std::collections::HashMap;

use bramble_api::meta::OwnerReference;
use bramble_api::pod::Pod;
use bramble_api::replicaset::{ReplicaSet, ReplicaSetStatus};
use bramble_api::{Kind, Object, Selector};

use super::Controller;
use super::deployment::{deletion_order, is_ready};
use crate::store::{Change, DeleteRequest, EventType, Op, Store, StoreError, Subresource};

/// What to do now.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub create: usize,
    /// Names of pods to delete.
    pub delete: Vec<String>,
    pub status: ReplicaSetStatus,
}

/// Whether the pod's controller is the ReplicaSet of `uid`.
pub fn owned_by(p: &Pod, uid: &str) -> bool {
    p.metadata
        .owner_references
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Plans one step: `pods` are the ReplicaSet's pods (stopping ones are not counted).
pub fn plan(rs: &ReplicaSet, pods: &[Pod]) -> Plan {
    let want = rs.spec.replicas.unwrap_or(1).max(0) as usize;
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let ready = live.iter().filter(|p| is_ready(p)).count() as i32;
    let labeled = Selector::from_label_selector(&rs.spec.selector, "spec.selector")
        .map(|s| {
            live.iter()
                .filter(|p| s.matches(&p.metadata.labels))
                .count()
        })
        .unwrap_or(0) as i32;
    let (create, delete) = if live.len() < want {
        (want - live.len(), Vec::new())
    } else {
        let extra = live.len() - want;
        let delete = deletion_order(live.clone())
            .into_iter()
            .take(extra)
            .map(|p| p.metadata.name.clone())
            .collect();
        (0, delete)
    };
    Plan {
        create,
        delete,
        status: ReplicaSetStatus {
            replicas: live.len() as i32,
            fully_labeled_replicas: labeled,
            ready_replicas: ready,
            available_replicas: ready,
            observed_generation: rs.metadata.generation,
            conditions: Vec::new(),
        },
    }
}

/// A pod of the ReplicaSet's template.
pub fn new_pod(rs: &ReplicaSet) -> Pod {
    let mut p = Pod {
        metadata: rs.spec.template.metadata.clone(),
        spec: rs.spec.template.spec.clone(),
        ..Default::default()
    };
    p.metadata.name.clear();
    p.metadata.generate_name = format!("{}-", rs.metadata.name);
    p.metadata.namespace = rs.metadata.namespace.clone();
    p.metadata.owner_references = vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: rs.metadata.name.clone(),
        uid: rs.metadata.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }];
    p
}

/// What one reconcile brings in line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    ReplicaSet {
        namespace: String,
        name: String,
    },
    /// The pods of a ReplicaSet that is gone.
    Owned {
        namespace: String,
        uid: String,
    },
}

/// The ReplicaSet controller's shell.
#[derive(Default)]
pub struct ReplicaSets {
    by_uid: HashMap<String, (String, String)>,
}

fn pods_in(store: &Store, ns: &str) -> Vec<Pod> {
    let (_, entries) = store.list(Kind::Pod, Some(ns), &Selector::everything());
    entries
        .iter()
        .filter_map(|e| match e.object() {
            Ok(Object::Pod(p)) => Some(p),
            _ => None,
        })
        .collect()
}

async fn delete_pod(store: &Store, ns: &str, name: &str) -> Result<(), StoreError> {
    let req = DeleteRequest {
        kind: Kind::Pod,
        namespace: ns.into(),
        name: name.into(),
        grace_seconds: None,
        resource_version: None,
    };
    match store.write(Op::Delete(req)).await {
        Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Controller for ReplicaSets {
    type Key = Key;
    const NAME: &'static str = "replicaset";
    const WATCHES: &'static [Kind] = &[Kind::ReplicaSet, Kind::Pod];

    async fn resync(&mut self, store: &Store) -> Vec<Key> {
        self.by_uid.clear();
        let (_, sets) = store.list(Kind::ReplicaSet, None, &Selector::everything());
        let mut keys = Vec::new();
        for e in &sets {
            if let Ok(Object::ReplicaSet(rs)) = e.object() {
                keys.push(Key::ReplicaSet {
                    namespace: rs.metadata.namespace.clone(),
                    name: rs.metadata.name.clone(),
                });
                self.by_uid
                    .insert(rs.metadata.uid, (rs.metadata.namespace, rs.metadata.name));
            }
        }
        let (_, pods) = store.list(Kind::Pod, None, &Selector::everything());
        for e in pods {
            if let Ok(Object::Pod(p)) = e.object() {
                for o in &p.metadata.owner_references {
                    if o.kind == "ReplicaSet" && !self.by_uid.contains_key(&o.uid) {
                        keys.push(Key::Owned {
                            namespace: p.metadata.namespace.clone(),
                            uid: o.uid.clone(),
                        });
                    }
                }
            }
        }
        keys
    }

    fn keys(&mut self, c: &Change) -> Vec<Key> {
        match c.entry.object() {
            Ok(Object::ReplicaSet(rs)) => {
                let m = rs.metadata;
                if c.type_ == EventType::Deleted {
                    self.by_uid.remove(&m.uid);
                    vec![Key::Owned {
                        namespace: m.namespace,
                        uid: m.uid,
                    }]
                } else {
                    self.by_uid
                        .insert(m.uid, (m.namespace.clone(), m.name.clone()));
                    vec![Key::ReplicaSet {
                        namespace: m.namespace,
                        name: m.name,
                    }]
                }
            }
            Ok(Object::Pod(p)) => p
                .metadata
                .owner_references
                .iter()
                .filter(|o| o.controller == Some(true) && o.kind == "ReplicaSet")
                .map(|o| match self.by_uid.get(&o.uid) {
                    Some((ns, name)) => Key::ReplicaSet {
                        namespace: ns.clone(),
                        name: name.clone(),
                    },
                    None => Key::Owned {
                        namespace: p.metadata.namespace.clone(),
                        uid: o.uid.clone(),
                    },
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    async fn reconcile(&mut self, store: &Store, key: &Key) -> Result<(), StoreError> {
        let (ns, name) = match key {
            Key::Owned { namespace, uid } => {
                if self.by_uid.contains_key(uid) {
                    return Ok(());
                }
                for p in pods_in(store, namespace) {
                    if p.metadata.deletion_timestamp.is_none() && owned_by(&p, uid) {
                        delete_pod(store, namespace, &p.metadata.name).await?;
                    }
                }
                return Ok(());
            }
            Key::ReplicaSet { namespace, name } => (namespace, name),
        };
        let Some(entry) = store.get(Kind::ReplicaSet, ns, name) else {
            return Ok(());
        };
        let Object::ReplicaSet(rs) = entry.object()? else {
            return Ok(());
        };
        if rs.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let pods: Vec<Pod> = pods_in(store, ns)
            .into_iter()
            .filter(|p| owned_by(p, &rs.metadata.uid))
            .collect();
        let plan = plan(&rs, &pods);
        for _ in 0..plan.create {
            store.write(Op::Create(Object::Pod(new_pod(&rs)))).await?;
        }
        for pod in &plan.delete {
            delete_pod(store, ns, pod).await?;
        }
        if rs.status.as_ref() != Some(&plan.status) {
            let mut updated = rs;
            updated.status = Some(plan.status);
            updated.metadata.resource_version.clear();
            store
                .write(Op::Update(Object::ReplicaSet(updated), Subresource::Status))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(replicas: i32) -> ReplicaSet {
        let mut r: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "default", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }))
        .unwrap();
        r.metadata.uid = "rs-uid".into();
        r
    }

    fn pod(r: &ReplicaSet, name: &str, ready: bool, node: &str) -> Pod {
        let mut p = new_pod(r);
        p.metadata.name = name.into();
        p.metadata.creation_timestamp = Some(format!("2026-01-01T00:00:{:02}Z", name.len()));
        p.spec.node_name = node.into();
        let status = if ready { "True" } else { "False" };
        p.status = Some(serde_json::from_value(serde_json::json!({"phase": "Running", "conditions": [{"type": "Ready", "status": status}]})).unwrap());
        p
    }

    #[test]
    fn keeps_the_count_deleting_the_least_useful_pods_first() {
        let r = rs(3);
        let p = plan(&r, &[]);
        assert_eq!((p.create, p.delete.len()), (3, 0));
        let pods = vec![
            pod(&r, "a", true, "n1"),
            pod(&r, "bb", false, "n1"),
            pod(&r, "ccc", true, ""),
            pod(&r, "dddd", true, "n1"),
            pod(&r, "eeeee", true, "n1"),
        ];
        let p = plan(&r, &pods);
        assert_eq!(p.create, 0);
        assert_eq!(p.delete, ["bb", "ccc"], "not ready, then unscheduled");
        assert_eq!((p.status.replicas, p.status.ready_replicas), (5, 4));
        assert_eq!(p.status.observed_generation, 2);
        let mut stopping = pods[..3].to_vec();
        stopping[0].metadata.deletion_timestamp = Some("2026-01-01T00:01:00Z".into());
        assert_eq!(
            plan(&r, &stopping).create,
            1,
            "a stopping pod does not count"
        );
        let made = new_pod(&r);
        assert_eq!(made.metadata.generate_name, "web-abc-");
        assert!(owned_by(&made, "rs-uid"));
    }
}
