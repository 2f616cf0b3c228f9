//! The resource verbs: list, watch, get, create, update, apply (server-side apply PATCH),
//! delete, and status updates.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Query;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bramble_api::status::Status;
use bramble_api::{Kind, Object, Selector};
use bytes::Bytes;
use serde::Deserialize;

use super::AppState;
use super::body::{self, Accept};
use super::error::ApiError;
use super::path::Target;
use crate::store::{DeleteRequest, Op, Outcome, StoreError, Subresource, WatchFilter};

/// A query flag's truth as Kubernetes reads it (Go's `strconv.ParseBool`): the Python client
/// sends `watch=True`.
pub(super) fn truthy(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// The header that tells `bramble apply` what an apply did: created, configured or unchanged.
pub const APPLY_RESULT_HEADER: &str = "bramble-apply-result";

/// Dispatches one resource request; returns the verb and resource for metrics.
pub async fn handle(
    st: &Arc<AppState>,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    target: Target,
) -> (&'static str, &'static str, Response) {
    let query: HashMap<String, String> = Query::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    let resource = target.kind.plural();
    let watching = query.get("watch").is_some_and(|v| truthy(v));
    if target.log {
        let result = match method {
            Method::GET => super::nodes::logs(st, &target, &query).await,
            _ => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "logs are read with GET",
            )),
        };
        return (
            "logs",
            resource,
            result.unwrap_or_else(IntoResponse::into_response),
        );
    }
    if target.scale {
        let result = scale(st, &target, &method, headers, &query, body).await;
        return (
            "scale",
            resource,
            result.unwrap_or_else(IntoResponse::into_response),
        );
    }
    if target.kind == Kind::Image && !matches!(method, Method::GET | Method::DELETE) {
        return (
            "unknown",
            resource,
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "images are created by `bramble image import FILE` (POST /bramble/v1/images)",
            )
            .into_response(),
        );
    }
    if target.kind == Kind::Image && method == Method::DELETE {
        return (
            "delete",
            resource,
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "images are removed by `bramble image rm REF` (DELETE /bramble/v1/images?reference=REF)",
            )
            .into_response(),
        );
    }
    let (verb, result) = match (&method, target.name.is_some(), target.status) {
        (&Method::GET, false, _) if watching => ("watch", watch(st, &target, &query, headers)),
        (&Method::GET, false, _) => ("list", list(st, &target, &query, headers)),
        (&Method::POST, false, _) => ("create", create(st, &target, headers, &query, body).await),
        (&Method::GET, true, _) => ("get", get(st, &target, headers)),
        (&Method::PUT, true, status) => (
            "update",
            update(st, &target, headers, &query, body, status).await,
        ),
        (&Method::PATCH, true, false) => match super::patch::media(headers) {
            None => ("apply", apply(st, &target, headers, &query, body).await),
            Some(kind) => ("patch", patch(st, &target, &query, body, kind).await),
        },
        (&Method::DELETE, true, false) => {
            ("delete", delete(st, &target, &query, headers, body).await)
        }
        _ => (
            "unknown",
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not supported on {}", uri.path()),
            )),
        ),
    };
    (
        verb,
        resource,
        result.unwrap_or_else(IntoResponse::into_response),
    )
}

fn json_response(code: StatusCode, body: Bytes) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The fields a `fieldSelector` may name: what kubectl selects on (a deletion's wait, a
/// node's pods for `drain` and `describe node`, a pod's events for `describe pod`).
const SELECTABLE_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
    "involvedObject.kind",
    "involvedObject.name",
    "involvedObject.namespace",
    "involvedObject.uid",
    "type",
    "reason",
];

/// A `fieldSelector` (`=`, `==`, `!=` terms over [`SELECTABLE_FIELDS`], all to hold): (field,
/// equal, value). A field the object does not have reads as empty, as in Kubernetes.
#[derive(Debug, Default, Clone)]
struct Fields(Vec<(String, bool, String)>);

