//! End to end, in the KVM test host: faults injected into husk's `create`,
//! its VMM and its state, each followed by what an engine would do next
//! (`state`, `delete`) and by the leak census ([`common::census`]): the
//! container's state and exit status must be right and nothing of it may be
//! left afterwards (docs/reliability.md lists the cases).
//!
//! `create` is killed at a step with `HUSK_FAULT_KILL_AT` (the process kills
//! itself with SIGKILL right after it records that step of its timeline,
//! `husk::timeline::ENV_FAULT_KILL_AT`), or from outside at a moment the test
//! observes.

mod common;

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::oci::*;
use common::*;

/// How long a VMM may take to go by itself once its create, its record or
/// its guest is gone.
const VMM_GONE_WAIT: Duration = Duration::from_secs(60);

/// Command lines of the VMM processes of container `id` under `root`.
fn vmms_of(root: &Path, id: &str) -> Vec<String> {
    let needle = format!("{} vmm {id}", root.display());
    engines::processes(|l| l.contains(&needle) && !l.contains(" ps "))
}

/// Waits until no VMM of `id` runs; fails the test otherwise.
fn wait_no_vmm(env: &Env, id: &str, why: &str) {
    let start = Instant::now();
    loop {
        let left = vmms_of(&env.root(), id);
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < VMM_GONE_WAIT,
            "{why}: the VMM of {id} is still running after {VMM_GONE_WAIT:?}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pids of the fs server processes of container `id`.
fn fs_servers_of(id: &str) -> Vec<u32> {
    let needle = format!(" fs-server {id}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.trim_end().ends_with(&needle) {
            out.push(pid);
        }
    }
    out
}

/// Waits until no fs server of `id` runs; fails the test otherwise.
fn wait_no_fs_server(id: &str) {
    let start = Instant::now();
    while !fs_servers_of(id).is_empty() {
        assert!(
            start.elapsed() < VMM_GONE_WAIT,
            "the fs server of {id} is still running after {VMM_GONE_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn vmm_pid(env: &Env, id: &str) -> nix::unistd::Pid {
    let pid = env.state(id)["pid"].as_i64().unwrap();
    assert!(pid > 0, "{id} has no pid");
    nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap())
}

fn sigkill(pid: nix::unistd::Pid) {
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
}

/// `husk delete` (plain, as an engine's cleanup after a failed create
/// would) succeeds and leaves nothing of `id`.
fn delete_cleanly(env: &Env, id: &str) {
    let done = env.husk(&["delete", id]);
    assert!(done.status.success(), "delete {id}: {}", done.stderr);
    env.assert_gone(id);
    assert!(
        !Path::new(&format!("/sys/fs/cgroup/{id}")).exists(),
        "cgroup of {id} left"
    );
    let list = env.husk(&["list", "-q"]);
    assert!(
        !list.stdout.lines().any(|l| l == id),
        "{id} still listed: {}",
        list.stdout
    );
}

/// Work files a builder left in a cache directory.
fn cache_work(cache: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for sub in ["rootfs", "templates"] {
        let Ok(entries) = std::fs::read_dir(cache.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(".building.") || name.ends_with(".lock") {
                found.push(e.path());
            }
        }
    }
    found
}

#[test]
fn create_killed_at_each_step_leaves_a_deletable_record_and_no_vm() {
    let env = Env::new();
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});
    // Before the VMM exists (with and without a record on disk), right
    // after it is spawned, once it is in its cgroup, and once it was told
    // to boot (the VM is being restored or booted).
    for (n, point) in [
        "create.begin",
        "create.rootfs",
        "create.spawned",
        "create.cgroup",
        "create.go",
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("k{n}");
        let done = env.husk_with_env(
            &[(husk::timeline::ENV_FAULT_KILL_AT, Path::new(point))],
            &["create", "--bundle", b(&bundle), &id],
        );
        assert_eq!(
            done.status.signal(),
            Some(libc::SIGKILL),
            "create was to be killed at {point}: {:?} {}",
            done.status,
            done.stderr
        );
        // No VM outlives the create that never reported it.
        wait_no_vmm(&env, &id, &format!("create killed at {point}"));
        // Whatever state says, it is not a live container.
        let st = env.husk(&["state", &id]);
        if st.status.success() {
            let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
            assert_ne!(v["status"], "running", "{point}: {}", st.stdout);
            assert_ne!(v["status"], "created", "{point}: {}", st.stdout);
        }
        // Its record stays until delete (every step here comes after the
        // directory is made), and holds the id.
        assert!(env.root().join(&id).is_dir(), "{point}: no record left");
        let again = env.husk(&["create", "--bundle", b(&bundle), &id]);
        assert!(!again.status.success(), "{point}: {}", again.stderr);
        assert!(
            again.stderr.contains("already exists"),
            "{point}: {}",
            again.stderr
        );
        delete_cleanly(&env, &id);
    }
}

