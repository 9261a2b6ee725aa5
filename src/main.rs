//! The `husk` command line: parse, dispatch, print errors, exit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
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
    /// Build an ext4 block image from a root filesystem directory.
    Image {
        /// The directory to pack.
        dir: PathBuf,
        /// The image file to write.
        output: PathBuf,
    },
    /// Write the initramfs that carries husk-init (for booting husk's kernel
    /// under another VMM, e.g. QEMU, with the same init).
    Initramfs {
        /// The cpio file to write.
        output: PathBuf,
        /// The husk-init binary to pack (default: the one husk uses).
        #[arg(long)]
        init: Option<PathBuf>,
    },
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check => {
            let report = husk::check::run(&husk::check::HostFacts::probe());
            print!("{}", report.render());
            Ok(if report.usable() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Image { dir, output } => {
            husk::rootfs::image::build_ext4(&dir, &output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Initramfs { output, init } => {
            let init = init.unwrap_or_else(husk::paths::default_init);
            husk::rootfs::initramfs::write_file(&output, &init)
                .with_context(|| format!("writing initramfs {}", output.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The error and its causes on one line, without repeating a cause that the
/// message before it already quotes.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("husk: {}", error_text(&err));
            ExitCode::FAILURE
        }
    }
}