impl Fields {
    fn parse(text: &str) -> Result<Fields, ApiError> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "fieldSelector: {term:?} is not FIELD=VALUE"
                )));
            };
            let field = field.trim();
            if !SELECTABLE_FIELDS.contains(&field) {
                return Err(ApiError::bad_request(format!(
                    "fieldSelector: field {field:?} is not supported ({} are)",
                    SELECTABLE_FIELDS.join(", ")
                )));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(Fields(terms))
    }

    fn matches(&self, e: &crate::store::Entry) -> bool {
        // The stored JSON is read only for a field the entry does not carry.
        let mut doc: Option<serde_json::Value> = None;
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => e.name.clone(),
                "metadata.namespace" => e.namespace.clone(),
                other => {
                    let doc = doc
                        .get_or_insert_with(|| serde_json::from_slice(&e.json).unwrap_or_default());
                    let pointer = format!("/{}", other.replace('.', "/"));
                    doc.pointer(&pointer)
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("")
                        .to_string()
                }
            };
            (actual == *value) == *equal
        })
    }
}

fn selector(query: &HashMap<String, String>) -> Result<(Selector, Fields), ApiError> {
    let fields = match query.get("fieldSelector") {
        Some(f) => Fields::parse(f)?,
        None => Fields::default(),
    };
    let labels = match query.get("labelSelector") {
        Some(s) => {
            Selector::parse(s).map_err(|e| ApiError::bad_request(format!("labelSelector: {e}")))?
        }
        None => Selector::everything(),
    };
    Ok((labels, fields))
}

/// Whether the client asks for a Table (kubectl's server-side printing:
/// `Accept: application/json;as=Table;v=v1;g=meta.k8s.io,...`).
fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| media.split(';').any(|p| p.trim() == "as=Table"))
}

/// A watch event whose object is the changed object's one-row Table.
fn table_event(change: &crate::store::Change) -> Bytes {
    let e = &change.entry;
    let objects: Vec<Object> = e.object().into_iter().collect();
    let table = bramble_api::table::kube_table(
        e.kind,
        &objects,
        &e.revision.to_string(),
        bramble_api::time::now_secs(),
    );
    let event = serde_json::json!({"type": change.type_.as_str(), "object": table});
    let mut line = event.to_string().into_bytes();
    line.push(b'\n');
    line.into()
}

/// The objects as a Table with `bramble get`'s columns (and the next page's token).
fn table_response(
    kind: Kind,
    entries: &[Arc<crate::store::Entry>],
    revision: u64,
    next: Option<&(String, usize)>,
) -> Response {
    let objects: Vec<Object> = entries.iter().filter_map(|e| e.object().ok()).collect();
    let mut table = bramble_api::table::kube_table(
        kind,
        &objects,
        &revision.to_string(),
        bramble_api::time::now_secs(),
    );
    if let Some((token, left)) = next {
        table["metadata"]["continue"] = serde_json::json!(token);
        table["metadata"]["remainingItemCount"] = serde_json::json!(left);
    }
    json_response(StatusCode::OK, table.to_string().into())
}

fn list(
    st: &AppState,
    target: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (sel, fields) = selector(query)?;
    let (mut revision, mut items) = st
        .store
        .list(target.kind, target.namespace.as_deref(), &sel);
    items.retain(|e| fields.matches(e));
    let page = Page::of(query)?;
    if let Some(rv) = page.after.as_ref().map(|a| a.0) {
        revision = rv;
    }
    let (items, next) = page.cut(items, revision);
    let kind = target.kind;
    if wants_table(headers) {
        return Ok(table_response(kind, &items, revision, next.as_ref()));
    }
    let size: usize = items.iter().map(|e| e.json.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 128);
    let more = next
        .map(|(token, left)| format!(",\"continue\":\"{token}\",\"remainingItemCount\":{left}"))
        .unwrap_or_default();
    out.extend_from_slice(
        format!(
            "{{\"apiVersion\":\"{}\",\"kind\":\"{}List\",\"metadata\":{{\"resourceVersion\":\"{revision}\"{more}}},\"items\":[",
            kind.api_version(),
            kind.name()
        )
        .as_bytes(),
    );
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&e.json);
    }
    out.extend_from_slice(b"]}");
    Ok(json_response(StatusCode::OK, out.into()))
}

