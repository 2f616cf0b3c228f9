//! The pod manager's decisions, as pure functions of desired pods, pod records, what the
//! runtime observes and the clock: [`observe`] folds runtime observations into the records,
//! [`plan`] lists the operations that close the gap, and [`report`] says what the master
//! should be told. Level-triggered: running them again with the same inputs plans the same
//! operations, and executing an operation twice does no harm.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bramble_api::pod::Pod;
use bramble_api::wire::{ContainerReport, ContainerState, PodReport};
use serde::{Deserialize, Serialize};

use crate::runtime::{Exit, Observed};

mod outcome;
pub use outcome::{CIDR_WAIT, Network, Outcome, Waiting, next_instance, on_result, sandbox_record};

/// What the agent remembers of a pod on this node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub sandbox_ready: bool,
    /// The pod's network namespace (None with host networking).
    #[serde(default)]
    pub netns: Option<std::path::PathBuf>,
    /// The pod's IP from the node's pod CIDR (empty: none yet, or host networking). Held
    /// for as long as the record exists.
    #[serde(default)]
    pub pod_ip: String,
    /// Unix seconds the pod started on this node.
    pub start_time: i64,
    /// Grace period for stopping, from the pod (kept for pods the master has already forgotten).
    pub grace_seconds: i64,
    pub containers: BTreeMap<String, ContainerRecord>,
    /// Why the node evicted the pod (an emptyDir past its sizeLimit): its containers are
    /// stopped and not started again, and it is reported Failed until the master deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted: Option<String>,
}

/// What the agent remembers of one container of a pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub image: String,
    /// How many instances were created; the next one's id ends in this number.
    pub attempt: u32,
    /// The current instance (running, or exited and not yet cleaned up).
    pub current: Option<String>,
    pub restart_count: u32,
    pub state: ContainerState,
    pub last_state: Option<ContainerState>,
    /// No start before this time (ms): the back-off gate.
    pub not_before_ms: i64,
    /// Consecutive failures to create the container (image missing, runtime error).
    pub start_failures: u32,
    /// When SIGTERM was sent (ms) while stopping.
    pub killed_at_ms: Option<i64>,
    /// The instance ended and, by the restart policy, stays ended.
    pub done: bool,
    /// The instance whose exit was already folded in (observing is idempotent).
    #[serde(default)]
    pub exit_seen: Option<String>,
    /// The readiness probe's verdict; None when the container has no readiness probe.
    #[serde(default)]
    pub ready: Option<bool>,
    /// The preStop hook of the current instance, while stopping.
    #[serde(default)]
    pub pre_stop: PreStop,
}

/// Where a stopping container's preStop hook is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreStop {
    #[default]
    NotRun,
    /// Running since this time (ms); the stop signal waits for it, within the grace period.
    Running(i64),
    /// Ended (a record from before the start time was kept).
    Done,
    /// Ended; it started at this time (ms), where the grace period began.
    Ran(i64),
}

impl PreStop {
    /// When the hook started, if it did.
    fn started(self) -> Option<i64> {
        match self {
            PreStop::Running(t) | PreStop::Ran(t) => Some(t),
            PreStop::NotRun | PreStop::Done => None,
        }
    }
}

/// When a container sent SIGTERM at `term_ms` gets SIGKILL: the grace period counts from the
/// start of its preStop hook, as Kubernetes counts it, with at least 2 s after the signal
/// when the hook took (nearly) all of it.
fn kill_at(cr: &ContainerRecord, term_ms: i64, grace_ms: i64) -> i64 {
    match cr.pre_stop.started() {
        Some(hook) => (hook + grace_ms).max(term_ms + 2_000),
        None => term_ms + grace_ms,
    }
}

impl ContainerRecord {
    /// A container that has not been started yet.
    pub fn new(image: &str) -> Self {
        ContainerRecord {
            image: image.to_string(),
            attempt: 0,
            current: None,
            restart_count: 0,
            state: Waiting::ContainerCreating.state(""),
            last_state: None,
            not_before_ms: 0,
            start_failures: 0,
            killed_at_ms: None,
            done: false,
            exit_seen: None,
            ready: None,
            pre_stop: PreStop::NotRun,
        }
    }
}

/// Restart back-off settings (Kubernetes: 10 s doubling to 5 min).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

