//! `husk list [--format table|json] [--quiet]`

use super::OutputFormat;

/// `husk list`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ListArgs {
    /// `table` or `json`.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Print only the container ids.
    #[arg(short, long)]
    pub quiet: bool,
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::{Command, OutputFormat};

    fn list(args: &[&str]) -> super::ListArgs {
        match parse(args).unwrap().command {
            Command::List(l) => l,
            other => panic!("not list: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let l = list(&["list"]);
        assert_eq!(l.format, OutputFormat::Table);
        assert!(!l.quiet);
    }

    #[test]
    fn go_runc_style() {
        // go-runc: list --format=json
        assert_eq!(list(&["list", "--format=json"]).format, OutputFormat::Json);
        assert_eq!(list(&["list", "-f", "json"]).format, OutputFormat::Json);
        assert!(list(&["list", "-q"]).quiet);
        assert!(list(&["list", "--quiet"]).quiet);
    }

    #[test]
    fn takes_no_positional() {
        assert!(parse(&["list", "c1"]).is_err());
    }
}
