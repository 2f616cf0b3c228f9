//! Node lifecycle: a node that is lost gets the `node.kubernetes.io/unreachable:NoExecute`
//! taint; after the eviction timeout its pods are deleted so their owners replace them
//! elsewhere. Evictions are rate-limited, and stop altogether while most nodes are lost at
//! once: that is a partition of the master, not a failure of every board. A node that
//! comes back loses the taint and, through its desired-state snapshot, stops the pods that
//! were replaced.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bramble_api::node::{Node, Taint};
use bramble_api::pod::Pod;
use bramble_api::{Kind, Object, Selector};
use tokio_util::sync::CancellationToken;

use crate::events::EventRecorder;
use crate::store::{DeleteRequest, Op, Store, StoreError, Subresource};

/// The taint of a lost node.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// Node lifecycle settings.
#[derive(Debug, Clone, Copy)]
pub struct LifecycleConfig {
    /// How long a node may be lost before its pods are evicted.
    pub eviction_timeout: Duration,
    /// Most pod evictions per second, cluster-wide.
    pub evictions_per_second: u32,
    /// Above this fraction of lost nodes, evict nothing (a partition of the master).
    pub partition_fraction: f64,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            eviction_timeout: Duration::from_secs(5),
            evictions_per_second: 10,
            partition_fraction: 0.55,
        }
    }
}

/// What to do about the nodes right now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NodePlan {
    pub taint: Vec<String>,
    pub untaint: Vec<String>,
    /// Nodes whose pods are to be evicted.
    pub evict: Vec<String>,
    /// True when evictions are held back because most nodes are lost.
    pub partitioned: bool,
}

fn lost(n: &Node) -> bool {
    let st = n.status.as_ref();
    st.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status != "True" && c.reason == "NodeLost")
    })
}

fn taint_added(n: &Node) -> Option<i64> {
    n.spec
        .taints
        .iter()
        .find(|t| t.key == UNREACHABLE_TAINT)
        .map(|t| {
            t.time_added
                .as_deref()
                .and_then(bramble_api::time::parse_rfc3339)
                .unwrap_or(0)
        })
}

/// The pure decision over every node at time `now` (Unix seconds).
pub fn plan<N: std::borrow::Borrow<Node>>(
    nodes: &[N],
    now: i64,
    cfg: &LifecycleConfig,
) -> NodePlan {
    let mut p = NodePlan::default();
    let total = nodes.len();
    let lost_count = nodes.iter().filter(|n| lost((*n).borrow())).count();
    p.partitioned = total > 0 && (lost_count as f64) / (total as f64) > cfg.partition_fraction;
    for n in nodes {
        let n: &Node = n.borrow();
        let name = n.metadata.name.clone();
        match (lost(n), taint_added(n)) {
            (true, None) => p.taint.push(name),
            (true, Some(since))
                if !p.partitioned && now - since >= cfg.eviction_timeout.as_secs() as i64 =>
            {
                p.evict.push(name);
            }
            (false, Some(_))
                if n.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                }) =>
            {
                p.untaint.push(name)
            }
            _ => {}
        }
    }
    p
}

/// Whether a pod stays bound to a lost node: it tolerates the unreachable taint with no
/// time limit (a toleration with `tolerationSeconds` is evicted like any other pod here).
pub fn tolerates_loss(pod: &Pod) -> bool {
    pod.spec.tolerations.iter().any(|t| {
        t.effect == "NoExecute"
            && (t.key == UNREACHABLE_TAINT || (t.key.is_empty() && t.operator == "Exists"))
            && t.toleration_seconds.is_none()
    })
}

