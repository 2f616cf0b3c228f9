//! The pod manager: a level-triggered reconciler. Each round observes the runtime, folds the
//! observations into the pod records, plans operations with the pure functions of [`plan`],
//! executes them through the [`Runtime`] (off the async workers), persists what changed in
//! the local store, and returns the status reports that changed.

pub mod plan;
pub mod probes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use bramble_api::pod::Pod;
use bramble_api::wire::{ContainerState, Desired, DesiredChange, PodReport};

use crate::images::ImageStore;
use crate::localstore::{LocalStore, LocalStoreError};
use crate::network::PodNetwork;
use crate::runtime::{ContainerSpec, Observed, Runtime};
use plan::{Backoff, ContainerRecord, Op, PodRecord};

/// The result of applying a desired-state message.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied; the desired pods may have changed.
    Changed,
    /// The message does not follow the last applied revision: ask for a snapshot.
    Gap { have: u64, expected_prev: u64 },
}

/// The pod manager's state and its collaborators.
pub struct PodManager {
    runtime: Arc<dyn Runtime>,
    images: Arc<dyn ImageStore>,
    store: LocalStore,
    pods_dir: PathBuf,
    desired: BTreeMap<String, Pod>,
    desired_revision: u64,
    records: BTreeMap<String, PodRecord>,
    backoff: Backoff,
    host_ip: String,
    last_reported: HashMap<String, PodReport>,
    /// Probe state per running container instance.
    probes: HashMap<String, probes::ProbeState>,
    /// When the image cache was last checked against its limits.
    last_image_gc_ms: i64,
    /// Image pulls still running, by image: a slow pull does not hold back other pods.
    pulls: HashMap<String, Pull>,
    /// The node's pod network (None: pods get no IP, as on hollow nodes).
    network: Option<Arc<PodNetwork>>,
    /// The last pod IP handed out (allocation goes round-robin from it).
    last_pod_ip: Option<Ipv4Addr>,
}

/// A pull running on a blocking thread.
type Pull =
    tokio::task::JoinHandle<Result<crate::images::PreparedImage, crate::images::ImageError>>;

/// How long a container start waits for its image before the round moves on (the start is
/// retried on the next round, picking up the finished pull).
const PULL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the image cache is checked against its limits (also after every pull).
const IMAGE_GC_EVERY_MS: i64 = 60_000;

/// Why a pod's sandbox is not on the pod network yet.
#[derive(Debug)]
enum NotConnected {
    /// The node has no pod CIDR yet: the pod waits (ContainerCreating), without back-off.
    WaitingForCidr,
    /// A real failure (no address left, netlink refused): CreatePodSandboxError, backed off.
    Failed(String),
}

impl NotConnected {
    const CIDR_WAIT: &str = "waiting for the master to assign this node a pod CIDR";
}

fn now_ms() -> i64 {
    bramble_api::time::now_millis()
}

/// Settings of the pod manager.
pub struct PodManagerConfig {
    pub data_dir: PathBuf,
    pub backoff: Backoff,
    pub host_ip: String,
    /// The node's pod network, if pods get IPs.
    pub network: Option<Arc<PodNetwork>>,
}

impl PodManager {
    /// Loads desired pods and records from the local store.
    pub fn load(
        runtime: Arc<dyn Runtime>,
        images: Arc<dyn ImageStore>,
        store: LocalStore,
        config: PodManagerConfig,
    ) -> Result<Self, LocalStoreError> {
        let (raw, desired_revision) = store.desired()?;
        let mut desired = BTreeMap::new();
        for (uid, v) in raw {
            match serde_json::from_value::<Pod>(v) {
                Ok(p) => {
                    desired.insert(uid, p);
                }
                Err(e) => tracing::warn!(uid, error = %e, "skipping an unreadable cached pod"),
            }
        }
        let records = store.records()?;
        tracing::info!(
            pods = desired.len(),
            records = records.len(),
            revision = desired_revision,
            "pod manager loaded its cache"
        );
        Ok(PodManager {
            runtime,
            images,
            store,
            pods_dir: config.data_dir.join("pods"),
            desired,
            desired_revision,
            records,
            backoff: config.backoff,
            host_ip: config.host_ip,
            last_reported: HashMap::new(),
            probes: HashMap::new(),
            last_image_gc_ms: now_ms(),
            pulls: HashMap::new(),
            network: config.network,
            last_pod_ip: None,
        })
    }

