//! Capped exponential back-off with jitter, shared by reconnects and container restarts.

use std::time::Duration;

/// The delay before retry number `attempt` (0-based): `base * 2^attempt`, capped at `cap`,
/// then spread over its upper half by `jitter` (0.0..=1.0), so that a rack of boards coming
/// back from a power cut does not retry in lockstep.
pub fn delay(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX));
    let d = exp.min(cap);
    let j = jitter.clamp(0.0, 1.0);
    d.mul_f64(0.5 + 0.5 * j)
}

/// The un-jittered delay, as Kubernetes computes CrashLoopBackOff: 10s, 20s, 40s, ... 5m.
pub fn crash_loop(restarts: u32, base: Duration, cap: Duration) -> Duration {
    base.saturating_mul(1u32.checked_shl(restarts.min(31)).unwrap_or(u32::MAX))
        .min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_jitters_within_bounds() {
        let b = Duration::from_millis(100);
        let cap = Duration::from_secs(30);
        assert_eq!(delay(0, b, cap, 1.0), b);
        assert_eq!(delay(0, b, cap, 0.0), b / 2);
        assert_eq!(delay(3, b, cap, 1.0), Duration::from_millis(800));
        assert_eq!(delay(20, b, cap, 1.0), cap);
        assert_eq!(delay(u32::MAX, b, cap, 1.0), cap);
        for j in [0.0, 0.3, 0.99] {
            let d = delay(5, b, cap, j);
            assert!(d >= Duration::from_millis(1600) && d <= Duration::from_millis(3200));
        }
    }

    #[test]
    fn crash_loop_doubles_to_the_cap() {
        let s = Duration::from_secs;
        let seq: Vec<_> = (0..7).map(|r| crash_loop(r, s(10), s(300))).collect();
        assert_eq!(
            seq,
            vec![s(10), s(20), s(40), s(80), s(160), s(300), s(300)]
        );
    }
}
