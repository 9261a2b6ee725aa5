//! The container's own namespaces in the guest, made as runc makes them.
//!
//! At `Create` the agent starts the container's first process, the
//! *holder*: forked from a thread that unshared the pid namespace for its
//! children (so the holder is pid 1 of a new one when the spec lists
//! `pid`), it unshares the mount namespace (always) and the uts, ipc and
//! cgroup ones the spec lists, then executes init's own binary again
//! ([`HOLDER_ARG`]). Fresh and single-threaded, the holder reads the
//! [`ContainerSpec`] from fd [`SPEC_FD`], makes the container's file
//! systems ([`setup::apply`]: its root alone, then the config's mounts in
//! order, devices, masks, read-only paths, the read-only root), answers on
//! fd [`CONTROL_FD`] (`ok`, or the error), and waits there.
//!
//! At `Start` the agent hands it the process's stdio and the spawn report
//! pipe (`SCM_RIGHTS`), and the holder becomes the container's process: the
//! same steps as any spawned child ([`spawn::run_here`]), ending in
//! `execve`. So the container's process is pid 1 of its namespace, in the
//! mount table the config describes, as under runc. An exec (and a guest
//! hook) joins those namespaces ([`Namespaces`]) before its own steps.
//!
//! The guest's own namespaces keep the agent, the network (the guest's
//! network namespace is the container's, configured from the engine's),
//! and the guest's pseudo file systems.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

use super::reaper::{ExitStatus, OnExit, Reaper};
use super::setup;
use super::spawn::{self, Prepared};
use crate::agent_proto::ContainerSpec;

/// The argument that makes init's binary the holder.
pub const HOLDER_ARG: &str = "--container-holder";
/// The holder's descriptor with the spec (read to EOF).
pub const SPEC_FD: RawFd = 3;
/// The holder's end of its control socket (`SOCK_SEQPACKET`).
pub const CONTROL_FD: RawFd = 4;
/// Largest spec the holder reads.
const MAX_SPEC: u64 = 64 << 20;
/// Largest answer of the holder.
const MAX_ANSWER: usize = 64 << 10;
/// The holder's answer when the container is set up.
const READY: &[u8] = b"ok";
/// First byte of a report from the forked child before it executed the
/// holder: then the errno (4 bytes, little-endian).
const CHILD_FAILED: u8 = 0xff;

/// The namespaces a spec can give the container besides `pid` (spec type,
/// clone flag, name under `/proc/PID/ns`). The mount namespace is always a
/// new one: the container's file systems are made in it.
const KINDS: [(&str, libc::c_int, &str); 4] = [
    ("mount", libc::CLONE_NEWNS, "mnt"),
    ("uts", libc::CLONE_NEWUTS, "uts"),
    ("ipc", libc::CLONE_NEWIPC, "ipc"),
    ("cgroup", libc::CLONE_NEWCGROUP, "cgroup"),
];

/// The container's namespaces, for processes that join them.
pub struct Namespaces {
    /// The holder's pid in the guest (then the main process's): its root
    /// is the container's.
    pub root_pid: i32,
    /// Its pid namespace (`None`: the guest's).
    pub pid: Option<OwnedFd>,
    /// The others, joined in this order (mount first).
    pub others: Vec<OwnedFd>,
    /// Their names under `/proc/PID/ns` (`mnt`, `uts`, ...), in that order.
    pub names: Vec<&'static str>,
    /// The container's own cgroup's `cgroup.procs` (a pod's container),
    /// which its execs join.
    pub cgroup_procs: Option<OwnedFd>,
    /// Whether the container has a user namespace of its own, and the
    /// namespace once its process has made it (at `Start`).
    pub has_user: bool,
    pub user: Mutex<Option<OwnedFd>>,
}

impl Namespaces {
    /// The namespace `name` (`uts`, `ipc`, ...) if the container has its own.
    pub fn named(&self, name: &str) -> Option<&OwnedFd> {
        self.names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| self.others.get(i))
    }
    /// The user namespace to join, if the container has one.
    pub fn user_fd(&self) -> Result<Option<RawFd>, &'static str> {
        if !self.has_user {
            return Ok(None);
        }
        self.user
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|fd| Some(fd.as_raw_fd()))
            .ok_or("the container's user namespace (made when the container starts)")
    }
}

