//! Starting a container process.
//!
//! Init has several threads, so between `fork` and `exec` the child may only
//! make async-signal-safe calls: no allocation, no locks. Everything the child
//! needs is therefore built first ([`Prepared`], from a [`ProcessSpec`]), and
//! the child ([`child_main`]) only makes raw system calls on that data, in this
//! order:
//!
//! 1. reset the signal mask and dispositions (init ignores `SIGPIPE`);
//! 2. `setsid`; with a terminal, make the pty slave the controlling tty;
//!    install stdin/stdout/stderr; mark every other descriptor close-on-exec;
//! 3. rlimits; `oom_score_adj` (while still privileged); `chdir(cwd)`;
//!    the container's seccomp filter here when `no_new_privileges` is off
//!    (loading it then needs `CAP_SYS_ADMIN`, which step 4 may drop: runc's
//!    order);
//! 4. with `capabilities`: drop the bounding set, `PR_SET_KEEPCAPS`;
//! 5. `setgroups` (additional gids), `setgid`, `setuid`;
//! 6. with `capabilities`: effective/permitted/inheritable by `capset`,
//!    ambient by `prctl`;
//! 7. umask; `chdir(cwd)` again if it failed as root; `no_new_privileges`,
//!    then the seccomp filter (as late as possible, as runc loads it);
//! 8. `execve` of each `PATH` candidate, like `execvp`.
//!
//! A failing step writes `(step, index, errno)` to a close-on-exec pipe and
//! exits; the parent reads the pipe until EOF (exec succeeded) or a report,
//! which becomes a [`SpawnError::Child`] naming the step, e.g.
//! `exec /bin/nope: no such file or directory`.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, RawFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;

use super::caps;
use super::container::{fork_in_pid_ns, Holder, Namespaces};
use super::reaper::{OnExit, Reaper};
use crate::agent_proto::{FrameKind, ProcessSpec, SeccompProgram, SockFilter, BPF_MAXINSNS};
use crate::proto;

/// Errors starting a process.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("the process has no arguments")]
    NoArgs,
    #[error("exec: \"{program}\": executable file not found in $PATH")]
    NotFound { program: String },
    /// A program given by path that is not there (runc's words).
    #[error("exec: \"{program}\": stat {program}: {}", errno_text(*errno))]
    Stat { program: String, errno: Errno },
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("linux.seccomp: a filter of {len} instructions (the kernel takes 1 to 4096)")]
    Seccomp { len: usize },
    #[error("unknown rlimit type {name}")]
    UnknownRlimit { name: String },
    #[error("creating the process's {what}: {source}")]
    Stdio {
        what: &'static str,
        source: io::Error,
    },
    #[error("fork: {}", errno_text(*errno))]
    Fork { errno: Errno },
    #[error("reading the child's setup report: {source}")]
    Report { source: io::Error },
    /// A step in the child failed; `step` says which (and on what).
    #[error("{step}: {}", errno_text(*errno))]
    Child { step: String, errno: Errno },
}

impl SpawnError {
    /// The exit code a shell (and Docker) gives this failure: 127 for a
    /// missing program, 126 for one that cannot be run.
    pub fn shell_code(&self) -> i32 {
        match self {
            SpawnError::NotFound { .. } => 127,
            SpawnError::Stat { errno, .. } if *errno == Errno::ENOENT => 127,
            SpawnError::Child { errno, .. } if *errno == Errno::ENOENT => 127,
            _ => 126,
        }
    }
}

/// The errno of an I/O error (`EIO` when it has none).
pub fn errno_of(e: io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// An errno as Go (runc) spells it: `no such file or directory`. Engines
/// match on these words (Docker maps them to exit codes 126/127).
pub fn errno_text(errno: Errno) -> String {
    let desc = errno.desc();
    let mut chars = desc.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("{errno}"),
    }
}

/// One rlimit, resolved.
#[derive(Debug, Clone)]
struct Limit {
    name: String,
    resource: libc::c_int,
    soft: u64,
    hard: u64,
}

/// Capability changes, as masks.
#[derive(Debug, Clone, Default)]
struct CapPlan {
    /// Capabilities to drop from the bounding set.
    bounding_drop: Vec<u32>,
    effective: Option<u64>,
    permitted: Option<u64>,
    inheritable: Option<u64>,
    ambient: Option<Vec<u32>>,
}

/// A process ready to be started: every string and table the child needs,
/// built (and checked) in advance.
#[derive(Debug)]
pub struct Prepared {
    /// The container's root, seen from the agent: its terminal comes from
    /// the container's own `/dev/ptmx` (its devpts instance), as under runc.
    root: Option<File>,
    program: String,
    /// Paths to try with `execve`, in order.
    candidates: Vec<CString>,
    /// Whether `program` was looked up in `PATH` (changes the not-found text).
    searched: bool,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    umask: Option<libc::mode_t>,
    limits: Vec<Limit>,
    oom_score_adj: Option<Vec<u8>>,
    no_new_privileges: bool,
    /// The container's seccomp filter and its `SECCOMP_FILTER_FLAG_*`.
    seccomp: Option<(Vec<libc::sock_filter>, u32)>,
    caps: Option<CapPlan>,
    terminal: bool,
    console_size: Option<(u16, u16)>,
    /// Names in `capabilities` this kernel does not know (ignored, as runc:
    /// the caller reports them).
    pub unknown_caps: Vec<String>,
}

