//! The start-up timeline of a container: named moments, each the host's
//! `CLOCK_MONOTONIC` in nanoseconds, appended as `NAME NS` lines to
//! `<state dir>/timeline` by `create` and `start`, by the VMM process, and by
//! the VMM for the guest (husk-init's writes to the boot timer port,
//! [`crate::proto::BOOT_TIMER_PORT`]). One clock across processes, so
//! `benches/breakdown.py` can tell where a start's time goes. Recording
//! never fails the start: a write that fails is logged at debug level.

use std::io::Write as _;
use std::path::Path;

/// Environment variable naming moments of the timeline (comma-separated,
/// e.g. `create.spawned,vmm.agent`) at which the process that records one
/// kills itself with SIGKILL, right after recording it: the fault injection
/// of husk's reliability tests (docs/reliability.md). Each moment is
/// recorded by one process (`create.*` by create, `vmm.*` and `guest.*` by
/// the VMM), so the variable, inherited by both, hits the one named.
pub const ENV_FAULT_KILL_AT: &str = "HUSK_FAULT_KILL_AT";

/// File name of the timeline in a container's state directory.
pub const TIMELINE_FILE: &str = "timeline";

/// The host's monotonic clock, in nanoseconds.
pub fn now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => {
            let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1_000_000_000).saturating_add(nanos)
        }
        Err(_) => 0,
    }
}

/// Records `event` as happening now in the timeline in `dir`.
pub fn mark(dir: &Path, event: &str) {
    mark_at(dir, event, now_ns());
}

/// Records `event` at `ns` (a [`now_ns`] taken earlier).
pub fn mark_at(dir: &Path, event: &str, ns: u64) {
    match Timeline::open(dir) {
        Ok(t) => t.mark_at(event, ns),
        Err(e) => {
            log::debug!("timeline {}: {e}", dir.display());
            fault_point(event);
        }
    }
}

/// A timeline kept open, for a writer that opens no file later (a vCPU
/// thread under its seccomp filter).
#[derive(Debug)]
pub struct Timeline {
    file: std::fs::File,
}

impl Timeline {
    /// Opens (creates) the timeline of the state directory `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Timeline> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(TIMELINE_FILE))?;
        Ok(Timeline { file })
    }

    /// Records `event` at `ns` (a [`now_ns`] taken earlier).
    pub fn mark_at(&self, event: &str, ns: u64) {
        let line = format!("{event} {ns}\n");
        // One write of a short line to an O_APPEND file: lines from
        // several processes do not interleave.
        if let Err(e) = (&self.file).write_all(line.as_bytes()) {
            log::debug!("timeline: {e}");
        }
        fault_point(event);
    }
}

/// Kills this process at `event` when [`ENV_FAULT_KILL_AT`] names it.
fn fault_point(event: &str) {
    if is_fault_point(event) {
        log::warn!("{ENV_FAULT_KILL_AT}: killing this process at {event}");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        // Pid 1 of a pid namespace (a VMM in its own) ignores the signals
        // it sends itself: end the same way, abruptly, with SIGKILL's code.
        // SAFETY: _exit ends the process; nothing runs after it.
        unsafe { libc::_exit(128 + libc::SIGKILL) };
    }
}

/// Whether `event` is named in [`ENV_FAULT_KILL_AT`] (read once).
fn is_fault_point(event: &str) -> bool {
    static POINTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    POINTS
        .get_or_init(|| fault_points(std::env::var(ENV_FAULT_KILL_AT).ok().as_deref()))
        .iter()
        .any(|p| p == event)
}

fn fault_points(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The timeline in `dir`, in the order recorded; unreadable lines are
/// skipped.
pub fn read(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(dir.join(TIMELINE_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (name, ns) = l.rsplit_once(' ')?;
            Some((name.to_owned(), ns.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_points_are_a_comma_separated_list() {
        assert!(fault_points(None).is_empty());
        assert!(fault_points(Some("")).is_empty());
        assert_eq!(
            fault_points(Some("create.spawned, vmm.agent,,")),
            ["create.spawned", "vmm.agent"]
        );
        // The test process sets no fault points: marking is harmless.
        assert!(!is_fault_point("create.begin"));
    }

    #[test]
    fn marks_are_appended_in_order_on_one_clock() {
        let dir = tempfile::tempdir().unwrap();
        mark(dir.path(), "create.begin");
        mark_at(dir.path(), "guest.init", 42);
        mark(dir.path(), "create.end");
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(TIMELINE_FILE))
            .unwrap()
            .write_all(b"garbage\n")
            .unwrap();
        let t = read(dir.path());
        let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["create.begin", "guest.init", "create.end"]);
        assert_eq!(t[1].1, 42);
        assert!(t[0].1 <= t[2].1 && t[0].1 > 0);
        // A directory that does not exist is not an error.
        mark(Path::new("/nonexistent/dir"), "x");
        assert!(read(Path::new("/nonexistent/dir")).is_empty());
    }
}
