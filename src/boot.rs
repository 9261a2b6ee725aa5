//! `husk boot`: run one command in a fresh microVM and return its status.
//!
//! Turns the request into a [`VmConfig`]: the kernel, an initramfs built in
//! memory around husk-init, the root filesystem as the first disk (an image
//! built from a directory for this run only, an ext4 image as given, or the
//! cached busybox image, read-only), and the command on the kernel command
//! line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::proto::{self, BootCommand, Ending};
use crate::rootfs::{busybox, image, initramfs};
use crate::vmm::config::{BlockConfig, ConsoleOutput, Initramfs, VmConfig};
use crate::vmm::{self, VmExit};

/// What `husk boot` was asked for.
#[derive(Debug, Clone)]
pub struct BootRequest {
    pub kernel: Option<PathBuf>,
    pub rootfs: Option<PathBuf>,
    pub mem_mib: u32,
    pub vcpus: u32,
    /// Appended to husk's kernel command line.
    pub extra_cmdline: Option<String>,
    pub timeout: Option<Duration>,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub console: ConsoleOutput,
}

/// Why `husk boot` could not run the command.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel {path} does not exist (run `make kernel`, or pass --kernel)")]
    KernelMissing { path: PathBuf },
    #[error("rootfs {path} does not exist")]
    RootfsMissing { path: PathBuf },
    #[error("rootfs {path} is neither a directory nor an ext4 image")]
    RootfsKind { path: PathBuf },
    #[error("reading rootfs {path}: {source}")]
    RootfsRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("guest init {path}: {reason}")]
    Init { path: PathBuf, reason: String },
    #[error("no command given: husk boot [OPTIONS] -- COMMAND [ARGS...]")]
    NoCommand,
    #[error("temporary rootfs image: {0}")]
    Temp(std::io::Error),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Busybox(#[from] busybox::BusyboxError),
    #[error(transparent)]
    Vmm(#[from] vmm::builder::BuildError),
}

/// Checks that `data` is an ELF executable without a program interpreter
/// (a dynamically linked init cannot run in the initramfs).
pub fn check_static_elf(data: &[u8]) -> Result<(), String> {
    const PT_INTERP: u32 = 3;
    const EHDR_LEN: usize = 64;
    if data.len() < EHDR_LEN || &data[..4] != b"\x7fELF" {
        return Err("not an ELF executable".into());
    }
    if data[4] != 2 || data[5] != 1 {
        return Err("not a 64-bit little-endian ELF".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]);
    let phoff = usize::try_from(u64::from_le_bytes(
        data[32..40].try_into().unwrap_or_default(),
    ))
    .map_err(|_| "bad program header offset".to_string())?;
    let phentsize = usize::from(u16_at(54));
    let phnum = usize::from(u16_at(56));
    for i in 0..phnum {
        let at = phoff
            .checked_add(i.checked_mul(phentsize).ok_or("bad program headers")?)
            .ok_or("bad program headers")?;
        let p_type = data
            .get(at..at + 4)
            .ok_or_else(|| "truncated program headers".to_string())?;
        if u32::from_le_bytes(p_type.try_into().unwrap_or_default()) == PT_INTERP {
            return Err(format!(
                "dynamically linked; build it for {} (make build)",
                crate::paths::INIT_TARGET
            ));
        }
    }
    Ok(())
}

/// The initramfs around the configured husk-init.
pub fn initramfs_bytes(init_path: &Path) -> Result<Vec<u8>, BootError> {
    let init_err = |reason: String| BootError::Init {
        path: init_path.to_path_buf(),
        reason,
    };
    let init = std::fs::read(init_path).map_err(|e| {
        init_err(format!(
            "{e} (run `make build`, or set {})",
            crate::paths::ENV_INIT
        ))
    })?;
    check_static_elf(&init).map_err(init_err)?;
    let mut out = Vec::with_capacity(init.len() + 4096);
    initramfs::write_archive(&mut out, &initramfs::husk_initramfs(init))
        .map_err(|e| init_err(e.to_string()))?;
    Ok(out)
}

/// The root disk for a request; `_temp` keeps a per-run image alive.
struct RootDisk {
    block: BlockConfig,
    _temp: Option<tempfile::TempPath>,
}

fn root_disk(rootfs: Option<&Path>) -> Result<RootDisk, BootError> {
    let Some(path) = rootfs else {
        let image = busybox::default_image(&crate::paths::cache_dir())?;
        return Ok(RootDisk {
            block: BlockConfig {
                path: image,
                read_only: true,
                id: "husk-root".into(),
            },
            _temp: None,
        });
    };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BootError::RootfsMissing {
            path: path.to_path_buf(),
        },
        _ => BootError::RootfsRead {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    if meta.is_dir() {
        let temp = tempfile::Builder::new()
            .prefix("husk-rootfs.")
            .suffix(".ext4")
            .tempfile()
            .map_err(BootError::Temp)?
            .into_temp_path();
        image::build_ext4(path, &temp)?;
        return Ok(RootDisk {
            block: BlockConfig {
                path: temp.to_path_buf(),
                read_only: false,
                id: "husk-root".into(),
            },
            _temp: Some(temp),
        });
    }
    let is_ext = meta.is_file()
        && image::is_ext_image(path).map_err(|source| BootError::RootfsRead {
            path: path.to_path_buf(),
            source,
        })?;
    if !is_ext {
        return Err(BootError::RootfsKind {
            path: path.to_path_buf(),
        });
    }
    Ok(RootDisk {
        block: BlockConfig {
            path: path.to_path_buf(),
            read_only: false,
            id: "husk-root".into(),
        },
        _temp: None,
    })
}

/// The kernel command line for a request.
pub fn kernel_cmdline(cmd: &BootCommand, read_only_root: bool, extra: Option<&str>) -> String {
    let mut line = format!(
        "{} {}=1 {}=/dev/vda",
        vmm::config::BASE_CMDLINE,
        proto::PARAM_QUIET,
        proto::PARAM_ROOT
    );
    if read_only_root {
        line.push_str(&format!(" {}=1", proto::PARAM_RO));
    }
    if let Some(extra) = extra.filter(|e| !e.trim().is_empty()) {
        line.push(' ');
        line.push_str(extra.trim());
    }
    line.push_str(&format!(
        " {}={}",
        proto::PARAM_CMD,
        proto::encode_command(cmd)
    ));
    line
}

/// Runs the request's command in a new microVM.
pub fn run(req: &BootRequest) -> Result<VmExit, BootError> {
    if req.command.is_empty() {
        return Err(BootError::NoCommand);
    }
    let kernel = req
        .kernel
        .clone()
        .unwrap_or_else(crate::paths::default_kernel);
    if !kernel.exists() {
        return Err(BootError::KernelMissing { path: kernel });
    }
    let initramfs = initramfs_bytes(&crate::paths::default_init())?;
    let root = root_disk(req.rootfs.as_deref())?;
    let cmd = BootCommand {
        args: req.command.clone(),
        env: req.env.clone(),
        cwd: req.cwd.clone(),
    };
    let mut config = VmConfig::new(kernel);
    config.initramfs = Some(Initramfs::Bytes(Arc::new(initramfs)));
    config.cmdline = kernel_cmdline(&cmd, root.block.read_only, req.extra_cmdline.as_deref());
    config.mem_mib = req.mem_mib;
    config.vcpus = req.vcpus;
    config.block = vec![root.block.clone()];
    config.console = req.console.clone();
    config.timeout = req.timeout;
    let exit = vmm::build_and_run(config)?;
    drop(root);
    Ok(exit)
}

/// The process exit status `husk boot` ends with, and a message for stderr
/// when the guest did not simply end its command.
pub fn exit_status(exit: &VmExit) -> (u8, Option<String>) {
    match exit {
        VmExit::Guest(Ending::Exited(code)) => (*code, None),
        VmExit::Guest(ending @ Ending::Signaled(sig)) => (
            ending.shell_code(),
            Some(format!("the command was killed by signal {sig}")),
        ),
        VmExit::Guest(Ending::InitFailed) => (
            EXIT_GUEST_FAILED,
            Some(
                "the guest init failed before the command could run (its message is above)".into(),
            ),
        ),
        VmExit::Reset { panic: Some(msg) } => (
            EXIT_GUEST_FAILED,
            Some(format!("the guest kernel panicked: {msg}")),
        ),
        VmExit::Reset { panic: None } => (
            EXIT_GUEST_FAILED,
            Some("the guest rebooted without reporting an exit status".into()),
        ),
        VmExit::TimedOut(d) => (
            EXIT_TIMED_OUT,
            Some(format!(
                "the guest did not finish within {} s and was stopped",
                d.as_secs()
            )),
        ),
        VmExit::Failed(msg) => (EXIT_GUEST_FAILED, Some(msg.clone())),
        VmExit::Stopped => (EXIT_GUEST_FAILED, Some("the VM was stopped".into())),
        VmExit::Snapshotted => (
            EXIT_GUEST_FAILED,
            Some("the VM was snapshotted instead of running its command".into()),
        ),
        VmExit::Checkpointed => (
            EXIT_GUEST_FAILED,
            Some("the VM was checkpointed before its command ended".into()),
        ),
    }
}

/// Exit status when the VM ended without a command status (as `timeout(1)`
/// uses 125 for its own failures).
pub const EXIT_GUEST_FAILED: u8 = 125;
/// Exit status on timeout (as `timeout(1)`).
pub const EXIT_TIMED_OUT: u8 = 124;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_elves_are_told_apart() {
        let me = std::fs::read("/proc/self/exe").unwrap();
        // Test binaries are dynamically linked against glibc.
        assert!(check_static_elf(&me)
            .unwrap_err()
            .contains("dynamically linked"));
        assert!(check_static_elf(b"#!/bin/sh\n").is_err());
        if let Ok(bb) = std::fs::read(busybox::BUSYBOX) {
            assert_eq!(check_static_elf(&bb), Ok(()));
        }
    }

    #[test]
    fn the_cmdline_carries_root_quiet_extra_and_the_command_last() {
        let cmd = BootCommand {
            args: vec!["echo".into(), "hi".into()],
            env: vec![],
            cwd: "/".into(),
        };
        let line = kernel_cmdline(&cmd, true, Some(" loglevel=7 "));
        assert!(line.starts_with(vmm::config::BASE_CMDLINE));
        assert!(line.contains(" husk.quiet=1 husk.root=/dev/vda husk.ro=1 loglevel=7 husk.cmd="));
        let encoded = line.rsplit_once("husk.cmd=").unwrap().1;
        assert_eq!(proto::decode_command(encoded).unwrap(), cmd);
    }

    #[test]
    fn bad_rootfs_paths_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        assert!(matches!(
            root_disk(Some(&missing)),
            Err(BootError::RootfsMissing { .. })
        ));
        let text = tmp.path().join("file.txt");
        std::fs::write(&text, "not an image").unwrap();
        let err = root_disk(Some(&text)).err().unwrap();
        assert!(
            err.to_string()
                .contains("neither a directory nor an ext4 image"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_becomes_a_temporary_image_that_goes_away() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("etc")).unwrap();
        let disk = root_disk(Some(tmp.path())).unwrap();
        let path = disk.block.path.clone();
        assert!(image::is_ext_image(&path).unwrap());
        assert!(!disk.block.read_only);
        drop(disk);
        assert!(!path.exists());
    }

    #[test]
    fn statuses_follow_the_shell_and_timeout() {
        assert_eq!(exit_status(&VmExit::Guest(Ending::Exited(3))), (3, None));
        assert_eq!(exit_status(&VmExit::Guest(Ending::Signaled(9))).0, 137);
        assert_eq!(
            exit_status(&VmExit::TimedOut(Duration::from_secs(5))).0,
            124
        );
        let (code, msg) = exit_status(&VmExit::Reset {
            panic: Some("Kernel panic - not syncing: x".into()),
        });
        assert_eq!(code, 125);
        assert!(msg.unwrap().contains("panicked"));
    }
}
