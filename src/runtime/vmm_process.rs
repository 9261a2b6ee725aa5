//! `husk vmm ID`: the process that *is* a husk container for its engine.
//!
//! Spawned by `create` with the engine's stdio (or the host end of the
//! console pty), it boots the VM from the container's plan, has husk-init
//! set the container up ([`Request::Create`]), tells `create` it is ready,
//! then relays the container process's stdio over the main agent session and
//! ends as the process ends: exit code for exit code, and death by the same
//! signal for a signal. Signals sent to it (SIGTERM from an engine, say) are
//! forwarded to the container process.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd as _, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::agent_proto::{Event, Frame, FrameKind, Request, Response, MAX_DATA};
use crate::control::AgentConn;
use crate::jail::ns::{Kind, Ns, OpenedNs, UserNs};
use crate::jail::root::StagingRoot;
use crate::jail::seccomp::{Filters, Mode, Thread};
use crate::runtime::container::{answer_ready, take_go_fd, take_ready_fd, wait_for_go};
use crate::runtime::fs_server::FsServerProcess;
use crate::runtime::state::{self, ExitStatus, State};
use crate::runtime::vm_plan::VmPlan;
use crate::vmm::{
    self,
    builder::{JailEntry, RunControls},
    VmExit,
};

/// How long the VMM waits for husk-init's agent after starting the VM.
const AGENT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Exit status when the container ended without a status (VM crash).
const EXIT_NO_STATUS: i32 = 255;
/// Signals forwarded to the container process.
const FORWARDED: [nix::sys::signal::Signal; 6] = [
    nix::sys::signal::Signal::SIGTERM,
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGHUP,
    nix::sys::signal::Signal::SIGQUIT,
    nix::sys::signal::Signal::SIGUSR1,
    nix::sys::signal::Signal::SIGUSR2,
];

/// Runs the container's VMM; returns how the container ended. The
/// container's network plumbing is removed when the VM has ended.
///
/// Threads: the main thread stages the shared directories (a mount
/// namespace of the process's own, before any other thread exists), starts
/// a worker thread that does everything else, then moves into the
/// container's view of its files ([`crate::storage::view`]), the mount
/// namespace engines join through the container's pid; once the worker
/// heard `create`'s go (the process is in its cgroup by then), it enters
/// the spec's cgroup namespace and its filter, and waits for the worker.
/// The worker starts only once the view is made, and fails the create when
/// it could not be; it builds no VM before the main thread is done.
pub fn run(root: &Path, id: &str) -> Option<ExitStatus> {
    one_heap_arena();
    let mut ready = take_ready_fd();
    let go = take_go_fd();
    let dir = state::container_dir(root, id);
    // Our pid on the host, read while /proc is there (the jail hides it).
    crate::runtime::process::own_pid();
    crate::timeline::mark(&dir, "vmm.main");
    let staged = match stage(root, id).and_then(|s| {
        let filters = confine(&s)?;
        // Opened now: the main thread enters it from the container's view.
        let cgroup_ns =
            OpenedNs::open(Kind::Cgroup, &s.plan.vmm_ns.cgroup).map_err(|e| e.to_string())?;
        Ok((s, filters, cgroup_ns))
    }) {
        Ok(s) => s,
        Err(msg) => {
            fail(id, &mut ready, msg);
            finish(root, id, false);
            return None;
        }
    };
    let (staged, filters, cgroup_ns) = staged;
    // Forwarded signals are blocked in every thread and read from a
    // signalfd by one.
    let mut mask = nix::sys::signal::SigSet::empty();
    for s in FORWARDED {
        mask.add(s);
    }
    let _ = mask.thread_block();
    if staged.plan.vmm_ns.user != Ns::Host {
        return run_in_user_ns(
            root,
            id,
            InUserNs {
                ready,
                go,
                staged,
                filters,
                cgroup_ns,
                mask,
            },
        );
    }
    let view = View::of(&staged);
    let (view_tx, view_rx) = mpsc::channel::<Result<(), String>>();
    let (went_tx, went_rx) = mpsc::channel::<()>();
    let (main_done_tx, main_done_rx) = mpsc::channel::<Result<(), String>>();
    let worker = {
        let filters = filters.clone();
        spawn_worker(root, id, move |root, id, filtered| {
            let ending = match view_rx.recv() {
                Ok(Ok(())) => run_vm(
                    root,
                    id,
                    Start {
                        ready,
                        go,
                        staged,
                        mask,
                        filters,
                        filtered,
                        went: went_tx,
                        main_done: main_done_rx,
                    },
                ),
                Ok(Err(msg)) => fail(id, &mut ready, msg),
                Err(_) => fail(id, &mut ready, "the main thread went away".into()),
            };
            finish(root, id, filtered.load(Ordering::SeqCst));
            ending
        })
    };
    let Some(worker) = worker else {
        finish(root, id, false);
        return None;
    };
    let view = view.enter(&dir);
    let viewed = view.is_ok();
    let _ = view_tx.send(view);
    // Once `create` has put the process in its cgroup and said go: the
    // cgroup namespace the spec gives the container's pid (this thread's
    // namespaces are the ones /proc/PID/ns shows), then the filter. From
    // there on the main thread only waits for the worker. (A worker that
    // failed before go hangs up: the filter comes all the same.)
    let entered = (viewed && went_rx.recv().is_ok())
        .then(|| cgroup_ns.enter(Kind::Cgroup).map_err(|e| e.to_string()));
    let filtered = filters
        .as_ref()
        .map_or(Ok(()), |f| f.apply(Thread::Supervisor))
        .map_err(|e| e.to_string());
    if let Some(entered) = entered {
        let _ = main_done_tx.send(entered.and(filtered));
    }
    join_worker(id, worker)
}

