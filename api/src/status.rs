//! The Kubernetes `Status` body that every API error is returned as.

use serde::{Deserialize, Serialize};

use crate::error::Invalid;

/// An API error (or success message) body: `{"kind":"Status", ...}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Status {
    pub api_version: String,
    pub kind: String,
    /// `Success` or `Failure`.
    pub status: String,
    pub message: String,
    /// A machine-readable cause: `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `Gone`, ...
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    /// The HTTP status code.
    pub code: u16,
}

/// Which object and which fields the status is about.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct StatusDetails {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

/// One invalid field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct StatusCause {
    pub field: String,
    pub message: String,
}

impl Status {
    /// A failure with a reason and an HTTP code.
    pub fn failure(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Status {
            api_version: "v1".into(),
            kind: "Status".into(),
            status: "Failure".into(),
            message: message.into(),
            reason: reason.into(),
            details: None,
            code,
        }
    }

    /// The 422 body for an invalid object, one cause per field.
    pub fn invalid(kind: &str, name: &str, invalid: &Invalid) -> Self {
        let mut s = Status::failure(422, "Invalid", invalid.to_string());
        s.details = Some(StatusDetails {
            name: name.to_string(),
            kind: kind.to_string(),
            causes: invalid
                .errors
                .iter()
                .map(|e| StatusCause {
                    field: e.path.clone(),
                    message: e.message.clone(),
                })
                .collect(),
        });
        s
    }
}
