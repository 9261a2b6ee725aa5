use super::*;
use crate::agent_proto::SockFilter;
use crate::seccomp::bpf::{run, SeccompData};
use crate::seccomp::AUDIT_ARCH_X86_64;

const ALLOW: u32 = 0x7fff_0000;
const TRAP: u32 = 0x0003_0000;
const LOG: u32 = 0x7ffc_0000;
const ERRNO: u32 = 0x0005_0000;

fn ours(program: &BpfProgram) -> Vec<SockFilter> {
    program
        .iter()
        .map(|f| SockFilter(f.code, f.jt, f.jf, f.k))
        .collect()
}

/// The verdict of `thread`'s filter (the clone3 filter in front, as the
/// kernel combines them: the lower action value wins).
fn verdict(filters: &Filters, thread: Thread, nr: i64, args: [u64; 6]) -> u32 {
    let data = SeccompData {
        nr: i32::try_from(nr).unwrap(),
        arch: AUDIT_ARCH_X86_64,
        instruction_pointer: 0,
        args,
    };
    let main = run(&ours(filters.program(thread)), &data).expect("runs");
    let front = run(&ours(&filters.clone3), &data).expect("runs");
    // SECCOMP_RET_ACTION_FULL order: kill < trap < errno < ... < log < allow.
    let rank = |v: u32| match v & 0xffff_0000 {
        0x8000_0000 => 0,
        0x0000_0000 => 1,
        TRAP => 2,
        ERRNO => 3,
        LOG => 5,
        ALLOW => 6,
        _ => 4,
    };
    if rank(front) < rank(main) {
        front
    } else {
        main
    }
}

fn enforce() -> Filters {
    Filters::compile(Mode::Enforce).expect("the VMM's filters compile")
}

#[test]
fn every_filter_compiles_in_both_modes_within_the_kernels_limit() {
    for mode in [Mode::Enforce, Mode::Log] {
        let f = Filters::compile(mode).unwrap();
        for t in Thread::ALL {
            let len = f.program(t).len();
            assert!(len > 10 && len < 4096, "{t:?}: {len} instructions");
        }
    }
}

