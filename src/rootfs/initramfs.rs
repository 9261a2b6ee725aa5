//! A writer for the `newc` cpio format the kernel unpacks as its initramfs.
//!
//! husk's initramfs is tiny: `/init` (husk-init), `/dev/console` (so init has
//! a console before devtmpfs is mounted) and a few directories. Writing it
//! ourselves avoids needing root (for the device node) or a `cpio` binary.
//! Format: `Documentation/driver-api/early-userspace/buffer-format.rst`.

use std::io::{self, Write};
use std::path::PathBuf;

/// `c_magic` of the newc format (no checksum).
const NEWC_MAGIC: &str = "070701";
/// Header, name and data are each padded to this alignment.
const ALIGN: usize = 4;
/// Name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFLNK: u32 = 0o120_000;

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    CharDev {
        path: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
}

/// Errors writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("cpio entry {path}: {reason}")]
    BadEntry { path: String, reason: &'static str },
    #[error("reading guest init {path}: {source}")]
    ReadInit { path: PathBuf, source: io::Error },
    #[error("writing cpio archive: {0}")]
    Io(#[from] io::Error),
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. }
            | Entry::File { path, .. }
            | Entry::CharDev { path, .. }
            | Entry::Symlink { path, .. } => path,
        }
    }
}

fn pad(out: &mut impl Write, written: usize) -> io::Result<usize> {
    let padding = (ALIGN - written % ALIGN) % ALIGN;
    out.write_all(&[0u8; ALIGN][..padding])?;
    Ok(padding)
}

#[allow(clippy::too_many_arguments)]
fn write_member(
    out: &mut impl Write,
    offset: &mut usize,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> Result<(), CpioError> {
    let name_len = u32::try_from(name.len() + 1).map_err(|_| CpioError::BadEntry {
        path: name.to_owned(),
        reason: "name too long",
    })?;
    let size = u32::try_from(data.len()).map_err(|_| CpioError::BadEntry {
        path: name.to_owned(),
        reason: "larger than 4 GiB",
    })?;
    // magic ino mode uid gid nlink mtime filesize devmajor devminor
    // rdevmajor rdevminor namesize check
    let header = format!(
        "{NEWC_MAGIC}{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{name_len:08x}{:08x}",
        0, 0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    *offset += header.len() + name.len() + 1;
    *offset += pad(out, *offset)?;
    out.write_all(data)?;
    *offset += data.len();
    *offset += pad(out, *offset)?;
    Ok(())
}

/// Writes `entries` as a newc archive (all owned by root, mtime 0, so equal
/// input gives byte-identical output).
pub fn write_archive(out: &mut impl Write, entries: &[Entry]) -> Result<(), CpioError> {
    let mut offset = 0usize;
    for (index, entry) in entries.iter().enumerate() {
        let path = entry.path().trim_start_matches('/');
        if path.is_empty() || path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(CpioError::BadEntry {
                path: entry.path().to_owned(),
                reason: "path must be relative, without empty or '..' components",
            });
        }
        let ino = u32::try_from(index + 1).map_err(|_| CpioError::BadEntry {
            path: path.to_owned(),
            reason: "too many entries",
        })?;
        match entry {
            Entry::Dir { mode, .. } => write_member(
                out,
                &mut offset,
                ino,
                S_IFDIR | (mode & 0o7777),
                2,
                (0, 0),
                path,
                &[],
            )?,
            Entry::File { mode, data, .. } => write_member(
                out,
                &mut offset,
                ino,
                S_IFREG | (mode & 0o7777),
                1,
                (0, 0),
                path,
                data,
            )?,
            Entry::CharDev {
                mode, major, minor, ..
            } => write_member(
                out,
                &mut offset,
                ino,
                S_IFCHR | (mode & 0o7777),
                1,
                (*major, *minor),
                path,
                &[],
            )?,
            Entry::Symlink { target, .. } => write_member(
                out,
                &mut offset,
                ino,
                S_IFLNK | 0o777,
                1,
                (0, 0),
                path,
                target.as_bytes(),
            )?,
        }
    }
    write_member(out, &mut offset, 0, 0, 1, (0, 0), TRAILER, &[])?;
    Ok(())
}

/// Major/minor of `/dev/console`.
const CONSOLE_DEV: (u32, u32) = (5, 1);

/// The entries of husk's initramfs around the given init binary.
pub fn husk_initramfs(init: Vec<u8>) -> Vec<Entry> {
    let dir = |p: &str| Entry::Dir {
        path: p.to_owned(),
        mode: 0o755,
    };
    vec![
        dir("dev"),
        Entry::CharDev {
            path: "dev/console".into(),
            mode: 0o600,
            major: CONSOLE_DEV.0,
            minor: CONSOLE_DEV.1,
        },
        dir("proc"),
        dir("sys"),
        dir("tmp"),
        dir("newroot"),
        Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: init,
        },
    ]
}

