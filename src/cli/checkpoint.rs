//! `husk checkpoint ID`, `husk restore ID` (runc's flags; what CRIU needs
//! and a VM snapshot does not is accepted and has no effect)

use std::path::PathBuf;

use super::create::CreateOpts;

/// CRIU's options both verbs take (runc's names): accepted, with no effect.
/// A VM's TCP connections, Unix sockets, terminal and file locks are in its
/// memory and go with it, and its cgroup is husk's, made again at restore.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CriuFlags {
    #[arg(long, overrides_with = "tcp_established")]
    pub tcp_established: bool,
    #[arg(long, overrides_with = "ext_unix_sk")]
    pub ext_unix_sk: bool,
    #[arg(long, overrides_with = "shell_job")]
    pub shell_job: bool,
    #[arg(long, overrides_with = "file_locks")]
    pub file_locks: bool,
    #[arg(long)]
    pub manage_cgroups_mode: Option<String>,
}

/// `husk checkpoint`: write a running container's VM to a directory; the
/// container is removed then (as runc does without `--leave-running`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CheckpointArgs {
    /// Where the checkpoint is written (made when missing).
    #[arg(long, default_value = "checkpoint")]
    pub image_path: PathBuf,
    /// Accepted for runc compatibility (CRIU's logs; husk writes none).
    #[arg(long)]
    pub work_path: Option<PathBuf>,
    /// Keep the container running after the checkpoint (its VM stands still
    /// while it is written). podman 4.3 passes it twice: taken once.
    #[arg(long, overrides_with = "leave_running")]
    pub leave_running: bool,
    #[command(flatten)]
    pub criu: CriuFlags,
    /// Incremental and lazy checkpoints: not supported (refused).
    #[arg(long)]
    pub pre_dump: bool,
    #[arg(long)]
    pub parent_path: Option<PathBuf>,
    #[arg(long)]
    pub lazy_pages: bool,
    #[arg(long)]
    pub page_server: Option<String>,
    /// The container id.
    pub container_id: String,
}

/// `husk restore`: create and start a container from a checkpoint; waits
/// for its process unless `--detach`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub opts: CreateOpts,
    /// The checkpoint (`husk checkpoint --image-path`).
    #[arg(long, default_value = "checkpoint")]
    pub image_path: PathBuf,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub work_path: Option<PathBuf>,
    /// Return once the container runs instead of waiting for it.
    #[arg(short, long)]
    pub detach: bool,
    /// Accepted for runc compatibility (the VMM reaps its own children).
    #[arg(long)]
    pub no_subreaper: bool,
    #[command(flatten)]
    pub criu: CriuFlags,
    #[arg(long)]
    pub lsm_profile: Option<String>,
    #[arg(long)]
    pub lsm_mount_label: Option<String>,
    #[arg(long)]
    pub auto_dedup: bool,
    /// Lazy restore: not supported (refused).
    #[arg(long)]
    pub lazy_pages: bool,
    /// The container id.
    pub container_id: String,
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;
    use std::path::Path;

    #[test]
    fn checkpoint_takes_runc_flags() {
        let cli = parse(&[
            "checkpoint",
            "--image-path",
            "/img",
            "--work-path",
            "/w",
            "--tcp-established",
            "--file-locks",
            "c1",
        ])
        .unwrap();
        let Command::Checkpoint(a) = cli.command else {
            panic!("not checkpoint");
        };
        assert_eq!(a.image_path, Path::new("/img"));
        assert!(a.criu.tcp_established && a.criu.file_locks && !a.leave_running);
        assert_eq!(a.container_id, "c1");
        let Command::Checkpoint(d) = parse(&["checkpoint", "c2"]).unwrap().command else {
            panic!("not checkpoint");
        };
        assert_eq!(d.image_path, Path::new("checkpoint"));
        // podman 4.3 repeats --leave-running (runc takes a flag twice).
        let Command::Checkpoint(r) = parse(&[
            "checkpoint",
            "--leave-running",
            "--leave-running",
            "--tcp-established",
            "--tcp-established",
            "c3",
        ])
        .unwrap()
        .command
        else {
            panic!("not checkpoint");
        };
        assert!(r.leave_running && r.criu.tcp_established);
        assert!(parse(&["checkpoint"]).is_err());
    }

    #[test]
    fn restore_takes_runc_flags() {
        // podman (conmon): restore --bundle B --image-path I --work-path W
        // --pid-file P --detach ID, and CRIU options.
        let cli = parse(&[
            "restore",
            "--bundle",
            "/b",
            "--image-path",
            "/img",
            "--work-path",
            "/w",
            "--pid-file",
            "/p",
            "--detach",
            "--tcp-established",
            "--lsm-mount-label",
            "x",
            "c1",
        ])
        .unwrap();
        let Command::Restore(a) = cli.command else {
            panic!("not restore");
        };
        assert_eq!(a.opts.bundle, Path::new("/b"));
        assert_eq!(a.image_path, Path::new("/img"));
        assert_eq!(a.opts.pid_file.as_deref(), Some(Path::new("/p")));
        assert!(a.detach && a.criu.tcp_established);
        assert_eq!(a.container_id, "c1");
    }
}