#[test]
fn what_no_thread_may_do_is_refused_by_every_filter() {
    let f = enforce();
    for t in Thread::ALL {
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_init_module,
            libc::SYS_keyctl,
            libc::SYS_kill,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_personality,
            libc::SYS_process_vm_writev,
            libc::SYS_open_by_handle_at,
            libc::SYS_userfaultfd,
            libc::SYS_io_uring_setup,
        ] {
            assert_eq!(verdict(&f, t, nr, [0; 6]), TRAP, "{t:?} nr {nr}");
        }
        // No new executable memory.
        let prot_rwx = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        let prot_rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        assert_eq!(
            verdict(&f, t, libc::SYS_mmap, [0, 4096, prot_rwx, 0, 0, 0]),
            TRAP
        );
        assert_eq!(
            verdict(&f, t, libc::SYS_mprotect, [0, 4096, prot_rwx, 0, 0, 0]),
            TRAP
        );
        assert_eq!(
            verdict(&f, t, libc::SYS_mmap, [0, 4096, prot_rw, 0, 0, 0]),
            ALLOW
        );
        // Signals to this process only.
        let me = u64::from(std::process::id());
        let sig = libc::SIGRTMIN() as u64;
        assert_eq!(
            verdict(&f, t, libc::SYS_tgkill, [me, 7, sig, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            verdict(&f, t, libc::SYS_tgkill, [me + 1, 7, sig, 0, 0, 0]),
            TRAP
        );
        // clone3 answers ENOSYS where threads may be started (the C
        // library falls back to clone, whose flags are checked), and is
        // refused where they may not.
        let clone3 = if t == Thread::Supervisor {
            ERRNO | libc::ENOSYS as u32
        } else {
            TRAP
        };
        assert_eq!(verdict(&f, t, libc::SYS_clone3, [0; 6]), clone3, "{t:?}");
    }
}

#[test]
fn a_vcpu_may_run_the_guest_and_nothing_else_by_ioctl() {
    let f = enforce();
    let ioctl = |t, req| verdict(&f, t, libc::SYS_ioctl, [9, req, 0, 0, 0, 0]);
    assert_eq!(ioctl(Thread::Vcpu, KVM_RUN), ALLOW);
    // The request is compared as the kernel reads it: its low 32 bits.
    assert_eq!(ioctl(Thread::Vcpu, KVM_RUN | 0xffff_ffff_0000_0000), ALLOW);
    // KVM_SET_USER_MEMORY_REGION, KVM_CREATE_VCPU, TUNSETIFF, TIOCSTI.
    for req in [0x4020_ae46, 0xae41, 0x4004_54ca, 0x5412] {
        assert_eq!(ioctl(Thread::Vcpu, req), TRAP, "{req:#x}");
        assert_eq!(ioctl(Thread::Devices, req), TRAP, "{req:#x}");
        assert_eq!(ioctl(Thread::Supervisor, req), TRAP, "{req:#x}");
    }
    assert_eq!(ioctl(Thread::Devices, TUNSETOFFLOAD), ALLOW);
    assert_eq!(ioctl(Thread::Devices, KVM_RUN), TRAP);
    assert_eq!(ioctl(Thread::Supervisor, libc::TIOCGWINSZ), ALLOW);
    assert_eq!(ioctl(Thread::Supervisor, KVM_RUN), TRAP);
    // A vCPU opens nothing and connects nowhere.
    for nr in [
        libc::SYS_openat,
        libc::SYS_socket,
        libc::SYS_connect,
        libc::SYS_clone,
    ] {
        assert_eq!(verdict(&f, Thread::Vcpu, nr, [0; 6]), TRAP, "nr {nr}");
    }
}

#[test]
fn sockets_are_unix_ones_and_threads_only_threads() {
    let f = enforce();
    for t in [Thread::Devices, Thread::Supervisor] {
        let socket = |domain: i32| {
            verdict(
                &f,
                t,
                libc::SYS_socket,
                [domain as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0],
            )
        };
        assert_eq!(socket(libc::AF_UNIX), ALLOW, "{t:?}");
        for domain in [
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
            libc::AF_PACKET,
        ] {
            assert_eq!(socket(domain), TRAP, "{t:?} domain {domain}");
        }
    }
    let clone = |flags: u64| {
        verdict(
            &f,
            Thread::Supervisor,
            libc::SYS_clone,
            [flags, 0, 0, 0, 0, 0],
        )
    };
    assert_eq!(clone(THREAD_CLONE_FLAGS), ALLOW);
    assert_eq!(clone(libc::SIGCHLD as u64), TRAP, "a fork");
    assert_eq!(clone(THREAD_CLONE_FLAGS | libc::CLONE_NEWUSER as u64), TRAP);
    assert_eq!(
        verdict(
            &f,
            Thread::Devices,
            libc::SYS_clone,
            [THREAD_CLONE_FLAGS, 0, 0, 0, 0, 0]
        ),
        TRAP
    );
    // setsockopt: receive and send timeouts only.
    let opt = |level: i32, name: i32| {
        verdict(
            &f,
            Thread::Supervisor,
            libc::SYS_setsockopt,
            [3, level as u64, name as u64, 0, 0, 0],
        )
    };
    assert_eq!(opt(libc::SOL_SOCKET, libc::SO_RCVTIMEO), ALLOW);
    assert_eq!(opt(libc::SOL_SOCKET, libc::SO_SNDTIMEO), ALLOW);
    assert_eq!(opt(libc::SOL_SOCKET, libc::SO_ATTACH_FILTER), TRAP);
}

#[test]
fn log_mode_lets_refused_calls_through_with_a_log() {
    let f = Filters::compile(Mode::Log).unwrap();
    for t in Thread::ALL {
        assert_eq!(verdict(&f, t, libc::SYS_execve, [0; 6]), LOG, "{t:?}");
        assert_eq!(verdict(&f, t, libc::SYS_read, [0; 6]), ALLOW, "{t:?}");
    }
}

#[test]
fn the_report_names_the_thread_and_the_call() {
    let mut buf = [0u8; 448];
    let n = report_line(&mut buf, "vcpu", 16, [3, 0x5421, 0]);
    let line = std::str::from_utf8(&buf[..n]).unwrap();
    assert!(
        line.starts_with(
            "[seccomp] the VMM's vcpu thread made system call 16 (ioctl, arguments 0x3, 0x5421, 0x0)"
        ),
        "{line}"
    );
    assert!(line.ends_with('\n'), "{line}");
    // A line longer than the buffer is cut, not overflowed.
    let mut small = [0u8; 16];
    assert_eq!(report_line(&mut small, "vcpu", -1, [0; 3]), 16);
    let n = append_path(&mut buf, n, b"/etc/x");
    let text = std::str::from_utf8(&buf[..n]).unwrap();
    assert!(text.ends_with(" Path: /etc/x\n"), "{text}");
    let n = report_line(&mut buf, "devices", 100_000, [0; 3]);
    assert!(std::str::from_utf8(&buf[..n])
        .unwrap()
        .contains("100000 (unknown, "));
}

#[test]
fn modes_and_threads_parse_from_their_names() {
    assert_eq!(Mode::parse("enforce"), Some(Mode::Enforce));
    assert_eq!(Mode::parse("log"), Some(Mode::Log));
    assert_eq!(Mode::parse("off"), None);
    for t in Thread::ALL {
        assert_eq!(Thread::parse(t.name()), Some(t));
        assert_eq!(Thread::from_code(t.code()), Some(t));
    }
    assert_eq!(Thread::parse("main"), None);
}

/// In a child process (fork: only async-signal-safe work follows), installs
/// `thread`'s filter, makes an allowed call and then one no filter allows;
/// returns how the child ended.
fn child_with_filter(filters: &Filters, thread: Thread) -> nix::sys::wait::WaitStatus {
    // SAFETY: the child only calls apply (prctl and seccomp system calls
    // on data compiled before the fork), raw system calls and _exit.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let code = match filters.apply(thread) {
                Err(_) => 3,
                Ok(()) => {
                    // SAFETY: getppid and personality take no pointers.
                    let allowed = unsafe { libc::syscall(libc::SYS_getpid) };
                    if allowed <= 0 {
                        4
                    } else {
                        // SAFETY: as above; personality(0xffffffff) only
                        // reads the persona.
                        unsafe { libc::syscall(FAULT_CALL, 0xffff_ffff_u64) };
                        0
                    }
                }
            };
            // SAFETY: _exit ends the child without running the parent's
            // atexit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            nix::sys::wait::waitpid(child, None).expect("waitpid")
        }
    }
}

