#![no_main]
//! husk::fuzz::virtio_blk under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| husk::fuzz::virtio_blk(data));
