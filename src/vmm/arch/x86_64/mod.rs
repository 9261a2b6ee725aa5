//! x86_64 guest setup for the Linux 64-bit boot protocol.
//!
//! The VMM loads the kernel (an ELF `vmlinux` at [`layout::HIMEM_START`], or a
//! bzImage), then calls, in this order:
//!
//! 1. [`memory_regions`] to lay out guest RAM around the MMIO gap;
//! 2. [`initrd_load_addr`] (if there is an initrd) to place it at the top of
//!    low RAM;
//! 3. [`configure_system`] to write the command line, the MP table and the
//!    zero page (`struct boot_params`, with the e820 map) into guest memory;
//! 4. per vCPU, after creating the in-kernel irqchip and the vCPU:
//!    [`cpuid::setup_cpuid`] then `VcpuFd::set_cpuid2`, [`regs::setup_msrs`],
//!    [`regs::setup_regs`], [`regs::setup_sregs`], [`regs::setup_fpu`],
//!    [`interrupts::set_lint`].
//!
//! vCPUs then start directly in 64-bit long mode with the first 1 GiB
//! identity-mapped, `rip` at the kernel's 64-bit entry point and `rsi`
//! pointing at the zero page, as `Documentation/arch/x86/boot.rst` ("64-bit
//! Boot Protocol") describes. The guest has neither ACPI nor PCI: it finds its
//! CPUs and the IOAPIC through the MP table ([`mptable`]).

pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod regs;

pub use cpuid::setup_cpuid;
pub use interrupts::set_lint;
pub use regs::{setup_fpu, setup_msrs, setup_regs, setup_sregs};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, GuestMemoryRegion,
};

use layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_RAM_START, HIMEM_START, MMIO_GAP_START, ZERO_PAGE_START,
};

/// Size of a guest page; the initrd is page-aligned.
pub const PAGE_SIZE: u64 = 0x1000;

// Guest addresses are converted to host sizes with `as usize` below; that is
// lossless because husk only builds for 64-bit hosts.
const _: () = assert!(usize::BITS == u64::BITS);

