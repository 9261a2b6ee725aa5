//! `husk features`: the OCI runtime features document (runtime-spec
//! `features.md`), printed like runc's: four-space indent, trailing newline.
//!
//! Field order and shapes follow runc's output. Lists state what husk
//! recognizes; booleans say what is enforced. The container's seccomp
//! profile is compiled on the host and loaded by husk-init in the guest
//! (`crate::seccomp`): enabled, with the actions, operators, architectures
//! and flags it takes. Isolation comes from the VM, so host-side AppArmor
//! and SELinux are reported as not enabled;
//! namespaces are recognized (a config that asks for them is accepted)
//! because each container has its own kernel anyway. cgroup v2 is: the VMM
//! is placed in `cgroupsPath` with the container's CPU and memory settings
//! (`super::cgroup`); `systemd` stays false, as no systemd unit is made.

use std::collections::BTreeMap;

use serde::Serialize;

use super::vm_spec::ANNOTATION_PREFIX;

/// Oldest runtime-spec version whose configs husk reads.
pub const OCI_VERSION_MIN: &str = "1.0.0";
/// Newest runtime-spec version husk knows (the oci-spec crate's).
pub const OCI_VERSION_MAX: &str = oci_spec::runtime::VERSION;
/// Annotation carrying husk's version.
pub const ANNOTATION_HUSK_VERSION: &str = "io.husk.version";
/// Prefix of the annotations about the VMM process itself
/// ([`crate::jail::seccomp::ANNOTATION`]).
pub const VMM_ANNOTATION_PREFIX: &str = "io.husk.vmm.";

/// Lifecycle hooks husk runs (createContainer/startContainer in the guest).
pub const HOOKS: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// Mount options guest init recognizes (mount(2) flags and propagation).
pub const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "unbindable",
];

/// Namespace types accepted in `linux.namespaces`.
pub const NAMESPACES: &[&str] = &["cgroup", "ipc", "mount", "network", "pid", "user", "uts"];

/// Capabilities the guest kernel knows, in kernel order (husk-init's table).
pub const CAPABILITIES: &[&str] = &husk_init::agent::caps::NAMES;

/// The features document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    pub oci_version_min: &'static str,
    pub oci_version_max: &'static str,
    pub hooks: Vec<&'static str>,
    pub mount_options: Vec<&'static str>,
    pub linux: LinuxFeatures,
    pub annotations: BTreeMap<&'static str, String>,
    /// Annotations (or prefixes, ending in `.`) that change how a
    /// container is run; engines pass them only from trusted sources.
    pub potentially_unsafe_config_annotations: Vec<&'static str>,
}

/// `features.linux`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxFeatures {
    pub namespaces: Vec<&'static str>,
    pub capabilities: Vec<&'static str>,
    pub cgroup: CgroupFeatures,
    pub seccomp: SeccompFeatures,
    pub apparmor: Enabled,
    pub selinux: Enabled,
}

/// `features.linux.cgroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CgroupFeatures {
    pub v1: bool,
    pub v2: bool,
    pub systemd: bool,
    pub systemd_user: bool,
}

/// `features.linux.seccomp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompFeatures {
    pub enabled: bool,
    pub actions: Vec<&'static str>,
    pub operators: Vec<&'static str>,
    pub archs: Vec<&'static str>,
    pub known_flags: Vec<&'static str>,
    pub supported_flags: Vec<&'static str>,
}

/// `{"enabled": bool}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Enabled {
    pub enabled: bool,
}