/// An exit status that may come before anyone waits for it.
#[derive(Default)]
pub struct Deferred(Mutex<(Option<ExitStatus>, Option<OnExit>)>);

impl Deferred {
    /// The process ended: to the handler, or kept for it.
    pub fn exited(&self, status: ExitStatus) {
        let handler = {
            let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
            match slot.1.take() {
                Some(h) => h,
                None => {
                    slot.0 = Some(status);
                    return;
                }
            }
        };
        handler(status);
    }

    /// Sets the handler (called at once if the process has ended).
    pub fn set(&self, handler: OnExit) {
        let status = {
            let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
            match slot.0.take() {
                Some(s) => s,
                None => {
                    slot.1 = Some(handler);
                    return;
                }
            }
        };
        handler(status);
    }
}

/// The holder, from `Create` until it becomes the container's process.
pub struct Holder {
    pub pid: i32,
    control: OwnedFd,
    /// The uid and gid maps its user namespace gets (`None`: it makes none).
    maps: Option<(String, String)>,
    pub exit: Arc<Deferred>,
    pub namespaces: Arc<Namespaces>,
}

impl Holder {
    /// Hands the process's stdio and the report pipe's write end over: the
    /// holder starts the process.
    pub fn hand_over(&self, stdio: [RawFd; 3], tty: bool, report: RawFd) -> Result<(), Errno> {
        let fds = [stdio[0], stdio[1], stdio[2], report];
        let flag = [u8::from(tty)];
        let iov = [std::io::IoSlice::new(&flag)];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            self.control.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        let Some((uid_map, gid_map)) = &self.maps else {
            return Ok(());
        };
        // It asks once its user namespace exists (or closes the socket,
        // having failed before: its report says why).
        let mut request = [0u8; 16];
        let n = recv(&self.control, &mut request)?;
        if n == 0 {
            return Ok(());
        }
        let written = if &request[..n] == spawn::USER_MAP_REQUEST {
            write_maps(self.pid, uid_map, gid_map)
        } else {
            Err(Errno::EPROTO)
        };
        let ack = [if written.is_ok() {
            spawn::USER_MAP_DONE
        } else {
            b'x'
        }];
        nix::sys::socket::send(self.control.as_raw_fd(), &ack, MsgFlags::MSG_NOSIGNAL)?;
        written?;
        let user = File::open(format!("/proc/{}/ns/user", self.pid)).map_err(spawn::errno_of)?;
        *self
            .namespaces
            .user
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(user.into());
        Ok(())
    }
}

/// Writes the maps of `pid`'s user namespace (gid first needs no
/// `setgroups` change: init has `CAP_SETGID` outside).
fn write_maps(pid: i32, uid_map: &str, gid_map: &str) -> Result<(), Errno> {
    for (file, text) in [("uid_map", uid_map), ("gid_map", gid_map)] {
        if text.is_empty() {
            continue;
        }
        std::fs::write(format!("/proc/{pid}/{file}"), text).map_err(spawn::errno_of)?;
    }
    Ok(())
}

/// One packet from the control socket (its length; 0 when the other end
/// closed it), interrupted reads retried.
fn recv(control: &OwnedFd, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        match nix::sys::socket::recv(control.as_raw_fd(), buf, MsgFlags::empty()) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// Opens a namespace file of `pid`.
fn open_ns(pid: i32, name: &str) -> Result<OwnedFd, String> {
    File::open(format!("/proc/{pid}/ns/{name}"))
        .map(OwnedFd::from)
        .map_err(|e| format!("opening the container's {name} namespace: {e}"))
}

/// The pid namespace this thread's children get (to restore it).
fn pid_for_children() -> Result<OwnedFd, Errno> {
    File::open("/proc/thread-self/ns/pid_for_children")
        .map(OwnedFd::from)
        .map_err(spawn::errno_of)
}

/// Runs `fork` with this thread's children in a new pid namespace (`new`)
/// or in `join` (a pid namespace file), then puts the thread back.
pub fn fork_in_pid_ns<T, E: From<Errno>>(
    new: bool,
    join: Option<&OwnedFd>,
    fork: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    if !new && join.is_none() {
        return fork();
    }
    let saved = pid_for_children()?;
    match join {
        Some(ns) => nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWPID)?,
        None => nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)?,
    }
    let forked = fork();
    // The namespace this thread's next children get: the guest's again.
    if let Err(e) = nix::sched::setns(&saved, nix::sched::CloneFlags::CLONE_NEWPID) {
        eprintln!(
            "{} restoring the agent's pid namespace: {e}",
            crate::proto::LOG_PREFIX
        );
    }
    forked
}

