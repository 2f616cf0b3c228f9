//! The network stream: the cluster's routes (each node's pod CIDR and address), Services
//! and Endpoints, published to agents and proxies. Every change goes once to the shared
//! [`SERVICES_TOPIC`] as a revisioned event; a node that (re)connects, or has missed an
//! event, says so in its hello and gets a snapshot on its own `network` topic, after which
//! the events chain on from the snapshot's revision (as the desired pods do).
//!
//! Revisions are the store's where they can be, and always increase: the stream watches
//! three kinds, whose changes may interleave out of store order, so an event gets
//! `max(store revision, last + 1)`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bramble_api::node::Node;
use bramble_api::wire::{
    Channel, Message, NetKey, NetObject, NetworkChange, NetworkSnapshot, NetworkUpdate, NodeRoute,
    ObjectJson, SERVICES_TOPIC, SNAPSHOT_PART_BYTES,
};
use bramble_api::{Kind, Object, Selector};
use bramble_support::Coalescing;
use rumqttc::{AsyncClient, QoS};
use tokio_util::sync::CancellationToken;

use crate::store::{Change, Entry, EventType, Store, WatchFilter};

/// The CIDRs every node is told.
#[derive(Debug, Clone, Default)]
pub struct Cidrs {
    pub cluster: String,
    pub service: String,
}

/// The route of a node, when it has both an address and a pod CIDR.
pub fn route_of(n: &Node) -> Option<NodeRoute> {
    let address = n
        .status
        .as_ref()?
        .addresses
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .clone();
    (!address.is_empty() && !n.spec.pod_cidr.is_empty()).then(|| NodeRoute {
        node: n.metadata.name.clone(),
        address,
        pod_cidr: n.spec.pod_cidr.clone(),
    })
}

/// The network object an entry stands for (None: a node without a route yet).
fn object_of(e: &Entry) -> Option<NetObject> {
    let json = || ObjectJson {
        namespace: e.namespace.clone(),
        name: e.name.clone(),
        json: e.json.to_vec(),
    };
    match e.kind {
        Kind::Service => Some(NetObject::Service(json())),
        Kind::Endpoints => Some(NetObject::Endpoints(json())),
        Kind::Node => match e.object() {
            Ok(Object::Node(n)) => route_of(&n).map(NetObject::Route),
            _ => None,
        },
        _ => None,
    }
}

fn key_of(e: &Entry) -> NetKey {
    match e.kind {
        Kind::Node => NetKey::Route(e.name.clone()),
        Kind::Service => NetKey::Service(e.namespace.clone(), e.name.clone()),
        _ => NetKey::Endpoints(e.namespace.clone(), e.name.clone()),
    }
}

/// The stream's state: what every node should know, at `revision`.
#[derive(Debug, Default)]
pub struct NetState {
    pub revision: u64,
    pub objects: BTreeMap<NetKey, NetObject>,
}

impl NetState {
    /// Folds one store change in; returns the event to publish, if the network changed.
    pub fn apply(&mut self, c: &Change) -> Option<NetworkUpdate> {
        let key = key_of(&c.entry);
        let next = if c.type_ == EventType::Deleted {
            None
        } else {
            object_of(&c.entry)
        };
        let change = match next {
            Some(o) if self.objects.get(&key) == Some(&o) => return None,
            Some(o) => {
                self.objects.insert(key, o.clone());
                NetworkChange::Upsert(o)
            }
            None => {
                self.objects.remove(&key)?;
                NetworkChange::Remove(key)
            }
        };
        let prev = self.revision;
        self.revision = c.revision.max(prev + 1);
        Some(NetworkUpdate {
            revision: self.revision,
            prev_revision: prev,
            change,
        })
    }

