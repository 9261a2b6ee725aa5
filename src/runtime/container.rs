//! The container lifecycle: what each runc verb does to a husk container.
//!
//! The container's pid (for engines) is its VMM process: `husk vmm ID`,
//! spawned by `create`, which boots the VM, has husk-init prepare the
//! container, reports readiness on a pipe, relays the container process's
//! stdio, and exits with its status when it ends (see [`super::vmm_process`]).

use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent_proto::{ProcessSpec, Request, Response};
use crate::control::{AgentConn, ControlError};
use crate::rootfs::cache::{self, CacheError};
use crate::runtime::bundle::{self, BundleError};
use crate::runtime::guest_spec::{self, GuestSpecError};
use crate::runtime::process::Held;
use crate::runtime::state::{
    self, Operation, ProcProbe, ProcessProbe as _, State, StateError, Status,
};
use crate::runtime::vm_plan::{PlanError, RootfsMode, VmPlan};
use crate::runtime::vm_spec::{self, VmSpecError};

/// Environment variable carrying the readiness pipe's fd to the VMM process.
pub const ENV_READY_FD: &str = "_HUSK_READY_FD";
/// Environment variable carrying the fd of the pipe on which `create` tells
/// the VMM process to go on once the host hooks ran ([`GO`]; EOF: give up).
pub const ENV_GO_FD: &str = "_HUSK_GO_FD";
/// What `create` writes on the go pipe.
pub const GO: &str = "go\n";
/// How long `create` waits for the VM to boot and the container to be set
/// up (`HUSK_CREATE_TIMEOUT` seconds overrides).
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a verb waits for the agent to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `delete --force` and `kill` wait for a VMM to die.
const DEATH_WAIT: Duration = Duration::from_secs(10);

/// Errors of the lifecycle verbs.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    VmSpec(#[from] VmSpecError),
    #[error(transparent)]
    Spec(#[from] crate::runtime::spec::SpecError),
    #[error(transparent)]
    GuestSpec(#[from] GuestSpecError),
    #[error(transparent)]
    Rootfs(#[from] CacheError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Hook(#[from] crate::runtime::hooks::HookError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error(transparent)]
    Cgroup(#[from] crate::runtime::cgroup::CgroupError),
    #[error(transparent)]
    Keeper(#[from] crate::runtime::keeper::KeeperError),
    #[error("guest kernel {path} does not exist (run `make kernel`, or set HUSK_KERNEL)")]
    KernelMissing { path: PathBuf },
    #[error("guest init {path} does not exist (run `make build`, or set HUSK_INIT)")]
    InitMissing { path: PathBuf },
    #[error("cannot allocate tty if husk will detach without setting console socket")]
    NoConsoleSocket,
    #[error("console socket {path}: {reason}")]
    ConsoleSocket { path: PathBuf, reason: String },
    #[error("starting the VMM process: {0}")]
    Spawn(std::io::Error),
    #[error("the VM did not come up: {0}")]
    Boot(String),
    #[error("writing pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading process spec {path}: {reason}")]
    ProcessFile { path: PathBuf, reason: String },
    #[error("{0}")]
    Io(String),
    #[error(
        "container {id} is being created or deleted by another husk process; \
         wait for it, or use delete --force to end it"
    )]
    Busy { id: String },
    #[error("signalling the VMM process {pid}: {source}")]
    Signal { pid: i32, source: std::io::Error },
    #[error(
        "the VMM process {pid} of container {id} did not exit within {waited:?} of SIGKILL \
         (stuck in the kernel? see /proc/{pid}/stack); run delete again once it is gone"
    )]
    VmmSurvived {
        id: String,
        pid: i32,
        waited: Duration,
    },
    #[error(
        "container {id} is stopped but not everything of it could be removed: {}; \
         its record stays, run delete again once that is fixed",
        left.join("; ")
    )]
    Leftovers { id: String, left: Vec<String> },
    #[error(
        "container {id} is paused: its VM is frozen, so signal {signal} cannot reach its \
         process; resume it first (SIGKILL alone is delivered: it thaws the VM)"
    )]
    PausedSignal { id: String, signal: i32 },
    #[error(
        "container {id} is paused: its VM is frozen and cannot list its processes; resume it first"
    )]
    PausedPs { id: String },
    #[error(
        "container {id} has no cgroup of its own (rootless without a delegated cgroup, or a \
         cgroup v1 host): husk pauses a VM by freezing its cgroup v2; run it where husk can \
         make one (rootful, or a delegated systemd user slice)"
    )]
    NoCgroupToFreeze { id: String },
}

/// What `create` needs besides the CLI arguments.
#[derive(Debug)]
pub struct CreateRequest {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// The husk executable to run as the VMM (normally the running one).
    pub husk_exe: PathBuf,
    /// Whether the VMM gets the log settings (`--log`, `--debug`).
    pub vmm_args: Vec<String>,
    /// The VMM's stdio: ours (the CLI), or what a shim hands over.
    pub stdio: VmmStdio,
    /// `--systemd-cgroup`: `linux.cgroupsPath` is `slice:prefix:name`.
    pub systemd_cgroup: bool,
    /// `husk restore`: the VM continues from this checkpoint directory
    /// instead of booting, and its container process is the one that was
    /// checkpointed (running once `create` returns).
    pub restore_from: Option<PathBuf>,
    /// A pod's sandbox: its pod directory ([`crate::storage::pod`]), which
    /// the VM also serves, for the pod's later containers.
    pub pod_share: Option<PathBuf>,
}

