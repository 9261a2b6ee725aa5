//! The plain-data description of a microVM. Nothing here touches the host;
//! [`super::builder`] turns it into a running VM.

use std::path::PathBuf;
use std::time::Duration;

/// Default guest RAM.
pub const DEFAULT_MEM_MIB: u32 = 128;
/// Smallest guest RAM the kernel and init boot in.
pub const MIN_MEM_MIB: u32 = 32;
/// Largest guest RAM accepted (1 TiB).
pub const MAX_MEM_MIB: u32 = 1 << 20;
/// Default vCPU count.
pub const DEFAULT_VCPUS: u32 = 1;
/// Most vCPUs husk gives a VM (APIC ids in the MP table are 8-bit).
pub const MAX_VCPUS: u32 = 254;

/// Kernel command line husk starts from: serial console, reboot through the
/// i8042 (the VMM stops on it), reboot at once on panic, no timer probing.
pub const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 no_timer_check quiet";

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleOutput {
    /// The VMM's standard output.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Dropped (the VMM still keeps the last lines for error messages).
    Discard,
}

/// The initramfs the kernel unpacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initramfs {
    /// A cpio file.
    File(PathBuf),
    /// A cpio archive already in memory (husk builds its own around husk-init).
    Bytes(std::sync::Arc<Vec<u8>>),
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// A raw image file.
    pub path: PathBuf,
    pub read_only: bool,
    /// Serial the guest reads with `VIRTIO_BLK_T_GET_ID` (at most 20 bytes).
    pub id: String,
}

/// The virtio-vsock device: the guest's CID and the host Unix socket that
/// stands for it (see the vsock device docs for the `CONNECT` protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

/// One virtio-net NIC on a tap device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap's name; the builder opens (creates) it in its thread's
    /// network namespace unless [`super::builder::RunControls::taps`] hands
    /// it one already open.
    pub tap: String,
    pub mac: [u8; 6],
    pub mtu: u16,
    /// Offer checksum and segmentation offloads to the guest.
    pub offload: bool,
    /// No tap behind it (`tap` only names it in logs): the guest's frames
    /// are dropped and none arrive. A template VM's NICs, which its guest
    /// only probes ([`crate::runtime::template`]).
    pub detached: bool,
}

/// One virtio-fs device: a host directory the guest mounts by its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// What the guest mounts (`mount -t virtiofs TAG DIR`), 1 to 36 bytes.
    pub tag: String,
    /// The directory served.
    pub root: PathBuf,
    /// Refuse every change on the host side (`EROFS`), whatever the guest
    /// mounts it as.
    pub read_only: bool,
    /// The container's user and group id mappings (identity when empty).
    pub ids: crate::vmm::devices::virtio::fs::idmap::IdMaps,
}

/// A microVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initramfs: Option<Initramfs>,
    /// Command line; the VMM appends its `virtio_mmio.device=` entries.
    pub cmdline: String,
    pub mem_mib: u32,
    pub vcpus: u32,
    /// Disks, in the order the guest sees them (`/dev/vda`, `/dev/vdb`, ...).
    pub block: Vec<BlockConfig>,
    /// NICs, in the order the guest probes them.
    pub net: Vec<NetConfig>,
    /// Shared directories (virtio-fs), attached after the vsock device.
    pub fs: Vec<FsConfig>,
    pub console: ConsoleOutput,
    /// The host<->guest channel, if any.
    pub vsock: Option<VsockConfig>,
    /// The VM is stopped after this long.
    pub timeout: Option<Duration>,
    /// The state directory whose start-up timeline ([`crate::timeline`])
    /// gets the VMM's and the guest's moments.
    pub timeline: Option<PathBuf>,
    /// Snapshot this VM, or start it from a snapshot ([`Snapshot`]).
    pub snapshot: Option<Snapshot>,
    /// Where the VM writes a checkpoint when a host client asks for one
    /// (the `CHECKPOINT` line on its vsock socket), and then ends with
    /// [`crate::vmm::VmExit::Checkpointed`]; `None`: it cannot be
    /// checkpointed.
    pub checkpoint: Option<PathBuf>,
}

