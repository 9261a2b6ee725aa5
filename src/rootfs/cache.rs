//! Root filesystem images cached by content, for containers that ask for a
//! block rootfs (`io.husk.rootfs=block`): the first container from a
//! directory builds its ext4 image, later ones reuse it. Containers mount the
//! image read-only (with an overlay in the guest), so one image serves all.
//!
//! The cache is bounded in bytes: before an image is built, the least
//! recently used ones are removed ([`crate::lru`]) until the new one fits in
//! [`DEFAULT_MAX_BYTES`] (`$HUSK_ROOTFS_CACHE_MAX`) and the file system
//! keeps [`RESERVE_BYTES`] free; when it cannot fit, create fails with an
//! error naming the cache directory and what to do, never a raw mkfs
//! message.
//!
//! The key hashes every entry's relative path, type, mode, owner, size,
//! modification time and symlink target (not file contents: reading a whole
//! rootfs on every create would cost more than building the image). A file
//! edited in place keeps its size only if its mtime is also forced back,
//! which tools do not do.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::busybox::content_hash;
use super::image::{self, ImageError};

/// How many bytes (allocated on disk) the images built from directories
/// may take together; building one more first removes the least recently
/// used until it fits ([`ENV_CACHE_MAX`] overrides). A container running
/// from a removed image keeps it open, and its blocks, until it stops.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;
/// Environment variable overriding [`DEFAULT_MAX_BYTES`]: bytes, or a
/// number with `K`, `M`, `G` or `T` (powers of 1024).
pub const ENV_CACHE_MAX: &str = "HUSK_ROOTFS_CACHE_MAX";
/// Space left free on the cache's file system after an image is built
/// (state directories, logs and the engine need some too).
pub const RESERVE_BYTES: u64 = 256 << 20;
const MIB: u64 = 1 << 20;
/// File name prefix of the images built from directories.
const DIR_IMAGE_PREFIX: &str = "dir-";

/// Errors preparing a cached image.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("rootfs {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("reading rootfs {path}: {source}")]
    Walk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rootfs image cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the rootfs image of {dir} needs about {need_mib} MiB, more than the image \
         cache {cache} may hold ({max_mib} MiB): raise ${ENV_CACHE_MAX}, or drop the \
         io.husk.rootfs=block annotation (the default rootfs is served from the host \
         and needs no image)"
    )]
    TooBig {
        dir: PathBuf,
        cache: PathBuf,
        need_mib: u64,
        max_mib: u64,
    },
    #[error(
        "no space for the rootfs image of {dir} in the image cache {cache}: it needs \
         about {need_mib} MiB and {available_mib} MiB are free (husk keeps \
         {reserve_mib} MiB free) with no unused image left to remove; free space on \
         that file system, move the cache ($HUSK_CACHE), or drop the \
         io.husk.rootfs=block annotation (the default rootfs needs no image)"
    )]
    NoSpace {
        dir: PathBuf,
        cache: PathBuf,
        need_mib: u64,
        available_mib: u64,
        reserve_mib: u64,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// The byte bound from [`ENV_CACHE_MAX`]'s text, if it is one.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last()? {
        (i, 'K' | 'k') => (&t[..i], 10),
        (i, 'M' | 'm') => (&t[..i], 20),
        (i, 'G' | 'g') => (&t[..i], 30),
        (i, 'T' | 't') => (&t[..i], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(1u64 << shift).filter(|b| *b > 0)
}

/// [`DEFAULT_MAX_BYTES`], or [`ENV_CACHE_MAX`] when it is set to a size (a
/// bad value is logged and ignored).
fn max_bytes() -> u64 {
    match std::env::var(ENV_CACHE_MAX) {
        Ok(v) => parse_bytes(&v).unwrap_or_else(|| {
            log::warn!(
                "{ENV_CACHE_MAX}={v:?} is not a size (bytes, or a number with K, M, G \
                 or T); keeping {} MiB",
                DEFAULT_MAX_BYTES / MIB
            );
            DEFAULT_MAX_BYTES
        }),
        Err(_) => DEFAULT_MAX_BYTES,
    }
}

/// Bytes a file takes on disk (images are sparse).
fn allocated(path: &Path) -> u64 {
    std::fs::symlink_metadata(path)
        .map(|m| m.blocks().saturating_mul(512))
        .unwrap_or(0)
}

/// Which cached images to remove, least recently used first, so that
/// `need` more bytes fit in `max`: `images` are (last used, bytes, path).
/// `None` when even an empty cache is too small.
fn over_budget(
    images: &[(std::time::SystemTime, u64, PathBuf)],
    need: u64,
    max: u64,
) -> Option<Vec<PathBuf>> {
    if need > max {
        return None;
    }
    let mut by_age: Vec<_> = images.iter().collect();
    by_age.sort_by_key(|e| e.0);
    let mut total: u64 = images.iter().map(|e| e.1).sum();
    let mut remove = Vec::new();
    for (_, bytes, path) in by_age {
        if total.saturating_add(need) <= max {
            break;
        }
        total = total.saturating_sub(*bytes);
        remove.push(path.clone());
    }
    Some(remove)
}

/// The cached directory images under `images`: (last used, bytes, path).
fn cached_images(images: &Path) -> Vec<(std::time::SystemTime, u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(images) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_dir_image(p))
        .filter_map(|p| Some((crate::lru::last_used(&p)?, allocated(&p), p)))
        .collect()
}

