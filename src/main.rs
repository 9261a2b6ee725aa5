//! The `husk` command line: parse, dispatch, print errors, exit.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// husk: an OCI runtime that runs every container in its own KVM microVM.
#[derive(Debug, Parser)]
#[command(name = "husk", version, about)]
struct Cli {
    /// Log debug messages to stderr.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tell whether this host can run husk microVMs, and if not, why.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match cli.command {
        Command::Check => {
            let report = husk::check::run(&husk::check::HostFacts::probe());
            print!("{}", report.render());
            if report.usable() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
