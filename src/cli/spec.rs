//! `husk spec [--bundle DIR] [--rootless]`

use std::path::PathBuf;

/// `husk spec`: write a starter config.json.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct SpecArgs {
    /// Directory to write config.json in (default: the current directory).
    #[arg(short, long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// Write a configuration for a rootless container.
    #[arg(long)]
    pub rootless: bool,
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;
    use std::path::Path;

    fn spec(args: &[&str]) -> super::SpecArgs {
        match parse(args).unwrap().command {
            Command::Spec(s) => s,
            other => panic!("not spec: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_options() {
        let s = spec(&["spec"]);
        assert_eq!(s.bundle, None);
        assert!(!s.rootless);
        let s = spec(&["spec", "-b", "/b", "--rootless"]);
        assert_eq!(s.bundle.as_deref(), Some(Path::new("/b")));
        assert!(s.rootless);
    }
}
