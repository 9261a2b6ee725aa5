#![no_main]
//! husk::fuzz::agent_frames under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| husk::fuzz::agent_frames(data));
