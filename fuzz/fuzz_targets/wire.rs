#![no_main]
//! `cargo +nightly fuzz run wire` (seeds: ../corpus/wire); the harness is
//! `bramble_tests::fuzz::run("wire", ..)`, which CI also runs on stable.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bramble_tests::fuzz::run("wire", data));
