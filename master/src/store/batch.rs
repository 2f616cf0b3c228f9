//! One batched writer for the loops that write many small things (nodes' Ready conditions,
//! Events): it takes whatever is queued, up to a batch, runs those writes at once so that the
//! store's writer commits them as one group, and goes again until shutdown.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use bramble_support::Coalescing;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where batches come from.
pub trait Batches: Send {
    type Item: Send;
    /// The next batch: waits for one item, then takes those already queued, up to the
    /// source's batch size. None once the source is closed and empty.
    fn next(&mut self) -> impl Future<Output = Option<Vec<Self::Item>>> + Send;
}

/// A channel, at most `.1` items per batch.
impl<T: Send> Batches for (mpsc::Receiver<T>, usize) {
    type Item = T;

    async fn next(&mut self) -> Option<Vec<T>> {
        let first = self.0.recv().await?;
        let mut batch = vec![first];
        while batch.len() < self.1 {
            match self.0.try_recv() {
                Ok(t) => batch.push(t),
                Err(_) => break,
            }
        }
        Some(batch)
    }
}

/// A coalescing queue (the latest value per key), at most `.1` keys per batch.
impl<K, V> Batches for (Arc<Coalescing<K, V>>, usize)
where
    K: Eq + Hash + Clone + Send + Sync,
    V: Send + Sync,
{
    type Item = (K, V);

    async fn next(&mut self) -> Option<Vec<(K, V)>> {
        Some(self.0.take(self.1).await)
    }
}

/// Writes every batch from `source` with `write`, all of a batch at once, until `shutdown`
/// or the source closes.
pub async fn write_in_batches<B, W, F>(shutdown: CancellationToken, mut source: B, write: W)
where
    B: Batches,
    W: Fn(B::Item) -> F,
    F: Future<Output = ()>,
{
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            b = source.next() => match b {
                Some(b) => b,
                None => return,
            },
        };
        futures_util::future::join_all(batch.into_iter().map(&write)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn what_is_queued_is_written_in_batches_until_the_channel_closes() {
        let (tx, rx) = mpsc::channel(100);
        for i in 0..5 {
            tx.send(i).await.unwrap();
        }
        drop(tx);
        let mut source = (rx, 2);
        let mut sizes = Vec::new();
        while let Some(b) = source.next().await {
            sizes.push(b.len());
        }
        assert_eq!(sizes, vec![2, 2, 1], "at most 2 at a time, then closed");

        let (tx, rx) = mpsc::channel(100);
        for i in 0..5 {
            tx.send(i).await.unwrap();
        }
        drop(tx);
        let written = Mutex::new(Vec::new());
        write_in_batches(CancellationToken::new(), (rx, 2), |i| {
            written.lock().unwrap().push(i);
            std::future::ready(())
        })
        .await;
        assert_eq!(*written.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_coalescing_source_gives_the_latest_value_per_key() {
        let q = Arc::new(Coalescing::default());
        q.push("a", 1);
        q.push("b", 1);
        q.push("a", 2);
        let mut source = (q, 10);
        let mut got = source.next().await.unwrap();
        got.sort();
        assert_eq!(got, vec![("a", 2), ("b", 1)]);
    }

    #[tokio::test]
    async fn it_stops_on_shutdown() {
        let (_tx, rx) = mpsc::channel::<u32>(1);
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let stopped = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            write_in_batches(shutdown, (rx, 8), |_| std::future::ready(())),
        )
        .await;
        assert!(stopped.is_ok(), "still writing after shutdown");
    }
}
