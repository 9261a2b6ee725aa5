//! The agent: init's side of [`crate::agent_proto`], served when the kernel
//! command line has [`crate::proto::PARAM_AGENT`]`=1`.
//!
//! [`serve`] listens on vsock port [`AGENT_PORT`] and runs
//! [`handle_connection`] on a thread per connection. The container's state
//! lives in an [`Agent`]: nothing before `Create`; `Create` applies the
//! container-wide setup and prepares the main process; `Start` runs it;
//! it ends when the main process has exited. Every child is reaped by one
//! [`reaper::Reaper`] thread, which hands exit statuses to the sessions.
//!
//! Guarantees a host can rely on:
//! - `Created` is the first frame on the main connection and comes after the
//!   whole setup. At `Start`, once the program was executed, the main
//!   connection gets `Event::Started{pid}` before any output, and the `Start`
//!   connection `Response::Started{pid}`. `Response::Started{pid}` is the
//!   first frame on an exec connection, also after the program was executed
//!   (a failed exec is an `Error`).
//! - Stdin frames that arrive on the main connection before `Start` wait
//!   (the connection's reader blocks) and reach the process once it runs.
//! - On a session connection, `Exited` is the last frame: after it the
//!   connection is shut down. It follows all the process's output: output is
//!   read until EOF on every output (the pty's hang-up with a terminal), or,
//!   if something the process left behind keeps them open, until they stay
//!   silent for [`conn::DRAIN_IDLE`] after the process exited.
//! - When the main process exits, every other process in the guest is
//!   killed (as when a pid namespace's init dies), then `Exited` follows its
//!   output. Init stays up; the host stops the VM.
//! - A failed `Start` (the program could not be executed) answers `Error`
//!   on the `Start` connection and ends the main session with `Exited` with
//!   code 127 (not found) or 126 (other), as a shell would.
//! - One-shot requests (`Start`, `Signal`, `Ps`), and a `Create` or `Exec`
//!   that fails, get one response and the connection is closed.
//! - A frame init cannot decode gets `Error`; if the stream can no longer
//!   be followed (bad length or kind), the connection's input is closed too.

pub mod caps;
pub mod conn;
pub mod container;
pub mod ps;
pub mod reaper;
pub mod setup;
pub mod spawn;
pub mod vsock;

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::agent_proto::{
    ContainerSpec, Event, Frame, FrameError, FrameKind, ProcessInfo, ProcessSpec, Request,
    Response, AGENT_PORT,
};
use conn::{pump_output, Connection, FrameSink, FrameWriter, IoSlot, ProcIo, Relink, DRAIN_IDLE};
use reaper::{ExitStatus, Reaper};
use setup::SetupError;
use spawn::{errno_text, Launch, Prepared, SpawnError, Spawned};

/// Errors that stop the agent from serving at all.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("listening on vsock port {port}: {}", errno_text(*errno))]
    Listen { port: u32, errno: Errno },
    #[error("starting the reaper thread: {source}")]
    Reaper { source: std::io::Error },
}

/// What the agent does to the system beyond starting processes, so the
/// session logic runs on a host in tests.
pub trait Platform: Send + Sync + 'static {
    /// The guest-wide setup of `Create` (clock, entropy, network).
    fn setup(&self, spec: &ContainerSpec) -> Result<(), SetupError>;
    /// The container's own namespaces and file systems
    /// ([`container::launch`]): its holder, or `None` where the container
    /// runs in the agent's namespaces (the agent's tests on a host).
    /// `join`: the pod's first container's namespaces, for a later
    /// container that shares some ([`ContainerSpec::join_namespaces`]).
    fn holder(
        &self,
        _spec: &ContainerSpec,
        _reaper: &Reaper,
        _join: Option<&container::Namespaces>,
        _cgroup: Option<&container::GuestCgroup>,
    ) -> Result<Option<container::Holder>, String> {
        Ok(None)
    }
    /// A pod's container's own cgroup with its limits
    /// ([`ContainerSpec::resources`]); `None` where containers get none
    /// (the agent's tests on a host).
    fn cgroup(
        &self,
        _id: &str,
        _resources: &crate::agent_proto::GuestResources,
    ) -> Result<Option<container::GuestCgroup>, String> {
        Ok(None)
    }
    /// Sends `signal` to every process but init (`kill(-1, signal)`).
    fn signal_all(&self, signal: i32) -> Result<(), Errno>;
    /// The main process ended: end every other process, as the kernel does
    /// when a pid namespace's init dies, so its output reaches EOF.
    fn main_exited(&self);
    /// One line on the console.
    fn log(&self, line: &str);
    /// Reports a moment of the start to the VMM (boot timer port).
    fn boot_mark(&self, event: crate::proto::BootEvent);
    /// A pod's shared memory ([`crate::agent_proto::POD_SHM_FSTYPE`]): the
    /// guest's tmpfs at [`crate::agent_proto::POD_SHM_DIR`], mounted with
    /// `options` if it is not yet.
    fn pod_shm(&self, _options: &[String]) -> Result<(), String> {
        Ok(())
    }
    /// Before a checkpoint: file data written out to the host, caches
    /// dropped (fewer files held over virtio-fs, less memory to save).
    fn quiesce(&self) {}
    /// After a restore: the guest's clock and random pool from the host's.
    fn resync(&self, _host_sync: &crate::agent_proto::HostSync) {}
}

/// The real guest.
pub struct GuestPlatform;

impl Platform for GuestPlatform {
    fn setup(&self, spec: &ContainerSpec) -> Result<(), SetupError> {
        for problem in crate::host_sync::apply(&spec.host_sync) {
            self.log(&problem);
        }
        crate::net::configure(&spec.network)?;
        Ok(())
    }

