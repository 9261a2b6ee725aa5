//! The Intel MultiProcessor Specification (version 1.4) table.
//!
//! The guest kernel has no ACPI, so it learns its CPUs, its IOAPIC and how
//! ISA IRQs reach the IOAPIC from this table (`CONFIG_X86_MPPARSE`). The MP
//! floating pointer structure sits at [`EBDA_START`], the first KiB of the
//! EBDA, which Linux scans (`smp_scan_config`); the configuration table
//! follows it directly. Structures and field meanings: MP spec 1.4, chapter 4
//! ("MP Configuration Table").
//!
//! Interrupt routing matches KVM's default in-kernel irqchip routing: ISA IRQ
//! `n` is IOAPIC pin `n` for all 24 pins; LINT0 of every local APIC is ExtINT
//! (the legacy PIC) and LINT1 is NMI.

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_START, HIMEM_START, IOAPIC_START, IRQ_MAX};
use super::ArchError;

/// Most vCPUs the table describes: APIC ids are 8 bits, the IOAPIC takes the
/// id after the last CPU and 0xff is the broadcast id.
pub const MAX_CPUS: u8 = 254;

/// Signature of the floating pointer structure.
pub const MPF_SIGNATURE: [u8; 4] = *b"_MP_";
/// Signature of the configuration table header.
pub const MPC_SIGNATURE: [u8; 4] = *b"PCMP";
/// MP spec revision 1.4.
const MP_SPEC_REVISION: u8 = 4;
/// Length of the floating pointer structure in 16-byte paragraphs.
const MPF_LENGTH_PARAGRAPHS: u8 = 1;
const MPC_OEM_ID: [u8; 8] = *b"HUSK    ";
const MPC_PRODUCT_ID: [u8; 12] = *b"MICROVM     ";

/// Entry types (MP spec table 4-3).
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;

/// Processor entry flags (MP spec 4.3.1).
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOT_PROCESSOR: u8 = 1 << 1;
/// Processor signature: family 6, model 0, stepping 0 (informational only).
const CPU_SIGNATURE: u32 = 6 << 8;
/// Processor feature flags (CPUID.1:EDX): FPU and on-chip APIC.
const CPU_FEATURE_FPU: u32 = 1 << 0;
const CPU_FEATURE_APIC: u32 = 1 << 9;
/// Local APIC version KVM's in-kernel APIC reports.
const LAPIC_VERSION: u8 = 0x14;
/// IOAPIC version KVM's in-kernel IOAPIC reports.
const IOAPIC_VERSION: u8 = 0x11;
/// IOAPIC entry flag: usable.
const IOAPIC_USABLE: u8 = 1 << 0;

/// The single bus: ISA, id 0 (there is no PCI).
const ISA_BUS_ID: u8 = 0;
const BUS_TYPE_ISA: [u8; 6] = *b"ISA   ";

/// Interrupt types (MP spec table 4-9).
const IRQ_TYPE_INT: u8 = 0;
const IRQ_TYPE_NMI: u8 = 1;
const IRQ_TYPE_EXTINT: u8 = 3;
/// Interrupt flags: polarity and trigger mode conform to the bus.
const IRQ_FLAGS_CONFORMING: u16 = 0;
/// Destination local APIC id meaning "all local APICs".
const ALL_LOCAL_APICS: u8 = 0xff;

/// MP floating pointer structure (MP spec 4.1).
#[repr(C, packed)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MpFloatingPointer {
    pub signature: [u8; 4],
    pub config_table_addr: u32,
    pub length: u8,
    pub spec_revision: u8,
    pub checksum: u8,
    pub features: [u8; 5],
}

/// MP configuration table header (MP spec 4.2).
#[repr(C, packed)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MpConfigHeader {
    pub signature: [u8; 4],
    /// Length of the base table, header included.
    pub length: u16,
    pub spec_revision: u8,
    /// Makes the base table sum to zero.
    pub checksum: u8,
    pub oem_id: [u8; 8],
    pub product_id: [u8; 12],
    pub oem_table_addr: u32,
    pub oem_table_size: u16,
    pub entry_count: u16,
    pub lapic_addr: u32,
    pub ext_table_length: u16,
    pub ext_table_checksum: u8,
    pub reserved: u8,
}

/// Processor entry (MP spec 4.3.1).
#[repr(C, packed)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MpProcessor {
    pub entry_type: u8,
    pub apic_id: u8,
    pub apic_version: u8,
    pub cpu_flags: u8,
    pub cpu_signature: u32,
    pub feature_flags: u32,
    pub reserved: [u32; 2],
}

