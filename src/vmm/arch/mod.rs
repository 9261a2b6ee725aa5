//! Architecture-specific guest setup: memory map, boot protocol, vCPU state.
//!
//! husk only supports x86_64 hosts and guests.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
