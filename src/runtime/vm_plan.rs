//! What `husk create` hands the VMM process (`<state dir>/vm.json`): the VM
//! to build and the container to set up in it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent_proto::ContainerSpec;
use crate::net::NicPlan;
use crate::proto;
use crate::runtime::guest_spec::SharedDir;
use crate::vmm::config::{
    self, BlockConfig, ConsoleOutput, FsConfig, Initramfs, NetConfig, VmConfig, VsockConfig,
};
use crate::vmm::devices::virtio::fs::idmap::{IdMap, IdMapError, IdMaps, IdRange};

/// File name of the plan in the container's state directory.
pub const PLAN_FILE: &str = "vm.json";
/// The guest's vsock CID (each VM has its own vsock device, so all can use
/// the first non-reserved CID).
pub const GUEST_CID: u64 = 3;
/// Annotation that turns the NICs' checksum/segmentation offloads off
/// (`false`) or on (`true`, the default).
pub const ANNOTATION_NET_OFFLOAD: &str = "io.husk.net.offload";
/// Annotation that makes the VM boot cold (`false`) instead of starting
/// from a snapshot of a booted template VM (`true`, the default; see
/// [`crate::runtime::template`]).
pub const ANNOTATION_SNAPSHOT: &str = "io.husk.snapshot";

/// Annotation choosing where the container's root file system lives:
/// `virtiofs` (the default) serves the bundle's `root.path` from the host,
/// so writes land there; `block` boots from a cached ext4 image of it under
/// an overlay in guest memory (writes are lost at stop).
pub const ANNOTATION_ROOTFS: &str = "io.husk.rootfs";

/// Where a container's root file system lives ([`ANNOTATION_ROOTFS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RootfsMode {
    /// The bundle's rootfs directory over virtio-fs.
    #[default]
    Share,
    /// A cached ext4 image of it ([`crate::rootfs::cache`]) on a read-only
    /// virtio-blk disk, under a tmpfs overlay.
    Block,
}

/// The root file system mode the spec asks for ([`ANNOTATION_ROOTFS`]).
pub fn rootfs_mode(spec: &oci_spec::runtime::Spec) -> Result<RootfsMode, PlanError> {
    match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_ROOTFS))
        .map(String::as_str)
    {
        None | Some("virtiofs") => Ok(RootfsMode::Share),
        Some("block") => Ok(RootfsMode::Block),
        Some(v) => Err(PlanError::RootfsAnnotation {
            value: v.to_owned(),
        }),
    }
}

/// Whether the spec lets the VM start from a template snapshot
/// ([`ANNOTATION_SNAPSHOT`]).
pub fn snapshot_allowed(spec: &oci_spec::runtime::Spec) -> Result<bool, PlanError> {
    match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_SNAPSHOT))
    {
        None => Ok(true),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(v) => Err(PlanError::Annotation {
            annotation: ANNOTATION_SNAPSHOT,
            value: v.clone(),
        }),
    }
}

/// What a call outside the VMM's seccomp filters does
/// ([`crate::jail::seccomp::ANNOTATION`]: `enforce`, the default, or `log`).
pub fn vmm_seccomp_mode(
    spec: &oci_spec::runtime::Spec,
) -> Result<crate::jail::seccomp::Mode, PlanError> {
    use crate::jail::seccomp::{Mode, ANNOTATION};
    match spec.annotations().as_ref().and_then(|a| a.get(ANNOTATION)) {
        None => Ok(Mode::default()),
        Some(v) => Mode::parse(v).ok_or_else(|| PlanError::SeccompAnnotation { value: v.clone() }),
    }
}

