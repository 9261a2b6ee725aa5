//! Root filesystem images cached by content: the first container from a
//! directory builds its ext4 image, later ones reuse it. Containers mount the
//! image read-only (with an overlay in the guest), so one image serves all.
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
    let image = images.join(format!("dir-{key:016x}.ext4"));
    if image.is_file() {
        log::debug!("rootfs {}: cached image {}", dir.display(), image.display());
        return Ok(image);
    }
    let io_err = |source| CacheError::Io {
        path: images.clone(),
        source,
    };
    std::fs::create_dir_all(&images).map_err(io_err)?;
    let partial = tempfile::Builder::new()
        .prefix(".building.")
        .suffix(".ext4")
        .tempfile_in(&images)
        .map_err(io_err)?
        .into_temp_path();
    image::build_ext4(dir, &partial)?;
    partial.persist(&image).map_err(|e| io_err(e.error))?;
    log::debug!("rootfs {}: built image {}", dir.display(), image.display());
    Ok(image)
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
    fn a_missing_rootfs_is_named() {
        let err = image_for(Path::new("/no/such/rootfs"), Path::new("/tmp")).unwrap_err();
        assert!(err.to_string().contains("/no/such/rootfs"), "{err}");
    }
}
