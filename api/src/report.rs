//! Turning an agent's [`PodReport`] into a Kubernetes [`PodStatus`], and a node's facts
//! into its Node status. Pure functions, shared by the master's gateway and its tests.

use std::collections::BTreeMap;

use crate::meta::Condition;
use crate::node::{NodeAddress, NodeStatus, NodeSystemInfo};
use crate::pod::{
    ContainerState as KState, ContainerStatus, PodStatus, StateRunning, StateTerminated,
    StateWaiting,
};
use crate::quantity::Quantity;
use crate::time::format_rfc3339;
use crate::wire::{ContainerState, NodeFacts, PodReport};

fn ts(t: i64) -> Option<String> {
    (t > 0).then(|| format_rfc3339(t))
}

fn state(s: &ContainerState) -> KState {
    match s {
        ContainerState::Waiting { reason, message } => KState {
            waiting: Some(StateWaiting {
                reason: reason.clone(),
                message: message.clone(),
            }),
            ..Default::default()
        },
        ContainerState::Running { started_at } => KState {
            running: Some(StateRunning {
                started_at: ts(*started_at),
            }),
            ..Default::default()
        },
        ContainerState::Terminated {
            exit_code,
            reason,
            message,
            started_at,
            finished_at,
        } => KState {
            terminated: Some(StateTerminated {
                exit_code: *exit_code,
                reason: reason.clone(),
                message: message.clone(),
                started_at: ts(*started_at),
                finished_at: ts(*finished_at),
            }),
            ..Default::default()
        },
    }
}

/// Keeps a condition's transition time when its status did not change.
fn condition(type_: &str, ok: bool, previous: Option<&PodStatus>, now: i64) -> Condition {
    let status = if ok { "True" } else { "False" };
    let old = previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == type_));
    let last_transition_time = match old {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(format_rfc3339(now)),
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        last_transition_time,
        ..Default::default()
    }
}

/// The pod status an agent's report stands for; `spec` tells init containers from app
/// containers (the agent reports both in one list).
pub fn pod_status(
    r: &PodReport,
    spec: &crate::pod::PodSpec,
    previous: Option<&PodStatus>,
    now: i64,
) -> PodStatus {
    let is_init = |name: &str| spec.init_containers.iter().any(|c| c.name == name);
    let all: Vec<ContainerStatus> = r
        .containers
        .iter()
        .map(|c| ContainerStatus {
            name: c.name.clone(),
            ready: c.ready,
            restart_count: i32::try_from(c.restart_count).unwrap_or(i32::MAX),
            image: c.image.clone(),
            image_id: String::new(),
            state: Some(state(&c.state)),
            last_state: c.last_state.as_ref().map(state),
        })
        .collect();
    let (init, containers): (Vec<ContainerStatus>, Vec<ContainerStatus>) =
        all.into_iter().partition(|c| is_init(&c.name));
    // Initialized: every init container succeeded (a sidecar: is running).
    let initialized = spec.init_containers.iter().all(|ic| {
        init.iter().any(|s| {
            s.name == ic.name
                && s.state.as_ref().is_some_and(|st| {
                    if ic.is_sidecar() {
                        st.running.is_some()
                    } else {
                        st.terminated.as_ref().is_some_and(|t| t.exit_code == 0)
                    }
                })
        })
    });
    let sidecars_ready = init
        .iter()
        .filter(|s| {
            spec.init_containers
                .iter()
                .any(|c| c.name == s.name && c.is_sidecar())
        })
        .all(|s| s.ready);
    let ready = initialized
        && sidecars_ready
        && !containers.is_empty()
        && containers.iter().all(|c| c.ready);
    PodStatus {
        phase: r.phase.clone(),
        conditions: vec![
            condition("Initialized", initialized, previous, now),
            condition("Ready", ready, previous, now),
            condition("ContainersReady", ready, previous, now),
            condition("PodScheduled", true, previous, now),
        ],
        message: r.message.clone(),
        reason: r.reason.clone(),
        host_ip: r.host_ip.clone(),
        pod_ip: r.pod_ip.clone(),
        start_time: ts(r.start_time),
        init_container_statuses: init,
        container_statuses: containers,
    }
}

/// A node's Ready condition; its transition time is kept when the status did not change.
pub fn ready_condition(
    ok: bool,
    reason: &str,
    message: &str,
    previous: Option<&NodeStatus>,
    now: i64,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let old = previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == "Ready"));
    let last_transition_time = match old {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(format_rfc3339(now)),
    };
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        last_heartbeat_time: None,
        last_transition_time,
        reason: reason.into(),
        message: message.into(),
    }
}

