//! The hollow runtime: containers that exist only in memory, for hollow agents (many
//! simulated nodes in one process, like Kubernetes' kubemark). Everything above it — the pod
//! manager, the local store, the MQTT session — is the real agent code.
//!
//! A container "runs" from `start` until it is signalled; a container whose command is
//! `false` (or `exit N`) ends at once with that code, so restart paths can be exercised.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::{ContainerSpec, Exit, Observed, ProbeError, Runtime, RuntimeError};
use crate::images::{ImageError, ImageStore, PreparedImage, PullPolicy};

fn now() -> i64 {
    bramble_api::time::now_secs()
}

/// In-memory containers.
#[derive(Default)]
pub struct MemoryRuntime {
    containers: Mutex<HashMap<String, Observed>>,
}

impl MemoryRuntime {
    /// An empty runtime.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many containers are running (for tests and benches).
    pub fn running(&self) -> usize {
        self.containers
            .lock()
            .map(|c| {
                c.values()
                    .filter(|o| matches!(o, Observed::Running { .. }))
                    .count()
            })
            .unwrap_or(0)
    }
}

/// The exit code a hollow container's command asks for, if it ends at once.
fn immediate_exit(spec: &ContainerSpec) -> Option<i32> {
    let argv = super::bundle::argv(&spec.container, &spec.image.config);
    match argv
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["false"] => Some(1),
        ["true"] => Some(0),
        ["exit", n] => n.parse().ok(),
        _ => None,
    }
}

impl Runtime for MemoryRuntime {
    fn usage(&self, _id: &str) -> Option<(u64, u64)> {
        None
    }
    fn exec_target(&self, _id: &str) -> Result<super::ExecTarget, ProbeError> {
        // A hollow node runs no processes to enter.
        Err(ProbeError::NotRunning)
    }
    fn probe(
        &self,
        _id: &str,
        _netns: Option<&std::path::Path>,
        action: &super::ProbeAction,
        _timeout: std::time::Duration,
    ) -> Result<(), ProbeError> {
        // Hollow probes: an exec of `false` fails, everything else succeeds.
        match action {
            super::ProbeAction::Exec(cmd) if cmd.first().map(String::as_str) == Some("false") => {
                Err(ProbeError::ExitCode(1))
            }
            _ => Ok(()),
        }
    }
    fn create_sandbox(
        &self,
        _pod_uid: &str,
        _host_network: bool,
    ) -> Result<Option<PathBuf>, RuntimeError> {
        Ok(None)
    }

    fn remove_sandbox(&self, _pod_uid: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn start(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let t = now();
        let state = match immediate_exit(spec) {
            Some(code) => Observed::Exited(Exit {
                code,
                oom_killed: false,
                started_at: t,
                finished_at: t,
                error: String::new(),
            }),
            None => Observed::Running { started_at: t },
        };
        if let Ok(mut c) = self.containers.lock() {
            c.entry(spec.id.clone()).or_insert(state);
        }
        Ok(())
    }

    fn observe(&self, id: &str) -> Observed {
        self.containers
            .lock()
            .ok()
            .and_then(|c| c.get(id).cloned())
            .unwrap_or(Observed::Missing)
    }

    fn signal(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        if let Ok(mut c) = self.containers.lock()
            && let Some(o @ Observed::Running { .. }) = c.get_mut(id)
        {
            let started_at = match o {
                Observed::Running { started_at } => *started_at,
                _ => 0,
            };
            *o = Observed::Exited(Exit {
                code: 128 + signal,
                oom_killed: false,
                started_at,
                finished_at: now(),
                error: String::new(),
            });
        }
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        if let Ok(mut c) = self.containers.lock() {
            c.remove(id);
        }
        Ok(())
    }
}

/// Hollow nodes have every image.
pub struct AnyImage;

impl ImageStore for AnyImage {
    fn prepare(&self, _image: &str, _policy: PullPolicy) -> Result<PreparedImage, ImageError> {
        Ok(PreparedImage {
            layers: vec![PathBuf::from("/nonexistent/hollow-rootfs")],
            config: Default::default(),
        })
    }
}
