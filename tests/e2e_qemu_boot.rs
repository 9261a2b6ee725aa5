//! End to end, in the KVM test host: our guest kernel and husk-init boot under
//! QEMU `-M microvm` on real KVM, run a command from a busybox rootfs on
//! virtio-blk, and report how it ended. This proves the kernel config, the
//! init and the test host before (and beside) husk's own VMM.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use husk::proto::Ending;

const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// QEMU's isa-debug-exit turns a write of `v` into exit status `(v << 1) | 1`.
fn qemu_exit_code_for(ending: Ending) -> i32 {
    let value = i32::try_from(ending.to_port_value()).unwrap();
    ((value << 1) | 1) & 0xff
}

fn boot(args: &[&str]) -> Finished {
    let _census = require_kvm();
    let files = boot_files();
    let child = qemu_microvm(&files, &guest_cmdline(args))
        .spawn()
        .expect("start qemu-system-x86_64");
    let done = wait_bounded(child, BOOT_LIMIT, "QEMU microvm guest");
    eprintln!(
        "guest finished in {:?}; console:\n{}",
        done.elapsed, done.stdout
    );
    done
}

#[test]
fn init_runs_the_command_and_its_exit_code_comes_back() {
    let done = boot(&["sh", "-c", "echo hello from the guest; exit 3"]);
    assert!(
        done.stdout.contains("hello from the guest"),
        "{}",
        done.stdout
    );
    assert_eq!(Ending::parse_report(&done.stdout), Some(Ending::Exited(3)));
    assert_eq!(
        done.status.code(),
        Some(qemu_exit_code_for(Ending::Exited(3)))
    );
}

#[test]
fn a_command_killed_by_a_signal_is_reported_as_such() {
    let done = boot(&["sh", "-c", "kill -9 $$"]);
    assert_eq!(
        Ending::parse_report(&done.stdout),
        Some(Ending::Signaled(9))
    );
}

#[test]
fn the_rootfs_is_writable_and_the_pseudo_filesystems_are_mounted() {
    let done = boot(&[
        "sh",
        "-c",
        "echo persisted > /root/file && cat /root/file && cut -d' ' -f2,3 /proc/mounts",
    ]);
    let out = &done.stdout;
    assert!(out.contains("persisted"), "{out}");
    for mount in [
        "/ ext4",
        "/proc proc",
        "/sys sysfs",
        "/dev devtmpfs",
        "/dev/pts devpts",
        "/tmp tmpfs",
    ] {
        assert!(out.contains(mount), "missing mount {mount}: {out}");
    }
    assert_eq!(Ending::parse_report(out), Some(Ending::Exited(0)));
}

#[test]
fn a_missing_program_is_exit_code_127_not_a_hang() {
    let done = boot(&["/no/such/program"]);
    assert!(
        done.stdout
            .contains("husk-init: error: starting /no/such/program: no such executable"),
        "{}",
        done.stdout
    );
    assert_eq!(
        Ending::parse_report(&done.stdout),
        Some(Ending::Exited(127))
    );
}

#[test]
fn husk_check_passes_inside_the_test_host() {
    let _census = require_kvm();
    let out = Command::new(env!("CARGO_BIN_EXE_husk"))
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "husk check failed inside the test host:\n{text}"
    );
    assert!(text.contains("hardware virtualization"), "{text}");
}