/// Whether the VMM pivots into its jail ([`crate::jail::root::ANNOTATION`]:
/// `on`, the default, or `off`).
pub fn vmm_jail(spec: &oci_spec::runtime::Spec) -> Result<bool, PlanError> {
    use crate::jail::root::{parse_annotation, ANNOTATION};
    match spec.annotations().as_ref().and_then(|a| a.get(ANNOTATION)) {
        None => Ok(true),
        Some(v) => {
            parse_annotation(v).ok_or_else(|| PlanError::JailAnnotation { value: v.clone() })
        }
    }
}

/// The VMM's user as [`crate::jail::user::ANNOTATION`] asks (`auto`, the
/// default, `root` or `UID[:GID]`).
pub fn vmm_user_choice(
    spec: &oci_spec::runtime::Spec,
) -> Result<crate::jail::user::Choice, PlanError> {
    use crate::jail::user::{parse_annotation, Choice, ANNOTATION};
    match spec.annotations().as_ref().and_then(|a| a.get(ANNOTATION)) {
        None => Ok(Choice::Auto),
        Some(v) => {
            parse_annotation(v).ok_or_else(|| PlanError::UserAnnotation { value: v.clone() })
        }
    }
}

fn default_true() -> bool {
    true
}

/// Environment variable with extra guest kernel parameters for container VMs.
pub const ENV_KERNEL_ARGS: &str = "HUSK_KERNEL_ARGS";

/// The network namespace the VM's NICs stand for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    /// `linux.namespaces[type=network].path`; empty when [`Self::own`].
    pub netns: PathBuf,
    /// Offer offloads to the guest ([`ANNOTATION_NET_OFFLOAD`]).
    pub offload: bool,
    /// The spec asks for a new namespace: the VMM process gets one of its
    /// own, which an engine may plumb from a prestart hook through the
    /// container's pid (Docker's libnetwork does), before the VMM reads it.
    #[serde(default)]
    pub own: bool,
}

/// The network part of a spec: a network namespace with a path is the
/// engine's, and the VM gets its interfaces; a new one (no path) is created
/// for the VMM process, and the VM gets what hooks put there (nothing but
/// loopback otherwise). No network namespace at all gives the guest loopback
/// only: a VM cannot share the host's network stack.
pub fn network_plan(spec: &oci_spec::runtime::Spec) -> Result<Option<NetworkPlan>, PlanError> {
    let offload = match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_NET_OFFLOAD))
    {
        None => true,
        Some(v) if v == "true" => true,
        Some(v) if v == "false" => false,
        Some(v) => {
            return Err(PlanError::Annotation {
                annotation: ANNOTATION_NET_OFFLOAD,
                value: v.clone(),
            })
        }
    };
    Ok(network_namespace(spec).map(|ns| match ns.path() {
        Some(netns) => NetworkPlan {
            netns: netns.clone(),
            offload,
            own: false,
        },
        None => NetworkPlan {
            netns: PathBuf::new(),
            offload,
            own: true,
        },
    }))
}

fn network_namespace(spec: &oci_spec::runtime::Spec) -> Option<&oci_spec::runtime::LinuxNamespace> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|nss| {
            nss.iter()
                .find(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
        })
}