/// A running process and init's ends of its stdio.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    /// Write end of its stdin pipe (`None` with a terminal).
    pub stdin: Option<File>,
    /// What to read its output from, and as which frame kind.
    pub outputs: Vec<(File, FrameKind)>,
    /// The pty master (its input and window size), with a terminal.
    pub terminal: Option<File>,
}

/// OCI rlimit names.
const RLIMITS: [(&str, libc::c_int); 16] = [
    ("RLIMIT_AS", 9),
    ("RLIMIT_CORE", 4),
    ("RLIMIT_CPU", 0),
    ("RLIMIT_DATA", 2),
    ("RLIMIT_FSIZE", 1),
    ("RLIMIT_LOCKS", 10),
    ("RLIMIT_MEMLOCK", 8),
    ("RLIMIT_MSGQUEUE", 12),
    ("RLIMIT_NICE", 13),
    ("RLIMIT_NOFILE", 7),
    ("RLIMIT_NPROC", 6),
    ("RLIMIT_RSS", 5),
    ("RLIMIT_RTPRIO", 14),
    ("RLIMIT_RTTIME", 15),
    ("RLIMIT_SIGPENDING", 11),
    ("RLIMIT_STACK", 3),
];

fn rlimit_resource(name: &str) -> Option<libc::c_int> {
    RLIMITS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, r)| *r)
}

fn cstring(text: &str, what: &'static str) -> Result<CString, SpawnError> {
    CString::new(text).map_err(|_| SpawnError::Nul { what })
}

/// The home directory of `uid` in an `/etc/passwd` text.
fn home_of(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let entry_uid: u32 = fields.get(2)?.parse().ok()?;
        (entry_uid == uid)
            .then(|| fields.get(5).map(|h| (*h).to_owned()))
            .flatten()
            .filter(|h| !h.is_empty())
    })
}

/// Opens `path` as if `root` were `/` (`openat2` with `RESOLVE_IN_ROOT`);
/// without `root`, plainly.
fn open_in(root: Option<&File>, path: &Path, flags: libc::c_int) -> io::Result<File> {
    use nix::fcntl::{OpenHow, ResolveFlag};
    let Some(root) = root else {
        return std::fs::OpenOptions::new()
            .read(true)
            .write(flags & libc::O_ACCMODE == libc::O_RDWR)
            .custom_flags(flags & !libc::O_ACCMODE)
            .open(path);
    };
    let how = OpenHow::new()
        .flags(OFlag::from_bits_truncate(flags) | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT);
    let fd = nix::fcntl::openat2(root.as_raw_fd(), path, how)?;
    // SAFETY: openat2 returned this descriptor to us alone.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// What is at `path` under `root` (symbolic links followed inside it).
fn metadata_in(root: Option<&File>, path: &Path) -> io::Result<std::fs::Metadata> {
    match root {
        None => std::fs::metadata(path),
        Some(_) => open_in(root, path, libc::O_PATH)?.metadata(),
    }
}

/// A text file under `root`.
fn read_in(root: Option<&File>, path: &Path) -> io::Result<String> {
    let mut text = String::new();
    open_in(root, path, 0)?.read_to_string(&mut text)?;
    Ok(text)
}

/// Where `execve` should look for `program`: itself when it has a `/`, else
/// each `PATH` entry (an empty entry is the working directory).
fn candidates(program: &str, path_var: &str) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_owned()];
    }
    path_var
        .split(':')
        .map(|dir| {
            if dir.is_empty() {
                program.to_owned()
            } else {
                format!("{}/{program}", dir.trim_end_matches('/'))
            }
        })
        .collect()
}

impl Prepared {
    /// Checks and converts a process spec. The program is looked up now (as
    /// runc does at create), so a missing one fails here; `HOME` is added
    /// from `/etc/passwd` when the environment has none.
    pub fn new(spec: &ProcessSpec) -> Result<Prepared, SpawnError> {
        Prepared::new_in(spec, None)
    }

