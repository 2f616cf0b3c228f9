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

pub mod guard;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bramble_support::LogLimiter;
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use bramble_api::wire::MAX_MESSAGE_BYTES;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::enrollment::Enrollment;

/// The MQTT user name of the master's own client.
pub use bramble_api::wire::MASTER_USER;

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
#[derive(Clone)]
pub struct Embedded {
    /// rumqttd itself (on loopback when TLS is in front): the master's own client.
    pub internal: SocketAddr,
    /// What agents connect to (the TLS front, or rumqttd when plaintext).
    pub public: SocketAddr,
    /// The boards connected through the TLS front.
    pub sessions: Arc<Sessions>,
}

/// The boards' live connections through the TLS front, by node: a revoked node's are cut
/// at once.
#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    live: Mutex<HashMap<String, HashMap<u64, CancellationToken>>>,
}

impl Sessions {
    fn add(self: &Arc<Self>, node: &str) -> SessionEntry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        self.lock()
            .entry(node.to_string())
            .or_default()
            .insert(id, token.clone());
        SessionEntry {
            sessions: self.clone(),
            node: node.to_string(),
            id,
            token,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, CancellationToken>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts every connection of `node`; returns how many there were.
    pub fn cut(&self, node: &str) -> usize {
        let cut = self.lock().remove(node).unwrap_or_default();
        for t in cut.values() {
            t.cancel();
        }
        cut.len()
    }

    /// How many connections `node` has.
    pub fn count(&self, node: &str) -> usize {
        self.lock().get(node).map_or(0, HashMap::len)
    }
}

/// One registered connection; leaves the registry when dropped.
struct SessionEntry {
    sessions: Arc<Sessions>,
    node: String,
    id: u64,
    token: CancellationToken,
}

impl Drop for SessionEntry {
    fn drop(&mut self) {
        let mut live = self.sessions.lock();
        if let Some(m) = live.get_mut(&self.node) {
            m.remove(&self.id);
            if m.is_empty() {
                live.remove(&self.node);
            }
        }
    }
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
    let sessions = Arc::new(Sessions::default());
    let Some(tls) = tls else {
        let addr = start_rumqttd(listen, enrollment, master_secret)?;
        return Ok(Embedded {
            internal: addr,
            public: addr,
            sessions,
        });
    };
    let front = TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
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
    // The front runs on a thread of its own with a single-threaded runtime: a board's packet
    // then costs one wake-up of that thread, not a hand-off between the API's workers (the
    // multi-threaded scheduler's wake-ups were most of the front's cost, measured by the tls
    // bench). Its work per packet (decrypt, check, copy) is small.
    let front_sessions = sessions.clone();
    bramble_support::spawn_with_runtime("mqtt-tls-front", move || async move {
        match tokio::net::TcpListener::from_std(front) {
            Ok(front) => tls_front(front, tls, internal, front_sessions).await,
            Err(e) => tracing::error!(error = %e, "cannot start the MQTT TLS front"),
        }
    })
    .map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    tracing::info!(addr = %public, "MQTT over TLS listening");
    Ok(Embedded {
        internal,
        public,
        sessions,
    })
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
    sessions: Arc<Sessions>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_TLS_CONNECTIONS));
    let mut log = LogLimiter::new(Duration::from_secs(10));
    let refusals = Arc::new(Mutex::new(LogLimiter::new(Duration::from_secs(10))));
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
        let (sessions, refusals) = (sessions.clone(), refusals.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
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
            relay(tls, broker, peer, &sessions, &refusals).await;
        });
    }
}

/// The largest MQTT packet taken from a board (rumqttd's own limit).
const MAX_PACKET: usize = 2 * MAX_MESSAGE_BYTES + 4096;

/// Copies a board's connection to rumqttd: the broker's packets as they are, the board's
/// one by one through its [`guard::Guard`]; the first refused packet cuts the connection.
async fn relay(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    broker: SocketAddr,
    peer: SocketAddr,
    sessions: &Arc<Sessions>,
    refusals: &Mutex<LogLimiter>,
) {
    let Ok(plain) = tokio::net::TcpStream::connect(broker).await else {
        tracing::warn!(%broker, "the embedded broker does not answer");
        return;
    };
    let _ = plain.set_nodelay(true);
    let (mut from_broker, mut to_broker) = plain.into_split();
    let (mut from_board, mut to_board) = tokio::io::split(tls);
    let down = async {
        let _ = tokio::io::copy(&mut from_broker, &mut to_board).await;
    };
    let refuse = |node: Option<&str>, why: &str| {
        let due = refusals
            .lock()
            .map(|mut l| l.due("refused", Instant::now()))
            .unwrap_or(true);
        if due {
            tracing::warn!(%peer, node = node.unwrap_or("?"), reason = why, "MQTT connection cut (logged once per 10s)");
        }
    };
    let up = async {
        let mut guard = guard::Guard::default();
        let mut entry: Option<SessionEntry> = None;
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            loop {
                let len = match rumqttc::mqttbytes::check(buf.iter(), MAX_PACKET) {
                    Ok(header) => header.frame_length(),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                    Err(e) => return refuse(guard.node(), &format!("unreadable packet: {e}")),
                };
                let frame = buf.split_to(len);
                let packet = match Packet::read(&mut frame.clone(), MAX_PACKET) {
                    Ok(p) => p,
                    Err(e) => return refuse(guard.node(), &format!("unreadable packet: {e}")),
                };
                if let guard::Verdict::Refuse(why) = guard.check(&packet) {
                    return refuse(guard.node(), &why);
                }
                if entry.is_none()
                    && let Some(node) = guard.node()
                {
                    entry = Some(sessions.add(node));
                }
                if to_broker.write_all(&frame).await.is_err() {
                    return;
                }
            }
            let read = match &entry {
                Some(e) => tokio::select! {
                    r = from_board.read_buf(&mut buf) => r,
                    _ = e.token.cancelled() => {
                        tracing::info!(%peer, node = %e.node, "MQTT connection cut: the node's credentials were revoked");
                        return;
                    }
                },
                None => from_board.read_buf(&mut buf).await,
            };
            if !matches!(read, Ok(n) if n > 0) {
                return;
            }
        }
    };
    tokio::select! {
        _ = down => {}
        _ = up => {}
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
