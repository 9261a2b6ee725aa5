//! husk's virtual machine monitor.
//!
//! A [`config::VmConfig`] (plain data) becomes a running microVM in exactly
//! one place, [`builder::build_and_run`], which documents the order. The VMM
//! runs until the guest reports its command's end through the exit port,
//! resets, or fails; [`VmExit`] says which.

pub mod arch;
pub mod builder;
pub mod bus;
pub mod config;
pub mod devices;
pub mod snapshot;
pub mod vcpu;

pub use builder::{build_and_run, VmExit};
pub use config::VmConfig;
