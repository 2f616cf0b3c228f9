//! The Deployment controller: its planner ([`plan`], pure: what to create and delete to move
//! a Deployment's pods toward its template and replica count, honouring `maxSurge` and
//! `maxUnavailable`) and its shell ([`Deployments`], on the shared controller shell), which
//! also collects the pods of Deployments that are gone.
//!
//! As in Kubernetes, a Deployment owns one ReplicaSet per template (`DEPLOYMENT-HASH`, its
//! pods labelled `pod-template-hash`), and the ReplicaSets own the pods. The planner still
//! reasons over the pods (how many of the new template to add, which old ones may go within
//! the bounds); [`scale`] turns its answer into each ReplicaSet's replica count, which the
//! ReplicaSet controller then carries out. Deployments stored by a Bramble without
//! ReplicaSets (pods owned by the Deployment itself) are moved under ReplicaSets at start by
//! [`adopt_legacy_pods`], without restarting a pod.

use std::collections::{BTreeMap, HashMap};

use bramble_api::deployment::{Deployment, DeploymentStatus};
use bramble_api::meta::{Condition, IntOrString, OwnerReference};
use bramble_api::pod::Pod;
use bramble_api::replicaset::{ReplicaSet, ReplicaSetSpec};
use bramble_api::{Kind, Object, Selector};

use super::Controller;
use super::objects::{controlled_by, controller_of, delete, list_in, pods_in, pods_of};
use crate::events::EventRecorder;
use crate::store::{Change, EventType, Op, Store, StoreError, Subresource};

/// The label that ties a pod to the template it was created from.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// What to do now.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// New-template pods to create.
    pub create: usize,
    /// Names of pods to delete.
    pub delete: Vec<String>,
    /// The status the Deployment should show.
    pub status: DeploymentStatus,
}

/// A stable hash of the pod template (FNV-1a over its JSON), as 10 hex characters.
pub fn template_hash(d: &Deployment) -> String {
    let json = serde_json::to_vec(&d.spec.template).unwrap_or_default();
    format!("{:010x}", bramble_support::fnv64(json) & 0xff_ffff_ffff)
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Resolves `N` or `N%` of `total`; percentages round up for surge and down otherwise.
fn resolve(v: Option<&IntOrString>, total: i32, default_pct: i32, round_up: bool) -> i32 {
    let pct = |p: i32| {
        let x = total as i64 * p as i64;
        (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
    };
    match v {
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => match s.strip_suffix('%') {
            Some(n) => n.parse().map_or(pct(default_pct), pct),
            None => s.parse().unwrap_or_else(|_| pct(default_pct)),
        },
        None => pct(default_pct),
    }
}

/// `(maxSurge, maxUnavailable)` for `replicas`, as Kubernetes resolves them.
pub fn surge_and_unavailable(d: &Deployment, replicas: i32) -> (i32, i32) {
    let ru = d
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let surge = resolve(ru.and_then(|r| r.max_surge.as_ref()), replicas, 25, true);
    let mut unavailable = resolve(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        25,
        false,
    );
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

/// Pods the Deployment owns and that are not on their way out.
pub fn owned<'a>(d: &Deployment, pods: &'a [Pod]) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == d.metadata.uid)
        })
        .collect()
}

/// Orders pods for deletion: not ready first, then unscheduled, then newest.
pub fn deletion_order(mut v: Vec<&Pod>) -> Vec<&Pod> {
    v.sort_by(|a, b| {
        (
            is_ready(a),
            !a.spec.node_name.is_empty(),
            b.metadata.creation_timestamp.clone(),
            b.metadata.name.clone(),
        )
            .cmp(&(
                is_ready(b),
                !b.spec.node_name.is_empty(),
                a.metadata.creation_timestamp.clone(),
                a.metadata.name.clone(),
            ))
    });
    v
}

