//! What the scheduler knows of nodes and pods: views decoded once per change, holding only
//! what filters and scorers read (a relist of 10,000 pods decodes only these fields).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bramble_api::Selector;
use bramble_api::node::{Node, Taint};
use bramble_api::pod::{Pod, Toleration, TopologySpreadConstraint};

/// What the scheduler knows of a node.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    pub unschedulable: bool,
    pub taints: Vec<Taint>,
    pub alloc_cpu_m: i64,
    pub alloc_mem: i64,
    pub alloc_pods: i64,
    pub used_cpu_m: i64,
    pub used_mem: i64,
    pub pods: i64,
    pub used_ports: BTreeSet<(i32, String)>,
    /// Pods per owner uid, for spreading.
    pub owner_counts: HashMap<Arc<str>, usize>,
}

/// What the scheduler needs of a pod.
#[derive(Debug, Clone, Default)]
pub struct PodView {
    pub cpu_m: i64,
    pub mem: i64,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub host_ports: Vec<(i32, String)>,
    pub owner: Option<Arc<str>>,
    pub required_affinity: Option<bramble_api::pod::NodeSelector>,
    /// The pod's container images.
    pub images: Vec<String>,
    /// The platforms of each of the pod's images that the master holds.
    pub image_platforms: Vec<(String, Vec<bramble_api::image::ImagePlatform>)>,
    /// The pod's namespace and labels: spreading counts the pods a round places (pending
    /// pods only; a bound pod's view drops them).
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// The pod's topology spread constraints, their domains counted by the scheduler's
    /// shell before each decision.
    pub spread: Vec<Spread>,
}

/// One `topologySpreadConstraints` entry of a pod, with the count of matching pods in each
/// domain (each value of the topology key among the eligible nodes).
#[derive(Debug, Clone, Default)]
pub struct Spread {
    pub key: String,
    pub max_skew: usize,
    /// `DoNotSchedule` (a filter) rather than `ScheduleAnyway` (a score).
    pub hard: bool,
    pub min_domains: usize,
    /// Whether the pod's node selector and required affinity limit the domains (`Honor`).
    pub honor_affinity: bool,
    /// Whether nodes with taints the pod does not tolerate are left out (`Honor`).
    pub honor_taints: bool,
    /// The constraint's selector with the pod's `matchLabelKeys` added; `None` (no
    /// `labelSelector`) matches no pod.
    pub selector: Option<Selector>,
    /// The pod matches its own selector: it adds one to the domain it lands in.
    pub self_match: bool,
    /// Matching pods per domain (filled in per decision).
    pub domains: HashMap<String, usize>,
    /// The smallest domain count, or 0 with fewer domains than `min_domains`.
    pub min: usize,
}

impl Spread {
    fn of(c: &TopologySpreadConstraint, labels: &BTreeMap<String, String>) -> Spread {
        let selector = c.label_selector.as_ref().and_then(|sel| {
            let mut sel = sel.clone();
            for k in &c.match_label_keys {
                if let Some(v) = labels.get(k) {
                    sel.match_labels.insert(k.clone(), v.clone());
                }
            }
            Selector::from_label_selector(&sel, "labelSelector").ok()
        });
        Spread {
            key: c.topology_key.clone(),
            max_skew: c.max_skew.max(1) as usize,
            hard: c.when_unsatisfiable != "ScheduleAnyway",
            min_domains: c.min_domains.unwrap_or(1).max(1) as usize,
            honor_affinity: c.node_affinity_policy != "Ignore",
            honor_taints: c.node_taints_policy == "Honor",
            self_match: selector.as_ref().is_some_and(|s| s.matches(labels)),
            selector,
            domains: HashMap::new(),
            min: 0,
        }
    }

    /// The domain count a node's pods add to, if the node has the topology key.
    pub fn count_at(&self, node: &NodeView) -> Option<usize> {
        let value = node.labels.get(&self.key)?;
        Some(self.domains.get(value).copied().unwrap_or(0))
    }
}

impl PodView {
    /// The scheduling-relevant view of a pod: summed container requests (limits when no
    /// request is given, as Kubernetes defaults them).
    pub fn of(pod: &Pod) -> PodView {
        let mut v = PodView {
            node_selector: pod.spec.node_selector.clone(),
            tolerations: pod.spec.tolerations.clone(),
            owner: pod
                .metadata
                .owner_references
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| Arc::from(o.uid.as_str())),
            required_affinity: pod
                .spec
                .affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|n| {
                    n.required_during_scheduling_ignored_during_execution
                        .clone()
                }),
            namespace: pod.metadata.namespace.clone(),
            labels: pod.metadata.labels.clone(),
            spread: pod
                .spec
                .topology_spread_constraints
                .iter()
                .map(|c| Spread::of(c, &pod.metadata.labels))
                .collect(),
            ..Default::default()
        };
        for c in &pod.spec.containers {
            v.images.push(c.image.clone());
            let get = |k: &str| {
                c.resources
                    .requests
                    .get(k)
                    .or_else(|| c.resources.limits.get(k))
            };
            v.cpu_m += get("cpu").map(|q| q.millis()).unwrap_or(0);
            v.mem += get("memory").map(|q| q.value()).unwrap_or(0);
            for p in &c.ports {
                if let Some(h) = p.host_port {
                    let proto = if p.protocol.is_empty() {
                        "TCP"
                    } else {
                        p.protocol.as_str()
                    };
                    v.host_ports.push((h, proto.to_string()));
                }
            }
        }
        v
    }

    /// What the pod takes of the node it is bound to.
    pub fn usage(&self) -> Usage {
        Usage {
            cpu_m: self.cpu_m,
            mem: self.mem,
            host_ports: self.host_ports.clone(),
            owner: self.owner.clone(),
        }
    }
}

