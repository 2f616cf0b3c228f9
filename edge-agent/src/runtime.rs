//! The container runtime boundary: a narrow trait that the pod manager drives, with one real
//! implementation (libcontainer, through a single-threaded shim process per container) and,
//! for hollow agents, an in-memory one.
//!
//! libcontainer clones with a raw syscall and changes the process's working directory, which
//! deadlocks or races inside a multi-threaded tokio process. So the agent never calls it:
//! it re-executes itself as `bramble-agent shim`, a single-threaded helper that creates and
//! starts the container, pumps its output into a rotating log file, waits for its exit, and
//! records the exit status in a file. Shims run in their own process group and outlive an
//! agent restart; a restarted agent re-adopts running containers from their files.

pub mod bundle;
pub mod container;
pub mod enter;
pub mod memory;
pub mod pause;
pub mod probe;
pub mod sandbox;
pub mod security;
pub mod shim;

use std::path::PathBuf;

use bramble_api::pod::Container;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

extern "C" fn on_sigpipe(_: nix::libc::c_int) {}

/// Makes SIGPIPE harmless to this process without passing "ignored" on to containers.
///
/// Rust's runtime sets SIGPIPE to SIG_IGN, and an ignored signal stays ignored across
/// `exec`: every container (and exec probe) started from this process would ignore it, so
/// `yes | head -n 1` in a pod never ends (`yes` writes to the closed pipe forever) and a
/// shell cannot trap it. A handler that does nothing has the same effect here (writes to a
/// closed pipe fail with EPIPE) and is reset to the default by `exec`, as in any container
/// runtime that is not written in Rust. Call it first thing in `main`.
#[allow(unsafe_code)]
pub fn sigpipe_default_for_children() {
    let action = SigAction::new(
        SigHandler::Handler(on_sigpipe),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, so it is async-signal-safe; nothing else in the
    // process sets a SIGPIPE disposition.
    if let Err(e) = unsafe { sigaction(Signal::SIGPIPE, &action) } {
        eprintln!("bramble-agent: cannot set the SIGPIPE handler: {e}");
    }
}

/// What a container needs to run.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Unique and stable per container instance: `<pod uid>-<container>-<attempt>`.
    pub id: String,
    pub pod_uid: String,
    pub pod_name: String,
    pub namespace: String,
    pub container: Container,
    /// The image: its layers (read-only overlay lower directories) and config.
    pub image: crate::images::PreparedImage,
    /// The pod's network namespace; None for `hostNetwork: true`.
    pub netns: Option<PathBuf>,
    /// Host directories for the pod's volumes, by volume name.
    pub volumes: Vec<(String, PathBuf)>,
    pub hostname: String,
    /// The file the container's stdout and stderr go to.
    pub log_path: PathBuf,
    /// What it may do: user, capabilities, seccomp, read-only root.
    pub security: security::Security,
    /// Files bind-mounted over the image's (`/etc/resolv.conf`, `/etc/hosts`): the path in
    /// the container, the file on the node.
    pub files: Vec<(String, PathBuf)>,
    /// Service environment variables; the container's own `env` wins over them.
    pub service_env: Vec<(String, String)>,
    /// `shareProcessNamespace`: the container joins the pod's PID namespace.
    pub share_pids: bool,
}

/// What the runtime observes of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The shim is setting it up.
    Starting,
    Running {
        started_at: i64,
    },
    Exited(Exit),
    /// Neither running nor with a recorded exit (the node rebooted, or the files are gone).
    Missing,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exit {
    /// The exit code, or 128 + signal.
    pub code: i32,
    pub oom_killed: bool,
    pub started_at: i64,
    pub finished_at: i64,
    /// Set when the container could not be started at all.
    pub error: String,
}

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("container {id}: {source}")]
    Container {
        id: String,
        #[source]
        source: ContainerError,
    },
    #[error("pod sandbox {uid}: {source}")]
    Sandbox {
        uid: String,
        #[source]
        source: SandboxError,
    },
}

