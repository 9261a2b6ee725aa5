//! The VMM's root once its guest runs: a per-container directory holding
//! only what its threads still open by path.
//!
//! A container's VMM stages its shares in a mount namespace of its own
//! ([`crate::storage::share`], or [`private_namespace`] when it has none),
//! builds its VM there (kernel, initramfs, images, template, taps, all
//! opened by then), and then its VM thread calls [`Jail::enter`], before
//! any device serves the guest and before any thread drops its
//! capabilities:
//!
//! 1. a small tmpfs on `<state dir>/jail` (an empty directory from the
//!    host);
//! 2. in it, at the same absolute paths as on the host, so the code keeps
//!    its paths: the container's state directory (its record, logs and
//!    vsock sockets; not recursively) and its short socket directory where
//!    the state directory is too deep for a socket address, the staged shares under it
//!    (recursively: each share keeps its `nodev` and read-only flags), and
//!    of `/proc` only this process's `fd` directory and `mountinfo` (what
//!    the virtio-fs passthrough reads), at `/proc/self/...`; no cgroup file
//!    system (the container's keeper, [`crate::runtime::keeper`], removes a
//!    cgroup nobody can delete) and no `/dev`;
//! 3. the tmpfs read-only, then `pivot_root` into it with the old root
//!    detached: every thread of the namespace (all but the main thread,
//!    which lives in the container's view, [`crate::storage::view`]) now
//!    has the jail as `/`.
//!
//! A VMM that enters a user namespace cannot pivot (it has no privilege
//! over the staging mount namespace by then): its main thread builds the
//! same jail before the process enters the namespace ([`Jail::prepare`]),
//! and the VM thread `chroot`s into it ([`PreparedJail::enter`]); its
//! threads had the staging namespace's root back the same way
//! ([`StagingRoot`]), since they start after the main thread moved into the
//! container's view.

//! Escapes a jail must not leave open: a directory descriptor from before
//! the pivot (`openat(fd, "..")` walks up the old tree, detached or not).
//! The VMM holds none: the virtio-fs server opens its share and
//! `/proc/self/fd` when the guest first uses it, inside the jail
//! ([`Jail::enter`] checks, and fails the create if one is found). A
//! `/proc` of its own is not mounted: it would show every process's
//! `root`, and another VMM's threads run as the same uid.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// The annotation that turns the jail off for one container: `off` (the
/// default is `on`). The VMM's seccomp filters and dropped capabilities
/// stay.
pub const ANNOTATION: &str = "io.husk.vmm.jail";

/// Whether an [`ANNOTATION`] value asks for the jail; `None`: neither
/// `on` nor `off`.
pub fn parse_annotation(value: &str) -> Option<bool> {
    match value {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

/// The jail's mount point in the container's state directory.
pub const JAIL_DIR: &str = "jail";
/// Options of the jail's tmpfs (it holds only mount points).
const JAIL_TMPFS: &str = "mode=0755,size=64k,nr_inodes=1024";
/// Of this process's `/proc/PID`: what the jail shows at `/proc/self`.
const PROC_FILES: &[(&str, bool)] = &[("fd", true), ("mountinfo", false)];
/// Most descriptors [`Jail::enter`] looks at for directories.
const MAX_FDS_CHECKED: usize = 65_536;

/// Why the jail could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("the VMM's jail: {step} {path}: {errno}")]
    Step {
        step: &'static str,
        path: PathBuf,
        errno: nix::Error,
    },
    #[error(
        "the VMM's jail: descriptor {fd} ({target}) is a directory from before the jail, which \
         would let a thread walk out of it; this is a bug in husk, please report it"
    )]
    OpenDirectory { fd: i32, target: String },
    #[error("the VMM's jail: {path} is not an absolute path without `..`")]
    Path { path: PathBuf },
}

/// Puts this thread (and every thread sharing its file system state) into
/// a mount namespace of its own, whose mounts are slaves of the host's:
/// what the jail mounts and pivots stays in it. For a VMM without shares,
/// which stages none.
pub fn private_namespace() -> Result<(), RootError> {
    slave_mount_namespace(CloneFlags::empty()).map_err(|(step, errno)| RootError::Step {
        step,
        path: PathBuf::from("/"),
        errno,
    })
}

/// Makes the directory `dir` (mode `mode` when new) and mounts a tmpfs on it
/// (`options`; nosuid, nodev, noexec): a room for mount points. The error
/// names the step that failed.
pub(crate) fn tmpfs_room(
    dir: &Path,
    mode: u32,
    options: &str,
) -> Result<(), (&'static str, nix::Error)> {
    match nix::unistd::mkdir(dir, nix::sys::stat::Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(nix::Error::EEXIST) => {}
        Err(e) => return Err(("creating", e)),
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options),
    )
    .map_err(|e| ("mounting a tmpfs on", e))
}