    fn holder(
        &self,
        spec: &ContainerSpec,
        reaper: &Reaper,
        join: Option<&container::Namespaces>,
        cgroup: Option<&container::GuestCgroup>,
    ) -> Result<Option<container::Holder>, String> {
        container::launch(spec, reaper, join, cgroup).map(Some)
    }

    fn cgroup(
        &self,
        id: &str,
        resources: &crate::agent_proto::GuestResources,
    ) -> Result<Option<container::GuestCgroup>, String> {
        container::guest_cgroup(id, resources).map(Some)
    }

    fn signal_all(&self, signal: i32) -> Result<(), Errno> {
        // SAFETY: kill has no memory effects; from PID 1, pid -1 reaches
        // every process except init itself.
        Errno::result(unsafe { libc::kill(-1, signal) }).map(drop)
    }

    fn main_exited(&self) {
        let _ = self.signal_all(libc::SIGKILL);
    }

    fn log(&self, line: &str) {
        eprintln!("{} {line}", crate::proto::LOG_PREFIX);
    }

    fn boot_mark(&self, event: crate::proto::BootEvent) {
        crate::boot_timer::mark(event);
    }

    fn pod_shm(&self, options: &[String]) -> Result<(), String> {
        container::pod_shm(options)
    }

    fn quiesce(&self) {
        // SAFETY: sync takes no arguments and has no memory effects.
        unsafe { libc::sync() };
        if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
            self.log(&format!("checkpoint: dropping caches: {e}"));
        }
    }

    fn resync(&self, host_sync: &crate::agent_proto::HostSync) {
        for problem in crate::host_sync::apply(host_sync) {
            self.log(&problem);
        }
    }
}

/// The container's main process, through its life.
enum Main {
    /// No `Create` yet.
    Empty,
    /// Set up; the process is prepared, its session waits for it.
    Created {
        id: String,
        /// OCI `startContainer` hooks, run at `Start`.
        start_hooks: Vec<crate::agent_proto::GuestHook>,
        hook_state: String,
        prepared: Box<Prepared>,
        sink: Arc<dyn FrameSink>,
        slot: Arc<IoSlot>,
    },
    /// Started; `exited` once the reaper has its status.
    Running { id: String, pid: i32, exited: bool },
    /// Its session is over (or it never ran).
    Stopped { id: String },
}

/// Largest signal number accepted.
const MAX_SIGNAL: i32 = 64;

/// One container of the VM: the first one (the only one outside a pod),
/// or a later container of the same pod.
struct Ctr {
    /// The VM's first container: its setup was the guest's, its end ends
    /// every process of the guest.
    first: bool,
    main: Arc<Mutex<Main>>,
    /// The container's seccomp filter (from `Create`): loaded into its
    /// process and every exec, as runc does.
    seccomp: Mutex<Option<crate::agent_proto::SeccompProgram>>,
    /// The container's holder, from `Create` until `Start` hands the main
    /// process to it.
    holder: Mutex<Option<container::Holder>>,
    /// The container's namespaces, which every exec and guest hook joins.
    namespaces: Mutex<Option<Arc<container::Namespaces>>>,
    /// The main session's sink and its process's slot (from `Create`): a
    /// restored VM's host takes them over (`Reattach`).
    main_sink: Mutex<Option<(Arc<Relink>, Arc<IoSlot>)>>,
    /// Exec sessions running (a checkpoint is refused while any is).
    execs: Arc<AtomicUsize>,
    /// A pod's container's own cgroup in the guest, if it has one.
    cgroup: Mutex<Option<Arc<container::GuestCgroup>>>,
}

impl Ctr {
    fn new(first: bool) -> Ctr {
        Ctr {
            first,
            main: Arc::new(Mutex::new(Main::Empty)),
            seccomp: Mutex::new(None),
            holder: Mutex::new(None),
            namespaces: Mutex::new(None),
            main_sink: Mutex::new(None),
            execs: Arc::new(AtomicUsize::new(0)),
            cgroup: Mutex::new(None),
        }
    }

