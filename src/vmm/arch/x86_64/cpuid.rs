//! Per-vCPU CPUID, derived from `KVM_GET_SUPPORTED_CPUID`.
//!
//! KVM reports what it can virtualize, mostly copied from the host; what it
//! cannot know is the guest's topology. The VM is presented as one socket of
//! `num_cpus` single-threaded cores: vCPU `n` has (x2)APIC id `n`. The topology
//! fields below are made consistent with that and with the MP table
//! ([`super::mptable`]), since Linux builds its CPU topology from them. Field
//! layouts: Intel SDM vol. 2A "CPUID", AMD APM vol. 3 appendix E.

use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm};

use super::mptable::MAX_CPUS;
use super::ArchError;

/// Leaf 0: vendor id and highest basic leaf.
pub const LEAF_VENDOR: u32 = 0x0;
/// Leaf 1: version and feature information.
pub const LEAF_FEATURES: u32 = 0x1;
/// Leaf 4: deterministic cache parameters (Intel).
pub const LEAF_CACHE_PARAMS: u32 = 0x4;
/// Leaf 6: thermal and power management.
pub const LEAF_THERMAL_POWER: u32 = 0x6;
/// Leaf 0xa: architectural performance monitoring (Intel).
pub const LEAF_PERFMON: u32 = 0xa;
/// Leaf 0xb: extended topology enumeration.
pub const LEAF_EXT_TOPOLOGY: u32 = 0xb;
/// Leaf 0x1f: V2 extended topology enumeration.
pub const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
/// Leaf 0x8000_0008 (AMD): address sizes and core count.
pub const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
/// Leaf 0x8000_001d (AMD): cache topology.
pub const LEAF_AMD_CACHE_TOPOLOGY: u32 = 0x8000_001d;
/// Leaf 0x8000_001e (AMD): extended APIC id, core and node ids.
pub const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

/// Leaf 1 EBX: CLFLUSH line size (in 8-byte units), bits 15..=8.
const LEAF1_EBX_CLFLUSH_SHIFT: u32 = 8;
/// 64-byte cache lines, in 8-byte units.
const CLFLUSH_LINE_SIZE_QWORDS: u32 = 8;
/// Leaf 1 EBX: logical processor count, bits 23..=16.
const LEAF1_EBX_CPU_COUNT_SHIFT: u32 = 16;
/// Leaf 1 EBX: initial APIC id, bits 31..=24.
const LEAF1_EBX_APIC_ID_SHIFT: u32 = 24;
/// Leaf 1 EBX: brand index, bits 7..=0, kept from KVM.
const LEAF1_EBX_BRAND_INDEX_MASK: u32 = 0xff;
/// Leaf 1 ECX bit 24: TSC-deadline timer mode of the local APIC.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: the logical processor count field is valid.
const LEAF1_EDX_HTT: u32 = 1 << 28;

/// Leaves 4 and 0x8000_001d EAX: cache type (0 = no more caches), bits 4..=0.
const CACHE_TYPE_MASK: u32 = 0x1f;
/// Leaves 4 and 0x8000_001d EAX: cache level, bits 7..=5.
const CACHE_LEVEL_SHIFT: u32 = 5;
const CACHE_LEVEL_MASK: u32 = 0x7;
/// Caches at this level and above are shared by the whole package.
const SHARED_CACHE_LEVEL: u32 = 3;
/// Leaves 4 and 0x8000_001d EAX: logical processors sharing the cache minus
/// one, bits 25..=14.
const CACHE_SHARING_SHIFT: u32 = 14;
const CACHE_SHARING_MASK: u32 = 0xfff;
/// Leaf 4 EAX: cores in the package minus one, bits 31..=26.
const LEAF4_CORES_SHIFT: u32 = 26;
const LEAF4_CORES_MASK: u32 = 0x3f;

/// Leaf 6 EAX bit 2: the APIC timer runs at a constant rate in all C-states
/// (true of KVM's emulated APIC timer).
const LEAF6_EAX_ARAT: u32 = 1 << 2;

