//! Init logic, independent of the real operating system.
//!
//! [`boot`] does everything PID 1 does between the kernel handing over and the
//! final report: mount the pseudo filesystems, read the plan from the kernel
//! command line, mount the root block device (alone, or read-only under a
//! tmpfs-backed overlay) and switch into it, then either start the command
//! and reap children until it ends, or serve the agent protocol
//! ([`crate::agent`]) until the host stops the VM. Every side effect goes
//! through [`Os`], so the order and the error handling are tested with a
//! double.

use crate::proto::{self, BootCommand, Ending, ProtoError};

/// Mount flags init uses (a subset of `MS_*`), kept abstract so the logic does
/// not depend on `libc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountFlags {
    pub read_only: bool,
    pub no_suid: bool,
    pub no_dev: bool,
    pub no_exec: bool,
}

impl MountFlags {
    /// nosuid, nodev, noexec: for /proc and /sys.
    pub const PSEUDO: MountFlags = MountFlags {
        read_only: false,
        no_suid: true,
        no_dev: true,
        no_exec: true,
    };
    /// nosuid, nodev: for tmpfs mounts.
    pub const TMP: MountFlags = MountFlags {
        read_only: false,
        no_suid: true,
        no_dev: true,
        no_exec: false,
    };
    /// nosuid, noexec: for /dev and /dev/pts.
    pub const DEV: MountFlags = MountFlags {
        read_only: false,
        no_suid: true,
        no_dev: false,
        no_exec: true,
    };
}

/// One mount request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub flags: MountFlags,
    pub data: Option<String>,
}

impl Mount {
    fn new(
        source: &str,
        target: &str,
        fstype: &str,
        flags: MountFlags,
        data: Option<&str>,
    ) -> Self {
        Mount {
            source: source.to_owned(),
            target: target.to_owned(),
            fstype: fstype.to_owned(),
            flags,
            data: data.map(str::to_owned),
        }
    }
}

/// Errors of init's own work (not of the command it runs).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mounting {fstype} {source_dev} on {target}: {errno}")]
    Mount {
        source_dev: String,
        target: String,
        fstype: String,
        errno: String,
    },
    #[error("moving mount {from} to {to}: {errno}")]
    MoveMount {
        from: String,
        to: String,
        errno: String,
    },
    #[error("creating directory {path}: {errno}")]
    Mkdir { path: String, errno: String },
    #[error("reading {path}: {errno}")]
    Read { path: String, errno: String },
    #[error("switching root to {path}: {errno}")]
    SwitchRoot { path: String, errno: String },
    #[error("starting {program}: {errno}")]
    Spawn { program: String, errno: String },
    #[error("starting {program}: no such executable in the root filesystem")]
    NotFound { program: String },
    #[error("waiting for children: {errno}")]
    Wait { errno: String },
    #[error("kernel command line: {0}")]
    Proto(#[from] ProtoError),
    #[error("kernel command line has no {param}=: nothing to run")]
    NoCommand { param: &'static str },
    #[error("agent: {reason}")]
    Agent { reason: String },
}

/// A child that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub pid: i32,
    pub ending: Ending,
}

/// The operating system as init sees it.
pub trait Os {
    /// Creates a directory and its parents; an existing one is fine.
    fn mkdir_all(&mut self, path: &str) -> Result<(), InitError>;
    fn mount(&mut self, mount: &Mount) -> Result<(), InitError>;
    /// Moves an existing mount (`MS_MOVE`).
    fn move_mount(&mut self, from: &str, to: &str) -> Result<(), InitError>;
    fn read_to_string(&mut self, path: &str) -> Result<String, InitError>;
    /// Makes `path` the root: chdir, move it onto `/`, chroot (what
    /// `switch_root` does; pivot_root is not allowed out of an initramfs).
    fn switch_root(&mut self, path: &str) -> Result<(), InitError>;
    /// Starts the command in a new session and returns its pid.
    fn spawn(&mut self, cmd: &BootCommand) -> Result<i32, InitError>;
    /// Waits for any child; `Ok(None)` when there are none left.
    fn wait_any(&mut self) -> Result<Option<Reaped>, InitError>;
    /// Kills every process but init (`kill(-1, SIGKILL)`).
    fn kill_all(&mut self);
    /// Prints one line on the console.
    fn console(&mut self, line: &str);
    /// Serves the agent protocol; returns only if it cannot.
    fn serve_agent(&mut self) -> Result<Ending, InitError>;
}

