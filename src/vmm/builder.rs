//! The one function that turns a [`VmConfig`] into a running microVM.
//!
//! Order (each step needs the ones before it):
//! 1. validate the config; open KVM; check the vCPU count against KVM's limit
//! 2. create the VM, its in-kernel irqchip (IOAPIC + PIC + local APICs) and PIT
//! 3. guest memory around the MMIO gap (anonymous, mapped lazily), registered
//!    with KVM slot by slot
//! 4. load the kernel (ELF vmlinux, else bzImage) and the initramfs
//! 5. devices: COM1 serial, i8042 (reset), exit port on the port I/O bus;
//!    virtio-mmio disks on the MMIO bus, each with an irqfd and an ioeventfd;
//!    their `virtio_mmio.device=` entries go onto the command line
//! 6. command line, zero page (e820), MP table
//! 7. vCPUs: CPUID, MSRs, registers, segments and page tables, FPU, LAPIC;
//!    one thread each
//! 8. the event loop (devices, exit/reset events, timeout) until the VM ends;
//!    then the vCPU threads are stopped and joined.
//!
//! Snapshots ([`super::snapshot`], [`Snapshot`]): a VM to be snapshotted
//! boots as above; when husk-init's agent listens, the loop ends, the vCPUs
//! stop and the snapshot is written. A VM restored from one skips steps 4
//! and 6: step 3 maps the snapshot's memory file instead, step 5 creates the
//! same devices and puts their saved registers back, step 7 creates the
//! vCPUs with their CPUID and then restores the VM state (irqchip, PIT,
//! clock) and each vCPU's state.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::arch::x86_64 as arch;
use super::arch::x86_64::layout;
use super::bus::{lock, Bus, BusError};
use super::config::{ConfigError, ConsoleOutput, Initramfs, Snapshot, VmConfig};
use super::devices::boot_timer::{self, BootTimer};
use super::devices::exit_port::{self, ExitPort, Reported};
use super::devices::i8042::{self, I8042};
use super::devices::serial::{self, ConsoleTail, ConsoleWriter, Serial};
use super::devices::virtio::block::Block;
use super::devices::virtio::fs::Fs;
use super::devices::virtio::mmio::MmioTransport;
use super::devices::virtio::net::{Detached, Net, Tap};
use super::devices::virtio::vsock::{Vsock, CHECKPOINT_OK};
use super::devices::virtio::VirtioDevice;
use super::snapshot::{self, SnapshotError, VcpuState, VmSnapshot, VmState};
use super::vcpu::{self, VcpuShared, VcpuStop};
use crate::proto::Ending;

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// husk-init reported how the guest's command ended.
    Guest(Ending),
    /// The guest reset or shut down without a report; `panic` quotes the
    /// kernel's panic message when the console showed one.
    Reset { panic: Option<String> },
    /// The configured timeout passed.
    TimedOut(Duration),
    /// KVM stopped running the guest.
    Failed(String),
    /// The host stopped it ([`RunControls::stop`]).
    Stopped,
    /// The VM was paused and written to its snapshot directory
    /// ([`Snapshot::TakeWhenAgentListens`]).
    Snapshotted,
    /// A host client asked for a checkpoint: the VM was paused and written
    /// to its checkpoint directory ([`VmConfig::checkpoint`]).
    Checkpointed,
}

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Seccomp(crate::jail::seccomp::FilterError),
    #[error(transparent)]
    Jail(crate::jail::root::RootError),
    #[error("{0}")]
    FsServer(String),
    #[error("cannot use /dev/kvm: {0} (run `husk check`)")]
    Kvm(kvm_ioctls::Error),
    #[error("{requested} vCPUs requested, but this host's KVM allows at most {max}")]
    TooManyVcpus { requested: u32, max: usize },
    #[error("KVM {op}: {source}")]
    KvmOp {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("guest memory of {mib} MiB: {reason}")]
    Memory { mib: u32, reason: String },
    #[error("kernel {path}: {reason}")]
    Kernel { path: PathBuf, reason: String },
    #[error("initramfs {path}: {reason}")]
    Initramfs { path: PathBuf, reason: String },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("disk {path}: {reason}")]
    Block { path: PathBuf, reason: String },
    #[error("vsock {path}: {reason}")]
    Vsock { path: PathBuf, reason: String },
    #[error("virtio-fs {tag} ({root}): {reason}")]
    Fs {
        tag: String,
        root: PathBuf,
        reason: String,
    },
    #[error("network device on tap {tap}: {reason}")]
    Net { tap: String, reason: String },
    #[error("console output {path}: {source}")]
    Console {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("setting up the guest: {0}")]
    Arch(#[from] arch::ArchError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("event loop: {0:?}")]
    Events(event_manager::Error),
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
}

