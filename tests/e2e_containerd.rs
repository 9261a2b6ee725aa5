//! End to end, in the KVM test host: Debian's containerd driven by `ctr`,
//! with its runc shim (`io.containerd.runc.v2`) using husk as the runc
//! binary, and with husk's own shim (`io.containerd.husk.v2`,
//! `containerd-shim-husk-v2` on containerd's `PATH`). The image is a busybox
//! rootfs imported into podman and saved as an OCI archive (no registry is
//! reachable).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(180);
const IMAGE: &str = "localhost/husk-busybox:latest";
const NAMESPACE: &str = "husk-e2e";
const HUSK_RUNTIME: &str = "io.containerd.husk.v2";

/// A containerd daemon of this test's own (state on a tmpfs, CRI off).
struct Containerd {
    /// First: it checks for leaks after the teardown, before the directory goes.
    _census: census::Census,
    dir: tempfile::TempDir,
    daemon: Child,
}

impl Containerd {
    fn start() -> Containerd {
        let census = require_kvm();
        let dir = engines::tmpfs_workdir();
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{0}/containerd.sock\"\n",
            d.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        // containerd finds `containerd-shim-husk-v2` on its PATH.
        let bin = d.join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(shim_binary(), bin.join("containerd-shim-husk-v2")).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        std::fs::write(d.join("path"), path).unwrap();
        let daemon = Self::spawn_daemon(d);
        let c = Containerd {
            _census: census,
            dir,
            daemon,
        };
        c.import_image();
        c
    }