    fn cgroup(&self) -> Option<Arc<container::GuestCgroup>> {
        self.cgroup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock_main(&self) -> MutexGuard<'_, Main> {
        self.main.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn main_session(&self) -> Option<(Arc<Relink>, Arc<IoSlot>)> {
        self.main_sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The container's namespaces, once `Create` made them.
    fn namespaces(&self) -> Option<Arc<container::Namespaces>> {
        self.namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Most containers one VM holds (a pod's).
pub const MAX_CONTAINERS: usize = 64;

/// The VM's containers, as `Create`, `Start`, `Exec`, `Signal` and `Ps`
/// see them: one, or a pod's (the first is the pod's sandbox).
pub struct Agent<P: Platform> {
    platform: Arc<P>,
    reaper: Arc<Reaper>,
    /// In creation order; ids are unique.
    containers: Mutex<Vec<(String, Arc<Ctr>)>>,
}

/// Why `Start` failed, and how the main session ends if it must.
struct StartFailure {
    message: String,
    main_end: Option<(Arc<dyn FrameSink>, ExitStatus)>,
}

/// What a session thread needs besides its process's outputs.
struct SessionEnd {
    wake: File,
    exits: mpsc::Receiver<ExitStatus>,
}

impl<P: Platform> Agent<P> {
    pub fn new(platform: P, reaper: Arc<Reaper>) -> Self {
        Agent {
            platform: Arc::new(platform),
            reaper,
            containers: Mutex::new(Vec::new()),
        }
    }

    fn lock_containers(&self) -> MutexGuard<'_, Vec<(String, Arc<Ctr>)>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Container `id` (`None`: the VM's first).
    fn ctr(&self, id: Option<&str>) -> Result<Arc<Ctr>, String> {
        let list = self.lock_containers();
        match id {
            None => list
                .first()
                .map(|(_, c)| Arc::clone(c))
                .ok_or_else(|| "container not created".to_owned()),
            Some(id) => list
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, c)| Arc::clone(c))
                .ok_or_else(|| format!("no container {id} in this VM")),
        }
    }

    /// The first container, for the requests only it takes (checkpoint,
    /// reattach).
    fn first(&self) -> Result<Arc<Ctr>, String> {
        self.ctr(None)
    }

    /// `Checkpoint`: holds the main session's output (see
    /// [`Request::Checkpoint`]).
    pub fn checkpoint(&self) -> Result<(), String> {
        if self.lock_containers().len() > 1 {
            return Err("a pod of several containers cannot be checkpointed".into());
        }
        let ctr = self
            .first()
            .map_err(|_| "the container is not running".to_owned())?;
        let main = ctr.lock_main();
        let Main::Running { exited: false, .. } = &*main else {
            return Err("the container is not running".into());
        };
        let execs = ctr.execs.load(Ordering::SeqCst);
        if execs > 0 {
            return Err(format!(
                "{execs} exec session(s) still running in the container: a checkpoint cannot \
                 keep their connections; wait for them to end first"
            ));
        }
        let Some((relink, _)) = ctr.main_session() else {
            return Err("the container has no main session".into());
        };
        if !relink.hold(&Frame::json(FrameKind::Event, &Event::Detached)) {
            return Err("a checkpoint is already under way".into());
        }
        drop(main);
        self.platform.quiesce();
        Ok(())
    }

    /// `CheckpointAbort`: the main session's output flows again.
    pub fn checkpoint_abort(&self) -> Result<(), String> {
        match self.first().ok().and_then(|c| c.main_session()) {
            Some((relink, _)) if relink.is_held() => {
                relink.release();
                Ok(())
            }
            _ => Err("no checkpoint is under way".into()),
        }
    }

    /// `Reattach`: `sink`'s connection becomes the main session; the
    /// answer goes there before the held output.
    pub fn reattach(
        &self,
        host_sync: &crate::agent_proto::HostSync,
        sink: Arc<dyn FrameSink>,
    ) -> Result<Arc<IoSlot>, String> {
        let ctr = self
            .first()
            .map_err(|_| "the container is not running".to_owned())?;
        let pid = match &*ctr.lock_main() {
            Main::Running { pid, .. } => *pid,
            _ => return Err("the container is not running".into()),
        };
        let Some((relink, slot)) = ctr.main_session() else {
            return Err("the container has no main session".into());
        };
        if !relink.is_held() {
            return Err("the container was not checkpointed: its session is live".into());
        }
        self.platform.resync(host_sync);
        sink.send(&Frame::json(
            FrameKind::Response,
            &Response::Reattached { pid },
        ));
        relink.attach(sink);
        Ok(slot)
    }

    /// Whether `slot` and `sink` are a main session whose frames now go to
    /// another connection (or are held for one): its input ending is not
    /// the end of the process's stdin.
    fn detached_main(&self, slot: &Arc<IoSlot>, sink: &Arc<dyn FrameSink>) -> bool {
        self.first()
            .ok()
            .and_then(|c| c.main_session())
            .is_some_and(|(relink, main)| Arc::ptr_eq(&main, slot) && !relink.flows_to(sink))
    }

    fn report_unknown_caps(&self, prepared: &Prepared) {
        if !prepared.unknown_caps.is_empty() {
            self.platform.log(&format!(
                "ignoring capabilities this kernel does not have: {}",
                prepared.unknown_caps.join(", ")
            ));
        }
    }

    /// Spawns `prepared` with an exit callback that also runs `also` (on the
    /// reaper thread), returning the process and what its session waits on.
    fn spawn_session(
        &self,
        ctr: &Ctr,
        prepared: &Prepared,
        main: bool,
        also: impl FnOnce() + Send + 'static,
    ) -> Result<(Spawned, SessionEnd), SpawnError> {
        let (wake, wake_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Stdio {
                what: "exit notification pipe",
                source: e.into(),
            })?;
        let (tx, exits) = mpsc::channel();
        let on_exit = Box::new(move |status: ExitStatus| {
            also();
            let _ = tx.send(status);
            // Closing the write end wakes the session's poll.
            drop(wake_w);
        });
        let spawned = if main {
            self.spawn_main(ctr, prepared, on_exit)?
        } else {
            self.spawn_inside(ctr, prepared, on_exit)?
        };
        Ok((
            spawned,
            SessionEnd {
                wake: File::from(wake),
                exits,
            },
        ))
    }

    /// Checks and converts a process spec, looking the program up in the
    /// container's root once it has one of its own.
    fn prepare(&self, ctr: &Ctr, spec: &ProcessSpec) -> Result<Prepared, SpawnError> {
        let Some(ns) = ctr.namespaces() else {
            return Prepared::new(spec);
        };
        let root = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(format!("/proc/{}/root", ns.root_pid))
            .map_err(|source| SpawnError::Stdio {
                what: "view of the container's root",
                source,
            })?;
        Prepared::new_in(spec, Some(&root))
    }

    /// Spawns an exec or a hook: in the container's namespaces once it has
    /// them.
    fn spawn_inside(
        &self,
        ctr: &Ctr,
        prepared: &Prepared,
        on_exit: reaper::OnExit,
    ) -> Result<Spawned, SpawnError> {
        match ctr.namespaces().as_deref() {
            Some(ns) => spawn::spawn_with(prepared, &self.reaper, on_exit, Launch::Enter(ns)),
            None => spawn::spawn(prepared, &self.reaper, on_exit),
        }
    }

    /// Spawns the main process: the holder becomes it, where there is one.
    fn spawn_main(
        &self,
        ctr: &Ctr,
        prepared: &Prepared,
        on_exit: reaper::OnExit,
    ) -> Result<Spawned, SpawnError> {
        let holder = ctr.holder.lock().unwrap_or_else(|e| e.into_inner()).take();
        match &holder {
            Some(h) => spawn::spawn_with(prepared, &self.reaper, on_exit, Launch::Handoff(h)),
            None => spawn::spawn(prepared, &self.reaper, on_exit),
        }
    }

    /// Runs a session's output pump and its end on a new thread.
    fn start_session_thread(
        &self,
        ctr: &Ctr,
        outputs: Vec<(File, FrameKind)>,
        end: SessionEnd,
        sink: Arc<dyn FrameSink>,
        is_main: bool,
    ) -> std::io::Result<()> {
        let platform = Arc::clone(&self.platform);
        let main = Arc::clone(&ctr.main);
        let execs = Arc::clone(&ctr.execs);
        let cgroup = if is_main { ctr.cgroup() } else { None };
        // A later container of a pod has a pid namespace of its own (or
        // shares the pod's): its end is not the guest's. What it leaves in
        // the pod's pid namespace goes with its cgroup, as runc's shim
        // kills a container's cgroup when its init ends.
        let ends_guest = ctr.first;
        let started = std::thread::Builder::new()
            .name(
                if is_main {
                    "main-session"
                } else {
                    "exec-session"
                }
                .into(),
            )
            .spawn(move || {
                let status = pump_output(outputs, end.wake, &end.exits, &*sink, DRAIN_IDLE, || {
                    if is_main && ends_guest {
                        platform.main_exited();
                    } else if let Some(c) = cgroup.as_deref().filter(|_| is_main) {
                        c.kill();
                    }
                });
                if is_main {
                    // Taking the lock also waits for a `Start` or `Signal`
                    // answer being sent: it goes out before `Exited`.
                    let mut main = main.lock().unwrap_or_else(|e| e.into_inner());
                    if let Main::Running { id, .. } = &*main {
                        *main = Main::Stopped { id: id.clone() };
                    }
                }
                // Over before the host hears so: a checkpoint asked for
                // after `Exited` is not refused for it.
                if !is_main {
                    execs.fetch_sub(1, Ordering::SeqCst);
                }
                if cgroup.is_some_and(|c| c.oom_killed()) {
                    sink.send(&Frame::json(FrameKind::Event, &Event::OomKilled));
                }
                sink.send(&Frame::json(FrameKind::Event, &status.event()));
                sink.close();
            });
        started.map(drop)
    }

    /// Runs OCI hooks inside the container, one after the other, each with
    /// the state on stdin; the first failure (non-zero exit, signal,
    /// timeout, or a program that cannot run) ends the run.
    fn run_hooks(
        &self,
        ctr: &Ctr,
        kind: &str,
        hooks: &[crate::agent_proto::GuestHook],
        state: &str,
    ) -> Result<(), String> {
        for hook in hooks {
            let fail = |why: String| format!("{kind} hook {}: {why}", hook.path);
            let mut args = if hook.args.is_empty() {
                vec![hook.path.clone()]
            } else {
                hook.args.clone()
            };
            args[0] = hook.path.clone();
            let spec = crate::agent_proto::ProcessSpec {
                args,
                env: hook.env.clone(),
                cwd: "/".into(),
                ..Default::default()
            };
            let prepared = self.prepare(ctr, &spec).map_err(|e| fail(e.to_string()))?;
            let (tx, rx) = mpsc::channel();
            let on_exit = Box::new(move |status: ExitStatus| {
                let _ = tx.send(status);
            });
            let spawned = self
                .spawn_inside(ctr, &prepared, on_exit)
                .map_err(|e| fail(e.to_string()))?;
            if let Some(mut stdin) = spawned.stdin {
                use std::io::Write as _;
                let _ = stdin.write_all(state.as_bytes());
            }
            let drains: Vec<_> = spawned
                .outputs
                .into_iter()
                .map(|(mut f, kind)| {
                    std::thread::spawn(move || {
                        use std::io::Read as _;
                        let mut text = String::new();
                        let _ = f.read_to_string(&mut text);
                        (kind, text)
                    })
                })
                .collect();
            let limit = std::time::Duration::from_secs(u64::from(hook.timeout.unwrap_or(u32::MAX)));
            let status = match rx.recv_timeout(limit) {
                Ok(s) => s,
                Err(_) => {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(spawned.pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return Err(fail(format!(
                        "timed out after {} s",
                        hook.timeout.unwrap_or(0)
                    )));
                }
            };
            let stderr: String = drains
                .into_iter()
                .filter_map(|d| d.join().ok())
                .filter(|(k, _)| *k == FrameKind::Stderr)
                .map(|(_, t)| t)
                .collect();
            match status {
                ExitStatus::Code(0) => {}
                other => return Err(fail(format!("{other:?}: {}", stderr.trim()))),
            }
        }
        Ok(())
    }

    /// `Create`: sets the container up, prepares its process and answers
    /// `Created` on `sink` (before any other request can start it). The
    /// returned slot gets the process at `Start`. The VM's first container
    /// also sets the guest up; a later one (a pod's) joins the first one's
    /// namespaces that its spec lists.
    pub fn create(
        &self,
        spec: ContainerSpec,
        sink: Arc<dyn FrameSink>,
    ) -> Result<Arc<IoSlot>, String> {
        let ctr = {
            let mut list = self.lock_containers();
            if let Some((id, _)) = list.iter().find(|(id, _)| *id == spec.id) {
                return Err(format!("container {id} already created"));
            }
            if let Some((id, _)) = list.first().filter(|_| spec.id.is_empty()) {
                return Err(format!("container {id} already created"));
            }
            if list.len() >= MAX_CONTAINERS {
                return Err(format!(
                    "this VM already holds {MAX_CONTAINERS} containers, the most one pod may have"
                ));
            }
            let ctr = Arc::new(Ctr::new(list.is_empty()));
            list.push((spec.id.clone(), Arc::clone(&ctr)));
            ctr
        };
        let made = self.create_in(&ctr, spec, sink);
        if made.is_err() {
            self.lock_containers()
                .retain(|(_, c)| !Arc::ptr_eq(c, &ctr));
        }
        made
    }

    fn create_in(
        &self,
        ctr: &Arc<Ctr>,
        spec: ContainerSpec,
        sink: Arc<dyn FrameSink>,
    ) -> Result<Arc<IoSlot>, String> {
        let mut main = ctr.lock_main();
        let join = if ctr.first {
            if !spec.join_namespaces.is_empty() {
                return Err("the VM's first container has no pod namespaces to join".into());
            }
            self.platform.setup(&spec).map_err(|e| e.to_string())?;
            None
        } else if spec.join_namespaces.is_empty() {
            None
        } else {
            self.first()?.namespaces()
        };
        if let Some(m) = spec
            .mounts
            .iter()
            .find(|m| m.fstype == crate::agent_proto::POD_SHM_FSTYPE)
        {
            self.platform.pod_shm(&m.options)?;
        }
        let cgroup = match &spec.resources {
            Some(r) if !ctr.first => self.platform.cgroup(&spec.id, r)?.map(Arc::new),
            _ => None,
        };
        *ctr.cgroup.lock().unwrap_or_else(|e| e.into_inner()) = cgroup.clone();
        let holder = self
            .platform
            .holder(&spec, &self.reaper, join.as_deref(), cgroup.as_deref());
        let holder = match holder {
            Ok(h) => h,
            Err(e) => {
                if let Some(c) = &cgroup {
                    c.remove();
                }
                return Err(e);
            }
        };
        if let Some(holder) = holder {
            *ctr.namespaces.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Arc::clone(&holder.namespaces));
            *ctr.holder.lock().unwrap_or_else(|e| e.into_inner()) = Some(holder);
        }
        self.run_hooks(
            ctr,
            "createContainer",
            &spec.create_container_hooks,
            &spec.hook_state,
        )?;
        let mut prepared = self
            .prepare(ctr, &spec.process)
            .map_err(|e| e.to_string())?;
        if let Some(program) = &spec.seccomp {
            prepared.set_seccomp(program).map_err(|e| e.to_string())?;
        }
        self.report_unknown_caps(&prepared);
        *ctr.seccomp.lock().unwrap_or_else(|e| e.into_inner()) = spec.seccomp.clone();
        let slot = IoSlot::pending();
        let relink = Relink::new(sink);
        *ctr.main_sink.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Arc::clone(&relink), Arc::clone(&slot)));
        let sink: Arc<dyn FrameSink> = relink;
        sink.send(&Frame::json(FrameKind::Response, &Response::Created));
        *main = Main::Created {
            id: spec.id,
            start_hooks: spec.start_container_hooks,
            hook_state: spec.hook_state,
            prepared: Box::new(prepared),
            sink,
            slot: Arc::clone(&slot),
        };
        Ok(slot)
    }