/// Starts the VMM's worker thread, which runs `body` (with the container's
/// root, its id, and the flag of its filter); `None` (logged) when it could
/// not start.
fn spawn_worker(
    root: &Path,
    id: &str,
    body: impl FnOnce(&Path, &str, &AtomicBool) -> Option<ExitStatus> + Send + 'static,
) -> Option<std::thread::JoinHandle<Option<ExitStatus>>> {
    let (root_buf, id_buf) = (root.to_path_buf(), id.to_owned());
    std::thread::Builder::new()
        .name("vmm-main".into())
        .spawn(move || body(&root_buf, &id_buf, &AtomicBool::new(false)))
        .map_err(|e| log::error!("container {id}: starting the VMM's worker thread: {e}"))
        .ok()
}

/// How the worker ended the container.
fn join_worker(
    id: &str,
    worker: std::thread::JoinHandle<Option<ExitStatus>>,
) -> Option<ExitStatus> {
    worker.join().unwrap_or_else(|_| {
        log::error!("container {id}: the VMM's worker thread panicked");
        None
    })
}

/// The container's view of its files ([`crate::storage::view`]), as the
/// main thread makes it.
struct View {
    mounts: Vec<crate::storage::view::ViewMount>,
    rootfs: PathBuf,
    create_points: bool,
    read_only: bool,
}

impl View {
    fn of(staged: &Staged) -> View {
        let plan = &staged.plan;
        View {
            mounts: staged
                .share_root
                .as_deref()
                .map_or_else(Vec::new, |share_root| {
                    crate::storage::view::mounts(&plan.container, &plan.shares, share_root)
                }),
            rootfs: staged.state.rootfs.clone(),
            // A block rootfs's image is keyed by its tree: nothing is made in it.
            create_points: plan.rootfs_image.is_none(),
            read_only: plan.container.readonly_root,
        }
    }

    /// Moves the calling thread into it.
    fn enter(&self, dir: &Path) -> Result<(), String> {
        crate::storage::view::enter(
            dir,
            &self.rootfs,
            &self.mounts,
            self.create_points,
            self.read_only,
        )
        .map_err(|e| e.to_string())
    }
}

/// What the main thread prepared for the worker.
struct Staged {
    state: State,
    plan: VmPlan,
    /// Where the shared directories are staged, when there are any.
    share_root: Option<PathBuf>,
    /// The fs server of each virtio-fs device, by tag.
    fs_servers: Vec<(String, FsServerProcess)>,
    /// The cgroup the VMM started in (`/proc/self/cgroup`), where the fs
    /// servers were born.
    start_cgroup: String,
}

/// Loads the container's record and plan and stages its shares.
fn stage(root: &Path, id: &str) -> Result<Staged, String> {
    let state = State::load(root, id).map_err(|e| e.to_string())?;
    let dir = state::container_dir(root, id);
    let plan = VmPlan::load(&dir).map_err(|e| e.to_string())?;
    let start_cgroup = crate::runtime::cgroup::own_cgroup();
    // Still with every capability: the uts and ipc namespaces the spec
    // gives the container's pid.
    crate::jail::ns::enter(&plan.vmm_ns).map_err(|e| e.to_string())?;
    let share_root = if plan.shares.is_empty() {
        // The jail is pivoted in a mount namespace of the VMM's own, which
        // staging shares would have made.
        if plan.vmm_jail {
            crate::jail::root::private_namespace().map_err(|e| e.to_string())?;
        }
        None
    } else {
        Some(crate::storage::share::stage(&dir, &plan.shares).map_err(|e| e.to_string())?)
    };
    // On the main thread (the servers' parent-death signal is tied to it),
    // with every capability: the fs servers start now.
    let mut fs_servers = Vec::new();
    if let Some(share_root) = &share_root {
        let jail_state_dir = plan
            .vmm_jail
            .then(|| std::path::absolute(&dir).unwrap_or_else(|_| dir.clone()));
        for fs in plan.vm_config(None, &[], Some(share_root)).fs {
            let spec = crate::runtime::fs_server::Spec {
                tag: fs.tag.clone(),
                root: fs.root,
                read_only: fs.read_only,
                ids: fs.ids,
                jail_state_dir: jail_state_dir.clone(),
                seccomp: plan.vmm_seccomp,
                log: state.vmm_log.clone(),
                vmm_pid: std::process::id(),
            };
            let server = crate::runtime::fs_server::spawn(&spec, id).map_err(|e| e.to_string())?;
            fs_servers.push((fs.tag, server));
        }
    }
    Ok(Staged {
        state,
        plan,
        share_root,
        fs_servers,
        start_cgroup,
    })
}

/// What every container VMM sets up before its guest exists: the process
/// is hardened ([`crate::jail::harden_process`]), the seccomp filters of
/// its threads are compiled, and violations are reported into its log
/// ([`crate::jail::seccomp`]).
fn confine(staged: &Staged) -> Result<Option<Arc<Filters>>, String> {
    crate::jail::harden_process().map_err(|e| e.to_string())?;
    let mode = staged.plan.vmm_seccomp;
    let filters = Filters::compile(mode)
        .map_err(|e| e.to_string())?
        .for_user(staged.plan.vmm_user);
    if mode == Mode::Enforce {
        crate::jail::seccomp::install_report_handler(&staged.state.vmm_log)
            .map_err(|e| e.to_string())?;
    } else {
        log::warn!(
            "seccomp filters in log mode ({}=log): calls outside them go through and \
             the kernel logs them",
            crate::jail::seccomp::ANNOTATION
        );
    }
    Ok(Some(Arc::new(filters)))
}

/// Logs `msg` and answers it to `create`; the container has no status.
fn fail(id: &str, ready: &mut Option<std::fs::File>, msg: String) -> Option<ExitStatus> {
    log::error!("container {id}: {msg}");
    answer_ready(ready, &format!("error {msg}"));
    None
}

