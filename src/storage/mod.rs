//! What the guest's files are on the host side: the host directories a
//! container shares with its VM, its rootfs among them ([`share`]), and the
//! container's view of them that engines join through its pid ([`view`]);
//! the block images of `io.husk.rootfs=block` are in [`crate::rootfs`].

pub mod pod;
pub mod share;
pub mod view;
