//! The VMM's user, pid, cgroup, uts and ipc namespaces: what the spec gives the
//! container, as runc gives it to the container's pid.
//!
//! The container's processes live in the guest, which has its own hostname,
//! IPC objects, pids and cgroups whatever the host does; but the
//! container's pid on the host is the VMM, and what engines and operators
//! see through `/proc/PID/ns/*` (`nsenter -t PID -u hostname`, a pod whose
//! containers join the sandbox's namespaces by path) should be what runc
//! shows for the same bundle:
//! - no entry of a type in `linux.namespaces`: the host's (as asked);
//! - an entry without a path: a new namespace for the VMM, the new uts one
//!   named `hostname` (runc sets it there);
//! - an entry with a path: the VMM joins it (checked at create to be a
//!   namespace of that type).
//!
//! How each is entered:
//! - pid: `create` spawns the VMM from a thread of its own that unshared
//!   (or joined) the pid namespace for its children ([`in_pid_namespace`]):
//!   a new one has the VMM as its pid 1, as runc's has the container's
//!   process;
//! - cgroup: the VMM's main thread, once `create` has put the VMM in its
//!   cgroup (it then tells the VMM to go), unshares (or joins) the cgroup
//!   namespace, whose root is then that cgroup ([`OpenedNs`], opened
//!   before the main thread moves into the container's view);
//! - uts, ipc: the VMM's main thread, before it starts any other
//!   ([`enter`]).
//! - user: the VMM's main thread, last, once the process has one thread
//!   and needs no host privilege any more ([`UserNs`]; the VMM's order of
//!   work for it is `runtime::vmm_process`'s `run_in_user_ns`): a new one
//!   gets the spec's maps, written by a child from outside.
//!
//! Either way the VMM's threads cannot change a hostname, reach an IPC
//! object or signal a process outside it once their capabilities are
//! dropped and their seccomp filters on ([`super::seccomp`]): the new
//! namespaces are about fidelity, and they keep a VMM out of the host's
//! SysV IPC and process table before then.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `NS_GET_NSTYPE` (`linux/nsfs.h`: `_IO(0xb7, 0x3)`).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// What the VMM does with one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ns {
    /// Stays in the namespace it was started in (the host's).
    #[default]
    Host,
    /// Makes a new one.
    New,
    /// Joins the namespace at this path.
    Join(PathBuf),
}

/// The VMM's namespaces of the spec, and the hostname of a new uts one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmNamespaces {
    #[serde(default)]
    pub uts: Ns,
    #[serde(default)]
    pub ipc: Ns,
    /// Entered by `create` as it spawns the VMM ([`in_pid_namespace`]).
    #[serde(default)]
    pub pid: Ns,
    /// Entered by the VMM's main thread once it is in its cgroup
    /// ([`OpenedNs`]).
    #[serde(default)]
    pub cgroup: Ns,
    /// Set in a new uts namespace (`hostname` of the spec).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Entered by the VMM's main thread last, once everything that needs
    /// the host's privileges is done ([`UserNs`]).
    #[serde(default)]
    pub user: Ns,
    /// The maps of a new user namespace, as `/proc/PID/uid_map` takes them
    /// (`linux.uidMappings`, `gidMappings`).
    #[serde(default)]
    pub uid_map: String,
    #[serde(default)]
    pub gid_map: String,
}