/// The cluster-wide eviction rate: a token bucket that holds at most one second's worth of
/// evictions and refills at `per_second`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    per_second: f64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second);
        TokenBucket {
            tokens: per_second,
            per_second,
        }
    }

    /// Adds what `elapsed` earns, up to the bucket's size.
    pub fn refill(&mut self, elapsed: Duration) {
        self.tokens = (self.tokens + self.per_second * elapsed.as_secs_f64()).min(self.per_second);
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

fn now_secs() -> i64 {
    bramble_api::time::now_secs()
}

/// How often the controller re-plans every node.
const SWEEP: Duration = Duration::from_millis(500);

/// Runs the node lifecycle controller until `shutdown`.
pub async fn run(store: Store, cfg: LifecycleConfig, shutdown: CancellationToken) {
    let mut events = EventRecorder::new(store.clone(), "node-lifecycle-controller");
    let mut tick = tokio::time::interval(SWEEP);
    let mut was_partitioned = false;
    let mut bucket = TokenBucket::new(cfg.evictions_per_second);
    // The Nodes as last decoded, by name, with the revision decoded: a sweep decodes only
    // the Nodes that changed since the last one (heartbeats are not writes, so a steady fleet
    // of thousands costs no decoding at all).
    let mut decoded: HashMap<String, (u64, Node)> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        bucket.refill(SWEEP);
        let (_, entries) = store.list(Kind::Node, None, &Selector::everything());
        let mut fresh = HashMap::with_capacity(entries.len());
        for e in &entries {
            let node = match decoded.remove(&e.name) {
                Some((rev, n)) if rev == e.revision => n,
                _ => match e.object() {
                    Ok(Object::Node(n)) => n,
                    _ => continue,
                },
            };
            fresh.insert(e.name.clone(), (e.revision, node));
        }
        decoded = fresh;
        let mut nodes: Vec<&Node> = decoded.values().map(|(_, n)| n).collect();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let now = now_secs();
        let p = plan(&nodes, now, &cfg);
        if p.partitioned != was_partitioned {
            was_partitioned = p.partitioned;
            if p.partitioned {
                tracing::warn!(
                    "most nodes are lost at once: holding evictions (a partition of the master?)"
                );
            } else {
                tracing::info!("fewer nodes are lost: evictions may resume");
            }
        }
        let by_name: BTreeMap<&str, &Node> = nodes
            .iter()
            .map(|n| (n.metadata.name.as_str(), *n))
            .collect();
        for name in &p.taint {
            if let Some(n) = by_name.get(name.as_str()) {
                let mut n = (*n).clone();
                n.spec.taints.push(Taint {
                    key: UNREACHABLE_TAINT.into(),
                    value: String::new(),
                    effect: "NoExecute".into(),
                    time_added: Some(bramble_api::time::format_rfc3339(now)),
                });
                update_node(&store, n).await;
            }
        }
        for name in &p.untaint {
            if let Some(n) = by_name.get(name.as_str()) {
                let mut n = (*n).clone();
                n.spec.taints.retain(|t| t.key != UNREACHABLE_TAINT);
                update_node(&store, n).await;
            }
        }
        for name in &p.evict {
            let (_, pods) = store.list(Kind::Pod, None, &Selector::everything());
            for e in pods {
                let Ok(Object::Pod(pod)) = e.object() else {
                    continue;
                };
                if pod.spec.node_name != *name {
                    continue;
                }
                if tolerates_loss(&pod) {
                    continue;
                }
                if !bucket.take() {
                    break;
                }
                // The node cannot confirm: remove the pod now so its owner replaces it.
                let req = DeleteRequest {
                    kind: Kind::Pod,
                    namespace: pod.metadata.namespace.clone(),
                    name: pod.metadata.name.clone(),
                    grace_seconds: Some(0),
                    resource_version: None,
                    orphan: false,
                };
                match store.write(Op::Delete(req)).await {
                    Ok(_) => {
                        let msg = format!("Evicting pod from lost node {name}");
                        events
                            .record(Object::Pod(pod), "Warning", "TaintManagerEviction", &msg)
                            .await;
                    }
                    Err(StoreError::NotFound { .. }) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot evict a pod"),
                }
            }
        }
    }
}