/// Errors from x86_64 guest setup.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// Guest memory has no RAM region at guest physical address 0.
    #[error("guest memory has no RAM region starting at address 0")]
    NoLowMemory,
    /// Low RAM ends before the kernel load address.
    #[error("low RAM ends at {end:#x}, below the kernel load address {min:#x}")]
    LowMemoryTooSmall {
        /// End (exclusive) of low RAM.
        end: u64,
        /// The minimum end required.
        min: u64,
    },
    /// Writing a boot structure into guest memory failed.
    #[error("failed to write the {what} to guest memory at {addr:#x}")]
    GuestMemoryWrite {
        /// Which structure was being written.
        what: &'static str,
        /// Guest physical address of the write.
        addr: u64,
        /// The underlying guest memory error.
        #[source]
        source: GuestMemoryError,
    },
    /// The kernel command line cannot be turned into a C string.
    #[error("invalid kernel command line")]
    CmdlineInvalid(#[source] linux_loader::cmdline::Error),
    /// The kernel command line is longer than the space reserved for it, or
    /// than the kernel accepts.
    #[error("kernel command line is {len} bytes, more than the {max} allowed")]
    CmdlineTooLong {
        /// Length without the terminating NUL.
        len: usize,
        /// Maximum length without the terminating NUL.
        max: usize,
    },
    /// Writing the kernel command line into guest memory failed.
    #[error("failed to write the kernel command line at {addr:#x}")]
    CmdlineLoad {
        /// Guest physical address of the command line.
        addr: u64,
        /// The loader error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initrd does not fit into low RAM above the kernel load address.
    #[error(
        "initrd of {size} bytes does not fit in low RAM ({available} bytes available above {min:#x})"
    )]
    InitrdTooLarge {
        /// Initrd size in bytes.
        size: usize,
        /// Bytes of low RAM between `min` and the end of low RAM.
        available: u64,
        /// Lowest address the initrd may start at.
        min: u64,
    },
    /// The initrd cannot be described by the 32-bit zero page fields.
    #[error("initrd at {addr:#x} ({size} bytes) lies beyond the 32-bit boot protocol fields")]
    InitrdAddress {
        /// Guest physical address of the initrd.
        addr: u64,
        /// Initrd size in bytes.
        size: usize,
    },
    /// The number of vCPUs cannot be described (APIC ids are 8 bits; one id
    /// goes to the IOAPIC and 0xff is the broadcast id).
    #[error("{num_cpus} vCPUs requested; between 1 and {max} are supported")]
    InvalidCpuCount {
        /// The requested count.
        num_cpus: u8,
        /// The maximum supported.
        max: u8,
    },
    /// The vCPU id is not below the number of vCPUs.
    #[error("vCPU id {vcpu_id} is out of range for {num_cpus} vCPUs")]
    InvalidVcpuId {
        /// The vCPU id.
        vcpu_id: u8,
        /// The number of vCPUs.
        num_cpus: u8,
    },
    /// More e820 entries than the zero page holds.
    #[error("{count} e820 entries, the zero page holds {max}")]
    E820TooManyEntries {
        /// Entries needed.
        count: usize,
        /// Entries that fit.
        max: usize,
    },
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    GetSupportedCpuid(#[source] kvm_ioctls::Error),
    /// The CPUID table has no room for another entry.
    #[error("no room in the CPUID table for leaf {function:#x} subleaf {index}")]
    CpuidFull {
        /// CPUID leaf.
        function: u32,
        /// CPUID subleaf.
        index: u32,
    },
    /// Building the MSR list failed.
    #[error("failed to build the list of {count} MSRs")]
    MsrList {
        /// Number of MSRs.
        count: usize,
        /// The FAM wrapper error.
        #[source]
        source: vmm_sys_util::fam::Error,
    },
    /// KVM accepted only some of the MSRs.
    #[error("KVM_SET_MSRS set {set} of {requested} MSRs; MSR {first_rejected:#x} was rejected")]
    MsrsPartial {
        /// MSRs KVM set.
        set: usize,
        /// MSRs requested.
        requested: usize,
        /// Index of the first MSR KVM did not set.
        first_rejected: u32,
    },
    /// A vCPU ioctl failed.
    #[error("vCPU ioctl {op} failed")]
    Vcpu {
        /// The ioctl, e.g. `KVM_SET_SREGS`.
        op: &'static str,
        /// The errno error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Where the initrd was loaded in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdInfo {
    /// Guest physical address of its first byte.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: usize,
}

/// The guest RAM regions for `mem_size` bytes of RAM: from 0 up to the MMIO
/// gap, and the rest from [`HIGH_RAM_START`]. Empty for a size of 0.
pub fn memory_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    if mem_size == 0 {
        return Vec::new();
    }
    let low = mem_size.min(MMIO_GAP_START);
    // Lossless on 64-bit hosts, asserted above.
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if mem_size > MMIO_GAP_START {
        regions.push((
            GuestAddress(HIGH_RAM_START),
            (mem_size - MMIO_GAP_START) as usize,
        ));
    }
    regions
}

/// End (exclusive) of the RAM that starts at address 0, capped at the MMIO
/// gap: everything below it is RAM.
pub fn low_ram_end(mem: &GuestMemoryMmap) -> Result<u64, ArchError> {
    let region = mem
        .iter()
        .find(|r| r.start_addr() == GuestAddress(0))
        .ok_or(ArchError::NoLowMemory)?;
    Ok(region.len().min(MMIO_GAP_START))
}

