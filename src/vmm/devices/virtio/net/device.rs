//! The virtio-net device on the shared core: features, config space
//! and the rx / tx queue processing.

use std::io::ErrorKind;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use log::{debug, warn};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
    VolatileSlice,
};

use super::tap::{NetBackend, Tap};
use super::{
    NetError, CONFIG_MAC_OFFSET, CONFIG_MAX_VQ_PAIRS_OFFSET, CONFIG_MTU_OFFSET, CONFIG_SPACE_SIZE,
    CONFIG_STATUS_OFFSET, ETH_HLEN, MAC_LEN, MAX_FRAME_PAYLOAD, MAX_FRAME_SIZE, MAX_IOVECS,
    MIN_MTU, NUM_BUFFERS_OFFSET, NUM_QUEUES, QUEUE_SIZE, RX_QUEUE, TUN_F_CSUM, TUN_F_TSO4,
    TUN_F_TSO6, TUN_F_UFO, TX_QUEUE, VIRTIO_F_RING_EVENT_IDX, VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP, VLAN_HLEN,
    VNET_HDR_SIZE,
};
use crate::vmm::devices::virtio::core::{
    add_used, enable_notification, queue_error, raise_used, signal_used, ActiveQueue,
};
use crate::vmm::devices::virtio::{
    ActivateError, Interrupt, VirtioCore, VirtioDevice, TYPE_NET, VIRTIO_F_VERSION_1,
};

/// `max_virtqueue_pairs` in config: one rx / tx pair.
const MAX_VIRTQUEUE_PAIRS: u16 = 1;

/// One rx pass's view of an activated [`Net`] (see `Net::rx_parts`).
struct RxParts<'a, B> {
    /// The core's label (`net <tap>`), for logs and errors.
    name: &'a str,
    mem: &'a GuestMemoryMmap,
    interrupt: &'a Arc<dyn Interrupt>,
    queue: &'a mut Queue,
    backend: &'a mut B,
    rx_buf: &'a mut [u8],
    rx_pending: &'a mut Option<usize>,
    rx_min_vectored: usize,
    counters: &'a mut NetCounters,
}

/// What went through the device since it was created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames handed to the guest.
    pub rx_frames: u64,
    /// Their bytes, without the virtio-net header.
    pub rx_bytes: u64,
    /// Frames from the tap the guest did not get: its buffer was too small
    /// or malformed, the tap gave a runt, or the device was reset with the
    /// frame pending.
    pub rx_dropped: u64,
    /// Frames sent to the tap.
    pub tx_frames: u64,
    /// Their bytes, without the virtio-net header.
    pub tx_bytes: u64,
    /// Guest frames not sent: malformed or oversized chains, tap errors.
    pub tx_dropped: u64,
}

/// Why one frame was dropped (logged, never fatal).
#[derive(Debug, thiserror::Error)]
pub(super) enum FrameError {
    #[error("descriptor {index} of a tx chain is device-writable")]
    WritableTx { index: usize },
    #[error("descriptor {index} of an rx chain is device-readable")]
    ReadableRx { index: usize },
    #[error("descriptor {index} ({len} bytes at {addr:#x}) is not in guest memory: {source}")]
    Memory {
        index: usize,
        addr: u64,
        len: u32,
        source: GuestMemoryError,
    },
    #[error("tx frame is larger than {MAX_FRAME_SIZE} bytes")]
    TxTooLarge,
    #[error("tx frame of {len} bytes is shorter than the {VNET_HDR_SIZE}-byte header")]
    TxShort { len: usize },
    #[error("rx frame of {frame} bytes does not fit in the {capacity}-byte buffer")]
    RxTooSmall { frame: usize, capacity: usize },
    #[error("rx buffer has no device-writable bytes")]
    RxEmptyBuffer,
    #[error(
        "descriptor {index} ({len} bytes at {addr:#x}) of an rx buffer is not in guest memory"
    )]
    RxOutside { index: usize, addr: u64, len: u32 },
    #[error("rx frame of {frame} bytes does not fit in the whole ring ({capacity} bytes)")]
    RxTooLargeForRing { frame: usize, capacity: usize },
    #[error("the tap gave a {len}-byte frame, shorter than the {VNET_HDR_SIZE}-byte header")]
    Runt { len: usize },
    #[error("writing to the tap: {0}")]
    Backend(std::io::Error),
}

/// A virtio-net device on a tap (or, in tests, another [`NetBackend`]).
pub struct Net<B: NetBackend = Tap> {
    /// The log name: the tap's.
    name: String,
    pub(super) backend: B,
    /// Features, queues, activation (its activate event also starts the
    /// watch on the tap, see the module docs).
    pub(super) core: VirtioCore,
    config_space: [u8; CONFIG_SPACE_SIZE],
    /// Whether the backend's fd is registered with the event manager.
    pub(super) backend_registered: bool,
    /// The frame read from the backend last ([`MAX_FRAME_SIZE`] bytes).
    rx_buf: Vec<u8>,
    /// The length of the frame in `rx_buf` still owed to the guest, which
    /// had no rx buffer for it.
    pub(super) rx_pending: Option<usize>,
    /// The smallest rx chain a frame is read into directly (every frame
    /// the tap may give fits, so none is truncated unseen): the header and
    /// [`MAX_FRAME_PAYLOAD`] bytes with guest segmentation offload, the
    /// header and an MTU-sized Ethernet frame with a VLAN tag otherwise.
    /// Set at activation.
    rx_min_vectored: usize,
    /// The frame being gathered from a tx chain ([`MAX_FRAME_SIZE`] bytes).
    tx_buf: Vec<u8>,
    counters: NetCounters,
}

impl<B: NetBackend> std::fmt::Debug for Net<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("name", &self.name)
            .field("mac", &self.mac())
            .field("acked_features", &self.core.acked_features())
            .field("activated", &self.core.is_activated())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Whether `features` has feature bit `bit`.
fn has(features: u64, bit: u32) -> bool {
    features & (1u64 << bit) != 0
}

/// The tap offloads (`TUN_F_*`) matching the negotiated `GUEST_*`
/// features: which partial-checksum and GSO frames the guest accepts.
pub(super) fn tun_offload_flags(acked: u64) -> u32 {
    [
        (VIRTIO_NET_F_GUEST_CSUM, TUN_F_CSUM),
        (VIRTIO_NET_F_GUEST_TSO4, TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, TUN_F_UFO),
    ]
    .into_iter()
    .filter(|&(bit, _)| has(acked, bit))
    .fold(0, |flags, (_, flag)| flags | flag)
}

impl<B: NetBackend> Net<B> {
    /// A device with MAC address `mac` and MTU `mtu` (advertised to the
    /// guest) on `backend`; with `offload`, checksum and TCP segmentation
    /// offload are offered both ways.
    pub fn new(backend: B, mac: [u8; 6], mtu: u16, offload: bool) -> Result<Self, NetError> {
        let name = backend.name().to_string();
        if mtu < MIN_MTU {
            return Err(NetError::InvalidMtu { tap: name, mtu });
        }
        let mut avail_features = [
            VIRTIO_F_VERSION_1,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_MTU,
            VIRTIO_NET_F_STATUS,
            VIRTIO_F_RING_EVENT_IDX,
        ]
        .iter()
        .fold(0u64, |f, &bit| f | 1u64 << bit);
        if offload {
            avail_features |= [
                VIRTIO_NET_F_CSUM,
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_HOST_TSO4,
                VIRTIO_NET_F_HOST_TSO6,
                // With guest TSO, Linux otherwise posts 65 KiB "big
                // packet" chains, ~14 to a ring, each taken by any frame.
                VIRTIO_NET_F_MRG_RXBUF,
            ]
            .iter()
            .fold(0u64, |f, &bit| f | 1u64 << bit);
        }
        let core = VirtioCore::new(
            TYPE_NET,
            format!("net {name}"),
            avail_features,
            &[QUEUE_SIZE; NUM_QUEUES],
        )?;

        let mut config_space = [0u8; CONFIG_SPACE_SIZE];
        config_space[CONFIG_MAC_OFFSET..CONFIG_MAC_OFFSET + MAC_LEN].copy_from_slice(&mac);
        config_space[CONFIG_STATUS_OFFSET..CONFIG_STATUS_OFFSET + 2]
            .copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config_space[CONFIG_MAX_VQ_PAIRS_OFFSET..CONFIG_MAX_VQ_PAIRS_OFFSET + 2]
            .copy_from_slice(&MAX_VIRTQUEUE_PAIRS.to_le_bytes());
        config_space[CONFIG_MTU_OFFSET..CONFIG_MTU_OFFSET + 2].copy_from_slice(&mtu.to_le_bytes());

        debug!(
            "net {name}: mac {}, mtu {mtu}{}",
            format_mac(&mac),
            if offload { ", offloads" } else { "" }
        );
        Ok(Net {
            name,
            backend,
            core,
            config_space,
            backend_registered: false,
            rx_buf: vec![0; MAX_FRAME_SIZE],
            rx_pending: None,
            rx_min_vectored: MAX_FRAME_SIZE,
            tx_buf: vec![0; MAX_FRAME_SIZE],
            counters: NetCounters::default(),
        })
    }

