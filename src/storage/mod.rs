//! What the guest's files are on the host side. Today: the host
//! directories a container shares with its VM ([`share`]); the block images
//! of root file systems are in [`crate::rootfs`].

pub mod share;
