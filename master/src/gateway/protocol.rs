//! The master's end of the agent protocol as a pure state machine: the node liveness table,
//! the per-node desired-state revision chain and the pod index it is built from. Inputs are
//! decoded messages, pod changes and ticks, each with the time; outputs are [`Action`]s for
//! the gateway's I/O shell to carry out (publish, persist a Ready condition, apply status
//! reports, ...). No I/O here, so every transition has a unit test.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_api::pod::Pod;
use bramble_api::wire::{
    Channel, ConfigData, Desired, DesiredChange, DesiredPod, LogReply, Message, NodeFacts,
    PodReport, Stamp, Usage,
};
use bramble_api::{Kind, Object};

use crate::store::{Change, Entry, EventType};

/// What the shell does for the protocol.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Publish `message` on the node's `channel` topic.
    Publish {
        node: String,
        channel: Channel,
        message: Message,
    },
    /// Persist the node's Ready condition (and its facts, when known).
    Ready(ReadyUpdate),
    /// Send the node the network snapshot it asked for in its hello (stamped for it).
    NetworkSnapshot(String, Stamp),
    /// Apply the node's pod status reports to the store.
    Reports {
        node: String,
        reports: Vec<PodReport>,
    },
    /// Hand a log reply to the request waiting for it: the one sent to that node with that
    /// id (another node cannot answer for it).
    LogReply { node: String, reply: LogReply },
    /// Keep the node's latest resource use for the metrics API.
    Metrics {
        node: String,
        report: bramble_api::wire::MetricsReport,
    },
}

/// A node's Ready condition to persist.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadyUpdate {
    pub node: String,
    pub ready: bool,
    pub reason: String,
    pub message: String,
    pub facts: Option<NodeFacts>,
}

/// A message the protocol refuses: the metric's name and what to log.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub reason: &'static str,
    pub detail: String,
}

/// What the gateway knows of a node between heartbeats.
#[derive(Debug)]
struct NodeState {
    last_seen: Instant,
    /// Ready as last persisted by this gateway.
    ready: bool,
    facts: Option<NodeFacts>,
    /// Resource use from the last heartbeat that carried it (memory only).
    usage: Option<Usage>,
    /// The revision of the last desired message sent; 0 = none yet (send a snapshot).
    desired_sent: u64,
    /// What the node's messages must carry to be fresh.
    fresh: Freshness,
    /// When a message of another session last made the master resend a snapshot.
    nudged: Option<Instant>,
}

/// How many of a node's earlier sessions are remembered, so that their messages replayed
/// later are refused.
const RETIRED_SESSIONS: usize = 8;
/// At most one snapshot per this long answers messages of a session the master does not
/// hold (it makes the agent say hello again).
const NUDGE_EVERY: Duration = Duration::from_secs(3);

/// The replay window of one node: its current session (its agent process), the hello that
/// opened the current exchange, and the highest `seq` seen on each channel.
#[derive(Debug, Default)]
struct Freshness {
    session: u64,
    hello: u64,
    last: [u64; 8],
    retired: std::collections::VecDeque<u64>,
}

fn channel_index(c: Channel) -> usize {
    match c {
        Channel::Hello => 0,
        Channel::Heartbeat => 1,
        Channel::Status => 2,
        Channel::Will => 3,
        Channel::Desired => 4,
        Channel::Request => 5,
        Channel::Reply => 6,
        Channel::Network => 7,
    }
}

impl Freshness {
    /// Whether a message stamped `stamp` on `channel` is fresh; if so, it is recorded.
    /// `known`: the master has heard from this node since it started (else the first
    /// stamp seen is taken as the node's session: a master that restarted under a running
    /// broker hears heartbeats before any hello).
    fn admit(&mut self, channel: Channel, stamp: Stamp, known: bool) -> Result<(), Refused> {
        let refuse = |reason: &'static str, detail: String| Err(Refused { reason, detail });
        if stamp.session == 0 {
            return refuse("wire_unstamped", format!("{channel:?} without a session"));
        }
        let i = channel_index(channel);
        if stamp.session != self.session {
            if self.retired.contains(&stamp.session) {
                return refuse(
                    "wire_replayed",
                    format!("{channel:?} of an earlier session of this node"),
                );
            }
            // A hello opens a session; so does any message of a node the master has not
            // heard from since it started, except the will (sealed long ago, perhaps).
            let adopt = channel == Channel::Hello
                || ((!known || self.session == 0) && channel != Channel::Will);
            if !adopt {
                return refuse(
                    "wire_stale_session",
                    format!("{channel:?} of a session the master does not hold"),
                );
            }
            if self.session != 0 {
                if self.retired.len() == RETIRED_SESSIONS {
                    self.retired.pop_front();
                }
                self.retired.push_back(self.session);
            }
            *self = Freshness {
                session: stamp.session,
                hello: 0,
                last: [0; 8],
                retired: std::mem::take(&mut self.retired),
            };
        } else if channel != Channel::Will && stamp.seq <= self.last[i] {
            // The will is sealed once, when the agent connects (seq 0).
            return refuse(
                "wire_replayed",
                format!("{channel:?} seq {} after {}", stamp.seq, self.last[i]),
            );
        }
        self.last[i] = self.last[i].max(stamp.seq);
        if channel == Channel::Hello {
            self.hello = stamp.seq;
        }
        Ok(())
    }

