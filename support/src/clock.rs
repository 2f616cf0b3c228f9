//! Time as a dependency: a loop that decides by the time reads it from a [`Clock`], so that
//! a test moves time forward instead of waiting for it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where a loop reads the time.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time, for deadlines and durations.
    fn now(&self) -> Instant;
    /// Wall-clock time in Unix milliseconds, for what is stored or reported.
    fn unix_millis(&self) -> i64;
}

/// The system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_millis(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// A clock that moves only when told to (for tests).
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    unix_start_ms: i64,
    elapsed_ms: AtomicI64,
}

impl ManualClock {
    /// A clock that reads `unix_ms` until it is advanced.
    pub fn new(unix_ms: i64) -> Self {
        ManualClock {
            start: Instant::now(),
            unix_start_ms: unix_ms,
            elapsed_ms: AtomicI64::new(0),
        }
    }

    /// Moves both readings forward by `by` (whole milliseconds).
    pub fn advance(&self, by: Duration) {
        self.elapsed_ms
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    fn elapsed(&self) -> i64 {
        self.elapsed_ms.load(Ordering::SeqCst)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.elapsed().max(0) as u64)
    }

    fn unix_millis(&self) -> i64 {
        self.unix_start_ms + self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let c = ManualClock::new(1_000);
        let t0 = c.now();
        assert_eq!((c.now(), c.unix_millis()), (t0, 1_000));
        c.advance(Duration::from_millis(1_500));
        assert_eq!(c.unix_millis(), 2_500);
        assert_eq!(c.now() - t0, Duration::from_millis(1_500));
    }

    #[test]
    fn the_system_clock_reads_now() {
        let ms = SystemClock.unix_millis();
        assert!(ms > 1_700_000_000_000, "{ms}");
        assert!(SystemClock.now() <= Instant::now());
    }
}
