//! Node IPAM: every node gets its own pod CIDR (`spec.podCIDR`) from the cluster CIDR
//! (default 10.42.0.0/16, a /24 per node), as Kubernetes' range allocator does. One task
//! allocates, from the Nodes in the store (so a restart keeps every assignment), writing with
//! the node's resourceVersion (so a concurrent change is retried, never overwritten); no two
//! nodes ever share a CIDR. A deleted node's CIDR is free again, and goes to a node that is
//! still waiting for one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use bramble_api::net::{Cidr, CidrError};
use bramble_api::{Kind, Object, Selector};

use super::Controller;
use crate::events::EventRecorder;
use crate::store::{Change, EventType, Op, Store, StoreError, Subresource};

/// Why a cluster CIDR and node mask size were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Cidr(#[from] CidrError),
    #[error("{0:?}: the prefix length must be 0-30")]
    Prefix(String),
    #[error(
        "the node CIDR mask size /{node_prefix} must be longer than the cluster's /{prefix} and at most /30"
    )]
    NodePrefix { node_prefix: u8, prefix: u8 },
}

/// The cluster CIDR cut into equal node CIDRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrPool {
    base: u32,
    prefix: u8,
    node_prefix: u8,
}

impl CidrPool {
    /// k3s' default: `10.42.0.0/16` with a `/24` per node.
    pub const DEFAULT: CidrPool = CidrPool {
        base: u32::from_be_bytes([10, 42, 0, 0]),
        prefix: 16,
        node_prefix: 24,
    };

    /// `10.42.0.0/16` with `/24` per node. The node prefix must be longer than the cluster's
    /// and leave room for pods (at most /30).
    pub fn parse(cluster: &str, node_prefix: u8) -> Result<CidrPool, PoolError> {
        let cidr = Cidr::parse(cluster)?;
        let prefix = cidr.prefix;
        if prefix > 30 {
            return Err(PoolError::Prefix(cluster.to_string()));
        }
        if node_prefix <= prefix || node_prefix > 30 {
            return Err(PoolError::NodePrefix {
                node_prefix,
                prefix,
            });
        }
        Ok(CidrPool {
            base: u32::from(cidr.base),
            prefix,
            node_prefix,
        })
    }

    /// The cluster CIDR, e.g. `10.42.0.0/16`.
    pub fn cluster(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }

    /// How many node CIDRs the pool holds.
    pub fn capacity(&self) -> usize {
        1usize << (self.node_prefix - self.prefix)
    }

    /// The i-th node CIDR.
    pub fn nth(&self, i: usize) -> String {
        let addr = self.base + ((i as u32) << (32 - self.node_prefix));
        format!("{}/{}", Ipv4Addr::from(addr), self.node_prefix)
    }

    /// The index of a node CIDR of this pool, if it is one.
    pub fn index_of(&self, cidr: &str) -> Option<usize> {
        let (addr, len) = cidr.split_once('/')?;
        if len.parse::<u8>().ok()? != self.node_prefix {
            return None;
        }
        let a = u32::from(addr.parse::<Ipv4Addr>().ok()?);
        let off = a.checked_sub(self.base)?;
        let step = 1u32 << (32 - self.node_prefix);
        let i = (off / step) as usize;
        (off % step == 0 && i < self.capacity()).then_some(i)
    }

    /// The lowest free node CIDR.
    pub fn first_free(&self, used: &BTreeSet<usize>) -> Option<usize> {
        (0..self.capacity()).find(|i| !used.contains(i))
    }
}

/// The allocator on the shared controller shell; its key is a node name.
///
/// It keeps the CIDRs in use in memory (rebuilt from the store on every resync, kept up
/// from the watch): an allocation costs a lookup, not a decode of every Node, so a join of
/// thousands of boards is linear. Once the pool is exhausted, a waiting node is told once
/// (a Warning event) and its status changes (heartbeat transitions) do not retry; a freed
/// CIDR retries every waiting node.
pub struct Ipam {
    pool: CidrPool,
    events: EventRecorder,
    /// The pool index each node holds.
    held: BTreeMap<String, usize>,
    /// Nodes told that no CIDR is left, until one is freed.
    told: BTreeSet<String>,
}

impl Ipam {
    pub fn new(store: &Store, pool: CidrPool) -> Self {
        Ipam {
            pool,
            events: EventRecorder::new(store.clone(), "node-ipam-controller"),
            held: BTreeMap::new(),
            told: BTreeSet::new(),
        }
    }

    /// Records what `node` holds now (None: nothing, or it is gone); true if a CIDR was
    /// freed.
    fn note(&mut self, node: &str, cidr: Option<&str>) -> bool {
        match cidr.and_then(|c| self.pool.index_of(c)) {
            Some(i) => {
                self.held.insert(node.to_string(), i);
                false
            }
            None => self.held.remove(node).is_some(),
        }
    }
}

/// What node IPAM reconciles.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// Give this node a CIDR if it has none.
    Node(String),
    /// A CIDR was freed: every node still waiting for one.
    Waiting,
}

impl Controller for Ipam {
    type Key = Key;
    const NAME: &'static str = "node-ipam";
    const WATCHES: &'static [Kind] = &[Kind::Node];

    async fn resync(&mut self, store: &Store) -> Vec<Key> {
        self.held.clear();
        self.told.clear();
        let mut waiting = Vec::new();
        for e in store.list(Kind::Node, None, &Selector::everything()).1 {
            if let Ok(Object::Node(n)) = e.object() {
                if n.spec.pod_cidr.is_empty() {
                    waiting.push(Key::Node(n.metadata.name));
                } else {
                    self.note(&n.metadata.name, Some(&n.spec.pod_cidr));
                }
            }
        }
        waiting
    }

