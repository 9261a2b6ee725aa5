#![no_main]
//! husk::fuzz::virtio_mmio under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| husk::fuzz::virtio_mmio(data));