/// Capacity, allocatable, addresses and system info of a node from its facts, with a Ready
/// condition of `ready` (reason and message) whose transition time is kept if unchanged.
pub fn node_status(
    f: &NodeFacts,
    ready: (bool, &str, &str),
    previous: Option<&NodeStatus>,
    now: i64,
) -> NodeStatus {
    let mut capacity = BTreeMap::new();
    capacity.insert(
        "cpu".to_string(),
        Quantity::from_millis(i64::from(f.cpus) * 1000),
    );
    capacity.insert(
        "memory".to_string(),
        Quantity::from_value(i64::try_from(f.memory_bytes).unwrap_or(i64::MAX)),
    );
    capacity.insert(
        "pods".to_string(),
        Quantity::from_value(i64::from(f.max_pods)),
    );
    let mut allocatable = BTreeMap::new();
    allocatable.insert(
        "cpu".to_string(),
        Quantity::from_millis(i64::try_from(f.allocatable_cpu_millis).unwrap_or(i64::MAX)),
    );
    allocatable.insert(
        "memory".to_string(),
        Quantity::from_value(i64::try_from(f.allocatable_memory_bytes).unwrap_or(i64::MAX)),
    );
    allocatable.insert(
        "pods".to_string(),
        Quantity::from_value(i64::from(f.max_pods)),
    );
    let (ok, reason, message) = ready;
    let mut addresses = vec![NodeAddress {
        type_: "Hostname".into(),
        address: f.hostname.clone(),
    }];
    if !f.address.is_empty() {
        addresses.insert(
            0,
            NodeAddress {
                type_: "InternalIP".into(),
                address: f.address.clone(),
            },
        );
    }
    NodeStatus {
        capacity,
        allocatable,
        conditions: vec![ready_condition(ok, reason, message, previous, now)],
        addresses,
        node_info: Some(NodeSystemInfo {
            architecture: f.architecture.clone(),
            operating_system: f.operating_system.clone(),
            os_image: f.os_image.clone(),
            kernel_version: f.kernel_version.clone(),
            container_runtime_version: "libcontainer://0.7".into(),
            kubelet_version: f.agent_version.clone(),
            machine_id: String::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ContainerReport;

    #[test]
    fn ready_follows_containers_and_transition_times_are_kept() {
        let mut r = PodReport {
            phase: "Running".into(),
            start_time: 100,
            ..Default::default()
        };
        r.containers.push(ContainerReport {
            name: "c".into(),
            image: "busybox".into(),
            ready: true,
            restart_count: 2,
            state: ContainerState::Running { started_at: 100 },
            last_state: Some(ContainerState::Terminated {
                exit_code: 1,
                reason: "Error".into(),
                message: String::new(),
                started_at: 50,
                finished_at: 90,
            }),
        });
        let s1 = pod_status(&r, &Default::default(), None, 1000);
        let ready = s1.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(s1.container_statuses[0].restart_count, 2);
        assert_eq!(
            s1.container_statuses[0]
                .last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            1
        );
        // Same status later: the transition time does not move, so the status is unchanged.
        assert_eq!(pod_status(&r, &Default::default(), Some(&s1), 2000), s1);
        r.containers[0].ready = false;
        let s2 = pod_status(&r, &Default::default(), Some(&s1), 3000);
        let ready = s2.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time.as_deref()),
            ("False", Some("1970-01-01T00:50:00Z"))
        );
    }

    #[test]
    fn node_status_from_facts() {
        let f = NodeFacts {
            hostname: "pi1".into(),
            address: "192.0.2.5".into(),
            cpus: 4,
            memory_bytes: 4 << 30,
            allocatable_cpu_millis: 3500,
            allocatable_memory_bytes: 3 << 30,
            max_pods: 110,
            architecture: "arm64".into(),
            ..Default::default()
        };
        let s = node_status(&f, (true, "AgentReady", "ok"), None, 10);
        assert_eq!(s.capacity["cpu"].millis(), 4000);
        assert_eq!(s.allocatable["memory"].value(), 3 << 30);
        assert_eq!(s.addresses[0].address, "192.0.2.5");
        assert_eq!(s.conditions[0].status, "True");
        let lost = node_status(&f, (false, "NodeLost", "gone"), Some(&s), 20);
        assert_eq!(lost.conditions[0].reason, "NodeLost");
        assert_ne!(
            lost.conditions[0].last_transition_time,
            s.conditions[0].last_transition_time
        );
    }
}
