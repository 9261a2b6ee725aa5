//! Boot-time vCPU state: general registers, long mode (GDT, IDT, page tables,
//! control registers), FPU and MSRs.
//!
//! The guest-memory parts ([`write_gdt_idt`], [`write_page_tables`]) and the
//! register computations ([`boot_regs`], [`configure_sregs`],
//! [`boot_msr_entries`]) are separate from the ioctls so they can be tested
//! without KVM.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{
    boot_gdt, kvm_segment_from_gdt, Gdt, CODE_INDEX, DATA_INDEX, DESCRIPTOR_SIZE, GDT_ENTRIES,
    TSS_INDEX,
};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    ZERO_PAGE_START,
};
use super::ArchError;

/// RFLAGS bit 1 is reserved and always set.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// CR0: protection enable.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0: extension type (always 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0: not write-through.
pub const X86_CR0_NW: u64 = 1 << 29;
/// CR0: cache disable.
pub const X86_CR0_CD: u64 = 1 << 30;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// Page-table entry bits.
pub const PTE_PRESENT: u64 = 1 << 0;
pub const PTE_WRITABLE: u64 = 1 << 1;
/// In a page-directory entry: maps a 2 MiB page.
pub const PDE_PAGE_SIZE: u64 = 1 << 7;
/// Entries in one page-table page.
pub const PAGE_TABLE_ENTRIES: u64 = 512;
/// Size of a page mapped by a page-directory entry.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;

/// x87 control word after FNINIT: all exceptions masked, 64-bit precision.
pub const FPU_CONTROL_WORD: u16 = 0x37f;
/// MXCSR at reset: all SSE exceptions masked.
pub const MXCSR_DEFAULT: u32 = 0x1f80;

/// MSR indices (Intel SDM vol. 4; the SYSCALL ones are AMD's and Intel's).
pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_MISC_ENABLE bit 0: fast-string operations (`rep movs/stos`) enabled.
pub const MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
/// IA32_MTRR_DEF_TYPE bit 11: MTRRs enabled.
pub const MTRR_ENABLE: u64 = 1 << 11;
/// Memory type write-back, for the MTRR default type (bits 0..=7).
pub const MTRR_MEM_TYPE_WB: u64 = 0x6;

/// The general registers at the 64-bit entry point: `rip` at `entry`, the
/// boot stack, `rsi` pointing at the zero page, everything else zero.
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// Sets the general registers for the 64-bit boot protocol entry.
pub fn setup_regs(vcpu: &VcpuFd, entry: GuestAddress) -> Result<(), ArchError> {
    vcpu.set_regs(&boot_regs(entry))
        .map_err(|source| ArchError::Vcpu {
            op: "KVM_SET_REGS",
            source,
        })
}

/// Writes the boot GDT at [`BOOT_GDT_START`] and an empty IDT (one null
/// gate) at [`BOOT_IDT_START`]; returns the GDT.
pub fn write_gdt_idt(mem: &GuestMemoryMmap) -> Result<Gdt, ArchError> {
    let gdt = boot_gdt();
    for (index, entry) in (0u64..).zip(gdt) {
        let addr = BOOT_GDT_START + index * DESCRIPTOR_BYTES;
        mem.write_obj(entry, GuestAddress(addr))
            .map_err(|source| ArchError::GuestMemoryWrite {
                what: "GDT",
                addr,
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|source| ArchError::GuestMemoryWrite {
            what: "IDT",
            addr: BOOT_IDT_START,
            source,
        })?;
    Ok(gdt)
}

/// Descriptor size as a guest address offset (a widening cast).
const DESCRIPTOR_BYTES: u64 = DESCRIPTOR_SIZE as u64;
/// Table limits are the size in bytes minus one; the IDT holds one gate.
const GDT_LIMIT: u16 = GDT_ENTRIES * DESCRIPTOR_SIZE - 1;
const IDT_LIMIT: u16 = DESCRIPTOR_SIZE - 1;
// The GDT must end where the IDT begins, not overlap it.
const _: () = assert!(BOOT_GDT_START + (GDT_LIMIT as u64) < BOOT_IDT_START);

/// Writes page tables identity-mapping the first 1 GiB with 2 MiB pages:
/// PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] -> i * 2 MiB.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), ArchError> {
    let write = |what: &'static str, addr: u64, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| ArchError::GuestMemoryWrite { what, addr, source })
    };
    write(
        "PML4",
        PML4_START,
        &(PDPTE_START | PTE_PRESENT | PTE_WRITABLE).to_le_bytes(),
    )?;
    write(
        "PDPT",
        PDPTE_START,
        &(PDE_START | PTE_PRESENT | PTE_WRITABLE).to_le_bytes(),
    )?;
    let pd: Vec<u8> = (0..PAGE_TABLE_ENTRIES)
        .flat_map(|i| {
            ((i * LARGE_PAGE_SIZE) | PTE_PRESENT | PTE_WRITABLE | PDE_PAGE_SIZE).to_le_bytes()
        })
        .collect();
    write("page directory", PDE_START, &pd)
}