/// Where the VMM process's stdio (the container process's, relayed) goes.
#[derive(Debug, Default)]
pub enum VmmStdio {
    /// The caller's own stdio; with `process.terminal`, a pty whose master
    /// goes to `--console-socket` (runc's contract).
    #[default]
    Inherit,
    /// These descriptors (a shim's FIFOs or pipes), without a terminal.
    Fds {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// With `process.terminal`: the slave end of a pty the caller keeps the
    /// master of (no console socket).
    Terminal(OwnedFd),
}

fn create_timeout() -> Duration {
    std::env::var("HUSK_CREATE_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(CREATE_TIMEOUT)
}

/// `create`: boots the VM and leaves the container `created`. Returns the
/// VMM's pid. On failure nothing is left: no VMM, no state directory.
pub fn create(req: &CreateRequest) -> Result<u32, ContainerError> {
    let began = crate::timeline::now_ns();
    let b = bundle::load_for_create(&req.bundle, &req.root, &req.id)?;
    let mut sizing = vm_spec::vm_sizing(&b.spec)?;
    if req.pod_share.is_some() && !vm_spec::sized_by_annotations(&b.spec) {
        // A pod's VM holds all its containers: containerd before 1.7 says
        // nothing of their limits, but the kubelet's pod cgroup does.
        if let Some((memory, cpu)) = pod_cgroup_limits(req, &b.spec) {
            sizing = vm_spec::pod_from_cgroup(sizing, &memory, &cpu);
            log::info!(
                "container {}: pod VM sized from its pod cgroup: {} MiB, {} vCPUs",
                req.id,
                sizing.mem_mib,
                sizing.vcpus
            );
        }
    }
    let (mut container, mut shares) =
        guest_spec::container_spec(&req.id, &b.spec, &b.path, &guest_spec::read_bind_source)?;
    let rootfs_mode = crate::runtime::vm_plan::rootfs_mode(&b.spec)?;
    // A new user namespace is the guest's (the container's process gets
    // one with the spec's maps, as under runc): the guest's ids are the
    // host's, and its files are served with them as they are, but only
    // the ids the map gives the container (vm_plan::guest_ids): a guest
    // root outside them acts as nobody on the host.
    let ids = crate::runtime::vm_plan::id_maps(&b.spec)?;
    let spec_ids = ids.clone();
    let guest_map = |m: &crate::vmm::devices::virtio::fs::idmap::IdMap| {
        m.ranges()
            .iter()
            .map(|r| crate::agent_proto::IdMapping {
                container: r.container,
                host: r.host,
                size: r.size,
            })
            .collect::<Vec<_>>()
    };
    container.uid_map = guest_map(&ids.uid);
    container.gid_map = guest_map(&ids.gid);
    let ids = crate::runtime::vm_plan::guest_ids(&ids)?;
    if rootfs_mode == RootfsMode::Share {
        if !b.rootfs.is_dir() {
            return Err(CacheError::NotADirectory {
                path: b.rootfs.clone(),
            }
            .into());
        }
        guest_spec::share_rootfs(&mut container, &mut shares, &b.rootfs);
    }
    if let Some(dir) = &req.pod_share {
        shares.push(crate::storage::pod::share(dir));
        container.share_tag = Some(guest_spec::SHARE_TAG.to_owned());
        crate::runtime::pod::share_shm(&mut container);
    }
    let terminal = container.process.terminal;
    let own_pty = matches!(req.stdio, VmmStdio::Terminal(_));
    if terminal && req.console_socket.is_none() && !own_pty {
        return Err(ContainerError::NoConsoleSocket);
    }
    let network = crate::runtime::vm_plan::network_plan(&b.spec)?;
    let snapshot = crate::runtime::vm_plan::snapshot_allowed(&b.spec)?;
    let vmm_seccomp = crate::runtime::vm_plan::vmm_seccomp_mode(&b.spec)?;
    let vmm_jail = crate::runtime::vm_plan::vmm_jail(&b.spec)?;
    let vmm_ns = crate::jail::ns::plan(&b.spec).map_err(PlanError::from)?;
    let user_choice = crate::runtime::vm_plan::vmm_user_choice(&b.spec)?;
    let cgroup = cgroup_plan(req, &b.spec, sizing.mem_mib)?;
    match &network {
        Some(n) if !n.own => {
            crate::net::open_netns(&n.netns)?;
        }
        Some(_) => {}
        None => log::warn!(
            "container {}: no network namespace in the spec (host networking): \
             a VM cannot share the host's network, the container gets loopback only",
            req.id
        ),
    }
    let own_netns = network.as_ref().is_some_and(|n| n.own);
    let kernel = crate::paths::default_kernel();
    if !kernel.is_file() {
        return Err(ContainerError::KernelMissing { path: kernel });
    }
    let init = crate::paths::default_init();
    if !init.is_file() {
        return Err(ContainerError::InitMissing { path: init });
    }
    // Held until create returns: a delete meanwhile is refused (or, with
    // --force, waits for this create to give up), and a directory found
    // later with this lock free is a leftover of a create that died.
    let lock = state::try_lock(&req.root, &req.id)?
        .ok_or_else(|| StateError::Exists { id: req.id.clone() })?;
    let mut state = match State::create(
        &req.root,
        &req.id,
        b.path.clone(),
        b.rootfs.clone(),
        b.annotations(),
    ) {
        Ok(s) => s,
        // The lock file belongs to the container that exists.
        Err(e @ StateError::Exists { .. }) => return Err(e.into()),
        Err(e) => {
            if let Err(le) = lock.remove() {
                log::warn!("container {}: removing its lock file: {le}", req.id);
            }
            return Err(e.into());
        }
    };
    let dir = state::container_dir(&req.root, &req.id);
    let mut guard = CreateGuard {
        dir: dir.clone(),
        vmm: None,
        cgroup: None,
        user: None,
        lock: Some(lock),
    };
    let vmm_user = vmm_user(
        &req.id,
        user_choice,
        vmm_jail,
        &dir,
        &vmm_ns.user,
        &spec_ids,
    )?;
    guard.user = vmm_user;
    crate::timeline::mark_at(&dir, "create.begin", began);
    // Only a block rootfs needs an image (built once per tree, cached).
    let image = match rootfs_mode {
        RootfsMode::Block => {
            let image = cache::image_for(&b.rootfs, &crate::paths::cache_dir())?;
            state.rootfs_image = Some(image.clone());
            Some(image)
        }
        RootfsMode::Share => None,
    };
    crate::timeline::mark(&dir, "create.rootfs");
    let plan = VmPlan {
        kernel,
        init,
        mem_mib: sizing.mem_mib,
        vcpus: sizing.vcpus,
        rootfs_image: image,
        control_socket: state.control_socket.clone(),
        console_log: state.console_log.clone(),
        container,
        network,
        snapshot,
        shares,
        ids,
        vmm_seccomp,
        vmm_jail,
        vmm_ns,
        vmm_user,
        restore_from: req.restore_from.clone(),
    };
    plan.save(&dir)?;
    crate::runtime::hooks::save(&dir, b.spec.hooks().as_ref())?;
    state.save(&req.root)?;

    // The terminal: a host pty whose master goes to the engine; the VMM
    // relays the slave to the guest's pty.
    let pty_slave = match (&req.stdio, terminal) {
        (VmmStdio::Terminal(slave), true) => {
            Some(slave.try_clone().map_err(ContainerError::Spawn)?)
        }
        (_, true) => {
            let socket = req.console_socket.as_deref().unwrap_or(Path::new(""));
            Some(send_pty_master(socket)?)
        }
        (_, false) => None,
    };

    let (ready_r, ready_w) =
        pipe_cloexec().map_err(|e| ContainerError::Io(format!("pipe: {e}")))?;
    let (go_r, go_w) = pipe_cloexec().map_err(|e| ContainerError::Io(format!("pipe: {e}")))?;
    let mut cmd = Command::new(&req.husk_exe);
    cmd.args(&req.vmm_args)
        .arg("--root")
        // Absolute: `delete` finds a VMM by its command line, and the
        // VMM's main thread lives in the container's view, so its cwd
        // says nothing about a relative path.
        .arg(std::path::absolute(&req.root).unwrap_or_else(|_| req.root.clone()))
        .arg("vmm")
        .arg(&req.id)
        // Only what a VMM uses of its caller's environment.
        .env_clear()
        .envs(crate::jail::vmm_env())
        .env(ENV_READY_FD, ready_w.as_raw_fd().to_string())
        .env(ENV_GO_FD, go_r.as_raw_fd().to_string())
        .process_group(0);
    if own_netns {
        // SAFETY: the closure runs in the child between fork and exec and
        // only makes the unshare(2) system call, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
    }
    let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
    if let Some(slave) = &pty_slave {
        cmd.stdin(dup(slave).map_err(ContainerError::Spawn)?)
            .stdout(dup(slave).map_err(ContainerError::Spawn)?)
            .stderr(dup(slave).map_err(ContainerError::Spawn)?);
    } else if let VmmStdio::Fds {
        stdin,
        stdout,
        stderr,
    } = &req.stdio
    {
        cmd.stdin(dup(stdin).map_err(ContainerError::Spawn)?)
            .stdout(dup(stdout).map_err(ContainerError::Spawn)?)
            .stderr(dup(stderr).map_err(ContainerError::Spawn)?);
    }
    clear_cloexec(&ready_w).map_err(ContainerError::Spawn)?;
    clear_cloexec(&go_r).map_err(ContainerError::Spawn)?;
    // Nothing else its caller left open reaches the VMM.
    let keep = [ready_w.as_raw_fd(), go_r.as_raw_fd()];
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes close_range(2) and fcntl(2) system calls.
    unsafe {
        cmd.pre_exec(move || crate::jail::close_inherited_fds(&keep));
    }
    // In the pid namespace the spec asks for: a new one has the VMM as
    // its pid 1, as runc's has the container's process.
    let child = crate::jail::ns::in_pid_namespace(&plan.vmm_ns.pid, || cmd.spawn())
        .map_err(PlanError::from)?
        .map_err(ContainerError::Spawn)?;
    drop(ready_w);
    drop(go_r);
    drop(pty_slave);
    let pid = child.id();
    guard.vmm = Some(pid);
    crate::timeline::mark(&dir, "create.spawned");
    // The VMM outlives us; whoever reaps orphans (the engine's subreaper)
    // waits for it.
    std::mem::forget(child);

    // Host hooks run while the VMM waits, before it reads its network
    // namespace: what they put there (Docker's libnetwork hook moves the
    // container's veth into the pid's namespace) becomes the VM's NICs.
    let pid_i32 = i32::try_from(pid).unwrap_or(i32::MAX);
    state.set_process(pid_i32, &ProcProbe);
    // On disk at once: should this create die from here on, a delete finds
    // the VMM by its record.
    state.save(&req.root)?;
    // Into its cgroup before it boots: every thread and page of the VM is
    // counted there. Made while the VMM process starts (making a cgroup
    // waits on the kernel, which the VMM's exec uses meanwhile); the VMM
    // roots its cgroup namespace there once told to go.
    if let Some((rel, settings)) = &cgroup {
        let root = Path::new(crate::runtime::cgroup::CGROUP_ROOT);
        let placed = crate::runtime::cgroup::place(root, rel, settings, pid)?;
        guard.cgroup = Some(placed.clone());
        state.cgroup = Some(placed);
        // In the record at once, for a delete after a create that died and
        // for the VMM (it reads it once told to go).
        state.save(&req.root)?;
    }
    crate::timeline::mark(&dir, "create.cgroup");
    if let Some(h) = b.spec.hooks() {
        let json = crate::runtime::output::render_state(&state);
        crate::runtime::hooks::run(
            "prestart",
            h.prestart().as_deref().unwrap_or_default(),
            &json,
        )?;
        crate::runtime::hooks::run(
            "createRuntime",
            h.create_runtime().as_deref().unwrap_or_default(),
            &json,
        )?;
    }
    let mut go = std::fs::File::from(go_w);
    // A VMM that already died is reported by the readiness answer below.
    let _ = go.write_all(GO.as_bytes());
    drop(go);
    crate::timeline::mark(&dir, "create.go");
    // Should the VMM end with its record gone, its keeper removes its
    // cgroup: the VMM cannot (no capabilities, no cgroup file system).
    // Started now, while the VM boots; a create that fails from here on
    // ends the VMM, and with it the keeper.
    if let Some(cg) = &state.cgroup {
        crate::runtime::keeper::spawn(pid, &dir, cg, &state.vmm_log)?;
    }

    let mut ready = std::fs::File::from(ready_r);
    let answer = read_ready(&mut ready, create_timeout())?;
    crate::timeline::mark(&dir, "create.ready");
    if answer != "ready" {
        let reason = answer.strip_prefix("error ").unwrap_or(&answer).to_owned();
        return Err(ContainerError::Boot(if reason.is_empty() {
            match seccomp_report(&state.vmm_log) {
                // The log goes with the failed container: quote it.
                Some(line) => format!("the VMM exited during boot: {line}"),
                None => format!(
                    "the VMM exited during boot (see {})",
                    state.vmm_log.display()
                ),
            }
        } else {
            // A thread or the fs server that stepped outside its filter
            // is why, whatever the VMM saw of it.
            match seccomp_report(&state.vmm_log) {
                Some(line) => format!("{reason} ({line})"),
                None => reason,
            }
        }));
    }
    state.status = Status::Created;
    state.save(&req.root)?;
    if let Some(path) = &req.pid_file {
        write_pid_file(path, pid_i32)?;
    }
    guard.disarm();
    crate::timeline::mark(&dir, "create.end");
    Ok(pid)
}

/// The last line a VMM's seccomp report ([`crate::jail::seccomp`]) left in
/// its log, if any.
fn seccomp_report(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| l.starts_with(crate::jail::seccomp::REPORT_PREFIX))
        .map(str::to_owned)
}

/// Where the container's VMM goes: its host cgroup (relative to the
/// cgroup2 mount) and the settings there ([`crate::runtime::cgroup`]);
/// `None` where husk cannot manage cgroups (not root, or no cgroup2 mount),
/// with a warning for the latter. Checked before anything is made.
/// The `memory.max` and `cpu.max` of the cgroup above the one
/// `linux.cgroupsPath` names (a pod sandbox's: the kubelet's pod cgroup),
/// where there is one to read.
fn pod_cgroup_limits(
    req: &CreateRequest,
    spec: &oci_spec::runtime::Spec,
) -> Option<(String, String)> {
    use crate::runtime::cgroup;
    let given = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned())?;
    let rel = cgroup::relative_path(
        Some(&given),
        req.systemd_cgroup,
        &req.id,
        &cgroup::own_cgroup(),
    )
    .ok()?;
    let pod = Path::new(cgroup::CGROUP_ROOT).join(rel.parent()?);
    if pod == Path::new(cgroup::CGROUP_ROOT) {
        return None;
    }
    let memory = std::fs::read_to_string(pod.join("memory.max")).ok()?;
    let cpu = std::fs::read_to_string(pod.join("cpu.max")).unwrap_or_default();
    Some((memory, cpu))
}