/// `unshare(CLONE_NEWNS | also)`, then every mount made a slave of the one
/// it came from: nothing mounted here reaches another namespace. The error
/// names the step that failed.
pub(crate) fn slave_mount_namespace(also: CloneFlags) -> Result<(), (&'static str, nix::Error)> {
    unshare(CloneFlags::CLONE_NEWNS | also).map_err(|e| ("a mount namespace for", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| ("making the mounts slaves under", e))
}

/// What a container's VMM keeps in its jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// The container's state directory (absolute).
    pub state_dir: PathBuf,
    /// Its staged shares (`<state dir>/share`), when it has any.
    pub share: Option<PathBuf>,
    /// The directory of its vsock sockets when it is not the state
    /// directory (a state directory too deep for a socket address,
    /// [`crate::runtime::state::control_socket_path`]).
    pub socket_dir: Option<PathBuf>,
}

impl Jail {
    /// Builds the jail and pivots into it (see the module docs). Call on
    /// the VM thread, in the VMM's own mount namespace, with
    /// `CAP_SYS_ADMIN`, once everything outside it is open.
    pub fn enter(&self) -> Result<(), RootError> {
        self.build(true)
    }

    /// The fs server's jail ([`crate::runtime::fs_server`]): the shares and
    /// `/proc/self/{fd,mountinfo}` only (no state directory, no sockets).
    /// Call in a mount namespace of the server's own.
    pub fn enter_fs_server(&self) -> Result<(), RootError> {
        self.build(false)
    }

    fn build(&self, vmm: bool) -> Result<(), RootError> {
        let dir = self.mount(vmm)?;
        check_no_directory_fds(None)?;
        let step = |step: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |errno| RootError::Step { step, path, errno }
        };
        nix::unistd::chdir(&dir).map_err(step("entering", &dir))?;
        nix::unistd::pivot_root(".", ".").map_err(step("pivot_root into", &dir))?;
        // The old root is stacked under the new one: detach it.
        umount2(".", MntFlags::MNT_DETACH).map_err(step("detaching the old root from", &dir))?;
        nix::unistd::chdir("/").map_err(step("entering", Path::new("/")))?;
        Ok(())
    }

    /// Builds the jail now, in this mount namespace, for threads that
    /// enter it later with `chroot` ([`PreparedJail::enter`]): the VMM of a
    /// user namespace, whose threads have no privilege over this mount
    /// namespace by the time they enter it.
    pub fn prepare(&self) -> Result<PreparedJail, RootError> {
        let dir = self.mount(true)?;
        Ok(PreparedJail {
            root: open_dir(&dir)?,
        })
    }

    /// Mounts the jail's tmpfs and binds (read-only once made); its
    /// directory.
    fn mount(&self, vmm: bool) -> Result<PathBuf, RootError> {
        let dir = self.state_dir.join(JAIL_DIR);
        let step = |step: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |errno| RootError::Step { step, path, errno }
        };
        tmpfs_room(&dir, 0o700, JAIL_TMPFS).map_err(|(s, e)| step(s, &dir)(e))?;

        if vmm {
            bind(&dir, &self.state_dir, false, false)?;
            if let Some(sockets) = &self.socket_dir {
                bind(&dir, sockets, false, false)?;
            }
        } else {
            if let Some(share) = &self.share {
                bind(&dir, share, true, false)?;
            }
            // Our own entries, by the host's pid (a VMM in a pid namespace
            // of its own is 1 there, which /proc would take for the host's
            // init).
            let proc_dir = PathBuf::from(format!("/proc/{}", crate::runtime::process::own_pid()));
            for (name, is_dir) in PROC_FILES {
                bind_at(
                    &dir,
                    &proc_dir.join(name),
                    &Path::new("/proc/self").join(name),
                    false,
                    !is_dir,
                )?;
            }
        }
        // Nothing can be added beside what is bound.
        mount(
            None::<&str>,
            &dir,
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(step("making read-only", &dir))?;
        Ok(dir)
    }
}