/// A list's chunk (`limit`, `continue`): a page of at most `limit` objects after the key the
/// token names. The token carries the revision of the first page, which later pages report
/// (their objects are read at the time of each page, not at that revision: a continuation
/// sees objects written since, as an inconsistent continue does in Kubernetes).
struct Page {
    limit: Option<usize>,
    /// (revision, namespace, name) of the last object of the previous page.
    after: Option<(u64, String, String)>,
}

impl Page {
    fn of(query: &HashMap<String, String>) -> Result<Page, ApiError> {
        let limit = match query.get("limit").map(String::as_str) {
            None | Some("") | Some("0") => None,
            Some(s) => Some(s.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ApiError::bad_request(format!("limit: {s:?} is not a positive number"))
            })?),
        };
        let after = match query.get("continue").map(String::as_str) {
            None | Some("") => None,
            Some(t) => Some(continue_key(t).ok_or_else(|| {
                ApiError::bad_request("continue key is not valid: it is not one this server made")
            })?),
        };
        Ok(Page { limit, after })
    }

    /// The page's entries and, when more follow, the next token and how many are left.
    fn cut(
        &self,
        mut items: Vec<Arc<crate::store::Entry>>,
        revision: u64,
    ) -> (Vec<Arc<crate::store::Entry>>, Option<(String, usize)>) {
        let key = |e: &crate::store::Entry| (e.namespace.clone(), e.name.clone());
        items.sort_by_key(|e| key(e));
        if let Some((_, ns, name)) = &self.after {
            let from = (ns.clone(), name.clone());
            items.retain(|e| key(e) > from);
        }
        match self.limit {
            Some(n) if items.len() > n => {
                let left = items.len() - n;
                items.truncate(n);
                let last = items.last().map(|e| key(e)).unwrap_or_default();
                let token = continue_token(revision, &last.0, &last.1);
                (items, Some((token, left)))
            }
            _ => (items, None),
        }
    }
}

fn continue_token(revision: u64, namespace: &str, name: &str) -> String {
    use base64::Engine;
    let v = serde_json::json!({"v": "meta.k8s.io/v1", "rv": revision, "start": format!("{namespace}/{name}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn continue_key(token: &str) -> Option<(u64, String, String)> {
    use base64::Engine;
    if token.len() > 4096 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let (ns, name) = v["start"].as_str()?.split_once('/')?;
    Some((v["rv"].as_u64()?, ns.to_string(), name.to_string()))
}

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// A watch without a timeout ends after this long (and a longer `timeoutSeconds` means it).
const NO_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The longest grace period a delete may ask for: ten years. Kubernetes takes any int64; a
/// larger one would put the deletion timestamp beyond what RFC 3339 can write.
const MAX_GRACE_SECONDS: i64 = 10 * 365 * 86_400;

fn grace_seconds(field: &str, v: Option<i64>, text: &str) -> Result<i64, ApiError> {
    v.filter(|g| (0..=MAX_GRACE_SECONDS).contains(g))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{field}: {text} is not a number of seconds from 0 to {MAX_GRACE_SECONDS}"
            ))
        })
}

