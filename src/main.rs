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
    /// Boot a microVM, run COMMAND in it, print its output, exit with its status.
    Boot(BootArgs),
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

/// Arguments of `husk boot`.
#[derive(Debug, clap::Args)]
struct BootArgs {
    /// Guest kernel, ELF vmlinux or bzImage (default: the one `make kernel` built).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Root filesystem: a directory (packed into a temporary ext4 image) or an
    /// ext4 image (used in place). Default: a read-only busybox image.
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = husk::vmm::config::DEFAULT_MEM_MIB)]
    mem: u32,
    /// Number of vCPUs.
    #[arg(long, default_value_t = husk::vmm::config::DEFAULT_VCPUS)]
    vcpus: u32,
    /// Extra kernel command-line parameters.
    #[arg(long)]
    cmdline: Option<String>,
    /// Stop the VM after this many seconds (exit status 124).
    #[arg(long)]
    timeout: Option<u64>,
    /// Environment variable for the command (KEY=VALUE), repeatable.
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// Working directory of the command inside the guest.
    #[arg(long, default_value = "/")]
    cwd: String,
    /// Write the guest console (kernel messages and the command's output)
    /// to this file instead of standard output.
    #[arg(long)]
    console_log: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn boot(args: BootArgs) -> anyhow::Result<ExitCode> {
    let req = husk::boot::BootRequest {
        kernel: args.kernel,
        rootfs: args.rootfs,
        mem_mib: args.mem,
        vcpus: args.vcpus,
        extra_cmdline: args.cmdline,
        timeout: args.timeout.map(std::time::Duration::from_secs),
        command: args.command,
        env: args.env,
        cwd: args.cwd,
        console: match args.console_log {
            Some(path) => husk::vmm::config::ConsoleOutput::File(path),
            None => husk::vmm::config::ConsoleOutput::Stdout,
        },
    };
    let exit = husk::boot::run(&req)?;
    let (code, message) = husk::boot::exit_status(&exit);
    if let Some(message) = message {
        eprintln!("husk: {message}");
    }
    Ok(ExitCode::from(code))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Boot(args) => boot(args),
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
