#![no_main]
//! husk::fuzz::oci_config under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| husk::fuzz::oci_config(data));