/// The VM and container a VMM process runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPlan {
    pub kernel: PathBuf,
    pub init: PathBuf,
    pub mem_mib: u32,
    pub vcpus: u32,
    /// The cached rootfs image, attached read-only (overlay in the guest),
    /// for [`RootfsMode::Block`]; `None`: the rootfs is one of
    /// [`Self::shares`] ([`RootfsMode::Share`]).
    #[serde(default)]
    pub rootfs_image: Option<PathBuf>,
    pub control_socket: PathBuf,
    pub console_log: PathBuf,
    pub container: ContainerSpec,
    /// The engine's network, if it gave one.
    #[serde(default)]
    pub network: Option<NetworkPlan>,
    /// Start from a template snapshot when the VM has no NIC
    /// ([`ANNOTATION_SNAPSHOT`]).
    #[serde(default)]
    pub snapshot: bool,
    /// Host directories shared with the guest over virtio-fs (the VMM
    /// stages them, [`crate::storage::share`]).
    #[serde(default)]
    pub shares: Vec<SharedDir>,
    /// The container's id mappings, applied to its shared files
    /// ([`id_maps`]).
    #[serde(default)]
    pub ids: IdMaps,
    /// What the VMM's seccomp filters do with a call they do not allow
    /// ([`vmm_seccomp_mode`]).
    #[serde(default)]
    pub vmm_seccomp: crate::jail::seccomp::Mode,
    /// Whether the VMM pivots into its jail ([`vmm_jail`]).
    #[serde(default = "default_true")]
    pub vmm_jail: bool,
    /// The VMM's uts and ipc namespaces, as the spec gives them to the
    /// container ([`crate::jail::ns`]).
    #[serde(default)]
    pub vmm_ns: crate::jail::ns::VmmNamespaces,
    /// The user the VMM's threads drop to ([`crate::jail::user`]); `None`:
    /// they stay the caller's (rootless, `io.husk.vmm.user=root`, or no
    /// jail).
    #[serde(default)]
    pub vmm_user: Option<crate::jail::user::VmmUser>,
    /// `husk restore`: the checkpoint the VM continues from.
    #[serde(default)]
    pub restore_from: Option<PathBuf>,
}

/// The uid and gid mappings of a container with a new user namespace
/// (`linux.uidMappings` / `gidMappings`, as runc applies them), checked;
/// the identity without one.
pub fn id_maps(spec: &oci_spec::runtime::Spec) -> Result<IdMaps, PlanError> {
    let Some(linux) = spec.linux().as_ref() else {
        return Ok(IdMaps::default());
    };
    let new_userns = linux.namespaces().as_ref().is_some_and(|nss| {
        nss.iter().any(|ns| {
            ns.typ() == oci_spec::runtime::LinuxNamespaceType::User && ns.path().is_none()
        })
    });
    if !new_userns {
        return Ok(IdMaps::default());
    }
    let ranges = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<IdRange> {
        m.iter()
            .flatten()
            .map(|r| IdRange {
                container: r.container_id(),
                host: r.host_id(),
                size: r.size(),
            })
            .collect()
    };
    Ok(IdMaps {
        uid: IdMap::new("linux.uidMappings", ranges(linux.uid_mappings()))?,
        gid: IdMap::new("linux.gidMappings", ranges(linux.gid_mappings()))?,
    })
}

/// What the fs server maps for a container whose user namespace is the
/// guest's: the guest already speaks host ids, so the map is the identity
/// on the host ranges of `maps` and nothing else (an id outside them is
/// unmapped: it cannot own what it creates, and host owners outside them
/// show as nobody). The identity when `maps` is.
pub fn guest_ids(maps: &IdMaps) -> Result<IdMaps, PlanError> {
    let on_host = |m: &IdMap| -> Vec<IdRange> {
        m.ranges()
            .iter()
            .map(|r| IdRange {
                container: r.host,
                host: r.host,
                size: r.size,
            })
            .collect()
    };
    if maps.uid.is_identity() && maps.gid.is_identity() {
        return Ok(IdMaps::default());
    }
    Ok(IdMaps {
        uid: IdMap::new("linux.uidMappings", on_host(&maps.uid))?,
        gid: IdMap::new("linux.gidMappings", on_host(&maps.gid))?,
    })
}