/// Puts `sregs` in 64-bit long mode on the boot GDT, IDT and page tables.
pub fn configure_sregs(sregs: &mut kvm_sregs, gdt: &Gdt) {
    let code = kvm_segment_from_gdt(gdt[usize::from(CODE_INDEX)], CODE_INDEX);
    let data = kvm_segment_from_gdt(gdt[usize::from(DATA_INDEX)], DATA_INDEX);
    let tss = kvm_segment_from_gdt(gdt[usize::from(TSS_INDEX)], TSS_INDEX);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = IDT_LIMIT;

    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    // KVM's reset CR0 has caching disabled (CD|NW); the kernel rewrites CR0
    // early, but there is no reason to run its first instructions uncached.
    sregs.cr0 = (sregs.cr0 & !(X86_CR0_CD | X86_CR0_NW)) | X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// Writes the GDT, IDT and page tables into guest memory and puts the vCPU
/// in 64-bit long mode on them.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd) -> Result<(), ArchError> {
    let gdt = write_gdt_idt(mem)?;
    write_page_tables(mem)?;
    let mut sregs = vcpu.get_sregs().map_err(|source| ArchError::Vcpu {
        op: "KVM_GET_SREGS",
        source,
    })?;
    configure_sregs(&mut sregs, &gdt);
    vcpu.set_sregs(&sregs).map_err(|source| ArchError::Vcpu {
        op: "KVM_SET_SREGS",
        source,
    })
}

/// The FPU state at boot.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

/// Sets the FPU control word and MXCSR to their reset values.
///
/// KVM_SET_FPU ignores `mxcsr` (KVM only moves the x87 and XMM registers
/// through `kvm_fpu`); KVM's reset MXCSR is already [`MXCSR_DEFAULT`], so it
/// is passed for completeness only.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), ArchError> {
    vcpu.set_fpu(&boot_fpu()).map_err(|source| ArchError::Vcpu {
        op: "KVM_SET_FPU",
        source,
    })
}

/// The MSRs set at boot: SYSENTER and SYSCALL state cleared (the kernel sets
/// its own), TSC at 0, fast strings on, MTRRs on with write-back default.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let msr = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

