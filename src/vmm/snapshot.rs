//! Snapshots of a paused microVM, and the pieces a restore puts back.
//!
//! A snapshot is a directory with two files:
//! - [`MEMORY_FILE`]: guest RAM, region after region, pages of zeros left as
//!   holes (a sparse file). A restore maps it `MAP_PRIVATE`, so every VM
//!   restored from it shares the pages it only reads (the kernel, init,
//!   the page cache of the template) and gets its own copy of a page on its
//!   first write.
//! - [`STATE_FILE`]: [`VmSnapshot`] as JSON: KVM's VM state (PIC, IOAPIC,
//!   PIT, kvmclock), each vCPU's state, the serial port's registers and the
//!   virtio-mmio transports' registers with each queue's ring positions.
//!
//! What is *not* in it: the devices' host backends (disk file, vsock socket,
//! console sink). A restore opens them anew from its own [`super::VmConfig`],
//! so a template VM booted with one vsock socket path is restored with
//! another; the config must describe the same devices in the same order.
//!
//! Save order (vCPUs stopped, pending exits completed, see
//! [`super::vcpu::run`]): VM state, then per vCPU mp_state, regs, sregs,
//! xsave, xcrs, debug registers, LAPIC, MSRs, vCPU events. Restore order (as
//! Firecracker's, which documents the dependencies): VM state after the
//! irqchip and PIT exist; per vCPU CPUID, mp_state, regs, sregs, xsave,
//! xcrs, debug registers, LAPIC, then MSRs (the TSC before the TSC deadline,
//! which KVM's MSR list already orders, and after the LAPIC whose timer the
//! deadline arms), then vCPU events.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

/// Guest RAM of a snapshot.
pub const MEMORY_FILE: &str = "memory";
/// Everything else of a snapshot ([`VmSnapshot`], JSON).
pub const STATE_FILE: &str = "state.json";
/// The virtio-fs servers' states of a checkpoint, by tag.
pub const FS_STATE_FILE: &str = "fs.json";
/// Bumped whenever [`VmSnapshot`] changes meaning; a snapshot of another
/// format is refused.
pub const FORMAT: u32 = 1;

/// Size of the pages whose zeros are left out of the memory file.
const PAGE: usize = 4096;
/// Guest memory is read in chunks of this size while saving.
const SAVE_CHUNK: usize = 1 << 20;

