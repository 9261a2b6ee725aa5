//! The zero page (`struct boot_params`) and its e820 memory map.
//!
//! Field meanings: `Documentation/arch/x86/boot.rst` and
//! `Documentation/arch/x86/zero-page.rst` in the Linux tree.

use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE, LOADED_HIGH,
};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout::{CMDLINE_START, EBDA_START, HIGH_RAM_START, HIMEM_START};
use super::{low_ram_end, ArchError, InitrdInfo};

/// `boot_flag`: the legacy boot sector signature.
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header`: "HdrS", little-endian.
pub const HDRS_MAGIC: u32 = u32::from_le_bytes(*b"HdrS");
/// `type_of_loader`: 0xff, "undefined" boot loader.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `kernel_alignment` for a kernel we place ourselves: 16 MiB, the x86_64
/// default `CONFIG_PHYSICAL_ALIGN`.
pub const KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// The e820 map of `mem`:
///
/// - `[0, EBDA_START)`: RAM (real-mode area, GDT, zero page, page tables,
///   command line);
/// - `[EBDA_START, HIMEM_START)`: reserved (MP table, legacy VGA/BIOS holes);
/// - `[HIMEM_START, end of low RAM)`: RAM (kernel, initrd);
/// - every region at or above [`HIGH_RAM_START`]: RAM.
pub fn e820_entries(mem: &GuestMemoryMmap) -> Result<Vec<boot_e820_entry>, ArchError> {
    let low_end = low_ram_end(mem)?;
    if low_end <= HIMEM_START {
        return Err(ArchError::LowMemoryTooSmall {
            end: low_end,
            min: HIMEM_START,
        });
    }
    let entry = |start: u64, end: u64, kind: u32| boot_e820_entry {
        addr: start,
        size: end - start,
        r#type: kind,
    };
    let mut entries = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, HIMEM_START, E820_RESERVED),
        entry(HIMEM_START, low_end, E820_RAM),
    ];
    let mut high: Vec<_> = mem
        .iter()
        .filter(|r| r.start_addr().0 >= HIGH_RAM_START)
        .map(|r| entry(r.start_addr().0, r.start_addr().0 + r.len(), E820_RAM))
        .collect();
    high.sort_by_key(|e| e.addr);
    entries.extend(high);
    if entries.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(ArchError::E820TooManyEntries {
            count: entries.len(),
            max: E820_MAX_ENTRIES_ZEROPAGE,
        });
    }
    Ok(entries)
}

/// Builds the zero page.
///
/// For a bzImage, `header` is the kernel's own setup header (from
/// `KernelLoaderResult::setup_header`): it is kept, and the loader-owned
/// fields are filled in over it, as the boot protocol asks. For an ELF
/// `vmlinux` the header starts zeroed.
pub fn build_boot_params(
    mem: &GuestMemoryMmap,
    cmdline_len: u32,
    initrd: Option<InitrdInfo>,
    header: Option<setup_header>,
) -> Result<boot_params, ArchError> {
    let mut params = boot_params::default();
    if let Some(header) = header {
        params.hdr = header;
    }
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    // The kernel sits at HIMEM_START (1 MiB): "loaded high".
    params.hdr.loadflags |= LOADED_HIGH;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.cmd_line_ptr = CMDLINE_PTR;
    params.hdr.cmdline_size = cmdline_len;

    if let Some(initrd) = initrd {
        let bad = || ArchError::InitrdAddress {
            addr: initrd.addr.0,
            size: initrd.size,
        };
        let image = u32::try_from(initrd.addr.0).map_err(|_| bad())?;
        let size = u32::try_from(initrd.size).map_err(|_| bad())?;
        image.checked_add(size).ok_or_else(bad)?;
        params.hdr.ramdisk_image = image;
        params.hdr.ramdisk_size = size;
    }

    let entries = e820_entries(mem)?;
    for (slot, entry) in params.e820_table.iter_mut().zip(&entries) {
        *slot = *entry;
    }
    params.e820_entries =
        u8::try_from(entries.len()).map_err(|_| ArchError::E820TooManyEntries {
            count: entries.len(),
            max: E820_MAX_ENTRIES_ZEROPAGE,
        })?;
    Ok(params)
}

/// [`CMDLINE_START`] as the 32-bit `cmd_line_ptr` field.
const CMDLINE_PTR: u32 = {
    assert!(CMDLINE_START <= u32::MAX as u64);
    // Lossless: checked at compile time just above.
    CMDLINE_START as u32
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::arch::x86_64::layout::{MMIO_GAP_START, ZERO_PAGE_START};
    use crate::vmm::arch::x86_64::{configure_system, memory_regions};
    use linux_loader::cmdline::Cmdline;
    use vm_memory::{Bytes, GuestAddress};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn guest_mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&memory_regions(size)).unwrap()
    }

    fn boot(
        mem: &GuestMemoryMmap,
        initrd: Option<InitrdInfo>,
        header: Option<setup_header>,
    ) -> boot_params {
        let mut cmdline = Cmdline::new(256).unwrap();
        cmdline.insert_str("console=ttyS0").unwrap();
        configure_system(mem, &cmdline, initrd, 1, header).unwrap();
        mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap()
    }

    fn e820(params: &boot_params) -> Vec<(u64, u64, u32)> {
        let table = params.e820_table;
        table[..usize::from(params.e820_entries)]
            .iter()
            .map(|e| (e.addr, e.size, e.r#type))
            .collect()
    }

    #[test]
    fn e820_small_vm() {
        let mem = guest_mem(128 * MIB);
        let params = boot(&mem, None, None);
        assert_eq!(
            e820(&params),
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
                (HIMEM_START, 128 * MIB - HIMEM_START, E820_RAM),
            ]
        );
    }

    #[test]
    fn e820_vm_above_4g() {
        let mem = guest_mem(5 * GIB);
        let params = boot(&mem, None, None);
        assert_eq!(
            e820(&params),
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
                (HIMEM_START, MMIO_GAP_START - HIMEM_START, E820_RAM),
                (HIGH_RAM_START, 2 * GIB, E820_RAM),
            ]
        );
    }

    #[test]
    fn e820_rejects_tiny_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), HIMEM_START as usize)]).unwrap();
        assert!(matches!(
            e820_entries(&mem),
            Err(ArchError::LowMemoryTooSmall { end, .. }) if end == HIMEM_START
        ));
    }

    #[test]
    fn zero_page_fields_elf() {
        let mem = guest_mem(128 * MIB);
        let initrd = InitrdInfo {
            addr: GuestAddress(0x700_0000),
            size: 0x12345,
        };
        let params = boot(&mem, Some(initrd), None);
        assert_eq!({ params.hdr.boot_flag }, 0xaa55);
        assert_eq!({ params.hdr.header }, 0x5372_6448);
        assert_eq!(&{ params.hdr.header }.to_le_bytes(), b"HdrS");
        assert_eq!(params.hdr.type_of_loader, 0xff);
        assert_eq!({ params.hdr.kernel_alignment }, KERNEL_ALIGNMENT);
        assert_eq!(params.hdr.loadflags & LOADED_HIGH, LOADED_HIGH);
        assert_eq!({ params.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ params.hdr.cmdline_size }, "console=ttyS0".len() as u32);
        assert_eq!({ params.hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ params.hdr.ramdisk_size }, 0x12345);
    }

    #[test]
    fn zero_page_keeps_bzimage_header() {
        let mem = guest_mem(128 * MIB);
        let header = setup_header {
            setup_sects: 27,
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            cmdline_size: 2047,
            loadflags: 0x01,
            xloadflags: 0x7f,
            init_size: 0x123_4000,
            ..Default::default()
        };
        let params = boot(&mem, None, Some(header));
        assert_eq!(params.hdr.setup_sects, 27);
        assert_eq!({ params.hdr.version }, 0x020f);
        assert_eq!({ params.hdr.xloadflags }, 0x7f);
        assert_eq!({ params.hdr.init_size }, 0x123_4000);
        // The kernel's alignment wins over our default.
        assert_eq!({ params.hdr.kernel_alignment }, 0x20_0000);
        // Loader-owned fields are ours.
        assert_eq!(params.hdr.type_of_loader, 0xff);
        assert_eq!({ params.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ params.hdr.cmdline_size }, "console=ttyS0".len() as u32);
        assert_eq!({ params.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn initrd_beyond_4g_rejected() {
        let mem = guest_mem(128 * MIB);
        let initrd = InitrdInfo {
            addr: GuestAddress(HIGH_RAM_START),
            size: 0x1000,
        };
        assert!(matches!(
            build_boot_params(&mem, 0, Some(initrd), None),
            Err(ArchError::InitrdAddress { .. })
        ));
    }

    #[test]
    fn zero_page_is_one_page() {
        assert_eq!(std::mem::size_of::<boot_params>(), 4096);
    }
}
