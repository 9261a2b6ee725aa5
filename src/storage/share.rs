//! The directory a container's VMM serves over virtio-fs: every shared
//! host directory ([`SharedDir`]) bind-mounted under one root, in a mount
//! namespace of the VMM's own.
//!
//! [`stage`] runs in the VMM process before any guest memory exists:
//!
//! 1. `unshare(CLONE_NEWNS)` and make every mount a slave of the host's
//!    (`MS_REC | MS_SLAVE`, as runc's default rootfs propagation): unmounts
//!    on the host still reach the copy, nothing mounted here reaches the
//!    host, and all of it disappears with the process;
//! 2. a small tmpfs on `<state dir>/share` (an empty directory as seen from
//!    the host);
//! 3. per share, a directory (or, for a file, an empty file) `<name>` with
//!    the source bind-mounted on it (`MS_REC` for `rbind`), then made
//!    `nodev` with `mount_setattr` (recursively for `rbind`): the VMM opens
//!    files for the guest as root, and a device node the guest made (or an
//!    image holds) must not open the host's device through it; a read-only
//!    share is made read-only the same way, so a guest that remounts its
//!    copy read-write still gets `EROFS`;
//! 4. the tmpfs itself remounted read-only: the guest cannot add files
//!    beside the shares.
//!
//! The VMM then serves the root over virtio-fs
//! ([`crate::vmm::devices::virtio::fs`]); fuse-backend-rs's passthrough
//! crosses from the tmpfs into each bind mount as a path walk would.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;

use crate::runtime::guest_spec::SharedDir;

/// The staging directory's name in the container's state directory.
pub const SHARE_DIR: &str = "share";
/// Options of the staging tmpfs (it holds only empty mount points).
const STAGING_TMPFS: &str = "mode=0755,size=64k,nr_inodes=4096";
/// Most shares a container may have.
pub const MAX_SHARES: usize = 1024;

/// `mount_setattr(2)` (Linux 5.12): `struct mount_attr` and its flags.
#[repr(C)]
pub(crate) struct MountAttr {
    pub(crate) attr_set: u64,
    pub(crate) attr_clr: u64,
    pub(crate) propagation: u64,
    pub(crate) userns_fd: u64,
}
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
pub(crate) const AT_RECURSIVE: libc::c_int = 0x8000;

/// Why the shares could not be staged.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("a mount namespace for the VMM: {0}")]
    Namespace(nix::Error),
    #[error("{step} {path}: {source}")]
    Dir {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mount {destination_hint}: sharing {source_path}: {reason}")]
    Bind {
        destination_hint: String,
        source_path: PathBuf,
        reason: String,
    },
    #[error("{count} directory mounts; husk shares at most {MAX_SHARES}")]
    TooMany { count: usize },
    #[error("share name {name:?} is not a plain file name")]
    Name { name: String },
}

fn errno_reason(e: nix::Error) -> String {
    match e {
        nix::Error::ENOENT => "no such directory on the host".into(),
        nix::Error::ENOTDIR => "not a directory on the host".into(),
        nix::Error::EACCES | nix::Error::EPERM => {
            format!("{e} (the VMM runs as root; is it a mount another namespace locked?)")
        }
        other => other.to_string(),
    }
}

/// Makes `path` `nodev`, and read-only when `read_only` (with everything
/// under it when `recursive`), keeping its other flags.
pub(crate) fn restrict(path: &Path, read_only: bool, recursive: bool) -> Result<(), nix::Error> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| nix::Error::EINVAL)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NODEV | if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `c` is a NUL-terminated path that outlives the call, `attr`
    // is a properly laid out `struct mount_attr` whose size is passed; the
    // kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = nix::Error::last();
    if err != nix::Error::ENOSYS || recursive {
        return Err(err);
    }
    // Before Linux 5.12: a remount of the bind, keeping the flags it has.
    let st = nix::sys::statvfs::statvfs(path)?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let f = st.flags();
    use nix::sys::statvfs::FsFlags;
    for (have, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if f.contains(have) {
            flags |= keep;
        }
    }
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
}

/// Makes the mount point of a share at `target`: an empty file for a file,
/// a directory otherwise.
pub(crate) fn mount_point(target: &Path, file: bool) -> Result<(), ShareError> {
    let made = if file {
        std::fs::File::create(target).map(drop)
    } else {
        std::fs::create_dir(target)
    };
    made.map_err(|source| ShareError::Dir {
        step: "creating",
        path: target.to_path_buf(),
        source,
    })
}

