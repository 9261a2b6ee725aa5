//! Seccomp filters of the VMM process, one per kind of thread, compiled with
//! rust-vmm's `seccompiler`.
//!
//! A container's VMM runs three kinds of thread, and each gets only the
//! system calls its code makes (Cloud Hypervisor's shape: one rule function
//! per thread over a shared base):
//! - [`Thread::Vcpu`]: `KVM_RUN` and the port/MMIO exits it dispatches to
//!   device registers (console writes, eventfds). The only ioctl is
//!   `KVM_RUN`.
//! - [`Thread::Devices`]: the event loop that serves every virtio queue
//!   (block reads and writes, tap frames, vsock streams, and virtio-fs
//!   requests, which it sends to the fs server process: it opens no file).
//!   Its ioctl is `TUNSETOFFLOAD` (a guest acking offloads); its sockets are
//!   Unix sockets.
//! - [`Thread::FsServer`]: not a VMM thread but the container's fs server
//!   process ([`crate::runtime::fs_server`]): the virtio-fs passthrough's
//!   file system calls, on the one stream from its VMM; no new threads, no
//!   sockets of its own.
//! - [`Thread::Supervisor`]: the VMM's main thread, the thread that relays
//!   the container's stdio and exit status over the agent connection, and
//!   its helpers (record watch, signal forwarder, stdin pump, terminal size:
//!   `TIOCGWINSZ` only). It keeps the container's record (`state.json`) and
//!   may remove its cgroup when that record is gone.
//!
//! Every thread of a container's VMM runs under one of them once the guest
//! can run (a thread made later inherits its maker's): the vCPU threads
//! before their first `KVM_RUN`, the device thread before its first event,
//! the supervisor threads before any frame of the agent is read.
//! What none of them allows: `execve`, `ptrace`, `mount`, namespaces
//! (`unshare`, `setns`, `clone` with namespace flags: `clone` is allowed
//! with the flags of a new thread only, `clone3` answers ENOSYS so the C
//! library falls back to it), `bpf`, `perf_event_open`, module or key
//! calls, sockets other than Unix ones, new executable memory (`mmap` and
//! `mprotect` with `PROT_EXEC`), and signals to other processes (`tgkill`
//! to this process only).
//!
//! A call outside the filter ([`Mode::Enforce`]) traps: the handler writes
//! one line naming the thread and the call into the VMM's log, then the
//! VMM dies of `SIGSYS` (what its engine reports as the container's end).
//! [`Mode::Log`] lets such calls through and the kernel logs each one
//! (audit `type=1326`, `dmesg`), for developing the filters.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::fd::{IntoRawFd as _, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// The annotation choosing the VMM's filter mode ([`Mode`]).
pub const ANNOTATION: &str = "io.husk.vmm.seccomp";

/// What a call outside a thread's filter does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The VMM dies of `SIGSYS`, after one line in its log.
    #[default]
    Enforce,
    /// The call goes through and the kernel logs it.
    Log,
}

impl Mode {
    /// The values [`ANNOTATION`] takes.
    pub const VALUES: [&'static str; 2] = ["enforce", "log"];

    /// The mode an annotation value names.
    pub fn parse(value: &str) -> Option<Mode> {
        match value {
            "enforce" => Some(Mode::Enforce),
            "log" => Some(Mode::Log),
            _ => None,
        }
    }
}

/// The kinds of thread of a VMM, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thread {
    Vcpu,
    Devices,
    Supervisor,
    /// The container's fs server process ([`crate::runtime::fs_server`]).
    FsServer,
}

impl Thread {
    pub const ALL: [Thread; 4] = [
        Thread::Vcpu,
        Thread::Devices,
        Thread::Supervisor,
        Thread::FsServer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Thread::Vcpu => "vcpu",
            Thread::Devices => "devices",
            Thread::Supervisor => "supervisor",
            Thread::FsServer => "fs-server",
        }
    }

    /// The thread a name in [`Thread::name`]'s form stands for.
    pub fn parse(name: &str) -> Option<Thread> {
        Thread::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The capabilities this thread keeps (a [`super::caps::mask`]): the
    /// fs server the virtio-fs passthrough's, the VMM's threads none.
    pub fn keeps(self) -> u64 {
        match self {
            Thread::FsServer => super::caps::mask(super::caps::FS_PASSTHROUGH),
            Thread::Vcpu | Thread::Devices | Thread::Supervisor => 0,
        }
    }

    fn code(self) -> u8 {
        match self {
            Thread::Vcpu => 1,
            Thread::Devices => 2,
            Thread::Supervisor => 3,
            Thread::FsServer => 4,
        }
    }

    fn from_code(code: u8) -> Option<Thread> {
        Thread::ALL.into_iter().find(|t| t.code() == code)
    }
}