fn cgroup_plan(
    req: &CreateRequest,
    spec: &oci_spec::runtime::Spec,
    guest_mem_mib: u32,
) -> Result<Option<(PathBuf, crate::runtime::cgroup::Settings)>, ContainerError> {
    use crate::runtime::cgroup;
    let root = Path::new(cgroup::CGROUP_ROOT);
    if !nix::unistd::geteuid().is_root() {
        log::debug!(
            "container {}: not root, the VMM stays in its cgroup",
            req.id
        );
        return Ok(None);
    }
    if !cgroup::is_cgroup2(root) {
        log::warn!(
            "container {}: {} is not a cgroup2 mount; the VMM stays in its cgroup \
             (its resources apply only inside the VM)",
            req.id,
            root.display()
        );
        return Ok(None);
    }
    let given = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned());
    let rel = cgroup::relative_path(
        given.as_deref(),
        req.systemd_cgroup,
        &req.id,
        &cgroup::own_cgroup(),
    )?;
    // Rootless (uid 0 of a user namespace, as under rootless podman): a
    // cgroup only where one was delegated, as runc's rootless mode.
    if crate::paths::in_user_namespace() {
        let wanted = root.join(&rel);
        let parent = wanted.parent().unwrap_or(root);
        if nix::unistd::access(parent, nix::unistd::AccessFlags::W_OK).is_err() {
            log::warn!(
                "container {}: rootless, and {} is not writable (no cgroup delegated \
                 there); the VMM stays in its cgroup and the container's limits apply \
                 inside the VM only",
                req.id,
                parent.display()
            );
            return Ok(None);
        }
    }
    Ok(Some((rel, cgroup::Settings::for_spec(spec, guest_mem_mib))))
}