/// Stages `shares` under `<state_dir>/share` in a new mount namespace of
/// the calling process (see the module docs); returns that directory.
/// Call it before the process starts other threads.
pub fn stage(state_dir: &Path, shares: &[SharedDir]) -> Result<PathBuf, ShareError> {
    if shares.len() > MAX_SHARES {
        return Err(ShareError::TooMany {
            count: shares.len(),
        });
    }
    for s in shares {
        let plain = !s.name.is_empty()
            && s.name != "."
            && s.name != ".."
            && !s.name.contains('/')
            && !s.name.contains('\0');
        if !plain {
            return Err(ShareError::Name {
                name: s.name.clone(),
            });
        }
    }
    crate::jail::root::slave_mount_namespace(CloneFlags::empty())
        .map_err(|(_, e)| ShareError::Namespace(e))?;
    let root = state_dir.join(SHARE_DIR);
    let dir_err = |step: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ShareError::Dir { step, path, source }
    };
    crate::jail::root::tmpfs_room(&root, 0o755, STAGING_TMPFS)
        .map_err(|(step, e)| dir_err(step, &root)(std::io::Error::from(e)))?;
    for s in shares {
        let target = root.join(&s.name);
        mount_point(&target, s.file)?;
        let bind_err = |e: nix::Error| ShareError::Bind {
            destination_hint: s.name.clone(),
            source_path: s.source.clone(),
            reason: errno_reason(e),
        };
        let meta = std::fs::metadata(&s.source).map_err(|e| ShareError::Bind {
            destination_hint: s.name.clone(),
            source_path: s.source.clone(),
            reason: e.to_string(),
        })?;
        if s.file && !meta.is_file() {
            return Err(ShareError::Bind {
                destination_hint: s.name.clone(),
                source_path: s.source.clone(),
                reason: "not a regular file on the host".into(),
            });
        }
        if !s.file && !meta.is_dir() {
            return Err(bind_err(nix::Error::ENOTDIR));
        }
        let mut flags = MsFlags::MS_BIND;
        if s.recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(Some(&s.source), &target, None::<&str>, flags, None::<&str>).map_err(bind_err)?;
        restrict(&target, s.read_only, s.recursive).map_err(bind_err)?;
    }
    mount(
        None::<&str>,
        &root,
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        Some(STAGING_TMPFS),
    )
    .map_err(|e| dir_err("making read-only", &root)(std::io::Error::from(e)))?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::in_child;

    fn need_root() {
        crate::test_support::need_root("mount(2), as the VMM");
    }

    #[test]
    fn shares_are_staged_rw_and_ro_and_nothing_reaches_the_host() {
        need_root();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let rw = dir.path().join("rw");
        let ro = dir.path().join("ro");
        for d in [&state, &rw, &ro] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(ro.join("f"), b"ro file").unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, b"127.0.0.1 localhost\n").unwrap();
        let shares = vec![
            SharedDir {
                name: "m2".into(),
                source: hosts.clone(),
                read_only: false,
                recursive: false,
                file: true,
            },
            SharedDir {
                name: "m0".into(),
                source: rw.clone(),
                read_only: false,
                recursive: false,
                file: false,
            },
            SharedDir {
                name: "m1".into(),
                source: ro.clone(),
                read_only: true,
                recursive: true,
                file: false,
            },
        ];
        let (state2, rw2, hosts2) = (state.clone(), rw.clone(), hosts.clone());
        assert!(in_child(move || {
            let root = stage(&state2, &shares).unwrap();
            // A file share is the host's file, live both ways.
            std::fs::write(&hosts2, b"10.0.0.1 db\n").unwrap();
            let live = std::fs::read(root.join("m2")).unwrap() == b"10.0.0.1 db\n";
            std::fs::write(root.join("m0/new"), b"from the share").unwrap();
            // A device node in a share does not open the host's device.
            nix::sys::stat::mknod(
                &root.join("m0/null"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap();
            let dev = std::fs::File::open(root.join("m0/null")).unwrap_err();
            let nodev = dev.raw_os_error() == Some(libc::EACCES);
            std::fs::remove_file(root.join("m0/null")).unwrap();
            let ro_write = std::fs::write(root.join("m1/f"), b"x").unwrap_err();
            let beside = std::fs::write(root.join("planted"), b"x").unwrap_err();
            live && nodev
                && std::fs::read(rw2.join("new")).unwrap() == b"from the share"
                && std::fs::read(root.join("m1/f")).unwrap() == b"ro file"
                && ro_write.raw_os_error() == Some(libc::EROFS)
                && beside.raw_os_error() == Some(libc::EROFS)
        }));
        // On the host: the write landed, the read-only file is unchanged,
        // and the staging directory is an empty directory (no mount).
        assert_eq!(std::fs::read(rw.join("new")).unwrap(), b"from the share");
        assert_eq!(std::fs::read(ro.join("f")).unwrap(), b"ro file");
        let staged = state.join(SHARE_DIR);
        assert_eq!(std::fs::read_dir(&staged).unwrap().count(), 0);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(staged.to_str().unwrap()));
    }

    #[test]
    fn a_missing_source_is_named() {
        need_root();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().to_path_buf();
        let missing = dir.path().join("nope");
        assert!(in_child(move || {
            let err = stage(
                &state,
                &[SharedDir {
                    name: "m0".into(),
                    source: missing,
                    read_only: false,
                    recursive: false,
                    file: false,
                }],
            )
            .unwrap_err();
            let msg = err.to_string();
            msg.contains("nope") && msg.contains("m0")
        }));
    }

    #[test]
    fn names_that_are_not_file_names_are_refused_before_any_mount() {
        for name in ["", ".", "..", "a/b"] {
            let err = stage(
                Path::new("/nonexistent"),
                &[SharedDir {
                    name: name.into(),
                    source: "/".into(),
                    read_only: false,
                    recursive: false,
                    file: false,
                }],
            )
            .unwrap_err();
            assert!(matches!(err, ShareError::Name { .. }), "{name:?}: {err}");
        }
    }
}