    /// The log name (the tap's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; MAC_LEN] {
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&self.config_space[CONFIG_MAC_OFFSET..CONFIG_MAC_OFFSET + MAC_LEN]);
        mac
    }

    /// The MTU advertised to the guest.
    pub fn mtu(&self) -> u16 {
        let mut mtu = [0u8; 2];
        mtu.copy_from_slice(&self.config_space[CONFIG_MTU_OFFSET..CONFIG_MTU_OFFSET + 2]);
        u16::from_le_bytes(mtu)
    }

    /// What went through the device so far.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// The rx queue and what an rx pass works with, borrowed apart;
    /// `DeviceError::NotActivated` before activation.
    fn rx_parts(&mut self) -> Result<RxParts<'_, B>, NetError> {
        let Net {
            core,
            backend,
            rx_buf,
            rx_pending,
            rx_min_vectored,
            counters,
            ..
        } = self;
        let ActiveQueue {
            device,
            mem,
            interrupt,
            queue,
        } = core.active_mut()?.into_queue(RX_QUEUE)?;
        Ok(RxParts {
            name: device,
            mem,
            interrupt,
            queue,
            backend,
            rx_buf,
            rx_pending,
            rx_min_vectored: *rx_min_vectored,
            counters,
        })
    }

    /// Moves frames from the backend to rx buffers until either runs out
    /// (the last frame read stays pending when buffers did), and
    /// interrupts the driver once if any buffer was used. Returns whether
    /// any was.
    pub fn process_rx(&mut self) -> Result<bool, NetError> {
        if self.core.has_feature(VIRTIO_NET_F_MRG_RXBUF) {
            return self.process_rx_mergeable();
        }
        let RxParts {
            name,
            mem,
            interrupt,
            queue,
            backend,
            rx_buf,
            rx_pending,
            rx_min_vectored,
            counters,
        } = self.rx_parts()?;
        let event_idx = queue.event_idx_enabled();
        let mut used = false;
        loop {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // No buffer. A frame read before is still owed; otherwise
                // read the next one into the bounce buffer, so the device
                // knows a frame waits (its tap edge is gone).
                let pending = match rx_pending.take() {
                    Some(len) => len,
                    None => match read_frame(backend, rx_buf, counters, name) {
                        Some(len) => len,
                        None => break,
                    },
                };
                // Resumed by the rx queue notification.
                *rx_pending = Some(pending);
                // With EVENT_IDX, ask for that notification (the driver
                // kicks when it adds the next buffer), and look again:
                // buffers added before `avail_event` moved bring no kick.
                if event_idx && enable_notification(name, RX_QUEUE, queue, mem)? {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let delivered = if let Some(len) = rx_pending.take() {
                Delivery::Buffered(write_rx_chain(mem, chain, &rx_buf[..len]), len)
            } else if let Some(bufs) = rx_slices(mem, &chain, rx_min_vectored) {
                // Straight from the tap into the guest's buffers.
                match read_frame_vectored(backend, &bufs, counters, name) {
                    VectoredRead::Frame(len) => {
                        set_num_buffers(&bufs, 1);
                        // One tap frame: far below u32::MAX.
                        let used_len = u32::try_from(len).unwrap_or(u32::MAX);
                        Delivery::Buffered(Ok(used_len), len)
                    }
                    VectoredRead::Runt => Delivery::Retry,
                    VectoredRead::Empty => Delivery::Empty,
                }
            } else {
                // Too many or odd descriptors, or too small for every frame
                // the tap may give: through the bounce buffer, which
                // drops what does not fit.
                match read_frame(backend, rx_buf, counters, name) {
                    Some(len) => {
                        Delivery::Buffered(write_rx_chain(mem, chain, &rx_buf[..len]), len)
                    }
                    None => Delivery::Empty,
                }
            };
            let (result, len) = match delivered {
                Delivery::Buffered(result, len) => (result, len),
                Delivery::Retry | Delivery::Empty => {
                    // The chain was not used: give it back to the ring
                    // (never used with length 0), for the next frame.
                    queue.go_to_previous_position();
                    if matches!(delivered, Delivery::Retry) {
                        continue;
                    }
                    break;
                }
            };
            let used_len = match result {
                Ok(used_len) => {
                    counters.rx_frames += 1;
                    counters.rx_bytes += payload_len(len);
                    used_len
                }
                Err(err) => {
                    counters.rx_dropped += 1;
                    log_drop(name, "rx", counters.rx_dropped, &err);
                    0
                }
            };
            used |= add_used(name, RX_QUEUE, queue, mem, head, used_len)?;
        }
        if used {
            signal_used(name, RX_QUEUE, queue, mem, interrupt.as_ref())?;
        }
        Ok(used)
    }

    /// [`Net::process_rx`] with `VIRTIO_NET_F_MRG_RXBUF` negotiated
    /// (sections 5.1.6.3, 5.1.6.4): a frame spreads over as many buffers
    /// (chains) as it needs, `num_buffers` in its header says how many.
    ///
    /// A frame is read straight into the buffers when those on the ring
    /// hold the largest frame the tap may give within [`MAX_IOVECS`]
    /// descriptors; the buffers it did not reach go back to the ring.
    /// Otherwise it is read into the bounce buffer and waits (pending)
    /// until the ring holds enough for its actual length.
    fn process_rx_mergeable(&mut self) -> Result<bool, NetError> {
        let RxParts {
            name,
            mem,
            interrupt,
            queue,
            backend,
            rx_buf,
            rx_pending,
            rx_min_vectored,
            counters,
        } = self.rx_parts()?;
        let event_idx = queue.event_idx_enabled();
        // Where the used index stood when this pass began: the driver's
        // `used_event` is checked against what the pass added.
        let used_before = queue.next_used();
        let mut used = false;
        loop {
            let len = match rx_pending.take() {
                Some(len) => len,
                None => match read_merged_vectored(
                    queue,
                    mem,
                    backend,
                    rx_min_vectored,
                    counters,
                    name,
                )? {
                    Merged::Frame { len, published } => {
                        counters.rx_frames += 1;
                        counters.rx_bytes += payload_len(len);
                        used |= published;
                        continue;
                    }
                    // Counted and dropped; the buffers went back.
                    Merged::Runt => continue,
                    Merged::Empty => break,
                    Merged::Short => match read_frame(backend, rx_buf, counters, name) {
                        Some(len) => len,
                        None => break,
                    },
                },
            };
            match place_merged(queue, mem, &mut rx_buf[..len], name)? {
                Placed::Delivered { published } => {
                    counters.rx_frames += 1;
                    counters.rx_bytes += payload_len(len);
                    used |= published;
                }
                Placed::Dropped { err, published } => {
                    counters.rx_dropped += 1;
                    log_drop(name, "rx", counters.rx_dropped, &err);
                    used |= published;
                }
                Placed::Wait { popped } => {
                    // Resumed by the rx queue notification. With EVENT_IDX,
                    // ask for it while every available buffer is popped
                    // (`avail_event` = the available index: the driver's
                    // next buffer kicks), then give the buffers back.
                    let added = event_idx && enable_notification(name, RX_QUEUE, queue, mem)?;
                    for _ in 0..popped {
                        queue.go_to_previous_position();
                    }
                    *rx_pending = Some(len);
                    if added {
                        // Buffers came meanwhile, without a kick.
                        continue;
                    }
                    break;
                }
            }
        }
        if used && rx_needs_interrupt(queue, mem, used_before, name)? {
            raise_used(name, interrupt.as_ref())?;
        }
        Ok(used)
    }

    /// Sends every available tx frame to the backend, returns the chains
    /// and interrupts the driver once if any was. Returns whether any was.
    pub fn process_tx(&mut self) -> Result<bool, NetError> {
        let Net {
            core,
            backend,
            tx_buf,
            counters,
            ..
        } = self;
        let ActiveQueue {
            device: name,
            mem,
            interrupt,
            queue,
        } = core.active_mut()?.into_queue(TX_QUEUE)?;
        let event_idx = queue.event_idx_enabled();
        let mut used = false;
        loop {
            if event_idx {
                queue
                    .disable_notification(mem)
                    .map_err(|source| queue_error(name, TX_QUEUE, source))?;
            }
            used |= send_available(queue, mem, backend, tx_buf, counters, name)?;
            // Without EVENT_IDX the driver kicks on every chain. With it,
            // ask for a kick at the next chain, and send what was added
            // while `avail_event` was stale (no kick comes for it).
            if !(event_idx && enable_notification(name, TX_QUEUE, queue, mem)?) {
                break;
            }
        }
        if used {
            signal_used(name, TX_QUEUE, queue, mem, interrupt.as_ref())?;
        }
        Ok(used)
    }
}

/// Sends every chain available on the tx `queue` to `backend` and returns
/// them; returns whether any was.
fn send_available<B: NetBackend>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    backend: &mut B,
    tx_buf: &mut [u8],
    counters: &mut NetCounters,
    name: &str,
) -> Result<bool, NetError> {
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let sent = if let Some((bufs, len)) = tx_slices(mem, &chain) {
            // Straight from the guest's buffers to the tap.
            backend
                .write_frame_vectored(&bufs)
                .map(|_| len)
                .map_err(FrameError::Backend)
        } else {
            // Through the gather buffer, which also reports what is wrong
            // with a bad chain.
            read_tx_chain(mem, chain, tx_buf).and_then(|len| {
                backend
                    .write_frame(&tx_buf[..len])
                    .map(|_| len)
                    .map_err(FrameError::Backend)
            })
        };
        match sent {
            Ok(len) => {
                counters.tx_frames += 1;
                counters.tx_bytes += payload_len(len);
            }
            Err(err) => {
                counters.tx_dropped += 1;
                log_drop(name, "tx", counters.tx_dropped, &err);
            }
        }
        // The device writes nothing into tx buffers (section 5.1.6.2).
        used |= add_used(name, TX_QUEUE, queue, mem, head, 0)?;
    }
    Ok(used)
}

/// The smallest rx chain capacity that holds every frame the tap may give
/// with features `acked` and MTU `mtu` (see `Net::rx_min_vectored`).
pub(super) fn rx_min_vectored(acked: u64, mtu: u16) -> usize {
    let gso = [
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
    ]
    .into_iter()
    .any(|bit| has(acked, bit));
    let payload = if gso {
        MAX_FRAME_PAYLOAD
    } else {
        usize::from(mtu) + ETH_HLEN + VLAN_HLEN
    };
    VNET_HDR_SIZE + payload
}

/// What became of a popped rx chain.
enum Delivery {
    /// A frame of this length (header included) was written into it, or
    /// dropped for the error.
    Buffered(Result<u32, FrameError>, usize),
    /// The tap gave a runt, dropped: try the chain with the next frame.
    Retry,
    /// The tap had no frame: the chain goes back to the ring.
    Empty,
}

/// What a vectored read gave.
enum VectoredRead {
    /// A frame of this length, header included.
    Frame(usize),
    /// A frame shorter than the header, counted and dropped.
    Runt,
    /// No frame (or a tap error, logged).
    Empty,
}

/// The device-writable descriptors of rx `chain` as guest memory slices,
/// if the frame can be read straight into them: at most [`MAX_IOVECS`]
/// non-empty descriptors, each inside one guest memory region, together
/// at least `min_capacity` bytes. `None` sends the chain through the
/// bounce buffer, which also reports what is wrong with a bad chain.
fn rx_slices<'m>(
    mem: &'m GuestMemoryMmap,
    chain: &DescriptorChain<&'m GuestMemoryMmap>,
    min_capacity: usize,
) -> Option<Vec<VolatileSlice<'m>>> {
    let (slices, capacity) = chain_slices(mem, chain, true)?;
    (capacity >= min_capacity).then_some(slices)
}

/// The device-readable descriptors of tx `chain` as guest memory slices,
/// if the frame can be written straight from them: as for [`rx_slices`],
/// and the frame holds its header and is at most [`MAX_FRAME_SIZE`]
/// bytes. Returns them and the frame length.
fn tx_slices<'m>(
    mem: &'m GuestMemoryMmap,
    chain: &DescriptorChain<&'m GuestMemoryMmap>,
) -> Option<(Vec<VolatileSlice<'m>>, usize)> {
    let (slices, len) = chain_slices(mem, chain, false)?;
    (VNET_HDR_SIZE..=MAX_FRAME_SIZE)
        .contains(&len)
        .then_some((slices, len))
}

/// The non-empty descriptors of `chain`, all device-writable (`writable`)
/// or all device-readable, as slices of guest memory, with their total
/// length; `None` if one is the other kind, is not inside one region of
/// guest memory, or they are more than [`MAX_IOVECS`]. Every slice comes
/// from `get_slice`, which checks that the whole range is guest memory.
fn chain_slices<'m>(
    mem: &'m GuestMemoryMmap,
    chain: &DescriptorChain<&'m GuestMemoryMmap>,
    writable: bool,
) -> Option<(Vec<VolatileSlice<'m>>, usize)> {
    let mut slices = Vec::with_capacity(MAX_IOVECS);
    let mut total = 0usize;
    for desc in chain.clone() {
        if desc.is_write_only() != writable {
            return None;
        }
        if desc.len() == 0 {
            continue;
        }
        if slices.len() == MAX_IOVECS {
            return None;
        }
        let len = usize::try_from(desc.len()).ok()?;
        slices.push(mem.get_slice(desc.addr(), len).ok()?);
        total = total.checked_add(len)?;
    }
    Some((slices, total))
}

