//! What an executed operation came to, folded into the pod records ([`on_result`]): the
//! bookkeeping after every action, the back-off gate of a failed one, and the typed waiting
//! reasons the agent reports.

use std::collections::BTreeMap;

use bramble_api::pod::Pod;
use bramble_api::wire::ContainerState;

use super::{Backoff, ContainerRecord, Op, PodRecord};

/// Why a container waits: the Kubernetes reasons the agent sets itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Being made: sandbox, network, image pull, or started and not yet observed.
    ContainerCreating,
    /// The volumes, the sandbox or the pod network could not be made (backed off).
    CreatePodSandboxError,
    /// The runtime refused to start the container (backed off).
    CreateContainerError,
    /// The pod's own settings forbid the start (`runAsNonRoot` with a root user; backed
    /// off).
    CreateContainerConfigError,
    /// The image could not be fetched (backed off).
    ErrImagePull,
    /// `imagePullPolicy: Never` and the node does not have the image.
    ErrImageNeverPull,
    /// The image reference does not parse.
    InvalidImageName,
    /// Waiting out the restart back-off after an exit.
    CrashLoopBackOff,
    /// The instance vanished without an exit record (a reboot took it).
    ContainerLost,
}

impl Waiting {
    /// The reason as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Waiting::ContainerCreating => "ContainerCreating",
            Waiting::CreatePodSandboxError => "CreatePodSandboxError",
            Waiting::CreateContainerError => "CreateContainerError",
            Waiting::CreateContainerConfigError => "CreateContainerConfigError",
            Waiting::ErrImagePull => "ErrImagePull",
            Waiting::ErrImageNeverPull => "ErrImageNeverPull",
            Waiting::InvalidImageName => "InvalidImageName",
            Waiting::CrashLoopBackOff => "CrashLoopBackOff",
            Waiting::ContainerLost => "ContainerLost",
        }
    }

    /// The container state that reports this reason.
    pub fn state(self, message: impl Into<String>) -> ContainerState {
        ContainerState::Waiting {
            reason: self.as_str().into(),
            message: message.into(),
        }
    }
}

/// The message of a pod that waits for its node's pod CIDR.
pub const CIDR_WAIT: &str = "waiting for the master to assign this node a pod CIDR";

/// Whether a new sandbox reached the pod network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// Connected (or no pod network: host networking, hollow nodes).
    Connected,
    /// The node has no pod CIDR yet: the pod waits, without back-off.
    WaitingForCidr,
    /// A real failure (no address left, netlink refused): backed off.
    Failed(String),
}

/// What executing an [`Op`] came to; [`on_result`] folds it into the records.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// CreateSandbox: the volumes or the sandbox could not be made.
    SandboxFailed(String),
    /// CreateSandbox: the sandbox exists (`netns`: its network namespace), with the pod IP
    /// it was given, if any, and whether it is on the pod network.
    SandboxMade {
        netns: Option<std::path::PathBuf>,
        pod_ip: Option<std::net::Ipv4Addr>,
        network: Network,
    },
    /// Start: the image is still being pulled; a later round takes the result.
    Pulling { image: String },
    /// Start: the image cannot be used.
    ImageFailed { reason: Waiting, message: String },
    /// Start: the instance runs (`readiness_probe`: it is not ready until its probe passes).
    Started { readiness_probe: bool },
    /// Start: the runtime refused.
    StartFailed(String),
    /// Start: the pod's settings refuse the container (`CreateContainerConfigError`).
    ConfigFailed(String),
    /// Signal: sent (or tried: a failure is retried after the grace period).
    Signalled,
    /// PreStop: the hook runs (its end is folded in by the manager).
    HookStarted,
    /// Remove: the instance is gone.
    Removed,
    /// Nothing to record (a failed removal is planned again; RemoveSandbox; Drop).
    Done,
}