/// Errors compiling or installing filters.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("compiling the VMM's {thread} seccomp filter: {source}")]
    Compile {
        thread: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("compiling the VMM's {thread} seccomp filter: {source}")]
    Program {
        thread: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("installing the VMM's {thread} seccomp filter: {source}")]
    Install {
        thread: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("installing the SIGSYS handler that reports seccomp violations: {0}")]
    Handler(#[source] std::io::Error),
    #[error("the VMM's {thread} thread: {source}")]
    User {
        thread: &'static str,
        #[source]
        source: super::user::UserError,
    },
    #[error("dropping the capabilities of the VMM's {thread} thread: {source}")]
    Caps {
        thread: &'static str,
        #[source]
        source: super::caps::CapsError,
    },
}

/// The compiled filters of one VMM; [`Filters::apply`] installs one on the
/// calling thread.
pub struct Filters {
    mode: Mode,
    /// The highest capability of this kernel ([`super::caps::last_cap`]),
    /// read at compile time: a thread applying its filter may no longer
    /// open files.
    last_cap: u32,
    vcpu: BpfProgram,
    devices: BpfProgram,
    supervisor: BpfProgram,
    fs_server: BpfProgram,
    /// `clone3` answers ENOSYS (its flags sit in memory a filter cannot
    /// read; the C library then uses `clone`, whose flags it can).
    clone3: BpfProgram,
    /// The VMM's own user ([`super::user`]): each VMM thread drops to it as
    /// it applies its filter.
    user: Option<super::user::VmmUser>,
}

impl std::fmt::Debug for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filters")
            .field("mode", &self.mode)
            .field("vcpu", &self.vcpu.len())
            .field("devices", &self.devices.len())
            .field("supervisor", &self.supervisor.len())
            .field("fs_server", &self.fs_server.len())
            .finish()
    }
}

impl Filters {
    /// Compiles the three filters for this process (its pid is part of
    /// them: signals only to itself).
    pub fn compile(mode: Mode) -> Result<Filters, FilterError> {
        let pid = u64::from(std::process::id());
        let build = |thread: Thread| program(thread, rules(thread, pid), mode);
        let clone3 = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, vec![])]),
            SeccompAction::Allow,
            SeccompAction::Errno(u32::try_from(libc::ENOSYS).unwrap_or(38)),
            TargetArch::x86_64,
        )
        .map_err(|source| FilterError::Compile {
            thread: "clone3",
            source,
        })?;
        Ok(Filters {
            mode,
            last_cap: super::caps::last_cap(),
            vcpu: build(Thread::Vcpu)?,
            devices: build(Thread::Devices)?,
            supervisor: build(Thread::Supervisor)?,
            fs_server: build(Thread::FsServer)?,
            clone3: BpfProgram::try_from(clone3).map_err(|source| FilterError::Program {
                thread: "clone3",
                source,
            })?,
            user: None,
        })
    }

    /// Every VMM thread (not the fs server) drops to `user` as it applies
    /// its filter.
    pub fn for_user(mut self, user: Option<super::user::VmmUser>) -> Filters {
        self.user = user;
        self
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The program of `thread`'s filter.
    pub fn program(&self, thread: Thread) -> &BpfProgram {
        match thread {
            Thread::Vcpu => &self.vcpu,
            Thread::Devices => &self.devices,
            Thread::Supervisor => &self.supervisor,
            Thread::FsServer => &self.fs_server,
        }
    }

    /// Drops the calling thread's capabilities to what `thread` keeps
    /// ([`Thread::keeps`]), then installs `thread`'s filter on it (and so
    /// on every thread it starts from now on). Call on a thread without a
    /// filter yet (the capability calls are not in any filter).
    pub fn apply(&self, thread: Thread) -> Result<(), FilterError> {
        let caps = |keep: u64| {
            super::caps::limit_thread(keep, self.last_cap).map_err(|source| FilterError::Caps {
                thread: thread.name(),
                source,
            })
        };
        // SAFETY: getuid takes no arguments; as a raw system call it
        // answers for this thread.
        let uid = unsafe { libc::syscall(libc::SYS_getuid) };
        match self.user {
            // A thread started by one that already dropped has the user.
            Some(user) if thread != Thread::FsServer && uid != i64::from(user.thread_ids().uid) => {
                caps(thread.keeps() | super::user::drop_needs())?;
                super::user::drop_thread(&user).map_err(|source| FilterError::User {
                    thread: thread.name(),
                    source,
                })?;
                caps(thread.keeps())?;
            }
            _ => caps(thread.keeps())?,
        }
        let install = |program: &BpfProgram, name: &'static str| {
            seccompiler::apply_filter(program).map_err(|source| FilterError::Install {
                thread: name,
                source,
            })
        };
        install(&self.clone3, "clone3")?;
        CURRENT.with(|c| c.set(thread.code()));
        install(self.program(thread), thread.name())
    }
}