    /// The stamp of what the master sends the node: its session and the hello it answers.
    fn stamp(&self) -> Stamp {
        Stamp {
            session: self.session,
            seq: self.hello,
        }
    }
}

/// A ConfigMap or Secret: (is a Secret, namespace, name).
type ConfigKey = (bool, String, String);

fn config_key(e: &Entry) -> Option<ConfigKey> {
    match e.kind {
        Kind::ConfigMap => Some((false, e.namespace.clone(), e.name.clone())),
        Kind::Secret => Some((true, e.namespace.clone(), e.name.clone())),
        _ => None,
    }
}

/// The keys and bytes of a stored ConfigMap or Secret.
fn config_data(key: &ConfigKey, e: &Entry) -> Option<ConfigData> {
    let items = match e.object().ok()? {
        Object::ConfigMap(c) => c.entries(),
        Object::Secret(s) => s.entries(),
        _ => return None,
    };
    Some(ConfigData {
        secret: key.0,
        name: key.2.clone(),
        revision: e.revision,
        items: items.into_iter().collect(),
        repeated: false,
    })
}

/// The protocol's state.
#[derive(Debug)]
pub struct Protocol {
    lost_after: Duration,
    nodes: HashMap<String, NodeState>,
    /// Pods bound to each node, by uid, as of revision `watched`.
    pods_by_node: HashMap<String, BTreeMap<String, Arc<Entry>>>,
    /// ConfigMaps and Secrets by (is a Secret, namespace, name).
    configs: HashMap<ConfigKey, Arc<Entry>>,
    /// The bound pods that read each ConfigMap or Secret: (node, uid).
    readers: HashMap<ConfigKey, BTreeSet<(String, String)>>,
    /// What each bound pod reads, to undo `readers` when it goes.
    reads: HashMap<String, Vec<ConfigKey>>,
    /// The revision the pod index reflects.
    watched: u64,
}

fn pod_of(entry: &Entry) -> Option<Pod> {
    match entry.object() {
        Ok(Object::Pod(p)) => Some(p),
        _ => None,
    }
}

impl Protocol {
    /// A node that is silent for longer than `lost_after` is lost.
    pub fn new(lost_after: Duration) -> Self {
        Protocol {
            lost_after,
            nodes: HashMap::new(),
            pods_by_node: HashMap::new(),
            configs: HashMap::new(),
            readers: HashMap::new(),
            reads: HashMap::new(),
            watched: 0,
        }
    }

    /// Rebuilds the index from a list of every pod, ConfigMap and Secret at `revision`.
    pub fn relisted(&mut self, revision: u64, objects: Vec<Arc<Entry>>) {
        self.pods_by_node.clear();
        self.configs.clear();
        self.readers.clear();
        self.reads.clear();
        for e in objects {
            match config_key(&e) {
                Some(k) => {
                    self.configs.insert(k, e);
                }
                None => {
                    self.index(&e, false);
                }
            }
        }
        self.watched = revision;
    }