    /// Everything, as of the current revision, in parts of at most about
    /// [`SNAPSHOT_PART_BYTES`] of objects each.
    pub fn snapshot(&self, cidrs: &Cidrs) -> Vec<NetworkUpdate> {
        let size = |o: &NetObject| match o {
            NetObject::Route(r) => r.node.len() + r.address.len() + r.pod_cidr.len(),
            NetObject::Service(j) | NetObject::Endpoints(j) => {
                j.namespace.len() + j.name.len() + j.json.len()
            }
        };
        let mut chunks: Vec<Vec<NetObject>> = vec![Vec::new()];
        let mut bytes = 0;
        for o in self.objects.values() {
            let n = size(o) + 16;
            if bytes + n > SNAPSHOT_PART_BYTES && !chunks[chunks.len() - 1].is_empty() {
                chunks.push(Vec::new());
                bytes = 0;
            }
            bytes += n;
            if let Some(last) = chunks.last_mut() {
                last.push(o.clone());
            }
        }
        let parts = chunks.len() as u32;
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, objects)| NetworkUpdate {
                revision: self.revision,
                prev_revision: 0,
                change: NetworkChange::Snapshot(NetworkSnapshot {
                    cluster_cidr: cidrs.cluster.clone(),
                    service_cidr: cidrs.service.clone(),
                    objects,
                    part: i as u32,
                    parts,
                }),
            })
            .collect()
    }
}

fn all(kind: Kind) -> WatchFilter {
    WatchFilter::all(kind)
}