fn kvm_op(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::KvmOp { op, source }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> BuildError {
    move |source| BuildError::Io { what, source }
}

/// Address of the TSS KVM needs on Intel (three pages just below the BIOS area).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Offset of the bzImage's 64-bit entry point from where it is loaded.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// How long one event loop wait lasts before the loop checks for the end.
const EVENT_WAIT_MS: i32 = 100;

/// Builds the VM described by `config`, runs it to its end, and tears it
/// down. Errors are setup failures; how the guest ended is the `VmExit`.
/// The config is consumed: an in-memory initramfs is freed as soon as it is
/// in guest memory, so it does not count against the VMM's footprint.
pub fn build_and_run(config: VmConfig) -> Result<VmExit, BuildError> {
    run_with(config, RunControls::default())
}

/// What the caller can do to a running VM from another thread, and host
/// resources it prepared for the VM.
#[derive(Default)]
pub struct RunControls {
    /// Written to stop the VM ([`VmExit::Stopped`]).
    pub stop: Option<Arc<EventFd>>,
    /// Taps already open (created in another network namespace, say),
    /// used for the [`super::config::NetConfig`]s with the same name.
    pub taps: Vec<Tap>,
    /// Seccomp filters for the VM's threads ([`crate::jail::seccomp`]):
    /// each vCPU thread installs its own before its first `KVM_RUN`, the
    /// calling thread the device filter before the event loop serves any
    /// queue.
    pub seccomp: Option<Arc<crate::jail::seccomp::Filters>>,
    /// The root the calling thread pivots (or, made ready, `chroot`s) into
    /// once the VM is built, before the device filter and the event loop
    /// ([`crate::jail::root`]).
    pub jail: Option<JailEntry>,
    /// The vsock socket, bound already (and given to its owner) by a VMM
    /// that builds its VM without privileges over its state directory.
    pub vsock_listener: Option<std::os::unix::net::UnixListener>,
    /// Who owns the vsock socket once it is bound (uid, gid): the VMM's own
    /// user ([`crate::jail::user`]), whose threads connect to it.
    pub socket_owner: Option<(u32, u32)>,
    /// Streams to fs server processes ([`crate::runtime::fs_server`]) by
    /// tag: the [`super::config::FsConfig`] with that tag is served there
    /// (the others in the device thread).
    pub fs_servers: Vec<(String, super::devices::virtio::fs::backend::Client)>,
}

/// How the VM thread enters its jail.
#[derive(Debug)]
pub enum JailEntry {
    /// Builds it and pivots into it ([`crate::jail::root::Jail::enter`]).
    Pivot(crate::jail::root::Jail),
    /// `chroot`s into the one made ready
    /// ([`crate::jail::root::PreparedJail::enter`]).
    Chroot(crate::jail::root::PreparedJail),
}

impl JailEntry {
    fn enter(self) -> Result<(), crate::jail::root::RootError> {
        match self {
            JailEntry::Pivot(jail) => jail.enter(),
            JailEntry::Chroot(jail) => jail.enter(),
        }
    }
}

/// [`build_and_run`] with [`RunControls`].
pub fn run_with(mut config: VmConfig, mut controls: RunControls) -> Result<VmExit, BuildError> {
    let started = std::time::Instant::now();
    let step = |name: &str| {
        log::debug!(
            "vmm: {name} at {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        )
    };
    // 1. config and KVM.
    config.validate()?;
    let kvm = Kvm::new().map_err(BuildError::Kvm)?;
    let max = kvm.get_max_vcpus();
    let vcpus = u8::try_from(config.vcpus)
        .ok()
        .filter(|n| usize::from(*n) <= max)
        .ok_or(BuildError::TooManyVcpus {
            requested: config.vcpus,
            max,
        })?;

    let restore = match &config.snapshot {
        Some(Snapshot::Restore(dir) | Snapshot::Resume(dir)) => {
            let snap = VmSnapshot::read(dir)?;
            if snap.mem_bytes != config.mem_bytes() || snap.vcpus.len() != usize::from(vcpus) {
                return Err(SnapshotError::Mismatch(format!(
                    "{} bytes of memory and {} vCPUs in {}, the VM has {} and {vcpus}",
                    snap.mem_bytes,
                    snap.vcpus.len(),
                    dir.display(),
                    config.mem_bytes()
                ))
                .into());
            }
            Some((dir.clone(), snap))
        }
        _ => None,
    };
    let resume = match &config.snapshot {
        Some(Snapshot::Resume(dir)) => Some(snapshot::read_fs_states(dir)?),
        _ => None,
    };
    let take = match &config.snapshot {
        Some(Snapshot::TakeWhenAgentListens(dir)) => Some(dir.clone()),
        _ => None,
    };
    // Opened now: the thread that writes a checkpoint opens no file later.
    let checkpoint = config
        .checkpoint
        .as_deref()
        .map(|dir| {
            let files = snapshot::CheckpointFiles::create(dir)?;
            Ok::<_, SnapshotError>((files, snapshot::msr_list(&kvm)?))
        })
        .transpose()?;

    step("KVM opened");
    // 2. VM, irqchip, PIT.
    let vm = kvm.create_vm().map_err(kvm_op("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_op("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(kvm_op("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_op("KVM_CREATE_PIT2"))?;

    step("VM and irqchip created");
    // 3. memory.
    let mem = match &restore {
        Some((dir, snap)) => snapshot::map_memory(dir, &snap.regions)?,
        None => create_memory(&config)?,
    };
    register_memory(&vm, &mem, config.mem_mib)?;

    step("guest memory mapped");
    // 4. kernel and initramfs (a restored VM has them in its memory).
    let boot = match restore {
        Some(_) => None,
        None => {
            let kernel = load_kernel(&mem, &config.kernel)?;
            let initrd = match config.initramfs.take() {
                Some(initramfs) => Some(load_initramfs(&mem, &initramfs, kernel.kernel_end)?),
                None => None,
            };
            Some((kernel, initrd))
        }
    };

    step("kernel and initramfs loaded");
    // 5. devices.
    let exit_evt = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(io("exit eventfd"))?);
    let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(io("reset eventfd"))?;
    let reported = Reported::default();
    let tail = ConsoleTail::default();
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let mut cmdline =
        Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(|e| BuildError::Cmdline(e.to_string()))?;
    cmdline
        .insert_str(&config.cmdline)
        .map_err(|e| BuildError::Cmdline(e.to_string()))?;

    let console_sink: Option<Box<dyn std::io::Write + Send>> = match &config.console {
        ConsoleOutput::Stdout => Some(Box::new(std::io::stdout())),
        ConsoleOutput::File(path) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| BuildError::Console {
                    path: path.clone(),
                    source,
                })?,
        )),
        ConsoleOutput::Discard => None,
    };
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(io("serial irqfd"))?;
    vm.register_irqfd(&serial_irq, serial::COM1_IRQ)
        .map_err(kvm_op("KVM_IRQFD (serial)"))?;
    let console_out = ConsoleWriter::new(console_sink, tail.clone());
    let console_out = match &config.console {
        ConsoleOutput::File(_) => console_out.with_limit(serial::CONSOLE_FILE_MAX),
        ConsoleOutput::Stdout | ConsoleOutput::Discard => console_out,
    };
    let com1 = match &restore {
        Some((_, snap)) => Serial::from_state(&snap.serial, serial_irq, console_out)
            .map_err(SnapshotError::Mismatch)?,
        None => Serial::new(serial_irq, console_out),
    };
    let com1 = Arc::new(Mutex::new(com1));
    pio.insert(com1.clone(), serial::COM1_BASE, serial::COM1_LEN)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(
            reset_evt.try_clone().map_err(io("reset eventfd"))?,
        ))),
        i8042::I8042_BASE,
        i8042::I8042_LEN,
    )?;
    pio.insert(
        Arc::new(Mutex::new(ExitPort::new(
            reported.clone(),
            exit_evt.try_clone().map_err(io("exit eventfd"))?,
        ))),
        exit_port::EXIT_PORT_BASE,
        exit_port::EXIT_PORT_LEN,
    )?;
    // Only a VM to be snapshotted watches for the agent.
    let agent_evt = take
        .is_some()
        .then(|| EventFd::new(EFD_NONBLOCK))
        .transpose()
        .map_err(io("agent eventfd"))?;
    let mut timer = BootTimer::new(config.timeline.clone());
    if let Some(evt) = &agent_evt {
        timer = timer.signal_agent(evt.try_clone().map_err(io("agent eventfd"))?);
    }
    pio.insert(
        Arc::new(Mutex::new(timer)),
        boot_timer::BOOT_TIMER_BASE,
        boot_timer::BOOT_TIMER_LEN,
    )?;

    let mut event_manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(BuildError::Events)?;
    let mut attach = MmioAttach {
        vm: &vm,
        mem: &mem,
        mmio: &mut mmio,
        cmdline: &mut cmdline,
        next: 0,
        transports: Vec::new(),
    };
    for disk in &config.block {
        let block =
            Block::new(&disk.path, disk.read_only, &disk.id).map_err(|e| BuildError::Block {
                path: disk.path.clone(),
                reason: e.to_string(),
            })?;
        let block = Arc::new(Mutex::new(block));
        attach.attach(block.clone(), &disk.path)?;
        event_manager.add_subscriber(block);
    }
    for nic in &config.net {
        let net_error = |reason: String| BuildError::Net {
            tap: nic.tap.clone(),
            reason,
        };
        if nic.detached {
            let backend = Detached::new(&nic.tap).map_err(|e| net_error(e.to_string()))?;
            let net = Net::new(backend, nic.mac, nic.mtu, nic.offload)
                .map_err(|e| net_error(e.to_string()))?;
            let net = Arc::new(Mutex::new(net));
            attach.attach(net.clone(), std::path::Path::new(&nic.tap))?;
            event_manager.add_subscriber(net);
            continue;
        }
        let tap = match controls.taps.iter().position(|t| t.name() == nic.tap) {
            Some(i) => controls.taps.swap_remove(i),
            None => Tap::open(&nic.tap).map_err(|e| net_error(e.to_string()))?,
        };
        let net =
            Net::new(tap, nic.mac, nic.mtu, nic.offload).map_err(|e| net_error(e.to_string()))?;
        let net = Arc::new(Mutex::new(net));
        attach.attach(net.clone(), std::path::Path::new(&nic.tap))?;
        event_manager.add_subscriber(net);
    }
    let mut vsock_dev = None;
    let mut checkpoint_evt = None;
    if let Some(vs) = &config.vsock {
        let prebound = controls.vsock_listener.take();
        let owned = prebound.is_some();
        let vsock = Vsock::with_listener(vs.guest_cid, &vs.uds_path, prebound).map_err(|e| {
            BuildError::Vsock {
                path: vs.uds_path.clone(),
                reason: e.to_string(),
            }
        })?;
        if let Some((uid, gid)) = controls.socket_owner.filter(|_| !owned) {
            std::os::unix::fs::chown(&vs.uds_path, Some(uid), Some(gid)).map_err(|e| {
                BuildError::Vsock {
                    path: vs.uds_path.clone(),
                    reason: format!("giving it to uid {uid}: {e}"),
                }
            })?;
        }
        let mut vsock = vsock;
        if checkpoint.is_some() {
            let evt = EventFd::new(EFD_NONBLOCK).map_err(io("checkpoint eventfd"))?;
            vsock.on_checkpoint_request(evt.try_clone().map_err(io("checkpoint eventfd"))?);
            checkpoint_evt = Some(evt);
        }
        let vsock = Arc::new(Mutex::new(vsock));
        attach.attach(vsock.clone(), &vs.uds_path)?;
        vsock_dev = Some(vsock.clone());
        event_manager.add_subscriber(vsock);
    }
    let mut remote_fs = Vec::new();
    let mut fs_devices = Vec::new();
    for share in &config.fs {
        let mut fs = Fs::new(&share.tag, &share.root, share.read_only)
            .and_then(|fs| fs.with_ids(share.ids.clone()))
            .map_err(|e| BuildError::Fs {
                tag: share.tag.clone(),
                root: share.root.clone(),
                reason: e.to_string(),
            })?;
        let remote = controls
            .fs_servers
            .iter()
            .position(|(t, _)| *t == share.tag);
        if let Some(i) = remote {
            let (_, client) = controls.fs_servers.swap_remove(i);
            fs = fs.with_remote(client, controls.stop.clone());
        }
        let fs = Arc::new(Mutex::new(fs));
        attach.attach(fs.clone(), &share.root)?;
        fs_devices.push((share.tag.clone(), fs.clone()));
        if remote.is_some() {
            remote_fs.push(fs.clone());
        }
        event_manager.add_subscriber(fs);
    }

    let transports = std::mem::take(&mut attach.transports);
    if let Some((_, snap)) = &restore {
        if snap.transports.len() != transports.len() {
            return Err(SnapshotError::Mismatch(format!(
                "{} virtio devices in the snapshot, {} in the VM",
                snap.transports.len(),
                transports.len()
            ))
            .into());
        }
        for (i, (t, saved)) in transports.iter().zip(&snap.transports).enumerate() {
            lock(t)
                .restore(saved)
                .map_err(|e| SnapshotError::Mismatch(format!("virtio device {i}: {e}")))?;
        }
    }

    step("devices set up");
    // 6. command line, zero page, MP table.
    let entry = match &boot {
        Some((kernel, initrd)) => {
            arch::configure_system(&mem, &cmdline, *initrd, vcpus, kernel.setup_header)?;
            Some(match kernel.setup_header {
                Some(_) => GuestAddress(kernel.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
                None => kernel.kernel_load,
            })
        }
        None => None,
    };

    step("boot structures written");
    // 7. vCPUs.
    vcpu::install_kick_handler().map_err(|e| BuildError::Io {
        what: "installing the vCPU kick signal handler",
        source: std::io::Error::from_raw_os_error(e.errno()),
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let shared = VcpuShared {
        pio,
        mmio,
        stop: stop.clone(),
        exit_evt: exit_evt.clone(),
        outcome: Arc::default(),
        park: Arc::default(),
    };
    let mut vcpu_fds = Vec::with_capacity(usize::from(vcpus));
    let mut amd = false;
    for id in 0..vcpus {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(kvm_op("KVM_CREATE_VCPU"))?;
        let cpuid = arch::setup_cpuid(&kvm, id, vcpus)?;
        fd.set_cpuid2(&cpuid).map_err(kvm_op("KVM_SET_CPUID2"))?;
        amd = arch::cpuid::vendor(&cpuid) == arch::cpuid::Vendor::Amd;
        if let Some(entry) = entry {
            arch::setup_msrs(&fd)?;
            arch::setup_regs(&fd, entry)?;
            arch::setup_sregs(&mem, &fd)?;
            arch::setup_fpu(&fd)?;
            arch::set_lint(&fd)?;
        }
        vcpu_fds.push(fd);
    }
    if let Some((_, snap)) = &restore {
        snap.vm.restore(&vm)?;
        for (fd, state) in vcpu_fds.iter().zip(&snap.vcpus) {
            state.restore(fd, amd)?;
        }
        if let Some(dir) = &config.timeline {
            crate::timeline::mark(dir, "vmm.restored");
        }
    }
    if let Some(dir) = &config.timeline {
        crate::timeline::mark(dir, "vmm.vcpus");
    }
    let mut threads = Vec::with_capacity(vcpu_fds.len());
    for (id, fd) in vcpu_fds.into_iter().enumerate() {
        let shared = shared.clone();
        let id = u8::try_from(id).unwrap_or(u8::MAX);
        let filters = controls.seccomp.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                use crate::jail::seccomp::{fault_point, Thread};
                if let Some(f) = filters {
                    if let Err(e) = f.apply(Thread::Vcpu) {
                        shared.finish(VcpuStop::Error(format!("vCPU {id}: {e}")));
                        return fd;
                    }
                    fault_point("vcpu");
                }
                vcpu::run(fd, id, shared)
            })
            .map_err(io("starting a vCPU thread"))?;
        threads.push(thread);
    }

    step("vCPUs started");
    // 8. event loop.
    let watcher = Arc::new(Mutex::new(EndWatcher::new(
        exit_evt,
        reset_evt,
        controls.stop,
        config.timeout,
        agent_evt,
        checkpoint_evt,
    )?));
    event_manager.add_subscriber(watcher.clone());
    // The fs servers started while the VM was built; each must be confined
    // (out of this mount namespace) before the jail's pivot_root, which
    // would move a process still in it.
    for fs in &remote_fs {
        if let Err(e) = lock(fs).wait_backend_ready() {
            let stopped = vcpu::stop_all(threads, &stop);
            if stopped.stuck > 0 {
                log::warn!("{} vCPU thread(s) did not stop", stopped.stuck);
            }
            return Err(BuildError::FsServer(e.to_string()));
        }
    }
    if !remote_fs.is_empty() {
        step("fs servers ready");
    }
    // A checkpoint's guest gets its files back before the event loop
    // serves its first request, and learns its vsock connections are gone.
    if let Some(states) = &resume {
        if let Err(e) = resume_devices(states, &fs_devices, vsock_dev.as_ref()) {
            let stopped = vcpu::stop_all(threads, &stop);
            if stopped.stuck > 0 {
                log::warn!("{} vCPU thread(s) did not stop", stopped.stuck);
            }
            return Err(e);
        }
        step("checkpoint resumed");
    }
    if let Some(jail) = controls.jail.take() {
        if let Err(e) = jail.enter() {
            let stopped = vcpu::stop_all(threads, &stop);
            if stopped.stuck > 0 {
                log::warn!("{} vCPU thread(s) did not stop", stopped.stuck);
            }
            return Err(BuildError::Jail(e));
        }
        step("jailed");
    }
    if let Some(f) = &controls.seccomp {
        use crate::jail::seccomp::{fault_point, Thread};
        if let Err(e) = f.apply(Thread::Devices) {
            let stopped = vcpu::stop_all(threads, &stop);
            if stopped.stuck > 0 {
                log::warn!("{} vCPU thread(s) did not stop", stopped.stuck);
            }
            return Err(BuildError::Seccomp(e));
        }
        fault_point("devices");
    }
    let ended = loop {
        let end = lock(&watcher).ended.take();
        match (end, &checkpoint, &vsock_dev) {
            (Some(End::Checkpoint), Some((files, msrs)), Some(vsock)) => {
                let leave_running = lock(vsock).checkpoint_leaves_running();
                let written = write_checkpoint(&Live {
                    files,
                    msrs,
                    threads: &threads,
                    park: &shared.park,
                    vm: &vm,
                    com1: &com1,
                    transports: &transports,
                    fs_devices: &fs_devices,
                    mem: &mem,
                    mem_bytes: config.mem_bytes(),
                });
                let answer = match &written {
                    Ok(()) => CHECKPOINT_OK.to_owned(),
                    Err(e) => {
                        log::error!("checkpoint: {e}");
                        format!("ERR {e}")
                    }
                };
                lock(vsock).checkpoint_done(&answer);
                if written.is_ok() && !leave_running {
                    // Parked: stopped with the VM.
                    step("checkpoint written");
                    break End::Checkpoint;
                }
                // The VM runs on: after a checkpoint that leaves it
                // running, or one that failed (nothing is lost).
                shared.park.release();
            }
            (Some(end), _, _) => break end,
            (None, _, _) => {}
        }
        event_manager
            .run_with_timeout(EVENT_WAIT_MS)
            .map_err(BuildError::Events)?;
    };
    let stopped = vcpu::stop_all(threads, &stop);
    if stopped.stuck > 0 {
        log::warn!("{} vCPU thread(s) did not stop", stopped.stuck);
    }
    let _ = std::io::stdout().flush();
    if ended == End::Checkpoint {
        return Ok(VmExit::Checkpointed);
    }
    if let (End::Snapshot, Some(dir)) = (ended, &take) {
        if stopped.stuck > 0 || stopped.vcpus.len() != usize::from(vcpus) {
            return Err(SnapshotError::Mismatch(format!(
                "{} of {vcpus} vCPUs stopped",
                stopped.vcpus.len()
            ))
            .into());
        }
        let msr_list = snapshot::msr_list(&kvm)?;
        let vcpu_states = stopped
            .vcpus
            .iter()
            .map(|fd| VcpuState::save(fd, &msr_list))
            .collect::<Result<Vec<_>, _>>()?;
        let snap = snapshot_of(&vm, vcpu_states, &com1, &transports, config.mem_bytes())?;
        snap(snapshot::save_memory(&mem, dir)?).write(dir)?;
        step("snapshot written");
        return Ok(VmExit::Snapshotted);
    }

    let reported = *lock(&reported);
    let vcpu_stop = lock(&shared.outcome).clone();
    Ok(match (ended, reported, vcpu_stop) {
        (_, Some(ending), _) => VmExit::Guest(ending),
        (End::TimedOut(d), None, _) => VmExit::TimedOut(d),
        (End::Stopped, None, _) => VmExit::Stopped,
        (_, None, Some(VcpuStop::Error(e))) => VmExit::Failed(e),
        _ => VmExit::Reset {
            panic: tail.panic_message(),
        },
    })
}

