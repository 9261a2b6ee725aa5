//! The shim's side of a task's stdio: the FIFOs containerd names in
//! `Create` and `Exec` (empty for "none"), turned into what husk's VMM
//! process (the container's main process) or an exec relay needs.
//!
//! - stdout/stderr FIFOs are opened read-write: the open never blocks, and
//!   while the shim holds a reader a write never fails with EPIPE when the
//!   engine's reader comes and goes (what containerd's own runc shim gets by
//!   opening both ends).
//! - a stdin FIFO is opened for reading on a thread of its own, because the
//!   open blocks until the engine opens the writing end (which it may never
//!   do). [`StdinFeed`] copies it into a pipe the VMM reads; an exec reads it
//!   through [`LazyFifo`]. Both are released with [`release_fifo`] when the
//!   process is gone.
//! - with a terminal, the shim owns the pty's master: stdin FIFO -> master,
//!   master -> stdout FIFO; the VMM gets the slave.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The stdio paths of a task or exec, as containerd gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Opens an output FIFO (or `/dev/null` for none) read-write, close-on-exec.
pub fn open_output(path: &str) -> io::Result<File> {
    let path = if path.is_empty() { "/dev/null" } else { path };
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {path}: {e}")))
}

/// Unblocks a thread stuck opening `path` for reading, if one is: opening
/// the writing end without blocking succeeds only while a reader waits, and
/// closing it again hands that reader an EOF.
pub fn release_fifo(path: &str) {
    if path.is_empty() {
        return;
    }
    let _ = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
}

/// A FIFO opened for reading on first use (the open blocks until a writer
/// comes); EOF for an empty path.
pub struct LazyFifo {
    path: PathBuf,
    file: Option<File>,
}

impl LazyFifo {
    pub fn new(path: &str) -> LazyFifo {
        LazyFifo {
            path: PathBuf::from(path),
            file: None,
        }
    }
}

impl Read for LazyFifo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.path.as_os_str().is_empty() {
            return Ok(0);
        }
        if self.file.is_none() {
            self.file = Some(File::open(&self.path)?);
        }
        match self.file.as_mut() {
            Some(f) => f.read(buf),
            None => Ok(0),
        }
    }
}

/// Copies a stdin FIFO into a pipe whose reading end is the VMM's stdin,
/// until EOF or [`StdinFeed::close`] (containerd's `CloseIO`).
pub struct StdinFeed {
    path: String,
    writer: Arc<Mutex<Option<File>>>,
}

impl StdinFeed {
    /// Returns the feed and the pipe's reading end for the VMM. With no
    /// FIFO, the VMM reads `/dev/null`.
    pub fn start(path: &str) -> io::Result<(Option<StdinFeed>, OwnedFd)> {
        if path.is_empty() {
            return Ok((None, File::open("/dev/null")?.into()));
        }
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let writer = Arc::new(Mutex::new(Some(File::from(w))));
        let feed = StdinFeed {
            path: path.to_owned(),
            writer: Arc::clone(&writer),
        };
        let mut fifo = LazyFifo::new(path);
        std::thread::Builder::new()
            .name("stdin-feed".into())
            .spawn(move || {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    let n = match fifo.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
                    let written = w.as_mut().map(|pipe| pipe.write_all(&buf[..n]));
                    if !matches!(written, Some(Ok(()))) {
                        break;
                    }
                }
                writer.lock().unwrap_or_else(|e| e.into_inner()).take();
            })?;
        Ok((Some(feed), r))
    }

    /// Closes the process's stdin now.
    pub fn close(&self) {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Ends the copying thread (the process is gone).
    pub fn release(&self) {
        self.close();
        release_fifo(&self.path);
    }
}

/// A pty whose master the shim keeps: the engine's FIFOs are copied to and
/// from it, `ResizePty` sets its size.
pub struct ShimPty {
    pub master: Arc<File>,
    stdin_path: String,
    output: Option<JoinHandle<()>>,
}

impl ShimPty {
    /// Opens a pty, starts the copies, and returns it with the slave end
    /// (for the VMM; the shim must not keep a copy, or the master never
    /// reports the end of output).
    pub fn start(paths: &StdioPaths) -> io::Result<(ShimPty, OwnedFd)> {
        let pty = nix::pty::openpty(None, None).map_err(io::Error::from)?;
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(fd),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(io::Error::from)?;
        }
        let master = Arc::new(File::from(pty.master));
        let mut out = open_output(&paths.stdout)?;
        let mut reader = master.try_clone()?;
        let output = std::thread::Builder::new()
            .name("pty-out".into())
            .spawn(move || {
                let mut buf = vec![0u8; 32 * 1024];
                // EIO once every slave descriptor is closed.
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 || out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            })?;
        if !paths.stdin.is_empty() {
            let mut fifo = LazyFifo::new(&paths.stdin);
            let mut writer = master.try_clone()?;
            std::thread::Builder::new()
                .name("pty-in".into())
                .spawn(move || {
                    let _ = io::copy(&mut fifo, &mut writer);
                })?;
        }
        Ok((
            ShimPty {
                master,
                stdin_path: paths.stdin.clone(),
                output: Some(output),
            },
            pty.slave,
        ))
    }

    /// Sets the terminal's size (the VMM passes it on to the guest's).
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*self.master);
        // SAFETY: TIOCSWINSZ reads a winsize from the struct we own; `fd` is
        // the live master we hold.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits (at most `limit`) for the output copy to drain after the VMM
    /// ended, then stops the input copy.
    pub fn finish(&mut self, limit: Duration) {
        if let Some(h) = self.output.take() {
            let start = Instant::now();
            while !h.is_finished() && start.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        release_fifo(&self.stdin_path);
    }
}