/// Exit code reported when the command's program does not exist (as shells do).
pub const NOT_FOUND_CODE: u8 = 127;

/// Where the root block device is mounted before init switches into it.
pub const NEW_ROOT: &str = "/newroot";
/// With an overlay: where the root device is mounted read-only.
pub const OVERLAY_LOWER: &str = "/lower";
/// With an overlay: the tmpfs holding its upper and work directories.
pub const OVERLAY_RW: &str = "/rw";

/// What init does once the root is in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Run this command and report how it ended.
    Command(BootCommand),
    /// Serve the agent protocol.
    Agent,
}

/// What the kernel command line asks of init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub root: Option<RootDevice>,
    pub mode: Mode,
}

/// The root filesystem's block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDevice {
    pub device: String,
    pub fstype: String,
    pub read_only: bool,
    /// Mount the device read-only under a tmpfs overlay.
    pub overlay: bool,
}

const DEFAULT_ROOT_FSTYPE: &str = "ext4";

/// Reads init's parameters out of `/proc/cmdline`. Unknown parameters are the
/// kernel's business and ignored.
pub fn parse_cmdline(cmdline: &str) -> Result<Plan, InitError> {
    let mut device = None;
    let mut fstype = DEFAULT_ROOT_FSTYPE.to_owned();
    let mut read_only = false;
    let mut overlay = false;
    let mut agent = false;
    let mut command = None;
    for word in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            proto::PARAM_ROOT => device = Some(value.to_owned()),
            proto::PARAM_ROOTFSTYPE => fstype = value.to_owned(),
            proto::PARAM_RO => read_only = value == "1",
            proto::PARAM_OVERLAY => overlay = value == "1",
            proto::PARAM_AGENT => agent = value == "1",
            proto::PARAM_CMD => command = Some(value),
            _ => {}
        }
    }
    let mode = if agent {
        Mode::Agent
    } else {
        let text = command.ok_or(InitError::NoCommand {
            param: proto::PARAM_CMD,
        })?;
        Mode::Command(proto::decode_command(text)?)
    };
    Ok(Plan {
        root: device.map(|device| RootDevice {
            device,
            fstype,
            read_only,
            overlay,
        }),
        mode,
    })
}

