//! Test harness: a [`NetBackend`] double that behaves like a tap, and a
//! [`Harness`] with the driver side of both queues and a real
//! [`EventManager`].

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;

pub use crate::vmm::devices::virtio::test_utils::{
    memory, Desc, GuestQueue, TestInterrupt, F_WRITE, MEM_SIZE,
};

use super::{
    Net, NetBackend, MAX_IOVECS, NUM_BUFFERS_OFFSET, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_NET_F_MRG_RXBUF, VNET_HDR_SIZE,
};
use crate::vmm::devices::virtio::VirtioDevice;

/// Where each queue's descriptor table starts (see [`GuestQueue`]).
pub const RX_BASE: u64 = 0x1000;
pub const TX_BASE: u64 = 0x4000;
/// rx buffers: slot `head` of `RX_SLOT_SIZE` bytes from `RX_DATA`.
pub const RX_DATA: u64 = 0x1_0000;
pub const RX_SLOT_SIZE: u64 = 0x800;
/// Room for big buffers and tx frames: from `BIG_DATA` to the end of
/// memory (0x10_0000 - 0x9_0000 = 448 KiB).
pub const BIG_DATA: u64 = 0x9_0000;

/// The MAC address and MTU of the test devices.
pub const MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
pub const MTU: u16 = 1500;

/// What the double holds; tests look at it through [`BackendHandle`].
#[derive(Default)]
pub struct BackendState {
    /// Frames the "tap" has for the guest, headers included.
    pub rx: VecDeque<Vec<u8>>,
    /// Frames the guest sent, headers included.
    pub tx: Vec<Vec<u8>>,
    /// Every `set_offload` call.
    pub offloads: Vec<u32>,
    /// Makes `write_frame` fail with this error.
    pub write_error: Option<ErrorKind>,
    /// Makes `set_offload` fail.
    pub offload_error: bool,
    /// Frames moved by `read_frame` / `write_frame` (the bounce-buffer
    /// paths) and by their vectored variants (straight from / to guest
    /// memory).
    pub reads: usize,
    pub writes: usize,
    pub vectored_reads: usize,
    pub vectored_writes: usize,
    /// Called after each frame written (with the number written so far),
    /// as a guest adding chains while the device works would.
    pub on_write: Option<Box<dyn FnMut(usize) + Send>>,
    /// Called on each read, before a frame is taken, as a guest adding
    /// buffers while the device works would.
    pub on_read: Option<Box<dyn FnMut() + Send>>,
}

impl std::fmt::Debug for BackendState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendState")
            .field("rx", &self.rx.len())
            .field("tx", &self.tx.len())
            .field("offloads", &self.offloads)
            .field("reads", &(self.reads, self.vectored_reads))
            .field("writes", &(self.writes, self.vectored_writes))
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<BackendState>,
    /// Readable while frames are queued; written on every push, so an
    /// edge-triggered watcher sees each new frame as a tap's would.
    evt: EventFd,
}

/// The device's side of the double.
#[derive(Debug)]
pub struct TestBackend(Arc<Shared>);

/// The test's side of the double.
#[derive(Debug, Clone)]
pub struct BackendHandle(Arc<Shared>);

pub fn backend() -> (TestBackend, BackendHandle) {
    let shared = Arc::new(Shared {
        state: Mutex::new(BackendState::default()),
        evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    });
    (TestBackend(shared.clone()), BackendHandle(shared))
}

impl BackendHandle {
    pub fn state(&self) -> MutexGuard<'_, BackendState> {
        self.0.state.lock().unwrap()
    }

    /// Queues a frame for the guest and signals the fd.
    pub fn push(&self, frame: Vec<u8>) {
        self.state().rx.push_back(frame);
        self.0.evt.write(1).unwrap();
    }

    /// Frames still queued for the guest.
    pub fn rx_left(&self) -> usize {
        self.state().rx.len()
    }

    /// Takes the frames the guest sent so far.
    pub fn take_tx(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.state().tx)
    }
}

impl AsRawFd for TestBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.0.evt.as_raw_fd()
    }
}

impl TestBackend {
    /// The next frame for the guest (after the read hook), counting the
    /// read; `WouldBlock` when there is none.
    fn next_frame(&mut self, vectored: bool) -> std::io::Result<Vec<u8>> {
        let mut state = self.0.state.lock().unwrap();
        if let Some(hook) = state.on_read.as_mut() {
            hook();
        }
        let Some(frame) = state.rx.pop_front() else {
            // Drain the eventfd (EAGAIN when already empty).
            let _ = self.0.evt.read();
            return Err(ErrorKind::WouldBlock.into());
        };
        if vectored {
            state.vectored_reads += 1;
        } else {
            state.reads += 1;
        }
        Ok(frame)
    }

