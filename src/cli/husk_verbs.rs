//! husk's own verbs, beside runc's: host check, one-shot boots, image tools,
//! and the hidden VMM process verb.

use std::path::PathBuf;

/// `husk check`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CheckArgs {}

/// `husk boot [OPTIONS] -- COMMAND [ARGS...]`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct BootArgs {
    /// Guest kernel, ELF vmlinux or bzImage (default: the one `make kernel` built).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Root filesystem: a directory (packed into a temporary ext4 image) or an
    /// ext4 image (used in place). Default: a read-only busybox image.
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = crate::vmm::config::DEFAULT_MEM_MIB)]
    pub mem: u32,
    /// Number of vCPUs.
    #[arg(long, default_value_t = crate::vmm::config::DEFAULT_VCPUS)]
    pub vcpus: u32,
    /// Extra kernel command-line parameters.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Stop the VM after this many seconds (exit status 124).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Environment variable for the command (KEY=VALUE), repeatable.
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Working directory of the command inside the guest.
    #[arg(long, default_value = "/")]
    pub cwd: String,
    /// Write the guest console (kernel messages and the command's output)
    /// to this file instead of standard output.
    #[arg(long)]
    pub console_log: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `husk image DIR OUTPUT`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ImageArgs {
    /// The directory to pack.
    pub dir: PathBuf,
    /// The image file to write.
    pub output: PathBuf,
}

/// `husk initramfs OUTPUT [--init PATH]`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct InitramfsArgs {
    /// The cpio file to write.
    pub output: PathBuf,
    /// The husk-init binary to pack (default: the one husk uses).
    #[arg(long)]
    pub init: Option<PathBuf>,
}

/// `husk vmm ID` (internal: the container's VMM process, started by create).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct VmmArgs {
    pub container_id: String,
}

/// `husk fs-server ID` (internal).
#[derive(Debug, Clone, clap::Args)]
pub struct FsServerArgs {
    /// The container whose files it serves.
    pub container_id: String,
}
