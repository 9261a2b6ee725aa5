//! The virtio-mmio transport, version 2 ("modern"; virtio 1.2, section 4.2).
//!
//! One [`MmioTransport`] fronts one [`VirtioDevice`] in a 4 KiB window of
//! guest physical address space. The VMM's MMIO bus forwards guest accesses
//! to [`MmioTransport::read`] / [`MmioTransport::write`] with the offset
//! relative to the window. The transport keeps the driver-visible registers
//! (feature selection, queue setup, device status), runs the device status
//! state machine of section 3.1.1 and activates the device when the driver
//! sets `DRIVER_OK`.
//!
//! Notifications and interrupts bypass the transport on the fast path:
//! - The VMM registers each of the device's queue [`EventFd`]s with KVM as an
//!   ioeventfd at `window base + `[`MmioTransport::queue_notify_offset`],
//!   matching the queue index (a 4-byte datamatch), so a guest write to
//!   `QueueNotify` wakes the device without a VM exit to userspace. A write
//!   that does reach the transport (no ioeventfd registered) signals the same
//!   event, so both paths behave alike.
//! - The transport's [`Interrupt`] sets bits in `InterruptStatus` and writes
//!   the irqfd (`irq_evt`) the VMM registered with KVM for the device's GSI.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, info, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::vmm::bus::BusDevice;
use crate::vmm::snapshot::{QueueSnapshot, TransportSnapshot};

use super::{
    ActivateError, Interrupt, VirtioDevice, INTERRUPT_CONFIG_CHANGE, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_VERSION_1,
};

/// `MagicValue`: "virt" in little-endian (section 4.2.2).
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// `Version` of the modern (non-legacy) register layout (section 4.2.2).
pub const MMIO_VERSION: u32 = 2;
/// `VendorID`: "HUSK" in little-endian (section 4.2.2 leaves the value free).
pub const MMIO_VENDOR_ID: u32 = 0x4b53_5548;
/// Size of the MMIO window of one device.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// Register offsets within the window (virtio 1.2, section 4.2.2, table
/// "MMIO Device Register Layout").
mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// Width of every control register access (section 4.2.2.2: "32-bit wide and
/// aligned reads and writes").
const REGISTER_ACCESS_SIZE: usize = 4;

/// Device status bits (virtio 1.2, section 2.1).
mod status {
    pub const ACKNOWLEDGE: u32 = 0x01;
    pub const DRIVER: u32 = 0x02;
    pub const DRIVER_OK: u32 = 0x04;
    pub const FEATURES_OK: u32 = 0x08;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;

    /// The cumulative values of the initialization sequence (section 3.1.1),
    /// in the order a driver must set them.
    pub const INIT_ACKNOWLEDGED: u32 = ACKNOWLEDGE;
    pub const INIT_DRIVER: u32 = INIT_ACKNOWLEDGED | DRIVER;
    pub const INIT_FEATURES_OK: u32 = INIT_DRIVER | FEATURES_OK;
    pub const INIT_DRIVER_OK: u32 = INIT_FEATURES_OK | DRIVER_OK;
}

/// The transport's [`Interrupt`]: sets `InterruptStatus` bits and signals the
/// device's irqfd.
#[derive(Debug)]
struct MmioInterrupt {
    /// The `InterruptStatus` register, shared with the device's thread.
    status: AtomicU32,
    /// Registered with KVM as an irqfd for the device's GSI.
    irq_evt: EventFd,
}

impl Interrupt for MmioInterrupt {
    fn trigger(&self, status: u32) -> std::io::Result<()> {
        self.status.fetch_or(status, Ordering::SeqCst);
        self.irq_evt.write(1)
    }
}