/// Why a snapshot could not be taken or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("KVM {op}: {source}")]
    Kvm {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM {op} handled {done} of {total} MSRs (the first it refused: {index:#x})")]
    Msrs {
        op: &'static str,
        done: usize,
        total: usize,
        index: u32,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("snapshot {path} has format {found}, this husk reads format {FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error("snapshot does not match the VM: {0}")]
    Mismatch(String),
    #[error("guest memory: {0}")]
    Memory(String),
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { op, source }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One guest RAM region and where its bytes start in [`MEMORY_FILE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSnapshot {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

/// The VM-wide state KVM keeps: the in-kernel PICs and IOAPIC, the PIT and
/// the kvmclock.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

impl VmState {
    pub fn save(vm: &VmFd) -> Result<Self, SnapshotError> {
        let chip = |chip_id: u32| {
            let mut c = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut c).map(|()| c)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER).map_err(kvm("KVM_GET_IRQCHIP"))?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE).map_err(kvm("KVM_GET_IRQCHIP"))?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC).map_err(kvm("KVM_GET_IRQCHIP"))?,
            pit: vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
            clock: vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?,
        })
    }

    /// Needs the irqchip and the PIT created (`KVM_CREATE_IRQCHIP`,
    /// `KVM_CREATE_PIT2`).
    pub fn restore(&self, vm: &VmFd) -> Result<(), SnapshotError> {
        vm.set_pit2(&self.pit).map_err(kvm("KVM_SET_PIT2"))?;
        // The clock resumes where the template stopped; no flags, so KVM
        // does not add the real time that passed since (the TSCs restart
        // from their saved values too, and the agent sets the guest's wall
        // clock at create).
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            vm.set_irqchip(chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }
}

/// One vCPU's state, as KVM hands it out.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// (index, value) of every MSR KVM would save that it let us read.
    pub msrs: Vec<(u32, u64)>,
    pub events: kvm_vcpu_events,
    /// The guest TSC frequency, where KVM reports it.
    pub tsc_khz: Option<u32>,
}

impl VcpuState {
    /// `msr_list`: the MSRs to save (`KVM_GET_MSR_INDEX_LIST`).
    pub fn save(vcpu: &VcpuFd, msr_list: &[u32]) -> Result<Self, SnapshotError> {
        let mp_state = vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
        let regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        let xsave = vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
        let xcrs = vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?;
        let debug_regs = vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
        let lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
        let msrs = save_msrs(vcpu, msr_list)?;
        let events = vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
        let tsc_khz = vcpu.get_tsc_khz().ok();
        Ok(VcpuState {
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            events,
            tsc_khz,
        })
    }

    /// Puts the state back into a new vCPU whose CPUID is already set;
    /// `amd`: the vCPU runs on AMD SVM (see [`sregs_for_restore`]).
    pub fn restore(&self, vcpu: &VcpuFd, amd: bool) -> Result<(), SnapshotError> {
        if let (Some(saved), Ok(now)) = (self.tsc_khz, vcpu.get_tsc_khz()) {
            if saved != now {
                vcpu.set_tsc_khz(saved).map_err(kvm("KVM_SET_TSC_KHZ"))?;
            }
        }
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        vcpu.set_regs(&self.regs).map_err(kvm("KVM_SET_REGS"))?;
        vcpu.set_sregs(&sregs_for_restore(&self.sregs, amd))
            .map_err(kvm("KVM_SET_SREGS"))?;
        // SAFETY: `xsave` is a whole `kvm_xsave` read back from KVM_GET_XSAVE
        // (no trailing XSAVE2 area), which is what KVM_SET_XSAVE reads.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&self.debug_regs)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        vcpu.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        restore_msrs(vcpu, &self.msrs)?;
        vcpu.set_vcpu_events(&self.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

/// TSS descriptor types (Intel SDM vol. 3, 3.5; AMD APM vol. 2, 4.8.3).
const TSS_AVAILABLE: u8 = 9;
const TSS_BUSY: u8 = 11;

/// The segment registers to set on restore. On AMD, KVM_GET_SREGS reports
/// the task register busy (type 11) although SVM keeps it as an available
/// TSS (type 9) in the VMCB (KVM sets the bit on the way out, see
/// `svm_get_segment`); written back as busy, an SVM that checks the type
/// (QEMU's, in the KVM test host) refuses every later user-mode port
/// access through the TSS I/O bitmap with #GP. So on AMD the type goes back
/// to what SVM held; on Intel, VMX requires the busy type and keeps it.
pub fn sregs_for_restore(saved: &kvm_sregs, amd: bool) -> kvm_sregs {
    let mut sregs = *saved;
    if amd && sregs.tr.type_ == TSS_BUSY {
        sregs.tr.type_ = TSS_AVAILABLE;
    }
    sregs
}

/// The MSRs KVM saves and restores for a vCPU.
pub fn msr_list(kvm_fd: &Kvm) -> Result<Vec<u32>, SnapshotError> {
    Ok(kvm_fd
        .get_msr_index_list()
        .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec())
}

fn msrs_of(entries: &[kvm_msr_entry]) -> Result<Msrs, SnapshotError> {
    Msrs::from_entries(entries).map_err(|e| SnapshotError::Mismatch(format!("MSR list: {e:?}")))
}

/// Reads every MSR of `list` that KVM lets us read. `KVM_GET_MSRS` stops at
/// the first MSR it refuses (one this CPU model lacks); that one is left
/// out and reading goes on after it.
fn save_msrs(vcpu: &VcpuFd, list: &[u32]) -> Result<Vec<(u32, u64)>, SnapshotError> {
    let mut saved = Vec::with_capacity(list.len());
    let mut rest = list;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = msrs_of(&entries)?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        saved.extend(msrs.as_slice().iter().take(read).map(|e| (e.index, e.data)));
        // Skip the refused one.
        rest = rest.get(read + 1..).unwrap_or_default();
    }
    Ok(saved)
}

fn restore_msrs(vcpu: &VcpuFd, saved: &[(u32, u64)]) -> Result<(), SnapshotError> {
    let entries: Vec<kvm_msr_entry> = saved
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = msrs_of(&entries)?;
    let done = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if done != saved.len() {
        return Err(SnapshotError::Msrs {
            op: "KVM_SET_MSRS",
            done,
            total: saved.len(),
            index: saved.get(done).map_or(0, |e| e.0),
        });
    }
    Ok(())
}

/// The registers of the 16550 UART: vm-superio's `SerialState`, which has
/// no serde support of its own (serde's remote derive, field for field).
#[derive(Serialize, Deserialize)]
#[serde(remote = "vm_superio::serial::SerialState")]
struct SerialStateDef {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

/// Ring positions of one virtqueue, kept by the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueuePosition {
    pub next_avail: u16,
    pub next_used: u16,
}

/// Driver-written registers of one virtqueue plus its ring positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub size: u32,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub position: QueuePosition,
}

/// A virtio-mmio transport's registers and its device's queue positions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportSnapshot {
    pub device_type: u32,
    pub device_status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub queues: Vec<QueueSnapshot>,
}

/// Everything of a snapshot but guest RAM.
#[derive(Serialize, Deserialize)]
pub struct VmSnapshot {
    pub format: u32,
    pub mem_bytes: u64,
    pub regions: Vec<RegionSnapshot>,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    #[serde(with = "SerialStateDef")]
    pub serial: vm_superio::serial::SerialState,
    /// In the order the devices were attached.
    pub transports: Vec<TransportSnapshot>,
}

impl VmSnapshot {
    pub fn write(&self, dir: &Path) -> Result<(), SnapshotError> {
        let path = dir.join(STATE_FILE);
        let data = serde_json::to_vec(self).map_err(|source| SnapshotError::Json {
            path: path.clone(),
            source,
        })?;
        private_file(&path)
            .and_then(|mut f| f.write_all(&data))
            .map_err(io_at(&path))
    }

    pub fn read(dir: &Path) -> Result<Self, SnapshotError> {
        let path = dir.join(STATE_FILE);
        let data = std::fs::read(&path).map_err(io_at(&path))?;
        let snap: VmSnapshot =
            serde_json::from_slice(&data).map_err(|source| SnapshotError::Json {
                path: path.clone(),
                source,
            })?;
        if snap.format != FORMAT {
            return Err(SnapshotError::Format {
                path,
                found: snap.format,
            });
        }
        Ok(snap)
    }
}

/// The files a checkpoint is written to, made (empty) and opened when the
/// VM is built: the thread that writes them later runs under a filter
/// that opens no file.
#[derive(Debug)]
pub struct CheckpointFiles {
    pub dir: PathBuf,
    state: File,
    fs: File,
    memory: File,
}

impl CheckpointFiles {
    /// Makes `dir` (mode 0700) and its three files.
    pub fn create(dir: &Path) -> Result<CheckpointFiles, SnapshotError> {
        use std::os::unix::fs::DirBuilderExt as _;
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_at(dir)(e)),
        }
        let open = |name: &str| {
            let path = dir.join(name);
            private_file(&path).map_err(io_at(&path))
        };
        Ok(CheckpointFiles {
            dir: dir.to_path_buf(),
            state: open(STATE_FILE)?,
            fs: open(FS_STATE_FILE)?,
            memory: open(MEMORY_FILE)?,
        })
    }

    /// Writes the checkpoint over any earlier one: the fs servers' states,
    /// guest RAM, then the VM state.
    pub fn write(
        &self,
        fs: &FsStates,
        mem: &GuestMemoryMmap,
        snap: impl FnOnce(Vec<RegionSnapshot>) -> VmSnapshot,
    ) -> Result<(), SnapshotError> {
        let fs_path = self.dir.join(FS_STATE_FILE);
        let data = serde_json::to_vec(fs).map_err(|source| SnapshotError::Json {
            path: fs_path.clone(),
            source,
        })?;
        for (file, name) in [
            (&self.state, STATE_FILE),
            (&self.fs, FS_STATE_FILE),
            (&self.memory, MEMORY_FILE),
        ] {
            file.set_len(0).map_err(io_at(&self.dir.join(name)))?;
        }
        self.fs.write_all_at(&data, 0).map_err(io_at(&fs_path))?;
        let regions = save_memory_into(mem, &self.memory, &self.dir.join(MEMORY_FILE))?;
        let state_path = self.dir.join(STATE_FILE);
        let data = serde_json::to_vec(&snap(regions)).map_err(|source| SnapshotError::Json {
            path: state_path.clone(),
            source,
        })?;
        self.state
            .write_all_at(&data, 0)
            .map_err(io_at(&state_path))?;
        self.state.sync_all().map_err(io_at(&state_path))
    }
}

/// The virtio-fs servers' states of a checkpoint (by tag), written to
/// `dir/`[`FS_STATE_FILE`].
pub type FsStates = Vec<(String, crate::vmm::devices::virtio::fs::share::ShareState)>;

pub fn read_fs_states(dir: &Path) -> Result<FsStates, SnapshotError> {
    let path = dir.join(FS_STATE_FILE);
    let data = std::fs::read(&path).map_err(io_at(&path))?;
    serde_json::from_slice(&data).map_err(|source| SnapshotError::Json { path, source })
}

/// A new (or truncated) file only its owner may read: guest memory and
/// device state are the guest's secrets, and a writer could change what
/// every clone runs. The mode is explicit because a virtio-fs device
/// clears the process umask (it applies the guest's own).
fn private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Writes guest RAM to `dir/`[`MEMORY_FILE`], leaving all-zero pages as
/// holes; returns where each region went.
pub fn save_memory(
    mem: &GuestMemoryMmap,
    dir: &Path,
) -> Result<Vec<RegionSnapshot>, SnapshotError> {
    let path = dir.join(MEMORY_FILE);
    let file = private_file(&path).map_err(io_at(&path))?;
    save_memory_into(mem, &file, &path)
}

/// Writes guest RAM to `file` (named `path` in errors), as
/// [`save_memory`].
pub fn save_memory_into(
    mem: &GuestMemoryMmap,
    file: &File,
    path: &Path,
) -> Result<Vec<RegionSnapshot>, SnapshotError> {
    let mut regions = Vec::new();
    let mut offset = 0u64;
    let mut buf = vec![0u8; SAVE_CHUNK];
    for region in mem.iter() {
        let size = region.len();
        regions.push(RegionSnapshot {
            guest_addr: region.start_addr().0,
            size,
            file_offset: offset,
        });
        let mut done = 0u64;
        while done < size {
            let n = usize::try_from((size - done).min(SAVE_CHUNK as u64)).unwrap_or(SAVE_CHUNK);
            let chunk = &mut buf[..n];
            mem.read_slice(chunk, GuestAddress(region.start_addr().0 + done))
                .map_err(|e| SnapshotError::Memory(e.to_string()))?;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    let at = offset + done + (i * PAGE) as u64;
                    file.write_all_at(page, at).map_err(io_at(path))?;
                }
            }
            done += n as u64;
        }
        offset += size;
    }
    file.set_len(offset).map_err(io_at(path))?;
    file.sync_all().map_err(io_at(path))?;
    Ok(regions)
}

/// Maps `dir/`[`MEMORY_FILE`] as guest RAM, private and copy-on-write.
pub fn map_memory(
    dir: &Path,
    regions: &[RegionSnapshot],
) -> Result<GuestMemoryMmap, SnapshotError> {
    let path = dir.join(MEMORY_FILE);
    let file = File::open(&path).map_err(io_at(&path))?;
    let mut mapped = Vec::with_capacity(regions.len());
    for r in regions {
        let size = usize::try_from(r.size)
            .map_err(|_| SnapshotError::Memory(format!("region of {} bytes", r.size)))?;
        let file = file.try_clone().map_err(io_at(&path))?;
        let mapping = MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::new(file, r.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| SnapshotError::Memory(format!("mapping {}: {e}", path.display())))?;
        let region =
            GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr)).ok_or_else(|| {
                SnapshotError::Memory(format!("region at {:#x} does not fit", r.guest_addr))
            })?;
        mapped.push(region);
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|e| SnapshotError::Memory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_round_trips_through_a_sparse_file_and_restores_privately() {
        let dir = tempfile::tempdir().unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x100_0000), 0x4000),
        ])
        .unwrap();
        mem.write_slice(b"kernel", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"high", GuestAddress(0x100_2000)).unwrap();
        let regions = save_memory(&mem, dir.path()).unwrap();
        assert_eq!(
            regions,
            vec![
                RegionSnapshot {
                    guest_addr: 0,
                    size: 0x10_0000,
                    file_offset: 0
                },
                RegionSnapshot {
                    guest_addr: 0x100_0000,
                    size: 0x4000,
                    file_offset: 0x10_0000
                },
            ]
        );
        let meta = std::fs::metadata(dir.path().join(MEMORY_FILE)).unwrap();
        assert_eq!(meta.len(), 0x10_4000);
        use std::os::unix::fs::MetadataExt as _;
        // Only its owner reads guest memory, whatever the umask.
        assert_eq!(meta.mode() & 0o777, 0o600);
        // Two data pages, the rest holes (tmpfs and ext4 both allocate by page).
        assert!(
            meta.blocks() * 512 <= 4 * PAGE as u64,
            "{} blocks",
            meta.blocks()
        );

        let restored = map_memory(dir.path(), &regions).unwrap();
        let mut buf = [0u8; 6];
        restored.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"kernel");
        restored
            .read_slice(&mut buf[..4], GuestAddress(0x100_2000))
            .unwrap();
        assert_eq!(&buf[..4], b"high");
        // Writes stay in this mapping: the file and a second mapping keep
        // the template's bytes.
        restored
            .write_slice(b"guest!", GuestAddress(0x1000))
            .unwrap();
        let again = map_memory(dir.path(), &regions).unwrap();
        again.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"kernel");
    }

    #[test]
    fn a_missing_memory_file_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = map_memory(
            dir.path(),
            &[RegionSnapshot {
                guest_addr: 0,
                size: 4096,
                file_offset: 0,
            }],
        )
        .unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[test]
    fn on_amd_the_task_register_goes_back_as_svm_keeps_it() {
        let mut saved = kvm_sregs::default();
        saved.tr.type_ = TSS_BUSY;
        saved.cs.type_ = 11;
        assert_eq!(sregs_for_restore(&saved, true).tr.type_, TSS_AVAILABLE);
        assert_eq!(sregs_for_restore(&saved, true).cs.type_, 11, "only TR");
        assert_eq!(sregs_for_restore(&saved, false).tr.type_, TSS_BUSY);
    }

    #[test]
    fn serial_state_round_trips() {
        #[derive(Serialize, Deserialize)]
        struct Wrap(#[serde(with = "SerialStateDef")] vm_superio::serial::SerialState);
        let state = vm_superio::serial::SerialState {
            interrupt_enable: 0x2,
            in_buffer: vec![b'a'],
            ..Default::default()
        };
        let json = serde_json::to_string(&Wrap(state.clone())).unwrap();
        let back: Wrap = serde_json::from_str(&json).unwrap();
        assert_eq!(back.0, state);
    }
}
