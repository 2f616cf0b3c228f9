//! A per-source budget of failed authentications: a source (an IP address) that keeps
//! sending bad or no credentials is answered 429 for a while instead of being served, so that
//! guessing tokens goes at a few guesses per second per address and a flood of
//! unauthenticated requests costs the master almost nothing. Requests with a valid API token
//! are never held back, and the health checks and the CA are always answered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures a source may have in a burst.
pub const BURST: f64 = 20.0;
/// Failures per second a source earns back.
pub const PER_SECOND: f64 = 5.0;
/// Sources remembered at most; beyond, the ones whose budget is full are forgotten first
/// (and a flood of new addresses shares one budget).
const MAX_SOURCES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * PER_SECOND;
        self.tokens = (self.tokens + earned).min(BURST);
        self.at = now;
    }
}

/// The budgets, by source.
#[derive(Debug, Default)]
pub struct Failures {
    sources: Mutex<HashMap<IpAddr, Bucket>>,
}

/// The key a flood of new sources shares once the table is full.
const OVERFLOW: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

impl Failures {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Bucket>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `ip` must wait before an unauthenticated request is served again; None: it
    /// may go on.
    pub fn held(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut map = self.lock();
        let key = if map.contains_key(&ip) {
            ip
        } else if map.len() >= MAX_SOURCES {
            OVERFLOW
        } else {
            return None;
        };
        let b = map.get_mut(&key)?;
        b.refill(now);
        (b.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - b.tokens) / PER_SECOND))
    }

    /// Records a failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.lock();
        if !map.contains_key(&ip) && map.len() >= MAX_SOURCES {
            map.retain(|_, b| {
                b.refill(now);
                b.tokens < BURST
            });
        }
        let key = if map.contains_key(&ip) || map.len() < MAX_SOURCES {
            ip
        } else {
            OVERFLOW
        };
        let b = map.entry(key).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        b.refill(now);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_few_per_second() {
        let f = Failures::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..BURST as usize {
            assert_eq!(f.held(ip, t0), None);
            f.failed(ip, t0);
        }
        let wait = f.held(ip, t0).expect("held after the burst");
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        assert_eq!(f.held(other, t0), None, "another source is not held");
        // A fifth of a second earns one more try.
        let later = t0 + Duration::from_millis(201);
        assert_eq!(f.held(ip, later), None);
        f.failed(ip, later);
        assert!(f.held(ip, later).is_some());
        // Four seconds of quiet give the whole burst back.
        let quiet = later + Duration::from_secs(4);
        for _ in 0..BURST as usize {
            assert_eq!(f.held(ip, quiet), None);
            f.failed(ip, quiet);
        }
    }

    #[test]
    fn a_flood_of_sources_stays_bounded() {
        let f = Failures::default();
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 500) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            f.failed(ip, t0);
        }
        assert!(f.lock().len() <= MAX_SOURCES + 1);
    }
}
