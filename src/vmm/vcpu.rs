//! vCPU threads: one per vCPU, running `KVM_RUN` and dispatching exits to the
//! port I/O and MMIO buses until the VM stops.
//!
//! Stopping: the first vCPU that sees the VM end (a reset, a KVM error)
//! records why and signals the VMM's exit event. The VMM then sets the shared
//! stop flag and kicks every vCPU thread with [`kick_signal`] so `KVM_RUN`
//! returns `EINTR` and the loop sees the flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
}

impl VcpuShared {
    fn finish(&self, why: VcpuStop) {
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

/// Runs one vCPU until the VM stops.
pub fn run(mut vcpu: VcpuFd, id: u8, shared: VcpuShared) {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
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

/// How long [`stop_all`] keeps kicking threads that do not stop.
const STOP_LIMIT: Duration = Duration::from_secs(2);
const KICK_INTERVAL: Duration = Duration::from_millis(5);

/// Stops and joins the vCPU threads; returns how many did not stop in time.
pub fn stop_all(threads: Vec<JoinHandle<()>>, stop: &AtomicBool) -> usize {
    stop.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let mut running = threads;
    while !running.is_empty() && start.elapsed() < STOP_LIMIT {
        for t in &running {
            let _ = t.kill(kick_signal());
        }
        std::thread::sleep(KICK_INTERVAL);
        let (done, rest): (Vec<_>, Vec<_>) = running.into_iter().partition(|t| t.is_finished());
        for t in done {
            let _ = t.join();
        }
        running = rest;
    }
    running.len()
}
