//! What the agent accepts from the broker, as a pure function: a publish (topic and payload)
//! becomes one [`Inbound`] message for this node, or a [`Dropped`] reason to count and log.
//! Every check a hostile or confused publisher could trip is here, with a test each.

use bramble_api::wire::{self, Channel, Desired, LogRequest, Message, NetworkUpdate, StreamOpen};
use bramble_support::wire_auth::{NodeSecret, open_from_master};

/// A message for this node, decoded and checked.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// Desired pods: a snapshot or a change in the revision chain.
    Desired(Desired),
    /// A network event on the shared stream (`shared`), or a snapshot part on the node's own
    /// network topic.
    Network { update: NetworkUpdate, shared: bool },
    /// The master asks for a container's log.
    LogRequest(LogRequest),
    /// The master asks for a stream to a pod (exec, port-forward).
    StreamOpen(StreamOpen),
}

/// Why a publish was dropped: the metric's name and what to log.
#[derive(Debug, PartialEq, Eq)]
pub struct Dropped {
    pub reason: &'static str,
    pub detail: String,
}

/// The drop reason of a message for another session of this node (or another hello): the
/// agent says hello again.
pub const OTHER_SESSION: &str = "other_session";

fn dropped(reason: &'static str, detail: String) -> Dropped {
    Dropped { reason, detail }
}

/// What a node opens the master's messages with.
pub struct Keys {
    /// The master's wire key (Ed25519 public key): what it signed.
    pub master: Vec<u8>,
    /// The node's wire secret: what the master encrypted for it.
    pub secret: NodeSecret,
}

fn reason(e: &wire::WireError) -> &'static str {
    match e {
        wire::WireError::TooLarge(_) => "too_large",
        wire::WireError::Version(_) => "bad_version",
        wire::WireError::Malformed(_) => "malformed",
        wire::WireError::Unauthenticated(_) => "unauthenticated",
    }
}

/// Routes a publish received by `node`; `master_key` is the master's wire key (only what it
/// signed is taken); on the node's own topics the stamp must be `expect` (this process's
/// session and its last hello: see [`wire::Stamp`]); `network` says whether the node
/// follows the network stream (it subscribed to it).
pub fn route(
    node: &str,
    keys: &Keys,
    expect: wire::Stamp,
    topic: &str,
    payload: &[u8],
    network: bool,
) -> Result<Inbound, Dropped> {
    if topic == wire::SERVICES_TOPIC {
        return match open_from_master(&keys.master, topic, payload, None) {
            Ok(wire::Envelope {
                message: Message::Network(update),
                ..
            }) if network => Ok(Inbound::Network {
                update,
                shared: true,
            }),
            Ok(_) => Err(dropped("wrong_channel", topic.to_string())),
            Err(e) => Err(dropped(reason(&e), format!("{topic}: {e}"))),
        };
    }
    let Some((to, channel)) = Channel::parse(topic) else {
        return Err(dropped("bad_topic", topic.to_string()));
    };
    if to != node {
        return Err(dropped("other_node", topic.to_string()));
    }
    let env = open_from_master(&keys.master, topic, payload, Some(&keys.secret))
        .map_err(|e| dropped(reason(&e), format!("{topic}: {e}")))?;
    if env.node != node {
        return Err(dropped("node_mismatch", topic.to_string()));
    }
    let inbound = match (channel, env.message) {
        (Channel::Desired, Message::Desired(d)) => Inbound::Desired(d),
        (Channel::Network, Message::Network(update)) if network => Inbound::Network {
            update,
            shared: false,
        },
        (Channel::Request, Message::LogRequest(r)) => Inbound::LogRequest(r),
        (Channel::Request, Message::StreamOpen(r)) => Inbound::StreamOpen(r),
        (c, _) => return Err(dropped("wrong_channel", format!("{topic} ({c:?})"))),
    };
    if env.stamp != expect {
        return Err(dropped(
            OTHER_SESSION,
            format!(
                "{topic}: for session {} hello {}, not this one ({} hello {})",
                env.stamp.session, env.stamp.seq, expect.session, expect.seq
            ),
        ));
    }
    Ok(inbound)
}

#[cfg(test)]
mod tests {
    use bramble_api::wire::{DesiredChange, Heartbeat, NetworkChange, NetworkSnapshot};
    use bramble_support::wire_auth::MasterKey;

    use super::*;

    fn desired() -> Message {
        Message::Desired(Desired {
            revision: 3,
            prev_revision: 2,
            change: DesiredChange::Remove { uid: "u".into() },
        })
    }