/// Plans one step of a Deployment.
pub fn plan(d: &Deployment, pods: &[Pod]) -> Plan {
    let replicas = d.spec.replicas.unwrap_or(1).max(0);
    let hash = template_hash(d);
    let mine: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let (new, old): (Vec<&Pod>, Vec<&Pod>) = mine
        .iter()
        .partition(|p| p.metadata.labels.get(TEMPLATE_HASH_LABEL) == Some(&hash));
    let recreate = d
        .spec
        .strategy
        .as_ref()
        .is_some_and(|s| s.type_ == "Recreate");
    let ready_new = new.iter().filter(|p| is_ready(p)).count() as i32;
    let ready_old = old.iter().filter(|p| is_ready(p)).count() as i32;
    let (surge, unavailable) = surge_and_unavailable(d, replicas);
    let mut create = 0;
    let mut delete: Vec<String> = Vec::new();
    let n_new = new.len() as i32;
    let n_old = old.len() as i32;
    if d.spec.paused {
        // Paused: no rollout steps, only the status.
    } else if recreate {
        if n_old > 0 {
            delete.extend(old.iter().map(|p| p.metadata.name.clone()));
        } else if n_new < replicas {
            create = replicas - n_new;
        }
    } else {
        if n_new > replicas {
            let extra = (n_new - replicas) as usize;
            delete.extend(
                deletion_order(new.clone())
                    .into_iter()
                    .take(extra)
                    .map(|p| p.metadata.name.clone()),
            );
        }
        let max_total = replicas + surge;
        if n_new < replicas {
            create = (replicas - n_new).min(max_total - n_new - n_old).max(0);
        }
        if n_old > 0 {
            // Old pods that are not ready carry no availability: they go first, freely.
            let mut budget = (ready_new + ready_old) - (replicas - unavailable);
            for p in deletion_order(old.clone()) {
                if !is_ready(p) {
                    delete.push(p.metadata.name.clone());
                } else if budget > 0 {
                    delete.push(p.metadata.name.clone());
                    budget -= 1;
                }
            }
        }
    }
    let available = ready_new + ready_old;
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: n_new + n_old,
        updated_replicas: n_new,
        ready_replicas: available,
        available_replicas: available,
        unavailable_replicas: (replicas - available).max(0),
        conditions: vec![Condition {
            type_: "Available".into(),
            status: if available >= replicas - unavailable {
                "True"
            } else {
                "False"
            }
            .into(),
            reason: if available >= replicas - unavailable {
                "MinimumReplicasAvailable"
            } else {
                "MinimumReplicasUnavailable"
            }
            .into(),
            ..Default::default()
        }],
    };
    Plan {
        create: create.max(0) as usize,
        delete,
        status,
    }
}

pub use bramble_api::deployment::{
    CHANGE_CAUSE_ANNOTATION, HISTORY_ANNOTATION, REVISION_ANNOTATION, Revision,
};

/// The Deployment's revision history, oldest first.
pub fn history(d: &Deployment) -> Vec<Revision> {
    history_of(&d.metadata)
}

/// A Deployment's or DaemonSet's revision history (its annotation), oldest first.
pub fn history_of(meta: &bramble_api::meta::ObjectMeta) -> Vec<Revision> {
    meta.annotations
        .get(HISTORY_ANNOTATION)
        .and_then(|h| serde_json::from_str(h).ok())
        .unwrap_or_default()
}

/// Records the current template as the newest revision (an old template coming back, as by
/// `rollout undo`, becomes a new revision, as in Kubernetes); keeps `revisionHistoryLimit`
/// old ones (default 10). Returns the new annotations, or None when nothing changed.
pub fn record_revision(d: &Deployment) -> Option<std::collections::BTreeMap<String, String>> {
    record_revision_of(
        &d.metadata,
        &d.spec.template,
        template_hash(d),
        d.spec.revision_history_limit,
    )
}

