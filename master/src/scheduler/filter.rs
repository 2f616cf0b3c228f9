//! Filters: may this pod run on this node? Each is a small unit with a Kubernetes-worded
//! reason for "no".

use super::{NodeView, PodView};

/// Why a pod may not run on a node, worded as Kubernetes words it; counted per node in the
/// unschedulable message, e.g. `3 Insufficient memory`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum Unfit {
    #[error("node(s) were not ready")]
    NotReady,
    #[error("node(s) were unschedulable")]
    Unschedulable,
    #[error("Too many pods")]
    TooManyPods,
    #[error("Insufficient cpu")]
    InsufficientCpu,
    #[error("Insufficient memory")]
    InsufficientMemory,
    #[error("node(s) didn't match Pod's node affinity/selector")]
    Affinity,
    #[error("node(s) had untolerated taint {{{key}{value}: {effect}}}")]
    Taint {
        key: String,
        /// `=VALUE`, or empty.
        value: String,
        effect: String,
    },
    #[error("node(s) didn't have free ports for the requested pod ports")]
    HostPorts,
    #[error("node(s) didn't match the image's platform")]
    Platform,
    #[error("node(s) didn't match pod topology spread constraints")]
    Spread,
    #[error("node(s) didn't match pod topology spread constraints (missing required label)")]
    SpreadLabel,
}

/// One scheduling filter.
pub trait Filter: Send + Sync {
    /// `Err(why)` when the pod may not run on the node.
    fn check(&self, pod: &PodView, node: &NodeView) -> Result<(), Unfit>;
    /// Whether the filter can say no to this pod at all (a pod without a `nodeSelector` passes
    /// that filter everywhere): the search skips filters that cannot.
    fn applies(&self, _pod: &PodView) -> bool {
        true
    }
}

/// The node is Ready.
pub struct NodeReady;
impl Filter for NodeReady {
    fn check(&self, _pod: &PodView, node: &NodeView) -> Result<(), Unfit> {
        if node.ready {
            Ok(())
        } else {
            Err(Unfit::NotReady)
        }
    }
}

/// The node is not cordoned.
pub struct Schedulable;
impl Filter for Schedulable {
    fn check(&self, _pod: &PodView, node: &NodeView) -> Result<(), Unfit> {
        if node.unschedulable {
            Err(Unfit::Unschedulable)
        } else {
            Ok(())
        }
    }
}

/// Requests fit in allocatable minus what bound pods request.
pub struct Resources;
impl Filter for Resources {
    fn check(&self, pod: &PodView, node: &NodeView) -> Result<(), Unfit> {
        if node.pods + 1 > node.alloc_pods {
            return Err(Unfit::TooManyPods);
        }
        if node.used_cpu_m + pod.cpu_m > node.alloc_cpu_m {
            return Err(Unfit::InsufficientCpu);
        }
        if node.used_mem + pod.mem > node.alloc_mem {
            return Err(Unfit::InsufficientMemory);
        }
        Ok(())
    }
}

/// `nodeSelector` labels all match.
pub struct NodeSelector;
impl Filter for NodeSelector {
    fn applies(&self, pod: &PodView) -> bool {
        !pod.node_selector.is_empty()
    }

    fn check(&self, pod: &PodView, node: &NodeView) -> Result<(), Unfit> {
        if pod
            .node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
        {
            Ok(())
        } else {
            Err(Unfit::Affinity)
        }
    }
}

/// Required node affinity terms match the node's labels.
pub struct NodeAffinity;
impl Filter for NodeAffinity {
    fn applies(&self, pod: &PodView) -> bool {
        pod.required_affinity.is_some()
    }

    fn check(&self, pod: &PodView, node: &NodeView) -> Result<(), Unfit> {
        match &pod.required_affinity {
            Some(sel) if !sel.matches(&node.labels) => Err(Unfit::Affinity),
            _ => Ok(()),
        }
    }
}

