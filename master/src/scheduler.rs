//! The scheduler: binds pods without a node to a node.
//!
//! [`pick`] is the pure decision: filters (a list of small [`filter::Filter`] units) keep the
//! nodes a pod may run on, scorers ([`score::Scorer`]) rank them; a pod that fits nowhere
//! gets Kubernetes' message, `0/5 nodes are available: 3 Insufficient memory, 2 node(s)
//! didn't match Pod's node affinity/selector.` The async shell keeps a cache of nodes and
//! bound pods from store watches, binds with optimistic concurrency (a stale pod is a
//! conflict and is retried from the next event), and retries unschedulable pods when the
//! cluster changes (a node joins or changes, a pod goes away), not by polling.

pub mod filter;
mod pick;
pub mod score;
mod view;

pub use pick::{NoNode, Profile, feasible_to_find, pick, pick_some};
use view::sched_pod;
pub use view::{NodeView, PodView, Spread, Usage};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bramble_api::pod::Pod;
use bramble_api::{Kind, Object, Selector};
use tokio_util::sync::CancellationToken;

use crate::events::EventRecorder;
use crate::store::{Binding, Change, EventType, Op, Store, StoreError, Subresource, WatchFilter};

/// Writes events from a bounded queue, many at once (group commit); drops when full, as
/// Kubernetes' event broadcaster does under load.
fn spawn_event_writer(
    store: Store,
    shutdown: CancellationToken,
) -> tokio::sync::mpsc::Sender<Object> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Object>(16_384);
    tokio::spawn(crate::store::batch::write_in_batches(
        shutdown,
        (rx, 512),
        move |e| {
            let store = store.clone();
            async move {
                if let Err(e) = store.write(Op::Create(e)).await {
                    tracing::debug!(error = %e, "cannot record an event");
                }
            }
        },
    ));
    tx
}

/// A decided binding: (uid, namespace, name, node, what the pod takes of it).
type Bind = (String, String, String, String, Usage);

/// Bindings per concurrent batch.
const BIND_CHUNK: usize = 1024;

/// The nodes, in name order, in a vector (a search walks it without per-node lookups) with
/// an index by name.
#[derive(Default)]
struct NodeTable {
    list: Vec<NodeView>,
    index: HashMap<String, usize>,
}

impl NodeTable {
    fn clear(&mut self) {
        self.list.clear();
        self.index.clear();
    }

    fn reindex(&mut self) {
        self.index = self
            .list
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
    }

    /// Adds or replaces a node (nodes come and go rarely; pods are the hot path).
    fn insert(&mut self, view: NodeView) {
        if let Some(&i) = self.index.get(&view.name) {
            self.list[i] = view;
            return;
        }
        let at = self.list.partition_point(|n| n.name < view.name);
        self.list.insert(at, view);
        self.reindex();
    }