/// Sets `num_buffers` to `count` in the header of a frame read into
/// `bufs` (the tap leaves it alone; without `VIRTIO_NET_F_MRG_RXBUF` it is
/// 1, section 5.1.6.3.1), however the header is split.
fn set_num_buffers(bufs: &[VolatileSlice<'_>], count: u16) {
    let value = count.to_le_bytes();
    let mut start = 0usize;
    for buf in bufs.iter() {
        let end = start + buf.len();
        for (i, &byte) in value.iter().enumerate() {
            let at = NUM_BUFFERS_OFFSET + i;
            if (start..end).contains(&at) {
                // In bounds: `at - start` < `buf.len()`.
                let _ = buf.write_obj(byte, at - start);
            }
        }
        if end >= VNET_HDR_SIZE {
            return;
        }
        start = end;
    }
}

/// Split virtqueue layout (section 2.7.6, 2.7.8): the available ring is
/// le16 `flags`, le16 `idx`, le16 `ring[size]`, le16 `used_event`; the
/// used ring le16 `flags`, le16 `idx`, then `size` elements of le32 `id`
/// and le32 `len`.
const RING_IDX_OFFSET: u64 = 2;
const RING_HEADER_SIZE: u64 = 4;
const AVAIL_ELEM_SIZE: u64 = 2;
const USED_ELEM_SIZE: u64 = 8;

/// What became of a frame read straight into mergeable rx buffers.
enum Merged {
    /// A frame of this length (header included) was delivered; whether
    /// its buffers went on the used ring.
    Frame { len: usize, published: bool },
    /// The tap gave a runt (counted and dropped); the buffers went back.
    Runt,
    /// The tap had no frame; the buffers went back.
    Empty,
    /// The ring holds too little for a straight read (or a buffer is odd):
    /// the buffers went back, the frame goes through the bounce buffer.
    Short,
}

/// What became of a bounce-buffered frame offered to mergeable rx
/// buffers.
enum Placed {
    /// Delivered; whether its buffers went on the used ring.
    Delivered { published: bool },
    /// Dropped for `err`; whether buffers went on the used ring (with
    /// length 0).
    Dropped { err: FrameError, published: bool },
    /// The ring holds too little for it: `popped` buffers were popped, the
    /// whole ring, and must go back.
    Wait { popped: usize },
}

/// Gives the last `count` popped chains back to the ring, newest first.
/// `go_to_previous_position` only steps the queue's next available index
/// back, so the chains are popped again in the same order.
fn unpop(queue: &mut Queue, count: usize) {
    for _ in 0..count {
        queue.go_to_previous_position();
    }
}

/// Reads the next frame from the backend straight across as many rx
/// chains as needed to hold `min_capacity` bytes (every frame the tap may
/// give), within [`MAX_IOVECS`] descriptors; puts the chains the frame
/// filled on the used ring, `num_buffers` set, and gives the rest back.
fn read_merged_vectored<B: NetBackend>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    backend: &mut B,
    min_capacity: usize,
    counters: &mut NetCounters,
    name: &str,
) -> Result<Merged, NetError> {
    let mut chains: Vec<(u16, usize)> = Vec::new();
    let mut bufs: Vec<VolatileSlice<'_>> = Vec::with_capacity(MAX_IOVECS);
    let mut capacity = 0usize;
    while capacity < min_capacity {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            unpop(queue, chains.len());
            return Ok(Merged::Short);
        };
        let slices = chain_slices(mem, &chain, true)
            .filter(|(slices, len)| *len > 0 && bufs.len() + slices.len() <= MAX_IOVECS);
        let Some((slices, len)) = slices else {
            // Full, odd or bad: the bounce path sorts it out.
            unpop(queue, chains.len() + 1);
            return Ok(Merged::Short);
        };
        chains.push((chain.head_index(), len));
        bufs.extend(slices);
        capacity = capacity.saturating_add(len);
    }
    let len = match read_frame_vectored(backend, &bufs, counters, name) {
        VectoredRead::Frame(len) => len,
        other => {
            unpop(queue, chains.len());
            return Ok(match other {
                VectoredRead::Runt => Merged::Runt,
                _ => Merged::Empty,
            });
        }
    };
    let elems = fill_lengths(&chains, len);
    // At most the queue size (256) chains.
    set_num_buffers(&bufs, u16::try_from(elems.len()).unwrap_or(u16::MAX));
    unpop(queue, chains.len() - elems.len());
    let published = publish_used(queue, mem, &elems, name)?;
    Ok(Merged::Frame { len, published })
}

/// The used elements of a `len`-byte frame written in order across
/// `chains` (head index, capacity): each chain the frame reached, with the
/// bytes it got.
fn fill_lengths(chains: &[(u16, usize)], len: usize) -> Vec<(u16, u32)> {
    let mut left = len;
    let mut elems = Vec::new();
    for &(head, capacity) in chains {
        if left == 0 {
            break;
        }
        let n = capacity.min(left);
        left -= n;
        // One chain's share of one frame: far below u32::MAX.
        elems.push((head, u32::try_from(n).unwrap_or(u32::MAX)));
    }
    elems
}

/// Writes the bounce-buffered `frame` across as many rx chains as it
/// needs, sets its `num_buffers` and puts the chains on the used ring. A
/// bad chain drops the frame (the chains popped for it are used with
/// length 0); too few chains leave them popped (see [`Placed::Wait`]).
fn place_merged(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &mut [u8],
    name: &str,
) -> Result<Placed, NetError> {
    let mut chains = Vec::new();
    let mut capacity = 0usize;
    let mut descriptors = 0usize;
    let mut bad = None;
    while capacity < frame.len() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return Ok(Placed::Wait {
                popped: chains.len(),
            });
        };
        let checked = rx_chain_capacity(mem, &chain);
        chains.push(chain);
        match checked {
            Ok((len, count)) => {
                capacity = capacity.saturating_add(len);
                descriptors = descriptors.saturating_add(count);
            }
            Err(err) => {
                bad = Some(err);
                break;
            }
        }
        if capacity < frame.len() && descriptors >= usize::from(queue.size()) {
            // Every descriptor of the table is popped: the driver cannot
            // add more, the frame never fits. The buffers go back whole.
            unpop(queue, chains.len());
            let err = FrameError::RxTooLargeForRing {
                frame: frame.len(),
                capacity,
            };
            return Ok(Placed::Dropped {
                err,
                published: false,
            });
        }
    }
    if bad.is_none() {
        // At most the queue size (256) chains.
        let count = u16::try_from(chains.len()).unwrap_or(u16::MAX);
        frame[NUM_BUFFERS_OFFSET..VNET_HDR_SIZE].copy_from_slice(&count.to_le_bytes());
        let mut elems = Vec::with_capacity(chains.len());
        let mut written = 0usize;
        for chain in &chains {
            match write_rx_part(mem, chain.clone(), &frame[written..]) {
                Ok(n) => {
                    written += n;
                    elems.push((chain.head_index(), u32::try_from(n).unwrap_or(u32::MAX)));
                }
                Err(err) => {
                    bad = Some(err);
                    break;
                }
            }
        }
        if bad.is_none() {
            let published = publish_used(queue, mem, &elems, name)?;
            return Ok(Placed::Delivered { published });
        }
    }
    // A bad chain: the frame is dropped and every chain popped for it is
    // returned, unwritten (length 0).
    let elems: Vec<(u16, u32)> = chains.iter().map(|c| (c.head_index(), 0)).collect();
    let published = publish_used(queue, mem, &elems, name)?;
    let err = bad.unwrap_or(FrameError::RxEmptyBuffer);
    Ok(Placed::Dropped { err, published })
}

