#![no_main]
//! `cargo +nightly fuzz run quantity` (seeds: ../corpus/quantity); the harness is
//! `bramble_tests::fuzz::run("quantity", ..)`, which CI also runs on stable.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bramble_tests::fuzz::run("quantity", data));
