//! Node-facing and node-related endpoints: join, join tokens, and pod logs (fetched from
//! the pod's agent over MQTT).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bramble_api::node::Node;
use bramble_api::wire::{self, LogRequest, NodeFacts};
use bramble_api::{Kind, Object};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::path::Target;
use super::{AppState, authorize};
use crate::store::{Op, Subresource};

/// The join request an agent sends with a join token.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub token: String,
    pub node_name: String,
    pub facts: NodeFacts,
}

/// What a joined agent receives: its own credentials and where the broker is.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinReply {
    pub node_name: String,
    pub node_token: String,
    /// Empty: the master's own host.
    pub mqtt_host: String,
    pub mqtt_port: u16,
    /// Whether the broker speaks TLS (with the CA the agent pinned, or `mqtt_ca`).
    pub mqtt_tls: bool,
    /// The CA (PEM) of an external broker's certificate; absent: the cluster CA. It comes
    /// over the API's TLS, which the agent verified with the CA its join token pins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt_ca: Option<String>,
    /// The master's wire key (Ed25519 public key, hex): what it publishes is signed with it.
    pub wire_key: String,
}

/// `POST /bramble/v1/join`: authenticated by the join token in the body.
pub async fn join(State(st): State<Arc<AppState>>, body: Body) -> Response {
    match do_join(&st, body).await {
        Ok(r) => (StatusCode::OK, Json(r)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn do_join(st: &AppState, body: Body) -> Result<JoinReply, ApiError> {
    let bytes = super::body::read(body, st.max_body_bytes).await?;
    let req: JoinRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("join request: {e}")))?;
    let unauthorized = |why: &str| ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", why);
    let token = bramble_api::join::JoinToken::parse(&req.token)
        .map_err(|e| unauthorized(&format!("the join token is not valid: {e}")))?;
    if let (Some(pinned), Some((_, ours))) = (&token.ca_hash, &st.ca)
        && pinned != ours
    {
        return Err(unauthorized(
            "the join token pins another cluster's CA (its hash is not this master's)",
        ));
    }
    let now = bramble_api::time::now_secs();
    if let Err(r) = st
        .enrollment
        .check_token(&token.secret, &req.node_name, now)
    {
        return Err(unauthorized(&r.to_string()));
    }
    if let Err(e) = bramble_api::names::dns1123_subdomain(&req.node_name) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("nodeName: {e}"),
        ));
    }
    for (k, v) in &req.facts.labels {
        if let Err(e) = bramble_api::names::label_key(k).and(bramble_api::names::label_value(v)) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("label {k}: {e}"),
            ));
        }
    }
    let name = req.node_name.clone();
    if name.starts_with(wire::MASTER_USER) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "nodeName: names starting with {:?} are reserved to the master",
                wire::MASTER_USER
            ),
        ));
    }
    // A join token makes new nodes; it cannot take over one that has joined (that would
    // re-issue its credential, lock the real board out and hand its pods to whoever holds
    // the token), unless an admin approved it (a board whose card was written afresh).
    let takeover = st.enrollment.has_node(&name);
    if takeover && !st.enrollment.approved(&name, now) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!(
                "node {name:?} has already joined: a join token cannot take it over; to let a board join under this name, an admin runs `bramble node approve {name}` (this join may then replace its credential within an hour) or `bramble node reset {name}` (its credential is revoked at once)"
            ),
        ));
    }
    match st.enrollment.spend_token(&token.secret, &name, now) {
        Ok(Ok(())) => {}
        Ok(Err(r)) => return Err(unauthorized(&r.to_string())),
        Err(e) => {
            return Err(ApiError::internal(e));
        }
    }
    let mut labels: std::collections::BTreeMap<String, String> =
        req.facts.labels.iter().cloned().collect();
    labels.insert("kubernetes.io/hostname".into(), name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    // No Kubernetes field holds the cgroup version; the scheduler and people may want it.
    labels.insert(
        "bramble.io/cgroup".into(),
        format!("v{}", req.facts.cgroup_version),
    );
    if !req.facts.architecture.is_empty() {
        labels.insert("kubernetes.io/arch".into(), req.facts.architecture.clone());
    }
    let now = bramble_api::time::now_secs();
    let status = bramble_api::report::node_status(
        &req.facts,
        (
            false,
            "AgentJoined",
            "joined; waiting for the agent's first heartbeat",
        ),
        None,
        now,
    );
    let mut node = match st.store.get(Kind::Node, "", &name).map(|e| e.object()) {
        Some(Ok(Object::Node(n))) => n,
        _ => Node::default(),
    };
    node.metadata.name = name.clone();
    node.metadata.labels.extend(labels);
    node.status = Some(status);
    let exists = !node.metadata.uid.is_empty();
    node.metadata.resource_version.clear();
    let result = if exists {
        let r = st
            .store
            .write(Op::Update(Object::Node(node.clone()), Subresource::Main))
            .await;
        match r {
            Ok(_) => {
                st.store
                    .write(Op::Update(Object::Node(node), Subresource::Status))
                    .await
            }
            Err(e) => Err(e),
        }
    } else {
        st.store.write(Op::Create(Object::Node(node))).await
    };
    result?;
    let node_token = st.enrollment.enroll(&name).map_err(ApiError::internal)?;
    if takeover {
        // The approval is spent, and the old credential's connections go with it.
        st.enrollment.consume_approval(&name);
        let cut = st.sessions.cut(&name);
        tracing::info!(node = %name, connections_cut = cut, "an approved join replaced the node's credential");
    }
    tracing::info!(node = %name, "node joined");
    Ok(JoinReply {
        node_name: name,
        node_token,
        mqtt_host: st.mqtt_host.clone(),
        mqtt_port: st.mqtt_port,
        mqtt_tls: st.mqtt_tls,
        mqtt_ca: st.mqtt_ca.clone(),
        wire_key: st.wire_key.clone(),
    })
}

