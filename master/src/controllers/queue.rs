//! The controllers' work queue: keys marked dirty by watch events, and keys whose reconcile
//! failed, retried after a capped, jittered exponential back-off (as client-go's rate-limited
//! work queue does) instead of waiting for an unrelated change. Pure: the caller passes the
//! time and the jitter, so every rule has a unit test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Back-off of a failing key: `first`, doubling, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            first: Duration::from_millis(200),
            max: Duration::from_secs(60),
        }
    }
}

/// Keys to reconcile, each at most once however often it was marked.
#[derive(Debug)]
pub struct WorkQueue<K: Ord + Clone> {
    retry: Retry,
    dirty: BTreeSet<K>,
    /// Keys that failed: when to try again, and how many failures in a row.
    waiting: BTreeMap<K, (Instant, u32)>,
    /// Keys a controller asked to look at again at a time (a deadline, a TTL, a back-off).
    timers: BTreeMap<K, Instant>,
}

impl<K: Ord + Clone> WorkQueue<K> {
    pub fn new(retry: Retry) -> Self {
        WorkQueue {
            retry,
            dirty: BTreeSet::new(),
            waiting: BTreeMap::new(),
            timers: BTreeMap::new(),
        }
    }

    /// A change touched `key`: reconcile it at the next turn (a waiting retry is kept
    /// counting, so a key that keeps failing stays backed off).
    pub fn add(&mut self, key: K) {
        self.dirty.insert(key);
    }

    /// What to reconcile now: the dirty keys and the retries that are due.
    pub fn take(&mut self, now: Instant) -> Vec<K> {
        let due: Vec<K> = self
            .waiting
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut keys = std::mem::take(&mut self.dirty);
        keys.extend(due);
        let timed: Vec<K> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in timed {
            self.timers.remove(&k);
            keys.insert(k);
        }
        keys.into_iter().collect()
    }

    /// Reconcile `key` again at `at` (the earliest of the times asked for wins).
    pub fn add_at(&mut self, key: K, at: Instant) {
        let t = self.timers.entry(key).or_insert(at);
        *t = (*t).min(at);
    }

    /// The reconcile of `key` succeeded: forget its failures.
    pub fn done(&mut self, key: &K) {
        self.waiting.remove(key);
    }

    /// The reconcile of `key` failed: try again after the back-off (`jitter` in [0, 1]
    /// spreads it between half and the whole delay). Returns the delay.
    pub fn failed(&mut self, key: K, now: Instant, jitter: f64) -> Duration {
        let failures = self.waiting.get(&key).map_or(0, |(_, n)| *n);
        let delay = bramble_api::backoff::delay(failures, self.retry.first, self.retry.max, jitter);
        self.waiting
            .insert(key, (now + delay, failures.saturating_add(1)));
        delay
    }

    /// When the next retry is due, if any (the caller sleeps until then).
    pub fn next_retry(&self) -> Option<Instant> {
        let retry = self.waiting.values().map(|(at, _)| *at).min();
        let timer = self.timers.values().min().copied();
        match (retry, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Forgets `key` entirely (its object was deleted).
    pub fn remove(&mut self, key: &K) {
        self.dirty.remove(key);
        self.waiting.remove(key);
        self.timers.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> WorkQueue<&'static str> {
        WorkQueue::new(Retry {
            first: Duration::from_secs(1),
            max: Duration::from_secs(8),
        })
    }

    #[test]
    fn dirty_keys_are_taken_once_however_often_they_were_marked() {
        let t0 = Instant::now();
        let mut q = queue();
        for k in ["b", "a", "b", "b"] {
            q.add(k);
        }
        assert_eq!(q.take(t0), vec!["a", "b"]);
        assert_eq!(q.take(t0), Vec::<&str>::new());
        assert_eq!(q.next_retry(), None);
    }

    #[test]
    fn a_failing_key_is_retried_with_growing_capped_delays_until_it_succeeds() {
        let t0 = Instant::now();
        let mut q = queue();
        let s = Duration::from_secs;
        // Full jitter (1.0): the delays are 1, 2, 4, 8, 8 seconds.
        let mut now = t0;
        for want in [s(1), s(2), s(4), s(8), s(8)] {
            assert_eq!(q.failed("d", now, 1.0), want);
            assert_eq!(q.next_retry(), Some(now + want));
            // Not before it is due; then once.
            assert_eq!(
                q.take(now + want - Duration::from_millis(1)),
                Vec::<&str>::new()
            );
            now += want;
            assert_eq!(q.take(now), vec!["d"]);
        }
        // Success forgets the failures: the next failure starts again at the first delay.
        q.done(&"d");
        assert_eq!(q.next_retry(), None);
        assert_eq!(q.take(now + s(100)), Vec::<&str>::new());
        assert_eq!(q.failed("d", now, 1.0), s(1));
    }

    #[test]
    fn jitter_spreads_a_delay_and_a_change_does_not_reset_the_back_off() {
        let t0 = Instant::now();
        let mut q = queue();
        let low = q.failed("a", t0, 0.0);
        let mut r = queue();
        let high = r.failed("a", t0, 1.0);
        assert!(low < high, "{low:?} vs {high:?}");
        assert!(low >= Duration::from_millis(500), "{low:?}");
        // A watch event reconciles the key at once, but a second failure still doubles.
        q.add("a");
        assert_eq!(q.take(t0), vec!["a"]);
        assert_eq!(q.failed("a", t0, 1.0), Duration::from_secs(2));
        // A deleted object is forgotten.
        q.remove(&"a");
        assert_eq!(q.next_retry(), None);
    }

    #[test]
    fn a_timer_wakes_its_key_once_at_the_earliest_time_asked() {
        let mut q = queue();
        let t0 = Instant::now();
        q.add_at("job", t0 + Duration::from_secs(10));
        q.add_at("job", t0 + Duration::from_secs(5));
        assert_eq!(q.next_retry(), Some(t0 + Duration::from_secs(5)));
        assert!(q.take(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(q.take(t0 + Duration::from_secs(5)), vec!["job"]);
        assert!(q.take(t0 + Duration::from_secs(20)).is_empty(), "once");
        assert_eq!(q.next_retry(), None);
    }
}
