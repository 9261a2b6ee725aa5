//! husk: an OCI runtime that runs every container in its own KVM microVM.
//!
//! The binary (`main.rs`) parses the command line and dispatches; everything
//! else lives in these modules so tests can reach it.

pub mod boot;
pub mod check;
pub mod cli;
pub mod control;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod install;
pub mod jail;
pub mod lockfile;
pub mod lru;
pub mod net;
pub mod paths;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod shim;
pub mod storage;
pub mod timeline;
pub mod vmm;

#[cfg(test)]
pub(crate) mod test_support;

/// The guest side's shared definitions (host↔guest protocol).
pub use husk_init::agent_proto;
pub use husk_init::proto;