/// Undoes a failed create: kills the VMM (our child), removes its cgroup,
/// network plumbing, the state directory and the lock file. Holds the
/// container's lock until then.
struct CreateGuard {
    dir: PathBuf,
    vmm: Option<u32>,
    cgroup: Option<PathBuf>,
    /// The VMM user claimed for the container.
    user: Option<crate::jail::user::VmmUser>,
    /// `None` once the create succeeded (the lock is let go, its file stays
    /// with the container until delete).
    lock: Option<crate::lockfile::LockFile>,
}

impl CreateGuard {
    fn disarm(&mut self) {
        self.lock = None;
    }
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else {
            return;
        };
        if let Some(pid) = self.vmm {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        if let Some(cg) = &self.cgroup {
            if let Err(e) = crate::runtime::cgroup::remove(cg) {
                log::warn!("{e}");
            }
        }
        if let Err(e) = crate::net::cleanup(&self.dir) {
            log::warn!("{e}");
        }
        match state::remove_container_dir(&self.dir) {
            Ok(()) => {
                if self.user.is_some_and(|u| u.claimed) {
                    crate::jail::user::release_stale(Path::new(crate::jail::user::CLAIMS_DIR));
                }
                if let Err(e) = lock.remove() {
                    log::warn!("removing the lock file of {}: {e}", self.dir.display());
                }
            }
            Err(e) => log::warn!("{e}"),
        }
    }
}

fn pipe_cloexec() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

fn clear_cloexec(fd: &OwnedFd) -> std::io::Result<()> {
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map(|_| ())
    .map_err(std::io::Error::from)
}

