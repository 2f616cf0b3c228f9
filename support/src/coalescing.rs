//! A queue that keeps the latest value per key.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::Notify;

/// A queue that keeps only the latest value per key: bounded by the number of keys (nodes,
/// say), never blocks the producer, and never loses the newest value of a key. For work where
/// only the last word counts (a node's Ready condition to persist, a node waiting for a
/// snapshot).
#[derive(Debug)]
pub struct Coalescing<K, V> {
    pending: Mutex<HashMap<K, V>>,
    ready: Notify,
}

impl<K: Eq + Hash + Clone, V> Default for Coalescing<K, V> {
    fn default() -> Self {
        Coalescing {
            pending: Mutex::new(HashMap::new()),
            ready: Notify::new(),
        }
    }
}

impl<K: Eq + Hash + Clone, V> Coalescing<K, V> {
    /// Queues `value` for `key`, replacing a value not yet taken.
    pub fn push(&self, key: K, value: V) {
        self.lock().insert(key, value);
        self.ready.notify_one();
    }

    /// How many keys wait.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until something is queued, then takes up to `max` keys with their values.
    pub async fn take(&self, max: usize) -> Vec<(K, V)> {
        loop {
            {
                let mut pending = self.lock();
                if !pending.is_empty() {
                    let keys: Vec<K> = pending.keys().take(max.max(1)).cloned().collect();
                    let batch = keys
                        .into_iter()
                        .filter_map(|k| pending.remove_entry(&k))
                        .collect();
                    if !pending.is_empty() {
                        // The rest is for the next call.
                        self.ready.notify_one();
                    }
                    return batch;
                }
            }
            self.ready.notified().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn coalescing_keeps_the_latest_value_per_key() {
        let q = Coalescing::default();
        for i in 0..1000 {
            q.push(format!("node-{}", i % 3), i);
        }
        assert_eq!(q.len(), 3);
        let mut got = q.take(10).await;
        got.sort();
        assert_eq!(
            got,
            vec![
                ("node-0".to_string(), 999),
                ("node-1".to_string(), 997),
                ("node-2".to_string(), 998)
            ]
        );
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn coalescing_takes_in_batches_and_wakes_a_waiting_taker() {
        let q = Arc::new(Coalescing::default());
        for i in 0..5 {
            q.push(i, ());
        }
        assert_eq!(q.take(2).await.len(), 2);
        assert_eq!(q.take(2).await.len(), 2);
        assert_eq!(q.take(2).await.len(), 1);
        // Empty: a taker waits until a push.
        let taker = tokio::spawn({
            let q = q.clone();
            async move { q.take(8).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!taker.is_finished());
        q.push(7, ());
        let got = tokio::time::timeout(Duration::from_secs(5), taker)
            .await
            .expect("the taker woke")
            .expect("the taker ran");
        assert_eq!(got, vec![(7, ())]);
    }
}