#[test]
fn create_killed_while_the_template_builds_leaves_no_vm_and_no_work_files() {
    let env = Env::new();
    let cache = env.dir.path().join("cache");
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});
    let mut create = Command::new(env!("CARGO_BIN_EXE_husk"));
    create
        .env("HUSK_CACHE", &cache)
        .env("HUSK_KERNEL", kernel())
        .env("HUSK_INIT", init_binary())
        .arg("--root")
        .arg(env.root())
        .args(["create", "--bundle", b(&bundle), "tb"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = create.spawn().unwrap();
    // The template VM is booting once its work directory exists.
    let start = Instant::now();
    let templates = cache.join("templates");
    loop {
        let building = std::fs::read_dir(&templates)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains(".building."))
            })
            .unwrap_or(false);
        if building {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "create ended before its template build was seen"
        );
        assert!(
            start.elapsed() < LIMIT,
            "no template build seen in {}",
            templates.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    wait_no_vmm(&env, "tb", "create killed during the template build");
    // The template VM went with it, and its work directory and lock.
    let qemu_or_vmm = engines::processes(|l| l.contains(" vmm tb"));
    assert!(qemu_or_vmm.is_empty(), "{qemu_or_vmm:?}");
    let start = Instant::now();
    while !cache_work(&cache).is_empty() && start.elapsed() < VMM_GONE_WAIT {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(cache_work(&cache), Vec::<PathBuf>::new());
    delete_cleanly(&env, "tb");
    // The next create builds the template afresh and works.
    let done = env.husk_with_env(
        &[
            ("HUSK_CACHE", &cache),
            ("HUSK_KERNEL", &kernel()),
            ("HUSK_INIT", &init_binary()),
        ],
        &[
            "run",
            "--bundle",
            b(&env.bundle("t", &["true"], |_| {})),
            "tb2",
        ],
    );
    assert!(done.status.success(), "{}", done.stderr);
    // A foreground run deletes its container when it ends.
    env.assert_gone("tb2");
    assert_eq!(cache_work(&cache), Vec::<PathBuf>::new());
}

#[test]
fn a_vmm_killed_while_created_running_or_in_exec_ends_the_container() {
    let env = Env::new();
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});

    // Created, never started.
    let done = env.husk(&["create", "--bundle", b(&bundle), "vc"]);
    assert!(done.status.success(), "{}", done.stderr);
    sigkill(vmm_pid(&env, "vc"));
    env.wait_status("vc", "stopped");
    let start = env.husk(&["start", "vc"]);
    assert!(!start.status.success(), "start of a dead container");
    delete_cleanly(&env, "vc");

    // Running.
    let done = env.husk(&["run", "-d", "--bundle", b(&bundle), "vr"]);
    assert!(done.status.success(), "{}", done.stderr);
    sigkill(vmm_pid(&env, "vr"));
    env.wait_status("vr", "stopped");
    let exec = env.husk(&["exec", "vr", "true"]);
    assert!(!exec.status.success(), "exec into a dead container");
    delete_cleanly(&env, "vr");

    // In the middle of an exec: the exec ends with an error, not a hang.
    let done = env.husk(&["run", "-d", "--bundle", b(&bundle), "ve"]);
    assert!(done.status.success(), "{}", done.stderr);
    let pid = vmm_pid(&env, "ve");
    let mut exec = Command::new(env!("CARGO_BIN_EXE_husk"));
    exec.arg("--root")
        .arg(env.root())
        .args(["exec", "ve", "sh", "-c", "echo inside; exec sleep 1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = exec.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "inside");
    sigkill(pid);
    let finished = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            finished.elapsed() < VMM_GONE_WAIT,
            "exec still running {VMM_GONE_WAIT:?} after its VMM was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "exec whose VM died: {status:?}");
    env.wait_status("ve", "stopped");
    delete_cleanly(&env, "ve");
}

#[test]
fn a_vmm_killed_during_snapshot_restore_fails_the_create() {
    let env = Env::new();
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});
    // A first container makes sure the template exists.
    let done = env.husk(&[
        "run",
        "--bundle",
        b(&env.bundle("t", &["true"], |_| {})),
        "first",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    env.assert_gone("first");
    for point in ["vmm.template", "vmm.restored", "vmm.agent"] {
        let id = point.replace('.', "-");
        let done = env.husk_with_env(
            &[(husk::timeline::ENV_FAULT_KILL_AT, Path::new(point))],
            &["create", "--bundle", b(&bundle), &id],
        );
        assert!(!done.status.success(), "{point}: create succeeded");
        assert!(
            done.stderr.contains("VMM exited during boot"),
            "{point}: {}",
            done.stderr
        );
        // The fault fired (without it this create succeeds), and the failed
        // create removed all of it, as any failed create does.
        wait_no_vmm(&env, &id, point);
        env.assert_gone(&id);
        assert!(
            !Path::new(&format!("/sys/fs/cgroup/{id}")).exists(),
            "cgroup of {id} left"
        );
    }
}

#[test]
fn a_wiped_state_root_stops_its_vms() {
    let env = Env::new();
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});
    for id in ["w1", "w2"] {
        let done = env.husk(&["run", "-d", "--bundle", b(&bundle), id]);
        assert!(done.status.success(), "{}", done.stderr);
    }
    let done = env.husk(&["create", "--bundle", b(&bundle), "w3"]);
    assert!(done.status.success(), "{}", done.stderr);
    // What a reboot (or an operator's rm -rf) does to /run/husk.
    std::fs::remove_dir_all(env.root()).unwrap();
    for id in ["w1", "w2", "w3"] {
        wait_no_vmm(&env, id, "the state root was removed");
        let cgroup = PathBuf::from(format!("/sys/fs/cgroup/{id}"));
        let start = Instant::now();
        while cgroup.exists() && start.elapsed() < VMM_GONE_WAIT {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(!cgroup.exists(), "cgroup of {id} left");
    }
    let list = env.husk(&["list", "-q"]);
    assert!(list.status.success(), "{}", list.stderr);
    assert_eq!(list.stdout.trim(), "");
    let done = env.husk(&["delete", "w1"]);
    assert!(!done.status.success());
    assert!(done.stderr.contains("does not exist"), "{}", done.stderr);
}

