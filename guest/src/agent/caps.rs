//! Linux capability names and numbers (`include/uapi/linux/capability.h`).

/// `CAP_*` names by number (the host's `husk features` lists them too).
pub const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Where the running kernel says its highest capability is.
pub const CAP_LAST_CAP_PATH: &str = "/proc/sys/kernel/cap_last_cap";

/// The number of a capability by its OCI name (`CAP_CHOWN`; the `CAP_`
/// prefix and case are optional, as engines are lenient there too).
pub fn number(name: &str) -> Option<u32> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    NAMES
        .iter()
        .position(|n| *n == full)
        .and_then(|i| u32::try_from(i).ok())
}

/// The name of a capability number, for messages.
pub fn name(number: u32) -> String {
    usize::try_from(number)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("capability {number}"), |n| (*n).to_owned())
}

/// The highest capability the kernel knows, from the text of
/// [`CAP_LAST_CAP_PATH`]; the highest this table knows when unreadable.
pub fn last_cap(text: Option<&str>) -> u32 {
    text.and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| u32::try_from(NAMES.len() - 1).unwrap_or(0))
}

/// Turns names into a bit mask of capabilities up to `last`; unknown names
/// and ones the kernel does not have are returned apart, to be reported.
pub fn mask(names: &[String], last: u32) -> (u64, Vec<String>) {
    let mut bits = 0u64;
    let mut unknown = Vec::new();
    for n in names {
        match number(n) {
            Some(cap) if cap <= last && cap < 64 => bits |= 1u64 << cap,
            _ => unknown.push(n.clone()),
        }
    }
    (bits, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_kernel_numbers() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("net_bind_service"), Some(10));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
        assert_eq!(name(21), "CAP_SYS_ADMIN");
        assert_eq!(name(99), "capability 99");
    }

    #[test]
    fn masks_skip_what_the_kernel_lacks() {
        let names = vec![
            "CAP_KILL".to_owned(),
            "CAP_BPF".to_owned(),
            "CAP_X".to_owned(),
        ];
        let (bits, unknown) = mask(&names, 37);
        assert_eq!(bits, 1 << 5);
        assert_eq!(unknown, ["CAP_BPF", "CAP_X"]);
        assert_eq!(last_cap(Some("40\n")), 40);
        assert_eq!(last_cap(None), 40);
    }
}