/// Every NoSchedule and NoExecute taint is tolerated.
pub struct Taints;
impl Filter for Taints {
    fn check(&self, pod: &PodView, node: &NodeView) -> Result<(), Unfit> {
        for t in node
            .taints
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        {
            if !pod.tolerations.iter().any(|tol| t.tolerated_by(tol)) {
                let v = if t.value.is_empty() {
                    String::new()
                } else {
                    format!("={}", t.value)
                };
                return Err(Unfit::Taint {
                    key: t.key.clone(),
                    value: v,
                    effect: t.effect.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Requested host ports are free on the node.
pub struct HostPorts;
impl Filter for HostPorts {
    fn applies(&self, pod: &PodView) -> bool {
        !pod.host_ports.is_empty()
    }

    fn check(&self, pod: &PodView, node: &NodeView) -> Result<(), Unfit> {
        if pod.host_ports.iter().any(|p| node.used_ports.contains(p)) {
            Err(Unfit::HostPorts)
        } else {
            Ok(())
        }
    }
}

/// `DoNotSchedule` topology spread: placing the pod on the node keeps each constraint's
/// skew (its domain's count, plus the pod, less the smallest domain's) within `maxSkew`.
pub struct TopologySpread;
impl Filter for TopologySpread {
    fn applies(&self, pod: &PodView) -> bool {
        pod.spread.iter().any(|s| s.hard)
    }

    fn check(&self, pod: &PodView, node: &NodeView) -> Result<(), Unfit> {
        for s in pod.spread.iter().filter(|s| s.hard) {
            let count = s.count_at(node).ok_or(Unfit::SpreadLabel)?;
            if count + usize::from(s.self_match) > s.min + s.max_skew {
                return Err(Unfit::Spread);
            }
        }
        Ok(())
    }
}

/// The default filters, in order.
pub fn defaults() -> Vec<Box<dyn Filter>> {
    vec![
        Box::new(NodeReady),
        Box::new(Schedulable),
        Box::new(Taints),
        Box::new(NodeSelector),
        Box::new(NodeAffinity),
        Box::new(HostPorts),
        Box::new(TopologySpread),
        Box::new(ImagePlatforms),
        Box::new(Resources),
    ]
}

/// Every imported image of the pod has a variant for the node's OS and architecture (the
/// `kubernetes.io/os` and `kubernetes.io/arch` labels). Images the master does not hold
/// (side-loaded on the nodes) are not checked.
pub struct ImagePlatforms;
impl Filter for ImagePlatforms {
    fn applies(&self, pod: &PodView) -> bool {
        !pod.image_platforms.is_empty()
    }

    fn check(&self, pod: &PodView, node: &NodeView) -> Result<(), Unfit> {
        if pod.image_platforms.is_empty() {
            return Ok(());
        }
        let os = node
            .labels
            .get("kubernetes.io/os")
            .map_or("linux", String::as_str);
        let arch = node
            .labels
            .get("kubernetes.io/arch")
            .map_or("", String::as_str);
        let fits = pod.image_platforms.iter().all(|(_, platforms)| {
            bramble_api::image::select_platform(platforms, os, arch, "").is_some()
        });
        if fits { Ok(()) } else { Err(Unfit::Platform) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::score::Scorer;
    use bramble_api::node::Taint;
    use bramble_api::pod::Toleration;

    fn node() -> NodeView {
        NodeView {
            name: "n".into(),
            ready: true,
            alloc_cpu_m: 1000,
            alloc_mem: 1 << 30,
            alloc_pods: 10,
            ..Default::default()
        }
    }

    #[test]
    fn image_platforms_match_the_node_architecture() {
        use bramble_api::image::ImagePlatform;
        let plat = |arch: &str, variant: &str| ImagePlatform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.into(),
            digest: String::new(),
        };
        let mut n = node();
        n.labels.insert("kubernetes.io/arch".into(), "arm64".into());
        assert!(
            ImagePlatforms.check(&PodView::default(), &n).is_ok(),
            "not imported"
        );
        let mut pod = PodView {
            image_platforms: vec![("web:1".into(), vec![plat("amd64", ""), plat("arm64", "v8")])],
            ..Default::default()
        };
        assert!(ImagePlatforms.check(&pod, &n).is_ok());
        pod.image_platforms
            .push(("db:1".into(), vec![plat("amd64", "")]));
        assert_eq!(
            ImagePlatforms.check(&pod, &n).unwrap_err().to_string(),
            "node(s) didn't match the image's platform"
        );
        n.labels.insert("kubernetes.io/arch".into(), "amd64".into());
        assert!(ImagePlatforms.check(&pod, &n).is_ok());
        n.labels.insert("kubernetes.io/arch".into(), "arm".into());
        pod.image_platforms = vec![("web:1".into(), vec![plat("arm", "v7")])];
        assert!(
            ImagePlatforms.check(&pod, &n).is_ok(),
            "the agent checks the variant"
        );
    }

    #[test]
    fn a_filter_that_does_not_apply_passes_everywhere() {
        // The search skips filters whose `applies` is false: they must never say no then.
        let mut tainted = node();
        tainted.labels.insert("zone".into(), "b".into());
        tainted.used_ports.insert((80, "TCP".into()));
        let nodes = [node(), tainted];
        let pod = PodView::default();
        for f in defaults() {
            if f.applies(&pod) {
                continue;
            }
            for n in &nodes {
                assert!(f.check(&pod, n).is_ok());
            }
        }
        let narrow = PodView {
            node_selector: [("zone".into(), "a".into())].into(),
            host_ports: vec![(80, "TCP".into())],
            ..Default::default()
        };
        assert!(NodeSelector.applies(&narrow) && HostPorts.applies(&narrow));
        assert!(!NodeSelector.applies(&pod) && !ImagePlatforms.applies(&pod));
    }

    #[test]
    fn readiness_and_cordon() {
        let mut n = node();
        assert!(NodeReady.check(&PodView::default(), &n).is_ok());
        n.ready = false;
        assert_eq!(
            NodeReady
                .check(&PodView::default(), &n)
                .unwrap_err()
                .to_string(),
            "node(s) were not ready"
        );
        n.unschedulable = true;
        assert!(Schedulable.check(&PodView::default(), &n).is_err());
    }

    #[test]
    fn resources_count_what_is_bound() {
        let mut n = node();
        let pod = PodView {
            cpu_m: 600,
            mem: 512 << 20,
            ..Default::default()
        };
        assert!(Resources.check(&pod, &n).is_ok());
        n.used_cpu_m = 500;
        assert_eq!(
            Resources.check(&pod, &n).unwrap_err().to_string(),
            "Insufficient cpu"
        );
        n.used_cpu_m = 0;
        n.used_mem = 600 << 20;
        assert_eq!(
            Resources.check(&pod, &n).unwrap_err().to_string(),
            "Insufficient memory"
        );
        n.used_mem = 0;
        n.pods = 10;
        assert_eq!(
            Resources.check(&pod, &n).unwrap_err().to_string(),
            "Too many pods"
        );
    }

    #[test]
    fn selectors_taints_and_ports() {
        let mut n = node();
        n.labels.insert("disk".into(), "ssd".into());
        let mut pod = PodView::default();
        pod.node_selector.insert("disk".into(), "ssd".into());
        assert!(NodeSelector.check(&pod, &n).is_ok());
        pod.node_selector.insert("zone".into(), "a".into());
        assert!(NodeSelector.check(&pod, &n).is_err());

        n.taints.push(Taint {
            key: "dedicated".into(),
            value: "gpu".into(),
            effect: "NoSchedule".into(),
            time_added: None,
        });
        let pod = PodView::default();
        assert_eq!(
            Taints.check(&pod, &n).unwrap_err().to_string(),
            "node(s) had untolerated taint {dedicated=gpu: NoSchedule}"
        );
        let tolerating = PodView {
            tolerations: vec![Toleration {
                key: "dedicated".into(),
                operator: "Equal".into(),
                value: "gpu".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(Taints.check(&tolerating, &n).is_ok());
        let exists_all = PodView {
            tolerations: vec![Toleration {
                operator: "Exists".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(Taints.check(&exists_all, &n).is_ok());
        n.taints[0].effect = "PreferNoSchedule".into();
        assert!(
            Taints.check(&pod, &n).is_ok(),
            "PreferNoSchedule does not filter"
        );

        let affine = PodView { required_affinity: Some(serde_json::from_value(serde_json::json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["nvme"]}]},
            {"matchExpressions": [{"key": "disk", "operator": "Exists"}, {"key": "mem", "operator": "Gt", "values": ["4"]}]}
        ]})).unwrap()), ..Default::default() };
        assert!(
            NodeAffinity.check(&affine, &n).is_err(),
            "ssd is not nvme and there is no mem label"
        );
        n.labels.insert("mem".into(), "8".into());
        assert!(
            NodeAffinity.check(&affine, &n).is_ok(),
            "the second term matches"
        );
        n.labels.insert("mem".into(), "2".into());
        assert!(NodeAffinity.check(&affine, &n).is_err());
        n.used_ports.insert((8080, "TCP".into()));
        let wants = PodView {
            host_ports: vec![(8080, "TCP".into())],
            ..Default::default()
        };
        assert!(HostPorts.check(&wants, &n).is_err());
        let other = PodView {
            host_ports: vec![(8080, "UDP".into())],
            ..Default::default()
        };
        assert!(HostPorts.check(&other, &n).is_ok());
    }

    #[test]
    fn topology_spread_holds_the_skew_within_max_skew() {
        let in_zone = |zone: &str| {
            let mut n = node();
            n.labels.insert("zone".into(), zone.into());
            n
        };
        let spread = |hard: bool, self_match: bool, min_domains: usize| super::super::Spread {
            key: "zone".into(),
            max_skew: 1,
            hard,
            min_domains,
            self_match,
            domains: [("a".to_string(), 2), ("b".to_string(), 1)].into(),
            min: 1,
            ..Default::default()
        };
        let pod = |s| PodView {
            spread: vec![s],
            ..Default::default()
        };
        let hard = pod(spread(true, true, 1));
        assert!(TopologySpread.applies(&hard));
        // a: 2 + 1 - 1 = 2 > 1; b: 1 + 1 - 1 = 1; a zone with none yet counts 0.
        assert_eq!(
            TopologySpread.check(&hard, &in_zone("a")),
            Err(Unfit::Spread)
        );
        assert!(TopologySpread.check(&hard, &in_zone("b")).is_ok());
        assert!(TopologySpread.check(&hard, &in_zone("c")).is_ok());
        assert_eq!(
            TopologySpread.check(&hard, &node()),
            Err(Unfit::SpreadLabel)
        );
        // A pod its selector does not match adds nothing: a stays at a skew of 1.
        assert!(
            TopologySpread
                .check(&pod(spread(true, false, 1)), &in_zone("a"))
                .is_ok()
        );
        // ScheduleAnyway is a score, never a filter.
        let soft = pod(spread(false, true, 1));
        assert!(!TopologySpread.applies(&soft));
        let score = |n| super::super::score::TopologySpread.score(&soft, &n);
        assert!(score(in_zone("b")) > score(in_zone("a")));
        assert_eq!(score(node()), 0);
        assert_eq!(
            super::super::score::TopologySpread.score(&PodView::default(), &node()),
            100
        );
    }
}
