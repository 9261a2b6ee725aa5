//! What the engine suites (podman, containerd, Docker) share: a work
//! directory on a tmpfs of its own, the test image's rootfs tarball, and the
//! check that no husk VMM is left.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// How long VMMs may take to go after an engine reported a container gone
/// (`--rm` returns before the shim's delete finished).
const VMM_GONE_WAIT: Duration = Duration::from_secs(30);

/// A temporary directory with a tmpfs mounted on it, so an engine's storage
/// is shared with nothing and goes at once; the owner unmounts it (`umount
/// -l`) before the directory is removed.
pub fn tmpfs_workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs on {}", dir.path().display());
    dir
}

/// Writes the test image's rootfs (busybox, and `/www/index.html` saying
/// `page`) as a tarball at `tar`, for `podman import` / `docker import`.
pub fn image_tarball(work: &Path, tar: &Path, page: &str) {
    let rootfs = work.join("rootfs");
    busybox_rootfs(&rootfs);
    std::fs::create_dir_all(rootfs.join("www")).unwrap();
    std::fs::write(rootfs.join("www/index.html"), page).unwrap();
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar of {}", rootfs.display());
}

/// How long an engine daemon may take to open its socket.
const DAEMON_START_WAIT: Duration = Duration::from_secs(60);

/// Waits until `daemon` has created its socket at `socket`.
pub fn wait_for_socket(socket: &Path, daemon: &str) {
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < DAEMON_START_WAIT,
            "{daemon} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Command lines of running processes that `matches`.
pub fn processes(matches: impl Fn(&str) -> bool) -> Vec<String> {
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| matches(l))
        .map(str::to_owned)
        .collect()
}

/// Fails unless, within a short wait, no husk VMM process whose command line
/// also `matches` runs.
pub fn assert_no_vmm(matches: impl Fn(&str) -> bool) {
    let start = Instant::now();
    loop {
        let vmms = processes(|l| l.contains(" vmm ") && matches(l));
        if vmms.is_empty() {
            return;
        }
        assert!(start.elapsed() < VMM_GONE_WAIT, "husk VMMs left: {vmms:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What a husk state root holds for containers: its entries and the lock
/// files in its lock directory (the directory itself is part of the root).
pub fn state_entries(root: &Path) -> Vec<std::path::PathBuf> {
    let entries = |dir: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let locks = root.join(husk::runtime::state::LOCKS_DIR);
    let mut left = entries(root);
    left.retain(|p| *p != locks);
    left.extend(entries(&locks));
    left
}

/// Fails unless, within a short wait, no `containerd-shim-husk-v2` process
/// is left.
pub fn assert_no_husk_shim() {
    let start = Instant::now();
    loop {
        let shims = processes(|l| l.contains("containerd-shim-husk-v2"));
        if shims.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "shims left: {shims:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The last `n` lines of a log file (empty if it cannot be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The test image ([`image_tarball`]: busybox, `/www/index.html` saying
/// `page`; each of `changes` a podman `--change`) as an OCI archive named
/// `image`, made by a podman of its own under `work`; the archive's path
/// (for `ctr image import`).
pub fn oci_archive(work: &Path, image: &str, page: &str, changes: &[&str]) -> std::path::PathBuf {
    let tar = work.join("rootfs.tar");
    image_tarball(work, &tar, page);
    let podman = |args: &[&str]| {
        let out = Command::new("podman")
            .arg("--root")
            .arg(work.join("podman"))
            .arg("--runroot")
            .arg(work.join("podman-run"))
            .args(["--storage-driver", "vfs", "--events-backend", "file"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut import = vec!["import"];
    for c in changes {
        import.extend(["--change", c]);
    }
    import.extend([tar.to_str().unwrap(), image]);
    podman(&import);
    let archive = work.join("image.tar");
    podman(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        archive.to_str().unwrap(),
        image,
    ]);
    archive
}
