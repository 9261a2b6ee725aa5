//! The OCI suites' harness: a state root, busybox bundles, and `husk`
//! driven through its runc-compatible command line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

pub const LIMIT: Duration = Duration::from_secs(180);

/// A state root and bundles for one test.
pub struct Env {
    /// First, so that it is dropped (and checks) before the directory goes.
    pub census: census::Census,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let mut census = require_kvm();
        let dir = tempfile::tempdir().unwrap();
        census.watch_root(&dir.path().join("state"));
        Env { census, dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A bundle whose process runs `args`; `edit` adjusts config.json.
    pub fn bundle(
        &self,
        name: &str,
        args: &[&str],
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> PathBuf {
        let b = self.dir.path().join(name);
        busybox_rootfs(&b.join("rootfs"));
        let mut config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "TERM=xterm"],
                "cwd": "/",
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs"},
            "hostname": "husk-test",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
            ],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        });
        edit(&mut config);
        std::fs::write(
            b.join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        b
    }

    pub fn husk(&self, args: &[&str]) -> Finished {
        self.husk_with_env(&[], args)
    }

    /// [`Env::husk`] with extra environment variables.
    pub fn husk_with_env(&self, envs: &[(&str, &Path)], args: &[&str]) -> Finished {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk"));
        cmd.envs(envs.iter().copied())
            .arg("--root")
            .arg(self.root())
            .args(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let done = wait_bounded(cmd.spawn().unwrap(), LIMIT, "husk");
        eprintln!(
            "husk {args:?}: {:?}\nstdout: {}\nstderr: {}",
            done.status, done.stdout, done.stderr
        );
        done
    }

    pub fn state(&self, id: &str) -> serde_json::Value {
        let done = self.husk(&["state", id]);
        assert!(done.status.success(), "{}", done.stderr);
        serde_json::from_str(&done.stdout).unwrap()
    }

    /// Polls `state` until the status is `want`.
    pub fn wait_status(&self, id: &str, want: &str) {
        for _ in 0..300 {
            if self.state(id)["status"] == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("container {id} never became {want}");
    }

    /// Nothing of `id` is left: no state dir, no VMM process.
    pub fn assert_gone(&self, id: &str) {
        assert!(
            !self.root().join(id).exists(),
            "state dir of {id} left behind"
        );
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        let text = String::from_utf8_lossy(&ps.stdout);
        let root = self.root();
        let needle = format!("{} vmm {id}", root.display());
        assert!(
            !text.lines().any(|l| l.contains(&needle)),
            "VMM of {id} still running:\n{text}"
        );
    }
}

pub fn b(p: &Path) -> &str {
    p.to_str().unwrap()
}