/// The mounts a Linux userland expects, under `prefix` (`""` for `/`).
/// `/proc` and `/dev` are moved rather than mounted when switching roots.
fn system_mounts(prefix: &str) -> Vec<Mount> {
    let at = |path: &str| format!("{prefix}{path}");
    vec![
        Mount::new("sysfs", &at("/sys"), "sysfs", MountFlags::PSEUDO, None),
        Mount::new(
            "devpts",
            &at("/dev/pts"),
            "devpts",
            MountFlags::DEV,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        Mount::new(
            "shm",
            &at("/dev/shm"),
            "tmpfs",
            MountFlags::TMP,
            Some("mode=1777"),
        ),
        Mount::new(
            "tmpfs",
            &at("/tmp"),
            "tmpfs",
            MountFlags::TMP,
            Some("mode=1777"),
        ),
    ]
}

fn mount_all(os: &mut impl Os, mounts: &[Mount]) -> Result<(), InitError> {
    for mount in mounts {
        os.mkdir_all(&mount.target)?;
        os.mount(mount)?;
    }
    Ok(())
}

/// Puts the root filesystem at [`NEW_ROOT`]: the device itself, or
/// (overlay) the device read-only at [`OVERLAY_LOWER`], a tmpfs at
/// [`OVERLAY_RW`] holding `upper/` and `work/`, and an overlay of the two, so
/// the container's writes land in guest memory and the (shared) image stays
/// untouched.
fn mount_root(os: &mut impl Os, root: &RootDevice) -> Result<(), InitError> {
    let flags = MountFlags {
        read_only: root.read_only,
        ..MountFlags::default()
    };
    if !root.overlay {
        return mount_all(
            os,
            &[Mount::new(
                &root.device,
                NEW_ROOT,
                &root.fstype,
                flags,
                None,
            )],
        );
    }
    let lower_flags = MountFlags {
        read_only: true,
        ..MountFlags::default()
    };
    mount_all(
        os,
        &[
            Mount::new(&root.device, OVERLAY_LOWER, &root.fstype, lower_flags, None),
            Mount::new(
                "tmpfs",
                OVERLAY_RW,
                "tmpfs",
                MountFlags::default(),
                Some("mode=0755"),
            ),
        ],
    )?;
    for dir in ["upper", "work"] {
        os.mkdir_all(&format!("{OVERLAY_RW}/{dir}"))?;
    }
    let data =
        format!("lowerdir={OVERLAY_LOWER},upperdir={OVERLAY_RW}/upper,workdir={OVERLAY_RW}/work");
    mount_all(
        os,
        &[Mount::new(
            "overlay",
            NEW_ROOT,
            "overlay",
            flags,
            Some(&data),
        )],
    )
}

/// Everything before the command starts: returns the plan it followed.
pub fn prepare(os: &mut impl Os) -> Result<Plan, InitError> {
    mount_all(
        os,
        &[
            Mount::new("proc", "/proc", "proc", MountFlags::PSEUDO, None),
            Mount::new(
                "devtmpfs",
                "/dev",
                "devtmpfs",
                MountFlags::DEV,
                Some("mode=0755"),
            ),
        ],
    )?;
    let plan = parse_cmdline(&os.read_to_string("/proc/cmdline")?)?;
    match &plan.root {
        Some(root) => {
            mount_root(os, root)?;
            for pseudo in ["/proc", "/dev"] {
                let target = format!("{NEW_ROOT}{pseudo}");
                os.mkdir_all(&target)?;
                os.move_mount(pseudo, &target)?;
            }
            mount_all(os, &system_mounts(NEW_ROOT))?;
            os.switch_root(NEW_ROOT)?;
        }
        None => mount_all(os, &system_mounts(""))?,
    }
    Ok(plan)
}

/// Runs the command and reaps children until it has ended; then kills and
/// reaps whatever it left behind. Returns how the command ended.
pub fn run_command(os: &mut impl Os, cmd: &BootCommand) -> Result<Ending, InitError> {
    let main = match os.spawn(cmd) {
        Ok(pid) => pid,
        // As a shell does: the command's fault, not init's.
        Err(err @ InitError::NotFound { .. }) => {
            os.console(&format!("{} error: {err}", proto::LOG_PREFIX));
            return Ok(Ending::Exited(NOT_FOUND_CODE));
        }
        Err(err) => return Err(err),
    };
    let ending = loop {
        match os.wait_any()? {
            Some(reaped) if reaped.pid == main => break reaped.ending,
            Some(_) => continue,
            None => {
                return Err(InitError::Wait {
                    errno: format!("child {main} vanished without an exit status"),
                })
            }
        }
    };
    os.kill_all();
    while os.wait_any()?.is_some() {}
    Ok(ending)
}

/// All of init's work; the caller reports the result and powers off.
pub fn boot(os: &mut impl Os) -> Ending {
    let result = prepare(os).and_then(|plan| match plan.mode {
        Mode::Command(cmd) => run_command(os, &cmd),
        Mode::Agent => os.serve_agent(),
    });
    match result {
        Ok(ending) => ending,
        Err(err) => {
            os.console(&format!("{} error: {err}", proto::LOG_PREFIX));
            Ending::InitFailed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Records every call; scripted answers for reads, spawns and waits.
    #[derive(Default)]
    struct FakeOs {
        calls: Vec<String>,
        cmdline: String,
        fail_mount_of: Option<String>,
        waits: VecDeque<Option<Reaped>>,
        spawned: Vec<BootCommand>,
        console: Vec<String>,
        agent_error: Option<String>,
    }

    impl Os for FakeOs {
        fn mkdir_all(&mut self, path: &str) -> Result<(), InitError> {
            self.calls.push(format!("mkdir {path}"));
            Ok(())
        }
        fn mount(&mut self, m: &Mount) -> Result<(), InitError> {
            self.calls
                .push(format!("mount {} {} {}", m.fstype, m.source, m.target));
            if self.fail_mount_of.as_deref() == Some(m.target.as_str()) {
                return Err(InitError::Mount {
                    source_dev: m.source.clone(),
                    target: m.target.clone(),
                    fstype: m.fstype.clone(),
                    errno: "ENODEV".into(),
                });
            }
            Ok(())
        }
        fn move_mount(&mut self, from: &str, to: &str) -> Result<(), InitError> {
            self.calls.push(format!("move {from} {to}"));
            Ok(())
        }
        fn read_to_string(&mut self, path: &str) -> Result<String, InitError> {
            self.calls.push(format!("read {path}"));
            Ok(self.cmdline.clone())
        }
        fn switch_root(&mut self, path: &str) -> Result<(), InitError> {
            self.calls.push(format!("switch_root {path}"));
            Ok(())
        }
        fn spawn(&mut self, cmd: &BootCommand) -> Result<i32, InitError> {
            self.calls.push(format!("spawn {}", cmd.args.join(" ")));
            self.spawned.push(cmd.clone());
            Ok(42)
        }
        fn wait_any(&mut self) -> Result<Option<Reaped>, InitError> {
            self.calls.push("wait".into());
            Ok(self.waits.pop_front().flatten())
        }
        fn kill_all(&mut self) {
            self.calls.push("kill_all".into());
        }
        fn console(&mut self, line: &str) {
            self.console.push(line.to_owned());
        }
        fn serve_agent(&mut self) -> Result<Ending, InitError> {
            self.calls.push("serve_agent".into());
            Err(InitError::Agent {
                reason: self.agent_error.clone().unwrap_or_else(|| "stopped".into()),
            })
        }
    }

    fn cmdline_for(args: &[&str], extra: &str) -> String {
        let cmd = BootCommand {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: "/".into(),
        };
        format!(
            "console=ttyS0 quiet {extra} {}={}\n",
            proto::PARAM_CMD,
            proto::encode_command(&cmd)
        )
    }

    #[test]
    fn parses_root_and_command() {
        let plan = parse_cmdline(&cmdline_for(
            &["echo", "hi"],
            "husk.root=/dev/vda husk.rootfstype=ext2 husk.ro=1 root=/dev/sda",
        ))
        .unwrap();
        assert_eq!(
            plan.root,
            Some(RootDevice {
                device: "/dev/vda".into(),
                fstype: "ext2".into(),
                read_only: true,
                overlay: false,
            })
        );
        let Mode::Command(cmd) = plan.mode else {
            panic!("command mode expected");
        };
        assert_eq!(cmd.args, ["echo", "hi"]);
    }

    #[test]
    fn agent_mode_needs_no_command() {
        let plan =
            parse_cmdline("console=ttyS0 husk.root=/dev/vda husk.overlay=1 husk.agent=1").unwrap();
        assert_eq!(plan.mode, Mode::Agent);
        assert!(plan.root.unwrap().overlay);
        // A malformed husk.cmd does not matter in agent mode.
        let plan = parse_cmdline("husk.agent=1 husk.cmd=!!!").unwrap();
        assert_eq!(plan.mode, Mode::Agent);
    }

    #[test]
    fn overlay_root_mounts_lower_ro_then_tmpfs_then_overlay_and_serves_the_agent() {
        let mut os = FakeOs {
            cmdline: "husk.root=/dev/vda husk.overlay=1 husk.agent=1".into(),
            agent_error: Some("no vsock".into()),
            ..Default::default()
        };
        assert_eq!(boot(&mut os), Ending::InitFailed);
        let order: Vec<&str> = os.calls.iter().map(String::as_str).collect();
        let pos = |needle: &str| {
            order
                .iter()
                .position(|c| *c == needle)
                .unwrap_or_else(|| panic!("{needle} not in {order:?}"))
        };
        assert!(pos("mount ext4 /dev/vda /lower") < pos("mount tmpfs tmpfs /rw"));
        assert!(pos("mount tmpfs tmpfs /rw") < pos("mkdir /rw/upper"));
        assert!(pos("mkdir /rw/work") < pos("mount overlay overlay /newroot"));
        assert!(pos("mount overlay overlay /newroot") < pos("move /proc /newroot/proc"));
        assert!(pos("switch_root /newroot") < pos("serve_agent"));
        assert!(!order.iter().any(|c| c.starts_with("spawn")));
        assert!(
            os.console[0].contains("agent: no vsock"),
            "{:?}",
            os.console
        );
    }

    #[test]
    fn overlay_lower_is_read_only_and_overlay_data_names_the_dirs() {
        let root = RootDevice {
            device: "/dev/vda".into(),
            fstype: "ext4".into(),
            read_only: false,
            overlay: true,
        };
        struct Mounts(Vec<Mount>, FakeOs);
        impl Os for Mounts {
            fn mkdir_all(&mut self, p: &str) -> Result<(), InitError> {
                self.1.mkdir_all(p)
            }
            fn mount(&mut self, m: &Mount) -> Result<(), InitError> {
                self.0.push(m.clone());
                Ok(())
            }
            fn move_mount(&mut self, f: &str, t: &str) -> Result<(), InitError> {
                self.1.move_mount(f, t)
            }
            fn read_to_string(&mut self, p: &str) -> Result<String, InitError> {
                self.1.read_to_string(p)
            }
            fn switch_root(&mut self, p: &str) -> Result<(), InitError> {
                self.1.switch_root(p)
            }
            fn spawn(&mut self, c: &BootCommand) -> Result<i32, InitError> {
                self.1.spawn(c)
            }
            fn wait_any(&mut self) -> Result<Option<Reaped>, InitError> {
                self.1.wait_any()
            }
            fn kill_all(&mut self) {}
            fn console(&mut self, _: &str) {}
            fn serve_agent(&mut self) -> Result<Ending, InitError> {
                self.1.serve_agent()
            }
        }
        let mut os = Mounts(Vec::new(), FakeOs::default());
        mount_root(&mut os, &root).unwrap();
        assert!(os.0[0].flags.read_only);
        assert_eq!(
            os.0[2].data.as_deref(),
            Some("lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work")
        );
        assert!(!os.0[2].flags.read_only);
    }

    #[test]
    fn missing_command_is_an_error_naming_the_parameter() {
        let err = parse_cmdline("console=ttyS0 husk.root=/dev/vda").unwrap_err();
        assert!(err.to_string().contains("husk.cmd"), "{err}");
    }

    #[test]
    fn with_a_root_device_init_mounts_it_moves_pseudo_fs_and_switches() {
        let mut os = FakeOs {
            cmdline: cmdline_for(&["true"], "husk.root=/dev/vda"),
            waits: VecDeque::from([Some(Reaped {
                pid: 42,
                ending: Ending::Exited(0),
            })]),
            ..Default::default()
        };
        assert_eq!(boot(&mut os), Ending::Exited(0));
        let order: Vec<&str> = os.calls.iter().map(String::as_str).collect();
        let pos = |needle: &str| {
            order
                .iter()
                .position(|c| *c == needle)
                .unwrap_or_else(|| panic!("{needle} not in {order:?}"))
        };
        assert!(pos("mount proc proc /proc") < pos("read /proc/cmdline"));
        assert!(pos("mount devtmpfs devtmpfs /dev") < pos("mount ext4 /dev/vda /newroot"));
        assert!(pos("mount ext4 /dev/vda /newroot") < pos("move /proc /newroot/proc"));
        assert!(pos("move /dev /newroot/dev") < pos("mount devpts devpts /newroot/dev/pts"));
        assert!(pos("mount tmpfs tmpfs /newroot/tmp") < pos("switch_root /newroot"));
        assert!(pos("switch_root /newroot") < pos("spawn true"));
        assert!(pos("spawn true") < pos("kill_all"));
    }

    #[test]
    fn without_a_root_device_init_stays_in_the_initramfs() {
        let mut os = FakeOs {
            cmdline: cmdline_for(&["true"], ""),
            waits: VecDeque::from([Some(Reaped {
                pid: 42,
                ending: Ending::Exited(0),
            })]),
            ..Default::default()
        };
        boot(&mut os);
        assert!(!os.calls.iter().any(|c| c.starts_with("switch_root")));
        assert!(os.calls.contains(&"mount sysfs sysfs /sys".to_owned()));
    }

    #[test]
    fn reaps_orphans_and_reports_the_main_command_only() {
        let mut os = FakeOs {
            cmdline: cmdline_for(&["sh"], ""),
            waits: VecDeque::from([
                Some(Reaped {
                    pid: 7,
                    ending: Ending::Exited(1),
                }),
                Some(Reaped {
                    pid: 42,
                    ending: Ending::Signaled(9),
                }),
                Some(Reaped {
                    pid: 8,
                    ending: Ending::Signaled(9),
                }),
                None,
            ]),
            ..Default::default()
        };
        assert_eq!(boot(&mut os), Ending::Signaled(9));
        assert!(os.waits.is_empty(), "every child was reaped");
    }

    #[test]
    fn a_failed_root_mount_is_reported_and_nothing_runs() {
        let mut os = FakeOs {
            cmdline: cmdline_for(&["true"], "husk.root=/dev/vdz"),
            fail_mount_of: Some(NEW_ROOT.into()),
            ..Default::default()
        };
        assert_eq!(boot(&mut os), Ending::InitFailed);
        assert!(os.spawned.is_empty());
        assert!(os.console[0].contains("/dev/vdz"), "{:?}", os.console);
    }

    #[test]
    fn a_missing_program_ends_with_127_like_a_shell() {
        struct NoProgram(FakeOs);
        impl Os for NoProgram {
            fn mkdir_all(&mut self, p: &str) -> Result<(), InitError> {
                self.0.mkdir_all(p)
            }
            fn mount(&mut self, m: &Mount) -> Result<(), InitError> {
                self.0.mount(m)
            }
            fn move_mount(&mut self, f: &str, t: &str) -> Result<(), InitError> {
                self.0.move_mount(f, t)
            }
            fn read_to_string(&mut self, p: &str) -> Result<String, InitError> {
                self.0.read_to_string(p)
            }
            fn switch_root(&mut self, p: &str) -> Result<(), InitError> {
                self.0.switch_root(p)
            }
            fn spawn(&mut self, cmd: &BootCommand) -> Result<i32, InitError> {
                Err(InitError::NotFound {
                    program: cmd.args[0].clone(),
                })
            }
            fn wait_any(&mut self) -> Result<Option<Reaped>, InitError> {
                self.0.wait_any()
            }
            fn kill_all(&mut self) {
                self.0.kill_all()
            }
            fn console(&mut self, line: &str) {
                self.0.console(line)
            }
            fn serve_agent(&mut self) -> Result<Ending, InitError> {
                self.0.serve_agent()
            }
        }
        let mut os = NoProgram(FakeOs {
            cmdline: cmdline_for(&["nope"], ""),
            ..Default::default()
        });
        assert_eq!(boot(&mut os), Ending::Exited(NOT_FOUND_CODE));
        assert!(
            os.0.console[0].contains("starting nope: no such executable"),
            "{:?}",
            os.0.console
        );
    }

    #[test]
    fn a_vanished_child_is_an_init_failure_not_a_hang() {
        let mut os = FakeOs {
            cmdline: cmdline_for(&["true"], ""),
            waits: VecDeque::from([None]),
            ..Default::default()
        };
        assert_eq!(boot(&mut os), Ending::InitFailed);
    }
}
