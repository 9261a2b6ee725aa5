//! `husk create [OPTIONS] ID`

use std::path::PathBuf;

/// Options shared by `create` and `run` (runc spells them the same in both).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CreateOpts {
    /// The bundle directory (holds config.json and the root filesystem).
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub bundle: PathBuf,
    /// AF_UNIX socket that receives the master end of the console's pty
    /// (used when `process.terminal` is true).
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Write the container's pid (the VMM process) here, without a newline.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Accepted for runc compatibility; the guest has its own root.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility; keyrings are per guest kernel.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass N more file descriptors (3, 4, ... beyond stdio and
    /// `$LISTEN_FDS`) to the container.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
}

/// `husk create`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub opts: CreateOpts,
    /// The container id (unique under --root).
    pub container_id: String,
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::{Command, LogFormat};
    use std::path::{Path, PathBuf};

    fn create(args: &[&str]) -> super::CreateArgs {
        match parse(args).unwrap().command {
            Command::Create(c) => c,
            other => panic!("not create: {other:?}"),
        }
    }

    #[test]
    fn minimal_defaults() {
        let c = create(&["create", "c1"]);
        assert_eq!(c.container_id, "c1");
        assert_eq!(c.opts.bundle, PathBuf::from("."));
        assert_eq!(c.opts.pid_file, None);
        assert_eq!(c.opts.console_socket, None);
        assert!(!c.opts.no_pivot && !c.opts.no_new_keyring);
        assert_eq!(c.opts.preserve_fds, 0);
    }

    #[test]
    fn engine_style_invocation() {
        let cli = parse(&[
            "--root",
            "/run/x",
            "--log",
            "/p",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "id",
        ])
        .unwrap();
        assert_eq!(cli.global.root, PathBuf::from("/run/x"));
        assert_eq!(cli.global.log.as_deref(), Some(Path::new("/p")));
        assert_eq!(cli.global.log_format, LogFormat::Json);
        let Command::Create(c) = cli.command else {
            panic!("not create")
        };
        assert_eq!(c.opts.bundle, PathBuf::from("/b"));
        assert_eq!(c.opts.pid_file.as_deref(), Some(Path::new("/p")));
        assert_eq!(c.container_id, "id");
    }

    #[test]
    fn conmon_invocation() {
        let c = create(&[
            "create",
            "--bundle",
            "/var/lib/containers/storage/overlay-containers/abc/userdata",
            "--pid-file",
            "/run/containers/storage/overlay-containers/abc/userdata/pidfile",
            "--no-pivot",
            "--no-new-keyring",
            "--preserve-fds",
            "2",
            "--console-socket",
            "/tmp/conmon-term.XYZ",
            "abc",
        ]);
        assert!(c.opts.no_pivot && c.opts.no_new_keyring);
        assert_eq!(c.opts.preserve_fds, 2);
        assert_eq!(
            c.opts.console_socket.as_deref(),
            Some(Path::new("/tmp/conmon-term.XYZ"))
        );
        assert_eq!(c.container_id, "abc");
    }

    #[test]
    fn short_bundle_and_equals_forms() {
        let c = create(&["create", "-b", "/b", "--pid-file=/p", "x"]);
        assert_eq!(c.opts.bundle, PathBuf::from("/b"));
        assert_eq!(c.opts.pid_file.as_deref(), Some(Path::new("/p")));
    }

    #[test]
    fn id_is_required_and_single() {
        assert!(parse(&["create", "--bundle", "/b"]).is_err());
        assert!(parse(&["create", "a", "b"]).is_err());
    }

    #[test]
    fn preserve_fds_must_be_a_number() {
        assert!(parse(&["create", "--preserve-fds", "x", "id"]).is_err());
        assert!(parse(&["create", "--preserve-fds", "-1", "id"]).is_err());
    }
}
