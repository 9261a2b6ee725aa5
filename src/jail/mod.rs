//! The VMM's confinement: what a VMM process may still do once a guest
//! runs in it.
//!
//! Today: per-thread seccomp filters ([`seccomp`]), no_new_privs, and no
//! core dumps (a core of the VMM would hold the guest's memory). The
//! namespaces, pivot_root and privilege drop of the jail come on top
//! (docs/security.md, "Not done yet").

pub mod seccomp;

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
