//! How a pod's later containers reach the VM its sandbox booted: one host
//! directory per pod, shared with the VM, that each container's files are
//! bound into while the VM runs (what Kata does with its sandbox's shared
//! directory).
//!
//! - [`prepare`], before the sandbox's VMM starts: `<root>/<sandbox>.pod`,
//!   bind-mounted on itself and made a *shared* mount. The sandbox's VMM
//!   serves it as the share [`POD_SHARE`] (read-only, recursive): its mount
//!   namespace is a slave of the host's ([`super::share`]), so what is
//!   mounted under the directory later reaches it (and its fs server's
//!   jail) by propagation.
//! - [`add`], at a later container's create: `<dir>/<id>/` with the
//!   container's rootfs as `rootfs` and each of its shared directories and
//!   files as `m0`, `m1`, ... (the names of [`crate::runtime::guest_spec`]),
//!   each bound `nodev` (and read-only where the mount is) on the host side
//!   before it propagates: the guest cannot open a host device through them
//!   nor write what is read-only.
//! - [`remove`] unbinds a container's entries (the unmounts propagate too);
//!   [`release`] the whole directory, after the VM is gone.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::share::{MountAttr, ShareError, AT_RECURSIVE, MOUNT_ATTR_NODEV, MOUNT_ATTR_RDONLY};
use crate::runtime::guest_spec::SharedDir;

/// The pod directory's name in the sandbox VM's share.
pub const POD_SHARE: &str = "pod";
/// The rootfs of a pod's container in its directory.
pub const ROOTFS: &str = "rootfs";
/// The suffix of a pod directory next to its sandbox's state directory.
const DIR_SUFFIX: &str = ".pod";

/// The pod directory of sandbox `sandbox` under the state root `root`.
pub fn dir(root: &Path, sandbox: &str) -> PathBuf {
    root.join(format!("{sandbox}{DIR_SUFFIX}"))
}

