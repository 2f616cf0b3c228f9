//! The master ↔ agent protocol over MQTT: topics and postcard-encoded messages.
//!
//! Every payload is an [`Envelope`] with the protocol version and the sending node's name.
//! postcard is not self-describing, so these are plain structs and externally tagged enums
//! only (no `skip_serializing_if`, `flatten`, untagged or internally tagged enums), and every
//! message has a round-trip test. A pod's desired spec travels as its Kubernetes JSON inside
//! the envelope: it is the API's own format, it evolves with the API, and the agent decodes
//! it with the same code as the master.
//!
//! Decoding checks the size before parsing and refuses other protocol versions.
//!
//! Every payload is authenticated end to end, so that the broker (embedded or not) is not
//! trusted: it travels in a [`Frame`], the envelope's bytes with a tag over the topic and
//! those bytes ([`authenticated_bytes`]). The master signs what it publishes with its wire
//! key (Ed25519; agents get the public half at join, over TLS); an agent tags what it
//! publishes with an HMAC keyed by its node token, which only it and the master know. The
//! cryptography is in `bramble_support::wire_auth`; this module only frames.

use serde::{Deserialize, Serialize};

/// The protocol version carried by every frame and envelope (2: authenticated frames; 3:
/// stamped envelopes, node secrets derived from node tokens; 4: desired pods carry the
/// ConfigMaps and Secrets they read; 5: a snapshot carries each one's bytes once).
pub const PROTOCOL_VERSION: u16 = 5;
/// The largest payload accepted on any topic (a desired snapshot of many pods is the largest).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// The most log bytes one [`LogReply`] carries: the message limit less room for the
/// envelope (version, node name, reply id, offsets, lengths), so that a full chunk is never
/// dropped as too large.
pub const MAX_LOG_CHUNK_BYTES: u64 = (MAX_MESSAGE_BYTES - (16 << 10)) as u64;
/// The root of every node topic.
pub const TOPIC_ROOT: &str = "bramble/v1/node";
/// Master → every agent and proxy: the cluster's network changes (routes, Services,
/// Endpoints) as revisioned events. Snapshots go to each node on its own
/// [`Channel::Network`] topic, when it asks with a hello.
pub const SERVICES_TOPIC: &str = "bramble/v1/services";

/// One of a node's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Agent → master: full status on every (re)connect.
    Hello,
    /// Agent → master: alive, with usage when it changed.
    Heartbeat,
    /// Agent → master: pod status changes.
    Status,
    /// Broker → master: the agent's Last Will, published on an unclean disconnect.
    Will,
    /// Master → agent: desired pods, as a snapshot or revisioned changes.
    Desired,
    /// Master → agent: requests (logs).
    Request,
    /// Agent → master: replies to requests.
    Reply,
    /// Master → agent: a snapshot of the cluster's network (events follow on
    /// [`SERVICES_TOPIC`]).
    Network,
}

impl Channel {
    const ALL: [Channel; 8] = [
        Channel::Hello,
        Channel::Heartbeat,
        Channel::Status,
        Channel::Will,
        Channel::Desired,
        Channel::Request,
        Channel::Reply,
        Channel::Network,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Channel::Hello => "hello",
            Channel::Heartbeat => "heartbeat",
            Channel::Status => "status",
            Channel::Will => "will",
            Channel::Desired => "desired",
            Channel::Request => "rpc/request",
            Channel::Reply => "rpc/reply",
            Channel::Network => "network",
        }
    }

    /// The topic of this channel for a node.
    pub fn topic(self, node: &str) -> String {
        format!("{TOPIC_ROOT}/{node}/{}", self.suffix())
    }

    /// The subscription filter for this channel across all nodes.
    pub fn filter_all(self) -> String {
        format!("{TOPIC_ROOT}/+/{}", self.suffix())
    }

    /// Splits a topic into its node and channel.
    pub fn parse(topic: &str) -> Option<(&str, Channel)> {
        let rest = topic.strip_prefix(TOPIC_ROOT)?.strip_prefix('/')?;
        let (node, suffix) = rest.split_once('/')?;
        if node.is_empty() || node.contains(['+', '#']) {
            return None;
        }
        Channel::ALL
            .into_iter()
            .find(|c| c.suffix() == suffix)
            .map(|c| (node, c))
    }
}

