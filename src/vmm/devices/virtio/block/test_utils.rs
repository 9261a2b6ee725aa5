//! Test harness: a split virtqueue laid out by hand in plain guest memory
//! (virtio 1.2, section 2.7), and a recording interrupt.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::vmm::devices::virtio::Interrupt;

/// Guest memory size of the tests.
pub const MEM_SIZE: usize = 0x10_0000;
/// Descriptor table, available ring and used ring addresses.
pub const DESC_TABLE: u64 = 0x1000;
pub const AVAIL_RING: u64 = 0x2000;
pub const USED_RING: u64 = 0x3000;
/// Where tests put their buffers.
pub const DATA: u64 = 0x1_0000;

/// Descriptor flags (section 2.7.5).
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// An [`Interrupt`] that counts triggers.
#[derive(Debug, Default)]
pub struct TestInterrupt {
    pub count: AtomicUsize,
    pub status: AtomicU32,
}

impl TestInterrupt {
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Interrupt for TestInterrupt {
    fn trigger(&self, status: u32) -> std::io::Result<()> {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.status.fetch_or(status, Ordering::SeqCst);
        Ok(())
    }
}

/// The driver side of one split virtqueue.
pub struct TestQueue {
    pub mem: GuestMemoryMmap,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
}

/// One descriptor as a test writes it: address, length, flags (`F_NEXT`
/// is added by [`TestQueue::add_chain`]).
pub type Desc = (u64, u32, u16);

impl TestQueue {
    pub fn new(mem: &GuestMemoryMmap, size: u16) -> Self {
        TestQueue {
            mem: mem.clone(),
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// The device side, as the transport would build it.
    pub fn create_queue(&self) -> Queue {
        let mut queue = Queue::new(self.size).unwrap();
        queue
            .try_set_desc_table_address(GuestAddress(DESC_TABLE))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(AVAIL_RING))
            .unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(USED_RING))
            .unwrap();
        queue.set_ready(true);
        assert!(queue.is_valid(&self.mem));
        queue
    }

    /// Writes descriptor `index` (section 2.7.5: le64 addr, le32 len, le16
    /// flags, le16 next).
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC_TABLE + u64::from(index) * 16);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).unwrap();
    }

    /// Makes `head` available (section 2.7.6: le16 flags, le16 idx, ring).
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, GuestAddress(AVAIL_RING + 4 + slot * 2))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }

    /// Writes `descs` as one chain and makes it available; returns the
    /// head index.
    pub fn add_chain(&mut self, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = head + u16::try_from(i).unwrap();
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | F_NEXT };
            self.write_desc(index, addr, len, flags, index + 1);
        }
        self.next_desc += u16::try_from(descs.len()).unwrap();
        self.publish(head);
        head
    }

    /// The used ring's `idx` (section 2.7.8).
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap()
    }

    /// Used ring element `n`: (descriptor id, length written).
    pub fn used_elem(&self, n: u16) -> (u32, u32) {
        let at = USED_RING + 4 + u64::from(n % self.size) * 8;
        let id = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }
}
