//! Capabilities of the VMM's threads once their privileged work is done.
//!
//! Capabilities are per thread in Linux, as seccomp filters are: each VMM
//! thread drops its own right before its filter goes on
//! ([`super::seccomp::Filters::apply`]). The bounding and ambient sets go
//! empty but for what the thread keeps, and the effective, permitted and
//! inheritable sets keep only that:
//! - vCPU and supervisor threads keep nothing;
//! - the device thread keeps [`FS_PASSTHROUGH`]: the virtio-fs passthrough
//!   creates files as the guest's caller and sets their owners, modes and
//!   times (virtiofsd's set), and links a file by its descriptor.

/// `CAP_CHOWN`, `CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`, `CAP_FOWNER`,
/// `CAP_FSETID`, `CAP_SETGID`, `CAP_SETUID`, `CAP_MKNOD`, `CAP_SETFCAP`
/// (`linux/capability.h`): what a file server acting for the guest's
/// root needs (`SETFCAP`: a package that sets file capabilities, as
/// iputils' ping does, writes `security.capability`).
///
/// `DAC_READ_SEARCH`: the passthrough makes a hard link with
/// `linkat(fd, "", dir, name, AT_EMPTY_PATH)`, which the kernel refuses
/// (`ENOENT`) without it. Its other use, `open_by_handle_at` (the way out
/// of a chroot that "shocker" took), is not in any VMM thread's seccomp
/// filter, and what it adds to reading is already in `DAC_OVERRIDE`.
pub const FS_PASSTHROUGH: &[u32] = &[0, 1, 2, 3, 4, 6, 7, 27, 31];

/// `CAP_SETPCAP`: needed to drop from the bounding set.
const CAP_SETPCAP: u32 = 8;
/// The highest capability if the kernel does not say
/// (`/proc/sys/kernel/cap_last_cap`; 40 is `CAP_CHECKPOINT_RESTORE`).
const LAST_CAP_FALLBACK: u32 = 40;
/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("reading this thread's capabilities: {0}")]
    Get(#[source] std::io::Error),
    #[error("dropping capability {cap} from the bounding set: {source}")]
    Bounding {
        cap: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("clearing the ambient capabilities: {0}")]
    Ambient(#[source] std::io::Error),
    #[error("setting this thread's capabilities: {0}")]
    Set(#[source] std::io::Error),
}

/// A set of capabilities as a bit mask.
pub fn mask(caps: &[u32]) -> u64 {
    caps.iter()
        .filter(|c| **c < 64)
        .fold(0, |m, c| m | (1u64 << c))
}

/// The highest capability this kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(LAST_CAP_FALLBACK)
}

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's (effective, permitted) sets.
fn current() -> Result<(u64, u64), CapsError> {
    let mut header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes the header and two Data structs, which we own.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(CapsError::Get(std::io::Error::last_os_error()));
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
    ))
}

/// Leaves the calling thread only the capabilities in `keep` (a
/// [`mask`]) that it has: bounding and ambient sets too. Async-signal-safe
/// enough for a forked child (system calls only). A thread without
/// `CAP_SETPCAP` (an unprivileged VMM) keeps its bounding set, which it
/// cannot use anyway.
pub fn limit_thread(keep: u64, last_cap: u32) -> Result<(), CapsError> {
    let (effective, permitted) = current()?;
    if effective & (1u64 << CAP_SETPCAP) != 0 {
        for cap in 0..=last_cap.min(63) {
            if keep & (1u64 << cap) == 0 {
                // SAFETY: prctl with integer arguments only.
                let rc = unsafe {
                    libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0)
                };
                if rc != 0 {
                    let err = std::io::Error::last_os_error();
                    // A capability this kernel does not have.
                    if err.raw_os_error() != Some(libc::EINVAL) {
                        return Err(CapsError::Bounding { cap, source: err });
                    }
                }
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(CapsError::Ambient(err));
        }
    }
    let left = keep & permitted;
    let split = |m: u64| ((m & 0xffff_ffff) as u32, (m >> 32) as u32);
    let (lo, hi) = split(left);
    let data = [
        Data {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        Data {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    let mut header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads the header and two Data structs, which we own.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(CapsError::Set(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_the_passthrough_set() {
        assert_eq!(mask(&[]), 0);
        assert_eq!(mask(&[0, 1]), 0b11);
        assert_eq!(mask(&[64, 99]), 0, "out of range capabilities are ignored");
        let fs = mask(FS_PASSTHROUGH);
        assert_eq!(fs.count_ones(), 9);
        assert_eq!(fs, 0x8800_00df);
        assert_eq!(fs & (1 << 21), 0, "no CAP_SYS_ADMIN");
        assert_eq!(fs & (1 << 12), 0, "no CAP_NET_ADMIN");
        assert!(last_cap() >= 36);
    }

    /// In a forked child: drops to `keep`, then reads its sets back.
    #[test]
    fn a_thread_keeps_only_what_it_asks_for() {
        let last = last_cap();
        let keep = mask(FS_PASSTHROUGH);
        assert!(crate::test_support::in_child(|| {
            let (eff, perm) = limit_thread(keep, last).and_then(|()| current()).unwrap();
            eff & !keep == 0 && perm & !keep == 0
        }));
    }
}
