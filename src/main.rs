//! The `husk` command line: parse, dispatch, print errors, exit. The only
//! place that uses `anyhow` and ends the process.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use husk::cli::{husk_verbs, Cli, Command, GlobalOpts, LogFormat, OutputFormat};
use husk::runtime::container::{self, CreateRequest};
use husk::runtime::state::ExitStatus;

/// runc's exit status for a failed command.
const EXIT_ERROR: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(
        &cli.global,
        matches!(
            cli.command,
            Command::Vmm(_) | Command::Keep | Command::FsServer(_)
        ),
    );
    let global = cli.global.clone();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            let text = error_text(&err);
            log_error(&global, &text);
            eprintln!("husk: {text}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Logging: `--log FILE` (the VMM process logs to its container's vmm.log),
/// `--debug` for debug level.
fn init_logging(global: &GlobalOpts, vmm: bool) {
    let level = if global.debug {
        "debug"
    } else if vmm {
        "info"
    } else {
        "warn"
    };
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    if let Some(path) = &global.log {
        if let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            b.target(env_logger::Target::Pipe(Box::new(file)));
        }
    }
    let _ = b.try_init();
}

/// Writes an error to `--log` in runc's (logrus') shape.
fn log_error(global: &GlobalOpts, msg: &str) {
    let Some(path) = &global.log else { return };
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let time = husk::runtime::state::rfc3339_nano(std::time::SystemTime::now());
    let line = match global.log_format {
        LogFormat::Json => {
            serde_json::json!({"level": "error", "msg": msg, "time": time}).to_string()
        }
        LogFormat::Text => format!("time={time:?} level=error msg={msg:?}"),
    };
    let _ = writeln!(f, "{line}");
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

/// Ends the process the way a container process ended: its exit code, or
/// death by the same signal (128 + signal if that fails).
fn exit_like(ending: Option<ExitStatus>) -> ExitCode {
    match ending {
        Some(ExitStatus::Code(c)) => ExitCode::from(u8::try_from(c & 0xff).unwrap_or(u8::MAX)),
        Some(ExitStatus::Signal(sig)) => {
            if let Ok(signal) = nix::sys::signal::Signal::try_from(sig) {
                // SAFETY: restoring the default disposition has no memory
                // effects; the signal is raised right after to end us.
                unsafe {
                    let _ = nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl);
                }
                let mut set = nix::sys::signal::SigSet::empty();
                set.add(signal);
                let _ = set.thread_unblock();
                let _ = nix::sys::signal::raise(signal);
            }
            ExitCode::from(u8::try_from(128 + sig).unwrap_or(u8::MAX))
        }
        None => ExitCode::from(u8::MAX),
    }
}

/// `run` and `restore` without `--detach`: waits for the VMM, deletes the
/// container unless `keep`, and ends as its process did.
fn wait_like(root: &std::path::Path, id: &str, pid: u32, keep: bool) -> ExitCode {
    let status = container::wait_child(pid);
    if !keep {
        let _ = container::delete(root, id, true);
    }
    match status {
        nix::sys::wait::WaitStatus::Exited(_, c) => exit_like(Some(ExitStatus::Code(c))),
        nix::sys::wait::WaitStatus::Signaled(_, s, _) => {
            exit_like(Some(ExitStatus::Signal(s as i32)))
        }
        _ => ExitCode::from(u8::MAX),
    }
}

