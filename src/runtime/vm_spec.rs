//! How big a container's VM is: guest memory and vCPUs from its OCI spec.
//!
//! A pure function of the spec, [`vm_sizing`]:
//!
//! * memory: `linux.resources.memory.limit` (bytes) rounded up to MiB plus
//!   [`MEMORY_OVERHEAD_MIB`] for the guest kernel, init and a page-cache
//!   floor, clamped to [[`MIN_MEMORY_MIB`], [`MAX_MEMORY_MIB`]]; no limit (or
//!   a limit <= 0, "unlimited") gives [`DEFAULT_MEMORY_MIB`];
//! * vCPUs: `ceil(cpu.quota / cpu.period)` when a quota is set, the number
//!   of CPUs in `cpu.cpus` when a cpuset is set, the smaller of the two when
//!   both are, clamped to [1, [`MAX_VCPUS`]]; neither gives [`DEFAULT_VCPUS`];
//! * a pod's sandbox: containerd's pod sizing annotations (1.7 and later,
//!   [`CRI_SANDBOX_MEMORY`], [`CRI_SANDBOX_CPU_QUOTA`] /
//!   [`CRI_SANDBOX_CPU_PERIOD`]: what the kubelet sums over the pod's
//!   containers) size the pod's VM the same way, in place of the sandbox's
//!   own (empty) resources;
//! * the annotations [`ANNOTATION_MEMORY_MIB`] and [`ANNOTATION_VCPUS`]
//!   override either result exactly (no overhead, no clamping: a value
//!   outside the range is an error naming the annotation).

use oci_spec::runtime::Spec;

use crate::vmm::config as vmm_config;

/// Guest memory when the spec sets no limit.
pub const DEFAULT_MEMORY_MIB: u32 = vmm_config::DEFAULT_MEM_MIB;
/// Added to a memory limit: the guest kernel (~20 MiB resident), husk-init,
/// and a floor of page cache so the workload's limit stays its own.
pub const MEMORY_OVERHEAD_MIB: u32 = 64;
/// Smallest guest husk sizes from a limit (kernel + init + a little room).
pub const MIN_MEMORY_MIB: u32 = 64;
/// Largest guest (1 TiB), the VMM's own bound.
pub const MAX_MEMORY_MIB: u32 = vmm_config::MAX_MEM_MIB;
/// vCPUs when the spec sets no CPU limit.
pub const DEFAULT_VCPUS: u32 = vmm_config::DEFAULT_VCPUS;
/// Most vCPUs (8-bit APIC ids in the MP table).
pub const MAX_VCPUS: u32 = vmm_config::MAX_VCPUS;
/// CFS period the kernel uses when none is given (100 ms, in µs).
pub const DEFAULT_CFS_PERIOD_US: u64 = 100_000;
/// Annotation that sets guest memory in MiB, overriding the limit.
pub const ANNOTATION_MEMORY_MIB: &str = "io.husk.vm.memory_mib";
/// Annotation that sets the vCPU count, overriding the CPU limits.
pub const ANNOTATION_VCPUS: &str = "io.husk.vm.vcpus";
/// What a pod VM's host processes (VMM, fs server) take beside its guest
/// RAM, left out of the pod cgroup's limit when the VM is sized from it
/// ([`pod_from_cgroup`]).
pub const POD_PROCESSES_MIB: u32 = 32;
/// containerd's pod memory limit (bytes) on a sandbox's spec.
pub const CRI_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// containerd's pod CPU quota (µs a period) on a sandbox's spec.
pub const CRI_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// containerd's pod CPU period (µs) on a sandbox's spec.
pub const CRI_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// Prefix of husk's VM annotations.
pub const ANNOTATION_PREFIX: &str = "io.husk.vm.";

/// Bytes in a MiB.
const MIB: u64 = 1 << 20;

/// The VM a spec asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSizing {
    pub mem_mib: u32,
    pub vcpus: u32,
}