/// The forked child: new namespaces, the descriptors in place, init's
/// binary again. Raw system calls only (init has threads).
fn holder_child(
    cgroup_procs: Option<RawFd>,
    join: &[RawFd],
    flags: libc::c_int,
    spec: RawFd,
    control: RawFd,
    argv: &[*const libc::c_char],
) -> ! {
    let fail = |errno: i32| -> ! {
        let mut report = [CHILD_FAILED, 0, 0, 0, 0];
        report[1..].copy_from_slice(&errno.to_le_bytes());
        // SAFETY: writes from a live stack buffer; a failed write only loses
        // the report (the agent then sees the socket close).
        let _ = unsafe { libc::write(control, report.as_ptr().cast(), report.len()) };
        // SAFETY: _exit is async-signal-safe and never returns.
        unsafe { libc::_exit(127) }
    };
    if let Some(fd) = cgroup_procs {
        // Into the container's cgroup first: its cgroup namespace (made
        // below) is rooted there.
        // SAFETY: writes from a static buffer to a descriptor opened before
        // the fork.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } < 0 {
            fail(Errno::last_raw());
        }
    }
    for fd in join {
        // SAFETY: setns takes a namespace descriptor the agent opened
        // before the fork, and a flag.
        if unsafe { libc::setns(*fd, 0) } < 0 {
            fail(Errno::last_raw());
        }
    }
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(flags) } < 0 {
        fail(Errno::last_raw());
    }
    // Out of the way of 3 and 4 first, then into place (dup2 clears
    // close-on-exec on the copy).
    // SAFETY: fcntl and dup2 on descriptors this process owns.
    let (spec, control) = unsafe {
        (
            libc::fcntl(spec, libc::F_DUPFD_CLOEXEC, 10),
            libc::fcntl(control, libc::F_DUPFD_CLOEXEC, 10),
        )
    };
    if spec < 0 || control < 0 {
        fail(Errno::last_raw());
    }
    // SAFETY: as above.
    if unsafe { libc::dup2(spec, SPEC_FD) } < 0 || unsafe { libc::dup2(control, CONTROL_FD) } < 0 {
        fail(Errno::last_raw());
    }
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: argv is a NULL-terminated array of NUL-terminated strings
    // built before the fork; envp is an empty one.
    unsafe { libc::execve(c"/proc/self/exe".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    fail(Errno::last_raw())
}

/// Mounts the pod's shared memory tmpfs ([`crate::agent_proto::POD_SHM_DIR`])
/// with the data and flag options of `options` (`size=`, `mode=`,
/// `nosuid`...), unless it is mounted already (by the pod's first
/// container that asked).
pub fn pod_shm(options: &[String]) -> Result<(), String> {
    use crate::agent_proto::POD_SHM_DIR;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading the guest's mounts: {e}"))?;
    if mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(POD_SHM_DIR))
    {
        return Ok(());
    }
    let parsed = setup::parse_options(options);
    match std::fs::create_dir(POD_SHM_DIR) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {POD_SHM_DIR}: {e}")),
    }
    let data = parsed.data.join(",");
    nix::mount::mount(
        Some("shm"),
        POD_SHM_DIR,
        Some("tmpfs"),
        parsed.flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| format!("mounting the pod's shared memory on {POD_SHM_DIR}: {e}"))
}