/// Reads the VMM's one-line readiness answer (`ready` or `error MESSAGE`).
fn read_ready(pipe: &mut std::fs::File, limit: Duration) -> Result<String, ContainerError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd as _;
    let start = Instant::now();
    let mut buf = Vec::new();
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(ContainerError::Boot(format!(
                "no answer from the VM within {} s",
                limit.as_secs()
            )));
        }
        let ms = u16::try_from(left.as_millis().min(10_000)).unwrap_or(10_000);
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(ContainerError::Io(format!("waiting for the VM: {e}"))),
        }
        let mut chunk = [0u8; 512];
        match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ContainerError::Io(format!("waiting for the VM: {e}"))),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or("").trim().to_owned())
}

/// Writes a pid file the way runc does (no newline; atomic rename).
pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), ContainerError> {
    let err = |source| ContainerError::PidFile {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("husk-tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Opens a pty, sends its master over the console socket (SCM_RIGHTS, as
/// runc), and returns the slave, set raw (the guest's pty does the line
/// discipline).
pub fn send_pty_master(socket: &Path) -> Result<OwnedFd, ContainerError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fail = |reason: String| ContainerError::ConsoleSocket {
        path: socket.to_path_buf(),
        reason,
    };
    let pty = nix::pty::openpty(None, None).map_err(|e| fail(format!("openpty: {e}")))?;
    let mut tio =
        nix::sys::termios::tcgetattr(&pty.slave).map_err(|e| fail(format!("tcgetattr: {e}")))?;
    nix::sys::termios::cfmakeraw(&mut tio);
    nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &tio)
        .map_err(|e| fail(format!("tcsetattr: {e}")))?;
    let stream =
        std::os::unix::net::UnixStream::connect(socket).map_err(|e| fail(e.to_string()))?;
    let fds = [pty.master.as_raw_fd()];
    let name = b"/dev/ptmx";
    let iov = [std::io::IoSlice::new(name)];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| fail(format!("sendmsg: {e}")))?;
    Ok(pty.slave)
}

pub(crate) fn load_fresh(root: &Path, id: &str) -> Result<State, ContainerError> {
    bundle::validate_id(id)?;
    Ok(State::load_current(root, id, &ProcProbe)?)
}

pub(crate) fn connect(st: &State) -> Result<AgentConn, ContainerError> {
    let pid = st.pid.unwrap_or(0);
    let alive = move || vmm_alive(pid);
    Ok(AgentConn::connect(
        &st.control_socket,
        AGENT_TIMEOUT,
        &alive,
    )?)
}

pub(crate) fn vmm_alive(pid: i32) -> bool {
    ProcProbe.start_time(pid).is_some()
}

/// `start`.
pub fn start(root: &Path, id: &str) -> Result<(), ContainerError> {
    let began = crate::timeline::now_ns();
    let mut st = load_fresh(root, id)?;
    st.ensure(Operation::Start)?;
    let mut conn = connect(&st)?;
    match conn.request(&Request::Start { container: None })? {
        Response::Started { .. } => {}
        other => {
            return Err(ContainerError::Io(format!(
                "unexpected answer to start: {other:?}"
            )))
        }
    }
    // The VMM may already have recorded the end of a short-lived process.
    st.status = mark_running(root, id)?;
    let dir = state::container_dir(root, id);
    crate::timeline::mark_at(&dir, "start.begin", began);
    crate::timeline::mark(&dir, "start.end");
    if let Some(h) = crate::runtime::hooks::load(&dir)? {
        let json = crate::runtime::output::render_state(&st);
        crate::runtime::hooks::run_logged(
            "poststart",
            h.poststart().as_deref().unwrap_or_default(),
            &json,
        );
    }
    Ok(())
}

/// A `created` container's process runs: after `start`, or after `create`
/// of a container restored from a checkpoint
/// ([`CreateRequest::restore_from`], whose process runs at once). A status
/// the VMM already moved on (a process that has ended) is left as it is;
/// the status now.
pub fn mark_running(root: &Path, id: &str) -> Result<Status, ContainerError> {
    let mut now = State::load(root, id)?;
    if now.status == Status::Created {
        now.status = Status::Running;
        now.save(root)?;
    }
    Ok(now.status)
}

/// `state`: the OCI state JSON.
pub fn state(root: &Path, id: &str) -> Result<String, ContainerError> {
    let st = load_fresh(root, id)?;
    Ok(crate::runtime::output::render_state(&st))
}

/// Ends the container's VMM if the record's process is still alive: SIGKILL
/// through a pidfd (never to a process that reused the pid, nor after a
/// reboot), then waits for it to exit.
fn stop_vmm(st: &State) -> Result<(), ContainerError> {
    let Some(pid) = st.pid else {
        return Ok(());
    };
    if !st.process_alive(&ProcProbe) {
        return Ok(());
    }
    let held = match Held::open(pid, st.pid_start_time) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(()),
        Err(source) => return Err(ContainerError::Signal { pid, source }),
    };
    end_process(&st.id, &held)
}

fn end_process(id: &str, held: &Held) -> Result<(), ContainerError> {
    match held.kill_and_wait(DEATH_WAIT) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ContainerError::VmmSurvived {
            id: id.to_owned(),
            pid: held.pid(),
            waited: DEATH_WAIT,
        }),
        Err(source) => Err(ContainerError::Signal {
            pid: held.pid(),
            source,
        }),
    }
}

/// VMM processes of container `id` under `root` found by their command line
/// (`husk ... --root ROOT vmm ID`), for a container whose record does not
/// name its VMM: a create that died between spawning it and saving its pid,
/// or an unreadable record.
fn stray_vmms(root: &Path, id: &str) -> Vec<Held> {
    let want = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let start = ProcProbe.start_time(pid);
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        if is_vmm_of(&args, &cwd, &want, id) {
            if let Ok(Some(h)) = Held::open(pid, start) {
                found.push(h);
            }
        }
    }
    found
}

