#![no_main]
//! husk::fuzz::seccomp_profile under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| husk::fuzz::seccomp_profile(data));
