//! The service proxy, in the agent: the Services and Endpoints of the network stream,
//! rendered by `bramble-proxy`'s library and applied on change (only the chains that
//! changed) and on a periodic full resync.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bramble_api::service::{Endpoints, Service};
use bramble_proxy::{NodeContext, Syncer, iptables};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::NetView;

/// Runs the proxy until `shutdown`: after each change of the network view (`changed`
/// counts them; changes that arrive while a sync runs are folded into the next one), and
/// every `resync`.
pub async fn run(
    view: Arc<Mutex<NetView>>,
    mut changed: watch::Receiver<u64>,
    resync: Duration,
    shutdown: CancellationToken,
) {
    let backend = match tokio::task::spawn_blocking(iptables::detect).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the service proxy cannot run");
            return;
        }
        Err(_) => return,
    };
    tracing::info!(
        backend = backend.prefix(),
        "service proxy: using the iptables backend the node already uses"
    );
    let mut syncer = Syncer::new(backend);
    syncer.resync_every = resync;
    let mut tick = tokio::time::interval(resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            c = changed.changed() => if c.is_err() { return },
            _ = tick.tick() => {}
        }
        changed.borrow_and_update();
        let (services, endpoints, cluster_cidr) = {
            let v = view.lock().unwrap_or_else(|p| p.into_inner());
            (
                v.services.values().cloned().collect::<Vec<Service>>(),
                v.endpoints.values().cloned().collect::<Vec<Endpoints>>(),
                v.cluster_cidr.clone(),
            )
        };
        if cluster_cidr.is_empty() {
            // No snapshot yet: rules from before a restart stay until there is one.
            continue;
        }
        let mut s = std::mem::replace(&mut syncer, Syncer::new(backend));
        let started = std::time::Instant::now();
        let (s, result) = match tokio::task::spawn_blocking(move || {
            let node = NodeContext {
                cluster_cidr,
                existing_chains: Vec::new(),
            };
            let r = s.sync(&services, &endpoints, &node);
            (s, r)
        })
        .await
        {
            Ok(v) => v,
            Err(_) => return,
        };
        syncer = s;
        match result {
            Ok(stats) => {
                failures = 0;
                tracing::debug!(full = stats.full, lines = stats.lines, took = ?started.elapsed(), "service rules applied");
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "cannot apply the service rules; retrying");
                let wait = bramble_api::backoff::delay(
                    failures - 1,
                    Duration::from_millis(200),
                    Duration::from_secs(10),
                    0.5,
                );
                tokio::time::sleep(wait).await;
                // Retry even without a new change.
                changed.mark_changed();
            }
        }
    }
}