fn watch(
    st: &Arc<AppState>,
    target: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (sel, fields) = selector(query)?;
    // kubectl get -w: each event's object is a one-row Table.
    let table = wants_table(headers);
    let from = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("resourceVersion: {s:?} is not a number"))
        })?),
    };
    // Longer than "no timeout" is no timeout (a huge value must not overflow the deadline).
    let timeout = match query.get("timeoutSeconds") {
        Some(s) => Some(
            Duration::from_secs(s.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("timeoutSeconds: {s:?} is not a number >= 0"))
            })?)
            .min(NO_TIMEOUT),
        ),
        None => None,
    };
    let filter = WatchFilter {
        kind: target.kind,
        also: Vec::new(),
        namespace: target.namespace.clone(),
        selector: sel,
    };
    let watch = st.store.watch(filter, from)?;
    let guard = st.metrics.watch_started();
    let shutdown = st.shutdown.clone();
    // A very distant deadline stands in for "no timeout" so the select stays uniform.
    let deadline = tokio::time::Instant::now() + timeout.unwrap_or(NO_TIMEOUT);
    // Bookmarks (client-go's reflectors ask): the revision reached, every minute and as the
    // watch times out, so that a client resumes from it rather than from an older one.
    let bookmarks = !table && query.get("allowWatchBookmarks").is_some_and(|v| truthy(v));
    let bookmark_kind = target.kind;
    struct S {
        watch: crate::store::Watch,
        done: bool,
        next_bookmark: tokio::time::Instant,
        _guard: crate::metrics::WatchGuard,
    }
    let state = S {
        watch,
        done: false,
        next_bookmark: tokio::time::Instant::now() + BOOKMARK_EVERY,
        _guard: guard,
    };
    let bookmark = move |w: &crate::store::Watch| -> Vec<Bytes> {
        w.bookmark()
            .map(|rv| {
                let line = format!(
                    "{{\"type\":\"BOOKMARK\",\"object\":{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{{\"resourceVersion\":\"{rv}\"}}}}}}\n",
                    bookmark_kind.name(),
                    bookmark_kind.api_version()
                );
                Bytes::from(line)
            })
            .into_iter()
            .collect()
    };
    let fields = Arc::new(fields);
    let stream = futures_util::stream::unfold(state, move |mut s| {
        let shutdown = shutdown.clone();
        let fields = fields.clone();
        async move {
            if s.done {
                return None;
            }
            tokio::select! {
                _ = shutdown.cancelled() => None,
                _ = tokio::time::sleep_until(deadline) => {
                    s.done = true;
                    bookmarks.then(|| (bookmark(&s.watch), s))
                }
                _ = tokio::time::sleep_until(s.next_bookmark), if bookmarks => {
                    s.next_bookmark = tokio::time::Instant::now() + BOOKMARK_EVERY;
                    let frames = bookmark(&s.watch);
                    Some((frames, s))
                }
                next = s.watch.next() => match next {
                    // A field-selected change is not sent (no frames).
                    Ok(change) if !fields.matches(&change.entry) => Some((Vec::new(), s)),
                    Ok(change) if table => Some((vec![table_event(&change)], s)),
                    Ok(change) => Some((change.line().to_vec(), s)),
                    Err(e @ StoreError::Gone { .. }) => {
                        // Tell the client to re-list, as the Kubernetes API does mid-stream.
                        let status = Status::failure(410, "Expired", e.to_string());
                        let line = format!(
                            "{{\"type\":\"ERROR\",\"object\":{}}}\n",
                            serde_json::to_string(&status).unwrap_or_default()
                        );
                        s.done = true;
                        Some((vec![Bytes::from(line)], s))
                    }
                    Err(_) => None,
                },
            }
        }
    });
    let stream = futures_util::StreamExt::flat_map(stream, |frames| {
        futures_util::stream::iter(frames.into_iter().map(Ok::<Bytes, Infallible>))
    });
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn get(st: &AppState, target: &Target, headers: &HeaderMap) -> Result<Response, ApiError> {
    let e = stored(st, target)?;
    if wants_table(headers) {
        return Ok(table_response(
            target.kind,
            std::slice::from_ref(&e),
            e.revision,
            None,
        ));
    }
    Ok(json_response(StatusCode::OK, e.json.clone()))
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        // Header values must be visible ASCII; field names from users may not be.
        let text: String = w
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// `fieldValidation=Strict` (what kubectl sends by default since 1.27): a field Bramble
/// does not know is an error, not a warning.
fn check_strict(query: &HashMap<String, String>, warnings: &[String]) -> Result<(), ApiError> {
    match query.get("fieldValidation").map(String::as_str) {
        Some("Strict") if !warnings.is_empty() => {
            let found: Vec<&str> = warnings
                .iter()
                .map(|w| w.trim_end_matches(" ignored"))
                .collect();
            Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                found.join(", ")
            )))
        }
        None | Some("" | "Ignore" | "Warn" | "Strict") => Ok(()),
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation: {other:?} is not Ignore, Warn or Strict"
        ))),
    }
}

