//! OCI `config.json` -> what husk-init needs ([`ContainerSpec`]): a pure
//! translation, with the host-side part (what a bind source is) behind a
//! small reader function so it is unit-tested without a bundle.
//!
//! What changes on the way into a VM:
//! - directory and file bind mounts (volumes; `/etc/hosts`,
//!   `/etc/resolv.conf`, `/etc/hostname`, `/run/.containerenv`, secrets) are
//!   shared from the host over virtio-fs ([`SharedDir`]: the VMM serves
//!   them, the guest binds each with the mount's options), so an engine that
//!   rewrites a file later is seen inside; except a directory on `/dev/shm`
//!   (podman and CRI-O bind
//!   a host tmpfs there): shared memory cannot cross the VM boundary
//!   anyway, so the guest gets its own tmpfs;
//! - a device bind mount becomes a device node of the same numbers in the
//!   container's `/dev` (the guest's device: the VM's null, zero, fuse);
//! - `cgroup` (v1) mounts become cgroup2, the guest kernel's only hierarchy.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, Process, Spec};

/// Where engines bind a host tmpfs for POSIX shared memory.
pub const SHM: &str = "/dev/shm";
/// The guest's own `/dev/shm` in its place (podman's default size).
const SHM_OPTIONS: [&str; 5] = ["nosuid", "nodev", "noexec", "mode=1777", "size=65536k"];

use crate::agent_proto::{
    Capabilities, ContainerSpec, DeviceSpec, GuestHook, MountSpec, ProcessSpec, Rlimit,
    SHARE_FSTYPE,
};

/// The virtio-fs tag under which the VMM serves a container's shared
/// directories.
pub const SHARE_TAG: &str = "husk";

/// The name of the container's root file system in the share, when it is
/// served from the host ([`share_rootfs`]); the binds are `m0`, `m1`, ...
pub const ROOTFS_SHARE: &str = "rootfs";

/// Serves the bundle's `rootfs` directory to the guest as its root: a
/// recursive, writable share the agent switches into at create (`root.readonly`
/// is the agent's read-only remount, as runc makes it, so mount points can
/// still be created first).
pub fn share_rootfs(container: &mut ContainerSpec, shares: &mut Vec<SharedDir>, rootfs: &Path) {
    shares.push(SharedDir {
        name: ROOTFS_SHARE.into(),
        source: rootfs.to_path_buf(),
        read_only: false,
        recursive: true,
        file: false,
    });
    container.share_tag = Some(SHARE_TAG.to_owned());
    container.root_share = Some(ROOTFS_SHARE.to_owned());
}

/// A host directory or file the container shares (a bind mount): the VMM
/// makes it `name` in the directory it serves over virtio-fs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedDir {
    /// Its name in the share (`m0`, `m1`, ...).
    pub name: String,
    /// The host directory.
    pub source: PathBuf,
    /// `ro`: read-only on the host side too (the guest cannot remount it).
    pub read_only: bool,
    /// `rbind`: the mounts under `source` come along.
    pub recursive: bool,
    /// A regular file, not a directory.
    #[serde(default)]
    pub file: bool,
}

/// Errors translating a spec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuestSpecError {
    #[error("config.json has no process")]
    NoProcess,
    #[error("process.args must not be empty")]
    NoArgs,
    #[error("mount {destination}: cannot read bind source {source_path}: {reason}")]
    BindSource {
        destination: String,
        source_path: PathBuf,
        reason: String,
    },
    #[error(
        "mount {destination}: bind source {source_path} is {kind}; husk shares \
         directories and regular files with the VM, and {kind} cannot cross \
         into it (use a directory or file, or reach the service over the network)"
    )]
    BindKind {
        destination: String,
        source_path: PathBuf,
        kind: &'static str,
    },
    #[error("process.{field}: {reason}")]
    Process { field: &'static str, reason: String },
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(
        "linux.rootfsPropagation {0:?}: not a propagation; use shared, slave, private or \
         unbindable, or their r-prefixed recursive forms"
    )]
    Propagation(String),
}