/// A page-aligned address at the top of low RAM where `initrd_size` bytes
/// fit, no lower than [`HIMEM_START`].
///
/// The caller must still check that the result lies above the end of the
/// loaded kernel (`KernelLoaderResult::kernel_end`).
pub fn initrd_load_addr(
    mem: &GuestMemoryMmap,
    initrd_size: usize,
) -> Result<GuestAddress, ArchError> {
    let end = low_ram_end(mem)?;
    let available = end.saturating_sub(HIMEM_START);
    let too_large = || ArchError::InitrdTooLarge {
        size: initrd_size,
        available,
        min: HIMEM_START,
    };
    let size = u64::try_from(initrd_size).map_err(|_| too_large())?;
    let start = end.checked_sub(size).ok_or_else(too_large)?;
    let aligned = start & !(PAGE_SIZE - 1);
    if aligned < HIMEM_START {
        return Err(too_large());
    }
    Ok(GuestAddress(aligned))
}

/// Writes everything the kernel reads at boot into guest memory:
///
/// - the command line, NUL-terminated, at [`CMDLINE_START`] (this function
///   writes it: callers must not);
/// - the MP table for `num_cpus` vCPUs at [`layout::EBDA_START`];
/// - the zero page at [`ZERO_PAGE_START`], starting from the bzImage's
///   `setup_header` when there is one, with the e820 map and the initrd.
pub fn configure_system(
    mem: &GuestMemoryMmap,
    cmdline: &Cmdline,
    initrd: Option<InitrdInfo>,
    num_cpus: u8,
    setup_header: Option<setup_header>,
) -> Result<(), ArchError> {
    let cmdline_len = write_cmdline(mem, cmdline, setup_header.as_ref())?;
    mptable::setup_mptable(mem, num_cpus)?;
    let params = boot_params::build_boot_params(mem, cmdline_len, initrd, setup_header)?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|source| ArchError::GuestMemoryWrite {
            what: "zero page",
            addr: ZERO_PAGE_START,
            source,
        })
}

