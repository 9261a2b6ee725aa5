//! The container lifecycle and its record on disk.
//!
//! Each container has a directory `<root>/<id>/` holding `state.json` (this
//! module's [`State`], written atomically: temp file + rename) and the VM's
//! sockets and logs. [`Status`] is the lifecycle; the `can_*` predicates say
//! which operations each status allows, and [`State::ensure`] turns a refusal
//! into runc's error message.
//!
//! The recorded pid is the VMM process. A container whose VMM is gone (or
//! whose pid now names another process: the start time in
//! `/proc/PID/stat` differs from the one recorded) is [`Status::Stopped`];
//! [`State::refresh`] applies that rule.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// File name of the state record inside a container's directory.
pub const STATE_FILE: &str = "state.json";
/// The VM's vsock Unix socket (the host end of the control channel). The
/// VMM may also listen on `<this>_<port>` for guest-initiated connections,
/// so the name is kept short: Unix socket paths hold at most 107 bytes.
pub const CONTROL_SOCKET_FILE: &str = "vsock";
/// The guest's serial console output.
pub const CONSOLE_LOG_FILE: &str = "console.log";
/// The VMM process's own log.
pub const VMM_LOG_FILE: &str = "vmm.log";
/// Longest path a Unix socket can be bound at (`sun_path` is 108 bytes,
/// one for the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// Room kept for a `_<port>` suffix on the control socket (`_4294967295`).
const SOCKET_PORT_SUFFIX: usize = 11;
/// Where the control socket goes when `<container dir>/vsock` is too long
/// for a Unix socket (deep engine state roots: Docker's `--exec-root`,
/// containerd's bundle paths): `<base>/<hash of the container dir>/vsock`,
/// base `/run/husk-sock` for root, else `$TMPDIR/husk-sock-<uid>`.
const SHORT_SOCKET_BASE_ROOT: &str = "/run/husk-sock";
/// Mode of the short socket directories (only the owner may connect).
const SOCKET_DIR_MODE: u32 = 0o700;
/// Mode of the state root (runc: 0700).
const ROOT_DIR_MODE: u32 = 0o700;
/// Mode of a container's directory (runc: 0711).
const CONTAINER_DIR_MODE: u32 = 0o711;
/// Directory of the per-container lock files under the state root
/// ([`lock_path`]). `@` is not a character of container ids, so no
/// container can be named so.
pub const LOCKS_DIR: &str = "@locks";
/// Prefix of the temporary file a save writes before renaming.
const TEMP_PREFIX: &str = ".state.json.";
/// Field number of `starttime` in `/proc/PID/stat` (proc(5), 1-based).
const STAT_STARTTIME_FIELD: usize = 22;
/// Field number of `state` in `/proc/PID/stat`.
const STAT_STATE_FIELD: usize = 3;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// runc's wording (engines match on "does not exist").
    #[error("container does not exist")]
    NotFound { id: String },
    /// runc's wording.
    #[error("container with given ID already exists")]
    Exists { id: String },
    #[error("creating state directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("removing {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("locking {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("listing {path}: {source}")]
    List { path: PathBuf, source: io::Error },
    #[error(
        "socket path {path} is {len} bytes; with a port suffix it must fit in \
         {MAX_SOCKET_PATH} (use a shorter --root)"
    )]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("{}", refusal(*op, id, *status))]
    NotAllowed {
        id: String,
        op: Operation,
        status: Status,
    },
}

/// The lifecycle of a container (OCI runtime spec, "State").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `create` is running: the VM is booting.
    Creating,
    /// The VM is up and its init waits for `start`.
    Created,
    /// The user process runs.
    Running,
    /// The VM is frozen (`pause`): its vCPUs and device threads, the fs
    /// server, everything in the container's cgroup, until `resume`.
    Paused,
    /// The user process exited, or the VMM is gone.
    Stopped,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Status::Creating,
        Status::Created,
        Status::Running,
        Status::Paused,
        Status::Stopped,
    ];

    /// Only a created container can be started.
    pub fn can_start(self) -> bool {
        self == Status::Created
    }

    /// Signals reach a container whose VM is up (runc: created, running or
    /// paused; a paused one takes only SIGKILL, which thaws it first).
    pub fn can_kill(self) -> bool {
        matches!(self, Status::Created | Status::Running | Status::Paused)
    }

    /// Deletable without `--force`: stopped, or created (runc deletes a
    /// created container by killing it first).
    pub fn can_delete(self) -> bool {
        matches!(self, Status::Created | Status::Stopped)
    }

    /// runc refuses exec in a stopped container (and a paused one, unless
    /// told to wait: a frozen VM's agent cannot answer); a created VM's init
    /// can already run processes.
    pub fn can_exec(self) -> bool {
        matches!(self, Status::Created | Status::Running)
    }

    /// Only a running container is paused (youki's rule; docker and podman
    /// pause running containers only).
    pub fn can_pause(self) -> bool {
        self == Status::Running
    }

    pub fn can_resume(self) -> bool {
        self == Status::Paused
    }

    /// Whether the VMM process should be alive in this status.
    pub fn has_process(self) -> bool {
        !matches!(self, Status::Stopped)
    }

    /// Whether `op` is allowed in this status.
    pub fn allows(self, op: Operation) -> bool {
        match op {
            Operation::Start => self.can_start(),
            Operation::Kill => self.can_kill(),
            Operation::Delete => self.can_delete(),
            Operation::Exec => self.can_exec(),
            Operation::Pause => self.can_pause(),
            Operation::Resume => self.can_resume(),
        }
    }

    /// The OCI name: `creating`, `created`, `running`, `paused`, `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Operations gated by [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Start,
    Kill,
    Delete,
    Exec,
    Pause,
    Resume,
}

