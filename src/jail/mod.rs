//! The VMM's confinement: what a VMM process may still do once a guest
//! runs in it.
//!
//! Today: per-thread seccomp filters ([`seccomp`]) and capabilities
//! ([`caps`]), no_new_privs, and no core dumps (a core of the VMM would
//! hold the guest's memory). The
//! namespaces, pivot_root and privilege drop of the jail come on top
//! (docs/security.md, "Not done yet").

pub mod caps;
pub mod ns;
pub mod root;
pub mod seccomp;
pub mod user;

/// Errors of the process-wide settings.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("setting no_new_privs on the VMM: {0}")]
    NoNewPrivs(#[source] nix::Error),
    #[error("turning core dumps off for the VMM (RLIMIT_CORE 0): {0}")]
    CoreLimit(#[source] nix::Error),
}

/// What every VMM process sets before it starts a guest: no_new_privs
/// (nothing it executes gains privileges, and seccomp filters need no
/// CAP_SYS_ADMIN) and no core dumps (a dump of a VMM is the guest's
/// memory, written where the host keeps cores).
pub fn harden_process() -> Result<(), JailError> {
    nix::sys::prctl::set_no_new_privs().map_err(JailError::NoNewPrivs)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        .map_err(JailError::CoreLimit)?;
    Ok(())
}

/// Environment variables a VMM process keeps from whoever ran `husk
/// create` (an engine's environment can hold its credentials and
/// settings, which a VMM has no use for): the tool search path and home
/// (network setup runs `tc`; the caches live under `$HOME`), husk's own
/// settings (`HUSK_*`) and the logger's (`RUST_LOG`, `RUST_BACKTRACE`).
pub fn vmm_keeps_env(name: &std::ffi::OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let name = name.as_bytes();
    matches!(name, b"PATH" | b"HOME" | b"RUST_LOG" | b"RUST_BACKTRACE")
        || name.starts_with(b"HUSK_")
}

/// The part of this process's environment a VMM it starts keeps
/// ([`vmm_keeps_env`]).
pub fn vmm_env() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    std::env::vars_os()
        .filter(|(name, _)| vmm_keeps_env(name))
        .collect()
}

/// A command for one of husk's helper processes (`exe VERB`): the VMM's
/// environment only ([`vmm_env`]), stdin and stdout on `/dev/null`, stderr
/// into `log`.
pub fn helper_command(
    exe: &std::path::Path,
    verb: &str,
    log: std::fs::File,
) -> std::process::Command {
    use std::process::Stdio;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(verb)
        .env_clear()
        .envs(vmm_env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cmd
}

/// `CLOSE_RANGE_CLOEXEC` (`linux/close_range.h`).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
/// How far the fallback for kernels without `close_range` (before 5.11)
/// looks.
const FALLBACK_FD_LIMIT: libc::c_int = 4096;

/// In a child between fork and exec: marks every descriptor from 3 up
/// close-on-exec except `keep`, so the VMM starts with stdio and `keep`
/// only, whatever its caller left open (an engine's sync pipes, sockets
/// and log files). System calls only: async-signal-safe.
pub fn close_inherited_fds(keep: &[std::os::fd::RawFd]) -> std::io::Result<()> {
    // SAFETY: close_range with integer arguments; it only sets flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if !matches!(err.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) {
            return Err(err);
        }
        for fd in 3..FALLBACK_FD_LIMIT {
            // SAFETY: fcntl on a descriptor number; EBADF for closed ones.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    for fd in keep {
        // SAFETY: fcntl with integer arguments on a descriptor we own.
        if unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn the_vmm_keeps_only_its_own_settings_from_the_environment() {
        for kept in [
            "PATH",
            "HOME",
            "RUST_LOG",
            "RUST_BACKTRACE",
            "HUSK_INIT",
            "HUSK_FAULT_SYSCALL",
        ] {
            assert!(vmm_keeps_env(OsStr::new(kept)), "{kept}");
        }
        for dropped in [
            "AWS_SECRET_ACCESS_KEY",
            "DOCKER_AUTH_CONFIG",
            "LD_PRELOAD",
            "XDG_RUNTIME_DIR",
            "PATHS",
            "husk_init",
            "",
        ] {
            assert!(!vmm_keeps_env(OsStr::new(dropped)), "{dropped}");
        }
    }

    /// In a forked child: an inherited descriptor goes close-on-exec, the
    /// kept one does not.
    #[test]
    fn inherited_descriptors_close_on_exec_but_the_kept_ones() {
        use std::os::fd::AsRawFd as _;
        let (a_r, a_w) = nix::unistd::pipe().unwrap();
        let (b_r, _b_w) = nix::unistd::pipe().unwrap();
        let flags = |fd: i32| {
            // SAFETY: fcntl F_GETFD on a descriptor number.
            unsafe { libc::fcntl(fd, libc::F_GETFD) }
        };
        assert!(crate::test_support::in_child(|| {
            close_inherited_fds(&[b_r.as_raw_fd()]).unwrap();
            flags(a_r.as_raw_fd()) == libc::FD_CLOEXEC
                && flags(a_w.as_raw_fd()) == libc::FD_CLOEXEC
                && flags(b_r.as_raw_fd()) == 0
        }));
    }
}
