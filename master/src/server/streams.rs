//! Streams to pods: `exec` and `portforward` on pods, for kubectl (websocket channels
//! `v5|v4.channel.k8s.io` and SPDY/3.1 with `v4.channel.k8s.io` / `portforward.k8s.io`) and
//! `bramble` (its own framing, `bramble_support::stream`).
//!
//! The board is never dialled: the master asks the node's agent over MQTT (an encrypted
//! [`StreamOpen`] with a random id, good once), the agent connects back to
//! `/bramble/v1/streams/{id}` with its node token, and the master splices that connection to
//! the client's. A board behind NAT or a firewall needs no inbound port. The id is taken only
//! by the node it was sent to; a stream the node does not connect back for within
//! [`CONNECT_BACK`] fails with a reason, as does one to a pod on a node that is not Ready.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bramble_api::wire::{StreamKind, StreamOpen};
use bramble_api::{Kind, Object};
use bramble_support::stream::{self, CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, ReadHalf};
use tokio::sync::{mpsc, oneshot};

use super::spdy::{self, Event, Out};
use super::{AppState, authorize, bearer};
use crate::server::error::ApiError;

/// A connection from an agent, upgraded.
pub type Tunnel = TokioIo<hyper::upgrade::Upgraded>;

/// How long a node has to connect back once asked.
pub const CONNECT_BACK: Duration = Duration::from_secs(10);

/// Streams asked of nodes and not yet connected back: id → (node, where to hand it).
#[derive(Default)]
pub struct Pending {
    waiting: Mutex<HashMap<String, (String, oneshot::Sender<Tunnel>)>>,
}

impl Pending {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (String, oneshot::Sender<Tunnel>)>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes a pending stream when its waiter gives up.
struct Forget<'a>(&'a Pending, String);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

fn unavailable(msg: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", msg)
}

/// Asks `node` for a stream and waits for it to connect back.
async fn open_tunnel(
    st: &AppState,
    node: &str,
    namespace: &str,
    pod: &str,
    kind: StreamKind,
) -> Result<Tunnel, ApiError> {
    let ready = match st.store.get(Kind::Node, "", node).map(|e| e.object()) {
        Some(Ok(Object::Node(n))) => n
            .status
            .unwrap_or_default()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status == "True", c.reason)),
        _ => None,
    };
    match ready {
        Some((true, _)) => {}
        Some((false, reason)) => {
            return Err(unavailable(format!(
                "node {node:?} is not ready ({reason}): cannot open a stream to pod {namespace}/{pod}"
            )));
        }
        None => return Err(unavailable(format!("node {node:?} is not known"))),
    }
    let id = {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| ApiError::internal(e.to_string()))?;
        bramble_support::wire_auth::hex(&b)
    };
    let (tx, rx) = oneshot::channel();
    st.streams.lock().insert(id.clone(), (node.to_string(), tx));
    let _forget = Forget(&st.streams, id.clone());
    st.gateway
        .open_stream(
            node,
            StreamOpen {
                id,
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                kind,
            },
        )
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    match tokio::time::timeout(CONNECT_BACK, rx).await {
        Ok(Ok(t)) => {
            st.metrics.count("streams_opened");
            Ok(t)
        }
        _ => {
            st.metrics.count("streams_not_connected");
            Err(unavailable(format!(
                "node {node:?} did not connect back for the stream within {}s; is its agent running and able to reach the master's API?",
                CONNECT_BACK.as_secs()
            )))
        }
    }
}

