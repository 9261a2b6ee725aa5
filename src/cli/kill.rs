//! `husk kill [--all] ID [SIGNAL]`

use super::signal::parse_signal;

/// Signal sent when none is named (runc's default).
pub const DEFAULT_SIGNAL: &str = "SIGTERM";

/// `husk kill`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct KillArgs {
    /// Signal every process in the container, not only its init.
    #[arg(short, long)]
    pub all: bool,
    /// The container id.
    pub container_id: String,
    /// Name (`KILL`, `SIGKILL`, `sigkill`) or number (`9`).
    #[arg(value_name = "SIGNAL", default_value = DEFAULT_SIGNAL, value_parser = parse_signal)]
    pub signal: i32,
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;

    fn kill(args: &[&str]) -> super::KillArgs {
        match parse(args).unwrap().command {
            Command::Kill(k) => k,
            other => panic!("not kill: {other:?}"),
        }
    }

    #[test]
    fn default_is_sigterm() {
        let k = kill(&["kill", "c1"]);
        assert_eq!(k.signal, libc::SIGTERM);
        assert!(!k.all);
        assert_eq!(k.container_id, "c1");
    }

    #[test]
    fn names_and_numbers() {
        for s in ["KILL", "SIGKILL", "9", "kill"] {
            assert_eq!(kill(&["kill", "c1", s]).signal, libc::SIGKILL, "{s}");
        }
    }

    #[test]
    fn all_flag() {
        assert!(kill(&["kill", "--all", "c1", "KILL"]).all);
        assert!(kill(&["kill", "-a", "c1"]).all);
    }

    #[test]
    fn go_runc_style() {
        // go-runc: kill [--all] ID strconv.Itoa(sig)
        let k = kill(&["--root", "/r", "kill", "--all", "c1", "15"]);
        assert_eq!(k.signal, libc::SIGTERM);
    }

    #[test]
    fn bad_signals_are_rejected_with_the_reason() {
        let err = parse(&["kill", "c1", "FOO"]).unwrap_err();
        assert!(err.to_string().contains("unknown signal \"FOO\""), "{err}");
        assert!(parse(&["kill", "c1", "0"]).is_err());
        assert!(parse(&["kill", "c1", "65"]).is_err());
    }
}
