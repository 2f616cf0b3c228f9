//! The agent gateway: the master's side of the MQTT protocol.
//!
//! One task owns all of its state. It consumes hellos, heartbeats, status reports, last
//! wills and RPC replies; keeps each node's last-seen time and usage in memory (heartbeats
//! are not writes); persists only transitions (Ready/NotReady, pod status changes); and
//! publishes each node's desired pods as revisioned changes, with a snapshot on every
//! (re)contact or detected gap. A malformed or hostile payload is counted, logged at most
//! once per interval per reason, and dropped.
//!
//! The protocol's decisions are a pure state machine ([`protocol`]); this file is its I/O
//! shell: the MQTT pump, decoding, the store, the status writer and the log RPC.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_api::pod::Pod;
use bramble_api::wire::{self, Channel, LogReply, LogRequest, Message, PodReport, StreamOpen};
use bramble_api::{Kind, Object, Selector};
use bramble_support::mqtt;
use bramble_support::wire_auth::{MasterKey, open_from_node};
use bramble_support::{Coalescing, LogLimiter};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{DeleteRequest, Entry, Op, Store, StoreError, Subresource, WatchFilter};

mod protocol;

pub use protocol::{Action, Protocol, ReadyUpdate, Refused};

/// How to reach the broker, and the node-lost timeout.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub host: String,
    pub port: u16,
    /// MQTT credentials of the master's client (None for an anonymous external broker).
    pub credentials: Option<(String, String)>,
    /// The CA (PEM) of an external broker that speaks TLS.
    pub tls_ca: Option<String>,
    pub node_lost_after: Duration,
    /// The CIDRs the network stream tells every node.
    pub cidrs: crate::netstream::Cidrs,
    /// Signs everything the master publishes.
    pub wire_key: Arc<MasterKey>,
    /// The nodes' tokens, which key what they publish.
    pub enrollment: Arc<crate::enrollment::Enrollment>,
}

/// Requests to the gateway from the API server.
enum Command {
    Logs {
        node: String,
        request: LogRequest,
        reply: oneshot::Sender<LogReply>,
    },
    /// Ask a node's agent to open a stream back (exec, port-forward).
    Stream { node: String, open: StreamOpen },
}

/// A cheap handle for the API server.
#[derive(Clone)]
pub struct GatewayHandle {
    tx: mpsc::Sender<Command>,
    /// The nodes' latest resource use, for the metrics API.
    pub usage: Arc<crate::usage::Usage>,
}

/// Why a log request failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("node {0:?} did not answer in time; is its agent running?")]
    Timeout(String),
    #[error("the gateway is shutting down")]
    Closed,
}

impl GatewayHandle {
    /// Asks a node's agent to connect back for a stream (the caller waits for it).
    pub async fn open_stream(&self, node: &str, open: StreamOpen) -> Result<(), GatewayError> {
        self.tx
            .send(Command::Stream {
                node: node.to_string(),
                open,
            })
            .await
            .map_err(|_| GatewayError::Closed)
    }

    /// Asks a node's agent for a container log.
    pub async fn logs(
        &self,
        node: &str,
        request: LogRequest,
        timeout: Duration,
    ) -> Result<LogReply, GatewayError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Logs {
                node: node.to_string(),
                request,
                reply: tx,
            })
            .await
            .map_err(|_| GatewayError::Closed)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(GatewayError::Closed),
            Err(_) => Err(GatewayError::Timeout(node.to_string())),
        }
    }
}

