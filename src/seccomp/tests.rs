use super::bpf::{run, SeccompData};
use super::*;

const ALLOW: u32 = 0x7fff_0000;
const ERRNO: u32 = 0x0005_0000;
const KILL_PROCESS: u32 = 0x8000_0000;
const TRAP: u32 = 0x0003_0000;
const LOG: u32 = 0x7ffc_0000;

fn profile(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).expect("test profile parses")
}

fn program(json: &str) -> SeccompProgram {
    compile(&profile(json)).expect("compiles").0
}

fn call(nr: i64, args: [u64; 6]) -> SeccompData {
    SeccompData {
        nr: i32::try_from(nr).unwrap(),
        arch: AUDIT_ARCH_X86_64,
        instruction_pointer: 0,
        args,
    }
}

fn verdict_of(p: &SeccompProgram, nr: i64, args: [u64; 6]) -> u32 {
    run(&p.filter, &call(nr, args)).expect("the program runs")
}

#[test]
fn an_allow_list_with_an_errno_default() {
    let p = program(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
              {"names": ["read", "write", "arm_fadvise64_64", "exit_group"], "action": "SCMP_ACT_ALLOW"},
              {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ]}"#,
    );
    assert_eq!(p.flags, 0);
    assert_eq!(verdict_of(&p, libc::SYS_read, [0; 6]), ALLOW);
    assert_eq!(verdict_of(&p, libc::SYS_exit_group, [0; 6]), ALLOW);
    assert_eq!(
        verdict_of(&p, libc::SYS_clone3, [0; 6]),
        ERRNO | libc::ENOSYS as u32
    );
    assert_eq!(
        verdict_of(&p, libc::SYS_keyctl, [0; 6]),
        ERRNO | libc::EPERM as u32
    );
    let (_, skipped) = compile(&profile(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["arm_fadvise64_64", "read", "no_such_call"], "action": "SCMP_ACT_LOG"}]}"#,
    ))
    .unwrap();
    assert_eq!(skipped, ["arm_fadvise64_64", "no_such_call"]);
}

#[test]
fn foreign_architectures_and_x32_numbers_are_killed() {
    let p = program(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#);
    assert_eq!(verdict_of(&p, libc::SYS_read, [0; 6]), ALLOW);
    let mut i386 = call(3, [0; 6]);
    i386.arch = 0x4000_0003;
    assert_eq!(run(&p.filter, &i386), Ok(RET_KILL_THREAD));
    let x32 = call(i64::from(X32_SYSCALL_BIT) | libc::SYS_read, [0; 6]);
    assert_eq!(run(&p.filter, &x32), Ok(RET_KILL_THREAD));
}

#[test]
fn default_errno_and_actions_map_to_kernel_verdicts() {
    let p = program(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13,
            "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                      "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
            "syscalls": [
              {"names": ["getpid"], "action": "SCMP_ACT_KILL_PROCESS"},
              {"names": ["getppid"], "action": "SCMP_ACT_TRAP"},
              {"names": ["getuid"], "action": "SCMP_ACT_LOG"},
              {"names": ["getgid"], "action": "SCMP_ACT_KILL"},
              {"names": ["geteuid"], "action": "SCMP_ACT_TRACE", "errnoRet": 5}
            ]}"#,
    );
    assert_eq!(p.flags, FLAG_LOG | FLAG_SPEC_ALLOW | FLAG_TSYNC);
    assert_eq!(verdict_of(&p, libc::SYS_getpid, [0; 6]), KILL_PROCESS);
    assert_eq!(verdict_of(&p, libc::SYS_getppid, [0; 6]), TRAP);
    assert_eq!(verdict_of(&p, libc::SYS_getuid, [0; 6]), LOG);
    assert_eq!(verdict_of(&p, libc::SYS_getgid, [0; 6]), RET_KILL_THREAD);
    assert_eq!(verdict_of(&p, libc::SYS_geteuid, [0; 6]), 0x7ff0_0005);
    assert_eq!(verdict_of(&p, libc::SYS_read, [0; 6]), ERRNO | 13);
}

