//! The memory a VMM's fs device and its fs server share: one request and
//! its answer at a time, in a sealed memfd both map, with a Unix stream
//! beside it as the doorbell.
//!
//! Each side copies into the channel once (the device from the guest's
//! chain, the server's FUSE code writes its answer there directly) and
//! reads from it once; no bytes of a request go through the kernel. A side
//! waiting for the other first *spins* for a short while ([`spin_budget`]:
//! most requests are answered in microseconds, and a sleeping thread takes
//! longer than that to wake; [`Spinner`] shortens the spin where it does
//! not pay), then says so in its *idle* word and sleeps on the stream; the other side writes one byte (a *kick*) only when it finds
//! that word set. A side that ends closes its stream: the other's read
//! returns 0, never a hang.
//!
//! The waiter stores its idle word and then loads the condition; the
//! poster stores the condition and then loads the idle word, all
//! sequentially consistent: one of them always sees the other, so no
//! wake-up is lost. A kick that turns out needless is one stale byte on the
//! stream; a waiter woken by one looks again and goes back to sleep.
//!
//! Layout (little endian `u32` words, each side's words on a cache line of
//! their own):
//!
//! | offset | word | written by |
//! |---|---|---|
//! | 0 | request sequence number | device |
//! | 4 | kind ([`super::backend`]'s `KIND_*`) | device |
//! | 8 | request length | device |
//! | 12 | room for the answer | device |
//! | 16 | server idle (1: asleep on the stream) | server |
//! | 64 | answer sequence number (= the request's when answered) | server |
//! | 68 | status (`STATUS_*`) | server |
//! | 72 | answer length | server |
//! | 76 | device idle | device |
//! | [`REQUEST`] | the request, up to [`MAX_REQUEST`] bytes | device |
//! | [`REPLY`] | the answer, up to [`MAX_REPLY`] bytes | server |
//!
//! Neither side trusts what the other wrote: every word is read once and
//! checked against its bound, and bytes the other side changes while they
//! are read can only make its own request or answer wrong (fuse-backend-rs
//! reads requests as it reads guest memory that a guest's other vCPUs can
//! change). The memfd is sealed against shrinking (`F_SEAL_SHRINK`, checked
//! by the server): a VMM cannot make the server's mapping fault.

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

use super::backend::{MAX_REPLY, MAX_REQUEST};

/// Channel pages.
pub const PAGE: usize = 0x1000;

/// `n` rounded up to whole pages.
pub const fn round_up(n: usize) -> usize {
    n.div_ceil(PAGE) * PAGE
}

/// Control words (offsets in the channel).
pub const REQ_SEQ: u64 = 0;
pub const KIND: u64 = 4;
pub const REQ_LEN: u64 = 8;
pub const REQ_CAP: u64 = 12;
pub const SERVER_IDLE: u64 = 16;
pub const REP_SEQ: u64 = 64;
pub const STATUS: u64 = 68;
pub const REP_LEN: u64 = 72;
pub const VMM_IDLE: u64 = 76;
/// Where the request starts.
pub const REQUEST: u64 = PAGE as u64;
/// Where the answer starts.
pub const REPLY: u64 = REQUEST + round_up(MAX_REQUEST) as u64;
/// The channel's size in bytes.
pub const SIZE: usize = REPLY as usize + round_up(MAX_REPLY);

/// How long a side spins before it sleeps, when more than one CPU is
/// there to run the other side meanwhile.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);
/// The most `HUSK_FS_SPIN_US` may ask for.
const MAX_SPIN: Duration = Duration::from_millis(10);
/// Looks at the other side's word between two looks at the clock.
const SPINS_PER_LOOK: u32 = 64;

/// How long to spin: `HUSK_FS_SPIN_US` (microseconds, at most 10 000; 0
/// never spins) when set, else [`DEFAULT_SPIN`] where this process may run
/// on more than one CPU and none on one CPU (where spinning would only keep
/// the other side from running). Call before the process is confined: it
/// reads the CPU affinity and cgroup limits.
pub fn spin_budget() -> Duration {
    if let Some(us) = std::env::var("HUSK_FS_SPIN_US")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Duration::from_micros(us).min(MAX_SPIN);
    }
    match std::thread::available_parallelism() {
        Ok(n) if n.get() > 1 => DEFAULT_SPIN,
        _ => Duration::ZERO,
    }
}

