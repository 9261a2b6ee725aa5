//! The bridge to fuse-backend-rs's virtio-fs transport, which is built on
//! vm-memory 0.17 / virtio-queue 0.17 while husk's VMM uses 0.18.
//!
//! The two versions describe the same thing: guest RAM is a set of host
//! mappings at guest addresses, and a split virtqueue is three addresses, a
//! size and two ring positions. So at activation the fs device builds, from
//! the 0.18 memory and queues the transport hands it,
//!
//! - a 0.17 `GuestMemoryMmap` whose regions *alias* the 0.18 regions (same
//!   host pointers, no new mapping, no copy): [`AliasedMemory`], which keeps
//!   the 0.18 memory alive as long as the alias exists;
//! - 0.17 `Queue`s with the same addresses, size, readiness, event-index
//!   setting and ring positions ([`queue_017`]).
//!
//! From then on the device pops chains, replies and returns used buffers
//! through the 0.17 objects only; the ring positions go back out through
//! [`super::Fs::queue_positions`] for snapshots. Every check the 0.17
//! crates make on guest input (descriptor addresses inside a region,
//! lengths, chain loops, ring indexes) applies unchanged.

use vm_memory::{GuestMemoryBackend as _, GuestMemoryMmap, GuestMemoryRegion as _};
use vm_memory_017 as vm017;

use virtio_queue::QueueT as _;
use virtio_queue_017::QueueT as _;

/// Why the aliased view could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    #[error("aliasing guest memory region at {guest_addr:#x} ({len} bytes): {reason}")]
    Region {
        guest_addr: u64,
        len: usize,
        reason: String,
    },
    #[error("aliasing guest memory: {0}")]
    Memory(String),
    #[error("virtio queue of size {size}: {reason}")]
    Queue { size: u16, reason: String },
}

/// vm-memory 0.17's view of husk's guest memory (see the module docs).
pub struct AliasedMemory {
    alias: vm017::GuestMemoryMmap,
    /// Owns the mappings `alias` points into; declared after `alias` so it
    /// is dropped after it.
    _owner: GuestMemoryMmap,
}

impl AliasedMemory {
    /// Builds the 0.17 view of `mem`.
    pub fn new(mem: &GuestMemoryMmap) -> Result<AliasedMemory, CompatError> {
        let mut regions = Vec::new();
        for region in mem.iter() {
            let guest_addr = region.start_addr().0;
            let len = usize::try_from(region.len()).map_err(|_| CompatError::Region {
                guest_addr,
                len: usize::MAX,
                reason: "larger than the address space".into(),
            })?;
            let host = region.as_ptr();
            // SAFETY: `host..host + len` is a live mapping owned by `mem`'s
            // region (`as_ptr` and `len` describe it), readable and
            // writable; `build_raw` does not take ownership (it never
            // unmaps), and `_owner` (a clone of `mem`, sharing the same
            // `Arc`ed regions) keeps the mapping alive for as long as the
            // alias exists. Both views access the memory only through
            // volatile reads and writes, as with any guest memory shared
            // with vCPUs.
            let mapping = unsafe {
                vm017::MmapRegion::<()>::build_raw(
                    host,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                )
            }
            .map_err(|e| CompatError::Region {
                guest_addr,
                len,
                reason: e.to_string(),
            })?;
            let region = vm017::GuestRegionMmap::new(mapping, vm017::GuestAddress(guest_addr))
                .ok_or_else(|| CompatError::Region {
                    guest_addr,
                    len,
                    reason: "the region overflows the guest address space".into(),
                })?;
            regions.push(region);
        }
        let alias = vm017::GuestMemoryMmap::from_regions(regions)
            .map_err(|e| CompatError::Memory(e.to_string()))?;
        Ok(AliasedMemory {
            alias,
            _owner: mem.clone(),
        })
    }

    /// The 0.17 memory.
    pub fn get(&self) -> &vm017::GuestMemoryMmap {
        &self.alias
    }
}