    /// `Start`: runs the prepared main process; its session (on the `Create`
    /// connection) streams its stdio and ends with `Exited`. The answer goes
    /// to `reply` before the main session can end: the host stops the VM at
    /// `Exited`, and the answer must not be lost with it.
    pub fn start(&self, reply: &dyn FrameSink) {
        self.start_in(None, reply);
    }

    /// `Start` of container `id` (`None`: the first).
    pub fn start_in(&self, id: Option<&str>, reply: &dyn FrameSink) {
        let ctr = match self.ctr(id) {
            Ok(c) => c,
            Err(m) => return error(reply, m),
        };
        let mut main = ctr.lock_main();
        match self.start_locked(&ctr, &mut main) {
            Ok(pid) => respond(reply, &Response::Started { pid }),
            Err(failure) => {
                error(reply, failure.message);
                if let Some((sink, status)) = failure.main_end {
                    sink.send(&Frame::json(FrameKind::Event, &status.event()));
                    sink.close();
                }
            }
        }
    }

    fn start_locked(&self, ctr: &Ctr, main: &mut Main) -> Result<i32, StartFailure> {
        let refuse = |message: String| StartFailure {
            message,
            main_end: None,
        };
        let id = match &*main {
            Main::Empty => return Err(refuse("container not created".into())),
            Main::Running { id, .. } | Main::Stopped { id } => {
                return Err(refuse(format!("container {id} already started")));
            }
            Main::Created { id, .. } => id.clone(),
        };
        let Main::Created {
            prepared,
            sink,
            slot,
            start_hooks,
            hook_state,
            ..
        } = std::mem::replace(main, Main::Stopped { id: id.clone() })
        else {
            return Err(refuse("container not created".into()));
        };
        if let Err(message) = self.run_hooks(ctr, "startContainer", &start_hooks, &hook_state) {
            // Like runc: a failed startContainer hook stops the container.
            slot.abandon();
            return Err(StartFailure {
                message,
                main_end: Some((sink, ExitStatus::Code(1))),
            });
        }
        let state = Arc::clone(&ctr.main);
        let live = Arc::new(Mutex::new(true));
        let reaped = Arc::clone(&live);
        let mark_exited = move || {
            *reaped.lock().unwrap_or_else(|e| e.into_inner()) = false;
            let mut main = state.lock().unwrap_or_else(|e| e.into_inner());
            if let Main::Running { exited, .. } = &mut *main {
                *exited = true;
            }
        };
        let (spawned, end) = match self.spawn_session(ctr, &prepared, true, mark_exited) {
            Ok(s) => s,
            Err(err) => {
                // Like runc: a container whose process cannot start stops.
                slot.abandon();
                return Err(StartFailure {
                    message: err.to_string(),
                    main_end: Some((sink, ExitStatus::Code(err.shell_code()))),
                });
            }
        };
        let pid = spawned.pid;
        // spawn returns once the program was executed.
        self.platform
            .boot_mark(crate::proto::BootEvent::ProcessExecuted);
        *main = Main::Running {
            id,
            pid,
            exited: false,
        };
        // Before any output: the host starts sending stdin on this event.
        sink.send(&Frame::json(FrameKind::Event, &Event::Started { pid }));
        slot.fill(Arc::new(
            ProcIo::new(pid, spawned.stdin, spawned.terminal).with_liveness(live),
        ));
        if let Err(e) = self.start_session_thread(ctr, spawned.outputs, end, sink, true) {
            // SAFETY: kill has no memory effects; the pid is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(refuse(format!("starting the session thread: {e}")));
        }
        Ok(pid)
    }

