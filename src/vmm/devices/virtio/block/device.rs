//! The virtio-blk device on the shared core: features, config space
//! and queue processing.

use std::fs::OpenOptions;
use std::path::Path;

use log::{debug, warn};
use virtio_queue::QueueT;

use super::request::{handle_chain, Disk};
use super::{
    BlockError, CONFIG_CAPACITY_OFFSET, CONFIG_SEG_MAX_OFFSET, CONFIG_SPACE_SIZE, NUM_QUEUES,
    QUEUE_SIZE, SECTOR_SIZE, SEG_MAX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_ID_BYTES,
};
use crate::vmm::devices::virtio::{VirtioCore, VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1};

/// Index of the request queue.
const REQUEST_QUEUE: usize = 0;

/// A virtio-blk device backed by a raw image file.
pub struct Block {
    /// The log name and `GET_ID` answer.
    id: String,
    pub(super) disk: Disk,
    pub(super) core: VirtioCore,
    config_space: [u8; CONFIG_SPACE_SIZE],
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("id", &self.id)
            .field("disk", &self.disk)
            .field("acked_features", &self.core.acked_features())
            .field("activated", &self.core.is_activated())
            .finish_non_exhaustive()
    }
}

impl Block {
    /// Opens the raw image at `path` (read-write unless `read_only`) as a
    /// disk named `id` (the guest reads the first 20 bytes with `GET_ID`,
    /// e.g. as `/sys/block/vda/serial`).
    pub fn new(path: &Path, read_only: bool, id: &str) -> Result<Block, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let size = file
            .metadata()
            .map_err(|source| BlockError::Metadata {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        let capacity = size / SECTOR_SIZE;
        if capacity == 0 {
            return Err(BlockError::Empty {
                path: path.to_path_buf(),
                size,
            });
        }
        if size % SECTOR_SIZE != 0 {
            warn!(
                "disk {id}: image {} is {size} bytes, not a multiple of {SECTOR_SIZE}; \
                 the last {} bytes are not visible to the guest",
                path.display(),
                size % SECTOR_SIZE
            );
        }

        let mut id_bytes = [0u8; VIRTIO_BLK_ID_BYTES];
        if id.len() > VIRTIO_BLK_ID_BYTES {
            warn!("disk {id}: id is longer than {VIRTIO_BLK_ID_BYTES} bytes; the guest sees it truncated");
        }
        let id_len = id.len().min(VIRTIO_BLK_ID_BYTES);
        id_bytes[..id_len].copy_from_slice(&id.as_bytes()[..id_len]);

        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_BLK_F_FLUSH)
            | (1u64 << VIRTIO_BLK_F_SEG_MAX);
        if read_only {
            avail_features |= 1u64 << VIRTIO_BLK_F_RO;
        }
        let core = VirtioCore::new(
            TYPE_BLOCK,
            format!("disk {id}"),
            avail_features,
            &[QUEUE_SIZE; NUM_QUEUES],
        )?;

        let mut config_space = [0u8; CONFIG_SPACE_SIZE];
        config_space[CONFIG_CAPACITY_OFFSET..CONFIG_CAPACITY_OFFSET + 8]
            .copy_from_slice(&capacity.to_le_bytes());
        config_space[CONFIG_SEG_MAX_OFFSET..CONFIG_SEG_MAX_OFFSET + 4]
            .copy_from_slice(&SEG_MAX.to_le_bytes());

        debug!(
            "disk {id}: {} ({capacity} sectors{})",
            path.display(),
            if read_only { ", read-only" } else { "" }
        );
        Ok(Block {
            id: id.to_string(),
            disk: Disk::new(file, path.to_path_buf(), capacity, read_only, id_bytes),
            core,
            config_space,
        })
    }

    /// The disk's name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Size of the disk in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity
    }

    /// Executes every available request, returns them in the used ring and
    /// interrupts the driver if any were returned. Returns whether any
    /// request was processed.
    pub fn process_queue(&mut self) -> Result<bool, BlockError> {
        let mut active = self.core.active_mut()?;
        let mem = active.mem;
        let mut used_any = false;
        while let Some(chain) = active.queue(REQUEST_QUEUE)?.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let used_len = handle_chain(&mut self.disk, mem, chain);
            used_any |= active.add_used(REQUEST_QUEUE, head, used_len)?;
        }
        if used_any {
            active.signal_used(&[REQUEST_QUEUE])?;
        }
        Ok(used_any)
    }
}

