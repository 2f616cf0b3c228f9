#![no_main]
//! `cargo +nightly fuzz run archive` (seeds: ../corpus/archive); the harness is
//! `bramble_tests::fuzz::run("archive", ..)`, which CI also runs on stable.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bramble_tests::fuzz::run("archive", data));
