#![no_main]
//! `cargo +nightly fuzz run layer` (seeds: ../corpus/layer); the harness is
//! `bramble_tests::fuzz::run("layer", ..)`, which CI also runs on stable.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bramble_tests::fuzz::run("layer", data));
