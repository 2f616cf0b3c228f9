//! Image endpoints: import (admin), removal (admin), and the two reads agents make with their
//! node credentials: resolving a reference to its Image and fetching blobs by digest (with
//! `Range` for resumed downloads, and a bound on concurrent transfers so that a fleet pulling
//! at once queues instead of overwhelming a small master).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bramble_api::image::{Image, ImageRef, ImageSpec};
use bramble_api::{Kind, Object, Selector};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{Mutex, Semaphore};

use super::error::ApiError;
use super::{AppState, authorize, bearer};
use crate::images::{self, Blobs, ImageError};
use crate::store::{DeleteRequest, Op};

/// How many blob transfers run at once; more requests wait their turn.
pub const MAX_CONCURRENT_BLOBS: usize = 4;

/// The master's image service.
pub struct ImageService {
    pub blobs: Blobs,
    /// Imports, removals and blob collection one at a time.
    lock: Mutex<()>,
    transfers: Arc<Semaphore>,
}

impl ImageService {
    pub fn new(blobs: Blobs) -> Self {
        ImageService {
            blobs,
            lock: Mutex::new(()),
            transfers: Arc::new(Semaphore::new(MAX_CONCURRENT_BLOBS)),
        }
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Invalid(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", m),
            e @ ImageError::Io { .. } => ApiError::internal(e),
        }
    }
}

/// Admin token, or a joined node's own token.
fn authorize_reader(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if authorize(st, headers).is_ok() {
        return Ok(());
    }
    match st.enrollment.node_of_token(bearer(headers).unwrap_or("")) {
        Some(_) => Ok(()),
        None => authorize(st, headers),
    }
}

fn stored_images(st: &AppState) -> Vec<ImageSpec> {
    st.store
        .list(Kind::Image, None, &Selector::default())
        .1
        .iter()
        .filter_map(|e| match e.object() {
            Ok(Object::Image(i)) => Some(i.spec),
            _ => None,
        })
        .collect()
}

/// `POST /bramble/v1/images[?name=REF]`: the body is the archive, streamed to disk.
pub async fn import(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match do_import(&st, q.get("name").cloned(), &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn do_import(
    st: &Arc<AppState>,
    name: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(st, headers)?;
    if let Some(n) = &name {
        ImageRef::parse(n).map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
    }
    let _guard = st.images.lock.lock().await;
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let reader = tokio_util::io::StreamReader::new(stream);
    let blobs = st.images.blobs.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut sync = tokio_util::io::SyncIoBridge::new(reader);
        let r = images::import_archive(&blobs, &mut sync, name.as_deref());
        // Drain what the client still sends, so that it reads our answer.
        let _ = std::io::copy(&mut sync, &mut std::io::sink());
        r
    })
    .await
    .map_err(ApiError::internal)?;
    let imported = match result {
        Ok(i) => i,
        Err(e) => {
            collect_garbage(st).await;
            tracing::warn!(error = %e, "image import refused");
            return Err(e.into());
        }
    };
    let mut items = Vec::new();
    for i in &imported {
        let out = st.store.write(Op::Apply(images::image_object(i))).await?;
        tracing::info!(
            reference = i.reference,
            digest = i.spec.digest,
            "image imported"
        );
        items.push(out.entry().json.clone());
    }
    collect_garbage(st).await;
    let body = format!(
        "{{\"kind\":\"ImageList\",\"apiVersion\":\"bramble.io/v1\",\"items\":[{}]}}",
        items
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// Removes blobs that no Image references (the caller holds the lock).
async fn collect_garbage(st: &Arc<AppState>) {
    let keep_specs = stored_images(st);
    let blobs = st.images.blobs.clone();
    let freed = tokio::task::spawn_blocking(move || {
        let keep = images::referenced(&blobs, &keep_specs);
        blobs.collect(&keep)
    })
    .await
    .unwrap_or(0);
    if freed > 0 {
        tracing::info!(bytes = freed, "collected unused image blobs");
    }
}

/// `DELETE /bramble/v1/images?reference=REF[&force=true]`.
pub async fn remove(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    match do_remove(&st, &q, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn do_remove(
    st: &Arc<AppState>,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    authorize(st, headers)?;
    let r = q
        .get("reference")
        .ok_or_else(|| ApiError::bad_request("reference is required"))?;
    let r = ImageRef::parse(r).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let force = q.get("force").is_some_and(|v| v == "true");
    let _guard = st.images.lock.lock().await;
    let name = r.object_name();
    let Some(entry) = st.store.get(Kind::Image, "", &name) else {
        return Err(not_imported(&r.tagged()));
    };
    let pods: Vec<_> = st
        .store
        .list(Kind::Pod, None, &Selector::default())
        .1
        .iter()
        .filter_map(|e| match e.object() {
            Ok(Object::Pod(p)) => Some(p),
            _ => None,
        })
        .collect();
    let users = images::users(&pods, &r.tagged());
    if !users.is_empty() && !force {
        let shown: Vec<_> = users.iter().take(3).cloned().collect();
        let more = users.len().saturating_sub(3);
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "image {:?} is used by pod {}{}; delete those pods first or pass --force",
                r.tagged(),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ),
        ));
    }
    let obj = entry.object()?;
    st.store
        .write(Op::Delete(DeleteRequest {
            kind: Kind::Image,
            namespace: String::new(),
            name,
            grace_seconds: None,
            resource_version: None,
            orphan: false,
        }))
        .await?;
    collect_garbage(st).await;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        obj.to_json(),
    )
        .into_response())
}

