//! Least-recently-used trimming of husk's caches (template snapshots, rootfs
//! images): an entry's access time is when it was last used, set
//! explicitly on every use (a `noatime` or `relatime` mount does not stop an
//! explicit update); its modification time is left alone, since the
//! template key covers a root image's mtime.
//!
//! Removing an entry that a running VM uses is safe: the VM holds it open or
//! mapped, and the data lives until it lets go.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What marks a cache entry being built: `NAME.building.OWNER[.EXT]`, OWNER
/// the builder's [`crate::runtime::process::own_tag`]. A builder that dies
/// (SIGKILL, a full disk, a host crash) leaves it; [`remove_stale_work`]
/// takes it once its owner is gone.
pub const BUILDING: &str = ".building.";
/// Suffix of the lock files beside cache entries ([`crate::lockfile`]).
pub const LOCK_SUFFIX: &str = ".lock";

/// The name of a work entry for `name` built by this process.
pub fn work_name(name: &str, ext: &str) -> String {
    format!(
        "{name}{BUILDING}{}{ext}",
        crate::runtime::process::own_tag()
    )
}

/// Removes from `dir` the work entries whose builder is gone and the lock
/// files nobody holds. Returns what was removed.
pub fn remove_stale_work(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let gone = if let Some((_, rest)) = name.split_once(BUILDING) {
            let owner = rest.split('.').next().unwrap_or("");
            if crate::runtime::process::owner_is_alive(owner) {
                continue;
            }
            if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            }
        } else if name.ends_with(LOCK_SUFFIX) {
            match crate::lockfile::LockFile::try_acquire(&path) {
                Ok(Some(lock)) => lock.remove(),
                _ => continue,
            }
        } else {
            continue;
        };
        match gone {
            Ok(()) => {
                log::info!(
                    "{}: removed (left by a builder that is gone)",
                    path.display()
                );
                removed.push(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("{}: removing: {e}", path.display()),
        }
    }
    removed
}

/// Marks `path` used now (its access time).
pub fn mark_used(path: &Path) {
    let now = nix::sys::time::TimeSpec::UTIME_NOW;
    let keep = nix::sys::time::TimeSpec::UTIME_OMIT;
    if let Err(e) = nix::sys::stat::utimensat(
        None,
        path,
        &now,
        &keep,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    ) {
        log::debug!("cache entry {}: marking used: {e}", path.display());
    }
}

/// When `path` was last used.
pub(crate) fn last_used(path: &Path) -> Option<SystemTime> {
    std::fs::symlink_metadata(path).ok()?.accessed().ok()
}

/// The maximum from environment variable `var` (a positive number), else
/// `default`; a bad value is logged and ignored.
pub fn max_from_env(var: &str, default: usize) -> usize {
    max_from(var, std::env::var(var).ok(), default)
}

fn max_from(var: &str, value: Option<String>, default: usize) -> usize {
    match value {
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                log::warn!("{var}={v:?} is not a positive number; keeping {default}");
                default
            }
        },
        None => default,
    }
}

/// Removes the least recently used entries of `dir` for which `is_entry`
/// holds, beyond the `keep` most recent (at least one is kept); `what`
/// names them in the log. Returns what was removed.
pub fn evict(
    dir: &Path,
    keep: usize,
    is_entry: impl Fn(&Path) -> bool,
    what: &str,
) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_entry(p))
        .filter_map(|p| Some((last_used(&p)?, p)))
        .collect();
    found.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut removed = Vec::new();
    for (_, old) in found.into_iter().skip(keep.max(1)) {
        let gone = if old.is_dir() {
            std::fs::remove_dir_all(&old)
        } else {
            std::fs::remove_file(&old)
        };
        match gone {
            Ok(()) => {
                log::info!("{what} {}: removed (least recently used)", old.display());
                removed.push(old);
            }
            Err(e) => log::warn!("{what} {}: removing: {e}", old.display()),
        }
    }
    removed
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Sets `path`'s access time `age_s` seconds before a fixed instant, and
    /// its modification time to that instant.
    pub(crate) fn used_ago(path: &Path, age_s: i64) {
        let base = 1_700_000_000;
        nix::sys::stat::utimensat(
            None,
            path,
            &nix::sys::time::TimeSpec::new(base - age_s, 0),
            &nix::sys::time::TimeSpec::new(base, 0),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    #[test]
    fn stale_work_and_free_locks_go_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A builder that is gone: a dead child's pid.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale_file = d.join(format!(".building.{dead}-1.abc.ext4"));
        let stale_dir = d.join(format!("k1.building.{dead}-7"));
        std::fs::write(&stale_file, b"x").unwrap();
        std::fs::create_dir_all(stale_dir.join("inner")).unwrap();
        // Ours, alive.
        let live = d.join(work_name("k2", ".ext4"));
        std::fs::write(&live, b"x").unwrap();
        // A lock nobody holds, and one we hold.
        let free = d.join("k1.lock");
        std::fs::write(&free, b"").unwrap();
        let held_path = d.join("k2.lock");
        let held = crate::lockfile::LockFile::acquire(&held_path).unwrap();
        // Entries that are not work stay whatever their names.
        let entry = d.join("dir-0123.ext4");
        std::fs::write(&entry, b"x").unwrap();
        let mut removed = remove_stale_work(d);
        removed.sort();
        let mut want = vec![stale_file, stale_dir, free];
        want.sort();
        assert_eq!(removed, want);
        assert!(live.exists() && held_path.exists() && entry.exists());
        drop(held);
        assert!(remove_stale_work(d).contains(&held_path));
        assert!(remove_stale_work(Path::new("/no/such/dir")).is_empty());
    }

    #[test]
    fn the_least_recently_used_go_and_modification_times_stay() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, age_s: i64| {
            let p = dir.path().join(name);
            std::fs::write(&p, b"x").unwrap();
            used_ago(&p, age_s);
            p
        };
        let oldest = make("a.img", 300);
        let old = make("b.img", 200);
        let newer = make("c.img", 100);
        let other = make("d.other", 1000);
        let mtime = std::fs::metadata(&oldest).unwrap().modified().unwrap();
        mark_used(&oldest);
        assert_eq!(
            std::fs::metadata(&oldest).unwrap().modified().unwrap(),
            mtime,
            "marking used keeps the modification time"
        );
        let removed = evict(
            dir.path(),
            2,
            |p| p.extension().is_some_and(|e| e == "img"),
            "test",
        );
        assert_eq!(removed, vec![old.clone()]);
        assert!(oldest.exists() && newer.exists() && other.exists());
        assert!(!old.exists());
    }

    #[test]
    fn at_least_one_stays_and_a_missing_dir_is_nothing_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("f"), b"x").unwrap();
        assert!(evict(dir.path(), 0, |_| true, "test").is_empty());
        assert!(a.exists());
        assert!(evict(&dir.path().join("none"), 1, |_| true, "test").is_empty());
    }

    #[test]
    fn the_maximum_is_a_positive_number_or_the_default() {
        let max = |v: Option<&str>| max_from("X", v.map(str::to_owned), 8);
        assert_eq!(max(None), 8);
        assert_eq!(max(Some("3")), 3);
        assert_eq!(max(Some("0")), 8);
        assert_eq!(max(Some("many")), 8);
    }
}
