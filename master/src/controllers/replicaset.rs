//! The ReplicaSet controller: `replicas` pods of the template, no more, no fewer. Extra pods
//! go in the order Kubernetes picks them (unscheduled, not ready, newest first). A
//! Deployment moves its ReplicaSets' counts; this controller moves the pods.
//!
//! [`plan`] is pure; [`ReplicaSets`] is the shell on the shared loop.

use bramble_api::meta::OwnerReference;
use bramble_api::pod::Pod;
use bramble_api::replicaset::{ReplicaSet, ReplicaSetStatus};
use bramble_api::{Kind, Object, Selector};

use super::Controller;
use super::deployment::{deletion_order, is_ready};
use super::objects::{OwnerKey, Owners, controlled_by, delete, pods_of};
use crate::store::{Change, EventType, Op, Store, StoreError, Subresource};

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
    controlled_by(&p.metadata, uid)
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
    p.metadata.owner_references = vec![OwnerReference::controller(Kind::ReplicaSet, &rs.metadata)];
    p
}

/// The ReplicaSet controller's shell.
#[derive(Default)]
pub struct ReplicaSets {
    owners: Owners,
}

impl Controller for ReplicaSets {
    type Key = OwnerKey;
    const NAME: &'static str = "replicaset";
    const WATCHES: &'static [Kind] = &[Kind::ReplicaSet, Kind::Pod];

    async fn resync(&mut self, store: &Store) -> Vec<OwnerKey> {
        self.owners.resync(store, Kind::ReplicaSet, Kind::Pod)
    }

    fn keys(&mut self, c: &Change) -> Vec<OwnerKey> {
        match c.entry.object() {
            Ok(Object::ReplicaSet(rs)) => {
                vec![
                    self.owners
                        .owner_changed(&rs.metadata, c.type_ == EventType::Deleted),
                ]
            }
            Ok(Object::Pod(p)) => self.owners.child_changed(&p.metadata, Kind::ReplicaSet),
            _ => Vec::new(),
        }
    }

    async fn reconcile(&mut self, store: &Store, key: &OwnerKey) -> Result<(), StoreError> {
        let (ns, name) = match key {
            OwnerKey::Owned { namespace, uid } => {
                return self.owners.collect(store, Kind::Pod, namespace, uid).await;
            }
            OwnerKey::Owner { namespace, name } => (namespace, name),
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
        let pods = pods_of(store, ns, &rs.spec.selector, &rs.metadata.uid);
        let plan = plan(&rs, &pods);
        for _ in 0..plan.create {
            store.write(Op::Create(Object::Pod(new_pod(&rs)))).await?;
        }
        for pod in &plan.delete {
            delete(store, Kind::Pod, ns, pod).await?;
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