fn dir_err(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ShareError {
    let path = path.to_path_buf();
    move |source| ShareError::Dir { step, path, source }
}

fn mount_err(step: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> ShareError {
    let path = path.to_path_buf();
    move |e| ShareError::Dir {
        step,
        path,
        source: std::io::Error::from(e),
    }
}

/// Makes the pod directory of `sandbox` (see the module docs).
pub fn prepare(root: &Path, sandbox: &str) -> Result<PathBuf, ShareError> {
    let dir = dir(root, sandbox);
    std::fs::create_dir_all(root).map_err(dir_err("creating", root))?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        // A pod directory left by a shim that died: start afresh.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            release(&dir);
            std::fs::create_dir(&dir).map_err(dir_err("creating", &dir))?;
        }
        Err(e) => return Err(dir_err("creating", &dir)(e)),
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(dir_err("setting the mode of", &dir))?;
    let made = mount(
        Some(&dir),
        &dir,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(mount_err("binding", &dir))
    .and_then(|()| {
        mount(
            None::<&str>,
            &dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(mount_err("making shared", &dir))
    });
    if let Err(e) = made {
        release(&dir);
        return Err(e);
    }
    Ok(dir)
}

/// The share the sandbox's VMM serves for `dir`.
pub fn share(dir: &Path) -> SharedDir {
    SharedDir {
        name: POD_SHARE.into(),
        source: dir.to_path_buf(),
        read_only: true,
        recursive: true,
        file: false,
    }
}

/// Whether `name` is one plain path component.
fn plain(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// Binds container `id`'s rootfs and shares into the pod directory `dir`
/// (see the module docs). On error nothing of it is left.
pub fn add(dir: &Path, id: &str, rootfs: &Path, shares: &[SharedDir]) -> Result<(), ShareError> {
    if !plain(id) {
        return Err(ShareError::Name { name: id.into() });
    }
    if shares.len() > super::share::MAX_SHARES {
        return Err(ShareError::TooMany {
            count: shares.len(),
        });
    }
    let own = dir.join(id);
    std::fs::create_dir(&own).map_err(dir_err("creating", &own))?;
    let root = SharedDir {
        name: ROOTFS.into(),
        source: rootfs.to_path_buf(),
        read_only: false,
        recursive: true,
        file: false,
    };
    for s in std::iter::once(&root).chain(shares) {
        if let Err(e) = bind_one(&own, s) {
            remove(dir, id);
            return Err(e);
        }
    }
    Ok(())
}

fn bind_one(own: &Path, s: &SharedDir) -> Result<(), ShareError> {
    if !plain(&s.name) {
        return Err(ShareError::Name {
            name: s.name.clone(),
        });
    }
    let bind_err = |e: String| ShareError::Bind {
        destination_hint: s.name.clone(),
        source_path: s.source.clone(),
        reason: e,
    };
    let meta = std::fs::metadata(&s.source).map_err(|e| bind_err(e.to_string()))?;
    if s.file != meta.is_file() || (!s.file && !meta.is_dir()) {
        return Err(bind_err(
            if s.file {
                "not a regular file on the host"
            } else {
                "not a directory on the host"
            }
            .into(),
        ));
    }
    let target = own.join(&s.name);
    super::share::mount_point(&target, s.file)?;
    attach_restricted(&s.source, &target, s.read_only, s.recursive)
        .map_err(|e| bind_err(format!("{e} (pods need Linux 5.12 or later)")))
}

/// `open_tree(2)`, `mount_setattr(2)` and `move_mount(2)` flags.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_EMPTY_PATH: libc::c_uint = 0x1000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// Binds `source` on `target` already `nodev` (and read-only): the copy is
/// made detached, restricted, then attached, so the copies that reach the
/// pod directory's slaves (the VM's fs server) are made with those flags.
/// A bind made first and restricted after would propagate unrestricted.
fn attach_restricted(
    source: &Path,
    target: &Path,
    read_only: bool,
    recursive: bool,
) -> Result<(), nix::Error> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;
    let src = CString::new(source.as_os_str().as_bytes()).map_err(|_| nix::Error::EINVAL)?;
    let dst = CString::new(target.as_os_str().as_bytes()).map_err(|_| nix::Error::EINVAL)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    // AT_RECURSIVE's bits as open_tree's flag type (a small positive
    // constant).
    let at_recursive = AT_RECURSIVE.unsigned_abs();
    if recursive {
        flags |= at_recursive;
    }
    // SAFETY: open_tree reads the NUL-terminated path and returns a new
    // descriptor or -1; no memory of ours is written.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, src.as_ptr(), flags) };
    let fd = nix::Error::result(fd)?;
    let fd = i32::try_from(fd).map_err(|_| nix::Error::EBADF)?;
    // SAFETY: open_tree returned this descriptor to us alone.
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NODEV | if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut set_flags = AT_EMPTY_PATH;
    if recursive {
        set_flags |= at_recursive;
    }
    // SAFETY: `attr` is a properly laid out `struct mount_attr` whose size
    // is passed, read only; the empty path with AT_EMPTY_PATH names `tree`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            set_flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    nix::Error::result(rc)?;
    // SAFETY: move_mount reads two NUL-terminated strings (the empty one
    // with MOVE_MOUNT_F_EMPTY_PATH names `tree`).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    nix::Error::result(rc).map(drop)
}

/// Unbinds and removes container `id`'s entries of the pod directory.
pub fn remove(dir: &Path, id: &str) {
    if !plain(id) {
        return;
    }
    let own = dir.join(id);
    let Ok(entries) = std::fs::read_dir(&own) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => log::warn!("unmounting {}: {e}", path.display()),
        }
        if still_mounted_under(&path) {
            log::warn!(
                "{} is still mounted: left in place, not removed",
                path.display()
            );
            return;
        }
        let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = gone {
            log::warn!("removing {}: {e}", path.display());
        }
    }
    if let Err(e) = std::fs::remove_dir(&own) {
        log::warn!("removing {}: {e}", own.display());
    }
}

/// Whether anything is mounted on or under `path` in this namespace.
fn still_mounted_under(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    let p = path.to_string_lossy();
    let prefix = format!("{p}/");
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m == p || m.starts_with(&prefix))
}

