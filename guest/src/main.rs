//! husk-init: PID 1 inside a husk microVM. See the crate docs in `lib.rs`.

use std::ffi::CString;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use husk_init::init::{self, InitError, Mount, Os, Reaped};
use husk_init::proto::{self, BootCommand, Ending};
use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, chroot, execve, fork, setsid, ForkResult, Pid};

/// The real operating system.
struct RealOs;

fn errno_text(e: Errno) -> String {
    format!("{} ({})", e.desc(), e)
}

impl Os for RealOs {
    fn mkdir_all(&mut self, path: &str) -> Result<(), InitError> {
        match std::fs::create_dir_all(path) {
            Ok(()) => Ok(()),
            // A read-only root may lack nothing we need yet still refuse
            // create_dir_all's probe; an existing directory is all we need.
            Err(_) if Path::new(path).is_dir() => Ok(()),
            Err(e) => Err(InitError::Mkdir {
                path: path.to_owned(),
                errno: e.to_string(),
            }),
        }
    }

    fn mount(&mut self, m: &Mount) -> Result<(), InitError> {
        let mut flags = MsFlags::empty();
        flags.set(MsFlags::MS_RDONLY, m.flags.read_only);
        flags.set(MsFlags::MS_NOSUID, m.flags.no_suid);
        flags.set(MsFlags::MS_NODEV, m.flags.no_dev);
        flags.set(MsFlags::MS_NOEXEC, m.flags.no_exec);
        nix::mount::mount(
            Some(m.source.as_str()),
            m.target.as_str(),
            Some(m.fstype.as_str()),
            flags,
            m.data.as_deref(),
        )
        .map_err(|e| InitError::Mount {
            source_dev: m.source.clone(),
            target: m.target.clone(),
            fstype: m.fstype.clone(),
            errno: errno_text(e),
        })
    }

    fn move_mount(&mut self, from: &str, to: &str) -> Result<(), InitError> {
        nix::mount::mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(
            |e| InitError::MoveMount {
                from: from.to_owned(),
                to: to.to_owned(),
                errno: errno_text(e),
            },
        )
    }

    fn read_to_string(&mut self, path: &str) -> Result<String, InitError> {
        std::fs::read_to_string(path).map_err(|e| InitError::Read {
            path: path.to_owned(),
            errno: e.to_string(),
        })
    }

    fn switch_root(&mut self, path: &str) -> Result<(), InitError> {
        let err = |e: Errno| InitError::SwitchRoot {
            path: path.to_owned(),
            errno: errno_text(e),
        };
        chdir(path).map_err(err)?;
        nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(err)?;
        chroot(".").map_err(err)?;
        chdir("/").map_err(err)
    }

    fn spawn(&mut self, cmd: &BootCommand) -> Result<i32, InitError> {
        let program = cmd.args[0].clone();
        let spawn_err = |errno: String| InitError::Spawn {
            program: program.clone(),
            errno,
        };
        let env = command_env(cmd);
        let path_var = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(proto::DEFAULT_PATH)
            .to_owned();
        let resolved =
            resolve_program(&program, &path_var, &cmd.cwd).ok_or_else(|| InitError::NotFound {
                program: program.clone(),
            })?;
        let cstr =
            |s: &[u8]| CString::new(s).map_err(|_| spawn_err("argument contains NUL".into()));
        let path_c = cstr(resolved.as_os_str().as_bytes())?;
        let argv: Vec<CString> = cmd
            .args
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let envp: Vec<CString> = env
            .iter()
            .map(|e| cstr(e.as_bytes()))
            .collect::<Result<_, _>>()?;
        let cwd = cmd.cwd.clone();
        // The console is init's controlling terminal and the command runs in
        // its own process group in the foreground of it (shells get job
        // control, ^C reaches the command). Init, not the command, leads the
        // session: when a session leader exits the kernel hangs its terminal
        // up, which throws away output still in the serial driver's buffer
        // (the command's last lines were lost now and then with 2 vCPUs,
        // where the UART interrupt runs on the other one). Both calls fail
        // harmlessly when repeated or when stdin is not a tty.
        let _ = setsid();
        // SAFETY: TIOCSCTTY takes an int argument and touches no memory.
        let _ = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCSCTTY, 0) };
        // SIGTTOU blocked: init and the child (until its exec) may change the
        // foreground group and drain the console from the background.
        let ttou = SigSet::from(Signal::SIGTTOU);
        let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&ttou), None);
        // SAFETY: init is single-threaded, so the child may run arbitrary code
        // after fork; it only calls async-signal-safe functions before exec.
        match unsafe { fork() }.map_err(|e| spawn_err(errno_text(e)))? {
            ForkResult::Parent { child } => Ok(child.as_raw()),
            ForkResult::Child => {
                // SAFETY: setpgid, getpid and tcsetpgrp take plain integers
                // and touch no memory; all three are async-signal-safe.
                unsafe {
                    libc::setpgid(0, 0);
                    libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid());
                }
                let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&ttou), None);
                if let Err(e) = chdir(cwd.as_str()) {
                    let _ = writeln!(
                        std::io::stderr(),
                        "{} cannot change to {cwd}: {e}",
                        proto::LOG_PREFIX
                    );
                    // SAFETY: _exit is async-signal-safe and ends the child.
                    unsafe { libc::_exit(127) };
                }
                let e = execve(&path_c, &argv, &envp).unwrap_err();
                let _ = writeln!(
                    std::io::stderr(),
                    "{} cannot execute {}: {e}",
                    proto::LOG_PREFIX,
                    resolved.display()
                );
                let code = if e == Errno::ENOENT { 127 } else { 126 };
                // SAFETY: _exit is async-signal-safe and ends the child.
                unsafe { libc::_exit(code) }
            }
        }
    }

    fn wait_any(&mut self) -> Result<Option<Reaped>, InitError> {
        loop {
            match waitpid(Pid::from_raw(-1), None) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    let code = u8::try_from(code & 0xff).unwrap_or(u8::MAX);
                    return Ok(Some(Reaped {
                        pid: pid.as_raw(),
                        ending: Ending::Exited(code),
                    }));
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    let sig = u8::try_from(sig as i32).unwrap_or(u8::MAX);
                    return Ok(Some(Reaped {
                        pid: pid.as_raw(),
                        ending: Ending::Signaled(sig),
                    }));
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return Ok(None),
                Err(e) => {
                    return Err(InitError::Wait {
                        errno: errno_text(e),
                    })
                }
            }
        }
    }

    fn kill_all(&mut self) {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    }

    fn console(&mut self, line: &str) {
        let _ = writeln!(std::io::stdout(), "{line}");
        let _ = std::io::stdout().flush();
    }

    fn serve_agent(&mut self) -> Result<Ending, InitError> {
        match husk_init::agent::serve() {
            Ok(never) => match never {},
            Err(e) => Err(InitError::Agent {
                reason: e.to_string(),
            }),
        }
    }
}

