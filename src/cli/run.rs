//! `husk run [OPTIONS] ID`

use super::create::CreateOpts;

/// `husk run`: create and start; waits for the process unless `--detach`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub opts: CreateOpts,
    /// Return once the container runs instead of waiting for it.
    #[arg(short, long)]
    pub detach: bool,
    /// Do not delete the container after it exits.
    #[arg(long)]
    pub keep: bool,
    /// Accepted for runc compatibility (the VMM reaps its own children).
    #[arg(long)]
    pub no_subreaper: bool,
    /// The container id.
    pub container_id: String,
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;
    use std::path::{Path, PathBuf};

    fn run(args: &[&str]) -> super::RunArgs {
        match parse(args).unwrap().command {
            Command::Run(r) => r,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let r = run(&["run", "c1"]);
        assert_eq!(r.opts.bundle, PathBuf::from("."));
        assert!(!r.detach && !r.keep && !r.no_subreaper);
        assert_eq!(r.container_id, "c1");
    }

    #[test]
    fn all_options() {
        let r = run(&[
            "run",
            "-b",
            "/b",
            "-d",
            "--keep",
            "--no-subreaper",
            "--pid-file",
            "/p",
            "--console-socket",
            "/s",
            "--no-pivot",
            "--no-new-keyring",
            "--preserve-fds",
            "3",
            "c1",
        ]);
        assert_eq!(r.opts.bundle, PathBuf::from("/b"));
        assert!(r.detach && r.keep && r.no_subreaper);
        assert_eq!(r.opts.pid_file.as_deref(), Some(Path::new("/p")));
        assert_eq!(r.opts.console_socket.as_deref(), Some(Path::new("/s")));
        assert!(r.opts.no_pivot && r.opts.no_new_keyring);
        assert_eq!(r.opts.preserve_fds, 3);
    }

    #[test]
    fn go_runc_run_style() {
        // go-runc: run --bundle B --pid-file P --detach ID
        let r = run(&[
            "run",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "--detach",
            "c1",
        ]);
        assert!(r.detach);
        assert_eq!(r.container_id, "c1");
    }
}
