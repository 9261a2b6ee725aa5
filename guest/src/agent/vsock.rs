//! AF_VSOCK stream sockets: the agent's listener and its connections.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    accept4, bind, listen, send, shutdown, socket, AddressFamily, Backlog, MsgFlags, Shutdown,
    SockFlag, SockType, VsockAddr,
};

use super::conn::Connection;

/// `VMADDR_CID_ANY`: accept connections addressed to any of our CIDs.
const CID_ANY: u32 = u32::MAX;
/// Pending connections the kernel queues.
const BACKLOG: i32 = 64;

/// A listening vsock socket.
pub struct VsockListener(OwnedFd);

impl VsockListener {
    /// Listens on `port` for any CID.
    pub fn bind(port: u32) -> Result<Self, Errno> {
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        bind(fd.as_raw_fd(), &VsockAddr::new(CID_ANY, port))?;
        listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))?;
        Ok(VsockListener(fd))
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> Result<VsockStream, Errno> {
        let raw = accept4(self.0.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
        // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
        Ok(VsockStream(unsafe { OwnedFd::from_raw_fd(raw) }))
    }
}

/// A connected vsock stream.
pub struct VsockStream(OwnedFd);

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::read(self.0.as_raw_fd(), buf) {
                Err(Errno::EINTR) => continue,
                other => return other.map_err(io::Error::from),
            }
        }
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // MSG_NOSIGNAL: a host that went away is an error, not SIGPIPE.
            match send(self.0.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL) {
                Err(Errno::EINTR) => continue,
                other => return other.map_err(io::Error::from),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Connection for VsockStream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(VsockStream(self.0.try_clone()?))
    }

    fn shutdown(&self) {
        let _ = shutdown(self.0.as_raw_fd(), Shutdown::Both);
    }
}