    fn remove(&mut self, name: &str) {
        if let Some(i) = self.index.get(name).copied() {
            self.list.remove(i);
            self.reindex();
        }
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut NodeView> {
        let i = *self.index.get(name)?;
        self.list.get_mut(i)
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    /// Every node, starting at position `start` and wrapping around.
    fn from(&self, start: usize) -> impl Iterator<Item = &NodeView> {
        let start = start.min(self.list.len());
        self.list[start..].iter().chain(self.list[..start].iter())
    }
}

/// Matching pods per node for the spread constraints of one scheduling round: counted from
/// the store the first time a (namespace, selector) comes up, then kept up to date as the
/// round places pods.
#[derive(Default)]
struct SpreadCounts {
    /// `namespace\nselector` → (namespace, selector, pods per node).
    groups: HashMap<String, (String, Selector, HashMap<String, usize>)>,
    /// Pods placed this round, their bindings not stored yet: uid → node.
    placed: HashMap<String, String>,
}

impl SpreadCounts {
    fn per_node(
        &mut self,
        store: &Store,
        bound: &HashMap<String, (Arc<str>, Usage)>,
        namespace: &str,
        selector: &Selector,
    ) -> &HashMap<String, usize> {
        let placed = &self.placed;
        let group = self
            .groups
            .entry(format!("{namespace}\n{selector}"))
            .or_insert_with(|| {
                let mut per_node: HashMap<String, usize> = HashMap::new();
                let (_, entries) = store.list(Kind::Pod, Some(namespace), selector);
                for e in entries {
                    let Some(p) = sched_pod(&e.json) else {
                        continue;
                    };
                    // Terminating and finished pods do not count (as in Kubernetes).
                    if p.metadata.deletion_timestamp.is_some() || finished(&p) {
                        continue;
                    }
                    let uid = &p.metadata.uid;
                    let node = if !p.spec.node_name.is_empty() {
                        p.spec.node_name
                    } else if let Some((node, _)) = bound.get(uid) {
                        node.to_string()
                    } else if let Some(node) = placed.get(uid) {
                        node.clone()
                    } else {
                        continue;
                    };
                    *per_node.entry(node).or_default() += 1;
                }
                (namespace.to_string(), selector.clone(), per_node)
            });
        &group.2
    }

    /// The round placed a pod: the groups it matches count it at once.
    fn place(&mut self, uid: &str, view: &PodView, node: &str) {
        self.placed.insert(uid.to_string(), node.to_string());
        for (ns, sel, per_node) in self.groups.values_mut() {
            if *ns == view.namespace && sel.matches(&view.labels) {
                *per_node.entry(node.to_string()).or_default() += 1;
            }
        }
    }
}

/// One shared copy of each node name and owner uid the bound pods name; the ones no pod
/// names any more are dropped once the table has doubled since the last sweep.
#[derive(Default)]
struct Names {
    set: HashSet<Arc<str>>,
    swept: usize,
}

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.set.get(name) {
            return n.clone();
        }
        if self.set.len() > 2 * self.swept + 64 {
            self.set.retain(|n| Arc::strong_count(n) > 1);
            self.swept = self.set.len();
        }
        let n: Arc<str> = Arc::from(name);
        self.set.insert(n.clone());
        n
    }

    /// The usage with its owner's shared copy.
    fn usage(&mut self, mut u: Usage) -> Usage {
        u.owner = u.owner.map(|o| self.get(&o));
        u
    }
}

fn finished(p: &Pod) -> bool {
    p.status
        .as_ref()
        .is_some_and(|s| s.phase == "Succeeded" || s.phase == "Failed")
}

/// The scheduler's cache and queue.
struct Scheduler {
    store: Store,
    events: EventRecorder,
    profile: Profile,
    nodes: NodeTable,
    /// Bound pods: uid → (node, what it takes there).
    bound: HashMap<String, (Arc<str>, Usage)>,
    /// Node names and owner uids, one copy each for all the bound pods that name them.
    names: Names,
    /// Pods waiting for a node: uid → (namespace, name, what scheduling needs of it). The
    /// pod itself is read from the store only to bind it: 10,000 pending pods stay small.
    pending: BTreeMap<String, (String, String, PodView)>,
    /// How many pending pods have spread constraints (a bound pod can let them in; counted so
    /// that each bind event does not walk 10,000 pending pods).
    spread_pending: usize,
    /// The last unschedulable message per pod (to write conditions and events on change only).
    last_reason: HashMap<String, String>,
    /// Where the next node search starts.
    next_start: usize,
    /// Scheduled events go out on their own task, best effort: binding never waits on them.
    event_tx: tokio::sync::mpsc::Sender<Object>,
}