fn upgrade_of(headers: &HeaderMap) -> String {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn switching(upgrade: &str, extra: &[(&'static str, &str)]) -> Response {
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(upgrade) {
        h.insert(header::UPGRADE, v);
    }
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(*k, v);
        }
    }
    r
}

/// `GET /bramble/v1/streams/{id}`: an agent connecting back (its node token; the id must
/// have been sent to that node).
pub async fn agent_connect(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    mut req: Request,
) -> Response {
    let Some(node) = st
        .enrollment
        .node_of_token(bearer(req.headers()).unwrap_or(""))
    else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a node token is required",
        )
        .into_response();
    };
    if upgrade_of(req.headers()) != stream::UPGRADE {
        return ApiError::bad_request(format!("this endpoint upgrades to {}", stream::UPGRADE))
            .into_response();
    }
    let tx = {
        let mut waiting = st.streams.lock();
        match waiting.get(&id) {
            Some((n, _)) if *n == node => waiting.remove(&id).map(|(_, tx)| tx),
            _ => None,
        }
    };
    let Some(tx) = tx else {
        st.metrics.count("streams_refused");
        tracing::warn!(
            node,
            "a node connected back for a stream it was not asked for"
        );
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no stream with this id is waiting for this node",
        )
        .into_response();
    };
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let _ = tx.send(TokioIo::new(up));
        }
    });
    switching(stream::UPGRADE, &[])
}

/// The pod a stream goes to: it must be scheduled and running.
fn running_pod(st: &AppState, ns: &str, name: &str) -> Result<bramble_api::pod::Pod, ApiError> {
    let pod = super::nodes::scheduled_pod(st, ns, name)?;
    let phase = pod.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
    if matches!(phase, "Succeeded" | "Failed") {
        return Err(ApiError::bad_request(format!(
            "cannot exec into or forward to a container in a completed pod; current phase is {phase}"
        )));
    }
    Ok(pod)
}

/// What an exec asks for.
struct ExecRequest {
    container: String,
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

fn exec_request(
    pod: &bramble_api::pod::Pod,
    q: &[(String, String)],
    attach: bool,
) -> Result<ExecRequest, ApiError> {
    let flag = |k: &str| q.iter().any(|(n, v)| n == k && super::resources::truthy(v));
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() && !attach {
        return Err(ApiError::bad_request("you must specify a command to run"));
    }
    if command.len() > 1024 || command.iter().map(String::len).sum::<usize>() > 256 << 10 {
        return Err(ApiError::bad_request(
            "the command is too long (at most 1024 arguments, 256 KiB)",
        ));
    }
    let r = ExecRequest {
        container: super::nodes::container_of(
            pod,
            q.iter()
                .find(|(k, _)| k == "container")
                .map(|(_, v)| v.as_str()),
        )?,
        command,
        stdin: flag("stdin"),
        stdout: flag("stdout"),
        stderr: flag("stderr"),
        tty: flag("tty"),
    };
    if !(r.stdin || r.stdout || r.stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    if attach && r.stdin {
        return Err(ApiError::bad_request(
            "attach with stdin: Bramble's containers have no stdin to attach to (spec.containers[].stdin is not supported); attach without -i follows the container's output",
        ));
    }
    Ok(r)
}

/// `GET|POST /api/v1/namespaces/{ns}/pods/{name}/exec`.
pub async fn exec(
    State(st): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<Vec<(String, String)>>,
    req: Request,
) -> Response {
    match do_exec(&st, &ns, &name, &q, req, false).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// `GET|POST /api/v1/namespaces/{ns}/pods/{name}/attach`: the container's output from now
/// on, over the same protocols as exec.
pub async fn attach(
    State(st): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<Vec<(String, String)>>,
    req: Request,
) -> Response {
    match do_exec(&st, &ns, &name, &q, req, true).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn do_exec(
    st: &Arc<AppState>,
    ns: &str,
    name: &str,
    q: &[(String, String)],
    req: Request,
    attach: bool,
) -> Result<Response, ApiError> {
    authorize(st, req.headers())?;
    let pod = running_pod(st, ns, name)?;
    let ex = exec_request(&pod, q, attach)?;
    let upgrade = upgrade_of(req.headers());
    let kind = if attach {
        StreamKind::Attach {
            container: ex.container.clone(),
        }
    } else {
        StreamKind::Exec {
            container: ex.container.clone(),
            command: ex.command.clone(),
            stdin: ex.stdin,
            tty: ex.tty,
        }
    };
    let node = pod.spec.node_name.clone();
    let (mut parts, body) = req.into_parts();
    if upgrade == "websocket" {
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, st)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?
            .protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"]);
        let v5 = match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
            Some("v5.channel.k8s.io") => true,
            Some(_) => false,
            None => {
                return Err(ApiError::bad_request(
                    "websocket exec speaks v5.channel.k8s.io or v4.channel.k8s.io (binary)",
                ));
            }
        };
        let tunnel = open_tunnel(st, &node, ns, name, kind).await?;
        return Ok(ws
            .max_message_size(stream::MAX_FRAME + 1)
            .on_upgrade(move |socket| ws_exec(socket, tunnel, v5)));
    }
    let mut req = Request::from_parts(parts, body);
    if upgrade == "spdy/3.1" {
        let offered = req
            .headers()
            .get_all("x-stream-protocol-version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim() == "v4.channel.k8s.io");
        if !offered {
            return Err(ApiError::bad_request(
                "SPDY exec speaks the v4.channel.k8s.io stream protocol",
            ));
        }
        let tunnel = open_tunnel(st, &node, ns, name, kind).await?;
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                spdy_exec(TokioIo::new(up), tunnel, &ex).await;
            }
        });
        return Ok(switching(
            "SPDY/3.1",
            &[("x-stream-protocol-version", "v4.channel.k8s.io")],
        ));
    }
    if upgrade == stream::UPGRADE {
        let tunnel = open_tunnel(st, &node, ns, name, kind).await?;
        return Ok(splice(req, tunnel));
    }
    Err(ApiError::bad_request(
        "exec needs an upgrade to websocket (v5.channel.k8s.io), SPDY/3.1 or bramble-stream/1",
    ))
}

