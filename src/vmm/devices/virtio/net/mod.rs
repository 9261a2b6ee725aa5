//! virtio-net (virtio 1.2, section 5.1) backed by a tap device.
//!
//! - [`tap`]: [`Tap`] (the host side: `/dev/net/tun` with a virtio-net
//!   header on every frame) and [`NetBackend`], what the device needs from
//!   it (tests use a double).
//! - [`device`]: [`Net`], its features, its [`VirtioCore`](super::VirtioCore)
//!   (queues, activation), config space and the rx / tx queue processing.
//! - [`event_handler`]: the event-manager side.
//! - [`detached`]: [`Detached`], a host side with nothing behind it (a
//!   template VM's NICs, which its guest only probes).
//!
//! # Frames
//!
//! Every frame on either queue starts with the 12-byte `virtio_net_hdr`
//! (section 5.1.6; `num_buffers` included, as with `VIRTIO_F_VERSION_1`).
//! The tap is opened with `IFF_VNET_HDR` and a header size of 12, so the
//! header goes through unchanged both ways: checksum and segmentation
//! offload requests (`flags`, `gso_type`, ...) are the tap's and the
//! guest's business. The one exception is `num_buffers`, which the tap
//! leaves alone on reads: the device sets it on every rx frame to the
//! number of buffers (chains) the frame fills (section 5.1.6.3.1: without
//! `VIRTIO_NET_F_MRG_RXBUF` it must be 1).
//!
//! Without `VIRTIO_NET_F_MRG_RXBUF` each rx frame fills exactly one chain;
//! Linux then posts "big packet" chains (a header descriptor and 17 pages)
//! when segmentation offload or a large MTU is negotiated, which hold a
//! [`MAX_FRAME_SIZE`] frame, so a ring holds ~14 and each small frame
//! takes a whole one. `VIRTIO_NET_F_MRG_RXBUF` is therefore offered with
//! the offloads (sections 5.1.6.3, 5.1.6.4): the guest posts
//! one-descriptor buffers (page-sized or smaller) and a frame spreads over
//! as many as it needs; all of a frame's buffers reach the used ring with
//! one used index update, so a driver never sees part of a frame.
//!
//! # Copies
//!
//! Frames move between the tap and guest memory in one copy, the
//! kernel's: rx pops a chain and `readv`s the next frame straight into its
//! buffers (an empty tap puts the chain back on the ring), tx `writev`s a
//! chain's buffers. A chain takes the bounce buffer path (one more copy)
//! when it has more than [`MAX_IOVECS`] descriptors, a descriptor outside
//! one guest memory region, or a bad descriptor (the bounce path reports
//! and drops it); an rx chain also when it is smaller than the largest
//! frame the tap may give (a tap read truncates silently), and the frame
//! read to learn that one waits while the rx queue is empty.
//!
//! With mergeable rx buffers, the device pops buffers until they hold the
//! largest frame the tap may give (within [`MAX_IOVECS`] descriptors),
//! `readv`s the frame across them, and gives the buffers it did not reach
//! back to the ring (they are the last popped: the queue's next available
//! index steps back over them). When the ring holds less than that, or a
//! buffer is odd, the frame is read into the bounce buffer and delivered
//! as soon as the ring holds enough for its actual length; until then it
//! is pending, as below, and the popped buffers go back. A frame larger
//! than the whole descriptor table is dropped.
//!
//! # Events
//!
//! As for the other virtio devices: the VMM hands an `Arc<Mutex<Net>>` to
//! the [`MmioTransport`](super::mmio::MmioTransport) and registers the same
//! `Arc` with the `EventManager`; `MutEventSubscriber::init` watches only
//! the *activate* eventfd. `VirtioDevice::activate` (on a vCPU thread, at
//! `DRIVER_OK`) sets the tap's offloads from the negotiated features,
//! stores memory, queues and interrupt, and writes the activate eventfd. On
//! the event-manager thread that event registers the queue events and the
//! tap (once; they stay registered across resets), then processes the tx
//! queue and drains the tap into the rx queue, so frames that reached the
//! tap before the device was watching it are not stuck.
//!
//! The tap is watched edge-triggered: on each readable edge the device
//! reads frames until the tap is empty or the rx queue has no buffers. In
//! the latter case the frame read last is kept pending, and the rx queue
//! notification (the guest adding buffers) resumes the drain. The tx queue
//! notification sends every available frame. Each pass interrupts the
//! driver at most once.
//!
//! # Notification suppression
//!
//! With [`VIRTIO_F_RING_EVENT_IDX`] negotiated (sections 2.7.7, 2.7.10),
//! kicks and interrupts are rationed (each is a VM exit or an injected
//! interrupt, expensive under nested virtualization):
//!
//! - interrupts: after each pass the driver is interrupted only if the
//!   used index moved past its `used_event`;
//! - tx: a pass pops every chain, then re-arms `avail_event` at the next
//!   chain it will pop and looks again (chains added meanwhile are sent in
//!   the same pass, without a kick);
//! - rx: `avail_event` is re-armed only when a frame waits and the queue
//!   has no buffers (with mergeable buffers: too few for it), so the
//!   driver kicks once it adds some; it is set at the available index
//!   (every available buffer popped, then given back), so the next buffer
//!   kicks even while some wait unused. Re-arming looks at the ring again,
//!   so buffers added just before are used at once. While buffers are
//!   plentiful the driver refills without kicks.
//!
//! Without it, the driver kicks on every addition and is interrupted after
//! every pass that used a buffer.
//!
//! Guest mistakes (a malformed chain, a frame too big, an rx buffer too
//! small) drop the frame, return the chain with a used length of 0, count
//! it and log it (at warn for the 1st, 2nd, 4th, 8th, ... drop each way, at
//! debug otherwise); they never panic.