/// The device-writable bytes of rx `chain` and its number of descriptors,
/// or what is wrong with it: a device-readable descriptor, one outside
/// guest memory, or no writable byte at all (also a bad head index).
fn rx_chain_capacity(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<&GuestMemoryMmap>,
) -> Result<(usize, usize), FrameError> {
    let mut capacity = 0usize;
    let mut count = 0usize;
    for (index, desc) in chain.clone().enumerate() {
        if !desc.is_write_only() {
            return Err(FrameError::ReadableRx { index });
        }
        let len = usize::try_from(desc.len()).unwrap_or(usize::MAX);
        if !mem.check_range(desc.addr(), len) {
            return Err(FrameError::RxOutside {
                index,
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        capacity = capacity.saturating_add(len);
        count += 1;
    }
    if capacity == 0 {
        return Err(FrameError::RxEmptyBuffer);
    }
    Ok((capacity, count))
}

/// Writes the start of `data` across the device-writable descriptors of
/// `chain`, as much as they hold; returns the bytes written.
fn write_rx_part(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    data: &[u8],
) -> Result<usize, FrameError> {
    let mut written = 0usize;
    for (index, desc) in chain.enumerate() {
        if written == data.len() {
            break;
        }
        if !desc.is_write_only() {
            return Err(FrameError::ReadableRx { index });
        }
        let len = usize::try_from(desc.len()).unwrap_or(usize::MAX);
        let n = len.min(data.len() - written);
        mem.write_slice(&data[written..written + n], desc.addr())
            .map_err(|source| FrameError::Memory {
                index,
                addr: desc.addr().0,
                len: desc.len(),
                source,
            })?;
        written += n;
    }
    Ok(written)
}

/// Puts the used elements `elems` (head index, length) of one frame on
/// the used ring and then moves the used index past all of them in one
/// store (section 2.7.8.2: a driver reading the ring meanwhile never sees
/// part of a frame; `Queue::add_used` would publish them one by one).
/// Elements with a bad head index are left out (the guest only hurts
/// itself). Returns whether any element was added.
fn publish_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    elems: &[(u16, u32)],
    name: &str,
) -> Result<bool, NetError> {
    let size = queue.size();
    let ring = GuestAddress(queue.used_ring());
    let start = queue.next_used();
    let mut next = start;
    for &(head, len) in elems {
        if head >= size {
            debug!("{name}: queue {RX_QUEUE}: dropping chain with bad head index {head}");
            continue;
        }
        let mut elem = [0u8; USED_ELEM_SIZE as usize];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        let offset = RING_HEADER_SIZE + u64::from(next % size) * USED_ELEM_SIZE;
        let addr = ring
            .checked_add(offset)
            .ok_or_else(|| queue_error(name, RX_QUEUE, virtio_queue::Error::AddressOverflow))?;
        mem.write_slice(&elem, addr).map_err(|source| {
            queue_error(name, RX_QUEUE, virtio_queue::Error::GuestMemory(source))
        })?;
        next = next.wrapping_add(1);
    }
    if next == start {
        return Ok(false);
    }
    let idx_addr = ring
        .checked_add(RING_IDX_OFFSET)
        .ok_or_else(|| queue_error(name, RX_QUEUE, virtio_queue::Error::AddressOverflow))?;
    // Release: the elements are visible before the index that covers them.
    mem.store(next.to_le(), idx_addr, Ordering::Release)
        .map_err(|source| queue_error(name, RX_QUEUE, virtio_queue::Error::GuestMemory(source)))?;
    queue.set_next_used(next);
    Ok(true)
}

/// Whether the driver wants an interrupt after the used index moved from
/// `before` to where it is now: always without `VIRTIO_F_RING_EVENT_IDX`,
/// with it when the move passed `used_event` (section 2.7.10; Linux's
/// `vring_need_event`). [`publish_used`] bypasses the queue's own
/// bookkeeping, so mergeable rx asks here instead of `needs_notification`.
fn rx_needs_interrupt(
    queue: &Queue,
    mem: &GuestMemoryMmap,
    before: u16,
    name: &str,
) -> Result<bool, NetError> {
    if !queue.event_idx_enabled() {
        return Ok(true);
    }
    // The used index is written before `used_event` is read.
    fence(Ordering::SeqCst);
    let offset = RING_HEADER_SIZE + u64::from(queue.size()) * AVAIL_ELEM_SIZE;
    let addr = GuestAddress(queue.avail_ring())
        .checked_add(offset)
        .ok_or_else(|| queue_error(name, RX_QUEUE, virtio_queue::Error::AddressOverflow))?;
    let used_event =
        u16::from_le(mem.load::<u16>(addr, Ordering::Acquire).map_err(|source| {
            queue_error(name, RX_QUEUE, virtio_queue::Error::GuestMemory(source))
        })?);
    let now = queue.next_used();
    Ok(now.wrapping_sub(used_event).wrapping_sub(1) < now.wrapping_sub(before))
}

/// Reads the next frame from the backend straight into `bufs`.
fn read_frame_vectored<B: NetBackend>(
    backend: &mut B,
    bufs: &[VolatileSlice<'_>],
    counters: &mut NetCounters,
    name: &str,
) -> VectoredRead {
    loop {
        match backend.read_frame_vectored(bufs) {
            Ok(0) => {
                warn!("{name}: the tap read returned no frame");
                return VectoredRead::Empty;
            }
            Ok(len) if len < VNET_HDR_SIZE => {
                counters.rx_dropped += 1;
                log_drop(name, "rx", counters.rx_dropped, &FrameError::Runt { len });
                return VectoredRead::Runt;
            }
            Ok(len) => return VectoredRead::Frame(len),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) if err.kind() == ErrorKind::WouldBlock => return VectoredRead::Empty,
            Err(err) => {
                warn!("{name}: reading from the tap: {err}");
                return VectoredRead::Empty;
            }
        }
    }
}

/// Bytes of a frame of `len` bytes after its header.
fn payload_len(len: usize) -> u64 {
    u64::try_from(len.saturating_sub(VNET_HDR_SIZE)).unwrap_or(u64::MAX)
}

/// `aa:bb:cc:dd:ee:ff`.
fn format_mac(mac: &[u8; MAC_LEN]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads the next frame from the backend into `buf` and sets its
/// `num_buffers` to 1; `None` when the backend has none (or fails).
fn read_frame<B: NetBackend>(
    backend: &mut B,
    buf: &mut [u8],
    counters: &mut NetCounters,
    name: &str,
) -> Option<usize> {
    loop {
        match backend.read_frame(buf) {
            Ok(0) => {
                // Not something a tap does; don't spin on it.
                warn!("{name}: the tap read returned no frame");
                return None;
            }
            Ok(len) if len < VNET_HDR_SIZE => {
                counters.rx_dropped += 1;
                log_drop(name, "rx", counters.rx_dropped, &FrameError::Runt { len });
            }
            Ok(len) => {
                // The tap leaves `num_buffers` alone; without
                // VIRTIO_NET_F_MRG_RXBUF it is 1 (section 5.1.6.3.1).
                buf[NUM_BUFFERS_OFFSET..VNET_HDR_SIZE].copy_from_slice(&1u16.to_le_bytes());
                return Some(len.min(buf.len()));
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) if err.kind() == ErrorKind::WouldBlock => return None,
            Err(err) => {
                warn!("{name}: reading from the tap: {err}");
                return None;
            }
        }
    }
}

/// Writes `frame` across the device-writable descriptors of `chain`;
/// returns the used length.
fn write_rx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    frame: &[u8],
) -> Result<u32, FrameError> {
    let mut written = 0usize;
    let mut capacity = 0usize;
    for (index, desc) in chain.enumerate() {
        if !desc.is_write_only() {
            return Err(FrameError::ReadableRx { index });
        }
        let len = usize::try_from(desc.len()).unwrap_or(usize::MAX);
        capacity = capacity.saturating_add(len);
        let n = len.min(frame.len() - written);
        mem.write_slice(&frame[written..written + n], desc.addr())
            .map_err(|source| FrameError::Memory {
                index,
                addr: desc.addr().0,
                len: desc.len(),
                source,
            })?;
        written += n;
        if written == frame.len() {
            // At most MAX_FRAME_SIZE bytes.
            return Ok(u32::try_from(written).unwrap_or(u32::MAX));
        }
    }
    Err(FrameError::RxTooSmall {
        frame: frame.len(),
        capacity,
    })
}

/// Gathers the device-readable descriptors of `chain` into `buf`; returns
/// the frame length.
fn read_tx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> Result<usize, FrameError> {
    let mut len = 0usize;
    for (index, desc) in chain.enumerate() {
        if desc.is_write_only() {
            return Err(FrameError::WritableTx { index });
        }
        let end = usize::try_from(desc.len())
            .ok()
            .and_then(|n| len.checked_add(n))
            .filter(|&end| end <= buf.len())
            .ok_or(FrameError::TxTooLarge)?;
        mem.read_slice(&mut buf[len..end], desc.addr())
            .map_err(|source| FrameError::Memory {
                index,
                addr: desc.addr().0,
                len: desc.len(),
                source,
            })?;
        len = end;
    }
    if len < VNET_HDR_SIZE {
        return Err(FrameError::TxShort { len });
    }
    Ok(len)
}

/// Logs a dropped frame: at warn for the 1st, 2nd, 4th, 8th, ... drop in
/// that direction, at debug otherwise (a hostile guest can't flood the
/// log).
fn log_drop(name: &str, dir: &str, count: u64, err: &FrameError) {
    if count.is_power_of_two() {
        warn!("{name}: dropped an {dir} frame: {err} ({count} {dir} drops so far)");
    } else {
        debug!("{name}: dropped an {dir} frame: {err}");
    }
}

impl<B: NetBackend + 'static> VirtioDevice for Net<B> {
    fn core(&self) -> &VirtioCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut VirtioCore {
        &mut self.core
    }

    fn config_space(&self) -> &[u8] {
        &self.config_space
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The driver must not write any field (section 5.1.4.2).
        debug!(
            "net {}: ignoring {}-byte config space write at {offset:#x}",
            self.name,
            data.len()
        );
    }

    fn on_activate(&mut self, queues: &mut [Queue]) -> Result<(), ActivateError> {
        let acked = self.core.acked_features();
        // The tap must not hand the guest frames it did not agree to
        // (partial checksums, GSO).
        let offloads = tun_offload_flags(acked);
        self.backend.set_offload(offloads)?;
        // Notification suppression (section 2.7.10) on both queues, or on
        // neither.
        let event_idx = has(acked, VIRTIO_F_RING_EVENT_IDX);
        for queue in queues {
            queue.set_event_idx(event_idx);
        }
        self.rx_min_vectored = rx_min_vectored(acked, self.mtu());
        debug!("net {}: tap offloads {offloads:#x}", self.name);
        Ok(())
    }

    fn on_reset(&mut self) -> bool {
        if self.rx_pending.take().is_some() {
            self.counters.rx_dropped += 1;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use vm_memory::{Bytes, GuestAddress};

    use super::super::test_utils::{
        as_delivered, as_merged, backend, frame, memory, Desc, GuestQueue, Harness, TestInterrupt,
        BIG_DATA, F_WRITE, MAC, MEM_SIZE, MTU, RX_BASE, RX_DATA, TX_BASE,
    };
    use super::super::MAX_FRAME_PAYLOAD;
    use super::*;
    use crate::vmm::devices::virtio::{DeviceError, INTERRUPT_USED_BUFFER};

    fn bits(list: &[u32]) -> u64 {
        list.iter().fold(0, |f, &bit| f | 1u64 << bit)
    }

    /// A 1500-byte-MTU Ethernet frame with its header.
    const FRAME: usize = VNET_HDR_SIZE + 1514;

    #[test]
    fn features_with_and_without_offload() {
        let base = bits(&[
            VIRTIO_F_VERSION_1,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_MTU,
            VIRTIO_NET_F_STATUS,
            VIRTIO_F_RING_EVENT_IDX,
        ]);
        let offloads = bits(&[
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_MRG_RXBUF,
        ]);
        let plain = Net::new(backend().0, MAC, MTU, false).unwrap();
        assert_eq!(plain.avail_features(), base);
        assert_eq!(plain.avail_features() & (1 << VIRTIO_NET_F_MRG_RXBUF), 0);
        let offload = Net::new(backend().0, MAC, MTU, true).unwrap();
        assert_eq!(offload.avail_features(), base | offloads);
        assert_eq!(offload.device_type(), TYPE_NET);
        assert_eq!(offload.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
        assert_eq!(offload.queue_events().len(), NUM_QUEUES);
        assert_eq!(offload.name(), "testtap");
        assert_eq!(offload.mac(), MAC);

        // Acked features are limited to the offered ones.
        let mut net = plain;
        net.set_acked_features(u64::MAX);
        assert_eq!(net.acked_features(), base);
    }

    #[test]
    fn config_space() {
        let net = Net::new(backend().0, MAC, 9000, false).unwrap();
        let mut all = [0xffu8; CONFIG_SPACE_SIZE];
        net.read_config(0, &mut all);
        let mut expected = MAC.to_vec();
        expected.extend_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        expected.extend_from_slice(&1u16.to_le_bytes());
        expected.extend_from_slice(&9000u16.to_le_bytes());
        assert_eq!(all.to_vec(), expected);

        let read = |offset: u64, len: usize| {
            let mut data = vec![0xffu8; len];
            net.read_config(offset, &mut data);
            data
        };
        assert_eq!(read(0, 6), MAC.to_vec());
        assert_eq!(read(6, 2), vec![1, 0]);
        assert_eq!(read(8, 2), vec![1, 0]);
        assert_eq!(read(10, 2), 9000u16.to_le_bytes().to_vec());
        assert_eq!(read(3, 1), vec![MAC[3]]);
        // Partly past the end: the tail reads as 0.
        assert_eq!(read(11, 4), vec![9000u16.to_le_bytes()[1], 0, 0, 0]);
        assert_eq!(read(12, 4), vec![0; 4]);
        assert_eq!(read(0x100, 2), vec![0; 2]);
        assert_eq!(read(u64::MAX, 8), vec![0; 8]);

        // Writes are ignored.
        let mut net = net;
        net.write_config(0, &[0; 6]);
        assert_eq!(net.mac(), MAC);
    }

    #[test]
    fn mtu_below_minimum_is_refused() {
        let err = Net::new(backend().0, MAC, MIN_MTU - 1, false).unwrap_err();
        assert!(matches!(err, NetError::InvalidMtu { mtu: 67, .. }), "{err}");
        assert!(Net::new(backend().0, MAC, MIN_MTU, false).is_ok());
    }

    #[test]
    fn activation_checks_queues() {
        let (device_side, handle) = backend();
        let mut net = Net::new(device_side, MAC, MTU, false).unwrap();
        let mem = memory();
        let rxq = GuestQueue::new(&mem, QUEUE_SIZE, RX_BASE);
        let txq = GuestQueue::new(&mem, QUEUE_SIZE, TX_BASE);
        let interrupt = Arc::new(TestInterrupt::default());

        for count in [0, 1, 3] {
            let queues = (0..count).map(|_| rxq.create_queue()).collect();
            let err = net
                .activate(mem.clone(), interrupt.clone(), queues)
                .unwrap_err();
            assert!(
                matches!(err, ActivateError::QueueCount { expected: 2, got } if got == count),
                "{err}"
            );
        }
        let mut bad = txq.create_queue();
        bad.set_ready(false);
        let err = net
            .activate(
                mem.clone(),
                interrupt.clone(),
                vec![rxq.create_queue(), bad],
            )
            .unwrap_err();
        assert!(matches!(err, ActivateError::BadQueue { index: 1 }), "{err}");

        // A tap refusing the offloads refuses activation.
        handle.state().offload_error = true;
        let err = net
            .activate(
                mem.clone(),
                interrupt.clone(),
                vec![rxq.create_queue(), txq.create_queue()],
            )
            .unwrap_err();
        assert!(matches!(err, ActivateError::Io(_)), "{err}");
        assert!(!net.is_activated());
        assert!(matches!(
            net.process_rx(),
            Err(NetError::Device(DeviceError::NotActivated { .. }))
        ));
        assert!(matches!(
            net.process_tx(),
            Err(NetError::Device(DeviceError::NotActivated { .. }))
        ));

        handle.state().offload_error = false;
        net.activate(mem, interrupt, vec![rxq.create_queue(), txq.create_queue()])
            .unwrap();
        assert!(net.is_activated());
        assert_eq!(net.core.activate_event().read().unwrap(), 1);
    }

    #[test]
    fn offload_flags_follow_the_guest_features() {
        assert_eq!(tun_offload_flags(0), 0);
        assert_eq!(
            tun_offload_flags(u64::MAX),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO
        );
        // Host-side (tx) offloads say nothing about what the guest accepts.
        let host = bits(&[
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
        ]);
        assert_eq!(tun_offload_flags(host), 0);

        let cases: [(bool, u64, u32); 5] = [
            (false, u64::MAX, 0),
            (true, 0, 0),
            (true, u64::MAX, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6),
            (true, bits(&[VIRTIO_NET_F_GUEST_CSUM]), TUN_F_CSUM),
            (
                true,
                bits(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4]) | host,
                TUN_F_CSUM | TUN_F_TSO4,
            ),
        ];
        for (offload, acked, flags) in cases {
            let (device_side, handle) = backend();
            let mut net = Net::new(device_side, MAC, MTU, offload).unwrap();
            net.set_acked_features(acked);
            let mem = memory();
            let queues = vec![
                GuestQueue::new(&mem, QUEUE_SIZE, RX_BASE).create_queue(),
                GuestQueue::new(&mem, QUEUE_SIZE, TX_BASE).create_queue(),
            ];
            net.activate(mem, Arc::new(TestInterrupt::default()), queues)
                .unwrap();
            assert_eq!(handle.state().offloads, vec![flags], "{offload} {acked:#x}");
        }
    }

    #[test]
    fn tx_single_descriptor_frame() {
        let mut h = Harness::new(false);
        let f = frame(FRAME, 1);
        h.send(&f);
        assert!(h.net().process_tx().unwrap());
        assert_eq!(h.backend.take_tx(), vec![f]);
        assert_eq!(h.txq.pop_used(), Some((0, 0)));
        assert_eq!(h.interrupt.count(), 1);
        let c = h.net().counters();
        assert_eq!((c.tx_frames, c.tx_bytes, c.tx_dropped), (1, 1514, 0));
    }

    #[test]
    fn tx_multi_descriptor_frames() {
        let mut h = Harness::new(true);
        // Header apart (as Linux does), then odd-sized pieces.
        let f = frame(FRAME, 2);
        let addr = h.tx_addr(f.len());
        h.send_split(&f, addr, &[VNET_HDR_SIZE, 1, 300]);
        // A 64 KiB GSO frame in a header and 16 pages.
        let big = frame(MAX_FRAME_SIZE, 3);
        let addr = h.tx_addr(big.len());
        h.send_split(
            &big,
            addr,
            &[VNET_HDR_SIZE; 1]
                .iter()
                .copied()
                .chain([4096; 15])
                .collect::<Vec<_>>(),
        );
        // Empty descriptors don't matter.
        let g = frame(100, 4);
        let addr = h.tx_addr(g.len());
        h.mem.write_slice(&g, GuestAddress(addr)).unwrap();
        h.txq.add_chain(&[(addr, 0, 0), (addr, 100, 0), (0, 0, 0)]);
        assert!(h.net().process_tx().unwrap());
        assert_eq!(h.backend.take_tx(), vec![f, big, g]);
        assert_eq!(h.txq.used_idx(), 3);
        assert_eq!(h.interrupt.count(), 1);
        let c = h.net().counters();
        assert_eq!((c.tx_frames, c.tx_dropped), (3, 0));
        assert_eq!(c.tx_bytes, (1514 + MAX_FRAME_PAYLOAD + 88) as u64);
    }

    #[test]
    fn bad_tx_chains_are_dropped_and_used() {
        let mut h = Harness::new(false);
        let f = frame(MAX_FRAME_SIZE + 1, 5);
        let addr = h.tx_addr(f.len());
        h.mem.write_slice(&f, GuestAddress(addr)).unwrap();
        let cases: Vec<(&str, Vec<Desc>)> = vec![
            (
                "oversized",
                vec![(addr, u32::try_from(f.len()).unwrap(), 0)],
            ),
            (
                "oversized over descriptors",
                vec![(addr, 12, 0), (addr, 65550, 0), (addr, 1, 0)],
            ),
            ("write-only descriptor", vec![(addr, 100, F_WRITE)]),
            (
                "write-only after data",
                vec![(addr, 100, 0), (addr, 10, F_WRITE)],
            ),
            ("shorter than the header", vec![(addr, 11, 0)]),
            ("header split short", vec![(addr, 5, 0), (addr, 6, 0)]),
            ("empty", vec![(addr, 0, 0)]),
            ("outside memory", vec![(MEM_SIZE as u64 - 10, 100, 0)]),
            ("address overflow", vec![(u64::MAX - 4, 100, 0)]),
            (
                "length overflow",
                vec![(addr, u32::MAX, 0), (addr, u32::MAX, 0)],
            ),
        ];
        let n = cases.len();
        for (_, descs) in &cases {
            h.txq.add_chain(descs);
        }
        // A good frame after them still goes through.
        let good = frame(60, 6);
        h.send(&good);
        assert!(h.net().process_tx().unwrap());
        assert_eq!(h.backend.take_tx(), vec![good]);
        for i in 0..=n {
            let (_, len) = h
                .txq
                .pop_used()
                .unwrap_or_else(|| panic!("chain {i} not used"));
            assert_eq!(len, 0);
        }
        let c = h.net().counters();
        assert_eq!((c.tx_frames, c.tx_dropped), (1, n as u64));
        assert_eq!(h.interrupt.count(), 1);
    }

    #[test]
    fn tx_backend_errors_drop_the_frame() {
        let mut h = Harness::new(false);
        for kind in [ErrorKind::WouldBlock, ErrorKind::Other] {
            h.backend.state().write_error = Some(kind);
            h.send(&frame(FRAME, 7));
            assert!(h.net().process_tx().unwrap());
        }
        h.backend.state().write_error = None;
        let f = frame(FRAME, 8);
        h.send(&f);
        assert!(h.net().process_tx().unwrap());
        assert_eq!(h.backend.take_tx(), vec![f]);
        assert_eq!(h.txq.used_idx(), 3);
        let c = h.net().counters();
        assert_eq!((c.tx_frames, c.tx_dropped), (1, 2));
    }

    #[test]
    fn rx_frame_is_delivered_with_num_buffers_one() {
        let mut h = Harness::new(false);
        h.add_rx_buffers(1, 2048);
        // Stale bytes where num_buffers goes: the tap doesn't write them.
        h.mem
            .write_slice(&[0x55; 2048], GuestAddress(RX_DATA))
            .unwrap();
        let f = frame(FRAME, 9);
        h.backend.push(f.clone());
        assert!(h.net().process_rx().unwrap());
        let got = h.recv();
        assert_eq!(got, vec![(FRAME as u32, as_delivered(&f))]);
        assert_eq!(&got[0].1[10..12], &[1, 0]);
        assert_eq!(h.interrupt.count(), 1);
        let c = h.net().counters();
        assert_eq!((c.rx_frames, c.rx_bytes, c.rx_dropped), (1, 1514, 0));
        // Nothing else: no interrupt.
        assert!(!h.net().process_rx().unwrap());
        assert_eq!(h.interrupt.count(), 1);
    }

    #[test]
    fn rx_gso_frame_fills_a_big_packet_chain() {
        let mut h = Harness::new(true);
        // Linux's big-packet chain without MRG_RXBUF: the header, the rest
        // of its page, then 17 pages.
        let mut descs = vec![(BIG_DATA, VNET_HDR_SIZE as u32, F_WRITE)];
        descs.push((BIG_DATA + 0x1000, 4096 - 16, F_WRITE));
        for page in 0..17u64 {
            descs.push((BIG_DATA + 0x2000 + page * 0x1000, 4096, F_WRITE));
        }
        h.rxq.add_chain(&descs);
        let big = frame(MAX_FRAME_SIZE, 10);
        h.backend.push(big.clone());
        assert!(h.net().process_rx().unwrap());
        let (_, len) = h.rxq.pop_used().unwrap();
        assert_eq!(len as usize, MAX_FRAME_SIZE);
        // Gather it back the way the guest would.
        let mut got = Vec::new();
        let mut left = MAX_FRAME_SIZE;
        for &(addr, dlen, _) in &descs {
            let n = left.min(dlen as usize);
            let mut part = vec![0u8; n];
            h.mem.read_slice(&mut part, GuestAddress(addr)).unwrap();
            got.extend_from_slice(&part);
            left -= n;
        }
        assert_eq!(got, as_delivered(&big));
        assert_eq!(h.net().counters().rx_bytes, MAX_FRAME_PAYLOAD as u64);
    }

    #[test]
    fn rx_without_buffers_keeps_the_frame_pending() {
        let mut h = Harness::new(false);
        let f = frame(FRAME, 11);
        h.backend.push(f.clone());
        h.drain();
        assert!(!h.net().process_rx().unwrap());
        assert_eq!(h.net().rx_pending, Some(FRAME));
        assert_eq!(h.backend.rx_left(), 0);
        assert_eq!(h.interrupt.count(), 0);
        // The guest adds buffers and notifies: the frame arrives.
        h.add_rx_buffers(2, 2048);
        h.notify_and_run(RX_QUEUE);
        assert_eq!(h.recv(), vec![(FRAME as u32, as_delivered(&f))]);
        assert_eq!(h.net().rx_pending, None);
        assert_eq!(h.interrupt.count(), 1);
    }

    #[test]
    fn rx_frame_larger_than_the_buffer_is_dropped() {
        let mut h = Harness::new(false);
        h.add_rx_buffers(2, 1024);
        let big = frame(FRAME, 12);
        let small = frame(500, 13);
        h.backend.push(big);
        h.backend.push(small.clone());
        assert!(h.net().process_rx().unwrap());
        assert_eq!(h.rxq.pop_used(), Some((0, 0)));
        assert_eq!(h.rxq.pop_used(), Some((1, 500)));
        let mut got = vec![0u8; 500];
        h.mem
            .read_slice(&mut got, GuestAddress(RX_DATA + 0x800))
            .unwrap();
        assert_eq!(got, as_delivered(&small));
        let c = h.net().counters();
        assert_eq!((c.rx_frames, c.rx_dropped), (1, 1));
        assert_eq!(h.interrupt.count(), 1);
    }

    #[test]
    fn bad_rx_chains_drop_the_frame() {
        let mut h = Harness::new(false);
        let cases: Vec<Vec<Desc>> = vec![
            vec![(RX_DATA, 2048, 0)],
            vec![(RX_DATA, 12, F_WRITE), (RX_DATA + 0x100, 2048, 0)],
            vec![(MEM_SIZE as u64 - 100, 2048, F_WRITE)],
            vec![(u64::MAX - 10, 2048, F_WRITE)],
            vec![(RX_DATA, 0, F_WRITE)],
        ];
        let n = cases.len();
        for descs in &cases {
            h.rxq.add_chain(descs);
            h.backend.push(frame(FRAME, 14));
        }
        assert!(h.net().process_rx().unwrap());
        for _ in 0..n {
            assert_eq!(h.rxq.pop_used().map(|(_, len)| len), Some(0));
        }
        let c = h.net().counters();
        assert_eq!((c.rx_frames, c.rx_dropped), (0, n as u64));
    }

    #[test]
    fn runt_frames_from_the_tap_are_dropped() {
        let mut h = Harness::new(false);
        h.add_rx_buffers(1, 2048);
        h.backend.push(frame(11, 15));
        let f = frame(FRAME, 16);
        h.backend.push(f.clone());
        assert!(h.net().process_rx().unwrap());
        assert_eq!(h.recv(), vec![(FRAME as u32, as_delivered(&f))]);
        assert_eq!(h.net().counters().rx_dropped, 1);
    }

    #[test]
    fn ring_exhaustion_keeps_order() {
        let mut h = Harness::new(false);
        let frames: Vec<Vec<u8>> = (0..6u8).map(|i| frame(100 + usize::from(i), i)).collect();
        for f in &frames {
            h.backend.push(f.clone());
        }
        h.add_rx_buffers(2, 2048);
        assert!(h.net().process_rx().unwrap());
        let first = h.recv();
        assert_eq!(first.len(), 2);
        // One frame waits in the device, the rest on the tap.
        assert_eq!(h.net().rx_pending, Some(102));
        assert_eq!(h.backend.rx_left(), 3);
        assert_eq!(h.interrupt.count(), 1);

        h.add_rx_buffers(3, 2048);
        h.notify_and_run(RX_QUEUE);
        let second = h.recv();
        assert_eq!(second.len(), 3);
        assert_eq!(h.interrupt.count(), 2);
        h.add_rx_buffers(4, 2048);
        h.notify_and_run(RX_QUEUE);
        let third = h.recv();
        let got: Vec<Vec<u8>> = first
            .into_iter()
            .chain(second)
            .chain(third)
            .map(|(_, bytes)| bytes)
            .collect();
        let expected: Vec<Vec<u8>> = frames.iter().map(|f| as_delivered(f)).collect();
        assert_eq!(got, expected);
        assert_eq!(h.net().rx_pending, None);
        assert_eq!(h.rxq.outstanding(), 3);
        assert_eq!(h.net().counters().rx_frames, 6);
    }

    #[test]
    fn one_interrupt_per_batch() {
        let mut h = Harness::new(false);
        h.add_rx_buffers(4, 2048);
        for i in 0..3 {
            h.backend.push(frame(200, i));
        }
        for i in 0..3 {
            h.send(&frame(200, 10 + i));
        }
        assert!(h.net().process_rx().unwrap());
        assert_eq!(h.interrupt.count(), 1);
        assert!(h.net().process_tx().unwrap());
        assert_eq!(h.interrupt.count(), 2);
        assert_eq!(
            h.interrupt.status.load(std::sync::atomic::Ordering::SeqCst),
            INTERRUPT_USED_BUFFER
        );
        assert_eq!(h.rxq.used_idx(), 3);
        assert_eq!(h.txq.used_idx(), 3);
        // Nothing new: no interrupt.
        assert!(!h.net().process_rx().unwrap());
        assert!(!h.net().process_tx().unwrap());
        assert_eq!(h.interrupt.count(), 2);
    }

    #[test]
    fn reset_drops_the_pending_frame() {
        let mut h = Harness::new(true);
        h.backend.push(frame(FRAME, 20));
        assert!(!h.net().process_rx().unwrap());
        assert!(h.net().rx_pending.is_some());
        assert!(h.net().reset());
        assert!(!h.net().is_activated());
        assert_eq!(h.net().rx_pending, None);
        assert_eq!(h.net().acked_features(), 0);
        assert_eq!(h.net().counters().rx_dropped, 1);
        assert!(h.net().process_rx().is_err());

        // Activation works again, with fresh queues; the dropped frame is
        // gone, a new one arrives.
        h.fresh_queues();
        h.activate();
        assert!(h.net().is_activated());
        h.add_rx_buffers(1, 2048);
        let f = frame(FRAME, 21);
        h.backend.push(f.clone());
        assert!(h.net().process_rx().unwrap());
        assert_eq!(h.recv(), vec![(FRAME as u32, as_delivered(&f))]);
    }

    /// Whether both queues of the activated device use EVENT_IDX.
    fn queues_event_idx(h: &Harness) -> Vec<bool> {
        let net = h.net();
        let active = net.core.active().expect("not activated");
        active
            .queues
            .iter()
            .map(|q| q.event_idx_enabled())
            .collect()
    }

    #[test]
    fn event_idx_is_enabled_on_both_queues_only_when_negotiated() {
        for offload in [false, true] {
            let net = Net::new(backend().0, MAC, MTU, offload).unwrap();
            assert_ne!(net.avail_features() & (1 << VIRTIO_F_RING_EVENT_IDX), 0);
        }
        assert_eq!(queues_event_idx(&Harness::new(true)), vec![false, false]);
        assert_eq!(
            queues_event_idx(&Harness::with_event_idx(false)),
            vec![true, true]
        );
    }

    #[test]
    fn rx_interrupts_follow_used_event() {
        let mut h = Harness::with_event_idx(false);
        h.add_rx_buffers(8, 2048);
        // The driver wants an interrupt once used idx passes 2.
        h.rxq.set_used_event(2);
        for i in 0..2 {
            h.backend.push(frame(200, i));
        }
        assert!(h.net().process_rx().unwrap());
        assert_eq!(h.rxq.used_idx(), 2);
        assert_eq!(h.interrupt.count(), 0);
        // Used idx 2 -> 3 crosses it.
        h.backend.push(frame(200, 2));
        assert!(h.net().process_rx().unwrap());
        assert_eq!(h.interrupt.count(), 1);
        // 3 -> 4 does not.
        h.backend.push(frame(200, 3));
        assert!(h.net().process_rx().unwrap());
        assert_eq!(h.interrupt.count(), 1);
        // A batch that jumps over it (4 -> 7, used_event 5) interrupts once.
        h.rxq.set_used_event(5);
        for i in 4..7 {
            h.backend.push(frame(200, i));
        }
        assert!(h.net().process_rx().unwrap());
        assert_eq!(h.rxq.used_idx(), 7);
        assert_eq!(h.interrupt.count(), 2);
        assert_eq!(h.recv().len(), 7);
    }

    #[test]
    fn tx_interrupts_follow_used_event() {
        let mut h = Harness::with_event_idx(false);
        h.txq.set_used_event(1);
        h.send(&frame(100, 1));
        assert!(h.net().process_tx().unwrap());
        assert_eq!(h.interrupt.count(), 0);
        h.send(&frame(100, 2));
        h.send(&frame(100, 3));
        assert!(h.net().process_tx().unwrap());
        assert_eq!(h.txq.used_idx(), 3);
        assert_eq!(h.interrupt.count(), 1);
        assert_eq!(h.backend.take_tx().len(), 3);
    }

    #[test]
    fn without_event_idx_every_pass_interrupts() {
        let mut h = Harness::new(false);
        // used_event means nothing without the feature.
        h.rxq.set_used_event(100);
        h.txq.set_used_event(100);
        h.add_rx_buffers(4, 2048);
        for i in 0..2 {
            h.backend.push(frame(200, i));
            assert!(h.net().process_rx().unwrap());
            h.send(&frame(100, i));
            assert!(h.net().process_tx().unwrap());
        }
        assert_eq!(h.interrupt.count(), 4);
        // And avail_event is never written.
        assert_eq!((h.rxq.avail_event(), h.txq.avail_event()), (0, 0));
    }

    #[test]
    fn tx_pass_picks_up_chains_added_meanwhile() {
        let mut h = Harness::with_event_idx(false);
        let first = frame(100, 1);
        let second = frame(120, 2);
        let addr = h.tx_addr(second.len());
        h.mem.write_slice(&second, GuestAddress(addr)).unwrap();
        h.send(&first);
        // While the device sends the first frame, the driver adds a second
        // chain without kicking (avail_event says it need not).
        let mut driver = h.txq.clone();
        let len = u32::try_from(second.len()).unwrap();
        h.backend.state().on_write = Some(Box::new(move |sent| {
            if sent == 1 {
                driver.add_chain(&[(addr, len, 0)]);
            }
        }));
        h.notify_and_run(TX_QUEUE);
        assert_eq!(h.backend.take_tx(), vec![first, second]);
        assert_eq!(h.txq.used_idx(), 2);
        assert_eq!(h.interrupt.count(), 1);
        // The next chain the driver adds must be kicked.
        assert_eq!(h.txq.avail_event(), 2);
    }

    #[test]
    fn tx_kicks_are_asked_for_at_the_next_chain() {
        let mut h = Harness::with_event_idx(false);
        for round in 0..3u8 {
            let old = h.txq.avail_idx();
            h.send(&frame(100, round));
            h.send(&frame(100, round + 10));
            // The first addition after a pass kicks; the device then
            // sends both.
            assert!(h.txq.kick_needed(old), "round {round}");
            h.notify_and_run(TX_QUEUE);
            assert_eq!(h.backend.take_tx().len(), 2);
            assert_eq!(h.txq.avail_event(), h.txq.avail_idx());
        }
    }

    #[test]
    fn rx_asks_for_a_kick_only_when_out_of_buffers() {
        let mut h = Harness::with_event_idx(false);
        h.drain();
        // A frame and no buffer: the device asks for a kick at buffer 0.
        let f = frame(300, 1);
        h.backend.push(f.clone());
        h.drain();
        assert!(h.net().rx_pending.is_some());
        assert_eq!(h.rxq.avail_event(), 0);
        let old = h.rxq.avail_idx();
        h.add_rx_buffers(1, 2048);
        assert!(h.rxq.kick_needed(old));
        h.notify_and_run(RX_QUEUE);
        assert_eq!(h.recv(), vec![(300, as_delivered(&f))]);
        assert_eq!(h.interrupt.count(), 1);

        // Buffers to spare: refills need no kick, and frames keep coming.
        let old = h.rxq.avail_idx();
        h.add_rx_buffers(8, 2048);
        assert!(!h.rxq.kick_needed(old));
        for i in 0..4 {
            h.backend.push(frame(100, i));
            h.drain();
        }
        assert_eq!(h.recv().len(), 4);
        let old = h.rxq.avail_idx();
        h.add_rx_buffers(2, 2048);
        assert!(!h.rxq.kick_needed(old));

        // Out of buffers again (11 posted, 5 used): the kick is asked for
        // at buffer 11.
        for i in 0..7 {
            h.backend.push(frame(100, 20 + i));
        }
        h.drain();
        assert_eq!(h.recv().len(), 6);
        assert!(h.net().rx_pending.is_some());
        assert_eq!(h.rxq.avail_event(), 11);
        let old = h.rxq.avail_idx();
        h.add_rx_buffers(1, 2048);
        assert!(h.rxq.kick_needed(old));
        h.notify_and_run(RX_QUEUE);
        assert_eq!(h.recv().len(), 1);
        assert_eq!(h.net().counters().rx_frames, 12);
    }

    #[test]
    fn rx_uses_buffers_added_without_a_kick() {
        let mut h = Harness::with_event_idx(false);
        h.drain();
        let f = frame(300, 1);
        let g = frame(400, 2);
        h.backend.push(f.clone());
        h.drain();
        assert!(h.net().rx_pending.is_some());
        // The driver adds a buffer, but its kick is lost or not needed
        // (e.g. it read a stale avail_event): the next tap edge delivers
        // the pending frame and the new one once buffers exist.
        h.add_rx_buffers(2, 2048);
        h.backend.push(g.clone());
        h.drain();
        assert_eq!(
            h.recv(),
            vec![(300, as_delivered(&f)), (400, as_delivered(&g))]
        );
        assert_eq!(h.net().rx_pending, None);
    }

    /// (bounce-buffered, vectored) frames read and written by the double.
    fn paths(h: &Harness) -> ((usize, usize), (usize, usize)) {
        let st = h.backend.state();
        (
            (st.reads, st.vectored_reads),
            (st.writes, st.vectored_writes),
        )
    }

    /// Reads `len` bytes spread over the descriptors `descs`.
    fn gather(h: &Harness, descs: &[Desc], len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        for &(addr, dlen, _) in descs {
            let n = (len - got.len()).min(dlen as usize);
            let mut part = vec![0u8; n];
            h.mem.read_slice(&mut part, GuestAddress(addr)).unwrap();
            got.extend_from_slice(&part);
        }
        got
    }

    #[test]
    fn rx_min_vectored_covers_every_tap_frame() {
        assert_eq!(rx_min_vectored(0, 1500), 12 + 1500 + 14 + 4);
        assert_eq!(
            rx_min_vectored(bits(&[VIRTIO_NET_F_GUEST_CSUM]), 9000),
            9030
        );
        for bit in [VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6] {
            assert_eq!(rx_min_vectored(bits(&[bit]), 1500), MAX_FRAME_SIZE);
        }
    }

    #[test]
    fn rx_reads_straight_into_a_split_chain() {
        let mut h = Harness::new(false);
        // The header split inside num_buffers, odd pieces, an empty one.
        let descs: Vec<Desc> = [11u32, 0, 3, 700, 5, 2000]
            .iter()
            .scan(BIG_DATA, |at, &len| {
                let d = (*at, len, F_WRITE);
                *at += 0x1000;
                Some(d)
            })
            .collect();
        for &(addr, len, _) in &descs {
            h.mem
                .write_slice(&vec![0x55; len as usize], GuestAddress(addr))
                .unwrap();
        }
        h.rxq.add_chain(&descs);
        let f = frame(FRAME, 30);
        h.backend.push(f.clone());
        assert!(h.net().process_rx().unwrap());
        assert_eq!(h.rxq.pop_used(), Some((0, FRAME as u32)));
        assert_eq!(gather(&h, &descs, FRAME), as_delivered(&f));
        assert_eq!(paths(&h).0, (0, 1));
        let c = h.net().counters();
        assert_eq!((c.rx_frames, c.rx_bytes), (1, 1514));
    }

    #[test]
    fn tx_writes_straight_from_a_split_chain() {
        let mut h = Harness::new(true);
        let f = frame(FRAME, 31);
        let addr = h.tx_addr(f.len());
        h.send_split(&f, addr, &[VNET_HDR_SIZE, 1, 0, 300]);
        let big = frame(MAX_FRAME_SIZE, 32);
        let addr = h.tx_addr(big.len());
        let pages: Vec<usize> = [VNET_HDR_SIZE].into_iter().chain([4096; 15]).collect();
        h.send_split(&big, addr, &pages);
        assert!(h.net().process_tx().unwrap());
        assert_eq!(h.backend.take_tx(), vec![f, big]);
        assert_eq!(paths(&h).1, (0, 2));
        assert_eq!(h.net().counters().tx_frames, 2);
    }

    #[test]
    fn chains_of_too_many_descriptors_use_the_bounce_buffers() {
        let mut h = Harness::new(false);
        let n = MAX_IOVECS + 6;
        // rx: 70 descriptors of 32 bytes (2240, enough for any frame).
        let descs: Vec<Desc> = (0..n as u64)
            .map(|i| (BIG_DATA + i * 64, 32, F_WRITE))
            .collect();
        h.rxq.add_chain(&descs);
        let f = frame(FRAME, 33);
        h.backend.push(f.clone());
        assert!(h.net().process_rx().unwrap());
        assert_eq!(h.rxq.pop_used(), Some((0, FRAME as u32)));
        assert_eq!(gather(&h, &descs, FRAME), as_delivered(&f));
        assert_eq!(paths(&h).0, (1, 0));

        // tx: the same frame in 70 pieces.
        let g = frame(FRAME, 34);
        let addr = h.tx_addr(g.len());
        h.send_split(&g, addr, &vec![20; n - 1]);
        // And one at the limit goes straight.
        let addr = h.tx_addr(g.len());
        h.send_split(&g, addr, &vec![20; MAX_IOVECS - 1]);
        assert!(h.net().process_tx().unwrap());
        assert_eq!(h.backend.take_tx(), vec![g.clone(), g]);
        assert_eq!(paths(&h).1, (1, 1));
    }

    #[test]
    fn rx_chains_below_the_largest_frame_use_the_bounce_buffer() {
        // With guest TSO, a frame may be 64 KiB: a 2 KiB chain goes
        // through the bounce buffer (a small frame still fits).
        let mut h = Harness::new(true);
        h.add_rx_buffers(2, 2048);
        let f = frame(FRAME, 35);
        h.backend.push(f.clone());
        assert!(h.net().process_rx().unwrap());
        assert_eq!(h.recv(), vec![(FRAME as u32, as_delivered(&f))]);
        assert_eq!(paths(&h).0, (1, 0));
        // Without it, an MTU-sized chain (Linux's small buffers) is enough.
        let mut h = Harness::new(false);
        h.add_rx_buffers(1, u32::try_from(rx_min_vectored(0, MTU)).unwrap());
        h.add_rx_buffers(1, u32::try_from(rx_min_vectored(0, MTU) - 1).unwrap());
        h.backend.push(f.clone());
        h.backend.push(f.clone());
        assert!(h.net().process_rx().unwrap());
        assert_eq!(h.recv().len(), 2);
        assert_eq!(paths(&h).0, (1, 1));
    }

    #[test]
    fn an_empty_tap_leaves_the_chain_available() {
        for size in [2048, 1024] {
            let mut h = Harness::new(false);
            h.add_rx_buffers(1, size);
            // Nothing to read: the chain is not used, not even with 0.
            assert!(!h.net().process_rx().unwrap());
            assert!(!h.net().process_rx().unwrap());
            assert_eq!(h.rxq.used_idx(), 0);
            assert_eq!(h.interrupt.count(), 0);
            // The next frame goes into that very chain.
            let f = frame(500, 36);
            h.backend.push(f.clone());
            assert!(h.net().process_rx().unwrap());
            assert_eq!(h.recv(), vec![(500, as_delivered(&f))]);
            assert_eq!(h.net().counters().rx_dropped, 0);
        }
    }

    #[test]
    fn buffers_added_while_the_device_finds_none_are_used_at_once() {
        for event_idx in [false, true] {
            let h = if event_idx {
                Harness::with_event_idx(false)
            } else {
                Harness::new(false)
            };
            let f = frame(FRAME, 37);
            h.backend.push(f.clone());
            // The device finds no buffer and reads the frame to keep it;
            // meanwhile the driver adds one and, reading a stale
            // avail_event, does not kick.
            let mut driver = h.rxq.clone();
            h.backend.state().on_read = Some(Box::new(move || {
                if driver.avail_idx() == 0 {
                    driver.add_chain(&[(RX_DATA, 2048, F_WRITE)]);
                }
            }));
            let used = h.net().process_rx().unwrap();
            h.backend.state().on_read = None;
            // With EVENT_IDX the re-check after re-arming avail_event finds
            // it. Without, the driver kicks for it (not simulated here).
            assert_eq!(used, event_idx);
            assert_eq!(h.net().rx_pending.is_none(), event_idx);
            if event_idx {
                assert_eq!(h.rxq.used_elem(0), (0, FRAME as u32));
            }
        }
    }

    /// Kicks and interrupts per frame with EVENT_IDX, the driver behaving
    /// as Linux's: it kicks only when `avail_event` says so, wants an rx
    /// interrupt as soon as anything is used, and a tx one only late.
    #[test]
    fn kicks_and_interrupts_per_frame_with_event_idx() {
        let mut h = Harness::with_event_idx(false);
        let (mut kicks, frames) = (0, 32u8);
        // rx: 64 buffers posted once (one kick), frames in 4 bursts of 8.
        let old = h.rxq.avail_idx();
        h.add_rx_buffers(64, 2048);
        if h.rxq.kick_needed(old) {
            kicks += 1;
            h.notify_and_run(RX_QUEUE);
        }
        for burst in 0..4u8 {
            h.rxq.set_used_event(h.rxq.used_idx());
            for i in 0..8 {
                h.backend.push(frame(200, burst * 8 + i));
            }
            h.drain();
        }
        assert_eq!(h.recv().len(), usize::from(frames));
        assert_eq!((kicks, h.interrupt.count()), (1, 4));

        // tx: 4 batches of 8 chains, the driver kicking when told to and
        // asking for an interrupt after the last frame.
        kicks = 0;
        h.txq.set_used_event(u16::from(frames) - 1);
        for burst in 0..4u8 {
            let old = h.txq.avail_idx();
            for i in 0..8 {
                h.send(&frame(100, burst * 8 + i));
            }
            if h.txq.kick_needed(old) {
                kicks += 1;
                h.notify_and_run(TX_QUEUE);
            }
        }
        assert_eq!(h.backend.take_tx().len(), usize::from(frames));
        assert_eq!((kicks, h.interrupt.count()), (4, 5));
    }

    /// Frames a mergeable-buffer driver gathered, as (bytes, lens).
    fn merged(h: &mut Harness) -> Vec<(Vec<u8>, Vec<u32>)> {
        h.recv_merged()
            .into_iter()
            .map(|m| (m.bytes, m.lens))
            .collect()
    }

    #[test]
    fn mrg_small_frame_takes_one_buffer() {
        let mut h = Harness::mergeable(false);
        assert_ne!(h.net().acked_features() & (1 << VIRTIO_NET_F_MRG_RXBUF), 0);
        // 20 pages hold a 64 KiB frame: read straight from the tap.
        h.add_rx_pages(20, 4096);
        // A runt first: dropped, its buffers stay for the next frame.
        h.backend.push(frame(11, 39));
        let f = frame(FRAME, 40);
        h.backend.push(f.clone());
        assert!(h.net().process_rx().unwrap());
        assert_eq!(merged(&mut h), vec![(as_merged(&f, 1), vec![FRAME as u32])]);
        assert_eq!(paths(&h).0, (0, 2));
        // The other 19 popped buffers went back, in order.
        assert_eq!(h.rxq.outstanding(), 19);
        let g = frame(100, 41);
        h.backend.push(g.clone());
        assert!(h.net().process_rx().unwrap());
        assert_eq!(h.rxq.used_elem(1), (1, 100));
        assert_eq!(merged(&mut h), vec![(as_merged(&g, 1), vec![100])]);
        assert_eq!(h.interrupt.count(), 2);
        let c = h.net().counters();
        assert_eq!((c.rx_frames, c.rx_bytes, c.rx_dropped), (2, 1514 + 88, 1));
    }

    #[test]
    fn mrg_frame_spans_three_buffers() {
        // 2 KiB buffers: 33 of them are read into straight. 1 KiB ones: 64
        // hold less than 64 KiB, so frames take the bounce buffer.
        for (size, vectored) in [(2048u32, true), (1024, false)] {
            let mut h = Harness::mergeable(false);
            h.add_rx_pages(40, size);
            let s = size as usize;
            let len = 2 * s + 452;
            let f = frame(len, 42);
            let g = frame(300, 43);
            h.backend.push(f.clone());
            h.backend.push(g.clone());
            assert!(h.net().process_rx().unwrap());
            assert_eq!(h.interrupt.count(), 1);
            // Byte-exact across the buffers, num_buffers 3, each used
            // length what its buffer got.
            assert_eq!(h.rxq.used_elem(0), (0, size));
            assert_eq!(h.rxq.used_elem(1), (1, size));
            assert_eq!(h.rxq.used_elem(2), (2, 452));
            // The next frame takes the next buffer: the unused ones went
            // back in order.
            assert_eq!(h.rxq.used_elem(3), (3, 300));
            assert_eq!(
                merged(&mut h),
                vec![
                    (as_merged(&f, 3), vec![size, size, 452]),
                    (as_merged(&g, 1), vec![300]),
                ],
                "{size}"
            );
            assert_eq!(h.rxq.outstanding(), 36);
            let expected = if vectored { (0, 2) } else { (2, 0) };
            assert_eq!(paths(&h).0, expected, "{size}");
            assert_eq!(h.net().counters().rx_frames, 2);
        }
    }

    #[test]
    fn mrg_gso_frame_across_pages() {
        let mut h = Harness::mergeable(true);
        h.add_rx_pages(40, 4096);
        let big = frame(MAX_FRAME_SIZE, 44);
        h.backend.push(big.clone());
        h.drain();
        let mut lens = vec![4096u32; 16];
        lens.push(u32::try_from(MAX_FRAME_SIZE - 16 * 4096).unwrap());
        assert_eq!(merged(&mut h), vec![(as_merged(&big, 17), lens)]);
        assert_eq!(paths(&h).0, (0, 1));
        assert_eq!(h.rxq.outstanding(), 40 - 17);
        assert_eq!(h.interrupt.count(), 1);
        assert_eq!(h.net().counters().rx_bytes, MAX_FRAME_PAYLOAD as u64);
    }

    #[test]
    fn mrg_frame_waits_for_enough_buffers() {
        for event_idx in [true, false] {
            let mut h = Harness::mergeable(event_idx);
            h.drain();
            // Two pages for a frame that needs three, and a small frame
            // behind it on the tap.
            h.add_rx_pages(2, 4096);
            let big = frame(10_000, 45);
            let small = frame(100, 46);
            h.backend.push(big.clone());
            h.backend.push(small.clone());
            h.drain();
            // Nothing used, nothing lost, the buffers still available.
            assert_eq!(h.rxq.used_idx(), 0);
            assert_eq!(h.net().rx_pending, Some(10_000));
            assert_eq!(h.backend.rx_left(), 1);
            assert_eq!(h.rxq.outstanding(), 2);
            assert_eq!(h.interrupt.count(), 0);
            assert_eq!(h.net().counters().rx_dropped, 0);
            let old = h.rxq.avail_idx();
            if event_idx {
                // Re-armed at the available index: the driver's next
                // buffer kicks even though two wait unused.
                assert_eq!(h.rxq.avail_event(), 2);
            }
            h.add_rx_pages(2, 4096);
            if event_idx {
                assert!(h.rxq.kick_needed(old));
            }
            h.notify_and_run(RX_QUEUE);
            assert_eq!(
                merged(&mut h),
                vec![
                    (as_merged(&big, 3), vec![4096, 4096, 10_000 - 8192]),
                    (as_merged(&small, 1), vec![100]),
                ]
            );
            assert_eq!(h.net().rx_pending, None);
            assert_eq!(h.interrupt.count(), 1);
            assert_eq!(h.net().counters().rx_frames, 2);
        }
    }

    #[test]
    fn mrg_buffers_added_meanwhile_are_used() {
        let mut h = Harness::mergeable(true);
        h.drain();
        h.add_rx_pages(1, 4096);
        let f = frame(6000, 47);
        h.backend.push(f.clone());
        // The driver adds a page while the device reads the frame (it found
        // one page, too few) and, reading a stale avail_event, does not
        // kick: the frame goes into both.
        let mut driver = h.rxq.clone();
        let addr = BIG_DATA + 0x10_000;
        h.page_addrs.insert(driver.next_head(1), addr);
        h.backend.state().on_read = Some(Box::new(move || {
            if driver.avail_idx() == 1 {
                driver.add_chain(&[(addr, 4096, F_WRITE)]);
            }
        }));
        assert!(h.net().process_rx().unwrap());
        h.backend.state().on_read = None;
        h.rxq.next_desc = 2;
        assert_eq!(merged(&mut h), vec![(as_merged(&f, 2), vec![4096, 1904])]);
    }

    #[test]
    fn mrg_interrupts_once_per_pass() {
        let mut h = Harness::mergeable(false);
        h.add_rx_pages(60, 2048);
        for i in 0..3 {
            h.backend.push(frame(5000, 50 + i));
        }
        assert!(h.net().process_rx().unwrap());
        assert_eq!(h.rxq.used_idx(), 9);
        assert_eq!(h.interrupt.count(), 1);
        assert_eq!(merged(&mut h).len(), 3);

        // With EVENT_IDX, once the used index passes used_event.
        let mut h = Harness::mergeable(true);
        h.add_rx_pages(60, 2048);
        h.rxq.set_used_event(4);
        for i in 0..2 {
            h.backend.push(frame(5000, 60 + i));
        }
        // 0 -> 6 passes 4.
        h.drain();
        assert_eq!(h.rxq.used_idx(), 6);
        assert_eq!(h.interrupt.count(), 1);
        // 6 -> 9 does not pass 100.
        h.rxq.set_used_event(100);
        h.backend.push(frame(5000, 62));
        h.drain();
        assert_eq!(h.rxq.used_idx(), 9);
        assert_eq!(h.interrupt.count(), 1);
        // 9 -> 10 passes 9.
        h.rxq.set_used_event(9);
        h.backend.push(frame(100, 63));
        h.drain();
        assert_eq!(h.interrupt.count(), 2);
        assert_eq!(merged(&mut h).len(), 4);
    }

    #[test]
    fn mrg_bad_chain_among_several_drops_the_frame() {
        let bad: [Desc; 4] = [
            (RX_DATA, 1024, 0),
            (MEM_SIZE as u64 - 100, 1024, F_WRITE),
            (u64::MAX - 10, 1024, F_WRITE),
            (RX_DATA, 0, F_WRITE),
        ];
        for desc in bad {
            let mut h = Harness::mergeable(false);
            h.add_rx_pages(1, 1024);
            h.rxq.add_chain(&[desc]);
            h.add_rx_pages(3, 1024);
            // Needs three buffers, meets the bad one second.
            h.backend.push(frame(2500, 70));
            let g = frame(100, 71);
            h.backend.push(g.clone());
            assert!(h.net().process_rx().unwrap());
            // Both chains popped for the dropped frame come back empty.
            assert_eq!(h.rxq.pop_used(), Some((0, 0)), "{desc:?}");
            assert_eq!(h.rxq.pop_used(), Some((1, 0)), "{desc:?}");
            assert_eq!(merged(&mut h), vec![(as_merged(&g, 1), vec![100])]);
            assert_eq!(h.rxq.used_elem(2), (2, 100));
            assert_eq!(h.rxq.outstanding(), 2);
            assert_eq!(h.interrupt.count(), 1);
            let c = h.net().counters();
            assert_eq!((c.rx_frames, c.rx_dropped), (1, 1), "{desc:?}");
        }
    }

    #[test]
    fn mrg_frame_larger_than_the_whole_ring_is_dropped() {
        let mut h = Harness::mergeable(false);
        // Every descriptor of the table, 16 bytes each: 4 KiB in all.
        h.add_rx_pages(usize::from(QUEUE_SIZE), 16);
        h.backend.push(frame(5000, 72));
        let g = frame(30, 73);
        h.backend.push(g.clone());
        assert!(h.net().process_rx().unwrap());
        // The buffers stay the guest's; the next frame fits in two.
        assert_eq!(merged(&mut h), vec![(as_merged(&g, 2), vec![16, 14])]);
        assert_eq!(h.rxq.outstanding(), QUEUE_SIZE - 2);
        assert_eq!(h.net().rx_pending, None);
        let c = h.net().counters();
        assert_eq!((c.rx_frames, c.rx_dropped), (1, 1));
    }

    #[test]
    fn without_mrg_rxbuf_a_frame_never_spans_buffers() {
        let mut h = Harness::new(true);
        assert_eq!(h.net().acked_features() & (1 << VIRTIO_NET_F_MRG_RXBUF), 0);
        h.add_rx_buffers(3, 2048);
        let big = frame(5000, 74);
        h.backend.push(big);
        let f = frame(FRAME, 75);
        h.backend.push(f.clone());
        assert!(h.net().process_rx().unwrap());
        assert_eq!(h.rxq.pop_used(), Some((0, 0)));
        assert_eq!(h.recv(), vec![(FRAME as u32, as_delivered(&f))]);
        assert_eq!(h.net().counters().rx_dropped, 1);
    }
}