fn not_imported(reference: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("image {reference:?} is not imported on the master (bramble image import FILE)"),
    )
}

/// `GET /bramble/v1/images/resolve?reference=REF`: the Image for a reference.
pub async fn resolve(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let run = || -> Result<Image, ApiError> {
        authorize_reader(&st, &headers)?;
        let r = q
            .get("reference")
            .ok_or_else(|| ApiError::bad_request("reference is required"))?;
        let r = ImageRef::parse(r).map_err(|e| ApiError::bad_request(e.to_string()))?;
        match st
            .store
            .get(Kind::Image, "", &r.object_name())
            .map(|e| e.object())
        {
            Some(Ok(Object::Image(i))) => Ok(i),
            _ => Err(not_imported(&r.tagged())),
        }
    };
    match run() {
        Ok(i) => Json(i).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /bramble/v1/blobs/{digest}`, honouring `Range: bytes=N-`.
pub async fn blob(
    State(st): State<Arc<AppState>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Response {
    match do_blob(&st, &digest, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn do_blob(st: &AppState, digest: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    authorize_reader(st, headers)?;
    let path = st
        .images
        .blobs
        .path(digest)
        .ok_or_else(|| ApiError::bad_request(format!("malformed digest {digest:?}")))?;
    let permit = st
        .images
        .transfers
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "shutting down",
            )
        })?;
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("blob {digest} is not on the master"),
            ));
        }
        Err(e) => {
            return Err(ApiError::internal(e));
        }
    };
    let len = file
        .metadata()
        .await
        .map(|m| m.len())
        .map_err(ApiError::internal)?;
    let start = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<u64>().ok());
    let (status, offset) = match start {
        Some(s) if s > len => {
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RequestedRangeNotSatisfiable",
                format!("blob {digest} has {len} bytes; range starts at {s}"),
            ));
        }
        Some(s) => (StatusCode::PARTIAL_CONTENT, s),
        None => (StatusCode::OK, 0),
    };
    if offset > 0 {
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(ApiError::internal)?;
    }
    // The permit travels with the stream: it is released when the transfer ends.
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len - offset), 64 << 10)
        .map(move |chunk| {
            let _held = &permit;
            chunk
        });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, (len - offset).into());
    h.insert(
        header::ACCEPT_RANGES,
        header::HeaderValue::from_static("bytes"),
    );
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = format!("bytes {offset}-{}/{len}", len.saturating_sub(1)).parse()
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}