/// Writes husk's initramfs around the init binary at `init` to `output`. A
/// failed write leaves no file behind.
pub fn write_file(output: &std::path::Path, init: &std::path::Path) -> Result<(), CpioError> {
    let data = std::fs::read(init).map_err(|source| CpioError::ReadInit {
        path: init.to_path_buf(),
        source,
    })?;
    let result = std::fs::File::create(output)
        .map_err(CpioError::Io)
        .and_then(|file| {
            let mut out = io::BufWriter::new(file);
            write_archive(&mut out, &husk_initramfs(data))?;
            out.flush().map_err(CpioError::Io)
        });
    if result.is_err() {
        let _ = std::fs::remove_file(output);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(archive: &[u8], at: usize, index: usize) -> u32 {
        let start = at + 6 + index * 8;
        u32::from_str_radix(std::str::from_utf8(&archive[start..start + 8]).unwrap(), 16).unwrap()
    }

    #[test]
    fn members_are_aligned_and_the_archive_ends_with_a_trailer() {
        let mut out = Vec::new();
        write_archive(&mut out, &husk_initramfs(b"\x7fELF-ish".to_vec())).unwrap();
        assert_eq!(out.len() % ALIGN, 0);
        // Walk the archive the way the kernel does.
        let mut at = 0;
        let mut names = Vec::new();
        loop {
            assert_eq!(&out[at..at + 6], NEWC_MAGIC.as_bytes());
            let mode = field(&out, at, 1);
            let size = field(&out, at, 6) as usize;
            let namesize = field(&out, at, 11) as usize;
            let name_start = at + 110;
            let name = std::str::from_utf8(&out[name_start..name_start + namesize - 1]).unwrap();
            names.push((
                name.to_owned(),
                mode,
                field(&out, at, 9),
                field(&out, at, 10),
            ));
            let data_start = (name_start + namesize).div_ceil(ALIGN) * ALIGN;
            if name == TRAILER {
                break;
            }
            if name == "init" {
                assert_eq!(&out[data_start..data_start + size], b"\x7fELF-ish");
            }
            at = (data_start + size).div_ceil(ALIGN) * ALIGN;
        }
        assert!(names.iter().any(|(n, m, maj, min)| n == "dev/console"
            && m & 0o170_000 == S_IFCHR
            && (*maj, *min) == (5, 1)));
        assert!(names
            .iter()
            .any(|(n, m, _, _)| n == "init" && *m == S_IFREG | 0o755));
    }

    #[test]
    fn output_is_deterministic() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_archive(&mut a, &husk_initramfs(vec![1, 2, 3])).unwrap();
        write_archive(&mut b, &husk_initramfs(vec![1, 2, 3])).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn write_file_reports_a_missing_init_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("i.cpio");
        let err = write_file(&out, &tmp.path().join("no-init")).unwrap_err();
        assert!(err.to_string().contains("no-init"), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn escaping_paths_are_refused() {
        for bad in ["", "../etc", "a//b", "/"] {
            let e = write_archive(
                &mut Vec::new(),
                &[Entry::Dir {
                    path: bad.into(),
                    mode: 0o755,
                }],
            );
            assert!(matches!(e, Err(CpioError::BadEntry { .. })), "{bad:?}");
        }
    }
}
