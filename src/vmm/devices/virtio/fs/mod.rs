//! virtio-fs (virtio 1.2, section 5.11): a host directory the guest mounts
//! with `mount -t virtiofs TAG DIR`, FUSE over virtqueues. The device copies
//! each request out of guest memory and its answer back in; the FUSE server
//! runs in a process of its own beside a container's VMM (the VMM proper
//! keeps no capability), or in the device's thread (no shared-memory
//! requirement on guest RAM either way, so a VM restored copy-on-write from
//! a template keeps it).
//!
//! - `device`: [`Fs`], its state (`Inactive` / `Activated`), config space
//!   (the tag and the number of request queues) and request processing.
//! - `backend`: the FUSE server and how the device reaches its process.
//! - `channel`: the memory the device and that process share, and how each
//!   side waits for the other.
//! - `share`: the file system behind it: fuse-backend-rs's passthrough
//!   (names resolved one component at a time under `O_PATH` handles with
//!   `O_NOFOLLOW`, never by joining path strings) and husk's policy layer
//!   (read-only shares refused on the host side).
//! - `event_handler`: the event-manager side, as for virtio-blk.
//!
//! # Queues
//!
//! Queue 0 is the high-priority queue (`FUSE_FORGET`, `FUSE_INTERRUPT`),
//! queue 1 the one request queue. Requests are served synchronously on the
//! event-manager thread, in queue order (a remote server answers one
//! request before the next is sent).
//!
//! # Hostile guests
//!
//! A descriptor chain outside guest memory, one whose lengths overflow, or
//! a FUSE message that cannot be decoded is returned with a used length of
//! 0 and counted (the first [`BAD_REQUESTS_LOGGED`] are logged); requests
//! that decode but fail get the FUSE error reply. Messages longer than
//! fuse-backend-rs's `MAX_BUFFER_SIZE` are refused by the server, and no
//! more than [`backend::MAX_REQUEST`] bytes of a chain are read. A server
//! process that ends stops the VM. Nothing
//! a guest sends panics the VMM or reaches a host file outside the shared
//! directory.

pub mod backend;
pub mod channel;
mod device;
mod event_handler;
pub mod idmap;
pub mod nodes;
pub mod share;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod test_utils;

use std::path::PathBuf;
use std::time::Duration;

pub use device::Fs;

/// Queues: high priority + [`NUM_REQUEST_QUEUES`] (section 5.11.2).
pub const NUM_QUEUES: usize = 2;
/// `num_request_queues` in the config space.
pub const NUM_REQUEST_QUEUES: u32 = 1;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// The tag is at most 36 bytes of UTF-8, NUL-padded (section 5.11.4).
pub const TAG_MAX: usize = 36;
/// Config space: `tag[36]`, `le32 num_request_queues` (section 5.11.4).
pub const CONFIG_TAG_OFFSET: usize = 0;
pub const CONFIG_NUM_QUEUES_OFFSET: usize = TAG_MAX;
pub const CONFIG_SPACE_SIZE: usize = TAG_MAX + 4;
/// How long the guest may trust a name or an attribute before asking again
/// (changes made on the host show after at most this long).
pub const ENTRY_TIMEOUT: Duration = Duration::from_secs(1);
/// Undecodable requests logged per device (the rest are only counted).
pub const BAD_REQUESTS_LOGGED: u64 = 16;

/// Errors of the fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {tag:?} must be 1 to {TAG_MAX} bytes")]
    Tag { tag: String },
    #[error("virtio-fs {tag}: shared directory {path}: {source}")]
    Root {
        tag: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("virtio-fs {tag}: shared directory {path} is not valid UTF-8")]
    Path { tag: String, path: PathBuf },
    #[error("virtio-fs {tag}: serving {path}: {source}")]
    Passthrough {
        tag: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Device(#[from] crate::vmm::devices::virtio::core::DeviceError),
    #[error("virtio-fs {tag}: {reason}")]
    Backend { tag: String, reason: String },
}
