//! `husk features`

/// `husk features`: takes nothing.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct FeaturesArgs {}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;

    #[test]
    fn parses() {
        assert!(matches!(
            parse(&["features"]).unwrap().command,
            Command::Features(_)
        ));
        assert!(parse(&["features", "x"]).is_err());
    }
}
