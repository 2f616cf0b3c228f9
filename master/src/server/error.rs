//! API errors as Kubernetes `Status` bodies with the matching HTTP code.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bramble_api::status::Status;

use crate::store::StoreError;

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError(pub Box<Status>);

impl ApiError {
    /// A failure with an HTTP code, a Kubernetes reason and a message.
    pub fn new(code: StatusCode, reason: &str, message: impl Into<String>) -> Self {
        ApiError(Box::new(Status::failure(code.as_u16(), reason, message)))
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 500 Internal Server Error.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            message.to_string(),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let msg = e.to_string();
        match e {
            StoreError::NotFound { .. } | StoreError::NamespaceNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "NotFound", msg)
            }
            StoreError::AlreadyExists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "AlreadyExists", msg)
            }
            StoreError::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, "Conflict", msg),
            StoreError::Invalid(inv) => {
                let (kind, name) = inv.what.split_once(' ').unwrap_or((inv.what.as_str(), ""));
                ApiError(Box::new(Status::invalid(
                    kind,
                    name.trim_matches('"'),
                    &inv,
                )))
            }
            StoreError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "Forbidden", msg),
            StoreError::Gone { .. } => ApiError::new(StatusCode::GONE, "Expired", msg),
            StoreError::Storage { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", msg)
            }
            StoreError::Closed => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", msg)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.0.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.0).unwrap_or_default();
        (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}
