//! The guest physical memory map of a husk microVM (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT                     0x0000_7000  zero page (boot_params)
//! 0x0000_0520  IDT                     0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4                    0x0000_a000  PDPT
//! 0x0000_b000  PD (identity map of the first 1 GiB with 2 MiB pages)
//! 0x0002_0000  kernel command line     0x0009_fc00  MP table (EBDA)
//! 0x0010_0000  kernel (HIMEM_START)    ...          initramfs at the top of low RAM
//! 0xc000_0000  MMIO gap (1 GiB): virtio-mmio devices from 0xd000_0000, 4 KiB apart
//! 0xfec0_0000  IOAPIC                  0xfee0_0000  local APIC
//! 0x1_0000_0000  RAM above 4 GiB, when the VM has more than 3 GiB
//! ```

/// GDT address.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT address.
pub const BOOT_IDT_START: u64 = 0x520;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-table pages.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Maximum command line length including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// End of the low 640 KiB: the EBDA with the MP table starts here.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the kernel is loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start and size of the MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_SIZE: u64 = 0x4000_0000;
/// First virtio-mmio device window, and the size of each.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First IRQ line for virtio-mmio devices (serial uses 4).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last usable IRQ line of the IOAPIC's 24 pins.
pub const IRQ_MAX: u32 = 23;
/// IOAPIC and local APIC.
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// First address above 4 GiB.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
