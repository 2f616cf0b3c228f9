//! The agent's main loop: the MQTT session with the master (hello, heartbeats, status,
//! desired pods, log requests) around the pod manager, which keeps running whether or not
//! the master is reachable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bramble_api::wire::{
    self, Channel, Heartbeat, Hello, LogReply, LogRequest, Message, StatusReport, Usage,
};
use bramble_support::LogLimiter;
use bramble_support::mqtt::{self, Incoming};
use rumqttc::{AsyncClient, LastWill, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

mod inbound;
mod session;
mod stream;
mod usage;

use self::inbound::Inbound;
use self::session::{Action, Event, Session};
use crate::config::Config;
use crate::images::ImageStore;
use crate::join::{self, Credentials, JoinError};
use crate::localstore::{LocalStore, LocalStoreError};
use crate::network::dataplane::Dataplane;
use crate::network::{NetApplied, NetView, PodNetwork};
use crate::pods::plan::Backoff;
use crate::pods::{Applied, PodManager, PodManagerConfig};
use crate::runtime::container::LibcontainerRuntime;
use crate::runtime::{Runtime, RuntimeError};
use bramble_support::wire_auth::{NodeSecret, seal_from_node};

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    LocalStore(#[from] LocalStoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::hollow::HollowConfigError),
}

/// Counts of dropped messages, written to `<data>/agent-metrics.prom` (node_exporter's
/// textfile format) when they change.
struct Drops {
    counts: BTreeMap<&'static str, u64>,
    log: LogLimiter,
    path: std::path::PathBuf,
    /// Pods on the node, as last written.
    pods: Option<usize>,
}

impl Drops {
    fn count(&mut self, reason: &'static str, detail: &str) {
        *self.counts.entry(reason).or_default() += 1;
        if self.log.due(reason, Instant::now()) {
            tracing::warn!(
                reason,
                detail,
                "dropped an MQTT message (logged once per 10s per reason)"
            );
        }
        self.write();
    }

    /// Records the pod count; writes the file only when it changed (an idle node writes nothing).
    fn set_pods(&mut self, n: usize) {
        if self.pods != Some(n) {
            self.pods = Some(n);
            self.write();
        }
    }

    fn write(&self) {
        let mut text = String::from("# TYPE bramble_agent_dropped_messages_total counter\n");
        for (r, n) in &self.counts {
            text.push_str(&format!(
                "bramble_agent_dropped_messages_total{{reason=\"{r}\"}} {n}\n"
            ));
        }
        text.push_str(&format!(
            "# TYPE bramble_agent_pods gauge\nbramble_agent_pods {}\n",
            self.pods.unwrap_or(0)
        ));
        let tmp = self.path.with_extension("tmp");
        if std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .is_err()
        {
            tracing::warn!(path = %self.path.display(), "cannot write the agent metrics file");
        }
    }
}

/// Finds this node's credentials, joining first if needed (retrying while the master is
/// unreachable, until `shutdown`).
async fn credentials(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Credentials, AgentError> {
    if let Some(c) = join::load(&config.data_dir)? {
        return Ok(c);
    }
    let (Some(server), Some(token)) = (config.server.clone(), config.token.clone()) else {
        return Err(JoinError::NotJoined.into());
    };
    if let crate::config::TokenSource::Argument(_) = token {
        tracing::warn!(
            "the join token is on the command line, where every user of this board can read it (ps); prefer --token-file with a 0600 file"
        );
    }
    let token_file = match &token {
        crate::config::TokenSource::File(_, path) => Some(path.clone()),
        crate::config::TokenSource::Argument(_) => None,
    };
    let token = token.text().to_string();
    let mut attempt = 0;
    loop {
        let (host, port) = join::server_host(&server);
        let facts = crate::facts::gather(config, Some((&host, port)));
        let (s, t, n) = (server.clone(), token.clone(), config.node_name.clone());
        let result = tokio::task::spawn_blocking(move || join::join(&s, &t, &n, &facts))
            .await
            .unwrap_or_else(|e| Err(JoinError::Refused(e.to_string())));
        match result {
            Ok(c) => {
                join::save(&config.data_dir, &c)?;
                tracing::info!(node = %c.node_name, "joined the cluster");
                // The join token has done its work: it no longer lies on the board's disk.
                if let Some(path) = token_file {
                    match std::fs::remove_file(&path) {
                        Ok(()) => {
                            tracing::info!(path = %path.display(), "deleted the join token file")
                        }
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "cannot delete the join token file; delete it by hand")
                        }
                    }
                }
                return Ok(c);
            }
            Err(JoinError::Unreachable { server, message }) => {
                let wait = bramble_api::backoff::delay(
                    attempt,
                    Duration::from_millis(500),
                    Duration::from_secs(30),
                    bramble_support::jitter(),
                );
                attempt += 1;
                tracing::warn!(server, message, retry_in = ?wait, "cannot reach the master to join");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(JoinError::Unreachable { server, message }.into()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs the agent until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    if config.memory_runtime {
        tracing::info!("containers are simulated in memory (--runtime memory)");
        return run_with_runtime(
            config,
            Arc::new(crate::runtime::memory::MemoryRuntime::new()),
            Arc::new(crate::runtime::memory::AnyImage),
            None,
            shutdown,
        )
        .await;
    }
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| AgentError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    let shim_exe = std::env::current_exe().map_err(|source| AgentError::DataDir {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let runtime: Arc<dyn Runtime> = Arc::new(LibcontainerRuntime::new(
        dir,
        shim_exe,
        crate::runtime::container::Limits {
            max_log_bytes: config.log_max_bytes,
            pids: config.pids_limit,
        },
    )?);
    let cache = crate::images::oci::OciStore::open(
        dir,
        &config.images_dir,
        (
            "linux".to_string(),
            crate::facts::architecture(),
            crate::facts::variant(),
        ),
        config.image_cache,
    )
    .map(|c| c.with_layer_policy(config.layer_policy))
    .map_err(|source| AgentError::DataDir {
        path: dir.join("image-cache").display().to_string(),
        source,
    })?;
    let images: Arc<dyn ImageStore> = Arc::new(cache);
    let network = config.pod_network.then(|| {
        Arc::new(PodNetwork::load(
            dir,
            Some(Dataplane::new(&config.pod_bridge)),
        ))
    });
    run_with_runtime(config, runtime, images, network, shutdown).await
}

/// Runs the agent with a given runtime (the real one, or a hollow agent's in-memory one).
pub async fn run_with_runtime(
    config: Config,
    runtime: Arc<dyn Runtime>,
    images: Arc<dyn ImageStore>,
    network: Option<Arc<PodNetwork>>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let dir = config.data_dir.clone();
    // The data dir holds the node's credential, its desired pods and the pods' files: root
    // only, whatever mode it was made with.
    std::fs::create_dir_all(&dir)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(|source| AgentError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
    let store = LocalStore::open(&dir.join("agent.redb"))?;
    let creds_known = join::load(&dir)?;
    // The host address is needed for reports before the master answers; use what we know.
    let master = creds_known.as_ref().map(|c| (c.broker_host(), c.mqtt_port));
    let early_facts = crate::facts::gather(&config, master.as_ref().map(|(h, p)| (h.as_str(), *p)));
    let mut pods = PodManager::load(
        runtime,
        images,
        store,
        PodManagerConfig {
            data_dir: dir.clone(),
            backoff: Backoff {
                base: config.restart_backoff,
                max: config.restart_backoff_max,
            },
            host_ip: early_facts.address.clone(),
            network: network.clone(),
            host_access: config.host_access.clone(),
            dns: config.pod_network.then(|| config.dns.clone()),
        },
    )?;
    // Routes to the other nodes' pods as last known, before the master answers.
    if let Some(net) = &network {
        sync_routes(net);
    }
    // The network view is shared with the proxy, which reads it when it syncs (changes
    // that arrive meanwhile fold into one sync): an event costs a counter bump, not a copy
    // of every Service.
    let view = Arc::new(std::sync::Mutex::new(NetView::default()));
    pods.set_services(view.clone());
    let (proxy_tx, proxy_rx) = watch::channel(0u64);
    if config.proxy && network.is_some() {
        tokio::spawn(crate::network::proxy::run(
            view.clone(),
            proxy_rx,
            Duration::from_secs(60),
            shutdown.clone(),
        ));
    }
    // The cluster DNS answers from the same view, on a thread of its own.
    if let Some(net) = network.as_ref().filter(|_| config.dns.serve) {
        crate::network::dns::spawn(
            config.dns.clone(),
            net.clone(),
            view.clone(),
            dir.join("dns-metrics.prom"),
        );
    }
    // Bring cached pods back before (and whether or not) the master is reached.
    pods.reconcile().await;
    let creds = tokio::select! {
        c = credentials(&config, &shutdown) => c?,
        // Keep cached pods running while waiting to join.
        _ = keep_reconciling(&mut pods, &shutdown) => return Ok(()),
    };
    let node = creds.node_name.clone();
    let host = creds.broker_host();
    // Streams to pods connect back to the master's API with the node's token.
    let dial = Arc::new(stream::Dial {
        server: creds.server.clone(),
        ca_pem: creds.ca_pem.clone(),
        token: creds.node_token.clone(),
    });
    let facts = crate::facts::gather(&config, Some((&host, creds.mqtt_port)));
    // On the first start the address was not known before joining.
    pods.set_host_ip(&facts.address);
    let session = {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        u64::from_le_bytes(b).max(1)
    };
    // Every message this process sends is stamped with its session and a rising seq, so
    // that the master refuses one replayed through the broker.
    let sealer = Sealer {
        node: node.clone(),
        secret: NodeSecret::from_token(&creds.node_token),
        session,
        seq: Arc::new(std::sync::atomic::AtomicU64::new(0)),
    };
    // What the master's messages must carry: this session and the last hello sent.
    let hello_seq = std::sync::atomic::AtomicU64::new(0);
    let expect = || wire::Stamp {
        session,
        seq: hello_seq.load(Relaxed),
    };
    // Whether a desired snapshot has answered that hello (a later, older one is a replay).
    let snapshot_seen = std::sync::atomic::AtomicBool::new(false);

    // What this node's messages are tagged and encrypted with (the master keeps this, not
    // the token).
    let secret = NodeSecret::from_token(&creds.node_token);
    // Only what the master signed is acted on, whatever the broker delivers.
    let keys = inbound::Keys {
        master: bramble_support::wire_auth::unhex(&creds.wire_key)
            .filter(|k| k.len() == 32)
            .ok_or_else(|| {
                JoinError::Refused(
                    "the node's credentials carry no master wire key (joined before it existed): delete the node on the master and join again".into(),
                )
            })?,
        secret: secret.clone(),
    };
    let mut opts = mqtt::options(&node, &host, creds.mqtt_port);
    if creds.mqtt_tls {
        // The cluster's broker presents the cluster CA's certificate; an external one, the
        // CA the master handed over at join.
        let (ca, what) = if creds.mqtt_ca_pem.is_empty() {
            (&creds.ca_pem, "the cluster CA")
        } else {
            (&creds.mqtt_ca_pem, "the external broker's CA")
        };
        let tls = bramble_support::tls::client_config(ca)
            .map_err(|e| JoinError::Refused(format!("{what} in the node's credentials: {e}")))?;
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    opts.set_credentials(&node, &creds.node_token);
    opts.set_last_will(LastWill::new(
        Channel::Will.topic(&node),
        sealer.will(),
        QoS::AtLeastOnce,
        false,
    ));
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    mqtt::network(&mut eventloop, Some(5));

    let (in_tx, mut in_rx) = mpsc::channel::<Incoming>(1024);
    // Capped exponential back-off with jitter: a rack back from a power cut does not
    // reconnect in lockstep.
    let pump = tokio::spawn(mqtt::pump(
        eventloop,
        in_tx,
        mqtt::Reconnect {
            first: Duration::from_millis(200),
            max: Duration::from_secs(30),
            what: "MQTT connection to the master",
        },
        shutdown.clone(),
    ));

    // Heartbeats on their own task, so a long reconcile round never delays them.
    let (usage_tx, usage_rx) = watch::channel(Usage {
        memory_used_bytes: 0,
        pods: 0,
    });
    // Heartbeats start after the first hello, so that the master learns this session from
    // the hello rather than from a heartbeat that overtook it (which would cost a snapshot
    // stamped for no hello, refused, and a second one).
    let (said_hello, hello_rx) = watch::channel(false);
    let (metrics_tx, metrics_rx) = watch::channel(None);
    let hb = tokio::spawn(heartbeats(
        hello_rx,
        client.clone(),
        sealer.clone(),
        config.heartbeat_interval,
        usage_rx,
        metrics_rx,
        shutdown.clone(),
    ));
    // Resource use for `kubectl top`, from real agents only (a hollow node's containers use
    // nothing, and the host is not its own).
    let mut collector = usage::Collector::default();
    let mut metrics_tick = tokio::time::interval(config.metrics_interval);
    metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let report_metrics = !config.memory_runtime;

    let mut drops = Drops {
        counts: BTreeMap::new(),
        log: LogLimiter::new(Duration::from_secs(10)),
        path: dir.join("agent-metrics.prom"),
        pods: None,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Routes are level-triggered too: put back what someone removed.
    let mut route_tick = tokio::time::interval(ROUTE_RESYNC);
    route_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let hello = |pods: &PodManager, view: &std::sync::Mutex<NetView>| Hello {
        session,
        facts: facts.clone(),
        desired_revision: pods.desired_revision(),
        network_revision: network
            .as_ref()
            .map(|_| view.lock().unwrap_or_else(|p| p.into_inner()).revision),
        pods: pods.all_reports(),
    };
    let publish = |channel: Channel, msg: Message| {
        let (topic, stamp, payload) = sealer.seal(channel, msg);
        if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
            tracing::debug!(error = %e, "publish queued while disconnected failed; the next hello resends state");
        }
        stamp
    };
    let mut session = Session::new(network.is_some());
    // Carries out what the protocol core decided.
    let act = async |action: Action, pods: &mut PodManager| match action {
        Action::Subscribe => {
            let mut topics = vec![Channel::Desired.topic(&node), Channel::Request.topic(&node)];
            if network.is_some() {
                topics.push(Channel::Network.topic(&node));
                topics.push(wire::SERVICES_TOPIC.to_string());
            }
            for t in topics {
                if let Err(e) = client.try_subscribe(t, QoS::AtLeastOnce) {
                    tracing::error!(error = %e, "cannot subscribe");
                }
            }
        }
        Action::Hello => {
            // From now on only what answers this hello is taken.
            let sent = publish(Channel::Hello, Message::Hello(hello(pods, &view)));
            hello_seq.store(sent.seq, Relaxed);
            snapshot_seen.store(false, Relaxed);
            said_hello.send_replace(true);
        }
        Action::Reconcile => {
            let reports = pods.reconcile().await;
            if !reports.is_empty() {
                publish(
                    Channel::Status,
                    Message::Status(StatusReport { pods: reports }),
                );
            }
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(ev) = in_rx.recv() => match ev {
                Incoming::Connected => {
                    tracing::info!(node, "connected to the master's broker");
                    for action in session.on(Event::Connected, Instant::now()) {
                        act(action, &mut pods).await;
                    }
                }
                Incoming::Publish(topic, payload) => match inbound::route(&node, &keys, expect(), &topic, &payload, network.is_some()) {
                    Err(d) if d.reason == inbound::OTHER_SESSION => {
                        // A master that does not know this session (it restarted), or a
                        // replay: say hello again (at most once per period).
                        drops.count(d.reason, &d.detail);
                        for action in session.on(Event::OtherSession, Instant::now()) {
                            act(action, &mut pods).await;
                        }
                    }
                    Err(d) => drops.count(d.reason, &d.detail),
                    Ok(Inbound::Network { update, shared: true }) => {
                        let gap = on_network(update, &view, &node, network.as_deref(), &proxy_tx);
                        if gap {
                            tracing::info!("missed a network event; asking for a snapshot");
                        }
                        for action in session.on(Event::SharedNetwork { gap }, Instant::now()) {
                            act(action, &mut pods).await;
                        }
                    }
                    Ok(Inbound::Network { update, shared: false }) => {
                        let had_cidr = network.as_ref().and_then(|n| n.pod_cidr()).is_some();
                        on_network(update, &view, &node, network.as_deref(), &proxy_tx);
                        let cidr_arrived = !had_cidr && network.as_ref().and_then(|n| n.pod_cidr()).is_some();
                        for action in session.on(Event::OwnNetwork { cidr_arrived }, Instant::now()) {
                            act(action, &mut pods).await;
                        }
                    }
                    Ok(Inbound::Desired(d)) => {
                        if let wire::DesiredChange::Snapshot(_) = d.change {
                            // One snapshot answers a hello; an older one after it is a replay.
                            if snapshot_seen.load(Relaxed) && d.revision < pods.desired_revision() {
                                drops.count("stale_snapshot", &format!("revision {} after {}", d.revision, pods.desired_revision()));
                                continue;
                            }
                            snapshot_seen.store(true, Relaxed);
                        }
                        let event = match pods.apply_desired(d) {
                            Ok(Applied::Changed) => Event::DesiredChanged,
                            Ok(Applied::Gap { have, expected_prev }) => {
                                tracing::info!(have, expected_prev, "missed a desired-state message; asking for a snapshot");
                                Event::DesiredGap
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "cannot persist desired pods");
                                continue;
                            }
                        };
                        for action in session.on(event, Instant::now()) {
                            act(action, &mut pods).await;
                        }
                    }
                    Ok(Inbound::StreamOpen(o)) => {
                        let container = match &o.kind {
                            wire::StreamKind::Exec { container, .. }
                            | wire::StreamKind::Attach { container } => Some(container.as_str()),
                            wire::StreamKind::PortForward { .. } => None,
                        };
                        let target = pods.stream_target(&o.namespace, &o.pod, container);
                        stream::spawn(dial.clone(), o, target);
                    }
                    Ok(Inbound::LogRequest(r)) => {
                        let reply = read_logs(&pods, r).await;
                        publish(Channel::Reply, Message::LogReply(reply));
                    }
                },
            },
            _ = metrics_tick.tick(), if report_metrics => {
                // A few small reads of /proc and the containers' cgroup files (virtual
                // files: no disk), inline.
                let report = collector.collect(
                    pods.runtime().as_ref(),
                    &pods.running_containers(),
                    config.metrics_interval.as_millis() as u64,
                );
                metrics_tx.send_replace(Some(report));
            }
            _ = route_tick.tick() => {
                if let Some(net) = &network {
                    sync_routes(net);
                }
            }
            _ = tick.tick() => {
                let reports = pods.reconcile().await;
                if !reports.is_empty() {
                    publish(Channel::Status, Message::Status(StatusReport { pods: reports }));
                }
                // Usage changes are rounded so an idle node's heartbeats stay empty.
                drops.set_pods(pods.pod_count());
                let usage = Usage { memory_used_bytes: crate::facts::memory_used() >> 24 << 24, pods: pods.pod_count() as u32 };
                usage_tx.send_if_modified(|u| if *u != usage { *u = usage; true } else { false });
            }
        }
    }
    // A clean goodbye: no last will; the master marks the node lost by heartbeat age.
    // The heartbeat task ends on the same token: joined, not aborted.
    let _ = hb.await;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), pump).await;
    Ok(())
}

/// How often the routes to other nodes' pods are checked.
const ROUTE_RESYNC: Duration = Duration::from_secs(10);

/// Applies a network message; returns whether it revealed a gap (ask for a snapshot).
fn on_network(
    u: wire::NetworkUpdate,
    view: &std::sync::Mutex<NetView>,
    node: &str,
    network: Option<&PodNetwork>,
    proxy: &watch::Sender<u64>,
) -> bool {
    let Some(net) = network else { return false };
    let mut view = view.lock().unwrap_or_else(|p| p.into_inner());
    match view.apply(u) {
        NetApplied::Unchanged => false,
        NetApplied::Gap => true,
        NetApplied::Changed { routes, services } => {
            if routes && net.update(node, &view) {
                // A few netlink calls on the node's own socket: quick enough to run inline.
                sync_routes(net);
            }
            if services || routes {
                proxy.send_modify(|n| *n += 1);
            }
            false
        }
    }
}

/// Brings the routes to other nodes' pod CIDRs in line with what the node knows.
fn sync_routes(net: &PodNetwork) {
    let Some(dp) = &net.dataplane else { return };
    if net.pod_cidr().is_none() {
        return;
    }
    match dp.sync_routes(&net.peer_routes()) {
        Ok((0, 0)) => {}
        Ok((added, removed)) => {
            tracing::info!(added, removed, "routes to other nodes' pods updated")
        }
        Err(e) => tracing::warn!(error = %e, "cannot update the routes to other nodes' pods"),
    }
}

async fn keep_reconciling(pods: &mut PodManager, shutdown: &CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => { pods.reconcile().await; }
        }
    }
}

/// Seals what this agent process sends: tagged and encrypted with the node's secret,
/// stamped with the process's session and a rising seq (see [`wire::Stamp`]).
#[derive(Clone)]
struct Sealer {
    node: String,
    secret: NodeSecret,
    session: u64,
    seq: Arc<std::sync::atomic::AtomicU64>,
}

impl Sealer {
    /// The topic, the stamp and the payload of `msg` on the node's `channel`.
    fn seal(&self, channel: Channel, msg: Message) -> (String, wire::Stamp, Vec<u8>) {
        let topic = channel.topic(&self.node);
        let stamp = wire::Stamp {
            session: self.session,
            seq: self.seq.fetch_add(1, Relaxed) + 1,
        };
        let payload = seal_from_node(&self.secret, &topic, &self.node, stamp, msg);
        (topic, stamp, payload)
    }

    /// The will's payload: sealed once, at connect (seq 0).
    fn will(&self) -> Vec<u8> {
        let topic = Channel::Will.topic(&self.node);
        let stamp = wire::Stamp {
            session: self.session,
            seq: 0,
        };
        seal_from_node(&self.secret, &topic, &self.node, stamp, Message::Gone)
    }
}

async fn heartbeats(
    mut said_hello: watch::Receiver<bool>,
    client: AsyncClient,
    sealer: Sealer,
    every: Duration,
    mut usage: watch::Receiver<Usage>,
    mut metrics: watch::Receiver<Option<wire::MetricsReport>>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = said_hello.wait_for(|s| *s) => {}
    }
    let mut tick = tokio::time::interval(every);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        seq += 1;
        // Usage rides along only when it changed: an idle node sends a few bytes.
        let changed = usage.has_changed().unwrap_or(false);
        let u = if changed {
            Some(*usage.borrow_and_update())
        } else {
            None
        };
        let (topic, _, payload) = sealer.seal(
            Channel::Heartbeat,
            Message::TimedHeartbeat(
                Heartbeat { seq, usage: u },
                u64::try_from(bramble_api::time::now_millis()).unwrap_or(0),
            ),
        );
        let _ = client.try_publish(topic, QoS::AtMostOnce, false, payload);
        // The metrics report rides the same channel from the same task, so that the seq
        // the master checks rises in the order the messages are sent.
        if metrics.has_changed().unwrap_or(false)
            && let Some(report) = metrics.borrow_and_update().clone()
        {
            let (topic, _, payload) = sealer.seal(Channel::Heartbeat, Message::Metrics(report));
            let _ = client.try_publish(topic, QoS::AtMostOnce, false, payload);
        }
    }
}

async fn read_logs(pods: &PodManager, r: LogRequest) -> LogReply {
    let path = match pods.log_path(&r.namespace, &r.pod, &r.container, r.previous) {
        Ok(p) => p,
        Err(e) => {
            return LogReply {
                id: r.id,
                data: Vec::new(),
                next_offset: 0,
                error: e.to_string(),
            };
        }
    };
    // The reply must fit in one message, whatever the request asks for.
    let limit = r.limit_bytes.min(wire::MAX_LOG_CHUNK_BYTES);
    let (id, tail, offset) = (r.id, r.tail_lines, r.offset);
    let result = tokio::task::spawn_blocking(move || match offset {
        Some(o) => crate::logs::read_from(&path, o, limit).map_err(|e| e.to_string()),
        None => Ok(crate::logs::read_tail(&path, tail, limit)),
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match result {
        Ok((data, next_offset)) => LogReply {
            id,
            data,
            next_offset,
            error: String::new(),
        },
        Err(error) => LogReply {
            id,
            data: Vec::new(),
            next_offset: 0,
            error,
        },
    }
}
