#![no_main]
//! husk::fuzz::virtio_vsock under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| husk::fuzz::virtio_vsock(data));
