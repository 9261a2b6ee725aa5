//! The root filesystem `husk boot` uses when none is given: Debian's static
//! busybox with its applet links, as an ext4 image cached by the busybox
//! binary's content and shared read-only by every VM.

use std::path::{Path, PathBuf};

use super::image::{self, ImageError};

/// The static busybox (Debian's `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

/// Errors preparing the default root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum BusyboxError {
    #[error(
        "the default rootfs needs a static busybox at {path} (install busybox-static): {source}"
    )]
    Missing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("preparing the default rootfs in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// FNV-1a, 64 bit: a stable content hash for cache keys (not for security).
pub fn content_hash(data: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    data.iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// Lays out a busybox root filesystem in `dir`.
pub fn populate(dir: &Path, busybox: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for sub in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var/tmp",
    ] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let bin = dir.join("bin/busybox");
    std::fs::write(&bin, busybox)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    let list = std::process::Command::new(&bin).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
        }
    }
    std::fs::write(dir.join("etc/hostname"), "husk\n")?;
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

/// The cached default image, built on first use.
pub fn default_image(cache: &Path) -> Result<PathBuf, BusyboxError> {
    let data = std::fs::read(BUSYBOX).map_err(|source| BusyboxError::Missing {
        path: PathBuf::from(BUSYBOX),
        source,
    })?;
    let dir = cache.join("rootfs");
    let image = dir.join(format!("busybox-{:016x}.ext4", content_hash(&data)));
    if image.is_file() {
        return Ok(image);
    }
    let io_err = |source| BusyboxError::Io {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io_err)?;
    let staging = tempfile::Builder::new()
        .prefix("busybox-root.")
        .tempdir_in(&dir)
        .map_err(io_err)?;
    let root = staging.path().join("root");
    populate(&root, &data).map_err(io_err)?;
    let partial = staging.path().join("image.ext4");
    image::build_ext4(&root, &partial)?;
    // Atomic publish: a concurrent builder of the same image loses harmlessly.
    std::fs::rename(&partial, &image).map_err(io_err)?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fnv1a() {
        assert_eq!(content_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(content_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn the_default_image_is_built_once_and_reused() {
        let cache = tempfile::tempdir().unwrap();
        let first = default_image(cache.path()).unwrap();
        assert!(image::is_ext_image(&first).unwrap());
        let mtime = std::fs::metadata(&first).unwrap().modified().unwrap();
        let second = default_image(cache.path()).unwrap();
        assert_eq!(first, second);
        assert_eq!(
            std::fs::metadata(&second).unwrap().modified().unwrap(),
            mtime
        );
        // Only the image is left, no staging directories.
        let entries: Vec<_> = std::fs::read_dir(cache.path().join("rootfs"))
            .unwrap()
            .collect();
        assert_eq!(entries.len(), 1);
    }
}
