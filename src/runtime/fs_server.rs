//! The container's fs server: the process that serves its shared files to
//! its VM, apart from the VMM.
//!
//! A file server needs to act as any owner (create a file as uid 1000,
//! chown, read a mode-0600 file of another user): a handful of
//! capabilities ([`crate::jail::caps::FS_PASSTHROUGH`]). The VMM needs
//! none once its VM is built, and it is the process that holds guest
//! memory and parses virtqueues. So a container's VMM starts one fs server
//! (`husk fs-server ID`, a fresh exec of the same binary) right after
//! staging the shares ([`spawn`]); the VMM's virtio-fs device copies each
//! FUSE request into memory the two share (a sealed memfd, the *channel*,
//! [`crate::vmm::devices::virtio::fs::channel`]) and copies the server's
//! answer from there into the guest
//! ([`crate::vmm::devices::virtio::fs::backend`]). The server never sees
//! guest memory, and a VMM taken over by its guest can ask of it only what
//! the guest's FUSE driver could.
//!
//! The server ([`run`]), before it serves: dies with the VMM's main thread
//! (`PR_SET_PDEATHSIG`; the kernel clears it when the passthrough first
//! acts as a guest's user, and from then on the server ends at the end of
//! its stream, which the kernel closes with the VMM), holds only the
//! stream, the channel, its log and stdio on `/dev/null`, moves into a mount namespace of its own with a jail holding
//! only the shares and `/proc/self/{fd,mountinfo}` (unless the container's
//! jail is off), sets no_new_privs and no core dumps, keeps only the
//! passthrough's capabilities, and installs its seccomp filter
//! ([`crate::jail::seccomp::Thread::FsServer`]). Once the VMM has been put
//! in its cgroup, it puts the server there too
//! ([`FsServerProcess::join_cgroup`]), so the container's file I/O counts
//! against the container's limits.

use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::jail::root::Jail;
use crate::jail::seccomp::{Filters, Mode, Thread};
use crate::vmm::devices::virtio::fs::backend::{send_ready, serve, Client, FsServer};
use crate::vmm::devices::virtio::fs::channel;
use crate::vmm::devices::virtio::fs::idmap::IdMaps;

/// The fs server's name in `ps` and `/proc/PID/comm`.
pub const PROCESS_NAME: &str = "husk-fs";
/// The verb that runs it.
pub const VERB: &str = "fs-server";
/// The descriptor of the stream in the server.
const STREAM_FD: i32 = 3;
/// The descriptor of the channel in the server.
const CHANNEL_FD: i32 = 4;
/// Where the child first moves the two descriptors it is given, above any
/// it must end up at (so placing one cannot close the other).
const FD_PARKING: i32 = 16;
/// Most bytes of a [`Spec`] as sent.
const MAX_SPEC: usize = 1 << 20;

/// Exit codes of the server process.
const EXIT_SERVED: u8 = 0;
const EXIT_SETUP: u8 = 1;
const EXIT_PROTOCOL: u8 = 2;

