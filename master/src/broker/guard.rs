//! What a board may say to the embedded broker, checked packet by packet in the TLS front
//! (rumqttd 0.20 has no authorization hook). Pure: a packet in, a verdict out; the front
//! forwards what is allowed and cuts the connection on anything else.
//!
//! - The first packet is CONNECT, MQTT 3.1.1, with a user name that is a node name and a
//!   client id equal to it (the password is rumqttd's to check). The master's identity is
//!   reserved: its own client connects on loopback, never through the front.
//! - A will, if any, is the node's own will topic, not retained.
//! - PUBLISH only on the node's own agent → master topics, never retained (a retained
//!   message would be kept by the broker and re-delivered to every new subscriber).
//! - SUBSCRIBE only to the node's own master → agent topics and the shared network stream,
//!   named exactly.

use bramble_api::wire::{self, Channel, MASTER_USER};
use rumqttc::mqttbytes::Protocol;
use rumqttc::mqttbytes::v4::Packet;

/// What to do with a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// Cut the connection, for this reason (logged).
    Refuse(String),
}

/// One connection's state.
#[derive(Debug, Default)]
pub struct Guard {
    node: Option<String>,
}

impl Guard {
    /// The node this connection authenticated as (after its CONNECT).
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Checks one packet from the client.
    pub fn check(&mut self, packet: &Packet) -> Verdict {
        let refuse = |why: String| Verdict::Refuse(why);
        let Some(node) = &self.node else {
            let Packet::Connect(c) = packet else {
                return refuse("the first packet is not CONNECT".into());
            };
            if c.protocol != Protocol::V4 {
                return refuse("only MQTT 3.1.1 is spoken here".into());
            }
            let Some(login) = &c.login else {
                return refuse("anonymous clients are not served".into());
            };
            let user = login.username.as_str();
            if user == MASTER_USER || c.client_id.starts_with(MASTER_USER) {
                return refuse(format!(
                    "{MASTER_USER:?} is the master's own identity and cannot be used from the network"
                ));
            }
            if bramble_api::names::dns1123_subdomain(user).is_err() {
                return refuse(format!("user {user:?} is not a node name"));
            }
            if c.client_id != user {
                return refuse(format!(
                    "client id {:?} is not the node's name {user:?}",
                    c.client_id
                ));
            }
            if let Some(will) = &c.last_will {
                if will.topic != Channel::Will.topic(user) {
                    return refuse(format!(
                        "the will's topic {:?} is not the node's own",
                        will.topic
                    ));
                }
                if will.retain {
                    return refuse("a retained will".into());
                }
            }
            self.node = Some(user.to_string());
            return Verdict::Forward;
        };
        match packet {
            Packet::Connect(_) => refuse("a second CONNECT".into()),
            Packet::Publish(p) if p.retain => {
                refuse(format!("a retained message on {:?}", p.topic))
            }
            Packet::Publish(p) if !wire::node_may_publish(node, &p.topic) => refuse(format!(
                "a publish on {:?}, not one of its own topics",
                p.topic
            )),
            Packet::Subscribe(s) => match s
                .filters
                .iter()
                .find(|f| !wire::node_may_subscribe(node, &f.path))
            {
                Some(f) => refuse(format!(
                    "a subscription to {:?}, not one of its own topics",
                    f.path
                )),
                None => Verdict::Forward,
            },
            Packet::Publish(_)
            | Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq
            | Packet::Disconnect => Verdict::Forward,
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                refuse("a packet only a broker sends".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rumqttc::mqttbytes::QoS;
    use rumqttc::mqttbytes::v4::{Connect, LastWill, Login, Publish, Subscribe, SubscribeFilter};

    fn connect(client_id: &str, user: Option<&str>, will: Option<(&str, bool)>) -> Packet {
        let mut c = Connect::new(client_id);
        c.login = user.map(|u| Login::new(u, "secret"));
        c.last_will = will.map(|(t, retain)| LastWill {
            topic: t.into(),
            message: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain,
        });
        Packet::Connect(c)
    }

    fn publish(topic: &str, retain: bool) -> Packet {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, b"x".to_vec());
        p.retain = retain;
        Packet::Publish(p)
    }

    fn subscribe(filter: &str) -> Packet {
        Packet::Subscribe(Subscribe::new_many([SubscribeFilter::new(
            filter.into(),
            QoS::AtLeastOnce,
        )]))
    }

    fn connected() -> Guard {
        let mut g = Guard::default();
        let will = Channel::Will.topic("pi1");
        assert_eq!(
            g.check(&connect("pi1", Some("pi1"), Some((&will, false)))),
            Verdict::Forward
        );
        assert_eq!(g.node(), Some("pi1"));
        g
    }

    fn refused(v: Verdict, why: &str) {
        match v {
            Verdict::Refuse(r) => assert!(r.contains(why), "{r:?} should say {why:?}"),
            Verdict::Forward => panic!("forwarded; expected a refusal for {why:?}"),
        }
    }

    #[test]
    fn connects_are_checked() {
        let will_b = Channel::Will.topic("pi2");
        let will_a = Channel::Will.topic("pi1");
        let cases = [
            (publish("x", false), "first packet"),
            (connect("pi1", None, None), "anonymous"),
            (
                connect("bramble-master-1", Some("bramble-master"), None),
                "master's own",
            ),
            (
                connect("bramble-master-9", Some("pi1"), None),
                "master's own",
            ),
            (connect("pi2", Some("pi1"), None), "client id"),
            (
                connect("Bad_Name", Some("Bad_Name"), None),
                "not a node name",
            ),
            (
                connect("pi1", Some("pi1"), Some((&will_b, false))),
                "will's topic",
            ),
            (
                connect("pi1", Some("pi1"), Some((&will_a, true))),
                "retained will",
            ),
        ];
        for (packet, why) in cases {
            refused(Guard::default().check(&packet), why);
        }
        connected();
    }

    #[test]
    fn a_node_speaks_only_on_its_own_topics() {
        let mut g = connected();
        for c in [
            Channel::Hello,
            Channel::Heartbeat,
            Channel::Status,
            Channel::Reply,
        ] {
            assert_eq!(g.check(&publish(&c.topic("pi1"), false)), Verdict::Forward);
            refused(
                g.check(&publish(&c.topic("pi2"), false)),
                "not one of its own",
            );
        }
        // Desired state, requests and network views come from the master; the will from
        // the broker.
        for c in [
            Channel::Desired,
            Channel::Network,
            Channel::Request,
            Channel::Will,
        ] {
            refused(
                g.check(&publish(&c.topic("pi2"), false)),
                "not one of its own",
            );
            refused(
                g.check(&publish(&c.topic("pi1"), false)),
                "not one of its own",
            );
        }
        refused(
            g.check(&publish(wire::SERVICES_TOPIC, false)),
            "not one of its own",
        );
        refused(
            g.check(&publish(&Channel::Heartbeat.topic("pi1"), true)),
            "retained",
        );
        for ok in [
            Channel::Desired.topic("pi1"),
            Channel::Request.topic("pi1"),
            Channel::Network.topic("pi1"),
            wire::SERVICES_TOPIC.to_string(),
        ] {
            assert_eq!(g.check(&subscribe(&ok)), Verdict::Forward, "{ok}");
        }
        for bad in [
            "#",
            "bramble/v1/node/+/desired",
            "bramble/v1/node/pi2/desired",
            "bramble/v1/node/pi1/#",
        ] {
            refused(g.check(&subscribe(bad)), "subscription");
        }
        refused(
            g.check(&connect("pi1", Some("pi1"), None)),
            "second CONNECT",
        );
        assert_eq!(g.check(&Packet::PingReq), Verdict::Forward);
        refused(g.check(&Packet::PingResp), "only a broker");
    }
}
