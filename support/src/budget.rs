//! A budget per source address (a token bucket each, in one bounded table): what the
//! master's API uses to slow down a source that keeps failing to authenticate, and the
//! agent's DNS server to keep one pod's flood of queries from starving the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The key a flood of new sources shares once the table is full.
const OVERFLOW: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// Token buckets by source: each holds at most `burst` and earns `per_second`.
#[derive(Debug)]
pub struct SourceBudget {
    burst: f64,
    per_second: f64,
    /// Sources remembered at most; beyond, the ones whose budget is full are forgotten first
    /// (and a flood of new addresses shares one budget).
    max_sources: usize,
    sources: Mutex<HashMap<IpAddr, Bucket>>,
}

impl SourceBudget {
    pub fn new(burst: f64, per_second: f64, max_sources: usize) -> Self {
        SourceBudget {
            burst,
            per_second,
            max_sources,
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Bucket>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let earned = now.saturating_duration_since(b.at).as_secs_f64() * self.per_second;
        b.tokens = (b.tokens + earned).min(self.burst);
        b.at = now;
    }

    /// How long `ip` must wait before it may spend again; None: it may now.
    pub fn held(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut map = self.lock();
        let key = if map.contains_key(&ip) {
            ip
        } else if map.len() >= self.max_sources {
            OVERFLOW
        } else {
            return None;
        };
        let b = map.get_mut(&key)?;
        self.refill(b, now);
        (b.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - b.tokens) / self.per_second))
    }

    /// Spends one token of `ip`'s budget (none left: stays at zero).
    pub fn spend(&self, ip: IpAddr, now: Instant) {
        self.take(ip, now);
    }

    /// Spends one token of `ip`'s budget; false when there was none (the caller refuses).
    pub fn take(&self, ip: IpAddr, now: Instant) -> bool {
        let mut map = self.lock();
        if !map.contains_key(&ip) && map.len() >= self.max_sources {
            let burst = self.burst;
            map.retain(|_, b| {
                self.refill(b, now);
                b.tokens < burst
            });
        }
        let key = if map.contains_key(&ip) || map.len() < self.max_sources {
            ip
        } else {
            OVERFLOW
        };
        let b = map.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        self.refill(b, now);
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        true
    }

    /// How many sources the table holds.
    pub fn sources(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_few_per_second() {
        let f = SourceBudget::new(20.0, 5.0, 100);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..20 {
            assert_eq!(f.held(ip, t0), None);
            assert!(f.take(ip, t0));
        }
        assert!(!f.take(ip, t0), "the burst is spent");
        let wait = f.held(ip, t0).expect("held after the burst");
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        assert_eq!(f.held(other, t0), None, "another source is not held");
        assert!(f.take(other, t0));
        // A fifth of a second earns one more.
        let later = t0 + Duration::from_millis(201);
        assert_eq!(f.held(ip, later), None);
        assert!(f.take(ip, later));
        assert!(f.held(ip, later).is_some());
        // Four seconds of quiet give the whole burst back.
        let quiet = later + Duration::from_secs(4);
        for _ in 0..20 {
            assert!(f.take(ip, quiet));
        }
    }

    #[test]
    fn a_flood_of_sources_stays_bounded() {
        let f = SourceBudget::new(20.0, 5.0, 1000);
        let t0 = Instant::now();
        for i in 0..1500u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            f.spend(ip, t0);
        }
        assert!(f.sources() <= 1001);
    }
}