/// The MQTT user name (and client id prefix) reserved to the master's own client: no node
/// may connect as it.
pub const MASTER_USER: &str = "bramble-master";

/// Whether node `node` may publish on `topic`: only on its own agent → master channels
/// (its will is published by the broker, never by the node).
pub fn node_may_publish(node: &str, topic: &str) -> bool {
    matches!(
        Channel::parse(topic),
        Some((n, Channel::Hello | Channel::Heartbeat | Channel::Status | Channel::Reply)) if n == node
    )
}

/// Whether node `node` may subscribe to `filter`: its own master → agent channels and the
/// shared network stream, named exactly (no wildcards).
pub fn node_may_subscribe(node: &str, filter: &str) -> bool {
    filter == SERVICES_TOPIC
        || matches!(
            Channel::parse(filter),
            Some((n, Channel::Desired | Channel::Request | Channel::Network)) if n == node
        )
}

/// Every payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    /// The node the message is from or for.
    pub node: String,
    /// Freshness, inside the authenticated (and on a node's topics encrypted) bytes.
    pub stamp: Stamp,
    pub message: Message,
}

/// What makes a message fresh, so that a recorded one replayed through a broker is refused
/// (a board that a permissive broker lets read and publish anywhere cannot re-send another
/// board's heartbeats or an old desired snapshot, though it cannot forge them).
///
/// `session` is the agent process's random session (its hello's); both ends stamp a node's
/// messages with it: the agent what it sends, the master what it sends to that node (so an
/// agent acts only on what answers its own session). `seq` rises with every message from
/// the agent (one counter for all its channels; the master checks it rises per channel);
/// from the master it is 0 (the desired chain orders those). Zero everywhere: the shared
/// network stream, which is ordered by its revision chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub session: u64,
    pub seq: u64,
}

/// The messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    Heartbeat(Heartbeat),
    Status(StatusReport),
    Desired(Desired),
    LogRequest(LogRequest),
    LogReply(LogReply),
    /// The agent's Last Will: it vanished without a clean disconnect.
    Gone,
    /// The cluster's network: a snapshot (to one node) or one change (to all).
    Network(NetworkUpdate),
    /// Master → agent: open a stream to a pod (exec, port-forward) by connecting back to
    /// the master. Last, so that older agents' encodings are unchanged (they drop it as
    /// malformed, and the master's request times out).
    StreamOpen(StreamOpen),
    /// Agent → master, on the heartbeat channel: resource use of the node and its pods'
    /// containers (what `kubectl top` shows), every metrics interval.
    Metrics(MetricsReport),
    /// Agent → master: a heartbeat with the time the agent sent it (milliseconds since the
    /// Unix epoch), from which the master measures heartbeat lag (the
    /// `bramble_gateway_heartbeat_lag_seconds` histogram). The master takes it exactly as a
    /// [`Message::Heartbeat`], which agents before it send and which stays accepted.
    TimedHeartbeat(Heartbeat, u64),
}

/// Full status, sent on every (re)connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Changes when the agent process restarts.
    pub session: u64,
    pub facts: NodeFacts,
    /// The last desired revision the agent applied; the master answers with a snapshot.
    pub desired_revision: u64,
    /// The last network revision the agent applied, when it follows the network stream
    /// (the master answers with a network snapshot); None for agents that do not (hollow
    /// nodes).
    pub network_revision: Option<u64>,
    pub pods: Vec<PodReport>,
}

/// What the node is: reported at join and on every hello.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub hostname: String,
    /// The address other boards and the master reach it at.
    pub address: String,
    /// `arm64`, `arm`, `amd64` (Kubernetes' GOARCH names).
    pub architecture: String,
    pub operating_system: String,
    pub os_image: String,
    pub kernel_version: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// 1 or 2.
    pub cgroup_version: u8,
    pub allocatable_cpu_millis: u64,
    pub allocatable_memory_bytes: u64,
    pub max_pods: u32,
    pub labels: Vec<(String, String)>,
    pub agent_version: String,
}

/// Alive; `usage` only when it changed since the last heartbeat that carried it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub seq: u64,
    pub usage: Option<Usage>,
}

/// Resource use of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub memory_used_bytes: u64,
    pub pods: u32,
}

/// Pod status changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub pods: Vec<PodReport>,
}

