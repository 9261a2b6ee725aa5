//! End to end, in the KVM test host: Debian's podman (with conmon and its
//! default CNI network) using husk as its OCI runtime, on an image the test
//! imports from a busybox rootfs tarball (no registry is reachable).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(180);
const IMAGE: &str = "localhost/husk-busybox:latest";

/// A podman with its own storage (vfs on a tmpfs, so nothing is shared with
/// other tests or left behind) and husk as the runtime.
struct Podman {
    /// First: it checks for leaks after the teardown, before the directory goes.
    _census: census::Census,
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        let p = Podman {
            _census: require_kvm(),
            dir: engines::tmpfs_workdir(),
        };
        let tar = p.dir.path().join("rootfs.tar");
        engines::image_tarball(p.dir.path(), &tar, "served through podman\n");
        let done = p.podman(&["import", tar.to_str().unwrap(), IMAGE]);
        assert!(done.status.success(), "podman import: {}", done.stderr);
        p
    }

    fn husk() -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_husk"))
    }

    fn podman(&self, args: &[&str]) -> Finished {
        self.podman_as(&Self::husk().to_string_lossy(), &[], args)
    }

    /// podman with `--runtime runtime` (a path, or a name containers.conf
    /// gives) and the environment `envs`.
    fn podman_as(&self, runtime: &str, envs: &[(&str, &Path)], args: &[&str]) -> Finished {
        let d = self.dir.path();
        let mut cmd = Command::new("podman");
        cmd.envs(envs.iter().copied());
        cmd.arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .arg("--runtime")
            .arg(runtime)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let done = wait_bounded(
            cmd.spawn().expect("podman (Debian package)"),
            LIMIT,
            "podman",
        );
        eprintln!(
            "podman {args:?}: {:?}\nstdout: {}\nstderr: {}",
            done.status, done.stdout, done.stderr
        );
        done
    }

    /// No husk VMM is running (podman gives husk its default state root,
    /// `/run/husk`; the tests of a binary take turns, so any is this one's).
    fn assert_no_vm(&self) {
        engines::assert_no_vmm(|l| l.starts_with(&*Self::husk().to_string_lossy()));
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force"]);
        // podman keeps its CNI bridge for the next container; this
        // podman's storage goes now.
        let _ = Command::new("ip")
            .args(["link", "delete", "cni-podman0"])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn runtime_root_of(p: &Podman) -> &Path {
    p.dir.path()
}

#[test]
fn podman_run_passes_output_environment_and_exit_codes() {
    let p = Podman::new();
    let done = p.podman(&["run", "--rm", IMAGE, "echo", "hello from husk"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "hello from husk\n");

    let done = p.podman(&["run", "--rm", IMAGE, "sh", "-c", "exit 7"]);
    assert_eq!(done.status.code(), Some(7), "{}", done.stderr);

    let done = p.podman(&[
        "run",
        "--rm",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "-u",
        "1000:1000",
        IMAGE,
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; id -g",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "bar\n/tmp\n1000\n1000\n");

    // A terminal through conmon's console socket.
    let done = p.podman(&["run", "--rm", "-t", IMAGE, "sh", "-c", "tty && echo ok"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(done.stdout.contains("/dev/pts/"), "{}", done.stdout);
    p.assert_no_vm();
}

#[test]
fn podman_detached_exec_logs_ports_stop_and_rm() {
    let p = Podman::new();
    let done = p.podman(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "18090:80",
        IMAGE,
        "sh",
        "-c",
        "echo web starting; exec httpd -f -p 80 -h /www",
    ]);
    assert!(done.status.success(), "{}", done.stderr);

    // The published port, through podman's default (CNI) network.
    let page = fetch(None, "http://127.0.0.1:18090/");
    assert_eq!(page, "served through podman\n");

    let done = p.podman(&["exec", "web", "cat", "/www/index.html"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "served through podman\n");
    let done = p.podman(&["exec", "web", "sh", "-c", "exit 3"]);
    assert_eq!(done.status.code(), Some(3));

    let done = p.podman(&["logs", "web"]);
    assert!(done.stdout.contains("web starting"), "{}", done.stdout);

    let done = p.podman(&["stop", "-t", "2", "web"]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&["inspect", "--format", "{{.State.Status}}", "web"]);
    assert_eq!(done.stdout.trim(), "exited");
    let done = p.podman(&["rm", "web"]);
    assert!(done.status.success(), "{}", done.stderr);
    p.assert_no_vm();

    // kill, then rm; with a memory limit, which holds for the whole VM in
    // the container's cgroup on the host.
    let done = p.podman(&[
        "run", "-d", "--name", "k", "--memory", "256m", IMAGE, "sleep", "1000",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&["inspect", "--format", "{{.State.Pid}}", "k"]);
    let pid = done.stdout.trim().to_owned();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let cgroup = cgroup.trim().strip_prefix("0::").unwrap().to_owned();
    assert!(cgroup.contains("libpod-"), "VMM {pid} in {cgroup}");
    let cg_dir = std::path::PathBuf::from(format!("/sys/fs/cgroup{cgroup}"));
    // Guest RAM: 256 MiB + 64; the cgroup: that + 64 MiB.
    let max = std::fs::read_to_string(cg_dir.join("memory.max")).unwrap();
    assert_eq!(max.trim(), (384u64 << 20).to_string());
    let done = p.podman(&["stats", "--no-stream", "--format", "{{.MemUsage}}", "k"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(done.stdout.contains("MB"), "{}", done.stdout);
    assert!(p.podman(&["kill", "k"]).status.success());
    let done = p.podman(&["wait", "k"]);
    assert_eq!(done.stdout.trim(), "137", "{}", done.stderr);
    assert!(p.podman(&["rm", "k"]).status.success());
    p.assert_no_vm();
    assert!(!cg_dir.exists(), "cgroup {cgroup} left behind");
}

/// `podman pause` freezes the container's VM (its published port stops
/// answering, exec is refused), `unpause` thaws it where it was, and
/// `rm -f` of a paused container leaves nothing.
#[test]
fn podman_pause_and_unpause_freeze_and_thaw_the_vm() {
    let p = Podman::new();
    let done = p.podman(&[
        "run", "-d", "--name", "frozen", "-p", "18091:80", IMAGE, "httpd", "-f", "-p", "80", "-h",
        "/www",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    let url = "http://127.0.0.1:18091/";
    assert_eq!(fetch(None, url), "served through podman\n");
    let status = |p: &Podman| {
        let done = p.podman(&["inspect", "--format", "{{.State.Status}}", "frozen"]);
        done.stdout.trim().to_owned()
    };

    let done = p.podman(&["pause", "frozen"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(status(&p), "paused");
    // Nothing in the VM answers: not the server, not an exec.
    let once = std::process::Command::new("python3")
        .args([
            "-c",
            &format!("import urllib.request; urllib.request.urlopen('{url}', timeout=3)"),
        ])
        .output()
        .unwrap();
    assert!(!once.status.success(), "a paused VM answered");
    let done = p.podman(&["exec", "frozen", "true"]);
    assert!(!done.status.success(), "exec in a paused container ran");

    let done = p.podman(&["unpause", "frozen"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(status(&p), "running");
    assert_eq!(fetch(None, url), "served through podman\n");
    let done = p.podman(&["exec", "frozen", "cat", "/www/index.html"]);
    assert!(done.status.success(), "{}", done.stderr);

    assert!(p.podman(&["pause", "frozen"]).status.success());
    let done = p.podman(&["rm", "-f", "frozen"]);
    assert!(done.status.success(), "{}", done.stderr);
    p.assert_no_vm();
}

/// `podman container checkpoint` / `restore`, and `--export` / `--import`:
/// the container's VM is written to podman's checkpoint directory and
/// continued from it; the shell's counter (guest memory) goes on, and the
/// output it wrote around the checkpoint reaches `podman logs` once, in
/// order.
#[test]
fn podman_checkpoint_and_restore_continue_the_container() {
    let p = Podman::new();
    let done = p.podman(&[
        "run",
        "-d",
        "--name",
        "ck",
        "-p",
        "18094:80",
        IMAGE,
        "sh",
        "-c",
        "httpd -p 80 -h /www; i=0; while true; do i=$((i+1)); echo $i; echo $i > /counter; \
         sleep 0.2; done",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    // The shell truncates the file before each write: a read may find it
    // empty.
    let counter = |p: &Podman| -> u64 {
        for _ in 0..20 {
            let done = p.podman(&["exec", "ck", "cat", "/counter"]);
            assert!(done.status.success(), "{}", done.stderr);
            if let Ok(n) = done.stdout.trim().parse() {
                return n;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("/counter stayed empty");
    };
    let state = |p: &Podman, field: &str| {
        let done = p.podman(&[
            "inspect",
            "--format",
            &format!("{{{{.State.{field}}}}}"),
            "ck",
        ]);
        done.stdout.trim().to_owned()
    };
    let mut before = 0;
    for _ in 0..100 {
        before = counter(&p);
        if before >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(before >= 3, "the counter did not move: {before}");

    let done = p.podman(&["container", "checkpoint", "ck"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(state(&p, "Status"), "exited");
    assert_eq!(state(&p, "Checkpointed"), "true");
    p.assert_no_vm();
    let done = p.podman(&["container", "restore", "ck"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(state(&p, "Status"), "running");
    let after = counter(&p);
    assert!(
        after >= before && after < before + 200,
        "{before} then {after}"
    );
    // The server listening before the checkpoint answers on the published
    // port after it (its socket is guest memory; podman made the network
    // again with the same address and MAC).
    assert_eq!(
        fetch(None, "http://127.0.0.1:18094/"),
        "served through podman\n"
    );
    // Every number once and in order: nothing lost or repeated across the
    // checkpoint.
    std::thread::sleep(Duration::from_secs(1));
    let logs = p.podman(&["logs", "ck"]);
    let numbers: Vec<u64> = logs
        .stdout
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert!(numbers.len() as u64 > after / 2, "{numbers:?}");
    assert!(
        numbers.iter().enumerate().all(|(i, n)| *n == i as u64 + 1),
        "{numbers:?}"
    );

    // --leave-running: it runs on.
    let done = p.podman(&["container", "checkpoint", "--leave-running", "ck"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(state(&p, "Status"), "running");
    let after = counter(&p).max(after);

    // Exported with its changes, removed, imported: it goes on again.
    let archive = runtime_root_of(&p).join("ck.tar.zst");
    let archive = archive.to_str().unwrap();
    let done = p.podman(&["container", "checkpoint", "--export", archive, "ck"]);
    assert!(done.status.success(), "{}", done.stderr);
    let exported_at = std::fs::metadata(archive).map(|m| m.len()).unwrap_or(0);
    assert!(exported_at > 0, "no archive");
    assert!(p.podman(&["rm", "-f", "ck"]).status.success());
    p.assert_no_vm();
    let done = p.podman(&["container", "restore", "--import", archive]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(state(&p, "Status"), "running");
    let imported = counter(&p);
    assert!(imported >= after, "{after} then {imported}");

    let done = p.podman(&["rm", "-f", "ck"]);
    assert!(done.status.success(), "{}", done.stderr);
    p.assert_no_vm();
}

/// `-v DIR:/data`, `:ro` and a named volume: shared over virtio-fs, each
/// write visible on the host, a read-only one refused inside, and nothing
/// left after `--rm`.
#[test]
fn podman_volumes_are_shared_with_the_host() {
    let p = Podman::new();
    let vol = runtime_root_of(&p).join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("in"), "from the host\n").unwrap();
    let rw = format!("{}:/data", vol.display());
    let done = p.podman(&[
        "run",
        "--rm",
        "-v",
        &rw,
        IMAGE,
        "sh",
        "-c",
        "cat /data/in && echo from the container > /data/out",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "from the host\n");
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "from the container\n"
    );

    let ro = format!("{}:/data:ro", vol.display());
    let done = p.podman(&[
        "run",
        "--rm",
        "-v",
        &ro,
        IMAGE,
        "sh",
        "-c",
        "cat /data/out; echo x > /data/out",
    ]);
    assert!(!done.status.success());
    assert!(
        done.stdout.contains("from the container"),
        "{}",
        done.stdout
    );
    assert!(
        done.stderr.contains("Read-only file system"),
        "{}",
        done.stderr
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "from the container\n"
    );

    // A named volume keeps what one container wrote for the next.
    let done = p.podman(&["volume", "create", "husk-vol"]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&[
        "run",
        "--rm",
        "-v",
        "husk-vol:/v",
        IMAGE,
        "sh",
        "-c",
        "echo kept > /v/f",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&["run", "--rm", "-v", "husk-vol:/v", IMAGE, "cat", "/v/f"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "kept\n");
    let done = p.podman(&["volume", "rm", "husk-vol"]);
    assert!(done.status.success(), "{}", done.stderr);

    p.assert_no_vm();
    let done = p.podman(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(done.stdout.trim(), "", "containers left: {}", done.stdout);
}

/// The container's files live in podman's storage, as under runc: what a
/// container writes survives `podman stop`/`start`, `podman cp` works both
/// ways on a running container, `podman diff` lists the changes and
/// `podman commit` keeps them in an image.
#[test]
fn podman_sees_and_keeps_the_containers_files() {
    let p = Podman::new();
    let done = p.podman(&[
        "run",
        "-d",
        "--name",
        "keep",
        IMAGE,
        "sh",
        "-c",
        "echo run >> /runs; exec sleep 1000",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    // Into the running container, and seen inside at once.
    let host_file = runtime_root_of(&p).join("to-container");
    std::fs::write(&host_file, "copied in\n").unwrap();
    let done = p.podman(&["cp", host_file.to_str().unwrap(), "keep:/copied-in"]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&["exec", "keep", "cat", "/copied-in"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "copied in\n");
    // Out of it: what the container wrote.
    let done = p.podman(&[
        "exec",
        "keep",
        "sh",
        "-c",
        "echo from inside > /made-inside",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    let out = runtime_root_of(&p).join("from-container");
    let done = p.podman(&["cp", "keep:/made-inside", out.to_str().unwrap()]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "from inside\n");
    let done = p.podman(&["diff", "keep"]);
    assert!(done.status.success(), "{}", done.stderr);
    for added in ["A /runs", "A /copied-in", "A /made-inside"] {
        assert!(
            done.stdout.lines().any(|l| l == added),
            "{added}: {}",
            done.stdout
        );
    }
    // A stop and a start: the same files, one more run.
    let done = p.podman(&["stop", "-t", "1", "keep"]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&["start", "keep"]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&["exec", "keep", "cat", "/runs", "/copied-in", "/made-inside"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "run\nrun\ncopied in\nfrom inside\n");
    // Committed, the changes are the new image's.
    let done = p.podman(&["commit", "keep", "localhost/husk-kept:latest"]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&["rm", "-f", "-t", "1", "keep"]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&[
        "run",
        "--rm",
        "localhost/husk-kept:latest",
        "cat",
        "/runs",
        "/made-inside",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "run\nrun\nfrom inside\n");
    p.assert_no_vm();
}

/// `podman build` with husk as the runtime (buildah's OCI runtime path,
/// as a CI runner building an untrusted Containerfile uses it): every `RUN`
/// step runs in a husk VM, and the built image holds every step's changes.
#[test]
fn podman_build_runs_each_step_in_a_husk_vm() {
    let p = Podman::new();
    let context = runtime_root_of(&p).join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("hello.txt"), "from the context\n").unwrap();
    std::fs::write(
        context.join("Containerfile"),
        format!(
            "FROM {IMAGE}\n\
             RUN mkdir /built && echo one > /built/step1 \\\n\
             \x20&& grep -o husk.agent=1 /proc/cmdline > /built/vm\n\
             RUN cat /built/step1 > /built/step2 && echo two >> /built/step2 \\\n\
             \x20&& rm /built/step1\n\
             COPY hello.txt /built/\n\
             RUN cat /built/hello.txt >> /built/step2\n"
        ),
    )
    .unwrap();
    let husk = Podman::husk();
    let done = p.podman(&[
        "build",
        "--runtime",
        husk.to_str().unwrap(),
        "-t",
        "localhost/husk-built:latest",
        context.to_str().unwrap(),
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&[
        "run",
        "--rm",
        "localhost/husk-built:latest",
        "sh",
        "-c",
        "cat /built/step2 /built/vm; test ! -e /built/step1 && echo step1-gone",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(
        done.stdout,
        "one\ntwo\nfrom the context\nhusk.agent=1\nstep1-gone\n"
    );
    p.assert_no_vm();
    let done = p.podman(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(done.stdout.trim(), "", "containers left: {}", done.stdout);
}

/// The engine's side of issue 14's bug and faults: `podman create` then
/// `podman rm` leaves no VM, and a VMM killed from outside is the
/// container exiting with 137, after which `podman rm` leaves nothing.
/// podman's `--uidmap` / `--gidmap`: the container's process and the state
/// pid (the VMM podman inspects) are each in a user namespace with the
/// maps, the VMM's threads run as the container's root on the host without
/// capabilities, and exec and `podman cp` (through the pid's mount
/// namespace) work as with runc.
#[test]
fn podman_uidmap_puts_the_container_and_its_pid_in_a_user_namespace() {
    let p = Podman::new();
    let done = p.podman(&[
        "run",
        "-d",
        "--name",
        "um",
        "--uidmap",
        "0:100000:65536",
        "--gidmap",
        "0:200000:65536",
        IMAGE,
        "sleep",
        "1000",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&["inspect", "--format", "{{.State.Pid}}", "um"]);
    assert!(done.status.success(), "{}", done.stderr);
    let pid: u32 = done.stdout.trim().parse().unwrap();
    let read =
        |what: &str| spaced_lines(&std::fs::read_to_string(format!("/proc/{pid}/{what}")).unwrap());
    assert_eq!(read("uid_map"), ["0 100000 65536"]);
    assert_eq!(read("gid_map"), ["0 200000 65536"]);
    let own = std::fs::read_link("/proc/self/ns/user").unwrap();
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap(),
        own
    );
    let status = read("status");
    assert!(
        status.contains(&"Uid: 100000 100000 100000 100000".to_owned())
            && status.contains(&"Gid: 200000 200000 200000 200000".to_owned())
            && status.contains(&"CapEff: 0000000000000000".to_owned()),
        "{status:?}"
    );
    let done = p.podman(&["exec", "um", "sh", "-c", "cat /proc/self/uid_map; id -u"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(
        spaced_lines(&done.stdout),
        ["0 100000 65536", "0"],
        "{}",
        done.stdout
    );
    let file = p.dir.path().join("copied-in");
    std::fs::write(&file, "through the pid's mount namespace\n").unwrap();
    let done = p.podman(&["cp", file.to_str().unwrap(), "um:/tmp/copied-in"]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&["exec", "um", "cat", "/tmp/copied-in"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "through the pid's mount namespace\n");
    let done = p.podman(&["rm", "--force", "um"]);
    assert!(done.status.success(), "{}", done.stderr);
    p.assert_no_vm();
}

#[test]
fn podman_create_rm_and_a_killed_vmm_leave_nothing() {
    let p = Podman::new();
    let done = p.podman(&["create", "--name", "never", IMAGE, "sleep", "1000"]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&["init", "never"]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&["inspect", "--format", "{{.State.Status}}", "never"]);
    assert_eq!(done.stdout.trim(), "initialized", "{}", done.stderr);
    // `podman init` ran husk create: a VMM exists for the created container.
    let vmms = engines::processes(|l| l.contains(" vmm ") && l.contains("--root /run/husk"));
    assert_eq!(vmms.len(), 1, "{:?}", engines::processes(|_| true));
    let done = p.podman(&["rm", "never"]);
    assert!(done.status.success(), "{}", done.stderr);
    p.assert_no_vm();

    let done = p.podman(&["run", "-d", "--name", "victim", IMAGE, "sleep", "1000"]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&["inspect", "--format", "{{.State.Pid}}", "victim"]);
    let pid: i32 = done.stdout.trim().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let done = p.podman(&["wait", "victim"]);
    assert_eq!(done.stdout.trim(), "137", "{}", done.stderr);
    let done = p.podman(&["rm", "victim"]);
    assert!(done.status.success(), "{}", done.stderr);
    p.assert_no_vm();
    let done = p.podman(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(done.stdout.trim(), "", "containers left: {}", done.stdout);
}

/// podman's default seccomp profile reaches the container process in the
/// guest and answers as it does under runc: the same probe, run by podman
/// with husk and with runc, prints the same lines (calls outside the profile
/// get ENOSYS, `personality` only its allowed values); an exec gets the
/// filter too; `seccomp=unconfined` runs without one; a custom profile's
/// errno and kill actions behave as under runc.
#[test]
fn podmans_seccomp_profile_is_applied_in_the_guest_like_runc() {
    let p = Podman::new();
    let dir = runtime_root_of(&p).join("probe");
    seccomp_probe(&dir);
    let vol = format!("{}:/probe:ro", dir.display());
    let run = |runtime: &str, extra: &[&str], cmd: &[&str]| {
        let mut args = vec!["--runtime", runtime, "run", "--rm", "-v", &vol];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        p.podman(&args)
    };
    let husk = Podman::husk();
    let husk = husk.to_str().unwrap();

    let under_husk = run(husk, &[], &["/probe/probe"]);
    assert!(under_husk.status.success(), "{}", under_husk.stderr);
    for line in [
        "Seccomp:\t2",
        "add_key: Function not implemented",
        "personality(ADDR_NO_RANDOMIZE): Function not implemented",
        "personality(query): ok",
    ] {
        assert!(
            under_husk.stdout.lines().any(|l| l == line),
            "{line:?} in {}",
            under_husk.stdout
        );
    }
    let under_runc = run("runc", &[], &["/probe/probe"]);
    assert!(under_runc.status.success(), "{}", under_runc.stderr);
    assert_eq!(under_husk.stdout, under_runc.stdout, "husk vs runc");

    let unconfined = run(
        husk,
        &["--security-opt", "seccomp=unconfined"],
        &["/probe/probe"],
    );
    assert!(unconfined.status.success(), "{}", unconfined.stderr);
    assert!(
        unconfined.stdout.starts_with("Seccomp:\t0\nadd_key: ok\n"),
        "{}",
        unconfined.stdout
    );

    // An exec into a running container gets the container's filter.
    let done = p.podman(&[
        "run", "-d", "--name", "sc", "-v", &vol, IMAGE, "sleep", "1000",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = p.podman(&["exec", "sc", "/probe/probe"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, under_runc.stdout, "exec vs runc");
    let done = p.podman(&["rm", "-f", "-t", "0", "sc"]);
    assert!(done.status.success(), "{}", done.stderr);

    // A profile of the user's own: errno and kill actions.
    let profile = runtime_root_of(&p).join("profile.json");
    std::fs::write(
        &profile,
        serde_json::to_vec(&serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["sync"], "action": "SCMP_ACT_KILL_PROCESS"}
            ]
        }))
        .unwrap(),
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let script = ["sh", "-c", "mkdir /tmp/d || echo refused; exec sync"];
    let by_husk = run(husk, &["--security-opt", &opt], &script);
    let by_runc = run("runc", &["--security-opt", &opt], &script);
    assert_eq!(by_husk.stdout, "refused\n", "{}", by_husk.stderr);
    assert!(
        by_husk.stderr.contains("Permission denied"),
        "{}",
        by_husk.stderr
    );
    assert_eq!(by_husk.stdout, by_runc.stdout);
    assert_eq!(by_husk.status.code(), by_runc.status.code());
    assert_eq!(by_husk.status.code(), Some(128 + libc::SIGSYS));
    p.assert_no_vm();
}

/// A user of this host as rootless podman wants one: in the `kvm` group,
/// with subordinate ids (useradd gives them), a runtime directory, and
/// husk's kernel in its own cache (`make kernel` run as that user puts it
/// there). The device nodes get the modes Debian's udev gives them
/// (`/dev/kvm` root:kvm 0660, `/dev/net/tun` 0666), which the test host
/// does not. Removed on drop, with whatever it left running.
struct RootlessUser {
    name: &'static str,
    uid: u32,
    home: PathBuf,
    runtime_dir: PathBuf,
    /// Last: checks for leaks after the teardown.
    _census: census::Census,
}

impl RootlessUser {
    fn new() -> RootlessUser {
        let census = require_kvm();
        let name = "husk-rootless";
        let sh = |script: &str| {
            let done = Command::new("sh").args(["-ec", script]).output().unwrap();
            assert!(done.status.success(), "`{script}`: {done:?}");
            String::from_utf8_lossy(&done.stdout).trim().to_owned()
        };
        sh("getent group kvm >/dev/null || groupadd --system kvm
            chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
            chmod 0666 /dev/net/tun");
        sh(&format!(
            "id {name} >/dev/null 2>&1 || useradd --create-home --groups kvm {name}"
        ));
        let uid: u32 = sh(&format!("id -u {name}")).parse().unwrap();
        assert!(
            sh(&format!("grep -c '^{name}:' /etc/subuid")) != "0",
            "useradd gave {name} no subordinate ids"
        );
        let home = PathBuf::from(sh(&format!("getent passwd {name} | cut -d: -f6")));
        let runtime_dir = PathBuf::from(format!("/run/user/{uid}"));
        let kernels = home.join(".cache/husk/kernels/default");
        sh(&format!(
            "install -d -m 0700 -o {name} -g {name} {rt}
             install -d -o {name} -g {name} {home}/.cache {home}/.cache/husk \
                {home}/.cache/husk/kernels {kernels}
             install -m 0644 -o {name} -g {name} {kernel} {kernels}/vmlinux",
            rt = runtime_dir.display(),
            home = home.display(),
            kernels = kernels.display(),
            kernel = husk::paths::default_kernel().display(),
        ));
        RootlessUser {
            name,
            uid,
            home,
            runtime_dir,
            _census: census,
        }
    }

    /// Runs `podman ARGS` as this user, with husk as its runtime (the
    /// default network: slirp4netns).
    fn podman(&self, args: &[&str]) -> Finished {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", self.name, "--", "env"])
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("XDG_RUNTIME_DIR={}", self.runtime_dir.display()))
            .arg(format!("USER={}", self.name))
            .args([
                "podman",
                "--storage-driver",
                "vfs",
                "--events-backend",
                "file",
            ])
            .arg("--runtime")
            .arg(env!("CARGO_BIN_EXE_husk"))
            .args(args)
            .current_dir(&self.home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let done = wait_bounded(cmd.spawn().expect("runuser"), LIMIT, "podman");
        eprintln!(
            "rootless podman {args:?}: {:?}\nstdout: {}\nstderr: {}",
            done.status, done.stdout, done.stderr
        );
        done
    }

    /// The pids of this user's husk VMMs.
    fn vmms(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            // The real uid (a VMM is not dumpable: its /proc files are
            // root's whoever runs it).
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            let real = status_field(&status, "Uid:");
            let owner = real
                .split_whitespace()
                .next()
                .and_then(|u| u.parse::<u32>().ok());
            if owner == Some(self.uid) && args.contains(&&b"vmm"[..]) {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for RootlessUser {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force"]);
        // Rootless podman's pause process (it holds the user namespace) and
        // anything else of the user's.
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", self.name])
            .status();
        let start = std::time::Instant::now();
        while Command::new("pgrep")
            .args(["-u", self.name])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("userdel")
            .args(["--remove", self.name])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

/// Rootless podman (a user in the `kvm` group, slirp4netns networking, its
/// images in a user namespace) runs husk containers end to end; nothing on
/// the way needs root. The VMM runs as that user's uid on the host, under
/// its seccomp filters, jailed.
#[test]
fn rootless_podman_runs_husk_containers() {
    let user = RootlessUser::new();
    let tar = user.home.join("rootfs.tar");
    engines::image_tarball(&user.home.join("img"), &tar, "rootless\n");
    let chown = Command::new("chown")
        .args(["-R", &format!("{}:{}", user.name, user.name)])
        .arg(&user.home)
        .status()
        .unwrap();
    assert!(chown.success());
    let done = user.podman(&["import", tar.to_str().unwrap(), "husk-busybox"]);
    assert!(done.status.success(), "{}", done.stderr);

    // The default rootless network (slirp4netns) becomes the VM's NIC.
    let done = user.podman(&[
        "run",
        "--rm",
        "husk-busybox",
        "sh",
        "-c",
        "echo hello rootless; ip -4 addr show",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(done.stdout.contains("hello rootless"), "{}", done.stdout);
    assert!(done.stdout.contains("10.0.2.100"), "{}", done.stdout);
    // Exit codes come back.
    let done = user.podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "husk-busybox",
        "sh",
        "-c",
        "exit 5",
    ]);
    assert_eq!(done.status.code(), Some(5), "{}", done.stderr);

    // A detached one: its VMM, as the user's uid, confined.
    let done = user.podman(&["run", "-d", "--name", "bg", "husk-busybox", "sleep", "1000"]);
    assert!(done.status.success(), "{}", done.stderr);
    let vmms = user.vmms();
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    let pid = vmms[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status_field(&status, "Uid:");
    assert!(
        uid.split_whitespace().all(|u| u == user.uid.to_string()),
        "the VMM runs as {uid}"
    );
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        let name = status_field(&status, "Name:");
        assert_eq!(status_field(&status, "Seccomp:"), "2", "thread {name}");
        assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "thread {name}");
        if name != "husk" {
            let root: Vec<String> = std::fs::read_dir(task.path().join("root"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                !root.iter().any(|e| e == "etc" || e == "home"),
                "thread {name} is not jailed: {root:?}"
            );
        }
    }
    let done = user.podman(&["exec", "bg", "echo", "exec rootless"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout.trim(), "exec rootless");
    let done = user.podman(&["rm", "--force", "bg"]);
    assert!(done.status.success(), "{}", done.stderr);
    let gone = |user: &RootlessUser| {
        let start = std::time::Instant::now();
        while !user.vmms().is_empty() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(user.vmms().is_empty(), "the VMM outlived podman rm");
    };
    gone(&user);

    // `--userns=keep-id` (a user namespace inside podman's own, the user's
    // uid kept): the process is that uid, and the VMM, nested, is in a
    // user namespace of its own below its parent's.
    let done = user.podman(&[
        "run",
        "-d",
        "--name",
        "keep",
        "--userns=keep-id",
        "--network",
        "none",
        "husk-busybox",
        "sleep",
        "1000",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = user.podman(&["exec", "keep", "id", "-u"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout.trim(), user.uid.to_string());
    let vmms = user.vmms();
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", vmms[0])).unwrap();
    let parent = status_field(&status, "PPid:");
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    assert_ne!(ns(&vmms[0].to_string()), ns(&parent));
    let done = user.podman(&["rm", "--force", "keep"]);
    assert!(done.status.success(), "{}", done.stderr);
    gone(&user);
}

#[test]
fn podman_runs_husk_by_name_once_husk_install_registered_it() {
    let p = Podman::new();
    let conf = p.dir.path().join("containers.conf");
    std::fs::write(&conf, "[containers]\nlog_size_max = 1048576\n").unwrap();
    let install = |extra: &[&str]| {
        let out = Command::new(Podman::husk())
            .args(["install", "--engine", "podman", "--config"])
            .arg(&conf)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = install(&[]);
    assert!(said.contains("[engine.runtimes] husk"), "{said}");
    assert!(install(&[]).contains("nothing to change"));
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(
        text.starts_with("[containers]\nlog_size_max = 1048576\n"),
        "{text}"
    );
    let done = p.podman_as(
        "husk",
        &[("CONTAINERS_CONF", &conf)],
        &["run", "--rm", IMAGE, "echo", "found by name"],
    );
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout.trim(), "found by name");
    // Uninstalled: the entry goes, the rest stays.
    assert!(install(&["--uninstall"]).contains("removed"));
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(!text.contains("husk"), "{text}");
    assert!(text.contains("log_size_max = 1048576"), "{text}");
    p.assert_no_vm();
}