/// A join token as the API shows it: never its hash.
fn listed(mut t: crate::enrollment::JoinToken) -> crate::enrollment::JoinToken {
    t.hash.clear();
    t
}

/// A new join token as people and agents use it (`token`, shown this once): pinned to this
/// master's CA when it has one.
fn created(st: &AppState, t: crate::enrollment::NewToken) -> serde_json::Value {
    let mut v = serde_json::to_value(listed(t.token)).unwrap_or_default();
    v["token"] = bramble_api::join::JoinToken {
        ca_hash: st.ca.as_ref().map(|(_, h)| h.clone()),
        secret: t.secret,
    }
    .render()
    .into();
    v
}

/// What `POST /bramble/v1/tokens` may ask for (an empty body: a join token with the
/// defaults; `user` and `role`: a user's API token).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenRequest {
    /// A user's API token instead of a join token.
    user: Option<String>,
    /// `admin` or `reader` (with `user`).
    role: Option<String>,
    /// 0: never expires; absent: 24 h.
    ttl_seconds: Option<u64>,
    /// How many joins (absent: one; a fleet asks for more, or for `reusable`).
    uses: Option<u32>,
    /// Any number of joins.
    #[serde(default)]
    reusable: bool,
    /// The node names it may join: a name, or a prefix ending in `*`.
    nodes: Option<String>,
    #[serde(default)]
    description: String,
}

/// The longest join token lifetime that can be asked for (ten years).
const MAX_TOKEN_TTL_SECS: u64 = 10 * 366 * 24 * 3600;

