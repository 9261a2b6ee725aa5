//! End to end, in the KVM test host: `husk boot` runs commands in husk's own
//! microVM (our kernel, husk-init, a busybox rootfs on virtio-blk) and exits
//! with their status; bad input fails clearly and leaves nothing behind.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(120);

fn husk() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `husk boot` with a private TMPDIR and checks that the run left
/// nothing in it (per-run rootfs images are removed on every path).
fn boot(extra: &[&str], command: &[&str]) -> Finished {
    let _census = require_kvm();
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = husk();
    cmd.env("TMPDIR", tmp.path())
        .arg("boot")
        .args(extra)
        .arg("--")
        .args(command);
    let done = wait_bounded(cmd.spawn().unwrap(), LIMIT, "husk boot");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "husk boot left files behind: {left:?}");
    eprintln!(
        "husk boot {extra:?} -- {command:?}: {:?} in {:?}\nstdout:\n{}\nstderr:\n{}",
        done.status, done.elapsed, done.stdout, done.stderr
    );
    done
}

#[test]
fn echo_prints_hello() {
    let done = boot(&[], &["/bin/echo", "hello"]);
    assert!(done.status.success());
    assert!(
        done.stdout.lines().any(|l| l.trim_end() == "hello"),
        "{}",
        done.stdout
    );
    assert!(
        !done.stdout.contains("husk-init: exit"),
        "the report line stays off the console"
    );
}

#[test]
fn the_exit_code_comes_back() {
    let done = boot(&[], &["sh", "-c", "exit 3"]);
    assert_eq!(done.status.code(), Some(3));
}

#[test]
fn a_signal_death_is_128_plus_the_signal() {
    let done = boot(&[], &["sh", "-c", "kill -9 $$"]);
    assert_eq!(done.status.code(), Some(137));
    assert!(
        done.stderr.contains("killed by signal 9"),
        "{}",
        done.stderr
    );
}

#[test]
fn a_file_written_to_the_rootfs_reads_back_in_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    busybox_rootfs(dir.path());
    let done = boot(
        &["--rootfs", dir.path().to_str().unwrap()],
        &["sh", "-c", "echo written > /root/f && sync && cat /root/f"],
    );
    assert!(done.status.success());
    assert!(done.stdout.contains("written"), "{}", done.stdout);
}

#[test]
fn two_vcpus_show_in_cpuinfo() {
    let done = boot(
        &["--vcpus", "2"],
        &["sh", "-c", "grep -c ^processor /proc/cpuinfo"],
    );
    assert!(done.status.success());
    assert!(
        done.stdout.lines().any(|l| l.trim() == "2"),
        "{}",
        done.stdout
    );
}

#[test]
fn memory_size_is_what_was_asked() {
    let done = boot(&["--mem", "256"], &["sh", "-c", "head -1 /proc/meminfo"]);
    let kib: u64 = done
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {}", done.stdout));
    assert!(
        (200 * 1024..=256 * 1024).contains(&kib),
        "MemTotal {kib} KiB"
    );
}

#[test]
fn env_and_cwd_reach_the_command() {
    let done = boot(
        &["-e", "GREETING=hi there", "--cwd", "/tmp"],
        &["sh", "-c", "echo \"$GREETING\"; pwd"],
    );
    assert!(done.stdout.contains("hi there"), "{}", done.stdout);
    assert!(
        done.stdout.lines().any(|l| l.trim() == "/tmp"),
        "{}",
        done.stdout
    );
}

#[test]
fn a_kernel_panic_is_reported_with_its_message() {
    // No init in the initramfs and no root= for the kernel: it panics.
    let done = boot(&["--cmdline", "rdinit=/no-such-init"], &["true"]);
    assert_eq!(done.status.code(), Some(125));
    assert!(
        done.stderr
            .contains("the guest kernel panicked: Kernel panic"),
        "{}",
        done.stderr
    );
}

#[test]
fn a_guest_that_never_ends_is_stopped_by_the_timeout() {
    let done = boot(&["--timeout", "3"], &["sleep", "1000"]);
    assert_eq!(done.status.code(), Some(124));
    assert!(
        done.stderr.contains("did not finish within 3 s"),
        "{}",
        done.stderr
    );
    assert!(done.elapsed < Duration::from_secs(60));
}

#[test]
fn a_missing_program_exits_127() {
    let done = boot(&[], &["/no/such/program"]);
    assert_eq!(done.status.code(), Some(127));
    assert!(
        done.stdout.contains("no such executable"),
        "{}",
        done.stdout
    );
}

fn assert_clean_failure(done: &Finished, needle: &str) {
    assert!(!done.status.success());
    let lines: Vec<&str> = done.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line: {}", done.stderr);
    assert!(
        lines[0].starts_with("husk: ") && lines[0].contains(needle),
        "{}",
        done.stderr
    );
}

#[test]
fn bad_kernels_are_refused_clearly() {
    let missing = boot(&["--kernel", "/no/such/vmlinux"], &["true"]);
    assert_clean_failure(&missing, "/no/such/vmlinux does not exist");
    let not_elf = boot(&["--kernel", "/etc/hostname"], &["true"]);
    assert_clean_failure(&not_elf, "neither an ELF vmlinux nor a bzImage");
}

#[test]
fn bad_rootfs_are_refused_clearly_and_leave_no_image() {
    let missing = boot(&["--rootfs", "/no/such/dir"], &["true"]);
    assert_clean_failure(&missing, "rootfs /no/such/dir does not exist");
    let not_image = boot(&["--rootfs", "/etc/hostname"], &["true"]);
    assert_clean_failure(&not_image, "neither a directory nor an ext4 image");
    // A directory rootfs with a bad kernel: the image built for it is removed.
    let dir = tempfile::tempdir().unwrap();
    busybox_rootfs(dir.path());
    let bad_kernel = boot(
        &[
            "--rootfs",
            dir.path().to_str().unwrap(),
            "--kernel",
            "/etc/hostname",
        ],
        &["true"],
    );
    // boot() checked that the image built for the directory was removed.
    assert_clean_failure(&bad_kernel, "neither an ELF vmlinux nor a bzImage");
}

#[test]
fn too_many_vcpus_are_refused_clearly() {
    let done = boot(&["--vcpus", "100000"], &["true"]);
    assert_clean_failure(&done, "100000 vCPUs requested");
    let zero = boot(&["--vcpus", "0"], &["true"]);
    assert_clean_failure(&zero, "at least one vCPU");
}
