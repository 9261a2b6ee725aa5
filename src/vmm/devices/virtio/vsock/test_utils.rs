//! Test harness: the driver side of the three vsock queues in one guest
//! memory, built on the shared virtio harness (memory, recording interrupt,
//! [`GuestQueue`]), and a [`Harness`] that plays the guest against a real
//! [`EventManager`].

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use crate::vmm::devices::virtio::test_utils::{
    memory, Desc, GuestQueue, TestInterrupt, F_WRITE,
};

use super::packet::Header;
use super::{
    Vsock, CONN_BUF_ALLOC, HDR_SIZE, HOST_CID, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, TYPE_STREAM,
};
use crate::vmm::devices::virtio::VirtioDevice;

/// Where each queue's descriptor table starts (see [`GuestQueue`]).
pub const RX_BASE: u64 = 0x1000;
pub const TX_BASE: u64 = 0x4000;
pub const EVENT_BASE: u64 = 0x7000;
/// rx buffers: slot `head % RX_SLOTS` of `RX_SLOT_SIZE` bytes from
/// `RX_DATA`.
pub const RX_DATA: u64 = 0x1_0000;
pub const RX_SLOTS: u64 = 64;
pub const RX_SLOT_SIZE: u64 = 0x1000;
/// tx packets: `TX_SLOTS` slots of `TX_SLOT_SIZE` bytes from `TX_DATA`.
pub const TX_DATA: u64 = 0x6_0000;
pub const TX_SLOTS: u64 = 32;
pub const TX_SLOT_SIZE: u64 = 0x4000;

/// The guest's CID in the tests.
pub const GUEST_CID: u64 = 3;

pub type Manager = EventManager<Arc<Mutex<Vsock>>>;

/// A vsock device on a real event manager, with the test as its guest.
pub struct Harness {
    /// Holds the socket files (removed on drop).
    _dir: tempfile::TempDir,
    pub uds: PathBuf,
    pub vsock: Arc<Mutex<Vsock>>,
    pub manager: Manager,
    pub mem: GuestMemoryMmap,
    pub rxq: GuestQueue,
    pub txq: GuestQueue,
    pub evq: GuestQueue,
    pub interrupt: Arc<TestInterrupt>,
    tx_slot: u64,
}