/// `path` opened as a directory handle (`O_PATH`).
fn open_dir(path: &Path) -> Result<OwnedFd, RootError> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|errno| RootError::Step {
        step: "opening",
        path: path.to_path_buf(),
        errno,
    })?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fchdir(dir)` then `chroot(".")`: the calling thread's (and every thread
/// sharing its file system state) root becomes `dir`, wherever its mount
/// namespace is. Needs `CAP_SYS_CHROOT` in the thread's user namespace.
fn chroot_to(dir: &OwnedFd, path: &Path) -> Result<(), RootError> {
    let step = |step: &'static str| {
        let path = path.to_path_buf();
        move |errno| RootError::Step { step, path, errno }
    };
    nix::unistd::fchdir(dir.as_raw_fd()).map_err(step("entering"))?;
    nix::unistd::chroot(".").map_err(step("chroot into"))
}

/// The jail of a VMM in a user namespace, built in the namespace its
/// shares were staged in ([`Jail::prepare`]).
#[derive(Debug)]
pub struct PreparedJail {
    root: OwnedFd,
}

impl PreparedJail {
    /// Makes the jail the root of the calling thread and of every thread
    /// sharing its file system state (the VM thread: the VMM's worker,
    /// vCPU and device threads); its main thread keeps the container's
    /// view. Unlike [`Jail::enter`]'s pivot, the staging namespace's other
    /// mounts stay where they are, out of reach: the thread holds no
    /// directory from outside (checked), and once its capabilities are
    /// dropped it cannot `chroot` again.
    pub fn enter(self) -> Result<(), RootError> {
        check_no_directory_fds(Some(self.root.as_raw_fd()))?;
        chroot_to(&self.root, Path::new(JAIL_DIR))?;
        drop(self.root);
        nix::unistd::chdir("/").map_err(|errno| RootError::Step {
            step: "entering",
            path: PathBuf::from("/"),
            errno,
        })
    }
}

/// The host's file system as the VMM's staging mount namespace shows it,
/// kept for the threads of a VMM in a user namespace: its main thread
/// moves into the container's view before the process enters the user
/// namespace, and the threads it starts then (which inherit the view) get
/// the staging namespace's root back with `chroot` ([`StagingRoot::enter`]),
/// as they would have kept it had they been started before.
#[derive(Debug)]
pub struct StagingRoot {
    root: OwnedFd,
    cwd: OwnedFd,
}

/// The staging mount namespace, held open for the VMM's life: a namespace
/// no thread is in is taken apart (its mounts detached from each other),
/// and the staging root and the jail are in it.
static STAGING_NS: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

impl StagingRoot {
    /// Opens the calling thread's root, working directory and mount
    /// namespace (call in the staging namespace, with the host's `/proc`).
    pub fn open() -> Result<StagingRoot, RootError> {
        let ns = std::fs::File::open("/proc/thread-self/ns/mnt").map_err(|e| RootError::Step {
            step: "opening",
            path: PathBuf::from("/proc/thread-self/ns/mnt"),
            errno: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        let _ = STAGING_NS.set(ns.into());
        Ok(StagingRoot {
            root: open_dir(Path::new("/"))?,
            cwd: open_dir(Path::new("."))?,
        })
    }

    /// Gives the calling thread a file system state of its own whose root
    /// and working directory are the staging namespace's. Needs
    /// `CAP_SYS_CHROOT` in the thread's user namespace.
    pub fn enter(self) -> Result<(), RootError> {
        unshare(CloneFlags::CLONE_FS).map_err(|errno| RootError::Step {
            step: "a file system state of its own for",
            path: PathBuf::from("/"),
            errno,
        })?;
        chroot_to(&self.root, Path::new("/"))?;
        nix::unistd::fchdir(self.cwd.as_raw_fd()).map_err(|errno| RootError::Step {
            step: "entering the working directory",
            path: PathBuf::from("."),
            errno,
        })
    }
}

/// Binds `source` at the same path inside `jail`.
fn bind(jail: &Path, source: &Path, recursive: bool, file: bool) -> Result<(), RootError> {
    bind_at(jail, source, source, recursive, file)
}

/// Binds `source` at `at` (absolute) inside `jail`, making the mount point
/// (a directory, or an empty file when `file`) and its parents.
fn bind_at(
    jail: &Path,
    source: &Path,
    at: &Path,
    recursive: bool,
    file: bool,
) -> Result<(), RootError> {
    let target = inside(jail, at)?;
    let step = |step: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |errno| RootError::Step { step, path, errno }
    };
    let parent = if file {
        target.parent().unwrap_or(jail)
    } else {
        &target
    };
    std::fs::create_dir_all(parent).map_err(|e| {
        step("creating", parent)(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    })?;
    if file {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&target)
            .map_err(|e| {
                step("creating", &target)(nix::Error::from_raw(
                    e.raw_os_error().unwrap_or(libc::EIO),
                ))
            })?;
    }
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), &target, None::<&str>, flags, None::<&str>)
        .map_err(step("binding into the jail", source))
}

/// `at` (absolute, no `..`) under `jail`.
fn inside(jail: &Path, at: &Path) -> Result<PathBuf, RootError> {
    let mut out = jail.to_path_buf();
    let mut components = at.components();
    if components.next() != Some(Component::RootDir) {
        return Err(RootError::Path {
            path: at.to_path_buf(),
        });
    }
    for c in components {
        match c {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            _ => {
                return Err(RootError::Path {
                    path: at.to_path_buf(),
                })
            }
        }
    }
    Ok(out)
}

/// Fails if this process holds a directory descriptor (one opened before
/// the jail would lead out of it), `but` aside.
fn check_no_directory_fds(but: Option<i32>) -> Result<(), RootError> {
    let entries = std::fs::read_dir("/proc/self/fd").map_err(|e| RootError::Step {
        step: "listing",
        path: PathBuf::from("/proc/self/fd"),
        errno: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    // Listed first: the listing's own descriptor is closed before any is
    // looked at.
    let mut seen = Vec::new();
    for entry in entries.take(MAX_FDS_CHECKED).flatten() {
        if let Some(fd) = fd_number(&entry.file_name()) {
            seen.push(fd);
        }
    }
    for fd in seen {
        if Some(fd) == but {
            continue;
        }
        let Ok(st) = nix::sys::stat::fstat(fd) else {
            continue;
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            continue;
        }
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        return Err(RootError::OpenDirectory { fd, target });
    }
    Ok(())
}

fn fd_number(name: &OsStr) -> Option<i32> {
    std::str::from_utf8(name.as_bytes()).ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
