//! virtio-vsock (virtio 1.2, section 5.10) with a Unix-socket host side.
//!
//! The guest sees a socket device with its own CID; the host (CID 2) side of
//! every connection is a Unix stream socket in the VMM process, in the model
//! Firecracker made common (no vhost-vsock, no host kernel vsock support
//! needed).
//!
//! - `device`: [`Vsock`], its features, its [`VirtioCore`](super::VirtioCore)
//!   (queues, activation), config space and the rx / tx queue processing.
//! - `muxer`: the host side: the listening socket, host clients that have
//!   not yet said which port they want, the connection table, and what is
//!   owed to the guest (the rx work list and connection-less replies).
//! - `connection`: one connection: its state, shutdown flags, credit-based
//!   flow control both ways and I/O on its host socket.
//! - `packet`: the packet header and reading / writing packets from / to
//!   descriptor chains.
//! - `event_handler`: the event-manager side.
//!
//! # Host side protocol
//!
//! The device listens on the Unix socket `uds_path` given to [`Vsock::new`]
//! (a stale socket file there is replaced; the file is removed when the
//! device is dropped).
//!
//! *Host to guest*: a host process connects to `uds_path` and writes
//! `CONNECT <port>\n` (decimal port, nothing else on the line). The device
//! sends the guest an `OP_REQUEST` from CID 2 and an ephemeral local port
//! (from [`EPHEMERAL_PORT_FIRST`] up) to `guest_cid:<port>`. When the guest
//! accepts (`OP_RESPONSE`), the device writes `OK <local port>\n` to the
//! client and from then on relays bytes both ways. When nothing listens in
//! the guest (`OP_RST`), when the guest does not answer within
//! [`CONNECT_TIMEOUT`] (also the limit for sending the line after
//! connecting), or when the line is malformed, the client is closed without
//! a reply. Bytes the client sends after the line are held (in its socket)
//! and relayed once the connection is established.
//!
//! *Guest to host*: a guest connecting to CID 2, port `P` makes the device
//! connect to the Unix socket `<uds_path>_P` (e.g. `/run/vm.vsock_1024`):
//! on success the guest gets `OP_RESPONSE`, otherwise `OP_RST`. That
//! connect is a blocking call (as in Firecracker): services should listen
//! with a backlog of at least [`MAX_CONNECTIONS`] (Rust's and Go's default,
//! `SOMAXCONN`, is) so that it never waits.
//!
//! Either side closing its write direction is relayed as a half-close (host
//! EOF: `OP_SHUTDOWN` with `SEND`; guest `SHUTDOWN SEND`: `shutdown(Write)`
//! of the host socket once buffered data is written); when both directions
//! are closed the device sends `OP_RST` and closes the host socket. A guest
//! `OP_RST` closes the host socket at once. A connect request that never
//! reached the guest (no rx buffers before the timeout) ends without a
//! reset.
//!
//! # Limits
//!
//! Per connection the device advertises [`CONN_BUF_ALLOC`] bytes of buffer
//! and holds at most that much guest data for a slow host socket (a guest
//! that sends more than its credit is reset); host data is read only when
//! the guest has credit and rx buffers for it, straight into a packet of at
//! most [`MAX_PKT_PAYLOAD`] bytes. At most [`MAX_CONNECTIONS`] connections
//! and [`MAX_PENDING_CLIENTS`] host clients still sending their `CONNECT`
//! line exist at once (beyond that: `OP_RST` / the client is closed). At
//! most [`MAX_PENDING_REPLIES`] connection-less replies (resets) wait for rx
//! buffers; beyond that the tx queue is not processed until the guest
//! supplies rx buffers (section 5.10.6.1).
//!
//! # Events
//!
//! As for virtio-blk: the VMM registers `queue_events()` as ioeventfds and
//! the device (`Arc<Mutex<Vsock>>`) with the event manager before the guest
//! runs. `MutEventSubscriber::init` registers the activate eventfd, the
//! listening socket and a timer (connect timeouts). `activate` writes the
//! activate eventfd and the event-manager thread then registers the three
//! queue events (once; they stay registered across resets). `reset` writes
//! the same eventfd so that the event thread unregisters and closes the
//! host sockets of the connections the reset dropped.
//!
//! Host sockets are non-blocking and registered with `EPOLLIN` while the
//! device wants to read them (established, not at EOF, and not already
//! known to be readable) and `EPOLLOUT` while guest data waits for them;
//! with neither they are not in the epoll set at all (so a hung-up socket
//! doesn't spin the loop). After every event the device processes both
//! queues (tx first) and brings the registrations up to date.
//!
//! # Hostile guests
//!
//! Nothing the guest writes panics the VMM: packets with a short header, a
//! `len` larger than the chain or than [`MAX_PKT_PAYLOAD`], descriptors
//! outside guest memory, or the wrong CIDs are dropped (and logged; after
//! the first few, only every power of two at `warn`); rx buffers outside
//! guest memory or shorter than a header are returned with length 0; an
//! unknown `type` or `op`, or a packet for an unknown connection, is
//! answered with `OP_RST` (never an `OP_RST` in reply to one); protocol
//! violations on a connection (credit exceeded, data after `SHUTDOWN SEND`,
//! an op out of place) reset it.