    /// [`Prepared::new`], with the program and `/etc/passwd` looked up in
    /// the directory `root` (the container's root, seen from the agent):
    /// symbolic links resolve inside it.
    pub fn new_in(spec: &ProcessSpec, root: Option<&File>) -> Result<Prepared, SpawnError> {
        let program = spec.args.first().ok_or(SpawnError::NoArgs)?.clone();
        let mut env = spec.env.clone();
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            let home = read_in(root, Path::new("/etc/passwd"))
                .ok()
                .and_then(|p| home_of(&p, spec.uid))
                .unwrap_or_else(|| "/".to_owned());
            env.push(format!("HOME={home}"));
        }
        let path_var = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(proto::DEFAULT_PATH)
            .to_owned();
        let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
        let searched = !program.contains('/');
        let found = candidates(&program, &path_var);
        let is_file =
            |c: &str| metadata_in(root, &Path::new(cwd).join(c)).is_ok_and(|m| m.is_file());
        if searched && !found.iter().any(|c| is_file(c)) {
            return Err(SpawnError::NotFound { program });
        }
        if !searched {
            if let Err(e) = metadata_in(root, &Path::new(cwd).join(&program)) {
                let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT));
                return Err(SpawnError::Stat { program, errno });
            }
        }
        let limits = spec
            .rlimits
            .iter()
            .map(|r| {
                Ok(Limit {
                    name: r.kind.clone(),
                    resource: rlimit_resource(&r.kind).ok_or_else(|| {
                        SpawnError::UnknownRlimit {
                            name: r.kind.clone(),
                        }
                    })?,
                    soft: r.soft,
                    hard: r.hard,
                })
            })
            .collect::<Result<Vec<_>, SpawnError>>()?;
        let mut unknown_caps = Vec::new();
        let caps = spec.capabilities.as_ref().map(|c| {
            let last = caps::last_cap(
                std::fs::read_to_string(caps::CAP_LAST_CAP_PATH)
                    .ok()
                    .as_deref(),
            );
            let mut set = |names: &Option<Vec<String>>| {
                names.as_ref().map(|n| {
                    let (bits, unknown) = caps::mask(n, last);
                    unknown_caps.extend(unknown);
                    bits
                })
            };
            let bounding = set(&c.bounding);
            let effective = set(&c.effective);
            let permitted = set(&c.permitted);
            let inheritable = set(&c.inheritable);
            let ambient = set(&c.ambient);
            let to_list = |bits: u64| {
                (0..=last.min(63))
                    .filter(|cap| bits & (1 << cap) != 0)
                    .collect::<Vec<u32>>()
            };
            CapPlan {
                bounding_drop: bounding.map(|b| to_list(!b)).unwrap_or_default(),
                effective,
                permitted,
                inheritable,
                ambient: ambient.map(to_list),
            }
        });
        unknown_caps.sort();
        unknown_caps.dedup();
        Ok(Prepared {
            root: root.and_then(|r| r.try_clone().ok()),
            candidates: found
                .iter()
                .map(|c| cstring(c, "the program path"))
                .collect::<Result<_, _>>()?,
            searched,
            argv: spec
                .args
                .iter()
                .map(|a| cstring(a, "an argument"))
                .collect::<Result<_, _>>()?,
            envp: env
                .iter()
                .map(|e| cstring(e, "an environment entry"))
                .collect::<Result<_, _>>()?,
            cwd: cstring(cwd, "the working directory")?,
            uid: spec.uid,
            gid: spec.gid,
            groups: spec.additional_gids.clone(),
            umask: spec.umask,
            limits,
            oom_score_adj: spec.oom_score_adj.map(|v| v.to_string().into_bytes()),
            no_new_privileges: spec.no_new_privileges,
            seccomp: None,
            caps,
            terminal: spec.terminal,
            console_size: spec.console_size,
            unknown_caps,
            program,
        })
    }

    /// Loads `program` into the process before it executes (see the
    /// module's order). Refuses a filter the kernel could not take.
    pub fn set_seccomp(&mut self, program: &SeccompProgram) -> Result<(), SpawnError> {
        if program.filter.is_empty() || program.filter.len() > BPF_MAXINSNS {
            return Err(SpawnError::Seccomp {
                len: program.filter.len(),
            });
        }
        let filter = program
            .filter
            .iter()
            .map(|&SockFilter(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
            .collect();
        self.seccomp = Some((filter, program.flags));
        Ok(())
    }

    /// Whether the process gets a terminal.
    pub fn terminal(&self) -> bool {
        self.terminal
    }

    /// The step a child report names, for the message.
    fn step_text(&self, step: Step, index: u32) -> String {
        let at = |i: u32| usize::try_from(i).ok();
        match step {
            Step::Signals => "reset signals".into(),
            Step::Setsid => "setsid".into(),
            Step::Tty => "set the controlling terminal".into(),
            Step::Stdio => "set up stdio".into(),
            Step::Rlimit => format!(
                "setrlimit {}",
                at(index)
                    .and_then(|i| self.limits.get(i))
                    .map_or("?", |l| l.name.as_str())
            ),
            Step::Oom => "write oom_score_adj".into(),
            Step::Bounding => format!("drop {} from the bounding set", caps::name(index)),
            Step::KeepCaps => "prctl(PR_SET_KEEPCAPS)".into(),
            Step::Setgroups => "setgroups".into(),
            Step::Setgid => format!("setgid {}", self.gid),
            Step::Setuid => format!("setuid {}", self.uid),
            Step::Capset => "set capabilities".into(),
            Step::Chdir => format!("chdir to cwd {:?}", self.cwd.to_string_lossy()),
            Step::NoNewPrivs => "prctl(PR_SET_NO_NEW_PRIVS)".into(),
            Step::Seccomp => "load the seccomp filter (linux.seccomp)".into(),
            Step::Exec => format!(
                "exec {}",
                at(index).and_then(|i| self.candidates.get(i)).map_or_else(
                    || self.program.clone(),
                    |c| c.to_string_lossy().into_owned()
                )
            ),
            Step::ExecNotFound => format!("exec: {:?}", self.program),
            Step::Enter => format!("join the container's namespace #{index}"),
            Step::User => match index {
                0 => "join the container's user namespace".into(),
                1 => "create the container's user namespace".into(),
                _ => "map the container's user namespace".into(),
            },
        }
    }
}

/// The child's steps, as reported over the error pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Step {
    Signals = 1,
    Setsid,
    Tty,
    Stdio,
    Rlimit,
    Oom,
    Bounding,
    KeepCaps,
    Setgroups,
    Setgid,
    Setuid,
    Capset,
    Chdir,
    NoNewPrivs,
    Exec,
    ExecNotFound,
    Seccomp,
    Enter,
    User,
}