    /// `Exec`: runs an extra process in the container, answers
    /// `Started{pid}` on `sink` and streams its stdio there.
    pub fn exec(
        &self,
        process: ProcessSpec,
        sink: Arc<dyn FrameSink>,
    ) -> Result<Arc<IoSlot>, String> {
        self.exec_in(None, process, sink)
    }

    /// `Exec` in container `id` (`None`: the first).
    pub fn exec_in(
        &self,
        id: Option<&str>,
        process: ProcessSpec,
        sink: Arc<dyn FrameSink>,
    ) -> Result<Arc<IoSlot>, String> {
        let ctr = self.ctr(id)?;
        match &*ctr.lock_main() {
            Main::Empty => return Err("container not created".into()),
            Main::Running { exited: true, .. } | Main::Stopped { .. } => {
                return Err("cannot exec in a stopped container".into());
            }
            Main::Created { .. } | Main::Running { .. } => {}
        }
        let mut prepared = self.prepare(&ctr, &process).map_err(|e| e.to_string())?;
        if let Some(program) = &*ctr.seccomp.lock().unwrap_or_else(|e| e.into_inner()) {
            prepared.set_seccomp(program).map_err(|e| e.to_string())?;
        }
        self.report_unknown_caps(&prepared);
        let live = Arc::new(Mutex::new(true));
        let reaped = Arc::clone(&live);
        let (spawned, end) = self
            .spawn_session(&ctr, &prepared, false, move || {
                *reaped.lock().unwrap_or_else(|e| e.into_inner()) = false;
            })
            .map_err(|e| e.to_string())?;
        let pid = spawned.pid;
        // Counted before the host hears of it (a checkpoint refuses while
        // any runs); its session thread counts it out.
        ctr.execs.fetch_add(1, Ordering::SeqCst);
        sink.send(&Frame::json(
            FrameKind::Response,
            &Response::Started { pid },
        ));
        let io = Arc::new(ProcIo::new(pid, spawned.stdin, spawned.terminal).with_liveness(live));
        if let Err(e) =
            self.start_session_thread(&ctr, spawned.outputs, end, Arc::clone(&sink), false)
        {
            // SAFETY: kill has no memory effects; the pid is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            ctr.execs.fetch_sub(1, Ordering::SeqCst);
            self.platform
                .log(&format!("exec session thread for pid {pid}: {e}"));
            sink.close();
        }
        Ok(IoSlot::ready(io))
    }

