//! `husk ps [--format table|json] ID [PS_ARGS...]`

use super::OutputFormat;

/// `husk ps`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct PsArgs {
    /// `table` (ps(1) output) or `json` (a list of pids).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// The container id.
    pub container_id: String,
    /// Options for ps(1) (default `-ef`). go-runc passes one argument that
    /// may be empty: empty entries mean "none given".
    #[arg(
        value_name = "PS_ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub ps_args: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::{Command, OutputFormat};

    fn ps(args: &[&str]) -> super::PsArgs {
        match parse(args).unwrap().command {
            Command::Ps(p) => p,
            other => panic!("not ps: {other:?}"),
        }
    }

    #[test]
    fn defaults_to_table() {
        let p = ps(&["ps", "c1"]);
        assert_eq!(p.format, OutputFormat::Table);
        assert!(p.ps_args.is_empty());
    }

    #[test]
    fn json_and_ps_args() {
        let p = ps(&["ps", "--format", "json", "c1"]);
        assert_eq!(p.format, OutputFormat::Json);
        let p = ps(&["ps", "-f", "table", "c1", "-o", "pid,comm"]);
        assert_eq!(p.ps_args, ["-o", "pid,comm"]);
        let p = ps(&["ps", "c1", "-ef"]);
        assert_eq!(p.ps_args, ["-ef"]);
    }

    #[test]
    fn go_runc_top_passes_an_empty_argument() {
        let p = ps(&["ps", "--format", "table", "c1", ""]);
        assert_eq!(p.ps_args, [""]);
    }

    #[test]
    fn bad_format_is_rejected() {
        assert!(parse(&["ps", "-f", "yaml", "c1"]).is_err());
    }
}
