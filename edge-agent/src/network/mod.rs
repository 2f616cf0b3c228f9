//! Pod networking on the node: the network state the master streams (routes to the other
//! nodes' pod CIDRs, Services and Endpoints), pod IP allocation from this node's pod CIDR,
//! and the dataplane that wires pods to a bridge (see [`dataplane`]).
//!
//! Pod IPs live in the pod records of the agent's store (written with the rest of the
//! record), so an address is taken only by a record that exists, is released when the
//! record is dropped, and is never handed out twice. New addresses go round-robin through
//! the CIDR, so a just-released address is not reused at once (stale conntrack entries and
//! endpoints still point at it).

pub mod dataplane;
pub mod dns;
pub mod netlink;
pub mod proxy;

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bramble_api::service::{Endpoints, Service};
use bramble_api::wire::{
    NetKey, NetObject, NetworkChange, NetworkSnapshot, NetworkUpdate, NodeRoute,
};
use serde::{Deserialize, Serialize};

pub use bramble_api::net::Cidr;

/// The bridge's address in a pod CIDR: its first host address.
pub fn gateway(cidr: Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.base).wrapping_add(1))
}

/// The addresses pods may get: after the gateway, before the broadcast address.
fn pod_range(cidr: Cidr) -> (u32, u32) {
    (
        u32::from(cidr.base).saturating_add(2),
        u32::from(cidr.last()).saturating_sub(1),
    )
}

/// The next free pod address after `after` (round-robin), or None when the CIDR is full.
pub fn allocate(cidr: Cidr, used: &HashSet<Ipv4Addr>, after: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    let (first, last) = pod_range(cidr);
    if last < first {
        return None;
    }
    let n = last - first + 1;
    let start = match after.map(u32::from) {
        Some(a) if a >= first && a < last => a + 1 - first,
        _ => 0,
    };
    (0..n)
        .map(|i| Ipv4Addr::from(first + (start + i) % n))
        .find(|ip| !used.contains(ip))
}

/// Hands out pod addresses from the node's pod CIDR, round-robin, so that an address a pod
/// just gave up is not handed to the next pod at once.
#[derive(Debug, Default)]
pub struct PodIps {
    last: Option<Ipv4Addr>,
}

impl PodIps {
    /// The pod's address: the one it `held`, while that is inside `cidr`, else the next one
    /// that no pod in `used` holds. None: the CIDR is full.
    pub fn assign<'a>(
        &mut self,
        cidr: Cidr,
        held: &str,
        used: impl Iterator<Item = &'a str>,
    ) -> Option<Ipv4Addr> {
        if let Ok(ip) = held.parse::<Ipv4Addr>()
            && cidr.contains(ip)
        {
            return Some(ip);
        }
        let used: HashSet<Ipv4Addr> = used.filter_map(|s| s.parse().ok()).collect();
        let ip = allocate(cidr, &used, self.last)?;
        self.last = Some(ip);
        Some(ip)
    }
}

/// What a network message did.
#[derive(Debug, PartialEq, Eq)]
pub enum NetApplied {
    /// Nothing new (an old or repeated event).
    Unchanged,
    /// Applied: whether the routes (or CIDRs) and whether Services or Endpoints changed.
    Changed { routes: bool, services: bool },
    /// An event does not follow the last applied revision: ask for a snapshot.
    Gap,
}

/// The cluster's network as this node knows it.
#[derive(Debug, Default)]
pub struct NetView {
    pub revision: u64,
    pub snapshot_seen: bool,
    pub cluster_cidr: String,
    pub service_cidr: String,
    pub routes: BTreeMap<String, NodeRoute>,
    pub services: BTreeMap<(String, String), Service>,
    pub endpoints: BTreeMap<(String, String), Endpoints>,
    /// Events that arrived ahead of the snapshot they follow (topics may be delivered out
    /// of order): replayed once the snapshot is in.
    early: Vec<NetworkUpdate>,
    /// The parts of a snapshot still being received: its revision and the parts so far.
    parts: Option<(u64, Vec<Option<NetworkSnapshot>>)>,
}

/// The object when the API's validation accepts it.
fn valid(obj: bramble_api::Object) -> Option<bramble_api::Object> {
    let errors = bramble_api::validate::validate(&obj);
    match errors.first() {
        None => Some(obj),
        Some(e) => {
            tracing::warn!(kind = ?obj.kind(), error = %e, "refused by validation");
            None
        }
    }
}

