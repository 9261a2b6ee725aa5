//! `husk delete [--force] ID`

/// `husk delete`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct DeleteArgs {
    /// Delete even if the container is still running (kills its VM).
    #[arg(short, long)]
    pub force: bool,
    /// The container id.
    pub container_id: String,
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;

    fn delete(args: &[&str]) -> super::DeleteArgs {
        match parse(args).unwrap().command {
            Command::Delete(d) => d,
            other => panic!("not delete: {other:?}"),
        }
    }

    #[test]
    fn plain() {
        let d = delete(&["delete", "c1"]);
        assert!(!d.force);
        assert_eq!(d.container_id, "c1");
    }

    #[test]
    fn force_long_and_short() {
        assert!(delete(&["delete", "--force", "c1"]).force);
        assert!(delete(&["delete", "-f", "c1"]).force);
    }

    #[test]
    fn requires_id() {
        assert!(parse(&["delete", "-f"]).is_err());
    }
}