/// What a bound pod takes of its node: all the scheduler keeps of each bound pod (a whole
/// view per pod took 5 MB of a master holding 10,000).
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub cpu_m: i64,
    pub mem: i64,
    pub host_ports: Vec<(i32, String)>,
    /// The controller's uid, shared by its pods.
    pub owner: Option<Arc<str>>,
}

impl NodeView {
    /// The view of a node with nothing bound yet.
    pub fn of(node: &Node) -> NodeView {
        let st = node.status.clone().unwrap_or_default();
        let ready = st
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let alloc = |k: &str| st.allocatable.get(k).or_else(|| st.capacity.get(k));
        NodeView {
            name: node.metadata.name.clone(),
            labels: node.metadata.labels.clone(),
            ready,
            unschedulable: node.spec.unschedulable,
            taints: node.spec.taints.clone(),
            alloc_cpu_m: alloc("cpu").map(|q| q.millis()).unwrap_or(0),
            alloc_mem: alloc("memory").map(|q| q.value()).unwrap_or(0),
            alloc_pods: alloc("pods").map(|q| q.value()).unwrap_or(110),
            ..Default::default()
        }
    }

    pub(super) fn add(&mut self, p: &Usage, sign: i64) {
        self.used_cpu_m += sign * p.cpu_m;
        self.used_mem += sign * p.mem;
        self.pods += sign;
        for port in &p.host_ports {
            if sign > 0 {
                self.used_ports.insert(port.clone());
            } else {
                self.used_ports.remove(port);
            }
        }
        if let Some(o) = &p.owner {
            let c = self.owner_counts.entry(o.clone()).or_default();
            *c = if sign > 0 {
                *c + 1
            } else {
                c.saturating_sub(1)
            };
        }
    }
}

/// The parts of a stored pod the scheduler reads. Decoding only these (serde skips the rest
/// without building it) keeps a relist of 10,000 pods, and every pod event, cheap.
#[derive(serde::Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SchedPod {
    metadata: SchedMeta,
    spec: SchedSpec,
    status: Option<SchedStatus>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SchedMeta {
    name: String,
    namespace: String,
    uid: String,
    labels: BTreeMap<String, String>,
    deletion_timestamp: Option<String>,
    owner_references: Vec<bramble_api::meta::OwnerReference>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SchedSpec {
    containers: Vec<SchedContainer>,
    node_name: String,
    node_selector: BTreeMap<String, String>,
    tolerations: Vec<Toleration>,
    affinity: Option<bramble_api::pod::Affinity>,
    topology_spread_constraints: Vec<TopologySpreadConstraint>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct SchedContainer {
    image: String,
    ports: Vec<bramble_api::pod::ContainerPort>,
    resources: bramble_api::pod::ResourceRequirements,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct SchedStatus {
    phase: String,
}

/// A pod with only what scheduling needs filled in, from its stored JSON.
pub(super) fn sched_pod(json: &[u8]) -> Option<Pod> {
    let s: SchedPod = serde_json::from_slice(json).ok()?;
    let mut p = Pod::default();
    p.metadata.name = s.metadata.name;
    p.metadata.namespace = s.metadata.namespace;
    p.metadata.uid = s.metadata.uid;
    p.metadata.labels = s.metadata.labels;
    p.metadata.deletion_timestamp = s.metadata.deletion_timestamp;
    p.metadata.owner_references = s.metadata.owner_references;
    p.spec.node_name = s.spec.node_name;
    p.spec.node_selector = s.spec.node_selector;
    p.spec.tolerations = s.spec.tolerations;
    p.spec.affinity = s.spec.affinity;
    p.spec.topology_spread_constraints = s.spec.topology_spread_constraints;
    p.spec.containers = s
        .spec
        .containers
        .into_iter()
        .map(|c| bramble_api::pod::Container {
            image: c.image,
            ports: c.ports,
            resources: c.resources,
            ..Default::default()
        })
        .collect();
    p.status = s.status.map(|st| bramble_api::pod::PodStatus {
        phase: st.phase,
        ..Default::default()
    });
    Some(p)
}