/// What a VM does with a snapshot directory ([`crate::vmm::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    /// Boot, and when husk-init's agent is listening (its boot timer
    /// event), pause the VM, write the snapshot into the directory and end
    /// with [`crate::vmm::VmExit::Snapshotted`].
    TakeWhenAgentListens(PathBuf),
    /// Start from the snapshot in the directory instead of booting: guest
    /// RAM mapped copy-on-write, vCPU, VM and device state put back. The
    /// config must describe the VM the snapshot was taken of (memory,
    /// vCPUs, the same devices in the same order); the kernel and
    /// initramfs are not loaded.
    Restore(PathBuf),
    /// Continue from a checkpoint in the directory (`husk checkpoint`):
    /// restored as [`Snapshot::Restore`], then each virtio-fs server takes
    /// the guest's files back ([`crate::vmm::snapshot::FS_STATE_FILE`])
    /// and the guest is told its vsock transport was reset (its connections
    /// went with the VM that was checkpointed).
    Resume(PathBuf),
}

/// A configuration that cannot describe a VM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("guest memory of {mem_mib} MiB is outside {MIN_MEM_MIB}..={MAX_MEM_MIB} MiB")]
    Memory { mem_mib: u32 },
    #[error("a VM needs at least one vCPU")]
    NoVcpus,
    #[error("{vcpus} vCPUs requested; husk supports at most {MAX_VCPUS}")]
    TooManyVcpus { vcpus: u32 },
    #[error("block device id {id:?} is longer than 20 bytes")]
    BlockId { id: String },
    #[error("virtio-fs tag {tag:?} must be 1 to 36 bytes")]
    FsTag { tag: String },
}

impl VmConfig {
    /// A VM booting `kernel` with the defaults.
    pub fn new(kernel: PathBuf) -> Self {
        VmConfig {
            kernel,
            initramfs: None,
            cmdline: BASE_CMDLINE.to_owned(),
            mem_mib: DEFAULT_MEM_MIB,
            vcpus: DEFAULT_VCPUS,
            block: Vec::new(),
            net: Vec::new(),
            fs: Vec::new(),
            console: ConsoleOutput::Stdout,
            vsock: None,
            timeout: None,
            timeline: None,
            snapshot: None,
            checkpoint: None,
        }
    }

    /// Checks what can be checked without touching the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::Memory {
                mem_mib: self.mem_mib,
            });
        }
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if self.vcpus > MAX_VCPUS {
            return Err(ConfigError::TooManyVcpus { vcpus: self.vcpus });
        }
        if let Some(b) = self.block.iter().find(|b| b.id.len() > 20) {
            return Err(ConfigError::BlockId { id: b.id.clone() });
        }
        if let Some(f) = self
            .fs
            .iter()
            .find(|f| f.tag.is_empty() || f.tag.len() > crate::vmm::devices::virtio::fs::TAG_MAX)
        {
            return Err(ConfigError::FsTag { tag: f.tag.clone() });
        }
        Ok(())
    }

    /// Guest RAM in bytes.
    pub fn mem_bytes(&self) -> u64 {
        u64::from(self.mem_mib) << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = VmConfig::new("/k".into());
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.mem_bytes(), 128 << 20);
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = VmConfig::new("/k".into());
        c.mem_mib = 4;
        assert_eq!(c.validate(), Err(ConfigError::Memory { mem_mib: 4 }));
        c.mem_mib = 64;
        c.vcpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::NoVcpus));
        c.vcpus = 1;
        c.block.push(BlockConfig {
            path: "/x".into(),
            read_only: false,
            id: "x".repeat(21),
        });
        assert!(matches!(c.validate(), Err(ConfigError::BlockId { .. })));
    }
}
