//! `husk state ID`

/// `husk state`: print the OCI state JSON of a container.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct StateArgs {
    /// The container id.
    pub container_id: String,
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;

    #[test]
    fn parses_id() {
        let cli = parse(&["state", "c1"]).unwrap();
        assert!(matches!(cli.command, Command::State(ref a) if a.container_id == "c1"));
    }

    #[test]
    fn requires_exactly_one_id() {
        assert!(parse(&["state"]).is_err());
        assert!(parse(&["state", "a", "b"]).is_err());
    }
}
