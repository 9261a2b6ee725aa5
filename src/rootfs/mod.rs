//! Guest filesystems: the initramfs that carries husk-init, and block images
//! made from directories.

pub mod image;
pub mod initramfs;