impl Harness {
    /// A device registered with an event manager, not activated.
    pub fn inactive() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let vsock = Arc::new(Mutex::new(Vsock::new(GUEST_CID, &uds).unwrap()));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(vsock.clone());
        let mem = memory();
        Harness {
            rxq: GuestQueue::new(&mem, QUEUE_SIZE, RX_BASE),
            txq: GuestQueue::new(&mem, QUEUE_SIZE, TX_BASE),
            evq: GuestQueue::new(&mem, QUEUE_SIZE, EVENT_BASE),
            _dir: dir,
            uds,
            vsock,
            manager,
            mem,
            interrupt: Arc::new(TestInterrupt::default()),
            tx_slot: 0,
        }
    }

    /// An activated device with no rx buffers yet.
    pub fn new() -> Self {
        let mut h = Harness::inactive();
        h.activate();
        h
    }

    pub fn activate(&mut self) {
        let queues = vec![
            self.rxq.create_queue(),
            self.txq.create_queue(),
            self.evq.create_queue(),
        ];
        self.vsock
            .lock()
            .unwrap()
            .activate(self.mem.clone(), self.interrupt.clone(), queues)
            .unwrap();
        self.drain();
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

    /// Runs the event loop until `done` or `timeout`.
    pub fn run_until(&mut self, timeout: Duration, mut done: impl FnMut(&mut Self) -> bool) {
        let end = Instant::now() + timeout;
        while !done(self) {
            assert!(Instant::now() < end, "timed out");
            self.manager.run_with_timeout(10).unwrap();
        }
    }

    /// Signals queue `index` as the guest's `QueueNotify` write would.
    pub fn notify(&mut self, index: usize) {
        self.vsock.lock().unwrap().queue_events()[index]
            .write(1)
            .unwrap();
    }

    /// Adds `n` rx buffers of `size` bytes (at most `RX_SLOT_SIZE`), then
    /// notifies and runs the event loop.
    pub fn add_rx_buffers_sized(&mut self, n: usize, size: u32) {
        assert!(u64::from(size) <= RX_SLOT_SIZE);
        for _ in 0..n {
            // The slot follows from the head index the chain will get.
            let next = if self.rxq.next_desc + 1 > self.rxq.size {
                0
            } else {
                self.rxq.next_desc
            };
            let addr = RX_DATA + (u64::from(next) % RX_SLOTS) * RX_SLOT_SIZE;
            self.rxq.add_chain(&[(addr, size, F_WRITE)]);
        }
        self.notify(RX_QUEUE);
        self.drain();
    }

    /// Adds `n` 4 KiB rx buffers (as Linux does).
    pub fn add_rx_buffers(&mut self, n: usize) {
        self.add_rx_buffers_sized(n, 4096);
    }

    /// The packets the device put in rx buffers since the last call.
    pub fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut packets = Vec::new();
        while let Some((id, len)) = self.rxq.pop_used() {
            let addr = RX_DATA + (u64::from(id) % RX_SLOTS) * RX_SLOT_SIZE;
            let len = usize::try_from(len).unwrap();
            assert!(len >= HDR_SIZE, "rx packet of {len} bytes");
            let mut bytes = vec![0u8; len];
            self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
            let mut raw = [0u8; HDR_SIZE];
            raw.copy_from_slice(&bytes[..HDR_SIZE]);
            let header = Header::from_bytes(&raw);
            assert_eq!(header.len as usize, len - HDR_SIZE, "{header:?}");
            packets.push((header, bytes[HDR_SIZE..].to_vec()));
        }
        packets
    }

    /// Like [`Harness::recv`], expecting exactly one packet.
    pub fn recv_one(&mut self) -> Header {
        let packets = self.recv();
        assert_eq!(packets.len(), 1, "{packets:?}");
        packets[0].0
    }

    /// Where the next tx packet goes.
    pub fn next_tx_slot(&mut self) -> u64 {
        let addr = TX_DATA + (self.tx_slot % TX_SLOTS) * TX_SLOT_SIZE;
        self.tx_slot += 1;
        addr
    }

    /// Puts a packet on the tx queue (header and payload in two
    /// descriptors, as Linux does), notifies and runs the event loop.
    pub fn send(&mut self, mut header: Header, payload: &[u8]) {
        assert!(payload.len() + HDR_SIZE <= TX_SLOT_SIZE as usize);
        header.len = u32::try_from(payload.len()).unwrap();
        let addr = self.next_tx_slot();
        self.mem
            .write_slice(&header.to_bytes(), GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(addr + HDR_SIZE as u64))
            .unwrap();
        if payload.is_empty() {
            self.txq.add_chain(&[(addr, HDR_SIZE as u32, 0)]);
        } else {
            let len = u32::try_from(payload.len()).unwrap();
            self.txq
                .add_chain(&[(addr, HDR_SIZE as u32, 0), (addr + HDR_SIZE as u64, len, 0)]);
        }
        self.notify(TX_QUEUE);
        self.drain();
    }

    /// Number of open connections.
    pub fn connections(&self) -> usize {
        self.vsock.lock().unwrap().muxer.connections.len()
    }
}

/// A header from the guest port `src_port` to host port `dst_port`, with a
/// guest credit of [`CONN_BUF_ALLOC`] and nothing consumed.
pub fn guest_hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: CONN_BUF_ALLOC,
        ..Header::default()
    }
}

/// What a non-blocking stream has now: its bytes, and whether it reached
/// EOF.
pub fn read_now(stream: &mut UnixStream) -> (Vec<u8>, bool) {
    stream.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == ErrorKind::WouldBlock => return (out, false),
            // A reset peer is an EOF for the tests.
            Err(err) if err.kind() == ErrorKind::ConnectionReset => return (out, true),
            Err(err) => panic!("reading a test socket: {err}"),
        }
    }
}