    /// Records a frame the guest sent (unless writes fail).
    fn sent(&mut self, frame: Vec<u8>) -> std::io::Result<usize> {
        let mut state = self.0.state.lock().unwrap();
        if let Some(kind) = state.write_error {
            return Err(kind.into());
        }
        let len = frame.len();
        state.tx.push(frame);
        let sent = state.tx.len();
        if let Some(hook) = state.on_write.as_mut() {
            hook(sent);
        }
        Ok(len)
    }
}

impl NetBackend for TestBackend {
    /// Like a tap: one frame per read, truncated to `buf`, and the
    /// header's `num_buffers` bytes left as they were in `buf`.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let frame = self.next_frame(false)?;
        let len = frame.len().min(buf.len());
        for (i, (dst, src)) in buf.iter_mut().zip(&frame[..len]).enumerate() {
            if !(NUM_BUFFERS_OFFSET..VNET_HDR_SIZE).contains(&i) {
                *dst = *src;
            }
        }
        Ok(len)
    }

    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.state.lock().unwrap().writes += 1;
        self.sent(buf.to_vec())
    }

    /// Like a tap's readv: the frame across `bufs`, truncated to their
    /// total, `num_buffers` left alone.
    fn read_frame_vectored(&mut self, bufs: &[VolatileSlice<'_>]) -> std::io::Result<usize> {
        assert!(bufs.len() <= MAX_IOVECS, "{} iovecs", bufs.len());
        let frame = self.next_frame(true)?;
        let mut at = 0usize;
        for buf in bufs {
            let end = (at + buf.len()).min(frame.len());
            // Frame bytes at..end, but for num_buffers.
            let keep = NUM_BUFFERS_OFFSET..VNET_HDR_SIZE;
            for (from, to) in [(at, end.min(keep.start)), (at.max(keep.end), end)] {
                if from < to {
                    buf.write_slice(&frame[from..to], from - at).unwrap();
                }
            }
            at = end;
        }
        Ok(at)
    }

    fn write_frame_vectored(&mut self, bufs: &[VolatileSlice<'_>]) -> std::io::Result<usize> {
        assert!(bufs.len() <= MAX_IOVECS, "{} iovecs", bufs.len());
        self.0.state.lock().unwrap().vectored_writes += 1;
        let mut frame = Vec::new();
        for buf in bufs {
            let mut part = vec![0u8; buf.len()];
            buf.read_slice(&mut part, 0).unwrap();
            frame.extend_from_slice(&part);
        }
        self.sent(frame)
    }

    fn set_offload(&mut self, flags: u32) -> std::io::Result<()> {
        let mut state = self.0.state.lock().unwrap();
        if state.offload_error {
            return Err(ErrorKind::InvalidInput.into());
        }
        state.offloads.push(flags);
        Ok(())
    }

    fn name(&self) -> &str {
        "testtap"
    }
}

/// A frame of `len` bytes (header included) whose bytes follow from
/// `seed`, with header bytes 10..12 (`num_buffers`) set to garbage the
/// device must overwrite.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut frame: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    if len >= VNET_HDR_SIZE {
        frame[NUM_BUFFERS_OFFSET] = 0xaa;
        frame[NUM_BUFFERS_OFFSET + 1] = 0xbb;
    }
    frame
}

/// `frame` as the guest should see it: `num_buffers` = 1.
pub fn as_delivered(frame: &[u8]) -> Vec<u8> {
    as_merged(frame, 1)
}

/// `frame` as the guest should see it in `count` merged buffers.
pub fn as_merged(frame: &[u8], count: u16) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame[NUM_BUFFERS_OFFSET..VNET_HDR_SIZE].copy_from_slice(&count.to_le_bytes());
    frame
}

/// A frame as a mergeable-buffer driver gathers it: its bytes and the
/// used length of each buffer it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub bytes: Vec<u8>,
    pub lens: Vec<u32>,
}

pub type Manager = EventManager<Arc<Mutex<Net<TestBackend>>>>;