/// What the worker thread starts with.
struct Start<'a> {
    ready: Option<std::fs::File>,
    go: Option<std::fs::File>,
    staged: Staged,
    mask: nix::sys::signal::SigSet,
    filters: Option<Arc<Filters>>,
    /// Set once the worker runs under its seccomp filter.
    filtered: &'a AtomicBool,
    /// Told once `create` said go (the VMM is in its cgroup) ...
    went: mpsc::Sender<()>,
    /// ... and answered once the main thread entered its cgroup namespace
    /// and its filter.
    main_done: mpsc::Receiver<Result<(), String>>,
}

/// After the VM: the network plumbing goes. Under its seccomp filter
/// (`filtered`) the VMM runs no `ip`/`tc` and joins no namespace: its taps
/// went with it, and what is left in the engine's namespace is removed by
/// `delete` (or by a failed `create`), as runc leaves a container's
/// resources to `delete`. The cgroup is `delete`'s too, or, when the record
/// is gone, the container's keeper's ([`crate::runtime::keeper`]).
fn finish(root: &Path, id: &str, filtered: bool) {
    if filtered {
        log::debug!("container {id}: the network plumbing is left to delete");
    } else if let Err(e) = crate::net::cleanup(&state::container_dir(root, id)) {
        log::warn!("container {id}: {e}");
    }
}

/// The worker's part of [`run`]: boot or restore the VM, create the
/// container in it, relay until it ends.
fn run_vm(root: &Path, id: &str, start: Start) -> Option<ExitStatus> {
    let Start {
        mut ready,
        go,
        staged,
        mask,
        filters,
        filtered,
        went,
        main_done,
    } = start;
    let fail = |ready: &mut Option<std::fs::File>, msg: String| fail(id, ready, msg);
    let dir = state::container_dir(root, id);

    let stop = match after_go(&dir, go) {
        Ok(stop) => stop,
        Err(msg) => return fail(&mut ready, msg),
    };
    // From here on a `create` that dies stops whatever VM is being made.
    let creator = match watch_creator(&ready, &stop, &filters) {
        Ok(w) => w,
        Err(msg) => return fail(&mut ready, msg),
    };
    let creator_gone = || creator.as_ref().is_some_and(CreatorWatch::gone);
    // The main thread roots its cgroup namespace in the cgroup `create`
    // has put this process in, and takes its filter, before the VM exists.
    let _ = went.send(());
    match main_done.recv() {
        Ok(Ok(())) => {}
        Ok(Err(msg)) => return fail(&mut ready, msg),
        Err(_) => return fail(&mut ready, "the main thread went away".into()),
    }
    // Read where this thread (not the main one) is: outside the cgroup
    // namespace, so /proc names the cgroup as the host does.
    let cgroup = crate::runtime::cgroup::own_cgroup();
    let prepared = match prepare_vm(&dir, id, &staged, &cgroup, &stop, &creator_gone) {
        Ok(p) => p,
        Err(msg) => return fail(&mut ready, msg),
    };
    let jail = (filters.is_some() && staged.plan.vmm_jail)
        .then(|| JailEntry::Pivot(vmm_jail(&dir, &staged.plan)));
    drive_vm(
        root,
        id,
        Drive {
            ready,
            stop,
            creator,
            filters,
            filtered,
            mask,
            staged,
            prepared,
            jail,
            vsock_listener: None,
        },
    )
}

/// The VMM of a container with a `user` namespace ([`crate::jail::ns::UserNs`]):
/// the same steps as [`run`] and [`run_vm`], in the order a process that
/// gives up the host's privileges for good needs. Everything privileged is
/// done by the main thread while it is the only one: wait for go, the cgroup
/// namespace, the network, the template, the files given to the VMM's
/// user, the vsock socket (bound now, given to that user), the jail (built
/// now, in the staging mount namespace, for a later `chroot`); then the main
/// thread moves into the container's view and the process into the user
/// namespace; only then does the worker start, which takes the staging
/// namespace's root back ([`StagingRoot`]) and builds the VM there.
fn run_in_user_ns(root: &Path, id: &str, start: InUserNs) -> Option<ExitStatus> {
    let InUserNs {
        mut ready,
        go,
        staged,
        filters,
        cgroup_ns,
        mask,
    } = start;
    let dir = state::container_dir(root, id);
    let privileged = (|| -> Result<_, String> {
        let stop = after_go(&dir, go)?;
        // As the host names it: read before the cgroup namespace is entered.
        let cgroup = crate::runtime::cgroup::own_cgroup();
        cgroup_ns.enter(Kind::Cgroup).map_err(|e| e.to_string())?;
        let prepared = prepare_vm(&dir, id, &staged, &cgroup, &stop, &|| false)?;
        let plan = &staged.plan;
        let listener =
            crate::vmm::devices::virtio::vsock::Vsock::bind_listener(&plan.control_socket)
                .map_err(|e| e.to_string())?;
        if let Some(user) = &plan.vmm_user {
            give(&plan.control_socket, user)?;
        }
        let jail = (filters.is_some() && plan.vmm_jail)
            .then(|| vmm_jail(&dir, plan).prepare())
            .transpose()
            .map_err(|e| e.to_string())?;
        let staging = StagingRoot::open().map_err(|e| e.to_string())?;
        let userns = UserNs::prepare(
            &plan.vmm_ns.user,
            crate::runtime::process::own_pid(),
            &plan.vmm_ns.uid_map,
            &plan.vmm_ns.gid_map,
        )
        .map_err(|e| e.to_string())?;
        Ok((stop, prepared, listener, jail, staging, userns))
    })();
    let (stop, prepared, listener, jail, staging, userns) = match privileged {
        Ok(p) => p,
        Err(msg) => {
            fail(id, &mut ready, msg);
            finish(root, id, false);
            return None;
        }
    };
    let entered = View::of(&staged)
        .enter(&dir)
        .and_then(|()| userns.enter().map_err(|e| e.to_string()));
    if let Err(msg) = entered {
        fail(id, &mut ready, msg);
        // Out of the host's namespaces by now: the plumbing is delete's.
        finish(root, id, true);
        return None;
    }
    let worker = {
        let filters = filters.clone();
        spawn_worker(root, id, move |root, id, filtered| {
            // The host's paths are back from here (the main thread is in
            // the view): the user namespace's mark goes in now.
            let staged_root = staging.enter().map(|()| {
                crate::timeline::mark(&state::container_dir(root, id), "vmm.userns");
            });
            let ending = match staged_root {
                Err(e) => fail(id, &mut ready, e.to_string()),
                Ok(()) => match watch_creator(&ready, &stop, &filters) {
                    Err(msg) => fail(id, &mut ready, msg),
                    Ok(creator) => drive_vm(
                        root,
                        id,
                        Drive {
                            ready,
                            stop,
                            creator,
                            filters,
                            filtered,
                            mask,
                            staged,
                            prepared,
                            jail: jail.map(JailEntry::Chroot),
                            vsock_listener: Some(listener),
                        },
                    ),
                },
            };
            finish(root, id, true);
            ending
        })
    };
    let Some(worker) = worker else {
        finish(root, id, true);
        return None;
    };
    if let Some(f) = &filters {
        if let Err(e) = f.apply(Thread::Supervisor) {
            // The worker fails too: its own filter is the same.
            log::error!("container {id}: {e}");
        }
    }
    join_worker(id, worker)
}