    /// `Signal`: to the main process, or (`all`) every process but init.
    /// The answer goes to `reply` before the main session can end (see
    /// [`Agent::start`]).
    pub fn signal(&self, signal: i32, all: bool, reply: &dyn FrameSink) {
        self.signal_in(None, signal, all, reply);
    }

    /// `Signal` to container `id` (`None`: the first). `all` in a later
    /// container of a pod reaches the processes of its pid namespace.
    pub fn signal_in(&self, id: Option<&str>, signal: i32, all: bool, reply: &dyn FrameSink) {
        let ctr = match self.ctr(id) {
            Ok(c) => c,
            Err(m) => return error(reply, m),
        };
        // The lock is held so the reaper cannot mark the process exited (and
        // its pid be reused) in between, and `Exited` waits for the answer.
        let main = ctr.lock_main();
        match self.signal_locked(&ctr, &main, signal, all) {
            Ok(()) => respond(reply, &Response::Ok),
            Err(message) => error(reply, message),
        }
    }

    fn signal_locked(&self, ctr: &Ctr, main: &Main, signal: i32, all: bool) -> Result<(), String> {
        if !(0..=MAX_SIGNAL).contains(&signal) {
            return Err(format!("invalid signal {signal}"));
        }
        let Main::Running {
            pid, exited: false, ..
        } = main
        else {
            return Err("container not running".into());
        };
        let result = if all && ctr.first {
            self.platform.signal_all(signal)
        } else if all {
            container::signal_pid_namespace(ctr.namespaces().as_deref(), *pid, signal)
        } else {
            // SAFETY: kill has no memory effects; `pid` is our child and not
            // yet reaped (checked under the lock).
            Errno::result(unsafe { libc::kill(*pid, signal) }).map(drop)
        };
        result.map_err(|e| format!("sending signal {signal}: {}", errno_text(e)))
    }

