//! The HTTP/JSON API server: Kubernetes-shaped paths over the store, bearer-token auth,
//! health and metrics endpoints. Every error is a Kubernetes `Status` body.

mod body;
mod discovery;
mod error;
pub mod images;
pub(crate) mod limit;
pub mod listener;
mod metrics_api;
mod nodes;
mod openapi;
mod openapi_v2;
mod patch;
mod path;
mod protobuf;
mod resources;
mod spdy;
pub mod streams;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::credentials::constant_time_eq;
use crate::enrollment::Enrollment;
use crate::gateway::GatewayHandle;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::users::{Role, Users};
use bramble_api::Kind;

pub use error::ApiError;

/// What every handler shares.
pub struct AppState {
    /// Failed authentications by source: a source past its budget is answered 429.
    pub failures: bramble_support::SourceBudget,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub admin_token: String,
    /// May only read the API.
    pub reader_token: String,
    pub max_body_bytes: usize,
    /// Cancelled at shutdown; open watch streams end on it.
    pub shutdown: CancellationToken,
    pub enrollment: Arc<Enrollment>,
    /// Named tokens of people and programs.
    pub users: Arc<Users>,
    /// Boards' connections through the broker's TLS front (cut on revocation).
    pub sessions: Arc<crate::broker::Sessions>,
    pub gateway: GatewayHandle,
    /// Broker address given to joining agents (empty host: the master's host).
    pub mqtt_host: String,
    pub mqtt_port: u16,
    /// Whether agents reach the broker over TLS.
    pub mqtt_tls: bool,
    /// The broker's CA (PEM) when it is not the cluster CA (an external broker's).
    pub mqtt_ca: Option<String>,
    /// The public half of the master's wire key (hex), given to joining agents.
    pub wire_key: String,
    /// The cluster CA (PEM) and its SHA-256; None when serving in plaintext.
    pub ca: Option<(String, String)>,
    pub images: Arc<images::ImageService>,
    /// Streams to pods asked of nodes, waiting for them to connect back.
    pub streams: streams::Pending,
}

/// The API router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/cacerts", get(cacerts))
        .route("/version", get(discovery::version))
        .route("/api", get(discovery::core_versions))
        .route("/api/v1", get(discovery::core_resources))
        .route("/apis", get(discovery::group_list))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
        .route("/openapi/v2", get(openapi::v2))
        .route("/openapi/v3", get(openapi::index))
        .route("/openapi/v3/api/v1", get(openapi::core))
        .route("/openapi/v3/apis/{group}/{version}", get(openapi::group))
        .route("/bramble/v1/join", post(nodes::join))
        .route("/bramble/v1/tokens", get(nodes::tokens).post(nodes::tokens))
        .route(
            "/bramble/v1/tokens/{token}",
            axum::routing::delete(nodes::delete_token),
        )
        .route(
            "/bramble/v1/users/{user}",
            axum::routing::delete(nodes::delete_user),
        )
        .route(
            "/bramble/v1/secrets/rotate-key",
            post(nodes::rotate_secrets_key),
        )
        .route("/bramble/v1/nodes/{node}/revoke", post(nodes::revoke_node))
        .route(
            "/bramble/v1/nodes/{node}/approve",
            post(nodes::approve_node),
        )
        .route(
            "/bramble/v1/images",
            post(images::import).delete(images::remove),
        )
        .route("/bramble/v1/images/resolve", get(images::resolve))
        .route("/bramble/v1/blobs/{digest}", get(images::blob))
        .route("/bramble/v1/streams/{id}", get(streams::agent_connect))
        .route(
            "/apis/metrics.k8s.io/v1beta1/nodes",
            get(metrics_api::node_list),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/nodes/{name}",
            get(metrics_api::node),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/pods",
            get(metrics_api::all_pods),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods",
            get(metrics_api::pods),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}",
            get(metrics_api::pod),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/exec",
            get(streams::exec).post(streams::exec),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/attach",
            get(streams::attach).post(streams::attach),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/eviction",
            post(resources::evict),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/portforward",
            get(streams::portforward).post(streams::portforward),
        )
        .fallback(api)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_unauthenticated,
        ))
        .with_state(state)
}

