//! Watches: a backlog (from the change log, or the current objects as ADDED) followed by live
//! changes. A watcher that falls behind the broadcast buffer catches up from the change log;
//! if the log no longer reaches back far enough, the watch ends with "gone".

use std::collections::VecDeque;
use std::sync::Arc;

use bramble_api::{Kind, Selector};
use tokio::sync::broadcast;

use super::state::{Change, EventType};
use super::{Shared, StoreError};

/// Which changes a watch delivers.
#[derive(Debug, Clone)]
pub struct WatchFilter {
    pub kind: Kind,
    /// Other kinds delivered in the same stream, in revision order with `kind`'s.
    pub also: Vec<Kind>,
    /// None: all namespaces.
    pub namespace: Option<String>,
    pub selector: Selector,
}

impl WatchFilter {
    /// Every object of `kind`, in every namespace.
    pub fn all(kind: Kind) -> WatchFilter {
        WatchFilter {
            kind,
            also: Vec::new(),
            namespace: None,
            selector: Selector::everything(),
        }
    }

    fn matches(&self, c: &Change) -> bool {
        let e = &c.entry;
        (e.kind == self.kind || self.also.contains(&e.kind))
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| !e.kind.namespaced() || *ns == e.namespace)
            && self.selector.matches(&e.labels)
    }
}

/// A running watch.
pub struct Watch {
    shared: Arc<Shared>,
    filter: WatchFilter,
    backlog: VecDeque<Arc<Change>>,
    rx: broadcast::Receiver<Arc<Change>>,
    /// The revision of the last change delivered or skipped.
    last: u64,
}

pub(crate) fn start(
    shared: Arc<Shared>,
    filter: WatchFilter,
    from: Option<u64>,
) -> Result<Watch, StoreError> {
    let (backlog, rx, last) = {
        let st = shared.state.read().unwrap_or_else(|p| p.into_inner());
        let backlog = match from.filter(|&r| r > 0) {
            Some(rv) => {
                if rv < st.compacted || rv > st.revision {
                    return Err(StoreError::Gone {
                        requested: rv,
                        oldest: st.compacted,
                    });
                }
                st.log
                    .iter()
                    .filter(|c| c.revision > rv && filter.matches(c))
                    .cloned()
                    .collect()
            }
            None => std::iter::once(filter.kind)
                .chain(filter.also.iter().copied())
                .flat_map(|k| st.range(k, filter.namespace.as_deref()))
                .filter(|e| filter.selector.matches(&e.labels))
                .map(|e| Arc::new(Change::new(EventType::Added, e.clone())))
                .collect(),
        };
        // Subscribing under the read lock: the writer publishes under the write lock, so
        // nothing between the backlog and the first live change is missed or repeated.
        (backlog, shared.events.subscribe(), st.revision)
    };
    Ok(Watch {
        shared,
        filter,
        backlog,
        rx,
        last,
    })
}

impl Watch {
    /// A revision a client may resume this watch from (a bookmark): every matching change
    /// up to it was delivered. None while the first backlog is still going out.
    pub fn bookmark(&self) -> Option<u64> {
        self.backlog.is_empty().then_some(self.last)
    }

    /// The next matching change; `Gone` when the watch fell too far behind.
    pub async fn next(&mut self) -> Result<Arc<Change>, StoreError> {
        loop {
            if let Some(c) = self.backlog.pop_front() {
                return Ok(c);
            }
            match self.rx.recv().await {
                Ok(c) => {
                    if c.revision <= self.last {
                        continue;
                    }
                    self.last = c.revision;
                    if self.filter.matches(&c) {
                        return Ok(c);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up()?,
                Err(broadcast::error::RecvError::Closed) => return Err(StoreError::Closed),
            }
        }
    }

    fn catch_up(&mut self) -> Result<(), StoreError> {
        let st = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
        if self.last < st.compacted {
            return Err(StoreError::Gone {
                requested: self.last,
                oldest: st.compacted,
            });
        }
        self.backlog = st
            .log
            .iter()
            .filter(|c| c.revision > self.last && self.filter.matches(c))
            .cloned()
            .collect();
        self.rx = self.shared.events.subscribe();
        self.last = st.revision;
        Ok(())
    }
}
