#![no_main]
//! husk::fuzz::fs_server_channel under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| husk::fuzz::fs_server_channel(data));