/// [`record_revision`] for any owner of a pod template (Deployments and DaemonSets).
pub fn record_revision_of(
    meta: &bramble_api::meta::ObjectMeta,
    template: &bramble_api::pod::PodTemplateSpec,
    hash: String,
    history_limit: Option<i32>,
) -> Option<std::collections::BTreeMap<String, String>> {
    let mut h = history_of(meta);
    if h.last().is_some_and(|r| r.hash == hash) {
        return None;
    }
    let next = h.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
    h.retain(|r| r.hash != hash);
    let cause = meta
        .annotations
        .get(CHANGE_CAUSE_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    h.push(Revision {
        revision: next,
        hash,
        change_cause: cause,
        template: template.clone(),
    });
    let keep = history_limit.unwrap_or(10).max(0) as usize + 1;
    if h.len() > keep {
        h.drain(..h.len() - keep);
    }
    let mut a = meta.annotations.clone();
    a.insert(REVISION_ANNOTATION.into(), next.to_string());
    a.insert(
        HISTORY_ANNOTATION.into(),
        serde_json::to_string(&h).unwrap_or_default(),
    );
    Some(a)
}

/// A new pod from the Deployment's template.
pub fn new_pod(d: &Deployment) -> Pod {
    let hash = template_hash(d);
    let mut p = Pod {
        metadata: d.spec.template.metadata.clone(),
        spec: d.spec.template.spec.clone(),
        ..Default::default()
    };
    p.metadata.name.clear();
    p.metadata.generate_name = format!("{}-{hash}-", d.metadata.name);
    p.metadata.namespace = d.metadata.namespace.clone();
    p.metadata.labels.insert(TEMPLATE_HASH_LABEL.into(), hash);
    p.metadata.owner_references = vec![OwnerReference::controller(Kind::Deployment, &d.metadata)];
    p
}

/// A ReplicaSet's `pod-template-hash`.
pub fn set_hash(rs: &ReplicaSet) -> Option<&str> {
    rs.metadata
        .labels
        .get(TEMPLATE_HASH_LABEL)
        .map(String::as_str)
}

/// The revision the Deployment's history gives a template hash, if it has one.
fn revision_of(d: &Deployment, hash: &str) -> Option<i64> {
    history(d)
        .iter()
        .find(|r| r.hash == hash)
        .map(|r| r.revision)
}

/// The ReplicaSet of the Deployment's current template, at 0 replicas: named
/// `DEPLOYMENT-HASH`, its selector and pods labelled with the hash, as Kubernetes makes it.
pub fn new_replicaset(d: &Deployment) -> ReplicaSet {
    replicaset_for(d, &template_hash(d), &d.spec.template)
}

/// The ReplicaSet of the Deployment for a template and its hash, at 0 replicas.
fn replicaset_for(
    d: &Deployment,
    hash: &str,
    template: &bramble_api::pod::PodTemplateSpec,
) -> ReplicaSet {
    let hash = hash.to_string();
    let mut template = template.clone();
    template
        .metadata
        .labels
        .insert(TEMPLATE_HASH_LABEL.into(), hash.clone());
    let mut selector = d.spec.selector.clone();
    selector
        .match_labels
        .insert(TEMPLATE_HASH_LABEL.into(), hash.clone());
    let mut rs = ReplicaSet::default();
    rs.metadata.name = format!("{}-{hash}", d.metadata.name);
    rs.metadata.namespace = d.metadata.namespace.clone();
    rs.metadata.labels = template.metadata.labels.clone();
    if let Some(rev) = revision_of(d, &hash) {
        rs.metadata
            .annotations
            .insert(REVISION_ANNOTATION.into(), rev.to_string());
    }
    rs.metadata.owner_references = vec![OwnerReference::controller(Kind::Deployment, &d.metadata)];
    rs.spec = ReplicaSetSpec {
        replicas: Some(0),
        selector,
        template,
        min_ready_seconds: d.spec.min_ready_seconds,
    };
    rs
}

/// A ReplicaSet's name, the replica count it should have and the revision it should carry.
pub type SetTarget = (String, i32, Option<i64>);

/// What the Deployment's plan means for its ReplicaSets: each one's replica count (its live
/// pods, less those the plan deletes, plus those it creates for the current template), the
/// revision annotation each should carry, and the old ones beyond `revisionHistoryLimit`
/// (no pods, no replicas; the oldest revisions) to delete.
pub fn scale(
    d: &Deployment,
    sets: &[ReplicaSet],
    pods: &[Pod],
    plan: &Plan,
) -> (Vec<SetTarget>, Vec<String>) {
    let hash = template_hash(d);
    let mut out = Vec::new();
    let mut idle: Vec<(i64, String)> = Vec::new();
    for rs in sets {
        let h = set_hash(rs).unwrap_or("");
        let live: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| crate::controllers::replicaset::owned_by(p, &rs.metadata.uid))
            .collect();
        let deleted = live
            .iter()
            .filter(|p| plan.delete.contains(&p.metadata.name))
            .count() as i32;
        let mut target = live.len() as i32 - deleted;
        if h == hash {
            target += plan.create as i32;
        }
        let target = if d.spec.paused {
            rs.spec.replicas.unwrap_or(1)
        } else {
            target.max(0)
        };
        let revision = revision_of(d, h);
        out.push((rs.metadata.name.clone(), target, revision));
        if h != hash && target == 0 && live.is_empty() {
            idle.push((revision.unwrap_or(0), rs.metadata.name.clone()));
        }
    }
    idle.sort();
    let keep = d.spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let drop = idle.len().saturating_sub(keep);
    let gone = idle.into_iter().take(drop).map(|(_, n)| n).collect();
    (out, gone)
}

