//! Controllers: level-triggered loops that keep objects true to their spec, all on one
//! shell ([`run`]). A controller names the kinds it watches, maps each change to the keys
//! it touches, and reconciles one key at a time over a pure planner; the shell lists, watches,
//! batches what is already queued, and retries a failed key after a capped, jittered
//! back-off ([`queue`]) instead of leaving it for the next unrelated change. A watch that
//! ends (fallen behind, store restarted) re-lists.
//!
//! | controller | key | watches | file |
//! |---|---|---|---|
//! | Deployment (and its garbage collection) | Deployment, or a gone one's ReplicaSets | Deployment, ReplicaSet, Pod | [`deployment`] |
//! | ReplicaSet (and its garbage collection) | ReplicaSet, or a gone one's pods | ReplicaSet, Pod | [`replicaset`] |
//! | DaemonSet (and its garbage collection) | DaemonSet, or a gone one's pods | DaemonSet, Pod, Node | [`daemonset`] |
//! | Job (and its garbage collection; deadlines, TTLs and back-offs on timers) | Job, or a gone one's pods | Job, Pod | [`job`] |
//! | CronJob (and its garbage collection; woken at the next scheduled time) | CronJob, or a gone one's Jobs | CronJob, Job | [`cronjob`] |
//! | Endpoints | namespace | Service, Pod | [`endpoints`] |
//! | node IPAM | node | Node | [`ipam`] |
//! | credential revocation | node | Node | [`revocation`] |
//!
//! The node lifecycle controller ([`nodes`]) is driven by the clock, not by changes: it
//! re-plans every node every 500 ms, so its retry is the next sweep.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod ipam;
pub mod job;
pub mod nodes;
pub mod objects;
pub mod queue;
pub mod replicaset;
pub mod revocation;

use std::fmt::Debug;
use std::future::Future;
use std::time::Instant;

use bramble_api::Kind;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use self::queue::{Retry, WorkQueue};
use crate::store::{Change, Store, StoreError, Watch, WatchFilter};

/// A controller on the shared shell.
pub trait Controller: Send {
    /// What one reconcile brings in line.
    type Key: Ord + Clone + Debug + Send + Sync;
    /// For logs.
    const NAME: &'static str;
    /// The kinds whose changes wake it (one store watch each).
    const WATCHES: &'static [Kind];

    /// After a (re)list: every key to bring in line.
    fn resync(&mut self, store: &Store) -> impl Future<Output = Vec<Self::Key>> + Send;
    /// The keys a change touches.
    fn keys(&mut self, change: &Change) -> Vec<Self::Key>;
    /// Keys the last reconciles asked to look at again later, with when (a deadline, a
    /// TTL, a back-off that no change will end); most controllers ask for none.
    fn timers(&mut self) -> Vec<(Self::Key, Instant)> {
        Vec::new()
    }
    /// Brings one key in line; an error is retried after a back-off.
    fn reconcile(
        &mut self,
        store: &Store,
        key: &Self::Key,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

fn all(kind: Kind) -> WatchFilter {
    WatchFilter::all(kind)
}

/// The next change on any of the watches.
async fn next(watches: &mut [Watch]) -> Result<std::sync::Arc<Change>, StoreError> {
    let pending = watches.iter_mut().map(|w| Box::pin(w.next()));
    futures_util::future::select_all(pending).await.0
}

/// Runs a controller until `shutdown`.
pub async fn run<C: Controller>(mut c: C, store: Store, shutdown: CancellationToken) {
    loop {
        let rev = store.revision();
        let mut queue: WorkQueue<C::Key> = WorkQueue::new(Retry::default());
        for key in c.resync(&store).await {
            queue.add(key);
        }
        let mut watches = Vec::new();
        for kind in C::WATCHES {
            match store.watch(all(*kind), Some(rev)) {
                Ok(w) => watches.push(w),
                Err(e) => {
                    tracing::error!(controller = C::NAME, error = %e, "cannot watch the store");
                    return;
                }
            }
        }
        'watching: loop {
            for key in queue.take(Instant::now()) {
                match c.reconcile(&store, &key).await {
                    Ok(()) => queue.done(&key),
                    Err(e) => {
                        let retry_in =
                            queue.failed(key.clone(), Instant::now(), bramble_support::jitter());
                        tracing::warn!(controller = C::NAME, ?key, error = %e, ?retry_in, "reconcile failed; retrying");
                    }
                }
            }
            for (key, at) in c.timers() {
                queue.add_at(key, at);
            }
            let retry = queue.next_retry();
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = async {
                    match retry {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                } => continue,
                change = next(&mut watches) => change,
            };
            let Ok(first) = first else { break };
            for key in c.keys(&first) {
                queue.add(key);
            }
            // Take every change already there before reconciling: a burst touches each key
            // once.
            while let Some(more) = next(&mut watches).now_or_never() {
                let Ok(change) = more else {
                    break 'watching;
                };
                for key in c.keys(&change) {
                    queue.add(key);
                }
            }
        }
        tracing::warn!(controller = C::NAME, "watch ended; re-listing");
    }
}
