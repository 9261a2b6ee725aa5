//! Virtio devices over the virtio-mmio transport (virtio 1.x).
//!
//! The contract between the transport ([`mmio::MmioTransport`]) and a device:
//! the device owns one notification [`EventFd`] per queue from construction
//! on (the VMM registers them with KVM as ioeventfds on the transport's
//! `QueueNotify` register before the guest runs), advertises its features
//! and config space, and is handed guest memory, its queues and an
//! [`Interrupt`] when the driver sets `DRIVER_OK`. From then on the device
//! does its work when a queue event fires (it is also an event-manager
//! subscriber) and signals used buffers through the interrupt.
//!
//! What that contract asks of every device lives once in
//! [`core::VirtioCore`] (features, queue eventfds, the typed activation
//! state, `add_used` / `signal_used`, queue-event registration, snapshot
//! positions); [`VirtioDevice`] provides the transport's methods on top of
//! it, so a device (`block`, `net`, `vsock`) is its core, its config space
//! and its own request processing.

pub mod block;
pub mod core;
pub mod fs;
pub mod mmio;
pub mod net;
#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(test), allow(dead_code, unused_imports))]
pub(crate) mod test_utils;
pub mod vsock;

use std::sync::Arc;

use log::warn;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use self::core::{DeviceError, VirtioCore};

/// `VIRTIO_F_VERSION_1` (virtio 1.2, section 6): the device is modern.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// `VIRTIO_F_RING_EVENT_IDX` (virtio 1.2, section 6; the mechanism in
/// sections 2.7.7 and 2.7.10): the driver says in `used_event` when it
/// wants the next interrupt, the device in `avail_event` when it wants the
/// next kick.
pub const VIRTIO_F_RING_EVENT_IDX: u32 = 29;

/// Device type ids (virtio 1.2, section 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// `InterruptStatus` bits (virtio 1.2, section 4.2.2).
pub const INTERRUPT_USED_BUFFER: u32 = 0x1;
pub const INTERRUPT_CONFIG_CHANGE: u32 = 0x2;

/// How a device interrupts the driver. The transport's implementation sets
/// the bits in its `InterruptStatus` register and injects the device's IRQ
/// (an irqfd); tests use a recording double.
pub trait Interrupt: Send + Sync {
    /// Sets `status` bits ([`INTERRUPT_USED_BUFFER`], ...) and raises the IRQ.
    fn trigger(&self, status: u32) -> std::io::Result<()>;
}

/// Why a device refused activation.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("virtio device expects {expected} queues, the driver set up {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("virtio queue {index} is not valid (size, addresses or ready flag)")]
    BadQueue { index: usize },
    #[error("virtio device activation: {0}")]
    Io(#[from] std::io::Error),
}

/// Copies device config space at `offset` into `data`; bytes past the end
/// (or at an offset that does not fit) read as 0 (virtio 1.2, 4.2.2).
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// A virtio device as the transport sees it: its [`VirtioCore`] and its
/// config space; the rest is provided on top of the core (see
/// [`core`]'s module docs for the contract). Object-safe: the transport
/// holds `Arc<Mutex<dyn VirtioDevice>>`.
pub trait VirtioDevice: Send {
    /// The shared part.
    fn core(&self) -> &VirtioCore;
    /// The shared part, mutably.
    fn core_mut(&mut self) -> &mut VirtioCore;
    /// The device config space (section 4.2.2: from offset 0x100 of the
    /// window).
    fn config_space(&self) -> &[u8];

    /// Reads device config space at `offset` (out-of-range bytes read as 0).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(self.config_space(), offset, data);
    }
    /// Writes device config space; by default ignored (and logged), as no
    /// field of the devices here is driver-writable.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        warn!(
            "{}: ignoring {}-byte config space write at {offset:#x}",
            self.core().label(),
            data.len()
        );
    }
    /// Device work at activation, after the core checked `queues` and before
    /// it takes them; an error refuses activation and leaves the device as
    /// it was.
    fn on_activate(&mut self, _queues: &mut [Queue]) -> Result<(), ActivateError> {
        Ok(())
    }
    /// Device work at a reset, after the core's; `false` when the device
    /// cannot be reset (the transport then marks it failed).
    fn on_reset(&mut self) -> bool {
        true
    }

    /// Device type id ([`TYPE_BLOCK`], ...).
    fn device_type(&self) -> u32 {
        self.core().device_type()
    }
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16] {
        self.core().queue_max_sizes()
    }
    /// Feature bits the device offers (including [`VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64 {
        self.core().avail_features()
    }
    /// Feature bits the driver accepted.
    fn acked_features(&self) -> u64 {
        self.core().acked_features()
    }
    /// Takes the features the driver accepted (masked by the offered ones).
    fn set_acked_features(&mut self, acked: u64) {
        self.core_mut().set_acked_features(acked);
    }
    /// The per-queue notification events, one per queue, created with the
    /// device (the VMM registers them with KVM as ioeventfds).
    fn queue_events(&self) -> &[EventFd] {
        self.core().queue_events()
    }
    /// Starts the device with the driver's queues: the core's checks, the
    /// device's [`VirtioDevice::on_activate`], then the core's activation.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        mut queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.core().check_queues(&mem, &queues)?;
        self.on_activate(&mut queues)?;
        self.core_mut().activate(mem, interrupt, queues)
    }
    /// Whether the device is activated.
    fn is_activated(&self) -> bool {
        self.core().is_activated()
    }
    /// Where each queue's rings stand (empty before activation), for a
    /// snapshot ([`crate::vmm::snapshot`]).
    fn queue_positions(&self) -> Vec<crate::vmm::snapshot::QueuePosition> {
        self.core().queue_positions()
    }
    /// Returns the device to its initial state after a driver reset; `false`
    /// when the device cannot be reset (the transport then marks it failed).
    fn reset(&mut self) -> bool {
        self.core_mut().reset();
        self.on_reset()
    }
}
