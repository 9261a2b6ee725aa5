//! End to end, in the KVM test host: Debian's Docker (`docker.io`: dockerd
//! with its own containerd and the runc shim) with husk registered through
//! `dockerd --add-runtime husk=...`, on an image the test imports from a
//! busybox rootfs tarball (no registry is reachable). Docker's default bridge
//! network plumbs a container's network namespace from a prestart hook
//! through the container's pid: the VMM's own namespace.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(180);
const IMAGE: &str = "husk-busybox";
/// Docker's own client from the Debian package (another `docker` may come
/// first on `PATH`).
const DOCKER: &str = "/usr/bin/docker";
/// The host port the web test publishes.
const WEB_PORT: u16 = 18092;

/// A dockerd of this test's own: data, exec root and socket on a tmpfs.
struct Docker {
    /// First: it checks for leaks after the teardown, before the directory goes.
    _census: census::Census,
    dir: tempfile::TempDir,
    daemon: Child,
}

impl Docker {
    fn start() -> Docker {
        let census = require_kvm();
        let dir = engines::tmpfs_workdir();
        let d = dir.path();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let daemon = Command::new("dockerd")
            .arg("--data-root")
            .arg(d.join("data"))
            // Deep on purpose: husk's control socket must still fit.
            .arg("--exec-root")
            .arg(d.join("exec-root-of-a-test-daemon"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .args(["--storage-driver", "vfs"])
            .arg("--add-runtime")
            .arg(format!("husk={}", husk().display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd (Debian package docker.io)");
        let docker = Docker {
            _census: census,
            dir,
            daemon,
        };
        engines::wait_for_socket(&docker.dir.path().join("docker.sock"), "dockerd");
        docker.import_image();
        docker
    }

    fn import_image(&self) {
        let tar = self.dir.path().join("rootfs.tar");
        engines::image_tarball(self.dir.path(), &tar, "served through docker\n");
        // The daemon may take a moment before it answers.
        let start = Instant::now();
        loop {
            let done = self.docker(&["import", tar.to_str().unwrap(), IMAGE]);
            if done.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "docker import: {}",
                done.stderr
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn docker(&self, args: &[&str]) -> Finished {
        let mut cmd = Command::new(DOCKER);
        cmd.env(
            "DOCKER_HOST",
            format!("unix://{}", self.dir.path().join("docker.sock").display()),
        )
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let done = wait_bounded(cmd.spawn().unwrap(), LIMIT, "docker");
        eprintln!(
            "docker {args:?}: {:?}\nstdout: {}\nstderr: {}",
            done.status, done.stdout, done.stderr
        );
        done
    }

    /// `docker run --runtime husk EXTRA IMAGE CMD...`.
    fn run(&self, extra: &[&str], cmd: &[&str]) -> Finished {
        let mut args = vec!["run", "--runtime", "husk"];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        self.docker(&args)
    }

    /// No husk VMM is left running and no container state under the exec
    /// root (`runtime-*/moby`: the state root the runc shim gives husk).
    fn assert_nothing_left(&self) {
        engines::assert_no_vmm(|l| l.starts_with(&*husk().to_string_lossy()));
        let exec_root = self.dir.path().join("exec-root-of-a-test-daemon");
        let left: Vec<_> = std::fs::read_dir(&exec_root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("runtime-"))
            .flat_map(|e| engines::state_entries(&e.path().join("moby")))
            .collect();
        assert!(left.is_empty(), "container state left: {left:?}");
    }

    fn dump_log(&self) {
        let text = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!(
            "--- dockerd.log\n{}",
            lines[lines.len().saturating_sub(60)..].join("\n")
        );
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_log();
        }
        let _ = self.docker(&["rm", "-f", "web", "bg"]);
        let _ = nix_kill(self.daemon.id());
        let start = Instant::now();
        while self.daemon.try_wait().ok().flatten().is_none()
            && start.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // dockerd keeps its bridge across restarts; this daemon is gone.
        let _ = Command::new("ip")
            .args(["link", "delete", "docker0"])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// SIGTERM, so dockerd stops its containerd and removes its bridge rules.
fn nix_kill(pid: u32) -> std::io::Result<()> {
    let st = Command::new("kill").arg(pid.to_string()).status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

fn husk() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_husk"))
}

#[test]
fn docker_runs_husk_containers_with_its_bridge_network() {
    let d = Docker::start();

    let done = d.run(
        &["--rm", "--network", "none"],
        &["echo", "hello through docker"],
    );
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "hello through docker\n");

    let done = d.run(&["--rm"], &["sh", "-c", "echo err >&2; exit 7"]);
    assert_eq!(done.status.code(), Some(7), "{}", done.stderr);
    assert!(done.stderr.contains("err"), "{}", done.stderr);

    let done = d.run(&["--rm", "-t"], &["sh", "-c", "test -t 1 && echo on-a-tty"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(done.stdout.contains("on-a-tty"), "{:?}", done.stdout);

    let done = d.run(
        &["--rm", "-e", "GREETING=hi", "-w", "/tmp", "-u", "1000:1000"],
        &["sh", "-c", "echo $GREETING $(pwd) $(id -u):$(id -g)"],
    );
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "hi /tmp 1000:1000\n");
    d.assert_nothing_left();

    // The default bridge network and a published port.
    let port = format!("{WEB_PORT}:80");
    let done = d.run(
        &["-d", "--name", "web", "-p", &port],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    assert!(done.status.success(), "{}", done.stderr);
    let page = fetch(None, &format!("http://127.0.0.1:{WEB_PORT}/"));
    assert_eq!(page, "served through docker\n");
    let done = d.docker(&["exec", "web", "sh", "-c", "ip -4 addr show eth0; exit 3"]);
    assert_eq!(done.status.code(), Some(3), "{}", done.stderr);
    assert!(done.stdout.contains("inet 172."), "{}", done.stdout);
    let logs = d.docker(&["logs", "web"]);
    assert!(logs.status.success(), "{}", logs.stderr);
    let done = d.docker(&["stop", "-t", "3", "web"]);
    assert!(done.status.success(), "{}", done.stderr);
    // httpd is pid 1 of its namespace and has no TERM handler: as under
    // runc, TERM is ignored and docker kills it after the timeout.
    let state = d.docker(&["inspect", "-f", "{{.State.ExitCode}}", "web"]);
    assert_eq!(state.stdout.trim(), "137", "{}", state.stderr);
    assert!(d.docker(&["rm", "web"]).status.success());

    // pause and unpause (containerd's runc shim runs `husk pause`), then
    // kill and wait.
    let done = d.run(&["-d", "--name", "bg"], &["sleep", "1000"]);
    assert!(done.status.success(), "{}", done.stderr);
    let status = |d: &Docker| {
        let done = d.docker(&["inspect", "-f", "{{.State.Status}}", "bg"]);
        done.stdout.trim().to_owned()
    };
    let done = d.docker(&["pause", "bg"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(status(&d), "paused");
    let done = d.docker(&["unpause", "bg"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(status(&d), "running");
    let done = d.docker(&["exec", "bg", "true"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(d.docker(&["kill", "bg"]).status.success());
    let done = d.docker(&["wait", "bg"]);
    assert_eq!(done.stdout.trim(), "137", "{}", done.stderr);
    assert!(d.docker(&["rm", "bg"]).status.success());
    d.assert_nothing_left();

    // A directory volume: shared with the host over virtio-fs.
    let vol = d.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("in"), "from the host\n").unwrap();
    let mount = format!("{}:/data", vol.display());
    let done = d.run(
        &["--rm", "-v", &mount],
        &["sh", "-c", "cat /data/in && echo from docker > /data/out"],
    );
    assert!(done.status.success(), "{}", done.stderr);
    assert!(done.stdout.contains("from the host"), "{}", done.stdout);
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "from docker\n"
    );
    // Read-only: the write is refused inside, the host file unchanged.
    let ro = format!("{}:/data:ro", vol.display());
    let done = d.run(
        &["--rm", "-v", &ro],
        &["sh", "-c", "cat /data/out; echo x > /data/out"],
    );
    assert!(!done.status.success());
    assert!(done.stdout.contains("from docker"), "{}", done.stdout);
    assert!(
        done.stderr.contains("Read-only file system"),
        "{}",
        done.stderr
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "from docker\n"
    );
    // A named volume keeps what one container wrote for the next.
    let done = d.run(
        &["--rm", "-v", "husk-vol:/v"],
        &["sh", "-c", "echo kept > /v/f"],
    );
    assert!(done.status.success(), "{}", done.stderr);
    let done = d.run(&["--rm", "-v", "husk-vol:/v"], &["cat", "/v/f"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "kept\n");
    assert!(d.docker(&["volume", "rm", "husk-vol"]).status.success());

    // The container's own files: docker cp both ways on a running
    // container, kept across stop/start, in docker diff and commit.
    let done = d.run(
        &["-d", "--name", "keep", "--network", "none"],
        &["sh", "-c", "echo run >> /runs; exec sleep 1000"],
    );
    assert!(done.status.success(), "{}", done.stderr);
    let host_file = d.dir.path().join("to-container");
    std::fs::write(&host_file, "copied in\n").unwrap();
    let done = d.docker(&["cp", host_file.to_str().unwrap(), "keep:/copied-in"]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = d.docker(&[
        "exec",
        "keep",
        "sh",
        "-c",
        "cat /copied-in; echo inside > /made-inside",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "copied in\n");
    let out = d.dir.path().join("from-container");
    let done = d.docker(&["cp", "keep:/made-inside", out.to_str().unwrap()]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "inside\n");
    let done = d.docker(&["diff", "keep"]);
    assert!(done.status.success(), "{}", done.stderr);
    for added in ["A /runs", "A /copied-in", "A /made-inside"] {
        assert!(
            done.stdout.lines().any(|l| l == added),
            "{added}: {}",
            done.stdout
        );
    }
    assert!(d.docker(&["stop", "-t", "1", "keep"]).status.success());
    assert!(d.docker(&["start", "keep"]).status.success());
    let done = d.docker(&["exec", "keep", "cat", "/runs", "/copied-in", "/made-inside"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "run\nrun\ncopied in\ninside\n");
    let done = d.docker(&["commit", "keep", "husk-kept:latest"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(d.docker(&["rm", "-f", "keep"]).status.success());
    let done = d.docker(&[
        "run",
        "--runtime",
        "husk",
        "--rm",
        "--network",
        "none",
        "husk-kept:latest",
        "cat",
        "/runs",
        "/made-inside",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "run\nrun\ninside\n");
    d.assert_nothing_left();
}
