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
//!
//! TLS: rumqttd 0.20 does its TLS handshakes inside its accept loop (one client that opens a
//! socket and never says hello would stop every other board from connecting) and reads the
//! certificate files again for every connection. So rumqttd listens on loopback only, and
//! the master terminates TLS in front of it ([`tls_front`]): each handshake on its own task
//! with a deadline, then the bytes are copied to rumqttd.

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

/// Where the embedded broker is reached.
#[derive(Debug, Clone, Copy)]
pub struct Embedded {
    /// rumqttd itself (on loopback when TLS is in front): the master's own client.
    pub internal: SocketAddr,
    /// What agents connect to (the TLS front, or rumqttd when plaintext).
    pub public: SocketAddr,
}

/// Starts rumqttd and waits until it accepts connections. With `tls`, rumqttd listens on a
/// free loopback port and a TLS front listens on `listen`; without, rumqttd listens on
/// `listen` (port 0 picks a free port).
pub async fn start_embedded(
    listen: SocketAddr,
    enrollment: Arc<Enrollment>,
    master_secret: String,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Embedded, BrokerError> {
    let Some(tls) = tls else {
        let addr = start_rumqttd(listen, enrollment, master_secret)?;
        return Ok(Embedded {
            internal: addr,
            public: addr,
        });
    };
    let front = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })?;
    let public = front.local_addr().map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    let internal = start_rumqttd(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        enrollment,
        master_secret,
    )?;
    tokio::spawn(tls_front(front, tls, internal));
    tracing::info!(addr = %public, "MQTT over TLS listening");
    Ok(Embedded { internal, public })
}

/// Most TLS connections to the broker at once (rumqttd's own cap is 20,000).
const MAX_TLS_CONNECTIONS: usize = 20_000;
/// A new connection must finish its TLS handshake within this long.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Accepts MQTT over TLS and hands each connection's bytes to rumqttd at `broker`.
async fn tls_front(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    broker: SocketAddr,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_TLS_CONNECTIONS));
    let mut log = bramble_support::LogLimiter::new(Duration::from_secs(10));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors: wait for some to be freed rather than spin.
                if log.due("accept", Instant::now()) {
                    tracing::warn!(error = %e, "cannot accept an MQTT connection; backing off (logged once per 10s)");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if log.due("busy", Instant::now()) {
                tracing::warn!(%peer, "too many MQTT connections: closing new ones (logged once per 10s)");
            }
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let mut tls = match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "MQTT TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "MQTT TLS handshake timed out");
                    return;
                }
            };
            let Ok(mut plain) = tokio::net::TcpStream::connect(broker).await else {
                tracing::warn!(%broker, "the embedded broker does not answer");
                return;
            };
            let _ = plain.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
        });
    }
}

/// Starts rumqttd on `listen` and waits until it accepts connections; returns the bound
/// address.
fn start_rumqttd(
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