/// Holds back a source that keeps failing to authenticate (429 with `Retry-After`) for its
/// unauthenticated requests; a request with a valid API token, the health checks and the CA
/// are always served. Every 401 answered counts against its source.
async fn limit_unauthenticated(
    State(st): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if matches!(req.uri().path(), "/healthz" | "/readyz" | "/cacerts") {
        return next.run(req).await;
    }
    let Some(ip) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<listener::Peer>>()
        .map(|c| c.0.0.ip())
    else {
        return next.run(req).await;
    };
    // The cheap lookup first: a token is checked here only for a source that is held (the
    // handler checks it anyway).
    if let Some(wait) = st.failures.held(ip, Instant::now())
        && role_of(&st, req.headers()).is_none()
    {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            format!(
                "too many failed authentications from {ip}; retry in {secs}s with a valid token"
            ),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        return resp;
    }
    let resp = next.run(req).await;
    if resp.status() == StatusCode::UNAUTHORIZED {
        st.failures.spend(ip, Instant::now());
    }
    resp
}

/// `GET /cacerts`: the cluster CA, unauthenticated (as k3s serves it): a joining board
/// fetches it and checks it against the hash its join token carries before it trusts it.
async fn cacerts(State(st): State<Arc<AppState>>) -> Response {
    match &st.ca {
        Some((pem, _)) => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            pem.clone(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "this master serves in plaintext (--insecure-plaintext): it has no CA",
        )
        .into_response(),
    }
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    "ok".into_response()
}

/// Metrics are a read: the reader token (for monitoring) may scrape them.
async fn metrics(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize_api(&st, &Method::GET, &headers) {
        return e.into_response();
    }
    let text = st.metrics.render(&st.store);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The bearer token a request presents, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The role a bearer token has: the admin and reader tokens, or a user's.
fn role_of(st: &AppState, headers: &HeaderMap) -> Option<Role> {
    let t = bearer(headers)?;
    if constant_time_eq(t.as_bytes(), st.admin_token.as_bytes()) {
        return Some(Role::Admin);
    }
    if constant_time_eq(t.as_bytes(), st.reader_token.as_bytes()) {
        return Some(Role::Reader);
    }
    st.users
        .authenticate(t, bramble_api::time::now_secs())
        .map(|(_, role)| role)
}

/// Admin only: the admin token or a user token with the admin role.
fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match role_of(st, headers) {
        Some(Role::Admin) => Ok(()),
        Some(Role::Reader) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "this token has the reader role: it may only read; this needs the admin role",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized: a valid bearer token is required",
        )),
    }
}

/// The admin role may do anything; the reader role only read (GET: get, list, watch).
fn authorize_api(st: &AppState, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    match role_of(st, headers) {
        Some(Role::Admin) => Ok(()),
        Some(Role::Reader) if method == Method::GET => Ok(()),
        Some(Role::Reader) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "a read-only token (the reader role, e.g. {}) may only read; {method} needs the admin role",
                crate::credentials::READER_TOKEN_FILE
            ),
        )),
        None => authorize(st, headers),
    }
}

/// Every `/api` and `/apis` request.
async fn api(
    State(st): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let (verb, resource, response) = match authorize_api(&st, &method, &headers) {
        Err(e) => ("unknown", "unknown", e.into_response()),
        Ok(()) => match path::parse(uri.path()) {
            None => (
                "unknown",
                "unknown",
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource",
                )
                .into_response(),
            ),
            // Secrets are not for the reader role, as Kubernetes' `view` role cannot read
            // them: a dashboard's token must not hand out the cluster's passwords.
            Some(target)
                if target.kind == Kind::Secret
                    && role_of(&st, &headers) != Some(Role::Admin) =>
            {
                (
                    "unknown",
                    "secrets",
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        "secrets are readable only with the admin role (a reader token may read every other kind)",
                    )
                    .into_response(),
                )
            }
            Some(target) => resources::handle(&st, method, &uri, &headers, body, target).await,
        },
    };
    st.metrics
        .observe(verb, resource, response.status().as_u16(), start.elapsed());
    response
}