impl Default for VmSizing {
    fn default() -> Self {
        VmSizing {
            mem_mib: DEFAULT_MEMORY_MIB,
            vcpus: DEFAULT_VCPUS,
        }
    }
}

/// A spec whose sizing cannot be worked out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VmSpecError {
    #[error("annotation {annotation}={value:?} is not a whole number in {min}..={max}")]
    Annotation {
        annotation: &'static str,
        value: String,
        min: u32,
        max: u32,
    },
    #[error("linux.resources.cpu.cpus {value:?} is not a cpu list (like \"0-3,6\")")]
    Cpuset { value: String },
}

/// Guest memory and vCPUs for `spec` (see the module docs for the rules).
pub fn vm_sizing(spec: &Spec) -> Result<VmSizing, VmSpecError> {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let memory_limit = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit());
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    let quota = cpu.and_then(|c| c.quota());
    let period = cpu.and_then(|c| c.period());
    let cpus = cpu.and_then(|c| c.cpus().as_deref());

    let mut sizing = VmSizing {
        mem_mib: memory_mib_for_limit(memory_limit),
        vcpus: vcpus_for_cpu(quota, period, cpus)?,
    };

    let annotations = spec.annotations().as_ref();
    let annotation = |name: &'static str| annotations.and_then(|a| a.get(name));
    // containerd writes these, not the user: one that does not parse is
    // left out.
    let number = |name: &'static str| annotation(name).and_then(|v| v.trim().parse::<i64>().ok());
    if let Some(limit) = number(CRI_SANDBOX_MEMORY).filter(|&l| l > 0) {
        sizing.mem_mib = memory_mib_for_limit(Some(limit));
    }
    if let Some(quota) = number(CRI_SANDBOX_CPU_QUOTA).filter(|&q| q > 0) {
        let period = number(CRI_SANDBOX_CPU_PERIOD).and_then(|p| u64::try_from(p).ok());
        sizing.vcpus = vcpus_for_cpu(Some(quota), period, None)?;
    }
    if let Some(value) = annotation(ANNOTATION_MEMORY_MIB) {
        sizing.mem_mib = parse_annotation(
            ANNOTATION_MEMORY_MIB,
            value,
            vmm_config::MIN_MEM_MIB,
            MAX_MEMORY_MIB,
        )?;
    }
    if let Some(value) = annotation(ANNOTATION_VCPUS) {
        sizing.vcpus = parse_annotation(ANNOTATION_VCPUS, value, 1, MAX_VCPUS)?;
    }
    Ok(sizing)
}

/// Whether `spec` says how big its VM is: husk's annotations, or
/// containerd's pod sizing ones.
pub fn sized_by_annotations(spec: &Spec) -> bool {
    spec.annotations().as_ref().is_some_and(|a| {
        [
            ANNOTATION_MEMORY_MIB,
            ANNOTATION_VCPUS,
            CRI_SANDBOX_MEMORY,
            CRI_SANDBOX_CPU_QUOTA,
        ]
        .iter()
        .any(|k| a.contains_key(*k))
    })
}

/// A pod VM sized from the pod cgroup the kubelet made (the sandbox
/// cgroup's parent), given its `memory.max` and `cpu.max` files' text:
/// the pod's memory limit (the containers' limits and the RuntimeClass
/// overhead) less [`POD_PROCESSES_MIB`] is the guest's RAM, its CPU quota
/// the vCPUs; `max` (no limit) keeps `sizing`'s.
pub fn pod_from_cgroup(sizing: VmSizing, memory_max: &str, cpu_max: &str) -> VmSizing {
    let mut out = sizing;
    if let Ok(bytes) = memory_max.trim().parse::<u64>() {
        let mib = (bytes / MIB).saturating_sub(u64::from(POD_PROCESSES_MIB));
        out.mem_mib =
            u32::try_from(mib.clamp(u64::from(MIN_MEMORY_MIB), u64::from(MAX_MEMORY_MIB)))
                .unwrap_or(MAX_MEMORY_MIB);
    }
    let mut parts = cpu_max.split_whitespace();
    if let (Some(quota), Some(period)) = (parts.next(), parts.next()) {
        if let (Ok(q), Ok(p)) = (quota.parse::<i64>(), period.parse::<u64>()) {
            if let Ok(v) = vcpus_for_cpu(Some(q), Some(p), None) {
                out.vcpus = v;
            }
        }
    }
    out
}

