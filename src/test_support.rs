//! Helpers shared by the crate's unit tests.

/// Runs `f` in a forked child and says whether it returned `true` (a panic
/// is `false`). What it changes (mounts, namespaces, capabilities, seccomp
/// filters, credentials) stays in the child. `f` must not need the test
/// harness: the child ends with `_exit`.
pub(crate) fn in_child(f: impl FnOnce() -> bool) -> bool {
    // SAFETY: the child only runs `f` (system calls and file I/O of the
    // test) and exits without returning into the test harness.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(false);
            // SAFETY: `_exit` ends the child at once, without running the
            // parent's destructors twice.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        nix::unistd::ForkResult::Parent { child } => matches!(
            nix::sys::wait::waitpid(child, None).expect("waitpid"),
            nix::sys::wait::WaitStatus::Exited(_, 0)
        ),
    }
}

/// Closes every descriptor above stderr: in an [`in_child`] child, those
/// other test threads held at the fork (a tempdir being removed holds a
/// directory) are not the test's.
pub(crate) fn close_inherited() {
    // SAFETY: close_range(2) with integer arguments, in a child that owns
    // nothing above stderr.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

/// Fails a test that needs root, saying so (CI runs as root).
pub(crate) fn need_root(what: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root ({what}); CI runs as root"
    );
}

/// The words of field `name` (`"Uid:"`) of a `/proc/.../status` text;
/// panics when the field is missing.
pub(crate) fn status_words(status: &str, name: &str) -> Vec<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in the status"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}