/// Starts the gateway: an MQTT client and the task that owns the protocol state.
pub fn start(
    store: Store,
    metrics: Arc<Metrics>,
    config: GatewayConfig,
    shutdown: CancellationToken,
) -> (GatewayHandle, tokio::task::JoinHandle<()>) {
    let mut opts = mqtt::options(
        &format!("{}-{}", crate::broker::MASTER_USER, std::process::id()),
        &config.host,
        config.port,
    );
    if let Some((u, p)) = &config.credentials {
        opts.set_credentials(u, p);
    }
    if let Some(tls) = config
        .tls_ca
        .as_deref()
        .and_then(|pem| bramble_support::tls::client_config(pem).ok())
    {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 4096);
    mqtt::network(&mut eventloop, None);

    let (inbox_tx, inbox_rx) = mpsc::channel::<mqtt::Incoming>(8192);
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    // The gateway's helpers stop with it, whether the master shuts down or the loop ends.
    let helpers = shutdown.child_token();
    let pump = tokio::spawn(mqtt::pump(
        eventloop,
        inbox_tx,
        mqtt::Reconnect {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
            what: "gateway MQTT connection",
        },
        helpers.clone(),
    ));
    let store_for_events = store.clone();
    let snapshots = Arc::new(Coalescing::default());
    let net_task = tokio::spawn(crate::netstream::run(
        store.clone(),
        client.clone(),
        config.cidrs.clone(),
        config.wire_key.clone(),
        config.enrollment.clone(),
        snapshots.clone(),
        helpers.clone(),
    ));
    let ready = Arc::new(Coalescing::default());
    let writer = tokio::spawn(write_ready_conditions(
        store.clone(),
        ready.clone(),
        helpers.clone(),
    ));
    let usage = Arc::new(crate::usage::Usage::default());
    let gw = Gateway {
        protocol: Protocol::new(config.node_lost_after),
        snapshots,
        ready,
        store,
        metrics,
        client,
        pending: HashMap::new(),
        usage: usage.clone(),
        next_rpc: 1,
        drop_log: LogLimiter::new(Duration::from_secs(10)),
        wire_key: config.wire_key.clone(),
        enrollment: config.enrollment.clone(),
        events: crate::events::EventRecorder::new(store_for_events, "node-agent"),
    };
    let task = tokio::spawn(async move {
        gw.run(inbox_rx, cmd_rx, shutdown).await;
        helpers.cancel();
        for (name, task) in [
            ("pump", pump),
            ("network stream", net_task),
            ("status writer", writer),
        ] {
            if let Err(e) = task.await {
                tracing::error!(task = name, error = %e, "a gateway task failed");
            }
        }
    });
    (GatewayHandle { tx: cmd_tx, usage }, task)
}

/// The histogram of heartbeat lag: an agent's send to the gateway's processing.
pub const HEARTBEAT_LAG: &str = "bramble_gateway_heartbeat_lag_seconds";

fn now_secs() -> i64 {
    bramble_api::time::now_secs()
}

/// Persists Ready transitions in batches (the latest per node wins: the queue holds at most
/// one update per node), many at once so that the store commits them in groups.
async fn write_ready_conditions(
    store: Store,
    queue: Arc<Coalescing<String, ReadyUpdate>>,
    shutdown: CancellationToken,
) {
    crate::store::batch::write_in_batches(shutdown, (queue, 1024), |(_, u)| write_ready(&store, u))
        .await;
}

/// Writes a node's Ready condition (and its facts) if the stored status differs.
async fn write_ready(store: &Store, u: ReadyUpdate) {
    let Some(entry) = store.get(Kind::Node, "", &u.node) else {
        return;
    };
    let Ok(Object::Node(mut n)) = entry.object() else {
        return;
    };
    let old = n.status.clone().unwrap_or_default();
    let now = now_secs();
    let condition = (u.ready, u.reason.as_str(), u.message.as_str());
    let status = match &u.facts {
        Some(f) => bramble_api::report::node_status(f, condition, Some(&old), now),
        None => {
            let mut s = old.clone();
            s.conditions.retain(|c| c.type_ != "Ready");
            s.conditions.push(bramble_api::report::ready_condition(
                u.ready,
                &u.reason,
                &u.message,
                Some(&old),
                now,
            ));
            s
        }
    };
    if status == old {
        return;
    }
    if !u.ready {
        tracing::warn!(
            node = u.node,
            reason = u.reason,
            message = u.message,
            "node is NotReady"
        );
    } else {
        tracing::info!(node = u.node, "node is Ready");
    }
    n.status = Some(status);
    n.metadata.resource_version.clear();
    if let Err(e) = store
        .write(Op::Update(Object::Node(n), Subresource::Status))
        .await
    {
        tracing::error!(node = u.node, error = %e, "cannot persist the node's status");
    }
}