/// A new channel: a zeroed memfd of [`SIZE`] bytes that can no longer
/// shrink or grow, closed on exec.
pub fn create() -> io::Result<File> {
    let fd = memfd_create(
        c"husk-fs-channel",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    let file = File::from(fd);
    file.set_len(SIZE as u64)?;
    nix::fcntl::fcntl(
        file.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(file)
}

/// Checks that `file` is a channel as [`create`] makes it: a regular file
/// of [`SIZE`] bytes sealed against shrinking (the server maps it; a file
/// that could shrink under the mapping would make the server fault).
pub fn check(file: &File) -> Result<(), String> {
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.len() != SIZE as u64 {
        return Err(format!(
            "not a channel: a regular file of {SIZE} bytes was expected, found {} bytes{}",
            meta.len(),
            if meta.is_file() {
                ""
            } else {
                " (not a regular file)"
            }
        ));
    }
    // A file that cannot be sealed at all (not a memfd) has no seals.
    let seals = match nix::fcntl::fcntl(file.as_raw_fd(), FcntlArg::F_GET_SEALS) {
        Ok(bits) => SealFlag::from_bits_truncate(bits),
        Err(nix::errno::Errno::EINVAL) => SealFlag::empty(),
        Err(e) => return Err(format!("its seals: {e}")),
    };
    if !seals.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL) {
        return Err("the channel is not sealed against shrinking".into());
    }
    Ok(())
}

/// The control words of a channel mapped at some address of a memory.
pub trait Words {
    /// The word at `at` (an offset in the channel).
    fn word(&self, at: u64) -> io::Result<u32>;
    /// Stores `value` at `at`.
    fn set_word(&self, at: u64, value: u32) -> io::Result<()>;
}

/// A channel mapped at offset `.1` of the memory `.0`.
pub struct At<'a, M>(pub &'a M, pub u64);

impl Words for At<'_, vm_memory::GuestMemoryMmap> {
    fn word(&self, at: u64) -> io::Result<u32> {
        vm_memory::Bytes::load(
            self.0,
            vm_memory::GuestAddress(self.1 + at),
            Ordering::SeqCst,
        )
        .map_err(io::Error::other)
    }

    fn set_word(&self, at: u64, value: u32) -> io::Result<()> {
        vm_memory::Bytes::store(
            self.0,
            value,
            vm_memory::GuestAddress(self.1 + at),
            Ordering::SeqCst,
        )
        .map_err(io::Error::other)
    }
}

impl Words for At<'_, vm_memory_017::GuestMemoryMmap> {
    fn word(&self, at: u64) -> io::Result<u32> {
        vm_memory_017::Bytes::load(
            self.0,
            vm_memory_017::GuestAddress(self.1 + at),
            Ordering::SeqCst,
        )
        .map_err(io::Error::other)
    }

    fn set_word(&self, at: u64, value: u32) -> io::Result<()> {
        vm_memory_017::Bytes::store(
            self.0,
            value,
            vm_memory_017::GuestAddress(self.1 + at),
            Ordering::SeqCst,
        )
        .map_err(io::Error::other)
    }
}

/// Maps a channel for the device side (vm-memory 0.18, at address 0).
pub fn map(file: File) -> io::Result<vm_memory::GuestMemoryMmap> {
    vm_memory::GuestMemoryMmap::<()>::from_ranges_with_files(&[(
        vm_memory::GuestAddress(0),
        SIZE,
        Some(vm_memory::FileOffset::new(file, 0)),
    )])
    .map_err(io::Error::other)
}