/// Leaves 0xb/0x1f: level types in ECX bits 15..=8.
const TOPOLOGY_LEVEL_SHIFT: u32 = 8;
const TOPOLOGY_LEVEL_INVALID: u32 = 0;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Leaf 0x8000_0008 ECX: cores minus one, bits 7..=0, and the number of APIC
/// id bits that identify the core, bits 15..=12.
const AMD_NC_MASK: u32 = 0xff;
const AMD_APIC_ID_SIZE_SHIFT: u32 = 12;
const AMD_APIC_ID_SIZE_MASK: u32 = 0xf;

/// CPU vendors whose topology leaves differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    /// AMD and Hygon.
    Amd,
    Other,
}

/// The vendor named by leaf 0 (EBX, EDX, ECX spell it out).
pub fn vendor(cpuid: &CpuId) -> Vendor {
    let Some(leaf0) = cpuid.as_slice().iter().find(|e| e.function == LEAF_VENDOR) else {
        return Vendor::Other;
    };
    let mut id = [0u8; 12];
    id[0..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    id[8..12].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// KVM's supported CPUID adjusted for vCPU `vcpu_id` of `num_cpus`; hand it
/// to `VcpuFd::set_cpuid2` before setting MSRs and registers.
pub fn setup_cpuid(kvm: &Kvm, vcpu_id: u8, num_cpus: u8) -> Result<CpuId, ArchError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ArchError::GetSupportedCpuid)?;
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    filter_cpuid(&mut cpuid, vcpu_id, num_cpus, tsc_deadline)?;
    Ok(cpuid)
}

/// Bits of an APIC id that number the cores of the package:
/// `ceil(log2(num_cpus))`.
fn core_id_bits(num_cpus: u8) -> u32 {
    u32::from(num_cpus).next_power_of_two().trailing_zeros()
}

/// Adjusts `cpuid` (as KVM supports it) for vCPU `vcpu_id` of `num_cpus`.
/// `tsc_deadline`: whether KVM emulates the TSC-deadline timer
/// (`KVM_CAP_TSC_DEADLINE_TIMER`), which KVM leaves to userspace to announce.
pub fn filter_cpuid(
    cpuid: &mut CpuId,
    vcpu_id: u8,
    num_cpus: u8,
    tsc_deadline: bool,
) -> Result<(), ArchError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(ArchError::InvalidCpuCount {
            num_cpus,
            max: MAX_CPUS,
        });
    }
    if vcpu_id >= num_cpus {
        return Err(ArchError::InvalidVcpuId { vcpu_id, num_cpus });
    }
    let vendor = vendor(cpuid);
    let cpus = u32::from(num_cpus);
    let apic_id = u32::from(vcpu_id);

    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & LEAF1_EBX_BRAND_INDEX_MASK)
                    | (CLFLUSH_LINE_SIZE_QWORDS << LEAF1_EBX_CLFLUSH_SHIFT)
                    | (cpus << LEAF1_EBX_CPU_COUNT_SHIFT)
                    | (apic_id << LEAF1_EBX_APIC_ID_SHIFT);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                set_bit(&mut entry.ecx, LEAF1_ECX_TSC_DEADLINE, tsc_deadline);
                // HTT: the count in EBX 23..=16 is meaningful (more than one
                // logical processor in the package).
                set_bit(&mut entry.edx, LEAF1_EDX_HTT, num_cpus > 1);
            }
            // Subleaves with cache type 0 end the list: left alone.
            LEAF_CACHE_PARAMS if is_cache(entry) => {
                set_cache_sharing(entry, cpus);
                let cores = (cpus - 1).min(LEAF4_CORES_MASK);
                entry.eax = (entry.eax & !(LEAF4_CORES_MASK << LEAF4_CORES_SHIFT))
                    | (cores << LEAF4_CORES_SHIFT);
            }
            LEAF_THERMAL_POWER => {
                // Power management (turbo, HWP, energy bias, thermal
                // interrupts, APERF/MPERF) belongs to the host: the guest has
                // no MSRs behind these bits. Keep only ARAT, which KVM's APIC
                // timer honours.
                entry.eax &= LEAF6_EAX_ARAT;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_PERFMON => {
                // No virtual PMU: counters are unreliable under nested
                // virtualization, cost VM exits, and would drive the guest's
                // NMI watchdog. Linux falls back to no hardware perf events.
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_AMD_SIZE_IDS if vendor == Vendor::Amd => {
                let bits = core_id_bits(num_cpus);
                entry.ecx = (entry.ecx
                    & !(AMD_NC_MASK | (AMD_APIC_ID_SIZE_MASK << AMD_APIC_ID_SIZE_SHIFT)))
                    | (cpus - 1)
                    | (bits << AMD_APIC_ID_SIZE_SHIFT);
            }
            LEAF_AMD_CACHE_TOPOLOGY if vendor == Vendor::Amd && is_cache(entry) => {
                set_cache_sharing(entry, cpus);
            }
            LEAF_AMD_EXT_APIC_ID if vendor == Vendor::Amd => {
                // Extended APIC id; compute unit (core) id with one thread per
                // unit (bits 15..=8 = 0); node 0 of one node per package. KVM
                // leaves this leaf zeroed, which would make every vCPU core 0.
                entry.eax = apic_id;
                entry.ebx = apic_id;
                entry.ecx = 0;
                entry.edx = 0;
            }
            _ => {}
        }
    }

    for leaf in [LEAF_EXT_TOPOLOGY, LEAF_EXT_TOPOLOGY_V2] {
        set_extended_topology(cpuid, leaf, vcpu_id, num_cpus)?;
    }
    Ok(())
}