/// Unmounts the pod directory `dir` with all it holds, and removes it
/// (only once nothing is mounted under it: the files under a bind that
/// could not go are a container's, never removed through here).
pub fn release(dir: &Path) {
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => log::warn!("unmounting {}: {e}", dir.display()),
    }
    if still_mounted_under(dir) {
        log::warn!(
            "{} still has mounts: left in place, not removed",
            dir.display()
        );
        return;
    }
    // Only the empty mount points of the containers' entries are left.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let own = entry.path();
            for inner in std::fs::read_dir(&own).into_iter().flatten().flatten() {
                let p = inner.path();
                let _ = std::fs::remove_dir(&p).or_else(|_| std::fs::remove_file(&p));
            }
            let _ = std::fs::remove_dir(&own);
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        log::warn!("removing {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_plain() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(!plain(bad), "{bad:?}");
        }
        assert!(plain("0123abcdef"));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            add(dir.path(), "../x", dir.path(), &[]),
            Err(ShareError::Name { .. })
        ));
    }

    #[test]
    fn a_pod_directory_takes_binds_that_propagate_and_leaves_nothing() {
        crate::test_support::need_root("mount(2), as the shim");
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let rootfs = tmp.path().join("rootfs");
        let vol = tmp.path().join("vol");
        for d in [&rootfs, &vol] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(rootfs.join("etc-file"), b"from the image").unwrap();
        std::fs::write(vol.join("data"), b"volume").unwrap();
        let dir = prepare(&root, "sb").unwrap();
        // A copy of the directory made before the container came (what the
        // VMM's namespace holds) sees the binds made after.
        let copy = tmp.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        mount(
            Some(&dir),
            &copy,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap();
        mount(
            None::<&str>,
            &copy,
            None::<&str>,
            MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .unwrap();
        let shares = vec![SharedDir {
            name: "m0".into(),
            source: vol.clone(),
            read_only: true,
            recursive: false,
            file: false,
        }];
        add(&dir, "c1", &rootfs, &shares).unwrap();
        assert_eq!(
            std::fs::read(copy.join("c1/rootfs/etc-file")).unwrap(),
            b"from the image"
        );
        assert_eq!(std::fs::read(copy.join("c1/m0/data")).unwrap(), b"volume");
        let ro = std::fs::write(copy.join("c1/m0/new"), b"x").unwrap_err();
        assert_eq!(ro.raw_os_error(), Some(libc::EROFS), "{ro}");
        // The copies that propagated are nodev from the start: a device node
        // in an image cannot open the host's device through the VM's server.
        for entry in ["c1/rootfs", "c1/m0"] {
            let flags = nix::sys::statvfs::statvfs(&copy.join(entry))
                .unwrap()
                .flags();
            assert!(
                flags.contains(nix::sys::statvfs::FsFlags::ST_NODEV),
                "{entry}: {flags:?}"
            );
        }
        std::fs::write(copy.join("c1/rootfs/new"), b"rw").unwrap();
        // A bad share leaves nothing of the container.
        let bad = vec![SharedDir {
            name: "m0".into(),
            source: tmp.path().join("missing"),
            read_only: false,
            recursive: false,
            file: false,
        }];
        assert!(add(&dir, "c2", &rootfs, &bad).is_err());
        assert!(!dir.join("c2").exists());
        remove(&dir, "c1");
        assert!(!dir.join("c1").exists());
        assert!(!copy.join("c1").exists());
        assert_eq!(std::fs::read(vol.join("data")).unwrap(), b"volume");
        umount2(&copy, MntFlags::MNT_DETACH).unwrap();
        add(&dir, "c3", &rootfs, &[]).unwrap();
        release(&dir);
        assert!(!dir.exists());
        assert!(rootfs.join("etc-file").exists(), "the rootfs is the user's");
    }
}