/// What this build of husk supports.
pub fn features() -> Features {
    Features {
        oci_version_min: OCI_VERSION_MIN,
        oci_version_max: OCI_VERSION_MAX,
        hooks: HOOKS.to_vec(),
        mount_options: MOUNT_OPTIONS.to_vec(),
        linux: LinuxFeatures {
            namespaces: NAMESPACES.to_vec(),
            capabilities: CAPABILITIES.to_vec(),
            cgroup: CgroupFeatures {
                v1: false,
                v2: true,
                systemd: false,
                systemd_user: false,
            },
            seccomp: SeccompFeatures {
                enabled: true,
                actions: crate::seccomp::ACTIONS.to_vec(),
                operators: crate::seccomp::OPERATORS.to_vec(),
                archs: crate::seccomp::ARCHS.to_vec(),
                known_flags: crate::seccomp::KNOWN_FLAGS.to_vec(),
                supported_flags: crate::seccomp::SUPPORTED_FLAGS.to_vec(),
            },
            apparmor: Enabled { enabled: false },
            selinux: Enabled { enabled: false },
        },
        annotations: BTreeMap::from([
            (
                ANNOTATION_HUSK_VERSION,
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
            // The VMM's own seccomp filters, per thread, and their default
            // mode (docs/security.md).
            (crate::jail::seccomp::ANNOTATION, "enforce".to_owned()),
            // The VMM's jail (its own root) and its default.
            (crate::jail::root::ANNOTATION, "on".to_owned()),
            // The VMM's own user and its default.
            (crate::jail::user::ANNOTATION, "auto".to_owned()),
        ]),
        // The VM's sizing, and the VMM's filter mode (log lets calls
        // through), jail (off keeps it in the host's root) and user (root
        // keeps uid 0).
        potentially_unsafe_config_annotations: vec![ANNOTATION_PREFIX, VMM_ANNOTATION_PREFIX],
    }
}

/// The document as `husk features` prints it.
pub fn render_features() -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    features()
        .serialize(&mut ser)
        .expect("serializing plain structs to memory cannot fail");
    let mut text = String::from_utf8(out).expect("serde_json writes UTF-8");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_fields_in_runcs_order() {
        let text = render_features();
        let keys = [
            "\"ociVersionMin\"",
            "\"ociVersionMax\"",
            "\"hooks\"",
            "\"mountOptions\"",
            "\"linux\"",
            "\"annotations\"",
            "\"potentiallyUnsafeConfigAnnotations\"",
        ];
        let positions: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(
            text.starts_with("{\n    \"ociVersionMin\": \"1.0.0\",\n"),
            "{text}"
        );
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn parses_as_the_oci_features_type() {
        let parsed: oci_spec::runtime::Features = serde_json::from_str(&render_features()).unwrap();
        assert_eq!(parsed.oci_version_min(), OCI_VERSION_MIN);
        assert_eq!(parsed.oci_version_max(), OCI_VERSION_MAX);
        let linux = parsed.linux().as_ref().unwrap();
        assert_eq!(linux.namespaces().as_ref().unwrap().len(), NAMESPACES.len());
        let seccomp = linux.seccomp().as_ref().unwrap();
        assert_eq!(seccomp.enabled(), &Some(true));
        assert!(seccomp
            .actions()
            .as_ref()
            .unwrap()
            .contains(&oci_spec::runtime::LinuxSeccompAction::ScmpActErrno));
        assert_eq!(
            seccomp.actions().as_ref().unwrap().len(),
            crate::seccomp::ACTIONS.len()
        );
        assert!(seccomp
            .operators()
            .as_ref()
            .unwrap()
            .contains(&"SCMP_CMP_MASKED_EQ".to_owned()));
        assert_eq!(
            seccomp.supported_flags().as_ref().unwrap().len(),
            crate::seccomp::SUPPORTED_FLAGS.len()
        );
        assert_eq!(
            parsed
                .potentially_unsafe_config_annotations()
                .as_ref()
                .unwrap(),
            &["io.husk.vm.", "io.husk.vmm."]
        );
        assert_eq!(
            parsed
                .annotations()
                .as_ref()
                .unwrap()
                .get(crate::jail::seccomp::ANNOTATION)
                .unwrap(),
            "enforce"
        );
        assert_eq!(
            parsed
                .annotations()
                .as_ref()
                .unwrap()
                .get(ANNOTATION_HUSK_VERSION)
                .unwrap(),
            env!("CARGO_PKG_VERSION")
        );
    }

    #[test]
    fn linux_section_shape() {
        let v: serde_json::Value = serde_json::from_str(&render_features()).unwrap();
        let cg = &v["linux"]["cgroup"];
        for k in ["v1", "v2", "systemd", "systemdUser"] {
            assert!(cg[k].is_boolean(), "{k}");
        }
        assert_eq!(cg["v2"], serde_json::json!(true));
        for k in ["apparmor", "selinux"] {
            assert_eq!(v["linux"][k]["enabled"], serde_json::json!(false), "{k}");
        }
        assert_eq!(v["linux"]["seccomp"]["enabled"], serde_json::json!(true));
        assert_eq!(
            v["linux"]["seccomp"]["archs"],
            serde_json::json!(["SCMP_ARCH_X32", "SCMP_ARCH_X86", "SCMP_ARCH_X86_64"])
        );
        assert_eq!(
            v["hooks"],
            serde_json::json!([
                "prestart",
                "createRuntime",
                "createContainer",
                "startContainer",
                "poststart",
                "poststop"
            ])
        );
    }

    #[test]
    fn lists_are_clean() {
        let mut sorted = MOUNT_OPTIONS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, MOUNT_OPTIONS, "mount options sorted, no duplicates");
        let mut caps = CAPABILITIES.to_vec();
        caps.sort_unstable();
        caps.dedup();
        assert_eq!(caps.len(), CAPABILITIES.len());
        assert!(CAPABILITIES.iter().all(|c| c.starts_with("CAP_")));
        for ns in NAMESPACES {
            let t: oci_spec::runtime::LinuxNamespaceType =
                serde_json::from_value(serde_json::json!(ns)).unwrap();
            let _ = t;
        }
    }
}
