//! The part every virtio device shares: [`VirtioCore`].
//!
//! A device is its core plus its own logic (a backend and the processing of
//! its requests). The core owns what the transport and the event manager
//! need from any device, and what every device used to repeat:
//!
//! - identity and negotiation: the device type (virtio 1.2, section 5), the
//!   offered features and the driver's acked ones (always masked by the
//!   offered ones, section 2.2);
//! - the queues' maximum sizes and one notification [`EventFd`] per queue,
//!   created with the device (the VMM registers them with KVM as
//!   ioeventfds before the guest runs), and the *activate* eventfd;
//! - activation as a typed state, [`DeviceState::Inactive`] or
//!   [`DeviceState::Activated`] with the guest memory, the [`Interrupt`] and
//!   the queues the driver set up (sections 3.1.1, 2.1.2);
//! - returning chains ([`VirtioCore::add_used`]) and interrupting the driver
//!   when a queue asks for it ([`VirtioCore::signal_used`], honouring
//!   `VIRTIO_F_RING_EVENT_IDX`, section 2.7.10);
//! - the event-manager side of the core's eventfds
//!   ([`VirtioCore::handle_event`]), and the queues' ring positions for a
//!   snapshot ([`VirtioCore::queue_positions`]).
//!
//! # Contract with a device
//!
//! A device holds a `VirtioCore` and implements
//! [`VirtioDevice`](super::VirtioDevice) with `core()`, `core_mut()` and
//! `config_space()`; everything the transport calls (features, queue events,
//! `activate`, `reset`, ...) is provided by the trait on top of the core. A
//! device that must do more on activation or reset overrides the hooks:
//!
//! - `on_activate(queues)` runs after the core checked the queue count and
//!   validity and before the core takes the queues; an error leaves the
//!   device as it was (e.g. virtio-net sets the tap's offloads here);
//! - `on_reset()` runs after the core dropped memory, queues and interrupt
//!   and cleared the acked features; returning `false` says the device
//!   cannot be reset (the transport then marks it `FAILED`).
//!
//! The activate eventfd is written by a successful activation. The device,
//! as an event-manager subscriber, registers it in `init`
//! ([`VirtioCore::register_activate_event`]) and hands every event to
//! [`VirtioCore::handle_event`] first: on the activate event the core drains
//! it and registers the queue events (once; they stay registered across
//! resets), on a queue event it drains that event, and either way it says
//! which it was ([`CoreEvent`]) so the device processes its queues if
//! [`VirtioCore::is_activated`]. Any other fd ([`CoreEvent::Other`]) is the
//! device's own (a tap, sockets, timers).
//!
//! Queue processing borrows the activated state apart with
//! [`VirtioCore::active_mut`] (memory, interrupt and queues next to the
//! device's own fields), pops chains, returns them with
//! [`ActiveQueues::add_used`] and ends a pass with one
//! [`ActiveQueues::signal_used`] over the queues it used. A device that
//! hands one queue apart to its helpers for a whole pass takes it with
//! [`ActiveQueues::into_queue`] and uses the free functions [`add_used`],
//! [`signal_used`], [`enable_notification`] and [`queue_error`].
//!
//! A new device (say virtio-fs) is then: its constants (type, features,
//! queue count and sizes, config layout), a `VirtioCore::new` in its
//! constructor, the three required trait methods, its request processing
//! over `active_mut()`, and a `MutEventSubscriber` whose `init` calls
//! `register_activate_event` and whose `process` starts with
//! `handle_event`.
//!
//! Errors of the shared part are [`DeviceError`], which each device's error
//! enum wraps (`#[error(transparent)] Device(#[from] DeviceError)`); its
//! variants name the device by the core's label (`"disk d0"`, `"net tap0"`).
//! Nothing the guest writes makes the core panic: bad queues refuse
//! activation, a bad head index is dropped and logged.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use log::{debug, error, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, Interrupt, INTERRUPT_USED_BUFFER};
use crate::vmm::snapshot::QueuePosition;

/// Flags of every eventfd the core creates: the event loop and the vCPU
/// threads never block on them.
const EVENTFD_FLAGS: i32 = libc::EFD_NONBLOCK;

/// Errors of the shared part of a device; each device's error enum wraps
/// them with `#[from]`. `device` is the core's label.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("creating the eventfds of {device}: {source}")]
    EventFd {
        device: String,
        source: std::io::Error,
    },
    #[error("{device} is not activated")]
    NotActivated { device: String },
    #[error("{device} has no queue {index}")]
    NoQueue { device: String, index: usize },
    #[error("{device}: queue {index}: {source}")]
    Queue {
        device: String,
        index: usize,
        source: virtio_queue::Error,
    },
    #[error("{device}: raising the interrupt: {source}")]
    Interrupt {
        device: String,
        source: std::io::Error,
    },
}

/// What the driver handed the device at `DRIVER_OK`.
pub struct ActiveState {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn Interrupt>,
    /// In the device's queue order (section 5: one list per device type).
    pub queues: Vec<Queue>,
}