/// Events kept while waiting for a snapshot.
const MAX_EARLY: usize = 4096;

impl NetView {
    /// Applies a snapshot or an event.
    pub fn apply(&mut self, u: NetworkUpdate) -> NetApplied {
        match u.change {
            NetworkChange::Snapshot(part) => {
                let Some(s) = self.collect(u.revision, part) else {
                    return NetApplied::Unchanged;
                };
                self.routes.clear();
                self.services.clear();
                self.endpoints.clear();
                self.cluster_cidr = s.cluster_cidr;
                self.service_cidr = s.service_cidr;
                self.revision = u.revision;
                self.snapshot_seen = true;
                for o in s.objects {
                    self.upsert(o);
                }
                let mut early = std::mem::take(&mut self.early);
                early.sort_by_key(|e| e.revision);
                for e in early {
                    if e.revision > self.revision {
                        // A gap here is answered by the next event's gap.
                        let _ = self.apply(e);
                    }
                }
                NetApplied::Changed {
                    routes: true,
                    services: true,
                }
            }
            change => {
                if u.revision <= self.revision && self.snapshot_seen {
                    return NetApplied::Unchanged;
                }
                if u.prev_revision != self.revision || !self.snapshot_seen {
                    if self.early.len() < MAX_EARLY {
                        self.early.push(NetworkUpdate {
                            revision: u.revision,
                            prev_revision: u.prev_revision,
                            change,
                        });
                    }
                    return NetApplied::Gap;
                }
                self.revision = u.revision;
                let routes = match change {
                    NetworkChange::Upsert(o) => self.upsert(o),
                    NetworkChange::Remove(k) => self.remove(&k),
                    NetworkChange::Snapshot(_) => false,
                };
                NetApplied::Changed {
                    routes,
                    services: !routes,
                }
            }
        }
    }

    /// Adds a snapshot part; returns the whole snapshot once every part of its revision has
    /// arrived. A part of another revision starts over.
    fn collect(&mut self, revision: u64, part: NetworkSnapshot) -> Option<NetworkSnapshot> {
        let parts = part.parts.max(1) as usize;
        let i = part.part as usize;
        if i >= parts {
            tracing::warn!(
                part = i,
                parts,
                "ignoring a network snapshot part out of range"
            );
            return None;
        }
        if parts == 1 {
            return Some(part);
        }
        let fresh = !matches!(&self.parts, Some((r, v)) if *r == revision && v.len() == parts);
        if fresh {
            self.parts = Some((revision, vec![None; parts]));
        }
        let (_, have) = self.parts.as_mut()?;
        have[i] = Some(part);
        if have.iter().any(Option::is_none) {
            return None;
        }
        let (_, have) = self.parts.take()?;
        let mut whole: Option<NetworkSnapshot> = None;
        for p in have.into_iter().flatten() {
            match &mut whole {
                None => whole = Some(p),
                Some(w) => w.objects.extend(p.objects),
            }
        }
        whole
    }

    /// Returns whether a route changed.
    fn upsert(&mut self, o: NetObject) -> bool {
        match o {
            NetObject::Route(r) => {
                self.routes.insert(r.node.clone(), r);
                true
            }
            // Services and Endpoints are validated with the API's rules before they can reach
            // iptables-restore.
            NetObject::Service(j) => {
                match serde_json::from_slice::<Service>(&j.json) {
                    Ok(s) => match valid(bramble_api::Object::Service(s)) {
                        Some(bramble_api::Object::Service(s)) => {
                            self.services.insert((j.namespace, j.name), s);
                        }
                        _ => tracing::warn!(name = j.name, "ignoring an invalid Service"),
                    },
                    Err(e) => {
                        tracing::warn!(name = j.name, error = %e, "ignoring an undecodable Service")
                    }
                }
                false
            }
            NetObject::Endpoints(j) => {
                match serde_json::from_slice::<Endpoints>(&j.json) {
                    Ok(s) => match valid(bramble_api::Object::Endpoints(s)) {
                        Some(bramble_api::Object::Endpoints(s)) => {
                            self.endpoints.insert((j.namespace, j.name), s);
                        }
                        _ => tracing::warn!(name = j.name, "ignoring invalid Endpoints"),
                    },
                    Err(e) => {
                        tracing::warn!(name = j.name, error = %e, "ignoring undecodable Endpoints")
                    }
                }
                false
            }
        }
    }