/// Whether `args` (a command line; relative paths from `cwd`) is the VMM of
/// container `id` under the state root `root` (canonical).
fn is_vmm_of(args: &[&[u8]], cwd: &Path, root: &Path, id: &str) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    args.windows(4).any(|w| {
        let given = Path::new(std::ffi::OsStr::from_bytes(w[1]));
        let given = std::fs::canonicalize(cwd.join(given)).unwrap_or_else(|_| cwd.join(given));
        w[0] == b"--root" && given == root && w[2] == b"vmm" && w[3] == id.as_bytes()
    })
}

/// `kill`.
pub fn kill(root: &Path, id: &str, signal: i32, all: bool) -> Result<(), ContainerError> {
    let mut st = load_fresh(root, id)?;
    st.ensure(Operation::Kill)?;
    if st.status == Status::Paused {
        // runc sends the signal, then thaws; a frozen VM takes no signal,
        // so SIGKILL thaws it first, and other signals are refused as
        // docker and podman refuse them for a paused container.
        if signal != libc::SIGKILL {
            return Err(ContainerError::PausedSignal {
                id: id.to_owned(),
                signal,
            });
        }
        thaw(root, &st)?;
        st.status = Status::Running;
    }
    if st.status == Status::Created {
        // No process runs yet: the signal ends the container, as it would
        // runc's waiting init. Only the VMM exists to receive it.
        stop_vmm(&st)?;
        let mut now = State::load(root, id)?;
        now.set_stopped(Some(state::ExitStatus::Signal(signal)));
        now.save(root)?;
        return Ok(());
    }
    let mut conn = connect(&st)?;
    conn.request(&Request::Signal {
        signal,
        all,
        container: None,
    })?;
    Ok(())
}

/// `pause`: freezes the container's cgroup, which holds its VMM (vCPUs,
/// device threads) and its fs servers, so the whole VM stops where it is
/// (as runc freezes a container's processes); the status becomes `paused`.
/// Memory stays as it is; the guest's clock jumps at `resume`.
pub fn pause(root: &Path, id: &str) -> Result<(), ContainerError> {
    let st = load_fresh(root, id)?;
    st.ensure(Operation::Pause)?;
    let cgroup = frozen_cgroup(&st)?;
    crate::runtime::cgroup::freeze(cgroup, true)?;
    // The record as it is now: the VMM may have recorded an end (or been
    // killed) while we froze it.
    let mut now = State::load_current(root, id, &ProcProbe)?;
    if now.status != Status::Running {
        let _ = crate::runtime::cgroup::freeze(cgroup, false);
        now.ensure(Operation::Pause)?;
    }
    now.status = Status::Paused;
    now.save(root)?;
    Ok(())
}

/// The status of container `id`, brought up to date.
pub fn status(root: &Path, id: &str) -> Result<Status, ContainerError> {
    Ok(load_fresh(root, id)?.status)
}

/// `resume`: thaws a paused container's cgroup; the status is `running`
/// again.
pub fn resume(root: &Path, id: &str) -> Result<(), ContainerError> {
    let st = load_fresh(root, id)?;
    st.ensure(Operation::Resume)?;
    thaw(root, &st)
}

/// Thaws paused `st`'s cgroup and records it running.
fn thaw(root: &Path, st: &State) -> Result<(), ContainerError> {
    crate::runtime::cgroup::freeze(frozen_cgroup(st)?, false)?;
    let mut now = State::load(root, &st.id)?;
    if now.status == Status::Paused {
        now.status = Status::Running;
        now.save(root)?;
    }
    Ok(())
}

/// The cgroup `pause` freezes: the container's own, on cgroup v2.
fn frozen_cgroup(st: &State) -> Result<&Path, ContainerError> {
    st.cgroup
        .as_deref()
        .filter(|c| c.join("cgroup.freeze").exists())
        .ok_or_else(|| ContainerError::NoCgroupToFreeze { id: st.id.clone() })
}

/// How long `delete --force` waits for a create it interrupted (by killing
/// its VMM) to clean up and let go of the container's lock.
const CREATE_GIVE_UP_WAIT: Duration = Duration::from_secs(30);

