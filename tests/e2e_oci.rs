//! End to end, in the KVM test host: husk as an OCI runtime, driven through
//! its runc-compatible command line on busybox bundles made by the tests.

mod common;

use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::oci::*;
use common::*;

#[test]
fn create_start_kill_delete_walks_the_lifecycle() {
    let env = Env::new();
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});
    let pid_file = env.dir.path().join("pid");
    let done = env.husk(&[
        "create",
        "--bundle",
        b(&bundle),
        "--pid-file",
        b(&pid_file),
        "c1",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    let st = env.state("c1");
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], "c1");
    assert_eq!(st["bundle"], b(&bundle));
    let pid = st["pid"].as_i64().unwrap();
    assert!(pid > 0);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());

    assert!(env.husk(&["start", "c1"]).status.success());
    assert_eq!(env.state("c1")["status"], "running");
    let again = env.husk(&["start", "c1"]);
    assert!(!again.status.success());
    assert!(again.stderr.contains("cannot start"), "{}", again.stderr);

    let not_stopped = env.husk(&["delete", "c1"]);
    assert!(!not_stopped.status.success());
    assert!(
        not_stopped.stderr.contains("not stopped"),
        "{}",
        not_stopped.stderr
    );

    assert!(env.husk(&["kill", "c1", "KILL"]).status.success());
    env.wait_status("c1", "stopped");
    assert_eq!(env.state("c1")["pid"], 0);
    assert!(env.husk(&["delete", "c1"]).status.success());
    env.assert_gone("c1");
    let gone = env.husk(&["state", "c1"]);
    assert!(!gone.status.success());
    assert!(gone.stderr.contains("does not exist"), "{}", gone.stderr);
}

/// The container's cgroup directory, from its record.
fn cgroup_of(env: &Env, id: &str) -> std::path::PathBuf {
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.root().join(id).join("state.json")).unwrap())
            .unwrap();
    std::path::PathBuf::from(record["cgroup"].as_str().expect("a cgroup"))
}

/// The counter a [`COUNTING`] container writes into its rootfs, as the
/// host sees it.
fn counter(bundle: &std::path::Path) -> u64 {
    std::fs::read_to_string(bundle.join("rootfs/counter"))
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0)
}

/// A process that counts ten times a second into /counter.
const COUNTING: &str = "i=0; while true; do i=$((i+1)); echo $i > /counter; sleep 0.1; done";

