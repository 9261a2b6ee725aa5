//! `husk start ID`

/// `husk start`: run the user process of a created container.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct StartArgs {
    /// The container id.
    pub container_id: String,
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;

    #[test]
    fn parses_id() {
        let cli = parse(&["--root", "/r", "start", "c1"]).unwrap();
        assert!(matches!(cli.command, Command::Start(ref a) if a.container_id == "c1"));
    }

    #[test]
    fn requires_exactly_one_id() {
        assert!(parse(&["start"]).is_err());
        assert!(parse(&["start", "a", "b"]).is_err());
    }
}
