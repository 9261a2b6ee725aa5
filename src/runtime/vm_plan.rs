//! What `husk create` hands the VMM process (`<state dir>/vm.json`): the VM
//! to build and the container to set up in it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent_proto::ContainerSpec;
use crate::proto;
use crate::vmm::config::{self, BlockConfig, ConsoleOutput, Initramfs, VmConfig, VsockConfig};

/// File name of the plan in the container's state directory.
pub const PLAN_FILE: &str = "vm.json";
/// The guest's vsock CID (each VM has its own vsock device, so all can use
/// the first non-reserved CID).
pub const GUEST_CID: u64 = 3;

/// The VM and container a VMM process runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPlan {
    pub kernel: PathBuf,
    pub init: PathBuf,
    pub mem_mib: u32,
    pub vcpus: u32,
    /// The cached rootfs image, attached read-only (overlay in the guest).
    pub rootfs_image: PathBuf,
    pub control_socket: PathBuf,
    pub console_log: PathBuf,
    pub container: ContainerSpec,
}

/// Errors reading or writing a plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl VmPlan {
    pub fn save(&self, dir: &Path) -> Result<(), PlanError> {
        let path = dir.join(PLAN_FILE);
        let data = serde_json::to_vec(self).unwrap_or_default();
        std::fs::write(&path, data).map_err(|source| PlanError::Write { path, source })
    }

    pub fn load(dir: &Path) -> Result<VmPlan, PlanError> {
        let path = dir.join(PLAN_FILE);
        let data = std::fs::read(&path).map_err(|source| PlanError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&data).map_err(|source| PlanError::Parse { path, source })
    }

    /// The kernel command line of a container VM: the image (read-only
    /// underneath, the disk is attached read-only) under a writable overlay;
    /// `root.readonly` is applied by the agent once the container is set up.
    pub fn cmdline(&self) -> String {
        format!(
            "{} {}=1 {}=1 {}=1 {}=/dev/vda",
            config::BASE_CMDLINE,
            proto::PARAM_QUIET,
            proto::PARAM_AGENT,
            proto::PARAM_OVERLAY,
            proto::PARAM_ROOT,
        )
    }

    /// The VM configuration, with the initramfs already built.
    pub fn vm_config(&self, initramfs: Vec<u8>) -> VmConfig {
        let mut c = VmConfig::new(self.kernel.clone());
        c.initramfs = Some(Initramfs::Bytes(std::sync::Arc::new(initramfs)));
        c.cmdline = self.cmdline();
        c.mem_mib = self.mem_mib;
        c.vcpus = self.vcpus;
        c.block = vec![BlockConfig {
            path: self.rootfs_image.clone(),
            read_only: true,
            id: "husk-root".into(),
        }];
        c.console = ConsoleOutput::File(self.console_log.clone());
        c.vsock = Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: self.control_socket.clone(),
        });
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_round_trip_and_make_an_agent_vm() {
        let dir = tempfile::tempdir().unwrap();
        let plan = VmPlan {
            kernel: "/k".into(),
            init: "/i".into(),
            mem_mib: 192,
            vcpus: 2,
            rootfs_image: "/img".into(),
            control_socket: dir.path().join("vsock"),
            console_log: dir.path().join("console.log"),
            container: ContainerSpec::default(),
        };
        plan.save(dir.path()).unwrap();
        assert_eq!(VmPlan::load(dir.path()).unwrap(), plan);
        let c = plan.vm_config(vec![1]);
        assert!(c.cmdline.contains("husk.agent=1") && c.cmdline.contains("husk.overlay=1"));
        assert!(c.block[0].read_only);
        assert_eq!(c.vsock.as_ref().unwrap().guest_cid, GUEST_CID);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn a_missing_plan_is_named() {
        let err = VmPlan::load(Path::new("/no/such/dir")).unwrap_err();
        assert!(err.to_string().contains("/no/such/dir/vm.json"));
    }
}