/// MiB of guest memory for a cgroup memory limit in bytes.
fn memory_mib_for_limit(limit: Option<i64>) -> u32 {
    let Some(limit) = limit.and_then(|l| u64::try_from(l).ok()).filter(|&l| l > 0) else {
        return DEFAULT_MEMORY_MIB;
    };
    let mib = limit
        .div_ceil(MIB)
        .saturating_add(u64::from(MEMORY_OVERHEAD_MIB));
    let clamped = mib.clamp(u64::from(MIN_MEMORY_MIB), u64::from(MAX_MEMORY_MIB));
    u32::try_from(clamped).unwrap_or(MAX_MEMORY_MIB)
}

/// vCPUs for a CFS quota/period and a cpuset.
fn vcpus_for_cpu(
    quota: Option<i64>,
    period: Option<u64>,
    cpus: Option<&str>,
) -> Result<u32, VmSpecError> {
    let from_quota = quota
        .and_then(|q| u64::try_from(q).ok())
        .filter(|&q| q > 0)
        .map(|q| {
            let period = period.filter(|&p| p > 0).unwrap_or(DEFAULT_CFS_PERIOD_US);
            q.div_ceil(period)
        });
    let from_cpuset = match cpus.map(str::trim).filter(|c| !c.is_empty()) {
        Some(list) => Some(cpuset_count(list).ok_or_else(|| VmSpecError::Cpuset {
            value: list.to_owned(),
        })?),
        None => None,
    };
    let wanted = match (from_quota, from_cpuset) {
        (Some(q), Some(c)) => q.min(c),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => return Ok(DEFAULT_VCPUS),
    };
    let clamped = wanted.clamp(1, u64::from(MAX_VCPUS));
    Ok(u32::try_from(clamped).unwrap_or(MAX_VCPUS))
}

/// Number of distinct CPUs in a kernel cpu list (`0-3,6`, `1,1,2-2`), or
/// `None` if it is malformed (empty parts, reversed ranges, non-numbers).
pub fn cpuset_count(list: &str) -> Option<u64> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
            None => {
                let n = part.parse().ok()?;
                (n, n)
            }
        };
        if lo > hi {
            return None;
        }
        ranges.push((lo, hi));
    }
    ranges.sort_unstable();
    let mut count = 0u64;
    let mut next_uncounted = 0u64; // first cpu not yet counted
    for (lo, hi) in ranges {
        let start = lo.max(next_uncounted);
        if hi >= start {
            count += hi - start + 1;
            next_uncounted = hi.saturating_add(1);
        }
    }
    Some(count)
}

