//! What the host and the guest init agree on: how the host tells init what to
//! run (kernel command-line parameters) and how init tells the host how the
//! command ended (a console line and a write to [`EXIT_PORT`]).
//!
//! Both sides compile this file: the host crate depends on `husk-init` as a
//! library.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// I/O port init writes the final status to (a 32-bit `out`). It is the
/// default port of QEMU's `isa-debug-exit` device, so the same guest can be
/// run under QEMU for comparison.
pub const EXIT_PORT: u16 = 0xf4;

/// Kernel command-line parameter: block device holding the root filesystem.
pub const PARAM_ROOT: &str = "husk.root";
/// Kernel command-line parameter: filesystem type of the root device.
pub const PARAM_ROOTFSTYPE: &str = "husk.rootfstype";
/// Kernel command-line parameter: mount the root filesystem read-only (`1`).
pub const PARAM_RO: &str = "husk.ro";
/// Kernel command-line parameter: `1` makes init print no report line (the
/// VMM reads the exit port; the console is the command's output).
pub const PARAM_QUIET: &str = "husk.quiet";
/// Kernel command-line parameter: `1` makes init serve the agent protocol
/// ([`crate::agent_proto`]) instead of running [`PARAM_CMD`].
pub const PARAM_AGENT: &str = "husk.agent";
/// Kernel command-line parameter: `1` mounts the root device read-only
/// under a tmpfs-backed overlay, so the container can write without touching
/// the (shared, cached) image.
pub const PARAM_OVERLAY: &str = "husk.overlay";
/// Kernel command-line parameter: the command, as [`encode_command`] output.
pub const PARAM_CMD: &str = "husk.cmd";
/// Kernel command-line parameter: a fault to inject, for husk's reliability
/// tests (docs/reliability.md); the host passes it through
/// `HUSK_KERNEL_ARGS`. Only [`FAULT_INIT_EXIT_AFTER_START`] exists.
pub const PARAM_FAULT: &str = "husk.fault";
/// [`PARAM_FAULT`]: init exits [`FAULT_DELAY_MS`] after it started the
/// container's process, so the guest kernel panics ("Attempted to kill
/// init") with the container running.
pub const FAULT_INIT_EXIT_AFTER_START: &str = "init-exit-after-start";
/// How long after the start an injected fault strikes (the host's `start`
/// has its answer by then).
pub const FAULT_DELAY_MS: u64 = 500;

/// Whether the kernel command line `cmdline` asks for the fault `fault`
/// ([`PARAM_FAULT`]).
pub fn fault_requested(cmdline: &str, fault: &str) -> bool {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(PARAM_FAULT)?.strip_prefix('='))
        .any(|v| v == fault)
}

/// The boot timer port: husk-init writes one byte, a [`BootEvent`], at
/// moments of its start; the VMM records when each write arrived (host
/// clock), for start-up breakdowns. Nothing else sits at this port.
pub const BOOT_TIMER_PORT: u16 = 0x3f0;

/// A moment of the guest's start reported on [`BOOT_TIMER_PORT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BootEvent {
    /// husk-init's first instructions (the kernel has booted).
    InitStarted = 1,
    /// The agent listens on vsock (init is ready for the host).
    AgentListening = 2,
    /// The container's main process has been executed (its first
    /// instruction runs).
    ProcessExecuted = 3,
    /// The container's holder process runs (forked and executed in the
    /// container's namespaces, before its setup).
    HolderStarted = 4,
    /// The holder made the container's file systems (its setup is done).
    ContainerSetUp = 5,
}

impl BootEvent {
    pub fn from_u8(v: u8) -> Option<BootEvent> {
        match v {
            1 => Some(BootEvent::InitStarted),
            2 => Some(BootEvent::AgentListening),
            3 => Some(BootEvent::ProcessExecuted),
            4 => Some(BootEvent::HolderStarted),
            5 => Some(BootEvent::ContainerSetUp),
            _ => None,
        }
    }

    /// The event's name in the start-up timeline.
    pub fn name(self) -> &'static str {
        match self {
            BootEvent::InitStarted => "guest.init",
            BootEvent::AgentListening => "guest.agent",
            BootEvent::ProcessExecuted => "guest.exec",
            BootEvent::HolderStarted => "guest.holder",
            BootEvent::ContainerSetUp => "guest.setup",
        }
    }
}

