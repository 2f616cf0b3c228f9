//! The DaemonSet controller: one pod of the template on every node the template fits
//! (`nodeSelector`, required node affinity, taints against the template's tolerations plus
//! those Kubernetes' DaemonSet controller adds), placed on the node directly as soon as the
//! node exists, and rolled to a new template with `maxUnavailable` or `maxSurge`
//! (`RollingUpdate`), or only when the user deletes an old pod (`OnDelete`).
//!
//! [`plan`] is pure; [`DaemonSets`] is the shell on the shared controller loop.

use std::collections::BTreeMap;

use bramble_api::daemonset::{DaemonSet, DaemonSetStatus, daemon_tolerations};
use bramble_api::meta::{IntOrString, OwnerReference};
use bramble_api::node::Node;
use bramble_api::pod::Pod;
use bramble_api::{Kind, Object, Selector};

use super::Controller;
use super::deployment::is_ready;
use super::objects::{OwnerKey, Owners, delete, pods_of};
use crate::events::EventRecorder;
use crate::store::{Change, EventType, Op, Store, StoreError, Subresource};

/// The label that ties a daemon pod to the template it was made from, as Kubernetes names it.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";

/// A stable hash of the DaemonSet's pod template (FNV-1a over its JSON), 10 hex characters.
pub fn template_hash(ds: &DaemonSet) -> String {
    let json = serde_json::to_vec(&ds.spec.template).unwrap_or_default();
    format!("{:010x}", bramble_support::fnv64(json) & 0xff_ffff_ffff)
}

/// What to do now.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Nodes to place a new-template pod on.
    pub create: Vec<String>,
    /// Names of pods to delete.
    pub delete: Vec<String>,
    pub status: DaemonSetStatus,
}

/// Whether the template may run on the node, as the DaemonSet controller decides it.
pub fn fits(ds: &DaemonSet, node: &Node) -> bool {
    let spec = &ds.spec.template.spec;
    let labels = &node.metadata.labels;
    if !spec
        .node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if required.is_some_and(|r| !r.matches(labels)) {
        return false;
    }
    let mut tolerations = spec.tolerations.clone();
    tolerations.extend(daemon_tolerations());
    node.spec
        .taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| tolerations.iter().any(|tol| t.tolerated_by(tol)))
}

/// `N` or `N%` of `total`, percentages rounded up (as Kubernetes does for DaemonSets).
fn resolve(v: Option<&IntOrString>, total: i32, default: i32) -> i32 {
    match v {
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            match s.strip_suffix('%').and_then(|n| n.parse::<i64>().ok()) {
                Some(p) => ((i64::from(total) * p + 99) / 100) as i32,
                None => s.parse().unwrap_or(default),
            }
        }
        None => default,
    }
}

fn creation_order(p: &Pod) -> (Option<String>, String) {
    (
        p.metadata.creation_timestamp.clone(),
        p.metadata.name.clone(),
    )
}

/// The pods that are not stopping, oldest first.
fn live<'a>(v: &[&'a Pod]) -> Vec<&'a Pod> {
    let mut l: Vec<&Pod> = v
        .iter()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    l.sort_by_key(|p| creation_order(p));
    l
}