/// The kinds of namespace this module checks: the VMM enters the uts, ipc,
/// pid and cgroup ones; the paths of the others are checked at create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Uts,
    Ipc,
    Pid,
    Mount,
    Cgroup,
    User,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Uts => "uts",
            Kind::Ipc => "ipc",
            Kind::Pid => "pid",
            Kind::Mount => "mnt",
            Kind::Cgroup => "cgroup",
            Kind::User => "user",
        }
    }

    fn clone_flag(self) -> libc::c_int {
        match self {
            Kind::Uts => libc::CLONE_NEWUTS,
            Kind::Ipc => libc::CLONE_NEWIPC,
            Kind::Pid => libc::CLONE_NEWPID,
            Kind::Mount => libc::CLONE_NEWNS,
            Kind::Cgroup => libc::CLONE_NEWCGROUP,
            Kind::User => libc::CLONE_NEWUSER,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error(
        "linux.namespaces: the {kind} namespace path {path}: {reason}; give the \
         /proc/PID/ns/{kind} of a running process (or drop the path for a new one)"
    )]
    BadPath {
        kind: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "linux.namespaces has a new user namespace but linux.{which} is empty; give the \
         container's ids on the host (e.g. [{{\"containerID\": 0, \"hostID\": 100000, \
         \"size\": 65536}}]), as runc requires"
    )]
    NoMaps { which: &'static str },
    #[error("the VMM's {kind} namespace: {step}: {errno}")]
    Enter {
        kind: &'static str,
        step: &'static str,
        errno: nix::Error,
    },
}

/// The error of `step` entering a namespace of `kind`, for `map_err`.
fn entering(kind: Kind, step: &'static str) -> impl FnOnce(nix::Error) -> NsError {
    move |errno| NsError::Enter {
        kind: kind.name(),
        step,
        errno,
    }
}

