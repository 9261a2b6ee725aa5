//! Processes husk signals without being their parent: a container's VMM
//! (spawned by a `create` that has since exited) and the builders of cache
//! entries.
//!
//! A pid alone is not a process: once the process is gone the kernel may give
//! the number to another. husk records a process as its pid, its `starttime`
//! from `/proc/PID/stat` and the host's boot id, and signals it through a
//! pidfd opened *before* the start time is checked, so a signal reaches the
//! checked process or nobody, never a stranger that reused the pid.

use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use crate::runtime::state::{ProcProbe, ProcessProbe};

/// Where the kernel names this boot (a random UUID per boot).
const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// The id of the running boot of this host, or `None` where `/proc` does not
/// tell.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string(BOOT_ID_FILE)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// A process, held so that it can be signalled and waited for without a
/// race with pid reuse.
#[derive(Debug)]
pub struct Held {
    pid: i32,
    /// A pidfd, or `None` on a kernel without `pidfd_open` (before 5.3),
    /// where signals go by pid right after a fresh start-time check.
    fd: Option<OwnedFd>,
    start_time: Option<u64>,
}

impl Held {
    /// Holds `pid` if it is alive (not a zombie) and, when `start_time` is
    /// given, started then. `None`: that process is gone.
    pub fn open(pid: i32, start_time: Option<u64>) -> io::Result<Option<Held>> {
        if pid <= 0 {
            return Ok(None);
        }
        let fd = match pidfd_open(pid) {
            Ok(fd) => Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => None,
            Err(e) => return Err(e),
        };
        let held = Held {
            pid,
            fd,
            start_time,
        };
        // Checked after the open: if the pid now names another process, the
        // start time says so, and the pidfd (of that other one) is dropped.
        Ok(held.is_same().then_some(held))
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the pid still names the process that was opened (alive, not
    /// a zombie, same start time).
    fn is_same(&self) -> bool {
        crate::runtime::state::same_process(ProcProbe.start_time(self.pid), self.start_time)
    }

    /// Sends `signal`. A process that has already exited is not an error.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> io::Result<()> {
        let rc = match &self.fd {
            Some(fd) => {
                // SAFETY: pidfd_send_signal(2) with a pidfd we own, a valid
                // signal number, no siginfo (NULL) and flags 0; it touches no
                // memory of ours.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        signal as libc::c_int,
                        std::ptr::null::<libc::siginfo_t>(),
                        0u32,
                    )
                }
            }
            None => {
                if !self.is_same() {
                    return Ok(());
                }
                // SAFETY: kill(2) has no memory arguments.
                libc::c_long::from(unsafe { libc::kill(self.pid, signal as libc::c_int) })
            }
        };
        if rc == 0 {
            return Ok(());
        }
        match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            e => Err(e),
        }
    }

    /// Waits until the process has exited, at most `limit`; whether it did.
    /// A zombie has exited.
    pub fn wait_exit(&self, limit: Duration) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let start = Instant::now();
        loop {
            let left = limit.saturating_sub(start.elapsed());
            match &self.fd {
                Some(fd) => {
                    // A pidfd is readable once its process has exited.
                    let ms = u16::try_from(left.as_millis().min(1000)).unwrap_or(1000);
                    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, PollTimeout::from(ms)) {
                        Ok(n) if n > 0 => return true,
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        // Cannot poll: fall back to looking at /proc.
                        Err(_) => {
                            if !self.is_same() {
                                return true;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
                None => {
                    if !self.is_same() {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            if left.is_zero() {
                return false;
            }
        }
    }

    /// SIGKILL, then waits at most `limit` for the exit; whether it ended.
    pub fn kill_and_wait(&self, limit: Duration) -> io::Result<bool> {
        self.signal(nix::sys::signal::Signal::SIGKILL)?;
        Ok(self.wait_exit(limit))
    }
}

pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags (0) and returns a new fd
    // or -1; no memory is passed.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(rc).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this fd (close-on-exec, as every
    // pidfd is) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// This process's pid as `/proc` names it: in the pid namespace of the
/// `/proc` mount, the host's, which is not [`std::process::id`] for a VMM
/// in a pid namespace of its own (there it is 1). Read once, on the first
/// call: a VMM makes it before its jail hides `/proc`.
pub fn own_pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(|| {
        std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse().ok())
            .unwrap_or_else(std::process::id)
    })
}

/// From now on the kernel reaps this process's children as they end (its
/// own, and the orphans it adopts: a VMM that is pid 1 of a pid namespace
/// other containers' VMMs joined gets their fs servers once those VMMs
/// end, as an init gets orphans); nothing may wait for a child afterwards.
pub fn reap_children_automatically() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: installs no handler (SIG_IGN), which no code of this process
    // relies on for SIGCHLD.
    unsafe { sigaction(Signal::SIGCHLD, &ignore) }.map(|_| ())
}

/// This process's identity as a file-name part, `PID-STARTTIME`, for work
/// files whose owner may die without removing them ([`owner_is_alive`]).
pub fn own_tag() -> String {
    let pid = i32::try_from(own_pid()).unwrap_or(0);
    format!("{pid}-{}", ProcProbe.start_time(pid).unwrap_or(0))
}

/// Whether the process named by a tag of [`own_tag`]'s form is alive. A tag
/// that does not parse counts as alive (the file is left alone).
pub fn owner_is_alive(tag: &str) -> bool {
    let Some((pid, start)) = tag.split_once('-') else {
        return true;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
        return true;
    };
    ProcProbe.start_time(pid) == Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_boot_id_is_read() {
        let id = boot_id().unwrap();
        assert_eq!(id.len(), 36, "{id}");
    }

    #[test]
    fn a_held_child_is_killed_and_seen_to_exit() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let start = ProcProbe.start_time(pid);
        let held = Held::open(pid, start).unwrap().expect("the child is alive");
        assert_eq!(held.pid(), pid);
        assert!(!held.wait_exit(Duration::from_millis(50)));
        assert!(held.kill_and_wait(Duration::from_secs(5)).unwrap());
        // Exited (a zombie until reaped) and reaped: signalling is harmless.
        held.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
        held.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
        assert!(Held::open(pid, start).unwrap().is_none());
    }

    #[test]
    fn a_pid_with_another_start_time_is_not_held() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let start = ProcProbe.start_time(pid).unwrap();
        // As if the recorded process had died and its pid been reused.
        assert!(Held::open(pid, Some(start + 1)).unwrap().is_none());
        // Still alive: nobody signalled it.
        assert!(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_zombie_or_missing_pid_is_not_held() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // Wait for it to become a zombie without reaping it.
        let t = Instant::now();
        while ProcProbe.start_time(pid).is_some() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(Held::open(pid, None).unwrap().is_none());
        child.wait().unwrap();
        assert!(Held::open(0, None).unwrap().is_none());
        assert!(Held::open(-5, None).unwrap().is_none());
    }

    #[test]
    fn tags_name_live_owners_only() {
        assert!(owner_is_alive(&own_tag()));
        assert_eq!(own_pid(), std::process::id());
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!owner_is_alive(&format!("{pid}-1")));
        let me = std::process::id();
        assert!(!owner_is_alive(&format!("{me}-1")), "start time differs");
        assert!(owner_is_alive("not-a-tag"));
        assert!(owner_is_alive("x"));
    }
}
