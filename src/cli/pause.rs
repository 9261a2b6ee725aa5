//! `husk pause ID`, `husk resume ID`

/// `husk pause`: freeze a running container's VM.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct PauseArgs {
    /// The container id.
    pub container_id: String,
}

/// `husk resume`: thaw a paused container's VM.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ResumeArgs {
    /// The container id.
    pub container_id: String,
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;

    #[test]
    fn pause_and_resume_take_one_id() {
        let cli = parse(&["--root", "/r", "pause", "c1"]).unwrap();
        assert!(matches!(cli.command, Command::Pause(ref a) if a.container_id == "c1"));
        let cli = parse(&["resume", "c2"]).unwrap();
        assert!(matches!(cli.command, Command::Resume(ref a) if a.container_id == "c2"));
        for verb in ["pause", "resume"] {
            assert!(parse(&[verb]).is_err(), "{verb}");
            assert!(parse(&[verb, "a", "b"]).is_err(), "{verb}");
        }
    }
}