    fn network() -> Message {
        Message::Network(NetworkUpdate {
            revision: 9,
            prev_revision: 0,
            change: NetworkChange::Snapshot(NetworkSnapshot::default()),
        })
    }

    fn stream_open() -> Message {
        Message::StreamOpen(StreamOpen {
            id: "ab".into(),
            namespace: "default".into(),
            pod: "p".into(),
            kind: wire::StreamKind::PortForward { port: 80 },
        })
    }

    fn log_request() -> Message {
        Message::LogRequest(LogRequest {
            id: 1,
            namespace: "default".into(),
            pod: "p".into(),
            container: String::new(),
            tail_lines: None,
            previous: false,
            offset: None,
            limit_bytes: 10,
        })
    }

    /// The node's token in these tests.
    const TOKEN: &str = "node-token";
    /// What the node expects: its session and its last hello.
    const NOW: wire::Stamp = wire::Stamp {
        session: 11,
        seq: 4,
    };

    /// The master's key for the tests, and another one.
    fn keys() -> (MasterKey, MasterKey) {
        let dir = tempfile::tempdir().unwrap();
        (
            MasterKey::load_or_create(&dir.path().join("a")).unwrap(),
            MasterKey::load_or_create(&dir.path().join("b")).unwrap(),
        )
    }