/// A record of a former boot, or whose pid now names another process, is
/// stopped; delete removes it and signals nobody.
#[test]
fn stale_records_are_stopped_and_delete_never_signals_a_stranger() {
    let env = Env::new();
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});
    let done = env.husk(&["run", "-d", "--bundle", b(&bundle), "s1"]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = env.husk(&["run", "-d", "--bundle", b(&bundle), "s2"]);
    assert!(done.status.success(), "{}", done.stderr);
    // A process that is not the VMM, whose pid the records will claim.
    let mut stranger = Command::new("sleep").arg("1000").spawn().unwrap();
    let spid = i32::try_from(stranger.id()).unwrap();
    let sstart = husk::runtime::state::parse_stat_start_time(
        &std::fs::read_to_string(format!("/proc/{spid}/stat")).unwrap(),
    )
    .unwrap();
    for (id, boot) in [("s1", "a-former-boot"), ("s2", "")] {
        // End the real VMM as a reboot would, then rewrite its record.
        let vmm = vmm_pid(&env, id);
        sigkill(vmm);
        wait_no_vmm(&env, id, "killed");
        let path = env.root().join(id).join("state.json");
        let mut rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        rec["status"] = "running".into();
        rec["pid"] = spid.into();
        if boot.is_empty() {
            // Same boot, reused pid: only the start time tells.
            rec["pid_start_time"] = (sstart + 1).into();
        } else {
            rec["pid_start_time"] = sstart.into();
            rec["boot_id"] = boot.into();
        }
        std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
        assert_eq!(env.state(id)["status"], "stopped", "{id}");
        delete_cleanly(&env, id);
    }
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "delete signalled a process that was not its VMM"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

/// Directories a create that died left half-written: no record at all, or
/// a record cut short.
#[test]
fn half_written_state_directories_are_deleted() {
    let env = Env::new();
    let bundle = env.bundle("b", &["true"], |_| {});
    // A real create first, so that the state root exists as husk makes it.
    let done = env.husk(&["run", "--bundle", b(&bundle), "h0"]);
    assert!(done.status.success(), "{}", done.stderr);
    env.assert_gone("h0");
    std::fs::create_dir(env.root().join("h1")).unwrap();
    std::fs::create_dir(env.root().join("h2")).unwrap();
    std::fs::write(env.root().join("h2/state.json"), "{\"id\": \"h2\", \"sta").unwrap();
    for id in ["h1", "h2"] {
        let done = env.husk(&["delete", id]);
        assert!(done.status.success(), "delete {id}: {}", done.stderr);
        env.assert_gone(id);
    }
}

/// A full disk during create: the create fails naming the problem, or (for
/// the template, an optimisation) the container boots without one; nothing
/// partial is left on the small filesystem.
#[test]
fn a_full_disk_during_create_fails_cleanly() {
    let env = Env::new();
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});
    let small = |name: &str, size: &str| -> SmallFs {
        let dir = env.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success());
        SmallFs(dir)
    };
    let with_cache = |cache: &Path, args: &[&str]| {
        env.husk_with_env(
            &[
                ("HUSK_CACHE", cache),
                ("HUSK_KERNEL", &kernel()),
                ("HUSK_INIT", &init_binary()),
            ],
            args,
        )
    };

    // A block rootfs (`io.husk.rootfs=block`) on a cache with no room for
    // its image: create fails naming the cache directory, not mkfs.
    let block = env.bundle("blk", &["sleep", "1000"], |c| {
        c["annotations"] = serde_json::json!({"io.husk.rootfs": "block"});
    });
    let tiny_fs = small("tiny-cache", "256k");
    let tiny = tiny_fs.0.clone();
    let done = with_cache(&tiny, &["create", "--bundle", b(&block), "f1"]);
    assert!(!done.status.success(), "create on a full cache succeeded");
    let images = tiny.join("rootfs");
    assert!(
        done.stderr.contains("no space for the rootfs image")
            && done.stderr.contains(&images.display().to_string())
            && !done.stderr.contains("mkfs"),
        "{}",
        done.stderr
    );
    env.assert_gone("f1");
    assert_eq!(cache_work(&tiny), Vec::<PathBuf>::new());

    // The default rootfs needs no image, and a cache without room for a
    // template's memory file only means a cold boot: the container runs
    // and nothing of the failed template stays.
    let done = with_cache(
        &tiny,
        &[
            "run",
            "--bundle",
            b(&env.bundle("t", &["true"], |_| {})),
            "f2",
        ],
    );
    assert!(done.status.success(), "{}", done.stderr);
    env.assert_gone("f2");
    assert_eq!(cache_work(&tiny), Vec::<PathBuf>::new());
    let templates: Vec<_> = std::fs::read_dir(tiny.join("templates"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(templates.is_empty(), "{templates:?}");
    let images: Vec<_> = std::fs::read_dir(&images)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(images.is_empty(), "{images:?}");
    drop(tiny_fs);

    // The state root is full.
    let state_fs = small("full-state", "16k");
    let state = state_fs.0.clone();
    let mut filler = 0;
    while std::fs::write(state.join(format!("filler{filler}")), vec![0u8; 4096]).is_ok() {
        filler += 1;
    }
    let done = wait_bounded(
        Command::new(env!("CARGO_BIN_EXE_husk"))
            .arg("--root")
            .arg(&state)
            .args(["create", "--bundle", b(&bundle), "f3"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        LIMIT,
        "husk create on a full state root",
    );
    assert!(
        !done.status.success(),
        "create on a full state root succeeded"
    );
    assert!(done.stderr.contains("space"), "{}", done.stderr);
    assert!(
        !state.join("f3").exists(),
        "state dir left on the full root"
    );
    assert!(vmms_of(&state, "f3").is_empty());
}

/// A small tmpfs mounted for one test, unmounted when dropped (also when
/// the test fails).
struct SmallFs(PathBuf);

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// husk-init exits with the container running (a fault injected through
/// the guest kernel command line), so the guest kernel panics: the
/// container ends with no status (255, as a VM crash), its state is
/// stopped, and delete leaves nothing.
#[test]
fn a_guest_kernel_panic_ends_the_container() {
    let env = Env::new();
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});
    let fault = format!(
        "{}={}",
        husk::proto::PARAM_FAULT,
        husk::proto::FAULT_INIT_EXIT_AFTER_START
    );
    let args = [("HUSK_KERNEL_ARGS", Path::new(&fault))];
    // Detached: the record stays to look at.
    let done = env.husk_with_env(&args, &["run", "-d", "--bundle", b(&bundle), "gp"]);
    assert!(done.status.success(), "{}", done.stderr);
    env.wait_status("gp", "stopped");
    let console = std::fs::read_to_string(env.root().join("gp/console.log")).unwrap();
    assert!(
        console.contains("Kernel panic") && console.contains("Attempted to kill init"),
        "{console}"
    );
    delete_cleanly(&env, "gp");
    // In the foreground: the exit status is a VM crash's.
    let done = env.husk_with_env(&args, &["run", "--bundle", b(&bundle), "gp2"]);
    assert_eq!(done.status.code(), Some(255), "{}", done.stderr);
    env.assert_gone("gp2");
}

/// A delete that cannot remove everything (another program put a process
/// into the container's cgroup) fails naming what is left and the process
/// in the way; the record stays, and the next delete, once that is fixed,
/// removes everything.
#[test]
fn a_delete_that_cannot_remove_everything_says_what_and_can_be_retried() {
    let env = Env::new();
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});
    let done = env.husk(&["create", "--bundle", b(&bundle), "busy"]);
    assert!(done.status.success(), "{}", done.stderr);
    let cgroup = PathBuf::from("/sys/fs/cgroup/busy");
    assert!(cgroup.is_dir());
    let mut squatter = Command::new("sleep").arg("1000").spawn().unwrap();
    std::fs::write(cgroup.join("cgroup.procs"), squatter.id().to_string()).unwrap();
    let done = env.husk(&["delete", "busy"]);
    assert!(
        !done.status.success(),
        "delete with a busy cgroup succeeded"
    );
    assert!(
        done.stderr.contains("/sys/fs/cgroup/busy")
            && done.stderr.contains(&squatter.id().to_string())
            && done.stderr.contains("run delete again"),
        "{}",
        done.stderr
    );
    // The VM is gone all the same; the record stays, stopped.
    wait_no_vmm(&env, "busy", "delete failed on the cgroup");
    assert_eq!(env.state("busy")["status"], "stopped");
    squatter.kill().unwrap();
    squatter.wait().unwrap();
    delete_cleanly(&env, "busy");
}

