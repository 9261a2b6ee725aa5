//! Container-wide setup at `Create`: hostname, mounts, files, sysctls,
//! masked and read-only paths, read-only root.
//!
//! [`apply`] does it in this order (every step before the next):
//! 1. hostname;
//! 2. with a share ([`ContainerSpec::share_tag`]): the virtio-fs file
//!    system is mounted ([`SHARE_MOUNT`]); the root directory
//!    ([`ContainerSpec::root_share`]) is bound on [`SHARED_ROOT`], and each
//!    directory a [`SHARE_FSTYPE`] mount names is copied (`open_tree`) to
//!    be attached later; the share is then detached;
//! 3. the root alone ([`SetupOs::enter_root`]): every other mount of the
//!    guest is detached from this mount namespace (the container's own, see
//!    [`super::container`]) and, with a shared root, it becomes `/` (move
//!    onto `/`, chroot: what `switch_root` does, as pivot_root refuses the
//!    initramfs); from here on `/` is the bundle's rootfs;
//! 4. `mounts`, in the spec's order, made fresh (a tmpfs on `/dev` gets the
//!    default device nodes and links, as runc creates them; share mounts
//!    attach their copies);
//! 5. `devices` (`linux.devices` and device binds);
//! 6. `files` (after the mounts, so a file under a mounted tmpfs such as
//!    `/dev/termination-log` lands on top of it);
//! 7. `sysctl` (before `/proc/sys` may become read-only);
//! 8. `readonly_paths`, then `masked_paths` (runc's order); 9. the
//!    read-only root.
//!
//! The translation from OCI options to mount calls ([`parse_options`],
//! [`plan_mount`], [`plan_masked`], [`plan_readonly`]) is pure; the side
//! effects go through [`SetupOs`].

use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;

use super::spawn::{errno_of, errno_text};
use crate::agent_proto::{
    ContainerSpec, DeviceSpec, MountSpec, POD_SHM_DIR, POD_SHM_FSTYPE, SHARE_FSTYPE,
};

/// What is at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Missing,
    Dir,
    /// Anything else: a file, a device node, a socket.
    File,
}

/// One `mount(2)` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountCall {
    pub source: Option<String>,
    pub target: String,
    pub fstype: Option<String>,
    pub flags: MsFlags,
    pub data: Option<String>,
}

impl MountCall {
    fn bind(source: &str, target: &str, flags: MsFlags) -> Self {
        MountCall {
            source: Some(source.to_owned()),
            target: target.to_owned(),
            fstype: None,
            flags: MsFlags::MS_BIND | flags,
            data: None,
        }
    }

    /// A change of propagation (`MS_SHARED`, `MS_SLAVE`, ... with `MS_REC`).
    fn propagation(target: &str, flags: MsFlags) -> Self {
        MountCall {
            source: None,
            target: target.to_owned(),
            fstype: None,
            flags,
            data: None,
        }
    }

    /// A remount of a bind mount (changes only per-mount flags).
    fn remount(target: &str, flags: MsFlags) -> Self {
        MountCall {
            source: None,
            target: target.to_owned(),
            fstype: None,
            flags: MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
            data: None,
        }
    }

    fn describe(&self) -> String {
        if self.flags.contains(MsFlags::MS_MOVE) {
            return format!(
                "moving {} to {}",
                self.source.as_deref().unwrap_or("?"),
                self.target
            );
        }
        if self.flags.contains(MsFlags::MS_REMOUNT) {
            return format!("remounting {} ({:?})", self.target, self.flags);
        }
        if self.flags.contains(MsFlags::MS_BIND) {
            return format!(
                "bind-mounting {} on {}",
                self.source.as_deref().unwrap_or("?"),
                self.target
            );
        }
        match &self.fstype {
            Some(fstype) => format!(
                "mounting {fstype} {} on {}",
                self.source.as_deref().unwrap_or("none"),
                self.target
            ),
            None => format!("changing propagation of {} ({:?})", self.target, self.flags),
        }
    }
}

/// Errors of container setup; each names the step and the path.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "linux.rootfsPropagation {name:?}: not a propagation (use shared, slave, private or \
         unbindable, or their r-prefixed recursive forms)"
    )]
    Propagation { name: String },
    #[error("network: {0}")]
    Net(#[from] crate::net::NetError),
    #[error("setting hostname {name:?}: {}", errno_text(*errno))]
    Hostname { name: String, errno: Errno },
    #[error("{step}: {call}: {}", errno_text(*errno))]
    Mount {
        step: &'static str,
        call: String,
        errno: Errno,
    },
    #[error("{step}: creating {path}: {source}")]
    Create {
        step: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{step}: {path} is not an absolute path")]
    NotAbsolute { step: &'static str, path: String },
    #[error("mount of {target}: bind source {source_path} does not exist")]
    BindSource { source_path: String, target: String },
    #[error("mounting the shared directories (virtio-fs tag {tag}): {}", errno_text(*errno))]
    Share { tag: String, errno: Errno },
    #[error(
        "mounting the shared directories: the guest kernel has no virtio-fs \
         (CONFIG_FUSE_FS, CONFIG_VIRTIO_FS); rebuild it with `make kernel`, or \
         point HUSK_KERNEL at one that has it"
    )]
    NoVirtiofs,
    #[error("mount of {target}: shared directory {name:?} is not a plain name")]
    ShareName { name: String, target: String },
    #[error("mount of {target}: the host shares no directories (no virtio-fs tag)")]
    NoShare { target: String },
    #[error("writing file {path}: {source}")]
    File { path: String, source: io::Error },
    #[error(
        "the container's root {path} is not a directory in the shared file system \
         (the bundle's root.path on the host)"
    )]
    RootShare { path: String },
    #[error("switching into the container's root {path}: {}", errno_text(*errno))]
    SwitchRoot { path: String, errno: Errno },
    #[error("sysctl {key}: invalid key")]
    SysctlKey { key: String },
    #[error("sysctl {key}: writing {path}: {source}")]
    Sysctl {
        key: String,
        path: String,
        source: io::Error,
    },
}

/// The operating system as container setup sees it.
pub trait SetupOs {
    fn kind(&mut self, path: &str) -> PathKind;
    /// Creates a directory and its parents; an existing one is fine.
    fn mkdir_all(&mut self, path: &str) -> io::Result<()>;
    /// Creates an empty file if nothing is there (a bind mount target).
    fn touch(&mut self, path: &str) -> io::Result<()>;
    /// Creates or replaces a file with `contents`, mode `mode` exactly.
    fn write_file(&mut self, path: &str, contents: &[u8], mode: u32) -> io::Result<()>;
    /// Writes to an existing file (a `/proc/sys` entry).
    fn write_existing(&mut self, path: &str, contents: &[u8]) -> io::Result<()>;
    fn mount(&mut self, call: &MountCall) -> Result<(), Errno>;
    /// The per-mount flags of the mount holding `path` (`MS_RDONLY`,
    /// `MS_NOSUID`, ...), to keep them when remounting it read-only.
    fn mount_flags(&mut self, path: &str) -> MsFlags;
    /// The text of `/proc/filesystems` (empty when unreadable).
    fn filesystems(&mut self) -> String;
    fn sethostname(&mut self, name: &str) -> Result<(), Errno>;
    /// Creates a character device node with exactly `mode`.
    fn mknod_char(&mut self, path: &str, major: u32, minor: u32, mode: u32) -> io::Result<()>;
    /// Makes a device node of the spec (an existing one is kept), with
    /// its mode and owner.
    fn device(&mut self, device: &DeviceSpec) -> io::Result<()>;
    /// Changes the owner of `path` itself (a link is not followed); `None`
    /// keeps the group.
    fn chown(&mut self, path: &str, uid: u32, gid: Option<u32>) -> io::Result<()>;
    fn symlink(&mut self, target: &str, path: &str) -> io::Result<()>;
    /// Reports something skipped (a line on the console).
    fn log(&mut self, line: &str);
    /// Mounts the virtio-fs file system `tag` and returns where its root
    /// is until [`Self::release_share`].
    fn mount_share(&mut self, tag: &str) -> Result<String, Errno>;
    /// Detaches that mount and removes its directory (the binds made from
    /// it stay).
    fn release_share(&mut self);
    /// A detached copy of the mount tree at `path` (`open_tree` with
    /// `OPEN_TREE_CLONE`, with the mounts under it when `recursive`), kept
    /// until [`Self::attach_tree`]: what a share bind is made of once the
    /// share itself is no longer reachable.
    fn clone_tree(&mut self, path: &str, recursive: bool) -> Result<usize, Errno>;
    /// Attaches the copy [`Self::clone_tree`] returned on `target`
    /// (`move_mount`).
    fn attach_tree(&mut self, tree: usize, target: &str) -> Result<(), Errno>;
    /// Leaves the container's mount namespace with its root only: every
    /// other mount of the guest (its `/proc`, `/sys`, `/dev`, the share) is
    /// detached; then, with `new_root`, the mount there becomes the root
    /// (chdir into it, move it onto `/`, chroot there).
    fn enter_root(&mut self, new_root: Option<&str>) -> Result<(), Errno>;
}

