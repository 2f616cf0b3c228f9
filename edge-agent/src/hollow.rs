//! Hollow agents: many simulated nodes in one process, each the real agent (its own MQTT
//! connection, local store, pod manager and reconciler) over the in-memory runtime.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use bramble_api::names::NameError;

use crate::agent::{AgentError, run_with_runtime};
use crate::config::{Config, HollowArgs};
use crate::runtime::memory::{AnyImage, MemoryRuntime};

/// A hollow node's flags that do not make a valid node configuration.
#[derive(Debug, thiserror::Error)]
pub enum HollowConfigError {
    /// The node names `<prefix>-<n>` are not DNS subdomains.
    #[error("--prefix: {0}")]
    Prefix(#[source] NameError),
    #[error("--node-labels: {0:?} is not key=value")]
    NodeLabel(String),
}

/// The configuration of hollow node `n`, derived from the shared one.
pub fn node_config(
    base: &Config,
    args: &HollowArgs,
    n: usize,
) -> Result<Config, HollowConfigError> {
    let name = format!("{}-{n}", args.prefix);
    bramble_api::names::dns1123_subdomain(&name).map_err(HollowConfigError::Prefix)?;
    let mut c = base.clone();
    c.data_dir = base.data_dir.join(&name);
    c.node_name = name;
    for l in args.node_labels.iter().filter(|l| !l.is_empty()) {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| HollowConfigError::NodeLabel(l.clone()))?;
        c.labels.push((k.to_string(), v.to_string()));
    }
    c.labels.push(("bramble.io/hollow".into(), "true".into()));
    c.capacity_override = Some((args.cpus, args.memory_bytes));
    c.reserved_cpu = 0;
    c.reserved_memory = 0;
    // Hollow pods need no addresses, and thousands of nodes following the network stream
    // would measure the stream rather than the control plane.
    c.pod_network = false;
    c.proxy = false;
    // Simulated containers use nothing, and the host's own use is not a hollow node's.
    c.memory_runtime = true;
    Ok(c)
}

/// Runs `args.count` hollow nodes until `shutdown`.
pub async fn run(
    base: Config,
    args: HollowArgs,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let mut tasks = Vec::with_capacity(args.count);
    for n in 0..args.count {
        let config = node_config(&base, &args, n).map_err(AgentError::Config)?;
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let name = config.node_name.clone();
            if let Err(e) = run_with_runtime(
                config,
                Arc::new(MemoryRuntime::new()),
                Arc::new(AnyImage),
                None,
                shutdown,
            )
            .await
            {
                tracing::error!(node = name, error = %e, "hollow node stopped");
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