impl VirtioDevice for Block {
    fn core(&self) -> &VirtioCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut VirtioCore {
        &mut self.core
    }

    /// Only `writeback` (with `VIRTIO_BLK_F_CONFIG_WCE`, not offered) is
    /// driver-writable (section 5.2.4): writes take the default (ignored).
    fn config_space(&self) -> &[u8] {
        &self.config_space
    }

    // Requests are executed synchronously, so none is in flight at a
    // reset: the core dropping queue, memory and interrupt is all there is
    // to it (the default `on_reset`).
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::super::test_utils::{
        memory, Desc, TestInterrupt, TestQueue, DATA, F_WRITE, MEM_SIZE,
    };
    use super::super::{
        VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
        VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    };
    use super::*;
    use crate::vmm::devices::virtio::{ActivateError, DeviceError, INTERRUPT_USED_BUFFER};

    /// Image size of most tests: 64 sectors.
    const SECTORS: u64 = 64;
    /// Addresses of the header, data and status buffers.
    const HDR: u64 = DATA;
    const BUF: u64 = DATA + 0x1000;
    const STATUS: u64 = DATA + 0x800;
    /// A status value no request writes.
    const UNTOUCHED: u8 = 0xee;

    /// The byte at `offset` of a test image.
    fn pattern(offset: u64) -> u8 {
        (offset % 251) as u8
    }