/// `dryRun=All` (`kubectl diff`, `--dry-run=server`): everything but the write; the answer
/// is the object as decoded and validated. Another value is refused, never ignored (an
/// ignored dry run would change the cluster).
fn dry_run(query: &HashMap<String, String>) -> Result<bool, ApiError> {
    match query.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "dryRun: {other:?} is not All"
        ))),
    }
}

/// The answer to a dry run: the object that would have been written.
fn dry_answer(code: StatusCode, obj: &Object, warnings: &[String]) -> Response {
    with_warnings(json_response(code, obj.to_json().into()), warnings)
}

async fn create(
    st: &AppState,
    target: &Target,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: Body,
) -> Result<Response, ApiError> {
    let format = body::format(headers, Accept::Object)?;
    let bytes = body::read(body, st.max_body_bytes).await?;
    let (mut obj, warnings) = body::object_off_workers(bytes, format, target).await?;
    check_strict(query, &warnings)?;
    clear_user_status(&mut obj);
    if dry_run(query)? {
        return Ok(dry_answer(StatusCode::CREATED, &obj, &warnings));
    }
    let outcome = st.store.write(Op::Create(obj)).await?;
    Ok(with_warnings(
        json_response(StatusCode::CREATED, outcome.entry().json.clone()),
        &warnings,
    ))
}

/// Status is written by the system; a user's create starts without one (nodes excepted:
/// an agent registers its node with its status).
fn clear_user_status(obj: &mut Object) {
    let kind = obj.kind();
    if kind == Kind::Node {
        return;
    }
    let empty = match kind {
        Kind::Pod => Object::Pod(Default::default()),
        Kind::Deployment => Object::Deployment(Default::default()),
        Kind::ReplicaSet => Object::ReplicaSet(Default::default()),
        Kind::DaemonSet => Object::DaemonSet(Default::default()),
        Kind::Job => Object::Job(Default::default()),
        Kind::CronJob => Object::CronJob(Default::default()),
        Kind::Service => Object::Service(Default::default()),
        Kind::Namespace => Object::Namespace(Default::default()),
        _ => return,
    };
    obj.copy_status_from(&empty);
}

async fn update(
    st: &AppState,
    target: &Target,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: Body,
    status: bool,
) -> Result<Response, ApiError> {
    let format = body::format(headers, Accept::Object)?;
    let bytes = body::read(body, st.max_body_bytes).await?;
    let (obj, warnings) = body::object_off_workers(bytes, format, target).await?;
    check_strict(query, &warnings)?;
    if dry_run(query)? {
        return Ok(dry_answer(StatusCode::OK, &obj, &warnings));
    }
    let sub = if status {
        Subresource::Status
    } else {
        Subresource::Main
    };
    let outcome = st.store.write(Op::Update(obj, sub)).await?;
    Ok(with_warnings(
        json_response(StatusCode::OK, outcome.entry().json.clone()),
        &warnings,
    ))
}

async fn apply(
    st: &AppState,
    target: &Target,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: Body,
) -> Result<Response, ApiError> {
    let format = body::format(headers, Accept::ApplyPatch)?;
    let bytes = body::read(body, st.max_body_bytes).await?;
    let (mut obj, warnings) = body::object_off_workers(bytes, format, target).await?;
    check_strict(query, &warnings)?;
    clear_user_status(&mut obj);
    if dry_run(query)? {
        return Ok(dry_answer(StatusCode::OK, &obj, &warnings));
    }
    let outcome = st.store.write(Op::Apply(obj)).await?;
    let (code, result) = match &outcome {
        Outcome::Created(_) => (StatusCode::CREATED, "created"),
        Outcome::Unchanged(_) => (StatusCode::OK, "unchanged"),
        _ => (StatusCode::OK, "configured"),
    };
    let mut resp = json_response(code, outcome.entry().json.clone());
    resp.headers_mut().insert(
        HeaderName::from_static(APPLY_RESULT_HEADER),
        HeaderValue::from_static(result),
    );
    Ok(with_warnings(resp, &warnings))
}