/// Driver-written setup registers of one virtqueue (section 4.2.2).
#[derive(Debug, Clone, Copy, Default)]
struct QueueConfig {
    /// `QueueNum`; 0 until the driver writes it (then the device's maximum
    /// is used, as the spec's "reset value" of a queue is its maximum).
    size: u32,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

/// Replaces the low or high 32 bits of a 64-bit register pair.
fn set_half(target: &mut u64, value: u32, high: bool) {
    if high {
        *target = (*target & 0x0000_0000_ffff_ffff) | (u64::from(value) << 32);
    } else {
        *target = (*target & 0xffff_ffff_0000_0000) | u64::from(value);
    }
}

/// Returns the low (`select` 0) or high (`select` 1) word of a feature set;
/// other selectors read as 0 (section 4.2.2: `DeviceFeaturesSel`).
fn feature_word(features: u64, select: u32) -> u32 {
    match select {
        // Truncation picks the selected word.
        0 => (features & 0xffff_ffff) as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}

/// A virtio device behind the virtio-mmio version 2 register interface.
pub struct MmioTransport {
    mem: GuestMemoryMmap,
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<MmioInterrupt>,
    /// The device's queue maximum sizes, read once (they never change).
    queue_max_sizes: Vec<u16>,
    /// Driver-written queue registers, one per device queue.
    queues: Vec<QueueConfig>,
    /// `Status` (section 2.1).
    device_status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    /// `DriverFeatures`, both words as written by the driver.
    driver_features: u64,
    queue_sel: u32,
    /// `ConfigGeneration`: constant, as no device changes its config space
    /// behind the driver's back yet.
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("queues", &self.queues)
            .field("device_status", &self.device_status)
            .field("driver_features", &self.driver_features)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Creates the transport for `device`. `irq_evt` is the eventfd the VMM
    /// registers with KVM as the irqfd of the device's GSI (keep a clone
    /// made with [`EventFd::try_clone`], or use [`MmioTransport::irq_evt`]).
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        irq_evt: EventFd,
    ) -> Self {
        let queue_max_sizes = lock(&device).queue_max_sizes().to_vec();
        let queues = vec![QueueConfig::default(); queue_max_sizes.len()];
        MmioTransport {
            mem,
            device,
            interrupt: Arc::new(MmioInterrupt {
                status: AtomicU32::new(0),
                irq_evt,
            }),
            queue_max_sizes,
            queues,
            device_status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
        }
    }

    /// Offset of the `QueueNotify` register in the window, where the VMM
    /// registers the queue eventfds as ioeventfds (datamatch: queue index).
    pub fn queue_notify_offset() -> u64 {
        reg::QUEUE_NOTIFY
    }

    /// The interrupt eventfd given to [`MmioTransport::new`] (to register as
    /// an irqfd with KVM).
    pub fn irq_evt(&self) -> &EventFd {
        &self.interrupt.irq_evt
    }

    /// The device behind this transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The transport's registers and the device's ring positions, for a
    /// snapshot (taken while the vCPUs and the event loop stand still).
    pub fn save(&self) -> TransportSnapshot {
        let device = lock(&self.device);
        let positions = device.queue_positions();
        TransportSnapshot {
            device_type: device.device_type(),
            device_status: self.device_status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt.status.load(Ordering::SeqCst),
            config_generation: self.config_generation,
            queues: self
                .queues
                .iter()
                .enumerate()
                .map(|(i, q)| QueueSnapshot {
                    size: q.size,
                    ready: q.ready,
                    desc_table: q.desc_table,
                    avail_ring: q.avail_ring,
                    used_ring: q.used_ring,
                    position: positions.get(i).copied().unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// Puts saved registers back over a new device of the same type: a
    /// device the driver had started is activated with its queues at the
    /// saved ring positions. Then every queue is signalled once (a
    /// notification the guest wrote just before the snapshot was never
    /// processed) and a pending interrupt is raised again.
    pub fn restore(&mut self, snap: &TransportSnapshot) -> Result<(), String> {
        let device_type = lock(&self.device).device_type();
        if snap.device_type != device_type {
            return Err(format!(
                "virtio device type {} in the snapshot, {device_type} in this VM",
                snap.device_type
            ));
        }
        if snap.queues.len() != self.queues.len() {
            return Err(format!(
                "{} queues in the snapshot, the device has {}",
                snap.queues.len(),
                self.queues.len()
            ));
        }
        self.device_status = snap.device_status;
        self.device_features_sel = snap.device_features_sel;
        self.driver_features_sel = snap.driver_features_sel;
        self.driver_features = snap.driver_features;
        self.queue_sel = snap.queue_sel;
        self.config_generation = snap.config_generation;
        for (q, s) in self.queues.iter_mut().zip(&snap.queues) {
            *q = QueueConfig {
                size: s.size,
                ready: s.ready,
                desc_table: s.desc_table,
                avail_ring: s.avail_ring,
                used_ring: s.used_ring,
            };
        }
        let st = snap.device_status;
        if st & status::FEATURES_OK != 0 {
            lock(&self.device).set_acked_features(snap.driver_features);
        }
        let broken = st & (status::FAILED | status::DEVICE_NEEDS_RESET) != 0;
        if st & status::DRIVER_OK != 0 && !broken {
            let mut queues = self.build_queues().map_err(|e| e.to_string())?;
            for (q, s) in queues.iter_mut().zip(&snap.queues) {
                q.set_next_avail(s.position.next_avail);
                q.set_next_used(s.position.next_used);
            }
            let interrupt: Arc<dyn Interrupt> = self.interrupt.clone();
            let mut device = lock(&self.device);
            device
                .activate(self.mem.clone(), interrupt, queues)
                .map_err(|e| e.to_string())?;
            for evt in device.queue_events() {
                evt.write(1).map_err(|e| e.to_string())?;
            }
        }
        self.interrupt
            .status
            .store(snap.interrupt_status, Ordering::SeqCst);
        if snap.interrupt_status != 0 {
            self.interrupt.irq_evt.write(1).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Handles a guest read of `data.len()` bytes at `offset` in the window.
    /// Invalid accesses are logged and read as zeros.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= reg::CONFIG {
            if !is_config_access_size(data.len()) {
                warn!(
                    "virtio-mmio: ignoring {}-byte config space read at {offset:#x}",
                    data.len()
                );
                return;
            }
            lock(&self.device).read_config(offset - reg::CONFIG, data);
            return;
        }
        if !is_register_access(offset, data.len()) {
            warn!(
                "virtio-mmio: ignoring {}-byte register read at {offset:#x}",
                data.len()
            );
            return;
        }
        let value = match offset {
            reg::MAGIC_VALUE => MMIO_MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => lock(&self.device).device_type(),
            reg::VENDOR_ID => MMIO_VENDOR_ID,
            reg::DEVICE_FEATURES => feature_word(
                lock(&self.device).avail_features(),
                self.device_features_sel,
            ),
            // A queue that does not exist reads 0 (section 4.2.2: QueueNumMax).
            reg::QUEUE_NUM_MAX => self.selected_max_size().map_or(0, u32::from),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt.status.load(Ordering::SeqCst),
            reg::STATUS => self.device_status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                warn!("virtio-mmio: ignoring read of write-only or unknown register {offset:#x}");
                return;
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Handles a guest write of `data` at `offset` in the window. Invalid
    /// accesses are logged and ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if !is_config_access_size(data.len()) {
                warn!(
                    "virtio-mmio: ignoring {}-byte config space write at {offset:#x}",
                    data.len()
                );
                return;
            }
            lock(&self.device).write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; REGISTER_ACCESS_SIZE]>::try_from(data) else {
            warn!(
                "virtio-mmio: ignoring {}-byte register write at {offset:#x}",
                data.len()
            );
            return;
        };
        if !is_register_access(offset, data.len()) {
            warn!("virtio-mmio: ignoring unaligned register write at {offset:#x}");
            return;
        }
        let value = u32::from_le_bytes(bytes);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!value, Ordering::SeqCst);
            }
            reg::STATUS => self.write_status(value),
            _ => warn!("virtio-mmio: ignoring write of read-only or unknown register {offset:#x}"),
        }
    }

    fn selected_max_size(&self) -> Option<u16> {
        let index = usize::try_from(self.queue_sel).ok()?;
        self.queue_max_sizes.get(index).copied()
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        let index = usize::try_from(self.queue_sel).ok()?;
        self.queues.get(index)
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features are negotiated between DRIVER and FEATURES_OK (3.1.1 step 4).
        if self.device_status != status::INIT_DRIVER {
            warn!(
                "virtio-mmio: ignoring DriverFeatures write in status {:#x}",
                self.device_status
            );
            return;
        }
        match self.driver_features_sel {
            0 => set_half(&mut self.driver_features, value, false),
            1 => set_half(&mut self.driver_features, value, true),
            sel => warn!("virtio-mmio: ignoring DriverFeatures write with selector {sel}"),
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if self.device_status & status::DRIVER_OK != 0 {
            warn!("virtio-mmio: ignoring queue register {offset:#x} write after DRIVER_OK");
            return;
        }
        let index = self.queue_sel;
        let Some(queue) = usize::try_from(index)
            .ok()
            .and_then(|i| self.queues.get_mut(i))
        else {
            warn!(
                "virtio-mmio: ignoring queue register {offset:#x} write for missing queue {index}"
            );
            return;
        };
        match offset {
            reg::QUEUE_NUM => queue.size = value,
            reg::QUEUE_READY => queue.ready = value == 1,
            reg::QUEUE_DESC_LOW => set_half(&mut queue.desc_table, value, false),
            reg::QUEUE_DESC_HIGH => set_half(&mut queue.desc_table, value, true),
            reg::QUEUE_DRIVER_LOW => set_half(&mut queue.avail_ring, value, false),
            reg::QUEUE_DRIVER_HIGH => set_half(&mut queue.avail_ring, value, true),
            reg::QUEUE_DEVICE_LOW => set_half(&mut queue.used_ring, value, false),
            reg::QUEUE_DEVICE_HIGH => set_half(&mut queue.used_ring, value, true),
            // `write` only routes the queue registers above here.
            _ => warn!("virtio-mmio: {offset:#x} is not a queue register"),
        }
    }

    /// A `QueueNotify` write that was not caught by an ioeventfd.
    fn notify(&self, index: u32) {
        let device = lock(&self.device);
        match usize::try_from(index)
            .ok()
            .and_then(|i| device.queue_events().get(i))
        {
            Some(evt) => {
                if let Err(err) = evt.write(1) {
                    warn!("virtio-mmio: failed to signal queue {index}: {err}");
                }
            }
            None => warn!("virtio-mmio: ignoring notification for missing queue {index}"),
        }
    }

    /// The device status state machine (virtio 1.2, section 3.1.1).
    fn write_status(&mut self, new: u32) {
        use status::*;

        if new == 0 {
            self.reset();
            return;
        }
        let old = self.device_status;
        if new & FAILED != 0 {
            // The driver gave up on the device (section 2.1).
            info!("virtio-mmio: driver marked the device FAILED (status {new:#x})");
            self.device_status |= FAILED;
            return;
        }
        if old & (FAILED | DEVICE_NEEDS_RESET) != 0 {
            warn!("virtio-mmio: ignoring status {new:#x} until reset (status {old:#x})");
            return;
        }
        if new == old {
            return;
        }
        match (old, new) {
            (0, INIT_ACKNOWLEDGED) | (INIT_ACKNOWLEDGED, INIT_DRIVER) => self.device_status = new,
            (INIT_DRIVER, INIT_FEATURES_OK) => self.accept_features(),
            (INIT_FEATURES_OK, INIT_DRIVER_OK) => {
                self.device_status = new;
                self.activate();
            }
            _ => warn!("virtio-mmio: ignoring status transition {old:#x} -> {new:#x}"),
        }
    }

    /// Sets FEATURES_OK if the driver's features are acceptable; otherwise
    /// leaves the status as it is, which the driver reads back as refusal
    /// (section 3.1.1 step 6).
    fn accept_features(&mut self) {
        let mut device = lock(&self.device);
        let offered = device.avail_features();
        let unknown = self.driver_features & !offered;
        if unknown != 0 {
            warn!(
                "virtio-mmio: refusing FEATURES_OK: driver features {:#x} not offered ({unknown:#x})",
                self.driver_features
            );
            return;
        }
        // This is a modern-only transport: a driver must accept VERSION_1
        // (section 6.1 lets the device fail otherwise).
        if self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            warn!("virtio-mmio: refusing FEATURES_OK: driver did not accept VIRTIO_F_VERSION_1");
            return;
        }
        device.set_acked_features(self.driver_features);
        self.device_status |= status::FEATURES_OK;
    }

    /// Builds the queues from the registers and starts the device; on
    /// failure sets DEVICE_NEEDS_RESET and tells the driver (section 2.1.2).
    fn activate(&mut self) {
        let result = self.build_queues().and_then(|queues| {
            let interrupt: Arc<dyn Interrupt> = self.interrupt.clone();
            lock(&self.device).activate(self.mem.clone(), interrupt, queues)
        });
        match result {
            Ok(()) => debug!("virtio-mmio: device activated"),
            Err(err) => {
                warn!("virtio-mmio: device activation failed: {err}");
                self.device_status |= status::DEVICE_NEEDS_RESET;
                if let Err(err) = self.interrupt.trigger(INTERRUPT_CONFIG_CHANGE) {
                    warn!("virtio-mmio: failed to raise config change interrupt: {err}");
                }
            }
        }
    }

    fn build_queues(&self) -> Result<Vec<Queue>, ActivateError> {
        let event_idx = self.driver_features & (1 << VIRTIO_F_RING_EVENT_IDX) != 0;
        self.queues
            .iter()
            .zip(&self.queue_max_sizes)
            .enumerate()
            .map(|(index, (config, &max_size))| {
                let queue = build_queue(config, max_size, event_idx).map_err(|err| {
                    warn!("virtio-mmio: queue {index}: {err}");
                    ActivateError::BadQueue { index }
                })?;
                if !queue.is_valid(&self.mem) {
                    return Err(ActivateError::BadQueue { index });
                }
                Ok(queue)
            })
            .collect()
    }

    /// Returns the transport and the device to their initial state (a driver
    /// write of 0 to `Status`, section 4.2.2).
    fn reset(&mut self) {
        self.device_status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.queues.fill(QueueConfig::default());
        self.interrupt.status.store(0, Ordering::SeqCst);
        if !lock(&self.device).reset() {
            warn!("virtio-mmio: device cannot be reset; marking it FAILED");
            self.device_status = status::FAILED;
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data);
    }
}

/// Builds one queue from its registers; `QueueNum` 0 (never written) means
/// the maximum size.
fn build_queue(
    config: &QueueConfig,
    max_size: u16,
    event_idx: bool,
) -> Result<Queue, virtio_queue::Error> {
    let mut queue = Queue::new(max_size)?;
    if config.size != 0 {
        let size = u16::try_from(config.size).map_err(|_| virtio_queue::Error::InvalidSize)?;
        queue.try_set_size(size)?;
    }
    queue.try_set_desc_table_address(GuestAddress(config.desc_table))?;
    queue.try_set_avail_ring_address(GuestAddress(config.avail_ring))?;
    queue.try_set_used_ring_address(GuestAddress(config.used_ring))?;
    queue.set_event_idx(event_idx);
    queue.set_ready(config.ready);
    Ok(queue)
}

/// Locks the device, recovering it if another thread panicked while holding
/// it (the device state is still the best we have).
fn lock<'a>(
    device: &'a Mutex<dyn VirtioDevice + 'static>,
) -> MutexGuard<'a, dyn VirtioDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Control registers take aligned 32-bit accesses only (section 4.2.2.2).
fn is_register_access(offset: u64, len: usize) -> bool {
    len == REGISTER_ACCESS_SIZE && offset.is_multiple_of(REGISTER_ACCESS_SIZE as u64)
}