/// How the SIGSYS handler's line in the VMM's log starts.
pub const REPORT_PREFIX: &str = "[seccomp] ";

/// Where the SIGSYS handler writes its line (the VMM's log), -1: nowhere.
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

thread_local! {
    /// The kind of filter on this thread ([`Thread::code`]), for the report.
    static CURRENT: Cell<u8> = const { Cell::new(0) };
}

/// Installs the process-wide SIGSYS handler that reports a call a filter
/// refused ([`Mode::Enforce`]): one line into `log` (the VMM's log file,
/// opened here for appending and kept open), then the process dies of
/// SIGSYS (exits with 128 + SIGSYS as pid 1 of a pid namespace, which
/// cannot signal itself). Call before the first filter.
pub fn install_report_handler(log: &std::path::Path) -> Result<(), FilterError> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .map_err(FilterError::Handler)?;
    let old = REPORT_FD.swap(file.into_raw_fd(), Ordering::SeqCst);
    if old >= 0 {
        // SAFETY: `old` is a descriptor an earlier call took ownership of
        // with into_raw_fd and nothing else closes.
        unsafe { libc::close(old) };
    }
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
    // the fields set below make it a SA_SIGINFO handler whose function has
    // the signature the kernel calls it with.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as usize;
    // Reset to the default action on entry: the handler re-raises SIGSYS,
    // which then ends the process.
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
    // SAFETY: `action` is fully initialised above; the old action is not
    // wanted (null).
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(FilterError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Byte offset of `si_syscall` in x86_64's `siginfo_t` (signo, errno,
/// code, padding, then the `_sigsys` union member: `void *_call_addr`,
/// `int _syscall`, `unsigned int _arch`; Linux
/// `include/uapi/asm-generic/siginfo.h`).
const SI_SYSCALL_OFFSET: usize = 24;

/// The SIGSYS handler: names the thread and the call in the log, then ends
/// the process with SIGSYS. Only async-signal-safe work: formatting into a
/// stack buffer, write(2), tgkill(2).
extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO
        // handler; for a seccomp SIGSYS it fills `_sigsys`, whose
        // `_syscall` is an i32 at SI_SYSCALL_OFFSET (aligned: 24 % 4 == 0).
        unsafe {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read()
        }
    };
    let thread = CURRENT
        .try_with(Cell::get)
        .ok()
        .and_then(Thread::from_code)
        .map_or("unfiltered", Thread::name);
    let args = if ctx.is_null() {
        [0; 3]
    } else {
        // SAFETY: for a SA_SIGINFO handler the third argument is the
        // interrupted thread's ucontext_t; its saved registers hold the
        // system call's arguments (x86_64: rdi, rsi, rdx).
        let regs = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
        [libc::REG_RDI, libc::REG_RSI, libc::REG_RDX].map(|r| {
            usize::try_from(r)
                .ok()
                .and_then(|i| regs.get(i))
                .map_or(0, |v| *v as u64)
        })
    };
    let mut buf = [0u8; 448];
    let mut len = report_line(&mut buf, thread, nr, args);
    // A file a thread tried to open is named (the pointer is the one our
    // own code passed to openat; at most PATH_SHOWN bytes are read).
    if i64::from(nr) == libc::SYS_openat && args[1] != 0 {
        let path = args[1] as *const u8;
        let mut shown = [0u8; PATH_SHOWN];
        let mut n = 0;
        while n < PATH_SHOWN {
            // SAFETY: the bytes of the NUL-terminated path our code gave
            // openat, read up to its NUL or PATH_SHOWN bytes.
            let b = unsafe { path.add(n).read() };
            if b == 0 {
                break;
            }
            shown[n] = b;
            n += 1;
        }
        len = append_path(&mut buf, len, &shown[..n]);
    }
    let fd: RawFd = REPORT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) reads `len` bytes of `buf`, which holds them.
        unsafe { libc::write(fd, buf.as_ptr().cast(), len) };
    }
    // SAFETY: getpid/gettid/tgkill/exit_group take no pointers; the
    // handler was reset to the default action on entry, so the SIGSYS sent
    // here (pending while this handler runs) ends the process when it
    // returns. Pid 1 of a pid namespace (a VMM in its own) ignores the
    // signals it sends itself: it exits at once, with SIGSYS's code.
    unsafe {
        if libc::getpid() == 1 {
            libc::syscall(libc::SYS_exit_group, 128 + libc::SIGSYS);
        }
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::gettid(),
            libc::SIGSYS,
        );
    }
}