/// Where the agent mounts the guest's cgroup2 hierarchy for the cgroups of
/// a pod's containers (in the guest's devtmpfs, in its own namespace).
pub const CGROUP_ROOT: &str = "/dev/.husk-cgroup";
/// The controllers a pod container's cgroup gets, where the kernel has them.
const CGROUP_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// A pod container's cgroup in the guest: made with its limits, its
/// `cgroup.procs` open for the holder to move itself into before it makes
/// its cgroup namespace (so the container's `/sys/fs/cgroup` is this one).
pub struct GuestCgroup {
    pub path: std::path::PathBuf,
    pub procs: OwnedFd,
}

impl GuestCgroup {
    /// Whether the kernel killed a process of it for want of memory.
    pub fn oom_killed(&self) -> bool {
        std::fs::read_to_string(self.path.join("memory.events"))
            .map(|t| oom_kills(&t) > 0)
            .unwrap_or(false)
    }

    /// Kills every process left in it (`cgroup.kill`, Linux 5.14).
    pub fn kill(&self) {
        if let Err(e) = std::fs::write(self.path.join("cgroup.kill"), "1") {
            eprintln!(
                "{} killing what is left in {}: {e}",
                crate::proto::LOG_PREFIX,
                self.path.display()
            );
        }
    }

    /// Removes it (its processes are gone; a few tries while the last are
    /// reaped).
    pub fn remove(&self) {
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        eprintln!(
            "{} removing the cgroup {}: still busy",
            crate::proto::LOG_PREFIX,
            self.path.display()
        );
    }
}

/// `oom_kill` of a `memory.events` file.
pub fn oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The cgroup v2 files and values for `r`.
pub fn cgroup_files(r: &crate::agent_proto::GuestResources) -> Vec<(&'static str, String)> {
    let mut files = Vec::new();
    if let Some(m) = r.memory_max {
        files.push(("memory.max", m.to_string()));
    }
    if let Some(s) = r.memory_swap_max {
        files.push(("memory.swap.max", s.to_string()));
    }
    if let Some(p) = r.pids_max {
        files.push(("pids.max", p.to_string()));
    }
    if let Some((quota, period)) = r.cpu_max {
        files.push(("cpu.max", format!("{quota} {period}")));
    }
    if let Some(w) = r.cpu_weight {
        files.push(("cpu.weight", w.clamp(1, 10_000).to_string()));
    }
    files
}