/// Sets the boot MSRs; an error unless KVM sets every one of them.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), ArchError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|source| ArchError::MsrList {
        count: entries.len(),
        source,
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(|source| ArchError::Vcpu {
        op: "KVM_SET_MSRS",
        source,
    })?;
    // KVM stops at the first MSR it rejects and returns how many it set.
    match entries.get(set) {
        None => Ok(()),
        Some(rejected) => Err(ArchError::MsrsPartial {
            set,
            requested: entries.len(),
            first_rejected: rejected.index,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::arch::x86_64::memory_regions;
    use crate::vmm::arch::x86_64::setup_cpuid;
    use kvm_ioctls::Kvm;

    fn guest_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&memory_regions(64 << 20)).unwrap()
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let mem = guest_mem();
        write_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, 0xa003);
        let pdpt: u64 = mem.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpt, 0xb003);
        for i in 0..PAGE_TABLE_ENTRIES {
            let pde: u64 = mem.read_obj(GuestAddress(PDE_START + i * 8)).unwrap();
            assert_eq!(pde, (i << 21) | 0x83, "PD entry {i}");
        }
        // Only entry 0 of the upper levels is present.
        let pml4_1: u64 = mem.read_obj(GuestAddress(PML4_START + 8)).unwrap();
        let pdpt_1: u64 = mem.read_obj(GuestAddress(PDPTE_START + 8)).unwrap();
        assert_eq!((pml4_1, pdpt_1), (0, 0));
    }

    #[test]
    fn gdt_and_idt_in_memory() {
        let mem = guest_mem();
        // Dirty the IDT first: it must come back zeroed.
        mem.write_obj(u64::MAX, GuestAddress(BOOT_IDT_START))
            .unwrap();
        write_gdt_idt(&mem).unwrap();
        let read = |i: u64| -> u64 { mem.read_obj(GuestAddress(BOOT_GDT_START + i * 8)).unwrap() };
        assert_eq!(read(0), 0);
        assert_eq!(read(1), 0x00af_9b00_0000_ffff);
        assert_eq!(read(2), 0x00cf_9300_0000_ffff);
        assert_eq!(read(3), 0x008f_8b00_0000_ffff);
        let idt: u64 = mem.read_obj(GuestAddress(BOOT_IDT_START)).unwrap();
        assert_eq!(idt, 0);
    }

    #[test]
    fn sregs_long_mode() {
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        configure_sregs(&mut sregs, &boot_gdt());
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET | X86_CR0_PG);
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!(sregs.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (BOOT_GDT_START, 31));
        assert_eq!((sregs.idt.base, sregs.idt.limit), (BOOT_IDT_START, 7));
        assert_eq!((sregs.cs.selector, sregs.cs.l), (0x8, 1));
        for seg in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!(seg.selector, 0x10);
        }
        assert_eq!(sregs.tr.selector, 0x18);
    }

    #[test]
    fn regs_at_entry() {
        let regs = boot_regs(GuestAddress(0x100_0000));
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rflags, 0x2);
        assert_eq!(
            (regs.rsp, regs.rbp),
            (BOOT_STACK_POINTER, BOOT_STACK_POINTER)
        );
        assert_eq!(regs.rsi, ZERO_PAGE_START);
        assert_eq!(regs.rax, 0);
    }

    #[test]
    fn msr_list() {
        let entries = boot_msr_entries();
        let find = |index| entries.iter().find(|e| e.index == index).unwrap().data;
        assert_eq!(find(MSR_IA32_MISC_ENABLE), 1);
        assert_eq!(find(MSR_MTRR_DEF_TYPE), 0x806);
        assert_eq!(find(MSR_LSTAR), 0);
        assert_eq!(entries.len(), 11);
    }

    /// MXCSR's index in the XSAVE area, in 32-bit words.
    const XSAVE_MXCSR_WORD: usize = 6;

    /// A VM with an in-kernel irqchip and one vCPU with KVM's CPUID, as the
    /// VMM builds it. Needs /dev/kvm.
    fn kvm_vcpu() -> (Kvm, kvm_ioctls::VmFd, VcpuFd) {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let cpuid = setup_cpuid(&kvm, 0, 1).unwrap();
        vcpu.set_cpuid2(&cpuid).unwrap();
        (kvm, vm, vcpu)
    }

    #[test]
    fn kvm_setup_regs() {
        let (_kvm, _vm, vcpu) = kvm_vcpu();
        setup_regs(&vcpu, GuestAddress(0x100_0000)).unwrap();
        let regs = vcpu.get_regs().unwrap();
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rsp, BOOT_STACK_POINTER);
        assert_eq!(regs.rbp, BOOT_STACK_POINTER);
        assert_eq!(regs.rsi, ZERO_PAGE_START);
        assert_eq!(regs.rflags, 0x2);
    }

    #[test]
    fn kvm_setup_sregs() {
        let (_kvm, _vm, vcpu) = kvm_vcpu();
        let mem = guest_mem();
        setup_sregs(&mem, &vcpu).unwrap();
        let sregs = vcpu.get_sregs().unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr0 & X86_CR0_PE, 0);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.selector, sregs.cs.l), (0x8, 1));
        assert_eq!(sregs.gdt.base, BOOT_GDT_START);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 0x3);
    }

    #[test]
    fn kvm_setup_fpu() {
        let (_kvm, _vm, vcpu) = kvm_vcpu();
        setup_fpu(&vcpu).unwrap();
        let fpu = vcpu.get_fpu().unwrap();
        assert_eq!(fpu.fcw, FPU_CONTROL_WORD);
        // KVM_GET_FPU does not report MXCSR; the XSAVE legacy area does, at
        // byte offset 24.
        let xsave = vcpu.get_xsave().unwrap();
        assert_eq!(xsave.region[XSAVE_MXCSR_WORD], MXCSR_DEFAULT);
    }

    #[test]
    fn kvm_setup_msrs() {
        let (_kvm, _vm, vcpu) = kvm_vcpu();
        setup_msrs(&vcpu).unwrap();
        let mut msrs = Msrs::from_entries(&[
            kvm_msr_entry {
                index: MSR_IA32_MISC_ENABLE,
                ..Default::default()
            },
            kvm_msr_entry {
                index: MSR_MTRR_DEF_TYPE,
                ..Default::default()
            },
            kvm_msr_entry {
                index: MSR_LSTAR,
                data: 0xdead,
                ..Default::default()
            },
        ])
        .unwrap();
        assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 3);
        let got = msrs.as_slice();
        assert_ne!(got[0].data & MISC_ENABLE_FAST_STRING, 0);
        assert_eq!(got[1].data, MTRR_ENABLE | MTRR_MEM_TYPE_WB);
        assert_eq!(got[2].data, 0);
    }
}
