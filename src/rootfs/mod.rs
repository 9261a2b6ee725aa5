//! Guest filesystems: the initramfs that carries husk-init, and block images
//! made from directories.

pub mod busybox;
pub mod cache;
pub mod image;
pub mod initramfs;