/// `bramble`'s own framing is the tunnel's: the two connections are joined.
fn splice(mut req: Request, tunnel: Tunnel) -> Response {
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let mut client = TokioIo::new(up);
            let mut tunnel = tunnel;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut tunnel).await;
        }
    });
    switching(stream::UPGRADE, &[])
}

/// Reads the tunnel's frames on a task of its own (a frame read is not cancel-safe).
/// The tunnel's frames; dropping this ends the reading task, and with it (the write half
/// gone too) the agent's connection, so that the agent ends what it runs.
struct Frames {
    rx: mpsc::Receiver<(u8, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Frames {
    async fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        self.rx.recv().await
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tunnel_frames(mut rd: ReadHalf<Tunnel>) -> Frames {
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        while let Ok(Some(f)) = stream::read(&mut rd).await {
            if tx.send(f).await.is_err() {
                return;
            }
        }
    });
    Frames { rx, task }
}

/// An exec over a websocket: each binary message is a channel byte and its data.
async fn ws_exec(mut socket: WebSocket, tunnel: Tunnel, v5: bool) {
    let (rd, mut wr) = tokio::io::split(tunnel);
    let mut frames = tunnel_frames(rd);
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let data = match msg {
                    Some(Ok(WsMessage::Binary(b))) => b,
                    Some(Ok(WsMessage::Text(t))) => t.as_str().as_bytes().to_vec().into(),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                    _ => break,
                };
                let Some((&channel, rest)) = data.split_first() else { continue };
                let sent = match channel {
                    STDIN => stream::write(&mut wr, STDIN, rest).await,
                    RESIZE => stream::write(&mut wr, RESIZE, rest).await,
                    CLOSE if v5 => stream::write(&mut wr, CLOSE, &rest[..rest.len().min(1)]).await,
                    _ => Ok(()),
                };
                if sent.is_err() {
                    break;
                }
            }
            frame = frames.recv() => match frame {
                Some((channel @ (STDOUT | STDERR), data)) => {
                    let mut m = Vec::with_capacity(1 + data.len());
                    m.push(channel);
                    m.extend_from_slice(&data);
                    if socket.send(WsMessage::Binary(m.into())).await.is_err() {
                        break;
                    }
                }
                Some((ERROR, status)) => {
                    let mut m = vec![ERROR];
                    m.extend_from_slice(&status);
                    let _ = socket.send(WsMessage::Binary(m.into())).await;
                    break;
                }
                Some(_) => {}
                None => break,
            },
        }
    }
    // A normal closure ends the client's error stream cleanly (1005, no status, is an error
    // to it).
    let _ = socket
        .send(WsMessage::Close(Some(axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}

/// The client's SPDY events, read on a task of their own; the task ends with the session.
struct SpdyClient {
    events: mpsc::Receiver<std::io::Result<Event>>,
    out: mpsc::Sender<Out>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl SpdyClient {
    fn start(io: TokioIo<hyper::upgrade::Upgraded>) -> SpdyClient {
        let (rd, wr) = tokio::io::split(io);
        let (out, out_rx) = mpsc::channel(64);
        let writer = tokio::spawn(spdy::write_all(wr, out_rx));
        let (ev_tx, events) = mpsc::channel(16);
        let mut r = spdy::Reader::new(rd, out.clone());
        let reader = tokio::spawn(async move {
            loop {
                let ev = r.next().await;
                tracing::debug!(?ev, "SPDY event");
                let end = !matches!(ev, Ok(Some(_)));
                let sent = match ev {
                    Ok(Some(e)) => ev_tx.send(Ok(e)).await,
                    Ok(None) => break,
                    Err(e) => ev_tx.send(Err(e)).await,
                };
                if end || sent.is_err() {
                    break;
                }
            }
        });
        SpdyClient {
            events,
            out,
            reader,
            writer,
        }
    }

    /// Ends the session: the writer sends what is queued, then GOAWAY.
    async fn finish(self) {
        self.reader.abort();
        drop(self.out);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.writer).await;
    }
}

/// An exec over SPDY: one stream per channel, named by its `streamtype` header.
async fn spdy_exec(io: TokioIo<hyper::upgrade::Upgraded>, tunnel: Tunnel, ex: &ExecRequest) {
    let mut client = SpdyClient::start(io);
    let expected = 1
        + usize::from(ex.stdin)
        + usize::from(ex.stdout)
        + usize::from(ex.stderr && !ex.tty)
        + usize::from(ex.tty);
    let mut ids: HashMap<String, u32> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ids.len() < expected {
        match tokio::time::timeout_at(deadline, client.events.recv()).await {
            Ok(Some(Ok(Event::Open { id, headers }))) => {
                let _ = client.out.send(Out::Reply(id)).await;
                ids.insert(headers.get("streamtype").cloned().unwrap_or_default(), id);
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "a SPDY exec session broke the protocol");
                return client.finish().await;
            }
            _ => return client.finish().await,
        }
    }
    let id_of = |t: &str| ids.get(t).copied();
    let (stdin, stdout, stderr, error, resize) = (
        id_of("stdin"),
        id_of("stdout"),
        id_of("stderr"),
        id_of("error"),
        id_of("resize"),
    );
    let (rd, mut wr) = tokio::io::split(tunnel);
    let mut frames = tunnel_frames(rd);
    loop {
        tokio::select! {
            ev = client.events.recv() => match ev {
                Some(Ok(Event::Data { id, data, fin })) => {
                    let ok = if Some(id) == stdin {
                        write_then_close(&mut wr, STDIN, &data, fin).await
                    } else if Some(id) == resize {
                        stream::write(&mut wr, RESIZE, &data).await.is_ok()
                    } else {
                        true
                    };
                    if !ok {
                        break;
                    }
                }
                Some(Ok(Event::Open { id, .. })) => {
                    let _ = client.out.send(Out::Reset(id)).await;
                }
                Some(Ok(Event::Reset { .. })) | Some(Err(_)) | None => break,
            },
            frame = frames.recv() => match frame {
                Some((channel @ (STDOUT | STDERR), data)) => {
                    let to = if channel == STDERR { stderr.or(stdout) } else { stdout };
                    if let Some(id) = to
                        && !spdy::send(&client.out, id, &data, false).await
                    {
                        break;
                    }
                }
                Some((ERROR, status)) => {
                    for id in [stdout, stderr].into_iter().flatten() {
                        spdy::send(&client.out, id, &[], true).await;
                    }
                    if let Some(id) = error {
                        spdy::send(&client.out, id, &status, true).await;
                    }
                    break;
                }
                Some(_) => {}
                None => break,
            },
        }
    }
    client.finish().await;
}

/// Writes data to the tunnel and, at the client's FIN, the channel's end.
async fn write_then_close<W: AsyncWrite + Unpin>(
    wr: &mut W,
    channel: u8,
    data: &[u8],
    fin: bool,
) -> bool {
    if !data.is_empty() && stream::write(wr, channel, data).await.is_err() {
        return false;
    }
    !fin || stream::write(wr, CLOSE, &[channel]).await.is_ok()
}

/// `GET|POST /api/v1/namespaces/{ns}/pods/{name}/portforward`.
pub async fn portforward(
    State(st): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<Vec<(String, String)>>,
    req: Request,
) -> Response {
    match do_portforward(&st, &ns, &name, &q, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn port_of(v: &str) -> Result<u16, ApiError> {
    match v.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ApiError::bad_request(format!(
            "{v:?} is not a valid port number"
        ))),
    }
}

async fn do_portforward(
    st: &Arc<AppState>,
    ns: &str,
    name: &str,
    q: &[(String, String)],
    mut req: Request,
) -> Result<Response, ApiError> {
    authorize(st, req.headers())?;
    let pod = running_pod(st, ns, name)?;
    let node = pod.spec.node_name.clone();
    let ports = q
        .iter()
        .filter(|(k, _)| k == "ports")
        .flat_map(|(_, v)| v.split(','))
        .map(port_of)
        .collect::<Result<Vec<u16>, _>>()?;
    match upgrade_of(req.headers()).as_str() {
        "spdy/3.1" => {
            let on = hyper::upgrade::on(&mut req);
            let (st, ns, name) = (st.clone(), ns.to_string(), name.to_string());
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    spdy_forward(st, TokioIo::new(up), node, ns, name).await;
                }
            });
            Ok(switching(
                "SPDY/3.1",
                &[("x-stream-protocol-version", "portforward.k8s.io")],
            ))
        }
        u if u == stream::UPGRADE => {
            let [port] = ports[..] else {
                return Err(ApiError::bad_request(
                    "a bramble-stream port-forward names one port (ports=N)",
                ));
            };
            let tunnel = open_tunnel(st, &node, ns, name, StreamKind::PortForward { port }).await?;
            Ok(splice(req, tunnel))
        }
        // kubectl 1.31+ tries SPDY tunnelled in a websocket first and falls back to SPDY
        // when the upgrade fails.
        _ => Err(ApiError::bad_request(
            "port-forward needs an upgrade to SPDY/3.1 (portforward.k8s.io) or bramble-stream/1",
        )),
    }
}