impl Step {
    const ALL: [Step; 19] = [
        Step::Signals,
        Step::Setsid,
        Step::Tty,
        Step::Stdio,
        Step::Rlimit,
        Step::Oom,
        Step::Bounding,
        Step::KeepCaps,
        Step::Setgroups,
        Step::Setgid,
        Step::Setuid,
        Step::Capset,
        Step::Chdir,
        Step::NoNewPrivs,
        Step::Exec,
        Step::ExecNotFound,
        Step::Seccomp,
        Step::Enter,
        Step::User,
    ];

    fn from_u32(v: u32) -> Option<Step> {
        Step::ALL.iter().copied().find(|s| *s as u32 == v)
    }
}

/// What the holder sends when its new user namespace needs its maps, and
/// the agent's answer once they are written.
pub const USER_MAP_REQUEST: &[u8] = b"map";
pub const USER_MAP_DONE: u8 = b'k';

/// Size of a child's failure report: step, index, errno.
const REPORT_LEN: usize = 12;
/// Exit code of a child whose setup failed (its report says why).
const SETUP_FAILED_CODE: libc::c_int = 127;
/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_VERSION_3: u32 = 0x2008_0522;
/// `/proc/self/oom_score_adj`.
const OOM_SCORE_ADJ: &CStr = c"/proc/self/oom_score_adj";
/// Highest signal number to reset.
const LAST_SIGNAL: libc::c_int = 64;

/// `struct __user_cap_header_struct` (`linux/capability.h`).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct CapData {
    pub effective: u32,
    pub permitted: u32,
    pub inheritable: u32,
}

/// This thread's capability sets (`capget`, version 3). Async-signal-safe.
pub(crate) fn capget() -> Result<[CapData; 2], Errno> {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget reads the header and fills two CapData structs (the v3
    // layout), both live locals.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &header as *const CapHeader,
            data.as_mut_ptr(),
        )
    };
    Errno::result(rc).map(|_| data)
}

/// Sets this thread's capability sets (`capset`, version 3).
/// Async-signal-safe.
pub(crate) fn capset(data: &[CapData; 2]) -> Result<(), Errno> {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads the header and two CapData structs, both live.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    Errno::result(rc).map(drop)
}

/// Pointers to `list`'s strings and a terminating NULL, as `execve` takes.
pub(crate) fn null_terminated(list: &[CString]) -> Vec<*const libc::c_char> {
    list.iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

#[repr(C)]
struct Rlimit64 {
    cur: u64,
    max: u64,
}

/// What the child works on; all of it built before `fork`.
struct ChildCtx<'a> {
    p: &'a Prepared,
    /// The container's cgroup's `cgroup.procs` (a pod's container): the
    /// child moves itself there first, as runc's exec joins the
    /// container's cgroup.
    cgroup_procs: Option<RawFd>,
    /// Namespaces to join first (`setns`), the mount one first.
    enter: &'a [RawFd],
    /// The container's user namespace, joined after the limits (which
    /// may need privilege the namespace does not give).
    user_ns: Option<RawFd>,
    /// The holder's control socket when it makes the container's user
    /// namespace: it unshares one there and has the agent write its maps.
    new_user: Option<RawFd>,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    stdio: [RawFd; 3],
    tty: bool,
    report_fd: RawFd,
    as_root: bool,
}

/// Loads the process's seccomp filter, if it has one. Async-signal-safe.
fn load_seccomp(ctx: &ChildCtx) {
    let Some((filter, flags)) = &ctx.p.seccomp else {
        return;
    };
    let prog = libc::sock_fprog {
        // Checked against BPF_MAXINSNS in `set_seccomp`.
        len: u16::try_from(filter.len()).unwrap_or(u16::MAX),
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: seccomp reads `prog` and the `len` instructions it points to,
    // a live allocation of the Prepared this child was forked with; the
    // kernel copies the program.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::c_ulong::from(*flags),
            &prog as *const libc::sock_fprog,
        )
    };
    check(ctx, rc, Step::Seccomp, 0);
}

/// Reports a failed step to the parent and exits. Async-signal-safe.
fn fail(ctx: &ChildCtx, step: Step, index: u32, errno: i32) -> ! {
    let mut report = [0u8; REPORT_LEN];
    report[0..4].copy_from_slice(&(step as u32).to_le_bytes());
    report[4..8].copy_from_slice(&index.to_le_bytes());
    report[8..12].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: writes from a live stack buffer of the given length; a short or
    // failed write only loses the report (the parent then sees a truncated one).
    let _ = unsafe { libc::write(ctx.report_fd, report.as_ptr().cast(), REPORT_LEN) };
    // SAFETY: _exit ends the child without running atexit handlers or
    // touching locks; it is async-signal-safe.
    unsafe { libc::_exit(SETUP_FAILED_CODE) }
}