/// The command's environment: its own entries, plus a default PATH.
fn command_env(cmd: &BootCommand) -> Vec<String> {
    let mut env = cmd.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={}", proto::DEFAULT_PATH));
    }
    env
}

/// Finds the executable the way execvp would, relative names against `cwd`.
fn resolve_program(program: &str, path_var: &str, cwd: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = Path::new(cwd).join(program);
        return p.exists().then_some(p);
    }
    path_var
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// How long [`drain_console`] waits for the console's output to go out.
const CONSOLE_DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits until what the command and init wrote to the console has left the
/// guest: the serial driver sends its buffer from the UART's interrupt, which
/// with several vCPUs can run after init reports the exit, and that ends the
/// VM. Bounded: a console that does not drain must not keep the VM from
/// ending.
fn drain_console() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let drained = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            let _ = nix::sys::termios::tcdrain(std::io::stdout());
            let _ = done_tx.send(());
        });
    if drained.is_ok() {
        let _ = done_rx.recv_timeout(CONSOLE_DRAIN_LIMIT);
    }
}

/// Tells the VMM how the command ended through the exit port.
fn report_to_port(ending: Ending) {
    let value = ending.to_port_value();
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    let permitted = unsafe { libc::ioperm(u64::from(proto::EXIT_PORT), 4, 1) } == 0;
    if !permitted {
        return;
    }
    // SAFETY: the port was granted above; `out` to it has no effect on this
    // process's memory, the VMM (or QEMU's isa-debug-exit) acts on it.
    unsafe {
        std::arch::asm!("out dx, eax", in("dx") proto::EXIT_PORT, in("eax") value,
            options(nomem, nostack, preserves_flags));
    }
}

fn main() {
    // The container's holder (see husk_init::agent::container): init's
    // binary again, in the container's namespaces.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == husk_init::agent::container::HOLDER_ARG)
    {
        husk_init::agent::container::holder_main();
    }
    if std::process::id() != 1 {
        eprintln!(
            "{} must run as PID 1 inside a husk microVM (it mounts filesystems and powers off)",
            proto::LOG_PREFIX
        );
        std::process::exit(2);
    }
    husk_init::boot_timer::mark(proto::BootEvent::InitStarted);
    let mut os = RealOs;
    if std::env::var_os(proto::ENV_BOOTMARK).is_some_and(|v| v == "1") {
        os.console(proto::BOOT_MARK);
    }
    let ending = init::boot(&mut os);
    let quiet = std::fs::read_to_string("/proc/cmdline")
        .map(|c| {
            c.split_whitespace()
                .any(|w| w == format!("{}=1", proto::PARAM_QUIET))
        })
        .unwrap_or(false);
    if !quiet {
        os.console(&ending.report_line());
    }
    nix::unistd::sync();
    drain_console();
    report_to_port(ending);
    // If nothing acted on the port, reboot: the kernel runs with reboot=k and
    // the VMM treats a reset as the end of the VM.
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_gets_a_default_path_only_when_missing() {
        let mut cmd = BootCommand {
            args: vec!["x".into()],
            env: vec!["A=1".into()],
            cwd: "/".into(),
        };
        assert!(command_env(&cmd).contains(&format!("PATH={}", proto::DEFAULT_PATH)));
        cmd.env.push("PATH=/x".into());
        assert_eq!(
            command_env(&cmd)
                .iter()
                .filter(|e| e.starts_with("PATH="))
                .count(),
            1
        );
    }

    #[test]
    fn resolves_programs_like_execvp() {
        assert_eq!(
            resolve_program("sh", "/nonexistent:/bin", "/"),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(resolve_program("definitely-not-here", "/bin", "/"), None);
        assert_eq!(
            resolve_program("/bin/sh", "", "/"),
            Some(PathBuf::from("/bin/sh"))
        );
    }
}
