//! The fuzz harnesses (`bramble_tests::fuzz`) on stable, for a bounded time per target: the
//! seed corpus and past crashes first (`fuzz/corpus/`, `fuzz/regressions/`), then inputs
//! mutated from them. `BRAMBLE_FUZZ_SECS` sets the time per target (5), `BRAMBLE_FUZZ_SEED`
//! the mutator's seed (printed; the time by default). A panic fails the test and leaves the
//! input in `target/fuzz-crashes/`; once fixed, it goes to `fuzz/regressions/<target>/`.
//! Longer runs with coverage guidance: `cargo +nightly fuzz run TARGET` in `fuzz/`.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bramble_tests::fuzz;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// xorshift64*: small, deterministic from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens that reach deeper into the parsers than random bytes do.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"- ",
    b"\n",
    b"  ",
    b"&a ",
    b"*a",
    b"!!binary ",
    b"'",
    b"\"",
    b"#",
    b",",
    b"in (",
    b")",
    b"notin",
    b"!",
    b"=",
    b"==",
    b"!=",
    b"Ki",
    b"Mi",
    b"Gi",
    b"Ei",
    b"m",
    b"e308",
    b"e-9",
    b"9223372036854775807",
    b"-",
    b".",
    b"0x",
    b"apiVersion: v1\n",
    b"kind: Pod\n",
    b"metadata:\n  name: x\n",
    b"spec:\n",
    b"containers:",
    b"\xff\xff\xff\xff",
    b"\x00\x00",
    b"ustar\x0000",
    b"../",
    b"/etc/passwd",
    b".wh.",
    b"manifest.json",
    b"index.json",
    b"oci-layout",
];

/// One mutation of `input`, maybe spliced with `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0u8, 0xff, 0x7f, 0x80, b'0', b'9'][rng.below(6)];
            }
            2 => {
                let i = rng.below(len + 1);
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(i..i, t.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.below(64)).min(len);
                v.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.below(256)).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, chunk);
            }
            5 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => v.truncate(rng.below(len)),
            _ => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
        }
    }
    v.truncate(64 << 10);
    v
}

fn crash(target: &str, input: &[u8]) -> ! {
    let dir = repo().join("target/fuzz-crashes");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{target}-{:016x}", fxhash(input)));
    std::fs::write(&path, input).unwrap();
    panic!(
        "fuzz target {target} panicked on the input saved in {}",
        path.display()
    );
}

fn fxhash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

fn one(target: &str, input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| fuzz::run(target, input))).is_err() {
        crash(target, input);
    }
}

fn run_target(target: &str) {
    let secs: u64 = std::env::var("BRAMBLE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("BRAMBLE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let corpus = fuzz::seeds(&repo(), target);
    assert!(!corpus.is_empty(), "no seeds for {target}");
    for input in &corpus {
        one(target, input);
    }
    let mut rng = Rng(seed | 1);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let a = &corpus[rng.below(corpus.len())];
        let b = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, a, b);
        one(target, &input);
        runs += 1;
    }
    eprintln!(
        "fuzz {target}: {} seeds, {runs} mutated inputs in {secs}s (BRAMBLE_FUZZ_SEED={seed})",
        corpus.len()
    );
}

#[test]
fn fuzz_wire() {
    run_target("wire");
}

#[test]
fn fuzz_manifest() {
    run_target("manifest");
}

#[test]
fn fuzz_selector() {
    run_target("selector");
}

#[test]
fn fuzz_quantity() {
    run_target("quantity");
}

#[test]
fn fuzz_layer() {
    run_target("layer");
}

#[test]
fn fuzz_archive() {
    run_target("archive");
}

#[test]
fn every_target_has_a_test_and_a_corpus() {
    for t in fuzz::TARGETS {
        assert!(
            repo().join("fuzz/corpus").join(t).is_dir(),
            "fuzz/corpus/{t} is missing"
        );
        assert!(
            repo()
                .join("fuzz/fuzz_targets")
                .join(format!("{t}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{t}.rs is missing"
        );
    }
}