/// Puts virtio devices on the MMIO bus one window after the other, each with
/// its IRQ (irqfd), its queue notifications (ioeventfds) and its
/// `virtio_mmio.device=` command-line entry.
struct MmioAttach<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemoryMmap,
    mmio: &'a mut Bus,
    cmdline: &'a mut Cmdline,
    next: u32,
    /// The transports attached so far, in order.
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl MmioAttach<'_> {
    fn attach<D: VirtioDevice + 'static>(
        &mut self,
        device: Arc<Mutex<D>>,
        backing: &std::path::Path,
    ) -> Result<(), BuildError> {
        let index = self.next;
        let irq = layout::VIRTIO_IRQ_BASE + index;
        if irq > layout::IRQ_MAX {
            return Err(BuildError::Block {
                path: backing.to_path_buf(),
                reason: format!(
                    "no IRQ line left (at most {} virtio devices)",
                    layout::IRQ_MAX - layout::VIRTIO_IRQ_BASE + 1
                ),
            });
        }
        self.next += 1;
        let base = layout::VIRTIO_MMIO_START + u64::from(index) * layout::VIRTIO_MMIO_SIZE;
        for (queue, evt) in lock(&device).queue_events().iter().enumerate() {
            let queue = u32::try_from(queue).unwrap_or(u32::MAX);
            self.vm
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + MmioTransport::queue_notify_offset()),
                    queue,
                )
                .map_err(kvm_op("KVM_IOEVENTFD"))?;
        }
        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(io("virtio irqfd"))?;
        self.vm
            .register_irqfd(&irq_evt, irq)
            .map_err(kvm_op("KVM_IRQFD (virtio)"))?;
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            self.mem.clone(),
            device,
            irq_evt,
        )));
        self.mmio
            .insert(transport.clone(), base, layout::VIRTIO_MMIO_SIZE)?;
        self.transports.push(transport);
        self.cmdline
            .add_virtio_mmio_device(layout::VIRTIO_MMIO_SIZE, GuestAddress(base), irq, None)
            .map_err(|e| BuildError::Cmdline(e.to_string()))
    }
}