/// Makes container `id`'s cgroup with `resources` (see [`GuestCgroup`]).
pub fn guest_cgroup(
    id: &str,
    resources: &crate::agent_proto::GuestResources,
) -> Result<GuestCgroup, String> {
    let plain = !id.is_empty() && id != "." && id != ".." && !id.contains('/');
    if !plain {
        return Err(format!("container id {id:?} is not a cgroup name"));
    }
    let root = std::path::Path::new(CGROUP_ROOT);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading the guest's mounts: {e}"))?;
    if !mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(CGROUP_ROOT))
    {
        match std::fs::create_dir(root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("creating {CGROUP_ROOT}: {e}")),
        }
        nix::mount::mount(
            Some("cgroup2"),
            root,
            Some("cgroup2"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| format!("mounting cgroup2 on {CGROUP_ROOT}: {e}"))?;
        let have = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let enable: Vec<String> = CGROUP_CONTROLLERS
            .iter()
            .filter(|c| have.split_whitespace().any(|h| h == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if !enable.is_empty() {
            std::fs::write(root.join("cgroup.subtree_control"), enable.join(" "))
                .map_err(|e| format!("enabling the cgroup controllers {enable:?}: {e}"))?;
        }
    }
    let path = root.join(id);
    match std::fs::create_dir(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating the cgroup {}: {e}", path.display())),
    }
    let made = (|| {
        for (file, value) in cgroup_files(resources) {
            std::fs::write(path.join(file), &value)
                .map_err(|e| format!("setting {file} of container {id} to {value}: {e}"))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path.join("cgroup.procs"))
            .map(OwnedFd::from)
            .map_err(|e| format!("opening {}/cgroup.procs: {e}", path.display()))
    })();
    match made {
        Ok(procs) => Ok(GuestCgroup { path, procs }),
        Err(e) => {
            let _ = std::fs::remove_dir(&path);
            Err(e)
        }
    }
}

/// The namespace types a later container of a pod may share with the pod's
/// first container (its sandbox), by their names under `/proc/PID/ns`.
const JOINABLE: [(&str, &str); 3] = [("pid", "pid"), ("ipc", "ipc"), ("uts", "uts")];

/// Sends `signal` to every process of the pid namespace whose init is
/// `init` (`ns`: the container's namespaces): `kill(-1)` from inside it,
/// by a short-lived child that joins it (which spares the namespace's
/// init), then `init` itself. Without a pid namespace of its own, only
/// `init` gets it.
pub fn signal_pid_namespace(ns: Option<&Namespaces>, init: i32, signal: i32) -> Result<(), Errno> {
    let Some(pid_ns) = ns.and_then(|n| n.pid.as_ref()) else {
        // SAFETY: kill has no memory effects.
        return Errno::result(unsafe { libc::kill(init, signal) }).map(drop);
    };
    let (tx, rx) = std::sync::mpsc::channel::<Result<nix::unistd::Pid, Errno>>();
    let fd = pid_ns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(|| {
            let r = (|| {
                let saved = pid_for_children()?;
                nix::sched::setns(
                    // SAFETY: fd stays open for the scope (borrowed from ns).
                    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                    nix::sched::CloneFlags::CLONE_NEWPID,
                )?;
                // SAFETY: the child only calls kill and _exit.
                let forked = unsafe { nix::unistd::fork() };
                let _ = nix::sched::setns(&saved, nix::sched::CloneFlags::CLONE_NEWPID);
                match forked? {
                    nix::unistd::ForkResult::Child => {
                        // SAFETY: async-signal-safe calls only after fork.
                        unsafe {
                            let rc = libc::kill(-1, signal);
                            libc::_exit(if rc == 0 { 0 } else { 1 })
                        }
                    }
                    nix::unistd::ForkResult::Parent { child } => Ok(child),
                }
            })();
            let _ = tx.send(r);
        });
    });
    // The reaper thread reaps the child.
    rx.recv().map_err(|_| Errno::EIO)??;
    // SAFETY: kill has no memory effects.
    Errno::result(unsafe { libc::kill(init, signal) }).map(drop)
}