/// Where the container's root from the share is bound before the agent
/// switches into it (a directory of the initramfs).
pub const SHARED_ROOT: &str = "/.husk-root";
/// Step 2: binds the share's directory `name` on [`SHARED_ROOT`] (see the
/// module docs).
/// Whether `name` names an entry of the share: plain components (a
/// pod's later containers have theirs under `pod/ID/`), none of them `.`
/// or `..`.
pub fn share_name_ok(name: &str) -> bool {
    const MAX_DEPTH: usize = 4;
    !name.is_empty()
        && name.split('/').count() <= MAX_DEPTH
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
}

fn bind_shared_root(share: &str, name: &str, os: &mut impl SetupOs) -> Result<(), SetupError> {
    if !share_name_ok(name) {
        return Err(SetupError::ShareName {
            name: name.to_owned(),
            target: "/".into(),
        });
    }
    let source = format!("{share}/{name}");
    if os.kind(&source) != PathKind::Dir {
        return Err(SetupError::RootShare { path: source });
    }
    mkdir(os, "container root", SHARED_ROOT)?;
    run_mount(
        os,
        "container root",
        &MountCall::bind(&source, SHARED_ROOT, MsFlags::empty()),
    )
}

/// A copy of the share's directory a [`SHARE_FSTYPE`] mount names, taken
/// while the share is mounted: (tree, what is at its root).
type Tree = (usize, PathKind);

/// Step 2: the trees of the spec's [`SHARE_FSTYPE`] mounts (and of the
/// pod's shared memory for a [`POD_SHM_FSTYPE`] one), by mount index.
fn clone_share_trees(
    spec: &ContainerSpec,
    share: Option<&str>,
    os: &mut impl SetupOs,
) -> Result<Vec<Option<Tree>>, SetupError> {
    let mut trees = Vec::with_capacity(spec.mounts.len());
    for m in &spec.mounts {
        if m.fstype == POD_SHM_FSTYPE {
            let tree = os
                .clone_tree(POD_SHM_DIR, false)
                .map_err(|errno| SetupError::Mount {
                    step: "mount",
                    call: format!("copying the pod's shared memory {POD_SHM_DIR}"),
                    errno,
                })?;
            trees.push(Some((tree, PathKind::Dir)));
            continue;
        }
        if m.fstype != SHARE_FSTYPE {
            trees.push(None);
            continue;
        }
        let bind = share_bind(m, share)?;
        let kind = os.kind(&bind.source);
        if kind == PathKind::Missing {
            return Err(SetupError::BindSource {
                source_path: bind.source,
                target: bind.destination,
            });
        }
        let recursive = bind.options.iter().any(|o| o == "rbind");
        let tree = os
            .clone_tree(&bind.source, recursive)
            .map_err(|errno| SetupError::Mount {
                step: "mount",
                call: format!("copying the mount tree of {}", bind.source),
                errno,
            })?;
        trees.push(Some((tree, kind)));
    }
    Ok(trees)
}

/// A [`POD_SHM_FSTYPE`] mount as the bind of the pod's tmpfs: its flag
/// options (the tmpfs's own, `size=` and `mode=`, were the tmpfs's).
fn pod_shm_bind(m: &MountSpec) -> MountSpec {
    let mut options: Vec<String> = m
        .options
        .iter()
        .filter(|o| !o.contains('='))
        .cloned()
        .collect();
    options.push("bind".into());
    MountSpec {
        destination: m.destination.clone(),
        fstype: "bind".into(),
        source: POD_SHM_DIR.into(),
        options,
    }
}

/// A [`SHARE_FSTYPE`] mount as the bind from the share it stands for.
fn share_bind(m: &MountSpec, share: Option<&str>) -> Result<MountSpec, SetupError> {
    let Some(root) = share else {
        return Err(SetupError::NoShare {
            target: m.destination.clone(),
        });
    };
    if !share_name_ok(&m.source) {
        return Err(SetupError::ShareName {
            name: m.source.clone(),
            target: m.destination.clone(),
        });
    }
    let mut options = m.options.clone();
    if !options.iter().any(|o| o == "bind" || o == "rbind") {
        options.push("bind".into());
    }
    Ok(MountSpec {
        destination: m.destination.clone(),
        fstype: "bind".into(),
        source: format!("{root}/{}", m.source),
        options,
    })
}

/// OCI mount options that are mount flags: (name, clears, flags).
const FLAG_OPTIONS: [(&str, bool, MsFlags); 30] = [
    ("defaults", false, MsFlags::empty()),
    ("ro", false, MsFlags::MS_RDONLY),
    ("rw", true, MsFlags::MS_RDONLY),
    ("suid", true, MsFlags::MS_NOSUID),
    ("nosuid", false, MsFlags::MS_NOSUID),
    ("dev", true, MsFlags::MS_NODEV),
    ("nodev", false, MsFlags::MS_NODEV),
    ("exec", true, MsFlags::MS_NOEXEC),
    ("noexec", false, MsFlags::MS_NOEXEC),
    ("sync", false, MsFlags::MS_SYNCHRONOUS),
    ("async", true, MsFlags::MS_SYNCHRONOUS),
    ("dirsync", false, MsFlags::MS_DIRSYNC),
    ("remount", false, MsFlags::MS_REMOUNT),
    ("mand", false, MsFlags::MS_MANDLOCK),
    ("nomand", true, MsFlags::MS_MANDLOCK),
    ("atime", true, MsFlags::MS_NOATIME),
    ("noatime", false, MsFlags::MS_NOATIME),
    ("diratime", true, MsFlags::MS_NODIRATIME),
    ("nodiratime", false, MsFlags::MS_NODIRATIME),
    ("relatime", false, MsFlags::MS_RELATIME),
    ("norelatime", true, MsFlags::MS_RELATIME),
    ("strictatime", false, MsFlags::MS_STRICTATIME),
    ("nostrictatime", true, MsFlags::MS_STRICTATIME),
    ("lazytime", false, MsFlags::MS_LAZYTIME),
    ("nolazytime", true, MsFlags::MS_LAZYTIME),
    ("silent", false, MsFlags::MS_SILENT),
    ("loud", true, MsFlags::MS_SILENT),
    ("bind", false, MsFlags::MS_BIND),
    ("rbind", false, MsFlags::MS_BIND.union(MsFlags::MS_REC)),
    // runc's recursive read-only; per-mount read-only is the closest.
    ("rro", false, MsFlags::MS_RDONLY),
];

/// Propagation options: each is a separate mount call after the mount.
const PROPAGATION_OPTIONS: [(&str, MsFlags); 8] = [
    ("private", MsFlags::MS_PRIVATE),
    ("rprivate", MsFlags::MS_PRIVATE.union(MsFlags::MS_REC)),
    ("shared", MsFlags::MS_SHARED),
    ("rshared", MsFlags::MS_SHARED.union(MsFlags::MS_REC)),
    ("slave", MsFlags::MS_SLAVE),
    ("rslave", MsFlags::MS_SLAVE.union(MsFlags::MS_REC)),
    ("unbindable", MsFlags::MS_UNBINDABLE),
    ("runbindable", MsFlags::MS_UNBINDABLE.union(MsFlags::MS_REC)),
];

/// The mount flags of a propagation name (`rshared` is `MS_SHARED |
/// MS_REC`), as mount options and `linux.rootfsPropagation` spell them.
pub fn propagation_flags(name: &str) -> Option<MsFlags> {
    PROPAGATION_OPTIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, flags)| *flags)
}

/// Options runc understands that mean nothing here.
const IGNORED_OPTIONS: [&str; 4] = ["tmpcopyup", "idmap", "ridmap", "rrw"];

/// OCI mount options, translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub propagation: Vec<MsFlags>,
    /// The rest (`mode=755`, `size=64m`, `newinstance`), for the data string.
    pub data: Vec<String>,
}

impl MountOptions {
    fn data_string(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }
}

/// Translates OCI mount options, later ones winning (`ro` then `rw` is rw).
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        propagation: Vec::new(),
        data: Vec::new(),
    };
    for option in options {
        let option = option.as_str();
        if let Some((_, clear, flags)) = FLAG_OPTIONS.iter().find(|(n, _, _)| *n == option) {
            if *clear {
                out.flags.remove(*flags);
            } else {
                out.flags.insert(*flags);
            }
        } else if let Some(flags) = propagation_flags(option) {
            out.propagation.push(flags);
        } else if !IGNORED_OPTIONS.contains(&option) && !option.is_empty() {
            out.data.push(option.to_owned());
        }
    }
    out
}

/// Whether `/proc/filesystems` text lists `fstype`.
pub fn has_filesystem(filesystems: &str, fstype: &str) -> bool {
    filesystems
        .lines()
        .any(|line| line.split_whitespace().last() == Some(fstype))
}

/// File systems a container spec mounts that a minimal guest kernel may
/// lack; their mounts are skipped (with a console line) rather than failing
/// every container.
const OPTIONAL_FILESYSTEMS: [&str; 3] = ["mqueue", "cgroup", "cgroup2"];

/// Undoes the octal escapes (`\040` for a space) of `/proc/self/mountinfo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What one spec mount needs: the kind of target to create, and the calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// `Dir` or `File` (a bind of a file needs a file to mount on).
    pub target_kind: PathKind,
    pub calls: Vec<MountCall>,
    /// A tmpfs (or devtmpfs) on `/dev`: create the default devices and
    /// links in it (those a devtmpfs has already are kept).
    pub default_devices: bool,
    /// The file system type actually mounted (`None` for binds).
    pub fstype: Option<String>,
}