fn errno() -> i32 {
    Errno::last_raw()
}

/// Checks a raw syscall result (negative is failure) and reports failures.
fn check(ctx: &ChildCtx, result: libc::c_long, step: Step, index: u32) {
    if result < 0 {
        fail(ctx, step, index, errno());
    }
}

/// The child between `fork` and `exec`. Only raw system calls on prepared
/// data: see the module docs for the order.
fn child_main(ctx: &ChildCtx) -> ! {
    let p = ctx.p;
    // 0. The container's cgroup and namespaces (an exec or a hook).
    if let Some(fd) = ctx.cgroup_procs {
        // SAFETY: writes from a static buffer to a descriptor opened before
        // the fork.
        let rc = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        check(
            ctx,
            libc::c_long::try_from(rc).unwrap_or(-1),
            Step::Enter,
            0,
        );
    }
    for (i, fd) in (0..).zip(ctx.enter) {
        // SAFETY: setns takes a descriptor and flags only.
        let rc = unsafe { libc::setns(*fd, 0) };
        check(ctx, rc.into(), Step::Enter, i);
    }
    // 1. Signals: empty mask, default dispositions (SIG_IGN survives exec).
    // SAFETY: sigset_t is plain data; an all-zero value is then initialized
    // by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t; sigprocmask reads it only.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut())
    };
    check(ctx, rc.into(), Step::Signals, 0);
    for sig in 1..=LAST_SIGNAL {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: resetting a disposition to SIG_DFL installs no handler;
            // errors (reserved signals) are harmless and ignored.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }

    // 2. Session, terminal, stdio.
    // SAFETY: setsid takes no arguments.
    check(ctx, unsafe { libc::setsid() }.into(), Step::Setsid, 0);
    let mut stdio = ctx.stdio;
    for fd in stdio.iter_mut() {
        // Move descriptors out of 0..3 first, so dup2 cannot clobber them.
        if *fd < 3 {
            // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor this process owns.
            let moved = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3) };
            check(ctx, moved.into(), Step::Stdio, 0);
            *fd = moved;
        }
    }
    if ctx.tty {
        // SAFETY: TIOCSCTTY takes an int argument and touches no memory.
        let rc = unsafe { libc::ioctl(stdio[0], libc::TIOCSCTTY, 0) };
        check(ctx, rc.into(), Step::Tty, 0);
    }
    for (target, fd) in (0..).zip(stdio) {
        // SAFETY: dup2 between descriptors of this process.
        check(
            ctx,
            unsafe { libc::dup2(fd, target) }.into(),
            Step::Stdio,
            0,
        );
    }
    // Nothing but stdio survives exec, whatever other threads had open at
    // fork time (Linux 5.11+; older kernels rely on O_CLOEXEC everywhere).
    // SAFETY: close_range only changes descriptor flags.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };

    // 3. Limits, OOM score, working directory (first try, as root).
    for (i, limit) in (0..).zip(&p.limits) {
        let new = Rlimit64 {
            cur: limit.soft,
            max: limit.hard,
        };
        // SAFETY: prlimit64 on ourselves (pid 0) reads `new`, a live struct
        // laid out like the kernel's rlimit64, and writes nothing (null old).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_prlimit64,
                0,
                limit.resource,
                &new as *const Rlimit64,
                std::ptr::null_mut::<Rlimit64>(),
            )
        };
        check(ctx, rc, Step::Rlimit, i);
    }
    if let Some(value) = &p.oom_score_adj {
        // SAFETY: opens a constant, NUL-terminated path.
        let fd = unsafe { libc::open(OOM_SCORE_ADJ.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        check(ctx, fd.into(), Step::Oom, 0);
        // SAFETY: writes from a live byte buffer of the given length.
        let n = unsafe { libc::write(fd, value.as_ptr().cast(), value.len()) };
        check(ctx, n.try_into().unwrap_or(-1), Step::Oom, 0);
        // SAFETY: closes the descriptor just opened.
        unsafe { libc::close(fd) };
    }
    // 3b. The user namespace, once the limits are set (as runc sets them
    // from outside it).
    if let Some(fd) = ctx.user_ns {
        // SAFETY: setns takes a descriptor and flags only.
        let rc = unsafe { libc::setns(fd, libc::CLONE_NEWUSER) };
        check(ctx, rc.into(), Step::User, 0);
    }
    if let Some(control) = ctx.new_user {
        // SAFETY: unshare takes flags only; this process is single-threaded.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
        check(ctx, rc.into(), Step::User, 1);
        // SAFETY: writes a constant buffer; reads one byte into a local.
        let sent = unsafe {
            libc::write(
                control,
                USER_MAP_REQUEST.as_ptr().cast(),
                USER_MAP_REQUEST.len(),
            )
        };
        check(ctx, sent.try_into().unwrap_or(-1), Step::User, 2);
        let mut ack = [0u8; 1];
        // SAFETY: as above.
        let got = unsafe { libc::read(control, ack.as_mut_ptr().cast(), 1) };
        if got != 1 || ack[0] != USER_MAP_DONE {
            fail(ctx, Step::User, 2, libc::EPROTO);
        }
    }
    // SAFETY: chdir reads a NUL-terminated path.
    let cwd_done = unsafe { libc::chdir(p.cwd.as_ptr()) } == 0;

    if !p.no_new_privileges {
        load_seccomp(ctx);
    }

    // 4. Bounding set, keep capabilities across setuid.
    if let Some(plan) = &p.caps {
        for &cap in &plan.bounding_drop {
            // SAFETY: prctl with integer arguments only.
            let rc =
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
            check(ctx, rc.into(), Step::Bounding, cap);
        }
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
        check(ctx, rc.into(), Step::KeepCaps, 0);
    }

    // 5. Identity. Raw syscalls: after fork this is the only thread, and
    // the libc wrappers would try to synchronize threads that are gone.
    if ctx.as_root || !p.groups.is_empty() {
        // SAFETY: setgroups reads `groups.len()` gids from a live slice.
        let rc = unsafe { libc::syscall(libc::SYS_setgroups, p.groups.len(), p.groups.as_ptr()) };
        check(ctx, rc, Step::Setgroups, 0);
    }
    // SAFETY: setgid/setuid take integers.
    check(
        ctx,
        unsafe { libc::syscall(libc::SYS_setgid, p.gid) },
        Step::Setgid,
        0,
    );
    // SAFETY: as above.
    check(
        ctx,
        unsafe { libc::syscall(libc::SYS_setuid, p.uid) },
        Step::Setuid,
        0,
    );

    // 6. Capability sets.
    if let Some(plan) = &p.caps {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
        check(ctx, rc.into(), Step::KeepCaps, 0);
        let mut data = capget().unwrap_or_else(|e| fail(ctx, Step::Capset, 0, e as i32));
        let split = |bits: u64| [(bits & 0xffff_ffff) as u32, (bits >> 32) as u32];
        for (i, slot) in data.iter_mut().enumerate() {
            if let Some(bits) = plan.effective {
                slot.effective = split(bits)[i];
            }
            if let Some(bits) = plan.permitted {
                slot.permitted = split(bits)[i];
            }
            if let Some(bits) = plan.inheritable {
                slot.inheritable = split(bits)[i];
            }
        }
        if let Err(e) = capset(&data) {
            fail(ctx, Step::Capset, 0, e as i32);
        }
        if let Some(ambient) = &plan.ambient {
            // Ambient capabilities need the kernel's support and the cap in
            // permitted and inheritable; like runc, a failure is not fatal.
            // SAFETY: prctl with integer arguments only.
            unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL,
                    0,
                    0,
                    0,
                )
            };
            for &cap in ambient {
                // SAFETY: prctl with integer arguments only.
                unsafe {
                    libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE,
                        libc::c_ulong::from(cap),
                        0,
                        0,
                    )
                };
            }
        }
    }

    // 7. umask, working directory (as the user, if root could not), NNP.
    if let Some(mask) = p.umask {
        // SAFETY: umask takes an integer.
        unsafe { libc::umask(mask) };
    }
    if !cwd_done {
        // SAFETY: chdir reads a NUL-terminated path.
        check(
            ctx,
            unsafe { libc::chdir(p.cwd.as_ptr()) }.into(),
            Step::Chdir,
            0,
        );
    }
    if p.no_new_privileges {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        check(ctx, rc.into(), Step::NoNewPrivs, 0);
        load_seccomp(ctx);
    }

    // 8. exec, trying each candidate as execvp does.
    let mut denied: Option<u32> = None;
    let mut last = libc::ENOENT;
    for (i, path) in (0..).zip(&p.candidates) {
        // SAFETY: path is NUL-terminated; argv and envp are NULL-terminated
        // arrays of pointers into CStrings that outlive this call.
        unsafe { libc::execve(path.as_ptr(), ctx.argv.as_ptr(), ctx.envp.as_ptr()) };
        match errno() {
            e @ (libc::ENOENT | libc::ENOTDIR) => last = e,
            libc::EACCES => {
                denied.get_or_insert(i);
            }
            e => fail(ctx, Step::Exec, i, e),
        }
    }
    match denied {
        Some(i) => fail(ctx, Step::Exec, i, libc::EACCES),
        None if p.searched => fail(ctx, Step::ExecNotFound, 0, libc::ENOENT),
        None => fail(ctx, Step::Exec, 0, last),
    }
}

