//! Device models: legacy x86 devices on the port I/O bus and virtio devices
//! on the MMIO bus.

pub mod boot_timer;
pub mod exit_port;
pub mod i8042;
pub mod serial;
pub mod virtio;