fn set_bit(reg: &mut u32, bit: u32, on: bool) {
    if on {
        *reg |= bit;
    } else {
        *reg &= !bit;
    }
}

/// Leaves 4 and 0x8000_001d: whether the subleaf describes a cache.
fn is_cache(entry: &kvm_cpuid_entry2) -> bool {
    entry.eax & CACHE_TYPE_MASK != 0
}

/// Leaves 4 and 0x8000_001d: L1 and L2 are private to a (single-threaded)
/// core, L3 is shared by all vCPUs.
fn set_cache_sharing(entry: &mut kvm_cpuid_entry2, cpus: u32) {
    let level = (entry.eax >> CACHE_LEVEL_SHIFT) & CACHE_LEVEL_MASK;
    let sharing = if level >= SHARED_CACHE_LEVEL {
        (cpus - 1).min(CACHE_SHARING_MASK)
    } else {
        0
    };
    entry.eax = (entry.eax & !(CACHE_SHARING_MASK << CACHE_SHARING_SHIFT))
        | (sharing << CACHE_SHARING_SHIFT);
}

/// Rewrites leaf 0xb or 0x1f, if KVM reports it, as: subleaf 0 the SMT level
/// (one thread per core), subleaf 1 the core level (`num_cpus` cores), subleaf
/// 2 the terminating invalid level; EDX the x2APIC id everywhere.
fn set_extended_topology(
    cpuid: &mut CpuId,
    leaf: u32,
    vcpu_id: u8,
    num_cpus: u8,
) -> Result<(), ArchError> {
    if !cpuid.as_slice().iter().any(|e| e.function == leaf) {
        return Ok(());
    }
    cpuid.retain(|e| e.function != leaf);
    let x2apic_id = u32::from(vcpu_id);
    // (shift to the next level's id, logical processors at this level, type)
    let levels = [
        (0, 1, TOPOLOGY_LEVEL_SMT),
        (
            core_id_bits(num_cpus),
            u32::from(num_cpus),
            TOPOLOGY_LEVEL_CORE,
        ),
        (0, 0, TOPOLOGY_LEVEL_INVALID),
    ];
    for (index, (shift, count, level)) in (0u32..).zip(levels) {
        cpuid
            .push(kvm_cpuid_entry2 {
                function: leaf,
                index,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax: shift,
                ebx: count,
                ecx: (level << TOPOLOGY_LEVEL_SHIFT) | index,
                edx: x2apic_id,
                ..Default::default()
            })
            .map_err(|_| ArchError::CpuidFull {
                function: leaf,
                index,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vendor_entry(id: &[u8; 12]) -> kvm_cpuid_entry2 {
        let word = |i: usize| u32::from_le_bytes([id[i], id[i + 1], id[i + 2], id[i + 3]]);
        kvm_cpuid_entry2 {
            function: LEAF_VENDOR,
            eax: 0x1f,
            ebx: word(0),
            edx: word(4),
            ecx: word(8),
            ..Default::default()
        }
    }

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    /// Cache level `level`, type `kind` (1 data, 3 unified) in leaf 4 format.
    fn cache_eax(level: u32, kind: u32) -> u32 {
        (level << 5) | kind | (0x3f << 26) | (0xfff << 14)
    }

    fn intel_cpuid() -> CpuId {
        CpuId::from_entries(&[
            vendor_entry(b"GenuineIntel"),
            leaf(LEAF_FEATURES, 0, 0x806c1, 0xffff_ff12, 0x0, 0x0),
            leaf(LEAF_CACHE_PARAMS, 0, cache_eax(1, 1), 0, 0, 0),
            leaf(LEAF_CACHE_PARAMS, 1, cache_eax(2, 3), 0, 0, 0),
            leaf(LEAF_CACHE_PARAMS, 2, cache_eax(3, 3), 0, 0, 0),
            leaf(LEAF_CACHE_PARAMS, 3, 0, 0, 0, 0),
            leaf(LEAF_THERMAL_POWER, 0, 0x77, 0x1, 0x9, 0x0),
            leaf(LEAF_PERFMON, 0, 0x0704_8305, 0, 0, 0x603),
            leaf(LEAF_EXT_TOPOLOGY, 0, 1, 2, 0x100, 7),
            leaf(LEAF_EXT_TOPOLOGY, 1, 4, 16, 0x201, 7),
            leaf(LEAF_AMD_SIZE_IDS, 0, 0x3027, 0, 0, 0),
        ])
        .unwrap()
    }

    fn amd_cpuid() -> CpuId {
        CpuId::from_entries(&[
            vendor_entry(b"AuthenticAMD"),
            leaf(LEAF_FEATURES, 0, 0x830f10, 0, 0, 0),
            leaf(LEAF_AMD_SIZE_IDS, 0, 0x3030, 0, 0x0000_703f, 0),
            leaf(LEAF_AMD_CACHE_TOPOLOGY, 0, 0x121, 0, 0, 0),
            leaf(LEAF_AMD_CACHE_TOPOLOGY, 1, 0x163, 0, 0, 0),
            leaf(LEAF_AMD_CACHE_TOPOLOGY, 2, 0x3_c163, 0, 0, 0),
            leaf(LEAF_AMD_EXT_APIC_ID, 0, 0, 0, 0, 0),
        ])
        .unwrap()
    }

    #[test]
    fn detects_vendor() {
        assert_eq!(vendor(&intel_cpuid()), Vendor::Intel);
        assert_eq!(vendor(&amd_cpuid()), Vendor::Amd);
        assert_eq!(vendor(&CpuId::new(0).unwrap()), Vendor::Other);
    }

    #[test]
    fn leaf1_apic_id_count_clflush_hypervisor() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 3, 4, true).unwrap();
        let l1 = find(&cpuid, LEAF_FEATURES, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!((l1.ebx >> 8) & 0xff, 8);
        assert_eq!(l1.ebx & 0xff, 0x12, "brand index kept");
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(l1.eax, 0x806c1);

        let mut single = intel_cpuid();
        filter_cpuid(&mut single, 0, 1, false).unwrap();
        let l1 = find(&single, LEAF_FEATURES, 0);
        assert_eq!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(l1.ebx >> 24, 0);
    }

    #[test]
    fn leaf4_cache_topology() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 0, 6, false).unwrap();
        for (index, sharing) in [(0, 0), (1, 0), (2, 5)] {
            let e = find(&cpuid, LEAF_CACHE_PARAMS, index);
            assert_eq!(e.eax >> 26, 5, "cores, subleaf {index}");
            assert_eq!((e.eax >> 14) & 0xfff, sharing, "sharing, subleaf {index}");
            assert_ne!(e.eax & CACHE_TYPE_MASK, 0);
        }
        // The terminating subleaf stays all zero.
        assert_eq!(find(&cpuid, LEAF_CACHE_PARAMS, 3).eax, 0);
    }

    #[test]
    fn leaf4_core_count_saturates() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 0, 200, false).unwrap();
        let l3 = find(&cpuid, LEAF_CACHE_PARAMS, 2);
        assert_eq!(l3.eax >> 26, 0x3f);
        assert_eq!((l3.eax >> 14) & 0xfff, 199);
    }

    #[test]
    fn leaf6_and_perfmon_cleared() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 0, 2, false).unwrap();
        let l6 = find(&cpuid, LEAF_THERMAL_POWER, 0);
        assert_eq!((l6.eax, l6.ebx, l6.ecx, l6.edx), (LEAF6_EAX_ARAT, 0, 0, 0));
        let la = find(&cpuid, LEAF_PERFMON, 0);
        assert_eq!((la.eax, la.ebx, la.ecx, la.edx), (0, 0, 0, 0));
    }

    #[test]
    fn extended_topology() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 5, 6, false).unwrap();
        let leaves: Vec<_> = cpuid
            .as_slice()
            .iter()
            .filter(|e| e.function == LEAF_EXT_TOPOLOGY)
            .collect();
        assert_eq!(leaves.len(), 3);
        let smt = find(&cpuid, LEAF_EXT_TOPOLOGY, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
        let core = find(&cpuid, LEAF_EXT_TOPOLOGY, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        let end = find(&cpuid, LEAF_EXT_TOPOLOGY, 2);
        assert_eq!((end.eax, end.ebx, end.ecx, end.edx), (0, 0, 0x2, 5));
        assert_eq!(core.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        // Leaf 0x1f was not reported, so it is not invented.
        assert!(!cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == LEAF_EXT_TOPOLOGY_V2));
    }

    #[test]
    fn core_bits() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(4), 2);
        assert_eq!(core_id_bits(5), 3);
        assert_eq!(core_id_bits(254), 8);
    }

    #[test]
    fn amd_topology_leaves() {
        let mut cpuid = amd_cpuid();
        filter_cpuid(&mut cpuid, 2, 3, false).unwrap();
        let sizes = find(&cpuid, LEAF_AMD_SIZE_IDS, 0);
        assert_eq!(sizes.ecx & 0xff, 2);
        assert_eq!((sizes.ecx >> 12) & 0xf, 2);
        assert_eq!(sizes.eax, 0x3030);
        let l1 = find(&cpuid, LEAF_AMD_CACHE_TOPOLOGY, 0);
        assert_eq!((l1.eax >> 14) & 0xfff, 0);
        let l3 = find(&cpuid, LEAF_AMD_CACHE_TOPOLOGY, 2);
        assert_eq!((l3.eax >> 14) & 0xfff, 2);
        let ext = find(&cpuid, LEAF_AMD_EXT_APIC_ID, 0);
        assert_eq!((ext.eax, ext.ebx, ext.ecx), (2, 2, 0));
    }

    #[test]
    fn intel_leaves_untouched_on_amd_path() {
        // 0x8000_0008 ECX is reserved on Intel: not written.
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 0, 4, false).unwrap();
        assert_eq!(find(&cpuid, LEAF_AMD_SIZE_IDS, 0).ecx, 0);
    }

    #[test]
    fn rejects_bad_ids() {
        let mut cpuid = intel_cpuid();
        assert!(matches!(
            filter_cpuid(&mut cpuid, 4, 4, false),
            Err(ArchError::InvalidVcpuId {
                vcpu_id: 4,
                num_cpus: 4
            })
        ));
        assert!(matches!(
            filter_cpuid(&mut cpuid, 0, 0, false),
            Err(ArchError::InvalidCpuCount { .. })
        ));
        assert!(matches!(
            filter_cpuid(&mut cpuid, 0, 255, false),
            Err(ArchError::InvalidCpuCount { .. })
        ));
    }

    /// Needs /dev/kvm: KVM accepts the result and reports it back.
    #[test]
    fn kvm_accepts_cpuid() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        for vcpu_id in 0..2u8 {
            let vcpu = vm.create_vcpu(u64::from(vcpu_id)).unwrap();
            let cpuid = setup_cpuid(&kvm, vcpu_id, 2).unwrap();
            vcpu.set_cpuid2(&cpuid).unwrap();
            let back = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
            let l1 = find(&back, LEAF_FEATURES, 0);
            assert_eq!(l1.ebx >> 24, u32::from(vcpu_id));
            assert_eq!((l1.ebx >> 16) & 0xff, 2);
            assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
            if back
                .as_slice()
                .iter()
                .any(|e| e.function == LEAF_EXT_TOPOLOGY)
            {
                assert_eq!(find(&back, LEAF_EXT_TOPOLOGY, 0).edx, u32::from(vcpu_id));
            }
        }
    }
}
