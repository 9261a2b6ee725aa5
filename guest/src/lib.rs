//! husk-init: the guest side of husk.
//!
//! The binary (`main.rs`) is PID 1 inside every husk microVM. The library holds
//! what the host crate shares with it ([`proto`]) and the init logic ([`init`]),
//! which reaches the operating system only through the [`init::Os`] trait so it
//! can be unit-tested on the host, and the [`agent`] that serves
//! [`agent_proto`] when init runs in agent mode.

pub mod agent;
pub mod agent_proto;
pub mod boot_timer;
pub mod host_sync;
pub mod init;
pub mod net;
pub mod proto;