fn create_memory(config: &VmConfig) -> Result<GuestMemoryMmap, BuildError> {
    let regions = arch::memory_regions(config.mem_bytes());
    GuestMemoryMmap::from_ranges(&regions).map_err(|e| BuildError::Memory {
        mib: config.mem_mib,
        reason: e.to_string(),
    })
}

/// Registers every region of `mem` with KVM, one slot each.
fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap, mem_mib: u32) -> Result<(), BuildError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| BuildError::Memory {
                mib: mem_mib,
                reason: e.to_string(),
            })?;
        let kvm_region = kvm_userspace_memory_region {
            slot: u32::try_from(slot).unwrap_or(u32::MAX),
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the
        // caller keeps alive for as long as the VM runs.
        unsafe { vm.set_user_memory_region(kvm_region) }
            .map_err(kvm_op("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

fn load_kernel(mem: &GuestMemoryMmap, path: &PathBuf) -> Result<KernelLoaderResult, BuildError> {
    let fail = |reason: String| BuildError::Kernel {
        path: path.clone(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| fail(e.to_string()))?;
    if !file.metadata().map_err(|e| fail(e.to_string()))?.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let himem = Some(GuestAddress(layout::HIMEM_START));
    let mut head = [0u8; BZIMAGE_MAGIC_OFFSET + 4];
    let head_len = read_head(&mut file, &mut head).map_err(|e| fail(e.to_string()))?;
    let head = &head[..head_len];
    if head.starts_with(ELF_MAGIC) {
        Elf::load(mem, None, &mut file, himem)
            .map_err(|e| fail(format!("cannot load the ELF kernel: {e}")))
    } else if head.get(BZIMAGE_MAGIC_OFFSET..) == Some(BZIMAGE_MAGIC) {
        BzImage::load(mem, None, &mut file, himem)
            .map_err(|e| fail(format!("cannot load the bzImage: {e}")))
    } else {
        Err(fail("neither an ELF vmlinux nor a bzImage".into()))
    }
}

/// ELF files start with this.
const ELF_MAGIC: &[u8] = b"\x7fELF";
/// A bzImage's setup header carries "HdrS" at this offset.
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
const BZIMAGE_MAGIC: &[u8] = b"HdrS";

/// Reads up to `buf.len()` bytes from the start of `file`.
fn read_head(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read as _;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn load_initramfs(
    mem: &GuestMemoryMmap,
    initramfs: &Initramfs,
    kernel_end: u64,
) -> Result<arch::InitrdInfo, BuildError> {
    let path = match initramfs {
        Initramfs::File(path) => path.clone(),
        Initramfs::Bytes(_) => PathBuf::from("(built in memory)"),
    };
    let fail = |reason: String| BuildError::Initramfs {
        path: path.clone(),
        reason,
    };
    let owned;
    let data: &[u8] = match initramfs {
        Initramfs::File(p) => {
            owned = std::fs::read(p).map_err(|e| fail(e.to_string()))?;
            &owned
        }
        Initramfs::Bytes(b) => b,
    };
    let addr = arch::initrd_load_addr(mem, data.len()).map_err(|e| fail(e.to_string()))?;
    if addr.0 < kernel_end {
        return Err(fail(format!(
            "does not fit between the kernel (ending at {kernel_end:#x}) and the end of low memory; give the VM more memory"
        )));
    }
    mem.write_slice(data, addr)
        .map_err(|e| fail(e.to_string()))?;
    Ok(arch::InitrdInfo {
        addr,
        size: data.len(),
    })
}

/// Everything of a snapshot but guest RAM, once the vCPUs stand still
/// (stopped, or parked) with `vcpus` their state: the VM's, the serial
/// port's and each virtio transport's; it takes where guest RAM went.
fn snapshot_of(
    vm: &VmFd,
    vcpus: Vec<VcpuState>,
    com1: &Arc<Mutex<Serial>>,
    transports: &[Arc<Mutex<MmioTransport>>],
    mem_bytes: u64,
) -> Result<impl FnOnce(Vec<snapshot::RegionSnapshot>) -> VmSnapshot, SnapshotError> {
    let vm = VmState::save(vm)?;
    let serial = lock(com1).state();
    let transports = transports.iter().map(|t| lock(t).save()).collect();
    Ok(move |regions| VmSnapshot {
        format: snapshot::FORMAT,
        mem_bytes,
        regions,
        vm,
        vcpus,
        serial,
        transports,
    })
}

/// What a checkpoint of a running VM reads.
struct Live<'a> {
    files: &'a snapshot::CheckpointFiles,
    msrs: &'a [u32],
    threads: &'a [std::thread::JoinHandle<kvm_ioctls::VcpuFd>],
    park: &'a vcpu::Park,
    vm: &'a VmFd,
    com1: &'a Arc<Mutex<Serial>>,
    transports: &'a [Arc<Mutex<MmioTransport>>],
    fs_devices: &'a [(String, Arc<Mutex<Fs>>)],
    mem: &'a GuestMemoryMmap,
    mem_bytes: u64,
}

/// Writes a checkpoint of the running VM, on the event loop's thread (no
/// device runs meanwhile): the vCPUs park and save their own state, then
/// the VM's, the devices' and each fs server's state and guest RAM are
/// written ([`snapshot::CheckpointFiles`]). The vCPUs stay parked: the
/// caller releases them, or stops them with the VM.
fn write_checkpoint(live: &Live) -> Result<(), String> {
    let vcpus = live.park.park_all(live.threads, live.msrs)?;
    let snap = snapshot_of(live.vm, vcpus, live.com1, live.transports, live.mem_bytes)
        .map_err(|e| e.to_string())?;
    let mut states = Vec::with_capacity(live.fs_devices.len());
    for (tag, fs) in live.fs_devices {
        let state = lock(fs).save_state().map_err(|e| e.to_string())?;
        states.push((tag.clone(), state));
    }
    live.files
        .write(&states, live.mem, snap)
        .map_err(|e| e.to_string())
}

/// Gives each virtio-fs server of a VM resumed from a checkpoint the
/// state its guest left (by tag; a share the checkpoint does not list was
/// never mounted), then tells the guest its vsock transport was reset.
fn resume_devices(
    states: &snapshot::FsStates,
    fs_devices: &[(String, Arc<Mutex<Fs>>)],
    vsock: Option<&Arc<Mutex<Vsock>>>,
) -> Result<(), BuildError> {
    for (tag, state) in states {
        let Some((_, fs)) = fs_devices.iter().find(|(t, _)| t == tag) else {
            return Err(SnapshotError::Mismatch(format!(
                "the checkpoint has files of virtio-fs {tag}, which the VM does not have"
            ))
            .into());
        };
        lock(fs)
            .load_state(state)
            .map_err(|e| BuildError::FsServer(e.to_string()))?;
    }
    if let Some(vsock) = vsock {
        match lock(vsock).send_transport_reset() {
            Ok(true) => {}
            Ok(false) => log::warn!(
                "the restored guest offered no vsock event buffer: its old connections \
                 are not reset"
            ),
            Err(e) => log::warn!("vsock transport reset: {e}"),
        }
    }
    Ok(())
}

/// Why the event loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The exit port or a vCPU signalled the end.
    Exit,
    /// The guest asked the i8042 for a reset.
    Reset,
    TimedOut(Duration),
    /// The host asked for the VM to stop.
    Stopped,
    /// The agent listens: time for the snapshot.
    Snapshot,
    /// A host client asked for a checkpoint.
    Checkpoint,
}

/// Watches the exit and reset events and the timeout timer.
struct EndWatcher {
    exit: Arc<EventFd>,
    reset: EventFd,
    stop: Option<Arc<EventFd>>,
    timer: Option<(TimerFd, Duration)>,
    /// Signalled by the boot timer when the agent listens (a VM to snapshot).
    agent: Option<EventFd>,
    /// Signalled by the vsock device when a checkpoint is asked for.
    checkpoint: Option<EventFd>,
    ended: Option<End>,
}

impl EndWatcher {
    fn new(
        exit: Arc<EventFd>,
        reset: EventFd,
        stop: Option<Arc<EventFd>>,
        timeout: Option<Duration>,
        agent: Option<EventFd>,
        checkpoint: Option<EventFd>,
    ) -> Result<Self, BuildError> {
        let timer = match timeout {
            Some(d) => {
                let errno = |e: vmm_sys_util::errno::Error| BuildError::Io {
                    what: "timeout timerfd",
                    source: std::io::Error::from_raw_os_error(e.errno()),
                };
                let mut t = TimerFd::new().map_err(errno)?;
                t.reset(d, None).map_err(errno)?;
                Some((t, d))
            }
            None => None,
        };
        Ok(EndWatcher {
            exit,
            reset,
            stop,
            timer,
            agent,
            checkpoint,
            ended: None,
        })
    }
}

impl MutEventSubscriber for EndWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let mut fds = vec![Events::new(&*self.exit, event_manager::EventSet::IN)];
        fds.push(Events::new(&self.reset, event_manager::EventSet::IN));
        if let Some((t, _)) = &self.timer {
            fds.push(Events::new(t, event_manager::EventSet::IN));
        }
        if let Some(stop) = &self.stop {
            fds.push(Events::new(&**stop, event_manager::EventSet::IN));
        }
        if let Some(agent) = &self.agent {
            fds.push(Events::new(agent, event_manager::EventSet::IN));
        }
        if let Some(c) = &self.checkpoint {
            fds.push(Events::new(c, event_manager::EventSet::IN));
        }
        for e in fds {
            if let Err(err) = ops.add(e) {
                log::error!("event loop: registering an end event: {err:?}");
                self.ended = Some(End::Exit);
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        use std::os::unix::io::AsRawFd as _;
        let fd = events.fd();
        if fd == self.exit.as_raw_fd() {
            let _ = self.exit.read();
            self.ended.get_or_insert(End::Exit);
        } else if fd == self.reset.as_raw_fd() {
            let _ = self.reset.read();
            self.ended.get_or_insert(End::Reset);
        } else if self.stop.as_ref().is_some_and(|s| s.as_raw_fd() == fd) {
            if let Some(stop) = &self.stop {
                let _ = stop.read();
            }
            self.ended.get_or_insert(End::Stopped);
        } else if self.agent.as_ref().is_some_and(|a| a.as_raw_fd() == fd) {
            if let Some(agent) = &self.agent {
                let _ = agent.read();
            }
            self.ended.get_or_insert(End::Snapshot);
        } else if self
            .checkpoint
            .as_ref()
            .is_some_and(|c| c.as_raw_fd() == fd)
        {
            if let Some(c) = &self.checkpoint {
                let _ = c.read();
            }
            self.ended.get_or_insert(End::Checkpoint);
        } else if let Some((t, d)) = &mut self.timer {
            if fd == t.as_raw_fd() {
                let _ = t.wait();
                self.ended.get_or_insert(End::TimedOut(*d));
            }
        }
    }
}
