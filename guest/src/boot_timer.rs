//! Writes a [`BootEvent`] to the VMM's boot timer port
//! ([`proto::BOOT_TIMER_PORT`]), which records when it arrived.
//!
//! Port access is granted to the calling thread for the one write and taken
//! back right after (`ioperm` is per thread and inherited by `fork`), so no
//! process started later (the container's) can reach the port. Without the
//! permission (not root, not x86) nothing is written.

use crate::proto::{self, BootEvent};

/// Reports `event` to the VMM.
pub fn mark(event: BootEvent) {
    #[cfg(target_arch = "x86_64")]
    {
        let port = u64::from(proto::BOOT_TIMER_PORT);
        // SAFETY: ioperm only changes this thread's I/O permission bitmap.
        if unsafe { libc::ioperm(port, 1, 1) } != 0 {
            return;
        }
        // SAFETY: the port was granted above; `out` to it touches no memory
        // of this process, the VMM records the write.
        unsafe {
            std::arch::asm!("out dx, al", in("dx") proto::BOOT_TIMER_PORT, in("al") event as u8,
                options(nomem, nostack, preserves_flags));
        }
        // SAFETY: as above; this takes the permission back.
        unsafe { libc::ioperm(port, 1, 0) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (event, proto::BOOT_TIMER_PORT);
}
