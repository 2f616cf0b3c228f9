//! Logging: the subscriber every binary installs, and a limiter for lines that repeat.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

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

/// Whether a repeated event is due to be logged: at most once per interval per reason, so a
/// flood of hostile messages cannot fill a board's SD card with the same line.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: HashMap<&'static str, Instant>,
}

impl LogLimiter {
    /// At most once per `every` per reason.
    pub fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            last: HashMap::new(),
        }
    }

    /// Whether to log `reason` now (and if so, the next one waits `every`).
    pub fn due(&mut self, reason: &'static str, now: Instant) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_limiter_allows_once_per_interval_per_reason() {
        let mut l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
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
}