/// One forwarded connection's streams: kubectl opens an error stream and a data stream per
/// connection, with the same `requestid`.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    to_pod: Option<mpsc::Sender<Option<Vec<u8>>>>,
}

/// A port-forward session over SPDY: each (error, data) pair is one connection to the pod,
/// each on a stream of its own from the agent.
async fn spdy_forward(
    st: Arc<AppState>,
    io: TokioIo<hyper::upgrade::Upgraded>,
    node: String,
    ns: String,
    pod: String,
) {
    let mut client = SpdyClient::start(io);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut by_stream: HashMap<u32, String> = HashMap::new();
    // The forwarded connections running (each a stream from the agent), bounded however
    // streams are opened and reset; dropped with the session, which ends them.
    let mut forwards = tokio::task::JoinSet::new();
    while let Some(Ok(ev)) = client.events.recv().await {
        match ev {
            Event::Open { id, headers } => {
                let port = headers.get("port").map(|p| port_of(p));
                let (Some(kind), Some(Ok(port))) = (headers.get("streamtype"), port) else {
                    let _ = client.out.send(Out::Reset(id)).await;
                    continue;
                };
                let request = headers
                    .get("requestid")
                    .cloned()
                    .unwrap_or_else(|| id.to_string());
                while forwards.try_join_next().is_some() {}
                if by_stream.len() >= spdy::MAX_STREAMS || forwards.len() >= spdy::MAX_STREAMS / 2 {
                    let _ = client.out.send(Out::Reset(id)).await;
                    continue;
                }
                let _ = client.out.send(Out::Reply(id)).await;
                by_stream.insert(id, request.clone());
                let pair = pairs.entry(request).or_default();
                match kind.as_str() {
                    "error" => pair.error = Some(id),
                    "data" => {
                        pair.data = Some(id);
                        let (tx, rx) = mpsc::channel(16);
                        pair.to_pod = Some(tx);
                        forwards.spawn(forward_one(
                            st.clone(),
                            Target {
                                node: node.clone(),
                                ns: ns.clone(),
                                pod: pod.clone(),
                                port,
                            },
                            id,
                            pair.error,
                            rx,
                            client.out.clone(),
                        ));
                    }
                    _ => {
                        let _ = client.out.send(Out::Reset(id)).await;
                    }
                }
            }
            Event::Data { id, data, fin } => {
                let Some(pair) = by_stream.get(&id).and_then(|r| pairs.get_mut(r)) else {
                    continue;
                };
                if pair.data != Some(id) {
                    continue;
                }
                if let Some(tx) = &pair.to_pod {
                    if !data.is_empty() && tx.send(Some(data)).await.is_err() {
                        pair.to_pod = None;
                    } else if fin {
                        // Half closed: the sender stays, so the pod's answer still comes.
                        let _ = tx.send(None).await;
                    }
                }
            }
            Event::Reset { id } => {
                if let Some(r) = by_stream.remove(&id)
                    && let Some(pair) = pairs.get_mut(&r)
                {
                    pair.to_pod = None;
                }
            }
        }
        // Pairs whose connection ended are forgotten (with their streams).
        pairs.retain(|_, p| p.to_pod.as_ref().is_some_and(|t| !t.is_closed()) || p.data.is_none());
        by_stream.retain(|_, r| pairs.contains_key(r));
    }
    drop(pairs);
    forwards.abort_all();
    client.finish().await;
}

