#![no_main]
//! `cargo +nightly fuzz run selector` (seeds: ../corpus/selector); the harness is
//! `bramble_tests::fuzz::run("selector", ..)`, which CI also runs on stable.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bramble_tests::fuzz::run("selector", data));