/// runc's message for refusing `op` in `status`.
fn refusal(op: Operation, id: &str, status: Status) -> String {
    match (op, status) {
        (Operation::Start, Status::Running) => "cannot start an already running container".into(),
        (Operation::Start, Status::Stopped) => "cannot start a container that has stopped".into(),
        (Operation::Start, s) => format!("cannot start a container in the {s} state"),
        (Operation::Kill, _) => "container not running".into(),
        (Operation::Delete, s) => format!("cannot delete container {id} that is not stopped: {s}"),
        (Operation::Exec, Status::Stopped) => "cannot exec in a stopped container".into(),
        (Operation::Exec, Status::Paused) => {
            "cannot exec in a paused container: its VM is frozen; `resume` it first".into()
        }
        (Operation::Exec, s) => format!("cannot exec in a container in the {s} state"),
        (Operation::Pause, _) => "container not running".into(),
        (Operation::Resume, _) => "container not paused".into(),
    }
}

/// The file a VMM writes how its container ended into: the VMM may run as
/// a user of its own, which cannot write (or replace) `state.json`.
pub const EXIT_FILE: &str = "exit";
/// Most bytes of an [`EXIT_FILE`] read.
const MAX_EXIT_FILE: u64 = 256;

/// Writes `status` into `dir`'s [`EXIT_FILE`] (made beforehand for the
/// VMM's user: it is opened, not created).
pub fn write_exit(dir: &Path, status: ExitStatus) -> io::Result<()> {
    let json = serde_json::to_vec(&status).map_err(io::Error::other)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(dir.join(EXIT_FILE))?;
    // One short write: whole or not at all for a reader that waits for
    // the VMM to end.
    f.write_all(&json)
}

/// How `dir`'s VMM said its container ended, if it did. Its content is the
/// VMM's to write, so anything but a short, well-formed status is none.
pub fn read_exit(dir: &Path) -> Option<ExitStatus> {
    let path = dir.join(EXIT_FILE);
    let meta = fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() || meta.len() > MAX_EXIT_FILE {
        return None;
    }
    serde_json::from_slice(&fs::read(&path).ok()?).ok()
}

/// How the user process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitStatus {
    /// exit(code).
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// Shell convention, which the VMM exits with: the code, or 128+signal.
    pub fn as_wait_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// One container's record, persisted as `<root>/<id>/state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub status: Status,
    /// The VMM process (the container's pid for engines); `None` until it
    /// is spawned.
    #[serde(default)]
    pub pid: Option<i32>,
    /// `starttime` of `pid` from `/proc/PID/stat` (clock ticks since boot),
    /// telling the VMM from a later process that reuses its pid.
    #[serde(default)]
    pub pid_start_time: Option<u64>,
    /// The host's boot id when `pid` was recorded: after a reboot no
    /// recorded process is alive, whatever now runs under its pid.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// Absolute bundle directory.
    pub bundle: PathBuf,
    /// Absolute root filesystem directory (`root.path` resolved).
    pub rootfs: PathBuf,
    /// `annotations` of config.json (sorted, as Go prints maps).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Creation time, RFC 3339 with nanoseconds in UTC (runc's format).
    pub created: String,
    /// Uid that owns the container (its state directory).
    pub owner_uid: u32,
    /// Host end of the VM's vsock device (a Unix socket).
    pub control_socket: PathBuf,
    /// Guest serial console output.
    pub console_log: PathBuf,
    /// The VMM's own log.
    pub vmm_log: PathBuf,
    /// Block image built from `rootfs`, once there is one.
    #[serde(default)]
    pub rootfs_image: Option<PathBuf>,
    /// How the user process ended, once known.
    #[serde(default)]
    pub exit_status: Option<ExitStatus>,
    /// The VMM's host cgroup (`linux.cgroupsPath`), once it is placed there.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Whether `delete` ran the poststop hooks already (it is run again
    /// after a removal that failed, and runs them once).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub poststop_ran: bool,
}

/// Reads what the kernel says about a process. A trait so status refresh is
/// tested without real processes.
pub trait ProcessProbe {
    /// `starttime` of a live (not zombie) process `pid`, or `None` when
    /// there is no such live process.
    fn start_time(&self, pid: i32) -> Option<u64>;

    /// The id of the running boot ([`crate::runtime::process::boot_id`]);
    /// `None` where it cannot be told (then boots are not compared).
    fn boot_id(&self) -> Option<String> {
        None
    }
}

/// [`ProcessProbe`] over `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcProbe;

impl ProcessProbe for ProcProbe {
    fn start_time(&self, pid: i32) -> Option<u64> {
        if pid <= 0 {
            return None;
        }
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_stat_start_time(&stat)
    }

    fn boot_id(&self) -> Option<String> {
        crate::runtime::process::boot_id()
    }
}

/// Whether a pid whose live process started at `now` (`None`: no live
/// process) is the one recorded as started at `recorded` (`None`: no start
/// time was recorded, the pid is trusted).
pub fn same_process(now: Option<u64>, recorded: Option<u64>) -> bool {
    match (now, recorded) {
        (None, _) => false,
        (Some(now), Some(recorded)) => now == recorded,
        (Some(_), None) => true,
    }
}

/// `starttime` from the text of `/proc/PID/stat`, or `None` if the process
/// is a zombie or dead (states `Z`, `X`, `x`) or the text is malformed
/// ([`stat_field`]).
pub fn parse_stat_start_time(stat: &str) -> Option<u64> {
    let state = stat_field(stat, STAT_STATE_FIELD)?;
    if matches!(state, "Z" | "X" | "x") {
        return None;
    }
    stat_field(stat, STAT_STARTTIME_FIELD)?.parse().ok()
}

/// Field `n` (numbered from 1 as in proc(5), 3 or later) of the text of
/// `/proc/PID/stat`. The command name (field 2) is in parentheses and may
/// contain spaces and parentheses, so fields are counted after its last
/// `)`.
pub fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3.
    rest.split_whitespace().nth(n.checked_sub(3)?)
}