/// Waits up to 30 s for `bundle`'s counter to pass `above`.
fn counter_passes(bundle: &std::path::Path, above: u64) -> u64 {
    for _ in 0..300 {
        let now = counter(bundle);
        if now > above {
            return now;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the counter stayed at {}", counter(bundle));
}

#[test]
fn pause_freezes_the_whole_vm_and_resume_thaws_it() {
    let env = Env::new();
    let bundle = env.bundle("b", &["sh", "-c", COUNTING], |_| {});
    let done = env.husk(&["create", "--bundle", b(&bundle), "p1"]);
    assert!(done.status.success(), "{}", done.stderr);
    // Only a running container pauses, only a paused one resumes.
    let early = env.husk(&["pause", "p1"]);
    assert!(!early.status.success());
    assert!(
        early.stderr.contains("container not running"),
        "{}",
        early.stderr
    );
    assert!(env.husk(&["start", "p1"]).status.success());
    let not_paused = env.husk(&["resume", "p1"]);
    assert!(!not_paused.status.success());
    assert!(
        not_paused.stderr.contains("container not paused"),
        "{}",
        not_paused.stderr
    );
    counter_passes(&bundle, 0);

    let done = env.husk(&["pause", "p1"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(env.state("p1")["status"], "paused");
    let list = env.husk(&["list", "--format", "json"]);
    assert!(list.stdout.contains("\"paused\""), "{}", list.stdout);
    // The kernel froze every task of the cgroup: the VMM's threads and
    // its fs server.
    let cgroup = cgroup_of(&env, "p1");
    let events = std::fs::read_to_string(cgroup.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    assert!(
        procs.split_whitespace().count() >= 2,
        "VMM and fs server: {procs}"
    );
    // The guest makes no progress.
    let frozen_at = counter(&bundle);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(counter(&bundle), frozen_at, "the guest ran while paused");
    // What needs the frozen VM is refused, naming the way out.
    for (args, want) in [
        (vec!["exec", "p1", "true"], "paused"),
        (vec!["kill", "p1", "TERM"], "resume it first"),
        (vec!["ps", "p1"], "paused"),
        (vec!["delete", "p1"], "not stopped: paused"),
        (vec!["pause", "p1"], "container not running"),
    ] {
        let done = env.husk(&args);
        assert!(!done.status.success(), "{args:?}");
        assert!(done.stderr.contains(want), "{args:?}: {}", done.stderr);
    }

    let done = env.husk(&["resume", "p1"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(env.state("p1")["status"], "running");
    let events = std::fs::read_to_string(cgroup.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 0"), "{events}");
    counter_passes(&bundle, frozen_at);
    let exec = env.husk(&["exec", "p1", "cat", "/counter"]);
    assert!(exec.status.success(), "{}", exec.stderr);

    // SIGKILL reaches a paused container (it thaws it), as with runc.
    assert!(env.husk(&["pause", "p1"]).status.success());
    assert!(env.husk(&["kill", "p1", "KILL"]).status.success());
    env.wait_status("p1", "stopped");
    assert!(env.husk(&["delete", "p1"]).status.success());
    env.assert_gone("p1");
    assert!(!cgroup.exists(), "cgroup {} left", cgroup.display());

    // delete --force of a paused container leaves nothing either.
    let done = env.husk(&["run", "-d", "--bundle", b(&bundle), "p2"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(env.husk(&["pause", "p2"]).status.success());
    let cgroup = cgroup_of(&env, "p2");
    let done = env.husk(&["delete", "--force", "p2"]);
    assert!(done.status.success(), "{}", done.stderr);
    env.assert_gone("p2");
    assert!(!cgroup.exists(), "cgroup {} left", cgroup.display());
}

/// `husk checkpoint` writes the running VM to a directory and removes the
/// container; `husk restore` continues it: the shell's counter (in guest
/// memory) goes on from where it stopped, and the file it holds open over
/// virtio-fs is still the one it appends to. A restored container is
/// checkpointed and restored again.
#[test]
fn checkpoint_and_restore_continue_the_container_where_it_stopped() {
    let env = Env::new();
    let script = "exec 3>>/log; i=0; while true; do i=$((i+1)); echo $i > /counter; \
                  echo $i >&3; sleep 0.1; done";
    let bundle = env.bundle("b", &["sh", "-c", script], |_| {});
    let log_lines = || -> Vec<u64> {
        std::fs::read_to_string(bundle.join("rootfs/log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    };
    // Bad input: no such container, no checkpoint in a directory.
    let done = env.husk(&[
        "checkpoint",
        "--image-path",
        b(&env.dir.path().join("x")),
        "nope",
    ]);
    assert!(!done.status.success());
    assert!(done.stderr.contains("does not exist"), "{}", done.stderr);
    let empty = env.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let done = env.husk(&[
        "restore",
        "--bundle",
        b(&bundle),
        "--image-path",
        b(&empty),
        "-d",
        "r0",
    ]);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("not a husk checkpoint"),
        "{}",
        done.stderr
    );
    env.assert_gone("r0");

    let done = env.husk(&["run", "-d", "--bundle", b(&bundle), "c1"]);
    assert!(done.status.success(), "{}", done.stderr);
    let mut last = counter_passes(&bundle, 2);
    for (round, (from, to)) in [("c1", "c2"), ("c2", "c3")].into_iter().enumerate() {
        let image = env.dir.path().join(format!("img{round}"));
        let done = env.husk(&["checkpoint", "--image-path", b(&image), from]);
        assert!(done.status.success(), "checkpoint {from}: {}", done.stderr);
        // The container is gone, its VM with it; the counter stands still.
        env.assert_gone(from);
        let stopped_at = counter(&bundle);
        assert!(stopped_at >= last, "{stopped_at} < {last}");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            counter(&bundle),
            stopped_at,
            "a VM still runs after the checkpoint"
        );
        for f in ["state.json", "fs.json", "memory", "inventory.img"] {
            assert!(image.join(f).is_file(), "{f} missing in the checkpoint");
        }
        if round == 0 {
            // A bundle that asks for another VM is refused, naming the
            // mismatch, and leaves nothing; the checkpoint stays usable.
            let bigger = env.bundle("bigger", &["true"], |c| {
                c["annotations"] = serde_json::json!({"io.husk.vm.memory_mib": "384"});
            });
            let done = env.husk(&[
                "restore",
                "--bundle",
                b(&bigger),
                "--image-path",
                b(&image),
                "-d",
                "wrong",
            ]);
            assert!(!done.status.success(), "restored into another VM size");
            assert!(done.stderr.contains("memory"), "{}", done.stderr);
            env.assert_gone("wrong");
        }

        let done = env.husk(&[
            "restore",
            "--bundle",
            b(&bundle),
            "--image-path",
            b(&image),
            "-d",
            to,
        ]);
        assert!(done.status.success(), "restore {to}: {}", done.stderr);
        assert_eq!(env.state(to)["status"], "running");
        last = counter_passes(&bundle, stopped_at);
        // It went on from memory (a new process would start again at 1).
        assert!(
            last > stopped_at && last < stopped_at + 100,
            "{stopped_at} then {last}"
        );
        // The descriptor it opened before the checkpoint still appends to
        // the same file: every number once, in order.
        let lines = log_lines();
        assert!(
            lines.iter().enumerate().all(|(i, n)| *n == i as u64 + 1),
            "{lines:?}"
        );
        // A new agent connection works in the restored VM.
        let exec = env.husk(&["exec", to, "cat", "/counter"]);
        assert!(exec.status.success(), "{}", exec.stderr);
    }
    // --leave-running: written twice over (the VMM rewrites its files), the
    // container runs on; a restore from the copy goes on from that point.
    let live = env.dir.path().join("live");
    let mut at = 0;
    for _ in 0..2 {
        at = counter(&bundle);
        let done = env.husk(&[
            "checkpoint",
            "--leave-running",
            "--image-path",
            b(&live),
            "c3",
        ]);
        assert!(done.status.success(), "{}", done.stderr);
        assert_eq!(env.state("c3")["status"], "running");
        last = counter_passes(&bundle, counter(&bundle));
    }
    assert!(last > at);
    assert!(env.husk(&["kill", "c3", "KILL"]).status.success());
    env.wait_status("c3", "stopped");
    assert!(env.husk(&["delete", "c3"]).status.success());
    env.assert_gone("c3");
    // What c3 appended to the log up to its end; c4 appends after it.
    let c3_log = log_lines();
    let final_c3 = *c3_log.last().unwrap();
    let done = env.husk(&[
        "restore",
        "--bundle",
        b(&bundle),
        "--image-path",
        b(&live),
        "-d",
        "c4",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    // It goes on from the second live checkpoint (taken at `at` or a few
    // counts later, while the guest got ready): its first number is past
    // that, and at most one past c3's last (not from the first checkpoint,
    // not from the start).
    let mut first = None;
    for _ in 0..300 {
        if let Some(n) = log_lines().get(c3_log.len()) {
            first = Some(*n);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = first.expect("c4 appended nothing to the log");
    assert!(
        first > at && first <= final_c3 + 1,
        "checkpointed at {at}, c3 ended at {final_c3}, c4 went on at {first}"
    );
    assert!(env.husk(&["delete", "--force", "c4"]).status.success());
    env.assert_gone("c4");
}

/// `podman create` + `podman rm`, a failed `docker run`, containerd's
/// delete of a created task: deleting a container that never started ends
/// its VM and removes its cgroup, with and without --force.
#[test]
fn deleting_a_created_container_ends_its_vm() {
    let env = Env::new();
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});
    for (id, args) in [
        ("dc1", &["delete"][..]),
        ("dc2", &["delete", "--force"][..]),
    ] {
        let done = env.husk(&["create", "--bundle", b(&bundle), id]);
        assert!(done.status.success(), "{}", done.stderr);
        let pid = env.state(id)["pid"].as_i64().unwrap();
        let cgroup = std::path::PathBuf::from(format!("/sys/fs/cgroup/{id}"));
        assert!(cgroup.is_dir());
        let mut cmd = args.to_vec();
        cmd.push(id);
        let done = env.husk(&cmd);
        assert!(done.status.success(), "{}", done.stderr);
        assert!(
            !done.stderr.contains("WARN") && !done.stderr.contains("busy"),
            "{}",
            done.stderr
        );
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z "),
            "the VMM {pid} of {id} outlived delete"
        );
        assert!(!cgroup.exists(), "cgroup of {id} left");
        env.assert_gone(id);
        let list = env.husk(&["list", "-q"]);
        assert_eq!(list.stdout.trim(), "");
    }
}

fn run(env: &Env, id: &str, args: &[&str]) -> Finished {
    let bundle = env.bundle(id, args, |_| {});
    env.husk(&["run", "--bundle", b(&bundle), id])
}

#[test]
fn run_returns_the_exit_code_and_signal() {
    let env = Env::new();
    let ok = run(&env, "r0", &["true"]);
    assert_eq!(ok.status.code(), Some(0));
    let three = run(&env, "r3", &["sh", "-c", "exit 3"]);
    assert_eq!(three.status.code(), Some(3));
    // The process is pid 1 of its namespace, which its own namespace
    // cannot kill (as under runc): a child is killed, the shell passes it on.
    let killed = run(&env, "rk", &["sh", "-c", "sh -c 'kill -9 $$'; exit $?"]);
    use std::os::unix::process::ExitStatusExt as _;
    assert!(
        killed.status.signal() == Some(9) || killed.status.code() == Some(137),
        "{:?}",
        killed.status
    );
    for id in ["r0", "r3", "rk"] {
        env.assert_gone(id);
    }
}

#[test]
fn the_process_spec_is_honoured_inside() {
    let env = Env::new();
    let bundle = env.bundle(
        "spec",
        &[
            "sh",
            "-c",
            "echo env=$GREETING; pwd; id -u; id -g; hostname; ulimit -n; cat /etc/hosts",
        ],
        |c| {
            let p = &mut c["process"];
            p["env"]
                .as_array_mut()
                .unwrap()
                .push("GREETING=hello there".into());
            p["cwd"] = "/tmp".into();
            p["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
            p["rlimits"] =
                serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 333}]);
        },
    );
    let hosts = env.dir.path().join("hosts");
    std::fs::write(&hosts, "10.1.2.3 from-the-engine\n").unwrap();
    let config_path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["mounts"].as_array_mut().unwrap().push(serde_json::json!(
        {"destination": "/etc/hosts", "type": "bind", "source": b(&hosts), "options": ["rbind", "ro"]}
    ));
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let done = env.husk(&["run", "--bundle", b(&bundle), "spec"]);
    assert!(done.status.success(), "{}", done.stderr);
    let lines: Vec<&str> = done.stdout.lines().collect();
    assert_eq!(lines[0], "env=hello there");
    assert_eq!(lines[1], "/tmp");
    assert_eq!(lines[2], "1000");
    assert_eq!(lines[3], "1000");
    assert_eq!(lines[4], "husk-test");
    assert_eq!(lines[5], "333");
    assert!(done.stdout.contains("from-the-engine"), "{}", done.stdout);
}

#[test]
fn exec_enters_the_same_vm_and_sees_its_files() {
    let env = Env::new();
    let bundle = env.bundle(
        "ex",
        &["sh", "-c", "echo made-by-main > /tmp/shared; sleep 1000"],
        |_| {},
    );
    assert!(env
        .husk(&["run", "-d", "--bundle", b(&bundle), "ex"])
        .status
        .success());
    let mut seen = String::new();
    for _ in 0..100 {
        let done = env.husk(&["exec", "ex", "cat", "/tmp/shared"]);
        if done.status.success() {
            seen = done.stdout;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen.trim(), "made-by-main");
    let code = env.husk(&["exec", "ex", "sh", "-c", "exit 5"]);
    assert_eq!(code.status.code(), Some(5));
    let missing = env.husk(&["exec", "ex", "/no/such/program"]);
    assert!(!missing.status.success());
    assert!(
        missing.stderr.contains("/no/such/program"),
        "{}",
        missing.stderr
    );
    let ps = env.husk(&["ps", "--format", "json", "ex"]);
    let pids: Vec<i64> = serde_json::from_str(&ps.stdout).unwrap();
    assert!(!pids.is_empty());
    assert!(env.husk(&["delete", "--force", "ex"]).status.success());
    env.assert_gone("ex");
    let stopped = env.husk(&["exec", "ex", "true"]);
    assert!(!stopped.status.success());
}

#[test]
fn stdin_is_piped_through_and_eof_propagates() {
    let env = Env::new();
    let bundle = env.bundle("in", &["sh", "-c", "tr a-z A-Z"], |_| {});
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk"));
    cmd.arg("--root")
        .arg(env.root())
        .args(["run", "--bundle", b(&bundle), "in"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello from stdin\n")
        .unwrap();
    let done = wait_bounded(child, LIMIT, "husk run with stdin");
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "HELLO FROM STDIN\n");
}

/// Receives the pty master a runtime sends over a console socket.
fn receive_pty(listener: std::os::unix::net::UnixListener) -> std::thread::JoinHandle<OwnedFd> {
    std::thread::spawn(move || {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let (stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the fd was just received and is owned by nobody else.
                return unsafe { OwnedFd::from_raw_fd(fds[0]) };
            }
        }
        panic!("no fd received");
    })
}

#[test]
fn a_terminal_comes_through_the_console_socket() {
    let env = Env::new();
    let bundle = env.bundle(
        "tty",
        &["sh", "-c", "tty; read line; echo got:$line"],
        |c| {
            c["process"]["terminal"] = true.into();
        },
    );
    let sock = env.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let receiver = receive_pty(listener);
    let done = env.husk(&[
        "create",
        "--bundle",
        b(&bundle),
        "--console-socket",
        b(&sock),
        "tty",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    let master = receiver.join().unwrap();
    assert!(env.husk(&["start", "tty"]).status.success());
    let mut file = std::fs::File::from(master);
    file.write_all(b"typed\r").unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&out).contains("got:typed")
        && std::time::Instant::now() < deadline
    {
        match file.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("got:typed"), "{text}");
    env.wait_status("tty", "stopped");
    assert!(env.husk(&["delete", "tty"]).status.success());
}

#[test]
fn five_containers_run_at_once() {
    let env = Env::new();
    let ids = ["m1", "m2", "m3", "m4", "m5"];
    for id in ids {
        let bundle = env.bundle(id, &["sleep", "1000"], |_| {});
        let done = env.husk(&["run", "-d", "--bundle", b(&bundle), id]);
        assert!(done.status.success(), "{id}: {}", done.stderr);
    }
    let list = env.husk(&["list", "--format", "json"]);
    let all: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.iter().all(|c| c["status"] == "running"), "{all:?}");
    for id in ids {
        assert!(env.husk(&["delete", "--force", id]).status.success());
        env.assert_gone(id);
    }
}

#[test]
fn the_vmm_runs_in_its_cgroup_with_the_containers_resources() {
    let env = Env::new();
    let parent = format!("/husk-e2e-{}", std::process::id());
    let cg = format!("{parent}/cg1");
    let dir = |p: &str| std::path::PathBuf::from(format!("/sys/fs/cgroup{p}"));
    let bundle = env.bundle("b", &["sleep", "1000"], |c| {
        c["linux"]["cgroupsPath"] = cg.clone().into();
        c["linux"]["resources"] = serde_json::json!({
            "memory": {"limit": 134_217_728},
            "cpu": {"quota": 50_000, "period": 100_000, "shares": 1024}
        });
    });
    let done = env.husk(&["create", "--bundle", b(&bundle), "cg1"]);
    assert!(done.status.success(), "{}", done.stderr);
    let pid = env.state("cg1")["pid"].as_i64().unwrap();
    let in_cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(in_cg.trim(), format!("0::{cg}"));
    let read = |f: &str| {
        std::fs::read_to_string(dir(&cg).join(f))
            .unwrap()
            .trim()
            .to_owned()
    };
    // Guest RAM: the 128 MiB limit + 64 MiB; the cgroup: that + 64 MiB.
    assert_eq!(read("memory.max"), (256u64 << 20).to_string());
    assert_eq!(read("cpu.max"), "50000 100000");
    assert_eq!(read("cpu.weight"), "39");
    assert!(env.husk(&["start", "cg1"]).status.success());
    // The VM's memory is counted there.
    let current: u64 = read("memory.current").parse().unwrap();
    assert!(current > 1 << 20, "memory.current {current}");
    assert!(env.husk(&["kill", "cg1", "KILL"]).status.success());
    env.wait_status("cg1", "stopped");
    assert!(env.husk(&["delete", "cg1"]).status.success());
    env.assert_gone("cg1");
    assert!(!dir(&cg).exists(), "cgroup {cg} left behind");

    // A path out of the hierarchy is refused before anything is made.
    let bad = env.bundle("bad", &["true"], |c| {
        c["linux"]["cgroupsPath"] = format!("{parent}/../x").into();
    });
    let done = env.husk(&["create", "--bundle", b(&bad), "cg2"]);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("cgroupsPath") && done.stderr.contains(".."),
        "{}",
        done.stderr
    );
    env.assert_gone("cg2");
    // A setting the kernel refuses fails the create and removes the cgroup.
    let refused = env.bundle("refused", &["true"], |c| {
        c["linux"]["cgroupsPath"] = format!("{parent}/cg3").into();
        c["linux"]["resources"] = serde_json::json!({"cpu": {"cpus": "4096"}});
    });
    let done = env.husk(&["create", "--bundle", b(&refused), "cg3"]);
    assert!(!done.status.success());
    assert!(done.stderr.contains("cpuset.cpus"), "{}", done.stderr);
    env.assert_gone("cg3");
    assert!(!dir(&format!("{parent}/cg3")).exists());
    std::fs::remove_dir(dir(&parent)).unwrap();
}

#[test]
fn bad_input_fails_clearly_and_leaves_nothing() {
    let env = Env::new();
    // No config.json.
    let empty = env.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let done = env.husk(&["create", "--bundle", b(&empty), "x1"]);
    assert!(!done.status.success());
    assert!(done.stderr.contains("config.json"), "{}", done.stderr);
    env.assert_gone("x1");
    // Malformed config.json.
    let bad = env.dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("config.json"), "{not json").unwrap();
    let done = env.husk(&["create", "--bundle", b(&bad), "x2"]);
    assert!(!done.status.success());
    env.assert_gone("x2");
    // Unknown major version.
    let v2 = env.bundle("v2", &["true"], |c| c["ociVersion"] = "2.0.0".into());
    let done = env.husk(&["create", "--bundle", b(&v2), "x3"]);
    assert!(!done.status.success());
    assert!(done.stderr.contains("2.0.0"), "{}", done.stderr);
    env.assert_gone("x3");
    // Missing rootfs.
    let norootfs = env.bundle("nr", &["true"], |c| c["root"]["path"] = "missing".into());
    let done = env.husk(&["create", "--bundle", b(&norootfs), "x4"]);
    assert!(!done.status.success());
    env.assert_gone("x4");
    // Invalid ID.
    let good = env.bundle("good", &["sleep", "100"], |_| {});
    let done = env.husk(&["create", "--bundle", b(&good), "../evil"]);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("invalid container ID"),
        "{}",
        done.stderr
    );
    // A directory bind mount whose source is missing.
    let dirbind = env.bundle("db", &["true"], |c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/data", "type": "bind", "source": "/no-such-dir-x5", "options": ["rbind"]}
        ));
    });
    let done = env.husk(&["create", "--bundle", b(&dirbind), "x5"]);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("/no-such-dir-x5") && done.stderr.contains("/data"),
        "{}",
        done.stderr
    );
    env.assert_gone("x5");
    // Duplicate ID, then a bad signal, then the VMM killed mid-run.
    assert!(env
        .husk(&["create", "--bundle", b(&good), "dup"])
        .status
        .success());
    let done = env.husk(&["create", "--bundle", b(&good), "dup"]);
    assert!(!done.status.success());
    assert!(done.stderr.contains("already exists"), "{}", done.stderr);
    let done = env.husk(&["kill", "dup", "NOTASIGNAL"]);
    assert!(!done.status.success());
    assert!(done.stderr.contains("unknown signal"), "{}", done.stderr);
    assert!(env.husk(&["start", "dup"]).status.success());
    let pid = env.state("dup")["pid"].as_i64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    env.wait_status("dup", "stopped");
    assert!(env.husk(&["delete", "dup"]).status.success());
    env.assert_gone("dup");
    // delete --force of something that does not exist is fine, as in runc.
    assert!(env
        .husk(&["delete", "--force", "never-was"])
        .status
        .success());
}

#[test]
fn state_list_and_features_have_runcs_shapes() {
    let env = Env::new();
    let features = env.husk(&["features"]);
    let f: serde_json::Value = serde_json::from_str(&features.stdout).unwrap();
    assert!(f["ociVersionMin"].is_string() && f["ociVersionMax"].is_string());
    let bundle = env.bundle("shape", &["sleep", "100"], |_| {});
    assert!(env
        .husk(&["create", "--bundle", b(&bundle), "shape"])
        .status
        .success());
    let st = env.state("shape");
    let keys: Vec<&str> = st.as_object().unwrap().keys().map(String::as_str).collect();
    for k in [
        "ociVersion",
        "id",
        "pid",
        "status",
        "bundle",
        "rootfs",
        "created",
        "owner",
    ] {
        assert!(keys.contains(&k), "state lacks {k}: {keys:?}");
    }
    let table = env.husk(&["list"]);
    assert!(table.stdout.starts_with("ID"), "{}", table.stdout);
    assert!(table.stdout.contains("shape") && table.stdout.contains("created"));
    assert!(env.husk(&["delete", "--force", "shape"]).status.success());
}

#[test]
fn hooks_run_on_the_host_and_in_the_guest_with_the_state() {
    let env = Env::new();
    let log = env.dir.path().join("hooks.log");
    let hook = |name: &str| {
        serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c",
            format!("printf '%s ' {name} >> {0}; tr -d '\\n' >> {0}; echo >> {0}", log.display())]})
    };
    let bundle = env.bundle("hk", &["true"], |c| {
        c["hooks"] = serde_json::json!({
            "createRuntime": [hook("createRuntime")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")]
        });
    });
    let done = env.husk(&["run", "--bundle", b(&bundle), "hk"]);
    assert!(done.status.success(), "{}", done.stderr);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("createRuntime {") && lines[0].contains("\"id\": \"hk\""),
        "{text}"
    );
    assert!(
        lines[1].starts_with("poststart ") && lines[1].contains("\"status\": \"running\""),
        "{text}"
    );
    assert!(
        lines[2].starts_with("poststop ") && lines[2].contains("\"status\": \"stopped\""),
        "{text}"
    );
    env.assert_gone("hk");

    let failing = env.bundle("hf", &["true"], |c| {
        c["hooks"] = serde_json::json!({"createRuntime": [{"path": "/bin/false"}]});
    });
    let done = env.husk(&["create", "--bundle", b(&failing), "hf"]);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("createRuntime hook /bin/false"),
        "{}",
        done.stderr
    );
    env.assert_gone("hf");

    // createContainer and startContainer run inside the VM, in the container.
    let guest = env.bundle("hg", &["sh", "-c", "cat /tmp/created; echo; cat /tmp/started"], |c| {
        c["hooks"] = serde_json::json!({
            "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "tr -d '\\n' > /tmp/created"]}],
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo started-hook > /tmp/started"]}]
        });
    });
    let done = env.husk(&["run", "--bundle", b(&guest), "hg"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        done.stdout.contains("\"id\": \"hg\"") && done.stdout.contains("\"status\": \"creating\""),
        "{}",
        done.stdout
    );
    assert!(done.stdout.contains("started-hook"), "{}", done.stdout);
    env.assert_gone("hg");
    let failing_guest = env.bundle("hgf", &["true"], |c| {
        c["hooks"] = serde_json::json!({"createContainer": [{"path": "/bin/false"}]});
    });
    let done = env.husk(&["create", "--bundle", b(&failing_guest), "hgf"]);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("createContainer hook /bin/false"),
        "{}",
        done.stderr
    );
    env.assert_gone("hgf");
}