/// Runs the stream until `shutdown`; `snapshots` names nodes that asked for one, with the
/// stamp their snapshot carries.
pub async fn run(
    store: Store,
    client: AsyncClient,
    cidrs: Cidrs,
    wire_key: Arc<bramble_support::wire_auth::MasterKey>,
    enrollment: Arc<crate::enrollment::Enrollment>,
    snapshots: Arc<Coalescing<String, bramble_api::wire::Stamp>>,
    shutdown: CancellationToken,
) {
    let mut state = NetState::default();
    loop {
        // (Re)list: the state restarts, and every node that asks gets the new snapshot; a
        // node still on the old chain sees the next event's gap and asks.
        state.objects.clear();
        let mut watches = Vec::new();
        for kind in [Kind::Node, Kind::Service, Kind::Endpoints] {
            let (rev, items) = store.list(kind, None, &Selector::everything());
            for e in items {
                if let Some(o) = object_of(&e) {
                    state.objects.insert(key_of(&e), o);
                }
            }
            state.revision = state.revision.max(rev);
            match store.watch(all(kind), Some(rev)) {
                Ok(w) => watches.push(w),
                Err(e) => {
                    tracing::error!(error = %e, "the network stream cannot watch the store");
                    return;
                }
            }
        }
        let [mut nodes, mut services, mut endpoints]: [crate::store::Watch; 3] =
            match watches.try_into() {
                Ok(w) => w,
                Err(_) => return,
            };
        loop {
            let change = tokio::select! {
                _ = shutdown.cancelled() => return,
                asking = snapshots.take(64) => {
                    for (node, stamp) in asking {
                        for part in state.snapshot(&cidrs) {
                            let topic = Channel::Network.topic(&node);
                            let Some(secret) = enrollment.secret(&node) else { continue };
                            let msg = wire_key.seal_for(&topic, &node, &secret, stamp, Message::Network(part));
                            if let Err(e) = client.publish(topic, QoS::AtLeastOnce, false, msg).await {
                                tracing::warn!(node, error = %e, "cannot send a network snapshot");
                            }
                        }
                    }
                    continue;
                }
                c = nodes.next() => c,
                c = services.next() => c,
                c = endpoints.next() => c,
            };
            let Ok(c) = change else {
                tracing::warn!("a network stream watch ended; re-listing");
                break;
            };
            if let Some(update) = state.apply(&c) {
                let msg = wire_key.seal(SERVICES_TOPIC, "", Message::Network(update));
                if let Err(e) = client
                    .publish(SERVICES_TOPIC, QoS::AtLeastOnce, false, msg)
                    .await
                {
                    tracing::warn!(error = %e, "cannot publish a network event");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: Kind, ns: &str, name: &str, rev: u64, json: &str, deleted: bool) -> Change {
        let entry = Arc::new(Entry {
            kind,
            namespace: ns.into(),
            name: name.into(),
            revision: rev,
            labels: Default::default(),
            json: bytes::Bytes::copy_from_slice(json.as_bytes()),
        });
        let t = if deleted {
            EventType::Deleted
        } else {
            EventType::Modified
        };
        Change::new(t, entry)
    }

    fn node(name: &str, rev: u64, addr: &str, cidr: &str, ready: &str) -> Change {
        let json = format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}"}},"spec":{{"podCIDR":"{cidr}"}},"status":{{"addresses":[{{"type":"InternalIP","address":"{addr}"}}],"conditions":[{{"type":"Ready","status":"{ready}"}}]}}}}"#
        );
        change(Kind::Node, "", name, rev, &json, false)
    }

    #[test]
    fn a_large_snapshot_travels_in_parts_that_each_fit_a_message() {
        let mut s = NetState::default();
        let pad = "x".repeat(1000);
        for i in 0..3000u64 {
            let json =
                format!(r#"{{"kind":"Service","metadata":{{"annotations":{{"a":"{pad}"}}}}}}"#);
            s.apply(&change(
                Kind::Service,
                "default",
                &format!("svc-{i}"),
                i + 1,
                &json,
                false,
            ));
        }
        let parts = s.snapshot(&Cidrs::default());
        assert!(parts.len() >= 3, "{} parts", parts.len());
        let mut total = 0;
        let dir = tempfile::tempdir().unwrap();
        let key =
            bramble_support::wire_auth::MasterKey::load_or_create(&dir.path().join("k")).unwrap();
        for (i, p) in parts.iter().enumerate() {
            // Sealed, as sent: the frame and its signature fit too.
            let bytes = key.seal_for(
                &Channel::Network.topic("n"),
                "n",
                &bramble_support::wire_auth::NodeSecret::from_token("token"),
                bramble_api::wire::Stamp {
                    session: u64::MAX,
                    seq: u64::MAX,
                },
                Message::Network(p.clone()),
            );
            assert!(
                bytes.len() <= bramble_api::wire::MAX_MESSAGE_BYTES,
                "part {i}: {} bytes",
                bytes.len()
            );
            let NetworkChange::Snapshot(snap) = &p.change else {
                panic!("not a snapshot")
            };
            assert_eq!((snap.part, snap.parts), (i as u32, parts.len() as u32));
            assert_eq!(p.revision, s.revision);
            total += snap.objects.len();
        }
        assert_eq!(total, 3000);
    }

    #[test]
    fn only_route_changes_of_nodes_are_events_and_revisions_chain() {
        let mut s = NetState::default();
        // No pod CIDR yet: nothing to route to.
        assert!(s.apply(&node("a", 5, "192.0.2.1", "", "True")).is_none());
        let e = s
            .apply(&node("a", 6, "192.0.2.1", "10.42.0.0/24", "True"))
            .unwrap();
        assert_eq!((e.prev_revision, e.revision), (0, 6));
        assert!(
            matches!(e.change, NetworkChange::Upsert(NetObject::Route(ref r)) if r.pod_cidr == "10.42.0.0/24")
        );
        // A Ready flap rewrites the Node but not its route.
        assert!(
            s.apply(&node("a", 7, "192.0.2.1", "10.42.0.0/24", "False"))
                .is_none()
        );
        // A service change from a watch that lags behind still gets a later revision.
        let svc = change(
            Kind::Service,
            "default",
            "web",
            4,
            r#"{"kind":"Service"}"#,
            false,
        );
        let e = s.apply(&svc).unwrap();
        assert_eq!((e.prev_revision, e.revision), (6, 7));
        let gone = node("a", 9, "192.0.2.1", "10.42.0.0/24", "True");
        let gone = Change::new(EventType::Deleted, gone.entry);
        let e = s.apply(&gone).unwrap();
        assert_eq!((e.prev_revision, e.revision), (7, 9));
        assert_eq!(e.change, NetworkChange::Remove(NetKey::Route("a".into())));
        // Removing what is not there is no event.
        assert!(s.apply(&gone).is_none());
        let mut parts = s.snapshot(&Cidrs {
            cluster: "10.42.0.0/16".into(),
            service: "10.43.0.0/16".into(),
        });
        assert_eq!(parts.len(), 1);
        let snap = parts.remove(0);
        assert_eq!(snap.revision, 9);
        let NetworkChange::Snapshot(snap) = snap.change else {
            panic!("not a snapshot")
        };
        assert_eq!(snap.objects.len(), 1, "only the service is left");
        assert_eq!(snap.cluster_cidr, "10.42.0.0/16");
    }
}
