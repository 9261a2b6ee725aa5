//! The shim's task service: containerd's task API over
//! [`crate::runtime::container`].
//!
//! A task's init process is husk's VMM process (its pid is the task pid, its
//! exit status the container's); an exec is an agent session relayed on a
//! thread of the shim (its pid is the process's pid inside the VM). Each
//! process's end is recorded once in an [`ExitCell`] that `Wait` blocks on,
//! and published as `/tasks/exit`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{self, MessageDyn};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, ExitSignal, TtrpcContext, TtrpcResult};

use super::stdio::{self, ShimPty, StdinFeed, StdioPaths};
use crate::agent_proto::{ProcessSpec, Request};
use crate::runtime::container::{self, ContainerError, CreateRequest, VmmStdio};
use crate::runtime::state::{ExitStatus, Status};
use crate::runtime::vmm_process::{self, SessionIo, SessionWriter};

/// How long `Delete` waits for a killed VMM's exit to be recorded.
const DELETE_WAIT: Duration = Duration::from_secs(15);
/// How long the end of a terminal's output is waited for after its process.
const PTY_DRAIN: Duration = Duration::from_secs(2);
/// The status of a process whose end came without one.
const EXIT_UNKNOWN: u32 = 255;
/// The type URL containerd gives an exec's OCI process.
const PROCESS_TYPE_URL_SUFFIX: &str = "opencontainers/runtime-spec/1/Process";

/// Where the service's events go (containerd, or a test's list).
pub trait EventSink: Send + Sync {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>);
}

/// Publishes to containerd in the shim's namespace.
struct Remote {
    publisher: RemotePublisher,
    namespace: String,
}

impl EventSink for Remote {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let ctx = containerd_shim::Context::default();
        if let Err(e) = self.publisher.publish(ctx, topic, &self.namespace, event) {
            log::warn!("publishing {topic}: {e}");
        }
    }
}

/// A process's end, recorded once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

/// Where a process's [`Exit`] is recorded and waited for.
#[derive(Default)]
pub struct ExitCell {
    exit: Mutex<Option<Exit>>,
    changed: Condvar,
}

impl ExitCell {
    fn lock(&self) -> MutexGuard<'_, Option<Exit>> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the end; only the first record counts.
    pub fn set(&self, status: u32) -> Exit {
        let mut exit = self.lock();
        let e = *exit.get_or_insert(Exit {
            status,
            at: SystemTime::now(),
        });
        self.changed.notify_all();
        e
    }

    pub fn get(&self) -> Option<Exit> {
        *self.lock()
    }