/// Plans one spec mount. `source_kind` is what is at the source (matters for
/// binds); `filesystems` is `/proc/filesystems`. `Ok(None)`: skip it, the
/// kernel lacks an optional file system (see [`OPTIONAL_FILESYSTEMS`]).
/// `cgroup` is mounted as `cgroup2` where the kernel has it, as runc does on
/// a unified-hierarchy host.
pub fn plan_mount(
    m: &MountSpec,
    source_kind: PathKind,
    filesystems: &str,
) -> Result<Option<MountPlan>, SetupError> {
    let target = m.destination.as_str();
    if !target.starts_with('/') {
        return Err(SetupError::NotAbsolute {
            step: "mount destination",
            path: target.to_owned(),
        });
    }
    let opts = parse_options(&m.options);
    let mut calls = Vec::new();
    let bind = m.fstype == "bind" || opts.flags.contains(MsFlags::MS_BIND);
    let (target_kind, fstype) = if bind {
        if source_kind == PathKind::Missing {
            return Err(SetupError::BindSource {
                source_path: m.source.clone(),
                target: target.to_owned(),
            });
        }
        let recursive = opts.flags & MsFlags::MS_REC;
        calls.push(MountCall::bind(&m.source, target, recursive));
        let rest = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !rest.is_empty() {
            calls.push(MountCall::remount(target, rest));
        }
        (source_kind, None)
    } else {
        let known = !filesystems.trim().is_empty();
        let fstype = match m.fstype.as_str() {
            "cgroup" if !known || has_filesystem(filesystems, "cgroup2") => "cgroup2",
            other => other,
        };
        if known && OPTIONAL_FILESYSTEMS.contains(&fstype) && !has_filesystem(filesystems, fstype) {
            return Ok(None);
        }
        let source = if m.source.is_empty() {
            fstype
        } else {
            &m.source
        };
        calls.push(MountCall {
            source: Some(source.to_owned()),
            target: target.to_owned(),
            fstype: Some(fstype.to_owned()),
            flags: opts.flags,
            data: opts.data_string(),
        });
        (PathKind::Dir, Some(fstype.to_owned()))
    };
    for propagation in &opts.propagation {
        calls.push(MountCall::propagation(target, *propagation));
    }
    let default_devices = target.trim_end_matches('/') == "/dev"
        && matches!(fstype.as_deref(), Some("tmpfs" | "devtmpfs"));
    Ok(Some(MountPlan {
        target_kind,
        calls,
        default_devices,
        fstype,
    }))
}

/// Masks paths as runc does: an empty read-only tmpfs over a directory,
/// `/dev/null` over anything else; missing paths are skipped.
pub fn plan_masked(paths: &[String], mut kind: impl FnMut(&str) -> PathKind) -> Vec<MountCall> {
    paths
        .iter()
        .filter_map(|path| match kind(path) {
            PathKind::Missing => None,
            PathKind::Dir => Some(MountCall {
                source: Some("tmpfs".into()),
                target: path.clone(),
                fstype: Some("tmpfs".into()),
                flags: MsFlags::MS_RDONLY,
                data: None,
            }),
            PathKind::File => Some(MountCall::bind("/dev/null", path, MsFlags::empty())),
        })
        .collect()
}

/// Flags a read-only remount keeps from the mount it covers.
const KEPT_FLAGS: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME);

/// Makes paths read-only: bind each over itself, then remount the bind
/// read-only keeping its other flags; missing paths are skipped.
pub fn plan_readonly(
    paths: &[String],
    mut kind: impl FnMut(&str) -> PathKind,
    mut flags_of: impl FnMut(&str) -> MsFlags,
) -> Vec<MountCall> {
    let mut calls = Vec::new();
    for path in paths {
        if kind(path) == PathKind::Missing {
            continue;
        }
        let kept = flags_of(path) & KEPT_FLAGS;
        calls.push(MountCall::bind(path, path, MsFlags::MS_REC));
        calls.push(MountCall::remount(path, MsFlags::MS_RDONLY | kept));
    }
    calls
}

/// The default device nodes runc gives a container with a tmpfs `/dev`:
/// (path, major, minor), all mode 0666.
pub const DEFAULT_DEVICES: [(&str, u32, u32); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];
/// Mode of the default devices.
const DEVICE_MODE: u32 = 0o666;
/// The default links in `/dev`: (target, path).
pub const DEFAULT_LINKS: [(&str, &str); 5] = [
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
];

/// The devpts a tmpfs `/dev` gets when the spec mounts none over it.
fn fallback_devpts() -> MountCall {
    MountCall {
        source: Some("devpts".into()),
        target: "/dev/pts".into(),
        fstype: Some("devpts".into()),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        data: Some("newinstance,ptmxmode=0666,mode=0620".into()),
    }
}

/// `/proc/sys` path of a sysctl key (`net.ipv4.ip_forward`, or with
/// slashes for keys whose parts contain dots).
pub fn sysctl_path(key: &str) -> Result<String, SetupError> {
    let relative = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    let valid = !relative.is_empty()
        && relative
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !valid {
        return Err(SetupError::SysctlKey {
            key: key.to_owned(),
        });
    }
    Ok(format!("/proc/sys/{relative}"))
}

fn run_mount(
    os: &mut impl SetupOs,
    step: &'static str,
    call: &MountCall,
) -> Result<(), SetupError> {
    os.mount(call).map_err(|errno| SetupError::Mount {
        step,
        call: call.describe(),
        errno,
    })
}

fn mkdir(os: &mut impl SetupOs, step: &'static str, path: &str) -> Result<(), SetupError> {
    os.mkdir_all(path).map_err(|source| SetupError::Create {
        step,
        path: path.to_owned(),
        source,
    })
}

fn absolute(step: &'static str, path: &str) -> Result<(), SetupError> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(SetupError::NotAbsolute {
            step,
            path: path.to_owned(),
        })
    }
}

fn parent_of(path: &str) -> Option<&str> {
    Path::new(path)
        .parent()
        .and_then(|p| p.to_str())
        .filter(|p| !p.is_empty())
}

fn default_devices(os: &mut impl SetupOs, owner: Option<(u32, u32)>) -> Result<(), SetupError> {
    for (path, major, minor) in DEFAULT_DEVICES {
        os.mknod_char(path, major, minor, DEVICE_MODE)
            .map_err(|source| SetupError::Create {
                step: "default devices",
                path: path.to_owned(),
                source,
            })?;
        // In a user namespace runc binds the host's nodes, the host root's
        // (nobody inside): these are the guest's, its root's.
        if owner.is_some() {
            os.chown(path, 0, Some(0))
                .map_err(|source| SetupError::Create {
                    step: "default devices",
                    path: path.to_owned(),
                    source,
                })?;
        }
    }
    // runc's link to the kernel's core image, where the kernel has one.
    if os.kind("/proc/kcore") != PathKind::Missing {
        os.symlink("/proc/kcore", "/dev/core")
            .map_err(|source| SetupError::Create {
                step: "default devices",
                path: "/dev/core".into(),
                source,
            })?;
    }
    for (target, path) in DEFAULT_LINKS {
        os.symlink(target, path)
            .map_err(|source| SetupError::Create {
                step: "default devices",
                path: path.to_owned(),
                source,
            })?;
        // runc makes them as the container's root.
        if let Some((uid, gid)) = owner {
            os.chown(path, uid, Some(gid))
                .map_err(|source| SetupError::Create {
                    step: "default devices",
                    path: path.to_owned(),
                    source,
                })?;
        }
    }
    Ok(())
}

/// File systems runc mounts inside the container's user namespace, whose
/// root is then the container's root's: husk mounts them before the
/// process enters it and gives their root to the mapped root.
const OWNED_BY_ROOT: [&str; 3] = ["tmpfs", "mqueue", "devpts"];

/// The kernel's overflow id (`/proc/sys/kernel/overflowuid`).
const OVERFLOW_ID: u32 = 65534;

/// Maps a container id through `map` (a user namespace's), as the kernel
/// reads ids in mount options given inside the namespace.
fn map_id(map: &[crate::agent_proto::IdMapping], id: u32) -> Option<u32> {
    map.iter()
        .find(|r| id >= r.container && id - r.container < r.size)
        .map(|r| r.host + (id - r.container))
}

/// A mount as runc makes it inside the container's user namespace: a
/// tmpfs belongs to the namespace's root (`uid=`, `gid=` options), and the
/// ids in a tmpfs's or devpts's options are the container's.
fn in_user_namespace(m: &MountSpec, spec: &ContainerSpec) -> MountSpec {
    let mut m = m.clone();
    if !matches!(m.fstype.as_str(), "tmpfs" | "devpts") {
        return m;
    }
    for option in &mut m.options {
        for (key, map) in [("uid=", &spec.uid_map), ("gid=", &spec.gid_map)] {
            if let Some(id) = option.strip_prefix(key).and_then(|v| v.parse::<u32>().ok()) {
                if let Some(mapped) = map_id(map, id) {
                    *option = format!("{key}{mapped}");
                }
            }
        }
    }
    if m.fstype == "tmpfs" {
        for (key, map) in [("uid=", &spec.uid_map), ("gid=", &spec.gid_map)] {
            if !m.options.iter().any(|o| o.starts_with(key)) {
                if let Some(root) = map_id(map, 0) {
                    m.options.push(format!("{key}{root}"));
                }
            }
        }
    }
    m
}