    /// The address pods report as their hostIP (and host-network pods as their podIP).
    pub fn set_host_ip(&mut self, ip: &str) {
        if !ip.is_empty() {
            self.host_ip = ip.to_string();
        }
    }

    /// The last desired revision applied.
    pub fn desired_revision(&self) -> u64 {
        self.desired_revision
    }

    /// How many pods the node runs.
    pub fn pod_count(&self) -> usize {
        self.records.len()
    }

    /// Applies a desired-state message from the master, persisting it before use.
    pub fn apply_desired(&mut self, d: Desired) -> Result<Applied, LocalStoreError> {
        let decode = |json: &[u8]| -> Option<Pod> {
            match serde_json::from_slice::<Pod>(json) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an undecodable desired pod");
                    None
                }
            }
        };
        match d.change {
            DesiredChange::Snapshot(pods) => {
                let mut next = BTreeMap::new();
                let mut rows = Vec::new();
                for p in pods {
                    if let Some(pod) = decode(&p.pod_json) {
                        rows.push((p.uid.clone(), p.pod_json));
                        next.insert(p.uid, pod);
                    }
                }
                self.store.write_desired(true, &rows, &[], d.revision)?;
                self.desired = next;
            }
            change => {
                if d.prev_revision != self.desired_revision {
                    return Ok(Applied::Gap {
                        have: self.desired_revision,
                        expected_prev: d.prev_revision,
                    });
                }
                match change {
                    DesiredChange::Upsert(p) => {
                        if let Some(pod) = decode(&p.pod_json) {
                            self.store.write_desired(
                                false,
                                &[(p.uid.clone(), p.pod_json)],
                                &[],
                                d.revision,
                            )?;
                            self.desired.insert(p.uid, pod);
                        }
                    }
                    DesiredChange::Remove { uid } => {
                        self.store.write_desired(
                            false,
                            &[],
                            std::slice::from_ref(&uid),
                            d.revision,
                        )?;
                        self.desired.remove(&uid);
                    }
                    DesiredChange::Snapshot(_) => {}
                }
            }
        }
        self.desired_revision = d.revision;
        Ok(Applied::Changed)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Runtime) -> T + Send + 'static,
    ) -> T {
        let rt = self.runtime.clone();
        match tokio::task::spawn_blocking(move || f(rt.as_ref())).await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only a runtime that is shutting down cancels a blocking task, and it
            // drops this future with it.
            Err(_) => std::future::pending().await,
        }
    }

    /// One reconcile round; returns the reports that changed since the last round.
    pub async fn reconcile(&mut self) -> Vec<PodReport> {
        let before = self.records.clone();
        let ids: Vec<String> = self
            .records
            .values()
            .flat_map(|r| r.containers.values().filter_map(|c| c.current.clone()))
            .collect();
        // An idle node skips the trip to a blocking thread (hollow nodes run thousands).
        let observed: HashMap<String, Observed> = if ids.is_empty() {
            HashMap::new()
        } else {
            self.blocking(move |rt| {
                ids.into_iter()
                    .map(|id| (id.clone(), rt.observe(&id)))
                    .collect()
            })
            .await
        };
        let now = now_ms();
        if now - self.last_image_gc_ms >= IMAGE_GC_EVERY_MS {
            self.collect_images().await;
        }
        plan::observe(
            &mut self.records,
            &self.desired,
            &observed,
            now,
            self.backoff,
        );
        self.run_probes(now).await;
        let ops = plan::plan(&self.desired, &self.records, &observed, now);
        let mut dropped = Vec::new();
        let mut started = Vec::new();
        let mut sandboxed = Vec::new();
        for op in ops {
            match &op {
                Op::Start { id, .. } => started.push(id.clone()),
                Op::CreateSandbox { uid } => sandboxed.push(uid.clone()),
                _ => {}
            }
            if let Some(uid) = self.execute(op).await {
                dropped.push(uid);
            }
        }
        // Pods whose sandbox this round made: start their containers now, not a tick later.
        sandboxed.retain(|uid| self.records.get(uid).is_some_and(|r| r.sandbox_ready));
        if !sandboxed.is_empty() {
            for op in plan::plan(&self.desired, &self.records, &observed, now_ms()) {
                if let Op::Start { uid, id, .. } = &op
                    && sandboxed.contains(uid)
                {
                    started.push(id.clone());
                    self.execute(op).await;
                }
            }
        }
        if !started.is_empty() {
            // Containers that just started are running now: report them in this round
            // rather than the next one.
            let observed: HashMap<String, Observed> = self
                .blocking(move |rt| {
                    started
                        .into_iter()
                        .map(|id| (id.clone(), rt.observe(&id)))
                        .collect()
                })
                .await;
            plan::observe(
                &mut self.records,
                &self.desired,
                &observed,
                now_ms(),
                self.backoff,
            );
        }
        let changed: Vec<(&str, &PodRecord)> = self
            .records
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        if let Err(e) = self.store.write_records(&changed, &dropped) {
            tracing::error!(error = %e, "cannot persist pod records");
        }
        let mut reports = Vec::new();
        for (uid, rec) in &self.records {
            let r = plan::report(self.desired.get(uid), rec, &self.host_ip);
            if self.last_reported.get(uid) != Some(&r) {
                self.last_reported.insert(uid.clone(), r.clone());
                reports.push(r);
            }
        }
        for uid in dropped {
            if let Some(mut r) = self.last_reported.remove(&uid) {
                r.removed = true;
                reports.push(r);
            }
        }
        reports
    }

    /// Runs the probes that are due (concurrently, off the async workers), records readiness
    /// and restarts a container whose liveness probe failed its threshold.
    async fn run_probes(&mut self, now: i64) {
        let mut jobs = Vec::new();
        let mut live_ids = std::collections::HashSet::new();
        for (uid, rec) in &self.records {
            let Some(pod) = self.desired.get(uid) else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            for c in &pod.spec.containers {
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
                        None => {
                            Err("the probe names a port the container does not have".to_string())
                        }
                        Some(a) => {
                            let id2 = id.clone();
                            tokio::task::spawn_blocking(move || {
                                rt.probe(&id2, netns.as_deref(), &a, timeout)
                            })
                            .await
                            .unwrap_or_else(|e| Err(e.to_string()))
                        }
                    };
                    (uid, name, id, kind, p, result)
                }
            });
        for (uid, name, id, kind, p, result) in futures_util::future::join_all(runs).await {
            let state = self.probes.entry(id.clone()).or_default();
            let verdict = probes::record(state, kind, &p, &result, now_ms());
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
            for c in &pod.spec.containers {
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

    /// Every pod's report (for a hello).
    pub fn all_reports(&self) -> Vec<PodReport> {
        self.records
            .iter()
            .map(|(uid, rec)| plan::report(self.desired.get(uid), rec, &self.host_ip))
            .collect()
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    fn log_file(&self, uid: &str, container: &str, instance: u32) -> PathBuf {
        self.pod_dir(uid)
            .join("logs")
            .join(container)
            .join(format!("{instance}.log"))
    }

    /// The log file for `bramble logs`: the current (or last) instance, or the one before.
    pub fn log_path(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        previous: bool,
    ) -> Result<PathBuf, String> {
        let rec = self
            .records
            .values()
            .find(|r| r.namespace == namespace && r.name == pod)
            .ok_or_else(|| format!("pod {namespace}/{pod} is not on this node"))?;
        let c = rec
            .containers
            .get(container)
            .ok_or_else(|| format!("container {container:?} has not been created yet"))?;
        let back = if previous { 2 } else { 1 };
        if c.attempt < back {
            return Err(if previous {
                format!("previous terminated container {container:?} in pod {pod:?} not found")
            } else {
                format!("container {container:?} in pod {pod:?} is waiting to start")
            });
        }
        Ok(self.log_file(&rec.uid, container, c.attempt - back))
    }

    /// Lets the image store free disk, keeping every image a desired pod names.
    async fn collect_images(&mut self) {
        self.last_image_gc_ms = now_ms();
        let in_use: Vec<String> = self
            .desired
            .values()
            .flat_map(|p| p.spec.containers.iter().map(|c| c.image.clone()))
            .collect();
        let images = self.images.clone();
        let _ = tokio::task::spawn_blocking(move || images.collect(&in_use)).await;
    }

    fn set_waiting(
        &mut self,
        uid: &str,
        container: Option<&str>,
        reason: &str,
        message: String,
        now: i64,
    ) {
        let Some(rec) = self.records.get_mut(uid) else {
            return;
        };
        for (name, c) in rec.containers.iter_mut() {
            if container.is_some_and(|n| n != name) {
                continue;
            }
            c.start_failures += 1;
            let delay = bramble_api::backoff::crash_loop(
                c.start_failures - 1,
                self.backoff.base,
                self.backoff.max,
            );
            c.not_before_ms = now + delay.as_millis() as i64;
            c.state = ContainerState::Waiting {
                reason: reason.into(),
                message: message.clone(),
            };
        }
    }

    /// Executes one operation; returns the uid of a pod that was dropped.
    async fn execute(&mut self, op: Op) -> Option<String> {
        let now = now_ms();
        match op {
            Op::CreateSandbox { uid } => {
                let pod = self.desired.get(&uid)?.clone();
                let rec = self
                    .records
                    .entry(uid.clone())
                    .or_insert_with(|| PodRecord {
                        uid: uid.clone(),
                        namespace: pod.metadata.namespace.clone(),
                        name: pod.metadata.name.clone(),
                        sandbox_ready: false,
                        netns: None,
                        pod_ip: String::new(),
                        start_time: now / 1000,
                        grace_seconds: pod.spec.termination_grace_period_seconds.unwrap_or(30),
                        containers: pod
                            .spec
                            .containers
                            .iter()
                            .map(|c| (c.name.clone(), ContainerRecord::new(&c.image)))
                            .collect(),
                    });
                rec.sandbox_ready = false;
                if let Err(e) = self.prepare_volumes(&uid, &pod) {
                    self.set_waiting(&uid, None, "CreatePodSandboxError", e, now);
                    return None;
                }
                let host = pod.spec.host_network;
                let u = uid.clone();
                match self.blocking(move |rt| rt.create_sandbox(&u, host)).await {
                    Ok(netns) => {
                        if let Some(r) = self.records.get_mut(&uid) {
                            r.netns = netns.clone();
                        }
                        if let (Some(ns), false) = (netns, host)
                            && let Err(not_connected) = self.connect_pod(&uid, ns).await
                        {
                            match not_connected {
                                // Waiting for the master is not a failure: no back-off.
                                NotConnected::WaitingForCidr => {
                                    for c in self.records.get_mut(&uid)?.containers.values_mut() {
                                        c.state = ContainerState::Waiting {
                                            reason: "ContainerCreating".into(),
                                            message: NotConnected::CIDR_WAIT.into(),
                                        };
                                    }
                                }
                                NotConnected::Failed(message) => {
                                    self.set_waiting(
                                        &uid,
                                        None,
                                        "CreatePodSandboxError",
                                        message,
                                        now,
                                    );
                                }
                            }
                            return None;
                        }
                        if let Some(r) = self.records.get_mut(&uid) {
                            r.sandbox_ready = true;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(uid, error = %e, "cannot create the pod sandbox");
                        self.set_waiting(&uid, None, "CreatePodSandboxError", e.to_string(), now);
                    }
                }
                None
            }
            Op::Start { uid, container, id } => {
                let pod = self.desired.get(&uid)?.clone();
                let spec_c = pod
                    .spec
                    .containers
                    .iter()
                    .find(|c| c.name == container)?
                    .clone();
                let rec = self.records.get_mut(&uid)?;
                let netns = rec.netns.clone();
                let cr = rec
                    .containers
                    .entry(container.clone())
                    .or_insert_with(|| ContainerRecord::new(&spec_c.image));
                let instance = cr.attempt;
                let image = spec_c.image.clone();
                // A pull already under way is only checked; a new one gets a moment, which
                // is all an image the node has needs.
                let wait = if self.pulls.contains_key(&image) {
                    std::time::Duration::ZERO
                } else {
                    PULL_WAIT
                };
                let mut pull = match self.pulls.remove(&image) {
                    Some(p) => p,
                    None => {
                        let images = self.images.clone();
                        let policy =
                            crate::images::PullPolicy::of(&spec_c.image_pull_policy, &image);
                        let i = image.clone();
                        tokio::task::spawn_blocking(move || images.prepare(&i, policy))
                    }
                };
                let prepared = match tokio::time::timeout(wait, &mut pull).await {
                    Ok(done) => done,
                    Err(_) => {
                        // Still pulling: other pods go on; a later round takes the result.
                        self.pulls.insert(image.clone(), pull);
                        if let Some(c) = self
                            .records
                            .get_mut(&uid)
                            .and_then(|r| r.containers.get_mut(&container))
                        {
                            c.state = ContainerState::Waiting {
                                reason: "ContainerCreating".into(),
                                message: format!("pulling image {image:?}"),
                            };
                        }
                        return None;
                    }
                };
                let prepared = match prepared {
                    Ok(Ok(p)) => {
                        self.collect_images().await;
                        p
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(uid, container, error = %e, "image not ready");
                        self.set_waiting(&uid, Some(&container), e.reason(), e.to_string(), now);
                        return None;
                    }
                    Err(e) => {
                        self.set_waiting(
                            &uid,
                            Some(&container),
                            "ErrImagePull",
                            e.to_string(),
                            now,
                        );
                        return None;
                    }
                };
                let volumes = pod
                    .spec
                    .volumes
                    .iter()
                    .map(|v| (v.name.clone(), self.volume_path(&uid, v)))
                    .collect();
                let log_path = self.log_file(&uid, &container, instance);
                if instance >= 2 {
                    // Keep the current and the previous instance's logs only.
                    let _ = std::fs::remove_file(self.log_file(&uid, &container, instance - 2));
                    let _ = std::fs::remove_file(
                        self.log_file(&uid, &container, instance - 2)
                            .with_extension("log.1"),
                    );
                }
                let spec = ContainerSpec {
                    id: id.clone(),
                    pod_uid: uid.clone(),
                    pod_name: pod.metadata.name.clone(),
                    namespace: pod.metadata.namespace.clone(),
                    container: spec_c,
                    image: prepared,
                    netns,
                    volumes,
                    hostname: if pod.spec.hostname.is_empty() {
                        pod.metadata.name.clone()
                    } else {
                        pod.spec.hostname.clone()
                    },
                    log_path,
                };
                let has_readiness_probe = spec.container.readiness_probe.is_some();
                let result = self.blocking(move |rt| rt.start(&spec)).await;
                let cr = self.records.get_mut(&uid)?.containers.get_mut(&container)?;
                match result {
                    Ok(()) => {
                        cr.current = Some(id);
                        cr.restart_count = instance;
                        cr.attempt = instance + 1;
                        cr.start_failures = 0;
                        cr.killed_at_ms = None;
                        cr.exit_seen = None;
                        cr.done = false;
                        // A new instance with a readiness probe is not ready until the probe
                        // passes, whatever the last instance was.
                        cr.ready = has_readiness_probe.then_some(false);
                        cr.state = ContainerState::Waiting {
                            reason: "ContainerCreating".into(),
                            message: String::new(),
                        };
                    }
                    Err(e) => {
                        tracing::warn!(uid, container, error = %e, "cannot start a container");
                        // Clean up what the failed start left; the next attempt reuses the id.
                        let i = id.clone();
                        let _ = self.blocking(move |rt| rt.remove(&i)).await;
                        self.set_waiting(
                            &uid,
                            Some(&container),
                            "CreateContainerError",
                            e.to_string(),
                            now,
                        );
                    }
                }
                None
            }
            Op::Signal {
                uid,
                container,
                id,
                signal,
            } => {
                let result = self.blocking(move |rt| rt.signal(&id, signal)).await;
                if let Err(e) = result {
                    tracing::warn!(uid, container, error = %e, "cannot signal a container");
                }
                if let Some(c) = self
                    .records
                    .get_mut(&uid)
                    .and_then(|r| r.containers.get_mut(&container))
                {
                    c.killed_at_ms.get_or_insert(now);
                }
                None
            }
            Op::Remove { uid, container, id } => {
                let i = id.clone();
                match self.blocking(move |rt| rt.remove(&i)).await {
                    Ok(()) => {
                        if let Some(c) = self
                            .records
                            .get_mut(&uid)
                            .and_then(|r| r.containers.get_mut(&container))
                        {
                            c.current = None;
                        }
                    }
                    Err(e) => tracing::warn!(uid, id, error = %e, "cannot remove a container"),
                }
                None
            }
            Op::RemoveSandbox { uid } => {
                if let Some(dp) = self.network.as_ref().and_then(|n| n.dataplane.clone()) {
                    let u = uid.clone();
                    let r = tokio::task::spawn_blocking(move || dp.detach(&u)).await;
                    if let Ok(Err(e)) = r {
                        tracing::warn!(uid, error = %e, "cannot remove the pod's veth");
                    }
                }
                let u = uid.clone();
                if let Err(e) = self.blocking(move |rt| rt.remove_sandbox(&u)).await {
                    tracing::warn!(uid, error = %e, "cannot remove the pod sandbox");
                }
                let dir = self.pod_dir(&uid);
                if let Err(e) = std::fs::remove_dir_all(&dir)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the pod directory");
                }
                None
            }
            Op::Drop { uid } => {
                self.records.remove(&uid);
                tracing::info!(uid, "pod removed from the node");
                Some(uid)
            }
        }
    }

    /// Gives a pod its IP (kept in its record) and, on a real node, wires its namespace to
    /// the bridge. Err is the waiting reason and message.
    async fn connect_pod(&mut self, uid: &str, netns: PathBuf) -> Result<(), NotConnected> {
        let Some(net) = self.network.clone() else {
            return Ok(());
        };
        let Some(cidr) = net.pod_cidr() else {
            return Err(NotConnected::WaitingForCidr);
        };
        let kept = self
            .records
            .get(uid)
            .and_then(|r| r.pod_ip.parse::<Ipv4Addr>().ok())
            .filter(|ip| cidr.contains(*ip));
        let ip = match kept {
            Some(ip) => ip,
            None => {
                let used: HashSet<Ipv4Addr> = self
                    .records
                    .values()
                    .filter_map(|r| r.pod_ip.parse().ok())
                    .collect();
                let ip =
                    crate::network::allocate(cidr, &used, self.last_pod_ip).ok_or_else(|| {
                        NotConnected::Failed(format!(
                            "no free address left in the node's pod CIDR {cidr}"
                        ))
                    })?;
                self.last_pod_ip = Some(ip);
                if let Some(r) = self.records.get_mut(uid) {
                    r.pod_ip = ip.to_string();
                }
                ip
            }
        };
        let Some(dp) = net.dataplane.clone() else {
            return Ok(());
        };
        let u = uid.to_string();
        tokio::task::spawn_blocking(move || dp.attach(&u, &netns, ip, cidr))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
            .map_err(|e| {
                tracing::warn!(uid, error = %e, "cannot connect the pod to the network");
                NotConnected::Failed(format!("pod network: {e}"))
            })
    }

    fn volume_path(&self, uid: &str, v: &bramble_api::pod::Volume) -> PathBuf {
        match &v.host_path {
            Some(h) => PathBuf::from(&h.path),
            None => self.pod_dir(uid).join("volumes").join(&v.name),
        }
    }

    fn prepare_volumes(&self, uid: &str, pod: &Pod) -> Result<(), String> {
        for v in &pod.spec.volumes {
            let p = self.volume_path(uid, v);
            match &v.host_path {
                None => std::fs::create_dir_all(&p)
                    .map_err(|e| format!("volume {:?}: {}: {e}", v.name, p.display()))?,
                Some(h) if h.type_ == "DirectoryOrCreate" => std::fs::create_dir_all(&p)
                    .map_err(|e| format!("volume {:?}: {}: {e}", v.name, p.display()))?,
                Some(h) if h.type_ == "Directory" && !p.is_dir() => {
                    return Err(format!(
                        "volume {:?}: hostPath {} is not a directory",
                        v.name,
                        p.display()
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::{ImageError, PreparedImage, PullPolicy};
    use crate::runtime::memory::MemoryRuntime;
    use bramble_api::wire::DesiredPod;

    /// Images named `slow...` take seconds to pull; the others are there at once.
    struct SlowImages;
    impl ImageStore for SlowImages {
        fn prepare(&self, image: &str, _p: PullPolicy) -> Result<PreparedImage, ImageError> {
            if image.starts_with("slow") {
                std::thread::sleep(std::time::Duration::from_secs(3));
            }
            Ok(PreparedImage {
                layers: vec![PathBuf::from("/nonexistent")],
                config: Default::default(),
            })
        }
    }

    fn state(pm: &PodManager, pod: &str) -> ContainerState {
        pm.all_reports()
            .into_iter()
            .find(|r| r.name == pod)
            .and_then(|r| r.containers.first().map(|c| c.state.clone()))
            .unwrap_or(ContainerState::Waiting {
                reason: String::new(),
                message: String::new(),
            })
    }

    fn pod(name: &str, image: &str) -> DesiredPod {
        DesiredPod {
            uid: format!("uid-{name}"),
            revision: 1,
            pod_json: serde_json::to_vec(&serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
                "spec": {"nodeName": "n", "containers": [{"name": "c", "image": image, "command": ["sleep", "1000"]}]}
            }))
            .unwrap(),
        }
    }

    fn manager(dir: &std::path::Path) -> PodManager {
        let store = LocalStore::open(&dir.join("agent.redb")).unwrap();
        PodManager::load(
            Arc::new(MemoryRuntime::new()),
            Arc::new(SlowImages),
            store,
            PodManagerConfig {
                data_dir: dir.to_path_buf(),
                backoff: Backoff {
                    base: std::time::Duration::from_millis(10),
                    max: std::time::Duration::from_millis(100),
                },
                host_ip: "127.0.0.1".into(),
                network: None,
            },
        )
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_round_makes_the_sandbox_and_starts_the_containers() {
        let dir = tempfile::tempdir().unwrap();
        let mut pm = manager(dir.path());
        // b has a readiness probe that has not run yet.
        let mut probed = pod("b", "fast:1");
        let mut json: serde_json::Value = serde_json::from_slice(&probed.pod_json).unwrap();
        json["spec"]["containers"][0]["readinessProbe"] =
            serde_json::json!({"exec": {"command": ["true"]}});
        probed.pod_json = serde_json::to_vec(&json).unwrap();
        pm.apply_desired(Desired {
            revision: 1,
            prev_revision: 0,
            change: DesiredChange::Snapshot(vec![pod("a", "fast:1"), probed]),
        })
        .unwrap();
        let reports = pm.reconcile().await;
        let report = |name: &str| {
            reports
                .iter()
                .find(|r| r.name == name)
                .map(|r| r.containers[0].clone())
                .unwrap_or_else(|| panic!("no report for {name}: {reports:?}"))
        };
        for name in ["a", "b"] {
            assert!(
                matches!(report(name).state, ContainerState::Running { .. }),
                "{name} after one round: {:?}",
                report(name)
            );
        }
        assert!(report("a").ready, "no readiness probe: ready when running");
        assert!(!report("b").ready, "ready before its readiness probe ran");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_pull_does_not_hold_back_other_pods() {
        let dir = tempfile::tempdir().unwrap();
        let mut pm = manager(dir.path());
        pm.apply_desired(Desired {
            revision: 1,
            prev_revision: 0,
            change: DesiredChange::Snapshot(vec![pod("a", "slow:1"), pod("b", "fast:1")]),
        })
        .unwrap();
        let running = |s: ContainerState| matches!(s, ContainerState::Running { .. });
        let t = std::time::Instant::now();
        while !running(state(&pm, "b")) {
            assert!(
                t.elapsed() < std::time::Duration::from_millis(2500),
                "the fast pod waited for the slow pull"
            );
            pm.reconcile().await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        match state(&pm, "a") {
            ContainerState::Waiting { reason, message } => {
                assert_eq!(reason, "ContainerCreating");
                assert!(message.contains("pulling image"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        while !running(state(&pm, "a")) {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "the pull never finished"
            );
            pm.reconcile().await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