/// `GET /bramble/v1/tokens` lists join tokens; `POST` creates one.
pub async fn tokens(
    State(st): State<Arc<AppState>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(e) = authorize(&st, &headers) {
        return e.into_response();
    }
    if method == axum::http::Method::POST {
        let req = match super::body::read(body, st.max_body_bytes).await {
            Ok(b) if b.iter().all(u8::is_ascii_whitespace) => TokenRequest::default(),
            Ok(b) => match serde_json::from_slice::<TokenRequest>(&b) {
                Ok(r) => r,
                Err(e) => {
                    return ApiError::bad_request(format!("token request: {e}")).into_response();
                }
            },
            Err(e) => return e.into_response(),
        };
        let ttl = match req.ttl_seconds {
            None => Some(crate::enrollment::DEFAULT_TOKEN_TTL),
            Some(0) => None,
            Some(s) if s > MAX_TOKEN_TTL_SECS => {
                return ApiError::bad_request(format!(
                    "ttlSeconds: at most {MAX_TOKEN_TTL_SECS} (ten years), or 0 for never"
                ))
                .into_response();
            }
            Some(s) => Some(Duration::from_secs(s)),
        };
        if let Some(user) = &req.user {
            if req.uses.is_some() || req.reusable || req.nodes.is_some() {
                return ApiError::bad_request("uses, reusable, nodes: only for join tokens")
                    .into_response();
            }
            return create_user_token(&st, user, req.role.as_deref(), req.ttl_seconds)
                .unwrap_or_else(IntoResponse::into_response);
        }
        if req.role.is_some() {
            return ApiError::bad_request("role: only with user (a user's API token)")
                .into_response();
        }
        let uses = match (req.uses, req.reusable) {
            (Some(_), true) => {
                return ApiError::bad_request("uses and reusable: give one of them")
                    .into_response();
            }
            (Some(0), false) => {
                return ApiError::bad_request(
                    "uses: must be at least 1 (or reusable for any number)",
                )
                .into_response();
            }
            (Some(n), false) => Some(n),
            (None, true) => None,
            // Single-use unless asked otherwise.
            (None, false) => Some(1),
        };
        let description = if req.description.is_empty() {
            "created with bramble token create".to_string()
        } else {
            req.description.chars().take(256).collect()
        };
        if let Some(p) = &req.nodes {
            let name = p.strip_suffix('*').unwrap_or(p);
            let ok = if p.ends_with('*') {
                !name.is_empty()
                    && name.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                    })
            } else {
                bramble_api::names::dns1123_subdomain(name).is_ok()
            };
            if !ok {
                return ApiError::bad_request(format!(
                    "nodes: {p:?} is neither a node name nor a prefix of one ending in * (rack1-*)"
                ))
                .into_response();
            }
        }
        let spec = crate::enrollment::TokenSpec {
            ttl,
            uses,
            description,
            nodes: req.nodes.clone(),
        };
        return match st.enrollment.create_token(spec) {
            Ok(t) => (StatusCode::CREATED, Json(created(&st, t))).into_response(),
            Err(e) => ApiError::internal(e).into_response(),
        };
    }
    let items: Vec<_> = st.enrollment.tokens().into_iter().map(listed).collect();
    Json(serde_json::json!({ "items": items, "users": st.users.list() })).into_response()
}

/// Makes a user's API token; the answer is the only place it is ever shown.
fn create_user_token(
    st: &AppState,
    user: &str,
    role: Option<&str>,
    ttl_seconds: Option<u64>,
) -> Result<Response, ApiError> {
    if let Err(e) = bramble_api::names::dns1123_subdomain(user) {
        return Err(ApiError::bad_request(format!("user: {e}")));
    }
    let role = role
        .and_then(crate::users::Role::parse)
        .ok_or_else(|| ApiError::bad_request("role: admin or reader (what the token may do)"))?;
    let now = bramble_api::time::now_secs();
    let expires = match ttl_seconds {
        None | Some(0) => None,
        Some(s) if s > MAX_TOKEN_TTL_SECS => {
            return Err(ApiError::bad_request(format!(
                "ttlSeconds: at most {MAX_TOKEN_TTL_SECS} (ten years), or 0 for never"
            )));
        }
        Some(s) => Some(now.saturating_add(s as i64)),
    };
    let token = st
        .users
        .create(user, role, expires, now)
        .map_err(ApiError::internal)?;
    tracing::info!(user, ?role, "user token created");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "user": user,
            "role": role,
            "token": token,
            "expires": expires.map(bramble_api::time::format_rfc3339),
        })),
    )
        .into_response())
}