/// Environment variable (set by putting `HUSK_BOOTMARK=1` on the kernel
/// command line, which the kernel hands to init's environment) that makes
/// init print [`BOOT_MARK`] first thing: benchmarks time boot-to-init by it.
pub const ENV_BOOTMARK: &str = "HUSK_BOOTMARK";
/// The line printed when [`ENV_BOOTMARK`] is set.
pub const BOOT_MARK: &str = "husk-init: started";

/// Prefix of every line init prints on the console.
pub const LOG_PREFIX: &str = "husk-init:";

/// Default `PATH` for the command when its environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Status code init reports for its own failure (nothing was run, or init
/// could not wait for it). Only meaningful with [`Ending::InitFailed`].
pub const INIT_FAILED_CODE: u8 = 0xff;

/// The command init runs, handed over on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootCommand {
    /// argv; `args[0]` is looked up in `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries; `PATH` defaults to [`DEFAULT_PATH`].
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory inside the root filesystem.
    #[serde(default = "default_cwd")]
    pub cwd: String,
}

fn default_cwd() -> String {
    "/".to_owned()
}

/// Errors decoding what the host sent.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("parameter {param} is not valid base64: {source}")]
    Base64 {
        param: &'static str,
        source: base64::DecodeError,
    },
    #[error("parameter {param} is not a valid command: {source}")]
    Json {
        param: &'static str,
        source: serde_json::Error,
    },
    #[error("the command in {param} has no arguments")]
    EmptyCommand { param: &'static str },
}

/// Encodes a command for [`PARAM_CMD`]: JSON in unpadded URL-safe base64, so
/// it contains no spaces or quotes the kernel's parameter parser would split.
pub fn encode_command(cmd: &BootCommand) -> String {
    // Serializing plain strings into JSON cannot fail.
    let json = serde_json::to_vec(cmd).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Reverses [`encode_command`].
pub fn decode_command(text: &str) -> Result<BootCommand, ProtoError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim())
        .map_err(|source| ProtoError::Base64 {
            param: PARAM_CMD,
            source,
        })?;
    let cmd: BootCommand = serde_json::from_slice(&bytes).map_err(|source| ProtoError::Json {
        param: PARAM_CMD,
        source,
    })?;
    if cmd.args.is_empty() {
        return Err(ProtoError::EmptyCommand { param: PARAM_CMD });
    }
    Ok(cmd)
}

/// How the guest's command ended, as init reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The command exited with this code.
    Exited(u8),
    /// The command was killed by this signal.
    Signaled(u8),
    /// Init itself failed; the command did not run or could not be waited for.
    InitFailed,
}

const KIND_EXITED: u32 = 0;
const KIND_SIGNALED: u32 = 1;
const KIND_INIT_FAILED: u32 = 2;
const KIND_SHIFT: u32 = 8;
const VALUE_MASK: u32 = 0xff;

impl Ending {
    /// The value init writes to [`EXIT_PORT`]: the code or signal in bits
    /// 0..8, the kind in bits 8..16.
    pub fn to_port_value(self) -> u32 {
        match self {
            Ending::Exited(code) => (KIND_EXITED << KIND_SHIFT) | u32::from(code),
            Ending::Signaled(sig) => (KIND_SIGNALED << KIND_SHIFT) | u32::from(sig),
            Ending::InitFailed => (KIND_INIT_FAILED << KIND_SHIFT) | u32::from(INIT_FAILED_CODE),
        }
    }

    /// Decodes a value written to [`EXIT_PORT`]; `None` for an unknown kind.
    pub fn from_port_value(value: u32) -> Option<Ending> {
        let low = u8::try_from(value & VALUE_MASK).ok()?;
        match value >> KIND_SHIFT {
            KIND_EXITED => Some(Ending::Exited(low)),
            KIND_SIGNALED => Some(Ending::Signaled(low)),
            KIND_INIT_FAILED => Some(Ending::InitFailed),
            _ => None,
        }
    }