/// Bus entry (MP spec 4.3.2).
#[repr(C, packed)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MpBus {
    pub entry_type: u8,
    pub bus_id: u8,
    pub bus_type: [u8; 6],
}

/// I/O APIC entry (MP spec 4.3.3).
#[repr(C, packed)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MpIoApic {
    pub entry_type: u8,
    pub apic_id: u8,
    pub apic_version: u8,
    pub flags: u8,
    pub apic_addr: u32,
}

/// I/O interrupt assignment (MP spec 4.3.4) and local interrupt assignment
/// (4.3.5) entries share this layout; for the latter `dst_pin` is the LINT
/// number.
#[repr(C, packed)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MpInterrupt {
    pub entry_type: u8,
    pub irq_type: u8,
    pub flags: u16,
    pub src_bus_id: u8,
    pub src_bus_irq: u8,
    pub dst_apic_id: u8,
    pub dst_pin: u8,
}

// SAFETY: repr(C, packed) structs of integers and byte arrays only: no
// padding, no pointers, and every bit pattern is a valid value.
unsafe impl ByteValued for MpFloatingPointer {}
// SAFETY: as above.
unsafe impl ByteValued for MpConfigHeader {}
// SAFETY: as above.
unsafe impl ByteValued for MpProcessor {}
// SAFETY: as above.
unsafe impl ByteValued for MpBus {}
// SAFETY: as above.
unsafe impl ByteValued for MpIoApic {}
// SAFETY: as above.
unsafe impl ByteValued for MpInterrupt {}

const _: () = {
    assert!(std::mem::size_of::<MpFloatingPointer>() == 16);
    assert!(std::mem::size_of::<MpConfigHeader>() == 44);
    assert!(std::mem::size_of::<MpProcessor>() == 20);
    assert!(std::mem::size_of::<MpBus>() == 8);
    assert!(std::mem::size_of::<MpIoApic>() == 8);
    assert!(std::mem::size_of::<MpInterrupt>() == 8);
};

/// Number of IOAPIC pins, each wired to the ISA IRQ of the same number.
const IOAPIC_PINS: u8 = {
    assert!(IRQ_MAX < 0xff);
    // Lossless: checked just above.
    IRQ_MAX as u8 + 1
};

/// Where the configuration table starts: right after the floating pointer.
pub const MPC_START: u64 = EBDA_START + std::mem::size_of::<MpFloatingPointer>() as u64;

/// Size in bytes of the whole MP table (floating pointer included) for
/// `num_cpus` vCPUs.
pub const fn mptable_size(num_cpus: u8) -> usize {
    std::mem::size_of::<MpFloatingPointer>()
        + std::mem::size_of::<MpConfigHeader>()
        + num_cpus as usize * std::mem::size_of::<MpProcessor>()
        + std::mem::size_of::<MpBus>()
        + std::mem::size_of::<MpIoApic>()
        + (IOAPIC_PINS as usize + 2) * std::mem::size_of::<MpInterrupt>()
}

// The largest table stays inside the reserved range below the kernel.
const _: () = assert!(EBDA_START + mptable_size(MAX_CPUS) as u64 <= HIMEM_START);