/// The host (guest) ids of the container's root in its user namespace.
pub fn mapped_root(spec: &ContainerSpec) -> Option<(u32, u32)> {
    let of = |map: &[crate::agent_proto::IdMapping]| {
        map.iter()
            .find(|r| r.container == 0 && r.size > 0)
            .map(|r| r.host)
    };
    if spec.uid_map.is_empty() && spec.gid_map.is_empty() {
        return None;
    }
    Some((of(&spec.uid_map)?, of(&spec.gid_map).unwrap_or(0)))
}

/// Sets the container up (see the module docs for the order).
pub fn apply(spec: &ContainerSpec, os: &mut impl SetupOs) -> Result<(), SetupError> {
    if let Some(name) = spec.hostname.as_deref().filter(|n| !n.is_empty()) {
        os.sethostname(name).map_err(|errno| SetupError::Hostname {
            name: name.to_owned(),
            errno,
        })?;
    }

    let share = match &spec.share_tag {
        Some(tag) => Some(os.mount_share(tag).map_err(|errno| {
            if errno == Errno::ENODEV && !has_filesystem(&os.filesystems(), "virtiofs") {
                SetupError::NoVirtiofs
            } else {
                SetupError::Share {
                    tag: tag.clone(),
                    errno,
                }
            }
        })?),
        None => None,
    };
    let taken = match share.as_deref() {
        Some(share) => spec
            .root_share
            .as_deref()
            .map_or(Ok(()), |name| bind_shared_root(share, name, os))
            .and_then(|()| clone_share_trees(spec, Some(share), os)),
        None if spec.root_share.is_some() => Err(SetupError::NoShare { target: "/".into() }),
        None => clone_share_trees(spec, None, os),
    };
    if share.is_some() {
        os.release_share();
    }
    let trees = taken?;
    let new_root = spec.root_share.as_ref().map(|_| SHARED_ROOT);
    os.enter_root(new_root)
        .map_err(|errno| SetupError::SwitchRoot {
            path: new_root.unwrap_or("/").into(),
            errno,
        })?;
    let propagation = match spec.rootfs_propagation.as_deref() {
        None | Some("") => None,
        Some(name) => Some(
            propagation_flags(name).ok_or_else(|| SetupError::Propagation { name: name.into() })?,
        ),
    };
    // A shared root makes the mounts under it shared too, as under runc
    // (whose rootfs is a bind of a shared root then).
    if let Some(flags) = propagation.filter(|f| f.contains(MsFlags::MS_SHARED)) {
        run_mount(os, "root propagation", &MountCall::propagation("/", flags))?;
    }
    apply_mounts(spec, &trees, os)?;
    for device in &spec.devices {
        absolute("device", &device.path)?;
        // Its owner is given in the container's ids.
        let mapped;
        let device = if spec.uid_map.is_empty() && spec.gid_map.is_empty() {
            device
        } else {
            mapped = DeviceSpec {
                // Outside the map: the overflow id, nobody inside.
                uid: map_id(&spec.uid_map, device.uid).unwrap_or(OVERFLOW_ID),
                gid: map_id(&spec.gid_map, device.gid).unwrap_or(OVERFLOW_ID),
                ..device.clone()
            };
            &mapped
        };
        if let Some(parent) = parent_of(&device.path) {
            mkdir(os, "device", parent)?;
        }
        os.device(device).map_err(|source| SetupError::Create {
            step: "device",
            path: device.path.clone(),
            source,
        })?;
    }
    if let Some(flags) = propagation {
        run_mount(os, "root propagation", &MountCall::propagation("/", flags))?;
    }
    apply_rest(spec, os)
}

/// Step 3: the spec's mounts; `trees` has the copy of the share's directory
/// for each [`SHARE_FSTYPE`] mount.
fn apply_mounts(
    spec: &ContainerSpec,
    trees: &[Option<Tree>],
    os: &mut impl SetupOs,
) -> Result<(), SetupError> {
    let filesystems = os.filesystems();
    let owner = mapped_root(spec);
    let mut dev_tmpfs = false;
    let mut dev_pts = false;
    for (index, m) in spec.mounts.iter().enumerate() {
        let tree = trees.get(index).copied().flatten();
        let shared;
        let (m, source_kind) = match (m.fstype == SHARE_FSTYPE, tree) {
            (true, Some((_, kind))) => {
                shared = share_bind(m, Some(""))?;
                (&shared, kind)
            }
            (false, Some((_, kind))) if m.fstype == POD_SHM_FSTYPE => {
                shared = pod_shm_bind(m);
                (&shared, kind)
            }
            (true, None) => {
                return Err(SetupError::NoShare {
                    target: m.destination.clone(),
                })
            }
            (false, _) if m.source.starts_with('/') => (m, os.kind(&m.source)),
            (false, _) => (m, PathKind::Missing),
        };
        let owned;
        let m = if owner.is_some() && tree.is_none() {
            owned = in_user_namespace(m, spec);
            &owned
        } else {
            m
        };
        let Some(plan) = plan_mount(m, source_kind, &filesystems)? else {
            os.log(&format!(
                "skipping mount of {} on {}: the kernel has no {} file system",
                m.fstype, m.destination, m.fstype
            ));
            continue;
        };
        match plan.target_kind {
            PathKind::File => {
                if let Some(parent) = parent_of(&m.destination) {
                    mkdir(os, "mount destination", parent)?;
                }
                os.touch(&m.destination)
                    .map_err(|source| SetupError::Create {
                        step: "mount destination",
                        path: m.destination.clone(),
                        source,
                    })?;
            }
            _ => mkdir(os, "mount destination", &m.destination)?,
        }
        if let (Some((tree, _)), Some(first)) = (tree, plan.calls.first()) {
            // The bind of a share's directory: its copy, attached here.
            os.attach_tree(tree, &m.destination)
                .map_err(|errno| SetupError::Mount {
                    step: "mount",
                    call: first.describe(),
                    errno,
                })?;
        } else if let Some(first) = plan.calls.first() {
            run_mount(os, "mount", first)?;
        }
        for call in plan.calls.iter().skip(1) {
            run_mount(os, "mount", call)?;
        }
        if let (Some((uid, gid)), Some(fstype)) = (owner, plan.fstype.as_deref()) {
            // A tmpfs got its owner as options.
            if OWNED_BY_ROOT.contains(&fstype) && fstype != "tmpfs" {
                chown_root(os, &m.destination, fstype, uid, gid)?;
            }
        }
        if plan.default_devices {
            default_devices(os, owner)?;
            // A devtmpfs has its own /dev/pts underneath; a tmpfs needs one.
            dev_tmpfs = plan.fstype.as_deref() == Some("tmpfs");
            dev_pts = false;
        }
        if m.destination.trim_end_matches('/') == "/dev/pts" && plan.fstype.is_some() {
            dev_pts = true;
        }
    }
    if dev_tmpfs && !dev_pts {
        mkdir(os, "mount destination", "/dev/pts")?;
        run_mount(os, "mount", &fallback_devpts())?;
        if let Some((uid, gid)) = owner {
            chown_root(os, "/dev/pts", "devpts", uid, gid)?;
        }
    }
    Ok(())
}

/// Gives a fresh mount's root (and a devpts's `ptmx`) to the mapped root.
fn chown_root(
    os: &mut impl SetupOs,
    target: &str,
    fstype: &str,
    uid: u32,
    gid: u32,
) -> Result<(), SetupError> {
    let mut paths = vec![target.to_owned()];
    if fstype == "devpts" {
        paths.push(format!("{}/ptmx", target.trim_end_matches('/')));
    }
    // runc's mqueue root has a group unmapped inside (nobody): the
    // guest root's here.
    let gid = if fstype == "mqueue" { 0 } else { gid };
    let gid = Some(gid);
    for path in paths {
        os.chown(&path, uid, gid)
            .map_err(|source| SetupError::Create {
                step: "user namespace owner",
                path,
                source,
            })?;
    }
    Ok(())
}