/// How much of a path the report shows.
const PATH_SHOWN: usize = 96;

/// Puts `path: PATH` before the report line's newline; returns the new
/// length (the line is cut where the buffer ends).
fn append_path(buf: &mut [u8], len: usize, path: &[u8]) -> usize {
    let mut line = [0u8; 512];
    let body = len.saturating_sub(1).min(buf.len());
    let mut cursor = std::io::Cursor::new(&mut line[..]);
    let _ = cursor.write_all(&buf[..body]);
    let _ = cursor.write_all(b" Path: ");
    let _ = cursor.write_all(path);
    let _ = cursor.write_all(b"\n");
    let n = usize::try_from(cursor.position())
        .unwrap_or(0)
        .min(buf.len());
    buf[..n].copy_from_slice(&line[..n]);
    n
}

/// Formats the report line into `buf`; returns its length.
fn report_line(buf: &mut [u8], thread: &str, nr: i32, args: [u64; 3]) -> usize {
    let name = u32::try_from(nr)
        .ok()
        .and_then(crate::seccomp::syscalls::name)
        .unwrap_or("unknown");
    // The fs server is a process of its own beside the VMM.
    let (thread, kind) = if thread == Thread::FsServer.name() {
        ("fs server", "process")
    } else {
        (thread, "thread")
    };
    let mut cursor = std::io::Cursor::new(buf);
    let _ = writeln!(
        cursor,
        "{REPORT_PREFIX}the VMM's {thread} {kind} made system call {nr} ({name}, arguments \
         {:#x}, {:#x}, {:#x}), which its filter does not allow: the VMM stops (SIGSYS). Annotation {ANNOTATION}=log lets such calls \
         through for developing the filters (docs/security.md).",
        args[0], args[1], args[2]
    );
    usize::try_from(cursor.position()).unwrap_or(0)
}

/// One condition on argument `arg`.
fn cond(arg: u8, len: Len, op: Op, value: u64) -> SeccompCondition {
    // Only fails for an argument index above 5, which the callers here do
    // not use.
    SeccompCondition::new(arg, len, op, value).expect("seccomp condition on argument 0..=5")
}

/// A rule that holds when every condition holds.
fn all(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a seccomp rule with conditions")
}

/// `ioctl(fd, request, ..)` for these requests (compared as the kernel
/// does: the low 32 bits).
fn ioctls(requests: &[u64]) -> Vec<SeccompRule> {
    requests
        .iter()
        .map(|r| all(vec![cond(1, Len::Dword, Op::Eq, *r)]))
        .collect()
}

