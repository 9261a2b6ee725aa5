//! Applies [`HostSync`] at create: the host's wall clock, and host entropy
//! credited to the kernel's pool followed by a reseed of its generator.
//! A VM restored from a template snapshot needs both (it wakes with the
//! template's clock and random state); a cold-booted one gets them too, so
//! both paths behave the same.

use std::os::fd::AsRawFd as _;

use nix::errno::Errno;

use crate::agent_proto::HostSync;

/// `RNDADDENTROPY` (`linux/random.h`: `_IOW('R', 0x03, int[2])`): mixes
/// bytes into the input pool and credits them as entropy.
const RNDADDENTROPY: u32 = 0x4008_5203;
/// `RNDRESEEDCRNG` (`_IO('R', 0x07)`): reseeds the generator from the pool
/// now rather than at its next scheduled reseed.
const RNDRESEEDCRNG: u32 = 0x5207;

/// Applies what the host sent; returns a line per step that failed (the
/// container still starts: the agent logs them).
pub fn apply(sync: &HostSync) -> Vec<String> {
    let mut problems = Vec::new();
    if sync.realtime_ns != 0 {
        if let Err(e) = set_realtime(sync.realtime_ns) {
            problems.push(format!("agent: setting the clock from the host: {e}"));
        }
    }
    if !sync.entropy.is_empty() {
        if let Err(e) = add_entropy(&sync.entropy) {
            problems.push(format!("agent: adding host entropy: {e}"));
        }
    }
    problems
}

fn set_realtime(ns: u64) -> Result<(), Errno> {
    let ts = nix::sys::time::TimeSpec::from_duration(std::time::Duration::from_nanos(ns));
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
}

/// The `struct rand_pool_info` `RNDADDENTROPY` reads: the entropy credited
/// in bits, the buffer's size in bytes, then the bytes.
pub fn pool_info(bytes: &[u8]) -> Vec<u8> {
    let size = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
    let bits = size.saturating_mul(8);
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&size.to_ne_bytes());
    info.extend_from_slice(&bytes[..usize::try_from(size).unwrap_or(0)]);
    info
}

fn add_entropy(bytes: &[u8]) -> Result<(), Errno> {
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(crate::agent::spawn::errno_of)?;
    let info = pool_info(bytes);
    // SAFETY: `info` is a complete rand_pool_info (header and as many bytes
    // as it says) that lives across the call; the kernel only reads it.
    Errno::result(unsafe {
        libc::ioctl(
            random.as_raw_fd(),
            RNDADDENTROPY as libc::Ioctl,
            info.as_ptr(),
        )
    })?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    Errno::result(unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as libc::Ioctl) })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_info_header_counts_bits_then_bytes() {
        let info = pool_info(&[1, 2, 3, 4]);
        assert_eq!(&info[..4], &32i32.to_ne_bytes());
        assert_eq!(&info[4..8], &4i32.to_ne_bytes());
        assert_eq!(&info[8..], &[1, 2, 3, 4]);
    }

    #[test]
    fn nothing_to_apply_is_no_problem() {
        assert!(apply(&HostSync::default()).is_empty());
    }
}