/// One field of a `/proc/*/status` text.
/// The VMM's own seccomp filters (docs/security.md): every thread of a
/// running container's VMM is filtered and has no_new_privs, its core dumps
/// are off; a thread that makes a call outside its filter ends the VMM by
/// SIGSYS with a line naming the thread and the call, during create (which
/// fails and quotes it) or while the container runs (which then ends as
/// the VMM did); with the log annotation the same calls go through. Nothing
/// is left either way.
#[test]
fn a_vmm_thread_outside_its_seccomp_filter_ends_the_vmm_and_says_why() {
    use husk::jail::seccomp::ENV_FAULT_SYSCALL;
    let env = Env::new();
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});

    // What its caller leaves open or set does not reach the VMM: a file
    // left open without close-on-exec and a credential in the environment.
    let marker = env.dir.path().join("inherited-marker");
    std::fs::write(&marker, "x").unwrap();
    let inherited = std::fs::File::open(&marker).unwrap();
    {
        use std::os::fd::AsRawFd as _;
        // SAFETY: fcntl F_SETFD on a descriptor this test owns.
        let rc = unsafe { libc::fcntl(inherited.as_raw_fd(), libc::F_SETFD, 0) };
        assert_eq!(rc, 0);
    }
    let done = env.husk_with_env(
        &[("AWS_SECRET_ACCESS_KEY", Path::new("inherited-secret"))],
        &["run", "-d", "--bundle", b(&bundle), "sc-audit"],
    );
    drop(inherited);
    assert!(done.status.success(), "{}", done.stderr);
    let pid = vmm_pid(&env, "sc-audit");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains("inherited-secret"),
        "the VMM's environment holds its caller's: {}",
        String::from_utf8_lossy(&environ)
    );
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert_ne!(
            target, marker,
            "the VMM holds a descriptor its caller left open"
        );
    }
    // The VMM's own user: one uid of husk's range, claimed for this
    // container, on every thread (real, effective, saved, fs), no groups.
    let main_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let vmm_uid: u32 = status_field(&main_status, "Uid:")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let range =
        husk::jail::user::RANGE_START..husk::jail::user::RANGE_START + husk::jail::user::RANGE_SIZE;
    assert!(range.contains(&vmm_uid), "the VMM runs as uid {vmm_uid}");
    let claim = Path::new(husk::jail::user::CLAIMS_DIR).join(vmm_uid.to_string());
    assert_eq!(
        std::fs::read_to_string(&claim).unwrap(),
        env.root().join("sc-audit").display().to_string(),
        "the claim of uid {vmm_uid}"
    );
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let name = status_field(&status, "Name:");
        for ids in ["Uid:", "Gid:"] {
            assert!(
                status_field(&status, ids)
                    .split_whitespace()
                    .all(|u| u == vmm_uid.to_string()),
                "thread {name} {ids} {}",
                status_field(&status, ids)
            );
        }
        assert_eq!(status_field(&status, "Groups:"), "", "thread {name}");
        assert_eq!(
            status_field(&status, "Seccomp:"),
            "2",
            "thread {name}: {status}"
        );
        assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "thread {name}");
        // Capabilities: none, in every set, on every thread (the file
        // server's are its own process's, below).
        let keeps = 0u64;
        for set in ["CapEff:", "CapPrm:"] {
            assert_eq!(
                status_field(&status, set),
                format!("{keeps:016x}"),
                "thread {name} {set}"
            );
        }
        for set in ["CapInh:", "CapAmb:"] {
            assert_eq!(
                status_field(&status, set),
                "0000000000000000",
                "thread {name} {set}"
            );
        }
        let bounding = u64::from_str_radix(&status_field(&status, "CapBnd:"), 16).unwrap();
        assert_eq!(bounding & !keeps, 0, "thread {name} CapBnd {bounding:x}");
        names.push(name);
    }
    for wanted in ["vcpu0", "vmm", "vmm-main", "record", "signals"] {
        assert!(
            names.iter().any(|n| n == wanted),
            "no {wanted} thread: {names:?}"
        );
    }
    // The jail: every thread but the main one (which lives in the
    // container's view) has a root holding the state directory and two
    // entries of /proc only; the VMM holds no directory outside it.
    let state_top = env
        .root()
        .components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let mut jailed = None;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap();
        let name = name.trim();
        if name == "husk" {
            continue;
        }
        let mut top: Vec<String> = std::fs::read_dir(task.join("root"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(top, vec![state_top.clone()], "thread {name}'s root");
        assert!(
            task.join("root")
                .join(env.root().strip_prefix("/").unwrap())
                .join("sc-audit/state.json")
                .exists(),
            "thread {name}: no record in its jail"
        );
        if name == "vmm" {
            jailed = Some(task);
        }
    }
    let jailed = jailed.expect("a vmm thread");
    let jail_mounts: Vec<String> = std::fs::read_to_string(jailed.join("mountinfo"))
        .unwrap()
        .lines()
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd = fd.unwrap();
        let Ok(meta) = std::fs::metadata(fd.path()) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let mnt = status_field(&info, "mnt_id:");
        assert!(
            jail_mounts.contains(&mnt),
            "the VMM holds directory {:?} on mount {mnt}, outside its jail",
            std::fs::read_link(fd.path())
        );
    }
    // The fs server: the VMM's child, with the file server's capabilities
    // only, filtered, in the VMM's cgroup, jailed with the shares and two
    // entries of /proc (not the record), holding the stream, the channel,
    // its log and /dev/null only.
    let servers = fs_servers_of("sc-audit");
    assert_eq!(servers.len(), 1, "fs servers of sc-audit: {servers:?}");
    let server = servers[0];
    let status = std::fs::read_to_string(format!("/proc/{server}/status")).unwrap();
    assert_eq!(status_field(&status, "Name:"), "husk-fs");
    assert!(status_field(&status, "Uid:")
        .split_whitespace()
        .all(|u| u == "0"));
    assert_eq!(status_field(&status, "PPid:"), pid.to_string());
    assert_eq!(status_field(&status, "Seccomp:"), "2", "{status}");
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    let fs_caps = husk::jail::caps::mask(husk::jail::caps::FS_PASSTHROUGH);
    for set in ["CapEff:", "CapPrm:"] {
        assert_eq!(
            status_field(&status, set),
            format!("{fs_caps:016x}"),
            "fs server {set}"
        );
    }
    let bounding = u64::from_str_radix(&status_field(&status, "CapBnd:"), 16).unwrap();
    assert_eq!(bounding & !fs_caps, 0, "fs server CapBnd {bounding:x}");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{server}/cgroup")).unwrap(),
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap(),
        "the fs server is not in the VMM's cgroup"
    );
    let mut top: Vec<String> = std::fs::read_dir(format!("/proc/{server}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    let mut want = vec!["proc".to_owned(), state_top.clone()];
    want.sort();
    want.dedup();
    assert_eq!(top, want, "the fs server's root");
    let server_root = PathBuf::from(format!("/proc/{server}/root"));
    let state_in = server_root.join(env.root().strip_prefix("/").unwrap());
    assert!(
        !state_in.join("sc-audit/state.json").exists(),
        "the record in the fs server's jail"
    );
    assert!(
        state_in.join("sc-audit/share").is_dir(),
        "no shares in the fs server's jail"
    );
    let mut fds = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{server}/fd")).unwrap() {
        let fd = fd.unwrap();
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        fds.push((fd.file_name().to_string_lossy().into_owned(), target));
    }
    // Beside stdio, the stream, the channel and its log: what the passthrough opened
    // (handles under the shares, its /proc files), nothing else.
    let share = env.root().join("sc-audit/share");
    for (fd, target) in &fds {
        let t = target.to_string_lossy();
        let ok = match fd.as_str() {
            "0" | "1" => t.ends_with("/null"),
            "3" => t.starts_with("socket:"),
            "4" => t.starts_with("/memfd:husk-fs-channel"),
            _ => {
                target.ends_with("vmm.log")
                    || target.starts_with(&share)
                    || t.starts_with("/proc/self/")
            }
        };
        assert!(ok, "the fs server holds fd {fd} on {t}: {fds:?}");
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
    // Its threads are bounded: RLIMIT_NPROC counts its user's tasks only.
    let nproc = limits
        .lines()
        .find(|l| l.starts_with("Max processes"))
        .unwrap();
    let soft: u64 = nproc.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(
        (husk::jail::user::THREADS_BEYOND_VCPUS..1024).contains(&soft),
        "{nproc}"
    );
    // Nothing the jailed VMM needed was missing (the guest's entropy comes
    // from getrandom, not /dev/urandom).
    let log = std::fs::read_to_string(env.root().join("sc-audit/vmm.log")).unwrap();
    assert!(
        !log.contains("[WARN") && !log.contains("[ERROR"),
        "the jailed VMM warned:\n{log}"
    );
    let done = env.husk(&["delete", "-f", "sc-audit"]);
    assert!(done.status.success(), "{}", done.stderr);
    wait_no_vmm(&env, "sc-audit", "deleted");
    wait_no_fs_server("sc-audit");
    assert!(!claim.exists(), "delete left the claim of uid {vmm_uid}");

    for point in ["vcpu", "devices", "supervisor", "fs-server"] {
        let id = format!("sc-{point}");
        let done = env.husk_with_env(
            &[(ENV_FAULT_SYSCALL, Path::new(point))],
            &["create", "--bundle", b(&bundle), &id],
        );
        assert!(!done.status.success(), "{point}: create succeeded");
        let who = if point == "fs-server" {
            "fs server process".to_owned()
        } else {
            format!("{point} thread")
        };
        let wanted = format!(
            "the VMM's {who} made system call {} (personality, arguments 0xffffffff",
            libc::SYS_personality
        );
        assert!(done.stderr.contains(&wanted), "{point}: {}", done.stderr);
        wait_no_vmm(&env, &id, point);
        wait_no_fs_server(&id);
        env.assert_gone(&id);
        assert!(
            !Path::new(&format!("/sys/fs/cgroup/{id}")).exists(),
            "cgroup of {id} left"
        );
    }

    // While the container runs (its first output): `run` ends as its VMM
    // did, by SIGSYS.
    let talker = env.bundle("t", &["sh", "-c", "sleep 1; echo up; sleep 1000"], |_| {});
    let done = env.husk_with_env(
        &[(ENV_FAULT_SYSCALL, Path::new("output"))],
        &["run", "--bundle", b(&talker), "sc-output"],
    );
    let sigsys = libc::SIGSYS;
    assert!(
        done.status.signal() == Some(sigsys) || done.status.code() == Some(128 + sigsys),
        "run ended {:?}: {}",
        done.status,
        done.stderr
    );
    wait_no_vmm(&env, "sc-output", "output");
    env.assert_gone("sc-output");

    // Log mode lets each of those calls through.
    let logged = env.bundle("l", &["sh", "-c", "sleep 1; echo ran"], |c| {
        c["annotations"] = serde_json::json!({"io.husk.vmm.seccomp": "log"});
    });
    for point in ["vcpu", "devices", "supervisor", "fs-server", "output"] {
        let id = format!("sl-{point}");
        let done = env.husk_with_env(
            &[(ENV_FAULT_SYSCALL, Path::new(point))],
            &["run", "--bundle", b(&logged), &id],
        );
        assert!(done.status.success(), "{point}: {}", done.stderr);
        assert_eq!(done.stdout.trim(), "ran", "{point}");
        env.assert_gone(&id);
    }
    // Without the jail (an explicit opt-out) the VMM's threads keep the
    // host's root; the filters stay.
    let unjailed = env.bundle("nj", &["sh", "-c", "echo ran; sleep 1000"], |c| {
        c["annotations"] = serde_json::json!({"io.husk.vmm.jail": "off"});
    });
    let done = env.husk(&["run", "-d", "--bundle", b(&unjailed), "sc-nojail"]);
    assert!(done.status.success(), "{}", done.stderr);
    let pid = vmm_pid(&env, "sc-nojail");
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        assert_eq!(status_field(&status, "Seccomp:"), "2");
        if std::fs::read_to_string(task.join("comm")).unwrap().trim() == "vmm" {
            assert!(task.join("root/etc").is_dir(), "no jail asked for");
        }
    }
    let done = env.husk(&["delete", "-f", "sc-nojail"]);
    assert!(done.status.success(), "{}", done.stderr);
    wait_no_vmm(&env, "sc-nojail", "unjailed");
    // The VMM's user: `root` keeps uid 0 (without capabilities), a pinned
    // one is used as given (and claims nothing), `0` is refused.
    for (id, user, want) in [
        ("sc-uroot", "root", "0"),
        ("sc-upin", "3000000:3000001", "3000000"),
    ] {
        let bundle = env.bundle(id, &["sh", "-c", "echo ran; sleep 1000"], |c| {
            c["annotations"] = serde_json::json!({ "io.husk.vmm.user": user });
        });
        let done = env.husk(&["run", "-d", "--bundle", b(&bundle), id]);
        assert!(done.status.success(), "{id}: {}", done.stderr);
        let pid = vmm_pid(&env, id);
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
            assert_eq!(status_field(&status, "Seccomp:"), "2");
            assert_eq!(status_field(&status, "CapEff:"), "0000000000000000");
            assert!(
                status_field(&status, "Uid:")
                    .split_whitespace()
                    .all(|u| u == want),
                "{id}: {}",
                status_field(&status, "Uid:")
            );
        }
        let done = env.husk(&["exec", id, "echo", "exec ok"]);
        assert_eq!(done.stdout.trim(), "exec ok", "{id}: {}", done.stderr);
        let done = env.husk(&["delete", "-f", id]);
        assert!(done.status.success(), "{}", done.stderr);
        wait_no_vmm(&env, id, user);
        env.assert_gone(id);
    }
    assert!(!Path::new(husk::jail::user::CLAIMS_DIR)
        .join("3000000")
        .exists());
    let bad = env.bundle("badu", &["true"], |c| {
        c["annotations"] = serde_json::json!({"io.husk.vmm.user": "0"});
    });
    let done = env.husk(&["create", "--bundle", b(&bad), "sc-badu"]);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("io.husk.vmm.user") && done.stderr.contains("\"0\""),
        "{}",
        done.stderr
    );
    env.assert_gone("sc-badu");
    let bad = env.bundle("badj", &["true"], |c| {
        c["annotations"] = serde_json::json!({"io.husk.vmm.jail": "maybe"});
    });
    let done = env.husk(&["create", "--bundle", b(&bad), "sc-badj"]);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("io.husk.vmm.jail") && done.stderr.contains("\"maybe\""),
        "{}",
        done.stderr
    );
    env.assert_gone("sc-badj");
    let bad = env.bundle("bad", &["true"], |c| {
        c["annotations"] = serde_json::json!({"io.husk.vmm.seccomp": "off"});
    });
    let done = env.husk(&["create", "--bundle", b(&bad), "sc-bad"]);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("io.husk.vmm.seccomp") && done.stderr.contains("\"off\""),
        "{}",
        done.stderr
    );
    env.assert_gone("sc-bad");
}