/// What a bind source is, as far as the translation cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindSource {
    File,
    Directory,
    /// A device node: block or character, its numbers and permission bits.
    Device {
        block: bool,
        major: u64,
        minor: u64,
        mode: u32,
    },
    Socket,
    Other,
}

/// Reads a bind source on the host.
pub fn read_bind_source(path: &Path) -> Result<BindSource, String> {
    use std::os::unix::fs::FileTypeExt as _;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let ft = meta.file_type();
    Ok(if ft.is_file() {
        BindSource::File
    } else if ft.is_dir() {
        BindSource::Directory
    } else if ft.is_char_device() || ft.is_block_device() {
        use std::os::unix::fs::MetadataExt as _;
        BindSource::Device {
            block: ft.is_block_device(),
            major: libc::major(meta.rdev()).into(),
            minor: libc::minor(meta.rdev()).into(),
            mode: meta.mode() & 0o7777,
        }
    } else if ft.is_socket() {
        BindSource::Socket
    } else {
        BindSource::Other
    })
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

/// The whole translation. `bundle` resolves relative bind sources;
/// `read_source` reads them (use [`read_bind_source`]). Returns what the
/// guest sets up and the host directories the VMM shares for it.
pub fn container_spec(
    id: &str,
    spec: &Spec,
    bundle: &Path,
    read_source: &dyn Fn(&Path) -> Result<BindSource, String>,
) -> Result<(ContainerSpec, Vec<SharedDir>), GuestSpecError> {
    let process = process_spec(spec.process().as_ref().ok_or(GuestSpecError::NoProcess)?)?;
    let mut mounts = Vec::new();
    let mut devices = Vec::new();
    let mut shares: Vec<SharedDir> = Vec::new();
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let destination = m.destination().to_string_lossy().into_owned();
        let options = m.options().clone().unwrap_or_default();
        if is_bind(m) {
            let source = m.source().clone().unwrap_or_default();
            let source = if source.is_absolute() {
                source
            } else {
                bundle.join(source)
            };
            let read = read_source(&source).map_err(|reason| GuestSpecError::BindSource {
                destination: destination.clone(),
                source_path: source.clone(),
                reason,
            })?;
            match read {
                BindSource::Directory if destination == SHM => mounts.push(MountSpec {
                    destination,
                    fstype: "tmpfs".into(),
                    source: "shm".into(),
                    options: SHM_OPTIONS.iter().map(|o| o.to_string()).collect(),
                }),
                BindSource::Directory | BindSource::File => {
                    let name = format!("m{}", shares.len());
                    shares.push(SharedDir {
                        name: name.clone(),
                        source,
                        read_only: options.iter().any(|o| o == "ro"),
                        recursive: options.iter().any(|o| o == "rbind"),
                        file: read == BindSource::File,
                    });
                    mounts.push(MountSpec {
                        destination,
                        fstype: SHARE_FSTYPE.into(),
                        source: name,
                        options,
                    });
                }
                BindSource::Device {
                    block,
                    major,
                    minor,
                    mode,
                } => {
                    // The guest's own device of the same numbers (the VM's
                    // null, zero, fuse...), made where the bind would be.
                    devices.push(DeviceSpec {
                        path: destination,
                        kind: if block { "b" } else { "c" }.into(),
                        major,
                        minor,
                        mode,
                        uid: 0,
                        gid: 0,
                    });
                }
                BindSource::Socket => {
                    return Err(GuestSpecError::BindKind {
                        destination,
                        source_path: source,
                        kind: "a Unix socket",
                    })
                }
                BindSource::Other => {
                    return Err(GuestSpecError::BindKind {
                        destination,
                        source_path: source,
                        kind: "a FIFO or other special file",
                    })
                }
            }
            continue;
        }
        let mut fstype = m.typ().clone().unwrap_or_else(|| "none".into());
        let mut source = m
            .source()
            .as_ref()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| fstype.clone());
        if fstype == "cgroup" {
            fstype = "cgroup2".into();
            source = "cgroup2".into();
        }
        mounts.push(MountSpec {
            destination,
            fstype,
            source,
            options,
        });
    }
    let linux = spec.linux().as_ref();
    let guest_hooks = |hooks: Option<&Vec<oci_spec::runtime::Hook>>| -> Vec<GuestHook> {
        hooks
            .map(|v| {
                v.iter()
                    .map(|h| GuestHook {
                        path: h.path().to_string_lossy().into_owned(),
                        args: h.args().clone().unwrap_or_default(),
                        env: h.env().clone().unwrap_or_default(),
                        timeout: h
                            .timeout()
                            .and_then(|t| u32::try_from(t).ok())
                            .filter(|t| *t > 0),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let hooks = spec.hooks().as_ref();
    let create_container_hooks = guest_hooks(hooks.and_then(|h| h.create_container().as_ref()));
    let start_container_hooks = guest_hooks(hooks.and_then(|h| h.start_container().as_ref()));
    let mut sysctl: Vec<(String, String)> = linux
        .and_then(|l| l.sysctl().clone())
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    sysctl.sort();
    let share_tag = (!shares.is_empty()).then(|| SHARE_TAG.to_owned());
    let seccomp = match linux.and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => {
            let (program, skipped) = crate::seccomp::compile(profile)?;
            if !skipped.is_empty() {
                log::debug!(
                    "linux.seccomp: skipping calls x86_64 does not have: {}",
                    skipped.join(" ")
                );
            }
            Some(program)
        }
        None => None,
    };
    let rootfs_propagation = linux
        .and_then(|l| l.rootfs_propagation().clone())
        .filter(|p| !p.is_empty());
    if let Some(p) = rootfs_propagation.as_deref() {
        if husk_init::agent::setup::propagation_flags(p).is_none() {
            return Err(GuestSpecError::Propagation(p.to_owned()));
        }
    }
    let container = ContainerSpec {
        id: id.to_owned(),
        hostname: spec.hostname().clone(),
        process,
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        mounts,
        files: Vec::new(),
        masked_paths: linux
            .and_then(|l| l.masked_paths().clone())
            .unwrap_or_default(),
        readonly_paths: linux
            .and_then(|l| l.readonly_paths().clone())
            .unwrap_or_default(),
        sysctl,
        create_container_hooks,
        start_container_hooks,
        hook_state: String::new(),
        network: Default::default(),
        host_sync: Default::default(),
        share_tag,
        root_share: None,
        seccomp,
        namespaces: linux
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .iter()
            .map(|n| serde_name(&n.typ()))
            .filter(|t| matches!(t.as_str(), "pid" | "uts" | "ipc" | "cgroup"))
            .collect(),
        rootfs_propagation,
        // Checked and filled in by create (`vm_plan::id_maps`).
        uid_map: Vec::new(),
        gid_map: Vec::new(),
        // A pod's later containers only (the shim's).
        join_namespaces: Vec::new(),
        resources: None,
        devices: spec_devices(linux).into_iter().chain(devices).collect(),
    };
    Ok((container, shares))
}

/// OCI `linux.devices`, for the guest.
fn spec_devices(linux: Option<&oci_spec::runtime::Linux>) -> Vec<DeviceSpec> {
    linux
        .and_then(|l| l.devices().clone())
        .unwrap_or_default()
        .iter()
        .map(|d| DeviceSpec {
            path: d.path().to_string_lossy().into_owned(),
            kind: serde_name(&d.typ()),
            major: u64::try_from(d.major()).unwrap_or(0),
            minor: u64::try_from(d.minor()).unwrap_or(0),
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        })
        .collect()
}

fn serde_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn cap_names(set: &Option<oci_spec::runtime::Capabilities>) -> Option<Vec<String>> {
    set.as_ref().map(|s| {
        let mut names: Vec<String> = s.iter().map(serde_name).collect();
        names.sort();
        names
    })
}

/// The `process` object (also used for `exec --process`).
pub fn process_spec(p: &Process) -> Result<ProcessSpec, GuestSpecError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(GuestSpecError::NoArgs);
    }
    let user = p.user();
    let rlimits = p
        .rlimits()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|r| Rlimit {
            kind: serde_name(&r.typ()),
            soft: r.soft(),
            hard: r.hard(),
        })
        .collect();
    let capabilities = p.capabilities().as_ref().map(|c| Capabilities {
        bounding: cap_names(c.bounding()),
        effective: cap_names(c.effective()),
        inheritable: cap_names(c.inheritable()),
        permitted: cap_names(c.permitted()),
        ambient: cap_names(c.ambient()),
    });
    let console_size = p.console_size().as_ref().map(|b| {
        (
            u16::try_from(b.height()).unwrap_or(u16::MAX),
            u16::try_from(b.width()).unwrap_or(u16::MAX),
        )
    });
    Ok(ProcessSpec {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().to_string_lossy().into_owned(),
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        terminal: p.terminal().unwrap_or(false),
        console_size,
        rlimits,
        capabilities,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        oom_score_adj: p.oom_score_adj(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    const BASE: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 1000, "gid": 100, "additionalGids": [10], "umask": 18},
            "args": ["sh", "-c", "id"], "env": ["PATH=/bin", "A=b"], "cwd": "/work",
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
            "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"]},
            "noNewPrivileges": true, "consoleSize": {"height": 24, "width": 80}},
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "box",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "/h/hosts", "options": ["rbind", "ro"]},
            {"destination": "/etc/resolv.conf", "source": "resolv.conf", "options": ["bind"]}
        ],
        "linux": {"maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"], "sysctl": {"net.ipv4.ip_forward": "1"}}
    }"#;

    fn files(path: &Path) -> Result<BindSource, String> {
        match path.to_str().unwrap() {
            "/h/hosts" | "/bundle/resolv.conf" => Ok(BindSource::File),
            "/h/sock" => Ok(BindSource::Socket),
            "/h/dir" => Ok(BindSource::Directory),
            "/dev/null" => Ok(BindSource::Device {
                block: false,
                major: 1,
                minor: 3,
                mode: 0o666,
            }),
            other => Err(format!("{other}: No such file or directory")),
        }
    }

    #[test]
    fn translates_process_mounts_files_and_linux_fields() {
        let (c, shares) = container_spec("c1", &spec(BASE), Path::new("/bundle"), &files).unwrap();
        // The bound files are shared, live: the engine may rewrite them.
        assert_eq!(c.share_tag.as_deref(), Some(SHARE_TAG));
        assert_eq!(
            shares,
            [
                SharedDir {
                    name: "m0".into(),
                    source: "/h/hosts".into(),
                    read_only: true,
                    recursive: true,
                    file: true,
                },
                SharedDir {
                    name: "m1".into(),
                    source: "/bundle/resolv.conf".into(),
                    read_only: false,
                    recursive: false,
                    file: true,
                },
            ]
        );
        assert!(c.files.is_empty());
        let p = &c.process;
        assert_eq!(p.args, ["sh", "-c", "id"]);
        assert_eq!((p.uid, p.gid, p.umask), (1000, 100, Some(18)));
        assert_eq!(p.additional_gids, [10]);
        assert_eq!(p.cwd, "/work");
        assert_eq!(
            p.rlimits,
            [Rlimit {
                kind: "RLIMIT_NOFILE".into(),
                soft: 512,
                hard: 1024
            }]
        );
        let caps = p.capabilities.as_ref().unwrap();
        assert_eq!(
            caps.bounding.as_deref(),
            Some(&["CAP_CHOWN".to_string(), "CAP_KILL".to_string()][..])
        );
        assert_eq!(caps.permitted, None);
        assert!(p.no_new_privileges);
        assert_eq!(p.console_size, Some((24, 80)));
        assert_eq!(c.hostname.as_deref(), Some("box"));
        assert!(c.readonly_root);
        let dests: Vec<(&str, &str)> = c
            .mounts
            .iter()
            .map(|m| (m.destination.as_str(), m.fstype.as_str()))
            .collect();
        assert_eq!(
            dests,
            [
                ("/proc", "proc"),
                ("/dev", "tmpfs"),
                ("/sys/fs/cgroup", "cgroup2"),
                ("/etc/hosts", SHARE_FSTYPE),
                ("/etc/resolv.conf", SHARE_FSTYPE),
            ]
        );
        assert!(c.mounts[1].options.iter().any(|o| o == "size=65536k"));
        assert_eq!(c.mounts[3].options, ["rbind", "ro"]);
        assert_eq!(c.masked_paths, ["/proc/kcore"]);
        assert_eq!(c.readonly_paths, ["/proc/sys"]);
        assert_eq!(
            c.sysctl,
            [("net.ipv4.ip_forward".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn a_bound_dev_shm_becomes_the_guests_own_tmpfs() {
        // As podman passes it: its host tmpfs, bind-mounted.
        let json = BASE.replace(
            r#"{"destination": "/etc/hosts""#,
            r#"{"destination": "/dev/shm", "type": "bind", "source": "/h/dir", "options": ["bind", "private"]},
            {"destination": "/etc/hosts""#,
        );
        let (c, _) = container_spec("c", &spec(&json), Path::new("/bundle"), &files).unwrap();
        let shm = c
            .mounts
            .iter()
            .find(|m| m.destination == "/dev/shm")
            .unwrap();
        assert_eq!((shm.fstype.as_str(), shm.source.as_str()), ("tmpfs", "shm"));
        assert!(shm.options.iter().any(|o| o == "mode=1777"));
        assert!(!shm.options.iter().any(|o| o == "bind"));
    }

    #[test]
    fn directory_binds_are_shared_in_order_with_their_options() {
        let json = BASE.replace(
            r#"{"destination": "/etc/hosts""#,
            r#"{"destination": "/data", "type": "bind", "source": "/h/dir", "options": ["rbind", "ro", "nosuid", "rprivate"]},
            {"destination": "/cache", "source": "/h/dir", "options": ["bind"]},
            {"destination": "/etc/hosts""#,
        );
        let (c, shares) = container_spec("c", &spec(&json), Path::new("/bundle"), &files).unwrap();
        assert_eq!(c.share_tag.as_deref(), Some(SHARE_TAG));
        assert_eq!(
            shares[..2],
            [
                SharedDir {
                    name: "m0".into(),
                    source: "/h/dir".into(),
                    read_only: true,
                    recursive: true,
                    file: false,
                },
                SharedDir {
                    name: "m1".into(),
                    source: "/h/dir".into(),
                    read_only: false,
                    recursive: false,
                    file: false,
                },
            ]
        );
        // The two bound files follow, in mount order.
        assert_eq!(shares.len(), 4);
        assert_eq!((shares[2].name.as_str(), shares[2].file), ("m2", true));
        let data = c.mounts.iter().find(|m| m.destination == "/data").unwrap();
        assert_eq!(
            (data.fstype.as_str(), data.source.as_str()),
            (SHARE_FSTYPE, "m0")
        );
        assert_eq!(data.options, ["rbind", "ro", "nosuid", "rprivate"]);
        let cache = c.mounts.iter().find(|m| m.destination == "/cache").unwrap();
        assert_eq!(
            (cache.fstype.as_str(), cache.source.as_str()),
            (SHARE_FSTYPE, "m1")
        );
        // Mount order is kept: the shares sit where the spec put them.
        let order: Vec<&str> = c.mounts.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(
            order,
            [
                "/proc",
                "/dev",
                "/sys/fs/cgroup",
                "/data",
                "/cache",
                "/etc/hosts",
                "/etc/resolv.conf"
            ]
        );
    }

    #[test]
    fn a_missing_bind_source_is_an_error_and_a_device_bind_is_a_node() {
        let json = BASE.replace("\"/h/hosts\"", "\"/h/missing\"");
        let err = container_spec("c", &spec(&json), Path::new("/bundle"), &files).unwrap_err();
        assert!(matches!(err, GuestSpecError::BindSource { .. }), "{err}");
        let json = BASE.replace("\"/h/hosts\"", "\"/dev/null\"");
        let (c, _) = container_spec("c", &spec(&json), Path::new("/bundle"), &files).unwrap();
        assert!(!c.mounts.iter().any(|m| m.destination == "/etc/hosts"));
        assert_eq!(
            c.devices,
            [DeviceSpec {
                path: "/etc/hosts".into(),
                kind: "c".into(),
                major: 1,
                minor: 3,
                mode: 0o666,
                uid: 0,
                gid: 0
            }]
        );
        // linux.devices come first, with their modes and owners.
        let json = BASE.replace(
            r#""linux": {"#,
            r#""linux": {"devices": [{"path": "/dev/test1", "type": "c", "major": 10, "minor": 229, "fileMode": 432, "uid": 1000, "gid": 1001}, {"path": "/dev/test2", "type": "b", "major": 8, "minor": 0}],"#,
        );
        let (c, _) = container_spec("c", &spec(&json), Path::new("/bundle"), &files).unwrap();
        let got: Vec<_> = c
            .devices
            .iter()
            .map(|d| {
                (
                    d.path.as_str(),
                    d.kind.as_str(),
                    d.major,
                    d.minor,
                    d.mode,
                    d.uid,
                    d.gid,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("/dev/test1", "c", 10, 229, 0o660, 1000, 1001),
                ("/dev/test2", "b", 8, 0, 0o666, 0, 0)
            ]
        );
        // A Unix socket (a docker.sock for a CI job) is refused at create,
        // saying why and what to do instead.
        let json = BASE.replace("\"/h/hosts\"", "\"/h/sock\"");
        let err = container_spec("c", &spec(&json), Path::new("/bundle"), &files).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/etc/hosts")
                && text.contains("a Unix socket")
                && text.contains("/h/sock"),
            "{text}"
        );
    }

    #[test]
    fn root_propagation_is_checked_and_passed_on() {
        let with = |p: &str| {
            BASE.replace(
                r#""linux": {"#,
                &format!(r#""linux": {{"rootfsPropagation": "{p}","#),
            )
        };
        let (c, _) =
            container_spec("c", &spec(&with("rslave")), Path::new("/bundle"), &files).unwrap();
        assert_eq!(c.rootfs_propagation.as_deref(), Some("rslave"));
        let err = container_spec("c", &spec(&with("sideways")), Path::new("/bundle"), &files)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sideways") && err.contains("rootfsPropagation"),
            "{err}"
        );
    }

    #[test]
    fn a_process_needs_args() {
        let json = BASE.replace(r#""args": ["sh", "-c", "id"],"#, "");
        let err = container_spec("c", &spec(&json), Path::new("/bundle"), &files).unwrap_err();
        assert_eq!(err, GuestSpecError::NoArgs);
    }

    #[test]
    fn reads_real_bind_sources() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(read_bind_source(&f).unwrap(), BindSource::File);
        let sock = dir.path().join("s");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert_eq!(read_bind_source(&sock).unwrap(), BindSource::Socket);
        assert_eq!(read_bind_source(dir.path()).unwrap(), BindSource::Directory);
        assert_eq!(
            read_bind_source(Path::new("/dev/null")).unwrap(),
            BindSource::Device {
                block: false,
                major: 1,
                minor: 3,
                mode: 0o666
            }
        );
        assert!(read_bind_source(&dir.path().join("none")).is_err());
    }
}