/// `linux.seccomp` from config.json: loaded into the process in the guest
/// (errno and kill actions, argument conditions, the default errno), and a
/// profile husk cannot honour fails `create` naming the field and the fix,
/// with nothing left behind.
#[test]
fn the_bundles_seccomp_profile_is_enforced_and_bad_ones_refused() {
    let env = Env::new();
    let profile = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            // kill(pid, 0) refused with the default errno; other signals pass.
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["sync"], "action": "SCMP_ACT_KILL_PROCESS"}
        ]
    });
    let bundle = env.bundle(
        "sc",
        &[
            "sh",
            "-c",
            "grep Seccomp: /proc/self/status; mkdir /tmp/d || echo mkdir refused; \
             kill -0 $$ || echo kill -0 refused; exec sync",
        ],
        |c| c["linux"]["seccomp"] = profile.clone(),
    );
    let done = env.husk(&["run", "--bundle", b(&bundle), "sc"]);
    assert_eq!(
        done.stdout, "Seccomp:\t2\nmkdir refused\nkill -0 refused\n",
        "{}",
        done.stderr
    );
    assert!(
        done.stderr.contains("Permission denied")
            && done.stderr.contains("Operation not permitted"),
        "{}",
        done.stderr
    );
    use std::os::unix::process::ExitStatusExt as _;
    assert!(
        done.status.signal() == Some(libc::SIGSYS)
            || done.status.code() == Some(128 + libc::SIGSYS),
        "{:?}",
        done.status
    );
    env.assert_gone("sc");

    for (id, edit, needle) in [
        (
            "sl",
            serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/seccomp-agent.sock"}),
            "listenerPath",
        ),
        (
            "sn",
            serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
                               "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]}),
            "SCMP_ACT_NOTIFY",
        ),
        (
            "se",
            serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO",
                               "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}),
            "errnoRet",
        ),
    ] {
        let bundle = env.bundle(id, &["true"], |c| c["linux"]["seccomp"] = edit);
        let done = env.husk(&["create", "--bundle", b(&bundle), id]);
        assert!(!done.status.success(), "{id}");
        assert!(
            done.stderr.contains("linux.seccomp") && done.stderr.contains(needle),
            "{id}: {}",
            done.stderr
        );
        env.assert_gone(id);
    }
}