/// Why the fs server could not be started or placed.
#[derive(Debug, thiserror::Error)]
pub enum FsServerError {
    #[error("the fs server: a stream to it: {0}")]
    Stream(#[source] std::io::Error),
    #[error("the fs server: the memory it shares with the VMM: {0}")]
    Channel(#[source] std::io::Error),
    #[error("the fs server: starting {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the fs server: opening its log {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the fs server (pid {pid}): sending what it serves: {source}")]
    Send {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("the fs server (pid {pid}): moving it into the container's cgroup {cgroup}: {source}")]
    Cgroup {
        pid: u32,
        cgroup: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the fs server serves and how it is confined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// The device tag (the guest mounts it).
    pub tag: String,
    /// The staged shares' root.
    pub root: PathBuf,
    pub read_only: bool,
    pub ids: IdMaps,
    /// The container's state directory when the jail is on (the server's
    /// jail is made under it, in the server's own mount namespace).
    pub jail_state_dir: Option<PathBuf>,
    /// The seccomp mode of the container's VMM.
    pub seccomp: Mode,
    /// The VMM's log: the server logs there (and its seccomp report goes
    /// there).
    pub log: PathBuf,
    /// The VMM's pid: a server whose parent is no longer it stops.
    pub vmm_pid: u32,
}

/// The started server, as its VMM holds it.
#[derive(Debug)]
pub struct FsServerProcess {
    pub pid: u32,
    client: Option<Client>,
}

impl FsServerProcess {
    /// The device's end of the stream (once).
    pub fn take_client(&mut self) -> Option<Client> {
        self.client.take()
    }

    /// Moves the server into the cgroup at `cgroup` (a cgroup2
    /// directory): the VMM's, once `create` put the VMM there after the
    /// server started. The pid written is the server's in the VMM's pid
    /// namespace, the one the writer is in, as the kernel reads it.
    pub fn join_cgroup(&self, cgroup: &Path) -> Result<(), FsServerError> {
        let pid = self.pid;
        std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()).map_err(|source| {
            FsServerError::Cgroup {
                pid,
                cgroup: cgroup.to_path_buf(),
                source,
            }
        })
    }
}

/// Starts the fs server of `spec` for container `id`: `husk fs-server ID`
/// with the VMM's environment, stdio on `/dev/null` but stderr on the
/// VMM's log, the stream on descriptor 3, the channel on 4 and nothing
/// else; then sends it `spec`. Call from the thread that lives as long as
/// the VMM (the server's parent-death signal is tied to it).
pub fn spawn(spec: &Spec, id: &str) -> Result<FsServerProcess, FsServerError> {
    let exe = std::env::current_exe().map_err(|source| FsServerError::Spawn {
        exe: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let (mut ours, theirs) = UnixStream::pair().map_err(FsServerError::Stream)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|source| FsServerError::Log {
            path: spec.log.clone(),
            source,
        })?;
    let shared = channel::create().map_err(FsServerError::Channel)?;
    let from = theirs.as_raw_fd();
    let from_channel = shared.as_raw_fd();
    let mut cmd = crate::jail::helper_command(&exe, VERB, log);
    cmd.arg(id);
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes prctl(2), fcntl(2), dup2(2) and close_range(2) system calls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Both above 4 first: dup2 onto 3 must not close the channel
            // if it happens to be descriptor 3 (and the same for 4).
            let stream = libc::fcntl(from, libc::F_DUPFD, FD_PARKING);
            let shared = libc::fcntl(from_channel, libc::F_DUPFD, FD_PARKING);
            if stream < 0 || shared < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 leaves the new descriptor without close-on-exec.
            if libc::dup2(stream, STREAM_FD) < 0 || libc::dup2(shared, CHANNEL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            crate::jail::close_inherited_fds(&[STREAM_FD, CHANNEL_FD])
        });
    }
    let child = cmd.spawn().map_err(|source| FsServerError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    drop(theirs);
    let pid = child.id();
    // Its parent (this process) reaps it, or whoever reaps orphans once the
    // VMM is gone; nothing here waits for it.
    drop(child);
    let json = serde_json::to_vec(spec).map_err(|e| FsServerError::Send {
        pid,
        source: std::io::Error::other(e),
    })?;
    let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
    ours.write_all(&len.to_le_bytes())
        .and_then(|()| ours.write_all(&json))
        .map_err(|source| FsServerError::Send { pid, source })?;
    log::debug!("fs server {pid} started for {}", spec.root.display());
    let client = Client::new(ours, shared, channel::spin_budget())
        .map_err(|e| FsServerError::Channel(std::io::Error::other(e)))?;
    Ok(FsServerProcess {
        pid,
        client: Some(client),
    })
}

/// `husk fs-server ID`: serves until its VMM hangs up; returns the exit
/// code.
pub fn run(id: &str) -> u8 {
    let is_socket = nix::sys::stat::fstat(STREAM_FD)
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK);
    if !is_socket {
        eprintln!(
            "husk {VERB}: descriptor {STREAM_FD} is not a socket: only a container's VMM starts \
             its fs server"
        );
        return EXIT_SETUP;
    }
    let is_file = nix::sys::stat::fstat(CHANNEL_FD)
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
    if !is_file {
        eprintln!(
            "husk {VERB}: descriptor {CHANNEL_FD} is not the memory shared with a VMM: only a \
             container's VMM starts its fs server"
        );
        return EXIT_SETUP;
    }
    // SAFETY: the VMM passed this descriptor (checked above to be a
    // socket) and nothing else in this process uses it.
    let mut stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(STREAM_FD) });
    // SAFETY: the VMM passed this descriptor (checked above to be a
    // regular file; its size and seals are checked before it is mapped)
    // and nothing else in this process uses it.
    let shared = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) });
    // Read before the jail: it looks at the CPUs and cgroup limits.
    let spin = channel::spin_budget();
    let spec = match read_spec(&mut stream) {
        Ok(s) => s,
        Err(e) => {
            log::error!("container {id}: fs server: reading what to serve: {e}");
            return EXIT_SETUP;
        }
    };
    // The VMM may have ended before the parent-death signal was set.
    if nix::unistd::getppid().as_raw() != i32::try_from(spec.vmm_pid).unwrap_or(-1) {
        log::error!(
            "container {id}: fs server: its VMM {} is gone",
            spec.vmm_pid
        );
        return EXIT_SETUP;
    }
    let _ = nix::sys::prctl::set_name(&std::ffi::CString::new(PROCESS_NAME).unwrap_or_default());
    if let Err(e) = confine(&spec) {
        log::error!("container {id}: fs server: {e}");
        return EXIT_SETUP;
    }
    if let Err(e) = send_ready(&mut stream) {
        log::error!("container {id}: fs server: telling the VMM it is ready: {e}");
        return EXIT_SETUP;
    }
    crate::jail::seccomp::fault_point(Thread::FsServer.name());
    let mut server = match FsServer::with_channel(
        &spec.tag,
        &spec.root,
        spec.read_only,
        spec.ids.clone(),
        shared,
    ) {
        Ok(s) => s,
        Err(e) => {
            log::error!("container {id}: fs server: {e}");
            return EXIT_SETUP;
        }
    };
    match serve(&mut stream, &mut server, spin) {
        Ok(()) => EXIT_SERVED,
        Err(e) => {
            log::error!("container {id}: fs server: {e}; it stops");
            EXIT_PROTOCOL
        }
    }
}

