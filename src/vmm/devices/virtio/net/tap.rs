//! The host side of the network device: a tap interface opened through
//! `/dev/net/tun`, every frame carrying a 12-byte virtio-net header
//! (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ`), and [`NetBackend`], what the device
//! needs from it.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use libc::{c_int, c_short, c_uint, c_ulong};
use vm_memory::volatile_memory::{PtrGuard, PtrGuardMut};
use vm_memory::VolatileSlice;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};
use vmm_sys_util::ioctl_iow_nr;

use super::{MAX_IOVECS, VNET_HDR_SIZE};

/// The clone device tap interfaces are created through.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// The ioctl type of the tun driver (`linux/if_tun.h`).
const TUNTAP: c_uint = b'T' as c_uint;
ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, c_int);
ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, c_uint);
ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, c_int);

/// Errors of opening and configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {name:?} is empty, contains a NUL byte or has more than {} bytes", libc::IFNAMSIZ - 1)]
    InvalidName { name: String },
    #[error("opening {TUN_DEVICE} for tap {name}: {source}")]
    OpenTun {
        name: String,
        source: std::io::Error,
    },
    #[error("tap {name}: {op}: {source}")]
    Ioctl {
        name: String,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("tap {name}: creating the socket for interface ioctls: {source}")]
    Socket {
        name: String,
        source: std::io::Error,
    },
    #[error("tap {name}: MTU {mtu} is out of range")]
    InvalidMtu { name: String, mtu: u32 },
}