/// What the device has been given by the driver.
pub enum DeviceState {
    /// Before `DRIVER_OK`, and after a reset.
    Inactive,
    /// Between `DRIVER_OK` and a reset.
    Activated(ActiveState),
}

/// The activated state borrowed apart, for one pass over the queues (see
/// [`VirtioCore::active_mut`]).
pub struct ActiveQueues<'a> {
    /// The core's label, for errors and logs.
    pub device: &'a str,
    pub mem: &'a GuestMemoryMmap,
    pub interrupt: &'a Arc<dyn Interrupt>,
    pub queues: &'a mut [Queue],
}

impl<'a> ActiveQueues<'a> {
    /// Queue `index`, or [`DeviceError::NoQueue`].
    pub fn queue(&mut self, index: usize) -> Result<&mut Queue, DeviceError> {
        self.queues
            .get_mut(index)
            .ok_or_else(|| DeviceError::NoQueue {
                device: self.device.to_string(),
                index,
            })
    }

    /// Queue `index` alone with memory and interrupt, for a pass over one
    /// queue that hands them apart to helpers; [`DeviceError::NoQueue`].
    pub fn into_queue(self, index: usize) -> Result<ActiveQueue<'a>, DeviceError> {
        let ActiveQueues {
            device,
            mem,
            interrupt,
            queues,
        } = self;
        match queues.get_mut(index) {
            Some(queue) => Ok(ActiveQueue {
                device,
                mem,
                interrupt,
                queue,
            }),
            None => Err(DeviceError::NoQueue {
                device: device.to_string(),
                index,
            }),
        }
    }

    /// Returns chain `head` with `len` bytes written on queue `index` (see
    /// [`add_used`]).
    pub fn add_used(&mut self, index: usize, head: u16, len: u32) -> Result<bool, DeviceError> {
        let (device, mem) = (self.device, self.mem);
        add_used(device, index, self.queue(index)?, mem, head, len)
    }

    /// Interrupts the driver once if any of the queues `used` (those a pass
    /// returned chains on) asks for it; returns whether it did.
    pub fn signal_used(&mut self, used: &[usize]) -> Result<bool, DeviceError> {
        let mut notify = false;
        for &index in used {
            let (device, mem) = (self.device, self.mem);
            // Asked of every queue: the question updates its bookkeeping.
            notify |= needs_notification(device, index, self.queue(index)?, mem)?;
        }
        if notify {
            raise_used(self.device, self.interrupt.as_ref())?;
        }
        Ok(notify)
    }
}

/// One queue of the activated state borrowed apart (see
/// [`ActiveQueues::into_queue`]); use it with the free functions
/// [`add_used`], [`signal_used`] and [`enable_notification`].
pub struct ActiveQueue<'a> {
    /// The core's label, for errors and logs.
    pub device: &'a str,
    pub mem: &'a GuestMemoryMmap,
    pub interrupt: &'a Arc<dyn Interrupt>,
    pub queue: &'a mut Queue,
}

/// Which of the core's eventfds an event is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreEvent {
    /// The activate eventfd.
    Activate,
    /// The notification eventfd of queue `n`.
    Queue(usize),
    /// None of the core's: the device's own.
    Other,
}

/// The shared part of a virtio device (see the module docs).
pub struct VirtioCore {
    /// Device type id (section 5).
    device_type: u32,
    /// How logs and errors name the device (`"disk d0"`).
    label: String,
    avail_features: u64,
    acked_features: u64,
    queue_max_sizes: Vec<u16>,
    /// Signalled by the guest (through KVM's ioeventfd) when it adds
    /// buffers to a queue.
    queue_events: Vec<EventFd>,
    /// Written by `activate` so the event-manager thread starts watching
    /// the queue events.
    activate_evt: EventFd,
    /// Whether the queue events are registered with the event manager.
    queue_events_registered: bool,
    state: DeviceState,
}

impl std::fmt::Debug for VirtioCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioCore")
            .field("label", &self.label)
            .field("device_type", &self.device_type)
            .field("avail_features", &self.avail_features)
            .field("acked_features", &self.acked_features)
            .field("queue_max_sizes", &self.queue_max_sizes)
            .field("activated", &self.is_activated())
            .finish_non_exhaustive()
    }
}

impl VirtioCore {
    /// An inactive core of type `device_type` named `label` in logs and
    /// errors, offering `avail_features`, with one queue (and its eventfd)
    /// per entry of `queue_max_sizes`.
    pub fn new(
        device_type: u32,
        label: impl Into<String>,
        avail_features: u64,
        queue_max_sizes: &[u16],
    ) -> Result<Self, DeviceError> {
        let label = label.into();
        let eventfd = || {
            EventFd::new(EVENTFD_FLAGS).map_err(|source| DeviceError::EventFd {
                device: label.clone(),
                source,
            })
        };
        let queue_events = queue_max_sizes
            .iter()
            .map(|_| eventfd())
            .collect::<Result<_, _>>()?;
        let activate_evt = eventfd()?;
        Ok(VirtioCore {
            device_type,
            label,
            avail_features,
            acked_features: 0,
            queue_max_sizes: queue_max_sizes.to_vec(),
            queue_events,
            activate_evt,
            queue_events_registered: false,
            state: DeviceState::Inactive,
        })
    }