/// The container's pid on the host (the VMM) is in the namespaces runc
/// gives it for the same bundle: new pid, cgroup, uts and ipc ones (pid 1
/// of the pid one, its own cgroup the root of the cgroup one, the uts one
/// named as the spec says), the host's when the spec has no entry, the
/// ones a path names; a path that is not such a namespace fails create
/// clearly.
/// The namespace of `kind` process `pid` is in (`/proc/PID/ns/KIND`).
fn ns_of(pid: i64, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn the_pid_has_the_namespaces_the_spec_asks_for() {
    let env = Env::new();
    let host = |kind: &str| ns_of(i64::from(std::process::id()), kind);
    // The pids of `pid` in each pid namespace it is in, outermost first.
    let ns_pids = |pid: i64| -> Vec<i64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    };
    let nsenter = |args: &[&str]| {
        let out = Command::new("nsenter").args(args).output().unwrap();
        assert!(out.status.success(), "nsenter {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let fresh = env.bundle("n1", &["sleep", "1000"], |c| {
        c["linux"]["namespaces"] = serde_json::json!([
            {"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"},
            {"type": "cgroup"}
        ]);
    });
    let done = env.husk(&["run", "-d", "--bundle", b(&fresh), "ns1"]);
    assert!(done.status.success(), "{}", done.stderr);
    let pid1 = env.state("ns1")["pid"].as_i64().unwrap();
    for kind in ["uts", "ipc", "pid", "cgroup", "mnt"] {
        assert_ne!(ns_of(pid1, kind), host(kind), "{kind}");
    }
    // Pid 1 of its own pid namespace, as runc's container process.
    assert_eq!(ns_pids(pid1), vec![pid1, 1]);
    let p1 = pid1.to_string();
    assert_eq!(nsenter(&["-t", &p1, "-u", "hostname"]), "husk-test");
    // Its cgroup (the container's, on the host) is the root of its cgroup
    // namespace.
    let on_host = std::fs::read_to_string(format!("/proc/{pid1}/cgroup")).unwrap();
    assert_ne!(on_host.trim(), "0::/", "the VMM is in a cgroup of its own");
    assert_eq!(
        nsenter(&["-t", &p1, "-C", "cat", &format!("/proc/{pid1}/cgroup")]),
        "0::/"
    );

    // Joined by path (a pod's containers join the sandbox's); no ipc entry:
    // the host's.
    let joined = env.bundle("n2", &["sleep", "1000"], |c| {
        c["linux"]["namespaces"] = serde_json::json!([
            {"type": "pid", "path": format!("/proc/{pid1}/ns/pid")},
            {"type": "mount"},
            {"type": "uts", "path": format!("/proc/{pid1}/ns/uts")},
            {"type": "cgroup", "path": format!("/proc/{pid1}/ns/cgroup")}
        ]);
    });
    let done = env.husk(&["run", "-d", "--bundle", b(&joined), "ns2"]);
    assert!(done.status.success(), "{}", done.stderr);
    let pid2 = env.state("ns2")["pid"].as_i64().unwrap();
    for kind in ["uts", "pid", "cgroup"] {
        assert_eq!(ns_of(pid2, kind), ns_of(pid1, kind), "{kind}");
    }
    assert_eq!(ns_of(pid2, "ipc"), host("ipc"));
    let pids2 = ns_pids(pid2);
    assert_eq!(pids2.len(), 2, "{pids2:?}");
    assert_ne!(pids2[1], 1, "{pids2:?}");

    // No pid or cgroup entry: the host's.
    let shared = env.bundle("n4", &["sleep", "1000"], |c| {
        c["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}]);
    });
    let done = env.husk(&["run", "-d", "--bundle", b(&shared), "ns4"]);
    assert!(done.status.success(), "{}", done.stderr);
    let pid4 = env.state("ns4")["pid"].as_i64().unwrap();
    for kind in ["uts", "ipc", "pid", "cgroup"] {
        assert_eq!(ns_of(pid4, kind), host(kind), "{kind}");
    }
    assert_eq!(ns_pids(pid4), vec![pid4]);

    // Not a namespace of the entry's type.
    for (id, typ, wrong) in [
        ("ns3", "uts", "net"),
        ("ns5", "cgroup", "ipc"),
        ("ns6", "pid", "mnt"),
    ] {
        let path = format!("/proc/{pid1}/ns/{wrong}");
        let bad = env.bundle(id, &["true"], |c| {
            c["linux"]["namespaces"] = serde_json::json!([
                {"type": "mount"}, {"type": typ, "path": path}
            ]);
        });
        let done = env.husk(&["create", "--bundle", b(&bad), id]);
        assert!(!done.status.success(), "{id}");
        assert!(
            done.stderr.contains(&format!("{typ} namespace path"))
                && done.stderr.contains(&path)
                && done.stderr.contains(&format!("not a {typ} namespace")),
            "{}",
            done.stderr
        );
        env.assert_gone(id);
    }
    // ns2 is in ns1's pid namespace: it goes first (with ns1, pid 1 of it,
    // it would die too, as under runc). Its fs servers, in that namespace,
    // go to ns1's VMM when ns2's ends: reaped, as an init reaps orphans,
    // not left as zombies for as long as ns1 lives.
    let done = env.husk(&["delete", "--force", "ns2"]);
    assert!(done.status.success(), "{}", done.stderr);
    env.assert_gone("ns2");
    let zombies_of = |parent: i64| -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
                continue;
            };
            let field = |k: &str| common::status_field(&status, k);
            if field("PPid:") == parent.to_string() && field("State:").starts_with('Z') {
                out.push(format!(
                    "{} {}",
                    e.file_name().to_string_lossy(),
                    field("Name:")
                ));
            }
        }
        out
    };
    let mut left = zombies_of(pid1);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = zombies_of(pid1);
    }
    assert!(left.is_empty(), "zombies under ns1's VMM: {left:?}");
    for id in ["ns4", "ns1"] {
        let done = env.husk(&["delete", "--force", id]);
        assert!(done.status.success(), "{}", done.stderr);
        env.assert_gone(id);
    }
}