/// Opens a pty pair: master, and slave (both close-on-exec, no controlling
/// terminal), sized `size` (rows, columns).
pub fn open_pty(size: Option<(u16, u16)>) -> io::Result<(File, File)> {
    open_pty_in(None, size)
}

/// [`open_pty`] from the `/dev/ptmx` under `root` (a container's), or the
/// guest's where that has none.
pub fn open_pty_in(root: Option<&File>, size: Option<(u16, u16)>) -> io::Result<(File, File)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY;
    let master = match open_in(root, Path::new("/dev/ptmx"), flags) {
        Ok(m) => m,
        Err(_) if root.is_some() => open_in(None, Path::new("/dev/ptmx"), flags)?,
        Err(e) => return Err(e),
    };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from a live local.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor,
    // which we own from here on.
    let peer = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    let slave = if peer >= 0 {
        // SAFETY: `peer` is a fresh descriptor nothing else owns.
        unsafe { File::from_raw_fd(peer) }
    } else {
        // Kernels before 4.13: open the slave by its number.
        let mut number: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes one unsigned int to a live local.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut number) } < 0 {
            return Err(io::Error::last_os_error());
        }
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(format!("/dev/pts/{number}"))?
    };
    if let Some((rows, cols)) = size {
        resize_pty(&master, rows, cols)?;
    }
    Ok((master, slave))
}