/// One operation for the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    CreateSandbox {
        uid: String,
    },
    Start {
        uid: String,
        container: String,
        id: String,
    },
    Signal {
        uid: String,
        container: String,
        id: String,
        signal: i32,
    },
    Remove {
        uid: String,
        container: String,
        id: String,
    },
    RemoveSandbox {
        uid: String,
    },
    /// Run the container's preStop hook (before its stop signal).
    PreStop {
        uid: String,
        container: String,
        id: String,
    },
    /// The pod is gone from the node: forget it and tell the master.
    Drop {
        uid: String,
    },
}

/// The id of a container instance.
pub fn container_id(uid: &str, container: &str, attempt: u32) -> String {
    format!("{uid}-{container}-{attempt}")
}

fn restart_wanted(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// The Kubernetes reason of an exit.
fn exit_state(exit: &Exit) -> ContainerState {
    let reason = if !exit.error.is_empty() {
        "StartError"
    } else if exit.oom_killed {
        "OOMKilled"
    } else if exit.code == 0 {
        "Completed"
    } else {
        "Error"
    };
    ContainerState::Terminated {
        exit_code: exit.code,
        reason: reason.into(),
        message: exit.error.clone(),
        started_at: exit.started_at,
        finished_at: exit.finished_at,
    }
}

/// Folds runtime observations into the records: running instances become Running, ended
/// ones Terminated, with the back-off gate for the restart the policy wants.
pub fn observe(
    records: &mut BTreeMap<String, PodRecord>,
    desired: &BTreeMap<String, Pod>,
    observed: &HashMap<String, Observed>,
    now_ms: i64,
    backoff: Backoff,
) {
    for (uid, rec) in records.iter_mut() {
        let pod = desired.get(uid);
        for (name, c) in rec.containers.iter_mut() {
            let policy = pod
                .map(|p| p.spec.restart_policy_of(name).to_string())
                .unwrap_or_default();
            let Some(id) = &c.current else { continue };
            match observed.get(id) {
                Some(Observed::Running { started_at }) => {
                    c.state = ContainerState::Running {
                        started_at: *started_at,
                    };
                }
                Some(Observed::Exited(exit)) => {
                    if c.exit_seen.as_deref() == Some(id.as_str()) {
                        continue;
                    }
                    c.exit_seen = Some(id.clone());
                    let ended = exit_state(exit);
                    let stopping = c.killed_at_ms.is_some();
                    if !stopping && restart_wanted(&policy, exit.code) {
                        let delay = if c.restart_count == 0 {
                            Duration::ZERO
                        } else {
                            bramble_api::backoff::crash_loop(
                                c.restart_count - 1,
                                backoff.base,
                                backoff.max,
                            )
                        };
                        c.not_before_ms = now_ms + delay.as_millis() as i64;
                        c.state = if delay.is_zero() {
                            ended.clone()
                        } else {
                            Waiting::CrashLoopBackOff.state(format!(
                                "back-off {}s restarting failed container={name}",
                                delay.as_secs()
                            ))
                        };
                        c.last_state = Some(ended);
                    } else {
                        c.state = ended;
                        c.done = true;
                    }
                }
                Some(Observed::Missing) => {
                    if c.exit_seen.as_deref() == Some(id.as_str()) {
                        continue;
                    }
                    c.exit_seen = Some(id.clone());
                    // Lost with no exit record (a reboot took it): treat it as killed.
                    let exit = Exit {
                        code: 137,
                        oom_killed: false,
                        started_at: 0,
                        finished_at: now_ms / 1000,
                        error: String::new(),
                    };
                    c.last_state = Some(ContainerState::Terminated {
                        exit_code: exit.code,
                        reason: "ContainerLost".into(),
                        message: "the container was gone when the agent looked".into(),
                        started_at: 0,
                        finished_at: exit.finished_at,
                    });
                    c.state = Waiting::ContainerLost.state("");
                    c.not_before_ms = now_ms;
                    if !restart_wanted(&policy, exit.code) || c.killed_at_ms.is_some() {
                        c.state = c.last_state.clone().unwrap_or(c.state.clone());
                        c.done = true;
                    }
                }
                Some(Observed::Starting) | None => {}
            }
        }
    }
}

fn is_ended(o: Option<&Observed>) -> bool {
    matches!(o, Some(Observed::Exited(_) | Observed::Missing) | None)
}

/// One container's next step: start it (first, or again once its back-off allows and its
/// policy wants it), remove its ended instance, or nothing.
fn step(
    uid: &str,
    name: &str,
    cr: Option<&ContainerRecord>,
    observed: &HashMap<String, Observed>,
    now_ms: i64,
) -> Option<Op> {
    let start = |attempt| Op::Start {
        uid: uid.to_string(),
        container: name.to_string(),
        id: container_id(uid, name, attempt),
    };
    let Some(cr) = cr else {
        return Some(start(0));
    };
    match &cr.current {
        Some(id) if is_ended(observed.get(id)) => Some(Op::Remove {
            uid: uid.to_string(),
            container: name.to_string(),
            id: id.clone(),
        }),
        Some(_) => None,
        None if cr.done => None,
        None if now_ms >= cr.not_before_ms => Some(start(cr.attempt)),
        None => None,
    }
}

/// The operations that bring the node from its records to the desired pods.
pub fn plan(
    desired: &BTreeMap<String, Pod>,
    records: &BTreeMap<String, PodRecord>,
    observed: &HashMap<String, Observed>,
    now_ms: i64,
) -> Vec<Op> {
    let mut ops = Vec::new();
    for (uid, pod) in desired {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(rec) = records.get(uid) else {
            ops.push(Op::CreateSandbox { uid: uid.clone() });
            continue;
        };
        if rec.evicted.is_some() {
            // Stopped below, and never started again.
            continue;
        }
        if !rec.sandbox_ready {
            ops.push(Op::CreateSandbox { uid: uid.clone() });
            continue;
        }
        // Init containers first, in order: each must have succeeded (a sidecar: be running)
        // before the next, and all before the app containers.
        let mut waiting_on_init = false;
        for c in &pod.spec.init_containers {
            let cr = rec.containers.get(&c.name);
            let succeeded = cr.is_some_and(|cr| {
                cr.done && matches!(cr.state, ContainerState::Terminated { exit_code: 0, .. })
            });
            let running = cr.is_some_and(|cr| {
                cr.current
                    .as_ref()
                    .is_some_and(|id| matches!(observed.get(id), Some(Observed::Running { .. })))
            });
            if succeeded {
                // Done: its instance is removed (its record stays, with its exit).
                if let Some(id) = cr.and_then(|cr| cr.current.as_ref())
                    && is_ended(observed.get(id))
                {
                    ops.push(Op::Remove {
                        uid: uid.clone(),
                        container: c.name.clone(),
                        id: id.clone(),
                    });
                }
                continue;
            }
            if c.is_sidecar() && running {
                continue;
            }
            waiting_on_init = true;
            // (Failed for good, under restartPolicy Never, it is done: the pod fails here.)
            ops.extend(step(uid, &c.name, cr, observed, now_ms));
            break;
        }
        if waiting_on_init {
            continue;
        }
        // Sidecars that ended are started again beside the app containers.
        for c in pod.spec.init_containers.iter().filter(|c| c.is_sidecar()) {
            ops.extend(step(
                uid,
                &c.name,
                rec.containers.get(&c.name),
                observed,
                now_ms,
            ));
        }
        for c in &pod.spec.containers {
            ops.extend(step(
                uid,
                &c.name,
                rec.containers.get(&c.name),
                observed,
                now_ms,
            ));
        }
    }
    for (uid, rec) in records {
        let deleted = match desired.get(uid) {
            None => true,
            Some(p) => p.metadata.deletion_timestamp.is_some(),
        };
        if !deleted && rec.evicted.is_none() {
            continue;
        }
        let grace_ms = desired
            .get(uid)
            .and_then(|p| p.metadata.deletion_grace_period_seconds)
            .unwrap_or(rec.grace_seconds)
            .max(0)
            * 1000;
        let mut all_gone = true;
        for (name, cr) in &rec.containers {
            let Some(id) = &cr.current else { continue };
            all_gone = false;
            let o = observed.get(id);
            if is_ended(o) {
                ops.push(Op::Remove {
                    uid: uid.clone(),
                    container: name.clone(),
                    id: id.clone(),
                });
                continue;
            }
            // The preStop hook first (a pod the master still describes), within the grace.
            let hook = desired
                .get(uid)
                .and_then(|p| p.spec.all_containers().find(|c| c.name == *name))
                .and_then(|c| c.lifecycle.as_ref()?.pre_stop.as_ref())
                .is_some();
            if hook && cr.killed_at_ms.is_none() {
                match cr.pre_stop {
                    PreStop::NotRun => {
                        ops.push(Op::PreStop {
                            uid: uid.clone(),
                            container: name.clone(),
                            id: id.clone(),
                        });
                        continue;
                    }
                    PreStop::Running(since) if now_ms - since < grace_ms => continue,
                    _ => {}
                }
            }
            match cr.killed_at_ms {
                None => ops.push(Op::Signal {
                    uid: uid.clone(),
                    container: name.clone(),
                    id: id.clone(),
                    signal: libc::SIGTERM,
                }),
                Some(t) if now_ms >= kill_at(cr, t, grace_ms) => ops.push(Op::Signal {
                    uid: uid.clone(),
                    container: name.clone(),
                    id: id.clone(),
                    signal: libc::SIGKILL,
                }),
                Some(_) => {}
            }
        }
        // An evicted pod keeps its record (and its Failed report) until it is deleted.
        if all_gone && deleted {
            ops.push(Op::RemoveSandbox { uid: uid.clone() });
            ops.push(Op::Drop { uid: uid.clone() });
        }
    }
    ops
}

/// The pod's phase from its containers, as Kubernetes computes it.
fn phase(pod: Option<&Pod>, rec: &PodRecord) -> String {
    let policy = pod
        .map(|p| p.spec.restart_policy.as_str())
        .unwrap_or("Always");
    if let Some(p) = pod {
        // Init containers: one failed for good fails the pod; until all have succeeded
        // (sidecars: started) it is Pending.
        for c in p.spec.init_containers.iter().filter(|c| !c.is_sidecar()) {
            match rec.containers.get(&c.name) {
                Some(cr) if cr.done => {
                    if !matches!(cr.state, ContainerState::Terminated { exit_code: 0, .. }) {
                        return "Failed".into();
                    }
                }
                _ => return "Pending".into(),
            }
        }
    }
    let app = |name: &String| pod.is_none_or(|p| p.spec.containers.iter().any(|c| c.name == *name));
    let states: Vec<&ContainerRecord> = rec
        .containers
        .iter()
        .filter(|(name, _)| app(name))
        .map(|(_, c)| c)
        .collect();
    let total = pod.map_or(states.len(), |p| p.spec.containers.len());
    if states.len() < total || states.is_empty() {
        return "Pending".into();
    }
    let running = states
        .iter()
        .filter(|c| matches!(c.state, ContainerState::Running { .. }))
        .count();
    let all_done = states.iter().all(|c| c.done);
    if all_done {
        let failed = states.iter().any(
            |c| matches!(c.state, ContainerState::Terminated { exit_code, .. } if exit_code != 0),
        );
        return if failed && policy != "Always" {
            "Failed".into()
        } else {
            "Succeeded".into()
        };
    }
    if running > 0
        || states
            .iter()
            .any(|c| c.restart_count > 0 || c.last_state.is_some())
    {
        "Running".into()
    } else {
        "Pending".into()
    }
}

/// What the master should know of a pod.
pub fn report(pod: Option<&Pod>, rec: &PodRecord, host_ip: &str) -> PodReport {
    let containers = pod
        .map(|p| {
            p.spec
                .all_containers()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
        })
        .unwrap_or_else(|| rec.containers.keys().cloned().collect());
    PodReport {
        namespace: rec.namespace.clone(),
        name: rec.name.clone(),
        uid: rec.uid.clone(),
        phase: if rec.evicted.is_some() {
            "Failed".into()
        } else {
            phase(pod, rec)
        },
        reason: if rec.evicted.is_some() {
            "Evicted".into()
        } else {
            String::new()
        },
        message: rec.evicted.clone().unwrap_or_default(),
        host_ip: host_ip.to_string(),
        pod_ip: if pod.is_some_and(|p| p.spec.host_network) {
            host_ip.to_string()
        } else if rec.sandbox_ready {
            rec.pod_ip.clone()
        } else {
            String::new()
        },
        start_time: rec.start_time,
        containers: containers
            .iter()
            .map(|name| match rec.containers.get(name) {
                Some(c) => ContainerReport {
                    name: name.clone(),
                    image: c.image.clone(),
                    ready: matches!(c.state, ContainerState::Running { .. })
                        && c.ready.unwrap_or(true),
                    restart_count: c.restart_count,
                    state: c.state.clone(),
                    last_state: c.last_state.clone(),
                },
                None => ContainerReport {
                    name: name.clone(),
                    image: pod
                        .and_then(|p| p.spec.all_containers().find(|c| c.name == *name))
                        .map(|c| c.image.clone())
                        .unwrap_or_default(),
                    ready: false,
                    restart_count: 0,
                    state: Waiting::ContainerCreating.state(""),
                    last_state: None,
                },
            })
            .collect(),
        removed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_secs(10),
        max: Duration::from_secs(300),
    };

    fn pod(uid: &str, policy: &str) -> Pod {
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p-{uid}"), "namespace": "default", "uid": uid},
            "spec": {"containers": [{"name": "main", "image": "busybox"}], "restartPolicy": policy}
        }))
        .unwrap();
        p.metadata.uid = uid.into();
        p
    }

    /// The `main` container's record of pod `uid`.
    fn main_of<'a>(
        records: &'a mut BTreeMap<String, PodRecord>,
        uid: &str,
    ) -> &'a mut ContainerRecord {
        records
            .get_mut(uid)
            .and_then(|r| r.containers.get_mut("main"))
            .expect("the pod and its main container")
    }

    fn record(uid: &str, current: Option<&str>, attempt: u32, restarts: u32) -> PodRecord {
        let mut c = ContainerRecord::new("busybox");
        c.current = current.map(str::to_string);
        c.attempt = attempt;
        c.restart_count = restarts;
        PodRecord {
            uid: uid.into(),
            namespace: "default".into(),
            name: format!("p-{uid}"),
            sandbox_ready: true,
            netns: None,
            pod_ip: String::new(),
            start_time: 1,
            grace_seconds: 30,
            containers: [("main".to_string(), c)].into(),
            evicted: None,
        }
    }

    #[test]
    fn an_evicted_pod_is_stopped_kept_and_reported_failed() {
        let p = pod("u", "Always");
        let desired: BTreeMap<String, Pod> = [("u".to_string(), p.clone())].into();
        let mut rec = record("u", Some("u-main-0"), 1, 0);
        rec.evicted = Some("Usage of EmptyDir volume \"d\" exceeds the limit \"1Mi\".".into());
        let mut records: BTreeMap<String, PodRecord> = [("u".to_string(), rec)].into();
        let running: HashMap<String, Observed> =
            [("u-main-0".to_string(), Observed::Running { started_at: 1 })].into();
        let ops = plan(&desired, &records, &running, 0);
        assert!(
            matches!(ops.as_slice(), [Op::Signal { signal, .. }] if *signal == libc::SIGTERM),
            "{ops:?}"
        );
        // Gone: removed, not started again, the record kept.
        let gone: HashMap<String, Observed> = [("u-main-0".to_string(), exited(143))].into();
        main_of(&mut records, "u").killed_at_ms = Some(0);
        let ops = plan(&desired, &records, &gone, 1);
        assert!(matches!(ops.as_slice(), [Op::Remove { .. }]), "{ops:?}");
        main_of(&mut records, "u").current = None;
        assert_eq!(plan(&desired, &records, &HashMap::new(), 2), vec![]);
        let r = report(Some(&p), &records["u"], "10.0.0.1");
        assert_eq!((r.phase.as_str(), r.reason.as_str()), ("Failed", "Evicted"));
        assert!(r.message.contains("EmptyDir"));
        // Deleted by the master: cleaned up as any pod.
        let none = BTreeMap::new();
        let ops = plan(&none, &records, &HashMap::new(), 3);
        assert!(ops.contains(&Op::Drop { uid: "u".into() }), "{ops:?}");
    }

    fn exited(code: i32) -> Observed {
        Observed::Exited(Exit {
            code,
            oom_killed: false,
            started_at: 1,
            finished_at: 2,
            error: String::new(),
        })
    }

    #[test]
    fn init_containers_gate_the_app_in_order_and_a_sidecar_keeps_running() {
        let mut p = pod("u", "Always");
        p.spec.init_containers = serde_json::from_value(serde_json::json!([
            {"name": "first", "image": "busybox"},
            {"name": "side", "image": "busybox", "restartPolicy": "Always"}
        ]))
        .unwrap();
        let desired: BTreeMap<String, Pod> = [("u".to_string(), p.clone())].into();
        let mut rec = record("u", None, 0, 0);
        rec.containers.clear();
        let mut records: BTreeMap<String, PodRecord> = [("u".to_string(), rec)].into();
        let starts = |ops: &[Op]| -> Vec<String> {
            ops.iter()
                .filter_map(|o| match o {
                    Op::Start { container, .. } => Some(container.clone()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            starts(&plan(&desired, &records, &HashMap::new(), 0)),
            ["first"]
        );
        // `first` runs: nothing else starts.
        let c = |current: &str| {
            let mut c = ContainerRecord::new("busybox");
            c.current = Some(current.into());
            c
        };
        records
            .get_mut("u")
            .unwrap()
            .containers
            .insert("first".into(), c("u-first-0"));
        let running: HashMap<String, Observed> =
            [("u-first-0".to_string(), Observed::Running { started_at: 1 })].into();
        assert!(starts(&plan(&desired, &records, &running, 0)).is_empty());
        assert_eq!(report(Some(&p), &records["u"], "").phase, "Pending");
        // It fails: with the pod's Always it is restarted (OnFailure), the app still waits.
        let mut observed: HashMap<String, Observed> = [("u-first-0".to_string(), exited(1))].into();
        observe(&mut records, &desired, &observed, 0, B);
        assert!(!records["u"].containers["first"].done);
        // It succeeds on its next run: done, its instance removed; the sidecar is next.
        observed.insert("u-first-0".into(), exited(0));
        let first = records
            .get_mut("u")
            .unwrap()
            .containers
            .get_mut("first")
            .unwrap();
        first.exit_seen = None;
        observe(&mut records, &desired, &observed, 0, B);
        assert!(
            records["u"].containers["first"].done,
            "exit 0 ends an init container"
        );
        let ops = plan(&desired, &records, &observed, 0);
        assert!(
            ops.iter()
                .any(|o| matches!(o, Op::Remove { container, .. } if container == "first"))
        );
        assert_eq!(starts(&ops), ["side"]);
        // The sidecar runs: now the app container starts, and the sidecar is not done.
        records
            .get_mut("u")
            .unwrap()
            .containers
            .insert("side".into(), c("u-side-0"));
        observed.insert("u-side-0".into(), Observed::Running { started_at: 1 });
        assert_eq!(starts(&plan(&desired, &records, &observed, 0)), ["main"]);
        // With the pod's Never, a failed init container fails the pod.
        let mut never = p.clone();
        never.spec.restart_policy = "Never".into();
        let desired: BTreeMap<String, Pod> = [("u".to_string(), never.clone())].into();
        let mut rec = record("u", None, 0, 0);
        rec.containers = [("first".to_string(), c("u-first-0"))].into();
        let mut records: BTreeMap<String, PodRecord> = [("u".to_string(), rec)].into();
        let failed: HashMap<String, Observed> = [("u-first-0".to_string(), exited(2))].into();
        observe(&mut records, &desired, &failed, 0, B);
        assert_eq!(report(Some(&never), &records["u"], "").phase, "Failed");
    }

    #[test]
    fn a_prestop_hook_runs_before_the_stop_signal_within_the_grace() {
        let mut p = pod("u", "Always");
        p.spec.containers[0].lifecycle = Some(
            serde_json::from_value(serde_json::json!({"preStop": {"sleep": {"seconds": 1}}}))
                .unwrap(),
        );
        p.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        p.metadata.deletion_grace_period_seconds = Some(10);
        let desired: BTreeMap<String, Pod> = [("u".to_string(), p)].into();
        let mut records: BTreeMap<String, PodRecord> =
            [("u".to_string(), record("u", Some("u-main-0"), 1, 0))].into();
        let running: HashMap<String, Observed> =
            [("u-main-0".to_string(), Observed::Running { started_at: 1 })].into();
        let ops = plan(&desired, &records, &running, 0);
        assert!(matches!(ops.as_slice(), [Op::PreStop { .. }]), "{ops:?}");
        main_of(&mut records, "u").pre_stop = PreStop::Running(0);
        assert!(
            plan(&desired, &records, &running, 5_000).is_empty(),
            "waits for the hook"
        );
        // Past the grace period, the signal goes anyway.
        assert!(matches!(
            plan(&desired, &records, &running, 10_000).as_slice(),
            [Op::Signal { .. }]
        ));
        main_of(&mut records, "u").pre_stop = PreStop::Done;
        assert_eq!(main_of(&mut records, "u").pre_stop, PreStop::Done);
        assert!(matches!(
            plan(&desired, &records, &running, 1_000).as_slice(),
            [Op::Signal { signal, .. }] if *signal == libc::SIGTERM
        ));
        // The grace counts from the hook's start: a hook that ran 0..6 s, TERM at 6 s, KILL
        // at 10 s (not 16 s).
        {
            let c = main_of(&mut records, "u");
            c.pre_stop = PreStop::Ran(0);
            c.killed_at_ms = Some(6_000);
        }
        assert!(plan(&desired, &records, &running, 9_999).is_empty());
        assert!(matches!(
            plan(&desired, &records, &running, 10_000).as_slice(),
            [Op::Signal { signal, .. }] if *signal == libc::SIGKILL
        ));
        // A hook that took all the grace still leaves the signal 2 s.
        main_of(&mut records, "u").killed_at_ms = Some(10_000);
        assert!(plan(&desired, &records, &running, 11_999).is_empty());
        assert!(matches!(
            plan(&desired, &records, &running, 12_000).as_slice(),
            [Op::Signal { signal, .. }] if *signal == libc::SIGKILL
        ));
    }

    #[test]
    fn a_new_pod_gets_a_sandbox_then_its_containers() {
        let desired: BTreeMap<_, _> = [("u1".to_string(), pod("u1", ""))].into();
        let ops = plan(&desired, &BTreeMap::new(), &HashMap::new(), 0);
        assert_eq!(ops, vec![Op::CreateSandbox { uid: "u1".into() }]);
        let mut rec = record("u1", None, 0, 0);
        rec.containers.clear();
        let records = [("u1".to_string(), rec)].into();
        let ops = plan(&desired, &records, &HashMap::new(), 0);
        assert_eq!(
            ops,
            vec![Op::Start {
                uid: "u1".into(),
                container: "main".into(),
                id: "u1-main-0".into()
            }]
        );
    }

    #[test]
    fn a_running_container_needs_nothing_and_planning_is_idempotent() {
        let desired: BTreeMap<_, _> = [("u1".to_string(), pod("u1", ""))].into();
        let mut records: BTreeMap<_, _> =
            [("u1".to_string(), record("u1", Some("u1-main-0"), 1, 0))].into();
        let observed: HashMap<_, _> =
            [("u1-main-0".to_string(), Observed::Running { started_at: 5 })].into();
        observe(&mut records, &desired, &observed, 1000, B);
        assert_eq!(
            records["u1"].containers["main"].state,
            ContainerState::Running { started_at: 5 }
        );
        assert!(plan(&desired, &records, &observed, 1000).is_empty());
        let again = records.clone();
        observe(&mut records, &desired, &observed, 2000, B);
        assert_eq!(records, again);
    }

    #[test]
    fn crashes_restart_with_growing_back_off() {
        let desired: BTreeMap<_, _> = [("u1".to_string(), pod("u1", "Always"))].into();
        let mut records: BTreeMap<_, _> =
            [("u1".to_string(), record("u1", Some("u1-main-0"), 1, 0))].into();
        let observed: HashMap<_, _> = [("u1-main-0".to_string(), exited(1))].into();
        observe(&mut records, &desired, &observed, 1000, B);
        // First crash: restart at once.
        assert_eq!(records["u1"].containers["main"].not_before_ms, 1000);
        let ops = plan(&desired, &records, &observed, 1000);
        assert_eq!(
            ops,
            vec![Op::Remove {
                uid: "u1".into(),
                container: "main".into(),
                id: "u1-main-0".into()
            }]
        );
        // After the executor removed it and one restart happened, the next crash backs off 10s.
        let c = main_of(&mut records, "u1");
        c.current = Some("u1-main-1".into());
        c.restart_count = 1;
        c.state = ContainerState::Running { started_at: 3 };
        let observed: HashMap<_, _> = [("u1-main-1".to_string(), exited(2))].into();
        observe(&mut records, &desired, &observed, 5000, B);
        let c = &records["u1"].containers["main"];
        assert_eq!(c.not_before_ms, 15_000);
        assert!(
            matches!(&c.state, ContainerState::Waiting { reason, .. } if reason == "CrashLoopBackOff")
        );
        assert!(
            matches!(&c.last_state, Some(ContainerState::Terminated { exit_code: 2, reason, .. }) if reason == "Error")
        );
        main_of(&mut records, "u1").current = None;
        assert!(
            plan(&desired, &records, &HashMap::new(), 14_999).is_empty(),
            "still backing off"
        );
        assert_eq!(
            plan(&desired, &records, &HashMap::new(), 15_000),
            vec![Op::Start {
                uid: "u1".into(),
                container: "main".into(),
                id: "u1-main-1".into()
            }]
        );
    }

    #[test]
    fn restart_policies() {
        for (policy, code, restarts) in [
            ("Never", 1, false),
            ("OnFailure", 0, false),
            ("OnFailure", 3, true),
            ("Always", 0, true),
        ] {
            let desired: BTreeMap<_, _> = [("u1".to_string(), pod("u1", policy))].into();
            let mut records: BTreeMap<_, _> =
                [("u1".to_string(), record("u1", Some("u1-main-0"), 1, 0))].into();
            let observed: HashMap<_, _> = [("u1-main-0".to_string(), exited(code))].into();
            observe(&mut records, &desired, &observed, 0, B);
            assert_eq!(
                !records["u1"].containers["main"].done, restarts,
                "{policy} exit {code}"
            );
        }
        let desired: BTreeMap<_, _> = [("u1".to_string(), pod("u1", "Never"))].into();
        let mut records: BTreeMap<_, _> =
            [("u1".to_string(), record("u1", Some("u1-main-0"), 1, 0))].into();
        let observed: HashMap<_, _> = [("u1-main-0".to_string(), exited(0))].into();
        observe(&mut records, &desired, &observed, 0, B);
        assert_eq!(
            report(desired.get("u1"), &records["u1"], "").phase,
            "Succeeded"
        );
        let mut failed = records.clone();
        observe(
            &mut failed,
            &desired,
            &[("u1-main-0".to_string(), exited(3))].into(),
            0,
            B,
        );
    }

    #[test]
    fn oom_kills_are_reported_as_such() {
        let desired: BTreeMap<_, _> = [("u1".to_string(), pod("u1", "Never"))].into();
        let mut records: BTreeMap<_, _> =
            [("u1".to_string(), record("u1", Some("u1-main-0"), 1, 0))].into();
        let oom = Observed::Exited(Exit {
            code: 137,
            oom_killed: true,
            started_at: 1,
            finished_at: 2,
            error: String::new(),
        });
        observe(
            &mut records,
            &desired,
            &[("u1-main-0".to_string(), oom)].into(),
            0,
            B,
        );
        assert!(
            matches!(&records["u1"].containers["main"].state, ContainerState::Terminated { reason, .. } if reason == "OOMKilled")
        );
        assert_eq!(
            report(desired.get("u1"), &records["u1"], "").phase,
            "Failed"
        );
    }

    #[test]
    fn deletion_sends_term_then_kill_after_grace_then_cleans_up() {
        let mut p = pod("u1", "");
        p.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        p.metadata.deletion_grace_period_seconds = Some(2);
        let desired: BTreeMap<_, _> = [("u1".to_string(), p)].into();
        let mut records: BTreeMap<_, _> =
            [("u1".to_string(), record("u1", Some("u1-main-0"), 1, 0))].into();
        let running: HashMap<_, _> =
            [("u1-main-0".to_string(), Observed::Running { started_at: 1 })].into();
        let ops = plan(&desired, &records, &running, 10_000);
        assert_eq!(
            ops,
            vec![Op::Signal {
                uid: "u1".into(),
                container: "main".into(),
                id: "u1-main-0".into(),
                signal: libc::SIGTERM
            }]
        );
        main_of(&mut records, "u1").killed_at_ms = Some(10_000);
        assert!(plan(&desired, &records, &running, 11_999).is_empty());
        let ops = plan(&desired, &records, &running, 12_000);
        assert_eq!(
            ops,
            vec![Op::Signal {
                uid: "u1".into(),
                container: "main".into(),
                id: "u1-main-0".into(),
                signal: libc::SIGKILL
            }]
        );
        let gone: HashMap<_, _> = [("u1-main-0".to_string(), exited(137))].into();
        observe(&mut records, &desired, &gone, 12_100, B);
        assert!(
            records["u1"].containers["main"].done,
            "a container stopped for deletion is not restarted"
        );
        assert_eq!(
            plan(&desired, &records, &gone, 12_100),
            vec![Op::Remove {
                uid: "u1".into(),
                container: "main".into(),
                id: "u1-main-0".into()
            }]
        );
        main_of(&mut records, "u1").current = None;
        assert_eq!(
            plan(&desired, &records, &HashMap::new(), 12_200),
            vec![
                Op::RemoveSandbox { uid: "u1".into() },
                Op::Drop { uid: "u1".into() }
            ]
        );
    }

    #[test]
    fn a_pod_no_longer_desired_is_stopped_with_its_recorded_grace() {
        let records: BTreeMap<_, _> =
            [("u9".to_string(), record("u9", Some("u9-main-0"), 1, 0))].into();
        let running: HashMap<_, _> =
            [("u9-main-0".to_string(), Observed::Running { started_at: 1 })].into();
        let ops = plan(&BTreeMap::new(), &records, &running, 0);
        assert!(matches!(&ops[..], [Op::Signal { signal, .. }] if *signal == libc::SIGTERM));
    }

    #[test]
    fn a_lost_container_is_restarted() {
        let desired: BTreeMap<_, _> = [("u1".to_string(), pod("u1", ""))].into();
        let mut records: BTreeMap<_, _> =
            [("u1".to_string(), record("u1", Some("u1-main-0"), 1, 0))].into();
        let missing: HashMap<_, _> = [("u1-main-0".to_string(), Observed::Missing)].into();
        observe(&mut records, &desired, &missing, 0, B);
        assert_eq!(
            plan(&desired, &records, &missing, 0),
            vec![Op::Remove {
                uid: "u1".into(),
                container: "main".into(),
                id: "u1-main-0".into()
            }]
        );
    }
}
