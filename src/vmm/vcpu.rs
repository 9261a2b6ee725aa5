//! vCPU threads: one per vCPU, running `KVM_RUN` and dispatching exits to the
//! port I/O and MMIO buses until the VM stops.
//!
//! Stopping: the first vCPU that sees the VM end (a reset, a KVM error)
//! records why and signals the VMM's exit event. The VMM then sets the shared
//! stop flag and kicks every vCPU thread with [`kick_signal`] so `KVM_RUN`
//! returns `EINTR` and the loop sees the flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::bus::{lock, Bus};

/// Why a vCPU stopped the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// The guest reset or shut down the machine (triple fault, system event).
    Reset,
    /// KVM could not run the guest.
    Error(String),
}

/// What every vCPU thread shares with the VMM.
#[derive(Clone)]
pub struct VcpuShared {
    pub pio: Bus,
    pub mmio: Bus,
    pub stop: Arc<AtomicBool>,
    /// Written when a vCPU stops the VM.
    pub exit_evt: Arc<EventFd>,
    /// The first vCPU's reason wins.
    pub outcome: Arc<Mutex<Option<VcpuStop>>>,
    /// Parks the vCPUs for a checkpoint of a VM that goes on running.
    pub park: Arc<Park>,
}

/// Parking: every vCPU thread leaves `KVM_RUN`, completes its last exit,
/// saves its own state ([`super::snapshot::VcpuState`]) and waits until
/// released; the VM stands still meanwhile and its vCPUs run on after.
#[derive(Default)]
pub struct Park {
    /// Set while parking is wanted: what every vCPU exit looks at (no lock
    /// on the hot path).
    wanted: AtomicBool,
    state: Mutex<ParkState>,
    changed: Condvar,
}

#[derive(Default)]
struct ParkState {
    /// The MSRs each vCPU saves.
    msrs: Vec<u32>,
    /// Each vCPU's state once it parked, by id.
    saved: Vec<Option<Result<super::snapshot::VcpuState, String>>>,
}

/// How long [`Park::park_all`] waits for every vCPU to park.
const PARK_LIMIT: Duration = Duration::from_secs(5);

impl Park {
    fn lock(&self) -> std::sync::MutexGuard<'_, ParkState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wanted(&self) -> bool {
        self.wanted.load(Ordering::SeqCst)
    }

    /// On a vCPU thread that saw [`Park::wanted`]: saves the vCPU's state
    /// and waits until released (or the VM stops).
    fn park_here(&self, vcpu: &VcpuFd, id: u8, stop: &AtomicBool) {
        let mut state = self.lock();
        let saved = super::snapshot::VcpuState::save(vcpu, &state.msrs).map_err(|e| e.to_string());
        if let Some(slot) = state.saved.get_mut(usize::from(id)) {
            *slot = Some(saved);
        }
        self.changed.notify_all();
        // `wanted` is cleared under this lock before the wake-up.
        while self.wanted() && !stop.load(Ordering::SeqCst) {
            state = self
                .changed
                .wait_timeout(state, KICK_INTERVAL * 10)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Parks every vCPU of `threads` (kicking them out of `KVM_RUN`) and
    /// returns their states, in vCPU order; the vCPUs stay parked until
    /// [`Park::release`], also when this fails.
    pub fn park_all(
        &self,
        threads: &[JoinHandle<VcpuFd>],
        msrs: &[u32],
    ) -> Result<Vec<super::snapshot::VcpuState>, String> {
        {
            let mut state = self.lock();
            state.msrs = msrs.to_vec();
            state.saved = (0..threads.len()).map(|_| None).collect();
            self.wanted.store(true, Ordering::SeqCst);
        }
        let start = Instant::now();
        loop {
            if self.lock().saved.iter().all(Option::is_some) {
                break;
            }
            if start.elapsed() > PARK_LIMIT {
                return Err(format!(
                    "the vCPUs did not stop within {} s",
                    PARK_LIMIT.as_secs()
                ));
            }
            for t in threads {
                let _ = t.kill(kick_signal());
            }
            std::thread::sleep(KICK_INTERVAL);
        }
        let saved = std::mem::take(&mut self.lock().saved);
        saved
            .into_iter()
            .enumerate()
            .map(|(id, s)| s.unwrap_or_else(|| Err(format!("vCPU {id} saved nothing"))))
            .collect()
    }

    /// Lets the parked vCPUs run on.
    pub fn release(&self) {
        let mut state = self.lock();
        state.saved.clear();
        self.wanted.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }
}

impl VcpuShared {
    /// Records why the VM ends (the first reason wins) and stops it.
    pub fn finish(&self, why: VcpuStop) {
        let mut outcome = lock(&self.outcome);
        if outcome.is_none() {
            *outcome = Some(why);
        }
        drop(outcome);
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.exit_evt.write(1) {
            log::error!("vcpu: signalling exit: {e}");
        }
    }
}

/// The signal that kicks vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for [`kick_signal`]; call once before
/// starting vCPU threads.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), on_kick)
}

