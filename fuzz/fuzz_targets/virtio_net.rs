#![no_main]
//! husk::fuzz::virtio_net under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| husk::fuzz::virtio_net(data));
