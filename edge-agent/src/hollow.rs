//! Hollow agents: many simulated nodes in one process, each the real agent (its own MQTT
//! connection, local store, pod manager and reconciler) over the in-memory runtime.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::agent::{AgentError, run_with_runtime};
use crate::config::{Config, HollowArgs};
use crate::runtime::memory::{AnyImage, MemoryRuntime};

/// The configuration of hollow node `n`, derived from the shared one.
pub fn node_config(base: &Config, args: &HollowArgs, n: usize) -> Result<Config, String> {
    let name = format!("{}-{n}", args.prefix);
    bramble_api::names::dns1123_subdomain(&name).map_err(|e| format!("--prefix: {e}"))?;
    let mut c = base.clone();
    c.data_dir = base.data_dir.join(&name);
    c.node_name = name;
    for l in args.node_labels.iter().filter(|l| !l.is_empty()) {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| format!("--node-labels: {l:?} is not key=value"))?;
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