/// A network namespace with one dummy interface (`10.77.0.2/24`, a default
/// route): a NIC for a VM, no peer. Removed on drop.
struct DummyNetns(&'static str);

impl DummyNetns {
    fn new(name: &'static str) -> DummyNetns {
        let script = format!(
            "ip netns add {name} && ip -n {name} link set lo up && \
             ip -n {name} link add eth0 type dummy && \
             ip -n {name} addr add 10.77.0.2/24 dev eth0 && \
             ip -n {name} link set eth0 up && \
             ip -n {name} route add default via 10.77.0.1"
        );
        let done = Command::new("sh").args(["-ec", &script]).output().unwrap();
        assert!(done.status.success(), "{done:?}");
        DummyNetns(name)
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for DummyNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).status();
    }
}

/// A guest kernel an attacker controls (tests/data/hostile_guest.c): wild
/// virtqueues, descriptor loops and addresses outside RAM on every device
/// (virtio-vsock, virtio-fs, virtio-net), garbage vsock and FUSE requests
/// and frames, stray MMIO and port accesses, a console burst. The VMM, under its filters and in its jail, serves all
/// of it until the guest resets; the create fails saying the VM stopped
/// (quoting the guest's last words), nothing of it is left, and a
/// container beside it keeps running.
#[test]
fn a_hostile_guest_kernel_ends_only_its_own_vm() {
    let env = Env::new();
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});
    let done = env.husk(&["run", "-d", "--bundle", b(&bundle), "bystander"]);
    assert!(done.status.success(), "{}", done.stderr);
    let kernel = common::hostile_kernel(&env.dir.path().join("hostile"));
    // Booted cold (a template is never made from this kernel), with a NIC,
    // its rootfs on a block device and a volume over virtio-fs: every kind
    // of device husk has.
    let netns = DummyNetns::new("hostile-net");
    let volume = env.dir.path().join("hostile-volume");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("kept"), b"host data").unwrap();
    let cold = env.bundle("h", &["true"], |c| {
        c["annotations"] =
            serde_json::json!({"io.husk.snapshot": "false", "io.husk.rootfs": "block"});
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/data", "type": "bind", "source": volume, "options": ["rbind", "rw"]
        }));
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "network", "path": netns.path()}));
    });
    let done = env.husk_with_env(
        &[
            ("HUSK_KERNEL", kernel.as_path()),
            ("HUSK_CREATE_TIMEOUT", Path::new("300")),
        ],
        &["create", "--bundle", b(&cold), "hostile"],
    );
    assert!(!done.status.success(), "a hostile guest was created");
    assert!(
        done.stderr
            .contains("the VM stopped before its agent answered")
            && done.stderr.contains("HOSTILE DONE"),
        "the VMM did not serve the hostile guest to its end: {}",
        done.stderr
    );
    // It found the VM's devices: virtio-blk, virtio-vsock, virtio-fs,
    // virtio-net.
    let found = done
        .stderr
        .split("HOSTILE DONE devices ")
        .nth(1)
        .and_then(|s| s.get(..16))
        .and_then(|h| u64::from_str_radix(h, 16).ok());
    assert!(found.is_some_and(|n| n >= 4), "devices: {found:?}");
    // The file the fs server served is as it was.
    assert_eq!(std::fs::read(volume.join("kept")).unwrap(), b"host data");
    wait_no_vmm(&env, "hostile", "the hostile guest reset");
    env.assert_gone("hostile");
    // Its namespace is as it was: eth0 without a redirect, no tap.
    let links = Command::new("ip")
        .args(["-n", netns.0, "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert_eq!(links.lines().count(), 2, "{links}");
    let filters = Command::new("tc")
        .args(["-n", netns.0, "filter", "show", "dev", "eth0", "ingress"])
        .output()
        .unwrap();
    assert!(filters.stdout.is_empty(), "{filters:?}");
    assert!(!Path::new("/sys/fs/cgroup/hostile").exists());
    // The container beside it never noticed.
    assert_eq!(env.state("bystander")["status"], "running");
    let done = env.husk(&["exec", "bystander", "echo", "still here"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout.trim(), "still here");
    let done = env.husk(&["delete", "--force", "bystander"]);
    assert!(done.status.success(), "{}", done.stderr);
    wait_no_vmm(&env, "bystander", "deleted");
    env.assert_gone("bystander");
}