/// `Create`'s side: starts the holder for `spec` and waits until the
/// container is set up (or why it is not). `join`: the pod's first
/// container's namespaces, for the types in `spec.join_namespaces`.
pub fn launch(
    spec: &ContainerSpec,
    reaper: &Reaper,
    join: Option<&Namespaces>,
    cgroup: Option<&GuestCgroup>,
) -> Result<Holder, String> {
    let cgroup_procs = cgroup.map(|c| c.procs.as_raw_fd());
    let json = serde_json::to_vec(spec).map_err(|e| format!("encoding the spec: {e}"))?;
    let maps = (!spec.uid_map.is_empty() || !spec.gid_map.is_empty()).then(|| {
        (
            crate::agent_proto::map_text(&spec.uid_map),
            crate::agent_proto::map_text(&spec.gid_map),
        )
    });
    let joins = |kind: &str| spec.join_namespaces.iter().any(|n| n == kind);
    let wants = |kind: &str| !joins(kind) && spec.namespaces.iter().any(|n| n == kind);
    if let Some(kind) = spec
        .join_namespaces
        .iter()
        .find(|k| !JOINABLE.iter().any(|(t, _)| t == k))
    {
        return Err(format!(
            "a container of a pod shares the pod's pid, ipc and uts namespaces, not its {kind} one"
        ));
    }
    let mut join_fds: Vec<RawFd> = Vec::new();
    let mut join_pid = None;
    for (kind, name) in JOINABLE {
        if !joins(kind) {
            continue;
        }
        let fd = join.and_then(|ns| {
            if kind == "pid" {
                ns.pid.as_ref()
            } else {
                ns.named(name)
            }
        });
        let Some(fd) = fd else {
            return Err(format!(
                "the pod's first container has no {kind} namespace of its own to share"
            ));
        };
        if kind == "pid" {
            join_pid = Some(fd);
        } else {
            join_fds.push(fd.as_raw_fd());
        }
    }
    let new_pid = wants("pid");
    let mut flags = libc::CLONE_NEWNS;
    let mut joined = vec!["mnt"];
    for (kind, flag, name) in KINDS.into_iter().skip(1) {
        if wants(kind) {
            flags |= flag;
            joined.push(name);
        } else if joins(kind) {
            joined.push(name);
        }
    }
    let (spec_r, spec_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("a pipe for the spec: {e}"))?;
    let (control, child_control) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("the holder's control socket: {e}"))?;
    let argv_strings = [
        c"husk-init".to_owned(),
        std::ffi::CString::new(HOLDER_ARG).unwrap_or_default(),
    ];
    let argv = spawn::null_terminated(&argv_strings);
    let exit = Arc::new(Deferred::default());
    let on_exit: OnExit = {
        let exit = Arc::clone(&exit);
        Box::new(move |status| exit.exited(status))
    };
    let (spec_raw, control_raw) = (spec_r.as_raw_fd(), child_control.as_raw_fd());
    let pid = fork_in_pid_ns(new_pid, join_pid, || {
        reaper.fork_registered(
            || {
                // SAFETY: the child runs only holder_child: raw system calls
                // on data built before the fork; it never returns.
                match unsafe { nix::unistd::fork() } {
                    Ok(nix::unistd::ForkResult::Child) => {
                        holder_child(cgroup_procs, &join_fds, flags, spec_raw, control_raw, &argv)
                    }
                    Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child.as_raw()),
                    Err(errno) => Err(errno),
                }
            },
            on_exit,
        )
    })
    .map_err(|e| format!("starting the container's first process: {e}"))?;
    drop(spec_r);
    drop(child_control);
    let kill = || {
        // SAFETY: kill has no memory effects; the pid is our child, reaped
        // by the reaper only.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    };
    // A holder that died early closes its end: the write fails, and the
    // answer below says why.
    let _ = File::from(spec_w).write_all(&json);
    let mut answer = vec![0u8; MAX_ANSWER];
    let answer = match recv(&control, &mut answer) {
        Ok(n) => &answer[..n],
        Err(e) => {
            kill();
            return Err(format!("reading the container setup's answer: {e}"));
        }
    };
    if answer != READY {
        kill();
        return Err(match answer {
            [] => "the container's setup process ended without an answer".into(),
            [CHILD_FAILED, errno @ ..] if errno.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(errno);
                format!(
                    "entering the container's namespaces: {}",
                    spawn::errno_text(Errno::from_raw(i32::from_le_bytes(b)))
                )
            }
            text => String::from_utf8_lossy(text).into_owned(),
        });
    }
    let opened = (|| {
        let pid_ns = if new_pid || join_pid.is_some() {
            Some(open_ns(pid, "pid")?)
        } else {
            None
        };
        let others = joined
            .iter()
            .map(|name| open_ns(pid, name))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, String>(Namespaces {
            root_pid: pid,
            pid: pid_ns,
            others,
            names: joined.clone(),
            cgroup_procs: match cgroup {
                Some(c) => Some(
                    c.procs
                        .try_clone()
                        .map_err(|e| format!("the container's cgroup: {e}"))?,
                ),
                None => None,
            },
            has_user: maps.is_some(),
            user: Mutex::new(None),
        })
    })();
    let namespaces = match opened {
        Ok(ns) => ns,
        Err(e) => {
            kill();
            return Err(e);
        }
    };
    Ok(Holder {
        pid,
        control,
        maps,
        exit,
        namespaces: Arc::new(namespaces),
    })
}

