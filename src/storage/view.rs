//! The container's files as the host sees them, as the root of the mount
//! namespace engines join through the container's pid.
//!
//! Engines treat `/proc/<state pid>/ns/mnt` as the container's mount
//! namespace: `podman cp` into or out of a running container `setns`es into
//! it and copies relative to its root, as it would into a runc container
//! whose process has pivot_rooted into its rootfs. The state pid is the
//! VMM's, so [`enter`] gives that namespace the container's view: the
//! bundle's rootfs as `/`, with every shared directory and file bound on
//! its destination in spec order (their staged copies, so the host-side
//! read-only and `nodev` flags come along). Only the VMM's *main thread*
//! lives there (`/proc/PID/ns/mnt` is the thread group leader's), after
//! `unshare(CLONE_FS | CLONE_NEWNS)` and `pivot_root(".", ".")` with the old
//! root detached: the host's file system is not reachable from it, so a
//! symlink the container planted cannot send an engine's copy outside the
//! container. Every other VMM thread keeps the namespace the shares were
//! staged in ([`crate::storage::share`]).
//!
//! What lives only in guest memory (the guest's `/proc`, `/dev`, tmpfs
//! mounts, and with `io.husk.rootfs=block` the container's writes) is not in
//! the view.
//!
//! Mount destinations are resolved with `openat2(RESOLVE_IN_ROOT)` from the
//! rootfs, so symlinks in the image resolve inside it, as runc's
//! `securejoin` does; missing mount points are created in the rootfs (as
//! runc and the guest agent create them), except for a block rootfs, whose
//! cached image is keyed by its tree.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;

use crate::agent_proto::{ContainerSpec, SHARE_FSTYPE};
use crate::runtime::guest_spec::SharedDir;

/// The mount point of the view in the container's state directory (an
/// empty directory from everywhere but the view's namespace).
pub const VIEW_DIR: &str = "root";
/// Mode of mount point directories created in the rootfs.
const MOUNT_POINT_MODE: u32 = 0o755;
/// Mode of mount point files created in the rootfs.
const MOUNT_FILE_MODE: u32 = 0o644;

/// One shared directory or file of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewMount {
    /// Where the container sees it (absolute).
    pub destination: String,
    /// Its staged copy on the host.
    pub source: PathBuf,
    pub file: bool,
    pub recursive: bool,
}

/// Why the view could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("the container's mount namespace: {step}: {errno}")]
    Namespace { step: &'static str, errno: Errno },
    #[error("the container's mount namespace: mounting {what} on {destination}: {errno}")]
    Mount {
        what: String,
        destination: String,
        errno: Errno,
    },
    #[error("the container's mount namespace: mount point {destination} in the rootfs: {errno}")]
    MountPoint { destination: String, errno: Errno },
}

/// The shares of `container` in spec order, with their staged copies under
/// `share_root`; the rootfs share is the view's root, not one of these.
pub fn mounts(
    container: &ContainerSpec,
    shares: &[SharedDir],
    share_root: &Path,
) -> Vec<ViewMount> {
    container
        .mounts
        .iter()
        .filter(|m| m.fstype == SHARE_FSTYPE)
        .filter_map(|m| {
            let share = shares.iter().find(|s| s.name == m.source)?;
            Some(ViewMount {
                destination: m.destination.clone(),
                source: share_root.join(&share.name),
                file: share.file,
                recursive: share.recursive,
            })
        })
        .collect()
}

