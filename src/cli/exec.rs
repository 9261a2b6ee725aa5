//! `husk exec [OPTIONS] ID [COMMAND [ARGS...]]` (or `-p process.json ID`)

use std::path::PathBuf;

use super::ArgError;

/// `--user UID[:GID]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: Option<u32>,
}

/// Parses `UID[:GID]` (numeric ids, as runc's `--user`).
pub fn parse_user(value: &str) -> Result<ExecUser, ArgError> {
    let invalid = || ArgError::InvalidUser {
        value: value.to_owned(),
    };
    let (uid, gid) = match value.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (value, None),
    };
    let uid = uid.parse().map_err(|_| invalid())?;
    let gid = gid
        .map(|g| g.parse::<u32>().map_err(|_| invalid()))
        .transpose()?;
    Ok(ExecUser { uid, gid })
}

/// `husk exec`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ExecArgs {
    /// An OCI process JSON file describing the process (COMMAND is then
    /// not needed; conmon and containerd always use this).
    #[arg(short, long, value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Return once the process runs instead of waiting for it.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the process's pid here.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// AF_UNIX socket that receives the master end of the pty.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Working directory inside the container.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Environment variable KEY=VALUE, repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// User to run as: UID or UID:GID (numeric).
    #[arg(short, long, value_name = "UID[:GID]", value_parser = parse_user)]
    pub user: Option<ExecUser>,
    /// Additional group ids, repeatable (or comma-separated).
    #[arg(short = 'g', long, value_name = "GID", value_delimiter = ',')]
    pub additional_gids: Vec<u32>,
    /// Pass N more file descriptors to the process.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Accepted for runc compatibility (SELinux label; no host LSM applies).
    #[arg(long, value_name = "LABEL")]
    pub process_label: Option<String>,
    /// Accepted for runc compatibility (AppArmor profile).
    #[arg(long, value_name = "PROFILE")]
    pub apparmor: Option<String>,
    /// Set no_new_privs for the process.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Add a capability to the process's bounding set, repeatable.
    #[arg(short = 'c', long = "cap", value_name = "CAP")]
    pub cap: Vec<String>,
    /// Accepted for runc compatibility (a sub-cgroup: PATH or CONTROLLER:PATH).
    #[arg(long, value_name = "CGROUP")]
    pub cgroup: Vec<String>,
    /// Accepted for runc compatibility; a paused container is refused all
    /// the same (its frozen VM cannot take the exec until `resume`).
    #[arg(long)]
    pub ignore_paused: bool,
    /// The container id.
    pub container_id: String,
    /// The command and its arguments (everything after the id is taken
    /// as is, options included).
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required_unless_present = "process"
    )]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::{ArgError, Command};
    use super::*;
    use std::path::Path;

    fn exec(args: &[&str]) -> ExecArgs {
        match parse(args).unwrap().command {
            Command::Exec(e) => e,
            other => panic!("not exec: {other:?}"),
        }
    }

    #[test]
    fn command_after_id_keeps_its_own_options() {
        let e = exec(&["exec", "c1", "ls", "-la", "--color", "/"]);
        assert_eq!(e.container_id, "c1");
        assert_eq!(e.command, ["ls", "-la", "--color", "/"]);
        assert!(!e.tty && !e.detach);
        assert!(e.process.is_none());
    }

    #[test]
    fn command_may_follow_double_dash() {
        let e = exec(&["exec", "c1", "--", "sh", "-c", "echo hi"]);
        assert_eq!(e.command, ["sh", "-c", "echo hi"]);
    }

    #[test]
    fn conmon_invocation() {
        let e = exec(&[
            "--root",
            "/run/runc",
            "exec",
            "--pid-file",
            "/run/x/exec_pid",
            "--process",
            "/run/x/exec-process-123",
            "--detach",
            "--preserve-fds",
            "1",
            "--console-socket",
            "/tmp/sock",
            "c1",
        ]);
        assert_eq!(
            e.process.as_deref(),
            Some(Path::new("/run/x/exec-process-123"))
        );
        assert!(e.detach);
        assert_eq!(e.pid_file.as_deref(), Some(Path::new("/run/x/exec_pid")));
        assert_eq!(e.preserve_fds, 1);
        assert_eq!(e.console_socket.as_deref(), Some(Path::new("/tmp/sock")));
        assert!(e.command.is_empty());
    }

    #[test]
    fn go_runc_invocation() {
        // go-runc: exec --process F [--console-socket S] [--detach] [--pid-file P] ID
        let e = exec(&[
            "exec",
            "--process",
            "/tmp/runc-process1",
            "--detach",
            "--pid-file",
            "/p",
            "c1",
        ]);
        assert!(e.detach && e.process.is_some());
    }

    #[test]
    fn all_short_options() {
        let e = exec(&[
            "exec",
            "-t",
            "-d",
            "-e",
            "A=1",
            "-e",
            "B=2",
            "-u",
            "1000:100",
            "-g",
            "10",
            "-g",
            "20,30",
            "-c",
            "CAP_SYS_ADMIN",
            "--cwd",
            "/tmp",
            "c1",
            "id",
        ]);
        assert!(e.tty && e.detach);
        assert_eq!(e.env, ["A=1", "B=2"]);
        assert_eq!(
            e.user,
            Some(ExecUser {
                uid: 1000,
                gid: Some(100)
            })
        );
        assert_eq!(e.additional_gids, [10, 20, 30]);
        assert_eq!(e.cap, ["CAP_SYS_ADMIN"]);
        assert_eq!(e.cwd.as_deref(), Some("/tmp"));
        assert_eq!(e.command, ["id"]);
    }

    #[test]
    fn runc_only_options_are_accepted() {
        let e = exec(&[
            "exec",
            "--process-label",
            "system_u:system_r:container_t:s0",
            "--apparmor",
            "unconfined",
            "--no-new-privs",
            "--cgroup",
            "memory:/sub",
            "--ignore-paused",
            "c1",
            "true",
        ]);
        assert!(e.no_new_privs && e.ignore_paused);
        assert_eq!(e.cgroup, ["memory:/sub"]);
    }

    #[test]
    fn command_is_required_without_process() {
        assert!(parse(&["exec", "c1"]).is_err());
        assert!(parse(&["exec"]).is_err());
        assert!(parse(&["exec", "-p", "/p.json", "c1"]).is_ok());
    }

    #[test]
    fn user_forms() {
        assert_eq!(parse_user("0"), Ok(ExecUser { uid: 0, gid: None }));
        assert_eq!(
            parse_user("1:2"),
            Ok(ExecUser {
                uid: 1,
                gid: Some(2)
            })
        );
        for bad in ["", "root", "1:", ":1", "1:x", "-1", "1:2:3"] {
            assert_eq!(
                parse_user(bad),
                Err(ArgError::InvalidUser { value: bad.into() }),
                "{bad}"
            );
        }
        assert!(parse(&["exec", "-u", "nobody", "c1", "true"]).is_err());
    }
}