    /// `Remove`: a later container of a pod whose process ended (or never
    /// started) goes: a holder still waiting ends, the namespaces it kept
    /// open close (its mounts go with the last of its processes).
    pub fn remove(&self, id: &str) -> Result<(), String> {
        let ctr = self.ctr(Some(id))?;
        if ctr.first {
            return Err(format!(
                "container {id} is the pod's first: it goes with the VM"
            ));
        }
        {
            let main = ctr.lock_main();
            if let Main::Running { exited: false, .. } = &*main {
                return Err(format!("container {id} is running: stop it first"));
            }
        }
        if let Some(holder) = ctr.holder.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // SAFETY: kill has no memory effects; the holder is our child,
            // reaped by the reaper only.
            unsafe { libc::kill(holder.pid, libc::SIGKILL) };
        }
        self.lock_containers()
            .retain(|(_, c)| !Arc::ptr_eq(c, &ctr));
        // Its namespaces close with it; its cgroup goes once its last
        // processes are reaped.
        *ctr.namespaces.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Some(c) = ctr.cgroup.lock().unwrap_or_else(|e| e.into_inner()).take() {
            c.remove();
        }
        Ok(())
    }

    /// `Stats` of a later container of a pod: its cgroup's files.
    pub fn stats(&self, id: &str) -> Result<Vec<(String, String)>, String> {
        let ctr = self.ctr(Some(id))?;
        let cgroup = ctr
            .cgroup()
            .ok_or_else(|| format!("container {id} has no cgroup of its own in this VM"))?;
        Ok(crate::agent_proto::STAT_FILES
            .iter()
            .filter_map(|f| {
                let text = std::fs::read_to_string(cgroup.path.join(f)).ok()?;
                Some(((*f).to_owned(), text))
            })
            .collect())
    }

    /// `Ps`.
    pub fn ps(&self) -> Result<Vec<ProcessInfo>, String> {
        ps::list(Path::new("/proc")).map_err(|e| format!("listing /proc: {e}"))
    }

    /// `Ps` of container `id` (`None`: the whole VM). A pod's later
    /// container: the processes of its cgroup; the pod's first: those of
    /// no later container's.
    pub fn ps_in(&self, id: Option<&str>) -> Result<Vec<ProcessInfo>, String> {
        let all = self.ps()?;
        let Some(id) = id else {
            return Ok(all);
        };
        let ctr = self.ctr(Some(id))?;
        let pids_of = |c: &container::GuestCgroup| -> Vec<i32> {
            std::fs::read_to_string(c.path.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        };
        if let Some(cg) = ctr.cgroup() {
            let mine = pids_of(&cg);
            return Ok(all.into_iter().filter(|p| mine.contains(&p.pid)).collect());
        }
        if !ctr.first {
            return Ok(all);
        }
        let others: Vec<i32> = self
            .lock_containers()
            .iter()
            .filter_map(|(_, c)| c.cgroup())
            .flat_map(|c| pids_of(&c))
            .collect();
        Ok(all
            .into_iter()
            .filter(|p| !others.contains(&p.pid))
            .collect())
    }
}

fn respond(sink: &dyn FrameSink, response: &Response) {
    sink.send(&Frame::json(FrameKind::Response, response));
}

fn error(sink: &dyn FrameSink, message: impl Into<String>) {
    respond(
        sink,
        &Response::Error {
            message: message.into(),
        },
    );
}

/// The name of a request, for messages.
fn op_name(request: &Request) -> &'static str {
    match request {
        Request::Create { .. } => "create",
        Request::Start { .. } => "start",
        Request::Exec { .. } => "exec",
        Request::Signal { .. } => "signal",
        Request::Resize { .. } => "resize",
        Request::Ps { .. } => "ps",
        Request::Checkpoint => "checkpoint",
        Request::CheckpointAbort => "checkpoint abort",
        Request::Reattach { .. } => "reattach",
        Request::Remove { .. } => "remove",
        Request::Stats { .. } => "stats",
    }
}

/// Handles a frame on a connection that has no session yet. Returns the
/// session's slot once it has one, `Err(())` to close the connection.
fn idle_frame<P: Platform>(
    agent: &Agent<P>,
    sink: &Arc<dyn FrameSink>,
    frame: Frame,
) -> Result<Option<Arc<IoSlot>>, ()> {
    if frame.kind != FrameKind::Request {
        error(
            &**sink,
            format!("expected a request, got a {:?} frame", frame.kind),
        );
        return Err(());
    }
    let request: Request = match frame.parse("request") {
        Ok(r) => r,
        Err(e) => {
            error(&**sink, e.to_string());
            return Err(());
        }
    };
    let session = match request {
        Request::Create { spec } => agent.create(*spec, Arc::clone(sink)),
        Request::Exec { process, container } => {
            agent.exec_in(container.as_deref(), *process, Arc::clone(sink))
        }
        Request::Start { container } => {
            agent.start_in(container.as_deref(), &**sink);
            inject_start_fault();
            return Err(());
        }
        Request::Signal {
            signal,
            all,
            container,
        } => {
            agent.signal_in(container.as_deref(), signal, all, &**sink);
            return Err(());
        }
        Request::Ps { container } => {
            match agent.ps_in(container.as_deref()) {
                Ok(processes) => respond(&**sink, &Response::Ps { processes }),
                Err(m) => error(&**sink, m),
            }
            return Err(());
        }
        Request::Checkpoint | Request::CheckpointAbort => {
            let done = if matches!(request, Request::Checkpoint) {
                agent.checkpoint()
            } else {
                agent.checkpoint_abort()
            };
            match done {
                Ok(()) => respond(&**sink, &Response::Ok),
                Err(m) => error(&**sink, m),
            }
            return Err(());
        }
        Request::Reattach { host_sync } => agent.reattach(&host_sync, Arc::clone(sink)),
        Request::Remove { container } => {
            match agent.remove(&container) {
                Ok(()) => respond(&**sink, &Response::Ok),
                Err(m) => error(&**sink, m),
            }
            return Err(());
        }
        Request::Stats { container } => {
            match agent.stats(&container) {
                Ok(files) => respond(&**sink, &Response::Stats { files }),
                Err(m) => error(&**sink, m),
            }
            return Err(());
        }
        Request::Resize { .. } => Err("resize: this connection has no process".into()),
    };
    match session {
        Ok(slot) => Ok(Some(slot)),
        Err(m) => {
            error(&**sink, m);
            Err(())
        }
    }
}