    fn keys(&mut self, c: &Change) -> Vec<Key> {
        match c.entry.object() {
            Ok(Object::Node(n)) if c.type_ != EventType::Deleted => {
                if n.spec.pod_cidr.is_empty() {
                    let freed = self.note(&n.metadata.name, None);
                    if freed {
                        self.told.clear();
                        vec![Key::Waiting]
                    } else if self.told.contains(&n.metadata.name) {
                        Vec::new()
                    } else {
                        vec![Key::Node(n.metadata.name)]
                    }
                } else {
                    self.note(&n.metadata.name, Some(&n.spec.pod_cidr));
                    Vec::new()
                }
            }
            // A deleted node: if it held a CIDR, nodes still waiting for one may have it.
            Ok(_) => {
                self.told.remove(&c.entry.name);
                if self.note(&c.entry.name, None) {
                    self.told.clear();
                    vec![Key::Waiting]
                } else {
                    Vec::new()
                }
            }
            Err(_) => Vec::new(),
        }
    }

    async fn reconcile(&mut self, store: &Store, key: &Key) -> Result<(), StoreError> {
        match key {
            Key::Node(name) => self.allocate(store, name).await,
            Key::Waiting => {
                for n in waiting(store) {
                    self.allocate(store, &n).await?;
                }
                Ok(())
            }
        }
    }
}

/// Names of the nodes that have no pod CIDR yet.
fn waiting(store: &Store) -> Vec<String> {
    store
        .list(Kind::Node, None, &Selector::everything())
        .1
        .iter()
        .filter_map(|e| match e.object() {
            Ok(Object::Node(n)) if n.spec.pod_cidr.is_empty() => Some(n.metadata.name),
            _ => None,
        })
        .collect()
}

impl Ipam {
    /// Gives the node the lowest free CIDR if it has none. A conflict or a deleted node is
    /// not an error: the node's next event brings it back.
    async fn allocate(&mut self, store: &Store, name: &str) -> Result<(), StoreError> {
        let Some(e) = store.get(Kind::Node, "", name) else {
            return Ok(());
        };
        let Object::Node(mut node) = e.object()? else {
            return Ok(());
        };
        if !node.spec.pod_cidr.is_empty() {
            self.note(name, Some(&node.spec.pod_cidr));
            return Ok(());
        }
        let pool = self.pool;
        let used: BTreeSet<usize> = self
            .held
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .map(|(_, i)| *i)
            .collect();
        let Some(i) = pool.first_free(&used) else {
            if !self.told.insert(name.to_string()) {
                return Ok(());
            }
            let message = format!(
                "no pod CIDR left in the cluster CIDR {} ({} node CIDRs, all taken): the node gets none until one is freed",
                pool.cluster(),
                pool.capacity()
            );
            tracing::error!(node = name, "{message}");
            // As Kubernetes' node IPAM does: a Warning on the node says why it has no CIDR.
            self.events
                .record(Object::Node(node), "Warning", "CIDRNotAvailable", &message)
                .await;
            return Ok(());
        };
        node.spec.pod_cidr = pool.nth(i);
        let cidr = node.spec.pod_cidr.clone();
        // The node as read: a concurrent change is a conflict, and its event brings it back.
        match store
            .write(Op::Update(Object::Node(node), Subresource::Main))
            .await
        {
            Ok(_) => {
                // Held from now on, before its change comes back through the watch.
                self.held.insert(name.to_string(), i);
                tracing::info!(node = name, cidr, "pod CIDR assigned");
                Ok(())
            }
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pool_is_the_default_cluster_cidr() {
        assert_eq!(
            CidrPool::parse(crate::config::DEFAULT_CLUSTER_CIDR, 24),
            Ok(CidrPool::DEFAULT)
        );
    }

    #[test]
    fn the_pool_cuts_the_cluster_cidr_into_node_cidrs() {
        let p = CidrPool::parse("10.42.0.0/16", 24).unwrap();
        assert_eq!(p.capacity(), 256);
        assert_eq!(p.nth(0), "10.42.0.0/24");
        assert_eq!(p.nth(255), "10.42.255.0/24");
        assert_eq!(p.index_of("10.42.7.0/24"), Some(7));
        for other in [
            "10.43.0.0/24",
            "10.42.7.128/24",
            "10.42.7.0/25",
            "x",
            "10.41.255.0/24",
        ] {
            assert_eq!(p.index_of(other), None, "{other}");
        }
        let used: BTreeSet<usize> = [0, 1, 3].into();
        assert_eq!(p.first_free(&used), Some(2));
        let full: BTreeSet<usize> = (0..256).collect();
        assert_eq!(p.first_free(&full), None);
        let small = CidrPool::parse("192.168.0.0/23", 25).unwrap();
        assert_eq!(
            (small.capacity(), small.nth(3).as_str()),
            (4, "192.168.1.128/25")
        );
    }

    #[test]
    fn bad_cidrs_are_refused_with_the_reason() {
        assert!(
            CidrPool::parse("10.42.0.0", 24)
                .unwrap_err()
                .to_string()
                .contains("not an IPv4 CIDR")
        );
        assert!(
            CidrPool::parse("10.42.1.0/16", 24)
                .unwrap_err()
                .to_string()
                .contains("did you mean 10.42.0.0/16")
        );
        assert!(
            CidrPool::parse("10.42.0.0/16", 16)
                .unwrap_err()
                .to_string()
                .contains("must be longer")
        );
        assert!(CidrPool::parse("10.42.0.0/16", 31).is_err());
    }
}
