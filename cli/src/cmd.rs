//! One module per command.

pub mod apply;
pub mod create;
pub mod delete;
pub mod describe;
pub mod exec;
pub mod get;
pub mod image;
pub mod kubeconfig;
pub mod logs;
pub mod node;
pub mod rollout;
pub mod token;
pub mod top;

use anyhow::{Result, anyhow};
use bramble_api::{Kind, Object};

/// Resolves a kind typed by the user.
pub fn kind(text: &str) -> Result<Kind> {
    Kind::from_user(text).ok_or_else(|| {
        anyhow!(
            "unknown kind {text:?}; Bramble serves pods (po), deployments (deploy), services (svc), nodes (no), \
             namespaces (ns), endpoints (ep), configmaps (cm), secrets and events (ev)"
        )
    })
}

/// Puts an object in the namespace of `-n`, or "default"; a manifest that names another
/// namespace than an explicit `-n` is an error, as in kubectl.
pub fn place(obj: &mut Object, ns_flag: Option<&str>) -> Result<()> {
    if !obj.kind().namespaced() {
        return Ok(());
    }
    let desc = obj.describe();
    let m = obj.meta_mut();
    match (m.namespace.is_empty(), ns_flag) {
        (true, ns) => m.namespace = ns.unwrap_or("default").to_string(),
        (false, Some(ns)) if ns != m.namespace => {
            return Err(anyhow!(
                "{desc}: the namespace of the object ({:?}) does not match the namespace given with -n ({ns:?})",
                m.namespace
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    bramble_api::time::now_secs()
}