    /// Device type id (section 5).
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// How logs and errors name the device.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Feature bits offered.
    pub fn avail_features(&self) -> u64 {
        self.avail_features
    }

    /// Feature bits the driver accepted (a subset of the offered ones).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether feature bit `bit` was negotiated.
    pub fn has_feature(&self, bit: u32) -> bool {
        1u64.checked_shl(bit)
            .is_some_and(|mask| self.acked_features & mask != 0)
    }

    /// Takes the driver's features, dropping any not offered.
    pub fn set_acked_features(&mut self, acked: u64) {
        let unknown = acked & !self.avail_features;
        if unknown != 0 {
            debug!("{}: ignoring unoffered features {unknown:#x}", self.label);
        }
        self.acked_features = acked & self.avail_features;
    }

    /// Maximum size of each queue; its length is the number of queues.
    pub fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    /// The per-queue notification eventfds.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The activate eventfd.
    pub fn activate_event(&self) -> &EventFd {
        &self.activate_evt
    }

    /// The typed state.
    pub fn state(&self) -> &DeviceState {
        &self.state
    }

    /// Whether the device is activated.
    pub fn is_activated(&self) -> bool {
        matches!(self.state, DeviceState::Activated(_))
    }

    /// The activated state, if any.
    pub fn active(&self) -> Option<&ActiveState> {
        match &self.state {
            DeviceState::Activated(active) => Some(active),
            DeviceState::Inactive => None,
        }
    }