fn read_spec(stream: &mut UnixStream) -> Result<Spec, String> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = usize::try_from(u32::from_le_bytes(len)).unwrap_or(usize::MAX);
    if len > MAX_SPEC {
        return Err(format!("{len} bytes, more than {MAX_SPEC}"));
    }
    let mut json = vec![0u8; len];
    stream.read_exact(&mut json).map_err(|e| e.to_string())?;
    serde_json::from_slice(&json).map_err(|e| e.to_string())
}

/// Everything the server does before it serves (see the module docs).
fn confine(spec: &Spec) -> Result<(), String> {
    crate::jail::harden_process().map_err(|e| e.to_string())?;
    // The passthrough holds a descriptor per file the guest has looked
    // up: as many as the hard limit allows (virtiofsd does the same).
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
        .map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let filters = Filters::compile(spec.seccomp).map_err(|e| e.to_string())?;
    if spec.seccomp == Mode::Enforce {
        crate::jail::seccomp::install_report_handler(&spec.log).map_err(|e| e.to_string())?;
    }
    if let Some(state_dir) = &spec.jail_state_dir {
        crate::jail::root::slave_mount_namespace(nix::sched::CloneFlags::empty())
            .map_err(|(step, e)| format!("its jail: {step} /: {e}"))?;
        Jail {
            state_dir: state_dir.clone(),
            share: Some(spec.root.clone()),
            socket_dir: None,
        }
        .enter_fs_server()
        .map_err(|e| e.to_string())?;
    }
    filters.apply(Thread::FsServer).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_goes_through_its_stream_and_a_bad_one_is_refused() {
        let spec = Spec {
            tag: "t".into(),
            root: "/r".into(),
            read_only: true,
            ids: IdMaps::default(),
            jail_state_dir: Some("/s".into()),
            seccomp: Mode::Log,
            log: "/l".into(),
            vmm_pid: 7,
        };
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let json = serde_json::to_vec(&spec).unwrap();
        a.write_all(&u32::try_from(json.len()).unwrap().to_le_bytes())
            .unwrap();
        a.write_all(&json).unwrap();
        assert_eq!(read_spec(&mut b).unwrap(), spec);
        a.write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert!(read_spec(&mut b).unwrap_err().contains("more than"));
        a.write_all(&3u32.to_le_bytes()).unwrap();
        a.write_all(b"{x}").unwrap();
        assert!(read_spec(&mut b).is_err());
    }
}