/// `POST /bramble/v1/nodes/{node}/revoke`: revokes a node's credential at once (its MQTT
/// connections are cut, reconnects and blob reads refused) while keeping the Node; a board
/// may then join under that name again with a join token.
/// `POST /bramble/v1/secrets/rotate-key`: a new key for Secrets at rest; every Secret is
/// sealed with it and the old keys are dropped.
pub async fn rotate_secrets_key(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&st, &headers) {
        return e.into_response();
    }
    match st.store.rotate_secrets_key().await {
        Ok(n) => Json(serde_json::json!({ "resealed": n })).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub async fn revoke_node(
    State(st): State<Arc<AppState>>,
    axum::extract::Path(node): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&st, &headers) {
        return e.into_response();
    }
    // The Node when it exists (the event's subject), else a stand-in with its name.
    let obj = match st.store.get(Kind::Node, "", &node).map(|e| e.object()) {
        Some(Ok(obj)) => obj,
        _ => {
            let mut n = Node::default();
            n.metadata.name = node.clone();
            Object::Node(n)
        }
    };
    let mut events = crate::events::EventRecorder::new(st.store.clone(), "bramble-master");
    let (had, cut) = match crate::controllers::revocation::revoke(
        &st.enrollment,
        &st.sessions,
        &mut events,
        obj,
        "revoked by an admin",
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    if !had && cut == 0 {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("node {node:?} holds no credential"),
        )
        .into_response();
    }
    Json(serde_json::json!({"node": node, "connectionsCut": cut})).into_response()
}

/// `POST /bramble/v1/nodes/{node}/approve`: lets one join with a join token take over a
/// node that holds a credential (a board whose card was written afresh), for an hour.
pub async fn approve_node(
    State(st): State<Arc<AppState>>,
    axum::extract::Path(node): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&st, &headers) {
        return e.into_response();
    }
    let Some(until) = st.enrollment.approve(&node, bramble_api::time::now_secs()) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("node {node:?} holds no credential: a join token joins it without approval"),
        )
        .into_response();
    };
    let until = bramble_api::time::format_rfc3339(until);
    tracing::info!(node, until, "a join may take the node over");
    if let Some(Ok(obj)) = st.store.get(Kind::Node, "", &node).map(|e| e.object()) {
        crate::events::EventRecorder::new(st.store.clone(), "bramble-master")
            .record(
                obj,
                "Normal",
                "RejoinApproved",
                &format!("an admin let a join token replace this node's credential until {until}"),
            )
            .await;
    }
    Json(serde_json::json!({"node": node, "until": until})).into_response()
}

/// `DELETE /bramble/v1/users/{name}`: revokes a user's API token at once.
pub async fn delete_user(
    State(st): State<Arc<AppState>>,
    axum::extract::Path(user): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&st, &headers) {
        return e.into_response();
    }
    match st.users.delete(&user) {
        Ok(true) => {
            tracing::info!(user, "user token revoked");
            StatusCode::OK.into_response()
        }
        Ok(false) => ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no token for user {user:?}"),
        )
        .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// `DELETE /bramble/v1/tokens/{token}`: the token's ID as listed, the token as created, or
/// its secret.
pub async fn delete_token(
    State(st): State<Arc<AppState>>,
    axum::extract::Path(token): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&st, &headers) {
        return e.into_response();
    }
    let secret = match bramble_api::join::JoinToken::parse(&token) {
        Ok(t) => t.secret,
        Err(e) => return ApiError::bad_request(e).into_response(),
    };
    match st.enrollment.delete_token(&secret) {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such join token (deleted, used up, or never made here)",
        )
        .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// A stored pod that is bound to a node (what its logs and streams are asked of).
