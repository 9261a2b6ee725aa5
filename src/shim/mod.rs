//! `containerd-shim-husk-v2`: containerd's shim v2 for husk, so that
//! `ctr run --runtime io.containerd.husk.v2` (or a CRI runtime handler with
//! `runtime_type = "io.containerd.husk.v2"`) runs containers in microVMs.
//!
//! Built on the `containerd-shim` crate (the ttrpc server, the shim's
//! start/delete/serve protocol, event publishing) over [`crate::runtime`]:
//! the task service calls the same `create`/`start`/`kill`/`delete`/`exec`
//! functions as the `husk` CLI, so there is one lifecycle. One VM per
//! container; the shim is grouped per container, or per pod when the bundle
//! carries a CRI sandbox id (one shim process then serves the pod's
//! containers, each still in its own VM).
//!
//! The shim does not reap children it did not start (the crate's global
//! reaper is off): it waits for each VMM process itself, so the helper
//! programs the runtime runs (`ip`, `tc`, hooks) keep their exit statuses.

pub mod mount;
pub mod service;
pub mod stdio;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::{self as shim, api, publisher::RemotePublisher, Config, ExitSignal, Flags};

/// The runtime name containerd maps to this binary.
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";
/// Where the shim keeps husk's container state, per containerd namespace
/// (`HUSK_SHIM_ROOT` overrides).
pub const DEFAULT_ROOT: &str = "/run/containerd/husk";
/// Environment variable overriding [`DEFAULT_ROOT`].
pub const ENV_ROOT: &str = "HUSK_SHIM_ROOT";
/// The CRI annotation naming a container's pod sandbox.
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// The exit status reported for a container whose shim died (SIGKILL).
const EXIT_KILLED: u32 = 128 + 9;

/// Runs the shim (all three of containerd's invocations: `start`, `delete`,
/// and serving the task API).
pub fn main() {
    let config = Config {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    shim::run::<HuskShim>(RUNTIME_ID, Some(config));
}

/// husk's state root for a containerd namespace.
pub fn state_root(namespace: &str) -> PathBuf {
    let base = std::env::var_os(ENV_ROOT)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    base.join(namespace)
}

/// The `husk` executable beside the shim (installed side by side, or both
/// in cargo's target directory), else the one on `PATH`.
pub fn husk_exe() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("husk")));
    match beside {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from("husk"),
    }
}

/// The shim's grouping key: the pod's sandbox id when the bundle has one.
fn grouping(bundle: &Path, id: &str) -> String {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
        .and_then(|spec| {
            spec.get("annotations")?
                .get(SANDBOX_ID_ANNOTATION)?
                .as_str()
                .map(str::to_owned)
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| id.to_owned())
}

/// The shim process itself.
pub struct HuskShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
}

impl shim::Shim for HuskShim {
    type T = service::Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        HuskShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
        }
    }

    fn start_shim(&mut self, opts: shim::StartOpts) -> Result<String, shim::Error> {
        let bundle = std::env::current_dir().unwrap_or_default();
        let group = grouping(&bundle, &opts.id);
        let (_pid, address) = shim::spawn(opts, &group, Vec::new())?;
        Ok(address)
    }

    /// containerd's clean-up after a shim died: the container's VMM, state,
    /// network plumbing and rootfs mount go.
    fn delete_shim(&mut self) -> Result<api::DeleteResponse, shim::Error> {
        let bundle = std::env::current_dir().unwrap_or_default();
        let root = state_root(&self.namespace);
        if let Err(e) = crate::runtime::container::delete(&root, &self.id, true) {
            log::warn!("container {}: {e}", self.id);
        }
        service::unmount_rootfs(&bundle);
        Ok(api::DeleteResponse {
            exit_status: EXIT_KILLED,
            exited_at: Some(service::timestamp(std::time::SystemTime::now())).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        service::Service::new(
            self.namespace.clone(),
            state_root(&self.namespace),
            Arc::clone(&self.exit),
            publisher,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_root_is_per_namespace() {
        let r = state_root("k8s.io");
        assert!(r.ends_with("k8s.io"), "{}", r.display());
    }

    #[test]
    fn grouping_follows_the_cri_sandbox_id() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(grouping(dir.path(), "c1"), "c1");
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["true"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "annotations": {SANDBOX_ID_ANNOTATION: "pod-1"}
        });
        std::fs::write(dir.path().join("config.json"), spec.to_string()).unwrap();
        assert_eq!(grouping(dir.path(), "c1"), "pod-1");
    }
}
