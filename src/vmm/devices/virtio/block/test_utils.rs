//! Test harness: the block device's queue at fixed addresses, on the
//! shared virtio harness ([`crate::vmm::devices::virtio::test_utils`]).

use std::ops::{Deref, DerefMut};

use vm_memory::GuestMemoryMmap;

pub use crate::vmm::devices::virtio::test_utils::{
    memory, Desc, GuestQueue, TestInterrupt, F_WRITE, MEM_SIZE,
};

/// Descriptor table, available ring and used ring addresses (the layout
/// of [`GuestQueue`]).
pub const DESC_TABLE: u64 = 0x1000;
pub const AVAIL_RING: u64 = 0x2000;
pub const USED_RING: u64 = 0x3000;
/// Where tests put their buffers.
pub const DATA: u64 = 0x1_0000;

/// The driver side of the one queue of the block tests: a [`GuestQueue`]
/// at [`DESC_TABLE`].
pub struct TestQueue(GuestQueue);

impl TestQueue {
    pub fn new(mem: &GuestMemoryMmap, size: u16) -> Self {
        TestQueue(GuestQueue::new(mem, size, DESC_TABLE))
    }
}

impl Deref for TestQueue {
    type Target = GuestQueue;

    fn deref(&self) -> &GuestQueue {
        &self.0
    }
}

impl DerefMut for TestQueue {
    fn deref_mut(&mut self) -> &mut GuestQueue {
        &mut self.0
    }
}