/// Every operator against values around both 32-bit halves, checked
/// against the same comparison in Rust.
#[test]
fn comparisons_use_all_64_bits() {
    let values = [
        0u64,
        1,
        0x7fff_ffff,
        0xffff_ffff,
        0x1_0000_0000,
        0x1_0000_0001,
        0x1_ffff_ffff,
        0xffff_ffff_0000_0000,
        u64::MAX - 1,
        u64::MAX,
    ];
    type Holds = fn(u64, u64) -> bool;
    let ops: [(&str, Holds); 6] = [
        ("SCMP_CMP_EQ", |a, v| a == v),
        ("SCMP_CMP_NE", |a, v| a != v),
        ("SCMP_CMP_LT", |a, v| a < v),
        ("SCMP_CMP_LE", |a, v| a <= v),
        ("SCMP_CMP_GT", |a, v| a > v),
        ("SCMP_CMP_GE", |a, v| a >= v),
    ];
    for (op, holds) in ops {
        for v in values {
            for index in [0usize, 5] {
                let p = program(&format!(
                    r#"{{"defaultAction": "SCMP_ACT_ERRNO",
                        "syscalls": [{{"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                                       "args": [{{"index": {index}, "value": {v}, "op": "{op}"}}]}}]}}"#
                ));
                for a in values {
                    let mut args = [0u64; 6];
                    args[index] = a;
                    let want = if holds(a, v) { ALLOW } else { ERRNO | 1 };
                    assert_eq!(
                        verdict_of(&p, libc::SYS_personality, args),
                        want,
                        "{op} arg{index}={a:#x} value={v:#x}"
                    );
                }
            }
        }
    }
}

#[test]
fn masked_eq_takes_the_mask_first_like_dockers_clone_rule() {
    // Docker's default: clone allowed unless it asks for a new namespace.
    let p = program(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": 2114060288, "valueTwo": 0,
                                    "op": "SCMP_CMP_MASKED_EQ"}]}]}"#,
    );
    let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
    assert_eq!(
        verdict_of(&p, libc::SYS_clone, [thread, 0, 0, 0, 0, 0]),
        ALLOW
    );
    let userns = thread | libc::CLONE_NEWUSER as u64;
    assert_eq!(
        verdict_of(&p, libc::SYS_clone, [userns, 0, 0, 0, 0, 0]),
        ERRNO | 1
    );
    // A high bit outside the mask does not matter; the datum's high half does.
    let p = program(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 1, "value": 18446744069414584335, "valueTwo": 4294967298,
                                    "op": "SCMP_CMP_MASKED_EQ"}]}]}"#,
    );
    // mask 0xffffffff_0000000f, datum 0x1_00000002
    assert_eq!(
        verdict_of(&p, libc::SYS_clone, [0, 0x1_0000_00f2, 0, 0, 0, 0]),
        ALLOW
    );
    assert_eq!(
        verdict_of(&p, libc::SYS_clone, [0, 0x2_0000_0002, 0, 0, 0, 0]),
        ERRNO | 1
    );
}

#[test]
fn args_of_one_entry_are_anded_unless_an_index_repeats() {
    let and = program(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
                                   {"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
    assert_eq!(
        verdict_of(&and, libc::SYS_socket, [2, 1, 0, 0, 0, 0]),
        ALLOW
    );
    assert_eq!(
        verdict_of(&and, libc::SYS_socket, [2, 2, 0, 0, 0, 0]),
        ERRNO | 1
    );
    assert_eq!(
        verdict_of(&and, libc::SYS_socket, [10, 1, 0, 0, 0, 0]),
        ERRNO | 1
    );
    let or = program(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                                   {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                                   {"index": 0, "value": 4294967295, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
    for a in [0, 8, 0xffff_ffff] {
        assert_eq!(
            verdict_of(&or, libc::SYS_personality, [a, 0, 0, 0, 0, 0]),
            ALLOW
        );
    }
    assert_eq!(
        verdict_of(&or, libc::SYS_personality, [9, 0, 0, 0, 0, 0]),
        ERRNO | 1
    );
}

#[test]
fn conditional_entries_come_before_the_unconditional_one() {
    let p = program(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
              {"names": ["ioctl"], "action": "SCMP_ACT_ALLOW"},
              {"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
               "args": [{"index": 1, "value": 21522, "op": "SCMP_CMP_EQ"}]},
              {"names": ["ioctl"], "action": "SCMP_ACT_KILL_PROCESS",
               "args": [{"index": 1, "value": 21522, "op": "SCMP_CMP_EQ"}]},
              {"names": ["ioctl"], "action": "SCMP_ACT_LOG"}
            ]}"#,
    );
    assert_eq!(
        verdict_of(&p, libc::SYS_ioctl, [0, 21522, 0, 0, 0, 0]),
        ERRNO | 22
    );
    assert_eq!(verdict_of(&p, libc::SYS_ioctl, [0, 1, 0, 0, 0, 0]), ALLOW);
    // A conditional entry alone falls back to the default.
    let p = program(
        r#"{"defaultAction": "SCMP_ACT_KILL_PROCESS",
            "syscalls": [{"names": ["ioctl"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 1, "value": 21522, "op": "SCMP_CMP_NE"}]}]}"#,
    );
    assert_eq!(verdict_of(&p, libc::SYS_ioctl, [0, 1, 0, 0, 0, 0]), ALLOW);
    assert_eq!(
        verdict_of(&p, libc::SYS_ioctl, [0, 21522, 0, 0, 0, 0]),
        KILL_PROCESS
    );
}

#[test]
fn profiles_husk_cannot_honour_are_refused_with_the_fix() {
    let err = |json: &str| compile(&profile(json)).unwrap_err();
    let e = err(r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}"#);
    assert!(matches!(e, SeccompError::Notify { .. }));
    assert!(e.to_string().contains("remove listenerPath"), "{e}");
    let e = err(r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]}"#);
    assert!(e.to_string().contains("syscall mount"), "{e}");
    let e = err(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#);
    assert!(e.to_string().contains("defaultAction"), "{e}");
    let e = err(r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}"#);
    assert!(matches!(e, SeccompError::ErrnoAction { .. }), "{e}");
    let e = err(r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 65536}"#);
    assert_eq!(
        e,
        SeccompError::ErrnoRange {
            what: "defaultAction".into(),
            value: 65536
        }
    );
    let e = err(r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#);
    assert_eq!(
        e,
        SeccompError::ArgIndex {
            name: "read".into(),
            index: 6
        }
    );
}

#[test]
fn a_profile_past_the_kernels_limit_is_refused() {
    let entry = r#"{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_GT"},
                             {"index": 1, "value": 1, "op": "SCMP_CMP_GT"},
                             {"index": 2, "value": 1, "op": "SCMP_CMP_GT"}]}"#;
    let entries = vec![entry; 300].join(",");
    let e = compile(&profile(&format!(
        r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{entries}]}}"#
    )))
    .unwrap_err();
    assert!(matches!(e, SeccompError::TooLong(_)), "{e}");
}