    /// The activated state borrowed apart for a pass over the queues;
    /// [`DeviceError::NotActivated`] before activation.
    pub fn active_mut(&mut self) -> Result<ActiveQueues<'_>, DeviceError> {
        match &mut self.state {
            DeviceState::Activated(active) => Ok(ActiveQueues {
                device: &self.label,
                mem: &active.mem,
                interrupt: &active.interrupt,
                queues: &mut active.queues,
            }),
            DeviceState::Inactive => Err(DeviceError::NotActivated {
                device: self.label.clone(),
            }),
        }
    }

    /// Refuses `queues` unless there is one per queue of the device and
    /// each is valid in `mem` (size, ring addresses, ready flag).
    pub fn check_queues(
        &self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
    ) -> Result<(), ActivateError> {
        if queues.len() != self.queue_max_sizes.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queue_max_sizes.len(),
                got: queues.len(),
            });
        }
        if let Some(index) = queues.iter().position(|queue| !queue.is_valid(mem)) {
            return Err(ActivateError::BadQueue { index });
        }
        Ok(())
    }

    /// Starts the device with the driver's queues (after
    /// [`VirtioCore::check_queues`]) and wakes the event thread; if that
    /// fails, the device is left inactive.
    pub fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.check_queues(&mem, &queues)?;
        if self.is_activated() {
            warn!("{}: activated twice without a reset", self.label);
        }
        self.state = DeviceState::Activated(ActiveState {
            mem,
            interrupt,
            queues,
        });
        if let Err(err) = self.activate_evt.write(1) {
            self.state = DeviceState::Inactive;
            return Err(err.into());
        }
        debug!(
            "{}: activated (features {:#x})",
            self.label, self.acked_features
        );
        Ok(())
    }

    /// Drops memory, queues and interrupt and clears the acked features
    /// (a driver reset, section 2.1). The queue events stay registered.
    pub fn reset(&mut self) {
        self.state = DeviceState::Inactive;
        self.acked_features = 0;
        debug!("{}: reset", self.label);
    }

    /// Writes the activate eventfd without activating, so the event thread
    /// looks at the device (e.g. after a reset that left it work).
    pub fn wake_event_thread(&self) {
        if let Err(err) = self.activate_evt.write(1) {
            warn!("{}: waking the event thread: {err}", self.label);
        }
    }

    /// Returns chain `head` on queue `index` (see [`add_used`]).
    pub fn add_used(&mut self, index: usize, head: u16, len: u32) -> Result<bool, DeviceError> {
        self.active_mut()?.add_used(index, head, len)
    }

    /// Interrupts the driver once if any of the queues `used` asks for it
    /// (see [`ActiveQueues::signal_used`]).
    pub fn signal_used(&mut self, used: &[usize]) -> Result<bool, DeviceError> {
        self.active_mut()?.signal_used(used)
    }

    /// Where each queue's rings stand (empty before activation), for a
    /// snapshot.
    pub fn queue_positions(&self) -> Vec<QueuePosition> {
        self.active()
            .map(|active| {
                active
                    .queues
                    .iter()
                    .map(|queue| QueuePosition {
                        next_avail: queue.next_avail(),
                        next_used: queue.next_used(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Registers the activate eventfd (from `MutEventSubscriber::init`).
    pub fn register_activate_event(&self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            error!("{}: registering the activate event: {err:?}", self.label);
        }
    }

    /// Starts watching the queue events (once: they stay registered across
    /// resets, and events while inactive are drained and ignored). Returns
    /// whether they are registered.
    pub fn register_queue_events(&mut self, ops: &mut EventOps) -> bool {
        if self.queue_events_registered {
            return true;
        }
        for evt in &self.queue_events {
            if let Err(err) = ops.add(Events::new(evt, EventSet::IN)) {
                error!("{}: registering a queue event: {err:?}", self.label);
                return false;
            }
        }
        self.queue_events_registered = true;
        true
    }

    /// Whether the queue events are registered with the event manager.
    pub fn queue_events_registered(&self) -> bool {
        self.queue_events_registered
    }

    /// Which of the core's eventfds `fd` is.
    pub fn classify(&self, fd: RawFd) -> CoreEvent {
        if fd == self.activate_evt.as_raw_fd() {
            CoreEvent::Activate
        } else if let Some(index) = self.queue_events.iter().position(|e| e.as_raw_fd() == fd) {
            CoreEvent::Queue(index)
        } else {
            CoreEvent::Other
        }
    }

    /// Handles an event on `fd` if it is one of the core's: drains the
    /// eventfd and, on the activate event of an activated device, registers
    /// the queue events. Returns which it was; the device then processes
    /// its queues (if activated) or handles its own fd.
    pub fn handle_event(&mut self, fd: RawFd, ops: &mut EventOps) -> CoreEvent {
        let event = self.classify(fd);
        match event {
            CoreEvent::Activate => {
                drain(&self.activate_evt, &self.label, "the activate event");
                if self.is_activated() {
                    self.register_queue_events(ops);
                }
            }
            CoreEvent::Queue(index) => {
                if let Some(evt) = self.queue_events.get(index) {
                    drain(evt, &self.label, &format!("queue {index}'s event"));
                }
            }
            CoreEvent::Other => {}
        }
        event
    }
}

/// Reads `evt` to reset it; `EAGAIN` (a spurious wakeup) is not an error.
fn drain(evt: &EventFd, label: &str, what: &str) {
    if let Err(err) = evt.read() {
        if err.kind() != std::io::ErrorKind::WouldBlock {
            warn!("{label}: reading {what}: {err}");
        }
    }
}

/// A [`DeviceError::Queue`] of queue `index` of `device`.
pub fn queue_error(device: &str, index: usize, source: virtio_queue::Error) -> DeviceError {
    DeviceError::Queue {
        device: device.to_string(),
        index,
        source,
    }
}

/// Returns chain `head` with `len` bytes written to the driver on `queue`
/// (queue `index` of `device`); `Ok(false)` when the head index is bad (the
/// guest only hurts itself: the chain is dropped and logged).
pub fn add_used(
    device: &str,
    index: usize,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<bool, DeviceError> {
    match queue.add_used(mem, head, len) {
        Ok(()) => Ok(true),
        Err(virtio_queue::Error::InvalidDescriptorIndex) => {
            // At debug: a guest could otherwise flood the log.
            debug!("{device}: queue {index}: dropping chain with bad head index {head}");
            Ok(false)
        }
        Err(source) => Err(queue_error(device, index, source)),
    }
}

/// Whether the driver wants an interrupt for what `queue` returned since
/// it was last asked: always without `VIRTIO_F_RING_EVENT_IDX`, with it
/// when the used index moved past the driver's `used_event` (section
/// 2.7.10).
pub fn needs_notification(
    device: &str,
    index: usize,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<bool, DeviceError> {
    queue
        .needs_notification(mem)
        .map_err(|source| queue_error(device, index, source))
}

/// Interrupts the driver for `queue` (queue `index` of `device`) if it asks
/// for it (see [`needs_notification`]); returns whether it did.
pub fn signal_used(
    device: &str,
    index: usize,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &dyn Interrupt,
) -> Result<bool, DeviceError> {
    let notify = needs_notification(device, index, queue, mem)?;
    if notify {
        raise_used(device, interrupt)?;
    }
    Ok(notify)
}

/// Raises the used-buffer interrupt (section 4.2.2: `InterruptStatus` bit
/// 0).
pub fn raise_used(device: &str, interrupt: &dyn Interrupt) -> Result<(), DeviceError> {
    interrupt
        .trigger(INTERRUPT_USED_BUFFER)
        .map_err(|source| DeviceError::Interrupt {
            device: device.to_string(),
            source,
        })
}

/// Asks the driver to kick `queue` when it adds the next chain (with
/// `VIRTIO_F_RING_EVENT_IDX`: `avail_event` = the next chain the device
/// pops, section 2.7.10); returns whether chains were added before that
/// took effect, which no kick will announce.
///
/// An available index more than the queue size ahead of the device is the
/// driver's error (section 2.7.6) and an error here: no chain can be popped
/// from such a queue, and a caller that looked again for the "added" chains
/// would spin forever (the fuzzer found this in the net device).
pub fn enable_notification(
    device: &str,
    index: usize,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<bool, DeviceError> {
    let added = queue
        .enable_notification(mem)
        .map_err(|source| queue_error(device, index, source))?;
    if added {
        let avail = queue
            .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
            .map_err(|source| queue_error(device, index, source))?;
        if avail.0.wrapping_sub(queue.next_avail()) > queue.size() {
            return Err(queue_error(
                device,
                index,
                virtio_queue::Error::InvalidAvailRingIndex,
            ));
        }
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use std::sync::Mutex;

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use vm_memory::GuestAddress;

    use super::*;
    use crate::vmm::devices::virtio::test_utils::{
        memory, GuestQueue, TestInterrupt, F_WRITE, MEM_SIZE,
    };
    use crate::vmm::devices::virtio::{VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1};

    /// Queue size of the tests.
    const SIZE: u16 = 16;
    /// Where each test queue's descriptor table starts.
    const BASES: [u64; 2] = [0x1000, 0x4000];
    /// Where test buffers go.
    const DATA: u64 = 0x1_0000;
    /// Offered features of the tests: VERSION_1 and bit 3.
    const FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << 3);

    struct Fixture {
        core: VirtioCore,
        mem: GuestMemoryMmap,
        vqs: Vec<GuestQueue>,
        interrupt: Arc<TestInterrupt>,
    }

    impl Fixture {
        fn new() -> Self {
            let mem = memory();
            Fixture {
                core: VirtioCore::new(TYPE_BLOCK, "test dev", FEATURES, &[SIZE, SIZE]).unwrap(),
                vqs: BASES
                    .iter()
                    .map(|&base| GuestQueue::new(&mem, SIZE, base))
                    .collect(),
                mem,
                interrupt: Arc::new(TestInterrupt::default()),
            }
        }

        fn queues(&self) -> Vec<Queue> {
            self.vqs.iter().map(GuestQueue::create_queue).collect()
        }

        fn activate_with(&mut self, queues: Vec<Queue>) -> Result<(), ActivateError> {
            self.core
                .activate(self.mem.clone(), self.interrupt.clone(), queues)
        }

        fn activate(&mut self) {
            let queues = self.queues();
            self.activate_with(queues).unwrap();
        }

        /// Makes one one-descriptor chain available on queue `index`, pops
        /// it on the device side and returns its head.
        fn pop(&mut self, index: usize) -> u16 {
            self.vqs[index].add_chain(&[(DATA, 64, F_WRITE)]);
            let mut active = self.core.active_mut().unwrap();
            let mem = active.mem;
            let chain = active
                .queue(index)
                .unwrap()
                .pop_descriptor_chain(mem)
                .unwrap();
            chain.head_index()
        }

        /// Pops and returns one chain on queue `index`.
        fn use_one(&mut self, index: usize) {
            let head = self.pop(index);
            assert!(self.core.add_used(index, head, 64).unwrap());
        }
    }

    #[test]
    fn new_core_is_inactive_with_its_eventfds() {
        let f = Fixture::new();
        assert_eq!(f.core.device_type(), TYPE_BLOCK);
        assert_eq!(f.core.label(), "test dev");
        assert_eq!(f.core.queue_max_sizes(), &[SIZE, SIZE]);
        assert_eq!(f.core.queue_events().len(), 2);
        assert_eq!(f.core.avail_features(), FEATURES);
        assert_eq!(f.core.acked_features(), 0);
        assert!(!f.core.is_activated());
        assert!(matches!(f.core.state(), DeviceState::Inactive));
        assert!(f.core.queue_positions().is_empty());
        assert!(!f.core.queue_events_registered());
    }

    #[test]
    fn acked_features_are_masked_by_the_offered_ones() {
        let mut f = Fixture::new();
        f.core.set_acked_features(u64::MAX);
        assert_eq!(f.core.acked_features(), FEATURES);
        f.core.set_acked_features((1 << 40) | (1 << 3));
        assert_eq!(f.core.acked_features(), 1 << 3);
        assert!(f.core.has_feature(3));
        assert!(!f.core.has_feature(VIRTIO_F_VERSION_1));
        assert!(!f.core.has_feature(40));
        // Bits past 63 are never negotiated (and don't overflow).
        assert!(!f.core.has_feature(64));
        assert!(!f.core.has_feature(u32::MAX));
    }

    #[test]
    fn activation_needs_one_queue_per_device_queue() {
        let mut f = Fixture::new();
        for count in [0, 1, 3] {
            let queues = (0..count).map(|_| f.vqs[0].create_queue()).collect();
            let err = f.activate_with(queues).unwrap_err();
            assert!(
                matches!(err, ActivateError::QueueCount { expected: 2, got } if got == count),
                "{err}"
            );
            assert!(!f.core.is_activated());
        }
        // Nothing woke the event thread.
        assert!(f.core.activate_event().read().is_err());
    }

    #[test]
    fn activation_refuses_invalid_queues() {
        let mut f = Fixture::new();
        // Not ready.
        let mut queues = f.queues();
        queues[1].set_ready(false);
        let err = f.activate_with(queues).unwrap_err();
        assert!(matches!(err, ActivateError::BadQueue { index: 1 }), "{err}");
        // Rings outside guest memory (a hostile driver's addresses).
        let mut queues = f.queues();
        let end = u64::try_from(MEM_SIZE).unwrap();
        queues[0]
            .try_set_used_ring_address(GuestAddress(end - 8))
            .unwrap();
        let err = f.activate_with(queues).unwrap_err();
        assert!(matches!(err, ActivateError::BadQueue { index: 0 }), "{err}");
        assert!(!f.core.is_activated());
        assert!(matches!(
            f.core.active_mut(),
            Err(DeviceError::NotActivated { .. })
        ));
    }

    #[test]
    fn activation_stores_the_queues_and_wakes_the_event_thread() {
        let mut f = Fixture::new();
        f.activate();
        assert!(f.core.is_activated());
        let active = f.core.active().unwrap();
        assert_eq!(active.queues.len(), 2);
        assert_eq!(active.queues[1].desc_table(), BASES[1]);
        assert_eq!(f.core.activate_event().read().unwrap(), 1);
        assert_eq!(f.core.queue_positions(), vec![QueuePosition::default(); 2]);
    }

    #[test]
    fn activation_twice_takes_the_new_queues() {
        let mut f = Fixture::new();
        f.activate();
        f.use_one(0);
        assert_eq!(f.core.queue_positions()[0].next_used, 1);
        // A second activation without a reset is logged and replaces the
        // queues (here: fresh ones, at position 0 again).
        f.activate();
        assert!(f.core.is_activated());
        assert_eq!(f.core.queue_positions()[0].next_used, 0);
        assert_eq!(f.core.activate_event().read().unwrap(), 2);
    }

    #[test]
    fn activation_fails_cleanly_when_the_event_thread_cannot_be_woken() {
        let mut f = Fixture::new();
        // An eventfd counter at its maximum refuses the next write (EAGAIN).
        f.core
            .activate_event()
            .write(0xffff_ffff_ffff_fffe)
            .unwrap();
        let err = f.activate_with(f.queues()).unwrap_err();
        assert!(matches!(err, ActivateError::Io(_)), "{err}");
        assert!(!f.core.is_activated());
    }

    #[test]
    fn reset_deactivates_and_clears_the_acked_features() {
        let mut f = Fixture::new();
        f.core.set_acked_features(FEATURES);
        f.activate();
        f.use_one(1);
        f.core.reset();
        assert!(!f.core.is_activated());
        assert_eq!(f.core.acked_features(), 0);
        assert!(f.core.queue_positions().is_empty());
        assert!(matches!(
            f.core.add_used(0, 0, 0),
            Err(DeviceError::NotActivated { .. })
        ));
        let err = f.core.signal_used(&[0]).unwrap_err();
        assert_eq!(err.to_string(), "test dev is not activated");
        // The eventfds outlive a reset, and the device starts again.
        assert_eq!(f.core.queue_events().len(), 2);
        f.activate();
        assert!(f.core.is_activated());
    }

    #[test]
    fn add_used_and_signal_used_without_event_idx() {
        let mut f = Fixture::new();
        f.activate();
        f.use_one(0);
        assert_eq!(f.vqs[0].used_idx(), 1);
        assert_eq!(f.vqs[0].used_elem(0), (0, 64));
        assert!(f.core.signal_used(&[0]).unwrap());
        assert_eq!(f.interrupt.count(), 1);
        assert_eq!(
            f.interrupt.status.load(Ordering::SeqCst),
            INTERRUPT_USED_BUFFER
        );
        // Every pass interrupts; one interrupt for several queues.
        f.use_one(0);
        f.use_one(1);
        assert!(f.core.signal_used(&[0, 1]).unwrap());
        assert_eq!(f.interrupt.count(), 2);
        assert_eq!(
            f.core.queue_positions(),
            vec![
                QueuePosition {
                    next_avail: 2,
                    next_used: 2
                },
                QueuePosition {
                    next_avail: 1,
                    next_used: 1
                },
            ]
        );
        // Nothing used: nothing asked, no interrupt.
        assert!(!f.core.signal_used(&[]).unwrap());
        assert_eq!(f.interrupt.count(), 2);
    }

    #[test]
    fn signal_used_honours_event_idx() {
        let mut f = Fixture::new();
        let mut queues = f.queues();
        for queue in &mut queues {
            queue.set_event_idx(true);
        }
        f.activate_with(queues).unwrap();
        // The driver wants an interrupt once the used index passes 0.
        f.vqs[0].set_used_event(0);
        f.use_one(0);
        assert!(f.core.signal_used(&[0]).unwrap());
        assert_eq!(f.interrupt.count(), 1);
        // ... then only once it passes 4: used index 2..=4 stay quiet.
        f.vqs[0].set_used_event(4);
        for _ in 0..3 {
            f.use_one(0);
            assert!(!f.core.signal_used(&[0]).unwrap());
        }
        assert_eq!(f.interrupt.count(), 1);
        f.use_one(0);
        assert!(f.core.signal_used(&[0]).unwrap());
        assert_eq!(f.interrupt.count(), 2);
        // A quiet queue next to one that asks: one interrupt.
        f.vqs[1].set_used_event(0);
        f.use_one(0);
        f.use_one(1);
        assert!(f.core.signal_used(&[0, 1]).unwrap());
        assert_eq!(f.interrupt.count(), 3);
    }

    #[test]
    fn bad_head_and_queue_indices_are_errors_not_panics() {
        let mut f = Fixture::new();
        f.activate();
        // A head past the table (a hostile guest's) is dropped.
        assert!(!f.core.add_used(0, SIZE + 100, 8).unwrap());
        assert_eq!(f.vqs[0].used_idx(), 0);
        // A queue the device doesn't have is an error.
        let err = f.core.add_used(2, 0, 0).unwrap_err();
        assert!(
            matches!(err, DeviceError::NoQueue { index: 2, .. }),
            "{err}"
        );
        let err = f.core.signal_used(&[0, 9]).unwrap_err();
        assert!(
            matches!(err, DeviceError::NoQueue { index: 9, .. }),
            "{err}"
        );
        assert_eq!(f.interrupt.count(), 0);
    }

    #[test]
    fn an_available_index_past_the_queue_is_an_error_not_more_chains() {
        use vm_memory::Bytes as _;
        let mem = memory();
        let mut vq = GuestQueue::new(&mem, SIZE, BASES[0]);
        let mut queue = vq.create_queue();
        queue.set_event_idx(true);
        // Three real chains: "added", and poppable.
        for _ in 0..3 {
            vq.add_chain(&[(0x1_0000, 8, F_WRITE)]);
        }
        assert!(enable_notification("net t", 0, &mut queue, &mem).unwrap());
        // A driver that writes an index far ahead: nothing can be popped,
        // and saying "added" would make the caller look again forever.
        mem.write_obj(SIZE * 3, GuestAddress(vq.avail_ring() + 2))
            .unwrap();
        assert!(queue.pop_descriptor_chain(&mem).is_none());
        let err = enable_notification("net t", 0, &mut queue, &mem).unwrap_err();
        assert!(
            matches!(
                err,
                DeviceError::Queue {
                    source: virtio_queue::Error::InvalidAvailRingIndex,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn device_errors_name_the_device() {
        let err = queue_error("net tap0", 1, virtio_queue::Error::InvalidDescriptorIndex);
        assert!(err.to_string().starts_with("net tap0: queue 1: "), "{err}");
        let err = raise_used("disk d0", &FailingInterrupt).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("disk d0: raising the interrupt: "),
            "{err}"
        );
    }

    /// An interrupt whose irqfd is gone.
    struct FailingInterrupt;

    impl Interrupt for FailingInterrupt {
        fn trigger(&self, _status: u32) -> std::io::Result<()> {
            Err(std::io::Error::from_raw_os_error(libc::EBADF))
        }
    }

    #[test]
    fn a_failing_interrupt_is_an_error() {
        let mut f = Fixture::new();
        let queues = f.queues();
        f.core
            .activate(f.mem.clone(), Arc::new(FailingInterrupt), queues)
            .unwrap();
        f.use_one(0);
        assert!(matches!(
            f.core.signal_used(&[0]),
            Err(DeviceError::Interrupt { .. })
        ));
    }

    #[test]
    fn classify_tells_the_core_fds_apart() {
        let f = Fixture::new();
        let core = &f.core;
        assert_eq!(
            core.classify(core.activate_event().as_raw_fd()),
            CoreEvent::Activate
        );
        assert_eq!(
            core.classify(core.queue_events()[1].as_raw_fd()),
            CoreEvent::Queue(1)
        );
        let other = EventFd::new(EVENTFD_FLAGS).unwrap();
        assert_eq!(core.classify(other.as_raw_fd()), CoreEvent::Other);
        assert_eq!(core.classify(-1), CoreEvent::Other);
    }

    /// A subscriber that is only a core, recording what it was told.
    struct Subscriber {
        core: VirtioCore,
        seen: Vec<CoreEvent>,
    }

    impl MutEventSubscriber for Subscriber {
        fn init(&mut self, ops: &mut EventOps) {
            self.core.register_activate_event(ops);
        }

        fn process(&mut self, events: Events, ops: &mut EventOps) {
            let event = self.core.handle_event(events.fd(), ops);
            self.seen.push(event);
        }
    }

    type Manager = EventManager<Arc<Mutex<Subscriber>>>;

    fn drain(manager: &mut Manager) -> usize {
        let mut total = 0;
        for _ in 0..100 {
            let n = manager.run_with_timeout(0).unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
        panic!("the event loop doesn't settle");
    }

    #[test]
    fn queue_events_are_watched_from_activation_on() {
        let f = Fixture::new();
        let sub = Arc::new(Mutex::new(Subscriber {
            core: VirtioCore::new(TYPE_BLOCK, "sub", FEATURES, &[SIZE, SIZE]).unwrap(),
            seen: Vec::new(),
        }));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(sub.clone());

        // Before activation only the activate event is watched.
        sub.lock().unwrap().core.queue_events()[0].write(1).unwrap();
        assert_eq!(drain(&mut manager), 0);

        // Activation: the queue events are registered, and the one
        // notified before is not lost.
        let queues = f.queues();
        sub.lock()
            .unwrap()
            .core
            .activate(f.mem.clone(), f.interrupt.clone(), queues)
            .unwrap();
        assert_eq!(drain(&mut manager), 2);
        {
            let sub = sub.lock().unwrap();
            assert!(sub.core.queue_events_registered());
            assert_eq!(sub.seen, vec![CoreEvent::Activate, CoreEvent::Queue(0)]);
        }

        // After a reset the queue events stay registered (and drained); a
        // wakeup without activation registers nothing twice.
        sub.lock().unwrap().core.reset();
        sub.lock().unwrap().core.queue_events()[1].write(1).unwrap();
        sub.lock().unwrap().core.wake_event_thread();
        assert_eq!(drain(&mut manager), 2);
        let seen = sub.lock().unwrap().seen.split_off(2);
        assert!(seen.contains(&CoreEvent::Queue(1)), "{seen:?}");
        assert!(seen.contains(&CoreEvent::Activate), "{seen:?}");

        // Re-activation doesn't register the queue events again.
        let queues = f.queues();
        sub.lock()
            .unwrap()
            .core
            .activate(f.mem.clone(), f.interrupt.clone(), queues)
            .unwrap();
        assert_eq!(drain(&mut manager), 1);
    }

    /// A device that is only a core, to test the provided trait methods.
    struct Device {
        core: VirtioCore,
        config: [u8; 4],
        fail_activate: bool,
        resets: usize,
    }

    impl VirtioDevice for Device {
        fn core(&self) -> &VirtioCore {
            &self.core
        }
        fn core_mut(&mut self) -> &mut VirtioCore {
            &mut self.core
        }
        fn config_space(&self) -> &[u8] {
            &self.config
        }
        fn on_activate(&mut self, queues: &mut [Queue]) -> Result<(), ActivateError> {
            if self.fail_activate {
                return Err(ActivateError::Io(std::io::Error::other("refused")));
            }
            for queue in queues {
                queue.set_event_idx(true);
            }
            Ok(())
        }
        fn on_reset(&mut self) -> bool {
            self.resets += 1;
            true
        }
    }

    #[test]
    fn the_trait_provides_the_rest_on_top_of_the_core() {
        let f = Fixture::new();
        let mut dev = Device {
            core: VirtioCore::new(TYPE_BLOCK, "dev", FEATURES, &[SIZE, SIZE]).unwrap(),
            config: [1, 2, 3, 4],
            fail_activate: true,
            resets: 0,
        };
        let device: &mut dyn VirtioDevice = &mut dev;
        assert_eq!(device.device_type(), TYPE_BLOCK);
        assert_eq!(device.queue_max_sizes(), &[SIZE, SIZE]);
        assert_eq!(device.avail_features(), FEATURES);
        device.set_acked_features(u64::MAX);
        assert_eq!(device.acked_features(), FEATURES);
        let mut data = [0xffu8; 4];
        device.read_config(2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        device.write_config(0, &[9]);
        device.read_config(0, &mut data);
        assert_eq!(data, [1, 2, 3, 4]);

        // The core checks first, then the hook; a refusing hook leaves the
        // device inactive.
        let err = device
            .activate(f.mem.clone(), f.interrupt.clone(), vec![])
            .unwrap_err();
        assert!(matches!(err, ActivateError::QueueCount { .. }), "{err}");
        let err = device
            .activate(f.mem.clone(), f.interrupt.clone(), f.queues())
            .unwrap_err();
        assert!(matches!(err, ActivateError::Io(_)), "{err}");
        assert!(!device.is_activated());
        dev.fail_activate = false;
        let device: &mut dyn VirtioDevice = &mut dev;
        device
            .activate(f.mem.clone(), f.interrupt.clone(), f.queues())
            .unwrap();
        assert!(device.is_activated());
        assert_eq!(device.queue_positions().len(), 2);
        assert!(dev
            .core
            .active()
            .unwrap()
            .queues
            .iter()
            .all(Queue::event_idx_enabled));

        let device: &mut dyn VirtioDevice = &mut dev;
        assert!(device.reset());
        assert!(!device.is_activated());
        assert_eq!(device.acked_features(), 0);
        assert_eq!(dev.resets, 1);
    }
}
