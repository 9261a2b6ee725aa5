//! Lock files that can be removed: `flock(2)` on a file whose path is
//! checked again once the lock is held.
//!
//! Removing a lock file while another process waits on it is the classic
//! trap: the waiter then holds a lock on a file nobody else will ever open.
//! Here the holder unlinks the file *while holding* the lock
//! ([`LockFile::remove`]), and a process that got a lock checks that the path
//! still names the very file it locked (device and inode); if not, it
//! starts over on the new file. So the file can go when its work is done
//! (a finished template build, a deleted container) and nothing is left in
//! the cache or the state root.
//!
//! A lock dies with its holder (the kernel drops it when the last descriptor
//! closes; every descriptor here is close-on-exec, so no child inherits it).

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// How often [`LockFile::acquire_within`] tries again.
const RETRY: Duration = Duration::from_millis(20);

/// A held lock on the file at a path.
#[derive(Debug)]
pub struct LockFile {
    file: Flock<File>,
    path: PathBuf,
}

impl LockFile {
    /// Waits for the lock on `path` (creating the file, mode 0600).
    pub fn acquire(path: &Path) -> io::Result<LockFile> {
        loop {
            if let Some(l) = Self::attempt(path, FlockArg::LockExclusive)? {
                return Ok(l);
            }
        }
    }

    /// The lock on `path` if nobody holds it now; `None` if somebody does.
    pub fn try_acquire(path: &Path) -> io::Result<Option<LockFile>> {
        let start = Instant::now();
        loop {
            match Self::attempt(path, FlockArg::LockExclusiveNonblock) {
                Ok(Some(l)) => return Ok(Some(l)),
                // The file was replaced under us: try the new one (bounded,
                // a removal is rare and quick).
                Ok(None) if start.elapsed() < Duration::from_secs(1) => {}
                Ok(None) => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The lock on `path`, waiting at most `limit`; `None` if it stayed held.
    pub fn acquire_within(path: &Path, limit: Duration) -> io::Result<Option<LockFile>> {
        let start = Instant::now();
        loop {
            if let Some(l) = Self::try_acquire(path)? {
                return Ok(Some(l));
            }
            if start.elapsed() >= limit {
                return Ok(None);
            }
            std::thread::sleep(RETRY);
        }
    }

    /// One try: `Ok(None)` when the locked file is no longer at `path`.
    fn attempt(path: &Path, how: FlockArg) -> io::Result<Option<LockFile>> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let file = Flock::lock(file, how).map_err(|(_, e)| io::Error::from(e))?;
        let held = file.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => Ok(Some(LockFile {
                file,
                path: path.to_path_buf(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The locked path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file, then lets go of the lock: waiters start over on a
    /// new file.
    pub fn remove(self) -> io::Result<()> {
        let gone = match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        drop(self.file);
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn a_held_lock_is_refused_to_others_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let held = LockFile::acquire(&p).unwrap();
        assert_eq!(held.path(), p);
        // flock is per open file: a second open in this process conflicts.
        assert!(LockFile::try_acquire(&p).unwrap().is_none());
        assert!(LockFile::acquire_within(&p, Duration::from_millis(60))
            .unwrap()
            .is_none());
        drop(held);
        assert!(LockFile::try_acquire(&p).unwrap().is_some());
        assert!(p.exists(), "dropping keeps the file");
    }

    #[test]
    fn remove_unlinks_the_file_and_a_waiter_locks_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(dir.path().join("l"));
        let held = LockFile::acquire(&p).unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let waiter = {
            let (p, barrier) = (p.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let l = LockFile::acquire(&p).unwrap();
                let ino = std::fs::metadata(&*p).unwrap().ino();
                (l, ino)
            })
        };
        barrier.wait();
        std::thread::sleep(Duration::from_millis(50));
        held.remove().unwrap();
        let (l, ino) = waiter.join().unwrap();
        // The waiter holds the lock on the file now at the path (a new
        // one; the old inode was unlinked while locked).
        assert_eq!(std::fs::metadata(&*p).unwrap().ino(), ino);
        assert!(LockFile::try_acquire(&p).unwrap().is_none());
        l.remove().unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let err = LockFile::acquire(Path::new("/no/such/dir/l")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
