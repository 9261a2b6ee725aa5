//! The keeper: a small host process `create` leaves beside each container's
//! VMM, to remove the container's cgroup should the VMM end with its record
//! gone (a state root wiped while its VMs ran: nobody can `delete` that
//! container any more).
//!
//! The VMM cannot do it itself: it runs without capabilities and in a jail
//! without the cgroup file system ([`crate::jail`]), and removing a cgroup
//! under a directory of mode 0555 (the cgroup root, as systemd leaves it)
//! takes `CAP_DAC_OVERRIDE`. A thread of the VMM that kept it would share
//! the address space of the threads that serve the guest; the keeper is a
//! process of its own, which reads nothing from the guest or the VMM: what
//! it acts on are three descriptors `create` opened ([`spawn`]):
//! - a pidfd of the VMM, readable once the VMM has exited;
//! - the container's state directory: its record (`state.json`) is looked
//!   up there, not by path, so a container made later with the same id is
//!   not taken for this one;
//! - the container's cgroup: it is removed only while its path still names
//!   the same cgroup (a later container with the same id has a new one).
//!
//! With the record gone it also releases the VMM user claims whose state
//! directories are gone ([`crate::jail::user::release_stale`]).
//!
//! The keeper's command line is `husk keep` (no container id: it is not
//! taken for the VMM by what looks for `husk vmm ID`); it logs into the
//! container's VMM log.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use crate::runtime::state::STATE_FILE;