/// `<root>/<id>`.
pub fn container_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// `<root>/<id>/state.json`.
pub fn state_path(root: &Path, id: &str) -> PathBuf {
    container_dir(root, id).join(STATE_FILE)
}

/// The lock file of container `id`: held by `create` for its whole run and
/// by `delete`, so a delete never removes what a running create is making,
/// and a directory whose lock is free while it has no complete record is a
/// leftover of a create that died ([`crate::lockfile`]).
pub fn lock_path(root: &Path, id: &str) -> PathBuf {
    root.join(LOCKS_DIR).join(id)
}

/// Takes container `id`'s lock without waiting: `Ok(None)` when another
/// husk process (a create, a delete) holds it. Makes the state root and its
/// lock directory as needed.
pub fn try_lock(root: &Path, id: &str) -> Result<Option<crate::lockfile::LockFile>, StateError> {
    let dir = root.join(LOCKS_DIR);
    ensure_root(root)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(ROOT_DIR_MODE)
        .create(&dir)
        .map_err(|source| StateError::CreateDir {
            path: dir.clone(),
            source,
        })?;
    let path = lock_path(root, id);
    crate::lockfile::LockFile::try_acquire(&path)
        .map_err(|source| StateError::Lock { path, source })
}

/// Whether a husk process holds container `id`'s lock (a `create` under
/// way, or a `delete`). Looks without taking part: a lock file that is
/// missing or free means no.
pub fn create_in_progress(root: &Path, id: &str) -> bool {
    let path = lock_path(root, id);
    if !path.exists() {
        return false;
    }
    matches!(crate::lockfile::LockFile::try_acquire(&path), Ok(None))
}

/// Whether a container directory exists under `root`.
pub fn exists(root: &Path, id: &str) -> bool {
    container_dir(root, id).exists()
}

impl State {
    /// Claims `<root>/<id>/` (failing with [`StateError::Exists`] if another
    /// create got there first: `mkdir` is the lock) and returns a `Creating`
    /// record with the VM's paths inside it. Nothing is saved yet.
    pub fn create(
        root: &Path,
        id: &str,
        bundle: PathBuf,
        rootfs: PathBuf,
        annotations: BTreeMap<String, String>,
    ) -> Result<State, StateError> {
        let dir = container_dir(root, id);
        let control_socket = control_socket_path(&dir);
        let len = control_socket.as_os_str().len();
        if len + SOCKET_PORT_SUFFIX > MAX_SOCKET_PATH {
            return Err(StateError::SocketPathTooLong {
                path: control_socket,
                len,
            });
        }
        ensure_root(root)?;
        match fs::DirBuilder::new().mode(CONTAINER_DIR_MODE).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists { id: id.to_owned() })
            }
            Err(source) => return Err(StateError::CreateDir { path: dir, source }),
        }
        // The mode passed to mkdir is filtered by the umask; set it as meant.
        fs::set_permissions(&dir, fs::Permissions::from_mode(CONTAINER_DIR_MODE)).map_err(
            |source| StateError::CreateDir {
                path: dir.clone(),
                source,
            },
        )?;
        let owner_uid = fs::metadata(&dir)
            .map_err(|source| StateError::CreateDir {
                path: dir.clone(),
                source,
            })?
            .uid();
        if let Some(sock_dir) = short_socket_dir(&dir) {
            if let Err(source) = create_socket_dir(&sock_dir) {
                let _ = fs::remove_dir_all(&dir);
                return Err(StateError::CreateDir {
                    path: sock_dir,
                    source,
                });
            }
        }
        Ok(State {
            id: id.to_owned(),
            status: Status::Creating,
            pid: None,
            pid_start_time: None,
            boot_id: None,
            bundle,
            rootfs,
            annotations,
            created: rfc3339_nano(SystemTime::now()),
            owner_uid,
            control_socket,
            console_log: dir.join(CONSOLE_LOG_FILE),
            vmm_log: dir.join(VMM_LOG_FILE),
            rootfs_image: None,
            exit_status: None,
            cgroup: None,
            poststop_ran: false,
        })
    }

    /// Reads `<root>/<id>/state.json`. A missing directory or file is
    /// [`StateError::NotFound`].
    pub fn load(root: &Path, id: &str) -> Result<State, StateError> {
        let path = state_path(root, id);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotFound { id: id.to_owned() })
            }
            Err(source) => return Err(StateError::Read { path, source }),
        };
        serde_json::from_slice(&text).map_err(|source| StateError::Parse { path, source })
    }

    /// Writes `state.json` atomically: a temporary file in the same
    /// directory, flushed to disk, renamed over the old one.
    pub fn save(&self, root: &Path) -> Result<(), StateError> {
        let dir = container_dir(root, &self.id);
        let path = dir.join(STATE_FILE);
        let write_err = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec(self).map_err(|e| write_err(io::Error::other(e)))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&dir)
            .map_err(write_err)?;
        tmp.write_all(&json).map_err(write_err)?;
        tmp.as_file().sync_all().map_err(write_err)?;
        tmp.persist(&path).map_err(|e| write_err(e.error))?;
        Ok(())
    }

    /// Removes the container's directory and everything in it. Removing a
    /// container that is already gone is not an error.
    pub fn remove(root: &Path, id: &str) -> Result<(), StateError> {
        remove_container_dir(&container_dir(root, id))
    }

    /// Records the spawned VMM process, its start time and the boot.
    pub fn set_process(&mut self, pid: i32, probe: &dyn ProcessProbe) {
        self.pid = Some(pid);
        self.pid_start_time = probe.start_time(pid);
        self.boot_id = probe.boot_id();
    }

    /// Whether the recorded VMM process is still the one alive under its
    /// pid: same boot, same start time, not a zombie.
    pub fn process_alive(&self, probe: &dyn ProcessProbe) -> bool {
        let Some(pid) = self.pid else {
            return false;
        };
        if let (Some(then), Some(now)) = (&self.boot_id, probe.boot_id()) {
            if *then != now {
                return false;
            }
        }
        same_process(probe.start_time(pid), self.pid_start_time)
    }

    /// Marks the container stopped with how its process ended.
    pub fn set_stopped(&mut self, exit: Option<ExitStatus>) {
        self.status = Status::Stopped;
        if exit.is_some() {
            self.exit_status = exit;
        }
    }

    /// Applies the liveness rule: a container that should have a VMM
    /// process but whose pid is dead, a zombie, or reused by another process
    /// is now `Stopped`. A `Creating` record without a pid yet is left
    /// alone. Returns whether the status changed (the caller saves).
    pub fn refresh(&mut self, probe: &dyn ProcessProbe) -> bool {
        if !self.status.has_process() || self.pid.is_none() {
            return false;
        }
        if self.process_alive(probe) {
            return false;
        }
        self.status = Status::Stopped;
        true
    }

    /// [`State::refresh`], and a `creating` record whose `create` is no
    /// longer running (its lock is free: it died) becomes `stopped`.
    pub fn refresh_in(&mut self, root: &Path, probe: &dyn ProcessProbe) -> bool {
        let mut changed = self.refresh(probe);
        if self.status == Status::Creating && !create_in_progress(root, &self.id) {
            self.status = Status::Stopped;
            changed = true;
        }
        changed
    }

    /// Loads the record of `id` with its status brought up to date
    /// ([`State::refresh_in`]) and saves a change. The VMM writes how the
    /// container ended into its [`EXIT_FILE`] *before* it exits, so once
    /// it is seen gone that file is read into the record. (The record is
    /// read again first: a VMM of an older husk saved it into the record,
    /// which a refresh loaded just before must not overwrite.)
    pub fn load_current(
        root: &Path,
        id: &str,
        probe: &dyn ProcessProbe,
    ) -> Result<State, StateError> {
        let mut st = State::load(root, id)?;
        if st.refresh_in(root, probe) {
            st = State::load(root, id)?;
            if st.refresh_in(root, probe) {
                if st.exit_status.is_none() {
                    st.exit_status = read_exit(&container_dir(root, id));
                }
                st.save(root)?;
            }
        }
        Ok(st)
    }

    /// Ok if `op` is allowed now; otherwise runc's refusal.
    pub fn ensure(&self, op: Operation) -> Result<(), StateError> {
        if self.status.allows(op) {
            Ok(())
        } else {
            Err(StateError::NotAllowed {
                id: self.id.clone(),
                op,
                status: self.status,
            })
        }
    }

    /// The pid OCI state shows: the VMM's, or 0 once stopped (as runc).
    pub fn oci_pid(&self) -> i32 {
        match self.status {
            Status::Stopped => 0,
            _ => self.pid.unwrap_or(0),
        }
    }
}