/// A network device on a real event manager, with the test as its guest.
pub struct Harness {
    pub net: Arc<Mutex<Net<TestBackend>>>,
    pub backend: BackendHandle,
    pub manager: Manager,
    pub mem: GuestMemoryMmap,
    pub rxq: GuestQueue,
    pub txq: GuestQueue,
    pub interrupt: Arc<TestInterrupt>,
    /// Whether [`Harness::activate`] acks `VIRTIO_F_RING_EVENT_IDX`.
    pub event_idx: bool,
    /// Whether [`Harness::activate`] acks `VIRTIO_NET_F_MRG_RXBUF` (when
    /// offered).
    pub mrg_rxbuf: bool,
    /// Where the one-descriptor rx buffers [`Harness::add_rx_pages`]
    /// posted are, by head index.
    pub page_addrs: HashMap<u16, u64>,
    /// The next page [`Harness::add_rx_pages`] uses, counted from
    /// [`BIG_DATA`].
    page_next: u64,
    /// Where [`Harness::send`] puts the next frame, from [`BIG_DATA`].
    tx_next: u64,
}

impl Harness {
    /// A device registered with an event manager, not activated.
    pub fn inactive(offload: bool) -> Self {
        let (device_side, backend) = backend();
        let net = Arc::new(Mutex::new(
            Net::new(device_side, MAC, MTU, offload).unwrap(),
        ));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(net.clone());
        let mem = memory();
        Harness {
            net,
            backend,
            manager,
            rxq: GuestQueue::new(&mem, QUEUE_SIZE, RX_BASE),
            txq: GuestQueue::new(&mem, QUEUE_SIZE, TX_BASE),
            mem,
            interrupt: Arc::new(TestInterrupt::default()),
            event_idx: false,
            mrg_rxbuf: false,
            page_addrs: HashMap::new(),
            page_next: 0,
            tx_next: BIG_DATA,
        }
    }

    /// An activated device (all features acked but
    /// `VIRTIO_F_RING_EVENT_IDX` and `VIRTIO_NET_F_MRG_RXBUF`) with no rx
    /// buffers yet.
    pub fn new(offload: bool) -> Self {
        let mut h = Harness::inactive(offload);
        h.activate();
        h
    }

    /// An activated device with every feature acked but
    /// `VIRTIO_NET_F_MRG_RXBUF`, notification suppression included, and no
    /// rx buffers yet.
    pub fn with_event_idx(offload: bool) -> Self {
        let mut h = Harness::inactive(offload);
        h.event_idx = true;
        h.activate();
        h
    }

    /// An activated device with offloads and mergeable rx buffers
    /// negotiated, notification suppression with `event_idx`, and no rx
    /// buffers yet.
    pub fn mergeable(event_idx: bool) -> Self {
        let mut h = Harness::inactive(true);
        h.event_idx = event_idx;
        h.mrg_rxbuf = true;
        h.activate();
        h
    }

    /// New, empty queues in place of the old ones (for re-activation after
    /// a reset).
    pub fn fresh_queues(&mut self) {
        let end = TX_BASE + (TX_BASE - RX_BASE);
        let zeroes = vec![0u8; usize::try_from(end - RX_BASE).unwrap()];
        self.mem
            .write_slice(&zeroes, GuestAddress(RX_BASE))
            .unwrap();
        self.rxq = GuestQueue::new(&self.mem, QUEUE_SIZE, RX_BASE);
        self.txq = GuestQueue::new(&self.mem, QUEUE_SIZE, TX_BASE);
    }