struct Target {
    node: String,
    ns: String,
    pod: String,
    port: u16,
}

/// One forwarded connection: a stream from the agent, spliced to the client's data stream.
async fn forward_one(
    st: Arc<AppState>,
    t: Target,
    data: u32,
    error: Option<u32>,
    mut from_client: mpsc::Receiver<Option<Vec<u8>>>,
    out: mpsc::Sender<Out>,
) {
    let tunnel = match open_tunnel(
        &st,
        &t.node,
        &t.ns,
        &t.pod,
        StreamKind::PortForward { port: t.port },
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            if let Some(id) = error {
                spdy::send(&out, id, e.0.message.as_bytes(), true).await;
            }
            spdy::send(&out, data, &[], true).await;
            return;
        }
    };
    let (rd, mut wr) = tokio::io::split(tunnel);
    let mut frames = tunnel_frames(rd);
    let to_pod = async move {
        // Some(data), Some(None) at the client's FIN (the pod's side may still answer), and
        // None once the client reset the stream or the session ended: then it all ends.
        while let Some(m) = from_client.recv().await {
            let ok = match m {
                Some(d) => stream::write(&mut wr, STDIN, &d).await.is_ok(),
                None => stream::write(&mut wr, CLOSE, &[STDIN]).await.is_ok(),
            };
            if !ok {
                break;
            }
        }
    };
    let from_pod = async {
        let mut data_open = true;
        while let Some((channel, d)) = frames.recv().await {
            match channel {
                STDOUT if !spdy::send(&out, data, &d, false).await => return,
                CLOSE => {
                    spdy::send(&out, data, &[], true).await;
                    data_open = false;
                }
                ERROR => {
                    if let Some(id) = error {
                        spdy::send(&out, id, &d, false).await;
                    }
                }
                _ => {}
            }
        }
        if data_open {
            spdy::send(&out, data, &[], true).await;
        }
    };
    tokio::select! {
        _ = to_pod => {}
        _ = from_pod => {}
    }
    if let Some(id) = error {
        spdy::send(&out, id, &[], true).await;
    }
}