/// `_IO(KVMIO, 0x80)` (`linux/kvm.h`).
const KVM_RUN: u64 = 0xae80;

/// `_IOC(dir, KVMIO, nr, size)` (`asm-generic/ioctl.h`).
const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}
const IOC_READ: u64 = 2;
const IOC_RW: u64 = 3;

/// What a VMM reads of its own VM to write a checkpoint (`linux/kvm.h`):
/// getters only, no setter. A parked vCPU thread reads its vCPU's, the
/// device thread the VM's.
const CHECKPOINT_IOCTLS: [u64; 13] = {
    use kvm_bindings as k;
    use std::mem::size_of;
    [
        kvm_ioc(IOC_READ, 0x98, size_of::<k::kvm_mp_state>()),
        kvm_ioc(IOC_READ, 0x81, size_of::<k::kvm_regs>()),
        kvm_ioc(IOC_READ, 0x83, size_of::<k::kvm_sregs>()),
        kvm_ioc(IOC_READ, 0xa4, size_of::<k::kvm_xsave>()),
        kvm_ioc(IOC_READ, 0xa6, size_of::<k::kvm_xcrs>()),
        kvm_ioc(IOC_READ, 0xa1, size_of::<k::kvm_debugregs>()),
        kvm_ioc(IOC_READ, 0x8e, size_of::<k::kvm_lapic_state>()),
        kvm_ioc(IOC_RW, 0x88, size_of::<k::kvm_msrs>()),
        kvm_ioc(IOC_READ, 0x9f, size_of::<k::kvm_vcpu_events>()),
        kvm_ioc(0, 0xa3, 0),
        kvm_ioc(IOC_RW, 0x62, size_of::<k::kvm_irqchip>()),
        kvm_ioc(IOC_READ, 0x9f, size_of::<k::kvm_pit_state2>()),
        kvm_ioc(IOC_READ, 0x7c, size_of::<k::kvm_clock_data>()),
    ]
};
/// `_IOW('T', 208, unsigned int)` (`linux/if_tun.h`).
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
/// `FIONBIO` (`asm-generic/ioctls.h`): what Rust's `set_nonblocking` uses.
const FIONBIO: u64 = 0x5421;
/// The flags glibc's pthread_create passes to clone(2).
const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

/// Reading and writing open descriptors at offsets and in vectors.
const FILE_IO: &[i64] = &[
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fcntl,
];