#[test]
fn the_kernel_stops_a_thread_that_steps_outside_its_filter_and_the_log_says_why() {
    use nix::sys::signal::Signal;
    use nix::sys::wait::WaitStatus;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("vmm.log");
    install_report_handler(&log).unwrap();
    let enforce = enforce();
    let logging = Filters::compile(Mode::Log).unwrap();
    for t in Thread::ALL {
        match child_with_filter(&enforce, t) {
            WaitStatus::Signaled(_, Signal::SIGSYS, _) => {}
            other => panic!("{t:?}: the child ended {other:?}, not by SIGSYS"),
        }
        let text = std::fs::read_to_string(&log).unwrap();
        let who = if t == Thread::FsServer {
            "fs server process".to_owned()
        } else {
            format!("{} thread", t.name())
        };
        let wanted = format!(
            "the VMM's {who} made system call {FAULT_CALL} (personality, arguments 0xffffffff"
        );
        assert!(text.contains(&wanted), "{t:?}: {text}");
        // In log mode the same call goes through.
        match child_with_filter(&logging, t) {
            WaitStatus::Exited(_, 0) => {}
            other => panic!("{t:?}: in log mode the child ended {other:?}"),
        }
    }
}

/// With a VMM user, a VMM thread drops to it as it applies its filter
/// (no capability left, bounding set empty); a thread it starts keeps it
/// and applies its own filter without a second drop; the fs server keeps
/// root and its capabilities.
#[test]
fn vmm_threads_drop_to_the_vmm_user_and_the_fs_server_does_not() {
    crate::test_support::need_root("setresuid(2)");
    let user = super::super::user::VmmUser {
        uid: super::super::user::RANGE_START + 11,
        gid: super::super::user::RANGE_START + 12,
        claimed: false,
        in_ns: None,
    };
    let field = crate::test_support::status_words;
    let filters = Filters::compile(Mode::Log).unwrap().for_user(Some(user));
    let f2 = Filters::compile(Mode::Log).unwrap().for_user(Some(user));
    assert!(crate::test_support::in_child(move || {
        filters.apply(Thread::Devices).unwrap();
        let me = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let child = std::thread::spawn(move || {
            f2.apply(Thread::Vcpu).unwrap();
            std::fs::read_to_string("/proc/thread-self/status").unwrap()
        })
        .join()
        .unwrap();
        let uid = user.uid.to_string();
        [me, child].iter().all(|s| {
            field(s, "Uid:").iter().all(|u| *u == uid)
                && field(s, "CapEff:") == ["0000000000000000"]
                && field(s, "CapBnd:") == ["0000000000000000"]
                && field(s, "Seccomp:") == ["2"]
        })
    }));
    let server = Filters::compile(Mode::Log).unwrap().for_user(Some(user));
    assert!(crate::test_support::in_child(move || {
        server.apply(Thread::FsServer).unwrap();
        let s = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        field(&s, "Uid:").iter().all(|u| u == "0")
            && field(&s, "CapEff:")
                == [format!(
                    "{:016x}",
                    super::super::caps::mask(super::super::caps::FS_PASSTHROUGH)
                )]
    }));
}