/// The spec's `user` namespace holds the state pid too: a new one has the
/// spec's maps as the host reads them from the VMM (`/proc/PID/uid_map`,
/// what tools compare with the spec), every VMM thread runs as the
/// container's root on the host (the map's first id) with no capability,
/// and the container works as before (exec, its exit status, `podman
/// cp`'s view through the pid's mount namespace); a path is joined; a path
/// of another type, or a new one without maps, fails `create`, naming it.
#[test]
fn the_pid_is_in_the_specs_user_namespace() {
    let env = Env::new();
    let host_user = ns_of(i64::from(std::process::id()), "user");
    let lines = |path: String| -> Vec<String> {
        spaced_lines(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
    };
    // Every thread of `pid`: its uid line and effective capabilities.
    let threads = |pid: i64| -> Vec<(String, String)> {
        let mut out = Vec::new();
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            out.push((field("Uid:"), field("CapEff:")));
        }
        out
    };
    let with_user = |c: &mut serde_json::Value, entry: serde_json::Value, maps: bool| {
        c["linux"]["namespaces"] = serde_json::json!([
            {"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"},
            {"type": "cgroup"}, entry
        ]);
        if maps {
            c["linux"]["uidMappings"] =
                serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 2000}]);
            c["linux"]["gidMappings"] =
                serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 3000}]);
        }
    };
    let fresh = env.bundle("u1", &["sleep", "1000"], |c| {
        with_user(c, serde_json::json!({"type": "user"}), true)
    });
    let done = env.husk(&["run", "-d", "--bundle", b(&fresh), "us1"]);
    assert!(done.status.success(), "{}", done.stderr);
    let pid1 = env.state("us1")["pid"].as_i64().unwrap();
    assert_ne!(ns_of(pid1, "user"), host_user);
    assert_eq!(lines(format!("/proc/{pid1}/uid_map")), ["0 1000 2000"]);
    assert_eq!(lines(format!("/proc/{pid1}/gid_map")), ["0 1000 3000"]);
    let t1 = threads(pid1);
    assert!(t1.len() > 3, "{t1:?}");
    for (uid, caps) in &t1 {
        assert_eq!(uid, "1000 1000 1000 1000", "{t1:?}");
        assert_eq!(caps, "0000000000000000", "{t1:?}");
    }
    // The container: its own user namespace with the maps, as before.
    let done = env.husk(&["exec", "us1", "sh", "-c", "cat /proc/self/uid_map; id -u"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(
        spaced_lines(&done.stdout),
        ["0 1000 2000", "0"],
        "{}",
        done.stdout
    );
    // The view engines copy through.
    let view = Command::new("nsenter")
        .args(["-t", &pid1.to_string(), "-m", "ls", "/"])
        .output()
        .unwrap();
    assert!(view.status.success(), "{view:?}");
    let names = String::from_utf8_lossy(&view.stdout).into_owned();
    assert!(names.lines().any(|l| l == "bin"), "{names}");

    // Joined by path, without maps of its own.
    let path = format!("/proc/{pid1}/ns/user");
    let joined = env.bundle("u2", &["sh", "-c", "exit 3"], |c| {
        with_user(c, serde_json::json!({"type": "user", "path": path}), false)
    });
    let done = env.husk(&["create", "--bundle", b(&joined), "us2"]);
    assert!(done.status.success(), "{}", done.stderr);
    let pid2 = env.state("us2")["pid"].as_i64().unwrap();
    assert_eq!(ns_of(pid2, "user"), ns_of(pid1, "user"));
    for (uid, caps) in threads(pid2) {
        assert_eq!(
            (uid.as_str(), caps.as_str()),
            ("1000 1000 1000 1000", "0000000000000000")
        );
    }
    let done = env.husk(&["start", "us2"]);
    assert!(done.status.success(), "{}", done.stderr);
    env.wait_status("us2", "stopped");
    let done = env.husk(&["delete", "us2"]);
    assert!(done.status.success(), "{}", done.stderr);
    env.assert_gone("us2");
    // Its process's status came back from the namespace.
    let run = env.bundle("u3", &["sh", "-c", "exit 3"], |c| {
        with_user(c, serde_json::json!({"type": "user"}), true)
    });
    let done = env.husk(&["run", "--bundle", b(&run), "us3"]);
    assert_eq!(done.status.code(), Some(3), "{}", done.stderr);
    env.assert_gone("us3");

    // Mistakes in the bundle fail create, naming them, leaving nothing.
    let wrong = format!("/proc/{pid1}/ns/ipc");
    for (id, entry, maps, want) in [
        (
            "us4",
            serde_json::json!({"type": "user", "path": wrong}),
            false,
            "not a user namespace",
        ),
        (
            "us5",
            serde_json::json!({"type": "user"}),
            false,
            "uidMappings is empty",
        ),
    ] {
        let bad = env.bundle(id, &["true"], |c| with_user(c, entry, maps));
        let done = env.husk(&["create", "--bundle", b(&bad), id]);
        assert!(!done.status.success(), "{id}");
        assert!(done.stderr.contains(want), "{id}: {}", done.stderr);
        env.assert_gone(id);
    }
    let done = env.husk(&["delete", "--force", "us1"]);
    assert!(done.status.success(), "{}", done.stderr);
    env.assert_gone("us1");
}

/// An id long enough that `<root>/<id>/vsock` does not fit in a socket
/// address (Docker's 64-character ids under its deep runtime root): the
/// sockets live in a short directory, which the jailed VMM reaches.
#[test]
fn a_long_id_gets_short_sockets_the_jailed_vmm_reaches() {
    let env = Env::new();
    let id = format!("long-{}", "x".repeat(100));
    let bundle = env.bundle("l", &["sleep", "1000"], |_| {});
    let done = env.husk(&["run", "-d", "--bundle", b(&bundle), &id]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = env.husk(&["exec", &id, "echo", "through the short socket"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout.trim(), "through the short socket");
    let done = env.husk(&["delete", "--force", &id]);
    assert!(done.status.success(), "{}", done.stderr);
    env.assert_gone(&id);
}