/// What the network device needs from its host side, so unit tests can
/// use a double. The fd is what the device waits on for rx frames
/// (readable, edge-triggered).
pub trait NetBackend: AsRawFd + Send {
    /// Reads one frame, its 12-byte virtio-net header included, into `buf`;
    /// `WouldBlock` when there is none.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame, its 12-byte virtio-net header included.
    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize>;
    /// Reads one frame, its header included, straight into `bufs` (at most
    /// [`MAX_IOVECS`] of them, guest memory) in order; a frame longer than
    /// they hold is truncated; `WouldBlock` when there is none. Like
    /// [`NetBackend::read_frame`], it leaves `num_buffers` alone.
    fn read_frame_vectored(&mut self, bufs: &[VolatileSlice<'_>]) -> std::io::Result<usize>;
    /// Writes one frame gathered from `bufs` (at most [`MAX_IOVECS`]).
    fn write_frame_vectored(&mut self, bufs: &[VolatileSlice<'_>]) -> std::io::Result<usize>;
    /// Sets which offloads (`TUN_F_*`) frames handed to the guest may use.
    fn set_offload(&mut self, flags: u32) -> std::io::Result<()>;
    /// The name logs use for the device.
    fn name(&self) -> &str {
        "net"
    }
}

/// A tap interface in the network namespace it was opened in.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// An `ifreq` naming `name` (checked by [`check_name`]), the rest zeroed.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (a name array and a union of
    // integers, socket addresses and a pointer); all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}

/// Interface names are at most `IFNAMSIZ - 1` bytes, without NUL.
fn check_name(name: &str) -> Result<(), TapError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(TapError::InvalidName {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Turns an ioctl return value into a result.
fn check_ioctl(rc: c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Tap {
    /// Creates tap `name` (or attaches to an existing persistent one) in the
    /// calling thread's network namespace: `IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR`, non-blocking and close-on-exec, with a 12-byte
    /// virtio-net header (virtio 1.x, `num_buffers` included).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        check_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|source| TapError::OpenTun {
                name: name.to_string(),
                source,
            })?;
        let ioctl_err = |op| {
            let name = name.to_string();
            move |source| TapError::Ioctl { name, op, source }
        };

        let mut ifr = ifreq(name);
        let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        // The flags all fit in the 16-bit `ifr_flags`.
        ifr.ifr_ifru.ifru_flags = c_short::try_from(flags).unwrap_or(c_short::MAX);
        // SAFETY: `file` is an open tun fd; TUNSETIFF reads (and writes back
        // the name into) the `ifreq` we pass by exclusive reference, which
        // outlives the call. The return value is checked.
        check_ioctl(unsafe { ioctl_with_mut_ref(&file, TUNSETIFF(), &mut ifr) })
            .map_err(ioctl_err("TUNSETIFF"))?;
        // The kernel may have expanded a `%d` in the name.
        // SAFETY: the kernel NUL-terminates `ifr_name` (IFNAMSIZ bytes).
        let actual = unsafe { CStr::from_ptr(ifr.ifr_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();

        let hdr_size = c_int::try_from(VNET_HDR_SIZE).unwrap_or(c_int::MAX);
        // SAFETY: `file` is a tun fd attached to a tap; TUNSETVNETHDRSZ reads
        // one `int` from the reference, which outlives the call. The return
        // value is checked.
        check_ioctl(unsafe { ioctl_with_ref(&file, TUNSETVNETHDRSZ(), &hdr_size) })
            .map_err(ioctl_err("TUNSETVNETHDRSZ"))?;

        log::debug!("tap {actual}: opened");
        Ok(Tap { file, name: actual })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets which offloads (`TUN_F_*`) the tap may use in the frames it
    /// hands us (`TUNSETOFFLOAD`).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: `file` is a tun fd attached to a tap; TUNSETOFFLOAD takes
        // its argument by value and touches no memory of ours. The return
        // value is checked.
        check_ioctl(unsafe { ioctl_with_val(&self.file, TUNSETOFFLOAD(), c_ulong::from(flags)) })
            .map_err(|source| TapError::Ioctl {
                name: self.name.clone(),
                op: "TUNSETOFFLOAD",
                source,
            })
    }

    /// Sets the interface MTU (`SIOCSIFMTU`) in the current network
    /// namespace.
    pub fn set_mtu(&self, mtu: u32) -> Result<(), TapError> {
        let value = c_int::try_from(mtu).map_err(|_| TapError::InvalidMtu {
            name: self.name.clone(),
            mtu,
        })?;
        let socket = self.ioctl_socket()?;
        let mut ifr = ifreq(&self.name);
        ifr.ifr_ifru.ifru_mtu = value;
        // SAFETY: `socket` is an open AF_INET socket; SIOCSIFMTU reads the
        // `ifreq`, which outlives the call. The return value is checked.
        check_ioctl(unsafe { ioctl_with_ref(&socket, libc::SIOCSIFMTU, &ifr) })
            .map_err(|source| self.ioctl_error("SIOCSIFMTU", source))
    }

    /// Brings the interface up (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS` with
    /// `IFF_UP`) in the current network namespace.
    pub fn set_up(&self) -> Result<(), TapError> {
        let socket = self.ioctl_socket()?;
        let mut ifr = ifreq(&self.name);
        // SAFETY: `socket` is an open AF_INET socket; SIOCGIFFLAGS writes
        // `ifr_flags` of the `ifreq` we pass by exclusive reference, which
        // outlives the call. The return value is checked.
        check_ioctl(unsafe { ioctl_with_mut_ref(&socket, libc::SIOCGIFFLAGS, &mut ifr) })
            .map_err(|source| self.ioctl_error("SIOCGIFFLAGS", source))?;
        let up = c_short::try_from(libc::IFF_UP).unwrap_or(0);
        // SAFETY: SIOCGIFFLAGS filled `ifru_flags`, a plain integer.
        unsafe { ifr.ifr_ifru.ifru_flags |= up };
        // SAFETY: as above; SIOCSIFFLAGS reads the `ifreq`. The return
        // value is checked.
        check_ioctl(unsafe { ioctl_with_ref(&socket, libc::SIOCSIFFLAGS, &ifr) })
            .map_err(|source| self.ioctl_error("SIOCSIFFLAGS", source))
    }

    /// A datagram socket for interface ioctls in the current namespace.
    fn ioctl_socket(&self) -> Result<OwnedFd, TapError> {
        // SAFETY: socket(2) takes no pointers; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(TapError::Socket {
                name: self.name.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is a new socket nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn ioctl_error(&self, op: &'static str, source: std::io::Error) -> TapError {
        TapError::Ioctl {
            name: self.name.clone(),
            op,
            source,
        }
    }
}

/// An empty `iovec` to fill arrays with.
const NO_IOVEC: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// Refuses more buffers than the iovec arrays hold; returns their count.
fn iovec_count(bufs: &[VolatileSlice<'_>]) -> std::io::Result<c_int> {
    if bufs.len() > MAX_IOVECS {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} buffers, more than {MAX_IOVECS}", bufs.len()),
        ));
    }
    // At most MAX_IOVECS, far below c_int::MAX (and IOV_MAX).
    Ok(c_int::try_from(bufs.len()).unwrap_or(c_int::MAX))
}

/// Turns a readv/writev return value into a result.
fn check_len(rc: isize) -> std::io::Result<usize> {
    usize::try_from(rc).map_err(|_| std::io::Error::last_os_error())
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // One read(2) on a tap returns exactly one frame.
        self.file.read(buf)
    }

    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // One write(2) on a tap sends exactly one frame.
        self.file.write(buf)
    }

    fn read_frame_vectored(&mut self, bufs: &[VolatileSlice<'_>]) -> std::io::Result<usize> {
        let count = iovec_count(bufs)?;
        // The guards keep each pointer valid until they go out of scope at
        // the end of this function, after the call (without vm-memory's
        // `xen` feature they map nothing, but that is theirs to know).
        let mut guards: [Option<PtrGuardMut>; MAX_IOVECS] = [const { None }; MAX_IOVECS];
        let mut iovs = [NO_IOVEC; MAX_IOVECS];
        for ((buf, guard), iov) in bufs.iter().zip(&mut guards).zip(&mut iovs) {
            let g = guard.insert(buf.ptr_guard_mut());
            *iov = libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: g.len(),
            };
        }
        // SAFETY: the first `count` iovecs describe the `bufs` slices,
        // each valid for writes of its length while `guards` (and the
        // borrow of `bufs`) live, i.e. through the call. They are guest
        // memory, which Rust code only reaches through raw pointers and
        // volatile accesses (vm-memory hands out no references into it),
        // so the kernel writing there aliases no Rust reference; the guest
        // may touch the same bytes concurrently, which only garbles its own
        // frame. `iovs` outlives the call. One readv(2) on a tap returns
        // exactly one frame (or EAGAIN).
        let rc = unsafe { libc::readv(self.file.as_raw_fd(), iovs.as_ptr(), count) };
        check_len(rc)
    }

    fn write_frame_vectored(&mut self, bufs: &[VolatileSlice<'_>]) -> std::io::Result<usize> {
        let count = iovec_count(bufs)?;
        let mut guards: [Option<PtrGuard>; MAX_IOVECS] = [const { None }; MAX_IOVECS];
        let mut iovs = [NO_IOVEC; MAX_IOVECS];
        for ((buf, guard), iov) in bufs.iter().zip(&mut guards).zip(&mut iovs) {
            let g = guard.insert(buf.ptr_guard());
            *iov = libc::iovec {
                iov_base: g.as_ptr().cast_mut().cast(),
                iov_len: g.len(),
            };
        }
        // SAFETY: the first `count` iovecs describe the `bufs` slices,
        // each valid for reads of its length while `guards` (and the
        // borrow of `bufs`) live, i.e. through the call; writev(2) only
        // reads them (the cast to `*mut` is the iovec type's, nothing is
        // written). `iovs` outlives the call. One writev(2) on a tap sends
        // exactly one frame.
        let rc = unsafe { libc::writev(self.file.as_raw_fd(), iovs.as_ptr(), count) };
        check_len(rc)
    }

    fn set_offload(&mut self, flags: u32) -> std::io::Result<()> {
        Tap::set_offload(self, flags).map_err(|err| match err {
            TapError::Ioctl { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        })
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::TUN_F_CSUM;
    use super::*;

    /// The interface's MTU and flags, read with `SIOCGIFMTU` /
    /// `SIOCGIFFLAGS` in the calling thread's namespace.
    fn link_state(name: &str) -> (c_int, c_short) {
        let socket = {
            // SAFETY: socket(2) takes no pointers; the result is checked.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            // SAFETY: a new socket nothing else owns.
            unsafe { OwnedFd::from_raw_fd(fd) }
        };
        let mut ifr = ifreq(name);
        // SAFETY: an AF_INET socket; SIOCGIFMTU writes into the ifreq,
        // which outlives the call.
        let rc = unsafe { ioctl_with_mut_ref(&socket, libc::SIOCGIFMTU, &mut ifr) };
        check_ioctl(rc).expect("SIOCGIFMTU");
        // SAFETY: SIOCGIFMTU filled the integer `ifru_mtu`.
        let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
        let mut ifr = ifreq(name);
        // SAFETY: as above, for SIOCGIFFLAGS.
        let rc = unsafe { ioctl_with_mut_ref(&socket, libc::SIOCGIFFLAGS, &mut ifr) };
        check_ioctl(rc).expect("SIOCGIFFLAGS");
        // SAFETY: SIOCGIFFLAGS filled the integer `ifru_flags`.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        (mtu, flags)
    }

    #[test]
    fn names_are_checked() {
        for name in ["", "a\0b", "sixteen-chars-xx"] {
            assert!(
                matches!(Tap::open(name), Err(TapError::InvalidName { .. })),
                "{name:?}"
            );
        }
    }

    /// Opens a real tap, in a private network namespace of a thread of its
    /// own (the test process's namespace is left alone).
    #[test]
    fn open_and_configure_a_tap() {
        assert!(
            Path::new(TUN_DEVICE).exists(),
            "{TUN_DEVICE} is missing: this test needs the tun driver (modprobe tun) \
             and root (it unshares a network namespace)"
        );
        let result = std::thread::spawn(|| {
            // SAFETY: unshare(2) takes no pointers; it only moves this
            // thread (not the process) to a new network namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET) needs root: {}",
                std::io::Error::last_os_error()
            );
            let mut tap = Tap::open("husktest0").expect("opening a tap");
            assert_eq!(tap.name(), "husktest0");
            tap.set_mtu(1400).expect("SIOCSIFMTU");
            tap.set_up().expect("SIOCSIFFLAGS");
            Tap::set_offload(&tap, TUN_F_CSUM).expect("TUNSETOFFLOAD");
            NetBackend::set_offload(&mut tap, 0).expect("TUNSETOFFLOAD 0");

            let cname = std::ffi::CString::new("husktest0").unwrap();
            // SAFETY: `cname` is a NUL-terminated string alive for the call.
            let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
            assert_ne!(index, 0, "husktest0 is not in the namespace");
            let (mtu, flags) = link_state("husktest0");
            assert_eq!(mtu, 1400);
            assert_ne!(flags & c_short::try_from(libc::IFF_UP).unwrap(), 0);

            // Nothing to read yet: the tap is non-blocking.
            let mut buf = [0u8; 128];
            let err = tap.read_frame(&mut buf).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
            // A frame written with its virtio-net header is accepted.
            let mut frame = vec![0u8; VNET_HDR_SIZE];
            frame.extend_from_slice(&[0xff; 6]); // broadcast destination
            frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
            frame.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
            frame.extend_from_slice(&[0u8; 46]);
            assert_eq!(tap.write_frame(&frame).unwrap(), frame.len());

            // A second attach to a busy single-queue tap is refused (EBUSY),
            // and the error names the ioctl.
            let err = Tap::open("husktest0").map(|_| ());
            assert!(
                matches!(
                    err,
                    Err(TapError::Ioctl {
                        op: "TUNSETIFF",
                        ..
                    })
                ),
                "{err:?}"
            );
        })
        .join();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