/// Plans one step: `pods` are the DaemonSet's pods (terminating ones included: a node whose
/// old pod is still stopping gets its new one only once it is gone, so two daemons never
/// hold the node's ports at once).
pub fn plan(ds: &DaemonSet, nodes: &[Node], pods: &[Pod]) -> Plan {
    let hash = template_hash(ds);
    let on_delete = ds
        .spec
        .update_strategy
        .as_ref()
        .is_some_and(|s| s.type_ == "OnDelete");
    let ru = ds
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let mut by_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for p in pods {
        by_node
            .entry(p.spec.node_name.as_str())
            .or_default()
            .push(p);
    }
    let wanted: BTreeMap<&str, bool> = nodes
        .iter()
        .map(|n| (n.metadata.name.as_str(), fits(ds, n)))
        .collect();
    let desired = wanted.values().filter(|w| **w).count() as i32;
    let max_unavailable = resolve(ru.and_then(|r| r.max_unavailable.as_ref()), desired, 1).max(0);
    let max_surge = resolve(ru.and_then(|r| r.max_surge.as_ref()), desired, 0).max(0);
    let current = |p: &&Pod| p.metadata.labels.get(REVISION_HASH_LABEL) == Some(&hash);

    let mut create = Vec::new();
    let mut delete = Vec::new();
    let mut status = DaemonSetStatus {
        desired_number_scheduled: desired,
        observed_generation: ds.metadata.generation,
        ..Default::default()
    };
    // Nodes whose daemon is not available now; each old pod taken down adds one.
    let mut unavailable = 0;
    let mut surging = 0;
    // Old pods that may be replaced: (ready, node, pod name).
    let mut old_ready: Vec<(&str, &str)> = Vec::new();
    for (node, want) in &wanted {
        let pods = by_node.get(node).map(Vec::as_slice).unwrap_or_default();
        let alive = live(pods);
        let stopping = alive.len() < pods.len();
        if !want {
            if !alive.is_empty() {
                status.number_misscheduled += 1;
            }
            delete.extend(alive.iter().map(|p| p.metadata.name.clone()));
            continue;
        }
        if !alive.is_empty() {
            status.current_number_scheduled += 1;
        }
        let (new, old): (Vec<&Pod>, Vec<&Pod>) = alive.iter().copied().partition(|p| current(p));
        let ready_new = new.iter().any(|p| is_ready(p));
        let ready_any = alive.iter().any(|p| is_ready(p));
        if !new.is_empty() {
            status.updated_number_scheduled += 1;
        }
        if ready_any {
            status.number_ready += 1;
            status.number_available += 1;
        } else {
            unavailable += 1;
        }
        // One daemon per node: extras of the new template go (the oldest is kept).
        delete.extend(new.iter().skip(1).map(|p| p.metadata.name.clone()));
        match (new.is_empty(), old.is_empty()) {
            (true, true) => {
                if !stopping {
                    create.push(node.to_string());
                }
            }
            (false, _) => {
                // The new one is there: old ones go once it is ready (surge), or at once
                // when they are not ready anyway.
                for p in &old {
                    if ready_new || !is_ready(p) {
                        delete.push(p.metadata.name.clone());
                    }
                }
                if !old.is_empty() {
                    surging += 1;
                }
            }
            (true, false) => {
                delete.extend(old.iter().skip(1).map(|p| p.metadata.name.clone()));
                let p = old[0];
                if on_delete {
                    continue;
                }
                if !is_ready(p) {
                    // Not serving anyway: replace it at once.
                    delete.push(p.metadata.name.clone());
                } else {
                    old_ready.push((node, p.metadata.name.as_str()));
                }
            }
        }
    }
    if !on_delete {
        for (node, pod) in old_ready {
            if max_surge > 0 {
                if surging < max_surge {
                    surging += 1;
                    create.push(node.to_string());
                }
            } else if unavailable < max_unavailable {
                unavailable += 1;
                delete.push(pod.to_string());
            }
        }
    }
    // Pods on nodes that no longer exist.
    for (node, pods) in &by_node {
        if !wanted.contains_key(node) {
            delete.extend(live(pods).iter().map(|p| p.metadata.name.clone()));
        }
    }
    status.number_unavailable = (desired - status.number_available).max(0);
    delete.sort();
    delete.dedup();
    Plan {
        create,
        delete,
        status,
    }
}

/// A daemon pod of the template, bound to `node`.
pub fn new_pod(ds: &DaemonSet, node: &str) -> Pod {
    let hash = template_hash(ds);
    let mut p = Pod {
        metadata: ds.spec.template.metadata.clone(),
        spec: ds.spec.template.spec.clone(),
        ..Default::default()
    };
    p.metadata.name.clear();
    p.metadata.generate_name = format!("{}-", ds.metadata.name);
    p.metadata.namespace = ds.metadata.namespace.clone();
    p.metadata.labels.insert(REVISION_HASH_LABEL.into(), hash);
    p.metadata.owner_references = vec![OwnerReference::controller(Kind::DaemonSet, &ds.metadata)];
    for t in daemon_tolerations() {
        if !p.spec.tolerations.contains(&t) {
            p.spec.tolerations.push(t);
        }
    }
    p.spec.node_name = node.to_string();
    p
}

/// The DaemonSet controller's shell.
pub struct DaemonSets {
    events: EventRecorder,
    owners: Owners,
}

impl DaemonSets {
    pub fn new(store: &Store) -> Self {
        DaemonSets {
            events: EventRecorder::new(store.clone(), "daemonset-controller"),
            owners: Owners::default(),
        }
    }
}

impl Controller for DaemonSets {
    type Key = OwnerKey;
    const NAME: &'static str = "daemonset";
    const WATCHES: &'static [Kind] = &[Kind::DaemonSet, Kind::Pod, Kind::Node];

    async fn resync(&mut self, store: &Store) -> Vec<OwnerKey> {
        self.owners.resync(store, Kind::DaemonSet, Kind::Pod)
    }