/// Runs the scheduler until `shutdown`.
pub async fn run(store: Store, shutdown: CancellationToken) {
    let store_for_events = store.clone();
    let mut s = Scheduler {
        events: EventRecorder::new(store.clone(), "default-scheduler"),
        store,
        profile: Profile::default(),
        nodes: NodeTable::default(),
        bound: HashMap::new(),
        names: Names::default(),
        pending: BTreeMap::new(),
        spread_pending: 0,
        last_reason: HashMap::new(),
        next_start: 0,
        event_tx: spawn_event_writer(store_for_events, shutdown.clone()),
    };
    loop {
        let [mut nodes_w, mut pods_w, mut images_w] = match s.relist() {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "scheduler cannot watch the store");
                return;
            }
        };
        s.schedule_all().await;
        loop {
            let changed = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = nodes_w.next() => c,
                c = pods_w.next() => c,
                c = images_w.next() => match c {
                    Ok(_) => {
                        if s.on_image_change() {
                            s.schedule_all().await;
                        }
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            match changed {
                Ok(c) => {
                    if s.on_change(&c) {
                        s.schedule_all().await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler watch ended; re-listing");
                    break;
                }
            }
        }
    }
}

impl Scheduler {
    fn relist(&mut self) -> Result<[crate::store::Watch; 3], StoreError> {
        self.nodes.clear();
        self.bound.clear();
        self.pending.clear();
        self.spread_pending = 0;
        let (nrev, nodes) = self.store.list(Kind::Node, None, &Selector::everything());
        for e in nodes {
            if let Ok(Object::Node(n)) = e.object() {
                self.nodes.insert(NodeView::of(&n));
            }
        }
        let (prev, pods) = self.store.list(Kind::Pod, None, &Selector::everything());
        for e in pods {
            if let Some(p) = sched_pod(&e.json) {
                self.on_pod(&p, false);
            }
        }
        let all = WatchFilter::all;
        Ok([
            self.store.watch(all(Kind::Node), Some(nrev))?,
            self.store.watch(all(Kind::Pod), Some(prev))?,
            // From the first list on: a change seen twice only recomputes.
            self.store.watch(all(Kind::Image), Some(nrev))?,
        ])
    }

    /// Updates the cache; returns whether pending pods deserve a (re)try: a node appeared or
    /// changed, resources were freed, or a pod is newly pending.
    fn on_change(&mut self, c: &Change) -> bool {
        if c.entry.kind == Kind::Pod {
            return match sched_pod(&c.entry.json) {
                Some(p) => self.on_pod(&p, c.type_ == EventType::Deleted),
                None => false,
            };
        }
        match c.entry.object() {
            Ok(Object::Node(n)) => {
                if c.type_ == EventType::Deleted {
                    self.nodes.remove(&n.metadata.name);
                    return false;
                }
                let mut view = NodeView::of(&n);
                // Keep what is bound there.
                for (node, p) in self.bound.values() {
                    if **node == *view.name {
                        view.add(p, 1);
                    }
                }
                self.nodes.insert(view);
                true
            }
            Ok(Object::Pod(p)) => self.on_pod(&p, c.type_ == EventType::Deleted),
            _ => false,
        }
    }

    /// The platforms of the pod's images, from the Image objects of imported ones.
    fn image_platforms(
        &self,
        images: &[String],
    ) -> Vec<(String, Vec<bramble_api::image::ImagePlatform>)> {
        images
            .iter()
            .filter_map(|image| {
                let r = bramble_api::image::ImageRef::parse(image).ok()?;
                match self.store.get(Kind::Image, "", &r.object_name())?.object() {
                    Ok(Object::Image(i)) => Some((image.clone(), i.spec.platforms)),
                    _ => None,
                }
            })
            .collect()
    }

    /// An image was imported, replaced or removed: pending pods see its platforms anew.
    fn on_image_change(&mut self) -> bool {
        let uids: Vec<String> = self.pending.keys().cloned().collect();
        for uid in uids {
            let images = match self.pending.get(&uid) {
                Some((_, _, v)) => v.images.clone(),
                None => continue,
            };
            let platforms = self.image_platforms(&images);
            if let Some((_, _, v)) = self.pending.get_mut(&uid) {
                v.image_platforms = platforms;
            }
        }
        !self.pending.is_empty()
    }

    fn on_pod(&mut self, p: &Pod, deleted: bool) -> bool {
        let uid = p.metadata.uid.clone();
        if deleted || finished(p) {
            self.unpend(&uid);
            self.last_reason.remove(&uid);
            if let Some((node, usage)) = self.bound.remove(&uid) {
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.add(&usage, -1);
                }
                return true;
            }
            return false;
        }
        if p.spec.node_name.is_empty() {
            if p.metadata.deletion_timestamp.is_none() {
                let new = !self.pending.contains_key(&uid);
                // The pod as last seen: a bind of a stale copy is a conflict, retried on the
                // pod's next event.
                let mut view = PodView::of(p);
                view.image_platforms = self.image_platforms(&view.images);
                self.spread_pending += usize::from(!view.spread.is_empty());
                let old = self.pending.insert(
                    uid,
                    (p.metadata.namespace.clone(), p.metadata.name.clone(), view),
                );
                self.spread_pending -= old.map_or(0, |(_, _, v)| usize::from(!v.spread.is_empty()));
                return new;
            }
            return false;
        }
        self.unpend(&uid);
        self.last_reason.remove(&uid);
        if !self.bound.contains_key(&uid) {
            let usage = self.names.usage(PodView::of(p).usage());
            if let Some(n) = self.nodes.get_mut(&p.spec.node_name) {
                n.add(&usage, 1);
            }
            let node = self.names.get(&p.spec.node_name);
            self.bound.insert(uid, (node, usage));
            // A pod bound elsewhere (by another scheduler, or a DaemonSet) can lift the
            // smallest domain's count: pods waiting on a spread constraint try again.
            return self.spread_pending > 0;
        }
        false
    }

    /// A pod leaves the pending set.
    fn unpend(&mut self, uid: &str) {
        if let Some((_, _, v)) = self.pending.remove(uid) {
            self.spread_pending -= usize::from(!v.spread.is_empty());
        }
    }

    /// Counts, for each of the pod's spread constraints, the matching pods in each domain
    /// of the eligible nodes, as the filters and scorers read them.
    fn fill_spread(&self, view: &mut PodView, counts: &mut SpreadCounts) {
        let none = HashMap::new();
        for i in 0..view.spread.len() {
            let s = &view.spread[i];
            let per_node = match &s.selector {
                Some(sel) => counts.per_node(&self.store, &self.bound, &view.namespace, sel),
                None => &none,
            };
            let mut domains: HashMap<String, usize> = HashMap::new();
            for n in &self.nodes.list {
                let Some(value) = n.labels.get(&s.key) else {
                    continue;
                };
                let fits = |f: &dyn filter::Filter| !f.applies(view) || f.check(view, n).is_ok();
                if s.honor_affinity && !(fits(&filter::NodeSelector) && fits(&filter::NodeAffinity))
                {
                    continue;
                }
                if s.honor_taints && !fits(&filter::Taints) {
                    continue;
                }
                *domains.entry(value.clone()).or_default() +=
                    per_node.get(&n.name).copied().unwrap_or(0);
            }
            let min = if domains.len() < s.min_domains {
                0
            } else {
                domains.values().copied().min().unwrap_or(0)
            };
            let s = &mut view.spread[i];
            s.domains = domains;
            s.min = min;
        }
    }

    /// Rounds until one binds nothing that a waiting pod's spread constraint could count
    /// (a bound pod can lift the smallest domain; the watch event of a pod this scheduler
    /// bound does not retry, as the binding is already in the cache).
    async fn schedule_all(&mut self) {
        while self.schedule_pending().await && self.spread_pending > 0 {}
    }

    /// One round over the pending pods; returns whether it bound any.
    async fn schedule_pending(&mut self) -> bool {
        let pending: Vec<(String, (String, String, PodView))> = self
            .pending
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Decisions are made one pod after another (the cache accounts each at once); every
        // 1,024 of them go to the store as concurrent bindings on their own task while the
        // next decisions are made, and the store commits them in groups.
        let t0 = std::time::Instant::now();
        let mut binds: Vec<Bind> = Vec::new();
        let mut inflight = Vec::new();
        let node_count = self.nodes.len();
        let enough = feasible_to_find(node_count);
        let mut spread = SpreadCounts::default();
        for (uid, (ns, name, mut view)) in pending {
            if !view.spread.is_empty() {
                self.fill_spread(&mut view, &mut spread);
            }
            // Start where the last search stopped, so sampling visits every node in turn.
            self.next_start = if node_count == 0 {
                0
            } else {
                self.next_start % node_count
            };
            let picked = pick_some(
                &view,
                self.nodes.from(self.next_start),
                enough,
                &self.profile,
            );
            self.next_start += enough.min(node_count).max(1);
            match picked {
                Ok(node) => {
                    let usage = view.usage();
                    if let Some(n) = self.nodes.get_mut(&node) {
                        n.add(&usage, 1);
                    }
                    spread.place(&uid, &view, &node);
                    self.unpend(&uid);
                    self.last_reason.remove(&uid);
                    binds.push((uid, ns, name, node, usage));
                    if binds.len() == BIND_CHUNK {
                        inflight.push(self.send_binds(std::mem::take(&mut binds)));
                    }
                }
                Err(no_node) => {
                    let why = no_node.to_string();
                    if self.last_reason.get(&uid) == Some(&why) {
                        continue;
                    }
                    // The pod as stored now; gone or bound meanwhile: nothing to do.
                    match self.store.get(Kind::Pod, &ns, &name).map(|e| e.object()) {
                        Some(Ok(Object::Pod(pod)))
                            if pod.metadata.uid == uid && pod.spec.node_name.is_empty() =>
                        {
                            self.last_reason.insert(uid.clone(), why.clone());
                            self.mark_unschedulable(pod, &why).await;
                        }
                        _ => {
                            self.unpend(&uid);
                        }
                    }
                }
            }
        }
        if !binds.is_empty() {
            inflight.push(self.send_binds(binds));
        }
        tracing::debug!(took = ?t0.elapsed(), "scheduling decisions made");
        // Scheduled events go out once the round's bindings are written, so that they never
        // compete with bindings for the store's writer.
        let mut events = Vec::new();
        for task in inflight {
            let Ok(done) = task.await else { continue };
            for ((uid, ns, name, node, usage), r) in done {
                match r {
                    Ok(_) => {
                        let msg = format!("Successfully assigned {ns}/{name} to {node}");
                        let mut involved = Pod::default();
                        involved.metadata.name = name.clone();
                        involved.metadata.namespace = ns;
                        involved.metadata.uid = uid.clone();
                        events.push(EventRecorder::event(
                            Object::Pod(involved),
                            "Normal",
                            "Scheduled",
                            &msg,
                            "default-scheduler",
                        ));
                        let usage = self.names.usage(usage);
                        self.bound.insert(uid, (self.names.get(&node), usage));
                    }
                    Err(e) => {
                        // Changed under us (or gone): undo; the pod's next event brings it back.
                        if let Some(n) = self.nodes.get_mut(&node) {
                            n.add(&usage, -1);
                        }
                        if !matches!(e, StoreError::Conflict { .. } | StoreError::NotFound { .. }) {
                            tracing::warn!(pod = %name, error = %e, "cannot bind");
                        }
                    }
                }
            }
        }
        let bound_any = !events.is_empty();
        for e in events {
            if self.event_tx.try_send(e).is_err() {
                tracing::debug!("event queue full: a Scheduled event was dropped");
            }
        }
        bound_any
    }

    /// Writes a chunk of bindings concurrently on a task of its own.
    fn send_binds(
        &self,
        chunk: Vec<Bind>,
    ) -> tokio::task::JoinHandle<Vec<(Bind, Result<crate::store::Outcome, StoreError>)>> {
        let store = self.store.clone();
        tokio::spawn(async move {
            let writes = chunk.iter().map(|(uid, ns, name, node, _)| {
                store.write(Op::Bind(Binding {
                    namespace: ns.clone(),
                    name: name.clone(),
                    uid: uid.clone(),
                    node: node.clone(),
                }))
            });
            let results = futures_util::future::join_all(writes).await;
            chunk.into_iter().zip(results).collect()
        })
    }

    async fn mark_unschedulable(&mut self, mut pod: Pod, why: &str) {
        let now = bramble_api::time::now_secs();
        let mut st = pod.status.clone().unwrap_or_default();
        st.conditions.retain(|c| c.type_ != "PodScheduled");
        st.conditions.push(bramble_api::meta::Condition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: "Unschedulable".into(),
            message: why.to_string(),
            last_transition_time: Some(bramble_api::time::format_rfc3339(now)),
            ..Default::default()
        });
        if st.phase.is_empty() {
            st.phase = "Pending".into();
        }
        pod.status = Some(st);
        pod.metadata.resource_version.clear();
        let obj = Object::Pod(pod);
        if let Err(e) = self
            .store
            .write(Op::Update(obj.clone(), Subresource::Status))
            .await
        {
            tracing::debug!(error = %e, "cannot mark a pod unschedulable");
        }
        self.events
            .record(obj, "Warning", "FailedScheduling", why)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: i64, mem: i64) -> NodeView {
        NodeView {
            name: name.into(),
            ready: true,
            alloc_cpu_m: cpu,
            alloc_mem: mem,
            alloc_pods: 110,
            ..Default::default()
        }
    }

    #[test]
    fn the_light_decoding_keeps_everything_scheduling_reads() {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: ns\n  uid: u1\n  ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: d, uid: o1, controller: true}]\nspec:\n  nodeSelector: {zone: a}\n  tolerations: [{key: k, operator: Exists, effect: NoSchedule}]\n  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms: [{matchExpressions: [{key: arch, operator: In, values: [arm64]}]}]\n  containers:\n  - name: c\n    image: web:1\n    command: [sh]\n    ports: [{containerPort: 80, hostPort: 8080}]\n    resources: {requests: {cpu: 250m, memory: 64Mi}, limits: {memory: 128Mi}}\n";
        let full = match bramble_api::manifest::parse_manifests(yaml)
            .unwrap()
            .remove(0)
            .object
        {
            Object::Pod(p) => p,
            _ => unreachable!(),
        };
        let light = sched_pod(&Object::Pod(full.clone()).to_json()).unwrap();
        let (a, b) = (PodView::of(&full), PodView::of(&light));
        assert_eq!(
            (a.cpu_m, a.mem, a.owner.clone()),
            (b.cpu_m, b.mem, b.owner.clone())
        );
        assert_eq!(a.node_selector, b.node_selector);
        assert_eq!(a.host_ports, b.host_ports);
        assert_eq!(a.tolerations, b.tolerations);
        assert_eq!(a.required_affinity, b.required_affinity);
        assert_eq!(light.metadata.uid, "u1");
        assert_eq!(light.spec.containers[0].image, "web:1");
    }

    #[test]
    fn picks_a_fitting_node_and_explains_failures_per_cause() {
        let p = Profile::default();
        let pod = PodView {
            cpu_m: 500,
            mem: 2 << 30,
            node_selector: [("zone".into(), "a".into())].into(),
            ..Default::default()
        };
        let mut a = node("a", 4000, 4 << 30);
        a.labels.insert("zone".into(), "a".into());
        let b = node("b", 4000, 8 << 30);
        assert_eq!(pick(&pod, [&a, &b], &p).unwrap(), "a");
        let mut small: Vec<NodeView> = (0..3)
            .map(|i| {
                let mut n = node(&format!("s{i}"), 4000, 1 << 30);
                n.labels.insert("zone".into(), "a".into());
                n
            })
            .collect();
        small.push(node("x", 4000, 8 << 30));
        small.push(node("y", 4000, 8 << 30));
        let err = pick(&pod, small.iter(), &p).unwrap_err().to_string();
        assert_eq!(
            err,
            "0/5 nodes are available: 3 Insufficient memory, 2 node(s) didn't match Pod's node affinity/selector."
        );
        assert_eq!(
            pick(&pod, std::iter::empty(), &p).unwrap_err().to_string(),
            "0/0 nodes are available."
        );
    }

    #[test]
    fn sampling_finds_enough_nodes_like_kubernetes() {
        assert_eq!(feasible_to_find(50), 50);
        assert_eq!(feasible_to_find(1000), 420);
        assert_eq!(feasible_to_find(5000), 500);
        assert_eq!(feasible_to_find(200), 100);
        let p = Profile::default();
        let nodes: Vec<NodeView> = (0..10)
            .map(|i| node(&format!("n{i}"), 4000, 4 << 30))
            .collect();
        let pod = PodView {
            cpu_m: 100,
            ..Default::default()
        };
        // With enough = 1, the first feasible node in the given order wins.
        assert_eq!(pick_some(&pod, nodes[3..].iter(), 1, &p).unwrap(), "n3");
    }

    #[test]
    fn spreads_an_owners_pods_evenly() {
        let p = Profile::default();
        let mut nodes: Vec<NodeView> = (0..3)
            .map(|i| node(&format!("n{i}"), 4000, 4 << 30))
            .collect();
        let pod = PodView {
            cpu_m: 100,
            mem: 64 << 20,
            owner: Some("d".into()),
            ..Default::default()
        };
        for _ in 0..9 {
            let chosen = pick(&pod, nodes.iter(), &p).unwrap();
            nodes
                .iter_mut()
                .find(|n| n.name == chosen)
                .unwrap()
                .add(&pod.usage(), 1);
        }
        let counts: Vec<i64> = nodes.iter().map(|n| n.pods).collect();
        assert_eq!(counts, vec![3, 3, 3]);
    }

    #[test]
    fn pod_view_sums_requests_and_falls_back_to_limits() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "d", "uid": "u", "controller": true}]},
            "spec": {"containers": [
                {"name": "a", "image": "i", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}, "ports": [{"containerPort": 80, "hostPort": 8080}]},
                {"name": "b", "image": "i", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}
            ]}
        }))
        .unwrap();
        let v = PodView::of(&pod);
        assert_eq!(v.cpu_m, 1250);
        assert_eq!(v.mem, (64 << 20) + (1 << 30));
        assert_eq!(v.host_ports, vec![(8080, "TCP".to_string())]);
        assert_eq!(v.owner.as_deref(), Some("u"));
    }
}
