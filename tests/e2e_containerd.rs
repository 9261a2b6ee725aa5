//! End to end, in the KVM test host: Debian's containerd with its runc shim
//! (`io.containerd.runc.v2`) using husk as the runc binary, driven by `ctr`.
//! The image is a busybox rootfs imported into podman and saved as an OCI
//! archive (no registry is reachable).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(180);
const IMAGE: &str = "localhost/husk-busybox:latest";

/// A containerd daemon of this test's own (state on a tmpfs, CRI off).
struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
}

impl Containerd {
    fn start() -> Containerd {
        require_kvm();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(d)
            .status()
            .unwrap()
            .success());
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{0}/containerd.sock\"\n",
            d.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (Debian package)");
        let c = Containerd { dir, daemon };
        let start = Instant::now();
        while !c.dir.path().join("containerd.sock").exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "containerd did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c.import_image();
        c
    }

    /// busybox rootfs -> podman import -> OCI archive -> ctr image import.
    fn import_image(&self) {
        let d = self.dir.path();
        let rootfs = d.join("rootfs");
        busybox_rootfs(&rootfs);
        let tar = d.join("rootfs.tar");
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        );
        let podman = |args: &[&str]| {
            let mut cmd = Command::new("podman");
            cmd.arg("--root")
                .arg(d.join("podman"))
                .arg("--runroot")
                .arg(d.join("podman-run"))
                .args(["--storage-driver", "vfs", "--events-backend", "file"])
                .args(args);
            run_ok(&mut cmd);
        };
        podman(&["import", tar.to_str().unwrap(), IMAGE]);
        let archive = d.join("image.tar");
        podman(&[
            "save",
            "--format",
            "oci-archive",
            "-o",
            archive.to_str().unwrap(),
            IMAGE,
        ]);
        let done = self.ctr(&[
            "image",
            "import",
            "--snapshotter",
            "native",
            archive.to_str().unwrap(),
        ]);
        assert!(done.status.success(), "ctr image import: {}", done.stderr);
    }

    fn ctr(&self, args: &[&str]) -> Finished {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["-n", "husk-e2e"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let done = wait_bounded(cmd.spawn().unwrap(), LIMIT, "ctr");
        eprintln!(
            "ctr {args:?}: {:?}\nstdout: {}\nstderr: {}",
            done.status, done.stdout, done.stderr
        );
        done
    }

    /// `ctr run` with the runc shim and husk as its runc binary.
    fn run(&self, extra: &[&str], id: &str, cmd: &[&str]) -> Finished {
        let husk = husk();
        let mut args = vec![
            "run",
            "--snapshotter",
            "native",
            "--runtime",
            "io.containerd.runc.v2",
            "--runc-binary",
            husk.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, id]);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// No husk VMM is left running.
    fn assert_no_vm(&self) {
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        let text = String::from_utf8_lossy(&ps.stdout);
        let husk = husk();
        let vmms: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&*husk.to_string_lossy()) && l.contains(" vmm "))
            .collect();
        assert!(vmms.is_empty(), "husk VMMs left: {vmms:?}");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn husk() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_husk"))
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tasks(c: &Containerd) -> String {
    c.ctr(&["task", "ls"]).stdout
}

#[test]
fn ctr_with_the_runc_shim_runs_execs_kills_and_deletes() {
    let c = Containerd::start();
    let done = c.run(&["--rm"], "hello", &["echo", "hello from husk"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "hello from husk\n");

    let done = c.run(&["--rm"], "seven", &["sh", "-c", "exit 7"]);
    assert_eq!(done.status.code(), Some(7), "{}", done.stderr);

    let done = c.run(&["-d"], "bg", &["sleep", "1000"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(tasks(&c)
        .lines()
        .any(|l| l.starts_with("bg") && l.contains("RUNNING")));
    let done = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "bg",
        "sh",
        "-c",
        "echo in exec; exit 3",
    ]);
    assert_eq!(done.status.code(), Some(3), "{}", done.stderr);
    assert_eq!(done.stdout, "in exec\n");

    assert!(c
        .ctr(&["task", "kill", "-s", "KILL", "bg"])
        .status
        .success());
    let start = Instant::now();
    while !tasks(&c)
        .lines()
        .any(|l| l.starts_with("bg") && l.contains("STOPPED"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "bg never stopped"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(c.ctr(&["task", "delete", "bg"]).status.success());
    assert!(c.ctr(&["container", "delete", "bg"]).status.success());
    c.assert_no_vm();
    let left = c.ctr(&["container", "ls", "-q"]).stdout;
    assert_eq!(left.trim(), "", "containers left: {left}");
}
