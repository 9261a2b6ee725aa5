//! The runc-compatible command line: argument structs only, one file per verb.
//!
//! Engines drive an OCI runtime through runc's command line, so husk accepts
//! what they pass, in the same places:
//!
//! * global options come before the verb
//!   (`husk --root R --log L --log-format json [--systemd-cgroup] create ...`);
//! * containerd's go-runc passes `--root`, `--debug`, `--log`, `--log-format`,
//!   `--criu`, `--systemd-cgroup` and `--rootless=true|false`;
//! * conmon (podman, CRI-O) passes `[--systemd-cgroup] [runtime args] create
//!   --bundle B --pid-file P [--no-pivot] [--no-new-keyring] [--preserve-fds N]
//!   [--console-socket S] ID` and `exec --pid-file P --process F --detach
//!   [--console-socket S] ID`;
//! * podman adds `--log-format=json --log PATH` and, for `--cgroups=disabled`,
//!   crun's `--cgroup-manager disabled` (accepted and ignored here).
//!
//! Nothing here touches the host: `main.rs` dispatches on [`Command`] and
//! `runtime/` does the work.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};

pub mod checkpoint;
pub mod create;
pub mod delete;
pub mod exec;
pub mod features;
pub mod husk_verbs;
pub mod install;
pub mod kill;
pub mod list;
pub mod pause;
pub mod ps;
pub mod run;
pub mod signal;
pub mod spec;
pub mod start;
pub mod state;

pub use checkpoint::{CheckpointArgs, RestoreArgs};
pub use create::{CreateArgs, CreateOpts};
pub use delete::DeleteArgs;
pub use exec::{ExecArgs, ExecUser};
pub use features::FeaturesArgs;
pub use kill::KillArgs;
pub use list::ListArgs;
pub use pause::{PauseArgs, ResumeArgs};
pub use ps::PsArgs;
pub use run::RunArgs;
pub use signal::parse_signal;
pub use spec::SpecArgs;
pub use start::StartArgs;
pub use state::StateArgs;

/// Where container state lives when `--root` is not given (and the caller
/// is not rootless, [`default_root`]).
pub const DEFAULT_ROOT: &str = "/run/husk";

/// Where container state lives when `--root` is not given: [`DEFAULT_ROOT`],
/// or `$XDG_RUNTIME_DIR/husk` for a rootless caller, by runc's rule: not
/// uid 0, or uid 0 of a user namespace (rootless podman runs its runtime
/// in one) with no `$USER` or one other than root.
pub fn default_root() -> PathBuf {
    root_for(
        nix::unistd::geteuid().as_raw(),
        crate::paths::in_user_namespace(),
        std::env::var_os("USER").as_deref(),
        std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
    )
}

/// [`default_root`] from the facts it reads.
fn root_for(
    euid: u32,
    in_userns: bool,
    user: Option<&std::ffi::OsStr>,
    xdg_runtime_dir: Option<&std::ffi::OsStr>,
) -> PathBuf {
    let rootless = euid != 0 || (in_userns && user.is_none_or(|u| u != "root"));
    match xdg_runtime_dir {
        Some(dir) if rootless && !dir.is_empty() => Path::new(dir).join("husk"),
        _ => PathBuf::from(DEFAULT_ROOT),
    }
}

/// The OCI runtime spec version husk implements; also in `--version`.
/// (`concat!` needs a literal; a test keeps it equal to oci-spec's.)
pub const SPEC_VERSION: &str = "1.1.0";

/// `husk --version`, in runc's three-line shape: containerd's go-runc splits
/// the first line on `"version "` and the others on `": "`, and wants
/// exactly three lines. clap prints the binary name before it.
pub const VERSION_TEXT: &str = concat!(
    "version ",
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    "v",
    env!("CARGO_PKG_VERSION"),
    "\nspec: ",
    "1.1.0"
);

/// Errors in argument values that clap hands to our parsers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgError {
    /// runc's wording, so engines' error matching keeps working.
    #[error("unknown signal {name:?}")]
    UnknownSignal { name: String },
    #[error("signal {number} is outside 1..={max}")]
    SignalOutOfRange { number: i64, max: i32 },
    #[error("invalid user {value:?}: expected UID[:GID] with numeric ids")]
    InvalidUser { value: String },
}