/// Writes the command line at [`CMDLINE_START`] and returns its length
/// without the NUL.
fn write_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &Cmdline,
    header: Option<&setup_header>,
) -> Result<u32, ArchError> {
    let len = cmdline
        .as_cstring()
        .map_err(ArchError::CmdlineInvalid)?
        .as_bytes()
        .len();
    // A bzImage states the longest command line it accepts (boot protocol
    // 2.06+); zero means the field is absent.
    let kernel_max = header
        .map(|h| h.cmdline_size)
        .filter(|&size| size != 0)
        .map_or(usize::MAX, |size| {
            usize::try_from(size).unwrap_or(usize::MAX)
        });
    let max = (CMDLINE_MAX_SIZE - 1).min(kernel_max);
    let len_u32 = u32::try_from(len)
        .ok()
        .filter(|_| len <= max)
        .ok_or(ArchError::CmdlineTooLong { len, max })?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(
        |source| ArchError::CmdlineLoad {
            addr: CMDLINE_START,
            source,
        },
    )?;
    Ok(len_u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use layout::EBDA_START;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn guest_mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&memory_regions(size)).unwrap()
    }

    #[test]
    fn memory_regions_small() {
        let regions = memory_regions(128 * MIB);
        assert_eq!(regions, vec![(GuestAddress(0), (128 * MIB) as usize)]);
    }

    #[test]
    fn memory_regions_exactly_gap() {
        let regions = memory_regions(MMIO_GAP_START);
        assert_eq!(regions, vec![(GuestAddress(0), MMIO_GAP_START as usize)]);
    }

    #[test]
    fn memory_regions_above_3g() {
        let regions = memory_regions(4 * GIB);
        assert_eq!(
            regions,
            vec![
                (GuestAddress(0), MMIO_GAP_START as usize),
                (GuestAddress(HIGH_RAM_START), GIB as usize),
            ]
        );
        let total: usize = regions.iter().map(|r| r.1).sum();
        assert_eq!(total as u64, 4 * GIB);
    }

    #[test]
    fn memory_regions_zero() {
        assert!(memory_regions(0).is_empty());
    }

    #[test]
    fn low_ram_end_caps_at_gap() {
        assert_eq!(low_ram_end(&guest_mem(128 * MIB)).unwrap(), 128 * MIB);
        // The high region is not mapped for real: a sparse mmap is enough.
        assert_eq!(low_ram_end(&guest_mem(4 * GIB)).unwrap(), MMIO_GAP_START);
        let no_low =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(HIGH_RAM_START), 0x1000)]).unwrap();
        assert!(matches!(low_ram_end(&no_low), Err(ArchError::NoLowMemory)));
    }

    #[test]
    fn initrd_at_top_of_low_ram() {
        let mem = guest_mem(128 * MIB);
        let addr = initrd_load_addr(&mem, 0x1234).unwrap();
        assert_eq!(addr.0 % PAGE_SIZE, 0);
        assert!(addr.0 + 0x1234 <= 128 * MIB);
        assert!(128 * MIB - addr.0 < 0x1234 + PAGE_SIZE);
        assert_eq!(addr, GuestAddress(128 * MIB - 0x2000));
    }

    #[test]
    fn initrd_below_gap_with_high_ram() {
        let mem = guest_mem(4 * GIB);
        let addr = initrd_load_addr(&mem, 16 * MIB as usize).unwrap();
        assert_eq!(addr, GuestAddress(MMIO_GAP_START - 16 * MIB));
    }

    #[test]
    fn initrd_too_large() {
        let mem = guest_mem(128 * MIB);
        let err = initrd_load_addr(&mem, (128 * MIB) as usize).unwrap_err();
        assert!(matches!(err, ArchError::InitrdTooLarge { .. }), "{err}");
        // Just fits: everything from HIMEM_START up.
        let fits = (128 * MIB - HIMEM_START) as usize;
        assert_eq!(
            initrd_load_addr(&mem, fits).unwrap(),
            GuestAddress(HIMEM_START)
        );
        assert!(initrd_load_addr(&mem, fits + 1).is_err());
        assert!(initrd_load_addr(&mem, usize::MAX).is_err());
    }

    #[test]
    fn configure_system_writes_cmdline_mptable_zero_page() {
        let mem = guest_mem(128 * MIB);
        let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).unwrap();
        cmdline
            .insert_str("console=ttyS0 reboot=k panic=1")
            .unwrap();
        configure_system(&mem, &cmdline, None, 2, None).unwrap();

        let mut buf = vec![0u8; 32];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf[..31], b"console=ttyS0 reboot=k panic=1\0");

        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");

        let params: linux_loader::loader::bootparam::boot_params =
            mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.hdr.cmdline_size }, 30);
        assert_eq!({ params.hdr.boot_flag }, 0xaa55);
    }

    #[test]
    fn configure_system_rejects_long_cmdline() {
        let mem = guest_mem(128 * MIB);
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE + 1).unwrap();
        cmdline.insert_str(&long).unwrap();
        let err = configure_system(&mem, &cmdline, None, 1, None).unwrap_err();
        assert!(
            matches!(err, ArchError::CmdlineTooLong { len, max } if len == CMDLINE_MAX_SIZE && max == CMDLINE_MAX_SIZE - 1),
            "{err}"
        );

        // A bzImage's own limit applies too.
        let header = setup_header {
            cmdline_size: 10,
            ..Default::default()
        };
        let mut short = Cmdline::new(64).unwrap();
        short.insert_str("console=ttyS0").unwrap();
        let err = configure_system(&mem, &short, None, 1, Some(header)).unwrap_err();
        assert!(
            matches!(err, ArchError::CmdlineTooLong { len: 13, max: 10 }),
            "{err}"
        );
    }

    #[test]
    fn configure_system_rejects_bad_cpu_count() {
        let mem = guest_mem(128 * MIB);
        let cmdline = Cmdline::new(16).unwrap();
        assert!(matches!(
            configure_system(&mem, &cmdline, None, 0, None),
            Err(ArchError::InvalidCpuCount { num_cpus: 0, .. })
        ));
        assert!(matches!(
            configure_system(&mem, &cmdline, None, 255, None),
            Err(ArchError::InvalidCpuCount { num_cpus: 255, .. })
        ));
    }
}