/// What [`run_in_user_ns`] starts with.
struct InUserNs {
    ready: Option<std::fs::File>,
    go: Option<std::fs::File>,
    staged: Staged,
    filters: Option<Arc<Filters>>,
    cgroup_ns: OpenedNs,
    mask: nix::sys::signal::SigSet,
}

/// The event that stops the VM, once `create` said go: its host hooks
/// have run by then (they may have set up the network namespace) and the
/// process is in its cgroup.
fn after_go(dir: &Path, go: Option<std::fs::File>) -> Result<Arc<EventFd>, String> {
    let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?);
    if !wait_for_go(go) {
        return Err("create gave up before the VM started".into());
    }
    crate::timeline::mark(dir, "vmm.go");
    Ok(stop)
}

/// Starts watching `create` (when the VMM has one) until the container is
/// created.
fn watch_creator(
    ready: &Option<std::fs::File>,
    stop: &Arc<EventFd>,
    filters: &Option<Arc<Filters>>,
) -> Result<Option<CreatorWatch>, String> {
    ready
        .as_ref()
        .map(|r| CreatorWatch::start(r, stop.clone(), filters.clone()))
        .transpose()
        .map_err(|e| format!("watching create: {e}"))
}

/// The VMM's jail ([`crate::jail::root`]): its state directory and socket
/// directory.
fn vmm_jail(dir: &Path, plan: &VmPlan) -> crate::jail::root::Jail {
    let state_dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let socket_dir = plan
        .control_socket
        .parent()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
        .filter(|p| *p != state_dir);
    crate::jail::root::Jail {
        state_dir,
        // The shares are the fs server's, not the VMM's.
        share: None,
        socket_dir,
    }
}

/// Every thread allocates from glibc's main heap (`M_ARENA_MAX` 1), before
/// any thread but this one exists. glibc gives threads arenas of their own
/// otherwise, and the first time it shrinks one it reads
/// `/proc/sys/vm/overcommit_memory`: an `openat` that no thread's filter
/// allows (the VMM died of SIGSYS when its device thread freed enough
/// memory). The main heap shrinks with `brk`, which every filter allows.
/// Fewer arenas are also less memory per VMM; its threads allocate little
/// and seldom at once.
fn one_heap_arena() {
    // SAFETY: mallopt only sets a parameter of the allocator; called while
    // the process has one thread, before any arena but the main one.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } != 1 {
        log::warn!("mallopt(M_ARENA_MAX, 1) failed: threads may get heaps of their own");
    }
}

/// What the VM is built from once the host's side is ready.
struct Prepared {
    config: crate::vmm::config::VmConfig,
    taps: Vec<crate::vmm::devices::virtio::net::tap::Tap>,
    network: crate::agent_proto::NetSetup,
}