/// Whether the namespace files `a` and `b` are the same namespace.
fn same_namespace(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Opens `path` and checks that it is a namespace of `kind`.
pub fn open_checked(kind: Kind, path: &Path) -> Result<OwnedFd, NsError> {
    let bad = |reason: String| NsError::BadPath {
        kind: kind.name(),
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    // SAFETY: an ioctl with no argument on a descriptor this function owns.
    let typ = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if typ < 0 {
        return Err(bad("not a namespace file".into()));
    }
    if typ != kind.clone_flag() {
        return Err(bad(format!("not a {} namespace", kind.name())));
    }
    Ok(file.into())
}

/// One namespace of a plan, ready to enter: a path is opened (and checked)
/// when this is made, so it can be entered later from where the path no
/// longer resolves (the VMM's main thread enters its cgroup namespace from
/// the container's view of its files).
#[derive(Debug)]
pub enum OpenedNs {
    Host,
    New,
    Join(OwnedFd),
}

impl OpenedNs {
    pub fn open(kind: Kind, ns: &Ns) -> Result<OpenedNs, NsError> {
        Ok(match ns {
            Ns::Host => OpenedNs::Host,
            Ns::New => OpenedNs::New,
            Ns::Join(path) => OpenedNs::Join(open_checked(kind, path)?),
        })
    }

    /// Puts the calling thread in this namespace of `kind` (the one it was
    /// opened as): unshares a new one or joins the one opened. For `pid`
    /// this is the namespace of the thread's children. Needs
    /// `CAP_SYS_ADMIN` for anything but [`OpenedNs::Host`].
    pub fn enter(self, kind: Kind) -> Result<(), NsError> {
        let err = |step| entering(kind, step);
        let flag = nix::sched::CloneFlags::from_bits_truncate(kind.clone_flag());
        match self {
            OpenedNs::Host => Ok(()),
            OpenedNs::New => nix::sched::unshare(flag).map_err(err("unshare")),
            OpenedNs::Join(fd) => nix::sched::setns(fd, flag).map_err(err("setns")),
        }
    }
}

/// Puts the calling thread (the VMM's main thread, before it starts any
/// other) in the uts and ipc namespaces `ns` asks for. Needs
/// `CAP_SYS_ADMIN`.
pub fn enter(ns: &VmmNamespaces) -> Result<(), NsError> {
    for (kind, what) in [(Kind::Uts, &ns.uts), (Kind::Ipc, &ns.ipc)] {
        OpenedNs::open(kind, what)?.enter(kind)?;
    }
    if ns.uts == Ns::New {
        if let Some(name) = &ns.hostname {
            nix::unistd::sethostname(name).map_err(entering(Kind::Uts, "sethostname"))?;
        }
    }
    Ok(())
}

/// How long [`UserNs::enter`] waits for the process's other threads (ones
/// that were joined, still on their way out of the kernel) to be gone: a
/// user namespace is entered by a process of one thread only.
const ONE_THREAD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The VMM's user namespace, made ready while the process still sees the
/// host's `/proc`, and entered by [`UserNs::enter`] once it has one thread
/// and needs no host privilege any more (everything it holds open stays
/// usable; what it does from then on is judged in the new namespace):
/// - a new one gets the spec's maps, written by a child process forked now
///   (a namespace's maps are written from outside it, by a process with
///   `CAP_SETUID` over the parent, and once only), told to go once the
///   namespace exists;
/// - a path is opened and checked now.
#[derive(Debug)]
pub enum UserNs {
    Host,
    New(MapWriter),
    Join(OwnedFd),
}

/// The child that writes a new user namespace's maps ([`UserNs::New`]).
#[derive(Debug)]
pub struct MapWriter {
    child: nix::unistd::Pid,
    /// Written once the namespace exists; closed unwritten, the child
    /// exits without writing.
    go: Option<OwnedFd>,
}

/// Exit statuses of the map writer.
const WROTE: i32 = 0;
const UID_MAP_FAILED: i32 = 1;
const GID_MAP_FAILED: i32 = 2;
const NOT_TOLD: i32 = 3;

impl UserNs {
    /// Prepares `ns` for this process (`pid`: its pid as the host's `/proc`
    /// numbers it); `uid_map` and `gid_map` are the maps of a new one
    /// (`inside outside count` lines).
    pub fn prepare(ns: &Ns, pid: u32, uid_map: &str, gid_map: &str) -> Result<UserNs, NsError> {
        let err = |step| entering(Kind::User, step);
        match ns {
            Ns::Host => Ok(UserNs::Host),
            Ns::Join(path) => Ok(UserNs::Join(open_checked(Kind::User, path)?)),
            Ns::New => {
                let cstr = |s: String| {
                    std::ffi::CString::new(s)
                        .map_err(|_| err("a map with a NUL")(nix::Error::EINVAL))
                };
                let uid_path = cstr(format!("/proc/{pid}/uid_map"))?;
                let gid_path = cstr(format!("/proc/{pid}/gid_map"))?;
                let (uid_map, gid_map) = (uid_map.as_bytes(), gid_map.as_bytes());
                let (told, go) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(err("a pipe for the map writer"))?;
                // SAFETY: the child makes system calls only (no allocation,
                // no lock), on buffers made before the fork, then `_exit`s.
                match unsafe { nix::unistd::fork() }.map_err(err("forking the map writer"))? {
                    nix::unistd::ForkResult::Child => {
                        drop(go);
                        let mut byte = [0u8; 1];
                        // SAFETY: reads one byte into a local buffer.
                        let n =
                            unsafe { libc::read(told.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
                        let status = if n != 1 {
                            NOT_TOLD
                        } else if !write_once(&uid_path, uid_map) {
                            UID_MAP_FAILED
                        } else if !write_once(&gid_path, gid_map) {
                            GID_MAP_FAILED
                        } else {
                            WROTE
                        };
                        // SAFETY: ends the child without running the
                        // parent's destructors.
                        unsafe { libc::_exit(status) }
                    }
                    nix::unistd::ForkResult::Parent { child } => {
                        drop(told);
                        Ok(UserNs::New(MapWriter {
                            child,
                            go: Some(go),
                        }))
                    }
                }
            }
        }
    }

    /// Puts the process (which must have one thread by now, or within
    /// [`ONE_THREAD_WAIT`]) in the namespace; a new one has its maps when
    /// this returns. The process then has every capability in it, and
    /// none outside.
    pub fn enter(self) -> Result<(), NsError> {
        let err = |step| entering(Kind::User, step);
        let alone = |call: &mut dyn FnMut() -> nix::Result<()>| {
            let until = std::time::Instant::now() + ONE_THREAD_WAIT;
            loop {
                match call() {
                    Err(nix::Error::EINVAL) if std::time::Instant::now() < until => {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    other => return other,
                }
            }
        };
        let flag = nix::sched::CloneFlags::CLONE_NEWUSER;
        match self {
            UserNs::Host => Ok(()),
            UserNs::Join(fd) => {
                alone(&mut || nix::sched::setns(&fd, flag)).map_err(err("setns (one thread)"))
            }
            UserNs::New(mut writer) => {
                alone(&mut || nix::sched::unshare(flag)).map_err(err("unshare (one thread)"))?;
                let go = writer.go.take();
                let told = go
                    .as_ref()
                    .is_some_and(|go| nix::unistd::write(go, b"g") == Ok(1));
                drop(go);
                let status = writer.wait();
                match status {
                    Some(WROTE) if told => Ok(()),
                    Some(UID_MAP_FAILED) => Err(err("writing uid_map")(nix::Error::EPERM)),
                    Some(GID_MAP_FAILED) => Err(err("writing gid_map")(nix::Error::EPERM)),
                    _ => Err(err("the map writer")(nix::Error::ECHILD)),
                }
            }
        }
    }
}

impl MapWriter {
    /// Waits for the child; its exit status.
    fn wait(&mut self) -> Option<i32> {
        loop {
            match nix::sys::wait::waitpid(self.child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => return Some(code),
                Err(nix::Error::EINTR) => continue,
                _ => return None,
            }
        }
    }
}

impl Drop for MapWriter {
    /// Never told (the VMM gave up first): the child exits unwritten.
    fn drop(&mut self) {
        if self.go.take().is_some() {
            self.wait();
        }
    }
}

/// Writes `data` to `path` in one `write` (how a map must be written); in
/// the map writer's child, system calls only.
fn write_once(path: &std::ffi::CStr, data: &[u8]) -> bool {
    // SAFETY: open of a NUL-terminated path made before the fork.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    // SAFETY: writes `data`, a live buffer of that length, to the
    // descriptor just opened, which is then closed.
    let ok = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) }
        == isize::try_from(data.len()).unwrap_or(-1);
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    ok
}

/// The maps of the user namespace at `path` as the host numbers them
/// (`uid_map`, `gid_map` text), read by a child that joins it.
pub fn read_maps(path: &Path) -> Result<(String, String), NsError> {
    let fd = open_checked(Kind::User, path)?;
    let bad = |reason: String| NsError::BadPath {
        kind: "user",
        path: path.to_path_buf(),
        reason,
    };
    let read = |file: &str| -> Result<String, NsError> {
        use std::os::unix::process::CommandExt as _;
        let raw = fd.as_raw_fd();
        let mut cmd = std::process::Command::new("cat");
        cmd.arg(file).stdin(std::process::Stdio::null());
        // SAFETY: setns is async-signal-safe; the child has one thread.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(raw, libc::CLONE_NEWUSER) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd
            .output()
            .map_err(|e| bad(format!("reading its {file}: {e}")))?;
        if !out.status.success() {
            return Err(bad(format!(
                "reading its {file}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        String::from_utf8(out.stdout).map_err(|_| bad(format!("{file} is not text")))
    };
    Ok((read("/proc/self/uid_map")?, read("/proc/self/gid_map")?))
}

/// Runs `spawn` (which starts the VMM) on a thread of its own whose
/// children go to the pid namespace `pid` asks for: a new one (the VMM its
/// pid 1) or the one at a path. A thread's pid namespace for children is
/// its own, so the caller's other threads and later children stay where
/// they were. Needs `CAP_SYS_ADMIN` for anything but [`Ns::Host`].
pub fn in_pid_namespace<T: Send>(pid: &Ns, spawn: impl FnOnce() -> T + Send) -> Result<T, NsError> {
    let target = OpenedNs::open(Kind::Pid, pid)?;
    if let OpenedNs::Host = target {
        return Ok(spawn());
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            target.enter(Kind::Pid)?;
            Ok(spawn())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// What a spec asks of the VMM's namespaces; a path is checked now, so
/// that a bad one fails `create` before any VM exists.
pub fn plan(spec: &oci_spec::runtime::Spec) -> Result<VmmNamespaces, NsError> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    let entries = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let of = |kind: Kind, typ: T| -> Result<Ns, NsError> {
        match entries.iter().find(|n| n.typ() == typ) {
            None => Ok(Ns::Host),
            Some(n) => match n.path() {
                None => Ok(Ns::New),
                Some(p) => {
                    open_checked(kind, p)?;
                    Ok(Ns::Join(p.clone()))
                }
            },
        }
    };
    let uts = of(Kind::Uts, T::Uts)?;
    let ipc = of(Kind::Ipc, T::Ipc)?;
    let pid = of(Kind::Pid, T::Pid)?;
    let cgroup = of(Kind::Cgroup, T::Cgroup)?;
    let user = match of(Kind::User, T::User)? {
        // Already in it (the host's, say): nothing to join, and setns
        // refuses to join a process's own user namespace.
        Ns::Join(p) if same_namespace(&p, Path::new("/proc/self/ns/user")) => Ns::Host,
        other => other,
    };
    let map = |which: &'static str, m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        let text: String = m
            .iter()
            .flatten()
            .map(|r| format!("{} {} {}\n", r.container_id(), r.host_id(), r.size()))
            .collect();
        if user == Ns::New && text.is_empty() {
            return Err(NsError::NoMaps { which });
        }
        Ok(if user == Ns::New { text } else { String::new() })
    };
    let linux = spec.linux().as_ref();
    let uid_map = map("uidMappings", &linux.and_then(|l| l.uid_mappings().clone()))?;
    let gid_map = map("gidMappings", &linux.and_then(|l| l.gid_mappings().clone()))?;
    // Not entered by the VMM (docs/oci.md: the VMM has a mount namespace of
    // its own whatever the spec says), but a path of the wrong type is a
    // mistake in the bundle: create fails naming it, as runc's does.
    of(Kind::Mount, T::Mount)?;
    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    Ok(VmmNamespaces {
        uts,
        ipc,
        pid,
        cgroup,
        hostname,
        user,
        uid_map,
        gid_map,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: serde_json::Value) -> oci_spec::runtime::Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "hostname": "web",
            "linux": {"namespaces": namespaces}
        }))
        .unwrap()
    }

    #[test]
    fn entries_map_to_host_new_and_join() {
        let p = plan(&spec(serde_json::json!([{"type": "pid"}]))).unwrap();
        assert_eq!((p.uts, p.ipc), (Ns::Host, Ns::Host));
        assert_eq!((p.pid, p.cgroup), (Ns::New, Ns::Host));
        let p = plan(&spec(serde_json::json!([
            {"type": "cgroup"},
            {"type": "pid", "path": "/proc/self/ns/pid"}
        ])))
        .unwrap();
        assert_eq!(p.pid, Ns::Join("/proc/self/ns/pid".into()));
        assert_eq!(p.cgroup, Ns::New);
        let p = plan(&spec(serde_json::json!([{"type": "uts"}, {"type": "ipc"}]))).unwrap();
        assert_eq!((p.uts, p.ipc), (Ns::New, Ns::New));
        assert_eq!(p.hostname.as_deref(), Some("web"));
        let p = plan(&spec(serde_json::json!([
            {"type": "uts", "path": "/proc/self/ns/uts"},
            {"type": "ipc", "path": "/proc/self/ns/ipc"}
        ])))
        .unwrap();
        assert_eq!(p.uts, Ns::Join("/proc/self/ns/uts".into()));
        assert_eq!(p.ipc, Ns::Join("/proc/self/ns/ipc".into()));
    }

    #[test]
    fn bad_paths_name_the_namespace_and_the_fix() {
        for (path, why) in [
            ("/nonexistent/ns", "No such file"),
            ("/proc/self/status", "not a namespace file"),
            ("/proc/self/ns/net", "not a uts namespace"),
        ] {
            let e = plan(&spec(serde_json::json!([{"type": "uts", "path": path}])))
                .unwrap_err()
                .to_string();
            assert!(e.contains("uts namespace path") && e.contains(path), "{e}");
            assert!(e.contains(why) && e.contains("/proc/PID/ns/uts"), "{e}");
        }
    }

    #[test]
    fn a_path_of_the_wrong_type_fails_for_every_kind() {
        for (typ, right, wrong) in [
            ("pid", "/proc/self/ns/pid", "/proc/self/ns/ipc"),
            ("mount", "/proc/self/ns/mnt", "/proc/self/ns/uts"),
            ("cgroup", "/proc/self/ns/cgroup", "/proc/self/ns/ipc"),
            ("user", "/proc/self/ns/user", "/proc/self/ns/mnt"),
            ("ipc", "/proc/self/ns/ipc", "/proc/self/ns/pid"),
        ] {
            plan(&spec(serde_json::json!([{"type": typ, "path": right}])))
                .unwrap_or_else(|e| panic!("{typ} {right}: {e}"));
            let e = plan(&spec(serde_json::json!([{"type": typ, "path": wrong}])))
                .unwrap_err()
                .to_string();
            assert!(e.contains(wrong) && e.contains("namespace path"), "{e}");
        }
    }

    #[test]
    fn plans_round_trip_and_old_plans_read_as_host() {
        let p = VmmNamespaces {
            uts: Ns::New,
            ipc: Ns::Join("/proc/1/ns/ipc".into()),
            pid: Ns::New,
            cgroup: Ns::Join("/proc/1/ns/cgroup".into()),
            hostname: Some("h".into()),
            user: Ns::New,
            uid_map: "0 1000 2000\n".into(),
            gid_map: "0 1000 3000\n".into(),
        };
        let back: VmmNamespaces =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let old: VmmNamespaces = serde_json::from_str("{}").unwrap();
        assert_eq!(old, VmmNamespaces::default());
    }

    /// In a forked child (root): a new uts namespace with the hostname,
    /// then joining the parent's again by path.
    #[test]
    fn a_new_uts_namespace_gets_the_hostname_and_a_path_is_joined() {
        crate::test_support::need_root("unshare, setns");
        let host = nix::unistd::gethostname().unwrap();
        let parent_uts = format!("/proc/{}/ns/uts", std::process::id());
        let parent_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap();
        assert!(crate::test_support::in_child(|| {
            enter(&VmmNamespaces {
                uts: Ns::New,
                ipc: Ns::New,
                hostname: Some("husk-ns-test".into()),
                ..Default::default()
            })
            .unwrap();
            let named = nix::unistd::gethostname().unwrap() == "husk-ns-test";
            let own_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap() != parent_ipc;
            enter(&VmmNamespaces {
                uts: Ns::Join(parent_uts.into()),
                ..Default::default()
            })
            .unwrap();
            named && own_ipc && nix::unistd::gethostname().unwrap() == host
        }));
        assert_eq!(nix::unistd::gethostname().unwrap(), host);
    }

    /// A child spawned in a new pid namespace is its pid 1; one spawned
    /// into that namespace by path is not, and shares it; the calling
    /// thread's own children stay in the host's.
    #[test]
    fn the_vmm_is_spawned_into_a_new_pid_namespace_or_the_one_named() {
        crate::test_support::need_root("unshare, setns");
        use std::process::{Command, Stdio};
        let own_pid = |out: std::process::Output| {
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let first = in_pid_namespace(&Ns::New, || {
            Command::new("sh")
                .args(["-c", "echo $$; exec sleep 100"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .unwrap();
        let mut first = first;
        let mut line = String::new();
        {
            use std::io::BufRead as _;
            let out = first.stdout.take().unwrap();
            std::io::BufReader::new(out).read_line(&mut line).unwrap();
        }
        assert_eq!(line.trim(), "1");
        let ns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
        assert_ne!(ns_of(first.id()), ns_of(std::process::id()));
        let path = PathBuf::from(format!("/proc/{}/ns/pid", first.id()));
        let joined = in_pid_namespace(&Ns::Join(path.clone()), || {
            Command::new("sh").args(["-c", "echo $$"]).output().unwrap()
        })
        .unwrap();
        assert_ne!(own_pid(joined), "1");
        let host = Command::new("sh").args(["-c", "echo $$"]).output().unwrap();
        assert_ne!(own_pid(host), "1");
        let _ = first.kill();
        let _ = first.wait();
        // The namespace died with its pid 1: joining it fails, naming it.
        let e = in_pid_namespace(&Ns::Join(path), || ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("pid namespace path"), "{e}");
    }

    /// In a forked child (root): a new cgroup namespace's root is the
    /// cgroup the thread is in; joined by path, the namespace is that one;
    /// a path of another type is refused.
    #[test]
    fn the_vmm_roots_a_cgroup_namespace_at_its_cgroup_or_joins_one() {
        crate::test_support::need_root("cgroup namespaces");
        let own = || std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let ns = || std::fs::read_link("/proc/thread-self/ns/cgroup").unwrap();
        let host_ns = ns();
        let cgroup = |ns: &Ns| OpenedNs::open(Kind::Cgroup, ns);
        cgroup(&Ns::Host).unwrap().enter(Kind::Cgroup).unwrap();
        assert_eq!(ns(), host_ns);
        assert!(crate::test_support::in_child(|| {
            // Opened before it is entered (the VMM's main thread then
            // lives where the path does not resolve).
            let back = cgroup(&Ns::Join("/proc/self/ns/cgroup".into())).unwrap();
            // Every hierarchy (a hybrid host has v1 ones too) is rooted at
            // the child's cgroups.
            let rooted = cgroup(&Ns::New).unwrap().enter(Kind::Cgroup).is_ok()
                && ns() != host_ns
                && own().lines().all(|l| l.ends_with(":/"));
            rooted && back.enter(Kind::Cgroup).is_ok() && ns() == host_ns
        }));
        let e = cgroup(&Ns::Join("/proc/self/ns/ipc".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a cgroup namespace"), "{e}");
    }

    #[test]
    fn a_new_user_namespace_needs_maps_and_joining_our_own_is_none() {
        let with_maps = |ns: serde_json::Value, maps: bool| {
            let mut v = serde_json::json!({
                "ociVersion": "1.0.2",
                "root": {"path": "rootfs"},
                "linux": {"namespaces": ns}
            });
            if maps {
                v["linux"]["uidMappings"] =
                    serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 2000}]);
                v["linux"]["gidMappings"] = serde_json::json!([
                    {"containerID": 0, "hostID": 1000, "size": 3000},
                    {"containerID": 5000, "hostID": 9000, "size": 1}
                ]);
            }
            plan(&serde_json::from_value(v).unwrap())
        };
        let p = with_maps(serde_json::json!([{"type": "user"}]), true).unwrap();
        assert_eq!(p.user, Ns::New);
        assert_eq!(p.uid_map, "0 1000 2000\n");
        assert_eq!(p.gid_map, "0 1000 3000\n5000 9000 1\n");
        let e = with_maps(serde_json::json!([{"type": "user"}]), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("uidMappings is empty") && e.contains("hostID"),
            "{e}"
        );
        // Our own namespace by path: nothing to join (setns would refuse).
        let own = with_maps(
            serde_json::json!([{"type": "user", "path": "/proc/self/ns/user"}]),
            false,
        )
        .unwrap();
        assert_eq!((own.user, own.uid_map.as_str()), (Ns::Host, ""));
        let e = with_maps(
            serde_json::json!([{"type": "user", "path": "/proc/self/ns/ipc"}]),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a user namespace"), "{e}");
    }

    /// In a forked child (root): a new user namespace gets exactly the
    /// maps given, written from outside it; a second child joins it by
    /// path, and `read_maps` reads them back as the host numbers them.
    #[test]
    fn the_vmm_enters_a_new_user_namespace_with_its_maps_or_joins_one() {
        crate::test_support::need_root("user namespaces");
        use std::io::{BufRead as _, Write as _};
        let own_ns = std::fs::read_link("/proc/self/ns/user").unwrap();
        let (uid_map, gid_map) = ("0 100000 65536\n", "0 200000 1000\n1000 5 1\n");
        // A child that enters one, reports, and waits to be read.
        let (rx, tx) = nix::unistd::pipe().unwrap();
        let (hold_r, hold_w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child runs this test's code and `_exit`s.
        let child = match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                drop(rx);
                drop(hold_w);
                let pid = std::process::id();
                let ok = UserNs::prepare(&Ns::New, pid, uid_map, gid_map)
                    .and_then(UserNs::enter)
                    .is_ok();
                let mut out = std::fs::File::from(tx);
                let line = if ok {
                    format!(
                        "{}|{}|{}\n",
                        std::fs::read_to_string("/proc/self/uid_map")
                            .unwrap()
                            .replace('\n', ";"),
                        std::fs::read_to_string("/proc/self/gid_map")
                            .unwrap()
                            .replace('\n', ";"),
                        std::fs::read_link("/proc/self/ns/user").unwrap().display()
                    )
                } else {
                    "failed\n".into()
                };
                let _ = out.write_all(line.as_bytes());
                let mut b = [0u8; 1];
                let _ = nix::unistd::read(hold_r.as_raw_fd(), &mut b);
                // SAFETY: ends the child.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => child,
        };
        drop(tx);
        drop(hold_r);
        let mut line = String::new();
        std::io::BufReader::new(std::fs::File::from(rx))
            .read_line(&mut line)
            .unwrap();
        let words = |m: &str| -> Vec<Vec<String>> {
            m.split(';')
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.split_whitespace().map(str::to_owned).collect())
                .collect()
        };
        let parts: Vec<&str> = line.trim_end().split('|').collect();
        assert_eq!(parts.len(), 3, "{line}");
        assert_eq!(words(parts[0]), words(&uid_map.replace('\n', ";")));
        assert_eq!(words(parts[1]), words(&gid_map.replace('\n', ";")));
        assert_ne!(parts[2], own_ns.display().to_string());
        // Read back from the host, and joined by path.
        let path = PathBuf::from(format!("/proc/{child}/ns/user"));
        let (u, g) = read_maps(&path).unwrap();
        assert_eq!(
            words(&u.replace('\n', ";")),
            words(&uid_map.replace('\n', ";"))
        );
        assert_eq!(
            words(&g.replace('\n', ";")),
            words(&gid_map.replace('\n', ";"))
        );
        let target = std::fs::read_link(&path).unwrap();
        assert!(crate::test_support::in_child(|| {
            UserNs::prepare(&Ns::Join(path.clone()), 0, "", "")
                .and_then(UserNs::enter)
                .is_ok()
                && std::fs::read_link("/proc/self/ns/user").unwrap() == target
        }));
        drop(hold_w);
        let _ = nix::sys::wait::waitpid(child, None);
        // A process with two threads cannot enter one: the error says so
        // (after the wait for threads on their way out).
        assert!(crate::test_support::in_child(|| {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let t = std::thread::spawn(move || {
                let _ = rx.recv();
            });
            let e = UserNs::prepare(&Ns::New, std::process::id(), uid_map, gid_map)
                .and_then(UserNs::enter)
                .unwrap_err()
                .to_string();
            drop(tx);
            let _ = t.join();
            e.contains("one thread")
        }));
    }
}