mod connection;
mod device;
mod event_handler;
mod muxer;
pub use muxer::{CHECKPOINT_LINE, CHECKPOINT_OK, LEAVE_RUNNING};
mod packet;
#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(test), allow(dead_code, unused_imports))]
pub(crate) mod test_utils;

use std::path::PathBuf;
use std::time::Duration;

pub use device::Vsock;

use super::DeviceError;

/// Virtqueues (section 5.10.2): rx (device to driver), tx (driver to
/// device), event.
pub const NUM_QUEUES: usize = 3;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// Config space: `le64 guest_cid` (section 5.10.4).
pub const CONFIG_SPACE_SIZE: usize = 8;

/// Well-known CID of the host (section 5.10.4).
pub const HOST_CID: u64 = 2;
/// Smallest CID a guest may have: 0 and 1 are reserved, 2 is the host
/// (section 5.10.4).
pub const MIN_GUEST_CID: u64 = 3;
/// Largest CID a guest may have: the upper 32 bits are reserved and
/// `0xffffffff` is reserved too (section 5.10.4).
pub const MAX_GUEST_CID: u64 = 0xffff_fffe;

/// Size of `struct virtio_vsock_hdr` (section 5.10.6): le64 src_cid, le64
/// dst_cid, le32 src_port, le32 dst_port, le32 len, le16 type, le16 op,
/// le32 flags, le32 buf_alloc, le32 fwd_cnt.
pub const HDR_SIZE: usize = 44;

/// `VIRTIO_VSOCK_TYPE_STREAM` (section 5.10.6.2): the only socket type
/// offered (no feature bits, section 5.10.3).
pub const TYPE_STREAM: u16 = 1;

/// `op` values (section 5.10.6).
pub const OP_INVALID: u16 = 0;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// `OP_SHUTDOWN` flags (section 5.10.6.5): the sender will receive no more
/// data (`VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE`, bit 0) / send no more data
/// (`VIRTIO_VSOCK_SHUTDOWN_F_SEND`, bit 1).
pub const SHUTDOWN_RCV: u32 = 1 << 0;
pub const SHUTDOWN_SEND: u32 = 1 << 1;

/// Receive buffer space the device advertises per connection (`buf_alloc`,
/// section 5.10.6.3): the most guest data it holds for a slow host socket.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload of one packet, either way (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`); guest packets claiming more are
/// dropped.
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// A credit update is sent when the free space the guest last heard of
/// falls below this.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 64 * 1024;
/// Connections open at once.
pub const MAX_CONNECTIONS: usize = 128;
/// Host clients connected to `uds_path` that have not yet sent their
/// `CONNECT` line.
pub const MAX_PENDING_CLIENTS: usize = 32;
/// Longest accepted `CONNECT <port>\n` line, newline included.
pub const MAX_CONNECT_LINE: usize = 32;
/// How long a host client may take to send its `CONNECT` line, and the
/// guest to answer the request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connection-less replies (resets) waiting for rx buffers before the tx
/// queue is left alone.
pub const MAX_PENDING_REPLIES: usize = 256;
/// First local port of host-initiated connections (ports below are left to
/// the `<uds_path>_<port>` services the guest connects to).
pub const EPHEMERAL_PORT_FIRST: u32 = 1 << 30;

/// Errors of the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {cid} is reserved (valid: {MIN_GUEST_CID}..={MAX_GUEST_CID})")]
    InvalidCid { cid: u64 },
    #[error("vsock socket path {path} exists and is not a socket")]
    NotASocket { path: PathBuf },
    #[error("inspecting vsock socket path {path}: {source}")]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("removing stale vsock socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listening on vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating the timer of vsock device {path}: {source}")]
    Timer {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The shared virtio part: eventfds, activation, the queues, the
    /// interrupt.
    #[error(transparent)]
    Device(#[from] DeviceError),
}