/// The byte that makes `bytes` sum to zero (mod 256).
pub fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// Writes the MP table for `num_cpus` vCPUs (APIC ids `0..num_cpus`, vCPU 0
/// the boot processor; the IOAPIC gets id `num_cpus`) at [`EBDA_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), ArchError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(ArchError::InvalidCpuCount {
            num_cpus,
            max: MAX_CPUS,
        });
    }
    let ioapic_id = num_cpus;

    let mut entries: Vec<u8> = Vec::with_capacity(mptable_size(num_cpus));
    let mut entry_count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        entry_count += 1;
    };

    for apic_id in 0..num_cpus {
        let boot = if apic_id == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        push(
            MpProcessor {
                entry_type: MP_PROCESSOR,
                apic_id,
                apic_version: LAPIC_VERSION,
                cpu_flags: CPU_ENABLED | boot,
                cpu_signature: CPU_SIGNATURE,
                feature_flags: CPU_FEATURE_FPU | CPU_FEATURE_APIC,
                reserved: [0; 2],
            }
            .as_slice(),
        );
    }
    push(
        MpBus {
            entry_type: MP_BUS,
            bus_id: ISA_BUS_ID,
            bus_type: BUS_TYPE_ISA,
        }
        .as_slice(),
    );
    push(
        MpIoApic {
            entry_type: MP_IOAPIC,
            apic_id: ioapic_id,
            apic_version: IOAPIC_VERSION,
            flags: IOAPIC_USABLE,
            apic_addr: IOAPIC_ADDR,
        }
        .as_slice(),
    );
    for irq in 0..IOAPIC_PINS {
        push(
            MpInterrupt {
                entry_type: MP_INTSRC,
                irq_type: IRQ_TYPE_INT,
                flags: IRQ_FLAGS_CONFORMING,
                src_bus_id: ISA_BUS_ID,
                src_bus_irq: irq,
                dst_apic_id: ioapic_id,
                dst_pin: irq,
            }
            .as_slice(),
        );
    }
    for (irq_type, lint) in [(IRQ_TYPE_EXTINT, 0), (IRQ_TYPE_NMI, 1)] {
        push(
            MpInterrupt {
                entry_type: MP_LINTSRC,
                irq_type,
                flags: IRQ_FLAGS_CONFORMING,
                src_bus_id: ISA_BUS_ID,
                src_bus_irq: 0,
                dst_apic_id: ALL_LOCAL_APICS,
                dst_pin: lint,
            }
            .as_slice(),
        );
    }

    let length = std::mem::size_of::<MpConfigHeader>() + entries.len();
    let mut header = MpConfigHeader {
        signature: MPC_SIGNATURE,
        // At most mptable_size(MAX_CPUS), asserted above to fit below 1 MiB.
        length: u16::try_from(length).map_err(|_| ArchError::InvalidCpuCount {
            num_cpus,
            max: MAX_CPUS,
        })?,
        spec_revision: MP_SPEC_REVISION,
        checksum: 0,
        oem_id: MPC_OEM_ID,
        product_id: MPC_PRODUCT_ID,
        oem_table_addr: 0,
        oem_table_size: 0,
        entry_count,
        lapic_addr: APIC_ADDR,
        ext_table_length: 0,
        ext_table_checksum: 0,
        reserved: 0,
    };
    let mut table = Vec::with_capacity(length);
    table.extend_from_slice(header.as_slice());
    table.extend_from_slice(&entries);
    header.checksum = checksum(&table);
    table[..std::mem::size_of::<MpConfigHeader>()].copy_from_slice(header.as_slice());

    let mut mpf = MpFloatingPointer {
        signature: MPF_SIGNATURE,
        config_table_addr: MPC_ADDR,
        length: MPF_LENGTH_PARAGRAPHS,
        spec_revision: MP_SPEC_REVISION,
        checksum: 0,
        // Feature byte 1 = 0: a configuration table is present (no default
        // configuration); byte 2 bit 7 = 0: no IMCR, virtual wire mode.
        features: [0; 5],
    };
    mpf.checksum = checksum(mpf.as_slice());

    mem.write_obj(mpf, GuestAddress(EBDA_START))
        .map_err(|source| ArchError::GuestMemoryWrite {
            what: "MP floating pointer",
            addr: EBDA_START,
            source,
        })?;
    mem.write_slice(&table, GuestAddress(MPC_START))
        .map_err(|source| ArchError::GuestMemoryWrite {
            what: "MP configuration table",
            addr: MPC_START,
            source,
        })
}

