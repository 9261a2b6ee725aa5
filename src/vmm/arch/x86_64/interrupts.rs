//! Local APIC setup: LINT0 as ExtINT (the legacy PIC's output) and LINT1 as
//! NMI, the virtual-wire configuration a BIOS leaves behind and the MP table
//! ([`super::mptable`]) describes.
//!
//! Register offsets and LVT layout: Intel SDM vol. 3A, 11.5.1 "Local Vector
//! Table".

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

use super::ArchError;

/// Offset of the LVT LINT0 register in the local APIC page.
pub const APIC_LVT0: usize = 0x350;
/// Offset of the LVT LINT1 register.
pub const APIC_LVT1: usize = 0x360;
/// LVT delivery mode field: bits 8..=10.
pub const APIC_DELIVERY_MODE_SHIFT: u32 = 8;
pub const APIC_DELIVERY_MODE_MASK: u32 = 0x7 << APIC_DELIVERY_MODE_SHIFT;
/// Delivery mode NMI.
pub const APIC_MODE_NMI: u32 = 0x4;
/// Delivery mode ExtINT.
pub const APIC_MODE_EXTINT: u32 = 0x7;

/// Reads the 32-bit little-endian register at `offset` of the APIC page.
pub fn get_klapic_reg(klapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (byte, reg) in bytes.iter_mut().zip(&klapic.regs[offset..offset + 4]) {
        // c_char is i8 or u8 depending on the target: reinterpret the bits.
        *byte = reg.to_ne_bytes()[0];
    }
    u32::from_le_bytes(bytes)
}

/// Writes the 32-bit little-endian register at `offset` of the APIC page.
pub fn set_klapic_reg(klapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (reg, byte) in klapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *reg = std::os::raw::c_char::from_ne_bytes([byte]);
    }
}

/// `reg` with its delivery mode replaced by `mode`.
pub fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !APIC_DELIVERY_MODE_MASK)
        | ((mode << APIC_DELIVERY_MODE_SHIFT) & APIC_DELIVERY_MODE_MASK)
}

/// Configures LINT0 as ExtINT and LINT1 as NMI on the vCPU's in-kernel local
/// APIC (the VM needs an in-kernel irqchip).
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), ArchError> {
    let mut klapic = vcpu.get_lapic().map_err(|source| ArchError::Vcpu {
        op: "KVM_GET_LAPIC",
        source,
    })?;
    let lvt0 = get_klapic_reg(&klapic, APIC_LVT0);
    set_klapic_reg(
        &mut klapic,
        APIC_LVT0,
        set_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = get_klapic_reg(&klapic, APIC_LVT1);
    set_klapic_reg(
        &mut klapic,
        APIC_LVT1,
        set_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&klapic).map_err(|source| ArchError::Vcpu {
        op: "KVM_SET_LAPIC",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    #[test]
    fn delivery_mode_bits() {
        // Masked (bit 16) LVT with fixed delivery: only bits 8..=10 change.
        assert_eq!(
            set_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(set_delivery_mode(0x0001_0700, APIC_MODE_NMI), 0x0001_0400);
        assert_eq!(set_delivery_mode(0xffff_ffff, 0), 0xffff_f8ff);
    }

    #[test]
    fn klapic_reg_round_trip() {
        let mut klapic = kvm_lapic_state::default();
        set_klapic_reg(&mut klapic, APIC_LVT1, 0x8001_0400);
        assert_eq!(get_klapic_reg(&klapic, APIC_LVT1), 0x8001_0400);
        assert_eq!(klapic.regs[APIC_LVT1], 0);
        assert_eq!(klapic.regs[APIC_LVT1 + 1], 0x04);
        assert_eq!(get_klapic_reg(&klapic, APIC_LVT0), 0);
    }

    /// Needs /dev/kvm.
    #[test]
    fn kvm_set_lint() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        set_lint(&vcpu).unwrap();
        let klapic = vcpu.get_lapic().unwrap();
        let lvt0 = get_klapic_reg(&klapic, APIC_LVT0);
        let lvt1 = get_klapic_reg(&klapic, APIC_LVT1);
        assert_eq!((lvt0 & APIC_DELIVERY_MODE_MASK) >> 8, APIC_MODE_EXTINT);
        assert_eq!((lvt1 & APIC_DELIVERY_MODE_MASK) >> 8, APIC_MODE_NMI);
    }
}
