//! ConfigMap and Secret (`v1`): named key/value data that pods read as environment variables
//! and as files.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;

/// The most data one ConfigMap or Secret may hold, in bytes (Kubernetes' limit).
pub const MAX_DATA_BYTES: usize = 1 << 20;

/// A ConfigMap (`v1`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct ConfigMap {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Values as base64 text.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl ConfigMap {
    /// Every key with its bytes (`binaryData` decoded; an undecodable value, which
    /// validation refuses, is left out).
    pub fn entries(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out: BTreeMap<String, Vec<u8>> = self
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .collect();
        for (k, v) in &self.binary_data {
            if let Ok(b) = B64.decode(v) {
                out.insert(k.clone(), b);
            }
        }
        out
    }
}

/// A Secret (`v1`). `data` values are base64 text; `stringData` is write-only and is merged
/// into `data` when the object is stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Secret {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    /// `Opaque` (the default), `kubernetes.io/tls`, `kubernetes.io/dockerconfigjson`,
    /// `kubernetes.io/basic-auth`, `kubernetes.io/ssh-auth`, or a type of the user's own.
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub type_: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl Secret {
    /// Moves `stringData` into `data` (base64), as the API server does on every write;
    /// `stringData` wins over `data` for the same key. Sets the default type.
    pub fn normalize(&mut self) {
        for (k, v) in std::mem::take(&mut self.string_data) {
            self.data.insert(k, B64.encode(v.as_bytes()));
        }
        if self.type_.is_empty() {
            self.type_ = "Opaque".into();
        }
    }

    /// Every key with its bytes, `stringData` included (an undecodable `data` value, which
    /// validation refuses, is left out).
    pub fn entries(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.data {
            if let Ok(b) = B64.decode(v) {
                out.insert(k.clone(), b);
            }
        }
        for (k, v) in &self.string_data {
            out.insert(k.clone(), v.as_bytes().to_vec());
        }
        out
    }
}

/// Base64 text of `bytes`, as Secret `data` and ConfigMap `binaryData` hold them.
pub fn encode(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The bytes of base64 text; None when it is not base64.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    B64.decode(text).ok()
}

/// Why a ConfigMap or Secret key is not valid (Kubernetes' `IsConfigMapKey`).
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key must not be empty".into());
    }
    if key.len() > 253 {
        return Err(format!("{key:?} is longer than 253 characters"));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{key:?} is not a valid key: it must consist of letters, digits, '-', '_' or '.' (a file name)"
        ));
    }
    if key == "." || key == ".." || key.starts_with("..") {
        return Err(format!(
            "{key:?} is not a valid key: it must not be '.', '..' or start with '..'"
        ));
    }
    Ok(())
}

/// Why a volume item's `path` is not valid: relative, no `..` element, not starting with
/// `..` (those names are the volume's own bookkeeping).
pub fn check_item_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("Required value".into());
    }
    if path.starts_with('/') {
        return Err(format!("{path:?} must be a relative path"));
    }
    if path.len() > 4096 || path.contains('\0') {
        return Err(format!("{path:?} is not a valid path"));
    }
    if path.split('/').any(|p| p == ".." || p.is_empty()) {
        return Err(format!("{path:?} must not contain '..' or empty elements"));
    }
    if path.starts_with("..") {
        return Err(format!("{path:?} must not start with '..'"));
    }
    Ok(())
}

/// The keys a Secret of a built-in type must have, with what each is.
pub fn required_secret_keys(type_: &str) -> &'static [&'static str] {
    match type_ {
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        _ => &[],
    }
}