/// The components of an absolute destination, relative to the root (empty
/// and `.` components dropped; `..` is resolved by the kernel, inside the
/// root).
fn components(destination: &str) -> Vec<&str> {
    destination
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

fn open_in_root(root: RawFd, rel: &str) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = nix::fcntl::openat2(root, if rel.is_empty() { "." } else { rel }, how)?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Most dangling symlinks followed while creating one mount point (the
/// kernel's own limit for a path walk).
const MAX_SYMLINKS: u32 = 40;

/// The destination inside the root at `root`, as an `O_PATH` descriptor;
/// missing components are created when `create` (directories, and a file
/// at the end for a file mount); a dangling symlink on the way is followed
/// and its target created, inside the root. `None`: missing and not
/// created.
fn resolve(
    root: RawFd,
    destination: &str,
    file: bool,
    create: bool,
) -> Result<Option<OwnedFd>, Errno> {
    resolve_at_depth(root, destination, file, create, 0)
}

/// Where `fd` is, relative to the root at `root` (both resolved by the
/// kernel, so symlinks on the way are already followed).
fn relative_to_root(root: RawFd, fd: &OwnedFd) -> Result<String, Errno> {
    let at = |fd: RawFd| {
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    };
    let (root_path, path) = (at(root)?, at(fd.as_raw_fd())?);
    let rel = path.strip_prefix(&root_path).map_err(|_| Errno::EXDEV)?;
    Ok(format!("/{}", rel.display()))
}

fn resolve_at_depth(
    root: RawFd,
    destination: &str,
    file: bool,
    create: bool,
    depth: u32,
) -> Result<Option<OwnedFd>, Errno> {
    if depth > MAX_SYMLINKS {
        return Err(Errno::ELOOP);
    }
    let parts = components(destination);
    let full = parts.join("/");
    match open_in_root(root, &full) {
        Ok(fd) => return Ok(Some(fd)),
        Err(Errno::ENOENT) if create => {}
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut parent = open_in_root(root, "")?;
    for (i, part) in parts.iter().enumerate() {
        let prefix = parts[..=i].join("/");
        let last = i + 1 == parts.len();
        match open_in_root(root, &prefix) {
            Ok(fd) => {
                parent = fd;
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        // The parent was resolved inside the root; the new name is a
        // plain component created right in it.
        let dir = nix::fcntl::openat(
            Some(parent.as_raw_fd()),
            ".",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let dir = unsafe { OwnedFd::from_raw_fd(dir) };
        let made = if last && file {
            nix::fcntl::openat(
                Some(dir.as_raw_fd()),
                OsStr::from_bytes(part.as_bytes()),
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(MOUNT_FILE_MODE),
            )
            .map(|fd| {
                // SAFETY: a new descriptor, closed at once.
                drop(unsafe { OwnedFd::from_raw_fd(fd) })
            })
        } else {
            nix::sys::stat::mkdirat(
                Some(dir.as_raw_fd()),
                OsStr::from_bytes(part.as_bytes()),
                Mode::from_bits_truncate(MOUNT_POINT_MODE),
            )
        };
        match made {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        match open_in_root(root, &prefix) {
            Ok(fd) => parent = fd,
            // It exists but does not resolve: a dangling symlink (an
            // image's `/var/run -> /run` without `/run`, say). Follow it.
            Err(Errno::ENOENT) => {
                let target = nix::fcntl::readlinkat(
                    Some(dir.as_raw_fd()),
                    OsStr::from_bytes(part.as_bytes()),
                )?;
                let target = target.to_string_lossy();
                let base = if target.starts_with('/') {
                    String::new()
                } else {
                    relative_to_root(root, &parent)?
                };
                let rest = parts[i + 1..].join("/");
                let next = format!("{base}/{target}/{rest}");
                return resolve_at_depth(root, &next, file, create, depth + 1);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Some(parent))
}

/// The path naming the object behind `fd` (for mount(2)).
fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Moves the calling thread into a new mount namespace whose root is the
/// container's view (see the module docs): `rootfs` as `/` (read-only when
/// `read_only`), `mounts` on their destinations; `create_points` allows
/// creating missing mount points in the rootfs. `state_dir` holds the
/// view's mount point. Call it on the VMM's main thread, which must need no
/// host path afterwards.
pub fn enter(
    state_dir: &Path,
    rootfs: &Path,
    mounts: &[ViewMount],
    create_points: bool,
    read_only: bool,
) -> Result<(), ViewError> {
    let ns = |step| move |errno| ViewError::Namespace { step, errno };
    crate::jail::root::slave_mount_namespace(CloneFlags::CLONE_FS)
        .map_err(|(step, errno)| ns(step)(errno))?;
    let point = state_dir.join(VIEW_DIR);
    // Explicit mode: the passthrough cleared this process's umask.
    match std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&point)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(ViewError::Namespace {
                step: "creating the view's mount point",
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })
        }
    }
    mount(
        Some(rootfs),
        &point,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|errno| ViewError::Mount {
        what: format!("the rootfs {}", rootfs.display()),
        destination: "/".into(),
        errno,
    })?;
    let root = nix::fcntl::open(
        &point,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(ns("opening the view"))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    let root = unsafe { OwnedFd::from_raw_fd(root) };
    for m in mounts {
        let target =
            resolve(root.as_raw_fd(), &m.destination, m.file, create_points).map_err(|errno| {
                ViewError::MountPoint {
                    destination: m.destination.clone(),
                    errno,
                }
            })?;
        let Some(target) = target else {
            log::debug!(
                "view: no mount point {} in a block rootfs, left out",
                m.destination
            );
            continue;
        };
        let mut flags = MsFlags::MS_BIND;
        if m.recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(
            Some(&m.source),
            fd_path(&target).as_str(),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|errno| ViewError::Mount {
            what: m.source.display().to_string(),
            destination: m.destination.clone(),
            errno,
        })?;
    }
    drop(root);
    if read_only {
        crate::storage::share::restrict(&point, true, false).map_err(|errno| ViewError::Mount {
            what: "the read-only root".into(),
            destination: "/".into(),
            errno,
        })?;
    }
    nix::unistd::chdir(&point).map_err(ns("entering the view"))?;
    nix::unistd::pivot_root(".", ".").map_err(ns("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(ns("detaching the host's root"))?;
    nix::unistd::chdir("/").map_err(ns("entering the view"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_proto::MountSpec;

    #[test]
    fn the_views_mounts_are_the_shares_in_spec_order() {
        let spec = ContainerSpec {
            mounts: vec![
                MountSpec {
                    destination: "/proc".into(),
                    fstype: "proc".into(),
                    source: "proc".into(),
                    options: vec![],
                },
                MountSpec {
                    destination: "/etc/hosts".into(),
                    fstype: SHARE_FSTYPE.into(),
                    source: "m1".into(),
                    options: vec![],
                },
                MountSpec {
                    destination: "/data".into(),
                    fstype: SHARE_FSTYPE.into(),
                    source: "m0".into(),
                    options: vec!["rbind".into()],
                },
            ],
            ..Default::default()
        };
        let share = |name: &str, file, recursive| SharedDir {
            name: name.into(),
            source: "/host".into(),
            read_only: false,
            recursive,
            file,
        };
        let shares = [
            share("m0", false, true),
            share("m1", true, false),
            share("rootfs", false, true),
        ];
        let got = mounts(&spec, &shares, Path::new("/s/share"));
        assert_eq!(
            got,
            [
                ViewMount {
                    destination: "/etc/hosts".into(),
                    source: "/s/share/m1".into(),
                    file: true,
                    recursive: false,
                },
                ViewMount {
                    destination: "/data".into(),
                    source: "/s/share/m0".into(),
                    file: false,
                    recursive: true,
                },
            ]
        );
        assert_eq!(components("//a/./b/../c/"), ["a", "b", "..", "c"]);
    }

    /// Mount points resolve inside the root, through the image's symlinks
    /// (absolute ones and `..` included), and are created there.
    #[test]
    fn destinations_resolve_and_are_created_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink("/run", root.join("var-run")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("escape")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("abs-escape")).unwrap();
        let fd =
            nix::fcntl::open(&root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        // SAFETY: a new descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let r = fd.as_raw_fd();
        let real = |fd: OwnedFd| std::fs::read_link(fd_path(&fd)).unwrap();
        assert_eq!(
            real(resolve(r, "/var-run/x", false, true).unwrap().unwrap()),
            root.join("run/x")
        );
        assert_eq!(
            real(resolve(r, "/escape/a/b", false, true).unwrap().unwrap()),
            root.join("outside/a/b")
        );
        assert_eq!(
            real(resolve(r, "/abs-escape/f", true, true).unwrap().unwrap()),
            root.join(dir.path().strip_prefix("/").unwrap())
                .join("outside/f")
        );
        assert!(root
            .join(dir.path().strip_prefix("/").unwrap())
            .join("outside/f")
            .is_file());
        assert_eq!(
            real(resolve(r, "/../../etc/hosts", true, true).unwrap().unwrap()),
            root.join("etc/hosts")
        );
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing made outside"
        );
        // A symlink loop ends, with ELOOP.
        std::os::unix::fs::symlink("loop-b", root.join("loop-a")).unwrap();
        std::os::unix::fs::symlink("loop-a", root.join("loop-b")).unwrap();
        assert_eq!(
            resolve(r, "/loop-a/x", false, true).unwrap_err(),
            Errno::ELOOP
        );
        // Not created when not allowed.
        assert!(resolve(r, "/nope/x", false, false).unwrap().is_none());
        assert!(!root.join("nope").exists());
    }

    /// The whole view, in a child: the root is the rootfs, the shares sit
    /// on their destinations, the host is out of reach.
    #[test]
    fn the_view_is_the_rootfs_with_the_shares_and_nothing_of_the_host() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (mount(2), as the VMM); CI runs as root");
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let rootfs = dir.path().join("rootfs");
        let vol = dir.path().join("vol");
        for d in [&state, &rootfs, &vol] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(rootfs.join("in-root"), b"r").unwrap();
        std::fs::write(vol.join("in-vol"), b"v").unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, b"h").unwrap();
        let marker = dir.path().join("host-only");
        std::fs::write(&marker, b"x").unwrap();
        let mounts = vec![
            ViewMount {
                destination: "/data".into(),
                source: vol.clone(),
                file: false,
                recursive: true,
            },
            ViewMount {
                destination: "/etc/hosts".into(),
                source: hosts.clone(),
                file: true,
                recursive: false,
            },
        ];
        let (state2, rootfs2, marker2) = (state.clone(), rootfs.clone(), marker.clone());
        // The view's mounts stay in the child.
        assert!(crate::test_support::in_child(move || {
            enter(&state2, &rootfs2, &mounts, true, false).unwrap();
            std::fs::read("/in-root").unwrap() == b"r"
                && std::fs::read("/data/in-vol").unwrap() == b"v"
                && std::fs::read("/etc/hosts").unwrap() == b"h"
                && !marker2.exists()
                && std::fs::write("/data/from-view", b"w").is_ok()
        }));
        assert_eq!(std::fs::read(vol.join("from-view")).unwrap(), b"w");
        // The mount points were made in the rootfs; the view's mount point
        // is an empty directory on the host.
        assert!(rootfs.join("data").is_dir() && rootfs.join("etc/hosts").is_file());
        assert_eq!(std::fs::read_dir(state.join(VIEW_DIR)).unwrap().count(), 0);
    }
}