/// A pod's observed state on the node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodReport {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed`.
    pub phase: String,
    pub reason: String,
    pub message: String,
    pub host_ip: String,
    pub pod_ip: String,
    /// Unix seconds; 0 when not started.
    pub start_time: i64,
    pub containers: Vec<ContainerReport>,
    /// The pod is fully stopped and cleaned up on the node (final for a terminating pod).
    pub removed: bool,
}

/// One container's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerReport {
    pub name: String,
    pub image: String,
    pub ready: bool,
    pub restart_count: u32,
    pub state: ContainerState,
    pub last_state: Option<ContainerState>,
}

/// Waiting, running or terminated, as in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: i64,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: String,
        started_at: i64,
        finished_at: i64,
    },
}

/// Master → agent: the node's desired pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    /// The store revision this message brings the agent to.
    pub revision: u64,
    /// The revision of the previous message sent to this node; an agent whose last applied
    /// revision differs has missed a message and asks for a snapshot.
    pub prev_revision: u64,
    pub change: DesiredChange,
}

/// A snapshot replaces everything; upserts and removals apply one change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DesiredChange {
    Snapshot(Vec<DesiredPod>),
    Upsert(DesiredPod),
    Remove { uid: String },
}

/// One pod the node should run: its API object as JSON, with the ConfigMaps and Secrets it
/// reads (those that exist; a missing one is absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredPod {
    pub uid: String,
    pub revision: u64,
    pub pod_json: Vec<u8>,
    pub config: Vec<ConfigData>,
}

/// A ConfigMap's or Secret's keys and bytes, sent only to a node that runs a pod reading
/// it, encrypted for that node. The agent keeps Secrets in memory and on tmpfs only.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigData {
    /// A Secret (true) or a ConfigMap (false).
    pub secret: bool,
    pub name: String,
    /// The object's resourceVersion.
    pub revision: u64,
    /// Empty when `repeated`.
    pub items: Vec<(String, Vec<u8>)>,
    /// The items are those of the same object (kind, name and revision) earlier in this
    /// message: a snapshot carries each object's bytes once, however many pods read it.
    pub repeated: bool,
}

/// Marks each ConfigMap or Secret after its first appearance in `pods` as `repeated`,
/// without its bytes (a snapshot of 100 pods reading one 1 MiB ConfigMap would otherwise
/// pass [`MAX_MESSAGE_BYTES`] 25 times over).
pub fn share_config(pods: &mut [DesiredPod]) {
    let mut seen = std::collections::HashSet::new();
    for c in pods.iter_mut().flat_map(|p| p.config.iter_mut()) {
        if !seen.insert((c.secret, c.name.clone(), c.revision)) {
            c.items = Vec::new();
            c.repeated = true;
        }
    }
}

impl std::fmt::Debug for ConfigData {
    // Never the bytes: a Secret's would end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigData")
            .field("secret", &self.secret)
            .field("name", &self.name)
            .field("revision", &self.revision)
            .field(
                "items",
                &self
                    .items
                    .iter()
                    .map(|(k, v)| format!("{k} ({} bytes)", v.len()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Master → agents and proxies: the cluster's network state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkUpdate {
    /// The store revision this message brings the receiver to.
    pub revision: u64,
    /// The revision of the previous event on [`SERVICES_TOPIC`]; a receiver whose last
    /// applied revision differs has missed one and asks for a snapshot.
    pub prev_revision: u64,
    pub change: NetworkChange,
}

/// A snapshot replaces everything; upserts and removals apply one change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NetworkChange {
    Snapshot(NetworkSnapshot),
    Upsert(NetObject),
    Remove(NetKey),
}

/// Everything a node needs to route pod traffic and program Services. A large snapshot
/// travels in parts (each well under [`MAX_MESSAGE_BYTES`]) with the same revision; the
/// receiver applies it once it has all of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkSnapshot {
    /// The pod network (`--cluster-cidr`), e.g. `10.42.0.0/16`.
    pub cluster_cidr: String,
    /// The Services' virtual addresses (`--service-cidr`).
    pub service_cidr: String,
    pub objects: Vec<NetObject>,
    /// This part's index, from 0.
    pub part: u32,
    /// How many parts the snapshot has (at least 1).
    pub parts: u32,
}

/// The most object bytes one snapshot part carries.
pub const SNAPSHOT_PART_BYTES: usize = 1 << 20;

/// One object of the network state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NetObject {
    /// A node's pod CIDR and the address it is reached at (host-gw routing).
    Route(NodeRoute),
    /// A Service, as its API JSON.
    Service(ObjectJson),
    /// A Service's Endpoints, as their API JSON.
    Endpoints(ObjectJson),
}

