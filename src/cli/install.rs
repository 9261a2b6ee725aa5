//! `husk install`: register husk with a container engine.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// The engines `husk install` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// podman: containers.conf's [engine.runtimes].
    Podman,
    /// Docker: daemon.json's "runtimes".
    Docker,
    /// containerd (`ctr --runtime io.containerd.husk.v2`): the shim on its PATH.
    Containerd,
    /// containerd's CRI (Kubernetes): the shim, and a `husk` runtime
    /// handler in config.toml.
    Cri,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The engine to register husk with.
    #[arg(long, value_enum)]
    pub engine: EngineArg,
    /// Take husk's registration out instead.
    #[arg(long)]
    pub uninstall: bool,
    /// The engine's configuration file (default: its system one:
    /// /etc/containers/containers.conf, /etc/docker/daemon.json,
    /// /etc/containerd/config.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The husk binary the engine runs (default: this one).
    #[arg(long, value_name = "PATH")]
    pub husk: Option<PathBuf>,
    /// Say what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}