struct Gateway {
    /// The protocol's state: what the loop below feeds and whose actions it carries out.
    protocol: Protocol,
    /// Nodes that asked for a network snapshot (with the stamp it must carry), for the
    /// network stream.
    snapshots: Arc<Coalescing<String, wire::Stamp>>,
    /// Ready transitions, persisted by the status writer.
    ready: Arc<Coalescing<String, ReadyUpdate>>,
    store: Store,
    metrics: Arc<Metrics>,
    client: AsyncClient,
    /// Log requests waiting for their reply, by (node asked, request id).
    pending: HashMap<(String, u64), oneshot::Sender<LogReply>>,
    usage: Arc<crate::usage::Usage>,
    wire_key: Arc<MasterKey>,
    enrollment: Arc<crate::enrollment::Enrollment>,
    next_rpc: u64,
    /// Drops are logged at most once per interval per reason.
    drop_log: LogLimiter,
    events: crate::events::EventRecorder,
}

fn pod_of(entry: &Entry) -> Option<Pod> {
    match entry.object() {
        Ok(Object::Pod(p)) => Some(p),
        _ => None,
    }
}

impl Gateway {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<mqtt::Incoming>,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        let mut watch = self.relist();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(incoming) = inbox.recv() => match incoming {
                    mqtt::Incoming::Connected => self.subscribe(),
                    mqtt::Incoming::Publish(topic, payload) => self.on_publish(&topic, &payload).await,
                },
                Some(cmd) = commands.recv() => self.on_command(cmd),
                change = async {
                    match watch.as_mut() {
                        Some(w) => w.next().await,
                        None => std::future::pending().await,
                    }
                } => match change {
                    Ok(c) => {
                        for a in self.protocol.on_change(&c) {
                            self.execute(a).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "pod watch ended; re-listing and resending snapshots");
                        watch = self.relist();
                        for a in self.protocol.resync_all() {
                            self.execute(a).await;
                        }
                    }
                },
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    /// On every (re)connection: the agents' topics, every node at once.
    fn subscribe(&self) {
        tracing::info!("gateway connected to the MQTT broker");
        for (c, qos) in [
            (Channel::Hello, QoS::AtLeastOnce),
            (Channel::Heartbeat, QoS::AtMostOnce),
            (Channel::Status, QoS::AtLeastOnce),
            (Channel::Will, QoS::AtLeastOnce),
            (Channel::Reply, QoS::AtLeastOnce),
        ] {
            if let Err(e) = self.client.try_subscribe(c.filter_all(), qos) {
                tracing::error!(error = %e, "cannot subscribe");
            }
        }
    }

