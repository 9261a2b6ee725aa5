//! Block images made from directories (ext4, through e2fsprogs' `mkfs.ext4 -d`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Extra room on top of the directory's contents, for metadata and the
/// files a command writes at run time.
const HEADROOM_BYTES: u64 = 64 << 20;
/// Contents are scaled by this factor (percent) to allow for ext4 overhead.
const OVERHEAD_PERCENT: u64 = 125;
/// Bytes per inode ext4 is asked for: small files dominate root filesystems.
const BYTES_PER_INODE: &str = "8192";
/// Image sizes are rounded up to this.
const SIZE_ALIGN: u64 = 1 << 20;

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("rootfs {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("reading {path}: {source}")]
    Walk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating image {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mkfs.ext4 not found (install e2fsprogs): {source}")]
    MkfsMissing { source: std::io::Error },
    #[error("mkfs.ext4 -d {dir} failed ({status}): {stderr}")]
    Mkfs {
        dir: PathBuf,
        status: String,
        stderr: String,
    },
}

/// Bytes of the regular files and symlinks below `dir` (without following
/// symlinks), and how many entries there are.
pub fn tree_size(dir: &Path) -> Result<(u64, u64), ImageError> {
    let mut bytes = 0u64;
    let mut entries = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let walk_err = |source| ImageError::Walk {
            path: d.clone(),
            source,
        };
        for entry in std::fs::read_dir(&d).map_err(walk_err)? {
            let entry = entry.map_err(walk_err)?;
            let meta = entry.path().symlink_metadata().map_err(walk_err)?;
            entries += 1;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                bytes += meta.len();
            }
        }
    }
    Ok((bytes, entries))
}

/// Size an ext4 image needs to hold `content_bytes`, with headroom.
pub fn image_size_for(content_bytes: u64) -> u64 {
    let raw = content_bytes.saturating_mul(OVERHEAD_PERCENT) / 100 + HEADROOM_BYTES;
    raw.div_ceil(SIZE_ALIGN) * SIZE_ALIGN
}

/// Makes an ext4 image at `image` holding the contents of `dir`. A failed
/// build leaves no image behind.
pub fn build_ext4(dir: &Path, image: &Path) -> Result<(), ImageError> {
    if !dir.is_dir() {
        return Err(ImageError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let (bytes, _) = tree_size(dir)?;
    let size = image_size_for(bytes);
    let create_err = |source| ImageError::Create {
        path: image.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(image).map_err(create_err)?;
    file.set_len(size).map_err(create_err)?;
    drop(file);
    let result = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-i", BYTES_PER_INODE, "-L", "husk-root", "-d"])
        .arg(dir)
        .arg(image)
        .output();
    let outcome = match result {
        Err(source) => Err(ImageError::MkfsMissing { source }),
        Ok(out) if !out.status.success() => Err(ImageError::Mkfs {
            dir: dir.to_path_buf(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }),
        Ok(_) => Ok(()),
    };
    if outcome.is_err() {
        let _ = std::fs::remove_file(image);
    }
    outcome
}

/// Offset of the ext2/3/4 superblock magic (superblock at 1024, magic at 0x38).
const EXT_MAGIC_OFFSET: u64 = 1024 + 0x38;
const EXT_MAGIC: [u8; 2] = [0x53, 0xef];

/// Whether `path` is a file holding an ext2/3/4 filesystem.
pub fn is_ext_image(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::File::open(path)?;
    let mut magic = [0u8; 2];
    match file.read_exact_at(&mut magic, EXT_MAGIC_OFFSET) {
        Ok(()) => Ok(magic == EXT_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_headroom_and_are_aligned() {
        assert_eq!(image_size_for(0), HEADROOM_BYTES);
        let s = image_size_for(10 << 20);
        assert!(s >= (10 << 20) + HEADROOM_BYTES);
        assert_eq!(s % SIZE_ALIGN, 0);
    }

    #[test]
    fn builds_an_ext4_image_holding_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hello"), b"hi from the image\n").unwrap();
        std::os::unix::fs::symlink("hello", root.join("etc/link")).unwrap();
        let img = tmp.path().join("root.img");
        build_ext4(&root, &img).unwrap();
        // The ext4 superblock magic 0xEF53 sits at byte 1024 + 0x38.
        assert!(is_ext_image(&img).unwrap());
        assert!(!is_ext_image(&root.join("etc/hello")).unwrap());
        // debugfs (also e2fsprogs) reads the file back out of the image.
        let out = Command::new("debugfs")
            .args(["-R", "cat /etc/hello"])
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi from the image\n");
    }

    #[test]
    fn a_file_is_not_a_rootfs_and_nothing_is_left_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let img = tmp.path().join("out.img");
        let err = build_ext4(&file, &img).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
        assert!(!img.exists());
    }

    #[test]
    fn an_unreadable_tree_fails_cleanly() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("out.img");
        let err = build_ext4(&tmp.path().join("missing"), &img).unwrap_err();
        assert!(matches!(err, ImageError::NotADirectory { .. }));
        assert!(!img.exists());
    }
}
