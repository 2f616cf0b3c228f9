//! The pure decision: filters keep the nodes a pod may run on, scorers rank them, and a pod
//! that fits nowhere gets Kubernetes' FailedScheduling message.

use std::collections::BTreeMap;

use super::view::{NodeView, PodView};
use super::{filter, score};

/// The filters and scorers in use.
pub struct Profile {
    pub filters: Vec<Box<dyn filter::Filter>>,
    pub scorers: Vec<Box<dyn score::Scorer>>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            filters: filter::defaults(),
            scorers: score::defaults(),
        }
    }
}

/// Picks the best node for a pod, or explains why none fits.
pub fn pick<'a>(
    pod: &PodView,
    nodes: impl IntoIterator<Item = &'a NodeView>,
    profile: &Profile,
) -> Result<String, NoNode> {
    pick_some(pod, nodes, usize::MAX, profile)
}

/// How many feasible nodes to find before choosing, as Kubernetes'
/// `percentageOfNodesToScore` adapts it: all of a small cluster, a shrinking share of a
/// large one (50% minus 1% per 125 nodes, at least 5%), and never fewer than 100.
pub fn feasible_to_find(nodes: usize) -> usize {
    if nodes <= 100 {
        return nodes;
    }
    let pct = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * pct / 100).max(100)
}

/// As [`pick`], choosing among the first `enough` feasible nodes (the caller rotates where
/// the search starts, so that every node gets its turn).
pub fn pick_some<'a>(
    pod: &PodView,
    nodes: impl IntoIterator<Item = &'a NodeView>,
    enough: usize,
    profile: &Profile,
) -> Result<String, NoNode> {
    let mut reasons: BTreeMap<filter::Unfit, usize> = BTreeMap::new();
    let mut best: Option<(i64, &NodeView)> = None;
    let mut total = 0;
    let mut feasible = 0;
    let active: Vec<&dyn filter::Filter> = profile
        .filters
        .iter()
        .filter(|f| f.applies(pod))
        .map(|f| f.as_ref())
        .collect();
    for n in nodes {
        if feasible >= enough {
            break;
        }
        total += 1;
        if let Some(r) = active.iter().find_map(|f| f.check(pod, n).err()) {
            *reasons.entry(r).or_default() += 1;
            continue;
        }
        feasible += 1;
        let s: i64 = profile
            .scorers
            .iter()
            .map(|sc| sc.score(pod, n) * sc.weight())
            .sum();
        // Ties go to the first node in name order: deterministic.
        if best.is_none_or(|(b, _)| s > b) {
            best = Some((s, n));
        }
    }
    match best {
        Some((_, n)) => Ok(n.name.clone()),
        None => Err(NoNode { total, reasons }),
    }
}

/// No node fits: how many were looked at and why each was not chosen. Displays as
/// Kubernetes' FailedScheduling message, most common reason first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoNode {
    pub total: usize,
    pub reasons: BTreeMap<filter::Unfit, usize>,
}

impl std::fmt::Display for NoNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<(usize, String)> = self
            .reasons
            .iter()
            .map(|(r, c)| (*c, r.to_string()))
            .collect();
        parts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let list: Vec<String> = parts.iter().map(|(c, r)| format!("{c} {r}")).collect();
        if list.is_empty() {
            write!(f, "0/{} nodes are available.", self.total)
        } else {
            write!(
                f,
                "0/{} nodes are available: {}.",
                self.total,
                list.join(", ")
            )
        }
    }
}

impl std::error::Error for NoNode {}