/// The stored object the request names, or 404.
fn stored(st: &AppState, target: &Target) -> Result<Arc<crate::store::Entry>, ApiError> {
    let name = target.name.as_deref().unwrap_or("");
    let ns = target.namespace.as_deref().unwrap_or("");
    st.store.get(target.kind, ns, name).ok_or_else(|| {
        StoreError::NotFound {
            kind: target.kind,
            name: name.to_string(),
        }
        .into()
    })
}

/// A patch that cannot be applied: 422 naming where.
fn unpatchable(e: super::patch::PatchError) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string())
}

/// A merge or strategic merge patch: applied to the stored object and written as an update
/// conditional on the version patched (a concurrent write makes it start over, up to five
/// times, unless the patch names a resourceVersion of its own).
async fn patch(
    st: &AppState,
    target: &Target,
    query: &HashMap<String, String>,
    body: Body,
    kind: super::patch::Kind,
) -> Result<Response, ApiError> {
    let bytes = body::read(body, st.max_body_bytes).await?;
    let patch: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the patch is not JSON: {e}")))?;
    let pinned = patch
        .pointer("/metadata/resourceVersion")
        .is_some_and(|v| !v.is_null());
    let mut attempts = 0;
    loop {
        attempts += 1;
        let entry = stored(st, target)?;
        let current: serde_json::Value = serde_json::from_slice(&entry.json)
            .map_err(|e| ApiError::bad_request(format!("the stored object: {e}")))?;
        let patched = super::patch::apply(&current, &patch, kind).map_err(unpatchable)?;
        let json = Bytes::from(serde_json::to_vec(&patched).unwrap_or_default());
        let (obj, warnings) = body::object_off_workers(json, body::Format::Json, target).await?;
        check_strict(query, &warnings)?;
        if dry_run(query)? {
            return Ok(dry_answer(StatusCode::OK, &obj, &warnings));
        }
        match st.store.write(Op::Update(obj, Subresource::Main)).await {
            Ok(outcome) => {
                return Ok(with_warnings(
                    json_response(StatusCode::OK, outcome.entry().json.clone()),
                    &warnings,
                ));
            }
            Err(StoreError::Conflict { .. }) if !pinned && attempts < 5 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The `autoscaling/v1` Scale of a Deployment or ReplicaSet.
fn scale_of(obj: &Object) -> Option<serde_json::Value> {
    let (meta, replicas, current, selector) = match obj {
        Object::Deployment(d) => (
            &d.metadata,
            d.spec.replicas.unwrap_or(1),
            d.status.as_ref().map_or(0, |s| s.replicas),
            &d.spec.selector,
        ),
        Object::ReplicaSet(r) => (
            &r.metadata,
            r.spec.replicas.unwrap_or(1),
            r.status.as_ref().map_or(0, |s| s.replicas),
            &r.spec.selector,
        ),
        _ => return None,
    };
    let selector = Selector::from_label_selector(selector, "spec.selector")
        .map(|s| s.to_string())
        .unwrap_or_default();
    Some(serde_json::json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
            "resourceVersion": meta.resource_version,
            "creationTimestamp": meta.creation_timestamp,
        },
        "spec": {"replicas": replicas},
        "status": {"replicas": current, "selector": selector},
    }))
}