/// Why a container could not be started, signalled or removed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The pod's settings forbid the start (`runAsNonRoot` and a root user, a missing
    /// seccomp profile): reported as `CreateContainerConfigError`.
    #[error("{0}")]
    Config(String),
    #[error("image layer {0} is missing")]
    LayerMissing(PathBuf),
    #[error("the image has no layers")]
    NoLayers,
    #[error("mounting the overlay rootfs: {0}")]
    MountRootfs(#[source] nix::Error),
    /// The image's `User` names a user or group its rootfs does not have.
    #[error(transparent)]
    User(#[from] bundle::UserError),
    #[error("spawning the shim: {0}")]
    SpawnShim(#[source] std::io::Error),
    /// The shim ended first; its log says why.
    #[error("the shim exited without starting the container: {log}")]
    ShimExited { log: String },
    #[error("the shim did not start the container in time")]
    StartTimeout,
    /// Not a signal number.
    #[error("{0}")]
    Signal(#[source] nix::Error),
    #[error("kill {pid}: {source}")]
    Kill {
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("umount rootfs: {0}")]
    UnmountRootfs(#[source] nix::Error),
}

/// Why a pod sandbox (its network namespace) could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unshare(CLONE_NEWNET): {0}")]
    Unshare(#[source] nix::Error),
    #[error("bringing up lo: {0}")]
    LoopbackUp(#[source] std::io::Error),
    #[error("bind-mounting the namespace to {path}: {source}")]
    BindMount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("the namespace thread panicked")]
    ThreadPanicked,
    /// The pod's PID namespace (`shareProcessNamespace`) could not be made.
    #[error("{0}")]
    Pause(String),
    #[error("umount {path}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Why a probe failed: an expected outcome, recorded and reported with this text (after
/// `Liveness probe failed: ` when it restarts the container).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the container is not running")]
    NotRunning,
    #[error("the probe names a port the container does not have")]
    UnknownPort,
    #[error("{host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host}: no address")]
    NoAddress { host: String },
    #[error("{path}: {source}")]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setns: {0}")]
    Setns(#[source] nix::Error),
    #[error("dial tcp {addr}: {source}")]
    Dial {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Setting up, writing to or reading from the probe's connection.
    #[error("{0}")]
    Stream(#[source] std::io::Error),
    #[error("not an HTTP answer: {0:?}")]
    NotHttp(String),
    #[error("HTTP probe failed with statuscode: {0}")]
    HttpStatus(u16),
    #[error("starting the command in the container: {0}")]
    Enter(#[source] std::io::Error),
    #[error("command {command:?} exited with {status}")]
    Exited {
        command: Vec<String>,
        status: std::process::ExitStatus,
    },
    /// What the hollow runtime's `false` reports.
    #[error("exit status {0}")]
    ExitCode(i32),
    #[error("command {command:?} timed out after {timeout:?}")]
    TimedOut {
        command: Vec<String>,
        timeout: std::time::Duration,
    },
    /// Waiting for the probe's command.
    #[error("{0}")]
    Wait(#[source] std::io::Error),
    #[error("the probe thread panicked")]
    ThreadPanicked,
    /// The blocking task that ran the probe failed.
    #[error("{0}")]
    Task(#[source] tokio::task::JoinError),
}

impl RuntimeError {
    /// Whether the pod's own settings refused the start (not the runtime failing).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            RuntimeError::Container {
                source: ContainerError::Config(_),
                ..
            }
        )
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let what = what.into();
        move |source| RuntimeError::Io { what, source }
    }
}

/// The operations the pod manager needs. Calls may block: the manager runs them off the
/// async workers.
pub trait Runtime: Send + Sync + 'static {
    /// Creates the pod's shared sandbox (its network namespace); returns its path, or None
    /// for host networking. Idempotent.
    fn create_sandbox(
        &self,
        pod_uid: &str,
        host_network: bool,
    ) -> Result<Option<PathBuf>, RuntimeError>;
    /// Removes the sandbox. Idempotent.
    fn remove_sandbox(&self, pod_uid: &str) -> Result<(), RuntimeError>;
    /// Creates and starts a container; returns once it runs or has failed to start.
    fn start(&self, spec: &ContainerSpec) -> Result<(), RuntimeError>;
    /// What the container is doing now.
    fn observe(&self, id: &str) -> Observed;
    /// Sends a signal (SIGTERM, SIGKILL) to the container's processes.
    fn signal(&self, id: &str, signal: i32) -> Result<(), RuntimeError>;
    /// Removes what is left of an exited container (rootfs, bundle). Idempotent.
    fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Runs one probe against a running container; `netns` is its pod's network namespace
    /// (None: host network). Err says why it failed.
    fn probe(
        &self,
        id: &str,
        netns: Option<&std::path::Path>,
        action: &ProbeAction,
        timeout: std::time::Duration,
    ) -> Result<(), ProbeError>;
    /// What an exec into a running container enters: its init's pid (whose root and working
    /// directory it takes), and its process's environment.
    fn exec_target(&self, id: &str) -> Result<ExecTarget, ProbeError>;
    /// A running container's CPU time so far (ns) and memory working set (bytes, usage less
    /// inactive file pages), from its cgroup; None when unknown.
    fn usage(&self, id: &str) -> Option<(u64, u64)>;
}

/// A running container, as an exec enters it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecTarget {
    /// The container's init (the host's pid).
    pub pid: i32,
    /// Its process's environment.
    pub env: Vec<(String, String)>,
    /// Its OCI config, from which `bramble-agent enter` takes the confinement.
    pub config: PathBuf,
    /// This agent's binary, which runs `enter`.
    pub helper: PathBuf,
}

impl ExecTarget {
    /// The command that runs `command` in the container, confined as the container's own
    /// process is (`bramble-agent enter`), with the container's environment.
    pub fn command(&self, command: &[String]) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.helper);
        cmd.arg("enter")
            .arg("--pid")
            .arg(self.pid.to_string())
            .arg("--config")
            .arg(&self.config)
            .arg("--")
            .args(command)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if !self.env.iter().any(|(k, _)| k == "PATH") {
            cmd.env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        cmd
    }
}

/// A probe resolved against its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    Exec(Vec<String>),
    Http {
        host: String,
        port: u16,
        path: String,
    },
    Tcp {
        host: String,
        port: u16,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These texts end up in pod statuses and events; the typed errors keep them as they were.
    #[test]
    fn messages_name_the_container_or_sandbox_and_the_cause() {
        let e = RuntimeError::Container {
            id: "u-c-0".into(),
            source: ContainerError::Kill {
                pid: 42,
                source: nix::errno::Errno::EPERM,
            },
        };
        assert_eq!(
            e.to_string(),
            "container u-c-0: kill 42: EPERM: Operation not permitted"
        );
        let e = RuntimeError::Sandbox {
            uid: "u".into(),
            source: SandboxError::BindMount {
                path: "/data/netns/u".into(),
                source: nix::errno::Errno::EINVAL,
            },
        };
        assert_eq!(
            e.to_string(),
            "pod sandbox u: bind-mounting the namespace to /data/netns/u: EINVAL: Invalid argument"
        );
        assert_eq!(
            ContainerError::LayerMissing("/images/l1".into()).to_string(),
            "image layer /images/l1 is missing"
        );
        let e = ProbeError::TimedOut {
            command: vec!["cat".into(), "/tmp/healthy".into()],
            timeout: std::time::Duration::from_secs(1),
        };
        assert_eq!(
            e.to_string(),
            r#"command ["cat", "/tmp/healthy"] timed out after 1s"#
        );
    }
}