/// Errors reading or writing a plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "annotation io.husk.vmm.seccomp={value:?} is neither \"enforce\" (the default: a call \
         outside the VMM's filters stops it) nor \"log\" (such calls go through and the kernel \
         logs them)"
    )]
    SeccompAnnotation { value: String },
    #[error(
        "annotation {}={value:?} is neither \"on\" nor \"off\" (\"off\" keeps the VMM in the \
         host's root; docs/security.md)",
        crate::jail::root::ANNOTATION
    )]
    JailAnnotation { value: String },
    #[error(
        "annotation {}={value:?} is none of \"auto\" (a uid of husk's range for this \
         container's VMM), \"root\" (the VMM stays uid 0, without capabilities) or \
         \"UID[:GID]\" (not 0); docs/security.md",
        crate::jail::user::ANNOTATION
    )]
    UserAnnotation { value: String },
    #[error(transparent)]
    Namespace(#[from] crate::jail::ns::NsError),
    #[error("annotation {annotation}={value:?} is neither \"true\" nor \"false\"")]
    Annotation {
        annotation: &'static str,
        value: String,
    },
    #[error(transparent)]
    IdMap(#[from] IdMapError),
    #[error(
        "annotation {ANNOTATION_ROOTFS}={value:?}: use \"virtiofs\" (the default: the \
         bundle's rootfs served from the host, writes kept) or \"block\" (a cached \
         image of it, writes in guest memory)"
    )]
    RootfsAnnotation { value: String },
}

impl VmPlan {
    pub fn save(&self, dir: &Path) -> Result<(), PlanError> {
        let path = dir.join(PLAN_FILE);
        let data = serde_json::to_vec(self).unwrap_or_default();
        std::fs::write(&path, data).map_err(|source| PlanError::Write { path, source })
    }

    pub fn load(dir: &Path) -> Result<VmPlan, PlanError> {
        let path = dir.join(PLAN_FILE);
        let data = std::fs::read(&path).map_err(|source| PlanError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&data).map_err(|source| PlanError::Parse { path, source })
    }

    /// The kernel command line of a container VM. With a block image: the
    /// image (read-only underneath, the disk is attached read-only) under a
    /// writable overlay. Without: no root device, the agent serves from the
    /// initramfs and enters the shared rootfs at create (the same line for
    /// every image, so one template serves them all). `root.readonly` is
    /// applied by the agent once the container is set up.
    /// `$HUSK_KERNEL_ARGS` is appended (`ignore_loglevel` to see the
    /// guest kernel's warnings in `console.log`, say).
    pub fn cmdline(&self) -> String {
        let mut line = format!(
            "{} {}=1 {}=1",
            config::BASE_CMDLINE,
            proto::PARAM_QUIET,
            proto::PARAM_AGENT,
        );
        if self.rootfs_image.is_some() {
            line.push_str(&format!(
                " {}=1 {}=/dev/vda",
                proto::PARAM_OVERLAY,
                proto::PARAM_ROOT
            ));
        }
        if let Some(extra) = std::env::var_os(ENV_KERNEL_ARGS) {
            let extra = extra.to_string_lossy();
            if !extra.trim().is_empty() {
                line.push(' ');
                line.push_str(extra.trim());
            }
        }
        line
    }

