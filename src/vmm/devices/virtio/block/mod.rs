//! virtio-blk (virtio 1.2, section 5.2) backed by a raw image file.
//!
//! - [`device`]: [`Block`], its features, its [`VirtioCore`](super::VirtioCore)
//!   (queues, activation), config space and queue processing.
//! - [`request`]: one request: descriptor chain parsing, validation and
//!   execution against the image (`pread`/`pwrite`/`fdatasync`).
//! - [`event_handler`]: the event-manager side.
//!
//! # Events
//!
//! The VMM builds the device, hands an `Arc<Mutex<Block>>` to the
//! [`MmioTransport`](super::mmio::MmioTransport) (as
//! `Arc<Mutex<dyn VirtioDevice>>`) and registers the same `Arc` with the
//! `EventManager` before the guest runs. At that point
//! `MutEventSubscriber::init` registers only the device's *activate* eventfd:
//! the queue has no guest memory to work on yet.
//!
//! When the driver sets `DRIVER_OK`, the transport (on a vCPU thread) calls
//! `VirtioDevice::activate`, which stores memory, queue and interrupt and
//! writes the activate eventfd. On the event-manager thread that event
//! registers the queue eventfd (once; it stays registered across resets).
//! Each queue event (the ioeventfd KVM signals on a `QueueNotify` write) is
//! drained and the queue processed: every available chain is executed,
//! returned in the used ring, and the driver interrupted once per batch.
//! Queue events that arrive while the device is not activated (after a
//! reset) are drained and ignored.
//!
//! A malformed request never panics: it completes with
//! [`VIRTIO_BLK_S_IOERR`] when its status byte can be written, and is
//! returned with a used length of 0 (and logged) when it cannot.

mod device;
mod event_handler;
mod request;
#[cfg(test)]
pub(crate) mod test_utils;

use std::path::PathBuf;

use super::DeviceError;

pub use device::Block;

/// Unit of the request `sector` field and of `capacity` (section 5.2.4).
pub const SECTOR_SIZE: u64 = 512;

/// The device has one request queue (`num_queues` is only used with
/// `VIRTIO_BLK_F_MQ`, section 5.2.2).
pub const NUM_QUEUES: usize = 1;
/// Maximum size of the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// Feature bits (virtio 1.2, section 5.2.3).
/// `VIRTIO_BLK_F_SEG_MAX`: `seg_max` in config is the maximum number of
/// segments in a request.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// `VIRTIO_BLK_F_RO`: the device is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// `VIRTIO_BLK_F_FLUSH`: the cache flush command is supported.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;

/// Maximum data segments per request: without indirect descriptors a
/// request must fit in the queue next to its header and status
/// descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// Request types (virtio 1.2, section 5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Request status values (virtio 1.2, section 5.2.6).
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Size of the request header: le32 type, le32 reserved, le64 sector
/// (section 5.2.6).
pub const REQUEST_HEADER_SIZE: u64 = 16;

/// Length of the `VIRTIO_BLK_T_GET_ID` answer (section 5.2.6: "20 bytes").
pub const VIRTIO_BLK_ID_BYTES: usize = 20;

/// Config space layout (struct `virtio_blk_config`, section 5.2.4).
pub const CONFIG_CAPACITY_OFFSET: usize = 0;
pub const CONFIG_SEG_MAX_OFFSET: usize = 12;
/// The fields up to and including `blk_size`; later ones (topology,
/// writeback, discard, ...) belong to features this device does not offer.
pub const CONFIG_SPACE_SIZE: usize = 24;

/// Errors of the block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("opening disk image {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the size of disk image {path}: {source}")]
    Metadata {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk image {path} is empty ({size} bytes, less than one {SECTOR_SIZE}-byte sector)")]
    Empty { path: PathBuf, size: u64 },
    /// The shared virtio part: eventfds, activation, the queue, the
    /// interrupt.
    #[error(transparent)]
    Device(#[from] DeviceError),
}