/// The `husk` command line: global options, then one verb.
#[derive(Debug, Parser)]
#[command(
    name = "husk",
    version = VERSION_TEXT,
    about = "An OCI runtime that runs every container in its own KVM microVM",
    disable_version_flag = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
    /// Print the version (`-v` as in runc).
    #[arg(short = 'v', long = "version", action = clap::ArgAction::Version)]
    version: Option<bool>,
}

/// Options that come before the verb (runc's "global options").
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct GlobalOpts {
    /// Root directory for container state (should be on tmpfs).
    #[arg(long, value_name = "DIR", default_value_os_t = default_root())]
    pub root: PathBuf,
    /// Write husk's own log here (default: standard error). Like runc, the
    /// next word is taken whatever it looks like.
    #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
    pub log: Option<PathBuf>,
    /// Format of log lines: `text` or `json` (runc's logrus shapes).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log debug messages.
    #[arg(long)]
    pub debug: bool,
    /// Accepted for runc compatibility and ignored: the VMM process is placed
    /// in whatever cgroup the engine runs it in.
    #[arg(long)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility: `true`, `false` or `auto`.
    #[arg(long, value_name = "VALUE", value_enum)]
    pub rootless: Option<Rootless>,
    /// Accepted for runc compatibility and ignored (no checkpointing).
    #[arg(long, value_name = "PATH", hide = true)]
    pub criu: Option<String>,
    /// crun's option, which podman passes for `--cgroups=disabled`; ignored.
    #[arg(long, value_name = "MANAGER", hide = true)]
    pub cgroup_manager: Option<String>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// `time="..." level=error msg="..."`
    #[default]
    Text,
    /// `{"level":"error","msg":"...","time":"..."}`
    Json,
}

/// `--rootless` (runc takes a value; go-runc passes `--rootless=true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Rootless {
    True,
    False,
    Auto,
}

