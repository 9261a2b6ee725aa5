#![no_main]
//! husk::fuzz::virtio_fs under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| husk::fuzz::virtio_fs(data));