/// Creates the FIFO at `path` (tests and tools).
pub fn mkfifo(path: &Path) -> io::Result<()> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_fifos_open_without_a_reader_and_none_means_dev_null() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out");
        mkfifo(&p).unwrap();
        let mut f = open_output(p.to_str().unwrap()).unwrap();
        f.write_all(b"buffered").unwrap();
        let mut r = File::open(&p).unwrap();
        let mut buf = [0u8; 8];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"buffered");
        let mut null = open_output("").unwrap();
        null.write_all(b"x").unwrap();
        let err = open_output("/nonexistent/fifo").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/fifo"), "{err}");
    }

    #[test]
    fn stdin_feed_copies_until_eof_and_no_fifo_reads_dev_null() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in");
        mkfifo(&p).unwrap();
        let (feed, r) = StdinFeed::start(p.to_str().unwrap()).unwrap();
        assert!(feed.is_some());
        let mut w = OpenOptions::new().write(true).open(&p).unwrap();
        w.write_all(b"hello").unwrap();
        drop(w);
        let mut got = String::new();
        File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello");

        let (none, r) = StdinFeed::start("").unwrap();
        assert!(none.is_none());
        let mut got = Vec::new();
        File::from(r).read_to_end(&mut got).unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn a_feed_nobody_writes_to_is_closed_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in");
        mkfifo(&p).unwrap();
        let (feed, r) = StdinFeed::start(p.to_str().unwrap()).unwrap();
        let feed = feed.unwrap();
        feed.close();
        // The pipe reports EOF although the FIFO never got a writer.
        let mut got = Vec::new();
        File::from(r).read_to_end(&mut got).unwrap();
        assert!(got.is_empty());
        // And the thread blocked in open() gets out.
        feed.release();
    }

    #[test]
    fn lazy_fifo_opens_on_first_read_and_release_unblocks_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in");
        mkfifo(&p).unwrap();
        let path = p.to_str().unwrap().to_owned();
        let reader = std::thread::spawn({
            let path = path.clone();
            move || {
                let mut s = String::new();
                LazyFifo::new(&path).read_to_string(&mut s).map(|_| s)
            }
        });
        // Keep trying: the release only works once the reader is waiting.
        let start = Instant::now();
        while !reader.is_finished() && start.elapsed() < Duration::from_secs(10) {
            release_fifo(&path);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(reader.join().unwrap().unwrap(), "");
        let mut empty = String::new();
        LazyFifo::new("").read_to_string(&mut empty).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn a_pty_copies_both_ways_resizes_and_drains_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let inp = dir.path().join("in");
        mkfifo(&out).unwrap();
        mkfifo(&inp).unwrap();
        let paths = StdioPaths {
            stdin: inp.to_str().unwrap().into(),
            stdout: out.to_str().unwrap().into(),
            stderr: String::new(),
            terminal: true,
        };
        let (mut pty, slave) = ShimPty::start(&paths).unwrap();
        // The shim holds the writing end already: this open does not block.
        let mut reader = File::open(&out).unwrap();
        pty.resize(100, 30).unwrap();
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes into the struct we own; `slave` is live.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&slave),
                libc::TIOCGWINSZ,
                &mut ws,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (100, 30));
        let mut slave = File::from(slave);
        // Raw mode is not set: the line discipline echoes; only check that
        // what the "process" writes arrives.
        slave.write_all(b"from the process\n").unwrap();
        let mut w = OpenOptions::new().write(true).open(&inp).unwrap();
        w.write_all(b"typed\n").unwrap();
        let mut line = String::new();
        let mut buf = [0u8; 1];
        while !line.contains("typed") {
            assert_eq!(slave.read(&mut buf).unwrap(), 1);
            line.push(char::from(buf[0]));
        }
        drop(slave);
        pty.finish(Duration::from_secs(5));
        let mut got = String::new();
        reader.read_to_string(&mut got).unwrap();
        assert!(got.contains("from the process"), "{got:?}");
    }
}