impl NetObject {
    /// The key a removal names.
    pub fn key(&self) -> NetKey {
        match self {
            NetObject::Route(r) => NetKey::Route(r.node.clone()),
            NetObject::Service(o) => NetKey::Service(o.namespace.clone(), o.name.clone()),
            NetObject::Endpoints(o) => NetKey::Endpoints(o.namespace.clone(), o.name.clone()),
        }
    }
}

/// What a removal removes: a node's route, or a Service's or Endpoints' namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NetKey {
    Route(String),
    Service(String, String),
    Endpoints(String, String),
}

/// Where a node's pods are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRoute {
    pub node: String,
    /// The node's InternalIP.
    pub address: String,
    /// Its pod CIDR (`spec.podCIDR`).
    pub pod_cidr: String,
}

/// An API object as JSON, with its namespace and name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectJson {
    pub namespace: String,
    pub name: String,
    pub json: Vec<u8>,
}

/// Master → agent: read a container's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRequest {
    pub id: u64,
    pub namespace: String,
    pub pod: String,
    /// Empty: the pod's only container.
    pub container: String,
    /// Last N lines; None for the whole file (bounded by `limit_bytes`).
    pub tail_lines: Option<u64>,
    /// The previous (terminated) instance of the container.
    pub previous: bool,
    /// Continue from this byte offset of the log stream (for follow).
    pub offset: Option<u64>,
    /// At most this many bytes (agents read at most [`MAX_LOG_CHUNK_BYTES`]).
    pub limit_bytes: u64,
}

/// Agent → master: log bytes, or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogReply {
    pub id: u64,
    pub data: Vec<u8>,
    /// Where a follow request continues.
    pub next_offset: u64,
    /// Empty on success.
    pub error: String,
}

/// Resource use over the last `window_ms`: CPU as the average over the window, memory as
/// the working set at its end (Kubernetes' metrics API's meaning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    pub window_ms: u64,
    pub node: ResourceUse,
    pub pods: Vec<PodUse>,
}

/// CPU in nanocores, memory in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUse {
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
}

/// A pod's containers' use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodUse {
    pub namespace: String,
    pub name: String,
    pub containers: Vec<(String, ResourceUse)>,
}

/// Master → agent: connect back to the master's API at `/bramble/v1/streams/{id}` (with the
/// node's token, upgrading to `bramble_support::stream`) and run the stream there. The id is
/// random and good once, for this node only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamOpen {
    pub id: String,
    pub namespace: String,
    pub pod: String,
    pub kind: StreamKind,
}

/// What a stream runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamKind {
    /// A command in a container's namespaces, with the container's environment.
    Exec {
        container: String,
        command: Vec<String>,
        stdin: bool,
        tty: bool,
    },
    /// A TCP connection to the pod's port, made inside the pod's network namespace.
    PortForward { port: u16 },
    /// The running container's output from now on, until it ends (`kubectl attach`).
    /// Containers have no stdin to attach to.
    Attach { container: String },
}

/// Why a payload was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("payload of {0} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("protocol version {0} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version(u16),
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
}

/// What travels on every topic: an encoded [`Envelope`] and its tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub version: u16,
    /// The envelope, postcard-encoded.
    pub body: Vec<u8>,
    /// The signature or MAC over [`authenticated_bytes`]`(topic, body)`.
    pub tag: Vec<u8>,
}

/// What a frame's tag covers: a context string, the topic and the body, so that a tag is
/// good for one topic only.
pub fn authenticated_bytes(topic: &str, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + topic.len() + body.len());
    b.extend_from_slice(b"bramble wire v2\0");
    b.extend_from_slice(&(topic.len() as u32).to_be_bytes());
    b.extend_from_slice(topic.as_bytes());
    b.extend_from_slice(body);
    b
}

/// Frames an encoded envelope with its tag.
pub fn frame(body: Vec<u8>, tag: Vec<u8>) -> Vec<u8> {
    let f = Frame {
        version: PROTOCOL_VERSION,
        body,
        tag,
    };
    postcard::to_stdvec(&f).unwrap_or_default()
}