    fn keys(&mut self, c: &Change) -> Vec<OwnerKey> {
        match c.entry.kind {
            // A node joins, changes labels or taints, or goes: every DaemonSet looks again.
            Kind::Node => self.owners.all(),
            Kind::DaemonSet | Kind::Pod => match c.entry.object() {
                Ok(Object::DaemonSet(d)) => {
                    vec![
                        self.owners
                            .owner_changed(&d.metadata, c.type_ == EventType::Deleted),
                    ]
                }
                Ok(Object::Pod(p)) => self.owners.child_changed(&p.metadata, Kind::DaemonSet),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    async fn reconcile(&mut self, store: &Store, key: &OwnerKey) -> Result<(), StoreError> {
        match key {
            OwnerKey::Owner { namespace, name } => {
                reconcile(store, &mut self.events, namespace, name).await
            }
            OwnerKey::Owned { namespace, uid } => {
                self.owners.collect(store, Kind::Pod, namespace, uid).await
            }
        }
    }
}

async fn reconcile(
    store: &Store,
    events: &mut EventRecorder,
    ns: &str,
    name: &str,
) -> Result<(), StoreError> {
    let Some(entry) = store.get(Kind::DaemonSet, ns, name) else {
        return Ok(());
    };
    let Object::DaemonSet(ds) = entry.object()? else {
        return Ok(());
    };
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    // The template's revision first (`rollout history|undo`), as for Deployments; the
    // update comes back as an event.
    if let Some(annotations) = super::deployment::record_revision_of(
        &ds.metadata,
        &ds.spec.template,
        template_hash(&ds),
        ds.spec.revision_history_limit,
    ) {
        let mut updated = ds.clone();
        updated.metadata.annotations = annotations;
        match store
            .write(Op::Update(Object::DaemonSet(updated), Subresource::Main))
            .await
        {
            Ok(_) | Err(StoreError::Conflict { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    let (_, node_entries) = store.list(Kind::Node, None, &Selector::everything());
    let nodes: Vec<Node> = node_entries
        .iter()
        .filter_map(|e| match e.object() {
            Ok(Object::Node(n)) => Some(n),
            _ => None,
        })
        .collect();
    let pods = pods_of(store, ns, &ds.spec.selector, &ds.metadata.uid);
    let plan = plan(&ds, &nodes, &pods);
    for node in &plan.create {
        store
            .write(Op::Create(Object::Pod(new_pod(&ds, node))))
            .await?;
    }
    if !plan.create.is_empty() {
        let msg = format!(
            "Created {} daemon pod(s) on {}",
            plan.create.len(),
            plan.create.join(", ")
        );
        events
            .record(
                Object::DaemonSet(ds.clone()),
                "Normal",
                "SuccessfulCreate",
                &msg,
            )
            .await;
    }
    for pod in &plan.delete {
        delete(store, Kind::Pod, ns, pod).await?;
    }
    if !plan.delete.is_empty() {
        let msg = format!("Deleted daemon pod(s): {}", plan.delete.join(", "));
        events
            .record(
                Object::DaemonSet(ds.clone()),
                "Normal",
                "SuccessfulDelete",
                &msg,
            )
            .await;
    }
    if ds.status.as_ref() != Some(&plan.status) {
        let mut updated = ds;
        updated.status = Some(plan.status);
        updated.metadata.resource_version.clear();
        store
            .write(Op::Update(Object::DaemonSet(updated), Subresource::Status))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(strategy: serde_json::Value, image: &str) -> DaemonSet {
        let mut d: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "agent", "namespace": "default", "generation": 2},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "updateStrategy": strategy,
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {
                    "nodeSelector": {"sensor": "yes"},
                    "containers": [{"name": "c", "image": image}]}}
            }
        }))
        .unwrap();
        d.metadata.uid = "ds-uid".into();
        d
    }

    fn node(name: &str, sensor: bool, taint: Option<(&str, &str)>) -> Node {
        let mut n = Node::default();
        n.metadata.name = name.into();
        if sensor {
            n.metadata.labels.insert("sensor".into(), "yes".into());
        }
        if let Some((key, effect)) = taint {
            n.spec.taints.push(bramble_api::node::Taint {
                key: key.into(),
                effect: effect.into(),
                ..Default::default()
            });
        }
        n
    }

    fn pod(d: &DaemonSet, name: &str, node: &str, ready: bool) -> Pod {
        let mut p = new_pod(d, node);
        p.metadata.name = name.into();
        p.metadata.creation_timestamp = Some("2026-01-01T00:00:00Z".into());
        let status = if ready { "True" } else { "False" };
        p.status = Some(
            serde_json::from_value(serde_json::json!({"phase": "Running", "conditions": [{"type": "Ready", "status": status}]}))
                .unwrap(),
        );
        p
    }

    #[test]
    fn one_pod_per_fitting_node_including_cordoned_and_not_ready_ones() {
        let d = ds(serde_json::json!({}), "v1");
        let nodes = vec![
            node("a", true, None),
            node(
                "b",
                true,
                Some(("node.kubernetes.io/unschedulable", "NoSchedule")),
            ),
            node(
                "c",
                true,
                Some(("node.kubernetes.io/unreachable", "NoExecute")),
            ),
            node("d", false, None),
            node("e", true, Some(("dedicated", "NoSchedule"))),
        ];
        let p = plan(&d, &nodes, &[]);
        assert_eq!(p.create, ["a", "b", "c"]);
        assert_eq!(p.status.desired_number_scheduled, 3);
        assert_eq!(p.status.number_unavailable, 3);
        // Placed pods: nothing more to do; a pod on a node that stopped fitting, or on a
        // node that is gone, is deleted.
        let pods = vec![
            pod(&d, "pa", "a", true),
            pod(&d, "pb", "b", true),
            pod(&d, "pc", "c", false),
            pod(&d, "pd", "d", true),
            pod(&d, "pz", "gone", true),
        ];
        let p = plan(&d, &nodes, &pods);
        assert!(p.create.is_empty(), "{:?}", p.create);
        assert_eq!(p.delete, ["pd", "pz"]);
        assert_eq!(
            (
                p.status.current_number_scheduled,
                p.status.number_ready,
                p.status.number_misscheduled,
                p.status.updated_number_scheduled
            ),
            (3, 2, 1, 3)
        );
        // Pods made by the controller carry the daemon tolerations and their node.
        let made = new_pod(&d, "a");
        assert_eq!(made.spec.node_name, "a");
        assert!(
            made.spec
                .tolerations
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unreachable")
        );
    }

    #[test]
    fn a_rolling_update_stays_within_max_unavailable_and_waits_for_stopping_pods() {
        let old = ds(
            serde_json::json!({"rollingUpdate": {"maxUnavailable": 1}}),
            "v1",
        );
        let new = ds(
            serde_json::json!({"rollingUpdate": {"maxUnavailable": 1}}),
            "v2",
        );
        let nodes: Vec<Node> = ["a", "b", "c"]
            .iter()
            .map(|n| node(n, true, None))
            .collect();
        let pods: Vec<Pod> = ["a", "b", "c"]
            .iter()
            .map(|n| pod(&old, &format!("p{n}"), n, true))
            .collect();
        let p = plan(&new, &nodes, &pods);
        assert_eq!(p.delete, ["pa"], "one at a time");
        assert!(p.create.is_empty());
        // pa is stopping: no new pod on a yet, and no second deletion.
        let mut stopping = pods.clone();
        stopping[0].metadata.deletion_timestamp = Some("2026-01-01T00:01:00Z".into());
        let p = plan(&new, &nodes, &stopping);
        assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
        // pa is gone: its replacement is made; b waits until it is ready.
        let rest = pods[1..].to_vec();
        let p = plan(&new, &nodes, &rest);
        assert_eq!(p.create, ["a"]);
        assert!(p.delete.is_empty());
        let mut with_new = rest.clone();
        with_new.push(pod(&new, "pa2", "a", false));
        let p = plan(&new, &nodes, &with_new);
        assert!(p.delete.is_empty() && p.create.is_empty(), "{p:?}");
        with_new.last_mut().unwrap().status = pod(&new, "x", "a", true).status;
        let p = plan(&new, &nodes, &with_new);
        assert_eq!(p.delete, ["pb"]);
        assert_eq!(p.status.updated_number_scheduled, 1);
        // maxUnavailable 2: two at a time.
        let wide = ds(
            serde_json::json!({"rollingUpdate": {"maxUnavailable": 2}}),
            "v2",
        );
        assert_eq!(plan(&wide, &nodes, &pods).delete, ["pa", "pb"]);
    }

    #[test]
    fn surge_adds_the_new_pod_before_the_old_goes_and_on_delete_waits() {
        let old = ds(serde_json::json!({}), "v1");
        let surge = ds(
            serde_json::json!({"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
            "v2",
        );
        let nodes: Vec<Node> = ["a", "b"].iter().map(|n| node(n, true, None)).collect();
        let pods: Vec<Pod> = ["a", "b"]
            .iter()
            .map(|n| pod(&old, &format!("p{n}"), n, true))
            .collect();
        let p = plan(&surge, &nodes, &pods);
        assert_eq!(p.create, ["a"]);
        assert!(p.delete.is_empty());
        let mut more = pods.clone();
        more.push(pod(&surge, "pa2", "a", true));
        let p = plan(&surge, &nodes, &more);
        assert_eq!(
            p.delete,
            ["pa"],
            "the old one goes once the new one is ready"
        );
        let on_delete = ds(serde_json::json!({"type": "OnDelete"}), "v2");
        let p = plan(&on_delete, &nodes, &pods);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.status.updated_number_scheduled, 0);
        // The user deleted pa: the new template goes there.
        let p = plan(&on_delete, &nodes, &pods[1..]);
        assert_eq!(p.create, ["a"]);
    }
}
