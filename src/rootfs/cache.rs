//! Root filesystem images cached by content: the first container from a
//! directory builds its ext4 image, later ones reuse it. Containers mount the
//! image read-only (with an overlay in the guest), so one image serves all.
//! The least recently used images beyond [`DEFAULT_MAX_IMAGES`] are removed
//! when a new one is built ([`crate::lru`]).
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

/// How many images built from directories the cache keeps; building one
/// more removes the least recently used beyond this (`$HUSK_ROOTFS_IMAGES_MAX`
/// overrides). A container running from a removed image keeps it open.
const DEFAULT_MAX_IMAGES: usize = 8;
/// Environment variable overriding [`DEFAULT_MAX_IMAGES`].
pub const ENV_IMAGES_MAX: &str = "HUSK_ROOTFS_IMAGES_MAX";
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
    #[error(transparent)]
    Image(#[from] ImageError),
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
    // Named for this process, so that one killed mid-build leaves a file a
    // later husk recognizes as stale (`remove_stale_work`).
    let partial = tempfile::Builder::new()
        .prefix(&crate::lru::work_name("", "."))
        .suffix(".ext4")
        .tempfile_in(&images)
        .map_err(io_err)?
        .into_temp_path();
    image::build_ext4(dir, &partial)?;
    partial.persist(&image).map_err(|e| io_err(e.error))?;
    log::debug!("rootfs {}: built image {}", dir.display(), image.display());
    trim(
        &images,
        crate::lru::max_from_env(ENV_IMAGES_MAX, DEFAULT_MAX_IMAGES),
    );
    Ok(image)
}

/// Removes what image builds that died left in the image cache under
/// `cache`.
pub fn remove_stale_work(cache: &Path) {
    crate::lru::remove_stale_work(&cache.join("rootfs"));
}

/// Removes the least recently used directory images beyond `keep`.
fn trim(images: &Path, keep: usize) {
    crate::lru::evict(images, keep, is_dir_image, "rootfs image");
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
    fn only_the_least_recently_used_directory_images_are_trimmed() {
        let images = tempfile::tempdir().unwrap();
        let make = |name: &str, age_s: i64| {
            let p = images.path().join(name);
            std::fs::write(&p, b"x").unwrap();
            crate::lru::tests::used_ago(&p, age_s);
            p
        };
        let old = make("dir-0000000000000001.ext4", 300);
        let recent = make("dir-0000000000000002.ext4", 100);
        let newest = make("dir-0000000000000003.ext4", 50);
        let busybox = make("busybox-0000000000000004.ext4", 1000);
        let building = make(".building.abc.ext4", 1000);
        trim(images.path(), 2);
        assert!(!old.exists());
        assert!(recent.exists() && newest.exists());
        assert!(
            busybox.exists() && building.exists(),
            "not directory images"
        );
    }

    #[test]
    fn a_missing_rootfs_is_named() {
        let err = image_for(Path::new("/no/such/rootfs"), Path::new("/tmp")).unwrap_err();
        assert!(err.to_string().contains("/no/such/rootfs"), "{err}");
    }
}