/// Steps 4 to 8.
fn apply_rest(spec: &ContainerSpec, os: &mut impl SetupOs) -> Result<(), SetupError> {
    for file in &spec.files {
        absolute("file", &file.path)?;
        if let Some(parent) = parent_of(&file.path) {
            mkdir(os, "file", parent)?;
        }
        os.write_file(&file.path, &file.contents, file.mode & 0o7777)
            .map_err(|source| SetupError::File {
                path: file.path.clone(),
                source,
            })?;
        if file.read_only {
            for call in plan_readonly(
                std::slice::from_ref(&file.path),
                |_| PathKind::File,
                |p| os.mount_flags(p),
            ) {
                run_mount(os, "read-only file", &call)?;
            }
        }
    }

    for (key, value) in &spec.sysctl {
        let path = sysctl_path(key)?;
        os.write_existing(&path, value.as_bytes())
            .map_err(|source| SetupError::Sysctl {
                key: key.clone(),
                path,
                source,
            })?;
    }

    for path in &spec.readonly_paths {
        absolute("read-only path", path)?;
    }
    let mut seen = std::collections::HashMap::new();
    for path in &spec.readonly_paths {
        let kind = os.kind(path);
        let flags = if kind == PathKind::Missing {
            MsFlags::empty()
        } else {
            os.mount_flags(path)
        };
        seen.insert(path.as_str(), (kind, flags));
    }
    let readonly = plan_readonly(
        &spec.readonly_paths,
        |p| seen.get(p).map_or(PathKind::Missing, |s| s.0),
        |p| seen.get(p).map_or(MsFlags::empty(), |s| s.1),
    );
    for call in &readonly {
        run_mount(os, "read-only path", call)?;
    }

    for path in &spec.masked_paths {
        absolute("masked path", path)?;
    }
    let mut masked = plan_masked(&spec.masked_paths, |p| os.kind(p));
    // In a user namespace, runc's masking tmpfs is its root's.
    if let Some((uid, gid)) = mapped_root(spec) {
        for call in masked
            .iter_mut()
            .filter(|c| c.fstype.as_deref() == Some("tmpfs"))
        {
            call.data = Some(format!("uid={uid},gid={gid}"));
        }
    }
    for call in &masked {
        match os.mount(call) {
            // Gone since it was looked at: nothing to mask.
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(errno) => {
                return Err(SetupError::Mount {
                    step: "masked path",
                    call: call.describe(),
                    errno,
                })
            }
        }
    }

    if spec.readonly_root {
        let kept = os.mount_flags("/") & KEPT_FLAGS;
        run_mount(
            os,
            "read-only root",
            &MountCall::remount("/", MsFlags::MS_RDONLY | kept),
        )?;
    }
    Ok(())
}

/// [`SetupOs`] on the real system.
#[derive(Default)]
pub struct RealSetupOs {
    /// Whether the share is mounted at [`SHARE_MOUNT`].
    share: bool,
    /// The copies [`SetupOs::clone_tree`] made, by index.
    trees: Vec<Option<std::os::fd::OwnedFd>>,
}

/// `open_tree(2)` flags and `move_mount(2)`'s (`linux/mount.h`).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// The mount points of `mountinfo` other than `/` and `keep`, deepest
/// (latest) first: what [`SetupOs::enter_root`] detaches.
pub fn mounts_to_detach(mountinfo: &str, keep: Option<&str>) -> Vec<String> {
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p != "/" && Some(p.as_str()) != keep)
        .filter(|p| keep.is_none_or(|k| !p.starts_with(&format!("{k}/"))))
        .collect();
    points.reverse();
    points
}

/// Where the agent mounts the shared directories' file system while it
/// makes the container's mounts: in the guest's own devtmpfs (never on the
/// container's root file system, which may be the host's), before the
/// container's process exists, removed right after. A bind needs its
/// source in the mount namespace, so a detached `fsmount` cannot serve as
/// one on Linux 6.1.
pub const SHARE_MOUNT: &str = "/dev/.husk-share";

impl SetupOs for RealSetupOs {
    fn mount_share(&mut self, tag: &str) -> Result<String, Errno> {
        use nix::sys::stat::Mode;
        match nix::unistd::mkdir(SHARE_MOUNT, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        let mounted = nix::mount::mount(
            Some(tag),
            SHARE_MOUNT,
            Some("virtiofs"),
            // Binds inherit these flags: the container's root keeps its
            // setuid programs (as under runc); a bind gets its spec's
            // options on top.
            MsFlags::empty(),
            None::<&str>,
        );
        if let Err(e) = mounted {
            let _ = std::fs::remove_dir(SHARE_MOUNT);
            return Err(e);
        }
        self.share = true;
        Ok(SHARE_MOUNT.to_owned())
    }

    fn release_share(&mut self) {
        if std::mem::take(&mut self.share) {
            let _ = nix::mount::umount2(SHARE_MOUNT, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir(SHARE_MOUNT);
    }

    fn clone_tree(&mut self, path: &str, recursive: bool) -> Result<usize, Errno> {
        use std::os::fd::FromRawFd as _;
        let path = std::ffi::CString::new(path).map_err(|_| Errno::EINVAL)?;
        let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
        if recursive {
            flags |= AT_RECURSIVE;
        }
        // SAFETY: open_tree reads the NUL-terminated path and returns a new
        // descriptor (or -1); no memory of ours is written.
        let fd =
            unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
        let fd = Errno::result(fd)?;
        let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
        // SAFETY: open_tree returned this descriptor to us alone.
        self.trees
            .push(Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }));
        Ok(self.trees.len() - 1)
    }

    fn attach_tree(&mut self, tree: usize, target: &str) -> Result<(), Errno> {
        use std::os::fd::AsRawFd as _;
        let fd = self
            .trees
            .get_mut(tree)
            .and_then(Option::take)
            .ok_or(Errno::EBADF)?;
        let target = std::ffi::CString::new(target).map_err(|_| Errno::EINVAL)?;
        // SAFETY: move_mount reads two NUL-terminated strings (the empty
        // one with MOVE_MOUNT_F_EMPTY_PATH names the descriptor itself).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        Errno::result(rc).map(drop)
    }

    fn enter_root(&mut self, new_root: Option<&str>) -> Result<(), Errno> {
        // Nothing of the guest stays reachable from the container: its
        // pseudo file systems and the share go (the namespace is the
        // container's own, so the agent keeps them).
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(errno_of)?;
        for point in mounts_to_detach(&mountinfo, new_root) {
            match nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH) {
                // Gone with a mount above it already.
                Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        let Some(path) = new_root else {
            return Ok(());
        };
        // pivot_root(2) refuses the initramfs as the old root; moving the
        // new root onto it and chrooting is what switch_root(8) does.
        nix::unistd::chdir(path)?;
        nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
        nix::unistd::chroot(".")?;
        nix::unistd::chdir("/")
    }

    fn kind(&mut self, path: &str) -> PathKind {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => PathKind::Dir,
            Ok(_) => PathKind::File,
            Err(_) => PathKind::Missing,
        }
    }

    fn mkdir_all(&mut self, path: &str) -> io::Result<()> {
        match std::fs::create_dir_all(path) {
            Err(_) if Path::new(path).is_dir() => Ok(()),
            other => other,
        }
    }

    fn touch(&mut self, path: &str) -> io::Result<()> {
        if Path::new(path).exists() {
            return Ok(());
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map(drop)
    }

    fn write_file(&mut self, path: &str, contents: &[u8], mode: u32) -> io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        file.write_all(contents)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
    }

    fn write_existing(&mut self, path: &str, contents: &[u8]) -> io::Result<()> {
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .write_all(contents)
    }

    fn mount(&mut self, call: &MountCall) -> Result<(), Errno> {
        nix::mount::mount(
            call.source.as_deref(),
            call.target.as_str(),
            call.fstype.as_deref(),
            call.flags,
            call.data.as_deref(),
        )
    }

    fn mount_flags(&mut self, path: &str) -> MsFlags {
        use nix::sys::statvfs::FsFlags;
        let Ok(stat) = nix::sys::statvfs::statvfs(path) else {
            return MsFlags::empty();
        };
        let have = stat.flags();
        let mut flags = MsFlags::empty();
        for (fs, ms) in [
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        ] {
            flags.set(ms, have.contains(fs));
        }
        // Not in every libc's FsFlags (musl's lacks it); the kernel's value.
        const ST_RELATIME: libc::c_ulong = 0x1000;
        flags.set(MsFlags::MS_RELATIME, have.bits() & ST_RELATIME != 0);
        flags
    }

    fn filesystems(&mut self) -> String {
        std::fs::read_to_string("/proc/filesystems").unwrap_or_default()
    }

    fn sethostname(&mut self, name: &str) -> Result<(), Errno> {
        nix::unistd::sethostname(name)
    }

    fn mknod_char(&mut self, path: &str, major: u32, minor: u32, mode: u32) -> io::Result<()> {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        use std::os::unix::fs::PermissionsExt as _;
        let perm = Mode::from_bits_truncate(mode);
        match mknod(
            path,
            SFlag::S_IFCHR,
            perm,
            makedev(major.into(), minor.into()),
        ) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        // mknod applied the umask.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }

    fn symlink(&mut self, target: &str, path: &str) -> io::Result<()> {
        match std::os::unix::fs::symlink(target, path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }

    fn chown(&mut self, path: &str, uid: u32, gid: Option<u32>) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), gid)
    }

