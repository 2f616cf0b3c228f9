//! The MQTT session both ends of the wire run (the master's gateway and every agent): client
//! options sized from the protocol's message limit, TCP_NODELAY, and the event pump that
//! reconnects with capped, jittered exponential back-off and hands the loop what arrives.

use std::time::Duration;

use bramble_api::wire;
use bytes::Bytes;
use rumqttc::{Event, EventLoop, MqttOptions, Packet};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the pump hands the protocol loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// (Re)connected: subscribe and say hello.
    Connected,
    /// A message on `topic`.
    Publish(String, Bytes),
}

/// Client options for Bramble's protocol: a clean session, 5 s keep-alive, and packets up
/// to twice the protocol's message limit coming in (so an oversized message is counted by
/// the decoder instead of dropping the connection).
pub fn options(client_id: &str, host: &str, port: u16) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(
        2 * wire::MAX_MESSAGE_BYTES + 4096,
        wire::MAX_MESSAGE_BYTES + 4096,
    );
    opts.set_clean_session(true);
    opts
}

/// TCP_NODELAY (without it a request/response round trip waits ~40 ms on Nagle's
/// algorithm), and a connection timeout when given.
pub fn network(eventloop: &mut EventLoop, connect_timeout_secs: Option<u64>) {
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    if let Some(t) = connect_timeout_secs {
        net.set_connection_timeout(t);
    }
    eventloop.set_network_options(net);
}

/// How the pump waits between failed connections.
#[derive(Debug, Clone, Copy)]
pub struct Reconnect {
    pub first: Duration,
    pub max: Duration,
    /// Who is connecting to what, for the log ("gateway MQTT connection").
    pub what: &'static str,
}

/// Polls the event loop until `shutdown` or until the loop's receiver is gone: connections
/// and publishes go to `tx` (bounded: a slow loop holds the pump back, never the memory);
/// failures wait a capped, jittered exponential back-off (a rack back from a power cut does
/// not reconnect in lockstep), reset by a successful connection.
pub async fn pump(
    mut eventloop: EventLoop,
    tx: mpsc::Sender<Incoming>,
    reconnect: Reconnect,
    shutdown: CancellationToken,
) {
    let mut attempt = 0u32;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        let incoming = match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                attempt = 0;
                Incoming::Connected
            }
            // Bramble never publishes retained messages: one that arrives retained was kept
            // by a broker for replay to new subscribers, and is not taken.
            Ok(Event::Incoming(Packet::Publish(p))) if p.retain => {
                tracing::debug!(topic = p.topic, "ignoring a retained message");
                continue;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => Incoming::Publish(p.topic, p.payload),
            Ok(_) => continue,
            Err(e) => {
                let wait = bramble_api::backoff::delay(
                    attempt,
                    reconnect.first,
                    reconnect.max,
                    crate::jitter(),
                );
                attempt = attempt.saturating_add(1);
                tracing::warn!(error = %e, retry_in = ?wait, "{} failed", reconnect.what);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
        };
        if tx.send(incoming).await.is_err() {
            break;
        }
    }
}
