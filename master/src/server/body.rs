//! Request bodies: size limit, content type, and decoding into a validated object.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use bramble_api::manifest::{decode, parse_body_documents};
use bramble_api::status::Status;
use bramble_api::{Kind, Object};
use bytes::Bytes;

use super::error::ApiError;
use super::path::Target;

/// The syntax of a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    /// Kubernetes' protobuf (kubectl's typed generators), for the kinds it knows.
    Protobuf,
}

/// Which media types a verb accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// POST and PUT: JSON or YAML.
    Object,
    /// PATCH: server-side apply only.
    ApplyPatch,
}

/// Reads the whole body, refusing more than `limit` bytes with 413.
///
/// An oversized body is still drained (up to eight times the limit) before the answer, so a
/// client that is still sending sees the 413 instead of a reset connection.
pub async fn read(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        total += chunk.len();
        if total > limit.saturating_mul(8) {
            break;
        }
        if total <= limit {
            buf.extend_from_slice(&chunk);
        }
    }
    if total > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("the request body is larger than the limit of {limit} bytes"),
        ));
    }
    Ok(buf.into())
}

/// Checks the Content-Type for the verb.
pub fn format(headers: &HeaderMap, accept: Accept) -> Result<Format, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let f = match (accept, media.as_str()) {
        // No Content-Type is JSON, the first media type served, as Kubernetes takes it
        // (kubectl 1.20's `create configmap` sends none).
        (Accept::Object, "application/json" | "") => Some(Format::Json),
        (Accept::Object, "application/yaml" | "application/x-yaml") => Some(Format::Yaml),
        (Accept::Object, super::protobuf::MEDIA_TYPE) => Some(Format::Protobuf),
        (Accept::ApplyPatch, "application/apply-patch+json") => Some(Format::Json),
        (Accept::ApplyPatch, "application/apply-patch+yaml") => Some(Format::Yaml),
        _ => None,
    };
    f.ok_or_else(|| {
        let wanted = match accept {
            Accept::Object => {
                "application/json or application/yaml (or application/vnd.kubernetes.protobuf for the kinds kubectl create makes)"
            }
            Accept::ApplyPatch => {
                "application/apply-patch+yaml or application/apply-patch+json (server-side apply), application/merge-patch+json or application/strategic-merge-patch+json"
            }
        };
        let got = if media.is_empty() {
            "no Content-Type".to_string()
        } else {
            format!("{media:?}")
        };
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the body must be {wanted}, got {got}"),
        )
    })
}

/// Bodies up to this size are decoded on the request's own task (a few milliseconds at
/// most); larger ones off the async workers.
const DECODE_INLINE_BYTES: usize = 16 << 10;
/// The longest a body may take to decode (waiting for a turn included). The shape checks
/// bound the work a hostile body can ask for; this bounds what a slow board makes of it.
const DECODE_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// Large bodies decoded at once, at most one per core: a burst of them queues instead of
/// taking every worker, so health checks, watches and small requests go on.
fn decode_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    })
}

/// [`object`], run on a blocking thread for a large body, within [`DECODE_BUDGET`].
pub async fn object_off_workers(
    bytes: Bytes,
    format: Format,
    target: &Target,
) -> Result<(Object, Vec<String>), ApiError> {
    if bytes.len() <= DECODE_INLINE_BYTES {
        return object(&bytes, format, target);
    }
    let too_slow = || {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "Timeout",
            format!(
                "decoding the body took more than {}s; send a smaller one",
                DECODE_BUDGET.as_secs()
            ),
        )
    };
    let t = target.clone();
    let work = async move {
        let slot = decode_slots()
            .acquire()
            .await
            .map_err(|_| ApiError::internal("the decoder is shutting down"))?;
        // The slot stays taken until the decoding ends, even if the request gave up.
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            object(&bytes, format, &t)
        })
        .await
        .map_err(ApiError::internal)?
    };
    tokio::time::timeout(DECODE_BUDGET, work)
        .await
        .map_err(|_| too_slow())?
}

/// Decodes a body into one validated object of the target's kind and place; returns it with
/// the warnings for unknown fields.
pub fn object(
    bytes: &[u8],
    format: Format,
    target: &Target,
) -> Result<(Object, Vec<String>), ApiError> {
    let value: serde_json::Value = match format {
        Format::Json => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?,
        Format::Protobuf => super::protobuf::decode(bytes).map_err(|e| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("the protobuf body cannot be read: {e}"),
            )
        })?,
        Format::Yaml => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
            let mut docs =
                parse_body_documents(text).map_err(|e| ApiError::bad_request(e.to_string()))?;
            if docs.len() != 1 {
                return Err(ApiError::bad_request(format!(
                    "the body must hold exactly one object, got {}",
                    docs.len()
                )));
            }
            docs.remove(0)
        }
    };
    let decoded = decode(value).map_err(|inv| {
        let (kind, name) = inv.what.split_once(' ').unwrap_or((inv.what.as_str(), ""));
        ApiError(Box::new(Status::invalid(
            kind,
            name.trim_matches('"'),
            &inv,
        )))
    })?;
    let mut obj = decoded.object;
    let kind: Kind = obj.kind();
    if kind != target.kind {
        return Err(ApiError::bad_request(format!(
            "the body is a {} but the request is for {}",
            kind.name(),
            target.kind.plural()
        )));
    }
    if kind.namespaced() {
        let path_ns = target.namespace.as_deref().unwrap_or("default");
        let m = obj.meta_mut();
        if m.namespace.is_empty() {
            m.namespace = path_ns.to_string();
        } else if m.namespace != path_ns {
            return Err(ApiError::bad_request(format!(
                "the namespace of the object ({:?}) does not match the namespace of the request ({path_ns:?})",
                m.namespace
            )));
        }
    }
    if let Some(name) = &target.name {
        if obj.meta().name.is_empty() {
            obj.meta_mut().name = name.clone();
        } else if obj.meta().name != *name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({:?}) does not match the name in the URL ({name:?})",
                obj.meta().name
            )));
        }
    }
    Ok((obj, decoded.warnings))
}
