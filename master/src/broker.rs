//! The embedded MQTT broker (rumqttd).
//!
//! rumqttd's `start()` blocks forever and has no shutdown, so it runs on its own threads for
//! the life of the process. It keeps an in-memory log per subscription filter and silently
//! skips a subscriber that falls behind the oldest kept segment; the segments are sized for
//! the largest message (a desired snapshot), and the protocol never relies on delivery
//! alone: every desired-state message carries revisions so that a gap is noticed and healed
//! by a snapshot.
//!
//! Authentication: the master's own client uses the user `bramble-master` and the admin
//! token; an agent uses its node name as client id and user name and its node token as
//! password. rumqttd 0.20 has no per-topic ACL, so a node's confinement to its own topics is
//! not enforced by the broker; the gateway trusts only the topic's node name and checks the
//! envelope against it (see docs/wire-protocol.md for using mosquitto with an ACL instead).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_api::wire::MAX_MESSAGE_BYTES;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::enrollment::Enrollment;

/// The MQTT user name of the master's own client.
pub const MASTER_USER: &str = "bramble-master";

/// Whether a TCP socket is listening on `port` (from /proc/net/tcp and tcp6).
fn listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let mut cols = l.split_whitespace();
                let local = cols.nth(1).unwrap_or("");
                let state = cols.nth(1).unwrap_or("");
                local.ends_with(&want) && state == "0A"
            })
        })
    })
}

/// Why the broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the embedded MQTT broker did not start listening on {0}")]
    NotListening(SocketAddr),
}

/// Starts rumqttd on `listen` (port 0 picks a free port) and waits until it accepts
/// connections; returns the bound address.
pub fn start_embedded(
    listen: SocketAddr,
    enrollment: Arc<Enrollment>,
    master_secret: String,
) -> Result<SocketAddr, BrokerError> {
    // rumqttd binds by itself and cannot report the port: find one, and check first that the
    // address is usable so a bad address fails here with a clear error.
    let probe = TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    let addr = probe.local_addr().map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    drop(probe);

    let mut connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        // Twice the protocol limit: an oversized message reaches the consumer, which counts it.
        max_payload_size: 2 * MAX_MESSAGE_BYTES + 4096,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
        let ok = if user == MASTER_USER {
            client_id.starts_with(MASTER_USER) && pass == master_secret
        } else {
            // A node connects as itself only, so it cannot take over another's session.
            client_id == user && enrollment.is_node(&user, &pass)
        };
        if !ok {
            tracing::warn!(client_id, user, "MQTT connection refused: bad credentials");
        }
        async move { ok }
    });
    let server = ServerSettings {
        name: "bramble-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 20_000,
            max_outgoing_packet_count: 200,
            // Large enough for the biggest message; four segments per filter.
            max_segment_size: 4 * MAX_MESSAGE_BYTES,
            max_segment_count: 4,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            // start() only returns when a server thread failed (it logs why).
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            } else {
                tracing::error!("embedded MQTT broker stopped");
            }
        })
        .map_err(|source| BrokerError::Bind { addr, source })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        // Look for the listening socket rather than connecting: a probe connection that
        // never sends CONNECT makes rumqttd log an error.
        if listening(addr.port()) {
            tracing::info!(%addr, "embedded MQTT broker listening");
            return Ok(addr);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(BrokerError::NotListening(addr))
}