/// The record of a pod whose sandbox is (re)made: created on first sight, not ready until
/// the sandbox is.
pub fn sandbox_record<'a>(
    records: &'a mut BTreeMap<String, PodRecord>,
    uid: &str,
    pod: &Pod,
    now_ms: i64,
) -> &'a mut PodRecord {
    let rec = records.entry(uid.to_string()).or_insert_with(|| PodRecord {
        uid: uid.to_string(),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        sandbox_ready: false,
        netns: None,
        pod_ip: String::new(),
        start_time: now_ms / 1000,
        grace_seconds: pod.spec.termination_grace_period_seconds.unwrap_or(30),
        evicted: None,
        containers: pod
            .spec
            .all_containers()
            .map(|c| (c.name.clone(), ContainerRecord::new(&c.image)))
            .collect(),
    });
    rec.sandbox_ready = false;
    rec
}

/// The instance number the next start of `container` gets (its record made if missing).
pub fn next_instance(rec: &mut PodRecord, container: &str, image: &str) -> u32 {
    rec.containers
        .entry(container.to_string())
        .or_insert_with(|| ContainerRecord::new(image))
        .attempt
}

/// Folds what executing `op` came to into the records: the bookkeeping after every action,
/// including the back-off gate of a failed one. Returns the uid of a pod that was dropped.
pub fn on_result(
    records: &mut BTreeMap<String, PodRecord>,
    op: &Op,
    outcome: Outcome,
    now_ms: i64,
    backoff: Backoff,
) -> Option<String> {
    let wait = |c: &mut ContainerRecord, reason: Waiting, message: &str| {
        c.start_failures += 1;
        let delay =
            bramble_api::backoff::crash_loop(c.start_failures - 1, backoff.base, backoff.max);
        c.not_before_ms = now_ms + delay.as_millis() as i64;
        c.state = reason.state(message);
    };
    match (op, outcome) {
        (Op::Drop { uid }, _) => {
            records.remove(uid);
            return Some(uid.clone());
        }
        (Op::CreateSandbox { uid }, Outcome::SandboxFailed(message)) => {
            let rec = records.get_mut(uid)?;
            for c in rec.containers.values_mut() {
                wait(c, Waiting::CreatePodSandboxError, &message);
            }
        }
        (
            Op::CreateSandbox { uid },
            Outcome::SandboxMade {
                netns,
                pod_ip,
                network,
            },
        ) => {
            let rec = records.get_mut(uid)?;
            rec.netns = netns;
            if let Some(ip) = pod_ip {
                rec.pod_ip = ip.to_string();
            }
            match network {
                Network::Connected => rec.sandbox_ready = true,
                Network::WaitingForCidr => {
                    for c in rec.containers.values_mut() {
                        c.state = Waiting::ContainerCreating.state(CIDR_WAIT);
                    }
                }
                Network::Failed(message) => {
                    for c in rec.containers.values_mut() {
                        wait(c, Waiting::CreatePodSandboxError, &message);
                    }
                }
            }
        }
        (Op::Start { uid, container, id }, outcome) => {
            let c = records.get_mut(uid)?.containers.get_mut(container)?;
            match outcome {
                Outcome::Pulling { image } => {
                    c.state = Waiting::ContainerCreating.state(format!("pulling image {image:?}"));
                }
                Outcome::ImageFailed { reason, message } => wait(c, reason, &message),
                Outcome::StartFailed(message) => {
                    wait(c, Waiting::CreateContainerError, &message);
                }
                Outcome::ConfigFailed(message) => {
                    wait(c, Waiting::CreateContainerConfigError, &message);
                }
                Outcome::Started { readiness_probe } => {
                    let instance = c.attempt;
                    c.current = Some(id.clone());
                    c.restart_count = instance;
                    c.attempt = instance + 1;
                    c.start_failures = 0;
                    c.killed_at_ms = None;
                    c.exit_seen = None;
                    c.done = false;
                    // A new instance with a readiness probe is not ready until the probe
                    // passes, whatever the last instance was.
                    c.ready = readiness_probe.then_some(false);
                    c.state = Waiting::ContainerCreating.state("");
                }
                _ => {}
            }
        }
        (Op::PreStop { uid, container, .. }, Outcome::HookStarted) => {
            let c = records.get_mut(uid)?.containers.get_mut(container)?;
            c.pre_stop = super::PreStop::Running(now_ms);
        }
        (Op::Signal { uid, container, .. }, _) => {
            let c = records.get_mut(uid)?.containers.get_mut(container)?;
            c.killed_at_ms.get_or_insert(now_ms);
        }
        (Op::Remove { uid, container, .. }, Outcome::Removed) => {
            let c = records.get_mut(uid)?.containers.get_mut(container)?;
            c.current = None;
        }
        _ => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_secs(10),
        max: Duration::from_secs(300),
    };
    const NOW: i64 = 1_000_000;

    fn records() -> BTreeMap<String, PodRecord> {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"containers": [{"name": "a", "image": "i:1"}, {"name": "b", "image": "i:2"}]}
        }))
        .unwrap();
        let mut records = BTreeMap::new();
        sandbox_record(&mut records, "u", &pod, NOW);
        records
    }

    fn sandbox() -> Op {
        Op::CreateSandbox { uid: "u".into() }
    }

    fn start(container: &str) -> Op {
        Op::Start {
            uid: "u".into(),
            container: container.into(),
            id: format!("u-{container}-0"),
        }
    }

    fn reason(c: &ContainerRecord) -> (String, String) {
        match &c.state {
            ContainerState::Waiting { reason, message } => (reason.clone(), message.clone()),
            other => panic!("not waiting: {other:?}"),
        }
    }

    /// (op, outcome, containers that must be backed off, the reason every touched container
    /// shows, sandbox ready afterwards).
    #[test]
    fn each_outcome_updates_the_records() {
        let made = |network| Outcome::SandboxMade {
            netns: Some("/run/netns/u".into()),
            pod_ip: Some(std::net::Ipv4Addr::new(10, 42, 0, 5)),
            network,
        };
        let cases: Vec<(Op, Outcome, &[&str], &str, bool)> = vec![
            (
                sandbox(),
                Outcome::SandboxFailed("disk".into()),
                &["a", "b"],
                "CreatePodSandboxError",
                false,
            ),
            (
                sandbox(),
                made(Network::Connected),
                &[],
                "ContainerCreating",
                true,
            ),
            (
                sandbox(),
                made(Network::WaitingForCidr),
                &[],
                "ContainerCreating",
                false,
            ),
            (
                sandbox(),
                made(Network::Failed("netlink".into())),
                &["a", "b"],
                "CreatePodSandboxError",
                false,
            ),
            (
                start("a"),
                Outcome::Pulling {
                    image: "i:1".into(),
                },
                &[],
                "ContainerCreating",
                false,
            ),
            (
                start("a"),
                Outcome::ImageFailed {
                    reason: Waiting::ErrImageNeverPull,
                    message: "absent".into(),
                },
                &["a"],
                "ErrImageNeverPull",
                false,
            ),
            (
                start("b"),
                Outcome::StartFailed("exec".into()),
                &["b"],
                "CreateContainerError",
                false,
            ),
        ];
        for (op, outcome, backed_off, want, ready) in cases {
            let mut r = records();
            let label = format!("{op:?} / {outcome:?}");
            assert_eq!(on_result(&mut r, &op, outcome, NOW, B), None, "{label}");
            let rec = &r["u"];
            assert_eq!(rec.sandbox_ready, ready, "{label}");
            for (name, c) in &rec.containers {
                let hit = backed_off.contains(&name.as_str());
                assert_eq!(c.start_failures, u32::from(hit), "{label}: {name}");
                let gate = if hit { NOW + 10_000 } else { 0 };
                assert_eq!(c.not_before_ms, gate, "{label}: {name}");
                if hit || backed_off.is_empty() {
                    assert_eq!(reason(c).0, want, "{label}: {name}");
                }
            }
        }
    }

    #[test]
    fn a_made_sandbox_keeps_its_namespace_and_address_even_off_the_network() {
        let mut r = records();
        let outcome = Outcome::SandboxMade {
            netns: Some("/run/netns/u".into()),
            pod_ip: Some(std::net::Ipv4Addr::new(10, 42, 0, 5)),
            network: Network::Failed("netlink".into()),
        };
        on_result(&mut r, &sandbox(), outcome, NOW, B);
        assert_eq!(r["u"].pod_ip, "10.42.0.5");
        assert_eq!(
            r["u"].netns.as_deref(),
            Some(std::path::Path::new("/run/netns/u"))
        );
        let waiting = Outcome::SandboxMade {
            netns: Some("/run/netns/u".into()),
            pod_ip: None,
            network: Network::WaitingForCidr,
        };
        on_result(&mut r, &sandbox(), waiting, NOW, B);
        assert_eq!(
            reason(&r["u"].containers["a"]),
            ("ContainerCreating".into(), CIDR_WAIT.into())
        );
        assert_eq!(r["u"].pod_ip, "10.42.0.5", "kept while waiting");
    }

    #[test]
    fn repeated_failures_double_the_gate_and_a_start_clears_it() {
        let mut r = records();
        for _ in 0..3 {
            on_result(
                &mut r,
                &start("a"),
                Outcome::StartFailed("x".into()),
                NOW,
                B,
            );
        }
        let a = &r["u"].containers["a"];
        assert_eq!((a.start_failures, a.not_before_ms), (3, NOW + 40_000));
        r.get_mut("u")
            .unwrap()
            .containers
            .get_mut("a")
            .unwrap()
            .attempt = 2;
        on_result(
            &mut r,
            &start("a"),
            Outcome::Started {
                readiness_probe: true,
            },
            NOW,
            B,
        );
        let a = &r["u"].containers["a"];
        assert_eq!(a.current.as_deref(), Some("u-a-0"));
        assert_eq!((a.attempt, a.restart_count, a.start_failures), (3, 2, 0));
        assert_eq!(a.ready, Some(false), "not ready before its probe");
        on_result(
            &mut r,
            &start("b"),
            Outcome::Started {
                readiness_probe: false,
            },
            NOW,
            B,
        );
        assert_eq!(r["u"].containers["b"].ready, None);
    }

    #[test]
    fn stopping_removing_and_dropping() {
        let mut r = records();
        let signal = |sig| Op::Signal {
            uid: "u".into(),
            container: "a".into(),
            id: "u-a-0".into(),
            signal: sig,
        };
        on_result(&mut r, &signal(libc::SIGTERM), Outcome::Signalled, NOW, B);
        on_result(
            &mut r,
            &signal(libc::SIGKILL),
            Outcome::Signalled,
            NOW + 30_000,
            B,
        );
        assert_eq!(
            r["u"].containers["a"].killed_at_ms,
            Some(NOW),
            "the first signal's time"
        );
        r.get_mut("u")
            .unwrap()
            .containers
            .get_mut("a")
            .unwrap()
            .current = Some("u-a-0".into());
        let remove = Op::Remove {
            uid: "u".into(),
            container: "a".into(),
            id: "u-a-0".into(),
        };
        on_result(&mut r, &remove, Outcome::Done, NOW, B);
        assert!(
            r["u"].containers["a"].current.is_some(),
            "a failed removal keeps it"
        );
        on_result(&mut r, &remove, Outcome::Removed, NOW, B);
        assert!(r["u"].containers["a"].current.is_none());
        let gone = on_result(&mut r, &Op::Drop { uid: "u".into() }, Outcome::Done, NOW, B);
        assert_eq!(gone.as_deref(), Some("u"));
        assert!(r.is_empty());
        // An outcome for a pod the records no longer hold changes nothing.
        assert_eq!(
            on_result(
                &mut r,
                &start("a"),
                Outcome::StartFailed("x".into()),
                NOW,
                B
            ),
            None
        );
        assert!(r.is_empty());
    }
}