/// The host's side of the VM, once `create` said go and the main thread
/// entered its cgroup namespace: the fs servers follow the VMM into its
/// cgroup (`cgroup`, as the host names it), the network is attached, the
/// VM's config chosen (a template, or a boot), and what the VMM's user
/// writes later is given to it.
fn prepare_vm(
    dir: &Path,
    id: &str,
    staged: &Staged,
    cgroup: &str,
    stop: &Arc<EventFd>,
    creator_gone: &dyn Fn() -> bool,
) -> Result<Prepared, String> {
    let Staged {
        state: st,
        plan,
        share_root,
        fs_servers,
        start_cgroup,
    } = staged;
    // The fs servers were born where the VMM started: they follow it into
    // its cgroup (their file I/O is the container's).
    if cgroup != start_cgroup {
        let cgroup_dir =
            Path::new(crate::runtime::cgroup::CGROUP_ROOT).join(cgroup.trim_start_matches('/'));
        for (_, server) in fs_servers {
            if let Err(e) = server.join_cgroup(&cgroup_dir) {
                if nix::unistd::geteuid().is_root() && !crate::paths::in_user_namespace() {
                    return Err(e.to_string());
                }
                log::warn!("container {id}: {e}");
            }
        }
    }
    let mut network = crate::agent_proto::NetSetup::default();
    let mut nics = Vec::new();
    let mut taps = Vec::new();
    if let Some(n) = &plan.network {
        let netns = if n.own {
            crate::net::own_netns_path()
        } else {
            n.netns.clone()
        };
        let a = crate::net::attach(&netns, dir, n.own).map_err(|e| e.to_string())?;
        for w in &a.warnings {
            log::warn!("container {id}: {w}");
        }
        log::info!(
            "container {id}: {} NIC(s) from {}",
            a.nics.len(),
            netns.display()
        );
        network = a.setup;
        nics = a.nics;
        taps = a.taps;
    }
    let mut config = plan.vm_config(None, &nics, share_root.as_deref());
    config.timeline = Some(dir.to_path_buf());
    // A checkpoint goes to the state directory (the VMM's jail holds it),
    // from where `husk checkpoint` moves it to its image path.
    let checkpoint_dir = std::path::absolute(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .join(crate::runtime::checkpoint::WORK_DIR);
    config.checkpoint = Some(checkpoint_dir);
    if let Some(image) = &plan.restore_from {
        config.snapshot = Some(crate::vmm::config::Snapshot::Resume(image.clone()));
        return built(dir, plan, st, config, taps, network);
    }
    let use_template = plan.snapshot;
    let cache = crate::paths::cache_dir();
    let mut template = use_template
        .then(|| crate::runtime::template::find(&config, &plan.init, &cache))
        .flatten();
    if template.is_none() {
        // The initramfs is built only for a VM that boots: this one, or
        // the template it will be restored from.
        let bytes = crate::boot::initramfs_bytes(&plan.init).map_err(|e| e.to_string())?;
        config.initramfs = Some(crate::vmm::config::Initramfs::Bytes(Arc::new(bytes)));
        if use_template {
            match crate::runtime::template::ensure(&config, &plan.init, &cache, Some(stop.clone()))
            {
                Ok(t) => template = Some(t),
                Err(_) if creator_gone() => return Err(CREATOR_GONE.into()),
                Err(e) => log::warn!("container {id}: booting without a template: {e}"),
            }
        }
    }
    if let Some(t) = template {
        config.snapshot = Some(crate::vmm::config::Snapshot::Restore(t));
        // The guest probed its NICs with the template's MACs.
        crate::runtime::template::mark_probed_macs(&config, &mut network);
        crate::timeline::mark(dir, "vmm.template");
    }
    built(dir, plan, st, config, taps, network)
}

/// The VM's config is chosen: what the VMM still writes once its threads
/// are its own user's is given to that user.
fn built(
    dir: &Path,
    plan: &VmPlan,
    st: &State,
    config: crate::vmm::config::VmConfig,
    taps: Vec<crate::vmm::devices::virtio::net::tap::Tap>,
    network: crate::agent_proto::NetSetup,
) -> Result<Prepared, String> {
    crate::timeline::mark(dir, "vmm.build");
    if let Some(user) = &plan.vmm_user {
        give_to_user(dir, plan, &st.vmm_log, user)?;
        // A user of a user namespace's map may be shared (one map for
        // every container is common): no per-user thread limit there.
        if user.in_ns.is_none() {
            crate::jail::user::limit_threads(plan.vcpus)
                .map_err(|e| format!("limiting the VMM's threads: {e}"))?;
        }
    }
    Ok(Prepared {
        config,
        taps,
        network,
    })
}

/// What [`drive_vm`] runs with.
struct Drive<'a> {
    ready: Option<std::fs::File>,
    stop: Arc<EventFd>,
    creator: Option<CreatorWatch>,
    filters: Option<Arc<Filters>>,
    /// Set once the worker runs under its seccomp filter.
    filtered: &'a AtomicBool,
    mask: nix::sys::signal::SigSet,
    staged: Staged,
    prepared: Prepared,
    jail: Option<JailEntry>,
    vsock_listener: Option<std::os::unix::net::UnixListener>,
}

