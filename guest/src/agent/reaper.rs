//! The one place that waits for children.
//!
//! Init is PID 1: every orphan in the guest becomes its child and must be
//! reaped, and the agent's sessions want the exit status of the processes they
//! started. A single thread calls `waitpid(-1)` in a loop and hands each status
//! to the callback registered for that pid; statuses of unregistered pids
//! (orphans) are dropped. Nothing else in the process may wait for children
//! (no `std::process::Child::wait`): it would steal statuses from the reaper.
//!
//! Forking goes through [`Reaper::fork_registered`], which holds the reaper's
//! lock across `fork` and the registration, so a child that exits at once
//! cannot be reaped before its callback is in place.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use nix::errno::Errno;

use crate::agent_proto::Event;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// Decodes a raw `waitpid` status; `None` for stops and continues.
    pub fn from_raw(status: libc::c_int) -> Option<ExitStatus> {
        if libc::WIFEXITED(status) {
            Some(ExitStatus::Code(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(ExitStatus::Signal(libc::WTERMSIG(status)))
        } else {
            None
        }
    }

    /// The event that tells the host.
    pub fn event(self) -> Event {
        match self {
            ExitStatus::Code(code) => Event::Exited {
                code: Some(code),
                signal: None,
            },
            ExitStatus::Signal(sig) => Event::Exited {
                code: None,
                signal: Some(sig),
            },
        }
    }
}

/// Called (on the reaper thread, with no lock held) with the child's status.
pub type OnExit = Box<dyn FnOnce(ExitStatus) + Send>;

struct State {
    waiters: HashMap<i32, OnExit>,
    /// Bumped on every fork, so the reaper, idle because it had no children,
    /// knows to wait again.
    forks: u64,
}

/// See the module docs.
pub struct Reaper {
    state: Mutex<State>,
    forked: Condvar,
}

impl Reaper {
    /// Starts the reaper thread. Call once per process.
    pub fn start() -> io::Result<Arc<Reaper>> {
        let reaper = Arc::new(Reaper {
            state: Mutex::new(State {
                waiters: HashMap::new(),
                forks: 0,
            }),
            forked: Condvar::new(),
        });
        let runner = Arc::clone(&reaper);
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || runner.run())?;
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `fork` (which returns the child's pid in the parent) with the
    /// reaper locked, and registers `on_exit` for the new pid before the lock
    /// is released. The child side of `fork` must never return.
    pub fn fork_registered<E>(
        &self,
        fork: impl FnOnce() -> Result<i32, E>,
        on_exit: OnExit,
    ) -> Result<i32, E> {
        let mut state = self.lock();
        let pid = fork()?;
        state.forks = state.forks.wrapping_add(1);
        state.waiters.insert(pid, on_exit);
        drop(state);
        self.forked.notify_all();
        Ok(pid)
    }

    fn run(&self) {
        loop {
            let forks_seen = self.lock().forks;
            let mut raw: libc::c_int = 0;
            // SAFETY: waitpid writes only to `raw`, a live local.
            let pid = unsafe { libc::waitpid(-1, &mut raw, 0) };
            if pid > 0 {
                let Some(status) = ExitStatus::from_raw(raw) else {
                    continue;
                };
                let waiter = self.lock().waiters.remove(&pid);
                if let Some(on_exit) = waiter {
                    on_exit(status);
                }
                continue;
            }
            match Errno::last() {
                Errno::EINTR => {}
                Errno::ECHILD => {
                    // No children: sleep until the next fork. A fork between
                    // reading `forks` and waitpid's ECHILD has bumped it.
                    let mut state = self.lock();
                    while state.forks == forks_seen {
                        state = self.forked.wait(state).unwrap_or_else(|e| e.into_inner());
                    }
                }
                other => {
                    eprintln!(
                        "{} reaper: waitpid failed: {other}",
                        crate::proto::LOG_PREFIX
                    );
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_statuses_decode_like_the_shell_sees_them() {
        // exit(3): code in bits 8..16.
        assert_eq!(ExitStatus::from_raw(3 << 8), Some(ExitStatus::Code(3)));
        // killed by SIGTERM: signal in the low 7 bits.
        assert_eq!(ExitStatus::from_raw(15), Some(ExitStatus::Signal(15)));
        // killed by a real-time signal (nix's waitpid would fail on it).
        assert_eq!(ExitStatus::from_raw(40), Some(ExitStatus::Signal(40)));
        // stopped by SIGSTOP.
        assert_eq!(ExitStatus::from_raw((19 << 8) | 0x7f), None);
    }

    #[test]
    fn events_carry_code_or_signal() {
        assert_eq!(
            ExitStatus::Code(3).event(),
            Event::Exited {
                code: Some(3),
                signal: None
            }
        );
        assert_eq!(
            ExitStatus::Signal(9).event(),
            Event::Exited {
                code: None,
                signal: Some(9)
            }
        );
    }
}
