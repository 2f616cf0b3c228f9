//! bramble-master: the control plane of a Bramble cluster.
//!
//! It holds the desired state in a redb-backed [`store`] (with an in-memory copy that
//! serves reads and watches) and serves it over a Kubernetes-shaped HTTP/JSON [`server`].
//! Later parts (scheduler, controllers, agent gateway, embedded broker) read the same store.

pub mod broker;
pub mod config;
pub mod controllers;
pub mod credentials;
pub mod enrollment;
pub mod events;
pub mod gateway;
pub mod images;
pub mod metrics;
pub mod netstream;
pub mod pki;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod usage;
pub mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bramble_api::Kind;
use bramble_api::namespace::Namespace;
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::store::{Store, StoreError, StoreOptions};

/// How long open connections get to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Errors that stop the master from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialError),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("--external-broker-ca: {0}")]
    BrokerCa(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started master: its store is open and its listener bound.
pub struct Master {
    config: Config,
    store: Store,
    writer: store::WriterHandle,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    admin_token: String,
    reader_token: String,
    enrollment: Arc<enrollment::Enrollment>,
    users: Arc<users::Users>,
    sessions: Arc<broker::Sessions>,
    metrics: Arc<metrics::Metrics>,
    gateway: gateway::GatewayHandle,
    gateway_task: tokio::task::JoinHandle<()>,
    /// The scheduler and controllers.
    loops: Vec<tokio::task::JoinHandle<()>>,
    /// Stops the gateway; cancelled when `serve`'s token is.
    internal: CancellationToken,
    mqtt_host: String,
    mqtt_port: u16,
    mqtt_tls: bool,
    /// The external broker's CA (PEM) when it is not the cluster CA.
    mqtt_ca: Option<String>,
    pki: Option<pki::Pki>,
    wire_key: Arc<bramble_support::wire_auth::MasterKey>,
    images: Arc<server::images::ImageService>,
}

impl Master {
    /// Opens the store, ensures the built-in namespaces, loads or creates the admin token,
    /// binds the listener and writes the client config.
    pub async fn start(config: Config) -> Result<Master, StartError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let secrets_key = store::sealed::SecretsKey::load_or_create(
            &dir.join(store::sealed::KEY_FILE),
        )
        .map_err(|source| StartError::DataDir {
            path: dir.join(store::sealed::KEY_FILE).display().to_string(),
            source,
        })?;
        let opts = StoreOptions {
            change_log: config.watch_change_log,
            services: config.services,
            secrets: Some(Arc::new(secrets_key)),
            ..StoreOptions::default()
        };
        let (store, writer) = Store::open(&config.store_path(), opts)?;
        for ns in ["default", "kube-system"] {
            if store.get(Kind::Namespace, "", ns).is_none() {
                let mut obj = Namespace::default();
                obj.metadata.name = ns.to_string();
                match store.create(bramble_api::Object::Namespace(obj)).await {
                    Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // Before the controllers: Deployments stored without ReplicaSets get theirs.
        controllers::deployment::adopt_legacy_pods(&store).await?;
        let blobs = images::Blobs::open(dir).map_err(|source| StartError::DataDir {
            path: dir.join("blobs").display().to_string(),
            source,
        })?;
        let images = Arc::new(server::images::ImageService::new(blobs));
        let admin_token =
            credentials::load_or_create_token(&dir.join(credentials::ADMIN_TOKEN_FILE))?;
        let reader_token =
            credentials::load_or_create_token(&dir.join(credentials::READER_TOKEN_FILE))?;
        let users = Arc::new(users::Users::load(dir)?);
        let pki = if config.plaintext {
            tracing::warn!(
                "--insecure-plaintext: the API and the broker serve without TLS; tokens and API requests cross the network in clear"
            );
            None
        } else {
            Some(pki::load_or_create(
                dir,
                &pki::serving_names(&config.tls_sans),
            )?)
        };
        let ca_hash = pki
            .as_ref()
            .map(|p| bramble_support::tls::cert_hash(p.ca_der.as_ref()));
        let enrollment = Arc::new(enrollment::Enrollment::load(dir, ca_hash.as_deref())?);
        let sessions: Arc<broker::Sessions>;
        let mut mqtt_ca = None;
        let (gw_host, gw_port, mqtt_host, mqtt_port, mqtt_tls, credentials) = match &config.broker {
            config::Broker::Embedded(listen) => {
                let addrs = broker::start_embedded(
                    *listen,
                    enrollment.clone(),
                    admin_token.clone(),
                    pki.as_ref().map(|p| p.server.clone()),
                )
                .await?;
                sessions = addrs.sessions.clone();
                let host = if addrs.internal.ip().is_unspecified() {
                    "127.0.0.1".to_string()
                } else {
                    addrs.internal.ip().to_string()
                };
                (
                    host,
                    addrs.internal.port(),
                    String::new(),
                    addrs.public.port(),
                    pki.is_some(),
                    Some((broker::MASTER_USER.to_string(), admin_token.clone())),
                )
            }
            // The operator runs that broker and its TLS; see docs/operations.md.
            config::Broker::External {
                host,
                port,
                credentials,
                tls_ca,
            } => {
                sessions = Default::default();
                match tls_ca {
                    Some(pem) => {
                        // Checked now: a bad file stops the start, not every connection.
                        bramble_support::tls::client_config(pem).map_err(StartError::BrokerCa)?;
                        mqtt_ca = Some(pem.clone());
                    }
                    None => tracing::warn!(
                        broker = %format!("{host}:{port}"),
                        "the external broker speaks plaintext: node tokens (MQTT passwords) cross the network in clear to it (messages stay authenticated and node traffic encrypted end to end); use mqtts:// with --external-broker-ca"
                    ),
                }
                (
                    host.clone(),
                    *port,
                    host.clone(),
                    *port,
                    tls_ca.is_some(),
                    credentials.clone(),
                )
            }
        };
        let wire_key = Arc::new(
            bramble_support::wire_auth::MasterKey::load_or_create(&dir.join("wire.key")).map_err(
                |source| StartError::DataDir {
                    path: dir.join("wire.key").display().to_string(),
                    source,
                },
            )?,
        );
        let metrics = Arc::new(metrics::Metrics::default());
        let internal = CancellationToken::new();
        let (gateway, gateway_task) = gateway::start(
            store.clone(),
            metrics.clone(),
            gateway::GatewayConfig {
                host: gw_host,
                port: gw_port,
                credentials,
                tls_ca: mqtt_ca.clone(),
                node_lost_after: config.node_lost_after,
                cidrs: netstream::Cidrs {
                    cluster: config.pod_cidrs.cluster(),
                    service: config.services.cidr_string(),
                },
                wire_key: wire_key.clone(),
                enrollment: enrollment.clone(),
            },
            internal.clone(),
        );
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let lifecycle = controllers::nodes::LifecycleConfig {
            eviction_timeout: config.pod_eviction_timeout,
            ..Default::default()
        };
        let loops = vec![
            tokio::spawn(scheduler::run(store.clone(), internal.clone())),
            tokio::spawn(controllers::run(
                controllers::deployment::Deployments::new(&store),
                store.clone(),
                internal.clone(),
            )),
            tokio::spawn(controllers::run(
                controllers::replicaset::ReplicaSets::default(),
                store.clone(),
                internal.clone(),
            )),
            tokio::spawn(controllers::run(
                controllers::daemonset::DaemonSets::new(&store),
                store.clone(),
                internal.clone(),
            )),
            tokio::spawn(controllers::run(
                controllers::job::Jobs::new(&store, config.job_backoff),
                store.clone(),
                internal.clone(),
            )),
            tokio::spawn(controllers::run(
                controllers::cronjob::CronJobs::new(&store),
                store.clone(),
                internal.clone(),
            )),
            tokio::spawn(controllers::nodes::run(
                store.clone(),
                lifecycle,
                internal.clone(),
            )),
            tokio::spawn(controllers::run(
                controllers::endpoints::EndpointsController,
                store.clone(),
                internal.clone(),
            )),
            tokio::spawn(controllers::run(
                controllers::ipam::Ipam::new(&store, config.pod_cidrs),
                store.clone(),
                internal.clone(),
            )),
            tokio::spawn(controllers::run(
                controllers::revocation::Revocation::new(
                    &store,
                    enrollment.clone(),
                    sessions.clone(),
                ),
                store.clone(),
                internal.clone(),
            )),
            tokio::spawn(trim_memory(internal.clone())),
        ];
        credentials::write_client_config(
            &dir.join(credentials::CLIENT_CONFIG_FILE),
            &credentials::client_url(addr, pki.is_some()),
            &admin_token,
            pki.as_ref().map(|p| p.ca_pem.as_str()),
        )?;
        Ok(Master {
            config,
            store,
            writer,
            listener,
            addr,
            admin_token,
            reader_token,
            enrollment,
            users,
            sessions,
            metrics,
            gateway,
            gateway_task,
            loops,
            internal,
            mqtt_host,
            mqtt_port,
            mqtt_tls,
            mqtt_ca,
            pki,
            wire_key,
            images,
        })
    }

    /// The bound API address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the API and the embedded broker serve TLS.
    pub fn tls(&self) -> bool {
        self.pki.is_some()
    }

    /// The MQTT broker port agents are told to use.
    pub fn mqtt_port(&self) -> u16 {
        self.mqtt_port
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A handle to the store, for in-process users (tests, benches, controllers).
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Serves until `shutdown` is cancelled, then drains connections (bounded by a grace
    /// period) and waits for the store's last commit.
    pub async fn serve(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let state = Arc::new(server::AppState {
            failures: server::limit::failures(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            admin_token: self.admin_token.clone(),
            reader_token: self.reader_token.clone(),
            max_body_bytes: self.config.max_body_bytes,
            shutdown: shutdown.clone(),
            enrollment: self.enrollment.clone(),
            users: self.users.clone(),
            sessions: self.sessions.clone(),
            gateway: self.gateway.clone(),
            mqtt_host: self.mqtt_host.clone(),
            mqtt_port: self.mqtt_port,
            mqtt_tls: self.mqtt_tls,
            mqtt_ca: self.mqtt_ca.clone(),
            wire_key: bramble_support::wire_auth::hex(self.wire_key.public()),
            ca: self.pki.as_ref().map(|p| {
                (
                    p.ca_pem.clone(),
                    bramble_support::tls::cert_hash(p.ca_der.as_ref()),
                )
            }),
            images: self.images.clone(),
            streams: Default::default(),
        });
        let app = server::router(state);
        tracing::info!(addr = %self.addr, "API server listening");
        let listener = server::listener::Guarded::new(
            self.listener,
            self.config.max_connections,
            self.config.request_header_timeout,
            self.pki.as_ref().map(|p| p.server.clone()),
        );
        let graceful = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<server::listener::Peer>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let serving = tokio::spawn(async move { graceful.await });
        shutdown.cancelled().await;
        tracing::info!("shutting down");
        match tokio::time::timeout(SHUTDOWN_GRACE, serving).await {
            Ok(Ok(r)) => r?,
            Ok(Err(e)) => tracing::error!(error = %e, "API server task failed"),
            Err(_) => tracing::warn!("connections still open after the grace period; closing them"),
        }
        self.internal.cancel();
        let _ = self.gateway_task.await;
        for l in self.loops {
            let _ = l.await;
        }
        drop(self.gateway);
        drop(self.store);
        let writer = self.writer;
        // Every handle is gone once the server is: the writer finishes its batch and exits.
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        Ok(())
    }
}

/// Hands memory freed after a burst (a big list, a deployment's rollout) back to the system.
/// glibc keeps freed memory in per-thread arenas for reuse, which on a 512 MB board is memory
/// nothing else can use; musl (the static ARM builds) returns it by itself.
async fn trim_memory(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        #[cfg(target_env = "gnu")]
        #[allow(unsafe_code)]
        // SAFETY: malloc_trim only releases free memory of the allocator; it takes no pointers.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
