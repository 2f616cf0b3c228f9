//! Credential revocation: a deleted Node's credentials are revoked at once — the file goes,
//! the broker refuses them at CONNECT, blob reads answer 401 — and its live MQTT connections
//! through the TLS front are cut; an event records it. Level-triggered: after a (re)list,
//! every enrolled node that has no Node object is revoked too (a delete missed while the
//! master was down).

use std::sync::Arc;

use bramble_api::node::Node;
use bramble_api::{Kind, Object};

use super::Controller;
use crate::broker::Sessions;
use crate::enrollment::Enrollment;
use crate::events::EventRecorder;
use crate::store::{Change, EventType, Store, StoreError};

pub struct Revocation {
    enrollment: Arc<Enrollment>,
    sessions: Arc<Sessions>,
    events: EventRecorder,
}

impl Revocation {
    pub fn new(store: &Store, enrollment: Arc<Enrollment>, sessions: Arc<Sessions>) -> Self {
        Revocation {
            enrollment,
            sessions,
            events: EventRecorder::new(store.clone(), "node-controller"),
        }
    }
}

impl Controller for Revocation {
    type Key = String;
    const NAME: &'static str = "revocation";
    const WATCHES: &'static [Kind] = &[Kind::Node];

    async fn resync(&mut self, store: &Store) -> Vec<String> {
        self.enrollment
            .nodes()
            .into_iter()
            .filter(|n| store.get(Kind::Node, "", n).is_none())
            .collect()
    }

    fn keys(&mut self, c: &Change) -> Vec<String> {
        match c.entry.object() {
            Ok(Object::Node(n)) if c.type_ == EventType::Deleted => vec![n.metadata.name],
            _ => Vec::new(),
        }
    }

    async fn reconcile(&mut self, store: &Store, node: &String) -> Result<(), StoreError> {
        // Joined again since (a new Node object with new credentials): nothing to revoke.
        if store.get(Kind::Node, "", node).is_some() {
            return Ok(());
        }
        let mut n = Node::default();
        n.metadata.name = node.clone();
        revoke(
            &self.enrollment,
            &self.sessions,
            &mut self.events,
            Object::Node(n),
            "the node was deleted",
        )
        .await
        .map_err(|e| {
            tracing::error!(node, error = %e, "cannot revoke a deleted node's credentials");
            StoreError::storage("revoking a node's credentials", e)
        })?;
        Ok(())
    }
}

/// Revokes `node`'s credential and cuts its live MQTT connections; when there was anything
/// to revoke, logs and records a `CredentialsRevoked` event on `node` saying `why`.
/// Returns (whether it held a credential, connections cut). The deleted-node controller
/// and `bramble token revoke-node` both come here.
pub async fn revoke(
    enrollment: &Enrollment,
    sessions: &Sessions,
    events: &mut EventRecorder,
    node: Object,
    why: &str,
) -> Result<(bool, usize), crate::credentials::CredentialError> {
    let name = node.meta().name.clone();
    let had = enrollment.revoke(&name)?;
    let cut = sessions.cut(&name);
    if had || cut > 0 {
        tracing::info!(node = %name, connections_cut = cut, why, "node credential revoked");
        events
            .record(
                node,
                "Normal",
                "CredentialsRevoked",
                &format!("{why}: its credential is revoked and {cut} MQTT connection(s) cut"),
            )
            .await;
    }
    Ok((had, cut))
}