    fn remove(&mut self, k: &NetKey) -> bool {
        match k {
            NetKey::Route(n) => {
                self.routes.remove(n);
                true
            }
            NetKey::Service(ns, n) => {
                self.services.remove(&(ns.clone(), n.clone()));
                false
            }
            NetKey::Endpoints(ns, n) => {
                self.endpoints.remove(&(ns.clone(), n.clone()));
                false
            }
        }
    }

    /// Routes to every other node's pod CIDR: (CIDR, via address). Only a CIDR inside the
    /// cluster CIDR, through an address outside it that is a unicast host address, is
    /// routed: a view that names anything else (the default route, the board's own LAN, a
    /// pod as gateway) is refused and logged.
    pub fn peer_routes(&self, node: &str) -> Vec<(Cidr, Ipv4Addr)> {
        let Ok(cluster) = Cidr::parse(&self.cluster_cidr) else {
            return Vec::new();
        };
        self.routes
            .values()
            .filter(|r| r.node != node)
            .filter_map(|r| {
                let cidr = Cidr::parse(&r.pod_cidr).ok()?;
                let via: Ipv4Addr = r.address.parse().ok()?;
                let ok = cidr.prefix >= cluster.prefix
                    && cluster.contains(cidr.base)
                    && !cluster.contains(via)
                    && !(via.is_loopback()
                        || via.is_unspecified()
                        || via.is_multicast()
                        || via.is_broadcast());
                if !ok {
                    tracing::warn!(node = r.node, cidr = %cidr, via = %via, cluster = %cluster, "ignoring a route outside the cluster CIDR or through a bad address");
                    return None;
                }
                Some((cidr, via))
            })
            .collect()
    }
}

/// What the node keeps of the network across restarts (so pods come back with their
/// network before the master is reachable): its own pod CIDR, the cluster CIDR, the routes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeNetwork {
    pub pod_cidr: String,
    pub cluster_cidr: String,
    pub routes: Vec<(String, String)>,
}

/// The node's pod network: its CIDR (once the master has assigned one) and, on a real node,
/// the dataplane. Shared by the pod manager (pod IPs, attach/detach) and the agent's loop
/// (routes, CIDR updates).
pub struct PodNetwork {
    pub dataplane: Option<dataplane::Dataplane>,
    state: Mutex<NodeNetwork>,
    path: PathBuf,
}