    /// Starts containerd on the work directory `d` and waits for its socket.
    fn spawn_daemon(d: &std::path::Path) -> Child {
        let sock = d.join("containerd.sock");
        let _ = std::fs::remove_file(&sock);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("containerd.log"))
            .unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", std::fs::read_to_string(d.join("path")).unwrap())
            .env("HUSK_SHIM_ROOT", d.join("husk-shim"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (Debian package)");
        engines::wait_for_socket(&sock, "containerd");
        daemon
    }

    /// containerd dies (SIGKILL) and starts again on the same state, as
    /// after a crash or an upgrade.
    fn restart(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        self.daemon = Self::spawn_daemon(self.dir.path());
    }

    /// busybox rootfs -> podman import -> OCI archive -> ctr image import.
    fn import_image(&self) {
        let archive =
            engines::oci_archive(self.dir.path(), IMAGE, "served through containerd\n", &[]);
        let done = self.ctr(&[
            "image",
            "import",
            "--snapshotter",
            "native",
            archive.to_str().unwrap(),
        ]);
        assert!(done.status.success(), "ctr image import: {}", done.stderr);
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["-n", NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn ctr(&self, args: &[&str]) -> Finished {
        let done = wait_bounded(self.ctr_command(args).spawn().unwrap(), LIMIT, "ctr");
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

    /// `ctr run` with husk's own shim.
    fn run_native(&self, extra: &[&str], id: &str, cmd: &[&str]) -> Finished {
        let mut args = vec!["run", "--snapshotter", "native", "--runtime", HUSK_RUNTIME];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, id]);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// Nothing of husk's shim is left: no VMM, no shim process, no container
    /// state, no rootfs mount in a task bundle.
    fn assert_nothing_left(&self) {
        self.assert_no_vm();
        engines::assert_no_husk_shim();
        let state = self.dir.path().join("husk-shim").join(NAMESPACE);
        let left = engines::state_entries(&state);
        assert!(left.is_empty(), "container state left: {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let tasks = self.dir.path().join("state/io.containerd.runtime.v2.task");
        let leaked: Vec<&str> = mounts
            .lines()
            .filter(|l| l.contains(&*tasks.to_string_lossy()))
            .collect();
        assert!(leaked.is_empty(), "rootfs mounts left: {leaked:?}");
    }

    /// Prints containerd's log and any VMM log, for a failed test.
    fn dump_logs(&self) {
        let tail = |path: &std::path::Path| engines::log_tail(path, 80);
        let d = self.dir.path();
        eprintln!("--- containerd.log\n{}", tail(&d.join("containerd.log")));
        let state = d.join("husk-shim").join(NAMESPACE);
        for entry in std::fs::read_dir(state).into_iter().flatten().flatten() {
            let log = entry.path().join("vmm.log");
            eprintln!("--- {}\n{}", log.display(), tail(&log));
        }
    }

    /// No husk VMM is left running.
    fn assert_no_vm(&self) {
        engines::assert_no_vmm(|l| l.starts_with(&*husk().to_string_lossy()));
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
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

fn shim_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-husk-v2"))
}

/// Waits until `ctr task ls` shows `id` in `status`.
fn wait_status(c: &Containerd, id: &str, status: &str) {
    let start = Instant::now();
    while !tasks(c)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(id) && l.contains(status))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{id} never became {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
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

#[test]
fn ctr_with_the_husk_shim_runs_execs_kills_and_deletes() {
    let c = Containerd::start();
    let done = c.run_native(&["--rm"], "hello", &["echo", "hello from the husk shim"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "hello from the husk shim\n");

    let done = c.run_native(
        &["--rm"],
        "seven",
        &["sh", "-c", "echo to stderr >&2; exit 7"],
    );
    assert_eq!(done.status.code(), Some(7), "{}", done.stderr);
    assert!(done.stderr.contains("to stderr"), "{}", done.stderr);
    c.assert_nothing_left();

    // stdin through the FIFO, to EOF.
    let mut cmd = c.ctr_command(&[
        "run",
        "--rm",
        "--snapshotter",
        "native",
        "--runtime",
        HUSK_RUNTIME,
        IMAGE,
        "cat1",
        "sh",
        "-c",
        "cat; echo; echo done",
    ]);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"piped input").unwrap();
    }
    let done = wait_bounded(child, LIMIT, "ctr run with stdin");
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "piped input\ndone\n");

    // A terminal: ctr needs one itself, `script` gives it a pty.
    let address = c.dir.path().join("containerd.sock");
    let line = format!(
        "ctr --address {} -n {NAMESPACE} run --rm -t --snapshotter native --runtime {HUSK_RUNTIME} \
         {IMAGE} tty1 sh -c 'test -t 0 && test -t 1 && echo on-a-tty; exit 5'",
        address.display()
    );
    let mut script = Command::new("script");
    script
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let done = wait_bounded(script.spawn().unwrap(), LIMIT, "ctr run -t");
    assert_eq!(
        done.status.code(),
        Some(5),
        "{} {}",
        done.stdout,
        done.stderr
    );
    assert!(done.stdout.contains("on-a-tty"), "{:?}", done.stdout);

    // Detached, exec, pids, kill an exec, kill the task, delete.
    let done = c.run_native(&["-d"], "bg", &["sleep", "1000"]);
    assert!(done.status.success(), "{}", done.stderr);
    wait_status(&c, "bg", "RUNNING");
    let done = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "bg",
        "sh",
        "-c",
        "echo in exec; echo err >&2; exit 3",
    ]);
    assert_eq!(done.status.code(), Some(3), "{}", done.stderr);
    assert_eq!(done.stdout, "in exec\n");
    assert!(done.stderr.contains("err"), "{}", done.stderr);
    let ps = c.ctr(&["task", "ps", "bg"]);
    assert!(ps.status.success(), "{}", ps.stderr);
    assert!(ps.stdout.lines().count() >= 2, "{}", ps.stdout);
    // Metrics: the VM's host cgroup, as cgroup v2 metrics.
    let metrics = c.ctr(&["task", "metrics", "bg"]);
    assert!(metrics.status.success(), "{}", metrics.stderr);
    let value = |name: &str| -> u64 {
        metrics
            .stdout
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no {name} in:\n{}", metrics.stdout))
    };
    assert!(value("memory.usage") > 1 << 20, "{}", metrics.stdout);
    assert!(value("cpu.usage_usec") > 0, "{}", metrics.stdout);
    assert!(value("pids.current") > 0, "{}", metrics.stdout);

    let long = c
        .ctr_command(&["task", "exec", "--exec-id", "e2", "bg", "sleep", "1000"])
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !c
        .ctr(&["task", "kill", "--exec-id", "e2", "-s", "KILL", "bg"])
        .status
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "exec e2 never ran"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let done = wait_bounded(long, LIMIT, "ctr task exec e2");
    assert_eq!(done.status.code(), Some(137), "{}", done.stderr);

    // Pause and resume through the shim: the VM freezes and thaws.
    let done = c.ctr(&["task", "pause", "bg"]);
    assert!(done.status.success(), "{}", done.stderr);
    wait_status(&c, "bg", "PAUSED");
    let done = c.ctr(&["task", "exec", "--exec-id", "e3", "bg", "true"]);
    assert!(!done.status.success(), "exec in a paused task ran");
    let done = c.ctr(&["task", "resume", "bg"]);
    assert!(done.status.success(), "{}", done.stderr);
    wait_status(&c, "bg", "RUNNING");
    let done = c.ctr(&["task", "exec", "--exec-id", "e4", "bg", "true"]);
    assert!(done.status.success(), "{}", done.stderr);

    // `sleep` is pid 1 of its namespace, which ignores a TERM it has no
    // handler for, as under runc: TERM changes nothing, KILL ends it.
    assert!(c
        .ctr(&["task", "kill", "-s", "TERM", "bg"])
        .status
        .success());
    std::thread::sleep(Duration::from_secs(2));
    wait_status(&c, "bg", "RUNNING");
    assert!(c
        .ctr(&["task", "kill", "-s", "KILL", "bg"])
        .status
        .success());
    wait_status(&c, "bg", "STOPPED");
    assert!(c.ctr(&["task", "delete", "bg"]).status.success());
    assert!(c.ctr(&["container", "delete", "bg"]).status.success());
    c.assert_nothing_left();

    // A directory bind mount: shared with the host over virtio-fs.
    let vol = c.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", vol.display());
    let done = c.run_native(
        &["--rm", "--mount", &mount],
        "vol",
        &["sh", "-c", "echo from containerd > /data/out"],
    );
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "from containerd\n"
    );
    let _ = c.ctr(&["container", "delete", "vol"]);
    c.assert_nothing_left();
    let left = c.ctr(&["container", "ls", "-q"]).stdout;
    assert_eq!(left.trim(), "", "containers left: {left}");
}

/// A shim killed with its container running, and containerd killed and
/// started again: containerd's clean-up of the dead shim (the shim
/// binary's `delete`) ends the VM, the task is no longer running, and
/// nothing is left after the engine's delete.
#[test]
fn a_killed_shim_and_a_restarted_containerd_leave_nothing() {
    let mut c = Containerd::start();
    let done = c.run_native(&["-d"], "sk", &["sleep", "1000"]);
    assert!(done.status.success(), "{}", done.stderr);
    wait_status(&c, "sk", "RUNNING");
    let shims = engines::processes(|l| l.contains("containerd-shim-husk-v2") && l.contains("sk"));
    assert_eq!(shims.len(), 1, "{shims:?}");
    let ps = Command::new("pgrep")
        .args(["-f", "containerd-shim-husk-v2.*-id sk"])
        .output()
        .unwrap();
    let pids: Vec<i32> = String::from_utf8_lossy(&ps.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(pids.len(), 1, "shim of sk: {pids:?} ({shims:?})");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.restart();
    // containerd finds the shim gone and cleans up after it.
    c.assert_no_vm();
    let start = Instant::now();
    loop {
        let ls = tasks(&c);
        let line = ls
            .lines()
            .find(|l| l.split_whitespace().next() == Some("sk"))
            .map(str::to_owned);
        match line {
            Some(l) if l.contains("RUNNING") => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "sk still RUNNING with its shim gone: {ls}"
                );
                std::thread::sleep(Duration::from_millis(300));
            }
            _ => break,
        }
    }
    let _ = c.ctr(&["task", "delete", "-f", "sk"]);
    assert!(c.ctr(&["container", "delete", "sk"]).status.success());
    c.assert_nothing_left();
    let left = c.ctr(&["container", "ls", "-q"]).stdout;
    assert_eq!(left.trim(), "", "containers left: {left}");
}

/// The VMM of a task under husk's shim SIGKILLed from outside: `ctr run`
/// returns 137, as for a killed container process, and nothing is left.
#[test]
fn a_killed_vmm_under_the_husk_shim_is_exit_137() {
    let c = Containerd::start();
    let child = c
        .ctr_command(&[
            "run",
            "--rm",
            "--snapshotter",
            "native",
            "--runtime",
            HUSK_RUNTIME,
            IMAGE,
            "kv",
            "sleep",
            "1000",
        ])
        .spawn()
        .unwrap();
    wait_status(&c, "kv", "RUNNING");
    let vmm = engines::processes(|l| l.contains(" vmm kv"));
    assert_eq!(vmm.len(), 1, "{vmm:?}");
    let ps = Command::new("pgrep")
        .args(["-f", " vmm kv$"])
        .output()
        .unwrap();
    let pid: i32 = String::from_utf8_lossy(&ps.stdout).trim().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let done = wait_bounded(child, LIMIT, "ctr run kv");
    assert_eq!(done.status.code(), Some(137), "{}", done.stderr);
    c.assert_nothing_left();
    let left = c.ctr(&["container", "ls", "-q"]).stdout;
    assert_eq!(left.trim(), "", "containers left: {left}");
}