/// What the Deployment controller reconciles.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// Bring a Deployment's ReplicaSets to its template and replica count.
    Deployment { namespace: String, name: String },
    /// A Deployment was deleted: delete the ReplicaSets (and any pods) it owned.
    Owned { namespace: String, uid: String },
    /// A ReplicaSet whose owning Deployment is gone (deleted while the master was down):
    /// delete it (its pods follow).
    Orphan { namespace: String, name: String },
}

/// The Deployment controller's state between reconciles.
pub struct Deployments {
    events: EventRecorder,
    /// uid → (namespace, name) of every Deployment, to route events to owners.
    by_uid: HashMap<String, (String, String)>,
    /// ReplicaSet uid → the uid of the Deployment that owns it.
    set_owner: HashMap<String, String>,
}

impl Deployments {
    pub fn new(store: &Store) -> Self {
        Deployments {
            events: EventRecorder::new(store.clone(), "deployment-controller"),
            by_uid: HashMap::new(),
            set_owner: HashMap::new(),
        }
    }

    fn deployment_key(&self, ns: &str, name: &str) -> Key {
        Key::Deployment {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    /// The key of the Deployment that owns the object whose controller is `owner`, through
    /// a ReplicaSet for pods.
    fn owner_key(&self, owner: &OwnerReference) -> Option<Key> {
        let uid = match owner.kind.as_str() {
            "Deployment" => &owner.uid,
            "ReplicaSet" => self.set_owner.get(&owner.uid)?,
            _ => return None,
        };
        self.by_uid
            .get(uid)
            .map(|(ns, name)| self.deployment_key(ns, name))
    }
}

impl Controller for Deployments {
    type Key = Key;
    const NAME: &'static str = "deployment";
    const WATCHES: &'static [Kind] = &[Kind::Deployment, Kind::ReplicaSet, Kind::Pod];

    async fn resync(&mut self, store: &Store) -> Vec<Key> {
        self.by_uid.clear();
        self.set_owner.clear();
        let mut keys = Vec::new();
        let (_, deployments) = store.list(Kind::Deployment, None, &Selector::everything());
        for e in &deployments {
            if let Ok(Object::Deployment(d)) = e.object() {
                let (ns, name) = (d.metadata.namespace, d.metadata.name);
                keys.push(self.deployment_key(&ns, &name));
                self.by_uid.insert(d.metadata.uid, (ns, name));
            }
        }
        let (_, sets) = store.list(Kind::ReplicaSet, None, &Selector::everything());
        for e in sets {
            if let Ok(Object::ReplicaSet(rs)) = e.object()
                && let Some(o) = controller_of(&rs.metadata)
                && o.kind == "Deployment"
            {
                if self.by_uid.contains_key(&o.uid) {
                    self.set_owner
                        .insert(rs.metadata.uid.clone(), o.uid.clone());
                } else if rs.metadata.deletion_timestamp.is_none() {
                    keys.push(Key::Orphan {
                        namespace: rs.metadata.namespace,
                        name: rs.metadata.name,
                    });
                }
            }
        }
        keys
    }

    fn keys(&mut self, c: &Change) -> Vec<Key> {
        match c.entry.object() {
            Ok(Object::Deployment(d)) => {
                let m = d.metadata;
                if c.type_ == EventType::Deleted {
                    self.by_uid.remove(&m.uid);
                    vec![Key::Owned {
                        namespace: m.namespace,
                        uid: m.uid,
                    }]
                } else {
                    let key = self.deployment_key(&m.namespace, &m.name);
                    self.by_uid.insert(m.uid, (m.namespace, m.name));
                    vec![key]
                }
            }
            Ok(Object::ReplicaSet(rs)) => {
                let Some(o) = controller_of(&rs.metadata).filter(|o| o.kind == "Deployment") else {
                    return Vec::new();
                };
                if c.type_ == EventType::Deleted {
                    self.set_owner.remove(&rs.metadata.uid);
                } else {
                    self.set_owner
                        .insert(rs.metadata.uid.clone(), o.uid.clone());
                }
                match self.owner_key(o) {
                    Some(k) => vec![k],
                    None if c.type_ != EventType::Deleted => vec![Key::Orphan {
                        namespace: rs.metadata.namespace.clone(),
                        name: rs.metadata.name.clone(),
                    }],
                    None => Vec::new(),
                }
            }
            Ok(Object::Pod(p)) => controller_of(&p.metadata)
                .and_then(|o| self.owner_key(o))
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    async fn reconcile(&mut self, store: &Store, key: &Key) -> Result<(), StoreError> {
        match key {
            Key::Deployment { namespace, name } => {
                reconcile(store, &mut self.events, namespace, name).await
            }
            Key::Owned { namespace, uid } => {
                for rs in sets_of(store, namespace, uid) {
                    delete(store, Kind::ReplicaSet, namespace, &rs.metadata.name).await?;
                }
                for p in pods_in(store, namespace) {
                    if p.metadata.deletion_timestamp.is_none()
                        && p.metadata.owner_references.iter().any(|o| o.uid == *uid)
                    {
                        delete(store, Kind::Pod, namespace, &p.metadata.name).await?;
                    }
                }
                Ok(())
            }
            Key::Orphan { namespace, name } => {
                let Some(e) = store.get(Kind::ReplicaSet, namespace, name) else {
                    return Ok(());
                };
                let Object::ReplicaSet(rs) = e.object()? else {
                    return Ok(());
                };
                let gone = controller_of(&rs.metadata)
                    .is_some_and(|o| o.kind == "Deployment" && !self.by_uid.contains_key(&o.uid));
                if gone && rs.metadata.deletion_timestamp.is_none() {
                    delete(store, Kind::ReplicaSet, namespace, name).await?;
                }
                Ok(())
            }
        }
    }
}

/// The ReplicaSets a Deployment (by uid) controls.
fn sets_of(store: &Store, ns: &str, uid: &str) -> Vec<ReplicaSet> {
    list_in(store, Kind::ReplicaSet, ns, |o| match o {
        Object::ReplicaSet(rs) if controlled_by(&rs.metadata, uid) => Some(rs),
        _ => None,
    })
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
    if let Some(annotations) = record_revision(&d) {
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
    let sets = sets_of(store, ns, &d.metadata.uid);
    let hash = template_hash(&d);
    if !sets.iter().any(|rs| set_hash(rs) == Some(hash.as_str())) {
        // The current template's ReplicaSet first; its creation comes back as an event.
        let rs = new_replicaset(&d);
        let rs_name = rs.metadata.name.clone();
        match store.write(Op::Create(Object::ReplicaSet(rs))).await {
            Ok(_) => {
                events
                    .record(
                        Object::Deployment(d.clone()),
                        "Normal",
                        "ScalingReplicaSet",
                        &format!("Created replica set {rs_name}"),
                    )
                    .await;
                return Ok(());
            }
            Err(StoreError::AlreadyExists { .. }) => {
                return Err(StoreError::Conflict {
                    kind: Kind::ReplicaSet,
                    name: rs_name,
                    reason: "a ReplicaSet of this name exists but is not this Deployment's".into(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    let pods: Vec<Pod> = sets
        .iter()
        .flat_map(|rs| pods_of(store, ns, &rs.spec.selector, &rs.metadata.uid))
        .collect();
    let plan = plan(&d, &pods);
    let (targets, gone) = scale(&d, &sets, &pods, &plan);
    for (rs_name, target, revision) in targets {
        let Some(rs) = sets.iter().find(|r| r.metadata.name == rs_name) else {
            continue;
        };
        let rev = revision.map(|r| r.to_string());
        let same_rev =
            rev.is_none() || rs.metadata.annotations.get(REVISION_ANNOTATION) == rev.as_ref();
        if rs.spec.replicas == Some(target) && same_rev {
            continue;
        }
        let mut updated = rs.clone();
        let from = rs.spec.replicas.unwrap_or(1);
        updated.spec.replicas = Some(target);
        if let Some(r) = rev {
            updated
                .metadata
                .annotations
                .insert(REVISION_ANNOTATION.into(), r);
        }
        updated.metadata.resource_version.clear();
        store
            .write(Op::Update(Object::ReplicaSet(updated), Subresource::Main))
            .await?;
        if from != target {
            let dir = if target > from { "up" } else { "down" };
            let msg = format!("Scaled {dir} replica set {rs_name} from {from} to {target}");
            events
                .record(
                    Object::Deployment(d.clone()),
                    "Normal",
                    "ScalingReplicaSet",
                    &msg,
                )
                .await;
        }
    }
    for rs_name in gone {
        delete(store, Kind::ReplicaSet, ns, &rs_name).await?;
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

/// At start, before the controllers: pods that a Deployment owns directly (stored by a
/// Bramble without ReplicaSets) move under the ReplicaSet of their `pod-template-hash`,
/// made with as many replicas as they are (its template from the Deployment's revision
/// history, else from one of the pods). Only the pods' owner changes: no pod is restarted.
/// Returns how many pods moved.
pub async fn adopt_legacy_pods(store: &Store) -> Result<usize, StoreError> {
    let (_, deployments) = store.list(Kind::Deployment, None, &Selector::everything());
    let mut moved = 0;
    for e in deployments {
        let Object::Deployment(d) = e.object()? else {
            continue;
        };
        let ns = d.metadata.namespace.clone();
        let all = pods_in(store, &ns);
        let mut by_hash: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
        for p in owned(&d, &all) {
            let Some(h) = p.metadata.labels.get(TEMPLATE_HASH_LABEL) else {
                continue;
            };
            by_hash.entry(h.clone()).or_default().push(p);
        }
        for (hash, pods) in by_hash {
            let rs_name = format!("{}-{hash}", d.metadata.name);
            let rs = match store.get(Kind::ReplicaSet, &ns, &rs_name) {
                Some(e) => match e.object()? {
                    Object::ReplicaSet(rs) => rs,
                    _ => continue,
                },
                None => {
                    let template = if hash == template_hash(&d) {
                        d.spec.template.clone()
                    } else if let Some(r) = history(&d).into_iter().find(|r| r.hash == hash) {
                        r.template
                    } else {
                        let p = pods[0];
                        let mut t = bramble_api::pod::PodTemplateSpec {
                            metadata: Default::default(),
                            spec: p.spec.clone(),
                        };
                        t.metadata.labels = p.metadata.labels.clone();
                        t.metadata.labels.remove(TEMPLATE_HASH_LABEL);
                        t.spec.node_name.clear();
                        t
                    };
                    let mut rs = replicaset_for(&d, &hash, &template);
                    rs.spec.replicas = Some(pods.len() as i32);
                    match store
                        .write(Op::Create(Object::ReplicaSet(rs)))
                        .await?
                        .entry()
                        .object()?
                    {
                        Object::ReplicaSet(rs) => rs,
                        _ => continue,
                    }
                }
            };
            for p in pods {
                let mut p = p.clone();
                for o in &mut p.metadata.owner_references {
                    if o.controller == Some(true) && o.uid == d.metadata.uid {
                        *o = OwnerReference::controller(Kind::ReplicaSet, &rs.metadata);
                    }
                }
                p.metadata.resource_version.clear();
                store
                    .write(Op::Update(Object::Pod(p), Subresource::Main))
                    .await?;
                moved += 1;
            }
        }
    }
    if moved > 0 {
        tracing::info!(
            pods = moved,
            "moved Deployments' pods under ReplicaSets (no pod restarted)"
        );
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(replicas: i32, surge: &str, unavailable: &str, image: &str) -> Deployment {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 3},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}
            }
        }))
        .unwrap();
        d.metadata.uid = "d-uid".into();
        d
    }

    fn pod_of(d: &Deployment, name: &str, ready: bool) -> Pod {
        let mut p = new_pod(d);
        p.metadata.name = name.into();
        p.metadata.uid = format!("u-{name}");
        p.metadata.creation_timestamp = Some(format!("2026-01-01T00:00:{:02}Z", name.len()));
        p.spec.node_name = "n1".into();
        let status = if ready { "True" } else { "False" };
        p.status = Some(serde_json::from_value(serde_json::json!({"phase": "Running", "conditions": [{"type": "Ready", "status": status}]})).unwrap());
        p
    }

    #[test]
    fn scales_up_and_down() {
        let d = dep(3, "25%", "25%", "v1");
        let p = plan(&d, &[]);
        assert_eq!((p.create, p.delete.len()), (3, 0));
        let pods: Vec<Pod> = (0..5)
            .map(|i| pod_of(&d, &format!("p{i}"), i != 4))
            .collect();
        let p = plan(&d, &pods);
        assert_eq!(p.create, 0);
        assert_eq!(p.delete.len(), 2);
        assert!(
            p.delete.contains(&"p4".to_string()),
            "the unready pod goes first: {:?}",
            p.delete
        );
        assert_eq!(p.status.replicas, 5);
        assert_eq!(p.status.observed_generation, 3);
    }

    #[test]
    fn a_rolling_update_respects_surge_and_unavailability() {
        let v1 = dep(4, "1", "1", "v1");
        let v2 = dep(4, "1", "1", "v2");
        assert_ne!(template_hash(&v1), template_hash(&v2));
        let mut pods: Vec<Pod> = (0..4)
            .map(|i| pod_of(&v1, &format!("old{i}"), true))
            .collect();
        // Step 1: at most 5 pods in all (surge 1), at least 3 ready (unavailable 1).
        let p = plan(&v2, &pods);
        assert_eq!(p.create, 1);
        assert_eq!(
            p.delete.len(),
            1,
            "one ready old pod may go: 4 ready - (4 - 1)"
        );
        pods.retain(|x| !p.delete.contains(&x.metadata.name));
        pods.push(pod_of(&v2, "new0", false));
        // The new pod is not ready yet: nothing more may go, nothing more may come.
        let p = plan(&v2, &pods);
        assert_eq!((p.create, p.delete.len()), (1, 0), "{p:?}");
        // Simulate until done, checking the bounds at every step.
        let mut step = 0;
        loop {
            let p = plan(&v2, &pods);
            if p.create == 0 && p.delete.is_empty() {
                break;
            }
            pods.retain(|x| !p.delete.contains(&x.metadata.name));
            for _ in 0..p.create {
                pods.push(pod_of(&v2, &format!("new-s{step}-{}", pods.len()), false));
            }
            assert!(pods.len() <= 5, "above replicas + maxSurge: {}", pods.len());
            let ready = pods.iter().filter(|x| is_ready(x)).count();
            assert!(ready >= 3, "below replicas - maxUnavailable: {ready}");
            for x in pods.iter_mut() {
                // Pods become ready a step after they are created.
                if !is_ready(x) {
                    *x = pod_of(&v2, &x.metadata.name.clone(), true);
                    break;
                }
            }
            step += 1;
            assert!(step < 50, "the rollout does not converge");
        }
        let h2 = template_hash(&v2);
        assert_eq!(pods.len(), 4);
        assert!(
            pods.iter()
                .all(|x| x.metadata.labels[TEMPLATE_HASH_LABEL] == h2)
        );
    }

    /// A ReplicaSet of `d`'s template owning `pods` (their controller is set to it).
    fn set_of(d: &Deployment, uid: &str, replicas: i32, pods: &mut [Pod]) -> ReplicaSet {
        let mut rs = new_replicaset(d);
        rs.metadata.uid = uid.into();
        rs.spec.replicas = Some(replicas);
        for p in pods.iter_mut() {
            p.metadata.owner_references[0].uid = uid.into();
            p.metadata.owner_references[0].kind = "ReplicaSet".into();
        }
        rs
    }

    #[test]
    fn the_plan_becomes_replica_counts_and_old_sets_beyond_the_history_go() {
        let v1 = dep(4, "1", "1", "v1");
        let mut v2 = dep(4, "1", "1", "v2");
        v2.metadata.annotations = record_revision(&v2).unwrap();
        let mut old_pods: Vec<Pod> = (0..4)
            .map(|i| pod_of(&v1, &format!("old{i}"), true))
            .collect();
        let old = set_of(&v1, "rs1", 4, &mut old_pods);
        let new = set_of(&v2, "rs2", 0, &mut []);
        assert_eq!(new.metadata.name, format!("web-{}", template_hash(&v2)));
        assert_eq!(
            new.spec.selector.match_labels[TEMPLATE_HASH_LABEL],
            template_hash(&v2)
        );
        assert_eq!(new.metadata.annotations[REVISION_ANNOTATION], "1");
        let p = plan(&v2, &old_pods);
        let (targets, gone) = scale(&v2, &[old.clone(), new.clone()], &old_pods, &p);
        // One new pod (surge 1), one old one goes (unavailable 1).
        assert_eq!(targets[0].0, old.metadata.name);
        assert_eq!((targets[0].1, targets[1].1), (3, 1));
        assert!(gone.is_empty());
        // Done: the old set is idle; with revisionHistoryLimit 0 it is deleted.
        let mut new_pods: Vec<Pod> = (0..4)
            .map(|i| pod_of(&v2, &format!("new{i}"), true))
            .collect();
        let new = set_of(&v2, "rs2", 4, &mut new_pods);
        let old = set_of(&v1, "rs1", 0, &mut []);
        let p = plan(&v2, &new_pods);
        let (targets, gone) = scale(&v2, &[old.clone(), new.clone()], &new_pods, &p);
        assert_eq!((targets[0].1, targets[1].1), (0, 4));
        assert!(gone.is_empty(), "kept for history");
        let mut no_history = v2.clone();
        no_history.spec.revision_history_limit = Some(0);
        let (_, gone) = scale(&no_history, &[old.clone(), new], &new_pods, &p);
        assert_eq!(gone, [old.metadata.name]);
    }

    #[test]
    fn recreate_removes_old_before_creating_new() {
        let mut v2 = dep(2, "1", "1", "v2");
        v2.spec.strategy =
            Some(serde_json::from_value(serde_json::json!({"type": "Recreate"})).unwrap());
        let v1 = dep(2, "1", "1", "v1");
        let pods: Vec<Pod> = (0..2)
            .map(|i| pod_of(&v1, &format!("old{i}"), true))
            .collect();
        let p = plan(&v2, &pods);
        assert_eq!((p.create, p.delete.len()), (0, 2));
        let p = plan(&v2, &[]);
        assert_eq!(p.create, 2);
    }

    #[test]
    fn percentages_resolve_like_kubernetes() {
        let d = dep(10, "25%", "25%", "v1");
        assert_eq!(surge_and_unavailable(&d, 10), (3, 2));
        let d = dep(1, "0", "0", "v1");
        assert_eq!(surge_and_unavailable(&d, 1), (0, 1));
    }

    #[test]
    fn history_records_revisions_and_undo_makes_a_new_one() {
        let mut d = dep(2, "1", "1", "v1");
        d.spec.revision_history_limit = Some(2);
        d.metadata.annotations = record_revision(&d).unwrap();
        assert_eq!(d.metadata.annotations[REVISION_ANNOTATION], "1");
        assert!(
            record_revision(&d).is_none(),
            "an unchanged template records nothing"
        );
        for (i, img) in ["v2", "v3", "v4"].iter().enumerate() {
            d.spec.template.spec.containers[0].image = img.to_string();
            d.metadata.annotations = record_revision(&d).unwrap();
            assert_eq!(
                d.metadata.annotations[REVISION_ANNOTATION],
                (i + 2).to_string()
            );
        }
        let h = history(&d);
        assert_eq!(
            h.iter().map(|r| r.revision).collect::<Vec<_>>(),
            vec![2, 3, 4],
            "limit 2 keeps 2 old + current"
        );
        // Undo to revision 3: its template comes back as revision 5.
        d.spec.template = h[1].template.clone();
        d.metadata.annotations = record_revision(&d).unwrap();
        let h = history(&d);
        assert_eq!(
            h.iter().map(|r| r.revision).collect::<Vec<_>>(),
            vec![2, 4, 5]
        );
        assert_eq!(h[2].template.spec.containers[0].image, "v3");
    }

    #[test]
    fn new_pods_carry_the_owner_and_the_hash() {
        let d = dep(1, "1", "1", "v1");
        let p = new_pod(&d);
        assert_eq!(
            p.metadata.generate_name,
            format!("web-{}-", template_hash(&d))
        );
        assert_eq!(p.metadata.owner_references[0].uid, "d-uid");
        assert_eq!(p.metadata.labels["app"], "web");
        assert_eq!(owned(&d, std::slice::from_ref(&p)).len(), 1);
    }
}