/// A whole number in `min..=max` from annotation `name`.
fn parse_annotation(
    name: &'static str,
    value: &str,
    min: u32,
    max: u32,
) -> Result<u32, VmSpecError> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| VmSpecError::Annotation {
            annotation: name,
            value: value.to_owned(),
            min,
            max,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec from the JSON of its `linux.resources` and annotations.
    fn spec(resources: serde_json::Value, annotations: serde_json::Value) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {"resources": resources},
        });
        if !annotations.is_null() {
            v["annotations"] = annotations;
        }
        serde_json::from_value(v).unwrap()
    }

    fn sizing(resources: serde_json::Value) -> VmSizing {
        vm_sizing(&spec(resources, serde_json::Value::Null)).unwrap()
    }

    fn mem(limit: i64) -> VmSizing {
        sizing(serde_json::json!({"memory": {"limit": limit}}))
    }

    fn cpu(cpu: serde_json::Value) -> VmSizing {
        sizing(serde_json::json!({ "cpu": cpu }))
    }

    #[test]
    fn defaults_without_linux_or_resources() {
        let bare: Spec =
            serde_json::from_str(r#"{"ociVersion":"1.0.0","root":{"path":"r"}}"#).unwrap();
        assert_eq!(
            vm_sizing(&bare).unwrap(),
            VmSizing {
                mem_mib: 128,
                vcpus: 1
            }
        );
        assert_eq!(sizing(serde_json::json!({})), VmSizing::default());
        assert_eq!(
            sizing(serde_json::json!({"memory": {}, "cpu": {}})),
            VmSizing::default()
        );
    }

    #[test]
    fn memory_limit_rounds_up_and_adds_overhead() {
        assert_eq!(mem(256 << 20).mem_mib, 256 + MEMORY_OVERHEAD_MIB);
        assert_eq!(mem((256 << 20) + 1).mem_mib, 257 + MEMORY_OVERHEAD_MIB);
        assert_eq!(mem(1).mem_mib, MIN_MEMORY_MIB.max(1 + MEMORY_OVERHEAD_MIB));
        assert_eq!(mem(1 << 30).mem_mib, 1024 + 64);
    }

    #[test]
    fn memory_unlimited_or_zero_is_default() {
        assert_eq!(mem(-1).mem_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(mem(0).mem_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(mem(i64::MIN).mem_mib, DEFAULT_MEMORY_MIB);
    }

    #[test]
    fn memory_is_clamped_to_the_maximum() {
        assert_eq!(mem(i64::MAX).mem_mib, MAX_MEMORY_MIB);
        assert_eq!(mem(2 << 40).mem_mib, MAX_MEMORY_MIB);
        let just_under = (i64::from(MAX_MEMORY_MIB - MEMORY_OVERHEAD_MIB)) << 20;
        assert_eq!(mem(just_under).mem_mib, MAX_MEMORY_MIB);
        assert_eq!(mem(just_under - (1 << 20)).mem_mib, MAX_MEMORY_MIB - 1);
    }

    #[test]
    fn cpu_quota_over_period_rounds_up() {
        assert_eq!(
            cpu(serde_json::json!({"quota": 100000, "period": 100000})).vcpus,
            1
        );
        assert_eq!(
            cpu(serde_json::json!({"quota": 150000, "period": 100000})).vcpus,
            2
        );
        assert_eq!(
            cpu(serde_json::json!({"quota": 50000, "period": 100000})).vcpus,
            1
        );
        assert_eq!(
            cpu(serde_json::json!({"quota": 400000, "period": 100000})).vcpus,
            4
        );
        assert_eq!(
            cpu(serde_json::json!({"quota": 1, "period": 1000})).vcpus,
            1
        );
    }

    #[test]
    fn cpu_quota_without_period_uses_the_kernel_default() {
        assert_eq!(cpu(serde_json::json!({"quota": 250000})).vcpus, 3);
        assert_eq!(
            cpu(serde_json::json!({"quota": 250000, "period": 0})).vcpus,
            3
        );
    }

    #[test]
    fn cpu_unlimited_quota_is_default() {
        assert_eq!(
            cpu(serde_json::json!({"quota": -1, "period": 100000})).vcpus,
            1
        );
        assert_eq!(cpu(serde_json::json!({"quota": 0})).vcpus, 1);
        assert_eq!(cpu(serde_json::json!({"period": 100000})).vcpus, 1);
        assert_eq!(cpu(serde_json::json!({"shares": 1024})).vcpus, 1);
    }

    #[test]
    fn cpu_quota_is_clamped() {
        assert_eq!(
            cpu(serde_json::json!({"quota": i64::MAX, "period": 1})).vcpus,
            MAX_VCPUS
        );
        assert_eq!(
            cpu(serde_json::json!({"quota": 1000 * 100000, "period": 100000})).vcpus,
            254
        );
    }

    #[test]
    fn cpuset_counts() {
        assert_eq!(cpu(serde_json::json!({"cpus": "0-3,6"})).vcpus, 5);
        assert_eq!(cpu(serde_json::json!({"cpus": "2"})).vcpus, 1);
        assert_eq!(cpu(serde_json::json!({"cpus": "0-1023"})).vcpus, MAX_VCPUS);
        assert_eq!(cpu(serde_json::json!({"cpus": ""})).vcpus, 1);
        assert_eq!(cpu(serde_json::json!({"cpus": " 0 - 1 , 3 "})).vcpus, 3);
    }

    #[test]
    fn cpuset_count_merges_overlaps() {
        assert_eq!(cpuset_count("0-3,2-5"), Some(6));
        assert_eq!(cpuset_count("1,1,1"), Some(1));
        assert_eq!(cpuset_count("5-7,0-9"), Some(10));
        assert_eq!(cpuset_count("3-3"), Some(1));
        assert_eq!(cpuset_count("0-0,2-2,1-1"), Some(3));
        assert_eq!(cpuset_count("0"), Some(1));
    }

    #[test]
    fn cpuset_count_rejects_malformed() {
        for bad in [
            "", ",", "0,", "3-1", "a", "1-", "-1", "0-3,x", "1--2", "0.5",
        ] {
            assert_eq!(cpuset_count(bad), None, "{bad:?}");
        }
        let err = vm_sizing(&spec(
            serde_json::json!({"cpu": {"cpus": "3-1"}}),
            serde_json::Value::Null,
        ))
        .unwrap_err();
        assert_eq!(
            err,
            VmSpecError::Cpuset {
                value: "3-1".into()
            }
        );
        assert!(err.to_string().contains("linux.resources.cpu.cpus"));
    }

    #[test]
    fn quota_and_cpuset_take_the_smaller() {
        let both = |q: i64, cpus: &str| {
            cpu(serde_json::json!({"quota": q, "period": 100000, "cpus": cpus})).vcpus
        };
        assert_eq!(both(400000, "0-1"), 2);
        assert_eq!(both(100000, "0-7"), 1);
        assert_eq!(both(-1, "0-7"), 8);
    }

    #[test]
    fn annotations_override_exactly() {
        let s = spec(
            serde_json::json!({"memory": {"limit": 1 << 30}, "cpu": {"quota": 400000, "period": 100000}}),
            serde_json::json!({ANNOTATION_MEMORY_MIB: "512", ANNOTATION_VCPUS: "3"}),
        );
        assert_eq!(
            vm_sizing(&s).unwrap(),
            VmSizing {
                mem_mib: 512,
                vcpus: 3
            }
        );
        let s = spec(
            serde_json::json!({}),
            serde_json::json!({ANNOTATION_VCPUS: " 2 "}),
        );
        assert_eq!(
            vm_sizing(&s).unwrap(),
            VmSizing {
                mem_mib: 128,
                vcpus: 2
            }
        );
        let s = spec(
            serde_json::json!({}),
            serde_json::json!({"io.husk.other": "x"}),
        );
        assert_eq!(vm_sizing(&s).unwrap(), VmSizing::default());
    }

    #[test]
    fn annotation_bounds() {
        let one = |name: &str, value: &str| {
            vm_sizing(&spec(
                serde_json::json!({}),
                serde_json::json!({ name: value }),
            ))
        };
        assert_eq!(
            one(ANNOTATION_MEMORY_MIB, "32").unwrap().mem_mib,
            vmm_config::MIN_MEM_MIB
        );
        assert_eq!(
            one(ANNOTATION_MEMORY_MIB, "1048576").unwrap().mem_mib,
            MAX_MEMORY_MIB
        );
        assert_eq!(one(ANNOTATION_VCPUS, "1").unwrap().vcpus, 1);
        assert_eq!(one(ANNOTATION_VCPUS, "254").unwrap().vcpus, 254);
    }

    #[test]
    fn invalid_annotations_name_the_annotation() {
        let cases = [
            (ANNOTATION_MEMORY_MIB, "lots"),
            (ANNOTATION_MEMORY_MIB, "0"),
            (ANNOTATION_MEMORY_MIB, "31"),
            (ANNOTATION_MEMORY_MIB, "1048577"),
            (ANNOTATION_MEMORY_MIB, "-5"),
            (ANNOTATION_MEMORY_MIB, "1.5"),
            (ANNOTATION_MEMORY_MIB, ""),
            (ANNOTATION_VCPUS, "0"),
            (ANNOTATION_VCPUS, "255"),
            (ANNOTATION_VCPUS, "two"),
        ];
        for (name, value) in cases {
            let s = spec(serde_json::json!({}), serde_json::json!({ name: value }));
            let err = vm_sizing(&s).unwrap_err();
            assert!(
                matches!(err, VmSpecError::Annotation { annotation, .. } if annotation == name),
                "{name}={value}: {err}"
            );
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn annotation_names_share_the_prefix() {
        assert!(ANNOTATION_MEMORY_MIB.starts_with(ANNOTATION_PREFIX));
        assert!(ANNOTATION_VCPUS.starts_with(ANNOTATION_PREFIX));
    }

    #[test]
    fn a_pod_sandbox_is_sized_from_containerds_pod_annotations() {
        let sandbox = |a: serde_json::Value| vm_sizing(&spec(serde_json::json!({}), a)).unwrap();
        // 256 MiB summed over the pod's containers, 1.5 CPUs.
        let s = sandbox(serde_json::json!({
            CRI_SANDBOX_MEMORY: "268435456",
            CRI_SANDBOX_CPU_QUOTA: "150000",
            CRI_SANDBOX_CPU_PERIOD: "100000",
        }));
        assert_eq!(
            s,
            VmSizing {
                mem_mib: 256 + MEMORY_OVERHEAD_MIB,
                vcpus: 2
            }
        );
        // No limits (0, or not numbers): husk's defaults.
        let s = sandbox(serde_json::json!({
            CRI_SANDBOX_MEMORY: "0",
            CRI_SANDBOX_CPU_QUOTA: "lots",
        }));
        assert_eq!(s, VmSizing::default());
        // husk's own annotations still decide.
        let s = sandbox(serde_json::json!({
            CRI_SANDBOX_MEMORY: "268435456",
            ANNOTATION_MEMORY_MIB: "1024",
        }));
        assert_eq!(s.mem_mib, 1024);
    }

    #[test]
    fn a_pod_vm_without_annotations_is_sized_from_its_pod_cgroup() {
        let default = VmSizing::default();
        // 512 MiB of limits + 96 MiB of RuntimeClass overhead, 2.5 CPUs.
        let pod_limit = (512u64 + 96) << 20;
        let s = pod_from_cgroup(default, &format!("{pod_limit}\n"), "250000 100000\n");
        assert_eq!(
            s,
            VmSizing {
                mem_mib: 512 + 96 - POD_PROCESSES_MIB,
                vcpus: 3
            }
        );
        // No limits: the defaults stay.
        assert_eq!(pod_from_cgroup(default, "max\n", "max 100000\n"), default);
        // A tiny limit still gives a guest that boots; nonsense is ignored.
        assert_eq!(
            pod_from_cgroup(default, "1048576", "").mem_mib,
            MIN_MEMORY_MIB
        );
        assert_eq!(pod_from_cgroup(default, "lots", "x y"), default);
        let annotated = spec(
            serde_json::json!({}),
            serde_json::json!({ANNOTATION_MEMORY_MIB: "300"}),
        );
        assert!(sized_by_annotations(&annotated));
        assert!(!sized_by_annotations(&spec(
            serde_json::json!({}),
            serde_json::Value::Null
        )));
    }
}