/// The keeper's descriptors: the VMM's pidfd, the state directory, the
/// cgroup directory.
const PIDFD: RawFd = 3;
const STATE_DIR: RawFd = 4;
const CGROUP_DIR: RawFd = 5;
/// Where `create` parks the descriptors before they are moved to 3..5 in
/// the child (above any descriptor 3..5 they may have been).
const PARKED_FROM: RawFd = 10;

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("opening a pidfd of the VMM (pid {pid}): {source}")]
    Pidfd {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the container's keeper process ({exe}): {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Opens a directory for the keeper (no following a last symlink).
fn open_dir(path: &Path) -> Result<OwnedFd, KeeperError> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| KeeperError::Open {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pidfd of `pid` (a child of this process that has not been reaped,
/// so the pid cannot name another process yet).
fn pidfd_open(pid: u32) -> Result<OwnedFd, KeeperError> {
    let raw = libc::pid_t::try_from(pid).map_err(|_| KeeperError::Pidfd {
        pid,
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    crate::runtime::process::pidfd_open(raw).map_err(|source| KeeperError::Pidfd { pid, source })
}

/// A copy of `fd` at `PARKED_FROM` or above, close-on-exec.
fn park(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor this function borrows;
    // the new one is owned by the OwnedFd below.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, PARKED_FROM) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` was just made and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Starts the keeper of the container whose VMM is `vmm_pid` (a child of
/// this process, not reaped), whose state directory is `dir` and cgroup
/// `cgroup`. The keeper logs into `log`. It outlives this process (in a
/// session of its own, not its child) and ends when the VMM does.
pub fn spawn(vmm_pid: u32, dir: &Path, cgroup: &Path, log: &Path) -> Result<(), KeeperError> {
    let exe = std::env::current_exe().map_err(|source| KeeperError::Spawn {
        exe: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let spawn_err = |source| KeeperError::Spawn {
        exe: exe.clone(),
        source,
    };
    let fds = [pidfd_open(vmm_pid)?, open_dir(dir)?, open_dir(cgroup)?];
    let parked = fds
        .iter()
        .map(park)
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(spawn_err)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| KeeperError::Open {
            path: log.to_path_buf(),
            source,
        })?;
    let from: Vec<RawFd> = parked.iter().map(AsRawFd::as_raw_fd).collect();
    let mut cmd = crate::jail::helper_command(&exe, "keep", log);
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes fork(2), _exit(2), setsid(2), dup2(2), close_range(2) and
    // fcntl(2) system calls.
    unsafe {
        cmd.pre_exec(move || {
            // Twice forked: the keeper is nobody's child here, so a long
            // lived caller (the shim, which reaps only its VMMs) is not left
            // with a zombie; the orphan goes to whoever reaps orphans.
            match libc::fork() {
                -1 => return Err(std::io::Error::last_os_error()),
                0 => {}
                _ => libc::_exit(0),
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (src, dst) in from.iter().zip([PIDFD, STATE_DIR, CGROUP_DIR]) {
                // dup2 leaves the new descriptor without close-on-exec.
                if libc::dup2(*src, dst) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            crate::jail::close_inherited_fds(&[PIDFD, STATE_DIR, CGROUP_DIR])
        });
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // The first child ends at once (the keeper is its child); an exec that
    // fails after it is reported in the log only.
    child.wait().map_err(spawn_err)?;
    drop(fds);
    Ok(())
}

/// The path an open descriptor of this process names.
fn fd_path(fd: RawFd) -> std::io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
}

/// `(st_dev, st_ino)` of a descriptor.
fn fd_identity(fd: RawFd) -> std::io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd).map_err(std::io::Error::from)?;
    Ok((st.st_dev, st.st_ino))
}

/// Whether the directory `dir` (a descriptor) holds the container's record.
fn record_exists(dir: RawFd) -> bool {
    nix::unistd::faccessat(
        Some(dir),
        STATE_FILE,
        nix::unistd::AccessFlags::F_OK,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok()
}

/// Waits until the pidfd `fd` is readable (its process has exited).
fn wait_exit(fd: RawFd) -> std::io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: poll(2) on one pollfd this function owns.
        let rc = unsafe { libc::poll(&mut pfd, 1, -1) };
        if rc > 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if rc < 0 && e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// What the keeper did once the VMM ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The record is there: the container is `delete`'s.
    RecordKept,
    /// The record is gone and so is the cgroup (or its path names a newer
    /// one).
    NothingLeft,
    /// The record is gone; the keeper removed the cgroup.
    CgroupRemoved(PathBuf),
}

/// What the keeper does after the VMM ended, given the state directory's
/// and the cgroup's descriptors.
pub fn after_exit(state_dir: RawFd, cgroup_dir: RawFd) -> Result<Outcome, String> {
    if record_exists(state_dir) {
        return Ok(Outcome::RecordKept);
    }
    // The record is gone, and with it (a wiped state root) the directory
    // the VMM's user claim names.
    crate::jail::user::release_stale(Path::new(crate::jail::user::CLAIMS_DIR));
    let path = fd_path(cgroup_dir).map_err(|e| format!("the cgroup's path: {e}"))?;
    let ours = fd_identity(cgroup_dir).map_err(|e| format!("{}: {e}", path.display()))?;
    let now = match nix::sys::stat::lstat(&path) {
        Ok(st) => (st.st_dev, st.st_ino),
        Err(_) => return Ok(Outcome::NothingLeft),
    };
    if now != ours {
        return Ok(Outcome::NothingLeft);
    }
    crate::runtime::cgroup::remove(&path).map_err(|e| e.to_string())?;
    Ok(Outcome::CgroupRemoved(path))
}

/// `husk keep`: the keeper's main (descriptors 3, 4 and 5 from [`spawn`]).
/// Exits 0 unless something could not be done.
pub fn run() -> u8 {
    for fd in [PIDFD, STATE_DIR, CGROUP_DIR] {
        if fd_identity(fd).is_err() {
            eprintln!("husk keep: descriptor {fd} is not open: only husk create starts a keeper");
            return 2;
        }
    }
    // SAFETY: `spawn` passed these three descriptors and nothing else in
    // this process uses them.
    let (pidfd, state_dir, cgroup_dir) = unsafe {
        (
            OwnedFd::from_raw_fd(PIDFD),
            OwnedFd::from_raw_fd(STATE_DIR),
            OwnedFd::from_raw_fd(CGROUP_DIR),
        )
    };
    if let Err(e) = wait_exit(pidfd.as_raw_fd()) {
        log::error!("keeper: waiting for the VMM to end: {e}");
        return 1;
    }
    match after_exit(state_dir.as_raw_fd(), cgroup_dir.as_raw_fd()) {
        Ok(Outcome::CgroupRemoved(path)) => {
            log::info!(
                "keeper: the container's record is gone; removed its cgroup {}",
                path.display()
            );
            0
        }
        Ok(_) => 0,
        Err(e) => {
            log::error!("keeper: the container's record is gone, but its cgroup stays: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_everything_and_a_gone_cgroup_is_nothing_left() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("c1");
        let cg = tmp.path().join("cg");
        std::fs::create_dir(&state).unwrap();
        std::fs::create_dir(&cg).unwrap();
        std::fs::write(state.join(STATE_FILE), "{}").unwrap();
        let s = open_dir(&state).unwrap();
        let c = open_dir(&cg).unwrap();
        assert_eq!(
            after_exit(s.as_raw_fd(), c.as_raw_fd()).unwrap(),
            Outcome::RecordKept
        );
        // The record goes; the "cgroup" is replaced by a newer directory of
        // the same name: it is not this container's.
        std::fs::remove_dir_all(&state).unwrap();
        std::fs::remove_dir(&cg).unwrap();
        std::fs::create_dir(&cg).unwrap();
        assert_eq!(
            after_exit(s.as_raw_fd(), c.as_raw_fd()).unwrap(),
            Outcome::NothingLeft
        );
        assert!(cg.is_dir(), "a newer directory of the same name stays");
        std::fs::remove_dir(&cg).unwrap();
        assert_eq!(
            after_exit(s.as_raw_fd(), c.as_raw_fd()).unwrap(),
            Outcome::NothingLeft
        );
    }

    #[test]
    fn a_gone_record_removes_the_same_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("c1");
        let cg = tmp.path().join("cg");
        std::fs::create_dir(&state).unwrap();
        std::fs::create_dir(&cg).unwrap();
        let s = open_dir(&state).unwrap();
        let c = open_dir(&cg).unwrap();
        assert_eq!(
            after_exit(s.as_raw_fd(), c.as_raw_fd()).unwrap(),
            Outcome::CgroupRemoved(cg.clone())
        );
        assert!(!cg.exists());
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::os::unix::fs::symlink("d", tmp.path().join("l")).unwrap();
        assert!(open_dir(&tmp.path().join("l")).is_err());
        assert!(open_dir(&tmp.path().join("missing")).is_err());
    }

    #[test]
    fn a_pidfd_of_a_child_turns_readable_when_it_exits() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let fd = pidfd_open(child.id()).unwrap();
        wait_exit(fd.as_raw_fd()).unwrap();
        let mut child = child;
        assert!(child.wait().unwrap().success());
    }
}