/// The rules of `thread`'s filter: syscall number -> rules (empty: any
/// arguments).
fn rules(thread: Thread, pid: u64) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut r: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let any = |r: &mut BTreeMap<i64, Vec<SeccompRule>>, calls: &[i64]| {
        for c in calls {
            r.insert(*c, vec![]);
        }
    };
    // Every thread: memory (never executable), time, futexes, its own end,
    // signals to this process only, logging.
    any(
        &mut r,
        &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_close,
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_nanosleep,
            libc::SYS_clock_nanosleep,
            libc::SYS_clock_gettime,
            libc::SYS_gettimeofday,
            libc::SYS_getrandom,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_restart_syscall,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    );
    let no_exec = || {
        vec![all(vec![cond(
            2,
            Len::Dword,
            Op::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )])]
    };
    r.insert(libc::SYS_mmap, no_exec());
    r.insert(libc::SYS_mprotect, no_exec());
    r.insert(
        libc::SYS_tgkill,
        vec![all(vec![cond(0, Len::Dword, Op::Eq, pid)])],
    );
    let unix_sockets = || vec![all(vec![cond(0, Len::Dword, Op::Eq, libc::AF_UNIX as u64)])];
    match thread {
        Thread::Vcpu => {
            // A driver's DRIVER_OK write activates its device on the vCPU
            // that made it: the net device then sets the tap's offloads. A
            // vCPU parked for a checkpoint saves its own state.
            let mut requests = vec![KVM_RUN, TUNSETOFFLOAD];
            requests.extend(CHECKPOINT_IOCTLS);
            r.insert(libc::SYS_ioctl, ioctls(&requests));
        }
        Thread::Devices => {
            // Block, tap and vsock data.
            any(&mut r, FILE_IO);
            any(
                &mut r,
                &[
                    // The event loop.
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                    libc::SYS_epoll_ctl,
                    // vsock's connection timer.
                    libc::SYS_timerfd_settime,
                    libc::SYS_timerfd_gettime,
                    // vsock: streams to Unix sockets on the host.
                    libc::SYS_connect,
                    libc::SYS_accept4,
                    libc::SYS_sendto,
                    libc::SYS_recvfrom,
                    libc::SYS_sendmsg,
                    libc::SYS_recvmsg,
                    libc::SYS_shutdown,
                    libc::SYS_getsockopt,
                    // What std asks of a descriptor it reads or writes.
                    libc::SYS_fstat,
                    libc::SYS_newfstatat,
                    libc::SYS_statx,
                    // vsock removes its socket path when the VM ends.
                    libc::SYS_unlink,
                    libc::SYS_getuid,
                    libc::SYS_getgid,
                    libc::SYS_geteuid,
                    libc::SYS_getegid,
                ],
            );
            r.insert(libc::SYS_socket, unix_sockets());
            // A checkpoint's memory file is sized (its descriptor was
            // opened before the filter).
            r.insert(libc::SYS_ftruncate, vec![]);
            // Offloads as the guest acks them; vsock streams made
            // non-blocking; the VM's state for a checkpoint.
            let mut requests = vec![TUNSETOFFLOAD, FIONBIO];
            requests.extend(CHECKPOINT_IOCTLS);
            r.insert(libc::SYS_ioctl, ioctls(&requests));
        }
        Thread::Supervisor => {
            any(
                &mut r,
                &[
                    // The agent connection, stdio, signalfd.
                    libc::SYS_readv,
                    libc::SYS_writev,
                    libc::SYS_poll,
                    libc::SYS_ppoll,
                    libc::SYS_connect,
                    libc::SYS_sendto,
                    libc::SYS_recvfrom,
                    libc::SYS_sendmsg,
                    libc::SYS_recvmsg,
                    libc::SYS_shutdown,
                    libc::SYS_fcntl,
                    // The container's record, timeline and cgroup.
                    libc::SYS_openat,
                    libc::SYS_newfstatat,
                    libc::SYS_fstat,
                    libc::SYS_statx,
                    libc::SYS_lseek,
                    libc::SYS_fsync,
                    libc::SYS_getdents64,
                    libc::SYS_rename,
                    libc::SYS_renameat,
                    libc::SYS_renameat2,
                    libc::SYS_unlink,
                    libc::SYS_unlinkat,
                    libc::SYS_rmdir,
                    libc::SYS_readlink,
                    libc::SYS_getcwd,
                    // Helper threads (clone: a new thread's flags only).
                    libc::SYS_set_robust_list,
                    libc::SYS_rseq,
                    libc::SYS_sched_getaffinity,
                    // Forwarded signals arrive on a signalfd.
                    libc::SYS_signalfd4,
                    // Dying by the container's signal.
                    libc::SYS_rt_sigaction,
                ],
            );
            r.insert(
                libc::SYS_clone,
                vec![all(vec![cond(0, Len::Qword, Op::Eq, THREAD_CLONE_FLAGS)])],
            );
            // clone3 is refused with ENOSYS by the filter in front
            // (`Filters::clone3`); this one lets that answer stand.
            r.insert(libc::SYS_clone3, vec![]);
            r.insert(libc::SYS_socket, unix_sockets());
            r.insert(
                libc::SYS_setsockopt,
                vec![
                    all(vec![
                        cond(1, Len::Dword, Op::Eq, libc::SOL_SOCKET as u64),
                        cond(2, Len::Dword, Op::Eq, libc::SO_RCVTIMEO as u64),
                    ]),
                    all(vec![
                        cond(1, Len::Dword, Op::Eq, libc::SOL_SOCKET as u64),
                        cond(2, Len::Dword, Op::Eq, libc::SO_SNDTIMEO as u64),
                    ]),
                ],
            );
            r.insert(
                libc::SYS_prctl,
                vec![all(vec![cond(
                    0,
                    Len::Dword,
                    Op::Eq,
                    libc::PR_SET_NAME as u64,
                )])],
            );
            // Is stdin a terminal (TCGETS), and its size.
            r.insert(libc::SYS_ioctl, ioctls(&[libc::TCGETS, libc::TIOCGWINSZ]));
        }
        Thread::FsServer => {
            // File data of the passthrough.
            any(&mut r, FILE_IO);
            any(
                &mut r,
                &[
                    // Wake-ups on the one Unix stream to the VMM (the
                    // requests are in the channel both map).
                    libc::SYS_recvfrom,
                    libc::SYS_sendto,
                    libc::SYS_recvmsg,
                    libc::SYS_sendmsg,
                    // The FUSE passthrough, confined to the shared
                    // directories by handle (docs/storage.md).
                    libc::SYS_openat,
                    libc::SYS_newfstatat,
                    libc::SYS_fstat,
                    libc::SYS_statx,
                    libc::SYS_statfs,
                    libc::SYS_fstatfs,
                    libc::SYS_getdents64,
                    libc::SYS_mkdirat,
                    libc::SYS_mknodat,
                    libc::SYS_unlinkat,
                    libc::SYS_renameat,
                    libc::SYS_renameat2,
                    libc::SYS_linkat,
                    libc::SYS_symlinkat,
                    libc::SYS_readlinkat,
                    libc::SYS_fchownat,
                    libc::SYS_fchown,
                    libc::SYS_fchmodat,
                    libc::SYS_fchmod,
                    libc::SYS_utimensat,
                    libc::SYS_fallocate,
                    libc::SYS_ftruncate,
                    libc::SYS_copy_file_range,
                    libc::SYS_getxattr,
                    libc::SYS_lgetxattr,
                    libc::SYS_fgetxattr,
                    libc::SYS_setxattr,
                    libc::SYS_lsetxattr,
                    libc::SYS_fsetxattr,
                    libc::SYS_listxattr,
                    libc::SYS_llistxattr,
                    libc::SYS_flistxattr,
                    libc::SYS_removexattr,
                    libc::SYS_lremovexattr,
                    libc::SYS_fremovexattr,
                    libc::SYS_dup,
                    libc::SYS_umask,
                    libc::SYS_getuid,
                    libc::SYS_getgid,
                    libc::SYS_geteuid,
                    libc::SYS_getegid,
                    // The passthrough creates files as the guest's caller
                    // (this thread's ids only, then back).
                    libc::SYS_setresuid,
                    libc::SYS_setresgid,
                ],
            );
            r.insert(libc::SYS_ioctl, ioctls(&[FIONBIO]));
        }
    }
    r
}