/// Splits a payload into its frame: size first, then the version, then the rest. The tag
/// is not checked here.
pub fn unframe(payload: &[u8]) -> Result<Frame, WireError> {
    take_versioned(payload)
}

/// Decodes a postcard struct whose first field is the protocol version: the size first,
/// then the version (so that a newer peer's message is reported as a version mismatch
/// rather than as garbage), then the rest, which must use every byte.
fn take_versioned<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(payload.len()));
    }
    let (version, _) = postcard::take_from_bytes::<u16>(payload)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version(version));
    }
    let (value, rest) =
        postcard::take_from_bytes::<T>(payload).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

/// Encodes a message from or for `node`.
pub fn encode(node: &str, message: Message) -> Vec<u8> {
    encode_stamped(node, Stamp::default(), message)
}

/// Encodes a message from or for `node` with its stamp.
pub fn encode_stamped(node: &str, stamp: Stamp, message: Message) -> Vec<u8> {
    let env = Envelope {
        version: PROTOCOL_VERSION,
        node: node.to_string(),
        stamp,
        message,
    };
    // Plain structs of strings, integers and vectors always encode.
    postcard::to_stdvec(&env).unwrap_or_default()
}

/// Decodes an envelope: size first, then the version, then the rest.
pub fn decode(payload: &[u8]) -> Result<Envelope, WireError> {
    take_versioned(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_confined_to_its_own_topics() {
        let me = "pi1";
        for c in [
            Channel::Hello,
            Channel::Heartbeat,
            Channel::Status,
            Channel::Reply,
        ] {
            assert!(node_may_publish(me, &c.topic(me)), "{c:?}");
            assert!(
                !node_may_publish(me, &c.topic("pi2")),
                "{c:?} of another node"
            );
            assert!(
                !node_may_subscribe(me, &c.topic(me)),
                "{c:?} is not for the node to read"
            );
        }
        for c in [
            Channel::Desired,
            Channel::Request,
            Channel::Network,
            Channel::Will,
        ] {
            assert!(
                !node_may_publish(me, &c.topic(me)),
                "{c:?} comes from the master or broker"
            );
        }
        for c in [Channel::Desired, Channel::Request, Channel::Network] {
            assert!(node_may_subscribe(me, &c.topic(me)), "{c:?}");
            assert!(
                !node_may_subscribe(me, &c.topic("pi2")),
                "{c:?} of another node"
            );
        }
        assert!(node_may_subscribe(me, SERVICES_TOPIC));
        assert!(!node_may_publish(me, SERVICES_TOPIC));
        for f in [
            "#",
            "bramble/#",
            "bramble/v1/node/+/desired",
            "bramble/v1/node/pi1/#",
            "bramble/v1/node/pi1/+",
            "$SYS/#",
        ] {
            assert!(!node_may_subscribe(me, f), "{f}");
            assert!(!node_may_publish(me, f), "{f}");
        }
    }

    fn report() -> PodReport {
        PodReport {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u-1".into(),
            phase: "Running".into(),
            reason: String::new(),
            message: String::new(),
            host_ip: "192.0.2.10".into(),
            pod_ip: String::new(),
            start_time: 1_700_000_000,
            containers: vec![ContainerReport {
                name: "main".into(),
                image: "busybox".into(),
                ready: true,
                restart_count: 3,
                state: ContainerState::Running {
                    started_at: 1_700_000_100,
                },
                last_state: Some(ContainerState::Terminated {
                    exit_code: 137,
                    reason: "OOMKilled".into(),
                    message: String::new(),
                    started_at: 1,
                    finished_at: 2,
                }),
            }],
            removed: false,
        }
    }

    fn every_message() -> Vec<Message> {
        let pod = DesiredPod {
            uid: "u-1".into(),
            revision: 7,
            pod_json: br#"{"kind":"Pod"}"#.to_vec(),
            config: vec![ConfigData {
                secret: true,
                name: "db".into(),
                revision: 3,
                items: vec![("password".into(), b"s3cr3t".to_vec())],
                repeated: false,
            }],
        };
        vec![
            Message::Hello(Hello {
                session: 42,
                facts: NodeFacts {
                    hostname: "pi1".into(),
                    architecture: "arm64".into(),
                    cpus: 4,
                    memory_bytes: 4 << 30,
                    cgroup_version: 2,
                    labels: vec![("kubernetes.io/arch".into(), "arm64".into())],
                    ..Default::default()
                },
                desired_revision: 5,
                network_revision: Some(8),
                pods: vec![report()],
            }),
            Message::Heartbeat(Heartbeat {
                seq: 1,
                usage: None,
            }),
            Message::Heartbeat(Heartbeat {
                seq: 2,
                usage: Some(Usage {
                    memory_used_bytes: 1 << 20,
                    pods: 3,
                }),
            }),
            Message::Status(StatusReport {
                pods: vec![
                    report(),
                    PodReport {
                        removed: true,
                        ..report()
                    },
                ],
            }),
            Message::Desired(Desired {
                revision: 9,
                prev_revision: 7,
                change: DesiredChange::Snapshot(vec![pod.clone()]),
            }),
            Message::Desired(Desired {
                revision: 10,
                prev_revision: 9,
                change: DesiredChange::Upsert(pod),
            }),
            Message::Desired(Desired {
                revision: 11,
                prev_revision: 10,
                change: DesiredChange::Remove { uid: "u-1".into() },
            }),
            Message::LogRequest(LogRequest {
                id: 1,
                namespace: "default".into(),
                pod: "web".into(),
                container: String::new(),
                tail_lines: Some(10),
                previous: false,
                offset: None,
                limit_bytes: 1 << 20,
            }),
            Message::LogReply(LogReply {
                id: 1,
                data: b"hello\n".to_vec(),
                next_offset: 6,
                error: String::new(),
            }),
            Message::Gone,
            Message::Network(NetworkUpdate {
                revision: 12,
                prev_revision: 0,
                change: NetworkChange::Snapshot(NetworkSnapshot {
                    cluster_cidr: "10.42.0.0/16".into(),
                    service_cidr: "10.43.0.0/16".into(),
                    objects: vec![
                        NetObject::Route(NodeRoute {
                            node: "pi1".into(),
                            address: "192.0.2.10".into(),
                            pod_cidr: "10.42.1.0/24".into(),
                        }),
                        NetObject::Service(ObjectJson {
                            namespace: "default".into(),
                            name: "web".into(),
                            json: br#"{"kind":"Service"}"#.to_vec(),
                        }),
                        NetObject::Endpoints(ObjectJson {
                            namespace: "default".into(),
                            name: "web".into(),
                            json: br#"{"kind":"Endpoints"}"#.to_vec(),
                        }),
                    ],
                    part: 0,
                    parts: 1,
                }),
            }),
            Message::Network(NetworkUpdate {
                revision: 13,
                prev_revision: 12,
                change: NetworkChange::Remove(NetKey::Endpoints("default".into(), "web".into())),
            }),
            Message::Network(NetworkUpdate {
                revision: 13,
                prev_revision: 12,
                change: NetworkChange::Upsert(NetObject::Route(NodeRoute {
                    node: "pi3".into(),
                    address: "192.0.2.12".into(),
                    pod_cidr: "10.42.3.0/24".into(),
                })),
            }),
            Message::Network(NetworkUpdate {
                revision: 14,
                prev_revision: 13,
                change: NetworkChange::Remove(NetKey::Route("pi2".into())),
            }),
            Message::StreamOpen(StreamOpen {
                id: "00ff".into(),
                namespace: "default".into(),
                pod: "web".into(),
                kind: StreamKind::Exec {
                    container: "main".into(),
                    command: vec!["sh".into(), "-c".into(), "echo hi".into()],
                    stdin: true,
                    tty: false,
                },
            }),
            Message::Metrics(MetricsReport {
                window_ms: 15_000,
                node: ResourceUse {
                    cpu_nanocores: 250_000_000,
                    memory_bytes: 1 << 30,
                },
                pods: vec![PodUse {
                    namespace: "default".into(),
                    name: "web".into(),
                    containers: vec![(
                        "main".into(),
                        ResourceUse {
                            cpu_nanocores: 1_000_000,
                            memory_bytes: 4 << 20,
                        },
                    )],
                }],
            }),
            Message::StreamOpen(StreamOpen {
                id: "01".into(),
                namespace: "default".into(),
                pod: "web".into(),
                kind: StreamKind::PortForward { port: 8080 },
            }),
            Message::StreamOpen(StreamOpen {
                id: "02".into(),
                namespace: "default".into(),
                pod: "web".into(),
                kind: StreamKind::Attach {
                    container: "main".into(),
                },
            }),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in every_message() {
            let bytes = encode("pi1", m.clone());
            let env = decode(&bytes).unwrap_or_else(|e| panic!("{m:?}: {e}"));
            assert_eq!(env.node, "pi1");
            assert_eq!(env.version, PROTOCOL_VERSION);
            assert_eq!(env.message, m);
        }
    }

    #[test]
    fn an_idle_heartbeat_is_tiny() {
        let bytes = encode(
            "pi-rack1-node07",
            Message::Heartbeat(Heartbeat {
                seq: 123_456,
                usage: None,
            }),
        );
        assert!(bytes.len() <= 24, "{} bytes", bytes.len());
    }

    #[test]
    fn a_full_log_chunk_fits_in_one_message() {
        // The longest node name, the largest ids and offsets, and a full chunk.
        let node = "n".repeat(253);
        let reply = LogReply {
            id: u64::MAX,
            data: vec![b'x'; MAX_LOG_CHUNK_BYTES as usize],
            next_offset: u64::MAX,
            error: String::new(),
        };
        let bytes = encode(&node, Message::LogReply(reply.clone()));
        assert!(bytes.len() <= MAX_MESSAGE_BYTES, "{} bytes", bytes.len());
        let env = decode(&bytes).expect("a full chunk decodes");
        assert_eq!(env.message, Message::LogReply(reply));
        // The old cap (the message limit itself) did not fit: that chunk was dropped.
        let over = encode(
            &node,
            Message::LogReply(LogReply {
                id: 1,
                data: vec![b'x'; MAX_MESSAGE_BYTES],
                next_offset: 0,
                error: String::new(),
            }),
        );
        assert!(matches!(decode(&over), Err(WireError::TooLarge(_))));
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        assert!(matches!(
            decode(&vec![0u8; MAX_MESSAGE_BYTES + 1]),
            Err(WireError::TooLarge(_))
        ));
        assert!(matches!(decode(&[]), Err(WireError::Malformed(_))));
        let mut v = encode("n", Message::Gone);
        v[0] = 9;
        assert!(matches!(decode(&v), Err(WireError::Version(9))));
        let good = encode(
            "n",
            Message::Status(StatusReport {
                pods: vec![report()],
            }),
        );
        for cut in 1..good.len() {
            assert!(decode(&good[..cut]).is_err(), "truncated at {cut} decoded");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        // Pseudo-random garbage of many lengths never panics.
        let mut x: u32 = 0x1234_5678;
        for len in 0..512 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = decode(&junk);
        }
    }

    #[test]
    fn topics_parse_back() {
        for c in Channel::ALL {
            assert_eq!(Channel::parse(&c.topic("pi-1")), Some(("pi-1", c)));
        }
        assert_eq!(Channel::parse("bramble/v1/node/+/hello"), None);
        assert_eq!(Channel::parse("bramble/v1/node/pi/unknown"), None);
        assert_eq!(Channel::parse("other/topic"), None);
        assert_eq!(Channel::Hello.filter_all(), "bramble/v1/node/+/hello");
    }

    #[test]
    fn a_snapshot_of_many_readers_of_one_big_configmap_fits_a_message() {
        let big = ConfigData {
            secret: false,
            name: "big".into(),
            revision: 9,
            items: vec![("k".into(), vec![b'x'; 1 << 20])],
            repeated: false,
        };
        let mut pods: Vec<DesiredPod> = (0..100)
            .map(|i| DesiredPod {
                uid: format!("u{i}"),
                revision: 1,
                pod_json: b"{}".to_vec(),
                config: vec![big.clone()],
            })
            .collect();
        share_config(&mut pods);
        assert!(!pods[0].config[0].repeated && pods[0].config[0].items.len() == 1);
        assert!(
            pods[1..]
                .iter()
                .all(|p| p.config[0].repeated && p.config[0].items.is_empty())
        );
        let bytes = encode(
            "pi1",
            Message::Desired(Desired {
                revision: 2,
                prev_revision: 0,
                change: DesiredChange::Snapshot(pods),
            }),
        );
        assert!(bytes.len() < MAX_MESSAGE_BYTES, "{} bytes", bytes.len());
    }
}