/// Sets a pty's window size (`TIOCSWINSZ`).
pub fn resize_pty(master: &File, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a live local.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn pipe() -> Result<(File, File), SpawnError> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Stdio {
        what: "pipes",
        source: e.into(),
    })?;
    Ok((File::from(r), File::from(w)))
}

/// Starts `p`, registering `on_exit` with the reaper for its status. Returns
/// once the program has been executed, or with the child's report of what
/// failed (the failed child is reaped like any other).
pub fn spawn(p: &Prepared, reaper: &Reaper, on_exit: OnExit) -> Result<Spawned, SpawnError> {
    spawn_with(p, reaper, on_exit, Launch::Fork)
}

/// How [`spawn_with`] starts the process.
pub enum Launch<'a> {
    /// A child of init, in init's namespaces (a container without a
    /// holder: the agent's tests).
    Fork,
    /// A child of init that joins the container's namespaces (an exec, a
    /// guest hook).
    Enter(&'a Namespaces),
    /// The container's holder becomes the process (its main process).
    Handoff(&'a Holder),
}

/// [`spawn`], started as `launch` says.
pub fn spawn_with(
    p: &Prepared,
    reaper: &Reaper,
    on_exit: OnExit,
    launch: Launch<'_>,
) -> Result<Spawned, SpawnError> {
    // The child's ends (closed here after fork) and ours.
    let child_ends: Vec<File>;
    let stdio: [RawFd; 3];
    let mut spawned = Spawned {
        pid: 0,
        stdin: None,
        outputs: Vec::new(),
        terminal: None,
    };
    if p.terminal {
        let (master, slave) =
            open_pty_in(p.root.as_ref(), p.console_size).map_err(|source| SpawnError::Stdio {
                what: "terminal",
                source,
            })?;
        let reader = master.try_clone().map_err(|source| SpawnError::Stdio {
            what: "terminal",
            source,
        })?;
        stdio = [slave.as_raw_fd(); 3];
        child_ends = vec![slave];
        spawned.outputs.push((reader, FrameKind::Stdout));
        spawned.terminal = Some(master);
    } else {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        stdio = [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        child_ends = vec![in_r, out_w, err_w];
        spawned.stdin = Some(in_w);
        spawned.outputs.push((out_r, FrameKind::Stdout));
        spawned.outputs.push((err_r, FrameKind::Stderr));
    }
    let (mut report_r, report_w) = pipe()?;
    let (argv, envp) = (null_terminated(&p.argv), null_terminated(&p.envp));
    let enter: Vec<RawFd> = match &launch {
        Launch::Enter(ns) => ns.others.iter().map(|f| f.as_raw_fd()).collect(),
        _ => Vec::new(),
    };
    let user_ns = match &launch {
        Launch::Enter(ns) => ns.user_fd().map_err(|what| SpawnError::Stdio {
            what,
            source: io::Error::from_raw_os_error(libc::ENOENT),
        })?,
        _ => None,
    };
    let cgroup_procs = match &launch {
        Launch::Enter(ns) => ns.cgroup_procs.as_ref().map(|f| f.as_raw_fd()),
        _ => None,
    };
    let ctx = ChildCtx {
        p,
        cgroup_procs,
        enter: &enter,
        user_ns,
        new_user: None,
        argv: &argv,
        envp: &envp,
        stdio,
        tty: p.terminal,
        report_fd: report_w.as_raw_fd(),
        as_root: nix::unistd::geteuid().is_root(),
    };
    let fork = |on_exit: OnExit| {
        reaper.fork_registered(
            || {
                // SAFETY: the child runs only child_main, which makes raw,
                // async-signal-safe system calls on data prepared before
                // the fork, and never returns (exec or _exit).
                match unsafe { nix::unistd::fork() } {
                    Ok(nix::unistd::ForkResult::Child) => child_main(&ctx),
                    Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child.as_raw()),
                    Err(errno) => Err(errno),
                }
            },
            on_exit,
        )
    };
    let pid = match launch {
        Launch::Fork => fork(on_exit),
        Launch::Enter(ns) => fork_in_pid_ns(false, ns.pid.as_ref(), || fork(on_exit)),
        Launch::Handoff(holder) => {
            match holder.hand_over(stdio, p.terminal, report_w.as_raw_fd()) {
                Ok(()) => {
                    holder.exit.set(on_exit);
                    Ok(holder.pid)
                }
                Err(errno) => Err(errno),
            }
        }
    }
    .map_err(|errno| SpawnError::Fork { errno })?;
    drop(child_ends);
    drop(report_w);
    spawned.pid = pid;
    let mut report = [0u8; REPORT_LEN];
    let mut got = 0;
    while got < REPORT_LEN {
        match report_r.read(&mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(SpawnError::Report { source }),
        }
    }
    if got == 0 {
        return Ok(spawned);
    }
    let word = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&report[i..i + 4]);
        b
    };
    let step = Step::from_u32(u32::from_le_bytes(word(0)));
    let (Some(step), true) = (step, got == REPORT_LEN) else {
        return Err(SpawnError::Report {
            source: io::Error::new(io::ErrorKind::InvalidData, "truncated or unknown report"),
        });
    };
    let index = u32::from_le_bytes(word(4));
    let errno = Errno::from_raw(i32::from_le_bytes(word(8)));
    if step == Step::ExecNotFound {
        return Err(SpawnError::NotFound {
            program: p.program.clone(),
        });
    }
    Err(SpawnError::Child {
        step: p.step_text(step, index),
        errno,
    })
}