    fn device(&mut self, device: &DeviceSpec) -> io::Result<()> {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        use std::os::unix::fs::PermissionsExt as _;
        let kind = match device.kind.as_str() {
            "c" | "u" => SFlag::S_IFCHR,
            "b" => SFlag::S_IFBLK,
            "p" => SFlag::S_IFIFO,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("device type {other:?} (linux.devices takes c, u, b or p)"),
                ))
            }
        };
        let mode = device.mode & 0o7777;
        match mknod(
            device.path.as_str(),
            kind,
            Mode::from_bits_truncate(mode),
            makedev(device.major, device.minor),
        ) {
            Ok(()) => {}
            Err(Errno::EEXIST) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        // mknod applied the umask.
        std::fs::set_permissions(&device.path, std::fs::Permissions::from_mode(mode))?;
        nix::unistd::chown(
            device.path.as_str(),
            Some(nix::unistd::Uid::from_raw(device.uid)),
            Some(nix::unistd::Gid::from_raw(device.gid)),
        )
        .map_err(io::Error::from)
    }

    fn log(&mut self, line: &str) {
        eprintln!("{} {line}", crate::proto::LOG_PREFIX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_proto::ContainerFile;
    use std::collections::HashMap;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn option_translation_table() {
        let cases: &[(&[&str], MsFlags, &[&str])] = &[
            (&[], MsFlags::empty(), &[]),
            (&["ro"], MsFlags::MS_RDONLY, &[]),
            (&["ro", "rw"], MsFlags::empty(), &[]),
            (
                &["nosuid", "nodev", "noexec", "relatime"],
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME,
                &[],
            ),
            (&["nosuid", "suid"], MsFlags::empty(), &[]),
            (&["strictatime"], MsFlags::MS_STRICTATIME, &[]),
            (&["noatime", "atime"], MsFlags::empty(), &[]),
            (&["rbind"], MsFlags::MS_BIND | MsFlags::MS_REC, &[]),
            (&["bind", "ro"], MsFlags::MS_BIND | MsFlags::MS_RDONLY, &[]),
            (
                &["sync", "dirsync"],
                MsFlags::MS_SYNCHRONOUS | MsFlags::MS_DIRSYNC,
                &[],
            ),
            (&["defaults", "tmpcopyup"], MsFlags::empty(), &[]),
            (
                &["nosuid", "mode=755", "size=65536k"],
                MsFlags::MS_NOSUID,
                &["mode=755", "size=65536k"],
            ),
            (
                &["newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
                MsFlags::empty(),
                &["newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
            ),
        ];
        for (input, flags, data) in cases {
            let got = parse_options(&opts(input));
            assert_eq!(got.flags, *flags, "{input:?}");
            assert_eq!(got.data, opts(data), "{input:?}");
            assert!(got.propagation.is_empty(), "{input:?}");
        }
        let got = parse_options(&opts(&["rbind", "rprivate", "slave"]));
        assert_eq!(
            got.propagation,
            [MsFlags::MS_PRIVATE | MsFlags::MS_REC, MsFlags::MS_SLAVE]
        );
    }

    fn spec_mount(dest: &str, fstype: &str, source: &str, options: &[&str]) -> MountSpec {
        MountSpec {
            destination: dest.into(),
            fstype: fstype.into(),
            source: source.into(),
            options: opts(options),
        }
    }

    const FILESYSTEMS: &str = "nodev\tsysfs\nnodev\ttmpfs\nnodev\tproc\nnodev\tcgroup\nnodev\tcgroup2\nnodev\tdevpts\n\text4\n";

    #[test]
    fn plans_a_tmpfs_with_flags_and_data() {
        let m = spec_mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        );
        let plan = plan_mount(&m, PathKind::Missing, FILESYSTEMS)
            .unwrap()
            .unwrap();
        assert_eq!(plan.target_kind, PathKind::Dir);
        assert!(plan.default_devices);
        assert_eq!(
            plan.calls,
            [MountCall {
                source: Some("tmpfs".into()),
                target: "/dev".into(),
                fstype: Some("tmpfs".into()),
                flags: MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
                data: Some("mode=755,size=65536k".into()),
            }]
        );
    }

    #[test]
    fn plans_a_read_only_file_bind_as_bind_then_remount() {
        let m = spec_mount(
            "/etc/x",
            "bind",
            "/run/x",
            &["rbind", "ro", "nosuid", "rprivate"],
        );
        let plan = plan_mount(&m, PathKind::File, FILESYSTEMS)
            .unwrap()
            .unwrap();
        assert_eq!(plan.target_kind, PathKind::File);
        assert_eq!(plan.calls.len(), 3);
        assert_eq!(plan.calls[0].flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(plan.calls[0].source.as_deref(), Some("/run/x"));
        assert_eq!(
            plan.calls[1].flags,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        );
        assert_eq!(plan.calls[2].flags, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        let missing = plan_mount(&m, PathKind::Missing, FILESYSTEMS).unwrap_err();
        assert!(missing.to_string().contains("/run/x"), "{missing}");
    }

    #[test]
    fn cgroup_becomes_cgroup2_and_missing_optional_fs_are_skipped() {
        let m = spec_mount("/sys/fs/cgroup", "cgroup", "cgroup", &["ro", "nosuid"]);
        let plan = plan_mount(&m, PathKind::Missing, FILESYSTEMS)
            .unwrap()
            .unwrap();
        assert_eq!(plan.calls[0].fstype.as_deref(), Some("cgroup2"));
        let v1_only = "nodev\tcgroup\n";
        let plan = plan_mount(&m, PathKind::Missing, v1_only).unwrap().unwrap();
        assert_eq!(plan.calls[0].fstype.as_deref(), Some("cgroup"));
        let mq = spec_mount("/dev/mqueue", "mqueue", "mqueue", &[]);
        assert_eq!(
            plan_mount(&mq, PathKind::Missing, FILESYSTEMS).unwrap(),
            None
        );
        let relative = spec_mount("dev", "tmpfs", "tmpfs", &[]);
        assert!(plan_mount(&relative, PathKind::Missing, FILESYSTEMS).is_err());
    }

    #[test]
    fn masked_paths_plan() {
        let kinds = HashMap::from([
            ("/proc/kcore", PathKind::File),
            ("/proc/acpi", PathKind::Dir),
        ]);
        let calls = plan_masked(&opts(&["/proc/kcore", "/proc/acpi", "/proc/nope"]), |p| {
            kinds.get(p).copied().unwrap_or(PathKind::Missing)
        });
        assert_eq!(
            calls,
            [
                MountCall::bind("/dev/null", "/proc/kcore", MsFlags::empty()),
                MountCall {
                    source: Some("tmpfs".into()),
                    target: "/proc/acpi".into(),
                    fstype: Some("tmpfs".into()),
                    flags: MsFlags::MS_RDONLY,
                    data: None,
                },
            ]
        );
    }

    #[test]
    fn readonly_paths_plan_keeps_flags() {
        let calls = plan_readonly(
            &opts(&["/proc/sys", "/proc/nope"]),
            |p| {
                if p == "/proc/sys" {
                    PathKind::Dir
                } else {
                    PathKind::Missing
                }
            },
            |_| MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_SYNCHRONOUS,
        );
        assert_eq!(
            calls,
            [
                MountCall::bind("/proc/sys", "/proc/sys", MsFlags::MS_REC),
                MountCall::remount(
                    "/proc/sys",
                    MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC
                ),
            ]
        );
    }

    #[test]
    fn sysctl_keys_map_to_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/forwarding").unwrap(),
            "/proc/sys/net/ipv4/conf/eth0.100/forwarding"
        );
        for bad in ["", "net..x", "../../etc/passwd", "a/../b", "/abs"] {
            assert!(sysctl_path(bad).is_err(), "{bad}");
        }
    }

    /// Records every call; scripted path kinds and failures.
    #[derive(Default)]
    struct FakeOs {
        calls: Vec<String>,
        kinds: HashMap<String, PathKind>,
        fail_target: Option<String>,
        /// `mount_share` fails with this.
        share_fails: Option<Errno>,
    }

    impl SetupOs for FakeOs {
        fn kind(&mut self, path: &str) -> PathKind {
            self.kinds.get(path).copied().unwrap_or(PathKind::Missing)
        }
        fn mkdir_all(&mut self, path: &str) -> io::Result<()> {
            self.calls.push(format!("mkdir {path}"));
            Ok(())
        }
        fn touch(&mut self, path: &str) -> io::Result<()> {
            self.calls.push(format!("touch {path}"));
            Ok(())
        }
        fn write_file(&mut self, path: &str, contents: &[u8], mode: u32) -> io::Result<()> {
            self.calls.push(format!(
                "write {path} {mode:o} {}",
                String::from_utf8_lossy(contents)
            ));
            Ok(())
        }
        fn write_existing(&mut self, path: &str, contents: &[u8]) -> io::Result<()> {
            self.calls.push(format!(
                "sysctl {path} {}",
                String::from_utf8_lossy(contents)
            ));
            Ok(())
        }
        fn mount(&mut self, call: &MountCall) -> Result<(), Errno> {
            self.calls.push(format!("mount {}", call.describe()));
            if self.fail_target.as_deref() == Some(call.target.as_str()) {
                return Err(Errno::ENODEV);
            }
            Ok(())
        }
        fn mount_flags(&mut self, _path: &str) -> MsFlags {
            MsFlags::MS_NOSUID
        }
        fn filesystems(&mut self) -> String {
            FILESYSTEMS.into()
        }
        fn sethostname(&mut self, name: &str) -> Result<(), Errno> {
            self.calls.push(format!("hostname {name}"));
            Ok(())
        }
        fn mknod_char(&mut self, path: &str, major: u32, minor: u32, mode: u32) -> io::Result<()> {
            self.calls
                .push(format!("mknod {path} {major}:{minor} {mode:o}"));
            Ok(())
        }
        fn symlink(&mut self, target: &str, path: &str) -> io::Result<()> {
            self.calls.push(format!("symlink {path} -> {target}"));
            Ok(())
        }
        fn chown(&mut self, path: &str, uid: u32, gid: Option<u32>) -> io::Result<()> {
            self.calls.push(format!("chown {path} {uid}:{gid:?}"));
            Ok(())
        }
        fn device(&mut self, d: &DeviceSpec) -> io::Result<()> {
            self.calls.push(format!(
                "device {} {} {}:{} {:o} {}:{}",
                d.path, d.kind, d.major, d.minor, d.mode, d.uid, d.gid
            ));
            Ok(())
        }
        fn log(&mut self, line: &str) {
            self.calls.push(format!("log {line}"));
        }
        fn mount_share(&mut self, tag: &str) -> Result<String, Errno> {
            self.calls.push(format!("share {tag}"));
            if let Some(errno) = self.share_fails {
                return Err(errno);
            }
            Ok(SHARE_MOUNT.into())
        }
        fn release_share(&mut self) {
            self.calls.push("release share".into());
        }
        fn clone_tree(&mut self, path: &str, recursive: bool) -> Result<usize, Errno> {
            let n = self
                .calls
                .iter()
                .filter(|c| c.starts_with("clone "))
                .count();
            let how = if recursive { " recursive" } else { "" };
            self.calls.push(format!("clone {path}{how} as tree {n}"));
            Ok(n)
        }
        fn attach_tree(&mut self, tree: usize, target: &str) -> Result<(), Errno> {
            self.calls.push(format!("attach tree {tree} on {target}"));
            Ok(())
        }
        fn enter_root(&mut self, new_root: Option<&str>) -> Result<(), Errno> {
            self.calls
                .push(format!("enter_root {}", new_root.unwrap_or("/")));
            Ok(())
        }
    }

    fn docker_like_spec() -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            hostname: Some("box".into()),
            readonly_root: true,
            mounts: vec![
                spec_mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
                spec_mount(
                    "/dev",
                    "tmpfs",
                    "tmpfs",
                    &["nosuid", "strictatime", "mode=755", "size=65536k"],
                ),
                spec_mount(
                    "/dev/pts",
                    "devpts",
                    "devpts",
                    &[
                        "nosuid",
                        "noexec",
                        "newinstance",
                        "ptmxmode=0666",
                        "mode=0620",
                        "gid=5",
                    ],
                ),
                spec_mount(
                    "/dev/mqueue",
                    "mqueue",
                    "mqueue",
                    &["nosuid", "noexec", "nodev"],
                ),
                spec_mount(
                    "/sys/fs/cgroup",
                    "cgroup",
                    "cgroup",
                    &["ro", "nosuid", "noexec", "nodev", "relatime"],
                ),
            ],
            files: vec![ContainerFile {
                path: "/dev/termination-log".into(),
                mode: 0o100644,
                read_only: true,
                contents: b"".to_vec(),
            }],
            masked_paths: opts(&["/proc/kcore", "/proc/acpi", "/proc/missing"]),
            readonly_paths: opts(&["/proc/sys"]),
            sysctl: vec![("net.ipv4.ip_forward".into(), "1".into())],
            devices: vec![DeviceSpec {
                path: "/dev/test1".into(),
                kind: "c".into(),
                major: 10,
                minor: 229,
                mode: 0o660,
                uid: 1000,
                gid: 1001,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn apply_runs_every_step_in_order() {
        let mut os = FakeOs {
            kinds: HashMap::from([
                ("/proc/kcore".into(), PathKind::File),
                ("/proc/acpi".into(), PathKind::Dir),
                ("/proc/sys".into(), PathKind::Dir),
            ]),
            ..Default::default()
        };
        apply(&docker_like_spec(), &mut os).unwrap();
        let calls = os.calls.clone();
        let pos = |needle: &str| {
            calls
                .iter()
                .position(|c| c.starts_with(needle))
                .unwrap_or_else(|| panic!("{needle} not in {calls:#?}"))
        };
        assert_eq!(pos("hostname box"), 0);
        assert!(
            pos("mount mounting proc proc on /proc") < pos("mount mounting tmpfs tmpfs on /dev")
        );
        assert!(pos("mount mounting tmpfs tmpfs on /dev") < pos("mknod /dev/null 1:3 666"));
        assert!(
            pos("symlink /dev/ptmx -> pts/ptmx") < pos("mount mounting devpts devpts on /dev/pts")
        );
        assert!(pos("log skipping mount of mqueue") > pos("mount mounting devpts"));
        assert!(
            pos("mount mounting cgroup2 cgroup on /sys/fs/cgroup")
                < pos("device /dev/test1 c 10:229 660 1000:1001")
        );
        assert!(pos("device /dev/test1") < pos("write /dev/termination-log 644"));
        assert!(
            pos("write /dev/termination-log")
                < pos("mount bind-mounting /dev/termination-log on /dev/termination-log")
        );
        assert!(
            pos("mount remounting /dev/termination-log")
                < pos("sysctl /proc/sys/net/ipv4/ip_forward 1")
        );
        assert!(pos("sysctl") < pos("mount bind-mounting /dev/null on /proc/kcore"));
        // runc's order: read-only paths, then masked ones.
        assert!(
            pos("mount bind-mounting /proc/sys on /proc/sys")
                < pos("mount mounting tmpfs tmpfs on /proc/acpi")
        );
        assert!(pos("mount remounting /proc/sys") < pos("mount remounting / ("));
        assert!(
            !calls.iter().any(|c| c.contains("/proc/missing")),
            "{calls:#?}"
        );
        assert!(!calls
            .iter()
            .any(|c| c.contains("/dev/pts ") && c.contains("fallback")));
        assert_eq!(
            calls.last().map(String::as_str),
            Some(
                format!(
                    "mount {}",
                    MountCall::remount("/", MsFlags::MS_RDONLY | MsFlags::MS_NOSUID).describe()
                )
                .as_str()
            )
        );
    }

    #[test]
    fn a_tmpfs_dev_without_devpts_gets_one() {
        let spec = ContainerSpec {
            mounts: vec![spec_mount("/dev", "tmpfs", "tmpfs", &[])],
            ..Default::default()
        };
        let mut os = FakeOs::default();
        apply(&spec, &mut os).unwrap();
        assert!(
            os.calls
                .contains(&"mount mounting devpts devpts on /dev/pts".to_owned()),
            "{:#?}",
            os.calls
        );
    }

    #[test]
    fn failures_name_the_step_and_path() {
        let mut os = FakeOs {
            fail_target: Some("/dev/pts".into()),
            ..Default::default()
        };
        let err = apply(&docker_like_spec(), &mut os).unwrap_err().to_string();
        assert!(err.contains("mounting devpts devpts on /dev/pts"), "{err}");
        assert!(err.contains("no such device"), "{err}");
        let bad = ContainerSpec {
            sysctl: vec![("../x".into(), "1".into())],
            ..Default::default()
        };
        let err = apply(&bad, &mut FakeOs::default()).unwrap_err().to_string();
        assert!(err.contains("sysctl ../x"), "{err}");
    }

    #[test]
    fn shared_directories_are_binds_from_the_share_mount_then_released() {
        let mut spec = ContainerSpec {
            share_tag: Some("husk".into()),
            mounts: vec![
                spec_mount("/proc", "proc", "proc", &[]),
                spec_mount("/data", SHARE_FSTYPE, "m0", &["rbind", "ro", "nosuid"]),
                spec_mount("/cache", SHARE_FSTYPE, "m1", &[]),
            ],
            ..Default::default()
        };
        let mut os = FakeOs::default();
        os.kinds.insert(format!("{SHARE_MOUNT}/m0"), PathKind::Dir);
        os.kinds.insert(format!("{SHARE_MOUNT}/m1"), PathKind::Dir);
        apply(&spec, &mut os).unwrap();
        let calls = os.calls.join("\n");
        let pos = |needle: &str| {
            calls
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not in:\n{calls}"))
        };
        // Each share bind is a copy of its directory taken while the share
        // is mounted, attached in the spec's order once the guest's mounts
        // are gone.
        assert!(pos("share husk") < pos("clone /dev/.husk-share/m0 recursive as tree 0"));
        assert!(pos("clone /dev/.husk-share/m1 as tree 1") < pos("release share"));
        assert!(pos("release share") < pos("enter_root /"));
        assert!(pos("enter_root /") < pos("mounting proc"));
        assert!(pos("mounting proc") < pos("attach tree 0 on /data"));
        assert!(pos("attach tree 0 on /data") < pos("attach tree 1 on /cache"));
        // The options apply to the bind: read-only, nosuid.
        assert!(pos("attach tree 0 on /data") < pos("remounting /data"));
        assert!(!calls.contains("remounting /cache"), "{calls}");

        // A share mount without a share, or with a path for a name: errors
        // that name the mount; a failed share mount names the tag.
        spec.share_tag = None;
        let err = apply(&spec, &mut FakeOs::default()).unwrap_err();
        assert!(matches!(err, SetupError::NoShare { .. }), "{err}");
        spec.share_tag = Some("husk".into());
        spec.mounts[1].source = "../etc".into();
        let mut os = FakeOs::default();
        let err = apply(&spec, &mut os).unwrap_err();
        assert!(matches!(err, SetupError::ShareName { .. }), "{err}");
        assert!(os.calls.iter().any(|c| c == "release share"));
        let mut os = FakeOs {
            share_fails: Some(Errno::ENOENT),
            ..Default::default()
        };
        let err = apply(&spec, &mut os).unwrap_err();
        assert!(err.to_string().contains("husk"), "{err}");
        // A kernel without virtio-fs is named as the cause, with the fix.
        let mut os = FakeOs {
            share_fails: Some(Errno::ENODEV),
            ..Default::default()
        };
        let err = apply(&spec, &mut os).unwrap_err();
        assert!(matches!(err, SetupError::NoVirtiofs), "{err}");
        assert!(err.to_string().contains("make kernel"), "{err}");
    }

    #[test]
    fn a_shared_root_is_entered_alone_before_the_mounts() {
        let spec = ContainerSpec {
            share_tag: Some("husk".into()),
            root_share: Some("rootfs".into()),
            hostname: Some("box".into()),
            readonly_root: true,
            mounts: vec![
                spec_mount("/proc", "proc", "proc", &[]),
                spec_mount("/data", SHARE_FSTYPE, "m0", &["rbind"]),
            ],
            ..Default::default()
        };
        let mut os = FakeOs::default();
        os.kinds
            .insert(format!("{SHARE_MOUNT}/rootfs"), PathKind::Dir);
        os.kinds.insert(format!("{SHARE_MOUNT}/m0"), PathKind::Dir);
        apply(&spec, &mut os).unwrap();
        let calls = os.calls.join("\n");
        let pos = |needle: &str| {
            calls
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not in:\n{calls}"))
        };
        assert!(pos("hostname box") < pos("share husk"));
        assert!(pos("share husk") < pos("bind-mounting /dev/.husk-share/rootfs on /.husk-root"));
        assert!(pos("on /.husk-root\n") < pos("clone /dev/.husk-share/m0 recursive"));
        assert!(pos("clone /dev/.husk-share/m0") < pos("release share"));
        // Nothing of the guest moves along: the root is entered alone.
        assert!(!calls.contains("moving"), "{calls}");
        assert!(pos("release share") < pos("enter_root /.husk-root"));
        // The spec's mounts and the read-only root come after the switch.
        assert!(pos("enter_root /.husk-root") < pos("mounting proc proc on /proc"));
        assert!(pos("mounting proc proc on /proc") < pos("attach tree 0 on /data"));
        assert!(pos("attach tree 0 on /data") < pos("remounting / "));
    }

    #[test]
    fn root_propagation_is_applied_shared_before_the_mounts_others_after() {
        let spec = |p: &str| ContainerSpec {
            rootfs_propagation: Some(p.into()),
            mounts: vec![spec_mount("/proc", "proc", "proc", &[])],
            devices: vec![DeviceSpec {
                path: "/dev/x".into(),
                kind: "c".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut os = FakeOs::default();
        apply(&spec("rshared"), &mut os).unwrap();
        let calls = os.calls.join("\n");
        let shared = format!(
            "mount {}",
            MountCall::propagation("/", MsFlags::MS_SHARED | MsFlags::MS_REC).describe()
        );
        let first = calls.find(&shared).unwrap();
        assert!(first < calls.find("mounting proc").unwrap(), "{calls}");
        assert!(calls.rfind(&shared).unwrap() > calls.find("device /dev/x").unwrap());
        let mut os = FakeOs::default();
        apply(&spec("unbindable"), &mut os).unwrap();
        let calls = os.calls.join("\n");
        let unbindable = format!(
            "mount {}",
            MountCall::propagation("/", MsFlags::MS_UNBINDABLE).describe()
        );
        assert_eq!(calls.matches(&unbindable).count(), 1, "{calls}");
        assert!(calls.find(&unbindable).unwrap() > calls.find("device /dev/x").unwrap());
        let err = apply(&spec("sideways"), &mut FakeOs::default()).unwrap_err();
        assert!(matches!(err, SetupError::Propagation { .. }), "{err}");
    }

    #[test]
    fn in_a_user_namespace_fresh_file_systems_and_links_belong_to_its_root() {
        let mut spec = docker_like_spec();
        spec.uid_map = vec![crate::agent_proto::IdMapping {
            container: 0,
            host: 1000,
            size: 2000,
        }];
        spec.gid_map = vec![crate::agent_proto::IdMapping {
            container: 0,
            host: 3000,
            size: 10,
        }];
        assert_eq!(mapped_root(&spec), Some((1000, 3000)));
        let mut os = FakeOs::default();
        apply(&spec, &mut os).unwrap();
        let calls = os.calls.join("\n");
        // A tmpfs is mounted as the namespace's root's, its ids mapped.
        assert!(
            calls.contains("mounting tmpfs tmpfs on /dev") && !calls.contains("chown /dev 1"),
            "{calls}"
        );
        let tmpfs = in_user_namespace(&spec_mount("/dev", "tmpfs", "tmpfs", &["mode=755"]), &spec);
        assert_eq!(tmpfs.options, ["mode=755", "uid=1000", "gid=3000"]);
        let given = in_user_namespace(&spec_mount("/x", "tmpfs", "tmpfs", &["uid=5"]), &spec);
        assert_eq!(given.options, ["uid=1005", "gid=3000"]);
        let pts = in_user_namespace(
            &spec_mount("/dev/pts", "devpts", "devpts", &["gid=5", "mode=620"]),
            &spec,
        );
        // gid 5 is outside the gid map (size 10 from 0: inside): 3005.
        assert_eq!(pts.options, ["gid=3005", "mode=620"]);
        let proc = in_user_namespace(&spec_mount("/proc", "proc", "proc", &["uid=5"]), &spec);
        assert_eq!(proc.options, ["uid=5"]);
        for want in [
            "chown /dev/pts 1000:Some(3000)",
            "chown /dev/pts/ptmx 1000:Some(3000)",
            "chown /dev/ptmx 1000:Some(3000)",
            "chown /dev/stdin 1000:Some(3000)",
            "chown /dev/null 0:Some(0)",
            "device /dev/test1 c 10:229 660 2000:65534",
        ] {
            assert!(calls.contains(want), "{want} not in:\n{calls}");
        }
        // Binds and the proc file system are not the container's to own.
        assert!(!calls.contains("chown /proc "), "{calls}");
        // Without a user namespace nothing changes owner.
        let mut os = FakeOs::default();
        apply(&docker_like_spec(), &mut os).unwrap();
        assert!(!os.calls.iter().any(|c| c.starts_with("chown")));
    }

    #[test]
    fn the_mounts_to_detach_are_all_but_the_root_and_the_new_root_deepest_first() {
        let info = "\
1 0 0:1 / / rw - rootfs rootfs rw
2 1 0:2 / /proc rw - proc proc rw
3 1 0:3 / /dev rw - devtmpfs devtmpfs rw
4 3 0:4 / /dev/pts rw - devpts devpts rw
5 3 0:5 / /dev/.husk-share rw - virtiofs husk rw
6 1 0:5 /rootfs /.husk-root rw - virtiofs husk rw
7 6 0:6 / /.husk-root/x rw - tmpfs tmpfs rw
8 1 0:7 / /a\\040b rw - tmpfs tmpfs rw
";
        assert_eq!(
            mounts_to_detach(info, Some("/.husk-root")),
            ["/a b", "/dev/.husk-share", "/dev/pts", "/dev", "/proc"]
        );
        assert_eq!(
            mounts_to_detach(info, None),
            [
                "/a b",
                "/.husk-root/x",
                "/.husk-root",
                "/dev/.husk-share",
                "/dev/pts",
                "/dev",
                "/proc"
            ]
        );
        assert!(mounts_to_detach("garbage\n\n", None).is_empty());
    }

    #[test]
    fn a_shared_root_that_is_missing_or_not_a_name_is_an_error_and_the_share_released() {
        let spec = ContainerSpec {
            share_tag: Some("husk".into()),
            root_share: Some("rootfs".into()),
            ..Default::default()
        };
        // The directory is not in the share.
        let mut os = FakeOs::default();
        let err = apply(&spec, &mut os).unwrap_err();
        assert!(matches!(err, SetupError::RootShare { .. }), "{err}");
        assert!(err.to_string().contains("root.path"), "{err}");
        assert!(!os.calls.iter().any(|c| c.starts_with("switch_root")));
        assert_eq!(os.calls.last().map(String::as_str), Some("release share"));
        // A path for a name.
        let mut os = FakeOs::default();
        os.kinds
            .insert(format!("{SHARE_MOUNT}/../x"), PathKind::Dir);
        let bad = ContainerSpec {
            root_share: Some("../x".into()),
            ..spec.clone()
        };
        let err = apply(&bad, &mut os).unwrap_err();
        assert!(matches!(err, SetupError::ShareName { .. }), "{err}");
        // No share at all.
        let none = ContainerSpec {
            share_tag: None,
            ..spec.clone()
        };
        let err = apply(&none, &mut FakeOs::default()).unwrap_err();
        assert!(matches!(err, SetupError::NoShare { .. }), "{err}");
        // The bind fails: named, nothing switched.
        let mut os = FakeOs {
            fail_target: Some(SHARED_ROOT.into()),
            ..Default::default()
        };
        os.kinds
            .insert(format!("{SHARE_MOUNT}/rootfs"), PathKind::Dir);
        let err = apply(&spec, &mut os).unwrap_err().to_string();
        assert!(err.contains("/.husk-root"), "{err}");
        assert!(!os.calls.iter().any(|c| c.starts_with("switch_root")));
    }

    #[test]
    fn share_names_are_plain_components() {
        for ok in ["rootfs", "m0", "pod/abc/rootfs", "pod/abc/m12"] {
            assert!(share_name_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "/",
            "/etc",
            "a/",
            "a//b",
            "..",
            ".",
            "pod/../x",
            "pod/./x",
            "a\0b",
            "a/b/c/d/e",
        ] {
            assert!(!share_name_ok(bad), "{bad:?}");
        }
    }
}