/// Builds and runs the VM on a thread of its own, creates the container in
/// it, answers `create`, and relays until the container ends.
fn drive_vm(root: &Path, id: &str, drive: Drive) -> Option<ExitStatus> {
    let Drive {
        mut ready,
        stop,
        creator,
        filters,
        filtered,
        mask,
        staged,
        prepared,
        jail,
        vsock_listener,
    } = drive;
    let Staged {
        state: st,
        plan,
        mut fs_servers,
        ..
    } = staged;
    let Prepared {
        config,
        taps,
        network,
    } = prepared;
    let fail = |ready: &mut Option<std::fs::File>, msg: String| fail(id, ready, msg);
    let dir = state::container_dir(root, id);
    let creator_gone = || creator.as_ref().is_some_and(CreatorWatch::gone);
    let controls = RunControls {
        stop: Some(stop.clone()),
        taps,
        seccomp: filters.clone(),
        // Every thread but the main one (in the container's view) gets the
        // jail as its root once the VM is built.
        jail,
        vsock_listener,
        socket_owner: plan.vmm_user.map(|u| (u.uid, u.gid)),
        fs_servers: fs_servers
            .iter_mut()
            .filter_map(|(tag, server)| server.take_client().map(|c| (tag.clone(), c)))
            .collect(),
    };
    let vm = std::thread::Builder::new()
        .name("vmm".into())
        .spawn(move || vmm::builder::run_with(config, controls));
    let vm = match vm {
        Ok(t) => t,
        Err(e) => return fail(&mut ready, format!("starting the VM thread: {e}")),
    };
    let stop_vm = |vm: std::thread::JoinHandle<Result<VmExit, vmm::builder::BuildError>>| {
        let _ = stop.write(1);
        match vm.join() {
            Ok(Ok(exit)) => log::info!("container {id}: VM ended: {exit:?}"),
            Ok(Err(e)) => log::error!("container {id}: VM failed: {e}"),
            Err(_) => log::error!("container {id}: VM thread panicked"),
        }
    };
    // Everything privileged is done: from here on this thread (and every
    // thread it starts) talks to the guest's agent under its filter.
    if let Some(f) = &filters {
        if let Err(e) = f.apply(Thread::Supervisor) {
            stop_vm(vm);
            return fail(&mut ready, e.to_string());
        }
        filtered.store(true, Ordering::SeqCst);
        crate::jail::seccomp::fault_point("supervisor");
        // The VMM runs no command from here on (the network plumbing is
        // delete's): children, and orphans of the VMMs that joined this
        // one's pid namespace, are reaped as they end, not left zombies.
        if let Err(e) = crate::runtime::process::reap_children_automatically() {
            log::warn!("container {id}: reaping children: {e}");
        }
    }

    let alive = || !vm.is_finished();
    let mut conn = match AgentConn::connect(&plan.control_socket, AGENT_BOOT_TIMEOUT, &alive) {
        Ok(c) => {
            crate::timeline::mark(&dir, "vmm.agent");
            c
        }
        Err(e) => {
            if creator_gone() {
                stop_vm(vm);
                return fail(&mut ready, CREATOR_GONE.to_owned());
            }
            if !vm.is_finished() {
                stop_vm(vm);
                return fail(&mut ready, e.to_string());
            }
            // Why it ended: a VM that could not be built (a checkpoint of
            // another VM, say) says so; one that ran, its console.
            let msg = match vm.join() {
                Ok(Err(build)) => format!("the VM could not be built: {build}"),
                _ => {
                    let console = std::fs::read_to_string(&plan.console_log).unwrap_or_default();
                    format!(
                        "the VM stopped before its agent answered: {}",
                        console_tail(&console)
                    )
                }
            };
            return fail(&mut ready, msg);
        }
    };
    let restored = plan.restore_from.is_some();
    let set_up = if restored {
        // The container process runs already: it takes this connection as
        // its main session.
        match conn.request(&Request::Reattach {
            host_sync: host_sync(),
        }) {
            Ok(Response::Reattached { pid }) => {
                log::info!("container {id}: restored from a checkpoint (guest pid {pid})");
                Ok(())
            }
            Ok(other) => Err(format!("unexpected answer to reattach: {other:?}")),
            Err(e) => {
                let console = std::fs::read_to_string(&plan.console_log).unwrap_or_default();
                Err(format!(
                    "reattaching to the restored guest: {e}; its console: {}",
                    console_tail(&console)
                ))
            }
        }
    } else {
        // Hooks in the guest get the state as it is now: creating, this pid.
        let mut spec = plan.container.clone();
        spec.network = network;
        spec.host_sync = host_sync();
        let mut hook_view = st.clone();
        hook_view.pid = i32::try_from(crate::runtime::process::own_pid()).ok();
        spec.hook_state = crate::runtime::output::render_state(&hook_view);
        match conn.request(&Request::Create {
            spec: Box::new(spec),
        }) {
            Ok(Response::Created) => Ok(()),
            Ok(other) => Err(format!("unexpected answer to create: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    };
    if let Err(msg) = set_up {
        stop_vm(vm);
        return fail(&mut ready, msg);
    }
    crate::timeline::mark(&dir, "vmm.created");
    if let Some(w) = &creator {
        w.finish();
    }
    if creator_gone() || !answer_ready(&mut ready, "ready") {
        stop_vm(vm);
        return fail(&mut ready, CREATOR_GONE.into());
    }
    log::info!("container {id}: created");
    watch_record(root, id, stop.clone());

    spawn_signal_forwarder(mask, plan.control_socket.clone());
    // A restored process runs already: its stdin flows at once.
    let ending = relay(conn, !restored);
    // None: the session ended without a status (a checkpoint took the VM).
    log::info!("container {id}: process ended: {ending:?}");
    // Into the exit file, not the record: this thread may run as the
    // VMM's own user, which cannot write the record.
    if let Some(ending) = ending {
        if let Err(e) = state::write_exit(&dir, ending) {
            log::warn!("container {id}: recording how it ended: {e}");
        }
    }
    stop_vm(vm);
    ending
}

/// Makes what the VMM writes after its threads drop to `user` theirs: its
/// timeline, its exit file and its console log (made now when missing),
/// its log, and its short socket directory. The state directory and the
/// record stay root's.
fn give_to_user(
    dir: &Path,
    plan: &VmPlan,
    vmm_log: &Path,
    user: &crate::jail::user::VmmUser,
) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let own = |path: &Path| give(path, user);
    let files = [
        dir.join(crate::timeline::TIMELINE_FILE),
        dir.join(state::EXIT_FILE),
        plan.console_log.clone(),
        vmm_log.to_path_buf(),
    ];
    for path in &files {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        own(path)?;
    }
    if let Some(sockets) = plan.control_socket.parent() {
        if sockets != dir {
            own(sockets)?;
        }
    }
    Ok(())
}

/// Makes `path` the VMM's user's (its host ids).
fn give(path: &Path, user: &crate::jail::user::VmmUser) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(|e| {
        format!(
            "giving {} to the VMM's user {}: {e}",
            path.display(),
            user.uid
        )
    })
}

/// Why a VMM gives up when its `create` went away.
const CREATOR_GONE: &str = "create went away before the container was created; giving up";

/// Watches `create`'s end of the readiness pipe until the VMM answers: when
/// `create` dies first (killed, crashed), its end closes, our end polls
/// POLLERR, and the VM being made (the template VM or the container's) is
/// stopped, so that no VM outlives a create that never reported it.
struct CreatorWatch {
    gone: Arc<std::sync::atomic::AtomicBool>,
    done: Arc<EventFd>,
}

impl CreatorWatch {
    fn start(
        ready: &std::fs::File,
        stop: Arc<EventFd>,
        filters: Option<Arc<Filters>>,
    ) -> std::io::Result<CreatorWatch> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd as _;
        let pipe = ready.try_clone()?;
        let done = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (done2, gone2) = (done.clone(), gone.clone());
        std::thread::Builder::new()
            .name("creator".into())
            .spawn(move || {
                // It outlives the privileged setup: it polls under the
                // supervisor's filter.
                if let Some(Err(e)) = filters.map(|f| f.apply(Thread::Supervisor)) {
                    log::error!("watching create: {e}; stopping the VM");
                    gone2.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = stop.write(1);
                    return;
                }
                loop {
                    // SAFETY: the eventfd lives in `done2`, held by this thread
                    // for the whole poll.
                    let done_fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(done2.as_raw_fd()) };
                    let mut fds = [
                        PollFd::new(pipe.as_fd(), PollFlags::empty()),
                        PollFd::new(done_fd, PollFlags::POLLIN),
                    ];
                    match poll(&mut fds, PollTimeout::NONE) {
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(_) => return,
                        Ok(_) => {}
                    }
                    let hit = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                    if hit(&fds[1]) {
                        return;
                    }
                    if hit(&fds[0]) {
                        gone2.store(true, std::sync::atomic::Ordering::SeqCst);
                        log::error!("create went away: stopping the VM");
                        let _ = stop.write(1);
                        return;
                    }
                }
            })?;
        Ok(CreatorWatch { gone, done })
    }

    fn gone(&self) -> bool {
        self.gone.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Ends the watch (the answer is about to go out).
    fn finish(&self) {
        let _ = self.done.write(1);
    }
}

/// How often a running VMM checks that its container's record exists.
const RECORD_CHECK: Duration = Duration::from_secs(2);

/// Stops the VM if the container's record (`state.json`) disappears: a
/// state root wiped while its VMs ran (a tmpfs `/run` remounted, an
/// operator's `rm -rf`) must not leave VMs no `husk list` or `delete` can
/// reach.
fn watch_record(root: &Path, id: &str, stop: Arc<EventFd>) {
    let record = state::state_path(root, id);
    let _ = std::thread::Builder::new()
        .name("record".into())
        .spawn(move || loop {
            std::thread::sleep(RECORD_CHECK);
            if !record.exists() {
                log::error!(
                    "{} is gone: the container no longer exists for husk; stopping its VM",
                    record.display()
                );
                let _ = stop.write(1);
                return;
            }
        });
}

/// Console lines quoted when a VM ends before its agent answers.
const CONSOLE_TAIL_LINES: usize = 5;

/// The last lines of a VM's console, oldest first, on one line.
pub(crate) fn console_tail(console: &str) -> String {
    let mut tail: Vec<&str> = console.lines().rev().take(CONSOLE_TAIL_LINES).collect();
    tail.reverse();
    tail.join(" | ")
}

/// Bytes of host entropy the guest mixes into its pool at create.
const HOST_ENTROPY_BYTES: usize = 64;

/// Fills `buf` from the kernel's random pool (`getrandom(2)`, which
/// blocks only until the pool is first initialised).
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`,
        // which this function borrows mutably for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += usize::try_from(n).unwrap_or(0);
    }
    Ok(())
}

/// The host's wall clock and fresh entropy for the guest
/// ([`crate::agent_proto::HostSync`]).
fn host_sync() -> crate::agent_proto::HostSync {
    let mut entropy = vec![0u8; HOST_ENTROPY_BYTES];
    // getrandom(2), not /dev/urandom: the jailed VMM has no /dev.
    if let Err(e) = fill_random(&mut entropy) {
        log::warn!("reading host entropy for the guest: {e}");
        entropy.clear();
    }
    let realtime_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
    crate::agent_proto::HostSync {
        realtime_ns,
        entropy,
    }
}

/// Forwards signals the VMM receives to the container process.
fn spawn_signal_forwarder(mask: nix::sys::signal::SigSet, socket: std::path::PathBuf) {
    let Ok(sfd) = nix::sys::signalfd::SignalFd::new(&mask) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match sfd.read_signal() {
                Ok(Some(info)) => {
                    let signal = i32::try_from(info.ssi_signo).unwrap_or(0);
                    log::info!("forwarding signal {signal} to the container");
                    match AgentConn::connect_once(&socket) {
                        Ok(mut c) => {
                            if let Err(e) = c.request(&Request::Signal {
                                signal,
                                all: false,
                                container: None,
                            }) {
                                log::warn!("forwarding signal {signal}: {e}");
                            }
                        }
                        Err(e) => log::warn!("forwarding signal {signal}: {e}"),
                    }
                }
                Ok(None) => {}
                Err(_) => return,
            }
        });
}

/// A session's host-side stdio.
pub struct SessionIo {
    /// Read until EOF into the process's stdin (then its stdin is closed).
    pub stdin: Box<dyn Read + Send>,
    pub stdout: Box<dyn Write + Send>,
    pub stderr: Box<dyn Write + Send>,
    /// A terminal whose size changes are forwarded to the process's.
    pub follow_winsize: Option<RawFd>,
    /// Called when the guest says the container's cgroup killed a process
    /// for want of memory (a pod's container, before its end).
    pub on_oom: Option<Box<dyn FnMut() + Send>>,
}

impl SessionIo {
    /// Our own stdio (the VMM's, or `husk exec`'s); the size of a terminal
    /// on stdin is followed.
    pub fn inherited() -> SessionIo {
        let stdin_fd = std::io::stdin().as_raw_fd();
        SessionIo {
            stdin: Box::new(std::io::stdin()),
            stdout: Box::new(std::io::stdout()),
            stderr: Box::new(std::io::stderr()),
            follow_winsize: nix::unistd::isatty(stdin_fd)
                .unwrap_or(false)
                .then_some(stdin_fd),
            on_oom: None,
        }
    }
}

/// The sending half of a session connection, shared between the stdin pump,
/// the terminal-size watcher and whoever else talks to the process (a shim
/// forwarding signals and resizes).
pub type SessionWriter = Arc<Mutex<UnixStream>>;

/// The writer of a session connection.
pub fn session_writer(conn: &AgentConn) -> std::io::Result<SessionWriter> {
    Ok(Arc::new(Mutex::new(conn.stream.try_clone()?)))
}

/// Relays a session (the main one, or an exec) over our own stdio until its
/// process ends (see [`relay_io`]).
pub fn relay(conn: AgentConn, wait_for_start: bool) -> Option<ExitStatus> {
    let writer = match session_writer(&conn) {
        Ok(w) => w,
        Err(e) => {
            log::error!("cloning the agent connection: {e}");
            return None;
        }
    };
    relay_io(conn, &writer, wait_for_start, SessionIo::inherited())
}

/// Relays a session until its process ends: output frames to `io.stdout` /
/// `io.stderr`, `io.stdin` to the process (for the main session only once it
/// has started), terminal size changes. Returns once the process's exit
/// arrived, after all its output was written.
pub fn relay_io(
    conn: AgentConn,
    writer: &SessionWriter,
    wait_for_start: bool,
    io: SessionIo,
) -> Option<ExitStatus> {
    let SessionIo {
        stdin,
        mut stdout,
        mut stderr,
        follow_winsize,
        mut on_oom,
    } = io;
    let (started_tx, started_rx) = mpsc::channel::<()>();
    {
        let writer = writer.clone();
        let _ = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                if started_rx.recv().is_err() {
                    return;
                }
                pump_stdin(stdin, &writer);
            });
    }
    if let Some(fd) = follow_winsize {
        let writer = writer.clone();
        let _ = std::thread::Builder::new()
            .name("winsize".into())
            .spawn(move || watch_winsize(fd, &writer));
    }
    let mut reader = conn.stream;
    let mut started = Some(started_tx);
    if !wait_for_start {
        if let Some(tx) = started.take() {
            let _ = tx.send(());
        }
    }
    loop {
        let frame = match Frame::read_from(&mut reader) {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(e) => {
                log::error!("session: {e}");
                return None;
            }
        };
        match frame.kind {
            FrameKind::Stdout => {
                crate::jail::seccomp::fault_point("output");
                let _ = stdout.write_all(&frame.payload);
                let _ = stdout.flush();
            }
            FrameKind::Stderr => {
                let _ = stderr.write_all(&frame.payload);
                let _ = stderr.flush();
            }
            FrameKind::Event => match frame.parse::<Event>("event") {
                Ok(Event::Started { .. }) => {
                    if let Some(tx) = started.take() {
                        let _ = tx.send(());
                    }
                }
                // The guest holds the rest of the output for the VM
                // restored from the checkpoint; this connection ends with
                // the VM.
                Ok(Event::Detached) => log::info!("session: detached for a checkpoint"),
                Ok(Event::OomKilled) => {
                    if let Some(f) = on_oom.as_mut() {
                        f();
                    }
                }
                Ok(Event::Exited { code, signal }) => {
                    return Some(match (code, signal) {
                        (_, Some(sig)) => ExitStatus::Signal(sig),
                        (Some(c), None) => ExitStatus::Code(c),
                        (None, None) => ExitStatus::Code(EXIT_NO_STATUS),
                    })
                }
                Err(e) => log::warn!("session: {e}"),
            },
            FrameKind::Response => {}
            other => log::warn!("session: unexpected frame {other:?}"),
        }
    }
}

/// Copies `input` to the session's process, then closes its stdin.
fn pump_stdin(mut input: Box<dyn Read + Send>, writer: &Mutex<UnixStream>) {
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
            Ok(n) => {
                let frame = Frame::new(FrameKind::Stdin, buf[..n].to_vec());
                if frame.write_to(&mut *crate::vmm::bus::lock(writer)).is_err() {
                    return;
                }
            }
        }
    }
    send_stdin_eof(writer);
}

/// Closes the session process's stdin.
pub fn send_stdin_eof(writer: &Mutex<UnixStream>) {
    let _ = Frame::new(FrameKind::StdinEof, vec![]).write_to(&mut *crate::vmm::bus::lock(writer));
}

/// Sends a request on a session connection (a resize, or a signal for the
/// session's own process); its answer is read, and dropped, by the relay.
pub fn send_session_request(writer: &Mutex<UnixStream>, request: &Request) -> std::io::Result<()> {
    Frame::json(FrameKind::Request, request)
        .write_to(&mut *crate::vmm::bus::lock(writer))
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Forwards changes of our terminal's size to the container's terminal.
fn watch_winsize(fd: RawFd, writer: &Mutex<UnixStream>) {
    let mut last = (0u16, 0u16);
    loop {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        if rc != 0 {
            return;
        }
        let now = (ws.ws_row, ws.ws_col);
        if now != last && now != (0, 0) {
            last = now;
            let resize = Request::Resize {
                rows: now.0,
                cols: now.1,
            };
            if send_session_request(writer, &resize).is_err() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_tail_keeps_the_last_lines_oldest_first() {
        let console = "a\nb\nc\nd\ne\nf\ng\n";
        assert_eq!(console_tail(console), "c | d | e | f | g");
        assert_eq!(console_tail("only"), "only");
        assert_eq!(console_tail(""), "");
    }
}