/// Value read from a port nothing answers (a floating ISA bus).
const UNCLAIMED_PORT_BYTE: u8 = 0xff;

/// Runs one vCPU until the VM stops; returns the vCPU with any operation of
/// its last exit completed, so its state can be saved
/// ([`super::snapshot`]).
pub fn run(mut vcpu: VcpuFd, id: u8, shared: VcpuShared) -> VcpuFd {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            complete_pending(&mut vcpu, id);
            return vcpu;
        }
        if shared.park.wanted() {
            complete_pending(&mut vcpu, id);
            shared.park.park_here(&vcpu, id, &shared.stop);
            continue;
        }
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !shared.pio.read(u64::from(port), data) {
                    data.fill(UNCLAIMED_PORT_BYTE);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                shared.pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !shared.mmio.read(addr, data) {
                    log::debug!("vcpu {id}: read of unclaimed MMIO {addr:#x}");
                    data.fill(0);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !shared.mmio.write(addr, data) {
                    log::debug!("vcpu {id}: write to unclaimed MMIO {addr:#x}");
                }
            }
            Ok(VcpuExit::Shutdown) | Ok(VcpuExit::Hlt) => {
                log::debug!("vcpu {id}: guest shut down or reset");
                shared.finish(VcpuStop::Reset);
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                log::debug!("vcpu {id}: system event {kind}");
                shared.finish(VcpuStop::Reset);
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => shared.finish(VcpuStop::Error(format!(
                "vCPU {id}: KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
            ))),
            Ok(VcpuExit::InternalError) => shared.finish(VcpuStop::Error(format!(
                "vCPU {id}: KVM internal error (emulation failure: does this host's CPU \
                 have vmx/svm? see `husk check`)"
            ))),
            Ok(other) => shared.finish(VcpuStop::Error(format!(
                "vCPU {id}: unexpected KVM exit {other:?}"
            ))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(e) => shared.finish(VcpuStop::Error(format!("vCPU {id}: KVM_RUN: {e}"))),
        }
    }
}

/// Finishes the operation of the last exit (the data of a port or MMIO read
/// lands in the guest's registers, the instruction pointer moves past it)
/// without running any further guest instruction: KVM completes such an
/// operation only on the next `KVM_RUN`, which `immediate_exit` turns into
/// an immediate `EINTR` after that completion (the KVM API documentation,
/// `kvm_run::immediate_exit`).
fn complete_pending(vcpu: &mut VcpuFd, id: u8) {
    vcpu.set_kvm_immediate_exit(1);
    match vcpu.run() {
        Err(e) if e.errno() == libc::EINTR => {}
        other => log::debug!("vcpu {id}: completing the last exit: {other:?}"),
    }
    vcpu.set_kvm_immediate_exit(0);
}

/// How long [`stop_all`] keeps kicking threads that do not stop.
const STOP_LIMIT: Duration = Duration::from_secs(2);
const KICK_INTERVAL: Duration = Duration::from_millis(5);

/// What [`stop_all`] got back.
pub struct Stopped {
    /// The vCPUs of the threads that stopped, in the order of the threads.
    pub vcpus: Vec<VcpuFd>,
    /// How many threads did not stop in time.
    pub stuck: usize,
}

/// Stops and joins the vCPU threads.
pub fn stop_all(threads: Vec<JoinHandle<VcpuFd>>, stop: &AtomicBool) -> Stopped {
    stop.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let mut running: Vec<(usize, JoinHandle<VcpuFd>)> = threads.into_iter().enumerate().collect();
    let mut vcpus: Vec<(usize, VcpuFd)> = Vec::with_capacity(running.len());
    while !running.is_empty() && start.elapsed() < STOP_LIMIT {
        for (_, t) in &running {
            let _ = t.kill(kick_signal());
        }
        std::thread::sleep(KICK_INTERVAL);
        let (done, rest): (Vec<_>, Vec<_>) =
            running.into_iter().partition(|(_, t)| t.is_finished());
        for (i, t) in done {
            if let Ok(fd) = t.join() {
                vcpus.push((i, fd));
            }
        }
        running = rest;
    }
    vcpus.sort_by_key(|(i, _)| *i);
    Stopped {
        vcpus: vcpus.into_iter().map(|(_, fd)| fd).collect(),
        stuck: running.len(),
    }
}
