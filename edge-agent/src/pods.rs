//! The pod manager: a level-triggered reconciler. Each round observes the runtime, folds the
//! observations into the pod records, plans operations with the pure functions of [`plan`],
//! executes them through the [`Runtime`] (off the async workers), persists what changed in
//! the local store, and returns the status reports that changed.

mod atomic;
pub mod config;
pub mod layout;
pub mod names;
pub mod plan;
mod prober;
pub mod probes;
mod pulls;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bramble_api::pod::Pod;
use bramble_api::wire::{ConfigData, Desired, DesiredChange, PodReport};

use bramble_support::{Clock, SystemClock};

use crate::images::ImageStore;
use crate::localstore::{DesiredRow, LocalStore, LocalStoreError};
use crate::network::{PodIps, PodNetwork};
use crate::runtime::{ContainerSpec, Observed, Runtime};
use layout::PodLayout;
use plan::{Backoff, Network, Op, Outcome, PodRecord};
use pulls::{PullState, Pulls};

/// The result of applying a desired-state message.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied; the desired pods may have changed.
    Changed,
    /// The message does not follow the last applied revision: ask for a snapshot.
    Gap { have: u64, expected_prev: u64 },
}

/// Why `bramble logs` cannot be answered from this node (the text goes back to the user).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogPathError {
    #[error("pod {namespace}/{pod} is not on this node")]
    PodNotHere { namespace: String, pod: String },
    #[error("container {0:?} has not been created yet")]
    ContainerNotCreated(String),
    #[error("previous terminated container {container:?} in pod {pod:?} not found")]
    NoPrevious { container: String, pod: String },
    #[error("container {container:?} in pod {pod:?} is waiting to start")]
    Waiting { container: String, pod: String },
}

/// What a stream to a pod enters (see [`PodManager::stream_target`]).
#[derive(Debug, Clone)]
pub struct StreamTarget {
    pub exec: Option<crate::runtime::ExecTarget>,
    pub netns: Option<PathBuf>,
    /// The container's current log (for attach).
    pub log: Option<PathBuf>,
}

/// The pod manager's state and its collaborators.
pub struct PodManager {
    runtime: Arc<dyn Runtime>,
    images: Arc<dyn ImageStore>,
    store: LocalStore,
    layout: PodLayout,
    desired: BTreeMap<String, Pod>,
    desired_revision: u64,
    records: BTreeMap<String, PodRecord>,
    backoff: Backoff,
    host_ip: String,
    last_reported: HashMap<String, PodReport>,
    /// Probe state per running container instance.
    probes: HashMap<String, probes::ProbeState>,
    /// preStop hooks running, by (pod uid, container).
    hooks: HashMap<(String, String), tokio::task::JoinHandle<Result<(), String>>>,
    /// When the image cache was last checked against its limits.
    last_image_gc_ms: i64,
    /// When disk-backed emptyDir volumes were last measured against their sizeLimit.
    last_volume_check_ms: i64,
    /// Image pulls still running: a slow pull does not hold back other pods.
    pulls: Pulls,
    /// The node's pod network (None: pods get no IP, as on hollow nodes).
    network: Option<Arc<PodNetwork>>,
    pod_ips: PodIps,
    /// Where every decision reads the time (tests move it).
    clock: Arc<dyn Clock>,
    host_access: layout::HostAccess,
    /// Pods' name resolution; None: containers keep their image's files (hollow nodes).
    dns: Option<crate::network::dns::DnsSettings>,
    /// The Services the node knows (for Service environment variables).
    services: Option<Arc<std::sync::Mutex<crate::network::NetView>>>,
    /// The ConfigMaps and Secrets each desired pod reads, as the master sent them: in
    /// memory only (never in the local store on the SD card).
    config: HashMap<String, Vec<Arc<ConfigData>>>,
    /// Pods whose data or own fields changed: their volumes' files are written again.
    refresh: std::collections::BTreeSet<String>,
}

/// How often the image cache is checked against its limits (also after every pull).
const IMAGE_GC_EVERY_MS: i64 = 60_000;
/// How often disk-backed emptyDir volumes are measured against their sizeLimit.
const VOLUME_CHECK_EVERY_MS: i64 = 5_000;

/// A pod's name resolution files (path in the container, file on the node) and Service
/// environment variables.
#[derive(Default)]
struct PodNames {
    files: Vec<(String, PathBuf)>,
    env: Vec<(String, String)>,
}