/// Config space takes 8, 16, 32 and 64-bit accesses (section 4.2.2.2).
fn is_config_access_size(len: usize) -> bool {
    matches!(len, 1 | 2 | 4 | 8)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::vmm::devices::virtio::block::Block;
    use crate::vmm::devices::virtio::{VirtioCore, TYPE_BLOCK, TYPE_NET};

    const MEM_SIZE: usize = 0x10_0000;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    /// A device double on the shared core: a writable config space, can
    /// refuse activation or reset.
    struct FakeDevice {
        core: VirtioCore,
        config: Vec<u8>,
        fail_activate: bool,
        can_reset: bool,
        resets: Arc<AtomicUsize>,
    }

    const FAKE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << 5) | (1 << 3);

    impl FakeDevice {
        fn new(queues: usize) -> Self {
            FakeDevice {
                core: VirtioCore::new(TYPE_NET, "fake", FAKE_FEATURES, &vec![16; queues]).unwrap(),
                config: (0u8..16).collect(),
                fail_activate: false,
                can_reset: true,
                resets: Arc::new(AtomicUsize::new(0)),
            }
        }

        /// The interrupt and queues the device was activated with.
        fn activated(&self) -> Option<&crate::vmm::devices::virtio::core::ActiveState> {
            self.core.active()
        }
    }

    impl VirtioDevice for FakeDevice {
        fn core(&self) -> &VirtioCore {
            &self.core
        }
        fn core_mut(&mut self) -> &mut VirtioCore {
            &mut self.core
        }
        fn config_space(&self) -> &[u8] {
            &self.config
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let offset = usize::try_from(offset).unwrap();
            if let Some(dst) = self.config.get_mut(offset..offset + data.len()) {
                dst.copy_from_slice(data);
            }
        }
        fn on_activate(&mut self, queues: &mut [Queue]) -> Result<(), ActivateError> {
            if self.fail_activate {
                return Err(ActivateError::QueueCount {
                    expected: 99,
                    got: queues.len(),
                });
            }
            Ok(())
        }
        fn on_reset(&mut self) -> bool {
            self.resets.fetch_add(1, Ordering::SeqCst);
            self.can_reset
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn transport_with(device: FakeDevice) -> (MmioTransport, Arc<Mutex<FakeDevice>>) {
        let device = Arc::new(Mutex::new(device));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let transport = MmioTransport::new(memory(), device.clone(), irq);
        (transport, device)
    }

    fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0xffu8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// Negotiates `features` and reaches FEATURES_OK (if accepted).
    fn negotiate(t: &mut MmioTransport, features: u64) {
        write32(t, reg::STATUS, status::ACKNOWLEDGE);
        write32(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        write32(t, reg::DRIVER_FEATURES_SEL, 0);
        write32(t, reg::DRIVER_FEATURES, feature_word(features, 0));
        write32(t, reg::DRIVER_FEATURES_SEL, 1);
        write32(t, reg::DRIVER_FEATURES, feature_word(features, 1));
        write32(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    /// Programs queue `index` with valid rings (separate per queue).
    fn setup_queue(t: &mut MmioTransport, index: u32, size: u32) {
        let base = u64::from(index) * 0x4000;
        write32(t, reg::QUEUE_SEL, index);
        write32(t, reg::QUEUE_NUM, size);
        for (low, addr) in [
            (reg::QUEUE_DESC_LOW, DESC + base),
            (reg::QUEUE_DRIVER_LOW, AVAIL + base),
            (reg::QUEUE_DEVICE_LOW, USED + base),
        ] {
            write32(t, low, feature_word(addr, 0));
            write32(t, low + 4, feature_word(addr, 1));
        }
        write32(t, reg::QUEUE_READY, 1);
    }

    const ALL_OK: u32 =
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    fn bring_up(t: &mut MmioTransport, queues: u32) {
        negotiate(t, FAKE_FEATURES);
        for i in 0..queues {
            setup_queue(t, i, 8);
        }
        write32(t, reg::STATUS, ALL_OK);
    }

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport_with(FakeDevice::new(2));
        assert_eq!(read32(&mut t, reg::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(read32(&mut t, reg::VERSION), 2);
        assert_eq!(read32(&mut t, reg::DEVICE_ID), TYPE_NET);
        assert_eq!(read32(&mut t, reg::VENDOR_ID), MMIO_VENDOR_ID);
        assert_eq!(read32(&mut t, reg::CONFIG_GENERATION), 0);
        assert_eq!(MmioTransport::queue_notify_offset(), 0x50);
    }

    #[test]
    fn device_features_by_select() {
        let (mut t, _) = transport_with(FakeDevice::new(1));
        write32(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(read32(&mut t, reg::DEVICE_FEATURES), (1 << 5) | (1 << 3));
        write32(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(read32(&mut t, reg::DEVICE_FEATURES), 1);
        write32(&mut t, reg::DEVICE_FEATURES_SEL, 2);
        assert_eq!(read32(&mut t, reg::DEVICE_FEATURES), 0);
    }

    #[test]
    fn queue_num_max_per_queue() {
        let (mut t, _) = transport_with(FakeDevice::new(2));
        write32(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(read32(&mut t, reg::QUEUE_NUM_MAX), 16);
        write32(&mut t, reg::QUEUE_SEL, 2);
        assert_eq!(read32(&mut t, reg::QUEUE_NUM_MAX), 0);
        // Writes to a missing queue are ignored.
        write32(&mut t, reg::QUEUE_READY, 1);
        assert_eq!(read32(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn good_sequence_activates_device() {
        let (mut t, device) = transport_with(FakeDevice::new(2));
        bring_up(&mut t, 2);
        assert_eq!(read32(&mut t, reg::STATUS), ALL_OK);
        let device = device.lock().unwrap();
        assert_eq!(device.acked_features(), FAKE_FEATURES);
        let queues = &device.activated().expect("device activated").queues;
        assert_eq!(queues.len(), 2);
        assert_eq!(queues[0].size(), 8);
        assert_eq!(queues[1].desc_table(), DESC + 0x4000);
        assert_eq!(queues[1].avail_ring(), AVAIL + 0x4000);
        assert_eq!(queues[1].used_ring(), USED + 0x4000);
        assert!(queues.iter().all(|q| q.ready()));
    }

    #[test]
    fn interrupt_sets_status_and_signals_irqfd() {
        let (mut t, device) = transport_with(FakeDevice::new(1));
        bring_up(&mut t, 1);
        let interrupt = device
            .lock()
            .unwrap()
            .activated()
            .unwrap()
            .interrupt
            .clone();
        interrupt
            .trigger(crate::vmm::devices::virtio::INTERRUPT_USED_BUFFER)
            .unwrap();
        assert_eq!(read32(&mut t, reg::INTERRUPT_STATUS), 1);
        assert_eq!(t.irq_evt().read().unwrap(), 1);
        write32(&mut t, reg::INTERRUPT_ACK, 1);
        assert_eq!(read32(&mut t, reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn unknown_features_refused() {
        let (mut t, device) = transport_with(FakeDevice::new(1));
        negotiate(&mut t, FAKE_FEATURES | (1 << 40));
        assert_eq!(
            read32(&mut t, reg::STATUS),
            status::ACKNOWLEDGE | status::DRIVER
        );
        assert_eq!(device.lock().unwrap().acked_features(), 0);
        // DRIVER_OK without FEATURES_OK is out of order.
        setup_queue(&mut t, 0, 8);
        write32(&mut t, reg::STATUS, ALL_OK);
        assert!(!device.lock().unwrap().is_activated());
    }

    #[test]
    fn version_1_required() {
        let (mut t, _) = transport_with(FakeDevice::new(1));
        negotiate(&mut t, 1 << 5);
        assert_eq!(read32(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn out_of_order_status_ignored() {
        let (mut t, _) = transport_with(FakeDevice::new(1));
        write32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        assert_eq!(read32(&mut t, reg::STATUS), 0);
        write32(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        write32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER_OK);
        assert_eq!(read32(&mut t, reg::STATUS), status::ACKNOWLEDGE);
        // Features can't be written before DRIVER.
        write32(&mut t, reg::DRIVER_FEATURES, 0xffff_ffff);
        write32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        write32(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        write32(&mut t, reg::DRIVER_FEATURES, 1);
        write32(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_ne!(read32(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn queue_writes_after_driver_ok_ignored() {
        let (mut t, _) = transport_with(FakeDevice::new(1));
        bring_up(&mut t, 1);
        write32(&mut t, reg::QUEUE_SEL, 0);
        write32(&mut t, reg::QUEUE_READY, 0);
        write32(&mut t, reg::QUEUE_NUM, 4);
        write32(&mut t, reg::QUEUE_DESC_LOW, 0x8000);
        assert_eq!(read32(&mut t, reg::QUEUE_READY), 1);
        assert_eq!(t.queues[0].size, 8);
        assert_eq!(t.queues[0].desc_table, DESC);
    }

    #[test]
    fn invalid_queue_fails_activation() {
        let (mut t, device) = transport_with(FakeDevice::new(1));
        negotiate(&mut t, FAKE_FEATURES);
        setup_queue(&mut t, 0, 8);
        // Used ring past the end of guest memory.
        write32(&mut t, reg::QUEUE_DEVICE_HIGH, 1);
        write32(&mut t, reg::STATUS, ALL_OK);
        assert!(!device.lock().unwrap().is_activated());
        assert_eq!(
            read32(&mut t, reg::STATUS),
            ALL_OK | status::DEVICE_NEEDS_RESET
        );
        assert_eq!(
            read32(&mut t, reg::INTERRUPT_STATUS),
            INTERRUPT_CONFIG_CHANGE
        );
        assert_eq!(t.irq_evt().read().unwrap(), 1);
    }

    #[test]
    fn bad_queue_sizes_fail_activation() {
        for size in [3, 32, 0x1_0000] {
            let (mut t, device) = transport_with(FakeDevice::new(1));
            negotiate(&mut t, FAKE_FEATURES);
            setup_queue(&mut t, 0, size);
            write32(&mut t, reg::STATUS, ALL_OK);
            assert!(!device.lock().unwrap().is_activated(), "size {size}");
            assert_ne!(read32(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        }
    }

    #[test]
    fn queue_not_ready_fails_activation() {
        let (mut t, device) = transport_with(FakeDevice::new(1));
        negotiate(&mut t, FAKE_FEATURES);
        setup_queue(&mut t, 0, 8);
        write32(&mut t, reg::QUEUE_READY, 0);
        write32(&mut t, reg::STATUS, ALL_OK);
        assert!(!device.lock().unwrap().is_activated());
    }

    #[test]
    fn device_activation_failure_needs_reset() {
        let mut fake = FakeDevice::new(1);
        fake.fail_activate = true;
        let (mut t, _) = transport_with(fake);
        bring_up(&mut t, 1);
        assert_ne!(read32(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        // Only a reset gets it out of there.
        write32(&mut t, reg::STATUS, ALL_OK);
        assert_ne!(read32(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        write32(&mut t, reg::STATUS, 0);
        assert_eq!(read32(&mut t, reg::STATUS), 0);
    }

    #[test]
    fn reset_clears_everything() {
        let (mut t, device) = transport_with(FakeDevice::new(1));
        bring_up(&mut t, 1);
        t.interrupt.trigger(1).unwrap();
        write32(&mut t, reg::STATUS, 0);
        assert_eq!(read32(&mut t, reg::STATUS), 0);
        assert_eq!(read32(&mut t, reg::INTERRUPT_STATUS), 0);
        assert_eq!(read32(&mut t, reg::QUEUE_READY), 0);
        assert_eq!(t.driver_features, 0);
        assert_eq!(t.queues[0].desc_table, 0);
        let resets = device.lock().unwrap().resets.load(Ordering::SeqCst);
        assert_eq!(resets, 1);
        assert!(!device.lock().unwrap().is_activated());
        // The device can be brought up again.
        bring_up(&mut t, 1);
        assert!(device.lock().unwrap().is_activated());
    }

    #[test]
    fn failed_reset_marks_failed() {
        let mut fake = FakeDevice::new(1);
        fake.can_reset = false;
        let (mut t, _) = transport_with(fake);
        bring_up(&mut t, 1);
        write32(&mut t, reg::STATUS, 0);
        assert_eq!(read32(&mut t, reg::STATUS), status::FAILED);
    }

    #[test]
    fn driver_failed_status() {
        let (mut t, _) = transport_with(FakeDevice::new(1));
        write32(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        write32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::FAILED);
        assert_eq!(
            read32(&mut t, reg::STATUS),
            status::ACKNOWLEDGE | status::FAILED
        );
        write32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        assert_eq!(
            read32(&mut t, reg::STATUS),
            status::ACKNOWLEDGE | status::FAILED
        );
    }

    #[test]
    fn queue_notify_signals_queue_event() {
        let (mut t, device) = transport_with(FakeDevice::new(2));
        bring_up(&mut t, 2);
        write32(&mut t, reg::QUEUE_NOTIFY, 1);
        write32(&mut t, reg::QUEUE_NOTIFY, 7); // no such queue: ignored
        let device = device.lock().unwrap();
        assert_eq!(device.queue_events()[1].read().unwrap(), 1);
        assert!(device.queue_events()[0].read().is_err()); // EAGAIN: not signalled
    }

    #[test]
    fn bad_register_accesses_ignored() {
        let (mut t, _) = transport_with(FakeDevice::new(1));
        // Wrong sizes and unaligned offsets read as zeros.
        for len in [1, 2, 3, 8] {
            let mut data = vec![0xffu8; len];
            t.read(reg::MAGIC_VALUE, &mut data);
            assert!(data.iter().all(|&b| b == 0), "len {len}");
        }
        let mut data = [0xffu8; 4];
        t.read(reg::MAGIC_VALUE + 2, &mut data);
        assert_eq!(data, [0; 4]);
        // Write-only and unknown registers read as zero.
        assert_eq!(read32(&mut t, reg::QUEUE_NOTIFY), 0);
        assert_eq!(read32(&mut t, 0x0f8), 0);
        // Bad writes change nothing.
        t.write(reg::STATUS, &[status::ACKNOWLEDGE as u8]);
        t.write(reg::STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
        t.write(reg::STATUS + 1, &[1, 0, 0, 0]);
        write32(&mut t, reg::MAGIC_VALUE, 0);
        write32(&mut t, 0x0f8, 0);
        assert_eq!(read32(&mut t, reg::STATUS), 0);
        assert_eq!(read32(&mut t, reg::MAGIC_VALUE), MMIO_MAGIC_VALUE);
        // Offsets far outside the window don't panic.
        t.read(u64::MAX - 3, &mut data);
        t.write(u64::MAX - 3, &data);
    }

    #[test]
    fn config_space_forwarded() {
        let (mut t, device) = transport_with(FakeDevice::new(1));
        let mut data = [0u8; 2];
        t.read(reg::CONFIG + 4, &mut data);
        assert_eq!(data, [4, 5]);
        let mut data = [0u8; 8];
        t.read(reg::CONFIG + 8, &mut data);
        assert_eq!(data, [8, 9, 10, 11, 12, 13, 14, 15]);
        t.write(reg::CONFIG, &[0xaa]);
        assert_eq!(device.lock().unwrap().config[0], 0xaa);
        // 3-byte accesses are refused.
        let mut data = [0xffu8; 3];
        t.read(reg::CONFIG, &mut data);
        assert_eq!(data, [0; 3]);
        t.write(reg::CONFIG, &[1, 2, 3]);
        assert_eq!(device.lock().unwrap().config[1], 1);
    }

    #[test]
    fn block_capacity_through_config_space() {
        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(8 * 1024 * 1024).unwrap();
        let block = Block::new(image.path(), false, "disk0").unwrap();
        let device = Arc::new(Mutex::new(block));
        let mut t = MmioTransport::new(memory(), device, EventFd::new(libc::EFD_NONBLOCK).unwrap());
        assert_eq!(read32(&mut t, reg::DEVICE_ID), TYPE_BLOCK);
        let mut capacity = [0u8; 8];
        t.read(reg::CONFIG, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 8 * 1024 * 1024 / 512);
        // The same through two 32-bit reads.
        assert_eq!(read32(&mut t, reg::CONFIG), 16384);
        assert_eq!(read32(&mut t, reg::CONFIG + 4), 0);
    }

    #[test]
    fn block_request_end_to_end() {
        use crate::vmm::devices::virtio::block::test_utils::{
            TestQueue, AVAIL_RING, DATA, DESC_TABLE, F_WRITE, USED_RING,
        };
        use vm_memory::Bytes;

        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(4096).unwrap();
        let block = Arc::new(Mutex::new(Block::new(image.path(), true, "e2e").unwrap()));
        let mem = memory();
        let mut t = MmioTransport::new(
            mem.clone(),
            block.clone(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        );

        // The driver's side of section 3.1.1, with the block features.
        write32(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        let low = read32(&mut t, reg::DEVICE_FEATURES);
        write32(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        let high = read32(&mut t, reg::DEVICE_FEATURES);
        negotiate(&mut t, u64::from(low) | (u64::from(high) << 32));
        assert_ne!(read32(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        write32(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(read32(&mut t, reg::QUEUE_NUM_MAX), 256);
        write32(&mut t, reg::QUEUE_NUM, 16);
        write32(
            &mut t,
            reg::QUEUE_DESC_LOW,
            u32::try_from(DESC_TABLE).unwrap(),
        );
        write32(
            &mut t,
            reg::QUEUE_DRIVER_LOW,
            u32::try_from(AVAIL_RING).unwrap(),
        );
        write32(
            &mut t,
            reg::QUEUE_DEVICE_LOW,
            u32::try_from(USED_RING).unwrap(),
        );
        write32(&mut t, reg::QUEUE_READY, 1);
        write32(&mut t, reg::STATUS, ALL_OK);
        assert_eq!(read32(&mut t, reg::STATUS), ALL_OK);
        assert!(block.lock().unwrap().is_activated());

        // A GET_ID request, notified through the register.
        let mut vq = TestQueue::new(&mem, 16);
        let mut header = [0u8; 16];
        header[0] = 8; // VIRTIO_BLK_T_GET_ID
        mem.write_slice(&header, GuestAddress(DATA)).unwrap();
        vq.add_chain(&[
            (DATA, 16, 0),
            (DATA + 0x100, 20, F_WRITE),
            (DATA + 0x200, 1, F_WRITE),
        ]);
        write32(&mut t, reg::QUEUE_NOTIFY, 0);
        {
            let mut block = block.lock().unwrap();
            assert_eq!(block.queue_events()[0].read().unwrap(), 1);
            assert!(block.process_queue().unwrap());
        }
        assert_eq!(vq.used_idx(), 1);
        assert_eq!(vq.used_elem(0), (0, 21));
        let mut id = [0u8; 3];
        mem.read_slice(&mut id, GuestAddress(DATA + 0x100)).unwrap();
        assert_eq!(&id, b"e2e");
        assert_eq!(read32(&mut t, reg::INTERRUPT_STATUS), 1);
        assert_eq!(t.irq_evt().read().unwrap(), 1);
    }
}
