#![no_main]
//! husk::fuzz::snapshot_state under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| husk::fuzz::snapshot_state(data));