/// Settings of the pod manager.
pub struct PodManagerConfig {
    pub data_dir: PathBuf,
    pub backoff: Backoff,
    pub host_ip: String,
    /// The node's pod network, if pods get IPs.
    pub network: Option<Arc<PodNetwork>>,
    /// What of the board pods may reach.
    pub host_access: layout::HostAccess,
    /// Pods' name resolution (domain, upstream servers, the node's DNS server).
    pub dns: Option<crate::network::dns::DnsSettings>,
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
        // The ConfigMaps they read, so that a container restarted before the master is back
        // finds its configuration (Secrets wait for the master).
        let mut maps: HashMap<String, Vec<Arc<ConfigData>>> = HashMap::new();
        for (uid, bytes) in store.config()? {
            if !desired.contains_key(&uid) {
                continue;
            }
            match postcard::from_bytes::<Vec<ConfigData>>(&bytes) {
                Ok(stored) => {
                    let data = stored
                        .into_iter()
                        .filter(|c| !c.secret && !c.repeated)
                        .filter_map(|c| shared_config(&maps, &[], c))
                        .collect();
                    maps.insert(uid, data);
                }
                Err(e) => tracing::warn!(uid, error = %e, "skipping unreadable cached ConfigMaps"),
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
            layout: PodLayout::new(&config.data_dir),
            desired,
            desired_revision,
            records,
            backoff: config.backoff,
            host_ip: config.host_ip,
            last_reported: HashMap::new(),
            probes: HashMap::new(),
            hooks: HashMap::new(),
            last_image_gc_ms: SystemClock.unix_millis(),
            last_volume_check_ms: 0,
            clock: Arc::new(SystemClock),
            pulls: Pulls::default(),
            network: config.network,
            pod_ips: PodIps::default(),
            host_access: config.host_access,
            dns: config.dns,
            services: None,
            config: maps,
            refresh: Default::default(),
        })
    }

    /// Where the Services for pods' environment variables are read.
    pub fn set_services(&mut self, view: Arc<std::sync::Mutex<crate::network::NetView>>) {
        self.services = Some(view);
    }

    /// The pod's `/etc/resolv.conf` and `/etc/hosts` (written into its directory, mounted
    /// into each container) and its Service environment variables, as the kubelet makes
    /// them. Nothing for a node without name resolution settings (hollow).
    fn names(&self, uid: &str, pod: &Pod, pod_ip: &str) -> PodNames {
        let Some(dns) = &self.dns else {
            return PodNames::default();
        };
        let server = self
            .network
            .as_ref()
            .filter(|_| dns.serve)
            .and_then(|n| n.pod_cidr())
            .map(crate::network::gateway);
        let upstream = std::fs::read_to_string(&dns.upstream).unwrap_or_default();
        let node = names::NodeDns {
            domain: &dns.domain,
            server,
            upstream: &upstream,
        };
        let dir = self.layout.pod_dir(uid).join("etc");
        let mut files = vec![("/etc/resolv.conf", names::resolv_conf(pod, &node))];
        if !pod.spec.host_network {
            files.push(("/etc/hosts", names::hosts(pod, pod_ip, &dns.domain)));
        }
        let mut mounts = Vec::new();
        for (dest, text) in files {
            let path = dir.join(dest.trim_start_matches("/etc/"));
            let written = std::fs::create_dir_all(&dir)
                .and_then(|()| bramble_support::fs::write_atomic(&path, text.as_bytes(), 0o644));
            match written {
                Ok(()) => mounts.push((dest.to_string(), path)),
                Err(e) => {
                    tracing::warn!(uid, path = %path.display(), error = %e, "cannot write the pod's name resolution file")
                }
            }
        }
        let env = match &self.services {
            Some(view) => {
                let v = view.lock().unwrap_or_else(|p| p.into_inner());
                names::service_env(pod, v.services.values())
            }
            None => Vec::new(),
        };
        PodNames { files: mounts, env }
    }

    /// Reads the time from `clock` instead of the system (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.last_image_gc_ms = clock.unix_millis();
        self.clock = clock;
        self
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
        // Every pod is decoded and validated again with the API's own rules: the agent runs
        // nothing the master would not have accepted, whoever sent it.
        let decode = |json: &[u8]| -> Option<Pod> {
            let pod = match serde_json::from_slice::<Pod>(json) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an undecodable desired pod");
                    return None;
                }
            };
            let obj = bramble_api::Object::Pod(pod);
            let errors = bramble_api::validate::validate(&obj);
            let bramble_api::Object::Pod(pod) = obj else {
                return None;
            };
            if let Some(e) = errors.first() {
                tracing::warn!(
                    pod = %pod.metadata.name,
                    error = %e,
                    errors = errors.len(),
                    "ignoring an invalid desired pod"
                );
                return None;
            }
            Some(pod)
        };
        match d.change {
            DesiredChange::Snapshot(pods) => {
                let mut next = BTreeMap::new();
                let mut rows = Vec::new();
                let mut config = HashMap::new();
                // Each object's bytes come once in a snapshot, however many pods read it.
                let mut seen: Vec<Arc<ConfigData>> = Vec::new();
                for p in pods {
                    if let Some(pod) = decode(&p.pod_json) {
                        next.insert(p.uid.clone(), pod);
                        let data: Vec<Arc<ConfigData>> = p
                            .config
                            .into_iter()
                            .filter_map(|c| {
                                let shared = shared_config(&self.config, &seen, c)?;
                                if !seen.iter().any(|s| Arc::ptr_eq(s, &shared)) {
                                    seen.push(shared.clone());
                                }
                                Some(shared)
                            })
                            .collect();
                        rows.push(DesiredRow {
                            uid: p.uid.clone(),
                            pod_json: p.pod_json,
                            config: config_row(&data),
                        });
                        config.insert(p.uid, data);
                    }
                }
                self.store.write_desired(true, &rows, &[], d.revision)?;
                self.desired = next;
                for (uid, data) in config {
                    self.set_config(&uid, data);
                }
                let desired = &self.desired;
                self.config.retain(|uid, _| desired.contains_key(uid));
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
                            let data: Vec<Arc<ConfigData>> = p
                                .config
                                .into_iter()
                                .filter_map(|c| shared_config(&self.config, &[], c))
                                .collect();
                            let row = DesiredRow {
                                uid: p.uid.clone(),
                                pod_json: p.pod_json,
                                config: config_row(&data),
                            };
                            self.store.write_desired(false, &[row], &[], d.revision)?;
                            self.desired.insert(p.uid.clone(), pod);
                            self.set_config(&p.uid, data);
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
                        self.config.remove(&uid);
                    }
                    DesiredChange::Snapshot(_) => {}
                }
            }
        }
        self.desired_revision = d.revision;
        Ok(Applied::Changed)
    }

    /// A hook of a container of a desired pod, as an action and its time limit (the pod's
    /// grace period).
    fn hook(
        &self,
        uid: &str,
        container: &str,
        pick: impl Fn(&bramble_api::pod::Lifecycle) -> Option<&bramble_api::pod::LifecycleHandler>,
    ) -> Option<(Hook, std::time::Duration)> {
        let pod = self.desired.get(uid)?;
        let c = pod.spec.all_containers().find(|c| c.name == container)?;
        let h = pick(c.lifecycle.as_ref()?)?;
        let grace = pod
            .spec
            .termination_grace_period_seconds
            .unwrap_or(30)
            .clamp(1, 3600);
        let timeout = std::time::Duration::from_secs(grace as u64);
        let action = if let Some(s) = &h.sleep {
            Hook::Sleep(std::time::Duration::from_secs(
                s.seconds.clamp(0, 3600) as u64
            ))
        } else if let Some(e) = &h.exec {
            Hook::Probe(crate::runtime::ProbeAction::Exec(e.command.clone()))
        } else {
            let g = h.http_get.as_ref()?;
            Hook::Probe(crate::runtime::ProbeAction::Http {
                host: g.host.clone(),
                port: c.resolve_port(g.port.as_ref()?)?,
                path: g.path.clone(),
            })
        };
        Some((action, timeout))
    }

    /// preStop hooks that ended: their containers may be signalled now.
    fn finish_hooks(&mut self) {
        let done: Vec<(String, String)> = self
            .hooks
            .iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            let Some(h) = self.hooks.remove(&key) else {
                continue;
            };
            let result = futures_util::FutureExt::now_or_never(h)
                .and_then(Result::ok)
                .unwrap_or(Err("the hook's task ended".into()));
            if let Err(e) = result {
                tracing::warn!(uid = key.0, container = key.1, error = %e, "the preStop hook failed");
            }
            if let Some(c) = self
                .records
                .get_mut(&key.0)
                .and_then(|r| r.containers.get_mut(&key.1))
            {
                c.pre_stop = match c.pre_stop {
                    plan::PreStop::Running(since) => plan::PreStop::Ran(since),
                    _ => plan::PreStop::Done,
                };
            }
        }
    }

    /// Takes the data a desired pod reads. On a change its volumes are written again, and a
    /// container waiting for missing data is tried at once, not after its back-off.
    fn set_config(&mut self, uid: &str, data: Vec<Arc<ConfigData>>) {
        // Labels and annotations (downward API) may have changed too.
        self.refresh.insert(uid.to_string());
        if self.config.get(uid) == Some(&data) {
            return;
        }
        self.config.insert(uid.to_string(), data);
        if let Some(rec) = self.records.get_mut(uid) {
            for c in rec.containers.values_mut() {
                let waiting = match &c.state {
                    bramble_api::wire::ContainerState::Waiting { reason, .. } => {
                        reason == "CreateContainerConfigError"
                    }
                    _ => false,
                };
                if waiting {
                    c.not_before_ms = 0;
                }
            }
        }
    }

    /// What the downward API reads of the pod besides its object.
    fn pod_context(&self, uid: &str) -> (String, String, i64, i64) {
        let pod_ip = self
            .records
            .get(uid)
            .map(|r| r.pod_ip.clone())
            .unwrap_or_default();
        let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64 * 1000;
        let memory = crate::facts::memory_total() as i64;
        (pod_ip, self.host_ip.clone(), cpu, memory)
    }

    /// Writes the files of the pod's configMap/secret/projected/downwardAPI volumes. An
    /// error names what is missing; files already there stay (as the kubelet keeps them).
    fn write_volumes(&self, uid: &str, pod: &Pod) -> Result<(), String> {
        let (pod_ip, host_ip, cpu_millis, memory_bytes) = self.pod_context(uid);
        let ctx = config::PodContext {
            pod_ip: &pod_ip,
            host_ip: &host_ip,
            cpu_millis,
            memory_bytes,
        };
        let data = self.config.get(uid).map(Vec::as_slice).unwrap_or_default();
        for v in &pod.spec.volumes {
            let Some(files) = config::volume_files(pod, v, data, &ctx) else {
                continue;
            };
            let files = files?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            match self.layout.write_projected(uid, v, &files, now) {
                Ok(true) => {
                    tracing::info!(uid, volume = %v.name, files = files.len(), "volume files updated")
                }
                Ok(false) => {}
                Err(e) => return Err(format!("volume {:?}: {e}", v.name)),
            }
        }
        Ok(())
    }

    /// After a change of their data: the volumes of pods whose sandbox exists.
    fn refresh_volumes(&mut self) {
        for uid in std::mem::take(&mut self.refresh) {
            let ready = self.records.get(&uid).is_some_and(|r| r.sandbox_ready);
            let Some(pod) = self.desired.get(&uid) else {
                continue;
            };
            if !ready || !pod.spec.volumes.iter().any(|v| v.is_projected()) {
                continue;
            }
            if let Err(why) = self.write_volumes(&uid, pod) {
                tracing::warn!(uid, pod = %pod.metadata.name, why, "a volume keeps its files");
            }
        }
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
        self.refresh_volumes();
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
        let now = self.clock.unix_millis();
        if now - self.last_image_gc_ms >= IMAGE_GC_EVERY_MS {
            self.collect_images().await;
        }
        if now - self.last_volume_check_ms >= VOLUME_CHECK_EVERY_MS {
            self.last_volume_check_ms = now;
            self.evict_over_limit().await;
        }
        plan::observe(
            &mut self.records,
            &self.desired,
            &observed,
            now,
            self.backoff,
        );
        self.run_probes(now).await;
        self.finish_hooks();
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
            for op in plan::plan(
                &self.desired,
                &self.records,
                &observed,
                self.clock.unix_millis(),
            ) {
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
                self.clock.unix_millis(),
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

    /// Every pod's report (for a hello).
    pub fn all_reports(&self) -> Vec<PodReport> {
        self.records
            .iter()
            .map(|(uid, rec)| plan::report(self.desired.get(uid), rec, &self.host_ip))
            .collect()
    }

    /// The log file for `bramble logs`: the current (or last) instance, or the one before.
    pub fn log_path(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        previous: bool,
    ) -> Result<PathBuf, LogPathError> {
        let rec = self
            .records
            .values()
            .find(|r| r.namespace == namespace && r.name == pod)
            .ok_or_else(|| LogPathError::PodNotHere {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
            })?;
        let c = rec
            .containers
            .get(container)
            .ok_or_else(|| LogPathError::ContainerNotCreated(container.to_string()))?;
        let back = if previous { 2 } else { 1 };
        if c.attempt < back {
            let (container, pod) = (container.to_string(), pod.to_string());
            return Err(if previous {
                LogPathError::NoPrevious { container, pod }
            } else {
                LogPathError::Waiting { container, pod }
            });
        }
        Ok(self.layout.log_file(&rec.uid, container, c.attempt - back))
    }

    /// Every running container: (namespace, pod, container, id), for the metrics report.
    pub fn running_containers(&self) -> Vec<(String, String, String, String)> {
        self.records
            .values()
            .flat_map(|r| {
                r.containers.iter().filter_map(|(name, c)| {
                    matches!(c.state, bramble_api::wire::ContainerState::Running { .. })
                        .then(|| c.current.clone())
                        .flatten()
                        .map(|id| (r.namespace.clone(), r.name.clone(), name.clone(), id))
                })
            })
            .collect()
    }

    /// The runtime, for reads that need no pod manager state (metrics).
    pub fn runtime(&self) -> Arc<dyn Runtime> {
        self.runtime.clone()
    }

    /// What a stream to a pod reaches: for an exec, the running container (`container`
    /// empty: the pod's first); for a port-forward (`container` None), the pod's network
    /// namespace (None: host networking). Reads two small files: callers on the async
    /// runtime may call it.
    pub fn stream_target(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<StreamTarget, String> {
        let rec = self
            .records
            .values()
            .find(|r| r.namespace == namespace && r.name == pod && r.evicted.is_none())
            .ok_or_else(|| {
                LogPathError::PodNotHere {
                    namespace: namespace.to_string(),
                    pod: pod.to_string(),
                }
                .to_string()
            })?;
        let Some(container) = container else {
            // A pod without its own network namespace forwards to the node's only when it
            // asked for the node's network (a hollow node's pods have neither).
            let host = self
                .desired
                .get(&rec.uid)
                .is_some_and(|p| p.spec.host_network);
            if rec.netns.is_none() && !host {
                return Err(format!(
                    "pod {namespace}/{pod} has no network namespace on this node"
                ));
            }
            return Ok(StreamTarget {
                exec: None,
                netns: rec.netns.clone(),
                log: None,
            });
        };
        let name = match container {
            "" => self
                .desired
                .get(&rec.uid)
                .and_then(|p| p.spec.containers.first())
                .map(|c| c.name.clone())
                .unwrap_or_default(),
            c => c.to_string(),
        };
        let id = rec
            .containers
            .get(&name)
            .and_then(|c| c.current.clone())
            .ok_or_else(|| format!("container {name:?} in pod {pod:?} is not running"))?;
        let exec = self
            .runtime
            .exec_target(&id)
            .map_err(|e| format!("container {name:?} in pod {pod:?}: {e}"))?;
        Ok(StreamTarget {
            exec: Some(exec),
            netns: rec.netns.clone(),
            log: self.log_path(namespace, pod, &name, false).ok(),
        })
    }

    /// Lets the image store free disk, keeping every image a desired pod names.
    async fn collect_images(&mut self) {
        self.last_image_gc_ms = self.clock.unix_millis();
        let in_use: Vec<String> = self
            .desired
            .values()
            .flat_map(|p| p.spec.all_containers().map(|c| c.image.clone()))
            .collect();
        let images = self.images.clone();
        let _ = tokio::task::spawn_blocking(move || images.collect(&in_use)).await;
    }

    /// Executes one operation and folds its outcome into the records; returns the uid of a
    /// pod that was dropped.
    async fn execute(&mut self, op: Op) -> Option<String> {
        let outcome = match &op {
            Op::CreateSandbox { uid } => {
                let pod = self.desired.get(uid)?.clone();
                plan::sandbox_record(&mut self.records, uid, &pod, self.clock.unix_millis());
                self.create_sandbox(uid, &pod).await
            }
            Op::Start { uid, container, id } => self.start(uid, container, id).await?,
            Op::Signal {
                uid,
                container,
                id,
                signal,
            } => {
                let (i, signal) = (id.clone(), *signal);
                if let Err(e) = self.blocking(move |rt| rt.signal(&i, signal)).await {
                    tracing::warn!(uid, container, error = %e, "cannot signal a container");
                }
                Outcome::Signalled
            }
            Op::Remove { uid, id, .. } => {
                let i = id.clone();
                match self.blocking(move |rt| rt.remove(&i)).await {
                    Ok(()) => Outcome::Removed,
                    Err(e) => {
                        tracing::warn!(uid, id, error = %e, "cannot remove a container");
                        Outcome::Done
                    }
                }
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
                self.layout.remove_pod(uid);
                Outcome::Done
            }
            Op::PreStop { uid, container, id } => {
                // A hook that cannot be resolved (its pod gone, a port it names missing)
                // ends at once, failed: the stop goes on.
                let hook = self.hook(uid, container, |l| l.pre_stop.as_ref());
                let netns = self.records.get(uid).and_then(|r| r.netns.clone());
                let (rt, i) = (self.runtime.clone(), id.clone());
                let h = tokio::task::spawn_blocking(move || match hook {
                    Some((action, timeout)) => run_hook(rt.as_ref(), &i, netns, action, timeout),
                    None => Err("the hook cannot be resolved".into()),
                });
                self.hooks.insert((uid.clone(), container.clone()), h);
                Outcome::HookStarted
            }
            Op::Drop { uid } => {
                tracing::info!(uid, "pod removed from the node");
                Outcome::Done
            }
        };
        plan::on_result(
            &mut self.records,
            &op,
            outcome,
            self.clock.unix_millis(),
            self.backoff,
        )
    }

    /// Evicts pods whose disk-backed emptyDir volume has grown past its sizeLimit, as the
    /// kubelet does (a memory-backed one is a tmpfs of that size and cannot).
    async fn evict_over_limit(&mut self) {
        let mut checks = Vec::new();
        for (uid, pod) in &self.desired {
            let Some(rec) = self.records.get(uid) else {
                continue;
            };
            if rec.evicted.is_some() || !rec.sandbox_ready {
                continue;
            }
            for v in &pod.spec.volumes {
                let Some(e) = &v.empty_dir else { continue };
                let Some(limit) = &e.size_limit else { continue };
                if e.medium == "Memory" {
                    continue;
                }
                checks.push((
                    uid.clone(),
                    v.name.clone(),
                    limit.to_string(),
                    u64::try_from(limit.value()).unwrap_or(0),
                    self.layout.volume_path(uid, v),
                ));
            }
        }
        if checks.is_empty() {
            return;
        }
        let over: Vec<(String, String, String)> = tokio::task::spawn_blocking(move || {
            checks
                .into_iter()
                .filter(|(.., limit, path)| crate::images::tree_size(path, true) > *limit)
                .map(|(uid, name, shown, ..)| (uid, name, shown))
                .collect()
        })
        .await
        .unwrap_or_default();
        for (uid, name, limit) in over {
            if let Some(rec) = self.records.get_mut(&uid)
                && rec.evicted.is_none()
            {
                let why = format!("Usage of EmptyDir volume {name:?} exceeds the limit {limit:?}.");
                tracing::warn!(uid, pod = %rec.name, reason = %why, "evicting a pod");
                rec.evicted = Some(why);
            }
        }
    }

    /// Makes the pod's volumes and sandbox and connects it to the pod network.
    async fn create_sandbox(&mut self, uid: &str, pod: &Pod) -> Outcome {
        if let Some(why) = self.host_access.refuse(pod) {
            return Outcome::SandboxFailed(why);
        }
        if let Err(e) = self.layout.prepare_volumes(uid, pod) {
            return Outcome::SandboxFailed(e.to_string());
        }
        let host = pod.spec.host_network;
        let u = uid.to_string();
        match self.blocking(move |rt| rt.create_sandbox(&u, host)).await {
            Ok(Some(netns)) if !host => {
                let (pod_ip, network) = self.connect_pod(uid, &netns).await;
                Outcome::SandboxMade {
                    netns: Some(netns),
                    pod_ip,
                    network,
                }
            }
            Ok(netns) => Outcome::SandboxMade {
                netns,
                pod_ip: None,
                network: Network::Connected,
            },
            Err(e) => {
                tracing::warn!(uid, error = %e, "cannot create the pod sandbox");
                Outcome::SandboxFailed(e.to_string())
            }
        }
    }

    /// Gives a pod its IP and, on a real node, wires its namespace to the bridge.
    async fn connect_pod(
        &mut self,
        uid: &str,
        netns: &std::path::Path,
    ) -> (Option<std::net::Ipv4Addr>, Network) {
        let Some(net) = self.network.clone() else {
            return (None, Network::Connected);
        };
        let Some(cidr) = net.pod_cidr() else {
            return (None, Network::WaitingForCidr);
        };
        let held = self.records.get(uid).map_or("", |r| r.pod_ip.as_str());
        let used = self.records.values().map(|r| r.pod_ip.as_str());
        let Some(ip) = self.pod_ips.assign(cidr, held, used) else {
            let message = format!("no free address left in the node's pod CIDR {cidr}");
            return (None, Network::Failed(message));
        };
        let Some(dp) = net.dataplane.clone() else {
            return (Some(ip), Network::Connected);
        };
        let (u, ns) = (uid.to_string(), netns.to_path_buf());
        let attached = match tokio::task::spawn_blocking(move || dp.attach(&u, &ns, ip, cidr)).await
        {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match attached {
            Ok(()) => (Some(ip), Network::Connected),
            Err(e) => {
                tracing::warn!(uid, error = %e, "cannot connect the pod to the network");
                (Some(ip), Network::Failed(format!("pod network: {e}")))
            }
        }
    }

    /// Starts one container instance once its image is ready. None: the pod or container
    /// is no longer desired (nothing to record).
    async fn start(&mut self, uid: &str, container: &str, id: &str) -> Option<Outcome> {
        let pod = self.desired.get(uid)?.clone();
        let mut spec_c = pod
            .spec
            .all_containers()
            .find(|c| c.name == container)?
            .clone();
        let pod_ip = self.records.get(uid)?.pod_ip.clone();
        // ConfigMaps, Secrets and the pod's own fields, as environment and files: what is
        // missing holds the container in CreateContainerConfigError, naming it.
        let env = {
            let (_, host_ip, cpu_millis, memory_bytes) = self.pod_context(uid);
            let ctx = config::PodContext {
                pod_ip: &pod_ip,
                host_ip: &host_ip,
                cpu_millis,
                memory_bytes,
            };
            let data = self.config.get(uid).map(Vec::as_slice).unwrap_or_default();
            config::resolve_env(&pod, &spec_c, data, &ctx)
        };
        let env = match env.and_then(|env| self.write_volumes(uid, &pod).map(|()| env)) {
            Ok(env) => env,
            Err(why) => {
                tracing::warn!(
                    uid,
                    container,
                    why,
                    "the container waits for its configuration"
                );
                return Some(Outcome::ConfigFailed(why));
            }
        };
        spec_c.env = env
            .into_iter()
            .map(|(name, value)| bramble_api::pod::EnvVar {
                name,
                value,
                value_from: None,
            })
            .collect();
        spec_c.env_from.clear();
        for m in &mut spec_c.volume_mounts {
            if pod
                .spec
                .volumes
                .iter()
                .any(|v| v.name == m.name && v.is_projected())
            {
                m.read_only = true;
            }
        }
        let PodNames {
            files,
            env: service_env,
        } = self.names(uid, &pod, &pod_ip);
        let rec = self.records.get_mut(uid)?;
        let netns = rec.netns.clone();
        let instance = plan::next_instance(rec, container, &spec_c.image);
        let policy = crate::images::PullPolicy::of(&spec_c.image_pull_policy, &spec_c.image);
        let prepared = match self.pulls.poll(&self.images, &spec_c.image, policy).await {
            PullState::Ready(p) => {
                self.collect_images().await;
                p
            }
            PullState::Pending => {
                return Some(Outcome::Pulling {
                    image: spec_c.image,
                });
            }
            PullState::Failed { reason, message } => {
                tracing::warn!(uid, container, error = %message, "image not ready");
                return Some(Outcome::ImageFailed { reason, message });
            }
        };
        let volumes = pod
            .spec
            .volumes
            .iter()
            .map(|v| (v.name.clone(), self.layout.volume_path(uid, v)))
            .collect();
        self.layout.rotate_logs(uid, container, instance);
        let readiness_probe = spec_c.readiness_probe.is_some();
        let security = crate::runtime::security::Security::of(&pod.spec, &spec_c);
        let spec = ContainerSpec {
            id: id.to_string(),
            pod_uid: uid.to_string(),
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
            log_path: self.layout.log_file(uid, container, instance),
            security,
            files,
            service_env,
            share_pids: pod.spec.share_process_namespace == Some(true),
        };
        match self.blocking(move |rt| rt.start(&spec)).await {
            Ok(()) => {
                // postStart: the container is not Running until it succeeds; killed if not.
                let Some((action, timeout)) = self.hook(uid, container, |l| l.post_start.as_ref())
                else {
                    return Some(Outcome::Started { readiness_probe });
                };
                let netns = self.records.get(uid).and_then(|r| r.netns.clone());
                let i = id.to_string();
                let ran = self
                    .blocking(move |rt| run_hook(rt, &i, netns, action, timeout))
                    .await;
                match ran {
                    Ok(()) => Some(Outcome::Started { readiness_probe }),
                    Err(e) => {
                        tracing::warn!(uid, container, error = %e, "the postStart hook failed; the container is killed");
                        let i = id.to_string();
                        let _ = self
                            .blocking(move |rt| {
                                let _ = rt.signal(&i, libc::SIGKILL);
                                std::thread::sleep(std::time::Duration::from_millis(100));
                                rt.remove(&i)
                            })
                            .await;
                        Some(Outcome::StartFailed(format!("PostStartHookError: {e}")))
                    }
                }
            }
            Err(e) if e.is_config() => {
                tracing::warn!(uid, container, error = %e, "the pod's settings refuse the container");
                let i = id.to_string();
                let _ = self.blocking(move |rt| rt.remove(&i)).await;
                Some(Outcome::ConfigFailed(e.to_string()))
            }
            Err(e) => {
                tracing::warn!(uid, container, error = %e, "cannot start a container");
                // Clean up what the failed start left; the next attempt reuses the id.
                let i = id.to_string();
                let _ = self.blocking(move |rt| rt.remove(&i)).await;
                Some(Outcome::StartFailed(e.to_string()))
            }
        }
    }
}

/// The ConfigMaps of a pod's data as the local store keeps them (postcard; empty: none).
/// Never its Secrets: those stay in memory and on tmpfs.
fn config_row(data: &[Arc<ConfigData>]) -> Vec<u8> {
    let maps: Vec<&ConfigData> = data
        .iter()
        .map(|d| d.as_ref())
        .filter(|d| !d.secret)
        .collect();
    if maps.is_empty() {
        return Vec::new();
    }
    postcard::to_allocvec(&maps).unwrap_or_default()
}

/// The one copy of a ConfigMap's or Secret's data the pods reading it share: one already
/// held (the same object at the same revision, for another pod or earlier in this message),
/// or this one. A `repeated` entry nothing holds (a broken or hostile message) is dropped:
/// its pod waits for the data as for a missing object.
fn shared_config(
    held: &HashMap<String, Vec<Arc<ConfigData>>>,
    earlier: &[Arc<ConfigData>],
    c: ConfigData,
) -> Option<Arc<ConfigData>> {
    let same =
        |d: &&Arc<ConfigData>| d.secret == c.secret && d.name == c.name && d.revision == c.revision;
    if let Some(d) = earlier
        .iter()
        .find(same)
        .or_else(|| held.values().flatten().find(same))
    {
        return Some(d.clone());
    }
    if c.repeated {
        tracing::warn!(name = %c.name, "a repeated ConfigMap or Secret without its first copy; dropped");
        return None;
    }
    Some(Arc::new(c))
}

/// A hook's action.
enum Hook {
    Probe(crate::runtime::ProbeAction),
    Sleep(std::time::Duration),
}

/// Runs a hook against a container (in its namespaces, as an exec or HTTP probe is run).
fn run_hook(
    rt: &dyn Runtime,
    id: &str,
    netns: Option<PathBuf>,
    hook: Hook,
    timeout: std::time::Duration,
) -> Result<(), String> {
    match hook {
        Hook::Sleep(d) => {
            std::thread::sleep(d.min(timeout));
            Ok(())
        }
        Hook::Probe(action) => rt
            .probe(id, netns.as_deref(), &action, timeout)
            .map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::{ImageError, PreparedImage, PullPolicy};
    use crate::runtime::memory::MemoryRuntime;
    use bramble_api::wire::{ContainerState, DesiredPod};

    /// Images named `slow...` take seconds to pull, `absent...` are not there; the others
    /// are there at once.
    struct SlowImages;
    impl ImageStore for SlowImages {
        fn prepare(&self, image: &str, _p: PullPolicy) -> Result<PreparedImage, ImageError> {
            if image.starts_with("absent") {
                return Err(ImageError::NotPresent {
                    image: image.into(),
                    looked: "the test".into(),
                });
            }
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
            config: vec![],
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
                host_access: Default::default(),
                dns: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn configmaps_survive_an_agent_restart_and_secrets_never_reach_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let item = |secret: bool, name: &str, value: &str| ConfigData {
            secret,
            name: name.into(),
            revision: 4,
            items: vec![("k".into(), value.as_bytes().to_vec())],
            repeated: false,
        };
        {
            let mut pm = manager(dir.path());
            let mut a = pod("a", "fast:1");
            a.config = vec![
                item(false, "cfg", "cm-value"),
                item(true, "db", "s3cr3t-value"),
            ];
            let mut b = pod("b", "fast:1");
            b.config = vec![ConfigData {
                items: vec![],
                repeated: true,
                ..item(false, "cfg", "")
            }];
            pm.apply_desired(Desired {
                revision: 1,
                prev_revision: 0,
                change: DesiredChange::Snapshot(vec![a, b]),
            })
            .unwrap();
        }
        let raw = std::fs::read(dir.path().join("agent.redb")).unwrap();
        let has = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"cm-value"), "the ConfigMap was not stored");
        assert!(!has(b"s3cr3t-value"), "a Secret reached the agent's disk");
        // A restart without the master: the ConfigMap is back for both readers, shared.
        let pm = manager(dir.path());
        let names = |uid: &str| -> Vec<(bool, String, Vec<u8>)> {
            pm.config[uid]
                .iter()
                .map(|c| (c.secret, c.name.clone(), c.items[0].1.clone()))
                .collect()
        };
        assert_eq!(
            names("uid-a"),
            vec![(false, "cfg".into(), b"cm-value".to_vec())]
        );
        assert_eq!(names("uid-b"), names("uid-a"));
        assert!(Arc::ptr_eq(&pm.config["uid-a"][0], &pm.config["uid-b"][0]));
    }

    #[test]
    fn desired_pods_the_api_would_refuse_are_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut pm = manager(dir.path());
        let mut bad = pod("bad", "fast:1");
        let mut json: serde_json::Value = serde_json::from_slice(&bad.pod_json).unwrap();
        json["spec"]["containers"][0]["name"] = serde_json::json!("Not_A_Name");
        bad.pod_json = serde_json::to_vec(&json).unwrap();
        pm.apply_desired(Desired {
            revision: 1,
            prev_revision: 0,
            change: DesiredChange::Snapshot(vec![pod("good", "fast:1"), bad.clone()]),
        })
        .unwrap();
        let desired: Vec<&str> = pm.desired.keys().map(String::as_str).collect();
        assert_eq!(desired, ["uid-good"], "the invalid pod was taken");
        // The same through an upsert.
        bad.uid = "uid-bad2".into();
        pm.apply_desired(Desired {
            revision: 2,
            prev_revision: 1,
            change: DesiredChange::Upsert(bad),
        })
        .unwrap();
        assert!(!pm.desired.contains_key("uid-bad2"));
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_start_is_tried_again_only_after_its_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(bramble_support::ManualClock::new(1_000_000));
        let mut pm = manager(dir.path()).with_clock(clock.clone());
        pm.apply_desired(Desired {
            revision: 1,
            prev_revision: 0,
            change: DesiredChange::Snapshot(vec![pod("a", "absent:1")]),
        })
        .unwrap();
        let failures = |pm: &PodManager| pm.records["uid-a"].containers["c"].start_failures;
        pm.reconcile().await;
        assert_eq!(failures(&pm), 1);
        match state(&pm, "a") {
            ContainerState::Waiting { reason, .. } => assert_eq!(reason, "ErrImageNeverPull"),
            other => panic!("{other:?}"),
        }
        // The manager's back-off starts at 10 ms: with the clock held, no round retries.
        for _ in 0..3 {
            pm.reconcile().await;
        }
        assert_eq!(failures(&pm), 1, "retried before the back-off ran out");
        clock.advance(std::time::Duration::from_millis(10));
        pm.reconcile().await;
        assert_eq!(failures(&pm), 2);
        // Then 20 ms: 10 is not enough.
        clock.advance(std::time::Duration::from_millis(10));
        pm.reconcile().await;
        assert_eq!(failures(&pm), 2);
        clock.advance(std::time::Duration::from_millis(10));
        pm.reconcile().await;
        assert_eq!(failures(&pm), 3);
    }

    #[test]
    fn pods_reading_one_configmap_share_one_copy_and_a_dangling_repeat_is_dropped() {
        let data = |repeated: bool, revision: u64| ConfigData {
            secret: false,
            name: "cfg".into(),
            revision,
            items: if repeated {
                vec![]
            } else {
                vec![("k".into(), b"v".to_vec())]
            },
            repeated,
        };
        let held: HashMap<String, Vec<Arc<ConfigData>>> = HashMap::new();
        let first = shared_config(&held, &[], data(false, 1)).unwrap();
        let earlier = [first.clone()];
        // A repeat in the same message is the first copy, bytes and all.
        let again = shared_config(&held, &earlier, data(true, 1)).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(again.items, vec![("k".to_string(), b"v".to_vec())]);
        // Another pod's copy held from an earlier message serves a new one of the same revision.
        let held: HashMap<String, Vec<Arc<ConfigData>>> =
            [("uid-a".to_string(), vec![first.clone()])].into();
        assert!(Arc::ptr_eq(
            &first,
            &shared_config(&held, &[], data(false, 1)).unwrap()
        ));
        // A newer revision is its own copy; a repeat of one nobody sent is dropped.
        assert!(!Arc::ptr_eq(
            &first,
            &shared_config(&held, &[], data(false, 2)).unwrap()
        ));
        assert!(shared_config(&held, &[], data(true, 3)).is_none());
    }
}
