//! Scorers: among the nodes that pass the filters, which is best? Each returns 0..=100.

use super::{NodeView, PodView};

/// One scoring unit with its weight.
pub trait Scorer: Send + Sync {
    /// 0 (worst) to 100 (best).
    fn score(&self, pod: &PodView, node: &NodeView) -> i64;
    /// How much this scorer counts.
    fn weight(&self) -> i64 {
        1
    }
}

/// Prefers the node with the most free CPU and memory after placing the pod.
pub struct LeastAllocated;
impl Scorer for LeastAllocated {
    fn score(&self, pod: &PodView, node: &NodeView) -> i64 {
        let free = |used: i64, want: i64, alloc: i64| -> i64 {
            if alloc <= 0 {
                0
            } else {
                ((alloc - used - want).max(0) * 100) / alloc
            }
        };
        (free(node.used_cpu_m, pod.cpu_m, node.alloc_cpu_m)
            + free(node.used_mem, pod.mem, node.alloc_mem))
            / 2
    }
}

/// Spreads the pods of one owner (a Deployment) across nodes.
pub struct SpreadOwner;
impl Scorer for SpreadOwner {
    fn score(&self, pod: &PodView, node: &NodeView) -> i64 {
        let Some(owner) = &pod.owner else { return 100 };
        let same = node.owner_counts.get(owner).copied().unwrap_or(0) as i64;
        // 100 with none of the owner's pods; each one more halves the score.
        100 >> same.min(6)
    }
    fn weight(&self) -> i64 {
        2
    }
}

/// `ScheduleAnyway` topology spread: prefers the nodes whose domains hold the fewest
/// matching pods (a node without the topology key scores 0).
pub struct TopologySpread;
impl Scorer for TopologySpread {
    fn score(&self, pod: &PodView, node: &NodeView) -> i64 {
        let soft: Vec<_> = pod.spread.iter().filter(|s| !s.hard).collect();
        if soft.is_empty() {
            return 100;
        }
        let sum: i64 = soft
            .iter()
            .map(|s| match s.count_at(node) {
                // Each pod above the smallest domain halves the score.
                Some(c) => 100 >> c.saturating_sub(s.min).min(6),
                None => 0,
            })
            .sum();
        sum / soft.len() as i64
    }
    fn weight(&self) -> i64 {
        2
    }
}

/// The default scorers.
pub fn defaults() -> Vec<Box<dyn Scorer>> {
    vec![
        Box::new(LeastAllocated),
        Box::new(SpreadOwner),
        Box::new(TopologySpread),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(used_cpu: i64) -> NodeView {
        NodeView {
            alloc_cpu_m: 1000,
            alloc_mem: 1000,
            used_cpu_m: used_cpu,
            ready: true,
            alloc_pods: 10,
            ..Default::default()
        }
    }

    #[test]
    fn least_allocated_prefers_emptier_nodes() {
        let pod = PodView {
            cpu_m: 100,
            mem: 100,
            ..Default::default()
        };
        assert!(LeastAllocated.score(&pod, &node(0)) > LeastAllocated.score(&pod, &node(500)));
        assert_eq!(LeastAllocated.score(&pod, &node(1000)), 45);
    }

    #[test]
    fn spread_prefers_nodes_without_the_owners_pods() {
        let pod = PodView {
            owner: Some("d1".into()),
            ..Default::default()
        };
        let mut a = node(0);
        let b = node(0);
        a.owner_counts.insert("d1".into(), 2);
        assert!(SpreadOwner.score(&pod, &b) > SpreadOwner.score(&pod, &a));
        assert_eq!(SpreadOwner.score(&PodView::default(), &a), 100);
    }
}