/// Addresses as the table's 32-bit fields, checked at compile time.
const MPC_ADDR: u32 = {
    assert!(MPC_START <= u32::MAX as u64);
    // Lossless: checked just above.
    MPC_START as u32
};
const APIC_ADDR: u32 = {
    assert!(APIC_START <= u32::MAX as u64);
    // Lossless: checked just above.
    APIC_START as u32
};
const IOAPIC_ADDR: u32 = {
    assert!(IOAPIC_START <= u32::MAX as u64);
    // Lossless: checked just above.
    IOAPIC_START as u32
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::arch::x86_64::memory_regions;

    const MEM_SIZE: u64 = 64 << 20;

    fn guest_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&memory_regions(MEM_SIZE)).unwrap()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    /// Reads the table back and returns (floating pointer, header, entries).
    fn read_back(mem: &GuestMemoryMmap) -> (MpFloatingPointer, MpConfigHeader, Vec<u8>) {
        let mpf: MpFloatingPointer = mem.read_obj(GuestAddress(EBDA_START)).unwrap();
        let addr = GuestAddress(u64::from(mpf.config_table_addr));
        let header: MpConfigHeader = mem.read_obj(addr).unwrap();
        let mut table = vec![0u8; usize::from(header.length)];
        mem.read_slice(&mut table, addr).unwrap();
        (mpf, header, table)
    }

    /// Entries of the table as (type, bytes).
    fn entries(table: &[u8]) -> Vec<(u8, &[u8])> {
        let mut rest = &table[std::mem::size_of::<MpConfigHeader>()..];
        let mut out = Vec::new();
        while let Some(&kind) = rest.first() {
            let len = if kind == MP_PROCESSOR { 20 } else { 8 };
            out.push((kind, &rest[..len]));
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn signatures_and_checksums() {
        let mem = guest_mem();
        setup_mptable(&mem, 4).unwrap();
        let (mpf, header, table) = read_back(&mem);
        assert_eq!(mpf.signature, *b"_MP_");
        assert_eq!(header.signature, *b"PCMP");
        assert_eq!({ mpf.config_table_addr }, 0x9fc10);
        assert_eq!(mpf.length, 1);
        assert_eq!(mpf.spec_revision, 4);
        assert_eq!(sum(mpf.as_slice()), 0);
        assert_eq!(sum(&table), 0);
        assert_eq!({ header.lapic_addr }, 0xfee0_0000);
        assert_eq!(usize::from(header.length), mptable_size(4) - 16);
    }

    #[test]
    fn cpu_entries_match_num_cpus() {
        for num_cpus in [1u8, 2, 7, MAX_CPUS] {
            let mem = guest_mem();
            setup_mptable(&mem, num_cpus).unwrap();
            let (_, header, table) = read_back(&mem);
            assert_eq!(sum(&table), 0, "{num_cpus} cpus");
            let all = entries(&table);
            assert_eq!(usize::from(header.entry_count), all.len());
            let cpus: Vec<MpProcessor> = all
                .iter()
                .filter(|(kind, _)| *kind == MP_PROCESSOR)
                .map(|(_, bytes)| *MpProcessor::from_slice(bytes).unwrap())
                .collect();
            assert_eq!(cpus.len(), usize::from(num_cpus));
            for (id, cpu) in cpus.iter().enumerate() {
                assert_eq!(usize::from(cpu.apic_id), id);
                assert_ne!(cpu.cpu_flags & CPU_ENABLED, 0);
                assert_eq!(cpu.cpu_flags & CPU_BOOT_PROCESSOR != 0, id == 0);
            }
        }
    }

    #[test]
    fn ioapic_bus_and_interrupt_entries() {
        let mem = guest_mem();
        setup_mptable(&mem, 2).unwrap();
        let (_, _, table) = read_back(&mem);
        let all = entries(&table);

        let buses: Vec<_> = all.iter().filter(|(k, _)| *k == MP_BUS).collect();
        assert_eq!(buses.len(), 1);
        let bus = MpBus::from_slice(buses[0].1).unwrap();
        assert_eq!(bus.bus_type, *b"ISA   ");

        let ioapics: Vec<_> = all.iter().filter(|(k, _)| *k == MP_IOAPIC).collect();
        assert_eq!(ioapics.len(), 1);
        let ioapic = MpIoApic::from_slice(ioapics[0].1).unwrap();
        assert_eq!({ ioapic.apic_addr }, 0xfec0_0000);
        assert_eq!(ioapic.apic_id, 2);
        assert_eq!(ioapic.flags, IOAPIC_USABLE);

        let intsrc: Vec<MpInterrupt> = all
            .iter()
            .filter(|(k, _)| *k == MP_INTSRC)
            .map(|(_, b)| *MpInterrupt::from_slice(b).unwrap())
            .collect();
        assert_eq!(intsrc.len(), 24);
        for (pin, entry) in intsrc.iter().enumerate() {
            assert_eq!(entry.irq_type, IRQ_TYPE_INT);
            assert_eq!(usize::from(entry.src_bus_irq), pin);
            assert_eq!(usize::from(entry.dst_pin), pin);
            assert_eq!(entry.dst_apic_id, 2);
        }

        let lint: Vec<MpInterrupt> = all
            .iter()
            .filter(|(k, _)| *k == MP_LINTSRC)
            .map(|(_, b)| *MpInterrupt::from_slice(b).unwrap())
            .collect();
        assert_eq!(lint.len(), 2);
        assert_eq!((lint[0].irq_type, lint[0].dst_pin), (IRQ_TYPE_EXTINT, 0));
        assert_eq!((lint[1].irq_type, lint[1].dst_pin), (IRQ_TYPE_NMI, 1));
    }

    #[test]
    fn invalid_cpu_counts() {
        let mem = guest_mem();
        for n in [0u8, 255] {
            assert!(matches!(
                setup_mptable(&mem, n),
                Err(ArchError::InvalidCpuCount { num_cpus, .. }) if num_cpus == n
            ));
        }
    }

    #[test]
    fn too_small_memory_errors() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            setup_mptable(&mem, 1),
            Err(ArchError::GuestMemoryWrite { .. })
        ));
    }

    #[test]
    fn checksum_makes_sum_zero() {
        let data = [1u8, 2, 250, 77];
        let c = checksum(&data);
        assert_eq!(sum(&data).wrapping_add(c), 0);
    }
}