async fn update_node(store: &Store, mut n: Node) {
    n.metadata.resource_version.clear();
    if let Err(e) = store
        .write(Op::Update(Object::Node(n), Subresource::Main))
        .await
    {
        tracing::warn!(error = %e, "cannot update a node's taints");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_are_rate_limited_by_a_bucket_of_one_second() {
        let mut b = TokenBucket::new(10);
        assert_eq!(
            (0..20).filter(|_| b.take()).count(),
            10,
            "a full bucket: 10"
        );
        assert!(!b.take());
        b.refill(SWEEP);
        assert_eq!(
            (0..20).filter(|_| b.take()).count(),
            5,
            "half a second earns 5"
        );
        b.refill(Duration::from_secs(60));
        assert_eq!(
            (0..20).filter(|_| b.take()).count(),
            10,
            "never more than 10"
        );
    }

    #[test]
    fn only_a_pod_that_tolerates_loss_forever_stays() {
        let pod = |tolerations: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p"},
                "spec": {"containers": [], "tolerations": tolerations}
            }))
            .unwrap()
        };
        let unreachable = serde_json::json!({"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute"});
        let everything = serde_json::json!({"operator": "Exists", "effect": "NoExecute"});
        let timed = serde_json::json!({"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300});
        let other = serde_json::json!({"key": "x", "operator": "Exists", "effect": "NoExecute"});
        let no_schedule = serde_json::json!({"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoSchedule"});
        assert!(tolerates_loss(&pod(serde_json::json!([unreachable]))));
        assert!(tolerates_loss(&pod(serde_json::json!([everything]))));
        for evicted in [timed, other, no_schedule] {
            assert!(
                !tolerates_loss(&pod(serde_json::json!([evicted.clone()]))),
                "{evicted}"
            );
        }
        assert!(!tolerates_loss(&pod(serde_json::json!([]))));
    }

    fn node(name: &str, ready: &str, reason: &str, taint_at: Option<i64>) -> Node {
        let mut n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": ready, "reason": reason}]}
        }))
        .unwrap();
        if let Some(t) = taint_at {
            n.spec.taints.push(Taint {
                key: UNREACHABLE_TAINT.into(),
                value: String::new(),
                effect: "NoExecute".into(),
                time_added: Some(bramble_api::time::format_rfc3339(t)),
            });
        }
        n
    }

    #[test]
    fn a_lost_node_is_tainted_then_evicted_after_the_timeout() {
        let cfg = LifecycleConfig::default();
        let nodes = vec![
            node("a", "False", "NodeLost", None),
            node("b", "True", "", None),
            node("c", "True", "", None),
        ];
        assert_eq!(plan(&nodes, 100, &cfg).taint, vec!["a".to_string()]);
        let nodes = vec![
            node("a", "False", "NodeLost", Some(100)),
            node("b", "True", "", None),
            node("c", "True", "", None),
        ];
        assert!(plan(&nodes, 104, &cfg).evict.is_empty());
        assert_eq!(plan(&nodes, 105, &cfg).evict, vec!["a".to_string()]);
    }

    #[test]
    fn most_nodes_lost_at_once_evicts_nothing() {
        let cfg = LifecycleConfig::default();
        let mut nodes: Vec<Node> = (0..6)
            .map(|i| node(&format!("l{i}"), "False", "NodeLost", Some(0)))
            .collect();
        nodes.extend((0..4).map(|i| node(&format!("r{i}"), "True", "", None)));
        let p = plan(&nodes, 1000, &cfg);
        assert!(p.partitioned);
        assert!(p.evict.is_empty(), "60% lost: a partition, not failures");
        nodes.truncate(8);
        nodes.drain(0..4);
        // 2 of 6 lost: evictions proceed.
        let p = plan(&nodes, 1000, &cfg);
        assert!(!p.partitioned);
        assert_eq!(p.evict.len(), 2);
    }

    #[test]
    fn a_returning_node_is_untainted() {
        let cfg = LifecycleConfig::default();
        let nodes = vec![node("a", "True", "AgentReady", Some(0))];
        assert_eq!(plan(&nodes, 10, &cfg).untaint, vec!["a".to_string()]);
        let joining = vec![node("a", "False", "AgentJoined", None)];
        assert_eq!(plan(&joining, 10, &cfg), NodePlan::default());
    }
}