/// Handles a frame on a session connection (main or exec).
fn session_frame<P: Platform>(agent: &Agent<P>, sink: &dyn FrameSink, slot: &IoSlot, frame: Frame) {
    match frame.kind {
        FrameKind::Stdin => {
            if let Some(io) = slot.wait() {
                io.write_stdin(&frame.payload);
            }
        }
        FrameKind::StdinEof => {
            if let Some(io) = slot.wait() {
                io.close_stdin();
            }
        }
        FrameKind::Request => match frame.parse::<Request>("request") {
            Ok(Request::Resize { rows, cols }) => {
                if let Some(io) = slot.wait() {
                    if let Err(e) = io.resize(rows, cols) {
                        agent
                            .platform
                            .log(&format!("resizing the terminal of pid {}: {e}", io.pid));
                    }
                }
            }
            // A signal on a session goes to that session's process only.
            Ok(Request::Signal {
                signal, all: false, ..
            }) => match slot.wait() {
                Some(io) => match io.signal(signal) {
                    Ok(()) => respond(sink, &Response::Ok),
                    Err(m) => error(sink, m),
                },
                None => error(sink, "the session's process did not start"),
            },
            Ok(other) => error(
                sink,
                format!(
                    "{} is not accepted on a session connection",
                    op_name(&other)
                ),
            ),
            Err(e) => error(sink, e.to_string()),
        },
        kind => error(sink, format!("unexpected {kind:?} frame from the host")),
    }
}

/// Serves one connection until the host closes it (see the module docs for
/// the sessions). Never panics on what the host sends.
pub fn handle_connection<C: Connection, P: Platform>(agent: &Agent<P>, mut conn: C) {
    let sink: Arc<dyn FrameSink> = match conn.try_clone() {
        Ok(w) => Arc::new(FrameWriter::new(w)),
        Err(e) => {
            agent.platform.log(&format!("agent connection: {e}"));
            return;
        }
    };
    let mut session: Option<Arc<IoSlot>> = None;
    loop {
        let frame = match Frame::read_from(&mut conn) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(FrameError::Io(_)) => break,
            Err(e) => {
                // The stream cannot be followed past a bad length or kind.
                error(&*sink, e.to_string());
                break;
            }
        };
        match &session {
            None => match idle_frame(agent, &sink, frame) {
                Ok(slot) => session = slot,
                Err(()) => break,
            },
            Some(slot) => session_frame(agent, &*sink, slot, frame),
        }
    }
    match session {
        // A checkpointed main session's connection went with the old VM's
        // host: the process's stdin is the next connection's.
        Some(slot) if agent.detached_main(&slot, &sink) => {}
        // No more input can come: the process's stdin ends.
        Some(slot) => {
            if let Some(io) = slot.wait() {
                io.close_stdin();
            }
        }
        None => sink.close(),
    }
}

/// Serves the agent protocol on vsock port [`AGENT_PORT`]; returns only if
/// it cannot start.
pub fn serve() -> Result<std::convert::Infallible, AgentError> {
    let reaper = Reaper::start().map_err(|source| AgentError::Reaper { source })?;
    let listener = vsock::VsockListener::bind(AGENT_PORT).map_err(|errno| AgentError::Listen {
        port: AGENT_PORT,
        errno,
    })?;
    let agent = Arc::new(Agent::new(GuestPlatform, reaper));
    agent
        .platform
        .log(&format!("agent listening on vsock port {AGENT_PORT}"));
    agent
        .platform
        .boot_mark(crate::proto::BootEvent::AgentListening);
    loop {
        match listener.accept() {
            Ok(conn) => {
                let agent = Arc::clone(&agent);
                let started = std::thread::Builder::new()
                    .name("agent-conn".into())
                    .spawn(move || handle_connection(&agent, conn));
                if let Err(e) = started {
                    eprintln!(
                        "{} agent: no thread for a connection: {e}",
                        crate::proto::LOG_PREFIX
                    );
                }
            }
            Err(Errno::EINTR | Errno::ECONNABORTED) => {}
            Err(e) => {
                agent
                    .platform
                    .log(&format!("agent: accept: {}", errno_text(e)));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// The fault [`crate::proto::FAULT_INIT_EXIT_AFTER_START`], when the kernel command
/// line asks for it: init (this process, PID 1) exits a moment after the
/// container started, and the guest kernel panics.
fn inject_start_fault() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if !crate::proto::fault_requested(&cmdline, crate::proto::FAULT_INIT_EXIT_AFTER_START) {
        return;
    }
    let _ = std::thread::Builder::new().name("fault".into()).spawn(|| {
        std::thread::sleep(std::time::Duration::from_millis(
            crate::proto::FAULT_DELAY_MS,
        ));
        eprintln!(
            "{}: {}={}: init exits now",
            crate::proto::LOG_PREFIX,
            crate::proto::PARAM_FAULT,
            crate::proto::FAULT_INIT_EXIT_AFTER_START
        );
        std::process::exit(1);
    });
}

#[cfg(test)]
mod tests;
