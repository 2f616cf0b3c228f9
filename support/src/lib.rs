//! Plumbing that Bramble's binaries (master, agent, proxy) share, so that each has one home
//! and no binary imports another: logging set-up, shutdown on signals, a stable hash.

#[cfg(feature = "mqtt")]
pub mod mqtt;

use std::collections::HashMap;
use std::hash::Hash;
use std::io::IsTerminal;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Logs to stderr, filtered by `RUST_LOG` (else `default_filter`), with colours only when
/// stderr is a terminal: journald and log files get plain text.
pub fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Waits for SIGTERM or SIGINT: the first cancels `shutdown` (and logs `first`), a second
/// exits the process at once with status 130.
pub async fn shutdown_on_signals(shutdown: CancellationToken, first: &str) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    for n in 0..2 {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if n == 0 {
            tracing::info!("{first}");
            shutdown.cancel();
        } else {
            tracing::warn!("second signal; exiting now");
            std::process::exit(130);
        }
    }
}

/// 64-bit FNV-1a of a string: a stable, dependency-free hash for names derived from keys
/// (iptables chains, veth names). Never change it: the names it makes outlive a process.
pub fn fnv64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A uniform number in [0, 1] from the kernel's random source (0.5 when it fails).
pub fn jitter() -> f64 {
    let mut b = [0u8; 2];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX)
}

/// Whether a repeated event is due to be logged: at most once per interval per reason, so a
/// flood of hostile messages cannot fill a board's SD card with the same line.
#[derive(Debug)]
pub struct LogLimiter {
    every: std::time::Duration,
    last: HashMap<&'static str, std::time::Instant>,
}

impl LogLimiter {
    /// At most once per `every` per reason.
    pub fn new(every: std::time::Duration) -> Self {
        LogLimiter {
            every,
            last: HashMap::new(),
        }
    }

    /// Whether to log `reason` now (and if so, the next one waits `every`).
    pub fn due(&mut self, reason: &'static str, now: std::time::Instant) -> bool {
        let due = self
            .last
            .get(reason)
            .is_none_or(|t| now.saturating_duration_since(*t) >= self.every);
        if due {
            self.last.insert(reason, now);
        }
        due
    }
}

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

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let xs: Vec<f64> = (0..64).map(|_| jitter()).collect();
        assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)), "{xs:?}");
        assert!(xs.iter().any(|x| *x != xs[0]), "64 equal draws: {xs:?}");
    }

    #[test]
    fn the_log_limiter_allows_once_per_interval_per_reason() {
        let mut l = LogLimiter::new(Duration::from_secs(10));
        let t0 = std::time::Instant::now();
        let s = Duration::from_secs;
        let table = [
            ("a", s(0), true),
            ("a", s(1), false),
            ("b", s(1), true),
            ("a", s(9), false),
            ("a", s(10), true),
            ("a", s(15), false),
            ("b", s(11), true),
        ];
        for (i, (reason, at, want)) in table.into_iter().enumerate() {
            assert_eq!(l.due(reason, t0 + at), want, "row {i}");
        }
    }

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

    #[test]
    fn fnv64_matches_the_reference_values() {
        // The FNV-1a test vectors.
        assert_eq!(fnv64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv64("foobar"), 0x8594_4171_f739_67e8);
    }
}
