//! The boot GDT and the KVM segment registers built from it.
//!
//! Descriptor format: Intel SDM vol. 3A, 3.4.5 "Segment Descriptors". A
//! descriptor is described here by a 16-bit `flags` word whose low byte is
//! the access byte (type, S, DPL, P) and whose top nibble holds AVL, L, D/B
//! and G, i.e. descriptor bits 40..=47 and 52..=55.

use kvm_bindings::kvm_segment;

/// Null descriptor.
pub const GDT_NULL: u64 = 0;
/// 64-bit code: present, DPL 0, execute/read, accessed; L=1, G=1.
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Data: present, DPL 0, read/write, accessed; D/B=1, G=1.
pub const DATA_FLAGS: u16 = 0xc093;
/// TSS: present, busy 64-bit TSS; G=1.
pub const TSS_FLAGS: u16 = 0x808b;
/// Flat segments: base 0, limit 0xfffff pages (4 GiB with G=1).
pub const FLAT_BASE: u32 = 0;
pub const FLAT_LIMIT: u32 = 0xf_ffff;

/// GDT indices of the boot segments.
pub const CODE_INDEX: u16 = 1;
pub const DATA_INDEX: u16 = 2;
pub const TSS_INDEX: u16 = 3;

/// Size of a descriptor in bytes.
pub const DESCRIPTOR_SIZE: u16 = 8;
/// Descriptors in the boot GDT.
pub const GDT_ENTRIES: u16 = 4;
/// The boot GDT's descriptors (a widening cast).
pub type Gdt = [u64; GDT_ENTRIES as usize];

const ACCESS_TYPE_MASK: u16 = 0xf;
const ACCESS_S_BIT: u16 = 1 << 4;
const ACCESS_DPL_SHIFT: u16 = 5;
const ACCESS_DPL_MASK: u16 = 0x3;
const ACCESS_P_BIT: u16 = 1 << 7;
const FLAG_AVL_BIT: u16 = 1 << 12;
const FLAG_L_BIT: u16 = 1 << 13;
const FLAG_DB_BIT: u16 = 1 << 14;
const FLAG_G_BIT: u16 = 1 << 15;
/// The bits of `flags` that go into a descriptor.
const FLAGS_MASK: u16 = 0xf0ff;
/// Bits 0..=11 of a byte-granular limit, filled in when G=1.
const PAGE_OFFSET_MASK: u32 = 0xfff;
const PAGE_SHIFT: u32 = 12;

/// The boot GDT: null, 64-bit code, data, TSS, all flat.
pub fn boot_gdt() -> Gdt {
    [
        GDT_NULL,
        gdt_entry(CODE64_FLAGS, FLAT_BASE, FLAT_LIMIT),
        gdt_entry(DATA_FLAGS, FLAT_BASE, FLAT_LIMIT),
        gdt_entry(TSS_FLAGS, FLAT_BASE, FLAT_LIMIT),
    ]
}

/// Encodes a segment descriptor.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags & FLAGS_MASK);
    (limit & 0xffff)                     // limit 15:0   -> bits 0..=15
        | ((base & 0xff_ffff) << 16)     // base 23:0    -> bits 16..=39
        | (flags << 40)                  // access byte  -> 40..=47, flags -> 52..=55
        | (((limit >> 16) & 0xf) << 48)  // limit 19:16  -> bits 48..=51
        | (((base >> 24) & 0xff) << 56) // base 31:24   -> bits 56..=63
}

fn descriptor_base(entry: u64) -> u64 {
    ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24)
}

fn descriptor_limit(entry: u64) -> u32 {
    let limit = (entry & 0xffff) | (((entry >> 48) & 0xf) << 16);
    // At most 20 bits: lossless.
    u32::try_from(limit).unwrap_or(u32::MAX)
}

fn descriptor_flags(entry: u64) -> u16 {
    let bits = (entry >> 40) & u64::from(FLAGS_MASK);
    // Masked to 16 bits: lossless.
    u16::try_from(bits).unwrap_or(0)
}

fn bit(flags: u16, mask: u16) -> u8 {
    u8::from(flags & mask != 0)
}

/// The KVM segment register for descriptor `entry` at GDT index `index`.
pub fn kvm_segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let flags = descriptor_flags(entry);
    let granular = flags & FLAG_G_BIT != 0;
    let raw_limit = descriptor_limit(entry);
    let limit = if granular {
        (raw_limit << PAGE_SHIFT) | PAGE_OFFSET_MASK
    } else {
        raw_limit
    };
    let present = bit(flags, ACCESS_P_BIT);
    kvm_segment {
        base: descriptor_base(entry),
        limit,
        selector: index * DESCRIPTOR_SIZE,
        // Both masked to at most 4 bits: lossless.
        type_: u8::try_from(flags & ACCESS_TYPE_MASK).unwrap_or(0),
        present,
        dpl: u8::try_from((flags >> ACCESS_DPL_SHIFT) & ACCESS_DPL_MASK).unwrap_or(0),
        db: bit(flags, FLAG_DB_BIT),
        s: bit(flags, ACCESS_S_BIT),
        l: bit(flags, FLAG_L_BIT),
        g: bit(flags, FLAG_G_BIT),
        avl: bit(flags, FLAG_AVL_BIT),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_descriptors() {
        // The flat descriptors every x86_64 boot GDT uses.
        assert_eq!(
            gdt_entry(CODE64_FLAGS, 0, FLAT_LIMIT),
            0x00af_9b00_0000_ffff
        );
        assert_eq!(gdt_entry(DATA_FLAGS, 0, FLAT_LIMIT), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(TSS_FLAGS, 0, FLAT_LIMIT), 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn encodes_base_and_limit() {
        let e = gdt_entry(DATA_FLAGS, 0x1234_5678, 0xa_bcde);
        assert_eq!(descriptor_base(e), 0x1234_5678);
        assert_eq!(descriptor_limit(e), 0xa_bcde);
        assert_eq!(descriptor_flags(e), DATA_FLAGS);
    }

    #[test]
    fn code_segment() {
        let seg = kvm_segment_from_gdt(boot_gdt()[1], CODE_INDEX);
        assert_eq!(seg.selector, 0x8);
        assert_eq!(seg.base, 0);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(
            (seg.present, seg.dpl, seg.s, seg.l, seg.db, seg.g),
            (1, 0, 1, 1, 0, 1)
        );
        assert_eq!(seg.unusable, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        let gdt = boot_gdt();
        let data = kvm_segment_from_gdt(gdt[2], DATA_INDEX);
        assert_eq!(data.selector, 0x10);
        assert_eq!(data.type_, 0x3);
        assert_eq!((data.s, data.l, data.db, data.g), (1, 0, 1, 1));
        let tss = kvm_segment_from_gdt(gdt[3], TSS_INDEX);
        assert_eq!(tss.selector, 0x18);
        assert_eq!(tss.type_, 0xb);
        assert_eq!((tss.s, tss.present, tss.g), (0, 1, 1));
    }

    #[test]
    fn null_segment_unusable() {
        let seg = kvm_segment_from_gdt(GDT_NULL, 0);
        assert_eq!(seg.present, 0);
        assert_eq!(seg.unusable, 1);
    }
}
