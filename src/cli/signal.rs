//! Signal names and numbers as `kill` takes them.

use super::ArgError;

/// The highest signal number on Linux (`SIGRTMAX`).
pub const SIGNAL_MAX: i32 = 64;
/// The lowest real-time signal as the kernel numbers it (glibc reserves
/// 32 and 33 and reports 34 as `SIGRTMIN`; husk names the kernel's).
const SIGRTMIN_KERNEL: i32 = 32;

/// Names of the standard signals, without the `SIG` prefix (x86_64 numbers).
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// Parses a signal as runc's `kill` does: a number, or a name with or
/// without the `SIG` prefix in any case (`KILL`, `SIGKILL`, `sigkill`), plus
/// `RTMIN`, `RTMIN+N`, `RTMAX`, `RTMAX-N`.
///
/// Unlike runc, which hands any number to kill(2), 0 (a liveness probe, not
/// a signal) and numbers outside `1..=64` are refused here.
pub fn parse_signal(raw: &str) -> Result<i32, ArgError> {
    let text = raw.trim();
    if let Ok(number) = text.parse::<i64>() {
        return match i32::try_from(number) {
            Ok(n) if (1..=SIGNAL_MAX).contains(&n) => Ok(n),
            _ => Err(ArgError::SignalOutOfRange {
                number,
                max: SIGNAL_MAX,
            }),
        };
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let unknown = || ArgError::UnknownSignal {
        name: raw.to_owned(),
    };
    if let Some(&(_, n)) = SIGNALS.iter().find(|(known, _)| *known == name) {
        return Ok(n);
    }
    let realtime = |base: i32, offset: &str, sign: i32| -> Result<i32, ArgError> {
        let off: i32 = offset.parse().map_err(|_| unknown())?;
        let n = base + sign * off;
        if (SIGRTMIN_KERNEL..=SIGNAL_MAX).contains(&n) {
            Ok(n)
        } else {
            Err(unknown())
        }
    };
    match name {
        "RTMIN" => Ok(SIGRTMIN_KERNEL),
        "RTMAX" => Ok(SIGNAL_MAX),
        _ => {
            if let Some(off) = name.strip_prefix("RTMIN+") {
                realtime(SIGRTMIN_KERNEL, off, 1)
            } else if let Some(off) = name.strip_prefix("RTMAX-") {
                realtime(SIGNAL_MAX, off, -1)
            } else {
                Err(unknown())
            }
        }
    }
}

/// The conventional name of signal `n` (`SIGKILL`), for messages.
pub fn signal_name(n: i32) -> Option<String> {
    if let Some(&(name, _)) = SIGNALS.iter().find(|&&(_, number)| number == n) {
        return Some(format!("SIG{name}"));
    }
    match n {
        SIGRTMIN_KERNEL => Some("SIGRTMIN".to_owned()),
        SIGNAL_MAX => Some("SIGRTMAX".to_owned()),
        n if (SIGRTMIN_KERNEL..SIGNAL_MAX).contains(&n) => {
            Some(format!("SIGRTMIN+{}", n - SIGRTMIN_KERNEL))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_prefix_any_case() {
        for s in ["KILL", "SIGKILL", "kill", "sigkill", "SigKill", " KILL "] {
            assert_eq!(parse_signal(s), Ok(libc::SIGKILL), "{s}");
        }
        assert_eq!(parse_signal("TERM"), Ok(15));
        assert_eq!(parse_signal("SIGHUP"), Ok(1));
        assert_eq!(parse_signal("USR1"), Ok(10));
        assert_eq!(parse_signal("SIGWINCH"), Ok(28));
        assert_eq!(parse_signal("CHLD"), Ok(17));
        assert_eq!(parse_signal("CLD"), Ok(17));
        assert_eq!(parse_signal("IOT"), Ok(6));
        assert_eq!(parse_signal("SIGSYS"), Ok(31));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_signal("9"), Ok(9));
        assert_eq!(parse_signal("1"), Ok(1));
        assert_eq!(parse_signal("64"), Ok(64));
    }

    #[test]
    fn realtime_names() {
        assert_eq!(parse_signal("RTMIN"), Ok(32));
        assert_eq!(parse_signal("SIGRTMIN+3"), Ok(35));
        assert_eq!(parse_signal("RTMAX"), Ok(64));
        assert_eq!(parse_signal("SIGRTMAX-2"), Ok(62));
        assert!(parse_signal("RTMIN+40").is_err());
        assert!(parse_signal("RTMAX-x").is_err());
    }

    #[test]
    fn zero_and_out_of_range_are_rejected() {
        for s in ["0", "-1", "65", "99999999999999999999999"] {
            assert!(parse_signal(s).is_err(), "{s}");
        }
        assert_eq!(
            parse_signal("65"),
            Err(ArgError::SignalOutOfRange {
                number: 65,
                max: 64
            })
        );
        assert_eq!(
            parse_signal("65").unwrap_err().to_string(),
            "signal 65 is outside 1..=64"
        );
    }

    #[test]
    fn unknown_names_use_runcs_message() {
        let err = parse_signal("FOO").unwrap_err();
        assert_eq!(err, ArgError::UnknownSignal { name: "FOO".into() });
        assert_eq!(err.to_string(), "unknown signal \"FOO\"");
        assert!(parse_signal("").is_err());
        assert!(parse_signal("SIG").is_err());
        assert!(parse_signal("-9").is_err());
    }

    #[test]
    fn every_name_round_trips_through_its_number() {
        for &(_, n) in SIGNALS {
            let name = signal_name(n).unwrap();
            assert_eq!(parse_signal(&name), Ok(n), "{name}");
        }
        for n in 1..=SIGNAL_MAX {
            if let Some(name) = signal_name(n) {
                assert_eq!(parse_signal(&name), Ok(n), "{name}");
            }
        }
        assert_eq!(signal_name(9).as_deref(), Some("SIGKILL"));
        assert_eq!(signal_name(0), None);
    }
}
