//! Test harness shared by the virtio devices: plain guest memory, a
//! recording interrupt, and the driver side of a split virtqueue laid out by
//! hand (virtio 1.2, section 2.7).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::Interrupt;

/// Guest memory size of the tests.
pub const MEM_SIZE: usize = 0x10_0000;

/// Descriptor flags (section 2.7.5).
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// Size of one descriptor table entry (section 2.7.5).
const DESC_SIZE: u64 = 16;
/// Offsets of a queue's available and used rings from its descriptor
/// table: room for a 256-entry table (4 KiB) and ring each.
const AVAIL_OFFSET: u64 = 0x1000;
const USED_OFFSET: u64 = 0x2000;

/// `MEM_SIZE` bytes of guest memory at address 0.
pub fn memory() -> GuestMemoryMmap {
    memory_of(MEM_SIZE)
}

/// `size` bytes of guest memory at address 0.
pub fn memory_of(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).unwrap()
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

/// One descriptor as a test writes it: address, length, flags (`F_NEXT` is
/// added by [`GuestQueue::add_chain`]).
pub type Desc = (u64, u32, u16);

/// The driver side of one split virtqueue whose descriptor table starts at
/// `base`, its available ring 0x1000 and its used ring 0x2000 further.
#[derive(Clone)]
pub struct GuestQueue {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    pub base: u64,
    /// The descriptor the next chain starts at.
    pub next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl GuestQueue {
    pub fn new(mem: &GuestMemoryMmap, size: u16, base: u64) -> Self {
        GuestQueue {
            mem: mem.clone(),
            size,
            base,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    pub fn desc_table(&self) -> u64 {
        self.base
    }

    pub fn avail_ring(&self) -> u64 {
        self.base + AVAIL_OFFSET
    }

    pub fn used_ring(&self) -> u64 {
        self.base + USED_OFFSET
    }

    /// The device side, as the transport would build it.
    pub fn create_queue(&self) -> Queue {
        let mut queue = Queue::new(self.size).unwrap();
        queue
            .try_set_desc_table_address(GuestAddress(self.desc_table()))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(self.avail_ring()))
            .unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(self.used_ring()))
            .unwrap();
        queue.set_ready(true);
        assert!(queue.is_valid(&self.mem));
        queue
    }

    /// Writes descriptor `index` (section 2.7.5: le64 addr, le32 len, le16
    /// flags, le16 next).
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc_table() + u64::from(index) * DESC_SIZE);
        let mut raw = [0u8; DESC_SIZE as usize];
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
            .write_obj(head, GuestAddress(self.avail_ring() + 4 + slot * 2))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail_ring() + 2))
            .unwrap();
    }

    /// The head index the next chain of `len` descriptors gets.
    pub fn next_head(&self, len: u16) -> u16 {
        if self.next_desc + len > self.size {
            0
        } else {
            self.next_desc
        }
    }

    /// Writes `descs` as one chain (descriptor indices wrap around the
    /// table; earlier chains there must have been used) and makes it
    /// available; returns the head index.
    pub fn add_chain(&mut self, descs: &[Desc]) -> u16 {
        let len = u16::try_from(descs.len()).unwrap();
        let head = self.next_head(len);
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = head + u16::try_from(i).unwrap();
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | F_NEXT };
            self.write_desc(index, addr, len, flags, index + 1);
        }
        self.next_desc = head + len;
        self.publish(head);
        head
    }

    /// The available ring's `idx` as the driver last published it.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Writes `used_event` (section 2.7.10, after the available ring): with
    /// `VIRTIO_F_RING_EVENT_IDX`, the driver wants an interrupt once the
    /// used index moves past it.
    pub fn set_used_event(&self, value: u16) {
        let at = self.avail_ring() + 4 + u64::from(self.size) * 2;
        self.mem.write_obj(value, GuestAddress(at)).unwrap();
    }

    /// The device's `avail_event` (section 2.7.10, after the used ring).
    pub fn avail_event(&self) -> u16 {
        let at = self.used_ring() + 4 + u64::from(self.size) * 8;
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    /// Whether a driver that moved the available index from `old` to the
    /// current one must kick, with `VIRTIO_F_RING_EVENT_IDX` (section
    /// 2.7.10; Linux's `vring_need_event`).
    pub fn kick_needed(&self, old: u16) -> bool {
        let new = self.avail_idx;
        new.wrapping_sub(self.avail_event()).wrapping_sub(1) < new.wrapping_sub(old)
    }

    /// The used ring's `idx` (section 2.7.8).
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.used_ring() + 2))
            .unwrap()
    }

    /// Chains made available and not yet used.
    pub fn outstanding(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.used_idx())
    }

    /// Used ring element `n`: (descriptor id, length written).
    pub fn used_elem(&self, n: u16) -> (u32, u32) {
        let at = self.used_ring() + 4 + u64::from(n % self.size) * 8;
        let id = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// The next used element not yet seen: (descriptor id, length).
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if self.used_seen == self.used_idx() {
            return None;
        }
        let elem = self.used_elem(self.used_seen);
        self.used_seen = self.used_seen.wrapping_add(1);
        Some(elem)
    }
}