mod detached;
mod device;
mod event_handler;
pub mod tap;
#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(test), allow(dead_code, unused_imports))]
pub(crate) mod test_utils;

pub use detached::Detached;
pub use device::{Net, NetCounters};

use super::DeviceError;
pub use tap::{NetBackend, Tap, TapError};

/// The device has one receive and one transmit queue (section 5.1.2;
/// neither `VIRTIO_NET_F_CTRL_VQ` nor `VIRTIO_NET_F_MQ` is offered).
pub const NUM_QUEUES: usize = 2;
/// Index of receiveq1.
pub const RX_QUEUE: usize = 0;
/// Index of transmitq1.
pub const TX_QUEUE: usize = 1;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// Feature bits (virtio 1.2, section 5.1.3).
/// `VIRTIO_NET_F_CSUM`: the device handles packets with partial checksum
/// (guest to host checksum offload).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// `VIRTIO_NET_F_GUEST_CSUM`: the driver handles packets with partial
/// checksum.
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// `VIRTIO_NET_F_MTU`: `mtu` in config is the maximum MTU.
pub const VIRTIO_NET_F_MTU: u32 = 3;
/// `VIRTIO_NET_F_MAC`: `mac` in config is the device's address.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// `VIRTIO_NET_F_GUEST_TSO4`: the driver can receive TSOv4.
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
/// `VIRTIO_NET_F_GUEST_TSO6`: the driver can receive TSOv6.
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
/// `VIRTIO_NET_F_GUEST_UFO`: the driver can receive UFO.
pub const VIRTIO_NET_F_GUEST_UFO: u32 = 10;
/// `VIRTIO_NET_F_HOST_TSO4`: the device can receive TSOv4.
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
/// `VIRTIO_NET_F_HOST_TSO6`: the device can receive TSOv6.
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
/// `VIRTIO_NET_F_HOST_UFO`: the device can receive UFO.
pub const VIRTIO_NET_F_HOST_UFO: u32 = 14;
/// `VIRTIO_NET_F_MRG_RXBUF`: the driver can merge receive buffers
/// (sections 5.1.6.3, 5.1.6.4). Offered with the offloads.
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
/// `VIRTIO_NET_F_STATUS`: the config `status` field is available.
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// `VIRTIO_F_RING_EVENT_IDX` (section 6): offered always; both queues use
/// it when negotiated.
pub use super::VIRTIO_F_RING_EVENT_IDX;

/// Offload flags of `TUNSETOFFLOAD` (`linux/if_tun.h`): which partial
/// checksum / GSO frames the tap may hand us, i.e. what the guest accepts.
pub const TUN_F_CSUM: u32 = libc::TUN_F_CSUM;
pub const TUN_F_TSO4: u32 = libc::TUN_F_TSO4;
pub const TUN_F_TSO6: u32 = libc::TUN_F_TSO6;
pub const TUN_F_UFO: u32 = libc::TUN_F_UFO;

/// `VIRTIO_NET_S_LINK_UP` in the config `status` field (section 5.1.4).
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Config space layout (struct `virtio_net_config`, section 5.1.4): `mac`
/// (6 bytes), le16 `status`, le16 `max_virtqueue_pairs`, le16 `mtu`. Later
/// fields belong to features this device does not offer.
pub const CONFIG_MAC_OFFSET: usize = 0;
pub const CONFIG_STATUS_OFFSET: usize = 6;
pub const CONFIG_MAX_VQ_PAIRS_OFFSET: usize = 8;
pub const CONFIG_MTU_OFFSET: usize = 10;
pub const CONFIG_SPACE_SIZE: usize = 12;

/// Length of a MAC address.
pub const MAC_LEN: usize = 6;

/// Size of `struct virtio_net_hdr` with `num_buffers` (section 5.1.6),
/// the header of every frame on both queues and on the tap.
pub const VNET_HDR_SIZE: usize = 12;
/// Offset of the le16 `num_buffers` field in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;

/// Largest Ethernet frame the device moves: a 64 KiB GSO packet with its
/// link-level headers.
pub const MAX_FRAME_PAYLOAD: usize = 65550;
/// Largest frame with its header, the size of the rx and tx buffers
/// (section 5.1.6.3.1: with guest TSO or UFO the driver posts rx buffers
/// of at least 65562 bytes).
pub const MAX_FRAME_SIZE: usize = VNET_HDR_SIZE + MAX_FRAME_PAYLOAD;

/// Most guest buffers one frame moves through in one `readv` / `writev`
/// (rx and tx chains with more descriptors go through a bounce buffer).
/// Linux's biggest chains (a header and 17 pages) fit.
pub const MAX_IOVECS: usize = 64;

/// Ethernet header and VLAN tag (IEEE 802.3, 802.1Q): what an rx frame
/// holds besides `mtu` payload bytes without segmentation offload.
pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;

/// Smallest MTU the device may advertise (section 5.1.4.1: "at least 68").
pub const MIN_MTU: u16 = 68;

/// Errors of the network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network device {tap}: MTU {mtu} is below the minimum of {MIN_MTU}")]
    InvalidMtu { tap: String, mtu: u16 },
    /// The shared virtio part: eventfds, activation, the queues, the
    /// interrupt.
    #[error(transparent)]
    Device(#[from] DeviceError),
}