    #[test]
    fn every_publish_is_routed_or_dropped_for_a_reason() {
        let me = "pi-1";
        let (key, other) = keys();
        let mine = |c: Channel| c.topic(me);
        // Signed by the master for that topic and that node.
        // Signed by the master for that topic and that node (encrypted for this node on its
        // own topics, as the master does).
        let sealed = |topic: &str, node: &str, m: Message| {
            if topic == wire::SERVICES_TOPIC {
                key.seal(topic, node, m)
            } else {
                key.seal_for(topic, node, &NodeSecret::from_token(TOKEN), NOW, m)
            }
        };
        let keys = Keys {
            master: key.public().to_vec(),
            secret: NodeSecret::from_token(TOKEN),
        };
        let mut bad_version = sealed(&mine(Channel::Desired), me, desired());
        bad_version[0] = 9;
        let shared = wire::SERVICES_TOPIC.to_string();
        // (topic, payload, follows the network stream, expected route or drop reason)
        type Row = (String, Vec<u8>, bool, Result<&'static str, &'static str>);
        let table: Vec<Row> = vec![
            (
                mine(Channel::Desired),
                sealed(&mine(Channel::Desired), me, desired()),
                false,
                Ok("desired"),
            ),
            (
                mine(Channel::Request),
                sealed(&mine(Channel::Request), me, log_request()),
                false,
                Ok("log"),
            ),
            (
                mine(Channel::Request),
                sealed(&mine(Channel::Request), me, stream_open()),
                false,
                Ok("stream"),
            ),
            (
                mine(Channel::Network),
                sealed(&mine(Channel::Network), me, network()),
                true,
                Ok("network own"),
            ),
            (
                shared.clone(),
                sealed(&shared, "", network()),
                true,
                Ok("network shared"),
            ),
            // An agent that does not follow the stream ignores network messages.
            (
                mine(Channel::Network),
                sealed(&mine(Channel::Network), me, network()),
                false,
                Err("wrong_channel"),
            ),
            (
                shared.clone(),
                sealed(&shared, "", network()),
                false,
                Err("wrong_channel"),
            ),
            // Anything but a network event on the shared stream.
            (
                shared.clone(),
                sealed(&shared, "", desired()),
                true,
                Err("wrong_channel"),
            ),
            (shared.clone(), b"junk".to_vec(), true, Err("bad_version")),
            // Not signed by the master: another key, or the master's signature for another
            // topic replayed here (another node's desired state, the shared stream).
            (
                mine(Channel::Desired),
                other.seal_for(
                    &mine(Channel::Desired),
                    me,
                    &NodeSecret::from_token(TOKEN),
                    NOW,
                    desired(),
                ),
                false,
                Err("unauthenticated"),
            ),
            (
                shared.clone(),
                other.seal(&shared, "", network()),
                true,
                Err("unauthenticated"),
            ),
            (
                mine(Channel::Desired),
                sealed(&Channel::Desired.topic("pi-2"), me, desired()),
                false,
                Err("unauthenticated"),
            ),
            (
                mine(Channel::Network),
                sealed(&shared, me, network()),
                true,
                Err("unauthenticated"),
            ),
            // Another node's topic, an envelope for another node, a topic outside the protocol.
            (
                "bramble/v1/node/pi-2/desired".into(),
                sealed("bramble/v1/node/pi-2/desired", "pi-2", desired()),
                false,
                Err("other_node"),
            ),
            (
                mine(Channel::Desired),
                sealed(&mine(Channel::Desired), "pi-2", desired()),
                false,
                Err("node_mismatch"),
            ),
            (
                "elsewhere/x".into(),
                sealed("elsewhere/x", me, desired()),
                false,
                Err("bad_topic"),
            ),
            // Undecodable payloads.
            (
                mine(Channel::Desired),
                vec![0; wire::MAX_MESSAGE_BYTES + 1],
                false,
                Err("too_large"),
            ),
            (
                mine(Channel::Desired),
                bad_version,
                false,
                Err("bad_version"),
            ),
            (
                mine(Channel::Desired),
                vec![wire::PROTOCOL_VERSION as u8, 0xff, 0xff],
                false,
                Err("malformed"),
            ),
            // Stamped for another session of this node, or an earlier hello of this one: a
            // master that restarted, or a replay.
            (
                mine(Channel::Desired),
                key.seal_for(
                    &mine(Channel::Desired),
                    me,
                    &NodeSecret::from_token(TOKEN),
                    wire::Stamp { session: 12, ..NOW },
                    desired(),
                ),
                false,
                Err(OTHER_SESSION),
            ),
            (
                mine(Channel::Request),
                key.seal_for(
                    &mine(Channel::Request),
                    me,
                    &NodeSecret::from_token(TOKEN),
                    wire::Stamp { seq: 3, ..NOW },
                    log_request(),
                ),
                false,
                Err(OTHER_SESSION),
            ),
            // A message on a channel that does not carry it.
            (
                mine(Channel::Desired),
                sealed(&mine(Channel::Desired), me, log_request()),
                false,
                Err("wrong_channel"),
            ),
            (
                mine(Channel::Desired),
                sealed(&mine(Channel::Desired), me, stream_open()),
                false,
                Err("wrong_channel"),
            ),
            (
                mine(Channel::Request),
                sealed(
                    &mine(Channel::Request),
                    me,
                    Message::Heartbeat(Heartbeat {
                        seq: 1,
                        usage: None,
                    }),
                ),
                false,
                Err("wrong_channel"),
            ),
            (
                mine(Channel::Hello),
                sealed(&mine(Channel::Hello), me, desired()),
                false,
                Err("wrong_channel"),
            ),
        ];
        for (i, (topic, payload, follows, want)) in table.into_iter().enumerate() {
            let got = match route(me, &keys, NOW, &topic, &payload, follows) {
                Ok(Inbound::Desired(_)) => Ok("desired"),
                Ok(Inbound::LogRequest(_)) => Ok("log"),
                Ok(Inbound::StreamOpen(_)) => Ok("stream"),
                Ok(Inbound::Network { shared: false, .. }) => Ok("network own"),
                Ok(Inbound::Network { shared: true, .. }) => Ok("network shared"),
                Err(d) => Err(d.reason),
            };
            assert_eq!(got, want, "row {i}: {topic}");
        }
        // Encrypted for another node (with its token), or not encrypted: not taken.
        let theirs = key.seal_for(
            &mine(Channel::Desired),
            me,
            &NodeSecret::from_token("their-token"),
            NOW,
            desired(),
        );
        assert_eq!(
            route(me, &keys, NOW, &mine(Channel::Desired), &theirs, false).map_err(|d| d.reason),
            Err("unauthenticated")
        );
        let clear = key.seal(&mine(Channel::Desired), me, desired());
        assert!(route(me, &keys, NOW, &mine(Channel::Desired), &clear, false).is_err());
        // An unsigned envelope of the old protocol is never taken.
        assert!(
            route(
                me,
                &keys,
                NOW,
                &mine(Channel::Desired),
                &wire::encode(me, desired()),
                false
            )
            .is_err()
        );
    }

    #[test]
    fn a_routed_message_is_the_one_that_was_sent() {
        let (key, _) = keys();
        let topic = Channel::Desired.topic("n");
        let keys = Keys {
            master: key.public().to_vec(),
            secret: NodeSecret::from_token(TOKEN),
        };
        let got = route(
            "n",
            &keys,
            NOW,
            &topic,
            &key.seal_for(&topic, "n", &NodeSecret::from_token(TOKEN), NOW, desired()),
            false,
        );
        let Message::Desired(d) = desired() else {
            panic!("desired() builds a Desired")
        };
        assert_eq!(got, Ok(Inbound::Desired(d)));
    }
}
