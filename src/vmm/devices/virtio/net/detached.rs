//! [`Detached`]: a network device's host side with nothing behind it.
//!
//! A template VM ([`crate::runtime::template`]) has the NICs of the
//! containers that will be restored from it, so its guest probes them
//! (features, queues, its rx buffers posted); each container's VM then
//! rebuilds its devices on its own taps. The template's NICs need no tap:
//! no frame ever arrives, and the frames the guest sends (it has no address
//! yet, so at most a stray IPv6 solicitation) are dropped.

use std::os::fd::{AsRawFd, RawFd};

use vm_memory::VolatileSlice;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::tap::NetBackend;

/// Frames sent are dropped (counted as sent); none ever arrive. The fd the
/// device watches is an eventfd nobody writes.
#[derive(Debug)]
pub struct Detached {
    never: EventFd,
    name: String,
}

impl Detached {
    /// A detached backend logged as `name`.
    pub fn new(name: &str) -> std::io::Result<Detached> {
        Ok(Detached {
            never: EventFd::new(EFD_NONBLOCK)?,
            name: name.to_string(),
        })
    }
}

impl AsRawFd for Detached {
    fn as_raw_fd(&self) -> RawFd {
        self.never.as_raw_fd()
    }
}

fn nothing() -> std::io::Error {
    std::io::ErrorKind::WouldBlock.into()
}

impl NetBackend for Detached {
    fn read_frame(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        Err(nothing())
    }

    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn read_frame_vectored(&mut self, _bufs: &[VolatileSlice<'_>]) -> std::io::Result<usize> {
        Err(nothing())
    }

    fn write_frame_vectored(&mut self, bufs: &[VolatileSlice<'_>]) -> std::io::Result<usize> {
        Ok(bufs.iter().map(VolatileSlice::len).sum())
    }

    fn set_offload(&mut self, _flags: u32) -> std::io::Result<()> {
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_arrives_and_everything_sent_is_dropped() {
        let mut d = Detached::new("template-nic0").unwrap();
        assert_eq!(d.name(), "template-nic0");
        let mut buf = [0u8; 64];
        let err = d.read_frame(&mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        assert_eq!(d.write_frame(&buf).unwrap(), 64);
        let mut a = [0u8; 10];
        let mut b = [0u8; 30];
        // SAFETY: the slices cover `a` and `b`, which outlive them and are
        // touched only through them below.
        let bufs = unsafe {
            [
                VolatileSlice::new(a.as_mut_ptr(), a.len()),
                VolatileSlice::new(b.as_mut_ptr(), b.len()),
            ]
        };
        assert_eq!(d.write_frame_vectored(&bufs).unwrap(), 40);
        let err = d.read_frame_vectored(&bufs).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        d.set_offload(u32::MAX).unwrap();
        // The watched fd never becomes readable.
        let mut fds = [libc::pollfd {
            fd: d.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, for the length given.
        assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) }, 0);
    }
}