/// The holder's side ([`HOLDER_ARG`]): never returns.
pub fn holder_main() -> ! {
    crate::boot_timer::mark(crate::proto::BootEvent::HolderStarted);
    // SAFETY: launch installed both descriptors for this process alone.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    let answer = |text: &[u8]| {
        let _ = nix::sys::socket::send(control.as_raw_fd(), text, MsgFlags::MSG_NOSIGNAL);
    };
    let (prepared, user) = match set_up() {
        Ok(p) => p,
        Err(e) => {
            answer(e.as_bytes());
            std::process::exit(1);
        }
    };
    crate::boot_timer::mark(crate::proto::BootEvent::ContainerSetUp);
    answer(READY);
    let mut flag = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let received = loop {
        let mut iov = [std::io::IoSliceMut::new(&mut flag)];
        match recvmsg::<()>(
            control.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(_) => std::process::exit(0),
            Ok(msg) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(list) = c {
                            fds.extend(list);
                        }
                    }
                }
                break (msg.bytes, fds);
            }
        }
    };
    let (bytes, fds) = received;
    // The agent closed the socket (deleted before start), or sent nonsense.
    if bytes != 1 || fds.len() != 4 {
        std::process::exit(0);
    }
    let new_user = user.then_some(control.as_raw_fd());
    spawn::run_here(
        &prepared,
        [fds[0], fds[1], fds[2]],
        flag[0] == 1,
        fds[3],
        new_user,
    )
}

/// Makes the holder's file system accesses those of the container's root
/// in its user namespace (`setfsuid`, `setfsgid`), keeping its
/// capabilities (a non-zero fsuid clears the file ones from the effective
/// set; they stay permitted): what it creates in the rootfs, on the host
/// over virtio-fs, is the mapped root's, as under runc, whose init does
/// this inside the namespace. The fs server refuses ids outside the map,
/// so a guest root cannot act as the host's.
fn act_as(uid: u32, gid: u32) -> Result<(), String> {
    // SAFETY: setfsgid/setfsuid take an id and change this process's
    // credentials only (it is single-threaded).
    unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
    }
    let mut data = spawn::capget().map_err(|e| format!("capget: {e}"))?;
    for d in &mut data {
        d.effective = d.permitted;
    }
    spawn::capset(&data).map_err(|e| format!("capset: {e}"))
}

/// Reads the spec and sets the container up; the process, ready to run,
/// and whether it gets a user namespace of its own.
fn set_up() -> Result<(Prepared, bool), String> {
    // SAFETY: launch installed this descriptor for this process alone.
    let file = unsafe { File::from_raw_fd(SPEC_FD) };
    let mut json = Vec::new();
    file.take(MAX_SPEC)
        .read_to_end(&mut json)
        .map_err(|e| format!("reading the container spec: {e}"))?;
    let spec: ContainerSpec =
        serde_json::from_slice(&json).map_err(|e| format!("decoding the container spec: {e}"))?;
    if let Some((uid, gid)) = setup::mapped_root(&spec) {
        act_as(uid, gid)?;
    }
    setup::apply(&spec, &mut setup::RealSetupOs::default()).map_err(|e| e.to_string())?;
    let mut prepared = Prepared::new(&spec.process).map_err(|e| e.to_string())?;
    if let Some(program) = &spec.seccomp {
        prepared.set_seccomp(program).map_err(|e| e.to_string())?;
    }
    Ok((
        prepared,
        !spec.uid_map.is_empty() || !spec.gid_map.is_empty(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_proto::GuestResources;

    #[test]
    fn limits_become_cgroup_files() {
        assert!(cgroup_files(&GuestResources::default()).is_empty());
        let files = cgroup_files(&GuestResources {
            memory_max: Some(32 << 20),
            memory_swap_max: Some(0),
            pids_max: Some(100),
            cpu_max: Some((50_000, 100_000)),
            cpu_weight: Some(20_000),
        });
        assert_eq!(
            files,
            vec![
                ("memory.max", "33554432".to_string()),
                ("memory.swap.max", "0".into()),
                ("pids.max", "100".into()),
                ("cpu.max", "50000 100000".into()),
                ("cpu.weight", "10000".into()),
            ]
        );
    }

    #[test]
    fn oom_kills_are_read_from_memory_events() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kills(events), 1);
        assert_eq!(oom_kills("oom 3\n"), 0);
        assert_eq!(oom_kills("oom_kill nope\n"), 0);
        assert_eq!(oom_kills(""), 0);
    }

    #[test]
    fn a_cgroup_name_must_be_plain() {
        for bad in ["", ".", "..", "a/b"] {
            assert!(guest_cgroup(bad, &GuestResources::default()).is_err());
        }
    }
}
