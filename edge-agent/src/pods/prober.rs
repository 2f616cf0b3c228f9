//! The pod manager's prober: runs the liveness and readiness probes that are due, off the
//! async workers and concurrently, records readiness, and restarts a container whose
//! liveness probe failed its threshold (the decisions are in [`super::probes`]).

use bramble_api::wire::ContainerState;

use super::{PodManager, probes};
use crate::runtime::ProbeError;

impl PodManager {
    /// Runs the probes that are due (concurrently, off the async workers), records readiness
    /// and restarts a container whose liveness probe failed its threshold.
    pub(super) async fn run_probes(&mut self, now: i64) {
        let mut jobs = Vec::new();
        let mut live_ids = std::collections::HashSet::new();
        for (uid, rec) in &self.records {
            let Some(pod) = self.desired.get(uid) else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            for c in pod.spec.all_containers() {
                let Some(cr) = rec.containers.get(&c.name) else {
                    continue;
                };
                let (Some(id), ContainerState::Running { started_at }) = (&cr.current, &cr.state)
                else {
                    continue;
                };
                live_ids.insert(id.clone());
                let state = self.probes.entry(id.clone()).or_default();
                let started_ms = started_at * 1000;
                for (kind, probe, next) in [
                    (
                        probes::Kind::Liveness,
                        &c.liveness_probe,
                        state.next_liveness_ms,
                    ),
                    (
                        probes::Kind::Readiness,
                        &c.readiness_probe,
                        state.next_readiness_ms,
                    ),
                ] {
                    let Some(p) = probe else { continue };
                    if !probes::due(p, started_ms, next, now) {
                        continue;
                    }
                    let action = probes::action(c, p);
                    jobs.push((
                        uid.clone(),
                        c.name.clone(),
                        id.clone(),
                        kind,
                        p.clone(),
                        action,
                        rec.netns.clone(),
                    ));
                }
            }
        }
        self.probes.retain(|id, _| live_ids.contains(id));
        let rt = self.runtime.clone();
        let runs = jobs
            .into_iter()
            .map(|(uid, name, id, kind, p, action, netns)| {
                let rt = rt.clone();
                async move {
                    let timeout = probes::timeout(&p);
                    let result = match action {
                        None => Err(ProbeError::UnknownPort),
                        Some(a) => {
                            let id2 = id.clone();
                            tokio::task::spawn_blocking(move || {
                                rt.probe(&id2, netns.as_deref(), &a, timeout)
                            })
                            .await
                            .unwrap_or_else(|e| Err(ProbeError::Task(e)))
                        }
                    };
                    (uid, name, id, kind, p, result)
                }
            });
        for (uid, name, id, kind, p, result) in futures_util::future::join_all(runs).await {
            let state = self.probes.entry(id.clone()).or_default();
            let verdict = probes::record(state, kind, &p, &result, self.clock.unix_millis());
            if let probes::Verdict::Restart(why) = verdict {
                tracing::info!(uid, container = name, why, "restarting a container");
                let i = id.clone();
                if let Err(e) = self.blocking(move |rt| rt.signal(&i, libc::SIGKILL)).await {
                    tracing::warn!(error = %e, "cannot kill a container that failed its liveness probe");
                }
                self.probes.remove(&id);
            }
        }
        // No readiness probe: ready when running. With one: not ready until it succeeds.
        for (uid, rec) in self.records.iter_mut() {
            let Some(pod) = self.desired.get(uid) else {
                continue;
            };
            for c in pod.spec.all_containers() {
                if let Some(cr) = rec.containers.get_mut(&c.name) {
                    cr.ready = match (
                        &c.readiness_probe,
                        cr.current.as_ref().and_then(|id| self.probes.get(id)),
                    ) {
                        (None, _) => None,
                        (Some(_), Some(st)) => Some(st.ready),
                        (Some(_), None) => Some(false),
                    };
                }
            }
        }
    }
}