    /// A pod as sent to its node, with the ConfigMaps and Secrets it reads that exist.
    fn desired_pod(&self, uid: &str, e: &Entry) -> DesiredPod {
        let config = self
            .reads
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|k| config_data(k, self.configs.get(k)?))
            .collect();
        DesiredPod {
            uid: uid.to_string(),
            revision: e.revision,
            pod_json: e.json.to_vec(),
            config,
        }
    }

    /// A change from the store's watch (pods, ConfigMaps, Secrets).
    pub fn on_change(&mut self, c: &Change) -> Vec<Action> {
        match config_key(&c.entry) {
            Some(k) => self.on_config_change(k, c),
            None => self.on_pod_change(c).into_iter().collect(),
        }
    }

    /// A ConfigMap or Secret changed: every pod that reads it is sent again, on its node's
    /// chain, with the new data (a deleted one is left out: the pod's containers keep
    /// running, new ones wait for it).
    fn on_config_change(&mut self, key: ConfigKey, c: &Change) -> Vec<Action> {
        self.watched = c.revision;
        if c.type_ == EventType::Deleted {
            self.configs.remove(&key);
        } else {
            self.configs.insert(key.clone(), c.entry.clone());
        }
        let readers: Vec<(String, String)> = self
            .readers
            .get(&key)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        for (node, uid) in readers {
            let Some(state) = self.nodes.get(&node) else {
                continue;
            };
            if state.desired_sent == 0 || c.revision <= state.desired_sent {
                continue;
            }
            let Some(e) = self.pods_by_node.get(&node).and_then(|m| m.get(&uid)) else {
                continue;
            };
            let change = DesiredChange::Upsert(self.desired_pod(&uid, e));
            out.extend(self.desired(&node, c.revision, change));
        }
        out
    }

    /// After a re-list that may have missed changes: a snapshot to every known node.
    pub fn resync_all(&mut self) -> Vec<Action> {
        let mut nodes: Vec<String> = self.nodes.keys().cloned().collect();
        nodes.sort();
        nodes.iter().filter_map(|n| self.snapshot(n)).collect()
    }

    /// How many nodes are Ready.
    pub fn ready_count(&self) -> usize {
        self.nodes.values().filter(|s| s.ready).count()
    }

    /// The stamp of what the master sends `node` now.
    pub fn stamp(&self, node: &str) -> Stamp {
        self.nodes
            .get(node)
            .map(|s| s.fresh.stamp())
            .unwrap_or_default()
    }

    /// After a message of a session the master does not hold: a snapshot stamped with the
    /// one it holds, at most once per [`NUDGE_EVERY`], so that the agent says hello again.
    pub fn nudge(&mut self, node: &str, now: Instant) -> Option<Action> {
        let s = self.nodes.get_mut(node)?;
        if s.nudged
            .is_some_and(|t| now.saturating_duration_since(t) < NUDGE_EVERY)
        {
            return None;
        }
        s.nudged = Some(now);
        self.snapshot(node)
    }

    /// A decoded message from `node` (a registered node whose name the envelope matches) on
    /// `channel`, stamped `stamp`: refused unless fresh (see [`Stamp`]).
    pub fn on_message(
        &mut self,
        node: &str,
        channel: Channel,
        stamp: Stamp,
        message: Message,
        now: Instant,
    ) -> Result<Vec<Action>, Refused> {
        let carries = matches!(
            (channel, &message),
            (Channel::Hello, Message::Hello(_))
                | (
                    Channel::Heartbeat,
                    Message::Heartbeat(_) | Message::TimedHeartbeat(..) | Message::Metrics(_)
                )
                | (Channel::Status, Message::Status(_))
                | (Channel::Will, Message::Gone)
                | (Channel::Reply, Message::LogReply(_))
        );
        if !carries {
            // Before freshness: a message that can never be taken records nothing.
            return Err(Refused {
                reason: "wire_wrong_channel",
                detail: format!("{channel:?} cannot carry {}", message_name(&message)),
            });
        }
        let known = self.nodes.contains_key(node);
        let mut fresh = self
            .nodes
            .get_mut(node)
            .map(|s| std::mem::take(&mut s.fresh))
            .unwrap_or_default();
        let admitted = fresh.admit(channel, stamp, known);
        if let Some(s) = self.nodes.get_mut(node) {
            s.fresh = fresh;
            admitted?;
        } else {
            admitted?;
            self.touch(node, now);
            if let Some(s) = self.nodes.get_mut(node) {
                s.fresh = fresh;
            }
        }
        let mut out = Vec::new();
        match (channel, message) {
            (Channel::Hello, Message::Hello(h)) => {
                self.touch(node, now);
                if let Some(s) = self.nodes.get_mut(node) {
                    s.facts = Some(h.facts);
                }
                out.push(self.set_ready(node, true, AGENT_READY.0, AGENT_READY.1));
                out.extend(self.snapshot(node));
                if h.network_revision.is_some() {
                    out.push(Action::NetworkSnapshot(node.to_string(), self.stamp(node)));
                }
                out.push(Action::Reports {
                    node: node.to_string(),
                    reports: h.pods,
                });
            }
            (Channel::Heartbeat, Message::Heartbeat(hb) | Message::TimedHeartbeat(hb, _)) => {
                let first_contact = !known;
                // Lost without a disconnect (its heartbeats came late, as in a join storm):
                // it will not say hello again, so its chain restarts here.
                let back_without_hello = self
                    .nodes
                    .get(node)
                    .is_some_and(|s| !s.ready && s.desired_sent == 0 && s.facts.is_some());
                self.touch(node, now);
                if let (Some(u), Some(s)) = (hb.usage, self.nodes.get_mut(node)) {
                    s.usage = Some(u);
                }
                if first_contact || back_without_hello {
                    // A master that restarted under a running broker, or a node lost while
                    // still connected: resync this node.
                    out.extend(self.snapshot(node));
                }
                if !self.nodes.get(node).is_some_and(|s| s.ready) {
                    out.push(self.set_ready(node, true, AGENT_READY.0, AGENT_READY.1));
                }
            }
            (Channel::Heartbeat, Message::Metrics(m)) => {
                self.touch(node, now);
                out.push(Action::Metrics {
                    node: node.to_string(),
                    report: m,
                });
            }
            (Channel::Status, Message::Status(s)) => {
                self.touch(node, now);
                out.push(Action::Reports {
                    node: node.to_string(),
                    reports: s.pods,
                });
            }
            (Channel::Will, Message::Gone) => {
                out.push(self.set_lost(
                    node,
                    "the agent disconnected without saying goodbye (MQTT last will)",
                ));
            }
            (Channel::Reply, Message::LogReply(r)) => out.push(Action::LogReply {
                node: node.to_string(),
                reply: r,
            }),
            (c, m) => {
                return Err(Refused {
                    reason: "wire_wrong_channel",
                    detail: format!("{c:?} cannot carry {}", message_name(&m)),
                });
            }
        }
        Ok(out)
    }

    /// A pod change from the store's watch: the desired change for its node, chained to the
    /// last one that node was sent.
    fn on_pod_change(&mut self, c: &Change) -> Option<Action> {
        self.watched = c.revision;
        let deleted = c.type_ == EventType::Deleted;
        let (node, uid) = self.index(&c.entry, deleted)?;
        let state = self.nodes.get(&node)?;
        if state.desired_sent == 0 || c.revision <= state.desired_sent {
            // No chain yet (the next contact gets a snapshot), or already sent.
            return None;
        }
        let change = if deleted {
            DesiredChange::Remove { uid }
        } else {
            DesiredChange::Upsert(self.desired_pod(&uid, &c.entry))
        };
        self.desired(&node, c.revision, change)
    }

    /// Time passes: nodes silent for longer than `lost_after` are lost.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        let mut lost: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, s)| {
                s.ready && now.saturating_duration_since(s.last_seen) > self.lost_after
            })
            .map(|(n, _)| n.clone())
            .collect();
        if lost.is_empty() {
            // The common tick (every 250 ms): nothing to format or allocate.
            return Vec::new();
        }
        lost.sort();
        let why = format!("no heartbeat for more than {:?}", self.lost_after);
        lost.iter().map(|n| self.set_lost(n, &why)).collect()
    }

    /// Updates the index; returns the node and uid the change concerns.
    fn index(&mut self, e: &Arc<Entry>, deleted: bool) -> Option<(String, String)> {
        let pod = pod_of(e)?;
        let uid = pod.metadata.uid.clone();
        let node = pod.spec.node_name.clone();
        if node.is_empty() {
            return None;
        }
        for k in self.reads.remove(&uid).unwrap_or_default() {
            if let Some(r) = self.readers.get_mut(&k) {
                r.remove(&(node.clone(), uid.clone()));
                if r.is_empty() {
                    self.readers.remove(&k);
                }
            }
        }
        if deleted {
            if let Some(m) = self.pods_by_node.get_mut(&node) {
                m.remove(&uid);
            }
        } else {
            let ns = pod.metadata.namespace.clone();
            let keys: Vec<ConfigKey> = pod
                .spec
                .config_refs()
                .into_iter()
                .map(|r| (r.secret, ns.clone(), r.name))
                .collect();
            for k in &keys {
                self.readers
                    .entry(k.clone())
                    .or_default()
                    .insert((node.clone(), uid.clone()));
            }
            if !keys.is_empty() {
                self.reads.insert(uid.clone(), keys);
            }
            self.pods_by_node
                .entry(node.clone())
                .or_default()
                .insert(uid.clone(), e.clone());
        }
        Some((node, uid))
    }

    fn desired(&mut self, node: &str, revision: u64, change: DesiredChange) -> Option<Action> {
        let state = self.nodes.get_mut(node)?;
        let message = Message::Desired(Desired {
            revision,
            prev_revision: state.desired_sent,
            change,
        });
        state.desired_sent = revision;
        Some(Action::Publish {
            node: node.to_string(),
            channel: Channel::Desired,
            message,
        })
    }

    /// Every pod bound to the node; the chain restarts from it.
    fn snapshot(&mut self, node: &str) -> Option<Action> {
        let mut pods: Vec<DesiredPod> = self
            .pods_by_node
            .get(node)
            .map(|m| m.iter().map(|(uid, e)| self.desired_pod(uid, e)).collect())
            .unwrap_or_default();
        bramble_api::wire::share_config(&mut pods);
        if let Some(s) = self.nodes.get_mut(node) {
            // A snapshot replaces everything: the chain restarts from it.
            s.desired_sent = 0;
        }
        self.desired(node, self.watched.max(1), DesiredChange::Snapshot(pods))
    }

    fn touch(&mut self, node: &str, now: Instant) {
        self.nodes
            .entry(node.to_string())
            .or_insert(NodeState {
                last_seen: now,
                ready: false,
                facts: None,
                usage: None,
                desired_sent: 0,
                fresh: Freshness::default(),
                nudged: None,
            })
            .last_seen = now;
    }

    fn set_lost(&mut self, node: &str, why: &str) -> Action {
        if let Some(s) = self.nodes.get_mut(node) {
            // Forget the desired chain: the next contact gets a snapshot.
            s.desired_sent = 0;
        }
        self.set_ready(node, false, "NodeLost", why)
    }

    /// Records the node's readiness; the shell persists the condition (a transition, not a
    /// heartbeat).
    fn set_ready(&mut self, node: &str, ready: bool, reason: &str, message: &str) -> Action {
        let facts = self.nodes.get(node).and_then(|s| s.facts.clone());
        if let Some(s) = self.nodes.get_mut(node) {
            s.ready = ready;
        }
        Action::Ready(ReadyUpdate {
            node: node.to_string(),
            ready,
            reason: reason.to_string(),
            message: message.to_string(),
            facts,
        })
    }
}