    /// The VM configuration, with the network attached (`nics` empty
    /// without one); `initramfs` is built by the caller, and only when the
    /// VM boots (a VM restored from a template has it in its memory).
    /// The VM: `nics` are the taps made for it, `share_root` the directory
    /// its shared directories were staged in (when it has any).
    pub fn vm_config(
        &self,
        initramfs: Option<Vec<u8>>,
        nics: &[NicPlan],
        share_root: Option<&Path>,
    ) -> VmConfig {
        let mut c = VmConfig::new(self.kernel.clone());
        c.initramfs = initramfs.map(|b| Initramfs::Bytes(std::sync::Arc::new(b)));
        c.cmdline = self.cmdline();
        c.mem_mib = self.mem_mib;
        c.vcpus = self.vcpus;
        c.block = self
            .rootfs_image
            .iter()
            .map(|image| BlockConfig {
                path: image.clone(),
                read_only: true,
                id: "husk-root".into(),
            })
            .collect();
        let offload = self.network.as_ref().is_none_or(|n| n.offload);
        c.net = nics
            .iter()
            .map(|n| NetConfig {
                tap: n.tap.clone(),
                mac: n.mac,
                // attach() refused MTUs beyond u16.
                mtu: u16::try_from(n.mtu).unwrap_or(u16::MAX),
                offload,
                detached: false,
            })
            .collect();
        c.fs = share_root
            .map(|root| FsConfig {
                tag: crate::runtime::guest_spec::SHARE_TAG.into(),
                root: root.to_path_buf(),
                // Read-only shares are read-only mounts in the staging
                // directory; the rest are the container's to write.
                read_only: false,
                ids: self.ids.clone(),
            })
            .into_iter()
            .collect();
        c.console = ConsoleOutput::File(self.console_log.clone());
        c.vsock = Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: self.control_socket.clone(),
        });
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_round_trip_and_make_an_agent_vm() {
        let dir = tempfile::tempdir().unwrap();
        let plan = VmPlan {
            kernel: "/k".into(),
            init: "/i".into(),
            mem_mib: 192,
            vcpus: 2,
            rootfs_image: Some("/img".into()),
            control_socket: dir.path().join("vsock"),
            console_log: dir.path().join("console.log"),
            container: ContainerSpec::default(),
            network: Some(NetworkPlan {
                netns: "/var/run/netns/x".into(),
                offload: false,
                own: false,
            }),
            snapshot: true,
            shares: vec![SharedDir {
                name: "m0".into(),
                source: "/data".into(),
                read_only: true,
                recursive: false,
                file: false,
            }],
            ids: IdMaps::default(),
            vmm_seccomp: crate::jail::seccomp::Mode::Log,
            vmm_jail: false,
            vmm_user: None,
            restore_from: None,
            vmm_ns: crate::jail::ns::VmmNamespaces {
                uts: crate::jail::ns::Ns::New,
                ipc: crate::jail::ns::Ns::Join("/proc/1/ns/ipc".into()),
                pid: crate::jail::ns::Ns::New,
                cgroup: crate::jail::ns::Ns::Host,
                hostname: Some("web".into()),
                ..Default::default()
            },
        };
        plan.save(dir.path()).unwrap();
        assert_eq!(VmPlan::load(dir.path()).unwrap(), plan);
        let nic = NicPlan {
            ifname: "eth0".into(),
            tap: "husktap0".into(),
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1450,
        };
        let c = plan.vm_config(Some(vec![1]), std::slice::from_ref(&nic), None);
        assert!(c.fs.is_empty());
        let shared = plan.vm_config(None, &[], Some(Path::new("/run/x/share")));
        assert_eq!(
            shared.fs,
            [FsConfig {
                tag: "husk".into(),
                root: "/run/x/share".into(),
                read_only: false,
                ids: IdMaps::default(),
            }]
        );
        assert_eq!(
            c.net,
            vec![NetConfig {
                tap: "husktap0".into(),
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 1450,
                offload: false,
                detached: false,
            }]
        );
        assert!(c.cmdline.contains("husk.agent=1") && c.cmdline.contains("husk.overlay=1"));
        assert!(c.block[0].read_only);
        assert_eq!(c.vsock.as_ref().unwrap().guest_cid, GUEST_CID);
        assert!(c.validate().is_ok());
    }

    fn spec_with(namespaces: &str, annotations: &str) -> oci_spec::runtime::Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},
               "annotations":{{{annotations}}},
               "linux":{{"namespaces":[{namespaces}]}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn the_network_comes_from_a_namespace_path() {
        let spec = spec_with(
            r#"{"type":"pid"},{"type":"network","path":"/run/netns/cni-1"}"#,
            "",
        );
        assert_eq!(
            network_plan(&spec).unwrap(),
            Some(NetworkPlan {
                netns: "/run/netns/cni-1".into(),
                offload: true,
                own: false,
            })
        );
        // A new namespace: the VMM's own. None: loopback only.
        assert_eq!(
            network_plan(&spec_with(r#"{"type":"network"}"#, "")).unwrap(),
            Some(NetworkPlan {
                netns: PathBuf::new(),
                offload: true,
                own: true,
            })
        );
        assert_eq!(
            network_plan(&spec_with(r#"{"type":"pid"}"#, "")).unwrap(),
            None
        );
        let off = spec_with(
            r#"{"type":"network","path":"/n"}"#,
            r#""io.husk.net.offload":"false""#,
        );
        assert!(!network_plan(&off).unwrap().unwrap().offload);
        let bad = spec_with(
            r#"{"type":"network","path":"/n"}"#,
            r#""io.husk.net.offload":"maybe""#,
        );
        let err = network_plan(&bad).unwrap_err();
        assert!(err.to_string().contains("io.husk.net.offload"), "{err}");
    }

    #[test]
    fn the_snapshot_annotation_is_true_false_or_an_error() {
        let with = |v: Option<&str>| -> oci_spec::runtime::Spec {
            let annotations = v.map_or(String::new(), |v| {
                format!(r#","annotations":{{"io.husk.snapshot":"{v}"}}"#)
            });
            serde_json::from_str(&format!(r#"{{"ociVersion":"1.0.2"{annotations}}}"#)).unwrap()
        };
        assert!(snapshot_allowed(&with(None)).unwrap());
        assert!(snapshot_allowed(&with(Some("true"))).unwrap());
        assert!(!snapshot_allowed(&with(Some("false"))).unwrap());
        let err = snapshot_allowed(&with(Some("yes"))).unwrap_err();
        assert!(err.to_string().contains("io.husk.snapshot"), "{err}");
    }

    #[test]
    fn the_vmm_seccomp_annotation_is_enforce_log_or_an_error() {
        use crate::jail::seccomp::Mode;
        let with = |v: Option<&str>| -> oci_spec::runtime::Spec {
            let annotations = v.map_or(String::new(), |v| {
                format!(r#","annotations":{{"io.husk.vmm.seccomp":"{v}"}}"#)
            });
            serde_json::from_str(&format!(r#"{{"ociVersion":"1.0.2"{annotations}}}"#)).unwrap()
        };
        assert_eq!(vmm_seccomp_mode(&with(None)).unwrap(), Mode::Enforce);
        assert_eq!(
            vmm_seccomp_mode(&with(Some("enforce"))).unwrap(),
            Mode::Enforce
        );
        assert_eq!(vmm_seccomp_mode(&with(Some("log"))).unwrap(), Mode::Log);
        let err = vmm_seccomp_mode(&with(Some("off")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("io.husk.vmm.seccomp") && err.contains("\"off\""),
            "{err}"
        );
    }

    #[test]
    fn a_shared_rootfs_has_no_disk_and_no_root_parameters() {
        let plan = VmPlan {
            kernel: "/k".into(),
            init: "/i".into(),
            mem_mib: 128,
            vcpus: 1,
            rootfs_image: None,
            control_socket: "/s/vsock".into(),
            console_log: "/s/console.log".into(),
            container: ContainerSpec::default(),
            network: None,
            snapshot: true,
            shares: vec![],
            ids: IdMaps::default(),
            vmm_seccomp: Default::default(),
            vmm_jail: true,
            vmm_ns: Default::default(),
            vmm_user: None,
            restore_from: None,
        };
        let c = plan.vm_config(None, &[], Some(Path::new("/s/share")));
        assert!(c.block.is_empty());
        assert_eq!(c.fs.len(), 1);
        assert!(c.cmdline.contains("husk.agent=1"), "{}", c.cmdline);
        assert!(
            !c.cmdline.contains("husk.root") && !c.cmdline.contains("husk.overlay"),
            "{}",
            c.cmdline
        );
        assert!(c.validate().is_ok());
        // A plan written before the field was optional still loads.
        let dir = tempfile::tempdir().unwrap();
        let mut json = serde_json::to_value(&plan).unwrap();
        json["rootfs_image"] = "/cache/rootfs/dir-1.ext4".into();
        std::fs::write(dir.path().join(PLAN_FILE), json.to_string()).unwrap();
        assert_eq!(
            VmPlan::load(dir.path()).unwrap().rootfs_image.as_deref(),
            Some(Path::new("/cache/rootfs/dir-1.ext4"))
        );
    }

    #[test]
    fn the_rootfs_annotation_is_virtiofs_block_or_an_error_naming_both() {
        let with = |v: &str| spec_with("", &format!(r#""io.husk.rootfs":"{v}""#));
        assert_eq!(rootfs_mode(&spec_with("", "")).unwrap(), RootfsMode::Share);
        assert_eq!(rootfs_mode(&with("virtiofs")).unwrap(), RootfsMode::Share);
        assert_eq!(rootfs_mode(&with("block")).unwrap(), RootfsMode::Block);
        let err = rootfs_mode(&with("ext4")).unwrap_err().to_string();
        assert!(
            err.contains("io.husk.rootfs") && err.contains("\"ext4\"") && err.contains("block"),
            "{err}"
        );
    }

    /// A spec with these `linux.namespaces` entries and extra `linux` fields.
    fn linux_spec(nss: &str, maps: &str) -> oci_spec::runtime::Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":[{nss}]{maps}}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn the_guest_speaks_host_ids_within_the_maps_only() {
        use crate::vmm::devices::virtio::fs::idmap::OVERFLOW_ID;
        let spec = linux_spec;
        let maps = r#","uidMappings":[{"containerID":0,"hostID":1000,"size":2000}],
            "gidMappings":[{"containerID":0,"hostID":5000,"size":10}]"#;
        let m = guest_ids(&id_maps(&spec(r#"{"type":"user"}"#, maps)).unwrap()).unwrap();
        assert_eq!(m.uid.to_host(1000), Some(1000));
        assert_eq!(m.uid.to_host(2999), Some(2999));
        assert_eq!(
            m.uid.to_host(0),
            None,
            "the guest's root is nobody on the host"
        );
        assert_eq!(m.uid.to_container(0), OVERFLOW_ID);
        assert_eq!(m.gid.to_host(5009), Some(5009));
        assert_eq!(m.gid.to_host(5010), None);
        assert!(guest_ids(&IdMaps::default()).unwrap().uid.is_identity());
    }

    #[test]
    fn id_maps_come_with_a_new_user_namespace_and_bad_ones_are_named() {
        let spec = linux_spec;
        let maps = r#","uidMappings":[{"containerID":0,"hostID":1000,"size":2000}],
                      "gidMappings":[{"containerID":0,"hostID":1000,"size":3000}]"#;
        let m = id_maps(&spec(r#"{"type":"user"}"#, maps)).unwrap();
        assert_eq!(m.uid.to_host(0), Some(1000));
        assert_eq!(m.gid.to_host(2999), Some(3999));
        assert_eq!(m.uid.to_host(2000), None);
        // Without a new user namespace the maps mean nothing (as runc).
        assert!(id_maps(&spec(r#"{"type":"pid"}"#, maps))
            .unwrap()
            .uid
            .is_identity());
        assert!(
            id_maps(&spec(r#"{"type":"user","path":"/proc/1/ns/user"}"#, maps))
                .unwrap()
                .uid
                .is_identity()
        );
        let bad = r#","uidMappings":[{"containerID":0,"hostID":1000,"size":0}]"#;
        let err = id_maps(&spec(r#"{"type":"user"}"#, bad))
            .unwrap_err()
            .to_string();
        assert!(err.contains("linux.uidMappings"), "{err}");
    }

    #[test]
    fn a_missing_plan_is_named() {
        let err = VmPlan::load(Path::new("/no/such/dir")).unwrap_err();
        assert!(err.to_string().contains("/no/such/dir/vm.json"));
    }
}