    /// The shell's view of the ending: the code, or 128 + signal.
    pub fn shell_code(self) -> u8 {
        match self {
            Ending::Exited(code) => code,
            Ending::Signaled(sig) => 128u8.saturating_add(sig),
            Ending::InitFailed => INIT_FAILED_CODE,
        }
    }

    /// The console line init prints last.
    pub fn report_line(self) -> String {
        match self {
            Ending::Exited(code) => format!("{LOG_PREFIX} exit code={code}"),
            Ending::Signaled(sig) => format!("{LOG_PREFIX} exit signal={sig}"),
            Ending::InitFailed => format!("{LOG_PREFIX} exit init-failed"),
        }
    }

    /// Finds the report line in console output (the last one wins).
    pub fn parse_report(output: &str) -> Option<Ending> {
        output.lines().rev().find_map(|line| {
            let rest = line.trim_end_matches('\r');
            let rest = rest.split(LOG_PREFIX).nth(1)?.trim();
            let rest = rest.strip_prefix("exit ")?;
            if rest == "init-failed" {
                return Some(Ending::InitFailed);
            }
            if let Some(code) = rest.strip_prefix("code=") {
                return code.parse().ok().map(Ending::Exited);
            }
            rest.strip_prefix("signal=")?
                .parse()
                .ok()
                .map(Ending::Signaled)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trips_through_cmdline_encoding() {
        let cmd = BootCommand {
            args: vec![
                "sh".into(),
                "-c".into(),
                "echo 'a b' \"c\" && exit 3".into(),
            ],
            env: vec!["A=1 2".into()],
            cwd: "/tmp".into(),
        };
        let text = encode_command(&cmd);
        assert!(!text.contains([' ', '"', '\'', '=']), "{text}");
        assert_eq!(decode_command(&text).unwrap(), cmd);
    }

    #[test]
    fn decode_rejects_garbage_and_empty_commands() {
        assert!(matches!(
            decode_command("!!!"),
            Err(ProtoError::Base64 { .. })
        ));
        let not_json = URL_SAFE_NO_PAD.encode(b"{nope");
        assert!(matches!(
            decode_command(&not_json),
            Err(ProtoError::Json { .. })
        ));
        let empty = URL_SAFE_NO_PAD.encode(br#"{"args":[]}"#);
        assert!(matches!(
            decode_command(&empty),
            Err(ProtoError::EmptyCommand { .. })
        ));
    }

    #[test]
    fn decode_fills_defaults() {
        let min = URL_SAFE_NO_PAD.encode(br#"{"args":["true"]}"#);
        let cmd = decode_command(&min).unwrap();
        assert_eq!(cmd.cwd, "/");
        assert!(cmd.env.is_empty());
    }

    #[test]
    fn port_values_round_trip() {
        for ending in [
            Ending::Exited(0),
            Ending::Exited(255),
            Ending::Signaled(9),
            Ending::InitFailed,
        ] {
            assert_eq!(
                Ending::from_port_value(ending.to_port_value()),
                Some(ending)
            );
        }
        assert_eq!(Ending::from_port_value(7 << 8), None);
    }

    #[test]
    fn shell_codes_follow_the_shell() {
        assert_eq!(Ending::Exited(3).shell_code(), 3);
        assert_eq!(Ending::Signaled(9).shell_code(), 137);
    }

    #[test]
    fn report_lines_parse_back_even_amid_console_noise() {
        for ending in [Ending::Exited(3), Ending::Signaled(15), Ending::InitFailed] {
            let out = format!(
                "[    0.1] booting\r\nhello\r\n{}\r\n[    0.2] reboot: Restarting system\r\n",
                ending.report_line()
            );
            assert_eq!(Ending::parse_report(&out), Some(ending));
        }
        assert_eq!(Ending::parse_report("nothing here"), None);
    }

    #[test]
    fn faults_are_named_on_the_command_line() {
        let f = FAULT_INIT_EXIT_AFTER_START;
        assert!(fault_requested(&format!("quiet husk.fault={f} x"), f));
        assert!(!fault_requested("quiet husk.agent=1", f));
        assert!(!fault_requested(&format!("husk.faultx={f}"), f));
        assert!(!fault_requested("husk.fault=", f));
        assert!(!fault_requested("husk.fault=other", f));
    }
}