/// Runs `p` in this process (the container's holder, single-threaded):
/// the same steps as a spawned child, with the descriptors it was handed.
pub fn run_here(
    p: &Prepared,
    stdio: [RawFd; 3],
    tty: bool,
    report_fd: RawFd,
    new_user: Option<RawFd>,
) -> ! {
    let (argv, envp) = (null_terminated(&p.argv), null_terminated(&p.envp));
    let ctx = ChildCtx {
        p,
        cgroup_procs: None,
        enter: &[],
        user_ns: None,
        new_user,
        argv: &argv,
        envp: &envp,
        stdio,
        tty,
        report_fd,
        as_root: nix::unistd::geteuid().is_root(),
    };
    child_main(&ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_execvp() {
        assert_eq!(candidates("/bin/sh", "/x"), ["/bin/sh"]);
        assert_eq!(candidates("./run", "/x"), ["./run"]);
        assert_eq!(candidates("sh", "/a:/b/::"), ["/a/sh", "/b/sh", "sh", "sh"]);
    }

    #[test]
    fn home_comes_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nweb:x:33:33::/var/www:/bin/false\nbad line\n";
        assert_eq!(home_of(passwd, 0).as_deref(), Some("/root"));
        assert_eq!(home_of(passwd, 33).as_deref(), Some("/var/www"));
        assert_eq!(home_of(passwd, 7), None);
    }

    #[test]
    fn errno_text_reads_like_go() {
        assert_eq!(errno_text(Errno::ENOENT), "no such file or directory");
        assert_eq!(errno_text(Errno::EACCES), "permission denied");
    }

    #[test]
    fn prepare_checks_the_spec() {
        let spec = |args: &[&str]| ProcessSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            cwd: "/".into(),
            ..Default::default()
        };
        assert!(matches!(Prepared::new(&spec(&[])), Err(SpawnError::NoArgs)));
        let err = Prepared::new(&spec(&["definitely-not-a-program"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec: \"definitely-not-a-program\": executable file not found in $PATH"
        );
        assert_eq!(err.shell_code(), 127);
        let mut bad = spec(&["sh"]);
        bad.rlimits.push(crate::agent_proto::Rlimit {
            kind: "RLIMIT_NOPE".into(),
            soft: 1,
            hard: 1,
        });
        assert!(matches!(
            Prepared::new(&bad),
            Err(SpawnError::UnknownRlimit { .. })
        ));
        let mut nul = spec(&["sh"]);
        nul.env.push("A=\0".into());
        assert!(matches!(Prepared::new(&nul), Err(SpawnError::Nul { .. })));
        // A path is checked now too, as runc does at create.
        let err = Prepared::new(&spec(&["/bin/nope"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec: \"/bin/nope\": stat /bin/nope: no such file or directory"
        );
        assert_eq!(err.shell_code(), 127);
        assert!(Prepared::new(&spec(&["/bin/sh"])).is_ok());
    }

    #[test]
    fn capabilities_become_masks_and_drop_lists() {
        let mut spec = ProcessSpec {
            args: vec!["sh".into()],
            cwd: "/".into(),
            ..Default::default()
        };
        spec.capabilities = Some(crate::agent_proto::Capabilities {
            bounding: Some(vec!["CAP_CHOWN".into(), "CAP_KILL".into()]),
            effective: Some(vec!["CAP_KILL".into(), "CAP_FUTURE".into()]),
            ..Default::default()
        });
        let p = Prepared::new(&spec).unwrap();
        let plan = p.caps.as_ref().unwrap();
        assert!(!plan.bounding_drop.contains(&0));
        assert!(!plan.bounding_drop.contains(&5));
        assert!(plan.bounding_drop.contains(&21));
        assert_eq!(plan.effective, Some(1 << 5));
        assert_eq!(plan.permitted, None);
        assert_eq!(p.unknown_caps, ["CAP_FUTURE"]);
    }
}
