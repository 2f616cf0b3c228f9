//! Controllers: level-triggered loops that keep objects true to their spec. Each watches
//! the store, queues what an event touches, and reconciles it with a pure planner; a failed
//! reconcile is retried after a capped, jittered back-off ([`queue`]), not left for the next
//! unrelated change.

pub mod deployment;
pub mod endpoints;
pub mod ipam;
pub mod nodes;
pub mod queue;

use std::collections::HashMap;
use std::time::Instant;

use bramble_api::deployment::Deployment;
use bramble_api::pod::Pod;
use bramble_api::{Kind, Object, Selector};
use tokio_util::sync::CancellationToken;

use self::queue::{Retry, WorkQueue};
use crate::events::EventRecorder;
use crate::store::{DeleteRequest, EventType, Op, Store, StoreError, Subresource, WatchFilter};

fn all(kind: Kind) -> WatchFilter {
    WatchFilter {
        kind,
        namespace: None,
        selector: Selector::everything(),
    }
}

/// Runs the Deployment controller (and the garbage collection of a deleted Deployment's
/// pods) until `shutdown`.
pub async fn run_deployments(store: Store, shutdown: CancellationToken) {
    let mut events = EventRecorder::new(store.clone(), "deployment-controller");
    loop {
        // uid → (namespace, name) of every Deployment, to route pod events to owners.
        let mut by_uid: HashMap<String, (String, String)> = HashMap::new();
        // What to reconcile: changed Deployments now, failed ones after a back-off.
        let mut queue: WorkQueue<(String, String)> = WorkQueue::new(Retry::default());
        let (drev, deps) = store.list(Kind::Deployment, None, &Selector::everything());
        for e in &deps {
            if let Ok(Object::Deployment(d)) = e.object() {
                by_uid.insert(
                    d.metadata.uid.clone(),
                    (d.metadata.namespace.clone(), d.metadata.name.clone()),
                );
                queue.add((d.metadata.namespace.clone(), d.metadata.name.clone()));
            }
        }
        let (prev, _) = store.list(Kind::Pod, None, &Selector::everything());
        collect_orphans(&store, &by_uid).await;
        let (mut dw, mut pw) = match (
            store.watch(all(Kind::Deployment), Some(drev)),
            store.watch(all(Kind::Pod), Some(prev)),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            _ => {
                tracing::error!("deployment controller cannot watch the store");
                return;
            }
        };
        loop {
            for key in queue.take(Instant::now()) {
                match reconcile(&store, &mut events, &key.0, &key.1).await {
                    Ok(()) => queue.done(&key),
                    Err(e) => {
                        let retry_in =
                            queue.failed(key.clone(), Instant::now(), bramble_support::jitter());
                        tracing::warn!(deployment = %key.1, error = %e, ?retry_in, "reconcile failed; retrying");
                    }
                }
            }
            let retry = queue.next_retry();
            let change = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = async {
                    match retry {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                } => continue,
                c = dw.next() => c,
                c = pw.next() => c,
            };
            let Ok(c) = change else { break };
            match c.entry.object() {
                Ok(Object::Deployment(d)) => {
                    let key = (d.metadata.namespace.clone(), d.metadata.name.clone());
                    if c.type_ == EventType::Deleted {
                        by_uid.remove(&d.metadata.uid);
                        queue.remove(&key);
                        delete_owned(&store, &d.metadata.namespace, &d.metadata.uid).await;
                    } else {
                        by_uid.insert(d.metadata.uid.clone(), key.clone());
                        queue.add(key);
                    }
                }
                Ok(Object::Pod(p)) => {
                    for o in p
                        .metadata
                        .owner_references
                        .iter()
                        .filter(|o| o.controller == Some(true))
                    {
                        match by_uid.get(&o.uid) {
                            Some(key) => queue.add(key.clone()),
                            None if o.kind == "Deployment" && c.type_ != EventType::Deleted => {
                                // Its owner is gone: collect it.
                                delete_pod(&store, &p.metadata.namespace, &p.metadata.name).await;
                            }
                            None => {}
                        }
                    }
                }
                _ => {}
            }
        }
        tracing::info!("deployment controller re-listing");
    }
}

async fn delete_pod(store: &Store, ns: &str, name: &str) {
    let req = DeleteRequest {
        kind: Kind::Pod,
        namespace: ns.into(),
        name: name.into(),
        grace_seconds: None,
        resource_version: None,
    };
    match store.write(Op::Delete(req)).await {
        Ok(_) | Err(StoreError::NotFound { .. }) => {}
        Err(e) => tracing::warn!(pod = name, error = %e, "cannot delete a pod"),
    }
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

/// The garbage collector's part: pods whose owning Deployment was deleted.
async fn delete_owned(store: &Store, ns: &str, owner_uid: &str) {
    for p in pods_in(store, ns) {
        if p.metadata
            .owner_references
            .iter()
            .any(|o| o.uid == owner_uid)
            && p.metadata.deletion_timestamp.is_none()
        {
            delete_pod(store, ns, &p.metadata.name).await;
        }
    }
}

/// Pods owned by Deployments that no longer exist (deleted while the master was down).
async fn collect_orphans(store: &Store, by_uid: &HashMap<String, (String, String)>) {
    let (_, entries) = store.list(Kind::Pod, None, &Selector::everything());
    for e in entries {
        let Ok(Object::Pod(p)) = e.object() else {
            continue;
        };
        let orphan = p.metadata.owner_references.iter().any(|o| {
            o.controller == Some(true) && o.kind == "Deployment" && !by_uid.contains_key(&o.uid)
        });
        if orphan && p.metadata.deletion_timestamp.is_none() {
            delete_pod(store, &p.metadata.namespace, &p.metadata.name).await;
        }
    }
}

async fn reconcile(
    store: &Store,
    events: &mut EventRecorder,
    ns: &str,
    name: &str,
) -> Result<(), StoreError> {
    let Some(entry) = store.get(Kind::Deployment, ns, name) else {
        return Ok(());
    };
    let Object::Deployment(d) = entry.object()? else {
        return Ok(());
    };
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    if let Some(annotations) = deployment::record_revision(&d) {
        let mut updated = d.clone();
        updated.metadata.annotations = annotations;
        // Conditional on the version read: a concurrent change wins and comes back as an event.
        match store
            .write(Op::Update(Object::Deployment(updated), Subresource::Main))
            .await
        {
            Ok(_) | Err(StoreError::Conflict { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    let pods = pods_in(store, ns);
    let plan = deployment::plan(&d, &pods);
    for _ in 0..plan.create {
        store
            .write(Op::Create(Object::Pod(deployment::new_pod(&d))))
            .await?;
    }
    if plan.create > 0 {
        let msg = format!(
            "Created {} pod(s) from template {}",
            plan.create,
            deployment::template_hash(&d)
        );
        events
            .record(Object::Deployment(d.clone()), "Normal", "ScalingUp", &msg)
            .await;
    }
    for pod in &plan.delete {
        delete_pod(store, ns, pod).await;
    }
    if !plan.delete.is_empty() {
        let msg = format!(
            "Deleted {} pod(s): {}",
            plan.delete.len(),
            plan.delete.join(", ")
        );
        events
            .record(Object::Deployment(d.clone()), "Normal", "ScalingDown", &msg)
            .await;
    }
    if d.status.as_ref() != Some(&plan.status) {
        let mut updated: Deployment = d;
        updated.status = Some(plan.status);
        updated.metadata.resource_version.clear();
        store
            .write(Op::Update(Object::Deployment(updated), Subresource::Status))
            .await?;
    }
    Ok(())
}