/// `GET`, `PUT` and `PATCH` of `.../{name}/scale` (`kubectl scale`): the replica count as an
/// `autoscaling/v1` Scale; a write sets `spec.replicas` (conditional on a resourceVersion
/// the Scale names; retried on a concurrent write otherwise).
async fn scale(
    st: &AppState,
    target: &Target,
    method: &Method,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: Body,
) -> Result<Response, ApiError> {
    let read = || -> Result<(Object, serde_json::Value), ApiError> {
        let obj = stored(st, target)?.object()?;
        let scale = scale_of(&obj).unwrap_or_default();
        Ok((obj, scale))
    };
    let change: serde_json::Value = match *method {
        Method::GET => {
            let (_, scale) = read()?;
            return Ok(json_response(StatusCode::OK, scale.to_string().into()));
        }
        Method::PUT | Method::PATCH => {
            let bytes = body::read(body, st.max_body_bytes).await?;
            serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::bad_request(format!("the Scale is not JSON: {e}")))?
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not supported on a scale subresource"),
            ));
        }
    };
    let patch_kind = match *method {
        Method::PATCH => Some(super::patch::media(headers).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "a Scale is patched with application/json-patch+json, application/merge-patch+json or application/strategic-merge-patch+json",
            )
        })?),
        _ => None,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (mut obj, current) = read()?;
        let wanted = match patch_kind {
            Some(kind) => super::patch::apply(&current, &change, kind).map_err(unpatchable)?,
            None => change.clone(),
        };
        let replicas = wanted
            .pointer("/spec/replicas")
            .and_then(serde_json::Value::as_i64)
            .filter(|r| (0..=i64::from(i32::MAX)).contains(r))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "spec.replicas: must be a number from 0 to 2147483647",
                )
            })? as i32;
        let pinned = wanted
            .pointer("/metadata/resourceVersion")
            .and_then(serde_json::Value::as_str)
            .filter(|v| !v.is_empty() && patch_kind.is_none())
            .map(str::to_string);
        if let Some(v) = &pinned {
            obj.meta_mut().resource_version = v.clone();
        }
        match &mut obj {
            Object::Deployment(d) => d.spec.replicas = Some(replicas),
            Object::ReplicaSet(r) => r.spec.replicas = Some(replicas),
            _ => {}
        }
        if dry_run(query)? {
            let scale = scale_of(&obj).unwrap_or_default();
            return Ok(json_response(StatusCode::OK, scale.to_string().into()));
        }
        match st.store.write(Op::Update(obj, Subresource::Main)).await {
            Ok(outcome) => {
                let scale = scale_of(&outcome.entry().object()?).unwrap_or_default();
                return Ok(json_response(StatusCode::OK, scale.to_string().into()));
            }
            Err(StoreError::Conflict { .. }) if pinned.is_none() && attempt < 5 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The optional DELETE body, as Kubernetes' `DeleteOptions`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct DeleteOptions {
    grace_period_seconds: Option<i64>,
    preconditions: Option<Preconditions>,
    propagation_policy: Option<String>,
    orphan_dependents: Option<bool>,
    dry_run: Vec<String>,
}

impl DeleteOptions {
    /// Reads a body: JSON, or Kubernetes protobuf (client-go's typed clients, as `kubectl
    /// drain` sends DeleteOptions and Evictions). Nothing is dropped: a body that cannot be
    /// read is an error.
    fn read<T: serde::de::DeserializeOwned + Default>(
        headers: &HeaderMap,
        bytes: &[u8],
        what: &str,
    ) -> Result<T, ApiError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        let protobuf = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with(super::protobuf::MEDIA_TYPE));
        let value = if protobuf {
            let v = super::protobuf::decode(bytes).map_err(|e| {
                ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!("{what}: {e}"),
                )
            })?;
            if v["kind"] != what {
                return Err(ApiError::bad_request(format!(
                    "the body is a {} where a {what} belongs",
                    v["kind"]
                )));
            }
            v
        } else {
            serde_json::from_slice(bytes)
                .map_err(|e| ApiError::bad_request(format!("{what}: {e}")))?
        };
        serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
    }

    /// A dry run asked for in the query or the options (`All`, the only value).
    fn dry_run(&self, query: &HashMap<String, String>) -> Result<bool, ApiError> {
        let in_body = match self.dry_run.as_slice() {
            [] => false,
            [all] if all == "All" => true,
            other => {
                return Err(ApiError::bad_request(format!(
                    "dryRun: {other:?} is not [\"All\"]"
                )));
            }
        };
        Ok(dry_run(query)? || in_body)
    }
}

/// `propagationPolicy` (query or body): Background, Foreground taken as Background (the owner
/// goes first, its dependents after it, as the garbage collector finds them), and Orphan
/// (or the older `orphanDependents=true`): the dependents lose their reference to the owner in
/// the deletion's own transaction and stay. Returns whether to orphan.
fn check_propagation(
    query: &HashMap<String, String>,
    opts: &DeleteOptions,
) -> Result<bool, ApiError> {
    let policy = query
        .get("propagationPolicy")
        .cloned()
        .or_else(|| opts.propagation_policy.clone());
    let orphan = query
        .get("orphanDependents")
        .map(|v| truthy(v))
        .or(opts.orphan_dependents)
        .unwrap_or(false);
    match policy.as_deref() {
        Some(_) if orphan => Err(ApiError::bad_request(
            "propagationPolicy and orphanDependents may not both be set",
        )),
        None | Some("Background") | Some("Foreground") => Ok(orphan),
        Some("Orphan") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "propagationPolicy: {other:?} is not one of Background, Foreground, Orphan"
        ))),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Preconditions {
    resource_version: Option<String>,
}