#[test]
fn every_known_call_in_one_allow_entry_fits_and_dispatches() {
    let names: Vec<String> = syscalls::X86_64
        .iter()
        .map(|(n, _)| format!("\"{n}\""))
        .collect();
    let p = program(&format!(
        r#"{{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{{"names": [{}], "action": "SCMP_ACT_ALLOW"}}]}}"#,
        names.join(",")
    ));
    assert!(p.filter.len() < crate::agent_proto::BPF_MAXINSNS);
    for (_, nr) in syscalls::X86_64 {
        assert_eq!(verdict_of(&p, i64::from(*nr), [0; 6]), ALLOW);
    }
    assert_eq!(verdict_of(&p, 1000, [0; 6]), ERRNO | 1);
}

/// The host kernel's checker takes what the compiler emits (every
/// comparison block, long jumps, the arch prelude) and runs it as the
/// interpreter does: a forked child loads the filter and reports the
/// errno of a few calls through its exit code.
#[test]
fn the_kernel_loads_and_runs_compiled_filters() {
    let p = program(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
              {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 11,
               "args": [{"index": 0, "value": 4294967296, "op": "SCMP_CMP_GE"},
                        {"index": 1, "value": 7, "op": "SCMP_CMP_LT"}]},
              {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 12,
               "args": [{"index": 0, "value": 255, "valueTwo": 3, "op": "SCMP_CMP_MASKED_EQ"},
                        {"index": 2, "value": 0, "op": "SCMP_CMP_NE"},
                        {"index": 3, "value": 9, "op": "SCMP_CMP_LE"},
                        {"index": 4, "value": 9, "op": "SCMP_CMP_GT"},
                        {"index": 5, "value": 0, "op": "SCMP_CMP_EQ"}]},
              {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ]}"#,
    );
    let filter: Vec<libc::sock_filter> = p
        .filter
        .iter()
        .map(|f| libc::sock_filter {
            code: f.0,
            jt: f.1,
            jf: f.2,
            k: f.3,
        })
        .collect();
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).unwrap(),
        filter: filter.as_ptr().cast_mut(),
    };
    // The errno each call should see (0: it ran), in exit-code bits.
    let calls: [([u64; 6], i64, i32); 4] = [
        ([1 << 32, 6, 0, 0, 0, 0], libc::SYS_getpriority, 11),
        ([0x103, 0, 1, 9, 10, 0], libc::SYS_getpriority, 12),
        ([0x103, 0, 1, 9, 9, 0], libc::SYS_getpriority, 0),
        ([0; 6], libc::SYS_uname, 38),
    ];
    // SAFETY: the child makes raw system calls only (no allocation or
    // locks) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let mut code = 0;
        // SAFETY: prctl and seccomp read integers and the live `prog`;
        // the calls tested get integer arguments or, for uname, a buffer.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                libc::_exit(100);
            }
            let mut buf = [0u8; 512];
            for (bit, (args, nr, want)) in calls.iter().enumerate() {
                let rc = if *nr == libc::SYS_uname {
                    libc::syscall(*nr, buf.as_mut_ptr())
                } else {
                    libc::syscall(*nr, args[0], args[1], args[2], args[3], args[4], args[5])
                };
                let got = if rc == -1 {
                    *libc::__errno_location()
                } else {
                    0
                };
                // getpriority of a bad `which` fails EINVAL when it runs.
                let ran = *want == 0 && (got == 0 || got == libc::EINVAL);
                if !(ran || got == *want) {
                    code |= 1 << bit;
                }
            }
            libc::_exit(code);
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "100: the kernel refused the filter; else a bit per wrong call"
    );
}