/// The other side closed its end of the stream (a close with kicks still
/// unread there resets the connection rather than ending it).
fn hung_up(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// Wakes the other side (see the module docs). `Ok(false)`: it is gone.
pub fn kick(stream: &mut UnixStream) -> io::Result<bool> {
    match stream.write_all(&[1]) {
        Ok(()) => Ok(true),
        Err(e) if hung_up(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// How long one side spins before it sleeps, adapted to how its waits go
/// (as an adaptive mutex does): a wait that ends while spinning keeps (or
/// doubles back to) the full budget; one that had to sleep halves the
/// next spin, down to none. At none, every [`PROBE_EVERY`]th wait spins the
/// full budget once more, to notice when answers come quickly again. Where
/// the other side is slow, or shares this side's CPU (an oversubscribed
/// host, an emulated one), spinning fades out; where answers come in
/// microseconds it stays.
#[derive(Debug, Clone)]
pub struct Spinner {
    budget: Duration,
    now: Duration,
    waits: u32,
}

/// A spinner at zero tries the full budget once in so many waits.
pub const PROBE_EVERY: u32 = 64;

impl Spinner {
    /// A spinner whose spins last at most `budget` ([`spin_budget`]).
    pub fn new(budget: Duration) -> Spinner {
        Spinner {
            budget,
            now: budget,
            waits: 0,
        }
    }

    /// How long the next wait spins.
    fn next(&mut self) -> Duration {
        self.waits = self.waits.wrapping_add(1);
        if self.now.is_zero() && self.waits.is_multiple_of(PROBE_EVERY) {
            self.budget
        } else {
            self.now
        }
    }

    /// A wait that spun for `spun` ended while spinning (`true`) or had to
    /// sleep.
    fn record(&mut self, spun: Duration, caught: bool) {
        if spun.is_zero() {
            return;
        }
        self.now = if caught {
            self.budget
        } else {
            let half = self.now / 2;
            if half < Duration::from_micros(1) {
                Duration::ZERO
            } else {
                half
            }
        };
    }

    /// The spin the next wait would use before probing (for tests).
    pub fn current(&self) -> Duration {
        self.now
    }
}

/// Waits until `done` holds: spins for at most what `spinner` allows, then
/// sets the word at `idle`, looks once more and sleeps on `stream` until
/// kicked, looking again at each kick. `Ok(false)`: the other side closed
/// the stream.
pub fn wait_for<W: Words>(
    words: &W,
    stream: &mut UnixStream,
    idle: u64,
    spinner: &mut Spinner,
    done: impl Fn(&W) -> io::Result<bool>,
) -> io::Result<bool> {
    if done(words)? {
        return Ok(true);
    }
    let spin = spinner.next();
    if !spin.is_zero() {
        let started = Instant::now();
        'spinning: loop {
            for _ in 0..SPINS_PER_LOOK {
                std::hint::spin_loop();
                if done(words)? {
                    spinner.record(spin, true);
                    return Ok(true);
                }
            }
            if started.elapsed() >= spin {
                break 'spinning;
            }
        }
        spinner.record(spin, false);
    }
    let mut kicks = [0u8; 64];
    loop {
        words.set_word(idle, 1)?;
        if done(words)? {
            words.set_word(idle, 0)?;
            return Ok(true);
        }
        let n = match stream.read(&mut kicks) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if hung_up(&e) => 0,
            Err(e) => return Err(e),
        };
        words.set_word(idle, 0)?;
        if n == 0 {
            return Ok(false);
        }
        if done(words)? {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_is_sealed_and_checked() {
        let file = create().unwrap();
        assert_eq!(file.metadata().unwrap().len(), SIZE as u64);
        check(&file).unwrap();
        // It cannot shrink or grow under a mapping.
        assert!(file.set_len(PAGE as u64).is_err());
        assert!(file.set_len(SIZE as u64 * 2).is_err());
        // Something else is refused by name.
        let other = tempfile::tempfile().unwrap();
        other.set_len(SIZE as u64).unwrap();
        assert!(check(&other).unwrap_err().contains("not sealed"));
        let short = tempfile::tempfile().unwrap();
        assert!(check(&short).unwrap_err().contains("not a channel"));
    }

    #[test]
    fn both_sides_see_the_same_words() {
        let file = create().unwrap();
        let a = map(file.try_clone().unwrap()).unwrap();
        let b = map(file).unwrap();
        At(&a, 0).set_word(REQ_LEN, 77).unwrap();
        assert_eq!(At(&b, 0).word(REQ_LEN).unwrap(), 77);
        // Outside the channel is an error, not a fault.
        assert!(At(&a, 0).word(SIZE as u64).is_err());
    }

    #[test]
    fn spinning_fades_where_it_fails_and_comes_back_where_it_works() {
        let full = Duration::from_micros(64);
        let mut s = Spinner::new(full);
        assert_eq!(s.next(), full);
        // Waits that had to sleep halve the spin, down to none.
        for _ in 0..8 {
            let spin = s.next();
            s.record(spin, false);
        }
        assert_eq!(s.current(), Duration::ZERO);
        // At none, a wait in every PROBE_EVERY spins the full budget.
        let spins: Vec<Duration> = (0..PROBE_EVERY).map(|_| s.next()).collect();
        assert_eq!(spins.iter().filter(|d| **d == full).count(), 1);
        assert!(spins.iter().all(|d| d.is_zero() || *d == full));
        // A probe that catches its answer restores the full budget.
        s.record(full, true);
        assert_eq!(s.current(), full);
        // A wait that did not spin teaches nothing.
        let mut off = Spinner::new(Duration::ZERO);
        off.record(Duration::ZERO, false);
        assert_eq!(off.next(), Duration::ZERO);
    }

    #[test]
    fn a_waiter_wakes_at_a_kick_and_at_a_hang_up_with_or_without_spinning() {
        for spin in [Duration::ZERO, Duration::from_micros(200)] {
            let file = create().unwrap();
            let ours = map(file.try_clone().unwrap()).unwrap();
            let theirs = map(file).unwrap();
            let (mut a, mut b) = UnixStream::pair().unwrap();
            let poster = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let w = At(&theirs, 0);
                w.set_word(REP_SEQ, 1).unwrap();
                if w.word(VMM_IDLE).unwrap() == 1 {
                    assert!(kick(&mut b).unwrap());
                }
                // A needless kick is harmless.
                assert!(kick(&mut b).unwrap());
                std::thread::sleep(Duration::from_millis(20));
                w.set_word(REP_SEQ, 2).unwrap();
                assert!(kick(&mut b).unwrap());
                b
            });
            let w = At(&ours, 0);
            let mut spinner = Spinner::new(spin);
            let seq = |n: u32| move |w: &At<'_, _>| Ok(w.word(REP_SEQ)? == n);
            assert!(wait_for(&w, &mut a, VMM_IDLE, &mut spinner, seq(1)).unwrap());
            assert!(wait_for(&w, &mut a, VMM_IDLE, &mut spinner, seq(2)).unwrap());
            assert_eq!(w.word(VMM_IDLE).unwrap(), 0);
            drop(poster.join().unwrap());
            // Never done, and the other side is gone.
            assert!(!wait_for(&w, &mut a, VMM_IDLE, &mut spinner, seq(3)).unwrap());
            // Kicking a side that is gone says so.
            assert!(!kick(&mut a).unwrap());
        }
    }
}