fn create_request(
    global: &GlobalOpts,
    opts: &husk::cli::CreateOpts,
    id: &str,
) -> anyhow::Result<CreateRequest> {
    let mut vmm_args = Vec::new();
    if global.debug {
        vmm_args.push("--debug".to_owned());
    }
    Ok(CreateRequest {
        restore_from: None,
        pod_share: None,
        root: global.root.clone(),
        id: id.to_owned(),
        bundle: opts.bundle.clone(),
        pid_file: opts.pid_file.clone(),
        console_socket: opts.console_socket.clone(),
        husk_exe: std::env::current_exe().context("finding the husk executable")?,
        vmm_args,
        stdio: container::VmmStdio::Inherit,
        systemd_cgroup: global.systemd_cgroup,
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    let root = g.root.as_path();
    match cli.command {
        Command::Create(a) => {
            let mut req = create_request(g, &a.opts, &a.container_id)?;
            req.vmm_args
                .extend(["--log".to_owned(), vmm_log(root, &a.container_id)]);
            container::create(&req).context("husk create failed")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(a) => {
            let mut req = create_request(g, &a.opts, &a.container_id)?;
            req.vmm_args
                .extend(["--log".to_owned(), vmm_log(root, &a.container_id)]);
            let pid = container::create(&req).context("husk run failed")?;
            if let Err(e) = container::start(root, &a.container_id) {
                let _ = container::delete(root, &a.container_id, true);
                return Err(anyhow::Error::new(e).context("husk run failed"));
            }
            if a.detach {
                return Ok(ExitCode::SUCCESS);
            }
            Ok(wait_like(root, &a.container_id, pid, a.keep))
        }
        Command::Start(a) => {
            container::start(root, &a.container_id)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Checkpoint(a) => {
            husk::runtime::checkpoint::checkpoint(
                root,
                &a.container_id,
                &husk::runtime::checkpoint::CheckpointOptions {
                    image_path: a.image_path.clone(),
                    leave_running: a.leave_running,
                    pre_dump: a.pre_dump,
                    lazy: a.lazy_pages || a.page_server.is_some() || a.parent_path.is_some(),
                },
            )
            .context("husk checkpoint failed")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore(a) => {
            if a.lazy_pages {
                anyhow::bail!(
                    "husk restore failed: --lazy-pages is not supported (restore without it)"
                );
            }
            let image = husk::runtime::checkpoint::check_image(&a.image_path)
                .context("husk restore failed")?;
            let mut req = create_request(g, &a.opts, &a.container_id)?;
            req.restore_from = Some(image);
            req.vmm_args
                .extend(["--log".to_owned(), vmm_log(root, &a.container_id)]);
            let pid = container::create(&req).context("husk restore failed")?;
            container::mark_running(root, &a.container_id).context("husk restore failed")?;
            if a.detach {
                return Ok(ExitCode::SUCCESS);
            }
            Ok(wait_like(root, &a.container_id, pid, false))
        }
        Command::Pause(a) => {
            container::pause(root, &a.container_id)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume(a) => {
            container::resume(root, &a.container_id)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::State(a) => {
            print!("{}", container::state(root, &a.container_id)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Kill(a) => {
            container::kill(root, &a.container_id, a.signal, a.all)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete(a) => {
            container::delete(root, &a.container_id, a.force)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec(a) => exec(root, &a),
        Command::Ps(a) => {
            let procs = container::ps(root, &a.container_id)?;
            match a.format {
                OutputFormat::Json => {
                    let pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
                    println!("{}", serde_json::to_string(&pids)?);
                }
                OutputFormat::Table => {
                    println!("{:<8} {:<8} {:<8} {:<5} CMD", "UID", "PID", "PPID", "STAT");
                    for p in procs {
                        println!(
                            "{:<8} {:<8} {:<8} {:<5} {}",
                            p.uid,
                            p.pid,
                            p.ppid,
                            p.state,
                            p.cmdline.join(" ")
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List(a) => {
            let states = husk::runtime::state::list(root, &husk::runtime::state::ProcProbe)?;
            let owner = |uid: u32| husk::runtime::output::owner_name(uid);
            let out = if a.quiet {
                husk::runtime::output::render_list_quiet(&states)
            } else {
                match a.format {
                    OutputFormat::Json => husk::runtime::output::render_list_json(&states, &owner),
                    OutputFormat::Table => {
                        husk::runtime::output::render_list_table(&states, &owner)
                    }
                }
            };
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Features(_) => {
            print!("{}", husk::runtime::features::render_features());
            Ok(ExitCode::SUCCESS)
        }
        Command::Spec(a) => {
            let rootless = a.rootless.then(|| husk::runtime::spec::RootlessIds {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            });
            let dir = a.bundle.clone().unwrap_or_else(|| ".".into());
            husk::runtime::spec::write_default_config(&dir, rootless)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Vmm(a) => Ok(exit_like(husk::runtime::vmm_process::run(
            root,
            &a.container_id,
        ))),
        Command::Keep => Ok(ExitCode::from(husk::runtime::keeper::run())),
        Command::FsServer(a) => Ok(ExitCode::from(husk::runtime::fs_server::run(
            &a.container_id,
        ))),
        Command::Check(_) => {
            let report = husk::check::run(&husk::check::HostFacts::probe());
            print!("{}", report.render());
            Ok(if report.usable() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Boot(a) => boot(a),
        Command::Install(a) => install(&a),
        Command::Image(a) => {
            husk::rootfs::image::build_ext4(&a.dir, &a.output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Initramfs(a) => {
            let init = a.init.unwrap_or_else(husk::paths::default_init);
            husk::rootfs::initramfs::write_file(&a.output, &init)
                .with_context(|| format!("writing initramfs {}", a.output.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn install(a: &husk::cli::install::InstallArgs) -> anyhow::Result<ExitCode> {
    use husk::cli::install::EngineArg;
    use husk::install::Engine;
    let engine = match a.engine {
        EngineArg::Podman => Engine::Podman,
        EngineArg::Docker => Engine::Docker,
        EngineArg::Containerd => Engine::Containerd,
        EngineArg::Cri => Engine::Cri,
    };
    let husk = match &a.husk {
        Some(p) => std::path::absolute(p).with_context(|| format!("--husk {}", p.display()))?,
        None => std::env::current_exe().context("finding the husk binary")?,
    };
    let report =
        husk::install::install(engine, a.uninstall, a.config.as_deref(), &husk, a.dry_run)?;
    let verb = if a.dry_run { "would change" } else { "changed" };
    if report.changes.is_empty() {
        println!(
            "husk is {} {:?}: nothing to change",
            if a.uninstall {
                "not registered with"
            } else {
                "already registered with"
            },
            format!("{:?}", a.engine).to_lowercase()
        );
    }
    for c in &report.changes {
        println!("{verb}: {c}");
    }
    if let Some(next) = report.restart.filter(|_| !a.dry_run) {
        println!("next: {next}");
    }
    Ok(ExitCode::SUCCESS)
}

fn vmm_log(root: &Path, id: &str) -> String {
    husk::runtime::state::container_dir(root, id)
        .join(husk::runtime::state::VMM_LOG_FILE)
        .to_string_lossy()
        .into_owned()
}

fn exec(root: &Path, a: &husk::cli::ExecArgs) -> anyhow::Result<ExitCode> {
    let st = container::exec_target(root, &a.container_id)?;
    let process = container::exec_process(&st, a)?;
    if process.terminal {
        let Some(socket) = &a.console_socket else {
            anyhow::bail!("cannot allocate tty if husk will detach without setting console socket");
        };
        let slave = container::send_pty_master(socket)?;
        for fd in 0..3 {
            nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&slave), fd)
                .context("attaching the terminal")?;
        }
    }
    let (conn, _guest_pid) = container::exec_open(&st, process)?;
    if a.detach {
        // SAFETY: husk exec is single-threaded here, so the child may run
        // arbitrary code after fork.
        match unsafe { nix::unistd::fork() }.context("fork")? {
            nix::unistd::ForkResult::Parent { child } => {
                if let Some(p) = &a.pid_file {
                    container::write_pid_file(p, child.as_raw())?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            nix::unistd::ForkResult::Child => {
                let _ = nix::unistd::setsid();
                return Ok(exit_like(husk::runtime::vmm_process::relay(conn, false)));
            }
        }
    }
    if let Some(p) = &a.pid_file {
        container::write_pid_file(p, i32::try_from(std::process::id()).unwrap_or(0))?;
    }
    Ok(exit_like(husk::runtime::vmm_process::relay(conn, false)))
}

fn boot(a: husk_verbs::BootArgs) -> anyhow::Result<ExitCode> {
    let req = husk::boot::BootRequest {
        kernel: a.kernel,
        rootfs: a.rootfs,
        mem_mib: a.mem,
        vcpus: a.vcpus,
        extra_cmdline: a.cmdline,
        timeout: a.timeout.map(std::time::Duration::from_secs),
        command: a.command,
        env: a.env,
        cwd: a.cwd,
        console: match a.console_log {
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
