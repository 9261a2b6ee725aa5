#![no_main]
//! husk::fuzz::boot_timer under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| husk::fuzz::boot_timer(data));