impl PodNetwork {
    /// Loads what was kept in `<data>/network.json`.
    pub fn load(data_dir: &Path, dataplane: Option<dataplane::Dataplane>) -> PodNetwork {
        let path = data_dir.join("network.json");
        let state = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        PodNetwork {
            dataplane,
            state: Mutex::new(state),
            path,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NodeNetwork> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's pod CIDR, once known.
    pub fn pod_cidr(&self) -> Option<Cidr> {
        Cidr::parse(&self.lock().pod_cidr).ok()
    }

    /// The cluster CIDR, once known.
    pub fn cluster_cidr(&self) -> String {
        self.lock().cluster_cidr.clone()
    }

    /// Takes this node's part of the view; returns whether it changed (and writes it).
    pub fn update(&self, node: &str, view: &NetView) -> bool {
        let next = NodeNetwork {
            pod_cidr: view
                .routes
                .get(node)
                .map(|r| r.pod_cidr.clone())
                .unwrap_or_else(|| self.lock().pod_cidr.clone()),
            cluster_cidr: view.cluster_cidr.clone(),
            routes: view
                .peer_routes(node)
                .into_iter()
                .map(|(c, v)| (c.to_string(), v.to_string()))
                .collect(),
        };
        let mut st = self.lock();
        if *st == next {
            return false;
        }
        *st = next;
        if let Ok(bytes) = serde_json::to_vec(&*st)
            && let Err(e) = bramble_support::fs::write_atomic(&self.path, &bytes, 0o600)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot keep the node's network");
        }
        true
    }

    /// The routes to other nodes' pods, as last known.
    pub fn peer_routes(&self) -> Vec<(Cidr, Ipv4Addr)> {
        self.lock()
            .routes
            .iter()
            .filter_map(|(c, v)| Some((Cidr::parse(c).ok()?, v.parse().ok()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use bramble_api::wire::{NetworkSnapshot, ObjectJson};

    use super::*;

    #[test]
    fn a_pod_keeps_its_address_while_it_is_in_the_cidr() {
        let c = Cidr::parse("10.42.1.0/24").unwrap();
        let mut ips = PodIps::default();
        let a = ips.assign(c, "", std::iter::empty()).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 42, 1, 2));
        assert_eq!(
            ips.assign(c, "10.42.1.77", ["10.42.1.2"].into_iter()),
            Some(Ipv4Addr::new(10, 42, 1, 77)),
            "held"
        );
        // A freed .2 is not handed out again at once: the next pod gets .3.
        assert_eq!(
            ips.assign(c, "", std::iter::empty()).unwrap(),
            Ipv4Addr::new(10, 42, 1, 3)
        );
        // An address from an old CIDR is replaced; used addresses are skipped.
        let b = ips
            .assign(c, "10.42.9.5", ["10.42.1.4", "junk"].into_iter())
            .unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 42, 1, 5));
        let tiny = Cidr::parse("10.42.2.0/30").unwrap();
        let mut ips = PodIps::default();
        assert_eq!(
            ips.assign(tiny, "", ["10.42.2.2"].into_iter()),
            None,
            "full"
        );
    }

    #[test]
    fn allocation_is_round_robin_skips_used_and_reserved_addresses() {
        let c = Cidr::parse("10.42.1.0/24").unwrap();
        assert_eq!(gateway(c), Ipv4Addr::new(10, 42, 1, 1));
        let mut used = HashSet::new();
        let a = allocate(c, &used, None).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 42, 1, 2), "after the gateway");
        used.insert(a);
        let b = allocate(c, &used, Some(a)).unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 42, 1, 3));
        // Releasing a does not hand it out again next.
        used.remove(&a);
        used.insert(b);
        assert_eq!(
            allocate(c, &used, Some(b)),
            Some(Ipv4Addr::new(10, 42, 1, 4))
        );
        // It wraps, never reaching the broadcast address.
        assert_eq!(
            allocate(c, &used, Some(Ipv4Addr::new(10, 42, 1, 254))),
            Some(Ipv4Addr::new(10, 42, 1, 2))
        );
        // A /30 has room for exactly one pod; full means None.
        let tiny = Cidr::parse("10.42.2.0/30").unwrap();
        let only = allocate(tiny, &HashSet::new(), None).unwrap();
        assert_eq!(only, Ipv4Addr::new(10, 42, 2, 2));
        assert_eq!(allocate(tiny, &HashSet::from([only]), None), None);
        assert!(Cidr::parse("10.42.1.1/24").is_err());
        assert!(Cidr::parse("nonsense").is_err());
    }

    fn route(node: &str, i: u8) -> NetObject {
        NetObject::Route(NodeRoute {
            node: node.into(),
            address: format!("192.0.2.{i}"),
            pod_cidr: format!("10.42.{i}.0/24"),
        })
    }

    fn ev(rev: u64, prev: u64, change: NetworkChange) -> NetworkUpdate {
        NetworkUpdate {
            revision: rev,
            prev_revision: prev,
            change,
        }
    }

    #[test]
    fn events_chain_on_a_snapshot_even_when_they_arrive_first() {
        let mut v = NetView::default();
        // An event overtakes the snapshot it follows: kept, and a gap is reported.
        assert_eq!(
            v.apply(ev(11, 10, NetworkChange::Upsert(route("c", 3)))),
            NetApplied::Gap
        );
        let snap = NetworkSnapshot {
            cluster_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            objects: vec![route("a", 1), route("b", 2)],
            part: 0,
            parts: 1,
        };
        assert!(matches!(
            v.apply(ev(10, 0, NetworkChange::Snapshot(snap))),
            NetApplied::Changed { .. }
        ));
        assert_eq!(v.revision, 11, "the early event was replayed");
        assert_eq!(v.routes.len(), 3);
        // A repeat is nothing new; a missing event is a gap.
        assert_eq!(
            v.apply(ev(11, 10, NetworkChange::Upsert(route("c", 3)))),
            NetApplied::Unchanged
        );
        assert_eq!(
            v.apply(ev(13, 12, NetworkChange::Remove(NetKey::Route("a".into())))),
            NetApplied::Gap
        );
        assert_eq!(
            v.apply(ev(12, 11, NetworkChange::Upsert(NetObject::Service(ObjectJson {
                namespace: "default".into(),
                name: "web".into(),
                json: br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"default"},"spec":{"clusterIP":"10.43.0.10","ports":[{"port":80}]}}"#.to_vec(),
            })))),
            NetApplied::Changed { routes: false, services: true }
        );
        assert_eq!(v.services.len(), 1);
        let peers = v.peer_routes("a");
        assert_eq!(peers.len(), 2, "no route to itself");
        assert!(peers.contains(&(
            Cidr::parse("10.42.2.0/24").unwrap(),
            Ipv4Addr::new(192, 0, 2, 2)
        )));
    }

    #[test]
    fn forged_routes_and_invalid_services_are_not_programmed() {
        let forged = |node: &str, address: &str, pod_cidr: &str| {
            NetObject::Route(NodeRoute {
                node: node.into(),
                address: address.into(),
                pod_cidr: pod_cidr.into(),
            })
        };
        let service = |name: &str, port: i64| {
            NetObject::Service(ObjectJson {
                namespace: "default".into(),
                name: name.into(),
                json: serde_json::to_vec(&serde_json::json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"clusterIP": "10.43.0.10", "ports": [{"port": port}]}
                }))
                .unwrap(),
            })
        };
        let mut v = NetView::default();
        let snap = NetworkSnapshot {
            cluster_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            objects: vec![
                route("good", 1),
                forged("everything", "192.0.2.9", "0.0.0.0/0"),
                forged("lan", "192.0.2.9", "192.168.1.0/24"),
                forged("wider", "192.0.2.9", "10.0.0.0/8"),
                forged("via-pod", "10.42.7.5", "10.42.5.0/24"),
                forged("via-lo", "127.0.0.1", "10.42.6.0/24"),
                service("ok", 80),
                service("bad", 99_999),
            ],
            part: 0,
            parts: 1,
        };
        v.apply(ev(1, 0, NetworkChange::Snapshot(snap)));
        assert_eq!(
            v.peer_routes("me"),
            vec![(
                Cidr::parse("10.42.1.0/24").unwrap(),
                Ipv4Addr::new(192, 0, 2, 1)
            )]
        );
        let names: Vec<&str> = v.services.keys().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["ok"]);
    }

    #[test]
    fn a_snapshot_in_parts_applies_once_all_have_arrived() {
        let part = |rev: u64, i: u32, objects: Vec<NetObject>| {
            ev(
                rev,
                0,
                NetworkChange::Snapshot(NetworkSnapshot {
                    cluster_cidr: "10.42.0.0/16".into(),
                    service_cidr: "10.43.0.0/16".into(),
                    objects,
                    part: i,
                    parts: 3,
                }),
            )
        };
        let mut v = NetView::default();
        assert_eq!(
            v.apply(part(7, 2, vec![route("c", 3)])),
            NetApplied::Unchanged
        );
        assert_eq!(
            v.apply(part(7, 0, vec![route("a", 1)])),
            NetApplied::Unchanged
        );
        // A part of a newer snapshot starts over; the old parts are dropped.
        assert_eq!(
            v.apply(part(8, 0, vec![route("a", 1)])),
            NetApplied::Unchanged
        );
        assert_eq!(
            v.apply(part(8, 1, vec![route("b", 2)])),
            NetApplied::Unchanged
        );
        assert!(!v.snapshot_seen);
        assert!(matches!(
            v.apply(part(8, 2, vec![route("c", 3)])),
            NetApplied::Changed { .. }
        ));
        assert_eq!((v.revision, v.routes.len()), (8, 3));
        // Out of range is ignored.
        assert_eq!(v.apply(part(9, 5, vec![])), NetApplied::Unchanged);
    }

    #[test]
    fn the_node_network_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = NetView::default();
        v.apply(ev(
            5,
            0,
            NetworkChange::Snapshot(NetworkSnapshot {
                cluster_cidr: "10.42.0.0/16".into(),
                service_cidr: "10.43.0.0/16".into(),
                objects: vec![route("a", 1), route("b", 2)],
                part: 0,
                parts: 1,
            }),
        ));
        let n = PodNetwork::load(dir.path(), None);
        assert!(n.pod_cidr().is_none());
        assert!(n.update("a", &v));
        assert!(!n.update("a", &v), "unchanged is not rewritten");
        let again = PodNetwork::load(dir.path(), None);
        assert_eq!(again.pod_cidr(), Cidr::parse("10.42.1.0/24").ok());
        assert_eq!(again.cluster_cidr(), "10.42.0.0/16");
        assert_eq!(again.peer_routes().len(), 1);
    }
}