/// Creates the state root (mode 0700) if it is missing.
/// Removes a container's directory and, where it has one, its short socket
/// directory. Missing ones are fine.
pub fn remove_container_dir(dir: &Path) -> Result<(), StateError> {
    let gone = |path: &Path| match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    };
    if let Some(sock_dir) = short_socket_dir(dir) {
        gone(&sock_dir)?;
    }
    gone(dir)
}

/// The control socket of the container whose directory is `dir`.
pub fn control_socket_path(dir: &Path) -> PathBuf {
    match short_socket_dir(dir) {
        Some(short) => short.join(CONTROL_SOCKET_FILE),
        None => dir.join(CONTROL_SOCKET_FILE),
    }
}

/// The short directory for the control socket when `<dir>/vsock` (plus a
/// port suffix) does not fit in a Unix socket address; `None` when it does.
fn short_socket_dir(dir: &Path) -> Option<PathBuf> {
    let inside = dir.join(CONTROL_SOCKET_FILE).as_os_str().len();
    if inside + SOCKET_PORT_SUFFIX <= MAX_SOCKET_PATH {
        return None;
    }
    // uid 0 of a user namespace (rootless podman) cannot write the root
    // one; its directory is named by its uid on the host, so two users'
    // namespaces do not meet there.
    let euid = nix::unistd::geteuid().as_raw();
    let base = if euid == 0 && !crate::paths::in_user_namespace() {
        PathBuf::from(SHORT_SOCKET_BASE_ROOT)
    } else {
        std::env::temp_dir().join(format!("husk-sock-{}", crate::paths::host_uid(euid)))
    };
    Some(base.join(format!("{:016x}", fnv1a(dir.as_os_str().as_bytes()))))
}

/// FNV-1a, 64 bits: a hash that stays the same across builds (the socket
/// directory is found again by a later husk).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// Creates a short socket directory (mode 0700, parents 0700). Called
/// right after this container's directory was made (`mkdir` is the lock), so
/// one that exists already is a leftover of a container of the same path
/// that was not deleted, and is replaced.
fn create_socket_dir(path: &Path) -> io::Result<()> {
    if let Some(base) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(SOCKET_DIR_MODE)
            .create(base)?;
    }
    match fs::DirBuilder::new().mode(SOCKET_DIR_MODE).create(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_dir_all(path)?;
            fs::DirBuilder::new().mode(SOCKET_DIR_MODE).create(path)?;
        }
        other => other?,
    }
    fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_DIR_MODE))
}

fn ensure_root(root: &Path) -> Result<(), StateError> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(ROOT_DIR_MODE)
        .create(root)
    {
        Ok(()) => Ok(()),
        Err(source) => Err(StateError::CreateDir {
            path: root.to_path_buf(),
            source,
        }),
    }
}