pub fn scheduled_pod(
    st: &AppState,
    ns: &str,
    name: &str,
) -> Result<bramble_api::pod::Pod, ApiError> {
    let entry = st.store.get(Kind::Pod, ns, name).ok_or_else(|| {
        ApiError::from(crate::store::StoreError::NotFound {
            kind: Kind::Pod,
            name: name.to_string(),
        })
    })?;
    let Ok(Object::Pod(pod)) = entry.object() else {
        return Err(ApiError::internal("stored pod is unreadable"));
    };
    if pod.spec.node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name:?} is not scheduled to a node yet"
        )));
    }
    Ok(pod)
}

/// The container a log read or a stream names (`asked`), or the pod's only one; as
/// Kubernetes, a pod of several containers needs the name.
pub fn container_of(pod: &bramble_api::pod::Pod, asked: Option<&str>) -> Result<String, ApiError> {
    let name = &pod.metadata.name;
    let names: Vec<&str> = pod
        .spec
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    match asked {
        Some(c) if names.contains(&c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c:?} is not valid for pod {name:?}; choose one of {names:?}"
        ))),
        None if names.len() == 1 => Ok(names[0].to_string()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name:?}, choose one of {names:?}"
        ))),
    }
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}/log`: `container`, `tailLines`, `previous`,
/// `limitBytes`, `follow`.
pub async fn logs(
    st: &Arc<AppState>,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let ns = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let pod = scheduled_pod(st, &ns, &name)?;
    let container = container_of(&pod, query.get("container").map(String::as_str))?;
    let num = |k: &str| -> Result<Option<u64>, ApiError> {
        query
            .get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("{k}: {v:?} is not a number")))
            })
            .transpose()
    };
    let flag = |k: &str| query.get(k).is_some_and(|v| super::resources::truthy(v));
    let request = LogRequest {
        id: 0,
        namespace: ns.clone(),
        pod: name.clone(),
        container,
        tail_lines: num("tailLines")?,
        previous: flag("previous"),
        offset: None,
        limit_bytes: num("limitBytes")?
            .unwrap_or(wire::MAX_LOG_CHUNK_BYTES)
            .min(wire::MAX_LOG_CHUNK_BYTES),
    };
    let node = pod.spec.node_name.clone();
    let timeout = Duration::from_secs(10);
    let first = st
        .gateway
        .logs(&node, request.clone(), timeout)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                e.to_string(),
            )
        })?;
    if !first.error.is_empty() {
        return Err(ApiError::bad_request(first.error));
    }
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !flag("follow") || request.previous {
        return Ok((text, first.data).into_response());
    }
    // Follow: keep asking for what was appended since the last offset.
    let gateway = st.gateway.clone();
    let shutdown = st.shutdown.clone();
    let state = (Some(Bytes::from(first.data)), first.next_offset);
    let stream = futures_util::stream::unfold(state, move |(pending, offset)| {
        let (gateway, shutdown, node) = (gateway.clone(), shutdown.clone(), node.clone());
        let mut req = request.clone();
        async move {
            if let Some(b) = pending {
                return Some((Ok::<Bytes, Infallible>(b), (None, offset)));
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                req.offset = Some(offset);
                req.tail_lines = None;
                match gateway.logs(&node, req.clone(), timeout).await {
                    Ok(r) if r.error.is_empty() && !r.data.is_empty() => {
                        return Some((Ok(Bytes::from(r.data)), (None, r.next_offset)));
                    }
                    Ok(r) if r.error.is_empty() => {}
                    _ => return None,
                }
            }
        }
    });
    Ok((text, Body::from_stream(stream)).into_response())
}
