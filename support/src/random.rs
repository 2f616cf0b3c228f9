//! Stable hashing and jitter: names derived from keys, and spread for retries.

/// 64-bit FNV-1a: a stable, dependency-free hash for names derived from keys (iptables
/// chains, veth names, pod template hashes). Never change it: the names it makes outlive a
/// process.
pub fn fnv64(bytes: impl AsRef<[u8]>) -> u64 {
    bytes
        .as_ref()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv64_matches_the_reference_values() {
        // The FNV-1a test vectors.
        assert_eq!(fnv64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv64("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let xs: Vec<f64> = (0..64).map(|_| jitter()).collect();
        assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)), "{xs:?}");
        assert!(xs.iter().any(|x| *x != xs[0]), "64 equal draws: {xs:?}");
    }
}