fn remove_image(path: &Path, why: &str) {
    match std::fs::remove_file(path) {
        Ok(()) => log::info!("rootfs image {}: removed ({why})", path.display()),
        Err(e) => log::warn!("rootfs image {}: removing: {e}", path.display()),
    }
}

/// Bytes free to unprivileged users on the file system of `dir`.
fn available(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// Makes room for an image of `need` bytes in `images` (see the module
/// docs), removing least recently used images; `dir` is the rootfs it is
/// for (named in the errors).
fn make_room(images: &Path, dir: &Path, need: u64, max: u64) -> Result<(), CacheError> {
    let cached = cached_images(images);
    let Some(remove) = over_budget(&cached, need, max) else {
        return Err(CacheError::TooBig {
            dir: dir.to_path_buf(),
            cache: images.to_path_buf(),
            need_mib: need.div_ceil(MIB),
            max_mib: max / MIB,
        });
    };
    for path in &remove {
        remove_image(path, "least recently used, over the cache's size");
    }
    let mut left: Vec<_> = cached
        .into_iter()
        .filter(|e| !remove.contains(&e.2))
        .collect();
    left.sort_by_key(|e| std::cmp::Reverse(e.0));
    loop {
        let free = available(images).unwrap_or(u64::MAX);
        if free >= need.saturating_add(RESERVE_BYTES) {
            return Ok(());
        }
        let Some((_, _, oldest)) = left.pop() else {
            return Err(CacheError::NoSpace {
                dir: dir.to_path_buf(),
                cache: images.to_path_buf(),
                need_mib: need.div_ceil(MIB),
                available_mib: free / MIB,
                reserve_mib: RESERVE_BYTES / MIB,
            });
        };
        remove_image(&oldest, "least recently used, the disk is full");
    }
}

/// The content key of the tree at `dir`.
pub fn tree_key(dir: &Path) -> Result<u64, CacheError> {
    if !dir.is_dir() {
        return Err(CacheError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let mut records: Vec<Vec<u8>> = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        let walk = |source| CacheError::Walk {
            path: abs.clone(),
            source,
        };
        for entry in std::fs::read_dir(&abs).map_err(walk)? {
            let entry = entry.map_err(walk)?;
            let path = rel.join(entry.file_name());
            let meta = entry.path().symlink_metadata().map_err(walk)?;
            let target = if meta.file_type().is_symlink() {
                std::fs::read_link(entry.path()).map_err(walk)?
            } else {
                PathBuf::new()
            };
            records.push(
                format!(
                    "{}\0{:o}\0{}\0{}\0{}\0{}.{}\0{}\0{}",
                    path.display(),
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.size(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.rdev(),
                    target.display()
                )
                .into_bytes(),
            );
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    records.sort();
    Ok(content_hash(&records.join(&b'\n')))
}

/// The cached image for `dir` under `cache`, built if missing.
pub fn image_for(dir: &Path, cache: &Path) -> Result<PathBuf, CacheError> {
    let key = tree_key(dir)?;
    let images = cache.join("rootfs");
    let image = images.join(format!("{DIR_IMAGE_PREFIX}{key:016x}.ext4"));
    if image.is_file() {
        log::debug!("rootfs {}: cached image {}", dir.display(), image.display());
        crate::lru::mark_used(&image);
        return Ok(image);
    }
    let io_err = |source| CacheError::Io {
        path: images.clone(),
        source,
    };
    std::fs::create_dir_all(&images).map_err(io_err)?;
    crate::lru::remove_stale_work(&images);
    let (bytes, _) = image::tree_size(dir)?;
    let need = image::image_size_for(bytes);
    make_room(&images, dir, need, max_bytes())?;
    let no_space = |available_mib| CacheError::NoSpace {
        dir: dir.to_path_buf(),
        cache: images.clone(),
        need_mib: need.div_ceil(MIB),
        available_mib,
        reserve_mib: RESERVE_BYTES / MIB,
    };
    let free_mib = || available(&images).unwrap_or(0) / MIB;
    // Named for this process, so that one killed mid-build leaves a file a
    // later husk recognizes as stale (`remove_stale_work`).
    let partial = tempfile::Builder::new()
        .prefix(&crate::lru::work_name("", "."))
        .suffix(".ext4")
        .tempfile_in(&images)
        .map_err(io_err)?
        .into_temp_path();
    // Others may fill the disk meanwhile: a full disk is still named as
    // such, with the cache directory.
    match image::build_ext4(dir, &partial) {
        Ok(()) => {}
        Err(ImageError::Mkfs { stderr, .. }) if stderr.contains("No space left") => {
            return Err(no_space(free_mib()))
        }
        Err(ImageError::Create { source, .. }) if source.raw_os_error() == Some(libc::ENOSPC) => {
            return Err(no_space(free_mib()))
        }
        Err(e) => return Err(e.into()),
    }
    partial.persist(&image).map_err(|e| io_err(e.error))?;
    log::debug!("rootfs {}: built image {}", dir.display(), image.display());
    Ok(image)
}

/// Removes what image builds that died left in the image cache under
/// `cache`.
pub fn remove_stale_work(cache: &Path) {
    crate::lru::remove_stale_work(&cache.join("rootfs"));
}

/// Whether `path` is an image built from a directory by [`image_for`] (not
/// one being built, nor the default busybox image).
fn is_dir_image(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(DIR_IMAGE_PREFIX) && n.ends_with(".ext4"))
        && path.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/a"), b"1").unwrap();
        let k1 = tree_key(dir.path()).unwrap();
        assert_eq!(k1, tree_key(dir.path()).unwrap());
        std::fs::write(dir.path().join("etc/a"), b"22").unwrap();
        let k2 = tree_key(dir.path()).unwrap();
        assert_ne!(k1, k2);
        std::os::unix::fs::symlink("a", dir.path().join("etc/l")).unwrap();
        assert_ne!(k2, tree_key(dir.path()).unwrap());
    }

    #[test]
    fn the_second_request_reuses_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let a = image_for(dir.path(), cache.path()).unwrap();
        let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
        let b = image_for(dir.path(), cache.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(std::fs::metadata(&b).unwrap().modified().unwrap(), mtime);
        let names: Vec<_> = std::fs::read_dir(cache.path().join("rootfs"))
            .unwrap()
            .collect();
        assert_eq!(names.len(), 1, "no partial images left");
    }

    #[test]
    fn sizes_parse_with_suffixes_and_nonsense_is_refused() {
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes(" 2g "), Some(2 << 30));
        assert_eq!(parse_bytes("1T"), Some(1 << 40));
        for bad in ["", "0", "G", "-1G", "1.5G", "12X", "99999999999T"] {
            assert_eq!(parse_bytes(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_least_recently_used_images_go_until_the_new_one_fits() {
        let at = |s: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let images = vec![
            (at(300), 100, PathBuf::from("recent")),
            (at(100), 100, PathBuf::from("oldest")),
            (at(200), 100, PathBuf::from("older")),
        ];
        assert_eq!(
            over_budget(&images, 50, 400).unwrap(),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            over_budget(&images, 150, 400).unwrap(),
            [PathBuf::from("oldest")]
        );
        assert_eq!(
            over_budget(&images, 250, 400).unwrap(),
            [PathBuf::from("oldest"), PathBuf::from("older")]
        );
        assert_eq!(over_budget(&images, 400, 400).unwrap().len(), 3);
        assert_eq!(over_budget(&images, 401, 400), None);
    }

    #[test]
    fn over_the_byte_bound_old_images_go_and_a_too_big_tree_is_named() {
        let cache = tempfile::tempdir().unwrap();
        let images = cache.path().join("rootfs");
        std::fs::create_dir(&images).unwrap();
        let make = |name: &str, age_s: i64| {
            let p = images.join(name);
            std::fs::write(&p, vec![1u8; 1 << 20]).unwrap();
            crate::lru::tests::used_ago(&p, age_s);
            p
        };
        let old = make("dir-0000000000000001.ext4", 300);
        let recent = make("dir-0000000000000002.ext4", 100);
        let other = make("busybox-0000000000000004.ext4", 1000);
        let tree = tempfile::tempdir().unwrap();
        std::fs::write(tree.path().join("f"), b"x").unwrap();
        // Room for the new image and one old one: the older goes.
        let need = image::image_size_for(1);
        make_room(&images, tree.path(), need, need + (3 << 19)).unwrap();
        assert!(!old.exists() && recent.exists() && other.exists());
        // A bound smaller than the image: named, with the cache directory
        // and the variable, nothing removed.
        let err = make_room(&images, tree.path(), need, need - 1).unwrap_err();
        assert!(recent.exists());
        let msg = err.to_string();
        assert!(
            msg.contains(&images.display().to_string())
                && msg.contains(ENV_CACHE_MAX)
                && msg.contains(&tree.path().display().to_string()),
            "{msg}"
        );
    }

    /// A full disk: create fails naming the cache directory, after the
    /// unused images were removed, and leaves no partial image.
    #[test]
    fn a_full_disk_is_named_with_the_cache_directory() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (a small tmpfs for the cache); CI runs as root");
        }
        let tree = tempfile::tempdir().unwrap();
        std::fs::write(tree.path().join("f"), vec![7u8; 4 << 20]).unwrap();
        let tree = tree.path().to_path_buf();
        // SAFETY: the child only mounts a tmpfs in a mount namespace of its
        // own and builds an image there, then exits without returning into
        // the test harness.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = std::panic::catch_unwind(|| {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
                    nix::mount::mount(
                        None::<&str>,
                        "/",
                        None::<&str>,
                        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                        None::<&str>,
                    )
                    .unwrap();
                    let cache = tempfile::tempdir().unwrap();
                    nix::mount::mount(
                        Some("tmpfs"),
                        cache.path(),
                        Some("tmpfs"),
                        nix::mount::MsFlags::empty(),
                        Some("size=32m"),
                    )
                    .unwrap();
                    let images = cache.path().join("rootfs");
                    std::fs::create_dir(&images).unwrap();
                    let unused = images.join("dir-00000000000000aa.ext4");
                    std::fs::write(&unused, vec![1u8; 8 << 20]).unwrap();
                    let err = image_for(&tree, cache.path()).unwrap_err();
                    let msg = err.to_string();
                    matches!(err, CacheError::NoSpace { .. })
                        && msg.contains(&images.display().to_string())
                        && !unused.exists()
                        && std::fs::read_dir(&images).unwrap().count() == 0
                })
                .unwrap_or(false);
                // SAFETY: `_exit` ends the child at once, without running
                // the parent's atexit handlers or destructors twice.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => assert!(matches!(
                nix::sys::wait::waitpid(child, None).unwrap(),
                nix::sys::wait::WaitStatus::Exited(_, 0)
            )),
        }
    }

    #[test]
    fn a_missing_rootfs_is_named() {
        let err = image_for(Path::new("/no/such/rootfs"), Path::new("/tmp")).unwrap_err();
        assert!(err.to_string().contains("/no/such/rootfs"), "{err}");
    }
}