    /// Waits for the end (at most `limit` when given).
    pub fn wait(&self, limit: Option<Duration>) -> Option<Exit> {
        let mut exit = self.lock();
        let start = std::time::Instant::now();
        while exit.is_none() {
            match limit {
                None => {
                    exit = self.changed.wait(exit).unwrap_or_else(|e| e.into_inner());
                }
                Some(l) => {
                    let left = l.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        return None;
                    }
                    exit = self
                        .changed
                        .wait_timeout(exit, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        *exit
    }
}

/// The exit status containerd expects: the code, or 128 + the signal.
pub fn exit_code(status: Option<ExitStatus>) -> u32 {
    status.map_or(EXIT_UNKNOWN, |s| {
        u32::try_from(s.as_wait_code()).unwrap_or(EXIT_UNKNOWN)
    })
}

/// A protobuf timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        ..Default::default()
    }
}

fn rpc_error(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn not_found(what: impl std::fmt::Display) -> ttrpc::Error {
    rpc_error(Code::NOT_FOUND, format!("{what}: not found"))
}

/// A runtime error for containerd: the message as `husk` prints it.
fn runtime_error(verb: &str, e: &ContainerError) -> ttrpc::Error {
    let code = match e {
        ContainerError::State(crate::runtime::state::StateError::NotFound { .. }) => {
            Code::NOT_FOUND
        }
        ContainerError::State(_) => Code::FAILED_PRECONDITION,
        _ => Code::UNKNOWN,
    };
    rpc_error(code, format!("husk {verb} failed: {e}"))
}

/// `stats` as an `Any` holding containerd's `io.containerd.cgroups.v2.Metrics`.
fn metrics_any(
    stats: &crate::runtime::cgroup::Stats,
) -> TtrpcResult<protobuf::well_known_types::any::Any> {
    use containerd_shim::protos::cgroups_v2::metrics::{
        CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
    };
    use protobuf::{Message as _, MessageFull as _};
    let cpu = |k: &str| stats.cpu.get(k).copied().unwrap_or(0);
    let mem = |k: &str| stats.memory.get(k).copied().unwrap_or(0);
    let event = |k: &str| stats.memory_events.get(k).copied().unwrap_or(0);
    let metrics = Metrics {
        pids: protobuf::MessageField::some(PidsStat {
            current: stats.pids_current,
            limit: stats.pids_limit,
            ..Default::default()
        }),
        cpu: protobuf::MessageField::some(CPUStat {
            usage_usec: cpu("usage_usec"),
            user_usec: cpu("user_usec"),
            system_usec: cpu("system_usec"),
            nr_periods: cpu("nr_periods"),
            nr_throttled: cpu("nr_throttled"),
            throttled_usec: cpu("throttled_usec"),
            ..Default::default()
        }),
        memory: protobuf::MessageField::some(MemoryStat {
            anon: mem("anon"),
            file: mem("file"),
            kernel_stack: mem("kernel_stack"),
            slab: mem("slab"),
            sock: mem("sock"),
            shmem: mem("shmem"),
            file_mapped: mem("file_mapped"),
            file_dirty: mem("file_dirty"),
            file_writeback: mem("file_writeback"),
            anon_thp: mem("anon_thp"),
            inactive_anon: mem("inactive_anon"),
            active_anon: mem("active_anon"),
            inactive_file: mem("inactive_file"),
            active_file: mem("active_file"),
            unevictable: mem("unevictable"),
            slab_reclaimable: mem("slab_reclaimable"),
            slab_unreclaimable: mem("slab_unreclaimable"),
            pgfault: mem("pgfault"),
            pgmajfault: mem("pgmajfault"),
            usage: stats.memory_usage,
            usage_limit: stats.memory_limit,
            max_usage: stats.memory_peak,
            ..Default::default()
        }),
        memory_events: protobuf::MessageField::some(MemoryEvents {
            low: event("low"),
            high: event("high"),
            max: event("max"),
            oom: event("oom"),
            oom_kill: event("oom_kill"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let value = metrics
        .write_to_bytes()
        .map_err(|e| rpc_error(Code::INTERNAL, format!("encoding metrics: {e}")))?;
    Ok(protobuf::well_known_types::any::Any {
        type_url: Metrics::descriptor().full_name().to_owned(),
        value,
        ..Default::default()
    })
}

/// An exec's OCI process from the `Any` containerd sends.
pub fn exec_process(
    spec: Option<&containerd_shim::protos::protobuf::well_known_types::any::Any>,
    terminal: bool,
) -> Result<ProcessSpec, String> {
    let any = spec.ok_or("the exec request has no process spec")?;
    if !any.type_url.ends_with(PROCESS_TYPE_URL_SUFFIX) {
        return Err(format!(
            "the exec request's spec is a {}, not an OCI process",
            any.type_url
        ));
    }
    let process: oci_spec::runtime::Process = serde_json::from_slice(&any.value)
        .map_err(|e| format!("the exec request's process spec: {e}"))?;
    let mut p = crate::runtime::guest_spec::process_spec(&process).map_err(|e| e.to_string())?;
    p.terminal = terminal;
    Ok(p)
}

/// The exit status of an exec that could not be started (the shell's and
/// docker's "could not run" status).
const EXEC_NOT_STARTED: u32 = 126;

/// What runs for a process's stdio in the shim.
enum Plumbing {
    /// The VMM's stdin pipe feed and/or terminal master.
    Init {
        feed: Option<Arc<StdinFeed>>,
        pty: Option<Arc<Mutex<ShimPty>>>,
    },
    /// An exec: its spec until started, then its session's writer.
    Exec {
        spec: Box<ProcessSpec>,
        writer: Option<SessionWriter>,
    },
    /// A pod's later container's process: its session (opened at create,
    /// relayed from then on) in the pod's VM.
    Member { writer: SessionWriter },
}

/// A task's process (init or exec) as the shim tracks it.
struct Proc {
    pid: u32,
    stdio: StdioPaths,
    started: bool,
    exit: Arc<ExitCell>,
    plumbing: Plumbing,
}

impl Proc {
    /// Its status; a running process of a paused VM is `PAUSED` (see
    /// [`Service::process_state`]).
    fn status(&self) -> api::Status {
        match (self.exit.get(), self.started) {
            (Some(_), _) => api::Status::STOPPED,
            (None, true) => api::Status::RUNNING,
            (None, false) => api::Status::CREATED,
        }
    }
}

/// What a task is in a pod ([`crate::runtime::pod`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum PodRole {
    /// A VM of its own (not a CRI pod's).
    Alone,
    /// A pod's sandbox: its VM serves the pod directory `dir`.
    Sandbox { dir: PathBuf },
    /// A container added to the VM of the pod's sandbox task `sandbox`.
    Member { sandbox: String },
}

/// Whose session a relay thread carries ([`Service::relay`]).
struct Relay {
    container_id: String,
    /// The exec's id, or the container's for its main process.
    id: String,
    pid: u32,
    stdin_path: String,
    /// The main session of a created container: stdin flows once it runs.
    wait_for_start: bool,
}

/// A task: its bundle, whether the shim mounted its rootfs, its processes.
struct Task {
    bundle: PathBuf,
    mounted_rootfs: bool,
    init: Proc,
    execs: HashMap<String, Proc>,
    pod: PodRole,
}

/// The task service.
pub struct Service {
    root: PathBuf,
    exit: Arc<ExitSignal>,
    events: Arc<dyn EventSink>,
    tasks: Arc<Mutex<HashMap<String, Task>>>,
}

impl Service {
    pub fn new(
        namespace: String,
        root: PathBuf,
        exit: Arc<ExitSignal>,
        publisher: RemotePublisher,
    ) -> Service {
        Service::with_events(
            root,
            exit,
            Arc::new(Remote {
                publisher,
                namespace,
            }),
        )
    }

    pub fn with_events(
        root: PathBuf,
        exit: Arc<ExitSignal>,
        events: Arc<dyn EventSink>,
    ) -> Service {
        Service {
            root,
            exit,
            events,
            tasks: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn tasks(&self) -> MutexGuard<'_, HashMap<String, Task>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the process `exec_id` (empty: init) of task `id`.
    fn with_proc<R>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Task, &str) -> TtrpcResult<R>,
    ) -> TtrpcResult<R> {
        let mut tasks = self.tasks();
        let task = tasks
            .get_mut(id)
            .ok_or_else(|| not_found(format!("task {id}")))?;
        if !exec_id.is_empty() && !task.execs.contains_key(exec_id) {
            return Err(not_found(format!("exec {exec_id} of task {id}")));
        }
        f(task, exec_id)
    }

    fn proc_of<'a>(task: &'a mut Task, exec_id: &str) -> &'a mut Proc {
        if exec_id.is_empty() {
            &mut task.init
        } else {
            // with_proc checked that it exists.
            task.execs.get_mut(exec_id).unwrap_or(&mut task.init)
        }
    }

    /// `Create`: mounts the rootfs, wires stdio, boots the VM (`husk create`).
    pub fn create_task(
        &self,
        req: &api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let id = req.id.clone();
        crate::runtime::bundle::validate_id(&id)
            .map_err(|e| rpc_error(Code::INVALID_ARGUMENT, e.to_string()))?;
        if self.tasks().contains_key(&id) {
            return Err(rpc_error(
                Code::ALREADY_EXISTS,
                format!("task {id} already exists"),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(rpc_error(
                Code::UNIMPLEMENTED,
                "husk cannot restore a container from a checkpoint",
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let role = crate::runtime::bundle::load(&bundle)
            .map(|b| crate::runtime::pod::role(&b.spec))
            .unwrap_or(crate::runtime::pod::Role::Alone);
        if let crate::runtime::pod::Role::Member { sandbox } = &role {
            let in_pod_vm = matches!(
                self.tasks().get(sandbox).map(|t| &t.pod),
                Some(PodRole::Sandbox { .. })
            );
            if !in_pod_vm {
                // A VM of its own would take the pod's network namespace
                // from the pod's VM: refused, not half-made.
                return Err(rpc_error(
                    Code::FAILED_PRECONDITION,
                    format!(
                        "husk create failed: container {id} belongs to pod sandbox {sandbox},                          whose VM this shim does not hold (a sandbox made by another runtime                          or an older husk): recreate the pod"
                    ),
                ));
            }
            return self.create_member(req, sandbox);
        }
        let mounted_rootfs = !req.rootfs.is_empty();
        if mounted_rootfs {
            mount_rootfs(&bundle, &req.rootfs)?;
        }
        let pod_dir = if role == crate::runtime::pod::Role::Sandbox {
            match crate::storage::pod::prepare(&self.root, &id) {
                Ok(dir) => Some(dir),
                Err(e) => {
                    if mounted_rootfs {
                        unmount_rootfs(&bundle);
                    }
                    return Err(rpc_error(
                        Code::INTERNAL,
                        format!("husk create failed: the pod directory: {e}"),
                    ));
                }
            }
        } else {
            None
        };
        let stdio_paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let undo = |plumbing: &Plumbing| {
            if let Plumbing::Init { feed, pty } = plumbing {
                if let Some(f) = feed {
                    f.release();
                }
                if let Some(p) = pty {
                    lock(p).finish(Duration::ZERO);
                }
            }
            if mounted_rootfs {
                unmount_rootfs(&bundle);
            }
            if let Some(dir) = &pod_dir {
                crate::storage::pod::release(dir);
            }
        };
        let (stdio, plumbing) = match wire_init_stdio(&stdio_paths) {
            Ok(w) => w,
            Err(e) => {
                undo(&Plumbing::Init {
                    feed: None,
                    pty: None,
                });
                return Err(rpc_error(
                    Code::INVALID_ARGUMENT,
                    format!("task stdio: {e}"),
                ));
            }
        };
        let request = CreateRequest {
            restore_from: None,
            pod_share: pod_dir.clone(),
            root: self.root.clone(),
            id: id.clone(),
            bundle: bundle.clone(),
            pid_file: None,
            console_socket: None,
            husk_exe: super::husk_exe(),
            vmm_args: vec![
                "--log".into(),
                crate::runtime::state::container_dir(&self.root, &id)
                    .join(crate::runtime::state::VMM_LOG_FILE)
                    .to_string_lossy()
                    .into_owned(),
            ],
            stdio,
            // containerd's SystemdCgroup paths are recognized by their form.
            systemd_cgroup: false,
        };
        let pid = match container::create(&request) {
            Ok(pid) => pid,
            Err(e) => {
                drop(request);
                undo(&plumbing);
                return Err(runtime_error("create", &e));
            }
        };
        drop(request);
        let exit = Arc::new(ExitCell::default());
        self.watch_init(&id, pid, &plumbing, Arc::clone(&exit));
        let pod = match pod_dir {
            Some(dir) => PodRole::Sandbox { dir },
            None => PodRole::Alone,
        };
        self.add_task(req, pid, stdio_paths, exit, plumbing, mounted_rootfs, pod);
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// `Create` of a pod's later container: mounts its rootfs, adds it to
    /// the VM of its sandbox ([`crate::runtime::pod::create`]) and relays
    /// its session to its stdio. Its pid is the pod VMM's.
    fn create_member(
        &self,
        req: &api::CreateTaskRequest,
        sandbox: &str,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let id = req.id.clone();
        let bundle = PathBuf::from(&req.bundle);
        let pid = self.with_proc(sandbox, "", |task, _| Ok(task.init.pid))?;
        let mounted_rootfs = !req.rootfs.is_empty();
        if mounted_rootfs {
            mount_rootfs(&bundle, &req.rootfs)?;
        }
        let stdio_paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let undo = || {
            if mounted_rootfs {
                unmount_rootfs(&bundle);
            }
        };
        let opened = (|| {
            let out = stdio::open_output(&stdio_paths.stdout)
                .map_err(|e| rpc_error(Code::INVALID_ARGUMENT, format!("task stdio: {e}")))?;
            let err = stdio::open_output(&stdio_paths.stderr)
                .map_err(|e| rpc_error(Code::INVALID_ARGUMENT, format!("task stdio: {e}")))?;
            let conn = crate::runtime::pod::create(&self.root, sandbox, &id, &bundle)
                .map_err(|e| runtime_error("create", &e))?;
            let writer = vmm_process::session_writer(&conn)
                .map_err(|e| rpc_error(Code::INTERNAL, format!("container session: {e}")))?;
            Ok((out, err, conn, writer))
        })();
        let (out, err, conn, writer) = match opened {
            Ok(o) => o,
            Err(e) => {
                undo();
                return Err(e);
            }
        };
        let exit = Arc::new(ExitCell::default());
        // containerd's CRI reports a container that exits after an OOM
        // event as `OOMKilled`, as under runc's shim.
        let oom_events = Arc::clone(&self.events);
        let oom_id = id.clone();
        let io = SessionIo {
            stdin: Box::new(stdio::LazyFifo::new(&stdio_paths.stdin)),
            stdout: Box::new(out),
            stderr: Box::new(err),
            follow_winsize: None,
            on_oom: Some(Box::new(move || {
                oom_events.publish(
                    topics::TASK_OOM_EVENT_TOPIC,
                    Box::new(TaskOOM {
                        container_id: oom_id.clone(),
                        ..Default::default()
                    }),
                );
            })),
        };
        let relayed = self.relay(
            Relay {
                container_id: id.clone(),
                id: id.clone(),
                pid,
                stdin_path: stdio_paths.stdin.clone(),
                wait_for_start: true,
            },
            conn,
            Arc::clone(&writer),
            io,
            Arc::clone(&exit),
        );
        if let Err(e) = relayed {
            let _ = crate::runtime::pod::remove(&self.root, sandbox, &id);
            undo();
            return Err(rpc_error(
                Code::INTERNAL,
                format!("container relay thread: {e}"),
            ));
        }
        let pod = PodRole::Member {
            sandbox: sandbox.to_owned(),
        };
        let plumbing = Plumbing::Member { writer };
        self.add_task(req, pid, stdio_paths, exit, plumbing, mounted_rootfs, pod);
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// Relays an agent session (an exec's, or a pod container's main one)
    /// on a thread of its own until its process ends, then records the end
    /// and publishes `/tasks/exit`.
    fn relay(
        &self,
        what: Relay,
        conn: crate::control::AgentConn,
        writer: SessionWriter,
        io: SessionIo,
        exit: Arc<ExitCell>,
    ) -> std::io::Result<()> {
        let events = Arc::clone(&self.events);
        std::thread::Builder::new()
            .name(format!("relay-{}", what.id))
            .spawn(move || {
                let status = vmm_process::relay_io(conn, &writer, what.wait_for_start, io);
                stdio::release_fifo(&what.stdin_path);
                let e = exit.set(exit_code(status));
                log::info!(
                    "container {}: process {} exited with {}",
                    what.container_id,
                    what.id,
                    e.status
                );
                events.publish(
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(TaskExit {
                        container_id: what.container_id,
                        id: what.id,
                        pid: what.pid,
                        exit_status: e.status,
                        exited_at: Some(timestamp(e.at)).into(),
                        ..Default::default()
                    }),
                );
            })
            .map(drop)
    }

    /// Publishes a created task and records it.
    #[allow(clippy::too_many_arguments)]
    fn add_task(
        &self,
        req: &api::CreateTaskRequest,
        pid: u32,
        stdio: StdioPaths,
        exit: Arc<ExitCell>,
        plumbing: Plumbing,
        mounted_rootfs: bool,
        pod: PodRole,
    ) {
        self.events.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                pid,
                ..Default::default()
            }),
        );
        self.tasks().insert(
            req.id.clone(),
            Task {
                bundle: PathBuf::from(&req.bundle),
                mounted_rootfs,
                init: Proc {
                    pid,
                    stdio,
                    started: false,
                    exit,
                    plumbing,
                },
                execs: HashMap::new(),
                pod,
            },
        );
    }

    /// The sandbox task of `id` when it is a pod's later container.
    fn sandbox_of(&self, id: &str) -> Option<String> {
        match self.tasks().get(id).map(|t| &t.pod) {
            Some(PodRole::Member { sandbox }) => Some(sandbox.clone()),
            _ => None,
        }
    }

    /// Waits for the VMM on a thread of its own; records and publishes its end.
    fn watch_init(&self, id: &str, pid: u32, plumbing: &Plumbing, exit: Arc<ExitCell>) {
        let (feed, pty) = match plumbing {
            Plumbing::Init { feed, pty } => (feed.clone(), pty.clone()),
            Plumbing::Exec { .. } | Plumbing::Member { .. } => (None, None),
        };
        let events = Arc::clone(&self.events);
        let cid = id.to_owned();
        let spawned = std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                let status = match container::wait_child(pid) {
                    nix::sys::wait::WaitStatus::Exited(_, c) => Some(ExitStatus::Code(c)),
                    nix::sys::wait::WaitStatus::Signaled(_, s, _) => {
                        Some(ExitStatus::Signal(s as i32))
                    }
                    _ => None,
                };
                if let Some(p) = &pty {
                    lock(p).finish(PTY_DRAIN);
                }
                if let Some(f) = &feed {
                    f.release();
                }
                let e = exit.set(exit_code(status));
                log::info!("container {cid}: VMM {pid} exited with {}", e.status);
                events.publish(
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(TaskExit {
                        container_id: cid.clone(),
                        id: cid,
                        pid,
                        exit_status: e.status,
                        exited_at: Some(timestamp(e.at)).into(),
                        ..Default::default()
                    }),
                );
            });
        if let Err(e) = spawned {
            log::error!("container {id}: no thread to wait for its VMM: {e}");
        }
    }

    /// `Start`: the container process (`husk start`) or an exec.
    pub fn start_process(&self, id: &str, exec_id: &str) -> TtrpcResult<api::StartResponse> {
        if exec_id.is_empty() {
            return self.start_init(id);
        }
        let (spec, stdio_paths, exit) = self.with_proc(id, exec_id, |task, exec_id| {
            let p = Self::proc_of(task, exec_id);
            match &p.plumbing {
                Plumbing::Exec { spec, writer: None } if !p.started => {
                    Ok((spec.clone(), p.stdio.clone(), Arc::clone(&p.exit)))
                }
                _ => Err(rpc_error(
                    Code::FAILED_PRECONDITION,
                    format!("exec {exec_id} has already been started"),
                )),
            }
        })?;
        let sandbox = self.sandbox_of(id);
        let opened = (|| {
            let st = match &sandbox {
                None => Some(
                    container::exec_target(&self.root, id)
                        .map_err(|e| runtime_error("exec", &e))?,
                ),
                Some(_) => None,
            };
            let out = stdio::open_output(&stdio_paths.stdout)
                .map_err(|e| rpc_error(Code::INVALID_ARGUMENT, format!("exec stdio: {e}")))?;
            let err = stdio::open_output(&stdio_paths.stderr)
                .map_err(|e| rpc_error(Code::INVALID_ARGUMENT, format!("exec stdio: {e}")))?;
            let (conn, guest_pid) = match (&st, &sandbox) {
                (_, Some(sb)) => crate::runtime::pod::exec(&self.root, sb, id, *spec),
                (Some(st), None) => container::exec_open(st, *spec),
                (None, None) => Err(ContainerError::Io(format!("task {id}: no VM to exec in"))),
            }
            .map_err(|e| runtime_error("exec", &e))?;
            let writer = vmm_process::session_writer(&conn)
                .map_err(|e| rpc_error(Code::INTERNAL, format!("exec session: {e}")))?;
            Ok((out, err, conn, guest_pid, writer))
        })();
        let (out, err, conn, guest_pid, writer) = match opened {
            Ok(o) => o,
            Err(e) => {
                // containerd waits on an exec before it starts it: an exec
                // that could not start has ended (else that `Wait` would
                // block its connection, and the shim's exit, for ever).
                exit.set(EXEC_NOT_STARTED);
                return Err(e);
            }
        };
        let pid = u32::try_from(guest_pid).unwrap_or(0);
        self.with_proc(id, exec_id, |task, exec_id| {
            let p = Self::proc_of(task, exec_id);
            p.pid = pid;
            p.started = true;
            if let Plumbing::Exec { writer: w, .. } = &mut p.plumbing {
                *w = Some(Arc::clone(&writer));
            }
            Ok(())
        })?;
        let io = SessionIo {
            stdin: Box::new(stdio::LazyFifo::new(&stdio_paths.stdin)),
            stdout: Box::new(out),
            stderr: Box::new(err),
            follow_winsize: None,
            on_oom: None,
        };
        self.relay(
            Relay {
                container_id: id.to_owned(),
                id: exec_id.to_owned(),
                pid,
                stdin_path: stdio_paths.stdin.clone(),
                wait_for_start: false,
            },
            conn,
            writer,
            io,
            exit,
        )
        .map_err(|e| rpc_error(Code::INTERNAL, format!("exec relay thread: {e}")))?;
        self.events.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn start_init(&self, id: &str) -> TtrpcResult<api::StartResponse> {
        let pid = self.with_proc(id, "", |task, _| {
            if task.init.started {
                return Err(rpc_error(
                    Code::FAILED_PRECONDITION,
                    format!("task {id} has already been started"),
                ));
            }
            Ok(task.init.pid)
        })?;
        match self.sandbox_of(id) {
            None => container::start(&self.root, id).map_err(|e| runtime_error("start", &e))?,
            Some(sandbox) => {
                crate::runtime::pod::start(&self.root, &sandbox, id)
                    .map_err(|e| runtime_error("start", &e))?;
            }
        }
        self.with_proc(id, "", |task, _| {
            task.init.started = true;
            Ok(())
        })?;
        self.events.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: id.to_owned(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// `Pause` (`paused`) or `Resume`: freezes or thaws the task's VM and
    /// says so on the event stream.
    pub fn set_paused(&self, id: &str, paused: bool) -> TtrpcResult<()> {
        // The task lock is not held while the kernel freezes the VM.
        self.with_proc(id, "", |_, _| Ok(()))?;
        if self.sandbox_of(id).is_some() {
            return Err(rpc_error(
                Code::UNIMPLEMENTED,
                format!(
                    "task {id} is a container of a pod's VM: pausing one container of a pod is                      not supported yet (pause the pod's sandbox to freeze the whole pod)"
                ),
            ));
        }
        let result = if paused {
            container::pause(&self.root, id)
        } else {
            container::resume(&self.root, id)
        };
        result.map_err(|e| runtime_error(if paused { "pause" } else { "resume" }, &e))?;
        let container_id = id.to_owned();
        if paused {
            self.events.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id,
                    ..Default::default()
                }),
            );
        } else {
            self.events.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id,
                    ..Default::default()
                }),
            );
        }
        Ok(())
    }

    /// `State`.
    pub fn process_state(&self, id: &str, exec_id: &str) -> TtrpcResult<api::StateResponse> {
        let mut state = self.with_proc(id, exec_id, |task, exec_id| {
            let bundle = task.bundle.to_string_lossy().into_owned();
            let p = Self::proc_of(task, exec_id);
            let exit = p.exit.get();
            Ok(api::StateResponse {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
                bundle,
                pid: p.pid,
                status: p.status().into(),
                stdin: p.stdio.stdin.clone(),
                stdout: p.stdio.stdout.clone(),
                stderr: p.stdio.stderr.clone(),
                terminal: p.stdio.terminal,
                exit_status: exit.map_or(0, |e| e.status),
                exited_at: exit.map(|e| timestamp(e.at)).into(),
                ..Default::default()
            })
        })?;
        // Whether the VM is frozen is the container record's (`Pause`,
        // `Resume`, and a SIGKILL that thaws it all go through it).
        if state.status == api::Status::RUNNING.into()
            && container::status(&self.root, id).is_ok_and(|s| s == Status::Paused)
        {
            state.status = api::Status::PAUSED.into();
        }
        Ok(state)
    }

    /// `Kill`.
    pub fn kill_process(&self, req: &api::KillRequest) -> TtrpcResult<()> {
        let signal = i32::try_from(req.signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| {
                rpc_error(
                    Code::INVALID_ARGUMENT,
                    format!("invalid signal {}", req.signal),
                )
            })?;
        let writer = self.with_proc(&req.id, &req.exec_id, |task, exec_id| {
            let p = Self::proc_of(task, exec_id);
            if p.exit.get().is_some() {
                return Err(not_found("process already finished"));
            }
            Ok(match &p.plumbing {
                Plumbing::Exec { writer, .. } => Some(writer.clone()),
                Plumbing::Init { .. } | Plumbing::Member { .. } => None,
            })
        })?;
        if req.exec_id.is_empty() {
            if let Some(sandbox) = self.sandbox_of(&req.id) {
                return self.kill_member(&req.id, &sandbox, signal, req.all);
            }
        }
        match writer {
            None => container::kill(&self.root, &req.id, signal, req.all)
                .map_err(|e| runtime_error("kill", &e)),
            Some(None) => Err(rpc_error(
                Code::FAILED_PRECONDITION,
                format!("exec {} has not been started", req.exec_id),
            )),
            Some(Some(w)) => vmm_process::send_session_request(
                &w,
                &Request::Signal {
                    signal,
                    all: false,
                    container: None,
                },
            )
            .map_err(|e| {
                rpc_error(
                    Code::UNKNOWN,
                    format!("signalling exec {}: {e}", req.exec_id),
                )
            }),
        }
    }

    /// `Kill` of a pod's later container: its process (`all`: every process
    /// of it) in the pod's VM. One that never started ends at once, as a
    /// runc container's waiting init would.
    fn kill_member(&self, id: &str, sandbox: &str, signal: i32, all: bool) -> TtrpcResult<()> {
        let (started, writer, exit) = self.with_proc(id, "", |task, _| {
            let writer = match &task.init.plumbing {
                Plumbing::Member { writer } => Some(Arc::clone(writer)),
                _ => None,
            };
            Ok((task.init.started, writer, Arc::clone(&task.init.exit)))
        })?;
        if !started {
            // The relay ends with its connection; the guest frees the rest
            // at delete.
            if let Some(w) = writer {
                let _ = crate::vmm::bus::lock(&w).shutdown(std::net::Shutdown::Both);
            }
            exit.set(128 + u32::try_from(signal).unwrap_or(0));
            return Ok(());
        }
        crate::runtime::pod::signal(&self.root, sandbox, id, signal, all)
            .map_err(|e| runtime_error("kill", &e))
    }

    /// `Exec`: registers the process; `Start` runs it.
    pub fn add_exec(&self, req: &api::ExecProcessRequest) -> TtrpcResult<()> {
        let spec = exec_process(req.spec.as_ref(), req.terminal)
            .map_err(|m| rpc_error(Code::INVALID_ARGUMENT, m))?;
        self.with_proc(&req.id, "", |task, _| {
            if task.init.exit.get().is_some() {
                return Err(rpc_error(
                    Code::FAILED_PRECONDITION,
                    format!("cannot exec in stopped task {}", req.id),
                ));
            }
            if task.execs.contains_key(&req.exec_id) {
                return Err(rpc_error(
                    Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            task.execs.insert(
                req.exec_id.clone(),
                Proc {
                    pid: 0,
                    stdio: StdioPaths {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                    },
                    started: false,
                    exit: Arc::new(ExitCell::default()),
                    plumbing: Plumbing::Exec {
                        spec: Box::new(spec),
                        writer: None,
                    },
                },
            );
            Ok(())
        })?;
        self.events.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(())
    }

    /// `Wait`: blocks until the process ended.
    pub fn wait_process(&self, id: &str, exec_id: &str) -> TtrpcResult<api::WaitResponse> {
        let exit = self.with_proc(id, exec_id, |task, exec_id| {
            Ok(Arc::clone(&Self::proc_of(task, exec_id).exit))
        })?;
        let e = exit.wait(None).unwrap_or(Exit {
            status: EXIT_UNKNOWN,
            at: SystemTime::now(),
        });
        Ok(api::WaitResponse {
            exit_status: e.status,
            exited_at: Some(timestamp(e.at)).into(),
            ..Default::default()
        })
    }

    /// `Delete`: an ended exec, or the task (its VMM is killed if it never
    /// started; a running task must be killed first).
    pub fn delete_process(&self, id: &str, exec_id: &str) -> TtrpcResult<api::DeleteResponse> {
        if !exec_id.is_empty() {
            return self.with_proc(id, exec_id, |task, exec_id| {
                let p = Self::proc_of(task, exec_id);
                if p.started && p.exit.get().is_none() {
                    return Err(rpc_error(
                        Code::FAILED_PRECONDITION,
                        format!("exec {exec_id} is running"),
                    ));
                }
                let (pid, exit) = (p.pid, p.exit.get());
                task.execs.remove(exec_id);
                Ok(delete_response(pid, exit))
            });
        }
        let (pid, exit, running) = self.with_proc(id, "", |task, _| {
            let running = task.init.started && task.init.exit.get().is_none();
            Ok((task.init.pid, Arc::clone(&task.init.exit), running))
        })?;
        if running {
            return Err(rpc_error(
                Code::FAILED_PRECONDITION,
                format!("task {id} is running: kill it first"),
            ));
        }
        if let Some(sandbox) = self.sandbox_of(id) {
            return self.delete_member(id, &sandbox);
        }
        if let Err(e) = container::delete(&self.root, id, true) {
            return Err(runtime_error("delete", &e));
        }
        let ended = exit.wait(Some(DELETE_WAIT));
        if ended.is_none() {
            log::warn!("container {id}: VMM {pid} did not report its end");
        }
        let task = self.tasks().remove(id);
        if let Some(task) = task {
            if task.mounted_rootfs {
                unmount_rootfs(&task.bundle);
            }
            if let PodRole::Sandbox { dir } = &task.pod {
                crate::storage::pod::release(dir);
            }
        }
        let exit = ended.or_else(|| exit.get());
        self.events.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.to_owned(),
                id: id.to_owned(),
                pid,
                exit_status: exit.map_or(EXIT_UNKNOWN, |e| e.status),
                exited_at: exit.map(|e| timestamp(e.at)).into(),
                ..Default::default()
            }),
        );
        Ok(delete_response(pid, exit))
    }

    /// `Delete` of a pod's later container that ended (or never started).
    fn delete_member(&self, id: &str, sandbox: &str) -> TtrpcResult<api::DeleteResponse> {
        crate::runtime::pod::remove(&self.root, sandbox, id)
            .map_err(|e| runtime_error("delete", &e))?;
        let task = self.tasks().remove(id);
        let (pid, exit) = match &task {
            Some(t) => (t.init.pid, t.init.exit.get()),
            None => (0, None),
        };
        if let Some(task) = &task {
            if let Plumbing::Member { writer } = &task.init.plumbing {
                let _ = crate::vmm::bus::lock(writer).shutdown(std::net::Shutdown::Both);
            }
            if task.mounted_rootfs {
                unmount_rootfs(&task.bundle);
            }
        }
        self.events.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.to_owned(),
                id: id.to_owned(),
                pid,
                exit_status: exit.map_or(EXIT_UNKNOWN, |e| e.status),
                exited_at: exit.map(|e| timestamp(e.at)).into(),
                ..Default::default()
            }),
        );
        Ok(delete_response(pid, exit))
    }

    /// `Pids`: the processes inside the VM.
    pub fn pids(&self, id: &str) -> TtrpcResult<api::PidsResponse> {
        self.with_proc(id, "", |_, _| Ok(()))?;
        let pod = match self.tasks().get(id).map(|t| &t.pod) {
            Some(PodRole::Member { sandbox }) => Some(sandbox.clone()),
            Some(PodRole::Sandbox { .. }) => Some(id.to_owned()),
            _ => None,
        };
        let procs = match pod {
            // A pod's container: its own processes in the pod's VM.
            Some(vm) => crate::runtime::pod::ps(&self.root, &vm, id),
            None => container::ps(&self.root, id),
        }
        .map_err(|e| runtime_error("ps", &e))?;
        Ok(api::PidsResponse {
            processes: procs
                .into_iter()
                .map(|p| containerd_shim::protos::api::ProcessInfo {
                    pid: u32::try_from(p.pid).unwrap_or(0),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    /// `Stats`: the container's host cgroup (the whole VM) as containerd's
    /// cgroup v2 metrics, as the runc shim answers.
    pub fn stats(&self, id: &str) -> TtrpcResult<api::StatsResponse> {
        self.with_proc(id, "", |_, _| Ok(()))?;
        // A pod's later container: its own cgroup in the pod's VM.
        let stats = match self.sandbox_of(id) {
            Some(sandbox) => crate::runtime::pod::stats(&self.root, &sandbox, id),
            None => container::stats(&self.root, id),
        }
        .map_err(|e| runtime_error("stats", &e))?;
        Ok(api::StatsResponse {
            stats: protobuf::MessageField::some(metrics_any(&stats)?),
            ..Default::default()
        })
    }

    /// `ResizePty`.
    pub fn resize(&self, req: &api::ResizePtyRequest) -> TtrpcResult<()> {
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        let (cols, rows) = (clamp(req.width), clamp(req.height));
        self.with_proc(&req.id, &req.exec_id, |task, exec_id| {
            let p = Self::proc_of(task, exec_id);
            if !p.stdio.terminal {
                return Err(rpc_error(
                    Code::FAILED_PRECONDITION,
                    "the process has no terminal",
                ));
            }
            let result = match &p.plumbing {
                Plumbing::Init { pty: Some(pty), .. } => lock(pty).resize(cols, rows),
                Plumbing::Exec {
                    writer: Some(w), ..
                }
                | Plumbing::Member { writer: w } => {
                    vmm_process::send_session_request(w, &Request::Resize { rows, cols })
                }
                _ => Ok(()),
            };
            result.map_err(|e| rpc_error(Code::UNKNOWN, format!("resizing the terminal: {e}")))
        })
    }

    /// `CloseIO`: closes the process's stdin.
    pub fn close_io(&self, req: &api::CloseIORequest) -> TtrpcResult<()> {
        if !req.stdin {
            return Ok(());
        }
        self.with_proc(&req.id, &req.exec_id, |task, exec_id| {
            match &Self::proc_of(task, exec_id).plumbing {
                Plumbing::Init {
                    feed: Some(feed), ..
                } => feed.close(),
                Plumbing::Exec {
                    writer: Some(w), ..
                }
                | Plumbing::Member { writer: w } => vmm_process::send_stdin_eof(w),
                _ => {}
            }
            Ok(())
        })
    }

    /// `Shutdown`: the shim ends once it serves no task.
    pub fn shutdown(&self) {
        if self.tasks().is_empty() {
            self.exit.signal();
        }
    }

    /// `Connect`.
    pub fn connect(&self, id: &str) -> api::ConnectResponse {
        api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.tasks().get(id).map_or(0, |t| t.init.pid),
            version: format!("husk {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        }
    }
}

fn delete_response(pid: u32, exit: Option<Exit>) -> api::DeleteResponse {
    api::DeleteResponse {
        pid,
        exit_status: exit.map_or(EXIT_UNKNOWN, |e| e.status),
        exited_at: exit.map(|e| timestamp(e.at)).into(),
        ..Default::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The VMM's stdio for a task: a pty (terminal) or FIFOs and a stdin feed.
fn wire_init_stdio(paths: &StdioPaths) -> std::io::Result<(VmmStdio, Plumbing)> {
    if paths.terminal {
        let (pty, slave) = ShimPty::start(paths)?;
        return Ok((
            VmmStdio::Terminal(slave),
            Plumbing::Init {
                feed: None,
                pty: Some(Arc::new(Mutex::new(pty))),
            },
        ));
    }
    let stdout = stdio::open_output(&paths.stdout)?;
    let stderr = stdio::open_output(&paths.stderr)?;
    let (feed, stdin) = StdinFeed::start(&paths.stdin)?;
    Ok((
        VmmStdio::Fds {
            stdin,
            stdout: stdout.into(),
            stderr: stderr.into(),
        },
        Plumbing::Init {
            feed: feed.map(Arc::new),
            pty: None,
        },
    ))
}

/// Mounts the snapshot containerd hands over at `BUNDLE/rootfs`.
fn mount_rootfs(bundle: &Path, mounts: &[containerd_shim::protos::api::Mount]) -> TtrpcResult<()> {
    let target = bundle.join("rootfs");
    if let Err(e) = std::fs::create_dir_all(&target) {
        return Err(rpc_error(
            Code::INTERNAL,
            format!("creating {}: {e}", target.display()),
        ));
    }
    for m in mounts {
        let spec = super::mount::MountSpec {
            fs_type: &m.type_,
            source: &m.source,
            options: &m.options,
        };
        if let Err(e) = super::mount::mount(&spec, &target) {
            unmount_rootfs(bundle);
            return Err(rpc_error(
                Code::INTERNAL,
                format!(
                    "mounting the rootfs ({} {}) at {}: {e}",
                    m.type_,
                    m.source,
                    target.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Unmounts whatever is mounted at or below `BUNDLE/rootfs`.
pub fn unmount_rootfs(bundle: &Path) {
    let target = bundle.join("rootfs");
    if let Err(e) = containerd_shim::mount::umount_recursive(target.to_str(), libc::MNT_DETACH) {
        log::warn!("unmounting {}: {e}", target.display());
    }
}

impl containerd_shim::Task for Service {
    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        self.process_state(&req.id, &req.exec_id)
    }

    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        self.create_task(&req)
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        self.start_process(&req.id, &req.exec_id)
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        self.delete_process(&req.id, &req.exec_id)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        self.pids(&req.id)
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        self.stats(&req.id)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        self.kill_process(&req).map(|()| api::Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        self.add_exec(&req).map(|()| api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        self.resize(&req).map(|()| api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        self.close_io(&req).map(|()| api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        self.wait_process(&req.id, &req.exec_id)
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(self.connect(&req.id))
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        self.shutdown();
        Ok(api::Empty::new())
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, true).map(|()| api::Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, false).map(|()| api::Empty::new())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(rpc_error(
            Code::UNIMPLEMENTED,
            "husk cannot checkpoint a container",
        ))
    }

    fn update(&self, _ctx: &TtrpcContext, _req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        Err(rpc_error(
            Code::UNIMPLEMENTED,
            "husk cannot change a running container's resources",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::well_known_types::any::Any;

    /// Collects the topics published.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<String>>);

    impl EventSink for Recorded {
        fn publish(&self, topic: &str, _event: Box<dyn MessageDyn>) {
            lock(&self.0).push(topic.to_owned());
        }
    }

    fn service(root: &Path) -> (Service, Arc<Recorded>, Arc<ExitSignal>) {
        let events = Arc::new(Recorded::default());
        let exit = Arc::new(ExitSignal::default());
        let s = Service::with_events(root.to_path_buf(), Arc::clone(&exit), events.clone());
        (s, events, exit)
    }

    fn code_of(e: &ttrpc::Error) -> Code {
        match e {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    fn message_of(e: &ttrpc::Error) -> String {
        match e {
            ttrpc::Error::RpcStatus(s) => s.message.clone(),
            other => panic!("not a status: {other:?}"),
        }
    }

    fn process_any(json: &str) -> Any {
        Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: json.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn an_exec_process_comes_from_the_oci_process_in_the_any() {
        let any = process_any(
            r#"{"args":["sh","-c","exit 3"],"cwd":"/work","env":["A=1"],"user":{"uid":1000,"gid":100}}"#,
        );
        let p = exec_process(Some(&any), true).unwrap();
        assert_eq!(p.args, ["sh", "-c", "exit 3"]);
        assert_eq!(p.cwd, "/work");
        assert_eq!((p.uid, p.gid), (1000, 100));
        assert!(p.env.contains(&"A=1".to_owned()));
        assert!(p.terminal);

        let err = exec_process(None, false).unwrap_err();
        assert!(err.contains("no process spec"), "{err}");
        let mut wrong = process_any("{}");
        wrong.type_url = "types.containerd.io/something/Else".into();
        let err = exec_process(Some(&wrong), false).unwrap_err();
        assert!(err.contains("something/Else"), "{err}");
        let err = exec_process(Some(&process_any("{not json")), false).unwrap_err();
        assert!(err.contains("process spec"), "{err}");
        let err = exec_process(Some(&process_any(r#"{"args":[],"cwd":"/"}"#)), false).unwrap_err();
        assert!(!err.is_empty());
    }

    #[test]
    fn exit_statuses_are_codes_or_128_plus_the_signal() {
        assert_eq!(exit_code(Some(ExitStatus::Code(7))), 7);
        assert_eq!(exit_code(Some(ExitStatus::Signal(9))), 137);
        assert_eq!(exit_code(None), EXIT_UNKNOWN);
    }

    #[test]
    fn an_exit_is_recorded_once_and_waiters_wake() {
        let cell = Arc::new(ExitCell::default());
        assert_eq!(cell.wait(Some(Duration::from_millis(20))), None);
        let waiter = {
            let cell = Arc::clone(&cell);
            std::thread::spawn(move || cell.wait(None))
        };
        let first = cell.set(3);
        let second = cell.set(9);
        assert_eq!(first, second);
        assert_eq!(waiter.join().unwrap().unwrap().status, 3);
        assert_eq!(cell.get().unwrap().status, 3);
    }

    #[test]
    fn unknown_tasks_and_execs_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let (s, events, _) = service(dir.path());
        for e in [
            s.process_state("nope", "").unwrap_err(),
            s.start_process("nope", "").unwrap_err(),
            s.delete_process("nope", "").unwrap_err(),
            s.wait_process("nope", "e1").unwrap_err(),
            s.kill_process(&api::KillRequest {
                id: "nope".into(),
                signal: 9,
                ..Default::default()
            })
            .unwrap_err(),
        ] {
            assert_eq!(code_of(&e), Code::NOT_FOUND, "{e:?}");
            assert!(message_of(&e).contains("nope"), "{e:?}");
        }
        let e = s
            .kill_process(&api::KillRequest {
                id: "nope".into(),
                signal: 0,
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(code_of(&e), Code::INVALID_ARGUMENT);
        assert!(lock(&events.0).is_empty());
    }

    #[test]
    fn an_exec_that_cannot_start_ends_so_its_waiters_and_the_shim_can_go() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _, _) = service(dir.path());
        let proc = |exec: bool| Proc {
            pid: 0,
            stdio: StdioPaths::default(),
            started: !exec,
            exit: Arc::new(ExitCell::default()),
            plumbing: if exec {
                Plumbing::Exec {
                    spec: Box::new(
                        exec_process(
                            Some(&process_any(
                                r#"{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}"#,
                            )),
                            false,
                        )
                        .unwrap(),
                    ),
                    writer: None,
                }
            } else {
                Plumbing::Init {
                    feed: None,
                    pty: None,
                }
            },
        };
        // A task whose container is gone (or paused): its exec cannot start.
        s.tasks().insert(
            "t".into(),
            Task {
                bundle: dir.path().to_path_buf(),
                mounted_rootfs: false,
                pod: PodRole::Alone,
                init: proc(false),
                execs: HashMap::from([("e".to_owned(), proc(true))]),
            },
        );
        let waiter = {
            let exit = s.with_proc("t", "e", |task, _| Ok(Arc::clone(&task.execs["e"].exit)));
            let exit = exit.unwrap();
            std::thread::spawn(move || exit.wait(Some(Duration::from_secs(30))))
        };
        let err = s.start_process("t", "e").unwrap_err();
        assert!(message_of(&err).contains("husk exec failed"), "{err:?}");
        let ended = waiter.join().unwrap().expect("the waiter woke");
        assert_eq!(ended.status, EXEC_NOT_STARTED);
        assert_eq!(
            s.wait_process("t", "e").unwrap().exit_status,
            EXEC_NOT_STARTED
        );
        // It can be deleted like any ended exec.
        s.delete_process("t", "e").unwrap();
    }

    #[test]
    fn a_failed_create_names_the_problem_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let (s, events, _) = service(&root);
        let bad_id = s
            .create_task(&api::CreateTaskRequest {
                id: "../escape".into(),
                bundle: dir.path().to_string_lossy().into_owned(),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(code_of(&bad_id), Code::INVALID_ARGUMENT, "{bad_id:?}");

        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        let stdin = dir.path().join("stdin");
        stdio::mkfifo(&stdin).unwrap();
        let e = s
            .create_task(&api::CreateTaskRequest {
                id: "c1".into(),
                bundle: bundle.to_string_lossy().into_owned(),
                stdin: stdin.to_string_lossy().into_owned(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(message_of(&e).contains("config.json"), "{e:?}");
        assert!(message_of(&e).starts_with("husk create failed"), "{e:?}");
        assert!(!root.join("c1").exists());
        assert!(s.tasks().is_empty());
        assert!(lock(&events.0).is_empty());

        let e = s
            .create_task(&api::CreateTaskRequest {
                id: "c2".into(),
                bundle: bundle.to_string_lossy().into_owned(),
                stdout: "/nonexistent/dir/stdout".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(code_of(&e), Code::INVALID_ARGUMENT);
        assert!(message_of(&e).contains("/nonexistent/dir/stdout"), "{e:?}");
    }

    #[test]
    fn a_pod_container_without_its_pods_vm_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let (s, events, _) = service(&root);
        let bundle = dir.path().join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::write(
            bundle.join("config.json"),
            serde_json::json!({
                "ociVersion": "1.0.2",
                "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
                "root": {"path": "rootfs"},
                "annotations": {
                    crate::runtime::pod::CONTAINER_TYPE_ANNOTATION: "container",
                    crate::runtime::pod::SANDBOX_ID_ANNOTATION: "sb1"
                }
            })
            .to_string(),
        )
        .unwrap();
        let e = s
            .create_task(&api::CreateTaskRequest {
                id: "c1".into(),
                bundle: bundle.to_string_lossy().into_owned(),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(code_of(&e), Code::FAILED_PRECONDITION, "{e:?}");
        assert!(message_of(&e).contains("pod sandbox sb1"), "{e:?}");
        assert!(s.tasks().is_empty());
        assert!(lock(&events.0).is_empty());
        assert!(!root.join("c1").exists());
    }

    #[test]
    fn shutdown_ends_the_shim_once_no_task_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _, exit) = service(dir.path());
        s.shutdown();
        let done = std::thread::spawn(move || exit.wait());
        let start = std::time::Instant::now();
        while !done.is_finished() {
            assert!(start.elapsed() < Duration::from_secs(5), "shim did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
        let c = s.connect("c1");
        assert_eq!(c.shim_pid, std::process::id());
        assert_eq!(c.task_pid, 0);
    }

    #[test]
    fn stats_go_out_as_containerds_cgroup_v2_metrics() {
        use containerd_shim::protos::cgroups_v2::metrics::Metrics;
        use protobuf::Message as _;
        let mut stats = crate::runtime::cgroup::Stats {
            pids_current: 4,
            memory_usage: 1 << 20,
            memory_limit: u64::MAX,
            ..Default::default()
        };
        stats.cpu.insert("usage_usec".into(), 77);
        stats.memory.insert("anon".into(), 4096);
        stats.memory_events.insert("oom_kill".into(), 1);
        let any = metrics_any(&stats).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.pids.current, 4);
        assert_eq!(m.cpu.usage_usec, 77);
        assert_eq!(
            (m.memory.usage, m.memory.usage_limit, m.memory.anon),
            (1 << 20, u64::MAX, 4096)
        );
        assert_eq!(m.memory_events.oom_kill, 1);
    }

    #[test]
    fn timestamps_carry_seconds_and_nanos() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(12, 345);
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (12, 345));
    }
}