fn program(
    thread: Thread,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mode: Mode,
) -> Result<BpfProgram, FilterError> {
    let refuse = match mode {
        Mode::Enforce => SeccompAction::Trap,
        Mode::Log => SeccompAction::Log,
    };
    let filter = SeccompFilter::new(rules, refuse, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|source| FilterError::Compile {
            thread: thread.name(),
            source,
        })?;
    BpfProgram::try_from(filter).map_err(|source| FilterError::Program {
        thread: thread.name(),
        source,
    })
}

/// Environment variable (fault injection for tests): a point where the
/// VMM makes one system call no filter allows, to prove the filter stops
/// it. The points: `vcpu`, `devices`, `supervisor`, `fs-server` (right
/// after that thread's or process's filter is on, during `create`),
/// `output` (in the supervisor, when the container's process writes to its
/// stdout).
pub const ENV_FAULT_SYSCALL: &str = "HUSK_FAULT_SYSCALL";

/// The call [`fault_point`] makes: `personality(0xffffffff)` only reads
/// the persona, and no VMM thread needs it.
const FAULT_CALL: i64 = libc::SYS_personality;

/// Makes [`FAULT_CALL`] when [`ENV_FAULT_SYSCALL`] names `point`.
pub fn fault_point(point: &str) {
    static NAMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let named = NAMED.get_or_init(|| std::env::var(ENV_FAULT_SYSCALL).ok());
    if named.as_deref() == Some(point) {
        log::warn!("{ENV_FAULT_SYSCALL}: making a system call no filter allows at {point}");
        // SAFETY: personality(0xffffffff) takes no pointer and changes
        // nothing (it returns the current persona).
        unsafe { libc::syscall(FAULT_CALL, 0xffff_ffff_u64) };
    }
}

#[cfg(test)]
mod tests;