/// `delete`: ends the VMM if it still runs (a created container, a running
/// one with `force`, a VMM whose create died) and removes everything of the
/// container: network plumbing, host cgroup, state directory, lock file.
/// Also takes a directory a crashed create left half-written. Whatever
/// could not be removed is named in the error, and the record stays (as
/// stopped) so that delete can be run again.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<(), ContainerError> {
    bundle::validate_id(id)?;
    let dir = state::container_dir(root, id);
    if !dir.exists() {
        remove_stray_lock(root, id);
        return if force {
            Ok(())
        } else {
            Err(StateError::NotFound { id: id.to_owned() }.into())
        };
    }
    let lock = match state::try_lock(root, id)? {
        Some(l) => l,
        None => {
            // A create of this id is running (or another delete).
            if !force {
                return Err(ContainerError::Busy { id: id.to_owned() });
            }
            match State::load(root, id) {
                Ok(st) => stop_vmm(&st)?,
                Err(_) => {
                    for vmm in stray_vmms(root, id) {
                        end_process(id, &vmm)?;
                    }
                }
            }
            let path = state::lock_path(root, id);
            crate::lockfile::LockFile::acquire_within(&path, CREATE_GIVE_UP_WAIT)
                .map_err(|source| StateError::Lock {
                    path: path.clone(),
                    source,
                })?
                .ok_or_else(|| ContainerError::Busy { id: id.to_owned() })?
        }
    };
    if !dir.exists() {
        // The create we interrupted removed it.
        let _ = lock.remove();
        return Ok(());
    }
    let record = match State::load_current(root, id, &ProcProbe) {
        Ok(st) => {
            // The lock is ours, so a `creating` record is one whose create
            // died: nothing will move it on.
            if matches!(st.status, Status::Running | Status::Paused) && !force {
                st.ensure(Operation::Delete)?;
            }
            if st.status == Status::Paused {
                // A frozen VMM answers no signal but SIGKILL: thawed, it
                // ends as a running one does.
                if let Err(e) = thaw(root, &st) {
                    log::warn!("container {id}: {e}");
                }
            }
            Some(st)
        }
        // No record yet: a create that died before its first save (it had
        // not started a VMM), or one that cannot be read.
        Err(StateError::NotFound { .. }) => None,
        Err(e @ StateError::Parse { .. }) => {
            log::warn!("container {id}: {e}; removing what is left of it");
            None
        }
        Err(e) => return Err(e.into()),
    };
    match &record {
        Some(st) if st.pid.is_some() => stop_vmm(st)?,
        _ => {
            for vmm in stray_vmms(root, id) {
                end_process(id, &vmm)?;
            }
        }
    }
    if let Some(st) = &record {
        run_poststop(root, &dir, st)?;
    }
    let mut left = Vec::new();
    if let Err(e) = crate::net::cleanup(&dir) {
        left.push(e.to_string());
    }
    if let Some(cg) = record.as_ref().and_then(|st| st.cgroup.as_ref()) {
        if let Err(e) = crate::runtime::cgroup::remove(cg) {
            left.push(e.to_string());
        }
    }
    if left.is_empty() {
        match State::remove(root, id) {
            // Its VMM user's claim (if any) goes with its directory; read
            // from the claims, not the plan, which a create killed early
            // did not write.
            Ok(()) if nix::unistd::geteuid().is_root() => {
                crate::jail::user::release_stale(Path::new(crate::jail::user::CLAIMS_DIR));
            }
            Ok(()) => {}
            Err(e) => left.push(e.to_string()),
        }
    }
    if !left.is_empty() {
        return Err(ContainerError::Leftovers {
            id: id.to_owned(),
            left,
        });
    }
    if let Err(e) = lock.remove() {
        log::warn!("container {id}: removing its lock file: {e}");
    }
    // Work files of builders that died (a create killed while it built an
    // image, a VMM killed while it built a template) go too.
    let cache = crate::paths::cache_dir();
    cache::remove_stale_work(&cache);
    crate::runtime::template::remove_stale_work(&cache);
    Ok(())
}

/// The user container `id`'s VMM drops to ([`crate::jail::user`]): under a
/// root caller with the jail on, a uid of husk's range claimed for it (or
/// the one the annotation pins); otherwise none.
///
/// A VMM that enters a user namespace (`userns`, [`crate::jail::ns`])
/// drops to ids the namespace maps instead ([`crate::jail::user::in_namespace`]):
/// the spec's maps for a new one (`ids`), the joined one's own.
fn vmm_user(
    id: &str,
    choice: crate::jail::user::Choice,
    jail: bool,
    dir: &Path,
    userns: &crate::jail::ns::Ns,
    ids: &crate::vmm::devices::virtio::fs::idmap::IdMaps,
) -> Result<Option<crate::jail::user::VmmUser>, ContainerError> {
    use crate::jail::ns::Ns;
    use crate::jail::user::{claim, in_namespace, Choice, VmmUser, CLAIMS_DIR};
    use crate::vmm::devices::virtio::fs::idmap::IdMap;
    let rootful = nix::unistd::geteuid().is_root() && !crate::paths::in_user_namespace();
    let io = |e: &dyn std::fmt::Display| ContainerError::Io(e.to_string());
    match choice {
        Choice::Root => Ok(None),
        _ if !rootful => Ok(None),
        _ if !jail => {
            log::warn!(
                "container {id}: {}=off: the VMM stays uid 0 (without capabilities)",
                crate::jail::root::ANNOTATION
            );
            Ok(None)
        }
        _ if *userns != Ns::Host => {
            let (uids, gids) = match userns {
                Ns::Join(path) => {
                    let (u, g) = crate::jail::ns::read_maps(path).map_err(PlanError::from)?;
                    let parse = |which, text: &str| {
                        IdMap::parse_proc(which, text)
                            .map_err(|e| io(&format!("{}: {e}", path.display())))
                    };
                    (parse("uid_map", &u)?, parse("gid_map", &g)?)
                }
                _ => (ids.uid.clone(), ids.gid.clone()),
            };
            in_namespace(choice, &uids, &gids).map_err(|e| io(&e))
        }
        Choice::Pinned { uid, gid } => Ok(Some(VmmUser {
            uid,
            gid,
            claimed: false,
            in_ns: None,
        })),
        Choice::Auto => {
            let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
            claim(Path::new(CLAIMS_DIR), &abs)
                .map(Some)
                .map_err(|e| ContainerError::Io(e.to_string()))
        }
    }
}

/// Runs the poststop hooks once (a delete run again after a failed removal
/// does not repeat them); their failures are logged, as runc does.
fn run_poststop(root: &Path, dir: &Path, st: &State) -> Result<(), ContainerError> {
    if st.poststop_ran {
        return Ok(());
    }
    match crate::runtime::hooks::load(dir) {
        Ok(Some(h)) => {
            let mut stopped = st.clone();
            stopped.status = Status::Stopped;
            let json = crate::runtime::output::render_state(&stopped);
            crate::runtime::hooks::run_logged(
                "poststop",
                h.poststop().as_deref().unwrap_or_default(),
                &json,
            );
            stopped.poststop_ran = true;
            stopped.save(root)?;
        }
        Ok(None) => {}
        Err(e) => log::warn!("{e}"),
    }
    Ok(())
}

/// A lock file without its container: left by a create that died between
/// taking the lock and making the directory. Removed if nobody holds it.
fn remove_stray_lock(root: &Path, id: &str) {
    let path = state::lock_path(root, id);
    if !path.exists() {
        return;
    }
    if let Ok(Some(l)) = crate::lockfile::LockFile::try_acquire(&path) {
        if !state::container_dir(root, id).exists() {
            let _ = l.remove();
        }
    }
}

/// The statistics of the container's host cgroup (the whole VM).
pub fn stats(root: &Path, id: &str) -> Result<crate::runtime::cgroup::Stats, ContainerError> {
    let st = load_fresh(root, id)?;
    let dir = st.cgroup.ok_or_else(|| {
        ContainerError::Io(format!(
            "container {id} has no host cgroup (husk was not root, or found no cgroup2 mount)"
        ))
    })?;
    Ok(crate::runtime::cgroup::read_stats(&dir)?)
}