/// Every container under `root`, sorted by id, each refreshed with `probe`
/// (in memory only). A missing root is an empty list, as in runc. Entries
/// that are not directories, have no state yet (a create in progress) or
/// cannot be read are skipped; unreadable ones are logged.
pub fn list(root: &Path, probe: &dyn ProcessProbe) -> Result<Vec<State>, StateError> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StateError::List {
                path: root.to_path_buf(),
                source,
            })
        }
    };
    let mut states = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| StateError::List {
            path: root.to_path_buf(),
            source,
        })?;
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || entry.file_name() == LOCKS_DIR {
            continue;
        }
        let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        match State::load(root, &id) {
            Ok(mut state) => {
                state.refresh_in(root, probe);
                states.push(state);
            }
            Err(StateError::NotFound { .. }) => {}
            Err(err) => log::warn!("container {id}: skipped in list: {err}"),
        }
    }
    states.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(states)
}

/// Seconds per day.
const SECS_PER_DAY: u64 = 86_400;
/// Days from 0000-03-01 to 1970-01-01 in the proleptic Gregorian calendar.
const DAYS_0000_03_01_TO_EPOCH: i64 = 719_468;
/// Days in a 400-year Gregorian cycle.
const DAYS_PER_ERA: i64 = 146_097;

/// `t` as Go's `time.RFC3339Nano` in UTC, which runc uses for `created`:
/// `2006-01-02T15:04:05.999999999Z`, trailing zeros of the fraction dropped
/// (and the dot too when the fraction is zero). Times before 1970 are
/// clamped to the epoch.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let nanos = since.subsec_nanos();
    let days = i64::try_from(secs / SECS_PER_DAY).unwrap_or(i64::MAX / 2);
    let rem = secs % SECS_PER_DAY;
    let (year, month, day) = civil_from_days(days);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// (year, month 1-12, day 1-31) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, with eras starting on March 1st).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + DAYS_0000_03_01_TO_EPOCH;
    let era = z.div_euclid(DAYS_PER_ERA);
    let doe = z.rem_euclid(DAYS_PER_ERA); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are small and positive by construction.
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::Duration;

    /// A probe answering from a table of pid -> start time.
    #[derive(Default)]
    struct FakeProbe(RefCell<HashMap<i32, u64>>);

    impl FakeProbe {
        fn with(pid: i32, start: u64) -> Self {
            let p = FakeProbe::default();
            p.0.borrow_mut().insert(pid, start);
            p
        }
    }

    impl ProcessProbe for FakeProbe {
        fn start_time(&self, pid: i32) -> Option<u64> {
            self.0.borrow().get(&pid).copied()
        }
    }

    fn new_state(root: &Path, id: &str) -> State {
        State::create(
            root,
            id,
            PathBuf::from("/b"),
            PathBuf::from("/b/rootfs"),
            BTreeMap::new(),
        )
        .unwrap()
    }

    fn with_status(status: Status) -> State {
        let root = tempfile::tempdir().unwrap();
        let mut s = new_state(root.path(), "c");
        s.status = status;
        s
    }

    // One test per status: what each allows.

    #[test]
    fn creating_allows_nothing_but_forced_delete() {
        let s = Status::Creating;
        assert!(!s.can_start() && !s.can_kill() && !s.can_delete() && !s.can_exec());
        assert!(s.has_process());
        let err = with_status(s).ensure(Operation::Delete).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot delete container c that is not stopped: creating"
        );
        let err = with_status(s).ensure(Operation::Start).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot start a container in the creating state"
        );
    }

    #[test]
    fn created_can_start_kill_delete_exec() {
        let s = Status::Created;
        assert!(s.can_start() && s.can_kill() && s.can_delete() && s.can_exec());
        let st = with_status(s);
        for op in [
            Operation::Start,
            Operation::Kill,
            Operation::Delete,
            Operation::Exec,
        ] {
            assert!(st.ensure(op).is_ok(), "{op:?}");
        }
    }

    #[test]
    fn running_can_kill_exec_and_pause_only() {
        let s = Status::Running;
        assert!(!s.can_start() && s.can_kill() && !s.can_delete() && s.can_exec());
        assert!(s.can_pause() && !s.can_resume());
        assert_eq!(
            with_status(s)
                .ensure(Operation::Resume)
                .unwrap_err()
                .to_string(),
            "container not paused"
        );
        let st = with_status(s);
        assert_eq!(
            st.ensure(Operation::Start).unwrap_err().to_string(),
            "cannot start an already running container"
        );
        assert_eq!(
            st.ensure(Operation::Delete).unwrap_err().to_string(),
            "cannot delete container c that is not stopped: running"
        );
    }

    #[test]
    fn paused_can_be_resumed_and_killed_only() {
        let s = Status::Paused;
        assert!(s.can_resume() && s.can_kill() && s.has_process());
        assert!(!s.can_start() && !s.can_delete() && !s.can_exec() && !s.can_pause());
        let st = with_status(s);
        assert!(st.ensure(Operation::Resume).is_ok() && st.ensure(Operation::Kill).is_ok());
        assert_eq!(
            st.ensure(Operation::Pause).unwrap_err().to_string(),
            "container not running"
        );
        assert_eq!(
            st.ensure(Operation::Delete).unwrap_err().to_string(),
            "cannot delete container c that is not stopped: paused"
        );
        assert!(st
            .ensure(Operation::Exec)
            .unwrap_err()
            .to_string()
            .starts_with("cannot exec in a paused container"));
        assert_eq!(
            st.ensure(Operation::Start).unwrap_err().to_string(),
            "cannot start a container in the paused state"
        );
    }

    #[test]
    fn stopped_can_only_be_deleted() {
        let s = Status::Stopped;
        assert!(!s.can_start() && !s.can_kill() && s.can_delete() && !s.can_exec());
        assert!(!s.has_process());
        let st = with_status(s);
        assert_eq!(
            st.ensure(Operation::Start).unwrap_err().to_string(),
            "cannot start a container that has stopped"
        );
        assert_eq!(
            st.ensure(Operation::Kill).unwrap_err().to_string(),
            "container not running"
        );
        assert_eq!(
            st.ensure(Operation::Exec).unwrap_err().to_string(),
            "cannot exec in a stopped container"
        );
        assert!(st.ensure(Operation::Delete).is_ok());
    }

    #[test]
    fn status_names_and_serde() {
        for s in Status::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s);
            assert_eq!(s.to_string(), s.as_str());
        }
    }

    #[test]
    fn create_save_load_round_trip() {
        let root = tempfile::tempdir().unwrap();
        let mut ann = BTreeMap::new();
        ann.insert("k".to_owned(), "v".to_owned());
        let mut s = State::create(root.path(), "c1", "/b".into(), "/b/rootfs".into(), ann).unwrap();
        assert_eq!(s.status, Status::Creating);
        assert_eq!(
            s.control_socket,
            root.path().join("c1").join(CONTROL_SOCKET_FILE)
        );
        assert_eq!(s.console_log, root.path().join("c1/console.log"));
        assert_eq!(s.vmm_log, root.path().join("c1/vmm.log"));
        assert!(s.created.ends_with('Z'));
        s.save(root.path()).unwrap();
        assert_eq!(State::load(root.path(), "c1").unwrap(), s);

        s.status = Status::Created;
        s.set_process(42, &FakeProbe::with(42, 7));
        s.rootfs_image = Some("/cache/img".into());
        s.save(root.path()).unwrap();
        let loaded = State::load(root.path(), "c1").unwrap();
        assert_eq!(loaded, s);
        assert_eq!(loaded.pid, Some(42));
        assert_eq!(loaded.pid_start_time, Some(7));
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(root.path().join("c1"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [STATE_FILE]);
    }

    #[test]
    fn directory_modes_follow_runc() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("root");
        let s = new_state(&root, "c1");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), ROOT_DIR_MODE);
        assert_eq!(mode(&root.join("c1")), CONTAINER_DIR_MODE);
        s.save(&root).unwrap();
        assert_eq!(mode(&root.join("c1").join(STATE_FILE)), 0o600);
        assert_eq!(s.owner_uid, fs::metadata(&root).unwrap().uid());
    }

    #[test]
    fn duplicate_create_fails() {
        let root = tempfile::tempdir().unwrap();
        new_state(root.path(), "c1");
        let err = State::create(root.path(), "c1", "/b".into(), "/r".into(), BTreeMap::new())
            .unwrap_err();
        assert!(matches!(err, StateError::Exists { ref id } if id == "c1"));
        assert_eq!(err.to_string(), "container with given ID already exists");
        assert!(exists(root.path(), "c1"));
        assert!(!exists(root.path(), "c2"));
    }

    #[test]
    fn deep_roots_get_a_short_socket_directory_removed_with_the_container() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("r".repeat(60));
        let id = "i".repeat(64);
        let st = State::create(&root, &id, "/b".into(), "/r".into(), BTreeMap::new()).unwrap();
        let dir = container_dir(&root, &id);
        assert!(!st.control_socket.starts_with(&dir));
        assert!(st.control_socket.as_os_str().len() + SOCKET_PORT_SUFFIX <= MAX_SOCKET_PATH);
        let sock_dir = st.control_socket.parent().unwrap().to_path_buf();
        let mode = fs::metadata(&sock_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_DIR_MODE);
        assert_eq!(control_socket_path(&dir), st.control_socket);
        // A second create of the same container finds its directory taken.
        assert!(State::create(&root, &id, "/b".into(), "/r".into(), BTreeMap::new()).is_err());
        State::remove(&root, &id).unwrap();
        assert!(!sock_dir.exists() && !dir.exists());
        // Short paths keep the socket in the container's directory.
        let short =
            State::create(tmp.path(), "c", "/b".into(), "/r".into(), BTreeMap::new()).unwrap();
        assert_eq!(
            short.control_socket,
            container_dir(tmp.path(), "c").join("vsock")
        );
    }

    #[test]
    fn load_missing_is_not_found() {
        let root = tempfile::tempdir().unwrap();
        let err = State::load(root.path(), "nope").unwrap_err();
        assert!(matches!(err, StateError::NotFound { .. }));
        assert_eq!(err.to_string(), "container does not exist");
        // A directory without state.json yet (create in progress) too.
        new_state(root.path(), "half");
        assert!(matches!(
            State::load(root.path(), "half"),
            Err(StateError::NotFound { .. })
        ));
    }

    #[test]
    fn load_corrupt_names_the_file() {
        let root = tempfile::tempdir().unwrap();
        new_state(root.path(), "c1");
        fs::write(state_path(root.path(), "c1"), "{not json").unwrap();
        let err = State::load(root.path(), "c1").unwrap_err();
        assert!(matches!(err, StateError::Parse { .. }));
        assert!(err.to_string().contains("state.json"), "{err}");
    }

    #[test]
    fn remove_is_idempotent() {
        let root = tempfile::tempdir().unwrap();
        let s = new_state(root.path(), "c1");
        s.save(root.path()).unwrap();
        State::remove(root.path(), "c1").unwrap();
        assert!(!exists(root.path(), "c1"));
        State::remove(root.path(), "c1").unwrap();
    }

    #[test]
    fn list_sorts_refreshes_and_skips() {
        let root = tempfile::tempdir().unwrap();
        for id in ["b", "a", "c"] {
            let mut s = new_state(root.path(), id);
            s.status = Status::Running;
            s.pid = Some(100);
            s.pid_start_time = Some(5);
            s.save(root.path()).unwrap();
        }
        new_state(root.path(), "in-progress"); // no state.json
        fs::write(root.path().join("stray-file"), "x").unwrap();
        new_state(root.path(), "corrupt");
        fs::write(state_path(root.path(), "corrupt"), "[]").unwrap();

        let probe = FakeProbe::with(100, 5);
        let ids: Vec<_> = list(root.path(), &probe)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let all = list(root.path(), &FakeProbe::default()).unwrap();
        assert!(all.iter().all(|s| s.status == Status::Stopped));
        // list refreshes in memory only.
        assert_eq!(
            State::load(root.path(), "a").unwrap().status,
            Status::Running
        );
    }

    #[test]
    fn list_of_missing_root_is_empty() {
        let root = tempfile::tempdir().unwrap();
        assert!(list(&root.path().join("none"), &ProcProbe)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn refresh_keeps_live_process() {
        let mut s = with_status(Status::Running);
        s.pid = Some(10);
        s.pid_start_time = Some(99);
        assert!(!s.refresh(&FakeProbe::with(10, 99)));
        assert_eq!(s.status, Status::Running);
        assert_eq!(s.oci_pid(), 10);
    }

    #[test]
    fn refresh_stops_dead_process() {
        for status in [Status::Creating, Status::Created, Status::Running] {
            let mut s = with_status(status);
            s.pid = Some(10);
            s.pid_start_time = Some(99);
            assert!(s.refresh(&FakeProbe::default()), "{status}");
            assert_eq!(s.status, Status::Stopped);
            assert_eq!(s.oci_pid(), 0);
            assert_eq!(s.pid, Some(10), "the recorded pid is kept");
        }
    }

    #[test]
    fn refresh_detects_pid_reuse() {
        let mut s = with_status(Status::Created);
        s.pid = Some(10);
        s.pid_start_time = Some(99);
        assert!(s.refresh(&FakeProbe::with(10, 12345)));
        assert_eq!(s.status, Status::Stopped);
    }

    /// A probe that also names the boot.
    struct BootProbe(FakeProbe, &'static str);

    impl ProcessProbe for BootProbe {
        fn start_time(&self, pid: i32) -> Option<u64> {
            self.0.start_time(pid)
        }
        fn boot_id(&self) -> Option<String> {
            Some(self.1.to_owned())
        }
    }

    #[test]
    fn refresh_after_a_reboot_stops_even_a_matching_pid() {
        let mut s = with_status(Status::Running);
        let before = BootProbe(FakeProbe::with(10, 99), "boot-a");
        s.set_process(10, &before);
        assert_eq!(s.boot_id.as_deref(), Some("boot-a"));
        assert!(s.process_alive(&before));
        assert!(!s.refresh(&before));
        // The same pid and start time in a later boot is someone else.
        let after = BootProbe(FakeProbe::with(10, 99), "boot-b");
        assert!(!s.process_alive(&after));
        assert!(s.refresh(&after));
        assert_eq!(s.status, Status::Stopped);
        // A record without a boot id (older husk) compares start times only.
        let mut old = with_status(Status::Running);
        old.pid = Some(10);
        old.pid_start_time = Some(99);
        assert!(old.process_alive(&after));
    }

    #[test]
    fn refresh_leaves_creating_without_pid_and_stopped_alone() {
        let mut s = with_status(Status::Creating);
        assert!(!s.refresh(&FakeProbe::default()));
        assert_eq!(s.status, Status::Creating);
        let mut s = with_status(Status::Stopped);
        s.pid = Some(10);
        assert!(!s.refresh(&FakeProbe::with(10, 1)));
        assert_eq!(s.status, Status::Stopped);
    }

    #[test]
    fn a_creating_record_is_stopped_once_its_create_let_go_of_the_lock() {
        let root = tempfile::tempdir().unwrap();
        let mut s = with_status(Status::Creating);
        let id = s.id.clone();
        fs::create_dir_all(root.path().join(LOCKS_DIR)).unwrap();
        // A create under way holds the lock.
        let held = try_lock(root.path(), &id).unwrap().unwrap();
        assert!(create_in_progress(root.path(), &id));
        assert!(!s.refresh_in(root.path(), &FakeProbe::default()));
        assert_eq!(s.status, Status::Creating);
        // It died: the lock is free (the file stays).
        drop(held);
        assert!(!create_in_progress(root.path(), &id));
        assert!(s.refresh_in(root.path(), &FakeProbe::default()));
        assert_eq!(s.status, Status::Stopped);
        // No lock file at all (a record older than locks): not in progress.
        let mut old = with_status(Status::Creating);
        old.id = "other".into();
        assert!(old.refresh_in(root.path(), &FakeProbe::default()));
        assert_eq!(old.status, Status::Stopped);
    }

    /// A probe that, asked about the VMM, first plays the VMM's last act:
    /// it saves the container's ending, then is gone.
    struct EndingProbe {
        root: PathBuf,
        id: String,
    }

    impl ProcessProbe for EndingProbe {
        fn start_time(&self, _pid: i32) -> Option<u64> {
            let mut now = State::load(&self.root, &self.id).unwrap();
            if now.status.has_process() {
                now.set_stopped(Some(ExitStatus::Code(7)));
                now.save(&self.root).unwrap();
            }
            None
        }
    }

    #[test]
    fn load_current_keeps_the_exit_status_the_vmm_saved_as_it_ended() {
        let root = tempfile::tempdir().unwrap();
        let mut s = new_state(root.path(), "c1");
        s.status = Status::Running;
        s.pid = Some(10);
        s.pid_start_time = Some(99);
        s.save(root.path()).unwrap();
        let probe = EndingProbe {
            root: root.path().to_path_buf(),
            id: "c1".into(),
        };
        let st = State::load_current(root.path(), "c1", &probe).unwrap();
        assert_eq!(st.status, Status::Stopped);
        assert_eq!(st.exit_status, Some(ExitStatus::Code(7)));
        let on_disk = State::load(root.path(), "c1").unwrap();
        assert_eq!(on_disk.exit_status, Some(ExitStatus::Code(7)));
        // A VMM that died without saving (killed): stopped, no status.
        let mut k = new_state(root.path(), "c2");
        k.status = Status::Running;
        k.pid = Some(11);
        k.save(root.path()).unwrap();
        let st = State::load_current(root.path(), "c2", &FakeProbe::default()).unwrap();
        assert_eq!(st.status, Status::Stopped);
        assert_eq!(st.exit_status, None);
        assert_eq!(
            State::load(root.path(), "c2").unwrap().status,
            Status::Stopped
        );
    }

    /// A VMM running as its own user writes how the container ended into
    /// its exit file; the record gets it once the VMM is gone, and
    /// anything but a short well-formed status is ignored.
    #[test]
    fn the_exit_file_reaches_the_record_once_the_vmm_is_gone() {
        let root = tempfile::tempdir().unwrap();
        let mut s = new_state(root.path(), "c1");
        s.status = Status::Running;
        s.pid = Some(10);
        s.save(root.path()).unwrap();
        let dir = container_dir(root.path(), "c1");
        // Not made beforehand: nothing is created.
        assert!(write_exit(&dir, ExitStatus::Code(3)).is_err());
        std::fs::write(dir.join(EXIT_FILE), b"").unwrap();
        assert_eq!(read_exit(&dir), None);
        write_exit(&dir, ExitStatus::Signal(9)).unwrap();
        write_exit(&dir, ExitStatus::Code(3)).unwrap();
        assert_eq!(read_exit(&dir), Some(ExitStatus::Code(3)));
        let st = State::load_current(root.path(), "c1", &FakeProbe::default()).unwrap();
        assert_eq!(st.status, Status::Stopped);
        assert_eq!(st.exit_status, Some(ExitStatus::Code(3)));
        assert_eq!(
            State::load(root.path(), "c1").unwrap().exit_status,
            Some(ExitStatus::Code(3))
        );
        for bad in [&b"{\"code\": \"x\"}"[..], b"garbage", &[b' '; 300][..]] {
            std::fs::write(dir.join(EXIT_FILE), bad).unwrap();
            assert_eq!(read_exit(&dir), None, "{bad:?}");
        }
        std::fs::remove_file(dir.join(EXIT_FILE)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join(EXIT_FILE)).unwrap();
        assert_eq!(read_exit(&dir), None, "a symlink");
    }

    #[test]
    fn refresh_without_recorded_start_time_trusts_pid() {
        let mut s = with_status(Status::Running);
        s.pid = Some(10);
        assert!(!s.refresh(&FakeProbe::with(10, 1)));
        assert!(s.refresh(&FakeProbe::default()));
    }

    #[test]
    fn exit_status_codes() {
        assert_eq!(ExitStatus::Code(3).as_wait_code(), 3);
        assert_eq!(ExitStatus::Signal(9).as_wait_code(), 137);
        let mut s = with_status(Status::Running);
        s.set_stopped(Some(ExitStatus::Signal(15)));
        assert_eq!(s.status, Status::Stopped);
        assert_eq!(s.exit_status, Some(ExitStatus::Signal(15)));
        s.set_stopped(None);
        assert_eq!(s.exit_status, Some(ExitStatus::Signal(15)));
        let json = serde_json::to_string(&ExitStatus::Code(1)).unwrap();
        assert_eq!(json, r#"{"code":1}"#);
    }

    #[test]
    fn proc_probe_sees_this_process_and_not_a_reaped_child() {
        let me = i32::try_from(std::process::id()).unwrap();
        let t1 = ProcProbe.start_time(me).expect("own start time");
        assert_eq!(ProcProbe.start_time(me), Some(t1));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        child.wait().unwrap();
        assert_eq!(ProcProbe.start_time(pid), None);
        assert_eq!(ProcProbe.start_time(0), None);
        assert_eq!(ProcProbe.start_time(-1), None);
    }

    #[test]
    fn proc_probe_treats_zombie_as_dead() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // Not waited for: once it exits it is a zombie until reaped.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ProcProbe.start_time(pid).is_some() {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut child = child;
        child.wait().unwrap();
    }

    #[test]
    fn stat_parsing_handles_odd_command_names() {
        let fields_after: String = (4..=52).map(|n| format!(" {n}")).collect();
        let stat = format!("123 (a) b (c)) S{fields_after}");
        assert_eq!(parse_stat_start_time(&stat), Some(22));
        let zombie = format!("123 (x) Z{fields_after}");
        assert_eq!(parse_stat_start_time(&zombie), None);
        assert_eq!(parse_stat_start_time("garbage"), None);
        assert_eq!(parse_stat_start_time("1 (x) S 2 3"), None);
    }

    #[test]
    fn rfc3339_nano_matches_go() {
        let at = |secs: u64, nanos: u32| rfc3339_nano(UNIX_EPOCH + Duration::new(secs, nanos));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(at(1_700_000_000, 0), "2023-11-14T22:13:20Z");
        assert_eq!(
            at(1_700_000_000, 294_281_076),
            "2023-11-14T22:13:20.294281076Z"
        );
        assert_eq!(at(1_700_000_000, 500_000_000), "2023-11-14T22:13:20.5Z");
        assert_eq!(at(1_700_000_000, 120), "2023-11-14T22:13:20.00000012Z");
        // Leap days and century rules.
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00Z");
        assert_eq!(at(1_709_164_800, 0), "2024-02-29T00:00:00Z");
        assert_eq!(at(1_735_689_599, 0), "2024-12-31T23:59:59Z");
        assert_eq!(
            rfc3339_nano(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }
}
