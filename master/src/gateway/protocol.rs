//! The master's end of the agent protocol as a pure state machine: the node liveness table,
//! the per-node desired-state revision chain and the pod index it is built from. Inputs are
//! decoded messages, pod changes and ticks, each with the time; outputs are [`Action`]s for
//! the gateway's I/O shell to carry out (publish, persist a Ready condition, apply status
//! reports, ...). No I/O here, so every transition has a unit test.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_api::Object;
use bramble_api::pod::Pod;
use bramble_api::wire::{
    Channel, Desired, DesiredChange, DesiredPod, LogReply, Message, NodeFacts, PodReport, Usage,
};

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
    /// Send the node the network snapshot it asked for in its hello.
    NetworkSnapshot(String),
    /// Apply the node's pod status reports to the store.
    Reports {
        node: String,
        reports: Vec<PodReport>,
    },
    /// Hand a log reply to the request waiting for it: the one sent to that node with that
    /// id (another node cannot answer for it).
    LogReply { node: String, reply: LogReply },
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
}

/// The protocol's state.
#[derive(Debug)]
pub struct Protocol {
    lost_after: Duration,
    nodes: HashMap<String, NodeState>,
    /// Pods bound to each node, by uid, as of revision `watched`.
    pods_by_node: HashMap<String, BTreeMap<String, Arc<Entry>>>,
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
            watched: 0,
        }
    }

    /// Rebuilds the pod index from a list of every pod at `revision`.
    pub fn relisted(&mut self, revision: u64, pods: Vec<Arc<Entry>>) {
        self.pods_by_node.clear();
        for e in pods {
            self.index(&e, false);
        }
        self.watched = revision;
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

    /// A decoded message from `node` (a registered node whose name the envelope matches) on
    /// `channel`.
    pub fn on_message(
        &mut self,
        node: &str,
        channel: Channel,
        message: Message,
        now: Instant,
    ) -> Result<Vec<Action>, Refused> {
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
                    out.push(Action::NetworkSnapshot(node.to_string()));
                }
                out.push(Action::Reports {
                    node: node.to_string(),
                    reports: h.pods,
                });
            }
            (Channel::Heartbeat, Message::Heartbeat(hb)) => {
                let first_contact = !self.nodes.contains_key(node);
                self.touch(node, now);
                if let (Some(u), Some(s)) = (hb.usage, self.nodes.get_mut(node)) {
                    s.usage = Some(u);
                }
                if first_contact {
                    // A master that restarted under a running broker: resync this node.
                    out.extend(self.snapshot(node));
                }
                if !self.nodes.get(node).is_some_and(|s| s.ready) {
                    out.push(self.set_ready(node, true, AGENT_READY.0, AGENT_READY.1));
                }
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
    pub fn on_pod_change(&mut self, c: &Change) -> Option<Action> {
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
            DesiredChange::Upsert(DesiredPod {
                uid,
                revision: c.entry.revision,
                pod_json: c.entry.json.to_vec(),
            })
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
        if deleted {
            if let Some(m) = self.pods_by_node.get_mut(&node) {
                m.remove(&uid);
            }
        } else {
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
        let pods: Vec<DesiredPod> = self
            .pods_by_node
            .get(node)
            .map(|m| {
                m.iter()
                    .map(|(uid, e)| DesiredPod {
                        uid: uid.clone(),
                        revision: e.revision,
                        pod_json: e.json.to_vec(),
                    })
                    .collect()
            })
            .unwrap_or_default();
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
        Message::Status(_) => "Status",
        Message::Desired(_) => "Desired",
        Message::LogRequest(_) => "LogRequest",
        Message::LogReply(_) => "LogReply",
        Message::Gone => "Gone",
        Message::Network(_) => "Network",
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
            let out = p
                .on_message("n1", Channel::Hello, hello(network), t0)
                .unwrap();
            assert_eq!(readiness(&out), vec![(true, "AgentReady".to_string())]);
            assert_eq!(
                desired(&out),
                vec![(6, 0, r#"snapshot ["uid-a"]"#.to_string())]
            );
            assert_eq!(
                out.contains(&Action::NetworkSnapshot("n1".into())),
                network,
                "a network snapshot only for agents that follow the stream"
            );
            assert!(matches!(out.last(), Some(Action::Reports { node, .. }) if node == "n1"));
            assert_eq!(p.ready_count(), 1);
        }
    }

    #[test]
    fn pod_changes_follow_the_chain_and_old_or_repeated_ones_are_not_sent() {
        let t0 = Instant::now();
        let mut p = listed();
        p.on_message("n1", Channel::Hello, hello(false), t0)
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
    fn heartbeats_keep_a_node_ready_and_a_first_one_resyncs_it() {
        let t0 = Instant::now();
        let mut p = listed();
        // A master that restarted under a running broker hears a heartbeat first.
        let out = p
            .on_message("n2", Channel::Heartbeat, heartbeat(), t0)
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
        p.on_message("n1", Channel::Hello, hello(false), t0)
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
        // Back: a heartbeat makes it Ready; its hello (after its reconnect) a new snapshot.
        let back = t0 + Duration::from_secs(61);
        let out = p
            .on_message("n1", Channel::Heartbeat, heartbeat(), back)
            .unwrap();
        assert_eq!(readiness(&out), vec![(true, "AgentReady".to_string())]);
        let out = p
            .on_message("n1", Channel::Hello, hello(false), back)
            .unwrap();
        assert_eq!(
            desired(&out),
            vec![(11, 0, r#"snapshot ["uid-a", "uid-e"]"#.to_string())]
        );
    }

    #[test]
    fn a_last_will_loses_the_node_at_once() {
        let t0 = Instant::now();
        let mut p = listed();
        p.on_message("n1", Channel::Hello, hello(false), t0)
            .unwrap();
        let out = p
            .on_message("n1", Channel::Will, Message::Gone, t0)
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
            .on_message("n1", Channel::Reply, Message::LogReply(reply.clone()), t0)
            .unwrap();
        assert_eq!(
            out,
            vec![Action::LogReply {
                node: "n1".into(),
                reply
            }]
        );
    }

    #[test]
    fn a_message_on_the_wrong_channel_is_refused_and_changes_nothing() {
        let t0 = Instant::now();
        let mut p = listed();
        for (channel, message) in [
            (Channel::Heartbeat, hello(false)),
            (Channel::Hello, heartbeat()),
            (Channel::Will, heartbeat()),
            (Channel::Status, Message::Gone),
        ] {
            let name = message_name(&message);
            let e = p.on_message("n1", channel, message, t0).unwrap_err();
            assert_eq!(e.reason, "wire_wrong_channel");
            assert!(e.detail.contains(name), "{}", e.detail);
        }
        assert_eq!(p.ready_count(), 0);
        assert_eq!(p.resync_all(), vec![], "no node was recorded");
    }
}