async fn delete(
    st: &AppState,
    target: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = body::read(body, st.max_body_bytes).await?;
    let opts: DeleteOptions = DeleteOptions::read(headers, &bytes, "DeleteOptions")?;
    let orphan = check_propagation(query, &opts)?;
    // The query wins over the body, as in Kubernetes; both are checked the same way.
    let grace = match (query.get("gracePeriodSeconds"), opts.grace_period_seconds) {
        (Some(s), _) => Some(grace_seconds(
            "gracePeriodSeconds",
            s.parse().ok(),
            &format!("{s:?}"),
        )?),
        (None, Some(g)) => Some(grace_seconds(
            "DeleteOptions.gracePeriodSeconds",
            Some(g),
            &g.to_string(),
        )?),
        (None, None) => None,
    };
    let resource_version =
        match opts
            .preconditions
            .as_ref()
            .and_then(|p| p.resource_version.clone())
        {
            Some(s) => Some(s.parse::<u64>().map_err(|_| {
                ApiError::bad_request("preconditions.resourceVersion is not a number")
            })?),
            None => None,
        };
    let req = DeleteRequest {
        kind: target.kind,
        namespace: target.namespace.clone().unwrap_or_default(),
        name: target.name.clone().unwrap_or_default(),
        grace_seconds: grace,
        resource_version,
        orphan,
    };
    if opts.dry_run(query)? {
        return Ok(json_response(
            StatusCode::OK,
            stored(st, target)?.json.clone(),
        ));
    }
    let outcome = st.store.write(Op::Delete(req)).await?;
    let code = match outcome {
        Outcome::Terminating(_) => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    Ok(json_response(code, outcome.entry().json.clone()))
}

/// An Eviction's body: only its delete options matter (there are no disruption budgets).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Eviction {
    delete_options: Option<DeleteOptions>,
}

/// `POST /api/v1/namespaces/{ns}/pods/{name}/eviction` (`policy/v1` or `v1beta1` Eviction, as
/// `kubectl drain` sends it): a graceful delete of the pod. Bramble has no
/// PodDisruptionBudgets, so an eviction is never refused for one. A protobuf body (client-go's
/// typed clients) is read as none.
pub async fn evict(
    axum::extract::State(st): axum::extract::State<Arc<AppState>>,
    axum::extract::Path((ns, name)): axum::extract::Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match do_evict(&st, ns, name, &query, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn do_evict(
    st: &AppState,
    namespace: String,
    name: String,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    super::authorize(st, headers)?;
    let bytes = body::read(body, st.max_body_bytes).await?;
    let opts = DeleteOptions::read::<Eviction>(headers, &bytes, "Eviction")?
        .delete_options
        .unwrap_or_default();
    let orphan = check_propagation(&HashMap::new(), &opts)?;
    let grace = opts
        .grace_period_seconds
        .map(|g| grace_seconds("deleteOptions.gracePeriodSeconds", Some(g), &g.to_string()))
        .transpose()?;
    let status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201,
    });
    if opts.dry_run(query)? {
        // Nothing is deleted; the pod must exist.
        if st.store.get(Kind::Pod, &namespace, &name).is_none() {
            return Err(ApiError::from(StoreError::NotFound {
                kind: Kind::Pod,
                name,
            }));
        }
        return Ok(json_response(
            StatusCode::CREATED,
            status.to_string().into(),
        ));
    }
    st.store
        .write(Op::Delete(DeleteRequest {
            kind: Kind::Pod,
            namespace,
            name,
            grace_seconds: grace,
            resource_version: None,
            orphan,
        }))
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        status.to_string().into(),
    ))
}