const AGENT_READY: (&str, &str) = ("AgentReady", "bramble-agent is posting heartbeats");

/// A message's name, for logs.
pub fn message_name(m: &Message) -> &'static str {
    match m {
        Message::Hello(_) => "Hello",
        Message::Heartbeat(_) => "Heartbeat",
        Message::TimedHeartbeat(..) => "TimedHeartbeat",
        Message::Status(_) => "Status",
        Message::Desired(_) => "Desired",
        Message::LogRequest(_) => "LogRequest",
        Message::LogReply(_) => "LogReply",
        Message::Gone => "Gone",
        Message::Network(_) => "Network",
        Message::StreamOpen(_) => "StreamOpen",
        Message::Metrics(_) => "Metrics",
    }
}

#[cfg(test)]
mod tests {
    use bramble_api::wire::{Heartbeat, Hello, StatusReport};

    use super::*;
    use bramble_api::Kind;

    const LOST_AFTER: Duration = Duration::from_secs(40);

    fn pod(name: &str, node: &str, revision: u64) -> Arc<Entry> {
        let json = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"default","uid":"uid-{name}","resourceVersion":"{revision}"}},"spec":{{"nodeName":"{node}","containers":[{{"name":"c","image":"busybox"}}]}}}}"#
        );
        Arc::new(Entry {
            kind: Kind::Pod,
            namespace: "default".into(),
            name: name.into(),
            revision,
            labels: Default::default(),
            json: json.into_bytes().into(),
        })
    }

    fn change(type_: EventType, entry: Arc<Entry>) -> Change {
        Change::new(type_, entry)
    }

    fn hello(network: bool) -> Message {
        Message::Hello(Hello {
            session: 1,
            facts: NodeFacts::default(),
            desired_revision: 0,
            network_revision: network.then_some(0),
            pods: vec![],
        })
    }

    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    /// A stamp of session 7 whose seq is above every earlier one.
    fn fresh() -> Stamp {
        Stamp {
            session: 7,
            seq: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
        }
    }

    fn heartbeat() -> Message {
        Message::Heartbeat(Heartbeat {
            seq: 1,
            usage: None,
        })
    }

    /// The desired messages among the actions, as (revision, prev_revision, what).
    fn desired(actions: &[Action]) -> Vec<(u64, u64, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish {
                    channel: Channel::Desired,
                    message: Message::Desired(d),
                    ..
                } => Some((
                    d.revision,
                    d.prev_revision,
                    match &d.change {
                        DesiredChange::Snapshot(p) => {
                            let mut uids: Vec<&str> = p.iter().map(|p| p.uid.as_str()).collect();
                            uids.sort();
                            format!("snapshot {uids:?}")
                        }
                        DesiredChange::Upsert(p) => format!("upsert {}", p.uid),
                        DesiredChange::Remove { uid } => format!("remove {uid}"),
                    },
                )),
                _ => None,
            })
            .collect()
    }

    fn readiness(actions: &[Action]) -> Vec<(bool, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Ready(u) => Some((u.ready, u.reason.clone())),
                _ => None,
            })
            .collect()
    }

    /// A protocol with pods a (on n1, rev 5) and b (on n2, rev 6) listed at revision 6.
    fn listed() -> Protocol {
        let mut p = Protocol::new(LOST_AFTER);
        p.relisted(6, vec![pod("a", "n1", 5), pod("b", "n2", 6)]);
        p
    }

    #[test]
    fn a_hello_marks_ready_and_starts_the_chain_with_a_snapshot() {
        let t0 = Instant::now();
        for network in [false, true] {
            let mut p = listed();
            let stamp = fresh();
            let out = p
                .on_message("n1", Channel::Hello, stamp, hello(network), t0)
                .unwrap();
            assert_eq!(readiness(&out), vec![(true, "AgentReady".to_string())]);
            assert_eq!(
                desired(&out),
                vec![(6, 0, r#"snapshot ["uid-a"]"#.to_string())]
            );
            assert_eq!(
                out.contains(&Action::NetworkSnapshot("n1".into(), stamp)),
                network,
                "a network snapshot only for agents that follow the stream"
            );
            assert!(matches!(out.last(), Some(Action::Reports { node, .. }) if node == "n1"));
            assert_eq!(p.ready_count(), 1);
        }
    }

    fn entry(kind: Kind, name: &str, revision: u64, json: String) -> Arc<Entry> {
        Arc::new(Entry {
            kind,
            namespace: "default".into(),
            name: name.into(),
            revision,
            labels: Default::default(),
            json: json.into_bytes().into(),
        })
    }

    /// A pod that reads ConfigMap `cfg` through env and Secret `db` through a volume.
    fn reader(name: &str, node: &str, revision: u64) -> Arc<Entry> {
        entry(
            Kind::Pod,
            name,
            revision,
            format!(
                r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"default","uid":"uid-{name}","resourceVersion":"{revision}"}},"spec":{{"nodeName":"{node}","containers":[{{"name":"c","image":"busybox","env":[{{"name":"X","valueFrom":{{"configMapKeyRef":{{"name":"cfg","key":"k"}}}}}}]}}],"volumes":[{{"name":"v","secret":{{"secretName":"db"}}}}]}}}}"#
            ),
        )
    }

    fn configmap(value: &str, revision: u64) -> Arc<Entry> {
        entry(
            Kind::ConfigMap,
            "cfg",
            revision,
            format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cfg","namespace":"default","resourceVersion":"{revision}"}},"data":{{"k":"{value}"}}}}"#
            ),
        )
    }

    /// The config data of every desired pod sent, as (uid, [name=value...]).
    fn sent_config(actions: &[Action]) -> Vec<(String, Vec<String>)> {
        let show = |p: &DesiredPod| {
            let items = p
                .config
                .iter()
                .flat_map(|c| {
                    c.items
                        .iter()
                        .map(move |(k, v)| format!("{}/{k}={}", c.name, String::from_utf8_lossy(v)))
                })
                .collect();
            (p.uid.clone(), items)
        };
        actions
            .iter()
            .flat_map(|a| match a {
                Action::Publish {
                    message: Message::Desired(d),
                    ..
                } => match &d.change {
                    DesiredChange::Snapshot(ps) => ps.iter().map(show).collect(),
                    DesiredChange::Upsert(p) => vec![show(p)],
                    DesiredChange::Remove { .. } => vec![],
                },
                _ => vec![],
            })
            .collect()
    }

    #[test]
    fn pods_carry_what_they_read_and_a_change_of_it_resends_only_its_readers() {
        let t0 = Instant::now();
        let mut p = Protocol::new(LOST_AFTER);
        p.relisted(
            4,
            vec![
                reader("r", "n1", 3),
                pod("plain", "n2", 2),
                configmap("one", 1),
            ],
        );
        let out = p
            .on_message("n1", Channel::Hello, fresh(), hello(false), t0)
            .unwrap();
        // The Secret does not exist yet: only the ConfigMap travels.
        assert_eq!(
            sent_config(&out),
            vec![("uid-r".into(), vec!["cfg/k=one".into()])]
        );
        let out = p
            .on_message("n2", Channel::Hello, fresh(), hello(false), t0)
            .unwrap();
        assert_eq!(sent_config(&out), vec![("uid-plain".into(), vec![])]);
        // The Secret is created: the reader on n1 gets it, n2 gets nothing.
        let secret = entry(
            Kind::Secret,
            "db",
            5,
            r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"db","namespace":"default","resourceVersion":"5"},"data":{"password":"czNjcjN0"}}"#.into(),
        );
        let out = p.on_change(&change(EventType::Added, secret));
        assert_eq!(desired(&out), vec![(5, 4, "upsert uid-r".to_string())]);
        assert_eq!(
            sent_config(&out),
            vec![(
                "uid-r".into(),
                vec!["cfg/k=one".into(), "db/password=s3cr3t".into()]
            )]
        );
        // A ConfigMap update: the reader again, chained.
        let out = p.on_change(&change(EventType::Modified, configmap("two", 6)));
        assert_eq!(desired(&out), vec![(6, 5, "upsert uid-r".to_string())]);
        assert!(sent_config(&out)[0].1.contains(&"cfg/k=two".to_string()));
        // Once the reader is gone, a change of its Secret goes nowhere.
        let out = p.on_change(&change(EventType::Deleted, reader("r", "n1", 7)));
        assert_eq!(desired(&out), vec![(7, 6, "remove uid-r".to_string())]);
        let out = p.on_change(&change(EventType::Modified, configmap("three", 8)));
        assert!(out.is_empty(), "{out:?}");
        // Another ConfigMap of the same name in another namespace is not this one.
        let same = configmap("x", 10);
        let other = Arc::new(Entry {
            kind: Kind::ConfigMap,
            namespace: "other".into(),
            name: "cfg".into(),
            revision: 10,
            labels: Default::default(),
            json: same.json.clone(),
        });
        let out = p.on_change(&change(EventType::Added, reader("r2", "n1", 9)));
        assert_eq!(desired(&out), vec![(9, 7, "upsert uid-r2".to_string())]);
        let out = p.on_change(&change(EventType::Modified, other));
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_snapshot_carries_each_configmaps_bytes_once() {
        let t0 = Instant::now();
        let mut p = Protocol::new(LOST_AFTER);
        p.relisted(
            4,
            vec![
                reader("a", "n1", 2),
                reader("b", "n1", 3),
                configmap("one", 1),
            ],
        );
        let out = p
            .on_message("n1", Channel::Hello, fresh(), hello(false), t0)
            .unwrap();
        assert_eq!(
            sent_config(&out),
            vec![
                ("uid-a".into(), vec!["cfg/k=one".into()]),
                ("uid-b".into(), vec![])
            ]
        );
        let Some(Action::Publish {
            message: Message::Desired(d),
            ..
        }) = out.iter().find(|a| matches!(a, Action::Publish { .. }))
        else {
            panic!("{out:?}")
        };
        let DesiredChange::Snapshot(pods) = &d.change else {
            panic!("{d:?}")
        };
        let b = &pods[1].config[0];
        assert!(b.repeated && b.items.is_empty() && b.name == "cfg" && b.revision == 1);
        // An upsert carries its bytes whole.
        let out = p.on_change(&change(EventType::Added, reader("c", "n1", 5)));
        assert_eq!(
            sent_config(&out),
            vec![("uid-c".into(), vec!["cfg/k=one".into()])]
        );
    }

    #[test]
    fn pod_changes_follow_the_chain_and_old_or_repeated_ones_are_not_sent() {
        let t0 = Instant::now();
        let mut p = listed();
        p.on_message("n1", Channel::Hello, fresh(), hello(false), t0)
            .unwrap();
        // A new pod on n1, then an update, then a deletion: each chained to the last.
        let c = pod("c", "n1", 7);
        // A change, and the desired message it sends: (revision, prev_revision, what).
        type Step = (Change, Option<(u64, u64, &'static str)>);
        let steps: Vec<Step> = vec![
            (
                change(EventType::Added, c.clone()),
                Some((7, 6, "upsert uid-c")),
            ),
            (
                change(EventType::Modified, pod("c", "n1", 8)),
                Some((8, 7, "upsert uid-c")),
            ),
            // Repeated (a watch that re-delivers): nothing.
            (change(EventType::Modified, pod("c", "n1", 8)), None),
            // Older than what was sent: nothing.
            (change(EventType::Modified, pod("a", "n1", 4)), None),
            // Another node's pod (n2 has no chain yet): nothing for n1, nothing for n2.
            (change(EventType::Added, pod("d", "n2", 9)), None),
            (
                change(EventType::Deleted, pod("c", "n1", 10)),
                Some((10, 8, "remove uid-c")),
            ),
        ];
        for (i, (c, want)) in steps.into_iter().enumerate() {
            let got = p.on_pod_change(&c).map(|a| desired(&[a]));
            let want = want.map(|(r, prev, what)| vec![(r, prev, what.to_string())]);
            assert_eq!(got, want, "step {i}");
        }
        // The index followed: a resync sends n1 what it has now (a only; c was deleted).
        let out = p.resync_all();
        assert_eq!(
            desired(&out),
            vec![(10, 0, r#"snapshot ["uid-a"]"#.to_string())]
        );
    }

    #[test]
    fn a_timed_heartbeat_is_a_heartbeat_on_its_channel_only() {
        let t0 = Instant::now();
        let timed = |sent| match heartbeat() {
            Message::Heartbeat(h) => Message::TimedHeartbeat(h, sent),
            m => m,
        };
        let mut p = listed();
        // Any send time, however odd (a board's clock), is taken: the lag is the gateway's.
        let out = p
            .on_message("n2", Channel::Heartbeat, fresh(), timed(u64::MAX), t0)
            .unwrap();
        assert_eq!(readiness(&out), vec![(true, "AgentReady".to_string())]);
        // On another channel it is refused, as a Heartbeat would be.
        let r = p
            .on_message("n2", Channel::Status, fresh(), timed(0), t0)
            .unwrap_err();
        assert_eq!(r.reason, "wire_wrong_channel");
    }

    #[test]
    fn heartbeats_keep_a_node_ready_and_a_first_one_resyncs_it() {
        let t0 = Instant::now();
        let mut p = listed();
        // A master that restarted under a running broker hears a heartbeat first.
        let out = p
            .on_message("n2", Channel::Heartbeat, fresh(), heartbeat(), t0)
            .unwrap();
        assert_eq!(
            desired(&out),
            vec![(6, 0, r#"snapshot ["uid-b"]"#.to_string())]
        );
        assert_eq!(readiness(&out), vec![(true, "AgentReady".to_string())]);
        // Later heartbeats of a Ready node do nothing.
        let out = p
            .on_message(
                "n2",
                Channel::Heartbeat,
                fresh(),
                heartbeat(),
                t0 + Duration::from_secs(1),
            )
            .unwrap();
        assert_eq!(out, vec![]);
    }

    #[test]
    fn a_silent_node_is_lost_once_and_its_chain_restarts_when_it_is_back() {
        let t0 = Instant::now();
        let mut p = listed();
        p.on_message("n1", Channel::Hello, fresh(), hello(false), t0)
            .unwrap();
        let table: Vec<(Duration, Vec<(bool, String)>)> = vec![
            (Duration::from_secs(39), vec![]),
            (
                Duration::from_secs(41),
                vec![(false, "NodeLost".to_string())],
            ),
            // Lost once, not on every tick.
            (Duration::from_secs(60), vec![]),
        ];
        for (at, want) in table {
            assert_eq!(readiness(&p.on_tick(t0 + at)), want, "at {at:?}");
        }
        assert_eq!(p.ready_count(), 0);
        // While lost, pod changes are not sent: there is no chain to follow.
        assert_eq!(
            p.on_pod_change(&change(EventType::Added, pod("e", "n1", 11))),
            None
        );
        // Back: a heartbeat makes it Ready and restarts its chain with a snapshot (a node
        // lost while still connected says no hello); a hello after a reconnect does too.
        let back = t0 + Duration::from_secs(61);
        let out = p
            .on_message("n1", Channel::Heartbeat, fresh(), heartbeat(), back)
            .unwrap();
        assert_eq!(readiness(&out), vec![(true, "AgentReady".to_string())]);
        assert_eq!(
            desired(&out),
            vec![(11, 0, r#"snapshot ["uid-a", "uid-e"]"#.to_string())]
        );
        // Its chain goes on from there: the next pod change is sent.
        assert!(
            p.on_pod_change(&change(EventType::Added, pod("f", "n1", 12)))
                .is_some()
        );
        let out = p
            .on_message("n1", Channel::Hello, fresh(), hello(false), back)
            .unwrap();
        assert_eq!(
            desired(&out),
            vec![(12, 0, r#"snapshot ["uid-a", "uid-e", "uid-f"]"#.to_string())]
        );
    }

    #[test]
    fn a_last_will_loses_the_node_at_once() {
        let t0 = Instant::now();
        let mut p = listed();
        p.on_message("n1", Channel::Hello, fresh(), hello(false), t0)
            .unwrap();
        let out = p
            .on_message("n1", Channel::Will, fresh(), Message::Gone, t0)
            .unwrap();
        assert_eq!(readiness(&out), vec![(false, "NodeLost".to_string())]);
        assert_eq!(
            p.on_pod_change(&change(EventType::Added, pod("f", "n1", 12))),
            None
        );
    }

    #[test]
    fn status_reports_and_log_replies_go_to_the_shell() {
        let t0 = Instant::now();
        let mut p = listed();
        let out = p
            .on_message(
                "n1",
                Channel::Status,
                fresh(),
                Message::Status(StatusReport { pods: vec![] }),
                t0,
            )
            .unwrap();
        assert_eq!(
            out,
            vec![Action::Reports {
                node: "n1".into(),
                reports: vec![]
            }]
        );
        let reply = LogReply {
            id: 7,
            data: b"x".to_vec(),
            next_offset: 1,
            error: String::new(),
        };
        let out = p
            .on_message(
                "n1",
                Channel::Reply,
                fresh(),
                Message::LogReply(reply.clone()),
                t0,
            )
            .unwrap();
        assert_eq!(
            out,
            vec![Action::LogReply {
                node: "n1".into(),
                reply
            }]
        );
    }

    fn metrics() -> Message {
        Message::Metrics(bramble_api::wire::MetricsReport {
            window_ms: 15_000,
            node: bramble_api::wire::ResourceUse {
                cpu_nanocores: 5,
                memory_bytes: 6,
            },
            pods: vec![],
        })
    }

    #[test]
    fn a_metrics_report_is_kept_for_the_metrics_api() {
        let t0 = Instant::now();
        let mut p = listed();
        let out = p
            .on_message("n1", Channel::Heartbeat, fresh(), metrics(), t0)
            .unwrap();
        let Message::Metrics(report) = metrics() else {
            unreachable!()
        };
        assert_eq!(
            out,
            vec![Action::Metrics {
                node: "n1".into(),
                report
            }]
        );
    }

    #[test]
    fn a_message_on_the_wrong_channel_is_refused_and_changes_nothing() {
        let t0 = Instant::now();
        let mut p = listed();
        for (channel, message) in [
            (Channel::Status, metrics()),
            (Channel::Reply, metrics()),
            (Channel::Heartbeat, hello(false)),
            (Channel::Hello, heartbeat()),
            (Channel::Will, heartbeat()),
            (Channel::Status, Message::Gone),
        ] {
            let name = message_name(&message);
            let e = p
                .on_message("n1", channel, fresh(), message, t0)
                .unwrap_err();
            assert_eq!(e.reason, "wire_wrong_channel");
            assert!(e.detail.contains(name), "{}", e.detail);
        }
        assert_eq!(p.ready_count(), 0);
        assert_eq!(p.resync_all(), vec![], "no node was recorded");
    }

    #[test]
    fn replayed_and_stale_messages_are_refused() {
        let t0 = Instant::now();
        let mut p = Protocol::new(LOST_AFTER);
        let at = |session, seq| Stamp { session, seq };
        let reason = |r: Result<Vec<Action>, Refused>| r.map(|_| "ok").unwrap_or_else(|e| e.reason);
        assert_eq!(
            reason(p.on_message("n1", Channel::Hello, at(1, 5), hello(false), t0)),
            "ok"
        );
        assert_eq!(
            p.stamp("n1"),
            at(1, 5),
            "what the master sends answers that hello"
        );
        assert_eq!(
            reason(p.on_message("n1", Channel::Heartbeat, at(1, 6), heartbeat(), t0)),
            "ok"
        );
        // The same heartbeat again, or an older one: a replay.
        for seq in [6, 2] {
            assert_eq!(
                reason(p.on_message("n1", Channel::Heartbeat, at(1, seq), heartbeat(), t0)),
                "wire_replayed"
            );
        }
        // Channels are ordered apart: a status sealed before the last heartbeat still counts.
        let status = || Message::Status(StatusReport { pods: vec![] });
        assert_eq!(
            reason(p.on_message("n1", Channel::Status, at(1, 3), status(), t0)),
            "ok"
        );
        assert_eq!(
            reason(p.on_message("n1", Channel::Heartbeat, at(0, 9), heartbeat(), t0)),
            "wire_unstamped"
        );
        // A message of a session the master does not hold (not a hello): refused, and the
        // master nudges the agent with a snapshot, once per period.
        assert_eq!(
            reason(p.on_message("n1", Channel::Heartbeat, at(2, 9), heartbeat(), t0)),
            "wire_stale_session"
        );
        assert!(!desired(&p.nudge("n1", t0).into_iter().collect::<Vec<_>>()).is_empty());
        assert!(p.nudge("n1", t0 + Duration::from_secs(1)).is_none());
        assert!(p.nudge("n1", t0 + NUDGE_EVERY).is_some());
        // A new process says hello: its session replaces the old one, which is retired.
        assert_eq!(
            reason(p.on_message("n1", Channel::Hello, at(2, 1), hello(false), t0)),
            "ok"
        );
        assert_eq!(p.stamp("n1"), at(2, 1));
        for (c, m) in [
            (Channel::Hello, hello(false)),
            (Channel::Heartbeat, heartbeat()),
            (Channel::Will, Message::Gone),
        ] {
            assert_eq!(
                reason(p.on_message("n1", c, at(1, 99), m, t0)),
                "wire_replayed"
            );
        }
        // A reconnect of the same process says hello with a higher seq; an old hello of the
        // same process is a replay.
        assert_eq!(
            reason(p.on_message("n1", Channel::Hello, at(2, 4), hello(false), t0)),
            "ok"
        );
        assert_eq!(p.stamp("n1"), at(2, 4));
        assert_eq!(
            reason(p.on_message("n1", Channel::Hello, at(2, 1), hello(false), t0)),
            "wire_replayed"
        );
        // The will (sealed once, seq 0) counts for the current session only.
        assert_eq!(
            reason(p.on_message("n1", Channel::Will, at(2, 0), Message::Gone, t0)),
            "ok"
        );
        // A master that restarted hears heartbeats before hellos: the first stamp is taken,
        // but never from a will.
        let mut p = Protocol::new(LOST_AFTER);
        assert_eq!(
            reason(p.on_message("n2", Channel::Will, at(3, 0), Message::Gone, t0)),
            "wire_stale_session"
        );
        assert_eq!(
            reason(p.on_message("n2", Channel::Heartbeat, at(3, 8), heartbeat(), t0)),
            "ok"
        );
        assert_eq!(
            p.stamp("n2"),
            at(3, 0),
            "no hello yet: the agent will say one"
        );
    }
}