    pub fn net(&self) -> MutexGuard<'_, Net<TestBackend>> {
        self.net.lock().unwrap()
    }

    /// Acks every offered feature (`VIRTIO_F_RING_EVENT_IDX` only with
    /// [`Harness::event_idx`]) and activates with fresh queues, without
    /// running the event loop.
    pub fn activate(&mut self) {
        let queues = vec![self.rxq.create_queue(), self.txq.create_queue()];
        let mut net = self.net.lock().unwrap();
        let mut features = net.avail_features();
        if !self.event_idx {
            features &= !(1u64 << VIRTIO_F_RING_EVENT_IDX);
        }
        if !self.mrg_rxbuf {
            features &= !(1u64 << VIRTIO_NET_F_MRG_RXBUF);
        }
        net.set_acked_features(features);
        net.activate(self.mem.clone(), self.interrupt.clone(), queues)
            .unwrap();
    }

    /// Runs the event loop until nothing is ready.
    pub fn drain(&mut self) -> usize {
        let mut total = 0;
        for _ in 0..10_000 {
            let n = self.manager.run_with_timeout(0).unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
        panic!("the event loop doesn't settle");
    }

    /// Signals queue `index` as the guest's `QueueNotify` write would.
    pub fn notify(&self, index: usize) {
        self.net().queue_events()[index].write(1).unwrap();
    }

    /// Adds `n` one-descriptor rx buffers of `size` bytes (at most
    /// [`RX_SLOT_SIZE`]), without notifying.
    pub fn add_rx_buffers(&mut self, n: usize, size: u32) {
        assert!(u64::from(size) <= RX_SLOT_SIZE);
        for _ in 0..n {
            let head = self.rxq.next_head(1);
            let addr = RX_DATA + u64::from(head) * RX_SLOT_SIZE;
            self.rxq.add_chain(&[(addr, size, F_WRITE)]);
        }
    }

    /// The frames the device put in (one-descriptor) rx buffers since the
    /// last call, as (used length, bytes).
    pub fn recv(&mut self) -> Vec<(u32, Vec<u8>)> {
        let mut frames = Vec::new();
        while let Some((id, len)) = self.rxq.pop_used() {
            let addr = RX_DATA + u64::from(id) * RX_SLOT_SIZE;
            let mut bytes = vec![0u8; usize::try_from(len).unwrap()];
            self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
            frames.push((len, bytes));
        }
        frames
    }

    /// Adds `n` one-descriptor rx buffers of `size` bytes (at most a
    /// page), each in its own page from [`BIG_DATA`] (112 pages, reused in
    /// turn), without notifying.
    pub fn add_rx_pages(&mut self, n: usize, size: u32) {
        assert!(size <= 0x1000);
        let pages = (MEM_SIZE as u64 - BIG_DATA) / 0x1000;
        for _ in 0..n {
            let addr = BIG_DATA + (self.page_next % pages) * 0x1000;
            self.page_next += 1;
            let head = self.rxq.add_chain(&[(addr, size, F_WRITE)]);
            self.page_addrs.insert(head, addr);
        }
    }

    /// The frames the device put in [`Harness::add_rx_pages`] buffers
    /// since the last call, gathered by `num_buffers` as a mergeable-buffer
    /// driver does. Panics if a frame's buffers are not all used yet.
    pub fn recv_merged(&mut self) -> Vec<Merged> {
        let mut frames = Vec::new();
        while let Some(first) = self.rxq.pop_used() {
            let mut merged = Merged {
                bytes: Vec::new(),
                lens: Vec::new(),
            };
            let mut elem = first;
            loop {
                let (id, len) = elem;
                let addr = self.page_addrs[&u16::try_from(id).unwrap()];
                let mut bytes = vec![0u8; usize::try_from(len).unwrap()];
                self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
                merged.bytes.extend_from_slice(&bytes);
                merged.lens.push(len);
                let count = if merged.bytes.len() >= VNET_HDR_SIZE {
                    u16::from_le_bytes([
                        merged.bytes[NUM_BUFFERS_OFFSET],
                        merged.bytes[NUM_BUFFERS_OFFSET + 1],
                    ])
                } else {
                    1
                };
                if merged.lens.len() >= usize::from(count) {
                    break;
                }
                elem = self
                    .rxq
                    .pop_used()
                    .expect("a buffer of the frame is missing");
            }
            frames.push(merged);
        }
        frames
    }

    /// Puts `frame` on the tx queue at `addr`, split into descriptors of
    /// the given sizes (the rest in the last one), without notifying.
    pub fn send_split(&mut self, frame: &[u8], addr: u64, splits: &[usize]) {
        self.mem.write_slice(frame, GuestAddress(addr)).unwrap();
        let mut descs: Vec<Desc> = Vec::new();
        let mut at = 0usize;
        for &split in splits {
            descs.push((addr + at as u64, u32::try_from(split).unwrap(), 0));
            at += split;
        }
        descs.push((
            addr + at as u64,
            u32::try_from(frame.len() - at).unwrap(),
            0,
        ));
        self.txq.add_chain(&descs);
    }

    /// Where the next frame of `len` bytes can go (frames sent since the
    /// queue was last processed don't overlap, up to ~448 KiB).
    pub fn tx_addr(&mut self, len: usize) -> u64 {
        let len = (len as u64).next_multiple_of(0x1000);
        if self.tx_next + len > MEM_SIZE as u64 {
            self.tx_next = BIG_DATA;
        }
        let addr = self.tx_next;
        self.tx_next += len;
        addr
    }

    /// Puts `frame` on the tx queue in one descriptor, without notifying.
    pub fn send(&mut self, frame: &[u8]) {
        let addr = self.tx_addr(frame.len());
        self.send_split(frame, addr, &[]);
    }

    /// Notifies queue `index` and runs the event loop.
    pub fn notify_and_run(&mut self, index: usize) {
        assert!(index == RX_QUEUE || index == TX_QUEUE);
        self.notify(index);
        self.drain();
    }
}