/// `ps`: the container's processes.
pub fn ps(root: &Path, id: &str) -> Result<Vec<crate::agent_proto::ProcessInfo>, ContainerError> {
    let st = load_fresh(root, id)?;
    if st.status == Status::Stopped {
        return Ok(Vec::new());
    }
    if st.status == Status::Paused {
        return Err(ContainerError::PausedPs { id: id.to_owned() });
    }
    let mut conn = connect(&st)?;
    match conn.request(&Request::Ps { container: None })? {
        Response::Ps { processes } => Ok(processes),
        other => Err(ContainerError::Io(format!(
            "unexpected answer to ps: {other:?}"
        ))),
    }
}

/// The process of an `exec`: `--process FILE`, or the container's own
/// process object with the command line's overrides (as runc does).
pub fn exec_process(
    st: &State,
    args: &crate::cli::ExecArgs,
) -> Result<ProcessSpec, ContainerError> {
    if let Some(path) = &args.process {
        let fail = |reason: String| ContainerError::ProcessFile {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let p: oci_spec::runtime::Process =
            serde_json::from_slice(&text).map_err(|e| fail(e.to_string()))?;
        return Ok(guest_spec::process_spec(&p)?);
    }
    let b = bundle::load(&st.bundle)?;
    let base = b.spec.process().clone().unwrap_or_default();
    let mut p = guest_spec::process_spec(&base).unwrap_or_default();
    p.args = args.command.clone();
    if p.args.is_empty() {
        return Err(GuestSpecError::NoArgs.into());
    }
    p.env.extend(args.env.iter().cloned());
    if let Some(cwd) = &args.cwd {
        p.cwd = cwd.clone();
    }
    if let Some(user) = &args.user {
        p.uid = user.uid;
        p.gid = user.gid.unwrap_or(0);
    }
    if !args.additional_gids.is_empty() {
        p.additional_gids = args.additional_gids.clone();
    }
    p.terminal = args.tty;
    if args.no_new_privs {
        p.no_new_privileges = true;
    }
    Ok(p)
}

/// Checks that `exec` may run.
pub fn exec_target(root: &Path, id: &str) -> Result<State, ContainerError> {
    let st = load_fresh(root, id)?;
    st.ensure(Operation::Exec)?;
    Ok(st)
}

/// Opens an exec session: the process runs when this returns.
pub fn exec_open(st: &State, process: ProcessSpec) -> Result<(AgentConn, i32), ContainerError> {
    let mut conn = connect(st)?;
    match conn.request(&Request::Exec {
        process: Box::new(process),
        container: None,
    })? {
        Response::Started { pid } => Ok((conn, pid)),
        other => Err(ContainerError::Io(format!(
            "unexpected answer to exec: {other:?}"
        ))),
    }
}

/// Waits for a process that is our child (the VMM of `run`), returning its
/// wait status.
pub fn wait_child(pid: u32) -> nix::sys::wait::WaitStatus {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0));
    loop {
        match nix::sys::wait::waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(status) => return status,
            Err(_) => return nix::sys::wait::WaitStatus::Exited(pid, 255),
        }
    }
}

/// The VMM's end of its readiness pipe, once.
pub fn take_ready_fd() -> Option<std::fs::File> {
    take_inherited_fd(ENV_READY_FD)
}

/// The VMM's end of its go pipe, once.
pub fn take_go_fd() -> Option<std::fs::File> {
    take_inherited_fd(ENV_GO_FD)
}

/// Waits for `create`'s go-ahead on the go pipe (when there is one):
/// `true` to go on, `false` when `create` gave up (EOF) or the pipe failed.
pub fn wait_for_go(pipe: Option<std::fs::File>) -> bool {
    let Some(mut pipe) = pipe else {
        return true;
    };
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match pipe.read(&mut byte) {
            Ok(0) => return false,
            Ok(_) => {
                got.push(byte[0]);
                if byte[0] == b'\n' {
                    return got == GO.as_bytes();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// A file descriptor inherited through the environment variable `var`,
/// taken once (the variable is removed, the fd made close-on-exec).
fn take_inherited_fd(var: &str) -> Option<std::fs::File> {
    let fd: i32 = std::env::var(var).ok()?.parse().ok()?;
    std::env::remove_var(var);
    if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return None;
    }
    // SAFETY: the fd was inherited from `create` for exactly this purpose and
    // nothing else in this process owns it.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Some(file)
}

/// Sends the readiness answer; whether it reached `create` (false: its end
/// of the pipe is closed, it went away). Without a pipe there is nobody to
/// tell, which is fine.
pub fn answer_ready(pipe: &mut Option<std::fs::File>, answer: &str) -> bool {
    match pipe.take() {
        Some(mut p) => p.write_all(format!("{answer}\n").as_bytes()).is_ok(),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_roll_up_with_their_messages() {
        let e: ContainerError = StateError::NotFound { id: "x".into() }.into();
        assert_eq!(e.to_string(), "container does not exist");
        let e: ContainerError = BundleError::NoProcess.into();
        assert_eq!(e.to_string(), "process property must not be empty");
        assert!(matches!(e, ContainerError::Bundle(_)));
    }

    #[test]
    fn pid_files_have_no_newline_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pid");
        write_pid_file(&p, 1234).unwrap();
        write_pid_file(&p, 42).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "42");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_ready_answer_is_read_and_a_silent_vmm_times_out() {
        let (r, w) = pipe_cloexec().unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(b"ready\n").unwrap();
        let mut r = std::fs::File::from(r);
        assert_eq!(read_ready(&mut r, Duration::from_secs(1)).unwrap(), "ready");
        let (r2, _w2) = pipe_cloexec().unwrap();
        let mut r2 = std::fs::File::from(r2);
        let err = read_ready(&mut r2, Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("no answer"), "{err}");
    }
}
