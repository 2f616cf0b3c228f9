#![no_main]
//! `cargo +nightly fuzz run manifest` (seeds: ../corpus/manifest); the harness is
//! `bramble_tests::fuzz::run("manifest", ..)`, which CI also runs on stable.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bramble_tests::fuzz::run("manifest", data));