    /// Rebuilds the index of pods, ConfigMaps and Secrets from lists and watches them from
    /// the oldest list's revision (changes the lists already hold are applied again, which
    /// changes nothing).
    fn relist(&mut self) -> Option<crate::store::Watch> {
        let mut rev = u64::MAX;
        let mut items = Vec::new();
        for kind in [Kind::Pod, Kind::ConfigMap, Kind::Secret] {
            let (r, mut list) = self.store.list(kind, None, &Selector::everything());
            rev = rev.min(r);
            items.append(&mut list);
        }
        self.protocol.relisted(rev, items);
        let filter = WatchFilter {
            kind: Kind::Pod,
            also: vec![Kind::ConfigMap, Kind::Secret],
            namespace: None,
            selector: Selector::everything(),
        };
        match self.store.watch(filter, Some(rev)) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch pods");
                None
            }
        }
    }

    /// Carries out what the protocol decided.
    async fn execute(&mut self, action: Action) {
        match action {
            Action::Publish {
                node,
                channel,
                message,
            } => self.publish(&node, channel, message),
            // The loop never waits for the write: a storm of hellos must not hold back the
            // heartbeats queued behind them.
            Action::Ready(u) => self.ready.push(u.node.clone(), u),
            Action::NetworkSnapshot(node, stamp) => self.snapshots.push(node, stamp),
            Action::Reports { node, reports } => self.apply_reports(&node, &reports).await,
            Action::LogReply { node, reply } => {
                if let Some(tx) = self.pending.remove(&(node, reply.id)) {
                    let _ = tx.send(reply);
                }
            }
            Action::Metrics { node, report } => self.usage.record(&node, report),
        }
    }

    fn publish(&mut self, node: &str, channel: Channel, msg: Message) {
        let topic = channel.topic(node);
        // Encrypted for the node: without its credential (revoked, deleted) nothing is sent.
        let Some(secret) = self.enrollment.secret(node) else {
            return self.drop_msg("wire_send_no_credential", node);
        };
        let stamp = self.protocol.stamp(node);
        let payload = self.wire_key.seal_for(&topic, node, &secret, stamp, msg);
        if let Err(e) = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            // The agent notices the gap by revision and asks again with a hello.
            self.metrics.count("wire_send_failed");
            self.log_drop("send_failed", &format!("cannot publish to {node}: {e}"));
        }
    }

    fn log_drop(&mut self, reason: &'static str, detail: &str) {
        if self.drop_log.due(reason, Instant::now()) {
            tracing::warn!(
                reason,
                detail,
                "dropped an MQTT message (logged once per 10s per reason)"
            );
        }
    }

    fn drop_msg(&mut self, reason: &'static str, detail: &str) {
        self.metrics.count(reason);
        self.log_drop(reason, detail);
    }

    async fn on_publish(&mut self, topic: &str, payload: &[u8]) {
        let Some((node, channel)) = Channel::parse(topic) else {
            return self.drop_msg("wire_bad_topic", topic);
        };
        let node = node.to_string();
        // Only the node itself knows its token: a message tagged with it is from that node,
        // whatever the broker let through.
        let Some(secret) = self.enrollment.secret(&node) else {
            return self.drop_msg(
                "wire_unknown_node",
                &format!("{topic}: no credential for {node:?}; the agent must join first"),
            );
        };
        let env = match open_from_node(&secret, topic, payload) {
            Ok(env) => env,
            Err(e) => {
                let reason = match e {
                    wire::WireError::TooLarge(_) => "wire_too_large",
                    wire::WireError::Version(_) => "wire_bad_version",
                    wire::WireError::Malformed(_) => "wire_malformed",
                    wire::WireError::Unauthenticated(_) => "wire_unauthenticated",
                };
                return self.drop_msg(reason, &format!("{topic}: {e}"));
            }
        };
        if env.node != node {
            return self.drop_msg(
                "wire_node_mismatch",
                &format!("{topic}: envelope names {:?}", env.node),
            );
        }
        if self.store.get(Kind::Node, "", &node).is_none() {
            return self.drop_msg(
                "wire_unknown_node",
                &format!("{topic}: no Node {node:?}; the agent must join first"),
            );
        }
        let now = Instant::now();
        let sent_ms = match &env.message {
            Message::TimedHeartbeat(_, sent) => Some(*sent),
            _ => None,
        };
        match self
            .protocol
            .on_message(&node, channel, env.stamp, env.message, now)
        {
            Ok(actions) => {
                if let Some(sent) = sent_ms {
                    // From the agent's send to here, on the board's clock and ours (NTP keeps
                    // them within milliseconds; a board ahead of us counts as no lag).
                    let now_ms = u64::try_from(bramble_api::time::now_millis()).unwrap_or(0);
                    let lag_ms = now_ms.saturating_sub(sent);
                    self.metrics
                        .observe_seconds(HEARTBEAT_LAG, lag_ms as f64 / 1000.0);
                }
                for a in actions {
                    self.execute(a).await;
                }
            }
            Err(r) => {
                self.drop_msg(r.reason, &format!("{topic}: {}", r.detail));
                if r.reason == "wire_stale_session"
                    && let Some(a) = self.protocol.nudge(&node, now)
                {
                    // The agent sees a snapshot for another session and says hello again.
                    self.execute(a).await;
                }
            }
        }
    }

    async fn apply_reports(&mut self, node: &str, reports: &[PodReport]) {
        for r in reports {
            let Some(entry) = self.store.get(Kind::Pod, &r.namespace, &r.name) else {
                continue;
            };
            let Some(mut pod) = pod_of(&entry) else {
                continue;
            };
            if pod.metadata.uid != r.uid || pod.spec.node_name != node {
                // A report about another incarnation, or from a node the pod is not bound to.
                self.drop_msg(
                    "wire_stale_report",
                    &format!("{node}: {}/{}", r.namespace, r.name),
                );
                continue;
            }
            if r.removed {
                if pod.metadata.deletion_timestamp.is_some() {
                    let req = DeleteRequest {
                        kind: Kind::Pod,
                        namespace: r.namespace.clone(),
                        name: r.name.clone(),
                        grace_seconds: Some(0),
                        resource_version: None,
                        orphan: false,
                    };
                    match self.store.write(Op::Delete(req)).await {
                        Ok(_) | Err(StoreError::NotFound { .. }) => {}
                        Err(e) => tracing::error!(error = %e, "cannot finish a pod's deletion"),
                    }
                }
                continue;
            }
            let old = pod.status.clone();
            let status = bramble_api::report::pod_status(r, &pod.spec, old.as_ref(), now_secs());
            if old.as_ref() == Some(&status) {
                continue;
            }
            // A container entering CrashLoopBackOff is worth an Event, as the kubelet's BackOff.
            let waiting = |s: Option<&bramble_api::pod::PodStatus>, name: &str| {
                s.and_then(|s| s.container_statuses.iter().find(|c| c.name == name))
                    .and_then(|c| c.state.as_ref()?.waiting.as_ref().map(|w| w.reason.clone()))
            };
            for c in &status.container_statuses {
                let now_waiting = waiting(Some(&status), &c.name);
                if now_waiting.as_deref() == Some("CrashLoopBackOff")
                    && waiting(old.as_ref(), &c.name) != now_waiting
                {
                    let msg = format!(
                        "Back-off restarting failed container {} in pod {}",
                        c.name, pod.metadata.name
                    );
                    self.events
                        .record(Object::Pod(pod.clone()), "Warning", "BackOff", &msg)
                        .await;
                }
            }
            pod.status = Some(status);
            pod.metadata.resource_version.clear();
            if let Err(e) = self
                .store
                .write(Op::Update(Object::Pod(pod), Subresource::Status))
                .await
            {
                tracing::warn!(error = %e, pod = %r.name, "cannot persist a pod's status");
            }
        }
    }

    async fn on_tick(&mut self) {
        for a in self.protocol.on_tick(Instant::now()) {
            self.execute(a).await;
        }
        self.pending.retain(|_, tx| !tx.is_closed());
        let ready = self.protocol.ready_count();
        self.metrics.set_gauge("nodes_ready", ready as i64);
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Logs {
                node,
                mut request,
                reply,
            } => {
                let id = self.next_rpc;
                self.next_rpc += 1;
                request.id = id;
                self.pending.insert((node.clone(), id), reply);
                self.publish(&node, Channel::Request, Message::LogRequest(request));
            }
            Command::Stream { node, open } => {
                self.publish(&node, Channel::Request, Message::StreamOpen(open));
            }
        }
    }
}