    fn image(len: u64) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = (0..len).map(pattern).collect();
        file.write_all(&bytes).unwrap();
        file
    }

    struct Harness {
        image: tempfile::NamedTempFile,
        block: Block,
        vq: TestQueue,
        interrupt: Arc<TestInterrupt>,
    }

    impl Harness {
        fn new(read_only: bool) -> Self {
            Self::with_image(image(SECTORS * SECTOR_SIZE), read_only)
        }

        fn with_image(image: tempfile::NamedTempFile, read_only: bool) -> Self {
            let mem = memory();
            let mut block = Block::new(image.path(), read_only, "test-disk").unwrap();
            let vq = TestQueue::new(&mem, QUEUE_SIZE);
            let interrupt = Arc::new(TestInterrupt::default());
            block
                .activate(mem, interrupt.clone(), vec![vq.create_queue()])
                .unwrap();
            Harness {
                image,
                block,
                vq,
                interrupt,
            }
        }

        fn mem(&self) -> &GuestMemoryMmap {
            &self.vq.mem
        }

        fn write_header(&self, kind: u32, sector: u64) {
            let mut header = [0u8; 16];
            header[0..4].copy_from_slice(&kind.to_le_bytes());
            header[8..16].copy_from_slice(&sector.to_le_bytes());
            self.mem().write_slice(&header, GuestAddress(HDR)).unwrap();
            self.mem()
                .write_obj(UNTOUCHED, GuestAddress(STATUS))
                .unwrap();
        }

        /// Submits one chain, processes the queue, returns (status, used len).
        fn run(&mut self, kind: u32, sector: u64, descs: &[Desc]) -> (u8, u32) {
            self.write_header(kind, sector);
            let head = self.vq.add_chain(descs);
            let used_before = self.vq.used_idx();
            self.block.process_queue().unwrap();
            assert_eq!(self.vq.used_idx(), used_before.wrapping_add(1));
            let (id, len) = self.vq.used_elem(used_before);
            assert_eq!(id, u32::from(head));
            (self.status(), len)
        }

        fn status(&self) -> u8 {
            self.mem().read_obj(GuestAddress(STATUS)).unwrap()
        }

        fn image_bytes(&self) -> Vec<u8> {
            std::fs::read(self.image.path()).unwrap()
        }
    }

    fn hdr() -> Desc {
        (HDR, 16, 0)
    }

    fn status_desc() -> Desc {
        (STATUS, 1, F_WRITE)
    }

    #[test]
    fn new_reports_capacity_features_and_config() {
        let h = Harness::new(false);
        assert_eq!(h.block.capacity(), SECTORS);
        assert_eq!(h.block.device_type(), TYPE_BLOCK);
        assert_eq!(h.block.queue_max_sizes(), &[256]);
        let features = h.block.avail_features();
        assert_ne!(features & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(features & (1 << VIRTIO_BLK_F_FLUSH), 0);
        assert_ne!(features & (1 << VIRTIO_BLK_F_SEG_MAX), 0);
        assert_eq!(features & (1 << VIRTIO_BLK_F_RO), 0);
        let mut config = [0u8; 8];
        h.block.read_config(0, &mut config);
        assert_eq!(u64::from_le_bytes(config), SECTORS);
        let mut seg_max = [0u8; 4];
        h.block.read_config(12, &mut seg_max);
        assert_eq!(u32::from_le_bytes(seg_max), 254);
        // Reads past the config space are zeros.
        let mut past = [0xffu8; 8];
        h.block.read_config(20, &mut past);
        assert_eq!(past, [0; 8]);
        h.block.read_config(u64::MAX, &mut past);
        assert_eq!(past, [0; 8]);

        let ro = Harness::new(true);
        assert_ne!(ro.block.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn new_rounds_down_partial_sectors() {
        let h = Harness::with_image(image(3 * SECTOR_SIZE + 100), false);
        assert_eq!(h.block.capacity(), 3);
    }

    #[test]
    fn new_rejects_empty_and_missing_images() {
        for len in [0, SECTOR_SIZE - 1] {
            let image = image(len);
            let err = Block::new(image.path(), false, "d").unwrap_err();
            assert!(matches!(err, BlockError::Empty { .. }), "{err}");
            assert!(err
                .to_string()
                .contains(&image.path().display().to_string()));
        }
        let err = Block::new(Path::new("/nonexistent/husk.img"), true, "d").unwrap_err();
        assert!(matches!(err, BlockError::Open { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/husk.img"));
    }

    #[test]
    fn read_across_data_descriptors() {
        let mut h = Harness::new(false);
        let descs = [
            hdr(),
            (BUF, 512, F_WRITE),
            (BUF + 0x2000, 1024, F_WRITE),
            status_desc(),
        ];
        let (status, len) = h.run(VIRTIO_BLK_T_IN, 2, &descs);
        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert_eq!(len, 1536 + 1);
        let mut first = vec![0u8; 512];
        h.mem().read_slice(&mut first, GuestAddress(BUF)).unwrap();
        let mut second = vec![0u8; 1024];
        h.mem()
            .read_slice(&mut second, GuestAddress(BUF + 0x2000))
            .unwrap();
        let expected: Vec<u8> = (1024..1024 + 1536).map(pattern).collect();
        assert_eq!([first, second].concat(), expected);
        assert_eq!(h.interrupt.count(), 1);
        assert_eq!(
            h.interrupt.status.load(Ordering::SeqCst),
            INTERRUPT_USED_BUFFER
        );
    }

    #[test]
    fn read_larger_than_bounce_buffer() {
        let sectors = 1024; // 512 KiB image
        let mut h = Harness::with_image(image(sectors * SECTOR_SIZE), false);
        let len: u32 = 300 * 1024;
        let (status, used) = h.run(
            VIRTIO_BLK_T_IN,
            8,
            &[hdr(), (0x4_0000, len, F_WRITE), status_desc()],
        );
        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert_eq!(used, len + 1);
        let mut data = vec![0u8; len as usize];
        h.mem()
            .read_slice(&mut data, GuestAddress(0x4_0000))
            .unwrap();
        let expected: Vec<u8> = (4096..4096 + u64::from(len)).map(pattern).collect();
        assert!(data == expected);
    }

    #[test]
    fn write_then_read_back() {
        let mut h = Harness::new(false);
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 256) as u8).collect();
        h.mem().write_slice(&data, GuestAddress(BUF)).unwrap();
        let descs = [hdr(), (BUF, 1024, 0), status_desc()];
        let (status, len) = h.run(VIRTIO_BLK_T_OUT, 10, &descs);
        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert_eq!(len, 1);
        let image = h.image_bytes();
        assert_eq!(&image[5120..6144], &data[..]);
        // Neighbours untouched.
        assert_eq!(image[5119], pattern(5119));
        assert_eq!(image[6144], pattern(6144));

        let target = BUF + 0x4000;
        let descs = [hdr(), (target, 1024, F_WRITE), status_desc()];
        let (status, len) = h.run(VIRTIO_BLK_T_IN, 10, &descs);
        assert_eq!((status, len), (VIRTIO_BLK_S_OK, 1025));
        let mut back = vec![0u8; 1024];
        h.mem().read_slice(&mut back, GuestAddress(target)).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn write_with_data_in_header_descriptor() {
        // The header and the data share one readable descriptor, the status
        // shares one writable descriptor with nothing: still a valid write.
        let mut h = Harness::new(false);
        let data = [0x5au8; 512];
        h.mem().write_slice(&data, GuestAddress(HDR + 16)).unwrap();
        let (status, len) = h.run(VIRTIO_BLK_T_OUT, 0, &[(HDR, 16 + 512, 0), status_desc()]);
        assert_eq!((status, len), (VIRTIO_BLK_S_OK, 1));
        assert_eq!(&h.image_bytes()[..512], &data[..]);
    }

    #[test]
    fn split_header_and_shared_status_descriptor() {
        let mut h = Harness::new(false);
        // Header in two 8-byte pieces; data and status in one descriptor
        // ending at STATUS.
        let descs = [(HDR, 8, 0), (HDR + 8, 8, 0), (STATUS - 512, 513, F_WRITE)];
        let (status, len) = h.run(VIRTIO_BLK_T_IN, 1, &descs);
        assert_eq!((status, len), (VIRTIO_BLK_S_OK, 513));
        let mut data = vec![0u8; 512];
        h.mem()
            .read_slice(&mut data, GuestAddress(STATUS - 512))
            .unwrap();
        assert_eq!(data, (512..1024).map(pattern).collect::<Vec<u8>>());
    }

    #[test]
    fn flush() {
        let mut h = Harness::new(false);
        let (status, len) = h.run(VIRTIO_BLK_T_FLUSH, 0, &[hdr(), status_desc()]);
        assert_eq!((status, len), (VIRTIO_BLK_S_OK, 1));
    }

    #[test]
    fn get_id() {
        let mut h = Harness::new(false);
        h.mem().write_slice(&[0xff; 20], GuestAddress(BUF)).unwrap();
        let (status, len) = h.run(
            VIRTIO_BLK_T_GET_ID,
            0,
            &[hdr(), (BUF, 20, F_WRITE), status_desc()],
        );
        assert_eq!((status, len), (VIRTIO_BLK_S_OK, 21));
        let mut id = [0u8; 20];
        h.mem().read_slice(&mut id, GuestAddress(BUF)).unwrap();
        assert_eq!(&id, b"test-disk\0\0\0\0\0\0\0\0\0\0\0");
    }

    #[test]
    fn long_id_is_truncated() {
        let image = image(SECTOR_SIZE);
        let block = Block::new(image.path(), true, "a-very-long-disk-identifier").unwrap();
        assert_eq!(&block.disk.id, b"a-very-long-disk-ide");
    }

    #[test]
    fn unknown_type_is_unsupported() {
        let mut h = Harness::new(false);
        for kind in [2, 11, 13, 0x8000_0000] {
            let (status, len) = h.run(kind, 0, &[hdr(), (BUF, 512, F_WRITE), status_desc()]);
            assert_eq!((status, len), (VIRTIO_BLK_S_UNSUPP, 1), "type {kind}");
        }
    }

    #[test]
    fn write_to_read_only_disk_fails() {
        let mut h = Harness::new(true);
        h.mem().write_slice(&[0u8; 512], GuestAddress(BUF)).unwrap();
        let before = h.image_bytes();
        let (status, len) = h.run(VIRTIO_BLK_T_OUT, 0, &[hdr(), (BUF, 512, 0), status_desc()]);
        assert_eq!((status, len), (VIRTIO_BLK_S_IOERR, 1));
        assert_eq!(h.image_bytes(), before);
        // Reads still work.
        let (status, _) = h.run(
            VIRTIO_BLK_T_IN,
            0,
            &[hdr(), (BUF, 512, F_WRITE), status_desc()],
        );
        assert_eq!(status, VIRTIO_BLK_S_OK);
    }

    /// Requests that must complete with IOERR and leave the image alone.
    #[test]
    fn malformed_requests_fail_with_ioerr() {
        let end = MEM_SIZE as u64;
        let cases: Vec<(&str, u32, u64, Vec<Desc>)> = vec![
            (
                "short header",
                VIRTIO_BLK_T_IN,
                0,
                vec![(HDR, 8, 0), (BUF, 512, F_WRITE), status_desc()],
            ),
            (
                "no header",
                VIRTIO_BLK_T_IN,
                0,
                vec![(BUF, 512, F_WRITE), status_desc()],
            ),
            (
                "read, partial sector",
                VIRTIO_BLK_T_IN,
                0,
                vec![hdr(), (BUF, 511, F_WRITE), status_desc()],
            ),
            (
                "write, partial sector",
                VIRTIO_BLK_T_OUT,
                0,
                vec![hdr(), (BUF, 1000, 0), status_desc()],
            ),
            (
                "read at capacity",
                VIRTIO_BLK_T_IN,
                SECTORS,
                vec![hdr(), (BUF, 512, F_WRITE), status_desc()],
            ),
            (
                "read across the end",
                VIRTIO_BLK_T_IN,
                SECTORS - 1,
                vec![hdr(), (BUF, 1024, F_WRITE), status_desc()],
            ),
            (
                "write across the end",
                VIRTIO_BLK_T_OUT,
                SECTORS - 1,
                vec![hdr(), (BUF, 1024, 0), status_desc()],
            ),
            (
                "sector overflow",
                VIRTIO_BLK_T_IN,
                u64::MAX,
                vec![hdr(), (BUF, 512, F_WRITE), status_desc()],
            ),
            (
                "sector * 512 overflow",
                VIRTIO_BLK_T_OUT,
                u64::MAX / 512,
                vec![hdr(), (BUF, 512, 0), status_desc()],
            ),
            (
                "data outside memory",
                VIRTIO_BLK_T_IN,
                0,
                vec![hdr(), (end, 512, F_WRITE), status_desc()],
            ),
            (
                "data straddles the end",
                VIRTIO_BLK_T_IN,
                0,
                vec![hdr(), (end - 512, 1024, F_WRITE), status_desc()],
            ),
            (
                "address overflow",
                VIRTIO_BLK_T_OUT,
                0,
                vec![hdr(), (u64::MAX - 100, 512, 0), status_desc()],
            ),
            (
                "oversized descriptor",
                VIRTIO_BLK_T_IN,
                0,
                vec![hdr(), (BUF, 0xffff_0000, F_WRITE), status_desc()],
            ),
            (
                "header outside memory",
                VIRTIO_BLK_T_IN,
                0,
                vec![(end + 0x1000, 16, 0), status_desc()],
            ),
            (
                "read with readable data",
                VIRTIO_BLK_T_IN,
                0,
                vec![hdr(), (BUF, 512, 0), status_desc()],
            ),
            (
                "write with writable data",
                VIRTIO_BLK_T_OUT,
                0,
                vec![hdr(), (BUF, 512, F_WRITE), status_desc()],
            ),
            (
                "readable after writable",
                VIRTIO_BLK_T_OUT,
                0,
                vec![hdr(), (BUF, 512, F_WRITE), (BUF, 512, 0), status_desc()],
            ),
            (
                "readable after empty writable",
                VIRTIO_BLK_T_OUT,
                0,
                vec![
                    (HDR, 16, 0),
                    (BUF, 0, F_WRITE),
                    (BUF, 512, 0),
                    status_desc(),
                ],
            ),
        ];
        let mut h = Harness::new(false);
        let before = h.image_bytes();
        for (name, kind, sector, descs) in cases {
            let (status, len) = h.run(kind, sector, &descs);
            assert_eq!((status, len), (VIRTIO_BLK_S_IOERR, 1), "{name}");
        }
        assert_eq!(h.image_bytes(), before);
    }

    /// Chains without a usable status byte are returned with length 0.
    #[test]
    fn chains_without_status_are_skipped() {
        let cases: Vec<(&str, Vec<Desc>)> = vec![
            ("last descriptor readable", vec![hdr(), (BUF, 512, 0)]),
            ("header only", vec![hdr()]),
            ("empty status descriptor", vec![hdr(), (STATUS, 0, F_WRITE)]),
            (
                "status outside memory",
                vec![hdr(), (MEM_SIZE as u64, 1, F_WRITE)],
            ),
            (
                "status address overflow",
                vec![hdr(), (u64::MAX, 2, F_WRITE)],
            ),
        ];
        let mut h = Harness::new(false);
        let before = h.image_bytes();
        for (name, descs) in cases {
            let (status, len) = h.run(VIRTIO_BLK_T_OUT, 0, &descs);
            assert_eq!((status, len), (UNTOUCHED, 0), "{name}");
        }
        assert_eq!(h.image_bytes(), before);
        assert_eq!(h.interrupt.count(), 5);
    }

    #[test]
    fn broken_descriptor_links_do_not_hang() {
        let mut h = Harness::new(false);
        h.write_header(VIRTIO_BLK_T_IN, 0);
        // A descriptor that links to itself forever.
        h.vq.write_desc(0, HDR, 16, 1, 0);
        h.vq.publish(0);
        // A link past the end of the table.
        h.vq.write_desc(1, HDR, 16, 1, 999);
        h.vq.publish(1);
        // A head index past the end of the table.
        h.vq.publish(300);
        assert!(h.block.process_queue().unwrap());
        assert_eq!(h.vq.used_idx(), 2);
        assert_eq!(h.vq.used_elem(0), (0, 0));
        assert_eq!(h.vq.used_elem(1), (1, 0));
        assert_eq!(h.status(), UNTOUCHED);
    }

    #[test]
    fn one_interrupt_per_batch() {
        let mut h = Harness::new(false);
        h.write_header(VIRTIO_BLK_T_FLUSH, 0);
        for _ in 0..3 {
            h.vq.add_chain(&[hdr(), status_desc()]);
        }
        assert!(h.block.process_queue().unwrap());
        assert_eq!(h.vq.used_idx(), 3);
        assert_eq!(h.interrupt.count(), 1);
        // Nothing new: no interrupt.
        assert!(!h.block.process_queue().unwrap());
        assert_eq!(h.interrupt.count(), 1);
    }

    #[test]
    fn activation_checks_queues() {
        let image = image(SECTOR_SIZE);
        let mut block = Block::new(image.path(), false, "d").unwrap();
        let mem = memory();
        let vq = TestQueue::new(&mem, QUEUE_SIZE);
        let interrupt = Arc::new(TestInterrupt::default());
        let err = block
            .activate(mem.clone(), interrupt.clone(), vec![])
            .unwrap_err();
        assert!(matches!(
            err,
            ActivateError::QueueCount {
                expected: 1,
                got: 0
            }
        ));
        let mut queue = vq.create_queue();
        queue.set_ready(false);
        let err = block
            .activate(mem.clone(), interrupt.clone(), vec![queue])
            .unwrap_err();
        assert!(matches!(err, ActivateError::BadQueue { index: 0 }));
        assert!(!block.is_activated());
        assert!(matches!(
            block.process_queue(),
            Err(BlockError::Device(DeviceError::NotActivated { .. }))
        ));
        block
            .activate(mem, interrupt, vec![vq.create_queue()])
            .unwrap();
        assert!(block.is_activated());
        assert_eq!(block.core.activate_event().read().unwrap(), 1);
    }

    #[test]
    fn reset_deactivates() {
        let mut h = Harness::new(false);
        h.block.set_acked_features(u64::MAX);
        assert_eq!(h.block.acked_features(), h.block.avail_features());
        assert!(h.block.reset());
        assert!(!h.block.is_activated());
        assert_eq!(h.block.acked_features(), 0);
        assert!(h.block.process_queue().is_err());
        // Activation works again after a reset.
        let queue = h.vq.create_queue();
        h.block
            .activate(h.vq.mem.clone(), h.interrupt.clone(), vec![queue])
            .unwrap();
        assert!(h.block.is_activated());
    }
}