/// A virtio-queue 0.17 queue in the same state as `q` (addresses, size,
/// readiness, event index, ring positions).
pub fn queue_017(q: &virtio_queue::Queue) -> Result<virtio_queue_017::Queue, CompatError> {
    let err = |reason: String| CompatError::Queue {
        size: q.size(),
        reason,
    };
    let mut out = virtio_queue_017::Queue::new(q.max_size()).map_err(|e| err(e.to_string()))?;
    out.try_set_size(q.size()).map_err(|e| err(e.to_string()))?;
    let split = |addr: u64| {
        (
            Some(u32::try_from(addr & 0xffff_ffff).unwrap_or(u32::MAX)),
            Some(u32::try_from(addr >> 32).unwrap_or(u32::MAX)),
        )
    };
    let (lo, hi) = split(q.desc_table());
    out.set_desc_table_address(lo, hi);
    let (lo, hi) = split(q.avail_ring());
    out.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(q.used_ring());
    out.set_used_ring_address(lo, hi);
    out.set_event_idx(q.event_idx_enabled());
    out.set_next_avail(q.next_avail());
    out.set_next_used(q.next_used());
    out.set_ready(q.ready());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes as _, GuestAddress};
    use vm_memory_017::Bytes as _;

    use super::*;
    use crate::vmm::devices::virtio::test_utils::{memory, GuestQueue};

    #[test]
    fn the_alias_sees_and_makes_the_same_writes() {
        let mem = memory();
        let alias = AliasedMemory::new(&mem).unwrap();
        mem.write_obj(0x1234_5678u32, GuestAddress(0x8000)).unwrap();
        let v: u32 = alias.get().read_obj(vm017::GuestAddress(0x8000)).unwrap();
        assert_eq!(v, 0x1234_5678);
        alias
            .get()
            .write_obj(0xabcdu16, vm017::GuestAddress(0x9000))
            .unwrap();
        assert_eq!(mem.read_obj::<u16>(GuestAddress(0x9000)).unwrap(), 0xabcd);
        // Past the end is refused by the alias too.
        let end = vm017::GuestAddress(mem.iter().map(|r| r.len()).sum::<u64>());
        assert!(alias.get().read_obj::<u8>(end).is_err());
    }

    #[test]
    fn the_alias_outlives_the_original_handle() {
        let mem = memory();
        let alias = AliasedMemory::new(&mem).unwrap();
        mem.write_obj(7u8, GuestAddress(0x100)).unwrap();
        drop(mem);
        let v: u8 = alias.get().read_obj(vm017::GuestAddress(0x100)).unwrap();
        assert_eq!(v, 7);
    }

    #[test]
    fn a_converted_queue_pops_what_the_driver_published() {
        let mem = memory();
        let mut gq = GuestQueue::new(&mem, 16, 0x1000);
        let mut q = gq.create_queue();
        q.set_event_idx(true);
        gq.add_chain(&[(0x10000, 64, 0)]);
        gq.add_chain(&[(0x11000, 32, 0)]);
        // The transport's queue has already consumed the first chain.
        q.set_next_avail(1);
        q.set_next_used(1);
        let alias = AliasedMemory::new(&mem).unwrap();
        let mut q17 = queue_017(&q).unwrap();
        assert!(q17.is_valid(alias.get()));
        assert!(q17.event_idx_enabled());
        assert_eq!((q17.next_avail(), q17.next_used()), (1, 1));
        let chain = q17.pop_descriptor_chain(alias.get()).unwrap();
        let desc = chain.clone().next().unwrap();
        assert_eq!((desc.addr().0, desc.len()), (0x11000, 32));
        q17.add_used(alias.get(), chain.head_index(), 5).unwrap();
        assert_eq!(gq.used_idx(), 2);
        assert!(q17.pop_descriptor_chain(alias.get()).is_none());
    }

    #[test]
    fn a_queue_the_driver_did_not_make_ready_stays_invalid() {
        let mem = memory();
        let gq = GuestQueue::new(&mem, 16, 0x1000);
        let mut q = gq.create_queue();
        q.set_ready(false);
        let alias = AliasedMemory::new(&mem).unwrap();
        assert!(!queue_017(&q).unwrap().is_valid(alias.get()));
    }
}