/// `--format` of `list` and `ps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container: boot its VM and stop before the user process.
    Create(CreateArgs),
    /// Start the user process of a created container.
    Start(StartArgs),
    /// Print the state of a container as OCI state JSON.
    State(StateArgs),
    /// Send a signal (default SIGTERM) to the container's process.
    Kill(KillArgs),
    /// Delete a container and what it holds.
    Delete(DeleteArgs),
    /// Create and start a container.
    Run(RunArgs),
    /// Run a new process inside a container.
    Exec(ExecArgs),
    /// Freeze a running container's VM (its cgroup).
    Pause(PauseArgs),
    /// Thaw a paused container's VM.
    Resume(ResumeArgs),
    /// Write a running container's VM to a directory (the container ends).
    Checkpoint(CheckpointArgs),
    /// Create and start a container from a checkpoint.
    Restore(RestoreArgs),
    /// List the processes running inside a container.
    Ps(PsArgs),
    /// List the containers under --root.
    List(ListArgs),
    /// Print the OCI features JSON.
    Features(FeaturesArgs),
    /// Write a starter config.json.
    Spec(SpecArgs),
    /// Tell whether this host can run husk microVMs, and if not, why.
    Check(husk_verbs::CheckArgs),
    /// Register husk with a container engine (podman, docker, containerd,
    /// cri), keeping the engine's other settings; --uninstall undoes it.
    Install(install::InstallArgs),
    /// Boot a microVM, run COMMAND in it, print its output, exit with its status.
    Boot(husk_verbs::BootArgs),
    /// Build an ext4 block image from a root filesystem directory.
    Image(husk_verbs::ImageArgs),
    /// Write the initramfs that carries husk-init (to boot husk's kernel
    /// under another VMM, e.g. QEMU, with the same init).
    Initramfs(husk_verbs::InitramfsArgs),
    /// Internal: the VMM process of a container (started by create).
    #[command(hide = true)]
    Vmm(husk_verbs::VmmArgs),
    /// Internal: a container's keeper, which removes its cgroup should its
    /// VMM end with its record gone (started by create).
    #[command(hide = true)]
    Keep,
    /// Internal: a container's fs server, which serves its shared files to
    /// its VM (started by its VMM).
    #[command(hide = true, name = "fs-server")]
    FsServer(husk_verbs::FsServerArgs),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Parses `husk ARGS...`.
    pub(crate) fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("husk").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn a_rootless_caller_keeps_its_state_in_its_runtime_dir() {
        use std::ffi::OsStr;
        let xdg = Some(OsStr::new("/run/user/1000"));
        let user = Some(OsStr::new("alice"));
        let husk_root = PathBuf::from(DEFAULT_ROOT);
        let mine = PathBuf::from("/run/user/1000/husk");
        assert_eq!(root_for(0, false, user, xdg), husk_root, "real root");
        assert_eq!(root_for(1000, false, user, xdg), mine, "a user");
        assert_eq!(root_for(0, true, user, xdg), mine, "rootless podman");
        let root_user = Some(OsStr::new("root"));
        assert_eq!(
            root_for(0, true, root_user, xdg),
            husk_root,
            "root in a userns"
        );
        assert_eq!(root_for(0, true, None, xdg), mine, "conmon passes no $USER");
        assert_eq!(
            root_for(1000, false, user, None),
            husk_root,
            "no runtime dir"
        );
        assert_eq!(root_for(1000, false, user, Some(OsStr::new(""))), husk_root);
    }

    #[test]
    fn defaults() {
        let cli = parse(&["list"]).unwrap();
        assert_eq!(cli.global.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(cli.global.log, None);
        assert_eq!(cli.global.log_format, LogFormat::Text);
        assert!(!cli.global.debug);
        assert!(!cli.global.systemd_cgroup);
        assert_eq!(cli.global.rootless, None);
    }

    #[test]
    fn containerd_go_runc_globals() {
        let cli = parse(&[
            "--root",
            "/run/containerd/runc/k8s.io",
            "--debug",
            "--log",
            "/run/containerd/io.containerd.runtime.v2.task/k8s.io/x/log.json",
            "--log-format",
            "json",
            "--criu",
            "criu",
            "--systemd-cgroup",
            "--rootless=false",
            "state",
            "x",
        ])
        .unwrap();
        assert_eq!(
            cli.global.root,
            PathBuf::from("/run/containerd/runc/k8s.io")
        );
        assert!(cli.global.debug);
        assert_eq!(
            cli.global.log.as_deref(),
            Some(std::path::Path::new(
                "/run/containerd/io.containerd.runtime.v2.task/k8s.io/x/log.json"
            ))
        );
        assert_eq!(cli.global.log_format, LogFormat::Json);
        assert_eq!(cli.global.criu.as_deref(), Some("criu"));
        assert!(cli.global.systemd_cgroup);
        assert_eq!(cli.global.rootless, Some(Rootless::False));
        assert!(matches!(cli.command, Command::State(ref a) if a.container_id == "x"));
    }

    #[test]
    fn podman_globals_with_equals_and_cgroup_manager() {
        let cli = parse(&[
            "--systemd-cgroup",
            "--log-format=json",
            "--log",
            "-odd-log-name",
            "--cgroup-manager",
            "disabled",
            "delete",
            "--force",
            "c1",
        ]);
        // `--log` takes the next word whatever it looks like, as in runc.
        let cli = cli.unwrap();
        assert_eq!(
            cli.global.log.as_deref(),
            Some(std::path::Path::new("-odd-log-name"))
        );
        assert_eq!(cli.global.cgroup_manager.as_deref(), Some("disabled"));
        assert!(matches!(cli.command, Command::Delete(ref a) if a.force && a.container_id == "c1"));
    }

    #[test]
    fn rootless_takes_a_value_like_runc() {
        assert_eq!(
            parse(&["--rootless", "auto", "list"])
                .unwrap()
                .global
                .rootless,
            Some(Rootless::Auto)
        );
        assert_eq!(
            parse(&["--rootless=true", "list"]).unwrap().global.rootless,
            Some(Rootless::True)
        );
        assert!(parse(&["--rootless=maybe", "list"]).is_err());
    }

    #[test]
    fn log_format_rejects_unknown() {
        assert!(parse(&["--log-format", "xml", "list"]).is_err());
    }

    #[test]
    fn verb_is_required_and_unknown_verbs_fail() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["frobnicate", "x"]).is_err());
    }

    #[test]
    fn version_is_three_lines_in_runcs_shape() {
        for flag in ["--version", "-v"] {
            let err = parse(&[flag]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
            let text = err.to_string();
            let lines: Vec<&str> = text.trim().lines().collect();
            assert_eq!(lines.len(), 3, "{text}");
            assert_eq!(
                lines[0],
                format!("husk version {}", env!("CARGO_PKG_VERSION"))
            );
            assert!(lines[1].starts_with("commit: "));
            assert_eq!(lines[2], format!("spec: {SPEC_VERSION}"));
        }
    }

    #[test]
    fn spec_version_matches_oci_spec_crate() {
        assert_eq!(SPEC_VERSION, oci_spec::runtime::VERSION);
        assert!(VERSION_TEXT.ends_with(SPEC_VERSION));
    }
}
